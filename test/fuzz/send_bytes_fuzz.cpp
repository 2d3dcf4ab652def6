// libFuzzer: send_bytes(buf, offset, size)'s bounds (issue 15: offset + size once wrapped past
// 2^64 and passed the check). The input is a series of 17-byte cases: a buffer length (1 byte),
// an offset and a size (8 bytes each, little-endian; a size of 2^64 - 1 stands for None). Each
// case must give ValueError and send nothing, or put exactly buf[offset:offset+size] at the peer,
// as Python's rules say (worked out here without forming offset + size in 64 bits).
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "fuzz_support.hpp"

namespace {

std::uint64_t load(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Python's rules, reading a value over INT64_MAX as the negative number it was.
bool python_accepts(std::size_t length, std::size_t offset, std::optional<std::size_t> size) {
  const auto o = static_cast<std::int64_t>(offset);
  if (o < 0 || offset > length) return false;
  if (!size) return true;
  const auto s = static_cast<std::int64_t>(*size);
  std::size_t end;
  return s >= 0 && !__builtin_add_overflow(offset, *size, &end) && end <= length;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto [tx, rx] = troupe::multiprocessing::Pipe();
  std::vector<std::byte> buf(256);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i * 31 + 7);
  for (std::size_t at = 0; at + 17 <= size; at += 17) {
    const std::size_t length = data[at];
    const std::size_t offset = load(data + at + 1);
    const std::uint64_t raw_size = load(data + at + 9);
    const std::optional<std::size_t> n = raw_size == std::numeric_limits<std::uint64_t>::max()
                                             ? std::nullopt
                                             : std::optional(raw_size);
    const std::span<const std::byte> view(buf.data(), length);
    const bool accepts = python_accepts(length, offset, n);
    try {
      tx.send_bytes(view, offset, n);
    } catch (const troupe::ValueError&) {
      if (accepts || rx.poll()) __builtin_trap();  // refused what Python sends, or sent anyway
      continue;
    }
    if (!accepts) __builtin_trap();  // sent what Python refuses
    const auto got = rx.recv_bytes();
    const std::size_t want = n ? *n : length - offset;
    if (got.size() != want || (want && std::memcmp(got.data(), buf.data() + offset, want) != 0))
      __builtin_trap();
  }
  return 0;
}
