#include "troupe/multiprocessing/pool.hpp"

#include <signal.h>

#include <atomic>

#include "troupe/internal/cpus.hpp"

namespace troupe::multiprocessing {

namespace detail {

std::exception_ptr pool_error(const std::string& why) {
  return std::make_exception_ptr(ProcessError(why));
}

int default_processes() {
  return troupe::internal::process_cpu_count();
}

std::size_t chunk_size(std::optional<std::size_t> chunksize, std::size_t n, int workers) {
  if (chunksize) {
    if (*chunksize < 1) throw ValueError("Chunksize must be 1+, not " + std::to_string(*chunksize));
    return *chunksize;
  }
  // Python's: chunksize, extra = divmod(len(iterable), len(self._pool) * 4); if extra: += 1
  const std::size_t per = 4 * static_cast<std::size_t>(workers > 0 ? workers : 1);
  const std::size_t chunk = n / per + (n % per ? 1 : 0);
  return chunk > 0 ? chunk : 1;
}

namespace {
std::atomic<int> pool_counter{0};
}

}  // namespace detail

multiprocessing::detail::WorkerPoolOptions detail::pool_engine_options(PoolOptions& o) {
  if (o.processes && *o.processes < 1) throw ValueError("Number of processes must be at least 1");
  if (o.maxtasksperchild && *o.maxtasksperchild < 1)
    throw ValueError("maxtasksperchild must be a positive int or None");
  const std::string method = o.context ? o.context->get_start_method() : "forkserver";
  if (o.maxtasksperchild && method == "fork")
    throw ValueError(
        "maxtasksperchild is incompatible with the 'fork' start method here (a process with "
        "threads cannot fork safely to replace a worker); use another context");
  multiprocessing::detail::WorkerPoolOptions w;
  w.max_workers = o.processes.value_or(detail::default_processes());
  w.start_method = method;
  w.initializer = std::move(o.initializer.entry);
  w.initargs = std::move(o.initializer.arguments);
  w.initargs_encoder = std::move(o.initializer.encode);
  w.max_tasks_per_child = o.maxtasksperchild;
  // A dead worker fails its own tasks and is replaced (a forked pool cannot start one safely
  // once its threads run: there the pool breaks instead, still without a hang).
  w.on_worker_death = method == "fork" ? concurrent::futures::OnWorkerDeath::break_pool
                                       : concurrent::futures::OnWorkerDeath::replace_worker;
  w.name = "Pool-" + std::to_string(detail::pool_counter++);
  w.make_error = detail::pool_error;
  return w;
}

// Every worker starts now, as Python's Pool starts its processes (its initializer runs in each
// even if no task comes); ProcessPoolExecutor starts them as calls come.
Pool::Pool(PoolOptions options) : engine_(detail::pool_engine_options(options)) {
  engine_.start_workers();
}

Pool::~Pool() {
  if (state_ != Run::terminated) {
    try {
      terminate();
    } catch (...) {
    }
  }
}

void Pool::check_running() const {
  if (state_ != Run::running) throw ValueError("Pool not running");
}

void Pool::close() {
  if (state_ == Run::running) state_ = Run::closed;
  engine_.shutdown(false, false);
}

void Pool::terminate() {
  state_ = Run::terminated;
  engine_.signal_workers(SIGTERM);
}

void Pool::join() {
  if (state_ == Run::running) throw ValueError("Pool is still running");
  engine_.shutdown(true, false);
}

ThreadPool::ThreadPool(Options options)
    : exec_([&] {
        if (options.processes && *options.processes < 1)
          throw ValueError("Number of processes must be at least 1");
        return futures::ThreadPoolExecutor::Options{
            .max_workers = options.processes.value_or(detail::default_processes()),
            .thread_name_prefix = "ThreadPool-" + std::to_string(detail::pool_counter++),
            .initializer = std::move(options.initializer)};
      }()) {}

ThreadPool::~ThreadPool() {
  if (state_ != Run::terminated) terminate();
  exec_.shutdown(true);
}

void ThreadPool::check_running() const {
  if (state_ != Run::running) throw ValueError("Pool not running");
}

void ThreadPool::close() {
  if (state_ == Run::running) state_ = Run::closed;
  exec_.shutdown(false);
}

void ThreadPool::terminate() {
  state_ = Run::terminated;
  exec_.shutdown(false, true);
}

void ThreadPool::join() {
  if (state_ == Run::running) throw ValueError("Pool is still running");
  exec_.shutdown(true);
}

}  // namespace troupe::multiprocessing
