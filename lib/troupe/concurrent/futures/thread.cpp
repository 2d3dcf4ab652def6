#include "troupe/concurrent/futures/thread.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "troupe/detail/mutex.hpp"
#include "troupe/internal/demangle.hpp"
#include "troupe/threading/thread.hpp"

namespace troupe::concurrent::futures {

namespace detail {

namespace {

int default_max_workers() {
  // Python 3.13: min(32, (os.process_cpu_count() or 1) + 4); troupe counts the CPUs this
  // process may run on, as process_cpu_count does.
  cpu_set_t set;
  int n = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  return std::min(32, n + 4);
}

std::atomic<int> executor_counter{0};

}  // namespace

// The queue: many submitters push without a lock (Vyukov's intrusive MPSC list); workers pop
// one at a time under `pop_mutex`, so a submit never waits for a worker, nor a worker for a
// submit.
class TaskQueue {
public:
  TaskQueue() : head_(&stub_), tail_(&stub_) {}
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;

  void push(std::shared_ptr<TaskBase> task) noexcept {
    TaskBase* node = task.get();
    node->hold_ = std::move(task);
    link(node);
  }

  /// One consumer at a time. Null when empty, or when a push is half done (then retry).
  std::shared_ptr<TaskBase> pop() noexcept {
    TaskBase* head = head_;
    TaskBase* next = head->next_.load(std::memory_order_acquire);
    if (head == &stub_) {
      if (next == nullptr) return nullptr;
      head_ = next;
      head = next;
      next = next->next_.load(std::memory_order_acquire);
    }
    if (next == nullptr) {
      if (tail_.load(std::memory_order_acquire) != head) return nullptr;  // a push under way
      link(&stub_);
      next = head->next_.load(std::memory_order_acquire);
      if (next == nullptr) return nullptr;
    }
    head_ = next;
    return std::move(head->hold_);
  }

private:
  struct Stub final : TaskBase {
    void run(BeforePublish&) noexcept override {}
    CoreBase& core() noexcept override { std::abort(); }
  };

  void link(TaskBase* node) noexcept {
    node->next_.store(nullptr, std::memory_order_relaxed);
    TaskBase* prev = tail_.exchange(node, std::memory_order_acq_rel);
    prev->next_.store(node, std::memory_order_release);
  }

  Stub stub_;
  TaskBase* head_;  // consumer side
  std::atomic<TaskBase*> tail_;
};

struct ThreadPool : WaitGuard, std::enable_shared_from_this<ThreadPool> {
  ThreadPool(int max_workers, std::string prefix, std::function<void()> initializer)
      : max_workers(max_workers), prefix(std::move(prefix)), initializer(std::move(initializer)) {}
  ~ThreadPool() {
    std::scoped_lock lk(pop_mutex);
    while (queue.pop()) {
    }
  }

  static constexpr std::uint64_t kShut = std::uint64_t{1} << 63;
  static constexpr std::uint64_t kCount = kShut - 1;

  const int max_workers;
  const std::string prefix;
  const std::function<void()> initializer;

  TaskQueue queue;
  troupe::detail::FutexMutex pop_mutex;  // one worker pops at a time
  // kShut, and the calls submitted and not yet taken (counted before their push completes).
  std::atomic<std::uint64_t> state{0};
  std::atomic<std::uint32_t> work_seq{0};  // bumped to wake workers waiting for calls
  std::atomic<int> waiting{0};             // workers looking for a call (spinning or asleep)
  std::atomic<int> sleepers{0};            // workers asleep on work_seq
  std::atomic<int> idle_tokens{0};         // Python's _idle_semaphore
  std::atomic<int> started{0};             // workers started; changed under `admin`
  std::atomic<bool> is_broken{false};
  troupe::detail::AdaptiveSpin spin;

  std::mutex admin;                                         // guards what follows
  std::vector<std::unique_ptr<threading::Thread>> workers;  // started, not yet joined
  std::vector<const CoreBase*> blocked;  // futures of this pool that its workers wait on
  std::string broken;                    // why the pool is broken

  void submit(std::shared_ptr<TaskBase> task);
  void shutdown(bool wait, bool cancel_futures);
  void worker_main();
  void initializer_failed();
  void fail_queued();
  void wake_one() noexcept;
  std::shared_ptr<TaskBase> try_take() noexcept;
  std::shared_ptr<TaskBase> next_task(bool& idle_counted);
  void start_worker(int index);  // counted in `started` under `admin` first

  void enter_wait(const CoreBase& core) override;
  void leave_wait(const CoreBase& core) noexcept override;
};

namespace {

// Every pool alive, for the exit handler.
struct Registry {
  std::mutex mu;
  std::vector<std::weak_ptr<ThreadPool>> pools;
};
std::atomic<bool> exiting_flag{false};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: used by the exit handler
  return *r;
}

// Python's _python_exit: no more submits, every pool finishes what is queued, workers joined.
void shutdown_at_exit() {
  std::vector<std::shared_ptr<ThreadPool>> alive;
  {
    auto& r = registry();
    std::scoped_lock lk(r.mu);
    exiting_flag.store(true);
    for (auto& w : r.pools)
      if (auto p = w.lock()) alive.push_back(std::move(p));
    r.pools.clear();
  }
  for (auto& p : alive) p->shutdown(true, false);
}

void register_pool(const std::shared_ptr<ThreadPool>& pool) {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(shutdown_at_exit); });
  auto& r = registry();
  std::scoped_lock lk(r.mu);
  std::erase_if(r.pools, [](const std::weak_ptr<ThreadPool>& w) { return w.expired(); });
  r.pools.push_back(pool);
}

bool exiting() noexcept {
  return exiting_flag.load(std::memory_order_relaxed);
}

}  // namespace

void ThreadPool::submit(std::shared_ptr<TaskBase> task) {
  if (is_broken.load(std::memory_order_acquire)) {
    std::scoped_lock lk(admin);
    throw BrokenThreadPool(broken);
  }
  if (state.fetch_add(1, std::memory_order_seq_cst) & kShut) {
    state.fetch_sub(1, std::memory_order_seq_cst);
    throw RuntimeError("cannot schedule new futures after shutdown");
  }
  queue.push(std::move(task));
  wake_one();
  // A pool that broke while this was pushed may have no worker left to fail it: fail it here.
  if (is_broken.load(std::memory_order_seq_cst)) fail_queued();
  // Python's _adjust_thread_count: an idle worker takes it, else a new one if there is room.
  int tokens = idle_tokens.load(std::memory_order_relaxed);
  while (tokens > 0 && !idle_tokens.compare_exchange_weak(tokens, tokens - 1)) {
  }
  if (tokens > 0 || started.load(std::memory_order_relaxed) >= max_workers) return;
  int index = -1;
  {
    std::scoped_lock lk(admin);
    const int n = started.load(std::memory_order_relaxed);
    if (n < max_workers && !(state.load() & kShut)) {
      index = n;
      started.store(n + 1, std::memory_order_relaxed);
    }
  }
  if (index >= 0) start_worker(index);
}

void ThreadPool::wake_one() noexcept {
  // Pairs with next_task: a worker counts itself waiting, then looks at `state`; a submit
  // counts its call in `state`, then looks at `waiting`. One of them sees the other.
  if (waiting.load(std::memory_order_seq_cst) == 0) return;
  work_seq.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers.load(std::memory_order_seq_cst) != 0) troupe::detail::futex_wake(work_seq, 1);
}

void ThreadPool::start_worker(int index) {
  auto self = shared_from_this();
  auto t = std::make_unique<threading::Thread>(
      threading::Thread::Options{.name = prefix + "_" + std::to_string(index), .daemon = true},
      [self] { self->worker_main(); });
  threading::Thread* raw = t.get();
  {
    std::scoped_lock lk(admin);
    workers.push_back(std::move(t));
  }
  try {
    raw->start();
  } catch (...) {
    std::scoped_lock lk(admin);
    started.fetch_sub(1);
    std::erase_if(workers, [raw](const auto& w) { return w.get() == raw; });
    throw;
  }
}

std::shared_ptr<TaskBase> ThreadPool::try_take() noexcept {
  pop_mutex.lock();
  std::shared_ptr<TaskBase> t = queue.pop();
  pop_mutex.unlock();
  if (t) state.fetch_sub(1, std::memory_order_acq_rel);
  return t;
}

// The next call for a worker to run; null when the pool is shut down and nothing is left.
std::shared_ptr<TaskBase> ThreadPool::next_task(bool& idle_counted) {
  for (;;) {
    const std::uint64_t s = state.load(std::memory_order_acquire);
    if (s & kCount) {
      if (auto t = try_take()) return t;
      // Another worker took it, or its push is half done: look again.
      troupe::detail::cpu_relax();
      continue;
    }
    if (s & kShut) return nullptr;
    if (!idle_counted) {
      idle_tokens.fetch_add(1, std::memory_order_relaxed);
      idle_counted = true;
    }
    const std::uint32_t seq = work_seq.load(std::memory_order_acquire);
    waiting.fetch_add(1, std::memory_order_seq_cst);
    if (state.load(std::memory_order_seq_cst) == 0 &&
        !spin.spin([&] { return state.load(std::memory_order_acquire) != 0; })) {
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      (void)troupe::detail::futex_wait(work_seq, seq, std::nullopt);
      sleepers.fetch_sub(1, std::memory_order_relaxed);
    }
    waiting.fetch_sub(1, std::memory_order_seq_cst);
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
      current_pool() = nullptr;
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
      if (pool.state.load(std::memory_order_relaxed) & kCount) return;
      pool.idle_tokens.fetch_add(1, std::memory_order_relaxed);
      counted = true;
    }
  } idle(*this);
  while (auto task = next_task(idle.counted)) {
    idle.counted = false;
    task->run(idle);
  }
  current_pool() = nullptr;
}

void ThreadPool::fail_queued() {
  std::vector<std::shared_ptr<TaskBase>> drained;
  while (auto t = try_take()) drained.push_back(std::move(t));
  for (auto& t : drained) {
    try {
      t->core().set_exception(std::make_exception_ptr(
          BrokenThreadPool("A thread initializer failed, the thread pool is not usable anymore")));
    } catch (...) {  // cancelled meanwhile
    }
  }
}

void ThreadPool::initializer_failed() {
  {
    std::scoped_lock lk(admin);
    broken = "A thread initializer failed, the thread pool is not usable anymore";
  }
  is_broken.store(true, std::memory_order_seq_cst);
  fail_queued();
}

void ThreadPool::shutdown(bool wait, bool cancel_futures) {
  state.fetch_or(kShut, std::memory_order_seq_cst);
  if (cancel_futures) {
    std::vector<std::shared_ptr<TaskBase>> drained;
    while (auto t = try_take()) drained.push_back(std::move(t));
    for (auto& t : drained) (void)t->core().cancel();
  }
  work_seq.fetch_add(1, std::memory_order_seq_cst);
  troupe::detail::futex_wake(work_seq, INT_MAX);
  if (!wait) return;
  for (;;) {
    std::unique_ptr<threading::Thread> t;
    {
      std::scoped_lock lk(admin);
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
    std::scoped_lock lk(admin);
    blocked.push_back(&core);
    const int n = started.load(std::memory_order_relaxed);
    const std::uint64_t s = state.load(std::memory_order_seq_cst);
    // Every worker started is in such a wait (a worker in one is running a call, not looking
    // for one).
    const bool all_blocked = static_cast<int>(blocked.size()) >= n;
    if (all_blocked && (s & kCount) && n < max_workers && !(s & kShut)) {
      // Calls are queued and every worker waits: start one more to run them (Python may not,
      // when a stale idle token made it skip the start).
      spawn = n;
      started.store(n + 1, std::memory_order_relaxed);
    } else if (all_blocked && n == max_workers &&
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
  std::scoped_lock lk(admin);
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
  return static_cast<std::size_t>(pool_->started.load());
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
