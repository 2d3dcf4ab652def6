#include "troupe/internal/runtime.hpp"

#include <pthread.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdlib>

namespace troupe::internal::runtime {

namespace {

using Step = void (*)();

constexpr std::size_t kExitSteps = static_cast<std::size_t>(ExitStep::forkserver) + 1;
constexpr std::size_t kForkSteps = static_cast<std::size_t>(ForkStep::thread_identity) + 1;

// Constant-initialised: usable from static initialisers of any translation unit.
constinit std::array<std::atomic<Step>, kExitSteps> exit_steps{};
constinit std::array<std::atomic<bool>, kExitSteps> exit_ran{};
constinit std::atomic<bool> exit_begun{false};
constinit std::array<std::atomic<Step>, kForkSteps> fork_steps{};
constinit std::atomic<bool> fork_installed{false};

// Registered once per step; the first call to run does every step, the later ones find them
// done. A step first needed while the handler runs is run by its own registration's call.
void run_exit_steps() {
  exit_begun.store(true);
  for (std::size_t i = 0; i < kExitSteps; ++i) {
    const Step fn = exit_steps[i].load();
    if (fn && !exit_ran[i].exchange(true)) fn();
  }
}

constinit std::atomic<pid_t> cached_pid{0};

void refresh_pid() noexcept {
  cached_pid.store(::getpid(), std::memory_order_relaxed);
}

// Threads of troupe's that a fork leaves behind (ForkAwareThread): none in a forked child.
std::atomic<int> fork_aware{0};

void run_fork_child_steps() {
  fork_aware.store(0, std::memory_order_relaxed);
  for (auto& step : fork_steps)
    if (const Step fn = step.load(std::memory_order_relaxed)) fn();
}

}  // namespace

void at_exit(ExitStep step, void (*fn)()) noexcept {
  auto& slot = exit_steps[static_cast<std::size_t>(step)];
  if (slot.load(std::memory_order_acquire)) return;
  Step expected = nullptr;
  if (slot.compare_exchange_strong(expected, fn)) std::atexit(run_exit_steps);
}

bool exiting() noexcept {
  return exit_begun.load(std::memory_order_relaxed);
}

int fork_aware_threads() noexcept {
  return fork_aware.load(std::memory_order_acquire);
}
ForkAwareThread::ForkAwareThread() noexcept {
  (void)process_id();  // installs the fork handler, which zeroes the count in a child
  fork_aware.fetch_add(1, std::memory_order_acq_rel);
}
ForkAwareThread::~ForkAwareThread() {
  if (counted_) fork_aware.fetch_sub(1, std::memory_order_acq_rel);
}

void at_fork_child(ForkStep step, void (*fn)()) noexcept {
  Step expected = nullptr;
  fork_steps[static_cast<std::size_t>(step)].compare_exchange_strong(expected, fn);
  if (!fork_installed.exchange(true)) ::pthread_atfork(nullptr, nullptr, run_fork_child_steps);
}

pid_t process_id() noexcept {
  static const bool installed = [] {
    refresh_pid();
    at_fork_child(ForkStep::process_id, &refresh_pid);
    return true;
  }();
  (void)installed;
  return cached_pid.load(std::memory_order_relaxed);
}

}  // namespace troupe::internal::runtime
