#include "troupe/threading/semaphore.hpp"

#include "troupe/errors.hpp"

namespace troupe::threading {

Semaphore::Semaphore(int value) : value_(static_cast<std::uint32_t>(value)) {
  if (value < 0) throw ValueError("semaphore initial value must be >= 0");
}

bool Semaphore::acquire(bool blocking, Timeout timeout) {
  if (!blocking && !timeout.is_forever())
    throw ValueError("can't specify timeout for non-blocking acquire");
  if (try_take()) return true;
  if (!blocking) return false;
  const auto now = troupe::detail::steady::now();
  const auto deadline = timeout.deadline(now);
  if (deadline && *deadline <= now) return false;
  if (spin_.spin([&] { return value_.load(std::memory_order_relaxed) != 0 && try_take(); }))
    return true;
  for (;;) {
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    const bool in_time = troupe::detail::futex_wait(value_, 0, deadline);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    if (try_take()) {
      spin_.woke();
      return true;
    }
    if (!in_time) return false;
  }
}

void Semaphore::wake(int n) noexcept {
  if (sleepers_.load(std::memory_order_seq_cst) != 0) troupe::detail::futex_wake(value_, n);
}

void Semaphore::release(int n) {
  if (n < 1) throw ValueError("n must be one or more");
  value_.fetch_add(static_cast<std::uint32_t>(n), std::memory_order_seq_cst);
  wake(n);
}

void BoundedSemaphore::release(int n) {
  if (n < 1) throw ValueError("n must be one or more");
  std::uint32_t v = value_.load(std::memory_order_relaxed);
  do {
    if (v + static_cast<std::uint32_t>(n) > initial_)
      throw ValueError("Semaphore released too many times");
  } while (!value_.compare_exchange_weak(v, v + static_cast<std::uint32_t>(n),
                                         std::memory_order_seq_cst, std::memory_order_relaxed));
  wake(n);
}

}  // namespace troupe::threading
