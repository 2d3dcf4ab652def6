// Test helpers for multi-process tests: the local Python interpreters, and a child process whose
// stdout lines can be read with a deadline and which is always reaped (killed if need be).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace troupe::testing {

struct Python {
  std::string exe;
  int minor = 0;  // 3.minor
};

/// python3 from PATH and /root/.pyenv/versions/3.*/bin/python3 (3.8 and later), with their
/// minor versions.
std::vector<Python> find_pythons();

class ChildProcess {
public:
  /// Starts argv[0] (looked up in PATH) with `argv`; stdout is captured when asked, else
  /// inherited. stderr is inherited, so a failing child explains itself in the test log. The
  /// environment is this process's, with the NAME=VALUE entries of `env` added or replacing
  /// (a secret goes there, never on the command line).
  ChildProcess(const std::vector<std::string>& argv, bool capture_stdout,
               const std::vector<std::string>& env = {});
  ChildProcess(ChildProcess&&) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();  // kills (SIGKILL) and reaps a child still running

  /// The next line of stdout without its newline; nullopt on EOF or when `timeout` passes.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  /// Everything read so far and not returned by read_line, plus what arrives until EOF or
  /// `timeout`.
  std::string read_rest(std::chrono::milliseconds timeout);
  /// Waits for the exit: the exit status, 128 + signal if killed by one, or -1 if `timeout`
  /// passed (the child is then killed and reaped).
  int wait(std::chrono::milliseconds timeout);
  pid_t pid() const noexcept { return pid_; }

private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffered_;
};

}  // namespace troupe::testing
