#include "troupe/queue/queue.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/threading/thread.hpp"

#include "bunch.hpp"
#include "leak_check.hpp"

namespace troupe::queue {
namespace {

using namespace std::chrono_literals;
using troupe::testing::Bunch;
using troupe::testing::let_others_run;

// One body over the three queue kinds, as CPython's BaseQueueTestMixin.
template <class Q>
class BaseQueueTest : public troupe::testing::LeakCheck {};
using QueueTypes = ::testing::Types<Queue<int>, LifoQueue<int>, PriorityQueue<int>>;
TYPED_TEST_SUITE(BaseQueueTest, QueueTypes);

template <class Q>
std::vector<int> expected_order();
template <>
std::vector<int> expected_order<Queue<int>>() {
  return {111, 333, 222};
}
template <>
std::vector<int> expected_order<LifoQueue<int>>() {
  return {222, 333, 111};
}
template <>
std::vector<int> expected_order<PriorityQueue<int>>() {
  return {111, 222, 333};
}

// BaseQueueTestMixin.simple_queue_test
TYPED_TEST(BaseQueueTest, SimpleQueueTest) {
  TypeParam q(3);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
  q.put(111);
  q.put(333);
  q.put(222);
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 3u);
  EXPECT_EQ(q.maxsize(), 3);
  std::vector<int> got{q.get(), q.get(), q.get()};
  EXPECT_EQ(got, expected_order<TypeParam>());
  EXPECT_THROW(q.get_nowait(), Empty);
  EXPECT_THROW(q.get(true, 10ms), Empty);
  for (int i = 0; i < 2; ++i) q.put(i);
  q.put_nowait(9);
  EXPECT_THROW(q.put_nowait(1), Full);
  EXPECT_THROW(q.put(1, true, 10ms), Full);
  EXPECT_THROW(q.put(1, false), Full);
  // A blocked put is released by a get.
  std::thread t([&] {
    troupe::testing::let_others_run();
    (void)q.get();
  });
  q.put(5);
  t.join();
  EXPECT_EQ(q.qsize(), 3u);
}

// test_queue_task_done / test_queue_join
TYPED_TEST(BaseQueueTest, TaskDoneAndJoin) {
  TypeParam q;
  EXPECT_THROW(q.task_done(), ValueError);
  std::atomic<long> cum{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 2; ++w) {
    workers.emplace_back([&] {
      for (;;) {
        int x = q.get();
        if (x < 0) {
          q.task_done();
          return;
        }
        cum += x;
        q.task_done();
      }
    });
  }
  for (int round = 0; round < 2; ++round) {
    cum = 0;
    for (int i = 0; i < 100; ++i) q.put(i);
    q.join();
    EXPECT_EQ(cum.load(), 4950);
  }
  q.put(-1);
  q.put(-1);
  q.join();
  for (auto& t : workers) t.join();
  try {
    q.task_done();
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "task_done() called too many times");
  }
}

// test_negative_timeout_raises_exception
TYPED_TEST(BaseQueueTest, NegativeTimeoutRaises) {
  TypeParam q(2);
  EXPECT_THROW(q.put(1, true, -1s), ValueError);
  EXPECT_THROW(q.get(true, -1s), ValueError);
  TypeParam unbounded;
  EXPECT_NO_THROW(unbounded.put(1, true, -1s));  // CPython checks only on bounded queues
}

// test_nowait
TYPED_TEST(BaseQueueTest, NoWait) {
  TypeParam q(4);
  for (int i = 0; i < 4; ++i) q.put_nowait(1);
  EXPECT_THROW(q.put_nowait(1), Full);
  for (int i = 0; i < 4; ++i) (void)q.get_nowait();
  EXPECT_THROW(q.get_nowait(), Empty);
}

// test_shutdown_empty / test_shutdown_nonempty / test_shutdown_immediate (3.13)
TYPED_TEST(BaseQueueTest, ShutdownRules) {
  {
    TypeParam q;
    q.shutdown();
    EXPECT_TRUE(q.is_shutdown());
    EXPECT_THROW(q.put(1), ShutDown);
    EXPECT_THROW(q.get(), ShutDown);
    EXPECT_THROW(q.get_nowait(), ShutDown);
  }
  {
    TypeParam q;
    q.put(1);
    q.shutdown();
    EXPECT_EQ(q.get(), 1);  // drains first
    EXPECT_THROW(q.get(), ShutDown);
  }
  {
    TypeParam q;
    q.put(1);
    q.put(2);
    q.shutdown(true);
    EXPECT_THROW(q.get(), ShutDown);
    EXPECT_EQ(q.qsize(), 0u);
    EXPECT_EQ(q.unfinished_tasks(), 0u);
    q.join();  // released by the immediate shutdown
  }
}

// test_shutdown_allowed_transitions: once shut down, stays shut down; immediate after plain.
TYPED_TEST(BaseQueueTest, ShutdownTransitions) {
  TypeParam q;
  EXPECT_FALSE(q.is_shutdown());
  q.shutdown();
  EXPECT_TRUE(q.is_shutdown());
  q.shutdown(true);
  EXPECT_TRUE(q.is_shutdown());
  q.shutdown(false);
  EXPECT_TRUE(q.is_shutdown());
}

// test_shutdown_pending_get / _shutdown_get: blocked getters and putters are released.
TYPED_TEST(BaseQueueTest, ShutdownReleasesBlockedCallers) {
  TypeParam q(1);
  q.put(1);
  std::atomic<int> shut_put{0}, shut_get{0};
  TypeParam empty;
  {
    Bunch putters(
        [&] {
          try {
            q.put(2);
          } catch (const ShutDown&) {
            shut_put.fetch_add(1);
          }
        },
        2);
    Bunch getters(
        [&] {
          try {
            (void)empty.get();
          } catch (const ShutDown&) {
            shut_get.fetch_add(1);
          }
        },
        2);
    putters.wait_for_started(2);
    getters.wait_for_started(2);
    let_others_run();
    q.shutdown();
    empty.shutdown();
  }
  EXPECT_EQ(shut_put.load(), 2);
  EXPECT_EQ(shut_get.load(), 2);
  EXPECT_EQ(q.get(), 1);
}

// test_shutdown_immediate_put_join: join() is released by shutdown(immediate=True).
TYPED_TEST(BaseQueueTest, ImmediateShutdownReleasesJoin) {
  TypeParam q;
  q.put(1);
  q.put(2);
  std::atomic<bool> joined{false};
  std::thread j([&] {
    q.join();
    joined = true;
  });
  let_others_run();
  EXPECT_FALSE(joined.load());
  q.shutdown(true);
  j.join();
  EXPECT_TRUE(joined.load());
}

// test_shutdown_put_join: a plain shutdown leaves join() waiting for the remaining items.
TYPED_TEST(BaseQueueTest, PlainShutdownJoinWaitsForTasks) {
  TypeParam q;
  q.put(1);
  q.shutdown();
  std::atomic<bool> joined{false};
  std::thread j([&] {
    q.join();
    joined = true;
  });
  let_others_run();
  EXPECT_FALSE(joined.load());
  (void)q.get();
  q.task_done();
  j.join();
  EXPECT_TRUE(joined.load());
}

TYPED_TEST(BaseQueueTest, TryGetAndTryPut) {
  TypeParam q(1);
  EXPECT_FALSE(q.try_get(0s).has_value());
  int v = 4;
  EXPECT_TRUE(q.try_put(std::move(v), 0s));
  int w = 5;
  EXPECT_FALSE(q.try_put(std::move(w), 5ms));
  EXPECT_EQ(q.try_get(), 4);
  q.put(8);
  q.shutdown();
  EXPECT_EQ(q.try_get(), 8);
  EXPECT_FALSE(q.try_get().has_value()) << "shut down and empty: nullopt, not a hang";
}

// Many producers and consumers, nothing lost or duplicated.
TYPED_TEST(BaseQueueTest, ManyThreads) {
  TypeParam q(16);
  const int per = 5000;
  std::atomic<long> sum{0};
  std::atomic<int> count{0};
  {
    Bunch consumers(
        [&] {
          while (auto v = q.try_get()) {
            sum += *v;
            count.fetch_add(1);
          }
        },
        3);
    {
      Bunch producers(
          [&] {
            for (int i = 1; i <= per; ++i) q.put(i);
          },
          3);
    }
    q.shutdown();
  }
  EXPECT_EQ(count.load(), 3 * per);
  EXPECT_EQ(sum.load(), 3L * per * (per + 1) / 2);
}

using QueueTest = troupe::testing::LeakCheck;

TEST_F(QueueTest, MoveOnlyItems) {
  Queue<std::unique_ptr<int>> q;
  q.put(std::make_unique<int>(5));
  auto p = q.get();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, 5);
  PriorityQueue<std::unique_ptr<int>,
                std::function<bool(const std::unique_ptr<int>&, const std::unique_ptr<int>&)>>
      pq;
  (void)pq;
  LifoQueue<std::unique_ptr<std::string>> lq;
  lq.put(std::make_unique<std::string>("a"));
  EXPECT_EQ(*lq.get_nowait(), "a");
}

// Python's docs: PriorityQueue entries as (priority, data) tuples; smallest first.
TEST_F(QueueTest, PriorityTuplesAndCustomCompare) {
  PriorityQueue<std::tuple<int, std::string>> q;
  q.put({3, "c"});
  q.put({1, "a"});
  q.put({2, "b"});
  EXPECT_EQ(std::get<1>(q.get()), "a");
  EXPECT_EQ(std::get<1>(q.get()), "b");
  EXPECT_EQ(std::get<1>(q.get()), "c");
  PriorityQueue<int, std::greater<int>> maxq;  // largest first with the inverse order
  maxq.put(1);
  maxq.put(3);
  maxq.put(2);
  EXPECT_EQ(maxq.get(), 3);
}

// test_shrinking_queue: maxsize 0 or negative is unbounded.
TEST_F(QueueTest, UnboundedWhenMaxsizeNotPositive) {
  Queue<int> q(0), n(-5);
  for (int i = 0; i < 1000; ++i) {
    q.put_nowait(i);
    n.put_nowait(i);
  }
  EXPECT_FALSE(q.full());
  EXPECT_FALSE(n.full());
}

// A timed get that times out waits at least the timeout (early side only).
TEST_F(QueueTest, TimedGetWaits) {
  Queue<int> q;
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_THROW(q.get(true, 50ms), Empty);
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 49ms);
}

// The chapter's worker example: daemon workers, task_done, join.
TEST_F(QueueTest, WorkerExampleFromTheDocs) {
  Queue<int> q;
  std::atomic<int> done{0};
  threading::Thread worker({.daemon = false}, [&] {
    while (auto item = q.try_get()) {
      done.fetch_add(1);
      q.task_done();
    }
  });
  worker.start();
  for (int i = 0; i < 30; ++i) q.put(i);
  q.join();
  EXPECT_EQ(done.load(), 30);
  q.shutdown();
  worker.join();
}

}  // namespace
}  // namespace troupe::queue
