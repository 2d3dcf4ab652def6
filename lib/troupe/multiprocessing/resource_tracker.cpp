#include "troupe/multiprocessing/resource_tracker.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "troupe/errors.hpp"
#include "troupe/internal/process_internal.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing::resource_tracker {
namespace {

constexpr std::size_t kMaxName = 255;  // NAME_MAX: a longer name cannot exist in /dev/shm
constexpr int kTrackerFd = 3;

// ---- the tracker (a forked child of a possibly threaded process: system calls only) -------

struct Entry {
  char name[kMaxName + 1];  // with the leading '/', NUL-terminated
};

void say(const char* a, const char* b, const char* c) noexcept {
  // One write, so that lines of several trackers do not interleave.
  char line[kMaxName + 160];
  std::size_t n = 0;
  for (const char* p : {a, b, c})
    for (; *p && n < sizeof line - 1; ++p) line[n++] = *p;
  line[n++] = '\n';
  (void)!::write(2, line, n);
}

[[noreturn]] void tracker_main(int sock, int other) noexcept {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGINT, &ignore, nullptr);
  ::sigaction(SIGTERM, &ignore, nullptr);
  ::sigaction(SIGPIPE, &ignore, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::prctl(PR_SET_NAME, "troupe-tracker", 0, 0, 0);
  ::close(other);
  if (sock != kTrackerFd) {
    if (::dup2(sock, kTrackerFd) < 0) ::_exit(1);
  }
  ::syscall(SYS_close_range, kTrackerFd + 1, ~0u, 0);  // nothing of the parent's stays open
  ::setsid();  // not in the terminal's process group: a Ctrl-C there does not reach it

  const int me = static_cast<int>(::getpid());
  if (::send(kTrackerFd, &me, sizeof me, MSG_NOSIGNAL) != sizeof me) ::_exit(1);

  std::size_t capacity = 64, used = 0;
  void* mem = ::mmap(nullptr, capacity * sizeof(Entry), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) ::_exit(1);
  auto* table = static_cast<Entry*>(mem);

  char msg[kMaxName + 2];
  for (;;) {
    const ssize_t n = ::recv(kTrackerFd, msg, sizeof msg, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // every process of the tree has closed its end
    // A message is 'R' or 'U' and the name; the senders checked it.
    const auto len = static_cast<std::size_t>(n - 1);
    if (len == 0 || len > kMaxName) continue;
    if (msg[0] == 'R') {
      if (used == capacity) {
        void* grown =
            ::mremap(table, capacity * sizeof(Entry), 2 * capacity * sizeof(Entry), MREMAP_MAYMOVE);
        if (grown == MAP_FAILED) {
          say("troupe resource_tracker: out of memory; not tracking ", "", "");
          continue;
        }
        table = static_cast<Entry*>(grown);
        capacity *= 2;
      }
      std::memcpy(table[used].name, msg + 1, len);
      table[used].name[len] = '\0';
      ++used;
    } else if (msg[0] == 'U') {
      for (std::size_t i = used; i-- > 0;) {
        if (std::strlen(table[i].name) == len && std::memcmp(table[i].name, msg + 1, len) == 0) {
          table[i] = table[--used];
          break;
        }
      }
    }
  }
  char path[sizeof "/dev/shm" + kMaxName + 1];
  for (std::size_t i = 0; i < used; ++i) {
    std::memcpy(path, "/dev/shm", 8);
    std::memcpy(path + 8, table[i].name, std::strlen(table[i].name) + 1);
    if (::unlink(path) == 0)
      say("troupe resource_tracker: unlinked leaked shared_memory '", table[i].name,
          "' (created with track=true, never unlinked)");
  }
  ::_exit(0);
}

using multiprocessing::detail::fork_now;

// ---- the client ----------------------------------------------------------------------------

struct Client {
  std::mutex m;
  UniqueFd fd;
  int pid = 0;
};

Client& client() {
  static Client* c = new Client;  // never destroyed: usable from exit handlers
  return *c;
}

void start_locked(Client& c) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    throw_os_error(errno, "socketpair for the resource tracker");
  UniqueFd mine(sv[0]), theirs(sv[1]);
  const pid_t mid = fork_now();
  if (mid == 0) {
    const pid_t tracker = fork_now();
    if (tracker == 0) tracker_main(sv[1], sv[0]);
    ::_exit(tracker < 0 ? 1 : 0);
  }
  theirs.reset();
  if (mid < 0) throw_os_error(errno, "fork for the resource tracker");
  int status = 0;
  while (::waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  // The tracker says its pid first; it has nothing else to do before that.
  pollfd p{mine.get(), POLLIN, 0};
  int pid = 0;
  if (::poll(&p, 1, 10'000) != 1 || ::recv(mine.get(), &pid, sizeof pid, 0) != sizeof pid)
    throw OSError(EIO, "the resource tracker did not start within 10 s");
  c.fd = std::move(mine);
  c.pid = pid;
}

void check_name(const std::string& name, const std::string& rtype) {
  if (rtype != "shared_memory")
    throw ValueError("resource tracker: cannot track a '" + rtype +
                     "' (troupe tracks shared_memory only)");
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos ||
      name.size() > kMaxName || name.find('\0') != std::string::npos)
    throw ValueError("resource tracker: '" + name + "' is not a POSIX shared memory name");
}

void send_locked(Client& c, char op, const std::string& name) {
  std::string msg(1, op);
  msg += name;
  for (int attempt = 0;; ++attempt) {
    if (!c.fd) start_locked(c);
    if (::send(c.fd.get(), msg.data(), msg.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(msg.size()))
      return;
    const int e = errno;
    if (attempt > 0 || (e != EPIPE && e != ECONNRESET))
      throw_os_error(e, "sending to the resource tracker (pid " + std::to_string(c.pid) + ")");
    c.fd.reset();  // the tracker has gone (killed?): start another, as Python does
  }
}

}  // namespace

void ensure_running() {
  Client& c = client();
  std::lock_guard lock(c.m);
  if (!c.fd) start_locked(c);
}

void register_resource(const std::string& name, const std::string& rtype) {
  check_name(name, rtype);
  Client& c = client();
  std::lock_guard lock(c.m);
  send_locked(c, 'R', name);
}

void unregister_resource(const std::string& name, const std::string& rtype) {
  check_name(name, rtype);
  Client& c = client();
  std::lock_guard lock(c.m);
  send_locked(c, 'U', name);
}

int tracker_pid() noexcept {
  Client& c = client();
  std::lock_guard lock(c.m);
  return c.pid;
}

detail::ForChild detail::pass_to_child() {
  Client& c = client();
  std::lock_guard lock(c.m);
  if (!c.fd) start_locked(c);
  return {multiprocessing::detail::pass_fd(c.fd.get()), c.pid};
}

void detail::inherit(int fd, int pid) noexcept {
  Client& c = client();
  std::lock_guard lock(c.m);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  c.fd.reset(fd);  // closes the one it had (unless it is this one)
  c.pid = pid;
}

}  // namespace troupe::multiprocessing::resource_tracker
