// Proxies stored in managed containers are references (CPython's _TestContainers
// test_list_proxy_in_list and test_dict_proxy_nested; CPython #76719, #91192): a change made
// through the inner proxy is seen through the outer container and the reverse; the inner object
// lives while a container holds it, and goes when the last holder does.
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"

namespace nested_proxies_test {
namespace {

namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;
using troupe::testing::eventually;
using Ints = std::vector<std::int64_t>;

class NestedProxiesTest : public troupe::testing::StartMethodTest {};

// Every built-in proxy travels as a Value.ref under one Codec, which names the proxy type (and
// its element types) in signatures and in the error for a value that is not a proxy.
TEST(BuiltinProxyCodec, NamesTheProxyTypeAndRefusesAValueThatIsNotAProxy) {
  using troupe::Codec;
  const std::string str = Codec<std::string>::signature();
  const std::string i64 = Codec<std::int64_t>::signature();
  EXPECT_EQ(Codec<mm::EventProxy>::signature(), "EventProxy");
  EXPECT_EQ(Codec<mm::QueueProxy<std::int64_t>>::signature(), "QueueProxy<" + i64 + ">");
  EXPECT_EQ((Codec<mm::DictProxy<std::string, mm::ListProxy<std::int64_t>>>::signature()),
            "DictProxy<" + str + ",ListProxy<" + i64 + ">>");
  EXPECT_EQ(Codec<mm::PoolProxy>::signature(), "PoolProxy");
  try {
    (void)troupe::from_bytes<mm::BarrierProxy>(troupe::to_bytes(std::int64_t{5}));
    FAIL() << "an integer decoded as a BarrierProxy";
  } catch (const troupe::TypeError& e) {  // the message's type, checked before its body
    EXPECT_NE(std::string(e.what()).find("BarrierProxy"), std::string::npos) << e.what();
  }
}

TEST_P(NestedProxiesTest, ListProxyInList) {
  mm::SyncManager m(options());
  m.start();
  std::vector<mm::ListProxy<std::int64_t>> inners;
  for (int i = 0; i < 3; ++i) inners.push_back(m.list<std::int64_t>({0, 1, 2}));
  auto a = m.list<mm::ListProxy<std::int64_t>>(inners);
  inners.clear();  // the outer list holds them now
  for (std::int64_t i = 0; i < 3; ++i) EXPECT_EQ(a.get(i).copy(), (Ints{0, 1, 2}));
  a.get(0).set(-1, 55);
  EXPECT_EQ(a.get(0).copy(), (Ints{0, 1, 55}));
  for (std::int64_t i = 1; i < 3; ++i) EXPECT_EQ(a.get(i).copy(), (Ints{0, 1, 2}));
  EXPECT_EQ(a.get(1).pop(), 2);
  EXPECT_EQ(a.get(1).size(), 2u);
  for (std::int64_t i = 0; i < 3; i += 2) EXPECT_EQ(a.get(i).size(), 3u);

  // CPython: b = self.list(); b.append(a[0]); ... the same object through both.
  auto b = m.list<mm::ListProxy<std::int64_t>>();
  b.append(a.get(0));
  a.get(0).append(7);
  EXPECT_EQ(b.get(0).copy(), (Ints{0, 1, 55, 7}));
  // Python's a[0].append(8): the element is a proxy to call through.
  a[0]->append(8);
  EXPECT_EQ(b[0]->copy(), (Ints{0, 1, 55, 7, 8}));
  // Three lists, the outer two: five objects.
  EXPECT_EQ(m.number_of_objects(), 5u);
}

// CPython's test_list_proxy_in_list, its last step: `b = self.list(); b.append(b); del b`. A
// managed list that holds a reference to itself works (the element is the list itself) and,
// as in Python, is never released by its proxies: the cycle holds it until the server stops,
// which still stops at once.
TEST_P(NestedProxiesTest, AListHoldingItselfLivesUntilTheServerStops) {
  mm::SyncManager m(options());
  m.start();
  const std::size_t before = m.number_of_objects();
  {
    auto b = m.list<std::int64_t>();
    b._callmethod<std::monostate>("append", static_cast<const mm::BaseProxy&>(b));
    EXPECT_EQ(b._callmethod<std::int64_t>("__len__"), 1);
    auto self = b._callmethod<mm::BaseProxy>("__getitem__", std::int64_t{0});
    EXPECT_EQ(self._token().id, b._token().id);
  }
  std::this_thread::sleep_for(100ms);  // the proxies' releases have been sent and served
  EXPECT_EQ(m.number_of_objects(), before + 1) << "the list that holds itself was released";
  m.shutdown();
}

TEST_P(NestedProxiesTest, DictProxyNested) {
  mm::SyncManager m(options());
  m.start();
  using D = mm::DictProxy<std::string, std::int64_t>;
  auto pets = m.dict<std::string, std::int64_t>();
  pets["ferrets"] = 2;
  pets["hamsters"] = 4;
  auto supplies = m.dict<std::string, std::int64_t>();
  supplies["water"] = 10;
  supplies["feed"] = 3;
  auto d = m.dict<std::string, D>();
  d["pets"] = pets;
  d["supplies"] = supplies;
  EXPECT_EQ(supplies.get("water"), 10);
  EXPECT_EQ(d["supplies"].get().get("water"), 10);
  d["supplies"].get()["blankets"] = 5;
  EXPECT_EQ(supplies.get("blankets"), 5);
  EXPECT_EQ(d["supplies"].get().get("blankets"), 5);
  d["supplies"].get()["water"] = 7;
  EXPECT_EQ(supplies.get("water"), 7);
  EXPECT_EQ(d["supplies"].get().get("water"), 7);
  // Python's d['supplies']['water'] = 8, d['supplies'].get('water').
  d["supplies"]->set("water", 8);
  EXPECT_EQ(d["supplies"]->get("water"), 8);

  // The client's proxies go: the dict keeps the inner objects alive (§1.8 step 5).
  pets = {};
  supplies = {};
  EXPECT_EQ(d["pets"].get().get("ferrets"), 2);
  d["supplies"].get()["blankets"] = 11;
  EXPECT_EQ(d["supplies"].get().get("blankets"), 11);
  EXPECT_EQ(m.number_of_objects(), 3u);
  // Proxies read back out of it (step 6), alive through them once the dict lets go (step 7).
  pets = d["pets"].get();
  supplies = d["supplies"].get();
  supplies["water"] = 7;
  EXPECT_EQ(d["supplies"].get().get("water"), 7);
  d.clear();
  EXPECT_EQ(d.size(), 0u);
  EXPECT_EQ(supplies.get("water"), 7);
  EXPECT_EQ(pets.get("hamsters"), 4);
  // In a list (steps 8, 9).
  auto l = m.list<D>({pets, supplies});
  l.get(0)["marmots"] = 1;
  EXPECT_EQ(pets.get("marmots"), 1);
  EXPECT_EQ(l.get(0).get("marmots"), 1);
  pets = {};
  supplies = {};
  EXPECT_EQ(l.get(0).get("marmots"), 1);
  EXPECT_EQ(l.get(-1).get("feed"), 3);
  EXPECT_EQ(m.number_of_objects(), 4u);
  // Step 10: a plain list beside a proxy in one list: the plain one is a copy, the proxy a
  // reference (`outer[-1][-1]['feed'] == 3`).
  using L = mm::ListProxy<D>;
  using Element = std::variant<std::vector<std::int64_t>, L>;
  auto outer = m.list<Element>({Element(std::vector<std::int64_t>{88, 99}), Element(l)});
  ASSERT_EQ(outer.get(0).index(), 0u);
  EXPECT_EQ(std::get<0>(outer.get(0)), (std::vector<std::int64_t>{88, 99}));
  EXPECT_EQ(std::get<1>(outer.get(-1)).get(-1).get("feed"), 3);
  EXPECT_EQ(m.number_of_objects(), 5u);
  // Every holder gone: every object released (CPython leaks them, #103136).
  outer = {};
  l = {};
  d = {};
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
}

// §1.9 test_nested_queue: the only client proxy is a temporary; the queue lives in the holder.
TEST_P(NestedProxiesTest, NestedQueue) {
  mm::SyncManager m(options());
  m.start();
  auto a = m.list<mm::QueueProxy<std::int64_t>>();
  a.append(m.Queue<std::int64_t>());
  a.get(0).put(123);
  EXPECT_EQ(a.get(0).get(), 123);
  auto b = m.dict<std::int64_t, mm::QueueProxy<std::int64_t>>();
  b[0] = m.Queue<std::int64_t>();
  b[0].get().put(456);
  EXPECT_EQ(b[0].get().get(), 456);
}

// Replacing and removing elements releases what they referred to; the outer's release releases
// the inner ones it still held.
TEST_P(NestedProxiesTest, ElementsReleasedWithTheirHolder) {
  mm::SyncManager m(options());
  m.start();
  {
    auto outer = m.list<mm::QueueProxy<std::int64_t>>();
    for (int i = 0; i < 4; ++i) outer.append(m.Queue<std::int64_t>());
    EXPECT_EQ(m.number_of_objects(), 5u);
    outer.get(2).put(42);
    EXPECT_EQ(outer.get(2).get(), 42);
    (void)outer.pop();
    EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 4; }));
    outer.set(0, m.Queue<std::int64_t>());  // the old element's queue goes
    EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 4; }));
  }
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
}

// A proxy passed as an argument that the object does not keep (looked at, returned, refused)
// holds its object only while the call runs, as in CPython (the reference its sending parked
// for the server ends with the call, not ServerOptions::park_ttl later); one the object keeps
// (appended, put into a queue) keeps it alive.
TEST_P(NestedProxiesTest, AProxyArgumentTheObjectDoesNotKeepIsReleasedWithTheCall) {
  mm::SyncManager m(options());
  m.start();
  using L = mm::ListProxy<std::int64_t>;
  {
    auto outer = m.list<L>();
    auto inner = m.list<std::int64_t>({1});
    EXPECT_FALSE(outer.contains(inner));
    EXPECT_EQ(outer.count(inner), 0u);
    EXPECT_THROW(outer.remove(inner), troupe::ValueError);
    EXPECT_THROW((void)outer.index(inner), troupe::ValueError);
    auto d = m.dict<std::string, L>();
    EXPECT_EQ(d.get("k", inner).copy(), (Ints{1}));  // the default comes back: a new reference
    EXPECT_EQ(d.pop("k", inner).copy(), (Ints{1}));
    auto full = m.Queue<L>(1);
    full.put(m.list<std::int64_t>({2}));  // kept: the queue holds it
    EXPECT_THROW(full.put_nowait(inner), troupe::queue::Full);
    EXPECT_THROW(full.put(inner, true, 50ms), troupe::queue::Full);
    EXPECT_EQ(m.number_of_objects(), 5u);  // outer, inner, d, full, the list in the queue
    EXPECT_EQ(full.get().copy(), (Ints{2}));
    EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 4; }));
    outer.append(inner);  // kept
  }
  // The list appended to outer went with it; nothing is left over for park_ttl.
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
}

// A proxy to a managed container passed where a method iterates (list(p), l.extend(p),
// d.update(p), set operations) is iterated there, as CPython's server iterates a proxy: its
// elements are taken, not the proxy. A container passed to its own method takes its value as it
// was (l.extend(l) doubles it).
TEST_P(NestedProxiesTest, AProxyArgumentIsIteratedWhereTheMethodIterates) {
  mm::SyncManager m(options());
  m.start();
  {
    auto src = m.list<std::int64_t>({1, 2});
    auto copy = mm::ListProxy<std::int64_t>(m.create("list", src));
    EXPECT_EQ(copy.copy(), (Ints{1, 2}));
    copy._callmethod("extend", src);
    EXPECT_EQ(copy.copy(), (Ints{1, 2, 1, 2}));
    src._callmethod("extend", src);
    EXPECT_EQ(src.copy(), (Ints{1, 2, 1, 2}));
    copy._callmethod("__iadd__", src);
    EXPECT_EQ(copy.size(), 8u);
    auto d1 = m.dict<std::string, std::int64_t>();
    d1.set("a", 1);
    auto d2 = m.dict<std::string, std::int64_t>();
    d2._callmethod("update", d1);
    EXPECT_EQ(d2.get("a"), 1);
    // Where the method stores its argument, the proxy is stored (a reference), not iterated.
    auto holder = m.list<mm::ListProxy<std::int64_t>>();
    holder.append(src);
    src.append(9);
    EXPECT_EQ(holder.get(0).copy(), (Ints{1, 2, 1, 2, 9}));
  }
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
}

// A proxy to another manager's object stored in a container is a reference, as in Python (the
// server becomes that manager's client): changes through either side are seen through the
// other, the container keeps the object alive after its sender's proxy is gone, and releases it
// when the element goes.
TEST_P(NestedProxiesTest, AProxyOfAnotherManagerIsStoredAsAReference) {
  mm::SyncManager m(options());
  m.start();
  mm::SyncManager other(options());
  other.start();
  auto l = m.list<mm::ListProxy<std::int64_t>>();
  auto d = m.dict<std::string, mm::ListProxy<std::int64_t>>();
  {
    auto foreign = other.list<std::int64_t>({1});
    l.append(foreign);
    d["x"] = foreign;
    foreign.append(2);
    EXPECT_EQ(l.get(0).copy(), (Ints{1, 2}));
    l.get(0).append(3);
    EXPECT_EQ(foreign.copy(), (Ints{1, 2, 3}));
    EXPECT_EQ(d.get("x")->_token().address.str(), other.address().str());
  }
  // Held twice by the other server's containers; the sender's proxy is gone.
  EXPECT_TRUE(eventually([&] { return other.number_of_objects() == 1; }));
  d.get("x")->append(4);
  EXPECT_EQ(l.get(0).copy(), (Ints{1, 2, 3, 4}));
  l *= 3;              // copies made by the server
  l.extend(l.copy());  // proxies read out and stored again, each with a reference parked for it
  EXPECT_EQ(l.size(), 6u);
  EXPECT_EQ(l.get(5).size(), 4u);
  for (int i = 0; i < 6; ++i) l.pop();
  EXPECT_EQ(d.get("x")->size(), 4u);
  EXPECT_EQ(other.number_of_objects(), 1u);
  d.clear();
  EXPECT_TRUE(eventually([&] { return other.number_of_objects() == 0; }));
  EXPECT_EQ(m.number_of_objects(), 2u);
}

// ServerOptions::foreign_proxies off: the server opens no connection a client names; storing
// another manager's proxy fails naming it, and the container is unchanged.
TEST_P(NestedProxiesTest, AServerWithoutForeignProxiesRefusesThemByName) {
  auto o = options();
  o.server.foreign_proxies = false;
  mm::SyncManager m(o);
  m.start();
  mm::SyncManager other(options());
  other.start();
  auto foreign = other.list<std::int64_t>({1});
  auto l = m.list<mm::ListProxy<std::int64_t>>();
  try {
    l.append(foreign);
    FAIL() << "stored";
  } catch (const troupe::TypeError& e) {
    EXPECT_NE(std::string(e.what()).find("foreign_proxies is off"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(other.address().str()), std::string::npos) << e.what();
  }
  EXPECT_EQ(l.size(), 0u);
  l.append(m.list<std::int64_t>({2}));
  EXPECT_EQ(l.get(0).copy(), (Ints{2}));
  EXPECT_EQ(foreign.copy(), (Ints{1}));
}

// The holding server dies (kill -9): its connection to the other manager closes, and the
// object it held there is released.
TEST_P(NestedProxiesTest, AKilledHolderReleasesAnotherManagersObject) {
  mm::SyncManager m(options());
  m.start();
  mm::SyncManager other(options());
  other.start();
  {
    auto l = m.list<mm::ListProxy<std::int64_t>>();
    l.append(other.list<std::int64_t>({1}));
    EXPECT_EQ(l.get(0).copy(), (Ints{1}));
    m.process()->kill();
    m.process()->join(10s);
  }
  EXPECT_TRUE(eventually([&] { return other.number_of_objects() == 0; }));
}

// The other manager is gone: reading the element fails at once, naming it; the holding server
// keeps serving.
TEST_P(NestedProxiesTest, AGoneManagersElementFailsByName) {
  mm::SyncManager m(options());
  m.start();
  std::optional<mm::SyncManager> other(std::in_place, options());
  other->start();
  const std::string address = other->address().str();
  auto l = m.list<mm::ListProxy<std::int64_t>>();
  l.append(other->list<std::int64_t>({1}));
  EXPECT_EQ(l.get(0).copy(), (Ints{1}));
  other->shutdown();
  other.reset();
  try {
    (void)l.get(0).copy();
    FAIL() << "a proxy to a gone manager's object worked";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(address), std::string::npos) << e.what();
  }
  l.append(m.list<std::int64_t>({5}));
  EXPECT_EQ(l.get(1).copy(), (Ints{5}));
  EXPECT_EQ(l.size(), 2u);
}

// A client that connected by another name of the server's address (localhost for 127.0.0.1),
// with a key of its own: the proxies read out of a container carry the server's own address,
// and find the client's link by it (no second connection with the process's default key).
TEST_P(NestedProxiesTest, ProxiesFoundUnderTheServersOwnAddress) {
  auto o = options();
  o.address = troupe::multiprocessing::Address::parse("127.0.0.1:0");
  o.authkey = troupe::multiprocessing::AuthenticationString("a key of this test only");
  mm::SyncManager server(o);
  server.start();
  const std::string port = server.address().str().substr(server.address().str().rfind(':') + 1);
  auto c = options();
  c.address = troupe::multiprocessing::Address::parse("localhost:" + port);
  c.authkey = o.authkey;
  mm::SyncManager client(c);
  client.connect();
  auto outer = client.list<mm::ListProxy<std::int64_t>>();
  outer.append(client.list<std::int64_t>({1, 2}));
  auto inner = outer.get(0);
  EXPECT_EQ(inner._token().address.str(), server.address().str());
  inner.append(3);
  EXPECT_EQ(outer.get(0).copy(), (Ints{1, 2, 3}));
}

INSTANTIATE_TEST_SUITE_P(StartMethods, NestedProxiesTest, ::testing::Values("fork", "spawn"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace nested_proxies_test
