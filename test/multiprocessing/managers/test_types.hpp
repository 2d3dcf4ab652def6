// test/multiprocessing/managers/test_types.hpp — the classes the manager tests host, and a
// built-in style object (Gate) whose calls complete later, through the hosted-object interface.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers.hpp"

namespace managers_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;

class Maths {
public:
  int add(int a, int b) const { return a + b; }
  double mul(double a, double b) { return a * b; }
  std::string greet(const std::string& name) { return "hello " + name; }
  void fail(const std::string& why) { throw troupe::ValueError(why); }
  int slow(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  }
};
TROUPE_EXPOSE(Maths, add, mul, greet, fail, slow);

class Counter {
public:
  int increment() {
    std::scoped_lock lock(m_);
    return ++n_;
  }
  int value() const {
    std::scoped_lock lock(m_);
    return n_;
  }

private:
  mutable std::mutex m_;
  int n_ = 0;
};
TROUPE_EXPOSE(Counter, increment, value);

class Factory {
public:
  std::shared_ptr<Counter> make_counter() { return std::make_shared<Counter>(); }
};
TROUPE_EXPOSE(Factory, make_counter);

// _TestMyManager's baz, a generator registered with proxytype=IteratorProxy: a class with a
// next() that returns none at the end.
struct Squares {
  std::int64_t i = 0;
  std::optional<std::int64_t> next() {
    if (i >= 10) return std::nullopt;
    const std::int64_t v = i * i;
    ++i;
    return v;
  }
};
TROUPE_EXPOSE(Squares, next);

// An aggregate: it has a codec, so _getvalue() can copy it.
struct Cell {
  int value = 0;
  std::string label;
  int get() const { return value; }
  void set(int v) { value = v; }
};
TROUPE_EXPOSE(Cell, get, set);

/// A built-in style hosted object: "wait" completes when "open" is called (or fails when the
/// caller's connection closes); "waiting" says how many wait. No thread is held by a waiter.
class Gate final : public mm::detail::HostedObject {
public:
  std::vector<std::string> exposed() const override { return {"wait", "open", "waiting"}; }
  std::string repr() const override { return "<Gate>"; }

  void call(const mm::detail::CallInfo& call, mm::detail::CompletionPtr done) override {
    if (call.method == "wait") {
      if (call.args.size() != 0) mm::detail::bad_arity(call, "Gate", 0);
      std::scoped_lock lock(m_);
      waiters_.push_back({call.caller, std::move(done)});
      return;
    }
    if (call.method == "open") {
      std::deque<Waiter> all;
      {
        std::scoped_lock lock(m_);
        all.swap(waiters_);
      }
      for (auto& w : all) w.done->complete(std::string("opened"));
      return done->complete(static_cast<int>(all.size()));
    }
    if (call.method == "waiting") {
      std::scoped_lock lock(m_);
      return done->complete(static_cast<int>(waiters_.size()));
    }
    mm::detail::unknown_method(call, "Gate", exposed());
  }

  void release_connection(std::uint64_t connection) override {
    std::deque<Waiter> gone;
    {
      std::scoped_lock lock(m_);
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->who.connection == connection) {
          gone.push_back(std::move(*it));
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& w : gone)
      w.done->fail(std::make_exception_ptr(troupe::EOFError("the caller's connection closed")));
    released_connections_.fetch_add(1);
  }

  static inline std::atomic<int> released_connections_{0};

private:
  struct Waiter {
    mm::Caller who;
    mm::detail::CompletionPtr done;
  };
  std::mutex m_;
  std::deque<Waiter> waiters_;
};

/// A registered class whose method takes a proxy to another object of the same server, and
/// calls it from the server (Python: a proxy "owned by the manager" in its Server's process).
class Depositor {
public:
  int deposit(mm::Proxy<Counter> counter, int times) {
    int n = 0;
    for (int i = 0; i < times; ++i) n = counter.call<&Counter::increment>();
    return n;
  }
};
TROUPE_EXPOSE(Depositor, deposit);

/// A registered class whose wait() blocks its server thread until open() (20 s at most).
class Latch {
public:
  bool wait() {
    std::unique_lock lock(m_);
    waiting.fetch_add(1);
    const bool opened = cv_.wait_for(lock, std::chrono::seconds(20), [&] { return open_; });
    waiting.fetch_sub(1);
    return opened;
  }
  void open() {
    {
      std::scoped_lock lock(m_);
      open_ = true;
    }
    cv_.notify_all();
  }
  static inline std::atomic<int> waiting{0};  // calls inside wait() now (the server is in-process)

private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};
TROUPE_EXPOSE(Latch, wait, open);

/// Like Latch, but every SharedGate opens together (one static gate): a serialized typeid's objects
/// (a strand each) that wait for another object's call.
class SharedGate {
public:
  bool wait() {
    std::unique_lock lock(m());
    waiting.fetch_add(1);
    const bool opened = cv().wait_for(lock, std::chrono::seconds(20), [&] { return open_; });
    waiting.fetch_sub(1);
    return opened;
  }
  void open() {
    {
      std::scoped_lock lock(m());
      open_ = true;
    }
    cv().notify_all();
  }
  static void reset() {
    std::scoped_lock lock(m());
    open_ = false;
  }
  static inline std::atomic<int> waiting{0};

private:
  static std::mutex& m() {
    static std::mutex m;
    return m;
  }
  static std::condition_variable& cv() {
    static std::condition_variable cv;
    return cv;
  }
  static inline bool open_ = false;
};
TROUPE_EXPOSE(SharedGate, wait, open);

/// A registered class that notes whether two of its calls ever overlapped.
class Overlap {
public:
  int touch() {
    if (inside_.fetch_add(1) != 0) overlapped.store(true);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    inside_.fetch_sub(1);
    return 0;
  }
  static inline std::atomic<bool> overlapped{false};

private:
  std::atomic<int> inside_{0};
};
TROUPE_EXPOSE(Overlap, touch);

/// The manager class the tests use, and its registrations (made during static initialisation,
/// so that a spawned server process has them too).
struct TestManager : mm::Manager<TestManager> {
  using Manager::Manager;
};

inline bool register_test_types() {
  TestManager::register_<Maths>("Maths");
  TestManager::register_<Maths>("NarrowMaths", {.exposed = std::vector<std::string>{"add"}});
  TestManager::register_<Counter>("Counter");
  TestManager::register_<Depositor>("Depositor");
  TestManager::register_<Cell>("Cell");
  TestManager::register_<Latch>("Latch");
  TestManager::register_<SharedGate>("SerialGate", {.serialized = true});
  // One Overlap object served as two serialized typeids.
  static auto overlap = std::make_shared<Overlap>();
  TestManager::register_("get_serial_overlap", [] { return overlap; }, {.serialized = true});
  TestManager::register_("get_serial_overlap_too", [] { return overlap; }, {.serialized = true});
  TestManager::register_<Factory>("Factory", {.method_to_typeid = {{"make_counter", "Counter"}}});
  static auto shared = std::make_shared<Counter>();
  TestManager::register_("get_shared_counter", [] { return shared; });
  // One Maths object handed out under two typeids, the second exposing less.
  static auto shared_maths = std::make_shared<Maths>();
  TestManager::register_("get_shared_maths", [] { return shared_maths; });
  TestManager::register_("get_shared_narrow_maths", [] { return shared_maths; },
                         {.exposed = std::vector<std::string>{"add"}});
  TestManager::register_("CounterFrom", [](int start) {
    auto c = std::make_shared<Counter>();
    for (int i = 0; i < start; ++i) c->increment();
    return c;
  });
  mm::detail::TypeEntry gate;
  gate.typeid_ = "Gate";
  gate.create = [](const mm::detail::CallInfo&) { return std::make_shared<Gate>(); };
  TestManager::registry().add(std::move(gate));
  return true;
}
inline const bool registered = register_test_types();

}  // namespace managers_test
