// bench/subprocess_bench.cpp — subprocess against the same done by hand:
// - run({"true"}) vs posix_spawn + waitpid, from a small parent and from one with 4 GiB
//   resident (arg 1), next to fork + exec + waitpid from the same big parent (what a plain fork
//   costs when the page tables are large);
// - run capturing `echo hi` vs posix_spawn with a pipe, read to the end, waitpid;
// - a child writing 64 MiB to stdout, captured, vs the same read by hand and thrown away (the
//   pipe's limit) and read by hand into a realloc'd buffer (a capture written in C) (bytes/s).
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

enum class Keep {
  no,       // into one 64 KiB buffer (the pipe's limit), thrown away
  realloc,  // into a malloc'd buffer grown with realloc, as C code capturing output would
  sized,    // into one buffer of the size known in advance (`sized` bytes): the best by hand
};

// posix_spawn with stdout on a pipe, read to its end as `keep` says, then waitpid.
std::size_t spawn_read_all(const char* path, char* const argv[], Keep keep = Keep::no,
                           std::size_t sized = 0) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) std::abort();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  pid_t pid;
  if (::posix_spawn(&pid, path, &fa, nullptr, argv, environ) != 0) std::abort();
  posix_spawn_file_actions_destroy(&fa);
  ::close(p[1]);
  static char scratch[65536];
  std::size_t cap = keep == Keep::sized ? sized + 1 : 65536, total = 0;  // +1: sees the end
  char* buf = keep == Keep::no ? scratch : static_cast<char*>(std::malloc(cap));
  for (;;) {
    if (keep == Keep::realloc && cap - total < 65536)
      buf = static_cast<char*>(std::realloc(buf, cap *= 2));
    const std::size_t room = keep == Keep::sized ? cap - total : 65536;
    const ssize_t n = ::read(p[0], keep == Keep::no ? buf : buf + total, room);
    if (n <= 0) break;
    total += static_cast<std::size_t>(n);
  }
  benchmark::DoNotOptimize(buf);
  if (keep != Keep::no) std::free(buf);
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

// `head -c 64MiB /dev/zero` through posix_spawn, its output read as `keep` says.
void capture_64mib_raw(benchmark::State& state, Keep keep) {
  char path[] = "/usr/bin/head";
  char c[] = "-c";
  std::string n = std::to_string(k64MiB);
  char zero[] = "/dev/zero";
  char* argv[] = {path, c, n.data(), zero, nullptr};
  for (auto _ : state)
    if (spawn_read_all(path, argv, keep, k64MiB) != k64MiB) state.SkipWithError("short output");
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * k64MiB));
}

void BM_Capture64MiB_raw(benchmark::State& state) {
  capture_64mib_raw(state, Keep::no);
}
BENCHMARK(BM_Capture64MiB_raw)->UseRealTime()->Unit(benchmark::kMillisecond);

// A capture by hand, as C code keeps output.
void BM_Capture64MiBKept_raw(benchmark::State& state) {
  capture_64mib_raw(state, Keep::realloc);
}
BENCHMARK(BM_Capture64MiBKept_raw)->UseRealTime()->Unit(benchmark::kMillisecond);

// The same job by hand at its best: the size is known, so one buffer of that size, read into.
void BM_Capture64MiBSized_raw(benchmark::State& state) {
  capture_64mib_raw(state, Keep::sized);
}
BENCHMARK(BM_Capture64MiBSized_raw)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
