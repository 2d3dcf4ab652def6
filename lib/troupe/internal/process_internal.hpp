// troupe/internal/process_internal.hpp — what process.cpp and forkserver.cpp share: the message
// that describes a child to start (spawn's bootstrap; a forkserver child's, through a pipe), the
// child side of both, and the fork used where only system calls may follow. Not installed.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing::detail {

/// What a child started by spawn or by the forkserver needs: the entry point, its encoded
/// arguments, who it is and who its parent is.
struct SpawnBootstrap {
  std::string entry;
  std::vector<std::byte> arguments;
  std::string name;
  bool daemon = false;
  std::vector<int> identity;
  std::vector<std::byte> authkey;
  int parent_pid = 0;
  std::string parent_name;
  int passed_fds = 0;   // how many fds travel with the arguments
  int tracker_fd = -1;  // which of them is the parent's resource tracker (-1: none)
  int tracker_pid = 0;
  int log_level = 0;  // the parent's multiprocessing logger (Python's preparation data)
  bool log_to_stderr = false;
};

/// The child side of spawn and forkserver: makes this process the child `boot` describes,
/// with `arrived` the fds passed with its arguments (in order) and `parent_pidfd` a pidfd of
/// its parent (none: open one when needed; the parent is then this process's real parent), and
/// runs the target. Wipes the authkey in `boot`. Never returns.
[[noreturn]] void run_child(SpawnBootstrap& boot, std::vector<UniqueFd> arrived,
                            UniqueFd parent_pidfd);

/// The program spawn and the forkserver run (set_executable; default /proc/self/exe).
std::string spawn_executable();

/// @throws ValueError "cannot find context for 'x'" unless `method` is a start method.
void check_start_method(const std::string& method);

/// fork() where the child runs system calls only (no atfork handlers), so that a threaded
/// process may call it; the sanitizers' runtimes must see a real fork.
inline pid_t fork_now() noexcept {
#if defined(TROUPE_TSAN) || defined(TROUPE_ASAN)
  return ::fork();
#else
  return ::_Fork();
#endif
}

}  // namespace troupe::multiprocessing::detail

namespace troupe::multiprocessing::forkserver_detail {

/// The flag that makes freeze_support() run the forkserver.
inline constexpr const char* kFlag = "--troupe-forkserver";

/// A child the forkserver forked for this process.
struct ServedChild {
  int pid = -1;
  UniqueFd pidfd;       // the server opened it while the child could not have been reaped
  UniqueFd connection;  // the server writes the child's wait status here when it ends
};

/// Asks the forkserver (started if need be) to fork a child that runs `boot`, with `passed`
/// (fds that travel with the arguments). @throws OSError, AuthenticationError, TimeoutError.
ServedChild start_child(const detail::SpawnBootstrap& boot, std::span<const UniqueFd> passed);

/// The forkserver's main: serves until the process tree that started it has ended.
[[noreturn]] void serve(int bootstrap_fd);

}  // namespace troupe::multiprocessing::forkserver_detail
