// troupe/concurrent/futures/executor.hpp — concurrent.futures.Executor: what every executor
// shares (map over submit), and the options of map.
#pragma once

#include <cstddef>
#include <deque>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "troupe/concurrent/futures/detail/map.hpp"
#include "troupe/concurrent/futures/future.hpp"
#include "troupe/detail/ranges.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"

namespace troupe::concurrent::futures {

/// Python: `Executor.map(fn, *iterables, timeout=None, chunksize=1, buffersize=None)`.
///
/// troupe's map is lazy by default: it keeps at most `buffersize` calls submitted ahead of the
/// result being read (by default a few per worker), so an endless or huge input costs
/// bounded memory (Python 3.14's `buffersize`; before it Python submitted everything at once).
/// `eager = true` is Python's default: every call is submitted before map returns.
struct MapOptions {
  /// Counted from the map() call, as Python's: a result not ready by then throws TimeoutError
  /// where it is read, and the calls not yet done are cancelled.
  Timeout timeout;
  /// Items per task for process pools (threads ignore it, as Python's do). Must be >= 1.
  std::size_t chunksize = 1;
  /// Calls (chunks, for process pools) submitted ahead; unset: 2 × max_workers for threads,
  /// 32 × max_workers for processes (whose calls cross in batches). Must be >= 1.
  std::optional<std::size_t> buffersize;
  /// Submit every call at once (Python's behaviour without buffersize).
  bool eager = false;
};

/// Python: `concurrent.futures.Executor`: `map` over the derived executor's `submit`.
/// Executors derive from `Executor<Self>` (CRTP).
template <class Derived>
class Executor {
public:
  /// Python: `map(fn, *iterables)`: the calls' results in input order, as a range read once
  /// (`for (auto& v : pool.map(f, xs))`). A call's exception is thrown where its result is read.
  /// Ranges given as temporaries are kept by the result; others must outlive it.
  template <class F, class... Ranges>
  requires(!std::is_same_v<std::decay_t<F>, MapOptions> &&
           sizeof...(Ranges) > 0) auto map(F&& fn, Ranges&&... iterables) {
    return map(MapOptions{}, std::forward<F>(fn), std::forward<Ranges>(iterables)...);
  }

  /// The same with Python's keyword arguments: `map({.timeout = 5s, .buffersize = 8}, f, xs)`.
  template <class F, class... Ranges>
  requires(sizeof...(Ranges) > 0) auto map(MapOptions options, F&& fn, Ranges&&... iterables) {
    auto& self = static_cast<Derived&>(*this);
    const std::size_t ahead = detail::map_lookahead(options, 2 * self.max_workers());
    auto zip = std::make_shared<detail::Zip<troupe::detail::all_t<Ranges>...>>(
        troupe::detail::all(std::forward<Ranges>(iterables))...);
    using R =
        std::invoke_result_t<std::decay_t<F>&,
                             troupe::detail::range_reference_t<troupe::detail::all_t<Ranges>>...>;
    using FutureR = Future<R>;
    auto source = [&self, zip, fn = std::forward<F>(fn)]() mutable -> std::optional<FutureR> {
      std::optional<FutureR> out;
      (void)zip->next([&](auto&&... a) { out.emplace(self.submit(fn, a...)); });
      return out;
    };
    return detail::MapResults<R, FutureR, decltype(source)>(std::move(source), ahead,
                                                            options.timeout);
  }

protected:
  Executor() = default;
  ~Executor() = default;
};

}  // namespace troupe::concurrent::futures
