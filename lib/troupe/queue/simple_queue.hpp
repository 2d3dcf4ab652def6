// troupe/queue/simple_queue.hpp — queue.SimpleQueue.
//
// Unbounded FIFO with no task tracking. Producers and consumers take different locks:
// producers append to an intake buffer, and a consumer that finds its own buffer empty swaps the
// intake in whole, so the two sides meet only once per batch. Consumers that find nothing spin
// briefly, then sleep on a sequence word that producers bump only when someone sleeps.
#pragma once

#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "troupe/detail/futex.hpp"
#include "troupe/detail/mutex.hpp"
#include "troupe/errors.hpp"
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
  /// Python: this never blocks beyond a short critical section.
  void put(T item, bool /*block*/ = true, Timeout /*timeout*/ = {}) {
    {
      std::scoped_lock lk(in_mu_);
      in_.push_back(std::move(item));
    }
    size_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) != 0) {
      seq_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) != 0) troupe::detail::futex_wake(seq_, 1);
    }
  }
  /// Python: `put_nowait(item)`.
  void put_nowait(T item) { put(std::move(item)); }

  /// Python: `get(block=True, timeout=None)`.
  /// @throws Empty if nothing arrives (at once when `block` is false).
  /// @throws ValueError for a negative timeout with `block` true.
  T get(bool block = true, Timeout timeout = {}) {
    if (!block) {
      if (auto v = take()) return std::move(*v);
      throw Empty("get() on an empty SimpleQueue");
    }
    if (timeout.is_negative()) throw ValueError("'timeout' must be a non-negative number");
    if (auto v = wait_take(timeout.deadline())) return std::move(*v);
    throw Empty("get() timed out on an empty SimpleQueue");
  }
  /// Python: `get_nowait()`.
  T get_nowait() { return get(false); }

  /// C++: waits up to `timeout` (forever by default); nullopt if nothing came.
  std::optional<T> try_get(Timeout timeout = {}) {
    if (timeout.is_negative()) throw ValueError("'timeout' must be a non-negative number");
    return wait_take(timeout.deadline());
  }

  /// Python: `qsize()` and `empty()`.
  std::size_t qsize() const noexcept { return size_.load(std::memory_order_acquire); }
  bool empty() const noexcept { return qsize() == 0; }

private:
  std::optional<T> take() {
    if (size_.load(std::memory_order_acquire) == 0) return std::nullopt;
    std::scoped_lock lk(out_mu_);
    if (head_ == out_.size()) {
      out_.clear();
      head_ = 0;
      std::scoped_lock in(in_mu_);
      out_.swap(in_);
    }
    if (head_ == out_.size()) return std::nullopt;
    std::optional<T> v(std::move(out_[head_++]));
    size_.fetch_sub(1, std::memory_order_relaxed);
    return v;
  }

  std::optional<T> wait_take(const std::optional<troupe::detail::steady::time_point>& deadline) {
    if (auto v = take()) return v;
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    struct Leave {
      std::atomic<std::uint32_t>& w;
      ~Leave() { w.fetch_sub(1, std::memory_order_relaxed); }
    } leave{waiters_};
    for (;;) {
      const std::uint32_t seq = seq_.load(std::memory_order_seq_cst);
      if (auto v = take()) return v;
      if (spin_.spin([&] {
            return size_.load(std::memory_order_acquire) != 0 ||
                   seq_.load(std::memory_order_acquire) != seq;
          })) {
        continue;
      }
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      const bool in_time = troupe::detail::futex_wait(seq_, seq, deadline);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      if (!in_time) return take();
    }
  }

  troupe::detail::FutexMutex in_mu_;
  std::vector<T> in_;
  troupe::detail::FutexMutex out_mu_;
  std::vector<T> out_;
  std::size_t head_ = 0;
  std::atomic<std::size_t> size_{0};
  std::atomic<std::uint32_t> waiters_{0};
  std::atomic<std::uint32_t> sleepers_{0};
  std::atomic<std::uint32_t> seq_{0};
  troupe::detail::AdaptiveSpin spin_;
};

}  // namespace troupe::queue
