#include "troupe/subprocess/popen.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/detail/sigpipe.hpp"

#include <grp.h>
#include <pwd.h>

extern char** environ;

namespace troupe::subprocess {

namespace {

// Sanitizer runtimes cannot follow a child that shares the parent's memory on a stack of its
// own: under them the child is a real fork (slower, same behaviour).
#if defined(TROUPE_TSAN) || defined(TROUPE_ASAN)
constexpr bool kCloneVm = false;
#else
constexpr bool kCloneVm = true;
#endif

constexpr std::size_t kChunk = 65536;

// ---- the child --------------------------------------------------------------------------------

enum Stage : int { kNone = 0, kExec = 1, kChdir = 2, kSetup = 3, kPreexec = 4 };

struct ChildError {
  int stage = kNone;
  int err = 0;
  int step = 0;  // kSetup: which system call (for the message)
};

enum Step : int {
  kStepDup = 1,
  kStepSetsid,
  kStepSetpgid,
  kStepSetgroups,
  kStepSetregid,
  kStepSetreuid,
  kStepFds,
  kStepUmask,
  kStepRlimit,
  kStepPdeathsig
};

const char* step_name(int step) {
  switch (step) {
    case kStepDup: return "dup2";
    case kStepSetsid: return "setsid";
    case kStepSetpgid: return "setpgid";
    case kStepSetgroups: return "setgroups";
    case kStepSetregid: return "setregid";
    case kStepSetreuid: return "setreuid";
    case kStepFds: return "close_range";
    case kStepUmask: return "umask";
    case kStepRlimit: return "setrlimit";
    case kStepPdeathsig: return "prctl(PR_SET_PDEATHSIG)";
  }
  return "setup";
}

// Everything the child needs, prepared by the parent: the child only makes system calls.
struct ChildPlan {
  const char* const* argv = nullptr;
  const char* const* envp = nullptr;
  const char* const* paths = nullptr;  // where to look for the program, in order
  std::size_t npaths = 0;
  int p2cread = -1, c2pwrite = -1, errwrite = -1;  // -1: inherited
  int errpipe = -1;
  const char* cwd = nullptr;
  int umask = -1;
  bool new_session = false;
  pid_t pgid = -1;
  bool restore_signals = true;
  bool set_groups = false;
  const gid_t* groups = nullptr;
  std::size_t ngroups = 0;
  bool set_gid = false;
  gid_t gid = 0;
  bool set_uid = false;
  uid_t uid = 0;
  bool close_fds = true;
  const int* keep = nullptr;  // pass_fds, sorted
  std::size_t nkeep = 0;
  const ResourceLimit* rlimits = nullptr;
  std::size_t nrlimits = 0;
  int pdeathsig = 0;
  pid_t parent = 0;
  sigset_t mask{};  // the caller's signal mask, restored just before exec
  const std::function<void()>* preexec = nullptr;
};

[[noreturn]] void child_fail(const ChildPlan& p, int stage, int err, int step = 0) {
  const ChildError e{stage, err, step};
  (void)!::write(p.errpipe, &e, sizeof e);
  ::_exit(255);
}

int clear_cloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  return flags < 0 ? -1 : ::fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
}

// The child: on the parent's memory (clone with CLONE_VM | CLONE_VFORK; the parent is stopped
// until exec or _exit) or in a fork. No allocation, no locks: system calls on the plan.
int child_main(void* arg) {
  const ChildPlan& p = *static_cast<const ChildPlan*>(arg);
  // The parent's handlers must not run here: every caught signal goes back to its default
  // (ignored ones stay ignored, as across exec). Signals are blocked until the end.
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction sa;
    if (sig == SIGKILL || sig == SIGSTOP || ::sigaction(sig, nullptr, &sa) != 0) continue;
    const bool restore = p.restore_signals && (sig == SIGPIPE || sig == SIGXFSZ);
    if (sa.sa_handler == SIG_DFL || (sa.sa_handler == SIG_IGN && !restore)) continue;
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(sig, &dfl, nullptr);
  }

  // stdin, stdout, stderr (CPython's order: no source is overwritten before it is copied).
  int p2c = p.p2cread, c2p = p.c2pwrite, err = p.errwrite;
  if (c2p == 0 && (c2p = ::dup(c2p)) < 0) child_fail(p, kSetup, errno, kStepDup);
  while (err == 0 || err == 1)
    if ((err = ::dup(err)) < 0) child_fail(p, kSetup, errno, kStepDup);
  const int targets[3] = {p2c, c2p, err};
  for (int fd = 0; fd < 3; ++fd) {
    const int src = targets[fd];
    if (src == fd) {
      if (clear_cloexec(fd) != 0) child_fail(p, kSetup, errno, kStepDup);
    } else if (src >= 0 && ::dup2(src, fd) < 0) {
      child_fail(p, kSetup, errno, kStepDup);
    }
  }

  if (p.cwd && ::chdir(p.cwd) != 0) child_fail(p, kChdir, errno);
  if (p.umask >= 0) ::umask(static_cast<mode_t>(p.umask));
  if (p.new_session && ::setsid() < 0) child_fail(p, kSetup, errno, kStepSetsid);
  if (p.pgid >= 0 && ::setpgid(0, p.pgid) != 0) child_fail(p, kSetup, errno, kStepSetpgid);
  for (std::size_t i = 0; i < p.nrlimits; ++i) {
    const rlimit lim{p.rlimits[i].soft, p.rlimits[i].hard};
    if (::setrlimit(static_cast<__rlimit_resource_t>(p.rlimits[i].resource), &lim) != 0)
      child_fail(p, kSetup, errno, kStepRlimit);
  }
  if (p.set_groups && ::setgroups(p.ngroups, p.groups) != 0)
    child_fail(p, kSetup, errno, kStepSetgroups);
  if (p.set_gid && ::setregid(p.gid, p.gid) != 0) child_fail(p, kSetup, errno, kStepSetregid);
  if (p.set_uid && ::setreuid(p.uid, p.uid) != 0) child_fail(p, kSetup, errno, kStepSetreuid);
  if (p.pdeathsig) {  // after the id changes, which clear it
    if (::prctl(PR_SET_PDEATHSIG, p.pdeathsig) != 0) child_fail(p, kSetup, errno, kStepPdeathsig);
    if (::getppid() != p.parent) ::kill(::getpid(), p.pdeathsig);  // it has already gone
  }

  ::sigprocmask(SIG_SETMASK, &p.mask, nullptr);
  if (p.preexec && *p.preexec) {
    try {
      (*p.preexec)();
    } catch (...) {
      child_fail(p, kPreexec, 0);
    }
  }

  if (p.close_fds) {
    // Everything above 2 but pass_fds is marked close-on-exec (the error pipe must live until
    // the exec itself): the exec closes them all.
    unsigned lo = 3;
    for (std::size_t i = 0; i <= p.nkeep; ++i) {
      const unsigned hi = i < p.nkeep ? static_cast<unsigned>(p.keep[i]) : ~0U;
      if (hi > lo && ::close_range(lo, hi - 1, CLOSE_RANGE_CLOEXEC) != 0)
        child_fail(p, kSetup, errno, kStepFds);
      if (i < p.nkeep) {
        if (clear_cloexec(p.keep[i]) != 0) child_fail(p, kSetup, errno, kStepFds);
        lo = hi + 1;
      }
    }
  }

  int saved = 0;
  for (std::size_t i = 0; i < p.npaths; ++i) {
    ::execve(p.paths[i], const_cast<char* const*>(p.argv), const_cast<char* const*>(p.envp));
    if (errno != ENOENT && errno != ENOTDIR && saved == 0) saved = errno;
  }
  child_fail(p, kExec, saved ? saved : errno);
}

// ---- the parent -----------------------------------------------------------------------------

void check_text(const std::string& s, const char* what) {
  if (s.find('\0') != std::string::npos)
    throw ValueError(std::string(what) + ": embedded null byte");
}

// Python's os.get_exec_path(env): PATH from env if given, else from this process, else
// os.defpath.
std::vector<std::string> exec_path(const std::optional<std::map<std::string, std::string>>& env) {
  std::string path = "/bin:/usr/bin";
  if (env) {
    if (auto it = env->find("PATH"); it != env->end()) path = it->second;
  } else if (const char* p = std::getenv("PATH")) {
    path = p;
  }
  std::vector<std::string> dirs;
  std::size_t at = 0;
  for (;;) {
    const std::size_t colon = path.find(':', at);
    dirs.push_back(path.substr(at, colon == std::string::npos ? std::string::npos : colon - at));
    if (colon == std::string::npos) break;
    at = colon + 1;
  }
  return dirs;
}

uid_t resolve_user(const UserId& u) {
  if (auto* id = std::get_if<uid_t>(&u)) return *id;
  const std::string& name = std::get<std::string>(u);
  std::vector<char> buf(16384);
  passwd pw{}, *res = nullptr;
  const int rc = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &res);
  if (rc != 0) throw_os_error(rc, "getpwnam(" + name + ")");
  if (!res) throw KeyError("getpwnam(): name not found: '" + name + "'");
  return pw.pw_uid;
}

gid_t resolve_group(const GroupId& g) {
  if (auto* id = std::get_if<gid_t>(&g)) return *id;
  const std::string& name = std::get<std::string>(g);
  std::vector<char> buf(65536);
  group gr{}, *res = nullptr;
  const int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &res);
  if (rc != 0) throw_os_error(rc, "getgrnam(" + name + ")");
  if (!res) throw KeyError("getgrnam(): name not found: '" + name + "'");
  return gr.gr_gid;
}

bool wait_fd(int fd, short events, int ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, ms);
    if (r >= 0) return r == 1;
    if (errno != EINTR) throw_os_error(errno, "poll");
  }
}

int poll_ms(const std::optional<Timeout::clock::time_point>& deadline) {
  if (!deadline) return -1;
  const auto left =
      std::chrono::ceil<std::chrono::milliseconds>(*deadline - Timeout::clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

double seconds_of(const Timeout& t) {
  if (t.is_relative()) return std::chrono::duration<double>(t.relative()).count();
  return std::chrono::duration<double>(t.remaining()).count();
}

// write(2) without SIGPIPE: the signal is blocked on this thread around the call and, if the
// write raised it, consumed; EPIPE is what the caller sees.
ssize_t write_nosigpipe(int fd, const char* data, std::size_t n) {
  troupe::detail::SigpipeBlock no_sigpipe;
  ssize_t r;
  do {
    r = ::write(fd, data, n);
  } while (r < 0 && errno == EINTR);
  if (r < 0) no_sigpipe.consume(errno);
  return r;
}

// Appends `in` to `out` with universal newlines; `pending_cr` carries a "\r" across chunks.
void append_translated(std::string& out, std::string_view in, bool& pending_cr) {
  for (char c : in) {
    if (c == '\n' && pending_cr) {
      pending_cr = false;
      continue;
    }
    pending_cr = c == '\r';
    out += c == '\r' ? '\n' : c;
  }
}

}  // namespace

namespace detail {

std::string translate_newlines(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending = false;
  append_translated(out, s, pending);
  return out;
}

boost::system::error_code errno_code(int err) noexcept {
  return {err, boost::system::generic_category()};
}

}  // namespace detail

// ---- Redirect --------------------------------------------------------------------------------

Redirect::Redirect(Special s) noexcept
    : kind_(s == Special::pipe      ? Kind::pipe
            : s == Special::devnull ? Kind::devnull
                                    : Kind::stdout_) {}

Redirect::Redirect(std::FILE* file) : kind_(Kind::fd) {
  if (!file) throw ValueError("Redirect: a null FILE*");
  std::fflush(file);
  fd_ = ::fileno(file);
}

Redirect::Redirect(const Stream& stream) : kind_(Kind::fd), fd_(stream.fileno()) {}

// ---- Stream ----------------------------------------------------------------------------------

Stream::Stream(int fd, bool readable, bool text) noexcept
    : fd_(fd), readable_(readable), text_(text) {}

Stream::Stream(Stream&& o) noexcept = default;

// Written out: the reactor lets go of the old fd before it closes, as in close().
Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::move(o.fd_);
    readable_ = o.readable_;
    text_ = o.text_;
    pending_cr_ = o.pending_cr_;
    nonblocking_ = o.nonblocking_;
    grow_pipe_ = o.grow_pipe_;
    buf_ = std::move(o.buf_);
    pos_ = std::exchange(o.pos_, 0);
    executor_ = std::move(o.executor_);
    reactor_ = std::move(o.reactor_);
  }
  return *this;
}

Stream::~Stream() {
  close();
}

void Stream::close() noexcept {
  reactor_.release();
  fd_.reset();
  buf_.clear();
  pos_ = 0;
}

int Stream::fileno() const {
  if (!fd_) throw ValueError("I/O operation on closed file");
  return fd_.get();
}

void Stream::set_nonblocking() {
  if (nonblocking_ || !fd_) return;
  const int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags >= 0) ::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK);
  nonblocking_ = true;
}

ssize_t Stream::read_now(std::string& out, std::size_t n) {
  // Straight into `out` (no bounce buffer): large captures cost one copy, from the kernel.
  const std::size_t old = out.size();
  if (out.capacity() - old < n) out.reserve(std::max(out.capacity() * 2, old + n));
  out.resize(old + n);
  ssize_t r;
  do {
    r = ::read(fd_.get(), out.data() + old, n);
  } while (r < 0 && errno == EINTR);
  const int err = errno;
  out.resize(old + static_cast<std::size_t>(std::max<ssize_t>(r, 0)));
  if (r < 0) return err == EAGAIN || err == EWOULDBLOCK ? -1 : -err;
  if (text_ && r > 0) {  // translate the new bytes in place (the result is never longer)
    std::string raw = out.substr(old);
    out.resize(old);
    append_translated(out, raw, pending_cr_);
  }
  return r;
}

ssize_t Stream::write_now(const char* data, std::size_t n) {
  const ssize_t r = write_nosigpipe(fd_.get(), data, n);
  if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -errno;
  return r;
}

bool Stream::fill() {
  if (!readable_) throw ValueError("Stream: not readable");
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  for (;;) {
    const ssize_t r = read_now(buf_, kChunk);
    if (r > 0) return true;
    if (r == 0) return false;
    if (r == -1) {
      wait_fd(fileno(), POLLIN, -1);
      continue;
    }
    throw_os_error(static_cast<int>(-r), "Stream.read: fd " + std::to_string(fd_.get()));
  }
}

std::string Stream::take(std::size_t n) {
  n = std::min(n, buf_.size() - pos_);
  std::string out = buf_.substr(pos_, n);
  pos_ += n;
  return out;
}

std::string Stream::read(std::ptrdiff_t n) {
  fileno();
  if (n < 0 && text_) {
    while (fill()) {
    }
    return take(buf_.size() - pos_);
  }
  if (n < 0) {
    troupe::detail::Capture all;
    read_to_end(all);
    return all.take();
  }
  while (buf_.size() - pos_ < static_cast<std::size_t>(n) && fill()) {
  }
  return take(static_cast<std::size_t>(n));
}

void Stream::move_buffer_to(troupe::detail::Capture& sink) {
  sink.append(std::string_view(buf_).substr(pos_));
  buf_.clear();
  pos_ = 0;
}

void Stream::read_to_end(troupe::detail::Capture& sink) {
  move_buffer_to(sink);
  for (;;) {
    const ssize_t r = sink.read_from(fileno(), grow_pipe_);
    if (r == 0) return;
    if (r == -1) wait_fd(fd_.get(), POLLIN, -1);
    if (r < -1)
      throw_os_error(static_cast<int>(-r), "Stream.read: fd " + std::to_string(fd_.get()));
  }
}

std::string Stream::read1(std::size_t n) {
  fileno();
  if (pos_ == buf_.size() && !fill()) return {};
  return take(n);
}

std::string Stream::readline() {
  fileno();
  std::size_t scanned = pos_;
  for (;;) {
    const std::size_t nl = buf_.find('\n', scanned);
    if (nl != std::string::npos) return take(nl + 1 - pos_);
    scanned = buf_.size();
    if (!fill()) return take(buf_.size() - pos_);
  }
}

std::vector<std::string> Stream::readlines() {
  std::vector<std::string> lines;
  for (auto& line : *this) lines.push_back(line);
  return lines;
}

std::size_t Stream::write(std::string_view data) {
  const int fd = fileno();
  if (readable_) throw ValueError("Stream: not writable");
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t r = write_now(data.data() + done, data.size() - done);
    if (r >= 0) {
      done += static_cast<std::size_t>(r);
    } else if (r == -1) {
      wait_fd(fd, POLLOUT, -1);
    } else {
      throw_os_error(static_cast<int>(-r), "Stream.write: fd " + std::to_string(fd));
    }
  }
  return done;
}

// ---- Popen -----------------------------------------------------------------------------------

Popen::Popen(Args args, PopenOptions options)
    : args_(std::move(args.list)), shell_string_(args.is_string) {
  start(options);
}

Popen::Popen(Popen&& o) noexcept
    : stdin_(std::move(o.stdin_)),
      stdout_(std::move(o.stdout_)),
      stderr_(std::move(o.stderr_)),
      args_(std::move(o.args_)),
      shell_string_(o.shell_string_),
      pid_(std::exchange(o.pid_, -1)),
      pidfd_(std::move(o.pidfd_)),
      returncode_(o.returncode_),
      text_(o.text_),
      communication_started_(o.communication_started_),
      input_(std::move(o.input_)),
      input_offset_(o.input_offset_),
      out_(std::move(o.out_)),
      err_(std::move(o.err_)),
      executor_(std::move(o.executor_)),
      reactor_(std::move(o.reactor_)) {
  o.stdin_.reset();
  o.stdout_.reset();
  o.stderr_.reset();
}

Popen& Popen::operator=(Popen&& o) noexcept {
  if (this != &o) {
    finish();
    stdin_ = std::move(o.stdin_);
    stdout_ = std::move(o.stdout_);
    stderr_ = std::move(o.stderr_);
    o.stdin_.reset();
    o.stdout_.reset();
    o.stderr_.reset();
    args_ = std::move(o.args_);
    shell_string_ = o.shell_string_;
    pid_ = std::exchange(o.pid_, -1);
    pidfd_ = std::move(o.pidfd_);
    returncode_ = o.returncode_;
    text_ = o.text_;
    communication_started_ = o.communication_started_;
    input_ = std::move(o.input_);
    input_offset_ = o.input_offset_;
    out_ = std::move(o.out_);
    err_ = std::move(o.err_);
    executor_ = std::move(o.executor_);
    reactor_ = std::move(o.reactor_);
  }
  return *this;
}

Popen::~Popen() {
  finish();
}

void Popen::set_executor(boost::asio::any_io_executor ex) noexcept {
  reactor_.release();
  executor_ = troupe::detail::io_executor_or_default(ex);
  for (auto* s : {&stdin_, &stdout_, &stderr_})
    if (*s) (*s)->set_executor(executor_);
}

void Popen::close_pipes() noexcept {
  for (auto* s : {&stdout_, &stderr_, &stdin_})
    if (*s) (*s)->close();
}

void Popen::finish() noexcept {
  close_pipes();
  if (pid_ > 0) {
    try {
      wait();
    } catch (...) {  // a destructor: nothing may escape
    }
  }
  reactor_.release();
  pidfd_.reset();
}

void Popen::start(PopenOptions& o) {
  if (args_.empty()) throw ValueError("Popen: args is empty");
  for (const auto& a : args_) check_text(a, "Popen: an argument");
  if (o.input || o.capture_output || o.check || !o.timeout.is_forever())
    throw TypeError(
        "Popen: input, capture_output, timeout and check are arguments of run() (and call(), "
        "check_output()), not of Popen");
  text_ = o.text;
  if (!o.pass_fds.empty()) o.close_fds = true;  // Python too ("pass_fds overriding close_fds")
  std::vector<int> keep = o.pass_fds;
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  for (int fd : keep)
    if (fd < 3) throw ValueError("Popen: bad value in pass_fds: " + std::to_string(fd));

  // The command line.
  std::vector<std::string> argv = args_;
  std::string program;
  if (o.shell) {
    argv.insert(argv.begin(), {"/bin/sh", "-c"});
    if (o.executable) argv[0] = *o.executable;
    program = argv[0];
  } else {
    program = o.executable ? *o.executable : argv[0];
  }
  check_text(program, "Popen: executable");
  std::vector<std::string> candidates;
  if (program.find('/') != std::string::npos) {
    candidates.push_back(program);
  } else {
    for (const auto& dir : exec_path(o.env))
      candidates.push_back(dir.empty() ? program : dir + "/" + program);
  }
  std::vector<std::string> env_strings;
  if (o.env) {
    for (const auto& [k, v] : *o.env) {
      if (k.empty() || k.find('=') != std::string::npos)
        throw ValueError("Popen: illegal environment variable name '" + k + "'");
      check_text(k, "Popen: an environment variable name");
      check_text(v, "Popen: an environment variable value");
      env_strings.push_back(k + "=" + v);
    }
  }
  if (o.cwd) check_text(*o.cwd, "Popen: cwd");

  ChildPlan plan;
  std::vector<const char*> argv_c, env_c, paths_c;
  for (const auto& a : argv) argv_c.push_back(a.c_str());
  argv_c.push_back(nullptr);
  for (const auto& e : env_strings) env_c.push_back(e.c_str());
  env_c.push_back(nullptr);
  for (const auto& c : candidates) paths_c.push_back(c.c_str());
  plan.argv = argv_c.data();
  plan.envp = o.env ? env_c.data() : environ;
  plan.paths = paths_c.data();
  plan.npaths = paths_c.size();
  plan.cwd = o.cwd ? o.cwd->c_str() : nullptr;
  plan.umask = o.umask;
  plan.new_session = o.start_new_session;
  plan.pgid = o.process_group ? *o.process_group : -1;
  plan.restore_signals = o.restore_signals;
  std::vector<gid_t> groups;
  if (o.extra_groups) {
    for (const auto& g : *o.extra_groups) groups.push_back(resolve_group(g));
    plan.set_groups = true;
    plan.groups = groups.data();
    plan.ngroups = groups.size();
  }
  if (o.group) {
    plan.set_gid = true;
    plan.gid = resolve_group(*o.group);
  }
  if (o.user) {
    plan.set_uid = true;
    plan.uid = resolve_user(*o.user);
  }
  for (const auto& lim : o.rlimits)
    if (lim.soft > lim.hard)
      throw ValueError("Popen: rlimits: soft limit " + std::to_string(lim.soft) +
                       " above hard limit " + std::to_string(lim.hard) + " for resource " +
                       std::to_string(lim.resource));
  plan.rlimits = o.rlimits.data();
  plan.nrlimits = o.rlimits.size();
  plan.pdeathsig = o.pdeathsig;
  plan.parent = ::getpid();
  plan.close_fds = o.close_fds;
  plan.keep = keep.data();
  plan.nkeep = keep.size();
  plan.preexec = &o.preexec_fn_unsafe;

  // The pipes and files of the redirections: the parent's ends, and the child's made here.
  UniqueFd p2cwrite, c2pread, errread;
  UniqueFd child_in, child_out, child_err;
  auto make_pipe = [&](UniqueFd& parent_end, UniqueFd& child_end, bool parent_reads) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_os_error(errno, "Popen: pipe");
    parent_end.reset(parent_reads ? p[0] : p[1]);
    child_end.reset(parent_reads ? p[1] : p[0]);
    if (o.pipesize > 0 && ::fcntl(parent_end.get(), F_SETPIPE_SZ, o.pipesize) < 0)
      throw_os_error(errno, "Popen: F_SETPIPE_SZ " + std::to_string(o.pipesize));
    return child_end.get();
  };
  auto devnull = [&](UniqueFd& child_end, int flags) {
    child_end.reset(::open("/dev/null", flags | O_CLOEXEC));
    if (!child_end) throw_os_error(errno, "Popen: open /dev/null");
    return child_end.get();
  };
  switch (o.stdin_.kind()) {
    case Redirect::Kind::inherit: break;
    case Redirect::Kind::pipe: plan.p2cread = make_pipe(p2cwrite, child_in, false); break;
    case Redirect::Kind::devnull: plan.p2cread = devnull(child_in, O_RDONLY); break;
    case Redirect::Kind::stdout_: throw ValueError("Popen: STDOUT is only for stderr_");
    case Redirect::Kind::fd: plan.p2cread = o.stdin_.fd(); break;
  }
  switch (o.stdout_.kind()) {
    case Redirect::Kind::inherit: break;
    case Redirect::Kind::pipe: plan.c2pwrite = make_pipe(c2pread, child_out, true); break;
    case Redirect::Kind::devnull: plan.c2pwrite = devnull(child_out, O_WRONLY); break;
    case Redirect::Kind::stdout_: throw ValueError("Popen: STDOUT is only for stderr_");
    case Redirect::Kind::fd: plan.c2pwrite = o.stdout_.fd(); break;
  }
  switch (o.stderr_.kind()) {
    case Redirect::Kind::inherit: break;
    case Redirect::Kind::pipe: plan.errwrite = make_pipe(errread, child_err, true); break;
    case Redirect::Kind::devnull: plan.errwrite = devnull(child_err, O_WRONLY); break;
    case Redirect::Kind::stdout_: plan.errwrite = plan.c2pwrite >= 0 ? plan.c2pwrite : 1; break;
    case Redirect::Kind::fd: plan.errwrite = o.stderr_.fd(); break;
  }
  int errpipe[2];
  if (::pipe2(errpipe, O_CLOEXEC) != 0) throw_os_error(errno, "Popen: pipe");
  UniqueFd err_in(errpipe[0]), err_out(errpipe[1]), err_low;
  if (err_out.get() < 3) {         // this process has 0, 1 or 2 closed: keep it clear of them
    err_low = std::move(err_out);  // and that number taken until the child runs
    err_out.reset(::fcntl(err_low.get(), F_DUPFD_CLOEXEC, 3));
    if (!err_out) throw_os_error(errno, "Popen: fcntl(F_DUPFD)");
  }
  plan.errpipe = err_out.get();

  // Start it. All signals are blocked meanwhile, so none is handled by the child on the
  // parent's memory before it has reset its handlers.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &plan.mask);
  pid_t pid = -1;
  int pidfd = -1;
  int spawn_errno = 0;
  if (kCloneVm && !o.preexec_fn_unsafe) {
    constexpr std::size_t kStack = 256 * 1024;  // the child's frames: a few KiB
    void* stack = ::mmap(nullptr, kStack, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) {
      spawn_errno = errno;
    } else {
      pid = ::clone(child_main, static_cast<char*>(stack) + kStack,
                    CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &plan, &pidfd);
      spawn_errno = errno;
      ::munmap(stack, kStack);
    }
  } else {
    pid = ::fork();
    spawn_errno = errno;
    if (pid == 0) child_main(&plan);
    if (pid > 0)
      pidfd = troupe::pidfd_open(pid).release();  // ours and not reaped: it names this child
  }
  pthread_sigmask(SIG_SETMASK, &plan.mask, nullptr);
  if (pid < 0) throw_os_error(spawn_errno, "Popen: cannot start '" + program + "'");

  // The child's ends are the child's now; read what the child says about its exec.
  for (UniqueFd* fd : {&child_in, &child_out, &child_err, &err_out, &err_low}) fd->reset();
  ChildError e;
  ssize_t got;
  do {
    got = ::read(err_in.get(), &e, sizeof e);
  } while (got < 0 && errno == EINTR);
  pid_ = pid;
  pidfd_.reset(pidfd);
  if (got == static_cast<ssize_t>(sizeof e)) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    pidfd_.reset();
    switch (e.stage) {
      case kExec: throw_os_error(e.err, "Popen: cannot execute '" + program + "'");
      case kChdir: throw_os_error(e.err, "Popen: cannot change directory to '" + *o.cwd + "'");
      case kPreexec: throw SubprocessError("Exception occurred in preexec_fn.");
      default:
        throw_os_error(e.err, std::string("Popen: ") + step_name(e.step) + " in the child for '" +
                                  program + "'");
    }
  }
  if (!pidfd_) {  // pidfd_open failed after fork: the child runs; keep going without it
    const int err = errno;
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    throw_os_error(err, "Popen: pidfd_open for pid " + std::to_string(pid));
  }
  if (p2cwrite) stdin_.emplace(p2cwrite.release(), false, text_);
  if (c2pread) stdout_.emplace(c2pread.release(), true, text_);
  if (errread) stderr_.emplace(errread.release(), true, text_);
  for (auto* s : {&stdout_, &stderr_})
    if (*s) (*s)->grow_pipe_ = o.pipesize <= 0;
}

void Popen::reap(bool block) {
  if (returncode_ || pid_ <= 0) return;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    returncode_ = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
  } else if (r < 0 && errno == ECHILD) {
    returncode_ = 0;  // reaped by someone else (a SIGCHLD handler set to SIG_IGN): Python too
  }
}

std::optional<int> Popen::poll() {
  reap(false);
  return returncode_;
}

int Popen::wait(Timeout timeout) {
  if (returncode_) return *returncode_;
  if (pid_ <= 0) throw ValueError("Popen: no child");
  if (!timeout.is_forever()) {
    const auto deadline = timeout.deadline();
    if (!wait_fd(pidfd_.get(), POLLIN, poll_ms(deadline)))
      throw TimeoutExpired(args_, std::chrono::duration<double>(seconds_of(timeout)), {}, {},
                           shell_string_);
  }
  reap(true);
  return *returncode_;
}

void Popen::send_signal(int sig) {
  reap(false);
  if (returncode_ || !pidfd_) return;  // ended: nothing to signal (Python: no error)
  if (pidfd_send_signal(pidfd_.get(), sig) != 0 && errno != ESRCH)
    throw_os_error(errno, "Popen.send_signal: signal " + std::to_string(sig) + " to pid " +
                              std::to_string(pid_));
}

void Popen::terminate() {
  send_signal(SIGTERM);
}

void Popen::kill() {
  send_signal(SIGKILL);
}

Output Popen::communicated() {
  // Handed over, not copied (a capture can be large): a later communicate() returns "".
  Output r;
  if (stdout_) r.stdout_ = text_ ? detail::translate_newlines(out_.view()) : out_.take();
  if (stderr_) r.stderr_ = text_ ? detail::translate_newlines(err_.view()) : err_.take();
  out_.clear();
  err_.clear();
  return r;
}

Output Popen::communicate(std::optional<std::string_view> input, Timeout timeout) {
  if (communication_started_ && input && !input->empty())
    throw ValueError("Cannot send input after starting communication");
  const auto deadline = timeout.deadline();
  if (!communication_started_) {
    communication_started_ = true;
    if (stdin_ && input) input_ = std::string(*input);
    if (stdin_ && input_.empty()) stdin_->close();
    // What a reader left in a Stream's buffer comes first (raw: translated at the end).
    for (auto [s, sink] : {std::pair{&stdout_, &out_}, std::pair{&stderr_, &err_}})
      if (*s && !(*s)->closed()) {
        (*s)->move_buffer_to(*sink);
        (*s)->text_ = false;  // translated once, at the end
      }
  }
  auto open = [](std::optional<Stream>& s) { return s && !s->closed(); };
  // Python's shortcut: with no timeout and one pipe to read, no poll(): it is read to its end.
  if (!deadline && !open(stdin_) && open(stdout_) != open(stderr_)) {
    auto [s, sink] = open(stdout_) ? std::tie(stdout_, out_) : std::tie(stderr_, err_);
    try {
      s->read_to_end(sink);
    } catch (const OSError& e) {
      throw_os_error(e.errno_value(), "Popen.communicate: read from the child");
    }
    s->close();
  }
  for (;;) {
    pollfd fds[3];
    std::optional<Stream>* who[3];
    nfds_t n = 0;
    if (open(stdin_)) {
      fds[n] = {stdin_->fd_.get(), POLLOUT, 0};
      who[n++] = &stdin_;
    }
    if (open(stdout_)) {
      fds[n] = {stdout_->fd_.get(), POLLIN, 0};
      who[n++] = &stdout_;
    }
    if (open(stderr_)) {
      fds[n] = {stderr_->fd_.get(), POLLIN, 0};
      who[n++] = &stderr_;
    }
    if (n == 0) break;
    const int r = ::poll(fds, n, poll_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_os_error(errno, "Popen.communicate: poll");
    if (r == 0) {
      auto so_far = [&](const troupe::detail::Capture& c) {
        return text_ ? detail::translate_newlines(c.view()) : std::string(c.view());
      };
      throw TimeoutExpired(args_, std::chrono::duration<double>(seconds_of(timeout)), so_far(out_),
                           so_far(err_), shell_string_);
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      Stream& s = **who[i];
      s.set_nonblocking();
      if (who[i] == &stdin_) {
        const std::size_t left = input_.size() - input_offset_;
        const ssize_t w = s.write_now(input_.data() + input_offset_, std::min(left, kChunk));
        if (w >= 0) input_offset_ += static_cast<std::size_t>(w);
        // EPIPE: the child does not read it all; not an error (Python).
        if (w < -1 || input_offset_ == input_.size()) s.close();
      } else {
        troupe::detail::Capture& sink = who[i] == &stdout_ ? out_ : err_;
        const ssize_t got = sink.read_from(s.fd_.get(), s.grow_pipe_);
        if (got == 0) s.close();
        if (got < -1)
          throw_os_error(static_cast<int>(-got), "Popen.communicate: read from the child");
      }
    }
  }
  if (deadline) {
    try {
      wait(*deadline);
    } catch (const TimeoutExpired&) {
      throw TimeoutExpired(args_, std::chrono::duration<double>(seconds_of(timeout)), {}, {},
                           shell_string_);
    }
  } else {
    wait();
  }
  return communicated();
}

}  // namespace troupe::subprocess
