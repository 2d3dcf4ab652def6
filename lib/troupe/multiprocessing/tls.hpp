// troupe/multiprocessing/tls.hpp — TLS under a Connection (an option on top of the HMAC
// handshake, never instead of it; doc/security.md).
//
// The record layer is OpenSSL's, configured through an asio::ssl::context (so a context built
// with Asio's own API works as well as one from make_tls_context). Inside TLS the bytes are the
// ones of a plain connection: CPython's framing and handshake.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream_base.hpp>

namespace troupe::multiprocessing {

/// Which end of the TLS handshake: Asio's enum (client or server).
using TlsRole = boost::asio::ssl::stream_base::handshake_type;

/// PEM files for make_tls_context.
struct TlsConfig {
  /// This end's certificate, with any intermediates after it. Required for a server.
  std::string certificate_chain;
  /// The private key of that certificate. Required with certificate_chain.
  std::string private_key;
  /// CA certificates to check the peer's certificate against. A client: empty means the
  /// system's default store. A server: non-empty means clients must present a certificate
  /// that chains to one of these (mutual TLS); empty means clients present none.
  std::string trusted_ca;
  /// Client only: check the server's certificate (chain and name). Turning it off leaves the
  /// connection encrypted but open to a man in the middle; the HMAC handshake still
  /// authenticates both ends by the authkey.
  bool verify_peer = true;
};

/// A context for one role: TLS 1.2 or later, no renegotiation, no session tickets (so that
/// poll() and wait() see application data only). @throws ValueError naming the file and
/// OpenSSL's reason if a file cannot be loaded or the key does not match the certificate.
std::shared_ptr<boost::asio::ssl::context> make_tls_context(TlsRole role, const TlsConfig& config);

namespace detail {

/// One TLS session over a connected socket the Connection owns. OpenSSL only ever reads and
/// writes the socket without blocking (a BIO of troupe's own: recv/send with MSG_DONTWAIT), so
/// the fd stays in blocking mode for the plain calls, a blocking call waits in poll(2) outside
/// the session's lock (one reader and one writer at a time, as on a plain connection, even
/// though an SSL object is not thread-safe), and the asynchronous calls never block. A blocking
/// wait honours the socket's SO_RCVTIMEO/SO_SNDTIMEO, as a plain read or write would.
class TlsSession {
public:
  /// @throws ValueError if OpenSSL cannot make a session.
  TlsSession(boost::asio::ssl::context& ctx, int fd, TlsRole role, std::string_view peer_name);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  /// The TLS handshake, or a step of it: 0 done, -1 with errno (EAGAIN: would block, and
  /// wants_write() says on what; EPROTO: failed, error() says why).
  int handshake(bool block) noexcept;
  /// As read(2): > 0 bytes, 0 at the end of the stream, -1 with errno (EAGAIN when it would
  /// block or SO_RCVTIMEO passed; EPROTO for a TLS error, error() says which).
  ssize_t read(void* p, std::size_t n, bool block) noexcept;
  /// Whether application data (or the end, or an error) is readable now, without blocking.
  bool readable_now() noexcept;
  /// As writev(2), gathering small buffers into one record: bytes written, or -1 with errno.
  ssize_t writev(const iovec* iov, int iovcnt, bool block) noexcept;
  /// Decrypted bytes OpenSSL holds that the next read returns at once.
  std::size_t pending() const noexcept;
  /// What a call that would block (EAGAIN) waits for: true to write, false to read. One
  /// answer per kind of call, so a reader and a writer on two threads do not mix theirs.
  enum Kind { kHandshake, kRead, kWrite };
  bool wants_write(Kind k) const noexcept { return want_write_[k]; }
  /// Why the last call failed: OpenSSL's reason, and the certificate check's result if any.
  std::string error() const;
  /// "TLSv1.3 TLS_AES_256_GCM_SHA384", say.
  std::string description() const;
  /// Sends close_notify if it can without blocking (not after a failure).
  void shutdown() noexcept;

private:
  // Runs one OpenSSL call under the lock; with `block`, waits in poll(2) while it would block.
  template <class Op>
  ssize_t run(Kind kind, bool block, Op op) noexcept;

  void* ssl_ = nullptr;  // SSL*
  int fd_;
  bool want_write_[3] = {false, false, false};
  bool broken_ = false;
  std::string error_;
  mutable std::mutex mutex_;
};

}  // namespace detail
}  // namespace troupe::multiprocessing
