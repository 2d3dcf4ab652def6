// BaseManager with its server in a child process, under each start method: start, create, call,
// shutdown; a killed server; proxies that travel to other processes.
#include "troupe/multiprocessing/managers/manager.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <thread>

#include "troupe/entry.hpp"
#include "troupe/multiprocessing/context.hpp"
#include "troupe/multiprocessing/pool.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/queues.hpp"
#include "troupe/unique_fd.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"
#include "test_types.hpp"

namespace managers_test {

// A child process's target: uses a proxy it was given.
void bump(mm::Proxy<Counter> counter, int times) {
  for (int i = 0; i < times; ++i) counter.call<&Counter::increment>();
}
TROUPE_ENTRY(bump);

int twice(int x) {
  return 2 * x;
}
TROUPE_ENTRY(twice);

// A child process's target: takes a proxy from a process queue and uses it.
void take_and_bump(mp::Queue<mm::Proxy<Counter>> queue) {
  auto counter = queue.get(true, std::chrono::seconds(60));
  counter.call<&Counter::increment>();
}
TROUPE_ENTRY(take_and_bump);

// A child process's target: starts a manager's server with `method`, sends its pid, and waits
// (until it is killed).
void start_a_manager(std::string method, mp::Connection& report) {
  mm::ManagerOptions o;
  o.start_method = method;
  TestManager m(o);
  m.start();
  report.send(*m.process()->pid());
  (void)report.recv<int>();  // never sent
}
TROUPE_ENTRY(start_a_manager);

// start(initializer, initargs): the initializer runs in the server process before it serves.
std::string g_server_mark;
void mark_server(std::string mark, int times) {
  for (int i = 0; i < times; ++i) g_server_mark += mark;
}
TROUPE_ENTRY(mark_server);
struct MarkReader {
  std::string read() const { return g_server_mark; }
};
TROUPE_EXPOSE(MarkReader, read);
static const bool mark_reader_registered = [] {
  TestManager::register_<MarkReader>("MarkReader");
  return true;
}();

namespace {

using namespace std::chrono_literals;
using troupe::testing::eventually;

class ManagerTest : public troupe::testing::StartMethodTest {};

TEST_P(ManagerTest, StartCreateCallShutdown) {
  TestManager m(options());
  m.start();
  ASSERT_TRUE(m.process().has_value());
  auto maths = m.create<Maths>("Maths");
  EXPECT_EQ(maths.call<&Maths::add>(1, 2), 3);
  EXPECT_EQ(m.number_of_objects(), 1u);
  maths = {};
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
  m.shutdown();
  EXPECT_FALSE(m.process()->is_alive());
  EXPECT_EQ(m.process()->exitcode(), 0);
}

// Python's positional BaseManager(address, authkey) and start(initializer, initargs).
TEST_P(ManagerTest, StartRunsItsInitializerInTheServerFirst) {
  if (skip_fork())  // the second server is forked from a process that runs the first's link
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  TestManager m(std::nullopt, mp::AuthenticationString::random(), options());
  m.start(&mark_server, std::string("ok"), 2);
  EXPECT_EQ(m.create<MarkReader>("MarkReader").call<&MarkReader::read>(), "okok");
  EXPECT_EQ(g_server_mark, "");  // it ran there, not here
  mm::SyncManager s(std::nullopt, std::nullopt, options());
  s.start();
  auto d = s.dict<std::string, std::string>();
  d["k"] = "v";
  EXPECT_TRUE(d["k"] == "v");  // an element compares as its value
  EXPECT_EQ(d["k"], std::string("v"));
  EXPECT_NE(d["k"], "w");
  s.shutdown();
  m.shutdown();
}

TEST_P(ManagerTest, StartTwiceIsAProcessError) {
  TestManager m(options());
  m.start();
  EXPECT_THROW(m.start(), mp::ProcessError);
}

// Python's state rules: get_server() only before start() (ProcessError after it, and after a
// shutdown); join() of a manager that started no process returns at once; connect() makes a
// shut-down manager usable again once a server answers at its address (CPython #86320).
TEST_P(ManagerTest, GetServerJoinAndConnectFollowPythonsStates) {
  TestManager m(options());
  m.start();
  EXPECT_THROW((void)m.get_server(), mp::ProcessError);
  auto o = options();
  o.address = m.address();
  TestManager client(o);
  client.connect();
  EXPECT_NO_THROW(client.join(10ms));  // no process of its own
  EXPECT_EQ(client.create<Maths>("Maths").call<&Maths::add>(2, 3), 5);
  client.shutdown();  // a connected manager's shutdown stops the server (managers.md)
  m.join(10s);
  EXPECT_FALSE(m.process()->is_alive());
  EXPECT_THROW((void)client.create<Maths>("Maths"), mp::ProcessError);  // shut down
  TestManager again(o);  // a new server at the same address
  again.start();
  client.connect();
  EXPECT_EQ(client.create<Maths>("Maths").call<&Maths::add>(3, 4), 7);
  m.shutdown();
  EXPECT_THROW((void)m.get_server(), mp::ProcessError);
}

TEST_P(ManagerTest, TheDestructorShutsTheServerDown) {
  int pid = 0;
  {
    TestManager m(options());
    m.start();
    pid = *m.process()->pid();
    EXPECT_EQ(::kill(pid, 0), 0);
  }
  EXPECT_NE(::kill(pid, 0), 0);  // reaped
}

TEST_P(ManagerTest, AFailureToListenIsRaisedByStart) {
  auto o = options();
  o.address = mp::Address::parse("unix:/nonexistent-troupe-dir/manager.sock");
  TestManager m(o);
  EXPECT_THROW(m.start(), troupe::FileNotFoundError);
}

TEST_P(ManagerTest, APendingCallFailsAtOnceWhenTheServerProcessIsKilled) {
  TestManager m(options());
  m.start();
  auto gate = m.create("Gate");
  std::thread killer([&] {
    // Another thread, another lane: it runs beside the waiting call.
    if (eventually([&] { return gate._callmethod<int>("waiting") == 1; })) m.process()->kill();
  });
  try {
    gate._callmethod<std::string>("wait");
    ADD_FAILURE() << "the wait returned";
  } catch (const troupe::EOFError& e) {
    EXPECT_NE(std::string(e.what()).find(m.address().str()), std::string::npos) << e.what();
  }
  killer.join();
  m.shutdown();  // returns: the process is gone already
  EXPECT_FALSE(m.process()->is_alive());
}

// A proxy passed to a method of its own server, which runs in a process of its own: the method
// calls it there (the server process connects to itself, as CPython's does).
TEST_P(ManagerTest, AProxyPassedToItsOwnServerWorksThere) {
  TestManager m(options());
  m.start();
  auto counter = m.create<Counter>("Counter");
  auto depositor = m.create<Depositor>("Depositor");
  EXPECT_EQ(depositor.call<&Depositor::deposit>(counter, 3), 3);
  EXPECT_EQ(counter.call<&Counter::value>(), 3);
  EXPECT_EQ(depositor.call<&Depositor::deposit>(counter, 2), 5);
  // The server's own proxy to the counter was dropped when each call ended: two objects.
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 2; }))
      << m.number_of_objects();
  m.shutdown();
}

TEST_P(ManagerTest, AProxyTravelsToAChildProcess) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  TestManager m(options());
  m.start();
  auto counter = m.create<Counter>("Counter");
  // Enough calls that the link runs its thread: a thread of troupe's that a fork leaves behind
  // safely (the child reconnects), which Process::start does not count as the user's.
  for (int i = 0; i < 6; ++i) EXPECT_EQ(counter.call<&Counter::value>(), 0);
  mp::ProcessOptions po;
  po.start_method = GetParam();
  mp::Process child(po, &bump, counter, 5);
  child.start();
  child.join(60s);
  EXPECT_EQ(child.exitcode(), 0);
  EXPECT_EQ(counter.call<&Counter::value>(), 5);
  // The child's references went with it.
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 1; }));
}

// A started manager with a key of its own (not the process's).
std::unique_ptr<TestManager> start_with_own_key(mm::ManagerOptions o) {
  o.authkey = mp::AuthenticationString::random();
  auto m = std::make_unique<TestManager>(o);
  m->start();
  return m;
}

// A manager with a key of its own (not the process's): its proxy given to a child as a start
// argument carries the key (CPython's BaseProxy.__reduce__ while spawning), so the child
// connects under spawn and forkserver too; a proxy in any other message carries none.
TEST_P(ManagerTest, AProxyOfAManagerWithItsOwnKeyTravelsToAChildProcess) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  auto m = start_with_own_key(options());
  auto counter = m->create<Counter>("Counter");
  mp::Process child(child_options(), &bump, counter, 5);
  child.start();
  child.join(60s);
  EXPECT_EQ(child.exitcode(), 0);
  EXPECT_EQ(counter.call<&Counter::value>(), 5);
  capnp::MallocMessageBuilder mb;
  auto v = mb.initRoot<troupe::proto::Value>();
  troupe::Codec<mm::Proxy<Counter>>::encode(counter, v);
  ASSERT_TRUE(v.asReader().isRef());
  EXPECT_FALSE(v.asReader().getRef().hasAuthkey());
  // A key in a Ref outside a child's start arguments is ignored (nobody else chooses the key
  // this process connects with): a wrong one changes nothing.
  const auto wrong = mp::AuthenticationString::random();
  v.getRef().setAuthkey(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(wrong.bytes().data()),
                                            wrong.bytes().size()));
  auto received = troupe::Codec<mm::Proxy<Counter>>::decode(v.asReader());  // claims its park
  EXPECT_EQ(received.call<&Counter::value>(), 5);
}

// A pool's initargs are encoded again for each worker as it starts, as a child's start
// arguments are (CPython pickles them while spawning the worker): a proxy among them, of a
// manager with a key of its own, carries the key, and the initializer reaches the manager.
TEST_P(ManagerTest, AProxyOfAManagerWithItsOwnKeyReachesAPoolsInitializer) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  auto m = start_with_own_key(options());
  auto counter = m->create<Counter>("Counter");
  {
    mp::Pool pool(mp::PoolOptions{.processes = 2,
                                  .initializer = {&bump, counter, 5},
                                  .context = mp::get_context(GetParam())});
    EXPECT_EQ(pool.apply(&twice, 4), 8);
    pool.close();
    pool.join();
  }
  EXPECT_EQ(counter.call<&Counter::value>(), 10) << "each of the 2 workers adds 5 at its start";
}

// CPython's _TestInitializers.test_pool_initializer: a Pool starts its workers at once, and
// each runs the initializer, even if no task ever comes.
TEST_P(ManagerTest, APoolsInitializerRunsWithoutATask) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  TestManager m(options());
  m.start();
  auto counter = m.create<Counter>("Counter");
  mp::Pool pool(mp::PoolOptions{
      .processes = 1, .initializer = {&bump, counter, 1}, .context = mp::get_context(GetParam())});
  pool.close();
  pool.join();
  EXPECT_EQ(counter.call<&Counter::value>(), 1);
}

TEST_P(ManagerTest, AProxyTravelsThroughAProcessQueue) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  TestManager m(options());
  m.start();
  mp::Queue<mm::Proxy<Counter>> queue;
  mp::ProcessOptions po;
  po.start_method = GetParam();
  po.fork_with_threads = true;
  mp::Process child(po, &take_and_bump, queue);
  child.start();
  {
    auto counter = m.create<Counter>("Counter");
    queue.put(counter);
  }  // dropped here: the parked reference keeps the object for the child
  child.join(60s);
  EXPECT_EQ(child.exitcode(), 0);
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
}

TEST_P(ManagerTest, TheServerEndsWhenTheProcessThatStartedItIsKilled) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  if (GetParam() == "forkserver")
    GTEST_SKIP() << "the server would be a child of the killed process's forkserver, which this "
                    "test could not reap";
  // Python's server outlives a BaseManager whose process is killed; troupe's watches it. The
  // orphaned server comes to this process (a subreaper for the test's length), which reaps it.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  struct Unset {
    ~Unset() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } unset;
  auto [mine, theirs] = mp::Pipe();
  mp::Process owner(child_options(), &start_a_manager, GetParam(), std::move(theirs));
  owner.start();
  ASSERT_TRUE(mine.poll(60s));
  const int server = mine.recv<int>();
  troupe::UniqueFd fd = troupe::pidfd_open(server);
  ASSERT_TRUE(fd) << "pidfd_open of the server, pid " << server;
  owner.kill();
  owner.join();
  pollfd p{fd.get(), POLLIN, 0};
  const int ended = ::poll(&p, 1, 60000);
  EXPECT_EQ(ended, 1) << "the server (pid " << server << ") outlived the process that started it";
  if (ended != 1) ::kill(server, SIGKILL);
  int status = 0;
  EXPECT_EQ(::waitpid(server, &status, 0), server);
  EXPECT_TRUE(WIFEXITED(status)) << "status " << status;
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ManagerTest,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace managers_test
