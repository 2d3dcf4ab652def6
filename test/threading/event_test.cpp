#include "troupe/threading/event.hpp"

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "bunch.hpp"
#include "leak_check.hpp"

namespace troupe::threading {
namespace {

using namespace std::chrono_literals;
using troupe::testing::Bunch;
using troupe::testing::let_others_run;
using EventTest = troupe::testing::LeakCheck;

// EventTests.test_is_set
TEST_F(EventTest, IsSet) {
  Event evt;
  EXPECT_FALSE(evt.is_set());
  evt.set();
  EXPECT_TRUE(evt.is_set());
  evt.set();
  EXPECT_TRUE(evt.is_set());
  evt.clear();
  EXPECT_FALSE(evt.is_set());
  evt.clear();
  EXPECT_FALSE(evt.is_set());
}

// EventTests._check_notify / test_notify
TEST_F(EventTest, SetWakesEveryWaiter) {
  for (int round = 0; round < 2; ++round) {
    Event evt;
    if (round == 1) {
      evt.set();
      evt.clear();
    }
    std::atomic<int> r1{0}, r2{0};
    {
      Bunch b(
          [&] {
            r1 += evt.wait() ? 1 : 0;
            r2 += evt.wait() ? 1 : 0;
          },
          5);
      b.wait_for_started(5);
      let_others_run();
      EXPECT_EQ(r1.load(), 0);
      evt.set();
    }
    EXPECT_EQ(r1.load(), 5);
    EXPECT_EQ(r2.load(), 5);
  }
}

// EventTests.test_timeout
TEST_F(EventTest, WaitTimesOut) {
  Event evt;
  std::mutex mu;
  std::vector<bool> results1;
  {
    Bunch b(
        [&] {
          bool r = evt.wait(0s);
          const auto t1 = std::chrono::steady_clock::now();
          bool r2 = evt.wait(50ms);
          EXPECT_GE(std::chrono::steady_clock::now() - t1, 49ms);
          std::scoped_lock g(mu);
          results1.push_back(r);
          results1.push_back(r2);
        },
        5);
  }
  for (bool r : results1) EXPECT_FALSE(r);
  evt.set();
  EXPECT_TRUE(evt.wait(0s));
  EXPECT_TRUE(evt.wait(-1s));  // a set flag is reported whatever the timeout
  evt.clear();
  EXPECT_FALSE(evt.wait(-1s));  // CPython: Event.wait(-1) returns False at once
}

// EventTests.test_set_and_clear: a set() then clear() still releases the waiters, with True.
TEST_F(EventTest, SetThenClearReleasesWaiters) {
  Event evt;
  std::atomic<int> results{0};
  {
    Bunch b([&] { results += evt.wait(10s) ? 1 : 0; }, 5);
    b.wait_for_started(5);
    let_others_run();
    evt.set();
    evt.clear();
  }
  EXPECT_EQ(results.load(), 5);
}

// A thousand hand-offs through two events: nothing lost (ping-pong).
TEST_F(EventTest, PingPong) {
  Event ping, pong;
  const int n = 1000;
  std::thread t([&] {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(ping.wait(10s));
      ping.clear();
      pong.set();
    }
  });
  for (int i = 0; i < n; ++i) {
    ping.set();
    ASSERT_TRUE(pong.wait(10s));
    pong.clear();
  }
  t.join();
}

}  // namespace
}  // namespace troupe::threading
