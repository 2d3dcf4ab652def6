// troupe/detail/codec.hpp — the machinery behind troupe::Codec<T> (troupe/codec.hpp): the
// default codecs of arithmetic types, enums, aggregates and described classes, sequences, sets,
// maps and tuples, and the blob and list helpers they share. Not API: include troupe/codec.hpp.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <ratio>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <boost/describe/class.hpp>
#include <boost/describe/members.hpp>
#include <boost/mp11/algorithm.hpp>
#include <boost/pfr.hpp>
#include <capnp/message.h>
#include <capnp/orphan.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "value.capnp.h"

namespace troupe {

template <class T>
struct Codec;

namespace codec_detail {

using Which = proto::Value::Which;

/// Throws ValueError("malformed message: <what>").
[[noreturn]] void malformed(std::string_view what);
/// Throws malformed() unless `v` holds `want`; `type` names the C++ side for the message.
void expect(proto::Value::Reader v, Which want, std::string_view type);
/// Throws malformed() unless a list has `want` elements.
void expect_size(std::size_t got, std::size_t want, std::string_view type);
/// FNV-1a, 64 bits.
std::uint64_t fnv1a(std::string_view s) noexcept;
/// "app::Job" from a __PRETTY_FUNCTION__ text; the same spelling under GCC and Clang for
/// ordinary class names.
std::string type_name_from_pretty(std::string_view pretty);
/// The largest single Data or Text blob: Cap'n Proto counts list elements in 29 bits, so a blob
/// longer than this travels as a list of chunks of this size.
inline constexpr std::size_t kMaxBlobChunk = std::size_t{1} << 28;  // 256 MiB
/// The most elements a Cap'n Proto list holds (29 bits).
inline constexpr std::size_t kMaxListElements = (std::size_t{1} << 29) - 1;

/// The element count of a list of `n` values of `per_value` elements each, as initList takes
/// it. @throws ValueError naming `type` if it is over kMaxListElements (never truncated to 32
/// bits, which would make a short list and write past it).
unsigned list_size(std::size_t n, std::size_t per_value, std::string_view type);

/// Sets `v` to a Data (or, with `text`, Text) blob of `n` bytes at `p`, chunked above
/// kMaxBlobChunk. With `may_reference`, large word-aligned Data chunks whose size is a multiple of
/// 8 are referenced, not copied (`p` must then outlive the message builder, as in send()).
void put_blob(proto::Value::Builder v, const void* p, std::size_t n, bool text, bool may_reference);
inline void put_data(proto::Value::Builder v, const void* p, std::size_t n) {
  put_blob(v, p, n, false, true);
}
/// The chunks of the blob in `v` (one Data/Text, or a list of them; malformed() otherwise),
/// each read once (Cap'n Proto counts every read against the traversal limit).
struct Blob {
  std::vector<kj::ArrayPtr<const kj::byte>> chunks;
  std::size_t size = 0;
  void copy_to(void* out) const;
};
Blob read_blob(proto::Value::Reader v, bool text, std::string_view type);

/// Buffers a receiver filled straight from the socket with whole segments of a message; a
/// std::vector<std::byte> whose blob is exactly one of them takes it instead of copying
/// (Connection::recv of large byte vectors: one copy from the kernel, 1x the memory).
struct Donors {
  std::vector<std::vector<std::byte>>* buffers = nullptr;
};
inline thread_local Donors donors;
/// The donated buffer holding exactly `blob`'s bytes, moved out; nullopt if there is none.
std::optional<std::vector<std::byte>> take_donated(const Blob& blob);

template <class T>
std::string_view pretty() {
  return __PRETTY_FUNCTION__;
}

template <class T>
inline constexpr bool always_false = false;

/// X::signature(), built once per type. Every decode checks what it reads and passes the type's
/// signature along for the error message; built each time, the string cost more than the check
/// (an integer's "i32" on every integer read).
template <class X>
const std::string& signature_of() {
  static const std::string s = X::signature();
  return s;
}

/// The C++ type's own name: `T::troupe_name` if it has one, else the compiler's spelling.
/// Computed once (decoders name the type in their error messages, on every call).
template <class T>
const std::string& class_name() {
  static const std::string name = [] {
    if constexpr (requires { std::string_view(T::troupe_name); }) {
      return std::string(std::string_view(T::troupe_name));
    } else {
      return type_name_from_pretty(pretty<T>());
    }
  }();
  return name;
}

/// Elements that travel packed in a Data blob: arithmetic (not bool, not long double), std::byte.
template <class E>
inline constexpr bool packed = (std::is_arithmetic_v<E> && !std::is_same_v<E, bool> &&
                                !std::is_same_v<E, long double>) ||
                               std::is_same_v<E, std::byte>;

template <class E>
void swap_bytes_if_big_endian(E* p, std::size_t n) {
  if constexpr (std::endian::native == std::endian::big && sizeof(E) > 1) {
    for (std::size_t i = 0; i < n; ++i) {
      auto* b = reinterpret_cast<unsigned char*>(p + i);
      for (std::size_t j = 0; j < sizeof(E) / 2; ++j) std::swap(b[j], b[sizeof(E) - 1 - j]);
    }
  } else {
    (void)p;
    (void)n;
  }
}

/// Encodes a contiguous packed range as one Data blob (little-endian on the wire).
template <class E>
void put_packed(proto::Value::Builder v, const E* p, std::size_t n) {
  if constexpr (std::endian::native == std::endian::little || sizeof(E) == 1) {
    put_data(v, p, n * sizeof(E));
  } else {
    std::vector<E> swapped(p, p + n);
    swap_bytes_if_big_endian(swapped.data(), n);
    put_blob(v, swapped.data(), n * sizeof(E), false, false);
  }
}

/// The elements of a packed blob, after checking its size is a whole number of them.
template <class E>
std::vector<E> read_packed(proto::Value::Reader v, std::string_view type) {
  if (v.which() == proto::Value::LIST && v.getList().size() != 0 &&
      v.getList()[0].which() != proto::Value::DATA) {
    // Numbers one by one: how a tree of plain data (a manager's managed list, a value that came
    // from Python) writes a sequence of numbers. (A list of Data nodes is a long blob's chunks.)
    auto l = v.getList();
    std::vector<E> out;
    out.reserve(l.size());
    for (auto e : l) out.push_back(Codec<E>::decode(e));
    return out;
  }
  const Blob blob = read_blob(v, false, type);
  if constexpr (std::is_same_v<E, std::byte>) {
    if (donors.buffers) {
      if (auto donated = take_donated(blob)) return std::move(*donated);
    }
  }
  if (blob.size % sizeof(E) != 0)
    malformed(std::string(type) + ": " + std::to_string(blob.size) +
              " bytes is not a whole number of " + std::to_string(sizeof(E)) + "-byte elements");
  std::vector<E> out(blob.size / sizeof(E));
  blob.copy_to(out.data());
  swap_bytes_if_big_endian(out.data(), out.size());
  return out;
}

template <class T>
concept CapnpReaderOrBuilder = (requires { typename T::Reads; } &&
                                capnp::kind<typename T::Reads>() == capnp::Kind::STRUCT) ||
                               (requires { typename T::Builds; } &&
                                capnp::kind<typename T::Builds>() == capnp::Kind::STRUCT);

template <class T>
concept Described = boost::describe::has_describe_members<T>::value;

template <class T>
concept PlainAggregate = std::is_class_v<T> && std::is_aggregate_v<T> && !std::is_union_v<T> &&
                         !Described<T> && !CapnpReaderOrBuilder<T>;

// Arithmetic, enums, aggregates and described classes; everything else is a compile error.
template <class T>
struct Default {
  static constexpr bool troupe_no_codec = true;
  template <class U = T>
  static std::string signature() {
    static_assert(always_false<U>,
                  "troupe::Codec<T>: this type has no codec, so it cannot be sent between "
                  "processes. Make it a plain aggregate (public fields, no constructors), describe "
                  "it with BOOST_DESCRIBE_STRUCT, or specialise troupe::Codec<T> (see "
                  "doc/codec.md; troupe::CodecVia is the short way).");
    return {};
  }
  template <class U = T>
  static void encode(const U&, proto::Value::Builder) {
    signature<U>();
  }
  template <class U = T>
  static U decode(proto::Value::Reader) {
    signature<U>();
    return U{};
  }
};

template <class T>
requires std::is_same_v<T, bool>
struct Default<T> {
  static std::string signature() { return "bool"; }
  static void encode(bool x, proto::Value::Builder v) { v.setBool(x); }
  static bool decode(proto::Value::Reader v) {
    expect(v, Which::BOOL, "bool");
    return v.getBool();
  }
};

std::string int_signature(bool is_signed, std::size_t bytes, bool is_char);
[[noreturn]] void int_out_of_range(std::string_view type, std::string_view value);

template <class T>
requires(std::is_integral_v<T> && !std::is_same_v<T, bool>) struct Default<T> {
  static std::string signature() {
    return int_signature(std::is_signed_v<T>, sizeof(T), std::is_same_v<T, char>);
  }
  static void encode(T x, proto::Value::Builder v) {
    if constexpr (std::is_signed_v<T>) {
      v.setInt(x);
    } else {
      v.setUint(x);
    }
  }
  // An integer of either width that fits (Python has one int: a Python caller's 3 arrives as
  // an int node whatever the C++ parameter's signedness), or a bool (Python's bool is an int:
  // True is 1).
  static T decode(proto::Value::Reader v) {
    // std::in_range takes no char: its signed or unsigned twin.
    using S =
        std::conditional_t<std::is_signed_v<T>, std::make_signed_t<T>, std::make_unsigned_t<T>>;
    if (v.which() == Which::BOOL) return static_cast<T>(v.getBool() ? 1 : 0);
    if (v.which() == Which::INT) {
      const std::int64_t x = v.getInt();
      if (!std::in_range<S>(x)) int_out_of_range(signature(), std::to_string(x));
      return static_cast<T>(x);
    }
    expect(v, Which::UINT, signature_of<Default>());
    const std::uint64_t x = v.getUint();
    if (!std::in_range<S>(x)) int_out_of_range(signature(), std::to_string(x));
    return static_cast<T>(x);
  }
};

template <class T>
requires(std::is_same_v<T, float> || std::is_same_v<T, double>) struct Default<T> {
  static std::string signature() { return sizeof(T) == 4 ? "f32" : "f64"; }
  static void encode(T x, proto::Value::Builder v) { v.setFloat(static_cast<double>(x)); }
  // An integer or a bool too, as Python's float(int) (rounded to the nearest double beyond
  // 2**53).
  static T decode(proto::Value::Reader v) {
    if (v.which() == Which::BOOL) return static_cast<T>(v.getBool() ? 1 : 0);
    if (v.which() == Which::INT) return static_cast<T>(v.getInt());
    if (v.which() == Which::UINT) return static_cast<T>(v.getUint());
    expect(v, Which::FLOAT, signature_of<Default>());
    return static_cast<T>(v.getFloat());
  }
};

template <class T>
requires std::is_enum_v<T>
struct Default<T> {
  using U = std::underlying_type_t<T>;
  static std::string signature() {
    if constexpr (std::is_same_v<T, std::byte>) {
      return "byte";
    } else {
      return "enum " + class_name<T>() + ":" + Default<U>::signature();
    }
  }
  static void encode(T x, proto::Value::Builder v) { Default<U>::encode(static_cast<U>(x), v); }
  static T decode(proto::Value::Reader v) { return static_cast<T>(Default<U>::decode(v)); }
};

/// Guards the signature of a recursive type (struct Node { std::vector<Node> kids; }): the inner
/// mention is the name alone.
template <class T>
struct SignatureGuard {
  static inline thread_local bool busy = false;
};

template <class T, class Fields>
std::string struct_signature(Fields&& each_field_signature) {
  if (SignatureGuard<T>::busy) return "struct " + class_name<T>();
  SignatureGuard<T>::busy = true;
  std::string s = "struct " + class_name<T>() + "{";
  try {
    s += each_field_signature();
  } catch (...) {
    SignatureGuard<T>::busy = false;
    throw;
  }
  SignatureGuard<T>::busy = false;
  return s + "}";
}

template <class T>
requires PlainAggregate<T>
struct Default<T> {
  static constexpr std::size_t N = boost::pfr::tuple_size_v<T>;
  static std::string signature() {
    return struct_signature<T>([] {
      std::string s;
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        ((s += (I ? "," : "") + Codec<boost::pfr::tuple_element_t<I, T>>::signature()), ...);
      }
      (std::make_index_sequence<N>{});
      return s;
    });
  }
  static void encode(const T& x, proto::Value::Builder v) {
    auto l = v.initList(N);
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (Codec<boost::pfr::tuple_element_t<I, T>>::encode(boost::pfr::get<I>(x), l[I]), ...);
    }
    (std::make_index_sequence<N>{});
  }
  static T decode(proto::Value::Reader v) {
    expect(v, Which::LIST, class_name<T>());
    auto l = v.getList();
    expect_size(l.size(), N, class_name<T>());
    T out{};
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((boost::pfr::get<I>(out) = Codec<boost::pfr::tuple_element_t<I, T>>::decode(l[I])), ...);
    }
    (std::make_index_sequence<N>{});
    return out;
  }
};

template <class T>
requires Described<T>
struct Default<T> {
  using Members = boost::describe::describe_members<T, boost::describe::mod_any_access |
                                                           boost::describe::mod_inherited>;
  static constexpr std::size_t N = boost::mp11::mp_size<Members>::value;
  template <class D>
  using Field = std::remove_cvref_t<decltype(std::declval<T&>().*D::pointer)>;

  static std::string signature() {
    return struct_signature<T>([] {
      std::string s;
      bool first = true;
      boost::mp11::mp_for_each<Members>([&](auto D) {
        s += (first ? "" : ",") + Codec<Field<decltype(D)>>::signature();
        first = false;
      });
      return s;
    });
  }
  static void encode(const T& x, proto::Value::Builder v) {
    auto l = v.initList(N);
    unsigned i = 0;
    boost::mp11::mp_for_each<Members>(
        [&](auto D) { Codec<Field<decltype(D)>>::encode(x.*D.pointer, l[i++]); });
  }
  static T decode(proto::Value::Reader v) {
    expect(v, Which::LIST, class_name<T>());
    auto l = v.getList();
    expect_size(l.size(), N, class_name<T>());
    T out{};
    unsigned i = 0;
    boost::mp11::mp_for_each<Members>(
        [&](auto D) { out.*D.pointer = Codec<Field<decltype(D)>>::decode(l[i++]); });
    return out;
  }
};

// Sequences: packed elements as one Data blob, others as a list.
template <class C, class E>
struct Sequence {
  static std::string signature() { return "list<" + Codec<E>::signature() + ">"; }
  static void encode(const C& c, proto::Value::Builder v) {
    if constexpr (packed<E> && std::is_same_v<C, std::vector<E, typename C::allocator_type>>) {
      put_packed(v, c.data(), c.size());
    } else if constexpr (packed<E>) {
      std::vector<E> flat(c.begin(), c.end());
      swap_bytes_if_big_endian(flat.data(), flat.size());
      put_blob(v, flat.data(), flat.size() * sizeof(E), false, false);  // `flat` dies here
    } else {
      auto l = v.initList(list_size(c.size(), 1, signature_of<Sequence>()));
      unsigned i = 0;
      for (const auto& e : c) Codec<E>::encode(e, l[i++]);
    }
  }
  static C decode(proto::Value::Reader v) {
    C out;
    if constexpr (packed<E>) {
      auto flat = read_packed<E>(v, signature_of<Sequence>());
      if constexpr (std::is_same_v<C, std::vector<E>>) {
        out = std::move(flat);
      } else {
        out.assign(flat.begin(), flat.end());
      }
    } else {
      expect(v, Which::LIST, signature_of<Sequence>());
      auto l = v.getList();
      // A list of empty elements costs little on the wire: reserve only modest sizes.
      if constexpr (requires { out.reserve(l.size()); }) {
        if (l.size() <= 4096) out.reserve(l.size());
      }
      for (auto e : l) out.push_back(Codec<E>::decode(e));
    }
    return out;
  }
};

// Sets and maps: a list of elements, or of key, value, key, value…
template <class C, class... KV>
struct Associative {
  static constexpr bool is_map = sizeof...(KV) == 2;
  static std::string signature() {
    std::string s = is_map ? "map<" : "set<";
    bool first = true;
    ((s += (first ? "" : ",") + Codec<KV>::signature(), first = false), ...);
    return s + ">";
  }
  static void encode(const C& c, proto::Value::Builder v) {
    auto l = v.initList(list_size(c.size(), sizeof...(KV), signature_of<Associative>()));
    unsigned i = 0;
    for (const auto& e : c) {
      if constexpr (is_map) {
        Codec<std::tuple_element_t<0, std::tuple<KV...>>>::encode(e.first, l[i++]);
        Codec<std::tuple_element_t<1, std::tuple<KV...>>>::encode(e.second, l[i++]);
      } else {
        Codec<KV...>::encode(e, l[i++]);
      }
    }
  }
  static C decode(proto::Value::Reader v) {
    expect(v, Which::LIST, signature_of<Associative>());
    auto l = v.getList();
    if (l.size() % sizeof...(KV) != 0) malformed(signature() + ": odd number of map entries");
    C out;
    for (unsigned i = 0; i < l.size(); i += sizeof...(KV)) {
      if constexpr (is_map) {
        using K = std::tuple_element_t<0, std::tuple<KV...>>;
        using V = std::tuple_element_t<1, std::tuple<KV...>>;
        K k = Codec<K>::decode(l[i]);
        out.insert_or_assign(std::move(k), Codec<V>::decode(l[i + 1]));
      } else {
        out.insert(Codec<KV...>::decode(l[i]));
      }
    }
    return out;
  }
};

// Tuples and pairs: a list with one element per member; both spell "tuple<…>", so a pair and a
// two-element tuple are the same type on the wire.
template <class T, class... E>
struct Product {
  static std::string signature() {
    std::string s = "tuple<";
    bool first = true;
    ((s += (first ? "" : ",") + Codec<E>::signature(), first = false), ...);
    return s + ">";
  }
  static void encode(const T& t, proto::Value::Builder v) {
    auto l = v.initList(sizeof...(E));
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (Codec<E>::encode(std::get<I>(t), l[I]), ...);
    }
    (std::index_sequence_for<E...>{});
  }
  static T decode(proto::Value::Reader v) {
    expect(v, Which::LIST, signature_of<Product>());
    auto l = v.getList();
    expect_size(l.size(), sizeof...(E), signature_of<Product>());
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return T{Codec<E>::decode(l[I])...};
    }
    (std::index_sequence_for<E...>{});
  }
};

std::string ratio_signature(std::intmax_t num, std::intmax_t den);

}  // namespace codec_detail

}  // namespace troupe
