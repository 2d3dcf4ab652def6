#include "troupe/multiprocessing/managers/detail/item.hpp"

#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"

#include "leak_check.hpp"

namespace troupe::multiprocessing::managers::detail {

// GoogleTest prints an Item as Python would.
void PrintTo(const Item& x, std::ostream* os) {
  *os << repr(x, 2000);
}

namespace {

using ::testing::HasSubstr;
using ItemTest = troupe::testing::LeakCheck;
using namespace std::string_literals;

Item I(std::int64_t i) {
  return Item::integer(i);
}
Item U(std::uint64_t u) {
  return Item::uinteger(u);
}
Item F(double d) {
  return Item::floating(d);
}
Item S(std::string s) {
  return Item::text(std::move(s));
}
Item B(std::string s) {
  return Item::bytes(std::move(s));
}
Item Tup(std::vector<Item> e) {
  return Item::tuple(std::move(e));
}
Item Lst(std::vector<Item> e) {
  return Item::list(std::move(e));
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// The message of the exception `f` throws, or "" (a test failure) if it throws none of `E`.
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception of the expected class";
  return "";
}

TEST_F(ItemTest, MovesAreCheapAndDoNotThrow) {
  static_assert(std::is_nothrow_move_constructible_v<Item>);
  static_assert(std::is_nothrow_move_assignable_v<Item>);
  std::vector<Item> big(1000, S("x"));
  Item a = Lst(std::move(big));
  const Item* first = &a.elements()[0];
  Item b = std::move(a);
  EXPECT_EQ(&b.elements()[0], first);  // the elements were not copied
  EXPECT_EQ(b.elements().size(), 1000u);
}

// Python 3.11: 1 == 1.0 == True, 'a' != b'a', b'a' == bytearray(b'a'), [1] != (1,),
// float('nan') != float('nan'), and x = nan; [x] == [x] (identity first inside containers).
TEST_F(ItemTest, EqualityIsPythons) {
  EXPECT_EQ(I(1), F(1.0));
  EXPECT_EQ(I(1), Item::boolean(true));
  EXPECT_EQ(F(1.0), Item::boolean(true));
  EXPECT_EQ(I(0), Item::boolean(false));
  EXPECT_EQ(U(5), I(5));
  EXPECT_NE(U(std::uint64_t{1} << 63), I(std::numeric_limits<std::int64_t>::min()));
  EXPECT_EQ(U(std::uint64_t{1} << 63), F(9223372036854775808.0));
  // 2**53 + 1 is not the float 2**53 (no rounding in int/float comparisons).
  EXPECT_NE(I((std::int64_t{1} << 53) + 1), F(9007199254740992.0));
  EXPECT_NE(S("a"), B("a"));
  EXPECT_EQ(B("a"), Item::bytearray("a"));
  EXPECT_NE(Lst({I(1)}), Tup({I(1)}));
  EXPECT_EQ(Item::sequence({I(1)}), Lst({I(1)}));  // the wire's list is either
  EXPECT_EQ(Item::sequence({I(1)}), Tup({I(1)}));
  EXPECT_NE(F(kNaN), F(kNaN));
  EXPECT_EQ(Lst({F(kNaN)}), Lst({F(kNaN)}));
  EXPECT_TRUE(same_or_equal(F(kNaN), F(kNaN)));
  EXPECT_EQ(Item::none(), Item());
  EXPECT_NE(Item::none(), I(0));
  EXPECT_EQ(Tup({I(1), Tup({S("a"), F(2.0)})}), Tup({F(1.0), Tup({S("a"), I(2)})}));
  // Dicts and sets compare without order; a set equals a frozenset with the same elements.
  EXPECT_EQ(Item::dict({S("a"), I(1), S("b"), I(2)}), Item::dict({S("b"), F(2), S("a"), I(1)}));
  EXPECT_NE(Item::dict({S("a"), I(1)}), Item::dict({S("a"), I(2)}));
  EXPECT_EQ(Item::set({I(1), I(2)}), Item::frozenset({I(2), I(1)}));
  EXPECT_NE(Item::set({I(1), I(2)}), Item::set({I(1), I(3)}));
  std::vector<Item> many_a, many_b;  // above the hash-indexed threshold
  for (int i = 0; i < 50; ++i) {
    many_a.push_back(I(i));
    many_b.insert(many_b.begin(), F(i));
  }
  EXPECT_EQ(Item::set(many_a), Item::frozenset(many_b));
  Ref r{"dict", "unix:/tmp/m", 7, 1, 100};
  Ref r2 = r;
  r2.ticket = 200;
  EXPECT_EQ(Item::ref(r), Item::ref(r2));  // the same object, whatever the ticket
  r2.id = 8;
  EXPECT_NE(Item::ref(r), Item::ref(r2));
  EXPECT_EQ(Item::alternative(1, I(2)), Item::alternative(1, F(2)));
  EXPECT_NE(Item::alternative(0, I(2)), Item::alternative(1, I(2)));
}

TEST_F(ItemTest, ObjectsOfThePickleDialect) {
  // What the pickle dialect reads an exception or a Token as: no form on troupe's own wire.
  const Item e = Item::object("builtins.KeyError", Item::tuple({Item::text("k")}));
  EXPECT_EQ(repr(e), "KeyError('k')");
  EXPECT_EQ(type_name(e), "object");
  EXPECT_EQ(e.object_class(), "builtins.KeyError");
  EXPECT_TRUE(e.object_state().is_none());
  EXPECT_TRUE(e == Item::object("builtins.KeyError", Item::tuple({Item::text("k")})));
  EXPECT_FALSE(e == Item::object("builtins.ValueError", Item::tuple({Item::text("k")})));
  EXPECT_FALSE(e == Item::object("builtins.KeyError", Item::tuple({Item::text("k")}),
                                 Item::dict({Item::text("note"), Item::integer(1)})));
  EXPECT_THROW((void)hash(e), TypeError);
  EXPECT_THROW((void)less(e, e), TypeError);
  EXPECT_THROW((void)Item::integer(1).object_class(), TypeError);
  capnp::MallocMessageBuilder mb;
  EXPECT_THROW(write(e, mb.initRoot<proto::Value>()), ValueError);
}

TEST_F(ItemTest, AnArrayIsPythonsAndTravelsAsItsValues) {
  const Item a = Item::array("i", {I(1), I(-2)});
  EXPECT_TRUE(a.is_array());
  EXPECT_FALSE(Item::object("builtins.KeyError", Tup({S("i"), Lst({})})).is_array());
  EXPECT_EQ(a.array_typecode(), "i");
  EXPECT_EQ(a.array_items().size(), 2u);
  EXPECT_EQ(repr(a), "array('i', [1, -2])");
  EXPECT_EQ(repr(Item::array("d", {})), "array('d')");
  EXPECT_EQ(repr(Item::array("u", {S("a"), S("'")})), "array('u', \"a'\")");
  // Python: arrays compare by value whatever their typecodes, never equal to a list.
  EXPECT_TRUE(a == Item::array("q", {I(1), F(-2.0)}));
  EXPECT_FALSE(a == Item::array("i", {I(1)}));
  EXPECT_FALSE(a == Lst({I(1), I(-2)}));
  EXPECT_THROW((void)hash(a), TypeError);
  EXPECT_THROW((void)I(1).array_items(), TypeError);
  // troupe's wire: the list of its values.
  capnp::MallocMessageBuilder mb;
  write(a, mb.initRoot<proto::Value>());
  EXPECT_EQ(to_item(mb.getRoot<proto::Value>().asReader()), Item::sequence({I(1), I(-2)}));
}

TEST_F(ItemTest, IdenticalKeepsKindsAndBits) {
  EXPECT_FALSE(identical(I(1), F(1.0)));
  EXPECT_FALSE(identical(I(5), U(5)));
  EXPECT_FALSE(identical(F(0.0), F(-0.0)));
  EXPECT_TRUE(identical(F(kNaN), F(kNaN)));
  EXPECT_FALSE(identical(Lst({I(1)}), Tup({I(1)})));
  EXPECT_TRUE(identical(Item::dict({S("a"), Lst({})}), Item::dict({S("a"), Lst({})})));
}

// Expected values printed by python3 (3.11.7) here: hash(1), hash(1.0), hash(True), hash(2**62),
// hash(2**63), hash(-1), hash(0.5), hash(-0.5), hash(1e100), hash(2**64-1), hash(-2**63),
// hash(float('inf')), hash(1.5e-300), hash((1,2)), hash(()), hash((1,)).
TEST_F(ItemTest, NumbersAndTuplesHashAsCPython) {
  EXPECT_EQ(hash(I(1)), 1);
  EXPECT_EQ(hash(F(1.0)), 1);
  EXPECT_EQ(hash(Item::boolean(true)), 1);
  EXPECT_EQ(hash(I(std::int64_t{1} << 62)), 2);
  EXPECT_EQ(hash(U(std::uint64_t{1} << 63)), 4);
  EXPECT_EQ(hash(I(-1)), -2);
  EXPECT_EQ(hash(F(0.5)), 1152921504606846976);
  EXPECT_EQ(hash(F(-0.5)), -1152921504606846976);
  EXPECT_EQ(hash(F(1e100)), 1822893315824342674);
  EXPECT_EQ(hash(U(~std::uint64_t{0})), 7);
  EXPECT_EQ(hash(I(std::numeric_limits<std::int64_t>::min())), -4);
  EXPECT_EQ(hash(F(std::numeric_limits<double>::infinity())), 314159);
  EXPECT_EQ(hash(F(1.5e-300)), 1876877353711978326);
  EXPECT_EQ(hash(Tup({I(1), I(2)})), -3550055125485641917);
  EXPECT_EQ(hash(Tup({})), 5740354900026072187);
  EXPECT_EQ(hash(Tup({I(1)})), -6644214454873602895);
  // The wire's list hashes as the tuple, and equal values hash alike.
  EXPECT_EQ(hash(Item::sequence({I(1), I(2)})), hash(Tup({F(1.0), I(2)})));
  EXPECT_EQ(hash(S("abc")), hash(S("abc")));
  EXPECT_EQ(hash(Item::frozenset({I(1), I(2)})), hash(Item::frozenset({F(2.0), I(1)})));
  EXPECT_EQ(hash(F(kNaN)), hash(F(kNaN)));
}

// Python 3.11: hash([]) and the rest raise TypeError: unhashable type: 'list'.
TEST_F(ItemTest, MutableKindsAreUnhashable) {
  EXPECT_EQ(error_of<TypeError>([] { hash(Lst({})); }), "unhashable type: 'list'");
  EXPECT_EQ(error_of<TypeError>([] { hash(Item::dict({})); }), "unhashable type: 'dict'");
  EXPECT_EQ(error_of<TypeError>([] { hash(Item::set({})); }), "unhashable type: 'set'");
  EXPECT_EQ(error_of<TypeError>([] { hash(Item::bytearray("")); }), "unhashable type: 'bytearray'");
  EXPECT_EQ(error_of<TypeError>([] { hash(Tup({I(1), Lst({})})); }), "unhashable type: 'list'");
  EXPECT_EQ(error_of<TypeError>([] { hash(Item::sequence({Item::dict({})})); }),
            "unhashable type: 'dict'");
}

// Python 3.11's `<` on the same values (messages copied from python3 -c).
TEST_F(ItemTest, OrderingIsPythons) {
  EXPECT_TRUE(less(F(1.5), U(std::uint64_t{1} << 63)));
  EXPECT_TRUE(less(I(std::numeric_limits<std::int64_t>::max()), F(9223372036854775808.0)));
  EXPECT_TRUE(less(F(9007199254740992.0), I((std::int64_t{1} << 53) + 1)));
  EXPECT_TRUE(less(Item::boolean(false), F(0.5)));
  EXPECT_TRUE(less(I(-1), U(0)));
  EXPECT_FALSE(less(U(0), I(-1)));
  EXPECT_FALSE(less(F(kNaN), I(1)));
  EXPECT_FALSE(less(I(1), F(kNaN)));
  EXPECT_TRUE(less(F(-std::numeric_limits<double>::infinity()), I(-5)));
  EXPECT_TRUE(less(S("a"), S("b")));
  EXPECT_TRUE(less(S("z"), S("é")));  // code point order
  EXPECT_TRUE(less(B("a"), Item::bytearray("ab")));
  EXPECT_TRUE(less(Lst({I(1), S("a")}), Lst({I(1), S("b")})));
  EXPECT_TRUE(less(Lst({I(1), S("a")}), Lst({I(2), I(3)})));  // 'a' never meets 3
  EXPECT_TRUE(less(Tup({I(1)}), Tup({I(1), I(0)})));
  EXPECT_TRUE(less(Item::sequence({I(1)}), Tup({I(2)})));
  EXPECT_TRUE(less(Item::set({I(1)}), Item::frozenset({I(1), I(2)})));
  EXPECT_FALSE(less(Item::set({I(1), I(3)}), Item::set({I(1), I(2)})));
  EXPECT_EQ(error_of<TypeError>([] { less(I(1), S("a")); }),
            "'<' not supported between instances of 'int' and 'str'");
  EXPECT_EQ(error_of<TypeError>([] { less(S("a"), I(1)); }),
            "'<' not supported between instances of 'str' and 'int'");
  EXPECT_EQ(error_of<TypeError>([] { less(Item::none(), Item::none()); }),
            "'<' not supported between instances of 'NoneType' and 'NoneType'");
  EXPECT_EQ(error_of<TypeError>([] {
              less(Lst({I(1), S("a")}), Lst({I(1), I(2)}));
            }),
            "'<' not supported between instances of 'str' and 'int'");
  EXPECT_EQ(error_of<TypeError>([] { less(Tup({I(1)}), Lst({I(1)})); }),
            "'<' not supported between instances of 'tuple' and 'list'");
  EXPECT_EQ(error_of<TypeError>([] { less(B("a"), S("a")); }),
            "'<' not supported between instances of 'bytes' and 'str'");
  EXPECT_EQ(error_of<TypeError>([] { less(Item::dict({}), Item::dict({})); }),
            "'<' not supported between instances of 'dict' and 'dict'");
}

// Expected strings printed by python3 (3.11.7): repr() of the same values.
TEST_F(ItemTest, ReprIsPythonSyntax) {
  EXPECT_EQ(repr(Item::none()), "None");
  EXPECT_EQ(repr(Item::boolean(true)), "True");
  EXPECT_EQ(repr(I(-42)), "-42");
  EXPECT_EQ(repr(U(18446744073709551615ull)), "18446744073709551615");
  EXPECT_EQ(repr(F(1e16)), "1e+16");
  EXPECT_EQ(repr(F(1.5e-5)), "1.5e-05");
  EXPECT_EQ(repr(F(1e-4)), "0.0001");
  EXPECT_EQ(repr(F(123456789012345678.0)), "1.2345678901234568e+17");
  EXPECT_EQ(repr(F(0.1)), "0.1");
  EXPECT_EQ(repr(F(-0.0)), "-0.0");
  EXPECT_EQ(repr(F(1e22)), "1e+22");
  EXPECT_EQ(repr(F(2.5e-320)), "2.5e-320");
  EXPECT_EQ(repr(F(1e15)), "1000000000000000.0");
  EXPECT_EQ(repr(F(1.0)), "1.0");
  EXPECT_EQ(repr(F(123.456)), "123.456");
  EXPECT_EQ(repr(F(std::numeric_limits<double>::infinity())), "inf");
  EXPECT_EQ(repr(F(-std::numeric_limits<double>::infinity())), "-inf");
  EXPECT_EQ(repr(F(kNaN)), "nan");
  EXPECT_EQ(repr(S("a'b")), "\"a'b\"");
  EXPECT_EQ(repr(S("a'\"b")), "'a\\'\"b'");
  EXPECT_EQ(repr(S("\x00\n\t\x7f\u0080\u00a0\u00ad\u2028 \u00e9\u6f22\U0001F600\ue000"s)),
            "'\\x00\\n\\t\\x7f\\x80\\xa0\\xad\\u2028 \u00e9\u6f22\U0001F600\\ue000'");
  EXPECT_EQ(repr(S(std::string("\x00", 1))), "'\\x00'");
  EXPECT_EQ(repr(S("bad \xff utf-8")), "'bad \\udcff utf-8'");  // surrogateescape's view
  EXPECT_EQ(repr(B(std::string("a'\x00\xff\\", 5))), "b\"a'\\x00\\xff\\\\\"");
  EXPECT_EQ(repr(Item::bytearray("x")), "bytearray(b'x')");
  EXPECT_EQ(repr(Item::set({})), "set()");
  EXPECT_EQ(repr(Item::frozenset({})), "frozenset()");
  EXPECT_EQ(repr(Item::frozenset({I(1)})), "frozenset({1})");
  EXPECT_EQ(repr(Tup({I(1)})), "(1,)");
  EXPECT_EQ(repr(Tup({})), "()");
  EXPECT_EQ(repr(Item::slice(I(1), Item::none(), Item::none())), "slice(1, None, None)");
  EXPECT_EQ(repr(Item::dict({S("k"), Lst({I(1), Tup({F(2.5), B("b")})})})),
            "{'k': [1, (2.5, b'b')]}");
  EXPECT_EQ(repr(Item::sequence({I(1), S("x")})), "[1, 'x']");
  EXPECT_EQ(repr(Item::ref(Ref{"dict", "unix:/tmp/m", 7, 0, 0})),
            "<proxy of 'dict' #7 at 'unix:/tmp/m'>");
  EXPECT_EQ(str(S("plain")), "plain");
  EXPECT_EQ(str(Lst({S("a")})), "['a']");
  // Cut for error messages.
  std::vector<Item> many(1000, I(12345));
  const std::string cut = repr(Lst(many), 20);
  EXPECT_EQ(cut, "[12345, 12345, 12345...");
}

// ---- the wire ---------------------------------------------------------------------------------

struct Tree {
  capnp::MallocMessageBuilder mb;
  proto::Value::Builder root = mb.initRoot<proto::Value>();
};

template <class T>
Item through_codec(const T& x) {
  Tree m;
  Codec<T>::encode(x, m.root);
  return to_item(m.root.asReader());
}

template <class T>
T back_through_codec(const Item& x) {
  Tree m;
  write(x, m.root);
  return Codec<T>::decode(m.root.asReader());
}

TEST_F(ItemTest, CodecValuesRoundTripThroughItems) {
  using Mixed = std::tuple<int, std::uint64_t, double, bool, std::string, std::vector<std::string>,
                           std::map<std::string, int>, std::optional<std::string>,
                           std::variant<int, std::string>, std::monostate>;
  const Mixed x{-7,
                18446744073709551615ull,
                2.5,
                true,
                "text",
                {"a", "b"},
                {{"one", 1}, {"two", 2}},
                std::string("maybe"),
                std::string("alt"),
                {}};
  const Item item = through_codec(x);
  ASSERT_EQ(item.kind(), Kind::sequence);
  const auto& e = item.elements();
  ASSERT_EQ(e.size(), 10u);
  EXPECT_EQ(e[0].kind(), Kind::integer);
  EXPECT_EQ(e[1].kind(), Kind::uinteger);
  EXPECT_EQ(e[2].kind(), Kind::floating);
  EXPECT_EQ(e[3].kind(), Kind::boolean);
  EXPECT_EQ(e[4].kind(), Kind::text);
  EXPECT_EQ(e[5], Lst({S("a"), S("b")}));
  // A map arrives as Codec's flat k, v, k, v list.
  EXPECT_EQ(e[6], Lst({S("one"), I(1), S("two"), I(2)}));
  EXPECT_EQ(e[8].kind(), Kind::alternative);
  EXPECT_EQ(e[8].alternative_index(), 1u);
  EXPECT_EQ(e[9].kind(), Kind::none);
  EXPECT_EQ(back_through_codec<Mixed>(item), x);
  // Python's kinds all write as lists: a dict's pairs flat, a tuple's elements.
  EXPECT_EQ(
      (back_through_codec<std::map<std::string, int>>(Item::dict({S("k"), I(3), S("j"), I(1)}))),
      (std::map<std::string, int>{{"k", 3}, {"j", 1}}));
  EXPECT_EQ((back_through_codec<std::tuple<int, std::string>>(Tup({I(4), S("x")}))),
            (std::tuple<int, std::string>{4, "x"}));
  EXPECT_EQ((back_through_codec<std::vector<std::byte>>(B("\x01\x02"))),
            (std::vector<std::byte>{std::byte{1}, std::byte{2}}));
  // A slice travels as its three fields.
  Tree m;
  write(Item::slice(I(1), Item::none(), I(-1)), m.root);
  EXPECT_TRUE(identical(to_item(m.root.asReader()), Item::sequence({I(1), Item::none(), I(-1)})));
}

TEST_F(ItemTest, StructsTravelAsTheirCanonicalBytes) {
  capnp::MallocMessageBuilder inner;
  auto r = inner.initRoot<proto::Ref>();
  r.setTypeid("Queue");
  r.setId(12);
  Tree m;
  m.root.initStruct().setAs<proto::Ref>(r.asReader());
  const Item item = to_item(m.root.asReader());
  ASSERT_EQ(item.kind(), Kind::structure);
  EXPECT_EQ(item.as_string().size() % 8, 0u);
  EXPECT_GT(item.as_string().size(), 8u);
  Tree back;
  write(item, back.root);
  auto got = back.root.asReader().getStruct().getAs<proto::Ref>();
  EXPECT_EQ(std::string(got.getTypeid().cStr()), "Queue");
  EXPECT_EQ(got.getId(), 12u);
  EXPECT_EQ(to_item(back.root.asReader()), item);  // canonical: the same bytes again
  // A null struct is empty bytes, and back.
  Tree null;
  null.root.initStruct();
  EXPECT_EQ(to_item(null.root.asReader()).as_string(), "");
  // Bytes that are not words are refused.
  Tree bad;
  EXPECT_THAT(error_of<ValueError>([&] { write(Item::structure("12345"), bad.root); }),
              HasSubstr("whole 8-byte words, not 5 bytes"));
}

TEST_F(ItemTest, RefsRoundTripAndAreFound) {
  const Ref r{"dict", "tcp:127.0.0.1:5000", 42, 0xfeed, 0xbeef};
  Tree m;
  write(Tup({I(1), Item::ref(r)}), m.root);
  const Item item = to_item(m.root.asReader());
  ASSERT_EQ(item.elements()[1].kind(), Kind::ref);
  const Ref& got = item.elements()[1].as_ref();
  EXPECT_EQ(got.type_id, "dict");
  EXPECT_EQ(got.address, "tcp:127.0.0.1:5000");
  EXPECT_EQ(got.id, 42u);
  EXPECT_EQ(got.fingerprint, 0xfeedu);
  EXPECT_EQ(got.ticket, 0xbeefu);
  EXPECT_TRUE(has_ref(item));
  EXPECT_FALSE(has_ref(Lst({I(1), Item::dict({S("a"), Tup({})})})));
  int seen = 0;
  for_each_ref(
      Item::dict({S("a"), Item::ref(r), S("b"), Lst({Item::alternative(0, Item::ref(r))})}),
      [&](const Item& x) {
        EXPECT_EQ(x.kind(), Kind::ref);
        ++seen;
      });
  EXPECT_EQ(seen, 2);
}

// A list nested `depth` deep around an int.
void nest(proto::Value::Builder v, int depth) {
  for (int i = 0; i < depth; ++i) v = v.initList(1)[0];
  v.setInt(1);
}

TEST_F(ItemTest, DeepNestingIsRefusedNamingTheLimit) {
  Tree m;
  nest(m.root, 100);
  EXPECT_NO_THROW(to_item(m.root.asReader()));  // exactly at the limit
  Tree deeper;
  nest(deeper.root, 101);
  EXPECT_EQ(error_of<ValueError>([&] { to_item(deeper.root.asReader()); }),
            "value too deep: nesting 101 is over Limits::max_depth = 100");
  // Read from bytes with the codec's reader options, Cap'n Proto's own nesting limit (128) is
  // met first when ours is higher: still a ValueError.
  Tree huge;
  nest(huge.root, 1000);
  auto words = capnp::messageToFlatArray(huge.mb);
  capnp::FlatArrayMessageReader reader(words, reader_options(words.size()));
  Limits lax;
  lax.max_depth = 100000;
  EXPECT_THROW(to_item(reader.getRoot<proto::Value>(), lax), ValueError);
}

TEST_F(ItemTest, SizesAreBoundedBeforeAllocating) {
  Tree m;
  auto l = m.root.initList(1000);
  for (unsigned i = 0; i < 1000; ++i) l[i].setInt(i);
  Limits small;
  small.max_nodes = 100;
  EXPECT_EQ(error_of<ValueError>([&] { to_item(m.root.asReader(), small); }),
            "value too large: 1001 nodes is over Limits::max_nodes = 100");
  Tree t;
  auto two = t.root.initList(2);
  two[0].setText(std::string(60, 'x'));
  two[1].setData(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("0123456789"), 10));
  Limits tiny;
  tiny.max_bytes = 64;
  EXPECT_EQ(error_of<ValueError>([&] { to_item(t.root.asReader(), tiny); }),
            "value too large: 70 bytes of text, data and structs is over Limits::max_bytes = 64");
  tiny.max_bytes = 70;
  const Item ok = to_item(t.root.asReader(), tiny);
  EXPECT_EQ(ok.elements()[1], B("0123456789"));
}

// Garbage read as a message: to_item() returns a tree or throws ValueError, nothing else (a
// fixed seed and a bounded count, so a failure reproduces).
TEST_F(ItemTest, GarbageIsAValueErrorOrATree) {
  std::mt19937_64 rng(17);
  int trees = 0, refused = 0;
  for (int round = 0; round < 2000; ++round) {
    Tree valid;
    nest(valid.root, static_cast<int>(rng() % 8));
    auto words = capnp::messageToFlatArray(valid.mb);
    auto bytes = words.asBytes();
    for (int flips = 0; flips < 4; ++flips)
      bytes[rng() % bytes.size()] = static_cast<kj::byte>(rng());
    // The segment table and root pointer are Cap'n Proto's to check (the reader's own errors).
    std::optional<capnp::FlatArrayMessageReader> reader;
    proto::Value::Reader root;
    try {
      reader.emplace(words, reader_options(words.size()));
      root = reader->getRoot<proto::Value>();
    } catch (const kj::Exception&) {
      ++refused;
      continue;
    }
    try {
      Limits small;
      small.max_nodes = 1000;
      small.max_bytes = 4096;
      (void)to_item(root, small);
      ++trees;
    } catch (const ValueError&) {
      ++refused;
    }
  }
  EXPECT_EQ(trees + refused, 2000);
  EXPECT_GT(refused, 0);
}

TEST_F(ItemTest, WrongKindsAreClearErrors) {
  Tree m;
  m.root.initStruct().initAs<capnp::List<std::int32_t>>(3);
  EXPECT_EQ(error_of<ValueError>([&] { to_item(m.root.asReader()); }),
            "malformed message: a struct node holds a list, not a struct");
  EXPECT_EQ(error_of<TypeError>([] { (void)I(1).as_string(); }),
            "expected str, bytes or struct, got 'int'");
  EXPECT_EQ(error_of<TypeError>([] { (void)S("x").elements(); }),
            "expected a container, got 'str'");
  EXPECT_EQ(error_of<ValueError>([] { (void)Item::dict({I(1)}); }),
            "a dict's flat pairs need an even number of elements, not 1");
  EXPECT_EQ(type_name(Item::sequence({})), "list");
  EXPECT_EQ(type_name(U(1)), "int");
  EXPECT_EQ(type_name(Item::none()), "NoneType");
}

}  // namespace
}  // namespace troupe::multiprocessing::managers::detail
