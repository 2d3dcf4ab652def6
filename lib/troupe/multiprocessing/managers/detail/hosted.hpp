// troupe/multiprocessing/managers/detail/hosted.hpp — what the object host (the manager's server,
// server.hpp) calls: a hosted object, the completion a call ends through, and a registered typeid.
// Registered C++ classes (registry.hpp) and the built-in types (SyncManager's Queue, dict, …) are
// both hosted through this interface. Not API: users register classes with registry.hpp.
//
// A call arrives as a method name and a list of proto::Value arguments; the object answers through
// a Completion, at once or later (a blocking `get` completes when an item comes), from any thread,
// exactly once: with a value, a new object (a method of method_to_typeid), or an exception.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <typeindex>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <capnp/list.h>

#include "troupe/codec.hpp"
#include "troupe/multiprocessing/managers/detail/caller.hpp"
#include "troupe/multiprocessing/managers/detail/item.hpp"

#include "manager.capnp.h"
#include "value.capnp.h"

namespace troupe::multiprocessing::managers::detail {

class HostedObject;

/// How one call ends. Exactly one of done() (after filling value(), or not: None),
/// new_object() or fail() is called, once, from any thread, at once or later; never while holding
/// a lock that the host's other calls need. A Completion dropped without any of them fails the
/// call with a RuntimeError naming the method ("never completed"). Thread-safe in the sense
/// that the completing thread need not be the calling one; value() and the completing call must
/// come from one thread at a time.
class Completion {
public:
  virtual ~Completion() = default;

  /// The result, in the reply message: fill it, then call done(). Left untouched it is None.
  virtual proto::Value::Builder value() = 0;
  /// Ends the call with value().
  virtual void done() = 0;
  /// Ends the call with a new hosted object of the registered `typeid_` (a method listed in
  /// method_to_typeid; Pool.apply_async's AsyncResult): the host adds it to its table and the
  /// caller gets a proxy holding one reference. If `object` is already hosted, the same entry
  /// gains a reference (Python: the same object, the same id).
  virtual void new_object(std::string typeid_, std::shared_ptr<HostedObject> object) = 0;
  /// Ends the call with an exception (sent as the error envelope, with the call's context).
  virtual void fail(std::exception_ptr error) = 0;

  /// Ends the call with the value tree `x`: by default written into value() (its refs as they
  /// are), then done(). A completion that keeps Items (CPython's dialect, so that a dict stays
  /// a dict) takes it whole, refs included (keeps_items()).
  virtual void complete_item(const Item& x) {
    write(x, value());
    done();
  }
  /// Whether complete_item() takes the tree whole, writing the refs in it itself: a hosted
  /// container then hands over what it holds without parking references for the receiver.
  virtual bool keeps_items() const noexcept { return false; }

  /// Shorthand: encodes `x` with troupe::Codec<T> into value() and calls done().
  template <class T>
  void complete(const T& x) {
    Codec<T>::encode(x, value());
    done();
  }
};
using CompletionPtr = std::shared_ptr<Completion>;

/// The host's handling of references held inside hosted objects (a proxy stored in a managed
/// dict, a list inside a list). Thread-safe.
class RefHost {
public:
  virtual ~RefHost() = default;
  /// An object now holds a reference to hosted object `id`, received in a Value.ref with
  /// `ticket`: the parked reference is taken over (claimed), or a new one taken if the ticket is
  /// 0 or not parked yet. @throws ValueError if there is no object `id`.
  virtual void hold(std::uint64_t id, std::uint64_t ticket) = 0;
  /// An object drops a reference it held (hold() before). Releasing the last one removes the
  /// object from the table.
  virtual void drop(std::uint64_t id) noexcept = 0;
  /// Writes a reference to hosted object `id` into `out` for a reply: parks one reference under
  /// a new ticket, which the receiving proxy claims (doc/protocol.md "Managers").
  /// @throws ValueError if there is no object `id`.
  virtual void write_ref(std::uint64_t id, proto::Ref::Builder out) = 0;
  /// The hosted object `id` of this host, if `address` (a Ref's) is this host's and there is
  /// such an object; else null. For an object made over another one of the same host (a
  /// managed Condition over a managed Lock). A host that does not give access returns null.
  virtual std::shared_ptr<HostedObject> find(std::string_view /*address*/, std::uint64_t /*id*/) {
    return nullptr;
  }
  /// Whether `address` (a Ref's) names this host (its own address or another name a client
  /// reached it by). A ref to another address is another manager's object, which a container
  /// holds as that manager's client. A host that cannot tell says yes (refs stay its own).
  virtual bool hosts(std::string_view /*address*/) { return true; }
  /// Whether a ref to another host's object may be held (ServerOptions::foreign_proxies).
  virtual bool holds_foreign() { return false; }
  /// A call that received a ref to hosted object `id` with `ticket` as an argument is over, and
  /// its object did not keep it: the reference parked for it, if nobody took it over (hold(),
  /// or a reply that hands it on), is released now rather than after the park's time to live
  /// (CPython releases an argument's reference when the call returns).
  virtual void end_park(std::uint64_t /*id*/, std::uint64_t /*ticket*/) noexcept {}
};

/// One call as the host hands it to an object. The references (args, method, typeid_) are valid
/// only during HostedObject::call: an object that completes later copies what it needs first.
struct CallInfo {
  Caller caller;
  std::uint64_t call_id = 0;
  std::uint64_t object_id = 0;  // 0 for a create
  std::string_view typeid_;     // the object's registered typeid
  std::string_view method;      // the method's name (for a create: the typeid)
  capnp::List<proto::Value>::Reader args;
  std::uint64_t args_fingerprint = 0;     // of the argument types' signature; 0: untyped
  boost::asio::any_io_executor executor;  // the host's: timers, posted work
  RefHost* refs = nullptr;                // never null in a call from the host
  /// Python's keyword arguments: only a call in CPython's dialect has them, and only for an
  /// object that reads them (HostedObject::takes_keywords(), a create of a typeid whose
  /// TypeEntry::takes_keywords); else null.
  const Kwargs* kwargs = nullptr;
  /// The arguments as Python sent them (CPython's dialect), with the kinds `args` cannot say
  /// (dict, tuple, set): what the built-ins read (detail::items_of); null on troupe's wire.
  /// `args` then holds them too, for registered classes, unless they hold a value troupe's wire
  /// has no form for (an exception object): then `args` is empty and `args_error` says why.
  const std::vector<Item>* items = nullptr;
  std::string_view args_error{};
};

/// A method's Python parameters, for placing keyword arguments by position (CPython's dialect
/// sends `q.get(timeout=1)` as keywords; troupe's wire has only positions): the names in order,
/// and how many of the first have no default. A parameter left out before one given by name is
/// filled with Item::omitted() (a None that flag() reads as the default, where an explicit None
/// is Python's falsy).
struct Parameters {
  std::vector<std::string_view> names;
  std::size_t required = 0;
};

/// An object the host serves. The host calls call() from its threads, concurrently for calls of
/// different lanes (unless the typeid was registered serialized): objects are thread-safe.
class HostedObject {
public:
  virtual ~HostedObject() = default;
  /// The method names clients may call (Python's `exposed`; get_methods()).
  virtual std::vector<std::string> exposed() const = 0;
  /// Runs `call.method` and ends it through `done` (now or later). A throw from call() is the
  /// same as done->fail(current exception) (the host catches it). An unknown method or bad
  /// arguments: fail with AttributeError-like text naming the object, typeid and method
  /// (registry.hpp's unknown_method(), bad_arity(), bad_arguments() give the standard texts).
  /// The method "#GETVALUE" is Python's _getvalue(): the object's value, by its codec.
  virtual void call(const CallInfo& call, CompletionPtr done) = 0;
  /// The connection has closed (its client disconnected or died): fail its waiters and release
  /// what it held (locks owned by its Callers). Called once per closed connection for every
  /// hosted object, from a host thread, outside any call of this object.
  virtual void release_connection(std::uint64_t /*connection*/) {}
  /// False when release_connection() does nothing for this object (plain values, containers,
  /// registered classes): the host then does not visit it when a connection closes, so that a
  /// disconnect costs what the objects that track connections cost, not the whole table.
  virtual bool tracks_connections() const noexcept { return true; }
  /// The client gave up waiting for call `call_id` of `who` (a timeout or a stop on its side):
  /// an object that parks waiters fails or forgets that one. The call still completes (the reply
  /// is then dropped).
  virtual void cancel(Caller /*who*/, std::uint64_t /*call_id*/) {}
  /// Whether call() reads CallInfo::kwargs (a container: dict.update(a=1), list.sort(reverse=
  /// True)). Else keywords are placed by parameters(), or refused.
  virtual bool takes_keywords() const noexcept { return false; }
  /// `method`'s parameters, for keywords placed by position (a queue's get(block, timeout));
  /// nullopt: the method takes no keywords (a registered C++ class's: C++ has no names).
  virtual std::optional<Parameters> parameters(std::string_view /*method*/) const {
    return std::nullopt;
  }
  /// A short text for debug_info() and str(proxy): Python's repr of the object.
  virtual std::string repr() const = 0;
  /// What makes two hosted objects the same object (a factory that returns the same shared
  /// object each time: Python's `register('get_queue', callable=lambda: queue)`): the host gives
  /// them one id. By default the HostedObject itself.
  virtual const void* identity() const noexcept { return this; }
};

/// A registered typeid (Python: one `register()` call on a manager class). registry.hpp makes
/// these for C++ classes; a built-in type is added to a Registry as one of these directly.
struct TypeEntry {
  std::string typeid_;
  /// Makes an object from a create's arguments (call.args; call.object_id is 0). Null: the
  /// typeid cannot be created (Python's callable=None: a typeid only for method_to_typeid
  /// results, or on the connecting side of a remote manager). May throw (sent to the creator).
  std::function<std::shared_ptr<HostedObject>(const CallInfo& call)> create;
  /// Python's `exposed`: when set, only these methods may be called (and get_methods() lists
  /// them); else the object's own exposed().
  std::optional<std::vector<std::string>> exposed;
  /// Python's `method_to_typeid`: a method listed here returns a proxy to a new object of that
  /// typeid instead of a value.
  std::map<std::string, std::string, std::less<>> method_to_typeid;
  /// How a create in CPython's dialect passes keywords: `create` reads CallInfo::kwargs
  /// (dict(a=1), Namespace(x=1)); else they are placed by `create_parameters` (Queue(maxsize=)),
  /// or refused when that is empty.
  bool takes_keywords = false;
  Parameters create_parameters;
  /// Python's `create_method`: whether clients create this typeid (BaseManager::create).
  bool create_method = true;
  /// Calls on one object of this typeid run one at a time, in arrival order (a strand), so the
  /// class need not be thread-safe. Python has no such option: its objects must be thread-safe.
  bool serialized = false;
  /// The methods return at once and never block: calls run inside the handler that read them
  /// (RegisterOptions::quick); other registered classes' calls run on that thread after it,
  /// watched (a helper thread serves the others while one blocks).
  bool quick = false;
  /// Making an object may block (a built-in's: Pool starts its worker processes): the create
  /// runs as a registered class's calls do, watched, not inside the handler that read it.
  bool create_may_block = false;
  /// Of the hosted type's method table (proto Ref.fingerprint; 0: not checked by proxies).
  std::uint64_t fingerprint = 0;
  /// The C++ type of the objects (registered classes), for method_to_typeid results; and how
  /// to host an existing one (`object` is a std::shared_ptr<that type>). Null for built-ins.
  std::optional<std::type_index> cxx_type;
  std::function<std::shared_ptr<HostedObject>(std::shared_ptr<void> object)> adopt;
};

/// Whether `entry`'s exposed list names `method` (no list: every method is exposed).
inline bool lists(const TypeEntry& entry, std::string_view method) {
  return !entry.exposed ||
         std::find(entry.exposed->begin(), entry.exposed->end(), method) != entry.exposed->end();
}
/// Whether `entry` lets clients call `method`: listed in its exposed, or an iterator's step that
/// the object's listed `__next__` or `next` answers (IteratorProxy's `#NEXT`; a Python client's
/// `__next__` on a C++ class's `next`), as CPython exposes what its IteratorProxy calls for a
/// typeid registered with proxytype=IteratorProxy.
inline bool exposes(const TypeEntry& entry, std::string_view method) {
  if (lists(entry, method)) return true;
  if (method == "#NEXT") return lists(entry, "__next__") || lists(entry, "next");
  if (method == "__next__") return lists(entry, "next");
  return false;
}

}  // namespace troupe::multiprocessing::managers::detail
