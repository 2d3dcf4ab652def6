// SharedMemoryManager (shared_memory_manager.hpp).
#include "troupe/multiprocessing/managers/shared_memory_manager.hpp"

#include <sys/mman.h>

#include <algorithm>

#include "troupe/multiprocessing/managers/detail/link.hpp"
#include "troupe/multiprocessing/resource_tracker.hpp"

namespace troupe::multiprocessing::managers {

namespace {
// A server started by spawn or forkserver looks the registry up by name in a program that may
// never have made a SharedMemoryManager: it exists once the library is loaded.
const bool g_shm_manager_registered = (SharedMemoryManager::registry(), true);

ManagerOptions tracking(ManagerOptions options) {
  options.server.track_segments = true;
  return options;
}
}  // namespace

SharedMemoryManager::SharedMemoryManager(ManagerOptions options)
    : Manager(tracking(std::move(options))) {}

SharedMemoryManager::~SharedMemoryManager() {
  // As BaseManager's: only a server this manager started is shut down (a connected manager's
  // segments stay with the server that tracks them).
  if (!owns_running_server()) return;
  try {
    shutdown();
  } catch (...) {
  }
}

void SharedMemoryManager::track(const std::string& name) {
  auto link = _link();
  link->call([&](proto::manager::Request::Builder r) { r.setTrackSegment(name.c_str()); });
  std::scoped_lock lock(made_m_);
  made_.push_back(name);
}

shared_memory::SharedMemory SharedMemoryManager::SharedMemory(std::size_t size) {
  // As Python's, which dials its address first: before start() (no address), a ValueError, and
  // no segment made.
  (void)address();
  shared_memory::SharedMemory shm(std::nullopt, true, size);
  try {
    track(shm.name());
  } catch (...) {
    shm.unlink();  // as Python: a segment the server does not know must not outlive the call
    throw;
  }
  return shm;
}

shared_memory::ShareableList SharedMemoryManager::ShareableList(
    const std::vector<shared_memory::ShareableItem>& sequence) {
  (void)address();  // as SharedMemory()
  shared_memory::ShareableList list(sequence);
  try {
    track(list.shm().name());
  } catch (...) {
    list.shm().unlink();
    throw;
  }
  return list;
}

std::vector<std::string> SharedMemoryManager::list_segments() {
  auto link = _link();
  auto f = link->call([](proto::manager::Request::Builder r) { r.setListSegments(); });
  return Codec<std::vector<std::string>>::decode(f->root<proto::manager::Reply>().getResult());
}

void SharedMemoryManager::release_segment(const std::string& name) {
  auto link = _link();
  try {
    link->call([&](proto::manager::Request::Builder r) { r.setReleaseSegment(name.c_str()); });
  } catch (const FileNotFoundError&) {
    forget(name);  // unlinked by someone else: the server has forgotten it too
    throw;
  }
  forget(name);
}

void SharedMemoryManager::forget(const std::string& name) noexcept {
  {
    std::scoped_lock lock(made_m_);
    if (std::erase(made_, name) == 0) return;  // not made through this manager: not ours
  }
  // The server unlinked it: this process's resource tracker must not unlink the name again at
  // the end (another segment may have it by then).
  try {
    resource_tracker::unregister_resource("/" + name);
  } catch (...) {
  }
}

void SharedMemoryManager::shutdown() {
  try {
    BaseManager::shutdown();
  } catch (...) {
    unlink_leftovers();
    throw;
  }
  unlink_leftovers();
}

void SharedMemoryManager::unlink_leftovers() noexcept {
  // A clean shutdown unlinked them all on the server (ENOENT here); a killed server did not.
  std::vector<std::string> made;
  {
    std::scoped_lock lock(made_m_);
    made.swap(made_);
  }
  for (const auto& name : made) {
    (void)::shm_unlink(("/" + name).c_str());
    try {
      resource_tracker::unregister_resource("/" + name);
    } catch (...) {
    }
  }
}

}  // namespace troupe::multiprocessing::managers
