// The queue docs' example: a worker thread takes tasks; the main thread waits with join().
//
//   def worker():
//       while True:
//           item = q.get()
//           print(f'Working on {item}')
//           print(f'Finished {item}')
//           q.task_done()
//   threading.Thread(target=worker, daemon=True).start()
//   for item in range(30): q.put(item)
//   q.join()
//   print('All work completed')
//
// With 3.13's shutdown() the worker need not be a daemon: it ends when the queue is shut down.
#include <cstdio>

#include "troupe/queue.hpp"
#include "troupe/threading.hpp"

namespace threading = troupe::threading;
namespace queue = troupe::queue;

int main() {
  queue::Queue<int> q;

  threading::Thread worker([&] {
    try {
      for (;;) {
        int item = q.get();
        std::printf("Working on %d\n", item);
        std::printf("Finished %d\n", item);
        q.task_done();
      }
    } catch (const queue::ShutDown&) {
      std::printf("worker: queue shut down, leaving\n");
    }
  });
  worker.start();

  for (int item = 0; item < 30; ++item) q.put(item);

  q.join();  // block until all tasks are done
  std::printf("All work completed\n");
  q.shutdown();
  worker.join();
  return 0;
}
