#include "troupe/multiprocessing/forkserver.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

#include <openssl/crypto.h>

#include "troupe/errors.hpp"
#include "troupe/internal/process_internal.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/internal/secret_message.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/unique_fd.hpp"

#include <dirent.h>

extern char** environ;

namespace troupe::multiprocessing {

namespace {

using detail::SpawnBootstrap;
using forkserver_detail::ServedChild;
using Clock = std::chrono::steady_clock;

constexpr int kBootFd = 3;   // the server's bootstrap message
constexpr int kReadyFd = 4;  // the server writes its pid here once it listens
constexpr int kAliveFd = 5;  // end of file here: the tree that started it has ended
// SCM_RIGHTS carries at most 253 fds in one message; a request takes four of its own.
constexpr std::size_t kMaxPassed = 249;
// The child's bootstrap pipe, the client's pidfd, its stdout and its stderr.
constexpr std::size_t kRequestFds = 4;
constexpr std::size_t kMaxHandshakeFrame = 256;
constexpr std::size_t kMaxRequest = 64 * 1024;
constexpr std::size_t kMaxNameInRequest = 4096;
constexpr std::size_t kMaxPending = 64;  // handshakes in progress; the oldest goes first
constexpr std::chrono::milliseconds kHandshake{10000};
constexpr std::string_view kReady = "troupe-forkserver-ready";

// What the server reads first, on kBootFd.
struct ServerBootstrap {
  std::vector<std::byte> authkey;
  std::string path;  // where to listen: a socket in a directory only this user can enter
  std::vector<std::string> preload;
};

// What a client asks for. Nothing secret: the child's own bootstrap message (with its authkey)
// goes from the client to the child through a pipe whose read end travels with the request.
struct ForkRequest {
  std::string name;  // for messages
  bool daemon = false;
  std::int32_t passed_fds = 0;
};

// This process's view of its forkserver. A served child gets the server's address and key, so
// its own forkserver children come from the same server.
struct ClientState {
  std::mutex m;
  std::string path;  // the server's socket; empty: no server known
  std::string dir;   // the private directory that holds it
  AuthenticationString key;
  UniqueFd alive;  // the alive pipe's write end (the starting process and its forks hold it)
  int pid = 0;
  UniqueFd pidfd;  // the server's: readable once it has ended
  std::vector<std::string> preload;
};

ClientState& client() {
  return troupe::internal::runtime::global<ClientState>();  // used until _exit
}

bool has_ended(int pidfd) {
  if (pidfd < 0) return true;
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

using Fds = std::vector<UniqueFd>;

void set_io_timeout(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// `payload` with `fds` attached (SCM_RIGHTS) on a Unix stream socket.
void send_fds(int sock, std::span<const int> fds, const void* payload, std::size_t n,
              const char* what, int flags = 0) {
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
    r = ::sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
  } while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(n))
    throw_os_error(r < 0 ? errno : EIO, std::string("forkserver: sending ") + what);
}

// One recvmsg: payload bytes into `payload` (at most n), fds into `out` (at most `max_fds`,
// close-on-exec). Returns the byte count (0 at end of file), -1 with errno.
// @throws OSError when more fds came than allowed (they are closed).
ssize_t recv_some(int sock, void* payload, std::size_t n, Fds& out, std::size_t max_fds, int flags,
                  const char* what) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<std::size_t>(max_fds, 1)));
  iovec iov{payload, n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t r;
  do {
    r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return r;
  std::size_t came = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.emplace_back(fd);
      ++came;
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) || came > max_fds)
    throw OSError(EMSGSIZE, std::string("forkserver: ") + what + ": more than " +
                                std::to_string(max_fds) + " fds came; they were closed");
  return r;
}

// The client side's blocking read of exactly `n` bytes (the reply), fds included.
void recv_exact(int sock, void* payload, std::size_t n, Fds& out, std::size_t max_fds,
                const char* what) {
  auto* at = static_cast<char*>(payload);
  while (n > 0) {
    const ssize_t r = recv_some(sock, at, n, out, max_fds, 0, what);
    if (r < 0) throw_os_error(errno, std::string("forkserver: receiving ") + what);
    if (r == 0) throw EOFError(std::string("forkserver: end of file receiving ") + what);
    at += r;
    n -= static_cast<std::size_t>(r);
  }
}

// ---- where the server listens ----------------------------------------------------------------

// A new directory only this user can enter (mkdtemp: mode 0700), checked after it is made:
// another user can neither connect to a socket in it nor put one there. $TMPDIR, else /tmp
// (also when $TMPDIR would make the socket's path too long for sun_path).
std::string make_private_dir() {
  std::string base;
  if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
  if (base.empty() || base.size() + 32 > sizeof(sockaddr_un{}.sun_path)) base = "/tmp";
  std::string templ = base + "/troupe-fs-XXXXXX";
  if (!::mkdtemp(templ.data()))
    throw_os_error(errno, "forkserver: cannot make a private directory in " + base);
  struct stat st {};
  if (::lstat(templ.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() ||
      (st.st_mode & 0077) != 0) {
    ::rmdir(templ.c_str());
    throw OSError(EPERM, "forkserver: " + templ + " is not a directory private to uid " +
                             std::to_string(::geteuid()));
  }
  return templ;
}

std::string socket_path(const std::string& dir) {
  return dir + "/s";
}

void remove_private_dir(const std::string& dir) {
  if (dir.empty()) return;
  ::unlink(socket_path(dir).c_str());
  ::rmdir(dir.c_str());
}

// The peer of a connected Unix socket: `uid` must be ours and, when `pid` is not 0, its pid
// that one. Checked before anything is sent. @throws OSError EPERM naming both.
void check_peer(int fd, pid_t pid, const std::string& what) {
  ucred cr{};
  socklen_t len = sizeof cr;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
    throw_os_error(errno, what + ": SO_PEERCRED");
  if (cr.uid != ::geteuid() || (pid != 0 && cr.pid != pid))
    throw OSError(EPERM, what + ": the peer is pid " + std::to_string(cr.pid) + " uid " +
                             std::to_string(cr.uid) + ", expected " +
                             (pid != 0 ? "pid " + std::to_string(pid) + " " : std::string()) +
                             "uid " + std::to_string(::geteuid()) + "; refused");
}

// ---- starting the server ---------------------------------------------------------------------

// What the process that made the server does at exit: if its server has died without cleaning
// up (killed), its directory goes. A live server removes it itself when the tree has ended.
void cleanup_at_exit() {
  ClientState& c = client();
  std::unique_lock lock(c.m, std::try_to_lock);
  if (!lock.owns_lock() || c.dir.empty()) return;
  if (has_ended(c.pidfd.get())) remove_private_dir(c.dir);
}

// Starts the server: a double fork and an exec of this program with the bootstrap pipe, the
// ready pipe and the alive pipe on fds 3, 4, 5 (only system calls run between the forks and
// the exec); then waits until it listens. The server makes its socket itself, so that the
// socket's credentials (SO_PEERCRED) are the server's.
void start_locked(ClientState& c) {
  AuthenticationString key = current_process().authkey();
  const std::string dir = make_private_dir();
  struct RemoveUnlessKept {
    std::string dir;
    ~RemoveUnlessKept() { remove_private_dir(dir); }
  } remove{dir};

  // Everything made here closes when done, but what is handed on.
  struct Pipe {
    UniqueFd r, w;
  };
  auto pipe = [] {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_os_error(errno, "forkserver: pipe");
    return Pipe{UniqueFd(p[0]), UniqueFd(p[1])};
  };
  auto high = [](const UniqueFd& fd) {
    UniqueFd h(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 10));
    if (!h) throw_os_error(errno, "forkserver: fcntl(F_DUPFD)");
    return h;
  };
  Pipe boot = pipe(), ready = pipe(), alive = pipe(), report = pipe();
  UniqueFd hb = high(boot.r), hr = high(ready.w), ha = high(alive.r);
  const std::string exe = detail::spawn_executable();
  const std::string fd_text = std::to_string(kBootFd);
  char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>(forkserver_detail::kFlag),
                  const_cast<char*>(fd_text.c_str()), nullptr};
  const pid_t mid = detail::fork_now();
  if (mid == 0) {
    const pid_t server = detail::fork_now();
    if (server == 0) {
      ::dup2(hb.get(), kBootFd);
      ::dup2(hr.get(), kReadyFd);
      ::dup2(ha.get(), kAliveFd);
      const int null = ::open("/dev/null", O_RDWR);  // stdout: the server prints nothing there
      if (null >= 0) ::dup2(null, 1);
      ::close_range(kAliveFd + 1, ~0U, 0);
      ::execve(exe.c_str(), argv, environ);
      ::_exit(127);
    }
    (void)!::write(report.w.get(), &server, sizeof server);
    ::_exit(server < 0 ? 1 : 0);
  }
  if (mid < 0) throw_os_error(errno, "forkserver: fork");
  while (::waitpid(mid, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_t server = -1;
  if (::read(report.r.get(), &server, sizeof server) != sizeof server || server < 0)
    throw OSError(EAGAIN, "forkserver: could not fork the server");
  // Opened before the server has its bootstrap message, for which it waits: it is alive then
  // unless its exec failed.
  UniqueFd server_fd = pidfd_open(server);
  if (!server_fd) throw_os_error(errno, "forkserver: pidfd_open of the server");
  auto kill_server = [&] {
    pidfd_send_signal(server_fd.get(), SIGKILL);
    pollfd p{server_fd.get(), POLLIN, 0};
    ::poll(&p, 1, 1000);  // it must not clean up after the directory has been reused
  };
  for (UniqueFd* fd : {&hb, &hr, &ha, &ready.w}) fd->reset();  // the server's ends: ours go now
  {
    ServerBootstrap sb;
    auto k = key.bytes();
    sb.authkey.assign(k.begin(), k.end());
    sb.path = socket_path(dir);
    sb.preload = c.preload;
    const internal::WipeOnExit wipe{sb.authkey};
    Connection out(boot.w.release(), false, true);
    try {
      internal::send_secret(out, sb);  // no copy of the key left behind
    } catch (const OSError&) {         // it has ended already: the ready pipe says so below
    }
  }
  // Until it listens (or ends: then the ready pipe reaches end of file).
  const auto deadline = Clock::now() + kHandshake;
  pid_t said = 0;
  std::size_t got = 0;
  while (got < sizeof said) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{ready.r.get(), POLLIN, 0};
    const int r = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      kill_server();
      throw TimeoutError("forkserver: the server (pid " + std::to_string(server) +
                         ") did not listen within " + std::to_string(kHandshake.count()) +
                         " ms (does main call freeze_support() first? is " + exe +
                         " this program?)");
    }
    const ssize_t k =
        ::read(ready.r.get(), reinterpret_cast<char*>(&said) + got, sizeof said - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      kill_server();
      throw OSError(ECHILD, "forkserver: the server (pid " + std::to_string(server) +
                                ") ended before it listened (its stderr says why; does main "
                                "call freeze_support() first? is " +
                                exe + " this program?)");
    }
    got += static_cast<std::size_t>(k);
  }
  if (said != server) {
    kill_server();
    throw OSError(EPROTO, "forkserver: the server said pid " + std::to_string(said) +
                              ", it was started as pid " + std::to_string(server));
  }
  remove.dir.clear();
  c.path = socket_path(dir);
  c.dir = dir;
  c.key = std::move(key);
  c.alive = std::move(alive.w);
  c.pid = server;
  c.pidfd = std::move(server_fd);
  troupe::internal::runtime::at_exit(troupe::internal::runtime::ExitStep::forkserver,
                                     cleanup_at_exit);
}

// The server has ended: forget it (and remove its directory if it could not), so the next
// request starts another.
void forget_locked(ClientState& c) {
  if (c.path.empty()) return;
  remove_private_dir(c.dir);
  c.path.clear();
  c.dir.clear();
  c.alive.reset();
  c.pidfd.reset();
  c.pid = 0;
}

// ---- the server ------------------------------------------------------------------------------

struct Served {
  pid_t pid;
  UniqueFd pidfd;
  UniqueFd connection;    // the client's: the wait status goes there
  UniqueFd client_pidfd;  // a daemon's client: when it ends, the daemon is terminated; else none
};

// The server's own fds: its listening socket and the alive pipe's read end.
struct ServerFds {
  UniqueFd listen;
  UniqueFd alive;
};

// A client between its connect and its request: every step is a non-blocking read or write,
// so clients proceed side by side, each under one deadline from its connect to its request.
struct Handshake {
  enum Step { kAnswer, kTheirChallenge, kVerdict, kTag, kRequest };
  UniqueFd fd;
  Clock::time_point deadline;
  Step step = kAnswer;
  detail::Challenge challenge;
  std::vector<std::byte> in;  // received, not yet used
  Fds fds;                    // came with the request
};

void say(const std::string& text) {
  const std::string line =
      "troupe forkserver (pid " + std::to_string(::getpid()) + "): " + text + "\n";
  (void)!::write(2, line.data(), line.size());
}

// In the forked child: drop the server's fds, take the client's stdio, read the bootstrap the
// client writes into the pipe, run the target.
[[noreturn]] void become_served(std::vector<Served>& served,
                                std::deque<std::unique_ptr<Handshake>>& pending, ServerFds& own,
                                Handshake& mine) {
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGPIPE, SIG_DFL);
  own.listen.reset();
  own.alive.reset();
  mine.fd.reset();
  served.clear();  // their pidfds and connections
  std::erase_if(pending, [&](const std::unique_ptr<Handshake>& h) { return h.get() != &mine; });
  Fds& fds = mine.fds;
  ::dup2(fds[2].get(), 1);
  ::dup2(fds[3].get(), 2);
  UniqueFd null(::open("/dev/null", O_RDONLY));
  if (null.get() == 0)
    (void)null.release();  // stdin was closed: this is it now
  else if (null)
    ::dup2(null.get(), 0);
  {
    ClientState& c = client();
    std::lock_guard lock(c.m);
    c.pid = ::getppid();
    c.pidfd = pidfd_open(c.pid);  // the server is this child's parent: no pid reuse possible
  }
  SpawnBootstrap boot;
  try {
    const UniqueFd in(fds[0].release());
    boot = internal::recv_secret<SpawnBootstrap>(in.get());  // its buffer wiped
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: a forkserver child cannot read its bootstrap message: %s\n",
                 e.what());
    ::_exit(1);
  }
  std::vector<UniqueFd> passed(std::make_move_iterator(fds.begin() + kRequestFds),
                               std::make_move_iterator(fds.end()));
  if (passed.size() != static_cast<std::size_t>(boot.passed_fds)) {
    std::fprintf(stderr, "troupe: a forkserver child got %zu fds, its bootstrap says %d\n",
                 passed.size(), boot.passed_fds);
    ::_exit(1);
  }
  UniqueFd parent = std::move(fds[1]);
  fds.clear();  // the client's stdio goes; the passed fds now belong to the child's table
  detail::run_child(boot, std::move(passed), std::move(parent));
}

void reply(int sock, std::int32_t pid_or_error, std::span<const int> fds) {
  send_fds(sock, fds, &pid_or_error, sizeof pid_or_error, "the reply", MSG_DONTWAIT);
}

// One frame (CPython's framing, short form only) written without blocking: handshake frames
// are small and the socket's buffer is empty when they go.
void send_frame(int fd, std::span<const std::byte> payload) {
  std::vector<std::byte> frame(4 + payload.size());
  const auto n = static_cast<std::uint32_t>(payload.size());
  frame[0] = std::byte(n >> 24);
  frame[1] = std::byte(n >> 16);
  frame[2] = std::byte(n >> 8);
  frame[3] = std::byte(n);
  std::memcpy(frame.data() + 4, payload.data(), payload.size());
  ssize_t r;
  do {
    r = ::send(fd, frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(frame.size()))
    throw_os_error(r < 0 ? errno : EAGAIN, "forkserver: sending a handshake message");
}

// The next whole frame of at most `limit` bytes from h.in, if it has arrived.
std::optional<std::vector<std::byte>> take_frame(Handshake& h, std::size_t limit) {
  if (h.in.size() < 4) return std::nullopt;
  const std::uint32_t n = (std::uint32_t(h.in[0]) << 24) | (std::uint32_t(h.in[1]) << 16) |
                          (std::uint32_t(h.in[2]) << 8) | std::uint32_t(h.in[3]);
  if (n > limit)
    throw OSError(EMSGSIZE, "a client announced a message of " + std::to_string(n) +
                                " bytes, limit " + std::to_string(limit));
  if (h.in.size() - 4 < n) return std::nullopt;
  std::vector<std::byte> out(h.in.begin() + 4, h.in.begin() + 4 + n);
  h.in.erase(h.in.begin(), h.in.begin() + 4 + n);
  return out;
}

// Reads what the client has sent and takes the handshake as far as it goes. Returns the
// request once it is whole. @throws on any failure (the client is then dropped).
std::optional<ForkRequest> advance(Handshake& h, const AuthenticationString& key) {
  const AuthOptions auth;
  std::byte buf[4096];
  const std::size_t max_fds = h.step == Handshake::kTag ? kRequestFds + kMaxPassed : 0;
  const ssize_t r =
      recv_some(h.fd.get(), buf, sizeof buf, h.fds, max_fds, MSG_DONTWAIT, "a request");
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::nullopt;
  if (r < 0) throw_os_error(errno, "forkserver: receiving from a client");
  if (r == 0) throw EOFError("the client closed its connection during the handshake");
  if (h.in.size() + static_cast<std::size_t>(r) > kMaxRequest + 4)
    throw OSError(EMSGSIZE, "a client sent more than " + std::to_string(kMaxRequest) +
                                " bytes before its request was whole");
  h.in.insert(h.in.end(), buf, buf + r);
  for (;;) {
    if (h.step == Handshake::kTag) {
      if (h.in.empty()) return std::nullopt;
      if (h.in.front() != std::byte{'F'}) throw OSError(EPROTO, "a request without its tag");
      h.in.erase(h.in.begin());
      h.step = Handshake::kRequest;
      continue;
    }
    const std::size_t limit = h.step == Handshake::kRequest ? kMaxRequest : kMaxHandshakeFrame;
    auto frame = take_frame(h, limit);
    if (!frame) return std::nullopt;
    switch (h.step) {
      case Handshake::kAnswer: try { detail::check_answer(h.challenge, *frame, key, auth);
        } catch (const AuthenticationError&) {
          try {
            send_frame(h.fd.get(), detail::failure_message());
          } catch (const OSError&) {
          }
          throw;
        }
        send_frame(h.fd.get(), detail::welcome_message());
        h.step = Handshake::kTheirChallenge;
        break;
      case Handshake::kTheirChallenge:
        send_frame(h.fd.get(), detail::make_answer(*frame, key, auth));
        h.step = Handshake::kVerdict;
        break;
      case Handshake::kVerdict:
        detail::check_welcome(*frame);
        send_frame(h.fd.get(), std::as_bytes(std::span(kReady)));
        h.step = Handshake::kTag;
        break;
      case Handshake::kTag: break;  // handled above
      case Handshake::kRequest: {
        if (!h.in.empty()) throw OSError(EPROTO, "a client sent more after its request");
        return troupe::from_bytes<ForkRequest>(*frame);
      }
    }
  }
}

// Forks the child a complete request asks for and answers with its pid and pidfd.
void fork_for(std::vector<Served>& served, std::deque<std::unique_ptr<Handshake>>& pending,
              ServerFds& own, Handshake& h, const ForkRequest& request) {
  if (request.passed_fds < 0 ||
      h.fds.size() != kRequestFds + static_cast<std::size_t>(request.passed_fds))
    throw OSError(EPROTO, "a request for " + std::to_string(request.passed_fds) +
                              " passed fds came with " + std::to_string(h.fds.size()) + " fds");
  const int fd = h.fd.get();
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);  // the child's status write later
  const pid_t pid = ::fork();
  if (pid == 0) become_served(served, pending, own, h);
  if (pid < 0) {
    const int err = errno;
    reply(fd, -err, {});
    throw_os_error(err, "fork for " + request.name);
  }
  UniqueFd pidfd = pidfd_open(pid);  // the child cannot have been reaped: it is ours
  if (!pidfd) {
    const int err = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    reply(fd, -err, {});
    throw_os_error(err, "pidfd_open for pid " + std::to_string(pid));
  }
  const int reply_fds[] = {pidfd.get()};
  served.push_back(Served{pid, std::move(pidfd), std::move(h.fd),
                          request.daemon ? std::move(h.fds[1]) : UniqueFd()});
  reply(fd, pid, reply_fds);
}

// Accepts every client waiting (same uid only), and sends each its challenge.
void accept_all(int listen_fd, std::deque<std::unique_ptr<Handshake>>& pending) {
  for (;;) {
    UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN, or out of fds: the rest wait in the backlog
    }
    auto h = std::make_unique<Handshake>();
    h->fd = std::move(fd);
    h->deadline = Clock::now() + kHandshake;
    try {
      check_peer(h->fd.get(), 0, "a client");
      h->challenge = detail::make_challenge(AuthOptions{});
      send_frame(h->fd.get(), h->challenge.wire);
    } catch (const std::exception& e) {
      say(std::string("a client was refused: ") + e.what());
      continue;
    }
    if (pending.size() >= kMaxPending) {
      say("more than " + std::to_string(kMaxPending) +
          " clients in their handshakes: the oldest was dropped");
      pending.pop_front();
    }
    pending.push_back(std::move(h));
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
  (void)::send(s.connection.get(), &st, sizeof st, MSG_NOSIGNAL | MSG_DONTWAIT);
  s.connection.reset();
  s.pidfd.reset();
  s.client_pidfd.reset();
  s.pid = -1;
}

void preload(const std::vector<std::string>& names) {
  for (const auto& name : names) {
    const EntryPoint* e = find_entry(name);
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

// The server's socket, at `path` in its private directory. None after saying why.
UniqueFd listen_at(const std::string& path) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (path.size() >= sizeof un.sun_path) {
    say("socket path too long: " + path);
    return {};
  }
  std::memcpy(un.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd || ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&un), sizeof un) != 0 ||
      ::listen(fd.get(), 128) != 0) {
    say("cannot listen at " + path + ": " + std::strerror(errno));
    return {};
  }
  return fd;
}

}  // namespace

namespace forkserver_detail {

void serve(int bootstrap_fd) {
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is for the clients (Python's forkserver ignores it too)
  ::signal(SIGPIPE, SIG_IGN);
  ServerBootstrap boot;
  try {
    const UniqueFd in(bootstrap_fd);
    boot = internal::recv_secret<ServerBootstrap>(in.get());  // its buffer wiped
  } catch (const std::exception& e) {
    say(std::string("cannot read the bootstrap message: ") + e.what());
    ::_exit(1);
  }
  const AuthenticationString key{std::span<const std::byte>(boot.authkey)};
  OPENSSL_cleanse(boot.authkey.data(), boot.authkey.size());
  const std::string dir = boot.path.substr(0, boot.path.rfind('/'));
  ServerFds own{listen_at(boot.path), UniqueFd(kAliveFd)};
  if (!own.listen) ::_exit(1);
  {
    ClientState& c = client();
    std::lock_guard lock(c.m);
    c.path = boot.path;
    c.dir = dir;
    c.key = key;
    c.pid = ::getpid();
  }
  {
    const pid_t me = ::getpid();
    const UniqueFd ready(kReadyFd);
    (void)!::write(ready.get(), &me, sizeof me);
  }
  preload(boot.preload);

  std::vector<Served> served;
  std::deque<std::unique_ptr<Handshake>> pending;
  std::vector<pollfd> p;
  for (;;) {
    p.clear();
    p.push_back({own.alive.get(), POLLIN, 0});
    p.push_back({own.listen.get(), POLLIN, 0});
    for (const auto& s : served) {
      p.push_back({s.pidfd.get(), POLLIN, 0});
      p.push_back({s.client_pidfd.get(), POLLIN, 0});  // -1: poll skips it
    }
    const std::size_t first_pending = p.size();
    auto wait = std::chrono::milliseconds(-1);
    const auto now = Clock::now();
    for (const auto& h : pending) {
      p.push_back({h->fd.get(), POLLIN, 0});
      const auto left = std::max(std::chrono::milliseconds(0),
                                 std::chrono::ceil<std::chrono::milliseconds>(h->deadline - now));
      if (wait.count() < 0 || left < wait) wait = left;
    }
    if (::poll(p.data(), p.size(), static_cast<int>(wait.count())) < 0) {
      if (errno == EINTR) continue;
      say(std::string("poll failed: ") + std::strerror(errno));
      ::_exit(1);
    }
    if (p[0].revents) {  // every process of the tree has ended: so do its daemons, and we
      for (const auto& s : served)
        if (s.client_pidfd) pidfd_send_signal(s.pidfd.get(), SIGTERM);
      remove_private_dir(dir);
      ::_exit(0);
    }
    for (std::size_t i = 0; i < served.size(); ++i) {
      Served& s = served[i];
      if (p[2 + 2 * i].revents) {
        finish(s);
      } else if (s.client_pidfd && p[3 + 2 * i].revents) {
        // A daemon's parent has ended without terminating it (killed): as PR_SET_PDEATHSIG
        // does for a forked daemon.
        pidfd_send_signal(s.pidfd.get(), SIGTERM);
        s.client_pidfd.reset();
      }
    }
    std::erase_if(served, [](const Served& s) { return s.pid < 0; });
    // Clients in their handshakes, each as far as what it has sent allows.
    const auto then = Clock::now();
    for (std::size_t i = 0; i < pending.size(); ++i) {
      Handshake& h = *pending[i];
      const short revents = p[first_pending + i].revents;
      try {
        if (revents) {
          if (auto request = advance(h, key)) {
            fork_for(served, pending, own, h, *request);
            continue;  // served: h.fd now belongs to `served`
          }
        }
        if (then >= h.deadline)
          throw TimeoutError("its handshake and request took longer than " +
                             std::to_string(kHandshake.count()) + " ms");
      } catch (const AuthenticationError& e) {
        say(std::string("a client failed authentication: ") + e.what());
        h.fd.reset();
      } catch (const std::exception& e) {
        say(std::string("a client was dropped: ") + e.what());
        h.fd.reset();
      }
    }
    std::erase_if(pending, [](const std::unique_ptr<Handshake>& h) { return !h->fd; });
    if (p[1].revents & POLLIN) accept_all(own.listen.get(), pending);
  }
}

ServedChild start_child(const SpawnBootstrap& boot, std::span<const UniqueFd> passed) {
  if (passed.size() > kMaxPassed)
    throw ValueError("Process.start (forkserver) of " + boot.name + ": " +
                     std::to_string(passed.size()) + " fds to pass, limit " +
                     std::to_string(kMaxPassed));
  for (int attempt = 0;; ++attempt) {
    std::string path;
    std::optional<AuthenticationString> key;
    pid_t server = 0;
    {
      ClientState& c = client();
      std::lock_guard lock(c.m);
      // A server that has ended is never asked again: its name could be anyone's by now.
      if (!c.path.empty() && has_ended(c.pidfd.get())) forget_locked(c);
      if (c.path.empty()) start_locked(c);
      path = c.path;
      key = c.key;
      server = c.pid;
    }
    const Address where{Address::Family::unix_path, path, 0};
    const std::string what = "forkserver at " + where.str();
    const int sock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) throw_os_error(errno, what + ": socket");
    Connection conn(sock);
    {
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      std::memcpy(un.sun_path, path.data(), std::min(path.size(), sizeof un.sun_path - 1));
      int r;
      do {
        r = ::connect(sock, reinterpret_cast<const sockaddr*>(&un), sizeof un);
      } while (r < 0 && errno == EINTR);
      if (r != 0) {
        const int err = errno;
        ClientState& c = client();
        std::lock_guard lock(c.m);
        if (c.path == path && has_ended(c.pidfd.get())) {
          forget_locked(c);
          if (attempt == 0) continue;  // it has just ended: start another, once
        }
        throw_os_error(err, what + ": connect");
      }
    }
    // Before anything is sent: the peer must be the server this process knows, alive.
    check_peer(sock, server, what);
    set_io_timeout(sock, kHandshake);
    try {
      answer_challenge(conn, *key);
      deliver_challenge(conn, *key);
      const auto ready = conn.recv_bytes(kReady.size());
      if (std::string_view(reinterpret_cast<const char*>(ready.data()), ready.size()) != kReady)
        throw OSError(EPROTO, what + ": not a troupe forkserver");
    } catch (const BlockingIOError&) {
      throw TimeoutError(what + ": the handshake took longer than " +
                         std::to_string(kHandshake.count()) + " ms");
    }
    Fds mine;
    mine.push_back(pidfd_open(::getpid()));
    if (!mine.back()) throw_os_error(errno, "forkserver: pidfd_open of this process");
    const int self = mine.back().get();
    int boot_pipe[2];
    if (::pipe2(boot_pipe, O_CLOEXEC) != 0) throw_os_error(errno, "forkserver: pipe");
    mine.emplace_back(boot_pipe[0]);
    Connection boot_out(boot_pipe[1], false, true);
    std::vector<int> fds{boot_pipe[0], self, 1, 2};
    for (int i = 1; i <= 2; ++i)
      if (::fcntl(i, F_GETFD) < 0) {  // closed here: the child gets /dev/null
        mine.emplace_back(::open("/dev/null", O_WRONLY | O_CLOEXEC));
        fds[static_cast<std::size_t>(i) + 1] = mine.back().get();
      }
    for (const UniqueFd& fd : passed) fds.push_back(fd.get());
    ForkRequest request;
    request.name = boot.name.substr(0, kMaxNameInRequest);
    request.daemon = boot.daemon;
    request.passed_fds = boot.passed_fds;
    const char tag = 'F';
    send_fds(sock, fds, &tag, 1, "a request");
    conn.send_bytes(troupe::to_bytes(request));
    pollfd pf{sock, POLLIN, 0};
    int r;
    do {
      r = ::poll(&pf, 1, static_cast<int>(kHandshake.count()));
    } while (r < 0 && errno == EINTR);
    if (r == 0)
      throw TimeoutError(what + " did not answer within " + std::to_string(kHandshake.count()) +
                         " ms");
    std::int32_t pid = 0;
    Fds got;
    recv_exact(sock, &pid, sizeof pid, got, 1, "the reply");
    if (pid <= 0) throw_os_error(-pid, "forkserver: fork for " + boot.name);
    if (got.size() != 1)
      throw OSError(EPROTO, "forkserver: the reply for pid " + std::to_string(pid) +
                                " came without its pidfd");
    // The child reads who it is (its authkey too) from the pipe: never through the server.
    try {
      internal::send_secret(boot_out, boot);  // no copy of the key left behind
    } catch (const OSError&) {  // the child died before reading: its exitcode says how
    }
    ServedChild child;
    child.pid = pid;
    child.connection.reset(::fcntl(sock, F_DUPFD_CLOEXEC, 0));
    if (!child.connection) throw_os_error(errno, "forkserver: fcntl(F_DUPFD)");
    set_io_timeout(child.connection.get(), std::chrono::milliseconds(0));
    child.pidfd = std::move(got[0]);
    return child;
  }
}

}  // namespace forkserver_detail

void set_forkserver_preload(std::vector<std::string> entry_names) {
  for (const auto& name : entry_names)
    if (!find_entry(name))
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
  if (!c.path.empty()) {
    if (!has_ended(c.pidfd.get())) return;
    forget_locked(c);  // it has ended (Python checks its pid the same way)
  }
  start_locked(c);
}

std::string address() {
  ClientState& c = client();
  std::lock_guard lock(c.m);
  if (c.path.empty()) return {};
  return Address{Address::Family::unix_path, c.path, 0}.str();
}

int server_pid() noexcept {
  ClientState& c = client();
  std::lock_guard lock(c.m);
  return c.pid;
}

}  // namespace forkserver

}  // namespace troupe::multiprocessing
