// troupe/multiprocessing/detail/worker_pool.hpp — the engine under ProcessPoolExecutor (and, later,
// multiprocessing.Pool): worker processes that run registered functions on encoded arguments.
// Not API.
//
// Each worker has its own connection (a socketpair), so the parent knows which calls are on
// which worker, and a small shared memory board (a memfd) where the worker notes the call it
// runs and keeps the results it has not sent yet. When a worker dies, the parent reads what it
// sent, then the results left on its board (a computed result is never lost), and fails only the
// call it was running, with its exit status or signal named; the calls it had not started go to
// another worker (OnWorkerDeath::replace_worker) or fail with the broken pool (break_pool,
// Python's ProcessPoolExecutor). A thread of the parent reads every worker's results and watches
// their pidfds; calls are sent by whoever has one to send (the submitting thread or that thread),
// never more than fits the connection's buffer, so no send can block on a worker that is itself
// blocked sending results.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/concurrent/futures/on_worker_death.hpp"
#include "troupe/errors.hpp"

namespace troupe::multiprocessing::detail {

/// One call's outcome, as a worker sends it back.
struct CallOutcome {
  bool ok = false;
  std::vector<std::byte> value;  // the encoded result (ok)
  std::vector<std::byte> error;  // the exception (not ok): an ErrorEnvelope's bytes
};

/// The exception a failed outcome stands for (its envelope rebuilt by throw_error(), so its
/// remote() names the worker and the call), as an exception_ptr; a ValueError naming the worker's
/// fault if the envelope cannot be read.
std::exception_ptr outcome_exception(const CallOutcome& o);

/// A batch of calls of one function (one submit, or one chunk of a map) and what to do with
/// their outcomes. Implemented by the executors over their futures.
class Job {
public:
  virtual ~Job() = default;
  /// Just before it is sent: false if its future was cancelled (then it is dropped).
  virtual bool start() noexcept = 0;
  /// The outcomes, one per call, in order.
  virtual void deliver(std::vector<CallOutcome>&& outcomes) noexcept = 0;
  /// It will never run (or never finish): `error` says why.
  virtual void fail(std::exception_ptr error) noexcept = 0;
  /// shutdown(cancel_futures): it will not run.
  virtual void cancel() noexcept = 0;

  /// Once the pool has taken it: `stop` asks the pool to stop it (WorkerPool::request_stop),
  /// for its future's request_stop().
  virtual void bind_stop(std::function<bool()> stop) noexcept { (void)stop; }
  /// Once the pool has taken it: `help` lets a thread waiting on its future read the results
  /// of the worker that runs it (WorkerPool's help_wait), for CoreBase::help_wait.
  using WaitHelp =
      std::function<void(const std::optional<std::chrono::steady_clock::time_point>& deadline)>;
  virtual void bind_help(WaitHelp help) noexcept { (void)help; }

  std::string entry;                          // the registered function's name
  std::vector<std::vector<std::byte>> calls;  // each call's encoded arguments
  std::uint64_t key = 0;                      // the pool's name for it (request_stop)
  /// `calls` is one std::vector of argument tuples, and the one outcome a std::vector of results
  /// (EntryPoint::call_batch): a map chunk in one message each way.
  bool batch = false;
  /// Workers that died holding it before it started (it is sent again, a few times at most).
  int deaths = 0;
};

using concurrent::futures::OnWorkerDeath;

struct WorkerPoolOptions {
  int max_workers = 1;
  std::string start_method;  // "fork", "spawn" or "forkserver"
  std::string initializer;   // a registered function's name, or empty
  std::vector<std::byte> initargs;
  /// The initargs encoded again for each worker as a child's start arguments are (a proxy among
  /// them carries its manager's key: encode_for_child); null: `initargs` as they are.
  std::function<std::vector<std::byte>()> initargs_encoder;
  std::optional<int> max_tasks_per_child;
  OnWorkerDeath on_worker_death = OnWorkerDeath::break_pool;
  std::string name;  // for messages and process names ("ProcessPoolExecutor-0")
  /// The exception for calls a dead worker or a broken pool fails (default BrokenProcessPool).
  std::function<std::exception_ptr(const std::string& why)> make_error;
  /// request_stop() on a running call: its id on the worker's board (stop_requested() turns
  /// true) and SIGINT to the worker, then SIGTERM after this long, then SIGKILL after as long
  /// again.
  std::chrono::milliseconds stop_grace{1000};
};

/// In a call running in a pool worker: whether request_stop() was made on its future (false
/// anywhere else).
bool stop_requested_in_worker() noexcept;

struct WorkerPoolState;

/// The pool of worker processes, and the thread that reads their results.
class WorkerPool {
public:
  explicit WorkerPool(WorkerPoolOptions options);
  ~WorkerPool();  // shutdown(true, false)
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Queues `job`. @throws RuntimeError after shutdown, BrokenProcessPool when broken.
  void submit(std::unique_ptr<Job> job);
  /// Starts every worker now (multiprocessing.Pool's, whose initializer runs in each at once),
  /// not as jobs come (ProcessPoolExecutor's). @throws what starting a worker throws.
  void start_workers();
  /// No more submits; `cancel_pending`: jobs not yet sent are cancelled (their futures);
  /// `wait`: returns when every worker has ended.
  void shutdown(bool wait, bool cancel_pending);
  /// Signals every live worker (SIGTERM or SIGKILL), then shuts down: their calls fail.
  /// `wait`: returns when every worker has ended (else when_ended() tells).
  void signal_workers(int sig, bool wait = true);
  /// Runs `fn` once, when every worker has ended and the pool's thread is done with them (after
  /// shutdown() or signal_workers(), or when the pool broke): on the pool's thread as it ends,
  /// or in the caller if that has happened already or the pool never started. Never blocks: for
  /// a caller that must not hold its thread while the workers end (a managed Pool's join() on
  /// a manager server's executor, whose workers may be calling that server). `fn` should not
  /// throw (what it throws on the pool's thread is dropped).
  void when_ended(std::function<void()> fn);

  int max_workers() const noexcept;
  /// The pids of the live workers (for tests and for the curious).
  std::vector<int> worker_pids() const;

private:
  void start_manager();  // the pool's thread, once
  std::shared_ptr<WorkerPoolState> state_;
};

/// Bytes that may hold a secret (a proxy's manager key, among a child's initargs), wiped when
/// freed. An aggregate: it travels as any struct.
struct SecretBytes {
  std::vector<std::byte> bytes;
  ~SecretBytes();
};

/// The entry point of a worker process (registered with TROUPE_ENTRY in worker_pool.cpp).
struct WorkerConfig {
  std::string pool_name;
  std::string initializer;
  SecretBytes initargs;                 // a proxy's manager key may be among them
  std::int64_t max_tasks = 0;           // 0: no limit
  std::vector<std::int32_t> close_fds;  // fork: the parent's pool fds this child inherited
  std::int32_t owner = 0;               // the pool's process: the worker ends when it does
  std::int64_t stop_grace_ms = 1000;    // SIGTERM, then SIGKILL this long after
  std::uint64_t max_message = 0;        // the largest message the parent accepts (its end's)
};

/// `encode()` run as a child's start arguments are encoded (Process::start): a proxy among what
/// it encodes carries its manager's key (CPython's BaseProxy.__reduce__ while spawning), for
/// arguments a child gets beside its target's (a pool's initargs, a manager's). No file
/// descriptor may be among them (ValueError, as in any message). The caller wipes the bytes.
std::vector<std::byte> encode_for_child(const std::function<std::vector<std::byte>()>& encode);

}  // namespace troupe::multiprocessing::detail
