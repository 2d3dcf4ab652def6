// echo_client: connects to an echo listener (examples/connection/echo_listener, or a Python
// multiprocessing.connection.Listener that answers with reversed bytes), sends N messages cycling
// through the given sizes, checks that each reply is the payload reversed, sends "quit", and exits
// 0 only if every reply matched.
//
//   TROUPE_AUTHKEY=736563726574 echo_client --address 127.0.0.1:PORT --count 100 --size 0,64
//
// The key (hex) comes from TROUPE_AUTHKEY in the environment, or from --authkey HEX (which
// every user's `ps` shows).
//
// With --tls-ca the connection runs TLS first, checking the server's certificate against that
// CA and the address's host (or --tls-server-name); --tls-cert/--tls-key present a client
// certificate.
//
// Exit status: 0 all matched, 1 a reply differed, 2 usage, 3 authentication failed, 4 other error.
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing.hpp"

#include "args.hpp"

namespace mp = troupe::multiprocessing;

namespace {

std::vector<std::size_t> parse_sizes(const std::string& text) {
  std::vector<std::size_t> sizes;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) sizes.push_back(std::stoull(item));
  if (sizes.empty()) throw std::invalid_argument("--size needs at least one size");
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  example::Args args(
      argc, argv,
      {"--address", "--authkey", "--count", "--size", "--tls-ca", "--tls-cert", "--tls-key",
       "--tls-server-name"},
      {"--legacy-md5"},
      "TROUPE_AUTHKEY=HEX echo_client --address ADDR --count N --size S[,S...] "
      "[--authkey HEX] [--legacy-md5] [--tls-ca PEM [--tls-server-name NAME] [--tls-cert PEM "
      "--tls-key PEM]]");
  try {
    const auto address = mp::Address::parse(args.get("--address"));
    const int count = std::stoi(args.get("--count"));
    const auto sizes = parse_sizes(args.get("--size"));
    mp::ClientOptions options;
    options.authkey = example::authkey(args);
    options.auth.legacy_md5 = args.flag("--legacy-md5");
    if (!args.get("--tls-ca", "").empty()) {
      options.tls = mp::make_tls_context(mp::TlsRole::client,
                                         {.certificate_chain = args.get("--tls-cert", ""),
                                          .private_key = args.get("--tls-key", ""),
                                          .trusted_ca = args.get("--tls-ca")});
      options.tls_server_name = args.get("--tls-server-name", "");
    }
    mp::Connection c = mp::Client(address, options);
    std::vector<std::byte> payload, expect;
    for (int i = 0; i < count; ++i) {
      const std::size_t n = sizes[static_cast<std::size_t>(i) % sizes.size()];
      payload.resize(n);
      for (std::size_t j = 0; j < n; ++j)
        payload[j] = std::byte((j * 31 + static_cast<std::size_t>(i)) & 0xff);
      c.send_bytes(payload);
      auto reply = c.recv_bytes();
      expect.assign(payload.rbegin(), payload.rend());
      if (reply != expect) {
        std::fprintf(stderr,
                     "echo_client: reply %d (%zu bytes) differs from the payload reversed\n", i + 1,
                     n);
        return 1;
      }
    }
    c.send_bytes("quit");
    std::printf("%d messages echoed by %s\n", count, address.str().c_str());
    return 0;
  } catch (const mp::AuthenticationError& e) {
    std::fprintf(stderr, "echo_client: %s\n", e.what());
    return 3;
  } catch (const std::invalid_argument& e) {
    args.fail(e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_client: %s\n", e.what());
    return 4;
  }
}
