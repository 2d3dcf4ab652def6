// troupe/error_envelope.hpp — an exception as it crosses a process boundary (proto/errors.capnp).
//
// One envelope for every error that another process sends: pool and executor workers now,
// managers and actors next. It holds the exception's class (its `troupe::errc` and Python-style
// name), its message, its errno (OSError and subclasses), what is known of the remote side's stack,
// where it was raised (host, pid, process name) and in what call (the function or method, the
// object, a summary of the arguments).
//
//     // the side where the call failed
//     catch (...) { reply(ErrorEnvelope::capture(std::current_exception(), {.call = "square"})
//                             .to_bytes()); }
//     // the side that made the call
//     throw_error(ErrorEnvelope::from_bytes(bytes));   // a ValueError is a ValueError again
//
// The rebuilt exception is of the class the code names, and carries the envelope:
// `e.remote()` (every troupe exception class has it) or `remote_envelope(e)` from a
// `std::exception`. Its `what()` is the message, then the remote side in Python's manner:
//
//     bad value 3
//     ---
//     Remote ValueError in raise_value(3), in process ProcessPoolExecutor-0-worker-1 (pid 4242)
//     on host node7
//     ---
//
// Bounded both ways: on encode every text is cut to its limit (message and traceback 64 KiB, the
// rest 4 KiB each, marked "... (cut, N bytes)"); on decode a longer text, a message over
// kMaxBytes, an unknown code or a malformed message is a ValueError saying which.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "troupe/errors.hpp"

#include "errors.capnp.h"

namespace troupe {

/// The process an error was raised in.
struct ErrorOrigin {
  std::string host;          // gethostname()
  std::int32_t pid = 0;      // getpid()
  std::string process_name;  // multiprocessing.current_process().name
};

/// The call an error was raised in, as far as the side that ran it knows.
struct ErrorContext {
  std::string call;       // the function or method: a pool's entry name, "Queue.get"
  std::string object;     // what it was called on (a manager's object, an actor), or empty
  std::string arguments;  // a short summary ("(3, 'abc')", summarize_arguments()), or empty
};

/// An exception in transit (proto/errors.capnp `Error`, field by field).
struct ErrorEnvelope {
  errc code = errc::exception;  // the class; never errc::ok
  std::string type_name;      // python_name(code), or the C++ type of a class troupe does not know
  std::string message;        // what() as raised (Python's str(e))
  std::int32_t os_errno = 0;  // OSError and subclasses; else 0
  std::string traceback;      // what is known of the remote stack (nested causes), may be empty
  ErrorOrigin origin;
  ErrorContext context;

  /// Limits, in bytes: a text longer than its limit is cut on encode and refused on decode.
  static constexpr std::size_t kMaxMessage = 64 * 1024;    // message
  static constexpr std::size_t kMaxTraceback = 64 * 1024;  // traceback
  static constexpr std::size_t kMaxText = 4 * 1024;        // every other text
  static constexpr std::size_t kMaxBytes = 256 * 1024;     // the whole serialised message

  /// The exception in `e` (not null), raised in this process in `context`: its class, message,
  /// errno, its std::nested_exception causes as the traceback (and, if it was itself rebuilt from
  /// an envelope, that envelope's remote text), and this process as the origin. A class troupe
  /// does not know (a user's std::runtime_error) is `errc::exception` with its C++ type as
  /// `type_name`; it arrives as a `troupe::Exception` whose what() starts "TYPE: message".
  /// Never throws but std::bad_alloc.
  static ErrorEnvelope capture(std::exception_ptr e, ErrorContext context = {});

  /// Writes it into `out`, every text cut to its limit.
  void encode(proto::Error::Builder out) const;
  /// Reads one. @throws ValueError for an unknown or success code, or a text over its limit.
  static ErrorEnvelope decode(proto::Error::Reader in);

  /// The whole Cap'n Proto message (segment table and segments; root `Error`), as bytes.
  std::vector<std::byte> to_bytes() const;
  /// Reads bytes made by to_bytes() (or by anyone: every read is bounded).
  /// @throws ValueError if they are over kMaxBytes, malformed, or decode() refuses them.
  static ErrorEnvelope from_bytes(std::span<const std::byte> bytes);

  /// The remote side in one text: "Remote ValueError in raise_value(3), in process NAME (pid N)
  /// on host H", then the traceback's lines, if any. What throw_error() appends to what().
  std::string remote_text() const;
  /// The exception throw_error() would throw, as an exception_ptr.
  std::exception_ptr exception() const;
};

/// Throws the class `e.code` names (an OSError subclass with `e.os_errno`), whose what() is the
/// message (prefixed "TYPE: " for a class troupe does not know) then "\n---\n", remote_text() and
/// "\n---", and whose `remote()` is a copy of `e`.
[[noreturn]] void throw_error(const ErrorEnvelope& e);

/// The envelope an exception was rebuilt from (`ErrorBase::remote()`), or nullptr: raised in this
/// process, or not a troupe class.
const ErrorEnvelope* remote_envelope(const std::exception& e) noexcept;

/// A short, Python-like text of encoded arguments (troupe::to_bytes of a tuple, or of a map
/// chunk's list): "(3, 'abc', [1, 2, ...])", at most `limit` bytes; "<N bytes>" if they cannot be
/// read. For an envelope's context.
std::string summarize_arguments(std::span<const std::byte> encoded, std::size_t limit = 200);

/// The name of this process in an envelope's origin is Python's current_process().name, which
/// layer 3 owns (troupe/multiprocessing/process.cpp installs its function here when the library
/// loads); until one is installed, the program's name (program_invocation_short_name).
using ProcessNameSource = std::string (*)();
void set_process_name_source(ProcessNameSource source) noexcept;

}  // namespace troupe
