#include "troupe/multiprocessing/detail/worker_pool.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
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
#include <unordered_map>
#include <utility>

#include "troupe/error_envelope.hpp"
#include "troupe/internal/demangle.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/internal/secret_message.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/sharedctypes.hpp"
#include "troupe/threading/thread.hpp"
#include "troupe/unique_fd.hpp"

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

// Worker -> parent: one call's (or one map chunk's) outcomes.
struct ResultMessage {
  std::uint64_t id = 0;
  bool initializer_failed = false;
  std::vector<CallOutcome> outcomes;
};

// The calls sent to a worker in one go (one write, one read).
struct TaskBatch {
  bool stop = false;
  std::vector<TaskMessage> tasks;
};

// A worker sends the results it holds once this long has passed since its last send (checked
// between calls), and before a call not known to be quick, so a quick result does not wait
// behind a slow call of the same batch.
constexpr auto kFlushAfter = std::chrono::microseconds(500);
// A call is quick under this (the worker's look-ahead in the parent, the flush in the worker).
constexpr auto kQuickCall = std::chrono::microseconds(200);

// ---- the board: what the parent can still read of a worker after its death ---------------------
//
// A worker's results travel as records, several to a message. A worker writes each record into
// its board (shared memory: a memfd both processes map) as soon as the call ends, and sends the
// board's records when it flushes; it also writes there the id of the call it runs. If it dies,
// whatever it sent is in the socket and whatever it had not sent is on the board: the parent reads
// both (a record it has from the socket is not delivered twice), and the call noted as running is
// the one that was running. A result too large for the board is sent at once, the call still
// noted as running until it is sent (if the worker dies meanwhile, that call fails: it had not
// finished for the parent).
//
// A record: u64 id, u32 flags, u32 outcome count, then per outcome u8 ok, 7 bytes 0, u64 value
// size, u64 error size, the value (unless kValuesFollow: each outcome's value is then the next
// message), the error (a failed call's ErrorEnvelope, proto/errors.capnp: at most
// ErrorEnvelope::kMaxBytes).
//
// The parent writes there too: the id of the call whose stop was asked (request_stop()), which
// stop_requested() compares with the call running (the SIGINT that follows is only a nudge, for a
// call blocked in a system call: a signal can be lost, the board's word cannot).
constexpr std::size_t kBoardWords = 32 * 1024;  // 256 KiB: running, the log's size, stop, log
constexpr std::uint32_t kInitializerFailed = 1;
constexpr std::uint32_t kValuesFollow = 2;
constexpr std::size_t kRecordHeader = 16;
constexpr std::size_t kOutcomeHeader = 24;

class Board {
public:
  explicit Board(const RawArray<std::uint64_t>& words) noexcept
      : words_(words.data()),
        log_(reinterpret_cast<std::byte*>(words.data() + 3)),
        capacity_((words.size() - 3) * sizeof(std::uint64_t)) {}
  std::atomic_ref<std::uint64_t> running() const noexcept { return std::atomic_ref(words_[0]); }
  std::atomic_ref<std::uint64_t> used() const noexcept { return std::atomic_ref(words_[1]); }
  std::atomic_ref<std::uint64_t> stop() const noexcept { return std::atomic_ref(*stop_word()); }
  std::uint64_t* stop_word() const noexcept { return words_ + 2; }
  std::byte* log() const noexcept { return log_; }
  std::size_t capacity() const noexcept { return capacity_; }

private:
  std::uint64_t* words_;
  std::byte* log_;
  std::size_t capacity_;
};

std::size_t record_size(const ResultMessage& r, bool with_values) {
  std::size_t n = kRecordHeader;
  for (const auto& o : r.outcomes)
    n += kOutcomeHeader + (with_values ? o.value.size() : 0) + o.error.size();
  return n;
}

template <class T>
std::byte* put(std::byte* out, T v) noexcept {
  std::memcpy(out, &v, sizeof v);
  return out + sizeof v;
}

// Writes `r` at `out` (record_size(r, with_values) bytes).
void write_record(std::byte* out, const ResultMessage& r, bool with_values) noexcept {
  out = put<std::uint64_t>(out, r.id);
  out = put<std::uint32_t>(
      out, (r.initializer_failed ? kInitializerFailed : 0) | (with_values ? 0 : kValuesFollow));
  out = put<std::uint32_t>(out, static_cast<std::uint32_t>(r.outcomes.size()));
  for (const auto& o : r.outcomes) {
    out = put<std::uint64_t>(out, o.ok ? 1 : 0);  // u8 ok, 7 bytes 0 (little-endian)
    out = put<std::uint64_t>(out, with_values ? o.value.size() : 0);
    out = put<std::uint64_t>(out, o.error.size());
    if (with_values && !o.value.empty()) {
      std::memcpy(out, o.value.data(), o.value.size());
      out += o.value.size();
    }
    if (!o.error.empty()) {
      std::memcpy(out, o.error.data(), o.error.size());
      out += o.error.size();
    }
  }
}

// Reads the records in `bytes`; `follow(o)` fills the value of an outcome of a kValuesFollow
// record. @throws ValueError if they are malformed.
template <class Follow>
std::vector<ResultMessage> read_records(std::span<const std::byte> bytes, Follow&& follow) {
  std::vector<ResultMessage> out;
  std::size_t at = 0;
  auto take = [&](void* to, std::size_t n) {
    if (n > bytes.size() - at)
      throw ValueError("a pool worker's result record is cut short (" + std::to_string(n) +
                       " bytes wanted at offset " + std::to_string(at) + " of " +
                       std::to_string(bytes.size()) + ")");
    if (n) std::memcpy(to, bytes.data() + at, n);
    at += n;
  };
  while (at < bytes.size()) {
    ResultMessage& r = out.emplace_back();
    std::uint32_t flags = 0, count = 0;
    take(&r.id, sizeof r.id);
    take(&flags, sizeof flags);
    take(&count, sizeof count);
    r.initializer_failed = (flags & kInitializerFailed) != 0;
    if (count > (bytes.size() - at) / kOutcomeHeader)
      throw ValueError("a pool worker's result record counts " + std::to_string(count) +
                       " outcomes in " + std::to_string(bytes.size() - at) + " bytes");
    r.outcomes.resize(count);
    for (auto& o : r.outcomes) {
      std::uint64_t ok = 0, value_size = 0, error_size = 0;
      take(&ok, sizeof ok);
      take(&value_size, sizeof value_size);
      take(&error_size, sizeof error_size);
      o.ok = (ok & 0xff) != 0;
      if (value_size > bytes.size() - at || error_size > bytes.size() - at - value_size)
        throw ValueError("a pool worker's result record announces " +
                         std::to_string(value_size + error_size) + " bytes with " +
                         std::to_string(bytes.size() - at) + " left");
      if (error_size > ErrorEnvelope::kMaxBytes)
        throw ValueError("a pool worker's result record holds an error envelope of " +
                         std::to_string(error_size) + " bytes, over its " +
                         std::to_string(ErrorEnvelope::kMaxBytes) + "-byte limit");
      o.value.resize(static_cast<std::size_t>(value_size));
      take(o.value.data(), o.value.size());
      o.error.resize(static_cast<std::size_t>(error_size));
      take(o.error.data(), o.error.size());
    }
    if (flags & kValuesFollow)
      for (auto& o : r.outcomes) follow(o);
  }
  return out;
}

// Bytes a worker's connection may hold unread (a Unix socket's default buffer is ~200 KiB, and
// every message costs its bookkeeping too): while a worker holds calls, no more than this is sent
// to it, so a send never waits on a worker that waits to send its results.
constexpr std::size_t kSendBudget = 64 * 1024;
constexpr std::size_t kMessageOverhead = 1024;

// A call that was on this many workers that died before it started fails with the last death
// (it is sent again until then).
constexpr int kMaxDeathsBeforeStart = 3;

// A failed outcome: the exception in `ep`, raised in this worker in the call `context`.
CallOutcome outcome_of(std::exception_ptr ep, ErrorContext context) {
  CallOutcome o;
  o.error = ErrorEnvelope::capture(std::move(ep), std::move(context)).to_bytes();
  return o;
}

// A call's context for its envelope: the entry, and its arguments (one of a map chunk's).
ErrorContext call_context(const std::string& entry, std::span<const std::byte> args, bool batch) {
  std::string summary = summarize_arguments(args);
  return {.call = entry, .arguments = batch ? "one of " + summary : summary};
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
    o = outcome_of(std::current_exception(), call_context(name, args, batch));
  }
  return o;
}

// The worker's side of request_stop(): the id of the message it runs (0 between messages), and
// its board, where the parent writes the id of the call whose stop was asked before it queues
// SIGINT (with that id as its value) to wake a call blocked in a system call.
std::atomic<std::uint64_t> g_running{0};
// The board's stop word, in the board's mapping (which outlives the worker's loop), not the
// loop's Board: a thread of a call may read it as the loop ends.
std::atomic<std::uint64_t*> g_stop_word{nullptr};

void on_sigint(int sig, siginfo_t* info, void*) {
  // The parent's nudge: the stop itself is on the board (a standard signal already pending is
  // dropped, and one sent by anyone else must not stop a call).
  if (info->si_code == SI_QUEUE) return;
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
  UniqueFd fd = pidfd_open(owner);
  if (!fd) return errno != ESRCH;  // no pidfds: no watch (the connection still ends it)
  // The thread takes no signals: they go to the worker's main thread, as without it.
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  struct Restore {
    sigset_t* old;
    ~Restore() { ::pthread_sigmask(SIG_SETMASK, old, nullptr); }
  } restore{&old};
  try {
    std::thread([fd = std::move(fd), grace] {
      pollfd p{fd.get(), POLLIN, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      ::kill(::getpid(), SIGTERM);
      std::this_thread::sleep_for(grace);
      ::kill(::getpid(), SIGKILL);
    }).detach();
  } catch (const std::system_error&) {  // no thread, no watch; the fd closed with the lambda
  }
  return true;
}

bool stop_requested_in_worker() noexcept {
  const std::uint64_t running = g_running.load();
  std::uint64_t* stop = g_stop_word.load();
  return running != 0 && stop != nullptr && std::atomic_ref(*stop).load() == running;
}

namespace {

// The worker's end of its board: each call's record goes there when the call ends, and to the
// parent when the worker flushes (or at once, when it is too large for the board).
class ResultSender {
public:
  ResultSender(Connection& conn, const Board& board, std::uint64_t limit) noexcept
      : conn_(conn), board_(board), limit_(limit) {}

  steady::time_point since = steady::now();  // the last flush

  // Records the outcomes of call `r.id` of `entry` (still noted as running). False if the parent
  // has gone.
  bool add(ResultMessage& r, const std::string& entry) {
    for (auto& o : r.outcomes) {
      if (o.value.size() > limit_)
        o = outcome_of(
            std::make_exception_ptr(ValueError(
                "'" + entry + "' returned a result of " + std::to_string(o.value.size()) +
                " bytes (encoded), more than the " + std::to_string(limit_) +
                "-byte limit of a message from a pool worker to its pool; the call "
                "fails alone")),
            {.call = entry});
    }
    const std::size_t size = record_size(r, true);
    if (size <= board_.capacity()) {
      auto used = static_cast<std::size_t>(board_.used().load(std::memory_order_relaxed));
      if (size > board_.capacity() - used) {
        if (!flush()) return false;
        used = 0;
      }
      write_record(board_.log() + used, r, true);
      board_.used().store(used + size, std::memory_order_release);
      return true;
    }
    // Too large for the board: what is there first, then this record, its values following.
    if (!flush()) return false;
    std::vector<std::byte> head(record_size(r, false));
    write_record(head.data(), r, false);
    try {
      conn_.send_bytes(head);
      for (const auto& o : r.outcomes) conn_.send_bytes(o.value);
    } catch (const OSError&) {
      return false;
    }
    since = steady::now();
    return true;
  }

  // Sends the records on the board. False if the parent has gone.
  bool flush() {
    const auto used = static_cast<std::size_t>(board_.used().load(std::memory_order_relaxed));
    if (used == 0) return true;
    try {
      conn_.send_bytes(std::span<const std::byte>(board_.log(), used));
    } catch (const OSError&) {
      return false;
    }
    board_.used().store(0, std::memory_order_release);
    since = steady::now();
    return true;
  }

private:
  Connection& conn_;
  const Board& board_;
  std::uint64_t limit_;
};

}  // namespace

// The worker process's main loop.
void troupe_pool_worker(Connection& conn, WorkerConfig& cfg, RawArray<std::uint64_t>& words) {
  for (int fd : cfg.close_fds) ::close(fd);
  if (cfg.owner > 0 && !watch_owner(cfg.owner, std::chrono::milliseconds(cfg.stop_grace_ms)))
    return;  // the pool's process has ended already
  struct sigaction sa {};
  sa.sa_sigaction = on_sigint;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  const Board board(words);
  g_stop_word.store(board.stop_word());
  struct Forget {
    ~Forget() { g_stop_word.store(nullptr); }
  } forget;
  ResultSender sender(conn, board, cfg.max_message ? cfg.max_message : conn.max_message_size());
  if (!cfg.initializer.empty()) {
    try {
      const EntryPoint* e = find_entry(cfg.initializer);
      if (e == nullptr)
        throw ValueError("initializer '" + cfg.initializer +
                         "' is not a function registered with TROUPE_ENTRY in this program");
      internal::invoke_start_arguments(*e, cfg.initargs.bytes);
    } catch (const SystemExit&) {
      throw;
    } catch (...) {
      std::fprintf(stderr, "Exception in initializer:\n%s\n",
                   troupe::internal::describe(std::current_exception()).c_str());
      ResultMessage r;
      r.initializer_failed = true;
      r.outcomes.push_back(outcome_of(std::current_exception(),
                                      call_context(cfg.initializer, cfg.initargs.bytes, false)));
      (void)(sender.add(r, cfg.initializer) && sender.flush());
      return;
    }
  }
  std::int64_t done = 0;
  std::string last_name;
  const EntryPoint* last = nullptr;
  // Each function's time per call (a moving average; zero: not known yet).
  std::unordered_map<std::string, std::chrono::nanoseconds> times;
  std::chrono::nanoseconds* last_time = nullptr;
  for (;;) {
    TaskBatch batch;
    try {
      batch = conn.recv<TaskBatch>();
    } catch (const EOFError&) {
      return;  // the parent has gone
    }
    if (batch.stop) return;
    sender.since = steady::now();
    for (auto& t : batch.tasks) {
      if (last == nullptr || t.entry != last_name) {
        last = find_entry(t.entry);
        last_name = t.entry;
        last_time = &times[t.entry];
      }
      // Before a call that may be slow, the results so far go to the parent.
      const bool quick = last_time->count() != 0 && *last_time < kQuickCall;
      if (!quick && !sender.flush()) return;
      ResultMessage r;
      r.id = t.id;
      r.outcomes.reserve(t.calls.size());
      board.running().store(t.id);  // seq_cst: on the board before the call can end the process
      g_running.store(t.id);
      const auto began = steady::now();
      for (const auto& args : t.calls) r.outcomes.push_back(run_call(last, t.entry, args, t.batch));
      const auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - began);
      g_running.store(0);
      *last_time = last_time->count() == 0 ? std::max(took, std::chrono::nanoseconds(1))
                                           : (*last_time * 7 + took) / 8;
      if (!sender.add(r, t.entry)) return;
      board.running().store(0);  // its result is on the board (or sent)
      ++done;
      if (steady::now() - sender.since >= kFlushAfter && !sender.flush()) return;
    }
    if (!sender.flush()) return;
    if (cfg.max_tasks > 0 && done >= cfg.max_tasks) return;
  }
}
void troupe_pool_worker_entry(Connection& conn, WorkerConfig& cfg, RawArray<std::uint64_t>& board) {
  troupe_pool_worker(conn, cfg, board);
}
TROUPE_ENTRY(troupe_pool_worker_entry);

std::exception_ptr outcome_exception(const CallOutcome& o) {
  try {
    return ErrorEnvelope::from_bytes(o.error).exception();
  } catch (const ValueError& e) {
    return std::make_exception_ptr(
        ValueError(std::string("a pool worker sent an error that cannot be read: ") + e.what()));
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
  std::optional<RawArray<std::uint64_t>> words;  // its board (set once it is started)
  std::mutex send_mutex;
  // Held by the one thread that reads its results: the pool's thread, or a caller waiting on a
  // call it runs (WorkerPoolState::help_wait), or reap().
  std::mutex read_mutex;
  struct InFlight {
    std::unique_ptr<Job> job;
    std::size_t size;         // what it counts against kSendBudget
    steady::time_point sent;  // when it was sent
    // request_stop(): asked; then 1, 2, 3 once SIGINT, SIGTERM, SIGKILL went to the worker,
    // each when the call is the one the worker runs and the grace has passed.
    bool stop = false;
    int stage = 0;
    steady::time_point next_stage{};
  };
  // The call it runs now (0: none), from its board.
  std::uint64_t running() const noexcept { return Board(*words).running().load(); }
  // How many calls may wait at the worker behind the one it runs: many when calls are quick (one
  // message carries several, and the worker never waits for the next), none when they are slow
  // or not timed yet (a call sent to a worker cannot go to another: it would wait there while
  // another worker idles, or while one starts). From a moving average of each call's time at the
  // worker: from its sending, or from the previous result if it waited behind that one.
  std::chrono::nanoseconds call_time{0};
  steady::time_point last_result{};
  int depth() const noexcept { return call_time.count() != 0 && call_time < kQuickCall ? 16 : 0; }
  void note_result(steady::time_point sent, steady::time_point now) noexcept {
    const auto t = now - std::max(sent, last_result);
    last_result = now;
    call_time = call_time.count() == 0 ? t : (call_time * 7 + t) / 8;
  }
  std::map<std::uint64_t, InFlight> inflight;  // guarded by the pool's mutex
  std::size_t inflight_bytes = 0;
  std::int64_t sent = 0;  // messages sent (max_tasks_per_child counts them)
  bool conn_open = true;  // guarded by read_mutex
  bool exited = false;    // guarded by the pool's mutex
};

// Calls answered, taken out of their worker's flight, to be handed to their jobs.
struct Delivery {
  std::vector<std::pair<std::unique_ptr<Job>, std::vector<CallOutcome>>> done;
  // Why, if a result said the initializer failed: the pool was broken when it was taken (so
  // that a reap() meanwhile does not break it for another reason), and `failed` are its calls.
  std::optional<std::string> initializer_failed;
  std::vector<std::unique_ptr<Job>> failed;
};

namespace {
// The worker whose results this thread reads now (read_results): it does not read another
// meanwhile.
thread_local const Worker* t_reading = nullptr;
}  // namespace

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
  UniqueFd wake_fd;
  // The pool's thread waits here: on wake_fd, each worker's sentinel, and each worker's result
  // socket while nobody else reads it (one-shot: whoever stops reading it arms it again).
  UniqueFd epoll_fd;
  std::unique_ptr<threading::Thread> manager;
  bool manager_done = false;
  std::vector<std::function<void()>> on_ended;  // WorkerPool::when_ended, until manager_done

  void wake() noexcept {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd.get(), &one, sizeof one);
  }

  std::vector<std::int32_t> pool_fds_locked() const {
    std::vector<std::int32_t> fds{wake_fd.get(), epoll_fd.get()};
    for (const auto& w : workers) {
      fds.push_back(w->fd);
      fds.push_back(w->words->_region().region->fd());
    }
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
  void watch(const Worker& w);
  void watch_results(const Worker& w, bool on);
  void unwatch(int fd) noexcept { (void)::epoll_ctl(epoll_fd.get(), EPOLL_CTL_DEL, fd, nullptr); }
  void release_reading(Worker& w, std::unique_lock<std::mutex>& reading);
  void help_wait(std::uint64_t key, const std::optional<steady::time_point>& deadline);
  void after_results();
  void read_results(Worker& w, Delivery& out, bool drain = false);
  bool take(Worker& w, std::vector<ResultMessage>& results, Delivery& out);
  bool hand_over(Delivery& d);
  void reap(const std::shared_ptr<Worker>& w);
  void break_pool_locked(const std::string& why, std::vector<std::unique_ptr<Job>>& failed);
  void finish_manager();
  bool request_stop(std::uint64_t key);
  int escalate_stops();
};

SecretBytes::~SecretBytes() {
  internal::wipe_bytes(bytes);
}

std::vector<std::byte> encode_for_child(const std::function<std::vector<std::byte>()>& encode) {
  struct Spawning {
    PassedFds fds;
    PassedFds* saved = std::exchange(passed_fds(), &fds);
    Spawning() { fds.spawning = true; }
    ~Spawning() { passed_fds() = saved; }
  } spawning;
  auto out = encode();
  if (!spawning.fds.fds.empty()) {
    internal::wipe_bytes(out);
    throw ValueError(
        "a file descriptor (a Connection?) cannot be among arguments encoded before "
        "a child starts (a pool's or a manager's initargs)");
  }
  return out;
}

void WorkerPoolState::start_worker() {
  auto [parent_end, child_end] = Pipe(true);
  WorkerConfig cfg;
  cfg.pool_name = options.name;
  cfg.initializer = options.initializer;
  cfg.initargs.bytes =
      options.initargs_encoder ? encode_for_child(options.initargs_encoder) : options.initargs;
  cfg.max_tasks = options.max_tasks_per_child.value_or(0);
  cfg.owner = static_cast<std::int32_t>(owner);
  cfg.stop_grace_ms = options.stop_grace.count();
  cfg.max_message = parent_end.max_message_size();
  int index;
  {
    std::scoped_lock lk(mu);
    index = next_index++;
    if (options.start_method == "fork") cfg.close_fds = pool_fds_locked();
  }
  if (options.start_method == "fork") cfg.close_fds.push_back(parent_end.fileno());
  auto w = std::make_shared<Worker>();
  w->index = index;
  w->words.emplace(kBoardWords);
  w->process = Process(ProcessOptions{.name = options.name + "-worker-" + std::to_string(index),
                                      .start_method = options.start_method},
                       &troupe_pool_worker_entry, std::move(child_end), std::move(cfg), *w->words);
  w->process.start();
  drop_arguments(w->process);  // closes the parent's copy of the worker's end
  w->fd = parent_end.fileno();
  w->conn = std::move(parent_end);
  w->sentinel = w->process.sentinel();
  {
    std::scoped_lock lk(mu);  // the pool's thread looks its events up in `workers` under it
    watch(*w);
    workers.push_back(std::move(w));
  }
  wake();
}

namespace {
constexpr std::uint64_t kWakeKey = ~std::uint64_t{0};
// A worker's keys in the pool's epoll set: its index, and which of its fds.
std::uint64_t result_key(const Worker& w) noexcept {
  return static_cast<std::uint64_t>(w.index) * 2;
}
std::uint64_t sentinel_key(const Worker& w) noexcept {
  return static_cast<std::uint64_t>(w.index) * 2 + 1;
}
}  // namespace

void WorkerPoolState::watch(const Worker& w) {
  epoll_event r{.events = EPOLLIN | EPOLLONESHOT, .data = {.u64 = result_key(w)}};
  epoll_event e{.events = EPOLLIN, .data = {.u64 = sentinel_key(w)}};
  if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, w.fd, &r) != 0 ||
      ::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, w.sentinel, &e) != 0)
    throw_os_error(errno, "epoll_ctl for " + w.process.name());
}

// Arms (or disarms) the pool's thread's wait on a worker's results: it is disarmed while a
// waiting caller reads them, and after the pool's thread was woken for them, until it is done.
void WorkerPoolState::watch_results(const Worker& w, bool on) {
  epoll_event r{.events = EPOLLONESHOT | (on ? EPOLLIN : 0u), .data = {.u64 = result_key(w)}};
  (void)::epoll_ctl(epoll_fd.get(), EPOLL_CTL_MOD, w.fd, &r);
}

// Ends a turn at reading `w`: the pool's thread watches its results again (or, once it has
// closed, never again). An event that came while the reader held the lock was dropped by the
// pool's thread (one-shot), so arming after the unlock is what makes every result seen: the kernel
// reports at once what is unread.
void WorkerPoolState::release_reading(Worker& w, std::unique_lock<std::mutex>& reading) {
  const bool open = w.conn_open;
  reading.unlock();
  if (open)
    watch_results(w, true);
  else
    unwatch(w.fd);
}

// Called by a thread about to wait on the future of job `key`: if a worker runs it and nobody
// reads that worker's results, this thread reads them (spinning first, as a receive does) and
// hands them to their jobs until its own is done, instead of sleeping until the pool's thread has
// read them (one wake-up instead of two: on a busy machine each costs a time slice). It gives up
// the reading (and the pool's thread takes it over) when its deadline passes, the worker closes
// its end, or the worker ends.
void WorkerPoolState::help_wait(std::uint64_t key,
                                const std::optional<steady::time_point>& deadline) {
  if (t_reading != nullptr) return;
  auto holds = [&](const Worker& w) {
    for (const auto& [id, f] : w.inflight)
      if (f.job && f.job->key == key) return true;
    return false;
  };
  // In slices: between two, whether the worker has ended with its socket still open (a process
  // it started holds the other end): then reap() must take over.
  constexpr auto kSlice = std::chrono::milliseconds(50);
  for (;;) {  // a turn at reading per batch of results, until one answers this call
    std::shared_ptr<Worker> w;
    {
      std::scoped_lock lk(mu);
      for (const auto& x : workers)
        if (!x->exited && holds(*x)) {
          w = x;
          break;
        }
    }
    if (!w) return;  // waiting to be sent, or done
    std::unique_lock reading(w->read_mutex, std::try_to_lock);
    if (!reading) return;  // the pool's thread (or another caller) reads it now
    if (!w->conn_open) return;
    watch_results(*w, false);
    Delivery got;
    bool more = false;  // results came, and not this call's yet: another turn
    for (;;) {
      {
        std::scoped_lock lk(mu);
        if (!holds(*w)) break;
      }
      auto slice = std::chrono::duration_cast<std::chrono::nanoseconds>(kSlice);
      if (deadline) {
        const auto left = *deadline - steady::now();
        if (left <= steady::duration::zero()) break;
        slice = std::min(slice, std::chrono::duration_cast<std::chrono::nanoseconds>(left));
      }
      bool ready = false;
      try {
        ready = w->conn.poll(slice);
      } catch (const std::exception&) {
        break;
      }
      if (ready) {
        read_results(*w, got);
        // What came is handed over before anything else (their callbacks run without the
        // reading held).
        more = w->conn_open && !got.initializer_failed;
        break;
      }
      pollfd p{w->sentinel, POLLIN, 0};
      if (::poll(&p, 1, 0) > 0) break;
    }
    release_reading(*w, reading);
    if (!got.done.empty()) after_results();
    if (!hand_over(got) || !more) return;
  }
}

// What the pool's thread does after it has read results, for a caller that read them: the calls
// waiting go to the workers now free, and a shut pool's thread learns that it may be idle.
void WorkerPoolState::after_results() {
  pump();
  bool stopping;
  {
    std::scoped_lock lk(mu);
    stopping = shut;
  }
  if (stopping) wake();
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
    std::unique_lock<std::mutex> lock;  // its send_mutex, taken before the calls leave their jobs
    TaskBatch batch;
  };
  std::vector<Send> sends;
  std::vector<std::unique_ptr<Job>> cancelled;
  std::vector<const Worker*> busy;  // another thread sends to them (or reaps them) now
  {
    std::scoped_lock lk(mu);
    if (!broken.empty()) return;
    for (;;) {
      if (pending.empty()) break;
      // The worker holding the fewest calls, with room for one more.
      std::shared_ptr<Worker> best;
      for (const auto& w : workers) {
        if (w->exited || std::find(busy.begin(), busy.end(), w.get()) != busy.end()) continue;
        if (options.max_tasks_per_child && w->sent >= *options.max_tasks_per_child) continue;
        if (static_cast<int>(w->inflight.size()) > w->depth()) continue;
        if (!best || w->inflight.size() < best->inflight.size()) best = w;
      }
      if (!best) break;
      std::size_t size = kMessageOverhead;
      for (const auto& c : pending.front()->calls) size += c.size();
      if (!best->inflight.empty() && best->inflight_bytes + size > kSendBudget) break;
      auto to =
          std::find_if(sends.begin(), sends.end(), [&](const Send& x) { return x.worker == best; });
      if (to == sends.end()) {
        // Its send_mutex before its calls leave their jobs: reap() (which takes it first) then
        // never finds a job without its calls, and the worker gets its messages in id order.
        std::unique_lock send_lock(best->send_mutex, std::try_to_lock);
        if (!send_lock) {
          busy.push_back(best.get());
          continue;
        }
        to = sends.insert(sends.end(), Send{best, std::move(send_lock), {}});
      }
      std::unique_ptr<Job> job = std::move(pending.front());
      pending.pop_front();
      if (!job->start()) {
        cancelled.push_back(std::move(job));
        continue;
      }
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
  cancelled.clear();          // outside the lock: a future's callbacks may run
  if (!busy.empty()) wake();  // the manager pumps again for the calls left waiting
  for (auto& s : sends) {
    if (s.batch.tasks.empty()) continue;  // every job it took was cancelled
    try {
      s.worker->conn.send(s.batch);
    } catch (...) {
      // The worker has died: the manager thread sees its pidfd and fails its calls.
    }
    // The calls go back into their jobs, so that a job its worker never ran (the worker died or
    // was stopped) can go to another.
    std::scoped_lock lk(mu);
    for (auto& m : s.batch.tasks) {
      auto it = s.worker->inflight.find(m.id);
      if (it != s.worker->inflight.end() && it->second.job)
        it->second.job->calls = std::move(m.calls);
    }
    s.lock.unlock();
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
      const std::uint64_t id = w->running();
      auto it = w->inflight.find(id);
      if (it == w->inflight.end() || !it->second.stop) {
        // A call whose stop was asked has not started yet (or its result is on its way): look
        // again soon.
        for (auto& [other, f] : w->inflight)
          if (f.stop && f.stage == 0) timeout = timeout < 0 ? 1 : std::min(timeout, 1);
        continue;
      }
      auto& f = it->second;
      if (f.stage >= 3) continue;
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
    // The call may have ended since: SIGTERM and SIGKILL are for it alone (SIGINT names it).
    if (s.sig != SIGINT && s.worker->running() != s.id) continue;
    // The stop itself, where a lost signal cannot lose it: stop_requested() reads it.
    if (s.sig == SIGINT) Board(*s.worker->words).stop().store(s.id);
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

// With w.read_mutex held: reads what the worker sent, and takes the calls it answers out of its
// flight (so that reap() never fails or requeues a call whose result was read) into `out`, to be
// handed over once the lock is released (a done callback may wait on the pool's thread). One
// message, and those its read brought along; `drain`: all the socket holds (a dead worker's).
// (Whatever is left wakes the pool's thread once the reading is released.)
void WorkerPoolState::read_results(Worker& w, Delivery& out, bool drain) {
  const Worker* was = t_reading;
  t_reading = &w;
  struct Restore {
    const Worker* was;
    ~Restore() { t_reading = was; }
  } restore{was};
  for (bool first = true;; first = false) {
    std::vector<ResultMessage> results;
    try {
      std::vector<std::byte> frame;
      if (first || drain) {
        frame = w.conn.recv_bytes();
      } else if (auto more = w.conn.recv_buffered()) {
        frame = std::move(*more);
      } else {
        return;
      }
      results = read_records(frame, [&](CallOutcome& o) { o.value = w.conn.recv_bytes(); });
    } catch (const EOFError&) {
      w.conn_open = false;
      return;
    } catch (const OSError&) {  // it ended inside a message: the rest is on its board
      w.conn_open = false;
      return;
    } catch (const ValueError& e) {  // cannot happen unless memory is corrupted: say so
      std::fprintf(stderr, "%s: %s\n", w.process.name().c_str(), e.what());
      w.conn_open = false;
      w.process.kill();
      return;
    }
    if (!take(w, results, out)) return;
    if (drain && !w.conn.poll(std::chrono::seconds(0))) return;
  }
}

// Takes the calls `results` answer out of w's flight into `out` (those still there: a result read
// from the socket and again from the board of a dead worker is taken once). False if one says the
// worker's initializer failed.
bool WorkerPoolState::take(Worker& w, std::vector<ResultMessage>& results, Delivery& out) {
  std::scoped_lock lk(mu);
  const auto now = steady::now();
  for (auto& r : results) {
    if (r.initializer_failed) {
      std::string why = "A process initializer failed, the process pool is not usable anymore";
      if (!r.outcomes.empty()) {
        try {
          const auto e = ErrorEnvelope::from_bytes(r.outcomes.front().error);
          why += " (" + e.message + "; " + e.remote_text() + ")";
        } catch (const ValueError& e) {
          why += std::string(" (its error cannot be read: ") + e.what() + ")";
        }
      }
      // The pool breaks now, under the lock that took the result: a reap() of this worker
      // (it exits after saying so) finds it broken, and no call left to fail otherwise.
      break_pool_locked(why, out.failed);
      out.initializer_failed = why;
      return false;
    }
    auto it = w.inflight.find(r.id);
    if (it == w.inflight.end()) continue;
    w.inflight_bytes -= it->second.size;
    w.note_result(it->second.sent, now);
    out.done.emplace_back(std::move(it->second.job), std::move(r.outcomes));
    w.inflight.erase(it);
  }
  return true;
}

// Hands the outcomes taken to their jobs (no lock held: their futures' callbacks run here), and
// fails the calls of a pool that a failed initializer broke. False if one did.
bool WorkerPoolState::hand_over(Delivery& d) {
  for (auto& [job, outcomes] : d.done) job->deliver(std::move(outcomes));
  d.done.clear();
  if (!d.initializer_failed) return true;
  const std::string why = std::move(*d.initializer_failed);
  d.initializer_failed.reset();
  auto failed = std::move(d.failed);
  d.failed.clear();
  auto e = error(why);
  for (auto& j : failed) j->fail(e);
  return false;
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
  // What it sent before it ended is all in the socket now; what it had not sent, on its board.
  {
    Delivery got;
    {
      std::scoped_lock reading(w->read_mutex);  // a waiting caller's turn ends (EOF, or a slice)
      if (w->conn_open && w->conn.poll(std::chrono::seconds(0))) read_results(*w, got, true);
      unwatch(w->fd);
      unwatch(w->sentinel);
    }
    (void)hand_over(got);
  }
  w->process.join();
  const int code = w->process.exitcode().value_or(-1);
  {
    const Board board(*w->words);
    const auto used = static_cast<std::size_t>(board.used().load(std::memory_order_acquire));
    std::vector<ResultMessage> left;
    try {
      // Values that follow a record are never on the board.
      left = read_records(std::span<const std::byte>(board.log(), std::min(used, board.capacity())),
                          [](CallOutcome&) {});
    } catch (const ValueError& e) {
      std::fprintf(stderr, "%s: its board: %s\n", w->process.name().c_str(), e.what());
    }
    Delivery got;
    (void)take(*w, left, got);
    (void)hand_over(got);  // false: its initializer failed, and the pool is broken now
  }
  // The call it was running (if it died inside one): that one failed; those behind it never
  // started.
  const std::uint64_t running = w->running();
  std::vector<std::unique_ptr<Job>> failed, exhausted;
  std::unique_ptr<Job> stopped;
  std::string why, who;
  bool replace = false;
  {
    std::scoped_lock send_lock(w->send_mutex);  // no send in progress: every job has its calls
    std::scoped_lock lk(mu);
    w->exited = true;
    who = w->process.name() + " (pid " + std::to_string(w->process.pid().value_or(0)) + ") " +
          describe_exit(code);
    auto run = w->inflight.find(running);
    // The calls it never started go back to the front of the queue for another worker, in
    // order, unless workers keep dying before they start (then they fail).
    auto requeue = [&] {
      std::vector<std::unique_ptr<Job>> again;
      for (auto& [id, f] : w->inflight) {
        if (!f.job) continue;
        if (++f.job->deaths > kMaxDeathsBeforeStart) {
          exhausted.push_back(std::move(f.job));
          continue;
        }
        again.push_back(std::move(f.job));
      }
      for (auto r = again.rbegin(); r != again.rend(); ++r) pending.push_front(std::move(*r));
      w->inflight.clear();
      w->inflight_bytes = 0;
    };
    if (run != w->inflight.end() && run->second.stage >= 2 && broken.empty() && !terminating) {
      // Ended by request_stop()'s SIGTERM or SIGKILL: that call is stopped, the ones behind it
      // go to another worker, and a new worker takes this one's place, whatever the policy.
      stopped = std::move(run->second.job);
      w->inflight.erase(run);
      why = "the call was stopped (request_stop): " + who + " after SIGINT and " +
            std::to_string(options.stop_grace.count()) + " ms";
      requeue();
    }
    const bool retired = options.max_tasks_per_child && w->sent >= *options.max_tasks_per_child &&
                         w->inflight.empty() && code == 0;
    const bool stopping = shut && pending.empty() && w->inflight.empty() && code == 0;
    if (!stopped && !retired && !stopping && broken.empty()) {
      why =
          "A process in the process pool was terminated abruptly while the future was "
          "running or pending: " +
          who;
      if (terminating) why = "the pool was terminated: " + why;
      if (options.on_worker_death == OnWorkerDeath::break_pool || terminating) {
        break_pool_locked(why, failed);
      } else {
        if (run != w->inflight.end()) {
          failed.push_back(std::move(run->second.job));
          w->inflight.erase(run);
        }
        requeue();
      }
    }
    std::erase(workers, w);
    replace = broken.empty() && (!shut || !pending.empty());
  }
  if (stopped) {
    stopped->fail(std::make_exception_ptr(concurrent::futures::CancelledError(why)));
  }
  if (!failed.empty()) {
    auto e = error(why);
    for (auto& j : failed) j->fail(e);
  }
  if (!exhausted.empty()) {
    auto e = error("the call was sent to " + std::to_string(kMaxDeathsBeforeStart + 1) +
                   " workers that died before it started; the last, " + who);
    for (auto& j : exhausted) j->fail(e);
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
  std::array<epoll_event, 64> events;
  for (;;) {
    {
      std::scoped_lock lk(mu);
      const bool idle = pending.empty() && std::all_of(workers.begin(), workers.end(),
                                                       [](auto& w) { return w->inflight.empty(); });
      if ((shut && idle && starting == 0) || (!broken.empty() && workers.empty())) break;
    }
    const int timeout = escalate_stops();
    int n;
    do {
      n = ::epoll_wait(epoll_fd.get(), events.data(), static_cast<int>(events.size()), timeout);
    } while (n < 0 && errno == EINTR);
    std::vector<std::shared_ptr<Worker>> readable, ended;
    {
      std::scoped_lock lk(mu);  // after the wait: a worker started meanwhile is there
      for (int i = 0; i < n; ++i) {
        const std::uint64_t key = events[static_cast<std::size_t>(i)].data.u64;
        if (key == kWakeKey) {
          std::uint64_t count;
          (void)!::read(wake_fd.get(), &count, sizeof count);
          continue;
        }
        auto it = std::find_if(workers.begin(), workers.end(),
                               [&](auto& w) { return w->index == static_cast<int>(key / 2); });
        if (it == workers.end()) continue;
        (key % 2 ? ended : readable).push_back(*it);
      }
    }
    for (auto& w : readable) {
      // Unless a waiting caller reads it now (it arms the watch again when it stops).
      std::unique_lock reading(w->read_mutex, std::try_to_lock);
      if (!reading) continue;
      Delivery got;
      // A caller may have read what woke this thread, between the wake-up and the lock.
      if (w->conn_open && w->conn.poll(std::chrono::seconds(0))) read_results(*w, got);
      release_reading(*w, reading);
      (void)hand_over(got);
    }
    pump();
    for (auto& w : ended) reap(w);
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
  std::vector<std::function<void()>> ended;
  {
    std::scoped_lock lk(mu);
    workers.clear();
    manager_done = true;
    ended.swap(on_ended);
  }
  for (auto& fn : ended) {
    try {
      fn();
    } catch (...) {  // a caller's callback: nothing here can answer for it
    }
  }
}

namespace {

// Every pool alive, shut down at exit before the children are joined (runtime.hpp's order).
troupe::internal::runtime::Alive<WorkerPoolState>& pools() {
  return troupe::internal::runtime::global<troupe::internal::runtime::Alive<WorkerPoolState>>();
}
void shutdown_all_at_exit() {
  for (auto& p : pools().take_all()) {
    // Taken under the lock: a pool may be let go on its own thread meanwhile (a managed Pool
    // dropped: ~WorkerPool there), which takes it too.
    std::unique_ptr<threading::Thread> manager;  // its closure holds the pool
    {
      std::scoped_lock lk(p->mu);
      p->shut = true;
      manager = std::move(p->manager);
    }
    p->wake();
    if (manager) manager->join();
  }
}

}  // namespace

WorkerPool::WorkerPool(WorkerPoolOptions options)
    : state_(std::make_shared<WorkerPoolState>(std::move(options))) {
  state_->wake_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!state_->wake_fd) throw_os_error(errno, "eventfd for " + state_->options.name);
  state_->epoll_fd.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!state_->epoll_fd) throw_os_error(errno, "epoll_create1 for " + state_->options.name);
  epoll_event e{.events = EPOLLIN, .data = {.u64 = kWakeKey}};
  if (::epoll_ctl(state_->epoll_fd.get(), EPOLL_CTL_ADD, state_->wake_fd.get(), &e) != 0)
    throw_os_error(errno, "epoll_ctl for " + state_->options.name);
  pools().add(state_);
  troupe::internal::runtime::at_exit(troupe::internal::runtime::ExitStep::process_pools,
                                     shutdown_all_at_exit);
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
  if (troupe::internal::runtime::process_id() != s.owner)
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
    job->bind_help([weak = std::weak_ptr<WorkerPoolState>(state_),
                    key = job->key](const std::optional<steady::time_point>& deadline) {
      if (auto pool = weak.lock()) {
        try {
          pool->help_wait(key, deadline);
        } catch (...) {  // the wait goes on as usual: the pool's thread reads
        }
      }
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
    start_manager();
  } else {
    s.ensure_workers(false);
  }
  s.pump();
}

void WorkerPool::start_workers() {
  {
    std::scoped_lock lk(state_->mu);
    if (state_->manager || state_->shut || !state_->broken.empty()) return;
  }
  try {
    state_->ensure_workers(true);
  } catch (...) {
    start_manager();  // which ends and joins the workers started, when the pool goes
    throw;
  }
  start_manager();
}

void WorkerPool::start_manager() {
  auto& s = *state_;
  std::scoped_lock lk(s.mu);
  if (s.manager) return;
  auto self = state_;
  s.manager = std::make_unique<threading::Thread>(
      threading::Thread::Options{.name = s.options.name + "-manager", .daemon = true},
      [self] { self->run_manager(); });
  try {
    s.manager->start();
  } catch (...) {
    s.manager.reset();  // not started: when_ended() must not wait for it
    throw;
  }
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

void WorkerPool::signal_workers(int sig, bool wait) {
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
  shutdown(wait, false);
}

void WorkerPool::when_ended(std::function<void()> fn) {
  {
    std::scoped_lock lk(state_->mu);
    if (state_->manager && !state_->manager_done) {
      state_->on_ended.push_back(std::move(fn));
      return;
    }
  }
  fn();
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
