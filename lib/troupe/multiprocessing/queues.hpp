// troupe/multiprocessing/queues.hpp — multiprocessing.Queue, SimpleQueue and JoinableQueue:
// typed values between processes, through a ring buffer in shared memory.
//
// No feeder thread: put() copies the encoded value into the ring and returns, so a process that
// has put values may be joined at once (Python's "joining processes that use queues" trap does
// not exist). Bounded twice: by maxsize (items, as Python) and by the ring's bytes
// (QueueOptions::buffer_size); put blocks, or raises queue::Full after its timeout, when either
// is full. A process killed in the middle of put leaves no trace of its value; one killed in
// the middle of get leaves the value in the queue for the next reader (doc/multiprocessing/
// queues.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/detail/shared_region.hpp"
#include "troupe/multiprocessing/synchronize.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing {

/// Options of a process queue beyond Python's maxsize.
struct QueueOptions {
  /// Bytes of the ring buffer the encoded values go through (each takes its encoded size plus
  /// 8, rounded up to 8), rounded up to a power of two, at most 2 GiB. A value larger than the
  /// ring is a ValueError at put.
  std::size_t buffer_size = std::size_t{1} << 20;
};

namespace detail {

/// Values a queue copies as their bytes (both ends are the same Queue<T> of the same program):
/// numbers and enums. Everything else goes through its codec.
template <class T>
inline constexpr bool kQueueRaw = std::is_arithmetic_v<T> || std::is_enum_v<T>;

struct QueueState {
  QueueState(std::int64_t maxsize, std::uint64_t capacity, bool joinable)
      : maxsize(maxsize), capacity(capacity), joinable(joinable) {}
  MutexState put_lock;
  MutexState get_lock;
  // tail and head are each (items << 32 | bytes), both counted mod 2^32 since creation: one
  // store commits a put (or a get) with its count, so qsize stays exact whatever dies when.
  alignas(64) std::atomic<std::uint64_t> tail{0};  // written and committed
  std::atomic<std::uint32_t> tail_seq{0};          // moves on each commit: getters sleep on it
  troupe::detail::Sleepers getters_sleeping;
  alignas(64) std::atomic<std::uint64_t> head{0};  // read
  std::atomic<std::uint32_t> head_seq{0};          // moves on each get: putters sleep on it
  troupe::detail::Sleepers putters_sleeping;
  alignas(64) std::atomic<std::uint32_t> unfinished{0};  // JoinableQueue: put, not task_done
  std::atomic<std::uint32_t> join_seq{0};  // moves when unfinished reaches 0 and at shutdown(true)
  troupe::detail::Sleepers join_sleepers;
  std::atomic<std::uint32_t> shutdown{0};  // 0 open, 1 shut down, 2 shut down immediately
  std::int64_t maxsize;                    // <= 0: no limit on items
  std::uint64_t capacity;                  // bytes of the ring (a power of two), after this
  bool joinable;
  troupe::detail::AdaptiveSpin put_spin;
  troupe::detail::AdaptiveSpin get_spin;
};

/// The untyped queue under Queue<T>, SimpleQueue<T> and JoinableQueue<T>.
class QueueCore {
public:
  QueueCore(std::int64_t maxsize, const QueueOptions& options, bool joinable, const char* kind);
  /// @throws ValueError if the region cannot hold the ring its state says it has.
  QueueCore(Shared<QueueState> s, const char* kind);

  void put(std::span<const std::byte> item, bool block, const Timeout& timeout);
  std::vector<std::byte> get(bool block, const Timeout& timeout);
  /// get() into `out`, for values of a fixed size. @throws ValueError if the value has
  /// another size.
  void get_into(std::span<std::byte> out, bool block, const Timeout& timeout);
  std::int64_t qsize() const noexcept;
  bool empty() const noexcept;
  bool full() const noexcept;
  std::int64_t maxsize() const noexcept { return s_->maxsize; }
  std::size_t buffer_size() const noexcept { return static_cast<std::size_t>(s_->capacity); }
  void close() noexcept { closed_ = true; }
  bool closed() const noexcept { return closed_; }
  void join_thread() const;
  void shutdown(bool immediate);
  bool is_shutdown() const noexcept { return s_->shutdown.load(std::memory_order_acquire) != 0; }
  void task_done();
  bool join(const Timeout& timeout);
  std::string repr() const;

  const Shared<QueueState>& shared() const noexcept { return s_; }

private:
  template <class Sink>
  void get_with(bool block, const Timeout& timeout, Sink sink);
  std::byte* ring() const noexcept;
  void check_open() const;
  Shared<QueueState> s_;
  const char* kind_;
  bool closed_ = false;  // close() in this process
};

}  // namespace detail

/// Python: `multiprocessing.Queue(maxsize=0)` of typed values (any type with a codec).
///
///   mp::Queue<std::string> q;
///   mp::Process p([](mp::Queue<std::string> q) { q.put("hello"); }, q);
///   p.start();
///   q.get();  // "hello"
template <Encodable T>
class Queue {
public:
  /// maxsize <= 0: no limit on items (the ring's bytes still bound it).
  explicit Queue(std::int64_t maxsize = 0, QueueOptions options = {})
      : core_(maxsize, options, false, "Queue") {}

  /// Python: `put(obj, block=True, timeout=None)`. @throws queue::Full when full after the
  /// timeout (or at once with block=false); queue::ShutDown after shutdown(); ValueError if
  /// closed in this process or the encoded value is larger than the ring.
  void put(const T& item, bool block = true, Timeout timeout = {}) {
    if constexpr (detail::kQueueRaw<T>) {
      core_.put(std::as_bytes(std::span(&item, 1)), block, timeout);
    } else {
      const auto bytes = troupe::to_bytes(item);
      core_.put(bytes, block, timeout);
    }
  }
  void put_nowait(const T& item) { put(item, false); }
  /// Python: `get(block=True, timeout=None)`. @throws queue::Empty; queue::ShutDown once
  /// shut down and empty (at once if shut down immediately).
  T get(bool block = true, Timeout timeout = {}) {
    if constexpr (detail::kQueueRaw<T>) {
      T v;
      core_.get_into(std::as_writable_bytes(std::span(&v, 1)), block, timeout);
      return v;
    } else {
      const auto bytes = core_.get(block, timeout);
      return troupe::from_bytes<T>(bytes);
    }
  }
  T get_nowait() { return get(false); }

  /// Python: `qsize()` (exact, unlike Python's on some platforms), `empty()`, `full()`.
  std::int64_t qsize() const noexcept { return core_.qsize(); }
  bool empty() const noexcept { return core_.empty(); }
  bool full() const noexcept { return core_.full(); }
  std::int64_t maxsize() const noexcept { return core_.maxsize(); }
  std::size_t buffer_size() const noexcept { return core_.buffer_size(); }

  /// Python: `close()`: this process puts and gets no more through this handle.
  void close() noexcept { core_.close(); }
  /// Python: `join_thread()` (after close(); there is no feeder thread to wait for) and
  /// `cancel_join_thread()` (nothing to cancel).
  void join_thread() const { core_.join_thread(); }
  void cancel_join_thread() const noexcept {}

  /// Beyond Python's multiprocessing (queue.Queue.shutdown, 3.13): puts raise ShutDown; gets
  /// raise ShutDown once the queue is empty; with immediate, the queue is emptied first (and,
  /// for a JoinableQueue, its items count as done, and join() returns from then on, even for
  /// tasks got and never done: the remedy for a consumer that died holding one). Wakes every
  /// waiting process.
  void shutdown(bool immediate = false) { core_.shutdown(immediate); }
  bool is_shutdown() const noexcept { return core_.is_shutdown(); }

  std::string repr() const { return core_.repr(); }

  explicit Queue(detail::Shared<detail::QueueState> s) : core_(std::move(s), "Queue") {}
  const detail::Shared<detail::QueueState>& _shared() const noexcept { return core_.shared(); }

protected:
  Queue(std::int64_t maxsize, QueueOptions options, bool joinable, const char* kind)
      : core_(maxsize, options, joinable, kind) {}
  Queue(detail::Shared<detail::QueueState> s, const char* kind) : core_(std::move(s), kind) {}
  detail::QueueCore core_;
};

/// Python: `multiprocessing.JoinableQueue(maxsize=0)`: a Queue whose consumers call task_done()
/// for each item and whose join() waits until every item put has been done.
template <Encodable T>
class JoinableQueue : public Queue<T> {
public:
  explicit JoinableQueue(std::int64_t maxsize = 0, QueueOptions options = {})
      : Queue<T>(maxsize, options, true, "JoinableQueue") {}
  /// Python: `task_done()`. @throws ValueError "task_done() called too many times".
  void task_done() { this->core_.task_done(); }
  /// Python: `join()`; with a timeout (beyond Python) returns false if it passed first. Returns
  /// at once after shutdown(true), whatever is still unfinished.
  bool join(Timeout timeout = {}) { return this->core_.join(timeout); }

  explicit JoinableQueue(detail::Shared<detail::QueueState> s)
      : Queue<T>(std::move(s), "JoinableQueue") {}
};

/// Python: `multiprocessing.SimpleQueue()`: put, get, empty, close; no size limit of items.
template <Encodable T>
class SimpleQueue {
public:
  explicit SimpleQueue(QueueOptions options = {}) : core_(0, options, false, "SimpleQueue") {}
  void put(const T& item) {
    if constexpr (detail::kQueueRaw<T>) {
      core_.put(std::as_bytes(std::span(&item, 1)), true, {});
    } else {
      const auto bytes = troupe::to_bytes(item);
      core_.put(bytes, true, {});
    }
  }
  T get() {
    if constexpr (detail::kQueueRaw<T>) {
      T v;
      core_.get_into(std::as_writable_bytes(std::span(&v, 1)), true, {});
      return v;
    } else {
      const auto bytes = core_.get(true, {});
      return troupe::from_bytes<T>(bytes);
    }
  }
  bool empty() const noexcept { return core_.empty(); }
  void close() noexcept { core_.close(); }
  std::string repr() const { return core_.repr(); }

  explicit SimpleQueue(detail::Shared<detail::QueueState> s) : core_(std::move(s), "SimpleQueue") {}
  const detail::Shared<detail::QueueState>& _shared() const noexcept { return core_.shared(); }

private:
  detail::QueueCore core_;
};

}  // namespace troupe::multiprocessing

template <troupe::Encodable T>
struct troupe::Codec<troupe::multiprocessing::Queue<T>>
    : troupe::multiprocessing::detail::SharedCodec<troupe::multiprocessing::Queue<T>,
                                                   troupe::multiprocessing::detail::QueueState> {};
template <troupe::Encodable T>
struct troupe::Codec<troupe::multiprocessing::JoinableQueue<T>>
    : troupe::multiprocessing::detail::SharedCodec<troupe::multiprocessing::JoinableQueue<T>,
                                                   troupe::multiprocessing::detail::QueueState> {};
template <troupe::Encodable T>
struct troupe::Codec<troupe::multiprocessing::SimpleQueue<T>>
    : troupe::multiprocessing::detail::SharedCodec<troupe::multiprocessing::SimpleQueue<T>,
                                                   troupe::multiprocessing::detail::QueueState> {};
