// troupe/detail/mutex.hpp — FutexMutex and FutexCondVar: the spin-then-sleep primitives under
// threading::Lock, the queues and every other troupe waiter. Not API.
//
// FutexMutex is Drepper's three-state futex mutex ("Futexes Are Tricky": 0 free, 1 held, 2 held
// and maybe sleepers) with an adaptive spin before sleeping. It is not owner-checked: any thread
// may unlock it, as Python's Lock allows.
//
// FutexCondVar is a sequence-number condition variable. A waiter records the sequence, releases
// the mutex, spins until the sequence moves, then sleeps on it. A notifier that holds the mutex
// pays nothing when nobody waits, and makes a system call only when a waiter is asleep.
// Spurious wake-ups are allowed: callers loop on their predicate.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>
#include <optional>

#include "troupe/detail/futex.hpp"

namespace troupe::detail {

class FutexMutex {
public:
  FutexMutex() noexcept = default;
  FutexMutex(const FutexMutex&) = delete;
  FutexMutex& operator=(const FutexMutex&) = delete;

  bool try_lock() noexcept {
    std::uint32_t c = 0;
    return state_.compare_exchange_strong(c, 1, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void lock() noexcept {
    if (try_lock()) return;
    (void)lock_slow(std::nullopt);
  }

  /// Returns false if `deadline` passed first.
  bool lock_until(const std::optional<steady::time_point>& deadline) noexcept {
    if (try_lock()) return true;
    return lock_slow(deadline);
  }

  void unlock() noexcept {
    if (state_.exchange(0, std::memory_order_release) == 2) futex_wake(state_, 1);
  }

  bool locked() const noexcept { return state_.load(std::memory_order_relaxed) != 0; }

private:
  // Drepper's lock, with one change: `sleepers_` counts the threads between announcing a sleep
  // and returning from it, so a thread woken from its sleep marks the lock "2" (unlock must
  // wake) only while someone else may sleep. Plain Drepper marks every lock taken after a sleep
  // as "2", and under steady contention each unlock then pays a futex_wake for nobody.
  // A thread that takes the lock by its own marking exchange keeps the mark: clearing it there
  // could erase the mark of a thread that has just gone to sleep (a lost wake-up).
  bool lock_slow(const std::optional<steady::time_point>& deadline) noexcept {
    if (spin_.spin([&] { return state_.load(std::memory_order_relaxed) == 0 && try_lock(); }))
      return true;
    for (;;) {
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (state_.exchange(2, std::memory_order_acquire) == 0) {
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        return true;
      }
      const bool in_time = futex_wait(state_, 2, deadline);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      // State 2 stays set whatever happens next, so an unlock still wakes the others.
      if (!in_time) return false;
      std::uint32_t c = 0;
      if (state_.compare_exchange_strong(c, sleepers_.load(std::memory_order_seq_cst) != 0 ? 2 : 1,
                                         std::memory_order_acquire, std::memory_order_relaxed)) {
        spin_.woke();
        return true;
      }
    }
  }

  std::atomic<std::uint32_t> sleepers_{0};
  std::atomic<std::uint32_t> state_{0};
  AdaptiveSpin spin_;
};

class FutexCondVar {
public:
  FutexCondVar() noexcept = default;
  FutexCondVar(const FutexCondVar&) = delete;
  FutexCondVar& operator=(const FutexCondVar&) = delete;

  /// Caller holds `m`. Releases it, waits for a notify (or a spurious wake-up, or the deadline),
  /// re-acquires it. Returns false if the deadline passed without a notify.
  /// `spin` false: sleep at once (for callers that spun on their own condition already).
  template <class Mutex>
  bool wait(Mutex& m, const std::optional<steady::time_point>& deadline = std::nullopt,
            bool spin = true) noexcept {
    const std::uint32_t seq = seq_.load(std::memory_order_relaxed);
    ++waiters_;  // guarded by m
    m.unlock();
    auto moved = [&] { return seq_.load(std::memory_order_acquire) != seq; };
    bool notified = spin ? spin_.spin(moved) : moved();
    while (!notified) {
      // seq was read under m: a notify since (notifiers hold m) has moved seq_, and the futex
      // call below returns at once (Sleepers' protocol).
      sleepers_.enter();
      const FutexWaited how = sleepers_.sleep(seq_, seq, deadline);
      const bool in_time = how != FutexWaited::timed_out;
      notified = seq_.load(std::memory_order_acquire) != seq;
      if (notified && spin) spin_.woke();
      if (!in_time) break;  // else: notified, or a spurious wake-up to sleep through again
    }
    m.lock();
    --waiters_;
    return notified;
  }

  /// Caller holds the mutex. Wakes at least one waiter if any (spinning waiters all see it).
  void notify_one() noexcept { notify(1); }
  void notify_all() noexcept { notify(INT_MAX); }

  /// Waiters counted under the mutex; read it only while holding the mutex.
  int waiters() const noexcept { return waiters_; }

private:
  // Sleepers (troupe/detail/futex.hpp): a notify makes a futex call only while some sleeper
  // sleeps that no notify has woken yet.
  void notify(int n) noexcept {
    if (waiters_ == 0) return;
    seq_.fetch_add(1, std::memory_order_seq_cst);
    sleepers_.wake(seq_, n);
  }

  std::atomic<std::uint32_t> seq_{0};
  Sleepers sleepers_;
  int waiters_ = 0;
  AdaptiveSpin spin_;
};

}  // namespace troupe::detail
