#include "troupe/threading/local.hpp"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "troupe/threading/thread.hpp"

#include "leak_check.hpp"

namespace troupe::threading {
namespace {

using LocalTest = troupe::testing::LeakCheck;

// _threading_local tests: each thread sees its own value.
TEST_F(LocalTest, EachThreadHasItsOwnValue) {
  local<int> l;
  *l = 1;
  std::vector<int> seen(4, -1);
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&, i] {
      seen[i] = *l;  // fresh, default-constructed in this thread
      *l = 100 + i;
      EXPECT_EQ(*l, 100 + i);
    });
  }
  for (auto& t : ts) t.join();
  for (int v : seen) EXPECT_EQ(v, 0);
  EXPECT_EQ(*l, 1);
}

// Python runs a local subclass's __init__ once per thread: the initializer here.
TEST_F(LocalTest, InitializerRunsOncePerThread) {
  std::atomic<int> inits{0};
  local<std::string> l([&] {
    inits.fetch_add(1);
    return std::string("fresh");
  });
  EXPECT_EQ(*l, "fresh");
  l->append("!");
  EXPECT_EQ(*l, "fresh!");
  Thread t([&] {
    EXPECT_EQ(*l, "fresh");
    EXPECT_EQ(l->size(), 5u);
  });
  t.start();
  t.join();
  EXPECT_EQ(inits.load(), 2);
}

// Two locals are independent (per instance, not per type).
TEST_F(LocalTest, PerInstance) {
  local<int> a, b;
  *a = 1;
  *b = 2;
  EXPECT_EQ(*a, 1);
  EXPECT_EQ(*b, 2);
}

// test_local_refs: a thread's value is destroyed when that thread exits.
TEST_F(LocalTest, ValueDiesWithItsThread) {
  struct Counted {
    std::atomic<int>* live;
    explicit Counted(std::atomic<int>* l) : live(l) { live->fetch_add(1); }
    Counted(Counted&& o) noexcept : live(o.live) { live->fetch_add(1); }
    ~Counted() { live->fetch_sub(1); }
  };
  std::atomic<int> live{0};
  {
    local<Counted> l([&] { return Counted(&live); });
    std::thread([&] { (void)l.get(); }).join();
    EXPECT_EQ(live.load(), 0) << "the thread's value outlived the thread";
    (void)l.get();
    EXPECT_EQ(live.load(), 1);
  }
  EXPECT_EQ(live.load(), 0) << "the local's values outlived the local";
}

}  // namespace
}  // namespace troupe::threading
