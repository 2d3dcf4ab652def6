#include "troupe/detail/futex.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

namespace troupe::detail {
namespace {

// 100 µs: longer than a sleeping peer on another core takes to wake and answer on the virtual
// machines measured (20-40 µs each way), so two peers that spin both keep spinning after one
// of them slept. The adaptive budget takes it down fast when spins fail; woke() brings it back.
constexpr std::int64_t kDefaultSpinNs = 100'000;

std::int64_t initial_limit() noexcept {
  if (const char* env = std::getenv("TROUPE_SPIN_NS")) {
    char* end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end != env && v >= 0) return v;
  }
  return kDefaultSpinNs;
}

bool read_single_cpu() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return false;
  return CPU_COUNT(&set) <= 1;
}

std::atomic<std::int64_t> g_limit{initial_limit()};
std::atomic<bool> g_single{read_single_cpu()};
Contention g_cpus{Contention::kAwayNs, true, true};

// The online CPUs, read at start-up as g_single (0 only during static initialisation, when no
// count finds the CPUs filled).
const int g_online_cpus = [] {
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}();

// A small file of /proc, read whole into `buf` (NUL-terminated; opened and closed here, so no
// descriptor stays open in the process). Its length, or -1.
template <std::size_t N>
ssize_t read_proc(const char* path, char (&buf)[N]) noexcept {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  const ssize_t n = ::read(fd, buf, N - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  return n;
}

// This thread's run_delay (ns spent runnable but waiting for a CPU), or -1.
std::int64_t run_delay_ns() noexcept {
  char buf[96];
  if (read_proc("/proc/thread-self/schedstat", buf) < 0) return -1;
  // "<time on CPU> <run_delay> <timeslices>\n"
  char* end = nullptr;
  (void)std::strtoll(buf, &end, 10);
  if (end == buf) return -1;
  char* second = end;
  const long long delay = std::strtoll(second, &end, 10);
  if (end == second || delay < 0) return -1;
  return delay;
}

}  // namespace

std::int64_t spin_limit_ns() noexcept {
  return g_limit.load(std::memory_order_relaxed);
}

void set_spin_limit_ns(std::int64_t ns) noexcept {
  g_limit.store(ns < 0 ? 0 : ns, std::memory_order_relaxed);
  g_single.store(read_single_cpu(), std::memory_order_relaxed);
}

void yield_cpu() noexcept {
  sched_yield();
}

bool waited_for_cpu(std::int64_t gap_ns) noexcept {
  thread_local std::int64_t last = -1;
  const std::int64_t delay = run_delay_ns();
  if (delay < 0) return true;
  const bool first = last < 0;
  const std::int64_t grew = delay - last;
  last = delay;
  return first || grew >= gap_ns / 2;
}

bool cpus_saturated(std::string_view loadavg, int cpus) noexcept {
  // "0.52 0.58 0.59 3/345 12345": the fourth field is runnable/total.
  std::size_t at = 0;
  for (int field = 0; field < 3; ++field) {
    at = loadavg.find(' ', at);
    if (at == std::string_view::npos) return false;
    ++at;
  }
  long running = 0;
  bool digits = false;
  for (; at < loadavg.size() && loadavg[at] >= '0' && loadavg[at] <= '9'; ++at) {
    running = running * 10 + (loadavg[at] - '0');
    digits = true;
    if (running > 1'000'000) return false;
  }
  if (!digits || at >= loadavg.size() || loadavg[at] != '/' || cpus <= 0) return false;
  return running - 1 >= cpus;  // the caller is one of them
}

bool cpus_saturated_now() noexcept {
  char buf[128];
  const ssize_t n = read_proc("/proc/loadavg", buf);
  return n > 0 && cpus_saturated(std::string_view(buf, static_cast<std::size_t>(n)), g_online_cpus);
}

Contention& cpu_contention() noexcept {
  return g_cpus;
}

bool single_cpu() noexcept {
  return g_single.load(std::memory_order_relaxed);
}

FutexWaited futex_wait_woken(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                             const std::optional<steady::time_point>& deadline,
                             bool shared) noexcept {
  auto* addr = reinterpret_cast<const std::uint32_t*>(&word);
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  timespec ts{};
  const timespec* tsp = nullptr;
  if (deadline) {
    const auto ns = deadline->time_since_epoch().count();
    if (ns <= steady::now().time_since_epoch().count()) return FutexWaited::timed_out;
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    tsp = &ts;
  }
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline: the clock of steady_clock.
  // The kernel returns 0 only to a waiter a wake took off the word (it sleeps on through a
  // spurious wake-up), even if the deadline or a signal came at the same moment.
  long r = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG), expected,
                   tsp, nullptr, FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return FutexWaited::woken;
  if (errno == ETIMEDOUT) return FutexWaited::timed_out;
  return FutexWaited::other;  // EAGAIN (the value changed) or EINTR: the caller re-checks
}

bool futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                const std::optional<steady::time_point>& deadline, bool shared) noexcept {
  return futex_wait_woken(word, expected, deadline, shared) != FutexWaited::timed_out;
}

int futex_wake(const std::atomic<std::uint32_t>& word, int n, bool shared) noexcept {
  auto* addr = reinterpret_cast<const std::uint32_t*>(&word);
  const long r = syscall(SYS_futex, addr, FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG), n,
                         nullptr, nullptr, 0);
  return r > 0 ? static_cast<int>(r) : 0;
}

}  // namespace troupe::detail
