// troupe/errors.hpp — Python's exception tree, on std.
//
// Every exception troupe throws has Python's name and Python's place in the hierarchy, and
// each class has one value of the closed enum `troupe::errc`. That value is what async
// completions deliver (as a `std::error_code` in `troupe::error_category()`), what crosses the
// wire (proto/errors.capnp), and what `throw_error(ec, what)` turns back into the class.
//
//   Python                                  troupe (base)
//   RuntimeError                            RuntimeError (std::runtime_error)
//     NotImplementedError                   NotImplementedError
//     threading.BrokenBarrierError          threading::BrokenBarrierError
//     concurrent.futures.BrokenExecutor     concurrent::futures::BrokenExecutor
//       BrokenThreadPool, BrokenProcessPool
//   ValueError                              ValueError (std::invalid_argument)
//   TypeError                               TypeError (std::logic_error)
//   LookupError > KeyError, IndexError      LookupError (std::out_of_range) > KeyError, IndexError
//   ArithmeticError > OverflowError         ArithmeticError (Exception) > OverflowError
//   StopIteration                           StopIteration (Exception)
//   OSError (errno)                         OSError (std::system_error, generic_category)
//     FileNotFoundError, PermissionError, … one class per errno group, as Python's
//     TimeoutError                          TimeoutError (errno ETIMEDOUT)
//   EOFError                                EOFError (Exception)
//   AttributeError                          AttributeError (Exception)
//   queue.Empty / Full / ShutDown           queue::Empty / Full / ShutDown (Exception)
//   concurrent.futures.CancelledError, InvalidStateError (Exception)
//   multiprocessing.ProcessError            multiprocessing::ProcessError (Exception)
//     BufferTooShort, AuthenticationError, multiprocessing.TimeoutError (a ProcessError,
//     distinct from the builtin TimeoutError, as in Python)
//   multiprocessing.managers.RemoteError    multiprocessing::RemoteError (Exception)
//   subprocess.SubprocessError              subprocess::SubprocessError (Exception)
//     CalledProcessError, TimeoutExpired
//   SystemExit (a BaseException)            SystemExit (not a std::exception)
//
// `troupe::Exception` stands for Python's `Exception` where Python derives a class from it
// directly; `catch (const std::exception&)` catches everything troupe throws but SystemExit.
//
// An exception that came from another process (a pool worker's call, later a manager's method)
// is rebuilt here as its own class from an error envelope (troupe/error_envelope.hpp,
// proto/errors.capnp); `remote()` (every class has it, through `ErrorBase`) returns what that
// process said: where it was raised (host, pid, process name), in what call, its traceback.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace troupe {

/// One value per exception class. Stable numbers: they cross the wire.
enum class errc : std::uint16_t {
  ok = 0,
  exception = 1,  // Exception (a class troupe does not know more precisely)
  runtime_error = 2,
  not_implemented_error = 3,
  value_error = 4,
  type_error = 5,
  lookup_error = 6,
  key_error = 7,
  index_error = 8,
  // ArithmeticError, OverflowError (a managed Array's value out of its typecode's range)
  arithmetic_error = 27,
  overflow_error = 28,
  stop_iteration = 29,  // an untyped `__next__` of a managed iterator at its end
  os_error = 9,         // OSError with an errno that has no subclass of its own
  file_not_found_error = 10,
  file_exists_error = 11,
  permission_error = 12,
  process_lookup_error = 13,
  child_process_error = 14,
  connection_error = 15,
  broken_pipe_error = 16,
  connection_aborted_error = 17,
  connection_refused_error = 18,
  connection_reset_error = 19,
  interrupted_error = 20,
  is_a_directory_error = 21,
  not_a_directory_error = 22,
  blocking_io_error = 23,
  timeout_error = 24,
  eof_error = 25,
  attribute_error = 26,  // an unknown or unexposed method of a managed object, an unset field
  // threading
  broken_barrier_error = 40,
  // queue
  queue_empty = 50,
  queue_full = 51,
  queue_shutdown = 52,
  // concurrent.futures
  cancelled_error = 60,
  invalid_state_error = 61,
  broken_executor = 62,
  broken_thread_pool = 63,
  broken_process_pool = 64,
  // multiprocessing
  process_error = 70,
  buffer_too_short = 71,
  authentication_error = 72,
  mp_timeout_error = 73,
  remote_error = 74,
  // subprocess
  subprocess_error = 80,
  called_process_error = 81,
  timeout_expired = 82,
};

/// The category of `troupe::errc`; `message()` gives the Python class name.
const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// Python's dotted class name for `e`, e.g. "queue.Empty", "FileNotFoundError".
std::string_view python_name(errc e) noexcept;

/// Every errc value, for table-driven tests and decoders.
const std::vector<errc>& all_errc();

struct ErrorEnvelope;  // troupe/error_envelope.hpp
namespace internal {
struct ErrorBaseAccess;
}

/// The second base of every troupe exception class (through the six roots below: Exception,
/// RuntimeError, ValueError, TypeError, LookupError, OSError), for what std's classes cannot hold.
class ErrorBase {
public:
  /// The error as another process sent it, when this exception was rebuilt from an error envelope
  /// (`throw_error(const ErrorEnvelope&)`: a call in a pool worker failed, say): its origin (host,
  /// pid, process name), its call, its traceback, its message as raised. nullptr when the
  /// exception was raised in this process. Include "troupe/error_envelope.hpp" to read it;
  /// `troupe::remote_envelope(const std::exception&)` finds it from a `std::exception`.
  const ErrorEnvelope* remote() const noexcept { return remote_.get(); }

protected:
  ErrorBase() = default;
  ~ErrorBase() = default;
  ErrorBase(const ErrorBase&) = default;
  ErrorBase& operator=(const ErrorBase&) = default;

private:
  friend struct internal::ErrorBaseAccess;
  std::shared_ptr<const ErrorEnvelope> remote_;  // shared: copying an exception never throws
};

// ---------------------------------------------------------------------------------------------
// Builtins

/// Python: `Exception`, for classes Python derives from it directly.
class Exception : public std::runtime_error, public ErrorBase {
public:
  using std::runtime_error::runtime_error;
};

/// Python: `RuntimeError` (also `threading.ThreadError` and `_thread.error`).
class RuntimeError : public std::runtime_error, public ErrorBase {
public:
  using std::runtime_error::runtime_error;
};
using ThreadError = RuntimeError;

/// Python: `SystemExit`. Thrown by sys_exit() and _thread::exit(). A process target that throws
/// it exits with `code` (Python: `sys.exit(n)` inside a Process target gives exitcode n); a
/// thread ends silently (threading::default_excepthook ignores it, _thread drops it). Not a
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

/// Python: `NotImplementedError`.
class NotImplementedError : public RuntimeError {
public:
  using RuntimeError::RuntimeError;
};

/// Python: `ValueError`.
class ValueError : public std::invalid_argument, public ErrorBase {
public:
  using std::invalid_argument::invalid_argument;
};

/// Python: `TypeError` (e.g. a message decoded as a type other than the one sent).
class TypeError : public std::logic_error, public ErrorBase {
public:
  using std::logic_error::logic_error;
};

/// Python: `LookupError`.
class LookupError : public std::out_of_range, public ErrorBase {
public:
  using std::out_of_range::out_of_range;
};
/// Python: `KeyError`.
class KeyError : public LookupError {
public:
  using LookupError::LookupError;
};
/// Python: `IndexError`.
class IndexError : public LookupError {
public:
  using LookupError::LookupError;
};

/// Python: `ArithmeticError`.
class ArithmeticError : public Exception {
public:
  using Exception::Exception;
};
/// Python: `OverflowError` (a value that does not fit a managed Array's typecode).
class OverflowError : public ArithmeticError {
public:
  using ArithmeticError::ArithmeticError;
};

/// Python: `StopIteration` — an iterator has no more items (a managed iterator's untyped
/// `__next__`; the typed proxies return an empty optional instead).
class StopIteration : public Exception {
public:
  StopIteration() : Exception("StopIteration") {}
  using Exception::Exception;
};

/// Python: `EOFError` — the peer closed the connection.
class EOFError : public Exception {
public:
  using Exception::Exception;
};

/// Python: `AttributeError` — a managed object has no such method (or it is not exposed), a
/// Namespace no such attribute.
class AttributeError : public Exception {
public:
  using Exception::Exception;
};

/// Python: `OSError`. Carries the errno (`code().value()`, generic category) and a message
/// naming what failed. `throw_os_error(errno, what)` picks the subclass Python would raise.
class OSError : public std::system_error, public ErrorBase {
public:
  OSError(int err, const std::string& what)
      : std::system_error(err, std::generic_category(), what), message_(what) {}
  /// The errno, as Python's `OSError.errno`.
  int errno_value() const noexcept { return code().value(); }
  /// The message as given (std::system_error would append the errno's text a second time).
  const char* what() const noexcept override { return message_.what(); }

private:
  std::runtime_error message_;  // a reference-counted string, copied without throwing
};

#define TROUPE_OS_ERROR_SUBCLASS(Name, Base)                    \
  class Name : public Base {                                    \
  public:                                                       \
    Name(int err, const std::string& what) : Base(err, what) {} \
  }

TROUPE_OS_ERROR_SUBCLASS(FileNotFoundError, OSError);
TROUPE_OS_ERROR_SUBCLASS(FileExistsError, OSError);
TROUPE_OS_ERROR_SUBCLASS(PermissionError, OSError);
TROUPE_OS_ERROR_SUBCLASS(ProcessLookupError, OSError);
TROUPE_OS_ERROR_SUBCLASS(ChildProcessError, OSError);
TROUPE_OS_ERROR_SUBCLASS(ConnectionError, OSError);
TROUPE_OS_ERROR_SUBCLASS(BrokenPipeError, ConnectionError);
TROUPE_OS_ERROR_SUBCLASS(ConnectionAbortedError, ConnectionError);
TROUPE_OS_ERROR_SUBCLASS(ConnectionRefusedError, ConnectionError);
TROUPE_OS_ERROR_SUBCLASS(ConnectionResetError, ConnectionError);
TROUPE_OS_ERROR_SUBCLASS(InterruptedError, OSError);
TROUPE_OS_ERROR_SUBCLASS(IsADirectoryError, OSError);
TROUPE_OS_ERROR_SUBCLASS(NotADirectoryError, OSError);
TROUPE_OS_ERROR_SUBCLASS(BlockingIOError, OSError);
#undef TROUPE_OS_ERROR_SUBCLASS

/// Python: the builtin `TimeoutError` (an `OSError` with errno ETIMEDOUT).
/// `concurrent::futures::TimeoutError` is this class, as in Python 3.11+.
class TimeoutError : public OSError {
public:
  explicit TimeoutError(const std::string& what);
  TimeoutError(int err, const std::string& what) : OSError(err, what) {}
};

// ---------------------------------------------------------------------------------------------
// Per module

namespace threading {
/// Python: `threading.BrokenBarrierError`.
class BrokenBarrierError : public RuntimeError {
public:
  using RuntimeError::RuntimeError;
};
}  // namespace threading

namespace queue {
/// Python: `queue.Empty` — `get(block=false)` or a timed `get` found nothing.
class Empty : public Exception {
public:
  Empty() : Exception("queue.Empty") {}
  using Exception::Exception;
};
/// Python: `queue.Full` — `put(block=false)` or a timed `put` found no free slot.
class Full : public Exception {
public:
  Full() : Exception("queue.Full") {}
  using Exception::Exception;
};
/// Python: `queue.ShutDown` (3.13) — put or get on a queue that was shut down.
class ShutDown : public Exception {
public:
  ShutDown() : Exception("queue.ShutDown") {}
  using Exception::Exception;
};
}  // namespace queue

namespace concurrent::futures {
/// Python: `concurrent.futures.CancelledError`.
class CancelledError : public Exception {
public:
  using Exception::Exception;
};
/// Python: `concurrent.futures.InvalidStateError`.
class InvalidStateError : public Exception {
public:
  using Exception::Exception;
};
/// Python: `concurrent.futures.BrokenExecutor`.
class BrokenExecutor : public RuntimeError {
public:
  using RuntimeError::RuntimeError;
};
/// Python: `concurrent.futures.thread.BrokenThreadPool`.
class BrokenThreadPool : public BrokenExecutor {
public:
  using BrokenExecutor::BrokenExecutor;
};
/// Python: `concurrent.futures.process.BrokenProcessPool`.
class BrokenProcessPool : public BrokenExecutor {
public:
  using BrokenExecutor::BrokenExecutor;
};
/// Python 3.11+: `concurrent.futures.TimeoutError` is the builtin `TimeoutError`.
using troupe::TimeoutError;
}  // namespace concurrent::futures

namespace multiprocessing {
/// Python: `multiprocessing.ProcessError`.
class ProcessError : public Exception {
public:
  using Exception::Exception;
};
/// Python: `multiprocessing.BufferTooShort`; `message()` holds the whole message received.
class BufferTooShort : public ProcessError {
public:
  BufferTooShort(const std::string& what, std::vector<std::byte> message)
      : ProcessError(what), message_(std::move(message)) {}
  explicit BufferTooShort(const std::string& what) : ProcessError(what) {}
  const std::vector<std::byte>& message() const noexcept { return message_; }

private:
  std::vector<std::byte> message_;
};
/// Python: `multiprocessing.AuthenticationError`.
class AuthenticationError : public ProcessError {
public:
  using ProcessError::ProcessError;
};
/// Python: `multiprocessing.TimeoutError` — a `ProcessError`, not the builtin `TimeoutError`.
class TimeoutError : public ProcessError {
public:
  using ProcessError::ProcessError;
};
/// Python: `multiprocessing.managers.RemoteError` — an exception raised in a manager process.
class RemoteError : public Exception {
public:
  using Exception::Exception;
};
}  // namespace multiprocessing

namespace subprocess {
/// Python: `subprocess.SubprocessError`.
class SubprocessError : public Exception {
public:
  using Exception::Exception;
};

/// Python: `subprocess.CalledProcessError(returncode, cmd, output=None, stderr=None)`.
/// `what()` is Python's `str()`: "Command '…' returned non-zero exit status N." or
/// "Command '…' died with <Signals.SIGKILL: 9>."
class CalledProcessError : public SubprocessError {
public:
  /// `command_line`: `cmd` is one shell command line, shown as it is (Python's str cmd).
  CalledProcessError(int returncode, std::vector<std::string> cmd, std::string output = {},
                     std::string stderr_ = {}, bool command_line = false);
  int returncode;
  std::vector<std::string> cmd;
  std::string output;  // also Python's `stdout`
  std::string stderr_;
};

/// Python: `subprocess.TimeoutExpired(cmd, timeout, output=None, stderr=None)`.
class TimeoutExpired : public SubprocessError {
public:
  TimeoutExpired(std::vector<std::string> cmd, std::chrono::duration<double> timeout,
                 std::string output = {}, std::string stderr_ = {}, bool command_line = false);
  std::vector<std::string> cmd;
  std::chrono::duration<double> timeout;
  std::string output;
  std::string stderr_;
};
}  // namespace subprocess

// ---------------------------------------------------------------------------------------------
// Between codes and classes

/// Throws the class that `ec` names, with message `what`.
/// A `troupe::error_category()` code throws that class; a generic/system code (an errno)
/// throws the `OSError` subclass Python would raise for it. `ec` must not be success
/// (that is a `ValueError`). An error from another process, with its origin, call and
/// traceback: `throw_error(const ErrorEnvelope&)` (troupe/error_envelope.hpp).
[[noreturn]] void throw_error(std::error_code ec, const std::string& what);
[[noreturn]] inline void throw_error(errc e, const std::string& what) {
  throw_error(make_error_code(e), what);
}

/// Throws the `OSError` subclass Python raises for `err` (ENOENT → FileNotFoundError, …).
[[noreturn]] void throw_os_error(int err, const std::string& what);

/// The errc for the class of the exception in `ep` (most derived known class);
/// `errc::exception` for anything troupe does not know. OSError subclasses map by class.
errc errc_of(std::exception_ptr ep) noexcept;

/// The errc Python's OSError constructor would choose for `err` (ENOENT → file_not_found_error).
errc errc_for_errno(int err) noexcept;

}  // namespace troupe

template <>
struct std::is_error_code_enum<troupe::errc> : std::true_type {};
