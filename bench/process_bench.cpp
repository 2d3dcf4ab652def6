// bench/process_bench.cpp — multiprocessing.Process start + join with a trivial target, per start
// method, against the same done by hand: fork + _exit + waitpid, and posix_spawn + waitpid of
// this same binary (which exits at once when given --exit-now). bench/compare.py runs it next to
// Python's multiprocessing.Process with the same methods.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string_view>

#include <benchmark/benchmark.h>

#include "troupe/multiprocessing/process.hpp"

extern char** environ;

namespace {

namespace mp = troupe::multiprocessing;

void trivial() {}
TROUPE_ENTRY(trivial);

void BM_ProcessStartJoin_troupe(benchmark::State& state) {
  const std::string method = state.range(0) == 0 ? "fork" : "spawn";
  state.SetLabel(method);
  for (auto _ : state) {
    mp::Process p({.start_method = method}, trivial);
    p.start();
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("the child failed");
  }
}
BENCHMARK(BM_ProcessStartJoin_troupe)->Arg(0)->Arg(1)->UseRealTime();

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

}  // namespace

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  if (argc == 2 && std::string_view(argv[1]) == "--exit-now") return 0;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
