// queue_client: puts N tasks 0..N-1 on a queue_server's task queue, collects the N results the
// workers put, checks each ([n, n*n], every n once), prints a summary and asks the server to
// shut down. With --stop-workers K it then puts K negative tasks, one to end each worker, and
// waits until they are taken before it asks for the shutdown.
//
//   queue_client --address 127.0.0.1:PORT --authkey 736563726574 --tasks 1000 [--stop-workers 4]
//                [--legacy-md5]
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "queue_common.hpp"

int main(int argc, char** argv) {
  example::Args args(
      argc, argv, {"--address", "--authkey", "--tasks", "--stop-workers"}, {"--legacy-md5"},
      "queue_client --address ADDR --authkey HEX --tasks N [--stop-workers K] [--legacy-md5]\n(or "
      "TROUPE_AUTHKEY=HEX in the environment instead of --authkey)");
  try {
    static const bool registered = example::register_queues();
    (void)registered;
    const long n = std::stol(args.get("--tasks"));
    const long stop = std::stol(args.get("--stop-workers", "0"));
    if (n < 0 || stop < 0) args.fail("--tasks and --stop-workers must not be negative");
    example::QueueManager m(example::options(args));
    m.connect();
    const example::mm::QueueProxy<std::int64_t> tasks(m.create("get_task_queue"));
    const example::mm::QueueProxy<example::Result> results(m.create("get_result_queue"));
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < n; ++i) tasks.put(i);
    std::vector<bool> seen(static_cast<std::size_t>(n), false);
    long bad = 0;
    for (long i = 0; i < n; ++i) {
      const auto r = results.get(true, std::chrono::seconds(60));
      const auto [k, square] = r;
      if (k < 0 || k >= n || square != k * k || seen[static_cast<std::size_t>(k)]) {
        ++bad;
        continue;
      }
      seen[static_cast<std::size_t>(k)] = true;
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (long i = 0; i < stop; ++i) tasks.put(-1);
    // The workers take their stop tasks before the server goes (10 s at most: a worker that
    // never came leaves its stop task in the queue).
    for (int i = 0; i < 10000 && stop > 0 && !tasks.empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    example::say(std::to_string(n) + " tasks, " + std::to_string(n - bad) + " results right, " +
                 std::to_string(bad) + " wrong, in " + std::to_string(secs) + " s (" +
                 std::to_string(secs > 0 ? static_cast<long>(n / secs) : 0) + " tasks/s)");
    m.shutdown();  // the server stops (a connected manager asks it to)
    return bad == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    args.fail(e.what());
  }
}
