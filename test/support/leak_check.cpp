#include "leak_check.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>
#include <vector>

#include <dirent.h>

#if TROUPE_TSAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace troupe::testing {
namespace {
int count_entries(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - (std::string(dir) == "/proc/self/fd" ? 1 : 0);  // the DIR's own fd
}
// Sanitizer runtimes (TSan) start a helper thread at the first pthread_create. Start and join
// one thread before any test, so that helper is part of every test's baseline. Clang's runtime
// also starts a child, llvm-symbolizer, the first time it symbolizes a stack (TSan does to match
// a report against test/tsan.supp) and keeps it, with a pipe each way, for the process's life:
// started here, its two fds are in every baseline too (has_children() leaves it out).
struct WarmUp : ::testing::Environment {
  void SetUp() override {
    std::thread([] {}).join();
#if TROUPE_TSAN
    char where[256];
    __sanitizer_symbolize_pc(__builtin_return_address(0), "%p %F %L", where, sizeof where);
#endif
  }
};
[[maybe_unused]] auto* const warm_up = ::testing::AddGlobalTestEnvironment(new WarmUp);

// The parent of `pid` (/proc/<pid>/stat), or 0 when it is gone.
pid_t parent_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return 0;
  const auto close = line.rfind(')');  // the name may hold spaces and parentheses
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  char state = 0;
  pid_t ppid = 0;
  rest >> state >> ppid;
  return ppid;
}

// Whether `pid` is this process or one of its descendants.
bool in_our_tree(pid_t pid) {
  const pid_t self = getpid();
  for (int hops = 0; pid > 1 && hops < 64; ++hops) {
    if (pid == self) return true;
    pid = parent_of(pid);
  }
  return false;
}

// Whether `pid` holds /dev/shm/<name> open or mapped.
bool holds_segment(pid_t pid, const std::string& name) {
  const std::string path = "/dev/shm/" + name;
  const std::string proc = "/proc/" + std::to_string(pid);
  {
    std::ifstream maps(proc + "/maps");
    std::string line;
    while (std::getline(maps, line))
      if (line.size() >= path.size() &&
          line.compare(line.size() - path.size(), path.size(), path) == 0)
        return true;
  }
  if (DIR* d = opendir((proc + "/fd").c_str())) {
    bool found = false;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[512];
      const auto n = readlink((proc + "/fd/" + e->d_name).c_str(), target, sizeof target - 1);
      if (n > 0 && std::string_view(target, n) == path) found = true;
    }
    closedir(d);
    if (found) return true;
  }
  return false;
}

// Whether any process of the machine (/proc) satisfies `pred`.
bool any_process(const std::function<bool(pid_t)>& pred) {
  DIR* d = opendir("/proc");
  if (!d) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    if (pred(static_cast<pid_t>(pid))) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

}  // namespace

bool held_by_a_stranger(const std::string& name) {
  return any_process([&](pid_t pid) { return holds_segment(pid, name) && !in_our_tree(pid); });
}

int count_threads() {
  return count_entries("/proc/self/task");
}
int count_fds() {
  return count_entries("/proc/self/fd");
}

std::set<std::string> shm_segments() {
  std::set<std::string> names;
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') names.insert(e->d_name);
    closedir(d);
  }
  return names;
}

bool has_children() {
#if TROUPE_TSAN
  // This process's children, running or not yet reaped, but not the sanitizer's symbolizer.
  const pid_t self = getpid();
  return any_process([self](pid_t pid) {
    if (parent_of(pid) != self) return false;
    std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    std::getline(comm, name);
    return name.rfind("llvm-symbolizer", 0) != 0;
  });
#else
  siginfo_t info{};
  return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0;  // else ECHILD: none
#endif
}

bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= end) return done();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

void LeakCheck::SetUp() {
  threads_ = count_threads();
  fds_ = count_fds();
  children_before_ = has_children();
  shm_ = shm_segments();
}

void LeakCheck::TearDown() {
  // A thread that has been joined is gone; allow a moment for ones detached on purpose.
  eventually([&] { return count_threads() <= threads_; }, std::chrono::seconds(5));
  EXPECT_LE(count_threads(), threads_) << "the test left threads running";
  // A wait on a thread that outlives the test may hold a /proc file open for a moment.
  eventually([&] { return count_fds() <= fds_; }, std::chrono::seconds(1));
  EXPECT_LE(count_fds(), fds_) << "the test left file descriptors open";
  if (!children_before_) {
    eventually([] { return !has_children(); }, std::chrono::seconds(5));
    EXPECT_FALSE(has_children()) << "the test left child processes (running or unreaped)";
  }
  // /dev/shm is the machine's: a test binary running beside this one (meson runs several) may
  // own a new segment for a while (seconds under a sanitizer). A leak stays and no one else
  // holds it; someone else's goes away, or is held open or mapped by a process outside this
  // one's tree.
  const auto new_segments = [&] {
    std::vector<std::string> left;
    for (const auto& name : shm_segments())
      if (!shm_.count(name)) left.push_back(name);
    return left;
  };
  eventually([&] { return new_segments().empty(); }, std::chrono::seconds(3));
  std::string left;
  for (const auto& name : new_segments())
    if (!held_by_a_stranger(name)) left += " /dev/shm/" + name;
  EXPECT_TRUE(left.empty()) << "the test left shared memory segments:" << left;
}

}  // namespace troupe::testing
