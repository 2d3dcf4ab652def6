// troupe/queue/simple_queue.hpp — queue.SimpleQueue.
//
// An unbounded FIFO with no task tracking and no shutdown, as Python's. It runs on the same
// core as Queue (one spin-then-sleep lock, a lock-free size for waiters to spin on): a two-lock
// design with separate intake and output buffers measured slower here, because it pays more
// atomic instructions per item than it saves in contention (bench/threading_bench.cpp).
#pragma once

#include <cstddef>
#include <optional>
#include <utility>

#include "troupe/errors.hpp"
#include "troupe/queue/queue.hpp"
#include "troupe/timeout.hpp"

namespace troupe::queue {

/// Python: `queue.SimpleQueue()`. `put` never blocks.
template <class T>
class SimpleQueue {
public:
  using value_type = T;

  SimpleQueue() = default;
  SimpleQueue(const SimpleQueue&) = delete;
  SimpleQueue& operator=(const SimpleQueue&) = delete;

  /// Python: `put(item, block=True, timeout=None)`; `block` and `timeout` are ignored, as in
  /// Python: this never waits beyond a short critical section.
  void put(T item, bool /*block*/ = true, Timeout /*timeout*/ = {}) {
    q_.put(std::move(item), false);
  }
  /// Python: `put_nowait(item)`.
  void put_nowait(T item) { put(std::move(item)); }

  /// Python: `get(block=True, timeout=None)`.
  /// @throws Empty if nothing arrives (at once when `block` is false).
  /// @throws ValueError for a negative timeout with `block` true.
  T get(bool block = true, Timeout timeout = {}) { return q_.get(block, timeout); }
  /// Python: `get_nowait()`.
  T get_nowait() { return q_.get(false); }

  /// C++: waits up to `timeout` (forever by default); nullopt if nothing came.
  /// @throws ValueError for a negative timeout.
  std::optional<T> try_get(Timeout timeout = {}) { return q_.try_get(timeout); }

  /// Python: `qsize()` and `empty()`.
  std::size_t qsize() const { return q_.qsize(); }
  bool empty() const { return q_.empty(); }

private:
  Queue<T> q_;
};

}  // namespace troupe::queue
