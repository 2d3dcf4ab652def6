// Process::async_join on every start method: it completes once the process has ended (reaped,
// exitcode set), never inside the call (an ended process included), with callbacks, use_future
// and use_awaitable; per-operation cancellation leaves the process running; misuse gives the
// codes of join()'s exceptions.
#include <signal.h>
#include <unistd.h>

#include <optional>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "async_rules.hpp"
#include "start_methods.hpp"

namespace troupe::multiprocessing {
namespace {

namespace asio = boost::asio;
using AsyncJoinTest = troupe::testing::StartMethodTest;

void exit_with(int code) {
  troupe::sys_exit(code);
}
TROUPE_ENTRY(exit_with);

void sleep_until_killed() {
  ::pause();
}
TROUPE_ENTRY(sleep_until_killed);

TEST_P(AsyncJoinTest, CompletesWhenTheProcessEnds) {
  asio::io_context io;
  Process p = start(exit_with, 3);
  p.set_executor(io.get_executor());
  std::optional<boost::system::error_code> got;
  p.async_join([&](boost::system::error_code ec) { got = ec; });
  EXPECT_FALSE(got) << "completed inside the call";
  io.run();
  ASSERT_TRUE(got);
  EXPECT_FALSE(*got) << got->message();
  EXPECT_EQ(p.exitcode(), 3);
  EXPECT_FALSE(p.is_alive());
}

TEST_P(AsyncJoinTest, NeverInlineForAnEndedProcess) {
  asio::io_context io;
  std::optional<Process> p;
  troupe::testing::never_inline(
      io,
      [&] {
        p.emplace(start(exit_with, 0));
        p->set_executor(io.get_executor());
        p->join();
      },
      [&](auto token) { return p->async_join(token); });
  EXPECT_EQ(p->exitcode(), 0);
}

TEST_P(AsyncJoinTest, CancelLeavesTheProcessRunning) {
  asio::io_context io;
  Process p = start(sleep_until_killed);
  p.set_executor(io.get_executor());
  troupe::testing::cancels(io, [&](auto token) { p.async_join(token); });
  EXPECT_TRUE(p.is_alive());
  p.kill();
  std::optional<boost::system::error_code> got;
  p.async_join([&](boost::system::error_code ec) { got = ec; });
  io.restart();
  io.run();
  ASSERT_TRUE(got);
  EXPECT_FALSE(*got) << got->message();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

TEST_P(AsyncJoinTest, MisuseGivesJoinsErrors) {
  asio::io_context io;
  Process unstarted = get_context(GetParam()).Process(exit_with, 0);
  unstarted.set_executor(io.get_executor());
  Process closed = start(exit_with, 0);
  closed.join();
  closed.close();
  closed.set_executor(io.get_executor());
  boost::system::error_code not_started, was_closed;
  unstarted.async_join([&](boost::system::error_code ec) { not_started = ec; });
  closed.async_join([&](boost::system::error_code ec) { was_closed = ec; });
  io.run();
  EXPECT_EQ(std::error_code(not_started), make_error_code(errc::process_error));
  EXPECT_EQ(std::error_code(was_closed), make_error_code(errc::value_error));
}

TROUPE_PER_START_METHOD(AsyncJoinTest);

}  // namespace
}  // namespace troupe::multiprocessing
