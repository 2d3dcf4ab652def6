// troupe/concurrent/futures/detail/map.hpp — the machinery of Executor::map and Pool's imap:
// ranges zipped in step, a result range read once, the results of a map read in order with
// bounded look-ahead. Not API: include troupe/concurrent/futures/executor.hpp.
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

#include "troupe/concurrent/futures/future.hpp"
#include "troupe/detail/ranges.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"

namespace troupe::concurrent::futures {

struct MapOptions;

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
    return std::apply([](auto&... v) { return std::make_tuple(troupe::detail::range_begin(v)...); },
                      views_);
  }
  template <std::size_t... I>
  bool ended(std::index_sequence<I...>) {
    return ((std::get<I>(its_) == troupe::detail::range_end(std::get<I>(views_))) || ...);
  }

  std::tuple<Views...> views_;
  std::tuple<troupe::detail::range_iterator_t<Views>...> its_;
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

}  // namespace troupe::concurrent::futures
