// troupe/multiprocessing/listener.hpp — multiprocessing.connection.Listener and Client, and the
// addresses they use.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <boost/asio/steady_timer.hpp>

#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"

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
  /// The longest a peer may take over the handshake before it is dropped.
  std::chrono::milliseconds handshake_timeout{10000};
};

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

  /// Python: `accept()`: the next authenticated connection. A peer that fails the handshake is
  /// dropped and accept() raises AuthenticationError (as Python's); call it again for the next.
  Connection accept();
  /// accept(), asynchronously: waits for a peer in the reactor and runs the handshake as
  /// asynchronous reads and writes under handshake_timeout, so one slow peer holds up nothing.
  /// Completion: void(boost::system::error_code, Connection); errc::authentication_error,
  /// errc::timeout_error or an errno code on failure (the connection is dropped; call again for
  /// the next peer). Executors as for Connection's async operations.
  template <class Token>
  auto async_accept(Token&& token);
  /// The executor used by async_accept when its handler has none.
  void set_executor(boost::asio::any_io_executor ex) { executor_ = std::move(ex); }

  /// Python: `close()`.
  void close() noexcept;
  /// The listening socket (Python: `_listener._socket.fileno()`), e.g. for connection::wait or
  /// to wake a blocked accept() with shutdown(2). @throws OSError if closed.
  int fileno() const;
  /// Python: `address`, `last_accepted`.
  const Address& address() const noexcept { return address_; }
  const std::optional<Address>& last_accepted() const noexcept { return last_accepted_; }

private:
  struct AcceptState;
  // Accepts a pending peer without blocking: the fd, or -1 (errno EAGAIN when none is waiting).
  int try_accept(std::optional<Address>& peer) noexcept;
  // accept4 (blocking), TCP_NODELAY, and the peer's address: the fd, or -1 with errno.
  int accept_fd(std::optional<Address>& peer) noexcept;

  int fd_ = -1;
  boost::asio::any_io_executor executor_;
  detail::ReactorRegistration reactor_;
  Address address_;
  std::optional<Address> last_accepted_;
  ListenerOptions options_;
};

struct Listener::AcceptState {
  Connection conn;
  std::optional<Address> peer;
  std::optional<boost::asio::steady_timer> timer;
  detail::Challenge challenge;
  std::vector<std::byte> answer;
  int step = 0;
  bool timed_out = false;
};

template <class Token>
auto Listener::async_accept(Token&& token) {
  auto impl = [this, st = std::make_shared<AcceptState>()](
                  auto& self, boost::system::error_code ec = {},
                  std::vector<std::byte> msg = {}) mutable {
    auto ex = self.get_executor();
    if constexpr (std::is_same_v<std::decay_t<decltype(ex)>, boost::asio::system_executor>) {
      self.complete(detail::to_boost(troupe::make_error_code(troupe::errc::value_error)),
                    Connection());
    } else {
      auto fail = [&](std::error_code why) {
        if (st->timer) st->timer->cancel();
        st->conn.close();
        if (st->timed_out) why = troupe::make_error_code(troupe::errc::timeout_error);
        self.complete(detail::to_boost(why), Connection());
      };
      const auto& key = *options_.authkey;
      try {
        switch (st->step) {
          case 0: {  // waiting for a peer
            if (ec) return fail(std::error_code(ec));
            if (fd_ < 0) return fail(std::error_code(EBADF, std::generic_category()));
            const int fd = try_accept(st->peer);
            if (fd < 0) {
              if (errno != EAGAIN && errno != EWOULDBLOCK)
                return fail(std::error_code(errno, std::generic_category()));
              reactor_.get(fd_, boost::asio::any_io_executor(ex))
                  .async_wait(boost::asio::posix::descriptor_base::wait_read, std::move(self));
              return reactor_.keep_blocking(fd_);
            }
            st->conn = Connection(fd);
            if (!options_.authkey) {
              last_accepted_ = st->peer;
              return self.complete({}, std::move(st->conn));
            }
            st->timer.emplace(ex, options_.handshake_timeout);
            st->timer->async_wait([st = st](boost::system::error_code tec) {
              if (!tec) {
                st->timed_out = true;
                st->conn.close();  // the outstanding read or write ends
              }
            });
            st->challenge = detail::make_challenge(options_.auth);
            st->step = 1;
            return st->conn.async_send_bytes(st->challenge.wire, std::move(self));
          }
          case 1:  // challenge sent
            if (ec) return fail(std::error_code(ec));
            st->step = 2;
            return st->conn.async_recv_bytes(std::move(self), 256);
          case 2:  // the peer's answer
            if (ec) return fail(std::error_code(ec));
            try {
              detail::check_answer(st->challenge, msg, key, options_.auth);
            } catch (const AuthenticationError&) {
              st->step = 9;
              return st->conn.async_send_bytes(detail::failure_message(), std::move(self));
            }
            st->step = 3;
            return st->conn.async_send_bytes(detail::welcome_message(), std::move(self));
          case 3:  // welcome sent; now the peer challenges us
            if (ec) return fail(std::error_code(ec));
            st->step = 4;
            return st->conn.async_recv_bytes(std::move(self), 256);
          case 4:
            if (ec) return fail(std::error_code(ec));
            st->answer = detail::make_answer(msg, key, options_.auth);
            st->step = 5;
            return st->conn.async_send_bytes(st->answer, std::move(self));
          case 5:
            if (ec) return fail(std::error_code(ec));
            st->step = 6;
            return st->conn.async_recv_bytes(std::move(self), 256);
          case 6:
            if (ec) return fail(std::error_code(ec));
            detail::check_welcome(msg);
            st->timer->cancel();
            last_accepted_ = st->peer;
            return self.complete({}, std::move(st->conn));
          default:  // #FAILURE# sent after a wrong answer
            return fail(troupe::make_error_code(troupe::errc::authentication_error));
        }
      } catch (const AuthenticationError&) {
        fail(troupe::make_error_code(troupe::errc::authentication_error));
      } catch (const std::exception&) {
        fail(troupe::make_error_code(troupe::errc::os_error));
      }
    }
  };
  using Sig = void(boost::system::error_code, Connection);
  if (executor_) return boost::asio::async_compose<Token, Sig>(std::move(impl), token, executor_);
  return boost::asio::async_compose<Token, Sig>(std::move(impl), token);
}

/// Python: `multiprocessing.connection.Client(address, family=None, authkey=None)`: connects
/// and, with a key, authenticates (answer, then challenge the server). TCP_NODELAY on TCP.
/// @throws ConnectionRefusedError, FileNotFoundError, … naming the address;
///         AuthenticationError if the handshake fails.
Connection Client(const Address& address,
                  std::optional<AuthenticationString> authkey = std::nullopt,
                  const AuthOptions& auth = {},
                  std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10));

}  // namespace troupe::multiprocessing
