// Message builders whose segments are wiped (internal/secret_message.hpp).
#include "troupe/multiprocessing/internal/secret_message.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include <openssl/crypto.h>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/detail/secret_builder.hpp"

namespace troupe::multiprocessing::detail {

kj::ArrayPtr<capnp::word> SecretMessageBuilder::allocateSegment(unsigned minimum_size) {
  if (!gave_first_) {
    gave_first_ = true;
    if (minimum_size <= first_.size()) return first_;
  }
  // Each new segment at least as large as all before it together (as MallocMessageBuilder's
  // growth heuristic), zeroed as Cap'n Proto requires.
  std::size_t before = first_.size();
  for (const auto& m : more_) before += m.second;
  const std::size_t words = std::max<std::size_t>(minimum_size, before);
  more_.emplace_back(std::make_unique<capnp::word[]>(words), words);
  return kj::arrayPtr(more_.back().first.get(), words);
}

void SecretMessageBuilder::wipe() noexcept {
  // The first segment goes back to its owner zeroed (a scratch segment is reused).
  if (gave_first_) OPENSSL_cleanse(first_.begin(), first_.size() * sizeof(capnp::word));
  for (auto& m : more_) OPENSSL_cleanse(m.first.get(), m.second * sizeof(capnp::word));
}

}  // namespace troupe::multiprocessing::detail

namespace troupe::multiprocessing::internal {

void wipe_bytes(std::span<std::byte> bytes) noexcept {
  OPENSSL_cleanse(bytes.data(), bytes.size());
}

namespace {
// Reads exactly `n` bytes into `out`; false if the stream ended before the first.
bool read_exactly(int fd, std::byte* out, std::size_t n, const char* what) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, out + got, n - got);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
    } else if (r == 0) {
      if (got == 0) return false;
      throw EOFError(std::string("a secret message: the stream ended inside its ") + what);
    } else if (errno != EINTR) {
      throw_os_error(errno, std::string("a secret message: reading its ") + what);
    }
  }
  return true;
}
}  // namespace

std::vector<std::byte> read_secret_frame(int fd, std::uint64_t max_size) {
  std::byte h[8];
  if (!read_exactly(fd, h, 4, "length"))
    throw EOFError("a secret message: the stream ended before it");
  const auto byte = [&](int i) { return std::to_integer<std::uint64_t>(h[i]); };
  std::uint64_t n = (byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3);
  if (n == 0xffffffffu) {  // Python's long form: -1, then 8 bytes
    if (!read_exactly(fd, h, 8, "length")) throw EOFError("a secret message: no length");
    n = 0;
    for (int i = 0; i < 8; ++i) n = (n << 8) | byte(i);
  } else if (n > 0x7fffffffu) {
    throw ValueError("a secret message: a negative length");
  }
  // A message of Cap'n Proto words, as Connection's typed receives want it.
  if (n == 0 || n % 8 != 0)
    throw ValueError("a secret message of " + std::to_string(n) +
                     " bytes (not a whole number of 8-byte words)");
  if (n > max_size)
    throw ValueError("a secret message of " + std::to_string(n) + " bytes (at most " +
                     std::to_string(max_size) + ")");
  std::vector<std::byte> out(static_cast<std::size_t>(n));
  try {
    if (n != 0 && !read_exactly(fd, out.data(), out.size(), "body"))
      throw EOFError("a secret message: the stream ended before its body");
  } catch (...) {
    wipe_bytes(out);
    throw;
  }
  return out;
}

void invoke_start_arguments(const EntryPoint& e, std::span<const std::byte> bytes) {
  struct Decoding {  // until invoke_entry has decoded them, or a decode that throws
    Decoding() { troupe::detail::decoding_start_arguments() = true; }
    ~Decoding() { troupe::detail::decoding_start_arguments() = false; }
  } decoding;
  e.invoke(bytes);
}

}  // namespace troupe::multiprocessing::internal
