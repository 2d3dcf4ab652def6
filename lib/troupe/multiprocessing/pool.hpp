// troupe/multiprocessing/pool.hpp — multiprocessing.Pool and AsyncResult.
//
// The same worker processes as ProcessPoolExecutor (a registered function and encoded arguments
// per call, one connection per worker), with Pool's API. Where Python's Pool hangs forever when a
// worker dies (cpython #96062), troupe's fails the calls that worker was running with a
// ProcessError naming its exit status or signal, starts a new worker, and goes on: map, get and
// join return.
#pragma once

#include <signal.h>

#include <algorithm>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "troupe/concurrent/futures/executor.hpp"
#include "troupe/concurrent/futures/future.hpp"
#include "troupe/concurrent/futures/process.hpp"
#include "troupe/concurrent/futures/thread.hpp"
#include "troupe/detail/ranges.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/detail/future_job.hpp"
#include "troupe/multiprocessing/detail/worker_pool.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing {

namespace futures = troupe::concurrent::futures;

/// Python: `multiprocessing.pool.AsyncResult` (and MapResult): a handle on a call's (or a map's)
/// result. Copies share it.
template <class T>
class AsyncResult {
public:
  explicit AsyncResult(futures::Future<T> f) : f_(std::move(f)) {}

  /// Python: `get(timeout=None)`: the result, or the call's exception rethrown.
  /// @throws multiprocessing::TimeoutError if not ready within `timeout`.
  decltype(auto) get(Timeout timeout = {}) const {
    if (!f_.wait(timeout)) throw TimeoutError("the result is not ready within the timeout");
    return f_.result();
  }
  /// Python: `wait(timeout=None)`.
  void wait(Timeout timeout = {}) const { (void)f_.wait(timeout); }
  /// Python: `ready()`.
  bool ready() const noexcept { return f_.done(); }
  /// Python: `successful()`. @throws ValueError if not ready.
  bool successful() const {
    if (!ready()) throw ValueError("<AsyncResult> not ready");
    return !f_.cancelled() && !f_.exception();
  }
  /// The future underneath (for concurrent.futures' wait and as_completed, and Asio).
  const futures::Future<T>& future() const noexcept { return f_; }

private:
  futures::Future<T> f_;
};

/// apply_async's and map_async's callbacks (Python's keyword arguments): run in the pool's
/// result thread before get() returns, as Python's.
template <class V>
struct AsyncCallbacks {
  std::function<void(const V&)> callback;
  std::function<void(std::exception_ptr)> error_callback;
};

/// Python: `Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None,
/// context=None)`.
struct PoolOptions {
  /// Unset: the CPUs this process may run on. >= 1.
  std::optional<int> processes;
  /// A function registered with TROUPE_ENTRY and its arguments: `{.initializer = {setup, 4}}`.
  futures::Initializer initializer;
  /// A worker is replaced after this many tasks (chunks). >= 1. Not with fork.
  std::optional<int> maxtasksperchild;
  /// Unset: forkserver (Python 3.14).
  std::optional<Context> context;
};

namespace detail {

/// The values of a map, gathered from its chunks in order.
template <class V>
struct Gather {
  std::mutex mu;
  std::vector<std::optional<V>> values;
  std::size_t chunks_left = 0;
  bool failed = false;
  futures::Future<std::vector<V>> out;
  AsyncCallbacks<std::vector<V>> callbacks;

  /// A gather of `n` values in chunks of `chunk` (complete at once when `n` is 0).
  static std::shared_ptr<Gather> start(std::size_t n, std::size_t chunk,
                                       AsyncCallbacks<std::vector<V>> callbacks) {
    auto g = std::make_shared<Gather>();
    g->values.resize(n);
    g->callbacks = std::move(callbacks);
    g->chunks_left = (n + chunk - 1) / chunk;
    if (n == 0) {
      if (g->callbacks.callback) g->callbacks.callback({});
      g->out.set_result(std::vector<V>{});
    }
    return g;
  }

  void chunk_done(std::size_t offset, const futures::Future<std::vector<V>>& chunk) {
    std::exception_ptr error =
        chunk.cancelled() ? std::make_exception_ptr(ValueError("a task of the map was cancelled"))
                          : chunk.exception();
    std::vector<V> all;
    bool finish = false;
    {
      std::scoped_lock lk(mu);
      if (failed) return;
      if (error) {
        failed = true;
      } else {
        auto& got = chunk.typed().value();
        for (std::size_t i = 0; i < got.size(); ++i) values[offset + i].emplace(std::move(got[i]));
        finish = --chunks_left == 0;
        if (finish) {
          all.reserve(values.size());
          for (auto& v : values) all.push_back(std::move(*v));
        }
      }
    }
    if (error) {
      if (callbacks.error_callback) callbacks.error_callback(error);
      out.set_exception(error);
    } else if (finish) {
      if (callbacks.callback) callbacks.callback(all);
      out.set_result(std::move(all));
    }
  }
};

/// apply_async with callbacks: a future set once the callbacks have run (Python runs them before
/// get() returns); `inner` itself when there are none.
template <class R>
futures::Future<R> chain_callbacks(futures::Future<R> inner,
                                   AsyncCallbacks<futures::detail::MapValue<R>> callbacks) {
  if (!callbacks.callback && !callbacks.error_callback) return inner;
  futures::Future<R> outer;
  inner.add_done_callback([outer, callbacks](const futures::Future<R>& f) mutable {
    if (f.cancelled()) {
      (void)outer.cancel();
    } else if (auto e = f.exception()) {
      if (callbacks.error_callback) callbacks.error_callback(e);
      outer.set_exception(e);
    } else if constexpr (std::is_void_v<R>) {
      if (callbacks.callback) callbacks.callback(std::monostate{});
      outer.set_result();
    } else {
      if (callbacks.callback) callbacks.callback(f.result());
      outer.set_result(f.result());
    }
  });
  return outer;
}

std::exception_ptr pool_error(const std::string& why);
int default_processes();
/// The engine's options for a Pool with `o` (checked as Python's Pool checks them; the
/// managers' Pool uses it too). @throws ValueError as Pool's constructor.
multiprocessing::detail::WorkerPoolOptions pool_engine_options(PoolOptions& o);
/// The chunk size of a map of `n` items: `chunksize` if given (ValueError below 1), else
/// Python's: n / (4 × workers), rounded up, at least 1.
std::size_t chunk_size(std::optional<std::size_t> chunksize, std::size_t n, int workers);

/// The input of imap and imap_unordered, read a chunk at a time as the results are read. An
/// exception from the input after some elements of a chunk were read is kept: those elements
/// go out as a chunk and the exception is thrown by the next read, so it keeps its place.
template <class Range, class Item>
class ChunkReader {
public:
  ChunkReader(Range&& range, std::size_t chunk)
      : view_(troupe::detail::all(std::forward<Range>(range))),
        it_(troupe::detail::range_begin(view_)),
        chunk_(chunk) {}
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;

  /// The next chunk; empty at the end.
  std::vector<Item> next() {
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    std::vector<Item> items;
    try {
      while (items.size() < chunk_ && it_ != troupe::detail::range_end(view_)) {
        items.emplace_back(*it_);
        ++it_;
      }
    } catch (...) {
      if (items.empty()) throw;
      error_ = std::current_exception();
    }
    return items;
  }

private:
  troupe::detail::all_t<Range> view_;
  troupe::detail::range_iterator_t<troupe::detail::all_t<Range>> it_;
  std::size_t chunk_;
  std::exception_ptr error_;
};

template <class Item, class Range>
auto chunk_reader(Range&& range, std::size_t chunk) {
  return std::make_shared<ChunkReader<Range, Item>>(std::forward<Range>(range), chunk);
}

/// The results of imap (`InOrder`: in input order) and imap_unordered (as their chunks
/// complete), as Python's IMapIterator: the chunks submitted ahead of the reader, at most
/// `ahead`, taken from `source` (which returns nullopt at the end of the input) as the reader
/// moves on. A failed chunk raises its exception once, where its results would have been; with
/// chunks of one element (`chunked` false) the results go on after it, with longer ones they
/// end there (Python's imap flattens its chunks with a generator, which a raise ends). An
/// exception from `source` (the input's, or a submission's) ends the input: it is raised after
/// the results of every element read before it, then the results end.
template <class R, class Source, bool InOrder>
class IMapResults : public futures::detail::ReadOnce<IMapResults<R, Source, InOrder>,
                                                     futures::detail::MapValue<R>> {
  friend class futures::detail::ReadOnce<IMapResults, futures::detail::MapValue<R>>;

public:
  using value_type = futures::detail::MapValue<R>;
  using timeout_error = multiprocessing::TimeoutError;  // what next(timeout) throws

  IMapResults(Source source, std::size_t ahead, bool chunked)
      : source_(std::move(source)), ahead_(ahead), chunked_(chunked) {
    fill();
  }
  IMapResults(const IMapResults&) = delete;
  IMapResults& operator=(const IMapResults&) = delete;
  /// Python's iterator, dropped: the chunks not yet started are cancelled.
  ~IMapResults() {
    for (auto& f : window_) f.cancel();
  }

private:
  using FutureV = futures::Future<std::vector<value_type>>;

  void fill() noexcept {
    while (!input_done_ && window_.size() < ahead_) {
      try {
        std::optional<FutureV> f = source_();
        if (!f) {
          input_done_ = true;
          break;
        }
        window_.push_back(std::move(*f));
      } catch (...) {
        input_error_ = std::current_exception();
        input_done_ = true;
      }
    }
  }

  // The next result into current_ (empty at the end); false if `until` passed first, with
  // nothing consumed. Throws a failed chunk's exception, or at the end the input's, once.
  bool advance(std::optional<troupe::detail::steady::time_point> until) {
    current_.reset();
    const Timeout timeout = until ? Timeout(*until) : Timeout();
    for (;;) {
      if (chunk_pos_ < chunk_.size()) {
        current_.emplace(std::move(chunk_[chunk_pos_++]));
        return true;
      }
      if (!done_.empty()) {
        FutureV f = std::move(done_.front());
        done_.pop_front();
        f.core()->wait_or_throw(Timeout());  // done: throws CancelledError if cancelled
        if (auto e = f.core()->stored_exception()) {
          if (chunked_) stop_at_failure();
          std::rethrow_exception(e);
        }
        chunk_ = std::move(f.typed().value());
        chunk_pos_ = 0;
        continue;
      }
      if (window_.empty()) {
        if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
        return true;
      }
      if constexpr (InOrder) {
        if (!window_.front().core()->wait(timeout, spin_.get())) return false;
        done_.push_back(std::move(window_.front()));
        window_.pop_front();
      } else {
        auto r = futures::wait(window_, timeout, futures::FIRST_COMPLETED);
        if (r.done.empty()) return false;
        // The order they completed in within one wait is not known: the successes first, so
        // that a failure which ends the results (chunked_) loses none that came before it.
        std::stable_partition(r.done.begin(), r.done.end(),
                              [](const FutureV& f) { return !f.core()->stored_exception(); });
        for (auto& f : r.done) {
          std::erase(window_, f);
          done_.push_back(std::move(f));
        }
      }
      fill();
    }
  }

  // After a failed chunk of several elements: nothing more is read or run.
  void stop_at_failure() noexcept {
    for (auto& f : window_) f.cancel();
    window_.clear();
    done_.clear();
    input_done_ = true;
    input_error_ = nullptr;
  }

  Source source_;
  std::size_t ahead_;
  bool chunked_;
  std::deque<FutureV> window_;  // submitted, in input order
  std::deque<FutureV> done_;    // done, not yet read
  bool input_done_ = false;
  std::exception_ptr input_error_;
  std::vector<value_type> chunk_;  // the results of the chunk being read
  std::size_t chunk_pos_ = 0;
  std::optional<value_type> current_;
  // One spin budget for all the results (as MapResults').
  std::unique_ptr<troupe::detail::AdaptiveSpin> spin_ =
      std::make_unique<troupe::detail::AdaptiveSpin>();
};

template <class R, class Source>
using Ordered = IMapResults<R, Source, true>;
template <class R, class Source>
using Unordered = IMapResults<R, Source, false>;

}  // namespace detail

/// Python: `multiprocessing.Pool`.
///
///     int f(int x) { return x * x; }
///     TROUPE_ENTRY(f);
///     …
///     mp::Pool pool(4);
///     auto squares = pool.map(f, std::views::iota(0, 10));   // std::vector<int>
///     auto r = pool.apply_async(f, 10);                       // r.get() == 100
class Pool {
public:
  /// @throws ValueError "Number of processes must be at least 1",
  /// "maxtasksperchild must be a positive int or None", or fork with maxtasksperchild.
  explicit Pool(PoolOptions options = {});
  explicit Pool(int processes) : Pool(PoolOptions{.processes = processes}) {}
  /// Python's `__exit__`: terminate() (not close() and join(): the documented gotcha, kept).
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Python: `apply(func, args)`: the call's result (it runs in a worker).
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) decltype(auto) apply(R (*fn)(P...), A&&... args) {
    if constexpr (std::is_void_v<R>)
      apply_async(fn, std::forward<A>(args)...).get();
    else
      return R(apply_async(fn, std::forward<A>(args)...).get());
  }

  /// Python: `apply_async(func, args, callback=None, error_callback=None)`.
  /// @throws ValueError "Pool not running" after close() or terminate().
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) AsyncResult<R> apply_async(R (*fn)(P...), A&&... args) {
    return apply_async(AsyncCallbacks<futures::detail::MapValue<R>>{}, fn,
                       std::forward<A>(args)...);
  }
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) AsyncResult<R> apply_async(
      AsyncCallbacks<futures::detail::MapValue<R>> callbacks, R (*fn)(P...), A&&... args) {
    check_running();
    auto job = std::make_unique<detail::FutureJob<R>>();
    job->entry = futures::detail::entry_name(reinterpret_cast<const void*>(fn), "Pool.apply");
    job->calls.push_back(
        troupe::to_bytes(std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)));
    futures::Future<R> result = detail::chain_callbacks(job->future, std::move(callbacks));
    engine_.submit(std::move(job));
    return AsyncResult<R>(result);
  }

  /// Python: `map(func, iterable, chunksize=None)`: every result, in order. The iterable is read
  /// whole first, as Python's list(iterable); default chunksize as Python's (len / (4 ×
  /// processes), rounded up).
  template <class R, class P, class Range>
  auto map(R (*fn)(P), Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt) {
    return map_async(fn, std::forward<Range>(iterable), chunksize).get();
  }
  /// Python: `map_async(func, iterable, chunksize=None, callback=None, error_callback=None)`.
  template <class R, class P, class Range>
  auto map_async(R (*fn)(P), Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt,
                 AsyncCallbacks<std::vector<futures::detail::MapValue<R>>> callbacks = {}) {
    std::vector<std::decay_t<P>> items;
    for (auto&& x : iterable) items.emplace_back(x);
    return gather<R, std::decay_t<P>>(fn, std::move(items), chunksize, std::move(callbacks));
  }
  /// Python: `starmap(func, iterable, chunksize=None)`: each element is a tuple of arguments.
  template <class R, class... P, class Range>
  auto starmap(R (*fn)(P...), Range&& iterable,
               std::optional<std::size_t> chunksize = std::nullopt) {
    return starmap_async(fn, std::forward<Range>(iterable), chunksize).get();
  }
  /// Python: `starmap_async(...)`.
  template <class R, class... P, class Range>
  auto starmap_async(R (*fn)(P...), Range&& iterable,
                     std::optional<std::size_t> chunksize = std::nullopt,
                     AsyncCallbacks<std::vector<futures::detail::MapValue<R>>> callbacks = {}) {
    std::vector<troupe::detail::BatchItem<std::tuple<std::decay_t<P>...>>> items;
    for (auto&& t : iterable)
      items.push_back(std::apply(
          [](auto&&... a) {
            return troupe::detail::BatchItem<std::tuple<std::decay_t<P>...>>(a...);
          },
          t));
    return gather<R, std::decay_t<P>...>(fn, std::move(items), chunksize, std::move(callbacks));
  }

  /// Python: `imap(func, iterable, chunksize=1)`: results in order, as they come; lazy: at most
  /// 32 chunks per worker are submitted ahead of the one being read.
  template <class R, class P, class Range>
  auto imap(R (*fn)(P), Range&& iterable, std::size_t chunksize = 1) {
    check_running();
    if (chunksize < 1) throw ValueError("Chunksize must be 1+, not " + std::to_string(chunksize));
    auto source = chunk_source<R, P>(fn, std::forward<Range>(iterable), chunksize);
    return detail::Ordered<R, decltype(source)>(std::move(source), lookahead(), chunksize > 1);
  }
  /// Python: `imap_unordered(func, iterable, chunksize=1)`: results as they complete.
  template <class R, class P, class Range>
  auto imap_unordered(R (*fn)(P), Range&& iterable, std::size_t chunksize = 1) {
    check_running();
    if (chunksize < 1) throw ValueError("Chunksize must be 1+, not " + std::to_string(chunksize));
    auto source = chunk_source<R, P>(fn, std::forward<Range>(iterable), chunksize);
    return detail::Unordered<R, decltype(source)>(std::move(source), lookahead(), chunksize > 1);
  }

  /// Python: `close()`: no more tasks; the workers end once the submitted ones are done.
  void close();
  /// Python: `terminate()`: stops the workers at once; tasks not done fail with ProcessError.
  void terminate();
  /// Python: `join()`: waits for the workers to end. @throws ValueError "Pool is still running"
  /// before close() or terminate().
  void join();

  int processes() const noexcept { return engine_.max_workers(); }
  /// The pids of the live workers.
  std::vector<int> worker_pids() const { return engine_.worker_pids(); }

private:
  void check_running() const;
  std::size_t lookahead() const noexcept {
    return 32 * static_cast<std::size_t>(engine_.max_workers());
  }

  // Submits chunks of `items` and gathers their results into one AsyncResult.
  template <class R, class... P>
  auto gather(R (*fn)(P...),
              std::vector<troupe::detail::BatchItem<std::tuple<std::decay_t<P>...>>> items,
              std::optional<std::size_t> chunksize,
              AsyncCallbacks<std::vector<futures::detail::MapValue<R>>> callbacks) {
    using V = futures::detail::MapValue<R>;
    check_running();
    const std::string entry =
        futures::detail::entry_name(reinterpret_cast<const void*>(fn), "Pool.map");
    const std::size_t chunk = detail::chunk_size(chunksize, items.size(), engine_.max_workers());
    auto g = detail::Gather<V>::start(items.size(), chunk, std::move(callbacks));
    AsyncResult<std::vector<V>> result(g->out);
    std::vector<std::unique_ptr<detail::ChunkJob<R>>> jobs;
    for (std::size_t at = 0; at < items.size(); at += chunk) {
      const std::size_t n = std::min(chunk, items.size() - at);
      std::vector<troupe::detail::BatchItem<std::tuple<std::decay_t<P>...>>> part(
          std::make_move_iterator(items.begin() + static_cast<std::ptrdiff_t>(at)),
          std::make_move_iterator(items.begin() + static_cast<std::ptrdiff_t>(at + n)));
      auto job = std::make_unique<detail::ChunkJob<R>>();
      job->entry = entry;
      job->batch = true;
      job->calls.push_back(troupe::to_bytes(part));
      job->future.add_done_callback(
          [g, at](const futures::Future<std::vector<V>>& f) { g->chunk_done(at, f); });
      jobs.push_back(std::move(job));
    }
    for (auto& j : jobs) engine_.submit(std::move(j));
    return result;
  }

  template <class R, class P, class Range>
  auto chunk_source(R (*fn)(P), Range&& iterable, std::size_t chunk) {
    using V = futures::detail::MapValue<R>;
    const std::string entry =
        futures::detail::entry_name(reinterpret_cast<const void*>(fn), "Pool.imap");
    auto input = detail::chunk_reader<std::decay_t<P>>(std::forward<Range>(iterable), chunk);
    return [this, input, entry]() -> std::optional<futures::Future<std::vector<V>>> {
      std::vector<std::decay_t<P>> items = input->next();
      if (items.empty()) return std::nullopt;
      check_running();
      auto job = std::make_unique<detail::ChunkJob<R>>();
      job->entry = entry;
      job->batch = true;
      job->calls.push_back(troupe::to_bytes(items));
      futures::Future<std::vector<V>> f = job->future;
      engine_.submit(std::move(job));
      return f;
    };
  }

  enum class Run : std::uint8_t { running, closed, terminated };
  Run state_ = Run::running;
  multiprocessing::detail::WorkerPool engine_;
};

/// Python: `multiprocessing.pool.ThreadPool(processes=None, initializer=None, initargs=())`, and
/// `multiprocessing.dummy.Pool`: Pool's API on threads of this process (any callable, nothing
/// encoded). terminate() cannot stop a running thread: it cancels the tasks not yet started
/// (their AsyncResults raise CancelledError) and lets the running ones finish.
class ThreadPool {
public:
  struct Options {
    std::optional<int> processes;       ///< unset: the CPUs this process may run on
    std::function<void()> initializer;  ///< Python's initializer with its initargs bound in
  };
  explicit ThreadPool(Options options = {});
  explicit ThreadPool(int processes) : ThreadPool(Options{.processes = processes}) {}
  /// Python's `__exit__`: terminate(), then the threads are joined.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  template <class F, class... A>
  decltype(auto) apply(F&& fn, A&&... args) {
    auto r = apply_async(std::forward<F>(fn), std::forward<A>(args)...);
    using R = std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>;
    if constexpr (std::is_void_v<R>)
      r.get();
    else
      return R(r.get());
  }
  template <class F, class... A>
  requires std::is_invocable_v < std::decay_t<F>
  &, std::decay_t<A>... > auto apply_async(F&& fn, A&&... args) {
    using R = std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>;
    return apply_async(AsyncCallbacks<futures::detail::MapValue<R>>{}, std::forward<F>(fn),
                       std::forward<A>(args)...);
  }
  template <class F, class... A>
  requires std::is_invocable_v < std::decay_t<F>
  &, std::decay_t<A>... >
         auto apply_async(AsyncCallbacks<futures::detail::MapValue<
                              std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>>>
                              callbacks,
                          F&& fn, A&&... args) {
    using R = std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>;
    check_running();
    return AsyncResult<R>(detail::chain_callbacks(
        exec_.submit(std::forward<F>(fn), std::forward<A>(args)...), std::move(callbacks)));
  }

  template <class F, class Range>
  auto map(F fn, Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt) {
    return map_async(std::move(fn), std::forward<Range>(iterable), chunksize).get();
  }
  template <class F, class Range,
            class V = futures::detail::MapValue<
                std::invoke_result_t<F&, troupe::detail::range_reference_t<Range>>>>
  auto map_async(F fn, Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt,
                 AsyncCallbacks<std::vector<V>> callbacks = {}) {
    using Item = std::decay_t<troupe::detail::range_reference_t<Range>>;
    std::vector<Item> items;
    for (auto&& x : iterable) items.emplace_back(x);
    return gather<V>([fn](Item& x) mutable { return call(fn, x); }, std::move(items), chunksize,
                     std::move(callbacks));
  }
  template <class F, class Range>
  auto starmap(F fn, Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt) {
    return starmap_async(std::move(fn), std::forward<Range>(iterable), chunksize).get();
  }
  template <class F, class Range,
            class V = futures::detail::MapValue<decltype(std::apply(
                std::declval<F&>(), std::declval<troupe::detail::range_reference_t<Range>>()))>>
  auto starmap_async(F fn, Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt,
                     AsyncCallbacks<std::vector<V>> callbacks = {}) {
    using Item = std::decay_t<troupe::detail::range_reference_t<Range>>;
    std::vector<Item> items;
    for (auto&& x : iterable) items.emplace_back(x);
    return gather<V>(
        [fn](Item& t) mutable { return call([&](auto&&... a) { return fn(a...); }, t, true); },
        std::move(items), chunksize, std::move(callbacks));
  }

  template <class F, class Range>
  auto imap(F fn, Range&& iterable, std::size_t chunksize = 1) {
    auto source = chunk_source(std::move(fn), std::forward<Range>(iterable), chunksize);
    using FutureV = typename decltype(source)::result_type::value_type;
    using V = typename FutureV::value_type::value_type;
    return detail::Ordered<V, decltype(source)>(std::move(source), lookahead(), chunksize > 1);
  }
  template <class F, class Range>
  auto imap_unordered(F fn, Range&& iterable, std::size_t chunksize = 1) {
    auto source = chunk_source(std::move(fn), std::forward<Range>(iterable), chunksize);
    using FutureV = typename decltype(source)::result_type::value_type;
    using V = typename FutureV::value_type::value_type;
    return detail::Unordered<V, decltype(source)>(std::move(source), lookahead(), chunksize > 1);
  }

  void close();
  void terminate();
  void join();
  int processes() const noexcept { return exec_.max_workers(); }

private:
  // One call of `fn`, as a MapValue (std::monostate for void).
  template <class F, class X>
  static auto call(F& fn, X& x, bool = false) {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, X&>>) {
      fn(x);
      return std::monostate{};
    } else {
      return fn(x);
    }
  }
  template <class F, class... X>
  static auto call(F&& fn, std::tuple<X...>& t, bool) {
    using R = decltype(std::apply(fn, t));
    if constexpr (std::is_void_v<R>) {
      std::apply(fn, t);
      return std::monostate{};
    } else {
      return std::apply(fn, t);
    }
  }

  void check_running() const;
  std::size_t lookahead() const noexcept {
    return 4 * static_cast<std::size_t>(exec_.max_workers());
  }

  template <class V, class G, class Item>
  AsyncResult<std::vector<V>> gather(G one, std::vector<Item> items,
                                     std::optional<std::size_t> chunksize,
                                     AsyncCallbacks<std::vector<V>> callbacks) {
    check_running();
    const std::size_t chunk = detail::chunk_size(chunksize, items.size(), exec_.max_workers());
    auto g = detail::Gather<V>::start(items.size(), chunk, std::move(callbacks));
    AsyncResult<std::vector<V>> result(g->out);
    auto shared = std::make_shared<std::vector<Item>>(std::move(items));
    for (std::size_t at = 0; at < shared->size(); at += chunk) {
      const std::size_t n = std::min(chunk, shared->size() - at);
      auto f = exec_.submit([shared, one, at, n]() mutable {
        std::vector<V> out;
        out.reserve(n);
        for (std::size_t i = at; i < at + n; ++i) out.push_back(one((*shared)[i]));
        return out;
      });
      f.add_done_callback(
          [g, at](const futures::Future<std::vector<V>>& c) { g->chunk_done(at, c); });
    }
    return result;
  }

  template <class F, class Range>
  auto chunk_source(F fn, Range&& iterable, std::size_t chunk) {
    check_running();
    if (chunk < 1) throw ValueError("Chunksize must be 1+, not " + std::to_string(chunk));
    using Item = std::decay_t<troupe::detail::range_reference_t<Range>>;
    using V = futures::detail::MapValue<std::invoke_result_t<F&, Item&>>;
    auto input = detail::chunk_reader<Item>(std::forward<Range>(iterable), chunk);
    return std::function<std::optional<futures::Future<std::vector<V>>>()>(
        [this, input, fn]() mutable -> std::optional<futures::Future<std::vector<V>>> {
          std::vector<Item> items = input->next();
          if (items.empty()) return std::nullopt;
          check_running();
          return exec_.submit([fn, items = std::move(items)]() mutable {
            std::vector<V> out;
            out.reserve(items.size());
            for (auto& x : items) out.push_back(call(fn, x));
            return out;
          });
        });
  }

  enum class Run : std::uint8_t { running, closed, terminated };
  Run state_ = Run::running;
  futures::ThreadPoolExecutor exec_;
};

namespace dummy {
/// Python: `multiprocessing.dummy.Pool` is `multiprocessing.pool.ThreadPool`.
using Pool = multiprocessing::ThreadPool;
}  // namespace dummy

}  // namespace troupe::multiprocessing
