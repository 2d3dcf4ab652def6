#include "troupe/multiprocessing/process.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <typeinfo>
#include <utility>

#include <openssl/crypto.h>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/errors.hpp"
#include "troupe/internal/demangle.hpp"
#include "troupe/internal/process_internal.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/forkserver.hpp"
#include "troupe/multiprocessing/internal/secret_message.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/resource_tracker.hpp"

#include <dirent.h>

extern char** environ;

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
  UniqueFd pidfd;
  UniqueFd server;  // a forkserver child: the server's connection, which brings its wait status
  std::optional<int> exitcode;
  bool closed = false;
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
};

Registry& registry() {
  return troupe::internal::runtime::global<Registry>();  // the exit step uses it
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

// Threads a sanitizer runtime starts on its own (TSan's background thread), which fork handles.
#if defined(TROUPE_TSAN)
constexpr int kRuntimeThreads = 1;
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

// Python's Popen.poll for a child: reaps it if it has ended (or waits when `block`). Called with
// the state's lock held.
int exit_code(int status) {
  return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

bool readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r == 1;
}

// The forkserver reaps the child and sends its wait status; until that arrives the child counts
// as running (Python's forkserver poll() too). If the server has gone, the status is lost: 255,
// as Python's, once the child's own pidfd says it has ended.
void reap_served(ProcessState& s, bool block) {
  if (block) {
    readable(s.pidfd.get(), -1);
  } else if (!readable(s.server.get(), 0)) {
    return;
  }
  std::int32_t status = 0;
  ssize_t r;
  do {
    r = ::recv(s.server.get(), &status, sizeof status, MSG_WAITALL);
  } while (r < 0 && errno == EINTR);
  if (r != sizeof status) {
    if (!block && !readable(s.pidfd.get(), 0)) return;  // the server has gone, the child has not
    status = 255 << 8;
  }
  s.exitcode = exit_code(status);
  s.server.reset();
}

void reap(ProcessState& s, bool block) {
  if (s.exitcode || s.pid < 0 || s.kind != Kind::child) return;
  if (s.server) return reap_served(s, block);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(s.pid, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == s.pid) s.exitcode = exit_code(status);
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
  // Messages are built only when logged: a forked child's heap pages are copy-on-write, and
  // touching them costs page faults at every exit.
  Logger& log = get_logger();
  const bool info = log.is_enabled_for(logging::INFO);
  if (info) log.info("process shutting down");
  auto children = active_children();
  for (auto& c : children)
    if (c.daemon()) {
      if (info) log.info("calling terminate() for daemon " + c.name());
      c.terminate();
    }
  for (auto& c : children) {
    if (info) log.info("calling join() for process " + c.name());
    c.join();
  }
}

void run_exit_function() {
  try {
    exit_function();
  } catch (...) {  // at exit, nothing may escape
  }
}

using detail::SpawnBootstrap;

constexpr int kBootstrapFd = 3;
constexpr const char* kSpawnFlag = "--troupe-spawn";

// Makes this process the child `s` of `parent` (after fork, or at the start of a spawned
// program): its own identity, its parent, no children yet.
void become_child(std::shared_ptr<ProcessState> s, int parent, std::string parent_name,
                  bool main_thread, UniqueFd parent_pidfd = {}) {
  Registry& r = registry();
  auto p = std::make_shared<ProcessState>();
  p->kind = Kind::parent;
  p->pid = parent;
  // The parent's pidfd is opened when first needed (parent_process().sentinel(), is_alive,
  // join): a child that never asks pays nothing. A forkserver child is given one: its parent
  // is not its real parent (the server is).
  const bool given_parent_pidfd = static_cast<bool>(parent_pidfd);
  p->pidfd = std::move(parent_pidfd);
  p->name = std::move(parent_name);
  r.parent = std::move(p);
  r.children.clear();
  r.counter = 0;
  s->kind = Kind::current;
  s->pid = ::getpid();
  const bool daemon = s->daemon;
  r.current = std::move(s);
  if (daemon && main_thread && !given_parent_pidfd) {
    // The parent dying in any way ends a daemon child (the exit handler covers clean exits).
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);
  }
}

// Runs the child's body as Python's _bootstrap does, then leaves without running the parent's
// destructors or exit handlers.
[[noreturn]] void child_main(const std::string& name, const std::function<void()>& body) {
  if (get_logger().is_enabled_for(logging::INFO))
    get_logger().info("child process calling self.run()");
  const int code = detail::run_target(name, body);
  run_exit_function();
  if (get_logger().is_enabled_for(logging::INFO))
    get_logger().info("process exiting with exitcode " + std::to_string(code));
  std::fflush(nullptr);
  ::_exit(code);
}

}  // namespace

namespace detail {

int run_target(const std::string& name, const std::function<void()>& body) {
  try {
    body();
    return 0;
  } catch (const SystemExit& e) {
    return e.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Process %s:\n%s: %s\n", name.c_str(),
                 troupe::internal::demangle(typeid(e)).c_str(), e.what());
  } catch (...) {
    std::fprintf(stderr, "Process %s:\nan exception that is not a std::exception\n", name.c_str());
  }
  return 1;
}

}  // namespace detail

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

namespace {
// The parent's pidfd, opened on first use (with the state's lock held). If the parent has
// already gone, this process has been reparented: then a pidfd of that pid could name another
// process, so none is opened and the parent counts as ended.
int parent_fd(ProcessState& s) {
  if (s.kind == Kind::parent && !s.pidfd && !s.exitcode) {
    UniqueFd fd = pidfd_open(s.pid);
    if (fd && ::getppid() == s.pid)
      s.pidfd = std::move(fd);
    else
      s.exitcode = 0;  // ended (its status is not ours to know)
  }
  return s.pidfd.get();
}
}  // namespace

int BaseProcess::sentinel() const {
  std::lock_guard lock(state_->m);
  check_closed(*state_);
  if (parent_fd(*state_) < 0 && state_->kind == Kind::parent)
    throw ValueError("the parent process has ended");
  if (!state_->pidfd) throw ValueError("process not started");
  return state_->pidfd.get();
}

bool BaseProcess::is_alive() const {
  std::unique_lock lock(state_->m);
  check_closed(*state_);
  switch (state_->kind) {
    case Kind::current: return true;
    case Kind::parent: {
      const int fd = parent_fd(*state_);
      pollfd p{fd, POLLIN, 0};
      return fd >= 0 && ::poll(&p, 1, 0) == 0;
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

namespace {
// What join() waits on: the sentinel, or -1 when the process has ended (or the parent has
// gone). @throws what join() raises.
int join_sentinel(ProcessState& s) {
  std::lock_guard lock(s.m);
  check_closed(s);
  if (s.kind == Kind::current) throw ProcessError("can only join a child process");
  if (s.kind == Kind::child && s.creator != ::getpid())
    throw ProcessError("can only join a child process");
  if (s.pid < 0) throw ProcessError("can only join a started process");
  if (s.exitcode) return -1;
  return parent_fd(s);  // -1 if the parent has gone
}

// After the sentinel became readable: reaps, and forgets an ended child.
void join_reap(const std::shared_ptr<ProcessState>& s) {
  std::unique_lock lock(s->m);
  reap(*s, true);
  lock.unlock();
  if (s->kind == Kind::child) forget_child(s);
}

std::error_code error_code_of_current() noexcept {
  try {
    throw;
  } catch (const std::system_error& e) {
    return e.code();
  } catch (...) {
    return make_error_code(errc_of(std::current_exception()));
  }
}
}  // namespace

std::error_code detail::join_begin(const std::shared_ptr<ProcessState>& s, int& fd) noexcept {
  fd = -1;
  try {
    const int sentinel = join_sentinel(*s);
    if (sentinel < 0) return {};
    fd = ::fcntl(sentinel, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return {errno, std::generic_category()};
    return {};
  } catch (...) {
    return error_code_of_current();
  }
}

std::error_code detail::join_end(const std::shared_ptr<ProcessState>& s) noexcept {
  try {
    join_reap(s);
    return {};
  } catch (...) {
    return error_code_of_current();
  }
}

void BaseProcess::join(Timeout timeout) const {
  const int fd = join_sentinel(*state_);
  if (fd < 0) return;
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
  join_reap(state_);
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
  if (pidfd_send_signal(s->pidfd.get(), sig) != 0 && errno != ESRCH)
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
    state_->pidfd.reset();
    state_->server.reset();
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
    : BaseProcess(std::make_shared<ProcessState>()),
      fork_with_threads_(options.fork_with_threads),
      start_method_(std::move(options.start_method)) {
  if (!start_method_.empty()) detail::check_start_method(start_method_);
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
  const std::string method = start_method_.empty() ? *get_start_method() : start_method_;
  active_children();     // Python's _cleanup(): reap the children that have ended
  std::fflush(nullptr);  // buffered output would be written twice
  if (method == "fork") {
    start_fork(name());
  } else if (method == "spawn") {
    start_spawn(name());
  } else if (method == "forkserver") {
    start_forkserver(name());
  } else {
    throw ValueError("cannot find context for '" + method + "'");
  }
}

void Process::adopt(int pid, UniqueFd pidfd, UniqueFd server) {
  UniqueFd fd = pidfd ? std::move(pidfd) : pidfd_open(pid);
  if (!fd) {
    const int err = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw_os_error(err, "Process.start: pidfd_open for pid " + std::to_string(pid));
  }
  {
    std::lock_guard lock(state_->m);
    state_->pid = pid;
    state_->pidfd = std::move(fd);
    state_->server = std::move(server);
  }
  Registry& r = registry();
  std::lock_guard lock(r.m);
  r.children.push_back(state_);
  troupe::internal::runtime::at_exit(troupe::internal::runtime::ExitStep::children,
                                     run_exit_function);
}

void Process::start_fork(const std::string& name) {
  if (!fork_with_threads_) {
    // Threads of troupe's own that fork leaves safely behind (a manager link's) are not the
    // user's: a proxy passed to the child reconnects there.
    const int threads =
        count_threads() - kRuntimeThreads - troupe::internal::runtime::fork_aware_threads();
    if (threads > 1)
      throw RuntimeError("Process.start: this process runs " + std::to_string(threads) +
                         " threads, and fork() would copy their locks into the child as they "
                         "are; start processes before threads, use the spawn method, or set "
                         "ProcessOptions::fork_with_threads to accept the risk");
  }
  const int parent = ::getpid();
  const bool main_thread = ::gettid() == parent;
  std::string parent_name = current_process().name();
  const pid_t pid = ::fork();
  if (pid < 0) throw_os_error(errno, "Process.start: fork for " + name);
  if (pid == 0) {
    become_child(state_, parent, std::move(parent_name), main_thread);
    child_main(name, [this] { run(); });
  }
  adopt(pid);
}

detail::SpawnBootstrap Process::bootstrap(const std::string& why, detail::PassedFds& passed) {
  if (!spawn_.function)
    throw ValueError(why +
                     "the target is not a plain function; this start method runs a function "
                     "registered with TROUPE_ENTRY in a fresh copy of the program (lambdas, "
                     "functors and run() overrides need the fork method)");
  const EntryPoint* entry = find_entry(spawn_.function);
  if (!entry)
    throw ValueError(why +
                     "the target function is not registered: add TROUPE_ENTRY(function) at "
                     "namespace scope");
  if (!spawn_.encode_arguments)
    throw ValueError(why + "the arguments do not match the parameters of " + entry->name +
                     ", or one of those has no troupe::Codec");
  SpawnBootstrap boot;
  // What bootstrap() throws after the arguments (or the key) are in `boot` leaves neither in
  // freed memory.
  struct WipeUnlessReturned {
    SpawnBootstrap& b;
    bool returned = false;
    ~WipeUnlessReturned() {
      if (returned) return;
      internal::wipe_bytes(b.arguments);
      internal::wipe_bytes(b.authkey);
    }
  } wipe{boot};
  boot.entry = entry->name;
  struct Collect {  // fds that go with the arguments (Connections) land in `passed`
    detail::PassedFds* saved = std::exchange(detail::passed_fds(), nullptr);
    detail::PassedFds* mine;
    explicit Collect(detail::PassedFds* p) : mine(p) {
      p->spawning = true;
      detail::passed_fds() = p;
    }
    ~Collect() {
      mine->spawning = false;
      detail::passed_fds() = saved;
    }
  };
  {
    Collect collect(&passed);
    boot.arguments = spawn_.encode_arguments();
    const auto tracker = resource_tracker::detail::pass_to_child();  // one tracker per tree
    boot.tracker_fd = tracker.fd;
    boot.tracker_pid = tracker.pid;
  }
  boot.passed_fds = static_cast<int>(passed.fds.size());
  {
    std::lock_guard lock(state_->m);
    boot.name = state_->name;
    boot.daemon = state_->daemon;
    boot.identity = state_->identity;
    auto key = state_->authkey.bytes();
    boot.authkey.assign(key.begin(), key.end());
  }
  boot.parent_pid = ::getpid();
  boot.parent_name = current_process().name();
  boot.log_level = get_logger().level();
  boot.log_to_stderr = get_logger().logs_to_stderr();
  wipe.returned = true;
  return boot;
}

void Process::start_forkserver(const std::string& name) {
  detail::PassedFds passed;
  SpawnBootstrap boot = bootstrap("Process.start (forkserver) of " + name + ": ", passed);
  const internal::WipeOnExit wipe{boot.authkey};
  const internal::WipeOnExit wipe_arguments{
      boot.arguments};  // a proxy's manager key may be among them
  auto child = forkserver_detail::start_child(boot, passed.fds);
  adopt(child.pid, std::move(child.pidfd), std::move(child.connection));
}

void Process::start_spawn(const std::string& name) {
  const std::string why = "Process.start (spawn) of " + name + ": ";
  detail::PassedFds passed;
  SpawnBootstrap boot = bootstrap(why, passed);
  const internal::WipeOnExit wipe{boot.authkey};
  const internal::WipeOnExit wipe_arguments{
      boot.arguments};  // a proxy's manager key may be among them

  // Every fd the child gets is first moved above the ones it will have, so no dup2 overwrites a
  // source still to be copied; then 3 is the bootstrap pipe and 4… the passed fds.
  const int n_passed = static_cast<int>(passed.fds.size());
  const int high = kBootstrapFd + 1 + n_passed + 64;
  std::vector<UniqueFd> moved;
  for (const UniqueFd& fd : passed.fds) {
    UniqueFd m(::fcntl(fd.get(), F_DUPFD_CLOEXEC, high));
    if (!m) throw_os_error(errno, why + "fcntl(F_DUPFD)");
    moved.push_back(std::move(m));
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_os_error(errno, why + "pipe");
  UniqueFd boot_in(p[0]), boot_out(p[1]);
  boot_in.reset(::fcntl(boot_in.get(), F_DUPFD_CLOEXEC, high));
  if (!boot_in) throw_os_error(errno, why + "fcntl(F_DUPFD)");
  const std::string exe = detail::spawn_executable();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, boot_in.get(), kBootstrapFd);
  for (int i = 0; i < n_passed; ++i)
    posix_spawn_file_actions_adddup2(&fa, moved[static_cast<std::size_t>(i)].get(),
                                     kBootstrapFd + 1 + i);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addclosefrom_np(&fa, kBootstrapFd + 1 + n_passed);
  const std::string fd_text = std::to_string(kBootstrapFd);
  char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>(kSpawnFlag),
                  const_cast<char*>(fd_text.c_str()), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  boot_in.reset();
  if (rc != 0) throw_os_error(rc, why + "cannot run " + exe);
  Connection out(boot_out.release(), false, true);
  adopt(pid);
  try {
    internal::send_secret(out, boot);  // no copy of the key left behind
  } catch (const OSError&) {           // the child died before reading: its exitcode says how
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

void freeze_support(int argc, char** argv) {
  if (argc < 3) return;
  const std::string_view flag = argv[1];
  if (flag == forkserver_detail::kFlag) forkserver_detail::serve(std::atoi(argv[2]));
  if (flag != kSpawnFlag) return;
  SpawnBootstrap boot;
  try {
    const UniqueFd in(std::atoi(argv[2]));
    boot = internal::recv_secret<SpawnBootstrap>(in.get());  // its buffer wiped
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: a spawned process cannot read its bootstrap message: %s\n",
                 e.what());
    ::_exit(1);
  }
  std::vector<UniqueFd> arrived;
  for (int i = 0; i < boot.passed_fds; ++i) {
    const int fd = kBootstrapFd + 1 + i;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    arrived.emplace_back(fd);
  }
  detail::run_child(boot, std::move(arrived), UniqueFd());
}

void detail::run_child(SpawnBootstrap& boot, std::vector<UniqueFd> arrived, UniqueFd parent_pidfd) {
  auto s = std::make_shared<ProcessState>();
  s->name = boot.name;
  s->daemon = boot.daemon;
  s->identity = boot.identity;
  s->authkey = AuthenticationString(std::span<const std::byte>(boot.authkey));
  OPENSSL_cleanse(boot.authkey.data(), boot.authkey.size());
  s->creator = boot.parent_pid;
  become_child(std::move(s), boot.parent_pid, boot.parent_name, true, std::move(parent_pidfd));
  if (boot.log_to_stderr)
    log_to_stderr(boot.log_level);
  else
    get_logger().set_level(boot.log_level);
  const EntryPoint* entry = find_entry(boot.entry);
  static detail::PassedFds table;  // for the whole life of the child
  table.fds = std::move(arrived);
  if (boot.tracker_fd >= 0 && static_cast<std::size_t>(boot.tracker_fd) < table.fds.size())
    resource_tracker::detail::inherit(
        table.fds[static_cast<std::size_t>(boot.tracker_fd)].release(), boot.tracker_pid);
  child_main(boot.name, [&] {
    if (!entry)
      throw ValueError("no entry point named '" + boot.entry +
                       "' in this program (TROUPE_ENTRY); was it built from the same sources?");
    detail::passed_fds() = &table;
    const internal::WipeOnExit wipe{boot.arguments};  // a proxy's manager key may be among them
    // Until invoke_entry has decoded them (a decode that throws ends the child).
    troupe::detail::decoding_start_arguments() = true;
    entry->invoke(boot.arguments);
  });
}

namespace detail {
PassedFds*& passed_fds() noexcept {
  thread_local PassedFds* table = nullptr;
  return table;
}

int pass_fd(int fd) {
  PassedFds* t = passed_fds();
  if (!t)
    throw ValueError(
        "a Connection (an fd) can only be an argument of a process started by "
        "spawn; it cannot travel in a message");
  UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!dup) throw_os_error(errno, "passing fd " + std::to_string(fd) + " to a spawned child");
  t->fds.push_back(std::move(dup));
  return static_cast<int>(t->fds.size() - 1);
}

int take_fd(int n) {
  PassedFds* t = passed_fds();
  if (!t || n < 0 || static_cast<std::size_t>(n) >= t->fds.size() ||
      !t->fds[static_cast<std::size_t>(n)])
    throw ValueError("no passed fd number " + std::to_string(n) +
                     " (a Connection decoded outside a spawned child's arguments)");
  return t->fds[static_cast<std::size_t>(n)].release();
}

void drop_arguments(Process& p) noexcept {
  p.target_ = nullptr;
  p.spawn_ = SpawnTarget{};
}
}  // namespace detail

namespace {
// An error envelope (troupe/error_envelope.hpp, layer 1) names the process it was raised in by
// current_process().name, which only this layer knows: installed when the library loads.
const bool names_error_origins =
    (troupe::set_process_name_source([] { return current_process().name(); }), true);
}  // namespace

int cpu_count() {
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) throw NotImplementedError("cannot determine number of cpus");
  return static_cast<int>(n);
}

}  // namespace troupe::multiprocessing
