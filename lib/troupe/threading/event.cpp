#include "troupe/threading/event.hpp"

#include <climits>

namespace troupe::threading {

void Event::set() noexcept {
  std::uint32_t w = word_.load(std::memory_order_relaxed);
  do {
    if (w & 1u) return;
  } while (!word_.compare_exchange_weak(w, (w + 2u) | 1u, std::memory_order_seq_cst,
                                        std::memory_order_relaxed));
  if (sleepers_.load(std::memory_order_seq_cst) != 0) troupe::detail::futex_wake(word_, INT_MAX);
}

bool Event::wait(Timeout timeout) noexcept {
  const std::uint32_t w = word_.load(std::memory_order_acquire);
  if (w & 1u) return true;
  const auto now = troupe::detail::steady::now();
  const auto deadline = timeout.is_negative() ? std::optional(now) : timeout.deadline(now);
  if (deadline && *deadline <= now) return false;
  // The word changes only when a set() raises the flag (clear() of a 0 flag is no change).
  auto changed = [&] { return word_.load(std::memory_order_acquire) != w; };
  if (spin_.spin(changed)) return true;
  for (;;) {
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    const bool in_time = troupe::detail::futex_wait(word_, w, deadline);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    if (changed()) return true;
    if (!in_time) return false;
  }
}

}  // namespace troupe::threading
