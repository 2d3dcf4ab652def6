// troupe/multiprocessing/managers/detail/waits.hpp — the waiting objects of a manager, with
// waits that hold no thread: the server side of SyncManager's Queue, JoinableQueue, Lock, RLock,
// Semaphore, BoundedSemaphore, Condition, Event and Barrier (AsyncQueue<T>, AsyncLock, ...).
//
// Python's manager serves each connection on a thread of its own, so 1000 clients blocked in
// `get()` hold 1000 threads. Here every operation that can wait records a waiter and returns;
// the waiter is completed later by what satisfies it (a put, a release, a notify, a set, the last
// party), by its timer, by cancel() or by release_connection().
//
// Rules common to every type
// - Each object takes a boost::asio::any_io_executor: its timers run there, and a handler is
//   posted there unless its Caller names an executor of its own (Caller::ex; a server gives its
//   connection's strand, so an answer goes straight to the thread that writes it, with no hop
//   through another thread). Objects are thread-safe: any thread may call any member,
//   concurrently.
// - A waiting operation `async_X(Caller who, ..., handler)` returns a WaitId (unique in the
//   process) and calls `handler` exactly once: never inside the initiating call (it is posted,
//   even when the result is known at once, and for a bad argument), never while the object's
//   mutex is held. A bad argument (Python's ValueError, RuntimeError) reaches the handler as its
//   exception_ptr; the non-waiting members (release, notify, set, put_nowait, task_done, ...)
//   throw it. A handler is dropped uncalled only if the executor is destroyed without running it.
//   One exception to "posted": inside a waits::AnswersHere of the caller, on a thread running
//   the caller's strand, the caller's handler is kept there and runs when the scope's run() is
//   called, after the initiating call has returned (a server, around an object's call).
// - Timeouts are WaitTimeout (std::optional<std::chrono::nanoseconds>): nullopt is Python's
//   None; each call applies its own CPython rule to a negative value (below). A timeout of 100
//   years or more is forever. A waiter with no timeout has no timer, and is not Asio work (an
//   io_context whose only business is such waiters returns from run()).
// - FIFO by hand-off: what satisfies a waiter (a unit, the lock, an item, a free slot) goes
//   straight to the longest waiter, under the mutex; no later caller, not even a non-blocking
//   one, takes it first, and no wake-up is lost. Python wakes a waiter that re-checks and may
//   lose to a newcomer, and promises no order ("should not be relied on"): hand-off is one order
//   it allows. A woken waiter's outcome is the one Python's re-check decides: a getter woken by
//   shutdown() gets ShutDown only if the queue is empty (a getter waits only on an empty queue);
//   a notified Condition waiter completes only once it has re-acquired the lock, behind the
//   lock's earlier waiters.
// - cancel(WaitId) gives up one pending waiter, cancel(Caller) every one of that caller (a lane
//   runs its calls in order, so that is at most one in practice): the handler gets
//   concurrent::futures::CancelledError naming the call. They return whether (how many) they
//   found; a completed waiter is not found.
// - release_connection(connection): that connection closed. Its waiters fail with
//   ConnectionAbortedError ("<call>: connection N closed while the call waited") and what it
//   held is released, per type below. (Python's manager keeps a dead client's lock forever.)
// - Destroying an object fails its pending waiters with RuntimeError ("... destroyed ..."); a
//   lock shared with a Condition lasts until both are destroyed.
// - A Caller {connection, lane} stands where Python has a thread: RLock ownership, Condition's
//   owner check.
//
// Per type (CPython 3.13 threading.py and queue.py)
// - AsyncLock: acquire(block, timeout): nullopt or exactly -1 s waits forever, any other negative
//   value → ValueError "timeout value must be a non-negative number", a timeout with block=false →
//   ValueError "can't specify a timeout for a non-blocking call", 0 tries once. release() of an
//   unlocked lock → RuntimeError "release unlocked lock"; anyone may release it (Python's Lock
//   has no owner). On disconnect: released if a caller of that connection acquired it last.
// - AsyncRLock: the same argument rules; the owner re-acquires at once (count + 1); a release by
//   anyone else, or of an unlocked RLock → RuntimeError "cannot release un-acquired lock". On
//   disconnect: released whatever its count, if any lane of that connection owns it.
// - AsyncCondition: over a new RLock, or sharing an AsyncLock/AsyncRLock. wait and notify check
//   ownership as Python's _is_owned (an RLock owned by the caller; a Lock locked by anyone):
//   RuntimeError "cannot wait on un-acquired lock" / "cannot notify on un-acquired lock". wait
//   releases the lock fully (an RLock's whole count) and completes after re-acquiring it (count
//   restored): true if notified, false on timeout, false at once for timeout <= 0 (the lock is
//   still released and re-acquired, as Python does). notify(n) wakes the n longest waiters.
//   wait_for is the client's (as ConditionProxy's). acquire/release are the lock's. A cancelled
//   or disconnected wait does not re-acquire the lock.
// - AsyncSemaphore, AsyncBoundedSemaphore: a negative initial value → ValueError; acquire with
//   block=false and a timeout → ValueError "can't specify timeout for non-blocking acquire";
//   timeout <= 0 → false at once if no unit is free. release(n): n < 1 → ValueError "n must be
//   one or more"; bounded and over the initial value → ValueError "Semaphore released too many
//   times". On disconnect, by OnDisconnect: release_held gives back the units the connection
//   holds (units its callers acquired less units they released, never below 0, and a bounded
//   semaphore never above its initial value); keep gives back nothing. Default: keep, Python's
//   behaviour (CPython's tests have a process acquire and exit, and its parent release);
//   release_held suits a limiter of a resource whose holders may die.
// - AsyncEvent: set, clear, is_set, wait: true once set (even if cleared again before the
//   handler runs), false on timeout, is_set() at once for timeout <= 0. Nothing is held.
// - AsyncBarrier(parties, timeout, action): parties < 1 → ValueError "parties must be > 0". wait
//   returns an index in [0, parties), in arrival order; the last to arrive gets parties - 1 and
//   runs `action` first (on its own calling thread, under the barrier's mutex: the action must
//   not call the barrier). wait's timeout nullopt means the barrier's own. A wait that times out
//   (at once for timeout <= 0 unless it is the last party), abort(), or an action that throws
//   (the last party gets the action's exception) breaks the barrier: every waiter, and every
//   later wait, gets BrokenBarrierError until reset(). reset() fails the current waiters with
//   BrokenBarrierError and makes the barrier usable again. Releasing is instant (all parties
//   completed at once), so a wait never blocks on a draining barrier. A cancelled party leaves
//   (n_waiting drops, the barrier holds, as when a Python thread is interrupted in wait); a
//   party whose connection closes breaks the barrier, so the others learn at once (Python's
//   would wait for a party that is gone).
// - AsyncQueue<T> (Python's manager serves Queue and JoinableQueue both as queue.Queue):
//   maxsize <= 0 is unbounded. put: ShutDown once shut down; on a bounded queue, block=false and
//   full → Full, block with a negative timeout → ValueError "'timeout' must be a non-negative
//   number" (full or not; an unbounded queue ignores the timeout, as Python), full until the
//   timeout → Full. get: ShutDown when shut down and empty; block=false and empty → Empty; block
//   with a negative timeout → ValueError (items or not); empty until the timeout → Empty.
//   put_nowait/get_nowait are synchronous and throw. task_done: ValueError "task_done() called
//   too many times". join waits until every item put was marked done. shutdown(immediate): later
//   puts and blocked putters get ShutDown, blocked getters get ShutDown, later gets drain what
//   is left and then get ShutDown; with immediate the items left are dropped, each counted done
//   (which may complete join()). T may be move-only. On disconnect nothing is released: an item
//   a closed connection got and never marked done keeps join() waiting, as in Python.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/caller.hpp"

namespace troupe::multiprocessing::managers::detail {

/// A wait's timeout: nullopt is Python's None (forever, or a Barrier's own timeout).
using WaitTimeout = std::optional<std::chrono::nanoseconds>;
/// Names one waiting operation, for cancel(); unique in the process, never 0.
using WaitId = std::uint64_t;

/// Handlers: the exception_ptr is null on success; the value is unspecified on failure.
using Done = std::function<void(std::exception_ptr)>;
using DoneBool = std::function<void(std::exception_ptr, bool)>;
using DoneIndex = std::function<void(std::exception_ptr, int)>;
template <class T>
using DoneItem = std::function<void(std::exception_ptr, std::optional<T>)>;

/// What a semaphore gives back when a connection closes (see the top of this file).
enum class OnDisconnect { keep, release_held };

// ---------------------------------------------------------------------------------------------
// The machinery the objects share (AsyncQueue<T> is a template, so it lives here).
namespace waits {

/// A new WaitId.
WaitId next_wait_id() noexcept;

/// CancelledError "<call> was cancelled".
std::exception_ptr cancelled_error(const char* call);
/// ConnectionAbortedError "<call>: connection N closed while the call waited".
std::exception_ptr connection_closed_error(const char* call, std::uint64_t connection);
/// RuntimeError "<call>: the <what> was destroyed while the call waited".
std::exception_ptr destroyed_error(const char* call, const char* what);
/// A timeout of this length or more is forever (no timer; Asio's clock arithmetic would
/// overflow on nanoseconds::max()).
inline constexpr std::chrono::nanoseconds forever_after = std::chrono::hours(24 * 365 * 100);

/// A move-only nullary task (std::function needs a copyable callable; a queue's item may not
/// be copyable).
class Task {
public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, Task>>>
  explicit Task(F f) : p_(std::make_unique<Impl<F>>(std::move(f))) {}
  void operator()() { p_->run(); }

private:
  struct Base {
    virtual ~Base() = default;
    virtual void run() = 0;
  };
  template <class F>
  struct Impl final : Base {
    explicit Impl(F f) : f(std::move(f)) {}
    void run() override { f(); }
    F f;
  };
  std::unique_ptr<Base> p_;
};

/// Where the answers to one caller go instead of being posted, while this lives on the thread:
/// a server, around an object's call made on its connection's strand (in the handler that read
/// the request, or in the one that starts a lane's next call). An answer the operation knows at
/// once (a put, a get of an item that is there, an acquire of a free lock) is kept here, then
/// run by run() once the object's call has returned: never inside the initiating call, and
/// without a handler of its own, a turn of the io_context and a write of its own (the answer
/// joins the replies that handler writes). A managed queue's put + get: 27,100 -> 23,500
/// instructions on the server (bench/call_instructions.py). Answers to other callers, and this
/// caller's when the thread is not running its strand, are posted as always.
class AnswersHere {
public:
  /// `caller` must outlive this.
  explicit AnswersHere(const Caller& caller) noexcept : caller_(caller), outer_(current_) {
    current_ = this;
  }
  AnswersHere(const AnswersHere&) = delete;
  AnswersHere& operator=(const AnswersHere&) = delete;
  /// Posts what run() did not run (an exception left the call first).
  ~AnswersHere() {
    if (current_ == this) current_ = outer_;
    for (auto& [strand, t] : tasks_) strand.post(std::move(t));
  }

  /// Runs the kept answers, in order, outside the scope (one that a handler's answer starts
  /// goes where it would anywhere else). One that throws: its exception leaves a handler posted
  /// to the caller's strand, as it would have left the handler it was posted as.
  void run() {
    if (current_ == this) current_ = outer_;
    if (tasks_.empty()) return;
    auto tasks = std::move(tasks_);
    tasks_.clear();
    for (auto& [strand, t] : tasks) {
      try {
        t();
      } catch (...) {
        strand.post([e = std::current_exception()] { std::rethrow_exception(e); });
      }
    }
  }

  /// Keeps `t`, an answer to `to`, if this thread's scope is `to`'s and runs `to`'s strand;
  /// false: post it.
  static bool keep(const Caller& to, Task& t) {
    AnswersHere* here = current_;
    if (here == nullptr || !(here->caller_ == to) || !to.ex || !to.ex.running_in_this_thread())
      return false;
    here->tasks_.emplace_back(to.ex, std::move(t));
    return true;
  }

private:
  const Caller& caller_;
  AnswersHere* outer_;
  std::vector<std::pair<ConnStrand, Task>> tasks_;
  static inline thread_local AnswersHere* current_ = nullptr;
};

/// The handlers one operation completes, gathered under the object's mutex and posted when this
/// is destroyed. Declare it before the lock, so the lock is released first. Each goes to its
/// caller's executor (Caller::ex: on a server, the caller's connection's strand, which writes
/// the answer at once), else to the object's; or is kept by the caller's AnswersHere.
class Completions {
public:
  explicit Completions(boost::asio::any_io_executor ex) : ex_(std::move(ex)) {}
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;
  ~Completions() {
    for (auto& [to, t] : tasks_) {
      if (AnswersHere::keep(to, t)) continue;
      if (to.ex)
        to.ex.post(std::move(t));
      else
        boost::asio::post(ex_, std::move(t));
    }
  }
  /// `f` completes a call of `to`.
  template <class F>
  void add(const Caller& to, F f) {
    tasks_.emplace_back(to, Task(std::move(f)));
  }

private:
  boost::asio::any_io_executor ex_;
  std::vector<std::pair<Caller, Task>> tasks_;
};

/// What every waiter has. `list` is the WaitList holding it (nullptr once it left): a timer
/// that fires late checks it before acting.
struct WaiterBase {
  WaitId id = 0;
  Caller who{};
  const char* call = "";  // "Queue.get", for messages
  const void* list = nullptr;
  std::unique_ptr<boost::asio::steady_timer> timer;

  void stop_timer() {
    if (timer) timer->cancel();
  }
};

template <class W>
struct Waiter : WaiterBase {
  typename std::list<std::shared_ptr<W>>::iterator pos;
};

/// A FIFO of waiters with O(1) removal of any one of them.
template <class W>
class WaitList {
public:
  using Ptr = std::shared_ptr<W>;

  bool empty() const noexcept { return items_.empty(); }
  std::size_t size() const noexcept { return items_.size(); }
  bool holds(const W& w) const noexcept { return w.list == this; }

  void push_back(Ptr w) {
    auto it = items_.insert(items_.end(), std::move(w));
    (*it)->pos = it;
    (*it)->list = this;
  }
  Ptr pop_front() {
    Ptr w = std::move(items_.front());
    items_.pop_front();
    w->list = nullptr;
    return w;
  }
  Ptr remove(W& w) {
    Ptr p = std::move(*w.pos);
    items_.erase(w.pos);
    p->list = nullptr;
    return p;
  }
  /// Removes and returns, in order, the waiters `pred` selects.
  template <class Pred>
  std::vector<Ptr> take_if(Pred pred) {
    std::vector<Ptr> out;
    for (auto it = items_.begin(); it != items_.end();) {
      if (pred(**it)) {
        (*it)->list = nullptr;
        out.push_back(std::move(*it));
        it = items_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }
  std::vector<Ptr> take_all() {
    return take_if([](const W&) { return true; });
  }
  template <class F>
  void for_each(F f) const {
    for (const auto& w : items_) f(*w);
  }

private:
  std::list<Ptr> items_;
};

/// Starts `w`'s timer, unless `after` is forever; on expiry, `core->on_timeout(*w)` runs on the
/// executor, if both still exist (it must check that `w` still waits: a timer can fire after
/// the waiter was completed another way).
template <class Core, class W>
void arm_timer(const std::shared_ptr<Core>& core, const std::shared_ptr<W>& w,
               const boost::asio::any_io_executor& ex, std::chrono::nanoseconds after) {
  if (after >= forever_after) return;
  w->timer = std::make_unique<boost::asio::steady_timer>(ex, after);
  w->timer->async_wait([wc = std::weak_ptr<Core>(core),
                        ww = std::weak_ptr<W>(w)](const boost::system::error_code& ec) {
    if (ec) return;
    auto c = wc.lock();
    auto x = ww.lock();
    if (c && x) c->on_timeout(*x);
  });
}

/// Fails (and removes) the waiters of `list` that `pred` selects with `error(w)`; returns how
/// many. W has `void fail(Completions&, std::exception_ptr)`.
template <class W, class Pred, class Error>
std::size_t fail_if(WaitList<W>& list, Pred pred, Error error, Completions& out) {
  auto taken = list.take_if(pred);
  for (auto& w : taken) {
    w->stop_timer();
    w->fail(out, error(*w));
  }
  return taken.size();
}

/// cancel(), cancel(Caller) and release_connection() over one list.
template <class W>
std::size_t cancel_id(WaitList<W>& list, WaitId id, Completions& out) {
  return fail_if(
      list, [&](const W& w) { return w.id == id; },
      [](const W& w) { return cancelled_error(w.call); }, out);
}
template <class W>
std::size_t cancel_caller(WaitList<W>& list, Caller who, Completions& out) {
  return fail_if(
      list, [&](const W& w) { return w.who == who; },
      [](const W& w) { return cancelled_error(w.call); }, out);
}
template <class W>
std::size_t fail_connection(WaitList<W>& list, std::uint64_t connection, Completions& out) {
  return fail_if(
      list, [&](const W& w) { return w.who.connection == connection; },
      [](const W& w) { return connection_closed_error(w.call, w.who.connection); }, out);
}
template <class W>
void fail_destroyed(WaitList<W>& list, const char* what, Completions& out) {
  fail_if(
      list, [](const W&) { return true; },
      [&](const W& w) { return destroyed_error(w.call, what); }, out);
}

struct LockCore;
struct CondCore;
struct SemCore;
struct EventCore;
struct BarrierCore;

}  // namespace waits

// ---------------------------------------------------------------------------------------------
// Lock, RLock, Condition

/// Python: `threading.Lock`, managed. Not owner-checked: any caller may release it. On
/// disconnect, by OnDisconnect: keep (the default, Python's: a process may acquire a lock and
/// exit, and another release it) or release_held (the lock is released if the closed
/// connection acquired it last).
class AsyncLock {
public:
  explicit AsyncLock(boost::asio::any_io_executor ex,
                     OnDisconnect on_disconnect = OnDisconnect::keep);
  ~AsyncLock();
  AsyncLock(const AsyncLock&) = delete;
  AsyncLock& operator=(const AsyncLock&) = delete;

  /// Python: `acquire(blocking=True, timeout=-1)`; the handler gets whether it was taken.
  WaitId async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done);
  /// Python: `release()`. @throws RuntimeError "release unlocked lock".
  void release(Caller who);
  /// Python: `locked()`.
  bool locked() const;
  /// Who acquired the lock, while it is held.
  std::optional<Caller> holder() const;

  bool cancel(WaitId id);
  std::size_t cancel(Caller who);
  void release_connection(std::uint64_t connection);

private:
  friend class AsyncCondition;
  std::shared_ptr<waits::LockCore> core_;
};

/// Python: `threading.RLock`, managed: owned by a Caller, re-entrant.
class AsyncRLock {
public:
  explicit AsyncRLock(boost::asio::any_io_executor ex);
  ~AsyncRLock();
  AsyncRLock(const AsyncRLock&) = delete;
  AsyncRLock& operator=(const AsyncRLock&) = delete;

  /// Python: `acquire(blocking=True, timeout=-1)`.
  WaitId async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done);
  /// Python: `release()`. @throws RuntimeError "cannot release un-acquired lock".
  void release(Caller who);
  /// Python 3.14: `locked()`.
  bool locked() const;
  /// Python: `_is_owned()`, for `who`.
  bool is_owned(Caller who) const;
  /// Python 3.14: `_recursion_count()`, for `who` (0 unless it owns the lock).
  std::uint64_t recursion_count(Caller who) const;

  bool cancel(WaitId id);
  std::size_t cancel(Caller who);
  void release_connection(std::uint64_t connection);

private:
  friend class AsyncCondition;
  std::shared_ptr<waits::LockCore> core_;
};

/// Python: `threading.Condition(lock=None)`, managed.
class AsyncCondition {
public:
  /// Over a new RLock, as Python's `Condition()`.
  explicit AsyncCondition(boost::asio::any_io_executor ex);
  /// Over `lock` (shared: `lock` may be destroyed first). Its timers and handlers use the
  /// lock's executor; `ex` is taken for symmetry with the other types.
  AsyncCondition(boost::asio::any_io_executor ex, AsyncLock& lock);
  AsyncCondition(boost::asio::any_io_executor ex, AsyncRLock& lock);
  ~AsyncCondition();
  AsyncCondition(const AsyncCondition&) = delete;
  AsyncCondition& operator=(const AsyncCondition&) = delete;

  /// Python: `acquire(*args)`, `release()`: the lock's.
  WaitId async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done);
  void release(Caller who);
  /// Python 3.14: `locked()`: the lock's.
  bool locked() const;

  /// Python: `wait(timeout=None)`: true if notified, false on timeout; completes holding the
  /// lock again. RuntimeError "cannot wait on un-acquired lock" through the handler.
  WaitId async_wait(Caller who, WaitTimeout timeout, DoneBool done);
  /// Python: `notify(n=1)`. @throws RuntimeError "cannot notify on un-acquired lock".
  void notify(Caller who, std::int64_t n = 1);
  /// Python: `notify_all()`.
  void notify_all(Caller who);

  /// Also cancels an acquire of the lock made through this Condition, or a wait that was
  /// notified and is re-acquiring.
  bool cancel(WaitId id);
  std::size_t cancel(Caller who);
  /// The connection's waits fail; its hold on the lock is released (as the lock's own).
  void release_connection(std::uint64_t connection);

private:
  std::shared_ptr<waits::CondCore> core_;
};

// ---------------------------------------------------------------------------------------------
// Semaphore, BoundedSemaphore, Event, Barrier

/// Python: `threading.Semaphore(value=1)`, managed.
class AsyncSemaphore {
public:
  /// @throws ValueError "semaphore initial value must be >= 0".
  explicit AsyncSemaphore(boost::asio::any_io_executor ex, std::int64_t value = 1,
                          OnDisconnect on_disconnect = OnDisconnect::keep);
  ~AsyncSemaphore();
  AsyncSemaphore(const AsyncSemaphore&) = delete;
  AsyncSemaphore& operator=(const AsyncSemaphore&) = delete;

  /// Python: `acquire(blocking=True, timeout=None)`.
  WaitId async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done);
  /// Python: `release(n=1)`. @throws ValueError for n < 1, or (bounded) over the initial value.
  void release(Caller who, std::int64_t n = 1);
  /// Python: `_value`: the units free now.
  std::int64_t value() const;
  /// The units the connection holds (counted only with OnDisconnect::release_held).
  std::int64_t held_by(std::uint64_t connection) const;

  bool cancel(WaitId id);
  std::size_t cancel(Caller who);
  void release_connection(std::uint64_t connection);

protected:
  AsyncSemaphore(boost::asio::any_io_executor ex, std::int64_t value, bool bounded,
                 OnDisconnect on_disconnect);

private:
  std::shared_ptr<waits::SemCore> core_;
};

/// Python: `threading.BoundedSemaphore(value=1)`, managed.
class AsyncBoundedSemaphore : public AsyncSemaphore {
public:
  explicit AsyncBoundedSemaphore(boost::asio::any_io_executor ex, std::int64_t value = 1,
                                 OnDisconnect on_disconnect = OnDisconnect::keep)
      : AsyncSemaphore(std::move(ex), value, true, on_disconnect) {}
};

/// Python: `threading.Event`, managed.
class AsyncEvent {
public:
  explicit AsyncEvent(boost::asio::any_io_executor ex);
  ~AsyncEvent();
  AsyncEvent(const AsyncEvent&) = delete;
  AsyncEvent& operator=(const AsyncEvent&) = delete;

  /// Python: `wait(timeout=None)`.
  WaitId async_wait(Caller who, WaitTimeout timeout, DoneBool done);
  /// Python: `set()`, `clear()`, `is_set()`.
  void set();
  void clear();
  bool is_set() const;

  bool cancel(WaitId id);
  std::size_t cancel(Caller who);
  void release_connection(std::uint64_t connection);

private:
  std::shared_ptr<waits::EventCore> core_;
};

/// Python: `threading.Barrier(parties, action=None, timeout=None)`, managed.
class AsyncBarrier {
public:
  /// @throws ValueError "parties must be > 0".
  AsyncBarrier(boost::asio::any_io_executor ex, int parties, WaitTimeout timeout = std::nullopt,
               std::function<void()> action = {});
  ~AsyncBarrier();
  AsyncBarrier(const AsyncBarrier&) = delete;
  AsyncBarrier& operator=(const AsyncBarrier&) = delete;

  /// Python: `wait(timeout=None)`: the handler gets this party's index.
  WaitId async_wait(Caller who, WaitTimeout timeout, DoneIndex done);
  /// Python: `reset()`, `abort()`.
  void reset();
  void abort();
  /// Python: `parties`, `n_waiting`, `broken`.
  int parties() const noexcept { return parties_; }
  int n_waiting() const;
  bool broken() const;

  bool cancel(WaitId id);
  std::size_t cancel(Caller who);
  void release_connection(std::uint64_t connection);

private:
  int parties_;
  std::shared_ptr<waits::BarrierCore> core_;
};

// ---------------------------------------------------------------------------------------------
// Queue

namespace waits {

template <class T>
struct QueueCore : std::enable_shared_from_this<QueueCore<T>> {
  struct Getter : Waiter<Getter> {
    DoneItem<T> done;
    void fail(Completions& out, std::exception_ptr e) {
      out.add(this->who, [d = std::move(done), e] { d(e, std::nullopt); });
    }
  };
  struct Putter : Waiter<Putter> {
    std::optional<T> item;
    Done done;
    void fail(Completions& out, std::exception_ptr e) {
      out.add(this->who, [d = std::move(done), e] { d(e); });
    }
  };
  struct Joiner : Waiter<Joiner> {
    Done done;
    void fail(Completions& out, std::exception_ptr e) {
      out.add(this->who, [d = std::move(done), e] { d(e); });
    }
  };

  QueueCore(boost::asio::any_io_executor e, std::ptrdiff_t m) : ex(std::move(e)), maxsize(m) {}
  ~QueueCore() {
    Completions out(ex);
    fail_destroyed(getters, "Queue", out);
    fail_destroyed(putters, "Queue", out);
    fail_destroyed(joiners, "Queue", out);
  }

  bool full() const noexcept {
    return maxsize > 0 && static_cast<std::ptrdiff_t>(items.size()) >= maxsize;
  }
  std::exception_ptr full_error(const char* call, const char* how) const {
    return std::make_exception_ptr(troupe::queue::Full(
        std::string(call) + ": " + how + " (maxsize " + std::to_string(maxsize) + ")"));
  }
  static std::exception_ptr shut_down_error(const char* call, const char* how) {
    return std::make_exception_ptr(troupe::queue::ShutDown(std::string(call) + ": " + how));
  }
  static std::exception_ptr negative_timeout_error() {
    return std::make_exception_ptr(ValueError("'timeout' must be a non-negative number"));
  }

  void complete_get(Completions& out, const Caller& who, DoneItem<T> done, T item) {
    out.add(who, [d = std::move(done), v = std::move(item)]() mutable {
      d(nullptr, std::optional<T>(std::move(v)));
    });
  }
  static void complete(Completions& out, const Caller& who, Done done) {
    out.add(who, [d = std::move(done)] { d(nullptr); });
  }
  T pop() {
    T v = std::move(items.front());
    items.pop_front();
    return v;
  }
  void push(T item) {
    items.push_back(std::move(item));
    ++unfinished;
  }

  // Restores the invariants after any change: no getter waits while there is an item, no
  // putter waits while there is room. Serves the longest waiters first.
  void settle(Completions& out) {
    for (;;) {
      if (!getters.empty() && !items.empty()) {
        auto g = getters.pop_front();
        g->stop_timer();
        complete_get(out, g->who, std::move(g->done), pop());
      } else if (!putters.empty() && !full()) {
        auto p = putters.pop_front();
        p->stop_timer();
        push(std::move(*p->item));
        complete(out, p->who, std::move(p->done));
      } else {
        return;
      }
    }
  }

  WaitId put(Caller who, T item, bool block, WaitTimeout timeout, Done done) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    auto fail = [&](std::exception_ptr e) {
      out.add(who, [d = std::move(done), e] { d(e); });
      return id;
    };
    if (shut) return fail(shut_down_error("Queue.put", "the queue is shut down"));
    if (maxsize > 0) {
      if (!block) {
        if (full()) return fail(full_error("Queue.put", "the queue is full"));
      } else if (timeout && timeout->count() < 0) {
        return fail(negative_timeout_error());
      } else if (full()) {
        if (timeout && timeout->count() == 0)
          return fail(full_error("Queue.put", "timed out on a full queue"));
        auto p = std::make_shared<Putter>();
        p->id = id;
        p->who = who;
        p->call = "Queue.put";
        p->item.emplace(std::move(item));
        p->done = std::move(done);
        putters.push_back(p);
        if (timeout) arm_timer(this->shared_from_this(), p, ex, *timeout);
        return id;
      }
    }
    push(std::move(item));
    settle(out);
    complete(out, who, std::move(done));
    return id;
  }

  WaitId get(Caller who, bool block, WaitTimeout timeout, DoneItem<T> done) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    auto fail = [&](std::exception_ptr e) {
      out.add(who, [d = std::move(done), e] { d(e, std::nullopt); });
      return id;
    };
    if (shut && items.empty())
      return fail(shut_down_error("Queue.get", "the queue is shut down and empty"));
    if (!block) {
      if (items.empty())
        return fail(std::make_exception_ptr(troupe::queue::Empty("Queue.get: the queue is empty")));
    } else if (timeout && timeout->count() < 0) {
      return fail(negative_timeout_error());
    } else if (items.empty()) {
      if (timeout && timeout->count() == 0)
        return fail(std::make_exception_ptr(
            troupe::queue::Empty("Queue.get: timed out on an empty queue")));
      auto g = std::make_shared<Getter>();
      g->id = id;
      g->who = who;
      g->call = "Queue.get";
      g->done = std::move(done);
      getters.push_back(g);
      if (timeout) arm_timer(this->shared_from_this(), g, ex, *timeout);
      return id;
    }
    complete_get(out, who, std::move(done), pop());
    settle(out);
    return id;
  }

  void put_nowait(T item) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (shut) std::rethrow_exception(shut_down_error("Queue.put_nowait", "the queue is shut down"));
    if (full()) std::rethrow_exception(full_error("Queue.put_nowait", "the queue is full"));
    push(std::move(item));
    settle(out);
  }

  T get_nowait() {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (items.empty()) {
      if (shut)
        std::rethrow_exception(
            shut_down_error("Queue.get_nowait", "the queue is shut down and empty"));
      throw troupe::queue::Empty("Queue.get_nowait: the queue is empty");
    }
    T v = pop();
    settle(out);
    return v;
  }

  void task_done() {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (unfinished == 0) throw ValueError("task_done() called too many times");
    if (--unfinished == 0) release_joiners(out);
  }

  WaitId join(Caller who, Done done) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (unfinished == 0) {
      complete(out, who, std::move(done));
      return id;
    }
    auto j = std::make_shared<Joiner>();
    j->id = id;
    j->who = who;
    j->call = "Queue.join";
    j->done = std::move(done);
    joiners.push_back(j);
    return id;
  }

  void release_joiners(Completions& out) {
    while (!joiners.empty()) {
      auto j = joiners.pop_front();
      complete(out, j->who, std::move(j->done));
    }
  }

  void shutdown(bool immediate) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    shut = true;
    if (immediate) {
      while (!items.empty()) {
        (void)pop();
        if (unfinished > 0) --unfinished;
      }
      if (unfinished == 0) release_joiners(out);
    }
    // Getters wait only on an empty queue: each one finds it shut down and empty.
    fail_if(
        getters, [](const Getter&) { return true; },
        [](const Getter&) {
          return shut_down_error("Queue.get", "the queue was shut down while the call waited");
        },
        out);
    fail_if(
        putters, [](const Putter&) { return true; },
        [](const Putter&) {
          return shut_down_error("Queue.put", "the queue was shut down while the call waited");
        },
        out);
  }

  void on_timeout(Getter& g) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!getters.holds(g)) return;
    getters.remove(g)->fail(
        out,
        std::make_exception_ptr(troupe::queue::Empty("Queue.get: timed out on an empty queue")));
  }
  void on_timeout(Putter& p) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!putters.holds(p)) return;
    putters.remove(p)->fail(out, full_error("Queue.put", "timed out on a full queue"));
  }

  std::size_t cancel(WaitId id) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    return cancel_id(getters, id, out) + cancel_id(putters, id, out) + cancel_id(joiners, id, out);
  }
  std::size_t cancel(Caller who) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    return cancel_caller(getters, who, out) + cancel_caller(putters, who, out) +
           cancel_caller(joiners, who, out);
  }
  void release_connection(std::uint64_t connection) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    fail_connection(getters, connection, out);
    fail_connection(putters, connection, out);
    fail_connection(joiners, connection, out);
  }

  const boost::asio::any_io_executor ex;
  const std::ptrdiff_t maxsize;
  mutable std::mutex mu;
  std::deque<T> items;
  std::size_t unfinished = 0;
  bool shut = false;
  WaitList<Getter> getters;
  WaitList<Putter> putters;
  WaitList<Joiner> joiners;
};

}  // namespace waits

/// Python: `queue.Queue(maxsize=0)`, managed (SyncManager's Queue and JoinableQueue). `T` may
/// be move-only; the server uses the manager's value tree.
template <class T>
class AsyncQueue {
public:
  using value_type = T;

  /// Python: `Queue(maxsize=0)`; zero or negative is unbounded.
  explicit AsyncQueue(boost::asio::any_io_executor ex, std::ptrdiff_t maxsize = 0)
      : core_(std::make_shared<waits::QueueCore<T>>(std::move(ex), maxsize)) {}
  AsyncQueue(const AsyncQueue&) = delete;
  AsyncQueue& operator=(const AsyncQueue&) = delete;

  /// Python: `put(item, block=True, timeout=None)`. Errors through the handler: ShutDown,
  /// Full, ValueError (a negative timeout, blocking, bounded).
  WaitId async_put(Caller who, T item, bool block, WaitTimeout timeout, Done done) {
    return core_->put(who, std::move(item), block, timeout, std::move(done));
  }
  /// Python: `get(block=True, timeout=None)`. Errors through the handler: ShutDown, Empty,
  /// ValueError (a negative timeout, blocking).
  WaitId async_get(Caller who, bool block, WaitTimeout timeout, DoneItem<T> done) {
    return core_->get(who, block, timeout, std::move(done));
  }
  /// Python: `put_nowait(item)`. @throws troupe::queue::ShutDown, troupe::queue::Full.
  void put_nowait(T item) { core_->put_nowait(std::move(item)); }
  /// Python: `get_nowait()`. @throws troupe::queue::ShutDown, troupe::queue::Empty.
  T get_nowait() { return core_->get_nowait(); }
  /// Python: `task_done()`. @throws ValueError "task_done() called too many times".
  void task_done() { core_->task_done(); }
  /// Python: `join()`: completes once every item put has been marked done.
  WaitId async_join(Caller who, Done done) { return core_->join(who, std::move(done)); }
  /// Python 3.13: `shutdown(immediate=False)`.
  void shutdown(bool immediate = false) { core_->shutdown(immediate); }

  /// Python: `qsize()`, `empty()`, `full()`, `maxsize`, `unfinished_tasks`, `is_shutdown`.
  std::size_t qsize() const {
    std::scoped_lock lk(core_->mu);
    return core_->items.size();
  }
  bool empty() const { return qsize() == 0; }
  bool full() const {
    std::scoped_lock lk(core_->mu);
    return core_->full();
  }
  std::ptrdiff_t maxsize() const noexcept { return core_->maxsize; }
  std::size_t unfinished_tasks() const {
    std::scoped_lock lk(core_->mu);
    return core_->unfinished;
  }
  bool is_shutdown() const {
    std::scoped_lock lk(core_->mu);
    return core_->shut;
  }

  bool cancel(WaitId id) { return core_->cancel(id) != 0; }
  std::size_t cancel(Caller who) { return core_->cancel(who); }
  /// Fails the connection's getters, putters (their items are dropped) and joiners.
  void release_connection(std::uint64_t connection) { core_->release_connection(connection); }

private:
  std::shared_ptr<waits::QueueCore<T>> core_;
};

/// Python's manager serves JoinableQueue as queue.Queue too.
template <class T>
using AsyncJoinableQueue = AsyncQueue<T>;

}  // namespace troupe::multiprocessing::managers::detail
