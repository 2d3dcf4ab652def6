// A received frame of the manager dialect, and the frames a reading thread uses again
// (internal::parse_frame_reusing, read_frame_reusing): a frame is used for another message only
// once nobody holds it, wherever its last holder let it go, and a bad message leaves no frame
// half-made.
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <gtest/gtest.h>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/internal/wire.hpp"

#include "leak_check.hpp"

namespace troupe::multiprocessing::managers {
namespace {

using detail::Frame;

// A reply frame's bytes: call id `id`, and a text of `text_bytes` bytes (to make it large).
std::vector<std::byte> reply_bytes(std::uint64_t id, std::size_t text_bytes = 0) {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<proto::manager::Reply>();
  r.setCallId(id);
  r.setText(std::string(text_bytes, 'x'));  // (set even when empty: the union reads as text)
  return internal::flatten(mb);
}

std::uint64_t id_of(const std::shared_ptr<Frame>& f) {
  return f->root<proto::manager::Reply>().getCallId();
}

TEST(FrameTest, AHeldFrameKeepsItsMessageWhileTheThreadReadsOthers) {
  auto held = internal::parse_frame_reusing(reply_bytes(7));
  const std::vector<std::byte> bytes = held->bytes;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    auto f = internal::parse_frame_reusing(reply_bytes(100 + i));
    ASSERT_NE(f.get(), held.get());
    ASSERT_EQ(id_of(f), 100 + i);
  }
  EXPECT_EQ(id_of(held), 7u);
  EXPECT_EQ(held->bytes, bytes);
}

TEST(FrameTest, AFrameNobodyHoldsIsUsedAgainWithTheNewMessage) {
  [[maybe_unused]] const Frame* first = nullptr;
  {
    auto f = internal::parse_frame_reusing(reply_bytes(1));
    first = f.get();
    EXPECT_EQ(id_of(f), 1u);
  }
  auto g = internal::parse_frame_reusing(reply_bytes(2, 40));
#if defined(TROUPE_KEEPS_FRAMES)  // (else a new frame each time)
  EXPECT_EQ(g.get(), first);      // one call at a time: one frame
#endif
  EXPECT_EQ(id_of(g), 2u);  // not the first message's root, kept from before
  EXPECT_EQ(g->root<proto::manager::Reply>().getText().size(), 40u);
}

// As a pipelined proxy's replies: read on one thread, let go on another (the caller's). Each
// frame holds its own message while it is held (a frame used again while held would show
// another's id).
TEST(FrameTest, FramesLetGoOnAnotherThreadAreUsedAgainIntact) {
  constexpr std::uint64_t kFrames = 2000;
  std::vector<std::pair<std::uint64_t, std::shared_ptr<Frame>>> batch;
  std::uint64_t bad = 0;
  auto check = [](const std::pair<std::uint64_t, std::shared_ptr<Frame>>& x) {
    return id_of(x.second) == x.first &&
           x.second->root<proto::manager::Reply>().getText().size() == x.first % 64;
  };
  for (std::uint64_t i = 0; i < kFrames; ++i) {
    batch.emplace_back(i, internal::parse_frame_reusing(reply_bytes(i, i % 64)));
    if (batch.size() == 64) {
      std::thread other([b = std::move(batch), &bad, &check]() mutable {
        for (const auto& x : b)
          if (!check(x)) ++bad;
        b.clear();
      });
      other.join();
      batch.clear();
    }
  }
  for (const auto& x : batch)
    if (!check(x)) ++bad;
  EXPECT_EQ(bad, 0u);
}

TEST(FrameTest, ALargeFrameIsReadInAFrameOfItsOwn) {
  [[maybe_unused]] const Frame* small = nullptr;
  {
    auto f = internal::parse_frame_reusing(reply_bytes(1));
    small = f.get();
  }
  {
    auto large = internal::parse_frame_reusing(reply_bytes(2, 64 * 1024));
#if defined(TROUPE_KEEPS_FRAMES)    // (else nothing is kept: the address may be the small one's)
    EXPECT_NE(large.get(), small);  // (the small one is still kept, at its own address)
#endif
    EXPECT_EQ(large->root<proto::manager::Reply>().getText().size(), 64u * 1024);
    EXPECT_EQ(id_of(large), 2u);
  }
  auto g = internal::parse_frame_reusing(reply_bytes(3));
#if defined(TROUPE_KEEPS_FRAMES)
  EXPECT_EQ(g.get(), small);  // the large one did not take its place
#endif
  EXPECT_EQ(id_of(g), 3u);
}

// read_frame_reusing: the message is read into a free kept frame's own bytes (no new buffer:
// the server's and the link's read loops), nothing read leaves nothing, and a large message
// gets a frame of its own without the kept frame growing to its size.
TEST(FrameTest, AMessageIsReadIntoAFreeFramesOwnBytes) {
  auto read = [](const std::vector<std::byte>& message) {
    return internal::read_frame_reusing([&](std::vector<std::byte>& out) {
      out.assign(message.begin(), message.end());
      return true;
    });
  };
  [[maybe_unused]] const std::byte* storage = nullptr;
  [[maybe_unused]] const Frame* kept = nullptr;
  {
    auto f = read(reply_bytes(1, 200));
    storage = f->bytes.data();
    kept = f.get();
    EXPECT_EQ(id_of(f), 1u);
  }
  {
    auto g = read(reply_bytes(2, 8));
#if defined(TROUPE_KEEPS_FRAMES)  // (else a new frame each time)
    EXPECT_EQ(g.get(), kept);
    EXPECT_EQ(g->bytes.data(), storage);  // the first message's capacity, used again
#endif
    EXPECT_EQ(id_of(g), 2u);
    EXPECT_EQ(g->root<proto::manager::Reply>().getText().size(), 8u);
  }
  bool asked = false;
  EXPECT_EQ(internal::read_frame_reusing([&](std::vector<std::byte>&) {
              asked = true;
              return false;
            }),
            nullptr);
  EXPECT_TRUE(asked);
  {
    auto large = read(reply_bytes(3, 64 * 1024));
    EXPECT_EQ(id_of(large), 3u);
    EXPECT_EQ(large->root<proto::manager::Reply>().getText().size(), 64u * 1024);
#if defined(TROUPE_KEEPS_FRAMES)
    EXPECT_NE(large.get(), kept);
#endif
  }
  auto h = read(reply_bytes(4));
  EXPECT_EQ(id_of(h), 4u);
#if defined(TROUPE_KEEPS_FRAMES)
  EXPECT_EQ(h.get(), kept);
  EXPECT_LE(h->bytes.capacity(), 1024u);  // the large message's buffer went with its frame
#endif
}

TEST(FrameTest, ABadMessageInAFrameUsedAgainIsRefusedAndTheNextIsRead) {
  { auto f = internal::parse_frame_reusing(reply_bytes(1)); }
  std::vector<std::byte> odd(12, std::byte{0});  // not whole words
  EXPECT_THROW(internal::parse_frame_reusing(odd), ValueError);
  std::vector<std::byte> trailing = reply_bytes(3);
  trailing.resize(trailing.size() + 8);  // a word after the message
  EXPECT_THROW(internal::parse_frame_reusing(trailing), ValueError);
  std::vector<std::byte> table(16, std::byte{0xff});  // a segment table that claims too much
  EXPECT_THROW(internal::parse_frame_reusing(table), ValueError);
  auto g = internal::parse_frame_reusing(reply_bytes(4));
  EXPECT_EQ(id_of(g), 4u);
}

}  // namespace
}  // namespace troupe::multiprocessing::managers
