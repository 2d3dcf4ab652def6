// Python's multiprocessing docs, "Synchronization between processes" and "Sharing state between
// processes", and the shared_memory docs' ShareableList example, in C++, per start method:
//
//   def f(l, i):
//       l.acquire()
//       try: print('hello world', i)
//       finally: l.release()
//   lock = Lock(); for num in range(10): Process(target=f, args=(lock, num)).start()
//
//   def g(n, a):
//       n.value = 3.1415927
//       for i in range(len(a)): a[i] = -a[i]
//   num = Value('d', 0.0); arr = Array('i', range(10))
//   p = Process(target=g, args=(num, arr)); p.start(); p.join()
//   print(num.value); print(arr[:])
#include <cstdio>
#include <string>
#include <vector>

#include "troupe/multiprocessing.hpp"

namespace mp = troupe::multiprocessing;
namespace shm = troupe::multiprocessing::shared_memory;

void f(mp::Lock l, int i) {
  std::scoped_lock guard{l};
  std::printf("hello world %d\n", i);
  std::fflush(stdout);
}
TROUPE_ENTRY(f);

void g(mp::Value<double> n, mp::Array<int> a) {
  n.set_value(3.1415927);
  for (std::size_t i = 0; i < a.size(); ++i) a.set(i, -a[i]);
}
TROUPE_ENTRY(g);

void h(shm::ShareableList& sl) {
  sl.set(0, std::string("howdy"));  // written where Python or C++ can read it, by name
  sl.set(2, std::int64_t{42});
}
TROUPE_ENTRY(h);

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    std::printf("-- start method %s\n", method);
    auto ctx = mp::get_context(method);

    mp::Lock lock;
    std::vector<mp::Process> ps;
    for (int num = 0; num < 10; ++num) ps.push_back(ctx.Process(f, lock, num));
    for (auto& p : ps) p.start();
    for (auto& p : ps) p.join();

    mp::Value<double> num(0.0);
    mp::Array<int> arr{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    auto p = ctx.Process(g, num, arr);
    p.start();
    p.join();
    std::printf("%.7f\n[", num.value());
    for (int x : arr.to_vector()) std::printf(" %d", x);
    std::printf(" ]\n");

    shm::ShareableList sl({std::string("hello"), 2.5, std::int64_t{-1}, std::monostate{}});
    auto q = ctx.Process(h, shm::ShareableList::attach(sl.shm().name()));
    q.start();
    q.join();
    std::printf("%s\n", sl.repr().c_str());
    sl.shm().unlink();
    std::fflush(stdout);
  }
}
