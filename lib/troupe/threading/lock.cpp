#include "troupe/threading/lock.hpp"

#include "troupe/errors.hpp"

namespace troupe::threading {
namespace detail {

std::optional<troupe::detail::steady::time_point> lock_deadline(bool blocking, const Timeout& t) {
  const bool no_timeout = t.is_forever() || t.is_minus_one();
  if (!blocking && !no_timeout)
    throw ValueError("can't specify a timeout for a non-blocking call");
  if (t.is_negative() && !t.is_minus_one())
    throw ValueError("timeout value must be a non-negative number");
  if (!blocking) return troupe::detail::steady::now();
  if (no_timeout) return std::nullopt;
  return t.deadline();
}

}  // namespace detail

void Lock::release() {
  if (!m_.locked()) throw RuntimeError("release unlocked lock");
  m_.unlock();
}

bool RLock::acquire(bool blocking, Timeout timeout) {
  const auto me = detail::self_token();
  auto deadline = detail::lock_deadline(blocking, timeout);  // rejects bad arguments first
  if (owner_.load(std::memory_order_relaxed) == me) {
    ++count_;
    return true;
  }
  if (!m_.try_lock() && !(blocking && m_.lock_until(deadline))) return false;
  owner_.store(me, std::memory_order_relaxed);
  count_ = 1;
  return true;
}

void RLock::release() {
  if (owner_.load(std::memory_order_relaxed) != detail::self_token())
    throw RuntimeError("cannot release un-acquired lock");
  if (--count_ == 0) {
    owner_.store(0, std::memory_order_relaxed);
    m_.unlock();
  }
}

int RLock::_release_save() {
  if (owner_.load(std::memory_order_relaxed) != detail::self_token())
    throw RuntimeError("cannot release un-acquired lock");
  int c = count_;
  count_ = 0;
  owner_.store(0, std::memory_order_relaxed);
  m_.unlock();
  return c;
}

void RLock::_acquire_restore(int count) { (void)_acquire_restore_until(count, std::nullopt); }

bool RLock::_acquire_restore_until(int count,
                                   const std::optional<troupe::detail::steady::time_point>& d) {
  if (!m_.lock_until(d)) return false;
  owner_.store(detail::self_token(), std::memory_order_relaxed);
  count_ = count;
  return true;
}

}  // namespace troupe::threading
