#include "troupe/spin.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

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

// The learning tests pass a view of the CPUs of their own that never turns busy: the process's
// view does when a spin (of this test or an earlier one) loses its CPU on a loaded machine.
constexpr std::int64_t kNeverAway = std::numeric_limits<std::int64_t>::max();

// Takes `s`'s budget down to about 1 µs: a limit that small, a spin that fails.
void budget_down(detail::AdaptiveSpin& s) {
  set_spin_limit(2us);
  detail::Contention quiet{kNeverAway};
  EXPECT_FALSE(s.spin([] { return false; }, quiet));
  EXPECT_LE(s.budget_ns(), 2000);
}

TEST_F(SpinTest, ASleepTheLimitCouldHaveCoveredGrowsTheBudget) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  detail::AdaptiveSpin s;
  detail::Contention quiet{kNeverAway};
  budget_down(s);
  set_spin_limit(std::chrono::seconds(10));
  EXPECT_FALSE(s.spin([] { return false; }, quiet));  // spins its ~1 µs and gives up
  std::this_thread::sleep_for(200us);                 // the sleep that followed; then the event
  s.woke(quiet);
  // The wait took 200 µs or more, nearly all of it asleep: the next spin covers it, and more.
  EXPECT_GE(s.budget_ns(), 200'000 + 200'000 / 4);
  EXPECT_LE(s.budget_ns(), 10'000'000'000);
}

TEST_F(SpinTest, ASleepLongerThanTheLimitTeachesNothing) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  detail::AdaptiveSpin s;
  detail::Contention quiet{kNeverAway};
  budget_down(s);
  set_spin_limit(50us);
  EXPECT_FALSE(s.spin([] { return false; }, quiet));
  const auto before = s.budget_ns();
  std::this_thread::sleep_for(2ms);  // far past what any spin may take
  s.woke(quiet);
  EXPECT_EQ(s.budget_ns(), before);
}

TEST_F(SpinTest, WokeLearnsOnlyFromTheFailedSpinBeforeIt) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(std::chrono::seconds(10));
  detail::AdaptiveSpin s;
  detail::Contention quiet{kNeverAway};
  s.woke(quiet);  // no failed spin on this thread yet: nothing to learn
  EXPECT_EQ(s.budget_ns(), 0);
  budget_down(s);
  set_spin_limit(std::chrono::seconds(10));
  EXPECT_FALSE(s.spin([] { return false; }, quiet));
  std::this_thread::sleep_for(100us);
  s.woke(quiet);
  const auto grown = s.budget_ns();
  EXPECT_GE(grown, 100'000);
  std::this_thread::sleep_for(300us);
  s.woke(quiet);  // the failed spin was used up by the first woke()
  EXPECT_EQ(s.budget_ns(), grown);
}

// ---- contention: the CPUs busy with other threads (synthetic times, in ns) --------------------

using detail::Contention;

TEST_F(SpinTest, ARoundAwayFromTheCpuForLongIsALoss) {
  Contention c;
  EXPECT_FALSE(c.busy(0));
  // A yield to the peer comes back within microseconds: not a lost CPU.
  EXPECT_FALSE(c.lost(1'000, 1'000 + Contention::kAwayNs));
  EXPECT_FALSE(c.busy(1'000 + Contention::kAwayNs));
  // Away longer: another thread had the CPU for a time slice.
  const std::int64_t at = 10'000'000;
  EXPECT_TRUE(c.lost(at - 2'000'000, at));
}

// The process's Contention asks the scheduler: a gap in which this thread did not wait on a run
// queue (the hypervisor had the CPU, or an interrupt) is no loss; one it spent waiting for
// another thread of this machine is.
TEST_F(SpinTest, AGapCountsOnlyIfTheThreadWaitedForACpuHere) {
  Contention asking{Contention::kAwayNs, true};
  (void)detail::waited_for_cpu(0);  // the thread's first question: nothing to compare with
  // A made-up second away from the CPU, in which this thread waited on no run queue.
  const std::int64_t at = 10'000'000'000;
  EXPECT_FALSE(asking.lost(at - 1'000'000'000, at));
  EXPECT_FALSE(detail::waited_for_cpu(1'000'000'000));

  // This thread and a spinning one on one CPU: each waits for the other's time slices.
  cpu_set_t saved;
  ASSERT_EQ(::sched_getaffinity(0, sizeof saved, &saved), 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);
  std::atomic<bool> stop{false};
  std::thread rival([&] {
    while (!stop.load(std::memory_order_relaxed)) {
    }
  });  // inherits the one CPU
  (void)detail::waited_for_cpu(0);
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < 200ms) {
  }
  const bool waited = detail::waited_for_cpu(20'000'000);  // 20 ms of the 200
  stop = true;
  rival.join();
  ASSERT_EQ(::sched_setaffinity(0, sizeof saved, &saved), 0);
  EXPECT_TRUE(waited);
}

TEST_F(SpinTest, LossesFarApartAreStrayPreemptionsNotLoad) {
  Contention c;
  // Preempted now and then, as a virtual machine's CPUs are: no busy period, ever.
  std::int64_t now = 1'000'000'000;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(c.lost(now - 2'000'000, now));
    EXPECT_FALSE(c.busy(now)) << "loss " << i;
    now += Contention::kConfirmNs;
  }
  EXPECT_EQ(c.period_ns(), 0);
}

TEST_F(SpinTest, ASecondLossSoonAfterTheFirstStartsABusyPeriod) {
  Contention c;
  const std::int64_t at = 10'000'000;
  ASSERT_TRUE(c.lost(at - 2'000'000, at));
  EXPECT_FALSE(c.busy(at));
  const std::int64_t again = at + Contention::kConfirmNs - 1;
  ASSERT_TRUE(c.lost(again - Contention::kAwayNs - 1, again));
  EXPECT_EQ(c.period_ns(), Contention::kMinBusyNs);
  EXPECT_TRUE(c.busy(again));
  EXPECT_TRUE(c.busy(again + Contention::kMinBusyNs - 1));
  EXPECT_FALSE(c.busy(again + Contention::kMinBusyNs));
}

// Two losses `gap` ns apart, the second at `now`: a busy period from `now` on.
void confirm_load(Contention& c, std::int64_t now, std::int64_t gap = 1'000'000) {
  ASSERT_TRUE(c.lost(0, now - gap));
  ASSERT_TRUE(c.lost(0, now));
  ASSERT_TRUE(c.busy(now));
}

TEST_F(SpinTest, BusyPeriodsDoubleWhileTheLoadLastsUpToTheirCap) {
  Contention c;
  std::int64_t now = 1'000'000'000;
  confirm_load(c, now);
  std::int64_t expected = Contention::kMinBusyNs;
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(c.period_ns(), expected) << "loss " << i;
    now += c.period_ns();  // the probe after the period loses again
    ASSERT_TRUE(c.lost(now - Contention::kAwayNs - 1, now));
    expected = std::min(2 * expected, Contention::kMaxBusyNs);
  }
  EXPECT_EQ(c.period_ns(), Contention::kMaxBusyNs);
}

TEST_F(SpinTest, LossesWithinOneBusyPeriodCountOnce) {
  Contention c;
  const std::int64_t at = 5'000'000;
  confirm_load(c, at);
  // The other peer, or another waiter, loses its CPU in the same period: same period.
  EXPECT_TRUE(c.lost(at, at + Contention::kAwayNs + 1));
  EXPECT_EQ(c.period_ns(), Contention::kMinBusyNs);
  EXPECT_FALSE(c.busy(at + Contention::kMinBusyNs));
}

TEST_F(SpinTest, ALossLongAfterTheLastBusyPeriodStartsNothingAlone) {
  Contention c;
  std::int64_t now = 1'000'000'000;
  confirm_load(c, now);
  for (int i = 0; i < 4; ++i) {  // 2, 4, 8, 16 ms, each probe right after the period before
    now += c.period_ns();
    ASSERT_TRUE(c.lost(0, now));
  }
  EXPECT_EQ(c.period_ns(), 16 * Contention::kMinBusyNs);
  std::int64_t end = now + c.period_ns();
  // A loss within one period's length of its end is the same load...
  now = end + c.period_ns() - 1;
  ASSERT_TRUE(c.lost(0, now));
  EXPECT_EQ(c.period_ns(), 32 * Contention::kMinBusyNs);
  end = now + c.period_ns();
  // ...one later than that, alone, is a stray preemption after the CPUs had room...
  now = end + c.period_ns();
  ASSERT_TRUE(c.lost(0, now));
  EXPECT_FALSE(c.busy(now));
  // ...and with a second one soon after, a new episode from the shortest period.
  ASSERT_TRUE(c.lost(0, now + 1'000'000));
  EXPECT_EQ(c.period_ns(), Contention::kMinBusyNs);
}

// A Contention in a busy period that lasts beyond any test: made busy at a synthetic time far
// ahead of the steady clock.
void make_busy(Contention& c) {
  const std::int64_t far = std::numeric_limits<std::int64_t>::max() / 4;
  confirm_load(c, far);
  ASSERT_TRUE(c.busy(detail::now_ns()));
}

TEST_F(SpinTest, WhileTheCpusAreBusyAWaitOnlyPausesBriefly) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(std::chrono::seconds(10));
  Contention busy;
  make_busy(busy);
  detail::AdaptiveSpin s;
  int calls = 0;
  EXPECT_FALSE(s.spin([&] { return ++calls > 1000000; }, busy));
  // The check before the spin, then the four rounds of 1, 2, 4 and 8 pauses that do not yield:
  // not the 10 s budget.
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(s.budget_ns(), 0);  // and the budget stays as it was, neither halved...
  calls = 0;
  EXPECT_TRUE(s.spin([&] { return ++calls > 3; }, busy));
  EXPECT_EQ(s.budget_ns(), 0);  // ...nor grown
}

TEST_F(SpinTest, WhileTheCpusAreBusyASpinOfSystemCallsMakesNone) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(std::chrono::seconds(10));
  Contention busy;
  make_busy(busy);
  detail::AdaptiveSpin s;
  int calls = 0;
  // Busy: not even the first look (each would be a system call); the caller blocks at once.
  EXPECT_FALSE(s.spin_syscall([&] { return ++calls > 0; }, busy));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(s.budget_ns(), 0);
  // As a spin that gave up at once, the sleep after it teaches nothing.
  std::this_thread::sleep_for(200us);
  s.woke(busy);
  EXPECT_EQ(s.budget_ns(), 0);
  // Quiet: the same spin as spin().
  Contention quiet{kNeverAway};
  calls = 0;
  EXPECT_TRUE(s.spin_syscall([&] { return ++calls > 3; }, quiet));
  EXPECT_EQ(calls, 4);
}

TEST_F(SpinTest, WhileTheCpusAreBusyASleepTeachesNothing) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  detail::AdaptiveSpin s;
  budget_down(s);
  set_spin_limit(std::chrono::seconds(10));
  Contention quiet{kNeverAway};
  EXPECT_FALSE(s.spin([] { return false; }, quiet));  // a failed spin on a quiet machine...
  const auto before = s.budget_ns();
  std::this_thread::sleep_for(200us);  // ...and the sleep after it, which would teach
  Contention busy;
  make_busy(busy);  // but the CPUs turned busy meanwhile
  s.woke(busy);
  EXPECT_EQ(s.budget_ns(), before);
  // The same wait on a quiet machine grows the budget (ASleepTheLimitCouldHaveCovered...).
  EXPECT_FALSE(s.spin([] { return false; }, quiet));
  std::this_thread::sleep_for(200us);
  s.woke(quiet);
  EXPECT_GE(s.budget_ns(), 200'000);
}

// ready() that is false and, on its second call, keeps the thread off the CPU for 2 ms (as a
// yield to another runnable thread would), then answers `after` from then on.
struct AwayOnce {
  int calls = 0;
  bool after;
  bool operator()() {
    if (++calls == 2) std::this_thread::sleep_for(2ms);
    return calls > 2 && after;
  }
};

TEST_F(SpinTest, ASpinThatLosesItsCpuStopsAndLeavesTheBudget) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  set_spin_limit(std::chrono::seconds(10));
  Contention c;
  detail::AdaptiveSpin s;
  AwayOnce ready{.after = false};
  EXPECT_FALSE(s.spin(std::ref(ready), c));
  // Stopped at the round after the 2 ms away (or before, if really preempted), not 10 s later.
  EXPECT_LE(ready.calls, 3);
  EXPECT_EQ(s.budget_ns(), 0);  // not halved: the peer was not what failed
  std::this_thread::sleep_for(200us);
  s.woke(
      Contention{kNeverAway});  // and the sleep after it teaches nothing, even on a quiet machine
  EXPECT_EQ(s.budget_ns(), 0);
}

TEST_F(SpinTest, ASpinThatSucceedsAfterLosingItsCpuDoesNotGrow) {
  if (detail::single_cpu()) GTEST_SKIP() << "spinning is off on one CPU";
  detail::AdaptiveSpin s;
  budget_down(s);
  set_spin_limit(std::chrono::seconds(10));
  const auto before = s.budget_ns();
  Contention c;
  AwayOnce ready{.after = true};
  const bool got = s.spin(std::ref(ready), c);
  if (ready.calls > 2) {  // (fewer calls: really preempted before the sleep)
    EXPECT_TRUE(got);
  }
  // The event came while another thread had the CPU: the 2 ms wait says nothing about the peer.
  EXPECT_EQ(s.budget_ns(), before);
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

// The count of runnable threads is /proc/loadavg's fourth field, the caller among them.
TEST_F(SpinTest, TheCpusAreSaturatedWhenTheOtherRunnableThreadsFillThem) {
  EXPECT_FALSE(detail::cpus_saturated("0.52 0.58 0.59 2/345 12345\n", 2));  // the caller + 1
  EXPECT_TRUE(detail::cpus_saturated("0.52 0.58 0.59 3/345 12345\n", 2));
  EXPECT_TRUE(detail::cpus_saturated("4.00 3.10 2.00 17/900 1\n", 4));
  EXPECT_FALSE(detail::cpus_saturated("4.00 3.10 2.00 4/900 1\n", 4));
  // A text that does not parse says nothing.
  EXPECT_FALSE(detail::cpus_saturated("", 2));
  EXPECT_FALSE(detail::cpus_saturated("0.52 0.58 0.59", 2));
  EXPECT_FALSE(detail::cpus_saturated("0.52 0.58 0.59 x/345 1", 2));
  EXPECT_FALSE(detail::cpus_saturated("0.52 0.58 0.59 9 1", 2));
  EXPECT_FALSE(detail::cpus_saturated("0.52 0.58 0.59 99999999999999/3 1", 2));
  EXPECT_FALSE(detail::cpus_saturated("0.52 0.58 0.59 3/345 1", 0));
}

// The process's waits see CPUs that other threads fill, though no spin ever lost its CPU: with
// as many busy threads as CPUs beside this one, within a few counts (one per 4 ms at most), and
// a spin of system calls would then make none.
TEST_F(SpinTest, WaitsSeeCpusThatOtherThreadsFill) {
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus < 1 || cpus > 16) GTEST_SKIP() << cpus << " CPUs: not filled here";
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  for (long i = 0; i < cpus; ++i)
    busy.emplace_back([&stop] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  bool seen = false;
  const auto give_up = std::chrono::steady_clock::now() + 2s;
  while (!seen && std::chrono::steady_clock::now() < give_up) {
    seen = detail::cpu_contention().filled(detail::now_ns()) && !detail::AdaptiveSpin::would_spin();
    std::this_thread::sleep_for(1ms);
  }
  stop = true;
  for (auto& t : busy) t.join();
  EXPECT_TRUE(seen);
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
