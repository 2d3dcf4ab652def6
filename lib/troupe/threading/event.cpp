#include "troupe/threading/event.hpp"

#include <climits>

namespace troupe::threading {

// The word: bit 0 the flag, bit 1 "a waiter may sleep", bits 2.. a count of set() calls.
// set() touches the Event with one atomic operation and then only passes its address to the
// futex wake: a waiter that returns at once may destroy the Event, as Python allows (its set()
// notifies under a lock the waiter must retake).

void Event::set() noexcept {
  std::uint32_t w = word_.load(std::memory_order_relaxed);
  do {
    if (w & 1u) return;
  } while (!word_.compare_exchange_weak(w, ((w & ~3u) + 4u) | 1u, std::memory_order_seq_cst,
                                        std::memory_order_relaxed));
  if (w & 2u) troupe::detail::futex_wake(word_, INT_MAX);
}

bool Event::wait(Timeout timeout) noexcept {
  const std::uint32_t w = word_.load(std::memory_order_acquire);
  if (w & 1u) return true;
  const auto now = troupe::detail::steady::now();
  const auto deadline = timeout.is_negative() ? std::optional(now) : timeout.deadline(now);
  if (deadline && *deadline <= now) return false;
  // Only a set() changes the word other than bit 1 (clear() of a 0 flag is no change).
  auto changed = [&] { return (word_.load(std::memory_order_acquire) & ~2u) != (w & ~2u); };
  if (spin_.spin(changed)) return true;
  for (;;) {
    std::uint32_t cur = word_.load(std::memory_order_acquire);
    if ((cur & ~2u) != (w & ~2u)) return true;
    if (!(cur & 2u)) {
      if (!word_.compare_exchange_weak(cur, cur | 2u, std::memory_order_seq_cst,
                                       std::memory_order_relaxed))
        continue;
      cur |= 2u;
    }
    const bool in_time = troupe::detail::futex_wait(word_, cur, deadline);
    if (changed()) {
      spin_.woke();
      return true;
    }
    if (!in_time) return false;
  }
}

}  // namespace troupe::threading
