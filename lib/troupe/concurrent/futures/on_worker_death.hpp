// troupe/concurrent/futures/on_worker_death.hpp — what a process pool does when a worker dies
// holding calls: ProcessPoolOptions::on_worker_death (troupe; Python always breaks the pool).
#pragma once

#include <cstdint>

namespace troupe::concurrent::futures {

/// What happens when a worker dies while it holds calls.
enum class OnWorkerDeath : std::uint8_t {
  /// Python's ProcessPoolExecutor: the pool is broken; the call the worker ran, the calls it had
  /// not started, and every pending and later call fail with BrokenProcessPool.
  break_pool,
  /// troupe: only the call the dead worker was running fails (BrokenProcessPool naming the
  /// worker and its signal or exit code); the calls it had not started go to another worker, and
  /// a new worker takes its place (not under fork).
  replace_worker,
};

}  // namespace troupe::concurrent::futures
