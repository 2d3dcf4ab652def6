// troupe/multiprocessing/managers/sync_manager.hpp — Python's `SyncManager` (what
// `multiprocessing.Manager()` returns) and the proxies of its typeids that are built so far.
//
//   auto m = mp::Manager();               // Python: m = multiprocessing.Manager()
//   auto q = m->Queue<std::string>();      // QueueProxy<std::string>: put/get as Python's
//   q.put("job");
//   auto ev = m->Event();
//   ev.set();
//   auto d = m->dict<std::string, int>(); // DictProxy: d["a"] = 1; int a = d["a"];
//   auto c = m->Condition();              // ConditionProxy: std::scoped_lock g{c}; c.wait();
//
// Values in a managed object are any codec value; the proxy's type decides how they are read
// (a DictProxy<std::string, int> reads a value that is not an int as a ValueError naming both).
// The untyped forms (m->dict(), m->list()) give a BaseProxy for `_callmethod`.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/builtins.hpp"
#include "troupe/multiprocessing/managers/detail/proxy_args.hpp"
#include "troupe/multiprocessing/managers/manager.hpp"
#include "troupe/multiprocessing/managers/pool_proxy.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing::managers {

namespace detail {}  // namespace detail

/// Python: the proxy of a managed `queue.Queue` (SyncManager's Queue and JoinableQueue).
/// @throws queue::Empty, queue::Full, queue::ShutDown, ValueError as Python's; EOFError if the
/// server is gone.
template <class T>
class QueueProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "QueueProxy<" + troupe::Codec<T>::signature() + ">";
  }
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
  /// put(item), pipelined: returns at once (the item encoded), and many calls can be in flight
  /// on one connection, run by the server in their order. Completion
  /// void(std::exception_ptr, std::monostate), as _callmethod's async_callmethod.
  template <class CompletionToken>
  auto async_put(const T& item, CompletionToken&& token) const {
    return async_callmethod<std::monostate>(
        "put", std::tuple<const T&, bool, detail::SecondsArg>(item, true, detail::SecondsArg{}),
        std::forward<CompletionToken>(token));
  }
  /// get(), pipelined: completion void(std::exception_ptr, T) once an item comes (a getter
  /// that waits holds no server thread), as async_callmethod.
  template <class CompletionToken>
  auto async_get(CompletionToken&& token) const {
    return async_callmethod<T>("get",
                               std::tuple<bool, detail::SecondsArg>(true, detail::SecondsArg{}),
                               std::forward<CompletionToken>(token));
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
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "AcquirerProxy"; }
  AcquirerProxy() = default;
  explicit AcquirerProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `acquire(blocking=True, timeout=None)`.
  bool acquire(bool blocking = true, const Timeout& timeout = {}) const {
    // As Python's proxy: no timeout argument for none (a CPython lock's acquire takes -1 for
    // forever, not None).
    if (timeout.is_forever()) return _callmethod<bool>("acquire", blocking);
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
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "EventProxy"; }
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

/// Python: `ConditionProxy`, the proxy of a managed Condition. Lockable (`std::scoped_lock`
/// is `with cond:`). The lock's owner is the calling thread's lane, as a thread in Python.
/// @throws RuntimeError "cannot wait on un-acquired lock" / "cannot notify on un-acquired lock".
class ConditionProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "ConditionProxy"; }
  ConditionProxy() = default;
  explicit ConditionProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `acquire(blocking=True, timeout=None)`.
  bool acquire(bool blocking = true, const Timeout& timeout = {}) const {
    // As Python's proxy: no timeout argument for none (a CPython lock's acquire takes -1 for
    // forever, not None).
    if (timeout.is_forever()) return _callmethod<bool>("acquire", blocking);
    return _callmethod<bool>("acquire", blocking, detail::seconds_arg(timeout));
  }
  void release() const { _callmethod("release"); }
  /// Python 3.14: `locked()`: whether the Condition's lock is held (by anyone).
  bool locked() const { return _callmethod<bool>("locked"); }
  /// Python: `wait(timeout=None)`: true if notified, false on timeout; returns holding the
  /// lock again.
  bool wait(const Timeout& timeout = {}) const {
    return _callmethod<bool>("wait", detail::seconds_arg(timeout));
  }
  /// Python: `wait_for(predicate, timeout=None)`, on the client as Python's proxy does: waits
  /// until `pred()` is true (checked first, then after each wake-up) or the time is over;
  /// returns the predicate's last value.
  template <class Pred>
  bool wait_for(Pred pred, const Timeout& timeout = {}) const {
    bool result = static_cast<bool>(pred());
    const auto deadline = timeout.deadline();
    while (!result) {
      if (deadline) {
        const auto left = *deadline - Timeout::clock::now();
        if (left <= std::chrono::nanoseconds(0)) break;
        (void)wait(Timeout(std::chrono::duration_cast<std::chrono::nanoseconds>(left)));
      } else {
        (void)wait();
      }
      result = static_cast<bool>(pred());
    }
    return result;
  }
  /// Python: `notify(n=1)`, `notify_all()`.
  void notify(std::int64_t n = 1) const { _callmethod("notify", n); }
  void notify_all() const { _callmethod("notify_all"); }

  void lock() const { (void)acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
};

/// Python: `BarrierProxy`, the proxy of a managed Barrier.
/// @throws threading::BrokenBarrierError from wait() once the barrier is broken.
class BarrierProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "BarrierProxy"; }
  BarrierProxy() = default;
  explicit BarrierProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `wait(timeout=None)` (none: the barrier's own): this party's index, 0 to
  /// parties - 1.
  std::size_t wait(const Timeout& timeout = {}) const {
    return static_cast<std::size_t>(
        _callmethod<std::int64_t>("wait", detail::seconds_arg(timeout)));
  }
  void abort() const { _callmethod("abort"); }
  void reset() const { _callmethod("reset"); }
  /// Python: `parties`, `n_waiting`, `broken` (read through `__getattribute__`).
  std::size_t parties() const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("__getattribute__", "parties"));
  }
  std::size_t n_waiting() const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("__getattribute__", "n_waiting"));
  }
  bool broken() const { return _callmethod<bool>("__getattribute__", "broken"); }
};

/// Python: `ValueProxy`, the proxy of a managed `Value(typecode, value)` (a plain holder: its
/// typecode is not checked, as in Python).
template <class T>
class ValueProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "ValueProxy<" + troupe::Codec<T>::signature() + ">";
  }
  ValueProxy() = default;
  explicit ValueProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// Python: `get()`, `set(value)`, the `value` property.
  T get() const { return _callmethod<T>("get"); }
  void set(const T& value) const { _callmethod("set", value); }
  T value() const { return get(); }
  void value(const T& v) const { set(v); }
};

/// Python: `ArrayProxy`, the proxy of a managed `Array(typecode, sequence)` (an array.array:
/// values are checked against the typecode, with Python's OverflowError and TypeError).
/// Iterable, live, by index.
template <class T>
class ArrayProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "ArrayProxy<" + troupe::Codec<T>::signature() + ">";
  }
  ArrayProxy() = default;
  explicit ArrayProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// Python: `len(a)`.
  std::size_t size() const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("__len__"));
  }
  /// Python: `a[i]` (negative from the end). @throws IndexError "array index out of range".
  T get(std::int64_t i) const { return _callmethod<T>("__getitem__", i); }
  void set(std::int64_t i, const T& v) const { _callmethod("__setitem__", i, v); }
  detail::ItemRef<ArrayProxy, std::int64_t, T> operator[](std::int64_t i) const {
    return {*this, i};
  }
  /// Python: `a[start:stop:step]` (none: the end), a copy.
  std::vector<T> slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                       std::optional<std::int64_t> step = std::nullopt) const {
    return _callmethod<std::vector<T>>("__getitem__", detail::SliceArg{start, stop, step});
  }
  /// Python: `a[start:stop:step] = values` (an extended slice needs as many values as it has
  /// elements; ValueError else).
  void set_slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                 const std::vector<T>& values,
                 std::optional<std::int64_t> step = std::nullopt) const {
    _callmethod("__setitem__", detail::SliceArg{start, stop, step}, detail::ListArg<T>{&values});
  }
  /// Python: `list(a)`, in one call.
  std::vector<T> tolist() const { return _getvalue<std::vector<T>>(); }
  detail::IndexIterator<ArrayProxy, T> begin() const {
    return detail::IndexIterator<ArrayProxy, T>(detail::ByIndex<ArrayProxy, T>{this});
  }
  detail::IndexIterator<ArrayProxy, T> end() const { return {}; }
};

/// Python: `ListProxy`, the proxy of a managed list whose elements are read as T. Iterable,
/// live, by index (a change made during the iteration is seen, as in Python). Errors are
/// Python's (IndexError, ValueError "list.remove(x): x not in list", ...).
template <class T>
class ListProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "ListProxy<" + troupe::Codec<T>::signature() + ">";
  }
  ListProxy() = default;
  explicit ListProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  std::size_t size() const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("__len__"));
  }
  bool contains(const T& x) const { return _callmethod<bool>("__contains__", x); }
  T get(std::int64_t i) const { return _callmethod<T>("__getitem__", i); }
  void set(std::int64_t i, const T& x) const { _callmethod("__setitem__", i, x); }
  detail::ItemRef<ListProxy, std::int64_t, T> operator[](std::int64_t i) const {
    return {*this, i};
  }
  /// Python: `del l[i]`.
  void erase(std::int64_t i) const { _callmethod("__delitem__", i); }
  /// Python: `l[start:stop:step]`, a copy; `l[start:stop:step] = values`; `del l[a:b:c]`.
  std::vector<T> slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                       std::optional<std::int64_t> step = std::nullopt) const {
    return _callmethod<std::vector<T>>("__getitem__", detail::SliceArg{start, stop, step});
  }
  void set_slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                 const std::vector<T>& values,
                 std::optional<std::int64_t> step = std::nullopt) const {
    _callmethod("__setitem__", detail::SliceArg{start, stop, step}, detail::ListArg<T>{&values});
  }
  void erase_slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                   std::optional<std::int64_t> step = std::nullopt) const {
    _callmethod("__delitem__", detail::SliceArg{start, stop, step});
  }

  void append(const T& x) const { _callmethod("append", x); }
  void extend(const std::vector<T>& xs) const { _callmethod("extend", detail::ListArg<T>{&xs}); }
  void insert(std::int64_t i, const T& x) const { _callmethod("insert", i, x); }
  /// Python: `pop(i=-1)`. @throws IndexError "pop from empty list" / "pop index out of range".
  T pop(std::int64_t i = -1) const { return _callmethod<T>("pop", i); }
  /// @throws ValueError "list.remove(x): x not in list".
  void remove(const T& x) const { _callmethod("remove", x); }
  /// Python: `index(x[, start[, stop]])`. @throws ValueError "x is not in list".
  std::size_t index(const T& x, std::int64_t start = 0,
                    std::int64_t stop = std::numeric_limits<std::int64_t>::max()) const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("index", x, start, stop));
  }
  std::size_t count(const T& x) const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("count", x));
  }
  /// Python: `sort(key=None, reverse=False)`: no key function crosses a process.
  void sort(bool reverse = false) const { _callmethod("sort", std::monostate{}, reverse); }
  void reverse() const { _callmethod("reverse"); }
  void clear() const { _callmethod("clear"); }
  /// Python 3.14: `copy()`: a plain list.
  std::vector<T> copy() const { return _callmethod<std::vector<T>>("copy"); }
  /// Python: `list(reversed(l))`, in one call.
  std::vector<T> reversed() const { return _callmethod<std::vector<T>>("__reversed__"); }

  /// Python: `l += xs`, `l *= n` (in place, on the server); `l + xs`, `l * n`: plain lists.
  const ListProxy& operator+=(const std::vector<T>& xs) const {
    _callmethod("__iadd__", detail::ListArg<T>{&xs});
    return *this;
  }
  const ListProxy& operator*=(std::int64_t n) const {
    _callmethod("__imul__", n);
    return *this;
  }
  std::vector<T> operator+(const std::vector<T>& xs) const {
    return _callmethod<std::vector<T>>("__add__", detail::ListArg<T>{&xs});
  }
  std::vector<T> operator*(std::int64_t n) const {
    return _callmethod<std::vector<T>>("__mul__", n);
  }
  friend std::vector<T> operator*(std::int64_t n, const ListProxy& l) {
    return l.template _callmethod<std::vector<T>>("__rmul__", n);
  }

  detail::IndexIterator<ListProxy, T> begin() const {
    return detail::IndexIterator<ListProxy, T>(detail::ByIndex<ListProxy, T>{this});
  }
  detail::IndexIterator<ListProxy, T> end() const { return {}; }
};

/// Python's `IteratorProxy`: a proxy to a hosted iterator (typeid "Iterator"), what
/// DictProxy::iter() returns, whose elements are read as T; or to an object of a registered
/// class that exposes `next` (or `__next__`), returning a T or a std::optional<T> (none, or
/// troupe::StopIteration, at the end): Python's `register('baz', baz, proxytype=IteratorProxy)`
/// is `register_<Baz>("baz")`, then `IteratorProxy<T>(m.create("baz"))`. The iterator is an object
/// of the manager (counted by number_of_objects()) until its last proxy goes; it holds its dict as
/// Python's does, so it runs on after the dict's proxies are gone, and lets go of the dict once
/// exhausted. Untyped, `_callmethod("__next__")` is Python's `next(it)`: it fails at the end
/// with troupe::StopIteration, and `send`,
/// `throw`, `close` are exposed as in Python but a dict's iterator has none (AttributeError).
template <class T>
class IteratorProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "IteratorProxy<" + troupe::Codec<T>::signature() + ">";
  }
  IteratorProxy() = default;
  explicit IteratorProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `next(it)`: the next element; none at the end (where Python raises StopIteration),
  /// and at every call after. @throws RuntimeError "dictionary changed size during iteration"
  /// (and at every call after) when the dict's size changed since iter() or the last step;
  /// "dictionary keys changed during iteration" when a key was replaced at the same size so
  /// that more keys come than the dict had.
  std::optional<T> next() const { return _callmethod<std::optional<T>>("#NEXT"); }
  /// Python: `for x in it` / `list(it)`: a range whose steps are next() (input iterators: one
  /// pass, shared with next()).
  detail::NextIterator<IteratorProxy, T> begin() const {
    return detail::NextIterator<IteratorProxy, T>(detail::ByNext<IteratorProxy, T>{this});
  }
  detail::NextIterator<IteratorProxy, T> end() const { return {}; }
};

/// Python: `DictProxy`, the proxy of a managed dict whose keys are read as K and values as V.
/// Keys keep Python's insertion order on the server; the results that are a whole dict come
/// as M (default std::map<K, V>: sorted; items() keeps the order). @throws KeyError for a
/// missing key, as Python's.
template <class K, class V>
class DictProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "DictProxy<" + troupe::Codec<K>::signature() + "," + troupe::Codec<V>::signature() + ">";
  }
  DictProxy() = default;
  explicit DictProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  std::size_t size() const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("__len__"));
  }
  bool contains(const K& k) const { return _callmethod<bool>("__contains__", k); }
  /// Python: `d[k]` (read: KeyError if missing) and `d[k] = v`.
  detail::ItemRef<DictProxy, K, V> operator[](const K& k) const { return {*this, k}; }
  /// Python: `del d[k]`.
  void erase(const K& k) const { _callmethod("__delitem__", k); }
  /// Python: `get(k)`: none if missing; `get(k, default)`.
  std::optional<V> get(const K& k) const { return _callmethod<detail::NoneOr<V>>("get", k).value; }
  V get(const K& k, const V& dflt) const { return _callmethod<V>("get", k, dflt); }
  void set(const K& k, const V& v) const { _callmethod("__setitem__", k, v); }
  /// Python: `list(keys())`, `list(values())`, `list(items())`, in insertion order.
  std::vector<K> keys() const { return _callmethod<std::vector<K>>("keys"); }
  std::vector<V> values() const { return _callmethod<std::vector<V>>("values"); }
  std::vector<std::pair<K, V>> items() const {
    return _callmethod<std::vector<std::pair<K, V>>>("items");
  }
  /// Python: `list(reversed(d))`.
  std::vector<K> reversed() const { return _callmethod<std::vector<K>>("__reversed__"); }
  /// Python: `iter(d)`: a live iterator over the keys, in insertion order, hosted by the manager
  /// (CPython's `Iterator` typeid). It sees the dict as it is at each step; a change of the
  /// dict's size between steps makes the next step throw RuntimeError (IteratorProxy::next()).
  IteratorProxy<K> iter() const { return _callmethod<IteratorProxy<K>>("__iter__"); }
  /// Python: `update(other)` (a std::map, std::unordered_map, ...).
  template <class M>
  void update(const M& other) const {
    _callmethod("update", other);
  }
  /// Python: `pop(k)` (KeyError if missing), `pop(k, default)`.
  V pop(const K& k) const { return _callmethod<V>("pop", k); }
  V pop(const K& k, const V& dflt) const { return _callmethod<V>("pop", k, dflt); }
  /// Python: `popitem()`, the last inserted. @throws KeyError "popitem(): dictionary is empty".
  std::pair<K, V> popitem() const { return _callmethod<std::pair<K, V>>("popitem"); }
  /// Python: `setdefault(k, default)`: the value of k, inserting `dflt` if missing.
  V setdefault(const K& k, const V& dflt) const { return _callmethod<V>("setdefault", k, dflt); }
  void clear() const { _callmethod("clear"); }
  /// Python: `copy()`: a plain dict.
  template <class M = std::map<K, V>>
  M copy() const {
    return _callmethod<M>("copy");
  }
  /// Python: `d.fromkeys(keys, value)`: a new plain dict (d is not touched).
  template <class M = std::map<K, V>>
  M fromkeys(const std::vector<K>& keys, const V& value) const {
    return _callmethod<M>("fromkeys", detail::ListArg<K>{&keys}, value);
  }
  /// Python: `d.fromkeys(keys)`: each value None (std::monostate).
  template <class M2 = std::map<K, std::monostate>>
  M2 fromkeys(const std::vector<K>& keys) const {
    return _callmethod<M2>("fromkeys", detail::ListArg<K>{&keys});
  }
  /// Python 3.9: `d | other` (other's values win), `other | d` (d's win): plain dicts;
  /// `d |= other`: in place.
  template <class M>
  M operator|(const M& other) const {
    return _callmethod<M>("__or__", other);
  }
  template <class M>
  requires(!std::is_base_of_v<BaseProxy, M>) friend M operator|(const M& other,
                                                                const DictProxy& d) {
    return d.template _callmethod<M>("__ror__", other);
  }
  template <class M>
  const DictProxy& operator|=(const M& other) const {
    _callmethod("__ior__", other);
    return *this;
  }
};

/// Python 3.14: `SetProxy`, the proxy of a managed set whose elements are read as T. Operands
/// are plain sets (std::set<T>); results that are sets come as std::set<T>. @throws KeyError
/// from remove() of a missing element and pop() of an empty set, as Python's.
template <class T>
class SetProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() {
    return "SetProxy<" + troupe::Codec<T>::signature() + ">";
  }
  using Set = std::set<T>;
  SetProxy() = default;
  explicit SetProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  std::size_t size() const {
    return static_cast<std::size_t>(_callmethod<std::int64_t>("__len__"));
  }
  bool contains(const T& x) const { return _callmethod<bool>("__contains__", x); }
  void add(const T& x) const { _callmethod("add", x); }
  void discard(const T& x) const { _callmethod("discard", x); }
  void remove(const T& x) const { _callmethod("remove", x); }
  T pop() const { return _callmethod<T>("pop"); }
  void clear() const { _callmethod("clear"); }
  /// Python: `copy()`: a plain set.
  Set copy() const { return _callmethod<Set>("copy"); }
  /// Python: `update(iterable)`.
  void update(const std::vector<T>& xs) const { _callmethod("update", detail::ListArg<T>{&xs}); }
  void update(const Set& xs) const { _callmethod("update", xs); }

  /// Python: `union`, `intersection`, `difference`, `symmetric_difference` (plain sets) and
  /// their `_update` forms (in place).
  Set union_(const Set& o) const { return _callmethod<Set>("union", o); }
  Set intersection(const Set& o) const { return _callmethod<Set>("intersection", o); }
  Set difference(const Set& o) const { return _callmethod<Set>("difference", o); }
  Set symmetric_difference(const Set& o) const {
    return _callmethod<Set>("symmetric_difference", o);
  }
  void intersection_update(const Set& o) const { _callmethod("intersection_update", o); }
  void difference_update(const Set& o) const { _callmethod("difference_update", o); }
  void symmetric_difference_update(const Set& o) const {
    _callmethod("symmetric_difference_update", o);
  }
  bool isdisjoint(const Set& o) const { return _callmethod<bool>("isdisjoint", o); }
  bool issubset(const Set& o) const { return _callmethod<bool>("issubset", o); }
  bool issuperset(const Set& o) const { return _callmethod<bool>("issuperset", o); }

  /// Python: `s | o`, `o | s`, `s & o`, ... with a plain set: plain sets; `s |= o`, ...: in
  /// place; `s < o`, `s <= o`, `s > o`, `s >= o`: subset and superset tests.
  Set operator|(const Set& o) const { return _callmethod<Set>("__or__", o); }
  Set operator&(const Set& o) const { return _callmethod<Set>("__and__", o); }
  Set operator-(const Set& o) const { return _callmethod<Set>("__sub__", o); }
  Set operator^(const Set& o) const { return _callmethod<Set>("__xor__", o); }
  friend Set operator|(const Set& o, const SetProxy& s) {
    return s.template _callmethod<Set>("__ror__", o);
  }
  friend Set operator&(const Set& o, const SetProxy& s) {
    return s.template _callmethod<Set>("__rand__", o);
  }
  friend Set operator-(const Set& o, const SetProxy& s) {
    return s.template _callmethod<Set>("__rsub__", o);
  }
  friend Set operator^(const Set& o, const SetProxy& s) {
    return s.template _callmethod<Set>("__rxor__", o);
  }
  const SetProxy& operator|=(const Set& o) const { return in_place("__ior__", o); }
  const SetProxy& operator&=(const Set& o) const { return in_place("__iand__", o); }
  const SetProxy& operator-=(const Set& o) const { return in_place("__isub__", o); }
  const SetProxy& operator^=(const Set& o) const { return in_place("__ixor__", o); }
  bool operator<(const Set& o) const { return _callmethod<bool>("__lt__", o); }
  bool operator<=(const Set& o) const { return _callmethod<bool>("__le__", o); }
  bool operator>(const Set& o) const { return _callmethod<bool>("__gt__", o); }
  bool operator>=(const Set& o) const { return _callmethod<bool>("__ge__", o); }

private:
  const SetProxy& in_place(std::string_view method, const Set& o) const {
    _callmethod(method, o);
    return *this;
  }
};

/// Python: `NamespaceProxy`, the proxy of a managed Namespace: attributes by name, each read
/// as the type asked for. All names live on the server (Python keeps names that start with '_'
/// on the local proxy; here they are the server's too, and left out of its repr as Python's).
class NamespaceProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "NamespaceProxy"; }
  NamespaceProxy() = default;
  explicit NamespaceProxy(BaseProxy p) : BaseProxy(std::move(p)) {}
  /// Python: `getattr(ns, name)`. @throws AttributeError if there is no such attribute.
  template <class T>
  T get(std::string_view name) const {
    return _callmethod<T>("__getattribute__", name);
  }
  /// Python: `setattr(ns, name, value)`, `delattr(ns, name)` (AttributeError if missing).
  template <class T>
  void set(std::string_view name, const T& value) const {
    _callmethod("__setattr__", name, value);
  }
  void del(std::string_view name) const { _callmethod("__delattr__", name); }
  /// Python: `hasattr(ns, name)`.
  bool has(std::string_view name) const {
    try {
      (void)_callmethod<detail::Discard>("__getattribute__", name);
      return true;
    } catch (const AttributeError&) {
      return false;
    }
  }
};

/// Python: `multiprocessing.managers.SyncManager`. Its built-in typeids are registered in its
/// registry in every process that links troupe (spawned servers find them too).
class SyncManager : public Manager<SyncManager> {
public:
  explicit SyncManager(ManagerOptions options = {}) : Manager(std::move(options)) { types(); }
  /// Python: `SyncManager(address, authkey)`.
  SyncManager(std::optional<Address> address, std::optional<AuthenticationString> authkey,
              ManagerOptions options = {})
      : SyncManager(with_address(std::move(address), std::move(authkey), std::move(options))) {}

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
  /// Python: `Condition(lock=None)`: over a new RLock, or over `lock`, a Lock or RLock of this
  /// manager (acquiring one is acquiring the other). @throws ValueError for a lock of another
  /// manager, TypeError for a Semaphore.
  ConditionProxy Condition() { return ConditionProxy(create("Condition")); }
  ConditionProxy Condition(const AcquirerProxy& lock) {
    return ConditionProxy(create("Condition", static_cast<const BaseProxy&>(lock)));
  }
  /// Python: `Barrier(parties, action=None, timeout=None)`: no action (code does not travel;
  /// the party whose wait() returns 0 can run it). @throws ValueError if parties < 1.
  BarrierProxy Barrier(std::int64_t parties, const Timeout& timeout = {}) {
    return BarrierProxy(create("Barrier", parties, std::monostate{}, detail::seconds_arg(timeout)));
  }
  /// Python: `Value(typecode, value)`: a holder; its typecode is kept but not checked.
  template <class T>
  ValueProxy<T> Value(std::string_view typecode, const T& value) {
    return ValueProxy<T>(create("Value", typecode, value));
  }
  /// Python: `Array(typecode, sequence)`: an array.array (values checked against typecode:
  /// b, B, u, h, H, i, I, l, L, q, Q, f or d).
  template <class T>
  ArrayProxy<T> Array(std::string_view typecode, const std::vector<T>& values) {
    return ArrayProxy<T>(create("Array", typecode, detail::ListArg<T>{&values}));
  }
  /// Python: `dict()`, `dict(mapping)` with typed keys and values: `m.dict<std::string,
  /// int>()`. Without template arguments: the untyped proxy (`_callmethod`).
  template <class K, class V>
  DictProxy<K, V> dict() {
    return DictProxy<K, V>(create("dict"));
  }
  template <class K, class V, class M>
  DictProxy<K, V> dict(const M& mapping) {
    return DictProxy<K, V>(create("dict", mapping));
  }
  BaseProxy dict() { return create("dict"); }
  /// Python: `list()`, `list(sequence)`, typed: `m.list<int>()`. Without template arguments:
  /// the untyped proxy.
  template <class T>
  ListProxy<T> list(const std::vector<T>& values = {}) {
    return ListProxy<T>(create("list", detail::ListArg<T>{&values}));
  }
  BaseProxy list() { return create("list"); }
  /// Python 3.14: `set()`, `set(iterable)`, typed: `m.set<std::string>({"a", "b"})`.
  template <class T>
  SetProxy<T> set(const std::vector<T>& values = {}) {
    return SetProxy<T>(create("set", detail::ListArg<T>{&values}));
  }
  /// Python: `Namespace()`.
  NamespaceProxy Namespace() { return NamespaceProxy(create("Namespace")); }
  /// Python: `Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None,
  /// context=None)`: a Pool in the server's process (pool_proxy.hpp). Unset processes: the
  /// server's CPUs; at most 256. @throws ValueError as Pool's constructor, or for an
  /// initializer the server's program does not have.
  PoolProxy Pool(PoolOptions options = {}) {
    std::optional<std::string> initializer;
    std::optional<std::vector<std::byte>> initargs;
    if (!options.initializer.entry.empty()) {
      initializer = options.initializer.entry;
      initargs = options.initializer.encoded();
    }
    std::optional<std::string> context;
    if (options.context) context = options.context->get_start_method();
    auto n = [](std::optional<int> x) -> std::optional<std::int64_t> {
      if (x) return *x;
      return std::nullopt;
    };
    return PoolProxy(create("Pool", n(options.processes), initializer, initargs,
                            n(options.maxtasksperchild), context));
  }
  PoolProxy Pool(int processes) { return Pool(PoolOptions{.processes = processes}); }

  /// Registers the built-in typeids (once per process; the constructor calls it).
  static void types();
};

}  // namespace troupe::multiprocessing::managers

namespace troupe::multiprocessing {

/// Python: `multiprocessing.Manager()`: a started SyncManager (its server in a child process).
std::unique_ptr<managers::SyncManager> Manager(managers::ManagerOptions options = {});

}  // namespace troupe::multiprocessing
