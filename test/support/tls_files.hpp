// test/support/tls_files.hpp — certificates and keys for TLS tests, made with OpenSSL's API in a
// temporary directory that is removed again.
#pragma once

#include <string>

namespace troupe::testing {

/// A CA, a server certificate it signed (for 127.0.0.1, ::1 and localhost), a client
/// certificate it signed, and a second, untrusted CA with a server certificate of its own for
/// the same names. EC P-256 keys, SHA-256 signatures, valid from an hour ago for 30 days.
class TlsFiles {
public:
  TlsFiles();
  /// The same files in `dir` (which must exist), left there when this is destroyed.
  explicit TlsFiles(std::string dir);
  ~TlsFiles();
  TlsFiles(const TlsFiles&) = delete;
  TlsFiles& operator=(const TlsFiles&) = delete;

  /// ca.pem, server.pem, server.key, client.pem, client.key, rogue-ca.pem, rogue.pem,
  /// rogue.key: the path of one of them.
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  const std::string& dir() const noexcept { return dir_; }

private:
  void make();
  std::string dir_;
  bool remove_ = true;
};

}  // namespace troupe::testing
