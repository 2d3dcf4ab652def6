// echo_listener: serves authenticated connections side by side and answers every message with
// its bytes reversed; exits 0 after a message "quit" (not echoed). A peer that fails
// authentication, or stalls in its handshake, is dropped and nobody else waits for it. Speaks
// CPython's multiprocessing.connection protocol, so a Python Client can be the other end:
//
//   TROUPE_AUTHKEY=736563726574 echo_listener --address 127.0.0.1:0
//   python3 -c "from multiprocessing.connection import Client
//   c = Client(('127.0.0.1', PORT), authkey=b'secret'); c.send_bytes(b'abc');
//   print(c.recv_bytes())"
//
// With --tls-cert and --tls-key, every connection runs TLS first (the HMAC handshake inside it);
// with --tls-ca as well, clients must present a certificate from that CA.
//
// The key (hex) comes from TROUPE_AUTHKEY in the environment, or from --authkey HEX (which
// every user's `ps` shows).
//
// Prints "listening on ADDRESS" first (with the port chosen when it was 0).
//
// The pattern a server should use: one io_context, async_accept in a loop (the listener runs
// peers' handshakes side by side, each under handshake_timeout, at most max_pending_handshakes
// at once, so an idle or dripping peer costs a slot, never another peer's time), and a
// coroutine per connection, so an authenticated client that goes quiet holds up nobody either.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing.hpp"

#include "args.hpp"

namespace asio = boost::asio;
namespace mp = troupe::multiprocessing;

namespace {

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// What a failed accept or connection came to, in words.
std::string why(const boost::system::error_code& ec) {
  const std::error_code e(ec);
  if (e.category() == troupe::error_category())
    return std::string(troupe::python_name(static_cast<troupe::errc>(e.value()))) + ": " +
           e.message();
  return e.message();
}

asio::awaitable<void> serve(mp::Connection c, int n, mp::Listener& listener) {
  for (;;) {
    auto [ec, m] = co_await c.async_recv_bytes(asio::as_tuple(asio::use_awaitable));
    if (ec) {
      const std::error_code e(ec);
      if (e == troupe::make_error_code(troupe::errc::eof_error))
        say("connection " + std::to_string(n) + " closed");
      else
        say("connection " + std::to_string(n) + " failed: " + why(ec));
      co_return;
    }
    if (std::string_view(reinterpret_cast<const char*>(m.data()), m.size()) == "quit") {
      say("quit");
      listener.close();  // the accept loop ends with operation_aborted
      co_return;
    }
    std::reverse(m.begin(), m.end());
    auto [sent] = co_await c.async_send_bytes(m, asio::as_tuple(asio::use_awaitable));
    if (sent) {
      say("connection " + std::to_string(n) + " failed: " + why(sent));
      co_return;
    }
  }
}

asio::awaitable<void> accept_loop(mp::Listener& listener, asio::io_context& io) {
  for (int served = 0;;) {
    auto [ec, c] = co_await listener.async_accept(asio::as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted) {
      io.stop();  // closed after "quit": connections still open end with the program
      co_return;
    }
    if (ec) {
      const bool refused =
          std::error_code(ec) == troupe::make_error_code(troupe::errc::authentication_error);
      say((refused ? "rejected: " : "dropped: ") + why(ec));
      continue;
    }
    say("connection " + std::to_string(++served) + " accepted");
    asio::co_spawn(io, serve(std::move(c), served, listener), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  example::Args args(
      argc, argv,
      {"--address", "--authkey", "--handshake-timeout-ms", "--tls-cert", "--tls-key", "--tls-ca"},
      {"--legacy-md5"},
      "TROUPE_AUTHKEY=HEX echo_listener --address ADDR [--authkey HEX] [--legacy-md5] "
      "[--handshake-timeout-ms N] [--tls-cert PEM --tls-key PEM [--tls-ca PEM]]\n"
      "  ADDR: HOST:PORT, [V6]:PORT, unix:PATH, unix-abstract:NAME");
  try {
    mp::ListenerOptions options{
        .authkey = example::authkey(args),
        .auth = {.legacy_md5 = args.flag("--legacy-md5")},
        .handshake_timeout =
            std::chrono::milliseconds(std::stoi(args.get("--handshake-timeout-ms", "10000"))),
    };
    if (!args.get("--tls-cert", "").empty())
      options.tls =
          mp::make_tls_context(mp::TlsRole::server, {.certificate_chain = args.get("--tls-cert"),
                                                     .private_key = args.get("--tls-key"),
                                                     .trusted_ca = args.get("--tls-ca", "")});
    asio::io_context io;
    mp::Listener listener(mp::Address::parse(args.get("--address")), std::move(options));
    listener.set_executor(io.get_executor());  // accepted connections do their I/O on io too
    say("listening on " + listener.address().str());
    asio::co_spawn(io, accept_loop(listener, io), asio::detached);
    io.run();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_listener: %s\n", e.what());
    return 1;
  }
}
