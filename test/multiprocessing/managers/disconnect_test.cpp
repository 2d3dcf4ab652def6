// What a managed lock or semaphore keeps when the process that acquired it exits or is killed:
// CPython's TestSyncManagerTypes (test_lock, test_rlock, test_semaphore, test_bounded_semaphore)
// has a child acquire and exit and the parent release. A Lock and the semaphores keep what was
// acquired (Python's behaviour); an RLock, which only its owner may release, is released.
#include <signal.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"

namespace disconnect_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;

// A child: acquires and returns (its connection closes as it exits).
void acquire_and_exit(mm::AcquirerProxy lock) {
  if (!lock.acquire(true, 60s)) troupe::sys_exit(3);
}
TROUPE_ENTRY(acquire_and_exit);

// A child: acquires, tells the parent, and waits to be killed.
void acquire_and_hang(mm::AcquirerProxy lock, mm::EventProxy acquired) {
  if (!lock.acquire(true, 60s)) troupe::sys_exit(3);
  acquired.set();
  for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(100ms);
}
TROUPE_ENTRY(acquire_and_hang);

// A grandchild that only waits, until the test writes on the pipe (60 s at most).
void wait_for_word(mp::Connection& in) {
  (void)in.poll(60s);
}
TROUPE_ENTRY(wait_for_word);

// A child that holds `rlock` through its first link, drops that link from its table by a
// connect() (the proxy still holds it), forks a grandchild that waits on `in`, says so, and
// waits to be killed.
void hold_connect_and_fork(mm::AcquirerProxy rlock, mm::EventProxy ready, std::string address,
                           mp::Connection& in) {
  if (!rlock.acquire(true, 60s)) troupe::sys_exit(3);
  mm::SyncManager again({.address = mp::Address::parse(address)});
  again.connect();
  mp::ProcessOptions po;
  po.start_method = "fork";
  po.fork_with_threads = true;
  mp::Process grandchild(po, &wait_for_word, std::move(in));
  grandchild.start();
  ready.set();
  for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(100ms);
}
TROUPE_ENTRY(hold_connect_and_fork);

namespace {

using troupe::testing::eventually;

class DisconnectTest : public troupe::testing::StartMethodTest {
protected:
  void run_child(mm::AcquirerProxy lock) {
    mp::Process child(child_options(), &acquire_and_exit, lock);
    child.start();
    child.join(60s);
    ASSERT_EQ(child.exitcode(), 0);
  }
  void SetUp() override {
    LeakCheck::SetUp();  // first: TearDown runs after a skip too, and checks against it
    if (skip_fork())
      GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  }
};

TEST_P(DisconnectTest, ALockAcquiredByAnExitedProcessStaysLocked) {
  // CPython's test_lock.
  mm::SyncManager m(options());
  m.start();
  auto lock = m.Lock();
  run_child(lock);
  EXPECT_TRUE(lock.locked());
  lock.release();
  EXPECT_THROW(lock.release(), troupe::RuntimeError);
}

TEST_P(DisconnectTest, SemaphoresKeepTheUnitsOfAnExitedProcess) {
  // CPython's test_semaphore and test_bounded_semaphore.
  mm::SyncManager m(options());
  m.start();
  auto sem = m.Semaphore(1);
  run_child(sem);
  EXPECT_FALSE(sem.acquire(false));
  sem.release();
  auto bsem = m.BoundedSemaphore(1);
  run_child(bsem);
  EXPECT_FALSE(bsem.acquire(false));
  bsem.release();
  EXPECT_THROW(bsem.release(), troupe::ValueError);
}

TEST_P(DisconnectTest, AnRLockOfAnExitedProcessIsReleased) {
  // Only its owner could release it: Python would keep it locked forever.
  mm::SyncManager m(options());
  m.start();
  auto rlock = m.RLock();
  run_child(rlock);
  EXPECT_TRUE(eventually([&] { return rlock.acquire(false); }));
  rlock.release();
}

TEST_P(DisconnectTest, AKilledHoldersRLockIsReleasedAndItsLockKept) {
  mm::SyncManager m(options());
  m.start();
  auto rlock = m.RLock();
  auto lock = m.Lock();
  for (auto* l : {&rlock, &lock}) {
    auto acquired = m.Event();
    mp::Process child(child_options(), &acquire_and_hang, *l, acquired);
    child.start();
    ASSERT_TRUE(acquired.wait(60s));
    EXPECT_FALSE(l->acquire(false));
    child.kill();
    child.join(60s);
  }
  EXPECT_TRUE(eventually([&] { return rlock.acquire(false); }));
  rlock.release();
  EXPECT_FALSE(lock.acquire(false));  // Python's: a Lock stays with its dead holder
  lock.release();                     // … until anyone releases it
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
}

// Review M2: a link that connect() dropped from the process's table while a proxy still held it
// is closed in a forked child too. Its server then sees the connection end when the process
// that made it dies (an RLock it held is released at once), not only when the child it forked
// exits.
TEST_P(DisconnectTest, AForgottenLinkIsClosedInAForkedChild) {
  mm::SyncManager m(options());
  m.start();
  auto rlock = m.RLock();
  auto ready = m.Event();
  auto [out, in] = mp::Pipe();
  mp::Process child(child_options(), &hold_connect_and_fork, rlock, ready, m.address().str(),
                    std::move(in));
  child.start();
  ASSERT_TRUE(ready.wait(60s));
  EXPECT_FALSE(rlock.acquire(false));
  child.kill();  // the grandchild lives on, with whatever of its parent's sockets it kept
  child.join(60s);
  const bool released = eventually([&] { return rlock.acquire(false); }, 10s);
  out.send_bytes(std::string("done"));  // the grandchild ends
  EXPECT_TRUE(released)
      << "the RLock stayed with a dead process's connection that its forked child held open";
  if (released) rlock.release();
}

TEST_P(DisconnectTest, AServerThatStopsAnsweringFailsThePendingCallByTheHeartbeat) {
  // A SIGSTOPped server stands for a host that vanished without closing the connection: the
  // kernel keeps the socket open, only the heartbeat can tell.
  mm::ManagerOptions o = options();
  o.link.heartbeat_interval = 50ms;
  o.link.heartbeat_timeout = 500ms;
  mm::SyncManager m(o);
  m.start();
  auto q = m.Queue<std::int64_t>();
  // The link idle for longer than the timeout (its thread, and so its heartbeat, not started
  // yet: quick blocking calls need neither): the silence that counts starts with the wait.
  std::this_thread::sleep_for(700ms);
  // A long wait on a live server is kept alive by the pings, and ends as asked.
  EXPECT_THROW(q.get(true, 1500ms), troupe::queue::Empty);
  const int pid = *m.process()->pid();
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  try {
    q.get(true, 60s);
    FAIL() << "no error";
  } catch (const troupe::EOFError& e) {
    EXPECT_NE(std::string(e.what()).find("has not answered"), std::string::npos) << e.what();
  }
  ::kill(pid, SIGCONT);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, DisconnectTest,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace disconnect_test
