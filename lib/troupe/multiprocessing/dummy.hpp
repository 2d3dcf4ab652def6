// troupe/multiprocessing/dummy.hpp — multiprocessing.dummy: multiprocessing's names on threads
// of this process, so that code written for processes runs on threads unchanged (and one test
// body runs on both).
//
// As in Python, the synchronization primitives and queues are the threading and queue ones;
// here they are wrapped as handles (copies share one object), because multiprocessing's are
// handles and code passes them to its processes by value. Pipe is multiprocessing's (a real
// Connection works between threads too).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "troupe/detail/lockable.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/queue/queue.hpp"
#include "troupe/threading/barrier.hpp"
#include "troupe/threading/condition.hpp"
#include "troupe/threading/event.hpp"
#include "troupe/threading/lock.hpp"
#include "troupe/threading/semaphore.hpp"
#include "troupe/threading/thread.hpp"

namespace troupe::multiprocessing::dummy {

namespace detail {
struct ProcessState;
}  // namespace detail

/// Python: `multiprocessing.dummy.Process` (DummyProcess): a Process on a new thread. A handle:
/// copies refer to the same thread.
class Process {
public:
  template <class F, class... A>
  requires multiprocessing::detail::Target<F, A...>
  explicit Process(F&& target, A&&... args)
      : Process(ProcessOptions{}, std::forward<F>(target), std::forward<A>(args)...) {}

  /// options.name and options.daemon are used; the start method is not (it is a thread).
  template <class F, class... A>
  requires multiprocessing::detail::Target<F, A...> Process(ProcessOptions options, F&& target,
                                                            A&&... args)
      : Process(std::move(options),
                std::function<void()>(
                    [f = std::decay_t<F>(std::forward<F>(target)),
                     stored = std::make_shared<std::tuple<std::decay_t<A>...>>(
                         std::forward<A>(args)...)]() mutable { std::apply(f, *stored); })) {}

  /// Python: `start()`. @throws ProcessError "cannot start a process twice".
  void start();
  /// Python: `join(timeout=None)`.
  void join(Timeout timeout = {}) const;
  bool is_alive() const;
  /// nullopt until the target has returned; then 0, the code of troupe::sys_exit(n), or 1 if
  /// it threw (Python's DummyProcess says 0 even then).
  std::optional<int> exitcode() const;
  std::string name() const;
  void set_name(std::string name);
  bool daemon() const;
  void set_daemon(bool daemon);
  /// The thread's ident; nullopt before start.
  std::optional<std::uint64_t> ident() const;

  bool operator==(const Process& o) const noexcept { return s_ == o.s_; }

private:
  Process(ProcessOptions options, std::function<void()> body);
  explicit Process(std::shared_ptr<detail::ProcessState> s) : s_(std::move(s)) {}
  friend std::vector<Process> active_children();
  std::shared_ptr<detail::ProcessState> s_;
};

/// Python: `multiprocessing.dummy.current_process()` is `threading.current_thread()`.
inline troupe::threading::Thread& current_process() {
  return troupe::threading::current_thread();
}

/// Python: `active_children()`: the dummy processes the calling thread started that are still
/// running.
std::vector<Process> active_children();

/// Python: `freeze_support()`: nothing to do for threads.
inline void freeze_support() {}

using multiprocessing::Pipe;

namespace detail {
/// A copyable handle on one threading object; Lockable when the object is.
template <class Impl>
class Handle {
public:
  template <class... A>
  explicit Handle(A&&... a) : p_(std::make_shared<Impl>(std::forward<A>(a)...)) {}
  Impl& impl() const noexcept { return *p_; }
  bool operator==(const Handle& o) const noexcept { return p_ == o.p_; }

private:
  std::shared_ptr<Impl> p_;
};
}  // namespace detail

/// Python: `multiprocessing.dummy.Lock` is `threading.Lock` (threading's acquire rules).
class Lock : public detail::Handle<troupe::threading::Lock>, public troupe::detail::Lockable<Lock> {
public:
  bool acquire(bool block = true, Timeout timeout = {}) { return impl().acquire(block, timeout); }
  void release() { impl().release(); }
  bool locked() const noexcept { return impl().locked(); }
};

class RLock : public detail::Handle<troupe::threading::RLock>,
              public troupe::detail::Lockable<RLock> {
public:
  bool acquire(bool block = true, Timeout timeout = {}) { return impl().acquire(block, timeout); }
  void release() { impl().release(); }
};

class Semaphore : public detail::Handle<troupe::threading::Semaphore>,
                  public troupe::detail::Lockable<Semaphore> {
public:
  explicit Semaphore(int value = 1) : Handle(value) {}
  bool acquire(bool block = true, Timeout timeout = {}) { return impl().acquire(block, timeout); }
  void release(int n = 1) { impl().release(n); }
};

class BoundedSemaphore : public detail::Handle<troupe::threading::BoundedSemaphore>,
                         public troupe::detail::Lockable<BoundedSemaphore> {
public:
  explicit BoundedSemaphore(int value = 1) : Handle(value) {}
  bool acquire(bool block = true, Timeout timeout = {}) { return impl().acquire(block, timeout); }
  void release(int n = 1) { impl().release(n); }
};

class Event : public detail::Handle<troupe::threading::Event> {
public:
  bool is_set() const noexcept { return impl().is_set(); }
  void set() noexcept { impl().set(); }
  void clear() noexcept { impl().clear(); }
  bool wait(Timeout timeout = {}) const noexcept { return impl().wait(timeout); }
};

/// `threading.Condition` with an RLock of its own.
class Condition : public detail::Handle<troupe::threading::Condition>,
                  public troupe::detail::Lockable<Condition> {
public:
  bool acquire(bool block = true, Timeout timeout = {}) { return impl().acquire(block, timeout); }
  void release() { impl().release(); }
  bool wait(Timeout timeout = {}) { return impl().wait(timeout); }
  template <class Predicate>
  bool wait_for(Predicate p, Timeout timeout = {}) {
    return impl().wait_for(std::move(p), timeout);
  }
  void notify(int n = 1) { impl().notify(n); }
  void notify_all() { impl().notify_all(); }
};

class Barrier : public detail::Handle<troupe::threading::Barrier> {
public:
  explicit Barrier(int parties, std::function<void()> action = {}, Timeout timeout = {})
      : Handle(parties, std::move(action), timeout) {}
  int wait(std::optional<Timeout> timeout = std::nullopt) { return impl().wait(timeout); }
  void reset() { impl().reset(); }
  void abort() { impl().abort(); }
  int parties() const noexcept { return impl().parties(); }
  int n_waiting() const { return impl().n_waiting(); }
  bool broken() const { return impl().broken(); }
};

/// Python: `multiprocessing.dummy.Queue` and `JoinableQueue` are `queue.Queue`.
template <class T>
class Queue : public detail::Handle<troupe::queue::Queue<T>> {
public:
  explicit Queue(std::ptrdiff_t maxsize = 0) : detail::Handle<troupe::queue::Queue<T>>(maxsize) {}
  void put(T item, bool block = true, Timeout timeout = {}) {
    this->impl().put(std::move(item), block, timeout);
  }
  void put_nowait(T item) { this->impl().put_nowait(std::move(item)); }
  T get(bool block = true, Timeout timeout = {}) { return this->impl().get(block, timeout); }
  T get_nowait() { return this->impl().get_nowait(); }
  std::int64_t qsize() const { return static_cast<std::int64_t>(this->impl().qsize()); }
  bool empty() const { return this->impl().empty(); }
  bool full() const { return this->impl().full(); }
  void task_done() { this->impl().task_done(); }
  void join() { this->impl().join(); }
  void shutdown(bool immediate = false) { this->impl().shutdown(immediate); }
  bool is_shutdown() const { return this->impl().is_shutdown(); }

private:
  using detail::Handle<troupe::queue::Queue<T>>::impl;
};
template <class T>
using JoinableQueue = Queue<T>;

/// Python: `multiprocessing.dummy.Value`: a shared value; here with an RLock (Lockable) so that
/// code written for multiprocessing.Value runs unchanged.
template <class T>
class Value : public troupe::detail::Lockable<Value<T>> {
public:
  explicit Value(T init = T{}) : s_(std::make_shared<State>(std::move(init))) {}
  T value() const {
    std::scoped_lock g{s_->lock};
    return s_->v;
  }
  void set_value(T v) {
    std::scoped_lock g{s_->lock};
    s_->v = std::move(v);
  }
  T& get_obj() const noexcept { return s_->v; }
  bool acquire(bool block = true, Timeout timeout = {}) { return s_->lock.acquire(block, timeout); }
  void release() { s_->lock.release(); }

private:
  struct State {
    explicit State(T x) : v(std::move(x)) {}
    T v;
    troupe::threading::RLock lock;
  };
  std::shared_ptr<State> s_;
};

/// Python: `multiprocessing.dummy.Array`: shared elements (Python: an `array.array`).
template <class T>
class Array : public troupe::detail::Lockable<Array<T>> {
public:
  explicit Array(std::size_t n) : s_(std::make_shared<State>(std::vector<T>(n))) {}
  Array(std::initializer_list<T> values) : s_(std::make_shared<State>(std::vector<T>(values))) {}
  std::size_t size() const noexcept { return s_->v.size(); }
  T operator[](std::size_t i) const { return get(i); }
  T get(std::size_t i) const {
    std::scoped_lock g{s_->lock};
    if (i >= s_->v.size()) throw IndexError("array index out of range");
    return s_->v[i];
  }
  void set(std::size_t i, T x) {
    std::scoped_lock g{s_->lock};
    if (i >= s_->v.size()) throw IndexError("array assignment index out of range");
    s_->v[i] = std::move(x);
  }
  std::vector<T> to_vector() const {
    std::scoped_lock g{s_->lock};
    return s_->v;
  }
  bool acquire(bool block = true, Timeout timeout = {}) { return s_->lock.acquire(block, timeout); }
  void release() { s_->lock.release(); }

private:
  struct State {
    explicit State(std::vector<T> x) : v(std::move(x)) {}
    std::vector<T> v;
    troupe::threading::RLock lock;
  };
  std::shared_ptr<State> s_;
};

}  // namespace troupe::multiprocessing::dummy
