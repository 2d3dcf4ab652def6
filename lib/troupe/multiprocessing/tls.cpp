#include "troupe/multiprocessing/tls.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "troupe/errors.hpp"

#include <arpa/inet.h>

namespace troupe::multiprocessing {
namespace {

// OpenSSL's error queue, oldest first, as one line (and emptied).
std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error recorded" : out;
}

// ---- the BIO: the socket, never blocking ----

int bio_write(BIO* b, const char* data, int len) {
  const int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b)));
  BIO_clear_retry_flags(b);
  ssize_t r;
  do {
    r = ::send(fd, data, static_cast<std::size_t>(len), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return static_cast<int>(r);
}

int bio_read(BIO* b, char* data, int len) {
  const int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b)));
  BIO_clear_retry_flags(b);
  ssize_t r;
  do {
    r = ::recv(fd, data, static_cast<std::size_t>(len), MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return static_cast<int>(r);
}

long bio_ctrl(BIO*, int cmd, long, void*) {
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int bio_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

BIO_METHOD* socket_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "troupe socket");
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    return m;
  }();
  return method;
}

// The socket's SO_RCVTIMEO or SO_SNDTIMEO as a poll(2) timeout (-1: none).
int socket_timeout_ms(int fd, bool for_write) {
  timeval tv{};
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, for_write ? SO_SNDTIMEO : SO_RCVTIMEO, &tv, &len) != 0 ||
      (tv.tv_sec == 0 && tv.tv_usec == 0))
    return -1;
  return static_cast<int>(tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000);
}

bool is_ip_literal(const std::string& s) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

}  // namespace

std::shared_ptr<boost::asio::ssl::context> make_tls_context(TlsRole role, const TlsConfig& config) {
  const bool server = role == TlsRole::server;
  auto ctx = std::make_shared<boost::asio::ssl::context>(
      server ? boost::asio::ssl::context::tls_server : boost::asio::ssl::context::tls_client);
  SSL_CTX* c = ctx->native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(c, 0);
  auto fail = [&](const std::string& what) {
    throw ValueError("TLS " + std::string(server ? "server" : "client") + " context: " + what +
                     ": " + openssl_errors());
  };
  ERR_clear_error();
  if (server && config.certificate_chain.empty())
    throw ValueError("TLS server context: a certificate_chain (and private_key) is required");
  if (!config.certificate_chain.empty()) {
    if (SSL_CTX_use_certificate_chain_file(c, config.certificate_chain.c_str()) != 1)
      fail("cannot load certificate chain '" + config.certificate_chain + "'");
    if (config.private_key.empty())
      throw ValueError("TLS context: certificate_chain '" + config.certificate_chain +
                       "' given without a private_key");
    if (SSL_CTX_use_PrivateKey_file(c, config.private_key.c_str(), SSL_FILETYPE_PEM) != 1)
      fail("cannot load private key '" + config.private_key + "' for certificate '" +
           config.certificate_chain + "'");
    if (SSL_CTX_check_private_key(c) != 1)
      fail("private key '" + config.private_key + "' does not match '" + config.certificate_chain +
           "'");
  }
  if (!config.trusted_ca.empty()) {
    if (SSL_CTX_load_verify_locations(c, config.trusted_ca.c_str(), nullptr) != 1)
      fail("cannot load trusted CAs '" + config.trusted_ca + "'");
  } else if (!server) {
    SSL_CTX_set_default_verify_paths(c);
  }
  if (server) {
    if (!config.trusted_ca.empty())
      SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  } else {
    SSL_CTX_set_verify(c, config.verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  }
  return ctx;
}

namespace detail {

TlsSession::TlsSession(boost::asio::ssl::context& ctx, int fd, TlsRole role,
                       std::string_view peer_name)
    : fd_(fd) {
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx.native_handle());
  if (!ssl) throw ValueError("TLS: cannot make a session: " + openssl_errors());
  ssl_ = ssl;
  BIO* bio = BIO_new(socket_method());
  if (!bio) {
    SSL_free(ssl);
    throw ValueError("TLS: cannot make a BIO: " + openssl_errors());
  }
  BIO_set_data(bio, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
  SSL_set_bio(ssl, bio, bio);
  // Writes may be retried from another buffer holding the same bytes (gathered on the stack),
  // and report each record written, as a socket reports a short write.
  SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  // A peer that closes the socket without close_notify ends the stream as EOF (Python's
  // suppress_ragged_eofs): the framing still catches a message cut short.
  SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (role == TlsRole::client) {
    SSL_set_connect_state(ssl);
    if (!peer_name.empty()) {
      const std::string name(peer_name);
      if (is_ip_literal(name)) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
      } else {
        SSL_set_tlsext_host_name(ssl, name.c_str());
        SSL_set1_host(ssl, name.c_str());
      }
    }
  } else {
    SSL_set_accept_state(ssl);
  }
}

TlsSession::~TlsSession() {
  SSL_free(static_cast<SSL*>(ssl_));
}

template <class Op>
ssize_t TlsSession::run(Kind kind, bool block, Op op) noexcept {
  SSL* ssl = static_cast<SSL*>(ssl_);
  for (;;) {
    int ret, code, saved_errno;
    {
      std::lock_guard lock(mutex_);
      if (broken_) {
        errno = EPROTO;
        return -1;
      }
      ERR_clear_error();
      errno = 0;
      ret = op(ssl);
      if (ret > 0) return ret;
      saved_errno = errno;
      code = SSL_get_error(ssl, ret);
      switch (code) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE: want_write_[kind] = code == SSL_ERROR_WANT_WRITE; break;
        case SSL_ERROR_ZERO_RETURN: return 0;
        case SSL_ERROR_SYSCALL:
          broken_ = true;
          error_ = saved_errno ? std::strerror(saved_errno) : "the peer closed the connection";
          ERR_clear_error();
          errno = saved_errno ? saved_errno : ECONNRESET;
          return -1;
        default: {
          broken_ = true;
          error_ = openssl_errors();
          const long v = SSL_get_verify_result(ssl);
          if (v != X509_V_OK)
            error_ += std::string(" (certificate: ") + X509_verify_cert_error_string(v) + ")";
          errno = EPROTO;
          return -1;
        }
      }
    }
    if (!block) {
      errno = EAGAIN;
      return -1;
    }
    const bool w = want_write_[kind];
    pollfd p{fd_, static_cast<short>(w ? POLLOUT : POLLIN), 0};
    const int r = ::poll(&p, 1, socket_timeout_ms(fd_, w));
    if (r == 0) {  // as a read past SO_RCVTIMEO
      errno = EAGAIN;
      return -1;
    }
    if (r < 0 && errno != EINTR) return -1;
  }
}

int TlsSession::handshake(bool block) noexcept {
  const ssize_t r = run(kHandshake, block, [](SSL* s) { return SSL_do_handshake(s); });
  return r > 0 ? 0 : -1;
}

ssize_t TlsSession::read(void* p, std::size_t n, bool block) noexcept {
  if (n == 0) return 0;
  std::size_t got = 0;
  const ssize_t r = run(kRead, block, [&](SSL* s) { return SSL_read_ex(s, p, n, &got); });
  return r > 0 ? static_cast<ssize_t>(got) : r;
}

bool TlsSession::readable_now() noexcept {
  if (pending() > 0) return true;
  char c;
  std::size_t got = 0;
  const ssize_t r = run(kRead, false, [&](SSL* s) { return SSL_peek_ex(s, &c, 1, &got); });
  return r >= 0 || errno != EAGAIN;
}

ssize_t TlsSession::writev(const iovec* iov, int iovcnt, bool block) noexcept {
  while (iovcnt > 0 && iov->iov_len == 0) {
    ++iov;
    --iovcnt;
  }
  if (iovcnt == 0) return 0;
  // Small buffers (a frame header and a short payload, say) go out as one record.
  constexpr std::size_t kGather = 16 * 1024;
  unsigned char stage[kGather];
  const void* p = iov->iov_base;
  std::size_t n = iov->iov_len;
  if (n < kGather && iovcnt > 1) {
    n = 0;
    for (int i = 0; i < iovcnt && n < kGather; ++i) {
      const std::size_t take = std::min(kGather - n, iov[i].iov_len);
      std::memcpy(stage + n, iov[i].iov_base, take);
      n += take;
    }
    p = stage;
  }
  std::size_t written = 0;
  const ssize_t r = run(kWrite, block, [&](SSL* s) { return SSL_write_ex(s, p, n, &written); });
  return r > 0 ? static_cast<ssize_t>(written) : (r == 0 ? (errno = EPIPE, -1) : r);
}

std::size_t TlsSession::pending() const noexcept {
  std::lock_guard lock(mutex_);
  return static_cast<std::size_t>(SSL_pending(static_cast<SSL*>(ssl_)));
}

std::string TlsSession::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

std::string TlsSession::description() const {
  std::lock_guard lock(mutex_);
  const SSL* s = static_cast<const SSL*>(ssl_);
  return std::string(SSL_get_version(s)) + " " + SSL_CIPHER_get_name(SSL_get_current_cipher(s));
}

void TlsSession::shutdown() noexcept {
  std::lock_guard lock(mutex_);
  SSL* s = static_cast<SSL*>(ssl_);
  if (broken_ || !SSL_is_init_finished(s)) return;
  ERR_clear_error();
  SSL_shutdown(s);  // one non-blocking try: close_notify if the socket takes it
  ERR_clear_error();
}

}  // namespace detail
}  // namespace troupe::multiprocessing
