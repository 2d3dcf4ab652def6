// troupe/_thread/thread.hpp — Python's `_thread`, the low-level threading module:
// start_new_thread, locks, idents, interrupt_main, exit, stack_size (doc/_thread.md).
//
// Built on threading's primitives, as Python's threading is built on _thread: start_new_thread
// runs on threading's launcher (the same stack_size() setting, the same excepthook), LockType
// is threading::Lock and RLock is threading::RLock.
#pragma once

#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "troupe/errors.hpp"
#include "troupe/threading/local.hpp"
#include "troupe/threading/lock.hpp"
#include "troupe/threading/thread.hpp"

namespace troupe::_thread {

/// Python: `_thread.error`, an alias of RuntimeError (as `threading.ThreadError` is).
using error = troupe::RuntimeError;

/// Python: `_thread.LockType` (`_thread.lock` in 3.13): the same type as threading::Lock.
/// `acquire(blocking=true, timeout=-1)`, `release()`, `locked()`, and `std::scoped_lock` for
/// `with`. A timeout above TIMEOUT_MAX waits forever (CPython: OverflowError), as a Timeout
/// cannot hold more.
using LockType = threading::Lock;
using lock = threading::Lock;

/// Python: `_thread.RLock` (what `threading.RLock()` returns in CPython): threading::RLock.
using RLock = threading::RLock;

/// Python: `_thread._local` (what `threading.local` is in CPython): threading::local<T>.
template <class T>
using _local = threading::local<T>;

/// Python: `_thread.allocate_lock()`: a new, unlocked lock. A Lock does not move; the result
/// initializes a variable in place: `auto mutex = _thread::allocate_lock();`.
inline LockType allocate_lock() noexcept {
  return LockType{};
}

/// Python: `_thread.start_new_thread(function, args[, kwargs])`: calls `function(args...)` on a
/// new thread and returns its ident at once. The arguments are copied (or moved) into the thread.
/// - The thread is not a threading::Thread: it is not in threading::enumerate() or
///   active_count() unless it calls threading::current_thread() (then as a "Dummy-N"), and
///   the program does not wait for it at exit (the process ends under it).
/// - It ends when `function` returns, or when it throws: SystemExit (_thread::exit(),
///   sys_exit()) silently, anything else goes to threading::excepthook with `thread` null
///   (CPython hands it to sys.unraisablehook, which troupe does not have).
/// - Its stack size is stack_size()'s setting.
/// @throws _thread::error (RuntimeError) "can't start new thread" and the OS's reason.
/// Thread-safety: any thread.
template <class F, class... Args>
requires std::is_invocable_v < std::decay_t<F>
&, std::decay_t<Args>&... > std::uint64_t start_new_thread(F&& function, Args&&... args) {
  return threading::detail::start_unregistered(
      [f = std::forward<F>(function),
       tup = std::make_tuple(std::forward<Args>(args)...)]() mutable { std::apply(f, tup); });
}

/// Python: `_thread.exit()`: throws SystemExit, which ends the calling thread silently unless
/// caught. (In the main thread it is SystemExit as anywhere: main decides what it means.)
[[noreturn]] inline void exit() {
  throw SystemExit{};
}

/// Python: `_thread.interrupt_main(signum=signal.SIGINT)`: the signal's handler runs in the
/// main thread. troupe sends `signum` to the main thread (tgkill), so the handler the program
/// installed (sigaction, or Asio's signal_set serving the main thread's event loop) runs there,
/// and a blocking system call of the main thread may return EINTR. As in Python, nothing
/// happens if the signal is ignored or has its default action (SIG_IGN, SIG_DFL): C++ has no
/// KeyboardInterrupt to raise, and the default action would end the process. A signal the main
/// thread blocks stays pending until it unblocks it.
/// @throws ValueError "signal number out of range" unless 1 <= signum < NSIG.
/// @throws OSError if the signal cannot be sent (the main thread has ended).
/// Thread-safety: any thread, the main thread too (the handler has then run on return).
void interrupt_main(int signum = SIGINT);

/// Python: `_thread.get_ident()`, `get_native_id()`, `stack_size([size])`, `TIMEOUT_MAX`:
/// threading's, which share one setting and one clock, as in Python.
using threading::get_ident;
using threading::get_native_id;
using threading::stack_size;
using threading::TIMEOUT_MAX;

/// Python: `_thread._count()`: threads started by troupe (threading::Thread and
/// start_new_thread) that have not finished, the main thread not counted. A thread counts
/// from its start until after its function (and the function's copy of its arguments) is gone.
inline int _count() noexcept {
  return threading::detail::running_count();
}

/// Python 3.12: `_thread.daemon_threads_allowed()`: true (troupe has one interpreter).
constexpr bool daemon_threads_allowed() noexcept {
  return true;
}

/// Python 3.14: `_thread.set_name(name)`: the calling thread's name as the OS shows it (first
/// 15 bytes on Linux, cut at a UTF-8 character boundary). The name of a threading::Thread
/// object is not changed (Thread::set_name does both).
/// @throws OSError if the OS refuses.
void set_name(const std::string& name);

/// Python: `_thread._excepthook`, `_thread._ExceptHookArgs` (threading.__excepthook__ and
/// threading.ExceptHookArgs).
using _ExceptHookArgs = threading::ExceptHookArgs;
inline void _excepthook(const _ExceptHookArgs& args) {
  threading::default_excepthook(args);
}

}  // namespace troupe::_thread
