// queue_server: the docs' remote manager, serving a task queue and a result queue until a client
// asks it to shut down. Prints the address it listens on (a port 0 resolved) as its first line.
//
//   queue_server --address 127.0.0.1:0 --authkey 736563726574 [--legacy-md5]
//
// Python clients (the docs' programs, unmodified) use it too: the server speaks CPython's manager
// dialect on the same address (doc/interop.md); --legacy-md5 admits Python 3.11 and older.
#include <exception>

#include "queue_common.hpp"

int main(int argc, char** argv) {
  example::Args args(argc, argv, {"--address", "--authkey"}, {"--legacy-md5"},
                     "queue_server --address ADDR --authkey HEX [--legacy-md5]\n(or "
                     "TROUPE_AUTHKEY=HEX in the environment instead of --authkey)");
  try {
    static const bool registered = example::register_queues();
    (void)registered;
    example::QueueManager m(example::options(args));
    auto server = m.get_server();  // Python: m.get_server().serve_forever()
    server->start();
    example::say(server->address().str());
    server->serve_forever();
    example::say("shut down by a client");
    return 0;
  } catch (const std::exception& e) {
    args.fail(e.what());
  }
}
