// troupe/concurrent/futures/future.hpp — concurrent.futures.Future, wait, as_completed.
//
// A Future is a handle on one shared result: copies refer to the same future, as Python's
// objects do. It is what every troupe executor returns (threads, processes, later remote ones),
// so `wait` and `as_completed` take futures of different executors and result types together
// (`AnyFuture` is the untyped handle; every `Future<T>` is one).
//
// Waiting spins briefly, then sleeps on a futex (DESIGN.md, "Waiting"). A worker of an executor
// that waits forever on a future of its own pool when every worker of that pool is already
// waiting so gets RuntimeError instead of hanging (Python documents this deadlock and hangs).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include "troupe/detail/async.hpp"
#include "troupe/detail/futex.hpp"
#include "troupe/detail/mutex.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"

namespace troupe::concurrent::futures {

/// Python's `Future._state`: PENDING, RUNNING, CANCELLED, FINISHED.
enum class State : std::uint32_t { pending = 0, running = 1, cancelled = 2, finished = 3 };

/// Python: `wait(return_when=…)`.
enum class ReturnWhen : std::uint8_t { first_completed, first_exception, all_completed };
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::first_completed;
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::first_exception;
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::all_completed;

class AnyFuture;
template <class T>
class Future;

namespace detail {

class CoreBase;

/// A move-only callable run once when a future is done (std::move_only_function is C++23).
class Callback {
public:
  Callback() = default;
  template <class F>
  requires(!std::is_same_v<std::decay_t<F>, Callback>) explicit Callback(F&& f)
      : impl_(std::make_unique<Impl<std::decay_t<F>>>(std::forward<F>(f))) {}
  void operator()(CoreBase& core) { impl_->call(core); }
  explicit operator bool() const noexcept { return impl_ != nullptr; }

private:
  struct Base {
    virtual ~Base() = default;
    virtual void call(CoreBase& core) = 0;
  };
  template <class F>
  struct Impl final : Base {
    explicit Impl(F&& f) : f(std::move(f)) {}
    explicit Impl(const F& f) : f(f) {}
    void call(CoreBase& core) override { f(core); }
    F f;
  };
  std::unique_ptr<Base> impl_;
};

/// What `wait` and `as_completed` install on each future they watch: told of every future
/// that finishes or is cancelled, under that future's lock.
class Waiter {
public:
  void add(const std::shared_ptr<CoreBase>& core, bool raised);
  /// Waits until `enough()` (called under the waiter's lock) or the deadline.
  template <class Enough>
  bool wait_until(const std::optional<troupe::detail::steady::time_point>& deadline,
                  Enough enough) {
    std::scoped_lock lock(mutex_);
    while (!enough()) {
      if (deadline && troupe::detail::steady::now() >= *deadline) return false;
      (void)cv_.wait(mutex_, deadline);
    }
    return true;
  }
  /// Takes what finished since the last call (under the waiter's lock).
  std::vector<std::shared_ptr<CoreBase>> take() {
    std::scoped_lock lock(mutex_);
    return std::exchange(finished_, {});
  }
  std::size_t finished_count() const noexcept { return count_; }  // under the lock
  bool any_raised() const noexcept { return raised_; }            // under the lock

private:
  troupe::detail::FutexMutex mutex_;
  troupe::detail::FutexCondVar cv_;
  std::vector<std::shared_ptr<CoreBase>> finished_;
  std::size_t count_ = 0;
  bool raised_ = false;
};

/// Implemented by executors whose workers may wait on futures of their own pool: called on a
/// worker thread before it blocks with no timeout on `core` (which that pool owns).
/// `enter_wait` throws RuntimeError when the wait could never end: every worker of the pool is
/// waiting on a future of the pool and no worker is free to run one.
class WaitGuard {
public:
  virtual void enter_wait(const CoreBase& core) = 0;
  virtual void leave_wait(const CoreBase& core) noexcept = 0;

protected:
  ~WaitGuard() = default;
};
/// The pool whose worker the calling thread is (null elsewhere).
WaitGuard*& current_pool() noexcept;

/// The untyped shared state of a future: its state word, exception, callbacks and waiters.
class CoreBase : public std::enable_shared_from_this<CoreBase> {
public:
  CoreBase() = default;
  CoreBase(const CoreBase&) = delete;
  CoreBase& operator=(const CoreBase&) = delete;
  virtual ~CoreBase() = default;

  /// Asks the running call to stop (request_stop()); false where the executor cannot ask.
  virtual bool stop_running() noexcept { return false; }
  /// Called by wait() before it spins or sleeps: the executor may do, on the waiting thread,
  /// the work that finishes this future (a process pool's waiting caller reads its worker's
  /// results itself, one hand-off fewer than through the pool's thread). Returns when the future
  /// is done, the deadline has passed, or at any time it cannot help; wait() then goes on as
  /// usual.
  virtual void help_wait(
      const std::optional<troupe::detail::steady::time_point>& deadline) const noexcept {
    (void)deadline;
  }

  State state() const noexcept {
    return static_cast<State>(word_.load(std::memory_order_acquire) & kStateMask);
  }
  bool done() const noexcept { return is_done(word_.load(std::memory_order_acquire)); }

  bool cancel();
  bool set_running_or_notify_cancel();
  void set_exception(std::exception_ptr e);

  /// Waits for the future to be done; false on timeout. A negative timeout is zero. It spins
  /// first, for the full budget, or as `spin` has learnt from earlier waits of a sequence of
  /// futures (a map's results), so that waits longer than a hand-off stop burning CPU.
  bool wait(Timeout timeout, troupe::detail::AdaptiveSpin* spin = nullptr) const;
  /// For result()/exception(): waits, then throws CancelledError if cancelled or
  /// TimeoutError if `timeout` passed first.
  void wait_or_throw(Timeout timeout, troupe::detail::AdaptiveSpin* spin = nullptr) const;
  /// The stored exception (null if none); only after wait_or_throw.
  const std::exception_ptr& stored_exception() const noexcept { return exception_; }

  /// Runs `cb` when the future is done: at once, on this thread, if it already is.
  /// An exception escaping a callback is reported on stderr, and the others still run.
  void add_done_callback(Callback cb);

  /// wait()/as_completed(): installs `w` unless the future is done (then false).
  bool add_waiter(Waiter* w);
  void remove_waiter(Waiter* w) noexcept;

  /// Python's repr: "<Future at 0x… state=finished returned int>".
  std::string repr() const;

  /// The executor that runs this future (for the deadlock check).
  void set_owner(WaitGuard* owner) noexcept { owner_ = owner; }

protected:
  // Stores the value with `store()` and finishes, unless the future is already done
  // (then InvalidStateError, or false with `throw_if_done` false).
  template <class Store>
  bool finish_with(Store&& store, bool throw_if_done) {
    mutex_.lock();
    if (done()) {
      mutex_.unlock();
      if (throw_if_done) throw_invalid_state();
      return false;
    }
    store();
    (void)finish_locked(State::finished, false);
    return true;
  }
  virtual const char* result_type_name() const noexcept = 0;

private:
  static constexpr std::uint32_t kStateMask = 3u;
  static constexpr std::uint32_t kSleepers = 4u;  // a thread may sleep on the word
  static constexpr std::uint32_t kNoted = 8u;     // set_running_or_notify_cancel saw a cancel
  static bool is_done(std::uint32_t w) noexcept { return (w & kStateMask) >= 2u; }

  // Called with mutex_ held; releases it, then runs the callbacks.
  bool finish_locked(State to, bool raised);
  [[noreturn]] void throw_invalid_state() const;
  // `learn`: the shared spin that failed before this sleep, told when the sleep ends done.
  bool sleep_until_done(const std::optional<troupe::detail::steady::time_point>& deadline,
                        troupe::detail::AdaptiveSpin* learn) const;

  mutable std::atomic<std::uint32_t> word_{0};
  mutable troupe::detail::FutexMutex mutex_;  // guards exception_, callbacks_, waiters_
  std::exception_ptr exception_;
  std::vector<Callback> callbacks_;
  std::vector<Waiter*> waiters_;
  WaitGuard* owner_ = nullptr;

  friend class troupe::concurrent::futures::AnyFuture;
};

template <class T>
const char* type_name() noexcept {
  return typeid(T).name();
}

/// The shared state of a Future<T>.
template <class T>
class Core : public CoreBase {
public:
  template <class... A>
  bool set_value(bool throw_if_done, A&&... a) {
    return finish_with([&] { value_.emplace(std::forward<A>(a)...); }, throw_if_done);
  }
  T& value() noexcept { return *value_; }

protected:
  const char* result_type_name() const noexcept override { return typeid(T).name(); }

private:
  std::optional<T> value_;
};

template <>
class Core<void> : public CoreBase {
public:
  bool set_value(bool throw_if_done) {
    return finish_with([] {}, throw_if_done);
  }

protected:
  const char* result_type_name() const noexcept override { return "None"; }
};

}  // namespace detail

/// The untyped handle on a future: what `wait` and `as_completed` need. Copies share the future;
/// `==` compares identity.
class AnyFuture {
public:
  /// Python: `cancel()`: false if running or finished, else cancels (true).
  bool cancel() { return core_->cancel(); }
  /// troupe (Python cannot stop a running call): a pending future is cancelled, as by cancel().
  /// A running call is asked to stop: on a ThreadPoolExecutor, a function taking a
  /// std::stop_token first sees stop_requested() and ends as it chooses (its return or exception
  /// is the result); on a ProcessPoolExecutor, futures::stop_requested() turns true in the
  /// worker (SIGINT), and a call still running after the pool's stop_grace is ended with
  /// SIGTERM, then SIGKILL (CancelledError; the worker is replaced). True if the future was
  /// cancelled or the request was delivered; false if it is done or cannot be asked (a thread
  /// call without a stop_token, a future made by hand).
  bool request_stop() {
    if (core_->cancel()) return true;
    return core_->state() == State::running && core_->stop_running();
  }
  /// Python: `cancelled()`.
  bool cancelled() const noexcept { return core_->state() == State::cancelled; }
  /// Python: `running()`.
  bool running() const noexcept { return core_->state() == State::running; }
  /// Python: `done()`: cancelled or finished.
  bool done() const noexcept { return core_->done(); }
  /// Python's `_state`.
  State state() const noexcept { return core_->state(); }

  /// Python: `exception(timeout=None)`: the exception the call raised, or null if it returned.
  /// @throws CancelledError if cancelled; TimeoutError if not done within `timeout`.
  std::exception_ptr exception(Timeout timeout = {}) const {
    core_->wait_or_throw(timeout);
    return core_->stored_exception();
  }

  /// Waits for the future to be done, without raising: false on timeout. (Not in Python's
  /// Future, whose wait is the module function; handy in C++.)
  bool wait(Timeout timeout = {}) const { return core_->wait(timeout); }

  /// Python: `set_running_or_notify_cancel()` (for executors and tests): false if the future
  /// was cancelled, else marks it running and returns true.
  /// @throws RuntimeError "Future in unexpected state" if it is running or finished already.
  bool set_running_or_notify_cancel() { return core_->set_running_or_notify_cancel(); }
  /// Python: `set_exception(exception)` (for executors and tests).
  /// @throws InvalidStateError if the future is already done.
  void set_exception(std::exception_ptr e) { core_->set_exception(std::move(e)); }
  template <class E>
  requires(!std::is_same_v<std::decay_t<E>, std::exception_ptr>) void set_exception(E&& e) {
    core_->set_exception(std::make_exception_ptr(std::forward<E>(e)));
  }

  /// Python's repr: "<Future at 0x… state=pending>".
  std::string repr() const { return core_->repr(); }

  friend bool operator==(const AnyFuture& a, const AnyFuture& b) noexcept {
    return a.core_ == b.core_;
  }
  /// An identity for ordering and hashing.
  const void* id() const noexcept { return core_.get(); }

  /// The shared state (for executors).
  const std::shared_ptr<detail::CoreBase>& core() const noexcept { return core_; }
  explicit AnyFuture(std::shared_ptr<detail::CoreBase> core) noexcept : core_(std::move(core)) {}

protected:
  std::shared_ptr<detail::CoreBase> core_;
};

/// Python: `concurrent.futures.Future` holding a `T` (`void`: Python's None).
///
///     Future<int> f;            // Python: Future() — pending, for executors and tests
///     f.set_result(42);
///     int v = f.result();       // waits; rethrows what the call raised
template <class T>
class Future : public AnyFuture {
public:
  using value_type = T;

  /// A new pending future (Python: `Future()`).
  Future() : AnyFuture(std::make_shared<detail::Core<T>>()) {}
  explicit Future(std::shared_ptr<detail::Core<T>> core) noexcept : AnyFuture(std::move(core)) {}

  /// Python: `result(timeout=None)`: the call's value (a reference into the shared state,
  /// valid while any handle on this future lives), or its exception rethrown.
  /// @throws CancelledError if cancelled; TimeoutError if not done within `timeout`.
  decltype(auto) result(Timeout timeout = {}) const {
    core_->wait_or_throw(timeout);
    if (core_->stored_exception()) std::rethrow_exception(core_->stored_exception());
    if constexpr (!std::is_void_v<T>) return static_cast<const T&>(typed().value());
  }

  /// Python: `set_result(result)` (for executors and tests).
  /// @throws InvalidStateError if the future is already done.
  template <class... A>
  void set_result(A&&... a) {
    (void)typed().set_value(true, std::forward<A>(a)...);
  }

  /// Python: `add_done_callback(fn)`: `fn(const Future<T>&)` runs when the future is done
  /// (cancelled or finished), on the thread that finishes it, or at once if it is done.
  /// An exception escaping `fn` is reported on stderr, and later callbacks still run.
  template <class F>
  requires std::is_invocable_v < F&, const Future<T>
  & > void add_done_callback(F fn) {
    core_->add_done_callback(detail::Callback([fn = std::move(fn)](detail::CoreBase& c) mutable {
      fn(Future<T>(std::static_pointer_cast<detail::Core<T>>(c.shared_from_this())));
    }));
  }

  /// result() on Asio: the handler gets `(std::exception_ptr, T)` (`(std::exception_ptr)` for
  /// void; `(std::exception_ptr, std::optional<T>)` for a T that cannot be default-made). By
  /// Asio's rules (doc/async.md): never invoked inside this call, even for a future already
  /// done; run on its associated executor (a coroutine's, a bound one), else on Asio's system
  /// executor. A cancelled future completes with CancelledError. T must be copyable.
  template <class Token>
  auto async_result(Token&& token) const {
    return troupe::detail::async_operation<Signature>(Resume{core_}, std::forward<Token>(token),
                                                      {});
  }

  /// The typed shared state (for executors).
  detail::Core<T>& typed() const noexcept { return static_cast<detail::Core<T>&>(*core_); }

private:
  template <class U>
  struct SignatureOf {
    using type = std::conditional_t<std::is_default_constructible_v<U>, void(std::exception_ptr, U),
                                    void(std::exception_ptr, std::optional<U>)>;
  };
  template <class U>
  requires std::is_void_v<U>
  struct SignatureOf<U> {
    using type = void(std::exception_ptr);
  };
  using Signature = typename SignatureOf<T>::type;

  // The operation's body: asks for a done-callback, which resumes the operation on its
  // executor (never inside the initiating call, even when the future is already done), with
  // what the handler gets.
  struct Resume {
    std::shared_ptr<detail::CoreBase> core;

    template <class Step, class... A>
    void operator()(Step& op, A&&... outcome) {
      if constexpr (sizeof...(A) > 0) {
        op.complete(std::forward<A>(outcome)...);
      } else {
        const auto keep = core;  // moving the operation moves this body
        keep->add_done_callback(detail::Callback([self = op.resume()](detail::CoreBase& c) mutable {
          std::exception_ptr e;
          if (c.state() == State::cancelled)
            e = std::make_exception_ptr(CancelledError("the future was cancelled: " + c.repr()));
          else
            e = c.stored_exception();
          if constexpr (std::is_void_v<T>) {
            troupe::detail::resume_later(std::move(self), e);
          } else if constexpr (std::is_default_constructible_v<T>) {
            troupe::detail::resume_later(std::move(self), e,
                                         e ? T() : static_cast<detail::Core<T>&>(c).value());
          } else {
            std::optional<T> v;
            if (!e) v.emplace(static_cast<detail::Core<T>&>(c).value());
            troupe::detail::resume_later(std::move(self), e, std::move(v));
          }
        }));
      }
    }
  };
};

/// Python: `DoneAndNotDoneFutures(done, not_done)`; each in the order of the input, once.
template <class F>
struct DoneAndNotDoneFutures {
  std::vector<F> done;
  std::vector<F> not_done;
};

namespace detail {
/// The input without duplicates, in first-seen order.
template <class Range>
auto unique_futures(const Range& fs) {
  using F = std::decay_t<decltype(*std::begin(fs))>;
  static_assert(std::is_base_of_v<AnyFuture, F>, "wait/as_completed take futures");
  std::vector<F> out;
  std::vector<const void*> seen;
  for (const auto& f : fs) {
    const void* id = f.id();
    bool dup = false;
    for (const void* s : seen)
      if (s == id) {
        dup = true;
        break;
      }
    if (!dup) {
      seen.push_back(id);
      out.push_back(f);
    }
  }
  return out;
}
/// Whether a future is done, read through its core.
bool raised(const CoreBase& core) noexcept;
}  // namespace detail

/// Python: `concurrent.futures.wait(fs, timeout=None, return_when=ALL_COMPLETED)`. `fs` is any
/// range of futures (of one type, or `AnyFuture` for futures of several types and executors).
/// A cancelled future counts as done at once (Python waits for the executor to notice).
template <class Range>
auto wait(const Range& fs, Timeout timeout = {}, ReturnWhen return_when = ALL_COMPLETED) {
  auto all = detail::unique_futures(fs);
  using F = typename decltype(all)::value_type;
  DoneAndNotDoneFutures<F> out;
  detail::Waiter waiter;
  std::vector<F> installed;
  std::size_t done_before = 0;
  bool raised_before = false;
  for (const auto& f : all) {
    if (f.core()->add_waiter(&waiter)) {
      installed.push_back(f);
    } else {
      ++done_before;
      raised_before = raised_before || detail::raised(*f.core());
    }
  }
  auto enough = [&] {
    const std::size_t n = done_before + waiter.finished_count();
    switch (return_when) {
      case ReturnWhen::first_completed: return n > 0 || all.empty();
      case ReturnWhen::first_exception:
        return raised_before || waiter.any_raised() || n == all.size();
      case ReturnWhen::all_completed: break;
    }
    return n == all.size();
  };
  const auto deadline =
      timeout.is_negative() ? std::optional(troupe::detail::steady::now()) : timeout.deadline();
  (void)waiter.wait_until(deadline, enough);
  for (const auto& f : installed) f.core()->remove_waiter(&waiter);
  for (const auto& f : all) (f.done() ? out.done : out.not_done).push_back(f);
  return out;
}

/// Python: `concurrent.futures.as_completed(fs, timeout=None)`: a range that yields each
/// future once as it completes, those already done first (in input order). When `timeout`
/// passes with futures left, the iteration throws TimeoutError "N (of M) futures unfinished".
template <class F>
class AsCompleted {
public:
  template <class Range>
  AsCompleted(const Range& fs, Timeout timeout)
      : pending_(detail::unique_futures(fs)),
        waiter_(std::make_unique<detail::Waiter>()),
        deadline_(timeout.is_negative() ? std::optional(troupe::detail::steady::now())
                                        : timeout.deadline()),
        total_(pending_.size()) {
    std::vector<F> still;
    for (auto& f : pending_) {
      if (f.core()->add_waiter(waiter_.get()))
        still.push_back(f);
      else
        ready_.push_back(f);
    }
    installed_ = still;
    pending_ = std::move(still);
  }
  AsCompleted(AsCompleted&&) noexcept = default;
  AsCompleted& operator=(AsCompleted&&) = delete;
  ~AsCompleted() {
    if (waiter_)
      for (const auto& f : installed_) f.core()->remove_waiter(waiter_.get());
  }

  class iterator {
  public:
    using value_type = F;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(AsCompleted* r) : r_(r) { advance(); }
    const F& operator*() const { return *current_; }
    const F* operator->() const { return &*current_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
      return !it.current_;
    }

  private:
    void advance() {
      current_.reset();
      current_ = r_->next();
    }
    AsCompleted* r_ = nullptr;
    std::optional<F> current_;
  };

  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

private:
  std::optional<F> next() {
    for (;;) {
      if (next_ready_ < ready_.size()) return ready_[next_ready_++];
      if (pending_.empty()) return std::nullopt;
      if (!waiter_->wait_until(deadline_, [&] { return waiter_->finished_count() > taken_; }))
        throw TimeoutError(std::to_string(pending_.size()) + " (of " + std::to_string(total_) +
                           ") futures unfinished");
      for (auto& core : waiter_->take()) {
        ++taken_;
        for (std::size_t i = 0; i < pending_.size(); ++i)
          if (pending_[i].core() == core) {
            ready_.push_back(pending_[i]);
            pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
            break;
          }
      }
    }
  }

  std::vector<F> pending_;
  std::vector<F> installed_;
  std::vector<F> ready_;
  std::size_t next_ready_ = 0;
  std::size_t taken_ = 0;
  std::unique_ptr<detail::Waiter> waiter_;
  std::optional<troupe::detail::steady::time_point> deadline_;
  std::size_t total_;
};

/// Python: `concurrent.futures.as_completed(fs, timeout=None)`.
template <class Range>
auto as_completed(const Range& fs, Timeout timeout = {}) {
  using F = std::decay_t<decltype(*std::begin(fs))>;
  return AsCompleted<F>(fs, timeout);
}

}  // namespace troupe::concurrent::futures
