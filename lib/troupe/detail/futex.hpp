// troupe/detail/futex.hpp — the sleeping half of every troupe waiter, and the spin before it.
//
// Not API. Every blocking wait in troupe spins for a short, bounded, adaptive time and then
// sleeps on a Linux futex (DESIGN.md, "Waiting: spin briefly, then sleep"). Waking a sleeper on
// another core costs tens of microseconds on these machines; a spin that sees the hand-off first
// costs a fraction of one. The spin adapts per waitable object: it grows while spins succeed and
// shrinks fast while they fail (for instance when both peers share one CPU), and it is off when
// the process may only run on one CPU.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace troupe::detail {

using steady = std::chrono::steady_clock;

/// Sleeps while `word == expected`, until woken or `deadline` (nullopt: no deadline).
/// Returns false only when the deadline passed; true on wake, value change or spurious wake-up.
/// `shared`: the word is in memory shared between processes (a process-private futex is
/// cheaper, and the default).
bool futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                const std::optional<steady::time_point>& deadline, bool shared = false) noexcept;

/// Wakes up to `n` sleepers on `word` (INT_MAX: all).
void futex_wake(const std::atomic<std::uint32_t>& word, int n, bool shared = false) noexcept;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// Process-wide spin settings. `spin_limit()` is the most any wait spins (ns); 0 disables
/// spinning. Set it with `troupe::set_spin_limit` (troupe/spin.hpp) or `TROUPE_SPIN_NS`.
std::int64_t spin_limit_ns() noexcept;
void set_spin_limit_ns(std::int64_t ns) noexcept;
/// True when this process may run on one CPU only (read at start-up and after set_spin_limit).
bool single_cpu() noexcept;

/// The adaptive spin budget of one waitable object. Relaxed atomics: a racy budget is harmless.
class AdaptiveSpin {
public:
  /// Spins until `ready()` is true or the budget is spent. Returns ready()'s last value.
  template <class Ready>
  bool spin(Ready&& ready) noexcept {
    if (ready()) return true;
    std::int64_t budget = budget_.load(std::memory_order_relaxed);
    const std::int64_t limit = spin_limit_ns();
    if (limit <= 0 || single_cpu()) return false;
    if (budget <= 0 || budget > limit) budget = limit;
    const auto start = steady::now();
    // Poll with exponential backoff: quick hand-offs are seen within a few pauses, and a waiter
    // whose peer is busy producing polls (and steals the peer's cache lines) ever less often.
    for (unsigned pauses = 1;; pauses = pauses < kMaxPauses ? pauses * 2 : kMaxPauses) {
      for (unsigned p = 0; p < pauses; ++p) cpu_relax();
      if (ready()) {
        // Success: grow the budget towards twice what this wait needed.
        const auto took = (steady::now() - start).count();
        std::int64_t next = budget + budget / 4;
        if (next < 2 * took) next = 2 * took;
        budget_.store(next > limit ? limit : next, std::memory_order_relaxed);
        return true;
      }
      if (pauses >= 8 && (steady::now() - start).count() >= budget) break;
    }
    // Failure: the peer was not coming soon, or could not run. Halve, down to a floor that
    // still catches a hand-off already in flight.
    std::int64_t next = budget / 2;
    budget_.store(next < kFloorNs ? kFloorNs : next, std::memory_order_relaxed);
    return false;
  }

private:
  static constexpr std::int64_t kFloorNs = 500;
  static constexpr unsigned kMaxPauses = 64;
  std::atomic<std::int64_t> budget_{0};
};

}  // namespace troupe::detail
