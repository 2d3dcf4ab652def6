// The instructions a call costs, counted by callgrind (bench/call_instructions.py runs this):
// `call_instructions proxy N` makes N quick-typeid proxy calls (Maths.add) to a manager server
// running in this process (callgrind cannot follow a child started with pidfd_open), `pipe N`
// N 152-byte Pipe ping-pongs with an echoing thread. Each first makes 2000 of them untimed; the
// script runs two N and divides the difference per thread, so the start and the end cancel.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/managers.hpp"

#include "maths.hpp"

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;

namespace {

using bench::Maths;
using bench::MathsManager;

constexpr long kWarmUp = 2000;

long proxy_calls(long n) {
  const auto key = mp::AuthenticationString::random();
  mm::ManagerOptions so;
  so.address =
      mp::Address::parse("unix-abstract:troupe-call-instructions-" + std::to_string(::getpid()));
  so.authkey = key;
  MathsManager sm(so);
  auto server = sm.get_server();
  std::thread serving([&] { server->serve_forever(); });
  long sum = 0;
  {
    mm::ManagerOptions co;
    co.address = so.address;
    co.authkey = key;
    MathsManager c(co);
    for (int tries = 0;; ++tries) {  // until the server listens
      try {
        c.connect();
        break;
      } catch (const std::exception&) {
        if (tries == 500) throw;
        ::usleep(10000);
      }
    }
    auto p = c.create<Maths>("QuickMaths");
    for (long i = 0; i < kWarmUp + n; ++i) sum += p.call<&Maths::add>(i, 1);
  }
  server->stop();
  serving.join();
  return sum;
}

long pipe_calls(long n) {
  auto [a, b] = mp::Pipe();
  std::thread echo([&b = b] {
    for (;;) {
      auto m = b.recv_bytes();
      if (m.empty()) return;
      b.send_bytes(m);
    }
  });
  const std::string msg(152, 'x');
  long got = 0;
  for (long i = 0; i < kWarmUp + n; ++i) {
    a.send_bytes(msg);
    got += static_cast<long>(a.recv_bytes().size());
  }
  a.send_bytes(std::string_view());
  echo.join();
  return got;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::string_view(argv[1]) != "proxy" && std::string_view(argv[1]) != "pipe")) {
    std::fprintf(stderr, "usage: call_instructions proxy|pipe N\n");
    return 2;
  }
  const long n = std::atol(argv[2]);
  MathsManager::register_<Maths>("QuickMaths", {.quick = true});
  const long r = std::string_view(argv[1]) == "proxy" ? proxy_calls(n) : pipe_calls(n);
  std::printf("%ld\n", r);
  return 0;
}
