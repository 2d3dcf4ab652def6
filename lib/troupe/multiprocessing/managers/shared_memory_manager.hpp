// troupe/multiprocessing/managers/shared_memory_manager.hpp — Python's
// `multiprocessing.managers.SharedMemoryManager`: a manager whose server tracks the shared
// memory segments made through it and unlinks them when it stops.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "troupe/multiprocessing/managers/manager.hpp"
#include "troupe/multiprocessing/shared_memory.hpp"

namespace troupe::multiprocessing::managers {

/// Python: `SharedMemoryManager(address=None, authkey=None)`. `SharedMemory(size)` and
/// `ShareableList(sequence)` make a segment in this process and have the server track it; the
/// server unlinks every tracked segment when it stops (`shutdown()`, the destructor). If the
/// server process died first (killed), shutdown() unlinks the segments this manager made, and
/// the resource tracker unlinks them when the process tree ends in any case: nothing is left in
/// /dev/shm. It is a BaseManager: `register_` and `create` work as for any manager class.
class SharedMemoryManager : public Manager<SharedMemoryManager> {
public:
  explicit SharedMemoryManager(ManagerOptions options = {});
  /// Python: `SharedMemoryManager(address, authkey)`.
  SharedMemoryManager(std::optional<Address> address, std::optional<AuthenticationString> authkey,
                      ManagerOptions options = {})
      : SharedMemoryManager(
            with_address(std::move(address), std::move(authkey), std::move(options))) {}
  /// Shuts the server down (as BaseManager's), then unlinks what is left of this manager's
  /// segments.
  ~SharedMemoryManager() override;

  /// Python: `SharedMemory(size)`: a new segment of `size` bytes, tracked by the server.
  /// @throws ValueError before start() (no address, as Python's); what SharedMemory throws;
  /// what the server answers (it is unlinked then).
  shared_memory::SharedMemory SharedMemory(std::size_t size);
  /// Python: `ShareableList(sequence)`: a new ShareableList, its segment tracked by the server.
  shared_memory::ShareableList ShareableList(
      const std::vector<shared_memory::ShareableItem>& sequence);

  /// The server's `list_segments()`: the names it tracks, in the order they came.
  std::vector<std::string> list_segments();
  /// The server's `release_segment(name)`: unlinks the segment now and forgets it.
  /// @throws ValueError if the server does not track `name` (as CPython's); FileNotFoundError
  /// if it is gone already (the server forgets it all the same).
  void release_segment(const std::string& name);

  /// BaseManager::shutdown(), then the segments this manager made that are still there are
  /// unlinked (the server did not: it was killed, or never answered).
  void shutdown() override;

private:
  void track(const std::string& name);
  void forget(const std::string& name) noexcept;
  void unlink_leftovers() noexcept;
  std::mutex made_m_;              // SharedMemory() may be called from several threads
  std::vector<std::string> made_;  // segments made through this manager
};

}  // namespace troupe::multiprocessing::managers
