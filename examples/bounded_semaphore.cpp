// The threading docs' BoundedSemaphore example: at most `maxconnections` workers hold a
// "connection" at once.
//
//   maxconnections = 5
//   pool_sema = BoundedSemaphore(value=maxconnections)
//   with pool_sema:
//       conn = connectdb()
//       try: ... finally: conn.close()
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <vector>

#include "troupe/threading.hpp"

namespace threading = troupe::threading;
using namespace std::chrono_literals;

int main() {
  constexpr int maxconnections = 5;
  threading::BoundedSemaphore pool_sema(maxconnections);
  std::atomic<int> open{0}, most{0};

  std::vector<std::unique_ptr<threading::Thread>> clients;
  for (int i = 0; i < 12; ++i) {
    clients.push_back(std::make_unique<threading::Thread>([&, i] {
      std::scoped_lock with{pool_sema};  // with pool_sema:
      int now = ++open;                  // conn = connectdb()
      for (int m = most; now > m && !most.compare_exchange_weak(m, now);) {
      }
      std::printf("client %2d connected    (%d open)\n", i, now);
      threading::Event().wait(20ms);  // use the connection
      --open;                         // conn.close()
    }));
    clients.back()->start();
  }
  for (auto& c : clients) c->join();
  std::printf("at most %d connections were open at once (limit %d)\n", most.load(), maxconnections);
  try {
    pool_sema.release();  // one release too many
  } catch (const troupe::ValueError& e) {
    std::printf("an extra release raises ValueError: %s\n", e.what());
  }
  return most.load() <= maxconnections ? 0 : 1;
}
