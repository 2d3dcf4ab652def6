#include <atomic>
#include <chrono>
#include <cmath>
#include <list>
#include <mutex>
#include <set>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>

#include "troupe/concurrent/futures/thread.hpp"
#include "troupe/errors.hpp"
#include "troupe/threading/event.hpp"
#include "troupe/threading/thread.hpp"

#include "leak_check.hpp"
#include "outcomes.hpp"

// The behaviours of CPython's Lib/test/test_concurrent_futures/executor.py, test_thread_pool.py,
// test_shutdown.py, test_init.py and test_deadlock.py (the thread parts) on ThreadPoolExecutor.
namespace troupe::concurrent::futures {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::StartsWith;
namespace views = troupe::testing::views;

class ThreadPoolTest : public troupe::testing::LeakCheck {};

int mul(int x, int y) {
  return x * y;
}
int sleep_and_raise(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  throw troupe::ValueError("sleep_and_raise");
}

TEST_F(ThreadPoolTest, Submit) {
  ThreadPoolExecutor pool(2);
  auto f = pool.submit([](int a, int b) { return static_cast<int>(std::pow(a, b)); }, 2, 8);
  EXPECT_EQ(f.result(), 256);
  auto g = pool.submit(mul, 2, 21);
  EXPECT_EQ(g.result(), 42);
}

TEST_F(ThreadPoolTest, SubmitVoidAndMoveOnlyArguments) {
  ThreadPoolExecutor pool(2);
  std::atomic<int> seen{0};
  auto f = pool.submit([&](std::unique_ptr<int> p) { seen = *p; }, std::make_unique<int>(5));
  f.result();
  EXPECT_EQ(seen, 5);
  auto g = pool.submit([] { return std::make_unique<std::string>("moved"); });
  EXPECT_EQ(*g.result(), "moved");
}

TEST_F(ThreadPoolTest, ExceptionIsStoredInTheFuture) {
  ThreadPoolExecutor pool(2);
  auto f = pool.submit(sleep_and_raise, 1);
  EXPECT_THROW(f.result(), ValueError);
  EXPECT_TRUE(f.exception());
}

TEST_F(ThreadPoolTest, RequestStopReachesARunningCallThroughItsStopToken) {
  // troupe: Python cannot stop a running call; a function taking a std::stop_token can be asked.
  threading::Event started;
  ThreadPoolExecutor pool(1);
  auto f = pool.submit(
      [&](std::stop_token stop, int step) {
        started.set();
        int rounds = 0;
        const auto give_up = std::chrono::steady_clock::now() + 10s;
        while (!stop.stop_requested() && std::chrono::steady_clock::now() < give_up) {
          std::this_thread::sleep_for(1ms);
          rounds += step;
        }
        if (!stop.stop_requested()) throw std::runtime_error("never asked to stop");
        return rounds;
      },
      1);
  auto queued = pool.submit([](std::stop_token) { return -1; });  // waits behind f
  ASSERT_TRUE(started.wait(10s));
  EXPECT_TRUE(f.running());
  EXPECT_FALSE(f.cancel());            // Python's cancel() cannot
  EXPECT_TRUE(queued.request_stop());  // pending: cancelled
  EXPECT_TRUE(queued.cancelled());
  EXPECT_TRUE(f.request_stop());
  EXPECT_GE(f.result(10s), 0);     // it ended as it chose: its return is the result
  EXPECT_FALSE(f.request_stop());  // done
  // A running call without a token cannot be asked.
  threading::Event release;
  auto plain = pool.submit([&] { return release.wait(10s); });
  EXPECT_TRUE(troupe::testing::eventually([&] { return plain.running(); }));
  EXPECT_FALSE(plain.request_stop());
  release.set();
  EXPECT_TRUE(plain.result(10s));
}

TEST_F(ThreadPoolTest, MapYieldsInInputOrder) {
  ThreadPoolExecutor pool(3);
  std::vector<int> xs, ys;
  for (int i = 0; i < 10; ++i) {
    xs.push_back(i);
    ys.push_back(i + 1);
  }
  std::vector<int> got;
  for (int v : pool.map(mul, xs, ys)) got.push_back(v);
  std::vector<int> want;
  for (int i = 0; i < 10; ++i) want.push_back(i * (i + 1));
  EXPECT_EQ(got, want);
}

TEST_F(ThreadPoolTest, MapStopsAtTheShortestInput) {
  ThreadPoolExecutor pool(2);
  std::vector<int> a{1, 2, 3, 4};
  std::list<int> b{10, 20};
  std::vector<int> got;
  for (int v : pool.map(mul, a, b)) got.push_back(v);
  EXPECT_EQ(got, (std::vector<int>{10, 40}));
}

TEST_F(ThreadPoolTest, MapExceptionAtItsPosition) {
  ThreadPoolExecutor pool(2);
  std::vector<int> xs{1, 1, 0, 1};
  std::vector<int> got;
  auto results = pool.map(
      [](int x) {
        if (x == 0) throw ValueError("division by zero");
        return 10 / x;
      },
      xs);
  auto it = results.begin();
  got.push_back(*it);
  ++it;
  got.push_back(*it);
  EXPECT_THROW(++it, ValueError);
  EXPECT_EQ(got, (std::vector<int>{10, 10}));
}

int square(int x) {
  return x * x;
}

TEST_F(ThreadPoolTest, MapEndsAfterAFailingCallAsPython) {
  // Python's result_iterator: the exception at its place, then the generator is closed and the
  // calls after it are cancelled: a next() loop that catches errors sees the end (unlike
  // Pool.imap, which goes on).
  using troupe::testing::outcomes;
  ThreadPoolExecutor pool(2);
  for (bool eager : {false, true}) {
    SCOPED_TRACE(eager ? "eager" : "lazy");
    auto results = pool.map(
        {.eager = eager},
        [](int x) {
          if (x == 10) throw KeyError("item 10");
          return x;
        },
        views::iota(0, 100));
    auto want = troupe::testing::texts(0, 10, [](int i) { return i; });
    want.push_back("KeyError");
    EXPECT_EQ(outcomes(results), want);
  }
}

TEST_F(ThreadPoolTest, MapInputThatRaisesAsPython) {
  // Python 3.14's Executor.map: map() itself reads the first `buffersize` elements (all of them
  // without buffersize: troupe's eager), so an input failing among them raises from map().
  // After that, element j + buffersize is read when result j is asked for, before it is
  // returned: an input failing at k raises in place of result k - buffersize, and the map ends.
  using troupe::testing::input_raising_at;
  using troupe::testing::outcomes;
  ThreadPoolExecutor pool(2);
  EXPECT_THROW((void)pool.map({.eager = true}, square, input_raising_at(100, 50)), IndexError);
  EXPECT_THROW((void)pool.map({.buffersize = 8}, square, input_raising_at(100, 5)), IndexError);
  EXPECT_THROW((void)pool.map(square, input_raising_at(100, 3)), IndexError);  // 2 x 2 ahead
  for (std::size_t buffersize : {1, 8}) {
    SCOPED_TRACE("buffersize " + std::to_string(buffersize));
    const int k = 20;
    auto results = pool.map({.buffersize = buffersize}, square, input_raising_at(100, k));
    auto want = troupe::testing::texts(0, k - static_cast<int>(buffersize), square);
    want.push_back("IndexError");
    EXPECT_EQ(outcomes(results), want);
  }
  auto by_default = pool.map(square, input_raising_at(100, 20));
  auto want = troupe::testing::texts(0, 20 - 4, square);
  want.push_back("IndexError");
  EXPECT_EQ(outcomes(by_default), want);
}

TEST_F(ThreadPoolTest, MapTimeoutCountsFromTheCall) {
  // Events the calls wait on are declared before the pool, here and below: a worker can still be
  // inside release.wait() when the test ends, and the pool's destructor must join it first.
  threading::Event release;
  ThreadPoolExecutor pool(2);
  std::vector<int> ms{0, 0, 1};
  std::vector<int> got;
  try {
    for (int v : pool.map(
             {.timeout = 100ms},
             [&](int wait) {
               if (wait) release.wait(10s);
               return wait;
             },
             ms))
      got.push_back(v);
    FAIL() << "no TimeoutError";
  } catch (const TimeoutError&) {
  }
  EXPECT_EQ(got, (std::vector<int>{0, 0}));
  release.set();
}

TEST_F(ThreadPoolTest, MapNextWithATimeoutLosesNothing) {
  threading::Event never;
  // next(timeout), as Pool.imap's: a per-read timeout that leaves the result to a later read;
  // the map's own timeout still counts from the call and ends the map.
  threading::Event release;
  ThreadPoolExecutor pool(2);
  auto results = pool.map([&](int x) { return release.wait(10s) ? x : -1; }, std::vector{1, 2});
  EXPECT_THROW((void)results.next(10ms), TimeoutError);
  release.set();
  EXPECT_EQ(results.next(10s), 1);
  EXPECT_EQ(results.next(10s), 2);
  EXPECT_EQ(results.next(10s), std::nullopt);
  auto bounded = pool.map(
      {.timeout = 50ms}, [&](int x) { return never.wait(10s) ? x : -1; }, std::vector{1});
  EXPECT_THROW((void)bounded.next(10s), TimeoutError);  // the map's 50 ms, not the 10 s
  EXPECT_EQ(bounded.next(10s), std::nullopt);           // the map has ended
  never.set();
}

TEST_F(ThreadPoolTest, MapOfAFunctionReturningVoid) {
  ThreadPoolExecutor pool(2);
  std::atomic<int> sum{0};
  int n = 0;
  for ([[maybe_unused]] auto v : pool.map([&](int x) { sum += x; }, std::vector<int>{1, 2, 3})) ++n;
  EXPECT_EQ(n, 3);
  EXPECT_EQ(sum, 6);
}

TEST_F(ThreadPoolTest, MapBufferSizeValidation) {
  ThreadPoolExecutor pool(2);
  std::vector<int> xs{1};
  EXPECT_THROW((void)pool.map({.buffersize = 0}, mul, xs, xs), ValueError);
  EXPECT_THROW((void)pool.map({.chunksize = 0}, mul, xs, xs), ValueError);
  EXPECT_THROW((void)pool.map({.buffersize = 2, .eager = true}, mul, xs, xs), ValueError);
}

TEST_F(ThreadPoolTest, MapEagerSubmitsWithoutIteration) {
  // CPython's test_map_submits_without_iteration.
  ThreadPoolExecutor pool(2);
  std::mutex mu;
  std::set<int> finished;
  {
    auto results = pool.map(
        {.eager = true},
        [&](int x) {
          std::scoped_lock lk(mu);
          finished.insert(x);
        },
        views::iota(0, 10));
    pool.shutdown(true);
  }
  EXPECT_EQ(finished.size(), 10u);
}

TEST_F(ThreadPoolTest, MapIsLazyOverAnEndlessInput) {
  // Python 3.14's buffersize on an infinite iterable: only `buffersize` calls ahead.
  ThreadPoolExecutor pool(2);
  std::atomic<int> calls{0};
  auto results = pool.map(
      {.buffersize = 3},
      [&](int x) {
        ++calls;
        return x * 2;
      },
      views::iota(0));
  int read = 0;
  for (int v : results) {
    EXPECT_EQ(v, read * 2);
    if (++read == 5) break;
  }
  pool.shutdown(true);
  EXPECT_LE(calls.load(), 5 + 3);
  EXPECT_GE(calls.load(), 5);
}

TEST_F(ThreadPoolTest, MapDefaultLookAheadIsBounded) {
  threading::Event release;
  ThreadPoolExecutor pool(2);
  std::atomic<int> calls{0};
  auto results = pool.map(
      [&](int x) {
        ++calls;
        release.wait(10s);
        return x;
      },
      views::iota(0));
  EXPECT_TRUE(troupe::testing::eventually([&] { return calls.load() == 2; }));
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(calls.load(), 2);  // two workers busy, the rest queued: 2 × max_workers submitted
  release.set();
  auto it = results.begin();
  EXPECT_EQ(*it, 0);
}

TEST_F(ThreadPoolTest, AbandonedMapCancelsWhatIsLeft) {
  threading::Event release;
  ThreadPoolExecutor pool(1);
  std::atomic<int> calls{0};
  {
    auto results = pool.map(
        {.eager = true},
        [&](int) {
          ++calls;
          release.wait(10s);
        },
        views::iota(0, 20));
    EXPECT_TRUE(troupe::testing::eventually([&] { return calls.load() == 1; }));
  }
  release.set();
  pool.shutdown(true);
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(ThreadPoolTest, MaxWorkersMustBePositive) {
  EXPECT_THROW(ThreadPoolExecutor(0), ValueError);
  EXPECT_THROW(ThreadPoolExecutor(-1), ValueError);
}

TEST_F(ThreadPoolTest, DefaultWorkersAsPython313) {
  ThreadPoolExecutor pool;
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_EQ(pool.max_workers(), std::min(32, CPU_COUNT(&set) + 4));
}

TEST_F(ThreadPoolTest, SaturationStartsMaxWorkersOnly) {
  threading::Event release;
  ThreadPoolExecutor pool(4);
  std::vector<Future<bool>> fs;
  for (int i = 0; i < 4 * 5; ++i) fs.push_back(pool.submit([&] { return release.wait(10s); }));
  EXPECT_EQ(pool.threads(), 4u);
  release.set();
  for (auto& f : fs) EXPECT_TRUE(f.result());
}

TEST_F(ThreadPoolTest, IdleThreadReuse) {
  ThreadPoolExecutor pool(4);
  pool.submit(mul, 21, 2).result();
  pool.submit(mul, 6, 7).result();
  pool.submit(mul, 3, 14).result();
  EXPECT_EQ(pool.threads(), 1u);
}

TEST_F(ThreadPoolTest, ThreadNames) {
  ThreadPoolExecutor named({.max_workers = 2, .thread_name_prefix = "SpecialPool"});
  auto a = named.submit([] { return threading::current_thread().name(); });
  EXPECT_EQ(a.result(), "SpecialPool_0");
  ThreadPoolExecutor unnamed(1);
  auto b = unnamed.submit([] { return threading::current_thread().name(); });
  EXPECT_THAT(b.result(), ::testing::MatchesRegex("ThreadPoolExecutor-[0-9]+_0"));
}

TEST_F(ThreadPoolTest, RunAfterShutdownRaises) {
  ThreadPoolExecutor pool(2);
  pool.shutdown();
  try {
    (void)pool.submit(mul, 2, 5);
    FAIL() << "no RuntimeError";
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "cannot schedule new futures after shutdown");
  }
  pool.shutdown();  // again: harmless
}

TEST_F(ThreadPoolTest, ShutdownWaitsForQueuedWork) {
  std::atomic<int> done{0};
  {
    ThreadPoolExecutor pool(2);
    for (int i = 0; i < 20; ++i)
      (void)pool.submit([&] {
        std::this_thread::sleep_for(1ms);
        ++done;
      });
  }  // the destructor is Python's `with` exit: shutdown(wait=True)
  EXPECT_EQ(done, 20);
}

TEST_F(ThreadPoolTest, ShutdownCancelFutures) {
  threading::Event release;
  ThreadPoolExecutor pool(1);
  auto first = pool.submit([&] { return release.wait(10s); });
  std::vector<Future<int>> rest;
  for (int i = 0; i < 10; ++i) rest.push_back(pool.submit(mul, i, 1));
  EXPECT_TRUE(troupe::testing::eventually([&] { return first.running(); }));
  pool.shutdown(false, true);
  release.set();
  EXPECT_TRUE(first.result());
  for (auto& f : rest) EXPECT_TRUE(f.cancelled());
  auto r = wait(rest, 0s);
  EXPECT_EQ(r.done.size(), 10u);  // a cancelled future is done at once for wait()
  pool.shutdown(true);
}

TEST_F(ThreadPoolTest, ShutdownNoWaitThenDestroyJoins) {
  std::atomic<int> done{0};
  {
    ThreadPoolExecutor pool(2);
    for (int i = 0; i < 5; ++i)
      (void)pool.submit([&] {
        std::this_thread::sleep_for(2ms);
        ++done;
      });
    pool.shutdown(false);
  }
  EXPECT_EQ(done, 5);
}

TEST_F(ThreadPoolTest, InitializerRunsInEachWorker) {
  std::atomic<int> inits{0};
  {
    threading::Event release;
    ThreadPoolExecutor pool({.max_workers = 3, .initializer = [&] { ++inits; }});
    std::vector<Future<bool>> fs;
    for (int i = 0; i < 3; ++i) fs.push_back(pool.submit([&] { return release.wait(10s); }));
    release.set();
    for (auto& f : fs) f.result();
  }
  EXPECT_EQ(inits, 3);
}

TEST_F(ThreadPoolTest, FailingInitializerBreaksThePool) {
  ThreadPoolExecutor pool(
      {.max_workers = 1, .initializer = [] { throw std::runtime_error("init failed"); }});
  ::testing::internal::CaptureStderr();
  auto f = pool.submit(mul, 1, 2);
  try {
    f.result(10s);
    FAIL() << "no BrokenThreadPool";
  } catch (const BrokenThreadPool& e) {
    EXPECT_STREQ(e.what(), "A thread initializer failed, the thread pool is not usable anymore");
  }
  EXPECT_TRUE(troupe::testing::eventually([&] {
    try {
      (void)pool.submit(mul, 1, 2);
      return false;
    } catch (const BrokenThreadPool&) {
      return true;
    }
  }));
  pool.shutdown();
  EXPECT_THAT(::testing::internal::GetCapturedStderr(),
              HasSubstr("Exception in initializer:\nstd::runtime_error: init failed"));
}

TEST_F(ThreadPoolTest, WaitingOnOwnSaturatedPoolRaisesInsteadOfHanging) {
  // The deadlock of Python's docs: one worker, whose task waits on a call it submitted.
  ThreadPoolExecutor pool(1);
  auto outer = pool.submit([&pool] {
    auto inner = pool.submit(mul, 5, 2);
    return inner.result();
  });
  try {
    (void)outer.result(10s);
    FAIL() << "no RuntimeError";
  } catch (const RuntimeError& e) {
    EXPECT_THAT(e.what(), StartsWith("deadlock: a task of ThreadPoolExecutor-"));
  }
}

TEST_F(ThreadPoolTest, TwoTasksWaitingOnEachOtherRaise) {
  threading::Event ready;
  // Python's second documented deadlock: a waits on b, b waits on a, two workers.
  ThreadPoolExecutor pool(2);
  Future<int> a_fut, b_fut;  // set below before either task waits
  auto a = pool.submit([&] {
    ready.wait(10s);
    return b_fut.result() + 1;
  });
  auto b = pool.submit([&] {
    ready.wait(10s);
    return a_fut.result() + 1;
  });
  a_fut = a;
  b_fut = b;
  ready.set();
  // One of them sees the deadlock and raises; the other then gets that exception.
  EXPECT_THROW(a.result(10s), RuntimeError);
  EXPECT_THROW(b.result(10s), RuntimeError);
}

TEST_F(ThreadPoolTest, WaitingOnOwnPoolWithAFreeWorkerIsFine) {
  ThreadPoolExecutor pool(2);
  auto outer = pool.submit([&pool] { return pool.submit(mul, 5, 2).result() + 1; });
  EXPECT_EQ(outer.result(10s), 11);
}

TEST_F(ThreadPoolTest, ManyThreadsSubmitAtOnce) {
  ThreadPoolExecutor pool(3);
  std::atomic<long> total{0};
  std::vector<std::unique_ptr<threading::Thread>> ts;
  for (int t = 0; t < 4; ++t) {
    ts.push_back(std::make_unique<threading::Thread>([&pool, &total] {
      std::vector<Future<int>> fs;
      for (int i = 0; i < 2000; ++i) fs.push_back(pool.submit(mul, i, 1));
      for (auto& f : fs) total += f.result();
    }));
    ts.back()->start();
  }
  for (auto& t : ts) t->join();
  EXPECT_EQ(total.load(), 4L * (1999L * 2000L / 2));
}

TEST_F(ThreadPoolTest, AsCompletedAndWaitOverPoolFutures) {
  ThreadPoolExecutor pool(4);
  std::vector<Future<int>> fs;
  for (int i = 0; i < 16; ++i)
    fs.push_back(pool.submit(
        [](int i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(16 - i));
          return i;
        },
        i));
  std::set<int> seen;
  for (const auto& f : as_completed(fs, 10s)) seen.insert(f.result());
  EXPECT_EQ(seen.size(), 16u);
  auto r = wait(fs, 0s);
  EXPECT_EQ(r.done.size(), 16u);
}

}  // namespace
}  // namespace troupe::concurrent::futures
