#include "troupe/multiprocessing/listener.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/strand.hpp>

#include "troupe/detail/futex.hpp"
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

// Accepts a waiting peer (the socket is non-blocking): the fd (close-on-exec; on TCP with
// TCP_NODELAY, inherited from the listening socket) and the peer's address; -1 with errno
// (EAGAIN when none is waiting).
int accept_peer(int listen_fd, Address::Family family, std::optional<Address>& peer) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int fd;
  do {
    len = sizeof ss;
    fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
  } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (fd < 0) return -1;
  try {
    peer = from_sockaddr(ss, len, family);
  } catch (...) {
    peer.reset();
  }
  return fd;
}

// The exception for a failed accept or connect, naming the peer and what it failed with.
[[noreturn]] void throw_outcome(const boost::system::error_code& ec, const std::string& who,
                                std::chrono::milliseconds timeout, const std::string& why = {}) {
  const std::error_code e(ec);
  if (e == troupe::make_error_code(troupe::errc::timeout_error))
    throw TimeoutError(who + ": not connected and authenticated within the deadline of " +
                       std::to_string(timeout.count()) + " ms");
  if (e == troupe::make_error_code(troupe::errc::authentication_error)) {
    if (!why.empty()) throw AuthenticationError(who + ": TLS handshake failed: " + why);
    throw AuthenticationError(who +
                              ": authentication failed (wrong key, or not a "
                              "multiprocessing peer)");
  }
  if (ec == boost::asio::error::operation_aborted)
    throw_os_error(EBADF, who + ": the listener was closed");
  if (e.category() == std::generic_category() || e.category() == std::system_category())
    throw_os_error(e.value(), who);
  throw_error(e, who);
}

// Runs `ctx` until done(): handlers that are ready run at once; between them the thread spins,
// polling the reactor, before it sleeps in it (DESIGN.md, "Waiting": a handshake's replies
// come within microseconds, a wake-up from epoll costs tens). False if `ctx` ran out of work.
template <class Done>
bool run_until(boost::asio::io_context& ctx, troupe::detail::AdaptiveSpin& spin, Done done) {
  while (!done()) {
    if (ctx.stopped()) ctx.restart();
    if (ctx.poll_one() > 0) continue;
    if (spin.spin([&] { return ctx.poll_one() > 0 || done(); })) continue;
    if (done()) break;
    if (ctx.stopped()) ctx.restart();
    if (ctx.run_one() == 0) return done();
    spin.woke();
  }
  return true;
}

troupe::detail::AdaptiveSpin& client_spin() {
  static troupe::detail::AdaptiveSpin s;
  return s;
}

troupe::detail::AdaptiveSpin& accept_spin() {
  static troupe::detail::AdaptiveSpin s;
  return s;
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

struct Listener::Driver {
  std::mutex m;
  std::condition_variable cv;
  bool driving = false;
};

Listener::Listener(std::optional<Address> address, ListenerOptions options)
    : options_(std::move(options)) {
  Address a = address ? *address : Address{Address::Family::inet, "127.0.0.1", 0};
  const bool is_unix =
      a.family == Address::Family::unix_path || a.family == Address::Family::unix_abstract;
  if (!is_unix && !options_.authkey)
    throw ValueError("Listener on " + a.str() +
                     ": a network listener needs an authkey (authentication is mandatory)");
  const SockAddr sa = to_sockaddr(a);
  if (options_.max_pending_handshakes == 0)
    throw ValueError("Listener on " + a.str() + ": max_pending_handshakes must be at least 1");
  // Non-blocking: accept() and async_accept take peers as they come, never blocking in accept4.
  fd_.reset(::socket(sa.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd_) throw_os_error(errno, "Listener: socket for " + a.str());
  if (!is_unix) {
    int one = 1;
    setsockopt(fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    // Every accepted socket inherits it (Linux copies a listening socket's options into the
    // sockets it accepts): no system call per peer.
    setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  if (::bind(fd_.get(), sa.get(), sa.len) != 0 || ::listen(fd_.get(), options_.backlog) != 0) {
    throw_os_error(errno, "Listener: bind/listen on " + a.str());  // fd_ closes it
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  address_ = is_unix ? a : from_sockaddr(ss, len, a.family);
  // accept()'s engine, made here so that threads may call accept() at once (one runs the
  // handshakes, the others wait for their outcomes).
  try {
    own_ = std::make_unique<boost::asio::io_context>(1);
    driver_ = std::make_shared<Driver>();
    own_engine_ = detail::AcceptEngine::make(fd_.get(), address_, options_, own_->get_executor());
  } catch (...) {
    close();
    throw;
  }
}

Listener::Listener(Listener&& o) noexcept = default;

// Written out: the old listener closes first, as close() does (its engines stop, its Unix
// socket's path goes).
Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::move(o.fd_);
    executor_ = std::move(o.executor_);
    address_ = std::move(o.address_);
    last_accepted_ = std::move(o.last_accepted_);
    options_ = std::move(o.options_);
    engine_ = std::move(o.engine_);
    own_ = std::move(o.own_);
    own_engine_ = std::move(o.own_engine_);
    driver_ = std::move(o.driver_);
  }
  return *this;
}

Listener::~Listener() {
  close();
}

void Listener::close() noexcept {
  if (engine_) {
    engine_->stop();  // on its executor: a waiting async_accept ends with operation_aborted
    engine_.reset();
  }
  if (own_engine_) {
    own_engine_->stop();
    own_engine_.reset();
    // The stop, now, unless an accept() runs the io_context (then it runs the stop, and the
    // waiting accept()s end with EBADF).
    std::unique_lock lock(driver_->m);
    if (!driver_->driving) {
      driver_->driving = true;
      lock.unlock();
      try {
        if (own_->stopped()) own_->restart();
        own_->poll();
      } catch (...) {
      }
      lock.lock();
      driver_->driving = false;
      driver_->cv.notify_all();
    }
  }
  if (!fd_) return;
  fd_.reset();
  if (address_.family == Address::Family::unix_path) ::unlink(address_.host.c_str());
}

int Listener::fileno() const {
  if (!fd_) throw_os_error(EBADF, "Listener.fileno: the listener is closed");
  return fd_.get();
}

const std::optional<Address>& Listener::last_accepted() const noexcept {
  if (engine_)
    if (auto a = engine_->last_accepted()) last_accepted_ = std::move(a);
  return last_accepted_;
}

std::shared_ptr<detail::AcceptEngine> Listener::engine_for(const boost::asio::any_io_executor& ex) {
  if (!engine_) engine_ = detail::AcceptEngine::make(fd_.get(), address_, options_, ex);
  return engine_;
}

void Listener::set_executor(boost::asio::any_io_executor ex) {
  ex = troupe::detail::io_executor_or_default(ex);
  if (ex == executor_) return;
  if (engine_) {
    engine_->stop();
    engine_.reset();
  }
  executor_ = std::move(ex);
}

Connection Listener::accept() {
  if (!fd_) throw_os_error(EBADF, "Listener.accept: the listener is closed");
  struct Got {  // filled by whichever thread runs the handler
    std::optional<detail::AcceptOutcome> outcome;
    std::atomic<bool> ready{false};
  };
  auto got = std::make_shared<Got>();
  own_engine_->want(own_engine_->next_id(), [got, d = driver_](detail::AcceptOutcome& o) {
    got->outcome.emplace(std::move(o));
    got->ready.store(true, std::memory_order_release);
    { std::lock_guard lock(d->m); }
    d->cv.notify_all();
  });
  // One thread at a time runs the io_context (its handlers serve every waiting accept());
  // the others sleep until theirs has come or the io_context is free to run.
  std::unique_lock lock(driver_->m);
  while (!got->ready.load(std::memory_order_acquire)) {
    if (driver_->driving) {
      driver_->cv.wait(lock);
      continue;
    }
    driver_->driving = true;
    lock.unlock();
    {
      // The wait for peers does not count as work (it is kept between calls): this does,
      // until an outcome has come.
      auto busy = boost::asio::make_work_guard(*own_);
      if (own_->stopped()) own_->restart();
      run_until(*own_, accept_spin(), [&] { return got->ready.load(std::memory_order_acquire); });
    }
    lock.lock();
    driver_->driving = false;
    driver_->cv.notify_all();
  }
  detail::AcceptOutcome& o = *got->outcome;
  // Under the driver's lock: threads that accept at once each note their peer.
  if (!o.ec) last_accepted_ = o.peer;
  lock.unlock();
  const std::string who =
      "Listener.accept on " + address_.str() + (o.peer ? " from " + o.peer->str() : "");
  if (o.ec) throw_outcome(o.ec, who, options_.handshake_timeout, o.why);
  o.conn.set_executor(executor_);
  return std::move(o.conn);
}

// ---- the accept engine ----------------------------------------------------------------------

namespace detail {

struct AcceptEngine::Pending {
  Connection conn;
  boost::asio::steady_timer timer;
  std::optional<Address> peer;
  bool timed_out = false;
  bool dropped = false;
  Pending(int fd, const boost::asio::any_io_executor& ex, std::optional<Address> p)
      : conn(fd), timer(ex), peer(std::move(p)) {
    conn.set_executor(ex);  // the handshake's I/O, on the engine's strand
  }
};

std::shared_ptr<AcceptEngine> AcceptEngine::make(int listen_fd, const Address& address,
                                                 const ListenerOptions& options,
                                                 const boost::asio::any_io_executor& ex) {
  std::shared_ptr<AcceptEngine> e(new AcceptEngine);
  e->fd_.reset(::fcntl(listen_fd, F_DUPFD_CLOEXEC, 0));
  if (!e->fd_) throw_os_error(errno, "Listener on " + address.str() + ": fcntl(F_DUPFD)");
  e->address_ = address;
  e->options_ = options;
  e->executor_ = ex;
  // Untracked: the engine outlives its waiters and must not keep an io_context running (its
  // pending handshakes do, as every outstanding operation does).
  e->strand_ = boost::asio::make_strand(
      boost::asio::prefer(ex, boost::asio::execution::outstanding_work.untracked));
  return e;
}

// reactor_ lets go of the fd (it is declared after fd_) before fd_ closes it.
AcceptEngine::~AcceptEngine() = default;

std::uint64_t AcceptEngine::next_id() noexcept {
  return next_waiter_.fetch_add(1, std::memory_order_relaxed);
}

void AcceptEngine::want(std::uint64_t id, Waiter w) {
  boost::asio::post(strand_, [self = shared_from_this(), w = std::move(w), id]() mutable {
    if (self->stopped_) {
      AcceptOutcome o{boost::asio::error::operation_aborted, Connection(), std::nullopt, {}};
      return w(o);
    }
    if (!self->ready_.empty()) {
      AcceptOutcome o = std::move(self->ready_.front());
      self->ready_.pop_front();
      self->hand(w, o);
    } else {
      self->waiters_.emplace_back(id, std::move(w));
    }
    self->pump();
  });
}

void AcceptEngine::cancel(std::uint64_t id) {
  boost::asio::post(strand_, [self = shared_from_this(), id] {
    auto& ws = self->waiters_;
    auto it = std::find_if(ws.begin(), ws.end(), [id](const auto& w) { return w.first == id; });
    if (it == ws.end()) return;  // it has had its outcome
    Waiter w = std::move(it->second);
    ws.erase(it);
    AcceptOutcome o{boost::asio::error::operation_aborted, Connection(), std::nullopt, {}};
    w(o);
    if (ws.empty() && self->waiting_) {
      boost::system::error_code ignored;
      self->reactor_.get(self->fd_.get(), self->strand_).cancel(ignored);  // nobody waits for peers
    }
  });
}

void AcceptEngine::stop() {
  boost::asio::post(strand_, [self = shared_from_this()] { self->teardown(); });
}

std::optional<Address> AcceptEngine::last_accepted() const {
  std::lock_guard lock(last_m_);
  return last_;
}

void AcceptEngine::teardown() {
  if (stopped_) return;
  stopped_ = true;
  reactor_.release();  // cancels the wait for peers
  fd_.reset();
  for (auto& p : pending_) {
    p->dropped = true;
    p->timer.cancel();
    p->conn.close();  // its handshake ends with operation_aborted
  }
  pending_.clear();
  ready_.clear();
  fail_waiters(boost::asio::error::operation_aborted);
}

void AcceptEngine::hand(Waiter& w, AcceptOutcome& o) {
  if (!o.ec) {
    std::lock_guard lock(last_m_);
    last_ = o.peer;
  }
  w(o);
}

void AcceptEngine::fail_waiters(boost::system::error_code ec) {
  auto waiters = std::move(waiters_);
  waiters_.clear();
  for (auto& w : waiters) {
    AcceptOutcome o{ec, Connection(), std::nullopt, {}};
    w.second(o);
  }
}

// Takes every peer waiting (while there is room for their outcomes), then, while someone waits
// for an outcome, waits for more.
void AcceptEngine::pump() {
  if (stopped_ || waiting_) return;
  const std::size_t room = options_.max_pending_handshakes;
  while (ready_.size() < room) {
    std::optional<Address> peer;
    const int fd = accept_peer(fd_.get(), address_.family, peer);
    if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // A Unix listening socket that was shut down (shutdown(2) on fileno(), the way to wake
      // a blocked accept) says EAGAIN to a non-blocking accept, and HUP to poll, for ever.
      pollfd hup{fd_.get(), POLLIN, 0};
      if (::poll(&hup, 1, 0) <= 0 || !(hup.revents & (POLLHUP | POLLERR))) break;
      errno = EINVAL;
    }
    if (fd < 0) {
      // Out of fds, or shut down: every waiter hears of it; the next want() tries again.
      const boost::system::error_code ec(errno, boost::system::generic_category());
      if (waiters_.empty()) ready_.push_back({ec, Connection(), std::nullopt, {}});
      fail_waiters(ec);
      return;
    }
    start(fd, std::move(peer));
  }
  // Peers are waited for only while someone waits for an outcome: a pending wait counts as
  // work and would keep the io_context running (want() pumps again).
  if (waiters_.empty()) return;
  waiting_ = true;
  reactor_.get(fd_.get(), strand_)
      .async_wait(boost::asio::posix::descriptor_base::wait_read,
                  [self = shared_from_this()](boost::system::error_code) {
                    self->waiting_ = false;
                    self->pump();  // also after a cancel: a waiter may have come since
                  });
}

void AcceptEngine::start(int fd, std::optional<Address> peer) {
  auto p = std::make_shared<Pending>(fd, strand_, std::move(peer));
  if (!options_.authkey && !options_.tls) return deliver({{}, std::move(p->conn), p->peer, {}});
  if (pending_.size() >= options_.max_pending_handshakes) {
    auto& oldest = pending_.front();
    oldest->dropped = true;
    oldest->timer.cancel();
    oldest->conn.close();
    pending_.pop_front();
  }
  pending_.push_back(p);
  p->timer.expires_after(options_.handshake_timeout);
  p->timer.async_wait([p](boost::system::error_code ec) {
    if (ec || p->dropped) return;
    p->timed_out = true;
    p->conn.close();  // the step in progress ends with operation_aborted
  });
  auto self = shared_from_this();
  auto hmac = [self, p](boost::system::error_code ec) {
    if (ec || !self->options_.authkey) return self->finish(p, ec);
    async_handshake(
        p->conn, *self->options_.authkey, self->options_.auth, true,
        boost::asio::bind_executor(self->strand_,
                                   [self, p](boost::system::error_code e) { self->finish(p, e); }));
  };
  if (options_.tls)
    p->conn.async_start_tls(*options_.tls, TlsRole::server, {},
                            boost::asio::bind_executor(strand_, std::move(hmac)));
  else
    hmac({});
}

void AcceptEngine::finish(const std::shared_ptr<Pending>& p, boost::system::error_code ec) {
  if (p->dropped) return;
  p->timer.cancel();
  std::erase(pending_, p);
  if (ec) {
    if (p->timed_out) ec = to_boost(troupe::make_error_code(troupe::errc::timeout_error));
    std::string why = p->conn.tls() ? p->conn.tls_error() : std::string();
    p->conn.close();
    return deliver({ec, Connection(), p->peer, std::move(why)});
  }
  p->conn.set_executor(executor_);  // the user's async operations run on it
  // A client that writes its #WELCOME# and its first request back to back on a socket without
  // TCP_NODELAY (CPython's Client: a manager's incref, decref and create connections) has the
  // request held by Nagle's algorithm until the #WELCOME# is acknowledged, which Linux delays
  // by up to 40 ms: acknowledge it now (TCP_QUICKACK sends a pending ACK). Measured with a Python
  // 3.12 client of a manager on 127.0.0.1: a create that took 176 ms (CPython's own server too)
  // takes 1 ms. Not a TCP socket: nothing to do (the call fails, harmlessly).
  if (address_.family == Address::Family::inet || address_.family == Address::Family::inet6) {
    const int one = 1;
    (void)::setsockopt(p->conn.fileno(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
  }
  deliver({{}, std::move(p->conn), p->peer, {}});
}

void AcceptEngine::deliver(AcceptOutcome o) {
  if (stopped_) return;
  if (waiters_.empty()) {
    ready_.push_back(std::move(o));
  } else {
    Waiter w = std::move(waiters_.front().second);
    waiters_.pop_front();
    hand(w, o);
  }
  if (waiters_.empty() && waiting_) {
    boost::system::error_code ignored;
    reactor_.get(fd_.get(), strand_).cancel(ignored);  // nobody waits: stop waiting for peers
    return;
  }
  pump();
}

}  // namespace detail

// ---- Client ---------------------------------------------------------------------------------

namespace detail {

int start_connect(const Address& address, bool& in_progress) {
  const SockAddr sa = to_sockaddr(address);
  UniqueFd fd(::socket(sa.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return -1;
  in_progress = false;
  if (::connect(fd.get(), sa.get(), sa.len) != 0) {
    if (errno != EINPROGRESS) return -1;  // with connect's errno (the close keeps it)
    in_progress = true;
  }
  return fd.release();
}

void quick_ack(int fd) noexcept {
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
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
  // The asynchronous connect and handshake on a private io_context: one deadline from the
  // connect to the last byte, whatever the server sends when (a per-read timeout would restart
  // with every byte a dripping server sends).
  boost::asio::io_context ctx(1);
  boost::system::error_code ec;
  Connection c;
  bool done = false;
  std::string why;
  detail::async_client(ctx.get_executor(), address, o, &why,
                       [&](boost::system::error_code e, Connection got) {
                         ec = e;
                         c = std::move(got);
                         done = true;
                       });
  run_until(ctx, client_spin(), [&] { return done; });
  if (!done) ec = detail::to_boost(troupe::make_error_code(troupe::errc::os_error));
  if (ec) throw_outcome(ec, "Client: connect to " + address.str(), o.timeout, why);
  c.set_executor({});  // the default: the private io_context ends here
  return c;
}

}  // namespace troupe::multiprocessing
