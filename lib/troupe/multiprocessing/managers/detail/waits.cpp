#include "troupe/multiprocessing/managers/detail/waits.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <limits>
#include <string>
#include <unordered_map>

namespace troupe::multiprocessing::managers::detail {
namespace waits {

WaitId next_wait_id() noexcept {
  static std::atomic<WaitId> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

std::exception_ptr cancelled_error(const char* call) {
  return std::make_exception_ptr(
      troupe::concurrent::futures::CancelledError(std::string(call) + " was cancelled"));
}

std::exception_ptr connection_closed_error(const char* call, std::uint64_t connection) {
  return std::make_exception_ptr(ConnectionAbortedError(
      ECONNABORTED, std::string(call) + ": connection " + std::to_string(connection) +
                        " closed while the call waited"));
}

std::exception_ptr destroyed_error(const char* call, const char* what) {
  return std::make_exception_ptr(
      RuntimeError(std::string(call) + ": the " + what + " was destroyed while the call waited"));
}

// A waiter whose handler takes a bool (Lock, RLock, Condition, Semaphore, Event).
template <class W>
struct BoolWaiter : Waiter<W> {
  DoneBool done;
  void fail(Completions& out, std::exception_ptr e) {
    out.add(this->who, [d = std::move(done), e] { d(e, false); });
  }
  void succeed(Completions& out, bool v) {
    out.add(this->who, [d = std::move(done), v] { d(nullptr, v); });
  }
};

namespace {

std::exception_ptr value_error(const std::string& what) {
  return std::make_exception_ptr(ValueError(what));
}

void answer(Completions& out, const Caller& who, DoneBool done, bool v) {
  out.add(who, [d = std::move(done), v] { d(nullptr, v); });
}
void answer(Completions& out, const Caller& who, DoneBool done, std::exception_ptr e) {
  out.add(who, [d = std::move(done), e] { d(e, false); });
}

// CPython's argument rules of Lock.acquire and RLock.acquire (the C function parsing both):
// returns the error, or null; `forever` says whether the wait has no time limit.
std::exception_ptr lock_arguments(bool block, const WaitTimeout& timeout, bool& forever) {
  using namespace std::chrono_literals;
  forever = !timeout || *timeout == -1s;
  if (!block && !forever) return value_error("can't specify a timeout for a non-blocking call");
  if (!forever && timeout->count() < 0)
    return value_error("timeout value must be a non-negative number");
  return nullptr;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// LockCore: the state of a Lock or an RLock, and of every Condition over it (they share `mu`).
//
// Invariant: when the lock is free, no acquirer waits (release hands it to the first one).
// A Condition waiter that was notified (or timed out) waits in `waiters` too, as an acquirer
// of its saved count.

struct LockWaiter : BoolWaiter<LockWaiter> {
  std::uint64_t count = 1;  // taken on grant: 1, or the count a Condition wait saved
  bool result = true;       // what the handler gets on grant: Condition.wait's "notified"
};

struct LockCore : std::enable_shared_from_this<LockCore> {
  LockCore(boost::asio::any_io_executor e, bool re, OnDisconnect p = OnDisconnect::keep)
      : ex(std::move(e)), reentrant(re), policy(p) {}
  ~LockCore() {
    Completions out(ex);
    fail_destroyed(waiters, name(), out);
  }

  const char* name() const noexcept { return reentrant ? "RLock" : "Lock"; }

  // Python's Condition._is_owned: an RLock owned by `who`; a Lock locked by anyone.
  bool owned_by(Caller who) const noexcept { return locked && (!reentrant || owner == who); }

  bool try_take(Caller who, std::uint64_t n) noexcept {
    if (!locked) {
      locked = true;
      owner = who;
      count = n;
      return true;
    }
    if (reentrant && owner == who) {
      count += n;
      return true;
    }
    return false;
  }

  // Frees the lock whatever its count, and hands it to the first waiter.
  void unlock(Completions& out) {
    locked = false;
    owner = {};
    count = 0;
    if (waiters.empty()) return;
    auto w = waiters.pop_front();
    w->stop_timer();
    locked = true;
    owner = w->who;
    count = w->count;
    w->succeed(out, w->result);
  }

  // Takes the lock for `w` at once if it can, else queues it (a Condition's re-acquire).
  void acquire_or_queue(const std::shared_ptr<LockWaiter>& w, Completions& out) {
    if (try_take(w->who, w->count)) {
      w->succeed(out, w->result);
    } else {
      waiters.push_back(w);
    }
  }

  WaitId acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done, const char* call) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    bool forever = false;
    if (auto e = lock_arguments(block, timeout, forever)) {
      answer(out, who, std::move(done), e);
    } else if (try_take(who, 1)) {
      answer(out, who, std::move(done), true);
    } else if (!block || (!forever && timeout->count() == 0)) {
      answer(out, who, std::move(done), false);
    } else {
      auto w = std::make_shared<LockWaiter>();
      w->id = id;
      w->who = who;
      w->call = call;
      w->done = std::move(done);
      waiters.push_back(w);
      if (!forever) arm_timer(shared_from_this(), w, ex, *timeout);
    }
    return id;
  }

  void release(Caller who) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (reentrant) {
      if (!locked || owner != who) throw RuntimeError("cannot release un-acquired lock");
      if (--count == 0) unlock(out);
    } else {
      if (!locked) throw RuntimeError("release unlocked lock");
      unlock(out);
    }
  }

  void on_timeout(LockWaiter& w) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!waiters.holds(w)) return;
    waiters.remove(w)->succeed(out, false);
  }

  // Under mu: the connection's acquirers fail; an RLock it owns is released (nobody else can
  // release it), a Lock it acquired last only under OnDisconnect::release_held.
  void release_connection_locked(std::uint64_t connection, Completions& out) {
    fail_connection(waiters, connection, out);
    if (locked && owner.connection == connection &&
        (reentrant || policy == OnDisconnect::release_held))
      unlock(out);
  }

  const boost::asio::any_io_executor ex;
  const bool reentrant;
  const OnDisconnect policy;
  mutable std::mutex mu;
  bool locked = false;
  Caller owner{};           // RLock: the owner; Lock: who acquired it last
  std::uint64_t count = 0;  // RLock: the recursion count; Lock: 1 while locked
  WaitList<LockWaiter> waiters;
};

// CondCore: one Condition's waiters (not yet notified), under its lock's mutex.
struct CondCore : std::enable_shared_from_this<CondCore> {
  explicit CondCore(std::shared_ptr<LockCore> l) : lock(std::move(l)) {}
  ~CondCore() {
    Completions out(lock->ex);
    std::scoped_lock lk(lock->mu);
    fail_destroyed(waiters, "Condition", out);
  }

  WaitId wait(Caller who, WaitTimeout timeout, DoneBool done) {
    const WaitId id = next_wait_id();
    Completions out(lock->ex);
    std::scoped_lock lk(lock->mu);
    if (!lock->owned_by(who)) {
      answer(out, who, std::move(done),
             std::make_exception_ptr(RuntimeError("cannot wait on un-acquired lock")));
      return id;
    }
    auto w = std::make_shared<LockWaiter>();
    w->id = id;
    w->who = who;
    w->call = "Condition.wait";
    w->done = std::move(done);
    w->count = lock->reentrant ? lock->count : 1;
    lock->unlock(out);  // fully: Python's _release_save
    if (timeout && timeout->count() <= 0) {
      w->result = false;  // Python: waiter.acquire(False) on a lock nobody released
      lock->acquire_or_queue(w, out);
    } else {
      waiters.push_back(w);
      if (timeout) arm_timer(shared_from_this(), w, lock->ex, *timeout);
    }
    return id;
  }

  void notify(Caller who, std::int64_t n) {
    Completions out(lock->ex);
    std::scoped_lock lk(lock->mu);
    if (!lock->owned_by(who)) throw RuntimeError("cannot notify on un-acquired lock");
    for (; n > 0 && !waiters.empty(); --n) {
      auto w = waiters.pop_front();
      w->stop_timer();
      w->result = true;
      lock->acquire_or_queue(w, out);  // queued: the notifier holds the lock
    }
  }

  void on_timeout(LockWaiter& w) {
    Completions out(lock->ex);
    std::scoped_lock lk(lock->mu);
    if (!waiters.holds(w)) return;
    auto p = waiters.remove(w);
    p->result = false;
    lock->acquire_or_queue(p, out);
  }

  const std::shared_ptr<LockCore> lock;
  WaitList<LockWaiter> waiters;
};

// ---------------------------------------------------------------------------------------------
// SemCore. Invariant: a unit is free only when nobody waits.

struct SemWaiter : BoolWaiter<SemWaiter> {};

struct SemCore : std::enable_shared_from_this<SemCore> {
  SemCore(boost::asio::any_io_executor e, std::int64_t v, bool b, OnDisconnect p)
      : ex(std::move(e)), bounded(b), initial(v), policy(p), value(v) {}
  ~SemCore() {
    Completions out(ex);
    fail_destroyed(waiters, name(), out);
  }
  const char* name() const noexcept { return bounded ? "BoundedSemaphore" : "Semaphore"; }

  void take(Caller who) {
    --value;
    if (policy == OnDisconnect::release_held) ++held[who.connection];
  }
  void grant(Completions& out) {
    while (value > 0 && !waiters.empty()) {
      auto w = waiters.pop_front();
      w->stop_timer();
      take(w->who);
      w->succeed(out, true);
    }
  }
  void add_units(std::int64_t n, Completions& out) {
    value += n;
    if (bounded && value > initial) value = initial;
    grant(out);
  }

  WaitId acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!block && timeout) {
      answer(out, who, std::move(done),
             value_error("can't specify timeout for non-blocking acquire"));
    } else if (value > 0) {
      take(who);
      answer(out, who, std::move(done), true);
    } else if (!block || (timeout && timeout->count() <= 0)) {
      answer(out, who, std::move(done), false);
    } else {
      auto w = std::make_shared<SemWaiter>();
      w->id = id;
      w->who = who;
      w->call = bounded ? "BoundedSemaphore.acquire" : "Semaphore.acquire";
      w->done = std::move(done);
      waiters.push_back(w);
      if (timeout) arm_timer(shared_from_this(), w, ex, *timeout);
    }
    return id;
  }

  void release(Caller who, std::int64_t n) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (n < 1) throw ValueError("n must be one or more");
    if (n > std::numeric_limits<std::int64_t>::max() - value)
      throw ValueError(std::string(name()) + ".release: the value would overflow");
    if (bounded && value + n > initial) throw ValueError("Semaphore released too many times");
    if (policy == OnDisconnect::release_held) {
      auto it = held.find(who.connection);
      if (it != held.end()) {
        it->second -= std::min(it->second, n);
        if (it->second == 0) held.erase(it);
      }
    }
    add_units(n, out);
  }

  void on_timeout(SemWaiter& w) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!waiters.holds(w)) return;
    waiters.remove(w)->succeed(out, false);
  }

  void release_connection(std::uint64_t connection) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    fail_connection(waiters, connection, out);
    auto it = held.find(connection);
    if (it == held.end()) return;
    const std::int64_t n = it->second;
    held.erase(it);
    add_units(n, out);
  }

  const boost::asio::any_io_executor ex;
  const bool bounded;
  const std::int64_t initial;
  const OnDisconnect policy;
  mutable std::mutex mu;
  std::int64_t value;
  std::unordered_map<std::uint64_t, std::int64_t> held;  // connection → units held, never 0
  WaitList<SemWaiter> waiters;
};

// ---------------------------------------------------------------------------------------------
// EventCore

struct EventWaiter : BoolWaiter<EventWaiter> {};

struct EventCore : std::enable_shared_from_this<EventCore> {
  explicit EventCore(boost::asio::any_io_executor e) : ex(std::move(e)) {}
  ~EventCore() {
    Completions out(ex);
    fail_destroyed(waiters, "Event", out);
  }

  WaitId wait(Caller who, WaitTimeout timeout, DoneBool done) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (flag || (timeout && timeout->count() <= 0)) {
      answer(out, who, std::move(done), flag);
    } else {
      auto w = std::make_shared<EventWaiter>();
      w->id = id;
      w->who = who;
      w->call = "Event.wait";
      w->done = std::move(done);
      waiters.push_back(w);
      if (timeout) arm_timer(shared_from_this(), w, ex, *timeout);
    }
    return id;
  }

  void set() {
    Completions out(ex);
    std::scoped_lock lk(mu);
    flag = true;
    while (!waiters.empty()) {
      auto w = waiters.pop_front();
      w->stop_timer();
      w->succeed(out, true);
    }
  }

  void on_timeout(EventWaiter& w) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!waiters.holds(w)) return;
    waiters.remove(w)->succeed(out, false);
  }

  const boost::asio::any_io_executor ex;
  mutable std::mutex mu;
  bool flag = false;
  WaitList<EventWaiter> waiters;
};

// ---------------------------------------------------------------------------------------------
// BarrierCore: `waiters` are the parties of the generation filling now, in arrival order.

struct BarrierWaiter : Waiter<BarrierWaiter> {
  DoneIndex done;
  void fail(Completions& out, std::exception_ptr e) {
    out.add(this->who, [d = std::move(done), e] { d(e, -1); });
  }
};

struct BarrierCore : std::enable_shared_from_this<BarrierCore> {
  BarrierCore(boost::asio::any_io_executor e, int p, WaitTimeout t, std::function<void()> a)
      : ex(std::move(e)), parties(p), timeout(t), action(std::move(a)) {}
  ~BarrierCore() {
    Completions out(ex);
    fail_destroyed(waiters, "Barrier", out);
  }

  static std::exception_ptr broken_error(const std::string& why) {
    return std::make_exception_ptr(troupe::threading::BrokenBarrierError("Barrier.wait: " + why));
  }

  // Breaks the barrier: every waiter fails.
  void break_locked(Completions& out, const std::string& why) {
    broken = true;
    fail_if(
        waiters, [](const BarrierWaiter&) { return true; },
        [&](const BarrierWaiter&) { return broken_error(why); }, out);
  }

  WaitId wait(Caller who, WaitTimeout t, DoneIndex done) {
    const WaitId id = next_wait_id();
    Completions out(ex);
    std::scoped_lock lk(mu);
    auto fail = [&](std::exception_ptr e) {
      out.add(who, [d = std::move(done), e] { d(e, -1); });
      return id;
    };
    if (broken) return fail(broken_error("the barrier is broken"));
    const int index = static_cast<int>(waiters.size());
    if (index + 1 == parties) {
      if (action) {
        try {
          action();
        } catch (...) {
          break_locked(out, "the barrier's action raised; the barrier is broken");
          return fail(std::current_exception());
        }
      }
      int i = 0;
      while (!waiters.empty()) {
        auto w = waiters.pop_front();
        w->stop_timer();
        out.add(w->who, [d = std::move(w->done), i] { d(nullptr, i); });
        ++i;
      }
      out.add(who, [d = std::move(done), index] { d(nullptr, index); });
      return id;
    }
    if (!t) t = timeout;
    if (t && t->count() <= 0) {
      break_locked(out, "the wait timed out; the barrier is broken");
      return fail(broken_error("the wait timed out; the barrier is broken"));
    }
    auto w = std::make_shared<BarrierWaiter>();
    w->id = id;
    w->who = who;
    w->call = "Barrier.wait";
    w->done = std::move(done);
    waiters.push_back(w);
    if (t) arm_timer(shared_from_this(), w, ex, *t);
    return id;
  }

  void on_timeout(BarrierWaiter& w) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (!waiters.holds(w)) return;
    break_locked(out, "the wait timed out; the barrier is broken");
  }

  void release_connection(std::uint64_t connection) {
    Completions out(ex);
    std::scoped_lock lk(mu);
    if (fail_connection(waiters, connection, out) != 0)
      break_locked(out, "a party's connection " + std::to_string(connection) +
                            " closed while it waited; the barrier is broken");
  }

  const boost::asio::any_io_executor ex;
  const int parties;
  const WaitTimeout timeout;
  const std::function<void()> action;
  mutable std::mutex mu;
  bool broken = false;
  WaitList<BarrierWaiter> waiters;
};

}  // namespace waits

// ---------------------------------------------------------------------------------------------
// The classes

AsyncLock::AsyncLock(boost::asio::any_io_executor ex, OnDisconnect on_disconnect)
    : core_(std::make_shared<waits::LockCore>(std::move(ex), false, on_disconnect)) {}
AsyncLock::~AsyncLock() = default;

WaitId AsyncLock::async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done) {
  return core_->acquire(who, block, timeout, std::move(done), "Lock.acquire");
}
void AsyncLock::release(Caller who) {
  core_->release(who);
}
bool AsyncLock::locked() const {
  std::scoped_lock lk(core_->mu);
  return core_->locked;
}
std::optional<Caller> AsyncLock::holder() const {
  std::scoped_lock lk(core_->mu);
  return core_->locked ? std::optional(core_->owner) : std::nullopt;
}
bool AsyncLock::cancel(WaitId id) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_id(core_->waiters, id, out) != 0;
}
std::size_t AsyncLock::cancel(Caller who) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_caller(core_->waiters, who, out);
}
void AsyncLock::release_connection(std::uint64_t connection) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  core_->release_connection_locked(connection, out);
}

AsyncRLock::AsyncRLock(boost::asio::any_io_executor ex)
    : core_(std::make_shared<waits::LockCore>(std::move(ex), true)) {}
AsyncRLock::~AsyncRLock() = default;

WaitId AsyncRLock::async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done) {
  return core_->acquire(who, block, timeout, std::move(done), "RLock.acquire");
}
void AsyncRLock::release(Caller who) {
  core_->release(who);
}
bool AsyncRLock::locked() const {
  std::scoped_lock lk(core_->mu);
  return core_->locked;
}
bool AsyncRLock::is_owned(Caller who) const {
  std::scoped_lock lk(core_->mu);
  return core_->owned_by(who);
}
std::uint64_t AsyncRLock::recursion_count(Caller who) const {
  std::scoped_lock lk(core_->mu);
  return core_->owned_by(who) ? core_->count : 0;
}
bool AsyncRLock::cancel(WaitId id) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_id(core_->waiters, id, out) != 0;
}
std::size_t AsyncRLock::cancel(Caller who) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_caller(core_->waiters, who, out);
}
void AsyncRLock::release_connection(std::uint64_t connection) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  core_->release_connection_locked(connection, out);
}

AsyncCondition::AsyncCondition(boost::asio::any_io_executor ex)
    : core_(std::make_shared<waits::CondCore>(std::make_shared<waits::LockCore>(ex, true))) {}
AsyncCondition::AsyncCondition(boost::asio::any_io_executor, AsyncLock& lock)
    : core_(std::make_shared<waits::CondCore>(lock.core_)) {}
AsyncCondition::AsyncCondition(boost::asio::any_io_executor, AsyncRLock& lock)
    : core_(std::make_shared<waits::CondCore>(lock.core_)) {}
AsyncCondition::~AsyncCondition() = default;

WaitId AsyncCondition::async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done) {
  return core_->lock->acquire(who, block, timeout, std::move(done), "Condition.acquire");
}
void AsyncCondition::release(Caller who) {
  core_->lock->release(who);
}
bool AsyncCondition::locked() const {
  std::scoped_lock lk(core_->lock->mu);
  return core_->lock->locked;
}
WaitId AsyncCondition::async_wait(Caller who, WaitTimeout timeout, DoneBool done) {
  return core_->wait(who, timeout, std::move(done));
}
void AsyncCondition::notify(Caller who, std::int64_t n) {
  core_->notify(who, n);
}
void AsyncCondition::notify_all(Caller who) {
  core_->notify(who, std::numeric_limits<std::int64_t>::max());
}
bool AsyncCondition::cancel(WaitId id) {
  waits::Completions out(core_->lock->ex);
  std::scoped_lock lk(core_->lock->mu);
  return waits::cancel_id(core_->waiters, id, out) +
             waits::cancel_id(core_->lock->waiters, id, out) !=
         0;
}
std::size_t AsyncCondition::cancel(Caller who) {
  waits::Completions out(core_->lock->ex);
  std::scoped_lock lk(core_->lock->mu);
  return waits::cancel_caller(core_->waiters, who, out) +
         waits::cancel_caller(core_->lock->waiters, who, out);
}
void AsyncCondition::release_connection(std::uint64_t connection) {
  waits::Completions out(core_->lock->ex);
  std::scoped_lock lk(core_->lock->mu);
  waits::fail_connection(core_->waiters, connection, out);
  core_->lock->release_connection_locked(connection, out);
}

AsyncSemaphore::AsyncSemaphore(boost::asio::any_io_executor ex, std::int64_t value,
                               OnDisconnect on_disconnect)
    : AsyncSemaphore(std::move(ex), value, false, on_disconnect) {}
AsyncSemaphore::AsyncSemaphore(boost::asio::any_io_executor ex, std::int64_t value, bool bounded,
                               OnDisconnect on_disconnect) {
  if (value < 0) throw ValueError("semaphore initial value must be >= 0");
  core_ = std::make_shared<waits::SemCore>(std::move(ex), value, bounded, on_disconnect);
}
AsyncSemaphore::~AsyncSemaphore() = default;

WaitId AsyncSemaphore::async_acquire(Caller who, bool block, WaitTimeout timeout, DoneBool done) {
  return core_->acquire(who, block, timeout, std::move(done));
}
void AsyncSemaphore::release(Caller who, std::int64_t n) {
  core_->release(who, n);
}
std::int64_t AsyncSemaphore::value() const {
  std::scoped_lock lk(core_->mu);
  return core_->value;
}
std::int64_t AsyncSemaphore::held_by(std::uint64_t connection) const {
  std::scoped_lock lk(core_->mu);
  auto it = core_->held.find(connection);
  return it == core_->held.end() ? 0 : it->second;
}
bool AsyncSemaphore::cancel(WaitId id) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_id(core_->waiters, id, out) != 0;
}
std::size_t AsyncSemaphore::cancel(Caller who) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_caller(core_->waiters, who, out);
}
void AsyncSemaphore::release_connection(std::uint64_t connection) {
  core_->release_connection(connection);
}

AsyncEvent::AsyncEvent(boost::asio::any_io_executor ex)
    : core_(std::make_shared<waits::EventCore>(std::move(ex))) {}
AsyncEvent::~AsyncEvent() = default;

WaitId AsyncEvent::async_wait(Caller who, WaitTimeout timeout, DoneBool done) {
  return core_->wait(who, timeout, std::move(done));
}
void AsyncEvent::set() {
  core_->set();
}
void AsyncEvent::clear() {
  std::scoped_lock lk(core_->mu);
  core_->flag = false;
}
bool AsyncEvent::is_set() const {
  std::scoped_lock lk(core_->mu);
  return core_->flag;
}
bool AsyncEvent::cancel(WaitId id) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_id(core_->waiters, id, out) != 0;
}
std::size_t AsyncEvent::cancel(Caller who) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_caller(core_->waiters, who, out);
}
void AsyncEvent::release_connection(std::uint64_t connection) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  waits::fail_connection(core_->waiters, connection, out);
}

AsyncBarrier::AsyncBarrier(boost::asio::any_io_executor ex, int parties, WaitTimeout timeout,
                           std::function<void()> action)
    : parties_(parties) {
  if (parties < 1) throw ValueError("parties must be > 0");
  core_ = std::make_shared<waits::BarrierCore>(std::move(ex), parties, timeout, std::move(action));
}
AsyncBarrier::~AsyncBarrier() = default;

WaitId AsyncBarrier::async_wait(Caller who, WaitTimeout timeout, DoneIndex done) {
  return core_->wait(who, timeout, std::move(done));
}
void AsyncBarrier::reset() {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  waits::fail_if(
      core_->waiters, [](const waits::BarrierWaiter&) { return true; },
      [](const waits::BarrierWaiter&) {
        return waits::BarrierCore::broken_error("the barrier was reset");
      },
      out);
  core_->broken = false;
}
void AsyncBarrier::abort() {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  core_->break_locked(out, "the barrier was aborted");
}
int AsyncBarrier::n_waiting() const {
  std::scoped_lock lk(core_->mu);
  return static_cast<int>(core_->waiters.size());
}
bool AsyncBarrier::broken() const {
  std::scoped_lock lk(core_->mu);
  return core_->broken;
}
bool AsyncBarrier::cancel(WaitId id) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_id(core_->waiters, id, out) != 0;
}
std::size_t AsyncBarrier::cancel(Caller who) {
  waits::Completions out(core_->ex);
  std::scoped_lock lk(core_->mu);
  return waits::cancel_caller(core_->waiters, who, out);
}
void AsyncBarrier::release_connection(std::uint64_t connection) {
  core_->release_connection(connection);
}

}  // namespace troupe::multiprocessing::managers::detail
