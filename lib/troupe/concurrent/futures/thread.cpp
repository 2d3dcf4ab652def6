#include "troupe/concurrent/futures/thread.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "troupe/detail/mutex.hpp"
#include "troupe/internal/cpus.hpp"
#include "troupe/internal/demangle.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/threading/thread.hpp"

namespace troupe::concurrent::futures {

namespace detail {

namespace {

int default_max_workers() {
  // Python 3.13: min(32, (os.process_cpu_count() or 1) + 4).
  return std::min(32, troupe::internal::process_cpu_count() + 4);
}

std::atomic<int> executor_counter{0};

}  // namespace

struct ThreadPool final : WaitGuard, std::enable_shared_from_this<ThreadPool> {
  ThreadPool(int max_workers, std::string prefix, std::function<void()> initializer)
      : max_workers(max_workers), prefix(std::move(prefix)), initializer(std::move(initializer)) {}

  const int max_workers;
  const std::string prefix;
  const std::function<void()> initializer;

  troupe::detail::FutexMutex mutex;
  troupe::detail::FutexCondVar work_ready;  // a task was queued, or shutdown
  std::deque<std::shared_ptr<TaskBase>> queue;
  std::atomic<std::size_t> queued{0};  // queue.size(), readable without the mutex
  std::vector<std::unique_ptr<threading::Thread>> workers;  // started, not yet joined
  int idle_tokens = 0;  // Python's _idle_semaphore: workers that found the queue empty
  int waiting = 0;      // workers asleep on work_ready
  int started = 0;      // workers started (they end only at shutdown or when broken)
  std::vector<const CoreBase*> blocked;  // futures of this pool that its workers wait on
  bool shut = false;
  bool shut_at_exit = false;  // the first shutdown was the exit step's (Python's global _shutdown)
  std::string broken;         // non-empty: why the pool is broken

  void submit(std::shared_ptr<TaskBase> task);
  void shutdown(bool wait, bool cancel_futures, bool at_exit = false);
  void worker_main();
  void initializer_failed();
  void start_worker(int index);  // counted in `started` under the mutex, then called

  void enter_wait(const CoreBase& core) override;
  void leave_wait(const CoreBase& core) noexcept override;
};

namespace {

// Every pool alive, for the exit step.
internal::runtime::Alive<ThreadPool>& pools() {
  return internal::runtime::global<internal::runtime::Alive<ThreadPool>>();
}

// Python's _python_exit: no more submits (runtime::exiting() is true from here on), every pool
// finishes what is queued, workers joined.
void shutdown_at_exit() {
  for (auto& p : pools().take_all()) p->shutdown(true, false, true);
}

void register_pool(const std::shared_ptr<ThreadPool>& pool) {
  internal::runtime::at_exit(internal::runtime::ExitStep::thread_pools, shutdown_at_exit);
  pools().add(pool);
}

bool exiting() noexcept {
  return internal::runtime::exiting();
}

}  // namespace

void ThreadPool::submit(std::shared_ptr<TaskBase> task) {
  int spawn = -1;
  {
    std::scoped_lock lk(mutex);
    if (!broken.empty()) throw BrokenThreadPool(broken);
    // A submit that passed the handle's exiting() check as the exit step began finds the pool
    // shut by that step: Python's message for it is the interpreter's.
    if (shut)
      throw RuntimeError(shut_at_exit ? "cannot schedule new futures after interpreter shutdown"
                                      : "cannot schedule new futures after shutdown");
    queue.push_back(std::move(task));
    queued.store(queue.size(), std::memory_order_relaxed);
    // Python's _adjust_thread_count: an idle worker takes it, else a new one if there is room.
    if (idle_tokens > 0) {
      --idle_tokens;
    } else if (started < max_workers) {
      spawn = started++;
    }
    work_ready.notify_one();
  }
  if (spawn >= 0) start_worker(spawn);
}

void ThreadPool::start_worker(int index) {
  auto self = shared_from_this();
  auto t = std::make_unique<threading::Thread>(
      threading::Thread::Options{.name = prefix + "_" + std::to_string(index), .daemon = true},
      [self] { self->worker_main(); });
  threading::Thread* raw = t.get();
  {
    std::scoped_lock lk(mutex);
    workers.push_back(std::move(t));
  }
  try {
    raw->start();
  } catch (...) {
    std::scoped_lock lk(mutex);
    --started;
    std::erase_if(workers, [raw](const auto& w) { return w.get() == raw; });
    throw;
  }
}

void ThreadPool::worker_main() {
  current_pool() = this;
  if (initializer) {
    try {
      initializer();
    } catch (...) {
      std::fprintf(stderr, "Exception in initializer:\n%s\n",
                   troupe::internal::describe(std::current_exception()).c_str());
      initializer_failed();
      return;
    }
  }
  // Python's worker releases the idle semaphore when it finds the queue empty, after its call's
  // future is set: a caller that submits again at once may find no idle worker and start
  // another. This one counts itself idle before it sets the future.
  struct Idle final : BeforePublish {
    ThreadPool& pool;
    bool counted = false;
    explicit Idle(ThreadPool& p) : pool(p) {}
    void operator()() noexcept override {
      if (pool.queued.load(std::memory_order_relaxed) != 0) return;
      std::scoped_lock lk(pool.mutex);
      if (pool.queue.empty()) {
        ++pool.idle_tokens;
        counted = true;
      }
    }
  } idle(*this);
  for (;;) {
    std::shared_ptr<TaskBase> task;
    {
      std::scoped_lock lk(mutex);
      if (queue.empty() && shut) break;
      if (queue.empty() && !idle.counted) ++idle_tokens;
      idle.counted = false;
      while (queue.empty() && !shut && broken.empty()) {
        ++waiting;
        (void)work_ready.wait(mutex);
        --waiting;
      }
      if (queue.empty()) break;  // shut down (or broken) with nothing left to run
      task = std::move(queue.front());
      queue.pop_front();
      queued.store(queue.size(), std::memory_order_relaxed);
    }
    task->run(idle);
  }
  current_pool() = nullptr;
}

void ThreadPool::initializer_failed() {
  std::deque<std::shared_ptr<TaskBase>> drained;
  {
    std::scoped_lock lk(mutex);
    broken = "A thread initializer failed, the thread pool is not usable anymore";
    drained.swap(queue);
    queued.store(0, std::memory_order_relaxed);
    work_ready.notify_all();
  }
  for (auto& t : drained) {
    try {
      t->core().set_exception(std::make_exception_ptr(
          BrokenThreadPool("A thread initializer failed, the thread pool is not usable anymore")));
    } catch (...) {  // cancelled meanwhile
    }
  }
}

void ThreadPool::shutdown(bool wait, bool cancel_futures, bool at_exit) {
  std::deque<std::shared_ptr<TaskBase>> drained;
  {
    std::scoped_lock lk(mutex);
    if (!shut) shut_at_exit = at_exit;
    shut = true;
    if (cancel_futures) {
      drained.swap(queue);
      queued.store(0, std::memory_order_relaxed);
    }
    work_ready.notify_all();
  }
  for (auto& t : drained) (void)t->core().cancel();
  if (!wait) return;
  for (;;) {
    std::unique_ptr<threading::Thread> t;
    {
      std::scoped_lock lk(mutex);
      // A worker shutting down its own pool cannot join itself: it is left to end by itself.
      auto it = std::find_if(workers.begin(), workers.end(),
                             [](const auto& w) { return w->ident() != threading::get_ident(); });
      if (it == workers.end()) break;
      t = std::move(*it);
      workers.erase(it);
    }
    t->join();
  }
}

void ThreadPool::enter_wait(const CoreBase& core) {
  int spawn = -1;
  {
    std::scoped_lock lk(mutex);
    blocked.push_back(&core);
    const bool all_blocked = static_cast<int>(blocked.size()) >= started && waiting == 0;
    if (all_blocked && !queue.empty() && started < max_workers && !shut) {
      // Every worker waits and calls are queued: start one more to run them (Python may not,
      // when a stale idle token made it skip the start).
      spawn = started++;
    } else if (all_blocked && started == max_workers &&
               std::none_of(blocked.begin(), blocked.end(),
                            [](const CoreBase* c) { return c->done(); })) {
      // Every worker waits with no timeout on a future of this pool that is not done: no worker
      // will ever be free to finish one.
      blocked.pop_back();
      throw RuntimeError("deadlock: a task of " + prefix +
                         " waits with no timeout on a future of its own pool, and all " +
                         std::to_string(max_workers) +
                         " workers are waiting so (raise max_workers, or do not wait on the "
                         "pool from inside it)");
    }
  }
  if (spawn >= 0) {
    try {
      start_worker(spawn);
    } catch (...) {
      leave_wait(core);
      throw;
    }
  }
}

void ThreadPool::leave_wait(const CoreBase& core) noexcept {
  std::scoped_lock lk(mutex);
  auto it = std::find(blocked.begin(), blocked.end(), &core);
  if (it != blocked.end()) blocked.erase(it);
}

ThreadPoolHandle::ThreadPoolHandle(Options options) {
  std::string prefix = std::move(options.thread_name_prefix);
  if (prefix.empty()) prefix = "ThreadPoolExecutor-" + std::to_string(executor_counter++);
  pool_ = std::make_shared<ThreadPool>(options.max_workers, std::move(prefix),
                                       std::move(options.initializer));
  register_pool(pool_);
}

ThreadPoolHandle::~ThreadPoolHandle() {
  pool_->shutdown(true, false);
}

void ThreadPoolHandle::submit(std::shared_ptr<TaskBase> task) {
  if (exiting()) throw RuntimeError("cannot schedule new futures after interpreter shutdown");
  pool_->submit(std::move(task));
}

void ThreadPoolHandle::shutdown(bool wait, bool cancel_futures) {
  pool_->shutdown(wait, cancel_futures);
}

WaitGuard* ThreadPoolHandle::guard() const noexcept {
  return pool_.get();
}
int ThreadPoolHandle::max_workers() const noexcept {
  return pool_->max_workers;
}
std::size_t ThreadPoolHandle::threads() const noexcept {
  std::scoped_lock lk(pool_->mutex);
  return static_cast<std::size_t>(pool_->started);
}

}  // namespace detail

ThreadPoolExecutor::ThreadPoolExecutor(Options options)
    : pool_([&] {
        if (options.max_workers && *options.max_workers <= 0)
          throw ValueError("max_workers must be greater than 0");
        return detail::ThreadPoolHandle::Options{
            .max_workers = options.max_workers.value_or(detail::default_max_workers()),
            .thread_name_prefix = std::move(options.thread_name_prefix),
            .initializer = std::move(options.initializer)};
      }()) {}

ThreadPoolExecutor::~ThreadPoolExecutor() = default;

void ThreadPoolExecutor::shutdown(bool wait, bool cancel_futures) {
  pool_.shutdown(wait, cancel_futures);
}

}  // namespace troupe::concurrent::futures
