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
  auto signaled = [&] { return w.signaled.load(std::memory_order_acquire) != 0; };
  bool got = false;
  if (!deadline || *deadline > now) {
    static thread_local troupe::detail::AdaptiveSpin spin;
    got = spin.spin(signaled);
    while (!got) {
      const bool in_time = troupe::detail::futex_wait(w.signaled, 0, deadline);
      got = signaled();
      if (!in_time) break;
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
    w->signaled.store(1, std::memory_order_release);
    // A waiter that timed out takes guard_ before it returns, so it waits for us here. One that
    // saw the signal may already be gone: FUTEX_WAKE only hashes the address and never touches
    // the memory, so waking a dead word is at worst a spurious wake-up for a later user of it.
    troupe::detail::futex_wake(w->signaled, 1);
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
