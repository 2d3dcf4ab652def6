// troupe/codec.hpp — C++ values to and from Cap'n Proto (proto/value.capnp): the answer to
// Python's pickle for everything that crosses a process boundary, without the code execution.
//
// `troupe::Codec<T>` has three static members:
//
//   static std::string signature();                         // e.g. "list<i32>"
//   static void encode(const T&, troupe::proto::Value::Builder);
//   static T decode(troupe::proto::Value::Reader);           // throws ValueError if malformed
//
// troupe provides them for bool, integers, floating point, enums, std::byte, std::string, bytes
// and numeric arrays (packed, without per-element work), std::vector / deque / list / array,
// std::map / unordered_map, std::set / unordered_set, std::optional, std::variant,
// std::monostate, std::tuple / pair, std::chrono durations and time points, plain aggregates
// (Boost.PFR, no boilerplate), classes described with BOOST_DESCRIBE_STRUCT / _CLASS, Cap'n Proto
// structs as themselves (`troupe::Message<S>`), and any nesting of these. Add your own by
// specialising `troupe::Codec<YourType>`, most simply through `troupe::CodecVia` (doc/codec.md).
//
// A type with no codec is a compile error that says so. Every message carries the fingerprint of
// its type's signature; decoding into a different type is a TypeError naming both.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/exception.h>

#include "troupe/detail/codec.hpp"

#include "value.capnp.h"

namespace troupe {

/// The codec of `T`. Specialise it for your own types (doc/codec.md).
template <class T>
struct Codec : codec_detail::Default<T> {};

/// Whether `T` can be sent: it (and everything inside it) has a codec.
template <class T>
concept Encodable = !requires {
  Codec<T>::troupe_no_codec;
};

/// The short way to give a type a codec: map it to and from a type that has one.
///   template <> struct troupe::Codec<Celsius> : troupe::CodecVia<Celsius, double> {
///     static double to(const Celsius& c) { return c.value; }
///     static Celsius from(double d) { return Celsius{d}; }
///   };
/// The signature is "NAME=SIGNATURE-OF-VIA", so two types with the same representation still
/// differ on the wire.
template <class T, class Via>
struct CodecVia {
  static std::string signature() {
    return codec_detail::class_name<T>() + "=" + Codec<Via>::signature();
  }
  static void encode(const T& x, proto::Value::Builder v) {
    Codec<Via>::encode(Codec<T>::to(x), v);
  }
  static T decode(proto::Value::Reader v) { return Codec<T>::from(Codec<Via>::decode(v)); }
};

template <>
struct Codec<std::string> {
  static std::string signature() { return "str"; }
  static void encode(const std::string& s, proto::Value::Builder v) {
    codec_detail::put_blob(v, s.data(), s.size(), true, false);
  }
  static std::string decode(proto::Value::Reader v) {
    const auto blob = codec_detail::read_blob(v, true, "str");
    std::string out(blob.size, '\0');
    blob.copy_to(out.data());
    return out;
  }
};

template <>
struct Codec<std::monostate> {
  static std::string signature() { return "none"; }
  static void encode(std::monostate, proto::Value::Builder v) { v.setNone(); }
  static std::monostate decode(proto::Value::Reader v) {
    codec_detail::expect(v, codec_detail::Which::NONE, "none");
    return {};
  }
};

template <class E, class A>
struct Codec<std::vector<E, A>> : codec_detail::Sequence<std::vector<E, A>, E> {};
template <class E, class A>
struct Codec<std::deque<E, A>> : codec_detail::Sequence<std::deque<E, A>, E> {};
template <class E, class A>
struct Codec<std::list<E, A>> : codec_detail::Sequence<std::list<E, A>, E> {};

template <class E, std::size_t N>
struct Codec<std::array<E, N>> {
  static std::string signature() {
    return "array<" + Codec<E>::signature() + "," + std::to_string(N) + ">";
  }
  static void encode(const std::array<E, N>& a, proto::Value::Builder v) {
    if constexpr (codec_detail::packed<E>) {
      codec_detail::put_packed(v, a.data(), N);
    } else {
      auto l = v.initList(N);
      for (std::size_t i = 0; i < N; ++i) Codec<E>::encode(a[i], l[i]);
    }
  }
  static std::array<E, N> decode(proto::Value::Reader v) {
    std::array<E, N> out{};
    if constexpr (codec_detail::packed<E>) {
      const auto flat = codec_detail::read_packed<E>(v, codec_detail::signature_of<Codec>());
      codec_detail::expect_size(flat.size(), N, codec_detail::signature_of<Codec>());
      std::copy(flat.begin(), flat.end(), out.begin());
    } else {
      codec_detail::expect(v, codec_detail::Which::LIST, codec_detail::signature_of<Codec>());
      auto l = v.getList();
      codec_detail::expect_size(l.size(), N, codec_detail::signature_of<Codec>());
      for (std::size_t i = 0; i < N; ++i) out[i] = Codec<E>::decode(l[i]);
    }
    return out;
  }
};

template <class K, class C, class A>
struct Codec<std::set<K, C, A>> : codec_detail::Associative<std::set<K, C, A>, K> {};
template <class K, class H, class Q, class A>
struct Codec<std::unordered_set<K, H, Q, A>>
    : codec_detail::Associative<std::unordered_set<K, H, Q, A>, K> {};
template <class K, class V, class C, class A>
struct Codec<std::map<K, V, C, A>> : codec_detail::Associative<std::map<K, V, C, A>, K, V> {};
template <class K, class V, class H, class Q, class A>
struct Codec<std::unordered_map<K, V, H, Q, A>>
    : codec_detail::Associative<std::unordered_map<K, V, H, Q, A>, K, V> {};

template <class... E>
struct Codec<std::tuple<E...>> : codec_detail::Product<std::tuple<E...>, E...> {};
template <class A, class B>
struct Codec<std::pair<A, B>> : codec_detail::Product<std::pair<A, B>, A, B> {};

template <class E>
struct Codec<std::optional<E>> {
  static std::string signature() { return "optional<" + Codec<E>::signature() + ">"; }
  static void encode(const std::optional<E>& o, proto::Value::Builder v) {
    auto l = v.initList(o ? 1 : 0);
    if (o) Codec<E>::encode(*o, l[0]);
  }
  static std::optional<E> decode(proto::Value::Reader v) {
    codec_detail::expect(v, codec_detail::Which::LIST, codec_detail::signature_of<Codec>());
    auto l = v.getList();
    if (l.size() > 1) codec_detail::malformed(signature() + ": more than one value");
    if (l.size() == 0) return std::nullopt;
    return Codec<E>::decode(l[0]);
  }
};

template <class... E>
struct Codec<std::variant<E...>> {
  static std::string signature() {
    std::string s = "variant<";
    bool first = true;
    ((s += (first ? "" : ",") + Codec<E>::signature(), first = false), ...);
    return s + ">";
  }
  static void encode(const std::variant<E...>& x, proto::Value::Builder v) {
    if (x.valueless_by_exception())
      codec_detail::malformed(signature() + ": cannot send a valueless variant");
    auto a = v.initAlternative();
    a.setIndex(static_cast<std::uint32_t>(x.index()));
    std::visit([&](const auto& e) { Codec<std::decay_t<decltype(e)>>::encode(e, a.initValue()); },
               x);
  }
  static std::variant<E...> decode(proto::Value::Reader v) {
    codec_detail::expect(v, codec_detail::Which::ALTERNATIVE, codec_detail::signature_of<Codec>());
    auto a = v.getAlternative();
    const std::uint32_t i = a.getIndex();
    if (i >= sizeof...(E))
      codec_detail::malformed(signature() + ": alternative " + std::to_string(i) + " out of range");
    using Decoder = std::variant<E...> (*)(proto::Value::Reader);
    static constexpr auto decoders = []<std::size_t... I>(std::index_sequence<I...>) {
      return std::array<Decoder, sizeof...(E)>{[](proto::Value::Reader r) {
        using A = std::variant_alternative_t<I, std::variant<E...>>;
        return std::variant<E...>(std::in_place_index<I>, Codec<A>::decode(r));
      }...};
    }
    (std::index_sequence_for<E...>{});
    return decoders[i](a.getValue());
  }
};

template <class Rep, class Period>
struct Codec<std::chrono::duration<Rep, Period>> {
  using D = std::chrono::duration<Rep, Period>;
  static std::string signature() {
    return "duration<" + Codec<Rep>::signature() + "," +
           codec_detail::ratio_signature(Period::num, Period::den) + ">";
  }
  static void encode(const D& d, proto::Value::Builder v) { Codec<Rep>::encode(d.count(), v); }
  static D decode(proto::Value::Reader v) { return D(Codec<Rep>::decode(v)); }
};

template <class Clock, class Dur>
struct Codec<std::chrono::time_point<Clock, Dur>> {
  using TP = std::chrono::time_point<Clock, Dur>;
  static std::string signature() {
    return "time_point<" + codec_detail::class_name<Clock>() + "," + Codec<Dur>::signature() + ">";
  }
  static void encode(const TP& t, proto::Value::Builder v) {
    Codec<Dur>::encode(t.time_since_epoch(), v);
  }
  static TP decode(proto::Value::Reader v) { return TP(Codec<Dur>::decode(v)); }
};

/// A Cap'n Proto struct `S` travelling as itself. Holds a reader and what keeps its bytes alive:
/// a received message (no copy: Connection::recv<S>() returns one of these over the frame it
/// read) or a copy made from a reader. Cheap to copy (shared).
template <class S>
class Message {
public:
  using troupe_message_struct = S;

  /// An empty struct (every field at its default).
  Message() {
    auto b = std::make_shared<capnp::MallocMessageBuilder>();
    reader_ = b->initRoot<S>().asReader();
    owner_ = std::move(b);
  }
  /// Copies `r` into a message of its own.
  explicit Message(typename S::Reader r) {
    auto b = std::make_shared<capnp::MallocMessageBuilder>();
    b->setRoot(r);
    reader_ = b->getRoot<S>().asReader();
    owner_ = std::move(b);
  }
  /// A view of `r`, kept valid by `owner`; a null owner means the caller keeps `r` alive.
  Message(std::shared_ptr<const void> owner, typename S::Reader r)
      : owner_(std::move(owner)), reader_(r) {}

  typename S::Reader get() const { return reader_; }
  const typename S::Reader* operator->() const { return &reader_; }

private:
  std::shared_ptr<const void> owner_;
  typename S::Reader reader_;
};

namespace codec_detail {
std::string capnp_signature(std::uint64_t id, std::string_view display_name);
std::string capnp_display_name(capnp::Schema s);
}  // namespace codec_detail

template <class S>
struct Codec<Message<S>> {
  static std::string signature() {
    return codec_detail::capnp_signature(
        capnp::typeId<S>(), codec_detail::capnp_display_name(capnp::Schema::from<S>()));
  }
  static void encode(const Message<S>& m, proto::Value::Builder v) {
    v.initStruct().template setAs<S>(m.get());
  }
  static Message<S> decode(proto::Value::Reader v) {
    codec_detail::expect(v, codec_detail::Which::STRUCT, codec_detail::signature_of<Codec>());
    return Message<S>(v.getStruct().template getAs<S>());
  }
};

// ---- the envelope -----------------------------------------------------------------------------

/// What a message says about its type: the signature and its FNV-1a fingerprint.
struct TypeId {
  std::string signature;
  std::uint64_t fingerprint;
};

/// The type a value of `T` travels as: a Cap'n Proto struct S, its readers and builders travel
/// as Message<S>.
template <class T>
struct wire_type {
  using type = T;
};
template <class T>
requires codec_detail::CapnpReaderOrBuilder<T>
struct wire_type<T> {
  using type = Message<capnp::FromAny<T>>;
};
template <class T>
requires requires {
  typename T::_capnpPrivate::IsStruct;
}
struct wire_type<T> {
  using type = Message<T>;
};
template <class T>
using wire_type_t = typename wire_type<std::remove_cvref_t<T>>::type;

/// `T`'s signature and fingerprint, computed once.
template <class T>
const TypeId& type_id() {
  static const TypeId id = [] {
    std::string s = Codec<T>::signature();
    const std::uint64_t f = codec_detail::fnv1a(s);
    return TypeId{std::move(s), f};
  }();
  return id;
}

namespace codec_detail {
/// Throws TypeError: a message of type `got` where `want` was expected.
[[noreturn]] void wrong_type(std::string_view want, std::string_view got);
/// Runs `f`, turning Cap'n Proto's exceptions about a malformed message into ValueError.
template <class F>
decltype(auto) guarded(F&& f);
void check_envelope(proto::Envelope::Reader env, const TypeId& want);
[[noreturn]] void malformed_kj(const kj::Exception& e);
[[noreturn]] void cannot_encode_kj(const kj::Exception& e);
/// Runs `f`, turning Cap'n Proto's exceptions while building a message into ValueError.
template <class F>
void encode_guarded(F&& f) {
  try {
    f();
  } catch (const kj::Exception& e) {
    cannot_encode_kj(e);
  }
}
}  // namespace codec_detail

template <class F>
decltype(auto) codec_detail::guarded(F&& f) {
  try {
    return f();
  } catch (const kj::Exception& e) {
    malformed_kj(e);
  }
}

template <class W, class T>
void encode_envelope(const T& x, capnp::MessageBuilder& mb, const TypeId& id);

/// Fills `mb` with the envelope of `x`. Large packed arrays inside `x` are referenced, not
/// copied: `x` must outlive `mb`.
template <class T>
void encode(const T& x, capnp::MessageBuilder& mb) {
  using W = wire_type_t<T>;
  static_assert(Encodable<W>,
                "troupe::encode / send: this type has no troupe::Codec (see doc/codec.md)");
  const TypeId& id = type_id<W>();
  codec_detail::encode_guarded([&] { encode_envelope<W>(x, mb, id); });
}

template <class W, class T>
void encode_envelope(const T& x, capnp::MessageBuilder& mb, const TypeId& id) {
  auto env = mb.initRoot<proto::Envelope>();
  env.setFingerprint(id.fingerprint);
  env.setTypeName(id.signature);
  if constexpr (std::is_same_v<W, std::remove_cvref_t<T>>) {
    Codec<W>::encode(x, env.initBody());
  } else {
    if constexpr (requires { x.asReader(); }) {
      Codec<W>::encode(W(nullptr, x.asReader()), env.initBody());
    } else {
      Codec<W>::encode(W(nullptr, x), env.initBody());
    }
  }
}

/// Decodes the envelope at the root of `reader` as a `T`. `owner` (if any) keeps the reader's
/// bytes alive, so a top-level Message<S> is a view, not a copy.
/// @throws TypeError if the message holds another type; ValueError if it is malformed.
template <class T>
T decode(capnp::MessageReader& reader, std::shared_ptr<const void> owner = nullptr) {
  static_assert(Encodable<T>,
                "troupe::decode / recv: this type has no troupe::Codec (see doc/codec.md)");
  return codec_detail::guarded([&]() -> T {
    auto env = reader.getRoot<proto::Envelope>();
    codec_detail::check_envelope(env, type_id<T>());
    if constexpr (requires { typename T::troupe_message_struct; }) {
      return T(std::move(owner),
               env.getBody().getStruct().template getAs<typename T::troupe_message_struct>());
    } else {
      return Codec<T>::decode(env.getBody());
    }
  });
}

/// Reader options for untrusted bytes: a traversal limit proportional to the message (so no
/// amplification) and a nesting limit.
capnp::ReaderOptions reader_options(std::size_t message_words);

namespace codec_detail {
/// A zeroed first segment for message builders on this thread, reused from message to message
/// (DESIGN.md: reuse builders on hot paths; MallocMessageBuilder zeroes what it used when it is
/// destroyed); a small zeroed segment of its own if this thread is already using it (a codec
/// that encodes inside an encode) or is exiting and its scratch has gone.
class ScratchSegment {
public:
  ScratchSegment();
  ~ScratchSegment();
  ScratchSegment(const ScratchSegment&) = delete;
  ScratchSegment& operator=(const ScratchSegment&) = delete;
  kj::ArrayPtr<capnp::word> get() const noexcept { return words_; }

private:
  kj::ArrayPtr<capnp::word> words_;
};
/// The message's segments flattened into `out` (its size is the message's).
void flatten(capnp::MessageBuilder& mb, std::vector<std::byte>& out);
}  // namespace codec_detail

/// The whole serialised message (segment table and segments) of `x`, as bytes.
template <class T>
std::vector<std::byte> to_bytes(const T& x) {
  codec_detail::ScratchSegment scratch;
  capnp::MallocMessageBuilder mb(scratch.get());
  encode(x, mb);
  std::vector<std::byte> out;
  codec_detail::flatten(mb, out);
  return out;
}

/// Decodes bytes made by to_bytes (or received from anyone: every read is bounded).
/// @throws TypeError, ValueError as decode().
template <class T>
T from_bytes(std::span<const std::byte> bytes) {
  if (bytes.size() % sizeof(capnp::word) != 0)
    codec_detail::malformed(std::to_string(bytes.size()) +
                            " bytes is not a whole number of 8-byte words");
  // Read in place when the bytes are word-aligned (a vector's storage is), else from a copy.
  kj::Array<capnp::word> copy;
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(capnp::word) == 0) {
    words = kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(bytes.data()),
                                            bytes.size() / sizeof(capnp::word));
  } else {
    copy = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    if (!bytes.empty()) std::memcpy(copy.begin(), bytes.data(), bytes.size());
    words = copy.asPtr();
  }
  return codec_detail::guarded([&]() -> T {
    capnp::FlatArrayMessageReader reader(words, reader_options(words.size()));
    if (reader.getEnd() != words.end()) codec_detail::malformed("trailing bytes after the message");
    if constexpr (requires { typename T::troupe_message_struct; }) {
      return T(decode<T>(reader).get());  // a copy: `words` dies here
    } else {
      return decode<T>(reader);
    }
  });
}

}  // namespace troupe
