#include "troupe/multiprocessing/authkey.hpp"

#include <errno.h>

#include <memory>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "troupe/errors.hpp"

namespace troupe::multiprocessing {

AuthenticationString::AuthenticationString(std::span<const std::byte> bytes)
    : bytes_(bytes.begin(), bytes.end()) {}

AuthenticationString::AuthenticationString(std::string_view bytes)
    : AuthenticationString(std::as_bytes(std::span(bytes.data(), bytes.size()))) {}

AuthenticationString AuthenticationString::random() {
  auto bytes = detail::random_bytes(32);
  AuthenticationString s(bytes);
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return s;
}

AuthenticationString AuthenticationString::from_hex(std::string_view hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0)
    throw ValueError("authkey: hexadecimal text of odd length " + std::to_string(hex.size()));
  AuthenticationString s;
  s.bytes_.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0)
      throw ValueError("authkey: not hexadecimal at offset " + std::to_string(i));
    s.bytes_.push_back(static_cast<std::byte>(hi * 16 + lo));
  }
  return s;
}

AuthenticationString::AuthenticationString(const AuthenticationString& other)
    : bytes_(other.bytes_) {}

AuthenticationString& AuthenticationString::operator=(const AuthenticationString& other) {
  if (this != &other) {
    wipe();
    bytes_ = other.bytes_;
  }
  return *this;
}

AuthenticationString::AuthenticationString(AuthenticationString&& other) noexcept
    : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();
}

AuthenticationString& AuthenticationString::operator=(AuthenticationString&& other) noexcept {
  if (this != &other) {
    wipe();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

AuthenticationString::~AuthenticationString() {
  wipe();
}

void AuthenticationString::wipe() noexcept {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

namespace detail {

std::vector<std::byte> hmac(std::string_view digest, std::span<const std::byte> key,
                            std::span<const std::byte> message) {
  // One MAC algorithm object for the process; fetching it is the expensive part.
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (!mac) throw multiprocessing::AuthenticationError("HMAC is not available from OpenSSL");
  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx(EVP_MAC_CTX_new(mac),
                                                                &EVP_MAC_CTX_free);
  std::string name(digest);
  // OpenSSL spells the SHA-3 digests "SHA3-256"; Python's names use an underscore.
  for (auto& c : name)
    if (c == '_') c = '-';
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, name.data(), 0),
      OSSL_PARAM_construct_end(),
  };
  // An empty key is valid HMAC (Python 3.13 authenticates with b''); OpenSSL wants a non-null
  // pointer for it.
  static const unsigned char empty_key[1] = {0};
  const auto* k = key.empty() ? empty_key : reinterpret_cast<const unsigned char*>(key.data());
  if (!ctx || EVP_MAC_init(ctx.get(), k, key.size(), params) != 1)
    throw multiprocessing::AuthenticationError("digest '" + std::string(digest) +
                                               "' is not supported for HMAC");
  if (EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(message.data()),
                     message.size()) != 1)
    throw multiprocessing::AuthenticationError("HMAC-" + std::string(digest) + " failed");
  std::vector<std::byte> out(EVP_MAX_MD_SIZE);
  std::size_t n = 0;
  if (EVP_MAC_final(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &n, out.size()) != 1)
    throw multiprocessing::AuthenticationError("HMAC-" + std::string(digest) + " failed");
  out.resize(n);
  return out;
}

bool equal_constant_time(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  if (a.size() != b.size()) return false;
  return a.empty() || CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::vector<std::byte> random_bytes(std::size_t n) {
  std::vector<std::byte> out(n);
  if (n && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    throw_os_error(EIO,
                   "random_bytes: OpenSSL RAND_bytes failed for " + std::to_string(n) + " bytes");
  return out;
}

}  // namespace detail
}  // namespace troupe::multiprocessing
