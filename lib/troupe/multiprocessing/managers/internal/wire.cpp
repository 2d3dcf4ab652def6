#include "troupe/multiprocessing/managers/internal/wire.hpp"

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>

#include <kj/exception.h>

#include "troupe/codec.hpp"
#include "troupe/detail/sanitizers.hpp"
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

detail::Frame::Frame(std::vector<std::byte> b) : bytes(std::move(b)) {
  parse();
}

void detail::Frame::clear() noexcept {
  root_.reset();
  root_type_ = 0;
  reader.reset();
}

void detail::Frame::parse() {
  reader.emplace(words_of(bytes), reader_options(bytes.size() / 8));
}

namespace internal {

namespace {
void check_whole(Frame& f) {
  if (f.reader->getEnd() != words_of(f.bytes).end())
    throw ValueError("malformed manager message: bytes after the message");
}

#if defined(TROUPE_KEEPS_FRAMES)
// A thread's frames, each used again for a later frame once nobody holds it. A reply's frame
// is made on the thread that reads the connection and let go on the caller's (after its
// completion): glibc's malloc serves a block freed by another thread from its shared bins, not
// from the thread's own cache, and a pipelined proxy's reading thread spent ~400 instructions a
// reply in malloc (callgrind, bench/call_instructions.py). A frame of more than kMaxKept bytes
// is not kept (the ring holds at most kFrames small ones).
struct FrameRing {
  static constexpr std::size_t kFrames = 128;  // over the 64 a pipelined proxy keeps in flight
  static constexpr std::size_t kMaxKept = 1024;
  std::array<std::shared_ptr<Frame>, kFrames> frames;
  std::size_t next = 0;
  ~FrameRing();
};
// Trivially destructible, so that a frame parsed while the thread's other thread_locals are
// destroyed (a handler that runs then) sees that the ring has gone.
thread_local bool t_frame_ring_gone = false;
thread_local FrameRing t_frame_ring;
FrameRing::~FrameRing() {
  t_frame_ring_gone = true;
}

// The next frame of the ring that nobody else holds (the one used last first: calls made one at
// a time use one frame), or null.
std::shared_ptr<Frame>* free_slot(FrameRing& ring) {
  for (int tries = 0; tries < 2; ++tries) {
    auto& slot = ring.frames[ring.next];
    if (!slot || slot.use_count() == 1) return &slot;
    ring.next = (ring.next + 1) % FrameRing::kFrames;
  }
  return nullptr;
}
#endif
}  // namespace

namespace {
// What `f` returns; Cap'n Proto's refusal of a message as a ValueError.
template <class F>
auto malformed_as_value_error(F&& f) {
  try {
    return f();
  } catch (const kj::Exception& e) {
    throw ValueError(std::string("malformed manager message: ") + e.getDescription().cStr());
  }
}
}  // namespace

std::shared_ptr<Frame> parse_frame(std::vector<std::byte> bytes) {
  return malformed_as_value_error([&] {
    auto f = std::make_shared<Frame>(std::move(bytes));
    check_whole(*f);
    return f;
  });
}

std::shared_ptr<Frame> read_frame_reusing(kj::FunctionParam<bool(std::vector<std::byte>&)> fill) {
#if defined(TROUPE_KEEPS_FRAMES)
  // (Not under the sanitizers, wire.hpp: a new frame each time there.)
  if (!t_frame_ring_gone) {
    std::shared_ptr<Frame>* slot = free_slot(t_frame_ring);
    if (slot && *slot) {
      // Its last holder may have been another thread: see what it did to the frame first.
      std::atomic_thread_fence(std::memory_order_acquire);
      Frame& f = **slot;
      f.clear();
      if (!fill(f.bytes)) return nullptr;
      if (f.bytes.size() > FrameRing::kMaxKept) {
        // Not kept (nor its capacity): a frame of its own.
        std::vector<std::byte> big;
        big.swap(f.bytes);
        return parse_frame(std::move(big));
      }
      malformed_as_value_error([&] {
        f.parse();
        check_whole(f);
      });
      return *slot;
    }
    std::vector<std::byte> bytes;
    if (!fill(bytes)) return nullptr;
    if (bytes.size() > FrameRing::kMaxKept) return parse_frame(std::move(bytes));
    // A new frame, in an empty place, or in the next one if both looked at are held (the held
    // one lives on with its holders).
    auto& place = slot ? *slot : t_frame_ring.frames[t_frame_ring.next];
    place = parse_frame(std::move(bytes));
    return place;
  }
#endif
  std::vector<std::byte> bytes;
  if (!fill(bytes)) return nullptr;
  return parse_frame(std::move(bytes));
}

std::shared_ptr<Frame> parse_frame_reusing(std::vector<std::byte> bytes) {
  return read_frame_reusing([&](std::vector<std::byte>& out) {
    out = std::move(bytes);
    return true;
  });
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
