#include "troupe/threading/barrier.hpp"

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "troupe/errors.hpp"

#include "bunch.hpp"
#include "leak_check.hpp"

namespace troupe::threading {
namespace {

using namespace std::chrono_literals;
using troupe::testing::Bunch;
using BarrierTest = troupe::testing::LeakCheck;

constexpr int N = 5;

// BarrierTests.test_constructor (3.13: parties must be > 0)
TEST_F(BarrierTest, Constructor) {
  EXPECT_THROW(Barrier(0), ValueError);
  EXPECT_THROW(Barrier(-1), ValueError);
  Barrier b(3);
  EXPECT_EQ(b.parties(), 3);
  EXPECT_EQ(b.n_waiting(), 0);
  EXPECT_FALSE(b.broken());
}

// BarrierTests.test_barrier / test_barrier_10: several generations in a row.
TEST_F(BarrierTest, Generations) {
  Barrier barrier(N);
  std::mutex mu;
  std::vector<std::vector<int>> phases(10);
  {
    Bunch b(
        [&] {
          for (int i = 0; i < 10; ++i) {
            {
              std::scoped_lock g(mu);
              phases[i].push_back(i);
            }
            barrier.wait();
            std::scoped_lock g(mu);
            // Nobody reaches phase i+1 before all of phase i arrived.
            EXPECT_EQ(phases[i].size(), static_cast<size_t>(N));
          }
        },
        N);
  }
  EXPECT_EQ(barrier.n_waiting(), 0);
  EXPECT_FALSE(barrier.broken());
}

// BarrierTests.test_wait_return: distinct indices 0..N-1, exactly one 0.
TEST_F(BarrierTest, WaitReturnsDistinctIndices) {
  Barrier barrier(N);
  std::mutex mu;
  std::vector<int> got;
  {
    Bunch b(
        [&] {
          int r = barrier.wait();
          std::scoped_lock g(mu);
          got.push_back(r);
        },
        N);
  }
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4}));
}

// BarrierTests.test_action: the action runs once per generation, before anyone is released.
TEST_F(BarrierTest, ActionRunsOncePerGeneration) {
  std::atomic<int> calls{0};
  Barrier barrier(N, [&] { calls.fetch_add(1); });
  {
    Bunch b(
        [&] {
          barrier.wait();
          EXPECT_GE(calls.load(), 1);
          barrier.wait();
        },
        N);
  }
  EXPECT_EQ(calls.load(), 2);
}

// BarrierTests.test_abort: one party aborts; the others get BrokenBarrierError.
TEST_F(BarrierTest, Abort) {
  Barrier barrier(N);
  std::atomic<int> broken{0}, passed{0};
  {
    Bunch b(
        [&] {
          try {
            int i = barrier.wait();
            if (i == N / 2) throw RuntimeError("boom");
            barrier.wait();
            passed.fetch_add(1);
          } catch (const BrokenBarrierError&) {
            broken.fetch_add(1);
          } catch (const RuntimeError&) {
            barrier.abort();
          }
        },
        N);
  }
  EXPECT_EQ(passed.load(), 0);
  EXPECT_EQ(broken.load(), N - 1);
  EXPECT_TRUE(barrier.broken());
  EXPECT_THROW(barrier.wait(), BrokenBarrierError);
}

// BarrierTests.test_reset: a reset while parties wait breaks their wait, then the barrier works.
TEST_F(BarrierTest, Reset) {
  Barrier barrier(N);
  std::atomic<int> reset_seen{0}, after{0};
  {
    Bunch b(
        [&] {
          try {
            barrier.wait();  // only N-1 come the first time around… see below
          } catch (const BrokenBarrierError&) {
            reset_seen.fetch_add(1);
          }
          barrier.wait();
          after.fetch_add(1);
        },
        N - 1);
    ASSERT_TRUE(troupe::testing::eventually([&] { return barrier.n_waiting() == N - 1; }));
    barrier.reset();
    ASSERT_TRUE(troupe::testing::eventually([&] { return reset_seen.load() == N - 1; }));
    barrier.wait();  // the Nth party of the second generation
  }
  EXPECT_EQ(reset_seen.load(), N - 1);
  EXPECT_EQ(after.load(), N - 1);
  EXPECT_FALSE(barrier.broken());
}

// BarrierTests.test_abort_and_reset
TEST_F(BarrierTest, AbortAndReset) {
  Barrier barrier(2);
  barrier.abort();
  EXPECT_TRUE(barrier.broken());
  barrier.reset();
  EXPECT_FALSE(barrier.broken());
  std::thread t([&] { barrier.wait(); });
  barrier.wait();
  t.join();
}

// BarrierTests.test_timeout: a wait that times out breaks the barrier for everyone.
TEST_F(BarrierTest, TimeoutBreaks) {
  Barrier barrier(N);
  std::atomic<int> broken{0};
  {
    Bunch b(
        [&] {
          try {
            barrier.wait(50ms);
          } catch (const BrokenBarrierError&) {
            broken.fetch_add(1);
          }
        },
        N - 1);
  }
  EXPECT_EQ(broken.load(), N - 1);
  EXPECT_TRUE(barrier.broken());
}

// BarrierTests.test_default_timeout
TEST_F(BarrierTest, DefaultTimeout) {
  Barrier barrier(2, {}, 30ms);
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_THROW(barrier.wait(), BrokenBarrierError);
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 29ms);
}

// BarrierTests.test_single_thread
TEST_F(BarrierTest, SingleParty) {
  Barrier barrier(1);
  EXPECT_EQ(barrier.wait(), 0);
  EXPECT_EQ(barrier.wait(), 0);
}

// An action that throws breaks the barrier and the exception reaches the last party.
TEST_F(BarrierTest, ThrowingActionBreaks) {
  Barrier barrier(2, [] { throw ValueError("action failed"); });
  std::atomic<int> broken{0}, action_err{0};
  {
    Bunch b(
        [&] {
          try {
            barrier.wait();
          } catch (const BrokenBarrierError&) {
            broken.fetch_add(1);
          } catch (const ValueError&) {
            action_err.fetch_add(1);
          }
        },
        2);
  }
  EXPECT_EQ(broken.load(), 1);
  EXPECT_EQ(action_err.load(), 1);
  EXPECT_TRUE(barrier.broken());
}

}  // namespace
}  // namespace troupe::threading
