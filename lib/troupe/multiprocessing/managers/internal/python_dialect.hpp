// troupe/multiprocessing/managers/internal/python_dialect.hpp — the pieces of CPython's manager
// dialect that do not need the server: reading a request, writing a reply, Python's forms of an
// address, a Token and a proxy, and keyword arguments placed by position. The server
// (server.cpp) serves a connection whose first message is a pickle with these (doc/interop.md).
// Not API.
//
// CPython's wire (Lib/multiprocessing/managers.py): every message is a pickle. A request is the
// tuple (ident, methodname, args, kwds); a connection's first request names one of the server's
// public functions (dummy, create, accept_connection, get_methods, debug_info,
// number_of_objects, incref, decref, shutdown), and after accept_connection every request is a
// method call on the object `ident` (the hex text of its id). A reply is (kind, value): '#RETURN'
// and the result, '#ERROR' and the exception the method raised, '#TRACEBACK' and a text (the
// caller raises RemoteError), '#PROXY' and (exposed, Token) for a method of method_to_typeid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <capnp/orphan.h>

#include "troupe/error_envelope.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/detail/hosted.hpp"
#include "troupe/multiprocessing/managers/detail/item.hpp"

namespace troupe::multiprocessing::managers::internal::python {

using detail::Item;
using detail::Kwargs;

/// One request: (ident, methodname, args, kwds).
struct Request {
  Item ident;  // None for the server's functions; the object's hex id for a method call
  std::string method;
  std::vector<Item> args;
  Kwargs kwargs;
};

/// The request in a decoded pickle. @throws TypeError naming what is not as CPython sends it.
Request parse_request(Item x);

/// Whether `name` is one of the functions of CPython's Server a connection's first request names.
bool is_public(std::string_view name);

/// An object id as CPython's ident: its lowercase hex text.
std::string ident_text(std::uint64_t id);
/// The id `x` (a str of hex digits) names. @throws KeyError naming `x`, as CPython's table would.
std::uint64_t parse_ident(const Item& x);

/// Python's form of an address: ('host', port), a path, or '\0name' for an abstract one.
Item address_item(const Address& a);
/// The address a Python address names (its text as Address::parse reads it), if it is one.
std::optional<Address> address_of(const Item& x);

/// multiprocessing.managers.Token(typeid, address, ident), as pickle reads it.
Item token(std::string_view typeid_, const Address& address, std::uint64_t id);
/// A Token's fields. @throws TypeError if `x` is not a Token.
struct TokenFields {
  std::string typeid_;
  Item address;
  Item ident;
};
TokenFields token_fields(const Item& x);

/// The proxy type CPython's SyncManager registers for `typeid_` ("ListProxy"), or "AutoProxy".
std::string_view proxy_type(std::string_view typeid_);

/// A proxy as BaseProxy.__reduce__ writes it: RebuildProxy(type, token, 'pickle', kwds), with
/// kwds {'exposed': ...} for an AutoProxy (none when `exposed` is empty: the receiver asks the
/// manager, get_methods). The receiving Python process takes a reference of its
/// own (incref) when it reads it.
Item rebuild_proxy(std::string_view typeid_, const Address& address, std::uint64_t id,
                   const std::vector<std::string>& exposed);
/// Whether `x` is such a proxy; its Token.
const Item* rebuilt_token(const Item& x);

/// A reply (kind, value) as a pickle of `protocol`.
std::vector<std::byte> reply(std::string_view kind, Item value, int protocol);

/// The exception object Python would raise for `e` (its class, its message as the one argument,
/// an OSError's errno first), if it is a class every Python reads; else nullopt.
std::optional<Item> exception_item(const ErrorEnvelope& e);
/// A failure as CPython's server sends it: ('#ERROR', exception) when `as_exception` and the
/// class is one Python reads, else ('#TRACEBACK', text) (Python's caller raises RemoteError
/// showing the text: the class, the message and where it was raised).
std::vector<std::byte> error_reply(const ErrorEnvelope& e, int protocol, bool as_exception);

/// Places `kwargs` into `args` by `p`, as Python binds them: a name not in `p` is "got an
/// unexpected keyword argument", a name already given by position "got multiple values", a
/// required parameter left out "missing required argument"; a parameter left out before one
/// given by name is None (the built-ins' default). `where` names the call ("Queue.get()").
/// @throws TypeError with those texts.
void place_keywords(std::string_view where, std::vector<Item>& args, Kwargs kwargs,
                    const detail::Parameters& p);

/// A call's arguments as the host hands them over (CallInfo::items, args, kwargs): as Python
/// sent them, and written as the Cap'n Proto list registered classes decode, unless one has no
/// form on troupe's wire (an exception object or a Token sent as a value): then the list is
/// empty and `error` names the argument.
class CallArgs {
public:
  CallArgs(std::string_view where, std::vector<Item> items, std::optional<Kwargs> kwargs);
  const std::vector<Item>& items() const noexcept { return items_; }
  capnp::List<proto::Value>::Reader reader() const { return list_.getReader(); }
  const std::string& error() const noexcept { return error_; }
  const Kwargs* kwargs() const noexcept { return kwargs_ ? &*kwargs_ : nullptr; }
  /// "(1, 'a')": for an error's context.
  std::string summary() const;

private:
  std::vector<Item> items_;
  std::optional<Kwargs> kwargs_;
  std::string error_;
  capnp::MallocMessageBuilder mb_;
  capnp::Orphan<capnp::List<proto::Value>> list_;
};

}  // namespace troupe::multiprocessing::managers::internal::python
