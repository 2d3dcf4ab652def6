#include "troupe/multiprocessing/listener.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "troupe/errors.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

namespace troupe::multiprocessing {
namespace {

struct SockAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

SockAddr to_sockaddr(const Address& a) {
  SockAddr out;
  switch (a.family) {
    case Address::Family::unix_path:
    case Address::Family::unix_abstract: {
      auto* un = reinterpret_cast<sockaddr_un*>(&out.ss);
      un->sun_family = AF_UNIX;
      const bool abstract = a.family == Address::Family::unix_abstract;
      const std::size_t room = sizeof un->sun_path - 1;  // a NUL ends a path, or starts a name
      if (a.host.size() > room)
        throw ValueError("unix socket name too long (" + std::to_string(a.host.size()) +
                         " bytes, limit " + std::to_string(room) + "): " + a.str());
      std::memcpy(un->sun_path + (abstract ? 1 : 0), a.host.data(), a.host.size());
      out.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + a.host.size() + 1);
      return out;
    }
    case Address::Family::inet:
    case Address::Family::inet6: {
      addrinfo hints{};
      hints.ai_family = a.family == Address::Family::inet6 ? AF_INET6 : AF_INET;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      const std::string port = std::to_string(a.port);
      int rc = getaddrinfo(a.host.empty() ? nullptr : a.host.c_str(), port.c_str(), &hints, &res);
      if (rc != 0 || !res)
        throw_os_error(ENOENT, "cannot resolve " + a.str() + ": " + gai_strerror(rc));
      std::memcpy(&out.ss, res->ai_addr, res->ai_addrlen);
      out.len = static_cast<socklen_t>(res->ai_addrlen);
      freeaddrinfo(res);
      return out;
    }
  }
  throw ValueError("bad address family");
}

Address from_sockaddr(const sockaddr_storage& ss, socklen_t len, Address::Family hint) {
  Address a;
  // Both IP families: the numeric host and the port (network order).
  auto ip = [&a](const void* addr, int af, Address::Family family, std::uint16_t port) {
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(af, addr, buf, sizeof buf);
    a.family = family;
    a.host = buf;
    a.port = ntohs(port);
  };
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    ip(&in->sin_addr, AF_INET, Address::Family::inet, in->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ip(&in6->sin6_addr, AF_INET6, Address::Family::inet6, in6->sin6_port);
  } else {
    a.family = hint;
    const auto* un = reinterpret_cast<const sockaddr_un*>(&ss);
    const std::size_t n =
        len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    if (hint == Address::Family::unix_abstract && n > 0) {
      a.host.assign(un->sun_path + 1, n - 1);
    } else {
      a.host.assign(un->sun_path, strnlen(un->sun_path, n));
    }
  }
  return a;
}

// Bounds each read and write of the handshake (0 clears it).
void set_io_timeout(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// Runs `step` with the handshake deadline on; a stalled peer becomes TimeoutError.
template <class Step>
void with_deadline(Connection& c, std::chrono::milliseconds t, const std::string& peer, Step step) {
  set_io_timeout(c.fileno(), t);
  try {
    step();
  } catch (const BlockingIOError&) {
    throw TimeoutError("authentication with " + peer + " timed out after " +
                       std::to_string(t.count()) + " ms");
  }
  if (!c.closed()) set_io_timeout(c.fileno(), std::chrono::milliseconds(0));
}

}  // namespace

// ---- Address --------------------------------------------------------------------------------

Address Address::parse(std::string_view text) {
  Address a;
  if (text.starts_with("unix:")) {
    a.family = Family::unix_path;
    a.host = std::string(text.substr(5));
    if (a.host.empty()) throw ValueError("address '" + std::string(text) + "': empty path");
    return a;
  }
  if (text.starts_with("unix-abstract:")) {
    a.family = Family::unix_abstract;
    a.host = std::string(text.substr(14));
    if (a.host.empty()) throw ValueError("address '" + std::string(text) + "': empty name");
    return a;
  }
  std::string_view host, port;
  if (text.starts_with("[")) {
    auto close = text.find("]:");
    if (close == std::string_view::npos)
      throw ValueError("address '" + std::string(text) + "': expected [V6]:PORT");
    a.family = Family::inet6;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      throw ValueError("address '" + std::string(text) +
                       "': expected HOST:PORT, [V6]:PORT, unix:PATH or unix-abstract:NAME");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoul(std::string(port)) > 65535)
    throw ValueError("address '" + std::string(text) + "': bad port '" + std::string(port) + "'");
  a.host = std::string(host);
  a.port = static_cast<std::uint16_t>(std::stoul(std::string(port)));
  return a;
}

std::string Address::str() const {
  switch (family) {
    case Family::unix_path: return "unix:" + host;
    case Family::unix_abstract: return "unix-abstract:" + host;
    case Family::inet6: return "[" + host + "]:" + std::to_string(port);
    case Family::inet: break;
  }
  return host + ":" + std::to_string(port);
}

// ---- Listener -------------------------------------------------------------------------------

Listener::Listener(std::optional<Address> address, ListenerOptions options)
    : options_(std::move(options)) {
  Address a = address ? *address : Address{Address::Family::inet, "127.0.0.1", 0};
  const bool is_unix =
      a.family == Address::Family::unix_path || a.family == Address::Family::unix_abstract;
  if (!is_unix && !options_.authkey)
    throw ValueError("Listener on " + a.str() +
                     ": a network listener needs an authkey (authentication is mandatory)");
  const SockAddr sa = to_sockaddr(a);
  fd_ = ::socket(sa.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw_os_error(errno, "Listener: socket for " + a.str());
  if (!is_unix) {
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  if (::bind(fd_, sa.get(), sa.len) != 0 || ::listen(fd_, options_.backlog) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw_os_error(err, "Listener: bind/listen on " + a.str());
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  address_ = is_unix ? a : from_sockaddr(ss, len, a.family);
}

Listener::Listener(Listener&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      executor_(std::move(o.executor_)),
      reactor_(std::move(o.reactor_)),
      address_(std::move(o.address_)),
      last_accepted_(std::move(o.last_accepted_)),
      options_(std::move(o.options_)) {}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    executor_ = std::move(o.executor_);
    reactor_ = std::move(o.reactor_);
    address_ = std::move(o.address_);
    last_accepted_ = std::move(o.last_accepted_);
    options_ = std::move(o.options_);
  }
  return *this;
}

Listener::~Listener() {
  close();
}

void Listener::close() noexcept {
  reactor_.release();  // cancels a waiting async_accept
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  if (address_.family == Address::Family::unix_path) ::unlink(address_.host.c_str());
}

int Listener::try_accept(std::optional<Address>& peer) noexcept {
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) {
    errno = EAGAIN;
    return -1;
  }
  return accept_fd(peer);
}

int Listener::accept_fd(std::optional<Address>& peer) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int fd;
  do {
    len = sizeof ss;
    fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return -1;
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  try {
    peer = from_sockaddr(ss, len, address_.family);
  } catch (...) {
    peer.reset();
  }
  return fd;
}

int Listener::fileno() const {
  if (fd_ < 0) throw_os_error(EBADF, "Listener.fileno: the listener is closed");
  return fd_;
}

Connection Listener::accept() {
  if (fd_ < 0) throw_os_error(EBADF, "Listener.accept: the listener is closed");
  std::optional<Address> accepted;
  const int fd = accept_fd(accepted);
  if (fd < 0) throw_os_error(errno, "Listener.accept on " + address_.str());
  last_accepted_ = accepted;
  Connection c(fd);
  if (options_.authkey || options_.tls) {
    const std::string peer = accepted ? accepted->str() : "a peer of " + address_.str();
    with_deadline(c, options_.handshake_timeout, peer, [&] {
      if (options_.tls) c.start_tls(*options_.tls, TlsRole::server);
      if (options_.authkey) {
        deliver_challenge(c, *options_.authkey, options_.auth);
        answer_challenge(c, *options_.authkey, options_.auth);
      }
    });
  }
  return c;
}

// ---- Client ---------------------------------------------------------------------------------

namespace detail {

int start_connect(const Address& address, bool& in_progress) {
  const SockAddr sa = to_sockaddr(address);
  const int fd = ::socket(sa.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  in_progress = false;
  if (::connect(fd, sa.get(), sa.len) != 0) {
    if (errno == EINPROGRESS) {
      in_progress = true;
    } else {
      const int err = errno;
      ::close(fd);
      errno = err;
      return -1;
    }
  }
  return fd;
}

int finish_connect(int fd) noexcept {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

void connected(int fd) noexcept {
  int off = 0;
  ::ioctl(fd, FIONBIO, &off);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
      (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
}

std::string tls_peer_name(const Address& address, const ClientOptions& options) {
  if (!options.tls_server_name.empty()) return options.tls_server_name;
  const bool inet =
      address.family == Address::Family::inet || address.family == Address::Family::inet6;
  return inet ? address.host : std::string();
}

}  // namespace detail

Connection Client(const Address& address, std::optional<AuthenticationString> authkey,
                  const AuthOptions& auth, std::chrono::milliseconds handshake_timeout) {
  ClientOptions o;
  o.authkey = std::move(authkey);
  o.auth = auth;
  o.timeout = handshake_timeout;
  return Client(address, o);
}

Connection Client(const Address& address, const ClientOptions& o) {
  const auto deadline = std::chrono::steady_clock::now() + o.timeout;
  auto left = [&] {
    return std::max(std::chrono::milliseconds(1), std::chrono::ceil<std::chrono::milliseconds>(
                                                      deadline - std::chrono::steady_clock::now()));
  };
  auto timed_out = [&](const char* what) {
    throw TimeoutError(std::string("Client: ") + what + " " + address.str() + " timed out after " +
                       std::to_string(o.timeout.count()) + " ms");
  };
  bool in_progress = false;
  int fd;
  // A Unix listener whose backlog is full refuses at once (EAGAIN): try again until the deadline.
  while ((fd = detail::start_connect(address, in_progress)) < 0 && errno == EAGAIN) {
    if (std::chrono::steady_clock::now() >= deadline) timed_out("connect to");
    ::poll(nullptr, 0, 5);
  }
  if (fd < 0) throw_os_error(errno, "Client: connect to " + address.str());
  Connection c(fd);
  if (in_progress) {
    pollfd p{fd, POLLOUT, 0};
    int r;
    while ((r = ::poll(&p, 1, static_cast<int>(left().count()))) < 0 && errno == EINTR) {
    }
    if (r == 0) timed_out("connect to");
  }
  if (const int err = detail::finish_connect(fd))
    throw_os_error(err, "Client: connect to " + address.str());
  detail::connected(fd);
  if (o.authkey || o.tls) {
    with_deadline(c, left(), address.str(), [&] {
      if (o.tls) c.start_tls(*o.tls, TlsRole::client, detail::tls_peer_name(address, o));
      if (o.authkey) {
        answer_challenge(c, *o.authkey, o.auth);
        deliver_challenge(c, *o.authkey, o.auth);
      }
    });
  }
  return c;
}

}  // namespace troupe::multiprocessing
