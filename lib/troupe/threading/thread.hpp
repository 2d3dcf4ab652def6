// troupe/threading/thread.hpp — threading.Thread, the module functions, excepthook, Timer.
//
// Lifetime, decided (doc/threading.md, "Threads at exit and destruction"):
// - At normal program exit (return from main, or std::exit), every non-daemon Thread still
//   running is joined, as Python joins them before the interpreter exits. Daemon threads are
//   abandoned: the process ends under them.
// - Destroying a Thread object whose thread still runs joins it if it is not a daemon. A daemon
//   thread built from a target callable is detached instead and keeps running (its target lives
//   in shared state). A subclass that overrides run() must stop and join its thread in its own
//   destructor, because its members are gone before ~Thread runs.
// - An exception escaping run() never reaches std::terminate: it goes to threading::excepthook,
//   which by default prints "Exception in thread NAME:" and the exception to stderr.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "troupe/threading/event.hpp"
#include "troupe/timeout.hpp"

namespace troupe::threading {

class Thread;

namespace detail {
struct ThreadState;

/// The launcher under `_thread.start_new_thread` (troupe/_thread/thread.hpp); not API.
/// Runs `function` on a new, detached OS thread with the stack_size() setting. The thread is
/// not in enumerate() (a Dummy is, once it calls current_thread()) and is not joined at exit;
/// SystemExit ends it silently, any other exception goes to excepthook with no Thread.
/// Returns its ident. @throws RuntimeError "can't start new thread" and why, if the OS refuses.
std::uint64_t start_unregistered(std::function<void()> function);
/// `_thread._count()`: threads troupe started (Thread and start_unregistered) that have not
/// finished; the main thread is not counted.
int running_count() noexcept;
}  // namespace detail

/// Python: `threading.ExceptHookArgs`.
struct ExceptHookArgs {
  std::string exc_type;          ///< the exception's type name, demangled ("std::out_of_range")
  std::exception_ptr exc_value;  ///< the exception itself
  std::string exc_traceback;     ///< empty: C++ keeps no traceback
  Thread* thread = nullptr;      ///< the thread it escaped from
};

using ExceptHook = std::function<void(const ExceptHookArgs&)>;

/// Python's `threading.__excepthook__`: prints "Exception in thread NAME:" then
/// "TYPE: what()" to stderr.
void default_excepthook(const ExceptHookArgs& args);

/// Python: `threading.excepthook` — call it, or assign to it:
/// `threading::excepthook = [](const ExceptHookArgs& a) { … };`. Assigning an empty function
/// restores the default. If the hook itself throws, the default prints both.
class ExceptHookSlot {
public:
  ExceptHookSlot& operator=(ExceptHook hook);
  void operator()(const ExceptHookArgs& args) const;
  ExceptHook get() const;
};
inline ExceptHookSlot excepthook;

/// Python: `threading.TIMEOUT_MAX` (seconds), the longest timeout a wait honours exactly;
/// troupe clamps longer ones to forever.
inline constexpr std::chrono::seconds TIMEOUT_MAX{9223372036};

/// Python: `threading.Thread(group=None, target=None, name=None, args=(), kwargs=None, *,
/// daemon=None)`.
///
///     threading::Thread t{worker, 42};                       // target and args
///     threading::Thread t{{.name = "io", .daemon = true}, worker, 42};
///     struct W : threading::Thread { void run() override; }; // or override run()
class Thread {
public:
  struct Options {
    std::string name;            ///< empty: "Thread-N", as Python
    std::optional<bool> daemon;  ///< unset: inherit from the creating thread
  };

  /// A thread with no target: run() does nothing unless a subclass overrides it.
  explicit Thread(Options options = {});

  template <class F, class... Args>
  requires std::is_invocable_v < std::decay_t<F>
  &, std::decay_t<Args>&... > explicit Thread(F&& target, Args&&... args)
      : Thread(Options{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  template <class F, class... Args>
  requires std::is_invocable_v < std::decay_t<F>
  &, std::decay_t<Args>&... > Thread(Options options, F&& target, Args&&... args)
      : Thread(
            std::move(options),
            std::function<void()>([f = std::forward<F>(target),
                                   tup = std::make_tuple(std::forward<Args>(args)...)]() mutable {
              std::apply(f, tup);
            })) {}

  Thread(const Thread&) = delete;
  Thread& operator=(const Thread&) = delete;
  virtual ~Thread();

  /// Python: `start()`. Starts run() in a new OS thread named after `name()` (first 15 bytes).
  /// @throws RuntimeError "threads can only be started once"; OSError if the OS refuses.
  void start();

  /// Python: `run()`: calls the target. Override it in a subclass.
  virtual void run();

  /// Python: `join(timeout=None)`. Waits for the thread to end; check is_alive() after a
  /// timeout. A negative timeout is zero.
  /// @throws RuntimeError "cannot join thread before it is started" / "cannot join current thread".
  void join(Timeout timeout = {});

  /// Python: `is_alive()`: started and run() has not returned.
  bool is_alive() const noexcept;

  /// Python: `name` (get and set).
  std::string name() const;
  void set_name(std::string name);

  /// Python: `ident` — `get_ident()` of the thread; nullopt before start().
  std::optional<std::uint64_t> ident() const noexcept;
  /// Python: `native_id` — the kernel's thread id; nullopt before start().
  std::optional<std::int64_t> native_id() const noexcept;

  /// Python: `daemon` (get and set). @throws RuntimeError if set after start().
  bool daemon() const noexcept;
  void set_daemon(bool daemon);

protected:
  explicit Thread(Options options, std::function<void()> target);

private:
  friend struct detail::ThreadState;
  friend Thread& current_thread();
  friend Thread& main_thread();
  struct Adopt {};
  Thread(Adopt, std::shared_ptr<detail::ThreadState> state);

  std::shared_ptr<detail::ThreadState> state_;
};

/// Python: `threading.current_thread()`. For a thread troupe did not start, a stand-in named
/// "Dummy-N" (Python's `_DummyThread`), alive while that thread runs.
Thread& current_thread();
/// Python: `threading.main_thread()`.
Thread& main_thread();
/// Python: `threading.active_count()`: the number of Threads alive, the main thread included.
int active_count();
/// Python: `threading.enumerate()`: every Thread alive. A pointer stays valid while its thread
/// runs or its Thread object exists, whichever is longer.
std::vector<Thread*> enumerate();
/// Python: `threading.get_ident()`.
std::uint64_t get_ident() noexcept;
/// Python: `threading.get_native_id()`.
std::int64_t get_native_id() noexcept;
/// Python: `threading.stack_size([size])`: returns the previous setting; 0 = the OS default.
/// @throws ValueError "size not valid: N bytes" below 32 KiB (other than 0).
std::size_t stack_size(std::optional<std::size_t> size = std::nullopt);

/// Python: `threading.Timer(interval, function, args=None, kwargs=None)` — a Thread that calls
/// `function(args...)` after `interval` unless cancel() came first. Destroying a pending
/// non-daemon Timer waits for it (and so for the call); a pending daemon Timer is cancelled.
class Timer : public Thread {
public:
  template <class Rep, class Period, class F, class... Args>
  requires std::is_invocable_v < std::decay_t<F>
  &,
      std::decay_t<Args>&... >
          Timer(std::chrono::duration<Rep, Period> interval, F&& function, Args&&... args)
      : interval_(interval),
  function_([f = std::forward<F>(function), tup = std::make_tuple(std::forward<Args>(
                                                args)...)]() mutable { std::apply(f, tup); }) {}
  ~Timer() override;

  /// Python: `cancel()`: stop the timer if it is still waiting.
  void cancel() noexcept { finished.set(); }

  /// Python: `finished`, the Event set on cancel() or after the call.
  Event finished;

protected:
  void run() override;

private:
  Timeout interval_;
  std::function<void()> function_;
};

}  // namespace troupe::threading
