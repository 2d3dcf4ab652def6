// libFuzzer: both roles of the handshake against a peer that sends the fuzzer's bytes.
// The first byte picks the role (server: deliver then answer; client: answer then deliver), the
// legacy opt-in and the digest; the rest is what the peer sent, already framed or not.
#include <cstdint>
#include <exception>
#include <string>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  using namespace troupe::multiprocessing;
  const std::uint8_t control = data[0];
  static const char* digests[] = {"sha256", "md5", "sha384", "sha3_256"};
  AuthOptions options{.digest_name = digests[(control >> 2) % 4], .legacy_md5 = (control & 2) != 0};
  static const AuthenticationString key("fuzzing key");
  troupe::fuzz::Fed fed(data + 1, size - 1);
  auto& c = fed.connection();
  try {
    if (control & 1) {
      deliver_challenge(c, key, options);
      answer_challenge(c, key, options);
    } else {
      answer_challenge(c, key, options);
      deliver_challenge(c, key, options);
    }
    // Random bytes do not know the key: getting here would be an authentication bypass.
    __builtin_trap();
  } catch (const std::exception&) {
  }
  return 0;
}
