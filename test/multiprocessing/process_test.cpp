// multiprocessing.Process with the fork and spawn start methods: the behaviours CPython's
// _TestProcess checks (target and args, exit codes, signals, join with a timeout, is_alive,
// close rules, current/parent process, active_children, daemons), plus troupe's: the sentinel as
// a pidfd, fork refused while other threads run, daemons ended when their parent dies, spawn's
// registered entry points and the errors for what cannot cross an exec.
//
// This binary's main calls freeze_support first, as every program that uses spawn must.
#include "troupe/multiprocessing/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <latch>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/forkserver.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/logger.hpp"

#include "byte_text.hpp"
#include "leak_check.hpp"
#include "raw_peer.hpp"

namespace troupe::multiprocessing {
namespace {

using namespace std::chrono_literals;
using troupe::testing::connect_raw;
using troupe::testing::peer_closed;
using troupe::testing::text;
using ProcessTest = troupe::testing::LeakCheck;

TEST_F(ProcessTest, TargetAndArgumentsRunInTheChild) {
  auto [r, w] = Pipe(false);
  Process p(
      [&w = w](int a, const std::string& b) {
        w.send_bytes(std::to_string(a) + b + " from " + current_process().name() + " pid " +
                     std::to_string(::getpid()));
      },
      42, std::string("x"));
  EXPECT_FALSE(p.pid());
  EXPECT_FALSE(p.exitcode());
  EXPECT_FALSE(p.is_alive());
  p.start();
  ASSERT_TRUE(p.pid());
  EXPECT_EQ(p.ident(), p.pid());
  EXPECT_NE(*p.pid(), ::getpid());
  EXPECT_EQ(text(r.recv_bytes()), "42x from " + p.name() + " pid " + std::to_string(*p.pid()));
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.name().rfind("Process-", 0), 0u) << p.name();
}

TEST_F(ProcessTest, ExitCodes) {
  Process ok([] {});
  Process chosen([] { troupe::sys_exit(7); });
  Process thrown([] { throw ValueError("boom"); });
  // The exception is reported on the child's stderr: catch it through a pipe.
  auto [r, w] = Pipe(false);
  const int saved = ::dup(2);
  ::dup2(w.fileno(), 2);
  ok.start();
  chosen.start();
  thrown.start();
  ::dup2(saved, 2);
  ::close(saved);
  w.close();
  for (auto* p : {&ok, &chosen, &thrown}) p->join();
  EXPECT_EQ(ok.exitcode(), 0);
  EXPECT_EQ(chosen.exitcode(), 7);
  EXPECT_EQ(thrown.exitcode(), 1);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(r.fileno(), buf, sizeof buf)) > 0;) err.append(buf, n);
  EXPECT_NE(err.find("Process " + thrown.name() + ":\n"), std::string::npos) << err;
  EXPECT_NE(err.find("troupe::ValueError: boom"), std::string::npos) << err;
}

TEST_F(ProcessTest, SignalsGiveNegativeExitCodes) {
  auto sleeper = [] { ::pause(); };
  Process t(sleeper), k(sleeper), i(sleeper);
  for (auto* p : {&t, &k, &i}) p->start();
  t.terminate();
  k.kill();
  i.interrupt();
  for (auto* p : {&t, &k, &i}) p->join();
  EXPECT_EQ(t.exitcode(), -SIGTERM);
  EXPECT_EQ(k.exitcode(), -SIGKILL);
  EXPECT_EQ(i.exitcode(), -SIGINT);
  EXPECT_NO_THROW(t.terminate());  // ended: no error, as Python
  EXPECT_NO_THROW(k.kill());
}

TEST_F(ProcessTest, JoinWithATimeoutAndIsAlive) {
  Process p([] { ::pause(); });
  p.start();
  EXPECT_TRUE(p.is_alive());
  const auto t0 = std::chrono::steady_clock::now();
  p.join(100ms);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 90ms);
  EXPECT_FALSE(p.exitcode());  // still running
  EXPECT_TRUE(p.is_alive());
  p.join(-1s);  // a negative timeout polls once
  EXPECT_TRUE(p.is_alive());
  p.kill();
  p.join();
  EXPECT_FALSE(p.is_alive());
}

TEST_F(ProcessTest, SentinelIsAPidfdForWait) {
  Process fast([] {}), slow([] { ::pause(); });
  fast.start();
  slow.start();
  auto ready = connection::wait({fast.sentinel(), slow.sentinel()}, 10s);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0].fileno(), fast.sentinel());
  slow.terminate();
  slow.join();
  fast.join();
}

TEST_F(ProcessTest, LifecycleErrorsAsPython) {
  Process p([] { ::pause(); });
  EXPECT_THROW(p.join(), ProcessError);       // can only join a started process
  EXPECT_THROW(p.sentinel(), ValueError);     // process not started
  EXPECT_THROW(p.terminate(), ProcessError);  // not started
  p.start();
  EXPECT_THROW(p.start(), ProcessError);  // cannot start a process twice
  EXPECT_THROW(p.set_daemon(true), ProcessError);
  EXPECT_THROW(p.close(), ValueError);  // still running
  p.kill();
  p.join();
  p.close();
  p.close();  // twice is fine
  EXPECT_THROW(p.exitcode(), ValueError);
  EXPECT_THROW(p.is_alive(), ValueError);
  EXPECT_THROW(p.sentinel(), ValueError);
  EXPECT_NE(p.repr().find("closed"), std::string::npos) << p.repr();
  EXPECT_THROW(current_process().join(), ProcessError);  // can only join a child process
}

class Worker : public Process {
public:
  explicit Worker(Connection& out) : Process({.name = "worker"}), out_(out) {}
  void run() override { out_.send_bytes("ran as " + current_process().name()); }

private:
  Connection& out_;
};

TEST_F(ProcessTest, SubclassOverridesRun) {
  auto [r, w] = Pipe(false);
  Worker p(w);
  p.start();
  EXPECT_EQ(text(r.recv_bytes()), "ran as worker");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_F(ProcessTest, CurrentAndParentProcess) {
  EXPECT_EQ(current_process().name(), "MainProcess");
  EXPECT_EQ(current_process().pid(), ::getpid());
  EXPECT_TRUE(current_process().is_alive());
  EXPECT_FALSE(parent_process());
  EXPECT_EQ(current_process().authkey().size(), 32u);
  auto [r, w] = Pipe(false);
  Process p([&w = w] {
    auto parent = parent_process();
    const bool key_inherited =
        current_process().authkey().bytes().size() == 32;  // compared in the parent below
    w.send_bytes(std::to_string(parent ? *parent->pid() : -1) + " " +
                 (parent && parent->is_alive() ? "alive" : "dead") + " " + parent->name() + " " +
                 (key_inherited ? "key" : "nokey"));
    const auto key = current_process().authkey();
    w.send_bytes(key.bytes());
  });
  p.start();
  EXPECT_EQ(text(r.recv_bytes()), std::to_string(::getpid()) + " alive MainProcess key");
  const auto key = r.recv_bytes();
  const auto mine = current_process().authkey();
  EXPECT_TRUE(std::equal(key.begin(), key.end(), mine.bytes().begin(), mine.bytes().end()));
  p.join();
}

TEST_F(ProcessTest, ParentProcessSeesItsParentDie) {
  auto [r, w] = Pipe(false);
  Process child([&w = w] {
    auto [ready_r, ready_w] = Pipe(false);
    Process grandchild([&w, &ready_w = ready_w] {
      auto parent = parent_process();
      const int fd = parent->sentinel();  // opened while the parent lives
      ready_w.send_bytes("ready");
      parent->join(20s);
      pollfd p{fd, POLLIN, 0};
      w.send_bytes(std::string(parent->is_alive() ? "alive" : "dead") +
                   (::poll(&p, 1, 0) == 1 ? " readable" : " quiet"));
    });
    grandchild.start();
    ready_r.recv_bytes();
    ::raise(SIGKILL);  // no exit handler: the grandchild outlives its parent
  });
  child.start();
  child.join();
  EXPECT_EQ(child.exitcode(), -SIGKILL);
  EXPECT_EQ(text(r.recv_bytes()), "dead readable");
}

TEST_F(ProcessTest, ActiveChildrenReapsTheEnded) {
  Process a([] {}), b([] { ::pause(); });
  a.start();
  b.start();
  a.join();
  auto kids = active_children();
  ASSERT_EQ(kids.size(), 1u);
  EXPECT_EQ(kids[0].pid(), b.pid());
  kids[0].terminate();  // a handle acts on the same process
  b.join();
  EXPECT_EQ(b.exitcode(), -SIGTERM);
  EXPECT_TRUE(active_children().empty());
}

TEST_F(ProcessTest, ChildrenOfChildrenAndTheChildsExitHandler) {
  // A child starts a daemon grandchild that never ends and a non-daemon one that reports after
  // a while; when the child's target returns, the daemon is terminated and the other joined
  // (Python's exit function), so the child's exit follows the report.
  auto [r, w] = Pipe(false);
  Process child([&w = w] {
    Process daemon({.daemon = true}, [] { ::pause(); });
    Process slow([&w] {
      std::this_thread::sleep_for(100ms);
      w.send_bytes("slow done as " + current_process().name());
    });
    daemon.start();
    slow.start();
    w.send_bytes(std::to_string(*daemon.pid()));
  });
  child.start();
  const int daemon_pid = std::stoi(text(r.recv_bytes()));
  EXPECT_EQ(text(r.recv_bytes()), "slow done as " + child.name() + ":2");
  child.join();
  EXPECT_EQ(child.exitcode(), 0);
  EXPECT_TRUE(troupe::testing::eventually([&] { return ::kill(daemon_pid, 0) != 0; }));
}

TEST_F(ProcessTest, DaemonsMayNotHaveChildren) {
  Process d({.daemon = true}, [] {
    Process grandchild([] {});
    try {
      grandchild.start();
    } catch (const ProcessError& e) {
      troupe::sys_exit(
          std::string(e.what()) == "daemonic processes are not allowed to have children" ? 3 : 4);
    }
    grandchild.join();
  });
  EXPECT_TRUE(d.daemon());
  d.start();
  d.join();
  EXPECT_EQ(d.exitcode(), 3);
}

TEST_F(ProcessTest, DaemonEndsWhenItsParentIsKilled) {
  auto [r, w] = Pipe(false);
  Process child([&w = w] {
    Process daemon({.daemon = true}, [] { ::pause(); });
    daemon.start();
    w.send_bytes(std::to_string(*daemon.pid()));
    ::pause();
  });
  child.start();
  const int daemon_pid = std::stoi(text(r.recv_bytes()));
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, daemon_pid, 0));
  ASSERT_GE(fd, 0);
  child.kill();  // no exit handler runs: PR_SET_PDEATHSIG ends the daemon
  child.join();
  pollfd p{fd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 10000), 1) << "the daemon outlived its killed parent";
  ::close(fd);
}

TEST_F(ProcessTest, ForkIsRefusedWhileOtherThreadsRun) {
  std::latch go(1);
  std::thread t([&] { go.wait(); });
  Process p([] {});
  try {
    p.start();
    ADD_FAILURE() << "fork with another thread running was not refused";
  } catch (const RuntimeError& e) {
    EXPECT_NE(std::string(e.what()).find("threads"), std::string::npos) << e.what();
  }
  Process forced({.fork_with_threads = true}, [] {});
  forced.start();
  forced.join();
  EXPECT_EQ(forced.exitcode(), 0);
  go.count_down();
  t.join();
}

// ---- spawn ----------------------------------------------------------------------------------

// A spawned child has only stdin/stdout/stderr: it reports over an authenticated connection,
// with the authkey it inherited.
void spawn_report(std::string address, int n, std::vector<double> xs) {
  Connection c = Client(Address::parse(address), current_process().authkey());
  double sum = 0;
  for (double x : xs) sum += x;
  auto parent = parent_process();
  c.send(std::make_tuple(current_process().name(), ::getpid(), parent ? *parent->pid() : -1,
                         parent ? parent->name() : std::string(), n, sum,
                         current_process().daemon()));
}
TROUPE_ENTRY(spawn_report);

void spawn_exit(int code) {
  if (code < 0) throw ValueError("spawned and failed");
  troupe::sys_exit(code);
}
TROUPE_ENTRY(spawn_exit);

void spawn_sleep() {
  ::pause();
}
TROUPE_ENTRY(spawn_sleep);

void spawn_pipe_report(Connection& out, int n) {
  out.send_bytes("spawned " + std::to_string(n) + " " + current_process().name());
}
TROUPE_ENTRY(spawn_pipe_report);

void not_registered(int) {}

using Report = std::tuple<std::string, int, int, std::string, int, double, bool>;

Listener report_listener() {
  return Listener(
      Address{Address::Family::unix_abstract, "troupe-spawn-test-" + std::to_string(::getpid()), 0},
      {.authkey = current_process().authkey()});
}

// The start methods that run registered entry points in a fresh copy of the program.
const std::vector<std::string> kEntryMethods{"spawn", "forkserver"};

TEST_F(ProcessTest, SpawnRunsARegisteredEntryWithEncodedArguments) {
  for (const auto& method : kEntryMethods) {
    SCOPED_TRACE(method);
    Listener l = report_listener();
    Process p({.daemon = true, .start_method = method}, spawn_report, l.address().str(), 7,
              std::vector<double>{1.5, 2.5});
    p.start();
    Connection c = l.accept();  // the child authenticated with the inherited key
    auto [name, pid, parent, parent_name, n, sum, daemon] = c.recv<Report>();
    EXPECT_EQ(name, p.name());
    EXPECT_EQ(pid, *p.pid());
    EXPECT_EQ(parent, ::getpid());
    EXPECT_EQ(parent_name, "MainProcess");
    EXPECT_EQ(n, 7);
    EXPECT_EQ(sum, 4.0);
    EXPECT_TRUE(daemon);
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
}

// The child's stderr is this process's (under the forkserver too: it is passed with the
// request), so the report of an escaping exception lands where this process writes.
void spawn_exit_codes_and_signals(const std::string& method) {
  auto ctx = get_context(method);
  EXPECT_EQ(ctx.get_start_method(), method);
  Process ok = ctx.Process(spawn_exit, 0);
  Process chosen = ctx.Process(spawn_exit, 9);
  Process thrown = ctx.Process(spawn_exit, -1);
  Process killed = ctx.Process(spawn_sleep);
  auto [r, w] = Pipe(false);
  const int saved = ::dup(2);
  ::dup2(w.fileno(), 2);
  for (auto* p : {&ok, &chosen, &thrown, &killed}) p->start();
  ::dup2(saved, 2);
  ::close(saved);
  w.close();
  killed.kill();
  for (auto* p : {&ok, &chosen, &thrown, &killed}) p->join();
  EXPECT_EQ(ok.exitcode(), 0);
  EXPECT_EQ(chosen.exitcode(), 9);
  EXPECT_EQ(thrown.exitcode(), 1);
  EXPECT_EQ(killed.exitcode(), -SIGKILL);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(r.fileno(), buf, sizeof buf)) > 0;) err.append(buf, n);
  EXPECT_NE(err.find("Process " + thrown.name() + ":\ntroupe::ValueError: spawned and failed"),
            std::string::npos)
      << err;
}

void refuses_what_cannot_cross(const std::string& method) {
  auto expect_refusal = [](Process& p, const std::string& text) {
    try {
      p.start();
      ADD_FAILURE() << "started";
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  auto ctx = get_context(method);
  Process lambda = ctx.Process([] {});
  expect_refusal(lambda, "not a plain function");
  Process unregistered = ctx.Process(not_registered, 1);
  expect_refusal(unregistered, "not registered");
  EXPECT_FALSE(lambda.pid());
  // Arguments that do not fit the function are a compile error, for spawn as for fork:
  // ctx.Process(spawn_exit, std::string("seven")) does not satisfy detail::Target.
  static_assert(!detail::Target<void (*)(int), std::string>);
}

TEST_F(ProcessTest, SpawnExitCodesAndSignals) {
  for (const auto& method : kEntryMethods) {
    SCOPED_TRACE(method);
    spawn_exit_codes_and_signals(method);
  }
}

TEST_F(ProcessTest, SpawnRefusesWhatCannotCrossAnExec) {
  for (const auto& method : kEntryMethods) {
    SCOPED_TRACE(method);
    refuses_what_cannot_cross(method);
  }
}

// A Connection argument hands its fd to the child, under spawn (fd passing at exec) and fork.
TEST_F(ProcessTest, ConnectionsAsArguments) {
  for (const std::string method : {"spawn", "forkserver", "fork"}) {
    SCOPED_TRACE(method);
    auto [r, w] = Pipe(false);
    Process p({.start_method = method}, spawn_pipe_report, std::move(w), 5);
    p.start();
    EXPECT_EQ(text(r.recv_bytes()), "spawned 5 " + p.name());
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  auto [a, b] = Pipe();
  EXPECT_THROW(troupe::to_bytes(a), ValueError);  // an fd cannot travel in a message
}

TEST_F(ProcessTest, SpawnWorksWhileThreadsRun) {
  std::latch go(1);
  std::thread t([&] { go.wait(); });
  for (const auto& method : kEntryMethods) {
    Process p({.start_method = method}, spawn_exit, 4);
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), 4) << method;
  }
  go.count_down();
  t.join();
}

TEST_F(ProcessTest, StartMethods) {
  EXPECT_EQ(get_all_start_methods(), (std::vector<std::string>{"fork", "spawn", "forkserver"}));
  EXPECT_EQ(get_start_method(), "fork");
  EXPECT_THROW(set_start_method("fork"), RuntimeError);  // context has already been set
  EXPECT_THROW(set_start_method("vfork", true), ValueError);
  EXPECT_THROW(get_context("vfork"), ValueError);
  EXPECT_THROW(Process({.start_method = "vfork"}), ValueError);
  set_start_method("spawn", true);
  Process p(spawn_exit, 2);  // the default is now spawn
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 2);
  set_start_method("fork", true);
  EXPECT_EQ(get_context().get_start_method(), "fork");
}

void log_something(int n) {
  get_logger().info("spawned child logs " + std::to_string(n));
}
TROUPE_ENTRY(log_something);

TEST_F(ProcessTest, LoggerRecordsAsPython) {
  Logger& log = get_logger();
  EXPECT_EQ(log.name(), "multiprocessing");
  EXPECT_EQ(log.get_effective_level(), logging::WARNING);  // NOTSET: the root's
  std::vector<std::string> lines;
  log.add_handler([&](int, const std::string& line) { lines.push_back(line); });
  log.set_level(logging::INFO);
  log.debug("not shown");
  log.info("hello");
  log.log(logging::SUBWARNING, "sub");
  EXPECT_EQ(lines,
            (std::vector<std::string>{"[INFO/MainProcess] hello", "[SUBWARNING/MainProcess] sub"}));
  log.clear_handlers();
  // A child's records, through log_to_stderr: a forked child inherits it, a spawned one is
  // told. Catch the children's stderr through a pipe.
  auto [r, w] = Pipe(false);
  const int saved = ::dup(2);
  ::dup2(w.fileno(), 2);
  log_to_stderr(logging::INFO);
  Process forked({.start_method = "fork"}, [] { get_logger().info("forked child logs"); });
  Process spawned({.start_method = "spawn"}, log_something, 7);
  forked.start();
  forked.join();
  spawned.start();
  spawned.join();
  log.clear_handlers();
  log.set_level(logging::NOTSET);
  ::dup2(saved, 2);
  ::close(saved);
  w.close();
  std::string err;
  char buf[1024];
  for (ssize_t n; (n = ::read(r.fileno(), buf, sizeof buf)) > 0;) err.append(buf, n);
  for (const auto& [p, what] : {std::pair{&forked, std::string("forked child logs")},
                                std::pair{&spawned, std::string("spawned child logs 7")}}) {
    const std::string who = "[INFO/" + p->name() + "] ";
    EXPECT_NE(err.find(who + "child process calling self.run()\n"), std::string::npos) << err;
    EXPECT_NE(err.find(who + what + "\n"), std::string::npos) << err;
    EXPECT_NE(err.find(who + "process exiting with exitcode 0\n"), std::string::npos) << err;
  }
}

TEST_F(ProcessTest, NamesAndRepr) {
  Process a([] {});
  Process b({.name = "named"}, [] {});
  EXPECT_EQ(b.name(), "named");
  a.set_name("renamed");
  EXPECT_EQ(a.name(), "renamed");
  EXPECT_NE(a.repr().find("initial"), std::string::npos) << a.repr();
  a.start();
  a.join();
  EXPECT_NE(a.repr().find("exitcode=0"), std::string::npos) << a.repr();
  EXPECT_GE(cpu_count(), 1);
}

// ---- forkserver -----------------------------------------------------------------------------

int preloaded = 0;  // set in the forkserver by the preload entry; its children inherit it
void preload_marker() {
  preloaded = 42;
}
TROUPE_ENTRY(preload_marker);

void exit_with_preloaded() {
  troupe::sys_exit(preloaded);
}
TROUPE_ENTRY(exit_with_preloaded);

void wait_for_word(Connection& in) {
  troupe::sys_exit(std::stoi(text(in.recv_bytes())));
}
TROUPE_ENTRY(wait_for_word);

int pidfd_of(int pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// Kills this process's forkserver and waits until it has gone.
void kill_forkserver() {
  const int pid = forkserver::server_pid();
  ASSERT_GT(pid, 0);
  const int fd = pidfd_of(pid);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  pollfd p{fd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 10000), 1) << "the forkserver did not die";
  ::close(fd);
}

Process start_served(auto f, auto&&... a) {
  Process p({.start_method = "forkserver"}, f, std::forward<decltype(a)>(a)...);
  p.start();
  return p;
}

TEST_F(ProcessTest, ForkserverIsNotAChildAndStartsAgainWhenKilled) {
  forkserver::ensure_running();
  const int first = forkserver::server_pid();
  ASSERT_GT(first, 0);
  EXPECT_EQ(forkserver::address().rfind("unix:", 0), 0u) << forkserver::address();
  // Not this process's child (LeakCheck would see it), so nothing here must reap it.
  EXPECT_EQ(::waitpid(first, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  kill_forkserver();
  Process p = start_served(spawn_exit, 6);  // finds it gone, starts another
  p.join();
  EXPECT_EQ(p.exitcode(), 6);
  EXPECT_NE(forkserver::server_pid(), first);
  kill_forkserver();
  forkserver::ensure_running();  // sees it has gone too
  EXPECT_GT(forkserver::server_pid(), 0);
  Process q = start_served(spawn_exit, 7);
  q.join();
  EXPECT_EQ(q.exitcode(), 7);
}

TEST_F(ProcessTest, ForkserverChildOutlivesTheServerWithStatus255) {
  auto [r, w] = Pipe(false);
  Process p = start_served(wait_for_word, std::move(r));
  EXPECT_TRUE(p.is_alive());
  kill_forkserver();
  EXPECT_TRUE(p.is_alive()) << "the child ended with its server";
  p.terminate();  // signals go through the child's pidfd, not the server
  p.join(20s);
  EXPECT_EQ(p.exitcode(), 255);  // its wait status died with the server (Python: 255 too)
  Process q = start_served(spawn_exit, 0);  // a new server
  q.join();
  EXPECT_EQ(q.exitcode(), 0);
}

TEST_F(ProcessTest, ForkserverAuthenticatesItsClients) {
  forkserver::ensure_running();
  const Address where = Address::parse(forkserver::address());
  EXPECT_THROW(Client(where, AuthenticationString("not the key")), AuthenticationError);
  {
    Connection c = Client(where, std::nullopt);  // a client that does not know the protocol
    EXPECT_EQ(text(c.recv_bytes()).rfind("#CHALLENGE#", 0), 0u);
    c.send_bytes("let me in");
    EXPECT_EQ(text(c.recv_bytes()), "#FAILURE#");
    EXPECT_THROW(c.recv_bytes(), EOFError);  // dropped
  }
  Process p = start_served(spawn_exit, 3);  // and it goes on serving the others
  p.join();
  EXPECT_EQ(p.exitcode(), 3);
}

// Issue 15 finding 1: the server listens in a directory only this user can enter; a server
// that has died is never asked again, even if someone else now answers at its address.
TEST_F(ProcessTest, ForkserverSocketIsPrivateAndADeadServersAddressIsNeverReused) {
  forkserver::ensure_running();
  const Address where = Address::parse(forkserver::address());
  ASSERT_EQ(where.family, Address::Family::unix_path);
  const std::string dir = where.host.substr(0, where.host.rfind('/'));
  struct stat st {};
  ASSERT_EQ(::lstat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(st.st_uid, ::geteuid());

  kill_forkserver();
  // A squatter takes the dead server's address (here the same user could; another cannot:
  // see the next test) and waits for the client to talk to it.
  ::unlink(where.host.c_str());
  Listener squatter(where, {.authkey = current_process().authkey()});
  Process p = start_served(spawn_exit, 5);
  p.join();
  EXPECT_EQ(p.exitcode(), 5);
  EXPECT_NE(forkserver::address(), where.str());
  pollfd pf{squatter.fileno(), POLLIN, 0};
  EXPECT_EQ(::poll(&pf, 1, 0), 0) << "the client connected to the dead server's address";
  squatter.close();
  ::rmdir(dir.c_str());
}

// Issue 15 finding 1: a process of another uid can neither connect to the forkserver nor put
// a socket of its own where the server listens.
TEST_F(ProcessTest, ForkserverRefusesOtherUsers) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to become another uid";
  forkserver::ensure_running();
  const std::string path = Address::parse(forkserver::address()).host;
  const pid_t pid = ::fork();  // the child makes system calls only
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), std::min(path.size(), sizeof un.sun_path - 1));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&un), sizeof un) == 0) ::_exit(11);
    if (errno != EACCES) ::_exit(12);
    const std::string other = path + "x";
    std::memcpy(un.sun_path, other.data(), std::min(other.size(), sizeof un.sun_path - 1));
    const int fd2 = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (::bind(fd2, reinterpret_cast<const sockaddr*>(&un), sizeof un) == 0) ::_exit(13);
    ::_exit(0);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: setuid failed, 11: connected, 12: not EACCES, "
                                       "13: could bind beside the server";
}

// Issue 15 finding 2: a client that connects and says nothing, and one that drips a byte at a
// time, delay nobody else's start; the dripping one is dropped at its one deadline.
TEST_F(ProcessTest, ForkserverIdleAndDrippingClientsDelayNobody) {
  forkserver::ensure_running();
  const std::string path = Address::parse(forkserver::address()).host;
  const int silent = connect_raw(Address::parse("unix:" + path));
  ASSERT_GE(silent, 0);
  const int drip = connect_raw(Address::parse("unix:" + path));
  ASSERT_GE(drip, 0);
  const char header[4] = {0, 0, 0, 100};  // an answer of 100 bytes, sent slowly
  ASSERT_EQ(::send(drip, header, 4, MSG_NOSIGNAL), 4);
  for (int i = 0; i < 3; ++i) {
    Process p = start_served(spawn_exit, 20 + i);
    p.join();
    EXPECT_EQ(p.exitcode(), 20 + i);
  }
  // Both were still held by the server when the starts were done: they did not go first.
  EXPECT_FALSE(peer_closed(silent, 0));
  EXPECT_FALSE(peer_closed(drip, 0));
  // A byte every 200 ms would take 20 s: the server drops it at its 10 s deadline.
  bool dropped = false;
  for (int i = 0; i < 100 && !dropped; ++i) {  // at most 30 s
    (void)::send(drip, "x", 1, MSG_NOSIGNAL);
    dropped = peer_closed(drip, 300);
  }
  EXPECT_TRUE(dropped) << "a dripping client held its handshake past the deadline";
  EXPECT_TRUE(peer_closed(silent, 5000));
  ::close(drip);
  ::close(silent);
}

TEST_F(ProcessTest, ForkserverDaemonEndsWhenItsParentIsKilled) {
  auto [r, w] = Pipe(false);
  Process child([&w = w] {  // forked: it uses its parent's forkserver
    Process daemon({.daemon = true, .start_method = "forkserver"}, spawn_sleep);
    daemon.start();
    w.send_bytes(std::to_string(*daemon.pid()));
    ::pause();
  });
  child.start();
  const int daemon_pid = std::stoi(text(r.recv_bytes()));
  const int fd = pidfd_of(daemon_pid);
  ASSERT_GE(fd, 0);
  child.kill();  // no exit handler runs: the forkserver sees its client end
  child.join();
  pollfd p{fd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 10000), 1) << "the daemon outlived its killed parent";
  ::close(fd);
}

TEST_F(ProcessTest, ForkserverPreload) {
  EXPECT_THROW(set_forkserver_preload({"no_such_entry"}), ValueError);
  set_forkserver_preload({"preload_marker"});
  kill_forkserver();  // the preload list takes effect when a server starts
  Process p = start_served(exit_with_preloaded);
  p.join();
  EXPECT_EQ(p.exitcode(), 42);
  Process q({.start_method = "spawn"}, exit_with_preloaded);  // spawn does not preload
  q.start();
  q.join();
  EXPECT_EQ(q.exitcode(), 0);
  set_forkserver_preload({});
  kill_forkserver();
}

}  // namespace
}  // namespace troupe::multiprocessing
