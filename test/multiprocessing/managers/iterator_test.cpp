// A managed dict's live iterator (CPython's _TestContainers.test_dict_iter, bpo-34610): iter(d)
// is a method of DictProxy's _method_to_typeid_ ('Iterator'), so the iterator is an object of
// the manager with its own proxy; it reads the dict at each step, and a change of the dict's
// size between steps is Python's RuntimeError. It is counted while a proxy holds it, and holds
// its dict (as Python's dict_keyiterator does) until it is exhausted.
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "troupe/entry.hpp"
#include "troupe/multiprocessing/managers/detail/containers.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"
#include "troupe/multiprocessing/process.hpp"

#include "leak_check.hpp"
#include "start_method_test.hpp"

namespace iterator_test {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
using namespace std::chrono_literals;

// A child given the iterator (a proxy travels by value): it takes two steps of the one iterator.
void two_steps(mm::IteratorProxy<std::int64_t> it) {
  if (it.next() != std::optional<std::int64_t>(66) || it.next() != std::optional<std::int64_t>(67))
    throw std::runtime_error("the child did not read 66, 67 from the iterator");
}
TROUPE_ENTRY(two_steps);

namespace {

using troupe::testing::eventually;
using Keys = std::vector<std::int64_t>;
using Dict = mm::DictProxy<std::int64_t, std::string>;

class IteratorTest : public troupe::testing::StartMethodTest {};

// d[65..69] = chr(i), as CPython's test.
Dict letters(mm::SyncManager& m) {
  auto d = m.dict<std::int64_t, std::string>();
  for (std::int64_t i = 65; i < 70; ++i) d.set(i, std::string(1, static_cast<char>(i)));
  return d;
}

// list(it): every key left (bounded: a live iterator over a dict that grows must still end).
Keys rest(const mm::IteratorProxy<std::int64_t>& it) {
  Keys out;
  for (int i = 0; i < 1000; ++i) {
    auto k = it.next();
    if (!k) return out;
    out.push_back(*k);
  }
  ADD_FAILURE() << "the iterator did not end after 1000 keys";
  return out;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const troupe::RuntimeError& e) {
    return e.what();
  }
  return "(no RuntimeError)";
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// §1.7 step 1: the keys in insertion order, then nothing (list(it) == []).
TEST_P(IteratorTest, KeysInInsertionOrderThenExhausted) {
  mm::SyncManager m(options());
  m.start();
  auto d = letters(m);
  auto it = d.iter();
  EXPECT_EQ(it._token().typeid_, "Iterator");
  EXPECT_EQ(rest(it), (Keys{65, 66, 67, 68, 69}));
  EXPECT_EQ(rest(it), Keys{});
  // Exhausted stays exhausted, whatever the dict does after (CPython detaches the dict).
  d.set(70, "F");
  d.clear();
  EXPECT_FALSE(it.next());
  // A second iterator is a new one, from the start.
  d.set(1, "a");
  EXPECT_EQ(rest(d.iter()), (Keys{1}));
}

// §1.7 step 2: it = iter(d); d.clear(); next(it) raises RuntimeError, and keeps raising.
TEST_P(IteratorTest, SizeChangeIsRuntimeError) {
  mm::SyncManager m(options());
  m.start();
  auto d = letters(m);
  auto it = d.iter();
  d.clear();
  const std::string want = "dictionary changed size during iteration";
  EXPECT_TRUE(starts_with(message_of([&] { (void)it.next(); }), want));
  // Sticky, as CPython's (di_used = -1): the dict back at its old size does not help.
  for (std::int64_t i = 65; i < 70; ++i) d.set(i, "x");
  EXPECT_TRUE(starts_with(message_of([&] { (void)it.next(); }), want));

  // A growth between two steps too.
  auto it2 = d.iter();
  EXPECT_EQ(it2.next(), std::optional<std::int64_t>(65));
  d.set(100, "y");
  EXPECT_TRUE(starts_with(message_of([&] { (void)it2.next(); }), want));
}

// Live: the dict is read at each step. A value changed is nothing to the keys; a key replaced by
// another at the same size is iterated on (the new key comes last, by insertion order); more
// keys than the dict had (a key already returned was replaced) is Python's "keys changed".
TEST_P(IteratorTest, SameSizeChangesAreSeen) {
  mm::SyncManager m(options());
  m.start();
  auto d = letters(m);
  auto it = d.iter();
  EXPECT_EQ(it.next(), std::optional<std::int64_t>(65));
  d.set(66, "changed");  // a value: same keys
  d.erase(67);           // not returned yet: skipped
  d.set(100, "new");     // after every key: seen
  EXPECT_EQ(rest(it), (Keys{66, 68, 69, 100}));

  auto it2 = d.iter();  // 65 66 68 69 100
  EXPECT_EQ(it2.next(), std::optional<std::int64_t>(65));
  d.erase(65);        // already returned ...
  d.set(65, "back");  // ... and added again: six keys would come for a dict of five
  EXPECT_EQ(it2.next(), std::optional<std::int64_t>(66));
  EXPECT_EQ(it2.next(), std::optional<std::int64_t>(68));
  EXPECT_EQ(it2.next(), std::optional<std::int64_t>(69));
  EXPECT_EQ(it2.next(), std::optional<std::int64_t>(100));
  EXPECT_TRUE(starts_with(message_of([&] { (void)it2.next(); }),
                          "dictionary keys changed during iteration"));
  EXPECT_FALSE(it2.next());  // then exhausted, as CPython's
}

// The untyped path: _callmethod("__iter__") gives a BaseProxy; its "__next__" is Python's,
// failing at the end with troupe::StopIteration; send/throw/close are exposed as
// Python's IteratorProxy's, and a dict's iterator has none of them (AttributeError).
TEST_P(IteratorTest, UntypedCallmethod) {
  mm::SyncManager m(options());
  m.start();
  auto d = letters(m);
  auto it = d._callmethod<mm::BaseProxy>("__iter__");
  EXPECT_EQ(it._token().typeid_, "Iterator");
  Keys got;
  for (int i = 0; i < 5; ++i) got.push_back(it._callmethod<std::int64_t>("__next__"));
  EXPECT_EQ(got, (Keys{65, 66, 67, 68, 69}));
  try {
    (void)it._callmethod<std::int64_t>("__next__");
    FAIL() << "no end";
  } catch (const troupe::StopIteration& e) {
    EXPECT_NE(std::string(e.what()).find("StopIteration"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)it._callmethod<std::int64_t>("__next__"), troupe::StopIteration);  // again
  // Exposed by IteratorProxy, but a dict_keyiterator has no such attribute: CPython's server
  // fails the getattr outside the method (RemoteError).
  for (const char* name : {"send", "throw", "close"})
    EXPECT_THROW(it._callmethod(name), troupe::multiprocessing::RemoteError) << name;
  EXPECT_THROW(d._callmethod<mm::BaseProxy>("__iter__", std::int64_t{1}), troupe::TypeError);
}

// The iterator is an object of the manager while a proxy holds it, and released when the last
// proxy goes.
TEST_P(IteratorTest, ReleasedWithItsProxy) {
  mm::SyncManager m(options());
  m.start();
  auto d = letters(m);
  EXPECT_EQ(m.number_of_objects(), 1u);
  {
    auto it = d.iter();
    auto copy = it;
    auto it2 = d.iter();
    EXPECT_EQ(m.number_of_objects(), 3u);
    it2 = {};
    EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 2; }));
    EXPECT_EQ(rest(copy), (Keys{65, 66, 67, 68, 69}));
    EXPECT_EQ(m.number_of_objects(), 2u);  // exhausted, still held by its proxies
  }
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 1; }));
}

// As Python's: the dict's proxy going first removes the dict from the manager's objects, but the
// iterator holds the dict and runs on; once exhausted it lets go of the dict, and so of what the
// dict held (a managed list stored in it).
TEST_P(IteratorTest, OutlivesTheDictProxy) {
  mm::SyncManager m(options());
  m.start();
  auto d = m.dict<std::int64_t, mm::ListProxy<std::int64_t>>();
  d.set(1, m.list<std::int64_t>({10}));
  d.set(2, m.list<std::int64_t>({20}));
  EXPECT_EQ(m.number_of_objects(), 3u);
  auto it = d.iter();
  EXPECT_EQ(it.next(), std::optional<std::int64_t>(1));
  d = {};
  // The dict's entry is gone; the iterator and the two lists the dict still holds remain.
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 3; }));
  EXPECT_EQ(it.next(), std::optional<std::int64_t>(2));
  EXPECT_EQ(m.number_of_objects(), 3u);
  EXPECT_FALSE(it.next());
  // Exhausted: the dict is let go, and with it its lists.
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 1; }));
  it = {};
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; }));
}

// The iterator is one object of the manager: a proxy of it in a child steps the same iterator.
TEST_P(IteratorTest, StepsInAChild) {
  if (skip_fork())
    GTEST_SKIP() << "ThreadSanitizer: no threads in a child forked from a threaded process";
  mm::SyncManager m(options());
  m.start();
  auto d = letters(m);
  auto it = d.iter();
  EXPECT_EQ(it.next(), std::optional<std::int64_t>(65));
  {
    mp::Process p(child_options(), &two_steps, it);
    p.start();
    p.join(60s);
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(rest(it), (Keys{68, 69}));
  it = {};
  d = {};
  EXPECT_TRUE(eventually([&] { return m.number_of_objects() == 0; })) << m.debug_info();
}

// The dict's own iterator (no manager), over many steps with a key replaced between steps: the
// position survives the deletions (no key skipped or repeated, as CPython's without a resize).
TEST(KeyIterator, KeysReplacedBetweenManySteps) {
  namespace detail = mm::detail;
  using detail::Item;
  auto d = detail::make_container("dict", {});
  for (std::int64_t i = 0; i < 1000; ++i)
    d->call("__setitem__", {Item::integer(i), Item::integer(i)});
  auto it = d->iter();
  Keys seen;
  for (int step = 0; step < 3000; ++step) {
    auto k = it->next();
    if (!k) break;
    const std::int64_t x = k->as_int();
    seen.push_back(x);
    if (x % 2 == 0 && x + 1 < 1000) {  // the next key goes, a new one comes last
      d->call("__delitem__", {Item::integer(x + 1)});
      d->call("__setitem__", {Item::integer(1000 + x), Item::integer(0)});
    }
  }
  Keys want;
  for (std::int64_t i = 0; i < 2000; i += 2) want.push_back(i);
  EXPECT_EQ(seen, want);
  EXPECT_FALSE(it->next());
  EXPECT_THROW((void)detail::make_container("list", {})->iter(), troupe::TypeError);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, IteratorTest, ::testing::Values("fork", "spawn"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace iterator_test
