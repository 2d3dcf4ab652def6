#include "troupe/spin.hpp"

#include <atomic>
#include <thread>

#include "troupe/detail/futex.hpp"
#include "troupe/threading/event.hpp"

#include "leak_check.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

class SpinTest : public troupe::testing::LeakCheck {
protected:
  void TearDown() override {
    set_spin_limit(saved_);
    LeakCheck::TearDown();
  }
  std::chrono::nanoseconds saved_ = spin_limit();
};

TEST_F(SpinTest, LimitIsSettable) {
  set_spin_limit(12345ns);
  EXPECT_EQ(spin_limit(), 12345ns);
  set_spin_limit(-5ns);
  EXPECT_EQ(spin_limit(), 0ns);
}

TEST_F(SpinTest, ReadyAtOnceNeedsNoSpin) {
  detail::AdaptiveSpin s;
  EXPECT_TRUE(s.spin([] { return true; }));
}

TEST_F(SpinTest, DisabledSpinGivesUpAtOnce) {
  set_spin_limit(0ns);
  detail::AdaptiveSpin s;
  int calls = 0;
  EXPECT_FALSE(s.spin([&] { return ++calls > 1000000; }));
  EXPECT_EQ(calls, 1);
}

TEST_F(SpinTest, FailedSpinStopsWithinItsBudget) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(200us);
  detail::AdaptiveSpin s;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(s.spin([] { return false; }));
  // Generous upper bound: a 200 µs budget, on a loaded 2-core machine.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms);
}

TEST_F(SpinTest, SpinSeesAHandOffFromAnotherThread) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(std::chrono::milliseconds(200));
  std::atomic<bool> flag{false};
  detail::AdaptiveSpin s;
  std::thread t([&] { flag.store(true); });
  // Either the spin sees it, or it ran out first on a busy machine; both end with the flag set.
  (void)s.spin([&] { return flag.load(); });
  t.join();
  EXPECT_TRUE(flag.load());
}

// Takes `s`'s budget down to about 1 µs: a limit that small, a spin that fails.
void budget_down(detail::AdaptiveSpin& s) {
  set_spin_limit(2us);
  EXPECT_FALSE(s.spin([] { return false; }));
  EXPECT_LE(s.budget_ns(), 2000);
}

TEST_F(SpinTest, ASleepTheLimitCouldHaveCoveredGrowsTheBudget) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  detail::AdaptiveSpin s;
  budget_down(s);
  set_spin_limit(std::chrono::seconds(10));
  EXPECT_FALSE(s.spin([] { return false; }));  // spins its ~1 µs and gives up
  std::this_thread::sleep_for(200us);          // the sleep that followed; then the event
  s.woke();
  // The wait took 200 µs or more, nearly all of it asleep: the next spin covers it, and more.
  EXPECT_GE(s.budget_ns(), 200'000 + 200'000 / 4);
  EXPECT_LE(s.budget_ns(), 10'000'000'000);
}

TEST_F(SpinTest, ASleepLongerThanTheLimitTeachesNothing) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  detail::AdaptiveSpin s;
  budget_down(s);
  set_spin_limit(50us);
  EXPECT_FALSE(s.spin([] { return false; }));
  const auto before = s.budget_ns();
  std::this_thread::sleep_for(2ms);  // far past what any spin may take
  s.woke();
  EXPECT_EQ(s.budget_ns(), before);
}

TEST_F(SpinTest, WokeLearnsOnlyFromTheFailedSpinBeforeIt) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(std::chrono::seconds(10));
  detail::AdaptiveSpin s;
  s.woke();  // no failed spin on this thread yet: nothing to learn
  EXPECT_EQ(s.budget_ns(), 0);
  budget_down(s);
  set_spin_limit(std::chrono::seconds(10));
  EXPECT_FALSE(s.spin([] { return false; }));
  std::this_thread::sleep_for(100us);
  s.woke();
  const auto grown = s.budget_ns();
  EXPECT_GE(grown, 100'000);
  std::this_thread::sleep_for(300us);
  s.woke();  // the failed spin was used up by the first woke()
  EXPECT_EQ(s.budget_ns(), grown);
}

TEST_F(SpinTest, WaitsStillWorkWithSpinningOff) {
  set_spin_limit(0ns);
  threading::Event e;
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    e.set();
  });
  EXPECT_TRUE(e.wait(10s));
  t.join();
}

TEST_F(SpinTest, FutexWaitTimesOutAndReportsIt) {
  std::atomic<std::uint32_t> word{0};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(detail::futex_wait(word, 0, start + 20ms));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 19ms);
  // A changed value returns at once, as woken.
  EXPECT_TRUE(detail::futex_wait(word, 1, start + 10s));
  // A deadline already past is a timeout without sleeping.
  EXPECT_FALSE(detail::futex_wait(word, 0, start - 1s));
}

}  // namespace
}  // namespace troupe
