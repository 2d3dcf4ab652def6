// troupe/detail/futex.hpp — the sleeping half of every troupe waiter, and the spin before it.
//
// Not API. Every blocking wait in troupe spins for a short, bounded, adaptive time and then
// sleeps on a Linux futex (DESIGN.md, "Waiting: spin briefly, then sleep"). Waking a sleeper on
// another core costs tens of microseconds on these machines; a spin that sees the hand-off first
// costs a fraction of one. The spin adapts per waitable object: it grows while spins succeed and
// shrinks fast while they fail (for instance when both peers share one CPU), and it is off when
// the process may only run on one CPU. It also adapts to the machine: while other threads keep
// the CPUs busy (a spin lost its CPU to one of them, or the machine's runnable threads fill its
// CPUs) every wait sleeps at once (Contention).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>
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

/// How a futex_wait_woken() ended.
enum class FutexWaited : std::uint8_t {
  woken,      ///< a futex_wake() took this waiter off the word (it counted it in its result)
  other,      ///< the word did not hold `expected`, or a signal came: re-check
  timed_out,  ///< the deadline passed
};
/// futex_wait(), telling whether a futex_wake() ended the sleep: each waiter a futex_wake()
/// counts in its result returns `woken`. (A wake-up another user of the same memory made
/// earlier may also, rarely, end a sleep as `woken`.)
FutexWaited futex_wait_woken(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                             const std::optional<steady::time_point>& deadline,
                             bool shared = false) noexcept;

/// Wakes up to `n` sleepers on `word` (INT_MAX: all). Returns how many it woke.
int futex_wake(const std::atomic<std::uint32_t>& word, int n, bool shared = false) noexcept;

/// The sleepers on one futex word: how many sleep, and how many of those a wake() took off the
/// word that have not run since. A sleeper a wake has woken stays counted until it runs again,
/// which on a machine whose CPUs are all taken may be a time slice later; meanwhile every change
/// would wake it again, a futex_wake for nobody each (a loaded 1/1 Queue spent half its system
/// calls so, and ran at half std::condition_variable's rate). So wake() counts the sleepers it
/// woke, and makes the call only while more sleep than that.
///
/// The protocol: whoever makes a sleeper's condition true changes the word, then wake()s; a
/// sleeper reads the word (`seen`) where no change of the condition can come unseen after it
/// (under the lock the changers hold, as FutexCondVar reads it under its mutex; or it enter()s
/// and then checks its condition once more, as wait_shared), then sleep()s, or leave()s. No
/// wake-up is lost: enter() comes before the kernel's look at the word, and a change of the
/// word before the waker's look at the count (both sequentially consistent), so either the
/// waker counts the sleeper or the kernel sees the word changed and does not sleep. A sleeper
/// counted in `woken` leaves that count before the count of sleepers; a count read a moment
/// late is higher, never lower, and costs at most a call for nobody. A wake-up left
/// over from another user of this memory takes a sleeper out of `woken` that no wake put there:
/// the estimate reads higher, as above. Standard layout, zero when new: it may live in memory
/// shared between processes (then pass `shared`).
class Sleepers {
public:
  void enter() noexcept { count_.fetch_add(1, std::memory_order_seq_cst); }
  void leave() noexcept { count_.fetch_sub(1, std::memory_order_seq_cst); }

  /// After enter(): sleeps while `word == seen` (futex_wait_woken), then leaves.
  FutexWaited sleep(const std::atomic<std::uint32_t>& word, std::uint32_t seen,
                    const std::optional<steady::time_point>& deadline,
                    bool shared = false) noexcept {
    const FutexWaited how = futex_wait_woken(word, seen, deadline, shared);
    if (how == FutexWaited::woken) woken_.fetch_sub(1, std::memory_order_seq_cst);
    leave();
    return how;
  }

  /// After a change of `word`: wakes up to `n` of its sleepers (INT_MAX: all), if any sleeps
  /// that no wake has woken yet.
  void wake(const std::atomic<std::uint32_t>& word, int n, bool shared = false) noexcept {
    const auto asleep = static_cast<std::int64_t>(count_.load(std::memory_order_seq_cst)) -
                        woken_.load(std::memory_order_seq_cst);
    if (asleep <= 0) return;
    if (const int k = futex_wake(word, n, shared); k > 0)
      woken_.fetch_add(k, std::memory_order_seq_cst);
  }

  /// The sleepers counted now (entered, not yet left), for tests and diagnostics.
  std::uint32_t counted() const noexcept { return count_.load(std::memory_order_seq_cst); }

private:
  std::atomic<std::uint32_t> count_{0};
  std::atomic<std::int32_t> woken_{0};
};

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

/// Nanoseconds on the steady clock, the time base of the spin's learning.
inline std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch())
      .count();
}

/// Whether the calling thread, away from its CPU for `gap_ns`, spent at least half of that
/// waiting on a run queue (for another thread of this machine) since it last asked, by its
/// run_delay in /proc/thread-self/schedstat. True when that cannot be read, and on a thread's
/// first question (nothing to compare with).
bool waited_for_cpu(std::int64_t gap_ns) noexcept;

/// Whether the machine's runnable threads other than the caller fill every online CPU, by
/// `loadavg`, the text of /proc/loadavg (its fourth field, "R/T", counts R runnable threads,
/// the caller among them). False if the text does not parse. `cpus`: the online CPUs.
bool cpus_saturated(std::string_view loadavg, int cpus) noexcept;
/// cpus_saturated() of /proc/loadavg as it reads now (false if it cannot be read).
bool cpus_saturated_now() noexcept;

/// Whether the CPUs are busy with other runnable threads, as the spins see it.
///
/// A spin gives its CPU away (it yields, or it is preempted) and expects it back within
/// microseconds: the thread it yielded to is its peer, which answers and waits in turn. When the
/// CPU comes back only after kAwayNs or more, another thread ran for a whole time slice: the CPUs
/// may be busy. Then a wake-up is cheap (no CPU has to come out of idle) and a spin only takes the
/// CPU that the peer, or the work beside it, needs; and each yield costs a time slice (1-3 ms on
/// Linux's fair scheduler) instead of a microsecond. So for a busy period every wait sleeps at
/// once.
///
/// One loss alone is not load: on a virtual machine the hypervisor, and on any machine a kernel
/// worker, takes a CPU tens of times a second even when nothing else runs, and a process whose
/// two threads answer each other would otherwise spend its time in busy periods, each call paying
/// a wake-up. A busy period starts when a loss follows the one before within kConfirmNs (under
/// load every spin loses, so the second loss comes with the next wait). It lasts kMinBusyNs and
/// doubles, up to kMaxBusyNs, while the first spin after each period loses again (within the
/// period's length, or kConfirmNs, after its end): under lasting load the spin probes (and loses
/// a slice) rarely, about 1% of the time. Relaxed atomics: a racy reading costs at most one spin
/// or one sleep.
///
/// Nor is a CPU the hypervisor took: on a shared host a virtual CPU is descheduled now and then
/// for tens or hundreds of microseconds, often in bursts, and the spins would read each burst as
/// load and sleep through it (the proxy round trip measured bimodal on such a host: 16 us, or
/// 30-40 us with a wake-up per call). So the process's Contention asks the scheduler
/// (waited_for_cpu()): a gap counts only if this thread waited on a run queue of this machine
/// (its run_delay in /proc/thread-self/schedstat grew by half the gap or more since it last
/// asked); the time a guest's CPU is away is not run-queue time there.
///
/// A spin that never loses its CPU sees no load, yet may still take a CPU that others need: a
/// waiter whose peer was preempted spins its whole budget on its own CPU, and on a machine whose
/// CPUs are all taken every microsecond a spin holds is charged to its thread by the fair
/// scheduler, which gives it that much less later (a Pipe ping-pong beside as many CPU-bound
/// processes as CPUs: 22 us a round trip with spinning, 16 without, median of 12 interleaved
/// rounds). So the process's Contention also counts the machine's runnable threads
/// (cpus_saturated_now(), at most every kSampleNs, by the first caller of filled() after that):
/// while two counts in a row find the others filling every CPU, the CPUs are filled (one count
/// alone may be a kernel worker's moment), and a spin whose rounds are system calls makes none.
/// A spin that reads memory keeps its short rounds then: they cost no system call and catch an
/// item already in flight (a loaded 1 / 1 Queue measured the same either way, within this
/// host's noise; the Pipe's receive did not). Host-wide: threads at nice 19
/// count, and so do the neighbours of a container confined to some of the CPUs.
class Contention {
public:
  /// Longer than this away from the CPU during one round of a spin: another thread had it.
  static constexpr std::int64_t kAwayNs = 50'000;
  static constexpr std::int64_t kMinBusyNs = 1'000'000;
  static constexpr std::int64_t kMaxBusyNs = 256'000'000;
  /// Two losses this close together are load, not a stray preemption.
  static constexpr std::int64_t kConfirmNs = 5'000'000;
  /// How often the machine's runnable threads are counted (sample_load).
  static constexpr std::int64_t kSampleNs = 4'000'000;

  /// `away_ns`: the time away from the CPU that counts as lost (tests raise it).
  /// `ask_scheduler`: a gap counts only if waited_for_cpu() says so (the process's; tests that
  /// feed made-up times leave it off).
  /// `sample_load`: filled() counts the machine's runnable threads (the process's; tests that
  /// feed made-up times leave it off).
  constexpr explicit Contention(std::int64_t away_ns = kAwayNs, bool ask_scheduler = false,
                                bool sample_load = false) noexcept
      : away_ns_(away_ns), ask_scheduler_(ask_scheduler), sample_load_(sample_load) {}

  /// True while a busy period lasts at `now`: waits sleep without spinning.
  bool busy(std::int64_t now) const noexcept {
    return now < until_.load(std::memory_order_relaxed);
  }

  /// True (sample_load only) while the last two counts of the machine's runnable threads found
  /// the others filling every online CPU: spins whose rounds are system calls make none.
  bool filled(std::int64_t now) const noexcept { return sample_load_ && saturated(now); }

  /// Neither busy nor filled at `now`: a spin of system calls may spin.
  bool calm(std::int64_t now) const noexcept { return !busy(now) && !filled(now); }

  /// A round of a spin began at `from` and ended at `now`. If it was away from its CPU for
  /// longer than kAwayNs, that is a lost CPU and the function returns true; a busy period starts
  /// if the loss confirms load (see the class comment) and none lasts.
  bool lost(std::int64_t from, std::int64_t now) noexcept {
    if (now - from <= away_ns_) return false;
    if (ask_scheduler_ && !waited_for_cpu(now - from)) return false;  // not this machine's load
    if (busy(now)) return true;  // another waiter saw the same load
    const std::int64_t before = last_loss_.exchange(now, std::memory_order_relaxed);
    const std::int64_t last = period_.load(std::memory_order_relaxed);
    const std::int64_t since_end = now - until_.load(std::memory_order_relaxed);
    std::int64_t next;
    if (last > 0 && since_end < (last > kConfirmNs ? last : kConfirmNs)) {
      next = 2 * last > kMaxBusyNs ? kMaxBusyNs : 2 * last;  // the load outlasted the period
    } else if (now - before < kConfirmNs) {
      next = kMinBusyNs;  // a second loss soon after the first
    } else {
      return true;  // one loss alone: a stray preemption
    }
    period_.store(next, std::memory_order_relaxed);
    until_.store(now + next, std::memory_order_relaxed);
    return true;
  }

  /// The length of the last busy period (0: none yet).
  std::int64_t period_ns() const noexcept { return period_.load(std::memory_order_relaxed); }

private:
  // Whether the last two counts found the CPUs filled; the first caller after kSampleNs counts
  // again (one at a time: the one whose exchange wins).
  bool saturated(std::int64_t now) const noexcept {
    std::int64_t at = sampled_at_.load(std::memory_order_relaxed);
    if (now - at >= kSampleNs &&
        sampled_at_.compare_exchange_strong(at, now, std::memory_order_relaxed)) {
      const int streak = cpus_saturated_now() ? saturated_.load(std::memory_order_relaxed) + 1 : 0;
      saturated_.store(streak > 2 ? 2 : streak, std::memory_order_relaxed);
    }
    return saturated_.load(std::memory_order_relaxed) >= 2;
  }

  std::int64_t away_ns_;
  bool ask_scheduler_;
  bool sample_load_;
  mutable std::atomic<std::int64_t> sampled_at_{INT64_MIN / 2};
  mutable std::atomic<int> saturated_{0};  // counts in a row that found the CPUs filled, up to 2
  std::atomic<std::int64_t> until_{0};
  std::atomic<std::int64_t> period_{0};
  std::atomic<std::int64_t> last_loss_{INT64_MIN / 2};
};

/// The process's view of its CPUs, shared by every wait.
Contention& cpu_contention() noexcept;

/// This thread's last failed spin, for AdaptiveSpin::woke(): when it began, how long it spun.
struct FailedSpin {
  std::int64_t start = 0;
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
///
/// While the CPUs are busy (Contention) no wait spins and no sleep teaches: a spin that lost its
/// CPU ends at once, leaves the budget as it was, and the waits after it sleep at once.
class AdaptiveSpin {
public:
  /// Spins until `ready()` is true or the budget is spent. Returns ready()'s last value.
  /// `cpus`: what the spin learns about the machine (tests pass their own).
  template <class Ready>
  bool spin(Ready&& ready, Contention& cpus = cpu_contention()) noexcept {
    return run(std::forward<Ready>(ready), cpus, false);
  }

  /// spin() for a `ready` that is a system call (a non-blocking receive, a poll of a socket):
  /// while the CPUs are busy it makes no round at all and returns false without asking, as a
  /// spin that gave up at once (the sleep after it teaches nothing). A round of spin() then only
  /// pauses, which costs nothing when it reads memory; here each round would cost about what the
  /// wake-up it could spare costs, on the CPU the peer needs. The blocking call the caller makes
  /// next returns at once when the event is there already. Its rounds are spin_io()'s.
  template <class Ready>
  bool spin_syscall(Ready&& ready, Contention& cpus = cpu_contention()) noexcept {
    const std::int64_t now = now_ns();
    if (!cpus.calm(now)) {
      t_failed_spin = {};
      return false;
    }
    return run(std::forward<Ready>(ready), cpus, true);
  }

  /// spin() for a `ready` that is a system call, shaped for it: the call itself (a microsecond
  /// or more) is the backoff, so the pauses between calls stay short (up to kIoMaxPauses, not
  /// spin()'s growing kMaxPauses, which there would add up to three microseconds to every hand-off
  /// seen: a manager server's poll of its reactor measured 7.7 us from a client's send to the
  /// server's receive, against 4 for a Pipe), and only every kIoYieldEvery-th round yields.
  /// While the CPUs are busy, or filled, it behaves as spin() while they are busy: about a
  /// microsecond of rounds, then false.
  template <class Ready>
  bool spin_io(Ready&& ready, Contention& cpus = cpu_contention()) noexcept {
    return run(std::forward<Ready>(ready), cpus, true);
  }

  /// After a failed spin() this thread slept, and the sleep has ended with the event waited
  /// for (not a timeout). If the whole wait fit in the limit and most of it was asleep, a spin
  /// that long would have seen the event: the budget grows to cover such a wait. Not while the
  /// CPUs are busy: a sleep is then short because wake-ups are cheap, or long because the peer
  /// waited for a CPU, and neither asks for a longer spin.
  void woke(const Contention& cpus = cpu_contention()) noexcept {
    const FailedSpin f = std::exchange(t_failed_spin, FailedSpin{});
    if (f.spun <= 0) return;
    const std::int64_t now = now_ns();
    if (cpus.busy(now)) return;
    const std::int64_t waited = now - f.start;
    const std::int64_t limit = spin_limit_ns();
    if (waited > limit || waited - f.spun < kWakeNs) return;
    std::int64_t next = waited + waited / 4;
    if (next > limit) next = limit;
    if (next > budget_.load(std::memory_order_relaxed))
      budget_.store(next, std::memory_order_relaxed);
  }

  /// Whether a spin of system calls begun now would spin its budget: a limit is set, there is
  /// more than one CPU, and the CPUs are neither busy nor filled. For a caller that readies
  /// something only a spin uses (a manager server's hot connection: without a spin it costs a
  /// receive that finds nothing).
  static bool would_spin(const Contention& cpus = cpu_contention()) noexcept {
    if (spin_limit_ns() <= 0 || single_cpu()) return false;
    const std::int64_t now = now_ns();
    return cpus.calm(now);
  }

  /// The budget the next spin starts from (0: the limit). For tests.
  std::int64_t budget_ns() const noexcept { return budget_.load(std::memory_order_relaxed); }

private:
  // spin()'s loop; `io`: ready() is a system call (spin_io()).
  template <class Ready>
  bool run(Ready&& ready, Contention& cpus, bool io) noexcept {
    if (ready()) return true;
    std::int64_t budget = budget_.load(std::memory_order_relaxed);
    const std::int64_t limit = spin_limit_ns();
    if (limit <= 0 || single_cpu()) return false;
    if (budget <= 0 || budget > limit) budget = limit;
    const std::int64_t start = now_ns();
    // While the CPUs are busy the spin only pauses, about a microsecond, and never yields: it
    // still catches an item of a stream already in flight, then sleeps, and learns nothing.
    const bool busy = io ? !cpus.calm(start) : cpus.busy(start);
    const unsigned max_pauses = io ? kIoMaxPauses : kMaxPauses;
    // Poll with exponential backoff: quick hand-offs are seen within a few pauses, and a waiter
    // whose peer is busy producing polls (and steals the peer's cache lines) ever less often.
    // Past the first microsecond each round yields as well (an io spin: every kIoYieldEvery-th):
    // a peer waiting for this CPU runs.
    // Each round reads the clock (tens of nanoseconds) before it asks ready(): for the budget,
    // and to see whether the CPU was away. The time since the last reading covers pauses, a
    // yield, and a ready() that said no, which all our waiters answer in a microsecond or two.
    std::int64_t last = start;
    unsigned round = 0;
    for (unsigned pauses = 1;; pauses = pauses < max_pauses ? pauses * 2 : max_pauses) {
      ++round;
      const bool late = io ? last - start >= kYieldAfterNs : pauses >= kYieldPauses;
      if (busy && late) {
        t_failed_spin = {};
        return false;
      }
      for (unsigned p = 0; p < pauses; ++p) cpu_relax();
      if (late && (!io || round % kIoYieldEvery == 0)) yield_cpu();
      const std::int64_t now = now_ns();
      const bool away = cpus.lost(last, now);
      last = now;
      if (ready()) {
        // Success: grow the budget towards twice what this wait needed, unless the CPU was away
        // meanwhile (the wait then says nothing about the peer).
        if (away || busy) return true;
        const std::int64_t took = now - start;
        std::int64_t next = budget + budget / 4;
        if (next < 2 * took) next = 2 * took;
        budget_.store(next > limit ? limit : next, std::memory_order_relaxed);
        return true;
      }
      if (away) {  // lost the CPU to another thread: sleep now, the budget as it was
        t_failed_spin = {};
        return false;
      }
      if (round >= 4 && now - start >= budget) break;
    }
    // Failure: the peer was not coming soon, or could not run. Halve, down to a floor that
    // still catches a hand-off already in flight.
    std::int64_t next = budget / 2;
    budget_.store(next < kFloorNs ? kFloorNs : next, std::memory_order_relaxed);
    t_failed_spin = {start, budget};
    return false;
  }

  static constexpr std::int64_t kFloorNs = 500;
  // Less asleep than this, the sleep was the switch to a peer on this CPU, not a wake-up. A
  // wake-up from another CPU's reply took 6-8 us on the virtual machines measured (perf sched
  // timehist of a proxy's calls): at 10 us those sleeps taught nothing, the budget stayed at
  // the floor, and every call slept (16 us round trips became 27-35 us, and stayed so).
  static constexpr std::int64_t kWakeNs = 5'000;
  static constexpr unsigned kMaxPauses = 64;
  // From this backoff on (about a microsecond into the spin) each round yields too.
  static constexpr unsigned kYieldPauses = 16;
  // An io spin's rounds (spin_io): pauses up to this between its system calls, yields on every
  // this-many-th round once this long into the spin.
  static constexpr unsigned kIoMaxPauses = 4;
  static constexpr unsigned kIoYieldEvery = 4;
  static constexpr std::int64_t kYieldAfterNs = 1'000;
  std::atomic<std::int64_t> budget_{0};
};

}  // namespace troupe::detail
