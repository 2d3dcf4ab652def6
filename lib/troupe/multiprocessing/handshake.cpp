// The connection handshake: CPython's mutual HMAC challenge (deliver_challenge, answer_challenge)
// and the steps the asynchronous handshake of listener.hpp shares with it.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "troupe/detail/checked.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/tls.hpp"

#include <endian.h>
#include <limits.h>

namespace troupe::multiprocessing {
namespace {

constexpr std::size_t kHandshakeMax = 256;    // CPython: recv_bytes(256)
constexpr std::size_t kChallengeLength = 40;  // CPython 3.12+: MESSAGE_LENGTH
constexpr std::size_t kLegacyChallenge = 20;  // CPython <= 3.11
constexpr std::size_t kLegacyMd5Length = 16;
constexpr std::string_view kChallenge = "#CHALLENGE#";
constexpr std::string_view kWelcome = "#WELCOME#";
constexpr std::string_view kFailure = "#FAILURE#";

}  // namespace

// ---- the handshake --------------------------------------------------------------------------

namespace {

bool allowed_digest(std::string_view d) {
  return d == "md5" || d == "sha256" || d == "sha384" || d == "sha3_256" || d == "sha3_384";
}

// CPython's _get_digest_name_and_payload: "" for the legacy dialect (a 16- or 20-byte message).
std::pair<std::string, std::span<const std::byte>> digest_and_payload(
    std::span<const std::byte> message) {
  if (message.size() == kLegacyChallenge || message.size() == kLegacyMd5Length)
    return {std::string(), message};
  std::string_view text(reinterpret_cast<const char*>(message.data()), message.size());
  if (!text.empty() && text[0] == '{') {
    auto curly = text.find('}', 1);
    if (curly != std::string_view::npos && curly <= 9) {  // the longest name is 8 bytes
      std::string digest(text.substr(1, curly - 1));
      if (allowed_digest(digest)) return {digest, message.subspan(curly + 1)};
    }
  }
  throw AuthenticationError("unsupported message length (" + std::to_string(message.size()) +
                            " bytes), missing digest prefix, or unsupported digest");
}

std::vector<std::byte> concat(std::string_view a, std::span<const std::byte> b) {
  std::vector<std::byte> out(a.size() + b.size());
  std::memcpy(out.data(), a.data(), a.size());
  if (!b.empty()) std::memcpy(out.data() + a.size(), b.data(), b.size());
  return out;
}

// One handshake message, waiting no later than `deadline` for it to start.
std::vector<std::byte> recv_handshake(
    Connection& c, const std::optional<std::chrono::steady_clock::time_point>& deadline,
    const char* step) {
  if (deadline && !c.poll(*deadline))
    throw_os_error(ETIMEDOUT, std::string(step) +
                                  ": the peer sent nothing before the handshake "
                                  "deadline");
  return c.recv_bytes(kHandshakeMax);
}

bool equals(std::span<const std::byte> a, std::string_view b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), b.size()) == 0;
}

}  // namespace

namespace detail {

Challenge make_challenge(const AuthOptions& options) {
  if (!allowed_digest(options.digest_name))
    throw ValueError("deliver_challenge: unsupported digest '" + options.digest_name + "'");
  Challenge c;
  c.message = concat("{" + options.digest_name + "}", random_bytes(kChallengeLength));
  c.wire = concat(kChallenge, c.message);
  return c;
}

void check_answer(const Challenge& challenge, std::span<const std::byte> response,
                  const AuthenticationString& authkey, const AuthOptions& options) {
  auto [digest, mac] = digest_and_payload(response);
  if (digest.empty()) {
    if (!options.legacy_md5)
      throw AuthenticationError(
          "the peer answered in the legacy HMAC-MD5 dialect (Python <= 3.11), which this "
          "endpoint does not accept (AuthOptions::legacy_md5)");
    digest = "md5";
  }
  const auto expected = hmac(digest, authkey.bytes(), challenge.message);
  if (expected.size() != mac.size())
    throw AuthenticationError("expected '" + digest + "' of length " +
                              std::to_string(expected.size()) + " got " +
                              std::to_string(mac.size()));
  if (!equal_constant_time(expected, mac)) throw AuthenticationError("digest received was wrong");
}

std::vector<std::byte> make_answer(std::span<const std::byte> received,
                                   const AuthenticationString& authkey,
                                   const AuthOptions& options) {
  if (received.size() < kChallenge.size() || !equals(received.first(kChallenge.size()), kChallenge))
    throw AuthenticationError("Protocol error, expected challenge (got " +
                              std::to_string(received.size()) + " bytes)");
  const auto message = received.subspan(kChallenge.size());
  if (message.size() < kLegacyChallenge)
    throw AuthenticationError("challenge too short: " + std::to_string(message.size()) + " bytes");
  auto [digest, payload] = digest_and_payload(message);
  (void)payload;
  if (digest.empty()) {
    if (!options.legacy_md5)
      throw AuthenticationError(
          "the peer sent a legacy HMAC-MD5 challenge (Python <= 3.11), which this endpoint does "
          "not accept (AuthOptions::legacy_md5)");
    return hmac("md5", authkey.bytes(), message);
  }
  return concat("{" + digest + "}", hmac(digest, authkey.bytes(), message));
}

void check_welcome(std::span<const std::byte> response) {
  if (!equals(response, kWelcome)) throw AuthenticationError("digest sent was rejected");
}

std::span<const std::byte> welcome_message() noexcept {
  return std::as_bytes(std::span(kWelcome.data(), kWelcome.size()));
}

std::span<const std::byte> failure_message() noexcept {
  return std::as_bytes(std::span(kFailure.data(), kFailure.size()));
}

}  // namespace detail

void deliver_challenge(Connection& connection, const AuthenticationString& authkey,
                       const AuthOptions& options) {
  const auto challenge = detail::make_challenge(options);
  const auto deadline = options.timeout.deadline();
  connection.send_bytes(challenge.wire);
  const auto response = recv_handshake(connection, deadline, "deliver_challenge");
  try {
    detail::check_answer(challenge, response, authkey, options);
  } catch (const AuthenticationError&) {
    connection.send_bytes(kFailure);
    throw;
  }
  connection.send_bytes(kWelcome);
}

void answer_challenge(Connection& connection, const AuthenticationString& authkey,
                      const AuthOptions& options) {
  const auto deadline = options.timeout.deadline();
  const auto received = recv_handshake(connection, deadline, "answer_challenge");
  connection.send_bytes(detail::make_answer(received, authkey, options));
  detail::check_welcome(recv_handshake(connection, deadline, "answer_challenge"));
}

}  // namespace troupe::multiprocessing