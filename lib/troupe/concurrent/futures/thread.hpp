// troupe/concurrent/futures/thread.hpp — concurrent.futures.ThreadPoolExecutor.
//
// Workers are threading::Thread objects named "<prefix>_<n>" (prefix "ThreadPoolExecutor-<k>"
// unless given), started as calls are submitted and no worker is idle, up to max_workers, as
// in Python. Each task is one allocation: the future's shared state holds the call.
// At program exit every executor still alive is shut down and its workers finish the calls
// already submitted, then are joined (Python's `_python_exit`).
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "troupe/concurrent/futures/executor.hpp"
#include "troupe/concurrent/futures/future.hpp"
#include "troupe/errors.hpp"

namespace troupe::concurrent::futures {

namespace detail {

/// Told by a task when its call has returned, before its future is set: a pool counts the
/// worker idle from then on, so a caller woken by the result finds it idle.
class BeforePublish {
public:
  virtual void operator()() noexcept = 0;

protected:
  ~BeforePublish() = default;
};

/// A submitted call: a future's shared state that also runs the call.
class TaskBase {
public:
  virtual void run(BeforePublish& before_publish) noexcept = 0;
  virtual CoreBase& core() noexcept = 0;

protected:
  ~TaskBase() = default;
};

/// Whether `F` is called with a std::stop_token before its arguments (request_stop()).
template <class F, class... A>
inline constexpr bool takes_stop_token_v =
    std::is_invocable_v<F&, std::stop_token, A...> && !std::is_invocable_v<F&, A...>;

template <class F, class... A>
using call_result_t = typename std::conditional_t<takes_stop_token_v<F, A...>,
                                                  std::invoke_result<F&, std::stop_token, A...>,
                                                  std::invoke_result<F&, A...>>::type;

template <class R, class F, class... A>
class Task final : public Core<R>, public TaskBase {
public:
  template <class G, class... B>
  explicit Task(G&& f, B&&... a) : f_(std::forward<G>(f)), args_(std::forward<B>(a)...) {}

  bool stop_running() noexcept override {
    if constexpr (kToken) return stop_.request_stop() || stop_.stop_requested();
    return false;
  }

  void run(BeforePublish& before_publish) noexcept override {
    if (!this->set_running_or_notify_cancel()) return;
    std::exception_ptr error;
    std::optional<MapValue<R>> value;
    auto call = [&]() -> decltype(auto) {
      if constexpr (kToken)
        return std::apply([&](auto&&... a) { return f_(stop_.get_token(), std::move(a)...); },
                          std::move(args_));
      else
        return std::apply(f_, std::move(args_));
    };
    try {
      if constexpr (std::is_void_v<R>) {
        call();
        value.emplace();
      } else {
        value.emplace(call());
      }
    } catch (...) {
      error = std::current_exception();
    }
    before_publish();
    try {
      if (error) {
        this->set_exception(std::move(error));
      } else if constexpr (std::is_void_v<R>) {
        (void)this->set_value(false);
      } else {
        (void)this->set_value(false, std::move(*value));
      }
    } catch (...) {  // already done (set by hand meanwhile): nothing to report to
    }
  }
  CoreBase& core() noexcept override { return *this; }

private:
  static constexpr bool kToken = takes_stop_token_v<F, A...>;
  F f_;
  std::tuple<A...> args_;
  [[no_unique_address]] std::conditional_t<kToken, std::stop_source, std::monostate> stop_{};
};

struct ThreadPool;

/// The type-erased pool behind ThreadPoolExecutor (thread.cpp).
class ThreadPoolHandle {
public:
  struct Options {
    int max_workers;
    std::string thread_name_prefix;
    std::function<void()> initializer;
  };
  explicit ThreadPoolHandle(Options options);
  ~ThreadPoolHandle();
  ThreadPoolHandle(const ThreadPoolHandle&) = delete;
  ThreadPoolHandle& operator=(const ThreadPoolHandle&) = delete;

  /// Queues `task`. @throws BrokenThreadPool, RuntimeError after shutdown.
  void submit(std::shared_ptr<TaskBase> task);
  void shutdown(bool wait, bool cancel_futures);
  WaitGuard* guard() const noexcept;
  int max_workers() const noexcept;
  std::size_t threads() const noexcept;

private:
  std::shared_ptr<ThreadPool> pool_;
};

}  // namespace detail

/// Python: `concurrent.futures.ThreadPoolExecutor(max_workers=None, thread_name_prefix='',
/// initializer=None, initargs=())`.
///
///     futures::ThreadPoolExecutor pool{{.max_workers = 4}};
///     auto f = pool.submit(pow, 323, 1235);
///     for (auto& v : pool.map(square, inputs)) …
class ThreadPoolExecutor : public Executor<ThreadPoolExecutor> {
public:
  struct Options {
    /// Unset: min(32, cpu_count() + 4), as Python 3.13. Must be > 0.
    std::optional<int> max_workers;
    /// Workers are named "<prefix>_<n>"; empty: "ThreadPoolExecutor-<k>".
    std::string thread_name_prefix;
    /// Called at the start of each worker (Python's initializer with its initargs: bind
    /// them into the callable). If it throws, the pool is broken: pending and later calls fail
    /// with BrokenThreadPool.
    std::function<void()> initializer;
  };

  /// @throws ValueError "max_workers must be greater than 0".
  explicit ThreadPoolExecutor(Options options = {});
  explicit ThreadPoolExecutor(int max_workers)
      : ThreadPoolExecutor(Options{.max_workers = max_workers}) {}
  /// Python's `__exit__`: shutdown(wait=true).
  ~ThreadPoolExecutor();
  ThreadPoolExecutor(const ThreadPoolExecutor&) = delete;
  ThreadPoolExecutor& operator=(const ThreadPoolExecutor&) = delete;

  /// Python: `submit(fn, /, *args, **kwargs)`: schedules `fn(args...)` (the arguments are
  /// copied or moved into the task) and returns its future. A `fn` whose first parameter is a
  /// std::stop_token is called as `fn(token, args...)`: the future's request_stop() asks it to
  /// stop while it runs (troupe; Python cannot stop a running call).
  /// @throws RuntimeError "cannot schedule new futures after shutdown"; BrokenThreadPool if an
  /// initializer failed.
  template <class F, class... A>
  requires(std::is_invocable_v<std::decay_t<F>&, std::decay_t<A>...> ||
           std::is_invocable_v<std::decay_t<F>&, std::stop_token,
                               std::decay_t<A>...>) auto submit(F&& fn, A&&... args) {
    using R = detail::call_result_t<std::decay_t<F>, std::decay_t<A>...>;
    auto task = std::make_shared<detail::Task<R, std::decay_t<F>, std::decay_t<A>...>>(
        std::forward<F>(fn), std::forward<A>(args)...);
    task->set_owner(pool_.guard());
    Future<R> future(std::shared_ptr<detail::Core<R>>(task, task.get()));
    pool_.submit(std::shared_ptr<detail::TaskBase>(task, task.get()));
    return future;
  }

  /// Python: `shutdown(wait=True, *, cancel_futures=False)`: no more submits; with
  /// `cancel_futures` the calls not yet started are cancelled; with `wait` returns when every
  /// worker has ended. Calling it again is harmless.
  void shutdown(bool wait = true, bool cancel_futures = false);

  /// Python's `_max_workers`.
  int max_workers() const noexcept { return pool_.max_workers(); }
  /// How many workers have been started so far (Python: `len(_threads)`).
  std::size_t threads() const noexcept { return pool_.threads(); }

private:
  detail::ThreadPoolHandle pool_;
};

}  // namespace troupe::concurrent::futures
