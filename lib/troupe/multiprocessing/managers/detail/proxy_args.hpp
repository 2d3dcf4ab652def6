// troupe/multiprocessing/managers/detail/proxy_args.hpp — helpers of SyncManager's typed proxies
// (sync_manager.hpp): the wire forms they send and read that no plain C++ type has (a result that
// is None or a value, a sequence sent as a Python list, never packed as bytes, a Python slice),
// `proxy[key]` and the live iterator by index. Not API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing::managers::detail {

/// Python's `timeout=None or seconds`: on the wire none or a float, as Python's own value (a
/// std::optional<double> would travel as a list of 0 or 1, which a CPython manager cannot read).
struct SecondsArg {
  std::optional<double> seconds;
};

/// A troupe::Timeout as the seconds a manager's method takes (none: forever). A negative
/// relative timeout goes as it is: each method applies Python's rule to it (a queue's blocking
/// get or put: ValueError; Lock.acquire: -1 is no timeout; Event.wait: no wait).
inline SecondsArg seconds_arg(const Timeout& t) {
  if (t.is_forever()) return {};
  if (t.is_negative()) return {t.seconds_value()};
  return {static_cast<double>(t.remaining().count()) / 1e9};
}

/// A result that is None or a T (Python's `dict.get(key)` without a default).
template <class T>
struct NoneOr {
  std::optional<T> value;
};

/// A result whose value is not wanted (any value is accepted).
struct Discard {};

/// A sequence argument sent element by element as a list, so that a std::vector<int> is a
/// Python list of ints (Codec packs a numeric vector as bytes, which a managed list or Array
/// would read as `bytes`). Refers to `items`: encode it before `items` goes.
template <class T>
struct ListArg {
  const std::vector<T>* items = nullptr;
};

/// Python's `slice(start, stop, step)`: on the wire a list of three, each None or an int.
struct SliceArg {
  std::optional<std::int64_t> start, stop, step;
};

/// `proxy[key]`: reads with `__getitem__` when converted to T, writes with `__setitem__` when
/// assigned. Holds a copy of the key; one call per use.
template <class P, class K, class T>
class ItemRef {
public:
  ItemRef(const P& proxy, K key) : proxy_(&proxy), key_(std::move(key)) {}
  operator T() const { return proxy_->template _callmethod<T>("__getitem__", key_); }
  T get() const { return *this; }
  const ItemRef& operator=(const T& value) const {
    proxy_->_callmethod("__setitem__", key_, value);
    return *this;
  }
  const ItemRef& operator=(const ItemRef& other) const { return *this = other.get(); }
  /// Compares the element read now (`d["k"] == "v"`; `!=` and the reversed forms follow).
  friend bool operator==(const ItemRef& r, const T& v) { return r.get() == v; }

  /// The element read now, to call a member of: Python's `d["k"].append(1)` for an element that
  /// is a proxy (`d["k"]->append(1)`), or any other class (`l[0]->size()`).
  struct Arrow {
    T value;
    const T* operator->() const noexcept { return &value; }
  };
  Arrow operator->() const { return Arrow{get()}; }

private:
  const P* proxy_;
  K key_;
};

/// A live input iterator over a managed object whose elements are read one at a time, when
/// first looked at (dereferenced, or compared with the end): `Source` reads the next element
/// (none at the end) and moves on. Iterators of one source are equal at the same position; any
/// is equal to end() once its element is missing.
template <class Source, class T>
class LazyIterator {
public:
  using iterator_category = std::input_iterator_tag;
  using value_type = T;
  using difference_type = std::ptrdiff_t;
  using pointer = const T*;
  using reference = const T&;

  LazyIterator() = default;  // end()
  explicit LazyIterator(Source source) : source_(std::move(source)) {}
  /// @throws what Source::past_end() throws, at the end.
  const T& operator*() const {
    if (!fetch()) source_->past_end();
    return *current_;
  }
  const T* operator->() const { return &**this; }
  LazyIterator& operator++() {
    source_->advance(fetched_);
    fetched_ = false;
    current_.reset();
    return *this;
  }
  void operator++(int) { ++*this; }
  friend bool operator==(const LazyIterator& a, const LazyIterator& b) {
    if (!a.source_ && !b.source_) return true;
    if (!a.source_) return !b.fetch();
    if (!b.source_) return !a.fetch();
    return *a.source_ == *b.source_;
  }

private:
  bool fetch() const {
    if (!fetched_) {
      current_ = source_->read();
      fetched_ = true;
    }
    return current_.has_value();
  }
  std::optional<Source> source_;
  mutable bool fetched_ = false;
  mutable std::optional<T> current_;
};

/// Python's iteration of a ListProxy/ArrayProxy: by index, element i read with `__getitem__`,
/// the end its IndexError, so a change made during the iteration is seen.
template <class P, class T>
struct ByIndex {
  const P* proxy;
  std::int64_t index = 0;
  std::optional<T> read() const {
    try {
      return proxy->template _callmethod<T>("__getitem__", index);
    } catch (const IndexError&) {
      return std::nullopt;
    }
  }
  void advance(bool) { ++index; }
  [[noreturn]] static void past_end() {
    throw IndexError("list index out of range (iterated past the end)");
  }
  bool operator==(const ByIndex& o) const { return proxy == o.proxy && index == o.index; }
};
template <class P, class T>
using IndexIterator = LazyIterator<ByIndex<P, T>, T>;

/// Python's `for x in it` over an IteratorProxy: each step one `next()` (a step looked past
/// unread is still taken); iterators of one proxy share its position.
template <class P, class T>
struct ByNext {
  const P* proxy;
  std::optional<T> read() const { return proxy->next(); }
  void advance(bool read_already) {
    if (!read_already) (void)proxy->next();
  }
  [[noreturn]] static void past_end() {
    throw StopIteration("iterated past the end of a managed iterator");
  }
  bool operator==(const ByNext& o) const { return proxy == o.proxy; }
};
template <class P, class T>
using NextIterator = LazyIterator<ByNext<P, T>, T>;

}  // namespace troupe::multiprocessing::managers::detail

template <class T>
struct troupe::Codec<troupe::multiprocessing::managers::detail::NoneOr<T>> {
  static std::string signature() { return "none|" + troupe::Codec<T>::signature(); }
  static void encode(const troupe::multiprocessing::managers::detail::NoneOr<T>& x,
                     troupe::proto::Value::Builder v) {
    if (x.value)
      troupe::Codec<T>::encode(*x.value, v);
    else
      v.setNone();
  }
  static troupe::multiprocessing::managers::detail::NoneOr<T> decode(
      troupe::proto::Value::Reader v) {
    if (v.which() == troupe::proto::Value::NONE) return {};
    return {troupe::Codec<T>::decode(v)};
  }
};

template <>
struct troupe::Codec<troupe::multiprocessing::managers::detail::Discard> {
  static std::string signature() { return "any"; }
  static void encode(troupe::multiprocessing::managers::detail::Discard,
                     troupe::proto::Value::Builder v) {
    v.setNone();
  }
  static troupe::multiprocessing::managers::detail::Discard decode(troupe::proto::Value::Reader) {
    return {};
  }
};

template <>
struct troupe::Codec<troupe::multiprocessing::managers::detail::SecondsArg> {
  static std::string signature() { return "seconds"; }
  static void encode(const troupe::multiprocessing::managers::detail::SecondsArg& s,
                     troupe::proto::Value::Builder v) {
    if (s.seconds)
      v.setFloat(*s.seconds);
    else
      v.setNone();
  }
  // Only sent.
};

template <class T>
struct troupe::Codec<troupe::multiprocessing::managers::detail::ListArg<T>> {
  static std::string signature() { return "pylist<" + troupe::Codec<T>::signature() + ">"; }
  static void encode(const troupe::multiprocessing::managers::detail::ListArg<T>& x,
                     troupe::proto::Value::Builder v) {
    const auto& items = *x.items;
    auto l = v.initList(troupe::codec_detail::list_size(items.size(), 1, signature()));
    unsigned i = 0;
    for (const auto& e : items) troupe::Codec<T>::encode(e, l[i++]);
  }
  // Only sent: the proxies read results as std::vector<T>, which also reads a list.
};

template <>
struct troupe::Codec<troupe::multiprocessing::managers::detail::SliceArg> {
  static std::string signature() { return "slice"; }
  static void encode(const troupe::multiprocessing::managers::detail::SliceArg& s,
                     troupe::proto::Value::Builder v) {
    auto l = v.initList(3);
    const std::optional<std::int64_t>* parts[] = {&s.start, &s.stop, &s.step};
    for (unsigned i = 0; i < 3; ++i) {
      if (*parts[i])
        l[i].setInt(**parts[i]);
      else
        l[i].setNone();
    }
  }
};
