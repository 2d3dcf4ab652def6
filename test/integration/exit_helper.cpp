// A program for thread_exit_test: what happens to threads when main returns.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "troupe/concurrent/futures.hpp"
#include "troupe/threading.hpp"

namespace threading = troupe::threading;
namespace futures = troupe::concurrent::futures;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (std::strcmp(mode, "non-daemon") == 0) {
    // Static: it outlives main, so only the exit handler can join it.
    static threading::Thread t([] {
      std::this_thread::sleep_for(200ms);
      std::printf("worker finished\n");
      std::fflush(stdout);
    });
    t.start();
  } else if (std::strcmp(mode, "daemon") == 0) {
    static threading::Thread t({.daemon = true}, [] {
      for (;;) std::this_thread::sleep_for(10ms);
    });
    t.start();
  } else if (std::strcmp(mode, "daemon-local") == 0) {
    // A daemon Thread object that goes out of scope while its thread runs forever.
    threading::Thread t({.daemon = true}, [] {
      for (;;) std::this_thread::sleep_for(10ms);
    });
    t.start();
  } else if (std::strcmp(mode, "exception") == 0) {
    threading::Thread t({.name = "thrower"}, [] { throw std::runtime_error("oops"); });
    t.start();
    t.join();
    std::printf("main continues\n");
  } else if (std::strcmp(mode, "executor-then-thread") == 0) {
    // Python's order at exit: the executors shut down (threading._register_atexit) before the
    // non-daemon threads are joined, so a thread that keeps submitting is refused and ends.
    // The executor is used before the thread starts: its exit step was needed first. The
    // Thread object is built first, so its destructor runs after the exit steps.
    static futures::ThreadPoolExecutor* ex = nullptr;
    static threading::Thread t([] {
      for (int i = 0; i < 20000; ++i) {
        try {
          ex->submit([] {}).result();
        } catch (const troupe::RuntimeError& e) {
          std::printf("submit refused: %s\n", e.what());
          std::fflush(stdout);
          return;
        }
        std::this_thread::sleep_for(1ms);
      }
      std::printf("never refused\n");
      std::fflush(stdout);
    });
    static futures::ThreadPoolExecutor executor(1);
    ex = &executor;
    executor.submit([] {}).result();
    t.start();
  } else {
    std::fprintf(stderr,
                 "usage: exit_helper non-daemon|daemon|daemon-local|exception|"
                 "executor-then-thread\n");
    return 2;
  }
  std::printf("main returns\n");
  std::fflush(stdout);
  return 0;
}
