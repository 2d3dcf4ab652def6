// SyncManager's built-in typeids, hosted: thin adapters from a call (a method name and
// proto::Value arguments) to the waiting objects (detail/waits.hpp) and the containers
// (detail/containers.hpp). Arguments are read as Python's, by position, with Python's defaults.
#include "troupe/multiprocessing/managers/builtins.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <capnp/message.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/args.hpp"
#include "troupe/multiprocessing/managers/detail/containers.hpp"
#include "troupe/multiprocessing/managers/detail/hosted.hpp"
#include "troupe/multiprocessing/managers/detail/item.hpp"
#include "troupe/multiprocessing/managers/detail/methods.hpp"
#include "troupe/multiprocessing/managers/detail/not_exposed.hpp"
#include "troupe/multiprocessing/managers/detail/waits.hpp"
#include "troupe/multiprocessing/managers/internal/ref_proxy.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"

namespace troupe::multiprocessing::managers {

namespace {

using detail::at_most;
using detail::CallInfo;
using detail::complete_item;
using detail::CompletionPtr;
using detail::finish;
using detail::finish_bool;
using detail::flag;
using detail::integer;
using detail::Item;
using detail::items_of;
using detail::Kind;
using detail::timeout_of;
using detail::unwrap_optional;
using detail::WaitTimeout;
using detail::where;

// The references parked for the proxies among a call's arguments (each travelling proxy parks
// one for its receiver), ended when the call is over (RefHost::end_park): a proxy the object
// stored has taken its park over (RefHost::hold), one written into the reply has a new park of
// its own, and what is left (an argument only looked at: `p in l`, `l.count(p)`, a failed
// `l.remove(p)`, `d.get(k, p)`'s default, a put to a full queue) would keep its object alive
// for ServerOptions::park_ttl where CPython releases it as the call returns.
class ArgumentParks {
public:
  ArgumentParks(detail::RefHost* host, const std::vector<Item>& args,
                const detail::Kwargs* kwargs = nullptr)
      : host_(host) {
    if (host_ == nullptr) return;
    auto note = [&](const Item& x) {
      const detail::Ref& r = x.as_ref();
      if (r.ticket != 0 && host_->hosts(r.address)) parks_.emplace_back(r.id, r.ticket);
    };
    for (const Item& a : args) detail::for_each_ref(a, note);
    if (kwargs)
      for (const auto& [name, a] : *kwargs) detail::for_each_ref(a, note);
  }
  ~ArgumentParks() {
    if (on_destroy_) end();
  }
  ArgumentParks(const ArgumentParks&) = delete;
  ArgumentParks& operator=(const ArgumentParks&) = delete;

  /// Ends them now (once).
  void end() noexcept {
    if (host_ == nullptr) return;
    for (const auto& [id, ticket] : parks_) host_->end_park(id, ticket);
    parks_.clear();
  }
  /// The object keeps the arguments (a queue's put that succeeded): their parks stay for the
  /// receivers.
  void keep() noexcept { parks_.clear(); }
  /// From now on only end() ends them: for a completion that calls end() or keep() when it
  /// runs, and that may be destroyed without running once the host is gone (at its stop).
  void end_only_explicitly() noexcept { on_destroy_ = false; }

private:
  detail::RefHost* host_;
  bool on_destroy_ = true;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> parks_;
};

// ---- the waiting objects ---------------------------------------------------------------------

class QueueObject final : public detail::HostedObject {
public:
  QueueObject(boost::asio::any_io_executor ex, std::ptrdiff_t maxsize)
      : q_(std::move(ex), maxsize) {}

  std::vector<std::string> exposed() const override {
    return {"empty", "full",       "get",   "get_nowait", "join",
            "put",   "put_nowait", "qsize", "task_done",  "shutdown"};
  }
  std::optional<detail::Parameters> parameters(std::string_view m) const override {
    if (m == "put") return detail::Parameters{{"item", "block", "timeout"}, 1};
    if (m == "get") return detail::Parameters{{"block", "timeout"}, 0};
    if (m == "put_nowait") return detail::Parameters{{"item"}, 1};
    if (m == "shutdown") return detail::Parameters{{"immediate"}, 0};
    return detail::Parameters{};
  }
  std::string repr() const override {
    return "<queue.Queue object, maxsize=" + std::to_string(q_.maxsize()) +
           ", qsize=" + std::to_string(q_.qsize()) + ">";
  }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    auto a = items_of(call);
    if (m == "put") {
      if (a.empty()) detail::bad_arity(call, "Queue", 1);
      // Ended unless the item goes into the queue.
      auto parks = std::make_shared<ArgumentParks>(call.refs, a);
      at_most(call, a, 3);
      const bool block = flag(call, a, 1, true, "block");
      const WaitTimeout t = timeout_of(call, a, 2);
      q_.async_put(call.caller, std::move(a[0]), block, t,
                   [done = std::move(done), parks](std::exception_ptr e) {
                     if (e) {
                       parks->end();
                       return done->fail(e);
                     }
                     parks->keep();
                     done->done();
                   });
      parks->end_only_explicitly();
    } else if (m == "get") {
      at_most(call, a, 2);
      q_.async_get(call.caller, flag(call, a, 0, true, "block"), timeout_of(call, a, 1),
                   [done = std::move(done)](std::exception_ptr e, std::optional<Item> x) {
                     if (e) return done->fail(e);
                     complete_item(done, x ? *x : Item());
                   });
    } else if (m == "put_nowait") {
      if (a.size() != 1) detail::bad_arity(call, "Queue", 1);
      ArgumentParks parks(call.refs, a);
      q_.put_nowait(std::move(a[0]));
      parks.keep();
      done->done();
    } else if (m == "get_nowait") {
      at_most(call, a, 0);
      complete_item(done, q_.get_nowait());
    } else if (m == "qsize") {
      done->complete(static_cast<std::int64_t>(q_.qsize()));
    } else if (m == "empty") {
      done->complete(q_.empty());
    } else if (m == "full") {
      done->complete(q_.full());
    } else if (m == "task_done") {
      q_.task_done();
      done->done();
    } else if (m == "join") {
      q_.async_join(call.caller, finish(std::move(done)));
    } else if (m == "shutdown") {
      at_most(call, a, 1);
      q_.shutdown(flag(call, a, 0, false, "immediate"));
      done->done();
    } else {
      detail::unknown_method(call, "Queue", exposed());
    }
  }
  void release_connection(std::uint64_t connection) override { q_.release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { q_.cancel(who); }

private:
  detail::AsyncQueue<Item> q_;
};

// Lock, RLock, Semaphore, BoundedSemaphore: Python's AcquirerProxy (acquire, release, locked).
template <class W>
class AcquirerObject final : public detail::HostedObject {
public:
  template <class... A>
  AcquirerObject(std::string name, A&&... a) : name_(std::move(name)), w_(std::forward<A>(a)...) {}

  std::vector<std::string> exposed() const override { return {"acquire", "release", "locked"}; }
  std::optional<detail::Parameters> parameters(std::string_view m) const override {
    if (m == "acquire") return detail::Parameters{{"blocking", "timeout"}, 0};
    if (m == "release") return detail::Parameters{{"n"}, 0};
    return detail::Parameters{};
  }
  std::string repr() const override { return "<" + name_ + ">"; }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    auto a = items_of(call);
    if (m == "acquire") {
      at_most(call, a, 2);
      // Python's Semaphore.acquire is Python code (its timeout goes to a wait only if it must
      // wait); Lock's and RLock's is C.
      if constexpr (!std::is_base_of_v<detail::AsyncSemaphore, W>)
        detail::lock_timeout_in_range(call, a, 1);
      w_.async_acquire(call.caller, flag(call, a, 0, true, "blocking"), timeout_of(call, a, 1),
                       finish_bool(std::move(done)));
    } else if (m == "release") {
      if constexpr (std::is_base_of_v<detail::AsyncSemaphore, W>) {
        at_most(call, a, 1);
        w_.release(call.caller, integer(call, a, 0, 1, "n"));
      } else {
        at_most(call, a, 0);
        w_.release(call.caller);
      }
      done->done();
    } else if (m == "locked") {
      if constexpr (std::is_base_of_v<detail::AsyncSemaphore, W>)
        done->complete(w_.value() == 0);
      else
        done->complete(w_.locked());
    } else {
      detail::unknown_method(call, name_, exposed());
    }
  }
  void release_connection(std::uint64_t connection) override { w_.release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { w_.cancel(who); }

  /// The lock itself, for a Condition made over it.
  W& waiter() noexcept { return w_; }

private:
  std::string name_;
  W w_;
};

// Python: `Condition(lock=None)`, ConditionProxy's methods. wait_for is the client's.
class ConditionObject final : public detail::HostedObject {
public:
  template <class... L>
  explicit ConditionObject(boost::asio::any_io_executor ex, std::string lock_repr, L&... lock)
      : lock_repr_(std::move(lock_repr)), c_(std::move(ex), lock...) {}

  std::vector<std::string> exposed() const override {
    return {"acquire", "release", "locked", "wait", "notify", "notify_all"};
  }
  std::optional<detail::Parameters> parameters(std::string_view m) const override {
    if (m == "acquire") return detail::Parameters{{"blocking", "timeout"}, 0};
    if (m == "wait") return detail::Parameters{{"timeout"}, 0};
    if (m == "notify") return detail::Parameters{{"n"}, 0};
    return detail::Parameters{};
  }
  std::string repr() const override { return "<Condition(" + lock_repr_ + ", 0)>"; }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    auto a = items_of(call);
    if (m == "acquire") {
      at_most(call, a, 2);
      detail::lock_timeout_in_range(call, a, 1);  // the Condition's lock's acquire
      c_.async_acquire(call.caller, flag(call, a, 0, true, "blocking"), timeout_of(call, a, 1),
                       finish_bool(std::move(done)));
    } else if (m == "release") {
      at_most(call, a, 0);
      c_.release(call.caller);
      done->done();
    } else if (m == "locked") {
      at_most(call, a, 0);
      done->complete(c_.locked());
    } else if (m == "wait") {
      at_most(call, a, 1);
      c_.async_wait(call.caller, timeout_of(call, a, 0), finish_bool(std::move(done)));
    } else if (m == "notify") {
      at_most(call, a, 1);
      const std::int64_t n = integer(call, a, 0, 1, "n");
      c_.notify(call.caller, n);
      done->done();
    } else if (m == "notify_all") {
      at_most(call, a, 0);
      c_.notify_all(call.caller);
      done->done();
    } else {
      detail::unknown_method(call, "Condition", exposed());
    }
  }
  void release_connection(std::uint64_t connection) override { c_.release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { c_.cancel(who); }

private:
  std::string lock_repr_;
  detail::AsyncCondition c_;
};

// The Condition's lock argument: None (a new RLock), or a proxy to a Lock or RLock of the same
// manager (the Condition shares it: acquiring either is acquiring both).
std::shared_ptr<detail::HostedObject> make_condition(const CallInfo& call) {
  auto a = items_of(call);
  at_most(call, a, 1);
  const Item* lock = a.empty() ? nullptr : unwrap_optional(a[0]);
  if (!lock) return std::make_shared<ConditionObject>(call.executor, "<RLock>");
  if (lock->kind() != Kind::ref)
    throw TypeError(where(call) +
                    ": 'lock' must be a proxy to a managed Lock or RLock of this "
                    "manager, or None, not " +
                    std::string(detail::type_name(*lock)));
  const detail::Ref& r = lock->as_ref();
  const std::string what =
      "'lock' (" + r.type_id + " object " + std::to_string(r.id) + " at " + r.address + ")";
  auto object = call.refs->find(r.address, r.id);
  if (!object)
    throw ValueError(where(call) + ": " + what +
                     " is not an object of this manager: a managed Condition can only share a "
                     "Lock or RLock of its own manager");
  // The parked reference the argument carried is claimed and let go: the Condition shares the
  // lock's state, not the hosted object, so the lock's own proxies decide its lifetime.
  call.refs->hold(r.id, r.ticket);
  call.refs->drop(r.id);
  if (auto* l = dynamic_cast<AcquirerObject<detail::AsyncLock>*>(object.get()))
    return std::make_shared<ConditionObject>(call.executor, "<Lock>", l->waiter());
  if (auto* l = dynamic_cast<AcquirerObject<detail::AsyncRLock>*>(object.get()))
    return std::make_shared<ConditionObject>(call.executor, "<RLock>", l->waiter());
  throw TypeError(where(call) + ": " + what + " is not a Lock or an RLock");
}

// Python: `Barrier(parties, action=None, timeout=None)`, BarrierProxy's methods; `parties`,
// `n_waiting` and `broken` are read through `__getattribute__`, as Python's proxy does.
class BarrierObject final : public detail::HostedObject {
public:
  BarrierObject(boost::asio::any_io_executor ex, int parties, WaitTimeout timeout)
      : b_(std::move(ex), parties, timeout) {}

  std::vector<std::string> exposed() const override {
    return {"__getattribute__", "wait", "abort", "reset"};
  }
  std::optional<detail::Parameters> parameters(std::string_view m) const override {
    if (m == "wait") return detail::Parameters{{"timeout"}, 0};
    if (m == "__getattribute__") return detail::Parameters{{"name"}, 1};
    return detail::Parameters{};
  }
  std::string repr() const override {
    return "<threading.Barrier: parties=" + std::to_string(b_.parties()) +
           ", n_waiting=" + std::to_string(b_.n_waiting()) +
           ", broken=" + (b_.broken() ? "True" : "False") + ">";
  }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    auto a = items_of(call);
    if (m == "wait") {
      at_most(call, a, 1);
      b_.async_wait(call.caller, timeout_of(call, a, 0),
                    [done = std::move(done)](std::exception_ptr e, int index) {
                      if (e) return done->fail(e);
                      done->complete(static_cast<std::int64_t>(index));
                    });
    } else if (m == "abort") {
      at_most(call, a, 0);
      b_.abort();
      done->done();
    } else if (m == "reset") {
      at_most(call, a, 0);
      b_.reset();
      done->done();
    } else if (m == "__getattribute__") {
      if (a.size() != 1) detail::bad_arity(call, "Barrier", 1);
      if (a[0].kind() != Kind::text)
        throw TypeError(where(call) + ": attribute name must be string, not " +
                        std::string(detail::type_name(a[0])));
      const std::string& name = a[0].as_string();
      if (name == "parties") {
        done->complete(static_cast<std::int64_t>(b_.parties()));
      } else if (name == "n_waiting") {
        done->complete(static_cast<std::int64_t>(b_.n_waiting()));
      } else if (name == "broken") {
        done->complete(b_.broken());
      } else {
        throw AttributeError("'Barrier' object has no attribute '" + name +
                             "' (a managed Barrier gives parties, n_waiting and broken)");
      }
    } else {
      detail::unknown_method(call, "Barrier", exposed());
    }
  }
  void release_connection(std::uint64_t connection) override { b_.release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { b_.cancel(who); }

private:
  detail::AsyncBarrier b_;
};

std::shared_ptr<detail::HostedObject> make_barrier(const CallInfo& call) {
  auto a = items_of(call);
  if (a.empty()) detail::bad_arity(call, "Barrier", 1);
  at_most(call, a, 3);
  const std::int64_t parties = integer(call, a, 0, 0, "parties");
  if (a.size() > 1 && unwrap_optional(a[1]))
    throw TypeError(where(call) +
                    ": 'action' must be None: a callable cannot be sent to a manager's process "
                    "(run the action in the party whose wait() returns 0 instead)");
  if (parties > std::numeric_limits<int>::max())
    throw ValueError(where(call) + ": 'parties' is " + std::to_string(parties) +
                     ", over the limit " + std::to_string(std::numeric_limits<int>::max()));
  // parties < 1: AsyncBarrier's ValueError "parties must be > 0", as Python's.
  return std::make_shared<BarrierObject>(
      call.executor,
      static_cast<int>(std::max<std::int64_t>(parties, std::numeric_limits<int>::min())),
      timeout_of(call, a, 2));
}

class EventObject final : public detail::HostedObject {
public:
  explicit EventObject(boost::asio::any_io_executor ex) : e_(std::move(ex)) {}
  std::vector<std::string> exposed() const override { return {"is_set", "set", "clear", "wait"}; }
  std::optional<detail::Parameters> parameters(std::string_view m) const override {
    if (m == "wait") return detail::Parameters{{"timeout"}, 0};
    return detail::Parameters{};
  }
  std::string repr() const override {
    return std::string("<threading.Event: ") + (e_.is_set() ? "set" : "unset") + ">";
  }
  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    auto a = items_of(call);
    if (m == "wait") {
      at_most(call, a, 1);
      e_.async_wait(call.caller, timeout_of(call, a, 0), finish_bool(std::move(done)));
    } else if (m == "set") {
      e_.set();
      done->done();
    } else if (m == "clear") {
      e_.clear();
      done->done();
    } else if (m == "is_set") {
      done->complete(e_.is_set());
    } else {
      detail::unknown_method(call, "Event", exposed());
    }
  }
  void release_connection(std::uint64_t connection) override { e_.release_connection(connection); }
  void cancel(Caller who, std::uint64_t) override { e_.cancel(who); }

private:
  detail::AsyncEvent e_;
};

// ---- the containers ---------------------------------------------------------------------------

// A proxy stored in a managed container (a list in a dict, CPython #76719, #91192) is a
// reference.
// - To an object of this server: the container holds one reference to it, taken over from the
//   park its sender made (claimed) and released when the element goes; each reader of the
//   element gets a proxy of its own (a new park).
// - To another manager's object: this server is that manager's client, as CPython's is (its
//   RebuildProxy connects and increfs). The container holds a proxy made by claiming the
//   sender's park there (the first one connects, with this process's key: managers.md, "Proxies
//   that travel"); each reader gets a reference parked there for it; dropping the element drops
//   the proxy (a decref there). If that manager is gone, storing fails naming it, and so does
//   reading the element.
class HostRefs final : public detail::RefHolder {
public:
  explicit HostRefs(detail::RefHost* host) : host_(host) {}
  void hold(const Item& ref) override {
    const detail::Ref& r = ref.as_ref();
    if (!host_->hosts(r.address)) {
      if (!host_->holds_foreign())
        throw TypeError("a proxy to " + r.type_id + " object " + std::to_string(r.id) + " at " +
                        r.address + " cannot be stored in a managed object: it is another " +
                        "manager's, and this server's ServerOptions::foreign_proxies is off");
      return hold_foreign(ref);
    }
    if (!host_->find(r.address, r.id))
      throw TypeError("a proxy to " + r.type_id + " object " + std::to_string(r.id) + " at " +
                      r.address + " cannot be stored in a managed object: the manager has no " +
                      "such object (it is gone)");
    host_->hold(r.id, r.ticket);
  }
  void drop(const Item& ref) override {
    const detail::Ref& r = ref.as_ref();
    if (host_->hosts(r.address)) return host_->drop(r.id);
    BaseProxy gone;  // its reference is released after the lock (a decref on its link)
    std::scoped_lock lock(m_);
    auto it = foreign_.find(Key{r.address, r.id});
    if (it == foreign_.end()) return;
    gone = std::move(it->second.proxies.back());
    it->second.proxies.pop_back();
    if (it->second.proxies.empty()) foreign_.erase(it);
  }
  // A ref written into a reply: a new reference parked for its receiver.
  void write(const detail::Ref& r, proto::Ref::Builder out) const {
    if (host_->hosts(r.address)) return host_->write_ref(r.id, out);
    BaseProxy p;
    {
      std::scoped_lock lock(m_);
      auto it = foreign_.find(Key{r.address, r.id});
      if (it == foreign_.end())
        throw ValueError("a proxy to " + r.type_id + " object " + std::to_string(r.id) + " at " +
                         r.address + " is not held by this managed object");
      p = it->second.proxies.back();
    }
    p._write_ref(out);
  }

private:
  using Key = std::pair<std::string, std::uint64_t>;

  // Each new ticket is claimed (the sender's park ends); a copy made here (ticket 0, or one
  // already claimed) shares the reference of a proxy held already.
  void hold_foreign(const Item& ref) {
    const detail::Ref& r = ref.as_ref();
    const Key key{r.address, r.id};
    {
      std::scoped_lock lock(m_);
      auto it = foreign_.find(key);
      if (it != foreign_.end() && (r.ticket == 0 || it->second.tickets.contains(r.ticket))) {
        it->second.proxies.push_back(it->second.proxies.back());
        return;
      }
    }
    // A ticket 0: the claim takes a new reference. Connects on first use: not under m_.
    BaseProxy p = internal::proxy_of(r);
    std::scoped_lock lock(m_);
    Held& h = foreign_[key];
    h.proxies.push_back(std::move(p));
    if (r.ticket != 0) h.tickets.insert(r.ticket);
  }

  struct Held {
    std::vector<BaseProxy> proxies;   // one per element that holds the object
    std::set<std::uint64_t> tickets;  // the parks claimed for them
  };
  detail::RefHost* host_;
  mutable std::mutex m_;
  std::map<Key, Held> foreign_;  // proxies to other managers' objects (m_)
};

class ContainerObject final : public detail::HostedObject,
                              public std::enable_shared_from_this<ContainerObject> {
public:
  ContainerObject(std::string_view typeid_, std::vector<Item> args, detail::Kwargs kwargs,
                  detail::RefHost* host)
      : refs_(host) {
    detail::ContainerOptions o;
    o.refs = &refs_;
    c_ = detail::make_container(typeid_, std::move(args), std::move(kwargs), o);
  }
  std::vector<std::string> exposed() const override { return c_->exposed(); }
  std::string repr() const override { return c_->repr(4096); }
  bool tracks_connections() const noexcept override { return false; }
  bool takes_keywords() const noexcept override { return true; }
  void call(const CallInfo& call, CompletionPtr done) override;

  // Writes `x` as the call's result: the refs in it (a proxy stored in the container) are
  // parked for the receiver.
  void complete(const CompletionPtr& done, const Item& x) const {
    if (done->keeps_items() || !detail::has_ref(x)) return complete_item(done, x);
    detail::write(x, done->value(),
                  [this](const detail::Ref& r, proto::Ref::Builder out) { refs_.write(r, out); });
    done->done();
  }

  detail::Container& container() noexcept { return *c_; }
  Item value() const { return c_->getvalue(); }
  std::string_view type_id() const noexcept { return c_->type_id(); }

private:
  HostRefs refs_;  // before c_: the container drops its refs through it as it goes
  std::unique_ptr<detail::Container> c_;
};

// Python's `Iterator` typeid over a managed dict: `iter(d)` is `d.__iter__()`, a method of
// DictProxy's _method_to_typeid_, so the server hosts the dict_keyiterator it returns and the
// caller gets an IteratorProxy. Live (detail::KeyIterator): it reads the dict at each step.
// Like Python's, it holds the dict (a dict whose proxies are gone lives on for it) until it is
// exhausted, and then lets go.
//
// Methods: Python's IteratorProxy exposes `__next__`, `send`, `throw`, `close`; a
// dict_keyiterator has only `__next__`, so the other three fail as in Python: the server's
// getattr fails outside the method (RemoteError, its text the AttributeError's).
// `__next__` returns the key; at the end it fails with StopIteration. `#NEXT`, troupe's own, is the
// typed proxy's step: a list of the key, or an empty list at the end (a std::optional's wire form).
class DictIteratorObject final : public detail::HostedObject {
public:
  explicit DictIteratorObject(std::shared_ptr<ContainerObject> dict)
      : dict_(std::move(dict)), it_(dict_->container().iter()) {}

  std::vector<std::string> exposed() const override {
    return {"__next__", "send", "throw", "close"};
  }
  std::string repr() const override { return "<dict_keyiterator object>"; }
  bool tracks_connections() const noexcept override { return false; }

  void call(const CallInfo& call, CompletionPtr done) override {
    const std::string_view m = call.method;
    if (m == "send" || m == "throw" || m == "close")
      throw detail::NotExposed("'dict_keyiterator' object has no attribute '" + std::string(m) +
                               "'");
    if (m != "__next__" && m != "#NEXT") detail::unknown_method(call, "Iterator", exposed());
    if (call.args.size() != 0) detail::bad_arity(call, "Iterator", 0);
    std::shared_ptr<ContainerObject> dict;  // kept for writing the key; let go outside mu_
    std::optional<Item> key;
    {
      std::scoped_lock lock(mu_);
      if (dict_) {
        key = it_->next();  // throws RuntimeError: the iterator stays as it is
        dict = dict_;
        if (!key) {
          // Exhausted: Python's iterator drops its dict (di_dict = NULL).
          it_.reset();
          dict_.reset();
        }
      }
    }
    if (!key) {
      if (m == "#NEXT") return complete_item(done, Item::list({}));
      throw StopIteration();
    }
    if (m == "#NEXT") return dict->complete(done, Item::list({std::move(*key)}));
    dict->complete(done, *key);
  }

private:
  mutable std::mutex mu_;
  std::shared_ptr<ContainerObject> dict_;  // null once exhausted
  std::unique_ptr<detail::KeyIterator> it_;
};

// The methods that iterate an argument (Python: list.extend, dict.update, the set operations).
bool iterates_arguments(std::string_view m) {
  static constexpr std::string_view kNames[] = {"extend",
                                                "__setitem__",  // a slice's
                                                "__iadd__",
                                                "__add__",
                                                "__radd__",
                                                "update",
                                                "__ior__",
                                                "__or__",
                                                "__ror__",
                                                "fromkeys",
                                                "union",
                                                "intersection",
                                                "difference",
                                                "issubset",
                                                "issuperset",
                                                "isdisjoint",
                                                "symmetric_difference",
                                                "__and__",
                                                "__rand__",
                                                "__sub__",
                                                "__rsub__",
                                                "__xor__",
                                                "__rxor__",
                                                "__iand__",
                                                "__isub__",
                                                "__ixor__",
                                                "difference_update",
                                                "intersection_update",
                                                "symmetric_difference_update"};
  for (std::string_view n : kNames)
    if (m == n) return true;
  return false;
}

// The values of the containers of this host that a call's arguments pass by proxy, for the
// call to iterate (detail::RefValues), as CPython's server iterates a proxy argument: copied
// here, before the call takes any container's lock (a container passed to its own method too:
// `l.extend(l)`).
detail::RefValues::Values ref_values(detail::RefHost* host, const std::vector<Item>& args) {
  detail::RefValues::Values out;
  if (host == nullptr) return out;
  for (const Item& x : args) {
    if (x.kind() != Kind::ref) continue;
    const detail::Ref& r = x.as_ref();
    const auto object = host->find(r.address, r.id);
    const auto* c = dynamic_cast<const ContainerObject*>(object.get());
    if (c == nullptr) continue;
    // Only what Python can iterate: a ValueProxy or a NamespaceProxy is not iterable.
    const std::string_view type = c->type_id();
    if (type == "list" || type == "dict" || type == "set" || type == "Array")
      out.emplace_back(std::pair(r.address, r.id), c->value());
  }
  return out;
}

void ContainerObject::call(const CallInfo& call, CompletionPtr done) {
  if (call.method == "#GETVALUE")
    return complete(done, done->keeps_items() ? c_->python_value() : c_->getvalue());
  if (call.method == "__iter__" && c_->type_id() == "dict") {
    if (call.args.size() != 0) detail::bad_arity(call, "dict", 0);
    return done->new_object("Iterator", std::make_shared<DictIteratorObject>(shared_from_this()));
  }
  auto a = items_of(call);
  detail::Kwargs kwargs = call.kwargs ? *call.kwargs : detail::Kwargs{};
  const ArgumentParks parks(call.refs, a, &kwargs);
  const detail::RefValues values(iterates_arguments(call.method) ? ref_values(call.refs, a)
                                                                 : detail::RefValues::Values{});
  if (call.method == "sort" && c_->type_id() == "list" && !call.kwargs) {
    // list.sort(*, key=None, reverse=False): troupe's wire carries no keywords, so a managed
    // list's sort takes them by position, in that order (CPython's dialect names them).
    if (a.size() > 2)
      throw TypeError(where(call) + " takes at most 2 arguments (key, reverse) (" +
                      std::to_string(a.size()) + " given)");
    const char* names[] = {"key", "reverse"};
    for (std::size_t i = 0; i < a.size(); ++i) kwargs.emplace_back(names[i], std::move(a[i]));
    return complete(done, c_->call(call.method, {}, std::move(kwargs)));
  }
  // What the call removed (a popped element) is dropped after its result is written: a
  // proxy it returns is parked first.
  std::vector<Item> removed;
  Item result = c_->call(call.method, std::move(a), std::move(kwargs), removed);
  try {
    complete(done, result);
  } catch (...) {
    c_->drop_all(removed);
    throw;
  }
  c_->drop_all(removed);
}

detail::TypeEntry container_entry(std::string typeid_) {
  detail::TypeEntry e;
  e.typeid_ = typeid_;
  e.create = [typeid_](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
    auto a = items_of(call);
    auto kwargs = call.kwargs ? *call.kwargs : detail::Kwargs{};
    const ArgumentParks parks(call.refs, a, &kwargs);
    const detail::RefValues values(ref_values(call.refs, a));  // list(p), dict(p)
    return std::make_shared<ContainerObject>(typeid_, std::move(a), std::move(kwargs), call.refs);
  };
  e.takes_keywords = true;
  return e;
}

template <class Make>
detail::TypeEntry entry(std::string typeid_, Make make, detail::Parameters parameters = {}) {
  detail::TypeEntry e;
  e.typeid_ = std::move(typeid_);
  e.create = std::move(make);
  e.create_parameters = std::move(parameters);
  return e;
}

}  // namespace

void register_sync_types(Registry& registry) {
  for (const char* q : {"Queue", "JoinableQueue"})
    registry.add(entry(q,
                       [](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
                         auto a = items_of(call);
                         at_most(call, a, 1);
                         return std::make_shared<QueueObject>(call.executor,
                                                              integer(call, a, 0, 0, "maxsize"));
                       },
                       {{"maxsize"}, 0}));
  registry.add(entry("Lock", [](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
    at_most(call, items_of(call), 0);
    return std::make_shared<AcquirerObject<detail::AsyncLock>>("Lock", call.executor);
  }));
  registry.add(entry("RLock", [](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
    at_most(call, items_of(call), 0);
    return std::make_shared<AcquirerObject<detail::AsyncRLock>>("RLock", call.executor);
  }));
  registry.add(entry("Semaphore",
                     [](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
                       auto a = items_of(call);
                       at_most(call, a, 1);
                       return std::make_shared<AcquirerObject<detail::AsyncSemaphore>>(
                           "Semaphore", call.executor, integer(call, a, 0, 1, "value"));
                     },
                     {{"value"}, 0}));
  registry.add(entry("BoundedSemaphore",
                     [](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
                       auto a = items_of(call);
                       at_most(call, a, 1);
                       return std::make_shared<AcquirerObject<detail::AsyncBoundedSemaphore>>(
                           "BoundedSemaphore", call.executor, integer(call, a, 0, 1, "value"));
                     },
                     {{"value"}, 0}));
  registry.add(entry("Condition", make_condition, {{"lock"}, 0}));
  registry.add(entry("Barrier", make_barrier, {{"parties", "action", "timeout"}, 1}));
  registry.add(entry("Event", [](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
    at_most(call, items_of(call), 0);
    return std::make_shared<EventObject>(call.executor);
  }));
  for (const char* c : {"dict", "list", "set", "Namespace", "Value", "Array"})
    registry.add(container_entry(c));
  // Python: register('Iterator', proxytype=IteratorProxy, create_method=False): the objects
  // iter(dict) returns; no client creates one.
  detail::TypeEntry iterator;
  iterator.typeid_ = "Iterator";
  iterator.create_method = false;
  registry.add(std::move(iterator));
  register_pool_types(registry);
}

void register_shared_queue(Registry& registry, std::string typeid_, std::ptrdiff_t maxsize) {
  // Made on the first create, on the server's executor; the same object for every create after
  // by that server (a later server in this process, on another executor, gets a new queue).
  struct Shared {
    std::mutex mutex;
    boost::asio::any_io_executor executor;
    std::shared_ptr<QueueObject> queue;
  };
  auto shared = std::make_shared<Shared>();
  registry.add(
      entry(std::move(typeid_),
            [shared, maxsize](const CallInfo& call) -> std::shared_ptr<detail::HostedObject> {
              at_most(call, items_of(call), 0);
              std::scoped_lock lock(shared->mutex);
              if (!shared->queue || shared->executor != call.executor) {
                shared->queue = std::make_shared<QueueObject>(call.executor, maxsize);
                shared->executor = call.executor;
              }
              return shared->queue;
            }));
}

}  // namespace troupe::multiprocessing::managers
