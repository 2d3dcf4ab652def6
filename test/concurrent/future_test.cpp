#include "troupe/concurrent/futures/future.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <gmock/gmock.h>

#include "troupe/errors.hpp"
#include "troupe/threading/thread.hpp"

#include "leak_check.hpp"

// The behaviours of CPython's Lib/test/test_concurrent_futures/test_future.py, test_wait.py and
// test_as_completed.py, on futures set by hand.
namespace troupe::concurrent::futures {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

class FutureTest : public troupe::testing::LeakCheck {};

Future<int> pending() {
  return Future<int>();
}
Future<int> running() {
  Future<int> f;
  EXPECT_TRUE(f.set_running_or_notify_cancel());
  return f;
}
Future<int> cancelled() {
  Future<int> f;
  EXPECT_TRUE(f.cancel());
  return f;
}
Future<int> exception_future() {
  Future<int> f;
  f.set_exception(std::make_exception_ptr(troupe::OSError(EIO, "oops")));
  return f;
}
Future<int> successful(int v = 42) {
  Future<int> f;
  f.set_result(v);
  return f;
}

TEST_F(FutureTest, DoneCallbackWithResult) {
  int seen = 0;
  Future<int> f;
  f.add_done_callback([&](const Future<int>& g) { seen = g.result(); });
  EXPECT_EQ(seen, 0);
  f.set_result(5);
  EXPECT_EQ(seen, 5);
}

TEST_F(FutureTest, DoneCallbackWithException) {
  std::string seen;
  Future<int> f;
  f.add_done_callback([&](const Future<int>& g) {
    try {
      std::rethrow_exception(g.exception());
    } catch (const ValueError& e) {
      seen = e.what();
    }
  });
  f.set_exception(ValueError("test"));
  EXPECT_EQ(seen, "test");
}

TEST_F(FutureTest, DoneCallbackWithCancel) {
  bool was_cancelled = false;
  Future<int> f;
  f.add_done_callback([&](const Future<int>& g) { was_cancelled = g.cancelled(); });
  EXPECT_TRUE(f.cancel());
  EXPECT_TRUE(was_cancelled);
}

TEST_F(FutureTest, DoneCallbackRaisesIsReportedAndOthersStillRun) {
  bool raising_called = false, fn_called = false;
  Future<int> f;
  f.add_done_callback([&](const Future<int>&) {
    raising_called = true;
    throw std::runtime_error("doh!");
  });
  f.add_done_callback([&](const Future<int>&) { fn_called = true; });
  ::testing::internal::CaptureStderr();
  f.set_result(5);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(raising_called);
  EXPECT_TRUE(fn_called);
  EXPECT_THAT(err, HasSubstr("exception calling callback for <Future at"));
  EXPECT_THAT(err, HasSubstr("std::runtime_error: doh!"));
}

TEST_F(FutureTest, DoneCallbackAlreadyDoneRunsAtOnce) {
  int v = 0;
  successful(5).add_done_callback([&](const Future<int>& g) { v = g.result(); });
  EXPECT_EQ(v, 5);
  bool failed = false;
  exception_future().add_done_callback([&](const Future<int>& g) { failed = !!g.exception(); });
  EXPECT_TRUE(failed);
  bool was_cancelled = false;
  cancelled().add_done_callback([&](const Future<int>& g) { was_cancelled = g.cancelled(); });
  EXPECT_TRUE(was_cancelled);
}

TEST_F(FutureTest, CallbackThatRaisesWhenAlreadyDoneIsReported) {
  ::testing::internal::CaptureStderr();
  successful().add_done_callback([](const Future<int>&) { throw ValueError("late"); });
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("ValueError: late"));
}

TEST_F(FutureTest, Repr) {
  EXPECT_THAT(pending().repr(), MatchesRegex("<Future at 0x[0-9a-f]+ state=pending>"));
  EXPECT_THAT(running().repr(), MatchesRegex("<Future at 0x[0-9a-f]+ state=running>"));
  EXPECT_THAT(cancelled().repr(), MatchesRegex("<Future at 0x[0-9a-f]+ state=cancelled>"));
  EXPECT_THAT(exception_future().repr(),
              MatchesRegex("<Future at 0x[0-9a-f]+ state=finished raised troupe::OSError>"));
  EXPECT_THAT(successful().repr(),
              MatchesRegex("<Future at 0x[0-9a-f]+ state=finished returned int>"));
  Future<void> v;
  v.set_result();
  EXPECT_THAT(v.repr(), MatchesRegex("<Future at 0x[0-9a-f]+ state=finished returned None>"));
}

TEST_F(FutureTest, Cancel) {
  auto f1 = pending(), f2 = running(), f3 = cancelled(), f4 = exception_future(), f5 = successful();
  EXPECT_TRUE(f1.cancel());
  EXPECT_EQ(f1.state(), State::cancelled);
  EXPECT_FALSE(f2.cancel());
  EXPECT_EQ(f2.state(), State::running);
  EXPECT_TRUE(f3.cancel());
  EXPECT_EQ(f3.state(), State::cancelled);
  EXPECT_FALSE(f4.cancel());
  EXPECT_EQ(f4.state(), State::finished);
  EXPECT_FALSE(f5.cancel());
  EXPECT_EQ(f5.state(), State::finished);
}

TEST_F(FutureTest, StateQueries) {
  EXPECT_FALSE(pending().cancelled());
  EXPECT_FALSE(running().cancelled());
  EXPECT_TRUE(cancelled().cancelled());
  EXPECT_FALSE(exception_future().cancelled());
  EXPECT_FALSE(successful().cancelled());

  EXPECT_FALSE(pending().done());
  EXPECT_FALSE(running().done());
  EXPECT_TRUE(cancelled().done());
  EXPECT_TRUE(exception_future().done());
  EXPECT_TRUE(successful().done());

  EXPECT_FALSE(pending().running());
  EXPECT_TRUE(running().running());
  EXPECT_FALSE(cancelled().running());
  EXPECT_FALSE(exception_future().running());
  EXPECT_FALSE(successful().running());
}

TEST_F(FutureTest, ResultWithTimeout) {
  EXPECT_THROW(pending().result(0s), TimeoutError);
  EXPECT_THROW(running().result(0s), TimeoutError);
  EXPECT_THROW(cancelled().result(0s), CancelledError);
  EXPECT_THROW(exception_future().result(0s), troupe::OSError);
  EXPECT_EQ(successful().result(0s), 42);
  EXPECT_THROW(pending().result(-1s), TimeoutError);
  // A timeout waits that long at least.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(pending().result(50ms), TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
}

TEST_F(FutureTest, ResultWithSuccessFromAnotherThread) {
  Future<int> f;
  threading::Thread t([f]() mutable {
    std::this_thread::sleep_for(20ms);
    f.set_result(42);
  });
  t.start();
  EXPECT_EQ(f.result(5s), 42);
  t.join();
}

TEST_F(FutureTest, ResultWithCancelFromAnotherThread) {
  Future<int> f;
  threading::Thread t([f]() mutable {
    std::this_thread::sleep_for(20ms);
    f.cancel();
  });
  t.start();
  EXPECT_THROW(f.result(5s), CancelledError);
  t.join();
}

TEST_F(FutureTest, ManyWaitersAllWoken) {
  Future<std::string> f;
  std::atomic<int> got{0};
  std::vector<std::unique_ptr<threading::Thread>> ts;
  for (int i = 0; i < 4; ++i) {
    ts.push_back(std::make_unique<threading::Thread>([f, &got] {
      if (f.result() == "x") ++got;
    }));
    ts.back()->start();
  }
  std::this_thread::sleep_for(20ms);
  f.set_result("x");
  for (auto& t : ts) t->join();
  EXPECT_EQ(got, 4);
}

TEST_F(FutureTest, ExceptionWithTimeout) {
  EXPECT_THROW(pending().exception(0s), TimeoutError);
  EXPECT_THROW(running().exception(0s), TimeoutError);
  EXPECT_THROW(cancelled().exception(0s), CancelledError);
  EXPECT_TRUE(exception_future().exception(0s));
  EXPECT_FALSE(successful().exception(0s));
}

TEST_F(FutureTest, ExceptionWithSuccessFromAnotherThread) {
  Future<int> f;
  threading::Thread t([f]() mutable {
    std::this_thread::sleep_for(20ms);
    f.set_exception(troupe::OSError(EIO, "late"));
  });
  t.start();
  EXPECT_TRUE(f.exception(5s));
  t.join();
}

TEST_F(FutureTest, MultipleSetResultIsInvalidState) {
  Future<int> f;
  f.set_result(1);
  try {
    f.set_result(2);
    FAIL() << "no InvalidStateError";
  } catch (const InvalidStateError& e) {
    EXPECT_THAT(e.what(), MatchesRegex("FINISHED: <Future at 0x[0-9a-f]+ state=finished "
                                       "returned int>"));
  }
  EXPECT_TRUE(f.done());
  EXPECT_EQ(f.result(), 1);
}

TEST_F(FutureTest, MultipleSetExceptionIsInvalidState) {
  Future<int> f;
  f.set_exception(ValueError("a"));
  EXPECT_THROW(f.set_exception(ValueError("b")), InvalidStateError);
  EXPECT_THROW(f.set_result(3), InvalidStateError);
  EXPECT_TRUE(f.done());
  EXPECT_THROW(f.result(), ValueError);
  auto c = cancelled();
  EXPECT_THROW(c.set_result(1), InvalidStateError);
}

TEST_F(FutureTest, SetRunningOrNotifyCancel) {
  Future<int> f;
  EXPECT_TRUE(f.set_running_or_notify_cancel());
  EXPECT_TRUE(f.running());
  EXPECT_THROW(f.set_running_or_notify_cancel(), RuntimeError);
  auto c = cancelled();
  EXPECT_FALSE(c.set_running_or_notify_cancel());
  EXPECT_THROW(c.set_running_or_notify_cancel(), RuntimeError);
  EXPECT_THROW(successful().set_running_or_notify_cancel(), RuntimeError);
}

TEST_F(FutureTest, ResultIsSharedByCopies) {
  Future<std::vector<int>> f;
  auto g = f;
  f.set_result(std::vector<int>{1, 2, 3});
  EXPECT_EQ(g.result().size(), 3u);
  EXPECT_TRUE(f == g);
  EXPECT_FALSE(f == Future<std::vector<int>>());
}

TEST_F(FutureTest, MoveOnlyResult) {
  Future<std::unique_ptr<int>> f;
  f.set_result(std::make_unique<int>(7));
  EXPECT_EQ(*f.result(), 7);
}

TEST_F(FutureTest, AsyncResultOnAnIoContext) {
  boost::asio::io_context io;
  Future<int> f;
  int got = 0;
  f.async_result(boost::asio::bind_executor(io, [&](std::exception_ptr e, int v) {
    EXPECT_FALSE(e);
    got = v;
  }));
  EXPECT_EQ(io.poll(), 0u);  // pending: nothing to run yet (the work guard keeps io alive)
  threading::Thread t([f]() mutable { f.set_result(9); });
  t.start();
  io.run();  // returns once the handler has run
  t.join();
  EXPECT_EQ(got, 9);
}

TEST_F(FutureTest, AsyncResultCarriesExceptionsAndCancellation) {
  boost::asio::io_context io;
  std::string seen;
  Future<int> failing;
  failing.async_result(boost::asio::bind_executor(io, [&](std::exception_ptr e, int) {
    try {
      std::rethrow_exception(e);
    } catch (const ValueError& x) {
      seen += std::string("value:") + x.what();
    }
  }));
  failing.set_exception(ValueError("bad"));
  Future<void> c;
  c.async_result(boost::asio::bind_executor(io, [&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const CancelledError&) {
      seen += " cancelled";
    }
  }));
  EXPECT_TRUE(c.cancel());
  io.run();
  EXPECT_EQ(seen, "value:bad cancelled");
}

TEST_F(FutureTest, AsyncResultUseFuture) {
  boost::asio::io_context io;
  Future<std::string> f;
  std::future<std::string> sf =
      f.async_result(boost::asio::bind_executor(io, boost::asio::use_future));
  f.set_result("hi");
  io.run();
  EXPECT_EQ(sf.get(), "hi");
}

TEST_F(FutureTest, AsyncResultUseAwaitable) {
  boost::asio::io_context io;
  Future<int> ok;
  Future<int> bad;
  std::string seen;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        int v = co_await ok.async_result(boost::asio::use_awaitable);
        seen += std::to_string(v);
        try {
          (void)co_await bad.async_result(boost::asio::use_awaitable);
        } catch (const ValueError& e) {
          seen += std::string(" ") + e.what();
        }
      },
      boost::asio::detached);
  threading::Thread t([ok, bad]() mutable {
    ok.set_result(3);
    bad.set_exception(ValueError("nope"));
  });
  t.start();
  io.run();
  t.join();
  EXPECT_EQ(seen, "3 nope");
}

// ---------------------------------------------------------------------------------------------
// wait()

TEST_F(FutureTest, WaitFirstCompleted) {
  auto f1 = pending();
  Future<int> f2;
  threading::Thread t([f2]() mutable {
    std::this_thread::sleep_for(20ms);
    f2.set_result(1);
  });
  t.start();
  std::vector<Future<int>> fs{f1, f2};
  auto r = wait(fs, 5s, FIRST_COMPLETED);
  t.join();
  ASSERT_EQ(r.done.size(), 1u);
  EXPECT_TRUE(r.done[0] == f2);
  ASSERT_EQ(r.not_done.size(), 1u);
  EXPECT_TRUE(r.not_done[0] == f1);
}

TEST_F(FutureTest, WaitFirstCompletedSomeAlreadyCompleted) {
  auto f1 = pending(), c = cancelled(), s = successful();
  std::vector<Future<int>> fs{f1, c, s};
  auto r = wait(fs, 5s, FIRST_COMPLETED);
  EXPECT_EQ(r.done.size(), 2u);
  EXPECT_EQ(r.not_done.size(), 1u);
}

TEST_F(FutureTest, WaitFirstException) {
  auto f1 = successful(), p = pending();
  Future<int> f2;
  threading::Thread t([f2]() mutable {
    std::this_thread::sleep_for(20ms);
    f2.set_exception(ValueError("x"));
  });
  t.start();
  std::vector<Future<int>> fs{f1, f2, p};
  auto r = wait(fs, 5s, FIRST_EXCEPTION);
  t.join();
  EXPECT_EQ(r.done.size(), 2u);
  ASSERT_EQ(r.not_done.size(), 1u);
  EXPECT_TRUE(r.not_done[0] == p);
}

TEST_F(FutureTest, WaitFirstExceptionOneAlreadyFailed) {
  auto p = pending(), e = exception_future();
  std::vector<Future<int>> fs{p, e};
  auto r = wait(fs, 5s, FIRST_EXCEPTION);
  ASSERT_EQ(r.done.size(), 1u);
  EXPECT_TRUE(r.done[0] == e);
}

TEST_F(FutureTest, WaitFirstExceptionReturnsWhenAllDoneWithoutOne) {
  auto s = successful();
  Future<int> f;
  threading::Thread t([f]() mutable {
    std::this_thread::sleep_for(20ms);
    f.set_result(2);
  });
  t.start();
  std::vector<Future<int>> fs{s, f};
  auto r = wait(fs, 5s, FIRST_EXCEPTION);
  t.join();
  EXPECT_EQ(r.done.size(), 2u);
  EXPECT_TRUE(r.not_done.empty());
}

TEST_F(FutureTest, WaitAllCompletedAcrossTypes) {
  Future<int> a;
  Future<std::string> b;
  Future<void> c;
  threading::Thread t([a, b, c]() mutable {
    std::this_thread::sleep_for(10ms);
    a.set_result(1);
    b.set_exception(ValueError("b"));
    c.cancel();
  });
  t.start();
  std::vector<AnyFuture> fs{a, b, c, a};  // a twice: once in the result
  auto r = wait(fs, 5s);
  t.join();
  EXPECT_EQ(r.done.size(), 3u);
  EXPECT_TRUE(r.not_done.empty());
}

TEST_F(FutureTest, WaitTimeout) {
  auto s = successful(), p = pending();
  std::vector<Future<int>> fs{s, p};
  const auto t0 = std::chrono::steady_clock::now();
  auto r = wait(fs, 50ms, ALL_COMPLETED);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  ASSERT_EQ(r.done.size(), 1u);
  EXPECT_TRUE(r.done[0] == s);
  ASSERT_EQ(r.not_done.size(), 1u);
  EXPECT_TRUE(r.not_done[0] == p);
}

TEST_F(FutureTest, WaitOnNothingReturnsAtOnce) {
  std::vector<Future<int>> none;
  auto r = wait(none);
  EXPECT_TRUE(r.done.empty());
  EXPECT_TRUE(r.not_done.empty());
  auto r2 = wait(none, {}, FIRST_COMPLETED);
  EXPECT_TRUE(r2.done.empty());
}

// ---------------------------------------------------------------------------------------------
// as_completed()

TEST_F(FutureTest, AsCompletedDoneFirstThenInFinishingOrder) {
  auto s = successful(1), c = cancelled();
  Future<int> late1, late2;
  threading::Thread t([late1, late2]() mutable {
    std::this_thread::sleep_for(20ms);
    late2.set_result(3);
    std::this_thread::sleep_for(5ms);
    late1.set_result(2);
  });
  t.start();
  std::vector<Future<int>> fs{late1, s, late2, c, s};
  std::vector<Future<int>> seen;
  for (const auto& f : as_completed(fs, 5s)) seen.push_back(f);
  t.join();
  ASSERT_EQ(seen.size(), 4u);  // s once
  EXPECT_TRUE(seen[0] == s);
  EXPECT_TRUE(seen[1] == c);
  EXPECT_TRUE(seen[2] == late2);
  EXPECT_TRUE(seen[3] == late1);
}

TEST_F(FutureTest, AsCompletedTimesOutWithPythonsMessage) {
  auto s = successful(), e = exception_future(), p1 = pending(), p2 = pending();
  std::vector<Future<int>> fs{s, e, p1, p2};
  std::vector<Future<int>> seen;
  try {
    for (const auto& f : as_completed(fs, 0s)) seen.push_back(f);
    FAIL() << "no TimeoutError";
  } catch (const TimeoutError& err) {
    EXPECT_STREQ(err.what(), "2 (of 4) futures unfinished");
  }
  EXPECT_EQ(seen.size(), 2u);
}

TEST_F(FutureTest, AsCompletedRemovesItsWaiterWhenAbandoned) {
  auto p = pending();
  {
    std::vector<Future<int>> fs{p, successful()};
    auto range = as_completed(fs, 5s);
    auto it = range.begin();
    EXPECT_TRUE(it != range.end());
  }
  p.set_result(1);  // would touch a destroyed waiter if it were still installed
  EXPECT_EQ(p.result(), 1);
}

}  // namespace
}  // namespace troupe::concurrent::futures
