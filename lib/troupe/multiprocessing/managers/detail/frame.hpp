// troupe/multiprocessing/managers/detail/frame.hpp — one received frame of the manager dialect
// (proto/manager.capnp): its bytes and a bounded reader over them. Not API.
#pragma once

#include <cstddef>
#include <vector>

#include <capnp/serialize.h>

namespace troupe::multiprocessing::managers::detail {

/// A received frame: its bytes (whole words) and a reader over them with the codec's limits
/// (troupe::reader_options). Read by one thread at a time.
struct Frame {
  std::vector<std::byte> bytes;
  capnp::FlatArrayMessageReader reader;
  /// @throws ValueError if `b` is not a whole number of words; kj::Exception if the segment
  /// table is bad (internal::parse_frame turns both into ValueError).
  explicit Frame(std::vector<std::byte> b);
  template <class S>
  typename S::Reader root() {
    return reader.getRoot<S>();
  }
};

}  // namespace troupe::multiprocessing::managers::detail
