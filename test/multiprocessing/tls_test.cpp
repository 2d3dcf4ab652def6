// TLS under Listener/Client and Connection: certificates checked both ways, the HMAC handshake
// inside, plain and asynchronous calls, poll/wait, a reader and a writer on two threads.
#include "troupe/multiprocessing/tls.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"

#include "byte_text.hpp"
#include "hostile_peer.hpp"
#include "leak_check.hpp"
#include "tls_files.hpp"

namespace troupe::multiprocessing {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using troupe::testing::bytes;
using troupe::testing::text;

class TlsTest : public troupe::testing::LeakCheck {
protected:
  troupe::testing::TlsFiles files;
  const AuthenticationString key =
      AuthenticationString::from_hex("00112233445566778899aabbccddeeff");

  std::shared_ptr<asio::ssl::context> server_context(bool mutual = false) {
    return make_tls_context(TlsRole::server, {.certificate_chain = files.path("server.pem"),
                                              .private_key = files.path("server.key"),
                                              .trusted_ca = mutual ? files.path("ca.pem") : ""});
  }
  std::shared_ptr<asio::ssl::context> client_context(const std::string& ca = "ca.pem",
                                                     bool with_certificate = false) {
    TlsConfig c{.trusted_ca = files.path(ca)};
    if (with_certificate) {
      c.certificate_chain = files.path("client.pem");
      c.private_key = files.path("client.key");
    }
    return make_tls_context(TlsRole::client, c);
  }
  ListenerOptions listener_options(std::shared_ptr<asio::ssl::context> tls,
                                   std::chrono::milliseconds deadline = 10s) {
    ListenerOptions o;
    o.authkey = key;
    o.tls = std::move(tls);
    o.handshake_timeout = deadline;
    o.backlog = 8;
    return o;
  }
  ClientOptions client_options(std::shared_ptr<asio::ssl::context> tls,
                               std::chrono::milliseconds deadline = 10s) {
    ClientOptions o;
    o.authkey = key;
    o.tls = std::move(tls);
    o.timeout = deadline;
    return o;
  }
};

// Echoes byte messages until EOF.
void echo(Connection& c) {
  try {
    for (;;) c.send_bytes(c.recv_bytes());
  } catch (const EOFError&) {
  }
}

TEST_F(TlsTest, EchoBytesAndTypedValuesOverTcp) {
  Listener l(std::nullopt, listener_options(server_context()));
  std::thread server([&] {
    Connection c = l.accept();
    EXPECT_TRUE(c.tls());
    echo(c);
  });
  Connection c = Client(l.address(), client_options(client_context()));
  ASSERT_TRUE(c.tls());
  EXPECT_EQ(c.tls_description().rfind("TLSv1.3 ", 0), 0u) << c.tls_description();
  for (std::size_t size : {0u, 1u, 64u, 16383u, 16384u, 100000u, 5u << 20}) {
    std::vector<std::byte> msg(size);
    for (std::size_t i = 0; i < size; ++i) msg[i] = static_cast<std::byte>(i * 7 + size);
    c.send_bytes(msg);
    EXPECT_EQ(c.recv_bytes(), msg) << size;
  }
  c.send(std::vector<double>(1000, 2.5));
  EXPECT_EQ(c.recv<std::vector<double>>(), std::vector<double>(1000, 2.5));
  c.send(std::string("typed"));
  EXPECT_EQ(c.recv<std::string>(), "typed");
  c.close();
  server.join();
}

TEST_F(TlsTest, UntrustedServerIsRefusedAndTheListenerGoesOn) {
  Listener l(std::nullopt, listener_options(server_context(), 5s));
  std::thread server([&] {
    EXPECT_THROW(l.accept(), AuthenticationError);  // the client hung up mid-handshake
    Connection c = l.accept();
    c.send_bytes(bytes("second"));
  });
  try {
    Client(l.address(), client_options(client_context("rogue-ca.pem")));
    ADD_FAILURE() << "a server whose certificate chains to another CA was accepted";
  } catch (const AuthenticationError& e) {
    EXPECT_NE(std::string(e.what()).find("certificate"), std::string::npos) << e.what();
  }
  Connection c = Client(l.address(), client_options(client_context()));
  EXPECT_EQ(text(c.recv_bytes()), "second");
  server.join();
}

TEST_F(TlsTest, WrongServerNameIsRefused) {
  Listener l(std::nullopt, listener_options(server_context(), 5s));
  std::thread server([&] { EXPECT_ANY_THROW(l.accept()); });
  auto o = client_options(client_context());
  o.tls_server_name = "not-this-server.example";
  try {
    Client(l.address(), o);
    ADD_FAILURE() << "a certificate for another name was accepted";
  } catch (const AuthenticationError& e) {
    EXPECT_NE(std::string(e.what()).find("certificate"), std::string::npos) << e.what();
  }
  server.join();
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificate) {
  Listener l(std::nullopt, listener_options(server_context(true), 5s));
  std::thread server([&] {
    EXPECT_ANY_THROW(l.accept());  // no client certificate
    Connection c = l.accept();     // with one
    echo(c);
  });
  // TLS 1.3: the client learns of the refusal at its first read, inside the HMAC handshake.
  EXPECT_ANY_THROW(Client(l.address(), client_options(client_context())));
  Connection c = Client(l.address(), client_options(client_context("ca.pem", true)));
  c.send_bytes(bytes("mutual"));
  EXPECT_EQ(text(c.recv_bytes()), "mutual");
  c.close();
  server.join();
}

TEST_F(TlsTest, PlainPeerAgainstTlsAndTheReverseFailWithinTheDeadline) {
  {  // a plain client waits for a challenge; the TLS listener waits for a ClientHello
    Listener l(std::nullopt, listener_options(server_context(), 3s));
    std::thread server([&] { EXPECT_ANY_THROW(l.accept()); });
    EXPECT_THROW(Client(l.address(), client_options(nullptr, 300ms)), TimeoutError);
    server.join();
  }
  {  // a TLS client against a plain listener: the ClientHello is not a valid answer
    Listener l(std::nullopt, listener_options(nullptr, 2s));
    std::thread server([&] { EXPECT_ANY_THROW(l.accept()); });
    EXPECT_ANY_THROW(Client(l.address(), client_options(client_context(), 2s)));
    server.join();
  }
}

TEST_F(TlsTest, UnixSocketWithAServerName) {
  const Address a{Address::Family::unix_abstract, "troupe-tls-test-" + std::to_string(::getpid()),
                  0};
  Listener l(a, listener_options(server_context()));
  std::thread server([&] {
    Connection c = l.accept();
    echo(c);
  });
  auto o = client_options(client_context());
  o.tls_server_name = "localhost";
  Connection c = Client(a, o);
  c.send_bytes(bytes("over unix"));
  EXPECT_EQ(text(c.recv_bytes()), "over unix");
  c.close();
  server.join();
}

TEST_F(TlsTest, PollAndWaitSeeMessagesOnly) {
  Listener l(std::nullopt, listener_options(server_context()));
  std::promise<void> go;
  std::thread server([&] {
    Connection c = l.accept();
    go.get_future().wait();
    c.send_bytes(bytes("one"));
    c.send_bytes(bytes("two"));
    echo(c);
  });
  Connection c = Client(l.address(), client_options(client_context()));
  EXPECT_FALSE(c.poll());
  EXPECT_TRUE(connection::wait({c}, 50ms).empty());
  go.set_value();
  EXPECT_TRUE(c.poll(5s));
  EXPECT_EQ(text(c.recv_bytes()), "one");
  // "two" may already be decrypted inside OpenSSL: poll and wait must still see it.
  EXPECT_TRUE(troupe::testing::eventually([&] { return c.poll(); }));
  EXPECT_EQ(connection::wait({c}, 5s).size(), 1u);
  EXPECT_EQ(text(c.recv_bytes()), "two");
  c.close();
  server.join();
}

// One thread sends while another receives on the same TLS connection (an SSL object is not
// thread-safe; the session's lock and poll-outside-the-lock make this work).
TEST_F(TlsTest, ReaderAndWriterOnTwoThreads) {
  Listener l(std::nullopt, listener_options(server_context()));
  constexpr int kCount = 300;
  std::thread server([&] {
    Connection c = l.accept();
    std::thread out([&] {
      for (int i = 0; i < kCount; ++i) c.send(i);
    });
    for (int i = 0; i < kCount; ++i) EXPECT_EQ(c.recv<int>(), -i);
    out.join();
  });
  Connection c = Client(l.address(), client_options(client_context()));
  std::thread out([&] {
    for (int i = 0; i < kCount; ++i) c.send(-i);
  });
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(c.recv<int>(), i);
  out.join();
  server.join();
}

TEST_F(TlsTest, AsyncAcceptAndAsyncClient) {
  asio::io_context io;
  Listener l(std::nullopt, listener_options(server_context()));
  l.set_executor(io.get_executor());
  Connection served, client;
  std::string got;
  l.async_accept([&](boost::system::error_code ec, Connection c) {
    ASSERT_FALSE(ec) << ec.message();
    served = std::move(c);
    served.async_recv_bytes(
        asio::bind_executor(io, [&](boost::system::error_code ec2, std::vector<std::byte> m) {
          ASSERT_FALSE(ec2) << ec2.message();
          served.async_send_bytes(std::span<const std::byte>(),
                                  asio::bind_executor(io, [](boost::system::error_code e) {
                                    EXPECT_FALSE(e) << e.message();
                                  }));
          got = text(m);
        }));
  });
  async_client(io.get_executor(), l.address(), client_options(client_context()),
               [&](boost::system::error_code ec, Connection c) {
                 ASSERT_FALSE(ec) << ec.message();
                 client = std::move(c);
                 static const auto msg = bytes("async over tls");
                 client.async_send_bytes(msg, asio::bind_executor(io, [](auto ec2) {
                                           EXPECT_FALSE(ec2) << ec2.message();
                                         }));
               });
  io.run_for(20s);
  EXPECT_EQ(got, "async over tls");
  ASSERT_TRUE(client.tls());
  EXPECT_EQ(client.recv_bytes().size(), 0u);  // the blocking calls work on it too
}

TEST_F(TlsTest, AsyncClientErrors) {
  asio::io_context io;
  // Refused: nothing listens on the port of a closed listener.
  Address gone;
  {
    Listener l(std::nullopt, listener_options(nullptr));
    gone = l.address();
  }
  boost::system::error_code refused, timed_out, bad_cert;
  async_client(io.get_executor(), gone, client_options(nullptr),
               [&](boost::system::error_code ec, Connection) { refused = ec; });
  // A listener that never accepts: the kernel completes the connect, the handshake stalls.
  Listener silent(std::nullopt, listener_options(nullptr));
  async_client(io.get_executor(), silent.address(), client_options(nullptr, 200ms),
               [&](boost::system::error_code ec, Connection) { timed_out = ec; });
  // A server certificate from another CA.
  Listener rogue(std::nullopt,
                 listener_options(make_tls_context(TlsRole::server,
                                                   {.certificate_chain = files.path("rogue.pem"),
                                                    .private_key = files.path("rogue.key")}),
                                  2s));
  rogue.set_executor(io.get_executor());
  rogue.async_accept([](boost::system::error_code ec, Connection) { EXPECT_TRUE(ec); });
  async_client(io.get_executor(), rogue.address(), client_options(client_context()),
               [&](boost::system::error_code ec, Connection) { bad_cert = ec; });
  io.run_for(20s);
  EXPECT_EQ(refused.value(), ECONNREFUSED) << refused.message();
  EXPECT_EQ(std::error_code(timed_out), make_error_code(errc::timeout_error))
      << timed_out.message();
  EXPECT_EQ(std::error_code(bad_cert), make_error_code(errc::authentication_error))
      << bad_cert.message();
}

TEST_F(TlsTest, AsyncClientWithoutTls) {
  asio::io_context io;
  Listener l(std::nullopt, listener_options(nullptr));
  std::thread server([&] {
    Connection c = l.accept();
    echo(c);
  });
  Connection c;
  async_client(io.get_executor(), l.address(), client_options(nullptr),
               [&](boost::system::error_code ec, Connection got) {
                 EXPECT_FALSE(ec) << ec.message();
                 c = std::move(got);
               });
  io.run_for(10s);
  ASSERT_FALSE(c.closed());
  EXPECT_FALSE(c.tls());
  c.send_bytes(bytes("plain"));
  EXPECT_EQ(text(c.recv_bytes()), "plain");
  c.close();
  server.join();
}

// Issue 15: send_bytes(16 bytes, 8, 2^64 - 8) passed the bounds check (offset + size wrapped)
// and TlsSession::writev copied 49,140 bytes of this process's heap onto the wire before it
// crashed. Every edge and wrap-around offset and size: ValueError and nothing sent, or exactly
// the slice at the peer.
TEST_F(TlsTest, SendBytesBoundsFollowPythonForAnyOffsetAndSize) {
  auto [a, b] = troupe::testing::tls_pipe(files);
  ASSERT_TRUE(a.tls());
  std::vector<std::byte> buf(16, std::byte{'x'});
  EXPECT_THROW(a.send_bytes(buf, 8, std::numeric_limits<std::size_t>::max() - 7), ValueError);
  EXPECT_FALSE(b.poll()) << "a refused send sends nothing";
  troupe::testing::check_send_bytes_bounds(
      b, [&a = a](auto buf, std::size_t offset, auto size) { a.send_bytes(buf, offset, size); });
}

// Issue 15: a header announcing 512 MiB and 1 MiB of body: memory follows the bytes that arrive
// under TLS too.
TEST_F(TlsTest, AnnouncedLengthCommitsOnlyWhatArrives) {
  constexpr std::uint64_t kAnnounced = 512u << 20;
  const std::uint32_t table[2] = {htole32(0), htole32((kAnnounced - 8) / 8)};
  {
    SCOPED_TRACE("recv_bytes");
    auto p = troupe::testing::tls_pair(files);
    troupe::testing::check_memory_follows_bytes(p, kAnnounced, {}, 1u << 20,
                                                [&] { p.rx.recv_bytes(); });
  }
  {
    SCOPED_TRACE("recv<T>");
    auto p = troupe::testing::tls_pair(files);
    troupe::testing::check_memory_follows_bytes(p, kAnnounced, std::as_bytes(std::span(table)),
                                                1u << 20,
                                                [&] { p.rx.recv<std::vector<std::byte>>(); });
  }
}

TEST_F(TlsTest, BadConfigurationNamesTheFile) {
  try {
    make_tls_context(TlsRole::server, {.certificate_chain = files.path("missing.pem"),
                                       .private_key = files.path("server.key")});
    ADD_FAILURE();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.pem"), std::string::npos) << e.what();
  }
  try {
    make_tls_context(TlsRole::server, {.certificate_chain = files.path("server.pem"),
                                       .private_key = files.path("rogue.key")});
    ADD_FAILURE();
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("mismatch"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_tls_context(TlsRole::server, {}), ValueError);
  auto [r, w] = Pipe(false);
  EXPECT_THROW(r.start_tls(*server_context(), TlsRole::server), ValueError);
}

}  // namespace
}  // namespace troupe::multiprocessing
