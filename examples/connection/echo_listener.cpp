// echo_listener: accepts authenticated connections one after another and answers every message
// with its bytes reversed; exits 0 after a message "quit" (not echoed). A connection that fails
// authentication is dropped and the next one accepted. Speaks CPython's multiprocessing.connection
// protocol, so a Python Client can be the other end:
//
//   echo_listener --address 127.0.0.1:0 --authkey 736563726574
//   python3 -c "from multiprocessing.connection import Client
//   c = Client(('127.0.0.1', PORT), authkey=b'secret'); c.send_bytes(b'abc');
//   print(c.recv_bytes())"
//
// With --tls-cert and --tls-key, every connection runs TLS first (the HMAC handshake inside it);
// with --tls-ca as well, clients must present a certificate from that CA.
//
// Prints "listening on ADDRESS" first (with the port chosen when it was 0).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing.hpp"

#include "args.hpp"

namespace mp = troupe::multiprocessing;

int main(int argc, char** argv) {
  example::Args args(
      argc, argv,
      {"--address", "--authkey", "--handshake-timeout-ms", "--tls-cert", "--tls-key", "--tls-ca"},
      {"--legacy-md5"},
      "echo_listener --address ADDR --authkey HEX [--legacy-md5] "
      "[--handshake-timeout-ms N] [--tls-cert PEM --tls-key PEM [--tls-ca PEM]]\n"
      "  ADDR: HOST:PORT, [V6]:PORT, unix:PATH, unix-abstract:NAME");
  try {
    mp::ListenerOptions options{
        .authkey = mp::AuthenticationString::from_hex(args.get("--authkey")),
        .auth = {.legacy_md5 = args.flag("--legacy-md5")},
        .handshake_timeout =
            std::chrono::milliseconds(std::stoi(args.get("--handshake-timeout-ms", "10000"))),
    };
    if (!args.get("--tls-cert", "").empty())
      options.tls =
          mp::make_tls_context(mp::TlsRole::server, {.certificate_chain = args.get("--tls-cert"),
                                                     .private_key = args.get("--tls-key"),
                                                     .trusted_ca = args.get("--tls-ca", "")});
    mp::Listener listener(mp::Address::parse(args.get("--address")), std::move(options));
    std::printf("listening on %s\n", listener.address().str().c_str());
    std::fflush(stdout);
    for (int served = 0;; ++served) {
      std::optional<mp::Connection> c;
      try {
        c.emplace(listener.accept());
      } catch (const mp::AuthenticationError& e) {
        std::printf("rejected: %s\n", e.what());
        std::fflush(stdout);
        continue;
      } catch (const troupe::OSError& e) {  // a peer that stalled or vanished mid-handshake
        std::printf("dropped: %s\n", e.what());
        std::fflush(stdout);
        continue;
      } catch (const troupe::EOFError& e) {
        std::printf("dropped: %s\n", e.what());
        std::fflush(stdout);
        continue;
      }
      std::printf("connection %d accepted\n", served + 1);
      std::fflush(stdout);
      try {
        for (;;) {
          auto m = c->recv_bytes();
          if (std::string_view(reinterpret_cast<const char*>(m.data()), m.size()) == "quit") {
            std::printf("quit\n");
            return 0;
          }
          std::reverse(m.begin(), m.end());
          c->send_bytes(m);
        }
      } catch (const troupe::EOFError&) {
        std::printf("connection %d closed\n", served + 1);  // next one
      } catch (const troupe::OSError& e) {
        std::printf("connection %d failed: %s\n", served + 1, e.what());
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_listener: %s\n", e.what());
    return 1;
  }
}
