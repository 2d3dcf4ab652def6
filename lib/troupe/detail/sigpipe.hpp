// troupe/detail/sigpipe.hpp — a write to a pipe whose reader has gone, without SIGPIPE: the
// signal is blocked on this thread for the guard's life and, when the write raised it, consumed,
// so the caller sees EPIPE (Python's BrokenPipeError) instead of a dead process. One that was
// already pending before is left for its owner. Sockets use MSG_NOSIGNAL instead. Not API.
#pragma once

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

namespace troupe::detail {

class SigpipeBlock {
public:
  SigpipeBlock() noexcept {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  /// After a write that failed with `err`: consumes the SIGPIPE it raised (errno is kept).
  void consume(int err) noexcept {
    if (err != EPIPE || was_pending_) return;
    const int saved = errno;
    const timespec zero{0, 0};
    while (sigtimedwait(&pipe_, nullptr, &zero) < 0 && errno == EINTR) {
    }
    errno = saved;
  }
  ~SigpipeBlock() {
    const int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved;
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

private:
  sigset_t pipe_{}, old_{};
  bool was_pending_ = false;
};

}  // namespace troupe::detail
