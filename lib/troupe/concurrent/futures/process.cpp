#include "troupe/concurrent/futures/process.hpp"

#include <signal.h>

#include <atomic>

#include "troupe/internal/cpus.hpp"

namespace troupe::concurrent::futures {

namespace detail {

std::string entry_name(const void* function, const char* what) {
  const auto* e = find_entry(function);
  if (e == nullptr)
    throw ValueError(std::string(what) +
                     ": the function is not registered with TROUPE_ENTRY (C++ cannot send code "
                     "to another process: register it, as Python needs a module-level "
                     "function it can pickle by name)");
  return e->name;
}

namespace {
std::atomic<int> counter{0};
}  // namespace

}  // namespace detail

multiprocessing::detail::WorkerPoolOptions ProcessPoolExecutor::pool_options(Options& o) {
  if (o.max_workers && *o.max_workers <= 0) throw ValueError("max_workers must be greater than 0");
  const std::string method =
      o.mp_context ? o.mp_context->get_start_method() : std::string("forkserver");
  if (o.max_tasks_per_child) {
    if (*o.max_tasks_per_child < 1) throw ValueError("max_tasks_per_child must be >= 1");
    if (method == "fork")
      throw ValueError(
          "max_tasks_per_child is incompatible with the 'fork' start method; supply a different "
          "mp_context.");
  }
  if (o.on_worker_death == OnWorkerDeath::replace_worker && method == "fork")
    throw ValueError(
        "on_worker_death=replace_worker is incompatible with the 'fork' start method (a "
        "process with threads cannot fork safely); supply a different mp_context.");
  multiprocessing::detail::WorkerPoolOptions w;
  w.max_workers = o.max_workers.value_or(troupe::internal::process_cpu_count());
  w.start_method = method;
  w.initializer = std::move(o.initializer.entry);
  w.initargs = std::move(o.initializer.arguments);
  w.initargs_encoder = std::move(o.initializer.encode);
  w.max_tasks_per_child = o.max_tasks_per_child;
  w.on_worker_death = o.on_worker_death;
  if (o.stop_grace.count() < 0) throw ValueError("stop_grace must not be negative");
  w.stop_grace = o.stop_grace;
  w.name = "ProcessPoolExecutor-" + std::to_string(detail::counter++);
  return w;
}

ProcessPoolExecutor::ProcessPoolExecutor(Options options) : pool_(pool_options(options)) {}

ProcessPoolExecutor::~ProcessPoolExecutor() = default;

void ProcessPoolExecutor::shutdown(bool wait, bool cancel_futures) {
  pool_.shutdown(wait, cancel_futures);
}

void ProcessPoolExecutor::terminate_workers() {
  pool_.signal_workers(SIGTERM);
}

void ProcessPoolExecutor::kill_workers() {
  pool_.signal_workers(SIGKILL);
}

}  // namespace troupe::concurrent::futures
