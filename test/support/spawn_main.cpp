// The main of a test binary whose tests start processes with spawn: freeze_support first, as
// every program that uses spawn must (a spawned child runs its target there and exits).
#include <gtest/gtest.h>

#include "troupe/multiprocessing/forkserver.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/resource_tracker.hpp"

int main(int argc, char** argv) {
  troupe::multiprocessing::freeze_support(argc, argv);
  // Started before the tests: the fds it keeps (the alive pipe, the server's pidfd) are then
  // not counted as a test's leak.
  troupe::multiprocessing::forkserver::ensure_running();
  // Likewise the resource tracker's connection, which every spawn and forkserver child shares.
  troupe::multiprocessing::resource_tracker::ensure_running();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
