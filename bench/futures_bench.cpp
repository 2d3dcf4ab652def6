// bench/futures_bench.cpp — concurrent.futures.ThreadPoolExecutor against a thread pool written
// by hand with std::mutex, std::condition_variable, std::deque<std::function> and
// std::promise/std::future. bench/compare.py runs it next to Python's ThreadPoolExecutor.
//
// Latency: one submit(f).result() at a time (the caller waits for each). Throughput: submit a
// batch, then collect every result.
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <ranges>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "troupe/concurrent/futures.hpp"
#include "troupe/multiprocessing/pool.hpp"
#include "troupe/multiprocessing/process.hpp"

int trivial(int x) {
  return x + 1;
}
TROUPE_ENTRY(trivial);

namespace {

namespace futures = troupe::concurrent::futures;

// ---- the hand-written baseline --------------------------------------------------------------

class StdPool {
public:
  explicit StdPool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  ~StdPool() {
    {
      std::scoped_lock lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  std::future<int> submit(int x) {
    auto p = std::make_shared<std::promise<int>>();
    auto f = p->get_future();
    {
      std::scoped_lock lk(mu_);
      q_.emplace_back([p, x] { p->set_value(trivial(x)); });
    }
    cv_.notify_one();
    return f;
  }

private:
  void work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !q_.empty(); });
        if (q_.empty()) return;
        job = std::move(q_.front());
        q_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// ---- latency --------------------------------------------------------------------------------

void BM_SubmitResult_troupe(benchmark::State& state) {
  futures::ThreadPoolExecutor pool(2);
  int x = 0;
  for (auto _ : state) x = pool.submit(trivial, x).result();
  benchmark::DoNotOptimize(x);
}
BENCHMARK(BM_SubmitResult_troupe)->UseRealTime();

// The raw condition-variable hand-off: the same call through the hand-written pool.
void BM_SubmitResult_std(benchmark::State& state) {
  StdPool pool(2);
  int x = 0;
  for (auto _ : state) x = pool.submit(x).get();
  benchmark::DoNotOptimize(x);
}
BENCHMARK(BM_SubmitResult_std)->UseRealTime();

// ---- throughput -----------------------------------------------------------------------------

constexpr int kBatch = 10'000;

void BM_SubmitAll_troupe(benchmark::State& state) {
  futures::ThreadPoolExecutor pool(2);
  std::vector<futures::Future<int>> fs;
  fs.reserve(kBatch);
  long sum = 0;
  for (auto _ : state) {
    fs.clear();
    for (int i = 0; i < kBatch; ++i) fs.push_back(pool.submit(trivial, i));
    for (auto& f : fs) sum += f.result();
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_SubmitAll_troupe)->UseRealTime();

void BM_SubmitAll_std(benchmark::State& state) {
  StdPool pool(2);
  std::vector<std::future<int>> fs;
  fs.reserve(kBatch);
  long sum = 0;
  for (auto _ : state) {
    fs.clear();
    for (int i = 0; i < kBatch; ++i) fs.push_back(pool.submit(i));
    for (auto& f : fs) sum += f.get();
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_SubmitAll_std)->UseRealTime();

// map over a range, lazily with the default look-ahead, and eagerly.
void BM_Map_troupe(benchmark::State& state) {
  futures::ThreadPoolExecutor pool(2);
  const bool eager = state.range(0) != 0;
  std::vector<int> xs(kBatch);
  for (int i = 0; i < kBatch; ++i) xs[i] = i;
  long sum = 0;
  for (auto _ : state)
    for (int v : pool.map({.eager = eager}, trivial, xs)) sum += v;
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_Map_troupe)->Arg(0)->Arg(1)->UseRealTime();

// ---- ProcessPoolExecutor ---------------------------------------------------------------------

void BM_ProcessSubmitResult_troupe(benchmark::State& state) {
  futures::ProcessPoolExecutor pool(2);
  int x = pool.submit(trivial, 0).result();  // the workers are up
  for (auto _ : state) x = pool.submit(trivial, x).result();
  benchmark::DoNotOptimize(x);
}
BENCHMARK(BM_ProcessSubmitResult_troupe)->UseRealTime();

// The raw limit: an 8-byte request and reply between two processes over a socketpair each way,
// as the call and its result cross (write, then a blocking read; the child echoes + 1).
void BM_ProcessRoundTrip_raw(benchmark::State& state) {
  int there[2], back[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, there) || ::socketpair(AF_UNIX, SOCK_STREAM, 0, back))
    return state.SkipWithError("socketpair");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(there[0]);
    ::close(back[0]);
    std::int64_t v;
    while (::read(there[1], &v, sizeof v) == sizeof v) {
      ++v;
      if (::write(back[1], &v, sizeof v) != sizeof v) break;
    }
    ::_exit(0);
  }
  ::close(there[1]);
  ::close(back[1]);
  std::int64_t v = 0;
  for (auto _ : state) {
    if (::write(there[0], &v, sizeof v) != sizeof v || ::read(back[0], &v, sizeof v) != sizeof v)
      state.SkipWithError("io");
  }
  ::close(there[0]);
  ::close(back[0]);
  ::waitpid(pid, nullptr, 0);
  benchmark::DoNotOptimize(v);
}
BENCHMARK(BM_ProcessRoundTrip_raw)->UseRealTime();

void BM_ProcessMap_troupe(benchmark::State& state) {
  futures::ProcessPoolExecutor pool(2);
  (void)pool.submit(trivial, 0).result();
  const auto chunk = static_cast<std::size_t>(state.range(0));
  std::vector<int> xs(kBatch);
  for (int i = 0; i < kBatch; ++i) xs[i] = i;
  long sum = 0;
  for (auto _ : state)
    for (int v : pool.map({.chunksize = chunk}, trivial, xs)) sum += v;
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_ProcessMap_troupe)->Arg(1)->Arg(64)->UseRealTime();

// ---- multiprocessing.Pool ---------------------------------------------------------------------

void BM_PoolMap_troupe(benchmark::State& state) {
  troupe::multiprocessing::Pool pool(2);
  (void)pool.apply(trivial, 0);
  long sum = 0;
  for (auto _ : state)
    for (int v : pool.map(trivial, std::views::iota(0, 100'000))) sum += v;
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * 100'000);
}
BENCHMARK(BM_PoolMap_troupe)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_PoolImapUnordered_troupe(benchmark::State& state) {
  troupe::multiprocessing::Pool pool(2);
  (void)pool.apply(trivial, 0);
  long sum = 0;
  for (auto _ : state)
    for (int v : pool.imap_unordered(trivial, std::views::iota(0, kBatch))) sum += v;
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_PoolImapUnordered_troupe)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

// Spawned and forkserver workers run this program: freeze_support first.
int main(int argc, char** argv) {
  troupe::multiprocessing::freeze_support(argc, argv);
  ::benchmark::Initialize(&argc, argv);
  if (::benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ::benchmark::RunSpecifiedBenchmarks();
  ::benchmark::Shutdown();
  return 0;
}
