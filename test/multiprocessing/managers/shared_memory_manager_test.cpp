// SharedMemoryManager: segments made through it are tracked by its server and unlinked when the
// server stops — by shutdown(), by the destructor, and after the server process was killed.
#include "troupe/multiprocessing/managers/shared_memory_manager.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "troupe/entry.hpp"
#include "troupe/multiprocessing/context.hpp"
#include "troupe/multiprocessing/managers/detail/link.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"

namespace smm_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
namespace shm = troupe::multiprocessing::shared_memory;

// A worker of the docs' example: sums its half of the list into slot `out`.
void sum_into(std::string name, std::int64_t from, std::int64_t to, std::int64_t out) {
  auto list = shm::ShareableList::attach(name);
  std::int64_t total = 0;
  for (std::int64_t i = from; i < to; ++i) total += std::get<std::int64_t>(list[i]);
  list.set(out, total);
}
TROUPE_ENTRY(sum_into);

namespace {

using namespace std::chrono_literals;

bool exists(const std::string& name) {
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

class SharedMemoryManagerTest : public troupe::testing::StartMethodTest {};

TEST_P(SharedMemoryManagerTest, SegmentsAreTrackedAndUnlinkedAtShutdown) {
  mm::SharedMemoryManager smm(options());
  // CPython's test_shared_memory_SharedMemoryManager_basics: before start(), a ValueError (no
  // address to reach), and no segment left behind.
  EXPECT_THROW((void)smm.SharedMemory(9), troupe::ValueError);
  EXPECT_THROW((void)smm.ShareableList({std::int64_t{1}}), troupe::ValueError);
  smm.start();
  auto a = smm.SharedMemory(128);
  auto b = smm.ShareableList({std::int64_t{1}, 2.5, std::string("three"), std::monostate{}});
  EXPECT_EQ(a.size(), 128u);
  std::memcpy(a.buf().data(), "hello", 5);
  shm::SharedMemory again(a.name());
  EXPECT_EQ(std::memcmp(again.buf().data(), "hello", 5), 0);
  again.close();
  EXPECT_EQ(smm.list_segments(), (std::vector<std::string>{a.name(), b.shm().name()}));
  const std::string na = a.name(), nb = b.shm().name();
  a.close();
  b.shm().close();
  ASSERT_TRUE(exists(na));
  ASSERT_TRUE(exists(nb));
  smm.shutdown();
  EXPECT_EQ(smm.process()->exitcode(), 0);
  EXPECT_FALSE(exists(na));
  EXPECT_FALSE(exists(nb));
}

TEST_P(SharedMemoryManagerTest, TheDocsExampleSumsInTwoProcesses) {
  std::string name;
  {
    mm::SharedMemoryManager smm(options());
    smm.start();
    std::vector<shm::ShareableItem> items;
    for (std::int64_t i = 0; i < 2000; ++i) items.emplace_back(i);
    items.emplace_back(std::int64_t{0});
    items.emplace_back(std::int64_t{0});
    auto list = smm.ShareableList(items);
    name = list.shm().name();
    const auto po = child_options();
    mp::Process p1(po, &sum_into, name, std::int64_t{0}, std::int64_t{1000}, std::int64_t{2000});
    mp::Process p2(po, &sum_into, name, std::int64_t{1000}, std::int64_t{2000}, std::int64_t{2001});
    p1.start();
    p2.start();
    p1.join();
    p2.join();
    ASSERT_EQ(p1.exitcode(), 0);
    ASSERT_EQ(p2.exitcode(), 0);
    EXPECT_EQ(std::get<std::int64_t>(list[2000]) + std::get<std::int64_t>(list[2001]),
              1999 * 2000 / 2);
  }  // ~SharedMemoryManager: the server unlinks the list
  EXPECT_FALSE(exists(name));
}

TEST_P(SharedMemoryManagerTest, ReleaseSegmentUnlinksItNow) {
  mm::SharedMemoryManager smm(options());
  smm.start();
  auto a = smm.SharedMemory(64);
  auto b = smm.SharedMemory(64);
  smm.release_segment(a.name());
  EXPECT_FALSE(exists(a.name()));
  EXPECT_EQ(smm.list_segments(), std::vector<std::string>{b.name()});
  // Not tracked any more: CPython's ValueError (its list.remove), naming the segment.
  try {
    smm.release_segment(a.name());
    ADD_FAILURE() << "released twice";
  } catch (const troupe::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find(a.name()), std::string::npos) << e.what();
  }
  // Tracked but unlinked by someone else: FileNotFoundError, and it is forgotten.
  const std::string bname = b.name();
  b.close();
  ASSERT_EQ(::shm_unlink(("/" + bname).c_str()), 0);
  EXPECT_THROW(smm.release_segment(bname), troupe::FileNotFoundError);
  EXPECT_TRUE(smm.list_segments().empty());
}

TEST_P(SharedMemoryManagerTest, AKilledServersSegmentsAreUnlinkedByShutdown) {
  mm::SharedMemoryManager smm(options());
  smm.start();
  auto a = smm.SharedMemory(4096);
  const std::string name = a.name();
  a.close();
  ASSERT_EQ(::kill(*smm.process()->pid(), SIGKILL), 0);
  smm.join(30s);
  ASSERT_FALSE(smm.process()->is_alive());
  EXPECT_TRUE(exists(name));
  smm.shutdown();  // returns, and the segment the server can no longer unlink goes
  EXPECT_FALSE(exists(name));
}

TEST_P(SharedMemoryManagerTest, BadSegmentNamesAreRefusedByName) {
  mm::SharedMemoryManager smm(options());
  smm.start();
  try {
    smm.release_segment("a/b");
    FAIL() << "no error";
  } catch (const troupe::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("'a/b'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(smm.release_segment(std::string(300, 'x')), troupe::ValueError);
  EXPECT_TRUE(smm.list_segments().empty());
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SharedMemoryManagerTest,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

class SharedMemoryServer : public troupe::testing::LeakCheck {};

TEST_F(SharedMemoryServer, OtherServersDoNotTrackSegments) {
  mm::SyncManager m;
  m.start();
  try {
    m._link()->call([](troupe::proto::manager::Request::Builder r) { r.setListSegments(); });
    FAIL() << "no error";
  } catch (const troupe::AttributeError& e) {
    EXPECT_NE(std::string(e.what()).find("not a SharedMemoryManager's server"), std::string::npos)
        << e.what();
  }
}

// CPython's SharedMemoryManager.get_server() words its state errors its own way.
TEST_F(SharedMemoryServer, GetServerAfterStartOrShutdownNamesTheSharedMemoryServer) {
  mm::SharedMemoryManager smm;
  // The ProcessError's text ("no error" if get_server() succeeds).
  auto refusal = [&]() -> std::string {
    try {
      (void)smm.get_server();
    } catch (const troupe::multiprocessing::ProcessError& e) {
      return e.what();
    }
    return "no error";
  };
  smm.start();
  EXPECT_EQ(refusal(), "Already started SharedMemoryServer");
  smm.shutdown();
  EXPECT_EQ(refusal(), "SharedMemoryManager has shut down");
}

TEST_F(SharedMemoryServer, AServerInThisProcessUnlinksWhenItStops) {
  mm::SharedMemoryManager smm;
  auto server = smm.get_server();
  server->start();
  mm::SharedMemoryManager client({.address = server->address()});
  client.connect();
  auto a = client.SharedMemory(64);
  const std::string name = a.name();
  a.close();
  EXPECT_TRUE(exists(name));
  server->stop();
  EXPECT_FALSE(exists(name));
}

}  // namespace
}  // namespace smm_test
