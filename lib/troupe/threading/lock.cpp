#include "troupe/threading/lock.hpp"

#include "troupe/errors.hpp"

namespace troupe::threading {
namespace detail {

std::optional<troupe::detail::steady::time_point> lock_deadline(bool blocking, const Timeout& t) {
  const bool no_timeout = t.is_forever() || t.is_minus_one();
  if (!blocking && !no_timeout) throw ValueError("can't specify a timeout for a non-blocking call");
  if (t.is_negative() && !t.is_minus_one())
    throw ValueError("timeout value must be a non-negative number");
  if (!blocking) return troupe::detail::steady::now();
  if (no_timeout) return std::nullopt;
  return t.deadline();
}

void throw_release_unlocked() {
  throw RuntimeError("release unlocked lock");
}

}  // namespace detail

void RLock::throw_not_owner() {
  throw RuntimeError("cannot release un-acquired lock");
}

bool RLock::acquire_slow(bool blocking, Timeout timeout) {
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

int RLock::_release_save() {
  if (owner_.load(std::memory_order_relaxed) != detail::self_token()) throw_not_owner();
  int c = count_;
  count_ = 0;
  owner_.store(0, std::memory_order_relaxed);
  m_.unlock();
  return c;
}

void RLock::_acquire_restore(int count) {
  (void)_acquire_restore_until(count, std::nullopt);
}

bool RLock::_acquire_restore_until(int count,
                                   const std::optional<troupe::detail::steady::time_point>& d) {
  if (!m_.lock_until(d)) return false;
  owner_.store(detail::self_token(), std::memory_order_relaxed);
  count_ = count;
  return true;
}

}  // namespace troupe::threading
