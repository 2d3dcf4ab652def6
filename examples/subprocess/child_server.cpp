// An Asio server that embeds child processes: each request is a text, each is sorted by a `sort`
// child started for it, and the sorted text goes back. One thread serves every client and every
// child (Popen::async_communicate), with no thread per child. The listener is an abstract Unix
// socket with an authkey (troupe's listeners always authenticate).
//
// Run without arguments, it serves three clients of its own (coroutines on the same thread) and
// prints what they got back, then exits.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "troupe/multiprocessing.hpp"
#include "troupe/subprocess.hpp"

namespace asio = boost::asio;
namespace mp = troupe::multiprocessing;
namespace sp = troupe::subprocess;

// One client's requests, each answered by a child.
asio::awaitable<void> serve(mp::Connection conn) {
  const auto ex = co_await asio::this_coro::executor;
  for (;;) {
    std::string text;
    try {
      text = co_await conn.async_recv<std::string>(asio::use_awaitable);
    } catch (const boost::system::system_error&) {
      co_return;  // the client has gone
    }
    const std::vector<std::string> argv{"sort"};
    sp::Popen child(argv, {.stdin_ = sp::PIPE, .stdout_ = sp::PIPE, .stderr_ = sp::PIPE});
    child.set_executor(ex);  // its pipes and pidfd wait in this io_context's reactor
    sp::Output out = co_await child.async_communicate(text, asio::use_awaitable);
    const std::string reply =
        child.returncode() == 0 ? *out.stdout_ : "sort failed: " + *out.stderr_;
    co_await conn.async_send(reply, asio::use_awaitable);
  }
}

asio::awaitable<void> accept_loop(mp::Listener& listener, int clients) {
  const auto ex = co_await asio::this_coro::executor;
  for (int i = 0; i < clients; ++i) {
    mp::Connection conn = co_await listener.async_accept(asio::use_awaitable);
    asio::co_spawn(ex, serve(std::move(conn)), asio::detached);
  }
}

asio::awaitable<void> client(mp::Address address, mp::AuthenticationString key, int id,
                             std::vector<std::string>& printed) {
  const auto ex = co_await asio::this_coro::executor;
  mp::ClientOptions options;
  options.authkey = key;
  mp::Connection conn = co_await mp::async_client(ex, address, options, asio::use_awaitable);
  const std::vector<std::string> texts{"pear\napple\nfig\n", "3\n1\n2\n"};
  for (const std::string& text : texts) {
    co_await conn.async_send(text, asio::use_awaitable);
    std::string sorted = co_await conn.async_recv<std::string>(asio::use_awaitable);
    for (auto& c : sorted)
      if (c == '\n') c = ' ';
    printed.push_back("client " + std::to_string(id) + ": " + sorted);
  }
}

int main() {
  asio::io_context io;
  const auto key = mp::AuthenticationString::random();
  mp::ListenerOptions options;
  options.authkey = key;
  options.backlog = 16;
  mp::Listener listener(mp::Address{mp::Address::Family::unix_abstract,
                                    "troupe-child-server-" + std::to_string(::getpid()), 0},
                        options);
  listener.set_executor(io.get_executor());
  constexpr int kClients = 3;
  std::vector<std::string> printed;
  asio::co_spawn(io, accept_loop(listener, kClients), asio::detached);
  for (int i = 1; i <= kClients; ++i)
    asio::co_spawn(io, client(listener.address(), key, i, printed), asio::detached);
  io.run();
  for (const auto& line : printed) std::printf("%s\n", line.c_str());
  return printed.size() == 2 * kClients ? 0 : 1;
}
