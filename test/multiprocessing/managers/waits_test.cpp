#include "troupe/multiprocessing/managers/detail/waits.hpp"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <typeinfo>
#include <unordered_set>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include "troupe/errors.hpp"

#include "leak_check.hpp"

namespace troupe::multiprocessing::managers::detail {
namespace {

using namespace std::chrono_literals;
using troupe::testing::count_threads;
using troupe::testing::eventually;
using waits::AnswersHere;

// ---------------------------------------------------------------------------------------------
// Helpers

std::string describe(std::exception_ptr e) {
  if (!e) return "no error";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return typeid(x).name() + std::string(": ") + x.what();
  } catch (...) {
    return "a non-std exception";
  }
}

// Whether `e` holds an E whose message contains `text`.
template <class E>
bool holds(std::exception_ptr e, std::string_view text = {}) {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const E& x) {
    return std::string_view(x.what()).find(text) != std::string_view::npos;
  } catch (...) {
    return false;
  }
}

#define EXPECT_ERROR(got, Type, text) \
  EXPECT_TRUE(holds<Type>((got).error, text)) << "got " << describe((got).error)

// What a handler received (single-threaded tests: the io_context runs on the test's thread).
struct GotBool {
  int calls = 0;
  std::exception_ptr error;
  bool value = false;
  DoneBool h() {
    return [this](std::exception_ptr e, bool v) {
      ++calls;
      error = e;
      value = v;
    };
  }
  bool ok(bool expected) const { return calls == 1 && !error && value == expected; }
};
struct GotIndex {
  int calls = 0;
  std::exception_ptr error;
  int value = -2;
  DoneIndex h() {
    return [this](std::exception_ptr e, int v) {
      ++calls;
      error = e;
      value = v;
    };
  }
};
template <class T>
struct GotItem {
  int calls = 0;
  std::exception_ptr error;
  std::optional<T> value;
  DoneItem<T> h() {
    return [this](std::exception_ptr e, std::optional<T> v) {
      ++calls;
      error = e;
      value = std::move(v);
    };
  }
};
struct GotDone {
  int calls = 0;
  std::exception_ptr error;
  Done h() {
    return [this](std::exception_ptr e) {
      ++calls;
      error = e;
    };
  }
  bool ok() const { return calls == 1 && !error; }
};

const Caller A{1, 1};
const Caller A2{1, 2};  // another lane (thread) of A's connection
const Caller B{2, 1};
const Caller C{3, 1};

class WaitsTest : public troupe::testing::LeakCheck {
protected:
  // Runs the io_context on this thread until it has no work left: the handlers posted and the
  // timers armed so far (a waiter with no timer is not work). Bounded: a test that leaves work
  // behind for 60 s fails instead of hanging.
  void run() {
    io.restart();
    io.run_for(60s);
    ASSERT_TRUE(io.stopped()) << "the io_context still had work after 60 s";
  }

  boost::asio::io_context io;
  boost::asio::any_io_executor ex = io.get_executor();
  // Asio opens its reactor's descriptors (epoll, timerfd) with the first timer: open them
  // before LeakCheck counts.
  boost::asio::steady_timer reactor_{io};
};

TEST(CallerTest, EqualityAndHash) {
  EXPECT_EQ(A, (Caller{1, 1}));
  EXPECT_NE(A, A2);
  EXPECT_NE(A, B);
  std::unordered_set<Caller> set{A, A2, B, Caller{1, 1}};
  EXPECT_EQ(set.size(), 3u);
  EXPECT_EQ(std::hash<Caller>{}(A), std::hash<Caller>{}(Caller{1, 1}));
  EXPECT_NE(std::hash<Caller>{}(A), std::hash<Caller>{}(Caller{1, 2}));
}

// A connection's strand is a strand of an io_context's own executor, held in place by an
// any_io_executor, or of any other executor it is given: either way its handlers run one at a
// time, in order, and dispatch from inside runs at once.
TEST(ConnStrandTest, SerializesOverAnIoContextAndOverAnyExecutor) {
  EXPECT_FALSE(ConnStrand{});
  EXPECT_FALSE(ConnStrand{}.executor());
  boost::asio::io_context io;
  boost::asio::thread_pool pool(2);
  for (const boost::asio::any_io_executor& base :
       {boost::asio::any_io_executor(io.get_executor()),
        boost::asio::any_io_executor(pool.get_executor())}) {
    const ConnStrand s(base);
    ASSERT_TRUE(s);
    EXPECT_TRUE(s.executor());
    std::atomic<int> running{0}, overlaps{0};
    std::vector<int> order;
    std::promise<void> all;
    constexpr int kTasks = 200;
    for (int i = 0; i < kTasks; ++i) {
      auto task = [&, i] {
        if (running.fetch_add(1) != 0) ++overlaps;
        order.push_back(i);
        if (i == kTasks - 1) {
          bool inline_ran = false;
          s.dispatch([&] { inline_ran = true; });
          EXPECT_TRUE(inline_ran) << "dispatch from inside the strand runs at once";
        }
        running.fetch_sub(1);
        if (i == kTasks - 1) all.set_value();
      };
      if (i % 2 == 0)
        s.post(task);
      else
        s.defer(task);
    }
    std::thread runner([&] { io.run_for(60s); });
    ASSERT_EQ(all.get_future().wait_for(60s), std::future_status::ready);
    io.stop();
    runner.join();
    io.restart();
    EXPECT_EQ(overlaps.load(), 0);
    ASSERT_EQ(order.size(), static_cast<std::size_t>(kTasks));
    for (int i = 0; i < kTasks; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
  }
  pool.join();
}

// A Caller that names an executor gets its answers there (a server's connection strand), the
// others on the object's: the answer to a waiting getter, made by another caller's put, and an
// answer known at once. The executor is not part of who the caller is.
TEST_F(WaitsTest, AnswersGoToTheCallersExecutorWhenItNamesOne) {
  boost::asio::io_context own;
  const Caller getter{7, 1, ConnStrand(boost::asio::any_io_executor(own.get_executor()))};
  EXPECT_EQ(getter, (Caller{7, 1}));
  AsyncQueue<int> q(ex);
  GotItem<int> waited, at_once, plain;
  q.async_get(getter, true, std::nullopt, waited.h());
  q.put_nowait(1);  // by another caller: hands the item to the getter
  q.put_nowait(2);
  q.async_get(getter, true, std::nullopt, at_once.h());
  q.put_nowait(3);
  q.async_get(A, true, std::nullopt, plain.h());
  run();  // the object's executor: only the plain caller's answer
  EXPECT_EQ(plain.calls, 1);
  EXPECT_EQ(plain.value, 3);
  EXPECT_EQ(waited.calls, 0);
  EXPECT_EQ(at_once.calls, 0);
  own.run_for(60s);
  EXPECT_EQ(waited.value, 1);
  EXPECT_EQ(at_once.value, 2);
  EXPECT_EQ(waited.calls + at_once.calls, 2);
}

// ---------------------------------------------------------------------------------------------
// The handler never runs inside the initiating call, even when the answer is known at once, and
// never under the object's mutex (each handler here calls back into its object).

TEST_F(WaitsTest, HandlersNeverRunInsideTheCall) {
  AsyncLock lock(ex);
  AsyncRLock rlock(ex);
  AsyncCondition cond(ex);
  AsyncSemaphore sem(ex, 1);
  AsyncEvent event(ex);
  event.set();
  AsyncBarrier barrier(ex, 1);
  AsyncQueue<int> q(ex);
  q.put_nowait(7);

  int calls = 0;
  bool reentered = false;
  auto count = [&](auto&& check) {
    return [&, check](std::exception_ptr, auto&&...) {
      ++calls;
      check();  // takes the object's mutex: it must not be held here
    };
  };
  auto expect_none = [&](const char* what) {
    EXPECT_EQ(calls, 0) << what << ": the handler ran inside the initiating call";
  };

  lock.async_acquire(A, false, std::nullopt, count([&] { reentered = lock.locked(); }));
  expect_none("Lock.acquire");
  lock.async_acquire(B, false, 1s, count([&] { (void)lock.locked(); }));  // ValueError
  expect_none("Lock.acquire (bad arguments)");
  rlock.async_acquire(A, true, std::nullopt, count([&] { (void)rlock.is_owned(A); }));
  expect_none("RLock.acquire");
  cond.async_wait(A, 1s, count([&] { (void)cond.cancel(A); }));  // not owned: RuntimeError
  expect_none("Condition.wait (not owned)");
  sem.async_acquire(A, true, std::nullopt, count([&] { (void)sem.value(); }));
  expect_none("Semaphore.acquire");
  event.async_wait(A, std::nullopt, count([&] { (void)event.is_set(); }));
  expect_none("Event.wait");
  barrier.async_wait(A, std::nullopt, count([&] { (void)barrier.n_waiting(); }));
  expect_none("Barrier.wait");
  q.async_get(A, true, std::nullopt, count([&] { (void)q.qsize(); }));
  expect_none("Queue.get");
  q.async_put(A, 8, true, std::nullopt, count([&] { (void)q.qsize(); }));
  expect_none("Queue.put");
  q.async_get(A, false, -1s, count([&] { (void)q.qsize(); }));  // the item just put
  expect_none("Queue.get (non-blocking)");
  AsyncQueue<int> nothing_put(ex);
  nothing_put.async_join(A, count([&] { (void)nothing_put.unfinished_tasks(); }));
  expect_none("Queue.join");
  run();
  EXPECT_EQ(calls, 11);
  EXPECT_TRUE(reentered);
}

// Inside an AnswersHere of the caller, on its strand (a server's object call): the caller's own
// answers known at once are kept, not posted, and run by run() after the initiating call has
// returned; another caller's answer (a getter the put satisfies, on the same strand) is posted;
// off the strand, or in another caller's scope, nothing is kept; and what run() did not run is
// posted when the scope ends.
TEST_F(WaitsTest, AnswersHereKeepsTheCallersOwnAnswersUntilRun) {
  const ConnStrand strand(ex);
  const Caller me{1, 1, strand};
  const Caller other{1, 2, strand};  // another lane of the same connection
  AsyncQueue<int> q(ex);
  AsyncLock lock(ex);
  GotItem<int> waiting, got;
  GotDone put, put_later;
  GotBool acquired;
  q.async_get(other, true, std::nullopt, waiting.h());
  bool ran = false;
  strand.post([&] {
    ran = true;
    AnswersHere answers(me);
    q.async_put(me, 1, true, std::nullopt, put.h());  // answers `other`'s get, then `me`
    q.async_put(me, 2, true, std::nullopt, put_later.h());
    q.async_get(me, true, std::nullopt, got.h());
    lock.async_acquire(me, true, std::nullopt, acquired.h());
    EXPECT_EQ(put.calls + put_later.calls + got.calls + acquired.calls, 0)
        << "an answer ran inside the initiating call";
    answers.run();
    EXPECT_TRUE(put.ok());
    EXPECT_TRUE(put_later.ok());
    EXPECT_EQ(got.calls, 1);
    EXPECT_EQ(got.value, 2);
    EXPECT_TRUE(acquired.ok(true));
    EXPECT_EQ(waiting.calls, 0) << "another caller's answer is posted";
  });
  run();
  EXPECT_TRUE(ran);
  EXPECT_EQ(waiting.calls, 1);
  EXPECT_EQ(waiting.value, 1);
  lock.release(me);

  // Off the strand: posted. In another caller's scope: posted. Not run(): posted at the end.
  GotDone off, others_scope, not_run;
  {
    AnswersHere answers(me);
    q.async_put(me, 3, true, std::nullopt, off.h());
    answers.run();
    EXPECT_EQ(off.calls, 0);
  }
  strand.post([&] {
    {
      AnswersHere answers(other);
      q.async_put(me, 4, true, std::nullopt, others_scope.h());
      answers.run();
      EXPECT_EQ(others_scope.calls, 0);
    }
    {
      AnswersHere answers(me);
      q.async_put(me, 5, true, std::nullopt, not_run.h());
    }
    EXPECT_EQ(not_run.calls, 0);
  });
  run();
  EXPECT_TRUE(off.ok());
  EXPECT_TRUE(others_scope.ok());
  EXPECT_TRUE(not_run.ok());
  EXPECT_EQ(q.qsize(), 3u);

  // A kept answer that throws: run() goes on with the next, and the exception leaves the
  // io_context's run() from a handler of the strand, as a posted answer's would.
  GotDone after;
  strand.post([&] {
    AnswersHere answers(me);
    q.async_put(me, 6, true, std::nullopt,
                [](std::exception_ptr) { throw std::runtime_error("an answer that throws"); });
    q.async_put(me, 7, true, std::nullopt, after.h());
    answers.run();
    EXPECT_TRUE(after.ok()) << "the answer after the one that threw";
  });
  io.restart();
  try {
    io.run_for(60s);
    ADD_FAILURE() << "the kept answer's exception did not leave run()";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "an answer that throws");
  }
  run();
  EXPECT_TRUE(after.ok());
}

// ---------------------------------------------------------------------------------------------
// Lock

TEST_F(WaitsTest, LockAcquireWaitsForRelease) {
  AsyncLock lock(ex);
  GotBool a, b, c;
  lock.async_acquire(A, true, std::nullopt, a.h());
  lock.async_acquire(B, false, std::nullopt, b.h());
  run();
  EXPECT_TRUE(a.ok(true));
  EXPECT_TRUE(b.ok(false));
  EXPECT_TRUE(lock.locked());
  EXPECT_EQ(lock.holder(), A);

  lock.async_acquire(C, true, std::nullopt, c.h());
  run();
  EXPECT_EQ(c.calls, 0) << "acquired a held lock";
  lock.release(B);  // not owner-checked, as Python's Lock
  EXPECT_EQ(c.calls, 0) << "completed inside release()";
  run();
  EXPECT_TRUE(c.ok(true));
  EXPECT_EQ(lock.holder(), C);
  lock.release(C);
  EXPECT_FALSE(lock.locked());
  EXPECT_FALSE(lock.holder().has_value());
}

TEST_F(WaitsTest, LockArgumentRules) {
  AsyncLock lock(ex);
  GotBool held, nb_timeout, minus_two, nb_minus_one, zero, forever;
  lock.async_acquire(A, true, std::nullopt, held.h());
  lock.async_acquire(B, false, 1s, nb_timeout.h());
  lock.async_acquire(B, true, -2s, minus_two.h());
  lock.async_acquire(B, false, -1s, nb_minus_one.h());  // -1 is Python's "no timeout"
  lock.async_acquire(B, true, 0s, zero.h());
  lock.async_acquire(C, true, -1s, forever.h());
  run();
  EXPECT_TRUE(held.ok(true));
  EXPECT_ERROR(nb_timeout, ValueError, "can't specify a timeout for a non-blocking call");
  EXPECT_ERROR(minus_two, ValueError, "timeout value must be a non-negative number");
  EXPECT_TRUE(nb_minus_one.ok(false));
  EXPECT_TRUE(zero.ok(false));
  EXPECT_EQ(forever.calls, 0) << "-1 s must wait forever";
  lock.release(A);
  run();
  EXPECT_TRUE(forever.ok(true));
}

TEST_F(WaitsTest, LockReleaseUnlockedIsRuntimeError) {
  AsyncLock lock(ex);
  try {
    lock.release(A);
    ADD_FAILURE() << "no exception";
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "release unlocked lock");
  }
}

TEST_F(WaitsTest, LockTimeoutGivesUp) {
  AsyncLock lock(ex);
  GotBool a, b;
  lock.async_acquire(A, true, std::nullopt, a.h());
  lock.async_acquire(B, true, 1ms, b.h());
  run();  // the timer is work: run returns once it fired
  EXPECT_TRUE(b.ok(false));
  lock.release(A);
  EXPECT_FALSE(lock.locked()) << "the waiter that timed out was given the lock";

  // A waiter served before its timeout: its timer is cancelled, so run() returns at once
  // instead of waiting an hour (or failing after 60 s).
  GotBool c, d;
  lock.async_acquire(A, true, std::nullopt, c.h());
  lock.async_acquire(B, true, 1h, d.h());
  lock.release(A);
  run();
  EXPECT_TRUE(d.ok(true));
  EXPECT_EQ(lock.holder(), B);
}

TEST_F(WaitsTest, LockWaitersAreServedInArrivalOrder) {
  AsyncLock lock(ex);
  GotBool first;
  lock.async_acquire(A, true, std::nullopt, first.h());
  std::vector<int> order;
  for (int i = 0; i < 5; ++i)
    lock.async_acquire(Caller{10, static_cast<std::uint64_t>(i)}, true, std::nullopt,
                       [&, i](std::exception_ptr e, bool v) {
                         EXPECT_FALSE(e);
                         EXPECT_TRUE(v);
                         order.push_back(i);
                         lock.release(Caller{10, static_cast<std::uint64_t>(i)});
                       });
  // A non-blocking acquire never overtakes a waiter.
  lock.release(A);
  GotBool late;
  lock.async_acquire(B, false, std::nullopt, late.h());
  run();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_TRUE(late.ok(false));
  EXPECT_FALSE(lock.locked());
}

// ---------------------------------------------------------------------------------------------
// RLock

TEST_F(WaitsTest, RLockCountsAndOwner) {
  AsyncRLock rlock(ex);
  GotBool a1, a2, a3, b;
  rlock.async_acquire(A, true, std::nullopt, a1.h());
  rlock.async_acquire(A, false, std::nullopt, a2.h());
  rlock.async_acquire(A, true, 0s, a3.h());
  rlock.async_acquire(B, true, std::nullopt, b.h());
  run();
  EXPECT_TRUE(a1.ok(true) && a2.ok(true) && a3.ok(true));
  EXPECT_EQ(rlock.recursion_count(A), 3u);
  EXPECT_EQ(rlock.recursion_count(A2), 0u) << "another lane is another owner";
  EXPECT_TRUE(rlock.is_owned(A));
  EXPECT_FALSE(rlock.is_owned(A2));
  EXPECT_EQ(b.calls, 0);

  for (Caller other : {A2, B}) {
    try {
      rlock.release(other);
      ADD_FAILURE() << "a non-owner released the RLock";
    } catch (const RuntimeError& e) {
      EXPECT_STREQ(e.what(), "cannot release un-acquired lock");
    }
  }
  rlock.release(A);
  rlock.release(A);
  run();
  EXPECT_EQ(b.calls, 0) << "handed over before the count reached 0";
  rlock.release(A);
  run();
  EXPECT_TRUE(b.ok(true));
  EXPECT_EQ(rlock.recursion_count(B), 1u);
  rlock.release(B);
  EXPECT_FALSE(rlock.locked());
  EXPECT_THROW(rlock.release(B), RuntimeError);

  GotBool bad;
  rlock.async_acquire(A, false, 0s, bad.h());
  run();
  EXPECT_ERROR(bad, ValueError, "can't specify a timeout for a non-blocking call");
}

// ---------------------------------------------------------------------------------------------
// Condition

TEST_F(WaitsTest, ConditionChecksOwnership) {
  AsyncCondition cond(ex);
  GotBool w;
  cond.async_wait(A, std::nullopt, w.h());
  run();
  EXPECT_ERROR(w, RuntimeError, "cannot wait on un-acquired lock");
  try {
    cond.notify(A);
    ADD_FAILURE() << "no exception";
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "cannot notify on un-acquired lock");
  }
  EXPECT_THROW(cond.notify_all(A), RuntimeError);

  GotBool acq;
  cond.async_acquire(A, true, std::nullopt, acq.h());
  run();
  EXPECT_TRUE(acq.ok(true));
  EXPECT_NO_THROW(cond.notify(A));
  EXPECT_THROW(cond.notify(B), RuntimeError) << "an RLock is owned by one caller";
  EXPECT_THROW(cond.release(B), RuntimeError);
  cond.release(A);
}

TEST_F(WaitsTest, ConditionWaitReleasesFullyAndRestores) {
  AsyncRLock rlock(ex);
  AsyncCondition cond(ex, rlock);
  GotBool a1, a2, wait, b;
  rlock.async_acquire(A, true, std::nullopt, a1.h());
  cond.async_acquire(A, true, std::nullopt, a2.h());  // the Condition's lock is rlock
  run();
  ASSERT_EQ(rlock.recursion_count(A), 2u);
  cond.async_wait(A, std::nullopt, wait.h());
  EXPECT_FALSE(rlock.locked()) << "wait must release the RLock whatever its count";
  cond.async_acquire(B, true, std::nullopt, b.h());
  run();
  EXPECT_TRUE(b.ok(true));
  EXPECT_EQ(wait.calls, 0);
  cond.notify(B);
  run();
  EXPECT_EQ(wait.calls, 0) << "a notified waiter completes only once it holds the lock";
  cond.release(B);
  run();
  EXPECT_TRUE(wait.ok(true));
  EXPECT_EQ(rlock.recursion_count(A), 2u) << "the count is restored";
}

TEST_F(WaitsTest, ConditionNotifyWakesTheLongestWaitersFirst) {
  AsyncCondition cond(ex);
  std::vector<int> order;
  for (int i = 0; i < 4; ++i) {
    const Caller who{20, static_cast<std::uint64_t>(i)};
    GotBool acq;
    cond.async_acquire(who, true, std::nullopt, acq.h());
    run();
    ASSERT_TRUE(acq.ok(true));
    cond.async_wait(who, std::nullopt, [&, i, who](std::exception_ptr e, bool v) {
      EXPECT_FALSE(e) << describe(e);
      EXPECT_TRUE(v);
      order.push_back(i);
      cond.release(who);  // holds the lock again here
    });
  }
  GotBool n;
  cond.async_acquire(A, true, std::nullopt, n.h());
  run();
  cond.notify(A, 2);
  cond.notify(A, 0);   // nothing
  cond.notify(A, -3);  // nothing, as Python
  cond.release(A);
  run();
  EXPECT_EQ(order, (std::vector<int>{0, 1}));
  cond.async_acquire(A, true, std::nullopt, n.h());
  run();
  cond.notify_all(A);
  cond.release(A);
  run();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

TEST_F(WaitsTest, ConditionWaitTimesOutHoldingTheLockAgain) {
  AsyncCondition cond(ex);
  GotBool acq, wait;
  cond.async_acquire(A, true, std::nullopt, acq.h());
  run();
  cond.async_wait(A, 1ms, wait.h());
  run();
  EXPECT_TRUE(wait.ok(false));
  EXPECT_NO_THROW(cond.notify(A)) << "the lock is held again after the timeout";
  cond.release(A);
}

// Python: wait(timeout <= 0) returns False at once, but still releases the lock and takes it
// back: a caller waiting for the lock gets it in between.
TEST_F(WaitsTest, ConditionWaitNegativeTimeoutReleasesAndReacquires) {
  AsyncLock lock(ex);
  AsyncCondition cond(ex, lock);
  GotBool a, b, wait;
  lock.async_acquire(A, true, std::nullopt, a.h());
  lock.async_acquire(B, true, std::nullopt, b.h());
  cond.async_wait(A, -1s, wait.h());
  run();
  EXPECT_TRUE(b.ok(true)) << "the lock was not released";
  EXPECT_EQ(wait.calls, 0);
  lock.release(B);
  run();
  EXPECT_TRUE(wait.ok(false));
  EXPECT_EQ(lock.holder(), A);
}

// A Condition over a Lock: "owned" means locked, by anyone (Python's _is_owned for a Lock).
TEST_F(WaitsTest, ConditionOverLockAnyHolderCounts) {
  AsyncLock lock(ex);
  AsyncCondition cond(ex, lock);
  GotBool a, wait;
  lock.async_acquire(A, true, std::nullopt, a.h());
  run();
  cond.async_wait(B, std::nullopt, wait.h());  // B did not acquire it: Python allows this
  EXPECT_FALSE(lock.locked());
  GotBool c;
  lock.async_acquire(C, true, std::nullopt, c.h());
  run();
  cond.notify(C);
  lock.release(C);
  run();
  EXPECT_TRUE(wait.ok(true));
  EXPECT_EQ(lock.holder(), B);
  lock.release(B);
}

// ---------------------------------------------------------------------------------------------
// Semaphore, BoundedSemaphore

TEST_F(WaitsTest, SemaphoreRules) {
  EXPECT_THROW(AsyncSemaphore(ex, -1), ValueError);
  AsyncSemaphore sem(ex, 2);
  GotBool a, b, nb, bad, neg, zero, w1, w2;
  sem.async_acquire(A, true, std::nullopt, a.h());
  sem.async_acquire(B, false, std::nullopt, b.h());
  sem.async_acquire(C, false, std::nullopt, nb.h());
  sem.async_acquire(C, false, 1s, bad.h());
  sem.async_acquire(C, true, -1s, neg.h());  // Semaphore: -1 is not "forever"
  sem.async_acquire(C, true, 0s, zero.h());
  sem.async_acquire(Caller{5, 0}, true, std::nullopt, w1.h());
  sem.async_acquire(Caller{5, 1}, true, std::nullopt, w2.h());
  run();
  EXPECT_TRUE(a.ok(true) && b.ok(true));
  EXPECT_TRUE(nb.ok(false));
  EXPECT_ERROR(bad, ValueError, "can't specify timeout for non-blocking acquire");
  EXPECT_TRUE(neg.ok(false));
  EXPECT_TRUE(zero.ok(false));
  EXPECT_EQ(w1.calls + w2.calls, 0);
  EXPECT_EQ(sem.value(), 0);

  try {
    sem.release(A, 0);
    ADD_FAILURE() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "n must be one or more");
  }
  sem.release(A, 3);  // two waiters served, one unit left over
  run();
  EXPECT_TRUE(w1.ok(true) && w2.ok(true));
  EXPECT_EQ(sem.value(), 1);
}

TEST_F(WaitsTest, SemaphoreTimeoutAndOrder) {
  AsyncSemaphore sem(ex, 0);
  GotBool timed;
  sem.async_acquire(A, true, 1ms, timed.h());
  run();
  EXPECT_TRUE(timed.ok(false));
  std::vector<int> order;
  for (int i = 0; i < 3; ++i)
    sem.async_acquire(Caller{7, static_cast<std::uint64_t>(i)}, true, std::nullopt,
                      [&, i](std::exception_ptr, bool v) {
                        EXPECT_TRUE(v);
                        order.push_back(i);
                      });
  sem.release(B);
  run();
  sem.release(B, 2);
  run();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(sem.value(), 0);
}

TEST_F(WaitsTest, BoundedSemaphoreRejectsOverRelease) {
  AsyncBoundedSemaphore sem(ex, 2);
  try {
    sem.release(A);
    ADD_FAILURE() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "Semaphore released too many times");
  }
  GotBool a;
  sem.async_acquire(A, true, std::nullopt, a.h());
  run();
  EXPECT_THROW(sem.release(A, 2), ValueError);
  sem.release(A);
  EXPECT_THROW(sem.release(A), ValueError);
  EXPECT_EQ(sem.value(), 2);
}

// ---------------------------------------------------------------------------------------------
// Event

TEST_F(WaitsTest, EventSetClearWait) {
  AsyncEvent event(ex);
  EXPECT_FALSE(event.is_set());
  GotBool zero, neg, timed, w1, w2;
  event.async_wait(A, 0s, zero.h());
  event.async_wait(A, -1s, neg.h());
  event.async_wait(A, 1ms, timed.h());
  run();
  EXPECT_TRUE(zero.ok(false));
  EXPECT_TRUE(neg.ok(false));
  EXPECT_TRUE(timed.ok(false));

  event.async_wait(A, std::nullopt, w1.h());
  event.async_wait(B, 1h, w2.h());
  event.set();
  event.clear();  // the waiters saw it set: they still return true
  run();
  EXPECT_TRUE(w1.ok(true));
  EXPECT_TRUE(w2.ok(true));
  EXPECT_FALSE(event.is_set());
  event.set();
  GotBool now;
  event.async_wait(C, 0s, now.h());
  run();
  EXPECT_TRUE(now.ok(true));
  EXPECT_TRUE(event.is_set());
}

// ---------------------------------------------------------------------------------------------
// Barrier

TEST_F(WaitsTest, BarrierConstructor) {
  try {
    (void)AsyncBarrier(ex, 0);
    ADD_FAILURE() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "parties must be > 0");
  }
  AsyncBarrier b(ex, 3);
  EXPECT_EQ(b.parties(), 3);
  EXPECT_EQ(b.n_waiting(), 0);
  EXPECT_FALSE(b.broken());
}

TEST_F(WaitsTest, BarrierReleasesAllWithDistinctIndices) {
  int actions = 0;
  AsyncBarrier barrier(ex, 3, std::nullopt, [&] { ++actions; });
  for (int generation = 0; generation < 3; ++generation) {
    GotIndex g[3];
    barrier.async_wait(A, std::nullopt, g[0].h());
    barrier.async_wait(B, std::nullopt, g[1].h());
    EXPECT_EQ(barrier.n_waiting(), 2);
    run();
    EXPECT_EQ(g[0].calls + g[1].calls, 0);
    barrier.async_wait(C, std::nullopt, g[2].h());
    EXPECT_EQ(barrier.n_waiting(), 0);
    run();
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(g[i].calls, 1);
      EXPECT_FALSE(g[i].error) << describe(g[i].error);
      EXPECT_EQ(g[i].value, i) << "indices follow arrival";
    }
    EXPECT_EQ(actions, generation + 1);
  }
  AsyncBarrier one(ex, 1);
  GotIndex solo;
  one.async_wait(A, 0s, solo.h());
  run();
  EXPECT_EQ(solo.value, 0);
  EXPECT_FALSE(solo.error);
}

TEST_F(WaitsTest, BarrierAbortAndReset) {
  AsyncBarrier barrier(ex, 3);
  GotIndex a, b, later;
  barrier.async_wait(A, std::nullopt, a.h());
  barrier.async_wait(B, std::nullopt, b.h());
  barrier.abort();
  run();
  EXPECT_ERROR(a, threading::BrokenBarrierError, "aborted");
  EXPECT_ERROR(b, threading::BrokenBarrierError, "aborted");
  EXPECT_TRUE(barrier.broken());
  EXPECT_EQ(barrier.n_waiting(), 0);
  barrier.async_wait(C, std::nullopt, later.h());
  run();
  EXPECT_ERROR(later, threading::BrokenBarrierError, "broken");

  barrier.reset();
  EXPECT_FALSE(barrier.broken());
  GotIndex c, d;
  barrier.async_wait(C, std::nullopt, c.h());
  barrier.reset();  // a waiting party gets BrokenBarrierError, the barrier stays usable
  run();
  EXPECT_ERROR(c, threading::BrokenBarrierError, "reset");
  EXPECT_FALSE(barrier.broken());
  GotIndex x, y, z;
  barrier.async_wait(A, std::nullopt, x.h());
  barrier.async_wait(B, std::nullopt, y.h());
  barrier.async_wait(C, std::nullopt, z.h());
  run();
  EXPECT_EQ(x.value + y.value + z.value, 3);
  EXPECT_FALSE(x.error || y.error || z.error);
}

TEST_F(WaitsTest, BarrierTimeoutBreaksIt) {
  AsyncBarrier barrier(ex, 3);
  GotIndex a, b;
  barrier.async_wait(A, std::nullopt, a.h());
  barrier.async_wait(B, 1ms, b.h());
  run();
  EXPECT_ERROR(a, threading::BrokenBarrierError, "timed out");
  EXPECT_ERROR(b, threading::BrokenBarrierError, "timed out");
  EXPECT_TRUE(barrier.broken());

  // The barrier's own timeout applies when the wait gives none; 0 breaks it at once.
  AsyncBarrier timed(ex, 2, 1ms);
  GotIndex t;
  timed.async_wait(A, std::nullopt, t.h());
  run();
  EXPECT_ERROR(t, threading::BrokenBarrierError, "timed out");
  AsyncBarrier zero(ex, 2);
  GotIndex z;
  zero.async_wait(A, 0s, z.h());
  run();
  EXPECT_ERROR(z, threading::BrokenBarrierError, "timed out");
  EXPECT_TRUE(zero.broken());
}

TEST_F(WaitsTest, BarrierActionThatThrowsBreaksIt) {
  AsyncBarrier barrier(ex, 2, std::nullopt, [] { throw KeyError("from the action"); });
  GotIndex a, b;
  barrier.async_wait(A, std::nullopt, a.h());
  barrier.async_wait(B, std::nullopt, b.h());
  run();
  EXPECT_ERROR(a, threading::BrokenBarrierError, "action");
  EXPECT_ERROR(b, KeyError, "from the action");
  EXPECT_TRUE(barrier.broken());
}

// ---------------------------------------------------------------------------------------------
// Queue

TEST_F(WaitsTest, QueueNowaitAndSizes) {
  AsyncQueue<int> q(ex, 2);
  EXPECT_EQ(q.maxsize(), 2);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
  q.put_nowait(1);
  q.put_nowait(2);
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 2u);
  EXPECT_THROW(q.put_nowait(3), queue::Full);
  EXPECT_EQ(q.get_nowait(), 1);
  EXPECT_EQ(q.get_nowait(), 2);
  EXPECT_THROW(q.get_nowait(), queue::Empty);
  EXPECT_EQ(q.unfinished_tasks(), 2u);

  AsyncQueue<int> unbounded(ex, -1);
  for (int i = 0; i < 100; ++i) unbounded.put_nowait(i);
  EXPECT_FALSE(unbounded.full());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(unbounded.get_nowait(), i);
}

TEST_F(WaitsTest, QueueGetWaitsForPut) {
  AsyncQueue<int> q(ex);
  GotItem<int> g1, g2;
  GotDone p;
  q.async_get(A, true, std::nullopt, g1.h());
  q.async_get(B, true, std::nullopt, g2.h());
  run();
  EXPECT_EQ(g1.calls + g2.calls, 0);
  q.async_put(C, 5, true, std::nullopt, p.h());
  q.put_nowait(6);
  run();
  EXPECT_TRUE(p.ok());
  EXPECT_EQ(g1.value, 5);
  EXPECT_EQ(g2.value, 6);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.unfinished_tasks(), 2u);
}

TEST_F(WaitsTest, QueuePutWaitsForRoom) {
  AsyncQueue<int> q(ex, 1);
  q.put_nowait(1);
  GotDone p2, p3, nb;
  q.async_put(A, 2, true, std::nullopt, p2.h());
  q.async_put(B, 3, true, std::nullopt, p3.h());
  q.async_put(C, 4, false, std::nullopt, nb.h());
  run();
  EXPECT_EQ(p2.calls + p3.calls, 0);
  EXPECT_ERROR(nb, queue::Full, "maxsize 1");
  GotItem<int> g;
  q.async_get(C, false, std::nullopt, g.h());
  run();
  EXPECT_EQ(g.value, 1);
  EXPECT_TRUE(p2.ok()) << "the first putter takes the slot freed";
  EXPECT_EQ(p3.calls, 0);
  EXPECT_EQ(q.get_nowait(), 2);
  run();
  EXPECT_TRUE(p3.ok());
  EXPECT_EQ(q.get_nowait(), 3);
  EXPECT_EQ(q.unfinished_tasks(), 3u);
}

TEST_F(WaitsTest, QueueTimeouts) {
  AsyncQueue<int> q(ex, 1);
  GotItem<int> g, g0;
  q.async_get(A, true, 1ms, g.h());
  q.async_get(A, true, 0s, g0.h());
  run();
  EXPECT_ERROR(g, queue::Empty, "timed out");
  EXPECT_ERROR(g0, queue::Empty, "");
  q.put_nowait(1);
  GotDone p, p0;
  q.async_put(A, 2, true, 1ms, p.h());
  q.async_put(A, 3, true, 0s, p0.h());
  run();
  EXPECT_ERROR(p, queue::Full, "timed out");
  EXPECT_ERROR(p0, queue::Full, "");
  EXPECT_EQ(q.qsize(), 1u);
  EXPECT_EQ(q.unfinished_tasks(), 1u) << "a put that timed out counts no task";
}

TEST_F(WaitsTest, QueueNegativeTimeouts) {
  AsyncQueue<int> bounded(ex, 5);
  AsyncQueue<int> unbounded(ex);
  bounded.put_nowait(1);
  GotItem<int> get_neg, get_nb;
  GotDone put_neg, put_unbounded, put_nb;
  bounded.async_get(A, true, -1s, get_neg.h());             // ValueError though there is an item
  bounded.async_put(A, 2, true, -1s, put_neg.h());          // ValueError though there is room
  unbounded.async_put(A, 3, true, -1s, put_unbounded.h());  // an unbounded put never waits
  bounded.async_put(A, 4, false, -1s, put_nb.h());          // non-blocking: the timeout is ignored
  bounded.async_get(A, false, -1s, get_nb.h());
  run();
  EXPECT_ERROR(get_neg, ValueError, "'timeout' must be a non-negative number");
  EXPECT_ERROR(put_neg, ValueError, "'timeout' must be a non-negative number");
  EXPECT_TRUE(put_unbounded.ok());
  EXPECT_TRUE(put_nb.ok());
  EXPECT_EQ(get_nb.value, 1);
}

TEST_F(WaitsTest, QueueTaskDoneAndJoin) {
  AsyncQueue<int> q(ex);
  GotDone early, j1, j2;
  q.async_join(A, early.h());
  run();
  EXPECT_TRUE(early.ok()) << "nothing unfinished: join returns at once";
  q.put_nowait(1);
  q.put_nowait(2);
  q.async_join(A, j1.h());
  q.async_join(B, j2.h());
  (void)q.get_nowait();
  (void)q.get_nowait();
  q.task_done();
  run();
  EXPECT_EQ(j1.calls + j2.calls, 0);
  q.task_done();
  run();
  EXPECT_TRUE(j1.ok() && j2.ok());
  try {
    q.task_done();
    ADD_FAILURE() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "task_done() called too many times");
  }
}

TEST_F(WaitsTest, QueueShutdownReachesBlockedCallers) {
  AsyncQueue<int> empty(ex);
  GotItem<int> g1, g2;
  empty.async_get(A, true, std::nullopt, g1.h());
  empty.async_get(B, true, 1h, g2.h());
  AsyncQueue<int> full(ex, 1);
  full.put_nowait(1);
  GotDone p, j;
  full.async_put(C, 2, true, std::nullopt, p.h());
  full.async_join(C, j.h());
  empty.shutdown();  // (no run() before: g2's timer would keep it busy for an hour)
  full.shutdown();
  EXPECT_TRUE(full.is_shutdown());
  run();
  EXPECT_ERROR(g1, queue::ShutDown, "shut down");
  EXPECT_ERROR(g2, queue::ShutDown, "shut down");
  EXPECT_ERROR(p, queue::ShutDown, "shut down");
  EXPECT_EQ(j.calls, 0) << "a plain shutdown does not release join";

  // Later puts fail; gets drain what is left, then fail.
  GotDone later;
  full.async_put(A, 3, false, std::nullopt, later.h());
  EXPECT_THROW(full.put_nowait(3), queue::ShutDown);
  GotItem<int> drained, after;
  full.async_get(A, true, -1s, drained.h());  // not ShutDown: an item is left
  run();
  EXPECT_ERROR(later, queue::ShutDown, "shut down");
  EXPECT_ERROR(drained, ValueError, "non-negative") << "Python checks the timeout first";
  EXPECT_EQ(full.get_nowait(), 1);
  full.async_get(A, true, std::nullopt, after.h());
  run();
  EXPECT_ERROR(after, queue::ShutDown, "shut down and empty");
  EXPECT_THROW(full.get_nowait(), queue::ShutDown);
  full.task_done();
  run();
  EXPECT_TRUE(j.ok());
}

TEST_F(WaitsTest, QueueShutdownImmediateDropsItemsAndReleasesJoin) {
  AsyncQueue<int> q(ex);
  for (int i = 0; i < 3; ++i) q.put_nowait(i);
  GotDone j;
  q.async_join(A, j.h());
  q.shutdown(true);
  run();
  EXPECT_TRUE(j.ok());
  EXPECT_EQ(q.qsize(), 0u);
  EXPECT_EQ(q.unfinished_tasks(), 0u);
  EXPECT_THROW(q.get_nowait(), queue::ShutDown);

  // An item got but not marked done still holds join.
  AsyncQueue<int> r(ex);
  r.put_nowait(1);
  r.put_nowait(2);
  (void)r.get_nowait();
  GotDone rj;
  r.async_join(A, rj.h());
  r.shutdown(true);
  run();
  EXPECT_EQ(rj.calls, 0);
  EXPECT_EQ(r.unfinished_tasks(), 1u);
  r.task_done();
  run();
  EXPECT_TRUE(rj.ok());
}

TEST_F(WaitsTest, QueueOfMoveOnlyItems) {
  AsyncQueue<std::unique_ptr<int>> q(ex, 1);
  GotItem<std::unique_ptr<int>> g;
  GotDone p1, p2;
  q.async_put(A, std::make_unique<int>(1), true, std::nullopt, p1.h());
  q.async_put(A, std::make_unique<int>(2), true, std::nullopt, p2.h());
  q.async_get(B, true, std::nullopt, g.h());
  run();
  EXPECT_TRUE(p1.ok() && p2.ok());
  ASSERT_TRUE(g.value && *g.value);
  EXPECT_EQ(**g.value, 1);
  EXPECT_EQ(*q.get_nowait(), 2);
}

// ---------------------------------------------------------------------------------------------
// cancel, release_connection, destruction

TEST_F(WaitsTest, CancelGivesUpOneWaiter) {
  AsyncQueue<int> q(ex);
  GotItem<int> g1, g2;
  const WaitId id1 = q.async_get(A, true, std::nullopt, g1.h());
  q.async_get(B, true, std::nullopt, g2.h());
  EXPECT_TRUE(q.cancel(id1));
  EXPECT_FALSE(q.cancel(id1)) << "cancelled twice";
  q.put_nowait(9);
  run();
  EXPECT_ERROR(g1, concurrent::futures::CancelledError, "Queue.get was cancelled");
  EXPECT_EQ(g2.value, 9) << "the item went to the next getter";
  GotDone put;
  const WaitId done_id = q.async_put(A, 1, true, std::nullopt, put.h());
  run();
  EXPECT_FALSE(q.cancel(done_id)) << "a completed operation cannot be cancelled";

  AsyncLock lock(ex);
  GotBool a, b1, b2;
  lock.async_acquire(A, true, std::nullopt, a.h());
  lock.async_acquire(B, true, std::nullopt, b1.h());
  lock.async_acquire(C, true, std::nullopt, b2.h());
  EXPECT_EQ(lock.cancel(B), 1u);
  EXPECT_EQ(lock.cancel(B), 0u);
  lock.release(A);
  run();
  EXPECT_ERROR(b1, concurrent::futures::CancelledError, "Lock.acquire");
  EXPECT_TRUE(b2.ok(true));
  EXPECT_EQ(lock.holder(), C);

  // A cancelled Condition wait does not take the lock back.
  AsyncCondition cond(ex);
  GotBool acq, wait;
  cond.async_acquire(A, true, std::nullopt, acq.h());
  run();
  const WaitId w = cond.async_wait(A, std::nullopt, wait.h());
  EXPECT_TRUE(cond.cancel(w));
  run();
  EXPECT_ERROR(wait, concurrent::futures::CancelledError, "Condition.wait");
  EXPECT_THROW(cond.release(A), RuntimeError);

  // A cancelled Barrier party leaves; the barrier holds.
  AsyncBarrier barrier(ex, 2);
  GotIndex p1, p2, p3;
  const WaitId first = barrier.async_wait(A, std::nullopt, p1.h());
  EXPECT_TRUE(barrier.cancel(first));
  EXPECT_EQ(barrier.n_waiting(), 0);
  EXPECT_FALSE(barrier.broken());
  barrier.async_wait(B, std::nullopt, p2.h());
  barrier.async_wait(C, std::nullopt, p3.h());
  run();
  EXPECT_ERROR(p1, concurrent::futures::CancelledError, "Barrier.wait");
  EXPECT_EQ(p2.value, 0);
  EXPECT_EQ(p3.value, 1);

  AsyncEvent event(ex);
  AsyncSemaphore sem(ex, 0);
  GotBool e, s;
  event.async_wait(A, std::nullopt, e.h());
  sem.async_acquire(A, true, std::nullopt, s.h());
  EXPECT_EQ(event.cancel(A), 1u);
  EXPECT_EQ(sem.cancel(A), 1u);
  run();
  EXPECT_ERROR(e, concurrent::futures::CancelledError, "Event.wait");
  EXPECT_ERROR(s, concurrent::futures::CancelledError, "Semaphore.acquire");
}

TEST_F(WaitsTest, ReleaseConnectionFailsWaitersAndReleasesLocks) {
  // Queue: connection 1's getter fails, connection 2's goes on waiting.
  AsyncQueue<int> q(ex);
  GotItem<int> qa, qb;
  q.async_get(A, true, std::nullopt, qa.h());
  q.async_get(B, true, std::nullopt, qb.h());
  q.release_connection(A.connection);
  q.put_nowait(4);
  run();
  EXPECT_ERROR(qa, ConnectionAbortedError, "Queue.get: connection 1 closed");
  EXPECT_EQ(qb.value, 4);

  // RLock owned by a lane of the closed connection, count 2: released, handed to B.
  AsyncRLock rlock(ex);
  GotBool r1, r2, r3, rb;
  rlock.async_acquire(A2, true, std::nullopt, r1.h());
  rlock.async_acquire(A2, true, std::nullopt, r2.h());
  rlock.async_acquire(A, true, std::nullopt, r3.h());  // another lane of it, waiting
  rlock.async_acquire(B, true, std::nullopt, rb.h());
  run();
  rlock.release_connection(1);
  run();
  EXPECT_ERROR(r3, ConnectionAbortedError, "RLock.acquire");
  EXPECT_TRUE(rb.ok(true));
  EXPECT_TRUE(rlock.is_owned(B));

  // Lock (release_held): released if the closed connection acquired it; not if someone else did.
  AsyncLock lock(ex, OnDisconnect::release_held);
  GotBool l1;
  lock.async_acquire(A, true, std::nullopt, l1.h());
  run();
  lock.release_connection(B.connection);
  EXPECT_TRUE(lock.locked());
  lock.release_connection(A.connection);
  EXPECT_FALSE(lock.locked());

  // Lock (keep, the default, Python's): stays locked; anyone may release it.
  AsyncLock kept(ex);
  GotBool k0;
  kept.async_acquire(A, true, std::nullopt, k0.h());
  run();
  kept.release_connection(A.connection);
  EXPECT_TRUE(kept.locked());
  kept.release(B);
  EXPECT_FALSE(kept.locked());

  // Condition: a waiter of the connection fails; the lock it re-acquires is not taken.
  AsyncCondition cond(ex);
  GotBool ca, cw, cb;
  cond.async_acquire(A, true, std::nullopt, ca.h());
  run();
  cond.async_wait(A, std::nullopt, cw.h());
  cond.async_acquire(B, true, std::nullopt, cb.h());
  run();
  cond.release_connection(A.connection);
  run();
  EXPECT_ERROR(cw, ConnectionAbortedError, "Condition.wait");
  EXPECT_TRUE(cb.ok(true));
  EXPECT_NO_THROW(cond.notify(B));
  cond.release(B);

  // BoundedSemaphore (release_held): the units the connection holds come back.
  AsyncBoundedSemaphore bsem(ex, 3, OnDisconnect::release_held);
  GotBool s1, s2, s3, s4;
  bsem.async_acquire(A, true, std::nullopt, s1.h());
  bsem.async_acquire(A2, true, std::nullopt, s2.h());
  bsem.async_acquire(B, true, std::nullopt, s3.h());
  bsem.async_acquire(C, true, std::nullopt, s4.h());
  run();
  EXPECT_EQ(bsem.held_by(1), 2);
  bsem.release(A);  // one unit back from connection 1 itself
  run();
  EXPECT_TRUE(s4.ok(true));
  EXPECT_EQ(bsem.held_by(1), 1);
  bsem.release_connection(1);
  EXPECT_EQ(bsem.value(), 1);
  EXPECT_EQ(bsem.held_by(1), 0);

  // Semaphore (keep): nothing comes back, its waiter fails.
  AsyncSemaphore sem(ex, 1);
  GotBool k1, k2;
  sem.async_acquire(A, true, std::nullopt, k1.h());
  sem.async_acquire(A2, true, std::nullopt, k2.h());
  sem.release_connection(1);
  run();
  EXPECT_TRUE(k1.ok(true));
  EXPECT_ERROR(k2, ConnectionAbortedError, "Semaphore.acquire");
  EXPECT_EQ(sem.value(), 0);

  // Barrier: a party of the closed connection breaks it for the others.
  AsyncBarrier barrier(ex, 3);
  GotIndex ba, bb;
  barrier.async_wait(A, std::nullopt, ba.h());
  barrier.async_wait(B, std::nullopt, bb.h());
  barrier.release_connection(1);
  run();
  EXPECT_ERROR(ba, ConnectionAbortedError, "Barrier.wait");
  EXPECT_ERROR(bb, threading::BrokenBarrierError, "connection 1 closed");
  EXPECT_TRUE(barrier.broken());

  AsyncEvent event(ex);
  GotBool ea, eb;
  event.async_wait(A, std::nullopt, ea.h());
  event.async_wait(B, std::nullopt, eb.h());
  event.release_connection(1);
  event.set();
  run();
  EXPECT_ERROR(ea, ConnectionAbortedError, "Event.wait");
  EXPECT_TRUE(eb.ok(true));
}

TEST_F(WaitsTest, DestroyingAnObjectFailsItsWaiters) {
  GotItem<int> g;
  GotBool held, b_lock, c_lock, wait;
  GotIndex party;
  {
    AsyncQueue<int> q(ex);
    q.async_get(A, true, 1h, g.h());  // its timer goes with it
    AsyncLock lock(ex);
    AsyncCondition cond(ex, lock);
    AsyncBarrier barrier(ex, 2);
    barrier.async_wait(A, std::nullopt, party.h());
    lock.async_acquire(A, true, std::nullopt, held.h());
    lock.async_acquire(B, true, std::nullopt, b_lock.h());
    lock.async_acquire(C, true, std::nullopt, c_lock.h());
    cond.async_wait(A, std::nullopt, wait.h());  // hands the lock to B
  }
  run();
  EXPECT_TRUE(held.ok(true));
  EXPECT_TRUE(b_lock.ok(true));
  EXPECT_ERROR(c_lock, RuntimeError, "Lock.acquire: the Lock was destroyed");
  EXPECT_ERROR(wait, RuntimeError, "Condition.wait: the Condition was destroyed");
  EXPECT_ERROR(g, RuntimeError, "Queue.get: the Queue was destroyed");
  EXPECT_ERROR(party, RuntimeError, "Barrier.wait: the Barrier was destroyed");
}

// ---------------------------------------------------------------------------------------------
// Many waiters, several threads: no thread per waiter, FIFO, mutual exclusion (run under TSan).

class WaitsThreadsTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    LeakCheck::SetUp();
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io.run(); });
  }
  void TearDown() override {
    guard_.reset();
    for (auto& t : threads_) t.join();
    LeakCheck::TearDown();
  }

  boost::asio::io_context io;
  boost::asio::any_io_executor ex = io.get_executor();

private:
  boost::asio::steady_timer reactor_{io};  // as in WaitsTest
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_ =
      boost::asio::make_work_guard(io);
  std::vector<std::thread> threads_;
};

TEST_F(WaitsThreadsTest, ThousandGettersHoldNoThreads) {
  constexpr int n = 1000;
  AsyncQueue<int> q(ex);
  std::vector<int> got(n, -1);
  std::atomic<int> done{0};
  std::atomic<int> failed{0};
  const int threads_before = count_threads();
  for (int i = 0; i < n; ++i)
    q.async_get(Caller{static_cast<std::uint64_t>(100 + i), 0}, true, std::nullopt,
                [&, i](std::exception_ptr e, std::optional<int> v) {
                  if (e || !v) ++failed;
                  got[i] = v.value_or(-2);
                  done.fetch_add(1);
                });
  EXPECT_EQ(count_threads(), threads_before) << "a thread per waiter";
  EXPECT_EQ(done.load(), 0);
  for (int i = 0; i < n; ++i) q.put_nowait(i);
  ASSERT_TRUE(eventually([&] { return done.load() == n; }, std::chrono::seconds(60)))
      << done.load() << " of " << n << " getters completed";
  EXPECT_EQ(failed.load(), 0);
  for (int i = 0; i < n; ++i) ASSERT_EQ(got[i], i) << "getters are served in arrival order";
  EXPECT_EQ(count_threads(), threads_before);
  EXPECT_TRUE(q.empty());
}

// 1000 acquirers of one Lock; each handler increments a plain counter and releases, so the
// hand-off must order them (TSan sees a race otherwise), in arrival order.
TEST_F(WaitsThreadsTest, ThousandLockWaitersTakeTurns) {
  constexpr int n = 1000;
  AsyncLock lock(ex);
  std::promise<void> first;
  auto took = first.get_future();
  lock.async_acquire(A, true, std::nullopt, [&](std::exception_ptr, bool) { first.set_value(); });
  ASSERT_EQ(took.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  std::vector<int> order;  // guarded by the managed lock itself
  std::atomic<int> done{0};
  for (int i = 0; i < n; ++i) {
    const Caller who{static_cast<std::uint64_t>(100 + i), 0};
    lock.async_acquire(who, true, std::nullopt, [&, i, who](std::exception_ptr e, bool v) {
      EXPECT_TRUE(v && !e);
      order.push_back(i);
      lock.release(who);
      done.fetch_add(1);
    });
  }
  lock.release(A);
  ASSERT_TRUE(eventually([&] { return done.load() == n; }, std::chrono::seconds(60)));
  ASSERT_EQ(order.size(), static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) ASSERT_EQ(order[i], i);
  EXPECT_TRUE(eventually([&] { return !lock.locked(); }));
}

// Producers and consumers on plain threads, blocking on the handlers through futures, against a
// small bounded queue; every item arrives exactly once.
TEST_F(WaitsThreadsTest, ProducersAndConsumersOnABoundedQueue) {
  constexpr int per_thread = 300;
  constexpr int producers = 2;
  constexpr int consumers = 2;
  AsyncQueue<int> q(ex, 3);
  std::vector<std::thread> threads;
  std::vector<std::vector<int>> received(consumers);
  std::atomic<int> errors{0};
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      for (int i = 0; i < per_thread; ++i) {
        std::promise<std::exception_ptr> put;
        auto put_done = put.get_future();
        q.async_put(Caller{static_cast<std::uint64_t>(p + 1), 0}, p * per_thread + i, true,
                    std::chrono::seconds(60), [&](std::exception_ptr e) { put.set_value(e); });
        if (put_done.get()) ++errors;
      }
    });
  for (int c = 0; c < consumers; ++c)
    threads.emplace_back([&, c] {
      for (int i = 0; i < per_thread * producers / consumers; ++i) {
        std::promise<int> get;
        auto got = get.get_future();
        q.async_get(Caller{static_cast<std::uint64_t>(10 + c), 0}, true, std::chrono::seconds(60),
                    [&](std::exception_ptr e, std::optional<int> v) {
                      get.set_value(e ? -1 : v.value_or(-1));
                    });
        received[c].push_back(got.get());
        q.task_done();
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  std::multiset<int> all;
  for (auto& r : received) all.insert(r.begin(), r.end());
  ASSERT_EQ(all.size(), static_cast<std::size_t>(per_thread * producers));
  int expected = 0;
  for (int v : all) ASSERT_EQ(v, expected++);
  EXPECT_EQ(q.unfinished_tasks(), 0u);
}

}  // namespace
}  // namespace troupe::multiprocessing::managers::detail
