// The docs' remote-manager recipe ("Using a remote manager"), shared by queue_server,
// queue_worker and queue_client: a manager class serving a task queue and a result queue.
#pragma once

#include <cstdio>
#include <string>

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

inline bool register_queues() {
  mm::register_shared_queue(QueueManager::registry(), "get_task_queue");
  mm::register_shared_queue(QueueManager::registry(), "get_result_queue");
  return true;
}

/// The manager's options from --address and --authkey (hex).
inline mm::ManagerOptions options(const Args& args) {
  mm::ManagerOptions o;
  o.address = mp::Address::parse(args.get("--address"));
  o.authkey = mp::AuthenticationString::from_hex(args.get("--authkey"));
  return o;
}

inline void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

}  // namespace example
