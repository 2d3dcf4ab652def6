#include "troupe/multiprocessing/listener.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>

#include "troupe/errors.hpp"

#include "byte_text.hpp"
#include "leak_check.hpp"
#include "raw_peer.hpp"
#include <netinet/in.h>
#include <netinet/tcp.h>

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using ListenerTest = troupe::testing::LeakCheck;

using troupe::testing::bytes;
using troupe::testing::connect_raw;
using troupe::testing::peer_closed;
using troupe::testing::text;

TEST_F(ListenerTest, AddressParsesAndPrints) {
  for (const char* s :
       {"127.0.0.1:6000", "[::1]:80", "unix:/tmp/x.sock", "unix-abstract:troupe", "localhost:0"}) {
    EXPECT_EQ(Address::parse(s).str(), s);
  }
  EXPECT_EQ(Address::parse("[::1]:80").family, Address::Family::inet6);
  EXPECT_EQ(Address::parse("unix:/a").host, "/a");
  for (const char* bad :
       {"nocolon", "host:", "host:99999", "host:12a", "[::1]80", "unix:", "unix-abstract:"}) {
    EXPECT_THROW(Address::parse(bad), ValueError) << bad;
  }
}

// _TestListenerClient: a client connects, both authenticate, messages flow.
TEST_F(ListenerTest, TcpWithAuthentication) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("secret");
  Listener l(std::nullopt, opts);
  EXPECT_EQ(l.address().host, "127.0.0.1");
  EXPECT_NE(l.address().port, 0);
  std::thread t([&] {
    Connection c = Client(l.address(), AuthenticationString("secret"));
    c.send_bytes("hello");
    EXPECT_EQ(text(c.recv_bytes()), "olleh");
  });
  Connection s = l.accept();
  ASSERT_TRUE(l.last_accepted().has_value());
  EXPECT_EQ(l.last_accepted()->host, "127.0.0.1");
  auto m = s.recv_bytes();
  std::reverse(m.begin(), m.end());
  s.send_bytes(m);
  t.join();
}

// Nagle's algorithm would hold a small reply until the last one is acknowledged (up to 40 ms on
// Linux): both ends of a TCP connection send at once, the accepted end by the option it inherits
// from the listening socket.
TEST_F(ListenerTest, BothEndsOfATcpConnectionSendWithoutDelay) {
  auto no_delay = [](int fd) {
    int on = 0;
    socklen_t len = sizeof on;
    EXPECT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
    return on != 0;
  };
  boost::asio::io_context io;  // outlives the listener, whose engine holds a strand of it
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  Listener l(std::nullopt, opts);
  std::optional<Connection> client;
  auto connect = [&] {
    try {
      client.emplace(Client(l.address(), AuthenticationString("k")));
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  };
  std::thread t(connect);
  Connection s = l.accept();
  t.join();
  EXPECT_TRUE(no_delay(s.fileno()));
  EXPECT_TRUE(no_delay(client->fileno()));

  std::optional<Connection> async_accepted;
  l.set_executor(io.get_executor());
  l.async_accept([&](boost::system::error_code ec, Connection c) {
    EXPECT_FALSE(ec) << ec.message();
    async_accepted.emplace(std::move(c));
  });
  std::thread t2(connect);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!async_accepted && std::chrono::steady_clock::now() < deadline) io.run_one_for(100ms);
  t2.join();
  ASSERT_TRUE(async_accepted.has_value());
  EXPECT_TRUE(no_delay(async_accepted->fileno()));
}

// A wrong key fails both sides; the listener goes on serving the next client.
TEST_F(ListenerTest, WrongKeyIsRefusedAndTheListenerGoesOn) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("right");
  Listener l(std::nullopt, opts);
  std::thread bad([&] {
    EXPECT_THROW(Client(l.address(), AuthenticationString("wrong")), AuthenticationError);
  });
  EXPECT_THROW(l.accept(), AuthenticationError);
  bad.join();
  std::thread good([&] { Client(l.address(), AuthenticationString("right")).send_bytes("ok"); });
  EXPECT_EQ(text(l.accept().recv_bytes()), "ok");
  good.join();
}

// A peer that connects and says nothing is dropped after the handshake deadline.
TEST_F(ListenerTest, StalledPeerTimesOut) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  opts.handshake_timeout = 200ms;
  Listener l(std::nullopt, opts);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(l.address().port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_THROW(l.accept(), TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 190ms);
  ::close(fd);
}

TEST_F(ListenerTest, NetworkListenerNeedsAKey) {
  EXPECT_THROW(Listener(Address::parse("127.0.0.1:0")), ValueError);
}

TEST_F(ListenerTest, UnixPathIsUnlinkedOnClose) {
  const std::string path = "/tmp/troupe-listener-test-" + std::to_string(getpid()) + ".sock";
  {
    Listener l(Address::parse("unix:" + path));
    EXPECT_TRUE(std::filesystem::exists(path));
    std::thread t([&] { Client(l.address()).send_bytes("over unix"); });
    EXPECT_EQ(text(l.accept().recv_bytes()), "over unix");
    t.join();
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(ListenerTest, AbstractNameWithKey) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString::random();
  const auto key = *opts.authkey;
  Listener l(Address::parse("unix-abstract:troupe-test-" + std::to_string(getpid())), opts);
  std::thread t([&] { Client(l.address(), key).send_bytes("abstract"); });
  EXPECT_EQ(text(l.accept().recv_bytes()), "abstract");
  t.join();
}

TEST_F(ListenerTest, ClientSendsItsChallengeWithItsAnswer) {
  // The server's half of the handshake by hand (the listener has no key): the client's own
  // challenge has come with its answer, before the server's welcome (one round trip fewer),
  // and the rest of the handshake goes on in Python's order.
  Listener l(Address::parse("unix-abstract:troupe-test-pipelined-" + std::to_string(getpid())));
  const AuthenticationString key("k");
  std::thread t([&] { Client(l.address(), key).send_bytes("authenticated"); });
  Connection s = l.accept();
  const auto challenge = detail::make_challenge({});
  s.send_bytes(challenge.wire);
  detail::check_answer(challenge, s.recv_bytes(256), key, {});
  EXPECT_TRUE(s.poll(0s)) << "the client's challenge did not come with its answer";
  s.send_bytes(detail::welcome_message());
  s.send_bytes(detail::make_answer(s.recv_bytes(256), key, {}));
  detail::check_welcome(s.recv_bytes(256));
  EXPECT_EQ(text(s.recv_bytes()), "authenticated");
  t.join();
}

TEST_F(ListenerTest, ListenerAnswersAChallengeThatCameWithTheAnswerInTheSameWrite) {
  // The client's half by hand, its answer and its challenge in one write (as troupe's Client
  // sends them): the listener's welcome and its answer to that challenge come in one write too
  // (the client waits for one message, not two). Then the client's welcome completes it.
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  const auto key = *opts.authkey;
  Listener l(Address::parse("unix-abstract:troupe-test-welcome-" + std::to_string(getpid())), opts);
  std::thread t([&] {
    try {
      EXPECT_EQ(text(l.accept().recv_bytes()), "authenticated");
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  });
  Connection c = Client(l.address());  // no key: the handshake is ours
  const auto answer = detail::make_answer(c.recv_bytes(256), key, {});
  const auto challenge = detail::make_challenge({});
  std::vector<std::byte> both;
  for (const auto& m :
       {std::span<const std::byte>(answer), std::span<const std::byte>(challenge.wire)}) {
    unsigned char h[12];
    const std::size_t n = detail::length_header(m.size(), h);
    both.insert(both.end(), reinterpret_cast<const std::byte*>(h),
                reinterpret_cast<const std::byte*>(h) + n);
    both.insert(both.end(), m.begin(), m.end());
  }
  ASSERT_EQ(::write(c.fileno(), both.data(), both.size()), static_cast<ssize_t>(both.size()));
  detail::check_welcome(c.recv_bytes(256));
  auto listener_answer = c.recv_buffered(256);
  ASSERT_TRUE(listener_answer.has_value()) << "the answer did not come with the welcome";
  detail::check_answer(challenge, *listener_answer, key, {});
  c.send_bytes(detail::welcome_message());
  c.send_bytes("authenticated");
  t.join();
}

TEST_F(ListenerTest, Ipv6Loopback) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k6");
  std::optional<Listener> l;
  try {
    l.emplace(Address::parse("[::1]:0"), opts);
  } catch (const OSError& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  std::thread t([&] { Client(l->address(), AuthenticationString("k6")).send_bytes("v6"); });
  EXPECT_EQ(text(l->accept().recv_bytes()), "v6");
  t.join();
}

TEST_F(ListenerTest, RefusedConnectionNamesTheAddress) {
  int port;
  {
    ListenerOptions opts;
    opts.authkey = AuthenticationString("k");
    Listener l(std::nullopt, opts);
    port = l.address().port;
  }
  try {
    Client(Address::parse("127.0.0.1:" + std::to_string(port)), AuthenticationString("k"));
    FAIL();
  } catch (const ConnectionRefusedError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos);
  }
  EXPECT_THROW(Client(Address::parse("unix:/nonexistent/troupe.sock")), FileNotFoundError);
}

// shutdown(2) on fileno() wakes a blocked accept() (OSError), on TCP and on Unix sockets.
TEST_F(ListenerTest, ShutdownWakesABlockedAccept) {
  const std::string path = "/tmp/troupe-listener-" + std::to_string(::getpid()) + ".sock";
  for (const Address& a : {Address::parse("127.0.0.1:0"), Address::parse("unix:" + path)}) {
    SCOPED_TRACE(a.str());
    Listener l(a, {.authkey = AuthenticationString("k")});
    std::thread waker([&] {
      std::this_thread::sleep_for(50ms);
      ::shutdown(l.fileno(), SHUT_RDWR);
    });
    EXPECT_THROW(l.accept(), OSError);
    waker.join();
  }
}

// Two threads in accept() at once each get a connection.
TEST_F(ListenerTest, ThreadsAcceptAtOnce) {
  Listener l(std::nullopt, {.backlog = 8, .authkey = AuthenticationString("k")});
  std::vector<std::string> got(2);
  std::vector<std::thread> servers;
  for (std::size_t i = 0; i < 2; ++i)
    servers.emplace_back([&, i] { got[i] = text(l.accept().recv_bytes()); });
  for (const char* m : {"a", "b"}) Client(l.address(), AuthenticationString("k")).send_bytes(m);
  for (auto& t : servers) t.join();
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::string>{"a", "b"}));
}

// Issue 15 finding 5: peers that connect and say nothing do not delay one that authenticates;
// its handshake runs beside theirs, and they are still pending when it has been accepted.
TEST_F(ListenerTest, IdlePeersDoNotDelayAnAuthenticatedOne) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  opts.backlog = 128;  // the idle peers connect before anything accepts
  Listener l(std::nullopt, opts);
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) {
    idle.push_back(connect_raw(l.address()));
    ASSERT_GE(idle.back(), 0);
  }
  std::thread good([&] { Client(l.address(), AuthenticationString("k")).send_bytes("real"); });
  Connection c = l.accept();
  EXPECT_EQ(text(c.recv_bytes()), "real");
  good.join();
  for (int fd : idle) {
    EXPECT_FALSE(peer_closed(fd, 0)) << "an idle peer was dealt with before the real one";
    ::close(fd);
  }
}

// Issue 15 finding 5: more idle peers than may be pending: the oldest are dropped and a real
// client is still served.
TEST_F(ListenerTest, ManyIdlePeersAreBoundedAndTheOldestDropped) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  opts.max_pending_handshakes = 8;
  opts.backlog = 128;
  Listener l(std::nullopt, opts);
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    idle.push_back(connect_raw(l.address()));
    ASSERT_GE(idle.back(), 0);
  }
  std::thread good([&] { Client(l.address(), AuthenticationString("k")).send_bytes("real"); });
  EXPECT_EQ(text(l.accept().recv_bytes()), "real");
  good.join();
  EXPECT_TRUE(peer_closed(idle.front(), 5000)) << "the oldest idle peer was not dropped";
  int open = 0;
  for (int fd : idle) {
    if (!peer_closed(fd, 0)) ++open;
    ::close(fd);
  }
  EXPECT_LE(open, 8) << "more than max_pending_handshakes peers were kept";
}

// Issue 15 finding 5: a peer that drips its answer a byte at a time is dropped at its one
// deadline, not one per byte.
TEST_F(ListenerTest, DrippingPeerMeetsOneDeadline) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  opts.handshake_timeout = 300ms;
  Listener l(std::nullopt, opts);
  const int fd = connect_raw(l.address());
  ASSERT_GE(fd, 0);
  std::atomic<bool> dripping{true};
  std::thread drip([&] {
    const char header[4] = {0, 0, 0, 60};
    (void)::send(fd, header, 4, MSG_NOSIGNAL);
    for (int i = 0; i < 60 && dripping; ++i) {  // 60 bytes, 100 ms apart: 6 s in all
      (void)::send(fd, "x", 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(100ms);
    }
    dripping = false;
  });
  EXPECT_THROW(l.accept(), TimeoutError);
  EXPECT_TRUE(dripping) << "the handshake deadline restarted with every byte";
  dripping = false;
  drip.join();
  ::close(fd);
}

// Issue 15 finding 5: Client's timeout is one deadline over the whole handshake, also against
// a server that drips its challenge.
TEST_F(ListenerTest, ClientTimeoutIsOneDeadlineAgainstADrippingServer) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
  ASSERT_EQ(::listen(lfd, 1), 0);
  socklen_t len = sizeof sin;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sin), &len);
  std::atomic<bool> dripping{true};
  std::thread server([&] {
    const int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    const char header[4] = {0, 0, 0, 60};
    (void)::send(c, header, 4, MSG_NOSIGNAL);
    for (int i = 0; i < 60 && dripping; ++i) {
      (void)::send(c, "x", 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(100ms);
    }
    dripping = false;
    ::close(c);
  });
  ClientOptions o;
  o.authkey = AuthenticationString("k");
  o.timeout = 300ms;
  EXPECT_THROW(Client(Address{Address::Family::inet, "127.0.0.1", ntohs(sin.sin_port)}, o),
               TimeoutError);
  EXPECT_TRUE(dripping) << "Client's timeout restarted with every byte";
  dripping = false;
  server.join();
  ::close(lfd);
}

// Issue 15 finding 5: async_accept with few outstanding operations and many idle peers still
// serves the real client, and its handler never runs inside the call.
TEST_F(ListenerTest, AsyncAcceptServesARealClientAmongIdlePeers) {
  ListenerOptions opts;
  opts.authkey = AuthenticationString("k");
  opts.backlog = 128;
  Listener l(std::nullopt, opts);
  boost::asio::io_context ctx;
  l.set_executor(ctx.get_executor());
  std::vector<int> idle;
  for (int i = 0; i < 50; ++i) {
    idle.push_back(connect_raw(l.address()));
    ASSERT_GE(idle.back(), 0);
  }
  bool inside = true;
  std::optional<Connection> got;
  std::function<void()> next = [&] {
    l.async_accept(boost::asio::bind_executor(ctx, [&](boost::system::error_code ec, Connection c) {
      EXPECT_FALSE(inside) << "the handler ran inside async_accept";
      if (!ec)
        got.emplace(std::move(c));
      else if (ec != boost::asio::error::operation_aborted)
        next();  // an idle peer's timeout
    }));
  };
  for (int i = 0; i < 2; ++i) {
    inside = true;
    next();
    inside = false;
  }
  std::thread good([&] { Client(l.address(), AuthenticationString("k")).send_bytes("real"); });
  for (int i = 0; i < 2000 && !got; ++i) ctx.run_one_for(10ms);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(text(got->recv_bytes()), "real");
  good.join();
  l.close();
  ctx.poll();
  for (int fd : idle) ::close(fd);
}

}  // namespace
}  // namespace troupe::multiprocessing
