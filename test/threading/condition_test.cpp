#include "troupe/threading/condition.hpp"

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
using troupe::testing::let_others_run;
using ConditionTest = troupe::testing::LeakCheck;

// ConditionTests.test_acquire
TEST_F(ConditionTest, AcquireIsReentrantWithTheDefaultRLock) {
  Condition cond;
  cond.acquire();
  cond.acquire();
  cond.release();
  cond.release();
  Lock lock;
  Condition cond2(lock);
  cond2.acquire();
  EXPECT_FALSE(cond2.acquire(false));
  cond2.release();
  EXPECT_FALSE(lock.locked());
}

// ConditionTests.test_unacquired_wait / test_unacquired_notify
TEST_F(ConditionTest, WaitAndNotifyNeedTheLock) {
  Condition cond;
  try {
    cond.wait();
    FAIL();
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "cannot wait on un-acquired lock");
  }
  try {
    cond.notify();
    FAIL();
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "cannot notify on un-acquired lock");
  }
  EXPECT_THROW(cond.notify_all(), RuntimeError);
  Lock lock;
  Condition c2(lock);
  EXPECT_THROW(c2.wait(), RuntimeError);
}

// ConditionTests._check_notify: notify(n) wakes exactly n, oldest first; notify_all the rest.
template <class MakeCond>
void check_notify(MakeCond make) {
  auto holder = make();
  Condition& cond = *holder.cond;
  const int n = 5;
  std::mutex rmu;
  std::vector<int> phase1, phase2;
  std::atomic<int> ready{0};
  int phase = 0;
  Bunch b(
      [&] {
        cond.acquire();
        ready.fetch_add(1);
        (void)cond.wait();
        int p = phase;
        cond.release();
        std::scoped_lock g(rmu);
        (p == 1 ? phase1 : phase2).push_back(p);
      },
      n);
  ASSERT_TRUE(troupe::testing::eventually([&] {
    std::scoped_lock g{cond};
    return ready.load() == n;
  }));
  let_others_run();
  {
    std::scoped_lock g{cond};
    phase = 1;
    cond.notify(3);
  }
  troupe::testing::eventually([&] {
    std::scoped_lock g(rmu);
    return phase1.size() >= 3;
  });
  let_others_run();
  {
    std::scoped_lock g(rmu);
    EXPECT_EQ(phase1.size(), 3u);
    EXPECT_EQ(phase2.size(), 0u);
  }
  {
    std::scoped_lock g{cond};
    phase = 2;
    cond.notify_all();
  }
  b.join();
  EXPECT_EQ(phase1.size(), 3u);
  EXPECT_EQ(phase2.size(), 2u);
}

struct OwnCond {
  std::unique_ptr<Condition> cond = std::make_unique<Condition>();
};
struct LockCond {
  std::unique_ptr<Lock> lock = std::make_unique<Lock>();
  std::unique_ptr<Condition> cond = std::make_unique<Condition>(*lock);
};
struct RLockCond {
  std::unique_ptr<RLock> lock = std::make_unique<RLock>();
  std::unique_ptr<Condition> cond = std::make_unique<Condition>(*lock);
};

// ConditionTests.test_notify
TEST_F(ConditionTest, NotifyWakesExactlyN) {
  check_notify([] { return OwnCond{}; });
  check_notify([] { return LockCond{}; });
  check_notify([] { return RLockCond{}; });
}

// ConditionTests.test_timeout
TEST_F(ConditionTest, WaitTimesOut) {
  Condition cond;
  std::atomic<int> timed_out{0};
  {
    Bunch b(
        [&] {
          std::scoped_lock g{cond};
          const auto t1 = std::chrono::steady_clock::now();
          bool r = cond.wait(50ms);
          EXPECT_GE(std::chrono::steady_clock::now() - t1, 49ms);
          if (!r) timed_out.fetch_add(1);
        },
        5);
  }
  EXPECT_EQ(timed_out.load(), 5);
}

// CPython: Condition.wait(-1) and wait(0) return False at once (after release and re-acquire).
TEST_F(ConditionTest, ZeroAndNegativeTimeoutReturnFalse) {
  Condition cond;
  std::scoped_lock g{cond};
  EXPECT_FALSE(cond.wait(0s));
  EXPECT_FALSE(cond.wait(-1s));
  EXPECT_TRUE(cond.locked());
}

// ConditionTests.test_waitfor
TEST_F(ConditionTest, WaitFor) {
  Condition cond;
  int state = 0;
  std::thread t([&] {
    std::scoped_lock g{cond};
    bool r = cond.wait_for([&] { return state == 4; });
    EXPECT_TRUE(r);
    EXPECT_EQ(state, 4);
  });
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(2ms);
    std::scoped_lock g{cond};
    ++state;
    cond.notify();
  }
  t.join();
}

// ConditionTests.test_waitfor_timeout
TEST_F(ConditionTest, WaitForTimeout) {
  Condition cond;
  int state = 0;
  std::atomic<bool> success{false};
  std::thread t([&] {
    std::scoped_lock g{cond};
    const auto t1 = std::chrono::steady_clock::now();
    bool r = cond.wait_for([&] { return state == 4; }, 100ms);
    EXPECT_GE(std::chrono::steady_clock::now() - t1, 99ms);
    EXPECT_FALSE(r);
    success = true;
  });
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(2ms);
    std::scoped_lock g{cond};
    ++state;
    cond.notify();
  }
  t.join();
  EXPECT_TRUE(success.load());
}

// wait_for returns the predicate's value, as Python.
TEST_F(ConditionTest, WaitForReturnsThePredicateValue) {
  Condition cond;
  std::scoped_lock g{cond};
  EXPECT_EQ(cond.wait_for([] { return 7; }), 7);
  EXPECT_EQ(cond.wait_for([] { return 0; }, 1ms), 0);
}

// wait() releases an RLock fully, whatever its depth, and restores the depth.
TEST_F(ConditionTest, WaitReleasesRLockFully) {
  RLock lock;
  Condition cond(lock);
  lock.acquire();
  lock.acquire();
  lock.acquire();
  std::thread t([&] {
    std::scoped_lock g{cond};  // possible only if wait released all three levels
    cond.notify();
  });
  EXPECT_TRUE(cond.wait(10s));
  EXPECT_EQ(lock._recursion_count(), 3);
  t.join();
  for (int i = 0; i < 3; ++i) lock.release();
}

// Producer/consumer through a condition: nothing lost under contention.
TEST_F(ConditionTest, ProducerConsumerStress) {
  Condition cond;
  std::vector<int> items;
  long sum = 0;
  const int per = 5000;
  std::thread consumer([&] {
    for (int got = 0; got < 2 * per; ++got) {
      std::scoped_lock g{cond};
      (void)cond.wait_for([&] { return !items.empty(); });
      sum += items.back();
      items.pop_back();
    }
  });
  Bunch producers(
      [&] {
        for (int i = 1; i <= per; ++i) {
          std::scoped_lock g{cond};
          items.push_back(i);
          cond.notify();
        }
      },
      2);
  producers.join();
  consumer.join();
  EXPECT_EQ(sum, 2L * per * (per + 1) / 2);
}

}  // namespace
}  // namespace troupe::threading
