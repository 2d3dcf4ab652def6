#include "troupe/_thread.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include "troupe/_thread/thread.hpp"
#include "troupe/errors.hpp"
#include "troupe/threading/thread.hpp"

#include "leak_check.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using ThreadModuleTest = troupe::testing::LeakCheck;
using troupe::testing::eventually;

class ExceptHookGuard {
public:
  ~ExceptHookGuard() { threading::excepthook = threading::ExceptHook{}; }
};

// Waits until every thread started by the test has finished (the count of _count() at start).
void wait_threads_exit(int count_before) {
  ASSERT_TRUE(eventually([&] { return _thread::_count() <= count_before; }))
      << "_count() stays at " << _thread::_count() << ", was " << count_before;
}

pid_t gettid_now() {
  return static_cast<pid_t>(::syscall(SYS_gettid));
}

static_assert(std::is_same_v<_thread::error, RuntimeError>);
static_assert(std::is_same_v<_thread::error, ThreadError>);
static_assert(std::is_same_v<_thread::LockType, threading::Lock>);
static_assert(std::is_same_v<_thread::RLock, threading::RLock>);
static_assert(_thread::daemon_threads_allowed());

// test_thread.ThreadRunningTests.test_starting_threads: ten threads, the last one out releases
// `done`, a lock from allocate_lock that the main thread holds.
TEST_F(ThreadModuleTest, StartingThreads) {
  const int before = _thread::_count();
  auto done = _thread::allocate_lock();
  auto running_mutex = _thread::allocate_lock();
  done.acquire();
  constexpr int kTasks = 10;
  int created = 0, running = 0;
  auto task = [&] {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    std::scoped_lock with{running_mutex};
    if (--running == 0 && created == kTasks) done.release();
  };
  for (int i = 0; i < kTasks; ++i) {
    std::scoped_lock with{running_mutex};
    _thread::start_new_thread(task);
    ++created;
    ++running;
  }
  EXPECT_TRUE(done.acquire(true, 30s));
  wait_threads_exit(before);
}

TEST_F(ThreadModuleTest, ReturnsTheIdentAndPassesArguments) {
  const int before = _thread::_count();
  std::atomic<std::uint64_t> seen{0};
  std::atomic<std::int64_t> native{0};
  std::string got;
  auto done = _thread::allocate_lock();
  done.acquire();
  const auto ident = _thread::start_new_thread(
      [&](int a, std::string s) {
        got = s + std::to_string(a);
        native = _thread::get_native_id();
        seen = _thread::get_ident();
        done.release();
      },
      42, std::string("answer "));
  ASSERT_TRUE(done.acquire(true, 30s));
  EXPECT_EQ(seen.load(), ident);
  EXPECT_NE(ident, _thread::get_ident());
  EXPECT_EQ(_thread::get_ident(), threading::get_ident());
  EXPECT_GT(native.load(), 0);
  EXPECT_NE(native.load(), _thread::get_native_id());
  EXPECT_EQ(got, "answer 42");
  wait_threads_exit(before);
}

// Python: a _thread thread is not in threading.enumerate() unless it calls current_thread(),
// which makes a _DummyThread for it; it leaves enumerate() when it ends.
TEST_F(ThreadModuleTest, InEnumerateOnlyAsADummyAfterCurrentThread) {
  const int before = _thread::_count();
  const int active_before = threading::active_count();
  auto go = _thread::allocate_lock(), stage = _thread::allocate_lock();
  go.acquire();
  stage.acquire();
  std::string name;
  _thread::start_new_thread([&] {
    stage.release();  // 1: running, current_thread() not called
    go.acquire();
    name = threading::current_thread().name();
    stage.release();  // 2: a Dummy now
    go.acquire();
  });
  ASSERT_TRUE(stage.acquire(true, 30s));
  EXPECT_EQ(threading::active_count(), active_before);
  EXPECT_EQ(_thread::_count(), before + 1);
  go.release();
  ASSERT_TRUE(stage.acquire(true, 30s));
  EXPECT_EQ(name.rfind("Dummy-", 0), 0u) << name;
  EXPECT_EQ(threading::active_count(), active_before + 1);
  const auto all = threading::enumerate();
  EXPECT_TRUE(std::any_of(all.begin(), all.end(), [&](auto* t) { return t->name() == name; }));
  go.release();
  wait_threads_exit(before);
  EXPECT_TRUE(eventually([&] { return threading::active_count() == active_before; }));
}

// test_thread.ThreadRunningTests.test_stack_size / test_nt_and_posix_stack_size. The setting is
// threading's too, as in Python.
TEST_F(ThreadModuleTest, StackSize) {
  EXPECT_EQ(_thread::stack_size(), 0u);
  _thread::stack_size(0);
  EXPECT_EQ(_thread::stack_size(), 0u);
  EXPECT_THROW(_thread::stack_size(4096), ValueError);
  EXPECT_THROW(_thread::stack_size(32767), ValueError);
  for (std::size_t tss : {std::size_t{262144}, std::size_t{0x100000}, std::size_t{0}}) {
    _thread::stack_size(tss);
    EXPECT_EQ(_thread::stack_size(), tss);
    EXPECT_EQ(threading::stack_size(), tss);
  }
  for (std::size_t tss : {std::size_t{262144}, std::size_t{0x100000}}) {
    const int before = _thread::_count();
    EXPECT_EQ(_thread::stack_size(tss), tss == 262144 ? 0u : 262144u);
    std::atomic<std::size_t> seen{0};
    auto done = _thread::allocate_lock();
    done.acquire();
    _thread::start_new_thread([&] {
      pthread_attr_t a;
      pthread_getattr_np(pthread_self(), &a);
      std::size_t s = 0;
      pthread_attr_getstacksize(&a, &s);
      pthread_attr_destroy(&a);
      seen = s;
      done.release();
    });
    ASSERT_TRUE(done.acquire(true, 30s));
    EXPECT_GE(seen.load(), tss);
    EXPECT_LT(seen.load(), tss + (1 << 20));  // not the 8 MiB default (TSan adds some room)
    wait_threads_exit(before);
  }
  EXPECT_EQ(_thread::stack_size(0), std::size_t{0x100000});
}

// A thread the OS cannot start is _thread.error ("can't start new thread"), and is not counted.
TEST_F(ThreadModuleTest, StartFailureIsAnError) {
  const int before = _thread::_count();
  _thread::stack_size(std::size_t{1} << 60);  // no stack that large can be mapped
  std::atomic<bool> ran{false};
  try {
    _thread::start_new_thread([&] { ran = true; });
    ADD_FAILURE() << "a thread with a 2^60-byte stack started";
  } catch (const _thread::error& e) {
    EXPECT_NE(std::string(e.what()).find("can't start new thread: pthread_create"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("stack size 1152921504606846976 bytes"), std::string::npos)
        << e.what();
  }
  _thread::stack_size(0);
  EXPECT_EQ(_thread::_count(), before);
  wait_threads_exit(before);
  EXPECT_FALSE(ran.load());
}

// test_thread.ThreadRunningTests.test__count; threading::Thread counts too, as in Python.
TEST_F(ThreadModuleTest, Count) {
  const int orig = _thread::_count();
  auto mut = _thread::allocate_lock();
  mut.acquire();
  auto witness = std::make_shared<int>(0);
  std::weak_ptr<int> alive = witness;
  _thread::start_new_thread(
      [&mut](const std::shared_ptr<int>&) {
        mut.acquire();
        mut.release();
      },
      std::move(witness));
  EXPECT_EQ(_thread::_count(), orig + 1);  // counted from start_new_thread's return
  threading::Thread t([&mut] {
    mut.acquire();
    mut.release();
  });
  t.start();
  EXPECT_EQ(_thread::_count(), orig + 2);
  mut.release();
  t.join();
  // The function's copy of its arguments is gone before the thread stops counting.
  ASSERT_TRUE(eventually([&] { return _thread::_count() == orig; }));
  EXPECT_TRUE(alive.expired());
}

// test_thread.ThreadRunningTests.test_unraisable_exception: the exception reaches the hook.
// troupe has no sys.unraisablehook: threading::excepthook gets it, with no Thread.
TEST_F(ThreadModuleTest, ExceptionGoesToExcepthook) {
  ExceptHookGuard restore;
  const int before = _thread::_count();
  std::mutex mu;
  std::vector<threading::ExceptHookArgs> got;
  threading::excepthook = [&](const threading::ExceptHookArgs& a) {
    std::scoped_lock g(mu);
    got.push_back(a);
  };
  auto started = _thread::allocate_lock();
  started.acquire();
  _thread::start_new_thread([&] {
    started.release();
    throw ValueError("task failed");
  });
  ASSERT_TRUE(started.acquire(true, 30s));
  wait_threads_exit(before);
  std::scoped_lock g(mu);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].exc_type, "troupe::ValueError");
  EXPECT_EQ(got[0].thread, nullptr);
  try {
    std::rethrow_exception(got[0].exc_value);
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "task failed");
  }
}

// The default hook names the thread by its ident, as CPython's does for a thread of None.
TEST_F(ThreadModuleTest, DefaultExcepthookNamesTheIdent) {
  const int before = _thread::_count();
  ::testing::internal::CaptureStderr();
  const auto ident = _thread::start_new_thread([] { throw std::out_of_range("index 7"); });
  wait_threads_exit(before);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("Exception in thread " + std::to_string(ident) + ":"), std::string::npos)
      << err;
  EXPECT_NE(err.find("std::out_of_range: index 7"), std::string::npos) << err;
}

// _thread.exit() raises SystemExit, "which will cause the thread to exit silently"; so does
// sys_exit(n) (Python: SystemExit is ignored silently, whatever its code).
TEST_F(ThreadModuleTest, ExitEndsTheThreadSilently) {
  ExceptHookGuard restore;
  const int before = _thread::_count();
  std::atomic<int> hook_calls{0}, after_exit{0};
  threading::excepthook = [&](const threading::ExceptHookArgs&) { ++hook_calls; };
  ::testing::internal::CaptureStderr();
  _thread::start_new_thread([&] {
    _thread::exit();
    ++after_exit;
  });
  _thread::start_new_thread([&] {
    sys_exit(3);
    ++after_exit;
  });
  wait_threads_exit(before);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(hook_calls.load(), 0);
  EXPECT_EQ(after_exit.load(), 0);
  EXPECT_THROW(_thread::exit(), SystemExit);
}

// threading.Thread: SystemExit goes to excepthook, and Python's default hook ignores it.
TEST_F(ThreadModuleTest, ThreadingDefaultExcepthookIgnoresSystemExit) {
  ::testing::internal::CaptureStderr();
  threading::Thread t([] { _thread::exit(); });
  t.start();
  t.join();
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");

  ExceptHookGuard restore;
  std::atomic<bool> got_system_exit{false};
  threading::excepthook = [&](const threading::ExceptHookArgs& a) {
    try {
      std::rethrow_exception(a.exc_value);
    } catch (const SystemExit&) {
      got_system_exit = true;
    } catch (...) {
    }
  };
  threading::Thread u([] { _thread::exit(); });
  u.start();
  u.join();
  EXPECT_TRUE(got_system_exit.load());
}

// test_thread.LockTests (lock_tests.LockTests) on allocate_lock: the rules of CPython's lock.
TEST_F(ThreadModuleTest, LockSemantics) {
  auto lock = _thread::allocate_lock();
  EXPECT_FALSE(lock.locked());
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.locked());
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.acquire(true, 0s));
  EXPECT_FALSE(lock.acquire(true, 10ms));
  EXPECT_THROW(lock.acquire(false, 1s), ValueError);  // a timeout with blocking=false
  EXPECT_THROW(lock.acquire(true, -2s), ValueError);  // negative other than -1
  EXPECT_THROW(lock.acquire(true, -100ms), ValueError);
  lock.release();
  EXPECT_FALSE(lock.locked());
  EXPECT_THROW(lock.release(), _thread::error);  // "release unlocked lock"
  EXPECT_TRUE(lock.acquire(true, -1s));          // exactly -1: no timeout
  lock.release();
  EXPECT_TRUE(lock.acquire(false, -1s));
  lock.release();
  {
    std::scoped_lock with{lock};
    EXPECT_TRUE(lock.locked());
  }
  EXPECT_FALSE(lock.locked());
  // A timeout above TIMEOUT_MAX saturates: it waits like forever (CPython: OverflowError).
  EXPECT_TRUE(lock.acquire(true, std::chrono::hours(24 * 365 * 1000)));
  lock.release();
}

// lock_tests.LockTests.test_different_thread: any thread may release the lock.
TEST_F(ThreadModuleTest, LockReleasedByAnotherThread) {
  const int before = _thread::_count();
  auto lock = _thread::allocate_lock();
  lock.acquire();
  _thread::start_new_thread([&] { lock.release(); });
  EXPECT_TRUE(lock.acquire(true, 30s));
  lock.release();
  wait_threads_exit(before);
}

TEST_F(ThreadModuleTest, RLockIsReentrant) {
  _thread::RLock r;
  EXPECT_TRUE(r.acquire());
  EXPECT_TRUE(r.acquire(false));
  r.release();
  r.release();
  EXPECT_THROW(r.release(), RuntimeError);
}

// test_thread.BarrierTest.test_barrier: a barrier made of two allocate_lock locks, three trips.
TEST_F(ThreadModuleTest, BarrierOfLocks) {
  struct Barrier {
    explicit Barrier(int n) : n(n) { checkout.acquire(); }
    void enter() {
      checkin.acquire();
      if (++waiting == n) {
        waiting = n - 1;
        checkout.release();
        return;
      }
      checkin.release();
      checkout.acquire();
      if (--waiting == 0) {
        checkin.release();
        return;
      }
      checkout.release();
    }
    int n;
    int waiting = 0;
    _thread::LockType checkin = _thread::allocate_lock();
    _thread::LockType checkout = _thread::allocate_lock();
  };
  constexpr int kTasks = 10, kTrips = 3;
  const int before = _thread::_count();
  Barrier bar(kTasks);
  auto done = _thread::allocate_lock(), running_mutex = _thread::allocate_lock();
  done.acquire();
  int running = kTasks;
  for (int i = 0; i < kTasks; ++i) {
    _thread::start_new_thread(
        [&](int ident) {
          for (int trip = 0; trip < kTrips; ++trip) {
            if (ident != 0) std::this_thread::sleep_for(std::chrono::microseconds(10 * ident));
            bar.enter();
          }
          bool finished;
          {
            std::scoped_lock with{running_mutex};
            finished = --running == 0;
          }
          if (finished) done.release();
        },
        i);
  }
  EXPECT_TRUE(done.acquire(true, 60s));
  wait_threads_exit(before);
}

// ---- interrupt_main (test_threading.InterruptMainTests) --------------------------------------

std::atomic<pid_t> handled_on{0};
std::atomic<int> handled_signal{0};
static_assert(std::atomic<pid_t>::is_always_lock_free);

extern "C" void record_signal(int signum) {
  handled_on.store(static_cast<pid_t>(::syscall(SYS_gettid)));
  handled_signal.store(signum);
}

// Installs `handler` for `signum` and restores the old disposition at scope exit.
class SignalGuard {
public:
  SignalGuard(int signum, void (*handler)(int)) : signum_(signum) {
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(signum_, &sa, &old_);
    handled_on = 0;
    handled_signal = 0;
  }
  ~SignalGuard() { sigaction(signum_, &old_, nullptr); }

private:
  int signum_;
  struct sigaction old_ {};
};

// check_interrupt_main_with_signal_handler, from another thread: the handler runs in the
// main thread (this test's thread: gtest runs tests on the main thread).
TEST_F(ThreadModuleTest, InterruptMainFromAThreadRunsTheHandlerInMain) {
  ASSERT_EQ(gettid_now(), ::getpid()) << "the test must run on the main thread";
  for (int signum : {SIGINT, SIGTERM}) {
    const int before = _thread::_count();
    SignalGuard guard(signum, record_signal);
    if (signum == SIGINT)
      _thread::start_new_thread([] { _thread::interrupt_main(); });  // SIGINT by default
    else
      _thread::start_new_thread([signum] { _thread::interrupt_main(signum); });
    EXPECT_TRUE(eventually([] { return handled_signal.load() != 0; })) << signum;
    EXPECT_EQ(handled_signal.load(), signum);
    EXPECT_EQ(handled_on.load(), ::getpid());
    wait_threads_exit(before);
  }
}

// test_interrupt_main_mainthread: called in the main thread, the handler has run on return.
TEST_F(ThreadModuleTest, InterruptMainInMainRunsTheHandlerAtOnce) {
  SignalGuard guard(SIGTERM, record_signal);
  _thread::interrupt_main(SIGTERM);
  EXPECT_EQ(handled_signal.load(), SIGTERM);
  EXPECT_EQ(handled_on.load(), gettid_now());
}

// check_interrupt_main_noerror: SIG_IGN and SIG_DFL → nothing happens (with SIG_DFL a signal
// sent would end this process, and the test with it).
TEST_F(ThreadModuleTest, InterruptMainDoesNothingForIgnoredOrDefault) {
  for (int signum : {SIGINT, SIGTERM}) {
    {
      SignalGuard guard(signum, SIG_IGN);
      EXPECT_NO_THROW(_thread::interrupt_main(signum));
    }
    SignalGuard guard(signum, SIG_DFL);
    EXPECT_NO_THROW(_thread::interrupt_main(signum));
  }
}

// test_interrupt_main_invalid_signal
TEST_F(ThreadModuleTest, InterruptMainRejectsInvalidSignals) {
  EXPECT_THROW(_thread::interrupt_main(-1), ValueError);
  EXPECT_THROW(_thread::interrupt_main(0), ValueError);
  EXPECT_THROW(_thread::interrupt_main(NSIG), ValueError);
  EXPECT_THROW(_thread::interrupt_main(1000000), ValueError);
}

// The C++ form of "the main thread's event loop gets the signal": Asio's signal_set in main.
TEST_F(ThreadModuleTest, InterruptMainReachesAnAsioSignalSetInMain) {
  const int before = _thread::_count();
  boost::asio::io_context ioc;
  boost::asio::signal_set signals(ioc, SIGINT);
  int got = 0;
  signals.async_wait([&](const boost::system::error_code& ec, int signum) {
    if (!ec) got = signum;
  });
  _thread::start_new_thread([] { _thread::interrupt_main(); });
  ioc.run_for(30s);
  EXPECT_EQ(got, SIGINT);
  wait_threads_exit(before);
}

// test_thread.TestForkInThread: fork in a _thread thread; in the child that thread is the main
// thread (interrupt_main reaches it) and the only one counted by _count().
TEST_F(ThreadModuleTest, ForkInThread) {
  const int before = _thread::_count();
  SignalGuard guard(SIGUSR1, record_signal);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::atomic<pid_t> child{0};
  _thread::start_new_thread([&] {
    const pid_t pid = ::fork();
    if (pid != 0) {
      child = pid;
      return;
    }
    ::close(fds[0]);
    bool ok = _thread::_count() == 1;
    try {
      _thread::interrupt_main(SIGUSR1);
      ok = ok && handled_on.load() == ::getpid();
    } catch (...) {
      ok = false;
    }
    ssize_t n = ::write(fds[1], ok ? "OK" : "NO", 2);
    ::_exit(n == 2 ? 0 : 1);
  });
  char buf[3] = {};
  ASSERT_EQ(::read(fds[0], buf, 2), 2);
  EXPECT_STREQ(buf, "OK");
  ::close(fds[0]);
  ::close(fds[1]);
  ASSERT_TRUE(eventually([&] { return child.load() != 0; }));
  int status = 0;
  ASSERT_EQ(::waitpid(child.load(), &status, 0), child.load());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  wait_threads_exit(before);
}

// 3.14: _thread.set_name sets the OS name: 15 bytes, cut at a character boundary.
TEST_F(ThreadModuleTest, SetName) {
  const int before = _thread::_count();
  char plain[32] = {}, utf8[32] = {};
  auto done = _thread::allocate_lock();
  done.acquire();
  _thread::start_new_thread([&] {
    _thread::set_name("a-rather-long-thread-name");
    pthread_getname_np(pthread_self(), plain, sizeof plain);
    _thread::set_name("abcdefghijklmn\xc3\xa9");  // é straddles byte 15
    pthread_getname_np(pthread_self(), utf8, sizeof utf8);
    done.release();
  });
  ASSERT_TRUE(done.acquire(true, 30s));
  EXPECT_STREQ(plain, "a-rather-long-t");
  EXPECT_STREQ(utf8, "abcdefghijklmn");
  wait_threads_exit(before);
}

TEST_F(ThreadModuleTest, ModuleConstants) {
  EXPECT_EQ(_thread::TIMEOUT_MAX, threading::TIMEOUT_MAX);
  EXPECT_EQ(_thread::TIMEOUT_MAX, std::chrono::seconds(9223372036));  // CPython on Linux
}

}  // namespace
}  // namespace troupe
