#include "troupe/threading/thread.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "troupe/errors.hpp"
#include "troupe/threading/event.hpp"

#include "bunch.hpp"
#include "leak_check.hpp"

namespace troupe::threading {
namespace {

using namespace std::chrono_literals;
using ThreadTest = troupe::testing::LeakCheck;

class ExceptHookGuard {
public:
  ~ExceptHookGuard() { excepthook = ExceptHook{}; }
};

// ThreadTests.test_various_ops: names, idents, start, join.
TEST_F(ThreadTest, VariousOps) {
  std::atomic<std::uint64_t> seen_ident{0};
  Thread t([&] { seen_ident = get_ident(); });
  EXPECT_FALSE(t.ident().has_value());
  EXPECT_FALSE(t.native_id().has_value());
  EXPECT_EQ(t.name().rfind("Thread-", 0), 0u) << t.name();
  EXPECT_FALSE(t.is_alive());
  t.start();
  t.join();
  EXPECT_FALSE(t.is_alive());
  ASSERT_TRUE(t.ident().has_value());
  EXPECT_EQ(*t.ident(), seen_ident.load());
  EXPECT_NE(*t.ident(), get_ident());
  EXPECT_GT(*t.native_id(), 0);
}

TEST_F(ThreadTest, TargetGetsItsArguments) {
  int sum = 0;
  std::string s;
  Thread t(
      [&](int a, int b, std::string x) {
        sum = a + b;
        s = x;
      },
      2, 40, std::string("hi"));
  t.start();
  t.join();
  EXPECT_EQ(sum, 42);
  EXPECT_EQ(s, "hi");
}

// ThreadTests: start twice; join before start; join self.
TEST_F(ThreadTest, StartAndJoinErrors) {
  Thread t([] {});
  try {
    t.join();
    FAIL();
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "cannot join thread before it is started");
  }
  t.start();
  try {
    t.start();
    FAIL();
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "threads can only be started once");
  }
  t.join();
  EXPECT_THROW(t.start(), RuntimeError);
  std::string err;
  Thread* self = nullptr;
  Thread u([&] {
    try {
      self->join();
    } catch (const RuntimeError& e) {
      err = e.what();
    }
  });
  self = &u;
  u.start();
  u.join();
  EXPECT_EQ(err, "cannot join current thread");
}

TEST_F(ThreadTest, JoinWithTimeout) {
  Event go;
  Thread t([&] { go.wait(); });
  t.start();
  const auto t1 = std::chrono::steady_clock::now();
  t.join(30ms);
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 29ms);
  EXPECT_TRUE(t.is_alive());
  t.join(-1s);  // negative: a poll
  EXPECT_TRUE(t.is_alive());
  go.set();
  t.join();
  EXPECT_FALSE(t.is_alive());
}

// Subclassing: run() overridden, as Python's Thread subclasses.
TEST_F(ThreadTest, SubclassRun) {
  struct Worker : Thread {
    explicit Worker(int n) : Thread({.name = "worker"}), n(n) {}
    ~Worker() override { join(); }  // a subclass joins before its members go
    void run() override { result = n * 2; }
    int n;
    int result = 0;
  };
  Worker w(21);
  EXPECT_EQ(w.name(), "worker");
  w.start();
  w.join();
  EXPECT_EQ(w.result, 42);
}

// ThreadTests.test_daemon_param and daemon inheritance.
TEST_F(ThreadTest, DaemonFlag) {
  EXPECT_FALSE(main_thread().daemon());
  Thread t([] {});
  EXPECT_FALSE(t.daemon());
  Thread d({.daemon = true}, [] {});
  EXPECT_TRUE(d.daemon());
  t.set_daemon(true);
  EXPECT_TRUE(t.daemon());
  std::atomic<bool> inherited{false};
  Thread parent({.daemon = true}, [&] {
    Thread child([] {});
    inherited = child.daemon();
  });
  parent.start();
  parent.join();
  EXPECT_TRUE(inherited.load());
  d.start();
  EXPECT_THROW(d.set_daemon(false), RuntimeError);
  d.join();
}

TEST_F(ThreadTest, CurrentAndMainThread) {
  EXPECT_EQ(current_thread().name(), main_thread().name());
  EXPECT_EQ(main_thread().name(), "MainThread");
  EXPECT_EQ(&current_thread(), &main_thread());
  EXPECT_EQ(*main_thread().native_id(), static_cast<std::int64_t>(getpid()));
  Thread* inside = nullptr;
  std::string inside_name;
  Thread t({.name = "inner"}, [&] {
    inside = &current_thread();
    inside_name = current_thread().name();
  });
  t.start();
  t.join();
  EXPECT_EQ(inside, &t);
  EXPECT_EQ(inside_name, "inner");
}

// A thread troupe did not start gets a "Dummy-N" stand-in, alive while it runs.
TEST_F(ThreadTest, ForeignThreadIsADummy) {
  std::string name;
  bool daemon = false, alive = false;
  std::int64_t native = 0;
  std::thread([&] {
    name = current_thread().name();
    daemon = current_thread().daemon();
    alive = current_thread().is_alive();
    native = *current_thread().native_id();
    EXPECT_EQ(native, get_native_id());
  }).join();
  EXPECT_EQ(name.rfind("Dummy-", 0), 0u) << name;
  EXPECT_TRUE(daemon);
  EXPECT_TRUE(alive);
}

TEST_F(ThreadTest, EnumerateAndActiveCount) {
  const int before = active_count();
  Event go, ready;
  Thread t({.name = "listed"}, [&] {
    ready.set();
    go.wait();
  });
  t.start();
  ready.wait();
  EXPECT_EQ(active_count(), before + 1);
  auto all = enumerate();
  EXPECT_NE(std::find(all.begin(), all.end(), &t), all.end());
  EXPECT_NE(std::find(all.begin(), all.end(), &main_thread()), all.end());
  go.set();
  t.join();
  EXPECT_EQ(active_count(), before);
  all = enumerate();
  EXPECT_EQ(std::find(all.begin(), all.end(), &t), all.end());
}

// 3.14: start() sets the OS thread name (truncated to 15 bytes on Linux).
TEST_F(ThreadTest, OsThreadNameIsSet) {
  char buf[32] = {};
  Thread t({.name = "a-rather-long-thread-name"},
           [&] { pthread_getname_np(pthread_self(), buf, sizeof buf); });
  t.start();
  t.join();
  EXPECT_STREQ(buf, "a-rather-long-t");
}

// ExceptHookTests.test_excepthook: the default prints "Exception in thread NAME:" and the error.
TEST_F(ThreadTest, DefaultExcepthookPrints) {
  ::testing::internal::CaptureStderr();
  Thread t({.name = "crasher"}, [] { throw std::out_of_range("index 7 out of range"); });
  t.start();
  t.join();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("Exception in thread crasher:"), std::string::npos) << err;
  EXPECT_NE(err.find("std::out_of_range: index 7 out of range"), std::string::npos) << err;
  EXPECT_FALSE(t.is_alive());
}

// ExceptHookTests.test_custom_excepthook
TEST_F(ThreadTest, CustomExcepthook) {
  ExceptHookGuard restore;
  std::mutex mu;
  ExceptHookArgs got;
  excepthook = [&](const ExceptHookArgs& a) {
    std::scoped_lock g(mu);
    got = a;
  };
  Thread t([] { throw ValueError("bad value"); });
  t.start();
  t.join();
  std::scoped_lock g(mu);
  EXPECT_EQ(got.exc_type, "troupe::ValueError");
  EXPECT_EQ(got.thread, &t);
  EXPECT_TRUE(got.exc_traceback.empty());
  EXPECT_THROW(std::rethrow_exception(got.exc_value), ValueError);
}

// ExceptHookTests.test_custom_excepthook_fail: a hook that throws is reported, not fatal.
TEST_F(ThreadTest, ThrowingExcepthookIsReported) {
  ExceptHookGuard restore;
  excepthook = [](const ExceptHookArgs&) { throw RuntimeError("hook failed"); };
  ::testing::internal::CaptureStderr();
  Thread t([] { throw ValueError("bad value"); });
  t.start();
  t.join();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("Exception in threading.excepthook:"), std::string::npos) << err;
  EXPECT_NE(err.find("hook failed"), std::string::npos) << err;
  EXPECT_NE(err.find("bad value"), std::string::npos) << err;
}

TEST_F(ThreadTest, StackSize) {
  EXPECT_EQ(stack_size(), 0u);
  EXPECT_THROW(stack_size(100), ValueError);
  EXPECT_EQ(stack_size(1 << 20), 0u);
  std::size_t seen = 0;
  Thread t([&] {
    pthread_attr_t a;
    pthread_getattr_np(pthread_self(), &a);
    pthread_attr_getstacksize(&a, &seen);
    pthread_attr_destroy(&a);
  });
  t.start();
  t.join();
  EXPECT_EQ(stack_size(0), static_cast<std::size_t>(1 << 20));
  EXPECT_GE(seen, static_cast<std::size_t>(1 << 20));
  EXPECT_LT(seen, static_cast<std::size_t>(2 << 20));
}

TEST_F(ThreadTest, SetName) {
  Thread t([] {});
  t.set_name("renamed");
  EXPECT_EQ(t.name(), "renamed");
  EXPECT_GE(TIMEOUT_MAX, std::chrono::seconds(9223372036));
}

// Decided: destroying a running non-daemon Thread joins it (Python joins it at exit).
TEST_F(ThreadTest, DestroyingARunningThreadJoinsIt) {
  std::atomic<bool> finished{false};
  {
    Thread t([&] {
      std::this_thread::sleep_for(20ms);
      finished = true;
    });
    t.start();
  }
  EXPECT_TRUE(finished.load());
}

// Decided: destroying a running daemon Thread built from a target detaches it; current_thread()
// keeps working in it.
TEST_F(ThreadTest, DestroyingARunningDaemonDetachesIt) {
  Event go, done;
  std::string name_after;
  {
    Thread t({.name = "detached", .daemon = true}, [&] {
      go.wait();
      name_after = current_thread().name();
      done.set();
    });
    t.start();
  }
  go.set();
  ASSERT_TRUE(done.wait(10s));
  EXPECT_EQ(name_after, "detached");
  // The LeakCheck fixture waits for the detached thread to exit.
}

// TimerTests: the function runs after the interval, with its arguments; cancel stops it.
TEST_F(ThreadTest, TimerFires) {
  std::atomic<int> got{0};
  const auto t1 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration at{};
  Timer timer(
      20ms,
      [&](int v) {
        at = std::chrono::steady_clock::now() - t1;
        got = v;
      },
      7);
  timer.start();
  timer.join();
  EXPECT_EQ(got.load(), 7);
  EXPECT_GE(at, 19ms);
  EXPECT_TRUE(timer.finished.is_set());
}

TEST_F(ThreadTest, TimerCancel) {
  std::atomic<bool> fired{false};
  Timer timer(10s, [&] { fired = true; });
  timer.start();
  timer.cancel();
  timer.join(10s);
  EXPECT_FALSE(timer.is_alive());
  EXPECT_FALSE(fired.load());
}

// Many threads started and joined at once leave nothing behind.
TEST_F(ThreadTest, ManyThreads) {
  std::atomic<int> ran{0};
  std::vector<std::unique_ptr<Thread>> ts;
  for (int i = 0; i < 50; ++i) {
    ts.push_back(std::make_unique<Thread>([&] { ran.fetch_add(1); }));
    ts.back()->start();
  }
  for (auto& t : ts) t->join();
  EXPECT_EQ(ran.load(), 50);
}

}  // namespace
}  // namespace troupe::threading
