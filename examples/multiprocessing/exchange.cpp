// Python's multiprocessing docs, "Exchanging objects between processes", in C++, under each
// start method: a Queue and a Pipe carrying [42, None, 'hello'] from a child to its parent.
//
//   def f(q): q.put([42, None, 'hello'])
//   q = Queue(); p = Process(target=f, args=(q,)); p.start(); print(q.get()); p.join()
//
//   def f(conn): conn.send([42, None, 'hello']); conn.close()
//   parent_conn, child_conn = Pipe()
//   p = Process(target=f, args=(child_conn,)); p.start(); print(parent_conn.recv()); p.join()
//
// Python's list of anything becomes a list of a variant: the types that may cross are named, and
// a message of another type is refused when received (TypeError), never run.
#include <cstdio>
#include <string>
#include <variant>
#include <vector>

#include "troupe/multiprocessing.hpp"

namespace mp = troupe::multiprocessing;

using Item = std::variant<int, std::monostate, std::string>;  // monostate: Python's None
using Items = std::vector<Item>;

Items hello() {
  return {42, std::monostate{}, std::string("hello")};
}

std::string repr(const Items& items) {
  std::string out = "[";
  for (const auto& item : items) {
    if (out.size() > 1) out += ", ";
    if (auto* i = std::get_if<int>(&item)) out += std::to_string(*i);
    if (std::holds_alternative<std::monostate>(item)) out += "None";
    if (auto* s = std::get_if<std::string>(&item)) out += "'" + *s + "'";
  }
  return out + "]";
}

void put_hello(mp::Queue<Items> q) {
  q.put(hello());
}
TROUPE_ENTRY(put_hello);

void send_hello(mp::Connection& conn) {
  conn.send(hello());
  conn.close();
}
TROUPE_ENTRY(send_hello);

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);  // spawned and forkserver children run their target here
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    auto ctx = mp::get_context(method);
    std::printf("--- start method %s ---\n", method);

    mp::Queue<Items> q;
    mp::Process p = ctx.Process(put_hello, q);
    p.start();
    std::printf("%s\n", repr(q.get()).c_str());  // prints "[42, None, 'hello']"
    p.join();

    auto [parent_conn, child_conn] = mp::Pipe();
    mp::Process c = ctx.Process(send_hello, std::move(child_conn));
    c.start();
    std::printf("%s\n", repr(parent_conn.recv<Items>()).c_str());  // prints "[42, None, 'hello']"
    c.join();
    std::fflush(stdout);
    if (p.exitcode() != 0 || c.exitcode() != 0) {
      std::fprintf(stderr, "exchange: a %s child failed\n", method);
      return 1;
    }
  }
  return 0;
}
