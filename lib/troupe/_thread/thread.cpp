#include "troupe/_thread/thread.hpp"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <string>

#include "troupe/errors.hpp"

namespace troupe::_thread {

void interrupt_main(int signum) {
  if (signum < 1 || signum >= NSIG) throw ValueError("signal number out of range");
  struct sigaction current {};
  if (::sigaction(signum, nullptr, &current) != 0)
    throw_os_error(errno, "interrupt_main: sigaction(" + std::to_string(signum) + ")");
  // Python does nothing for a signal set to SIG_IGN or SIG_DFL.
  if (!(current.sa_flags & SA_SIGINFO) &&
      (current.sa_handler == SIG_IGN || current.sa_handler == SIG_DFL))
    return;
  auto& main = threading::main_thread();
  // After a fork from a thread troupe did not register, the old main thread is gone and the
  // forking thread, now the thread group leader (tid = pid), is the main thread, as in Python.
  const pid_t pid = ::getpid();
  const auto tid = main.is_alive() ? static_cast<pid_t>(main.native_id().value_or(pid)) : pid;
  if (::syscall(SYS_tgkill, pid, tid, signum) != 0)
    throw_os_error(errno, "interrupt_main: tgkill(" + std::to_string(pid) + ", " +
                              std::to_string(tid) + ", " + std::to_string(signum) + ")");
}

void set_name(const std::string& name) {
  // Linux keeps 15 bytes; cut before a UTF-8 continuation byte so no character is split.
  std::size_t n = name.size() < 15 ? name.size() : 15;
  while (n < name.size() && n > 0 && (static_cast<unsigned char>(name[n]) & 0xC0) == 0x80) --n;
  const std::string cut = name.substr(0, n);
  if (int rc = ::pthread_setname_np(::pthread_self(), cut.c_str()); rc != 0)
    throw_os_error(rc, "set_name: pthread_setname_np(\"" + cut + "\")");
}

}  // namespace troupe::_thread
