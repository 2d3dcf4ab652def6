// troupe/multiprocessing/synchronize.hpp — multiprocessing's Lock, RLock, Semaphore,
// BoundedSemaphore, Condition, Event and Barrier: the threading primitives, working between
// processes.
//
// Each object lives in a small shared memory region (a memfd, detail::SharedRegion). Copies of
// an object are handles on the same lock, as Python's references are; a child made by fork
// inherits it, a child made by spawn gets it as an argument of its target (its fd goes with
// the arguments). Waiting is on futexes, after a short adaptive spin (DESIGN.md, "Waiting").
//
// Owner death: Lock and RLock are robust mutexes. When a process (or thread) dies holding one,
// the next acquire gets it, and `recovered_from()` names the pid of the holder that died: no
// deadlock, and the new holder is told (doc/multiprocessing/synchronize.md).
#pragma once

#include <pthread.h>

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>

#include "troupe/codec.hpp"
#include "troupe/detail/futex.hpp"
#include "troupe/detail/lockable.hpp"
#include "troupe/multiprocessing/detail/shared_region.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing {

namespace detail {

/// Python multiprocessing's acquire rules: `block=false` tries once (any timeout is ignored);
/// no timeout waits forever; a negative timeout is zero. nullopt: forever.
std::optional<troupe::detail::steady::time_point> acquire_deadline(bool block,
                                                                   const Timeout& timeout);

/// Waits until ready(): spins on it first, then sleeps on the shared futex word `seq`, counting
/// itself in `sleepers` so that wakers make a system call only when someone sleeps. Whoever
/// makes ready() true changes `seq` (see moved()). Returns ready()'s last value (false: the
/// deadline passed).
template <class Ready>
bool wait_shared(const std::atomic<std::uint32_t>& seq, troupe::detail::Sleepers& sleepers,
                 troupe::detail::AdaptiveSpin& spin,
                 const std::optional<troupe::detail::steady::time_point>& deadline, Ready ready) {
  if (spin.spin(ready)) return true;
  for (;;) {
    const std::uint32_t seen = seq.load(std::memory_order_seq_cst);
    sleepers.enter();
    if (ready()) {
      sleepers.leave();
      return true;
    }
    const auto how = sleepers.sleep(seq, seen, deadline, true);
    if (ready()) {
      spin.woke();
      return true;
    }
    if (how == troupe::detail::FutexWaited::timed_out) return false;
  }
}

/// Moves `seq` (after the change wait_shared's callers wait for), then wakes its sleepers.
inline void moved(std::atomic<std::uint32_t>& seq, troupe::detail::Sleepers& sleepers,
                  int n = INT_MAX) noexcept {
  seq.fetch_add(1, std::memory_order_seq_cst);
  sleepers.wake(seq, n, true);
}

/// The shared state of a Lock or RLock: a robust, process-shared, error-checking pthread mutex
/// and who holds it. The holder's fields share the mutex's cache line (the region starts on
/// one): taking the lock writes both, and a hand-off between processes then moves one line,
/// not two. The spin's learning, written by waiters, has a line of its own.
struct MutexState {
  MutexState();
  pthread_mutex_t mutex;
  std::atomic<std::int32_t> owner_pid{0};  // 0: free (a snapshot for locked(), repr)
  std::atomic<std::int32_t> owner_tid{0};
  std::int32_t count = 0;           // RLock depth; written by the holder
  std::int32_t recovered_from = 0;  // pid of a holder that died, for the current holder
  alignas(64) troupe::detail::AdaptiveSpin spin;
};
static_assert(offsetof(MutexState, recovered_from) + sizeof(std::int32_t) <= 64,
              "a Lock's holder fields fit the mutex's cache line");

/// Acquires `s` under Python's rules. `what` names the object in errors ("Lock").
bool mutex_acquire(MutexState& s, bool block, const Timeout& timeout, const char* what);
/// Releases `s`, held by the calling thread. @throws as Lock::release.
void mutex_release(MutexState& s, const char* what);
bool mutex_is_mine(const MutexState& s) noexcept;
/// "None", "MainProcess" (the holder is this thread: its process's name), "SomeOtherThread",
/// "SomeOtherProcess": Python's owner text in repr.
std::string mutex_owner_text(const MutexState& s);

struct SemaphoreState {
  SemaphoreState(std::uint32_t value, std::uint32_t maxvalue) : value(value), maxvalue(maxvalue) {}
  std::atomic<std::uint32_t> value;
  troupe::detail::Sleepers sleepers;
  std::uint32_t maxvalue;  // SEM_VALUE_MAX for an unbounded Semaphore
  troupe::detail::AdaptiveSpin spin;
};

struct EventState {
  std::atomic<std::uint32_t> flag{0};
  troupe::detail::Sleepers sleepers;
  troupe::detail::AdaptiveSpin spin;
};

/// Condition: waiters and signals are guarded by the condition's lock; `seq` moves on each
/// notify, and waiters sleep on it.
struct ConditionState {
  std::atomic<std::uint32_t> seq{0};
  troupe::detail::Sleepers sleepers;
  std::int32_t waiters = 0;
  std::int32_t signals = 0;
  troupe::detail::AdaptiveSpin spin;
};

struct BarrierState {
  BarrierState(int parties, std::int64_t timeout_ns) : parties(parties), timeout_ns(timeout_ns) {}
  MutexState guard;
  std::atomic<std::uint32_t> generation{0};  // moves when a generation is released or broken
  troupe::detail::Sleepers sleepers;
  std::int32_t parties;
  std::int32_t count = 0;          // arrived in this generation
  std::int32_t broken = 0;         // broken until reset()
  std::uint32_t broken_gen = ~0u;  // the last generation that broke
  std::int64_t timeout_ns;         // the default timeout; < 0: none
  troupe::detail::AdaptiveSpin spin;
};

}  // namespace detail

/// Python: `multiprocessing.Lock()`: a non-recursive lock shared between processes.
/// Lockable, so `std::scoped_lock guard{lock};` is `with lock:`.
///
/// Differences from Python: the lock is released by the thread that acquired it (a robust
/// mutex has an owner: that is what lets the next acquirer recover it when the owner dies);
/// acquiring it again from the thread that holds it raises instead of hanging forever.
class Lock : public troupe::detail::Lockable<Lock> {
public:
  Lock();

  /// Python: `acquire(block=True, timeout=None)`: block=false tries once; a negative timeout
  /// is zero. Returns whether the lock was taken. If its previous holder died holding it, the
  /// lock is taken all the same and recovered_from() names that holder.
  /// @throws RuntimeError when the calling thread already holds it and would wait forever.
  bool acquire(bool block = true, Timeout timeout = {});
  /// Python: `release()`. @throws ValueError "semaphore or lock released too many times" when
  /// not held; RuntimeError when another thread or process holds it.
  void release();
  /// Python 3.14: `locked()` (a snapshot).
  bool locked() const noexcept { return s_->owner_pid.load(std::memory_order_relaxed) != 0; }
  /// While the calling thread holds the lock: the pid of a previous holder that died holding
  /// it, whom this acquisition recovered it from (nullopt: released normally).
  std::optional<int> recovered_from() const noexcept;
  /// "<Lock(owner=None)>", "<Lock(owner=MainProcess)>", "<Lock(owner=SomeOtherProcess)>"…
  std::string repr() const;

  // Condition's protocol (not API).
  bool _is_owned() const noexcept { return detail::mutex_is_mine(*s_.state); }
  int _release_save();
  void _acquire_restore(int count);

  bool operator==(const Lock& o) const noexcept { return s_ == o.s_; }
  explicit Lock(detail::Shared<detail::MutexState> s) : s_(std::move(s)) {}
  const detail::Shared<detail::MutexState>& _shared() const noexcept { return s_; }

private:
  detail::Shared<detail::MutexState> s_;
};

/// Python: `multiprocessing.RLock()`: a recursive lock shared between processes; only its
/// holder releases it. Recovered like Lock when its holder dies (the depth starts again at 1).
class RLock : public troupe::detail::Lockable<RLock> {
public:
  RLock();
  bool acquire(bool block = true, Timeout timeout = {});
  /// @throws RuntimeError "cannot release un-acquired lock" when the caller does not hold it.
  void release();
  std::optional<int> recovered_from() const noexcept;
  /// "<RLock(MainProcess, 2)>", "<RLock(None, 0)>", "<RLock(SomeOtherProcess, nonzero)>".
  std::string repr() const;

  bool _is_owned() const noexcept { return detail::mutex_is_mine(*s_.state); }
  int _release_save();
  void _acquire_restore(int count);

  bool operator==(const RLock& o) const noexcept { return s_ == o.s_; }
  explicit RLock(detail::Shared<detail::MutexState> s) : s_(std::move(s)) {}
  const detail::Shared<detail::MutexState>& _shared() const noexcept { return s_; }

private:
  detail::Shared<detail::MutexState> s_;
};

/// Python: `multiprocessing.Semaphore(value=1)`. Has no owner: any process releases it, and a
/// holder's death is not detected (use a Lock for that).
class Semaphore : public troupe::detail::Lockable<Semaphore> {
public:
  /// @throws ValueError when value is negative or above SEM_VALUE_MAX.
  explicit Semaphore(int value = 1);
  bool acquire(bool block = true, Timeout timeout = {});
  /// Python: `release()` (3.9+: `release(n)` is threading's; here n ≥ 1 too).
  /// @throws ValueError when the value would pass SEM_VALUE_MAX.
  void release(int n = 1);
  /// Python: `get_value()`.
  int get_value() const noexcept {
    return static_cast<int>(s_->value.load(std::memory_order_relaxed));
  }
  /// "<Semaphore(value=1)>".
  std::string repr() const;

  bool operator==(const Semaphore& o) const noexcept { return s_ == o.s_; }
  explicit Semaphore(detail::Shared<detail::SemaphoreState> s) : s_(std::move(s)) {}
  const detail::Shared<detail::SemaphoreState>& _shared() const noexcept { return s_; }

protected:
  Semaphore(int value, int maxvalue);
  detail::Shared<detail::SemaphoreState> s_;
};

/// Python: `multiprocessing.BoundedSemaphore(value=1)`: release() past the initial value
/// raises ValueError "semaphore or lock released too many times".
class BoundedSemaphore : public Semaphore {
public:
  explicit BoundedSemaphore(int value = 1) : Semaphore(value, value) {}
  explicit BoundedSemaphore(detail::Shared<detail::SemaphoreState> s) : Semaphore(std::move(s)) {}
  /// "<BoundedSemaphore(value=1, maxvalue=2)>".
  std::string repr() const;
};

/// Python: `multiprocessing.Event()`.
class Event {
public:
  Event();
  bool is_set() const noexcept { return s_->flag.load(std::memory_order_acquire) != 0; }
  void set();
  void clear() noexcept { s_->flag.store(0, std::memory_order_release); }
  /// Python: `wait(timeout=None)`: returns the flag (false when the timeout passed first).
  bool wait(Timeout timeout = {});

  bool operator==(const Event& o) const noexcept { return s_ == o.s_; }
  explicit Event(detail::Shared<detail::EventState> s) : s_(std::move(s)) {}
  const detail::Shared<detail::EventState>& _shared() const noexcept { return s_; }

private:
  detail::Shared<detail::EventState> s_;
};

/// The lock of a Condition: a Lock or an RLock.
using ConditionLock = std::variant<Lock, RLock>;

/// Python: `multiprocessing.Condition(lock=None)` (an RLock of its own by default). Lockable
/// through its lock.
class Condition : public troupe::detail::Lockable<Condition> {
public:
  Condition();
  explicit Condition(ConditionLock lock);

  bool acquire(bool block = true, Timeout timeout = {});
  void release();
  /// Python: `wait(timeout=None)`: releases the lock, waits for a notify, re-acquires it.
  /// Returns false if the timeout passed first. @throws RuntimeError "must acquire() condition
  /// before using wait()".
  bool wait(Timeout timeout = {});
  /// Python: `wait_for(predicate, timeout=None)`: the predicate's last value.
  template <class Predicate>
  bool wait_for(Predicate predicate, Timeout timeout = {}) {
    const auto deadline = timeout.deadline();
    bool result = predicate();
    while (!result) {
      if (deadline && troupe::detail::steady::now() >= *deadline) break;
      wait(deadline ? Timeout(*deadline) : Timeout());
      result = predicate();
    }
    return result;
  }
  /// Python: `notify(n=1)`, `notify_all()`. @throws RuntimeError "lock is not owned".
  void notify(int n = 1);
  void notify_all();

  /// The condition's lock (Python keeps it as `_lock`).
  const ConditionLock& get_lock() const noexcept { return lock_; }

  Condition(ConditionLock lock, detail::Shared<detail::ConditionState> s)
      : lock_(std::move(lock)), s_(std::move(s)) {}
  const detail::Shared<detail::ConditionState>& _shared() const noexcept { return s_; }

private:
  bool is_owned() const noexcept;
  ConditionLock lock_;
  detail::Shared<detail::ConditionState> s_;
};

/// Python: `multiprocessing.Barrier(parties, action=None, timeout=None)`. The last process to
/// arrive runs `action` (under spawn, the action crosses to a child only if it is a function
/// registered with TROUPE_ENTRY).
class Barrier {
public:
  /// @throws ValueError "parties must be > 0".
  explicit Barrier(int parties, std::function<void()> action = {}, Timeout timeout = {});

  /// Python: `wait(timeout=None)`: an index in [0, parties), distinct within a generation.
  /// @throws BrokenBarrierError (threading's) if the barrier is or becomes broken or this wait
  /// times out (which breaks it for all).
  int wait(std::optional<Timeout> timeout = std::nullopt);
  void reset();
  void abort();
  int parties() const noexcept { return s_->parties; }
  int n_waiting() const;
  bool broken() const;

  const std::function<void()>& action() const noexcept { return action_; }
  Barrier(detail::Shared<detail::BarrierState> s, std::function<void()> action)
      : s_(std::move(s)), action_(std::move(action)) {}
  const detail::Shared<detail::BarrierState>& _shared() const noexcept { return s_; }

private:
  void break_locked();
  detail::Shared<detail::BarrierState> s_;
  std::function<void()> action_;
};

namespace detail {
/// The codec of a handle made of one Shared<State>: its region crosses to a spawned child.
template <class T, class State>
struct SharedCodec : troupe::CodecVia<T, RegionWire> {
  static RegionWire to(const T& x) { return to_wire(x._shared()); }
  static T from(const RegionWire& w) { return T(from_wire<State>(w)); }
};
/// The entry-point name of a Barrier's action ("" for none). @throws ValueError if it cannot
/// cross to a spawned child.
std::string barrier_action_name(const std::function<void()>& action);
std::function<void()> barrier_action(const std::string& name);
}  // namespace detail

}  // namespace troupe::multiprocessing

template <>
struct troupe::Codec<troupe::multiprocessing::Lock>
    : troupe::multiprocessing::detail::SharedCodec<troupe::multiprocessing::Lock,
                                                   troupe::multiprocessing::detail::MutexState> {};
template <>
struct troupe::Codec<troupe::multiprocessing::RLock>
    : troupe::multiprocessing::detail::SharedCodec<troupe::multiprocessing::RLock,
                                                   troupe::multiprocessing::detail::MutexState> {};
template <>
struct troupe::Codec<troupe::multiprocessing::Semaphore>
    : troupe::multiprocessing::detail::SharedCodec<
          troupe::multiprocessing::Semaphore, troupe::multiprocessing::detail::SemaphoreState> {};
template <>
struct troupe::Codec<troupe::multiprocessing::BoundedSemaphore>
    : troupe::multiprocessing::detail::SharedCodec<
          troupe::multiprocessing::BoundedSemaphore,
          troupe::multiprocessing::detail::SemaphoreState> {};
template <>
struct troupe::Codec<troupe::multiprocessing::Event>
    : troupe::multiprocessing::detail::SharedCodec<troupe::multiprocessing::Event,
                                                   troupe::multiprocessing::detail::EventState> {};

template <>
struct troupe::Codec<troupe::multiprocessing::Condition>
    : troupe::CodecVia<troupe::multiprocessing::Condition,
                       std::tuple<troupe::multiprocessing::ConditionLock,
                                  troupe::multiprocessing::detail::RegionWire>> {
  using Wire = std::tuple<troupe::multiprocessing::ConditionLock,
                          troupe::multiprocessing::detail::RegionWire>;
  static Wire to(const troupe::multiprocessing::Condition& c) {
    return {c.get_lock(), troupe::multiprocessing::detail::to_wire(c._shared())};
  }
  static troupe::multiprocessing::Condition from(const Wire& w) {
    return {
        std::get<0>(w),
        troupe::multiprocessing::detail::from_wire<troupe::multiprocessing::detail::ConditionState>(
            std::get<1>(w))};
  }
};

template <>
struct troupe::Codec<troupe::multiprocessing::Barrier>
    : troupe::CodecVia<troupe::multiprocessing::Barrier,
                       std::tuple<troupe::multiprocessing::detail::RegionWire, std::string>> {
  using Wire = std::tuple<troupe::multiprocessing::detail::RegionWire, std::string>;
  static Wire to(const troupe::multiprocessing::Barrier& b) {
    return {troupe::multiprocessing::detail::to_wire(b._shared()),
            troupe::multiprocessing::detail::barrier_action_name(b.action())};
  }
  static troupe::multiprocessing::Barrier from(const Wire& w) {
    return {
        troupe::multiprocessing::detail::from_wire<troupe::multiprocessing::detail::BarrierState>(
            std::get<0>(w)),
        troupe::multiprocessing::detail::barrier_action(std::get<1>(w))};
  }
};
