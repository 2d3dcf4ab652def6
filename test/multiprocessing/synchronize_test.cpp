// multiprocessing's Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier, Value,
// Array, RawValue, RawArray between processes: one test body per behaviour, run under every
// start method (as CPython's _test_multiprocessing runs its _TestLock, _TestSemaphore,
// _TestCondition, _TestEvent, _TestBarrier, _TestValue and _TestArray per start method), plus
// troupe's: a holder killed with SIGKILL does not deadlock the next acquirer, who is told.
//
// Targets are registered functions, so the same body runs under fork and spawn.
#include "troupe/multiprocessing/synchronize.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/sharedctypes.hpp"
#include "troupe/spin.hpp"

#include "leak_check.hpp"
#include "start_methods.hpp"

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using troupe::testing::eventually;

using SyncTest = troupe::testing::StartMethodTest;
TROUPE_PER_START_METHOD(SyncTest);

using LocalTest = troupe::testing::LeakCheck;

// ---- Lock and RLock --------------------------------------------------------------------------

TEST_F(LocalTest, LockAsPython) {
  Lock lock;
  EXPECT_EQ(lock.repr(), "<Lock(owner=None)>");
  EXPECT_FALSE(lock.locked());
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.locked());
  EXPECT_EQ(lock.repr(), "<Lock(owner=MainProcess)>");
  EXPECT_FALSE(lock.recovered_from());
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.acquire(true, 10ms));      // its own holder: waits out the timeout
  EXPECT_THROW(lock.acquire(), RuntimeError);  // would wait for itself forever
  std::thread([&] {
    EXPECT_EQ(lock.repr(), "<Lock(owner=SomeOtherThread)>");
    EXPECT_FALSE(lock.acquire(true, -1s));  // negative: zero, as Python's multiprocessing
    EXPECT_THROW(lock.release(), RuntimeError);
  }).join();
  lock.release();
  EXPECT_FALSE(lock.locked());
  EXPECT_THROW(lock.release(), ValueError);
  {
    std::scoped_lock guard{lock};
    EXPECT_TRUE(lock.locked());
  }
  EXPECT_FALSE(lock.locked());
  Lock copy = lock;  // a handle on the same lock
  EXPECT_TRUE(copy == lock);
  ASSERT_TRUE(copy.acquire(false));
  EXPECT_FALSE(lock.acquire(false));
  lock.release();
}

TEST_F(LocalTest, RLockAsPython) {
  RLock lock;
  EXPECT_EQ(lock.repr(), "<RLock(None, 0)>");
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.acquire(false));
  EXPECT_TRUE(lock.acquire(true, 0s));
  EXPECT_EQ(lock.repr(), "<RLock(MainProcess, 3)>");
  std::thread([&] {
    EXPECT_FALSE(lock.acquire(false));
    EXPECT_EQ(lock.repr(), "<RLock(SomeOtherThread, nonzero)>");
    EXPECT_THROW(lock.release(), RuntimeError);
  }).join();
  lock.release();
  lock.release();
  lock.release();
  EXPECT_THROW(lock.release(), RuntimeError);
  EXPECT_EQ(lock.repr(), "<RLock(None, 0)>");
}

void add_under_lock(Lock lock, RawValue<long> counter, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock guard{lock};
    const long v = counter.value();
    if (i % 64 == 0) std::this_thread::yield();  // widen the window a missing lock would show
    counter.value() = v + 1;
  }
}
TROUPE_ENTRY(add_under_lock);

TEST_P(SyncTest, LockExcludesOtherProcesses) {
  Lock lock;
  RawValue<long> counter(0);
  constexpr int kEach = 3000;
  auto a = start(&add_under_lock, lock, counter, kEach);
  auto b = start(&add_under_lock, lock, counter, kEach);
  add_under_lock(lock, counter, kEach);
  a.join();
  b.join();
  EXPECT_EQ(a.exitcode(), 0);
  EXPECT_EQ(b.exitcode(), 0);
  EXPECT_EQ(counter.value(), 3 * kEach);
}

void hold_until(Lock lock, Event held, Event go) {
  lock.acquire();
  held.set();
  go.wait(20s);
  lock.release();
}
TROUPE_ENTRY(hold_until);

TEST_P(SyncTest, LockAcquireWithTimeoutWhileAnotherProcessHoldsIt) {
  Lock lock;
  Event held, go;
  auto p = start(&hold_until, lock, held, go);
  ASSERT_TRUE(held.wait(20s));
  EXPECT_TRUE(lock.locked());
  EXPECT_EQ(lock.repr(), "<Lock(owner=SomeOtherProcess)>");
  EXPECT_FALSE(lock.acquire(false));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(lock.acquire(true, 50ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 45ms);
  EXPECT_THROW(lock.release(), RuntimeError);  // not the holder
  go.set();
  EXPECT_TRUE(lock.acquire(true, 20s));
  EXPECT_FALSE(lock.recovered_from());
  lock.release();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

void hold_forever(Lock lock, RLock rlock, Event held) {
  lock.acquire();
  rlock.acquire();
  rlock.acquire();
  held.set();
  for (;;) ::pause();
}
TROUPE_ENTRY(hold_forever);

TEST_P(SyncTest, AHolderKilledWithSigkillDoesNotDeadlockTheNext) {
  Lock lock;
  RLock rlock;
  Event held;
  auto p = start(&hold_forever, lock, rlock, held);
  ASSERT_TRUE(held.wait(20s));
  EXPECT_FALSE(lock.acquire(false));
  p.kill();
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  // The next acquirer gets the lock and is told who died holding it.
  ASSERT_TRUE(lock.acquire(true, 20s));
  EXPECT_EQ(lock.recovered_from(), p.pid());
  lock.release();
  ASSERT_TRUE(lock.acquire(true, 20s));
  EXPECT_FALSE(lock.recovered_from());  // released normally this time
  lock.release();
  // The RLock too: its depth starts again at one.
  ASSERT_TRUE(rlock.acquire(true, 20s));
  EXPECT_EQ(rlock.recovered_from(), p.pid());
  EXPECT_EQ(rlock.repr(), "<RLock(MainProcess, 1)>");
  rlock.release();
  EXPECT_THROW(rlock.release(), RuntimeError);
}

TEST_F(LocalTest, AThreadThatEndsHoldingALockIsRecoveredFromToo) {
  Lock lock;
  std::thread([&] { lock.acquire(); }).join();
  ASSERT_TRUE(lock.acquire(true, 10s));
  EXPECT_EQ(lock.recovered_from(), ::getpid());
  lock.release();
}

// ---- Semaphore -------------------------------------------------------------------------------

TEST_F(LocalTest, SemaphoreAsPython) {
  Semaphore s(2);
  EXPECT_EQ(s.repr(), "<Semaphore(value=2)>");
  EXPECT_TRUE(s.acquire());
  EXPECT_TRUE(s.acquire(false));
  EXPECT_FALSE(s.acquire(false));
  EXPECT_FALSE(s.acquire(true, 10ms));
  EXPECT_EQ(s.get_value(), 0);
  s.release();
  s.release();
  s.release();  // unbounded
  EXPECT_EQ(s.get_value(), 3);
  EXPECT_THROW(Semaphore(-1), ValueError);
  EXPECT_THROW(s.release(0), ValueError);

  BoundedSemaphore b(1);
  EXPECT_EQ(b.repr(), "<BoundedSemaphore(value=1, maxvalue=1)>");
  EXPECT_THROW(b.release(), ValueError);
  EXPECT_TRUE(b.acquire());
  b.release();
  try {
    b.release();
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "semaphore or lock released too many times");
  }
}

// Sleepers released one after another in a row, before any of them has run again: a release
// skips the futex call only for sleepers an earlier one woke (detail::Sleepers), so each
// of them wakes. A wake-up lost there leaves a waiter asleep until its deadline: counted as late,
// and the test stops at the first.
TEST_F(LocalTest, SemaphoreWakesEachSleeperReleasedInARow) {
  const auto saved = spin_limit();
  set_spin_limit(0ns);  // each waiter sleeps, so that each release has a sleeper to wake
  Semaphore s(0);
  constexpr int kWaiters = 4, kRounds = 200;
  std::atomic<int> round{0}, late{0}, taken{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < kWaiters; ++w)
    ts.emplace_back([&] {
      for (int r = 1; r <= kRounds; ++r) {
        // A round's acquire only once the round began (else a waiter could take a permit of
        // the round before, meant for another, and run ahead).
        while (round.load() < r) std::this_thread::yield();
        // Asleep to its deadline: its wake-up was lost (the acquire then finds the permit).
        const auto t0 = std::chrono::steady_clock::now();
        if (!s.acquire(true, 5s) || std::chrono::steady_clock::now() - t0 >= 5s) late.fetch_add(1);
        taken.fetch_add(1);
      }
    });
  int rounds = 0;
  for (int r = 1; r <= kRounds; ++r) {
    round.store(r);
    // Every waiter sleeps for its permit of this round.
    if (!eventually([&] { return s._shared()->sleepers.counted() == kWaiters; }, 30s)) {
      ADD_FAILURE() << "round " << r << ": " << s._shared()->sleepers.counted() << " asleep";
      break;
    }
    for (int i = 0; i < kWaiters; ++i) s.release();
    ++rounds;
    if (!eventually([&] { return taken.load() == r * kWaiters; }, 30s) || late.load() > 0) {
      ADD_FAILURE() << "round " << r << ": " << taken.load() << " permits taken, " << late.load()
                    << " acquires timed out";
      break;
    }
  }
  if (rounds < kRounds) {  // the rest, to end them
    round.store(kRounds);
    s.release((kRounds - rounds) * kWaiters);
  }
  for (auto& t : ts) t.join();
  set_spin_limit(saved);
  EXPECT_EQ(late.load(), 0);
}

void release_n(Semaphore s, int n) {
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_for(1ms);
    s.release();
  }
}
TROUPE_ENTRY(release_n);

TEST_P(SyncTest, SemaphoreBetweenProcesses) {
  Semaphore s(0);
  auto p = start(&release_n, s, 3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(s.acquire(true, 20s));
  p.join();
  EXPECT_FALSE(s.acquire(true, 20ms));
  EXPECT_EQ(s.get_value(), 0);
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- Event -----------------------------------------------------------------------------------

void wait_then_set(Event in, Event out) {
  if (!in.wait(20s)) troupe::sys_exit(2);
  out.set();
}
TROUPE_ENTRY(wait_then_set);

TEST_P(SyncTest, EventBetweenProcesses) {
  Event in, out;
  EXPECT_FALSE(in.is_set());
  EXPECT_FALSE(in.wait(10ms));
  EXPECT_FALSE(in.wait(-1s));
  auto p = start(&wait_then_set, in, out);
  std::this_thread::sleep_for(5ms);  // let the child sleep on it
  in.set();
  EXPECT_TRUE(out.wait(20s));
  EXPECT_TRUE(out.is_set());
  out.clear();
  EXPECT_FALSE(out.is_set());
  EXPECT_TRUE(in.wait());
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- Condition -------------------------------------------------------------------------------

void wait_on_condition(Condition cond, Semaphore sleeping, RawValue<int> woken) {
  std::scoped_lock guard{cond};
  sleeping.release();
  if (!cond.wait(20s)) troupe::sys_exit(2);
  ++woken.value();
}
TROUPE_ENTRY(wait_on_condition);

TEST_P(SyncTest, ConditionNotifyAndNotifyAll) {
  Condition cond;
  Semaphore sleeping(0);
  RawValue<int> woken(0);
  std::vector<Process> ps;
  for (int i = 0; i < 4; ++i) ps.push_back(start(&wait_on_condition, cond, sleeping, woken));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(sleeping.acquire(true, 20s));
  auto count = [&] {
    std::scoped_lock guard{cond};
    return woken.value();
  };
  // Each child released `sleeping` holding the condition's lock, so once we hold it they all
  // wait.
  EXPECT_EQ(count(), 0);
  {
    std::scoped_lock guard{cond};
    cond.notify();
  }
  EXPECT_TRUE(eventually([&] { return count() == 1; }));
  {
    std::scoped_lock guard{cond};
    cond.notify(2);
  }
  EXPECT_TRUE(eventually([&] { return count() == 3; }));
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(count(), 3);  // notify(n) wakes n, no more
  {
    std::scoped_lock guard{cond};
    cond.notify_all();
  }
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(count(), 4);
}

TEST_F(LocalTest, ConditionAsPython) {
  Condition cond(Lock{});
  EXPECT_THROW(cond.wait(), RuntimeError);
  EXPECT_THROW(cond.notify(), RuntimeError);
  std::scoped_lock guard{cond};
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(cond.wait(30ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 25ms);
  EXPECT_TRUE(std::get<Lock>(cond.get_lock())._is_owned());
  int calls = 0;
  EXPECT_FALSE(cond.wait_for([&] { return ++calls > 100; }, 20ms));
  EXPECT_TRUE(cond.wait_for([&] { return true; }));
  cond.notify_all();  // nobody waits: nothing happens
}

// ---- Barrier ---------------------------------------------------------------------------------

void barrier_party(Barrier b, RawArray<int> indices, int slot) {
  try {
    indices[static_cast<std::size_t>(slot)] = b.wait(20s);
  } catch (const troupe::threading::BrokenBarrierError&) {
    troupe::sys_exit(3);
  }
}
TROUPE_ENTRY(barrier_party);

TEST_P(SyncTest, BarrierReleasesAllPartiesWithDistinctIndices) {
  Barrier b(3);
  RawArray<int> indices{-1, -1, -1};
  auto p1 = start(&barrier_party, b, indices, 1);
  auto p2 = start(&barrier_party, b, indices, 2);
  barrier_party(b, indices, 0);
  p1.join();
  p2.join();
  EXPECT_EQ(p1.exitcode(), 0);
  EXPECT_EQ(p2.exitcode(), 0);
  std::vector<int> seen(indices.begin(), indices.end());
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2}));
  EXPECT_FALSE(b.broken());
  EXPECT_EQ(b.n_waiting(), 0);
}

TEST_P(SyncTest, BarrierAbortBreaksItForWaitingProcesses) {
  Barrier b(3);
  RawArray<int> indices{-1, -1, -1};
  auto p = start(&barrier_party, b, indices, 1);
  ASSERT_TRUE(eventually([&] { return b.n_waiting() == 1; }));
  b.abort();
  p.join();
  EXPECT_EQ(p.exitcode(), 3);
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), troupe::threading::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());
}

int g_actions = 0;
void count_action() {
  ++g_actions;
}
TROUPE_ENTRY(count_action);

TEST_F(LocalTest, BarrierTimeoutActionAndResetAsPython) {
  EXPECT_THROW(Barrier(0), ValueError);
  Barrier b(2, &count_action);
  g_actions = 0;
  std::thread t([&] { b.wait(); });
  b.wait();
  t.join();
  EXPECT_EQ(g_actions, 1);
  // A wait that times out breaks the barrier, for later waits too, until reset().
  Barrier lonely(2, {}, 20ms);
  EXPECT_THROW(lonely.wait(), troupe::threading::BrokenBarrierError);
  EXPECT_TRUE(lonely.broken());
  EXPECT_THROW(lonely.wait(), troupe::threading::BrokenBarrierError);
  lonely.reset();
  EXPECT_FALSE(lonely.broken());
  // An action that throws breaks it, and the thrower sees the exception.
  Barrier failing(1, [] { throw ValueError("action failed"); });
  EXPECT_THROW(failing.wait(), ValueError);
  EXPECT_TRUE(failing.broken());
  // Only a registered function can go to a spawned child as the action.
  EXPECT_EQ(detail::barrier_action_name(b.action()), "count_action");
  EXPECT_THROW(detail::barrier_action_name(failing.action()), ValueError);
}

// ---- Value and Array -------------------------------------------------------------------------

struct Point {
  double x, y;
};

void double_them(Value<int> i, Value<double> d, Value<Point> pt, Array<int> arr,
                 RawArray<char> text) {
  i.set_value(i.value() * 2);
  d.set_value(d.value() * 2);
  {
    std::scoped_lock guard{pt};
    pt.get_obj().x *= 2;
    pt.get_obj().y *= 2;
  }
  for (std::size_t k = 0; k < arr.size(); ++k) arr.set(k, arr[k] * 2);
  for (char& c : text) c = static_cast<char>(std::toupper(c));
}
TROUPE_ENTRY(double_them);

TEST_P(SyncTest, ValueAndArrayAreSharedWithTheChild) {
  Value<int> i(7);
  Value<double> d(1.0 / 3.0, false);
  Value<Point> pt(Point{1.5, -2.0}, Lock{});
  Array<int> arr{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  RawArray<char> text{'h', 'e', 'l', 'l', 'o'};
  auto p = start(&double_them, i, d, pt, arr, text);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(i.value(), 14);
  EXPECT_DOUBLE_EQ(d.value(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(pt.value().x, 3.0);
  EXPECT_DOUBLE_EQ(pt.value().y, -4.0);
  EXPECT_EQ(arr.to_vector(), (std::vector<int>{0, 2, 4, 6, 8, 10, 12, 14, 16, 18}));
  EXPECT_EQ(std::string(text.begin(), text.end()), "HELLO");
}

TEST_F(LocalTest, ValueAndArrayAsPython) {
  Value<long> v(5);
  EXPECT_TRUE(std::holds_alternative<RLock>(v.get_lock()));  // an RLock by default
  {
    std::scoped_lock guard{v};
    v.get_obj() += 1;
    EXPECT_EQ(v.value(), 6);  // re-entrant: the read takes the RLock again
  }
  Value<long> raw(1, false);
  EXPECT_FALSE(raw.has_lock());
  EXPECT_THROW(raw.get_lock(), ValueError);
  Lock given;
  Value<long> with(1, given);
  EXPECT_TRUE(std::get<Lock>(with.get_lock()) == given);

  Array<double> zeros(4);
  EXPECT_EQ(zeros.size(), 4u);
  EXPECT_EQ(zeros.to_vector(), (std::vector<double>{0, 0, 0, 0}));
  EXPECT_THROW(zeros.get(4), IndexError);
  EXPECT_THROW(zeros.set(9, 1.0), IndexError);
  const std::vector<double> four{1, 2, 3, 4};
  zeros.assign(four);
  EXPECT_EQ(zeros[3], 4.0);
  const std::vector<double> three{1, 2, 3};
  EXPECT_THROW(zeros.assign(three), ValueError);
  Array<int> empty(0);
  EXPECT_EQ(empty.size(), 0u);

  RawArray<int> r{1, 2, 3};
  RawArray<int> c = copy(r);
  c[0] = 100;
  EXPECT_EQ(r[0], 1);
  EXPECT_EQ(c.at(0), 100);
  EXPECT_THROW(c.at(3), IndexError);
  Array<int> s = synchronized(r);
  EXPECT_EQ(s[2], 3);
  RawValue<int> rv(9);
  EXPECT_EQ(copy(rv).value(), 9);
  EXPECT_EQ(synchronized(rv, false).value(), 9);
}

TEST_F(LocalTest, SharedObjectsDoNotTravelInOrdinaryMessages) {
  // A shared object crosses only to a spawned child, with its fd; in a message it is refused.
  EXPECT_THROW((void)troupe::to_bytes(Lock{}), ValueError);
  EXPECT_THROW((void)troupe::to_bytes(Value<int>(1)), ValueError);
}

}  // namespace
}  // namespace troupe::multiprocessing
