#include "troupe/threading/lock.hpp"

#include <atomic>
#include <mutex>
#include <thread>

#include "troupe/errors.hpp"

#include "bunch.hpp"
#include "leak_check.hpp"

namespace troupe::threading {
namespace {

using namespace std::chrono_literals;
using troupe::testing::Bunch;
using troupe::testing::let_others_run;

// One body over both lock types, as CPython's lock_tests.BaseLockTests.
template <class L>
class BaseLockTest : public troupe::testing::LeakCheck {};
using LockTypes = ::testing::Types<Lock, RLock>;
TYPED_TEST_SUITE(BaseLockTest, LockTypes);

// BaseLockTests.test_acquire_release
TYPED_TEST(BaseLockTest, AcquireRelease) {
  TypeParam lock;
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.locked());
  lock.release();
  EXPECT_FALSE(lock.locked());
}

// BaseLockTests.test_try_acquire
TYPED_TEST(BaseLockTest, TryAcquire) {
  TypeParam lock;
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
}

// BaseLockTests.test_try_acquire_contended
TYPED_TEST(BaseLockTest, TryAcquireContended) {
  TypeParam lock;
  lock.acquire();
  bool got = true;
  std::thread([&] { got = lock.acquire(false); }).join();
  EXPECT_FALSE(got);
  lock.release();
}

// BaseLockTests.test_acquire_contended
TYPED_TEST(BaseLockTest, AcquireContended) {
  TypeParam lock;
  lock.acquire();
  const int n = 5;
  {
    Bunch b(
        [&] {
          lock.acquire();
          lock.release();
        },
        n);
    b.wait_for_started(n);
    let_others_run();
    EXPECT_EQ(b.finished(), 0);
    lock.release();
    b.join();
    EXPECT_EQ(b.finished(), n);
  }
}

// BaseLockTests.test_with
TYPED_TEST(BaseLockTest, ScopedLockIsWith) {
  TypeParam lock;
  {
    std::scoped_lock g{lock};
    EXPECT_TRUE(lock.locked());
  }
  EXPECT_FALSE(lock.locked());
  try {
    std::scoped_lock g{lock};
    throw ValueError("inside with");
  } catch (const ValueError&) {
  }
  EXPECT_FALSE(lock.locked());
}

// BaseLockTests.test_timeout
TYPED_TEST(BaseLockTest, TimeoutRules) {
  TypeParam lock;
  // CPython: acquire(False, 1) → ValueError; acquire(timeout=-100) → ValueError;
  // a timeout above TIMEOUT_MAX → OverflowError in CPython, forever here.
  EXPECT_THROW(lock.acquire(false, 1s), ValueError);
  EXPECT_THROW(lock.acquire(true, -100s), ValueError);
  EXPECT_THROW(lock.acquire(true, -2s), ValueError);
  EXPECT_FALSE(lock.locked()) << "a rejected call must not take the lock";
  // -1 means "no timeout", with or without blocking.
  EXPECT_TRUE(lock.acquire(true, -1s));
  lock.release();
  EXPECT_TRUE(lock.acquire(false, -1s));
  lock.release();
  EXPECT_TRUE(lock.acquire(true, 0s));
  lock.release();
  lock.acquire();
  std::chrono::steady_clock::duration elapsed{};
  bool got = true;
  std::thread([&] {
    const auto t1 = std::chrono::steady_clock::now();
    got = lock.acquire(true, 50ms);
    elapsed = std::chrono::steady_clock::now() - t1;
  }).join();
  EXPECT_FALSE(got);
  EXPECT_GE(elapsed, 49ms);  // early side only; the late side is left to the machine
  lock.release();
}

// Lockable / TimedLockable
TYPED_TEST(BaseLockTest, TryLockForAndUntil) {
  TypeParam lock;
  lock.lock();
  bool a = true, b = true;
  std::thread([&] {
    a = lock.try_lock_for(10ms);
    b = lock.try_lock_until(std::chrono::system_clock::now() + 10ms);
  }).join();
  EXPECT_FALSE(a);
  EXPECT_FALSE(b);
  lock.unlock();
  EXPECT_TRUE(lock.try_lock_for(-5ms));
  lock.unlock();
}

// BaseLockTests.test_thread_leak: many threads taking the lock leave none behind.
TYPED_TEST(BaseLockTest, ManyContendersCountCorrectly) {
  TypeParam lock;
  long counter = 0;
  {
    Bunch b(
        [&] {
          for (int i = 0; i < 20000; ++i) {
            std::scoped_lock g{lock};
            ++counter;
          }
        },
        4);
  }
  EXPECT_EQ(counter, 80000);
}

using LockTest = troupe::testing::LeakCheck;

// LockTests.test_reacquire: a Lock is not re-entrant; another thread may release it.
TEST_F(LockTest, ReleaseFromAnotherThread) {
  Lock lock;
  lock.acquire();
  std::atomic<bool> second{false};
  std::thread t([&] {
    lock.acquire();
    second = true;
  });
  let_others_run();
  EXPECT_FALSE(second.load());
  std::thread([&] { lock.release(); }).join();  // LockTests.test_different_thread
  t.join();
  EXPECT_TRUE(second.load());
  EXPECT_TRUE(lock.locked());
  lock.release();
}

TEST_F(LockTest, ReleaseUnlockedRaises) {
  Lock lock;
  try {
    lock.release();
    FAIL();
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "release unlocked lock");
  }
}

// LockTests.test_state_after_timeout
TEST_F(LockTest, StateAfterTimeout) {
  Lock lock;
  lock.acquire();
  EXPECT_FALSE(lock.acquire(true, 10ms));
  lock.release();
  EXPECT_FALSE(lock.locked());
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
}

// A timed-out sleeper must not lose the wake-up of the others.
TEST_F(LockTest, TimedOutWaiterDoesNotStrandOthers) {
  Lock lock;
  lock.acquire();
  std::atomic<bool> got{false};
  std::thread patient([&] {
    lock.acquire();
    got = true;
    lock.release();
  });
  std::thread impatient([&] { EXPECT_FALSE(lock.acquire(true, 20ms)); });
  impatient.join();
  let_others_run();
  lock.release();
  patient.join();
  EXPECT_TRUE(got.load());
}

using RLockTest = troupe::testing::LeakCheck;

// RLockTests.test_reacquire
TEST_F(RLockTest, Reacquire) {
  RLock lock;
  lock.acquire();
  lock.acquire();
  lock.release();
  lock.acquire();
  lock.release();
  lock.release();
  EXPECT_FALSE(lock.locked());
}

// RLockTests.test_release_unacquired / test_release_save_unacquired
TEST_F(RLockTest, ReleaseUnacquiredRaises) {
  RLock lock;
  EXPECT_THROW(lock.release(), RuntimeError);
  EXPECT_THROW((void)lock._release_save(), RuntimeError);
  lock.acquire();
  lock.acquire();
  lock.release();
  lock.acquire();
  lock.release();
  lock.release();
  EXPECT_THROW(lock.release(), RuntimeError);
  EXPECT_THROW((void)lock._release_save(), RuntimeError);
}

// RLockTests.test_different_thread
TEST_F(RLockTest, OtherThreadCannotRelease) {
  RLock lock;
  std::atomic<bool> holding{false}, done{false};
  std::thread t([&] {
    lock.acquire();
    holding = true;
    troupe::testing::eventually([&] { return done.load(); });
    lock.release();
  });
  ASSERT_TRUE(troupe::testing::eventually([&] { return holding.load(); }));
  try {
    lock.release();
    ADD_FAILURE() << "released another thread's RLock";
  } catch (const RuntimeError& e) {
    EXPECT_STREQ(e.what(), "cannot release un-acquired lock");
  }
  done = true;
  t.join();
}

// RLockTests.test__is_owned
TEST_F(RLockTest, IsOwned) {
  RLock lock;
  EXPECT_FALSE(lock._is_owned());
  lock.acquire();
  EXPECT_TRUE(lock._is_owned());
  lock.acquire();
  EXPECT_TRUE(lock._is_owned());
  bool other = true;
  std::thread([&] { other = lock._is_owned(); }).join();
  EXPECT_FALSE(other);
  EXPECT_TRUE(lock.locked());  // 3.14 RLock.locked(): held by anyone
  lock.release();
  EXPECT_TRUE(lock._is_owned());
  lock.release();
  EXPECT_FALSE(lock._is_owned());
}

TEST_F(RLockTest, ReleaseSaveAndRestore) {
  RLock lock;
  lock.acquire();
  lock.acquire();
  lock.acquire();
  EXPECT_EQ(lock._recursion_count(), 3);
  const int saved = lock._release_save();
  EXPECT_EQ(saved, 3);
  EXPECT_FALSE(lock.locked());
  bool other = false;
  std::thread([&] {
    other = lock.acquire(false);
    lock.release();
  }).join();
  EXPECT_TRUE(other);
  lock._acquire_restore(saved);
  EXPECT_EQ(lock._recursion_count(), 3);
  for (int i = 0; i < 3; ++i) lock.release();
  EXPECT_FALSE(lock.locked());
}

}  // namespace
}  // namespace troupe::threading
