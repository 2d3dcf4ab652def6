// bench/subprocess_bench.cpp — subprocess against the same done by hand:
// - run({"true"}) vs posix_spawn + waitpid, from a small parent and from one with 4 GiB
//   resident (arg 1), next to fork + exec + waitpid from the same big parent (what a plain fork
//   costs when the page tables are large);
// - run capturing `echo hi` vs posix_spawn with a pipe, read to the end, waitpid;
// - a child writing 64 MiB to stdout, captured, vs the capture a user writes by hand (a read
//   loop appending to a std::string) and vs the same read thrown away (the pipe's limit)
//   (bytes/s).
// bench/compare.py runs it next to Python's subprocess doing the same.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <benchmark/benchmark.h>

#include "troupe/subprocess.hpp"

extern char** environ;

namespace {

namespace sp = troupe::subprocess;

constexpr std::size_t kBig = std::size_t{4} << 30;
constexpr std::size_t k64MiB = std::size_t{64} << 20;

// Makes this process 4 GiB bigger (resident), once, for the "big parent" arguments.
void grow(bool big) {
  static void* mem = nullptr;
  if (!big || mem) return;
  mem = ::mmap(nullptr, kBig, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) std::abort();
  std::memset(mem, 1, kBig);
}

void BM_RunTrue_troupe(benchmark::State& state) {
  grow(state.range(0) != 0);
  for (auto _ : state)
    if (sp::run({"/bin/true"}).returncode != 0) state.SkipWithError("true failed");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RunTrue_troupe)->Arg(0)->Arg(1)->UseRealTime();

int spawn_wait(const char* path, char* const argv[], posix_spawn_file_actions_t* fa) {
  pid_t pid;
  if (::posix_spawn(&pid, path, fa, nullptr, argv, environ) != 0) std::abort();
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

void BM_RunTrue_raw(benchmark::State& state) {
  grow(state.range(0) != 0);
  char path[] = "/bin/true";
  char* argv[] = {path, nullptr};
  for (auto _ : state) spawn_wait(path, argv, nullptr);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RunTrue_raw)->Arg(0)->Arg(1)->UseRealTime();

// What a library that forks costs from the same parent.
void BM_ForkExecTrue_raw(benchmark::State& state) {
  grow(state.range(0) != 0);
  char path[] = "/bin/true";
  char* argv[] = {path, nullptr};
  for (auto _ : state) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execve(path, argv, environ);
      ::_exit(127);
    }
    ::waitpid(pid, nullptr, 0);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ForkExecTrue_raw)->Arg(0)->Arg(1)->UseRealTime();

void BM_RunEchoCaptured_troupe(benchmark::State& state) {
  for (auto _ : state) {
    auto r = sp::run({"/bin/echo", "hi"}, {.capture_output = true});
    if (*r.stdout_ != "hi\n") state.SkipWithError("wrong output");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RunEchoCaptured_troupe)->UseRealTime();

// posix_spawn with stdout on a pipe, read to its end, then waitpid. `kept`: where the output
// goes, as a C++ user capturing it by hand would write it (a read loop appending to a growing
// std::string); null: read into one 64 KiB buffer and thrown away (the pipe's own limit).
std::size_t spawn_read_all(const char* path, char* const argv[], std::string* kept = nullptr) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) std::abort();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  pid_t pid;
  if (::posix_spawn(&pid, path, &fa, nullptr, argv, environ) != 0) std::abort();
  posix_spawn_file_actions_destroy(&fa);
  ::close(p[1]);
  static char buf[65536];
  std::size_t total = 0;
  for (;;) {
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n <= 0) break;
    if (kept) kept->append(buf, static_cast<std::size_t>(n));
    total += static_cast<std::size_t>(n);
  }
  benchmark::DoNotOptimize(buf);
  ::close(p[0]);
  ::waitpid(pid, nullptr, 0);
  return total;
}

void BM_RunEchoCaptured_raw(benchmark::State& state) {
  char path[] = "/bin/echo";
  char hi[] = "hi";
  char* argv[] = {path, hi, nullptr};
  for (auto _ : state)
    if (spawn_read_all(path, argv) != 3) state.SkipWithError("wrong output");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RunEchoCaptured_raw)->UseRealTime();

void BM_Capture64MiB_troupe(benchmark::State& state) {
  for (auto _ : state) {
    auto r = sp::run({"/usr/bin/head", "-c", std::to_string(k64MiB), "/dev/zero"},
                     {.stdout_ = sp::PIPE});
    if (r.stdout_->size() != k64MiB) state.SkipWithError("short output");
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * k64MiB));
}
BENCHMARK(BM_Capture64MiB_troupe)->UseRealTime()->Unit(benchmark::kMillisecond);

// `head -c 64MiB /dev/zero` through posix_spawn, its output kept in a std::string or not.
void capture_64mib_raw(benchmark::State& state, bool keep) {
  char path[] = "/usr/bin/head";
  char c[] = "-c";
  std::string n = std::to_string(k64MiB);
  char zero[] = "/dev/zero";
  char* argv[] = {path, c, n.data(), zero, nullptr};
  for (auto _ : state) {
    std::string out;
    if (spawn_read_all(path, argv, keep ? &out : nullptr) != k64MiB)
      state.SkipWithError("short output");
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * k64MiB));
}

// What the pipe gives: read and thrown away (informative; nothing is kept).
void BM_Capture64MiB_raw(benchmark::State& state) {
  capture_64mib_raw(state, false);
}
BENCHMARK(BM_Capture64MiB_raw)->UseRealTime()->Unit(benchmark::kMillisecond);

// The capture a user writes by hand: a read loop appending to a std::string (the target's
// baseline).
void BM_Capture64MiBKept_raw(benchmark::State& state) {
  capture_64mib_raw(state, true);
}
BENCHMARK(BM_Capture64MiBKept_raw)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
