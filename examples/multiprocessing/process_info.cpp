// The first example of Python's multiprocessing docs ("Process class"), in C++, under each
// start method:
//
//   def info(title): print(title); print('parent process:', os.getppid()); …
//   def f(name): info('function f'); print('hello', name)
//   if __name__ == '__main__':
//       info('main line')
//       p = Process(target=f, args=('bob',)); p.start(); p.join()
//
// Under spawn the child is a fresh exec of this program: f is registered with TROUPE_ENTRY and
// main starts with freeze_support, the analogue of `if __name__ == '__main__':`. Under
// forkserver it is a fork of the forkserver (which freeze_support runs too): getppid() is the
// server's pid, as in Python, and parent_process() is the process that started it.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "troupe/multiprocessing.hpp"

namespace mp = troupe::multiprocessing;

void info(const std::string& title) {
  std::printf("%s\n", title.c_str());
  std::printf("process name: %s\n", mp::current_process().name().c_str());
  std::printf("parent process: %d\n", static_cast<int>(::getppid()));
  if (auto parent = mp::parent_process())
    std::printf("parent_process(): %s, pid %d\n", parent->name().c_str(), *parent->pid());
  std::printf("process id: %d\n", static_cast<int>(::getpid()));
  std::fflush(stdout);
}

void f(std::string name) {
  info("function f");
  std::printf("hello %s\n", name.c_str());
}
TROUPE_ENTRY(f);

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);  // a spawned child runs f here and exits; so does the server
  info("main line");
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    std::printf("--- start method %s ---\n", method);
    std::fflush(stdout);
    mp::Process p = mp::get_context(method).Process(f, std::string("bob"));
    p.start();
    p.join();
    if (p.exitcode() != 0) {
      std::fprintf(stderr, "process_info: the %s child failed: %s\n", method, p.repr().c_str());
      return 1;
    }
  }
  return 0;
}
