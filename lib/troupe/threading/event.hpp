// troupe/threading/event.hpp — threading.Event.
#pragma once

#include <atomic>
#include <cstdint>

#include "troupe/detail/futex.hpp"
#include "troupe/timeout.hpp"

namespace troupe::threading {

/// Python: `threading.Event`. A `set()` followed at once by `clear()` still releases the
/// threads that were waiting, which return true, as in Python.
class Event {
public:
  Event() noexcept = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  /// Python: `is_set()`.
  bool is_set() const noexcept { return word_.load(std::memory_order_acquire) & 1u; }
  /// Python: `set()`: wakes every waiter.
  void set() noexcept;
  /// Python: `clear()`.
  void clear() noexcept { word_.fetch_and(~1u, std::memory_order_relaxed); }
  /// Python: `wait(timeout=None)`: true once the flag is (or was, during the wait) set,
  /// false on timeout. A zero or negative timeout only reports the flag.
  bool wait(Timeout timeout = {}) noexcept;

private:
  // Bit 0: the flag. Bits 1..31: a generation, bumped by each set() that raises the flag.
  std::atomic<std::uint32_t> word_{0};
  troupe::detail::AdaptiveSpin spin_;
};

}  // namespace troupe::threading
