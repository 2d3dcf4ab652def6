// The threading docs' Timer example, with a shorter interval, and a cancelled timer.
//
//   def hello(): print("hello, world")
//   t = Timer(30.0, hello)
//   t.start()  # after 30 seconds, "hello, world" will be printed
#include <chrono>
#include <cstdio>

#include "troupe/threading.hpp"

namespace threading = troupe::threading;
using namespace std::chrono_literals;

int main() {
  const auto start = std::chrono::steady_clock::now();
  auto since = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };

  threading::Timer t(300ms, [&] { std::printf("hello, world (after %.0f ms)\n", since()); });
  t.start();

  threading::Timer never(200ms, [] { std::printf("this never prints\n"); });
  never.start();
  never.cancel();
  never.join();
  std::printf("cancelled timer finished without calling (after %.0f ms)\n", since());

  t.join();
  return 0;
}
