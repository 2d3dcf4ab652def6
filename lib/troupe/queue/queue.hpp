// troupe/queue/queue.hpp — queue.Queue, queue.LifoQueue, queue.PriorityQueue.
//
// One mutex guards the store; three condition variables (not_empty, not_full, all_tasks_done)
// wait on it, as in CPython's queue.py. All waits spin briefly before sleeping. `T` may be
// move-only.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "troupe/detail/mutex.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"

namespace troupe::queue {

namespace detail {

/// First in, first out (Python's `Queue`).
template <class T>
class FifoStore {
public:
  void push(T&& v) { d_.push_back(std::move(v)); }
  T pop() {
    T v = std::move(d_.front());
    d_.pop_front();
    return v;
  }
  std::size_t size() const noexcept { return d_.size(); }
  void clear() noexcept { d_.clear(); }

private:
  std::deque<T> d_;
};

/// Last in, first out (Python's `LifoQueue`).
template <class T>
class LifoStore {
public:
  void push(T&& v) { v_.push_back(std::move(v)); }
  T pop() {
    T v = std::move(v_.back());
    v_.pop_back();
    return v;
  }
  std::size_t size() const noexcept { return v_.size(); }
  void clear() noexcept { v_.clear(); }

private:
  std::vector<T> v_;
};

/// Smallest first by `Compare` (Python's `PriorityQueue`, a heapq min-heap).
template <class T, class Compare>
class HeapStore {
public:
  void push(T&& v) {
    v_.push_back(std::move(v));
    std::push_heap(v_.begin(), v_.end(), greater_);
  }
  T pop() {
    std::pop_heap(v_.begin(), v_.end(), greater_);
    T v = std::move(v_.back());
    v_.pop_back();
    return v;
  }
  std::size_t size() const noexcept { return v_.size(); }
  void clear() noexcept { v_.clear(); }

private:
  struct Greater {
    Compare less;
    bool operator()(const T& a, const T& b) const { return less(b, a); }
  };
  std::vector<T> v_;
  Greater greater_{};
};

/// CPython's rule for a blocking put/get: a negative timeout is a ValueError.
inline std::optional<troupe::detail::steady::time_point> queue_deadline(const Timeout& t) {
  if (t.is_negative()) throw ValueError("'timeout' must be a non-negative number");
  return t.deadline();
}

}  // namespace detail

/// The queue behind Queue, LifoQueue and PriorityQueue; `Store` orders the items.
template <class T, class Store>
class BasicQueue {
public:
  using value_type = T;

  /// Python: `Queue(maxsize=0)`: zero or negative means unbounded.
  explicit BasicQueue(std::ptrdiff_t maxsize = 0) : maxsize_(maxsize) {}
  BasicQueue(const BasicQueue&) = delete;
  BasicQueue& operator=(const BasicQueue&) = delete;

  /// Python: `put(item, block=True, timeout=None)`.
  /// @throws Full if `block` is false and the queue is full, or the timeout passes first.
  /// @throws ShutDown if the queue is (or becomes, while waiting) shut down.
  /// @throws ValueError for a negative timeout on a bounded queue (CPython's rule).
  void put(T item, bool block = true, Timeout timeout = {}) {
    if (block && maxsize_ > 0)
      spin_until([&] { return count_.load(std::memory_order_relaxed) < maxsize_; }, timeout);
    std::unique_lock lk(mu_);
    if (shutdown_) throw ShutDown("put() on a shut-down queue");
    if (maxsize_ > 0) {
      if (!block) {
        if (full_locked())
          throw Full("put() on a full queue (maxsize " + std::to_string(maxsize_) + ")");
      } else {
        const auto deadline = detail::queue_deadline(timeout);
        const bool sleeps = full_locked();
        while (full_locked()) {
          if (!not_full_.wait(mu_, deadline, false) && full_locked()) {
            if (shutdown_) throw ShutDown("put() on a shut-down queue");
            throw Full("put() timed out on a full queue (maxsize " + std::to_string(maxsize_) +
                       ")");
          }
          if (shutdown_) throw ShutDown("put() on a shut-down queue");
        }
        if (sleeps) spin_.woke();
      }
    }
    store_.push(std::move(item));
    count_.store(static_cast<std::ptrdiff_t>(store_.size()), std::memory_order_relaxed);
    ++unfinished_;
    not_empty_.notify_one();
  }

  /// Python: `put_nowait(item)`.
  void put_nowait(T item) { put(std::move(item), false); }

  /// Python: `get(block=True, timeout=None)`.
  /// @throws Empty if `block` is false and the queue is empty, or the timeout passes first.
  /// @throws ShutDown if the queue is shut down and empty (at once after `shutdown(true)`).
  /// @throws ValueError for a negative timeout with `block` true (CPython's rule).
  T get(bool block = true, Timeout timeout = {}) {
    if (block) spin_until([&] { return count_.load(std::memory_order_relaxed) != 0; }, timeout);
    std::unique_lock lk(mu_);
    if (shutdown_ && store_.size() == 0) throw ShutDown("get() on a shut-down, empty queue");
    if (!block) {
      if (store_.size() == 0) throw Empty("get() on an empty queue");
    } else {
      const auto deadline = detail::queue_deadline(timeout);
      const bool sleeps = store_.size() == 0;
      while (store_.size() == 0) {
        if (!not_empty_.wait(mu_, deadline, false) && store_.size() == 0) {
          if (shutdown_) throw ShutDown("get() on a shut-down, empty queue");
          throw Empty("get() timed out on an empty queue");
        }
        if (shutdown_ && store_.size() == 0) throw ShutDown("get() on a shut-down, empty queue");
      }
      if (sleeps) spin_.woke();
    }
    T item = store_.pop();
    count_.store(static_cast<std::ptrdiff_t>(store_.size()), std::memory_order_relaxed);
    not_full_.notify_one();
    return item;
  }

  /// Python: `get_nowait()`.
  T get_nowait() { return get(false); }

  /// C++: `get` without exceptions for control flow. Waits up to `timeout` (forever by
  /// default); returns nullopt when the time passes with nothing to get, or when the queue is
  /// shut down and empty — so `while (auto item = q.try_get()) …` drains a queue until shutdown.
  /// @throws ValueError for a negative timeout.
  std::optional<T> try_get(Timeout timeout = {}) {
    spin_until([&] { return count_.load(std::memory_order_relaxed) != 0; }, timeout);
    std::unique_lock lk(mu_);
    const auto deadline = detail::queue_deadline(timeout);
    const bool sleeps = store_.size() == 0;
    while (store_.size() == 0) {
      if (shutdown_) return std::nullopt;
      if (!not_empty_.wait(mu_, deadline, false) && store_.size() == 0) return std::nullopt;
    }
    if (sleeps) spin_.woke();
    std::optional<T> item(store_.pop());
    count_.store(static_cast<std::ptrdiff_t>(store_.size()), std::memory_order_relaxed);
    not_full_.notify_one();
    return item;
  }

  /// C++: `put` without exceptions for control flow: false if the queue stayed full until the
  /// timeout, or is shut down; `item` is moved from only on success.
  bool try_put(T&& item, Timeout timeout = {}) {
    if (maxsize_ > 0)
      spin_until([&] { return count_.load(std::memory_order_relaxed) < maxsize_; }, timeout);
    std::unique_lock lk(mu_);
    const auto deadline = detail::queue_deadline(timeout);
    const bool sleeps = !shutdown_ && maxsize_ > 0 && full_locked();
    while (!shutdown_ && maxsize_ > 0 && full_locked()) {
      if (!not_full_.wait(mu_, deadline, false) && full_locked()) return false;
    }
    if (shutdown_) return false;
    if (sleeps) spin_.woke();
    store_.push(std::move(item));
    count_.store(static_cast<std::ptrdiff_t>(store_.size()), std::memory_order_relaxed);
    ++unfinished_;
    not_empty_.notify_one();
    return true;
  }

  /// Python: `task_done()`. @throws ValueError "task_done() called too many times".
  void task_done() {
    std::scoped_lock lk(mu_);
    if (unfinished_ == 0) throw ValueError("task_done() called too many times");
    if (--unfinished_ == 0) all_tasks_done_.notify_all();
  }

  /// Python: `join()`: waits until every item put has been marked done (or a
  /// `shutdown(true)` cleared the rest).
  void join() {
    std::unique_lock lk(mu_);
    while (unfinished_ != 0) (void)all_tasks_done_.wait(mu_);
  }

  /// Python 3.13: `shutdown(immediate=False)`. Later puts throw ShutDown; gets drain what is
  /// left, then throw ShutDown. With `immediate`, the items left are dropped (each counted as
  /// done, which may release join()) and gets throw at once. Blocked callers are woken.
  void shutdown(bool immediate = false) {
    std::scoped_lock lk(mu_);
    shutdown_ = true;
    shutdown_flag_.store(true, std::memory_order_relaxed);
    if (immediate) {
      while (store_.size() != 0) {
        (void)store_.pop();
        if (unfinished_ > 0) --unfinished_;
      }
      count_.store(0, std::memory_order_relaxed);
      all_tasks_done_.notify_all();
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  /// Python: `is_shutdown`.
  bool is_shutdown() const {
    std::scoped_lock lk(mu_);
    return shutdown_;
  }

  /// Python: `qsize()`, `empty()`, `full()` — exact at the moment of the call.
  std::size_t qsize() const {
    std::scoped_lock lk(mu_);
    return store_.size();
  }
  bool empty() const { return qsize() == 0; }
  bool full() const {
    std::scoped_lock lk(mu_);
    return maxsize_ > 0 && full_locked();
  }
  /// Python: `maxsize`.
  std::ptrdiff_t maxsize() const noexcept { return maxsize_; }
  /// Python: `unfinished_tasks`.
  std::size_t unfinished_tasks() const {
    std::scoped_lock lk(mu_);
    return unfinished_;
  }

private:
  // Spin (outside the lock) until `ready()` or the queue is shut down, unless the timeout says
  // not to wait. The condition-variable wait that may follow then sleeps at once.
  // A wait that slept after the spin, and got what it waited for, calls spin_.woke() (the
  // spin learns how long that took); one that timed out or ended in an exception does not.
  template <class Ready>
  void spin_until(Ready ready, const Timeout& timeout) noexcept {
    if (ready() || (timeout.is_relative() && timeout.relative().count() <= 0)) return;
    (void)spin_.spin([&] { return ready() || shutdown_flag_.load(std::memory_order_relaxed); });
  }

  bool full_locked() const noexcept {
    return static_cast<std::ptrdiff_t>(store_.size()) >= maxsize_;
  }

  mutable troupe::detail::FutexMutex mu_;
  troupe::detail::FutexCondVar not_empty_;
  troupe::detail::FutexCondVar not_full_;
  troupe::detail::FutexCondVar all_tasks_done_;
  Store store_;
  std::ptrdiff_t maxsize_;
  std::size_t unfinished_ = 0;
  bool shutdown_ = false;
  // Mirrors of store_.size() and shutdown_ for the spin outside the lock; written under it.
  std::atomic<std::ptrdiff_t> count_{0};
  std::atomic<bool> shutdown_flag_{false};
  troupe::detail::AdaptiveSpin spin_;
};

/// Python: `queue.Queue(maxsize=0)` — first in, first out.
template <class T>
using Queue = BasicQueue<T, detail::FifoStore<T>>;

/// Python: `queue.LifoQueue(maxsize=0)` — last in, first out.
template <class T>
using LifoQueue = BasicQueue<T, detail::LifoStore<T>>;

/// Python: `queue.PriorityQueue(maxsize=0)` — smallest first under `Compare`, as heapq; items
/// that compare equal come out in no particular order (use a (priority, sequence, value)
/// tuple for FIFO among equals, as Python's docs advise).
template <class T, class Compare = std::less<T>>
using PriorityQueue = BasicQueue<T, detail::HeapStore<T, Compare>>;

}  // namespace troupe::queue
