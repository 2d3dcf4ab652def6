// test/support/leak_check.hpp — the fixture every troupe test derives from: it fails a test
// that leaves threads running, file descriptors open, child processes or shared memory
// segments (/dev/shm) behind.
#pragma once

#include <chrono>
#include <functional>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "troupe/detail/sanitizers.hpp"

namespace troupe::testing {

/// ThreadSanitizer cannot start threads in a child forked from a multi-threaded process (the
/// child exits 66: "starting new threads after multi-threaded fork is not supported"). Tests whose
/// forked child starts a thread (a manager proxy's link) skip the fork case when this is true.
#if defined(TROUPE_TSAN)
inline constexpr bool kTsanForkLimit = true;
#else
inline constexpr bool kTsanForkLimit = false;
#endif

/// Whether this is a ThreadSanitizer build: tests of sizes, not of races, that move a gigabyte
/// (a minute per case under TSan) run only in the other builds.
inline constexpr bool kThreadSanitizer = kTsanForkLimit;

/// Threads of this process now (/proc/self/task).
int count_threads();
/// Open file descriptors of this process now (/proc/self/fd).
int count_fds();

/// The names in /dev/shm now (POSIX shared memory segments, troupe's and Python's).
std::set<std::string> shm_segments();

/// Whether a process outside this one's tree (another test binary meson runs beside this one)
/// holds /dev/shm/<name> open or mapped: then a new segment is that process's, not a leak.
bool held_by_a_stranger(const std::string& name);

/// Whether this process has children, running or not yet reaped.
bool has_children();

/// Polls `done` every millisecond until it is true or `limit` passes; returns its last value.
bool eventually(const std::function<bool()>& done,
                std::chrono::milliseconds limit = std::chrono::seconds(10));

class LeakCheck : public ::testing::Test {
protected:
  void SetUp() override;
  void TearDown() override;

private:
  int threads_ = 0;
  int fds_ = 0;
  bool children_before_ = false;
  std::set<std::string> shm_;
};

}  // namespace troupe::testing
