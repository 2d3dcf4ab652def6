// test/support/start_methods.hpp — a fixture whose tests run once per start method ("fork",
// "spawn", "forkserver"): TEST_P bodies start targets with start(f, args…). Targets must be
// functions registered with TROUPE_ENTRY, so that spawn can run them; the binary links
// spawn_main.cpp.
#pragma once

#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"

namespace troupe::testing {

class StartMethodTest : public LeakCheck, public ::testing::WithParamInterface<std::string> {
protected:
  /// Starts `f(a…)` in a new process of this test's start method.
  template <class F, class... A>
  multiprocessing::Process start(F f, A&&... a) {
    multiprocessing::Process p =
        multiprocessing::get_context(GetParam()).Process(f, std::forward<A>(a)...);
    p.start();
    return p;
  }
};

/// Names the instantiations after their start method.
inline std::string start_method_name(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

}  // namespace troupe::testing

/// Runs the TEST_P tests of `suite` (an alias of StartMethodTest) under fork, spawn and forkserver.
/// Under ThreadSanitizer, spawn is left out: like forkserver it starts a fresh image (exec), so
/// the parent's side, where the races would be, is the same; an exec'd TSan process costs about
/// a second to start, and the spawn cases made the TSan stage of CI the longest. The plain and
/// ASan builds run all three.
#if defined(TROUPE_TSAN)
#define TROUPE_PER_START_METHOD(suite)                                                   \
  INSTANTIATE_TEST_SUITE_P(StartMethods, suite, ::testing::Values("fork", "forkserver"), \
                           ::troupe::testing::start_method_name)
#else
#define TROUPE_PER_START_METHOD(suite)                                                            \
  INSTANTIATE_TEST_SUITE_P(StartMethods, suite, ::testing::Values("fork", "spawn", "forkserver"), \
                           ::troupe::testing::start_method_name)
#endif
