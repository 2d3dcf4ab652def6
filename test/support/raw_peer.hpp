// test/support/raw_peer.hpp — a peer that speaks no protocol: a socket connected to a listener's
// address that sends only what the test sends by hand (silent, dripping or hostile peers), and
// a check of whether the other end has closed it.
#pragma once

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "troupe/multiprocessing/listener.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

namespace troupe::testing {

/// A blocking stream socket connected to `a` (a numeric IPv4 address or a Unix path), or -1.
inline int connect_raw(const multiprocessing::Address& a) {
  using Family = multiprocessing::Address::Family;
  if (a.family == Family::unix_path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, a.host.data(), std::min(a.host.size(), sizeof un.sun_path - 1));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&un), sizeof un) == 0) return fd;
    ::close(fd);
    return -1;
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(a.port);
  ::inet_pton(AF_INET, a.host.c_str(), &sin.sin_addr);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&sin), sizeof sin) == 0) return fd;
  ::close(fd);
  return -1;
}

/// Whether the other end has closed `fd` (what it sent is read and dropped), waiting at most
/// `ms` milliseconds for that.
inline bool peer_closed(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  for (;;) {
    if (::poll(&p, 1, ms) <= 0) return false;
    char buf[512];
    const ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno == ECONNRESET)) return true;
    if (r < 0) return false;
  }
}

}  // namespace troupe::testing
