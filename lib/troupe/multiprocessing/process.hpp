// troupe/multiprocessing/process.hpp — multiprocessing.Process and the module functions about
// processes: current_process, parent_process, active_children, cpu_count.
//
// Start method: fork (doc/multiprocessing/process.md). A process is watched through a pidfd
// (`sentinel()`), so waits are event-driven and join connection::wait and Asio.
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/timeout.hpp"

namespace troupe {

/// Python: `SystemExit`. Thrown by sys_exit(); a process target that throws it exits with
/// `code` (Python: `sys.exit(n)` inside a Process target gives exitcode n). Not a
/// std::exception, as SystemExit is not an Exception: `catch (const std::exception&)` lets it
/// through.
struct SystemExit {
  int code = 0;
};

/// Python: `sys.exit(code)`: ends the current process target (or, outside one, the program's
/// main, if main catches it) with `code`.
[[noreturn]] inline void sys_exit(int code = 0) {
  throw SystemExit{code};
}

}  // namespace troupe

namespace troupe::multiprocessing {

namespace detail {
struct ProcessState;
}

/// Options of a Process, beyond its target and arguments (Python's keyword arguments).
struct ProcessOptions {
  /// Python: `name`. Empty: "Process-N", N counting the processes this one has made; a
  /// child's children are "Process-N:M".
  std::string name;
  /// Python: `daemon`. A daemon child is terminated when its parent exits (by the exit
  /// handler, and by PR_SET_PDEATHSIG when the parent dies any other way); it may not have
  /// children of its own.
  bool daemon = false;
  /// fork() even though this process runs other threads. Unsafe: the child gets a copy of every
  /// lock as it was, held or not, by threads that do not exist in it. Refused by default
  /// (Python 3.12 warns; troupe raises).
  bool fork_with_threads = false;
};

/// Python: `multiprocessing.process.BaseProcess` seen from outside: a handle on a process (a
/// child, this process, or the parent). Copies are handles on the same process, as Python's
/// references are. What is only valid for a child of this process (join, signals, exitcode)
/// raises ProcessError for others, with Python's assertion texts.
class BaseProcess {
public:
  /// Python: `name` (readable and settable).
  std::string name() const;
  void set_name(std::string name);
  /// Python: `daemon`. @throws ProcessError "process has already started" when set after start.
  bool daemon() const;
  void set_daemon(bool daemon);
  /// Python: `pid` and `ident` (nullopt before start).
  std::optional<int> pid() const;
  std::optional<int> ident() const { return pid(); }
  /// Python: `exitcode`: nullopt while not started or running; the exit status, or -N when
  /// killed by signal N.
  std::optional<int> exitcode() const;
  /// Python: `authkey` (inherited from the creating process; 32 random bytes in the main one).
  AuthenticationString authkey() const;
  void set_authkey(AuthenticationString key);
  /// Python: `sentinel`: a pidfd, readable once the process has ended (connection::wait, poll,
  /// Asio). Owned by the process object. @throws ValueError if closed; ProcessError if not
  /// started.
  int sentinel() const;

  /// Python: `is_alive()`. Reaps the child if it has ended.
  bool is_alive() const;
  /// Python: `join(timeout=None)`: waits until the process ends or the timeout passes (check
  /// exitcode() to tell which). Event-driven (poll on the pidfd).
  /// @throws ProcessError "can only join a child process" / "can only join a started process".
  void join(Timeout timeout = {}) const;
  /// Python: `terminate()` (SIGTERM), `kill()` (SIGKILL), `interrupt()` (SIGINT, 3.14). No
  /// error once the process has ended.
  void terminate() const;
  void kill() const;
  void interrupt() const;
  /// Python: `close()`: releases the pidfd. @throws ValueError if the process is still running.
  /// Later calls that need the process raise ValueError "process object is closed".
  void close() const;

  /// "<Process name='Process-1' pid=123 parent=100 started>", as Python's repr.
  std::string repr() const;

  bool operator==(const BaseProcess& o) const noexcept { return state_ == o.state_; }

protected:
  explicit BaseProcess(std::shared_ptr<detail::ProcessState> state) : state_(std::move(state)) {}
  std::shared_ptr<detail::ProcessState> state_;

  friend BaseProcess current_process();
  friend std::optional<BaseProcess> parent_process();
  friend std::vector<BaseProcess> active_children();
};

/// Python: `multiprocessing.Process`. Either a target and its arguments, or a subclass that
/// overrides run(). Not copyable (a subclass carries its run()); active_children() and
/// current_process() give BaseProcess handles.
///
///   mp::Process p([](int n) { work(n); }, 42);
///   p.start();
///   p.join();
///   p.exitcode();  // 0
///
/// An exception escaping the target is reported on the child's stderr ("Process NAME:" and
/// the exception) and gives exit code 1; troupe::sys_exit(n) gives exit code n.
class Process : public BaseProcess {
public:
  /// A process whose run() a subclass overrides.
  explicit Process(ProcessOptions options = {});

  /// Python: `Process(target=f, args=(a, b))`. The arguments are copied into the process
  /// object (as Python's tuple), and the child, a fork, sees those copies.
  template <class F, class... Args>
  requires std::invocable < std::decay_t<F>
  &, std::decay_t<Args>&... > explicit Process(F&& target, Args&&... args)
      : Process(ProcessOptions{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  template <class F, class... Args>
  requires std::invocable < std::decay_t<F>
  &, std::decay_t<Args>&... > Process(ProcessOptions options, F&& target, Args&&... args)
      : Process(std::move(options)) {
    target_ = [f = std::forward<F>(target),
               tup = std::make_tuple(std::forward<Args>(args)...)]() mutable {
      std::apply(f, tup);
    };
  }

  Process(Process&&) noexcept = default;
  Process& operator=(Process&&) noexcept = default;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  /// Does not wait for the child (Python neither): an unjoined child is still reaped by
  /// active_children() and joined (or, if a daemon, terminated) when this process exits.
  virtual ~Process();

  /// Python: `run()`: what the child runs; calls the target. Override it in a subclass.
  virtual void run();

  /// Python: `start()`: forks; the child runs run() and exits.
  /// @throws ProcessError "cannot start a process twice", "daemonic processes are not allowed
  /// to have children"; ValueError if closed; RuntimeError if this process has other threads
  /// (unless options.fork_with_threads); OSError if fork fails.
  void start();

private:
  std::function<void()> target_;
  bool fork_with_threads_ = false;
};

/// Python: `multiprocessing.current_process()`: this process ("MainProcess" in the main one; in
/// a child, the Process it was started as).
BaseProcess current_process();

/// Python: `multiprocessing.parent_process()`: the process that started this one (its name,
/// pid, sentinel, is_alive and join work), or nullopt in the main process.
std::optional<BaseProcess> parent_process();

/// Python: `multiprocessing.active_children()`: the children of this process still running;
/// reaps the ones that have ended.
std::vector<BaseProcess> active_children();

/// Python: `multiprocessing.cpu_count()`: the number of CPUs online (os.cpu_count()).
int cpu_count();

}  // namespace troupe::multiprocessing
