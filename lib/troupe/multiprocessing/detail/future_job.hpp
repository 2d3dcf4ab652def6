// troupe/multiprocessing/detail/future_job.hpp — a call (or a map chunk) on the worker pool
// whose outcome sets a concurrent::futures::Future: what ProcessPoolExecutor and Pool submit.
// Not API.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/concurrent/futures/executor.hpp"
#include "troupe/concurrent/futures/future.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/detail/worker_pool.hpp"

namespace troupe::multiprocessing::detail {

/// A future's shared state that request_stop() can reach while the call runs in a worker, and
/// whose waiting caller can read the worker's results itself (WorkerPool::help_wait).
template <class T>
class StoppableCore final : public concurrent::futures::detail::Core<T> {
public:
  bool stop_running() noexcept override { return stop_ && stop_(); }
  void help_wait(
      const std::optional<troupe::detail::steady::time_point>& deadline) const noexcept override {
    if (help_) help_(deadline);
  }
  std::function<bool()> stop_;  // set once, before the future is handed out
  std::function<void(const std::optional<troupe::detail::steady::time_point>&)> help_;  // same
};

/// A call (or a map chunk) whose one outcome is a `T`, and the future it sets: `T` is the call's
/// result (void: std::monostate on the wire), or for a chunk a std::vector of results — sent as
/// one message, answered with one; the first failing call fails the chunk, as in Python.
template <class T>
class FutureJob final : public Job {
public:
  concurrent::futures::Future<T> future{std::make_shared<StoppableCore<T>>()};

  void bind_stop(std::function<bool()> stop) noexcept override {
    static_cast<StoppableCore<T>&>(*future.core()).stop_ = std::move(stop);
  }
  void bind_help(WaitHelp help) noexcept override {
    static_cast<StoppableCore<T>&>(*future.core()).help_ = std::move(help);
  }

  bool start() noexcept override {  // again after a dead worker's calls are requeued: true
    try {
      return future.running() || future.set_running_or_notify_cancel();
    } catch (...) {
      return false;
    }
  }
  void deliver(std::vector<CallOutcome>&& outcomes) noexcept override {
    try {
      if (outcomes.size() != 1)
        throw ValueError("a worker sent " + std::to_string(outcomes.size()) +
                         " outcomes for one message");
      auto& o = outcomes.front();
      if (!o.ok) {
        future.set_exception(outcome_exception(o));
      } else if constexpr (std::is_void_v<T>) {
        (void)troupe::from_bytes<std::monostate>(o.value);
        future.set_result();
      } else {
        future.set_result(troupe::from_bytes<T>(o.value));
      }
    } catch (...) {
      fail(std::current_exception());
    }
  }
  void fail(std::exception_ptr error) noexcept override {
    try {
      future.set_exception(std::move(error));
    } catch (...) {  // done already
    }
  }
  void cancel() noexcept override { (void)future.cancel(); }
};

/// One chunk of a map of a function returning R.
template <class R>
using ChunkJob = FutureJob<std::vector<concurrent::futures::detail::MapValue<R>>>;

}  // namespace troupe::multiprocessing::detail
