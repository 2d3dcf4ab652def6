// troupe/multiprocessing.hpp — `import multiprocessing` (so far: connections, Pipe, Listener,
// Client, the authentication handshake, TLS, Process). `namespace mp = troupe::multiprocessing;`
#pragma once

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/process.hpp"
