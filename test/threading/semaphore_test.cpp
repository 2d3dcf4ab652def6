#include "troupe/threading/semaphore.hpp"

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
using SemaphoreTest = troupe::testing::LeakCheck;

// BaseSemaphoreTests.test_constructor
TEST_F(SemaphoreTest, Constructor) {
  EXPECT_THROW(Semaphore(-1), ValueError);
  EXPECT_THROW(BoundedSemaphore(-1), ValueError);
  Semaphore s(1);
  Semaphore s0(0);
  EXPECT_EQ(s0._value(), 0);
  Semaphore d;  // test_default_value
  EXPECT_EQ(d._value(), 1);
}

// BaseSemaphoreTests.test_acquire
TEST_F(SemaphoreTest, Acquire) {
  Semaphore sem(1);
  sem.acquire();
  sem.release();
  Semaphore sem2(2);
  sem2.acquire();
  sem2.acquire();
  sem2.release();
  sem2.release();
}

// BaseSemaphoreTests.test_acquire_contended
TEST_F(SemaphoreTest, AcquireContended) {
  Semaphore sem(7);
  sem.acquire();
  std::mutex mu;
  std::vector<int> results1, results2;
  int phase_num = 0;
  {
    Bunch b(
        [&] {
          sem.acquire();
          {
            std::scoped_lock g(mu);
            results1.push_back(phase_num);
          }
          sem.acquire();
          std::scoped_lock g(mu);
          results2.push_back(phase_num);
        },
        10);
    troupe::testing::eventually([&] {
      std::scoped_lock g(mu);
      return results1.size() + results2.size() >= 6;
    });
    let_others_run();
    {
      std::scoped_lock g(mu);
      EXPECT_EQ(results1.size() + results2.size(), 6u);
      phase_num = 1;
    }
    for (int i = 0; i < 7; ++i) sem.release();
    troupe::testing::eventually([&] {
      std::scoped_lock g(mu);
      return results1.size() + results2.size() >= 13;
    });
    let_others_run();
    {
      std::scoped_lock g(mu);
      EXPECT_EQ(results1.size() + results2.size(), 13u);
      phase_num = 2;
    }
    for (int i = 0; i < 6; ++i) sem.release();
    troupe::testing::eventually([&] {
      std::scoped_lock g(mu);
      return results1.size() + results2.size() >= 19;
    });
    EXPECT_FALSE(sem.acquire(false));
    for (int i = 0; i < 10; ++i) sem.release();  // let the rest finish
  }
  EXPECT_EQ(results1.size() + results2.size(), 20u);
}

// BaseSemaphoreTests.test_multirelease
TEST_F(SemaphoreTest, MultiRelease) {
  Semaphore sem(7);
  sem.acquire();
  std::atomic<int> taken{0};
  {
    Bunch b(
        [&] {
          sem.acquire();
          taken.fetch_add(1);
          sem.acquire();
          taken.fetch_add(1);
        },
        10);
    troupe::testing::eventually([&] { return taken.load() >= 6; });
    let_others_run();
    EXPECT_EQ(taken.load(), 6);
    sem.release(7);
    troupe::testing::eventually([&] { return taken.load() >= 13; });
    let_others_run();
    EXPECT_EQ(taken.load(), 13);
    sem.release(7);
  }
  EXPECT_EQ(taken.load(), 20);
  EXPECT_THROW(sem.release(0), ValueError);
  EXPECT_THROW(sem.release(-1), ValueError);
}

// BaseSemaphoreTests.test_try_acquire / test_try_acquire_contended
TEST_F(SemaphoreTest, TryAcquire) {
  Semaphore sem(2);
  EXPECT_TRUE(sem.acquire(false));
  EXPECT_TRUE(sem.acquire(false));
  EXPECT_FALSE(sem.acquire(false));
  sem.release();
  EXPECT_TRUE(sem.acquire(false));
  std::atomic<int> got{0};
  {
    Bunch b([&] { got += sem.acquire(false) ? 1 : 0; }, 5);
  }
  EXPECT_EQ(got.load(), 0);
}

// BaseSemaphoreTests.test_acquire_timeout and CPython's negative-timeout rule.
TEST_F(SemaphoreTest, AcquireTimeout) {
  Semaphore sem(2);
  EXPECT_THROW(sem.acquire(false, 1s), ValueError);
  EXPECT_TRUE(sem.acquire(true, 5ms));
  EXPECT_TRUE(sem.acquire(true, 5ms));
  EXPECT_FALSE(sem.acquire(true, 5ms));
  EXPECT_FALSE(sem.acquire(true, -1s));  // returns False at once in CPython
  sem.release();
  EXPECT_TRUE(sem.acquire(true, -1s));  // …but takes an available unit
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE(sem.acquire(true, 50ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 49ms);
}

// BaseSemaphoreTests.test_with
TEST_F(SemaphoreTest, ScopedLockIsWith) {
  Semaphore sem(2);
  {
    std::scoped_lock g{sem};
    EXPECT_TRUE(sem.acquire(false));
    sem.release();
    {
      std::scoped_lock g2{sem};
      EXPECT_FALSE(sem.acquire(false));
    }
  }
  EXPECT_EQ(sem._value(), 2);
}

// BoundedSemaphoreTests.test_release_unacquired
TEST_F(SemaphoreTest, BoundedReleaseTooMany) {
  BoundedSemaphore sem(1);
  try {
    sem.release();
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "Semaphore released too many times");
  }
  sem.acquire();
  sem.release();
  EXPECT_THROW(sem.release(), ValueError);
  BoundedSemaphore sem3(3);
  sem3.acquire();
  sem3.acquire();
  EXPECT_THROW(sem3.release(3), ValueError);
  EXPECT_EQ(sem3._value(), 1) << "a refused release releases nothing";
  sem3.release(2);
  EXPECT_EQ(sem3._value(), 3);
}

// Semaphore as a connection limit (the chapter's BoundedSemaphore example): never above N.
TEST_F(SemaphoreTest, NeverMoreThanNInside) {
  BoundedSemaphore sem(3);
  std::atomic<int> inside{0}, most{0};
  {
    Bunch b(
        [&] {
          for (int i = 0; i < 300; ++i) {
            std::scoped_lock g{sem};
            int now = inside.fetch_add(1) + 1;
            int m = most.load();
            while (now > m && !most.compare_exchange_weak(m, now)) {
            }
            inside.fetch_sub(1);
          }
        },
        6);
  }
  EXPECT_LE(most.load(), 3);
  EXPECT_EQ(sem._value(), 3);
}

}  // namespace
}  // namespace troupe::threading
