// troupe/concurrent/futures/process.hpp — concurrent.futures.ProcessPoolExecutor.
//
// C++ cannot send code to another process, so a call is a function registered with
// TROUPE_ENTRY and arguments its codecs encode (Python pickles a module-level function by name:
// the same rule). Workers are processes of the chosen start method (forkserver by default, as
// Python 3.14 on Linux); each has its own connection and a shared memory board, so a worker that
// dies fails exactly the call it was running, with its exit status or signal in the message (the
// calls it had finished keep their results, sent or not) — and, by default as in Python, breaks
// the pool (OnWorkerDeath::replace_worker sends the calls it had not started to another worker).
#pragma once

#include <signal.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/concurrent/futures/executor.hpp"
#include "troupe/concurrent/futures/future.hpp"
#include "troupe/concurrent/futures/on_worker_death.hpp"
#include "troupe/detail/ranges.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/detail/future_job.hpp"
#include "troupe/multiprocessing/detail/secret_builder.hpp"
#include "troupe/multiprocessing/detail/worker_pool.hpp"
#include "troupe/multiprocessing/process.hpp"

namespace troupe::concurrent::futures {

namespace detail {

/// The name a registered function goes by. @throws ValueError if it is not registered.
std::string entry_name(const void* function, const char* what);

template <class R>
constexpr bool sendable_result = std::is_void_v<R> || Encodable<std::decay_t<R>>;

}  // namespace detail

/// troupe: in a call running in a ProcessPoolExecutor's (or a multiprocessing::Pool's) worker,
/// whether its future's request_stop() was made — check it in long calls and return early. The
/// pool writes the stop on the worker's shared board (a lost signal cannot lose it) and sends
/// SIGINT, which interrupts a blocking system call; if the call has not ended a grace period later
/// (ProcessPoolOptions::stop_grace) the worker gets SIGTERM, then SIGKILL, and the call fails
/// with CancelledError. False anywhere else.
inline bool stop_requested() noexcept {
  return multiprocessing::detail::stop_requested_in_worker();
}

/// A function registered with TROUPE_ENTRY and its arguments, run at the start of each worker
/// (Python's `initializer` and `initargs`): `{.initializer = {setup, "config.ini", 4}}`.
struct Initializer {
  std::string entry;
  /// The arguments encoded (when `encode` is null).
  std::vector<std::byte> arguments;
  /// The arguments, kept until the pool goes, encoded for each worker as it starts: a proxy
  /// among them then carries its manager's key, as in a Process's arguments (encoded once, a
  /// proxy would park a reference that no worker claims).
  std::function<std::vector<std::byte>()> encode;

  Initializer() = default;
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) Initializer(R (*fn)(P...), A&&... args)
      : entry(detail::entry_name(reinterpret_cast<const void*>(fn), "initializer")) {
    auto kept = std::make_shared<const std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
    encode = [kept] { return multiprocessing::detail::secret_to_bytes(*kept); };
  }
  /// The arguments encoded now (a proxy among them carries no key).
  std::vector<std::byte> encoded() const { return encode ? encode() : arguments; }
};

/// ProcessPoolExecutor's options (Python's keyword arguments).
struct ProcessPoolOptions {
  /// Unset: the CPUs this process may run on (Python 3.13's process_cpu_count()). > 0.
  std::optional<int> max_workers;
  /// Unset: forkserver (Python 3.14 on Linux). `mp::get_context("spawn")` and so on.
  std::optional<multiprocessing::Context> mp_context;
  Initializer initializer;
  /// A worker is replaced after this many calls (map chunks count one each). Not with fork.
  std::optional<int> max_tasks_per_child;
  /// beyond Python: what a dead worker does to the pool (not replace_worker with fork).
  OnWorkerDeath on_worker_death = OnWorkerDeath::break_pool;
  /// beyond Python: request_stop() on a running call sends its worker SIGINT (stop_requested()),
  /// then SIGTERM after this long, then SIGKILL after as long again; a worker ended so is
  /// replaced (with fork it cannot be: the pool breaks).
  std::chrono::milliseconds stop_grace{1000};
};

/// Python: `concurrent.futures.ProcessPoolExecutor(max_workers=None, mp_context=None,
/// initializer=None, initargs=(), max_tasks_per_child=None)`.
///
///     int square(int x) { return x * x; }
///     TROUPE_ENTRY(square);
///     …
///     futures::ProcessPoolExecutor pool{{.max_workers = 4}};
///     auto f = pool.submit(square, 7);          // f.result() == 49
///     for (int v : pool.map({.chunksize = 64}, square, xs)) …
class ProcessPoolExecutor : public Executor<ProcessPoolExecutor> {
public:
  using Options = ProcessPoolOptions;

  /// @throws ValueError for max_workers <= 0, max_tasks_per_child < 1, or fork with
  /// max_tasks_per_child or replace_worker.
  explicit ProcessPoolExecutor(Options options = {});
  explicit ProcessPoolExecutor(int max_workers)
      : ProcessPoolExecutor(Options{.max_workers = max_workers}) {}
  /// Python's `__exit__`: shutdown(wait=true).
  ~ProcessPoolExecutor();
  ProcessPoolExecutor(const ProcessPoolExecutor&) = delete;
  ProcessPoolExecutor& operator=(const ProcessPoolExecutor&) = delete;

  /// Python: `submit(fn, /, *args)`: runs `fn(args...)` in a worker. `fn` must be registered
  /// with TROUPE_ENTRY (ValueError otherwise) and its parameters and result must have codecs
  /// (a compile error otherwise).
  /// @throws RuntimeError after shutdown or from another process; BrokenProcessPool if broken.
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) Future<R> submit(R (*fn)(P...), A&&... args) {
    static_assert(detail::sendable_result<R>,
                  "ProcessPoolExecutor: the function's result has no troupe::Codec");
    auto job = std::make_unique<multiprocessing::detail::FutureJob<R>>();
    job->entry = detail::entry_name(reinterpret_cast<const void*>(fn), "ProcessPoolExecutor");
    job->calls.push_back(
        troupe::to_bytes(std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)));
    Future<R> f = job->future;
    pool_.submit(std::move(job));
    return f;
  }
  template <class F, class... A>
  requires(!std::is_pointer_v<std::decay_t<F>> ||
           !std::is_function_v<std::remove_pointer_t<std::decay_t<F>>>) void submit(F&&, A&&...) {
    static_assert(sizeof(F) == 0,
                  "ProcessPoolExecutor runs functions registered with TROUPE_ENTRY (a plain "
                  "function, not a lambda or functor): C++ cannot send code to another process");
  }

  /// Python: `map(fn, *iterables, timeout, chunksize, buffersize)`: like Executor::map, with
  /// `chunksize` items per message to a worker (Python's chunking; the look-ahead counts
  /// chunks).
  template <class R, class... P, class... Ranges>
  requires(sizeof...(P) == sizeof...(Ranges)) auto map(R (*fn)(P...), Ranges&&... iterables) {
    return map(MapOptions{}, fn, std::forward<Ranges>(iterables)...);
  }
  template <class R, class... P, class... Ranges>
  requires(sizeof...(P) == sizeof...(Ranges)) auto map(MapOptions options, R (*fn)(P...),
                                                       Ranges&&... iterables) {
    static_assert(detail::sendable_result<R>,
                  "ProcessPoolExecutor: the function's result has no troupe::Codec");
    const std::size_t ahead =
        futures::detail::map_lookahead(options, 32 * static_cast<std::size_t>(max_workers()));
    const std::string entry =
        detail::entry_name(reinterpret_cast<const void*>(fn), "ProcessPoolExecutor.map");
    auto zip = std::make_shared<futures::detail::Zip<troupe::detail::all_t<Ranges>...>>(
        troupe::detail::all(std::forward<Ranges>(iterables))...);
    using FutureR = Future<std::vector<detail::MapValue<R>>>;
    auto source = [this, zip, entry, chunk = options.chunksize]() -> std::optional<FutureR> {
      using Item = troupe::detail::BatchItem<std::tuple<std::decay_t<P>...>>;
      std::vector<Item> items;
      while (items.size() < chunk && zip->next([&](auto&&... a) { items.emplace_back(a...); })) {
      }
      if (items.empty()) return std::nullopt;
      auto job = std::make_unique<multiprocessing::detail::ChunkJob<R>>();
      job->entry = entry;
      job->batch = true;
      job->calls.push_back(troupe::to_bytes(items));
      FutureR f = job->future;
      pool_.submit(std::move(job));
      return f;
    };
    return futures::detail::MapResults<R, FutureR, decltype(source)>(std::move(source), ahead,
                                                                     options.timeout);
  }

  /// Python: `shutdown(wait=True, *, cancel_futures=False)`.
  void shutdown(bool wait = true, bool cancel_futures = false);
  /// Python 3.14: `terminate_workers()`: SIGTERM to every live worker, then shutdown(); the
  /// calls they held fail with BrokenProcessPool.
  void terminate_workers();
  /// Python 3.14: `kill_workers()`: the same with SIGKILL.
  void kill_workers();

  int max_workers() const noexcept { return pool_.max_workers(); }
  /// The pids of the live workers.
  std::vector<int> worker_pids() const { return pool_.worker_pids(); }

private:
  static multiprocessing::detail::WorkerPoolOptions pool_options(Options& o);
  multiprocessing::detail::WorkerPool pool_;
};

}  // namespace troupe::concurrent::futures
