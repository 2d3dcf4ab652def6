// SyncManager's Pool (Python's `manager.Pool()`, PoolProxy, and the AsyncResult and Iterator
// proxies its methods return): the pool lives in the manager's process, tasks are TROUPE_ENTRY
// functions, results come back decoded by the function's types. The behaviours are CPython's
// _TestPool's (run there under ManagerMixin too), on every start method of the server.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <gmock/gmock.h>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/server.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "pool_entries.hpp"
#include "start_method_test.hpp"
#include "views.hpp"

namespace managed_pool_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace views = troupe::testing::views;
using namespace troupe::testing::pool_entries;

void nothing(int) {}
TROUPE_ENTRY(nothing);

int base = 0;
void set_base(int b) {
  base = b;
}
TROUPE_ENTRY(set_base);
int add_base(int x) {
  return base + x;
}
TROUPE_ENTRY(add_base);

// CPython's _TestInitializers' initializer: notes in a managed Namespace that it ran.
void note_start(mm::NamespaceProxy ns) {
  ns.set("test", 1);
}
TROUPE_ENTRY(note_start);

// note_start, a while after the worker started: the pool's join() comes first.
void note_start_later(mm::NamespaceProxy ns) {
  std::this_thread::sleep_for(300ms);
  ns.set("test", 1);
}
TROUPE_ENTRY(note_start_later);

// An initializer that ignores SIGTERM while it calls the server: notes 1, then (a while later,
// a pool's terminate meanwhile) 2, then lets SIGTERM in again (the pool's stop message ends the
// worker then).
void note_start_ignoring_terminate(mm::NamespaceProxy ns) {
  std::signal(SIGTERM, SIG_IGN);
  ns.set("test", 1);
  std::this_thread::sleep_for(1s);  // the pool is dropped meanwhile
  ns.set("test", 2);
  std::signal(SIGTERM, SIG_DFL);
}
TROUPE_ENTRY(note_start_ignoring_terminate);

// Not registered: a client cannot name it.
int unregistered(int x) {
  return x;
}

// A child process given an AsyncResult proxy (it travels as any proxy).
void get_in_child(mm::AsyncResultProxy<int> r) {
  if (r.get(30s) != 81) throw troupe::ValueError("the child did not get 81");
}
TROUPE_ENTRY(get_in_child);

// TestSyncManagerTypes.test_pool: a child given the pool uses it, then terminates it (Python's
// `with o: pass`).
void use_pool_in_child(mm::PoolProxy pool) {
  if (pool.apply(sqr, 8) != 64) throw troupe::ValueError("the child did not get 64");
  pool.terminate();
}
TROUPE_ENTRY(use_pool_in_child);

// Raises KeyError for 7; sleeps `x` ms otherwise.
int raise_or_sleep(int x) {
  if (x == 7) throw troupe::KeyError("key 7");
  std::this_thread::sleep_for(std::chrono::milliseconds(x));
  return x;
}
TROUPE_ENTRY(raise_or_sleep);

namespace {

class ManagedPoolTest : public troupe::testing::StartMethodTest {};
class ManagedPoolOnAUserExecutorTest : public troupe::testing::LeakCheck {};

std::vector<int> squares(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i * i);
  return v;
}

TEST_P(ManagedPoolTest, ApplyMapStarmap) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  EXPECT_EQ(pool._token().typeid_, "Pool");
  EXPECT_EQ(pool.processes(), 2);
  EXPECT_EQ(pool.apply(sqr, 5), 25);
  pool.apply(nothing, 1);  // void
  EXPECT_EQ(pool.map(sqr, views::iota(0, 10)), squares(10));
  EXPECT_EQ(pool.map(sqr, views::iota(0, 100), 7), squares(100));
  EXPECT_EQ(pool.map(sqr, std::vector<int>{}), std::vector<int>{});
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap(mul, pairs), (std::vector<int>{2, 12, 30}));
  EXPECT_EQ(pool.starmap_async(mul, pairs).get(30s), (std::vector<int>{2, 12, 30}));
  EXPECT_EQ(pool.map_async(sqr, views::iota(0, 20), 3).get(30s), squares(20));
  EXPECT_THAT(pool.str(), HasSubstr("pool_size=2"));
}

TEST_P(ManagedPoolTest, AsyncResultTimeoutAndReadiness) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  auto r = pool.apply_async(sleep_ms, 400);
  EXPECT_EQ(r._token().typeid_, "AsyncResult");
  EXPECT_THROW(r.get(10ms), mp::TimeoutError);  // multiprocessing.TimeoutError
  EXPECT_FALSE(r.ready());
  EXPECT_THROW((void)r.successful(), troupe::ValueError);
  r.wait(5ms);  // returns, not ready
  EXPECT_EQ(r.get(30s), 400);
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
  EXPECT_EQ(r.get(0s), 400);  // again, at once
}

TEST_P(ManagedPoolTest, ErrorsPropagate) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  try {
    pool.apply(raising, 7);
    FAIL() << "no KeyError";
  } catch (const troupe::KeyError& e) {
    EXPECT_THAT(e.what(), HasSubstr("key 7"));
  }
  auto r = pool.apply_async(raising, 7);
  r.wait(30s);
  EXPECT_TRUE(r.ready());
  EXPECT_FALSE(r.successful());
  EXPECT_THROW(r.get(), troupe::KeyError);
  EXPECT_THROW((void)pool.map(raising, views::iota(0, 10)), troupe::KeyError);
  EXPECT_EQ(pool.apply(sqr, 3), 9);  // the pool goes on
}

// Python's callback= and error_callback= (a managed Pool's run in the server; here, in the
// process that gave them): they run once the result is ready, before get() and wait() return;
// a task's exception goes to error_callback; a callback that throws is logged, nothing else.
TEST_P(ManagedPoolTest, CallbacksRunHereBeforeGetReturns) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  std::atomic<int> got{-1};
  std::atomic<bool> slow_done{false};
  mp::AsyncCallbacks<int> slow{[&](const int& v) {
                                 std::this_thread::sleep_for(50ms);  // get() waits for it
                                 got = v;
                                 slow_done = true;
                               },
                               {}};
  auto r = pool.apply_async(slow, sqr, 6);
  EXPECT_EQ(r.get(30s), 36);
  EXPECT_TRUE(slow_done.load()) << "get() returned before the callback had run";
  EXPECT_EQ(got.load(), 36);
  EXPECT_TRUE(r.ready());

  std::atomic<bool> failed{false};
  std::string what;
  mp::AsyncCallbacks<int> on_error{[&](const int&) { ADD_FAILURE() << "callback on a failure"; },
                                   [&](std::exception_ptr e) {
                                     try {
                                       std::rethrow_exception(e);
                                     } catch (const troupe::KeyError& k) {
                                       what = k.what();
                                     } catch (...) {
                                     }
                                     failed = true;
                                   }};
  auto bad = pool.apply_async(on_error, raising, 7);
  bad.wait(30s);
  EXPECT_TRUE(failed.load());
  EXPECT_THAT(what, HasSubstr("key 7"));
  EXPECT_THROW(bad.get(), troupe::KeyError);

  std::vector<int> all;
  mp::AsyncCallbacks<std::vector<int>> gather{[&](const std::vector<int>& v) { all = v; }, {}};
  EXPECT_EQ(pool.map_async(sqr, views::iota(0, 20), 3, gather).get(30s), squares(20));
  EXPECT_EQ(all, squares(20));
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
  std::vector<int> products;
  mp::AsyncCallbacks<std::vector<int>> keep{[&](const std::vector<int>& v) { products = v; }, {}};
  pool.starmap_async(mul, pairs, std::nullopt, keep).wait();
  EXPECT_EQ(products, (std::vector<int>{2, 12}));

  mp::AsyncCallbacks<int> throws{[](const int&) { throw troupe::ValueError("callback raised"); },
                                 {}};
  EXPECT_EQ(pool.apply_async(throws, sqr, 2).get(30s), 4);  // logged; the result stands
  EXPECT_EQ(pool.apply(sqr, 3), 9);
}

TEST_P(ManagedPoolTest, ImapInOrderAndUnordered) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  auto it = pool.imap(sqr, views::iota(0, 10));
  EXPECT_EQ(it._token().typeid_, "Iterator");
  std::vector<int> got;
  for (int v : it) got.push_back(v);
  EXPECT_EQ(got, squares(10));
  EXPECT_EQ(it.next(), std::nullopt);  // and at every call after
  EXPECT_THROW((void)it._callmethod<std::vector<std::byte>>("__next__"), troupe::StopIteration);
  got.clear();
  for (int v : pool.imap(sqr, views::iota(0, 50), 4)) got.push_back(v);
  EXPECT_EQ(got, squares(50));
  std::multiset<int> unordered;
  for (int v : pool.imap_unordered(sqr, views::iota(0, 30), 3)) unordered.insert(v);
  auto want = squares(30);
  EXPECT_EQ(unordered, std::multiset<int>(want.begin(), want.end()));
}

// An imap's results read to the end (at most `limit`), and how many KeyErrors it raised.
template <class It>
std::pair<std::vector<int>, int> drain(const It& it, int limit) {
  std::vector<int> got;
  int errors = 0;
  for (int i = 0; i < limit; ++i) {
    try {
      auto v = it.next(30s);
      if (!v) break;
      got.push_back(*v);
    } catch (const troupe::KeyError&) {
      ++errors;
    }
  }
  return {got, errors};
}

TEST_P(ManagedPoolTest, ImapFailingChunkRaisesOnceThenGoesOnOrEnds) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  auto [got, errors] = drain(pool.imap(raising, views::iota(0, 10)), 20);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 8, 9}));
  // With chunks of several elements the results end at the failed chunk (as Python's), and
  // stay ended when asked again.
  auto chunked = pool.imap(raising, views::iota(0, 20), 3);
  std::tie(got, errors) = drain(chunked, 30);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(chunked.next(30s), std::nullopt);
}

TEST_P(ManagedPoolTest, ImapNextWithATimeout) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(1);
  auto it = pool.imap(sleep_ms, std::vector<int>{300, 1});
  EXPECT_THROW((void)it.next(10ms), mp::TimeoutError);
  EXPECT_EQ(it.next(30s), 300);  // nothing was lost to the timeout
  EXPECT_EQ(it.next(30s), 1);
  EXPECT_EQ(it.next(30s), std::nullopt);
}

TEST_P(ManagedPoolTest, CloseJoinTerminate) {
  mm::SyncManager m(options());
  m.start();
  {
    auto pool = m.Pool(2);
    EXPECT_THROW(pool.join(), troupe::ValueError);  // "Pool is still running"
    auto r = pool.apply_async(sleep_ms, 100);
    pool.close();
    try {
      pool.apply(sqr, 1);
      FAIL() << "no ValueError";
    } catch (const troupe::ValueError& e) {
      EXPECT_THAT(e.what(), HasSubstr("Pool not running"));
    }
    pool.join();  // returns once the submitted task is done
    EXPECT_TRUE(r.ready());
    EXPECT_EQ(r.get(0s), 100);
  }
  {
    auto pool = m.Pool(1);
    auto r = pool.apply_async(sleep_ms, 20000);
    std::this_thread::sleep_for(100ms);
    const auto t0 = std::chrono::steady_clock::now();
    pool.terminate();
    pool.join();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s);
    EXPECT_THROW(r.get(30s), mp::ProcessError);  // fails: Python's would hang
  }
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 0; }));
}

// _TestPool.test_empty_iterable and test_map_chunksize.
TEST_P(ManagedPoolTest, EmptyIterables) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(1);
  const std::vector<int> none;
  EXPECT_EQ(pool.map(sqr, none), none);
  EXPECT_EQ(pool.map_async(sqr, none, 1).get(30s), none);
  EXPECT_EQ(pool.imap(sqr, none).next(), std::nullopt);
  EXPECT_EQ(pool.imap_unordered(sqr, none).next(), std::nullopt);
  EXPECT_EQ(pool.starmap(mul, std::vector<std::tuple<int, int>>{}), none);
  pool.close();
  pool.join();
}

// _TestPool.test_terminate: ten thousand long tasks queued, terminate() and join() return.
TEST_P(ManagedPoolTest, TerminateWithManyQueued) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  auto r = pool.map_async(sleep_ms, std::vector<int>(10000, 300000), 1);
  std::this_thread::sleep_for(200ms);
  pool.terminate();
  pool.join();
  EXPECT_THROW((void)r.get(30s), mp::ProcessError);
}

// _TestPool.test_map_no_failfast: map fails with the task's error; close() and join() then wait
// for the other task.
TEST_P(ManagedPoolTest, JoinWaitsForTheTasksLeftAfterAFailure) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  EXPECT_THROW((void)pool.map(raising, std::vector<int>{7, 0}, 1), troupe::KeyError);
  auto slow = pool.apply_async(sleep_ms, 200);
  pool.close();
  pool.join();
  EXPECT_TRUE(slow.ready());
}

// Python 3.8+'s MapResult is ready only once every chunk is done, the failed ones too
// (test_map_no_failfast): a failure does not make it ready while another chunk still runs; get()
// then raises the failure.
TEST_P(ManagedPoolTest, AMapWithAFailureIsReadyOnlyWhenEveryChunkIsDone) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  auto r = pool.map_async(raise_or_sleep, std::vector<int>{7, 2000}, 1);
  r.wait(500ms);  // 7 failed at once (most likely by now); 2000 still sleeps
  EXPECT_FALSE(r.ready());
  EXPECT_THROW((void)r.get(60s), troupe::KeyError);
  EXPECT_TRUE(r.ready());
  EXPECT_FALSE(r.successful());
}

TEST_P(ManagedPoolTest, PoolProxyInAChild) {
  if (skip_fork()) GTEST_SKIP() << "TSan: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  mp::Process p(child_options(), &use_pool_in_child, pool);
  p.start();
  p.join(60s);
  EXPECT_EQ(p.exitcode(), 0);
  pool.join();                                           // the child terminated it
  EXPECT_THROW(pool.apply(sqr, 1), troupe::ValueError);  // "Pool not running"
}

TEST_P(ManagedPoolTest, KilledWorkerFailsItsTaskAndThePoolGoesOn) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(2);
  try {
    (void)pool.map(kill_self_at, views::iota(0, 10), 1);
    FAIL() << "no ProcessError";
  } catch (const mp::ProcessError& e) {
    EXPECT_THAT(e.what(), HasSubstr("SIGKILL"));
  }
  EXPECT_EQ(pool.apply(sqr, 4), 16);  // a new worker took the dead one's place
}

TEST_P(ManagedPoolTest, InitializerAndOptions) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool({.processes = 1, .initializer = {set_base, 100}});
  EXPECT_EQ(pool.apply(add_base, 1), 101);
  auto per_task = m.Pool({.processes = 1, .maxtasksperchild = 1});
  std::set<int> pids;
  for (int i = 0; i < 3; ++i) pids.insert(per_task.apply(pid_of, i));
  EXPECT_EQ(pids.size(), 3u);  // a new worker per task
  EXPECT_THROW(m.Pool(0), troupe::multiprocessing::RemoteError);
  EXPECT_THROW(m.Pool(100000), troupe::multiprocessing::RemoteError);  // bounded
  EXPECT_THROW(m.Pool({.maxtasksperchild = 0}), troupe::multiprocessing::RemoteError);
}

// CPython's test_pool_initializer, with the manager's Pool: the workers start when the pool is
// made, and each runs the initializer though no task ever comes.
TEST_P(ManagedPoolTest, InitializerRunsWithoutATask) {
  mm::SyncManager m(options());
  m.start();
  auto ns = m.Namespace();
  ns.set("test", 0);
  auto pool = m.Pool({.processes = 1, .initializer = {note_start, ns}});
  pool.close();
  pool.join();
  EXPECT_EQ(ns.get<int>("test"), 1);
}

TEST_P(ManagedPoolTest, BadTasksAreRefusedByName) {
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(1);
  EXPECT_THROW(pool.apply(unregistered, 1), troupe::ValueError);  // caught on this side
  try {  // a client that names a function the server does not have
    pool._callmethod("apply", std::string("no_such_function"),
                     troupe::to_bytes(std::tuple<int>(1)));
    FAIL() << "no ValueError";
  } catch (const troupe::ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no_such_function"));
    EXPECT_THAT(e.what(), HasSubstr("TROUPE_ENTRY"));
  }
  try {  // arguments that are not the function's
    pool._callmethod("apply", std::string("sqr"), troupe::to_bytes(std::string("seven")));
    FAIL() << "no error";
  } catch (const troupe::TypeError& e) {  // the worker's, naming the types
    EXPECT_THAT(e.what(), HasSubstr("tuple<i32>"));
  }
  EXPECT_THROW(pool._callmethod("apply", 1, 2), troupe::TypeError);
  EXPECT_EQ(pool.apply(sqr, 6), 36);  // still serving
}

TEST_P(ManagedPoolTest, DroppedPoolIsTerminatedAndReleased) {
  mm::SyncManager m(options());
  m.start();
  std::optional<mm::AsyncResultProxy<int>> r;
  {
    auto pool = m.Pool(1);
    r = pool.apply_async(sleep_ms, 20000);
    std::this_thread::sleep_for(100ms);
  }
  // The result holds its own reference; the pool's last proxy is gone, so it was terminated.
  EXPECT_THROW(r->get(30s), mp::ProcessError);
  r.reset();
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 0; }));
}

TEST_P(ManagedPoolTest, AsyncResultTravelsToAChild) {
  if (skip_fork()) GTEST_SKIP() << "TSan: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto pool = m.Pool(1);
  auto r = pool.apply_async(sqr, 9);
  mp::Process p(child_options(), &get_in_child, r);
  p.start();
  p.join(60s);
  EXPECT_EQ(p.exitcode(), 0);
}

// Kills the descendants of `pid` (a test that failed would otherwise wait for them for ever;
// a managed Pool's workers are the forkserver's children).
void kill_descendants(pid_t pid) {
  std::error_code ec;
  for (const auto& task :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(task.path() / "children");
    for (pid_t child; in >> child;) {
      kill_descendants(child);
      ::kill(child, SIGKILL);
    }
  }
}

// A managed Pool on a server that runs on a user's io_context with one thread: join() and
// terminate() hold no thread while the workers end. Here join() comes while the worker's
// initializer still sleeps before it calls the same server: a join that waited for the workers
// on the io_context's only thread would wait for itself (the worker's connect then times out
// and its initializer is lost).
TEST_F(ManagedPoolOnAUserExecutorTest, JoinAndTerminateLetTheWorkersCallTheServer) {
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  struct Join {  // after the server's stop (declared after this), however the test ends
    decltype(work)& w;
    std::thread& t;
    ~Join() {
      w.reset();
      t.join();
    }
  } join_runner{work, runner};
  mm::ServerOptions so;
  so.listener.authkey = mp::current_process().authkey();
  mm::Server server(mm::SyncManager::registry(), std::nullopt, so, io.get_executor());
  server.start();
  mm::ManagerOptions o;
  o.address = server.address();
  mm::SyncManager m(o);
  m.connect();
  auto ns = m.Namespace();
  for (bool terminate : {false, true}) {
    SCOPED_TRACE(terminate ? "terminate" : "join");
    ns.set("test", 0);
    auto pool = m.Pool({.processes = 1, .initializer = {note_start_later, ns}});
    auto ended = std::async(std::launch::async, [&] {
      if (terminate) {
        pool.terminate();
      } else {
        pool.close();
        pool.join();
      }
    });
    if (ended.wait_for(60s) != std::future_status::ready) {
      kill_descendants(::getpid());  // so that the io_context's thread and the test can end
      ended.wait();
      ADD_FAILURE() << "the pool's workers waited for the server's only thread, which waited "
                       "for them";
      break;
    }
    EXPECT_NO_THROW(ended.get());
    // Still serving; after join() the initializer ran (terminate() may come before it ends).
    const int test = ns.get<int>("test");
    if (!terminate) {
      EXPECT_EQ(test, 1);
    }
  }
  // A pool dropped (its last proxy): terminated by the server's thread that takes the decref,
  // which must not wait for the workers to end: here the worker ignores SIGTERM until it has
  // called the same server again.
  ns.set("test", 0);
  {
    auto pool = m.Pool({.processes = 1, .initializer = {note_start_ignoring_terminate, ns}});
    ASSERT_TRUE(troupe::testing::eventually([&] { return ns.get<int>("test") >= 1; }, 60s));
  }
  auto noted = std::async(std::launch::async, [&] {
    return troupe::testing::eventually([&] { return ns.get<int>("test") == 2; }, 30s);
  });
  if (noted.wait_for(60s) != std::future_status::ready) {
    kill_descendants(::getpid());
    noted.wait();
    ADD_FAILURE() << "the server's only thread waited for the dropped pool's worker, which "
                     "waited for it";
    return;
  }
  EXPECT_TRUE(noted.get());
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 1; }, 30s));
}

// The server's start method (its pool's workers start with forkserver, Pool's default).
INSTANTIATE_TEST_SUITE_P(StartMethods, ManagedPoolTest, ::testing::Values("fork", "spawn"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace managed_pool_test
