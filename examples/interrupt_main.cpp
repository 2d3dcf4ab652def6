// _thread: a worker started with start_new_thread stops the main thread's loop with
// interrupt_main(), the way a Python worker would raise KeyboardInterrupt in the main thread.
//
//   def worker(lock, results):
//       results.append(sum(range(1_000_000)))
//       lock.release()
//       _thread.interrupt_main()   # KeyboardInterrupt in the main thread
//   try:
//       while True: time.sleep(1)
//   except KeyboardInterrupt:
//       print("interrupted")
#include <csignal>
#include <cstdint>
#include <cstdio>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include "troupe/_thread.hpp"

namespace _thread = troupe::_thread;

int main() {
  auto done = _thread::allocate_lock();
  done.acquire();
  std::uint64_t result = 0;

  boost::asio::io_context ioc;
  boost::asio::signal_set signals(ioc, SIGINT);
  signals.async_wait([&](auto, int) { ioc.stop(); });  // what KeyboardInterrupt did
  _thread::start_new_thread([&] {
    for (std::uint64_t i = 0; i < 1'000'000; ++i) result += i;
    done.release();
    _thread::interrupt_main();  // SIGINT to the main thread, whose handler is Asio's
  });
  ioc.run();

  done.acquire();  // the worker's signal that `result` is written
  std::printf("interrupted; the worker computed %llu\n", static_cast<unsigned long long>(result));
  return result == 499999500000ULL ? 0 : 1;
}
