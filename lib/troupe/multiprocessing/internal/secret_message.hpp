// troupe/multiprocessing/internal/secret_message.hpp — sending a message that holds a secret (a
// child's bootstrap: its authkey, and a manager's key among its start arguments), so that no
// copy of its encoding outlives the send. Not API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/detail/secret_builder.hpp"

namespace troupe {
struct EntryPoint;
}

namespace troupe::multiprocessing::internal {

/// In a child: runs `e` on `bytes` that its parent encoded as a child's start arguments
/// (detail::encode_for_child: a pool's or a manager's initargs), so that a proxy among them takes
/// its manager's key from them, as one among the target's arguments does.
void invoke_start_arguments(const EntryPoint& e, std::span<const std::byte> bytes);

/// conn.send(obj), with every buffer of its encoding wiped after.
template <class T>
void send_secret(Connection& conn, const T& obj) {
  codec_detail::ScratchSegment scratch;
  detail::SecretMessageBuilder mb(scratch.get());
  troupe::encode(obj, mb);
  conn.send_message(mb);
}

/// Zeroes `bytes` (OPENSSL_cleanse: not optimised away).
void wipe_bytes(std::span<std::byte> bytes) noexcept;

/// Zeroes `b` when it goes out of scope, however the scope ends.
struct WipeOnExit {
  std::vector<std::byte>& b;
  ~WipeOnExit() { wipe_bytes(b); }
};

/// Reads one message in Connection's framing from `fd` with plain reads into a buffer of its own
/// (not a Connection's, which would keep a copy), at most `max_size` bytes. @throws EOFError if
/// the stream ends first, OSError, ValueError for a length over `max_size`.
std::vector<std::byte> read_secret_frame(int fd, std::uint64_t max_size);

/// The message on `fd` (one sent by send_secret) decoded as T; the buffer it was read into is
/// wiped after. @throws as read_secret_frame and troupe::from_bytes.
template <class T>
T recv_secret(int fd, std::uint64_t max_size = kDefaultMaxMessageSize) {
  std::vector<std::byte> bytes = read_secret_frame(fd, max_size);
  const WipeOnExit wipe{bytes};
  return troupe::from_bytes<T>(bytes);
}

}  // namespace troupe::multiprocessing::internal
