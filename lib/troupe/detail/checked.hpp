// troupe/detail/checked.hpp — arithmetic on sizes and offsets that come from a caller or a peer,
// checked: a sum or product that does not fit is reported, never wrapped, so a wrapped value can
// never pass a bounds check (issue 15: send_bytes(buf, 8, 2^64 - 8) once passed one).
#pragma once

#include <concepts>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "troupe/errors.hpp"

namespace troupe::detail {

/// a + b as an R (default std::size_t), or nullopt if the exact sum does not fit in R (a
/// negative sum does not fit in an unsigned R).
template <std::integral R = std::size_t, std::integral A, std::integral B>
constexpr std::optional<R> checked_add(A a, B b) noexcept {
  R r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// a * b as an R (default std::size_t), or nullopt if the exact product does not fit in R.
template <std::integral R = std::size_t, std::integral A, std::integral B>
constexpr std::optional<R> checked_mul(A a, B b) noexcept {
  R r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// a + b; @throws ValueError "`what`: a + b does not fit in N bits" naming both values.
template <std::integral R = std::size_t, std::integral A, std::integral B>
R add_or_throw(A a, B b, std::string_view what) {
  if (auto r = checked_add<R>(a, b)) return *r;
  throw ValueError(std::string(what) + ": " + std::to_string(a) + " + " + std::to_string(b) +
                   " does not fit in " + std::to_string(sizeof(R) * 8) + " bits");
}

/// a * b; @throws ValueError "`what`: a * b does not fit in N bits" naming both values.
template <std::integral R = std::size_t, std::integral A, std::integral B>
R mul_or_throw(A a, B b, std::string_view what) {
  if (auto r = checked_mul<R>(a, b)) return *r;
  throw ValueError(std::string(what) + ": " + std::to_string(a) + " * " + std::to_string(b) +
                   " does not fit in " + std::to_string(sizeof(R) * 8) + " bits");
}

/// Whether [offset, offset + size) lies inside `length` bytes (no sum is formed, so nothing
/// wraps).
constexpr bool range_fits(std::size_t length, std::size_t offset, std::size_t size) noexcept {
  return offset <= length && size <= length - offset;
}

}  // namespace troupe::detail
