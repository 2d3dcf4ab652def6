#include "troupe/multiprocessing/listener.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "troupe/errors.hpp"

#include "byte_text.hpp"
#include "leak_check.hpp"
#include <netinet/in.h>

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using ListenerTest = troupe::testing::LeakCheck;

using troupe::testing::bytes;
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

}  // namespace
}  // namespace troupe::multiprocessing
