// test/multiprocessing/managers/start_method_test.hpp — the fixture of the manager tests that run
// once per start method (the test's parameter: "fork", "spawn" or "forkserver").
#pragma once

#include <string>

#include <gtest/gtest.h>

#include "troupe/multiprocessing/managers/manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"

namespace troupe::testing {

class StartMethodTest : public LeakCheck, public ::testing::WithParamInterface<std::string> {
protected:
  /// A manager whose server starts with the test's method.
  multiprocessing::managers::ManagerOptions options() const {
    multiprocessing::managers::ManagerOptions o;
    o.start_method = GetParam();
    return o;
  }
  /// A child process of the test, started with its method. This process runs the link's
  /// thread; the child uses none of it.
  multiprocessing::ProcessOptions child_options() const {
    multiprocessing::ProcessOptions po;
    po.start_method = GetParam();
    po.fork_with_threads = true;
    return po;
  }
  /// ThreadSanitizer cannot start threads in a child forked from a threaded process.
  bool skip_fork() const { return kTsanForkLimit && GetParam() == "fork"; }
};

}  // namespace troupe::testing
