// The docs' remote-manager recipe ("Using a remote manager"), shared by queue_server,
// queue_worker and queue_client: a manager class serving a task queue and a result queue.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "troupe/multiprocessing.hpp"
#include "troupe/multiprocessing/managers.hpp"

#include "../connection/args.hpp"

namespace example {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;

/// Python: `class QueueManager(BaseManager): pass`, with `get_task_queue` and `get_result_queue`
/// registered; here on every side (the clients' proxies only need the typeids).
struct QueueManager : mm::Manager<QueueManager> {
  using Manager::Manager;
};

/// A result: [n, n*n]. A pair travels as a list of two ints, which a Python worker's
/// `[n, n * n]` (or a tuple) also is; a std::vector<std::int64_t> would travel packed, as bytes
/// to a Python client (doc/interop.md).
using Result = std::pair<std::int64_t, std::int64_t>;

inline bool register_queues() {
  mm::register_shared_queue(QueueManager::registry(), "get_task_queue");
  mm::register_shared_queue(QueueManager::registry(), "get_result_queue");
  return true;
}

/// The manager's options from --address, --authkey (hex; or TROUPE_AUTHKEY) and --legacy-md5 (a
/// server that also admits CPython 3.11 and older clients, whose handshake is HMAC-MD5; a client
/// that reaches a CPython 3.11 or older manager).
inline mm::ManagerOptions options(const Args& args) {
  mm::ManagerOptions o;
  o.address = mp::Address::parse(args.get("--address"));
  o.authkey = authkey(args);
  o.server.listener.auth.legacy_md5 = args.flag("--legacy-md5");
  o.link.auth.legacy_md5 = args.flag("--legacy-md5");
  return o;
}

inline void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

}  // namespace example
