// The echo examples against real CPython (issue: "Interop with real Python"): the system python3
// (3.11: the legacy HMAC-MD5 dialect, so troupe's side opts in with --legacy-md5) and every
// python3.12+ under pyenv, over TCP, a Unix socket path and a Linux abstract socket, in both
// directions — examples/connection/echo_listener with a Python Client, and
// examples/connection/echo_client with a Python Listener — with a wrong key first (refused by
// both sides; the listener goes on) and then the right one with messages from 0 bytes to 3 MiB.
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "leak_check.hpp"
#include "tls_files.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::ChildProcess;
using troupe::testing::Python;

constexpr const char* kKey = "7472757374206d65";  // "trust me"
constexpr const char* kWrongKey = "6e6f7065";     // "nope"
constexpr const char* kSizes = "0,1,64,65535,65536,1048577,3145728";

// The key reaches every child in its environment (TROUPE_AUTHKEY), never on its command line.
std::vector<std::string> key_env(const char* hex) {
  return {std::string("TROUPE_AUTHKEY=") + hex};
}

std::vector<std::string> addresses(const std::string& tag) {
  const std::string id = std::to_string(getpid()) + "-" + tag;
  return {"127.0.0.1:0", "unix:/tmp/troupe-echo-" + id + ".sock",
          "unix-abstract:troupe-echo-" + id};
}

std::vector<std::string> with_legacy(std::vector<std::string> argv, const Python& py) {
  if (py.minor <= 11) argv.push_back("--legacy-md5");
  return argv;
}

// The address a listener printed as "listening on ADDRESS".
std::string listening_address(ChildProcess& p) {
  auto line = p.read_line(20s);
  const std::string prefix = "listening on ";
  if (!line || line->rfind(prefix, 0) != 0) return {};
  return line->substr(prefix.size());
}

class PythonEchoTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    LeakCheck::SetUp();
    pythons_ = troupe::testing::find_pythons();
    if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
    int modern = 0;
    for (auto& p : pythons_) modern += p.minor >= 12;
    if (modern == 0) std::printf("note: no python3.12+ found; only the legacy dialect is tested\n");
  }
  std::vector<Python> pythons_;
};

TEST_F(PythonEchoTest, PythonClientsAgainstEchoListener) {
  for (const auto& py : pythons_) {
    for (const auto& address : addresses("l" + std::to_string(py.minor))) {
      SCOPED_TRACE(py.exe + " -> echo_listener on " + address);
      ChildProcess listener(with_legacy({ECHO_LISTENER, "--address", address}, py), true,
                            key_env(kKey));
      const std::string bound = listening_address(listener);
      ASSERT_FALSE(bound.empty()) << "echo_listener did not start";
      {  // wrong key: Python's Client raises AuthenticationError; the listener goes on
        ChildProcess bad({py.exe, PY_ECHO, "connect", bound, "1"}, true, key_env(kWrongKey));
        EXPECT_EQ(bad.wait(60s), 3) << bad.read_rest(1s);
      }
      EXPECT_EQ(listener.read_line(20s).value_or("").rfind("rejected:", 0), 0u);
      ChildProcess good({py.exe, PY_ECHO, "connect", bound, kSizes}, true, key_env(kKey));
      EXPECT_EQ(good.wait(120s), 0) << good.read_rest(1s);
      EXPECT_EQ(listener.wait(60s), 0) << listener.read_rest(1s);
      if (address.rfind("unix:", 0) == 0) {  // the path is unlinked on close
        EXPECT_NE(::access(address.substr(5).c_str(), F_OK), 0);
      }
    }
  }
}

TEST_F(PythonEchoTest, EchoClientAgainstPythonListeners) {
  for (const auto& py : pythons_) {
    for (const auto& address : addresses("c" + std::to_string(py.minor))) {
      SCOPED_TRACE("echo_client -> " + py.exe + " Listener on " + address);
      ChildProcess listener({py.exe, PY_ECHO, "listen", address}, true, key_env(kKey));
      const std::string bound = listening_address(listener);
      ASSERT_FALSE(bound.empty()) << "the Python listener did not start";
      {
        ChildProcess bad(
            with_legacy({ECHO_CLIENT, "--address", bound, "--count", "1", "--size", "1"}, py),
            false, key_env(kWrongKey));
        EXPECT_EQ(bad.wait(60s), 3);
      }
      EXPECT_EQ(listener.read_line(20s).value_or("").rfind("rejected:", 0), 0u);
      ChildProcess good(
          with_legacy({ECHO_CLIENT, "--address", bound, "--count", "14", "--size", kSizes}, py),
          true, key_env(kKey));
      EXPECT_EQ(good.wait(120s), 0) << good.read_rest(1s);
      EXPECT_EQ(listener.wait(60s), 0) << listener.read_rest(1s);
    }
  }
}

// TLS: Python's ssl module with multiprocessing.connection's handshake functions on the Python
// side (py_tls_echo.py), the examples with --tls-* on ours; a certificate from another CA is
// refused (exit 3; the listener reports it and goes on), then messages from 0 bytes to 3 MiB.
TEST_F(PythonEchoTest, PythonTlsClientsAgainstEchoListener) {
  troupe::testing::TlsFiles tls;
  for (const auto& py : pythons_) {
    for (const std::string& address :
         {std::string("127.0.0.1:0"), "unix-abstract:troupe-tls-echo-l-" +
                                          std::to_string(getpid()) + "-" +
                                          std::to_string(py.minor)}) {
      SCOPED_TRACE(py.exe + " (TLS) -> echo_listener on " + address);
      ChildProcess listener(
          with_legacy({ECHO_LISTENER, "--address", address, "--tls-cert", tls.path("server.pem"),
                       "--tls-key", tls.path("server.key")},
                      py),
          true, key_env(kKey));
      const std::string bound = listening_address(listener);
      ASSERT_FALSE(bound.empty()) << "echo_listener did not start";
      {
        ChildProcess bad({py.exe, PY_TLS_ECHO, "connect", bound, tls.path("rogue-ca.pem"), "1"},
                         true, key_env(kKey));
        EXPECT_EQ(bad.wait(60s), 3) << bad.read_rest(1s);
      }
      EXPECT_EQ(listener.read_line(20s).value_or("").rfind("rejected:", 0), 0u);
      ChildProcess good({py.exe, PY_TLS_ECHO, "connect", bound, tls.path("ca.pem"), kSizes}, true,
                        key_env(kKey));
      EXPECT_EQ(good.wait(120s), 0) << good.read_rest(1s);
      EXPECT_EQ(listener.wait(60s), 0) << listener.read_rest(1s);
    }
  }
}

TEST_F(PythonEchoTest, EchoClientAgainstPythonTlsListeners) {
  troupe::testing::TlsFiles tls;
  for (const auto& py : pythons_) {
    for (const std::string& address :
         {std::string("127.0.0.1:0"), "unix-abstract:troupe-tls-echo-c-" +
                                          std::to_string(getpid()) + "-" +
                                          std::to_string(py.minor)}) {
      SCOPED_TRACE("echo_client (TLS) -> " + py.exe + " on " + address);
      ChildProcess listener(
          {py.exe, PY_TLS_ECHO, "listen", address, tls.path("server.pem"), tls.path("server.key")},
          true, key_env(kKey));
      const std::string bound = listening_address(listener);
      ASSERT_FALSE(bound.empty()) << "the Python listener did not start";
      std::vector<std::string> client = {ECHO_CLIENT, "--address", bound, "--tls-server-name",
                                         "localhost"};
      {
        auto argv = client;
        argv.insert(argv.end(),
                    {"--tls-ca", tls.path("rogue-ca.pem"), "--count", "1", "--size", "1"});
        ChildProcess bad(with_legacy(argv, py), false, key_env(kKey));
        EXPECT_EQ(bad.wait(60s), 3);
      }
      EXPECT_EQ(listener.read_line(20s).value_or("").rfind("rejected:", 0), 0u);
      client.insert(client.end(),
                    {"--tls-ca", tls.path("ca.pem"), "--count", "14", "--size", kSizes});
      ChildProcess good(with_legacy(client, py), true, key_env(kKey));
      EXPECT_EQ(good.wait(120s), 0) << good.read_rest(1s);
      EXPECT_EQ(listener.wait(60s), 0) << listener.read_rest(1s);
    }
  }
}

// Without a key (none in the environment, no --authkey) the examples refuse to start: usage, 2.
TEST_F(PythonEchoTest, TheExamplesWithoutAKeyRefuseToStart) {
  ChildProcess listener({ECHO_LISTENER, "--address", "127.0.0.1:0"}, false, key_env(""));
  EXPECT_EQ(listener.wait(20s), 2);
  ChildProcess client({ECHO_CLIENT, "--address", "127.0.0.1:1", "--count", "1", "--size", "1"},
                      false, key_env(""));
  EXPECT_EQ(client.wait(20s), 2);
}

// Our client and our listener with each other, including the IPv6 loopback.
TEST_F(PythonEchoTest, EchoClientAgainstEchoListener) {
  std::vector<std::string> all = addresses("self");
  all.push_back("[::1]:0");
  for (const auto& address : all) {
    SCOPED_TRACE(address);
    ChildProcess listener({ECHO_LISTENER, "--address", address}, true, key_env(kKey));
    const std::string bound = listening_address(listener);
    if (bound.empty() && address == "[::1]:0") GTEST_SKIP() << "no IPv6 loopback here";
    ASSERT_FALSE(bound.empty());
    ChildProcess good({ECHO_CLIENT, "--address", bound, "--count", "50", "--size", kSizes}, false,
                      key_env(kKey));
    EXPECT_EQ(good.wait(120s), 0);
    EXPECT_EQ(listener.wait(60s), 0) << listener.read_rest(1s);
  }
}

}  // namespace
