// troupe/detail/ranges.hpp — what the map functions (Executor::map, Pool's map and imap) need
// of the ranges they are given, without <ranges>: Clang 14 cannot compile libstdc++ 12's
// std::ranges machinery (Debian 12's pair), and these functions are in public headers. Not API.
#pragma once

#include <iterator>
#include <type_traits>
#include <utility>

namespace troupe::detail {

namespace range_adl {
using std::begin;
using std::end;
// A member begin()/end(), a free one found by ADL, or an array's: what a range-for uses.
template <class R>
constexpr auto begin_of(R& r) -> decltype(begin(r)) {
  return begin(r);
}
template <class R>
constexpr auto end_of(R& r) -> decltype(end(r)) {
  return end(r);
}
}  // namespace range_adl

template <class R>
constexpr auto range_begin(R& r) -> decltype(range_adl::begin_of(r)) {
  return range_adl::begin_of(r);
}
template <class R>
constexpr auto range_end(R& r) -> decltype(range_adl::end_of(r)) {
  return range_adl::end_of(r);
}

/// std::ranges::iterator_t and range_reference_t, for a range used as an lvalue.
template <class R>
using range_iterator_t = decltype(range_begin(std::declval<std::remove_reference_t<R>&>()));
template <class R>
using range_reference_t = decltype(*range_begin(std::declval<std::remove_reference_t<R>&>()));

/// A range given as an lvalue, referred to: it must outlive this.
template <class R>
class RangeRef {
public:
  explicit RangeRef(R& r) noexcept : r_(&r) {}
  auto begin() const { return range_begin(*r_); }
  auto end() const { return range_end(*r_); }

private:
  R* r_;
};

/// A range given as an rvalue (a temporary container, a view), kept: moved in.
template <class R>
class RangeOwn {
public:
  explicit RangeOwn(R&& r) : r_(std::move(r)) {}
  auto begin() { return range_begin(r_); }
  auto end() { return range_end(r_); }

private:
  R r_;
};

/// What std::views::all_t<R> is to the map functions, `R` as a forwarding reference deduces it
/// (T& for an lvalue, T for an rvalue).
template <class R>
using all_t =
    std::conditional_t<std::is_lvalue_reference_v<R>, RangeRef<std::remove_reference_t<R>>,
                       RangeOwn<std::remove_cvref_t<R>>>;

/// std::views::all(std::forward<R>(r)), as all_t says.
template <class R>
all_t<R> all(R&& r) {
  if constexpr (std::is_lvalue_reference_v<R>)
    return all_t<R>(r);
  else
    return all_t<R>(std::remove_cvref_t<R>(std::forward<R>(r)));
}

}  // namespace troupe::detail
