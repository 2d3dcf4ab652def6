// troupe/multiprocessing/authkey.hpp — the secret behind HMAC authentication, and the HMAC.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::multiprocessing {

/// Python: `multiprocessing.process.AuthenticationString` — the bytes of an authkey. The memory
/// is wiped (OPENSSL_cleanse) whenever a copy is destroyed or overwritten; the bytes never
/// appear in a message, a log line or an exception text.
class AuthenticationString {
public:
  AuthenticationString() = default;
  explicit AuthenticationString(std::span<const std::byte> bytes);
  explicit AuthenticationString(std::string_view bytes);
  /// 32 random bytes from the OS (Python: `os.urandom(32)` for a new process's authkey).
  static AuthenticationString random();
  /// From hexadecimal text ("00ff…"). @throws ValueError on anything else.
  static AuthenticationString from_hex(std::string_view hex);

  AuthenticationString(const AuthenticationString& other);
  AuthenticationString& operator=(const AuthenticationString& other);
  AuthenticationString(AuthenticationString&& other) noexcept;
  AuthenticationString& operator=(AuthenticationString&& other) noexcept;
  ~AuthenticationString();

  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  std::size_t size() const noexcept { return bytes_.size(); }
  bool empty() const noexcept { return bytes_.empty(); }

private:
  void wipe() noexcept;
  std::vector<std::byte> bytes_;
};

namespace detail {
/// HMAC of `message` under `key` with OpenSSL's digest `digest` ("sha256", "md5",
/// "sha3_256", …). @throws multiprocessing::AuthenticationError for an unknown digest.
std::vector<std::byte> hmac(std::string_view digest, std::span<const std::byte> key,
                            std::span<const std::byte> message);
/// Constant-time equality (lengths, which are public, compared first).
bool equal_constant_time(std::span<const std::byte> a, std::span<const std::byte> b) noexcept;
/// `n` random bytes from OpenSSL's CSPRNG. @throws OSError if it fails.
std::vector<std::byte> random_bytes(std::size_t n);
}  // namespace detail

}  // namespace troupe::multiprocessing
