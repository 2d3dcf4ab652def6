// troupe/detail/lockable.hpp — the Lockable/TimedLockable members every lock-like troupe type
// shares, written once in terms of its Python-style acquire(blocking, timeout) and release().
// Not API: the members it adds are (they let std::scoped_lock stand in for `with`).
#pragma once

#include <chrono>

#include "troupe/timeout.hpp"

namespace troupe::detail {

template <class Derived>
class Lockable {
public:
  void lock() { (void)self().acquire(); }
  void unlock() { self().release(); }
  bool try_lock() { return self().acquire(false); }
  /// A negative duration only tries, as std's try_lock_for.
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> d) {
    return self().acquire(true, d < d.zero() ? Timeout(d.zero()) : Timeout(d));
  }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> tp) {
    return try_lock_for(tp - Clock::now());
  }

private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

}  // namespace troupe::detail
