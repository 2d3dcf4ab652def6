// Python's multiprocessing docs, "Customized managers", in C++, per start method:
//
//   class MathsClass:
//       def add(self, x, y): return x + y
//       def mul(self, x, y): return x * y
//   class MyManager(BaseManager): pass
//   MyManager.register('Maths', MathsClass)
//   with MyManager() as manager:
//       maths = manager.Maths()
//       print(maths.add(4, 3))         # prints 7
//       print(maths.mul(7, 8))         # prints 56
//
// The calls are checked against MathsClass at compile time (call<&MathsClass::add>); the
// untyped form, Python's _callmethod, is shown too. Exits 1 if a result is wrong.
#include <cstdio>

#include "troupe/multiprocessing.hpp"
#include "troupe/multiprocessing/managers.hpp"

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;

struct MathsClass {
  int add(int x, int y) { return x + y; }
  int mul(int x, int y) { return x * y; }
};
TROUPE_EXPOSE(MathsClass, add, mul);

struct MyManager : mm::Manager<MyManager> {
  using Manager::Manager;
};
// At namespace scope, as Python's module-level register(): a spawned server finds it too.
static const bool registered = (MyManager::register_<MathsClass>("Maths"), true);

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  int wrong = 0;
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    MyManager manager({.start_method = method});
    manager.start();
    auto maths = manager.create<MathsClass>("Maths");
    const int sum = maths.call<&MathsClass::add>(4, 3);
    const int product = maths.call<&MathsClass::mul>(7, 8);
    const int untyped = maths._callmethod<int>("add", 20, 22);
    std::printf("%s: %d %d %d\n", method, sum, product, untyped);
    wrong += (sum != 7) + (product != 56) + (untyped != 42);
  }  // ~MyManager: shutdown(), as Python's __exit__
  return wrong == 0 ? 0 : 1;
}
