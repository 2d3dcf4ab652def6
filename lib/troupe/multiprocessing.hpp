// troupe/multiprocessing.hpp — `import multiprocessing` (so far: connections, Pipe, Listener,
// Client, the authentication handshake, TLS, Process, the synchronization primitives,
// Value/Array, shared_memory). `namespace mp = troupe::multiprocessing;`
#pragma once

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/context.hpp"
#include "troupe/multiprocessing/forkserver.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/pool.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/queues.hpp"
#include "troupe/multiprocessing/resource_tracker.hpp"
#include "troupe/multiprocessing/shared_memory.hpp"
#include "troupe/multiprocessing/sharedctypes.hpp"
#include "troupe/multiprocessing/synchronize.hpp"
