// troupe/multiprocessing/managers/detail/proxy_args.hpp — the wire forms SyncManager's typed
// proxies (sync_manager.hpp) send and read that no plain C++ type has: a result that is None or a
// value, a sequence sent as a Python list (never packed as bytes), a Python slice. Not API.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "troupe/codec.hpp"

namespace troupe::multiprocessing::managers::detail {

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
