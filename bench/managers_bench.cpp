// bench/managers_bench.cpp — managers and proxies (issue 17), the C++ side of
// bench/managers_python.py, with troupe's own Pipe ping-pong of the same size as the baseline:
// - a proxy method call round trip (Maths.add(i, 1), a registered C++ class) through a typed
//   proxy (call<&Maths::add>) and through _callmethod, over a Unix abstract socket and TCP
//   127.0.0.1; the server in a child process (BaseManager::start, fork), as a user runs it;
// - the baseline: a Pipe() ping-pong between this process and a child process (and between two
//   threads, as connection_bench's), each message the size of the call's request frame;
// - pipelined calls: async_call with W calls in flight on one proxy, calls/s;
// - connect + create + first call, and connect alone (BaseManager::connect on a new manager);
// - Process(fork) start + join with and without a manager link's thread running (the parking
//   of troupe's threads across a fork);
// - the docs' queue recipe: a manager serving a task and a result queue, 4 worker processes
//   (troupe Process, fork) that connect by address and authkey, take n until a negative one and
//   put [n, n*n]; this process puts N tasks and collects the N results (checked): tasks/s;
// - a managed Pool (SyncManager::Pool(2), Python's `manager.Pool(2)`): apply(square, i) one at a
//   time, and map(square, range(1000)); the baseline troupe's own Pool(2) in this process;
// - `managers_bench --clients-memory`: the server's RSS and threads before, with 1000 client
//   connections (in a few client processes) each making 1000 calls, and after they are gone;
//   prints JSON (bench/compare.py reads it).
// bench/compare.py runs it next to bench/managers_python.py.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "troupe/entry.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/managers.hpp"
#include "troupe/multiprocessing/pool.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "manager.capnp.h"
#include "maths.hpp"

namespace bench {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;

// ---- what the managers host -------------------------------------------------------------

/// The docs' recipe: `QueueManager.register('get_task_queue', callable=lambda: queue)`.
struct QueueManager : mm::Manager<QueueManager> {
  using Manager::Manager;
};

const bool registered = [] {
  MathsManager::register_<Maths>("Maths");
  // The same class with RegisterOptions::quick (add never blocks): its calls run inside the
  // read handler, not after it, watched for blocking.
  MathsManager::register_<Maths>("QuickMaths", {.quick = true});
  mm::register_shared_queue(QueueManager::registry(), "get_task_queue");
  mm::register_shared_queue(QueueManager::registry(), "get_result_queue");
  return true;
}();

/// The authkey of every manager here (hex, so it travels to the workers as text, as the
/// recipe's command lines do).
std::string& authkey_hex() {
  static std::string hex = [] {
    static const char digits[] = "0123456789abcdef";
    std::string h;
    const auto key = mp::AuthenticationString::random();
    for (std::byte b : key.bytes()) {
      h += digits[std::to_integer<int>(b) >> 4];
      h += digits[std::to_integer<int>(b) & 15];
    }
    return h;
  }();
  return hex;
}

/// 0: a new Unix abstract name (start()'s default); 1: TCP 127.0.0.1, a free port.
mm::ManagerOptions server_options(std::int64_t family) {
  mm::ManagerOptions o;
  if (family == 1) o.address = mp::Address::parse("127.0.0.1:0");
  o.authkey = mp::AuthenticationString::from_hex(authkey_hex());
  o.start_method = "fork";
  // TROUPE_BENCH_SERVER_THREADS=N: the server's threads (ServerOptions::threads), to compare.
  if (const char* t = std::getenv("TROUPE_BENCH_SERVER_THREADS"))
    o.server.threads = static_cast<unsigned>(std::atoi(t));
  o.fork_with_threads = true;  // this process may run a link's thread; the server uses none
  return o;
}

/// A client's options for the server at `address`.
mm::ManagerOptions client_options(const std::string& address) {
  mm::ManagerOptions o;
  o.address = mp::Address::parse(address);
  o.authkey = mp::AuthenticationString::from_hex(authkey_hex());
  return o;
}

const char* family_label(std::int64_t family) {
  return family == 1 ? "tcp" : "unix";
}

/// The size of a call's request frame, as the link builds it (Maths.add(i, 1), typed).
std::size_t call_frame_bytes() {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<troupe::proto::manager::Request>();
  r.setCallId(1000);
  r.setLane(1);
  auto c = r.initCall();
  c.setObject(1);
  c.setMethod("add");
  c.setArgsFingerprint(0x0123456789abcdefULL);
  auto args = c.initArgs(2);
  troupe::Codec<std::int64_t>::encode(12345, args[0]);
  troupe::Codec<std::int64_t>::encode(1, args[1]);
  return capnp::computeSerializedSizeInWords(mb) * sizeof(capnp::word);
}

// ---- where the time goes: context switches and CPU of both sides, per call -----------------

/// Context switches (voluntary + involuntary) of every thread of process `pid` ("self": this
/// one), and its CPU time in seconds (user + system), from /proc.
struct Switches {
  long switches = 0;
  double cpu = 0;
};
Switches switches_of(const std::string& pid) {
  Switches s;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + pid + "/task", ec)) {
    std::ifstream in(task.path() / "status");
    std::string line;
    while (std::getline(in, line))
      if (line.starts_with("voluntary_ctxt_switches:") ||
          line.starts_with("nonvoluntary_ctxt_switches:"))
        s.switches += std::stol(line.substr(line.find(':') + 1));
  }
  std::ifstream stat("/proc/" + pid + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  std::istringstream rest(text.substr(text.rfind(')') + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  s.cpu = static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  return s;
}

/// Counters per call: the client's and the server's context switches and the server's CPU.
class Meter {
public:
  explicit Meter(int server_pid)
      : server_(std::to_string(server_pid)), c0_(switches_of("self")), s0_(switches_of(server_)) {}
  void report(benchmark::State& state, double calls) const {
    const Switches c1 = switches_of("self"), s1 = switches_of(server_);
    if (calls <= 0) return;
    state.counters["client_switches"] = static_cast<double>(c1.switches - c0_.switches) / calls;
    state.counters["server_switches"] = static_cast<double>(s1.switches - s0_.switches) / calls;
    state.counters["server_cpu_us"] = (s1.cpu - s0_.cpu) * 1e6 / calls;
  }

private:
  std::string server_;
  Switches c0_, s0_;
};

// ---- proxy call round trips -------------------------------------------------------------

// range(0): 0 Unix abstract, 1 TCP. One server per run, a warm-up of 1000 calls first.
void BM_ProxyCall_typed(benchmark::State& state) {
  MathsManager m(server_options(state.range(0)));
  m.start();
  auto p = m.create<Maths>("QuickMaths");
  for (std::int64_t i = 0; i < 1000; ++i) (void)p.call<&Maths::add>(i, 1);
  std::int64_t i = 0;
  const Meter meter(*m.process()->pid());
  for (auto _ : state) {
    const std::int64_t r = p.call<&Maths::add>(i, 1);
    if (r != i + 1) state.SkipWithError("Maths.add returned a wrong sum");
    ++i;
  }
  meter.report(state, static_cast<double>(state.iterations()));
  state.SetLabel(family_label(state.range(0)));
}
BENCHMARK(BM_ProxyCall_typed)->Arg(0)->Arg(1)->UseRealTime();

void BM_ProxyCall_callmethod(benchmark::State& state) {
  MathsManager m(server_options(state.range(0)));
  m.start();
  mm::BaseProxy p = m.create("Maths");
  for (std::int64_t i = 0; i < 1000; ++i) (void)p._callmethod<std::int64_t>("add", i, 1);
  std::int64_t i = 0;
  const Meter meter(*m.process()->pid());
  for (auto _ : state) {
    const auto r = p._callmethod<std::int64_t>("add", i, std::int64_t{1});
    if (r != i + 1) state.SkipWithError("Maths.add returned a wrong sum");
    ++i;
  }
  meter.report(state, static_cast<double>(state.iterations()));
  state.SetLabel(family_label(state.range(0)));
}
BENCHMARK(BM_ProxyCall_callmethod)->Arg(0)->Arg(1)->UseRealTime();

// A managed queue's put then get, one at a time (each call a round trip, as the recipe's calls
// are): the time of a put + get pair (items: calls), a built-in object's calls (their answers go
// through the queue's wait machinery, not straight back as Maths.add's do).
void BM_QueueCall(benchmark::State& state) {
  QueueManager m(server_options(state.range(0)));
  m.start();
  const mm::QueueProxy<std::int64_t> q(m.create("get_task_queue"));
  for (std::int64_t i = 0; i < 500; ++i) {
    q.put(i);
    (void)q.get();
  }
  std::int64_t i = 0;
  const Meter meter(*m.process()->pid());
  for (auto _ : state) {
    q.put(i);
    if (q.get() != i) state.SkipWithError("the queue gave back another item");
    ++i;
  }
  meter.report(state, 2.0 * static_cast<double>(state.iterations()));
  state.SetItemsProcessed(2 * state.iterations());
  state.SetLabel(std::string(family_label(state.range(0))) + ", put + get");
}
BENCHMARK(BM_QueueCall)->Arg(0)->Arg(1)->UseRealTime();

// ---- the baseline: Pipe ping-pong of a call's size --------------------------------------

// Echoes every message until an empty one (a forked child also holds the parent's end, so it
// would never see the end of the stream).
void echo(mp::Connection& c) {
  try {
    for (;;) {
      auto m = c.recv_bytes();
      if (m.empty()) return;
      c.send_bytes(m);
    }
  } catch (...) {
  }
}
TROUPE_ENTRY(echo);

// Between this process and a child (the shape of a call to a server process).
void BM_PipePingPong_process(benchmark::State& state) {
  auto [a, b] = mp::Pipe();
  mp::ProcessOptions po;
  po.start_method = "fork";
  po.fork_with_threads = true;
  mp::Process child(po, &echo, std::move(b));
  child.start();
  b.close();
  const std::string msg(call_frame_bytes(), 'x');
  const Meter meter(*child.pid());
  for (auto _ : state) {
    a.send_bytes(msg);
    benchmark::DoNotOptimize(a.recv_bytes());
  }
  meter.report(state, static_cast<double>(state.iterations()));
  a.send_bytes(std::string_view());
  child.join(10s);
  if (child.is_alive()) {
    child.kill();
    child.join();
  }
  a.close();
  state.counters["bytes"] = static_cast<double>(msg.size());
}
BENCHMARK(BM_PipePingPong_process)->UseRealTime();

// Between two threads, as connection_bench's BM_PipePingPong64_troupe, at the call's size.
void BM_PipePingPong_thread(benchmark::State& state) {
  auto [a, b] = mp::Pipe();
  std::thread t([&b = b] { echo(b); });
  const std::string msg(call_frame_bytes(), 'x');
  for (auto _ : state) {
    a.send_bytes(msg);
    benchmark::DoNotOptimize(a.recv_bytes());
  }
  a.send_bytes(std::string_view());
  t.join();
  a.close();
  state.counters["bytes"] = static_cast<double>(msg.size());
}
BENCHMARK(BM_PipePingPong_thread)->UseRealTime();

// ---- pipelined calls ------------------------------------------------------------------

// One round of `calls` asynchronous calls, `window` of them in flight: `next` makes one (counting
// `started`), and its completion (on `ctx`, run here) counts `done` and `wrong` and makes the next
// while any are left. Whether every call came back right.
bool windowed_round(boost::asio::io_context& ctx, std::int64_t window, std::int64_t calls,
                    std::int64_t& started, std::int64_t& done, const std::int64_t& wrong,
                    const std::function<void()>& next) {
  started = done = 0;
  for (std::int64_t k = 0; k < window && started < calls; ++k) next();
  ctx.run();
  ctx.restart();
  return done == calls && wrong == 0;
}

// range(0): the family; range(1): calls in flight. Per iteration, 20000 async_call on one proxy,
// each completion (on an io_context this thread runs) starting the next while any are left.
void BM_ProxyPipelined(benchmark::State& state) {
  MathsManager m(server_options(state.range(0)));
  m.start();
  auto p = m.create<Maths>("QuickMaths");
  const std::int64_t window = state.range(1);
  constexpr std::int64_t kCalls = 20000;
  boost::asio::io_context ctx;
  std::int64_t started = 0, done = 0, wrong = 0;
  std::function<void()> next = [&] {
    const std::int64_t i = started++;
    p.async_call<&Maths::add>(
        i, std::int64_t{1},
        boost::asio::bind_executor(ctx, [&, i](std::exception_ptr e, std::int64_t r) {
          ++done;
          if (e || r != i + 1) ++wrong;
          if (started < kCalls) next();
        }));
  };
  const Meter meter(*m.process()->pid());
  for (auto _ : state)
    if (!windowed_round(ctx, window, kCalls, started, done, wrong, next)) {
      state.SkipWithError("a pipelined call failed or returned a wrong sum");
      break;
    }
  meter.report(state, static_cast<double>(state.iterations() * kCalls));
  state.SetItemsProcessed(state.iterations() * kCalls);
  state.SetLabel(std::string(family_label(state.range(0))) + ", " + std::to_string(window) +
                 " in flight");
}
BENCHMARK(BM_ProxyPipelined)
    ->Args({0, 64})
    ->Args({0, 256})
    ->Args({1, 64})
    ->Args({1, 256})
    ->UseRealTime();

// range(0): MiB an argument; range(1): calls in flight. 64 async_call<&Maths::length> a round,
// each completion starting the next: with more than one in flight the link's thread writes
// them (queued), so the bytes a request is copied on its way show here.
void BM_ProxyLargeArgument(benchmark::State& state) {
  MathsManager m(server_options(0));
  m.start();
  auto p = m.create<Maths>("Maths");
  const std::vector<std::byte> arg(static_cast<std::size_t>(state.range(0)) << 20, std::byte{7});
  const std::int64_t window = state.range(1);
  constexpr std::int64_t kCalls = 64;
  boost::asio::io_context ctx;
  std::int64_t started = 0, done = 0, wrong = 0;
  std::function<void()> next = [&] {
    ++started;
    p.async_call<&Maths::length>(
        arg, boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::int64_t r) {
          ++done;
          if (e || r != static_cast<std::int64_t>(arg.size())) ++wrong;
          if (started < kCalls) next();
        }));
  };
  for (auto _ : state)
    if (!windowed_round(ctx, window, kCalls, started, done, wrong, next)) {
      state.SkipWithError("a call failed or returned a wrong length");
      break;
    }
  state.SetBytesProcessed(state.iterations() * kCalls * static_cast<std::int64_t>(arg.size()));
  state.SetLabel(std::to_string(state.range(0)) + " MiB arguments, " + std::to_string(window) +
                 " in flight, Unix");
}
BENCHMARK(BM_ProxyLargeArgument)->Args({4, 1})->Args({4, 4})->UseRealTime();

// ---- a fork with a manager link open ---------------------------------------------------

void nothing() {}
TROUPE_ENTRY(nothing);

// Process(fork).start() + join() of a target that returns at once. range(0): 0, no manager
// link in this process; 1, a proxy's link open with its thread running (started by an async
// call), which each fork asks to park (runtime::ForkParking) and waits for.
void BM_ForkStartJoin_link(benchmark::State& state) {
  const bool linked = state.range(0) == 1;
  std::optional<MathsManager> m;
  std::optional<mm::Proxy<Maths>> p;
  if (linked) {
    m.emplace(server_options(0));
    m->start();
    p.emplace(m->create<Maths>("QuickMaths"));
    boost::asio::io_context ctx;
    std::int64_t sum = 0;
    p->async_call<&Maths::add>(
        std::int64_t{1}, std::int64_t{2},
        boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::int64_t r) {
          if (!e) sum = r;
        }));
    ctx.run();
    if (sum != 3) state.SkipWithError("Maths.add(1, 2) was not 3");
  }
  for (auto _ : state) {
    mp::Process c({.start_method = "fork"}, nothing);
    c.start();
    c.join();
    if (c.exitcode() != 0) state.SkipWithError("the child failed");
  }
  state.SetLabel(linked ? "fork, a manager link's thread running" : "fork, no manager link");
}
BENCHMARK(BM_ForkStartJoin_link)->Arg(0)->Arg(1)->UseRealTime();

// ---- connect --------------------------------------------------------------------------

// range(0): the family; range(1): 1 = connect + create + first call, 0 = connect alone. A new
// manager object per round (as Python's measurement); the time stops at the call's result, the
// proxy and the link are dropped outside it.
void BM_Connect(benchmark::State& state) {
  MathsManager server(server_options(state.range(0)));
  server.start();
  const std::string address = server.address().str();
  const bool create_and_call = state.range(1) == 1;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    std::optional<MathsManager> c;
    c.emplace(client_options(address));
    c->connect();
    std::optional<mm::Proxy<Maths>> p;
    if (create_and_call) {
      p.emplace(c->create<Maths>("Maths"));
      if (p->call<&Maths::add>(std::int64_t{1}, std::int64_t{2}) != 3)
        state.SkipWithError("Maths.add(1, 2) was not 3");
    }
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    p.reset();
    c.reset();  // the last proxy and the manager: the link closes, the next round is cold
  }
  state.SetLabel(std::string(family_label(state.range(0))) +
                 (create_and_call ? ", connect + create + call" : ", connect"));
}
BENCHMARK(BM_Connect)->Args({0, 1})->Args({1, 1})->Args({0, 0})->Args({1, 0})->UseManualTime();

// ---- the queue recipe -------------------------------------------------------------------

constexpr int kWorkers = 4;

// A worker's end of the recipe: connected by address and key, its two queues, and its ready
// message sent.
struct WorkerEnd {
  explicit WorkerEnd(const std::string& address) : m(client_options(address)) {
    m.connect();
    tasks = mm::QueueProxy<std::int64_t>(m.create("get_task_queue"));
    results = mm::QueueProxy<std::vector<std::int64_t>>(m.create("get_result_queue"));
    results.put({-1, static_cast<std::int64_t>(::getpid())});
  }
  QueueManager m;
  mm::QueueProxy<std::int64_t> tasks;
  mm::QueueProxy<std::vector<std::int64_t>> results;
};

// A worker: takes n until a negative one, and puts [n, n*n] for each.
void queue_worker(std::string address, std::string) {
  const WorkerEnd w(address);
  for (;;) {
    const std::int64_t n = w.tasks.get();
    if (n < 0) break;
    w.results.put({n, n * n});
  }
}
TROUPE_ENTRY(queue_worker);

// The same worker, pipelined: it keeps kPrefetch gets in flight (a task it takes asks for the
// next at once) and puts each result with async_put, not waiting for the reply; its completions
// run on an io_context this thread runs. A wake-up then serves every task that came meanwhile,
// not one: on this 2-CPU host each wake-up (a context switch) costs about as much as a call. The
// gets go on a lane of their own: on the thread's lane the puts would queue behind a get that
// waits. It stops asking at its first negative task and returns once its calls have all ended,
// so the client puts kWorkers * kPrefetch negative tasks in the end (each answers one get).
constexpr std::int64_t kWindow = 256;
constexpr std::int64_t kPrefetch = 16;

void queue_worker_pipelined(std::string address, std::string) {
  boost::asio::io_context ctx;  // before w: as w's link closes, it fails its calls onto ctx
  const WorkerEnd w(address);
  const mm::Lane gets;
  bool stopping = false;
  std::exception_ptr failed;
  const auto note = [&](const std::exception_ptr& e) {
    if (e && !failed) failed = e;
  };
  std::function<void()> ask = [&] {
    const mm::Lane::Scope on(gets);
    w.tasks.async_get(boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::int64_t n) {
      note(e);
      if (e || n < 0) {
        stopping = true;
        return;
      }
      w.results.async_put(
          {n, n * n},
          boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::monostate) { note(e); }));
      if (!stopping) ask();
    }));
  };
  for (std::int64_t k = 0; k < kPrefetch; ++k) ask();
  ctx.run();  // until every get and put has ended
  if (failed) std::rethrow_exception(failed);
}
TROUPE_ENTRY(queue_worker_pipelined);

// range(0): the family; range(1): tasks per iteration; range(2): 1 = pipelined (the client puts
// its tasks and takes its results with up to kWindow calls in flight, each worker takes its
// tasks with kPrefetch gets in flight and puts its results the same way), 0 = the docs' recipe
// call by call.
void BM_QueueRecipe4Workers(benchmark::State& state) {
  const bool pipelined = state.range(2) == 1;
  QueueManager m(server_options(state.range(0)));
  m.start();
  const std::string address = m.address().str();
  const mm::QueueProxy<std::int64_t> tasks(m.create("get_task_queue"));
  const mm::QueueProxy<std::vector<std::int64_t>> results(m.create("get_result_queue"));
  std::vector<mp::Process> workers;
  mp::ProcessOptions po;
  po.start_method = "fork";
  po.fork_with_threads = true;
  po.daemon = true;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back(po, pipelined ? &queue_worker_pipelined : &queue_worker, address,
                         authkey_hex());
    workers.back().start();
  }
  for (int w = 0; w < kWorkers; ++w)
    if (results.get(true, 60s).at(0) != -1) state.SkipWithError("a worker's ready message");
  const std::int64_t n = state.range(1);
  std::vector<char> seen(static_cast<std::size_t>(n));
  boost::asio::io_context ctx;
  for (auto _ : state) {
    std::fill(seen.begin(), seen.end(), 0);
    std::int64_t right = 0;
    const auto check = [&](const std::vector<std::int64_t>& r) {
      if (r.size() == 2 && r[0] >= 0 && r[0] < n && r[1] == r[0] * r[0] &&
          !seen[static_cast<std::size_t>(r[0])]) {
        seen[static_cast<std::size_t>(r[0])] = 1;
        ++right;
      }
    };
    if (!pipelined) {
      for (std::int64_t i = 0; i < n; ++i) tasks.put(i);
      for (std::int64_t i = 0; i < n; ++i) check(results.get(true, 60s));
    } else {
      std::int64_t put = 0, put_done = 0, asked = 0, got = 0, failures = 0;
      const mm::Lane gets;
      std::function<void()> next_put, next_get;
      next_put = [&] {
        tasks.async_put(put++,
                        boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::monostate) {
                          ++put_done;
                          if (e) ++failures;
                          if (put < n) next_put();
                        }));
      };
      next_get = [&] {
        ++asked;
        const mm::Lane::Scope on(gets);  // not in the puts' lane, where a waiting get holds it
        results.async_get(
            boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::vector<std::int64_t> r) {
              ++got;
              if (e) ++failures;
              check(r);
              if (asked < n) next_get();
            }));
      };
      for (std::int64_t k = 0; k < kWindow && put < n; ++k) next_put();
      for (std::int64_t k = 0; k < kWindow && asked < n; ++k) next_get();
      ctx.run();
      ctx.restart();
      if (failures != 0 || put_done != n || got != n)
        state.SkipWithError("a pipelined call failed");
    }
    if (right != n) state.SkipWithError("the recipe's results do not match its tasks");
  }
  for (std::int64_t k = 0; k < kWorkers * (pipelined ? kPrefetch : 1); ++k) tasks.put(-1);
  for (auto& w : workers) {
    w.join(30s);
    if (w.is_alive()) {
      w.kill();
      w.join();
    }
    if (w.exitcode() != 0) state.SkipWithError("a worker failed");
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetLabel(std::string(family_label(state.range(0))) + ", " + std::to_string(n) +
                 " tasks, 4 workers" + (pipelined ? ", pipelined" : ""));
}
BENCHMARK(BM_QueueRecipe4Workers)
    ->Args({1, 20000, 0})
    ->Args({0, 20000, 0})
    ->Args({1, 20000, 1})
    ->Args({0, 20000, 1})
    ->UseRealTime()
    ->Iterations(1);

// ---- a managed Pool against troupe's own Pool ------------------------------------------------

std::int64_t square(std::int64_t x) {
  return x * x;
}
TROUPE_ENTRY(square);

constexpr std::int64_t kMapItems = 1000;

/// Arg 0: the managed Pool (SyncManager on a Unix abstract name, started by fork); 1: a Pool.
void BM_PoolApply(benchmark::State& state) {
  const bool managed = state.range(0) == 0;
  std::int64_t i = 0;
  auto check = [&](std::int64_t r) {
    if (r != i * i) state.SkipWithError("apply: a wrong square");
    ++i;
  };
  if (managed) {
    mm::SyncManager m(server_options(0));
    m.start();
    auto pool = m.Pool(2);
    for (int w = 0; w < 100; ++w) (void)pool.apply(square, w);
    for (auto _ : state) check(pool.apply(square, i));
    pool.terminate();
    m.shutdown();
  } else {
    mp::Pool pool(2);
    for (int w = 0; w < 100; ++w) (void)pool.apply(square, w);
    for (auto _ : state) check(pool.apply(square, i));
    pool.terminate();
  }
  state.SetLabel(managed ? "managed Pool(2)" : "Pool(2)");
}
BENCHMARK(BM_PoolApply)->Arg(0)->Arg(1)->UseRealTime();

void BM_PoolMap(benchmark::State& state) {
  const bool managed = state.range(0) == 0;
  std::vector<std::int64_t> items(kMapItems);
  for (std::int64_t k = 0; k < kMapItems; ++k) items[k] = k;
  auto check = [&](const std::vector<std::int64_t>& r) {
    if (r.size() != items.size() || r.back() != (kMapItems - 1) * (kMapItems - 1))
      state.SkipWithError("map: wrong squares");
  };
  if (managed) {
    mm::SyncManager m(server_options(0));
    m.start();
    auto pool = m.Pool(2);
    check(pool.map(square, items));
    for (auto _ : state) check(pool.map(square, items));
    pool.terminate();
    m.shutdown();
  } else {
    mp::Pool pool(2);
    check(pool.map(square, items));
    for (auto _ : state) check(pool.map(square, items));
    pool.terminate();
  }
  state.SetItemsProcessed(state.iterations() * kMapItems);
  state.SetLabel(std::string(managed ? "managed Pool(2)" : "Pool(2)") + ", " +
                 std::to_string(kMapItems) + " items");
}
BENCHMARK(BM_PoolMap)->Arg(0)->Arg(1)->UseRealTime();

// ---- 1000 clients x 1000 calls: the server's memory and threads -----------------------------

/// VmRSS (bytes) and Threads of a process, from /proc.
struct Usage {
  long rss = 0;
  long threads = 0;
};
Usage usage_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  Usage u;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream s(line);
    std::string key;
    long v = 0;
    s >> key >> v;
    if (key == "VmRSS:") u.rss = v * 1024;
    if (key == "Threads:") u.threads = v;
  }
  return u;
}

// A client process: `connections` links to the server (a manager object each, connect()), a
// proxy to a new Maths on each, then `calls` rounds of one async call on every proxy (so every
// connection has a call in flight at once). Reports "done" on `control` and waits for "exit"
// before dropping its connections, so the server can be measured with all of them open.
void memory_client(std::string address, std::string, std::int64_t connections, std::int64_t calls,
                   mp::Connection& control) {
  std::vector<std::unique_ptr<MathsManager>> managers;
  std::vector<mm::Proxy<Maths>> proxies;
  for (std::int64_t c = 0; c < connections; ++c) {
    managers.push_back(std::make_unique<MathsManager>(client_options(address)));
    managers.back()->connect();  // a new link (connection) for each manager
    proxies.push_back(managers.back()->create<Maths>("Maths"));
  }
  control.send(std::string("connected"));
  (void)control.recv<std::string>();  // "go": every client process is connected
  std::mutex mu;
  std::condition_variable cv;
  std::int64_t wrong = 0, left = 0;
  for (std::int64_t round = 0; round < calls; ++round) {
    {
      std::scoped_lock lock(mu);
      left = connections;
    }
    for (auto& p : proxies)
      p.async_call<&Maths::add>(round, std::int64_t{1},
                                [&, round](std::exception_ptr e, std::int64_t r) {
                                  std::scoped_lock lock(mu);
                                  if (e || r != round + 1) ++wrong;
                                  if (--left == 0) cv.notify_one();
                                });
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, 60s, [&] { return left == 0; })) {
      wrong = -1;
      break;
    }
  }
  // Late completions (after a timeout) touch mu/left/wrong: they all outlive the calls, which
  // fail at once when the proxies and links go at the end of this function... after "exit".
  control.send(std::string(wrong == 0 ? "done" : "failed"));
  (void)control.recv<std::string>();  // "exit"
}
TROUPE_ENTRY(memory_client);

/// One wave: `clients` connections in `processes` client processes, each making `calls` calls;
/// the server measured with all of them connected, after their calls, and after they are gone.
struct Wave {
  bool ok = true;
  Usage connected, busy, after;
  std::size_t objects_during = 0, objects_after = 0;
  double connect_seconds = 0, call_seconds = 0;
};

Wave run_wave(MathsManager& m, std::int64_t clients, std::int64_t calls, std::int64_t processes) {
  const int pid = *m.process()->pid();
  const std::string address = m.address().str();
  Wave w;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<mp::Process> procs;
  std::vector<mp::Connection> controls;
  mp::ProcessOptions po;
  po.start_method = "fork";
  po.fork_with_threads = true;
  po.daemon = true;
  for (std::int64_t k = 0; k < processes; ++k) {
    auto [mine, theirs] = mp::Pipe();
    const std::int64_t share = clients / processes + (k < clients % processes ? 1 : 0);
    procs.emplace_back(po, &memory_client, address, authkey_hex(), share, calls, std::move(theirs));
    procs.back().start();
    theirs.close();
    controls.push_back(std::move(mine));
  }
  for (auto& c : controls) w.ok = c.poll(120s) && c.recv<std::string>() == "connected" && w.ok;
  w.connected = usage_of(pid);
  const auto t1 = std::chrono::steady_clock::now();
  for (auto& c : controls) c.send(std::string("go"));
  for (auto& c : controls) w.ok = c.poll(600s) && c.recv<std::string>() == "done" && w.ok;
  const auto t2 = std::chrono::steady_clock::now();
  w.busy = usage_of(pid);
  w.objects_during = m.number_of_objects();
  for (auto& c : controls) c.send(std::string("exit"));
  for (auto& p : procs) {
    p.join(60s);
    if (p.is_alive()) {
      p.kill();
      p.join();
      w.ok = false;
    }
    w.ok = w.ok && p.exitcode() == 0;
  }
  // The server drops a closed connection's references: wait (bounded) until every object is
  // gone.
  w.objects_after = m.number_of_objects();
  for (int i = 0; i < 300 && w.objects_after != 0; ++i) {
    std::this_thread::sleep_for(20ms);
    w.objects_after = m.number_of_objects();
  }
  std::this_thread::sleep_for(200ms);
  w.after = usage_of(pid);
  w.connect_seconds = std::chrono::duration<double>(t1 - t0).count();
  w.call_seconds = std::chrono::duration<double>(t2 - t1).count();
  return w;
}

// Prints JSON: the server's RSS and threads before, and per wave; a second wave shows whether
// what the first left is kept for reuse (flat) or leaked (growing by as much again).
int clients_memory(std::int64_t clients, std::int64_t calls, std::int64_t processes,
                   std::int64_t waves) {
  MathsManager m(server_options(0));
  m.start();
  std::this_thread::sleep_for(200ms);
  const Usage before = usage_of(*m.process()->pid());
  std::printf(
      "{\"clients\": %lld, \"calls\": %lld, \"processes\": %lld, \"rss_before\": %ld, "
      "\"threads_before\": %ld, \"waves\": [",
      static_cast<long long>(clients), static_cast<long long>(calls),
      static_cast<long long>(processes), before.rss, before.threads);
  bool ok = true;
  for (std::int64_t k = 0; k < waves; ++k) {
    const Wave w = run_wave(m, clients, calls, processes);
    ok = ok && w.ok && w.objects_after == 0;
    std::printf(
        "%s{\"ok\": %s, \"rss_connected\": %ld, \"rss_busy\": %ld, \"rss_after\": %ld, "
        "\"threads_connected\": %ld, \"threads_busy\": %ld, \"threads_after\": %ld, "
        "\"objects_during\": %zu, \"objects_after\": %zu, \"connect_seconds\": %.3f, "
        "\"call_seconds\": %.3f, \"calls_per_s\": %.0f}",
        k ? ", " : "", w.ok ? "true" : "false", w.connected.rss, w.busy.rss, w.after.rss,
        w.connected.threads, w.busy.threads, w.after.threads, w.objects_during, w.objects_after,
        w.connect_seconds, w.call_seconds, static_cast<double>(clients * calls) / w.call_seconds);
    std::fflush(stdout);
  }
  std::printf("], \"ok\": %s}\n", ok ? "true" : "false");
  return ok ? 0 : 1;
}

}  // namespace bench

int main(int argc, char** argv) {
  troupe::multiprocessing::freeze_support(argc, argv);
  if (argc >= 2 && std::string_view(argv[1]) == "--clients-memory") {
    std::int64_t clients = 1000, calls = 1000, processes = 4, waves = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
      const std::string_view k = argv[i];
      const std::int64_t v = std::stoll(argv[i + 1]);
      if (k == "--clients")
        clients = v;
      else if (k == "--calls")
        calls = v;
      else if (k == "--processes")
        processes = v;
      else if (k == "--waves")
        waves = v;
      else {
        std::fprintf(stderr, "managers_bench: unknown option %s\n", argv[i]);
        return 2;
      }
    }
    if (clients < 1 || calls < 1 || waves < 1 || processes < 1 || processes > clients) {
      std::fprintf(
          stderr,
          "managers_bench: --clients, --calls, --waves >= 1; 1 <= --processes <= --clients\n");
      return 2;
    }
    return bench::clients_memory(clients, calls, processes, waves);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
