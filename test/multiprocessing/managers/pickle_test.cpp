// The pickle subset of plain data (detail/pickle.hpp), against the real thing: every local
// python3 (the system's and pyenv's) pickles values at protocols 2 to 5 for decode(), and loads
// what encode() writes at protocols 4 and 5, value by value. Then bad pickles on purpose: a
// REDUCE of os.system, a nesting a million deep, a 2**40-byte length, an integer beyond 64
// bits, a value that holds itself.
#include "troupe/multiprocessing/managers/detail/pickle.hpp"

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"

#include "child_process.hpp"
#include "leak_check.hpp"

namespace troupe::multiprocessing::managers::detail {
namespace {

using namespace std::chrono_literals;
using troupe::testing::ChildProcess;
using troupe::testing::find_pythons;

std::vector<Item> items(std::vector<Item> v) {
  return v;
}

std::string range_bytes() {
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  return s;
}

std::vector<Item> range_list(int n) {
  std::vector<Item> v;
  for (int i = 0; i < n; ++i) v.push_back(Item::integer(i));
  return v;
}

// Python source, and the value troupe reads it as.
struct Case {
  std::string expr;
  Item value;
};

std::vector<Case> cases() {
  return {
      {"None", Item::none()},
      {"True", Item::boolean(true)},
      {"False", Item::boolean(false)},
      {"0", Item::integer(0)},
      {"255", Item::integer(255)},
      {"256", Item::integer(256)},
      {"65536", Item::integer(65536)},
      {"-1", Item::integer(-1)},
      {"-2**31", Item::integer(INT32_MIN)},
      {"2**31", Item::integer(std::int64_t{1} << 31)},
      {"2**63 - 1", Item::integer(INT64_MAX)},
      {"-2**63", Item::integer(INT64_MIN)},
      {"2**63", Item::uinteger(std::uint64_t{1} << 63)},
      {"2**64 - 1", Item::uinteger(UINT64_MAX)},
      {"1.5", Item::floating(1.5)},
      {"-0.0", Item::floating(-0.0)},
      {"1e300", Item::floating(1e300)},
      {"float('-inf')", Item::floating(-INFINITY)},
      {"''", Item::text("")},
      {"'abc'", Item::text("abc")},
      {"'\\u00e9\\u20ac\\U0001f600'", Item::text("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80")},
      {"'x' * 300", Item::text(std::string(300, 'x'))},
      {"b''", Item::bytes("")},
      {"b'ab'", Item::bytes("ab")},
      {"bytes(range(256))", Item::bytes(range_bytes())},
      {"b'y' * 40000", Item::bytes(std::string(40000, 'y'))},
      {"bytearray()", Item::bytearray("")},
      {"bytearray(b'ab')", Item::bytearray("ab")},
      {"()", Item::tuple({})},
      {"(1,)", Item::tuple(items({Item::integer(1)}))},
      {"(1, 'a')", Item::tuple(items({Item::integer(1), Item::text("a")}))},
      {"(1, 2, 3, 4)", Item::tuple(items({Item::integer(1), Item::integer(2), Item::integer(3),
                                          Item::integer(4)}))},
      {"[]", Item::list({})},
      {"[1, 'a', [2]]", Item::list(items({Item::integer(1), Item::text("a"),
                                          Item::list(items({Item::integer(2)}))}))},
      {"list(range(2500))", Item::list(range_list(2500))},
      {"{}", Item::dict({})},
      {"{'a': 1, 2: [3], (4, 5): None}",
       Item::dict(items({Item::text("a"), Item::integer(1), Item::integer(2),
                         Item::list(items({Item::integer(3)})),
                         Item::tuple(items({Item::integer(4), Item::integer(5)})), Item::none()}))},
      {"set()", Item::set({})},
      {"{1, 2, 3}", Item::set(items({Item::integer(1), Item::integer(2), Item::integer(3)}))},
      {"frozenset()", Item::frozenset({})},
      {"frozenset({'a', b'b'})", Item::frozenset(items({Item::text("a"), Item::bytes("b")}))},
      {"slice(1, None, -2)", Item::slice(Item::integer(1), Item::none(), Item::integer(-2))},
      {"[[1]] * 2", Item::list(items({Item::list(items({Item::integer(1)})),
                                      Item::list(items({Item::integer(1)}))}))},
      {"[(1, b'x'), {'k': {1.5}}, bytearray(b'z')]",
       Item::list(
           items({Item::tuple(items({Item::integer(1), Item::bytes("x")})),
                  Item::dict(items({Item::text("k"), Item::set(items({Item::floating(1.5)}))})),
                  Item::bytearray("z")}))},
      // array.array: protocol 2 as array.array(typecode, list), 3 and up as
      // array._array_reconstructor(array.array, typecode, machine format, bytes).
      {"array.array('i', [1, -2])", Item::array("i", items({Item::integer(1), Item::integer(-2)}))},
      {"array.array('b', [-128])", Item::array("b", items({Item::integer(-128)}))},
      {"array.array('H', [65535])", Item::array("H", items({Item::integer(65535)}))},
      {"array.array('Q', [2**64 - 1, 5])",
       Item::array("Q", items({Item::uinteger(UINT64_MAX), Item::integer(5)}))},
      {"array.array('q', [-2**63])", Item::array("q", items({Item::integer(INT64_MIN)}))},
      {"array.array('f', [0.5])", Item::array("f", items({Item::floating(0.5)}))},
      {"array.array('d', [1e300, -0.0])",
       Item::array("d", items({Item::floating(1e300), Item::floating(-0.0)}))},
      {"array.array('L')", Item::array("L", {})},
  };
}

bool holds_set(const Item& x) {
  if (x.kind() == Kind::set || x.kind() == Kind::frozenset || x.kind() == Kind::dict) return true;
  if (x.kind() == Kind::sequence || x.kind() == Kind::list || x.kind() == Kind::tuple ||
      x.kind() == Kind::object || x.kind() == Kind::alternative || x.kind() == Kind::slice)
    for (const Item& e : x.elements())
      if (holds_set(e)) return true;
  return false;
}

// The same value: identical trees (kinds, typecodes, float bits), except where a set's or a
// dict's order is Python's own (those are compared as values).
bool same(const Item& a, const Item& b) {
  return identical(a, b) || (holds_set(a) && a == b);
}

// A pickle written out by hand (it may hold NUL bytes).
template <std::size_t N>
std::string P(const char (&s)[N]) {
  return std::string(s, N - 1);
}

std::string hex(const std::string& s) {
  std::string h;
  char buf[3];
  for (unsigned char c : s) {
    std::snprintf(buf, sizeof buf, "%02x", c);
    h += buf;
  }
  return h;
}

std::string unhex(const std::string& h) {
  std::string s;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    s.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return s;
}

Item decode(const std::string& s, const Limits& limits = {}) {
  return pickle::decode(std::as_bytes(std::span(s.data(), s.size())), limits);
}

std::string message_of(const std::string& s, const Limits& limits = {}) {
  try {
    (void)decode(s, limits);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

class PickleTest : public troupe::testing::LeakCheck {};

// Every local Python pickles each case at protocols 2 to its highest; each pickle must decode
// to the case's value as `matches` judges. `prelude`: Python run first (its imports).
void decode_what_every_python_pickles(const std::vector<Case>& all, const std::string& prelude,
                                      bool (*matches)(const Item&, const Item&)) {
  const auto pythons = find_pythons();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  std::string exprs;
  for (const auto& c : all) exprs += c.expr + "\n";
  for (const auto& py : pythons) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    ChildProcess child({py.exe, "-c",
                        prelude + "for i, e in enumerate(sys.argv[1].splitlines()):\n"
                                  "    for p in range(2, pickle.HIGHEST_PROTOCOL + 1):\n"
                                  "        print(i, p, pickle.dumps(eval(e), protocol=p).hex())\n",
                        exprs},
                       true);
    int seen = 0;
    while (auto line = child.read_line(60s)) {
      int i = -1, p = 0;
      std::string h;
      const auto a = line->find(' '), b = line->find(' ', a + 1);
      if (a != std::string::npos && b != std::string::npos) {
        i = std::stoi(line->substr(0, a));
        p = std::stoi(line->substr(a + 1, b - a - 1));
        h = line->substr(b + 1);
      }
      if (i < 0 || i >= static_cast<int>(all.size())) {
        ADD_FAILURE() << "python said: " << *line;
        continue;
      }
      ++seen;
      SCOPED_TRACE(all[static_cast<std::size_t>(i)].expr + ", protocol " + std::to_string(p));
      try {
        const Item got = decode(unhex(h));
        EXPECT_TRUE(matches(got, all[static_cast<std::size_t>(i)].value)) << repr(got, 300);
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
    }
    EXPECT_EQ(child.wait(60s), 0);
    EXPECT_GE(seen, static_cast<int>(all.size()) * 4);  // protocols 2 to 5 at least
  }
}

// Every local Python loads what encode() writes of each case at protocols 4 and 5; `prelude`
// defines same(got, want), Python's judge of the value loaded.
void every_python_loads_what_is_encoded(const std::vector<Case>& all, const std::string& prelude) {
  const auto pythons = find_pythons();
  if (pythons.empty()) GTEST_SKIP() << "no python3 found";
  std::vector<std::string> argv{"", "-c",
                                prelude +
                                    "for a in sys.argv[1:]:\n"
                                    "    e, p, h = a.split('\\x1f')\n"
                                    "    got = pickle.loads(bytes.fromhex(h))\n"
                                    "    print('ok' if same(got, eval(e)) else 'WRONG', p, e, "
                                    "repr(got)[:200])\n"};
  for (const auto& c : all)
    for (int p : {4, 5})
      argv.push_back(c.expr + "\x1f" + std::to_string(p) + "\x1f" +
                     hex(pickle::encode(c.value, p)));
  for (const auto& py : pythons) {
    SCOPED_TRACE(py.exe + " (3." + std::to_string(py.minor) + ")");
    argv[0] = py.exe;
    ChildProcess child(argv, true);
    int ok = 0;
    while (auto line = child.read_line(60s)) {
      if (line->rfind("ok ", 0) == 0)
        ++ok;
      else
        ADD_FAILURE() << *line;
    }
    EXPECT_EQ(child.wait(60s), 0);
    EXPECT_EQ(ok, static_cast<int>(all.size()) * 2);
  }
}

// Plain values: the same type and value (a float's sign too).
const char* const kValuesPrelude =
    "import array, math, pickle, sys\n"
    "def same(got, want):\n"
    "    ok = type(got) is type(want) and got == want\n"
    "    if isinstance(want, float): ok = ok and math.copysign(1, got) == math.copysign(1, want)\n"
    "    return ok\n";

TEST_F(PickleTest, EveryPythonsPicklesDecodeValueByValue) {
  decode_what_every_python_pickles(cases(), kValuesPrelude, &same);
}

// A range is data (`manager.list(range(10))` is the Python docs' own example): read as the
// tuple of its integers, whatever the step; one longer than the node budget is refused before
// it is made.
TEST_F(PickleTest, ARangeIsReadAsTheTupleOfItsIntegers) {
  auto ints = [](std::initializer_list<std::int64_t> v) {
    std::vector<Item> e;
    for (auto i : v) e.push_back(Item::integer(i));
    return Item::tuple(std::move(e));
  };
  std::vector<Item> big;
  for (int i = 0; i < 2500; ++i) big.push_back(Item::integer(i));
  decode_what_every_python_pickles({{"range(0)", Item::tuple({})},
                                    {"range(3)", ints({0, 1, 2})},
                                    {"range(-2, 5, 3)", ints({-2, 1, 4})},
                                    {"range(5, -4, -3)", ints({5, 2, -1})},
                                    {"range(5, 9, -1)", Item::tuple({})},
                                    {"range(-2**63, -2**63 + 2)", ints({INT64_MIN, INT64_MIN + 1})},
                                    {"range(2500)", Item::tuple(std::move(big))}},
                                   kValuesPrelude, &same);
  Limits small;
  small.max_nodes = 1000;
  // pickle.dumps(range(10**12), 4)
  const std::string p = unhex(
      "80049526000000000000008c086275696c74696e73948c0572616e67659493944b00"
      "8a060010a5d4e8004b01879452942e");
  EXPECT_NE(message_of(p, small).find("range() of more integers than max_nodes (1000)"),
            std::string::npos)
      << message_of(p, small);
  // Ranges are charged as they are made, together: a few bytes of pickle cannot make more
  // (pickle.dumps([range(i, 600 + i) for i in range(3)], 4): 1800 integers for 1000).
  const std::string three = unhex(
      "8004953f000000000000005d94288c086275696c74696e73948c0572616e67659493944b004d58024b0187"
      "94529468034b014d59024b018794529468034b024d5a024b0187945294652e");
  EXPECT_NE(message_of(three, small).find("in the pickle's ranges together"), std::string::npos)
      << message_of(three, small);
  small.max_nodes = 2000;
  EXPECT_EQ(decode(three, small).elements().size(), 3u);
}

TEST_F(PickleTest, EveryPythonLoadsWhatIsEncodedValueByValue) {
  every_python_loads_what_is_encoded(cases(), kValuesPrelude);
}

// The objects a manager sends (its '#ERROR' replies' exceptions, a '#PROXY' reply's Token), as
// Python source and as what troupe reads them as.
std::vector<Case> object_cases() {
  auto obj = [](std::string cls, std::vector<Item> args, Item state = Item()) {
    return Item::object(std::move(cls), Item::tuple(std::move(args)), std::move(state));
  };
  return {
      {"KeyError('x')", obj("builtins.KeyError", {Item::text("x")})},
      {"OSError(5, 'io')", obj("builtins.OSError", {Item::integer(5), Item::text("io")})},
      {"StopIteration()", obj("builtins.StopIteration", {})},
      {"queue.Empty()", obj("_queue.Empty", {})},
      {"queue.Full()", obj("queue.Full", {})},
      {"threading.BrokenBarrierError()", obj("threading.BrokenBarrierError", {})},
      {"multiprocessing.managers.RemoteError('tb')",
       obj("multiprocessing.managers.RemoteError", {Item::text("tb")})},
      {"multiprocessing.context.TimeoutError('t')",
       obj("multiprocessing.context.TimeoutError", {Item::text("t")})},
      {"multiprocessing.managers.Token('dict', ('127.0.0.1', 5000), '7f0')",
       obj("multiprocessing.managers.Token", {},
           Item::tuple(items({Item::text("dict"),
                              Item::tuple(items({Item::text("127.0.0.1"), Item::integer(5000)})),
                              Item::text("7f0")})))},
      {"('#ERROR', ValueError('v'))",
       Item::tuple(items({Item::text("#ERROR"), obj("builtins.ValueError", {Item::text("v")})}))},
      {"(lambda e: (setattr(e, 'note', 1), e)[1])(KeyError('y'))",
       obj("builtins.KeyError", {Item::text("y")},
           Item::dict(items({Item::text("note"), Item::integer(1)})))},
  };
}

const char* const kObjectsPrelude =
    "import math, pickle, queue, sys, threading\n"
    "import multiprocessing.context, multiprocessing.managers\n"
    "def same(a, b):\n"
    "    if type(a) is not type(b): return False\n"
    "    if isinstance(a, BaseException):\n"
    "        return a.args == b.args and getattr(a, '__dict__', {}) == getattr(b, '__dict__', {})\n"
    "    if isinstance(a, multiprocessing.managers.Token):\n"
    "        return (a.typeid, a.address, a.id) == (b.typeid, b.address, b.id)\n"
    "    if isinstance(a, (tuple, list)):\n"
    "        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))\n"
    "    return a == b\n";

TEST_F(PickleTest, TheExceptionsAndTokensOfEveryPythonDecode) {
  decode_what_every_python_pickles(object_cases(), kObjectsPrelude, &identical);
}

TEST_F(PickleTest, EveryPythonLoadsTheExceptionsAndTokensEncoded) {
  every_python_loads_what_is_encoded(object_cases(), kObjectsPrelude);
}

// Proxies as a Python client pickles them (BaseProxy.__reduce__): RebuildProxy of the proxy
// type, the Token, the serializer and the keywords, the proxy type read as the class itself.
TEST_F(PickleTest, TheProxiesOfEveryPythonDecodeAsRebuildProxy) {
  auto token = [](const char* typeid_, Item address, const char* id) {
    return Item::object(
        "multiprocessing.managers.Token", Item::tuple({}),
        Item::tuple(items({Item::text(typeid_), std::move(address), Item::text(id)})));
  };
  auto rebuild = [](const char* type, Item token, Item kwds) {
    return Item::object(
        "multiprocessing.managers.RebuildProxy",
        Item::tuple(items({Item::object(std::string("multiprocessing.managers.") + type, Item()),
                           std::move(token), Item::text("pickle"), std::move(kwds)})));
  };
  const std::vector<Case> cases = {
      {"M.ListProxy(M.Token('list', ('127.0.0.1', 5000), 'a1'), 'pickle', incref=False)",
       rebuild(
           "ListProxy",
           token("list", Item::tuple(items({Item::text("127.0.0.1"), Item::integer(5000)})), "a1"),
           Item::dict({}))},
      {"M.AutoProxy(M.Token('Q', '/tmp/s', 'b2'), 'pickle', exposed=('get', 'put'), "
       "incref=False)",
       rebuild("AutoProxy", token("Q", Item::text("/tmp/s"), "b2"),
               Item::dict(items({Item::text("exposed"),
                                 Item::tuple(items({Item::text("get"), Item::text("put")}))})))},
  };
  decode_what_every_python_pickles(
      cases, "import pickle, sys\nimport multiprocessing.managers as M\n", &identical);
}

TEST_F(PickleTest, OnlyTheKnownClassesAreBuilt) {
  // A class not on the list, by either global opcode.
  const std::string od =
      P("\x80\x04\x8c\x0b"
        "collections\x8c\x0b"
        "OrderedDict\x93)R.");
  EXPECT_NE(message_of(od).find("'collections.OrderedDict' is refused"), std::string::npos)
      << message_of(od);
  // NEWOBJ of a constructor of data, BUILD on a list.
  const std::string newobj_set =
      P("\x80\x04\x8c\x08"
        "builtins\x8c\x03set\x93)\x81.");
  EXPECT_NE(message_of(newobj_set).find("other than the exceptions and Token"), std::string::npos)
      << message_of(newobj_set);
  const std::string build_list = P("\x80\x04]}b.");
  EXPECT_NE(message_of(build_list).find("sets the state of something other"), std::string::npos)
      << message_of(build_list);
  // A class on the list is not a value by itself.
  const std::string bare =
      P("\x80\x04\x8c\x08"
        "builtins\x8c\x08KeyError\x93.");
  EXPECT_NE(message_of(bare).find("a class used as a value"), std::string::npos)
      << message_of(bare);
  const std::string bare_set =
      P("\x80\x04\x8c\x08"
        "builtins\x8c\x03set\x93.");
  EXPECT_NE(message_of(bare_set).find("a constructor used as a value"), std::string::npos)
      << message_of(bare_set);
  // Objects are not hashable here (not a dict key).
  const std::string key =
      P("\x80\x04}\x8c\x08"
        "builtins\x8c\x08KeyError\x93)RK\x01s.");
  EXPECT_THROW(decode(key), TypeError);
}

TEST_F(PickleTest, AReduceOfOsSystemIsRefusedByName) {
  // What pickle.dumps writes for an object whose __reduce__ is (os.system, ('true',)).
  const std::string stack_global = P("\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R.");
  EXPECT_NE(message_of(stack_global).find("'posix.system' is refused"), std::string::npos)
      << message_of(stack_global);
  const std::string global = P("\x80\x02") + "cos\nsystem\n" + P("X\x04\0\0\0true\x85R.");
  EXPECT_NE(message_of(global).find("'os.system' is refused"), std::string::npos)
      << message_of(global);
  // Objects of classes, persistent ids, extensions, out-of-band buffers.
  for (const char* op : {"\x81", "\x92", "b", "o", "Q", "\x82\x01", "\x97"}) {
    const std::string p = P("\x80\x05N)") + op + ".";
    EXPECT_NE(message_of(p).find("refused"), std::string::npos) << message_of(p);
  }
}

TEST_F(PickleTest, AMillionDeepNestingIsRefusedByDepth) {
  if (troupe::testing::kThreadSanitizer)
    GTEST_SKIP() << "a size check of a one-threaded decoder, not a race: 30 s under TSan";
  std::string p = "\x80\x04";
  const int n = 1000000;
  p.append(n, ']');
  p.append(n - 1, 'a');
  p += '.';
  EXPECT_NE(message_of(p).find("deeper than max_depth (100)"), std::string::npos) << message_of(p);
}

TEST_F(PickleTest, AHugeLengthIsRefusedBeforeAnyAllocation) {
  std::string p = "\x80\x04\x8d";
  for (int i = 0; i < 8; ++i)
    p.push_back(static_cast<char>(((std::uint64_t{1} << 40) >> (8 * i)) & 0xff));
  p += "abc.";
  EXPECT_NE(message_of(p).find("a length of 1099511627776 bytes, but only 4 are left"),
            std::string::npos)
      << message_of(p);
}

TEST_F(PickleTest, IntegersBeyond64BitsAreRefusedWithTheirSize) {
  // 2**64: LONG1 of 9 bytes, 00 .. 00 01.
  const std::string p = std::string("\x80\x04\x8a\x09", 4) + std::string(8, '\0') + "\x01.";
  EXPECT_NE(message_of(p).find("an integer of 9 bytes, beyond 64 bits"), std::string::npos)
      << message_of(p);
}

TEST_F(PickleTest, MalformedPicklesNameWhatIsWrong) {
  EXPECT_NE(message_of("N.").find("protocols 0 and 1 are not read"), std::string::npos);
  EXPECT_NE(message_of("\x80\x07N.").find("protocol 7 is not read"), std::string::npos);
  EXPECT_NE(message_of("\x80\x04\x8c\x05"
                       "ab")
                .find("a length of 5 bytes, but only 2 are left"),
            std::string::npos);
  EXPECT_NE(message_of("\x80\x04J\x01").find("ends early (4 bytes needed, 1 left)"),
            std::string::npos);
  EXPECT_NE(message_of("\x80\x04h\x03.").find("memo entry 3 was never stored"), std::string::npos);
  EXPECT_NE(message_of("\x80\x04"
                       "a.")
                .find("no value on the stack"),
            std::string::npos);
  EXPECT_NE(message_of("\x80\x04"
                       "e.")
                .find("no MARK"),
            std::string::npos);
  EXPECT_NE(message_of("\x80\x04"
                       "I1\n.")
                .find("protocols 0 and 1"),
            std::string::npos);
  EXPECT_NE(message_of("\x80\x04\xff.").find("unknown opcode 0xff at offset 2"), std::string::npos);
  EXPECT_NE(message_of("\x80\x04.").find("empty stack"), std::string::npos);
  // A list that holds itself (l = []; l.append(l)).
  EXPECT_NE(message_of(P("\x80\x04]\x94h\x00\x61.")).find("contains itself"), std::string::npos)
      << message_of(P("\x80\x04]\x94h\x00\x61."));
  // An unhashable key: Python's TypeError.
  EXPECT_THROW(decode("\x80\x04}]K\x02s."), TypeError);
}

TEST_F(PickleTest, TheMemoSharesAListAsPythonDoes) {
  // outer = [inner]; then inner.append(5) through the memo: outer is [[5]].
  const std::string p =
      P("\x80\x04]]\x94"
        "a"
        "h\x00K\x05"
        "a"
        "0.");
  const Item got = decode(p);
  EXPECT_TRUE(identical(got, Item::list(items({Item::list(items({Item::integer(5)}))}))))
      << repr(got);
  // Equal keys keep the first one's place and the last value, as d[k] = v does.
  const Item d = decode("\x80\x04}(K\x01K\x0a\x88K\x0bK\x02K\x0cu.");
  EXPECT_TRUE(identical(d, Item::dict(items({Item::integer(1), Item::integer(11), Item::integer(2),
                                             Item::integer(12)}))))
      << repr(d);
}

TEST_F(PickleTest, LimitsBoundValuesAndBytes) {
  if (troupe::testing::kThreadSanitizer)
    GTEST_SKIP() << "a size check of a one-threaded decoder, not a race: 19 s under TSan";
  std::string p = "\x80\x04](";
  for (int i = 0; i < 20; ++i) p += "K\x01";
  p += "e.";
  EXPECT_NE(message_of(p, {.max_nodes = 10}).find("max_nodes (10)"), std::string::npos)
      << message_of(p, {.max_nodes = 10});
  // A shared list used again and again counts at each use.
  std::string bomb =
      P("\x80\x04](K\x01K\x02K\x03"
        "eq\x00");
  for (int i = 0; i < 30; ++i) bomb += P("h\x00h\x00\x86q\x00");  // t = (t, t), in memo 0
  bomb += ".";
  EXPECT_NE(message_of(bomb).find("max_nodes"), std::string::npos) << message_of(bomb);
  const std::string big = std::string("\x80\x04\x8e", 3) + std::string("\x00\x10\0\0\0\0\0\0", 8) +
                          std::string(4096, 'b') + ".";
  EXPECT_NE(message_of(big, {.max_bytes = 1024}).find("max_bytes (1024)"), std::string::npos)
      << message_of(big, {.max_bytes = 1024});
}

TEST_F(PickleTest, ValuesMadeByAConstructorKeepTheLimits) {
  // frozenset() of a 99-deep tuple, wrapped 99 deep again and again: each made value counts
  // its own nesting where it is used.
  std::string deep =
      P("\x80\x04\x8c\x08"
        "builtins\x8c\x09"
        "frozenset\x93q\x00"
        "0Nq\x01"
        "0");
  for (int round = 0; round < 3; ++round)
    deep += P("h\x00h\x01") + std::string(99, '\x85') +
            P("Rq\x01"
              "0");
  deep += P("h\x01.");
  EXPECT_NE(message_of(deep).find("deeper than max_depth (100)"), std::string::npos)
      << message_of(deep);
  // set((T,)) for a tuple T of 2**15 ones, twice: one budget for the whole pickle.
  std::string wide = P("\x80\x04K\x01K\x01\x86");
  for (int i = 0; i < 14; ++i) wide += P("2\x86");
  wide +=
      P("q\x00"
        "0\x8c\x08"
        "builtins\x8c\x03set\x93q\x01"
        "0");
  for (int round = 0; round < 2; ++round) wide += P("h\x01h\x00\x85R0");
  wide += P("N.");
  EXPECT_NE(message_of(wide, {.max_nodes = 100000}).find("max_nodes (100000)"), std::string::npos)
      << message_of(wide, {.max_nodes = 100000});
  std::string once = wide;
  once.erase(once.rfind("h\x01h"), 7);  // one round: within the budget
  EXPECT_EQ(message_of(once, {.max_nodes = 100000}), "(no error)");
}

// An array.array as protocol 3 and up write one, its items as `bytes` in machine format `format`.
std::string array_pickle(std::string_view typecode, int format, std::string_view bytes,
                         std::string_view cls = "array\narray\n") {
  std::string p = P("\x80\x04") + "carray\n_array_reconstructor\n(c" + std::string(cls) + "X";
  for (int i = 0; i < 4; ++i) p.push_back(static_cast<char>((typecode.size() >> (8 * i)) & 0xff));
  p += std::string(typecode) + "J";
  for (int i = 0; i < 4; ++i) p.push_back(static_cast<char>((format >> (8 * i)) & 0xff));
  p += "B";
  for (int i = 0; i < 4; ++i) p.push_back(static_cast<char>((bytes.size() >> (8 * i)) & 0xff));
  return p + std::string(bytes) + "tR.";
}

TEST_F(PickleTest, ArraysInEveryMachineFormatAreReadAndBadOnesRefused) {
  using namespace std::string_literals;
  // Big-endian formats (as a big-endian machine writes them), UTF-16 with a surrogate pair.
  EXPECT_EQ(decode(array_pickle("h", 5, "\xff\xfe\x01\x00"s)),
            Item::array("h", items({Item::integer(-2), Item::integer(256)})));
  EXPECT_EQ(decode(array_pickle("I", 7, "\xff\xff\xff\xff"s)),
            Item::array("I", items({Item::integer(UINT32_MAX)})));
  EXPECT_EQ(decode(array_pickle("d", 17, "\x3f\xe0\0\0\0\0\0\0"s)),
            Item::array("d", items({Item::floating(0.5)})));
  EXPECT_EQ(decode(array_pickle("u", 18, "h\0\x3d\xd8\x00\xde"s)),
            Item::array("u", items({Item::text("h"), Item::text("\xf0\x9f\x98\x80")})));
  EXPECT_EQ(decode(array_pickle("w", 21, "\0\0\0\xe9"s)),
            Item::array("w", items({Item::text("\xc3\xa9")})));
  // multiprocessing.managers pickles an array as array.array(typecode, its bytes).
  EXPECT_EQ(decode(P("\x80\x04") +
                   "carray\narray\nX\x01\0\0\0qC\x08\xfe\xff\xff\xff\xff\xff\xff\xff\x86R."s),
            Item::array("q", {Item::integer(-2)}));
  // Read as Python reads them: an array equals an array of the same values, never a list.
  EXPECT_EQ(decode(array_pickle("i", 8, "\x01\0\0\0"s)), Item::array("q", {Item::integer(1)}));
  EXPECT_FALSE(decode(array_pickle("i", 8, "\x01\0\0\0"s)) == Item::list({Item::integer(1)}));
  // A lone surrogate is a character, as in Python's str.
  EXPECT_EQ(decode(array_pickle("u", 18, "\x00\xdc"s)),
            Item::array("u", items({Item::text("\xed\xb0\x80")})));
  // Values as Python's array holds them: an int in a 'd' array is a float; out of range, two
  // characters in one 'u' item, a float in an 'i' array: refused, with Python's words.
  EXPECT_TRUE(identical(decode(P("\x80\x02") + "carray\narray\nX\x01\0\0\0d]K\x02"
                                               "a\x86R."s),
                        Item::array("d", items({Item::floating(2.0)}))));
  EXPECT_NE(message_of(P("\x80\x02") + "carray\narray\nX\x01\0\0\0b]M\xe8\x03"
                                       "a\x86R."s)
                .find("array.array('b') holding 1000 (signed char is greater than maximum)"),
            std::string::npos);
  EXPECT_NE(message_of(P("\x80\x02") + "carray\narray\nX\x01\0\0\0u]X\x02\0\0\0aba\x86R."s)
                .find("(array item must be unicode character)"),
            std::string::npos);
  EXPECT_NE(message_of(P("\x80\x02") + "carray\narray\nX\x01\0\0\0i]G?\xf0\0\0\0\0\0\0a\x86R."s)
                .find("array.array('i') holding 1.0 ('float' object cannot be interpreted"),
            std::string::npos);
  // Bad ones, each named.
  const std::pair<std::string, std::string> bad[] = {
      {array_pickle("i", 8, "\x01\0\0"s), "not a multiple of the item size"},
      {array_pickle("i", 22, ""), "the machine format 22 (0 to 21)"},
      {array_pickle("i", 16, ""), "typecode 'i' with the machine format 16"},
      {array_pickle("d", 8, ""), "typecode 'd' with the machine format 8"},
      {array_pickle("x", 8, ""), "typecode 'x'"},
      {array_pickle("ii", 8, ""), "typecode 'ii'"},
      {array_pickle("u", 20, "\0\0\x11\0"s), "the code 1114112 (beyond Unicode)"},
      {array_pickle("b", 12, "\xe8\x03\0\0\0\0\0\0"s), "array.array('b') holding 1000"},
      {array_pickle("i", 8, "", "builtins\nset\n"), "a class other than array.array"},
      {P("\x80\x02") + "carray\narray\nX\x01\0\0\0i]X\x01\0\0\0xa\x86R."s,
       "array.array('i') holding 'x'"},
      {P("\x80\x02") + "carray\narray\nX\x01\0\0\0i)\x86R."s, "of other than (typecode, list)"},
      {P("\x80\x02") + "carray\narray\nX\x01\0\0\0iC\x03\x01\0\0\x86R."s,
       "not a multiple of the item size"},
  };
  for (const auto& [pickle, what] : bad)
    EXPECT_NE(message_of(pickle).find(what), std::string::npos)
        << what << ": " << message_of(pickle);
  // The values an array's bytes make count against max_nodes before they are made.
  EXPECT_NE(message_of(array_pickle("b", 1, std::string(2000, 'x')), {.max_nodes = 1000})
                .find("more values than max_nodes (1000)"),
            std::string::npos);
}

TEST_F(PickleTest, StrIsUtf8AsPythonWritesIt) {
  EXPECT_NE(message_of(P("\x80\x04\x8c\x01\xff.")).find("not UTF-8"), std::string::npos);
  EXPECT_NE(message_of(P("\x80\x04\x8c\x02\xc0\x80.")).find("not UTF-8"), std::string::npos);
  // A lone surrogate ('\ud800'), as pickle writes it (surrogatepass).
  EXPECT_EQ(decode(P("\x80\x04\x8c\x03\xed\xa0\x80.")).as_string(), "\xed\xa0\x80");
  // A MARK left open at STOP, and a pickle that ends where an opcode should be.
  EXPECT_NE(message_of(P("\x80\x02N(.")).find("no value on the stack"), std::string::npos);
  EXPECT_NE(message_of(P("\x80\x04N")).find("opcode at offset 3: the pickle ends early"),
            std::string::npos)
      << message_of(P("\x80\x04N"));
}

TEST_F(PickleTest, KindsWithNoPythonFormAreNotEncoded) {
  EXPECT_THROW((void)pickle::encode(Item::alternative(0, Item::none())), ValueError);
  EXPECT_THROW((void)pickle::encode(Item::none(), 3), ValueError);
}

}  // namespace
}  // namespace troupe::multiprocessing::managers::detail
