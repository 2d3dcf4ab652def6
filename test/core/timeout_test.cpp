#include "troupe/timeout.hpp"

#include <limits>

#include "leak_check.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using TimeoutTest = troupe::testing::LeakCheck;

TEST_F(TimeoutTest, DefaultIsForever) {
  Timeout t;
  EXPECT_TRUE(t.is_forever());
  EXPECT_FALSE(t.deadline().has_value());
  EXPECT_EQ(t.remaining(), std::chrono::nanoseconds::max());
  EXPECT_TRUE(Timeout(std::nullopt).is_forever());
  EXPECT_TRUE(forever.is_forever());
}

TEST_F(TimeoutTest, RelativeKeepsItsSign) {
  Timeout t = -1s;
  EXPECT_TRUE(t.is_relative());
  EXPECT_TRUE(t.is_negative());
  EXPECT_TRUE(t.is_minus_one());
  EXPECT_FALSE(Timeout(-2s).is_minus_one());
  EXPECT_FALSE(Timeout(0s).is_negative());
  EXPECT_EQ(Timeout(1500ms).relative(), 1500ms);
  EXPECT_DOUBLE_EQ(Timeout(1500ms).seconds_value(), 1.5);
}

TEST_F(TimeoutTest, FloatingDurationsAndSeconds) {
  Timeout t = std::chrono::duration<double>(0.25);
  EXPECT_EQ(t.relative(), 250ms);
  EXPECT_EQ(Timeout::seconds(0.5).relative(), 500ms);
  EXPECT_TRUE(Timeout::seconds(std::numeric_limits<double>::quiet_NaN()).is_forever());
}

TEST_F(TimeoutTest, NegativeDeadlineIsNow) {
  const auto now = std::chrono::steady_clock::now();
  EXPECT_EQ(*Timeout(-5s).deadline(now), now);
  EXPECT_EQ(Timeout(-5s).remaining(now), 0ns);
}

TEST_F(TimeoutTest, HugeDurationsSaturateToForever) {
  Timeout t = std::chrono::hours::max();
  EXPECT_TRUE(t.is_relative());
  EXPECT_FALSE(t.deadline().has_value());
  Timeout d = std::chrono::duration<double>(1e300);
  EXPECT_FALSE(d.deadline().has_value());
}

TEST_F(TimeoutTest, AbsoluteDeadline) {
  const auto now = std::chrono::steady_clock::now();
  Timeout t = now + 2s;
  EXPECT_TRUE(t.is_absolute());
  EXPECT_FALSE(t.is_negative());
  EXPECT_EQ(*t.deadline(), now + 2s);
  EXPECT_EQ(t.remaining(now), 2s);
  Timeout past = now - 2s;
  EXPECT_EQ(past.remaining(now), 0ns);  // Deadlines in the past are an immediate deadline.
}

}  // namespace
}  // namespace troupe
