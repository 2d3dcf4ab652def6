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
#include <utility>

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

/// Gives this CPU to another runnable thread, if one is waiting for it (sched_yield).
void yield_cpu() noexcept;

/// This thread's last failed spin, for AdaptiveSpin::woke(): when it began, how long it spun.
struct FailedSpin {
  steady::time_point start{};
  std::int64_t spun = 0;
};
inline thread_local FailedSpin t_failed_spin{};

/// The adaptive spin budget of one waitable object. Relaxed atomics: a racy budget is harmless.
///
/// A spin that sees its event grows the budget towards twice what it needed; one that fails
/// halves it. A failed spin is followed by a sleep, and the sleep teaches too: the waiter calls
/// woke() when it ends with the event, and a wait that the limit could have covered but that was
/// spent mostly asleep raises the budget to cover it. That is the case of a peer on another CPU
/// that was itself asleep: waking it costs tens of microseconds on virtual machines (more than
/// the budget after a few failures), and without this the two would go on waking each other at
/// that price forever, each spin failing because the other slept. A peer that shares this CPU
/// gets it while the spin yields, which each round does after the first microsecond.
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
    // Past the first microsecond each round yields as well: a peer waiting for this CPU runs.
    for (unsigned pauses = 1;; pauses = pauses < kMaxPauses ? pauses * 2 : kMaxPauses) {
      for (unsigned p = 0; p < pauses; ++p) cpu_relax();
      if (pauses >= kYieldPauses) yield_cpu();
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
    t_failed_spin = {start, budget};
    return false;
  }

  /// After a failed spin() this thread slept, and the sleep has ended with the event waited
  /// for (not a timeout). If the whole wait fit in the limit and most of it was asleep, a spin
  /// that long would have seen the event: the budget grows to cover such a wait.
  void woke() noexcept {
    const FailedSpin f = std::exchange(t_failed_spin, FailedSpin{});
    if (f.spun <= 0) return;
    const std::int64_t waited = (steady::now() - f.start).count();
    const std::int64_t limit = spin_limit_ns();
    if (waited > limit || waited - f.spun < kWakeNs) return;
    std::int64_t next = waited + waited / 4;
    if (next > limit) next = limit;
    if (next > budget_.load(std::memory_order_relaxed))
      budget_.store(next, std::memory_order_relaxed);
  }

  /// The budget the next spin starts from (0: the limit). For tests.
  std::int64_t budget_ns() const noexcept { return budget_.load(std::memory_order_relaxed); }

private:
  static constexpr std::int64_t kFloorNs = 500;
  // Less asleep than this, the sleep was the switch to a peer on this CPU, not a wake-up.
  static constexpr std::int64_t kWakeNs = 10'000;
  static constexpr unsigned kMaxPauses = 64;
  // From this backoff on (about a microsecond into the spin) each round yields too.
  static constexpr unsigned kYieldPauses = 16;
  std::atomic<std::int64_t> budget_{0};
};

}  // namespace troupe::detail
