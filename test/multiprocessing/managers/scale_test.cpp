// A thousand clients on one manager: blocked in a managed Queue's get() they hold no server
// thread (the server's thread count stays a small constant), every one gets its item, and when
// they all go, nothing is left (number_of_objects() is back to what it was).
#include <sys/resource.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "manager.capnp.h"
#include "value.capnp.h"

namespace scale_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;
using Request = troupe::proto::manager::Request;
using Reply = troupe::proto::manager::Reply;

namespace {

constexpr int kClients = 1000;

int threads_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

// A raw client connection that said Hello (each is its own connection, as a client process's).
mp::Connection hello(const mp::Address& address, const mp::AuthenticationString& key) {
  auto c = mp::Client(address, key);
  capnp::MallocMessageBuilder mb;
  auto h = mb.initRoot<troupe::proto::manager::Hello>();
  h.setMagic(0x3172676e4d705274ull);
  h.setVersion(troupe::proto::manager::PROTOCOL_VERSION);
  h.setPid(::getpid());
  c.send_message(mb);
  if (!c.poll(30s)) throw std::runtime_error("no greeting within 30 s");
  (void)c.recv_bytes();
  return c;
}

class ScaleTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    rlimit r{};
    ::getrlimit(RLIMIT_NOFILE, &r);
    if (r.rlim_max != RLIM_INFINITY && r.rlim_max < 2 * kClients + 256)
      GTEST_SKIP() << "RLIMIT_NOFILE's hard limit " << r.rlim_max << " is under "
                   << 2 * kClients + 256;
    saved_ = r;
    // The server process (started after this) inherits the raised limit.
    r.rlim_cur = std::min<rlim_t>(r.rlim_max, 4 * kClients + 1024);
    ::setrlimit(RLIMIT_NOFILE, &r);
    LeakCheck::SetUp();
  }
  void TearDown() override {
    LeakCheck::TearDown();
    ::setrlimit(RLIMIT_NOFILE, &saved_);
  }
  rlimit saved_{};
};

TEST_F(ScaleTest, AThousandClientsBlockedInGetHoldNoServerThread) {
  mm::SyncManager m;
  m.start();
  const int server = *m.process()->pid();
  const int threads_idle = threads_of(server);
  ASSERT_GT(threads_idle, 0);
  auto q = m.Queue<std::int64_t>();
  const std::uint64_t id = q._token().id;
  const std::size_t objects_before = m.number_of_objects();

  std::vector<mp::Connection> clients;
  clients.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(hello(m.address(), mp::current_process().authkey()));
    capnp::MallocMessageBuilder mb;
    auto r = mb.initRoot<Request>();
    r.setCallId(1);
    r.setLane(1);
    auto c = r.initCall();
    c.setObject(id);
    c.setMethod("get");
    c.initArgs(0);
    clients.back().send_message(mb);
  }
  // Each client also holds an object of its own, released when it goes.
  for (auto& c : clients) {
    capnp::MallocMessageBuilder mb;
    auto r = mb.initRoot<Request>();
    r.setCallId(2);
    r.setLane(2);
    r.initCreate().setTypeid("Event");
    c.send_message(mb);
  }
  ASSERT_TRUE(troupe::testing::eventually(
      [&] { return m.number_of_objects() == objects_before + kClients; }, 60s));
  const int threads_busy = threads_of(server);
  // The server's threads: its few I/O threads and the main one, whatever the clients do.
  EXPECT_LE(threads_busy, threads_idle + 2) << "idle " << threads_idle;
  EXPECT_LE(threads_busy, static_cast<int>(std::thread::hardware_concurrency()) + 8);

  for (std::int64_t i = 0; i < kClients; ++i) q.put(i);
  std::int64_t sum = 0;
  for (auto& c : clients) {
    // Two replies each: the Event's proxy and the item, in either order.
    for (int k = 0; k < 2; ++k) {
      ASSERT_TRUE(c.poll(60s));
      auto bytes = c.recv_bytes();
      kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                            bytes.size() / 8);
      capnp::FlatArrayMessageReader reader(words);
      auto r = reader.getRoot<Reply>();
      ASSERT_FALSE(r.isError()) << r.getError().getMessage().cStr();
      if (r.getCallId() == 1) sum += troupe::Codec<std::int64_t>::decode(r.getResult());
    }
  }
  EXPECT_EQ(sum, std::int64_t{kClients} * (kClients - 1) / 2);
  EXPECT_EQ(q.qsize(), 0u);

  clients.clear();  // every client goes at once
  EXPECT_TRUE(
      troupe::testing::eventually([&] { return m.number_of_objects() == objects_before; }, 60s));
  EXPECT_LE(threads_of(server), threads_idle + 2);
}

}  // namespace
}  // namespace scale_test
