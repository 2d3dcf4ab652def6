// bench/big_message.cpp — one big message through a Pipe between two processes; prints the
// peak resident memory of each side, to check that nothing makes extra whole copies.
//
//   big_message MODE MIB      MODE: bytes (send_bytes/recv_bytes), typed
//                             (send/recv<std::vector<std::byte>>), raw (write/read by hand)
//
// Prints one JSON line: {"mode": ..., "bytes": N, "sender_peak": N, "receiver_peak": N,
// "baseline_peak": N} (bytes; the baseline is a process that has done nothing yet).
// bench/compare.py runs it next to the same with Python's multiprocessing.Pipe.
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "troupe/multiprocessing/connection.hpp"

namespace mp = troupe::multiprocessing;

namespace {

long peak_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss * 1024L;
}

void fill(std::byte* p, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 4096) p[i] = std::byte(i >> 12);
  if (n) p[n - 1] = std::byte{0x5a};
}

bool check(const std::byte* p, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 4096)
    if (p[i] != std::byte(i >> 12) && i != n - 1) return false;
  return n == 0 || p[n - 1] == std::byte{0x5a};
}

void raw_write(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w <= 0) std::abort();
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}

void raw_read(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::read(fd, c, n);
    if (r <= 0) std::abort();
    c += r;
    n -= static_cast<std::size_t>(r);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: big_message bytes|typed|raw MIB\n");
    return 2;
  }
  const std::string mode = argv[1];
  const std::size_t n = std::stoull(argv[2]) << 20;
  const long baseline = peak_bytes();
  auto [a, b] = mp::Pipe();
  b.set_max_message_size(n + 4096);
  int report[2];
  if (pipe(report) != 0) return 1;
  const pid_t pid = fork();  // before the big allocation, so the child starts small
  if (pid == 0) {
    a.close();
    bool ok = false;
    if (mode == "bytes") {
      auto m = b.recv_bytes();
      ok = m.size() == n && check(m.data(), n);
    } else if (mode == "typed") {
      auto m = b.recv<std::vector<std::byte>>();
      ok = m.size() == n && check(m.data(), n);
    } else {
      std::uint64_t len = 0;
      raw_read(b.fileno(), &len, sizeof len);
      auto* p = static_cast<std::byte*>(std::malloc(len));
      raw_read(b.fileno(), p, len);
      ok = len == n && check(p, n);
      std::free(p);
    }
    const long peak = ok ? peak_bytes() : -1;
    raw_write(report[1], &peak, sizeof peak);
    _exit(ok ? 0 : 1);
  }
  b.close();
  std::vector<std::byte> msg(n);
  fill(msg.data(), n);
  if (mode == "bytes") {
    a.send_bytes(msg);
  } else if (mode == "typed") {
    a.send(msg);
  } else {
    const std::uint64_t len = n;
    raw_write(a.fileno(), &len, sizeof len);
    raw_write(a.fileno(), msg.data(), n);
  }
  long receiver = -1;
  raw_read(report[0], &receiver, sizeof receiver);
  int status = 0;
  waitpid(pid, &status, 0);
  std::printf(
      "{\"mode\": \"%s\", \"bytes\": %zu, \"sender_peak\": %ld, \"receiver_peak\": %ld, "
      "\"baseline_peak\": %ld}\n",
      mode.c_str(), n, peak_bytes(), receiver, baseline);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
