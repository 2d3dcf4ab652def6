// troupe/multiprocessing/forkserver.hpp — multiprocessing.forkserver: a single-threaded server
// process that forks the children of the "forkserver" start method.
//
// The server is a fresh exec of this program (its freeze_support() serves), started through a
// double fork, so it has no threads whatever the process that starts it runs, and it is not
// that process's child. It listens on a Unix socket in a directory only its user can enter,
// checks each client's credentials (SO_PEERCRED) and authenticates it with the HMAC handshake
// and the authkey of the process that started it (Python 3.14); clients check the server's
// credentials first. Handshakes run side by side, each under one deadline. A request carries
// the child's name and, by SCM_RIGHTS, the read end of a pipe that brings the child its
// bootstrap message (written by the client, never sent to the server), the client's stdout and
// stderr, a pidfd of the client and the fds of Connection arguments; the reply is the child's
// pid and a pidfd; the child's wait status follows on the same connection when it ends.
//
// The server ends when every process of the tree that started it has ended (a pipe whose write
// end they hold reaches end of file); a client that finds it gone (its pidfd) starts another.
// Forked children use their parent's server, spawned ones start their own.
// doc/multiprocessing/process.md, doc/security.md.
#pragma once

#include <string>
#include <vector>

namespace troupe::multiprocessing {

/// Python: `multiprocessing.set_forkserver_preload(module_names)`: entry points (functions
/// registered with TROUPE_ENTRY that take no arguments) the forkserver runs once, before it
/// forks anything, so their work (caches, loaded data) is inherited by every child. Takes
/// effect when the server starts. An exception in one is reported on the server's stderr and
/// the others still run. @throws ValueError naming a function that is not registered.
void set_forkserver_preload(std::vector<std::string> entry_names);

namespace forkserver {

/// Python: `multiprocessing.forkserver.ensure_running()`: starts this process's forkserver if
/// it has none or it has ended. Safe from a threaded process. Call it at the top of main to
/// pay the start-up before the first Process.start(). @throws OSError.
void ensure_running();

/// The pid of the forkserver this process uses (0 if none), for tests and diagnostics.
int server_pid() noexcept;

/// Its address in Address::str() form ("unix:/tmp/troupe-fs-XXXXXX/s"; empty if none), as
/// Python's `forkserver._forkserver_address`.
std::string address();

}  // namespace forkserver

}  // namespace troupe::multiprocessing
