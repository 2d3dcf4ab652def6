// troupe/multiprocessing/sharedctypes.hpp — multiprocessing.Value, Array, RawValue, RawArray,
// and multiprocessing.sharedctypes.synchronized and copy, for trivially copyable T (Python's
// ctypes types become C++ types: Value('i', 7) is Value<int>(7), Array('d', 10) is
// Array<double>(10)).
//
// The memory is a shared region (a memfd, detail::SharedRegion): a child made by fork
// inherits it; one made by spawn gets it with its arguments. Copies of a Value or Array are
// handles on the same memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/detail/shared_region.hpp"
#include "troupe/multiprocessing/synchronize.hpp"

namespace troupe::multiprocessing {

/// What a shared value can hold: plain bytes that mean the same in every process.
template <class T>
concept SharedCType = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                      !std::is_reference_v<T> && alignof(T) <= 64;

/// Python's `lock` argument of Value and Array: true (an RLock of its own, the default),
/// false (no lock), or a Lock or RLock to use.
using LockArg = std::variant<bool, Lock, RLock>;

namespace detail {

/// Tags the constructors the codecs use.
struct FromWire {};

/// The region of a Value or Array: a lock slot (an RLock usable by the Synchronized wrapper),
/// the length, then the data on its own cache line.
struct DataRegion {
  std::shared_ptr<SharedRegion> region;
  MutexState* slot = nullptr;
  std::uint64_t length = 0;  // elements
  std::byte* data = nullptr;
};
/// Zeroed memory for `length` elements of `size` bytes. @throws ValueError when too large.
DataRegion make_data_region(RegionKind kind, std::size_t size, std::uint64_t length);
RegionWire data_region_to_wire(const DataRegion& r);
/// @throws ValueError if the region does not hold elements of `size` bytes.
DataRegion data_region_from_wire(const RegionWire& w, std::size_t size);
/// The lock for a LockArg: nullopt for false, the slot's RLock for true.
std::optional<ConditionLock> lock_for(const LockArg& arg, const DataRegion& r);
[[noreturn]] void throw_no_lock(const char* what);
[[noreturn]] void throw_index(std::size_t i, std::size_t n);

template <class Wrapper>
class SynchronizedBase : public troupe::detail::Lockable<Wrapper> {
public:
  /// Python: `get_lock()`. @throws ValueError if made with lock=false.
  const ConditionLock& get_lock() const {
    if (!lock_) throw_no_lock(Wrapper::kName);
    return *lock_;
  }
  bool has_lock() const noexcept { return lock_.has_value(); }
  /// Python: `acquire()` / `release()` of the synchronized wrapper (its lock's).
  bool acquire(bool block = true, Timeout timeout = {}) {
    return std::visit([&](auto& l) { return l.acquire(block, timeout); }, lock_ref());
  }
  void release() {
    std::visit([](auto& l) { l.release(); }, lock_ref());
  }

protected:
  ConditionLock& lock_ref() {
    if (!lock_) throw_no_lock(Wrapper::kName);
    return *lock_;
  }
  /// Runs f under the lock, if there is one.
  template <class F>
  decltype(auto) locked(F&& f) const {
    if (!lock_) return f();
    auto& l = const_cast<ConditionLock&>(*lock_);
    std::visit([](auto& x) { (void)x.acquire(); }, l);
    struct Release {
      ConditionLock& l;
      ~Release() {
        std::visit([](auto& x) { x.release(); }, l);
      }
    } release{l};
    return f();
  }
  std::optional<ConditionLock> lock_;
};

}  // namespace detail

/// Python: `multiprocessing.RawValue(typecode, value)`: shared memory holding one T, with no
/// lock.
template <SharedCType T>
class RawValue {
public:
  explicit RawValue(T init = T{})
      : r_(detail::make_data_region(detail::RegionKind::value, sizeof(T), 1)) {
    std::memcpy(r_.data, &init, sizeof(T));
  }
  /// Python: `.value` (read and write through the reference).
  T& value() const noexcept { return *ptr(); }
  T* ptr() const noexcept { return reinterpret_cast<T*>(r_.data); }

  explicit RawValue(detail::DataRegion r) : r_(std::move(r)) {}
  const detail::DataRegion& _region() const noexcept { return r_; }

private:
  detail::DataRegion r_;
};

/// Python: `multiprocessing.RawArray(typecode, size_or_initializer)`: shared memory holding n
/// T (zeroed, or copies of the given values), with no lock. A contiguous range.
template <SharedCType T>
class RawArray {
public:
  explicit RawArray(std::size_t n)
      : r_(detail::make_data_region(detail::RegionKind::array, sizeof(T), n)) {}
  RawArray(std::initializer_list<T> values) : RawArray(std::span<const T>(values)) {}
  explicit RawArray(std::span<const T> values) : RawArray(values.size()) {
    if (!values.empty()) std::memcpy(r_.data, values.data(), values.size_bytes());
  }

  std::size_t size() const noexcept { return static_cast<std::size_t>(r_.length); }
  T* data() const noexcept { return reinterpret_cast<T*>(r_.data); }
  T& operator[](std::size_t i) const noexcept { return data()[i]; }
  /// Python's indexing, checked. @throws IndexError "invalid index".
  T& at(std::size_t i) const {
    if (i >= size()) detail::throw_index(i, size());
    return data()[i];
  }
  T* begin() const noexcept { return data(); }
  T* end() const noexcept { return data() + size(); }
  std::span<T> span() const noexcept { return {data(), size()}; }

  explicit RawArray(detail::DataRegion r) : r_(std::move(r)) {}
  const detail::DataRegion& _region() const noexcept { return r_; }

private:
  detail::DataRegion r_;
};

/// Python: `multiprocessing.Value(typecode, value, lock=True)`: a shared T whose reads and
/// writes take its lock. Lockable (its lock), so a read-modify-write is
/// `{ std::scoped_lock g{v}; v.get_obj() += 1; }` — Python's `with v.get_lock(): v.value += 1`.
template <SharedCType T>
class Value : public detail::SynchronizedBase<Value<T>> {
public:
  static constexpr const char* kName = "Value";
  explicit Value(T init = T{}, LockArg lock = true) : raw_(init) {
    this->lock_ = detail::lock_for(lock, raw_._region());
  }
  /// Python: `sharedctypes.synchronized(obj, lock)`.
  explicit Value(RawValue<T> raw, LockArg lock = true) : raw_(std::move(raw)) {
    this->lock_ = detail::lock_for(lock, detail::DataRegion{});
  }

  /// Python: reading `.value` (under the lock).
  T value() const {
    return this->locked([&] { return raw_.value(); });
  }
  /// Python: `.value = v` (under the lock).
  void set_value(const T& v) {
    this->locked([&] { raw_.value() = v; });
  }
  /// Python: `get_obj()`: the value itself, unlocked.
  T& get_obj() const noexcept { return raw_.value(); }
  const RawValue<T>& raw() const noexcept { return raw_; }

  Value(RawValue<T> raw, std::optional<ConditionLock> lock, detail::FromWire)
      : raw_(std::move(raw)) {
    this->lock_ = std::move(lock);
  }
  const std::optional<ConditionLock>& _lock() const noexcept { return this->lock_; }

private:
  RawValue<T> raw_;
};

/// Python: `multiprocessing.Array(typecode, size_or_initializer, lock=True)`: n shared T whose
/// element reads and writes take its lock.
template <SharedCType T>
class Array : public detail::SynchronizedBase<Array<T>> {
public:
  static constexpr const char* kName = "Array";
  explicit Array(std::size_t n, LockArg lock = true) : raw_(n) { init(lock); }
  Array(std::initializer_list<T> values, LockArg lock = true) : raw_(values) { init(lock); }
  explicit Array(std::span<const T> values, LockArg lock = true) : raw_(values) { init(lock); }
  /// Python: `sharedctypes.synchronized(obj, lock)`.
  explicit Array(RawArray<T> raw, LockArg lock = true) : raw_(std::move(raw)) {
    this->lock_ = detail::lock_for(lock, detail::DataRegion{});
  }

  /// Python: `len(arr)`.
  std::size_t size() const noexcept { return raw_.size(); }
  /// Python: `arr[i]` (under the lock). @throws IndexError "invalid index".
  T operator[](std::size_t i) const { return get(i); }
  T get(std::size_t i) const {
    return this->locked([&] { return raw_.at(i); });
  }
  /// Python: `arr[i] = v` (under the lock).
  void set(std::size_t i, const T& v) {
    this->locked([&] { raw_.at(i) = v; });
  }
  /// Python: `arr[:]` (one copy under the lock).
  std::vector<T> to_vector() const {
    return this->locked([&] { return std::vector<T>(raw_.begin(), raw_.end()); });
  }
  /// Python: `arr[:] = values`. @throws ValueError "Can only assign sequence of same size".
  void assign(std::span<const T> values) {
    if (values.size() != size()) throw ValueError("Can only assign sequence of same size");
    this->locked([&] {
      if (!values.empty()) std::memcpy(raw_.data(), values.data(), values.size_bytes());
    });
  }
  /// Python: `get_obj()`: the elements themselves, unlocked.
  std::span<T> get_obj() const noexcept { return raw_.span(); }
  const RawArray<T>& raw() const noexcept { return raw_; }

  Array(RawArray<T> raw, std::optional<ConditionLock> lock, detail::FromWire)
      : raw_(std::move(raw)) {
    this->lock_ = std::move(lock);
  }
  const std::optional<ConditionLock>& _lock() const noexcept { return this->lock_; }

private:
  void init(const LockArg& lock) { this->lock_ = detail::lock_for(lock, raw_._region()); }
  RawArray<T> raw_;
};

/// Python: `sharedctypes.synchronized(obj, lock=None)`: the object behind a lock (a new RLock
/// unless one is given).
template <SharedCType T>
Value<T> synchronized(RawValue<T> raw, LockArg lock = true) {
  return Value<T>(std::move(raw), std::move(lock));
}
template <SharedCType T>
Array<T> synchronized(RawArray<T> raw, LockArg lock = true) {
  return Array<T>(std::move(raw), std::move(lock));
}

/// Python: `sharedctypes.copy(obj)`: a new shared object with the same contents.
template <SharedCType T>
RawValue<T> copy(const RawValue<T>& raw) {
  return RawValue<T>(raw.value());
}
template <SharedCType T>
RawArray<T> copy(const RawArray<T>& raw) {
  return RawArray<T>(std::span<const T>(raw.span()));
}

}  // namespace troupe::multiprocessing

template <troupe::multiprocessing::SharedCType T>
struct troupe::Codec<troupe::multiprocessing::RawValue<T>>
    : troupe::CodecVia<troupe::multiprocessing::RawValue<T>,
                       troupe::multiprocessing::detail::RegionWire> {
  static troupe::multiprocessing::detail::RegionWire to(
      const troupe::multiprocessing::RawValue<T>& x) {
    return troupe::multiprocessing::detail::data_region_to_wire(x._region());
  }
  static troupe::multiprocessing::RawValue<T> from(
      const troupe::multiprocessing::detail::RegionWire& w) {
    return troupe::multiprocessing::RawValue<T>(
        troupe::multiprocessing::detail::data_region_from_wire(w, sizeof(T)));
  }
};

template <troupe::multiprocessing::SharedCType T>
struct troupe::Codec<troupe::multiprocessing::RawArray<T>>
    : troupe::CodecVia<troupe::multiprocessing::RawArray<T>,
                       troupe::multiprocessing::detail::RegionWire> {
  static troupe::multiprocessing::detail::RegionWire to(
      const troupe::multiprocessing::RawArray<T>& x) {
    return troupe::multiprocessing::detail::data_region_to_wire(x._region());
  }
  static troupe::multiprocessing::RawArray<T> from(
      const troupe::multiprocessing::detail::RegionWire& w) {
    return troupe::multiprocessing::RawArray<T>(
        troupe::multiprocessing::detail::data_region_from_wire(w, sizeof(T)));
  }
};

namespace troupe::multiprocessing::detail {
/// The codec of Value and Array: the raw object and its lock.
template <class S, class Raw>
struct SynchronizedCodec
    : troupe::CodecVia<S, std::tuple<Raw, std::optional<troupe::multiprocessing::ConditionLock>>> {
  using Wire = std::tuple<Raw, std::optional<troupe::multiprocessing::ConditionLock>>;
  static Wire to(const S& x) { return {x.raw(), x._lock()}; }
  static S from(const Wire& w) { return S(std::get<0>(w), std::get<1>(w), FromWire{}); }
};
}  // namespace troupe::multiprocessing::detail

template <troupe::multiprocessing::SharedCType T>
struct troupe::Codec<troupe::multiprocessing::Value<T>>
    : troupe::multiprocessing::detail::SynchronizedCodec<troupe::multiprocessing::Value<T>,
                                                         troupe::multiprocessing::RawValue<T>> {};
template <troupe::multiprocessing::SharedCType T>
struct troupe::Codec<troupe::multiprocessing::Array<T>>
    : troupe::multiprocessing::detail::SynchronizedCodec<troupe::multiprocessing::Array<T>,
                                                         troupe::multiprocessing::RawArray<T>> {};
