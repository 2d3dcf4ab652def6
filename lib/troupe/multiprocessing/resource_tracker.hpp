// troupe/multiprocessing/resource_tracker.hpp — multiprocessing.resource_tracker: a process
// that unlinks the shared memory segments a process tree created with track=true and did not
// unlink, once every process of the tree has ended, however it ended (kill -9 included).
//
// One tracker serves a process tree, as in Python: children of every start method share their
// parent's (fork: they inherit the connection; spawn and forkserver: the connection travels with
// the child's bootstrap, and starting such a child starts the tracker if need be, as Python's
// spawn does). A program exec'd otherwise starts its own on first use. The tracker is not a
// child of any troupe process (it is started through a double fork), ignores SIGINT and
// SIGTERM, and ends when the last connection to it closes: once every process of the tree has
// ended. It is started with only system calls between fork and its loop, so it is safe to
// start from a threaded process.
#pragma once

#include <string>

namespace troupe::multiprocessing::resource_tracker {

/// Python: `resource_tracker.ensure_running()`: starts this process's tracker if it has none
/// (it holds one fd, close-on-exec, from then on). @throws OSError.
void ensure_running();

/// Python: `resource_tracker.register(name, "shared_memory")` / `unregister`: `name` is the
/// POSIX name, with its leading '/'. @throws ValueError for a name the tracker cannot take
/// (no leading '/', another '/', longer than 255 bytes); OSError if the tracker is gone.
void register_resource(const std::string& name, const std::string& rtype = "shared_memory");
void unregister_resource(const std::string& name, const std::string& rtype = "shared_memory");

/// The pid of this process's tracker (0 if none was started), for tests and diagnostics.
int tracker_pid() noexcept;

namespace detail {

/// What a child started by spawn or the forkserver needs to share its parent's tracker.
struct ForChild {
  int fd = -1;  ///< the number multiprocessing::detail::pass_fd gave the tracker's fd
  int pid = 0;  ///< the tracker's pid
};

/// Parent, while a spawn's or forkserver's bootstrap is built (multiprocessing::detail::
/// passed_fds() set): starts this process's tracker if it has none and passes its fd with the
/// child's. @throws OSError if the tracker cannot be started.
ForChild pass_to_child();

/// Child started by spawn or the forkserver, before its target runs: `fd` (the passed fd,
/// taken) is its parent's tracker, `pid` that tracker's pid; this process uses it from now on
/// (and closes any tracker connection it had).
void inherit(int fd, int pid) noexcept;

}  // namespace detail

}  // namespace troupe::multiprocessing::resource_tracker
