// troupe/subprocess/run.hpp — subprocess.run and the older API (call, check_call, check_output,
// getoutput, getstatusoutput), and a helper for shell-free pipelines. doc/subprocess.md.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "troupe/subprocess/popen.hpp"

namespace troupe::subprocess {

/// Python: `subprocess.CompletedProcess`.
struct CompletedProcess {
  std::vector<std::string> args;
  int returncode = 0;
  /// The captured output (nullopt when that stream was not a PIPE).
  std::optional<std::string> stdout_;
  std::optional<std::string> stderr_;
  bool command_line = false;  // args is one shell command line (for the error's message)

  /// Python: `check_returncode()`. @throws CalledProcessError if returncode is not 0.
  void check_returncode() const;
};

/// Python: `subprocess.run(args, *, input, capture_output, timeout, check, **popen_kwargs)`:
/// runs the child, communicates with it, waits. When the timeout passes the child is killed and
/// TimeoutExpired carries the output so far.
/// @throws ValueError "stdin and input arguments may not both be used." / "stdout and stderr
/// arguments may not be used with capture_output."; CalledProcessError with check; what Popen
/// raises.
CompletedProcess run(Args args, RunOptions options = {});

/// Python: `call(args, timeout=None, **kwargs)`: the return code (the child is killed if the
/// timeout passes, and TimeoutExpired raised).
int call(Args args, RunOptions options = {});

/// Python: `check_call(...)`: 0, or CalledProcessError.
int check_call(Args args, RunOptions options = {});

/// Python: `check_output(...)`: the child's stdout (CalledProcessError for a non-zero return
/// code). @throws ValueError "stdout argument not allowed, it will be overridden."
std::string check_output(Args args, RunOptions options = {});

/// Python: `getstatusoutput(cmd)`: runs `cmd` in the shell, stderr with stdout; the return code
/// and the output without its final newline.
std::pair<int, std::string> getstatusoutput(const std::string& cmd);
/// Python: `getoutput(cmd)`: getstatusoutput's output.
std::string getoutput(const std::string& cmd);

/// A shell-free pipeline (`a | b | c` without a shell): each command's stdout feeds the next
/// one's stdin through a pipe that only those two hold. `options.stdin_` goes to the first,
/// `options.stdout_` to the last, `options.stderr_` and the rest to all. The Popens are returned
/// in order; each one's stdout_ between two commands is already closed here (so a writer gets
/// SIGPIPE when its reader ends, as in a shell).
///
///   auto procs = pipeline({{"ls", "-l"}, {"grep", "cpp"}, {"wc", "-l"}}, {.stdout_ = PIPE});
///   auto count = procs.back().stdout_->read();
std::vector<Popen> pipeline(std::vector<std::vector<std::string>> commands,
                            PopenOptions options = {});

}  // namespace troupe::subprocess
