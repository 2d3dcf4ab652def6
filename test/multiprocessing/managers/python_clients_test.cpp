// Stock Python clients on a troupe manager (issue 18, CPython's dialect): every local python3
// (the system's and pyenv's, 3.8 and later) connects to a troupe Server with unmodified
// multiprocessing.managers code, over TCP and a Unix socket, and uses the sync types, the
// containers, nested proxies and C++ classes; bad pickles sent on purpose get the sender an error
// it can read and the server serves on; a wrong key is refused; a client killed in a blocking get
// releases its connection. Skipped, visibly, when no python3 is found.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/multiprocessing/managers.hpp"

#include "child_process.hpp"
#include "leak_check.hpp"
#include "python_key.hpp"
#include "test_types.hpp"

namespace managers_test {

/// The manager the Python clients reach: SyncManager's typeids, a queue every client shares,
/// and C++ classes.
struct PyManager : mm::Manager<PyManager> {
  using Manager::Manager;
};

inline bool register_py_types() {
  PyManager::register_<Squares>("baz");  // _TestMyManager's, with proxytype=IteratorProxy
  mm::register_sync_types(PyManager::registry());
  mm::register_shared_queue(PyManager::registry(), "get_queue");
  PyManager::register_<Maths>("Maths");
  PyManager::register_<Maths>("NarrowMaths", {.exposed = std::vector<std::string>{"add"}});
  PyManager::register_<Counter>("Counter");
  PyManager::register_<Factory>("Factory", {.method_to_typeid = {{"make_counter", "Counter"}}});
  return true;
}
static const bool py_types_registered = register_py_types();

namespace {

using namespace std::chrono_literals;
using troupe::testing::ChildProcess;
using troupe::testing::eventually;
using troupe::testing::find_pythons;

// The client: unmodified multiprocessing.managers code. argv: address (a Python literal); key
// (hex, in the environment: never on a command line). Prints "ok" at the end; any failed check is
// an AssertionError (exit 1).
constexpr const char* kClient = R"PY(
import array, multiprocessing, os, pickle, queue, sys, threading
from multiprocessing.managers import SyncManager, RemoteError
from multiprocessing.connection import Client

address = eval(sys.argv[1])
key = bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY'])
# Proxies that arrive inside values (a list in a list) connect with the process's key (CPython's
# rule, doc/interop.md).
multiprocessing.current_process().authkey = key

class M(SyncManager):
    pass

for typeid in ('get_queue', 'Maths', 'NarrowMaths', 'Counter'):
    M.register(typeid)
M.register('Factory', method_to_typeid={'make_counter': 'Counter'})
M.register('baz', proxytype=multiprocessing.managers.IteratorProxy)

m = M(address=address, authkey=key)
m.connect()
base = m._number_of_objects()

def raises(cls, f, *a, **k):
    try:
        f(*a, **k)
    except cls as e:
        return e
    raise AssertionError('%s did not raise %s' % (f, cls.__name__))

# Queues, with Python's keywords and exceptions.
q = m.Queue()
q.put({'a': [1, 2.5, 'x', b'y', None, (1, 2)], 'b': {1, 2}, 3: frozenset([4])})
assert q.qsize() == 1 and not q.empty()
assert q.get(timeout=5) == {'a': [1, 2.5, 'x', b'y', None, (1, 2)], 'b': {1, 2}, 3: frozenset([4])}
assert raises(queue.Empty, q.get, timeout=0.05).args == ()   # raised bare, as CPython's
raises(queue.Empty, q.get_nowait)
q.put(item=7, block=True, timeout=1)
assert q.get(block=False) == 7
raises(queue.Empty, q.get, None)   # block=None: Python's falsy, not the default
raises(queue.Empty, q.get, block=None, timeout=5)
q.put(8, timeout=5)                # block left out: the default (True), not None
assert q.get(None) == 8
small = m.Queue(maxsize=1)
small.put_nowait(1)
assert raises(queue.Full, small.put, 2, timeout=0.05).args == ()
raises(TypeError, q.get, timeout=1, bogus=2)
shared = m.get_queue()
shared.put(('from', sys.version_info[:2]))
assert shared.get(timeout=5) == ('from', sys.version_info[:2])

# dict, list, Namespace, Value.
d = m.dict(a=1)
d['b'] = 2
d.update({'c': 3}, e=5)
assert d.get('zz', 9) == 9 and d['c'] == 3 and len(d) == 4 and 'a' in d
assert sorted(d.keys()) == ['a', 'b', 'c', 'e']
assert dict(d) == {'a': 1, 'b': 2, 'c': 3, 'e': 5}
assert sorted(k for k in d) == ['a', 'b', 'c', 'e']   # __iter__: an Iterator proxy
del d['a']
e = raises(KeyError, d.__getitem__, 'a')
assert e.args == ('a',), e.args          # the key itself, as CPython's server sends it
odd = "it's \"q\"\n\u00e9\U0001f600\\"
assert raises(KeyError, d.__getitem__, odd).args == (odd,)
assert raises(KeyError, d.__getitem__, -12345).args == (-12345,)
assert raises(KeyError, d.pop, None).args == (None,)
assert d.copy() == {'b': 2, 'c': 3, 'e': 5}
assert m.list(range(3))[:] == [0, 1, 2]   # the docs' own example
l = m.list([3, 1, 2])
l.append(4)
l += [0]
assert l[1] == 1 and l[-1] == 0 and l[1:3] == [1, 2] and len(l) == 5
l.sort(reverse=True)
assert list(l) == [4, 3, 2, 1, 0]
r = reversed(l)   # an iterator, as CPython's list_reverseiterator pickles
assert next(r) == 0 and list(r) == [1, 2, 3, 4]
raises(IndexError, l.__getitem__, 99)
ns = m.Namespace()
ns.x = 10
ns.y = 'why'
assert ns.x == 10 and ns.y == 'why'
g = ns._getvalue()   # a managers.Namespace, as CPython's server sends it
assert type(g) is multiprocessing.managers.Namespace and g.x == 10 and g.y == 'why'
ns.inner = m.list([5])   # a proxy in the Namespace's value: one to Python too
assert list(ns._getvalue().inner) == [5]
ns.inner = None
raises(AttributeError, getattr, ns, 'nope')
assert str(m.Namespace(x=1, x2=2)) == 'Namespace(x2=2, x=1)'   # Python sorts 'name=value'
with m.Pool(processes=2) as pool:   # CPython's test_pool names it
    pass
del pool
v = m.Value('i', 5)
v.value = 7
assert v.value == 7
got = v._getvalue()   # the managers.Value itself, as CPython's server sends it
assert type(got) is multiprocessing.managers.Value and got.value == 7 and got._typecode == 'i'
# Array: an array.array, as Python's own manager holds; slices and the value come back as
# arrays, and a slice is assigned an array of the same typecode (a list: Python's TypeError).
a = m.Array('i', array.array('i', [1, 2, 3]))
assert a[1:] == array.array('i', [2, 3]) and type(a[1:]) is array.array
a[0:2] = array.array('i', [7, 8, 9])
assert a._getvalue() == array.array('i', [7, 8, 9, 3]) and len(a) == 4
raises(TypeError, a.__setitem__, slice(0, 2), [1, 2])
raises(TypeError, a.__setitem__, slice(0, 2), array.array('d', [1.0]))
tc = 'w' if sys.version_info >= (3, 13) else 'u'   # 'u' is deprecated from 3.13
assert m.Array(tc, 'h\u00e9\U0001f600')[:] == array.array(tc, 'h\u00e9\U0001f600')
assert m.Array('d', array.array('d', [0.5]))._getvalue() == array.array('d', [0.5])

# Nested proxies: a list in a list is a reference, so later changes show through the outer one.
outer = m.list()
inner = m.list()
outer.append(inner)
inner.append(42)
assert outer[0][0] == 42
book = m.dict()
book['inner'] = inner
inner.append(43)
assert list(book['inner']) == [42, 43]
# A proxy whose only holder lets go before the receiver takes it: popped from a list, and sent
# through a queue after the sender's own proxy is gone.
outer.append(m.list([5]))
popped = outer.pop()
assert list(popped) == [5]
q.put(m.dict(k='v'))
sent = q.get(timeout=5)
assert sent['k'] == 'v'
# A proxy passed where the method iterates is iterated, as CPython's server does.
src = m.list([1, 2])
assert m.list(src)[:] == [1, 2]
grown = m.list([0])
grown.extend(src)
grown += src
assert grown[:] == [0, 1, 2, 1, 2]
grown[0:1] = src                 # a slice's value is iterated too
assert grown[:] == [1, 2, 1, 2, 1, 2]
raises(TypeError, grown.extend, m.Value('i', 1))   # a ValueProxy is not iterable
dsrc = m.dict(a=1)
dd = m.dict()
dd.update(dsrc)
assert dd.copy() == {'a': 1}
del src, grown, dsrc, dd
# A proxy the call only looks at holds its object only while the call runs, as in CPython.
probe = m.list([9])
assert probe not in outer and outer.count(probe) == 0
raises(ValueError, outer.remove, probe)
assert list(m.dict().get('nope', probe)) == [9]
del probe
del outer, book, popped, sent

# Locks and events, from two connections (this thread's and another's).
lock = m.Lock()
assert lock.acquire()
got = []
t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
t.start(); t.join()
assert got == [False]
got = []
t = threading.Thread(target=lambda: got.append(lock.acquire(None)))  # None: not blocking
t.start(); t.join()
assert got == [False]
raises(OverflowError, lock.acquire, True, 1e300)   # as CPython's C acquire, held or not
raises(OverflowError, lock.acquire, timeout=-1e300)
lock.release()
with lock:
    pass
rlock = m.RLock()
with rlock:
    with rlock:
        pass
e = m.Event()
assert not e.wait(timeout=0.01)
e.set()
assert e.is_set() and e.wait(1)
sem = m.Semaphore(2)
assert sem.acquire() and sem.acquire() and not sem.acquire(blocking=False)
b = m.Barrier(1)
assert b.wait(timeout=1) == 0 and b.parties == 1

# C++ classes: arguments converted to the parameters' types, errors Python can read.
maths = m.Maths()
assert maths.add(2, 3) == 5 and maths.mul(1.5, 4) == 6.0 and maths.greet('py') == 'hello py'
assert maths.add(True, 2) == 3 and maths.mul(True, 2.5) == 2.5   # a bool is an int
err = raises(ValueError, maths.fail, 'boom')
assert 'boom' in str(err), err
err = raises(TypeError, maths.add, 'two', 3)
assert 'argument 1' in str(err) or 'parameter' in str(err), err
raises(TypeError, maths.add, 1, b=2)
narrow = m.NarrowMaths()
assert narrow.add(1, 1) == 2
raises(AttributeError, getattr, narrow, 'mul')
# Raised outside the method, as CPython's server does: RemoteError (_TestMyManager's '_h').
assert 'AttributeError' in str(raises(RemoteError, narrow._callmethod, 'mul', (1, 2)))
assert 'AttributeError' in str(raises(RemoteError, q._callmethod, 'no_such_method'))
raises(RemoteError, m.Semaphore, -1)
factory = m.Factory()
counter = factory.make_counter()   # method_to_typeid: '#PROXY'
assert counter.increment() == 1 and counter.increment() == 2
# _TestMyManager's baz: an IteratorProxy over a C++ class's next().
assert list(m.baz()) == [i * i for i in range(10)]

# Bad pickles sent on purpose, each on a connection of its own: the reply names the refusal, and
# the server serves on.
def raw(data):
    c = Client(address, authkey=key)
    c.send_bytes(data)
    kind, text = c.recv()
    c.close()
    assert kind == '#TRACEBACK', kind
    return text
t = raw(b'\x80\x04cos\nsystem\n\x8c\x04echo\x85R.')
assert 'os.system' in t, t
t = raw(b'\x80\x04' + b']' * 1000000 + b'a' * 999999 + b'.')   # lists 10**6 deep
assert 'deeper than max_depth' in t, t
t = raw(b'\x80\x04\x8e' + (1 << 40).to_bytes(8, 'little') + b'abc')
assert 'bytes' in t or 'length' in t, t
t = raw(pickle.dumps((None, 'no_such_function', (), {})))
assert 'no_such_function' in t, t
assert q.qsize() == 0   # still served

del q, small, shared, d, l, ns, v, a, inner, lock, rlock, e, sem, b, maths, narrow, factory, counter
del err, t
import gc
gc.collect()
assert m._number_of_objects() == base, (m._number_of_objects(), base, m._debug_info())
print('ok')
)PY";

// A client that blocks in a get until it is killed.
constexpr const char* kBlocked = R"PY(
import os, sys
from multiprocessing.managers import BaseManager
class M(BaseManager):
    pass
M.register('get_queue')
m = M(address=eval(sys.argv[1]), authkey=bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY']))
m.connect()
q = m.get_queue()
print('waiting', flush=True)
q.get()
)PY";

#if defined(TROUPE_ASAN) || defined(TROUPE_TSAN)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

class PythonClientsTest : public troupe::testing::LeakCheck {
protected:
  void SetUp() override {
    LeakCheck::SetUp();
    python_key_.emplace();
    key_ = python_key_->key();
  }
  void start(std::optional<mp::Address> address) {
    mm::ServerOptions o;
    o.listener.authkey = key_;
    o.listener.auth.legacy_md5 = true;  // 3.11 and older answer with HMAC-MD5
    o.threads = 2;
    server_ = std::make_unique<mm::Server>(PyManager::registry(), address, o);
    server_->start();
  }
  void TearDown() override {
    server_.reset();
    python_key_.reset();
    LeakCheck::TearDown();
  }
  // The server's address as a Python literal.
  std::string python_address() const {
    const auto& a = server_->address();
    if (a.family == mp::Address::Family::unix_path) return "'" + a.host + "'";
    return "('" + a.host + "', " + std::to_string(a.port) + ")";
  }

  // The Pythons a test runs its client with: every one found, except under the sanitizers,
  // where the server is what is checked: the oldest and the newest Python (each run takes ten
  // times as long there); under TSan, which looks for races in the server, the newest alone
  // (one client's run there is 25 s).
  static auto pythons_to_run() {
    auto pythons = find_pythons();
    auto by_minor = [](const auto& a, const auto& b) { return a.minor < b.minor; };
    if (pythons.empty()) return pythons;
    if (troupe::testing::kThreadSanitizer) {
      pythons = {*std::max_element(pythons.begin(), pythons.end(), by_minor)};
    } else if (kSanitized && pythons.size() > 2) {
      const auto [oldest, newest] = std::minmax_element(pythons.begin(), pythons.end(), by_minor);
      pythons = {*oldest, *newest};
    }
    return pythons;
  }

  void every_python_runs_the_client() {
    const auto pythons = pythons_to_run();
    if (pythons.empty()) GTEST_SKIP() << "no python3 found";
    for (const auto& py : pythons) {
      SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
      ChildProcess child({py.exe, "-c", kClient, python_address()}, true);
      const std::string out = child.read_rest(120s);
      EXPECT_EQ(child.wait(10s), 0) << out;
      EXPECT_NE(out.find("ok"), std::string::npos) << out;
    }
    // Every proxy the clients made was dropped (their finalizers decref at exit).
    EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }, 10s))
        << server_->debug_info();
  }

  std::optional<PythonKey> python_key_;
  mp::AuthenticationString key_;
  std::unique_ptr<mm::Server> server_;
};

TEST_F(PythonClientsTest, EveryPythonUsesATroupeManagerOverTcp) {
  start(mp::Address::parse("127.0.0.1:0"));
  every_python_runs_the_client();
}

TEST_F(PythonClientsTest, EveryPythonUsesATroupeManagerOverAUnixSocket) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("troupe-py-clients-" + std::to_string(::getpid()) + ".sock");
  start(mp::Address::parse("unix:" + path.string()));
  every_python_runs_the_client();
  server_.reset();
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(PythonClientsTest, AWrongKeyIsRefused) {
  start(mp::Address::parse("127.0.0.1:0"));
  const auto pythons = find_pythons();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  ChildProcess child({pythons.front().exe, "-c",
                      "import sys\n"
                      "from multiprocessing.managers import BaseManager\n"
                      "from multiprocessing import AuthenticationError\n"
                      "m = BaseManager(address=eval(sys.argv[1]), authkey=b'wrong')\n"
                      "try:\n"
                      "    m.connect()\n"
                      "except AuthenticationError as e:\n"
                      "    print('refused', e)\n",
                      python_address()},
                     true);
  const std::string out = child.read_rest(60s);
  EXPECT_EQ(child.wait(10s), 0) << out;
  EXPECT_NE(out.find("refused"), std::string::npos) << out;
}

TEST_F(PythonClientsTest, AClientKilledInABlockingGetReleasesItsConnection) {
  start(mp::Address::parse("127.0.0.1:0"));
  const auto pythons = find_pythons();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  {
    ChildProcess child({pythons.front().exe, "-c", kBlocked, python_address()}, true);
    ASSERT_EQ(child.read_line(60s), std::optional<std::string>("waiting"));
    ASSERT_TRUE(eventually([&] { return server_->connection_count() >= 1; }, 10s));
    ::kill(child.pid(), SIGKILL);
    EXPECT_EQ(child.wait(10s), 128 + SIGKILL);
  }
  // Its proxy's connection closes with it, and its waiting get is failed (not left holding the
  // next item): a later client gets what is put.
  EXPECT_TRUE(eventually([&] { return server_->connection_count() == 0; }, 10s));
  ChildProcess next({pythons.front().exe, "-c",
                     "import os, sys\n"
                     "from multiprocessing.managers import BaseManager\n"
                     "class M(BaseManager): pass\n"
                     "M.register('get_queue')\n"
                     "m = M(address=eval(sys.argv[1]),\n"
                     "      authkey=bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY']))\n"
                     "m.connect()\n"
                     "q = m.get_queue()\n"
                     "q.put('after')\n"
                     "print(q.get(timeout=5))\n",
                     python_address()},
                    true);
  const std::string out = next.read_rest(60s);
  EXPECT_EQ(next.wait(10s), 0) << out;
  EXPECT_NE(out.find("after"), std::string::npos) << out;
}

// A Python client stores proxies to another manager's objects in a troupe manager's
// containers and queues, as CPython allows: the troupe server becomes that manager's client (a
// second troupe server, and a CPython 3.12+ SyncManager the client starts, whose handshake needs
// no legacy opt-in), what it sends back is that manager's Token, and changes through any proxy
// are seen through the others. argv: the two troupe servers' addresses.
constexpr const char* kForeign = R"PY(
import multiprocessing, os, sys
from multiprocessing.managers import SyncManager

key = bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY'])
multiprocessing.current_process().authkey = key   # proxies that arrive in values connect with it
a = SyncManager(address=eval(sys.argv[1]), authkey=key)
a.connect()
b = SyncManager(address=eval(sys.argv[2]), authkey=key)
b.connect()
others = [b]
if sys.version_info >= (3, 12):
    py = SyncManager(address=('127.0.0.1', 0), authkey=key)
    py.start()
    others.append(py)
for other in others:
    foreign = other.list([1])
    d = a.dict()
    d['x'] = foreign                       # a holds it, as other's client
    got = d['x']                           # other's Token comes back
    assert got._token.address == foreign._token.address, (got._token, foreign._token)
    assert got._token.id == foreign._token.id, (got._token, foreign._token)
    got.append(2)
    assert foreign[:] == [1, 2], foreign[:]
    outer = a.list([foreign, foreign])
    popped = outer.pop()                   # its element's reference goes after the reply
    popped.append(3)
    assert foreign[:] == [1, 2, 3] and len(outer) == 1
    q = a.Queue()
    q.put(foreign)
    assert q.get(timeout=5)[:] == [1, 2, 3]
    q.put([other.dict(k='v')])             # the sender's proxy is gone before the get
    assert q.get(timeout=5)[0]['k'] == 'v'
    ns = a.Namespace()
    ns.inner = other.dict(k=1)
    ns.inner['k'] = 2                      # through the rebuilt proxy
    assert ns.inner['k'] == 2
    del foreign, got, popped
    assert d['x'][:] == [1, 2, 3]          # d keeps it alive on `other`
    del d, outer, ns, q
if sys.version_info >= (3, 12):
    py.shutdown()
print('ok')
)PY";

TEST_F(PythonClientsTest, APythonClientStoresAnotherManagersProxies) {
  const auto pythons = pythons_to_run();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  // The servers connect to the other managers with this process's key, as CPython's do.
  auto process = mp::current_process();
  const mp::AuthenticationString old_key = process.authkey();
  process.set_authkey(key_);
  mm::ServerOptions o;
  o.listener.authkey = key_;
  o.listener.auth.legacy_md5 = true;
  o.threads = 2;
  o.park_ttl = 1s;  // the references kept for Python receivers go soon after
  server_ =
      std::make_unique<mm::Server>(PyManager::registry(), mp::Address::parse("127.0.0.1:0"), o);
  server_->start();
  mm::Server other(PyManager::registry(), mp::Address::parse("127.0.0.1:0"), o);
  other.start();
  const auto& b = other.address();
  const std::string other_address = "('" + b.host + "', " + std::to_string(b.port) + ")";
  for (const auto& py : pythons) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    ChildProcess child({py.exe, "-c", kForeign, python_address(), other_address}, true);
    const std::string out = child.read_rest(120s);
    EXPECT_EQ(child.wait(10s), 0) << out;
    EXPECT_NE(out.find("ok"), std::string::npos) << out;
  }
  // Every reference the first server held on the second (its containers', and those it kept
  // for the client) is released.
  EXPECT_TRUE(eventually([&] { return other.number_of_objects() == 0; }, 15s))
      << other.debug_info();
  EXPECT_TRUE(eventually([&] { return server_->number_of_objects() == 0; }, 15s))
      << server_->debug_info();
  server_.reset();
  other.stop();
  process.set_authkey(old_key);
}

// With ServerOptions::foreign_proxies off, a Python client's proxy to another manager's object
// is refused naming the proxy and the option, and the server serves on.
TEST_F(PythonClientsTest, AServerWithoutForeignProxiesRefusesAPythonClientsOne) {
  const auto pythons = find_pythons();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  mm::ServerOptions o;
  o.listener.authkey = key_;
  o.listener.auth.legacy_md5 = true;
  o.threads = 2;
  o.foreign_proxies = false;
  server_ =
      std::make_unique<mm::Server>(PyManager::registry(), mp::Address::parse("127.0.0.1:0"), o);
  server_->start();
  mm::ServerOptions open = o;
  open.foreign_proxies = true;
  mm::Server other(PyManager::registry(), mp::Address::parse("127.0.0.1:0"), open);
  other.start();
  const auto& b = other.address();
  ChildProcess child({pythons.front().exe, "-c",
                      "import os, sys\n"
                      "from multiprocessing.managers import SyncManager, RemoteError\n"
                      "key = bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY'])\n"
                      "a = SyncManager(address=eval(sys.argv[1]), authkey=key); a.connect()\n"
                      "b = SyncManager(address=eval(sys.argv[2]), authkey=key); b.connect()\n"
                      "d = a.dict()\n"
                      "try:\n"
                      "    d['x'] = b.list([1])\n"
                      "except (TypeError, RemoteError) as e:\n"
                      "    print('refused', e)\n"
                      "d['y'] = 1\n"
                      "print(len(d))\n",
                      python_address(), "('" + b.host + "', " + std::to_string(b.port) + ")"},
                     true);
  const std::string out = child.read_rest(60s);
  EXPECT_EQ(child.wait(10s), 0) << out;
  EXPECT_NE(out.find("refused"), std::string::npos) << out;
  EXPECT_NE(out.find("foreign_proxies is off"), std::string::npos) << out;
  EXPECT_NE(out.find("\n1\n"), std::string::npos) << out;
  EXPECT_TRUE(eventually([&] { return other.number_of_objects() == 0; }, 10s))
      << other.debug_info();
}

// A stock Python SharedMemoryManager client on a troupe SharedMemoryManager's server: its
// segments are tracked (track_segment, list_segments; a name tracked twice is listed twice, as
// CPython's list), release_segment forgets a name once and unlinks the segment now
// (FileNotFoundError once it is gone), refuses one not tracked with CPython's ValueError, and
// the server unlinks the rest when it stops. A server that tracks no segments refuses the
// functions by name.
constexpr const char* kSharedMemoryClient = R"PY(
import os, sys
from multiprocessing import resource_tracker
from multiprocessing.connection import Client
from multiprocessing.managers import SharedMemoryManager, RemoteError, dispatch
key = bytes.fromhex(os.environ['TROUPE_TEST_AUTHKEY'])
smm = SharedMemoryManager(address=eval(sys.argv[1]), authkey=key)
smm.connect()
def call(name, *args):
    with Client(smm.address, authkey=key) as c:
        return dispatch(c, None, name, args)
if sys.argv[2] == 'plain':
    try:
        smm.SharedMemory(64)
    except RemoteError as e:
        print('refused', e)
    sys.exit(0)
sm = smm.SharedMemory(64)
sm.buf[:3] = b'abc'
sl = smm.ShareableList([1, 'two', 3.0])
assert call('list_segments') == [sm.name, sl.shm.name], call('list_segments')
call('track_segment', sm.name)  # a second time: CPython's list holds it twice
assert call('list_segments') == [sm.name, sl.shm.name, sm.name], call('list_segments')
call('release_segment', sm.name)  # forgets it once, and unlinks it
assert call('list_segments') == [sl.shm.name, sm.name], call('list_segments')
try:
    call('release_segment', sm.name)  # forgotten again, but gone already
    raise AssertionError('unlinked twice')
except RemoteError as e:
    assert 'FileNotFoundError' in str(e), e
assert call('list_segments') == [sl.shm.name]
try:
    call('release_segment', sm.name)
    raise AssertionError('released twice')
except RemoteError as e:
    assert 'ValueError' in str(e), e
# The server owns them now: this process's resource tracker lets them be.
for s in (sm, sl.shm):
    s.close()
    resource_tracker.unregister(s._name, 'shared_memory')
print('left', sl.shm.name)
print('ok')
)PY";

TEST_F(PythonClientsTest, APythonSharedMemoryManagerClientsSegmentsAreTracked) {
  const auto pythons = pythons_to_run();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  auto exists = [](const std::string& name) {
    const int fd = ::shm_open(("/" + name).c_str(), O_RDONLY, 0);
    if (fd >= 0) ::close(fd);
    return fd >= 0;
  };
  for (const auto& py : pythons) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    mm::ServerOptions o;
    o.listener.authkey = key_;
    o.listener.auth.legacy_md5 = true;
    o.threads = 2;
    o.track_segments = true;
    server_ =
        std::make_unique<mm::Server>(PyManager::registry(), mp::Address::parse("127.0.0.1:0"), o);
    server_->start();
    ChildProcess child({py.exe, "-c", kSharedMemoryClient, python_address(), "tracked"}, true);
    const std::string out = child.read_rest(60s);
    EXPECT_EQ(child.wait(10s), 0) << out;
    ASSERT_NE(out.find("ok"), std::string::npos) << out;
    const auto at = out.find("left ");
    ASSERT_NE(at, std::string::npos) << out;
    const std::string left = out.substr(at + 5, out.find('\n', at) - at - 5);
    EXPECT_TRUE(exists(left)) << left;
    server_.reset();  // the server unlinks what it still tracks
    EXPECT_FALSE(exists(left)) << left;
  }
  start(mp::Address::parse("127.0.0.1:0"));  // tracks no segments
  ChildProcess child({pythons.front().exe, "-c", kSharedMemoryClient, python_address(), "plain"},
                     true);
  const std::string out = child.read_rest(60s);
  EXPECT_EQ(child.wait(10s), 0) << out;
  EXPECT_NE(out.find("refused"), std::string::npos) << out;
  EXPECT_NE(out.find("'track_segment' unrecognized"), std::string::npos) << out;
}

}  // namespace
}  // namespace managers_test
