// troupe/multiprocessing/managers/detail/methods.hpp — the machinery behind TROUPE_EXPOSE and
// registered C++ classes (registry.hpp): a class's exposed method table, the argument
// fingerprints that proxies and the host compare, and HostedClass<T>, which hosts one object of a
// registered class. Not API: include troupe/multiprocessing/managers.hpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/hosted.hpp"

namespace troupe::multiprocessing::managers {
class Registry;
}

namespace troupe::multiprocessing::managers::detail {

/// What a member function pointer says about its method.
template <class M>
struct MethodTraits;
#define TROUPE_METHOD_TRAITS_(CV, NOEXCEPT)               \
  template <class R, class C, class... P>                 \
  struct MethodTraits<R (C::*)(P...) CV NOEXCEPT> {       \
    using Class = C;                                      \
    using Result = R;                                     \
    using Params = std::tuple<std::remove_cvref_t<P>...>; \
    static constexpr std::size_t arity = sizeof...(P);    \
  };
TROUPE_METHOD_TRAITS_(, )
TROUPE_METHOD_TRAITS_(const, )
TROUPE_METHOD_TRAITS_(, noexcept)
TROUPE_METHOD_TRAITS_(const, noexcept)
#undef TROUPE_METHOD_TRAITS_

/// What a callable (a factory) says about its parameters and result.
template <class F>
struct CallableTraits : CallableTraits<decltype(&F::operator())> {};
template <class R, class... P>
struct CallableTraits<R (*)(P...)> {
  using Result = R;
  using Params = std::tuple<std::remove_cvref_t<P>...>;
  static constexpr std::size_t arity = sizeof...(P);
};
template <class R, class... P>
struct CallableTraits<R (*)(P...) noexcept> : CallableTraits<R (*)(P...)> {};
template <class R, class C, class... P>
struct CallableTraits<R (C::*)(P...) const> : CallableTraits<R (*)(P...)> {};
template <class R, class C, class... P>
struct CallableTraits<R (C::*)(P...)> : CallableTraits<R (*)(P...)> {};
template <class R, class C, class... P>
struct CallableTraits<R (C::*)(P...) const noexcept> : CallableTraits<R (*)(P...)> {};
template <class R, class C, class... P>
struct CallableTraits<R (C::*)(P...) noexcept> : CallableTraits<R (*)(P...)> {};

/// "(i32,str)": the signature of an argument list, whose FNV-1a fingerprint a typed call sends.
template <class Params>
struct ParamsSignature;
template <class... P>
struct ParamsSignature<std::tuple<P...>> {
  static std::string get() {
    std::string s = "(";
    bool first = true;
    ((s += (first ? "" : ",") + Codec<P>::signature(), first = false), ...);
    return s + ")";
  }
};
template <class Params>
std::uint64_t params_fingerprint() {
  static const std::uint64_t f = codec_detail::fnv1a(ParamsSignature<Params>::get());
  return f;
}
template <class Params>
const std::string& params_signature() {
  static const std::string s = ParamsSignature<Params>::get();
  return s;
}

/// The signature of a result type ("none" for void).
template <class R>
std::string result_signature() {
  if constexpr (std::is_void_v<R>) {
    return "none";
  } else if constexpr (Encodable<std::remove_cvref_t<R>>) {
    return Codec<std::remove_cvref_t<R>>::signature();
  } else {
    return codec_detail::class_name<std::remove_cvref_t<R>>();
  }
}

template <auto M>
struct MethodTag {};

/// The exposed methods of `Class` (TROUPE_EXPOSE): their pointers, and their names as written.
template <class Class, auto... M>
struct Exposed {
  using type = Class;
  static constexpr std::size_t size = sizeof...(M);
  /// The index of method pointer `P` in the list, or size.
  template <auto P>
  static constexpr std::size_t index_of() {
    std::size_t i = 0, found = size;
    ((std::is_same_v<MethodTag<P>, MethodTag<M>> ? (found = i, ++i) : ++i), ...);
    return found;
  }
  const char* names;  // "add, mul"
};

/// The names of a TROUPE_EXPOSE list, split ("add, mul" → {"add", "mul"}).
std::vector<std::string> split_names(std::string_view names);

template <class T>
concept HasExposed = requires(const T* p) {
  troupe_exposed_methods(p);
};

template <class T>
using ExposedOf = decltype(troupe_exposed_methods(static_cast<const T*>(nullptr)));

/// The method names of T's TROUPE_EXPOSE list, in order.
template <class T>
const std::vector<std::string>& exposed_names() {
  static const std::vector<std::string> names =
      split_names(troupe_exposed_methods(static_cast<const T*>(nullptr)).names);
  return names;
}

template <class T, auto M>
const std::string& method_name() {
  constexpr std::size_t i = ExposedOf<T>::template index_of<M>();
  static_assert(i < ExposedOf<T>::size,
                "troupe managers: this method is not in the class's TROUPE_EXPOSE list");
  return exposed_names<T>()[i];
}

/// The fingerprint of T's method table (names, argument and result types), proto Ref's
/// fingerprint: a typed proxy and the host compare it.
template <class T>
std::uint64_t table_fingerprint() {
  static const std::uint64_t f = [] {
    std::string s;
    std::size_t i = 0;
    [&]<class C, auto... M>(Exposed<C, M...>*) {
      ((s += exposed_names<T>()[i++] +
             params_signature<typename MethodTraits<decltype(M)>::Params>() + "->" +
             result_signature<typename MethodTraits<decltype(M)>::Result>() + ";"),
       ...);
    }
    (static_cast<ExposedOf<T>*>(nullptr));
    return codec_detail::fnv1a(s);
  }();
  return f;
}

// ---- the texts of refused calls (the object, its typeid and C++ type, the method) -----------

/// "object 3 (typeid 'Maths', a app::Maths)".
std::string describe_object(const CallInfo& call, std::string_view cxx_type);
/// The kinds of the received arguments, "(int, text)", for a signature mismatch.
std::string argument_kinds(capnp::List<proto::Value>::Reader args);
/// AttributeError: no method `call.method` (or it is not exposed).
[[noreturn]] void unknown_method(const CallInfo& call, std::string_view cxx_type,
                                 const std::vector<std::string>& exposed);
/// TypeError: `want` arguments expected, args.size() given.
[[noreturn]] void bad_arity(const CallInfo& call, std::string_view cxx_type, std::size_t want);
/// A fallback (`__repr__`, `__str__`, `#GETVALUE`) takes no arguments: with some, RemoteError
/// naming that TypeError, as CPython's server fails it outside the method ('#TRACEBACK').
void no_fallback_arguments(const CallInfo& call, std::string_view cxx_type);
/// TypeError: the typed caller's argument types are not the method's.
[[noreturn]] void bad_signature(const CallInfo& call, std::string_view cxx_type,
                                std::string_view want);
/// TypeError: argument `index` could not be decoded as the parameter's type (`why`).
[[noreturn]] void bad_argument(const CallInfo& call, std::string_view cxx_type, std::size_t index,
                               std::string_view want, std::string_view why);

/// Decodes `call.args` as `Params` after checking the count and (for a typed call) the
/// fingerprint; errors name the object and method.
template <class Params>
Params decode_args(const CallInfo& call, std::string_view cxx_type) {
  constexpr std::size_t N = std::tuple_size_v<Params>;
  if (!call.args_error.empty()) throw TypeError(std::string(call.args_error));
  if (call.args.size() != N) bad_arity(call, cxx_type, N);
  if (call.args_fingerprint != 0 && call.args_fingerprint != params_fingerprint<Params>())
    bad_signature(call, cxx_type, params_signature<Params>());
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    auto one = [&]<std::size_t J>(std::integral_constant<std::size_t, J>) {
      using P = std::tuple_element_t<J, Params>;
      try {
        return codec_detail::guarded([&] { return Codec<P>::decode(call.args[J]); });
      } catch (const std::exception& e) {
        bad_argument(call, cxx_type, J, Codec<P>::signature(), e.what());
      }
    };
    (void)one;
    return Params{one(std::integral_constant<std::size_t, I>{})...};
  }
  (std::make_index_sequence<N>{});
}

/// Hosts the object a method_to_typeid method returned, as registered typeid `typeid_`.
/// @throws TypeError if the typeid is unknown, has another C++ type or cannot adopt objects.
std::shared_ptr<HostedObject> adopt_result(const Registry& registry, std::string_view typeid_,
                                           std::type_index type, std::string_view type_name,
                                           std::shared_ptr<void> object);

template <class R>
struct SharedPointee {
  using type = void;
};
template <class U>
struct SharedPointee<std::shared_ptr<U>> {
  using type = U;
};

template <class V>
inline constexpr bool is_optional_v = false;
template <class V>
inline constexpr bool is_optional_v<std::optional<V>> = true;

/// Hosts one object of a registered C++ class.
template <class T>
class HostedClass final : public HostedObject {
public:
  HostedClass(std::shared_ptr<T> object, const Registry* registry)
      : object_(std::move(object)), registry_(registry) {}

  std::vector<std::string> exposed() const override { return exposed_names<T>(); }
  std::string repr() const override {
    char at[32];
    std::snprintf(at, sizeof at, "%p", static_cast<const void*>(object_.get()));
    return "<" + codec_detail::class_name<T>() + " object at " + at + ">";
  }
  const void* identity() const noexcept override { return object_.get(); }
  bool tracks_connections() const noexcept override { return false; }
  const std::shared_ptr<T>& object() const noexcept { return object_; }

  void call(const CallInfo& call, CompletionPtr done) override {
    if (call.method == "#GETVALUE") {
      if constexpr (Encodable<T>) {
        no_fallback_arguments(call, codec_detail::class_name<T>());
        return done->complete(*object_);
      } else {
        // CPython's '#UNSERIALIZABLE': a RemoteError on the caller.
        throw RemoteError(
            "Unserializable message: TypeError: _getvalue(): " + codec_detail::class_name<T>() +
            " has no troupe::Codec, so its value cannot be sent (" +
            describe_object(call, codec_detail::class_name<T>()) + ")");
      }
    }
    const auto& names = exposed_names<T>();
    auto index = [&](std::string_view name) {
      std::size_t i = 0;
      while (i < names.size() && names[i] != name) ++i;
      return i;
    };
    std::size_t i = index(call.method);
    Step step = Step::none;
    if (i == names.size() && (call.method == "#NEXT" || call.method == "__next__")) {
      // An iterator's step (IteratorProxy): the class's __next__ or next.
      step = call.method == "#NEXT" ? Step::optional : Step::stop_iteration;
      // The one the registration exposes (the server checked that one of them is).
      auto allowed = [&](std::string_view m) { return !entry_ || lists(*entry_, m); };
      i = step == Step::optional && allowed("__next__") ? index("__next__") : names.size();
      if (i == names.size()) i = index("next");
    }
    if (i == names.size()) unknown_method(call, codec_detail::class_name<T>(), names);
    dispatch(i, call, done, step, static_cast<ExposedOf<T>*>(nullptr));
  }

private:
  // How a method answers an iterator's step: as itself (none); as IteratorProxy's `#NEXT`, a
  // value or none at the end (the method's std::optional as it is, a value wrapped, its
  // StopIteration none); as Python's `__next__` for a method `next` (its none is StopIteration).
  enum class Step : std::uint8_t { none, optional, stop_iteration };

  template <class C, auto... M>
  void dispatch(std::size_t i, const CallInfo& call, const CompletionPtr& done, Step step,
                Exposed<C, M...>*) {
    std::size_t j = 0;
    ((j++ == i ? invoke<M>(call, done, step) : void()), ...);
  }

  template <auto M>
  void invoke(const CallInfo& call, const CompletionPtr& done, Step step) {
    using Tr = MethodTraits<decltype(M)>;
    using R = typename Tr::Result;
    auto args = decode_args<typename Tr::Params>(call, codec_detail::class_name<T>());
    auto run = [&]() -> decltype(auto) {
      return std::apply([&](auto&... a) -> decltype(auto) { return ((*object_).*M)(a...); }, args);
    };
    const std::string* to_typeid = nullptr;
    if (entry_ != nullptr) {
      auto it = entry_->method_to_typeid.find(call.method);
      if (it != entry_->method_to_typeid.end()) to_typeid = &it->second;
    }
    if constexpr (std::is_void_v<R>) {
      run();
      done->done();
    } else {
      using V = std::remove_cvref_t<R>;
      if constexpr (Encodable<V>) {
        if (step == Step::optional) {
          try {
            decltype(auto) r = run();
            if constexpr (is_optional_v<V>)
              done->complete(static_cast<const V&>(r));
            else
              done->complete(std::optional<V>(r));
          } catch (const troupe::StopIteration&) {
            done->complete(std::optional<std::monostate>());
          }
          return;
        }
        if constexpr (is_optional_v<V>) {
          if (step == Step::stop_iteration) {
            decltype(auto) r = run();
            if (!r) throw troupe::StopIteration();
            return done->complete(*r);
          }
        }
      }
      if (to_typeid != nullptr) {
        using U = typename SharedPointee<V>::type;
        std::shared_ptr<void> obj;
        std::type_index type = typeid(void);
        std::string type_name;
        if constexpr (!std::is_void_v<U>) {
          obj = std::shared_ptr<U>(run());
          type = typeid(U);
          type_name = codec_detail::class_name<U>();
        } else if constexpr (std::is_class_v<V> && std::is_move_constructible_v<V>) {
          obj = std::make_shared<V>(run());
          type = typeid(V);
          type_name = codec_detail::class_name<V>();
        } else {
          throw TypeError("method_to_typeid maps " + std::string(call.typeid_) + "." +
                          std::string(call.method) + " to '" + *to_typeid + "', but it returns " +
                          result_signature<R>() + ", which cannot be a hosted object");
        }
        return done->new_object(*to_typeid,
                                adopt_result(*registry_, *to_typeid, type, type_name, obj));
      }
      if constexpr (Encodable<V>) {
        decltype(auto) r = run();
        done->complete(static_cast<const V&>(r));
      } else {
        throw TypeError(std::string(call.typeid_) + "." + std::string(call.method) + " returns a " +
                        codec_detail::class_name<V>() +
                        ", which has no troupe::Codec: list the method in method_to_typeid to "
                        "return a proxy to it instead");
      }
    }
  }

public:
  /// The typeid's registration (its method_to_typeid), set by the registry's factory.
  std::shared_ptr<const TypeEntry> entry_;

private:
  std::shared_ptr<T> object_;
  const Registry* registry_;
};

}  // namespace troupe::multiprocessing::managers::detail
