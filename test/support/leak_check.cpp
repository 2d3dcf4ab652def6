#include "leak_check.hpp"

#include <sys/wait.h>

#include <thread>

#include <dirent.h>

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
// one thread before any test, so that helper is part of every test's baseline.
struct WarmUp : ::testing::Environment {
  void SetUp() override {
    std::thread([] {}).join();
  }
};
[[maybe_unused]] auto* const warm_up = ::testing::AddGlobalTestEnvironment(new WarmUp);

}  // namespace

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
  siginfo_t info{};
  return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0;  // else ECHILD: none
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
  EXPECT_LE(count_fds(), fds_) << "the test left file descriptors open";
  if (!children_before_) {
    eventually([] { return !has_children(); }, std::chrono::seconds(5));
    EXPECT_FALSE(has_children()) << "the test left child processes (running or unreaped)";
  }
  // /dev/shm is the machine's: a test binary running beside this one (meson runs several) may
  // own a new segment for a moment. A leak stays; someone else's goes away.
  const auto new_segments = [&] {
    std::string left;
    for (const auto& name : shm_segments())
      if (!shm_.count(name)) left += " /dev/shm/" + name;
    return left;
  };
  eventually([&] { return new_segments().empty(); }, std::chrono::seconds(3));
  const std::string left = new_segments();
  EXPECT_TRUE(left.empty()) << "the test left shared memory segments:" << left;
}

}  // namespace troupe::testing
