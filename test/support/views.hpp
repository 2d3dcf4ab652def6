// views.hpp — the lazy ranges the map tests give the map functions: std::views::iota and a
// transform of it, or, where the compiler cannot compile libstdc++'s <ranges> (Clang before 15
// with libstdc++ 12: CI's sanitizer builds), hand-written input ranges that behave the same for
// what the tests read (one pass, elements computed as they are read, no end when unbounded).
// The GCC builds keep exercising the standard views themselves.
#pragma once

#if defined(__clang__) && __clang_major__ < 15 && defined(__GLIBCXX__)
#define TROUPE_TESTING_OWN_VIEWS 1
#endif

#include <cstddef>
#include <iterator>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#ifndef TROUPE_TESTING_OWN_VIEWS
#include <ranges>
#endif

namespace troupe::testing::views {

#ifndef TROUPE_TESTING_OWN_VIEWS

using std::views::iota;

/// f(x) for x in [from, to), computed as each element is read.
template <class F>
auto transform_iota(int from, int to, F f) {
  return std::views::iota(from, to) | std::views::transform(std::move(f));
}

#else

struct Identity {
  int operator()(int x) const { return x; }
};

/// f(from), f(from + 1), … (to, if given, excluded): std::views::iota's elements, or a transform
/// of them, as an input range; f runs as each element is read.
template <class F = Identity>
class IotaRange {
public:
  struct End {};
  class iterator {
  public:
    using value_type = std::remove_cvref_t<std::invoke_result_t<const F&, int> >;
    using difference_type = std::ptrdiff_t;
    using iterator_category = std::input_iterator_tag;
    iterator() = default;
    iterator(int at, std::optional<int> to, std::shared_ptr<const F> f)
        : at_(at), to_(to), f_(std::move(f)) {}
    auto operator*() const { return (*f_)(at_); }
    iterator& operator++() {
      ++at_;
      return *this;
    }
    iterator operator++(int) {
      auto old = *this;
      ++at_;
      return old;
    }
    bool operator==(const iterator& o) const { return at_ == o.at_; }
    bool operator==(End) const { return to_ && at_ >= *to_; }

  private:
    int at_ = 0;
    std::optional<int> to_;
    std::shared_ptr<const F> f_;  // shared: the range may move while its iterators live
  };

  IotaRange(int from, std::optional<int> to, F f = F{})
      : from_(from), to_(to), f_(std::make_shared<const F>(std::move(f))) {}
  iterator begin() const { return iterator(from_, to_, f_); }
  End end() const { return {}; }

private:
  int from_;
  std::optional<int> to_;
  std::shared_ptr<const F> f_;
};

inline IotaRange<> iota(int from) {
  return IotaRange<>(from, std::nullopt);
}
inline IotaRange<> iota(int from, int to) {
  return IotaRange<>(from, to);
}

template <class F>
auto transform_iota(int from, int to, F f) {
  return IotaRange<F>(from, to, std::move(f));
}

#endif

}  // namespace troupe::testing::views
