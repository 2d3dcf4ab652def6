// subprocess: Popen, run and the older API — the behaviours CPython's test_subprocess checks on
// POSIX (return codes and signals, exec errors, pipes and communicate with large data both ways,
// timeouts on wait/communicate/run/call/check_output, env, cwd, close_fds and pass_fds, sessions
// and process groups, umask, restore_signals, text mode, run's argument rules), plus troupe's:
// many threads spawning at once, no fd of one child in another, the destructor's close-then-wait,
// pipelines, and the Asio twins. LeakCheck fails any test that leaves fds or children behind.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/subprocess.hpp"

#include "leak_check.hpp"

namespace troupe::subprocess {
namespace {

using namespace std::chrono_literals;
using SubprocessTest = troupe::testing::LeakCheck;

std::string out_of(const CompletedProcess& r) {
  return r.stdout_.value_or("<none>");
}

// ---- return codes, signals, exec errors -----------------------------------------------------

TEST_F(SubprocessTest, CallReturnsTheExitStatus) {
  EXPECT_EQ(call({"true"}), 0);
  EXPECT_EQ(call({"false"}), 1);
  EXPECT_EQ(call({"sh", "-c", "exit 47"}), 47);
  EXPECT_EQ(check_call({"true"}), 0);
  try {
    check_call({"sh", "-c", "exit 3"});
    ADD_FAILURE() << "no CalledProcessError";
  } catch (const CalledProcessError& e) {
    EXPECT_EQ(e.returncode, 3);
    EXPECT_STREQ(e.what(), "Command '['sh', '-c', 'exit 3']' returned non-zero exit status 3.");
  }
}

TEST_F(SubprocessTest, SignalsGiveNegativeReturnCodes) {
  Popen p({"sleep", "30"});
  EXPECT_FALSE(p.poll());
  EXPECT_FALSE(p.returncode());
  p.kill();
  EXPECT_EQ(p.wait(), -SIGKILL);
  EXPECT_EQ(p.returncode(), -SIGKILL);
  p.kill();  // reaped: no error (Python)
  p.terminate();
  Popen q({"sleep", "30"});
  q.terminate();
  EXPECT_EQ(q.wait(), -SIGTERM);
  Popen r({"sleep", "30"});
  r.send_signal(SIGINT);
  EXPECT_EQ(r.wait(), -SIGINT);
  try {
    run({"sh", "-c", "kill -9 $$"}, {.check = true});
    ADD_FAILURE() << "no CalledProcessError";
  } catch (const CalledProcessError& e) {
    EXPECT_EQ(e.returncode, -9);
    EXPECT_NE(std::string(e.what()).find("died with <Signals.SIGKILL: 9>."), std::string::npos)
        << e.what();
  }
}

TEST_F(SubprocessTest, ExecErrorsRaiseInTheParentNamingTheProgram) {
  try {
    Popen p({"/nonexistent/troupe-no-such-program"});
    ADD_FAILURE() << "started";
  } catch (const FileNotFoundError& e) {
    EXPECT_NE(std::string(e.what()).find("'/nonexistent/troupe-no-such-program'"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.errno_value(), ENOENT);
  }
  EXPECT_THROW(Popen({"troupe-no-such-program-on-path"}), FileNotFoundError);
  // A file without execute permission, and a directory: EACCES.
  char path[] = "/tmp/troupe-noexec-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  EXPECT_THROW(Popen({path}), PermissionError);
  ::unlink(path);
  EXPECT_THROW(Popen({"/tmp"}), PermissionError);
  try {
    Popen p({"true"}, {.cwd = "/nonexistent-dir"});
    ADD_FAILURE() << "started";
  } catch (const FileNotFoundError& e) {
    EXPECT_NE(std::string(e.what()).find("'/nonexistent-dir'"), std::string::npos) << e.what();
  }
  // A failed start leaves no pipe behind (LeakCheck) even with every redirection made.
  EXPECT_THROW(Popen({"/nonexistent/x"}, {.stdin_ = PIPE, .stdout_ = PIPE, .stderr_ = PIPE}),
               FileNotFoundError);
  EXPECT_THROW(Popen(std::vector<std::string>{}), ValueError);
  EXPECT_THROW(Popen({std::string("a\0b", 3)}), ValueError);
  EXPECT_THROW(Popen({"true"}, {.pass_fds = {1}}), ValueError);
  EXPECT_THROW(Popen({"true"}, {.check = true}), TypeError);  // run()'s, not Popen's
}

TEST_F(SubprocessTest, ExecutableAndArgZero) {
  auto r = run({"any-name", "-c", "echo $0"}, {.executable = "/bin/sh", .capture_output = true});
  EXPECT_EQ(out_of(r), "any-name\n");
}

// ---- pipes and communicate ------------------------------------------------------------------

TEST_F(SubprocessTest, PipesAreStreams) {
  Popen p({"cat"}, {.stdin_ = PIPE, .stdout_ = PIPE});
  ASSERT_TRUE(p.stdin_ && p.stdout_);
  EXPECT_FALSE(p.stderr_);
  p.stdin_->write("one\ntwo\n");
  p.stdin_->write("three");
  p.stdin_->close();
  EXPECT_EQ(p.stdout_->readline(), "one\n");
  std::vector<std::string> rest;
  for (const std::string& line : *p.stdout_) rest.push_back(line);
  EXPECT_EQ(rest, (std::vector<std::string>{"two\n", "three"}));
  EXPECT_EQ(p.stdout_->read(), "");
  EXPECT_EQ(p.wait(), 0);
  EXPECT_THROW(p.stdin_->fileno(), ValueError);  // closed
}

TEST_F(SubprocessTest, CommunicateLargeDataBothWaysAtOnce) {
  // 3 MiB in and echoed out while 3 MB go to stderr: far more than the pipes hold.
  std::string input(3 << 20, 'x');
  for (std::size_t i = 0; i < input.size(); i += 4096) input[i] = static_cast<char>('a' + i % 26);
  Popen p({"sh", "-c", "cat; head -c 3000000 /dev/zero >&2"},
          {.stdin_ = PIPE, .stdout_ = PIPE, .stderr_ = PIPE});
  auto [out, err] = p.communicate(input);
  ASSERT_TRUE(out && err);
  EXPECT_TRUE(*out == input);
  EXPECT_EQ(err->size(), 3000000u);
  EXPECT_EQ(p.returncode(), 0);
  // stdout and stderr both large, no input at all.
  auto r = run({"sh", "-c", "head -c 2000000 /dev/zero; head -c 2000000 /dev/zero >&2"},
               {.capture_output = true});
  EXPECT_EQ(r.stdout_->size(), 2000000u);
  EXPECT_EQ(r.stderr_->size(), 2000000u);
}

TEST_F(SubprocessTest, CommunicateWithAChildThatStopsReading) {
  // The child reads nothing: the input meets a closed pipe, which is not an error (Python).
  Popen p({"true"}, {.stdin_ = PIPE});
  auto [out, err] = p.communicate(std::string(1 << 20, 'x'));
  EXPECT_FALSE(out);
  EXPECT_FALSE(err);
  EXPECT_EQ(p.returncode(), 0);
}

TEST_F(SubprocessTest, CommunicateAfterATimeoutReturnsEverything) {
  Popen p({"sh", "-c", "echo pineapple >&2; sleep 1; echo pear >&2; cat"},
          {.stdin_ = PIPE, .stdout_ = PIPE, .stderr_ = PIPE});
  std::string partial;
  try {
    p.communicate("banana", 300ms);
    ADD_FAILURE() << "no TimeoutExpired";
  } catch (const TimeoutExpired& e) {
    partial = e.stderr_;
    EXPECT_NE(std::string(e.what()).find("timed out after 0.3 seconds"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(p.communicate("more"), ValueError);  // input after communication started
  auto [out, err] = p.communicate();
  EXPECT_EQ(*out, "banana");
  EXPECT_EQ(*err, "pineapple\npear\n");
  EXPECT_EQ(err->rfind(partial, 0), 0u) << "the output before the timeout is kept";
}

TEST_F(SubprocessTest, StderrToStdoutAndDevnull) {
  auto r = run({"sh", "-c", "echo out; echo err >&2"}, {.stdout_ = PIPE, .stderr_ = STDOUT});
  EXPECT_EQ(out_of(r), "out\nerr\n");
  EXPECT_FALSE(r.stderr_);
  auto q = run({"sh", "-c", "echo out; echo err >&2"}, {.stdout_ = DEVNULL, .stderr_ = PIPE});
  EXPECT_EQ(*q.stderr_, "err\n");
  EXPECT_EQ(run({"cat"}, {.stdin_ = DEVNULL, .capture_output = true}).stdout_, "");
}

TEST_F(SubprocessTest, TextModeHasUniversalNewlines) {
  Popen p({"printf", "a\\r\\nb\\rc\\n"}, {.stdout_ = PIPE, .text = true});
  EXPECT_EQ(p.stdout_->read(), "a\nb\nc\n");
  p.wait();
  auto r = run({"printf", "x\\r\\ny\\r"}, {.text = true, .capture_output = true});
  EXPECT_EQ(out_of(r), "x\ny\n");
  auto raw = run({"printf", "x\\r\\n"}, {.capture_output = true});
  EXPECT_EQ(out_of(raw), "x\r\n");
}

TEST_F(SubprocessTest, DestructorClosesThePipesThenWaits) {
  {
    Popen p({"cat"}, {.stdin_ = PIPE, .stdout_ = PIPE});
    p.stdin_->write("x");
  }  // cat sees end of file on stdin and ends; the destructor reaps it (LeakCheck)
  std::optional<Popen> moved;
  {
    Popen p({"true"});
    moved.emplace(std::move(p));
  }
  EXPECT_EQ(moved->wait(), 0);
}

// ---- timeouts -------------------------------------------------------------------------------

TEST_F(SubprocessTest, Timeouts) {
  Popen p({"sleep", "30"});
  try {
    p.wait(100ms);
    ADD_FAILURE() << "no TimeoutExpired";
  } catch (const TimeoutExpired& e) {
    EXPECT_STREQ(e.what(), "Command '['sleep', '30']' timed out after 0.1 seconds");
    EXPECT_EQ(e.timeout.count(), 0.1);
  }
  EXPECT_FALSE(p.poll());  // still running
  p.kill();
  p.wait();
  // run: the child is killed, the output so far travels with the exception.
  try {
    run({"sh", "-c", "echo started; exec sleep 30"}, {.capture_output = true, .timeout = 500ms});
    ADD_FAILURE() << "no TimeoutExpired";
  } catch (const TimeoutExpired& e) {
    EXPECT_EQ(e.output.rfind("started", 0) == 0 || e.output.empty(), true) << e.output;
  }
  EXPECT_THROW(call({"sleep", "30"}, {.timeout = 100ms}), TimeoutExpired);
  EXPECT_THROW(check_output({"sleep", "30"}, {.timeout = 100ms}), TimeoutExpired);
  // `exec`: the kill reaches the shell only (as in Python), and a `sleep` the shell forked
  // would live on for 30 s holding this test's stdout (a test runner waits for it).
  try {
    run("exec sleep 30", {.shell = true, .timeout = 100ms});
    ADD_FAILURE() << "no TimeoutExpired";
  } catch (const TimeoutExpired& e) {
    EXPECT_STREQ(e.what(), "Command 'exec sleep 30' timed out after 0.1 seconds");
  }
}

// ---- run and the older API ------------------------------------------------------------------

TEST_F(SubprocessTest, RunAsPython) {
  auto r = run({"sh", "-c", "cat; echo e >&2; exit 2"}, {.input = "in", .capture_output = true});
  EXPECT_EQ(r.args, (std::vector<std::string>{"sh", "-c", "cat; echo e >&2; exit 2"}));
  EXPECT_EQ(r.returncode, 2);
  EXPECT_EQ(*r.stdout_, "in");
  EXPECT_EQ(*r.stderr_, "e\n");
  try {
    r.check_returncode();
    ADD_FAILURE() << "no CalledProcessError";
  } catch (const CalledProcessError& e) {
    EXPECT_EQ(e.output, "in");
    EXPECT_EQ(e.stderr_, "e\n");
  }
  EXPECT_FALSE(run({"true"}).stdout_);
  try {
    run({"true"}, {.stdout_ = PIPE, .capture_output = true});
    ADD_FAILURE() << "no ValueError";
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "stdout and stderr arguments may not be used with capture_output.");
  }
  try {
    run({"cat"}, {.stdin_ = DEVNULL, .input = "x"});
    ADD_FAILURE() << "no ValueError";
  } catch (const ValueError& e) {
    EXPECT_STREQ(e.what(), "stdin and input arguments may not both be used.");
  }
  EXPECT_THROW(run({"false"}, {.check = true}), CalledProcessError);
}

TEST_F(SubprocessTest, CheckOutputAndGetOutput) {
  EXPECT_EQ(check_output({"echo", "hi"}), "hi\n");
  EXPECT_EQ(check_output({"cat"}, {.input = "fed"}), "fed");
  EXPECT_THROW(check_output({"true"}, {.stdout_ = DEVNULL}), ValueError);
  try {
    check_output({"sh", "-c", "echo partial; exit 5"});
    ADD_FAILURE() << "no CalledProcessError";
  } catch (const CalledProcessError& e) {
    EXPECT_EQ(e.returncode, 5);
    EXPECT_EQ(e.output, "partial\n");
  }
  EXPECT_EQ(getstatusoutput("echo hi; echo err >&2; exit 3"),
            (std::pair<int, std::string>{3, "hi\nerr"}));
  EXPECT_EQ(getoutput("printf 'a\\nb\\n'"), "a\nb");
  try {
    check_call("exit 4", {.shell = true});
    ADD_FAILURE() << "no CalledProcessError";
  } catch (const CalledProcessError& e) {
    EXPECT_STREQ(e.what(), "Command 'exit 4' returned non-zero exit status 4.");
  }
}

// ---- the child's environment ----------------------------------------------------------------

TEST_F(SubprocessTest, EnvAndCwd) {
  EXPECT_EQ(out_of(run({"/usr/bin/env"},
                       {.env = {{{"A", "1"}, {"B", "two words"}}}, .capture_output = true})),
            "A=1\nB=two words\n");
  // PATH for the lookup is the child's environment's, as os.get_exec_path(env).
  EXPECT_THROW(run({"true"}, {.env = {{{"PATH", "/nonexistent"}}}}), FileNotFoundError);
  EXPECT_EQ(out_of(run({"true"}, {.env = {{{"PATH", "/usr/bin:/bin"}}}, .capture_output = true})),
            "");
  EXPECT_THROW(run({"true"}, {.env = {{{"A=B", "1"}}}}), ValueError);
  EXPECT_EQ(out_of(run({"pwd"}, {.cwd = "/tmp", .capture_output = true})), "/tmp\n");
  EXPECT_EQ(out_of(run({"sh", "-c", "umask"}, {.umask = 027, .capture_output = true})), "0027\n");
}

// The fds a child sees, from /proc/self/fd of `ls` itself (its own directory fd included).
std::vector<int> child_fds(PopenOptions o) {
  o.stdout_ = PIPE;
  std::vector<int> fds;
  Popen p({"ls", "/proc/self/fd"}, std::move(o));
  for (const auto& line : *p.stdout_) fds.push_back(std::stoi(line));
  p.wait();
  return fds;
}

bool has(const std::vector<int>& v, int x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

TEST_F(SubprocessTest, CloseFdsAndPassFds) {
  // Both well above what `ls` opens for itself. No O_CLOEXEC: inheritable.
  const int low = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(low, 0);
  const int inheritable = ::fcntl(low, F_DUPFD, 60);
  const int high = ::fcntl(low, F_DUPFD, 50);
  ::close(low);
  EXPECT_FALSE(has(child_fds({}), inheritable));
  EXPECT_FALSE(has(child_fds({}), high));
  EXPECT_TRUE(has(child_fds({.close_fds = false}), high));
  const auto passed = child_fds({.pass_fds = {high}});
  EXPECT_TRUE(has(passed, high));
  EXPECT_FALSE(has(passed, inheritable));
  // A close-on-exec fd passed explicitly arrives too (made inheritable in the child only).
  const int cloexec = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_TRUE(has(child_fds({.pass_fds = {cloexec}}), cloexec));
  EXPECT_EQ(::fcntl(cloexec, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  ::close(cloexec);
  ::close(high);
  ::close(inheritable);
}

TEST_F(SubprocessTest, NoFdOfOneChildLeaksIntoAnother) {
  Popen a({"cat"}, {.stdin_ = PIPE, .stdout_ = PIPE, .stderr_ = PIPE});
  const auto fds = child_fds({.close_fds = false});
  for (int fd : {a.stdin_->fileno(), a.stdout_->fileno(), a.stderr_->fileno()})
    EXPECT_FALSE(has(fds, fd)) << fd;
  a.stdin_->close();
  a.wait();
}

TEST_F(SubprocessTest, SessionsAndProcessGroups) {
  auto ids = [](PopenOptions o) {
    o.stdout_ = PIPE;
    // Fields 6 and 5 of /proc/self/stat: session and process group (comm has no spaces).
    Popen p({"sh", "-c", "read -r a b c d pgrp sid rest < /proc/self/stat; echo $$ $pgrp $sid"},
            std::move(o));
    std::string line = p.stdout_->readline();
    p.wait();
    return line;
  };
  const std::string pid_pgrp_sid = ids({.start_new_session = true});
  int pid, pgrp, sid;
  ASSERT_EQ(std::sscanf(pid_pgrp_sid.c_str(), "%d %d %d", &pid, &pgrp, &sid), 3);
  EXPECT_EQ(sid, pid);
  EXPECT_EQ(pgrp, pid);
  const std::string grouped = ids({.process_group = 0});
  ASSERT_EQ(std::sscanf(grouped.c_str(), "%d %d %d", &pid, &pgrp, &sid), 3);
  EXPECT_EQ(pgrp, pid);
  EXPECT_EQ(sid, ::getsid(0));
  const std::string plain = ids({});
  ASSERT_EQ(std::sscanf(plain.c_str(), "%d %d %d", &pid, &pgrp, &sid), 3);
  EXPECT_EQ(pgrp, ::getpgrp());
}

TEST_F(SubprocessTest, RestoreSignals) {
  // SigIgn of the child (grep reads its own status): SIGPIPE is bit 13.
  auto sigpipe_ignored = [](bool restore) {
    auto r = run({"grep", "SigIgn", "/proc/self/status"},
                 {.restore_signals = restore, .capture_output = true});
    const unsigned long long mask =
        std::stoull(out_of(r).substr(out_of(r).find(':') + 1), nullptr, 16);
    return (mask >> (SIGPIPE - 1)) & 1;
  };
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old);
  const bool restored = sigpipe_ignored(true);
  const bool kept = sigpipe_ignored(false);
  ::sigaction(SIGPIPE, &old, nullptr);
  EXPECT_FALSE(restored);
  EXPECT_TRUE(kept);
}

TEST_F(SubprocessTest, UserAndGroup) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  EXPECT_EQ(out_of(run({"id", "-u"}, {.user = 65534u, .capture_output = true})), "65534\n");
  EXPECT_EQ(out_of(run({"id", "-u"}, {.user = std::string("nobody"), .capture_output = true})),
            "65534\n");
  EXPECT_EQ(out_of(run({"id", "-g"}, {.group = 65534u, .capture_output = true})), "65534\n");
  EXPECT_EQ(out_of(run(
                {"id", "-G"},
                {.group = 65534u, .extra_groups = std::vector<GroupId>{}, .capture_output = true})),
            "65534\n");
  EXPECT_THROW(run({"true"}, {.user = std::string("no-such-user-troupe")}), KeyError);
}

TEST_F(SubprocessTest, PreexecFnRunsInTheChild) {
  auto r = run({"echo", "after"},
               {.stdout_ = PIPE, .preexec_fn_unsafe = [] { (void)!::write(1, "before ", 7); }});
  EXPECT_EQ(out_of(r), "before after\n");
  try {
    run({"true"}, {.preexec_fn_unsafe = [] { throw std::runtime_error("no"); }});
    ADD_FAILURE() << "started";
  } catch (const SubprocessError& e) {
    EXPECT_STREQ(e.what(), "Exception occurred in preexec_fn.");
  }
}

TEST_F(SubprocessTest, ResourceLimitsAndParentDeathSignal) {
  auto r = run({"sh", "-c", "ulimit -n; ulimit -c"},
               {.rlimits = {{RLIMIT_NOFILE, 64, 64}, {RLIMIT_CORE, 0, 0}}, .capture_output = true});
  EXPECT_EQ(out_of(r), "64\n0\n");
  EXPECT_THROW(run({"true"}, {.rlimits = {{RLIMIT_NOFILE, 2, 1}}}), ValueError);  // soft > hard
  // The child of a thread that ends gets its pdeathsig.
  std::optional<Popen> p;
  std::thread([&] { p.emplace(Args{"sleep", "30"}, PopenOptions{.pdeathsig = SIGKILL}); }).join();
  EXPECT_EQ(p->wait(20s), -SIGKILL);
}

// ---- threads, pipelines, Asio ---------------------------------------------------------------

TEST_F(SubprocessTest, ManyThreadsSpawnAtOnce) {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 15; ++i) {
        auto r =
            run({"sh", "-c", "echo $0", std::to_string(t * 100 + i)}, {.capture_output = true});
        if (r.returncode == 0 && *r.stdout_ == std::to_string(t * 100 + i) + "\n") ++ok;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 8 * 15);
}

TEST_F(SubprocessTest, Pipelines) {
  auto procs =
      pipeline({{"printf", "b\\na\\nc\\n"}, {"sort"}, {"head", "-n", "2"}}, {.stdout_ = PIPE});
  ASSERT_EQ(procs.size(), 3u);
  EXPECT_EQ(procs.back().stdout_->read(), "a\nb\n");
  for (auto& p : procs) EXPECT_EQ(p.wait(), 0);
  // yes | head -n 1: head ends, and yes gets SIGPIPE (this process holds no copy of the pipe).
  auto yes = pipeline({{"yes"}, {"head", "-n", "1"}}, {.stdout_ = PIPE});
  EXPECT_EQ(yes[1].stdout_->read(), "y\n");
  EXPECT_EQ(yes[1].wait(), 0);
  EXPECT_EQ(yes[0].wait(), -SIGPIPE);
  // By hand, as the Python docs: p2's stdin is p1's stdout.
  Popen p1({"echo", "hand made"}, {.stdout_ = PIPE});
  Popen p2({"tr", "a-z", "A-Z"}, {.stdin_ = *p1.stdout_, .stdout_ = PIPE});
  p1.stdout_->close();
  EXPECT_EQ(*p2.communicate().stdout_, "HAND MADE\n");
  p1.wait();
}

TEST_F(SubprocessTest, AsioWaitAndCommunicate) {
  boost::asio::io_context io;
  Popen sleeper({"sh", "-c", "sleep 0.2; exit 7"});
  Popen cat({"cat"}, {.stdin_ = PIPE, .stdout_ = PIPE, .stderr_ = PIPE});
  Popen talker({"sh", "-c", "echo line1; echo line2"}, {.stdout_ = PIPE});
  for (Popen* p : {&sleeper, &cat, &talker}) p->set_executor(io.get_executor());
  std::optional<int> code;
  std::optional<Output> output;
  std::string streamed;
  sleeper.async_wait([&](boost::system::error_code ec, int rc) {
    EXPECT_FALSE(ec) << ec.message();
    code = rc;
  });
  const std::string big(1 << 20, 'z');
  cat.async_communicate(big, [&](boost::system::error_code ec, Output out) {
    EXPECT_FALSE(ec) << ec.message();
    output = std::move(out);
  });
  std::function<void(boost::system::error_code, std::string)> on_read =
      [&](boost::system::error_code ec, std::string chunk) {
        EXPECT_FALSE(ec);
        if (chunk.empty()) return;
        streamed += chunk;
        talker.stdout_->async_read_some(4096, on_read);
      };
  talker.stdout_->async_read_some(4096, on_read);
  io.run();  // one thread, three children, no thread per child
  EXPECT_EQ(code, 7);
  ASSERT_TRUE(output);
  ASSERT_TRUE(output->stdout_);
  EXPECT_EQ(output->stdout_->size(), big.size());
  EXPECT_TRUE(*output->stdout_ == big);
  EXPECT_EQ(output->stderr_, "");
  EXPECT_EQ(cat.returncode(), 0);
  EXPECT_EQ(streamed, "line1\nline2\n");
  EXPECT_EQ(talker.wait(), 0);
  // Blocking calls still work on a Stream an async operation used.
  Popen echo({"cat"}, {.stdin_ = PIPE, .stdout_ = PIPE});
  echo.set_executor(io.get_executor());
  bool written = false;
  echo.stdin_->async_write("async then blocking\n",
                           [&](boost::system::error_code ec, std::size_t n) {
                             EXPECT_FALSE(ec);
                             written = n == 20;
                           });
  io.restart();
  io.run();
  EXPECT_TRUE(written);
  echo.stdin_->write("more\n");
  echo.stdin_->close();
  EXPECT_EQ(echo.stdout_->read(), "async then blocking\nmore\n");
  echo.wait();
}

}  // namespace
}  // namespace troupe::subprocess
