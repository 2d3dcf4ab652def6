#include "troupe/multiprocessing/managers/internal/wire.hpp"

#include <cstring>
#include <string>

#include <kj/exception.h>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"

namespace troupe::multiprocessing::managers {

namespace {
kj::ArrayPtr<const capnp::word> words_of(const std::vector<std::byte>& b) {
  if (b.size() % sizeof(capnp::word) != 0 || b.empty())
    throw ValueError("malformed manager message: " + std::to_string(b.size()) +
                     " bytes is not a whole number of 8-byte words");
  return {reinterpret_cast<const capnp::word*>(b.data()), b.size() / sizeof(capnp::word)};
}
}  // namespace

detail::Frame::Frame(std::vector<std::byte> b)
    : bytes(std::move(b)), reader(words_of(bytes), reader_options(bytes.size() / 8)) {}

namespace internal {

std::shared_ptr<Frame> parse_frame(std::vector<std::byte> bytes) {
  try {
    auto f = std::make_shared<Frame>(std::move(bytes));
    if (f->reader.getEnd() != words_of(f->bytes).end())
      throw ValueError("malformed manager message: bytes after the message");
    return f;
  } catch (const kj::Exception& e) {
    throw ValueError(std::string("malformed manager message: ") + e.getDescription().cStr());
  }
}

std::vector<std::byte> flatten(capnp::MessageBuilder& mb) {
  std::vector<std::byte> out;
  codec_detail::flatten(mb, out);
  return out;
}

std::uint64_t random_ticket() {
  for (;;) {
    auto b = multiprocessing::detail::random_bytes(8);
    std::uint64_t t;
    std::memcpy(&t, b.data(), 8);
    if (t != 0) return t;
  }
}

}  // namespace internal
}  // namespace troupe::multiprocessing::managers
