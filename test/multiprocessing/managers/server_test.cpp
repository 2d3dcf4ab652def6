// The object host and its proxies in one process: a Server on its own threads, clients through
// BaseManager::connect(), bad input on purpose.
#include "troupe/multiprocessing/managers/server.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <future>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include "troupe/entry.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/context.hpp"
#include "troupe/multiprocessing/managers.hpp"
#include "troupe/multiprocessing/managers/detail/pickle.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/multiprocessing/tls.hpp"

#include "async_rules.hpp"
#include "leak_check.hpp"
#include "manager.capnp.h"
#include "test_types.hpp"
#include "tls_files.hpp"
#include <netinet/in.h>
#include <netinet/tcp.h>

namespace managers_test {

// A client process that holds a Gate and a Counter and waits in the gate until it is killed.
void client_that_waits(std::string address, std::string key) {
  TestManager m(
      {.address = mp::Address::parse(address), .authkey = mp::AuthenticationString::from_hex(key)});
  m.connect();
  auto gate = m.create("Gate");
  auto counter = m.create("Counter");
  gate._callmethod<std::string>("wait");
}
TROUPE_ENTRY(client_that_waits);

// _TestMyManager's FooBar: f(), g() raising ValueError, and a private _h().
struct FooBar {
  std::string f() const { return "f()"; }
  std::string g() const { throw troupe::ValueError("g() fails"); }
  std::string _h() const { return "_h()"; }
};
TROUPE_EXPOSE(FooBar, f, g, _h);

// An iterator whose next() raises StopIteration at the end (Squares, test_types.hpp, returns
// none).
struct Countdown {
  std::int64_t n = 3;
  std::int64_t next() {
    if (n == 0) throw troupe::StopIteration();
    return n--;
  }
};
TROUPE_EXPOSE(Countdown, next);

inline bool register_foobar() {
  TestManager::register_<FooBar>("Foo");
  TestManager::register_<Squares>("baz");
  TestManager::register_<Squares>("NotAnIterator", {.exposed = std::vector<std::string>{}});
  TestManager::register_<Countdown>("Countdown");
  TestManager::register_<Maths>("QuickMaths", {.quick = true});
  TestManager::register_<Counter>("Hidden", {.create_method = false});
  TestManager::register_<FooBar>("Bar", {.exposed = std::vector<std::string>{"f", "_h"}});
  // method_to_typeid's methods are exposed even when `exposed` leaves them out (as Python's).
  TestManager::register_<Factory>(
      "NarrowFactory",
      {.exposed = std::vector<std::string>{}, .method_to_typeid = {{"make_counter", "Counter"}}});
  return true;
}
static const bool foobar_registered = register_foobar();

namespace {

using namespace std::chrono_literals;
using mp::Address;
using mp::AuthenticationString;
using troupe::testing::eventually;

class ServerTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    LeakCheck::SetUp();
    start_server();
  }
  void TearDown() override {
    server_.reset();
    LeakCheck::TearDown();
  }

  void start_server(std::optional<Address> address = std::nullopt, mm::ServerOptions options = {}) {
    options.listener.authkey = key_;
    if (options.threads == 0) options.threads = 2;
    if (options.park_ttl == 300s) options.park_ttl = 300ms;
    server_ = std::make_unique<mm::Server>(TestManager::registry(), address, options);
    server_->start();
  }

  // A server that lets a connection hold at most `n` objects, in place of the fixture's.
  void restart_with_objects_held(std::uint32_t n) {
    server_.reset();
    mm::ServerOptions o;
    o.max_objects_held = n;
    start_server(std::nullopt, o);
  }

  // A server of one I/O thread and one pool thread, in place of the fixture's.
  void restart_with_one_pool_thread() {
    server_.reset();
    mm::ServerOptions o;
    o.threads = 1;
    start_server(std::nullopt, o);
  }

  std::unique_ptr<TestManager> client(std::optional<AuthenticationString> key = std::nullopt) {
    auto m = std::make_unique<TestManager>(
        mm::ManagerOptions{.address = server_->address(), .authkey = key ? *key : key_});
    m->connect();
    return m;
  }

  AuthenticationString key_ = AuthenticationString::random();
  std::unique_ptr<mm::Server> server_;
};

// A TCP client whose host vanishes sends no FIN: the server's end of every TCP connection probes
// it (30 s idle, then 3 probes 10 s apart), so that its references go within about a minute.
TEST_F(ServerTest, TheServersEndOfATcpConnectionProbesAQuietPeer) {
  server_.reset();
  start_server(Address::parse("127.0.0.1:0"));
  auto m = client();
  auto counter = m->create("Counter");
  // The server runs in this process: its end is the socket on its port that has a peer.
  int found = -1;
  for (int fd = 0; fd < 4096 && found < 0; ++fd) {
    sockaddr_in self{}, peer{};
    socklen_t len = sizeof self, plen = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&self), &len) == 0 &&
        self.sin_family == AF_INET && ntohs(self.sin_port) == server_->address().port &&
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) == 0)
      found = fd;
  }
  ASSERT_GE(found, 0) << "no accepted socket on port " << server_->address().port;
  auto opt = [&](int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    EXPECT_EQ(::getsockopt(found, level, name, &v, &len), 0);
    return v;
  };
  EXPECT_EQ(opt(SOL_SOCKET, SO_KEEPALIVE), 1);
  EXPECT_EQ(opt(IPPROTO_TCP, TCP_KEEPIDLE), 30);
  EXPECT_EQ(opt(IPPROTO_TCP, TCP_KEEPINTVL), 10);
  EXPECT_EQ(opt(IPPROTO_TCP, TCP_KEEPCNT), 3);
  EXPECT_EQ(opt(IPPROTO_TCP, TCP_NODELAY), 1);
}

TEST_F(ServerTest, TypedCallsAreCheckedAndReturnTheirResult) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  EXPECT_EQ(maths.call<&Maths::add>(2, 3), 5);
  EXPECT_DOUBLE_EQ(maths.call<&Maths::mul>(1.5, 4), 6.0);
  EXPECT_EQ(maths.call<&Maths::greet>("you"), "hello you");
  EXPECT_EQ(m->number_of_objects(), 1u);
}

TEST_F(ServerTest, CallmethodIsPythonsUntypedForm) {
  auto m = client();
  auto maths = m->create("Maths");
  EXPECT_EQ(maths._callmethod<int>("add", 20, 22), 42);
  EXPECT_EQ(maths._callmethod<std::string>("greet", std::string("me")), "hello me");
  EXPECT_EQ(maths._token().typeid_, "Maths");
  auto exposed = maths._exposed();
  EXPECT_EQ(exposed, (std::vector<std::string>{"add", "mul", "greet", "fail", "slow"}));
}

// As CPython's server, which raises it before calling anything (its client gets RemoteError,
// _TestMyManager: `foo._callmethod('_h')`): RemoteError, whose text is the AttributeError's.
TEST_F(ServerTest, AnUnknownMethodIsARemoteAttributeErrorAndTheServerGoesOn) {
  auto m = client();
  auto maths = m->create("Maths");
  try {
    maths._callmethod<int>("divide", 1, 2);
    FAIL() << "no error";
  } catch (const troupe::multiprocessing::RemoteError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("AttributeError: ", 0), 0u) << what;
    EXPECT_NE(what.find("'divide'"), std::string::npos) << what;
    EXPECT_NE(what.find("typeid 'Maths'"), std::string::npos) << what;
    EXPECT_NE(what.find("Maths"), std::string::npos) << what;
  }
  EXPECT_EQ(maths._callmethod<int>("add", 1, 2), 3);
}

TEST_F(ServerTest, AWrongArityIsATypeErrorNamingTheMethod) {
  auto m = client();
  auto maths = m->create("Maths");
  try {
    maths._callmethod<int>("add", 1);
    FAIL() << "no error";
  } catch (const troupe::TypeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("Maths.add() takes 2 arguments (1 given)"), std::string::npos) << what;
    EXPECT_NE(what.find("object "), std::string::npos) << what;
  }
  EXPECT_EQ(maths._callmethod<int>("add", 1, 2), 3);
}

TEST_F(ServerTest, WrongArgumentTypesAreATypeErrorNamingTheArgument) {
  auto m = client();
  auto maths = m->create("Maths");
  try {
    maths._callmethod<int>("add", "one", 2);
    FAIL() << "no error";
  } catch (const troupe::TypeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("Maths.add: argument 1 is not a i32"), std::string::npos) << what;
  }
}

TEST_F(ServerTest, ATypedCallOfAnotherSignatureIsRefusedByFingerprint) {
  // A Proxy<Counter> onto a Maths object: the typed proxy refuses it before any call.
  auto m = client();
  auto maths = m->create("Maths");
  EXPECT_THROW(mm::Proxy<Counter>{maths}, troupe::TypeError);
}

TEST_F(ServerTest, AnExceptionKeepsItsClassAndContext) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  try {
    maths.call<&Maths::fail>("boom");
    FAIL() << "no error";
  } catch (const troupe::ValueError& e) {
    const auto* remote = troupe::remote_envelope(e);
    ASSERT_NE(remote, nullptr);
    EXPECT_EQ(remote->message, "boom");
    EXPECT_EQ(remote->context.call, "Maths.fail");
    EXPECT_NE(remote->context.object.find("Maths#"), std::string::npos);
  }
}

TEST_F(ServerTest, ExposedNarrowsTheMethods) {
  auto m = client();
  auto narrow = m->create("NarrowMaths");
  EXPECT_EQ(narrow._callmethod<int>("add", 1, 1), 2);
  EXPECT_THROW(narrow._callmethod<double>("mul", 1.0, 2.0), troupe::multiprocessing::RemoteError);
  EXPECT_EQ(narrow._exposed(), std::vector<std::string>{"add"});
}

// A call on an object the server does not have (released) fails outside any method:
// RemoteError naming the KeyError, as CPython's server sends it; the connection goes on.
TEST_F(ServerTest, ACallOnAReleasedObjectIsARemoteKeyError) {
  auto m = client();
  auto token = m->create("Maths")._token();  // released with its proxy
  ASSERT_TRUE(eventually([&] { return m->number_of_objects() == 0; }));
  // As Python's BaseProxy(token): its incref raises, naming the server's KeyError.
  try {
    mm::BaseProxy p(token, key_);
    FAIL() << "a proxy of a released object";
  } catch (const troupe::multiprocessing::RemoteError& e) {
    EXPECT_NE(std::string(e.what()).find("KeyError: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no object"), std::string::npos) << e.what();
  }
  const mm::BaseProxy stale(token, key_, false);  // Python's incref=False: no reference
  for (int i = 0; i < 2; ++i) {
    try {
      (void)stale._callmethod<int>("add", 1, 2);
      FAIL() << "no error";
    } catch (const troupe::multiprocessing::RemoteError& e) {
      EXPECT_NE(std::string(e.what()).find("KeyError: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("no object"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << i << ": " << e.what();
    }
  }
  EXPECT_EQ(m->create("Maths")._callmethod<int>("add", 1, 2), 3);
}

// A create's failure is raised outside any method: RemoteError, as CPython's server sends it.
TEST_F(ServerTest, AnUnknownTypeidIsARemoteKeyError) {
  auto m = client();
  try {
    (void)m->create("Nothing");
    FAIL() << "no error";
  } catch (const troupe::multiprocessing::RemoteError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("KeyError: 'Nothing' is not a typeid", 0), 0u)
        << e.what();
  }
}

TEST_F(ServerTest, CopiesShareOneReferenceAndTheLastDropReleasesIt) {
  auto m = client();
  {
    auto a = m->create<Counter>("Counter");
    auto b = a;  // NOLINT: a copy, on purpose
    auto c = m->create<Counter>("Counter");
    EXPECT_EQ(m->number_of_objects(), 2u);
    a = {};
    EXPECT_EQ(b.call<&Counter::increment>(), 1);
  }
  EXPECT_TRUE(eventually([&] { return m->number_of_objects() == 0; }));
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }));
}

TEST_F(ServerTest, DebugInfoListsTheObjects) {
  auto m = client();
  auto c = m->create<Counter>("Counter");
  const std::string info = m->debug_info();
  EXPECT_NE(info.find("refcount=1"), std::string::npos) << info;
  EXPECT_NE(info.find("Counter"), std::string::npos) << info;
  // CPython's layout: '  <ident, hex as its tokens>:       refcount=<n>\n    <str(obj)[:75]>',
  // lines joined by '\n'.
  char ident[24];
  std::snprintf(ident, sizeof ident, "%llx", static_cast<unsigned long long>(c._token().id));
  EXPECT_EQ(info.rfind("  " + std::string(ident) + ":       refcount=1\n    ", 0), 0u) << info;
  EXPECT_NE(info.back(), '\n') << info;
  EXPECT_NE(c.str().find("Counter object at"), std::string::npos) << c.str();
}

// Python's BaseProxy.__str__: the referent's repr, or once that fails the proxy's own repr
// ending in "; '__str__()' failed>".
TEST_F(ServerTest, StrFallsBackToTheProxysReprWhenTheServerIsGone) {
  auto m = client();
  auto c = m->create("Counter");
  EXPECT_NE(c.str().find("Counter object at"), std::string::npos) << c.str();
  const std::string repr = c.repr();
  server_.reset();
  const std::string s = c.str();
  EXPECT_EQ(s, repr.substr(0, repr.size() - 1) + "; '__str__()' failed>") << s;
}

// _TestMyManager: by default a name that starts with '_' is not exposed (Python's public
// methods); `exposed` may name it.
TEST_F(ServerTest, PrivateMethodsAreExposedOnlyWhenNamed) {
  auto m = client();
  auto foo = m->create<FooBar>("Foo");
  auto bar = m->create<FooBar>("Bar");
  EXPECT_EQ(foo._exposed(), (std::vector<std::string>{"f", "g"}));
  EXPECT_EQ(bar._exposed(), (std::vector<std::string>{"f", "_h"}));
  EXPECT_EQ(foo.call<&FooBar::f>(), "f()");
  EXPECT_THROW(foo.call<&FooBar::g>(), troupe::ValueError);
  EXPECT_EQ(foo._callmethod<std::string>("f"), "f()");
  EXPECT_THROW(foo._callmethod<std::string>("_h"), troupe::multiprocessing::RemoteError);
  EXPECT_EQ(bar.call<&FooBar::_h>(), "_h()");
  EXPECT_EQ(bar._callmethod<std::string>("_h"), "_h()");
  EXPECT_THROW(bar._callmethod<std::string>("g"), troupe::multiprocessing::RemoteError);
  auto factory = m->create<Factory>("NarrowFactory");
  EXPECT_EQ(factory._exposed(), (std::vector<std::string>{"make_counter"}));
  auto counter = factory.call_proxy<&Factory::make_counter, Counter>();
  EXPECT_EQ(counter.call<&Counter::increment>(), 1);
}

// _TestMyManager.test_mymanager's baz: `list(m.baz())` over an IteratorProxy is the squares.
TEST_F(ServerTest, AClassWithNextIsWhatAnIteratorProxyIterates) {
  auto m = client();
  mm::IteratorProxy<std::int64_t> baz(m->create("baz"));
  const std::vector<std::int64_t> got(baz.begin(), baz.end());
  EXPECT_EQ(got, (std::vector<std::int64_t>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81}));
  EXPECT_EQ(baz.next(), std::nullopt);  // and at every call after
  mm::IteratorProxy<std::int64_t> down(m->create("Countdown"));
  EXPECT_EQ(down.next(), 3);  // a step, then the rest by range
  std::vector<std::int64_t> rest;
  for (std::int64_t v : down) rest.push_back(v);
  EXPECT_EQ(rest, (std::vector<std::int64_t>{2, 1}));
  EXPECT_EQ(down.next(), std::nullopt);
  // Python's next(it), untyped: `__next__` answered by next(), its none StopIteration.
  auto squares = m->create("baz");
  for (std::int64_t i = 0; i < 10; ++i)
    EXPECT_EQ(squares._callmethod<std::int64_t>("__next__"), i * i);
  EXPECT_THROW((void)squares._callmethod<std::int64_t>("__next__"), troupe::StopIteration);
  EXPECT_THROW((void)m->create("Countdown")._callmethod<std::int64_t>("__next__", 1),
               troupe::TypeError);
  // A class without next() is no iterator, nor one whose registration does not expose it:
  // its object is not exposed a step.
  EXPECT_THROW((void)mm::IteratorProxy<std::int64_t>(m->create("Foo")).next(),
               troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)mm::IteratorProxy<std::int64_t>(m->create("NotAnIterator")).next(),
               troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)m->create("NotAnIterator")._callmethod<std::int64_t>("__next__"),
               troupe::multiprocessing::RemoteError);
}

// CPython's server answers get_methods of an id it does not have with a traceback: RemoteError.
TEST_F(ServerTest, ExposedOfAnObjectTheServerDoesNotHaveIsARemoteError) {
  auto m = client();
  auto c = m->create("Counter");
  mm::Token stale = c._token();
  stale.id = 999999;
  // As Python's BaseProxy(token): its incref raises at once.
  try {
    mm::BaseProxy p(stale, key_);
    FAIL() << "a proxy of an object the server does not have";
  } catch (const troupe::multiprocessing::RemoteError& e) {
    EXPECT_NE(std::string(e.what()).find("999999"), std::string::npos) << e.what();
  }
  mm::BaseProxy p(stale, key_, false);  // Python's incref=False
  EXPECT_THROW((void)p._exposed(), troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)p._callmethod<int>("increment"), troupe::multiprocessing::RemoteError);
  // A proxy of a live object takes a reference of its own: the object outlives the first.
  mm::BaseProxy second(c._token(), key_);
  c = mm::BaseProxy();
  EXPECT_EQ(second._callmethod<int>("increment"), 1);
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 1; }, 15s));
  second._incref();  // and one more, released with it
  second = mm::BaseProxy();
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }, 15s));
}

// create_method=false drops only the manager's convenience method (Python's m.Hidden does not
// exist; m._create('Hidden') makes one, and the server creates it).
TEST_F(ServerTest, CreateMethodFalseLeavesUnderscoreCreate) {
  auto m = client();
  try {
    (void)m->create("Hidden");
    FAIL() << "create() of a typeid registered with create_method=false";
  } catch (const troupe::AttributeError& e) {
    EXPECT_NE(std::string(e.what()).find("create_method=false"), std::string::npos) << e.what();
  }
  auto hidden = m->_create("Hidden");
  EXPECT_EQ(hidden._callmethod<int>("increment"), 1);
  EXPECT_EQ(mm::Proxy<Counter>(m->_create("Hidden")).call<&Counter::increment>(), 1);
}

TEST_F(ServerTest, MethodToTypeidReturnsAProxyToANewObject) {
  auto m = client();
  auto factory = m->create<Factory>("Factory");
  auto counter = factory.call_proxy<&Factory::make_counter, Counter>();
  EXPECT_EQ(counter.call<&Counter::increment>(), 1);
  EXPECT_EQ(counter.call<&Counter::increment>(), 2);
  EXPECT_EQ(m->number_of_objects(), 2u);
  EXPECT_EQ(counter._token().typeid_, "Counter");
}

TEST_F(ServerTest, AFactoryReturningTheSameObjectHostsItUnderOneId) {
  auto m = client();
  auto a = m->create<Counter>("get_shared_counter");
  auto b = m->create<Counter>("get_shared_counter");
  EXPECT_EQ(a._token().id, b._token().id);
  EXPECT_EQ(m->number_of_objects(), 1u);
  const int before = a.call<&Counter::value>();
  b.call<&Counter::increment>();
  EXPECT_EQ(a.call<&Counter::value>(), before + 1);
}

// Review M8: the same C++ object returned as two typeids is two managed objects, each held to
// its own typeid's exposed methods (the narrower one does not widen, nor the wider one narrow).
TEST_F(ServerTest, TheSameObjectUnderTwoTypeidsKeepsEachTypeidsExposedMethods) {
  auto m = client();
  auto wide = m->create("get_shared_maths");
  auto narrow = m->create("get_shared_narrow_maths");
  auto again = m->create("get_shared_maths");
  EXPECT_NE(wide._token().id, narrow._token().id);
  EXPECT_EQ(wide._token().id, again._token().id);
  EXPECT_EQ(m->number_of_objects(), 2u);
  EXPECT_DOUBLE_EQ(wide._callmethod<double>("mul", 2.0, 3.0), 6.0);
  EXPECT_EQ(narrow._callmethod<int>("add", 1, 1), 2);
  EXPECT_THROW(narrow._callmethod<double>("mul", 1.0, 2.0), troupe::multiprocessing::RemoteError);
  EXPECT_EQ(narrow._exposed(), std::vector<std::string>{"add"});
  EXPECT_DOUBLE_EQ(again._callmethod<double>("mul", 2.0, 4.0), 8.0);
}

// A registered class's call that blocks holds a pool thread. With one pool thread, three calls
// that wait for a fourth (from other client threads) would starve it, as they cannot in Python
// (a thread per connection): the pool grows until the fourth runs.
TEST_F(ServerTest, CallsThatBlockEveryPoolThreadGrowThePool) {
  restart_with_one_pool_thread();
  auto m = client();
  auto latch = m->create<Latch>("Latch");
  std::vector<std::future<bool>> waits;
  for (int i = 0; i < 3; ++i)
    waits.push_back(std::async(std::launch::async, [&] { return latch.call<&Latch::wait>(); }));
  EXPECT_TRUE(eventually([] { return Latch::waiting.load() == 3; }, 15s))
      << Latch::waiting.load() << " of 3 calls in wait() on a server with 1 pool thread";
  latch.call<&Latch::open>();
  for (auto& w : waits) EXPECT_TRUE(w.get()) << "wait() ran out of time: open() never ran";
}

// The listener does not run on the pool: a new client gets in (and its calls run, on a thread
// the pool grows) while a call that blocks holds the pool's only thread.
TEST_F(ServerTest, AClientGetsInWhileABlockingCallHoldsThePool) {
  restart_with_one_pool_thread();
  auto m = client();
  auto latch = m->create<Latch>("Latch");
  auto wait = std::async(std::launch::async, [&] { return latch.call<&Latch::wait>(); });
  ASSERT_TRUE(eventually([] { return Latch::waiting.load() == 1; }, 15s));
  auto other = client();  // a new connection: accepted and greeted while the pool is held
  EXPECT_EQ(other->create<Maths>("Maths").call<&Maths::add>(2, 3), 5);
  latch.call<&Latch::open>();
  EXPECT_TRUE(wait.get());
}

// A serialized typeid's calls run on the pool (one strand per object): with one pool thread,
// three objects' calls that wait for a fourth object's call grow the pool until it runs.
TEST_F(ServerTest, SerializedCallsThatBlockThePoolGrowIt) {
  restart_with_one_pool_thread();
  SharedGate::reset();
  auto m = client();
  std::vector<mm::Proxy<SharedGate>> gates;
  for (int i = 0; i < 4; ++i) gates.push_back(m->create<SharedGate>("SerialGate"));
  std::vector<std::future<bool>> waits;
  for (int i = 0; i < 3; ++i)
    waits.push_back(
        std::async(std::launch::async, [&, i] { return gates[i].call<&SharedGate::wait>(); }));
  EXPECT_TRUE(eventually([] { return SharedGate::waiting.load() == 3; }, 15s))
      << SharedGate::waiting.load() << " of 3 calls in wait() on a server with 1 pool thread";
  gates[3].call<&SharedGate::open>();
  for (auto& w : waits) EXPECT_TRUE(w.get()) << "wait() ran out of time: open() never ran";
}

// A registered class's call runs on the connection thread that read it; while it blocks, a
// helper thread serves that thread's other connections, and leaves once the call has returned
// (the server's threads go back to what they were).
TEST_F(ServerTest, AHelperThreadServesWhileACallBlocksAndLeavesAfter) {
  restart_with_one_pool_thread();
  auto m = client();
  auto latch = m->create<Latch>("Latch");
  auto other = client();
  auto maths = other->create<Maths>("Maths");
  auto latch_maths = m->create<Maths>("Maths");
  EXPECT_EQ(maths.call<&Maths::add>(1, 1), 2);
  // The links' own threads (started by an asynchronous call, or by a blocking call that waits
  // long) are the client's, counted before: what is looked at is the server's.
  boost::asio::io_context ctx;
  for (auto* p : {&maths, &latch_maths})
    p->async_call<&Maths::add>(
        1, 1, boost::asio::bind_executor(ctx, [](std::exception_ptr e, int) { EXPECT_FALSE(e); }));
  ctx.run();
  // A helper started by an earlier call (the creates above run watched, and under a sanitizer
  // one may take long enough to get one) leaves within 100 ms of its thread being free: the
  // count is taken once it has stayed the same that long (at most 7.5 s).
  int before = troupe::testing::count_threads();
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(150ms);
    const int now = troupe::testing::count_threads();
    if (now == before) break;
    before = now;
  }
  auto wait = std::async(std::launch::async, [&] { return latch.call<&Latch::wait>(); });
  ASSERT_TRUE(eventually([] { return Latch::waiting.load() == 1; }, 15s));
  // Both connections are on the server's one connection thread, which wait() holds.
  for (int i = 0; i < 100; ++i) ASSERT_EQ(maths.call<&Maths::add>(i, 1), i + 1);
  EXPECT_GT(troupe::testing::count_threads(), before + 1) << "no helper thread started";
  // So is the other lane of wait()'s own connection, which that thread had been reading
  // itself (a hot connection) when it took wait().
  auto same = std::async(std::launch::async, [&] {
    for (int i = 0; i < 20; ++i)
      if (latch_maths.call<&Maths::add>(i, 2) != i + 2) return false;
    return true;
  });
  EXPECT_EQ(same.wait_for(15s), std::future_status::ready)
      << "a call on the connection of a call that blocks was not served";
  latch.call<&Latch::open>();
  EXPECT_TRUE(wait.get());
  EXPECT_TRUE(same.get());
  EXPECT_TRUE(eventually([&] { return troupe::testing::count_threads() <= before; }, 15s))
      << troupe::testing::count_threads() << " threads, " << before << " before the wait";
}

// A serialized typeid runs one call at a time on its object; the same object served as two
// serialized typeids still does (one strand per object, not per typeid).
TEST_F(ServerTest, OneObjectAsTwoSerializedTypeidsRunsOneCallAtATime) {
  auto m = client();
  auto a = m->create<Overlap>("get_serial_overlap");
  auto b = m->create<Overlap>("get_serial_overlap_too");
  EXPECT_NE(a._token().id, b._token().id);
  Overlap::overlapped.store(false);
  auto through = [](mm::Proxy<Overlap>& p) {
    for (int i = 0; i < 20; ++i) (void)p.call<&Overlap::touch>();
  };
  auto one = std::async(std::launch::async, through, std::ref(a));
  auto two = std::async(std::launch::async, through, std::ref(b));
  one.get();
  two.get();
  EXPECT_FALSE(Overlap::overlapped.load()) << "two calls ran on the object at once";
}

TEST_F(ServerTest, CreateArgumentsGoToTheFactory) {
  auto m = client();
  auto c = m->create<Counter>("CounterFrom", 41);
  EXPECT_EQ(c.call<&Counter::increment>(), 42);
  EXPECT_THROW(m->create("CounterFrom", "x"), troupe::multiprocessing::RemoteError);
  EXPECT_THROW(m->create("CounterFrom"), troupe::multiprocessing::RemoteError);
}

TEST_F(ServerTest, GetvalueCopiesTheReferent) {
  auto m = client();
  auto cell = m->create<Cell>("Cell");
  cell.call<&Cell::set>(7);
  const Cell copy = cell._getvalue<Cell>();
  EXPECT_EQ(copy.value, 7);
  // Counter has no codec (private state): _getvalue is CPython's '#UNSERIALIZABLE', a
  // RemoteError saying so.
  auto counter = m->create("Counter");
  try {
    (void)counter._getvalue<int>();
    FAIL() << "no error";
  } catch (const troupe::multiprocessing::RemoteError& e) {
    EXPECT_NE(std::string(e.what()).find("has no troupe::Codec"), std::string::npos) << e.what();
  }
  // The fallbacks take no arguments: outside the method, a RemoteError too.
  EXPECT_THROW((void)counter._callmethod<std::string>("__repr__", 1),
               troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)counter._callmethod<std::string>("__str__", 1),
               troupe::multiprocessing::RemoteError);
}

TEST_F(ServerTest, AProxyTravelsThroughAConnection) {
  auto m = client();
  auto [a, b] = mp::Pipe();
  {
    auto counter = m->create<Counter>("Counter");
    counter.call<&Counter::increment>();
    a.send(std::tuple<int, mm::Proxy<Counter>>{5, counter});
  }  // the sender's proxy is dropped before the receiver claims
  auto [n, received] = b.recv<std::tuple<int, mm::Proxy<Counter>>>();
  EXPECT_EQ(n, 5);
  EXPECT_EQ(received.call<&Counter::increment>(), 2);
  EXPECT_EQ(m->number_of_objects(), 1u);
  received = {};
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }));
}

TEST_F(ServerTest, AnUnclaimedProxyIsReleasedAfterTheParkTtl) {
  auto m = client();
  std::vector<std::byte> bytes;
  {
    auto counter = m->create<Counter>("Counter");
    bytes = troupe::to_bytes(counter);  // parked, never claimed
  }
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }));
}

TEST_F(ServerTest, ARefDecodedAsAnotherTypeIsAValueErrorNamingIt) {
  auto m = client();
  auto counter = m->create<Counter>("Counter");
  capnp::MallocMessageBuilder mb;
  auto v = mb.initRoot<troupe::proto::Value>();
  troupe::Codec<mm::BaseProxy>::encode(counter, v);
  try {
    troupe::Codec<int>::decode(v.asReader());
    FAIL() << "no error";
  } catch (const troupe::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("ref (a proxy)"), std::string::npos) << e.what();
  }
}

TEST_F(ServerTest, OneLaneRunsItsCallsInOrder) {
  auto m = client();
  auto counter = m->create<Counter>("Counter");
  boost::asio::io_context ctx;
  std::vector<int> got;
  for (int i = 0; i < 100; ++i)
    counter.async_call<&Counter::increment>(
        boost::asio::bind_executor(ctx, [&](std::exception_ptr e, int n) {
          EXPECT_FALSE(e);
          got.push_back(n);
        }));
  ctx.run();
  ASSERT_EQ(got.size(), 100u);
  // One lane: each call ran after the one before had ended, and the replies came in that order.
  for (int i = 0; i < 100; ++i) EXPECT_EQ(got[i], i + 1);
}

// The completions of the replies one read brings are posted together (one handler a run of
// them on one executor): one that throws leaves run() as any Asio handler's exception does, and
// the others still run, at the next run().
TEST_F(ServerTest, ACompletionThatThrowsLosesNoOther) {
  auto m = client();
  auto counter = m->create<Counter>("Counter");
  boost::asio::io_context ctx;
  int ran = 0;
  for (int i = 0; i < 50; ++i)
    counter.async_call<&Counter::increment>(
        boost::asio::bind_executor(ctx, [&, i](std::exception_ptr e, int) {
          EXPECT_FALSE(e);
          ++ran;
          if (i == 3 || i == 30) throw std::runtime_error("from a completion");
        }));
  int thrown = 0;
  for (int k = 0; k < 10 && ran < 50; ++k) {
    try {
      ctx.run();
    } catch (const std::runtime_error&) {
      ++thrown;
    }
  }
  EXPECT_EQ(thrown, 2);
  EXPECT_EQ(ran, 50);
}

// A thread pool's completions are posted one by one, not gathered: one that waits for another's
// result (their replies in one read) does not wait for ever behind it in one handler.
TEST_F(ServerTest, APoolsCompletionMayWaitForAnothersResult) {
  auto m = client();
  auto counter = m->create<Counter>("Counter");
  boost::asio::thread_pool pool(2);
  std::promise<int> last;
  auto last_result = last.get_future();
  std::promise<bool> first;
  constexpr int kCalls = 64;  // in flight at once: their replies come in few reads
  for (int i = 0; i < kCalls; ++i)
    counter.async_call<&Counter::increment>(
        boost::asio::bind_executor(pool, [&, i](std::exception_ptr e, int n) {
          EXPECT_FALSE(e);
          if (i == kCalls - 2)  // its reply most likely in the same read as the last's
            first.set_value(last_result.wait_for(10s) == std::future_status::ready);
          if (i == kCalls - 1) last.set_value(n);
        }));
  EXPECT_TRUE(first.get_future().get()) << "the last completion waited behind another";
  pool.join();
}

// Asio's rules for async_call and async_callmethod: never inside the call, with a callback,
// use_future and use_awaitable. A lazy token (use_awaitable) starts the operation after the call
// returned: the request must have been encoded by then (its arguments and method name gone).
// A proxy passed to a method of its own server: the method calls it from the server's process
// (as CPython's, whose server process then connects to itself), and the server keeps serving.
TEST_F(ServerTest, AProxyPassedToItsOwnServerWorksThere) {
  auto m = client();
  auto counter = m->create<Counter>("Counter");
  auto depositor = m->create<Depositor>("Depositor");
  EXPECT_EQ(depositor.call<&Depositor::deposit>(counter, 3), 3);
  EXPECT_EQ(counter.call<&Counter::value>(), 3);
  EXPECT_EQ(depositor.call<&Depositor::deposit>(counter, 2), 5);

  // One server thread: the call that waits for the nested one holds it.
  restart_with_one_pool_thread();
  {
    auto one = client();
    auto c = one->create<Counter>("Counter");
    EXPECT_EQ(one->create<Depositor>("Depositor").call<&Depositor::deposit>(c, 4), 4);
  }
}

TEST_F(ServerTest, AsyncCallsFollowAsiosRules) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  boost::asio::io_context io;
  troupe::testing::never_inline(
      io, [] {}, [&](auto token) { return maths.async_call<&Maths::add>(2, 3, std::move(token)); });
  troupe::testing::never_inline(
      io, [] {},
      [&](auto token) {
        // The method's name in a temporary, gone when the call returns.
        return maths.async_callmethod<int>(std::string("ad") + "d", std::tuple<int, int>{1, 4},
                                           std::move(token));
      });
  int sum = 0;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        sum = co_await maths.async_call<&Maths::add>(20, 22, boost::asio::use_awaitable);
      },
      boost::asio::detached);
  io.restart();
  io.run();
  EXPECT_EQ(sum, 42);
}

// A lazy token (deferred) keeps its encoded request until it is launched: the thread's later
// asynchronous calls build theirs elsewhere (a thread's request is used again only once nobody
// holds it).
TEST_F(ServerTest, ALazyCallKeepsItsRequestWhileItsThreadMakesOthers) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  boost::asio::io_context io;
  auto lazy = maths.async_call<&Maths::add>(1, 2, boost::asio::deferred);
  int sum = 0;
  for (int i = 0; i < 5; ++i) {
    maths.async_call<&Maths::add>(10, i,
                                  boost::asio::bind_executor(io, [&](std::exception_ptr e, int r) {
                                    if (!e) sum += r;
                                  }));
    io.run();
    io.restart();
  }
  EXPECT_EQ(sum, 10 * 5 + 0 + 1 + 2 + 3 + 4);
  int got = -1;
  std::move(lazy)(boost::asio::bind_executor(io, [&](std::exception_ptr e, int r) {
    if (!e) got = r;
  }));
  io.run();
  EXPECT_EQ(got, 3);
}

// The replies of many async greet calls: how many came, failed, or greeted another name.
struct GreetReplies {
  int replies = 0, errors = 0, wrong = 0;
  void count(const std::exception_ptr& e, const std::string& reply, const std::string& name) {
    ++replies;
    if (e)
      ++errors;
    else if (reply != "hello " + name)
      ++wrong;
  }
};

// More asynchronous calls at once than one gathered write takes (4 MiB, 512 frames; fewer
// than the server's 1024 calls in flight): the requests wait in the link's queue while the
// socket is full, leave it in several writes, each reaches the server once, in order, and each
// call gets its own reply.
TEST_F(ServerTest, ABurstOfAsyncCallsLargerThanOneWriteGetsEveryReply) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  boost::asio::io_context io;
  constexpr int kCalls = 1000;
  const std::string filler(16 * 1024, 'x');  // 16 MiB of requests in all
  auto name = [&](int i) { return std::to_string(i) + ":" + filler; };
  GreetReplies got;
  for (int i = 0; i < kCalls; ++i)
    maths.async_call<&Maths::greet>(
        name(i), boost::asio::bind_executor(io, [&, i](std::exception_ptr e, std::string r) {
          got.count(e, r, name(i));
        }));
  io.run();
  EXPECT_EQ(got.replies, kCalls);
  EXPECT_EQ(got.errors, 0);
  EXPECT_EQ(got.wrong, 0);
}

// A quick typeid's replies are made in the handler that read their requests, each in the
// buffer of a reply written before it (kept by the connection): pipelined replies of sizes that
// go up and down each carry their own bytes, none left over from a longer one before it.
TEST_F(ServerTest, PipelinedRepliesInKeptBuffersCarryTheirOwnBytes) {
  auto m = client();
  auto maths = m->create<Maths>("QuickMaths");
  boost::asio::io_context io;
  constexpr int kCalls = 3000;
  auto name = [](int i) {
    return std::string(static_cast<std::size_t>(i * 37 % 700), 'a' + i % 26);
  };
  GreetReplies got;
  int sent = 0;
  std::function<void()> send_one = [&] {
    const int i = sent++;
    maths.async_call<&Maths::greet>(
        name(i), boost::asio::bind_executor(io, [&, i](std::exception_ptr e, std::string r) {
          got.count(e, r, name(i));
          if (sent < kCalls) send_one();
        }));
  };
  for (int k = 0; k < 64; ++k) send_one();  // 64 in flight, as a pipelining client keeps them
  io.run();
  EXPECT_EQ(got.replies, kCalls);
  EXPECT_EQ(got.errors, 0);
  EXPECT_EQ(got.wrong, 0);
}

TEST_F(ServerTest, AsyncCallmethodDeliversTheErrorAsAnExceptionPtr) {
  auto m = client();
  auto maths = m->create("Maths");
  boost::asio::io_context ctx;
  std::exception_ptr error;
  int result = -1;
  maths.async_callmethod<int>("add", std::tuple<int>{1},
                              boost::asio::bind_executor(ctx, [&](std::exception_ptr e, int r) {
                                error = e;
                                result = r;
                              }));
  ctx.run();
  ASSERT_TRUE(error);
  EXPECT_THROW(std::rethrow_exception(error), troupe::TypeError);
  EXPECT_EQ(result, 0);
}

TEST_F(ServerTest, WaitingCallsHoldNoThreadAndCompleteLater) {
  boost::asio::io_context ctx;  // outlives the proxies whose calls hold work on it
  auto m = client();
  auto gate = m->create("Gate");
  std::atomic<int> opened{0};
  // Eight waiters on eight lanes (threads), four times the server's threads: none holds one.
  for (int i = 0; i < 8; ++i)
    std::thread([&] {
      gate.async_callmethod<std::string>(
          "wait", std::tuple<>{},
          boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::string s) {
            EXPECT_FALSE(e);
            EXPECT_EQ(s, "opened");
            ++opened;
          }));
    }).join();
  ASSERT_TRUE(eventually([&] { return gate._callmethod<int>("waiting") == 8; }));
  EXPECT_EQ(gate._callmethod<int>("open"), 8);
  ctx.run();
  EXPECT_EQ(opened.load(), 8);
}

TEST_F(ServerTest, OneLanesWaitsRunOneAfterAnother) {
  auto m = client();
  auto gate = m->create("Gate");
  boost::asio::io_context ctx;
  int opened = 0;
  for (int i = 0; i < 3; ++i)
    gate.async_callmethod<std::string>(
        "wait", std::tuple<>{},
        boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::string) {
          EXPECT_FALSE(e);
          ++opened;
        }));
  // The lane's second wait starts only once the first has ended.
  std::thread opener([&] {
    for (int n = 0, tries = 0; n < 3 && tries < 100000; ++tries) {
      ASSERT_LE(gate._callmethod<int>("waiting"), 1);
      n += gate._callmethod<int>("open");
    }
  });
  opener.join();
  ctx.run();
  EXPECT_EQ(opened, 3);
}

TEST_F(ServerTest, CallsInFlightAreLimited) {
  server_.reset();
  start_server(std::nullopt, {.max_calls_in_flight = 3});
  auto m = client();
  auto gate = m->create("Gate");
  boost::asio::io_context ctx;
  int refused = 0, opened = 0;
  for (int i = 0; i < 5; ++i)
    gate.async_callmethod<std::string>(
        "wait", std::tuple<>{},
        boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::string) {
          if (!e) return void(++opened);
          try {
            std::rethrow_exception(e);
          } catch (const troupe::ValueError& v) {
            EXPECT_NE(std::string(v.what()).find("max_calls_in_flight"), std::string::npos);
            ++refused;
          }
        }));
  while (refused < 2) ctx.run_one();
  EXPECT_EQ(refused, 2);
  // This connection is full; another one (a second client) opens the gate.
  auto m2 = client();
  mm::BaseProxy gate2(gate._token(), key_);
  EXPECT_EQ(m2->number_of_objects(), 1u);
  for (int n = 0, tries = 0; n < 3 && tries < 100000; ++tries) n += gate2._callmethod<int>("open");
  while (opened < 3) ctx.run_one();
}

TEST_F(ServerTest, AServerRunsOnAUsersIoContext) {
  boost::asio::io_context ctx;
  auto guard = boost::asio::make_work_guard(ctx);
  std::thread runner([&] { ctx.run(); });
  {
    mm::ServerOptions o;
    o.listener.authkey = key_;
    mm::Server embedded(TestManager::registry(), std::nullopt, o, ctx.get_executor());
    embedded.start();
    TestManager m({.address = embedded.address(), .authkey = key_});
    m.connect();
    auto maths = m.create<Maths>("Maths");
    EXPECT_EQ(maths.call<&Maths::add>(40, 2), 42);
    EXPECT_EQ(embedded.number_of_objects(), 1u);
    maths = {};
    EXPECT_TRUE(eventually([&] { return embedded.number_of_objects() == 0; }));
  }  // ~TestManager, then ~Server: stop() while the io_context still runs
  guard.reset();
  runner.join();
}

TEST_F(ServerTest, AWrongAuthkeyIsRefused) {
  EXPECT_THROW(client(AuthenticationString::random()), mp::AuthenticationError);
  EXPECT_EQ(client()->create<Maths>("Maths").call<&Maths::add>(1, 1), 2);
}

std::string hex(const AuthenticationString& key) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (auto b : key.bytes()) {
    s += digits[static_cast<unsigned>(b) >> 4];
    s += digits[static_cast<unsigned>(b) & 15];
  }
  return s;
}

// An authenticated raw connection to the server, for bad input.
mp::Connection raw_client(const Address& a, const AuthenticationString& key) {
  return mp::Client(a, key);
}

void send_hello(mp::Connection& c) {
  capnp::MallocMessageBuilder mb;
  auto h = mb.initRoot<troupe::proto::manager::Hello>();
  h.setMagic(0x3172676e4d705274ull);
  h.setVersion(troupe::proto::manager::PROTOCOL_VERSION);
  h.setPid(::getpid());
  c.send_message(mb);
  auto greeting = c.recv_bytes();
  ASSERT_GT(greeting.size(), 0u);
}

TEST_F(ServerTest, GarbageInsteadOfAHelloIsRefusedWithAnError) {
  auto c = raw_client(server_->address(), key_);
  c.send_bytes(std::string_view("garbage!"));
  auto bytes = c.recv_bytes();
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                        bytes.size() / 8);
  capnp::FlatArrayMessageReader reader(words);
  auto g = reader.getRoot<troupe::proto::manager::Greeting>();
  ASSERT_TRUE(g.isRefused());
  EXPECT_NE(std::string(g.getRefused().getMessage().cStr()).find("refused"), std::string::npos);
  EXPECT_THROW(c.recv_bytes(), troupe::EOFError);
  EXPECT_EQ(client()->create<Maths>("Maths").call<&Maths::add>(2, 2), 4);
}

TEST_F(ServerTest, GarbageAfterTheHelloDropsThatConnectionOnly) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  auto c = raw_client(server_->address(), key_);
  send_hello(c);
  c.send_bytes(std::string_view("\x05\x00\x00\x00garbage, and more garbage"));
  EXPECT_THROW(c.recv_bytes(), troupe::EOFError);
  EXPECT_EQ(maths.call<&Maths::add>(3, 4), 7);
}

// A pickle is CPython's dialect (python_clients_test drives real Pythons): one that cannot be
// read gets '#TRACEBACK' naming why, the connection serves on, and so does the server.
TEST_F(ServerTest, APickleThatCannotBeReadGetsATracebackNamingWhy) {
  namespace pk = mm::detail::pickle;
  auto c = raw_client(server_->address(), key_);
  c.send_bytes(std::string_view("\x80\x04\x95\x10\x00\x00\x00\x00", 8));
  auto reply = c.recv_bytes();
  auto x = pk::decode(std::span<const std::byte>(reply));
  ASSERT_EQ(x.kind(), mm::detail::Kind::tuple) << repr(x);
  EXPECT_EQ(mm::detail::str(x.elements().at(0)), "#TRACEBACK");
  EXPECT_NE(mm::detail::str(x.elements().at(1)).find("ends early"), std::string::npos) << repr(x);
  // The same connection: ('dummy') answers '#RETURN' None.
  const std::string dummy = pk::encode(
      mm::detail::Item::tuple({mm::detail::Item(), mm::detail::Item::text("dummy"),
                               mm::detail::Item::tuple({}), mm::detail::Item::dict({})}));
  c.send_bytes(dummy);
  reply = c.recv_bytes();
  x = pk::decode(std::span<const std::byte>(reply));
  EXPECT_EQ(mm::detail::repr(x), "('#RETURN', None)");
  EXPECT_EQ(client()->create<Maths>("Maths").call<&Maths::add>(2, 2), 4);
}

TEST_F(ServerTest, AKilledClientsObjectsAndWaitersAreReleased) {
  const int released_before = Gate::released_connections_.load();
  std::vector<mp::Process> children;
  for (int i = 0; i < 3; ++i) {
    children.push_back(
        mp::get_context("spawn").Process(&client_that_waits, server_->address().str(), hex(key_)));
    children.back().start();
  }
  // Each holds a Gate (waiting in it, mid-call) and a Counter.
  ASSERT_TRUE(eventually([&] { return server_->number_of_objects() == 6; }, 30s));
  ASSERT_TRUE(eventually([&] { return server_->connection_count() == 3; }));
  for (auto& c : children) c.kill();
  for (auto& c : children) c.join();
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }));
  EXPECT_TRUE(eventually([&] { return server_->connection_count() == 0; }));
  EXPECT_TRUE(
      eventually([&] { return Gate::released_connections_.load() >= released_before + 3; }));
}

TEST_F(ServerTest, APendingCallFailsAtOnceWhenTheServerGoes) {
  boost::asio::io_context ctx;  // outlives the proxies whose calls hold work on it
  auto m = client();
  auto gate = m->create("Gate");
  std::promise<std::exception_ptr> failed;
  // The wait on a lane (thread) of its own: this thread's calls must not queue behind it.
  std::thread([&] {
    gate.async_callmethod<std::string>(
        "wait", std::tuple<>{},
        boost::asio::bind_executor(
            ctx, [&](std::exception_ptr e, std::string) { failed.set_value(e); }));
  }).join();
  ASSERT_TRUE(eventually([&] { return gate._callmethod<int>("waiting") == 1; }));
  const std::string address = server_->address().str();
  server_->stop();
  ctx.run();
  auto e = failed.get_future().get();
  ASSERT_TRUE(e);
  try {
    std::rethrow_exception(e);
  } catch (const troupe::EOFError& x) {
    EXPECT_NE(std::string(x.what()).find(address), std::string::npos) << x.what();
    EXPECT_NE(std::string(x.what()).find("pid " + std::to_string(::getpid())), std::string::npos)
        << x.what();
  }
  // Later calls fail at once, the same way.
  EXPECT_THROW(gate._callmethod<int>("waiting"), troupe::EOFError);
}

TEST_F(ServerTest, ConnectCanBeRetriedAfterTheServerRestarts) {
  const Address address = server_->address();
  auto m = client();
  auto c = m->create<Counter>("Counter");
  server_.reset();
  EXPECT_THROW(c.call<&Counter::increment>(), troupe::EOFError);
  start_server(address);
  m->connect();
  auto d = m->create<Counter>("Counter");
  EXPECT_EQ(d.call<&Counter::increment>(), 1);
}

// ---- robustness: stop races, bad requests, limits
// ------------------------------------------------

TEST_F(ServerTest, AStopFromAnotherThreadEndsServeForeverOnlyOnceItIsDone) {
  // The usual shape: a signal thread calls stop(), main returns from serve_forever() and frees
  // the server at once. The stop() still running must not touch freed memory (ASan checks).
  for (int i = 0; i < 5; ++i) {
    mm::ServerOptions o;
    o.listener.authkey = key_;
    o.threads = 2;
    auto s = std::make_unique<mm::Server>(TestManager::registry(), std::nullopt, o);
    mm::Server* raw = s.get();
    const Address address = s->address();
    std::thread stopper([raw, address, this, i] {
      if (i % 2 == 0) {
        // Once a client has been served, so that there is something to close.
        TestManager m({.address = address, .authkey = key_});
        for (int tries = 0; tries < 200; ++tries) {
          try {
            m.connect();
            break;
          } catch (const std::exception&) {
            std::this_thread::sleep_for(5ms);
          }
        }
      }
      raw->stop();
    });
    s->serve_forever();
    s.reset();
    stopper.join();
  }
}

TEST_F(ServerTest, StopInAHandlerOnTheUsersIoContextReturns) {
  boost::asio::io_context ctx;
  auto guard = boost::asio::make_work_guard(ctx);
  std::thread runner([&] { ctx.run(); });
  mm::ServerOptions o;
  o.listener.authkey = key_;
  auto embedded =
      std::make_unique<mm::Server>(TestManager::registry(), std::nullopt, o, ctx.get_executor());
  embedded->start();
  {
    TestManager m({.address = embedded->address(), .authkey = key_});
    m.connect();
    auto maths = m.create<Maths>("Maths");
    EXPECT_EQ(maths.call<&Maths::add>(1, 2), 3);
    std::promise<void> stopped;
    // An asio::signal_set's handler would do this: stop the server from the io_context's thread.
    boost::asio::post(ctx, [&] {
      embedded->stop();
      stopped.set_value();
    });
    ASSERT_EQ(stopped.get_future().wait_for(30s), std::future_status::ready);
    EXPECT_THROW(maths.call<&Maths::add>(1, 2), troupe::EOFError);
  }
  embedded.reset();
  guard.reset();
  runner.join();
}

TEST_F(ServerTest, AServerWithoutAKeyAuthenticatesWithTheProcessKey) {
  // Python's Server always authenticates; an abstract name has no file permissions.
  mm::ServerOptions o;
  o.threads = 1;
  mm::Server s(TestManager::registry(), std::nullopt, o);
  s.start();
  EXPECT_THROW(mp::Client(s.address(), AuthenticationString::random()), mp::AuthenticationError);
  TestManager m({.address = s.address(), .authkey = mp::current_process().authkey()});
  m.connect();
  EXPECT_EQ(m.create<Maths>("Maths").call<&Maths::add>(2, 2), 4);
}

using Request = troupe::proto::manager::Request;
using Reply = troupe::proto::manager::Reply;

template <class Fill>
void send_request(mp::Connection& c, std::uint64_t call_id, Fill fill) {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<Request>();
  r.setCallId(call_id);
  r.setLane(1);
  fill(r);
  c.send_message(mb);
}

// The next reply on `c` (bounded wait): its call id, and its error's text ("" if none).
std::pair<std::uint64_t, std::string> next_reply(mp::Connection& c) {
  if (!c.poll(30s)) throw std::runtime_error("no reply within 30 s");
  auto bytes = c.recv_bytes();
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                        bytes.size() / 8);
  capnp::FlatArrayMessageReader reader(words);
  auto r = reader.getRoot<Reply>();
  std::string error;
  if (r.isError())
    error =
        std::string(r.getError().getTypeName().cStr()) + ": " + r.getError().getMessage().cStr();
  return {r.getCallId(), error};
}

// A raw client that created one Counter: its object id.
std::uint64_t raw_create_counter(mp::Connection& c) {
  send_request(c, 1, [](Request::Builder r) { r.initCreate().setTypeid("Counter"); });
  if (!c.poll(30s)) throw std::runtime_error("no reply to create within 30 s");
  auto bytes = c.recv_bytes();
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                        bytes.size() / 8);
  capnp::FlatArrayMessageReader reader(words);
  auto r = reader.getRoot<Reply>();
  if (!r.isProxy()) throw std::runtime_error("create answered without a proxy");
  return r.getProxy().getId();
}

TEST_F(ServerTest, AMalformedArgumentListDropsThatConnectionOnly) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  for (const bool create : {false, true}) {
    auto c = raw_client(server_->address(), key_);
    send_hello(c);
    const std::uint64_t id = create ? 0 : raw_create_counter(c);
    // The args pointer is a struct where Cap'n Proto expects a list.
    send_request(c, 2, [&](Request::Builder r) {
      capnp::AnyStruct::Builder body = nullptr;
      if (create) {
        auto k = r.initCreate();
        k.setTypeid("Counter");
        body = capnp::toAny(k);
      } else {
        auto k = r.initCall();
        k.setObject(id);
        k.setMethod("increment");
        body = capnp::toAny(k);
      }
      body.getPointerSection()[1].initAs<troupe::proto::Value>().setInt(7);
    });
    ASSERT_TRUE(c.poll(30s));
    EXPECT_THROW(c.recv_bytes(), troupe::EOFError);
  }
  EXPECT_EQ(maths.call<&Maths::add>(3, 4), 7);
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 1; }));
}

TEST_F(ServerTest, ATypeidLongerThanTheLimitIsRefusedNotCut) {
  auto c = raw_client(server_->address(), key_);
  send_hello(c);
  send_request(c, 5, [](Request::Builder r) {
    r.initCreate().setTypeid(std::string(256, 'x') + "Counter");
  });
  auto [id, error] = next_reply(c);
  EXPECT_EQ(id, 5u);
  EXPECT_NE(error.find("at most 256 bytes"), std::string::npos) << error;
}

TEST_F(ServerTest, ParksAndEarlyClaimsAreLimitedPerConnection) {
  restart_with_objects_held(4);
  auto c = raw_client(server_->address(), key_);
  send_hello(c);
  const std::uint64_t id = raw_create_counter(c);
  // Four parks of the one object are within the limit (no reply); the fifth is refused.
  for (std::uint64_t t = 1; t <= 5; ++t)
    send_request(c, 10 + t, [&](Request::Builder r) {
      auto p = r.initPark();
      p.setId(id);
      p.setTicket(1000 + t);
    });
  auto [call, error] = next_reply(c);
  EXPECT_EQ(call, 15u);
  EXPECT_NE(error.find("ValueError"), std::string::npos) << error;
  EXPECT_NE(error.find("max_objects_held"), std::string::npos) << error;
  // Another connection has a budget of its own; its claims ahead of parks count against it.
  auto d = raw_client(server_->address(), key_);
  send_hello(d);
  for (std::uint64_t t = 1; t <= 4; ++t)
    send_request(d, 20 + t, [&](Request::Builder r) {
      auto p = r.initClaim();
      p.setId(id);
      p.setTicket(5000 + t);
    });
  send_request(d, 30, [&](Request::Builder r) {
    auto p = r.initClaim();
    p.setId(id);
    p.setTicket(1001);  // parked by c: taken over, not a marker
  });
  send_request(d, 31, [](Request::Builder r) { r.setPing(); });
  // Each claim is answered (none), in order, and the ping after them.
  for (const std::uint64_t want : {21u, 22u, 23u, 24u, 30u, 31u}) {
    auto [got, got_error] = next_reply(d);
    EXPECT_EQ(got, want);
    EXPECT_EQ(got_error, "") << "call " << got;
  }
}

// A received proxy (a Ref decoded: its claim pipelined, no round trip) whose claim the server
// refuses, the connection holding max_objects_held objects already, fails every call once the
// refusal is known, naming the object and the limit; and it gives back no reference when
// dropped, since it never had one (it used to be logged by the server only: the proxy's calls
// went on, and its drop's decref took a reference of another proxy of the same connection).
TEST_F(ServerTest, AReceivedProxyWhoseClaimIsRefusedFailsItsCalls) {
  restart_with_objects_held(2);
  auto c = raw_client(server_->address(), key_);
  send_hello(c);
  const std::uint64_t id = raw_create_counter(c);
  send_request(c, 2, [&](Request::Builder r) {
    auto p = r.initPark();
    p.setId(id);
    p.setTicket(77);
  });
  send_request(c, 3, [](Request::Builder r) { r.setPing(); });
  ASSERT_EQ(next_reply(c).first, 3u);  // parked
  auto m = client();
  auto a = m->create<Maths>("Maths");
  std::optional<mm::Proxy<Maths>> b(m->create<Maths>("Maths"));
  capnp::MallocMessageBuilder mb;
  auto ref = mb.initRoot<troupe::proto::Ref>();
  ref.setTypeid("Counter");
  const std::string address = server_->address().str();
  ref.setAddress(address.c_str());
  ref.setId(id);
  ref.setTicket(77);
  std::optional<mm::BaseProxy> p(mm::BaseProxy::_from_ref(ref.asReader()));
  EXPECT_EQ(a.call<&Maths::add>(2, 3), 5);  // a round trip after the claim: its answer is in
  try {
    (void)p->_callmethod<int>("increment");
    FAIL() << "a call through a proxy whose claim was refused";
  } catch (const troupe::ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("max_objects_held"), std::string::npos) << what;
    EXPECT_NE(what.find("Counter object " + std::to_string(id)), std::string::npos) << what;
  }
  // Under the limit, the connection takes a reference of its own (q); the raw client takes the
  // park over and lets both its references go: q's is the counter's only one.
  b.reset();
  ASSERT_TRUE(eventually([&] { return server_->number_of_objects() == 2; }));
  mm::BaseProxy q(mm::Token{.typeid_ = "Counter", .address = server_->address(), .id = id}, key_);
  send_request(c, 4, [&](Request::Builder r) {
    auto cl = r.initClaim();
    cl.setId(id);
    cl.setTicket(77);
  });
  send_request(c, 5, [&](Request::Builder r) { r.setDecref(id); });
  send_request(c, 6, [&](Request::Builder r) { r.setDecref(id); });
  send_request(c, 7, [](Request::Builder r) { r.setPing(); });
  EXPECT_EQ(next_reply(c).first, 4u);
  ASSERT_EQ(next_reply(c).first, 7u);
  p.reset();  // sends nothing: a decref would take q's reference, and the counter would go
  EXPECT_EQ(a.call<&Maths::add>(1, 1), 2);
  EXPECT_EQ(q._callmethod<int>("increment"), 1);
  EXPECT_EQ(server_->number_of_objects(), 2u);  // a, and the counter q holds
  // Received and dropped at once, mostly before the answer comes: claims of tickets never
  // parked (claims ahead of their park), the first two within the connection's limit of such
  // markers, the rest refused. A refused one gives nothing back, answered or not (a decref
  // would take q's reference); a taken one gives its reference back.
  for (std::uint64_t t = 100; t < 120; ++t) {
    ref.setTicket(t);
    (void)mm::BaseProxy::_from_ref(ref.asReader());
  }
  EXPECT_EQ(a.call<&Maths::add>(1, 1), 2);
  EXPECT_EQ(q._callmethod<int>("increment"), 2);
  EXPECT_EQ(server_->number_of_objects(), 2u);
}

// An incref over the connection's max_objects_held is answered with the refusal: a proxy made
// from a token raises it (it used to be logged by the server only, and the proxy went on as if
// it held a reference the server never counted). Under the limit again, the same token works.
TEST_F(ServerTest, AProxyFromATokenOverTheObjectsHeldLimitRaises) {
  restart_with_objects_held(2);
  auto c = raw_client(server_->address(), key_);
  send_hello(c);
  const mm::Token token{
      .typeid_ = "Counter", .address = server_->address(), .id = raw_create_counter(c)};
  auto m = client();
  auto a = m->create<Maths>("Maths");
  std::optional<mm::Proxy<Maths>> b(m->create<Maths>("Maths"));
  try {
    mm::BaseProxy p(token, key_);
    FAIL() << "a third object held past the limit of 2";
  } catch (const troupe::ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("max_objects_held"), std::string::npos) << what;
  }
  EXPECT_EQ(a.call<&Maths::add>(2, 3), 5);  // the connection goes on
  b.reset();
  ASSERT_TRUE(eventually([&] { return server_->number_of_objects() == 2; }));
  mm::BaseProxy p(token, key_);
  EXPECT_EQ(p._callmethod<int>("increment"), 1);
  EXPECT_EQ(server_->number_of_objects(), 2u);
}

// A request over the server's max_message_size (told in its Welcome) is refused by the client,
// unsent, naming both sizes: the connection, its other calls and its objects go on (the server
// would drop the connection).
TEST_F(ServerTest, ARequestOverTheServersLimitIsRefusedUnsent) {
  server_.reset();
  mm::ServerOptions o;
  o.max_message_size = 4096;
  start_server(std::nullopt, o);
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  const std::string big(10000, 'x');
  try {
    (void)maths.call<&Maths::greet>(big);
    FAIL() << "no error";
  } catch (const troupe::ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("over the limit"), std::string::npos) << what;
    EXPECT_NE(what.find("4096"), std::string::npos) << what;
  }
  boost::asio::io_context ctx;
  std::exception_ptr failed;
  maths.async_call<&Maths::greet>(
      big, boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::string) { failed = e; }));
  ctx.run();
  ASSERT_TRUE(failed);
  EXPECT_THROW(std::rethrow_exception(failed), troupe::ValueError);
  EXPECT_EQ(maths.call<&Maths::add>(2, 3), 5);
  EXPECT_EQ(m->number_of_objects(), 1u);
}

// A proxy among the arguments of a request refused for its size: the reference parked for it
// (its receiver would have claimed it) ends at once, not at the server's park_ttl.
TEST_F(ServerTest, ARefusedRequestEndsTheParksOfItsProxies) {
  server_.reset();
  mm::ServerOptions o;
  o.max_message_size = 4096;
  o.park_ttl = 299s;  // (the fixture shortens only the default)
  start_server(std::nullopt, o);
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  auto counter = m->create<Counter>("Counter");
  const std::string big(10000, 'x');
  auto refcounts_of_one = [&] {
    const std::string info = m->debug_info();
    return info.find("refcount=1") != std::string::npos &&
           info.find("refcount=2") == std::string::npos;
  };
  ASSERT_TRUE(refcounts_of_one()) << m->debug_info();
  EXPECT_THROW((void)maths._callmethod<std::string>("greet", counter, big), troupe::ValueError);
  EXPECT_TRUE(eventually(refcounts_of_one, 5s)) << m->debug_info();
  boost::asio::io_context ctx;
  std::exception_ptr failed;
  maths.async_callmethod<std::string>(
      "greet", std::tuple{counter, big},
      boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::string) { failed = e; }));
  ctx.run();
  ASSERT_TRUE(failed);
  EXPECT_THROW(std::rethrow_exception(failed), troupe::ValueError);
  EXPECT_TRUE(eventually(refcounts_of_one, 5s)) << m->debug_info();
  EXPECT_EQ(counter.call<&Counter::increment>(), 1);  // its own reference untouched
  EXPECT_EQ(m->number_of_objects(), 2u);
}

TEST_F(ServerTest, AClientThatDoesNotReadIsPausedAndLosesNothing) {
  // Small messages: the read budget is its floor (1 MiB); the replies below come to ~3 MiB.
  server_.reset();
  mm::ServerOptions o;
  o.max_message_size = 4096;
  start_server(std::nullopt, o);
  auto c = raw_client(server_->address(), key_);
  send_hello(c);
  const std::uint64_t id = raw_create_counter(c);
  constexpr std::uint64_t kRequests = 30000;
  std::thread writer([&] {
    for (std::uint64_t i = 0; i < kRequests; ++i)
      send_request(c, 100 + i, [&](Request::Builder r) { r.setGetMethods(id); });
  });
  // Meanwhile the server serves others.
  EXPECT_EQ(client()->create<Maths>("Maths").call<&Maths::add>(5, 6), 11);
  std::uint64_t next = 100;
  for (std::uint64_t i = 0; i < kRequests; ++i) {
    auto [call, error] = next_reply(c);
    ASSERT_EQ(call, next) << error;
    ASSERT_EQ(error, "");
    ++next;
  }
  writer.join();
}

// A thread's large request frames share one kept buffer, and a link its write buffers: requests
// of falling and rising sizes, one at a time and several in flight (queued for the link's
// thread), each arrive whole and with their own bytes, not an earlier request's.
TEST_F(ServerTest, LargeRequestsInKeptBuffersArriveWholeAndRight) {
  auto m = client();
  auto maths = m->create<Maths>("Maths");
  const std::size_t sizes[] = {std::size_t{3} << 20,   std::size_t{1} << 20,
                               std::size_t{5} << 20,   10,
                               std::size_t{300} << 10, std::size_t{3} << 20};
  char fill = 'a';
  for (const std::size_t n : sizes) {
    const std::string name(n, fill++);
    EXPECT_EQ(maths.call<&Maths::greet>(name), "hello " + name) << n << " bytes";
  }
  boost::asio::io_context ctx;
  std::vector<std::string> names;
  for (const std::size_t n : sizes) names.emplace_back(n, fill++);
  int right = 0;
  for (const auto& name : names)
    maths.async_call<&Maths::greet>(
        name, boost::asio::bind_executor(ctx, [&](std::exception_ptr e, std::string r) {
          EXPECT_FALSE(e);
          if (r == "hello " + name) ++right;
        }));
  ctx.run();
  EXPECT_EQ(right, static_cast<int>(names.size()));
}

// TLS under a manager's connections (ListenerOptions::tls on the server, LinkOptions::tls on the
// client): calls whose requests and replies are larger than a socket's buffer, three at once on
// one connection, each reply whole and to its caller.
TEST_F(ServerTest, ServesOverTlsRepliesLargerThanASocketBuffer) {
  troupe::testing::TlsFiles files;
  server_.reset();
  mm::ServerOptions o;
  o.listener.tls = mp::make_tls_context(
      mp::TlsRole::server,
      {.certificate_chain = files.path("server.pem"), .private_key = files.path("server.key")});
  start_server(Address::parse("127.0.0.1:0"), o);
  mm::ManagerOptions mo{.address = server_->address(), .authkey = key_};
  mo.link.tls = mp::make_tls_context(mp::TlsRole::client, {.trusted_ca = files.path("ca.pem")});
  TestManager m(mo);
  m.connect();
  auto maths = m.create<Maths>("Maths");
  EXPECT_EQ(maths.call<&Maths::add>(2, 3), 5);
  std::vector<std::thread> callers;
  std::atomic<int> right{0};
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&, t] {
      const std::string name(std::size_t{3} << 20, static_cast<char>('a' + t));
      try {
        if (maths.call<&Maths::greet>(name) == "hello " + name) ++right;
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
    });
  for (auto& c : callers) c.join();
  EXPECT_EQ(right.load(), 3);
  // A client without TLS gets no service from it.
  mm::ManagerOptions plain{.address = server_->address(), .authkey = key_};
  plain.link.connect_timeout = 1000ms;
  TestManager p(plain);
  EXPECT_ANY_THROW(p.connect());
}

}  // namespace
}  // namespace managers_test
