// test/support/async_rules.hpp — checks of Asio's rules for an async_ member (doc/async.md):
// the handler never runs inside the initiating call, with each kind of completion token; and a
// terminal per-operation cancellation ends a wait with operation_aborted.
#pragma once

#include <chrono>
#include <future>
#include <optional>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/system/system_error.hpp>
#include <gtest/gtest.h>

namespace troupe::testing {

// Runs `start(token)` three times — a callback, use_future and use_awaitable, each bound to
// `io` — and checks that nothing completes inside the call, and that each completes once `io`
// runs. `start` launches the operation anew each time (what it needs is made by `prepare`).
template <class Prepare, class Start>
void never_inline(boost::asio::io_context& io, Prepare prepare, Start start) {
  {  // a callback: it must not have run when the initiating call returns
    prepare();
    bool ran = false;
    bool inside = true;
    start(boost::asio::bind_executor(io, [&](auto&&...) {
      EXPECT_FALSE(inside) << "the callback ran inside the initiating call";
      ran = true;
    }));
    inside = false;
    EXPECT_FALSE(ran) << "the callback ran inside the initiating call";
    io.restart();
    io.run();
    EXPECT_TRUE(ran) << "the callback never ran";
  }
  {  // use_future: the future is not ready when the call returns
    prepare();
    auto f = start(boost::asio::bind_executor(io, boost::asio::use_future));
    EXPECT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
        << "the future was made ready inside the initiating call";
    io.restart();
    io.run();
    EXPECT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  }
  {  // use_awaitable: the coroutine resumes only after work posted before it waited
    prepare();
    bool posted_ran = false;
    bool resumed = false;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          boost::asio::post(io, [&] { posted_ran = true; });
          try {
            co_await start(boost::asio::use_awaitable);
          } catch (const boost::system::system_error&) {  // the error it completes with
          }
          EXPECT_TRUE(posted_ran) << "the coroutine resumed inside the initiating call";
          resumed = true;
        },
        boost::asio::detached);
    io.restart();
    io.run();
    EXPECT_TRUE(resumed);
  }
}

// Starts `start(token)` with a handler bound to a cancellation slot, emits a terminal
// cancellation once it waits, and checks it ends with operation_aborted.
template <class Start>
void cancels(boost::asio::io_context& io, Start start) {
  boost::asio::cancellation_signal cancel;
  std::optional<boost::system::error_code> got;
  start(boost::asio::bind_cancellation_slot(
      cancel.slot(),
      boost::asio::bind_executor(io, [&](boost::system::error_code ec, auto&&...) { got = ec; })));
  io.restart();
  io.poll();  // it waits now
  EXPECT_FALSE(got) << "completed before it was cancelled";
  cancel.emit(boost::asio::cancellation_type::terminal);
  for (int i = 0; i < 1000 && !got; ++i) io.run_one_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, boost::asio::error::operation_aborted) << got->message();
}

}  // namespace troupe::testing
