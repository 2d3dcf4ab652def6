// SyncManager's built-in typeids through a started manager (every start method): a managed
// Queue between processes, its waits holding no server thread, shutdown reaching blocked
// getters; Lock, RLock, Semaphore, BoundedSemaphore and Event; the containers untyped.
#include "troupe/multiprocessing/managers/sync_manager.hpp"

#include <chrono>
#include <cstdint>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/use_future.hpp>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/link.hpp"
#include "troupe/multiprocessing/managers/lane.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "async_rules.hpp"
#include "leak_check.hpp"
#include "start_method_test.hpp"

namespace sync_manager_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;

// A child process: takes numbers from `in` until a negative one, puts their squares on `out`.
void square_worker(mm::QueueProxy<std::int64_t> in, mm::QueueProxy<std::int64_t> out) {
  for (;;) {
    const auto n = in.get(true, std::chrono::seconds(60));
    if (n < 0) return;
    out.put(n * n);
  }
}
TROUPE_ENTRY(square_worker);

// A child process: waits on the event, then reports through the queue.
void wait_then_report(mm::EventProxy ev, mm::QueueProxy<std::string> out) {
  out.put(ev.wait(std::chrono::seconds(60)) ? "set" : "timeout");
}
TROUPE_ENTRY(wait_then_report);

// A child process: one get, exit 0 if it returned 7 (an EOFError or anything else fails it).
void get_seven(mm::QueueProxy<std::int64_t> q) {
  troupe::sys_exit(q.get(true, std::chrono::seconds(60)) == 7 ? 0 : 3);
}
TROUPE_ENTRY(get_seven);

namespace {

class SyncManagerTest : public troupe::testing::StartMethodTest {};

// A getter in another process that was handed the item a client put just before that client
// shut the server down gets it: the server writes the replies it holds before it closes.
TEST_P(SyncManagerTest, AGetterHandedAnItemBeforeAShutdownGetsIt) {
  if (skip_fork()) GTEST_SKIP() << "ThreadSanitizer: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<std::int64_t>();
  mp::Process child(child_options(), &get_seven, q);
  child.start();
  q.put(7);
  // Taken by the child's get (not waiting in the queue for a get still on its way).
  ASSERT_TRUE(troupe::testing::eventually([&] { return q.empty(); }, 30s));
  mm::SyncManager client({.address = m.address()});
  client.connect();
  client.shutdown();  // a client's shutdown: the server stops
  child.join(60s);
  EXPECT_EQ(child.exitcode(), 0);
}

TEST_P(SyncManagerTest, QueueBetweenProcesses) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  mm::SyncManager m(options());
  m.start();
  auto in = m.Queue<std::int64_t>();
  auto out = m.Queue<std::int64_t>();
  mp::Process p(child_options(), &square_worker, in, out);
  p.start();
  std::int64_t want = 0;
  for (std::int64_t i = 0; i < 200; ++i) {
    in.put(i);
    want += i * i;
  }
  std::int64_t got = 0;
  for (int i = 0; i < 200; ++i) got += out.get(true, 60s);
  in.put(-1);
  p.join(60s);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(got, want);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(out.qsize(), 0u);
}

TEST_P(SyncManagerTest, QueueErrorsArePythons) {
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<std::string>(1);
  EXPECT_THROW(q.get(false), troupe::queue::Empty);
  EXPECT_THROW(q.get(true, 10ms), troupe::queue::Empty);
  q.put("a");
  EXPECT_TRUE(q.full());
  EXPECT_THROW(q.put_nowait("b"), troupe::queue::Full);
  EXPECT_THROW(q.put("b", true, 10ms), troupe::queue::Full);
  EXPECT_EQ(q.get_nowait(), "a");
  q.task_done();
  EXPECT_THROW(q.task_done(), troupe::ValueError);
  q.join();  // nothing unfinished
  EXPECT_THROW(q._callmethod("no_such_method"), troupe::multiprocessing::RemoteError);
  EXPECT_THROW(q._callmethod("put"), troupe::TypeError);
}

TEST_P(SyncManagerTest, ShutdownReachesABlockedGetter) {
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<int>();
  auto getter = std::async(std::launch::async, [q] {
    try {
      (void)q.get(true, 60s);
      return std::string("got an item");
    } catch (const troupe::queue::ShutDown&) {
      return std::string("ShutDown");
    }
  });
  ASSERT_EQ(getter.wait_for(50ms), std::future_status::timeout);
  q.shutdown();
  EXPECT_EQ(getter.get(), "ShutDown");
}

TEST_P(SyncManagerTest, ManyBlockedGettersHoldNoServerThread) {
  // 64 client threads blocked in get() at once on a server with at most 4 threads: a server
  // that held a thread per waiter could not answer qsize() (nor the puts) until they timed out.
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<int>();
  std::vector<std::future<int>> getters;
  for (int i = 0; i < 64; ++i)
    getters.push_back(std::async(std::launch::async, [q] { return q.get(true, 60s); }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(q.qsize(), 0u);
  for (int i = 0; i < 64; ++i) q.put(i);
  int sum = 0;
  for (auto& g : getters) sum += g.get();
  EXPECT_EQ(sum, 63 * 64 / 2);
}

TEST_P(SyncManagerTest, QueueAsyncPutAndGetArePipelined) {
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<int>();
  boost::asio::io_context io;
  // 50 puts then 50 gets in flight at once on one connection: one lane, run in their order.
  int put_done = 0;
  std::vector<int> got;
  for (int i = 0; i < 50; ++i)
    q.async_put(i, boost::asio::bind_executor(io, [&](std::exception_ptr e, std::monostate) {
                  EXPECT_FALSE(e);
                  ++put_done;
                }));
  for (int i = 0; i < 50; ++i)
    q.async_get(boost::asio::bind_executor(io, [&](std::exception_ptr e, int v) {
      EXPECT_FALSE(e);
      got.push_back(v);
    }));
  io.run();
  EXPECT_EQ(put_done, 50);
  ASSERT_EQ(got.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], i);

  // Asio's rules: never inside the call, with a callback, use_future and use_awaitable (three
  // puts, then three gets that take them).
  troupe::testing::never_inline(
      io, [] {}, [&](auto token) { return q.async_put(7, std::move(token)); });
  troupe::testing::never_inline(
      io, [] {}, [&](auto token) { return q.async_get(std::move(token)); });
  EXPECT_EQ(q.qsize(), 0u);

  // A getter waiting on the server (no thread held there) is failed by shutdown(immediate).
  std::exception_ptr error;
  q.async_get(boost::asio::bind_executor(io, [&](std::exception_ptr e, int) { error = e; }));
  // From another thread: this one's calls run in their order, after the get that waits.
  std::thread([&] { q.shutdown(true); }).join();
  io.restart();
  io.run();
  ASSERT_TRUE(error);
  EXPECT_THROW(std::rethrow_exception(error), troupe::queue::ShutDown);
}

// A lane of its own: gets that wait there hold back none of this thread's other calls (on one
// lane the puts would queue behind them for ever), they run in their order, and the lane owns
// the locks it takes, as a thread does.
TEST_P(SyncManagerTest, ALaneOfItsOwnRunsBesideTheThreadsLane) {
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<int>();
  boost::asio::io_context io;
  const mm::Lane gets;
  EXPECT_NE(gets.id(), 0u);
  EXPECT_NE(gets.id(), mm::Lane().id());
  EXPECT_NE(gets.id(), mm::detail::current_lane());
  std::vector<int> got;
  for (int i = 0; i < 3; ++i)
    gets.run([&] {
      q.async_get(boost::asio::bind_executor(io, [&](std::exception_ptr e, int v) {
        EXPECT_FALSE(e);
        got.push_back(v);
      }));
    });
  for (int i = 1; i <= 3; ++i) {
    boost::asio::io_context puts;
    bool put = false;
    q.async_put(i, boost::asio::bind_executor(puts, [&](std::exception_ptr e, std::monostate) {
                  EXPECT_FALSE(e);
                  put = true;
                }));
    puts.run_for(30s);  // a failure is a failure, not a hang
    ASSERT_TRUE(put) << "put(" << i << ") queued behind the lane's waiting get";
  }
  io.run();
  EXPECT_EQ(got, (std::vector<int>{1, 2, 3}));

  // Scopes nest, and end where they were made.
  const std::uint64_t mine = mm::detail::current_lane();
  const mm::Lane other;
  {
    const mm::Lane::Scope a(gets);
    EXPECT_EQ(mm::detail::current_lane(), gets.id());
    other.run([&] { EXPECT_EQ(mm::detail::current_lane(), other.id()); });
    EXPECT_EQ(mm::detail::current_lane(), gets.id());
  }
  EXPECT_EQ(mm::detail::current_lane(), mine);

  auto lock = m.RLock();
  EXPECT_TRUE(lock.acquire());
  EXPECT_FALSE(gets.run([&] { return lock.acquire(false); })) << "another lane, another owner";
  EXPECT_TRUE(lock.acquire(false));  // this thread's lane: re-entrant
  lock.release();
  lock.release();
  EXPECT_TRUE(gets.run([&] { return lock.acquire(false); }));
  EXPECT_THROW(lock.release(), troupe::RuntimeError) << "the lane holds it, not this thread";
  gets.run([&] { lock.release(); });
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
}

TEST_P(SyncManagerTest, LocksAndSemaphores) {
  mm::SyncManager m(options());
  m.start();
  auto lock = m.Lock();
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.locked());
  EXPECT_FALSE(lock.acquire(true, 10ms));
  lock.release();
  // troupe's rule, not CPython's OverflowError (that is its Python clients'): a timeout past
  // TIMEOUT_MAX is forever.
  EXPECT_TRUE(lock.acquire(true, std::chrono::hours::max()));
  EXPECT_TRUE(lock.locked());
  lock.release();
  EXPECT_THROW(lock.release(), troupe::RuntimeError);
  {
    std::scoped_lock guard{lock};
    EXPECT_TRUE(lock.locked());
  }
  EXPECT_FALSE(lock.locked());

  auto rlock = m.RLock();
  EXPECT_TRUE(rlock.acquire());
  EXPECT_TRUE(rlock.acquire());  // the same lane: re-entrant
  rlock.release();
  rlock.release();
  EXPECT_THROW(rlock.release(), troupe::RuntimeError);

  auto sem = m.Semaphore(2);
  EXPECT_TRUE(sem.acquire());
  EXPECT_TRUE(sem.acquire());
  EXPECT_FALSE(sem.acquire(false));
  sem.release();
  EXPECT_TRUE(sem.acquire(false));

  auto bounded = m.BoundedSemaphore(1);
  EXPECT_THROW(bounded.release(), troupe::ValueError);
  EXPECT_THROW((void)m.Semaphore(-1), troupe::multiprocessing::RemoteError);
}

TEST_P(SyncManagerTest, EventWakesAnotherProcess) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  mm::SyncManager m(options());
  m.start();
  auto ev = m.Event();
  auto out = m.Queue<std::string>();
  EXPECT_FALSE(ev.is_set());
  EXPECT_FALSE(ev.wait(10ms));
  mp::Process p(child_options(), &wait_then_report, ev, out);
  p.start();
  ev.set();
  EXPECT_EQ(out.get(true, 60s), "set");
  p.join(60s);
  EXPECT_EQ(p.exitcode(), 0);
  ev.clear();
  EXPECT_FALSE(ev.is_set());
}

TEST_P(SyncManagerTest, ContainersUntyped) {
  mm::SyncManager m(options());
  m.start();
  auto d = m.dict();
  d._callmethod("__setitem__", std::string("a"), 1);
  d._callmethod("__setitem__", std::string("b"), 2);
  EXPECT_EQ(d._callmethod<std::int64_t>("__len__"), 2);
  EXPECT_EQ(d._callmethod<int>("get", std::string("b"), 0), 2);
  EXPECT_EQ(d._callmethod<int>("get", std::string("zz"), 7), 7);
  EXPECT_THROW(d._callmethod<int>("__getitem__", std::string("zz")), troupe::KeyError);
  const auto all = d._getvalue<std::map<std::string, int>>();
  EXPECT_EQ(all, (std::map<std::string, int>{{"a", 1}, {"b", 2}}));

  auto l = m.list();
  for (int i = 0; i < 5; ++i) l._callmethod("append", i);
  EXPECT_EQ(l._callmethod<int>("__getitem__", -1), 4);
  EXPECT_THROW(l._callmethod<int>("__getitem__", 10), troupe::IndexError);
  EXPECT_EQ(l._getvalue<std::vector<int>>(), (std::vector<int>{0, 1, 2, 3, 4}));

  auto ns = m.Namespace();
  ns._callmethod("__setattr__", std::string("x"), 10);
  EXPECT_EQ(ns._callmethod<int>("__getattribute__", std::string("x")), 10);
  EXPECT_THROW(ns._callmethod<int>("__getattribute__", std::string("y")), troupe::AttributeError);
  d = {};
  l = {};
  ns = {};
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 0; }));
}

TEST(SyncManager, ManagerReturnsAStartedOne) {
  auto m = mp::Manager();
  ASSERT_TRUE(m->process().has_value());
  auto q = m->Queue<std::string>();
  q.put("x");
  EXPECT_EQ(q.get(), "x");
  m->shutdown();
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SyncManagerTest,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sync_manager_test
