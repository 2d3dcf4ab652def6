#include "troupe/multiprocessing/managers/sync_manager.hpp"

#include <mutex>

namespace troupe::multiprocessing::managers {

void SyncManager::types() {
  static std::once_flag once;
  std::call_once(once, [] { register_sync_types(registry()); });
}

namespace {
// A server started by spawn or forkserver looks SyncManager's registry up by name in a program
// that never made a SyncManager: the typeids are registered while the library loads.
const bool g_sync_manager_registered = (SyncManager::types(), true);
}  // namespace

}  // namespace troupe::multiprocessing::managers

namespace troupe::multiprocessing {

std::unique_ptr<managers::SyncManager> Manager(managers::ManagerOptions options) {
  auto m = std::make_unique<managers::SyncManager>(std::move(options));
  m->start();
  return m;
}

}  // namespace troupe::multiprocessing
