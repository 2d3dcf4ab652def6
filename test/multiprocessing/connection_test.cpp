#include "troupe/multiprocessing/connection.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>
#include <thread>
#include <vector>

#include <gmock/gmock.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/internal/secret_message.hpp"
#include "troupe/spin.hpp"
#include "troupe/unique_fd.hpp"

#include "byte_text.hpp"
#include "errors.capnp.h"
#include "hostile_peer.hpp"
#include "leak_check.hpp"

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using ConnectionTest = troupe::testing::LeakCheck;

using ::testing::StartsWith;
using troupe::testing::bytes;
using troupe::testing::text;

// _TestConnection.test_connection: messages keep their boundaries, both ways, zero-length too.
TEST_F(ConnectionTest, DuplexPipeKeepsMessageBoundaries) {
  auto [a, b] = Pipe();
  a.send_bytes("hello");
  a.send_bytes("");
  a.send_bytes(std::string(100000, 'x'));
  a.send_bytes("world");
  EXPECT_EQ(text(b.recv_bytes()), "hello");
  EXPECT_EQ(b.recv_bytes().size(), 0u);
  EXPECT_EQ(b.recv_bytes().size(), 100000u);
  EXPECT_EQ(text(b.recv_bytes()), "world");
  b.send_bytes("back");
  EXPECT_EQ(text(a.recv_bytes()), "back");
  EXPECT_TRUE(a.readable());
  EXPECT_TRUE(a.writable());
}

// A message that holds a secret (a child's bootstrap): it travels as any other, and every segment
// its builder used, the first (a scratch, reused after) and those past it (MallocMessageBuilder
// frees those with the encoding still in them), is zero once wiped, as its destructor does.
TEST_F(ConnectionTest, ASecretMessageLeavesNoSegmentUnwiped) {
  const std::vector<std::string> secret(2000, "0123456789abcdef-key");  // ~64 kB: many segments
  {
    auto [a, b] = Pipe();
    std::thread sender([&, &a = a] { internal::send_secret(a, secret); });
    EXPECT_EQ(b.recv<std::vector<std::string>>(), secret);
    sender.join();
  }
  // Received with plain reads into a buffer of its own (wiped after), as a child reads its
  // bootstrap; a stream that ends early, or a length over the limit, is refused by name.
  for (const int cut : {0, 1, 2}) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    std::thread sender([&, w = fds[1]] {
      Connection c(w, false, true);
      if (cut == 0) internal::send_secret(c, secret);
      if (cut == 1) c.send_bytes("\x01\x02");  // a whole message, but not a codec value
      // cut == 2: nothing, the stream ends
    });
    const UniqueFd r(fds[0]);
    if (cut == 0) {
      EXPECT_EQ(internal::recv_secret<std::vector<std::string>>(r.get()), secret);
    } else if (cut == 1) {
      EXPECT_THROW(internal::recv_secret<std::vector<std::string>>(r.get()), ValueError);
    } else {
      EXPECT_THROW(internal::recv_secret<std::vector<std::string>>(r.get()), EOFError);
    }
    sender.join();
  }
  {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const UniqueFd r(fds[0]);
    {
      Connection c(fds[1], false, true);
      c.send_bytes(std::string(104, 'k'));
    }
    try {
      (void)internal::recv_secret<std::string>(r.get(), 64);
      FAIL() << "no error";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr("104 bytes (at most 64)"));
    }
  }

  std::vector<capnp::word> first(64);
  detail::SecretMessageBuilder mb(kj::arrayPtr(first.data(), first.size()));
  troupe::encode(secret, mb);
  const auto segments = mb.getSegmentsForOutput();
  ASSERT_GT(segments.size(), 1u);
  const auto nonzero = [&] {
    std::size_t n = 0;
    for (const auto& seg : segments)
      for (const auto b : seg.asBytes()) n += b != 0;
    return n;
  };
  EXPECT_GT(nonzero(), 2000u * 20);
  mb.wipe();
  EXPECT_EQ(nonzero(), 0u);
}

// _TestConnection.test_duplex_false
TEST_F(ConnectionTest, OneWayPipe) {
  auto [reader, writer] = Pipe(false);
  EXPECT_TRUE(reader.readable());
  EXPECT_FALSE(reader.writable());
  EXPECT_FALSE(writer.readable());
  EXPECT_TRUE(writer.writable());
  writer.send_bytes("one way");
  EXPECT_EQ(text(reader.recv_bytes()), "one way");
  EXPECT_THROW(reader.send_bytes("x"), OSError);
  EXPECT_THROW(writer.recv_bytes(), OSError);
  EXPECT_THROW(writer.poll(), OSError);
}

// _TestConnection.test_sendbytes: Python's bounds rules.
TEST_F(ConnectionTest, SendBytesOffsetAndSize) {
  auto [a, b] = Pipe();
  const auto msg = bytes("abcdefghijklmnopqrstuvwxyz");
  a.send_bytes(msg);
  EXPECT_EQ(text(b.recv_bytes()), "abcdefghijklmnopqrstuvwxyz");
  a.send_bytes(msg, 2);
  EXPECT_EQ(text(b.recv_bytes()), "cdefghijklmnopqrstuvwxyz");
  a.send_bytes(msg, 2, 3);
  EXPECT_EQ(text(b.recv_bytes()), "cde");
  a.send_bytes(msg, 26);
  EXPECT_EQ(b.recv_bytes().size(), 0u);
  a.send_bytes(msg, 26, 0);
  EXPECT_EQ(b.recv_bytes().size(), 0u);
  try {
    a.send_bytes(msg, 27);
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "buffer length < offset (26 < 27)");
  }
  try {
    a.send_bytes(msg, 10, 17);
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "buffer length < offset + size (26 < 10 + 17)");
  }
  EXPECT_FALSE(b.poll()) << "a refused send sends nothing";
}

// Issue 15: offset + size wrapped past 2^64, so send_bytes(16 bytes, 8, 2^64 - 8) passed the
// bounds check (EINVAL from the kernel here; heap bytes on the wire under TLS). An offset or
// size over PTRDIFF_MAX is a negative number made unsigned: Python's "... is negative".
TEST_F(ConnectionTest, SendBytesOffsetPlusSizeCannotWrap) {
  constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();
  auto [a, b] = Pipe();
  const std::vector<std::byte> buf(16, std::byte{'x'});
  auto refused = [&, &a = a](std::size_t offset, std::optional<std::size_t> size) {
    try {
      a.send_bytes(buf, offset, size);
      ADD_FAILURE() << "sent";
    } catch (const ValueError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(refused(8, kMax - 7), "size is negative (-8)");
  EXPECT_EQ(refused(kMax, std::nullopt), "offset is negative (-1)");
  EXPECT_EQ(refused(kMax - 7, 9), "offset is negative (-8)");
  const auto third = static_cast<std::size_t>(PTRDIFF_MAX);  // 8 + this does not wrap
  EXPECT_THAT(refused(8, third), StartsWith("buffer length < offset + size (16 < 8 + "));
  EXPECT_FALSE(b.poll()) << "a refused send sends nothing";
}

// Python's rules for every mix of edge values (0, around the length, around PTRDIFF_MAX, sums
// that wrap) and random ones: ValueError and nothing sent, or exactly the slice at the peer.
TEST_F(ConnectionTest, SendBytesBoundsFollowPythonForAnyOffsetAndSize) {
  for (bool duplex : {true, false}) {
    SCOPED_TRACE(duplex ? "socketpair" : "pipe");
    auto [a, b] = duplex ? Pipe() : [] {
      auto [r, w] = Pipe(false);
      return std::pair(std::move(w), std::move(r));
    }();
    troupe::testing::check_send_bytes_bounds(
        b, [&a = a](auto buf, std::size_t offset, auto size) { a.send_bytes(buf, offset, size); });
  }
}

// Issue 15: a 4-byte header announcing 512 MiB and 1 MiB of body took the receiver's resident
// set up by 512 MiB (a zero-filled vector sized from the header) before any body byte came.
// Memory follows the bytes that arrive, on every receive path; the cut-short message is still
// OSError when the peer closes.
TEST_F(ConnectionTest, AnnouncedLengthCommitsOnlyWhatArrives) {
  using troupe::testing::check_memory_follows_bytes;
  constexpr std::uint64_t kAnnounced = 512u << 20;
  constexpr std::size_t kSent = 1u << 20;
  // A Cap'n Proto segment table: one segment filling the rest of the frame.
  const std::uint32_t table[2] = {htole32(0), htole32((kAnnounced - 8) / 8)};
  const auto table_bytes = std::as_bytes(std::span(table));
  {
    SCOPED_TRACE("recv_bytes");
    auto p = troupe::testing::plain_pair();
    check_memory_follows_bytes(p, kAnnounced, {}, kSent, [&] { p.rx.recv_bytes(); });
  }
  {
    SCOPED_TRACE("recv_bytes, 8-byte header");
    auto p = troupe::testing::plain_pair();
    p.rx.set_max_message_size(std::uint64_t{8} << 30);
    check_memory_follows_bytes(p, std::uint64_t{4} << 30, {}, kSent, [&] { p.rx.recv_bytes(); });
  }
  {
    SCOPED_TRACE("recv_bytes_into, too short: BufferTooShort would carry the whole message");
    auto p = troupe::testing::plain_pair();
    std::vector<std::byte> small(64);
    check_memory_follows_bytes(p, kAnnounced, {}, kSent, [&] { p.rx.recv_bytes_into(small); });
  }
  {
    SCOPED_TRACE("recv<T>, one large segment");
    auto p = troupe::testing::plain_pair();
    check_memory_follows_bytes(p, kAnnounced, table_bytes, kSent,
                               [&] { p.rx.recv<std::vector<std::byte>>(); });
  }
  {
    SCOPED_TRACE("recv_message (recv<S> of a Cap'n Proto struct)");
    auto p = troupe::testing::plain_pair();
    check_memory_follows_bytes(p, kAnnounced, table_bytes, kSent, [&] { p.rx.recv_message(); });
  }
  {
    SCOPED_TRACE("recv<T>, not whole words: skipped");
    auto p = troupe::testing::plain_pair();
    check_memory_follows_bytes(p, kAnnounced + 1, {}, kSent,
                               [&] { p.rx.recv<std::vector<std::byte>>(); });
  }
}

// _TestConnection: recv_bytes(maxlength) over the limit is OSError and closes, as Python's.
TEST_F(ConnectionTest, RecvBytesOverMaxlengthClosesTheConnection) {
  auto [a, b] = Pipe();
  a.send_bytes("0123456789");
  EXPECT_THROW(b.recv_bytes(5), OSError);
  EXPECT_TRUE(b.closed());
  EXPECT_THROW(b.recv_bytes(), OSError);
}

// recv_bytes_into: fits; offset too large; BufferTooShort carrying the whole message.
TEST_F(ConnectionTest, RecvBytesInto) {
  auto [a, b] = Pipe();
  std::vector<std::byte> buf(16, std::byte{'.'});
  a.send_bytes("abcd");
  EXPECT_EQ(b.recv_bytes_into(buf, 4), 4u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf.data()), 10), "....abcd..");
  EXPECT_THROW(b.recv_bytes_into(buf, 17), ValueError);
  a.send_bytes("this message is longer than the rest of the buffer");
  try {
    b.recv_bytes_into(buf, 10);
    FAIL();
  } catch (const BufferTooShort& e) {
    EXPECT_EQ(text(e.message()), "this message is longer than the rest of the buffer");
  }
  a.send_bytes("next");  // the long message was consumed whole
  EXPECT_EQ(text(b.recv_bytes()), "next");
}

// EOF before a message is EOFError; inside one, OSError.
TEST_F(ConnectionTest, EndOfFile) {
  {
    auto [a, b] = Pipe();
    a.close();
    EXPECT_TRUE(b.poll(0s)) << "EOF is readable";
    EXPECT_THROW(b.recv_bytes(), EOFError);
  }
  {
    auto [a, b] = Pipe();
    const unsigned char partial[] = {0, 0, 0, 10, 'a', 'b'};
    ASSERT_EQ(::write(a.fileno(), partial, sizeof partial), 6);
    a.close();
    try {
      b.recv_bytes();
      FAIL();
    } catch (const OSError& e) {
      EXPECT_NE(std::string(e.what()).find("end of file during message"), std::string::npos);
    }
  }
}

// _TestPoll
TEST_F(ConnectionTest, Poll) {
  auto [a, b] = Pipe();
  EXPECT_FALSE(b.poll());
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE(b.poll(30ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t1, 29ms);
  std::thread t([&a = a] {
    std::this_thread::sleep_for(10ms);
    a.send_bytes("x");
  });
  EXPECT_TRUE(b.poll(Timeout{}));
  t.join();
  EXPECT_EQ(text(b.recv_bytes()), "x");
}

// A poll with a timeout spins before it sleeps (a reply that comes within the spin is seen there):
// it still says yes to each message as it comes, whether seen spinning or after a sleep, and to
// the end of the stream; no to nothing.
TEST_F(ConnectionTest, PollWithATimeoutSeesEachAnswerAndTheEnd) {
  constexpr int kRounds = 2000;
  auto [a, b] = Pipe();
  std::promise<void> looked;
  std::thread echo([&a = a, done = looked.get_future()] {
    try {
      for (int i = 0; i < kRounds; ++i) a.send_bytes(a.recv_bytes());
      done.wait();
    } catch (const std::exception&) {  // the test failed and closed its end
    }
    a.close();
  });
  bool ok = true;
  for (int i = 0; i < kRounds && ok; ++i) {
    b.send_bytes(std::to_string(i));
    ok = b.poll(10s) && text(b.recv_bytes()) == std::to_string(i);
    EXPECT_TRUE(ok) << "round " << i;
  }
  if (ok) {
    EXPECT_FALSE(b.poll(5ms));
    looked.set_value();
    EXPECT_TRUE(b.poll(10s)) << "the end of the stream is readable";
    EXPECT_THROW(b.recv_bytes(), EOFError);
  } else {
    b.close();  // the echo's receive ends
  }
  echo.join();
}

// Both directions of a socket share one wait queue: when the peer reads what this side sent,
// the kernel reports room to write there, and a reader asleep in read() was woken for nothing (a
// context switch a message; on a busy machine, a time slice). A receive sleeps in poll() for
// input only: it sleeps once.
TEST_F(ConnectionTest, AReceiveSleepsOnceWhileThePeerReadsWhatItSent) {
  const auto saved = spin_limit();
  set_spin_limit(0ns);  // straight to sleep: the count is the sleeps
  // How often the reader's receive slept: once, or twice if the peer's read woke it. Up to three
  // tries: something else (a sanitizer's lock, say) may make a thread sleep once more now and
  // then, while the spurious wake-up came every time.
  auto one_try = [] {
    auto [a, b] = Pipe();
    std::atomic<pid_t> tid{0};
    std::atomic<long> sleeps{-1};
    std::thread reader([&a = a, &tid, &sleeps] {
      a.send_bytes("request");
      rusage before{};
      ::getrusage(RUSAGE_THREAD, &before);
      tid = static_cast<pid_t>(::syscall(SYS_gettid));
      try {
        (void)a.recv_bytes();
      } catch (const std::exception&) {  // the test failed and closed its end
      }
      rusage after{};
      ::getrusage(RUSAGE_THREAD, &after);
      sleeps = after.ru_nvcsw - before.ru_nvcsw;
    });
    // Once the reader sleeps in its receive, read its request, and answer a while later.
    auto asleep = [&] {
      if (tid == 0) return false;
      std::ifstream stat("/proc/self/task/" + std::to_string(tid.load()) + "/stat");
      std::string text((std::istreambuf_iterator<char>(stat)), {});
      const auto paren = text.rfind(')');
      return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'S';
    };
    for (int i = 0; i < 5000 && !asleep(); ++i) std::this_thread::sleep_for(1ms);
    EXPECT_TRUE(asleep()) << "the reader never slept in its receive";
    EXPECT_EQ(text(b.recv_bytes()), "request");
    std::this_thread::sleep_for(50ms);
    b.send_bytes("reply");
    reader.join();
    return sleeps.load();
  };
  long sleeps = -1;
  for (int i = 0; i < 3 && sleeps != 1; ++i) sleeps = one_try();
  set_spin_limit(saved);
  EXPECT_EQ(sleeps, 1) << "the reader's receive slept (and was woken) more than once";
}

// Several MiB each way through a socketpair: more than the socket buffers hold, so each side
// must read while the other writes.
TEST_F(ConnectionTest, LargeMessagesBothWays) {
  auto [a, b] = Pipe();
  std::vector<std::byte> big(5 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::byte>(i * 7);
  std::vector<std::byte> got_a;
  std::thread t([&, &a = a] {
    a.send_bytes(big);
    got_a = a.recv_bytes();
  });
  auto got_b = b.recv_bytes();
  b.send_bytes(got_b);
  t.join();
  EXPECT_EQ(got_a, big);
  EXPECT_EQ(got_b, big);
}

// The long header (-1 then 8 bytes) is accepted for any size, as CPython's reader does.
TEST_F(ConnectionTest, AcceptsTheLongHeaderForSmallMessages) {
  auto [a, b] = Pipe();
  const unsigned char frame[] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'};
  ASSERT_EQ(::write(a.fileno(), frame, sizeof frame), static_cast<ssize_t>(sizeof frame));
  EXPECT_EQ(text(b.recv_bytes()), "abc");
}

// Bad input on purpose: a header announcing 1 TiB is refused before anything is allocated, and
// a negative length other than -1 is a protocol error.
TEST_F(ConnectionTest, OversizedAndNegativeHeadersAreRefused) {
  {
    auto [a, b] = Pipe();
    const unsigned char frame[] = {0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 0};
    ASSERT_EQ(::write(a.fileno(), frame, sizeof frame), static_cast<ssize_t>(sizeof frame));
    try {
      b.recv_bytes();
      FAIL();
    } catch (const OSError& e) {
      EXPECT_NE(std::string(e.what()).find("bad message length: 1099511627776 bytes, limit"),
                std::string::npos)
          << e.what();
    }
    EXPECT_TRUE(b.closed());
  }
  {
    auto [a, b] = Pipe();
    b.set_max_message_size(8);
    a.send_bytes("123456789");
    EXPECT_THROW(b.recv_bytes(), OSError);
  }
  {
    auto [a, b] = Pipe();
    const unsigned char frame[] = {0x80, 0, 0, 0};
    ASSERT_EQ(::write(a.fileno(), frame, sizeof frame), 4);
    EXPECT_THROW(b.recv_bytes(), OSError);
    EXPECT_TRUE(b.closed());
  }
}

TEST_F(ConnectionTest, ClosedConnection) {
  auto [a, b] = Pipe();
  a.close();
  a.close();  // twice is fine
  EXPECT_TRUE(a.closed());
  EXPECT_THROW(a.send_bytes("x"), OSError);
  EXPECT_THROW(a.recv_bytes(), OSError);
  EXPECT_THROW(a.fileno(), OSError);
  EXPECT_THROW(a.poll(), OSError);
}

// A write to a pipe whose reader is gone is BrokenPipeError, not a SIGPIPE death.
TEST_F(ConnectionTest, BrokenPipeIsAnError) {
  {
    auto [reader, writer] = Pipe(false);
    reader.close();
    EXPECT_THROW(writer.send_bytes("anyone?"), BrokenPipeError);
  }
  {
    auto [a, b] = Pipe();
    b.close();
    EXPECT_THROW(a.send_bytes(std::string(1 << 20, 'x')), OSError);
  }
}

TEST_F(ConnectionTest, PipeEndsAreCloseOnExec) {
  auto [a, b] = Pipe();
  EXPECT_TRUE(fcntl(a.fileno(), F_GETFD) & FD_CLOEXEC);
  auto [r, w] = Pipe(false);
  EXPECT_TRUE(fcntl(w.fileno(), F_GETFD) & FD_CLOEXEC);
}

TEST_F(ConnectionTest, MoveKeepsBufferedData) {
  auto [a, b] = Pipe();
  a.send_bytes("first");
  a.send_bytes("second");
  EXPECT_EQ(text(b.recv_bytes()), "first");  // "second" may now sit in b's buffer
  Connection moved(std::move(b));
  EXPECT_EQ(text(moved.recv_bytes()), "second");
}

// ---- the handshake --------------------------------------------------------------------------

using AuthTest = troupe::testing::LeakCheck;

// Mutual authentication, as Listener.accept and Client do it.
void handshake(Connection& server, Connection& client, const AuthenticationString& skey,
               const AuthenticationString& ckey, const AuthOptions& sopt = {},
               const AuthOptions& copt = {}, std::exception_ptr* server_error = nullptr,
               std::exception_ptr* client_error = nullptr) {
  std::thread t([&] {
    try {
      deliver_challenge(server, skey, sopt);
      answer_challenge(server, skey, sopt);
    } catch (...) {
      if (server_error) *server_error = std::current_exception();
      server.close();
    }
  });
  try {
    answer_challenge(client, ckey, copt);
    deliver_challenge(client, ckey, copt);
  } catch (...) {
    if (client_error) *client_error = std::current_exception();
    client.close();
  }
  t.join();
}

TEST_F(AuthTest, RightKeyAuthenticatesBothWays) {
  for (const char* digest : {"sha256", "md5", "sha384", "sha3_256", "sha3_384"}) {
    SCOPED_TRACE(digest);
    auto [s, c] = Pipe();
    auto key = AuthenticationString::random();
    std::exception_ptr se, ce;
    handshake(s, c, key, key, {.digest_name = digest}, {}, &se, &ce);
    EXPECT_FALSE(se);
    EXPECT_FALSE(ce);
    c.send_bytes("after auth");
    EXPECT_EQ(text(s.recv_bytes()), "after auth");
  }
}

// ChallengeResponseTest / _TestListenerClient: a wrong key fails on both sides.
TEST_F(AuthTest, WrongKeyFailsOnBothSides) {
  auto [s, c] = Pipe();
  std::exception_ptr se, ce;
  handshake(s, c, AuthenticationString("right"), AuthenticationString("wrong"), {}, {}, &se, &ce);
  ASSERT_TRUE(se);
  ASSERT_TRUE(ce);
  try {
    std::rethrow_exception(se);
  } catch (const AuthenticationError& e) {
    EXPECT_STREQ(e.what(), "digest received was wrong");
  }
  try {
    std::rethrow_exception(ce);
  } catch (const AuthenticationError& e) {
    EXPECT_STREQ(e.what(), "digest sent was rejected");
  }
}

// Python 3.13: an empty key still authenticates.
TEST_F(AuthTest, EmptyKeyAuthenticates) {
  auto [s, c] = Pipe();
  std::exception_ptr se, ce;
  handshake(s, c, AuthenticationString(), AuthenticationString(), {}, {}, &se, &ce);
  EXPECT_FALSE(se);
  EXPECT_FALSE(ce);
}

// OtherTest.test_deliver_challenge / test_answer_challenge: garbage gets AuthenticationError.
TEST_F(AuthTest, GarbageIsAnAuthenticationError) {
  const AuthenticationString key("key");
  {
    auto [s, c] = Pipe();
    s.send_bytes("something bogus");
    EXPECT_THROW(answer_challenge(c, key), AuthenticationError);
  }
  {
    auto [s, c] = Pipe();
    s.send_bytes("#CHALLENGE#short");
    EXPECT_THROW(answer_challenge(c, key), AuthenticationError);
  }
  {
    auto [s, c] = Pipe();
    s.send_bytes("#CHALLENGE#{sha999}0123456789012345678901234567890123456789");
    EXPECT_THROW(answer_challenge(c, key), AuthenticationError);
  }
  {
    auto [s, c] = Pipe();
    std::thread t([&c = c] {
      (void)c.recv_bytes();
      c.send_bytes("something bogus");
      EXPECT_EQ(text(c.recv_bytes()), "#FAILURE#");
    });
    EXPECT_THROW(deliver_challenge(s, key), AuthenticationError);
    t.join();
  }
}

// Every handshake read is bounded to 256 bytes (CPython: recv_bytes(256)).
TEST_F(AuthTest, OversizedHandshakeMessageIsRefused) {
  auto [s, c] = Pipe();
  s.send_bytes(std::string(257, '#'));
  EXPECT_THROW(answer_challenge(c, AuthenticationString("k")), OSError);
}

// The legacy dialect (CPython <= 3.11): refused unless opted in, then understood both ways.
TEST_F(AuthTest, LegacyMd5OnlyWhenOptedIn) {
  const AuthenticationString key("secret");
  auto legacy_challenge = [](Connection& s) {
    std::string m = "#CHALLENGE#";
    m += std::string(20, 'r');  // a 20-byte unprefixed challenge
    s.send_bytes(m);
  };
  {
    auto [s, c] = Pipe();
    legacy_challenge(s);
    EXPECT_THROW(answer_challenge(c, key), AuthenticationError);
  }
  {
    auto [s, c] = Pipe();
    legacy_challenge(s);
    std::thread t([&, &s = s] {
      auto answer = s.recv_bytes();
      EXPECT_EQ(answer, detail::hmac("md5", key.bytes(), bytes(std::string(20, 'r'))));
      s.send_bytes("#WELCOME#");
    });
    EXPECT_NO_THROW(answer_challenge(c, key, {.legacy_md5 = true}));
    t.join();
  }
  {
    // A legacy client answers our {sha256} challenge with a raw 16-byte HMAC-MD5 of all of it.
    auto [s, c] = Pipe();
    std::thread t([&, &c = c] {
      auto challenge = c.recv_bytes();
      auto message = std::span(challenge).subspan(11);
      c.send_bytes(detail::hmac("md5", key.bytes(), message));
      EXPECT_EQ(text(c.recv_bytes()), "#FAILURE#");
    });
    EXPECT_THROW(deliver_challenge(s, key), AuthenticationError);
    t.join();
  }
}

// A handshake called directly on a Pipe can have a deadline too: a silent peer → TimeoutError.
TEST_F(AuthTest, HandshakeDeadlineOnAPipe) {
  auto [a, b] = Pipe();
  const AuthenticationString key("k");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(answer_challenge(a, key, {.timeout = 50ms}), troupe::TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 45ms);
  EXPECT_THROW(deliver_challenge(b, key, {.timeout = 50ms}), troupe::TimeoutError);
  // A timeout that is long enough changes nothing.
  auto [c, d] = Pipe();
  std::thread t([&c = c, &key] { deliver_challenge(c, key, {.timeout = 10s}); });
  answer_challenge(d, key, {.timeout = 10s});
  t.join();
}

TEST_F(AuthTest, AuthenticationString) {
  auto k = AuthenticationString::from_hex("00ff10Ab");
  ASSERT_EQ(k.size(), 4u);
  EXPECT_EQ(k.bytes()[1], std::byte{0xff});
  EXPECT_EQ(k.bytes()[3], std::byte{0xab});
  EXPECT_THROW(AuthenticationString::from_hex("abc"), ValueError);
  EXPECT_THROW(AuthenticationString::from_hex("zz"), ValueError);
  EXPECT_EQ(AuthenticationString::random().size(), 32u);
  auto copy = k;
  EXPECT_TRUE(detail::equal_constant_time(copy.bytes(), k.bytes()));
  auto moved = std::move(copy);
  EXPECT_TRUE(copy.empty());
  EXPECT_EQ(moved.size(), 4u);
  // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
  auto mac = detail::hmac("sha256", AuthenticationString("Jefe").bytes(),
                          bytes("what do ya want for nothing?"));
  const unsigned char expect[] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e};
  EXPECT_EQ(std::memcmp(mac.data(), expect, sizeof expect), 0);
  EXPECT_THROW(detail::hmac("nope", k.bytes(), mac), AuthenticationError);
}

// ---- typed messages (send<T> / recv<T>) -----------------------------------------------------

struct Task {
  std::int64_t id = 0;
  std::string name;
  std::vector<double> weights;
  std::optional<std::map<std::string, int>> options;
  bool operator==(const Task&) const = default;
};

using TypedTest = troupe::testing::LeakCheck;

// _TestConnection.test_connection's conn.send(obj)/conn.recv() part, with types.
TEST_F(TypedTest, SendRecvKeepsValuesAndOrder) {
  auto [a, b] = Pipe();
  Task t{7, "seven", {0.5, 1.5}, std::map<std::string, int>{{"k", 1}}};
  a.send(t);
  a.send(42);
  a.send(std::string("text"));
  a.send(std::vector<std::string>{"x", "", "z"});
  a.send_bytes("raw in between");
  a.send(std::tuple<int, bool>{1, true});
  EXPECT_EQ(b.recv<Task>(), t);
  EXPECT_EQ(b.recv<int>(), 42);
  EXPECT_EQ(b.recv<std::string>(), "text");
  EXPECT_EQ(b.recv<std::vector<std::string>>(), (std::vector<std::string>{"x", "", "z"}));
  EXPECT_EQ(text(b.recv_bytes()), "raw in between");
  EXPECT_EQ((b.recv<std::tuple<int, bool>>()), (std::tuple<int, bool>{1, true}));
  b.send(std::string("back"));
  EXPECT_EQ(a.recv<std::string>(), "back");
}

// A message of another type is a TypeError naming both; the connection goes on.
TEST_F(TypedTest, WrongTypeIsTypeErrorAndConnectionStaysUsable) {
  auto [a, b] = Pipe();
  a.send(std::string("not an int"));
  a.send(5);
  try {
    b.recv<int>();
    FAIL() << "no TypeError";
  } catch (const TypeError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("i32"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("str"));
  }
  EXPECT_EQ(b.recv<int>(), 5);
}

// Bytes that are not a message (a Python peer's pickle, garbage, a cut frame): ValueError, and
// the next message is read from its start.
TEST_F(TypedTest, NonMessagesAreValueErrorsAndStreamStaysInStep) {
  auto [a, b] = Pipe();
  a.send_bytes("\x80\x04\x95\x05");       // the start of a pickle: 4 bytes, not whole words
  a.send_bytes(std::string(16, '\xff'));  // whole words, nonsense segment table
  a.send_bytes("");
  a.send(1.25);
  EXPECT_THROW(b.recv<double>(), ValueError);
  EXPECT_THROW(b.recv<double>(), ValueError);
  EXPECT_THROW(b.recv<double>(), ValueError);
  EXPECT_EQ(b.recv<double>(), 1.25);
  a.close();
  EXPECT_THROW(b.recv<double>(), EOFError);
}

TEST_F(TypedTest, MaxMessageSizeAppliesToTypedMessages) {
  auto [a, b] = Pipe();
  b.set_max_message_size(1024);
  a.send(std::vector<std::byte>(4096));
  EXPECT_THROW(b.recv<std::vector<std::byte>>(), OSError);
  EXPECT_TRUE(b.closed());  // as recv_bytes: the stream is out of step
}

// Large packed arrays: sent straight from the vector's memory; answered with another.
TEST_F(TypedTest, LargeArraysBothWays) {
  auto [a, b] = Pipe();
  std::vector<double> big(1 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<double>(i) * 0.5;
  std::vector<std::byte> blob(3 * 1024 * 1024 + 5);  // not whole words: copied, still fine
  for (std::size_t i = 0; i < blob.size(); ++i) blob[i] = std::byte(i);
  std::thread t([&, &b = b] {
    EXPECT_EQ(b.recv<std::vector<double>>(), big);
    b.send(blob);
  });
  a.send(big);
  EXPECT_EQ(a.recv<std::vector<std::byte>>(), blob);
  t.join();
}

// Large typed frames are read segment by segment: big byte vectors are received in place (no
// copy), everything else decodes as usual, small and large parts mixed.
struct Bulk {
  std::vector<std::byte> first;
  std::string note;
  std::vector<double> numbers;
  std::vector<std::byte> second;
  std::vector<std::vector<std::byte>> many;
  bool operator==(const Bulk&) const = default;
};

TEST_F(TypedTest, LargeFramesScatteredAndMixed) {
  auto [tx, rx] = Pipe<Bulk>();
  Bulk bulk;
  bulk.first.resize(1 << 20);
  for (std::size_t i = 0; i < bulk.first.size(); ++i) bulk.first[i] = std::byte(i * 13);
  bulk.note = "between";
  bulk.numbers.assign(200000, 2.5);
  bulk.second.assign(300 * 1024, std::byte{9});
  bulk.many = {std::vector<std::byte>(70000, std::byte{1}), {}, std::vector<std::byte>(5)};
  std::thread t([&tx = tx, &bulk] {
    tx.send(bulk);
    tx.send(Bulk{{}, "small", {1.0}, {}, {}});
  });
  EXPECT_EQ(rx.recv(), bulk);
  EXPECT_EQ(rx.recv().note, "small");
  t.join();
}

// A large frame whose segment table is wrong: ValueError, and the stream stays in step.
TEST_F(TypedTest, LargeFramesWithBadSegmentTables) {
  auto [a, b] = Pipe();
  std::vector<std::uint32_t> words(300 * 1024 / 4, 0);
  words[0] = 1000;  // 1001 segments: over Cap'n Proto's limit of 512
  std::thread t([&a = a, &words] {
    a.send_bytes(std::as_bytes(std::span(words)));
    words[0] = 0;  // one segment whose size does not match the frame
    words[1] = 5;
    a.send_bytes(std::as_bytes(std::span(words)));
    a.send(std::string("after"));
  });
  for (const char* expect : {"segments", "adds up to"}) {
    try {
      b.recv<std::vector<std::byte>>();
      ADD_FAILURE() << "decoded a bad frame";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr(expect));
    }
  }
  EXPECT_EQ(b.recv<std::string>(), "after");
  t.join();
}

// A Cap'n Proto struct travels as itself; the received Message<S> reads the frame in place.
TEST_F(TypedTest, CapnpStructs) {
  auto [a, b] = Pipe();
  capnp::MallocMessageBuilder mb;
  auto e = mb.initRoot<proto::Error>();
  e.setCode(72);
  e.setMessage("digest received was wrong");
  a.send(e.asReader());
  a.send(e);
  auto m = b.recv<proto::Error>();
  EXPECT_EQ(m->getCode(), 72);
  EXPECT_EQ(std::string(m->getMessage().cStr()), "digest received was wrong");
  EXPECT_EQ(b.recv<Message<proto::Error>>()->getCode(), 72);
}

// Pipe<T>(): a one-way pair that carries only T.
TEST_F(TypedTest, TypedPipe) {
  auto [tx, rx] = Pipe<Task>();
  EXPECT_FALSE(rx.poll());
  tx.send(Task{1, "one", {}, std::nullopt});
  tx.send(Task{2, "two", {2.0}, std::nullopt});
  ASSERT_TRUE(rx.poll(1s));
  EXPECT_EQ(rx.recv().name, "one");
  EXPECT_EQ(rx.recv().weights, std::vector<double>{2.0});
  EXPECT_THROW(rx.connection().send_bytes("x"), OSError);  // read-only end
  tx.close();
  EXPECT_THROW(rx.recv(), EOFError);
}

// A sender on another thread, many messages: nothing lost, nothing reordered.
TEST_F(TypedTest, ManyMessagesFromAThread) {
  auto [tx, rx] = Pipe<std::pair<int, std::string>>();
  constexpr int kCount = 20000;
  std::thread t([&tx = tx] {
    for (int i = 0; i < kCount; ++i) tx.send({i, std::to_string(i)});
  });
  for (int i = 0; i < kCount; ++i) {
    auto [n, s] = rx.recv();
    ASSERT_EQ(n, i);
    ASSERT_EQ(s, std::to_string(i));
  }
  t.join();
}

// ---- connection.wait (_TestWait) -------------------------------------------------------------

using WaitTest = troupe::testing::LeakCheck;

TEST_F(WaitTest, ReturnsTheReadyOnesInOrder) {
  auto [a1, b1] = Pipe();
  auto [a2, b2] = Pipe();
  auto [a3, b3] = Pipe();
  EXPECT_TRUE(connection::wait({b1, b2, b3}, 0s).empty());
  a3.send_bytes("three");
  a1.send_bytes("one");
  auto ready = connection::wait({b1, b2, b3}, 1s);
  ASSERT_EQ(ready.size(), 2u);
  EXPECT_EQ(ready[0].connection(), &b1);
  EXPECT_EQ(ready[1].connection(), &b3);
  // EOF counts as ready, as in Python (recv then raises EOFError).
  a2.close();
  ready = connection::wait({b2}, 1s);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_THROW(b2.recv_bytes(), EOFError);
}

TEST_F(WaitTest, WakesWhenAThreadSends) {
  auto [a, b] = Pipe();
  std::thread t([&a = a] {
    std::this_thread::sleep_for(50ms);
    a.send(7);
  });
  const auto start = std::chrono::steady_clock::now();
  auto ready = connection::wait({b});  // forever
  EXPECT_GE(std::chrono::steady_clock::now() - start, 40ms);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(b.recv<int>(), 7);
  t.join();
}

TEST_F(WaitTest, TimeoutGivesEmptyList) {
  auto [a, b] = Pipe();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(connection::wait({b}, 50ms).empty());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 45ms);
  EXPECT_TRUE(connection::wait({b}, -1s).empty());  // negative: one look, no wait
}

// A message already read into the connection's buffer is ready even though the fd is not.
TEST_F(WaitTest, SeesBufferedMessages) {
  auto [a, b] = Pipe();
  a.send_bytes("first");
  a.send_bytes("second");
  std::this_thread::sleep_for(10ms);
  EXPECT_EQ(text(b.recv_bytes()), "first");  // one read took both
  ASSERT_GT(b.buffered_bytes(), 0u);
  auto ready = connection::wait({b}, 0s);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(text(b.recv_bytes()), "second");
}

TEST_F(WaitTest, PlainFdsAndTypedReceivers) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  auto [tx, rx] = Pipe<int>();
  EXPECT_TRUE(connection::wait({fds[0], rx}, 0s).empty());
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  tx.send(1);
  auto ready = connection::wait({fds[0], rx}, 1s);
  ASSERT_EQ(ready.size(), 2u);
  EXPECT_EQ(ready[0].fileno(), fds[0]);
  EXPECT_EQ(ready[1].connection(), &rx.connection());
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_F(WaitTest, ClosedOrInvalidIsOSError) {
  auto [a, b] = Pipe();
  b.close();
  EXPECT_THROW(connection::wait({b}, 0s), OSError);
  EXPECT_THROW(connection::wait({-1}, 0s), OSError);
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_THROW(connection::wait({fds[0]}, 0s), OSError);
}

}  // namespace
}  // namespace troupe::multiprocessing
