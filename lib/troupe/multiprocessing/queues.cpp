#include "troupe/multiprocessing/queues.hpp"

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>

#include "troupe/multiprocessing/logger.hpp"

namespace troupe::multiprocessing::detail {
namespace {

using troupe::detail::steady;

constexpr std::uint64_t kRecordHeader = 8;  // u32 length, u32 zero

constexpr std::uint64_t round8(std::uint64_t n) {
  return (n + 7) / 8 * 8;
}
constexpr std::size_t ring_offset() {
  return (sizeof(QueueState) + 63) / 64 * 64;
}

// Copies into and out of the ring (`capacity` a power of two) at byte position `pos`, wrapping.
void ring_in(std::byte* ring, std::uint64_t capacity, std::uint64_t pos, const void* src,
             std::uint64_t n) noexcept {
  const std::uint64_t off = pos & (capacity - 1);
  const std::uint64_t first = std::min(n, capacity - off);
  std::memcpy(ring + off, src, first);
  if (n > first) std::memcpy(ring, static_cast<const std::byte*>(src) + first, n - first);
}
void ring_out(const std::byte* ring, std::uint64_t capacity, std::uint64_t pos, void* dst,
              std::uint64_t n) noexcept {
  const std::uint64_t off = pos & (capacity - 1);
  const std::uint64_t first = std::min(n, capacity - off);
  std::memcpy(dst, ring + off, first);
  if (n > first) std::memcpy(static_cast<std::byte*>(dst) + first, ring, n - first);
}

// The halves of a tail or head word.
constexpr std::uint32_t bytes_of(std::uint64_t w) {
  return static_cast<std::uint32_t>(w);
}
constexpr std::uint32_t items_of(std::uint64_t w) {
  return static_cast<std::uint32_t>(w >> 32);
}
constexpr std::uint64_t advance(std::uint64_t w, std::uint32_t items, std::uint64_t bytes) {
  return (std::uint64_t{items_of(w) + items} << 32) |
         static_cast<std::uint32_t>(bytes_of(w) + bytes);
}

Timeout until(const std::optional<steady::time_point>& deadline) {
  return deadline ? Timeout(*deadline) : Timeout();
}

/// Holds one of the queue's locks for a scope.
class Held {
public:
  Held(MutexState& m, const char* what) : m_(m), what_(what) {}
  ~Held() { mutex_release(m_, what_); }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;

private:
  MutexState& m_;
  const char* what_;
};

void note_recovery(const MutexState& m, const char* kind, bool put) {
  if (m.recovered_from == 0) return;
  get_logger().warning(std::string(kind) + ": process " + std::to_string(m.recovered_from) +
                       (put ? " died in put(); the value it was putting was not put"
                            : " died in get(); a value it had not yet taken stays queued"));
}

}  // namespace

QueueCore::QueueCore(std::int64_t maxsize, const QueueOptions& options, bool joinable,
                     const char* kind)
    : kind_(kind) {
  if (options.buffer_size < 64 || options.buffer_size > (std::size_t{1} << 31))
    throw ValueError(std::string(kind) + " buffer_size must be in [64 B, 2 GiB], not " +
                     std::to_string(options.buffer_size));
  const std::uint64_t capacity = std::bit_ceil(options.buffer_size);
  auto region = SharedRegion::create(RegionKind::queue, ring_offset() + capacity);
  auto* state = new (region->data()) QueueState(maxsize, capacity, joinable);
  s_ = {std::move(region), state};
}

std::byte* QueueCore::ring() const noexcept {
  return reinterpret_cast<std::byte*>(s_.state) + ring_offset();
}

QueueCore::QueueCore(Shared<QueueState> s, const char* kind) : s_(std::move(s)), kind_(kind) {
  const auto offset = static_cast<std::size_t>(reinterpret_cast<const std::byte*>(s_.state) -
                                               static_cast<const std::byte*>(s_.region->data()));
  if (s_.region->size() < offset + ring_offset() || s_->capacity < 64 ||
      !std::has_single_bit(s_->capacity) || s_->capacity > (std::uint64_t{1} << 31) ||
      s_.region->size() - offset - ring_offset() < s_->capacity)
    throw ValueError(std::string(kind_) + ": its shared region is smaller than its ring");
}

void QueueCore::check_open() const {
  if (closed_) throw ValueError(std::string(kind_) + " is closed");
}

void QueueCore::put(std::span<const std::byte> item, bool block, const Timeout& timeout) {
  check_open();
  QueueState& s = *s_.state;
  const std::uint64_t need = kRecordHeader + round8(item.size());
  if (item.size() > UINT32_MAX || need > s.capacity)
    throw ValueError(std::string(kind_) + ": a value of " + std::to_string(item.size()) +
                     " encoded bytes does not fit its buffer of " + std::to_string(s.capacity) +
                     " bytes (QueueOptions::buffer_size)");
  if (s.shutdown.load(std::memory_order_acquire) != 0) throw queue::ShutDown();
  const auto deadline = acquire_deadline(block, timeout);
  if (!mutex_acquire(s.put_lock, block, until(deadline), kind_)) throw queue::Full();
  Held held(s.put_lock, kind_);
  note_recovery(s.put_lock, kind_, true);
  const std::uint64_t tail = s.tail.load(std::memory_order_relaxed);
  auto room = [&] {
    if (s.shutdown.load(std::memory_order_acquire) != 0) return true;
    const std::uint64_t head = s.head.load(std::memory_order_acquire);
    if (s.maxsize > 0 && items_of(tail) - items_of(head) >= s.maxsize) return false;
    return s.capacity - static_cast<std::uint32_t>(bytes_of(tail) - bytes_of(head)) >= need;
  };
  if (!room() &&
      (!block || !wait_shared(s.head_seq, s.putters_sleeping, s.put_spin, deadline, room)))
    throw queue::Full();
  if (s.shutdown.load(std::memory_order_acquire) != 0) throw queue::ShutDown();
  // Write the record, then commit it with one store of the tail: a process killed before the
  // store leaves nothing a reader would see.
  std::byte* r = ring();
  const std::uint32_t header[2] = {static_cast<std::uint32_t>(item.size()), 0};
  ring_in(r, s.capacity, bytes_of(tail), header, sizeof header);
  if (!item.empty())
    ring_in(r, s.capacity, bytes_of(tail) + kRecordHeader, item.data(), item.size());
  if (s.joinable) s.unfinished.fetch_add(1, std::memory_order_relaxed);
  s.tail.store(advance(tail, 1, need), std::memory_order_release);
  moved(s.tail_seq, s.getters_sleeping);
}

template <class Sink>
void QueueCore::get_with(bool block, const Timeout& timeout, Sink sink) {
  check_open();
  QueueState& s = *s_.state;
  if (s.shutdown.load(std::memory_order_acquire) == 2) throw queue::ShutDown();
  const auto deadline = acquire_deadline(block, timeout);
  if (!mutex_acquire(s.get_lock, block, until(deadline), kind_)) throw queue::Empty();
  Held held(s.get_lock, kind_);
  note_recovery(s.get_lock, kind_, false);
  const std::uint64_t head = s.head.load(std::memory_order_relaxed);
  auto has_item = [&] {
    return bytes_of(s.tail.load(std::memory_order_acquire)) != bytes_of(head);
  };
  auto ready = [&] { return has_item() || s.shutdown.load(std::memory_order_acquire) != 0; };
  if (!ready() &&
      (!block || !wait_shared(s.tail_seq, s.getters_sleeping, s.get_spin, deadline, ready)))
    throw queue::Empty();
  if (s.shutdown.load(std::memory_order_acquire) == 2 || !has_item()) throw queue::ShutDown();
  const std::uint64_t tail = s.tail.load(std::memory_order_acquire);
  const std::byte* r = ring();
  std::uint32_t header[2];
  ring_out(r, s.capacity, bytes_of(head), header, sizeof header);
  const std::uint64_t need = kRecordHeader + round8(header[0]);
  const std::uint32_t committed = bytes_of(tail) - bytes_of(head);
  if (header[1] != 0 || need > committed)
    throw RuntimeError(std::string(kind_) + ": corrupted record at byte " +
                       std::to_string(bytes_of(head)) + " (length " + std::to_string(header[0]) +
                       ", " + std::to_string(committed) + " bytes committed)");
  std::byte* out = sink(header[0]);  // may throw: the value stays queued
  if (header[0] != 0) ring_out(r, s.capacity, bytes_of(head) + kRecordHeader, out, header[0]);
  // Consume it with one store of the head: a process killed before leaves the value queued.
  s.head.store(advance(head, 1, need), std::memory_order_release);
  moved(s.head_seq, s.putters_sleeping);
}

std::vector<std::byte> QueueCore::get(bool block, const Timeout& timeout) {
  std::vector<std::byte> item;
  get_with(block, timeout, [&](std::size_t n) {
    item.resize(n);
    return item.data();
  });
  return item;
}

void QueueCore::get_into(std::span<std::byte> out, bool block, const Timeout& timeout) {
  get_with(block, timeout, [&](std::size_t n) {
    if (n != out.size())
      throw ValueError(std::string(kind_) + ": a value of " + std::to_string(n) +
                       " bytes where one of " + std::to_string(out.size()) + " was expected");
    return out.data();
  });
}

std::int64_t QueueCore::qsize() const noexcept {
  // The head first: the tail read after it is never behind it.
  const std::uint64_t head = s_->head.load(std::memory_order_acquire);
  return items_of(s_->tail.load(std::memory_order_acquire)) - items_of(head);
}

bool QueueCore::empty() const noexcept {
  const std::uint64_t head = s_->head.load(std::memory_order_acquire);
  return bytes_of(s_->tail.load(std::memory_order_acquire)) == bytes_of(head);
}

bool QueueCore::full() const noexcept {
  return s_->maxsize > 0 && qsize() >= s_->maxsize;
}

void QueueCore::join_thread() const {
  if (!closed_) throw ValueError(std::string(kind_) + " not closed");
}

void QueueCore::shutdown(bool immediate) {
  QueueState& s = *s_.state;
  std::uint32_t expected = 0;
  s.shutdown.compare_exchange_strong(expected, immediate ? 2 : 1, std::memory_order_acq_rel);
  if (immediate) s.shutdown.store(2, std::memory_order_release);
  moved(s.tail_seq, s.getters_sleeping);  // blocked getters and putters see it and raise
  moved(s.head_seq, s.putters_sleeping);
  if (!immediate) return;
  // Empty the queue: every item counts as got (and, in a JoinableQueue, as done).
  (void)mutex_acquire(s.get_lock, true, {}, kind_);
  Held held(s.get_lock, kind_);
  const std::uint64_t tail = s.tail.load(std::memory_order_acquire);
  const std::uint64_t start = s.head.load(std::memory_order_relaxed);
  std::uint32_t head = bytes_of(start);
  std::uint32_t drained = 0;
  while (head != bytes_of(tail)) {
    std::uint32_t len;
    ring_out(ring(), s.capacity, head, &len, sizeof len);
    const std::uint64_t need = kRecordHeader + round8(len);
    if (need > static_cast<std::uint32_t>(bytes_of(tail) - head)) break;  // corrupted: stop
    head += static_cast<std::uint32_t>(need);
    ++drained;
  }
  s.head.store(advance(start, drained, head - bytes_of(start)), std::memory_order_release);
  if (s.joinable) {
    std::uint32_t u = s.unfinished.load(std::memory_order_relaxed);
    while (!s.unfinished.compare_exchange_weak(u, u > drained ? u - drained : 0)) {
    }
    // join() returns from now on, even for tasks got and never done (their consumer may be
    // dead: nothing else would ever release it); a live consumer's task_done() still counts.
    moved(s.join_seq, s.join_sleepers);
  }
  moved(s.head_seq, s.putters_sleeping);
}

void QueueCore::task_done() {
  QueueState& s = *s_.state;
  std::uint32_t u = s.unfinished.load(std::memory_order_relaxed);
  do {
    if (u == 0) throw ValueError("task_done() called too many times");
  } while (!s.unfinished.compare_exchange_weak(u, u - 1, std::memory_order_acq_rel));
  if (u == 1) moved(s.join_seq, s.join_sleepers);
}

bool QueueCore::join(const Timeout& timeout) {
  QueueState& s = *s_.state;
  troupe::detail::AdaptiveSpin spin;  // join waits long: a spin of its own, not shared
  return wait_shared(s.join_seq, s.join_sleepers, spin, timeout.deadline(), [&] {
    return s.unfinished.load(std::memory_order_seq_cst) == 0 ||
           s.shutdown.load(std::memory_order_seq_cst) == 2;
  });
}

std::string QueueCore::repr() const {
  return "<" + std::string(kind_) + "(maxsize=" + std::to_string(s_->maxsize) +
         ", size=" + std::to_string(qsize()) + ", buffer=" + std::to_string(s_->capacity) +
         (closed_ ? ", closed" : "") + (is_shutdown() ? ", shut down" : "") + ")>";
}

}  // namespace troupe::multiprocessing::detail
