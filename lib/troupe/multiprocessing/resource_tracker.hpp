// troupe/multiprocessing/resource_tracker.hpp — multiprocessing.resource_tracker: a process
// that unlinks the shared memory segments a process tree created with track=true and did not
// unlink, once every process of the tree has ended, however it ended (kill -9 included).
//
// One tracker serves a process and the children it forks (they inherit the connection, as in
// Python); a child made by spawn, or an exec'd program, starts its own on first use. The
// tracker is not a child of any troupe process (it is started through a double fork), ignores
// SIGINT and SIGTERM, and ends when the last connection to it closes. It is started with only
// system calls between fork and its loop, so it is safe to start from a threaded process.
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

}  // namespace troupe::multiprocessing::resource_tracker
