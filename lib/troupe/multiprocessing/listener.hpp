// troupe/multiprocessing/listener.hpp — multiprocessing.connection.Listener and Client, and the
// addresses they use.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "troupe/detail/async.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing {

/// A listening or connecting address. String forms (for command lines): `HOST:PORT`
/// (IPv4 or a name), `[V6]:PORT`, `unix:PATH`, `unix-abstract:NAME`.
struct Address {
  enum class Family { inet, inet6, unix_path, unix_abstract };
  Family family = Family::inet;
  std::string host;  ///< inet/inet6: a numeric address or a name; unix: path or abstract name
  std::uint16_t port = 0;

  /// @throws ValueError naming what is wrong with `text`.
  static Address parse(std::string_view text);
  /// The string form, which parse() reads back.
  std::string str() const;
  bool operator==(const Address&) const = default;
};

/// Options of a Listener, beyond Python's `(address, family, backlog, authkey)`.
struct ListenerOptions {
  int backlog = 1;
  /// The authkey. Required for inet addresses (authentication is mandatory on network
  /// listeners); for Unix sockets nullopt means no handshake, as Python's authkey=None.
  std::optional<AuthenticationString> authkey;
  AuthOptions auth;
  /// The longest a peer may take over the handshake (TLS's and the HMAC one) before it is
  /// dropped.
  std::chrono::milliseconds handshake_timeout{10000};
  /// How many peers may be in their handshakes at once. Handshakes proceed side by side, so
  /// a peer that stalls delays nobody else; when this many are pending and another peer
  /// arrives, the oldest pending one is dropped (it had the longest time). At most as many
  /// authenticated connections wait for accept() before the listener stops accepting (the
  /// rest wait in the kernel's backlog). At least 1.
  std::size_t max_pending_handshakes = 64;
  /// TLS under every accepted connection (make_tls_context(TlsRole::server, …) or a context
  /// of your own); null for plain sockets. On top of the authkey, never instead of it.
  std::shared_ptr<boost::asio::ssl::context> tls;
};

/// Options of a Client, beyond Python's `(address, family, authkey)`.
struct ClientOptions {
  /// The authkey; nullopt means no handshake (as Python's authkey=None).
  std::optional<AuthenticationString> authkey;
  AuthOptions auth;
  /// The longest connecting and both handshakes may take in all (TimeoutError after it).
  std::chrono::milliseconds timeout{10000};
  /// TLS (make_tls_context(TlsRole::client, …) or a context of your own); null for none.
  std::shared_ptr<boost::asio::ssl::context> tls;
  /// The name or IP address the server's certificate must carry (and the SNI name); empty
  /// means the address's host. Unix sockets have no host: give one if the context verifies.
  std::string tls_server_name;
};

namespace detail {

/// What accepting a peer came to: an authenticated connection, or why the peer was dropped.
struct AcceptOutcome {
  boost::system::error_code ec;
  Connection conn;
  std::optional<Address> peer;
  std::string why;  // a failed TLS handshake's reason (Connection::tls_error), else empty
};

/// Accepts peers on a listening socket and runs their handshakes side by side on one strand of
/// an executor (TLS, then the HMAC one, each peer under one deadline); authenticated
/// connections and failures are handed to waiters in the order they complete. Bounded: at most
/// max_pending_handshakes in progress (the oldest dropped for a newcomer) and as many outcomes
/// waiting for a waiter. Shared by Listener::accept (on a private io_context) and async_accept.
class AcceptEngine : public std::enable_shared_from_this<AcceptEngine> {
public:
  using Waiter = std::function<void(AcceptOutcome&)>;
  /// `listen_fd` is duplicated: the engine owns its copy until stop() has run. Connections are
  /// handed out with `ex` as their executor.
  static std::shared_ptr<AcceptEngine> make(int listen_fd, const Address& address,
                                            const ListenerOptions& options,
                                            const boost::asio::any_io_executor& ex);
  ~AcceptEngine();
  AcceptEngine(const AcceptEngine&) = delete;
  AcceptEngine& operator=(const AcceptEngine&) = delete;

  /// A waiter's number, for want() and cancel(): taken before the waiter is handed over, so a
  /// canceller can be in place before the waiter can run (it may run at once on another thread).
  std::uint64_t next_id() noexcept;
  /// Asks for the next outcome for waiter `id` (from next_id()); `w` runs on the engine's
  /// strand, never inside this call.
  void want(std::uint64_t id, Waiter w);
  /// Ends waiter `id` with operation_aborted, if it still waits (on the strand). Thread-safe.
  void cancel(std::uint64_t id);
  /// Drops every pending peer and waiting outcome, fails the waiters with operation_aborted
  /// and closes the engine's socket, on the strand. Thread-safe.
  void stop();
  /// The peer of the last connection handed to a waiter.
  std::optional<Address> last_accepted() const;
  const boost::asio::any_io_executor& executor() const noexcept { return strand_; }

private:
  struct Pending;
  AcceptEngine() = default;
  void pump();
  void start(int fd, std::optional<Address> peer);
  void finish(const std::shared_ptr<Pending>& p, boost::system::error_code ec);
  void deliver(AcceptOutcome o);
  // Gives `o` to `w` (noting the peer of a connection for last_accepted()).
  void hand(Waiter& w, AcceptOutcome& o);
  // Every waiter's outcome is `ec`.
  void fail_waiters(boost::system::error_code ec);
  void teardown();

  UniqueFd fd_;
  Address address_;
  ListenerOptions options_;
  boost::asio::any_io_executor executor_;  // what accepted connections are handed out with
  boost::asio::any_io_executor strand_;
  ReactorRegistration reactor_;
  bool waiting_ = false;  // a wait for the listening socket is outstanding
  bool stopped_ = false;
  std::deque<std::shared_ptr<Pending>> pending_;
  std::deque<AcceptOutcome> ready_;
  std::deque<std::pair<std::uint64_t, Waiter>> waiters_;
  std::atomic<std::uint64_t> next_waiter_{0};
  mutable std::mutex last_m_;
  std::optional<Address> last_;
};

}  // namespace detail

/// Python: `multiprocessing.connection.Listener(address=None, family=None, backlog=1,
/// authkey=None)`. With no address, a free port on 127.0.0.1. A Unix socket path is unlinked
/// on close. Accepted connections are authenticated (deliver, then answer the peer's challenge).
class Listener {
public:
  explicit Listener(std::optional<Address> address = std::nullopt, ListenerOptions options = {});
  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  /// Python: `accept()`: the next authenticated connection. Peers are accepted as they come and
  /// their handshakes run side by side (non-blocking, each under one handshake_timeout from its
  /// connect to its last byte), so accept() returns the first peer to complete: one that
  /// stalls or drips delays nobody (see max_pending_handshakes). A peer that fails its
  /// handshake is dropped and accept() raises what it failed with, in the order outcomes come:
  /// AuthenticationError (as Python's), TimeoutError, OSError; call it again for the next.
  /// Handshakes progress while accept() runs; several threads may call it at once.
  /// @throws OSError EBADF when closed.
  Connection accept();
  /// accept(), asynchronously, with the same engine on the listener's executor: handshakes
  /// side by side, each under handshake_timeout. Completion: void(boost::system::error_code,
  /// Connection), the connection on the listener's executor; errc::authentication_error,
  /// errc::timeout_error or an errno code for a peer that failed (call again for the next);
  /// EBADF when the listener is closed, operation_aborted when it is closed meanwhile or the
  /// operation is cancelled (per-operation, terminal; a peer already accepted stays for the
  /// next call). Asio's rules (doc/async.md): never completes inside the call.
  template <class Token>
  auto async_accept(Token&& token);
  /// The executor that runs async_accept's engine and the connections it accepts (accept()'s
  /// too): the one given to set_executor(), else Asio's system executor (doc/async.md).
  const boost::asio::any_io_executor& get_executor() const noexcept { return executor_; }
  /// Gives the listener its executor (an empty one: the default). Set it before the first
  /// async_accept: a change drops the engine, its pending handshakes and waiting operations
  /// (operation_aborted).
  void set_executor(boost::asio::any_io_executor ex);

  /// Python: `close()`.
  void close() noexcept;
  /// The listening socket (Python: `_listener._socket.fileno()`), e.g. for connection::wait or
  /// to wake a blocked accept() with shutdown(2). @throws OSError if closed.
  int fileno() const;
  /// Python: `address`, `last_accepted`.
  const Address& address() const noexcept { return address_; }
  const std::optional<Address>& last_accepted() const noexcept;

private:
  // The engine async_accept uses on `ex` (made on first use).
  std::shared_ptr<detail::AcceptEngine> engine_for(const boost::asio::any_io_executor& ex);

  UniqueFd fd_;
  boost::asio::any_io_executor executor_ = troupe::detail::default_io_executor();
  Address address_;
  mutable std::optional<Address> last_accepted_;
  ListenerOptions options_;
  std::shared_ptr<detail::AcceptEngine> engine_;  // async_accept's
  std::unique_ptr<boost::asio::io_context> own_;  // accept()'s, and its engine:
  std::shared_ptr<detail::AcceptEngine> own_engine_;
  struct Driver;  // which accept() runs own_ (one at a time; the others wait for theirs)
  std::shared_ptr<Driver> driver_;
};

namespace detail {

/// Acknowledges at once what has come on TCP socket `fd`, and what comes next (TCP_QUICKACK);
/// nothing on another socket.
void quick_ack(int fd) noexcept;

/// Both halves of the HMAC handshake as asynchronous reads and writes: deliver the challenge
/// then answer the peer's (`challenge_first`, a Listener), or the reverse (a Client). `c`,
/// `key` and `auth` must outlive the operation. Completion: void(boost::system::error_code);
/// errc::authentication_error if either side refuses.
///
/// A client sends its own challenge with its answer, in one write, instead of after the peer's
/// welcome: one round trip fewer. The peer (troupe's Listener, or CPython's deliver_challenge
/// then answer_challenge) reads one message at a time, so the challenge waits in the socket
/// until it asks for it; a peer that refuses the answer closes with it unread.
template <class Token>
auto async_handshake(Connection& c, const AuthenticationString& key, const AuthOptions& auth,
                     bool challenge_first, Token&& token) {
  struct State {
    Challenge challenge;
    std::vector<std::byte> answer;
    std::span<const std::byte> both[2];  // two messages sent together (see cases 2 and 4)
    int step = 0;                        // 0-2 the first half, 3-5 the second, 6 done
    bool check_welcome = false;
    bool refused = false;
    bool challenge_sent = false;
  };
  auto body = [&c, &key, &auth, challenge_first, st = std::make_unique<State>()](
                  auto& op, boost::system::error_code ec = {},
                  std::vector<std::byte> msg = {}) mutable {
    const auto refused = to_boost(troupe::make_error_code(troupe::errc::authentication_error));
    if (ec) return op.complete(ec);
    if (st->refused) return op.complete(refused);  // #FAILURE# sent
    try {
      if (st->check_welcome) {
        st->check_welcome = false;
        check_welcome(msg);
      }
      if (st->step == 6) return op.complete({});
      const bool deliver = (st->step < 3) == challenge_first;
      switch (st->step++ % 3 + (deliver ? 0 : 3)) {
        case 0:  // deliver: the challenge (a client's went with its answer)
          if (st->challenge_sent) {
            ++st->step;
            // The peer's #WELCOME# came, and its answer to the challenge follows. A peer
            // without TCP_NODELAY (CPython) holds that answer back (Nagle) until the welcome
            // is acknowledged, which Linux delays by up to 40 ms when it has nothing to send
            // back: acknowledge it now. Measured against CPython 3.13's manager on 127.0.0.1:
            // 45 ms per connection before, 1 ms after. Not TCP: fails, harmlessly.
            quick_ack(c.fileno());
            return c.async_recv_bytes(op.resume(), 256);
          }
          st->challenge = make_challenge(auth);
          return c.async_send_bytes(st->challenge.wire, op.resume());
        case 1: return c.async_recv_bytes(op.resume(), 256);
        case 2:  // the peer's answer
          try {
            check_answer(st->challenge, msg, key, auth);
          } catch (const AuthenticationError&) {
            st->refused = true;
            return c.async_send_bytes(failure_message(), op.resume());
          }
          if (challenge_first) {
            // A troupe client sent its challenge with its answer, so it is here already: the
            // welcome and the answer to it go in one write (the client waits for one message
            // fewer). CPython's client sends it only after the welcome: nothing is buffered.
            if (auto challenge = c.recv_buffered(256)) {
              st->answer = make_answer(*challenge, key, auth);
              st->both[0] = welcome_message();
              st->both[1] = st->answer;
              st->step = 5;  // the peer's verdict next
              return c.async_send_messages(std::span<const std::span<const std::byte>>(st->both),
                                           op.resume());
            }
          }
          return c.async_send_bytes(welcome_message(), op.resume());
        case 3:  // answer: the peer's challenge
          return c.async_recv_bytes(op.resume(), 256);
        case 4:
          st->answer = make_answer(msg, key, auth);
          if (!challenge_first) {
            st->challenge = make_challenge(auth);
            st->challenge_sent = true;
            st->both[0] = st->answer;
            st->both[1] = st->challenge.wire;
            return c.async_send_messages(std::span<const std::span<const std::byte>>(st->both),
                                         op.resume());
          }
          return c.async_send_bytes(st->answer, op.resume());
        default:  // the peer's verdict, checked on the next entry
          st->check_welcome = true;
          if (st->challenge_sent) quick_ack(c.fileno());  // see case 0
          return c.async_recv_bytes(op.resume(), 256);
      }
    } catch (const AuthenticationError&) {
      op.complete(refused);
    } catch (const std::exception&) {
      op.complete(to_boost(troupe::make_error_code(troupe::errc::os_error)));
    }
  };
  return troupe::detail::async_operation<void(boost::system::error_code)>(
      std::move(body), std::forward<Token>(token), c.get_executor());
}

/// What an asynchronous accept or connect keeps between steps.
struct Establishing {
  Connection conn;
  std::optional<boost::asio::steady_timer> timer;
  int step = 0;
  bool timed_out = false;

  /// Bounds the rest by `t`: when it passes, the connection is closed (the step in progress
  /// ends with operation_aborted) and the outcome is errc::timeout_error.
  template <class Executor>
  static void start_deadline(const std::shared_ptr<Establishing>& st, const Executor& ex,
                             std::chrono::milliseconds t) {
    st->timer.emplace(ex, t);
    st->timer->async_wait([st](boost::system::error_code ec) {
      if (!ec) {
        st->timed_out = true;
        st->conn.close();
      }
    });
  }
  /// Closes the connection and gives the error to complete with.
  boost::system::error_code fail(std::error_code why) {
    if (timer) timer->cancel();
    conn.close();
    if (timed_out) why = troupe::make_error_code(troupe::errc::timeout_error);
    return to_boost(why);
  }
};

/// Connecting, in steps: a new socket (close-on-exec, non-blocking) connecting to `address`;
/// -1 with errno on failure. `in_progress`: wait until writable, then finish_connect.
int start_connect(const Address& address, bool& in_progress);
/// The outcome of a connect that was in progress: 0 or the errno.
int finish_connect(int fd) noexcept;
/// A connected socket made ready for the Connection: blocking mode, TCP_NODELAY on TCP.
void connected(int fd) noexcept;
/// The name a client's TLS checks the server's certificate for.
std::string tls_peer_name(const Address& address, const ClientOptions& options);

}  // namespace detail

template <class Token>
auto Listener::async_accept(Token&& token) {
  auto body = [this](auto& op, boost::system::error_code ec = {}, Connection c = {}) {
    if (!op.initiating()) return op.complete(ec, std::move(c));
    if (!fd_)
      return op.complete(detail::to_boost(std::error_code(EBADF, std::generic_category())),
                         Connection());
    auto engine = engine_for(executor_);
    auto slot = op.cancellation_slot();
    // The engine's waiters are copyable: the operation goes in a shared box.
    auto box = std::make_shared<std::optional<std::decay_t<decltype(op.resume())>>>();
    box->emplace(op.resume());
    // The canceller goes in before the waiter is handed over: on another thread of the executor
    // the waiter may run, and the operation complete (clearing the slot), at once.
    const auto id = engine->next_id();
    if (slot.is_connected())
      slot.assign([engine, id](boost::asio::cancellation_type) { engine->cancel(id); });
    engine->want(id, [box](detail::AcceptOutcome& o) {
      troupe::detail::resume_later(std::move(**box), o.ec, std::move(o.conn));
    });
  };
  return troupe::detail::async_operation<void(boost::system::error_code, Connection)>(
      std::move(body), std::forward<Token>(token), executor_);
}

/// Python: `multiprocessing.connection.Client(address, family=None, authkey=None)`: connects
/// and, with a key, authenticates (answer, then challenge the server). TCP_NODELAY on TCP.
/// @throws ConnectionRefusedError, FileNotFoundError, … naming the address;
///         AuthenticationError if the handshake fails.
Connection Client(const Address& address,
                  std::optional<AuthenticationString> authkey = std::nullopt,
                  const AuthOptions& auth = {},
                  std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10));

/// Client with all the options: TLS, and one deadline over connecting and both handshakes.
/// @throws TimeoutError when options.timeout passes; the others as above.
Connection Client(const Address& address, const ClientOptions& options);

namespace detail {

/// async_client; a failed TLS handshake's reason goes to `*why` (if given; it must outlive the
/// operation), for the blocking Client's message.
template <class Token>
auto async_client(boost::asio::any_io_executor ex, Address address, ClientOptions options,
                  std::string* why, Token&& token) {
  struct State : detail::Establishing {
    Address address;
    ClientOptions options;
    std::optional<boost::asio::steady_timer> retry;
    std::string* why = nullptr;
  };
  auto st = std::make_shared<State>();
  st->address = std::move(address);
  st->options = std::move(options);
  st->why = why;
  auto body = [st, ex](auto& op, boost::system::error_code ec = {}) mutable {
    using D = boost::asio::posix::descriptor_base;
    auto fail = [&](std::error_code why) {
      if (st->why && st->conn.tls()) *st->why = st->conn.tls_error();
      op.complete(st->fail(why), Connection());
    };
    auto& o = st->options;
    if (ec) return fail(std::error_code(ec));
    switch (st->step) {
      case 0:  // connect (again, after a Unix listener's full backlog)
        if (!st->timer) detail::Establishing::start_deadline(st, ex, o.timeout);
        if (st->timed_out) return fail(troupe::make_error_code(troupe::errc::timeout_error));
        {
          bool in_progress = false;
          int fd;
          try {
            fd = detail::start_connect(st->address, in_progress);
          } catch (const std::system_error& e) {  // OSError: a name that does not resolve
            return fail(e.code());
          } catch (const std::exception&) {  // ValueError: a Unix name too long
            return fail(troupe::make_error_code(troupe::errc::value_error));
          }
          if (fd < 0 && errno == EAGAIN) {  // Unix socket: the listener's backlog is full
            st->retry.emplace(ex, std::chrono::milliseconds(5));
            return st->retry->async_wait(op.resume());
          }
          if (fd < 0) return fail(std::error_code(errno, std::generic_category()));
          st->conn = Connection(fd);
          st->conn.set_executor(ex);
          st->step = 1;
          if (in_progress) return st->conn.async_wait(D::wait_write, op.resume());
        }
        [[fallthrough]];
      case 1:  // connected, or failed to
        if (const int err = detail::finish_connect(st->conn.fileno()))
          return fail(std::error_code(err, std::generic_category()));
        detail::connected(st->conn.fileno());
        st->step = 2;
        if (o.tls)
          return st->conn.async_start_tls(*o.tls, TlsRole::client,
                                          detail::tls_peer_name(st->address, o), op.resume());
        [[fallthrough]];
      case 2:  // TLS is up (if asked for)
        st->step = 3;
        if (o.authkey)
          return detail::async_handshake(st->conn, *o.authkey, o.auth, false, op.resume());
        [[fallthrough]];
      default: st->timer->cancel(); op.complete({}, std::move(st->conn));
    }
  };
  return troupe::detail::async_operation<void(boost::system::error_code, Connection)>(
      std::move(body), std::forward<Token>(token), ex);
}

}  // namespace detail

/// Client, asynchronously, on `ex`: connects (non-blocking), runs TLS if asked and the HMAC
/// handshake as asynchronous reads and writes, all under options.timeout. `ex` is the I/O
/// executor of the operation and of the connection it gives (Asio's rules, doc/async.md). Names are
/// resolved with getaddrinfo, which blocks: give numeric addresses where that matters. Completion:
/// void(boost::system::error_code, Connection): errno codes for the connect (ECONNREFUSED, ENOENT,
/// …), errc::authentication_error, errc::timeout_error.
template <class Token>
auto async_client(boost::asio::any_io_executor ex, Address address, ClientOptions options,
                  Token&& token) {
  return detail::async_client(std::move(ex), std::move(address), std::move(options), nullptr,
                              std::forward<Token>(token));
}

}  // namespace troupe::multiprocessing
