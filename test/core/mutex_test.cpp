#include "troupe/detail/mutex.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "leak_check.hpp"

namespace troupe::detail {
namespace {

using namespace std::chrono_literals;
using MutexTest = troupe::testing::LeakCheck;

// Many threads, some with short deadlines, hammer one lock. A lost wake-up leaves a thread asleep
// on a free lock: the test then never finishes its fixed number of rounds (and meson's timeout
// fails it). Mutual exclusion is checked by a counter that is not atomic.
TEST_F(MutexTest, ContentionWithTimeoutsLosesNoWakeUp) {
  FutexMutex m;
  long counter = 0;
  std::atomic<long> timed_out{0};
  constexpr int kThreads = 6, kRounds = 20000;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        if (t % 2 == 0 && i % 7 == 0) {
          if (!m.lock_until(steady::now() + 20us)) {
            timed_out.fetch_add(1);
            --i;  // retry this round
            continue;
          }
        } else {
          m.lock();
        }
        ++counter;
        if (i % 100 == 0) std::this_thread::yield();  // hold it a while, now and then
        m.unlock();
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(counter, static_cast<long>(kThreads) * kRounds);
  EXPECT_FALSE(m.locked());
}

// The condition variable under the same kind of load: every notify is seen by some waiter.
TEST_F(MutexTest, CondVarProducerConsumerLosesNothing) {
  FutexMutex m;
  FutexCondVar cv;
  int items = 0;
  long consumed = 0;
  constexpr int kPerProducer = 20000;
  std::vector<std::thread> ts;
  for (int p = 0; p < 2; ++p) {
    ts.emplace_back([&] {
      for (int i = 0; i < kPerProducer; ++i) {
        std::scoped_lock g(m);
        ++items;
        cv.notify_one();
      }
    });
  }
  for (int c = 0; c < 2; ++c) {
    ts.emplace_back([&] {
      for (int i = 0; i < kPerProducer; ++i) {
        std::unique_lock g(m);
        while (items == 0) (void)cv.wait(m, steady::now() + 10s);
        --items;
        ++consumed;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(consumed, 2L * kPerProducer);
  EXPECT_EQ(items, 0);
}

// Sleepers notified one after another in a row, before any of them has run again: a notify
// skips the call only for sleepers an earlier one woke (FutexCondVar::notify), so each of them
// wakes. A wake-up lost there leaves a waiter asleep until its deadline: counted as late.
TEST_F(MutexTest, CondVarWakesEachSleeperNotifiedInARow) {
  FutexMutex m;
  FutexCondVar cv;
  constexpr int kWaiters = 4, kRounds = 300;
  int generation = 0, tickets = 0;
  std::atomic<int> late{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < kWaiters; ++w) {
    ts.emplace_back([&] {
      for (int r = 1; r <= kRounds; ++r) {
        std::unique_lock g(m);
        while (generation != r || tickets == 0) {
          // No spin: each waiter sleeps, so that each notify has a sleeper to wake.
          if (!cv.wait(m, steady::now() + 5s, false)) late.fetch_add(1);
        }
        --tickets;
      }
    });
  }
  for (int r = 1; r <= kRounds; ++r) {
    const auto give_up = steady::now() + 30s;
    std::unique_lock g(m);
    // Every waiter took its ticket of the round before and is in wait() for this one.
    while ((tickets != 0 || cv.waiters() != kWaiters) && steady::now() < give_up) {
      g.unlock();
      std::this_thread::yield();
      g.lock();
    }
    EXPECT_EQ(cv.waiters(), kWaiters) << "round " << r;
    generation = r;
    tickets = kWaiters;
    for (int i = 0; i < kWaiters; ++i) cv.notify_one();
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(late.load(), 0);
}

TEST_F(MutexTest, LockUntilTimesOutWhileHeld) {
  FutexMutex m;
  m.lock();
  bool got = true;
  std::thread([&] { got = m.lock_until(steady::now() + 10ms); }).join();
  EXPECT_FALSE(got);
  m.unlock();
  EXPECT_TRUE(m.lock_until(steady::now() + 10ms));
  m.unlock();
}

}  // namespace
}  // namespace troupe::detail
