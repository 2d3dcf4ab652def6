// Python's shared_memory docs, "SharedMemoryManager", in C++:
//
//   def do_work(shm_name, start, stop): ...  # sums sl[start:stop] into a result slot
//   with SharedMemoryManager() as smm:
//       sl = smm.ShareableList(range(2000))
//       p1 = Process(target=do_work, args=(sl, 0, 1000))
//       p2 = Process(target=do_work, args=(sl, 1000, 2000))
//       p1.start(); p2.start(); p1.join(); p2.join()
//       total_result = sum(sl)
//   # the segment is gone once the manager has shut down
//
// Exits 1 if the sum is wrong or the segment is still in /dev/shm afterwards.
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "troupe/multiprocessing.hpp"
#include "troupe/multiprocessing/managers.hpp"

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
namespace shm = troupe::multiprocessing::shared_memory;

// Replaces sl[start:stop] by zeros and their sum in sl[start] (each worker owns its half).
void do_work(std::string name, std::int64_t start, std::int64_t stop) {
  auto sl = shm::ShareableList::attach(name);
  std::int64_t total = 0;
  for (std::int64_t i = start; i < stop; ++i) {
    total += std::get<std::int64_t>(sl[i]);
    sl.set(i, std::int64_t{0});
  }
  sl.set(start, total);
}
TROUPE_ENTRY(do_work);

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  std::string name;
  std::int64_t total_result = 0;
  {
    mm::SharedMemoryManager smm;
    smm.start();
    std::vector<shm::ShareableItem> items;
    for (std::int64_t i = 0; i < 2000; ++i) items.emplace_back(i);
    auto sl = smm.ShareableList(items);
    auto raw_shm = smm.SharedMemory(128);
    name = sl.shm().name();
    mp::ProcessOptions po;
    po.fork_with_threads = true;  // the manager's link thread; the workers use none of it
    mp::Process p1(po, do_work, name, std::int64_t{0}, std::int64_t{1000});
    mp::Process p2(po, do_work, name, std::int64_t{1000}, std::int64_t{2000});
    p1.start();
    p2.start();
    p1.join();
    p2.join();
    for (const auto& v : sl.to_vector()) total_result += std::get<std::int64_t>(v);
    std::printf("total_result = %lld; segments tracked: %zu\n",
                static_cast<long long>(total_result), smm.list_segments().size());
  }  // ~SharedMemoryManager: the server unlinks both segments
  struct stat st {};
  const bool gone = ::stat(("/dev/shm/" + name).c_str(), &st) != 0;
  std::printf("segment %s after shutdown: %s\n", name.c_str(), gone ? "unlinked" : "STILL THERE");
  return total_result == 1999 * 2000 / 2 && gone ? 0 : 1;
}
