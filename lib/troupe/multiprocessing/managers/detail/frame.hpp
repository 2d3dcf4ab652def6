// troupe/multiprocessing/managers/detail/frame.hpp — one received frame of the manager dialect
// (proto/manager.capnp): its bytes and a bounded reader over them. Not API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include <capnp/any.h>
#include <capnp/generated-header-support.h>
#include <capnp/serialize.h>

namespace troupe::multiprocessing::managers::detail {

/// A received frame: its bytes (whole words) and a reader over them with the codec's limits
/// (troupe::reader_options). Read by one thread at a time.
struct Frame {
  std::vector<std::byte> bytes;
  std::optional<capnp::FlatArrayMessageReader> reader;  // set while the frame holds a message
  /// @throws ValueError if `b` is not a whole number of words; kj::Exception if the segment
  /// table is bad (internal::parse_frame turns both into ValueError).
  explicit Frame(std::vector<std::byte> b);
  Frame(const Frame&) = delete;  // the kept root points into `reader`
  Frame& operator=(const Frame&) = delete;

  /// Holds no message (its bytes, and their capacity, stay): for `bytes` to be refilled.
  void clear() noexcept;
  /// Reads the message in `bytes` (refilled after clear()). Throws as the constructor; the frame
  /// then holds no message.
  void parse();

  /// The root as an S. Checked by Cap'n Proto the first time; later calls for the same S reuse
  /// that root (a frame is read several times on a call's way: each field access stays bounded).
  template <class S>
  typename S::Reader root() {
    if (root_ && root_type_ == capnp::typeId<S>()) return root_->template as<S>();
    auto r = reader->template getRoot<S>();
    root_ = capnp::AnyStruct::Reader(r);
    root_type_ = capnp::typeId<S>();
    return r;
  }

private:
  std::optional<capnp::AnyStruct::Reader> root_;
  std::uint64_t root_type_ = 0;
};

}  // namespace troupe::multiprocessing::managers::detail
