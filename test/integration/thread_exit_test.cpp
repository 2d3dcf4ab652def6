// What happens to threads at program exit (doc/threading.md, "Threads at exit and destruction"),
// checked on a real process: test/integration/exit_helper.cpp.
#include <sys/wait.h>

#include <string>

#include "leak_check.hpp"
#include <stdio.h>

namespace {

struct Result {
  std::string out;
  int status = -1;
};

// Runs the helper with a 30 s limit (coreutils timeout), capturing stdout and stderr.
Result run(const std::string& mode) {
  Result r;
  std::string cmd = "timeout 30 " EXIT_HELPER " " + mode + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

using ThreadExitTest = troupe::testing::LeakCheck;

// Python joins non-daemon threads before the interpreter exits.
TEST_F(ThreadExitTest, NonDaemonThreadsAreJoinedAtExit) {
  Result r = run("non-daemon");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out, "main returns\nworker finished\n");
}

// Daemon threads do not keep the process alive.
TEST_F(ThreadExitTest, DaemonThreadsDoNotBlockExit) {
  Result r = run("daemon");
  EXPECT_EQ(r.status, 0) << r.out;  // 124 would be timeout's: a hang
  EXPECT_EQ(r.out, "main returns\n");
  Result l = run("daemon-local");
  EXPECT_EQ(l.status, 0) << l.out;
  EXPECT_EQ(l.out, "main returns\n");
}

// Python's order at exit (internal/runtime.hpp): ThreadPoolExecutors shut down before the
// non-daemon threads are joined, whichever was made first; a thread that submits then gets
// Python's RuntimeError. Before one exit handler ran the steps in order, the thread was joined
// first and kept its executor alive ("never refused").
TEST_F(ThreadExitTest, ExecutorsShutDownBeforeThreadsAreJoined) {
  Result r = run("executor-then-thread");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out,
            "main returns\nsubmit refused: cannot schedule new futures after interpreter "
            "shutdown\n");
}

// An exception escaping a thread is printed, and the process goes on (no std::terminate).
TEST_F(ThreadExitTest, UncaughtExceptionGoesToExcepthook) {
  Result r = run("exception");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("Exception in thread thrower:\nstd::runtime_error: oops\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("main continues\n"), std::string::npos) << r.out;
}

}  // namespace
