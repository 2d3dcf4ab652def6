#include "troupe/threading/condition.hpp"

#include <climits>

#include "troupe/errors.hpp"

namespace troupe::threading {

bool Condition::is_owned() const noexcept {
  return kind_ == Kind::lock ? lock_->locked() : rlock_->_is_owned();
}

void Condition::unlink(Waiter* w) noexcept {
  (w->prev ? w->prev->next : head_) = w->next;
  (w->next ? w->next->prev : tail_) = w->prev;
  w->prev = w->next = nullptr;
}

bool Condition::wait(Timeout timeout) {
  if (!is_owned()) throw RuntimeError("cannot wait on un-acquired lock");
  Waiter w;
  guard_.lock();
  w.prev = tail_;
  (tail_ ? tail_->next : head_) = &w;
  tail_ = &w;
  guard_.unlock();

  int saved = 0;
  if (kind_ == Kind::lock) {
    lock_->release();
  } else {
    saved = rlock_->_release_save();
  }

  const auto now = troupe::detail::steady::now();
  const auto deadline = timeout.is_negative() ? std::optional(now) : timeout.deadline(now);
  auto signaled = [&] { return w.state.load(std::memory_order_acquire) == kSignaled; };
  bool got = false;
  if (!deadline || *deadline > now) {
    got = spin_.spin(signaled);
    while (!got) {
      // Announce the sleep, so that notify makes the system call only for sleepers.
      std::uint32_t expect = kWaiting;
      if (!w.state.compare_exchange_strong(expect, kSleeping, std::memory_order_acq_rel)) {
        got = true;  // signaled meanwhile
        break;
      }
      const bool in_time = troupe::detail::futex_wait(w.state, kSleeping, deadline);
      got = signaled();
      if (got) spin_.woke();
      if (!in_time) break;
      expect = kSleeping;
      w.state.compare_exchange_strong(expect, kWaiting, std::memory_order_acq_rel);
    }
  }
  if (!got) {
    guard_.lock();
    got = signaled();  // notified between the timeout and here: it counts
    if (!got) unlink(&w);
    guard_.unlock();
  }

  if (kind_ == Kind::lock) {
    lock_->lock();
  } else {
    rlock_->_acquire_restore(saved);
  }
  return got;
}

void Condition::notify_locked(int n) noexcept {
  guard_.lock();
  while (n-- > 0 && head_) {
    Waiter* w = head_;
    unlink(w);
    const std::uint32_t was = w->state.exchange(kSignaled, std::memory_order_acq_rel);
    // A waiter that timed out takes guard_ before it returns, so it waits for us here. One that
    // saw the signal may already be gone: FUTEX_WAKE only hashes the address and never touches
    // the memory, so waking a dead word is at worst a spurious wake-up for a later user of it.
    if (was == kSleeping) troupe::detail::futex_wake(w->state, 1);
  }
  guard_.unlock();
}

void Condition::notify(int n) {
  if (!is_owned()) throw RuntimeError("cannot notify on un-acquired lock");
  notify_locked(n);
}

void Condition::notify_all() {
  if (!is_owned()) throw RuntimeError("cannot notify on un-acquired lock");
  notify_locked(INT_MAX);
}

}  // namespace troupe::threading
