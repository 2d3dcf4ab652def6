// The sched docs' example.
//
//   s = sched.scheduler(time.time, time.sleep)
//   def print_time(a='default'): print("From print_time", time.time(), a)
//   def print_some_times():
//       print(time.time())
//       s.enter(10, 1, print_time)
//       s.enter(5, 2, print_time, argument=('positional',))
//       s.enter(5, 1, print_time, kwargs={'a': 'keyword'})   # same time, higher priority
//       s.run()
//       print(time.time())
//
// Seconds become tenths of a second here, so the example runs in one second.
#include <chrono>
#include <cstdio>
#include <string>

#include "troupe/sched.hpp"

namespace sched = troupe::sched;
using namespace std::chrono_literals;

int main() {
  sched::scheduler s;
  const auto start = sched::clock::now();
  auto t = [&] { return std::chrono::duration<double>(sched::clock::now() - start).count(); };
  auto print_time = [&](std::string a) {
    std::printf("From print_time %.2f %s\n", t(), a.c_str());
  };

  std::printf("%.2f\n", t());
  s.enter(1000ms, 1, print_time, std::string("default"));
  s.enter(500ms, 2, print_time, std::string("positional"));
  s.enter(500ms, 1, print_time, std::string("keyword"));
  s.run();
  std::printf("%.2f\n", t());
  return 0;
}
