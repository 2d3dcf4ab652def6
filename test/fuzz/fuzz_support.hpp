// Shared by the libFuzzer targets and their seed maker.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"

namespace troupe::fuzz {

/// Our end of a socketpair whose peer has already sent the fuzzer's bytes and shut down its
/// sending side, so every read ends (in data, EOF or an error) and nothing blocks. The peer
/// stays open until this is destroyed, so our own writes are buffered, not refused.
class Fed {
public:
  Fed(const std::uint8_t* data, std::size_t size) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) __builtin_trap();
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    std::size_t off = 0;
    while (off < size) {  // inputs are kept below the buffer size (-max_len)
      const ssize_t n = ::write(sv[1], data + off, size - off);
      if (n <= 0) __builtin_trap();
      off += static_cast<std::size_t>(n);
    }
    ::shutdown(sv[1], SHUT_WR);
    peer_ = sv[1];
    ours_.emplace(sv[0]);
  }
  ~Fed() {
    ours_.reset();
    ::close(peer_);
  }
  Fed(const Fed&) = delete;
  Fed& operator=(const Fed&) = delete;
  multiprocessing::Connection& connection() { return *ours_; }

private:
  int peer_ = -1;
  std::optional<multiprocessing::Connection> ours_;
};

}  // namespace troupe::fuzz
