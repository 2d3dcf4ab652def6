// troupe clients on a manager served by CPython (issue 18, CPython's dialect from the client
// side): every local python3 (the system's and pyenv's, 3.8 and later) runs an unmodified
// multiprocessing.managers server (SyncManager's typeids, a shared queue, Python classes), over
// TCP and a Unix socket; a troupe SyncManager connects to it and uses the sync types, the
// containers, Python classes with their exceptions, method_to_typeid and nested proxies. A wrong
// key is refused; a server killed while a call waits fails the call at once; shutdown() stops it.
// Skipped, visibly, when no python3 is found.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/multiprocessing/managers.hpp"

#include "child_process.hpp"
#include "leak_check.hpp"
#include "python_key.hpp"
#include "test_types.hpp"

namespace managers_test {
namespace {

using namespace std::chrono_literals;
using troupe::testing::ChildProcess;
using troupe::testing::eventually;
using troupe::testing::find_pythons;

// The server: unmodified multiprocessing.managers code. argv: the address (a Python literal);
// the key in the environment. Prints its address in troupe's syntax, then serves until shut
// down.
constexpr const char* kServer = R"PY(
import multiprocessing, os, queue, sys
from multiprocessing.managers import SyncManager

class Maths:
    def add(self, a, b):
        return a + b
    def fail(self, text):
        raise ValueError(text)
    def missing(self, key):
        return {}[key]
    def local_error(self):
        class Local(Exception):
            pass
        raise Local('a class pickle cannot name')
    def unpicklable(self):
        return lambda: 0
    def nested(self):
        return {'a': [1, 2], 'b': [3]}
    def pair(self):
        return (7, 'seven')
    def kinds(self, *args):
        return [type(a).__name__ for a in args]

class Counter:
    def __init__(self):
        self.n = 0
    def increment(self):
        self.n += 1
        return self.n

class Factory:
    def make_counter(self):
        return Counter()

shared = queue.Queue()

class M(SyncManager):
    pass

M.register('get_queue', callable=lambda: shared)
M.register('Maths', Maths)
M.register('Counter', Counter)
M.register('Made', create_method=False)  # what make_counter returns (its callable: none)
M.register('Factory', Factory, method_to_typeid={'make_counter': 'Made'})

key = bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY'])
# The proxies it rebuilds (another manager's, stored in its containers) connect with it.
multiprocessing.current_process().authkey = key
m = M(address=eval(sys.argv[1]), authkey=key)
s = m.get_server()
a = s.address
if isinstance(a, bytes):
    a = a.decode()
print(('%s:%d' % a) if isinstance(a, tuple) else 'unix:' + a, flush=True)
s.serve_forever()
)PY";

#if defined(TROUPE_ASAN) || defined(TROUPE_TSAN)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

class PythonServersTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    LeakCheck::SetUp();
    key_.emplace();
    pythons_ = find_pythons();
    if (kSanitized && pythons_.size() > 2) {
      // Under the sanitizers the client is what is checked: the oldest and the newest Python.
      auto by_minor = [](const auto& a, const auto& b) { return a.minor < b.minor; };
      const auto [oldest, newest] = std::minmax_element(pythons_.begin(), pythons_.end(), by_minor);
      pythons_ = {*oldest, *newest};
    }
  }
  void TearDown() override {
    server_.reset();
    key_.reset();
    LeakCheck::TearDown();
  }

  // Starts `py`'s server at `literal` (a Python address); its address in troupe's syntax.
  mp::Address start(const troupe::testing::Python& py, const std::string& literal) {
    server_.emplace(std::vector<std::string>{py.exe, "-c", kServer, literal}, true);
    auto line = server_->read_line(60s);
    if (!line) throw std::runtime_error("the Python server did not start");
    return mp::Address::parse(*line);
  }

  mm::ManagerOptions options(const mp::Address& a) {
    mm::ManagerOptions o;
    o.address = a;
    o.authkey = key_->key();
    o.link.auth.legacy_md5 = true;  // 3.11 and older answer with HMAC-MD5
    return o;
  }

  // Everything a troupe client does with a Python manager, checked.
  void use(const mp::Address& a) {
    mm::SyncManager m(options(a));
    m.connect();
    ASSERT_TRUE(m._link()->python());
    const auto base = m.number_of_objects();

    // Queues, with timeouts and Python's exceptions.
    {
      auto q = m.Queue<std::string>();
      q.put("one");
      EXPECT_EQ(q.qsize(), 1u);
      EXPECT_FALSE(q.empty());
      EXPECT_EQ(q.get(true, 5s), "one");
      EXPECT_THROW(q.get(true, 50ms), troupe::queue::Empty);
      EXPECT_THROW(q.get_nowait(), troupe::queue::Empty);
      auto small = m.Queue<std::int64_t>(1);
      small.put(1);
      EXPECT_THROW(small.put(2, true, 50ms), troupe::queue::Full);
      auto shared = mm::QueueProxy<std::pair<std::int64_t, std::string>>(m.create("get_queue"));
      shared.put({3, "three"});
      EXPECT_EQ(shared.get(true, 5s), std::make_pair(std::int64_t{3}, std::string("three")));
      // Pipelined: 20 puts then 20 gets in flight on this thread's connection, in order.
      boost::asio::io_context io;
      int put = 0;
      std::vector<std::string> got;
      for (int i = 0; i < 20; ++i)
        q.async_put(std::to_string(i),
                    boost::asio::bind_executor(io, [&](std::exception_ptr e, std::monostate) {
                      EXPECT_FALSE(e);
                      ++put;
                    }));
      for (int i = 0; i < 20; ++i)
        q.async_get(boost::asio::bind_executor(io, [&](std::exception_ptr e, std::string v) {
          EXPECT_FALSE(e);
          got.push_back(std::move(v));
        }));
      io.run();
      EXPECT_EQ(put, 20);
      ASSERT_EQ(got.size(), 20u);
      for (int i = 0; i < 20; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], std::to_string(i));
    }
    // dict, list, Namespace, Value.
    {
      auto d = m.dict<std::string, std::int64_t>();
      d.set("a", 1);
      d.set("b", 2);
      EXPECT_EQ(d.get("a"), 1);
      EXPECT_EQ(d.size(), 2u);
      EXPECT_TRUE(d.contains("b"));
      EXPECT_FALSE(d.get("zz").has_value());
      EXPECT_THROW((void)d["zz"].get(), troupe::KeyError);
      // A C++ pair key is a Python tuple key (a list would be unhashable there).
      auto pairs = m.dict<std::pair<std::int64_t, std::string>, std::int64_t>();
      pairs.set({1, "x"}, 5);
      EXPECT_EQ(pairs.get({1, "x"}), 5);
      EXPECT_TRUE(pairs.contains({1, "x"}));
      EXPECT_EQ(pairs.pop({1, "x"}), 5);
      EXPECT_EQ(pairs.size(), 0u);
      auto l = m.list<std::int64_t>({3, 1, 2});
      l.append(4);
      EXPECT_EQ(l.size(), 4u);
      EXPECT_EQ(l.get(3), 4);
      EXPECT_THROW(l.get(99), troupe::IndexError);
      auto ns = m.Namespace();
      ns.set("x", std::int64_t{10});
      EXPECT_EQ(ns.get<std::int64_t>("x"), 10);
      EXPECT_THROW(ns.get<std::int64_t>("nope"), troupe::AttributeError);
      auto v = m.Value<std::int64_t>("i", 5);
      v.set(7);
      EXPECT_EQ(v.get(), 7);
      EXPECT_EQ(v._getvalue<std::int64_t>(), 7);  // CPython sends the managers.Value itself
      EXPECT_EQ((ns._getvalue<std::map<std::string, std::int64_t>>()),
                (std::map<std::string, std::int64_t>{{"x", 10}}));
      // CPython's Array is an array.array, which its manager pickles as (typecode, bytes).
      auto a = m.Array<double>("d", {0.5, 1.5, -2.0});
      EXPECT_EQ(a.get(1), 1.5);
      EXPECT_EQ(a.slice(1, std::nullopt), (std::vector<double>{1.5, -2.0}));
      EXPECT_EQ(a.tolist(), (std::vector<double>{0.5, 1.5, -2.0}));
      EXPECT_EQ(l.slice(std::nullopt, std::nullopt, -2), (std::vector<std::int64_t>{4, 1}));
      l.erase_slice(0, 2);
      EXPECT_EQ(l.size(), 2u);
    }
    // Lock, Event.
    {
      auto lock = m.Lock();
      EXPECT_TRUE(lock.acquire());
      EXPECT_FALSE(lock.acquire(false));
      lock.release();
      auto e = m.Event();
      EXPECT_FALSE(e.wait(20ms));
      e.set();
      EXPECT_TRUE(e.is_set());
      EXPECT_TRUE(e.wait(5s));
    }
    // Python classes: results, exceptions as their classes, what cannot cross as RemoteError.
    {
      auto maths = m.create("Maths");
      EXPECT_EQ(maths._callmethod<std::int64_t>("add", 2, 3), 5);
      EXPECT_EQ(maths._callmethod<std::string>("add", std::string("a"), std::string("b")), "ab");
      EXPECT_EQ(maths._callmethod<double>("add", 0.5, 2), 2.5);
      try {
        maths._callmethod("fail", std::string("bad value"));
        ADD_FAILURE() << "no ValueError";
      } catch (const troupe::ValueError& e) {
        EXPECT_NE(std::string(e.what()).find("bad value"), std::string::npos) << e.what();
      }
      try {
        maths._callmethod("missing", std::string("k"));
        ADD_FAILURE() << "no KeyError";
      } catch (const troupe::KeyError& e) {
        EXPECT_NE(std::string(e.what()).find("'k'"), std::string::npos) << e.what();
      }
      EXPECT_THROW(maths._callmethod("local_error"), mp::RemoteError);
      EXPECT_THROW(maths._callmethod("unpicklable"), mp::RemoteError);
      EXPECT_THROW(maths._callmethod("no_such_method"), troupe::Exception);
      const auto nested =
          maths._callmethod<std::map<std::string, std::vector<std::int64_t>>>("nested");
      EXPECT_EQ(nested,
                (std::map<std::string, std::vector<std::int64_t>>{{"a", {1, 2}}, {"b", {3}}}));
      EXPECT_EQ((maths._callmethod<std::pair<std::int64_t, std::string>>("pair")),
                std::make_pair(std::int64_t{7}, std::string("seven")));
      EXPECT_EQ(maths._callmethod<std::vector<std::string>>("kinds", 1, 2.5, std::string("s"), true,
                                                            std::monostate{}),
                (std::vector<std::string>{"int", "float", "str", "bool", "NoneType"}));
      // The server runs on after all of that.
      EXPECT_EQ(maths._callmethod<std::int64_t>("add", 1, 1), 2);
    }
    // method_to_typeid: a new object's proxy.
    {
      auto factory = m.create("Factory");
      auto c = factory._callmethod<mm::BaseProxy>("make_counter");
      EXPECT_EQ(c._callmethod<std::int64_t>("increment"), 1);
      EXPECT_EQ(c._callmethod<std::int64_t>("increment"), 2);
    }
    // Nested proxies both ways: a list stored in a list, and read back out as a proxy.
    {
      auto outer = m.list();
      auto inner = m.list<std::int64_t>();
      outer._callmethod("append", inner);
      inner.append(42);
      auto back = outer._callmethod<mm::ListProxy<std::int64_t>>("__getitem__", std::int64_t{0});
      EXPECT_EQ(back.get(0), 42);
      back.append(43);
      EXPECT_EQ(inner.size(), 2u);
    }
    // Threads: a lane each, their calls side by side (one blocks in get while another puts).
    {
      auto q = m.Queue<std::int64_t>();
      std::thread t([&] { q.put(99); });
      EXPECT_EQ(q.get(true, 10s), 99);
      t.join();
      // Python's debug_info(): each object with its refcount and str().
      EXPECT_NE(m.debug_info().find("queue.Queue object"), std::string::npos) << m.debug_info();
    }
    // Every proxy made here is gone (the decrefs went on the link's own thread).
    EXPECT_TRUE(eventually([&] { return m.number_of_objects() == base; }, 10s)) << m.debug_info();
    m.shutdown();
    EXPECT_EQ(server_->wait(10s), 0);
  }

  std::optional<PythonKey> key_;
  std::vector<troupe::testing::Python> pythons_;
  std::optional<ChildProcess> server_;
};

TEST_F(PythonServersTest, ATroupeClientUsesEveryPythonsManagerOverTcp) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  for (const auto& py : pythons_) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    use(start(py, "('127.0.0.1', 0)"));
  }
}

TEST_F(PythonServersTest, ATroupeClientUsesEveryPythonsManagerOverAUnixSocket) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  const auto path = std::filesystem::temp_directory_path() /
                    ("troupe-py-server-" + std::to_string(::getpid()) + ".sock");
  for (const auto& py : pythons_) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    use(start(py, "'" + path.string() + "'"));
    std::filesystem::remove(path);  // Python's listener unlinks it; be sure
  }
}

// A troupe client stores proxies to a troupe manager's objects in a Python manager's containers,
// as a Python client can: CPython's server rebuilds each (connecting to that manager itself,
// with its own process's key) and gives it back as a proxy there; changes through any of them
// are seen through the others, and the Python server's references go with its elements.
TEST_F(PythonServersTest, ATroupeClientStoresAnotherManagersProxiesInAPythonManager) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  mm::ServerOptions so;
  so.listener.authkey = key_->key();
  so.listener.auth.legacy_md5 = true;  // a 3.11 server connects as a 3.11 client
  so.threads = 2;
  mm::Server troupe_side(mm::SyncManager::registry(), mp::Address::parse("127.0.0.1:0"), so);
  troupe_side.start();
  mm::ManagerOptions to;
  to.address = troupe_side.address();
  to.authkey = key_->key();
  using Ints = std::vector<std::int64_t>;
  for (const auto& py : pythons_) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    {
      mm::SyncManager pm(options(start(py, "('127.0.0.1', 0)")));
      pm.connect();
      mm::SyncManager tm(to);
      tm.connect();
      auto inner = tm.list<std::int64_t>({1});
      auto d = pm.dict<std::string, mm::ListProxy<std::int64_t>>();
      d["x"] = inner;
      auto got = d.get("x");
      ASSERT_TRUE(got.has_value());
      EXPECT_EQ(got->_token().address.str(), troupe_side.address().str());
      EXPECT_EQ(got->_token().id, inner._token().id);
      got->append(2);
      EXPECT_EQ(inner.copy(), (Ints{1, 2}));
      auto l = pm.list<mm::ListProxy<std::int64_t>>();
      l.append(inner);
      l.append(tm.list<std::int64_t>({7}));  // the sender's proxy goes before the Python one
      EXPECT_EQ(l.pop().copy(), (Ints{7}));
      l.pop().append(3);
      EXPECT_EQ(inner.copy(), (Ints{1, 2, 3}));
      EXPECT_EQ(l.size(), 0u);
      EXPECT_EQ(d.get("x")->size(), 3u);
    }
    // The Python server's proxies (its dict's element) decref'd as they went.
    EXPECT_TRUE(eventually([&] { return troupe_side.number_of_objects() == 0; }, 15s))
        << troupe_side.debug_info();
  }
  troupe_side.stop();
}

TEST_F(PythonServersTest, AWrongKeyIsRefusedNamingTheLegacyHandshake) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  const auto a = start(pythons_.front(), "('127.0.0.1', 0)");
  auto o = options(a);
  o.authkey = mp::AuthenticationString::from_hex("00");
  mm::BaseManager wrong(o);
  EXPECT_THROW(wrong.connect(), mp::AuthenticationError);
  o = options(a);
  o.link.auth.legacy_md5 = false;
  mm::BaseManager modern(o);
  if (pythons_.front().minor <= 11) {
    try {
      modern.connect();
      ADD_FAILURE() << "a 3.11 server answered a modern-only client";
    } catch (const mp::AuthenticationError& e) {
      EXPECT_NE(std::string(e.what()).find("legacy_md5"), std::string::npos) << e.what();
    }
  }
}

// CPython's server answers an incref: BaseProxy(token) waits for it, and a released object's
// token raises there (RemoteError, the server's KeyError), as a Python client's would.
TEST_F(PythonServersTest, AProxyFromATokenTakesItsReferenceOrRaises) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  const auto a = start(pythons_.front(), "('127.0.0.1', 0)");
  mm::SyncManager m(options(a));
  m.connect();
  auto q = m.create("get_queue");
  auto token = q._token();
  {
    mm::BaseProxy second(token, key_->key());  // a reference of its own
    q = mm::BaseProxy();
    mm::QueueProxy<std::int64_t>(second).put(5);
    EXPECT_EQ(mm::QueueProxy<std::int64_t>(second).get(), 5);
  }
  std::optional<mm::ListProxy<std::int64_t>> l(m.list<std::int64_t>({1}));
  token = l->_token();
  l.reset();
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 0; }, 15s));
  EXPECT_THROW(mm::BaseProxy(token, key_->key()), mp::RemoteError);
}

TEST_F(PythonServersTest, AServerKilledWhileACallWaitsFailsItAtOnce) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  const auto a = start(pythons_.front(), "('127.0.0.1', 0)");
  mm::SyncManager m(options(a));
  m.connect();
  auto q = mm::QueueProxy<std::int64_t>(m.create("get_queue"));
  std::thread killer([&] {
    std::this_thread::sleep_for(300ms);
    ::kill(server_->pid(), SIGKILL);
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(q.get(), troupe::EOFError);
  killer.join();
  // Failed when the connection went, not at some timeout.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s);
  EXPECT_EQ(server_->wait(10s), 128 + SIGKILL);
  // And the link is known dead: the next call fails too, naming the server.
  try {
    q.put(1);
    ADD_FAILURE() << "a call on a dead server's proxy returned";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(a.str()), std::string::npos) << e.what();
  }
}

TEST_F(PythonServersTest, AStoppedServerFailsAWaitingCallThroughTheHeartbeat) {
  if (pythons_.empty()) GTEST_SKIP() << "no python3 found";
  const auto a = start(pythons_.front(), "('127.0.0.1', 0)");
  auto o = options(a);
  // CPython's server has no ping: the link checks it answers a 'dummy' on a connection of its
  // own; a stopped server (as a vanished host) accepts nothing and answers nothing.
  o.link.heartbeat_interval = 200ms;
  o.link.connect_timeout = 1000ms;
  mm::SyncManager m(o);
  m.connect();
  auto q = mm::QueueProxy<std::int64_t>(m.create("get_queue"));
  std::thread stopper([&] {
    std::this_thread::sleep_for(300ms);
    ::kill(server_->pid(), SIGSTOP);
  });
  try {
    (void)q.get();
    ADD_FAILURE() << "a get on a stopped server returned";
  } catch (const troupe::EOFError& e) {
    EXPECT_NE(std::string(e.what()).find("heartbeat"), std::string::npos) << e.what();
  }
  stopper.join();
  ::kill(server_->pid(), SIGKILL);
  ::kill(server_->pid(), SIGCONT);
  EXPECT_EQ(server_->wait(10s), 128 + SIGKILL);
}

}  // namespace
}  // namespace managers_test
