// One test body per behaviour, run on processes started by fork, by spawn, by the forkserver, and
// on multiprocessing.dummy's threads — as CPython's _test_multiprocessing runs its tests per start
// method and for dummy. A backend names the types and how a target starts; the bodies use
// nothing else.
#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing.hpp"
#include "troupe/multiprocessing/dummy.hpp"

#include "leak_check.hpp"

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;

/// Processes started with a start method.
template <const char* Method>
struct Processes {
  static constexpr const char* name = Method;
  using Lock = multiprocessing::Lock;
  using Event = multiprocessing::Event;
  using Semaphore = multiprocessing::Semaphore;
  using Condition = multiprocessing::Condition;
  using Barrier = multiprocessing::Barrier;
  template <class T>
  using Queue = multiprocessing::Queue<T>;
  template <class T>
  using JoinableQueue = multiprocessing::JoinableQueue<T>;
  template <class T>
  using Value = multiprocessing::Value<T>;
  template <class T>
  using Array = multiprocessing::Array<T>;
  template <class F, class... A>
  static multiprocessing::Process start(F f, A&&... a) {
    auto p = get_context(Method).Process(f, std::forward<A>(a)...);
    p.start();
    return p;
  }
  static std::string current_name() { return current_process().name(); }
};

constexpr char kFork[] = "fork";
constexpr char kSpawn[] = "spawn";
constexpr char kForkserver[] = "forkserver";
using Fork = Processes<kFork>;
using Spawn = Processes<kSpawn>;
using Forkserver = Processes<kForkserver>;

/// multiprocessing.dummy: the same names, on threads.
struct Dummy {
  static constexpr const char* name = "dummy";
  using Lock = dummy::Lock;
  using Event = dummy::Event;
  using Semaphore = dummy::Semaphore;
  using Condition = dummy::Condition;
  using Barrier = dummy::Barrier;
  template <class T>
  using Queue = dummy::Queue<T>;
  template <class T>
  using JoinableQueue = dummy::JoinableQueue<T>;
  template <class T>
  using Value = dummy::Value<T>;
  template <class T>
  using Array = dummy::Array<T>;
  template <class F, class... A>
  static dummy::Process start(F f, A&&... a) {
    dummy::Process p(f, std::forward<A>(a)...);
    p.start();
    return p;
  }
  static std::string current_name() { return dummy::current_process().name(); }
};

template <class B>
class Matrix : public troupe::testing::LeakCheck {};
using Backends = ::testing::Types<Fork, Spawn, Forkserver, Dummy>;
struct BackendNames {
  template <class B>
  static std::string GetName(int) {
    return B::name;
  }
};
TYPED_TEST_SUITE(Matrix, Backends, BackendNames);

// ---- targets (registered, so that spawn and the forkserver can run them) -------------------

#define ENTRY(fn)          \
  TROUPE_ENTRY(fn<Spawn>); \
  TROUPE_ENTRY(fn<Forkserver>)

template <class B>
void greet(typename B::template Queue<std::string> out, int n) {
  out.put("hello " + std::to_string(n) + " from " + B::current_name());
}
ENTRY(greet);

template <class B>
void exit_with(int code) {
  if (code < 0) throw ValueError("failed on purpose");
  troupe::sys_exit(code);
}
ENTRY(exit_with);

template <class B>
void count_up(typename B::template Value<long> total, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock guard{total};
    total.get_obj() += 1;
  }
}
ENTRY(count_up);

template <class B>
void square_jobs(typename B::template JoinableQueue<int> jobs,
                 typename B::template Queue<int> results) {
  for (;;) {
    const int j = jobs.get(true, 20s);
    if (j >= 0) results.put(j * j);
    jobs.task_done();
    if (j < 0) return;
  }
}
ENTRY(square_jobs);

template <class B>
void wait_and_release(typename B::Event go, typename B::Semaphore done) {
  if (go.wait(20s)) done.release();
}
ENTRY(wait_and_release);

template <class B>
void notify_after(typename B::Condition cond, typename B::template Value<int> flag) {
  std::scoped_lock guard{cond};
  flag.set_value(1);
  cond.notify_all();
}
ENTRY(notify_after);

template <class B>
void meet(typename B::Barrier barrier, typename B::template Array<int> seen, int slot) {
  seen.set(static_cast<std::size_t>(slot), barrier.wait(20s));
}
ENTRY(meet);

// ---- bodies ----------------------------------------------------------------------------------

TYPED_TEST(Matrix, TargetRunsWithItsArgumentsAndIsJoined) {
  using B = TypeParam;
  typename B::template Queue<std::string> q;
  auto p = B::start(&greet<B>, q, 42);
  const std::string got = q.get(true, 20s);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(got, "hello 42 from " + p.name());
  EXPECT_FALSE(p.is_alive());
}

TYPED_TEST(Matrix, ExitCodes) {
  using B = TypeParam;
  auto ok = B::start(&exit_with<B>, 0);
  auto three = B::start(&exit_with<B>, 3);
  ok.join();
  three.join();
  EXPECT_EQ(ok.exitcode(), 0);
  EXPECT_EQ(three.exitcode(), 3);
}

TYPED_TEST(Matrix, ALockedValueCountsEveryIncrement) {
  using B = TypeParam;
  typename B::template Value<long> total(0);
  auto a = B::start(&count_up<B>, total, 2000);
  auto b = B::start(&count_up<B>, total, 2000);
  count_up<B>(total, 2000);
  a.join();
  b.join();
  EXPECT_EQ(total.value(), 6000);
}

TYPED_TEST(Matrix, JoinableQueueWorkers) {
  using B = TypeParam;
  typename B::template JoinableQueue<int> jobs;
  typename B::template Queue<int> results;
  auto w1 = B::start(&square_jobs<B>, jobs, results);
  auto w2 = B::start(&square_jobs<B>, jobs, results);
  for (int i = 0; i < 50; ++i) jobs.put(i);
  jobs.put(-1);
  jobs.put(-1);
  jobs.join();
  long sum = 0;
  for (int i = 0; i < 50; ++i) sum += results.get(true, 20s);
  EXPECT_EQ(sum, 49L * 50 * 99 / 6);
  EXPECT_TRUE(results.empty());
  w1.join();
  w2.join();
}

TYPED_TEST(Matrix, EventAndSemaphore) {
  using B = TypeParam;
  typename B::Event go;
  typename B::Semaphore done(0);
  auto p = B::start(&wait_and_release<B>, go, done);
  EXPECT_FALSE(done.acquire(true, 20ms));
  go.set();
  EXPECT_TRUE(done.acquire(true, 20s));
  p.join();
}

TYPED_TEST(Matrix, ConditionNotifyAll) {
  using B = TypeParam;
  typename B::Condition cond;
  typename B::template Value<int> flag(0);
  std::scoped_lock guard{cond};
  auto p = B::start(&notify_after<B>, cond, flag);  // it needs the lock: we are waiting first
  EXPECT_TRUE(cond.wait_for([&] { return flag.value() == 1; }, 20s));
  cond.release();
  p.join();
  cond.acquire();  // for the guard
}

TYPED_TEST(Matrix, BarrierGivesDistinctIndices) {
  using B = TypeParam;
  typename B::Barrier barrier(3);
  typename B::template Array<int> seen{-1, -1, -1};
  auto p1 = B::start(&meet<B>, barrier, seen, 1);
  auto p2 = B::start(&meet<B>, barrier, seen, 2);
  meet<B>(barrier, seen, 0);
  p1.join();
  p2.join();
  auto v = seen.to_vector();
  std::sort(v.begin(), v.end());
  EXPECT_EQ(v, (std::vector<int>{0, 1, 2}));
}

TEST(Dummy, ActiveChildrenAndCurrentProcess) {
  dummy::Event go;
  dummy::Process p(
      {.name = "worker"}, [](dummy::Event go) { go.wait(20s); }, go);
  EXPECT_FALSE(p.exitcode());
  p.start();
  EXPECT_THROW(p.start(), ProcessError);
  auto children = dummy::active_children();
  ASSERT_EQ(children.size(), 1u);
  EXPECT_TRUE(children[0] == p);
  EXPECT_EQ(children[0].name(), "worker");
  go.set();
  p.join();
  EXPECT_TRUE(dummy::active_children().empty());
  dummy::Process thrower([] { throw ValueError("x"); });
  thrower.start();
  thrower.join();
  EXPECT_EQ(thrower.exitcode(), 1);  // Python's DummyProcess would say 0
}

}  // namespace
}  // namespace troupe::multiprocessing
