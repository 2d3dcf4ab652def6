#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>

#include "troupe/concurrent/futures/process.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "start_methods.hpp"

// The behaviours of CPython's Lib/test/test_concurrent_futures/test_process_pool.py,
// executor.py, test_init.py and test_deadlock.py on ProcessPoolExecutor, per start method.
namespace troupe::concurrent::futures {
namespace {

using namespace std::chrono_literals;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---- the calls (registered: C++ cannot send code) ---------------------------------------------

int square(int x) {
  return x * x;
}
TROUPE_ENTRY(square);

int mul(int x, int y) {
  return x * y;
}
TROUPE_ENTRY(mul);

std::string greet(std::string name, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += "hello " + name + ";";
  return out;
}
TROUPE_ENTRY(greet);

std::atomic<int> touched{0};
void touch(int) {
  ++touched;
}
TROUPE_ENTRY(touch);

int my_pid(int) {
  return static_cast<int>(::getpid());
}
TROUPE_ENTRY(my_pid);

int raise_value(int x) {
  throw ValueError("bad value " + std::to_string(x));
}
TROUPE_ENTRY(raise_value);

struct CustomError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
int raise_custom(int) {
  throw CustomError("custom");
}
TROUPE_ENTRY(raise_custom);

int raise_missing(int) {
  throw troupe::FileNotFoundError(ENOENT, "No such file: 'x'");
}
TROUPE_ENTRY(raise_missing);

int crash(int sig) {
  ::kill(::getpid(), sig);
  std::this_thread::sleep_for(10s);
  return 0;
}
TROUPE_ENTRY(crash);

int exit_with(int code) {
  troupe::sys_exit(code);
}
TROUPE_ENTRY(exit_with);

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
TROUPE_ENTRY(sleep_ms);

// Runs in 1 ms rounds until its stop is asked (at most `limit` rounds): the rounds it ran, or
// -1 if no stop came.
int until_stopped(int limit) {
  int rounds = 0;
  while (!stop_requested() && rounds < limit) {
    std::this_thread::sleep_for(1ms);
    ++rounds;
  }
  return stop_requested() ? rounds : -1;
}
TROUPE_ENTRY(until_stopped);

// Loses the parent's SIGINT as a loaded machine or TSan can: SIGINT is blocked and a stray
// SI_QUEUE SIGINT (value 0, no call's id) is pending when the parent's comes, so the kernel drops
// the parent's; then SIGINT is unblocked and the stray delivered. The rounds (1 ms) it ran before
// stop_requested() turned true, or -1 if it never did in `limit` rounds either side.
int stop_with_a_lost_signal(int limit) {
  sigset_t intr, old;
  sigemptyset(&intr);
  sigaddset(&intr, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &intr, &old);
  ::sigqueue(::getpid(), SIGINT, sigval{.sival_int = 0});
  int rounds = 0;
  while (!stop_requested() && rounds < limit) {
    std::this_thread::sleep_for(1ms);
    ++rounds;
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  for (int i = 0; i < limit && !stop_requested(); ++i) std::this_thread::sleep_for(1ms);
  return stop_requested() ? rounds : -1;
}
TROUPE_ENTRY(stop_with_a_lost_signal);

// Ignores stop requests; with `block_term`, SIGTERM too (only SIGKILL ends it).
int deaf(int block_term) {
  if (block_term) {
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    ::sigprocmask(SIG_BLOCK, &term, nullptr);
  }
  std::this_thread::sleep_for(20s);
  return 0;
}
TROUPE_ENTRY(deaf);

// Forks a process that holds the worker's end of its connection (and sleeps), writes its pid to
// `path`, then kills the worker: the pool sees the worker end while its socket stays open.
int die_leaving_the_socket_open(std::string path) {
  const pid_t child = ::fork();
  if (child == 0) {
    const timespec t{60, 0};
    ::nanosleep(&t, nullptr);
    ::_exit(0);
  }
  {
    std::ofstream out(path);
    out << child;
  }
  ::kill(::getpid(), SIGKILL);
  std::this_thread::sleep_for(10s);
  return 0;
}
TROUPE_ENTRY(die_leaving_the_socket_open);

int initialized = 0;
void init_worker(int v) {
  initialized = v;
}
TROUPE_ENTRY(init_worker);
int get_initialized(int) {
  return initialized;
}
TROUPE_ENTRY(get_initialized);
void failing_init(int) {
  throw ValueError("error in initializer");
}
TROUPE_ENTRY(failing_init);

int not_registered(int x) {
  return x;
}

// Fault injection in the manner of CPython's test_deadlock.py: values whose codec fails on one
// side only (only the test's own process has no parent process).
bool in_parent() {
  return !multiprocessing::parent_process().has_value();
}
struct FailsInWorker {  // decoding it in the worker fails
  int v = 0;
};
struct FailsToEncodeInWorker {  // encoding it in the worker fails
  int v = 0;
};
struct FailsInParent {  // decoding it in the parent fails
  int v = 0;
};

}  // namespace
}  // namespace troupe::concurrent::futures

namespace tcf = troupe::concurrent::futures;

template <>
struct troupe::Codec<tcf::FailsInWorker> : troupe::CodecVia<tcf::FailsInWorker, int> {
  static int to(const tcf::FailsInWorker& x) { return x.v; }
  static tcf::FailsInWorker from(int v) {
    if (!tcf::in_parent()) throw troupe::ValueError("cannot decode in the worker");
    return {v};
  }
};
template <>
struct troupe::Codec<tcf::FailsToEncodeInWorker>
    : troupe::CodecVia<tcf::FailsToEncodeInWorker, int> {
  static int to(const tcf::FailsToEncodeInWorker& x) {
    if (!tcf::in_parent()) throw troupe::ValueError("cannot encode in the worker");
    return x.v;
  }
  static tcf::FailsToEncodeInWorker from(int v) { return {v}; }
};
template <>
struct troupe::Codec<tcf::FailsInParent> : troupe::CodecVia<tcf::FailsInParent, int> {
  static int to(const tcf::FailsInParent& x) { return x.v; }
  static tcf::FailsInParent from(int v) {
    if (tcf::in_parent()) throw troupe::ValueError("cannot decode in the parent");
    return {v};
  }
};

namespace troupe::concurrent::futures {
namespace {

int take_fails_in_worker(FailsInWorker x) {
  return x.v;
}
TROUPE_ENTRY(take_fails_in_worker);
FailsToEncodeInWorker make_fails_to_encode(int v) {
  return {v};
}
TROUPE_ENTRY(make_fails_to_encode);
FailsInParent make_fails_in_parent(int v) {
  return {v};
}
TROUPE_ENTRY(make_fails_in_parent);

ProcessPoolExecutor* nested_pool = nullptr;  // under fork, the worker's copy of it
int submit_from_worker(int x) {
  return nested_pool->submit(square, x).result();
}
TROUPE_ENTRY(submit_from_worker);

using ProcessPoolTest = troupe::testing::StartMethodTest;

ProcessPoolOptions with(const std::string& method, ProcessPoolOptions o = {}) {
  o.mp_context = multiprocessing::get_context(method);
  if (!o.max_workers) o.max_workers = 2;
  return o;
}

TEST_P(ProcessPoolTest, SubmitAndResult) {
  ProcessPoolExecutor pool(with(GetParam()));
  auto f = pool.submit(square, 7);
  auto g = pool.submit(mul, 6, 7);
  auto h = pool.submit(greet, std::string("bob"), 2);
  EXPECT_EQ(f.result(30s), 49);
  EXPECT_EQ(g.result(30s), 42);
  EXPECT_EQ(h.result(30s), "hello bob;hello bob;");
  pool.submit(touch, 1).result(30s);  // a void call
  EXPECT_EQ(touched.load(), 0);       // it ran in the worker, not here
}

TEST_P(ProcessPoolTest, CallsRunInOtherProcesses) {
  ProcessPoolExecutor pool(with(GetParam()));
  std::set<int> pids;
  std::vector<Future<int>> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(pool.submit(my_pid, i));
  for (auto& f : fs) pids.insert(f.result(30s));
  EXPECT_EQ(pids.count(static_cast<int>(::getpid())), 0u);
  EXPECT_LE(pids.size(), 2u);
}

TEST_P(ProcessPoolTest, ExceptionsCrossWithTheirClass) {
  ProcessPoolExecutor pool(with(GetParam()));
  auto f = pool.submit(raise_value, 3);
  try {
    f.result(30s);
    FAIL() << "no ValueError";
  } catch (const ValueError& e) {
    // The message, then where it was raised (doc/errors.md).
    EXPECT_THAT(e.what(), StartsWith("bad value 3\n---\nRemote ValueError in raise_value(3), "));
    ASSERT_NE(e.remote(), nullptr);
    EXPECT_EQ(e.remote()->message, "bad value 3");
  }
  try {
    pool.submit(raise_missing, 0).result(30s);
    FAIL() << "no FileNotFoundError";
  } catch (const troupe::FileNotFoundError& e) {
    EXPECT_EQ(e.errno_value(), ENOENT);
    EXPECT_THAT(e.what(), StartsWith("No such file: 'x'\n---\n"));  // as raised, once
  }
  try {
    pool.submit(raise_custom, 0).result(30s);
    FAIL() << "no Exception";
  } catch (const troupe::Exception& e) {
    EXPECT_THAT(e.what(), HasSubstr("CustomError: custom"));
  }
  EXPECT_EQ(pool.submit(square, 3).result(30s), 9);  // the pool goes on
}

TEST_P(ProcessPoolTest, RemoteErrorsNameTheWorkerAndTheCall) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1}));
  const int pid = pool.submit(my_pid, 0).result(30s);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  auto check = [&](const std::exception& e, const std::string& arguments) {
    const ErrorEnvelope* remote = remote_envelope(e);
    ASSERT_NE(remote, nullptr) << e.what();
    EXPECT_EQ(remote->origin.pid, pid);
    EXPECT_EQ(remote->origin.host, host);
    EXPECT_THAT(remote->origin.process_name, HasSubstr("-worker-"));
    EXPECT_EQ(remote->context.arguments, arguments);
    EXPECT_THAT(e.what(), HasSubstr(", in process " + remote->origin.process_name + " (pid " +
                                    std::to_string(pid) + ") on host " + host));
    EXPECT_THAT(e.what(), EndsWith("\n---"));
  };
  try {
    pool.submit(raise_value, 3).result(30s);
    ADD_FAILURE() << "no ValueError";
  } catch (const ValueError& e) {
    check(e, "(3)");
    EXPECT_EQ(e.remote()->context.call, "raise_value");
  }
  try {
    pool.submit(raise_custom, 0).result(30s);
    ADD_FAILURE() << "no Exception";
  } catch (const troupe::Exception& e) {
    check(e, "(0)");
    EXPECT_EQ(e.remote()->context.call, "raise_custom");
    EXPECT_THAT(e.remote()->type_name, EndsWith("CustomError"));
  }
  std::vector<int> xs{1, 2};
  try {
    for (int v : pool.map({.timeout = 60s, .chunksize = 2}, raise_value, xs)) (void)v;
    ADD_FAILURE() << "no ValueError";
  } catch (const ValueError& e) {
    check(e, "one of [1, 2]");  // a map chunk: the failing call is one of its items
    EXPECT_THAT(e.what(), HasSubstr("Remote ValueError in raise_value(one of [1, 2]), "));
  }
}

TEST_P(ProcessPoolTest, UnregisteredFunctionIsAValueError) {
  ProcessPoolExecutor pool(with(GetParam()));
  EXPECT_THROW((void)pool.submit(not_registered, 1), ValueError);
}

TEST_P(ProcessPoolTest, MapInOrderWithChunks) {
  ProcessPoolExecutor pool(with(GetParam()));
  std::vector<int> xs;
  for (int i = 0; i < 50; ++i) xs.push_back(i);
  for (std::size_t chunk : {1u, 3u, 64u}) {
    std::vector<int> got;
    for (int v : pool.map({.timeout = 60s, .chunksize = chunk}, square, xs)) got.push_back(v);
    ASSERT_EQ(got.size(), xs.size()) << "chunksize " << chunk;
    for (int i = 0; i < 50; ++i) EXPECT_EQ(got[i], i * i);
  }
  std::vector<int> got;
  for (int v : pool.map(mul, xs, std::vector<int>{2, 2, 2})) got.push_back(v);
  EXPECT_EQ(got, (std::vector<int>{0, 2, 4}));
}

TEST_P(ProcessPoolTest, MapExceptionAtItsPosition) {
  ProcessPoolExecutor pool(with(GetParam()));
  std::vector<int> xs{1, 2, 3};
  auto results = pool.map({.timeout = 60s}, raise_value, xs);
  EXPECT_THROW((void)results.begin(), ValueError);
}

TEST_P(ProcessPoolTest, Initializer) {
  ProcessPoolExecutor pool(with(GetParam(), {.initializer = {init_worker, 17}}));
  EXPECT_EQ(pool.submit(get_initialized, 0).result(30s), 17);
}

TEST_P(ProcessPoolTest, FailingInitializerBreaksThePool) {
  ProcessPoolExecutor pool(with(GetParam(), {.initializer = {failing_init, 1}}));
  ::testing::internal::CaptureStderr();
  auto f = pool.submit(square, 2);
  try {
    f.result(30s);
    FAIL() << "no BrokenProcessPool";
  } catch (const BrokenProcessPool& e) {
    EXPECT_THAT(e.what(), HasSubstr("A process initializer failed"));
    EXPECT_THAT(e.what(), HasSubstr("error in initializer"));
  }
  EXPECT_TRUE(troupe::testing::eventually([&] {
    try {
      (void)pool.submit(square, 2);
      return false;
    } catch (const BrokenProcessPool&) {
      return true;
    }
  }));
  pool.shutdown();
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("Exception in initializer:"));
}

TEST_P(ProcessPoolTest, KilledWorkerBreaksThePoolNamingTheSignal) {
  ProcessPoolExecutor pool(with(GetParam()));
  auto f = pool.submit(crash, SIGKILL);
  try {
    f.result(30s);
    FAIL() << "no BrokenProcessPool";
  } catch (const BrokenProcessPool& e) {
    EXPECT_THAT(e.what(), HasSubstr("terminated abruptly"));
    EXPECT_THAT(e.what(), HasSubstr("killed by signal 9 (SIGKILL)"));
  }
  EXPECT_TRUE(troupe::testing::eventually([&] {
    try {
      (void)pool.submit(square, 2);
      return false;
    } catch (const BrokenProcessPool&) {
      return true;
    }
  }));
}

TEST_P(ProcessPoolTest, ExitingWorkerBreaksThePoolNamingTheCode) {
  ProcessPoolExecutor pool(with(GetParam()));
  try {
    pool.submit(exit_with, 3).result(30s);
    FAIL() << "no BrokenProcessPool";
  } catch (const BrokenProcessPool& e) {
    EXPECT_THAT(e.what(), HasSubstr("exited with code 3"));
  }
}

TEST_P(ProcessPoolTest, ReplaceWorkerFailsOnlyTheDeadWorkersCall) {
  if (GetParam() == "fork") {
    EXPECT_THROW(
        ProcessPoolExecutor(with("fork", {.on_worker_death = OnWorkerDeath::replace_worker})),
        ValueError);
    return;
  }
  ProcessPoolExecutor pool(
      with(GetParam(), {.max_workers = 1, .on_worker_death = OnWorkerDeath::replace_worker}));
  auto before = pool.submit(square, 3);
  auto dead = pool.submit(crash, SIGKILL);
  auto after = pool.submit(square, 4);
  EXPECT_EQ(before.result(30s), 9);
  EXPECT_THROW(dead.result(30s), BrokenProcessPool);
  EXPECT_EQ(after.result(30s), 16);
  EXPECT_EQ(pool.submit(square, 5).result(30s), 25);
}

TEST_P(ProcessPoolTest, RequestStopReachesARunningCallCooperatively) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1, .stop_grace = 20s}));
  const int pid = pool.submit(my_pid, 0).result(30s);
  auto f = pool.submit(until_stopped, 20000);
  auto queued = pool.submit(square, 6);
  auto pending = pool.submit(square, 7);  // not sent yet: one worker holds at most two
  EXPECT_TRUE(troupe::testing::eventually([&] { return f.running(); }));
  EXPECT_FALSE(f.cancel());  // Python's cancel() cannot stop it
  EXPECT_TRUE(f.request_stop());
  EXPECT_GE(f.result(30s), 0);     // it saw stop_requested() and returned
  EXPECT_FALSE(f.request_stop());  // done
  EXPECT_EQ(queued.result(30s), 36);
  if (pending.request_stop()) {
    EXPECT_TRUE(pending.cancelled() || pending.result(30s) == 49);
  }
  EXPECT_EQ(pool.submit(my_pid, 0).result(30s), pid);  // the same worker: nothing was killed
  EXPECT_FALSE(stop_requested());                      // here, outside a worker
}

TEST_P(ProcessPoolTest, RequestStopSurvivesALostSignal) {
  // The stop is on the worker's board, so a SIGINT the kernel drops (a standard signal already
  // pending) or TSan defers cannot lose it: the call sees stop_requested() at once, SIGINT or not.
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1, .stop_grace = 60s}));
  const int pid = pool.submit(my_pid, 0).result(30s);
  auto f = pool.submit(stop_with_a_lost_signal, 3000);
  EXPECT_TRUE(troupe::testing::eventually([&] { return f.running(); }));
  EXPECT_TRUE(f.request_stop());
  EXPECT_GE(f.result(60s), 0);  // seen while SIGINT was blocked, not after the grace
  EXPECT_EQ(pool.submit(my_pid, 0).result(30s), pid);  // nothing was killed
}

TEST_P(ProcessPoolTest, NegativeStopGraceIsAValueError) {
  EXPECT_THROW(ProcessPoolExecutor(with(GetParam(), {.stop_grace = -1ms})), ValueError);
}

TEST_P(ProcessPoolTest, RequestStopEscalatesToSigtermThenSigkill) {
  // A call that ignores the request: SIGTERM after the grace, then SIGKILL if that is blocked.
  // The call fails with CancelledError naming the signal; the call queued behind it runs on a new
  // worker and the pool keeps working, whatever on_worker_death says (not under fork: a process
  // with threads cannot fork a replacement, and the pool breaks instead).
  for (bool block_term : {false, true}) {
    SCOPED_TRACE(block_term);
    ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1, .stop_grace = 100ms}));
    const int pid = pool.submit(my_pid, 0).result(30s);
    auto f = pool.submit(deaf, block_term ? 1 : 0);
    auto behind = pool.submit(square, 4);
    EXPECT_TRUE(troupe::testing::eventually([&] { return f.running(); }));
    EXPECT_TRUE(f.request_stop());
    try {
      (void)f.result(30s);
      ADD_FAILURE() << "no CancelledError";
    } catch (const CancelledError& e) {
      EXPECT_THAT(e.what(), HasSubstr("request_stop"));
      EXPECT_THAT(e.what(), HasSubstr(block_term ? "SIGKILL" : "SIGTERM"));
    }
    if (GetParam() == "fork") {
      EXPECT_THROW(behind.result(30s), BrokenProcessPool);
      continue;
    }
    EXPECT_EQ(behind.result(30s), 16);
    const int replacement = pool.submit(my_pid, 0).result(30s);
    EXPECT_NE(replacement, pid);
  }
}

// In a process of its own: a pool running a long call; the worker's pid goes to `out`.
void own_a_pool(multiprocessing::Connection& out, std::string method) {
  ProcessPoolExecutor pool(with(method, {.max_workers = 1, .stop_grace = 200ms}));
  auto f = pool.submit(sleep_ms, 20000);
  for (int i = 0; i < 10000 && !f.running(); ++i) std::this_thread::sleep_for(1ms);
  out.send(static_cast<std::int32_t>(pool.worker_pids().front()));
  std::this_thread::sleep_for(30s);  // until killed
}
TROUPE_ENTRY(own_a_pool);

// Gone, or a zombie nobody reaps (it is not this process's child).
bool ended(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto close = line.rfind(')');
  return close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'Z';
}

TEST_P(ProcessPoolTest, WorkersEndWhenThePoolsProcessIsKilled) {
  // The pool's process dies without a word (SIGKILL) while a worker runs a 20 s call: the worker
  // ends too, at once, instead of running on for nobody.
  auto [r, w] = multiprocessing::Pipe(false);
  multiprocessing::Process owner(multiprocessing::ProcessOptions{.start_method = "spawn"},
                                 &own_a_pool, std::move(w), std::string(GetParam()));
  owner.start();
  const int worker = r.recv<std::int32_t>();
  ASSERT_FALSE(ended(worker));
  owner.kill();
  owner.join();
  EXPECT_TRUE(troupe::testing::eventually([&] { return ended(worker); }, 10s));
}

TEST_P(ProcessPoolTest, FaultsInTheCodecFailThatCallOnly) {
  ProcessPoolExecutor pool(with(GetParam()));
  try {
    pool.submit(take_fails_in_worker, FailsInWorker{1}).result(30s);
    FAIL() << "decoding the call in the worker should fail";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot decode in the worker"));
  }
  try {
    pool.submit(make_fails_to_encode, 1).result(30s);
    FAIL() << "encoding the result in the worker should fail";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot encode in the worker"));
  }
  try {
    pool.submit(make_fails_in_parent, 1).result(30s);
    FAIL() << "decoding the result in the parent should fail";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot decode in the parent"));
  }
  EXPECT_EQ(pool.submit(square, 6).result(30s), 36);
}

TEST_P(ProcessPoolTest, MaxTasksPerChild) {
  if (GetParam() == "fork") {
    try {
      ProcessPoolExecutor pool(with("fork", {.max_tasks_per_child = 1}));
      FAIL() << "no ValueError";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.what(), HasSubstr("incompatible with the 'fork' start method"));
    }
    return;
  }
  // Every worker started is a process start (half a second under TSan): a few dozen in all.
  for (int per_child : {1, 3}) {
    ProcessPoolExecutor pool(with(GetParam(), {.max_tasks_per_child = per_child}));
    std::vector<Future<int>> fs;
    for (int i = 0; i < 9; ++i) fs.push_back(pool.submit(my_pid, i));
    std::set<int> pids;
    for (auto& f : fs) pids.insert(f.result(60s));
    EXPECT_GE(pids.size(), static_cast<std::size_t>(9 / per_child)) << per_child;
  }
  EXPECT_THROW(ProcessPoolExecutor(with(GetParam(), {.max_tasks_per_child = 0})), ValueError);
}

TEST_P(ProcessPoolTest, ShutdownRules) {
  ProcessPoolExecutor pool(with(GetParam()));
  EXPECT_EQ(pool.submit(square, 2).result(30s), 4);
  pool.shutdown();
  EXPECT_THROW((void)pool.submit(square, 2), RuntimeError);
  pool.shutdown();
}

TEST_P(ProcessPoolTest, ShutdownCancelFutures) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1}));
  std::vector<Future<int>> fs;
  for (int i = 0; i < 30; ++i) fs.push_back(pool.submit(sleep_ms, 20));
  pool.shutdown(true, true);
  int cancelled = 0, finished = 0;
  for (auto& f : fs) {
    ASSERT_TRUE(f.done());
    if (f.cancelled()) {
      ++cancelled;
    } else {
      ++finished;
      EXPECT_EQ(f.result(), 20);
    }
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(finished, 0);
}

TEST_P(ProcessPoolTest, TerminateAndKillWorkers) {
  for (bool kill : {false, true}) {
    ProcessPoolExecutor pool(with(GetParam()));
    auto f = pool.submit(sleep_ms, 20000);
    EXPECT_TRUE(troupe::testing::eventually([&] { return f.running(); }));
    std::this_thread::sleep_for(50ms);  // sent to the worker
    if (kill)
      pool.kill_workers();
    else
      pool.terminate_workers();
    try {
      f.result(30s);
      FAIL() << "no BrokenProcessPool";
    } catch (const BrokenProcessPool& e) {
      EXPECT_THAT(e.what(), HasSubstr(kill ? "SIGKILL" : "SIGTERM"));
    }
    EXPECT_THROW((void)pool.submit(square, 1), RuntimeError);
  }
}

TEST_P(ProcessPoolTest, AsCompletedOverProcessFutures) {
  ProcessPoolExecutor pool(with(GetParam()));
  std::vector<Future<int>> fs;
  for (int ms : {60, 1, 30}) fs.push_back(pool.submit(sleep_ms, ms));
  std::set<int> seen;
  for (const auto& f : as_completed(fs, 60s)) seen.insert(f.result());
  EXPECT_EQ(seen, (std::set<int>{1, 30, 60}));
}

TEST_P(ProcessPoolTest, UsingThePoolFromAWorkerRaises) {
  if (GetParam() != "fork") GTEST_SKIP() << "only a forked worker has a copy of the pool";
  ProcessPoolExecutor pool(with(GetParam()));
  nested_pool = &pool;
  try {
    pool.submit(submit_from_worker, 3).result(30s);
    FAIL() << "no RuntimeError";
  } catch (const RuntimeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot be used from process"));
  }
  nested_pool = nullptr;
}

// A caller waiting in result() reads its worker's results itself (one hand-off fewer than
// through the pool's thread): the results of other calls it reads on the way reach their futures.
TEST_P(ProcessPoolTest, AWaitingCallerDeliversEveryResultItReads) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1}));
  EXPECT_EQ(pool.submit(square, 1).result(30s), 1);  // timed: quick calls then travel together
  std::vector<Future<int>> fs;
  for (int i = 0; i < 200; ++i) fs.push_back(pool.submit(square, i));
  EXPECT_EQ(fs.back().result(30s), 199 * 199);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].result(30s), i * i);
}

// The next call waiting in the pool goes to the worker once a waiting caller has read its result
// (not only when the pool's thread wakes), and a done callback that runs on the waiting caller's
// thread may itself wait on a future of the same worker.
TEST_P(ProcessPoolTest, ADoneCallbackMayWaitOnTheNextCallOfTheSameWorker) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1}));
  auto first = pool.submit(sleep_ms, 30);
  auto second = pool.submit(sleep_ms, 20);  // waits in the pool: the worker runs one slow call
  std::atomic<int> seen{0};
  first.add_done_callback([&](const Future<int>&) { seen = second.result(30s); });
  EXPECT_EQ(first.result(30s), 30);
  EXPECT_TRUE(troupe::testing::eventually([&] { return seen.load() == 20; }));
  pool.shutdown();  // returns: the pool's thread sees the pool idle though it read nothing
}

// A wait that times out leaves the reading to the pool's thread, which delivers the result later.
TEST_P(ProcessPoolTest, AResultThatTimesOutLeavesTheResultToThePool) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1}));
  auto f = pool.submit(sleep_ms, 300);
  EXPECT_THROW((void)f.result(20ms), TimeoutError);
  std::vector<Future<int>> fs{f};
  int n = 0;
  for (const auto& done : as_completed(fs, 60s)) {  // no result(): only the pool's thread reads
    EXPECT_EQ(done.result(), 300);
    ++n;
  }
  EXPECT_EQ(n, 1);
}

// A worker that dies while a process it started still holds its socket: the caller reading that
// socket in result() sees no end of file, yet the call fails at once (it checks the worker
// between slices of its wait, and hands the reading back for the pool to reap it).
TEST_P(ProcessPoolTest, AWorkerDeadWithItsSocketStillOpenFailsTheWaitingCall) {
  ProcessPoolExecutor pool(with(GetParam(), {.max_workers = 1}));
  const std::string path =
      ::testing::TempDir() + "troupe-ppe-holder-" + std::to_string(::getpid()) + "-" + GetParam();
  auto f = pool.submit(die_leaving_the_socket_open, path);
  try {
    f.result(30s);
    ADD_FAILURE() << "no BrokenProcessPool";
  } catch (const BrokenProcessPool& e) {
    EXPECT_THAT(e.what(), HasSubstr("SIGKILL"));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a BrokenProcessPool: " << e.what();
  }
  pid_t holder = 0;
  EXPECT_TRUE(troupe::testing::eventually([&] {
    std::ifstream in(path);
    return static_cast<bool>(in >> holder) && holder > 0;
  }));
  if (holder > 0) {
    EXPECT_EQ(::kill(holder, 0), 0) << "the socket's holder ended first: the test proves nothing";
    ::kill(holder, SIGKILL);
  }
  std::remove(path.c_str());
}

TEST_P(ProcessPoolTest, MaxWorkersMustBePositive) {
  EXPECT_THROW(ProcessPoolExecutor(with(GetParam(), {.max_workers = 0})), ValueError);
  EXPECT_THROW(ProcessPoolExecutor(with(GetParam(), {.max_workers = -1})), ValueError);
}

TROUPE_PER_START_METHOD(ProcessPoolTest);

}  // namespace
}  // namespace troupe::concurrent::futures
