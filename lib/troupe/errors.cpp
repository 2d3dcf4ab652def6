#include "troupe/errors.hpp"

#include <errno.h>

#include <cstdio>
#include <memory>
#include <sstream>
#include <utility>

#include "troupe/error_envelope.hpp"

#include <string.h>

namespace troupe {
namespace {

class Category final : public std::error_category {
public:
  const char* name() const noexcept override { return "troupe"; }
  std::string message(int v) const override {
    return std::string(python_name(static_cast<errc>(v)));
  }
  std::error_condition default_error_condition(int v) const noexcept override {
    switch (static_cast<errc>(v)) {
      case errc::timeout_error: return std::errc::timed_out;
      case errc::broken_pipe_error: return std::errc::broken_pipe;
      case errc::connection_refused_error: return std::errc::connection_refused;
      case errc::connection_reset_error: return std::errc::connection_reset;
      case errc::file_not_found_error: return std::errc::no_such_file_or_directory;
      case errc::permission_error: return std::errc::permission_denied;
      default: return {v, *this};
    }
  }
};

// Python's repr() of a list of str, enough for command lines in messages.
std::string py_repr(const std::vector<std::string>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ", ";
    out += '\'';
    for (char c : v[i]) {
      if (c == '\'' || c == '\\') out += '\\';
      out += c;
    }
    out += '\'';
  }
  return out + "]";
}

std::string format_seconds(double s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category c;
  return c;
}

std::string_view python_name(errc e) noexcept {
  switch (e) {
    case errc::ok: return "ok";
    case errc::exception: return "Exception";
    case errc::runtime_error: return "RuntimeError";
    case errc::not_implemented_error: return "NotImplementedError";
    case errc::value_error: return "ValueError";
    case errc::type_error: return "TypeError";
    case errc::lookup_error: return "LookupError";
    case errc::key_error: return "KeyError";
    case errc::index_error: return "IndexError";
    case errc::arithmetic_error: return "ArithmeticError";
    case errc::overflow_error: return "OverflowError";
    case errc::stop_iteration: return "StopIteration";
    case errc::os_error: return "OSError";
    case errc::file_not_found_error: return "FileNotFoundError";
    case errc::file_exists_error: return "FileExistsError";
    case errc::permission_error: return "PermissionError";
    case errc::process_lookup_error: return "ProcessLookupError";
    case errc::child_process_error: return "ChildProcessError";
    case errc::connection_error: return "ConnectionError";
    case errc::broken_pipe_error: return "BrokenPipeError";
    case errc::connection_aborted_error: return "ConnectionAbortedError";
    case errc::connection_refused_error: return "ConnectionRefusedError";
    case errc::connection_reset_error: return "ConnectionResetError";
    case errc::interrupted_error: return "InterruptedError";
    case errc::is_a_directory_error: return "IsADirectoryError";
    case errc::not_a_directory_error: return "NotADirectoryError";
    case errc::blocking_io_error: return "BlockingIOError";
    case errc::timeout_error: return "TimeoutError";
    case errc::eof_error: return "EOFError";
    case errc::attribute_error: return "AttributeError";
    case errc::broken_barrier_error: return "threading.BrokenBarrierError";
    case errc::queue_empty: return "queue.Empty";
    case errc::queue_full: return "queue.Full";
    case errc::queue_shutdown: return "queue.ShutDown";
    case errc::cancelled_error: return "concurrent.futures.CancelledError";
    case errc::invalid_state_error: return "concurrent.futures.InvalidStateError";
    case errc::broken_executor: return "concurrent.futures.BrokenExecutor";
    case errc::broken_thread_pool: return "concurrent.futures.thread.BrokenThreadPool";
    case errc::broken_process_pool: return "concurrent.futures.process.BrokenProcessPool";
    case errc::process_error: return "multiprocessing.ProcessError";
    case errc::buffer_too_short: return "multiprocessing.BufferTooShort";
    case errc::authentication_error: return "multiprocessing.AuthenticationError";
    case errc::mp_timeout_error: return "multiprocessing.TimeoutError";
    case errc::remote_error: return "multiprocessing.managers.RemoteError";
    case errc::subprocess_error: return "subprocess.SubprocessError";
    case errc::called_process_error: return "subprocess.CalledProcessError";
    case errc::timeout_expired: return "subprocess.TimeoutExpired";
  }
  return "unknown troupe error";
}

const std::vector<errc>& all_errc() {
  static const std::vector<errc> all = [] {
    std::vector<errc> v;
    for (int i = 1; i < 100; ++i) {
      auto e = static_cast<errc>(i);
      if (python_name(e) != "unknown troupe error") v.push_back(e);
    }
    return v;
  }();
  return all;
}

TimeoutError::TimeoutError(const std::string& what) : OSError(ETIMEDOUT, what) {}

namespace subprocess {

namespace {
// Python's "%s" of cmd: a list's repr, or a command line as it is.
std::string command_text(const std::vector<std::string>& cmd, bool command_line) {
  return command_line && cmd.size() == 1 ? cmd[0] : py_repr(cmd);
}

std::string called_process_message(int rc, const std::string& command) {
  std::string s = "Command '" + command + "' ";
  if (rc < 0) {
    const char* abbrev = sigabbrev_np(-rc);
    if (abbrev) return s + "died with <Signals.SIG" + abbrev + ": " + std::to_string(-rc) + ">.";
    return s + "died with unknown signal " + std::to_string(-rc) + ".";
  }
  return s + "returned non-zero exit status " + std::to_string(rc) + ".";
}
}  // namespace

CalledProcessError::CalledProcessError(int rc, std::vector<std::string> c, std::string out,
                                       std::string err, bool command_line)
    : SubprocessError(called_process_message(rc, command_text(c, command_line))),
      returncode(rc),
      cmd(std::move(c)),
      output(std::move(out)),
      stderr_(std::move(err)) {}

TimeoutExpired::TimeoutExpired(std::vector<std::string> c, std::chrono::duration<double> t,
                               std::string out, std::string err, bool command_line)
    : SubprocessError("Command '" + command_text(c, command_line) + "' timed out after " +
                      format_seconds(t.count()) + " seconds"),
      cmd(std::move(c)),
      timeout(t),
      output(std::move(out)),
      stderr_(std::move(err)) {}

}  // namespace subprocess

errc errc_for_errno(int err) noexcept {
  switch (err) {
    case ENOENT: return errc::file_not_found_error;
    case EEXIST: return errc::file_exists_error;
    case EPERM:
    case EACCES: return errc::permission_error;
    case ESRCH: return errc::process_lookup_error;
    case ECHILD: return errc::child_process_error;
    case EPIPE:
    case ESHUTDOWN: return errc::broken_pipe_error;
    case ECONNABORTED: return errc::connection_aborted_error;
    case ECONNREFUSED: return errc::connection_refused_error;
    case ECONNRESET: return errc::connection_reset_error;
    case EINTR: return errc::interrupted_error;
    case EISDIR: return errc::is_a_directory_error;
    case ENOTDIR: return errc::not_a_directory_error;
    case EAGAIN:
    case EALREADY:
    case EINPROGRESS: return errc::blocking_io_error;
    case ETIMEDOUT: return errc::timeout_error;
    default: return errc::os_error;
  }
}

namespace {
// The errno a class stands for when it is thrown from a troupe code with no errno.
int default_errno(errc e) noexcept {
  switch (e) {
    case errc::file_not_found_error: return ENOENT;
    case errc::file_exists_error: return EEXIST;
    case errc::permission_error: return EACCES;
    case errc::process_lookup_error: return ESRCH;
    case errc::child_process_error: return ECHILD;
    case errc::connection_error: return ECONNABORTED;
    case errc::broken_pipe_error: return EPIPE;
    case errc::connection_aborted_error: return ECONNABORTED;
    case errc::connection_refused_error: return ECONNREFUSED;
    case errc::connection_reset_error: return ECONNRESET;
    case errc::interrupted_error: return EINTR;
    case errc::is_a_directory_error: return EISDIR;
    case errc::not_a_directory_error: return ENOTDIR;
    case errc::blocking_io_error: return EAGAIN;
    case errc::timeout_error: return ETIMEDOUT;
    default: return EIO;
  }
}
}  // namespace

namespace internal {
// Sets what only a rebuilt exception has.
struct ErrorBaseAccess {
  static void set_remote(ErrorBase& e, std::shared_ptr<const ErrorEnvelope> remote) noexcept {
    e.remote_ = std::move(remote);
  }
};
}  // namespace internal

namespace {

bool known(errc e) noexcept {
  return e != errc::ok && python_name(e) != "unknown troupe error";
}

template <class E, class... A>
[[noreturn]] void raise(std::shared_ptr<const ErrorEnvelope>&& remote, A&&... a) {
  E e(std::forward<A>(a)...);
  if (remote) internal::ErrorBaseAccess::set_remote(e, std::move(remote));
  throw e;
}

// The one switch from a code to its class: `err` is the errno of an OSError class, `remote` the
// envelope it was rebuilt from (or null). `e` is known.
[[noreturn]] void throw_class(errc e, int err, const std::string& what,
                              std::shared_ptr<const ErrorEnvelope> remote) {
  switch (e) {
    case errc::ok: break;
    case errc::exception: raise<Exception>(std::move(remote), what);
    case errc::runtime_error: raise<RuntimeError>(std::move(remote), what);
    case errc::not_implemented_error: raise<NotImplementedError>(std::move(remote), what);
    case errc::value_error: raise<ValueError>(std::move(remote), what);
    case errc::type_error: raise<TypeError>(std::move(remote), what);
    case errc::lookup_error: raise<LookupError>(std::move(remote), what);
    case errc::key_error: raise<KeyError>(std::move(remote), what);
    case errc::index_error: raise<IndexError>(std::move(remote), what);
    case errc::arithmetic_error: raise<ArithmeticError>(std::move(remote), what);
    case errc::overflow_error: raise<OverflowError>(std::move(remote), what);
    case errc::stop_iteration: raise<StopIteration>(std::move(remote), what);
    case errc::os_error: raise<OSError>(std::move(remote), err, what);
    case errc::file_not_found_error: raise<FileNotFoundError>(std::move(remote), err, what);
    case errc::file_exists_error: raise<FileExistsError>(std::move(remote), err, what);
    case errc::permission_error: raise<PermissionError>(std::move(remote), err, what);
    case errc::process_lookup_error: raise<ProcessLookupError>(std::move(remote), err, what);
    case errc::child_process_error: raise<ChildProcessError>(std::move(remote), err, what);
    case errc::connection_error: raise<ConnectionError>(std::move(remote), err, what);
    case errc::broken_pipe_error: raise<BrokenPipeError>(std::move(remote), err, what);
    case errc::connection_aborted_error:
      raise<ConnectionAbortedError>(std::move(remote), err, what);
    case errc::connection_refused_error:
      raise<ConnectionRefusedError>(std::move(remote), err, what);
    case errc::connection_reset_error: raise<ConnectionResetError>(std::move(remote), err, what);
    case errc::interrupted_error: raise<InterruptedError>(std::move(remote), err, what);
    case errc::is_a_directory_error: raise<IsADirectoryError>(std::move(remote), err, what);
    case errc::not_a_directory_error: raise<NotADirectoryError>(std::move(remote), err, what);
    case errc::blocking_io_error: raise<BlockingIOError>(std::move(remote), err, what);
    case errc::timeout_error: raise<TimeoutError>(std::move(remote), err, what);
    case errc::eof_error: raise<EOFError>(std::move(remote), what);
    case errc::attribute_error: raise<AttributeError>(std::move(remote), what);
    case errc::broken_barrier_error: raise<threading::BrokenBarrierError>(std::move(remote), what);
    case errc::queue_empty: raise<queue::Empty>(std::move(remote), what);
    case errc::queue_full: raise<queue::Full>(std::move(remote), what);
    case errc::queue_shutdown: raise<queue::ShutDown>(std::move(remote), what);
    case errc::cancelled_error: raise<concurrent::futures::CancelledError>(std::move(remote), what);
    case errc::invalid_state_error:
      raise<concurrent::futures::InvalidStateError>(std::move(remote), what);
    case errc::broken_executor: raise<concurrent::futures::BrokenExecutor>(std::move(remote), what);
    case errc::broken_thread_pool:
      raise<concurrent::futures::BrokenThreadPool>(std::move(remote), what);
    case errc::broken_process_pool:
      raise<concurrent::futures::BrokenProcessPool>(std::move(remote), what);
    case errc::process_error: raise<multiprocessing::ProcessError>(std::move(remote), what);
    case errc::buffer_too_short: raise<multiprocessing::BufferTooShort>(std::move(remote), what);
    case errc::authentication_error:
      raise<multiprocessing::AuthenticationError>(std::move(remote), what);
    case errc::mp_timeout_error: raise<multiprocessing::TimeoutError>(std::move(remote), what);
    case errc::remote_error: raise<multiprocessing::RemoteError>(std::move(remote), what);
    case errc::subprocess_error: raise<subprocess::SubprocessError>(std::move(remote), what);
    // The fields of these two do not cross as a code; they arrive as the base class with
    // Python's message, which is what a remote peer can say about them.
    case errc::called_process_error: raise<subprocess::SubprocessError>(std::move(remote), what);
    case errc::timeout_expired: raise<subprocess::SubprocessError>(std::move(remote), what);
  }
  throw RuntimeError(what + " (unknown troupe error code " + std::to_string(static_cast<int>(e)) +
                     ")");
}

bool is_os_error(errc e) noexcept {
  return e >= errc::os_error && e <= errc::timeout_error;
}

}  // namespace

void throw_os_error(int err, const std::string& what) {
  throw_class(errc_for_errno(err), err,
              what + ": [Errno " + std::to_string(err) + "] " + strerrordesc_np(err), nullptr);
}

void throw_error(std::error_code ec, const std::string& what) {
  if (!ec) throw ValueError("throw_error: called with a success code (" + what + ")");
  if (ec.category() != error_category()) {
    if (ec.category() == std::generic_category() || ec.category() == std::system_category()) {
      throw_os_error(ec.value(), what);
    }
    throw RuntimeError(what + ": " + ec.message() + " (" + ec.category().name() + ")");
  }
  const auto e = static_cast<errc>(ec.value());
  throw_class(e, default_errno(e), what, nullptr);
}

void throw_error(const ErrorEnvelope& env) {
  if (!known(env.code))
    throw ValueError(
        "throw_error: an error envelope with code " + std::to_string(static_cast<int>(env.code)) +
        ", which names no troupe exception class (" + env.type_name + ": " + env.message + ")");
  std::string what;
  if (env.code == errc::exception && !env.type_name.empty() &&
      env.type_name != python_name(errc::exception))
    what = env.type_name + ": ";
  what += env.message + "\n---\n" + env.remote_text() + "\n---";
  const int err =
      is_os_error(env.code) && env.os_errno != 0 ? env.os_errno : default_errno(env.code);
  throw_class(env.code, err, what, std::make_shared<const ErrorEnvelope>(env));
}

const ErrorEnvelope* remote_envelope(const std::exception& e) noexcept {
  const auto* base = dynamic_cast<const ErrorBase*>(&e);
  return base ? base->remote() : nullptr;
}

errc errc_of(std::exception_ptr ep) noexcept {
  if (!ep) return errc::ok;
  try {
    std::rethrow_exception(ep);
  }
  // Most derived first.
  catch (const threading::BrokenBarrierError&) {
    return errc::broken_barrier_error;
  } catch (const concurrent::futures::BrokenThreadPool&) {
    return errc::broken_thread_pool;
  } catch (const concurrent::futures::BrokenProcessPool&) {
    return errc::broken_process_pool;
  } catch (const concurrent::futures::BrokenExecutor&) {
    return errc::broken_executor;
  } catch (const NotImplementedError&) {
    return errc::not_implemented_error;
  } catch (const RuntimeError&) {
    return errc::runtime_error;
  } catch (const ValueError&) {
    return errc::value_error;
  } catch (const TypeError&) {
    return errc::type_error;
  } catch (const KeyError&) {
    return errc::key_error;
  } catch (const IndexError&) {
    return errc::index_error;
  } catch (const LookupError&) {
    return errc::lookup_error;
  } catch (const OverflowError&) {
    return errc::overflow_error;
  } catch (const ArithmeticError&) {
    return errc::arithmetic_error;
  } catch (const StopIteration&) {
    return errc::stop_iteration;
  } catch (const FileNotFoundError&) {
    return errc::file_not_found_error;
  } catch (const FileExistsError&) {
    return errc::file_exists_error;
  } catch (const PermissionError&) {
    return errc::permission_error;
  } catch (const ProcessLookupError&) {
    return errc::process_lookup_error;
  } catch (const ChildProcessError&) {
    return errc::child_process_error;
  } catch (const BrokenPipeError&) {
    return errc::broken_pipe_error;
  } catch (const ConnectionAbortedError&) {
    return errc::connection_aborted_error;
  } catch (const ConnectionRefusedError&) {
    return errc::connection_refused_error;
  } catch (const ConnectionResetError&) {
    return errc::connection_reset_error;
  } catch (const ConnectionError&) {
    return errc::connection_error;
  } catch (const InterruptedError&) {
    return errc::interrupted_error;
  } catch (const IsADirectoryError&) {
    return errc::is_a_directory_error;
  } catch (const NotADirectoryError&) {
    return errc::not_a_directory_error;
  } catch (const BlockingIOError&) {
    return errc::blocking_io_error;
  } catch (const TimeoutError&) {
    return errc::timeout_error;
  } catch (const OSError&) {
    return errc::os_error;
  } catch (const EOFError&) {
    return errc::eof_error;
  } catch (const AttributeError&) {
    return errc::attribute_error;
  } catch (const queue::Empty&) {
    return errc::queue_empty;
  } catch (const queue::Full&) {
    return errc::queue_full;
  } catch (const queue::ShutDown&) {
    return errc::queue_shutdown;
  } catch (const concurrent::futures::CancelledError&) {
    return errc::cancelled_error;
  } catch (const concurrent::futures::InvalidStateError&) {
    return errc::invalid_state_error;
  } catch (const multiprocessing::BufferTooShort&) {
    return errc::buffer_too_short;
  } catch (const multiprocessing::AuthenticationError&) {
    return errc::authentication_error;
  } catch (const multiprocessing::TimeoutError&) {
    return errc::mp_timeout_error;
  } catch (const multiprocessing::ProcessError&) {
    return errc::process_error;
  } catch (const multiprocessing::RemoteError&) {
    return errc::remote_error;
  } catch (const subprocess::CalledProcessError&) {
    return errc::called_process_error;
  } catch (const subprocess::TimeoutExpired&) {
    return errc::timeout_expired;
  } catch (const subprocess::SubprocessError&) {
    return errc::subprocess_error;
  } catch (const std::system_error& e) {
    if (e.code().category() == error_category()) return static_cast<errc>(e.code().value());
    return errc_for_errno(e.code().value());
  } catch (...) {
    return errc::exception;
  }
}

}  // namespace troupe
