// Interop with real CPython: multiprocessing.connection on one end of a socketpair, troupe on the
// other. The system python3 (3.11 here: the legacy HMAC-MD5 dialect) and every python3.12+ found
// under pyenv (the sha256 dialect) are each driven through the mutual handshake and an echo of
// messages from 0 bytes to several MiB; with a wrong key both sides must refuse.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"

#include "child_process.hpp"
#include "leak_check.hpp"

namespace troupe::multiprocessing {
namespace {

// The Python side: authenticate as a Listener does (deliver, then answer), then answer every
// message with its bytes reversed until b"quit". Exit 3 on AuthenticationError.
constexpr const char* kEcho = R"PY(
import sys
from multiprocessing.connection import Connection, deliver_challenge, answer_challenge
from multiprocessing import AuthenticationError
c = Connection(3)
key = bytes.fromhex(sys.argv[1])
try:
    deliver_challenge(c, key)
    answer_challenge(c, key)
except (AuthenticationError, EOFError, OSError):
    sys.exit(3)
while True:
    m = c.recv_bytes()
    if m == b"quit":
        break
    c.send_bytes(m[::-1])
print(sys.version_info[:2], "done")
)PY";

using troupe::testing::find_pythons;
using troupe::testing::Python;

struct Child {
  pid_t pid = -1;
  Connection conn;
};

Child spawn_echo(const Python& py, const std::string& keyhex) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw_os_error(errno, "socketpair");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(sv[1], 3);  // dup2 clears close-on-exec on the copy
    execlp("timeout", "timeout", "60", py.exe.c_str(), "-c", kEcho, keyhex.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(sv[1]);
  return {pid, Connection(sv[0])};
}

int wait_exit(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::vector<std::byte> pattern(std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 31 + 7) & 0xff);
  return v;
}

class PythonConnectionTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    LeakCheck::SetUp();
    pythons_ = find_pythons();
    if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  }
  std::vector<Python> pythons_;
};

TEST_F(PythonConnectionTest, HandshakeAndEchoWithEveryPython) {
  int modern = 0;
  for (const auto& py : pythons_) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    const bool legacy = py.minor <= 11;
    modern += legacy ? 0 : 1;
    auto key = AuthenticationString::random();
    std::string hex;
    for (auto b : key.bytes()) {
      char buf[3];
      std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(b));
      hex += buf;
    }
    Child child = spawn_echo(py, hex);
    const AuthOptions opts{.legacy_md5 = legacy};
    // troupe is the Client here: answer, then challenge.
    answer_challenge(child.conn, key, opts);
    deliver_challenge(child.conn, key, opts);
    for (std::size_t size : {0, 1, 64, 16384, 16385, 100000, 3 << 20}) {
      auto msg = pattern(size);
      child.conn.send_bytes(msg);
      auto back = child.conn.recv_bytes();
      std::reverse(back.begin(), back.end());
      EXPECT_EQ(back, msg) << size << " bytes";
    }
    child.conn.send_bytes("quit");
    EXPECT_EQ(wait_exit(child.pid), 0);
  }
  if (modern == 0) std::printf("note: no python3.12+ found; only the legacy dialect was tested\n");
}

TEST_F(PythonConnectionTest, WrongKeyIsRefusedByBothSides) {
  for (const auto& py : pythons_) {
    SCOPED_TRACE(py.exe);
    Child child = spawn_echo(py, "00112233");
    const AuthOptions opts{.legacy_md5 = py.minor <= 11};
    EXPECT_THROW(answer_challenge(child.conn, AuthenticationString("wrong key"), opts),
                 AuthenticationError);
    child.conn.close();
    EXPECT_EQ(wait_exit(child.pid), 3) << "Python accepted a wrong key";
  }
}

// A Python <= 3.11 peer speaks only HMAC-MD5: without the opt-in troupe refuses it.
TEST_F(PythonConnectionTest, LegacyPeerRefusedWithoutOptIn) {
  bool any = false;
  for (const auto& py : pythons_) {
    if (py.minor > 11) continue;
    any = true;
    Child child = spawn_echo(py, "00112233");
    EXPECT_THROW(answer_challenge(child.conn, AuthenticationString::from_hex("00112233")),
                 AuthenticationError);
    child.conn.close();
    EXPECT_EQ(wait_exit(child.pid), 3);
  }
  if (!any) GTEST_SKIP() << "no python <= 3.11 found";
}

// Python's Client connects to a troupe Listener over TCP; a troupe Client connects to Python's
// Listener on a Unix socket. Both authenticate and exchange a message.
constexpr const char* kPyClient = R"PY(
import sys
from multiprocessing.connection import Client
c = Client(("127.0.0.1", int(sys.argv[1])), authkey=bytes.fromhex(sys.argv[2]))
c.send_bytes(b"from python")
assert c.recv_bytes() == b"nohtyp morf"
c.close()
)PY";

constexpr const char* kPyListener = R"PY(
import sys
from multiprocessing.connection import Listener
with Listener(sys.argv[1], authkey=bytes.fromhex(sys.argv[2])) as l:
    print("ready", flush=True)
    with l.accept() as c:
        c.send_bytes(c.recv_bytes()[::-1])
)PY";

pid_t spawn(const Python& py, const char* script, const std::string& a1, const std::string& a2,
            int* stdout_fd = nullptr) {
  int out[2] = {-1, -1};
  if (stdout_fd && pipe2(out, O_CLOEXEC) != 0) throw_os_error(errno, "pipe2");
  pid_t pid = fork();
  if (pid == 0) {
    if (stdout_fd) dup2(out[1], 1);
    execlp("timeout", "timeout", "60", py.exe.c_str(), "-c", script, a1.c_str(), a2.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  if (stdout_fd) {
    ::close(out[1]);
    *stdout_fd = out[0];
  }
  return pid;
}

TEST_F(PythonConnectionTest, ListenerAndClientAgainstPython) {
  for (const auto& py : pythons_) {
    SCOPED_TRACE(py.exe);
    const AuthOptions opts{.legacy_md5 = py.minor <= 11};
    {
      ListenerOptions lo;
      lo.authkey = AuthenticationString::from_hex("0a0b0c0d");
      lo.auth = opts;
      Listener l(std::nullopt, lo);
      pid_t pid = spawn(py, kPyClient, std::to_string(l.address().port), "0a0b0c0d");
      Connection c = l.accept();
      auto m = c.recv_bytes();
      std::reverse(m.begin(), m.end());
      c.send_bytes(m);
      EXPECT_EQ(wait_exit(pid), 0);
    }
    {
      const std::string path = "/tmp/troupe-py-listener-" + std::to_string(getpid()) + ".sock";
      int out = -1;
      pid_t pid = spawn(py, kPyListener, path, "0a0b0c0d", &out);
      char ready[6] = {};
      std::size_t got = 0;  // "ready\n": the socket is bound (it may come in pieces)
      while (got < sizeof ready) {
        const ssize_t n = ::read(out, ready + got, sizeof ready - got);
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
      }
      ::close(out);
      ASSERT_EQ(got, sizeof ready);
      Connection c =
          Client(Address::parse("unix:" + path), AuthenticationString::from_hex("0a0b0c0d"), opts);
      c.send_bytes("to python");
      auto back = c.recv_bytes();
      EXPECT_EQ(std::string(reinterpret_cast<char*>(back.data()), back.size()), "nohtyp ot");
      c.close();
      EXPECT_EQ(wait_exit(pid), 0);
    }
  }
}

}  // namespace
}  // namespace troupe::multiprocessing
