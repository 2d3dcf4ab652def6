// multiprocessing.shared_memory: SharedMemory and ShareableList, what CPython's
// _TestSharedMemory checks, the same segments read and written by every local Python (3.8+)
// in both directions, malformed lists refused, and the resource tracker unlinking what a
// process killed with SIGKILL left behind.
#include "troupe/multiprocessing/shared_memory.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/internal/process_internal.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/resource_tracker.hpp"

#include "child_process.hpp"
#include "leak_check.hpp"
#include "start_methods.hpp"

namespace troupe::multiprocessing::shared_memory {
namespace {

using namespace std::chrono_literals;
using troupe::testing::eventually;
using ShmTest = troupe::testing::LeakCheck;

bool exists(const std::string& name) {
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

std::string str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

TEST_F(ShmTest, CreateAttachCloseUnlinkAsPython) {
  SharedMemory a(std::nullopt, true, 100);
  EXPECT_EQ(a.name().rfind("psm_", 0), 0u) << a.name();
  EXPECT_EQ(a.name().size(), 12u);  // CPython: 14 characters with the leading '/'
  EXPECT_EQ(a.size(), 100u);
  EXPECT_TRUE(exists(a.name()));
  EXPECT_EQ(a.repr(), "SharedMemory('" + a.name() + "', size=100)");
  for (std::byte b : a.buf()) ASSERT_EQ(b, std::byte{0});
  std::memcpy(a.buf().data(), "hello", 5);
  {
    SharedMemory b(a.name());  // attach: the size is the segment's
    EXPECT_EQ(b.size(), 100u);
    EXPECT_EQ(str(b.buf().first(5)), "hello");
    std::memcpy(b.buf().data() + 95, "world", 5);
  }
  EXPECT_EQ(str(a.buf().last(5)), "world");
  EXPECT_THROW(SharedMemory(a.name(), true, 10), FileExistsError);
  a.close();
  a.close();  // idempotent
  EXPECT_THROW((void)a.buf(), ValueError);
  a.unlink();
  EXPECT_FALSE(exists(a.name()));
  EXPECT_THROW(a.unlink(), FileNotFoundError);
  EXPECT_THROW(SharedMemory(a.name()), FileNotFoundError);

  EXPECT_THROW(SharedMemory(std::nullopt, true, 0), ValueError);
  EXPECT_THROW(SharedMemory(std::nullopt, false), ValueError);
  EXPECT_THROW(SharedMemory("no/slash", true, 10), OSError);

  SharedMemory named("troupe_test_" + std::to_string(::getpid()), true, 5000, false);
  EXPECT_EQ(named.name(), "troupe_test_" + std::to_string(::getpid()));
  named.unlink();
}

// The fixture's rule for a new segment it finds after a test: a leak when no one holds it, or
// only this process's tree does; another test binary's (meson runs several side by side) when a
// process outside the tree holds it open or mapped.
TEST_F(ShmTest, LeakCheckTellsAStrangersSegmentFromALeak) {
  SharedMemory mine(std::nullopt, true, 64);
  EXPECT_FALSE(troupe::testing::held_by_a_stranger(mine.name()));  // mapped here: ours

  // A stranger: a grandchild whose parent has exited (re-parented outside this tree) that maps
  // the segment and waits for a byte on a pipe.
  int ready[2], release[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(release), 0);
  const pid_t middle = ::fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    if (::fork() == 0) {
      ::close(ready[0]);
      ::close(release[1]);
      SharedMemory held(mine.name());
      char c = 1;
      (void)!::write(ready[1], &c, 1);
      (void)!::read(release[0], &c, 1);
      ::_exit(0);
    }
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(release[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(middle, &status, 0), middle);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  EXPECT_TRUE(troupe::testing::held_by_a_stranger(mine.name()));
  ::close(release[1]);  // the stranger exits (EOF) and unmaps
  EXPECT_TRUE(eventually([&] { return !troupe::testing::held_by_a_stranger(mine.name()); }));
  ::close(ready[0]);

  mine.close();
  EXPECT_FALSE(troupe::testing::held_by_a_stranger(mine.name()));  // held by no one: a leak
  mine.unlink();
}

void write_in_child(SharedMemory& shm, ShareableList& list) {
  std::memcpy(shm.buf().data(), "child", 5);
  list.set(0, std::string("from the child"));
  list.set(1, std::int64_t{-1});
}
TROUPE_ENTRY(write_in_child);

TEST_F(ShmTest, ChildrenAttachByName) {
  for (const char* method : {"fork", "spawn"}) {
    SCOPED_TRACE(method);
    SharedMemory shm(std::nullopt, true, 64);
    ShareableList list({std::string(16, ' '), std::int64_t{5}});
    auto p = get_context(method).Process(&write_in_child, SharedMemory(shm.name()),
                                         ShareableList::attach(list.shm().name()));
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
    EXPECT_EQ(str(shm.buf().first(5)), "child");
    EXPECT_EQ(list[0], ShareableItem(std::string("from the child")));
    EXPECT_EQ(list[1], ShareableItem(std::int64_t{-1}));
    shm.unlink();
    list.shm().unlink();
  }
}

TEST_F(ShmTest, ShareableListAsPython) {
  ShareableList sl({std::int64_t{1}, 2.5, true, std::monostate{}, std::string("héllo"),
                    Bytes{std::byte{0}, std::byte{'b'}}, std::string()});
  EXPECT_EQ(sl.size(), 7u);
  EXPECT_EQ(sl.format(), "qdxxxxxxx?xxxxxx?x8s8s8s");
  EXPECT_EQ(sl.repr(), "ShareableList([1, 2.5, True, None, 'héllo', b'\\x00b', ''], name='" +
                           sl.shm().name() + "')");
  EXPECT_EQ(sl[-1], ShareableItem(std::string()));
  EXPECT_EQ(sl[-7], ShareableItem(std::int64_t{1}));
  EXPECT_THROW(sl.get(7), IndexError);
  EXPECT_THROW(sl.get(-8), IndexError);
  EXPECT_THROW(sl.set(7, std::monostate{}), IndexError);
  // A str goes where an int was, in the item's 8 bytes; longer does not fit.
  sl.set(0, std::string("12345678"));
  EXPECT_EQ(sl[0], ShareableItem(std::string("12345678")));
  EXPECT_THROW(sl.set(0, std::string("123456789")), ValueError);
  sl.set(4, 3.25);
  EXPECT_EQ(sl.format(), "8sdxxxxxxx?xxxxxx?xd8s8s");
  sl.set(4, std::string("ok"));
  EXPECT_EQ(sl.format(), "8sdxxxxxxx?xxxxxx?x8s8s8s");
  EXPECT_EQ(sl.count(std::monostate{}), 1u);
  EXPECT_EQ(sl.index(true), 2u);
  EXPECT_THROW(sl.index(std::string("absent")), ValueError);
  // Python's ==: True == 1 == 1.0, and 2.5 is no int; a str is not its bytes.
  ShareableList nums(
      {std::int64_t{1}, true, 1.0, 2.5, std::int64_t{0}, std::string("b"), Bytes{std::byte{'b'}}});
  EXPECT_EQ(nums.count(std::int64_t{1}), 3u);
  EXPECT_EQ(nums.count(true), 3u);
  EXPECT_EQ(nums.count(1.0), 3u);
  EXPECT_EQ(nums.index(false), 4u);
  EXPECT_EQ(nums.index(2.5), 3u);
  EXPECT_EQ(nums.count(std::int64_t{2}), 0u);
  EXPECT_EQ(nums.count(std::string("b")), 1u);
  EXPECT_EQ(nums.count(std::monostate{}), 0u);
  nums.shm().unlink();
  ShareableList again = ShareableList::attach(sl.shm().name());
  EXPECT_EQ(again.to_vector(), sl.to_vector());
  sl.shm().unlink();

  ShareableList empty(std::vector<ShareableItem>{});
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_EQ(empty.shm().size(), 16u);
  empty.shm().unlink();
}

TEST_F(ShmTest, MalformedListsAreRefused) {
  SharedMemory shm(std::nullopt, true, 64);
  auto put = [&](std::size_t at, std::uint64_t v) { std::memcpy(shm.buf().data() + at, &v, 8); };
  put(0, std::uint64_t{1} << 60);  // a length that cannot fit
  EXPECT_THROW(ShareableList::attach(shm.name()), ValueError);
  put(0, 2);  // two items, offsets 0, 16, 8: decreasing
  put(8, 0);
  put(16, 16);
  put(24, 8);
  EXPECT_THROW(ShareableList::attach(shm.name()), ValueError);
  put(24, 4096);  // a data area larger than the segment
  EXPECT_THROW(ShareableList::attach(shm.name()), ValueError);
  put(0, 1);  // one item: offsets 0, 8; data at 24, its format at 32, its code at 40
  put(8, 0);
  put(16, 8);
  std::memcpy(shm.buf().data() + 32, "99s\0\0\0\0\0", 8);  // longer than its 8 bytes
  ShareableList bad = ShareableList::attach(shm.name());
  EXPECT_EQ(bad.size(), 1u);
  EXPECT_THROW(bad.get(0), ValueError);
  std::memcpy(shm.buf().data() + 32, "Q\0\0\0\0\0\0\0", 8);  // not a format it writes
  EXPECT_THROW(bad.get(0), ValueError);
  std::memcpy(shm.buf().data() + 32, "q\0\0\0\0\0\0\0", 8);
  shm.buf()[40] = std::byte{9};  // an unknown back-transform code
  EXPECT_THROW(bad.get(0), ValueError);
  shm.buf()[40] = std::byte{0};
  EXPECT_EQ(bad[0], ShareableItem(std::int64_t{4096}));  // the 8 bytes at 24
  shm.unlink();
}

// ---- with Python -----------------------------------------------------------------------------

TEST_F(ShmTest, PythonAttachesToTroupeSegmentsAndListsAndTheReverse) {
  const auto pythons = troupe::testing::find_pythons();
  ASSERT_FALSE(pythons.empty());
  for (const auto& py : pythons) {
    SCOPED_TRACE(py.exe);
    {  // troupe's SharedMemory, read and written by Python
      SharedMemory shm(std::nullopt, true, 4096);
      std::memcpy(shm.buf().data(), "\x01\x02troupe", 8);
      troupe::testing::ChildProcess c({py.exe, PY_SHM, "check-shm", shm.name()}, true);
      EXPECT_EQ(c.read_line(20s), "4096 010274726f757065");
      EXPECT_EQ(c.wait(20s), 0);
      EXPECT_EQ(str(shm.buf().subspan(8, 6)), "python");
      shm.unlink();
    }
    {  // Python's SharedMemory, attached by troupe
      troupe::testing::ChildProcess c({py.exe, PY_SHM, "create-shm"}, true);
      const auto name = c.read_line(20s);
      ASSERT_TRUE(name);
      {
        SharedMemory shm(*name);
        EXPECT_EQ(shm.size(), 4096u);
        EXPECT_EQ(str(shm.buf().first(4)), "ping");
        std::memcpy(shm.buf().data() + 4, "pong", 4);
      }
      EXPECT_EQ(c.read_line(20s), "ok");
      EXPECT_EQ(c.wait(20s), 0);
      EXPECT_FALSE(exists(*name));
    }
    // Python 3.8's ShareableList had another layout (item sizes, not offsets); 3.9 changed it
    // to the one troupe writes.
    if (py.minor < 9) continue;
    {  // troupe's ShareableList, read and written by Python
      ShareableList sl({std::int64_t{42}, 2.5, true, std::monostate{}, std::string("héllo wörld"),
                        Bytes{std::byte{0}, std::byte{1}, std::byte{'b'}}, std::int64_t{-7},
                        std::string("short")});
      troupe::testing::ChildProcess c({py.exe, PY_SHM, "check-list", sl.shm().name()}, true);
      EXPECT_EQ(c.read_line(20s),
                "[42, 2.5, True, None, 'héllo wörld', b'\\x00\\x01b', -7, 'short']");
      EXPECT_EQ(c.read_line(20s), "qdxxxxxxx?xxxxxx?x16s8sq8s");
      EXPECT_EQ(c.read_line(20s),
                "['py', 1e+100, None, False, 'ünï', b'\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff', "
                "4611686018427387904, 'tiny']");
      EXPECT_EQ(c.wait(20s), 0);
      EXPECT_EQ(sl[0], ShareableItem(std::string("py")));
      EXPECT_EQ(sl[1], ShareableItem(1e100));
      EXPECT_EQ(sl[2], ShareableItem(std::monostate{}));
      EXPECT_EQ(sl[3], ShareableItem(false));
      EXPECT_EQ(sl[4], ShareableItem(std::string("ünï")));
      EXPECT_EQ(sl[5], ShareableItem(Bytes(8, std::byte{0xff})));
      EXPECT_EQ(sl[6], ShareableItem(std::int64_t{1} << 62));
      EXPECT_EQ(sl[7], ShareableItem(std::string("tiny")));
      EXPECT_EQ(sl.format(), "8sdxxxxxx?xxxxxxxx?16s8sq8s");
      sl.shm().unlink();
    }
    {  // Python's ShareableList, read and written by troupe
      troupe::testing::ChildProcess c({py.exe, PY_SHM, "create-list"}, true);
      const auto name = c.read_line(20s);
      ASSERT_TRUE(name);
      {
        ShareableList sl = ShareableList::attach(*name);
        EXPECT_EQ(sl.repr(),
                  "ShareableList([1, 2.0, 'three', b'four', None, True, "
                  "-9223372036854775808], name='" +
                      *name + "')");
        EXPECT_EQ(sl.format(), "qd8s8sxxxxxx?xxxxxxxx?q");
        sl.set(5, std::string("troupe"));
        sl.set(2, 0.5);
        sl.set(0, std::string("done"));
        sl.set(6, std::int64_t{0});  // last: the Python side waits for it
      }
      EXPECT_EQ(c.read_line(20s), "['done', 2.0, 0.5, b'four', None, 'troupe', 0]");
      EXPECT_EQ(c.read_line(20s), "8sdd8sxxxxxx?x8sq");
      EXPECT_EQ(c.wait(20s), 0);
      EXPECT_FALSE(exists(*name));
    }
  }
}

// ---- the resource tracker --------------------------------------------------------------------

// A process tree of its own (this program run anew, so that its tracker is not the test
// process's): the creator makes a tracked segment, starts two children by `method` that attach
// to it, says what happened on stdout, and waits to be killed. Each child, once the creator has
// gone, closes the segment and attaches to it again by name.
void say(const std::string& line) {
  const std::string l = line + "\n";
  (void)!::write(1, l.data(), l.size());  // one write: lines of several processes do not mix
}

bool gone(int pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

void hold_after_creator(std::string name, int creator, int creator_tracker) {
  std::optional<SharedMemory> shm;
  shm.emplace(name);
  say("attached " + std::to_string(resource_tracker::tracker_pid()));
  // The test kills the creator and reaps it; then, if this child does not hold the creator's
  // tracker, that tracker ends, unlinking the segment: wait for that (a second at most).
  eventually([&] { return gone(creator); }, 60s);
  eventually([&] { return gone(creator_tracker); }, 1s);
  shm.reset();
  try {
    SharedMemory again(name);
    say(again.buf()[0] == std::byte{42} ? "reattached" : "reattached to something else");
  } catch (const std::exception& e) {
    say(std::string("could not reattach: ") + e.what());
  }
}
TROUPE_ENTRY(hold_after_creator);

int tracker_tree_creator(const std::string& method) {
  SharedMemory shm(std::nullopt, true, 4096);
  shm.buf()[0] = std::byte{42};
  const int tracker = resource_tracker::tracker_pid();
  say("segment " + shm.name() + " " + std::to_string(tracker));
  std::vector<Process> children;
  for (int i = 0; i < 2; ++i) {
    children.push_back(get_context(method).Process(&hold_after_creator, shm.name(),
                                                   static_cast<int>(::getpid()), tracker));
    children.back().start();
  }
  for (;;) ::pause();
}

using TrackerTreeTest = troupe::testing::StartMethodTest;

// Children started by spawn and the forkserver get their parent's tracker with their bootstrap
// (SpawnBootstrap::tracker_fd, filled by process.cpp through resource_tracker::detail).
template <class Bootstrap>
constexpr bool kCarriesTheTracker = requires(Bootstrap b) {
  b.tracker_fd;
};

TEST_P(TrackerTreeTest, ChildrenShareTheTrackerAndKeepTheSegmentAfterTheCreatorIsKilled) {
  // CPython: one tracker per process tree; children of every start method register with their
  // parent's, which unlinks what is left only once every process holding it has ended.
  if (GetParam() != "fork" && !kCarriesTheTracker<detail::SpawnBootstrap>)
    GTEST_SKIP() << "process.cpp does not pass the tracker to spawn and forkserver children yet";
  troupe::testing::ChildProcess creator({"/proc/self/exe", "--tracker-tree", GetParam()}, true);
  const auto first = creator.read_line(60s);
  ASSERT_TRUE(first && first->rfind("segment ", 0) == 0) << first.value_or("(nothing)");
  const std::string name = first->substr(8, first->find(' ', 8) - 8);
  const std::string tracker = first->substr(first->find(' ', 8) + 1);
  for (int i = 0; i < 2; ++i)  // each child uses the creator's tracker
    EXPECT_EQ(creator.read_line(60s).value_or("(nothing)"), "attached " + tracker);
  ::kill(creator.pid(), SIGKILL);
  EXPECT_EQ(creator.wait(60s), 128 + SIGKILL);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(creator.read_line(60s).value_or("(nothing)"), "reattached");
  // The last child has ended: the tracker unlinks what the killed creator left.
  EXPECT_TRUE(eventually([&] { return !exists(name); }, 20s)) << name << " was not unlinked";
}

TROUPE_PER_START_METHOD(TrackerTreeTest);

TEST_F(ShmTest, UnlinkUnregistersAndTrackFalseIsNotTracked) {
  EXPECT_GT(resource_tracker::tracker_pid(), 0);  // started by main
  EXPECT_THROW(resource_tracker::register_resource("no-slash"), ValueError);
  EXPECT_THROW(resource_tracker::register_resource("/a", "semaphore"), ValueError);
  SharedMemory tracked(std::nullopt, true, 10);
  tracked.unlink();  // unregisters: the tracker will not try again at the end
  SharedMemory untracked(std::nullopt, true, 10, false);
  untracked.unlink();
}

}  // namespace
}  // namespace troupe::multiprocessing::shared_memory

int main(int argc, char** argv) {
  troupe::multiprocessing::freeze_support(argc, argv);
  if (argc == 3 && std::string_view(argv[1]) == "--tracker-tree")
    return troupe::multiprocessing::shared_memory::tracker_tree_creator(argv[2]);
  // The tracker holds one fd for the life of the process: start it before the first test's
  // fd count.
  troupe::multiprocessing::resource_tracker::ensure_running();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
