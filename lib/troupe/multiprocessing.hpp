// troupe/multiprocessing.hpp — `import multiprocessing` (so far: connections, Pipe, Listener,
// Client, the authentication handshake, TLS, Process, the synchronization primitives,
// Value/Array). `namespace mp = troupe::multiprocessing;`
#pragma once

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/sharedctypes.hpp"
#include "troupe/multiprocessing/synchronize.hpp"
