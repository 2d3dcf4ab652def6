// troupe/threading/lock.hpp — threading.Lock and threading.RLock.
//
// Both are Lockable and TimedLockable, so `std::scoped_lock guard{lock};` is `with lock:`.
// They spin briefly before sleeping (DESIGN.md, "Waiting").
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

#include "troupe/detail/lockable.hpp"
#include "troupe/detail/mutex.hpp"
#include "troupe/timeout.hpp"

namespace troupe::threading {

namespace detail {
/// CPython's argument rules of `Lock.acquire(blocking, timeout)` and `RLock.acquire`:
/// a timeout with `blocking=false` → ValueError; negative other than -1 → ValueError;
/// exactly -1 s → forever. Returns the deadline (nullopt: forever). `blocking=false` → now.
std::optional<troupe::detail::steady::time_point> lock_deadline(bool blocking, const Timeout& t);
/// A number unique to the calling thread among live threads (never 0), for owner checks.
/// pthread_self() is one register read; a thread_local in a shared library is a call.
inline std::uintptr_t self_token() noexcept {
  return static_cast<std::uintptr_t>(pthread_self());
}
/// Throws RuntimeError "release unlocked lock".
[[noreturn]] void throw_release_unlocked();
}  // namespace detail

/// Python: `threading.Lock` (`_thread.LockType`, `allocate_lock()`).
/// Not owner-checked: any thread may release it, as in Python.
class Lock : public troupe::detail::Lockable<Lock> {
public:
  Lock() noexcept = default;
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

  /// Python: `acquire(blocking=True, timeout=-1)`. Returns whether the lock was taken.
  /// `timeout` forever or exactly -1 s waits forever.
  /// @throws ValueError for a timeout with `blocking=false`, or a negative timeout other
  ///         than -1 s (CPython's rules).
  bool acquire(bool blocking = true, Timeout timeout = {}) {
    if (blocking && timeout.is_forever()) {
      m_.lock();
      return true;
    }
    auto deadline = detail::lock_deadline(blocking, timeout);  // rejects bad arguments first
    if (m_.try_lock()) return true;
    if (!blocking) return false;
    return m_.lock_until(deadline);
  }

  /// Python: `release()`. @throws RuntimeError "release unlocked lock" if it is not held.
  void release() {
    if (!m_.locked()) detail::throw_release_unlocked();
    m_.unlock();
  }

  /// Python: `locked()`.
  bool locked() const noexcept { return m_.locked(); }

private:
  troupe::detail::FutexMutex m_;
};

/// Python: `threading.RLock`. Owner-checked and re-entrant.
class RLock : public troupe::detail::Lockable<RLock> {
public:
  RLock() noexcept = default;
  RLock(const RLock&) = delete;
  RLock& operator=(const RLock&) = delete;

  /// Python: `acquire(blocking=True, timeout=-1)`; the owner re-acquires at once.
  /// @throws ValueError under the same rules as Lock::acquire.
  bool acquire(bool blocking = true, Timeout timeout = {}) {
    const auto me = detail::self_token();
    if (blocking && timeout.is_forever()) {
      if (owner_.load(std::memory_order_relaxed) != me) {
        m_.lock();
        owner_.store(me, std::memory_order_relaxed);
      }
      ++count_;
      return true;
    }
    return acquire_slow(blocking, timeout);
  }

  /// Python: `release()`. @throws RuntimeError "cannot release un-acquired lock" when the caller
  /// is not the owner.
  void release() {
    if (owner_.load(std::memory_order_relaxed) != detail::self_token()) throw_not_owner();
    if (--count_ == 0) {
      owner_.store(0, std::memory_order_relaxed);
      m_.unlock();
    }
  }

  /// Python 3.14: `locked()` — held by any thread.
  bool locked() const noexcept { return m_.locked(); }

  /// The recursion depth held by the calling thread (0 if it does not own the lock).
  int _recursion_count() const noexcept {
    return owner_.load(std::memory_order_relaxed) == detail::self_token() ? count_ : 0;
  }
  /// Python: `_is_owned()`.
  bool _is_owned() const noexcept {
    return owner_.load(std::memory_order_relaxed) == detail::self_token();
  }
  /// Python: `_release_save()` — release fully, returning the depth for `_acquire_restore`.
  int _release_save();
  /// Python: `_acquire_restore(state)`.
  void _acquire_restore(int count);
  /// As `_acquire_restore`, with a deadline; false if it passed (the lock is then not held).
  bool _acquire_restore_until(int count, const std::optional<troupe::detail::steady::time_point>&);

private:
  bool acquire_slow(bool blocking, Timeout timeout);
  [[noreturn]] static void throw_not_owner();

  troupe::detail::FutexMutex m_;
  std::atomic<std::uintptr_t> owner_{0};
  int count_ = 0;  // written only by the owner
};

}  // namespace troupe::threading
