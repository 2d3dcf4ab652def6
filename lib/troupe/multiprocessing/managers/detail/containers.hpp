// troupe/multiprocessing/managers/detail/containers.hpp — the objects behind SyncManager's
// dict(), list(), set(), Namespace(), Value() and Array(), on Item values.
//
// Each is what CPython's manager process holds for those typeids, called through the methods
// its proxy exposes (CPython 3.14's Lib/multiprocessing/managers.py: DictProxy, ListProxy,
// SetProxy, NamespaceProxy, ValueProxy, ArrayProxy), with Python's semantics and messages for
// the dict/list/set/array methods they forward to. Standalone: no wire. The object host calls
// `call(method, args, kwargs)` with decoded Items and sends back the Item it returns, or the
// exception it throws (KeyError, IndexError, TypeError, ValueError, AttributeError,
// OverflowError, all from troupe/errors.hpp, with Python's messages).
//
// How arguments are read (see item.hpp for `sequence`, the wire's list of unknown kind):
// - a mapping argument (dict.update, dict(...), |, |=) is a dict, or a `sequence` holding
//   Codec's flat encoding of a map (k0, v0, k1, v1, ...); any other iterable is read, as in
//   Python, as an iterable of key/value pairs;
// - a set operand (set & x, set < x) is a set, a frozenset or a `sequence`;
// - an index into a list or Array is an int, a slice, or a `sequence` of three elements each
//   None or an int (start, stop, step): the slice's wire form;
// - keys and set elements must be hashable; a `sequence` (a C++ pair, tuple or vector) is
//   stored as the tuple it equals, so it reads back as one (also from Python).
//
// Differences from Python, all because values cross a process and Python objects do not:
// - `sort(key=...)`: a key function cannot cross; only key=None is accepted (TypeError else).
// - methods that return iterators or views in Python (`keys`, `values`, `items`, `__iter__`,
//   `__reversed__`) return lists (a dict's items as a list of 2-tuples). Python's live
//   `iter(dict)` is iter() below: the host serves a dict's `__iter__` with it.
// - an Array slice and an Array's value are an array.array (Item::array), which troupe's wire
//   carries as a list; an Array slice is assigned, as in Python, from an array.array of the
//   same typecode, and also from a `sequence` (what troupe's wire makes of a C++ client's
//   values), never from a list or tuple (Python's TypeError).
// - in-place operators (`__iadd__`, `__imul__`, `__ior__`, `__iand__`, ...) return None (the
//   proxy returns itself, as CPython's do after the call).
// - `Namespace`'s `getvalue()` is a dict of its attributes; `Value`'s is its value (Python
//   clients get the objects: python_value()).
// - results that would hold more than `ContainerOptions::max_elements` elements (`l * n`,
//   `extend`, `fromkeys`, ...) are a ValueError naming the limit (Python: MemoryError).
// - managers.Value does not check its typecode in CPython; `check_typecode` makes it check as
//   Array does (off by default, as in Python).
//
// Thread safety: every object has one mutex; call(), getvalue(), repr() may come from any
// thread. References: refs stored inside are reported to the RefHolder (hold() before a ref
// becomes reachable from the object, drop() after it is not anymore, and for each ref still
// inside when the object is destroyed), so the host can keep the referenced objects alive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "troupe/multiprocessing/managers/detail/item.hpp"

namespace troupe::multiprocessing::managers::detail {

/// Told when a container starts and stops holding a ref (an Item of Kind::ref). hold() may throw
/// (the referenced object is gone, say): the call that stored it then fails and stores nothing.
/// drop() must not throw (what it throws is ignored). Both are called with the container's mutex
/// held: they must not call into that container.
struct RefHolder {
  virtual void hold(const Item& ref) = 0;
  virtual void drop(const Item& ref) = 0;

protected:
  ~RefHolder() = default;
};

struct ContainerOptions {
  /// The most elements one operation may make a container or a result hold.
  std::size_t max_elements = std::size_t{1} << 24;
  /// ValueObject only: check the value against the typecode as Array does (CPython does not).
  bool check_typecode = false;
  /// Told about refs stored inside; may be null (refs are then stored untracked). Must outlive
  /// the container.
  RefHolder* refs = nullptr;
};

/// Python's iterator over a dict's keys (`iter(d)`, a dict_keyiterator), live: each step reads
/// the dict as it is then. As CPython's:
/// - the keys come in insertion order; a key added after iter() is seen if it comes after the
///   last one returned (insertion order: every added key does);
/// - a change of the dict's size between steps makes the next step throw RuntimeError
///   "dictionary changed size during iteration", and every step after;
/// - keys changed at the same size (one deleted, one added) are iterated on: the added key is
///   seen at its place; if that makes more keys than the dict had at iter() (a key already
///   returned was deleted and a new one added), RuntimeError "dictionary keys changed during
///   iteration", and the iterator is exhausted after;
/// - exhausted (next() gave none), it stays so whatever the dict does after.
/// Where CPython differs: its position is an index into the dict's entry table, which a resize
/// compacts (keys may then be skipped or repeated); here it is the insertion rank of the last
/// key returned, so a key is never skipped nor repeated unless deleted and added again.
/// Thread-safe: steps take the dict's mutex. The dict must outlive the iterator.
class KeyIterator {
public:
  virtual ~KeyIterator() = default;
  /// The next key; none at the end (Python's StopIteration), and at every call after.
  /// @throws RuntimeError as above.
  virtual std::optional<Item> next() = 0;
};

/// The values of managed objects passed by proxy to a call of their own host (`l.extend(p)`,
/// `d.update(p)`, `m.list(p)`), copied before the call takes any container's lock: where the
/// call iterates such an argument, it iterates the copy, as CPython's server iterates the proxy.
/// Seen by the calls made on this thread while it lives (they nest).
class RefValues {
public:
  /// (address, id) of a ref, and the value of its object.
  using Values = std::vector<std::pair<std::pair<std::string, std::uint64_t>, Item>>;
  explicit RefValues(Values values) noexcept;
  ~RefValues();
  RefValues(const RefValues&) = delete;
  RefValues& operator=(const RefValues&) = delete;
  /// The value copied for `r` on this thread, or null.
  static const Item* find(const Ref& r) noexcept;

private:
  Values values_;
  const RefValues* outer_;
};

/// What the host sees of every built-in object.
class Container {
public:
  virtual ~Container();
  Container(const Container&) = delete;
  Container& operator=(const Container&) = delete;

  /// The registered typeid: "dict", "list", "set", "Namespace", "Value", "Array".
  virtual std::string_view type_id() const noexcept = 0;
  /// Calls `method` as the proxy's `_callmethod(method, args, kwargs)` would.
  /// @throws AttributeError if `method` is not exposed (CPython's Server message), else what
  /// Python raises for it.
  Item call(std::string_view method, std::vector<Item> args, Kwargs kwargs = {});
  /// call(), but the elements the call removed are handed to `removed` instead of being dropped
  /// at once: a result that refers to them (a popped proxy) is written first, then the caller
  /// drops them (drop_all).
  Item call(std::string_view method, std::vector<Item> args, Kwargs kwargs,
            std::vector<Item>& removed);
  /// Drops what call() handed over.
  void drop_all(const std::vector<Item>& removed) noexcept {
    for (const Item& x : removed) drop(x);
  }
  /// The method names a proxy may call (CPython 3.14's `_exposed_` for the typeid).
  virtual const std::vector<std::string>& exposed() const noexcept = 0;
  /// Python's `iter(x)` as a live iterator: a dict's keys (KeyIterator). This object must
  /// outlive it. @throws TypeError for the other types (their `__iter__` returns a list, as
  /// ListProxy iterates by index).
  virtual std::unique_ptr<KeyIterator> iter();
  /// A copy of the whole value (the proxy's `_getvalue()`).
  Item getvalue() const;
  /// The value as CPython's server sends `_getvalue()` to a Python client: getvalue(), but a
  /// Value and a Namespace as the objects themselves (a managers.Value with `_typecode` and
  /// `_value`, a managers.Namespace with its attributes), as Python's objects are pickled.
  Item python_value() const;
  /// Python's repr() of the object ("{'a': 1}", "Namespace(a=1)", "Value('i', 5)",
  /// "array('i', [1, 2])"), what str(proxy) shows; cut after `max_size` characters.
  std::string repr(std::size_t max_size = std::size_t{1} << 20) const;

protected:
  explicit Container(const ContainerOptions& o) : options_(o) {}

  // Called with mu_ held. Items removed from the object go to `removed`; their refs are
  // dropped after the mutex is released.
  virtual Item dispatch(std::string_view method, std::vector<Item>& args, Kwargs& kwargs,
                        std::vector<Item>& removed) = 0;
  virtual Item value_locked() const = 0;
  virtual Item python_value_locked() const { return value_locked(); }
  virtual std::string repr_locked(std::size_t max_size) const = 0;

  /// Reports every ref in `x` to the holder (before `x` is stored); if one hold() throws, the
  /// ones already held are dropped and the exception propagates.
  void hold(const Item& x);
  /// hold() for every element of `v`, all or none.
  void hold_all(const std::vector<Item>& v);
  /// hold() for `a` and `b`, both or neither.
  void hold_pair(const Item& a, const Item& b);
  /// Reports every ref in `x` dropped (it was removed, or the object is being destroyed).
  void drop(const Item& x) noexcept;
  /// @throws ValueError if a result of `n` elements is over options_.max_elements.
  void check_size(std::size_t n, std::string_view what) const;

  ContainerOptions options_;
  mutable std::mutex mu_;
};

/// Creates the object of typeid `type_id` from the arguments of SyncManager's method of that
/// name: dict(*args, **kwargs), list(iterable=()), set(iterable=()), Namespace(**kwargs),
/// Value(typecode, value, lock=True), Array(typecode, sequence, lock=True).
/// @throws ValueError for an unknown typeid; TypeError/ValueError/OverflowError for arguments
/// Python would refuse.
std::unique_ptr<Container> make_container(std::string_view type_id, std::vector<Item> args,
                                          Kwargs kwargs = {}, const ContainerOptions& options = {});

}  // namespace troupe::multiprocessing::managers::detail
