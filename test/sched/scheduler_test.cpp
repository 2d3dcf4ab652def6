#include "troupe/sched/scheduler.hpp"

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/queue/queue.hpp"

#include "leak_check.hpp"

namespace troupe::sched {
namespace {

using namespace std::chrono_literals;
using SchedTest = troupe::testing::LeakCheck;

// CPython test_sched's fake clock: time moves only when the scheduler sleeps.
struct VirtualTime {
  clock::time_point now{};
  std::vector<clock::duration> sleeps;
  scheduler make() {
    return scheduler([this] { return now; },
                     [this](clock::duration d) {
                       sleeps.push_back(d);
                       now += d;
                     });
  }
};

clock::time_point at(int ms) {
  return clock::time_point{} + std::chrono::milliseconds(ms);
}

// test_enter
TEST_F(SchedTest, Enter) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<int> l;
  for (int x : {50, 40, 30, 20, 10})
    s.enter(std::chrono::milliseconds(x), 1, [&l, x] { l.push_back(x); });
  s.run();
  EXPECT_EQ(l, (std::vector<int>{10, 20, 30, 40, 50}));
  EXPECT_EQ(vt.now, at(50));
}

// test_enterabs
TEST_F(SchedTest, EnterAbs) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<int> l;
  for (int x : {5, 4, 3, 2, 1})
    s.enterabs(
        at(x), 1, [&l](int v) { l.push_back(v); }, x);
  s.run();
  EXPECT_EQ(l, (std::vector<int>{1, 2, 3, 4, 5}));
}

// test_priority: same time, lower priority value first; then entry order.
TEST_F(SchedTest, Priority) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<int> l;
  for (int p : {3, 5, 1, 4, 2}) s.enterabs(at(1), p, [&l, p] { l.push_back(p); });
  s.enterabs(at(1), 1, [&l] { l.push_back(100); });  // same priority as 1, entered later
  s.run();
  EXPECT_EQ(l, (std::vector<int>{1, 100, 2, 3, 4, 5}));
}

// test_cancel
TEST_F(SchedTest, Cancel) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<int> l;
  auto add = [&l](int v) { l.push_back(v); };
  auto e5 = s.enterabs(at(10), 1, add, 10);
  auto e1 = s.enterabs(at(1), 1, add, 1);
  auto e2 = s.enterabs(at(2), 1, add, 2);
  auto e4 = s.enterabs(at(4), 1, add, 4);
  auto e3 = s.enterabs(at(3), 1, add, 3);
  s.cancel(e1);
  s.cancel(e5);
  s.run();
  EXPECT_EQ(l, (std::vector<int>{2, 3, 4}));
  EXPECT_THROW(s.cancel(e1), ValueError);  // not in the queue
  (void)e2;
  (void)e3;
  (void)e4;
}

// test_empty
TEST_F(SchedTest, Empty) {
  VirtualTime vt;
  auto s = vt.make();
  EXPECT_TRUE(s.empty());
  for (int x : {5, 4, 3}) s.enterabs(at(x), 1, [] {});
  EXPECT_FALSE(s.empty());
  s.run();
  EXPECT_TRUE(s.empty());
}

// test_queue: sorted, with time/priority/sequence.
TEST_F(SchedTest, QueueIsSorted) {
  VirtualTime vt;
  auto s = vt.make();
  auto e5 = s.enterabs(at(5), 1, [] {});
  auto e1 = s.enterabs(at(1), 1, [] {});
  auto e2 = s.enterabs(at(2), 1, [] {});
  auto e4 = s.enterabs(at(4), 1, [] {});
  auto e3 = s.enterabs(at(3), 1, [] {});
  auto q = s.queue();
  ASSERT_EQ(q.size(), 5u);
  EXPECT_EQ(q[0], e1);
  EXPECT_EQ(q[1], e2);
  EXPECT_EQ(q[2], e3);
  EXPECT_EQ(q[3], e4);
  EXPECT_EQ(q[4], e5);
  EXPECT_EQ(q[0].time, at(1));
  EXPECT_EQ(q[0].priority, 1);
  EXPECT_EQ(e5.sequence, 0u);
  EXPECT_EQ(e3.sequence, 4u);
}

// test_args_kwargs: arguments are bound into the action.
TEST_F(SchedTest, Arguments) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<std::string> seq;
  s.enter(
      1ms, 1, [&](std::string a, int b) { seq.push_back(a + std::to_string(b)); }, std::string("x"),
      1);
  s.enter(1ms, 1, [&] { seq.push_back("none"); });
  s.run();
  EXPECT_EQ(seq, (std::vector<std::string>{"x1", "none"}));
}

// test_run_non_blocking: runs what is due, returns the time to the next event.
TEST_F(SchedTest, RunNonBlocking) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<int> l;
  for (int x : {10, 9, 8, 7, 6})
    s.enter(std::chrono::milliseconds(x), 1, [&l, x] { l.push_back(x); });
  auto r = s.run(false);
  EXPECT_TRUE(l.empty());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, 6ms);
  vt.now = at(8);
  r = s.run(false);
  EXPECT_EQ(l, (std::vector<int>{6, 7, 8}));
  EXPECT_EQ(*r, 1ms);
  vt.now = at(100);
  EXPECT_FALSE(s.run(false).has_value());
  EXPECT_EQ(l.size(), 5u);
}

// Python calls delayfunc(0) after each action.
TEST_F(SchedTest, DelayZeroAfterEachAction) {
  VirtualTime vt;
  auto s = vt.make();
  s.enterabs(at(0), 1, [] {});
  s.enterabs(at(0), 1, [] {});
  s.run();
  EXPECT_EQ(vt.sleeps, (std::vector<clock::duration>{0ms, 0ms}));
}

// An exception from an action propagates; the rest stay queued (as Python).
TEST_F(SchedTest, ActionExceptionPropagates) {
  VirtualTime vt;
  auto s = vt.make();
  std::vector<int> l;
  s.enterabs(at(1), 1, [] { throw std::runtime_error("action failed"); });
  s.enterabs(at(2), 1, [&] { l.push_back(2); });
  EXPECT_THROW(s.run(), std::runtime_error);
  EXPECT_FALSE(s.empty());
  s.run();
  EXPECT_EQ(l, (std::vector<int>{2}));
}

// test_enter_concurrent: events entered from another thread while run() sleeps, on real time.
// The default delay wakes when an earlier event arrives (Python's time.sleep would not).
TEST_F(SchedTest, EnterFromAnotherThreadWhileRunning) {
  scheduler s;
  queue::Queue<int> order;
  s.enter(10s, 1, [&] { order.put(10); });  // far away: run() sleeps on it
  std::thread t([&] { s.run(); });
  std::this_thread::sleep_for(20ms);
  const auto t1 = clock::now();
  s.enter(5ms, 1, [&] { order.put(1); });
  EXPECT_EQ(order.get(true, 5s), 1);
  EXPECT_LT(clock::now() - t1, 5s) << "run() did not wake for the earlier event";
  // test_cancel_concurrent: cancel the far event from here; run() then ends.
  auto q = s.queue();
  ASSERT_EQ(q.size(), 1u);
  s.cancel(q[0]);
  t.join();
  EXPECT_TRUE(s.empty());
}

// Real time: events run no earlier than their time.
TEST_F(SchedTest, RealTimeNotEarly) {
  scheduler s;
  const auto t1 = clock::now();
  clock::time_point ran{};
  s.enter(30ms, 1, [&] { ran = clock::now(); });
  s.run();
  EXPECT_GE(ran - t1, 29ms);
}

}  // namespace
}  // namespace troupe::sched
