// troupe/threading/semaphore.hpp — threading.Semaphore and threading.BoundedSemaphore.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "troupe/detail/futex.hpp"
#include "troupe/detail/lockable.hpp"
#include "troupe/timeout.hpp"

namespace troupe::threading {

/// Python: `threading.Semaphore(value=1)`. Lockable and TimedLockable.
class Semaphore : public troupe::detail::Lockable<Semaphore> {
public:
  /// @throws ValueError "semaphore initial value must be >= 0".
  explicit Semaphore(int value = 1);
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;
  virtual ~Semaphore() = default;

  /// Python: `acquire(blocking=True, timeout=None)`. Returns whether a unit was taken.
  /// A zero or negative timeout only tries (CPython returns False at once).
  /// @throws ValueError "can't specify timeout for non-blocking acquire".
  bool acquire(bool blocking = true, Timeout timeout = {});

  /// Python: `release(n=1)`: adds n units and wakes up to n waiters.
  /// @throws ValueError "n must be one or more".
  virtual void release(int n = 1);

  /// The current counter (Python's `_value`), for diagnostics.
  int _value() const noexcept { return static_cast<int>(value_.load(std::memory_order_relaxed)); }

protected:
  bool try_take() noexcept {
    std::uint32_t v = value_.load(std::memory_order_relaxed);
    while (v != 0) {
      if (value_.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                       std::memory_order_relaxed))
        return true;
    }
    return false;
  }
  void wake(int n) noexcept;

  std::atomic<std::uint32_t> value_;
  std::atomic<std::uint32_t> sleepers_{0};
  troupe::detail::AdaptiveSpin spin_;
};

/// Python: `threading.BoundedSemaphore(value=1)`: releasing above the initial value is an error.
class BoundedSemaphore : public Semaphore {
public:
  explicit BoundedSemaphore(int value = 1) : Semaphore(value), initial_(value) {}
  /// @throws ValueError "Semaphore released too many times" (nothing is released then).
  void release(int n = 1) override;

private:
  std::uint32_t initial_;
};

}  // namespace troupe::threading
