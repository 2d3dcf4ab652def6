// bench/process_bench.cpp — multiprocessing between processes, against the same done by hand:
// - Process start + join with a trivial target, per start method, vs fork + _exit + waitpid
//   (fork, and forkserver, whose server forks) and posix_spawn + waitpid of this same binary
//   (which exits at once when given --exit-now);
// - a process-shared Lock: acquire + release uncontended, and two processes taking it in turn
//   (each incrementing a shared counter under it), vs a robust process-shared pthread mutex by
//   hand;
// - SharedMemory create + map + close + unlink of 1 MiB vs shm_open/ftruncate/mmap by hand;
// - a process Queue<long>: one-way throughput and put -> get round trips between two processes,
//   vs 8-byte write/read on a socketpair by hand.
// bench/compare.py runs it next to Python's multiprocessing doing the same.
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>

#include <benchmark/benchmark.h>

#include "troupe/multiprocessing/forkserver.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/queues.hpp"
#include "troupe/multiprocessing/shared_memory.hpp"
#include "troupe/multiprocessing/sharedctypes.hpp"
#include "troupe/multiprocessing/synchronize.hpp"

extern char** environ;

namespace {

namespace mp = troupe::multiprocessing;

void trivial() {}
TROUPE_ENTRY(trivial);

void BM_ProcessStartJoin_troupe(benchmark::State& state) {
  static const char* const methods[] = {"fork", "spawn", "forkserver"};
  const std::string method = methods[state.range(0)];
  state.SetLabel(method);
  for (auto _ : state) {
    mp::Process p({.start_method = method}, trivial);
    p.start();
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("the child failed");
  }
}
BENCHMARK(BM_ProcessStartJoin_troupe)->Arg(0)->Arg(1)->Arg(2)->UseRealTime();

void BM_ForkExitWait_raw(benchmark::State& state) {
  for (auto _ : state) {
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
}
BENCHMARK(BM_ForkExitWait_raw)->UseRealTime();

void BM_PosixSpawnWait_raw(benchmark::State& state) {
  char exe[] = "/proc/self/exe";
  char flag[] = "--exit-now";
  char* argv[] = {exe, flag, nullptr};
  for (auto _ : state) {
    pid_t pid = -1;
    if (::posix_spawn(&pid, exe, nullptr, nullptr, argv, environ) != 0) std::abort();
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
}
BENCHMARK(BM_PosixSpawnWait_raw)->UseRealTime();

// ---- Lock ------------------------------------------------------------------------------------

/// A robust, process-shared, error-checking pthread mutex in shared memory: what troupe's Lock
/// is built on, driven by hand.
struct RawMutex {
  RawMutex() {
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    m = static_cast<pthread_mutex_t*>(p);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    counter = reinterpret_cast<long*>(static_cast<char*>(p) + 2048);
  }
  ~RawMutex() { ::munmap(m, 4096); }
  void lock() { pthread_mutex_lock(m); }
  void unlock() { pthread_mutex_unlock(m); }
  pthread_mutex_t* m;
  long* counter;
};

void BM_MpLock_troupe(benchmark::State& state) {
  mp::Lock lock;
  for (auto _ : state) {
    lock.acquire();
    lock.release();
  }
}
BENCHMARK(BM_MpLock_troupe);

void BM_MpLock_raw(benchmark::State& state) {
  RawMutex m;
  for (auto _ : state) {
    m.lock();
    m.unlock();
  }
}
BENCHMARK(BM_MpLock_raw);

constexpr long kTurns = 200'000;  // per process

/// Two processes (this one and a forked child) each increment a shared counter kTurns times
/// under `lock`; the time runs from when both are ready until the child is reaped.
template <class Lock>
void contend(benchmark::State& state, Lock& lock, long* counter) {
  auto* ready = static_cast<std::atomic<int>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto work = [&] {
    for (long i = 0; i < kTurns; ++i) {
      std::scoped_lock guard{lock};
      ++*counter;
    }
  };
  for (auto _ : state) {
    state.PauseTiming();
    ready->store(0);
    *counter = 0;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ready->fetch_add(1);
      while (ready->load() < 3) {  // the parent's clock runs
      }
      work();
      ::_exit(0);
    }
    while (ready->load() < 1) {
    }
    // The clock starts before the child may begin: under load the parent can lose its CPU
    // between the two, and the child's turns would then run untimed.
    state.ResumeTiming();
    ready->store(3);
    work();
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (*counter != 2 * kTurns) state.SkipWithError("lost updates");
  }
  state.SetItemsProcessed(state.iterations() * 2 * kTurns);
  ::munmap(ready, 4096);
}

void BM_MpLockContended_troupe(benchmark::State& state) {
  mp::Lock lock;
  mp::RawValue<long> counter(0);
  contend(state, lock, counter.ptr());
}
BENCHMARK(BM_MpLockContended_troupe)->UseRealTime()->Iterations(5);

void BM_MpLockContended_raw(benchmark::State& state) {
  RawMutex m;
  contend(state, m, m.counter);
}
BENCHMARK(BM_MpLockContended_raw)->UseRealTime()->Iterations(5);

// ---- SharedMemory ----------------------------------------------------------------------------

void BM_SharedMemory1MiB_troupe(benchmark::State& state) {
  const bool track = state.range(0) != 0;
  state.SetLabel(track ? "track=true" : "track=false");
  for (auto _ : state) {
    mp::shared_memory::SharedMemory shm(std::nullopt, true, 1 << 20, track);
    shm.close();
    shm.unlink();
  }
}
BENCHMARK(BM_SharedMemory1MiB_troupe)->Arg(1)->Arg(0);

void BM_SharedMemory1MiB_raw(benchmark::State& state) {
  const std::string name = "/troupe_bench_" + std::to_string(::getpid());
  for (auto _ : state) {
    const int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ::ftruncate(fd, 1 << 20) != 0) std::abort();
    void* p = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) std::abort();
    ::munmap(p, 1 << 20);
    ::close(fd);
    ::shm_unlink(name.c_str());
  }
}
BENCHMARK(BM_SharedMemory1MiB_raw);

// ---- Queue -----------------------------------------------------------------------------------

constexpr long kItems = 200'000;
constexpr long kTrips = 20'000;
using Clock = std::chrono::steady_clock;

/// The parent puts kItems values made by make(i); a forked child gets them.
template <class T, class Make>
void queue_one_way(benchmark::State& state, Make make) {
  for (auto _ : state) {
    mp::Queue<T> q;
    mp::Event ready, done;
    mp::Process p(
        {.start_method = "fork"},
        [](mp::Queue<T> q, mp::Event ready, mp::Event done) {
          ready.set();
          for (long i = 0; i < kItems; ++i) (void)q.get();
          done.set();
        },
        q, ready, done);
    p.start();
    ready.wait();
    const auto t0 = Clock::now();
    for (long i = 0; i < kItems; ++i) q.put(make(i));
    done.wait();
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("the consumer failed");
  }
  state.SetItemsProcessed(state.iterations() * kItems);
}

void BM_QueueOneWay_troupe(benchmark::State& state) {
  queue_one_way<long>(state, [](long i) { return i; });
}
BENCHMARK(BM_QueueOneWay_troupe)->UseManualTime()->Iterations(5);

// A short string goes through the codec (a Cap'n Proto message per value).
void BM_QueueOneWayString_troupe(benchmark::State& state) {
  const std::string s(16, 'x');
  queue_one_way<std::string>(state, [&](long) -> const std::string& { return s; });
}
BENCHMARK(BM_QueueOneWayString_troupe)->UseManualTime()->Iterations(5);

void read_exact(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::read(fd, b, n);
    if (r <= 0) std::abort();
    b += r;
    n -= static_cast<std::size_t>(r);
  }
}

void BM_QueueOneWay_raw(benchmark::State& state) {
  for (auto _ : state) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) std::abort();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(sv[0]);
      long v = 0;
      ::write(sv[1], &v, 1);  // ready
      for (long i = 0; i < kItems; ++i) read_exact(sv[1], &v, sizeof v);
      ::write(sv[1], &v, 1);  // done
      ::_exit(0);
    }
    ::close(sv[1]);
    char c;
    read_exact(sv[0], &c, 1);
    const auto t0 = Clock::now();
    for (long i = 0; i < kItems; ++i) ::write(sv[0], &i, sizeof i);
    read_exact(sv[0], &c, 1);
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
    ::close(sv[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  state.SetItemsProcessed(state.iterations() * kItems);
}
BENCHMARK(BM_QueueOneWay_raw)->UseManualTime()->Iterations(5);

void BM_QueueRoundTrip_troupe(benchmark::State& state) {
  for (auto _ : state) {
    mp::Queue<long> there, back;
    mp::Process p(
        {.start_method = "fork"},
        [](mp::Queue<long> there, mp::Queue<long> back) {
          for (;;) {
            const long v = there.get();
            back.put(v);
            if (v < 0) break;
          }
        },
        there, back);
    p.start();
    there.put(0);  // the child is up once this comes back
    back.get();
    const auto t0 = Clock::now();
    for (long i = 0; i < kTrips; ++i) {
      there.put(i);
      if (back.get() != i) state.SkipWithError("wrong value");
    }
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count() / kTrips);
    there.put(-1);
    back.get();
    p.join();
  }
}
BENCHMARK(BM_QueueRoundTrip_troupe)->UseManualTime()->Iterations(5);

void BM_QueueRoundTrip_raw(benchmark::State& state) {
  for (auto _ : state) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) std::abort();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(sv[0]);
      for (;;) {
        long v;
        read_exact(sv[1], &v, sizeof v);
        ::write(sv[1], &v, sizeof v);
        if (v < 0) ::_exit(0);
      }
    }
    ::close(sv[1]);
    long v = 0;
    ::write(sv[0], &v, sizeof v);
    read_exact(sv[0], &v, sizeof v);
    const auto t0 = Clock::now();
    for (long i = 0; i < kTrips; ++i) {
      ::write(sv[0], &i, sizeof i);
      read_exact(sv[0], &v, sizeof v);
    }
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count() / kTrips);
    v = -1;
    ::write(sv[0], &v, sizeof v);
    read_exact(sv[0], &v, sizeof v);
    ::close(sv[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
}
BENCHMARK(BM_QueueRoundTrip_raw)->UseManualTime()->Iterations(5);

}  // namespace

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  if (argc == 2 && std::string_view(argv[1]) == "--exit-now") return 0;
  mp::forkserver::ensure_running();  // its start-up is not part of a start + join
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
