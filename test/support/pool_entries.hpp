// test/support/pool_entries.hpp — the registered functions that the pool tests (the process Pool's
// and the managed Pool's) both hand to their workers. One test binary includes it once.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"

namespace troupe::testing::pool_entries {

inline int sqr(int x) {
  return x * x;
}
TROUPE_ENTRY(sqr);

inline int mul(int x, int y) {
  return x * y;
}
TROUPE_ENTRY(mul);

inline int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
TROUPE_ENTRY(sleep_ms);

// Raises KeyError("key 7") for 7.
inline int raising(int x) {
  if (x == 7) throw KeyError("key 7");
  return x;
}
TROUPE_ENTRY(raising);

// The worker kills itself (SIGKILL) on 5.
inline int kill_self_at(int x) {
  if (x == 5) ::kill(::getpid(), SIGKILL);
  return x;
}
TROUPE_ENTRY(kill_self_at);

inline int pid_of(int) {
  return static_cast<int>(::getpid());
}
TROUPE_ENTRY(pid_of);

}  // namespace troupe::testing::pool_entries
