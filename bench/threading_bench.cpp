// bench/threading_bench.cpp — troupe's in-process modules against the hand-written std and
// raw-futex baselines and against moodycamel's BlockingConcurrentQueue, in one binary.
// bench/compare.py runs this next to bench/python_bench.py and prints the ratio table.
//
// Ping-pong benchmarks report real time per round trip; with MeasureProcessCPUTime the CPU
// column is the CPU both threads burned per round trip (the cost of spinning).
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <concurrentqueue/blockingconcurrentqueue.h>

#include "troupe/queue.hpp"
#include "troupe/sched.hpp"
#include "troupe/threading.hpp"

namespace {

namespace threading = troupe::threading;
namespace queue = troupe::queue;

// ---- raw futex baseline ---------------------------------------------------------------------

void raw_futex_wait(std::atomic<std::uint32_t>& w, std::uint32_t v) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&w), FUTEX_WAIT_PRIVATE, v, nullptr, nullptr,
          0);
}
void raw_futex_wake(std::atomic<std::uint32_t>& w) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&w), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

// ---- std baseline queue: std::mutex + std::condition_variable + std::deque -------------------

template <class T>
class StdQueue {
public:
  void put(T v) {
    {
      std::scoped_lock lk(mu_);
      d_.push_back(std::move(v));
    }
    cv_.notify_one();
  }
  T get() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !d_.empty(); });
    T v = std::move(d_.front());
    d_.pop_front();
    return v;
  }

private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> d_;
};

// ---- uncontended locks ----------------------------------------------------------------------

void BM_Lock_troupe(benchmark::State& state) {
  threading::Lock lock;
  for (auto _ : state) {
    lock.acquire();
    lock.release();
  }
}
BENCHMARK(BM_Lock_troupe);

void BM_RLock_troupe(benchmark::State& state) {
  threading::RLock lock;
  for (auto _ : state) {
    lock.acquire();
    lock.release();
  }
}
BENCHMARK(BM_RLock_troupe);

void BM_Lock_std_mutex(benchmark::State& state) {
  std::mutex m;
  for (auto _ : state) {
    m.lock();
    m.unlock();
  }
}
BENCHMARK(BM_Lock_std_mutex);

void BM_RLock_std_recursive_mutex(benchmark::State& state) {
  std::recursive_mutex m;
  for (auto _ : state) {
    m.lock();
    m.unlock();
  }
}
BENCHMARK(BM_RLock_std_recursive_mutex);

// ---- contended lock: two threads taking it in turn (counter += 1) ------------------------------

template <class Lock>
void lock_contended(benchmark::State& state, Lock& lock) {
  constexpr long kTurns = 100'000;  // per thread
  for (auto _ : state) {
    long counter = 0;
    auto work = [&] {
      for (long i = 0; i < kTurns; ++i) {
        std::scoped_lock guard{lock};
        ++counter;
      }
    };
    std::thread t(work);
    work();
    t.join();
    if (counter != 2 * kTurns) state.SkipWithError("lost updates");
  }
  state.SetItemsProcessed(state.iterations() * 2 * kTurns);
}

void BM_LockContended_troupe(benchmark::State& state) {
  threading::Lock lock;
  lock_contended(state, lock);
}
BENCHMARK(BM_LockContended_troupe)->UseRealTime();

void BM_LockContended_std_mutex(benchmark::State& state) {
  std::mutex m;
  lock_contended(state, m);
}
BENCHMARK(BM_LockContended_std_mutex)->UseRealTime();

// ---- ping-pong: one round trip per iteration ------------------------------------------------

// Both threads of a ping-pong on CPU 0, pinned thread by thread after start-up, so that the
// process may still run on two CPUs and every wait still spins: the case where a spin cannot be
// answered until it gives the CPU up (DESIGN.md, "Waiting"). Restores the caller's CPUs.
class SharedCpu {
public:
  explicit SharedCpu(bool on) : on_(on) {
    if (on_ && pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) == 0) pin();
  }
  ~SharedCpu() {
    if (on_) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  void pin() const {
    if (!on_) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
  }

private:
  bool on_;
  cpu_set_t saved_{};
};

void event_ping_pong(benchmark::State& state, bool shared_cpu) {
  SharedCpu cpu(shared_cpu);
  threading::Event ping, pong;
  std::atomic<bool> stop{false};
  std::thread t([&] {
    cpu.pin();
    for (;;) {
      ping.wait();
      ping.clear();
      if (stop.load(std::memory_order_relaxed)) return;
      pong.set();
    }
  });
  for (auto _ : state) {
    ping.set();
    pong.wait();
    pong.clear();
  }
  stop = true;
  ping.set();
  t.join();
}
void BM_PingPong_Event_troupe(benchmark::State& state) {
  event_ping_pong(state, false);
}
BENCHMARK(BM_PingPong_Event_troupe)->UseRealTime()->MeasureProcessCPUTime();
void BM_PingPong_Event_troupe_SharedCpu(benchmark::State& state) {
  event_ping_pong(state, true);
}
BENCHMARK(BM_PingPong_Event_troupe_SharedCpu)->UseRealTime()->MeasureProcessCPUTime();

void BM_PingPong_Condition_troupe(benchmark::State& state) {
  threading::Condition cond{};
  int turn = 0;  // 0: main's, 1: worker's, 2: stop
  std::thread t([&] {
    std::scoped_lock g{cond};
    for (;;) {
      (void)cond.wait_for([&] { return turn != 0; });
      if (turn == 2) return;
      turn = 0;
      cond.notify();
    }
  });
  for (auto _ : state) {
    std::scoped_lock g{cond};
    turn = 1;
    cond.notify();
    (void)cond.wait_for([&] { return turn == 0; });
  }
  {
    std::scoped_lock g{cond};
    turn = 2;
    cond.notify();
  }
  t.join();
}
BENCHMARK(BM_PingPong_Condition_troupe)->UseRealTime()->MeasureProcessCPUTime();

void BM_PingPong_std_condition_variable(benchmark::State& state) {
  std::mutex m;
  std::condition_variable cv;
  int turn = 0;
  std::thread t([&] {
    std::unique_lock lk(m);
    for (;;) {
      cv.wait(lk, [&] { return turn != 0; });
      if (turn == 2) return;
      turn = 0;
      cv.notify_one();
    }
  });
  for (auto _ : state) {
    std::unique_lock lk(m);
    turn = 1;
    cv.notify_one();
    cv.wait(lk, [&] { return turn == 0; });
  }
  {
    std::scoped_lock lk(m);
    turn = 2;
  }
  cv.notify_one();
  t.join();
}
BENCHMARK(BM_PingPong_std_condition_variable)->UseRealTime()->MeasureProcessCPUTime();

void futex_ping_pong(benchmark::State& state, bool shared_cpu) {
  SharedCpu cpu(shared_cpu);
  std::atomic<std::uint32_t> word{0};  // 1: ping, 2: pong, 3: stop
  std::thread t([&] {
    cpu.pin();
    for (;;) {
      std::uint32_t v;
      while ((v = word.load()) != 1 && v != 3) raw_futex_wait(word, v);
      if (v == 3) return;
      word.store(2);
      raw_futex_wake(word);
    }
  });
  for (auto _ : state) {
    word.store(1);
    raw_futex_wake(word);
    std::uint32_t v;
    while ((v = word.load()) != 2) raw_futex_wait(word, v);
  }
  word.store(3);
  raw_futex_wake(word);
  t.join();
}
void BM_PingPong_raw_futex(benchmark::State& state) {
  futex_ping_pong(state, false);
}
BENCHMARK(BM_PingPong_raw_futex)->UseRealTime()->MeasureProcessCPUTime();
void BM_PingPong_raw_futex_SharedCpu(benchmark::State& state) {
  futex_ping_pong(state, true);
}
BENCHMARK(BM_PingPong_raw_futex_SharedCpu)->UseRealTime()->MeasureProcessCPUTime();

// ---- queues: items per second ---------------------------------------------------------------

constexpr int kBatch = 200000;

template <class Put, class Get>
void transfer(benchmark::State& state, int producers, int consumers, Put put, Get get) {
  for (auto _ : state) {
    const int per_producer = kBatch / producers;
    const int per_consumer = kBatch / consumers;
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int p = 0; p < producers; ++p)
      ts.emplace_back([&] {
        for (int i = 0; i < per_producer; ++i) put(i);
      });
    for (int c = 0; c < consumers; ++c)
      ts.emplace_back([&] {
        long sum = 0;
        for (int i = 0; i < per_consumer; ++i) sum += get();
        benchmark::DoNotOptimize(sum);
      });
    for (auto& t : ts) t.join();
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}

void BM_Queue_troupe(benchmark::State& state) {
  queue::Queue<int> q;
  const int n = static_cast<int>(state.range(0));
  transfer(
      state, n, n, [&](int v) { q.put(v); }, [&] { return q.get(); });
}
BENCHMARK(BM_Queue_troupe)->Arg(1)->Arg(2)->UseManualTime();

void BM_Queue_std(benchmark::State& state) {
  StdQueue<int> q;
  const int n = static_cast<int>(state.range(0));
  transfer(
      state, n, n, [&](int v) { q.put(v); }, [&] { return q.get(); });
}
BENCHMARK(BM_Queue_std)->Arg(1)->Arg(2)->UseManualTime();

void BM_SimpleQueue_troupe(benchmark::State& state) {
  queue::SimpleQueue<int> q;
  const int n = static_cast<int>(state.range(0));
  transfer(
      state, n, n, [&](int v) { q.put(v); }, [&] { return q.get(); });
}
BENCHMARK(BM_SimpleQueue_troupe)->Arg(1)->Arg(2)->UseManualTime();

void BM_SimpleQueue_moodycamel(benchmark::State& state) {
  moodycamel::BlockingConcurrentQueue<int> q;
  const int n = static_cast<int>(state.range(0));
  transfer(
      state, n, n, [&](int v) { q.enqueue(v); },
      [&] {
        int v;
        q.wait_dequeue(v);
        return v;
      });
}
BENCHMARK(BM_SimpleQueue_moodycamel)->Arg(1)->Arg(2)->UseManualTime();

// ---- sched: enter + run of 100k events ------------------------------------------------------

void BM_Sched_100k_troupe(benchmark::State& state) {
  for (auto _ : state) {
    troupe::sched::scheduler s;
    const auto now = troupe::sched::clock::now();
    long count = 0;
    for (int i = 0; i < 100000; ++i)
      s.enterabs(now - std::chrono::microseconds(i % 1000), i % 7, [&count] { ++count; });
    s.run();
    benchmark::DoNotOptimize(count);
  }
  state.SetItemsProcessed(state.iterations() * 100000);
}
BENCHMARK(BM_Sched_100k_troupe)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  // glibc runs std::mutex without atomic instructions while a process has only ever had one
  // thread (__libc_single_threaded). A lock matters only in a multi-threaded process, so
  // measure every lock as one: start and join a thread first.
  std::thread([] {}).join();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
