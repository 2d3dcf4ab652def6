// troupe/threading/condition.hpp — threading.Condition.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

#include "troupe/detail/lockable.hpp"
#include "troupe/detail/mutex.hpp"
#include "troupe/threading/lock.hpp"
#include "troupe/timeout.hpp"

namespace troupe::threading {

/// Python: `threading.Condition(lock=None)`. With no lock it owns an RLock, as Python's does;
/// it also takes a given Lock or RLock (held by reference; it must outlive the Condition).
///
/// `notify(n)` wakes at most n waiters, oldest first. `wait` releases an RLock fully, whatever
/// its recursion depth, and restores that depth before returning. A waiter whose timeout
/// expires while it is being notified counts as notified (Python may lose that notify).
/// Lockable and TimedLockable: `std::scoped_lock guard{cond};` is `with cond:`.
class Condition : public troupe::detail::Lockable<Condition> {
public:
  Condition() noexcept : kind_(Kind::own_rlock), rlock_(&own_) {}
  explicit Condition(Lock& lock) noexcept : kind_(Kind::lock), lock_(&lock) {}
  explicit Condition(RLock& lock) noexcept : kind_(Kind::rlock), rlock_(&lock) {}
  Condition(const Condition&) = delete;
  Condition& operator=(const Condition&) = delete;

  /// Python: `acquire(*args)` — the underlying lock's acquire.
  bool acquire(bool blocking = true, Timeout timeout = {}) {
    return kind_ == Kind::lock ? lock_->acquire(blocking, timeout)
                               : rlock_->acquire(blocking, timeout);
  }
  /// Python: `release()`.
  void release() { kind_ == Kind::lock ? lock_->release() : rlock_->release(); }
  /// Python 3.14: `locked()`.
  bool locked() const noexcept { return kind_ == Kind::lock ? lock_->locked() : rlock_->locked(); }

  /// Python: `wait(timeout=None)`. Returns false if the timeout expired. A zero or negative
  /// timeout releases and re-acquires the lock and returns false (CPython's behaviour).
  /// @throws RuntimeError "cannot wait on un-acquired lock" if the caller does not hold the lock.
  bool wait(Timeout timeout = {});

  /// Python: `wait_for(predicate, timeout=None)`: waits until `predicate()` is true or the
  /// timeout passes, and returns the predicate's last value.
  template <class Predicate>
  auto wait_for(Predicate predicate, Timeout timeout = {}) -> std::decay_t<decltype(predicate())> {
    auto result = predicate();
    if (result) return result;
    const auto deadline = timeout.deadline();
    while (!result) {
      if (deadline) {
        if (troupe::detail::steady::now() >= *deadline) break;
        (void)wait(*deadline);
      } else {
        (void)wait();
      }
      result = predicate();
    }
    return result;
  }

  /// Python: `notify(n=1)`. @throws RuntimeError "cannot notify on un-acquired lock".
  void notify(int n = 1);
  /// Python: `notify_all()`.
  void notify_all();

private:
  static constexpr std::uint32_t kWaiting = 0, kSleeping = 1, kSignaled = 2;
  struct Waiter {
    std::atomic<std::uint32_t> state{kWaiting};
    Waiter* prev = nullptr;
    Waiter* next = nullptr;
  };
  enum class Kind : std::uint8_t { own_rlock, lock, rlock };

  bool is_owned() const noexcept;
  void unlink(Waiter* w) noexcept;
  void notify_locked(int n) noexcept;

  Kind kind_;
  RLock own_;
  Lock* lock_ = nullptr;
  RLock* rlock_ = nullptr;
  troupe::detail::FutexMutex guard_;  // guards the waiter list
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
  troupe::detail::AdaptiveSpin spin_;
};

}  // namespace troupe::threading
