#include "troupe/multiprocessing/worker_pool.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "troupe/internal/demangle.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/threading/thread.hpp"

namespace troupe::multiprocessing::detail {

namespace {

using steady = std::chrono::steady_clock;

// Parent -> worker.
struct TaskMessage {
  std::uint64_t id = 0;
  bool stop = false;
  bool batch = false;
  std::string entry;
  std::vector<std::vector<std::byte>> calls;
};

// Worker -> parent.
struct ResultMessage {
  std::uint64_t id = 0;
  bool initializer_failed = false;
  std::vector<CallOutcome> outcomes;
};

// What crosses the connection: the calls sent to a worker in one go (one write, one read), and
// the results it sends back in one go.
struct TaskBatch {
  bool stop = false;
  std::vector<TaskMessage> tasks;
};
struct ResultBatch {
  std::vector<ResultMessage> results;
};

// A worker sends what it has done so far once this long has passed since its last send, so a
// quick result does not wait behind a slow call of the same batch.
constexpr auto kFlushAfter = std::chrono::microseconds(500);

// Bytes a worker's connection may hold unread (a Unix socket's default buffer is ~200 KiB, and
// every message costs its bookkeeping too): while a worker holds calls, no more than this is sent
// to it, so a send never waits on a worker that waits to send its results.
constexpr std::size_t kSendBudget = 64 * 1024;
constexpr std::size_t kMessageOverhead = 1024;

CallOutcome outcome_of(std::exception_ptr ep) {
  CallOutcome o;
  o.code = static_cast<std::uint16_t>(errc_of(ep));
  try {
    std::rethrow_exception(ep);
  } catch (const OSError& e) {
    o.os_errno = e.errno_value();
    o.message = e.what();
  } catch (const std::exception& e) {
    o.message = e.what();
    if (static_cast<errc>(o.code) == errc::exception)
      o.message = troupe::internal::demangle(typeid(e)) + ": " + o.message;
  } catch (...) {
    o.message = troupe::internal::current_exception_type() + " (not a std::exception)";
  }
  return o;
}

CallOutcome run_call(const EntryPoint* e, const std::string& name, std::span<const std::byte> args,
                     bool batch) {
  CallOutcome o;
  try {
    if (e == nullptr)
      throw ValueError("'" + name + "' is not a function registered with TROUPE_ENTRY in " +
                       "this program");
    if (e->call == nullptr || e->call_batch == nullptr)
      throw TypeError("the result of '" + name + "' has no troupe::Codec: it cannot be sent back");
    o.value = batch ? e->call_batch(args) : e->call(args);
    o.ok = true;
  } catch (const SystemExit&) {
    throw;  // sys_exit() in a call ends the worker process, as exit() would
  } catch (...) {
    o = outcome_of(std::current_exception());
  }
  return o;
}

// The worker's side of request_stop(): the id of the message it runs (0 between messages) and
// of the last one whose stop was asked — the parent queues SIGINT with that id as its value.
std::atomic<std::uint64_t> g_running{0};
std::atomic<std::uint64_t> g_stop{0};

void on_sigint(int sig, siginfo_t* info, void*) {
  if (info->si_code == SI_QUEUE) {
    g_stop.store(reinterpret_cast<std::uintptr_t>(info->si_value.sival_ptr));
    return;
  }
  // A terminal's Ctrl-C or a `kill -INT`: what SIGINT does to a process without a handler.
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

std::string describe_exit(int code) {
  if (code < 0) {
    const char* abbrev = sigabbrev_np(-code);
    return "was killed by signal " + std::to_string(-code) +
           (abbrev ? std::string(" (SIG") + abbrev + ")" : std::string());
  }
  return "exited with code " + std::to_string(code);
}

}  // namespace

// The pool's process may die without a word (SIGKILL, OOM): a call running then would go on
// for nobody, and the worker would only notice the closed connection after it. A thread waits on
// the owner's pidfd and ends this worker when it fires: SIGTERM, then SIGKILL after the grace.
// False if the owner has gone already.
static bool watch_owner(pid_t owner, std::chrono::milliseconds grace) {
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, owner, 0));
  if (fd < 0) return errno != ESRCH;  // no pidfds: no watch (the connection still ends it)
  // The thread takes no signals: they go to the worker's main thread, as without it.
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  struct Restore {
    sigset_t* old;
    ~Restore() { ::pthread_sigmask(SIG_SETMASK, old, nullptr); }
  } restore{&old};
  try {
    std::thread([fd, grace] {
      pollfd p{fd, POLLIN, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      ::kill(::getpid(), SIGTERM);
      std::this_thread::sleep_for(grace);
      ::kill(::getpid(), SIGKILL);
    }).detach();
  } catch (const std::system_error&) {
    ::close(fd);
  }
  return true;
}

bool stop_requested_in_worker() noexcept {
  const std::uint64_t running = g_running.load();
  return running != 0 && g_stop.load() == running;
}

// The worker process's main loop.
void troupe_pool_worker(Connection& conn, WorkerConfig& cfg) {
  for (int fd : cfg.close_fds) ::close(fd);
  if (cfg.owner > 0 && !watch_owner(cfg.owner, std::chrono::milliseconds(cfg.stop_grace_ms)))
    return;  // the pool's process has ended already
  struct sigaction sa {};
  sa.sa_sigaction = on_sigint;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  if (!cfg.initializer.empty()) {
    try {
      const EntryPoint* e = find_entry(cfg.initializer);
      if (e == nullptr)
        throw ValueError("initializer '" + cfg.initializer +
                         "' is not a function registered with TROUPE_ENTRY in this program");
      e->invoke(cfg.initargs);
    } catch (const SystemExit&) {
      throw;
    } catch (...) {
      std::fprintf(stderr, "Exception in initializer:\n%s\n",
                   troupe::internal::describe(std::current_exception()).c_str());
      ResultBatch b;
      b.results.emplace_back();
      b.results.back().initializer_failed = true;
      b.results.back().outcomes.push_back(outcome_of(std::current_exception()));
      try {
        conn.send(b);
      } catch (...) {  // the parent has gone
      }
      return;
    }
  }
  std::int64_t done = 0;
  std::string last_name;
  const EntryPoint* last = nullptr;
  for (;;) {
    TaskBatch batch;
    try {
      batch = conn.recv<TaskBatch>();
    } catch (const EOFError&) {
      return;  // the parent has gone
    }
    if (batch.stop) return;
    ResultBatch out;
    auto since = std::chrono::steady_clock::now();
    auto flush = [&] {
      if (out.results.empty()) return true;
      try {
        conn.send(out);
      } catch (const OSError&) {
        return false;  // the parent has gone
      }
      out.results.clear();
      since = std::chrono::steady_clock::now();
      return true;
    };
    for (auto& t : batch.tasks) {
      if (last == nullptr || t.entry != last_name) {
        last = find_entry(t.entry);
        last_name = t.entry;
      }
      ResultMessage& r = out.results.emplace_back();
      r.id = t.id;
      r.outcomes.reserve(t.calls.size());
      g_running.store(t.id);
      for (const auto& args : t.calls) r.outcomes.push_back(run_call(last, t.entry, args, t.batch));
      g_running.store(0);
      ++done;
      if (std::chrono::steady_clock::now() - since >= kFlushAfter && !flush()) return;
    }
    if (!flush()) return;
    if (cfg.max_tasks > 0 && done >= cfg.max_tasks) return;
  }
}
void troupe_pool_worker_entry(Connection& conn, WorkerConfig& cfg) {
  troupe_pool_worker(conn, cfg);
}
TROUPE_ENTRY(troupe_pool_worker_entry);

std::exception_ptr outcome_exception(const CallOutcome& o) {
  try {
    const auto code = static_cast<errc>(o.code);
    if (o.os_errno != 0 && (code == errc::os_error || errc_for_errno(o.os_errno) == code))
      throw_os_error(o.os_errno, o.message);
    throw_error(code == errc::ok ? errc::exception : code, o.message);
  } catch (...) {
    return std::current_exception();
  }
}

struct Worker {
  int index = 0;
  Process process;
  Connection conn;  // the parent's end
  int fd = -1;
  int sentinel = -1;
  std::mutex send_mutex;
  struct InFlight {
    std::unique_ptr<Job> job;
    std::size_t size;         // what it counts against kSendBudget
    steady::time_point sent;  // when it was sent
    // request_stop(): asked; then 1, 2, 3 once SIGINT, SIGTERM, SIGKILL went to the worker,
    // each when the call is the one the worker runs (the oldest) and the grace has passed.
    bool stop = false;
    int stage = 0;
    steady::time_point next_stage{};
  };
  // How many calls may wait at the worker behind the one it runs: many when calls are quick (one
  // message carries several, and the worker never waits for the next), one when they are slow
  // (so a free worker is not left idle while calls queue behind a slow one). From a moving
  // average of each call's time at the worker: from its sending, or from the previous result if
  // it waited behind that one. Unknown (no result yet) counts as slow.
  std::chrono::nanoseconds call_time{0};
  steady::time_point last_result{};
  int depth() const noexcept {
    return call_time.count() != 0 && call_time < std::chrono::microseconds(200) ? 16 : 1;
  }
  void note_result(steady::time_point sent, steady::time_point now) noexcept {
    const auto t = now - std::max(sent, last_result);
    last_result = now;
    call_time = call_time.count() == 0 ? t : (call_time * 7 + t) / 8;
  }
  std::map<std::uint64_t, InFlight> inflight;  // guarded by the pool's mutex
  std::size_t inflight_bytes = 0;
  std::int64_t sent = 0;  // messages sent (max_tasks_per_child counts them)
  bool conn_open = true;  // manager thread only
  bool exited = false;    // guarded by the pool's mutex
};

struct WorkerPoolState : std::enable_shared_from_this<WorkerPoolState> {
  explicit WorkerPoolState(WorkerPoolOptions o) : options(std::move(o)) {}

  const WorkerPoolOptions options;
  const pid_t owner = ::getpid();
  mutable std::mutex mu;
  std::deque<std::unique_ptr<Job>> pending;
  std::vector<std::shared_ptr<Worker>> workers;  // alive (or not yet reaped)
  int starting = 0;                              // workers being started, outside the lock
  int next_index = 0;
  std::uint64_t next_id = 1;
  std::uint64_t next_key = 1;
  std::atomic<int> stops{0};  // calls whose stop was asked and that still hold a worker
  bool shut = false;
  bool terminating = false;  // signal_workers(): deaths are expected, calls fail
  std::string broken;        // non-empty: why the pool is broken
  int wake_fd = -1;
  std::unique_ptr<threading::Thread> manager;
  bool manager_done = false;

  ~WorkerPoolState() {
    if (wake_fd >= 0) ::close(wake_fd);
  }

  void wake() noexcept {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd, &one, sizeof one);
  }

  std::vector<std::int32_t> pool_fds_locked() const {
    std::vector<std::int32_t> fds{wake_fd};
    for (const auto& w : workers) fds.push_back(w->fd);
    return fds;
  }

  std::exception_ptr error(const std::string& why) const {
    if (options.make_error) return options.make_error(why);
    return std::make_exception_ptr(concurrent::futures::BrokenProcessPool(why));
  }
  void start_worker();
  void ensure_workers(bool all);
  void pump();
  void run_manager();
  void read_results(Worker& w);
  void reap(const std::shared_ptr<Worker>& w);
  void break_pool_locked(const std::string& why, std::vector<std::unique_ptr<Job>>& failed);
  void finish_manager();
  bool request_stop(std::uint64_t key);
  int escalate_stops();
};

void WorkerPoolState::start_worker() {
  auto [parent_end, child_end] = Pipe(true);
  WorkerConfig cfg;
  cfg.pool_name = options.name;
  cfg.initializer = options.initializer;
  cfg.initargs = options.initargs;
  cfg.max_tasks = options.max_tasks_per_child.value_or(0);
  cfg.owner = static_cast<std::int32_t>(owner);
  cfg.stop_grace_ms = options.stop_grace.count();
  int index;
  {
    std::scoped_lock lk(mu);
    index = next_index++;
    if (options.start_method == "fork") cfg.close_fds = pool_fds_locked();
  }
  if (options.start_method == "fork") cfg.close_fds.push_back(parent_end.fileno());
  auto w = std::make_shared<Worker>();
  w->index = index;
  w->process = Process(ProcessOptions{.name = options.name + "-worker-" + std::to_string(index),
                                      .start_method = options.start_method},
                       &troupe_pool_worker_entry, std::move(child_end), std::move(cfg));
  w->process.start();
  drop_arguments(w->process);  // closes the parent's copy of the worker's end
  w->fd = parent_end.fileno();
  w->conn = std::move(parent_end);
  w->sentinel = w->process.sentinel();
  {
    std::scoped_lock lk(mu);
    workers.push_back(std::move(w));
  }
  wake();
}

// Starts workers up to max_workers while calls wait and no worker is free (Python's
// _adjust_process_count), or all of them (`all`: fork, before the manager thread exists).
void WorkerPoolState::ensure_workers(bool all) {
  for (;;) {
    {
      std::scoped_lock lk(mu);
      // After shutdown only for calls that came back from a stopped worker.
      if ((shut && pending.empty()) || !broken.empty()) return;
      const int live = static_cast<int>(workers.size()) + starting;
      if (live >= options.max_workers) return;
      if (!all) {
        bool idle = false;
        for (const auto& w : workers)
          if (w->inflight.empty() && !w->exited) idle = true;
        if (idle || pending.empty() || starting > 0) return;
      }
      ++starting;
    }
    try {
      start_worker();
    } catch (...) {
      std::scoped_lock lk(mu);
      --starting;
      throw;
    }
    std::scoped_lock lk(mu);
    --starting;
  }
}

// Sends waiting calls to workers with room, outside the lock.
void WorkerPoolState::pump() {
  struct Send {
    std::shared_ptr<Worker> worker;
    TaskBatch batch;
  };
  std::vector<Send> sends;
  std::vector<std::unique_ptr<Job>> cancelled;
  {
    std::scoped_lock lk(mu);
    if (!broken.empty()) return;
    for (;;) {
      if (pending.empty()) break;
      // The worker holding the fewest calls, with room for one more.
      std::shared_ptr<Worker> best;
      for (const auto& w : workers) {
        if (w->exited) continue;
        if (options.max_tasks_per_child && w->sent >= *options.max_tasks_per_child) continue;
        if (static_cast<int>(w->inflight.size()) > w->depth()) continue;
        if (!best || w->inflight.size() < best->inflight.size()) best = w;
      }
      if (!best) break;
      std::size_t size = kMessageOverhead;
      for (const auto& c : pending.front()->calls) size += c.size();
      if (!best->inflight.empty() && best->inflight_bytes + size > kSendBudget) break;
      std::unique_ptr<Job> job = std::move(pending.front());
      pending.pop_front();
      if (!job->start()) {
        cancelled.push_back(std::move(job));
        continue;
      }
      auto to =
          std::find_if(sends.begin(), sends.end(), [&](const Send& x) { return x.worker == best; });
      if (to == sends.end()) to = sends.insert(sends.end(), Send{best, {}});
      TaskMessage& m = to->batch.tasks.emplace_back();
      m.id = next_id++;
      m.entry = job->entry;
      m.batch = job->batch;
      m.calls = std::move(job->calls);  // back into the job once sent (see below)
      best->inflight_bytes += size;
      best->inflight.emplace(m.id, Worker::InFlight{std::move(job), size, steady::now()});
      ++best->sent;
    }
  }
  cancelled.clear();  // outside the lock: a future's callbacks may run
  for (auto& s : sends) {
    std::scoped_lock send_lock(s.worker->send_mutex);
    try {
      s.worker->conn.send(s.batch);
    } catch (...) {
      // The worker has died: the manager thread sees its pidfd and fails its calls.
    }
    // The calls go back into their jobs, so that a job its worker never ran (the worker died or
    // was stopped) can go to another. reap() takes send_mutex first: it never sees them out.
    std::scoped_lock lk(mu);
    for (auto& m : s.batch.tasks) {
      auto it = s.worker->inflight.find(m.id);
      if (it != s.worker->inflight.end() && it->second.job)
        it->second.job->calls = std::move(m.calls);
    }
  }
}

// Marks the job `key` to be stopped (the manager signals its worker), or fails it if it waits
// here after its worker died (it was running then).
bool WorkerPoolState::request_stop(std::uint64_t key) {
  std::unique_ptr<Job> dropped;
  {
    std::scoped_lock lk(mu);
    for (auto& w : workers)
      for (auto& [id, f] : w->inflight)
        if (f.job && f.job->key == key) {
          if (!f.stop) ++stops;
          f.stop = true;
          wake();
          return true;
        }
    auto it = std::find_if(pending.begin(), pending.end(), [&](auto& j) { return j->key == key; });
    if (it == pending.end()) return false;
    dropped = std::move(*it);
    pending.erase(it);
  }
  dropped->fail(std::make_exception_ptr(concurrent::futures::CancelledError(
      "the call was stopped (request_stop) before a worker took it again")));
  return true;
}

// Signals the workers running a call whose stop was asked, one stage further each grace period;
// returns how long the manager may sleep before the next stage is due (-1: none is).
int WorkerPoolState::escalate_stops() {
  struct Signal {
    std::shared_ptr<Worker> worker;
    int sig;
    std::uint64_t id;
  };
  std::vector<Signal> signals;
  int timeout = -1;
  if (stops.load(std::memory_order_relaxed) == 0) return timeout;  // the usual case
  {
    std::scoped_lock lk(mu);
    const auto now = steady::now();
    int asked = 0;
    for (auto& w : workers)
      for (auto& [id, f] : w->inflight) asked += f.stop ? 1 : 0;
    stops = asked;  // those that ended since are no longer counted
    for (auto& w : workers) {
      if (w->exited || w->inflight.empty()) continue;
      auto& [id, f] = *w->inflight.begin();  // the message the worker runs
      if (!f.stop || f.stage >= 3) continue;
      if (f.stage == 0 || now >= f.next_stage) {
        static constexpr int kSignals[] = {SIGINT, SIGTERM, SIGKILL};
        signals.push_back({w, kSignals[f.stage], id});
        ++f.stage;
        f.next_stage = now + options.stop_grace;
      }
      if (f.stage < 3) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(f.next_stage - now).count();
        const int ms = static_cast<int>(std::max<std::int64_t>(left, 0));
        timeout = timeout < 0 ? ms : std::min(timeout, ms);
      }
    }
  }
  for (auto& s : signals) {
    siginfo_t info{};
    info.si_signo = s.sig;
    info.si_code = SI_QUEUE;
    info.si_pid = ::getpid();
    info.si_uid = ::getuid();
    info.si_value.sival_ptr = reinterpret_cast<void*>(static_cast<std::uintptr_t>(s.id));
    // Through the pidfd: never a recycled pid. SIGINT carries the call's id (stop_requested()).
    (void)::syscall(SYS_pidfd_send_signal, s.worker->sentinel, s.sig,
                    s.sig == SIGINT ? &info : nullptr, 0);
  }
  return timeout;
}

void WorkerPoolState::read_results(Worker& w) {
  for (;;) {
    ResultBatch b;
    try {
      b = w.conn.recv<ResultBatch>();
    } catch (const EOFError&) {
      w.conn_open = false;
      return;
    } catch (const OSError&) {
      w.conn_open = false;
      return;
    }
    for (auto& r : b.results) {
      if (r.initializer_failed) {
        std::string why = "A process initializer failed, the process pool is not usable anymore";
        if (!r.outcomes.empty()) why += " (" + r.outcomes.front().message + ")";
        std::vector<std::unique_ptr<Job>> failed;
        {
          std::scoped_lock lk(mu);
          break_pool_locked(why, failed);
        }
        auto e = error(why);
        for (auto& j : failed) j->fail(e);
        return;
      }
      std::unique_ptr<Job> job;
      {
        std::scoped_lock lk(mu);
        auto it = w.inflight.find(r.id);
        if (it != w.inflight.end()) {
          job = std::move(it->second.job);
          w.inflight_bytes -= it->second.size;
          w.note_result(it->second.sent, steady::now());
          w.inflight.erase(it);
        }
      }
      if (job) job->deliver(std::move(r.outcomes));
    }
    if (!w.conn.poll(std::chrono::seconds(0))) return;
  }
}

void WorkerPoolState::break_pool_locked(const std::string& why,
                                        std::vector<std::unique_ptr<Job>>& failed) {
  if (broken.empty()) broken = why;
  for (auto& w : workers) {
    for (auto& [id, f] : w->inflight) failed.push_back(std::move(f.job));
    w->inflight.clear();
    w->inflight_bytes = 0;
    if (!w->exited) w->process.terminate();
  }
  for (auto& j : pending) failed.push_back(std::move(j));
  pending.clear();
}

void WorkerPoolState::reap(const std::shared_ptr<Worker>& w) {
  // What it sent before it ended is all in the socket now.
  if (w->conn_open && w->conn.poll(std::chrono::seconds(0))) read_results(*w);
  w->process.join();
  const int code = w->process.exitcode().value_or(-1);
  std::vector<std::unique_ptr<Job>> failed;
  std::unique_ptr<Job> stopped;
  std::string why;
  bool replace = false;
  {
    std::scoped_lock send_lock(w->send_mutex);  // no send in progress: every job has its calls
    std::scoped_lock lk(mu);
    w->exited = true;
    if (!w->inflight.empty() && w->inflight.begin()->second.stage >= 2 && broken.empty() &&
        !terminating) {
      // Ended by request_stop()'s SIGTERM or SIGKILL: that call is stopped, the ones behind it
      // go to another worker, and a new worker takes this one's place, whatever the policy.
      auto it = w->inflight.begin();
      stopped = std::move(it->second.job);
      why = "the call was stopped (request_stop): " + w->process.name() + " (pid " +
            std::to_string(w->process.pid().value_or(0)) + ") " + describe_exit(code) +
            " after SIGINT and " + std::to_string(options.stop_grace.count()) + " ms";
      std::vector<std::unique_ptr<Job>> again;
      for (++it; it != w->inflight.end(); ++it) again.push_back(std::move(it->second.job));
      for (auto r = again.rbegin(); r != again.rend(); ++r) pending.push_front(std::move(*r));
      w->inflight.clear();
      w->inflight_bytes = 0;
    }
    const bool retired = options.max_tasks_per_child && w->sent >= *options.max_tasks_per_child &&
                         w->inflight.empty() && code == 0;
    const bool stopping = shut && pending.empty() && w->inflight.empty() && code == 0;
    if (!stopped && !retired && !stopping && broken.empty()) {
      why =
          "A process in the process pool was terminated abruptly while the future was "
          "running or pending: " +
          w->process.name() + " (pid " + std::to_string(w->process.pid().value_or(0)) + ") " +
          describe_exit(code);
      if (terminating) why = "the pool was terminated: " + why;
      if (options.on_worker_death == OnWorkerDeath::break_pool || terminating) {
        break_pool_locked(why, failed);
      } else if (!w->inflight.empty()) {
        // A worker runs its messages in order: the oldest was running and fails; the ones
        // behind it never started, and go back to the front of the queue for another worker.
        auto it = w->inflight.begin();
        failed.push_back(std::move(it->second.job));
        std::vector<std::unique_ptr<Job>> again;
        for (++it; it != w->inflight.end(); ++it) again.push_back(std::move(it->second.job));
        for (auto r = again.rbegin(); r != again.rend(); ++r) pending.push_front(std::move(*r));
        w->inflight.clear();
        w->inflight_bytes = 0;
      }
    }
    std::erase(workers, w);
    replace = broken.empty() && (!shut || !pending.empty());
  }
  if (stopped) {
    stopped->fail(std::make_exception_ptr(concurrent::futures::CancelledError(why)));
  } else {
    auto e = error(why);
    for (auto& j : failed) j->fail(e);
  }
  w->process.close();
  if (replace) {
    try {
      ensure_workers(false);
    } catch (...) {  // the manager's own ensure_workers() will fail again and break the pool
    }
  }
}

void WorkerPoolState::run_manager() {
  for (;;) {
    std::vector<std::shared_ptr<Worker>> ws;
    {
      std::scoped_lock lk(mu);
      ws = workers;
      const bool idle = pending.empty() && std::all_of(workers.begin(), workers.end(),
                                                       [](auto& w) { return w->inflight.empty(); });
      if ((shut && idle && starting == 0) || (!broken.empty() && workers.empty())) break;
    }
    std::vector<pollfd> fds;
    fds.push_back({wake_fd, POLLIN, 0});
    for (const auto& w : ws) {
      fds.push_back({w->conn_open ? w->fd : -1, POLLIN, 0});
      fds.push_back({w->sentinel, POLLIN, 0});
    }
    const int timeout = escalate_stops();
    int r;
    do {
      r = ::poll(fds.data(), fds.size(), timeout);
    } while (r < 0 && errno == EINTR);
    if (fds[0].revents) {
      std::uint64_t n;
      (void)!::read(wake_fd, &n, sizeof n);
    }
    for (std::size_t i = 0; i < ws.size(); ++i) {
      if (fds[1 + 2 * i].revents) read_results(*ws[i]);
    }
    pump();
    for (std::size_t i = 0; i < ws.size(); ++i) {
      if (fds[2 + 2 * i].revents) reap(ws[i]);
    }
    try {
      ensure_workers(false);
    } catch (const std::exception& e) {
      std::vector<std::unique_ptr<Job>> failed;
      const std::string why = std::string("a new worker could not be started: ") + e.what();
      {
        std::scoped_lock lk(mu);
        break_pool_locked(why, failed);
      }
      auto ep = error(why);
      for (auto& j : failed) j->fail(ep);
    }
    pump();
  }
  finish_manager();
}

// Shut down (or broken): tells each worker to stop, and waits for them.
void WorkerPoolState::finish_manager() {
  std::vector<std::shared_ptr<Worker>> ws;
  {
    std::scoped_lock lk(mu);
    ws = workers;
  }
  TaskBatch stop;
  stop.stop = true;
  for (auto& w : ws) {
    std::scoped_lock lk(w->send_mutex);
    try {
      w->conn.send(stop);
    } catch (...) {
    }
  }
  for (auto& w : ws) {
    w->process.join();
    w->process.close();
  }
  std::scoped_lock lk(mu);
  workers.clear();
  manager_done = true;
}

namespace {

// Every pool alive, shut down at exit before the processes' own exit handler joins children.
struct Registry {
  std::mutex mu;
  std::vector<std::weak_ptr<WorkerPoolState>> pools;
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}
void shutdown_all_at_exit() {
  std::vector<std::shared_ptr<WorkerPoolState>> alive;
  {
    auto& r = registry();
    std::scoped_lock lk(r.mu);
    for (auto& w : r.pools)
      if (auto p = w.lock()) alive.push_back(std::move(p));
    r.pools.clear();
  }
  for (auto& p : alive) {
    {
      std::scoped_lock lk(p->mu);
      p->shut = true;
    }
    p->wake();
    if (p->manager) p->manager->join();
    p->manager.reset();  // its closure holds the pool
  }
}

}  // namespace

WorkerPool::WorkerPool(WorkerPoolOptions options)
    : state_(std::make_shared<WorkerPoolState>(std::move(options))) {
  state_->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (state_->wake_fd < 0) throw_os_error(errno, "eventfd for " + state_->options.name);
  auto& r = registry();
  std::scoped_lock lk(r.mu);
  r.pools.push_back(state_);
}

WorkerPool::~WorkerPool() {
  try {
    shutdown(true, false);
  } catch (...) {
  }
  std::unique_ptr<threading::Thread> manager;
  {
    std::scoped_lock lk(state_->mu);
    manager = std::move(state_->manager);  // its closure holds the pool
  }
}

void WorkerPool::submit(std::unique_ptr<Job> job) {
  auto& s = *state_;
  if (::getpid() != s.owner)
    throw RuntimeError(s.options.name + " belongs to process " + std::to_string(s.owner) +
                       "; it cannot be used from process " + std::to_string(::getpid()) +
                       " (a call running in a worker, say)");
  bool first = false;
  {
    std::scoped_lock lk(s.mu);
    if (!s.broken.empty()) std::rethrow_exception(s.error(s.broken));
    if (s.shut) throw RuntimeError("cannot schedule new futures after shutdown");
    job->key = s.next_key++;
    job->bind_stop([weak = std::weak_ptr<WorkerPoolState>(state_), key = job->key] {
      auto pool = weak.lock();
      return pool && pool->request_stop(key);
    });
    s.pending.push_back(std::move(job));
    first = s.manager == nullptr;
  }
  if (first) {
    // fork: every worker now, while this process has no thread of the pool's (fork is refused
    // in a process with other threads).
    try {
      s.ensure_workers(s.options.start_method == "fork");
    } catch (...) {
      std::scoped_lock lk(s.mu);
      s.pending.clear();
      throw;
    }
    static std::once_flag once;  // after the first Process: run before its exit handler
    std::call_once(once, [] { std::atexit(shutdown_all_at_exit); });
    std::scoped_lock lk(s.mu);
    if (!s.manager) {
      auto self = state_;
      s.manager = std::make_unique<threading::Thread>(
          threading::Thread::Options{.name = s.options.name + "-manager", .daemon = true},
          [self] { self->run_manager(); });
      s.manager->start();
    }
  } else {
    s.ensure_workers(false);
  }
  s.pump();
}

void WorkerPool::shutdown(bool wait, bool cancel_pending) {
  auto& s = *state_;
  std::deque<std::unique_ptr<Job>> cancelled;
  threading::Thread* manager = nullptr;
  {
    std::scoped_lock lk(s.mu);
    s.shut = true;
    if (cancel_pending) cancelled.swap(s.pending);
    manager = s.manager.get();
  }
  for (auto& j : cancelled) j->cancel();
  s.wake();
  if (wait && manager && manager->ident() != threading::get_ident()) manager->join();
}

void WorkerPool::signal_workers(int sig) {
  auto& s = *state_;
  {
    std::scoped_lock lk(s.mu);
    s.terminating = true;
    s.shut = true;
    for (auto& w : s.workers) {
      if (w->exited) continue;
      if (sig == SIGKILL)
        w->process.kill();
      else
        w->process.terminate();
    }
  }
  shutdown(true, false);
}

int WorkerPool::max_workers() const noexcept {
  return state_->options.max_workers;
}

std::vector<int> WorkerPool::worker_pids() const {
  std::scoped_lock lk(state_->mu);
  std::vector<int> pids;
  for (const auto& w : state_->workers)
    if (!w->exited) pids.push_back(w->process.pid().value_or(0));
  return pids;
}

}  // namespace troupe::multiprocessing::detail
