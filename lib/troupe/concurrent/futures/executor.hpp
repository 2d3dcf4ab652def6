// troupe/concurrent/futures/executor.hpp — concurrent.futures.Executor: what every executor
// shares (map over submit), and the options of map.
#pragma once

#include <cstddef>
#include <deque>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "troupe/concurrent/futures/future.hpp"
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

namespace detail {

/// Several ranges read in step, stopping at the shortest (Python's zip).
template <class... Views>
class Zip {
public:
  explicit Zip(Views... views) : views_(std::move(views)...), its_(begins()) {}
  Zip(Zip&&) = delete;

  /// Calls `f(elements...)` for the next tuple of elements; false when any range has ended.
  template <class F>
  bool next(F&& f) {
    return std::apply(
        [&](auto&... it) {
          if (ended(std::index_sequence_for<Views...>{})) return false;
          std::forward<F>(f)(*it...);
          (++it, ...);
          return true;
        },
        its_);
  }

private:
  auto begins() {
    return std::apply([](auto&... v) { return std::make_tuple(std::ranges::begin(v)...); }, views_);
  }
  template <std::size_t... I>
  bool ended(std::index_sequence<I...>) {
    return ((std::get<I>(its_) == std::ranges::end(std::get<I>(views_))) || ...);
  }

  std::tuple<Views...> views_;
  std::tuple<std::ranges::iterator_t<Views>...> its_;
};

/// The value map yields for a call returning R (Python's None is std::monostate).
template <class R>
using MapValue = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// What the results of map, imap and imap_unordered share: a range read once, whose iterator
/// asks `Derived` for the next value (`advance()` sets `current_`; empty at the end).
template <class Derived, class V>
class ReadOnce {
public:
  class iterator {
  public:
    using value_type = V;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(Derived* d) : d_(d) {}
    V& operator*() const { return *d_->current_; }
    V* operator->() const { return &*d_->current_; }
    iterator& operator++() {
      d_->advance({});
      return *this;
    }
    void operator++(int) { d_->advance({}); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
      return it.at_end();
    }

  private:
    bool at_end() const noexcept { return !d_->current_; }
    Derived* d_ = nullptr;
  };

  /// Once only: the results are read as they come, as from Python's generator.
  iterator begin() {
    auto& self = static_cast<Derived&>(*this);
    if (!started_) {
      started_ = true;
      self.advance({});
    }
    return iterator(&self);
  }
  std::default_sentinel_t end() const noexcept { return {}; }

  /// Python: `IMapIterator.next(timeout=None)`: moves on to the next result and returns it, or
  /// nullopt at the end (Python's StopIteration). If `timeout` passes first it throws
  /// `Derived::timeout_error` and nothing is lost: the next call waits for the same result.
  /// (Loops by hand use next(); a range-for has its own position: begin() reads the first.)
  std::optional<V> next(Timeout timeout = {}) {
    auto& self = static_cast<Derived&>(*this);
    started_ = true;
    if (!self.advance(timeout.deadline()))
      throw typename Derived::timeout_error("the next result did not come within the timeout");
    if (!self.current_) return std::nullopt;
    return std::move(*self.current_);
  }

private:
  bool started_ = false;
};

/// The lazy result of map: submits through `submit_next` (which returns false when the input
/// has ended) and yields results in input order. `Chunked`: each future holds a vector of
/// results (process pools), yielded one by one.
template <class R, class FutureR, class Source, class TimeoutE = troupe::TimeoutError>
class MapResults : public ReadOnce<MapResults<R, FutureR, Source, TimeoutE>, MapValue<R>> {
  friend class ReadOnce<MapResults, MapValue<R>>;

public:
  using value_type = MapValue<R>;
  using timeout_error = TimeoutE;  // what next(timeout) throws

  MapResults(Source source, std::size_t ahead, Timeout timeout)
      : source_(std::move(source)), ahead_(ahead), deadline_(timeout.deadline()) {
    fill();
  }
  MapResults(const MapResults&) = delete;
  MapResults& operator=(const MapResults&) = delete;
  /// Python's generator closes with its remaining futures cancelled.
  ~MapResults() {
    for (auto& f : window_) f.cancel();
  }

private:
  void fill() {
    while (!input_done_ && window_.size() < ahead_) {
      std::optional<FutureR> f = source_();
      if (!f) {
        input_done_ = true;
        break;
      }
      window_.push_back(std::move(*f));
    }
  }

  void cancel_rest() noexcept {
    for (auto& f : window_) f.cancel();
    window_.clear();
    input_done_ = true;
  }

  // The next result into current_ (empty at the end); false if `until` passed first, with
  // nothing consumed.
  bool advance(std::optional<troupe::detail::steady::time_point> until) {
    if constexpr (is_chunked) {
      if (chunk_pos_ < chunk_.size()) {
        current_.emplace(std::move(chunk_[chunk_pos_++]));
        return true;
      }
    }
    for (;;) {
      if (window_.empty()) {
        current_.reset();
        return true;
      }
      if (until && (!deadline_ || *until < *deadline_) &&
          !window_.front().core()->wait(Timeout(*until), spin_.get()))
        return false;
      current_.reset();
      FutureR f = std::move(window_.front());
      window_.pop_front();
      try {
        fill();
        f.core()->wait_or_throw(deadline_ ? Timeout(*deadline_) : Timeout(), spin_.get());
        if (f.core()->stored_exception()) std::rethrow_exception(f.core()->stored_exception());
      } catch (...) {
        f.cancel();
        cancel_rest();
        throw;
      }
      if constexpr (is_chunked) {
        chunk_ = std::move(f.typed().value());
        chunk_pos_ = 0;
        if (chunk_.empty()) continue;
        current_.emplace(std::move(chunk_[chunk_pos_++]));
      } else if constexpr (std::is_void_v<R>) {
        current_.emplace();
      } else {
        current_.emplace(std::move(f.typed().value()));
      }
      return true;
    }
  }

  static constexpr bool is_chunked = !std::is_same_v<FutureR, Future<R>>;

  Source source_;
  // One spin budget for all the results: waits that outlast a hand-off (workers busy, results
  // batched) soon stop spinning instead of each spinning for the full budget.
  std::unique_ptr<troupe::detail::AdaptiveSpin> spin_ =
      std::make_unique<troupe::detail::AdaptiveSpin>();
  std::size_t ahead_;
  std::optional<troupe::detail::steady::time_point> deadline_;
  std::deque<FutureR> window_;
  bool input_done_ = false;
  std::optional<value_type> current_;
  std::conditional_t<is_chunked, std::vector<value_type>, std::monostate> chunk_;
  std::size_t chunk_pos_ = 0;
};

/// How many calls map keeps ahead (`default_ahead` unless the options say): checks the options
/// as Python does.
std::size_t map_lookahead(const MapOptions& options, std::size_t default_ahead);

}  // namespace detail

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
    auto zip = std::make_shared<detail::Zip<std::views::all_t<Ranges>...>>(
        std::views::all(std::forward<Ranges>(iterables))...);
    using R = std::invoke_result_t<std::decay_t<F>&,
                                   std::ranges::range_reference_t<std::views::all_t<Ranges>>...>;
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
