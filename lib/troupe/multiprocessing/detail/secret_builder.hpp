// troupe/multiprocessing/detail/secret_builder.hpp — a Cap'n Proto message builder that wipes
// every segment it used when it goes, for messages that hold a secret (a child's start arguments
// may carry a manager's key; its bootstrap carries its authkey). Not API.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include <capnp/message.h>

#include "troupe/codec.hpp"

namespace troupe::multiprocessing::detail {

/// A message builder whose every segment is wiped (OPENSSL_cleanse) when it goes: the first, a
/// caller's zeroed scratch, and those it allocates past it (MallocMessageBuilder frees those as
/// they are, the encoding still in them).
class SecretMessageBuilder final : public capnp::MessageBuilder {
public:
  explicit SecretMessageBuilder(kj::ArrayPtr<capnp::word> first) noexcept : first_(first) {}
  ~SecretMessageBuilder() override { wipe(); }
  SecretMessageBuilder(const SecretMessageBuilder&) = delete;
  SecretMessageBuilder& operator=(const SecretMessageBuilder&) = delete;

  kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimum_size) override;
  /// Zeroes every segment (the builder is unusable after).
  void wipe() noexcept;

private:
  kj::ArrayPtr<capnp::word> first_;
  bool gave_first_ = false;
  std::vector<std::pair<std::unique_ptr<capnp::word[]>, std::size_t>> more_;
};

/// troupe::to_bytes(x), with every segment of its encoding wiped after (only the bytes returned
/// hold it then; the caller wipes those).
template <class T>
std::vector<std::byte> secret_to_bytes(const T& x) {
  codec_detail::ScratchSegment scratch;
  SecretMessageBuilder mb(scratch.get());
  encode(x, mb);
  std::vector<std::byte> out;
  codec_detail::flatten(mb, out);
  return out;
}

}  // namespace troupe::multiprocessing::detail
