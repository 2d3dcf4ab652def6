#include "troupe/multiprocessing/pool.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <initializer_list>
#include <list>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>

#include "troupe/error_envelope.hpp"
#include "troupe/errors.hpp"
#include "troupe/threading/event.hpp"

#include "leak_check.hpp"
#include "outcomes.hpp"
#include "pool_entries.hpp"
#include "start_methods.hpp"

// The behaviours of CPython's _TestPool, _TestPoolWorkerErrors and _TestPoolWorkerLifetime
// (Lib/test/_test_multiprocessing.py), per start method; and what Python cannot do: a worker
// killed in the middle of a map fails that map, and the pool goes on.
namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace views = troupe::testing::views;
using namespace troupe::testing::pool_entries;

int sqr_slowly(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(x % 3));
  return x * x;
}
TROUPE_ENTRY(sqr_slowly);

int raise_at_10(int x) {
  if (x == 10) throw KeyError("item 10");
  return x;
}
TROUPE_ENTRY(raise_at_10);

int base = 0;
void set_base(int b) {
  base = b;
}
TROUPE_ENTRY(set_base);
int add_base(int x) {
  return base + x;
}
TROUPE_ENTRY(add_base);

using PoolTest = troupe::testing::StartMethodTest;
using troupe::testing::input_raising_at;
using troupe::testing::outcomes;
using troupe::testing::texts;

PoolOptions with(const std::string& method, PoolOptions o = {}) {
  o.context = get_context(method);
  if (!o.processes) o.processes = 2;
  return o;
}

std::vector<int> squares(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i * i);
  return v;
}

TEST_P(PoolTest, Apply) {
  Pool pool(with(GetParam()));
  EXPECT_EQ(pool.apply(sqr, 5), 25);
  EXPECT_EQ(pool.apply(mul, 6, 7), 42);
  auto r = pool.apply_async(sqr, 7);
  EXPECT_EQ(r.get(30s), 49);
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
}

TEST_P(PoolTest, MapAndStarmap) {
  Pool pool(with(GetParam()));
  EXPECT_EQ(pool.map(sqr, views::iota(0, 10)), squares(10));
  EXPECT_EQ(pool.map(sqr, std::list<int>{0, 1, 2, 3}), squares(4));
  EXPECT_EQ(pool.map(sqr, views::iota(0, 100), 53), squares(100));
  EXPECT_EQ(pool.map(sqr, std::vector<int>{}), std::vector<int>{});
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap(mul, pairs), (std::vector<int>{2, 12, 30}));
  EXPECT_EQ(pool.starmap_async(mul, pairs, 1).get(30s), (std::vector<int>{2, 12, 30}));
  EXPECT_EQ(pool.map_async(sqr, views::iota(0, 20)).get(30s), squares(20));
  EXPECT_THROW((void)pool.map(sqr, std::vector<int>{1}, 0), ValueError);
}

TEST_P(PoolTest, Imap) {
  Pool pool(with(GetParam()));
  std::vector<int> got;
  for (int v : pool.imap(sqr_slowly, views::iota(0, 30))) got.push_back(v);
  EXPECT_EQ(got, squares(30));
  got.clear();
  for (int v : pool.imap(sqr, views::iota(0, 30), 7)) got.push_back(v);
  EXPECT_EQ(got, squares(30));
}

TEST_P(PoolTest, ImapUnordered) {
  Pool pool(with(GetParam()));
  std::multiset<int> got;
  for (int v : pool.imap_unordered(sqr_slowly, views::iota(0, 30))) got.insert(v);
  auto want = squares(30);
  EXPECT_EQ(got, std::multiset<int>(want.begin(), want.end()));
  got.clear();
  for (int v : pool.imap_unordered(sqr, views::iota(0, 30), 4)) got.insert(v);
  EXPECT_EQ(got, std::multiset<int>(want.begin(), want.end()));
}

TEST_P(PoolTest, ImapNextWithATimeout) {
  // Python's IMapIterator.next(timeout): multiprocessing.TimeoutError, and nothing is lost.
  Pool pool(with(GetParam(), {.processes = 1}));
  auto results = pool.imap(sleep_ms, std::vector<int>{400, 0, 1});
  EXPECT_THROW((void)results.next(20ms), TimeoutError);
  EXPECT_EQ(results.next(30s), 400);  // the same result, once it comes
  EXPECT_EQ(results.next(), 0);
  EXPECT_EQ(results.next(30s), 1);
  EXPECT_EQ(results.next(30s), std::nullopt);  // StopIteration
  EXPECT_EQ(results.next(), std::nullopt);
  auto unordered = pool.imap_unordered(sleep_ms, std::vector<int>{400, 2});
  EXPECT_THROW((void)unordered.next(20ms), TimeoutError);
  std::multiset<int> got{*unordered.next(30s), *unordered.next(30s)};
  EXPECT_EQ(got, (std::multiset<int>{2, 400}));
  EXPECT_EQ(unordered.next(30s), std::nullopt);
  // A zero timeout on a result that is already there returns it.
  auto quick = pool.imap(sqr, std::vector<int>{3});
  EXPECT_TRUE(troupe::testing::eventually([&] {
    try {
      return quick.next(0s) == 9;
    } catch (const TimeoutError&) {
      return false;
    }
  }));
}

TEST_P(PoolTest, ImapIsLazyOverAnEndlessInput) {
  Pool pool(with(GetParam()));
  int read = 0;
  for (int v : pool.imap(sqr, views::iota(0))) {
    EXPECT_EQ(v, read * read);
    if (++read == 100) break;
  }
}

TEST_P(PoolTest, ErrorsPropagate) {
  Pool pool(with(GetParam()));
  EXPECT_THROW(pool.apply(raising, 7), KeyError);
  EXPECT_THROW((void)pool.map(raising, views::iota(0, 10)), KeyError);
  auto it_results = pool.imap(raising, views::iota(0, 10));
  std::vector<int> got;
  try {
    for (int v : it_results) got.push_back(v);
    FAIL() << "no KeyError";
  } catch (const KeyError&) {
  }
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
  auto r = pool.apply_async(raising, 7);
  r.wait(30s);
  EXPECT_FALSE(r.successful());
}

TEST_P(PoolTest, ErrorsNameTheWorkerAndTheCall) {
  Pool pool(with(GetParam(), {.processes = 1}));
  const int pid = pool.apply(pid_of, 0);
  try {
    (void)pool.apply(raising, 7);
    ADD_FAILURE() << "no KeyError";
  } catch (const KeyError& e) {
    ASSERT_NE(e.remote(), nullptr) << e.what();
    EXPECT_EQ(e.remote()->origin.pid, pid);
    EXPECT_EQ(e.remote()->context.call, "raising");
    EXPECT_EQ(e.remote()->message, "key 7");
    EXPECT_THAT(e.what(), HasSubstr("Remote KeyError in raising(7), in process "));
    EXPECT_THAT(e.what(), HasSubstr("(pid " + std::to_string(pid) + ")"));
  }
}

// What Python's IMapIterator gives a next() loop that catches errors: a failing call's exception
// at its place and every other result; the unordered results hold the same.
std::vector<std::string> around_item_10() {
  auto want = texts(0, 100, [](int i) { return i; });
  want[10] = "KeyError";
  return want;
}
std::multiset<std::string> as_set(const std::vector<std::string>& v) {
  return {v.begin(), v.end()};
}

TEST_P(PoolTest, ImapGoesOnPastAFailingCall) {
  Pool pool(with(GetParam()));
  auto ordered = pool.imap(raise_at_10, views::iota(0, 100));
  EXPECT_EQ(outcomes(ordered), around_item_10());
  auto unordered = pool.imap_unordered(raise_at_10, views::iota(0, 100));
  EXPECT_EQ(as_set(outcomes(unordered)), as_set(around_item_10()));
  // With chunks, the failing call fails its chunk and the results end there (as in Python,
  // whose imap flattens its chunks with a generator, which the raise ends).
  auto chunked = pool.imap(raise_at_10, views::iota(0, 100), 4);
  auto want = texts(0, 8, [](int i) { return i; });
  want.push_back("KeyError");
  EXPECT_EQ(outcomes(chunked), want);
  // Unordered: the chunks done before the failed one, then its exception, then the end.
  auto chunked_unordered = pool.imap_unordered(raise_at_10, views::iota(0, 100), 4);
  const auto got = outcomes(chunked_unordered);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), "KeyError");
  EXPECT_EQ(got.size() % 4, 1u);  // whole chunks, then the exception
  std::set<std::string> seen(got.begin(), got.end() - 1);
  EXPECT_EQ(seen.size(), got.size() - 1);
  for (const char* failed_chunk : {"8", "9", "10", "11"}) EXPECT_FALSE(seen.contains(failed_chunk));
}

// Python's test_imap_handle_iterable_exception on `pool` (a Pool or a ThreadPool), for inputs of
// `n` elements failing at each of `ks`: the results of the elements read before the failing one,
// then its exception, then the end; imap() itself does not raise.
template <class AnyPool>
void check_input_that_raises(AnyPool& pool, int n, std::initializer_list<int> ks) {
  for (std::size_t chunksize : {1, 3}) {
    for (int k : ks) {
      SCOPED_TRACE("chunksize " + std::to_string(chunksize) + ", input fails at " +
                   std::to_string(k));
      auto want = texts(0, k, [](int i) { return i * i; });
      want.push_back("IndexError");
      std::vector<std::string> got;
      try {  // outcomes() catches what next() raises: what escapes here came from imap()
        auto ordered = pool.imap(sqr, input_raising_at(n, k), chunksize);
        EXPECT_EQ(outcomes(ordered), want);
        auto unordered = pool.imap_unordered(sqr, input_raising_at(n, k), chunksize);
        got = outcomes(unordered);
      } catch (const IndexError&) {
        ADD_FAILURE() << "imap() itself raised the input's exception";
        continue;
      }
      ASSERT_FALSE(got.empty());
      EXPECT_EQ(got.back(), "IndexError");  // after every result read before it
      EXPECT_EQ(as_set(got), as_set(want));
    }
  }
}

TEST_P(PoolTest, ImapInputThatRaisesYieldsWhatCameBefore) {
  // Element 0, one within the first look-ahead (64 chunks here) and one beyond it.
  Pool pool(with(GetParam()));
  check_input_that_raises(pool, 400, {0, 3, 250});
}

TEST_P(PoolTest, AsyncTimeoutAndReadiness) {
  Pool pool(with(GetParam()));
  auto r = pool.apply_async(sleep_ms, 500);
  EXPECT_THROW(r.get(10ms), TimeoutError);  // multiprocessing.TimeoutError
  EXPECT_FALSE(r.ready());
  EXPECT_THROW((void)r.successful(), ValueError);
  EXPECT_EQ(r.get(30s), 500);
}

TEST_P(PoolTest, Callbacks) {
  Pool pool(with(GetParam()));
  std::atomic<int> value{0};
  std::atomic<bool> failed{false};
  auto r = pool.apply_async({.callback = [&](const int& v) { value = v; }}, sqr, 9);
  EXPECT_EQ(r.get(30s), 81);
  EXPECT_EQ(value.load(), 81);  // the callback ran before get() returned
  auto e =
      pool.apply_async({.error_callback = [&](std::exception_ptr) { failed = true; }}, raising, 7);
  e.wait(30s);
  EXPECT_TRUE(failed.load());
  std::atomic<std::size_t> n{0};
  auto m = pool.map_async(sqr, views::iota(0, 8), std::nullopt,
                          {.callback = [&](const std::vector<int>& v) { n = v.size(); }});
  m.wait(30s);
  EXPECT_EQ(n.load(), 8u);
}

TEST_P(PoolTest, Initializer) {
  Pool pool(with(GetParam(), {.initializer = {set_base, 100}}));
  EXPECT_EQ(pool.apply(add_base, 1), 101);
}

TEST_P(PoolTest, CloseJoinAndTerminateRules) {
  {
    Pool pool(with(GetParam()));
    EXPECT_THROW(pool.join(), ValueError);  // "Pool is still running"
    EXPECT_EQ(pool.apply(sqr, 3), 9);
    auto r = pool.apply_async(sleep_ms, 50);
    pool.close();
    try {
      pool.apply(sqr, 1);
      FAIL() << "no ValueError";
    } catch (const ValueError& e) {
      EXPECT_STREQ(e.what(), "Pool not running");
    }
    pool.join();
    EXPECT_EQ(r.get(0s), 50);  // close lets submitted tasks finish
  }
  {
    Pool pool(with(GetParam()));
    auto r = pool.apply_async(sleep_ms, 20000);
    EXPECT_TRUE(troupe::testing::eventually([&] { return r.future().running(); }));
    std::this_thread::sleep_for(50ms);
    const auto t0 = std::chrono::steady_clock::now();
    pool.terminate();
    pool.join();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s);
    EXPECT_THROW(r.get(30s), ProcessError);  // fails: Python's would hang
  }
}

TEST_P(PoolTest, KilledWorkerFailsItsTaskNeverHangs) {
  Pool pool(with(GetParam()));
  try {
    (void)pool.map(kill_self_at, views::iota(0, 10), 1);
    FAIL() << "no ProcessError";
  } catch (const ProcessError& e) {
    EXPECT_THAT(e.what(), HasSubstr("killed by signal 9 (SIGKILL)"));
  }
  if (GetParam() == "fork") {  // a forked pool cannot replace workers: it is broken
    EXPECT_TRUE(troupe::testing::eventually([&] {
      try {
        pool.apply(sqr, 2);
        return false;
      } catch (const ProcessError&) {
        return true;
      }
    }));
  } else {  // a new worker took the dead one's place
    EXPECT_EQ(pool.apply(sqr, 4), 16);
    EXPECT_EQ(pool.map(sqr, views::iota(0, 10)), squares(10));
  }
  pool.close();
  pool.join();
}

TEST_P(PoolTest, MaxTasksPerChild) {
  if (GetParam() == "fork") {
    EXPECT_THROW(Pool(with("fork", {.maxtasksperchild = 1})), ValueError);
    return;
  }
  // Every worker started is a process start (half a second under TSan): a few dozen in all.
  for (int per_child : {1, 3}) {
    Pool pool(with(GetParam(), {.maxtasksperchild = per_child}));
    std::vector<AsyncResult<int>> rs;
    for (int i = 0; i < 8; ++i) rs.push_back(pool.apply_async(pid_of, i));
    std::set<int> pids;
    for (auto& r : rs) pids.insert(r.get(60s));
    EXPECT_GE(pids.size(), static_cast<std::size_t>(8 / per_child)) << per_child;
    EXPECT_EQ(pool.map(sqr, views::iota(0, 12), 1), squares(12)) << per_child;
    pool.close();
    pool.join();
  }
}

TEST_P(PoolTest, BadArguments) {
  EXPECT_THROW(Pool(with(GetParam(), {.processes = 0})), ValueError);
  EXPECT_THROW(Pool(with(GetParam(), {.maxtasksperchild = 0})), ValueError);
}

TEST_P(PoolTest, DestructorTerminates) {
  std::optional<AsyncResult<int>> r;
  {
    Pool pool(with(GetParam()));
    r = pool.apply_async(sleep_ms, 20000);
    EXPECT_TRUE(troupe::testing::eventually([&] { return r->future().running(); }));
  }
  EXPECT_TRUE(r->ready());
  EXPECT_THROW(r->get(), ProcessError);
}

TROUPE_PER_START_METHOD(PoolTest);

// ThreadPool (and dummy::Pool, the same class): the API on threads, any callable.
class ThreadPoolTest : public troupe::testing::LeakCheck {};

TEST_F(ThreadPoolTest, SameApiOnThreads) {
  threading::Event go;
  dummy::Pool pool(3);
  int offset = 10;  // a lambda capturing local state: fine on threads
  EXPECT_EQ(pool.apply([&](int x) { return x + offset; }, 5), 15);
  EXPECT_EQ(pool.apply_async(sqr, 7).get(10s), 49);
  EXPECT_EQ(pool.map(sqr, views::iota(0, 50)), squares(50));
  EXPECT_EQ(pool.map(sqr, views::iota(0, 50), 7), squares(50));
  EXPECT_EQ(pool.map(sqr, std::vector<int>{}), std::vector<int>{});
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
  EXPECT_EQ(pool.starmap(mul, pairs), (std::vector<int>{2, 12}));
  std::vector<int> got;
  for (int v : pool.imap(sqr, views::iota(0, 20), 3)) got.push_back(v);
  EXPECT_EQ(got, squares(20));
  std::multiset<int> unordered;
  for (int v : pool.imap_unordered(sqr_slowly, views::iota(0, 20))) unordered.insert(v);
  auto want = squares(20);
  EXPECT_EQ(unordered, std::multiset<int>(want.begin(), want.end()));
  EXPECT_THROW(pool.apply(raising, 7), KeyError);
  EXPECT_THROW((void)pool.map(raising, views::iota(0, 10)), KeyError);
  auto slow = pool.imap([&](int x) { return go.wait(10s) ? x : -1; }, std::vector<int>{5, 6});
  EXPECT_THROW((void)slow.next(10ms), TimeoutError);
  go.set();
  EXPECT_EQ(slow.next(10s), 5);
  EXPECT_EQ(slow.next(10s), 6);
  EXPECT_EQ(slow.next(10s), std::nullopt);
  std::atomic<int> seen{0};
  pool.apply_async({.callback = [&](const int& v) { seen = v; }}, sqr, 4).get(10s);
  EXPECT_EQ(seen.load(), 16);
  EXPECT_THROW(pool.join(), ValueError);
  pool.close();
  EXPECT_THROW(pool.apply(sqr, 1), ValueError);
  pool.join();
}

TEST_F(ThreadPoolTest, ImapGoesOnPastAFailingCall) {
  ThreadPool pool(2);
  auto ordered = pool.imap(raise_at_10, views::iota(0, 100));
  EXPECT_EQ(outcomes(ordered), around_item_10());
  auto unordered = pool.imap_unordered(raise_at_10, views::iota(0, 100));
  EXPECT_EQ(as_set(outcomes(unordered)), as_set(around_item_10()));
}

TEST_F(ThreadPoolTest, ImapInputThatRaisesYieldsWhatCameBefore) {
  ThreadPool pool(2);  // a look-ahead of 8 chunks
  check_input_that_raises(pool, 100, {0, 3, 50});
}

TEST_F(ThreadPoolTest, InitializerAndTerminate) {
  std::atomic<int> inits{0};
  ThreadPool pool({.processes = 2, .initializer = [&] { ++inits; }});
  threading::Event release;
  auto running = pool.apply_async([&] { return release.wait(10s); });
  auto running2 = pool.apply_async([&] { return release.wait(10s); });
  std::vector<AsyncResult<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(pool.apply_async(sqr, i));
  EXPECT_TRUE(troupe::testing::eventually([&] { return inits.load() == 2; }));
  pool.terminate();  // the queued tasks are cancelled; the running ones finish
  release.set();
  pool.join();
  EXPECT_TRUE(running.get());
  EXPECT_TRUE(running2.get());
  for (auto& r : queued) EXPECT_THROW(r.get(), concurrent::futures::CancelledError);
}

}  // namespace
}  // namespace troupe::multiprocessing
