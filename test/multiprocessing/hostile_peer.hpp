// test/multiprocessing/hostile_peer.hpp — what the Connection tests (plain, TLS, asynchronous)
// share for issue 15: a property check of send_bytes's bounds over edge and wrap-around offsets
// and sizes.
#pragma once

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
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

// ---- TLS ------------------------------------------------------------------------------------

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

}  // namespace troupe::testing
