#include "troupe/entry.hpp"

#include <cstdint>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include <gtest/gtest.h>

namespace {

int g_touched = 0;

int square(int x) {
  return x * x;
}
TROUPE_ENTRY(square);

std::string join2(std::string a, int n) {
  return a + ":" + std::to_string(n);
}
TROUPE_ENTRY(join2);

void touch(int by) {
  g_touched += by;
}
TROUPE_ENTRY(touch);

class NoCodec {  // not an aggregate, not described: no codec
public:
  explicit NoCodec(int n) : n_(n) {}
  int n() const { return n_; }

private:
  int n_;
};
NoCodec opaque(int n) {
  return NoCodec(n);
}
TROUPE_ENTRY(opaque);

TEST(EntryTest, FoundByNameAndByAddress) {
  const troupe::EntryPoint* by_name = troupe::find_entry("square");
  ASSERT_NE(by_name, nullptr);
  EXPECT_STREQ(by_name->name, "square");
  EXPECT_EQ(troupe::find_entry(reinterpret_cast<const void*>(&square)), by_name);
  EXPECT_EQ(troupe::find_entry("no_such_function"), nullptr);
  EXPECT_EQ(troupe::find_entry(static_cast<const void*>(&g_touched)), nullptr);
}

TEST(EntryTest, CallDecodesArgumentsAndEncodesTheResult) {
  const auto* e = troupe::find_entry("join2");
  ASSERT_NE(e, nullptr);
  ASSERT_NE(e->call, nullptr);
  const auto out = e->call(troupe::to_bytes(std::tuple<std::string, int>{"a", 7}));
  EXPECT_EQ(troupe::from_bytes<std::string>(out), "a:7");
}

TEST(EntryTest, InvokeAndVoidResults) {
  const auto* e = troupe::find_entry("touch");
  ASSERT_NE(e, nullptr);
  g_touched = 0;
  e->invoke(troupe::to_bytes(std::tuple<int>{3}));
  EXPECT_EQ(g_touched, 3);
  const auto out = e->call(troupe::to_bytes(std::tuple<int>{2}));
  EXPECT_EQ(g_touched, 5);
  EXPECT_NO_THROW(troupe::from_bytes<std::monostate>(out));
}

// A one-parameter function's batch is a vector of the argument itself (a packed array).
TEST(EntryTest, CallBatchTakesBareArgumentsForOneParameter) {
  const auto* e = troupe::find_entry("square");
  ASSERT_NE(e, nullptr);
  ASSERT_NE(e->call_batch, nullptr);
  const auto out = e->call_batch(troupe::to_bytes(std::vector<int>{1, 2, 3}));
  EXPECT_EQ(troupe::from_bytes<std::vector<int>>(out), (std::vector<int>{1, 4, 9}));
  const auto* j = troupe::find_entry("join2");
  const auto pairs = j->call_batch(
      troupe::to_bytes(std::vector<std::tuple<std::string, int>>{{"x", 1}, {"y", 2}}));
  EXPECT_EQ(troupe::from_bytes<std::vector<std::string>>(pairs),
            (std::vector<std::string>{"x:1", "y:2"}));
}

TEST(EntryTest, ResultWithoutCodecLeavesCallNull) {
  const auto* e = troupe::find_entry("opaque");
  ASSERT_NE(e, nullptr);
  EXPECT_NE(e->invoke, nullptr);
  EXPECT_EQ(e->call, nullptr);
  EXPECT_EQ(e->call_batch, nullptr);
}

// Pointers stay valid while more entries are registered (a library loaded later).
TEST(EntryTest, RegisteringMoreKeepsEarlierPointers) {
  const auto* before = troupe::find_entry("square");
  static int (*const fns[])(int) = {[](int x) { return x + 1; }, [](int x) { return x + 2; },
                                    [](int x) { return x + 3; }};
  for (int i = 0; i < 200; ++i) {
    static std::vector<std::string> names;  // the registry keeps the name pointer
    names.reserve(200);
    names.push_back("late_" + std::to_string(i));
    troupe::register_entry({names.back().c_str(), reinterpret_cast<const void*>(fns[i % 3]),
                            nullptr, nullptr, nullptr});
  }
  EXPECT_EQ(troupe::find_entry("square"), before);
  EXPECT_STREQ(before->name, "square");
  EXPECT_NE(troupe::find_entry("late_199"), nullptr);
}

}  // namespace
