// SyncManager's Condition and Barrier, and the typed proxies of Value, Array, list, dict and
// Namespace, against CPython's behaviour (CONFORMANCE.md §1, §2, §3.4, §3.6, §3.8): through a
// started manager, across threads (each its own lane, as a Python thread its own connection)
// and child processes (every start method), with bad input getting Python's errors.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <future>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"

namespace sync_manager_more_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("check failed in the child: ") + what);
}

// §3.4 test_waitfor: sets the state to 0, notifies, then waits until the parent made it 4.
void waitfor_child(mm::ConditionProxy cond, mm::ValueProxy<std::int32_t> state) {
  std::scoped_lock guard{cond};
  state.set(0);
  cond.notify();
  const bool result = cond.wait_for([&] { return state.get() == 4; }, std::chrono::seconds(60));
  check(result, "wait_for returned false");
  check(state.get() == 4, "state is not 4");
}
TROUPE_ENTRY(waitfor_child);

// §3.6 test_wait_return: one party of a barrier, reporting wait()'s index.
void barrier_party(mm::BarrierProxy barrier, mm::QueueProxy<std::int64_t> out) {
  check(barrier.parties() == 3, "parties");
  out.put(static_cast<std::int64_t>(barrier.wait(std::chrono::seconds(60))));
}
TROUPE_ENTRY(barrier_party);

// §2 (TestSyncManagerTypes): the child's half of test_value, test_array, test_list, test_dict
// and test_namespace, on proxies that travelled as arguments.
void types_child(mm::ValueProxy<std::int32_t> value, mm::ArrayProxy<std::int32_t> array,
                 mm::ListProxy<std::int64_t> list, mm::DictProxy<std::string, std::int64_t> dict,
                 mm::NamespaceProxy ns) {
  check(value.value() == 1 && value.get() == 1, "value");
  value.set(2);

  check(array[0].get() == 0 && array[1].get() == 1 && array.size() == 2, "array");
  std::vector<std::int32_t> seen;
  for (auto x : array) seen.push_back(x);
  check(seen == std::vector<std::int32_t>{0, 1}, "iterating the array");

  check(list[0].get() == 5 && list.count(5) == 1 && list.index(5) == 0, "list");
  list += {7};
  check(list.copy() == std::vector<std::int64_t>{5, 7}, "list +=");
  list *= 2;
  check(list.copy() == std::vector<std::int64_t>{5, 7, 5, 7}, "list *=");
  const auto doubled = list * 2;
  check(doubled == std::vector<std::int64_t>{5, 7, 5, 7, 5, 7, 5, 7}, "list * 2");
  check(2 * list == doubled, "2 * list");
  const auto copied = list.copy();
  auto more = doubled;
  more.insert(more.end(), copied.begin(), copied.end());
  list.extend(more);
  list.sort();
  list.reverse();
  std::size_t n = 0;
  for (auto x : list) n += x > 0 ? 1 : 0;
  check(n == 16 && list.size() == 16, "list of 16");
  check(list.pop(0) == 7, "pop(0)");
  list.clear();
  check(list.size() == 0, "list cleared");

  check(dict.size() == 1 && dict["foo"].get() == 5 && dict.get("foo") == 5, "dict");
  check(dict.items() == std::vector<std::pair<std::string, std::int64_t>>{{"foo", 5}}, "items");
  check(dict.keys() == std::vector<std::string>{"foo"}, "keys");
  check(dict.values() == std::vector<std::int64_t>{5}, "values");
  check(dict.copy() == std::map<std::string, std::int64_t>{{"foo", 5}}, "copy");
  dict |= std::map<std::string, std::int64_t>{{"bar", 6}};
  check(dict.items() == std::vector<std::pair<std::string, std::int64_t>>{{"foo", 5}, {"bar", 6}},
        "|=");
  check(dict.reversed() == std::vector<std::string>{"bar", "foo"}, "reversed");
  const std::map<std::string, std::int64_t> other{{"bar", 7}, {"baz", 7}};
  check((other | dict) == std::map<std::string, std::int64_t>{{"foo", 5}, {"bar", 6}, {"baz", 7}},
        "other | dict");
  check((dict | other) == std::map<std::string, std::int64_t>{{"foo", 5}, {"bar", 7}, {"baz", 7}},
        "dict | other");
  check(dict.fromkeys({"bar"}, 6) == std::map<std::string, std::int64_t>{{"bar", 6}}, "fromkeys");
  check(dict.size() == 2, "fromkeys left the dict alone");
  check(dict.fromkeys({"a", "b"}) == std::map<std::string, std::monostate>{{"a", {}}, {"b", {}}},
        "fromkeys(keys): values None");
  check(dict.popitem() == std::pair<std::string, std::int64_t>{"bar", 6}, "popitem");
  check(dict.setdefault("bar", 0) == 0, "setdefault");
  dict.update(std::map<std::string, std::int64_t>{{"bar", 7}});
  check(dict.pop("bar") == 7, "pop");
  dict.clear();
  check(dict.size() == 0, "dict cleared");

  check(ns.get<std::int64_t>("x") == 0 && ns.get<std::int64_t>("y") == 1, "namespace");
}
TROUPE_ENTRY(types_child);

// A child that takes the Condition's lock and exits holding it.
void hold_condition(mm::ConditionProxy c) {
  check(c.acquire(true, std::chrono::seconds(60)), "acquire");
}
TROUPE_ENTRY(hold_condition);

// A child that waits at the barrier (until it is killed).
void wait_at_barrier(mm::BarrierProxy b) {
  (void)b.wait(std::chrono::seconds(60));
}
TROUPE_ENTRY(wait_at_barrier);

namespace {

class SyncMoreTest : public troupe::testing::StartMethodTest {};

// ---- Condition -----------------------------------------------------------------------------

// repr() names the proxy class CPython's SyncManager gives the typeid (CPython's
// _TestEvent.test_repr: "<EventProxy object, typeid 'Event' at 0x...>").
TEST_P(SyncMoreTest, ReprNamesPythonsProxyClass) {
  mm::SyncManager m(options());
  m.start();
  auto starts = [](const std::string& s, const std::string& prefix) {
    return s.rfind(prefix, 0) == 0;
  };
  EXPECT_PRED2(starts, m.Event().repr(), "<EventProxy object, typeid 'Event' at 0x");
  EXPECT_PRED2(starts, m.RLock().repr(), "<AcquirerProxy object, typeid 'RLock' at 0x");
  const auto d = m.dict<std::string, std::int64_t>();
  EXPECT_PRED2(starts, d.repr(), "<DictProxy object, typeid 'dict' at 0x");
  EXPECT_PRED2(starts, m.Queue<std::int64_t>().repr(),
               "<AutoProxy[Queue] object, typeid 'Queue' at 0x");
}

// A negative timeout reaches the managed object as it is, which applies Python's rule: a
// queue's blocking get or put refuses it (ValueError), a non-blocking one ignores it;
// Lock.acquire takes -1 as "no timeout"; Event.wait does not wait.
TEST_P(SyncMoreTest, ANegativeTimeoutGetsPythonsAnswer) {
  mm::SyncManager m(options());
  m.start();
  auto q = m.Queue<std::int64_t>(1);  // bounded: only then does put look at its timeout
  EXPECT_THROW(q.get(true, -1s), troupe::ValueError);
  EXPECT_THROW(q.get(false, -1s), troupe::queue::Empty);
  EXPECT_THROW(q.put(1, true, -0.5s), troupe::ValueError);
  q.put(2, false, -1s);
  EXPECT_EQ(q.get(), 2);
  auto lock = m.Lock();
  EXPECT_TRUE(lock.acquire(true, -1s));
  EXPECT_FALSE(lock.acquire(false));
  lock.release();
  auto ev = m.Event();
  EXPECT_FALSE(ev.wait(-1s));
}

TEST_P(SyncMoreTest, ConditionWaitTimesOutAndChecksTheLock) {
  // §3.4 test_timeout, test_wait_result (first half).
  mm::SyncManager m(options());
  m.start();
  auto c = m.Condition();
  EXPECT_THROW(c.wait(0s), troupe::RuntimeError);  // "cannot wait on un-acquired lock"
  EXPECT_THROW(c.notify(), troupe::RuntimeError);  // "cannot notify on un-acquired lock"
  EXPECT_THROW(c.notify_all(), troupe::RuntimeError);
  EXPECT_THROW(c.release(), troupe::RuntimeError);
  {
    std::scoped_lock guard{c};
    EXPECT_FALSE(c.wait(0s));
    EXPECT_FALSE(c.wait(100ms));
    EXPECT_TRUE(c.acquire());  // an RLock: re-entrant for this lane
    c.release();
    c.notify(3);  // nobody waits: nothing happens
    EXPECT_FALSE(c.wait_for([] { return false; }, 20ms));
    EXPECT_TRUE(c.wait_for([] { return true; }));
  }
  EXPECT_THROW(c._callmethod("notify", std::string("two")), troupe::TypeError);
  EXPECT_THROW(c._callmethod("wait", 1.0, 2.0), troupe::TypeError);
  EXPECT_THROW(c._callmethod("wait_for"), troupe::multiprocessing::RemoteError);
}

TEST_P(SyncMoreTest, ConditionNotifyNWakesThatMany) {
  // §3.4 test_notify_n with threads (each its own lane: its own lock owner), counts made real.
  mm::SyncManager m(options());
  m.start();
  auto c = m.Condition();
  auto sleeping = m.Semaphore(0);
  auto woken = m.Semaphore(0);
  constexpr int kWaiters = 4;
  std::vector<std::future<bool>> waiters;
  for (int i = 0; i < kWaiters; ++i)
    waiters.push_back(std::async(std::launch::async, [&] {
      std::scoped_lock guard{c};
      sleeping.release();
      const bool notified = c.wait(60s);
      woken.release();
      return notified;
    }));
  for (int i = 0; i < kWaiters; ++i) ASSERT_TRUE(sleeping.acquire(true, 60s));
  // Every waiter released the lock in wait(): acquiring it here succeeds.
  {
    std::scoped_lock guard{c};
    c.notify(2);
  }
  EXPECT_TRUE(woken.acquire(true, 60s));
  EXPECT_TRUE(woken.acquire(true, 60s));
  EXPECT_FALSE(woken.acquire(true, 200ms));  // the other two still wait
  {
    std::scoped_lock guard{c};
    c.notify_all();
  }
  EXPECT_TRUE(woken.acquire(true, 60s));
  EXPECT_TRUE(woken.acquire(true, 60s));
  for (auto& w : waiters) EXPECT_TRUE(w.get());
}

TEST_P(SyncMoreTest, ConditionWaitForAcrossProcesses) {
  // §3.4 test_waitfor.
  if (skip_fork()) GTEST_SKIP() << "ThreadSanitizer: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto cond = m.Condition();
  auto state = m.Value<std::int32_t>("i", -1);
  mp::Process p(child_options(), &waitfor_child, cond, state);
  p.start();
  {
    std::scoped_lock guard{cond};
    EXPECT_TRUE(cond.wait_for([&] { return state.get() == 0; }, 60s));
    EXPECT_EQ(state.get(), 0);
  }
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(10ms);
    std::scoped_lock guard{cond};
    state.set(state.get() + 1);
    cond.notify();
  }
  p.join(60s);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(SyncMoreTest, ConditionOverAManagedLock) {
  if (skip_fork()) GTEST_SKIP() << "ThreadSanitizer: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto lock = m.Lock();
  auto c = m.Condition(lock);
  EXPECT_FALSE(c.locked());
  EXPECT_TRUE(c.acquire());
  EXPECT_TRUE(lock.locked());  // one lock
  EXPECT_TRUE(c.locked());     // Python 3.14's ConditionProxy.locked()
  EXPECT_FALSE(lock.acquire(false));
  c.release();
  EXPECT_FALSE(lock.locked());
  EXPECT_FALSE(c.locked());
  lock.acquire();
  EXPECT_TRUE(c.locked());
  c.notify();  // a Lock has no owner: locked by anyone is "owned" (Python's _is_owned)
  EXPECT_FALSE(c.wait(10ms));
  EXPECT_TRUE(lock.locked());  // wait re-acquired it
  lock.release();

  auto rlock = m.RLock();
  auto c2 = m.Condition(rlock);
  {
    std::scoped_lock guard{rlock};
    c2.notify_all();  // owned through the RLock by this lane
  }
  // The Condition keeps the lock's state alive without the lock's proxy.
  lock = {};
  EXPECT_TRUE(c.acquire());
  c.release();

  // Only a Lock or an RLock of this manager.
  EXPECT_THROW((void)m.Condition(m.Semaphore()), troupe::multiprocessing::RemoteError);
  mm::ManagerOptions other_options = options();
  other_options.fork_with_threads = true;  // this process runs the first manager's link thread
  mm::SyncManager other(other_options);
  other.start();
  EXPECT_THROW((void)m.Condition(other.Lock()), troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)m.create("Condition", std::string("lock")),
               troupe::multiprocessing::RemoteError);
}

TEST_P(SyncMoreTest, AChildThatDiesLetsGoOfConditionAndBarrier) {
  // Failure is a message: a Condition's lock held by a child that exits is released (Python
  // keeps it held forever); a party killed at a barrier breaks it for the others (Python's would
  // wait for it until the timeout).
  if (skip_fork()) GTEST_SKIP() << "ThreadSanitizer: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto c = m.Condition();
  {
    mp::Process p(child_options(), &hold_condition, c);
    p.start();
    p.join(60s);
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_TRUE(c.acquire(true, 60s));
  c.release();

  auto b = m.Barrier(2);
  mp::Process p(child_options(), &wait_at_barrier, b);
  p.start();
  ASSERT_TRUE(troupe::testing::eventually([&] { return b.n_waiting() == 1; }));
  p.kill();
  p.join(60s);
  EXPECT_TRUE(troupe::testing::eventually([&] { return b.broken(); }));
  EXPECT_THROW(b.wait(60s), troupe::threading::BrokenBarrierError);
}

// ---- Barrier -------------------------------------------------------------------------------

TEST_P(SyncMoreTest, BarrierAcrossProcesses) {
  // §3.6 test_wait_return: of the parties' indices exactly one is 0; all differ.
  if (skip_fork()) GTEST_SKIP() << "ThreadSanitizer: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto barrier = m.Barrier(3);
  auto out = m.Queue<std::int64_t>();
  mp::Process a(child_options(), &barrier_party, barrier, out);
  mp::Process b(child_options(), &barrier_party, barrier, out);
  a.start();
  b.start();
  std::set<std::int64_t> got{static_cast<std::int64_t>(barrier.wait(60s))};
  got.insert(out.get(true, 60s));
  got.insert(out.get(true, 60s));
  a.join(60s);
  b.join(60s);
  EXPECT_EQ(a.exitcode(), 0);
  EXPECT_EQ(b.exitcode(), 0);
  EXPECT_EQ(got, (std::set<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(barrier.n_waiting(), 0u);
  EXPECT_FALSE(barrier.broken());
}

TEST_P(SyncMoreTest, BarrierBreaksAbortsAndResets) {
  mm::SyncManager m(options());
  m.start();
  // §3.6 test_single_thread.
  auto one = m.Barrier(1);
  EXPECT_EQ(one.wait(), 0u);
  EXPECT_EQ(one.wait(), 0u);

  // §3.6 test_timeout: a party that times out breaks the barrier for everyone.
  auto b = m.Barrier(2);
  EXPECT_EQ(b.parties(), 2u);
  EXPECT_THROW(b.wait(10ms), troupe::threading::BrokenBarrierError);
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), troupe::threading::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());

  // §3.6 test_reset / test_abort: a waiter sees BrokenBarrierError.
  auto waiter = std::async(std::launch::async, [b] {
    try {
      (void)b.wait(60s);
      return std::string("passed");
    } catch (const troupe::threading::BrokenBarrierError&) {
      return std::string("broken");
    }
  });
  ASSERT_TRUE(troupe::testing::eventually([&] { return b.n_waiting() == 1; }));
  b.abort();
  EXPECT_EQ(waiter.get(), "broken");
  EXPECT_TRUE(b.broken());
  b.reset();

  // §3.6 test_default_timeout: the barrier's own timeout.
  auto t = m.Barrier(2, 20ms);
  EXPECT_THROW(t.wait(), troupe::threading::BrokenBarrierError);

  // Bad input.
  EXPECT_THROW((void)m.Barrier(0), troupe::multiprocessing::RemoteError);  // "parties must be > 0"
  EXPECT_THROW((void)m.create("Barrier"), troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)m.create("Barrier", 2, std::string("an action")),
               troupe::multiprocessing::RemoteError);
  EXPECT_THROW((void)m.create("Barrier", std::string("2")), troupe::multiprocessing::RemoteError);
  EXPECT_THROW(b._callmethod<bool>("__getattribute__", std::string("_cond")),
               troupe::AttributeError);
  EXPECT_THROW(b._callmethod("wait", std::string("soon")), troupe::TypeError);
}

// ---- Value, Array --------------------------------------------------------------------------

TEST_P(SyncMoreTest, ValueAndArray) {
  mm::SyncManager m(options());
  m.start();
  auto v = m.Value<double>("d", 1.5);
  EXPECT_EQ(v.value(), 1.5);
  v.value(2.5);
  EXPECT_EQ(v.get(), 2.5);
  EXPECT_EQ(v.str(), "Value('d', 2.5)");
  // Python's managed Value does not check its typecode: a holder.
  auto loose = m.Value<std::string>("i", "text");
  EXPECT_EQ(loose.get(), "text");

  auto a = m.Array<std::int32_t>("i", {0, 1, 2, 3, 4});
  EXPECT_EQ(a.size(), 5u);
  a[0] = 10;
  EXPECT_EQ(a[0].get(), 10);
  EXPECT_EQ(a[-1].get(), 4);
  EXPECT_EQ(a.slice(1, 3), (std::vector<std::int32_t>{1, 2}));
  EXPECT_EQ(a.slice(std::nullopt, std::nullopt, -2), (std::vector<std::int32_t>{4, 2, 10}));
  a.set_slice(1, 3, {7, 8});
  EXPECT_EQ(a.tolist(), (std::vector<std::int32_t>{10, 7, 8, 3, 4}));
  std::vector<std::int32_t> seen;
  for (auto x : a) seen.push_back(x);
  EXPECT_EQ(seen, a.tolist());
  EXPECT_EQ(a.str(), "array('i', [10, 7, 8, 3, 4])");

  // Python's errors.
  EXPECT_THROW(a.get(5), troupe::IndexError);
  EXPECT_THROW(a.set_slice(0, 5, {1}, 2), troupe::ValueError);  // extended slice, wrong size
  auto bytes = m.Array<std::int32_t>("b", {1});
  EXPECT_THROW(bytes.set(0, 300), troupe::OverflowError);
  EXPECT_THROW((void)m.Array<std::int32_t>("z", {1}),
               troupe::multiprocessing::RemoteError);  // bad typecode
  EXPECT_THROW((void)m.Array<std::string>("i", {"x"}), troupe::multiprocessing::RemoteError);
  EXPECT_THROW(a._callmethod("append", 1), troupe::multiprocessing::RemoteError);  // not exposed
  EXPECT_THROW((void)m.create("Value"), troupe::multiprocessing::RemoteError);
}

// ---- list ----------------------------------------------------------------------------------

TEST_P(SyncMoreTest, ListProxyIsPythonsList) {
  mm::SyncManager m(options());
  m.start();
  // §1.1 test_list.
  std::vector<std::int64_t> ten(10);
  for (std::int64_t i = 0; i < 10; ++i) ten[i] = i;
  auto a = m.list<std::int64_t>(ten);
  EXPECT_EQ(a.slice(std::nullopt, std::nullopt), ten);
  auto b = m.list<std::int64_t>();
  EXPECT_TRUE(b.copy().empty());
  b.extend({0, 1, 2, 3, 4});
  EXPECT_EQ(b[2].get(), 2);
  EXPECT_EQ(b.slice(2, 10), (std::vector<std::int64_t>{2, 3, 4}));
  b *= 2;
  EXPECT_EQ(b.copy(), (std::vector<std::int64_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4}));
  EXPECT_EQ((b + std::vector<std::int64_t>{5, 6}),
            (std::vector<std::int64_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(b.size(), 10u);  // unchanged by +

  // §1.3 test_list_iter: live, by index.
  std::vector<std::int64_t> all(a.begin(), a.end());
  EXPECT_EQ(all, ten);
  auto it = a.begin();
  a[0] = 100;
  EXPECT_EQ(*it, 100);
  ++it;
  a[1] = 101;
  EXPECT_EQ(*it, 101);
  auto ended = a.begin();
  for (int i = 0; i < 10; ++i) ++ended;
  EXPECT_EQ(ended, a.end());
  EXPECT_EQ(a.begin(), a.begin()) << "an iterator is compared as (proxy, index) before the end";

  // The rest of list's methods.
  auto l = m.list<std::string>({"b", "c"});
  l.insert(0, "a");
  l.append("d");
  EXPECT_TRUE(l.contains("c"));
  EXPECT_FALSE(l.contains("z"));
  l.remove("c");
  EXPECT_EQ(l.index("d"), 2u);
  l.erase(0);
  l.sort(true);
  EXPECT_EQ(l.copy(), (std::vector<std::string>{"d", "b"}));
  EXPECT_EQ(l.reversed(), (std::vector<std::string>{"b", "d"}));
  l.set_slice(0, 1, {"x", "y"});
  EXPECT_EQ(l.copy(), (std::vector<std::string>{"x", "y", "b"}));
  l.erase_slice(0, 2);
  EXPECT_EQ(l.copy(), (std::vector<std::string>{"b"}));
  l += {"c"};
  EXPECT_EQ(l.str(), "['b', 'c']");

  // Python's errors.
  EXPECT_THROW(l.remove("zz"), troupe::ValueError);  // list.remove(x): x not in list
  EXPECT_THROW(l.index("zz"), troupe::ValueError);
  EXPECT_THROW(l.get(9), troupe::IndexError);
  EXPECT_THROW(l.set(9, "q"), troupe::IndexError);
  l.clear();
  EXPECT_THROW(l.pop(), troupe::IndexError);  // pop from empty list
  EXPECT_THROW(l._callmethod("append"), troupe::TypeError);
  EXPECT_THROW(l._callmethod("append", 1, 2), troupe::TypeError);
  EXPECT_THROW(l._callmethod("sort", 1), troupe::TypeError);  // a key cannot be sent
  EXPECT_THROW(l._callmethod("sort", std::monostate{}, false, 3), troupe::TypeError);
  EXPECT_THROW(l._callmethod("__iter__"), troupe::multiprocessing::RemoteError);
  // A typed proxy reads what it was given: an int element is not a string.
  auto mixed = m.list();
  mixed._callmethod("append", 1);
  mm::ListProxy<std::string> as_text(mixed);
  EXPECT_THROW(as_text.get(0), troupe::ValueError);  // "str expects text, got int"

  // §1.2 test_list_isinstance: every method the proxy calls is exposed.
  const auto exposed = l._exposed();
  for (const char* name :
       {"__contains__", "__delitem__", "__getitem__", "__iadd__", "__imul__", "__len__",
        "__reversed__", "__setitem__", "__add__",     "__mul__",  "__rmul__", "append",
        "clear",        "copy",        "count",       "extend",   "index",    "insert",
        "pop",          "remove",      "reverse",     "sort"})
    EXPECT_NE(std::find(exposed.begin(), exposed.end(), name), exposed.end()) << name;
}

// ---- dict ----------------------------------------------------------------------------------

TEST_P(SyncMoreTest, DictProxyIsPythonsDict) {
  mm::SyncManager m(options());
  m.start();
  // §1.5 test_dict.
  auto d = m.dict<std::int64_t, std::string>();
  for (std::int64_t i = 65; i < 70; ++i) d[i] = std::string(1, static_cast<char>(i));
  EXPECT_EQ(d.copy(), (std::map<std::int64_t, std::string>{
                          {65, "A"}, {66, "B"}, {67, "C"}, {68, "D"}, {69, "E"}}));
  EXPECT_EQ(d.keys(), (std::vector<std::int64_t>{65, 66, 67, 68, 69}));
  EXPECT_EQ(d.values(), (std::vector<std::string>{"A", "B", "C", "D", "E"}));
  EXPECT_EQ(d.items().front(), (std::pair<std::int64_t, std::string>{65, "A"}));

  EXPECT_EQ(d.get(65), "A");
  EXPECT_EQ(d.get(99), std::nullopt);
  EXPECT_EQ(d.get(99, "none"), "none");
  EXPECT_TRUE(d.contains(66));
  d.erase(66);
  EXPECT_FALSE(d.contains(66));
  EXPECT_EQ(d.pop(67), "C");
  EXPECT_EQ(d.pop(67, "gone"), "gone");
  EXPECT_EQ(d.setdefault(70, "F"), "F");
  EXPECT_EQ(d.setdefault(70, "G"), "F");
  EXPECT_EQ(d.size(), 4u);
  std::string s = d[70];
  EXPECT_EQ(s, "F");
  auto init = m.dict<std::string, std::int64_t>(std::map<std::string, std::int64_t>{{"x", 1}});
  EXPECT_EQ(init["x"].get(), 1);
  EXPECT_EQ(init.str(), "{'x': 1}");

  // Python's errors.
  EXPECT_THROW(d[99].get(), troupe::KeyError);
  EXPECT_THROW(d.pop(99), troupe::KeyError);
  EXPECT_THROW(d.erase(99), troupe::KeyError);
  d.clear();
  EXPECT_THROW(d.popitem(), troupe::KeyError);  // popitem(): dictionary is empty
  EXPECT_THROW(d._callmethod("get"), troupe::TypeError);
  EXPECT_THROW(d._callmethod("update", 1), troupe::TypeError);  // 'int' object is not iterable
  EXPECT_THROW(d._callmethod("__setitem__", std::vector<std::string>{}), troupe::TypeError);
  init._callmethod("__setitem__", std::string("text"), std::string("not an int"));
  EXPECT_THROW(init["text"].get(), troupe::ValueError);  // "i64 expects int, got text"

  // §1.6 test_dict_isinstance: every method the proxy calls is exposed.
  const auto exposed = d._exposed();
  for (const char* name :
       {"__contains__", "__delitem__", "__getitem__", "__len__",      "__setitem__",
        "__or__",       "__ror__",     "__ior__",     "__reversed__", "clear",
        "copy",         "fromkeys",    "get",         "items",        "keys",
        "pop",          "popitem",     "setdefault",  "update",       "values"})
    EXPECT_NE(std::find(exposed.begin(), exposed.end(), name), exposed.end()) << name;
}

// ---- set -------------------------------------------------------------------------------------

TEST_P(SyncMoreTest, SetProxyIsPythonsSet) {
  // §2 test_set (3.14): operator symbols, methods, comparisons; test_set_init.
  using S = std::set<std::string>;
  mm::SyncManager m(options());
  m.start();
  auto o = m.set<std::string>();
  const S abc{"a", "b", "c"};
  auto refill = [&] {
    o.clear();
    o.update(abc);
  };
  o.update(std::vector<std::string>{"a", "b", "c"});
  EXPECT_EQ(o.size(), 3u);
  EXPECT_TRUE(o.contains("a"));
  EXPECT_FALSE(o.contains("d"));
  EXPECT_EQ((o | S{"d", "e"}), (S{"a", "b", "c", "d", "e"}));
  EXPECT_EQ((S{"d", "e"} | o), (S{"a", "b", "c", "d", "e"}));
  o |= S{"d", "e"};
  EXPECT_EQ(o.copy(), (S{"a", "b", "c", "d", "e"}));
  refill();
  EXPECT_EQ((S{"a", "b", "d"} - o), (S{"d"}));
  EXPECT_EQ((o - S{"a", "b"}), (S{"c"}));
  o -= S{"a", "b"};
  EXPECT_EQ(o.copy(), (S{"c"}));
  refill();
  EXPECT_EQ((S{"b", "c", "d"} ^ o), (S{"a", "d"}));
  EXPECT_EQ((o ^ S{"b", "c", "d"}), (S{"a", "d"}));
  o ^= S{"b", "c", "d"};
  EXPECT_EQ(o.copy(), (S{"a", "d"}));
  refill();
  EXPECT_EQ((o & S{"b", "c", "d"}), (S{"b", "c"}));
  EXPECT_EQ((S{"b", "c", "d"} & o), (S{"b", "c"}));
  o &= S{"b", "c", "d"};
  EXPECT_EQ(o.copy(), (S{"b", "c"}));

  // _test_set_operator_methods.
  o.add("d");
  EXPECT_TRUE(o.contains("d"));
  refill();
  o.remove("a");
  EXPECT_FALSE(o.contains("a"));
  EXPECT_THROW(o.remove("a"), troupe::KeyError);
  o.clear();
  o.update(S{"a"});
  o.discard("a");
  o.discard("a");
  o.update(S{"a"});
  EXPECT_EQ(o.pop(), "a");
  EXPECT_THROW(o.pop(), troupe::KeyError);  // pop from an empty set
  refill();
  EXPECT_EQ((o.intersection({"b", "c", "d"})), (S{"b", "c"}));
  o.intersection_update({"b", "c", "d"});
  EXPECT_EQ(o.copy(), (S{"b", "c"}));
  refill();
  EXPECT_EQ((o.difference({"a", "b"})), (S{"c"}));
  o.difference_update({"a", "b"});
  EXPECT_EQ(o.copy(), (S{"c"}));
  refill();
  EXPECT_EQ((o.symmetric_difference({"b", "c", "d"})), (S{"a", "d"}));
  o.symmetric_difference_update({"b", "c", "d"});
  EXPECT_EQ(o.copy(), (S{"a", "d"}));

  // _test_set_comparisons.
  refill();
  EXPECT_EQ((o.union_({"d", "e"})), (S{"a", "b", "c", "d", "e"}));
  EXPECT_TRUE((o.isdisjoint({"d", "e"})));
  EXPECT_FALSE(o.isdisjoint({"a", "d"}));
  EXPECT_TRUE((o.issubset({"a", "b", "c", "d"})));
  EXPECT_FALSE(o.issubset({"a", "b"}));
  EXPECT_TRUE((o < S{"a", "b", "c", "d"}));
  EXPECT_TRUE(o <= abc);
  EXPECT_TRUE((o.issuperset({"a", "b"})));
  EXPECT_FALSE(o.issuperset({"a", "b", "d"}));
  EXPECT_TRUE((o > S{"a"}));
  EXPECT_TRUE((o >= S{"a", "b"}));

  // test_set_init: set(1234) is refused by the server's create (here its TypeError).
  EXPECT_EQ((m.set<std::string>({"a", "b", "c", "a"}).copy()), abc);
  EXPECT_THROW((void)m.create("set", 1234), troupe::multiprocessing::RemoteError);
  EXPECT_THROW(o._callmethod("add"), troupe::TypeError);
}

// ---- Namespace -----------------------------------------------------------------------------

TEST_P(SyncMoreTest, NamespaceProxy) {
  // §1.10 test_namespace.
  mm::SyncManager m(options());
  m.start();
  auto n = m.Namespace();
  n.set("name", std::string("Bob"));
  n.set("job", std::string("Builder"));
  n.set("_hidden", std::string("hidden"));
  EXPECT_EQ(n.get<std::string>("name"), "Bob");
  EXPECT_EQ(n.get<std::string>("job"), "Builder");
  n.del("job");
  EXPECT_EQ(n.str(), "Namespace(name='Bob')");
  EXPECT_TRUE(n.has("name"));
  EXPECT_FALSE(n.has("job"));
  EXPECT_THROW(n.get<std::string>("job"), troupe::AttributeError);
  EXPECT_THROW(n.del("job"), troupe::AttributeError);
  EXPECT_THROW(n.get<std::int64_t>("name"), troupe::ValueError);        // a str, read as an int
  EXPECT_THROW(n._callmethod("__setattr__", 1, 2), troupe::TypeError);  // name must be a str
}

// ---- the typed proxies travel ----------------------------------------------------------------

TEST_P(SyncMoreTest, TypedProxiesInAChild) {
  // §2 TestSyncManagerTypes: test_value, test_array, test_list, test_dict, test_namespace.
  if (skip_fork()) GTEST_SKIP() << "ThreadSanitizer: no threads in a forked child";
  mm::SyncManager m(options());
  m.start();
  auto value = m.Value<std::int32_t>("i", 1);
  auto array = m.Array<std::int32_t>("i", {0, 1});
  auto list = m.list<std::int64_t>();
  list.append(5);
  auto dict = m.dict<std::string, std::int64_t>();
  dict["foo"] = 5;
  auto ns = m.Namespace();
  ns.set("x", 0);
  ns.set("y", 1);
  {
    // The Process holds copies of its arguments (as Python's holds _args) until it goes.
    mp::Process p(child_options(), &types_child, value, array, list, dict, ns);
    p.start();
    p.join(60s);
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(value.value(), 2);
  EXPECT_EQ(value.get(), 2);
  EXPECT_EQ(list.size(), 0u);
  EXPECT_EQ(dict.size(), 0u);
  value = {};
  array = {};
  list = {};
  dict = {};
  ns = {};
  EXPECT_TRUE(troupe::testing::eventually([&] { return m.number_of_objects() == 0; }))
      << m.debug_info();
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SyncMoreTest,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sync_manager_more_test
