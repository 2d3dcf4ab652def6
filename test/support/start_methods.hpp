// test/support/start_methods.hpp — a fixture whose tests run once per start method ("fork",
// "spawn", "forkserver"): TEST_P bodies start targets with start(f, args…). Targets must be
// functions registered with TROUPE_ENTRY, so that spawn can run them; the binary links
// spawn_main.cpp.
#pragma once

#include <string>
#include <utility>

#include <gtest/gtest.h>

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
#define TROUPE_PER_START_METHOD(suite)                                                            \
  INSTANTIATE_TEST_SUITE_P(StartMethods, suite, ::testing::Values("fork", "spawn", "forkserver"), \
                           ::troupe::testing::start_method_name)
