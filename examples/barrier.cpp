// The threading docs' Barrier example: a server and a client start together.
//
//   b = Barrier(2, timeout=5)
//   def server(): start_server(); b.wait(); while True: connection = accept_connection(); ...
//   def client(): b.wait(); while True: connection = make_connection(); ...
#include <chrono>
#include <cstdio>

#include "troupe/queue.hpp"
#include "troupe/threading.hpp"

namespace threading = troupe::threading;
namespace queue = troupe::queue;
using namespace std::chrono_literals;

int main() {
  threading::Barrier b(
      2, [] { std::printf("both sides ready: go\n"); }, 5s);
  queue::Queue<int> wire(1);  // stands in for the network

  threading::Thread server({.name = "server"}, [&] {
    std::printf("server: started, waiting for the client\n");
    int index = b.wait();
    std::printf("server: passed the barrier (index %d)\n", index);
    for (int i = 0; i < 3; ++i) std::printf("server: got request %d\n", wire.get());
  });
  threading::Thread client({.name = "client"}, [&] {
    threading::Event().wait(50ms);  // the client comes up later
    std::printf("client: started\n");
    int index = b.wait();
    std::printf("client: passed the barrier (index %d)\n", index);
    for (int i = 1; i <= 3; ++i) wire.put(i);
  });
  server.start();
  client.start();
  server.join();
  client.join();

  threading::Barrier lonely(2, {}, 100ms);
  try {
    lonely.wait();
  } catch (const threading::BrokenBarrierError& e) {
    std::printf("a wait with no partner times out and breaks the barrier: %s\n", e.what());
  }
  return 0;
}
