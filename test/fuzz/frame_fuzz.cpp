// libFuzzer: the frame reader. The input is what a peer sent; every message is read with each of
// recv_bytes, recv_bytes_into and recv_message until EOF or an error. Errors are fine; crashes,
// sanitizer reports, hangs and allocations beyond the limit are not.
#include <cstdint>
#include <exception>
#include <vector>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned mode = data[0] % 3;
  troupe::fuzz::Fed fed(data + 1, size - 1);
  auto& c = fed.connection();
  c.set_max_message_size(1 << 16);  // a header over this must be refused before allocating
  std::vector<std::byte> buf(512);
  for (int i = 0; i < 1000 && !c.closed(); ++i) {
    try {
      if (mode == 0) {
        (void)c.recv_bytes();
      } else if (mode == 1) {
        (void)c.recv_bytes_into(buf, i % 7);
      } else {
        (void)c.recv_message();
      }
    } catch (const troupe::EOFError&) {
      break;
    } catch (const troupe::OSError&) {
      break;  // truncated or oversized: the stream is unusable
    } catch (const std::exception&) {
      // BufferTooShort, malformed Cap'n Proto: the next message is still in step
    }
  }
  return 0;
}
