// The instructions a call costs, counted by callgrind (bench/call_instructions.py runs this):
// `call_instructions proxy N` makes N quick-typeid proxy calls (Maths.add) to a manager server
// running in this process (callgrind cannot follow a child started with pidfd_open), `pipe N`
// N 152-byte Pipe ping-pongs with an echoing thread, `pipelined N` N proxy calls with 64 in
// flight (async_call, as BM_ProxyPipelined), `queue N` N managed queue put + get pairs. Each first
// makes 2000 of them untimed; the script runs two N and divides the difference per thread, so the
// start and the end cancel.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>

#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/managers.hpp"

#include "maths.hpp"

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;

namespace {

using bench::Maths;
using bench::MathsManager;

constexpr long kWarmUp = 2000;

enum class Mode { proxy, pipelined, queue };

long proxy_calls(long n, Mode mode) {
  const auto key = mp::AuthenticationString::random();
  mm::ManagerOptions so;
  so.address =
      mp::Address::parse("unix-abstract:troupe-call-instructions-" + std::to_string(::getpid()));
  so.authkey = key;
  MathsManager sm(so);
  auto server = sm.get_server();
  std::thread serving([&] { server->serve_forever(); });
  long sum = 0;
  {
    mm::ManagerOptions co;
    co.address = so.address;
    co.authkey = key;
    MathsManager c(co);
    for (int tries = 0;; ++tries) {  // until the server listens
      try {
        c.connect();
        break;
      } catch (const std::exception&) {
        if (tries == 500) throw;
        ::usleep(10000);
      }
    }
    if (mode == Mode::queue) {
      // A built-in object's calls: a managed queue's put then get, one at a time.
      const mm::QueueProxy<std::int64_t> q(c.create("Q"));
      for (long i = 0; i < kWarmUp + n; ++i) {
        q.put(i);
        sum += q.get();
      }
    } else if (mode == Mode::proxy) {
      auto p = c.create<Maths>("QuickMaths");
      for (long i = 0; i < kWarmUp + n; ++i) sum += p.call<&Maths::add>(i, 1);
    } else {
      auto p = c.create<Maths>("QuickMaths");
      // 64 async calls in flight, each completion starting the next (BM_ProxyPipelined's).
      boost::asio::io_context ctx;
      long started = 0;
      const long total = kWarmUp + n;
      std::function<void()> next = [&] {
        const long i = started++;
        p.async_call<&Maths::add>(
            std::int64_t{i}, std::int64_t{1},
            boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::int64_t r) {
              if (!e) sum += r;
              if (started < total) next();
            }));
      };
      for (long k = 0; k < 64 && started < total; ++k) next();
      ctx.run();
    }
  }
  server->stop();
  serving.join();
  return sum;
}

long pipe_calls(long n) {
  auto [a, b] = mp::Pipe();
  std::thread echo([&b = b] {
    for (;;) {
      auto m = b.recv_bytes();
      if (m.empty()) return;
      b.send_bytes(m);
    }
  });
  const std::string msg(152, 'x');
  long got = 0;
  for (long i = 0; i < kWarmUp + n; ++i) {
    a.send_bytes(msg);
    got += static_cast<long>(a.recv_bytes().size());
  }
  a.send_bytes(std::string_view());
  echo.join();
  return got;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view mode = argc == 3 ? argv[1] : "";
  if (mode != "proxy" && mode != "pipelined" && mode != "queue" && mode != "pipe") {
    std::fprintf(stderr, "usage: call_instructions proxy|pipelined|queue|pipe N\n");
    return 2;
  }
  const long n = std::atol(argv[2]);
  MathsManager::register_<Maths>("QuickMaths", {.quick = true});
  mm::register_shared_queue(MathsManager::registry(), "Q");
  const long r = mode == "pipe"        ? pipe_calls(n)
                 : mode == "pipelined" ? proxy_calls(n, Mode::pipelined)
                 : mode == "queue"     ? proxy_calls(n, Mode::queue)
                                       : proxy_calls(n, Mode::proxy);
  std::printf("%ld\n", r);
  return 0;
}
