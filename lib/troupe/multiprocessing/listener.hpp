// troupe/multiprocessing/listener.hpp — multiprocessing.connection.Listener and Client, and the
// addresses they use.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

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
  /// Python: `close()`.
  void close() noexcept;
  /// The listening socket (Python: `_listener._socket.fileno()`), e.g. for connection::wait or
  /// to wake a blocked accept() with shutdown(2). @throws OSError if closed.
  int fileno() const;
  /// Python: `address`, `last_accepted`.
  const Address& address() const noexcept { return address_; }
  const std::optional<Address>& last_accepted() const noexcept { return last_accepted_; }

private:
  int fd_ = -1;
  Address address_;
  std::optional<Address> last_accepted_;
  ListenerOptions options_;
};

/// Python: `multiprocessing.connection.Client(address, family=None, authkey=None)`: connects
/// and, with a key, authenticates (answer, then challenge the server). TCP_NODELAY on TCP.
/// @throws ConnectionRefusedError, FileNotFoundError, … naming the address;
///         AuthenticationError if the handshake fails.
Connection Client(const Address& address,
                  std::optional<AuthenticationString> authkey = std::nullopt,
                  const AuthOptions& auth = {},
                  std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10));

}  // namespace troupe::multiprocessing
