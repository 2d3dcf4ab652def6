#include "troupe/multiprocessing/process.hpp"

#include <cxxabi.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <typeinfo>

#include "troupe/errors.hpp"

#include <dirent.h>

namespace troupe::multiprocessing {

namespace detail {

struct ProcessState {
  enum class Kind { child, current, parent };

  mutable std::mutex m;
  Kind kind = Kind::child;
  std::string name;
  bool daemon = false;
  std::vector<int> identity;  // Python's _identity: the counters down from the main process
  AuthenticationString authkey;
  int creator = -1;  // the pid of the process that made this object (Python's _parent_pid)
  int pid = -1;
  int pidfd = -1;
  std::optional<int> exitcode;
  bool closed = false;

  ~ProcessState() {
    if (pidfd >= 0) ::close(pidfd);
  }
};

}  // namespace detail

namespace {

using detail::ProcessState;
using Kind = ProcessState::Kind;

// This process's view: itself, its parent, its children. A forked child resets it.
struct Registry {
  std::mutex m;
  std::shared_ptr<ProcessState> current;
  std::shared_ptr<ProcessState> parent;
  std::vector<std::shared_ptr<ProcessState>> children;
  int counter = 0;
  bool exit_handler = false;
};

Registry& registry() {
  static Registry* const r = new Registry;  // never destroyed: the exit handler uses it
  return *r;
}

std::shared_ptr<ProcessState> current_state() {
  Registry& r = registry();
  std::lock_guard lock(r.m);
  if (!r.current) {
    auto s = std::make_shared<ProcessState>();
    s->kind = Kind::current;
    s->name = "MainProcess";
    s->authkey = AuthenticationString::random();
    s->pid = ::getpid();
    r.current = std::move(s);
  }
  return r.current;
}

int pidfd_open(int pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

int pidfd_send_signal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// Threads a sanitizer runtime starts on its own (TSan's background thread), which fork handles.
#if defined(__SANITIZE_THREAD__)
constexpr int kRuntimeThreads = 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr int kRuntimeThreads = 1;
#else
constexpr int kRuntimeThreads = 0;
#endif
#else
constexpr int kRuntimeThreads = 0;
#endif

int count_threads() {
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return 1;
  int n = 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

std::string demangled(const std::type_info& t) {
  int status = 0;
  char* s = abi::__cxa_demangle(t.name(), nullptr, nullptr, &status);
  std::string out = status == 0 && s ? s : t.name();
  std::free(s);
  return out;
}

// Python's Popen.poll for a child: reaps it if it has ended (or waits when `block`). Called with
// the state's lock held.
void reap(ProcessState& s, bool block) {
  if (s.exitcode || s.pid < 0 || s.kind != Kind::child) return;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(s.pid, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == s.pid) s.exitcode = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

void check_closed(const ProcessState& s) {
  if (s.closed) throw ValueError("process object is closed");
}

void forget_child(const std::shared_ptr<ProcessState>& s) {
  Registry& r = registry();
  std::lock_guard lock(r.m);
  std::erase(r.children, s);
}

// Python's util._exit_function, the part about children: daemonic ones are terminated, then
// all are joined. Runs at exit of any process that started children, and at the end of a child.
void exit_function() {
  auto children = active_children();
  for (auto& c : children)
    if (c.daemon()) c.terminate();
  for (auto& c : children) c.join();
}

void run_exit_function() {
  try {
    exit_function();
  } catch (...) {  // at exit, nothing may escape
  }
}

}  // namespace

// ---- BaseProcess ----------------------------------------------------------------------------

std::string BaseProcess::name() const {
  std::lock_guard lock(state_->m);
  return state_->name;
}

void BaseProcess::set_name(std::string name) {
  std::lock_guard lock(state_->m);
  state_->name = std::move(name);
}

bool BaseProcess::daemon() const {
  std::lock_guard lock(state_->m);
  return state_->daemon;
}

void BaseProcess::set_daemon(bool daemon) {
  std::lock_guard lock(state_->m);
  if (state_->kind == Kind::child && state_->pid >= 0)
    throw ProcessError("process has already started");
  state_->daemon = daemon;
}

std::optional<int> BaseProcess::pid() const {
  std::lock_guard lock(state_->m);
  if (state_->pid < 0) return std::nullopt;
  return state_->pid;
}

std::optional<int> BaseProcess::exitcode() const {
  std::lock_guard lock(state_->m);
  check_closed(*state_);
  reap(*state_, false);
  return state_->exitcode;
}

AuthenticationString BaseProcess::authkey() const {
  std::lock_guard lock(state_->m);
  return state_->authkey;
}

void BaseProcess::set_authkey(AuthenticationString key) {
  std::lock_guard lock(state_->m);
  state_->authkey = std::move(key);
}

int BaseProcess::sentinel() const {
  std::lock_guard lock(state_->m);
  check_closed(*state_);
  if (state_->pidfd < 0) throw ValueError("process not started");
  return state_->pidfd;
}

bool BaseProcess::is_alive() const {
  std::unique_lock lock(state_->m);
  check_closed(*state_);
  switch (state_->kind) {
    case Kind::current: return true;
    case Kind::parent: {
      pollfd p{state_->pidfd, POLLIN, 0};
      return state_->pidfd >= 0 && ::poll(&p, 1, 0) == 0;
    }
    case Kind::child: break;
  }
  if (state_->creator != ::getpid()) throw ProcessError("can only test a child process");
  if (state_->pid < 0) return false;
  reap(*state_, false);
  if (!state_->exitcode) return true;
  lock.unlock();
  forget_child(state_);
  return false;
}

void BaseProcess::join(Timeout timeout) const {
  int fd;
  {
    std::lock_guard lock(state_->m);
    check_closed(*state_);
    if (state_->kind == Kind::current) throw ProcessError("can only join a child process");
    if (state_->kind == Kind::child && state_->creator != ::getpid())
      throw ProcessError("can only join a child process");
    if (state_->pid < 0) throw ProcessError("can only join a started process");
    if (state_->exitcode) return;
    fd = state_->pidfd;
  }
  // Wait for the pidfd outside the lock (is_alive and signals stay usable meanwhile).
  const auto deadline = timeout.deadline();
  for (;;) {
    int ms = -1;
    if (deadline) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(
          *deadline - std::chrono::steady_clock::now());
      ms = left.count() < 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 1 << 30));
    }
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_os_error(errno, "Process.join: poll on the pidfd of " + name());
    if (r == 0) return;  // timed out: exitcode stays None
    break;
  }
  std::unique_lock lock(state_->m);
  reap(*state_, true);
  lock.unlock();
  if (state_->kind == Kind::child) forget_child(state_);
}

namespace {
void signal_child(const std::shared_ptr<ProcessState>& s, int sig, const char* what) {
  std::lock_guard lock(s->m);
  check_closed(*s);
  if (s->kind != Kind::child || s->creator != ::getpid())
    throw ProcessError(std::string("can only ") + what + " a child process");
  if (s->pid < 0) throw ProcessError(std::string("can only ") + what + " a started process");
  reap(*s, false);
  if (s->exitcode) return;  // ended: nothing to signal, no error (Python)
  if (pidfd_send_signal(s->pidfd, sig) != 0 && errno != ESRCH)
    throw_os_error(errno, std::string("Process.") + what + ": signal " + std::to_string(sig) +
                              " to pid " + std::to_string(s->pid));
}
}  // namespace

void BaseProcess::terminate() const {
  signal_child(state_, SIGTERM, "terminate");
}

void BaseProcess::kill() const {
  signal_child(state_, SIGKILL, "kill");
}

void BaseProcess::interrupt() const {
  signal_child(state_, SIGINT, "interrupt");
}

void BaseProcess::close() const {
  {
    std::lock_guard lock(state_->m);
    if (state_->closed) return;
    if (state_->kind == Kind::child && state_->pid >= 0) {
      reap(*state_, false);
      if (!state_->exitcode)
        throw ValueError(
            "Cannot close a process while it is still running. You should first call join() or "
            "terminate().");
    }
    if (state_->pidfd >= 0) ::close(state_->pidfd);
    state_->pidfd = -1;
    state_->closed = true;
  }
  forget_child(state_);
}

std::string BaseProcess::repr() const {
  std::lock_guard lock(state_->m);
  std::string out = "<Process name='" + state_->name + "'";
  if (state_->closed) return out + " closed>";
  if (state_->kind != Kind::child) return out + " pid=" + std::to_string(state_->pid) + ">";
  if (state_->pid < 0) return out + " initial" + (state_->daemon ? " daemon>" : ">");
  out += " pid=" + std::to_string(state_->pid) + " parent=" + std::to_string(state_->creator);
  if (state_->exitcode) return out + " stopped exitcode=" + std::to_string(*state_->exitcode) + ">";
  return out + " started" + (state_->daemon ? " daemon>" : ">");
}

// ---- Process --------------------------------------------------------------------------------

Process::Process(ProcessOptions options)
    : BaseProcess(std::make_shared<ProcessState>()), fork_with_threads_(options.fork_with_threads) {
  auto me = current_state();
  Registry& r = registry();
  int n;
  {
    std::lock_guard lock(r.m);
    n = ++r.counter;
  }
  auto& s = *state_;
  {
    std::lock_guard lock(me->m);
    s.identity = me->identity;
    s.authkey = me->authkey;
  }
  s.identity.push_back(n);
  s.creator = ::getpid();
  s.daemon = options.daemon;
  if (options.name.empty()) {
    s.name = "Process-";
    for (std::size_t i = 0; i < s.identity.size(); ++i)
      s.name += (i ? ":" : "") + std::to_string(s.identity[i]);
  } else {
    s.name = std::move(options.name);
  }
}

Process::~Process() = default;

void Process::run() {
  if (target_) target_();
}

void Process::start() {
  auto& s = *state_;
  {
    std::lock_guard lock(s.m);
    check_closed(s);
    if (s.pid >= 0) throw ProcessError("cannot start a process twice");
    if (s.creator != ::getpid())
      throw ProcessError("can only start a process object created by current process");
  }
  if (current_process().daemon())
    throw ProcessError("daemonic processes are not allowed to have children");
  if (!fork_with_threads_) {
    const int threads = count_threads() - kRuntimeThreads;
    if (threads > 1)
      throw RuntimeError("Process.start: this process runs " + std::to_string(threads) +
                         " threads, and fork() would copy their locks into the child as they "
                         "are; start processes before threads, or set "
                         "ProcessOptions::fork_with_threads to accept the risk");
  }
  active_children();     // Python's _cleanup(): reap the children that have ended
  std::fflush(nullptr);  // buffered output would be written twice
  const int parent = ::getpid();
  const bool main_thread = ::gettid() == parent;
  const std::string name = this->name();
  const pid_t pid = ::fork();
  if (pid < 0) throw_os_error(errno, "Process.start: fork for " + name);
  if (pid == 0) {
    // ---- the child ----
    Registry& r = registry();
    auto parent_state = std::make_shared<ProcessState>();
    parent_state->kind = Kind::parent;
    parent_state->pid = parent;
    parent_state->pidfd = pidfd_open(parent);
    if (r.current) parent_state->name = r.current->name;
    r.parent = std::move(parent_state);
    r.children.clear();
    r.counter = 0;
    s.kind = Kind::current;
    s.pid = ::getpid();
    r.current = state_;
    if (s.daemon && main_thread) {
      // The parent dying in any way ends a daemon child (the exit handler covers clean exits).
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);
    }
    int code = 0;
    try {
      run();
    } catch (const SystemExit& e) {
      code = e.code;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "Process %s:\n%s: %s\n", name.c_str(), demangled(typeid(e)).c_str(),
                   e.what());
      code = 1;
    } catch (...) {
      std::fprintf(stderr, "Process %s:\nan exception that is not a std::exception\n",
                   name.c_str());
      code = 1;
    }
    run_exit_function();
    std::fflush(nullptr);
    ::_exit(code);
  }
  // ---- the parent ----
  const int fd = pidfd_open(pid);
  if (fd < 0) {
    const int err = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw_os_error(err, "Process.start: pidfd_open for pid " + std::to_string(pid));
  }
  {
    std::lock_guard lock(s.m);
    s.pid = pid;
    s.pidfd = fd;
  }
  Registry& r = registry();
  std::lock_guard lock(r.m);
  r.children.push_back(state_);
  if (!r.exit_handler) {
    r.exit_handler = true;
    std::atexit(run_exit_function);
  }
}

// ---- module functions -----------------------------------------------------------------------

BaseProcess current_process() {
  return BaseProcess(current_state());
}

std::optional<BaseProcess> parent_process() {
  current_state();
  Registry& r = registry();
  std::lock_guard lock(r.m);
  if (!r.parent) return std::nullopt;
  return BaseProcess(r.parent);
}

std::vector<BaseProcess> active_children() {
  std::vector<std::shared_ptr<ProcessState>> children;
  {
    Registry& r = registry();
    std::lock_guard lock(r.m);
    children = r.children;
  }
  std::vector<BaseProcess> alive;
  for (auto& c : children) {
    BaseProcess p(c);
    if (p.is_alive()) alive.push_back(std::move(p));
  }
  return alive;
}

int cpu_count() {
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) throw NotImplementedError("cannot determine number of cpus");
  return static_cast<int>(n);
}

}  // namespace troupe::multiprocessing
