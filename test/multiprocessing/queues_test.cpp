// multiprocessing.Queue, JoinableQueue and SimpleQueue between processes, under every start
// method: what CPython's _TestQueue checks (put/get with block and timeout, qsize, empty, full,
// Full/Empty, task_done/join, many producers and consumers), plus troupe's: shutdown, typed
// values, values larger than the ring refused, no feeder thread to deadlock a join, and
// processes killed with SIGKILL in the middle of put and of get leaving the queue sound.
#include "troupe/multiprocessing/queues.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/sharedctypes.hpp"
#include "troupe/multiprocessing/synchronize.hpp"

#include "leak_check.hpp"
#include "start_methods.hpp"

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using troupe::testing::eventually;

using QueueTest = troupe::testing::StartMethodTest;
TROUPE_PER_START_METHOD(QueueTest);

using LocalTest = troupe::testing::LeakCheck;

TEST_F(LocalTest, QueueAsPython) {
  Queue<int> q(3);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
  EXPECT_EQ(q.qsize(), 0);
  EXPECT_EQ(q.maxsize(), 3);
  q.put(1);
  q.put_nowait(2);
  q.put(3, true, 10ms);
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 3);
  EXPECT_THROW(q.put_nowait(4), queue::Full);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(q.put(4, true, 30ms), queue::Full);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 25ms);
  EXPECT_THROW(q.put(4, true, -1s), queue::Full);  // negative: zero, as multiprocessing
  EXPECT_EQ(q.get(), 1);
  EXPECT_EQ(q.get_nowait(), 2);
  EXPECT_EQ(q.get(true, 10ms), 3);
  EXPECT_THROW(q.get_nowait(), queue::Empty);
  EXPECT_THROW(q.get(true, 20ms), queue::Empty);
  EXPECT_EQ(q.repr(), "<Queue(maxsize=3, size=0, buffer=1048576)>");
  q.close();
  EXPECT_THROW(q.put(1), ValueError);
  EXPECT_THROW(q.get(), ValueError);
  q.join_thread();
  q.cancel_join_thread();
  Queue<int> open;
  EXPECT_THROW(open.join_thread(), ValueError);  // only after close()
}

TEST_F(LocalTest, ValuesLargerThanTheRingAreRefusedAndTheRingWraps) {
  Queue<std::vector<std::byte>> q(0, {.buffer_size = 4096});
  EXPECT_EQ(q.buffer_size(), 4096u);
  EXPECT_THROW(q.put(std::vector<std::byte>(5000)), ValueError);
  EXPECT_THROW(Queue<int>(0, {.buffer_size = 16}), ValueError);
  // Values of odd sizes go round the ring many times, each whole.
  for (int i = 0; i < 500; ++i) {
    std::vector<std::byte> v(static_cast<std::size_t>(i * 7 % 1500), std::byte(i & 0xff));
    q.put(v);
    if (i % 2) {
      auto a = q.get();
      auto b = q.get();
      EXPECT_EQ(b, v);
      EXPECT_TRUE(a.empty() || a[0] == std::byte((i - 1) & 0xff));
    }
  }
  EXPECT_TRUE(q.empty());
  // Bytes bound it too: a full ring is Full even with no maxsize.
  EXPECT_THROW(
      {
        for (int i = 0; i < 10; ++i) q.put(std::vector<std::byte>(1000), true, 10ms);
      },
      queue::Full);
}

void produce(Queue<std::string> q, int first, int n) {
  for (int i = first; i < first + n; ++i) q.put("item " + std::to_string(i));
}
TROUPE_ENTRY(produce);

TEST_P(QueueTest, ValuesCrossInOrderAndTheProducerCanBeJoinedFirst) {
  Queue<std::string> q;
  auto p = start(&produce, q, 0, 1000);
  // No feeder thread: the producer ends as soon as its puts return, before anything is got
  // (Python's "joining processes that use queues" deadlock cannot happen).
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(q.qsize(), 1000);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(q.get(true, 20s), "item " + std::to_string(i));
  EXPECT_TRUE(q.empty());
}

void consume_sum(Queue<long> in, Queue<long> out) {
  long sum = 0;
  for (;;) {
    const long v = in.get(true, 20s);
    if (v < 0) break;
    sum += v;
  }
  out.put(sum);
}
TROUPE_ENTRY(consume_sum);

void produce_numbers(Queue<long> q, long first, long n) {
  for (long i = first; i < first + n; ++i) q.put(i);
}
TROUPE_ENTRY(produce_numbers);

TEST_P(QueueTest, ManyProducersAndConsumersThroughABoundedQueue) {
  Queue<long> q(50);  // small: producers block on it often
  Queue<long> sums;
  constexpr long kEach = 5000;
  std::vector<Process> ps;
  for (int i = 0; i < 2; ++i) ps.push_back(start(&produce_numbers, q, i * kEach, kEach));
  std::vector<Process> cs;
  for (int i = 0; i < 2; ++i) cs.push_back(start(&consume_sum, q, sums));
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  q.put(-1);
  q.put(-1);
  long total = sums.get(true, 20s) + sums.get(true, 20s);
  for (auto& c : cs) {
    c.join();
    EXPECT_EQ(c.exitcode(), 0);
  }
  EXPECT_EQ(total, (2 * kEach - 1) * 2 * kEach / 2);
  EXPECT_TRUE(q.empty());
}

void get_until_shutdown(Queue<int> q, Queue<int> report) {
  int got = 0;
  try {
    for (;;) {
      q.get(true, 20s);
      ++got;
    }
  } catch (const queue::ShutDown&) {
    report.put(got);
  } catch (const queue::Empty&) {
    report.put(-1);
  }
}
TROUPE_ENTRY(get_until_shutdown);

TEST_P(QueueTest, ShutdownWakesWaitingProcesses) {
  Queue<int> q, report;
  q.put(1);
  q.put(2);
  auto p = start(&get_until_shutdown, q, report);
  ASSERT_TRUE(eventually([&] { return q.empty(); }, 20s));
  std::this_thread::sleep_for(10ms);  // let it block on the empty queue
  q.shutdown();
  EXPECT_EQ(report.get(true, 20s), 2);  // it got both, then ShutDown instead of waiting on
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(q.is_shutdown());
  EXPECT_THROW(q.put(3), queue::ShutDown);
  EXPECT_THROW(q.get_nowait(), queue::ShutDown);
}

TEST_F(LocalTest, ShutdownImmediateEmptiesTheQueue) {
  JoinableQueue<int> q;
  for (int i = 0; i < 5; ++i) q.put(i);
  Queue<int> lazy;
  lazy.put(7);
  lazy.shutdown();
  EXPECT_EQ(lazy.get(), 7);  // not immediate: what is queued is still got
  EXPECT_THROW(lazy.get(), queue::ShutDown);
  q.shutdown(true);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.qsize(), 0);
  EXPECT_THROW(q.get(), queue::ShutDown);
  EXPECT_TRUE(q.join(1s));  // the drained items count as done
}

void work_and_mark_done(JoinableQueue<int> q, Value<int> total) {
  for (;;) {
    int v = q.get(true, 20s);
    if (v < 0) {
      q.task_done();
      break;
    }
    {
      std::scoped_lock guard{total};
      total.get_obj() += v;
    }
    q.task_done();
  }
}
TROUPE_ENTRY(work_and_mark_done);

TEST_P(QueueTest, JoinableQueueJoinWaitsForEveryTaskDone) {
  JoinableQueue<int> q;
  Value<int> total(0);
  EXPECT_THROW(q.task_done(), ValueError);
  for (int i = 1; i <= 100; ++i) q.put(i);
  EXPECT_FALSE(q.join(10ms));
  auto a = start(&work_and_mark_done, q, total);
  auto b = start(&work_and_mark_done, q, total);
  q.put(-1);
  q.put(-1);
  EXPECT_TRUE(q.join(20s));
  EXPECT_EQ(total.value(), 5050);
  a.join();
  b.join();
  EXPECT_EQ(a.exitcode(), 0);
  EXPECT_EQ(b.exitcode(), 0);
  EXPECT_THROW(q.task_done(), ValueError);
}

void take_one_and_die(JoinableQueue<int> q) {
  (void)q.get(true, 20s);
  ::kill(::getpid(), SIGKILL);  // between get() and task_done()
}
TROUPE_ENTRY(take_one_and_die);

TEST_P(QueueTest, ShutdownImmediateReleasesJoinAfterAConsumerDiedHoldingATask) {
  // The remedy doc/multiprocessing/queues.md gives for a consumer killed between get() and
  // task_done(): its task can never be done, and shutdown(true) releases join() — one already
  // waiting (here in a thread) and any later one.
  JoinableQueue<int> q;
  for (int i = 0; i < 3; ++i) q.put(i);
  auto p = start(&take_one_and_die, q);
  p.join();
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_EQ(q.get(true, 20s), 1);  // this process takes one too, and is still working on it
  EXPECT_FALSE(q.join(0s));
  bool released = false;
  std::thread waiter([&] { released = q.join(30s); });
  ASSERT_TRUE(eventually([&] { return q._shared()->join_sleepers.counted() > 0; }, 20s));
  q.shutdown(true);  // drains item 2
  waiter.join();
  EXPECT_TRUE(released);
  EXPECT_TRUE(q.join(0s));
  EXPECT_NO_THROW(q.task_done());  // a live consumer still marks its task done
  EXPECT_TRUE(q.join(0s));
}

struct Job {
  int id;
  std::string name;
  std::vector<double> xs;
};

void echo_jobs(SimpleQueue<Job> in, SimpleQueue<Job> out) {
  for (;;) {
    Job j = in.get();
    if (j.id < 0) break;
    j.name += " done";
    out.put(j);
  }
}
TROUPE_ENTRY(echo_jobs);

TEST_P(QueueTest, SimpleQueueOfRecords) {
  SimpleQueue<Job> in, out;
  auto p = start(&echo_jobs, in, out);
  for (int i = 0; i < 20; ++i) in.put(Job{i, "job" + std::to_string(i), {1.5 * i, -1.0}});
  in.put(Job{-1, "", {}});
  for (int i = 0; i < 20; ++i) {
    Job j = out.get();
    EXPECT_EQ(j.id, i);
    EXPECT_EQ(j.name, "job" + std::to_string(i) + " done");
    EXPECT_EQ(j.xs, (std::vector<double>{1.5 * i, -1.0}));
  }
  EXPECT_TRUE(out.empty());
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- processes killed with SIGKILL in the middle of put and get ------------------------------

std::vector<std::byte> block_of(std::uint32_t i, std::size_t n) {
  std::vector<std::byte> v(n, std::byte(i & 0xff));
  std::memcpy(v.data(), &i, sizeof i);
  return v;
}

bool well_formed(const std::vector<std::byte>& v) {
  if (v.size() < 4) return false;
  std::uint32_t i;
  std::memcpy(&i, v.data(), sizeof i);
  for (std::size_t k = 4; k < v.size(); ++k)
    if (v[k] != std::byte(i & 0xff)) return false;
  return true;
}

void put_forever(Queue<std::vector<std::byte>> q, Event started) {
  started.set();
  for (std::uint32_t i = 0;; ++i) q.put(block_of(i, 200'000 + i % 1000));
}
TROUPE_ENTRY(put_forever);

void get_forever(Queue<std::vector<std::byte>> q, Event started) {
  started.set();
  for (;;) q.get();
}
TROUPE_ENTRY(get_forever);

TEST_P(QueueTest, AProducerKilledInTheMiddleOfPutLeavesTheQueueSound) {
  Queue<std::vector<std::byte>> q(0, {.buffer_size = 1 << 20});
  for (int round = 0; round < 5; ++round) {
    Event started;
    auto p = start(&put_forever, q, started);
    ASSERT_TRUE(started.wait(20s));
    // Read a few while it writes, then kill it: likely in the middle of a 200 KB copy.
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(well_formed(q.get(true, 20s)));
    std::this_thread::sleep_for(std::chrono::microseconds(100 * round));
    p.kill();
    p.join();
    EXPECT_EQ(p.exitcode(), -SIGKILL);
    // Everything committed is whole; the value being written is simply not there.
    while (!q.empty()) EXPECT_TRUE(well_formed(q.get(true, 20s)));
    EXPECT_EQ(q.qsize(), 0);
    q.put(block_of(7, 1000));  // the next writer recovers the put lock
    EXPECT_EQ(q.get(true, 20s), block_of(7, 1000));
  }
}

TEST_P(QueueTest, AConsumerKilledInTheMiddleOfGetLeavesTheValueQueued) {
  Queue<std::vector<std::byte>> q(0, {.buffer_size = 4 << 20});
  for (int round = 0; round < 5; ++round) {
    for (std::uint32_t i = 0; i < 15; ++i) q.put(block_of(i, 250'000));
    Event started;
    auto p = start(&get_forever, q, started);
    ASSERT_TRUE(started.wait(20s));
    std::this_thread::sleep_for(std::chrono::microseconds(200 * round));
    p.kill();
    p.join();
    EXPECT_EQ(p.exitcode(), -SIGKILL);
    // What the consumer had not finished taking is still here, whole, and qsize agrees.
    const auto left = q.qsize();
    std::int64_t got = 0;
    while (!q.empty()) {
      EXPECT_TRUE(well_formed(q.get(true, 20s)));
      ++got;
    }
    EXPECT_EQ(got, left);
  }
}

}  // namespace
}  // namespace troupe::multiprocessing
