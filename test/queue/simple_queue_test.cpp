#include "troupe/queue/simple_queue.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "troupe/errors.hpp"

#include "bunch.hpp"
#include "leak_check.hpp"

namespace troupe::queue {
namespace {

using namespace std::chrono_literals;
using troupe::testing::Bunch;
using SimpleQueueTest = troupe::testing::LeakCheck;

// BaseSimpleQueueTest.test_basic
TEST_F(SimpleQueueTest, Basic) {
  SimpleQueue<int> q;
  q.put(1);
  q.put_nowait(2);
  q.put(3, false, 1s);  // block and timeout are ignored
  EXPECT_EQ(q.qsize(), 3u);
  EXPECT_FALSE(q.empty());
  EXPECT_EQ(q.get(), 1);
  EXPECT_EQ(q.get(false), 2);
  EXPECT_EQ(q.get_nowait(), 3);
  EXPECT_TRUE(q.empty());
  EXPECT_THROW(q.get_nowait(), Empty);
  EXPECT_THROW(q.get(true, 0s), Empty);
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_THROW(q.get(true, 30ms), Empty);
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 29ms);
}

// BaseSimpleQueueTest.test_negative_timeout_raises_exception
TEST_F(SimpleQueueTest, NegativeTimeoutRaises) {
  SimpleQueue<int> q;
  q.put(1);
  EXPECT_THROW(q.get(true, -1s), ValueError);
  EXPECT_THROW(q.try_get(-1s), ValueError);
}

// BaseSimpleQueueTest.test_order
TEST_F(SimpleQueueTest, Order) {
  SimpleQueue<int> q;
  for (int i = 0; i < 1000; ++i) q.put(i);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(q.get(), i);
  for (int i = 1000; i < 1500; ++i) q.put(i);
  for (int i = 500; i < 1500; ++i) EXPECT_EQ(q.get(), i);
}

// BaseSimpleQueueTest.test_many_threads / _nonblock / _timeout: every item out exactly once,
// in each producer's order.
void many_threads(int consumer_mode) {
  SimpleQueue<int> q;
  const int producers = 3, consumers = 3, per = 20000;
  std::mutex mu;
  std::vector<int> got;
  std::atomic<int> left{producers * per};
  {
    Bunch cons(
        [&] {
          std::vector<int> mine;
          while (left.load() > 0) {
            try {
              int v;
              if (consumer_mode == 0) {
                auto got_one = q.try_get(10ms);
                if (!got_one) continue;
                v = *got_one;
              } else {
                v = consumer_mode == 1 ? q.get_nowait() : q.get(true, 5ms);
              }
              mine.push_back(v);
              left.fetch_sub(1);
            } catch (const Empty&) {
            }
          }
          std::scoped_lock g(mu);
          got.insert(got.end(), mine.begin(), mine.end());
        },
        consumers);
    std::atomic<int> next_id{0};
    Bunch prod(
        [&] {
          const int id = next_id.fetch_add(1);
          for (int i = 0; i < per; ++i) q.put(id * per + i);
        },
        producers);
  }
  ASSERT_EQ(got.size(), static_cast<size_t>(producers * per));
  std::set<int> unique(got.begin(), got.end());
  EXPECT_EQ(unique.size(), got.size());
  EXPECT_TRUE(q.empty());
}

TEST_F(SimpleQueueTest, ManyThreads) {
  many_threads(0);
}
TEST_F(SimpleQueueTest, ManyThreadsNonblock) {
  many_threads(1);
}
TEST_F(SimpleQueueTest, ManyThreadsTimeout) {
  many_threads(2);
}

TEST_F(SimpleQueueTest, PerProducerOrderIsKept) {
  SimpleQueue<std::pair<int, int>> q;
  std::thread a([&] {
    for (int i = 0; i < 10000; ++i) q.put({0, i});
  });
  std::thread b([&] {
    for (int i = 0; i < 10000; ++i) q.put({1, i});
  });
  int last[2] = {-1, -1};
  for (int n = 0; n < 20000; ++n) {
    auto [who, i] = q.get();
    EXPECT_EQ(i, last[who] + 1);
    last[who] = i;
  }
  a.join();
  b.join();
}

TEST_F(SimpleQueueTest, MoveOnly) {
  SimpleQueue<std::unique_ptr<int>> q;
  q.put(std::make_unique<int>(3));
  EXPECT_EQ(*q.get(), 3);
}

TEST_F(SimpleQueueTest, BlockedGetIsWoken) {
  SimpleQueue<int> q;
  std::thread t([&] {
    std::this_thread::sleep_for(20ms);
    q.put(42);
  });
  EXPECT_EQ(q.get(), 42);
  t.join();
}

}  // namespace
}  // namespace troupe::queue
