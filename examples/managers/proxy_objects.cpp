// Python's multiprocessing docs, "Managers" and "Proxy Objects", in C++, per start method:
//
//   def f(d, l):
//       d[1] = '1'; d['2'] = 2; d[0.25] = None
//       l.reverse()
//   with Manager() as manager:
//       d = manager.dict(); l = manager.list(range(10))
//       p = Process(target=f, args=(d, l)); p.start(); p.join()
//       print(d)                 # {1: '1', '2': 2, 0.25: None}
//       print(l)                 # [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
//
//   l = manager.list([i*i for i in range(10)])
//   print(l)                     # [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
//   l[4]                         # 16
//   l[2:5]                       # [4, 9, 16]
//
//   a = manager.list(); b = manager.list()
//   a.append(b)                  # referent of a now contains referent of b
//   b.append('hello')
//   print(a[0], b)               # ['hello'] ['hello']
//
// The dict is untyped (Python's mixes key types: `_callmethod`), the lists typed. The proxies
// travel to the child process, which uses them there. Prints what Python prints; exits 1 if a
// line differs.
#include <cstdio>
#include <numeric>
#include <string>
#include <variant>
#include <vector>

#include "troupe/multiprocessing.hpp"
#include "troupe/multiprocessing/managers.hpp"

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;

void f(mm::BaseProxy d, mm::ListProxy<int> l) {
  d._callmethod("__setitem__", 1, std::string("1"));
  d._callmethod("__setitem__", std::string("2"), 2);
  d._callmethod("__setitem__", 0.25, std::monostate{});
  l.reverse();
}
TROUPE_ENTRY(f);

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  int wrong = 0;
  auto show = [&](const std::string& got, const std::string& want) {
    std::printf("  %s\n", got.c_str());
    if (got != want) {
      std::fprintf(stderr, "expected: %s\n", want.c_str());
      ++wrong;
    }
  };
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    std::printf("%s:\n", method);
    auto manager = mp::Manager({.start_method = method});
    auto d = manager->dict();
    std::vector<int> ten(10);
    std::iota(ten.begin(), ten.end(), 0);
    auto l = manager->list<int>(ten);
    mp::ProcessOptions po;
    po.start_method = method;
    mp::Process p(po, &f, d, l);
    p.start();
    p.join();
    show(d.str(), "{1: '1', '2': 2, 0.25: None}");
    show(l.str(), "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]");

    std::vector<int> squares;
    for (int i = 0; i < 10; ++i) squares.push_back(i * i);
    auto sq = manager->list<int>(squares);
    show(sq.str(), "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]");
    show(std::to_string(sq[4].get()), "16");
    std::string part;
    for (int x : sq.slice(2, 5)) part += (part.empty() ? "" : " ") + std::to_string(x);
    show(part, "4 9 16");

    auto a = manager->list<mm::ListProxy<std::string>>();
    auto b = manager->list<std::string>();
    a.append(b);  // a's referent holds b's referent, not a copy
    b.append("hello");
    show(a.get(0).str() + " " + b.str(), "['hello'] ['hello']");
  }  // ~SyncManager: shutdown(), as Python's __exit__
  return wrong == 0 ? 0 : 1;
}
