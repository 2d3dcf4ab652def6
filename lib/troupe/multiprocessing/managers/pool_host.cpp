// SyncManager's "Pool", "AsyncResult" and (for imap) "Iterator" typeids, hosted: a
// multiprocessing.Pool whose worker processes belong to the manager's process, as Python's
// managed Pool. The server never decodes a task: a call carries the name of a function registered
// with TROUPE_ENTRY and its arguments already encoded (a map: its chunks), the workers run it, and
// the encoded results go back to the client, which decodes them with the function's types
// (pool_proxy.hpp). Waits (apply, get, wait, next, join) hold no thread of the server.
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/context.hpp"
#include "troupe/multiprocessing/detail/worker_pool.hpp"
#include "troupe/multiprocessing/managers/builtins.hpp"
#include "troupe/multiprocessing/managers/detail/args.hpp"
#include "troupe/multiprocessing/managers/detail/hosted.hpp"
#include "troupe/multiprocessing/managers/detail/methods.hpp"
#include "troupe/multiprocessing/pool.hpp"

namespace troupe::multiprocessing::managers {

namespace {

using detail::CallInfo;
using detail::CompletionPtr;
using detail::Item;
using detail::Kind;
using detail::WaitTimeout;
namespace engine = multiprocessing::detail;

/// The most worker processes one managed Pool may ask for (a client cannot make the server
/// fork without bound).
constexpr std::int64_t max_pool_processes = 256;

// One job's outcome (apply: a call; map: a chunk): its encoded result, or its exception.
struct Outcome {
  std::vector<std::byte> value;
  std::exception_ptr error;
};
using OutcomePtr = std::shared_ptr<const Outcome>;

// ---- result sets ------------------------------------------------------------------------------

// The outcomes of one apply (one slot), one map (a slot per chunk) or one imap, and the calls
// waiting on them: AsyncResult's get and wait (ready once every slot is set, or one failed), an
// iterator's next (the next slot in order, or as they complete). Thread-safe: slots are set from
// the pool's result thread, waits come from the host's threads, timers fire on `ex`.
class Results : public std::enable_shared_from_this<Results> {
public:
  enum class Mode : std::uint8_t { one, all, ordered, unordered };

  Results(Mode mode, std::size_t slots, boost::asio::any_io_executor ex, std::string what)
      : mode_(mode), slots_(slots), ex_(std::move(ex)), what_(std::move(what)) {}
  Results(const Results&) = delete;
  Results& operator=(const Results&) = delete;
  ~Results() {
    for (auto& w : waiters_) {
      if (w->timer) w->timer->cancel();
      w->done->fail(std::make_exception_ptr(
          RuntimeError(what_ + " was destroyed while a call waited on it")));
    }
  }

  std::size_t size() const noexcept { return slots_.size(); }
  // An iterator over chunks of several elements: its results end at a failed chunk (Python's
  // imap flattens its chunks with a generator, which the raise ends).
  void end_on_error() noexcept { end_on_error_ = true; }

  // Slot `i`'s outcome, once (a later one for the same slot is ignored).
  void set(std::size_t i, Outcome o) {
    auto p = std::make_shared<const Outcome>(std::move(o));
    std::vector<Ready> ready;
    {
      std::scoped_lock lock(mu_);
      if (i >= slots_.size() || slots_[i]) return;
      slots_[i] = p;
      ++filled_;
      if (p->error && !failed_) failed_ = p;
      arrival_.push_back(i);
      settle(ready);
    }
    finish(ready);
  }

  // AsyncResult.get(timeout) (`value`: true) or wait(timeout) (false).
  void await(const CallInfo& call, WaitTimeout timeout, bool value, CompletionPtr done) {
    add(call, timeout, value ? Op::get : Op::wait, std::move(done));
  }
  // Iterator.__next__ / #NEXT(timeout).
  void next(const CallInfo& call, WaitTimeout timeout, bool optional, CompletionPtr done) {
    add(call, timeout, optional ? Op::next_optional : Op::next, std::move(done));
  }

  bool ready() {
    std::scoped_lock lock(mu_);
    return complete();
  }
  // Python: successful(): ValueError if not ready.
  bool successful() {
    std::scoped_lock lock(mu_);
    if (!complete()) throw ValueError(what_ + " not ready");
    return !failed_;
  }

  // The client gave up waiting (its timeout or stop), or its connection closed.
  void cancel(Caller who) {
    drop([&](const Waiter& w) { return w.who == who; },
         std::make_exception_ptr(concurrent::futures::CancelledError(what_ + ": cancelled")));
  }
  void release_connection(std::uint64_t connection) {
    drop([&](const Waiter& w) { return w.who.connection == connection; },
         std::make_exception_ptr(ConnectionAbortedError(
             ECONNABORTED, what_ + ": connection " + std::to_string(connection) +
                               " closed while the call waited")));
  }

private:
  enum class Op : std::uint8_t { get, wait, next, next_optional };
  struct Waiter {
    Caller who;
    Op op;
    CompletionPtr done;
    std::shared_ptr<boost::asio::steady_timer> timer;
  };
  using WaiterPtr = std::shared_ptr<Waiter>;
  // A waiter to complete outside the mutex: with an outcome, at the end (null, next only), or
  // on its timeout.
  struct Ready {
    WaiterPtr w;
    OutcomePtr outcome;
    bool timed_out = false;
  };

  // get/wait: every slot set, failed or not (Python 3.8+'s MapResult is ready only once every
  // chunk is done, test_map_no_failfast; get() then raises the first failure to arrive). Every
  // job reports (PoolJob's destructor fails a dropped one), so every slot is set in the end.
  bool complete() const noexcept { return filled_ == slots_.size(); }
  bool iterating() const noexcept { return mode_ == Mode::ordered || mode_ == Mode::unordered; }
  // The next slot an iterator hands out, if set (under mu_).
  std::optional<std::size_t> next_slot() const noexcept {
    if (ended_) return std::nullopt;
    if (mode_ == Mode::ordered) {
      if (cursor_ < slots_.size() && slots_[cursor_]) return cursor_;
      return std::nullopt;
    }
    if (cursor_ < arrival_.size()) return arrival_[cursor_];
    return std::nullopt;
  }
  bool exhausted() const noexcept { return ended_ || cursor_ >= slots_.size(); }

  // Moves the waiters that can complete now into `out` (under mu_).
  void settle(std::vector<Ready>& out) {
    if (!iterating()) {
      if (!complete()) return;
      for (auto& w : waiters_) {
        if (w->timer) w->timer->cancel();
        out.push_back({w, failed_ ? failed_ : (mode_ == Mode::one ? slots_[0] : nullptr)});
      }
      waiters_.clear();
      return;
    }
    while (!waiters_.empty()) {  // FIFO: each next takes the next outcome
      OutcomePtr o;
      if (auto s = next_slot()) {
        o = slots_[*s];
        ++cursor_;
        if (o->error && end_on_error_) ended_ = true;
      } else if (!exhausted()) {
        return;
      }
      auto w = waiters_.front();
      waiters_.pop_front();
      if (w->timer) w->timer->cancel();
      out.push_back({w, o});
    }
  }

  void add(const CallInfo& call, WaitTimeout timeout, Op op, CompletionPtr done) {
    auto w = std::make_shared<Waiter>(Waiter{call.caller, op, std::move(done), nullptr});
    std::vector<Ready> ready;
    {
      std::scoped_lock lock(mu_);
      waiters_.push_back(w);
      settle(ready);
      const bool waiting = !waiters_.empty() && waiters_.back() == w;
      if (waiting && timeout && *timeout <= std::chrono::nanoseconds::zero()) {
        waiters_.pop_back();
        ready.push_back({w, nullptr, true});
      } else if (waiting && timeout) {
        w->timer = std::make_shared<boost::asio::steady_timer>(ex_, *timeout);
        w->timer->async_wait(
            [weak = weak_from_this(), wk = std::weak_ptr<Waiter>(w)](boost::system::error_code) {
              auto self = weak.lock();
              auto waiter = wk.lock();
              if (self && waiter) self->expire(waiter);
            });
      }
    }
    finish(ready);
  }

  void expire(const WaiterPtr& w) {
    {
      std::scoped_lock lock(mu_);
      auto it = std::find(waiters_.begin(), waiters_.end(), w);
      if (it == waiters_.end()) return;  // completed first
      waiters_.erase(it);
    }
    std::vector<Ready> one{{w, nullptr, true}};
    finish(one);
  }

  template <class Pred>
  void drop(Pred pred, const std::exception_ptr& why) {
    std::vector<WaiterPtr> gone;
    {
      std::scoped_lock lock(mu_);
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (pred(**it)) {
          gone.push_back(*it);
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& w : gone) {
      if (w->timer) w->timer->cancel();
      w->done->fail(why);
    }
  }

  void finish(std::vector<Ready>& ready) {
    for (auto& r : ready) {
      const CompletionPtr& done = r.w->done;
      try {
        if (r.timed_out) {
          if (r.w->op == Op::wait) {
            done->done();
          } else {
            done->fail(std::make_exception_ptr(
                multiprocessing::TimeoutError(what_ + ": not ready within the timeout")));
          }
        } else if (r.w->op == Op::wait) {
          done->done();
        } else if (r.outcome && r.outcome->error) {
          done->fail(r.outcome->error);
        } else if (r.w->op == Op::next || r.w->op == Op::next_optional) {
          if (!r.outcome) {  // the end
            if (r.w->op == Op::next) throw StopIteration();
            done->value().initList(0);
          } else if (r.w->op == Op::next_optional) {
            done->value().initList(1)[0].setData(as_data(r.outcome->value));
          } else {
            done->value().setData(as_data(r.outcome->value));
          }
          done->done();
        } else if (mode_ == Mode::one) {
          done->value().setData(as_data(r.outcome->value));
          done->done();
        } else {
          write_all(done->value());
          done->done();
        }
      } catch (...) {
        done->fail(std::current_exception());
      }
    }
  }

  // A map's result: every chunk's encoded results, in order (the slots are all set: no writer
  // changes them any more).
  void write_all(proto::Value::Builder v) {
    std::vector<OutcomePtr> all;
    {
      std::scoped_lock lock(mu_);
      all = slots_;
    }
    auto list = v.initList(static_cast<unsigned>(all.size()));
    for (unsigned i = 0; i < all.size(); ++i) list[i].setData(as_data(all[i]->value));
  }

  static capnp::Data::Reader as_data(const std::vector<std::byte>& b) {
    return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(b.data()), b.size());
  }

  const Mode mode_;
  std::mutex mu_;
  std::vector<OutcomePtr> slots_;
  std::size_t filled_ = 0;
  OutcomePtr failed_;                 // the first failed outcome
  std::vector<std::size_t> arrival_;  // slots in the order they were set
  std::size_t cursor_ = 0;            // an iterator's next position (in slots_ or arrival_)
  bool end_on_error_ = false;         // see end_on_error()
  bool ended_ = false;                // a failed chunk was handed out: the end
  std::deque<WaiterPtr> waiters_;
  boost::asio::any_io_executor ex_;
  std::string what_;
};

// ---- the pool ---------------------------------------------------------------------------------

// What a managed pool's jobs report to. Jobs are owned by the engine and outlive calls; they
// hold this, not the hosted object.
struct PoolState : std::enable_shared_from_this<PoolState> {
  enum class Run : std::uint8_t { running, closed, terminated };

  std::mutex mu;
  Run run = Run::running;
  std::size_t outstanding = 0;  // jobs submitted and not yet destroyed
  std::vector<std::pair<Caller, CompletionPtr>> joiners;
  std::shared_ptr<engine::WorkerPool> pool;  // null once the hosted object is gone
  boost::asio::any_io_executor ex;
  std::string name;

  // A job is gone: once none is left after close() or terminate(), join() returns.
  void job_ended() {
    std::scoped_lock lock(mu);
    if (--outstanding == 0 && run != Run::running && !joiners.empty())
      boost::asio::post(ex, [self = shared_from_this()] { self->end_join(); });
  }

  // join()'s end, once no job is left: the workers end (they have no task left, or were
  // terminated), then the joiners return. No thread waits for the workers meanwhile: one may
  // still be in its initializer calling this server, which on a user's single-threaded
  // io_context would otherwise wait for itself.
  void end_join() {
    std::shared_ptr<engine::WorkerPool> p;
    {
      std::scoped_lock lock(mu);
      if (outstanding != 0 || joiners.empty()) return;
      p = pool;
    }
    auto self = shared_from_this();
    if (!p) return release_joiners(nullptr);
    try {
      p->shutdown(false, false);
    } catch (...) {
      return release_joiners(std::current_exception());
    }
    p->when_ended([self] { self->release_joiners(nullptr); });
  }

  // The joiners waiting now return (or fail with `error`).
  void release_joiners(const std::exception_ptr& error) {
    std::vector<std::pair<Caller, CompletionPtr>> js;
    {
      std::scoped_lock lock(mu);
      js.swap(joiners);
    }
    for (auto& [who, done] : js) error ? done->fail(error) : done->done();
  }
};

// One job on the engine: a call or a chunk, whose outcome fills one slot of a result set.
class PoolJob final : public engine::Job {
public:
  PoolJob(std::shared_ptr<PoolState> state, std::shared_ptr<Results> results, std::size_t slot)
      : state_(std::move(state)), results_(std::move(results)), slot_(slot) {}
  ~PoolJob() override {
    // Dropped without an outcome (the engine went away first): the slot fails, so no wait is
    // left hanging.
    report({{}, std::make_exception_ptr(ProcessError(state_->name + ": the task was dropped"))});
    state_->job_ended();
  }
  PoolJob(const PoolJob&) = delete;
  PoolJob& operator=(const PoolJob&) = delete;

  bool start() noexcept override { return true; }
  void deliver(std::vector<engine::CallOutcome>&& outcomes) noexcept override {
    if (outcomes.size() != 1)
      return report(
          {{},
           std::make_exception_ptr(ValueError("a worker sent " + std::to_string(outcomes.size()) +
                                              " outcomes for one message"))});
    auto& o = outcomes.front();
    if (o.ok)
      report({std::move(o.value), nullptr});
    else
      report({{}, engine::outcome_exception(o)});
  }
  void fail(std::exception_ptr error) noexcept override { report({{}, std::move(error)}); }
  void cancel() noexcept override {
    report({{},
            std::make_exception_ptr(
                concurrent::futures::CancelledError(state_->name + ": the task was cancelled"))});
  }

private:
  void report(Outcome o) noexcept {
    if (reported_) return;
    reported_ = true;
    try {
      results_->set(slot_, std::move(o));
    } catch (...) {  // out of memory: nothing better to do
    }
  }

  std::shared_ptr<PoolState> state_;
  std::shared_ptr<Results> results_;
  std::size_t slot_;
  bool reported_ = false;
};

std::vector<std::byte> bytes_of(capnp::Data::Reader d) {
  const auto* p = reinterpret_cast<const std::byte*>(d.begin());
  return {p, p + d.size()};
}

// An AsyncResult: the result set of an apply_async or a map_async.
class AsyncResultObject final : public detail::HostedObject {
public:
  explicit AsyncResultObject(std::shared_ptr<Results> r) : r_(std::move(r)) {}
  std::vector<std::string> exposed() const override {
    return {"get", "wait", "ready", "successful"};
  }
  std::string repr() const override { return "<multiprocessing.pool.ApplyResult object>"; }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    auto a = detail::items_of(call);
    if (m == "get" || m == "wait") {
      detail::at_most(call, a, 1);
      r_->await(call, detail::timeout_of(call, a, 0), m == "get", std::move(done));
    } else if (m == "ready") {
      detail::at_most(call, a, 0);
      done->complete(r_->ready());
    } else if (m == "successful") {
      detail::at_most(call, a, 0);
      done->complete(r_->successful());
    } else {
      detail::unknown_method(call, "AsyncResult", exposed());
    }
  }
  void release_connection(std::uint64_t connection) override { r_->release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { r_->cancel(who); }

private:
  std::shared_ptr<Results> r_;
};

// imap's and imap_unordered's iterator (Python's IMapIterator behind an IteratorProxy).
class PoolIteratorObject final : public detail::HostedObject {
public:
  explicit PoolIteratorObject(std::shared_ptr<Results> r) : r_(std::move(r)) {}
  std::vector<std::string> exposed() const override { return {"__next__", "next", "#NEXT"}; }
  std::string repr() const override { return "<multiprocessing.pool.IMapIterator object>"; }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    if (m != "__next__" && m != "next" && m != "#NEXT")
      detail::unknown_method(call, "Iterator", exposed());
    auto a = detail::items_of(call);
    detail::at_most(call, a, 1);
    r_->next(call, detail::timeout_of(call, a, 0), m == "#NEXT", std::move(done));
  }
  void release_connection(std::uint64_t connection) override { r_->release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { r_->cancel(who); }

private:
  std::shared_ptr<Results> r_;
};

class PoolObject final : public detail::HostedObject {
public:
  PoolObject(boost::asio::any_io_executor ex, PoolOptions options)
      : state_(std::make_shared<PoolState>()) {
    auto w = multiprocessing::detail::pool_engine_options(options);
    w.name = "Manager" + w.name;  // "ManagerPool-0": its workers' names
    state_->name = w.name;
    state_->ex = ex;
    state_->pool = std::make_shared<engine::WorkerPool>(std::move(w));
    processes_ = state_->pool->max_workers();
  }
  // Python's Pool finalizer: a pool dropped while running is terminated. Run by the server's
  // thread that let the last reference go: it does not wait for the workers to end (one may be
  // calling this server, and that thread may be the one to answer it); the pool, kept by its
  // own thread's callback, goes there once they have.
  ~PoolObject() override {
    std::shared_ptr<engine::WorkerPool> p;
    {
      std::scoped_lock lock(state_->mu);
      p = std::move(state_->pool);
      state_->run = PoolState::Run::terminated;
    }
    if (p) {
      try {
        p->signal_workers(SIGTERM, false);
        p->when_ended([p] {});
      } catch (...) {  // no memory for the callback: it goes here, once the workers have ended
      }
    }
  }
  PoolObject(const PoolObject&) = delete;
  PoolObject& operator=(const PoolObject&) = delete;

  // As Python's Pool: every worker starts when the pool is made, and runs the initializer even
  // if no task ever comes (CPython's test_pool_initializer). Blocks while they start (the
  // create is watched: TypeEntry::create_may_block). @throws what starting a worker throws.
  void start_workers() { state_->pool->start_workers(); }

  std::vector<std::string> exposed() const override {
    return {"apply", "apply_async", "close",   "imap",          "imap_unordered", "join",
            "map",   "map_async",   "starmap", "starmap_async", "terminate",      "#PROCESSES"};
  }
  std::string repr() const override {
    std::scoped_lock lock(state_->mu);
    const char* s = state_->run == PoolState::Run::running  ? "RUN"
                    : state_->run == PoolState::Run::closed ? "CLOSE"
                                                            : "TERMINATE";
    return "<multiprocessing.pool.Pool state=" + std::string(s) +
           " pool_size=" + std::to_string(processes_) + ">";
  }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    if (m == "apply" || m == "apply_async") {
      auto r = submit(call, Results::Mode::one, false);
      if (m == "apply_async")
        return done->new_object("AsyncResult", std::make_shared<AsyncResultObject>(r));
      r->await(call, std::nullopt, true, std::move(done));
    } else if (m == "map" || m == "starmap" || m == "map_async" || m == "starmap_async") {
      auto r = submit(call, Results::Mode::all, true);
      if (m.ends_with("_async"))
        return done->new_object("AsyncResult", std::make_shared<AsyncResultObject>(r));
      r->await(call, std::nullopt, true, std::move(done));
    } else if (m == "imap" || m == "imap_unordered") {
      auto r = submit(call, m == "imap" ? Results::Mode::ordered : Results::Mode::unordered, true);
      done->new_object("Iterator", std::make_shared<PoolIteratorObject>(r));
    } else if (m == "close") {
      detail::at_most(call, detail::items_of(call), 0);
      std::shared_ptr<engine::WorkerPool> p;
      {
        std::scoped_lock lock(state_->mu);
        if (state_->run == PoolState::Run::running) state_->run = PoolState::Run::closed;
        p = state_->pool;
      }
      if (p) p->shutdown(false, false);
      done->done();
    } else if (m == "terminate") {
      detail::at_most(call, detail::items_of(call), 0);
      std::shared_ptr<engine::WorkerPool> p;
      {
        std::scoped_lock lock(state_->mu);
        state_->run = PoolState::Run::terminated;
        p = state_->pool;
      }
      // As Python's: returns once the workers have ended, here without holding a thread of
      // the server meanwhile (a worker may be calling it).
      if (!p) return done->done();
      p->signal_workers(SIGTERM, false);
      p->when_ended([done] { done->done(); });
    } else if (m == "join") {
      detail::at_most(call, detail::items_of(call), 0);
      bool now = false;
      {
        std::scoped_lock lock(state_->mu);
        if (state_->run == PoolState::Run::running) throw ValueError("Pool is still running");
        state_->joiners.emplace_back(call.caller, std::move(done));
        now = state_->outstanding == 0;
      }
      if (now) boost::asio::post(state_->ex, [s = state_] { s->end_join(); });
    } else if (m == "#PROCESSES") {
      done->complete(static_cast<std::int64_t>(processes_));
    } else {
      detail::unknown_method(call, "Pool", exposed());
    }
  }

  void release_connection(std::uint64_t connection) override {
    fail_joiners([&](const Caller& c) { return c.connection == connection; },
                 std::make_exception_ptr(ConnectionAbortedError(
                     ECONNABORTED, "Pool.join(): connection " + std::to_string(connection) +
                                       " closed while it waited")));
  }
  void cancel(Caller who, std::uint64_t) override {
    fail_joiners(
        [&](const Caller& c) { return c == who; },
        std::make_exception_ptr(concurrent::futures::CancelledError("Pool.join() cancelled")));
  }

private:
  // The join() calls of the callers `pred` picks fail with `error`.
  template <class Pred>
  void fail_joiners(Pred pred, const std::exception_ptr& error) {
    std::vector<CompletionPtr> gone;
    {
      std::scoped_lock lock(state_->mu);
      std::erase_if(state_->joiners, [&](auto& j) {
        if (!pred(j.first)) return false;
        gone.push_back(std::move(j.second));
        return true;
      });
    }
    for (auto& d : gone) d->fail(error);
  }

  // Reads a task call (function name, then its encoded arguments or its list of chunks),
  // checks the function, and submits one job per part. The result set is returned at once.
  std::shared_ptr<Results> submit(const CallInfo& call, Results::Mode mode, bool chunks) {
    // Read from the message itself, not as Items: the chunks are copied once, into the jobs.
    const auto& args = call.args;
    // imap's third: its chunk size (a client's: with chunks of several elements the results
    // end at a failed one).
    const bool iterating = mode == Results::Mode::ordered || mode == Results::Mode::unordered;
    if (args.size() != 2 && !(iterating && args.size() == 3)) detail::bad_arity(call, "Pool", 2);
    if (args.size() == 3 && !args[2].isInt())
      throw TypeError(detail::where(call) + ": the chunk size must be an int, not " +
                      std::string(detail::type_name(detail::to_item(args[2]))));
    auto kind = [](proto::Value::Reader v) {
      return std::string(detail::type_name(detail::to_item(v)));
    };
    if (!args[0].isText())
      throw TypeError(detail::where(call) +
                      ": the function must be given by its TROUPE_ENTRY name (a str), not " +
                      kind(args[0]));
    const std::string entry(args[0].getText().cStr(), args[0].getText().size());
    const EntryPoint* e = find_entry(entry);
    if (!e)
      throw ValueError(detail::where(call) + ": no function '" + entry +
                       "' is registered with TROUPE_ENTRY in the manager's process (pid " +
                       std::to_string(::getpid()) + ")");
    if (!e->call)
      throw TypeError(detail::where(call) + ": the result of '" + entry +
                      "' has no codec, so it cannot travel back");
    std::vector<std::vector<std::byte>> parts;  // the encoded arguments, or each chunk
    if (chunks) {
      if (!args[1].isList())
        throw TypeError(detail::where(call) + ": the chunks must be a list of bytes, not " +
                        kind(args[1]));
      for (auto c : args[1].getList()) {
        if (!c.isData())
          throw TypeError(detail::where(call) + ": a chunk must be bytes, not " + kind(c));
        parts.push_back(bytes_of(c.getData()));
      }
    } else {
      if (!args[1].isData())
        throw TypeError(detail::where(call) + ": the arguments must be encoded bytes, not " +
                        kind(args[1]));
      parts.push_back(bytes_of(args[1].getData()));
    }
    auto r = std::make_shared<Results>(mode, parts.size(), call.executor,
                                       "Pool." + std::string(call.method) + "(" + entry + ")");
    if (args.size() == 3 && args[2].getInt() > 1) r->end_on_error();
    std::shared_ptr<engine::WorkerPool> p;
    {
      std::scoped_lock lock(state_->mu);
      if (state_->run != PoolState::Run::running || !state_->pool)
        throw ValueError("Pool not running");
      p = state_->pool;
      state_->outstanding += parts.size();
    }
    for (std::size_t i = 0; i < parts.size(); ++i) {
      auto job = std::make_unique<PoolJob>(state_, r, i);
      job->entry = entry;
      job->batch = chunks;
      job->calls.push_back(std::move(parts[i]));
      // On failure the job's destructor fails its slot and counts it gone; the next ones
      // are counted gone here.
      try {
        p->submit(std::move(job));
      } catch (...) {
        std::scoped_lock lock(state_->mu);
        state_->outstanding -= parts.size() - i - 1;
        throw;
      }
    }
    return r;
  }

  std::shared_ptr<PoolState> state_;
  int processes_ = 0;
};

std::optional<std::int64_t> optional_int(const CallInfo& call, const std::vector<Item>& a,
                                         std::size_t i, const char* name) {
  if (i >= a.size() || !detail::unwrap_optional(a[i])) return std::nullopt;
  return detail::integer(call, a, i, 0, name);
}

std::optional<std::string> optional_text(const CallInfo& call, const std::vector<Item>& a,
                                         std::size_t i, const char* name) {
  if (i >= a.size()) return std::nullopt;
  const Item* x = detail::unwrap_optional(a[i]);
  if (!x) return std::nullopt;
  if (x->kind() != Kind::text)
    throw TypeError(detail::where(call) + ": '" + name + "' must be a str or None, not " +
                    std::string(detail::type_name(*x)));
  return x->as_string();
}

// Python: Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None,
// context=None): the initializer by its TROUPE_ENTRY name, initargs encoded, the context by its
// start method's name.
std::shared_ptr<detail::HostedObject> make_pool(const CallInfo& call) {
  auto a = detail::items_of(call);
  detail::at_most(call, a, 5);
  PoolOptions o;
  if (auto n = optional_int(call, a, 0, "processes")) {
    if (*n < 1) throw ValueError("Number of processes must be at least 1");
    if (*n > max_pool_processes)
      throw ValueError(detail::where(call) + ": " + std::to_string(*n) +
                       " processes asked for; a managed Pool has at most " +
                       std::to_string(max_pool_processes));
    o.processes = static_cast<int>(*n);
  }
  if (auto init = optional_text(call, a, 1, "initializer")) {
    if (!find_entry(*init))
      throw ValueError(detail::where(call) + ": no initializer '" + *init +
                       "' is registered with TROUPE_ENTRY in the manager's process (pid " +
                       std::to_string(::getpid()) + ")");
    o.initializer.entry = *init;
    if (a.size() > 2 && detail::unwrap_optional(a[2])) {
      const Item* x = detail::unwrap_optional(a[2]);
      if (x->kind() != Kind::bytes)
        throw TypeError(detail::where(call) + ": 'initargs' must be encoded bytes");
      const std::string& b = x->as_string();
      const auto* at = reinterpret_cast<const std::byte*>(b.data());
      o.initializer.arguments.assign(at, at + b.size());
    } else {
      o.initializer.arguments = troupe::to_bytes(std::tuple<>());
    }
  }
  if (auto n = optional_int(call, a, 3, "maxtasksperchild")) {
    if (*n < 1) throw ValueError("maxtasksperchild must be a positive int or None");
    o.maxtasksperchild = static_cast<int>(std::min<std::int64_t>(*n, 1 << 30));
  }
  if (auto method = optional_text(call, a, 4, "context")) o.context = get_context(*method);
  auto pool = std::make_shared<PoolObject>(call.executor, std::move(o));
  pool->start_workers();
  return pool;
}

}  // namespace

void register_pool_types(Registry& registry) {
  detail::TypeEntry pool;
  pool.typeid_ = "Pool";
  pool.create = make_pool;
  pool.create_may_block = true;  // it starts the worker processes
  // Python's Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None,
  // context=None): a Python client may name them (CPython's test_pool: Pool(processes=4)).
  pool.create_parameters = detail::Parameters{
      {"processes", "initializer", "initargs", "maxtasksperchild", "context"}, 0};
  // Python: PoolProxy._method_to_typeid_
  for (const char* m : {"apply_async", "map_async", "starmap_async"})
    pool.method_to_typeid[m] = "AsyncResult";
  for (const char* m : {"imap", "imap_unordered"}) pool.method_to_typeid[m] = "Iterator";
  registry.add(std::move(pool));
  // Python: register('AsyncResult', create_method=False).
  detail::TypeEntry result;
  result.typeid_ = "AsyncResult";
  result.create_method = false;
  registry.add(std::move(result));
}

}  // namespace troupe::multiprocessing::managers
