// troupe/multiprocessing/managers/sync_manager.hpp — Python's `SyncManager` (what
// `multiprocessing.Manager()` returns) and the proxies of its typeids that are built so far.
//
//   auto m = mp::Manager();               // Python: m = multiprocessing.Manager()
//   auto q = m->Queue<std::string>();      // QueueProxy<std::string>: put/get as Python's
//   q.put("job");
//   auto ev = m->Event();
//   ev.set();
//   auto d = m->dict();                   // untyped: d._callmethod<int>("get", key, default)
//
// Values in a managed queue are any codec value; the proxy's type decides how they are read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <variant>

#include "troupe/multiprocessing/managers/builtins.hpp"
#include "troupe/multiprocessing/managers/manager.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing::managers {

namespace detail {
/// A troupe::Timeout as the seconds a manager's method takes (none: forever).
inline std::optional<double> seconds_arg(const Timeout& t) {
  if (t.is_forever()) return std::nullopt;
  return static_cast<double>(t.remaining().count()) / 1e9;
}
}  // namespace detail

/// Python: the proxy of a managed `queue.Queue` (SyncManager's Queue and JoinableQueue).
/// @throws queue::Empty, queue::Full, queue::ShutDown, ValueError as Python's; EOFError if the
/// server is gone.
template <class T>
class QueueProxy : public BaseProxy {
public:
  QueueProxy() = default;
  explicit QueueProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `put(item, block=True, timeout=None)`.
  void put(const T& item, bool block = true, const Timeout& timeout = {}) const {
    _callmethod("put", item, block, detail::seconds_arg(timeout));
  }
  /// Python: `get(block=True, timeout=None)`.
  T get(bool block = true, const Timeout& timeout = {}) const {
    return _callmethod<T>("get", block, detail::seconds_arg(timeout));
  }
  void put_nowait(const T& item) const { _callmethod("put_nowait", item); }
  T get_nowait() const { return _callmethod<T>("get_nowait"); }
  std::size_t qsize() const { return static_cast<std::size_t>(_callmethod<std::int64_t>("qsize")); }
  bool empty() const { return _callmethod<bool>("empty"); }
  bool full() const { return _callmethod<bool>("full"); }
  void task_done() const { _callmethod("task_done"); }
  void join() const { _callmethod("join"); }
  /// Python 3.13: `shutdown(immediate=False)`; reaches getters blocked in other processes.
  void shutdown(bool immediate = false) const { _callmethod("shutdown", immediate); }
};

/// Python: `AcquirerProxy`, the proxy of a managed Lock, RLock, Semaphore or BoundedSemaphore.
/// Lockable, so `std::scoped_lock guard{lock};` is `with lock:`.
class AcquirerProxy : public BaseProxy {
public:
  AcquirerProxy() = default;
  explicit AcquirerProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `acquire(blocking=True, timeout=None)`.
  bool acquire(bool blocking = true, const Timeout& timeout = {}) const {
    return _callmethod<bool>("acquire", blocking, detail::seconds_arg(timeout));
  }
  /// Python: `release()` (a Semaphore's `release(n)` through `_callmethod`).
  void release() const { _callmethod("release"); }
  /// Python 3.14: `locked()` (a semaphore: no unit free).
  bool locked() const { return _callmethod<bool>("locked"); }

  void lock() const { (void)acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
};

/// Python: `EventProxy`.
class EventProxy : public BaseProxy {
public:
  EventProxy() = default;
  explicit EventProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  bool is_set() const { return _callmethod<bool>("is_set"); }
  void set() const { _callmethod("set"); }
  void clear() const { _callmethod("clear"); }
  /// Python: `wait(timeout=None)`: whether the event was set.
  bool wait(const Timeout& timeout = {}) const {
    return _callmethod<bool>("wait", detail::seconds_arg(timeout));
  }
};

/// Python: `multiprocessing.managers.SyncManager`. Its built-in typeids are registered in its
/// registry in every process that links troupe (spawned servers find them too).
class SyncManager : public Manager<SyncManager> {
public:
  explicit SyncManager(ManagerOptions options = {}) : Manager(std::move(options)) { types(); }

  template <class T>
  QueueProxy<T> Queue(std::ptrdiff_t maxsize = 0) {
    return QueueProxy<T>(create("Queue", static_cast<std::int64_t>(maxsize)));
  }
  template <class T>
  QueueProxy<T> JoinableQueue(std::ptrdiff_t maxsize = 0) {
    return QueueProxy<T>(create("JoinableQueue", static_cast<std::int64_t>(maxsize)));
  }
  AcquirerProxy Lock() { return AcquirerProxy(create("Lock")); }
  AcquirerProxy RLock() { return AcquirerProxy(create("RLock")); }
  AcquirerProxy Semaphore(std::int64_t value = 1) {
    return AcquirerProxy(create("Semaphore", value));
  }
  AcquirerProxy BoundedSemaphore(std::int64_t value = 1) {
    return AcquirerProxy(create("BoundedSemaphore", value));
  }
  EventProxy Event() { return EventProxy(create("Event")); }
  /// Python: `dict()`, `list()`, `Namespace()`: untyped proxies for now (`_callmethod`).
  BaseProxy dict() { return create("dict"); }
  BaseProxy list() { return create("list"); }
  BaseProxy Namespace() { return create("Namespace"); }

  /// Registers the built-in typeids (once per process; the constructor calls it).
  static void types();
};

}  // namespace troupe::multiprocessing::managers

namespace troupe::multiprocessing {

/// Python: `multiprocessing.Manager()`: a started SyncManager (its server in a child process).
std::unique_ptr<managers::SyncManager> Manager(managers::ManagerOptions options = {});

}  // namespace troupe::multiprocessing

namespace troupe::multiprocessing::managers::detail {
/// The codec of a built-in proxy type P: a Value.ref, as BaseProxy's (it travels alike).
template <class P>
struct BuiltinProxyCodec {
  static void encode(const P& p, proto::Value::Builder v) { p._write_ref(v.initRef()); }
  static P decode(proto::Value::Reader v) {
    codec_detail::expect(v, codec_detail::Which::REF, Codec<P>::signature());
    return P(BaseProxy::_from_ref(v.getRef()));
  }
};
}  // namespace troupe::multiprocessing::managers::detail

template <class T>
struct troupe::Codec<troupe::multiprocessing::managers::QueueProxy<T>>
    : troupe::multiprocessing::managers::detail::BuiltinProxyCodec<
          troupe::multiprocessing::managers::QueueProxy<T>> {
  static std::string signature() { return "QueueProxy<" + troupe::Codec<T>::signature() + ">"; }
};

template <>
struct troupe::Codec<troupe::multiprocessing::managers::AcquirerProxy>
    : troupe::multiprocessing::managers::detail::BuiltinProxyCodec<
          troupe::multiprocessing::managers::AcquirerProxy> {
  static std::string signature() { return "AcquirerProxy"; }
};

template <>
struct troupe::Codec<troupe::multiprocessing::managers::EventProxy>
    : troupe::multiprocessing::managers::detail::BuiltinProxyCodec<
          troupe::multiprocessing::managers::EventProxy> {
  static std::string signature() { return "EventProxy"; }
};
