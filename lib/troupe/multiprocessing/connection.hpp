// troupe/multiprocessing/connection.hpp — multiprocessing.connection: Connection, Pipe, and the
// HMAC challenge/response handshake, byte-compatible with CPython.
//
// The wire (doc/protocol.md): each message is a 4-byte big-endian signed length and the bytes;
// a message over 0x7fffffff bytes is sent as length -1, an 8-byte big-endian length, and the
// bytes. The handshake is CPython 3.12+'s: "#CHALLENGE#{sha256}" + 40 random bytes, answered by
// "{sha256}" + HMAC, then "#WELCOME#" or "#FAILURE#"; CPython <= 3.11's HMAC-MD5 dialect only
// when the caller opts in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "troupe/detail/futex.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing {

/// The largest message a Connection accepts unless told otherwise (set_max_message_size):
/// 1 GiB. A longer length header is refused before anything is allocated.
inline constexpr std::uint64_t kDefaultMaxMessageSize = std::uint64_t{1} << 30;

/// Python: `multiprocessing.connection.Connection` — one end of a pipe or socket carrying
/// length-prefixed byte messages. Owns its file descriptor; the destructor closes it.
/// Not thread-safe: one sender and one receiver at a time, as in Python.
class Connection {
public:
  /// Takes ownership of `fd` (a socket or pipe end, blocking mode).
  explicit Connection(int fd, bool readable = true, bool writable = true);
  Connection(Connection&& other) noexcept;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  /// Python: `send_bytes(buf, offset=0, size=None)`: sends `buf[offset:offset+size]` as one
  /// message. @throws ValueError "buffer length < offset" / "buffer length < offset + size";
  /// OSError (BrokenPipeError, …) if the peer is gone; OSError if the connection is closed or
  /// not writable.
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt);
  void send_bytes(std::string_view buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt) {
    send_bytes(std::as_bytes(std::span(buf.data(), buf.size())), offset, size);
  }

  /// Python: `recv_bytes(maxlength=None)`: the next whole message.
  /// @throws EOFError if the peer closed before a message began; OSError "got end of file
  /// during message" if it closed inside one; OSError "bad message length" (and the connection
  /// is closed, as Python's) if the message is longer than `maxlength` or than the connection's
  /// maximum message size.
  std::vector<std::byte> recv_bytes(std::optional<std::size_t> maxlength = std::nullopt);

  /// Python: `recv_bytes_into(buf, offset=0)`: reads the next message into `buf` at `offset`
  /// and returns its size. @throws ValueError "offset too large"; BufferTooShort (carrying the
  /// whole message, which is consumed) if it does not fit.
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0);

  /// Python: `poll(timeout=0.0)`: whether a message (or EOF) can be read without blocking.
  /// A forever Timeout waits until there is.
  bool poll(Timeout timeout = std::chrono::seconds(0));

  /// Python: `fileno()`. @throws OSError if closed.
  int fileno() const;
  /// Python: `close()`; closing twice is fine.
  void close() noexcept;
  /// Python: `closed`, `readable`, `writable`.
  bool closed() const noexcept { return fd_ < 0; }
  bool readable() const noexcept { return readable_; }
  bool writable() const noexcept { return writable_; }

  /// The largest message this end accepts (default kDefaultMaxMessageSize).
  std::uint64_t max_message_size() const noexcept { return max_message_size_; }
  void set_max_message_size(std::uint64_t n) noexcept { max_message_size_ = n; }

private:
  void check_open(const char* what) const;
  void check_readable(const char* what) const;
  void check_writable(const char* what) const;
  std::size_t buffered() const noexcept { return rend_ - rpos_; }
  // Fills the read buffer with at least `n` bytes (n <= capacity); false on EOF before any.
  bool fill(std::size_t n, bool eof_is_error);
  void read_exact(std::byte* out, std::size_t n);
  std::uint64_t read_header();  // nullopt-free: throws EOFError on a clean EOF
  void write_frame(std::span<const std::byte> payload);
  [[noreturn]] void bad_message_length(std::uint64_t n, std::uint64_t limit);

  int fd_ = -1;
  bool readable_ = true;
  bool writable_ = true;
  bool is_socket_ = false;
  std::uint64_t max_message_size_ = kDefaultMaxMessageSize;
  // Reads go through a small buffer, so a short message costs one system call, not two.
  std::unique_ptr<std::byte[]> rbuf_;
  std::size_t rpos_ = 0;
  std::size_t rend_ = 0;
  troupe::detail::AdaptiveSpin spin_;  // not moved: a moved-to end learns afresh
};

/// Python: `multiprocessing.Pipe(duplex=True)` → (conn1, conn2). Duplex: a Unix socketpair, both
/// ends read and write. Not duplex: a pipe, conn1 reads and conn2 writes. Both close-on-exec.
std::pair<Connection, Connection> Pipe(bool duplex = true);

/// Options of the handshake, beyond Python's arguments.
struct AuthOptions {
  /// The HMAC digest the challenger asks for: md5, sha256, sha384, sha3_256 or sha3_384.
  std::string digest_name = "sha256";
  /// Accept CPython <= 3.11's dialect (a 20-byte challenge, an unprefixed HMAC-MD5 answer).
  bool legacy_md5 = false;
};

/// Python: `multiprocessing.connection.deliver_challenge(connection, authkey, digest_name)`:
/// the server side. Sends a challenge, checks the answer, sends #WELCOME# or #FAILURE#.
/// @throws AuthenticationError naming what was wrong (never the key).
void deliver_challenge(Connection& connection, const AuthenticationString& authkey,
                       const AuthOptions& options = {});

/// Python: `multiprocessing.connection.answer_challenge(connection, authkey)`: the client side.
/// @throws AuthenticationError if the challenge is malformed or the answer is rejected.
void answer_challenge(Connection& connection, const AuthenticationString& authkey,
                      const AuthOptions& options = {});

}  // namespace troupe::multiprocessing
