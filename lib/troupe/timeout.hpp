// troupe/timeout.hpp — troupe::Timeout, the one timeout vocabulary type under every waiter.
//
// Default-constructed, a Timeout means "wait forever" (Python's `timeout=None`). It converts
// implicitly from any std::chrono::duration (a relative timeout, kept with its sign so that each
// call can apply its own CPython rule for negative values) and from a steady_clock time point (an
// absolute deadline). Deadlines in the past are equivalent to an immediate deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <ratio>
#include <type_traits>

namespace troupe {

class Timeout {
public:
  using clock = std::chrono::steady_clock;

  /// Forever: Python's `timeout=None`.
  constexpr Timeout() noexcept = default;
  constexpr Timeout(std::nullopt_t) noexcept {}

  /// A relative timeout. Floating-point durations are accepted (`duration<double>(0.5)`);
  /// values beyond what nanoseconds can hold saturate.
  template <class Rep, class Period>
  constexpr Timeout(std::chrono::duration<Rep, Period> d) noexcept
      : kind_(Kind::relative), ns_(saturate(d)) {}

  /// An absolute deadline on the steady clock.
  template <class Duration>
  constexpr Timeout(std::chrono::time_point<clock, Duration> deadline) noexcept
      : kind_(Kind::absolute), ns_(saturate(deadline.time_since_epoch())) {}

  /// Python's `None`.
  static constexpr Timeout forever() noexcept { return {}; }
  /// Seconds as a double, as Python spells timeouts; NaN is treated as forever.
  static Timeout seconds(double s) noexcept {
    if (s != s) return {};
    return Timeout(std::chrono::duration<double>(s));
  }

  constexpr bool is_forever() const noexcept { return kind_ == Kind::forever; }
  constexpr bool is_relative() const noexcept { return kind_ == Kind::relative; }
  constexpr bool is_absolute() const noexcept { return kind_ == Kind::absolute; }

  /// True for a relative timeout below zero (absolute deadlines are never "negative").
  constexpr bool is_negative() const noexcept { return kind_ == Kind::relative && ns_ < 0; }
  /// True for exactly -1 second, Python's "no timeout" sentinel of `Lock.acquire`.
  constexpr bool is_minus_one() const noexcept {
    return kind_ == Kind::relative && ns_ == -1'000'000'000;
  }

  /// The relative value as given (relative timeouts only; 0 otherwise).
  constexpr std::chrono::nanoseconds relative() const noexcept {
    return kind_ == Kind::relative ? std::chrono::nanoseconds(ns_) : std::chrono::nanoseconds(0);
  }

  /// The time left from `now`: max() for forever, never below zero.
  std::chrono::nanoseconds remaining(clock::time_point now = clock::now()) const noexcept {
    if (kind_ == Kind::forever) return std::chrono::nanoseconds::max();
    if (kind_ == Kind::relative) return std::chrono::nanoseconds(ns_ < 0 ? 0 : ns_);
    auto left = std::chrono::nanoseconds(ns_) - now.time_since_epoch();
    return left.count() < 0 ? std::chrono::nanoseconds(0) : left;
  }

  /// The absolute deadline, computed from `now` for a relative timeout (negative → now);
  /// nullopt for forever.
  std::optional<clock::time_point> deadline() const noexcept {
    // Reads the clock only when it must: forever and absolute deadlines are free.
    if (kind_ == Kind::forever) return std::nullopt;
    if (kind_ == Kind::absolute) return clock::time_point(std::chrono::nanoseconds(ns_));
    return deadline(clock::now());
  }
  std::optional<clock::time_point> deadline(clock::time_point now) const noexcept {
    switch (kind_) {
      case Kind::forever: return std::nullopt;
      case Kind::absolute: return clock::time_point(std::chrono::nanoseconds(ns_));
      case Kind::relative: break;
    }
    const auto base = now.time_since_epoch().count();
    const std::int64_t add = ns_ < 0 ? 0 : ns_;
    if (add > std::numeric_limits<std::int64_t>::max() - base) return std::nullopt;  // saturate
    return clock::time_point(std::chrono::nanoseconds(base + add));
  }

  /// The relative timeout in seconds (Python's float), for messages.
  double seconds_value() const noexcept { return static_cast<double>(relative().count()) / 1e9; }

private:
  enum class Kind : std::uint8_t { forever, relative, absolute };

  template <class Rep, class Period>
  static constexpr std::int64_t saturate(std::chrono::duration<Rep, Period> d) noexcept {
    using ns = std::chrono::duration<long double, std::nano>;
    const long double v = std::chrono::duration_cast<ns>(d).count();
    if (v != v) return std::numeric_limits<std::int64_t>::max();
    if (v >= static_cast<long double>(std::numeric_limits<std::int64_t>::max()))
      return std::numeric_limits<std::int64_t>::max();
    if (v <= static_cast<long double>(std::numeric_limits<std::int64_t>::min()))
      return std::numeric_limits<std::int64_t>::min();
    return static_cast<std::int64_t>(v);
  }

  Kind kind_ = Kind::forever;
  std::int64_t ns_ = 0;
};

/// A ready-made forever value: `q.get(true, troupe::forever)`.
inline constexpr Timeout forever{};

}  // namespace troupe
