// troupe/multiprocessing/managers/builtins.hpp — SyncManager's typeids as hosted objects: the
// waiting objects (Queue, JoinableQueue, Lock, RLock, Semaphore, BoundedSemaphore, Condition,
// Barrier, Event) and the containers (dict, list, set, Namespace, Value, Array), for any
// manager's registry.
//
//   struct QueueManager : mm::Manager<QueueManager> { using Manager::Manager; };
//   // Python: QueueManager.register('get_task_queue', callable=lambda: task_queue)
//   mm::register_shared_queue(QueueManager::registry(), "get_task_queue");
//
// Arguments follow Python's signatures, by position (`put(item, block=True, timeout=None)`); a
// timeout is seconds as a float, None (or an empty std::optional) for none. Waits hold no
// thread of the server (detail/waits.hpp).
#pragma once

#include <cstddef>
#include <string>

#include "troupe/multiprocessing/managers/registry.hpp"

namespace troupe::multiprocessing::managers {

/// Adds SyncManager's typeids that are built in so far to `registry`: "Queue" and
/// "JoinableQueue" (`maxsize=0`), "Lock", "RLock", "Semaphore" and "BoundedSemaphore"
/// (`value=1`), "Condition" (`lock=None`: a proxy to a Lock or RLock of the same manager, or a
/// new RLock), "Barrier" (`parties, action=None, timeout=None`; an action cannot be sent: any
/// but None is a TypeError), "Event", and the containers "dict", "list", "set", "Namespace",
/// "Value"
/// (`typecode, value`) and "Array" (`typecode, sequence`), each created anew per create.
void register_sync_types(Registry& registry);

/// Adds "Pool" (Python's `Pool(processes=None, initializer=None, initargs=(),
/// maxtasksperchild=None, context=None)`, its worker processes children of the server) and
/// "AsyncResult" to `registry` (register_sync_types calls it; it needs "Iterator" too). Tasks
/// name functions registered with TROUPE_ENTRY in the server's program (pool_proxy.hpp).
void register_pool_types(Registry& registry);

/// Registers `typeid_` as a function with no arguments that returns one managed queue, the same
/// object for every client (Python: `register('get_task_queue', callable=lambda: queue)`). The
/// queue holds any codec value; `maxsize` <= 0 is unbounded.
void register_shared_queue(Registry& registry, std::string typeid_, std::ptrdiff_t maxsize = 0);

}  // namespace troupe::multiprocessing::managers
