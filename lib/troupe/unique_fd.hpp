// troupe/unique_fd.hpp — UniqueFd, the one owner of a file descriptor in troupe (sockets, pipe
// ends, memfds, eventfds, pidfds), and the two pidfd calls. Layer 1. KJ's AutoCloseFd (kj/io.h)
// is the model; unlike it, nothing here throws but the explicit close().
//
// close(2) on Linux, stated once for all of troupe:
// - The descriptor is released whatever close() returns, EINTR included (the kernel frees the
//   number before anything that can be interrupted or fail). Never retry a close: by then the
//   number may already be another thread's new socket, and the retry would close that.
// - An error close() reports (EIO, ENOSPC, EDQUOT: a write the kernel had deferred, on NFS
//   say) is about data, not about the descriptor, which is gone all the same. The destructor
//   and reset() ignore it (destructors never throw); a caller that must know calls close(),
//   which throws it as OSError.
// - EBADF means a bug (a number closed twice, or closed by a code that did not own it): with
//   every fd held in one UniqueFd, it cannot come from troupe.
#pragma once

#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

#include "troupe/errors.hpp"

namespace troupe {

/// Owns one file descriptor (or none: any negative number) and closes it when destroyed,
/// reset or assigned over. Move-only; a moved-from UniqueFd holds none.
///
///   UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
///   if (!fd) throw_os_error(errno, ...);
///   ::read(fd.get(), ...);             // borrowed: fd still owns it
///   Connection c(fd.release());        // handed on: fd no longer owns it
///
/// Thread-safety: as an int; one owner at a time.
class UniqueFd {
public:
  /// Holds none.
  constexpr UniqueFd() noexcept = default;
  /// Takes ownership of `fd` (a negative value: none, e.g. a failed open's -1).
  constexpr explicit UniqueFd(int fd) noexcept : fd_(fd < 0 ? -1 : fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  /// Closes the fd held, then takes `o`'s. Self-move keeps the fd.
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  /// Closes the fd held, as reset().
  ~UniqueFd() { reset(); }

  /// The fd (-1 if none), still owned: valid while this UniqueFd holds it.
  constexpr int get() const noexcept { return fd_; }
  /// Whether it holds an fd.
  constexpr explicit operator bool() const noexcept { return fd_ >= 0; }
  /// Gives up ownership: returns the fd (-1 if none), which the caller must now close.
  [[nodiscard]] constexpr int release() noexcept { return std::exchange(fd_, -1); }
  /// Closes the fd held (errors ignored; errno is left as it was, so a failed call's errno
  /// survives the cleanup) and takes `fd` (a negative value: none). Resetting to the fd already
  /// held keeps it open.
  void reset(int fd = -1) noexcept {
    const int old = std::exchange(fd_, fd < 0 ? -1 : fd);
    if (old >= 0 && old != fd_) {
      const int saved = errno;
      ::close(old);
      errno = saved;
    }
  }
  /// Closes the fd held, now, and reports close(2)'s error. The fd is closed (and this holds
  /// none) even when it throws. Nothing to do when it holds none.
  /// @throws OSError (the subclass Python raises for that errno) naming the fd.
  void close() {
    const int fd = release();
    if (fd >= 0 && ::close(fd) != 0) throw_os_error(errno, "close of fd " + std::to_string(fd));
  }

  friend void swap(UniqueFd& a, UniqueFd& b) noexcept { std::swap(a.fd_, b.fd_); }

private:
  int fd_ = -1;
};

/// pidfd_open(2): a pidfd of process `pid` (readable once it has ended; a signal sent through
/// it can never reach a process that reused the pid), close-on-exec. None, with errno set, on
/// failure (ESRCH: no such process). Only a pidfd of one's own unreaped child, or one opened
/// while the process is known to be alive, is sure to name that process.
inline UniqueFd pidfd_open(pid_t pid) noexcept {
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

/// pidfd_send_signal(2): signal `sig` to the process of `pidfd`. 0, or -1 with errno (ESRCH:
/// it has ended).
inline int pidfd_send_signal(int pidfd, int sig) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

}  // namespace troupe
