// queue_worker: connects to a queue_server, takes tasks n (integers) from the task queue until it
// gets a negative one (or the server shuts down while it waits for one), and puts [n, n*n] on the
// result queue for each.
//
//   queue_worker --address 127.0.0.1:PORT --authkey 736563726574 [--legacy-md5]
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "queue_common.hpp"

int main(int argc, char** argv) {
  example::Args args(argc, argv, {"--address", "--authkey"}, {"--legacy-md5"},
                     "queue_worker --address ADDR --authkey HEX [--legacy-md5]\n(or "
                     "TROUPE_AUTHKEY=HEX in the environment instead of --authkey)");
  try {
    static const bool registered = example::register_queues();
    (void)registered;
    example::QueueManager m(example::options(args));
    m.connect();
    const example::mm::QueueProxy<std::int64_t> tasks(m.create("get_task_queue"));
    const example::mm::QueueProxy<example::Result> results(m.create("get_result_queue"));
    long done = 0;
    for (;;) {
      std::int64_t n;
      try {
        n = tasks.get();
      } catch (const troupe::EOFError& e) {
        // The client shut the server down while this worker waited for its next task (its stop
        // task's answer can be lost when the server goes at once): the work is over.
        std::fprintf(stderr, "worker: the server has gone (%s); stopping\n", e.what());
        break;
      }
      if (n < 0) break;
      results.put({n, n * n});
      ++done;
    }
    example::say("worker: " + std::to_string(done) + " tasks done");
    return 0;
  } catch (const std::exception& e) {
    args.fail(e.what());
  }
}
