// test/support/bunch.hpp — CPython lock_tests.py's Bunch: run a function in n threads, and wait.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

namespace troupe::testing {

class Bunch {
public:
  Bunch(std::function<void()> f, int n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, f] {
        started_.fetch_add(1);
        f();
        finished_.fetch_add(1);
      });
    }
  }
  ~Bunch() { join(); }
  /// Waits (at most 10 s) until n threads have started.
  void wait_for_started(int n) const {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (started_.load() < n && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  int started() const { return started_.load(); }
  int finished() const { return finished_.load(); }
  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

private:
  std::atomic<int> started_{0};
  std::atomic<int> finished_{0};
  std::vector<std::thread> threads_;
};

/// Sleeps a little: lets other threads reach their blocking call (as CPython's _wait()).
inline void let_others_run() {
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

}  // namespace troupe::testing
