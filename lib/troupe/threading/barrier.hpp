// troupe/threading/barrier.hpp — threading.Barrier.
#pragma once

#include <functional>

#include "troupe/threading/condition.hpp"
#include "troupe/threading/lock.hpp"
#include "troupe/timeout.hpp"

namespace troupe::threading {

/// Python: `threading.Barrier(parties, action=None, timeout=None)`.
///
/// `wait` returns a distinct index in [0, parties) to each of the parties of one generation;
/// the last to arrive runs `action` first. A wait that times out, an action that throws, or
/// `abort()` breaks the barrier: every waiter, and every later `wait`, throws
/// BrokenBarrierError until `reset()`.
class Barrier {
public:
  /// @throws ValueError "parties must be > 0" (CPython 3.13).
  explicit Barrier(int parties, std::function<void()> action = {}, Timeout timeout = {});
  Barrier(const Barrier&) = delete;
  Barrier& operator=(const Barrier&) = delete;

  /// Python: `wait(timeout=None)`; with no timeout the Barrier's own timeout applies.
  /// @throws BrokenBarrierError if the barrier is or becomes broken, or this wait times out
  ///         (which breaks it for the others too).
  int wait(std::optional<Timeout> timeout = std::nullopt);

  /// Python: `reset()`: back to the empty state; current waiters get BrokenBarrierError.
  void reset();
  /// Python: `abort()`: break the barrier.
  void abort();

  /// Python: `parties`.
  int parties() const noexcept { return parties_; }
  /// Python: `n_waiting`.
  int n_waiting();
  /// Python: `broken`.
  bool broken();

private:
  enum class State { filling, draining, resetting, broken };
  void enter();
  void release_all();
  void wait_release(const Timeout& timeout);
  void exit_one();
  void break_locked();

  Lock lock_;
  Condition cond_{lock_};
  std::function<void()> action_;
  Timeout timeout_;
  int parties_;
  State state_ = State::filling;
  int count_ = 0;
};

}  // namespace troupe::threading
