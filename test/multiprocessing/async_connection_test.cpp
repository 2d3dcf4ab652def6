#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"

#include "byte_text.hpp"
#include "hostile_peer.hpp"
#include "leak_check.hpp"
#include "tls_files.hpp"
#include <arpa/inet.h>
#include <netinet/in.h>

namespace troupe::multiprocessing {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using AsyncConnectionTest = troupe::testing::LeakCheck;

using troupe::testing::bytes;
using troupe::testing::text;

struct Job {
  int id = 0;
  std::string name;
  std::vector<double> data;
  bool operator==(const Job&) const = default;
};

// Callbacks on an io_context: the connections' executor runs the I/O, the bound one the handlers.
TEST_F(AsyncConnectionTest, CallbacksSendAndReceiveBytes) {
  asio::io_context io;
  auto [a, b] = Pipe();
  a.set_executor(io.get_executor());
  b.set_executor(io.get_executor());
  const auto msg = bytes("hello");
  std::string got;
  bool sent = false;
  a.async_send_bytes(msg, asio::bind_executor(io, [&](boost::system::error_code ec) {
                       EXPECT_FALSE(ec) << ec.message();
                       sent = true;
                     }));
  b.async_recv_bytes(
      asio::bind_executor(io, [&](boost::system::error_code ec, std::vector<std::byte> m) {
        EXPECT_FALSE(ec) << ec.message();
        got = text(m);
      }));
  io.run();
  EXPECT_TRUE(sent);
  EXPECT_EQ(got, "hello");
}

// A receive that starts before the message is sent waits in the reactor, not a thread.
TEST_F(AsyncConnectionTest, ReceiveWaitsForTheSender) {
  asio::io_context io;
  auto [a, b] = Pipe();
  b.set_executor(io.get_executor());
  std::string got;
  b.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte> m) {
    EXPECT_FALSE(ec);
    got = text(m);
  });
  EXPECT_EQ(io.poll(), 0u);  // nothing to read yet
  a.send_bytes("later");
  io.run();
  EXPECT_EQ(got, "later");
  // The blocking calls still block afterwards (the fd is in blocking mode again).
  std::thread t([&a = a] {
    std::this_thread::sleep_for(20ms);
    a.send_bytes("blocking");
  });
  EXPECT_EQ(text(b.recv_bytes()), "blocking");
  t.join();
}

// use_awaitable: an echo coroutine and a client coroutine on one thread, typed messages,
// large ones in both directions at once (no deadlock: both sides are asynchronous).
TEST_F(AsyncConnectionTest, CoroutinesEchoTypedMessages) {
  asio::io_context io;
  auto [a, b] = Pipe();
  a.set_executor(io.get_executor());
  b.set_executor(io.get_executor());
  Job big{1, "big", std::vector<double>(1 << 20, 0.5)};
  std::vector<Job> received;
  asio::co_spawn(
      io,
      [&b = b]() -> asio::awaitable<void> {
        for (int i = 0; i < 3; ++i) {
          Job j = co_await b.async_recv<Job>(asio::use_awaitable);
          j.id += 100;
          co_await b.async_send(j, asio::use_awaitable);
        }
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&a = a, &big, &received]() -> asio::awaitable<void> {
        // (Named, not braced temporaries: GCC 12 miscompiles an initializer list in co_await.)
        const Job first{1, "one", std::vector<double>(1, 1.0)};
        const Job third{3, "", {}};
        co_await a.async_send(first, asio::use_awaitable);
        received.push_back(co_await a.async_recv<Job>(asio::use_awaitable));
        co_await a.async_send(big, asio::use_awaitable);
        received.push_back(co_await a.async_recv<Job>(asio::use_awaitable));
        co_await a.async_send(third, asio::use_awaitable);
        received.push_back(co_await a.async_recv<Job>(asio::use_awaitable));
      },
      asio::detached);
  io.run();
  ASSERT_EQ(received.size(), 3u);
  EXPECT_EQ(received[0], (Job{101, "one", {1.0}}));
  EXPECT_EQ(received[1].id, 101);
  EXPECT_EQ(received[1].data, big.data);
  EXPECT_EQ(received[2].id, 103);
}

// use_future needs no io_context: a connection given no executor does its I/O on Asio's system
// executor, whose thread pool's reactor then watches the connection. That pool (threads, epoll,
// eventfd, timerfd) lives until the process exits: start it before the leak check takes its count.
class FutureTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    std::promise<void> started;
    asio::post(asio::system_executor(), [&] { started.set_value(); });
    started.get_future().wait();
    asio::posix::stream_descriptor warm{asio::any_io_executor(asio::system_executor())};
    LeakCheck::SetUp();
  }
};

// Errors arrive as exceptions holding troupe's error code; throw_error gives the Python class.
TEST_F(FutureTest, FuturesAndErrors) {
  auto [a, b] = Pipe();
  auto f = b.async_recv_bytes(asio::use_future);
  a.send_bytes("via a future");
  EXPECT_EQ(text(f.get()), "via a future");
  auto sent = a.async_send(Job{7, "seven", {}}, asio::use_future);
  sent.get();
  EXPECT_EQ(b.async_recv<Job>(asio::use_future).get().id, 7);
  a.send(std::string("not a Job"));
  auto wrong = b.async_recv<Job>(asio::use_future);
  try {
    wrong.get();
    ADD_FAILURE() << "no error";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(std::error_code(e.code()), make_error_code(errc::type_error));
  }
  a.close();
  auto eof = b.async_recv_bytes(asio::use_future);
  try {
    eof.get();
    ADD_FAILURE() << "no error";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(std::error_code(e.code()), make_error_code(errc::eof_error));
    EXPECT_THROW(throw_error(e.code(), "recv"), EOFError);
  }
}

// The end of the stream is reported to every receive from then on, as Python's recv_bytes
// raises EOFError again: to the receive that waits when the peer closes, and to those after it
// (Asio's receive, having met the end, would wait for an event that never comes).
TEST_F(AsyncConnectionTest, EveryReceiveAfterTheEndOfTheStreamReportsIt) {
  asio::io_context io;
  auto [a, b] = Pipe();
  b.set_executor(io.get_executor());
  std::vector<std::error_code> got;
  std::function<void()> next = [&, &b = b] {
    b.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte>) {
      got.push_back(std::error_code(ec));
      if (got.size() < 3) next();
    });
  };
  next();
  io.run_for(std::chrono::milliseconds(50));  // the first receive waits in the reactor
  EXPECT_TRUE(got.empty());
  a.close();
  io.run_for(std::chrono::seconds(10));  // returns when the three are done; bounded if one hangs
  ASSERT_EQ(got.size(), 3u);
  for (const auto& ec : got) EXPECT_EQ(ec, make_error_code(errc::eof_error));
}

// A one-way Pipe(false) is an OS pipe, not a socket: the same operations work on it.
TEST_F(AsyncConnectionTest, OsPipes) {
  asio::io_context io;
  auto [r, w] = Pipe(false);
  r.set_executor(io.get_executor());
  w.set_executor(io.get_executor());
  std::vector<std::byte> big(3 * 1024 * 1024 + 7);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = std::byte(i * 3);
  std::vector<std::byte> got;
  w.async_send_bytes(big, [](boost::system::error_code ec) { EXPECT_FALSE(ec) << ec.message(); });
  r.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte> m) {
    EXPECT_FALSE(ec) << ec.message();
    got = std::move(m);
  });
  io.run();
  EXPECT_EQ(got, big);
}

// async_send_bytes(buf, offset, size) applies send_bytes's rules (issue 15: offset + size must
// not wrap): errc::value_error and nothing sent, or exactly the slice at the peer. Plain and TLS.
TEST_F(AsyncConnectionTest, SendBytesBoundsFollowPythonForAnyOffsetAndSize) {
  troupe::testing::TlsFiles files;
  auto plain = Pipe();
  auto tls = troupe::testing::tls_pipe(files);
  for (auto* pair : {&plain, &tls}) {
    SCOPED_TRACE(pair->first.tls() ? "TLS" : "plain");
    Connection& a = pair->first;
    asio::io_context io;
    a.set_executor(io.get_executor());
    troupe::testing::check_send_bytes_bounds(
        pair->second,
        [&](std::span<const std::byte> buf, std::size_t offset, std::optional<std::size_t> size) {
          boost::system::error_code got = asio::error::would_block;
          a.async_send_bytes(
              buf, offset, size,
              asio::bind_executor(io, [&](boost::system::error_code ec) { got = ec; }));
          io.restart();
          io.run();
          if (got) throw_error(std::error_code(got), "async_send_bytes");
        },
        100);
  }
}

// Issue 15: a header announcing 512 MiB and 1 MiB of body: the asynchronous receives' memory
// follows the bytes that arrive too, plain and TLS.
TEST_F(AsyncConnectionTest, AnnouncedLengthCommitsOnlyWhatArrives) {
  constexpr std::uint64_t kAnnounced = 512u << 20;
  const std::uint32_t table[2] = {htole32(0), htole32((kAnnounced - 8) / 8)};
  troupe::testing::TlsFiles files;
  for (bool tls : {false, true}) {
    SCOPED_TRACE(tls ? "TLS" : "plain");
    for (bool typed : {false, true}) {
      SCOPED_TRACE(typed ? "async_recv<T>" : "async_recv_bytes");
      asio::io_context io;  // outlives the connection, which registers with it
      auto p = tls ? troupe::testing::tls_pair(files) : troupe::testing::plain_pair();
      p.rx.set_executor(io.get_executor());
      auto prefix = typed ? std::as_bytes(std::span(table)) : std::span<const std::byte>();
      troupe::testing::check_memory_follows_bytes(p, kAnnounced, prefix, 1u << 20, [&] {
        boost::system::error_code got;
        auto done = [&](boost::system::error_code ec, std::vector<std::byte>) { got = ec; };
        if (typed)
          p.rx.async_recv<std::vector<std::byte>>(asio::bind_executor(io, done));
        else
          p.rx.async_recv_bytes(asio::bind_executor(io, done));
        io.run();
        if (got) throw_error(std::error_code(got), "async receive");
      });
    }
  }
}

// A connection given no executor has Asio's system executor: a plain callback runs on its pool.
TEST_F(FutureTest, NoExecutorMeansTheSystemExecutor) {
  auto [a, b] = Pipe();
  EXPECT_EQ(b.get_executor(), asio::any_io_executor(asio::system_executor()));
  std::promise<std::string> got;
  b.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte> m) {
    got.set_value(ec ? ec.message() : text(m));
  });
  a.send_bytes("on the pool");
  EXPECT_EQ(got.get_future().get(), "on the pool");
}

// Closing a connection cancels what is outstanding on it.
TEST_F(AsyncConnectionTest, CloseCancels) {
  asio::io_context io;
  auto [a, b] = Pipe();
  b.set_executor(io.get_executor());
  boost::system::error_code got;
  bool called = false;
  b.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte>) {
    got = ec;
    called = true;
  });
  io.poll();
  b.close();
  io.run();
  EXPECT_TRUE(called);
  EXPECT_EQ(got, asio::error::operation_aborted);
}

// Over the limit: EMSGSIZE and the connection closes, as the blocking recv_bytes.
TEST_F(AsyncConnectionTest, MaxMessageSize) {
  asio::io_context io;
  auto [a, b] = Pipe();
  b.set_executor(io.get_executor());
  b.set_max_message_size(10);
  a.send_bytes(std::string(11, 'x'));
  boost::system::error_code got;
  b.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte>) { got = ec; });
  io.run();
  EXPECT_EQ(got, boost::system::errc::message_size);
  EXPECT_TRUE(b.closed());
}

// ---- Listener::async_accept -----------------------------------------------------------------

// A coroutine server accepts and serves; a peer that stalls in the handshake, and one with the
// wrong key, are dropped without holding up the good ones.
TEST_F(AsyncConnectionTest, AsyncAcceptServesOthersWhileOneStalls) {
  asio::io_context io;
  const auto key = AuthenticationString("async key");
  Listener listener(std::nullopt, {.authkey = key, .handshake_timeout = 300ms});
  listener.set_executor(io.get_executor());
  const Address address = listener.address();
  std::vector<std::string> outcomes;
  // Four accepts outstanding at once (as a server keeps several): the handshake runs inside
  // async_accept, so a peer that stalls there holds up only its own.
  for (int i = 0; i < 4; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto [ec, c] = co_await listener.async_accept(asio::as_tuple(asio::use_awaitable));
          if (ec) {
            const std::error_code e(ec);
            outcomes.push_back(e.category() == error_category()
                                   ? std::string(python_name(static_cast<errc>(e.value())))
                                   : e.message());
            co_return;
          }
          auto m = co_await c.async_recv_bytes(asio::use_awaitable);
          std::reverse(m.begin(), m.end());
          co_await c.async_send_bytes(m, asio::use_awaitable);
          outcomes.push_back("served");
        },
        asio::detached);
  }
  // The peers: a silent one (connects, says nothing), a wrong key, then two good ones.
  std::thread peers([&] {
    int silent = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(address.port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(silent, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    EXPECT_THROW(Client(address, AuthenticationString("wrong")), AuthenticationError);
    for (int i = 0; i < 2; ++i) {
      auto c = Client(address, key);
      c.send_bytes("abc");
      EXPECT_EQ(text(c.recv_bytes()), "cba");
    }
    std::this_thread::sleep_for(600ms);  // silent past the 300 ms handshake deadline
    ::close(silent);
  });
  io.run();
  peers.join();
  // The silent peer's handshake ran out of time while the others were served.
  std::string all;
  for (const auto& o : outcomes) all += o + "; ";
  SCOPED_TRACE(all);
  EXPECT_EQ(std::count(outcomes.begin(), outcomes.end(), "served"), 2);
  EXPECT_EQ(std::count(outcomes.begin(), outcomes.end(), "multiprocessing.AuthenticationError"), 1);
  EXPECT_EQ(std::count(outcomes.begin(), outcomes.end(), "TimeoutError"), 1);
}

TEST_F(AsyncConnectionTest, AsyncAcceptWithoutKeyOnAUnixSocket) {
  asio::io_context io;
  const std::string path = "/tmp/troupe-async-" + std::to_string(getpid()) + ".sock";
  Listener listener(Address::parse("unix:" + path));
  listener.set_executor(io.get_executor());
  std::string got;
  listener.async_accept([&](boost::system::error_code ec, Connection c) {
    ASSERT_FALSE(ec) << ec.message();
    got = text(c.recv_bytes());
  });
  auto c = Client(Address::parse("unix:" + path));
  c.send_bytes("plain");
  io.run();
  EXPECT_EQ(got, "plain");
}

// Several messages gathered into one write arrive as the messages they were; the ones a read
// brought along are taken from the buffer without a system call, and a partial one is not.
TEST_F(AsyncConnectionTest, GatheredMessagesAndBufferedReceives) {
  asio::io_context io;
  auto [a, b] = Pipe();
  a.set_executor(io.get_executor());
  const std::vector<std::vector<std::byte>> msgs = {bytes("one"), bytes(""), bytes("three"),
                                                    std::vector<std::byte>(70000, std::byte{7})};
  std::vector<std::span<const std::byte>> spans(msgs.begin(), msgs.end());
  bool sent = false;
  a.async_send_messages(spans, asio::bind_executor(io, [&](boost::system::error_code ec) {
                          EXPECT_FALSE(ec) << ec.message();
                          sent = true;
                        }));
  std::thread reader([&, &b = b] {
    EXPECT_EQ(text(b.recv_bytes()), "one");  // the read brings the next ones along
    auto two = b.recv_buffered();
    ASSERT_TRUE(two.has_value());
    EXPECT_TRUE(two->empty());
    auto three = b.recv_buffered();
    ASSERT_TRUE(three.has_value());
    EXPECT_EQ(text(*three), "three");
    // The large one is not all in the buffer (or over a limit): left for recv_bytes.
    EXPECT_FALSE(b.recv_buffered(1000).has_value());
    EXPECT_EQ(b.recv_bytes(), msgs[3]);
    EXPECT_FALSE(b.recv_buffered().has_value());  // nothing buffered
  });
  io.run();
  reader.join();
  EXPECT_TRUE(sent);
}

// A server's read loop: async_fill brings what the socket has into the read buffer (never
// completing inside the call), recv_buffered takes the whole messages; a message larger than
// the buffer is left for async_recv_bytes (can_fill() false); the end of the stream between
// messages is eof_error, inside one EIO; close() cancels a fill.
TEST_F(AsyncConnectionTest, FillLoopTakesBufferedMessagesAndHandsLargeOnesOn) {
  asio::io_context io;
  auto [a, b] = Pipe();
  b.set_executor(io.get_executor());
  const std::vector<std::byte> large(200 * 1024, std::byte{7});
  std::vector<std::string> got;
  std::vector<std::size_t> large_got;
  std::error_code end;
  int fills = 0;
  bool inside = false;  // inside an async_fill call
  std::function<void()> next = [&, &b = b] {
    while (auto m = b.recv_buffered()) got.push_back(text(*m));
    ASSERT_FALSE(b.message_buffered());
    if (!b.can_fill()) {
      b.async_recv_bytes([&](boost::system::error_code ec, std::vector<std::byte> m) {
        ASSERT_FALSE(ec) << ec.message();
        large_got.push_back(m.size());
        next();
      });
      return;
    }
    inside = true;
    b.async_fill([&](boost::system::error_code ec) {
      EXPECT_FALSE(inside);
      ++fills;
      if (ec) {
        end = std::error_code(ec);
        return;
      }
      next();
    });
    inside = false;
  };
  next();
  EXPECT_EQ(fills, 0);
  io.run_for(20ms);  // waits in the reactor
  EXPECT_EQ(fills, 0);
  a.send_bytes(bytes("one"));
  a.send_bytes(bytes("two"));
  a.send_bytes(large);
  a.send_bytes(bytes("three"));
  for (int i = 0; i < 1000 && got.size() < 3; ++i) io.run_for(10ms);
  EXPECT_EQ(got, (std::vector<std::string>{"one", "two", "three"}));
  EXPECT_EQ(large_got, std::vector<std::size_t>{large.size()});
  a.close();
  for (int i = 0; i < 1000 && !end; ++i) io.run_for(10ms);
  EXPECT_EQ(end, make_error_code(errc::eof_error));
  EXPECT_FALSE(b.can_fill());  // at the end: async_recv_bytes reports it again

  // Inside a message: EIO.
  auto [c, d] = Pipe();
  d.set_executor(io.get_executor());
  const unsigned char partial[] = {0, 0, 0, 9, 'x'};
  ASSERT_EQ(::send(c.fileno(), partial, sizeof partial, 0), 5);
  boost::system::error_code ec2;
  std::function<void()> more = [&, &d = d] {
    d.async_fill([&](boost::system::error_code ec) {
      if (ec)
        ec2 = ec;
      else
        more();
    });
  };
  more();
  c.close();
  io.restart();
  for (int i = 0; i < 1000 && !ec2; ++i) io.run_for(10ms);
  EXPECT_EQ(std::error_code(ec2), std::error_code(EIO, std::generic_category()));

  // close() cancels.
  auto [e, f] = Pipe();
  f.set_executor(io.get_executor());
  boost::system::error_code ec3;
  bool called = false;
  f.async_fill([&](boost::system::error_code ec) {
    ec3 = ec;
    called = true;
  });
  io.restart();
  io.poll();
  f.close();
  io.restart();
  io.run_for(10s);
  EXPECT_TRUE(called);
  EXPECT_EQ(ec3, asio::error::operation_aborted);

  // Closed already: EBADF, through the handler, not inside the call.
  called = false;
  f.async_fill([&](boost::system::error_code ec) {
    ec3 = ec;
    called = true;
  });
  EXPECT_FALSE(called);
  io.restart();
  io.run_for(10s);
  EXPECT_TRUE(called);
  EXPECT_EQ(std::error_code(ec3), std::error_code(EBADF, std::generic_category()));
}

}  // namespace
}  // namespace troupe::multiprocessing
