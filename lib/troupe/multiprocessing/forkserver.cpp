#include "troupe/multiprocessing/forkserver.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string_view>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "troupe/errors.hpp"
#include "troupe/internal/process_internal.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/process.hpp"

extern char** environ;

namespace troupe::multiprocessing {

namespace {

using detail::SpawnBootstrap;
using forkserver_detail::ServedChild;

constexpr int kBootFd = 3;    // the server's bootstrap message
constexpr int kListenFd = 4;  // its listening socket
constexpr int kAliveFd = 5;   // end of file here: the tree that started it has ended
// SCM_RIGHTS carries at most 253 fds in one message; a request takes three of its own.
constexpr std::size_t kMaxPassed = 250;
constexpr std::size_t kRequestFds = 3;  // the client's pidfd, stdout, stderr
constexpr std::uint64_t kMaxRequest = std::uint64_t{64} << 20;
constexpr std::chrono::milliseconds kHandshake{10000};
constexpr std::string_view kReady = "troupe-forkserver-ready";

// What the server reads first, on kBootFd.
struct ServerBootstrap {
  std::vector<std::byte> authkey;
  std::string address;  // the abstract socket's name
  std::vector<std::string> preload;
};

// This process's view of its forkserver. A served child gets the server's address and key, so
// its own forkserver children come from the same server.
struct ClientState {
  std::mutex m;
  std::string address;  // empty: no server known
  AuthenticationString key;
  int alive = -1;  // the alive pipe's write end (the starting process and its forks hold it)
  int pid = 0;
  int pidfd = -1;  // the server's: readable once it has ended
  std::vector<std::string> preload;
};

ClientState& client() {
  static ClientState* const c = new ClientState;  // never destroyed: used until _exit
  return *c;
}

int pidfd_open(int pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

int pidfd_send_signal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

struct Fds {  // closes what it holds
  std::vector<int> v;
  Fds() = default;
  Fds(const Fds&) = delete;
  Fds& operator=(const Fds&) = delete;
  ~Fds() {
    for (int fd : v)
      if (fd >= 0) ::close(fd);
  }
  int take(std::size_t i) { return std::exchange(v[i], -1); }
};

void set_io_timeout(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// `payload` with `fds` attached (SCM_RIGHTS) on a Unix stream socket.
void send_fds(int sock, std::span<const int> fds, const void* payload, std::size_t n,
              const char* what) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  iovec iov{const_cast<void*>(payload), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t r;
  do {
    r = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(n))
    throw_os_error(r < 0 ? errno : EIO, std::string("forkserver: sending ") + what);
}

// Reads exactly `n` payload bytes, and the fds that came with the first of them (at most
// `max_fds`, close-on-exec). @throws EOFError on end of file; OSError when more fds came than
// allowed (they are closed) or the read fails.
void recv_fds(int sock, void* payload, std::size_t n, Fds& out, std::size_t max_fds,
              const char* what) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * max_fds));
  iovec iov{payload, n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t r;
  do {
    r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) throw_os_error(errno, std::string("forkserver: receiving ") + what);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.v.push_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC)
    throw OSError(EMSGSIZE, std::string("forkserver: ") + what + ": more than " +
                                std::to_string(max_fds) + " fds came; they were closed");
  if (r == 0) throw EOFError(std::string("forkserver: end of file receiving ") + what);
  auto* at = static_cast<char*>(payload) + r;
  std::size_t left = n - static_cast<std::size_t>(r);
  while (left > 0) {
    const ssize_t k = ::recv(sock, at, left, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) throw_os_error(errno, std::string("forkserver: receiving ") + what);
    if (k == 0) throw EOFError(std::string("forkserver: end of file receiving ") + what);
    at += k;
    left -= static_cast<std::size_t>(k);
  }
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> b(bytes);
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1)
    throw OSError(EIO, "forkserver: no random bytes for the socket's name");
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// Starts the server: the listening socket is made here (clients can connect at once), then a
// double fork and an exec of this program with the socket, the bootstrap pipe and the alive
// pipe on fds 3, 4, 5. Only system calls run between the forks and the exec.
void start_locked(ClientState& c) {
  AuthenticationString key = current_process().authkey();
  const std::string name = "troupe-forkserver-" + std::to_string(::getpid()) + "-" + random_hex(8);
  ListenerOptions lo;
  lo.backlog = 128;
  lo.authkey = key;
  Listener listener(Address{Address::Family::unix_abstract, name, 0}, lo);

  Fds fds;  // everything made here, closed when done
  auto high = [&](int fd) {
    const int h = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (h < 0) throw_os_error(errno, "forkserver: fcntl(F_DUPFD)");
    fds.v.push_back(h);
    return h;
  };
  auto pipe = [&](int(&p)[2]) {
    if (::pipe2(p, O_CLOEXEC) != 0) throw_os_error(errno, "forkserver: pipe");
    fds.v.push_back(p[0]);
    fds.v.push_back(p[1]);
  };
  int boot[2], alive[2], report[2];
  pipe(boot);
  pipe(alive);
  pipe(report);
  const int hb = high(boot[0]);
  const int hl = high(listener.fileno());
  const int ha = high(alive[0]);
  const std::string exe = detail::spawn_executable();
  const std::string fd_text = std::to_string(kBootFd);
  char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>(forkserver_detail::kFlag),
                  const_cast<char*>(fd_text.c_str()), nullptr};
  const pid_t mid = detail::fork_now();
  if (mid == 0) {
    const pid_t server = detail::fork_now();
    if (server == 0) {
      ::dup2(hb, kBootFd);
      ::dup2(hl, kListenFd);
      ::dup2(ha, kAliveFd);
      const int null = ::open("/dev/null", O_RDWR);  // stdout: the server prints nothing there
      if (null >= 0) ::dup2(null, 1);
      ::close_range(kAliveFd + 1, ~0U, 0);
      ::execve(exe.c_str(), argv, environ);
      ::_exit(127);
    }
    (void)!::write(report[1], &server, sizeof server);
    ::_exit(server < 0 ? 1 : 0);
  }
  if (mid < 0) throw_os_error(errno, "forkserver: fork");
  while (::waitpid(mid, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_t server = -1;
  if (::read(report[0], &server, sizeof server) != sizeof server || server < 0)
    throw OSError(EAGAIN, "forkserver: could not fork the server");
  // Opened before the server has its bootstrap message, for which it waits: it is alive then
  // unless its exec failed (and the first request finds its socket closed).
  const int server_fd = pidfd_open(server);
  fds.v.push_back(server_fd);
  {
    ServerBootstrap sb;
    auto k = key.bytes();
    sb.authkey.assign(k.begin(), k.end());
    sb.address = name;
    sb.preload = c.preload;
    struct Wipe {
      std::vector<std::byte>& b;
      ~Wipe() { OPENSSL_cleanse(b.data(), b.size()); }
    } wipe{sb.authkey};
    for (auto& fd : fds.v)
      if (fd == boot[1]) fd = -1;
    Connection out(boot[1], false, true);
    out.send(sb);
  }
  for (auto& fd : fds.v)
    if (fd == alive[1] || fd == server_fd) fd = -1;  // kept
  c.address = name;
  c.key = std::move(key);
  c.alive = alive[1];
  c.pid = server;
  c.pidfd = server_fd;
}

// The server is gone (its socket refuses): forget it, so the next request starts another.
void forget_locked(ClientState& c, const std::string& address) {
  if (c.address != address) return;  // another thread has already started a new one
  c.address.clear();
  if (c.alive >= 0) ::close(c.alive);
  c.alive = -1;
  if (c.pidfd >= 0) ::close(c.pidfd);
  c.pidfd = -1;
  c.pid = 0;
}

// ---- the server ----------------------------------------------------------------------------

struct Served {
  pid_t pid;
  int pidfd;
  int connection;    // the client's: the wait status goes there
  int client_pidfd;  // a daemon's client: when it ends, the daemon is terminated; else -1
};

void say(const std::string& text) {
  const std::string line =
      "troupe forkserver (pid " + std::to_string(::getpid()) + "): " + text + "\n";
  (void)!::write(2, line.data(), line.size());
}

// In the forked child: drop the server's fds, take the client's stdio, run the target.
[[noreturn]] void become_served(const std::vector<Served>& served, int connection, Fds& fds,
                                SpawnBootstrap& request) {
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGPIPE, SIG_DFL);
  ::close(kListenFd);
  ::close(kAliveFd);
  ::close(connection);
  for (const auto& s : served) {
    ::close(s.pidfd);
    ::close(s.connection);
    if (s.client_pidfd >= 0) ::close(s.client_pidfd);
  }
  ::dup2(fds.v[1], 1);
  ::dup2(fds.v[2], 2);
  const int null = ::open("/dev/null", O_RDONLY);
  if (null >= 0 && null != 0) {
    ::dup2(null, 0);
    ::close(null);
  }
  {
    ClientState& c = client();
    std::lock_guard lock(c.m);
    c.pid = ::getppid();
    c.pidfd = pidfd_open(c.pid);  // the server is this child's parent: no pid reuse possible
  }
  std::vector<int> passed(fds.v.begin() + kRequestFds, fds.v.end());
  const int parent = fds.take(0);
  ::close(fds.take(1));
  ::close(fds.take(2));
  fds.v.clear();  // the passed fds now belong to the child's table
  detail::run_child(request, std::move(passed), parent);
}

void reply(int sock, std::int32_t pid_or_error, std::span<const int> fds) {
  send_fds(sock, fds, &pid_or_error, sizeof pid_or_error, "the reply");
}

// One client: the handshake, its request, the fork, the reply. Errors end this client only.
void serve_one(std::vector<Served>& served, const AuthenticationString& key) {
  const int fd = ::accept4(kListenFd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;
  try {
    Connection conn(fd);
    set_io_timeout(fd, kHandshake);  // a stalled client holds the server this long at most
    deliver_challenge(conn, key);
    answer_challenge(conn, key);
    conn.send_bytes(std::as_bytes(std::span(kReady)));
    Fds fds;
    char tag = 0;
    recv_fds(fd, &tag, 1, fds, kRequestFds + kMaxPassed, "a request's fds");
    conn.set_max_message_size(kMaxRequest);
    auto request = conn.recv<SpawnBootstrap>();
    if (request.passed_fds < 0 ||
        fds.v.size() != kRequestFds + static_cast<std::size_t>(request.passed_fds))
      throw OSError(EPROTO, "a request for " + std::to_string(request.passed_fds) +
                                " passed fds came with " + std::to_string(fds.v.size()) + " fds");
    set_io_timeout(fd, std::chrono::milliseconds(0));
    const pid_t pid = ::fork();
    if (pid == 0) become_served(served, fd, fds, request);
    if (pid < 0) {
      const int err = errno;
      reply(fd, -err, {});
      throw_os_error(err, "fork for " + request.name);
    }
    const int pidfd = pidfd_open(pid);  // the child cannot have been reaped: it is ours
    if (pidfd < 0) {
      const int err = errno;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      reply(fd, -err, {});
      throw_os_error(err, "pidfd_open for pid " + std::to_string(pid));
    }
    Served s{pid, pidfd, -1, request.daemon ? fds.take(0) : -1};
    s.connection = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    served.push_back(s);
    if (s.connection < 0) throw_os_error(errno, "fcntl(F_DUPFD)");
    const int reply_fds[] = {pidfd};
    reply(fd, pid, reply_fds);
  } catch (const AuthenticationError& e) {
    say(std::string("a client failed authentication: ") + e.what());
  } catch (const std::exception& e) {
    say(std::string("a request failed: ") + e.what());
  }
}

// Hands a served child's wait status to its client, once it has ended.
void finish(Served& s) {
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(s.pid, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != s.pid) return;
  const std::int32_t st = status;
  (void)::send(s.connection, &st, sizeof st, MSG_NOSIGNAL | MSG_DONTWAIT);
  ::close(s.connection);
  ::close(s.pidfd);
  if (s.client_pidfd >= 0) ::close(s.client_pidfd);
  s.pid = -1;
}

void preload(const std::vector<std::string>& names) {
  for (const auto& name : names) {
    const detail::EntryPoint* e = detail::find_entry(name);
    if (!e) {
      say("no entry point named '" + name + "' to preload");
      continue;
    }
    try {
      e->invoke(troupe::to_bytes(std::tuple<>{}));
    } catch (const std::exception& ex) {
      say("preloading '" + name + "' failed: " + ex.what());
    }
  }
}

}  // namespace

namespace forkserver_detail {

void serve(int bootstrap_fd) {
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is for the clients (Python's forkserver ignores it too)
  ::signal(SIGPIPE, SIG_IGN);
  ServerBootstrap boot;
  try {
    Connection in(bootstrap_fd, true, false);
    boot = in.recv<ServerBootstrap>();
  } catch (const std::exception& e) {
    say(std::string("cannot read the bootstrap message: ") + e.what());
    ::_exit(1);
  }
  const AuthenticationString key{std::span<const std::byte>(boot.authkey)};
  OPENSSL_cleanse(boot.authkey.data(), boot.authkey.size());
  {
    ClientState& c = client();
    std::lock_guard lock(c.m);
    c.address = boot.address;
    c.key = key;
    c.pid = ::getpid();
  }
  preload(boot.preload);

  std::vector<Served> served;
  std::vector<pollfd> p;
  for (;;) {
    p.clear();
    p.push_back({kAliveFd, POLLIN, 0});
    p.push_back({kListenFd, POLLIN, 0});
    for (const auto& s : served) {
      p.push_back({s.pidfd, POLLIN, 0});
      p.push_back({s.client_pidfd, POLLIN, 0});  // -1: poll skips it
    }
    if (::poll(p.data(), p.size(), -1) < 0) {
      if (errno == EINTR) continue;
      say(std::string("poll failed: ") + std::strerror(errno));
      ::_exit(1);
    }
    if (p[0].revents) {  // every process of the tree has ended: so do its daemons, and we
      for (const auto& s : served)
        if (s.client_pidfd >= 0) pidfd_send_signal(s.pidfd, SIGTERM);
      ::_exit(0);
    }
    for (std::size_t i = 0; i < served.size(); ++i) {
      Served& s = served[i];
      if (p[2 + 2 * i].revents) {
        finish(s);
      } else if (s.client_pidfd >= 0 && p[3 + 2 * i].revents) {
        // A daemon's parent has ended without terminating it (killed): as PR_SET_PDEATHSIG
        // does for a forked daemon.
        pidfd_send_signal(s.pidfd, SIGTERM);
        ::close(s.client_pidfd);
        s.client_pidfd = -1;
      }
    }
    std::erase_if(served, [](const Served& s) { return s.pid < 0; });
    if (p[1].revents & POLLIN) serve_one(served, key);
  }
}

ServedChild start_child(const SpawnBootstrap& boot, std::span<const int> passed) {
  if (passed.size() > kMaxPassed)
    throw ValueError("Process.start (forkserver) of " + boot.name + ": " +
                     std::to_string(passed.size()) + " fds to pass, limit " +
                     std::to_string(kMaxPassed));
  for (int attempt = 0;; ++attempt) {
    std::string address;
    std::optional<AuthenticationString> key;
    {
      ClientState& c = client();
      std::lock_guard lock(c.m);
      if (c.address.empty()) start_locked(c);
      address = c.address;
      key = c.key;
    }
    const Address where{Address::Family::unix_abstract, address, 0};
    std::optional<Connection> conn;
    try {
      ClientOptions o;
      o.authkey = std::move(key);
      o.timeout = kHandshake;
      conn.emplace(Client(where, o));
    } catch (const OSError& e) {
      if (e.errno_value() != ECONNREFUSED) throw;
      ClientState& c = client();
      std::lock_guard lock(c.m);
      forget_locked(c, address);
      if (attempt == 0) continue;  // it has ended: start another, once
      throw OSError(ECONNREFUSED, "forkserver at " + where.str() +
                                      " refused the connection just after it was started (does "
                                      "main call freeze_support() first? is " +
                                      detail::spawn_executable() + " this program?)");
    }
    const int sock = conn->fileno();
    const auto ready = conn->recv_bytes(kReady.size());
    if (std::string_view(reinterpret_cast<const char*>(ready.data()), ready.size()) != kReady)
      throw OSError(EPROTO, "forkserver at " + where.str() + ": not a troupe forkserver");
    Fds mine;
    const int self = pidfd_open(::getpid());
    if (self < 0) throw_os_error(errno, "forkserver: pidfd_open of this process");
    mine.v.push_back(self);
    std::vector<int> fds{self, 1, 2};
    for (int i = 1; i <= 2; ++i)
      if (::fcntl(i, F_GETFD) < 0) {  // closed here: the child gets /dev/null
        fds[static_cast<std::size_t>(i)] = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
        mine.v.push_back(fds[static_cast<std::size_t>(i)]);
      }
    fds.insert(fds.end(), passed.begin(), passed.end());
    const char tag = 'F';
    send_fds(sock, fds, &tag, 1, "a request");
    conn->send(boot);
    pollfd pf{sock, POLLIN, 0};
    int r;
    do {
      r = ::poll(&pf, 1, static_cast<int>(kHandshake.count()));
    } while (r < 0 && errno == EINTR);
    if (r == 0)
      throw TimeoutError("forkserver at " + where.str() + " did not answer within " +
                         std::to_string(kHandshake.count()) + " ms");
    std::int32_t pid = 0;
    Fds got;
    recv_fds(sock, &pid, sizeof pid, got, 1, "the reply");
    if (pid <= 0) throw_os_error(-pid, "forkserver: fork for " + boot.name);
    if (got.v.size() != 1)
      throw OSError(EPROTO, "forkserver: the reply for pid " + std::to_string(pid) +
                                " came without its pidfd");
    ServedChild child;
    child.pid = pid;
    child.connection = ::fcntl(sock, F_DUPFD_CLOEXEC, 0);
    if (child.connection < 0) throw_os_error(errno, "forkserver: fcntl(F_DUPFD)");
    child.pidfd = got.take(0);
    return child;
  }
}

}  // namespace forkserver_detail

void set_forkserver_preload(std::vector<std::string> entry_names) {
  for (const auto& name : entry_names)
    if (!detail::find_entry(name))
      throw ValueError("set_forkserver_preload: no entry point named '" + name +
                       "' (register it with TROUPE_ENTRY)");
  ClientState& c = client();
  std::lock_guard lock(c.m);
  c.preload = std::move(entry_names);
}

namespace forkserver {

void ensure_running() {
  ClientState& c = client();
  std::lock_guard lock(c.m);
  if (!c.address.empty()) {
    pollfd p{c.pidfd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 0) return;
    forget_locked(c, c.address);  // it has ended (Python checks its pid the same way)
  }
  start_locked(c);
}

std::string address() {
  ClientState& c = client();
  std::lock_guard lock(c.m);
  if (c.address.empty()) return {};
  return Address{Address::Family::unix_abstract, c.address, 0}.str();
}

int server_pid() noexcept {
  ClientState& c = client();
  std::lock_guard lock(c.m);
  return c.pid;
}

}  // namespace forkserver

}  // namespace troupe::multiprocessing
