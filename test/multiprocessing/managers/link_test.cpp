// A process's link to a manager: blocking calls write and read on their own threads (one reads
// for everyone, the leader, and hands the reading on), asynchronous calls' replies are read by
// the link's thread. These cases mix the two and check that every reply reaches its caller, that
// the reading changes hands without a call left waiting, and that timeouts and a dying server
// end every kind of call.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/managers/manager.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"
#include "test_types.hpp"

namespace link_test {

// How far a completion handler on the link's thread has got: 1 inside it, 2 once it has ended.
std::atomic<int> g_handler_stage{0};

// A forked child's target: fails unless the fork came after the handler had ended.
void expect_the_handler_ended() {
  if (g_handler_stage.load() != 2)
    throw troupe::RuntimeError("forked while the link's thread was inside a handler (stage " +
                               std::to_string(g_handler_stage.load()) + ")");
}
TROUPE_ENTRY(expect_the_handler_ended);

// Forks `n` times, each child exiting at once: how many forks failed, or whose child did not
// exit 0 within 30 s (it hung in a fork handler; killed then).
int fork_and_reap(int n) {
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    if (pid < 0) return failed + n - i;
    int status = 0;
    pid_t r = 0;
    const auto reaped = [&] { return (r = ::waitpid(pid, &status, WNOHANG)) != 0; };
    if (!troupe::testing::eventually(reaped, std::chrono::seconds(30))) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    if (r != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  return failed;
}

// A process's target: two threads fork at once, again and again, while a link's thread runs
// (each fork asks it to park, and lets it go after); then the link's thread must still answer.
// glibc 2.36 lets go of its fork lock around each fork handler, so the two threads' handlers
// interleave: a fork whose parent handlers were not its own prepare's left the link's thread
// parked and the parking's lock held, and the next fork hung. `from_the_links_thread` (1): one of
// the two is the link's thread itself, in a handler (it waits for its own fork's turn while the
// other fork waits for it to park: it counts as parked there).
void forks_at_once(int from_the_links_thread) {
  managers_test::TestManager m;
  m.start();
  auto maths = m.create<managers_test::Maths>("Maths");
  const auto async_sum = [&](int a, int b) {
    boost::asio::io_context ctx;
    int sum = -1;
    maths.async_call<&managers_test::Maths::add>(
        a, b, boost::asio::bind_executor(ctx, [&](std::exception_ptr e, int r) {
          if (!e) sum = r;
        }));
    ctx.run_for(std::chrono::seconds(30));
    return sum;
  };
  if (async_sum(1, 2) != 3) throw troupe::RuntimeError("the first asynchronous call failed");
  constexpr int kForks = 40;
  std::atomic<int> failed_forks{0};
  if (!from_the_links_thread) {
    std::thread a([&] { failed_forks.fetch_add(fork_and_reap(kForks)); });
    std::thread b([&] { failed_forks.fetch_add(fork_and_reap(kForks)); });
    a.join();
    b.join();
  } else {
    std::promise<void> done;
    maths.async_call<&managers_test::Maths::add>(
        1, 2, boost::asio::bind_executor(maths._link()->executor(), [&](std::exception_ptr, int) {
          failed_forks.fetch_add(fork_and_reap(kForks));
          done.set_value();
        }));
    failed_forks.fetch_add(fork_and_reap(kForks));
    if (done.get_future().wait_for(std::chrono::seconds(60)) != std::future_status::ready)
      throw troupe::RuntimeError("the link's thread's forks did not end");
  }
  if (failed_forks.load() != 0)
    throw troupe::RuntimeError(std::to_string(failed_forks.load()) +
                               " forks failed, or their children did not exit 0 in time");
  // Each fork parked the link's thread before it went on. (When the link's thread forks too, it
  // counts as parked while it waits for its own fork's turn; a fork that asked it there, after
  // its first look, once waited out kForkParkWait.)
  if (const int n = troupe::internal::runtime::forks_without_parking(); n != 0)
    throw troupe::RuntimeError(std::to_string(n) + " of " + std::to_string(2 * kForks) +
                               " forks went on without the parking");
  // The link's thread reads asynchronous replies: it was let go after every fork.
  if (async_sum(2, 3) != 5)
    throw troupe::RuntimeError("the link's thread did not answer after the forks");
}
TROUPE_ENTRY(forks_at_once);

namespace {

using namespace std::chrono_literals;
using namespace managers_test;

class LinkTest : public troupe::testing::StartMethodTest {};

// Threads calling at once on one link: each gets its own results, in its own order.
TEST_P(LinkTest, ConcurrentBlockingCallsEachGetTheirReplies) {
  TestManager m(options());
  m.start();
  auto maths = m.create<Maths>("Maths");
  constexpr int kThreads = 8, kCalls = 300;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i)
        if (maths.call<&Maths::add>(t * 100000, i) != t * 100000 + i) ++wrong;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// A proxy held by a thread_local made before the thread's first request is destroyed after
// the thread's other thread_locals (in reverse order of construction) as the thread exits: its
// release request is still built and reaches the server (the request builder's reused segment
// has no destructor to have run by then).
TEST_P(LinkTest, AProxyReleasedAsItsThreadExitsReachesTheServer) {
  TestManager m(options());
  m.start();
  auto kept = m.create<Maths>("Maths");  // keeps the link up
  const std::size_t before = m.number_of_objects();
  std::thread t([&m] {
    thread_local std::optional<mm::Proxy<Maths>> held;
    held.emplace(m.create<Maths>("Maths"));
    EXPECT_EQ(held->call<&Maths::add>(1, 2), 3);
  });
  t.join();
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == before; }))
      << m.number_of_objects() << " objects, " << before << " before the thread";
  EXPECT_EQ(kept.call<&Maths::add>(2, 2), 4);
}

// Blocking calls while asynchronous ones are in flight on the same link, and the reverse: the
// reading passes between the link's thread and the callers many times.
TEST_P(LinkTest, BlockingAndAsynchronousCallsMixed) {
  TestManager m(options());
  m.start();
  auto maths = m.create<Maths>("Maths");
  boost::asio::io_context ctx;
  constexpr int kAsync = 2000;
  int started = 0, done = 0, wrong = 0;
  std::function<void()> next = [&] {
    const int i = started++;
    maths.async_call<&Maths::add>(
        i, 1, boost::asio::bind_executor(ctx, [&, i](std::exception_ptr e, int r) {
          ++done;
          if (e || r != i + 1) ++wrong;
          if (started < kAsync) next();
        }));
  };
  std::atomic<int> sync_wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i)
        if (maths.call<&Maths::mul>(t + 1, i) != (t + 1) * i) ++sync_wrong;
    });
  for (int k = 0; k < 16; ++k) next();
  ctx.run();
  for (auto& t : callers) t.join();
  EXPECT_EQ(done, kAsync);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(sync_wrong.load(), 0);
  // Afterwards, with nothing owed, a blocking call reads for itself again.
  EXPECT_EQ(maths.call<&Maths::add>(20, 22), 42);
}

// A blocking call that waits long (the leader, reading) does not hold up another thread's quick
// calls: their replies are read by the leader and handed to them.
TEST_P(LinkTest, AQuickCallIsNotHeldUpByASlowOne) {
  TestManager m(options());
  m.start();
  auto slow = m.create<Maths>("Maths");
  auto quick = m.create<Maths>("Maths");
  auto waiting = std::async(std::launch::async, [&] { return slow.call<&Maths::slow>(1500); });
  std::this_thread::sleep_for(100ms);  // the slow call's thread is reading by now
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(quick.call<&Maths::add>(i, i), 2 * i);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1400ms) << "the quick calls waited";
  EXPECT_EQ(waiting.get(), 1500);
}

// A leader whose server dies mid-call fails with the server named, and so do the followers and
// the asynchronous calls waiting with it; nothing waits on.
TEST_P(LinkTest, ADyingServerFailsLeaderFollowersAndAsynchronousCalls) {
  TestManager m(options());
  m.start();
  auto maths = m.create<Maths>("Maths");
  ASSERT_EQ(maths.call<&Maths::add>(1, 1), 2);
  std::vector<std::future<int>> blocked;
  for (int t = 0; t < 4; ++t)
    blocked.push_back(
        std::async(std::launch::async, [&] { return maths.call<&Maths::slow>(30000); }));
  // Its handler runs on an io_context of the test's (not Asio's system executor, whose threads
  // would stay and make a later fork refuse).
  boost::asio::io_context ctx;
  auto work = boost::asio::make_work_guard(ctx);
  std::thread runner([&] { ctx.run(); });
  std::promise<int> promised;
  auto pending = promised.get_future();
  maths.async_call<&Maths::slow>(30000,
                                 boost::asio::bind_executor(ctx, [&](std::exception_ptr e, int r) {
                                   if (e)
                                     promised.set_exception(e);
                                   else
                                     promised.set_value(r);
                                 }));
  std::this_thread::sleep_for(200ms);
  ASSERT_EQ(::kill(*m.process()->pid(), SIGKILL), 0);
  for (auto& f : blocked) {
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    EXPECT_THROW(f.get(), troupe::EOFError);
  }
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready);
  EXPECT_THROW(pending.get(), troupe::EOFError);
  EXPECT_THROW(maths.call<&Maths::add>(1, 1), troupe::EOFError);
  work.reset();
  runner.join();
}

class LinkForkTest : public troupe::testing::LeakCheck {};

// A fork waits for the link's thread to park between two handlers (ForkParking): the child is
// never forked while that thread is inside one, where it may hold a lock (the allocator's, under
// a sanitizer) that would stay held in the child for good.
TEST_F(LinkForkTest, AForkWaitsForTheLinksThreadToLeaveItsHandler) {
  if (troupe::testing::kTsanForkLimit)
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  TestManager m;
  m.start();
  auto maths = m.create<Maths>("Maths");
  g_handler_stage.store(0);
  // A handler on the link's own thread (as a managed pool's callbacks run), taking its time.
  maths.async_call<&Maths::add>(
      1, 2, boost::asio::bind_executor(maths._link()->executor(), [](std::exception_ptr, int) {
        g_handler_stage.store(1);
        std::this_thread::sleep_for(300ms);
        g_handler_stage.store(2);
      }));
  ASSERT_TRUE(troupe::testing::eventually([] { return g_handler_stage.load() >= 1; }));
  mp::ProcessOptions po;
  po.start_method = "fork";
  mp::Process child(po, &expect_the_handler_ended);
  child.start();
  EXPECT_EQ(g_handler_stage.load(), 2) << "the fork did not wait for the handler";
  child.join(60s);
  EXPECT_EQ(child.exitcode(), 0);
  // The link's thread went on after the fork.
  EXPECT_EQ(maths.call<&Maths::add>(2, 3), 5);
}

// Two threads' forks at once each end their own parking of the link's thread. In a process of
// its own, so that a hang is a failed test.
void expect_forks_at_once_end(bool from_the_links_thread) {
  if (troupe::testing::kTsanForkLimit)
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  mp::ProcessOptions po;
  po.start_method = "spawn";
  mp::Process child(po, &forks_at_once, from_the_links_thread ? 1 : 0);
  child.start();
  child.join(120s);
  if (child.is_alive()) {
    child.kill();
    child.join(30s);
    FAIL() << "a fork hung (a link's thread left parked, or the parking's lock held)";
  }
  EXPECT_EQ(child.exitcode(), 0);
}
TEST_F(LinkForkTest, TwoThreadsForkingAtOnceLetTheLinksThreadGo) {
  expect_forks_at_once_end(false);
}
// The link's thread forks, in a handler, while another thread's fork waits for it to park.
TEST_F(LinkForkTest, TheLinksThreadForkingWhileAnotherForksTakesItsTurn) {
  expect_forks_at_once_end(true);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, LinkTest, ::testing::Values("fork", "spawn"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace link_test
