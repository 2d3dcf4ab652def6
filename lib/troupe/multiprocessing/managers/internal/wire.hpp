// troupe/multiprocessing/managers/internal/wire.hpp — the manager dialect's frames
// (proto/manager.capnp) as bytes: parsing a received frame with bounded reads, flattening a built
// one. Shared by the server and the client link; .cpp-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/function.h>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/multiprocessing/managers/detail/frame.hpp"

#include "manager.capnp.h"

// Whether a thread keeps the frames it reads for later ones (parse_frame_reusing,
// read_frame_reusing): not under ThreadSanitizer (it does not see the fence that orders the last
// holder's reads before the reuse, and GCC warns of std::atomic_thread_fence there) nor under
// AddressSanitizer (a reader kept past its frame must read freed memory, which it reports, not
// the next message's bytes).
#if !defined(TROUPE_TSAN) && !defined(TROUPE_ASAN)
#define TROUPE_KEEPS_FRAMES 1
#endif

namespace troupe::multiprocessing::managers::internal {

/// The bytes "tRpMngr1" read as a little-endian UInt64: Hello's magic.
inline constexpr std::uint64_t kHelloMagic = 0x3172676e4d705274ull;

using detail::Frame;

/// The first segment of a request's or reply's builder, in words: most are a few dozen words,
/// and Cap'n Proto's default (1024 words) is zeroed for every message. A larger one grows.
inline constexpr unsigned small_message_words = 128;

/// Parses `bytes` as one Cap'n Proto message. @throws ValueError if they are not whole words,
/// the segment table is bad, or bytes follow the message.
std::shared_ptr<Frame> parse_frame(std::vector<std::byte> bytes);
/// parse_frame() in a frame this thread made before and nobody holds now, if there is one: for a
/// thread that reads many frames which other threads let go.
std::shared_ptr<Frame> parse_frame_reusing(std::vector<std::byte> bytes);
/// The next message, which `fill` puts in the vector it is given (false: there is none, and
/// this returns null), parsed in a frame this thread made before and nobody holds now: its
/// bytes' capacity is used again too (a message over 1 KiB gets a frame of its own). `fill`
/// must not read frames itself (the frame it fills is not marked taken meanwhile). @throws
/// ValueError as parse_frame; what `fill` throws.
std::shared_ptr<Frame> read_frame_reusing(kj::FunctionParam<bool(std::vector<std::byte>&)> fill);
/// The message as one frame's bytes (segment table and segments).
std::vector<std::byte> flatten(capnp::MessageBuilder& mb);
/// A random non-zero ticket (OpenSSL's CSPRNG).
std::uint64_t random_ticket();

}  // namespace troupe::multiprocessing::managers::internal
