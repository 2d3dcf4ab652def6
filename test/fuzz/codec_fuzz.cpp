// libFuzzer: decoding untrusted bytes as typed values. The first byte picks the type; the rest is
// the message (a Cap'n Proto Envelope, as Connection::recv<T> gets it). The fingerprint must
// match for decoding to start, so each input is tried both as it is and with the expected
// fingerprint written into it where a well-formed envelope keeps it.
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"

namespace {

struct Record {
  std::int64_t id;
  std::string name;
  std::vector<double> values;
  std::optional<std::map<std::string, std::vector<std::uint8_t>>> extra;
  std::variant<std::monostate, int, std::string, std::vector<std::string>> tag;
};

struct Tree {
  std::int32_t value;
  std::vector<Tree> children;
};

template <class T>
void try_decode(std::vector<std::byte> bytes) {
  try {
    (void)troupe::from_bytes<T>(bytes);
  } catch (const std::exception&) {
  }
  // A one-segment message with the root at word 1: the Envelope's data section (the
  // fingerprint) starts at word 2. Patch it so decoding proceeds past the type check.
  if (bytes.size() >= 24) {
    const std::uint64_t f = troupe::type_id<T>().fingerprint;
    std::memcpy(bytes.data() + 16, &f, sizeof f);
    try {
      (void)troupe::from_bytes<T>(bytes);
    } catch (const std::exception&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1),
                               reinterpret_cast<const std::byte*>(data + size));
  switch (data[0] % 6) {
    case 0: try_decode<Record>(std::move(bytes)); break;
    case 1: try_decode<Tree>(std::move(bytes)); break;
    case 2: try_decode<std::vector<std::string>>(std::move(bytes)); break;
    case 3:
      try_decode<std::map<std::int64_t, std::tuple<bool, double, std::string>>>(std::move(bytes));
      break;
    case 4: try_decode<std::array<std::uint16_t, 8>>(std::move(bytes)); break;
    default:
      try_decode<std::variant<std::int8_t, std::vector<std::byte>, std::set<std::string>>>(
          std::move(bytes));
      break;
  }
  return 0;
}
