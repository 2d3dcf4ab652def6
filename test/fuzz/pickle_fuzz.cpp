// libFuzzer: the pickle subset of plain data (managers/detail/pickle.hpp), what the CPython
// manager dialect will read from any authenticated peer. The first byte picks the protocol the
// value is written back in (4 or 5); the rest is the pickle. Whatever decodes must encode, and
// decode again to the identical tree; nothing else may happen but a ValueError or TypeError.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/pickle.hpp"

namespace mmd = troupe::multiprocessing::managers::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const int protocol = 4 + (data[0] & 1);
  const auto pickle = std::as_bytes(std::span(data + 1, size - 1));
  const mmd::Limits limits{.max_depth = 100, .max_nodes = 1u << 16, .max_bytes = 1u << 20};
  mmd::Item x;
  try {
    x = mmd::pickle::decode(pickle, limits);
  } catch (const troupe::ValueError&) {
    return 0;
  } catch (const troupe::TypeError&) {
    return 0;
  }
  const std::string again = mmd::pickle::encode(x, protocol);
  // Written back, a slice or a bytearray becomes a global and a REDUCE: a few more values.
  const mmd::Limits wider{.max_depth = 100, .max_nodes = 4u << 16, .max_bytes = 1u << 20};
  const mmd::Item y =
      mmd::pickle::decode(std::as_bytes(std::span(again.data(), again.size())), wider);
  if (!mmd::identical(x, y)) std::abort();
  return 0;
}
