// test/multiprocessing/hostile_peer.hpp — what the Connection tests (plain, TLS, asynchronous)
// share for issue 15's findings 3 and 6: a property check of send_bytes's bounds over edge and
// wrap-around offsets and sizes, and a raw peer that announces a long message and sends little.
#pragma once

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/tls.hpp"

#include "leak_check.hpp"
#include "tls_files.hpp"
#include <malloc.h>

namespace troupe::testing {

namespace mp = troupe::multiprocessing;

// ---- send_bytes(buf, offset, size): Python's rules, over edge and wrap-around values ---------

/// What Python's send_bytes does with buf[offset:offset+size] of `length` bytes (an offset or
/// size over PTRDIFF_MAX is the negative number it was before it became a std::size_t): the
/// slice's offset and length, or nullopt for ValueError. Python's integers do not wrap: two
/// non-negative int64 values are added as uint64, where their sum fits.
inline std::optional<std::pair<std::size_t, std::size_t>> python_slice(
    std::size_t length, std::size_t offset, std::optional<std::size_t> size) {
  const auto n = static_cast<std::int64_t>(length), o = static_cast<std::int64_t>(offset);
  if (o < 0 || n < o) return std::nullopt;
  const std::int64_t s = size ? static_cast<std::int64_t>(*size) : n - o;
  if (s < 0 || static_cast<std::uint64_t>(o) + static_cast<std::uint64_t>(s) > length)
    return std::nullopt;
  return std::pair{offset, static_cast<std::size_t>(s)};
}

/// Offsets and sizes near the edges for a `length`-byte buffer: 0, 1, around length, around
/// PTRDIFF_MAX, and values that wrap past 2^64 to a small number when added to a small offset.
inline std::vector<std::size_t> edge_values(std::size_t length) {
  constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();
  constexpr auto kPtrdiffMax = static_cast<std::size_t>(PTRDIFF_MAX);
  std::vector<std::size_t> v{0, 1, 2, 7, 8, 9, kPtrdiffMax, kPtrdiffMax + 1, kMax, kMax - 1};
  for (std::size_t d : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}}) {
    v.push_back(length + d);
    if (length >= d) v.push_back(length - d);
    v.push_back(kMax - length + 1 + d);
    v.push_back(kMax - d);
    v.push_back(kMax - length - d);
  }
  return v;
}

/// Sends `buf[offset:offset+size]` through `send` (a send_bytes or its asynchronous twin, which
/// throws ValueError where Python raises it) for edge values and `random_cases` random ones,
/// and checks each against python_slice: ValueError with nothing sent, or exactly those bytes
/// at the peer (`rx`).
inline void check_send_bytes_bounds(
    mp::Connection& rx,
    const std::function<void(std::span<const std::byte>, std::size_t, std::optional<std::size_t>)>&
        send,
    int random_cases = 300) {
  std::mt19937_64 rng(15);  // a fixed seed: a failure repeats
  int refused = 0, sent = 0;
  auto check = [&](std::span<const std::byte> buf, std::size_t offset,
                   std::optional<std::size_t> size) {
    const auto expected = python_slice(buf.size(), offset, size);
    const std::string what = "length " + std::to_string(buf.size()) + " offset " +
                             std::to_string(offset) + " size " +
                             (size ? std::to_string(*size) : std::string("None"));
    try {
      send(buf, offset, size);
    } catch (const ValueError&) {
      EXPECT_FALSE(expected) << what << ": refused, Python sends it";
      EXPECT_FALSE(rx.poll()) << what << ": a refused send sent something";
      ++refused;
      return;
    }
    ASSERT_TRUE(expected) << what << ": sent, Python raises ValueError";
    const auto got = rx.recv_bytes();
    const auto want = buf.subspan(expected->first, expected->second);
    ASSERT_TRUE(std::equal(got.begin(), got.end(), want.begin(), want.end()))
        << what << ": " << got.size() << " bytes at the peer, expected " << want.size();
    ++sent;
  };
  for (std::size_t length : {0, 1, 16, 100}) {
    std::vector<std::byte> buf(length);
    for (std::size_t i = 0; i < length; ++i) buf[i] = static_cast<std::byte>(i * 13 + 1);
    const auto values = edge_values(length);
    for (std::size_t offset : values) {
      check(buf, offset, std::nullopt);
      for (std::size_t size : values) check(buf, offset, size);
    }
    for (int i = 0; i < random_cases; ++i) {
      auto pick = [&] {  // an edge value, a small one or anything at all
        switch (rng() % 3) {
          case 0: return values[rng() % values.size()];
          case 1: return static_cast<std::size_t>(rng() % (length + 3));
          default: return static_cast<std::size_t>(rng());
        }
      };
      const std::size_t offset = pick();
      check(buf, offset, rng() % 4 == 0 ? std::nullopt : std::optional(pick()));
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(sent, 0);
}

// ---- a raw peer ------------------------------------------------------------------------------

/// A Connection and the other end of its socket written by hand (through a TLS session of its
/// own when TLS is on), so a test can send any bytes: a header and no body, say.
struct RawPair {
  mp::Connection rx;
  int tx = -1;
  std::unique_ptr<mp::detail::TlsSession> tx_tls;

  RawPair() = default;
  RawPair(RawPair&&) = default;
  ~RawPair() { close_tx(); }

  /// Writes all of `p`, blocking.
  void write(const void* p, std::size_t n) {
    auto* at = static_cast<const char*>(p);
    while (n > 0) {
      iovec iov{const_cast<char*>(at), n};
      const ssize_t r = tx_tls ? tx_tls->writev(&iov, 1, true) : ::send(tx, at, n, MSG_NOSIGNAL);
      if (r < 0 && errno == EINTR) continue;
      ASSERT_GT(r, 0) << "raw peer write: " << std::strerror(errno);
      at += r;
      n -= static_cast<std::size_t>(r);
    }
  }
  /// A 4-byte length header (8-byte after -1 when over 0x7fffffff).
  void header(std::uint64_t n) {
    unsigned char h[12];
    std::size_t len = 4;
    if (n > 0x7fffffff) {
      std::memset(h, 0xff, 4);
      for (int i = 0; i < 8; ++i) h[4 + i] = static_cast<unsigned char>(n >> (56 - 8 * i));
      len = 12;
    } else {
      for (int i = 0; i < 4; ++i) h[i] = static_cast<unsigned char>(n >> (24 - 8 * i));
    }
    write(h, len);
  }
  void close_tx() {
    if (tx_tls) {
      tx_tls->shutdown();
      tx_tls.reset();
    }
    if (tx >= 0) ::close(tx);
    tx = -1;
  }
  /// Bytes written by the peer that the receiving socket still holds.
  int unread() const {
    int n = 0;
    ::ioctl(rx.fileno(), FIONREAD, &n);
    return n;
  }
};

/// A Unix socketpair: rx a Connection, tx raw.
inline RawPair plain_pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw std::runtime_error("socketpair failed");
  RawPair p;
  p.rx = mp::Connection(sv[0]);
  p.tx = sv[1];
  return p;
}

/// A Unix socketpair with TLS on: rx a Connection (TLS server), tx a TLS client session.
inline RawPair tls_pair(const TlsFiles& files) {
  auto server = mp::make_tls_context(
      mp::TlsRole::server,
      {.certificate_chain = files.path("server.pem"), .private_key = files.path("server.key")});
  auto client = mp::make_tls_context(mp::TlsRole::client, {.trusted_ca = files.path("ca.pem")});
  RawPair p = plain_pair();
  p.tx_tls =
      std::make_unique<mp::detail::TlsSession>(*client, p.tx, mp::TlsRole::client, "localhost");
  auto handshake = std::async(std::launch::async, [&] { return p.tx_tls->handshake(true); });
  p.rx.start_tls(*server, mp::TlsRole::server);
  if (handshake.get() != 0) throw std::runtime_error("TLS handshake: " + p.tx_tls->error());
  return p;
}

/// Two connected Connections with TLS on (a Unix socketpair).
inline std::pair<mp::Connection, mp::Connection> tls_pipe(const TlsFiles& files) {
  auto server = mp::make_tls_context(
      mp::TlsRole::server,
      {.certificate_chain = files.path("server.pem"), .private_key = files.path("server.key")});
  auto client = mp::make_tls_context(mp::TlsRole::client, {.trusted_ca = files.path("ca.pem")});
  auto [a, b] = mp::Pipe();
  auto handshake = std::async(
      std::launch::async, [&, &b = b] { b.start_tls(*client, mp::TlsRole::client, "localhost"); });
  a.start_tls(*server, mp::TlsRole::server);
  handshake.get();
  return {std::move(a), std::move(b)};
}

// ---- memory ----------------------------------------------------------------------------------

/// This process's resident set now, in bytes (/proc/self/statm).
inline std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// A peer announces `announced` bytes and sends `sent` of them (the first `prefix` bytes given,
/// the rest filler); while `recv` waits for the rest, this process's resident set must have
/// grown by less than `bound`. Then the peer closes and `recv` (on a thread of its own) must
/// throw OSError, the message cut short.
inline void check_memory_follows_bytes(RawPair& pair, std::uint64_t announced,
                                       std::span<const std::byte> prefix, std::size_t sent,
                                       const std::function<void()>& recv,
                                       std::size_t bound = 16u << 20) {
  // MALLOC_PERTURB_ (which `meson test` sets) makes glibc write every byte malloc hands out, so
  // reserved address space would count as touched: off while measuring what troupe touches.
  struct NoPerturb {
    NoPerturb() { ::mallopt(M_PERTURB, 0); }
    ~NoPerturb() {
      if (const char* p = std::getenv("MALLOC_PERTURB_")) ::mallopt(M_PERTURB, std::atoi(p));
    }
  } no_perturb;
  const std::size_t before = rss_bytes();
  std::thread receiver([&] {
    try {
      recv();
      ADD_FAILURE() << "received a message that was never sent";
    } catch (const OSError& e) {
      EXPECT_EQ(e.code().value(), EIO) << e.what();
    }
  });
  pair.header(announced);
  pair.write(prefix.data(), prefix.size());
  std::vector<std::byte> filler(64 * 1024, std::byte{0x5a});
  for (std::size_t left = sent - prefix.size(); left > 0;) {
    const std::size_t k = std::min(left, filler.size());
    pair.write(filler.data(), k);
    left -= k;
  }
  // Everything written has been taken off the socket: the receiver holds it, waiting for more.
  EXPECT_TRUE(eventually([&] { return pair.unread() == 0; }));
  const std::size_t during = rss_bytes();
  pair.close_tx();
  receiver.join();
  ::testing::Test::RecordProperty("resident_growth_kib_" + std::to_string(announced),
                                  std::to_string((during - std::min(during, before)) / 1024));
  EXPECT_LT(during, before + bound)
      << "announced " << announced << " bytes, sent " << sent << ": resident set grew from "
      << before / 1024 << " KiB to " << during / 1024 << " KiB";
}

}  // namespace troupe::testing
