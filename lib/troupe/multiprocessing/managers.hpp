// troupe/multiprocessing/managers.hpp — `import multiprocessing.managers`: managers (servers of
// objects), proxies, and the registration of C++ classes (doc/multiprocessing/managers.md).
//
//   namespace mp = troupe::multiprocessing;
//   mp::managers::BaseManager, mp::managers::Manager<Self>, mp::managers::Proxy<T>,
//   mp::managers::BaseProxy, mp::managers::Server, TROUPE_EXPOSE(Class, methods...)
#pragma once

#include "troupe/multiprocessing/managers/builtins.hpp"
#include "troupe/multiprocessing/managers/lane.hpp"
#include "troupe/multiprocessing/managers/manager.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"
#include "troupe/multiprocessing/managers/registry.hpp"
#include "troupe/multiprocessing/managers/server.hpp"
#include "troupe/multiprocessing/managers/shared_memory_manager.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
