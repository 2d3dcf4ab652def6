// Asio's rules for every troupe async_ member (doc/async.md): the handler never runs inside the
// initiating call, whether the operation waits or completes at once (an immediate result, a
// closed connection or listener, an ended child, a finished future), with callbacks, use_future
// and use_awaitable; and per-operation cancellation ends a wait with operation_aborted.
#include "async_rules.hpp"

#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <gtest/gtest.h>

#include "troupe/concurrent/futures/future.hpp"
#include "troupe/detail/async.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/subprocess/popen.hpp"

#include "byte_text.hpp"
#include "leak_check.hpp"

namespace troupe {
namespace {

namespace asio = boost::asio;
namespace mp = troupe::multiprocessing;
namespace sp = troupe::subprocess;
using namespace std::chrono_literals;
using AsyncRulesTest = troupe::testing::LeakCheck;
using troupe::testing::bytes;
using troupe::testing::cancels;
using troupe::testing::never_inline;

auto nothing = [] {};

// ---- Connection -----------------------------------------------------------------------------

struct Ends {
  mp::Connection a, b;
  void make(asio::io_context& io) {
    auto [x, y] = mp::Pipe();
    a = std::move(x);
    b = std::move(y);
    a.set_executor(io.get_executor());
    b.set_executor(io.get_executor());
  }
};

// Sends that the socket buffer takes whole (or refuses by their bounds), and receives of a
// message already there, complete without waiting: never inline.
TEST_F(AsyncRulesTest, OperationsThatCompleteAtOnce) {
  asio::io_context io;
  Ends e;
  auto ready = [&] {
    e.make(io);
    e.a.send(7);
  };
  static const auto msg = bytes("fits in the socket buffer");
  never_inline(io, ready, [&](auto token) { return e.a.async_send_bytes(msg, token); });
  never_inline(io, ready, [&](auto token) {
    return e.a.async_send_bytes(msg, 100, std::nullopt, token);  // out of bounds: value_error
  });
  never_inline(io, ready, [&](auto token) { return e.a.async_send(std::string("hi"), token); });
  never_inline(io, ready, [&](auto token) { return e.b.async_recv_bytes(token); });
  never_inline(io, ready, [&](auto token) { return e.b.async_recv<int>(token); });
}

// Every operation on a closed connection completes with EBADF, never inline (the handshake
// through its first send).
TEST_F(AsyncRulesTest, OperationsOnAClosedConnection) {
  asio::io_context io;
  Ends e;
  auto closed = [&] {
    e.make(io);
    e.a.close();
  };
  static const auto msg = bytes("x");
  const auto key = mp::AuthenticationString("k");
  const mp::AuthOptions auth;
  never_inline(io, closed, [&](auto token) { return e.a.async_send_bytes(msg, token); });
  never_inline(io, closed, [&](auto token) { return e.a.async_recv_bytes(token); });
  never_inline(io, closed, [&](auto token) {
    return e.a.async_wait(asio::posix::descriptor_base::wait_read, token);
  });
  never_inline(io, closed, [&](auto token) {
    return mp::detail::async_handshake(e.a, key, auth, true, token);
  });
}

TEST_F(AsyncRulesTest, StartTlsRefusedOnAPipe) {
  asio::io_context io;
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  mp::Connection r;
  never_inline(
      io,
      [&] {
        r = mp::Pipe(false).first;  // an OS pipe, not a socket: ValueError at once
        r.set_executor(io.get_executor());
      },
      [&](auto token) { return r.async_start_tls(ctx, mp::TlsRole::client, "", token); });
}

// ---- Listener, Client, handshake ------------------------------------------------------------

TEST_F(AsyncRulesTest, AcceptOnAClosedListener) {
  asio::io_context io;
  std::optional<mp::Listener> l;
  never_inline(
      io,
      [&] {
        l.emplace(std::nullopt, mp::ListenerOptions{.authkey = mp::AuthenticationString("k")});
        l->set_executor(io.get_executor());
        l->close();
      },
      [&](auto token) { return l->async_accept(token); });
}

TEST_F(AsyncRulesTest, ClientOfAMissingUnixSocket) {
  asio::io_context io;
  const auto gone = mp::Address::parse("unix:/tmp/troupe-async-rules-none-" +
                                       std::to_string(::getpid()) + ".sock");
  never_inline(io, nothing,
               [&](auto token) { return mp::async_client(io.get_executor(), gone, {}, token); });
}

// ---- Popen ----------------------------------------------------------------------------------

TEST_F(AsyncRulesTest, WaitForAndCommunicateWithAnEndedChild) {
  asio::io_context io;
  std::optional<sp::Popen> p;
  auto ended = [&] {
    p.emplace(sp::Args{"true"});
    p->set_executor(io.get_executor());
    p->wait();
  };
  never_inline(io, ended, [&](auto token) { return p->async_wait(token); });
  never_inline(io, ended, [&](auto token) { return p->async_communicate("", token); });
}

TEST_F(AsyncRulesTest, StreamReadOfBufferedBytesAndWriteOnAClosedStream) {
  asio::io_context io;
  std::optional<sp::Popen> p;
  auto prepare = [&] {
    if (p) p->wait();
    p.emplace(sp::Args{"sh", "-c", "echo one; echo two"},
              sp::PopenOptions{.stdin_ = sp::PIPE, .stdout_ = sp::PIPE});
    p->set_executor(io.get_executor());
    p->stdin_->close();
    EXPECT_EQ(p->stdout_->readline(), "one\n");  // "two\n" may now wait in the buffer
  };
  never_inline(io, prepare, [&](auto token) { return p->stdout_->async_read_some(100, token); });
  never_inline(io, prepare, [&](auto token) { return p->stdin_->async_write("x", token); });
  p->wait();
}

// ---- Future ---------------------------------------------------------------------------------

TEST_F(AsyncRulesTest, ResultOfAFinishedFuture) {
  asio::io_context io;
  concurrent::futures::Future<int> f;
  never_inline(
      io,
      [&] {
        f = concurrent::futures::Future<int>();
        f.set_result(3);
      },
      [&](auto token) { return f.async_result(token); });
}

// ---- per-operation cancellation -------------------------------------------------------------

TEST_F(AsyncRulesTest, CancelReceive) {
  asio::io_context io;
  Ends e;
  e.make(io);
  cancels(io, [&](auto token) { e.b.async_recv_bytes(token); });
  // The connection stays usable: the next receive gets the next message.
  e.a.send_bytes("after");
  std::string got;
  e.b.async_recv_bytes(
      [&](boost::system::error_code, std::vector<std::byte> m) { got = testing::text(m); });
  io.restart();
  io.run();
  EXPECT_EQ(got, "after");
}

TEST_F(AsyncRulesTest, CancelWait) {
  asio::io_context io;
  Ends e;
  e.make(io);
  cancels(io, [&](auto token) { e.b.async_wait(asio::posix::descriptor_base::wait_read, token); });
}

TEST_F(AsyncRulesTest, CancelAccept) {
  asio::io_context io;
  mp::Listener l(std::nullopt, {.authkey = mp::AuthenticationString("k")});
  l.set_executor(io.get_executor());
  cancels(io, [&](auto token) { l.async_accept(token); });
  // A peer that comes later goes to the next async_accept.
  std::optional<mp::Connection> c;
  l.async_accept([&](boost::system::error_code ec, mp::Connection got) {
    EXPECT_FALSE(ec) << ec.message();
    c.emplace(std::move(got));
  });
  std::thread peer([&] { mp::Client(l.address(), mp::AuthenticationString("k")).send_bytes("x"); });
  for (int i = 0; i < 1000 && !c; ++i) io.run_one_for(10ms);
  peer.join();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->get_executor(), asio::any_io_executor(io.get_executor()));
  EXPECT_EQ(testing::text(c->recv_bytes()), "x");
}

TEST_F(AsyncRulesTest, CancelChildWait) {
  asio::io_context io;
  sp::Popen p(sp::Args{"sleep", "30"});
  p.set_executor(io.get_executor());
  cancels(io, [&](auto token) { p.async_wait(token); });
  EXPECT_FALSE(p.poll());  // still running
  p.kill();
  EXPECT_EQ(p.wait(), -SIGKILL);
}

}  // namespace
}  // namespace troupe
