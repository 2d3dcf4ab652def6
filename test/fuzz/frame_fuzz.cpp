// libFuzzer: the frame reader. The first byte picks the mode; the rest is what a peer sent.
// Modes 0-3 read every message with recv_bytes, recv_bytes_into, recv_message or recv<T> until
// EOF or an error, under a 64 KiB message limit, or (when the first byte / 5 is odd) under the
// default 1 GiB one: a header may then announce far more than the input holds, and memory must
// follow the bytes that come (scripts/fuzz.sh caps any one allocation at 128 MiB). Mode 4 wraps the
// input in one large frame (over the size from which typed receives read segment by segment) padded
// with zeros, so the fuzzer's bytes are the segment table and the first segments of a frame read by
// the scattering path. Errors are fine; crashes, sanitizer reports, hangs and allocations beyond
// the limit are not.
#include <cstdint>
#include <exception>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "fuzz_support.hpp"

namespace {

struct Payload {
  std::vector<std::byte> bytes;
  std::string text;
  std::map<std::int32_t, std::vector<std::byte>> more;
};

void read_all(troupe::multiprocessing::Connection& c, unsigned mode) {
  std::vector<std::byte> buf(512);
  for (int i = 0; i < 1000 && !c.closed(); ++i) {
    try {
      if (mode == 0) {
        (void)c.recv_bytes();
      } else if (mode == 1) {
        (void)c.recv_bytes_into(buf, i % 7);
      } else if (mode == 2) {
        (void)c.recv_message();
      } else {
        (void)c.recv<Payload>();
      }
    } catch (const troupe::EOFError&) {
      break;
    } catch (const troupe::OSError&) {
      break;  // truncated or oversized: the stream is unusable
    } catch (const std::exception&) {
      // BufferTooShort, malformed Cap'n Proto: the next message is still in step
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned mode = data[0] % 5;
  if (mode < 4) {
    troupe::fuzz::Fed fed(data + 1, size - 1);
    auto& c = fed.connection();
    // A header over the limit must be refused before allocating; under it, memory follows.
    if (data[0] / 5 % 2 == 0) c.set_max_message_size(1 << 16);
    read_all(c, mode);
    return 0;
  }
  constexpr std::uint32_t kFrame = 320 * 1024;  // over Connection's 256 KiB scatter size
  std::vector<std::uint8_t> frame(kFrame, 0);
  std::copy(data + 1, data + std::min<std::size_t>(size, kFrame + 1), frame.begin());
  auto [ours, peer] = troupe::multiprocessing::Pipe();
  std::thread writer([&peer = peer, &frame] {
    try {
      peer.send_bytes(std::as_bytes(std::span(frame)));
    } catch (const std::exception&) {
    }
    peer.close();
  });
  read_all(ours, 3);
  ours.close();
  writer.join();
  return 0;
}
