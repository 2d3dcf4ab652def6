// troupe/multiprocessing/process.hpp — multiprocessing.Process and the module functions about
// processes: current_process, parent_process, active_children, cpu_count.
//
// Start methods: fork (any callable) and spawn (a fresh exec of this program running a function
// registered with TROUPE_ENTRY (troupe/entry.hpp), with codec-encoded arguments);
// doc/multiprocessing/process.md.
// A process is watched through a pidfd (`sentinel()`), so waits are event-driven and join
// connection::wait and Asio.
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/system/error_code.hpp>

#include "troupe/codec.hpp"
#include "troupe/detail/async.hpp"
#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/detail/secret_builder.hpp"
#include "troupe/timeout.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing {

class Process;

namespace detail {
struct ProcessState;
struct SpawnBootstrap;

/// Runs a process target's `body` as Python's _bootstrap does: SystemExit(n) gives n; an
/// exception is reported on stderr ("Process NAME:" and the exception) and gives 1; else 0.
int run_target(const std::string& name, const std::function<void()>& body);

/// After start(): the parent's copies of the target and its arguments are dropped (a process
/// pool closes its copy of each worker's end of their connection so).
void drop_arguments(Process& p) noexcept;

/// async_join's steps. join_begin: the code of what join() would raise, else none, with `fd` a
/// duplicate of the sentinel to wait on (the caller owns it) or -1 when there is nothing to
/// wait for. join_end: reaps the ended process as join() does.
std::error_code join_begin(const std::shared_ptr<ProcessState>& s, int& fd) noexcept;
std::error_code join_end(const std::shared_ptr<ProcessState>& s) noexcept;

/// What a Process can run: a callable with these arguments.
template <class F, class... A>
concept Target = std::invocable < std::decay_t<F>
&, std::decay_t<A>&... > ;

/// File descriptors that travel with a spawned child's arguments (a Connection, say): while the
/// parent encodes them, each is duplicated and numbered; the child finds them by number.
struct PassedFds {
  std::vector<UniqueFd> fds;  // parent: duplicates to hand over; child: what arrived, none once
                              // taken
  /// Parent, while it encodes a child's start arguments: a proxy among them carries its
  /// manager's key (CPython's get_spawning_popen()); never set in the child.
  bool spawning = false;
};
/// The table of the spawn in progress on this thread (null when none).
PassedFds*& passed_fds() noexcept;
/// Parent: duplicates `fd` for the child and returns its number. @throws ValueError outside a
/// spawn's encoding (an fd cannot travel in an ordinary message).
int pass_fd(int fd);
/// Child: the fd passed as number `n` (once). @throws ValueError if there is none.
int take_fd(int n);

template <class Tuple>
struct AllEncodable;
template <class... E>
struct AllEncodable<std::tuple<E...>> : std::bool_constant<(Encodable<E> && ...)> {};

/// What a spawned child needs to run the target: the function and its encoded arguments.
struct SpawnTarget {
  const void* function = nullptr;                            // null: not a plain function
  std::function<std::vector<std::byte>()> encode_arguments;  // null: they cannot be encoded
};

template <class F, class Stored>
SpawnTarget spawn_target(F& f, const std::shared_ptr<Stored>& stored) {
  SpawnTarget t;
  if constexpr (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) {
    using Arguments = typename troupe::detail::FunctionTraits<F>::Arguments;
    t.function = reinterpret_cast<const void*>(f);
    if constexpr (std::tuple_size_v<Arguments> == std::tuple_size_v<Stored> &&
                  AllEncodable<Arguments>::value) {
      // A proxy among them may carry its manager's key: no segment of the encoding is left
      // unwiped (the bytes returned are wiped by the caller once sent).
      if constexpr (std::is_same_v<Arguments, Stored>) {  // encoded where they are
        t.encode_arguments = [stored] {
          return ::troupe::multiprocessing::detail::secret_to_bytes(*stored);
        };
      } else if constexpr (std::is_constructible_v<Arguments, const Stored&>) {
        t.encode_arguments = [stored] {
          return ::troupe::multiprocessing::detail::secret_to_bytes(Arguments(*stored));
        };
      }
    }
  }
  return t;
}
}  // namespace detail

/// Python: `multiprocessing.freeze_support()`; here the guard at the top of `main` that makes
/// spawn work (the analogue of `if __name__ == '__main__':`): in a process started by the spawn
/// method it runs the target and exits, never returning; anywhere else it returns at once.
///
///   int main(int argc, char** argv) {
///     mp::freeze_support(argc, argv);
///     …
///   }
void freeze_support(int argc, char** argv);

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
  /// (Python 3.12 warns; troupe raises). troupe's own threads that a fork leaves behind safely
  /// (a manager link's) are not counted.
  bool fork_with_threads = false;
  /// "fork" or "spawn"; empty: get_start_method() when start() is called.
  std::string start_method;
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
  /// join() on Asio (what a monitor needs): waits for the sentinel to become readable, then
  /// reaps the process as join() does. By Asio's rules (doc/async.md): never completes inside
  /// the call, even for a process that has already ended; the wait runs on this handle's
  /// executor, the handler on its associated executor. Completion:
  /// void(boost::system::error_code): empty once the process has ended (exitcode() is set);
  /// errc::process_error where join() raises ProcessError, errc::value_error if closed;
  /// operation_aborted when cancelled (per-operation, terminal: the process keeps running).
  template <class Token>
  auto async_join(Token&& token) const;
  /// The executor async_join waits on: the one given to set_executor() (for this handle), else
  /// Asio's system executor (doc/async.md).
  const boost::asio::any_io_executor& get_executor() const noexcept { return executor_; }
  void set_executor(boost::asio::any_io_executor ex) noexcept {
    executor_ = troupe::detail::io_executor_or_default(ex);
  }
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
  boost::asio::any_io_executor executor_ = troupe::detail::default_io_executor();

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
  /// object (as Python's tuple): a forked child sees those copies; a spawned one gets them
  /// encoded by their codecs.
  template <class F, class... Args>
  requires detail::Target<F, Args...>
  explicit Process(F&& target, Args&&... args)
      : Process(ProcessOptions{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  template <class F, class... Args>
  requires detail::Target<F, Args...> Process(ProcessOptions options, F&& target, Args&&... args)
      : Process(std::move(options)) {
    auto f = std::decay_t<F>(std::forward<F>(target));
    auto stored = std::make_shared<std::tuple<std::decay_t<Args>...>>(std::forward<Args>(args)...);
    spawn_ = detail::spawn_target(f, stored);
    target_ = [f = std::move(f), stored]() mutable { std::apply(f, *stored); };
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

  /// Python: `start()`. fork: the child is a copy of this process and runs run(). spawn: the
  /// child is a fresh exec of this program (set_executable) whose freeze_support runs the
  /// target, a function registered with TROUPE_ENTRY, with the arguments its codecs encoded.
  /// @throws ValueError (spawn) naming what cannot cross to the child.
  /// @throws ProcessError "cannot start a process twice", "daemonic processes are not allowed
  /// to have children"; ValueError if closed; RuntimeError if this process has other threads
  /// (unless options.fork_with_threads); OSError if fork fails.
  void start();

private:
  void start_fork(const std::string& name);
  void start_spawn(const std::string& name);
  void start_forkserver(const std::string& name);
  // What a spawned or forkserver child needs; the fds of Connection arguments go to `passed`.
  detail::SpawnBootstrap bootstrap(const std::string& why, detail::PassedFds& passed);
  // The child is running: its pidfd (opened here if -1), the forkserver's connection if any,
  // and the children list.
  void adopt(int pid, UniqueFd pidfd = {}, UniqueFd server = {});

  friend void detail::drop_arguments(Process& p) noexcept;

  std::function<void()> target_;
  detail::SpawnTarget spawn_;
  bool fork_with_threads_ = false;
  std::string start_method_;
};

template <class Token>
auto BaseProcess::async_join(Token&& token) const {
  using boost::asio::posix::stream_descriptor;
  auto body = [state = state_, ex = executor_, sentinel = std::unique_ptr<stream_descriptor>()](
                  auto& op, boost::system::error_code ec = {}) mutable {
    if (!op.initiating()) {
      sentinel.reset();  // closes the duplicate
      return op.complete(ec ? ec : detail::to_boost(detail::join_end(state)));
    }
    int fd = -1;
    if (const std::error_code e = detail::join_begin(state, fd))
      return op.complete(detail::to_boost(e));
    if (fd < 0) return op.complete(boost::system::error_code());
    UniqueFd dup(fd);  // closed here if the descriptor cannot take it (epoll_ctl, bad_alloc)
    sentinel = std::make_unique<stream_descriptor>(ex, dup.get());
    (void)dup.release();
    auto& waiting = *sentinel;  // moving the operation moves `sentinel`, not what it points to
    waiting.async_wait(stream_descriptor::wait_read, op.resume());
  };
  return troupe::detail::async_operation<void(boost::system::error_code)>(
      std::move(body), std::forward<Token>(token), executor_);
}

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

/// A Connection as an argument of a process started by spawn: its fd is handed to the child
/// (duplicated into the child's fd table at exec), as Python passes a Connection to a spawned
/// child. Only there: in an ordinary message it is a ValueError.
template <>
struct troupe::Codec<troupe::multiprocessing::Connection>
    : troupe::CodecVia<troupe::multiprocessing::Connection, std::tuple<int, bool, bool>> {
  static std::tuple<int, bool, bool> to(const troupe::multiprocessing::Connection& c) {
    return {troupe::multiprocessing::detail::pass_fd(c.fileno()), c.readable(), c.writable()};
  }
  static troupe::multiprocessing::Connection from(const std::tuple<int, bool, bool>& t) {
    return troupe::multiprocessing::Connection(
        troupe::multiprocessing::detail::take_fd(std::get<0>(t)), std::get<1>(t), std::get<2>(t));
  }
};

// Context and the start-method functions: their Process needs the class above, so they come
// after it; process.hpp has always declared them, and its users keep them.
#include "troupe/multiprocessing/context.hpp"  // IWYU pragma: export
