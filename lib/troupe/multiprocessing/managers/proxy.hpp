// troupe/multiprocessing/managers/proxy.hpp — Python's `multiprocessing.managers.BaseProxy` and
// `Token`, and Proxy<T>: a proxy whose calls are checked at compile time against the registered
// class's methods (TROUPE_EXPOSE).
//
//   mp::managers::Proxy<Maths> p = manager.create<Maths>("Maths");
//   int s = p.call<&Maths::add>(1, 2);           // checked: add takes (int, int), returns int
//   int t = p._callmethod<int>("add", 1, 2);     // Python's form: checked by the server
//   p.async_call<&Maths::add>(1, 2, [](std::exception_ptr e, int r) { … });
//
// A proxy is a value: copies share one reference to the object; the object lives while any proxy
// to it lives in any process (or a parked reference is in transit, or another managed object
// holds it). A proxy travels (troupe::Codec<BaseProxy>, Codec<Proxy<T>>): through a Connection,
// a process Queue, a Pool task's argument, or inside a managed object. A received proxy connects
// to the server with this process's link to that address if it has one, else it connects
// authenticating with current_process().authkey() — the authkey a process inherits from the one
// that made it, which is the manager's key when the manager was started with the default key
// (doc/multiprocessing/managers.md, "Proxies that travel").
#pragma once

#include <concepts>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include "troupe/codec.hpp"
#include "troupe/detail/async.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/detail/link.hpp"
#include "troupe/multiprocessing/managers/detail/methods.hpp"

namespace troupe::multiprocessing::managers {

namespace detail {
/// What an argument travels as: text (a string literal, a const char*, a string_view) as
/// std::string; a Cap'n Proto reader or builder as its struct's Message; else itself.
template <class A>
struct WireArg {
  using type = wire_type_t<A>;
};
template <class A>
requires(std::is_convertible_v<const A&, std::string_view> &&
         !std::is_same_v<std::remove_cvref_t<A>, std::string>) struct WireArg<A> {
  using type = std::string;
};
template <class A>
using wire_arg_t = typename WireArg<std::remove_cvref_t<A>>::type;

template <class A>
decltype(auto) wire_arg(const A& a) {
  using W = wire_arg_t<A>;
  if constexpr (std::is_same_v<W, std::remove_cvref_t<A>>) {
    return (a);
  } else if constexpr (std::is_same_v<W, std::string>) {
    return std::string(std::string_view(a));
  } else if constexpr (requires { a.asReader(); }) {
    return W(nullptr, a.asReader());
  } else {
    return W(nullptr, a);
  }
}
}  // namespace detail

/// Python: `multiprocessing.managers.Token(typeid, address, id)`: what identifies a managed
/// object.
struct Token {
  std::string typeid_;
  Address address;
  std::uint64_t id = 0;
  /// Of the hosted type's method table (a typed proxy checks it; 0: not checked).
  std::uint64_t fingerprint = 0;
};

/// Python: `multiprocessing.managers.BaseProxy`: an untyped proxy to a managed object.
/// Copies share one reference, released when the last copy is dropped. Thread-safe (calls from
/// several threads run on their own lanes, in parallel on the server).
class BaseProxy {
public:
  /// An empty proxy (refers to nothing; calls raise ValueError).
  BaseProxy() = default;
  /// Python: `BaseProxy(token, serializer, manager=None, authkey=None, exposed=None,
  /// incref=True)`: a proxy to `token`'s object over this process's link to its address (made
  /// with `authkey`; none: current_process().authkey()), taking a reference of its own
  /// (_incref()) unless `incref` is false (then it holds none: the object lives only while
  /// something else holds it). @throws RemoteError if the server has no such object, as
  /// Python's.
  explicit BaseProxy(Token token, std::optional<AuthenticationString> authkey = std::nullopt,
                     bool incref = true);

  /// Python: `_token`. @throws ValueError if empty.
  const Token& _token() const;
  explicit operator bool() const noexcept { return state_ != nullptr; }

  /// Python: `_callmethod(methodname, args=())`: calls the method on the server and returns its
  /// result decoded as `R` (std::monostate: None). Arguments travel by their codecs; a result
  /// that is a new object (method_to_typeid) is asked for as a proxy type (BaseProxy, Proxy<U>).
  /// @throws the exception the method raised (its class rebuilt, with the remote context);
  /// RemoteError (naming AttributeError) for an unknown or unexposed method, as Python's;
  /// TypeError for a wrong arity or argument
  /// types, or a result of another type than R; EOFError naming the server if it is gone.
  template <class R = std::monostate, class... A>
  R _callmethod(std::string_view method, const A&... args) const {
    return call_with_fingerprint<R>(method, 0, args...);
  }

  /// _callmethod, asynchronously: completion void(std::exception_ptr, R) (R default-
  /// constructible), on the token's associated executor, else Asio's system executor; never
  /// inside the call. The arguments are encoded before it returns.
  template <class R = std::monostate, class CompletionToken, class... A>
  auto async_callmethod(std::string_view method, std::tuple<A...> args,
                        CompletionToken&& token) const {
    return async_request<R>(
        [&](proto::manager::Request::Builder r) {
          std::apply([&](const auto&... a) { build_call(r, method, 0, a...); }, args);
        },
        std::forward<CompletionToken>(token));
  }

  /// Python: `_getvalue()`: a copy of the referent, by its codec.
  template <class T>
  T _getvalue() const {
    return _callmethod<T>("#GETVALUE");
  }

  /// Python: `_incref()`: one more reference on the server, held by this proxy (and its copies)
  /// until the last copy is dropped. A round trip, as Python's. @throws RemoteError (the
  /// server's KeyError) if the server has no such object; EOFError if it is gone.
  void _incref() const;
  /// The methods the server exposes for this object (Python's get_methods request).
  std::vector<std::string> _exposed() const;

  /// Python: `repr(proxy)`: "<EventProxy object, typeid 'Event' at 0x…>", the class CPython's
  /// SyncManager gives the typeid ("<AutoProxy[Maths] object, typeid 'Maths' at 0x…>" for others).
  std::string repr() const;
  /// Python: `str(proxy)`: the referent's repr, from the server.
  std::string str() const;

  // ---- for codecs and subclasses -----------------------------------------------------------

  /// Writes a reference for another process: parks one reference under a new ticket (pipelined
  /// on this process's link, no round trip), which the receiver's decode claims.
  void _write_ref(proto::Ref::Builder out) const;
  /// The proxy a received reference makes: claims the ticket on this process's link to the
  /// reference's address (connecting if there is none; see the file comment for the key).
  static BaseProxy _from_ref(proto::Ref::Reader ref);
  /// The link this proxy's calls go through (in a forked child, its own: the first use there
  /// connects and takes a reference, as Python's proxies do after fork).
  std::shared_ptr<detail::Link> _link() const;

protected:
  friend class BaseManager;
  struct State;
  explicit BaseProxy(std::shared_ptr<State> state) : state_(std::move(state)) {}

  /// Adopts the reference a Reply.proxy hands over (the connection already holds it).
  static BaseProxy adopt(const std::shared_ptr<detail::Link>& link, proto::Ref::Reader ref);

  template <class... A>
  void build_call(proto::manager::Request::Builder r, std::string_view method,
                  std::uint64_t fingerprint, const A&... args) const {
    auto c = r.initCall();
    c.setObject(_token().id);
    c.setMethod(capnp::Text::Reader(method.data(), method.size()));
    c.setArgsFingerprint(fingerprint);
    auto l = c.initArgs(sizeof...(A));
    unsigned i = 0;
    codec_detail::encode_guarded(
        [&] { (Codec<detail::wire_arg_t<A>>::encode(detail::wire_arg(args), l[i++]), ...); });
  }

  template <class R, class... A>
  R call_with_fingerprint(std::string_view method, std::uint64_t fingerprint,
                          const A&... args) const {
    auto link = _link();
    auto frame = link->call(
        [&](proto::manager::Request::Builder r) { build_call(r, method, fingerprint, args...); });
    return decode_reply<R>(link, *frame, method);
  }

  /// The reply's result as R (an error reply has been thrown by Link::call, or is thrown here).
  template <class R>
  R decode_reply(const std::shared_ptr<detail::Link>& link, detail::Frame& frame,
                 std::string_view method) const;

  template <class R, class Build, class CompletionToken>
  auto async_request(Build&& build, CompletionToken&& token) const {
    auto link = _link();
    // Encoded here, not in the initiation: a lazy token (use_awaitable, deferred) runs that
    // after this call has returned, when the arguments and the method's name may be gone.
    detail::Link::Built built = link->prepare(build);
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr, R)>(
        [link, self = *this](auto handler, detail::Link::Built built) mutable {
          using H = std::decay_t<decltype(handler)>;
          boost::asio::any_io_executor work = boost::asio::prefer(
              boost::asio::get_associated_executor(handler, troupe::detail::default_io_executor()),
              boost::asio::execution::outstanding_work.tracked);
          auto box = std::make_shared<std::optional<H>>(std::move(handler));
          // The reply comes on the link's thread and is decoded on the handler's executor.
          // The link calls this once: what it holds moves on into the posted handler.
          auto& built_ref = *built;
          link->request(
              built_ref,
              [box = std::move(box), link, self = std::move(self), work = std::move(work)](
                  std::exception_ptr e, std::shared_ptr<detail::Frame> f) mutable {
                detail::post_completion(
                    work, [box = std::move(box), link = std::move(link), self = std::move(self),
                           e = std::move(e), f = std::move(f)]() mutable {
                      R r{};
                      std::exception_ptr error = e;
                      if (!error) {
                        try {
                          r = self.template decode_reply<R>(link, *f, {});
                        } catch (...) {
                          error = std::current_exception();
                        }
                      }
                      H h = std::move(**box);
                      box->reset();
                      std::move(h)(error, std::move(r));
                    });
              });
        },
        token, std::move(built));
  }

  std::shared_ptr<State> state_;
};

/// A proxy whose calls are checked at compile time against T's TROUPE_EXPOSE list:
/// `p.call<&Maths::add>(1, 2)` compiles only if add is exposed and takes arguments made from
/// (1, 2); it returns add's result type. Made by BaseManager::create<T>, or from a BaseProxy
/// (checking the server's method table against T's, when the server knows it).
template <class T>
class Proxy : public BaseProxy {
public:
  Proxy() = default;
  /// @throws TypeError if the object's registered method table is not T's.
  explicit Proxy(BaseProxy p) : BaseProxy(std::move(p)) {
    if (*this && _token().fingerprint != 0 &&
        _token().fingerprint != detail::table_fingerprint<T>())
      throw TypeError("a proxy to '" + _token().typeid_ + "' (object " +
                      std::to_string(_token().id) + " at " + _token().address.str() +
                      ") cannot be a Proxy<" + codec_detail::class_name<T>() +
                      ">: the server's methods for it are not " + codec_detail::class_name<T>() +
                      "'s TROUPE_EXPOSE list");
  }

  /// Calls exposed method M with `args` (converted to its parameter types) and returns its
  /// result. Errors as _callmethod.
  template <auto M, class... A>
  auto call(A&&... args) const {
    using Tr = check<M, A...>;
    typename Tr::Params params{std::forward<A>(args)...};
    using R = typename Tr::Result;
    using V = std::conditional_t<std::is_void_v<R>, std::monostate, std::remove_cvref_t<R>>;
    auto link = _link();
    auto frame = link->call([&](proto::manager::Request::Builder r) {
      std::apply(
          [&](const auto&... a) {
            build_call(r, detail::method_name<T, M>(),
                       detail::params_fingerprint<typename Tr::Params>(), a...);
          },
          params);
    });
    if constexpr (std::is_void_v<R>) {
      (void)decode_reply<V>(link, *frame, detail::method_name<T, M>());
    } else {
      return decode_reply<V>(link, *frame, detail::method_name<T, M>());
    }
  }

  /// Calls method M, listed in its typeid's method_to_typeid, and returns the proxy to the new
  /// object (of class U).
  template <auto M, class U, class... A>
  Proxy<U> call_proxy(A&&... args) const {
    using Tr = check<M, A...>;
    typename Tr::Params params{std::forward<A>(args)...};
    auto link = _link();
    auto frame = link->call([&](proto::manager::Request::Builder r) {
      std::apply(
          [&](const auto&... a) {
            build_call(r, detail::method_name<T, M>(),
                       detail::params_fingerprint<typename Tr::Params>(), a...);
          },
          params);
    });
    return Proxy<U>(decode_reply<BaseProxy>(link, *frame, detail::method_name<T, M>()));
  }

  /// call<M>, asynchronously: `p.async_call<&Maths::add>(1, 2, token)`; completion
  /// void(std::exception_ptr, R) (std::monostate for void), as async_callmethod.
  template <auto M, class... A>
  auto async_call(A&&... args_then_token) const {
    auto all = std::forward_as_tuple(std::forward<A>(args_then_token)...);
    constexpr std::size_t N = sizeof...(A) - 1;
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      using Tr = check<M, std::tuple_element_t<I, std::tuple<A...>>...>;
      using R = typename Tr::Result;
      using V = std::conditional_t<std::is_void_v<R>, std::monostate, std::remove_cvref_t<R>>;
      typename Tr::Params params{std::get<I>(std::move(all))...};
      return async_request<V>(
          [&](proto::manager::Request::Builder r) {
            std::apply(
                [&](const auto&... a) {
                  build_call(r, detail::method_name<T, M>(),
                             detail::params_fingerprint<typename Tr::Params>(), a...);
                },
                params);
          },
          std::get<N>(std::move(all)));
    }
    (std::make_index_sequence<N>{});
  }

private:
  template <auto M, class... A>
  struct Checked {
    using Tr = detail::MethodTraits<decltype(M)>;
    static_assert(std::is_base_of_v<typename Tr::Class, T>,
                  "Proxy<T>::call<&C::method>: C is not T or a base of T");
    static_assert(detail::ExposedOf<T>::template index_of<M>() < detail::ExposedOf<T>::size,
                  "Proxy<T>::call<&T::method>: the method is not in T's TROUPE_EXPOSE list");
    static_assert(std::is_constructible_v<typename Tr::Params, A&&...>,
                  "Proxy<T>::call<&T::method>(args...): the arguments do not convert to the "
                  "method's parameters");
    using type = Tr;
  };
  template <auto M, class... A>
  using check = typename Checked<M, A...>::type;
};

// ---- implementation ------------------------------------------------------------------------

namespace detail {
/// A received proxy's claim (BaseProxy::_from_ref), pipelined: whether the server has answered
/// it yet, and how. Shared by the proxy's state and the claim's reply handler.
struct ClaimWatch {
  std::mutex m;
  bool answered = false;
  bool refused = false;  // the answer was an error: the claim took no reference
  bool dropped = false;  // the proxy went before the answer: its handler gives a taken one back
};
}  // namespace detail

struct BaseProxy::State {
  Token token;
  AuthenticationString authkey;
  mutable std::mutex m;
  std::shared_ptr<detail::Link> link;
  std::uint64_t refs = 1;  // references held on `link`, released when the last copy goes
  // A received proxy whose claim the server refused (m): every call from then on throws it.
  std::exception_ptr refused;
  // A received proxy's claim, counted in `refs` (null: none, or a forked child's state, whose
  // reference is its own incref).
  std::shared_ptr<detail::ClaimWatch> claim;
  ~State();
};

namespace detail {
template <class R>
inline constexpr bool is_proxy = std::is_base_of_v<BaseProxy, R>;
[[noreturn]] void wrong_reply_kind(std::string_view method, std::string_view got,
                                   std::string_view want);
}  // namespace detail

template <class R>
R BaseProxy::decode_reply(const std::shared_ptr<detail::Link>& link, detail::Frame& frame,
                          std::string_view method) const {
  auto reply = frame.root<proto::manager::Reply>();
  switch (reply.which()) {
    case proto::manager::Reply::ERROR: throw_error(ErrorEnvelope::decode(reply.getError()));
    case proto::manager::Reply::PROXY:
      if constexpr (detail::is_proxy<R>) {
        return R(adopt(link, reply.getProxy()));
      } else {
        // The reference the reply handed over is released with this temporary proxy.
        (void)adopt(link, reply.getProxy());
        detail::wrong_reply_kind(method, "a proxy", Codec<R>::signature());
      }
    case proto::manager::Reply::TEXT:
      if constexpr (std::is_same_v<R, std::string>) {
        auto text = reply.getText();
        return std::string(text.begin(), text.size());
      } else {
        detail::wrong_reply_kind(method, "text", Codec<R>::signature());
      }
    case proto::manager::Reply::RESULT:
    default: return codec_detail::guarded([&] { return Codec<R>::decode(reply.getResult()); });
  }
}

}  // namespace troupe::multiprocessing::managers

/// A proxy travels as a Value.ref (proto/value.capnp): parked by the sender, claimed by the
/// receiver (proxy.hpp's file comment).
template <>
struct troupe::Codec<troupe::multiprocessing::managers::BaseProxy> {
  static std::string signature() { return "proxy"; }
  static void encode(const troupe::multiprocessing::managers::BaseProxy& p,
                     troupe::proto::Value::Builder v) {
    p._write_ref(v.initRef());
  }
  static troupe::multiprocessing::managers::BaseProxy decode(troupe::proto::Value::Reader v) {
    troupe::codec_detail::expect(v, troupe::codec_detail::Which::REF, "proxy");
    return troupe::multiprocessing::managers::BaseProxy::_from_ref(v.getRef());
  }
};

namespace troupe::multiprocessing::managers::detail {
/// A built-in proxy type (QueueProxy<T>, EventProxy, PoolProxy…): a BaseProxy that names itself
/// for Codec with a static _codec_signature().
template <class P>
concept BuiltinProxy = std::derived_from<P, BaseProxy> && requires {
  { P::_codec_signature() } -> std::convertible_to<std::string>;
};
}  // namespace troupe::multiprocessing::managers::detail

/// The codec of every built-in proxy type: a Value.ref, as BaseProxy's (it travels alike).
template <class P>
requires troupe::multiprocessing::managers::detail::BuiltinProxy<P>
struct troupe::Codec<P> {
  static std::string signature() { return P::_codec_signature(); }
  static void encode(const P& p, troupe::proto::Value::Builder v) { p._write_ref(v.initRef()); }
  static P decode(troupe::proto::Value::Reader v) {
    troupe::codec_detail::expect(v, troupe::codec_detail::Which::REF, signature());
    return P(troupe::multiprocessing::managers::BaseProxy::_from_ref(v.getRef()));
  }
};

template <class T>
struct troupe::Codec<troupe::multiprocessing::managers::Proxy<T>> {
  static std::string signature() { return "proxy<" + troupe::codec_detail::class_name<T>() + ">"; }
  static void encode(const troupe::multiprocessing::managers::Proxy<T>& p,
                     troupe::proto::Value::Builder v) {
    p._write_ref(v.initRef());
  }
  static troupe::multiprocessing::managers::Proxy<T> decode(troupe::proto::Value::Reader v) {
    troupe::codec_detail::expect(v, troupe::codec_detail::Which::REF, signature());
    return troupe::multiprocessing::managers::Proxy<T>(
        troupe::multiprocessing::managers::BaseProxy::_from_ref(v.getRef()));
  }
};
