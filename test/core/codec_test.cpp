#include "troupe/codec.hpp"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <capnp/serialize.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "troupe/errors.hpp"

#include "errors.capnp.h"
#include "leak_check.hpp"

// User types live outside troupe's namespace, as they would in a program.
namespace app {

struct Point {
  double x = 0;
  double y = 0;
  std::string label;
  bool operator==(const Point&) const = default;
};

enum class Color : std::uint8_t { red = 1, green = 2, blue = 250 };

struct Job {
  std::int64_t id = 0;
  std::vector<Point> path;
  std::optional<std::string> owner;
  std::map<std::string, std::vector<int>> tags;
  Color color = Color::red;
  std::variant<std::monostate, int, std::string> extra;
  std::chrono::milliseconds budget{0};
  bool operator==(const Job&) const = default;
};

struct Node {  // recursive
  int value = 0;
  std::vector<Node> children;
  bool operator==(const Node&) const = default;
};

class Account {  // not an aggregate: private members, described
public:
  Account() = default;
  Account(std::string owner, std::int64_t cents) : owner_(std::move(owner)), cents_(cents) {}
  bool operator==(const Account&) const = default;

private:
  std::string owner_;
  std::int64_t cents_ = 0;
  BOOST_DESCRIBE_CLASS(Account, (), (), (), (owner_, cents_))
};

struct Celsius {
  double degrees = 0;
};

struct Renamed {
  static constexpr std::string_view troupe_name = "app.Renamed/v2";
  int a = 0;
};

}  // namespace app

template <>
struct troupe::Codec<app::Celsius> : troupe::CodecVia<app::Celsius, double> {
  static double to(const app::Celsius& c) { return c.degrees; }
  static app::Celsius from(double d) { return app::Celsius{d}; }
};

namespace troupe {
namespace {

using ::testing::HasSubstr;

template <class T>
T round_trip(const T& x) {
  return from_bytes<T>(to_bytes(x));
}

// A message built by hand: an envelope claiming `T`, with `fill` writing the body.
template <class T, class F>
std::vector<std::byte> forged(F&& fill) {
  capnp::MallocMessageBuilder mb;
  auto env = mb.initRoot<proto::Envelope>();
  env.setFingerprint(type_id<T>().fingerprint);
  env.setTypeName(type_id<T>().signature);
  fill(env.initBody());
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

TEST(CodecTest, Scalars) {
  EXPECT_EQ(round_trip(true), true);
  EXPECT_EQ(round_trip(false), false);
  EXPECT_EQ(round_trip(std::int8_t{-128}), -128);
  EXPECT_EQ(round_trip(std::uint8_t{255}), 255);
  EXPECT_EQ(round_trip(std::numeric_limits<std::int64_t>::min()),
            std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(round_trip(std::numeric_limits<std::uint64_t>::max()),
            std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(round_trip('z'), 'z');
  EXPECT_EQ(round_trip(1.5f), 1.5f);
  EXPECT_EQ(round_trip(0.1f), 0.1f);  // a float survives the trip through Float64 exactly
  EXPECT_EQ(round_trip(-2.25), -2.25);
  EXPECT_TRUE(std::isnan(round_trip(std::nan(""))));
  EXPECT_EQ(round_trip(std::numeric_limits<double>::infinity()),
            std::numeric_limits<double>::infinity());
  EXPECT_EQ(round_trip(app::Color::blue), app::Color::blue);
  EXPECT_EQ(round_trip(std::byte{0xab}), std::byte{0xab});
}

// A bool node (a Python caller's True) decodes as an integer or a float, as Python's bool is an
// int; an integer node does not decode as a bool (a malformed message: ValueError).
TEST(CodecTest, ABoolIsAnIntegerAsInPython) {
  capnp::MallocMessageBuilder mb;
  auto v = mb.initRoot<troupe::proto::Value>();
  v.setBool(true);
  EXPECT_EQ(Codec<int>::decode(v.asReader()), 1);
  EXPECT_EQ(Codec<std::uint8_t>::decode(v.asReader()), 1u);
  EXPECT_EQ(Codec<double>::decode(v.asReader()), 1.0);
  v.setBool(false);
  EXPECT_EQ(Codec<std::int64_t>::decode(v.asReader()), 0);
  v.setInt(1);
  EXPECT_THROW(Codec<bool>::decode(v.asReader()), ValueError);
}

// An encode inside an encode (a codec that calls to_bytes) gets a first segment of its own
// while the thread's scratch segment is in use; so does one made by a thread_local's destructor
// after the scratch segment has gone with its thread.
TEST(CodecTest, EncodesNestAndOutliveTheThreadsScratch) {
  {
    codec_detail::ScratchSegment outer;
    capnp::MallocMessageBuilder mb(outer.get());
    encode(std::string("outer"), mb);
    const auto inner = to_bytes(std::vector<std::int64_t>(100, 7));  // more than 64 words
    EXPECT_EQ(from_bytes<std::vector<std::int64_t>>(inner), std::vector<std::int64_t>(100, 7));
    std::vector<std::byte> out;
    codec_detail::flatten(mb, out);
    EXPECT_EQ(from_bytes<std::string>(out), "outer");
  }
  static std::atomic<int> decoded{0};
  struct EncodesAtExit {
    ~EncodesAtExit() {
      if (from_bytes<std::string>(to_bytes(std::string("at exit"))) == "at exit") ++decoded;
    }
  };
  std::thread([] {
    thread_local EncodesAtExit first;  // made before the scratch: destroyed after it
    (void)&first;
    (void)to_bytes(1);
  }).join();
  EXPECT_EQ(decoded.load(), 1);
}

// flatten writes Cap'n Proto's stream framing: the same bytes as capnp's own writer, for a
// message in one segment (written by hand) and in several.
TEST(CodecTest, FlattenIsCapnpsStreamFraming) {
  for (const unsigned first_words : {1024u, 1u}) {  // one segment; then many small ones
    capnp::MallocMessageBuilder mb(first_words, capnp::AllocationStrategy::FIXED_SIZE);
    encode(std::vector<std::string>{"a", std::string(300, 'b'), "c"}, mb);
    std::vector<std::byte> ours{std::byte{7}};  // what was in it goes
    codec_detail::flatten(mb, ours);
    const auto flat = capnp::messageToFlatArray(mb);
    const auto theirs = flat.asBytes();
    SCOPED_TRACE(std::to_string(mb.getSegmentsForOutput().size()) + " segments");
    EXPECT_EQ(first_words == 1024u, mb.getSegmentsForOutput().size() == 1);
    ASSERT_EQ(ours.size(), theirs.size());
    EXPECT_EQ(std::memcmp(ours.data(), theirs.begin(), ours.size()), 0);
  }
}

TEST(CodecTest, StringsAndBytes) {
  EXPECT_EQ(round_trip(std::string()), "");
  EXPECT_EQ(round_trip(std::string("héllo")), "héllo");
  const std::string with_nul("a\0b\xff", 4);  // not text: any bytes survive
  EXPECT_EQ(round_trip(with_nul), with_nul);
  std::vector<std::byte> blob(100000);
  for (std::size_t i = 0; i < blob.size(); ++i) blob[i] = std::byte(i * 7);
  EXPECT_EQ(round_trip(blob), blob);
  EXPECT_EQ(round_trip(std::vector<std::byte>{}), std::vector<std::byte>{});
}

TEST(CodecTest, PackedArrays) {
  std::vector<double> d(1 << 16);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<double>(i) / 3;
  EXPECT_EQ(round_trip(d), d);
  std::vector<std::int32_t> odd = {1, -2, 3};  // 12 bytes: not whole words, copied
  EXPECT_EQ(round_trip(odd), odd);
  std::array<std::uint16_t, 5> a = {1, 2, 3, 65535, 0};
  EXPECT_EQ(round_trip(a), a);
  std::deque<float> q = {1.5f, 2.5f};
  EXPECT_EQ(round_trip(q), q);
  std::list<std::int64_t> l = {5, 6, 7};
  EXPECT_EQ(round_trip(l), l);
  // Packed: a million doubles cost the bytes and a few words of envelope.
  std::vector<double> big(1 << 20, 1.0);
  EXPECT_LT(to_bytes(big).size(), big.size() * sizeof(double) + 256);
}

// Cap'n Proto blobs hold at most 2^29-1 bytes; longer ones travel as a list of chunks.
TEST(CodecTest, BlobsLongerThanOneChunk) {
  if (troupe::testing::kThreadSanitizer)
    GTEST_SKIP() << "a size check, not a race: 512 MiB through the codec is a minute under TSan";
  const std::size_t n = codec_detail::kMaxBlobChunk + 4096;
  std::vector<std::byte> big(n);
  for (std::size_t i = 0; i < n; i += 4096) big[i] = std::byte(i >> 12);
  big[n - 1] = std::byte{0x77};
  EXPECT_EQ(round_trip(big), big);
  // Any chunking decodes, for text too (forged here: a real one would need 256 MiB more).
  auto chunked = forged<std::string>([](auto v) {
    auto l = v.initList(3);
    l[0].setText("ab");
    l[1].setText("");
    l[2].setText("cd");
  });
  EXPECT_EQ(from_bytes<std::string>(chunked), "abcd");
  auto mixed = forged<std::vector<std::uint16_t>>([](auto v) {
    auto l = v.initList(2);
    const kj::byte one[3] = {1, 0, 2};
    l[0].setData(capnp::Data::Reader(one, 3));
    l[1].setData(capnp::Data::Reader(one, 1));  // 3 + 1 bytes: two u16s across the chunks
  });
  EXPECT_EQ(from_bytes<std::vector<std::uint16_t>>(mixed), (std::vector<std::uint16_t>{1, 0x102}));
  auto wrong = forged<std::string>([](auto v) { v.initList(1)[0].setInt(1); });
  EXPECT_THROW(from_bytes<std::string>(wrong), ValueError);
}

// A container's size becomes a Cap'n Proto list size checked, never truncated to 32 bits: a
// vector of 2^32 + 1 values once made a 1-element list that the encoder wrote past (issue 15's
// audit). Sizes whose product wraps past 2^64 are refused too.
TEST(CodecTest, ListSizesAreCheckedNotTruncated) {
  using codec_detail::kMaxListElements;
  using codec_detail::list_size;
  EXPECT_EQ(list_size(3, 2, "map"), 6u);
  EXPECT_EQ(list_size(kMaxListElements, 1, "list"), kMaxListElements);
  EXPECT_THROW(list_size(kMaxListElements + 1, 1, "list"), ValueError);
  EXPECT_THROW(list_size((std::size_t{1} << 32) + 1, 1, "list"), ValueError);
  EXPECT_THROW(list_size((std::size_t{1} << 31) + 1, 2, "map"), ValueError);
  EXPECT_THROW(list_size((std::numeric_limits<std::size_t>::max() >> 1) + 1, 2, "map"),
               ValueError);  // the product wraps to 0
  try {
    list_size(std::size_t{1} << 40, 2, "map<i32,i32>");
    FAIL();
  } catch (const ValueError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("map<i32,i32> of 1099511627776 values"));
  }
}

TEST(CodecTest, Containers) {
  std::vector<std::string> vs = {"a", "", "ccc"};
  EXPECT_EQ(round_trip(vs), vs);
  std::vector<bool> vb = {true, false, true};
  EXPECT_EQ(round_trip(vb), vb);
  std::map<std::string, int> m = {{"one", 1}, {"two", 2}};
  EXPECT_EQ(round_trip(m), m);
  std::unordered_map<int, std::string> um = {{1, "x"}, {2, "y"}};
  EXPECT_EQ(round_trip(um), um);
  std::set<int> s = {3, 1, 2};
  EXPECT_EQ(round_trip(s), s);
  std::unordered_set<std::string> us = {"p", "q"};
  EXPECT_EQ(round_trip(us), us);
  std::array<std::string, 2> as = {"x", "y"};
  EXPECT_EQ(round_trip(as), as);
  std::optional<int> none;
  EXPECT_EQ(round_trip(none), std::nullopt);
  EXPECT_EQ(round_trip(std::optional<int>(4)), 4);
  std::optional<std::optional<int>> nested = std::optional<int>();
  EXPECT_EQ(round_trip(nested), nested);  // the inner "none" is not lost
  std::tuple<int, std::string, double> t{1, "two", 3.0};
  EXPECT_EQ(round_trip(t), t);
  std::pair<std::string, std::int64_t> p{"k", -9};
  EXPECT_EQ(round_trip(p), p);
  std::variant<int, std::string> v1 = 5, v2 = std::string("five");
  EXPECT_EQ(round_trip(v1), v1);
  EXPECT_EQ(round_trip(v2), v2);
  std::variant<int, int> same(std::in_place_index<1>, 7);  // the index, not the type, travels
  EXPECT_EQ(round_trip(same).index(), 1u);
}

TEST(CodecTest, Chrono) {
  using namespace std::chrono;
  EXPECT_EQ(round_trip(1500ms), 1500ms);
  EXPECT_EQ(round_trip(duration<double>(2.5)), duration<double>(2.5));
  const auto now = system_clock::now();
  EXPECT_EQ(round_trip(now), now);
  const auto mono = steady_clock::now();
  EXPECT_EQ(round_trip(mono), mono);
  // Different units are different types: milliseconds are not seconds.
  EXPECT_THROW(from_bytes<seconds>(to_bytes(1500ms)), TypeError);
}

TEST(CodecTest, AggregatesNestAndRecurse) {
  app::Job job{
      .id = 42,
      .path = {{1, 2, "a"}, {3, 4, "b"}},
      .owner = "ann",
      .tags = {{"x", {1, 2}}, {"y", {}}},
      .color = app::Color::green,
      .extra = std::string("more"),
      .budget = std::chrono::milliseconds(250),
  };
  EXPECT_EQ(round_trip(job), job);
  app::Node tree{1, {{2, {}}, {3, {{4, {}}}}}};
  EXPECT_EQ(round_trip(tree), tree);
  EXPECT_EQ(round_trip(app::Account("bob", 1234)), app::Account("bob", 1234));
  EXPECT_EQ(round_trip(app::Celsius{21.5}).degrees, 21.5);
}

TEST(CodecTest, Signatures) {
  EXPECT_EQ(type_id<std::vector<std::int32_t>>().signature, "list<i32>");
  EXPECT_EQ((type_id<std::map<std::string, double>>().signature), "map<str,f64>");
  EXPECT_EQ((type_id<std::pair<int, bool>>().signature), "tuple<i32,bool>");
  EXPECT_EQ(type_id<std::chrono::milliseconds>().signature, "duration<i64,1/1000>");
  EXPECT_EQ(type_id<app::Point>().signature, "struct app::Point{f64,f64,str}");
  EXPECT_EQ(type_id<app::Color>().signature, "enum app::Color:u8");
  EXPECT_EQ(type_id<app::Node>().signature, "struct app::Node{i32,list<struct app::Node>}");
  EXPECT_EQ(type_id<app::Account>().signature, "struct app::Account{str,i64}");
  EXPECT_EQ(type_id<app::Celsius>().signature, "app::Celsius=f64");
  EXPECT_EQ(type_id<app::Renamed>().signature, "struct app.Renamed/v2{i32}");
  EXPECT_EQ(
      type_id<Message<proto::Error>>().signature, "capnp Error@0x" + [] {
        char b[17];
        std::snprintf(b, sizeof b, "%016llx",
                      static_cast<unsigned long long>(capnp::typeId<proto::Error>()));
        return std::string(b);
      }());
  // Sequences share a signature, so a vector sent is a deque or list received; sets and maps
  // likewise, ordered or not.
  EXPECT_EQ(type_id<std::deque<int>>().fingerprint, type_id<std::vector<int>>().fingerprint);
  EXPECT_EQ(round_trip(std::vector<int>{1, 2}).size(), 2u);
  EXPECT_EQ(from_bytes<std::deque<int>>(to_bytes(std::vector<int>{1, 2})), (std::deque<int>{1, 2}));
  EXPECT_EQ((from_bytes<std::unordered_map<std::string, int>>(
                to_bytes(std::map<std::string, int>{{"a", 1}}))),
            (std::unordered_map<std::string, int>{{"a", 1}}));
}

// Receiving a different type than was sent is a TypeError naming both.
TEST(CodecTest, WrongTypeNamesBoth) {
  try {
    from_bytes<app::Point>(to_bytes(std::vector<int>{1}));
    FAIL() << "no TypeError";
  } catch (const TypeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("struct app::Point{f64,f64,str}"));
    EXPECT_THAT(e.what(), HasSubstr("list<i32>"));
  }
  // Same shape, different name: still a different type.
  struct Other {
    double x, y;
    std::string label;
  };
  EXPECT_THROW(from_bytes<Other>(to_bytes(app::Point{})), TypeError);
  EXPECT_THROW(from_bytes<std::int32_t>(to_bytes(std::int64_t{1})), TypeError);
}

TEST(CodecTest, CapnpStructsTravelAsThemselves) {
  capnp::MallocMessageBuilder mb;
  auto e = mb.initRoot<proto::Error>();
  e.setCode(7);
  e.setMessage("spam");
  // Send a reader (or a builder); receive a Message<S>.
  auto bytes = to_bytes(e.asReader());
  EXPECT_EQ(bytes, to_bytes(e));
  auto m = from_bytes<Message<proto::Error>>(bytes);
  EXPECT_EQ(m->getCode(), 7);
  EXPECT_EQ(std::string(m->getMessage().cStr()), "spam");
  // Nested inside other types, too.
  std::vector<Message<proto::Error>> many = {m, Message<proto::Error>(e.asReader())};
  auto back = round_trip(many);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(std::string(back[1]->getMessage().cStr()), "spam");
  EXPECT_EQ(Message<proto::Error>()->getCode(), 0);
}

// ---- bad input ------------------------------------------------------------------------------

TEST(CodecTest, MalformedBodiesAreValueErrors) {
  auto expect_malformed = [](auto tag, const std::vector<std::byte>& b, std::string_view what) {
    using T = typename decltype(tag)::type;
    try {
      from_bytes<T>(b);
      FAIL() << "decoded " << what;
    } catch (const ValueError& e) {
      EXPECT_THAT(e.what(), HasSubstr("malformed message")) << what;
    }
  };
  using I8 = std::type_identity<std::int8_t>;
  expect_malformed(I8{}, forged<std::int8_t>([](auto v) { v.setInt(300); }), "300 as i8");
  expect_malformed(I8{}, forged<std::int8_t>([](auto v) { v.setText("x"); }), "text as i8");
  using U8 = std::type_identity<std::uint8_t>;
  expect_malformed(U8{}, forged<std::uint8_t>([](auto v) { v.setInt(-1); }), "int -1 as u8");
  using I64 = std::type_identity<std::int64_t>;
  expect_malformed(I64{}, forged<std::int64_t>([](auto v) { v.setUint(std::uint64_t{1} << 63); }),
                   "uint 2**63 as i64");
  // Python has one int: an int node fits an unsigned parameter, a uint node a signed one, and
  // either a floating one (as float(int)).
  EXPECT_EQ(from_bytes<std::uint8_t>(forged<std::uint8_t>([](auto v) { v.setInt(200); })), 200);
  EXPECT_EQ(from_bytes<std::int32_t>(forged<std::int32_t>([](auto v) { v.setUint(7); })), 7);
  EXPECT_EQ(from_bytes<double>(forged<double>([](auto v) { v.setInt(-3); })), -3.0);
  EXPECT_EQ(from_bytes<float>(forged<float>([](auto v) { v.setUint(4); })), 4.0f);
  using Opt = std::type_identity<std::optional<int>>;
  expect_malformed(Opt{}, forged<std::optional<int>>([](auto v) {
                     auto l = v.initList(2);
                     l[0].setInt(1);
                     l[1].setInt(2);
                   }),
                   "an optional with two values");
  using Var = std::type_identity<std::variant<int, std::string>>;
  expect_malformed(Var{}, forged<std::variant<int, std::string>>([](auto v) {
                     auto a = v.initAlternative();
                     a.setIndex(9);
                     a.initValue().setInt(1);
                   }),
                   "variant index 9");
  using Arr = std::type_identity<std::array<std::int32_t, 3>>;
  expect_malformed(Arr{}, forged<std::array<std::int32_t, 3>>([](auto v) {
                     std::int32_t four[4] = {};
                     v.setData(capnp::Data::Reader(reinterpret_cast<kj::byte*>(four), 16));
                   }),
                   "4 elements as array<i32,3>");
  using Vec = std::type_identity<std::vector<std::int32_t>>;
  expect_malformed(Vec{}, forged<std::vector<std::int32_t>>([](auto v) {
                     kj::byte five[5] = {};
                     v.setData(capnp::Data::Reader(five, 5));
                   }),
                   "5 bytes as i32s");
  using Pt = std::type_identity<app::Point>;
  expect_malformed(Pt{}, forged<app::Point>([](auto v) { v.initList(2); }),
                   "a struct with a field missing");
  using Map = std::type_identity<std::map<int, int>>;
  expect_malformed(Map{}, forged<std::map<int, int>>([](auto v) { v.initList(3)[0].setInt(1); }),
                   "a map with an odd list");
}

TEST(CodecTest, GarbageAndTruncationAreValueErrors) {
  auto good = to_bytes(app::Job{.id = 1, .path = {{1, 2, "p"}}});
  for (std::size_t cut = 0; cut < good.size(); cut += 8) {
    std::vector<std::byte> b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
    EXPECT_THROW(from_bytes<app::Job>(b), ValueError) << "cut at " << cut;
  }
  std::vector<std::byte> odd(13, std::byte{1});
  EXPECT_THROW(from_bytes<int>(odd), ValueError);
  // Flipping any byte gives a clean error or a value, never a crash (the fuzzer does more).
  for (std::size_t i = 0; i < good.size(); ++i) {
    auto b = good;
    b[i] ^= std::byte{0x5a};
    try {
      (void)from_bytes<app::Job>(b);
    } catch (const ValueError&) {
    } catch (const TypeError&) {
    }
  }
}

// A message whose pointers all point at one blob (amplification: a small message that decodes
// into a large value) hits the traversal limit instead of allocating.
TEST(CodecTest, AmplificationIsBounded) {
  constexpr unsigned kCount = 2000;
  constexpr unsigned kText = 4096;
  capnp::MallocMessageBuilder mb(16384);  // one segment, so offsets are simple
  auto env = mb.initRoot<proto::Envelope>();
  env.setFingerprint(type_id<std::vector<std::string>>().fingerprint);
  auto l = env.initBody().initList(kCount);
  l[0].setText(std::string(kText, 'a'));
  for (unsigned i = 1; i < kCount; ++i) l[i].setText("");  // the tag; the pointer is redone
  auto flat = capnp::messageToFlatArray(mb);
  ASSERT_EQ(mb.getSegmentsForOutput().size(), 1u);
  auto* w = reinterpret_cast<std::uint64_t*>(flat.begin());
  // Find element 0's text pointer (a list pointer, byte elements, kText + 1 of them) and point
  // every other element's pointer at the same text.
  std::size_t p0 = 0;
  for (std::size_t i = 1; i < flat.size(); ++i) {
    const std::uint64_t x = w[i];
    if ((x & 3) == 1 && ((x >> 32) & 7) == 2 && (x >> 35) == kText + 1) p0 = i;
  }
  ASSERT_NE(p0, 0u);
  const auto off0 = static_cast<std::int32_t>(static_cast<std::uint32_t>(w[p0])) >> 2;
  const auto target = static_cast<std::int64_t>(p0) + 1 + off0;
  const std::size_t stride =
      proto::Value::_capnpPrivate::dataWordSize + proto::Value::_capnpPrivate::pointerCount;
  for (std::size_t i = 1; i < kCount; ++i) {
    const std::size_t p = p0 + i * stride;
    const auto off = static_cast<std::int32_t>(target - static_cast<std::int64_t>(p) - 1);
    w[p] = (std::uint64_t{kText + 1} << 35) | (std::uint64_t{2} << 32) |
           (static_cast<std::uint32_t>(off) << 2) | 1u;
  }
  auto bytes =
      std::span(reinterpret_cast<const std::byte*>(flat.asBytes().begin()), flat.asBytes().size());
  ASSERT_LT(bytes.size(), std::size_t{kCount} * kText / 32);  // small on the wire
  {  // The forgery works: without a limit it decodes to 2000 copies of the text.
    capnp::ReaderOptions unlimited;
    unlimited.traversalLimitInWords = std::uint64_t{1} << 40;
    capnp::FlatArrayMessageReader r(flat, unlimited);
    auto v = decode<std::vector<std::string>>(r);
    ASSERT_EQ(v.size(), kCount);
    EXPECT_EQ(v[kCount - 1].size(), kText);
  }
  try {
    auto v = from_bytes<std::vector<std::string>>(bytes);
    FAIL() << "decoded " << v.size() << " strings";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("traversal limit"));
  }
}

}  // namespace
}  // namespace troupe
