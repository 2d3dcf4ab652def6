// troupe/multiprocessing/internal/framing.hpp — what the blocking and the asynchronous halves of
// Connection (connection.cpp, connection_async.cpp), and the manager server's writes, share: how
// a message body grows, and how a write's buffers advance. .cpp only.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "troupe/multiprocessing/connection.hpp"

namespace troupe::multiprocessing::internal {

/// The read buffer of a Connection (its rbuf_).
inline constexpr std::size_t kReadBuffer = 64 * 1024;
// A message body's memory follows the bytes that arrive, not the length a peer announced
// (issue 15): up to kReserveAtOnce of capacity is reserved at once (address space, no page
// touched), past that the capacity doubles as the bytes come; the bytes are zeroed and read
// kBodyStep at a time. A message of up to kReserveAtOnce bytes is never copied.
inline constexpr std::size_t kBodyStep = std::size_t{1} << 20;
inline constexpr std::size_t kReserveAtOnce = std::size_t{64} << 20;

// Makes room in `body` (whose size is what has arrived, less than `n`) for the next bytes of an
// n-byte message. @throws std::bad_alloc.
inline void grow_body(std::vector<std::byte>& body, std::size_t n) {
  const std::size_t at = body.size();
  if (at == body.capacity()) body.reserve(std::min(n, at + std::max(at, kReserveAtOnce)));
  body.resize(at + std::min({n - at, kBodyStep, body.capacity() - at}));
}

// Frames `messages` (each a contiguous byte container, sent as send_bytes sends one) for one
// gathering write: their length headers into `headers` (12 bytes of room each), and `iov` the
// header and the payload of each in turn. The messages must outlive `iov`.
template <class Messages>
void frame_messages(const Messages& messages, std::vector<unsigned char>& headers,
                    std::vector<iovec>& iov) {
  headers.resize(12 * std::size(messages));
  iov.clear();
  iov.reserve(2 * std::size(messages));
  std::size_t i = 0;
  for (const auto& m : messages) {
    unsigned char* h = headers.data() + 12 * i++;
    iov.push_back({h, detail::length_header(std::size(m), h)});
    if (std::size(m) != 0) iov.push_back({const_cast<std::byte*>(std::data(m)), std::size(m)});
  }
}

// Drops the first `n` bytes of `iov` (what a write took): whole buffers, then part of the next.
inline void consume_iov(std::vector<iovec>& iov, std::size_t n) noexcept {
  std::size_t done = 0;
  while (done < iov.size() && n >= iov[done].iov_len) n -= iov[done++].iov_len;
  iov.erase(iov.begin(), iov.begin() + static_cast<std::ptrdiff_t>(done));
  if (!iov.empty() && n) {
    iov.front().iov_base = static_cast<char*>(iov.front().iov_base) + n;
    iov.front().iov_len -= n;
  }
}

}  // namespace troupe::multiprocessing::internal
