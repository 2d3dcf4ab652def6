// troupe/multiprocessing/managers/detail/item.hpp — Item, an owned tree of Python's plain data.
//
// What a manager's built-in objects (the managed dict, list, set, Namespace, Value, Array) hold,
// and what both wire dialects decode into: troupe's own (a proto::Value tree, proto/value.capnp)
// and, later, CPython's (a pickle restricted to plain data, issue 18). An Item is one of
//
//   Kind          Python                        proto::Value (write / to_item)
//   none          None                          none
//   boolean       bool                          bool
//   integer       int (fits int64)              int
//   uinteger      int (above int64's range)     uint
//   floating      float                         float
//   text          str (UTF-8)                   text (chunked above 256 MiB, as Codec does)
//   bytes         bytes                         data (chunked likewise)
//   bytearray     bytearray                     data (to_item never makes one)
//   sequence      a list whose Python kind the  list (what to_item makes of every list)
//                 wire does not say
//   list, tuple   list, tuple                   list
//   set,frozenset set, frozenset                list
//   dict          dict: elements k0,v0,k1,v1,.. list k0,v0,k1,v1,... (Codec's map encoding)
//   slice         slice(start, stop, step)      list [start, stop, step]
//   alternative   (a C++ std::variant)          alternative {index, value}
//   structure     (a Cap'n Proto struct)        struct (kept as its canonical bytes)
//   ref           a proxy (a hosted object)     ref {typeid, address, id, fingerprint, ticket}
//   object        an object of a class the      (none: write() refuses it), except
//                 pickle dialect reads (an      an array.array: the list of its items
//                 exception, a Token, an
//                 array.array): its class,
//                 args and state
//
// The kinds Python distinguishes (list, tuple, dict, set, frozenset, bytearray, slice) do not
// survive write(): a Cap'n Proto list is only a list. to_item() therefore makes `sequence`, "a
// list of unknown Python kind", and the containers read a `sequence` argument as what they
// expect there: a mapping argument (dict.update, dict | x) as Codec's flat k, v, k, v pairs; a
// set operand as a set; an index of three none-or-int elements into a list or Array as a slice
// (that is the slice's wire form); a key as a tuple. Compared and hashed, a `sequence` is a
// tuple that also equals a list with the same elements. A `sequence` is written back to Python
// (the pickle dialect) as a list.
//
// Python's semantics: `==` (operator==), hash(), `<` (less) and repr() behave as Python's on the
// same values (1 == 1.0 == True and hash alike; str and bytes differ; NaN != NaN; the numeric
// hash is Python's exactly). Inside containers (elements of a list, keys of a dict), Python
// compares `x is y or x == y`; a value that crossed a process has no identity, so an element
// "is" another when they are identical() — which makes a NaN equal to a bit-identical NaN there,
// as the same float object is in Python.
//
// Limits: to_item() reads untrusted trees; depth, node count and bytes are bounded (Limits), and
// an Item built by the containers stays within a small multiple of what they were given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "value.capnp.h"

namespace troupe::multiprocessing::managers::detail {

/// A reference to an object hosted by a manager (proto::Ref): what a proxy is made from.
/// Two refs are the same object when `address` and `id` are equal.
struct Ref {
  std::string type_id;            // the registered typeid ("dict", "Queue", "Maths")
  std::string address;            // the server's address (troupe::multiprocessing::Address syntax)
  std::uint64_t id = 0;           // the object's id in that server (never 0)
  std::uint64_t fingerprint = 0;  // of the hosted type's method table (0: not checked)
  std::uint64_t ticket = 0;       // the reference parked for this copy (0: none)
};

/// What an Item holds (see the table at the top of this file).
enum class Kind : std::uint8_t {
  none,
  boolean,
  integer,
  uinteger,
  floating,
  text,
  bytes,
  bytearray,
  sequence,
  list,
  tuple,
  dict,
  set,
  frozenset,
  slice,
  alternative,
  structure,
  ref,
  object,
};

/// Bounds on a tree read from outside (to_item). Each exceeded is a ValueError naming the limit,
/// its value and the size seen.
struct Limits {
  std::size_t max_depth = 100;                    // nesting of lists/alternatives
  std::size_t max_nodes = std::size_t{1} << 22;   // Value nodes in the whole tree (4 Mi)
  std::size_t max_bytes = std::size_t{64} << 20;  // text + data + struct bytes (64 MiB)
};

/// An owned value tree of Python's plain data. Copies are deep; moves are cheap and noexcept.
/// Build one with the static factories; read it with kind() and the accessors (each throws
/// TypeError naming the kind it found if called on another kind).
class Item {
public:
  /// None.
  Item() noexcept = default;

  static Item none() noexcept { return Item(); }
  /// None that stands for an argument not given (a gap keyword placement left before a later
  /// parameter): is_none(), and equal to None, but flag() reads it as the default where an
  /// explicit None is Python's falsy.
  static Item omitted() noexcept {
    Item i;
    i.index_ = 1;
    return i;
  }
  static Item boolean(bool b) { return Item(Kind::boolean, b); }
  static Item integer(std::int64_t i) { return Item(Kind::integer, i); }
  /// An unsigned integer; kept as `uinteger` (so write() gives a uint node), equal to the same
  /// `integer`.
  static Item uinteger(std::uint64_t u) { return Item(Kind::uinteger, u); }
  static Item floating(double d) { return Item(Kind::floating, d); }
  static Item text(std::string s) { return Item(Kind::text, std::move(s)); }
  static Item bytes(std::string b) { return Item(Kind::bytes, std::move(b)); }
  static Item bytearray(std::string b) { return Item(Kind::bytearray, std::move(b)); }
  static Item sequence(std::vector<Item> e) { return Item(Kind::sequence, std::move(e)); }
  static Item list(std::vector<Item> e) { return Item(Kind::list, std::move(e)); }
  static Item tuple(std::vector<Item> e) { return Item(Kind::tuple, std::move(e)); }
  /// A set's elements, distinct (the caller's duty: the containers build sets).
  static Item set(std::vector<Item> e) { return Item(Kind::set, std::move(e)); }
  static Item frozenset(std::vector<Item> e) { return Item(Kind::frozenset, std::move(e)); }
  /// A dict from its pairs flattened: k0, v0, k1, v1, ... with distinct keys.
  /// @throws ValueError if `flat` has an odd number of elements.
  static Item dict(std::vector<Item> flat);
  /// slice(start, stop, step); each None or an integer.
  static Item slice(Item start, Item stop, Item step);
  static Item alternative(std::uint32_t index, Item value);
  /// A Cap'n Proto struct, as its canonical bytes (capnp::canonicalize); empty for a null one.
  static Item structure(std::string canonical) {
    return Item(Kind::structure, std::move(canonical));
  }
  static Item ref(Ref r);
  /// An object of class `cls` ("builtins.KeyError", "multiprocessing.managers.Token"), as
  /// Python's pickle makes one: `cls(*args)` (or `cls.__new__(cls, *args)`), then its state set
  /// from `state` (None: no state). Args None: the class itself (a proxy type named in a
  /// pickled proxy). Only the pickle dialect makes these, for the classes it reads
  /// (pickle.hpp); troupe's own wire has no form for them.
  static Item object(std::string cls, Item args, Item state);
  static Item object(std::string cls, Item args);  // no state
  /// An array.array of typecode `typecode` ("i", "d", "u", ...) holding `items` (ints, floats,
  /// or one-character strs, as the typecode says; the caller's duty):
  /// object("array.array", (typecode, [items])), which is how pickle writes one (protocol 2's
  /// form, which every Python reads). What the managed Array returns for a slice and its value,
  /// and what the pickle dialect reads of an array.array in either of Python's forms. write()
  /// writes it as the list of its items (troupe's wire has no array).
  static Item array(std::string typecode, std::vector<Item> items);

  Kind kind() const noexcept { return kind_; }
  bool is_none() const noexcept { return kind_ == Kind::none; }
  bool is_omitted() const noexcept { return kind_ == Kind::none && index_ == 1; }
  /// An array.array (Item::array).
  bool is_array() const noexcept;
  /// bool, int (either width) or float.
  bool is_number() const noexcept {
    return kind_ == Kind::boolean || kind_ == Kind::integer || kind_ == Kind::uinteger ||
           kind_ == Kind::floating;
  }
  /// bool or int (either width): what Python accepts as an index.
  bool is_integral() const noexcept {
    return kind_ == Kind::boolean || kind_ == Kind::integer || kind_ == Kind::uinteger;
  }
  /// sequence, list, tuple, set, frozenset, dict, slice: kinds whose elements() are the content.
  bool is_container() const noexcept { return kind_ >= Kind::sequence && kind_ <= Kind::slice; }

  bool as_bool() const;
  std::int64_t as_int() const;    // integer or boolean
  std::uint64_t as_uint() const;  // uinteger
  double as_float() const;        // floating
  /// text, bytes, bytearray, structure.
  const std::string& as_string() const;
  std::string& as_string();
  /// The elements of a container kind (a dict's are flat: k0, v0, k1, v1, ...; a slice's are
  /// start, stop, step), or the one element of an alternative.
  const std::vector<Item>& elements() const;
  std::vector<Item>& elements();
  std::uint32_t alternative_index() const;
  const Item& alternative_value() const;
  const Ref& as_ref() const;
  /// An object's class, args (a tuple) and state.
  const std::string& object_class() const;
  const Item& object_args() const;
  const Item& object_state() const;
  /// An array.array's typecode and items.
  const std::string& array_typecode() const;
  const std::vector<Item>& array_items() const;
  std::vector<Item>& array_items();

  /// Python's `==` (see the file comment). Never throws.
  friend bool operator==(const Item& a, const Item& b);

private:
  using Storage = std::variant<std::monostate, bool, std::int64_t, std::uint64_t, double,
                               std::string, std::vector<Item>, Ref>;
  template <class T>
  Item(Kind k, T&& v) : kind_(k), value_(std::forward<T>(v)) {}
  [[noreturn]] void wrong_kind(std::string_view wanted) const;

  Kind kind_ = Kind::none;
  std::uint32_t index_ = 0;  // an alternative's index
  Storage value_;
};

// ---- Python's operations ----------------------------------------------------------------------

/// Appends code point `cp` (at most U+10FFFF) to `out` as UTF-8.
void append_utf8(std::uint32_t cp, std::string& out);

/// Python's type name of `k` ("NoneType", "int", "str", "list", ...); a `sequence` is "list",
/// an alternative "alternative", a structure "struct", a ref "proxy".
std::string_view type_name(Kind k) noexcept;
inline std::string_view type_name(const Item& x) noexcept {
  return type_name(x.kind());
}

/// Whether `a` and `b` are the same tree: same kinds (integer and uinteger apart), same bits
/// (NaN identical to the same NaN, -0.0 not to 0.0), same order. What a round trip must keep.
bool identical(const Item& a, const Item& b) noexcept;

/// Python's `a is b or a == b` for values without identity (see the file comment): how
/// containers compare elements and keys.
bool same_or_equal(const Item& a, const Item& b);

/// Python's hash(): equal items hash alike; numbers exactly as CPython's hash() (so hash(1) ==
/// hash(1.0) == hash(True) == 1, hash(2**63) == 4); tuples (and `sequence`) by their elements;
/// str/bytes by content (CPython salts these per process, so no value is promised).
/// @throws TypeError "unhashable type: 'list'" for list, dict, set, bytearray, slice, and for a
/// tuple holding one of them.
std::int64_t hash(const Item& x);

/// Python's `a < b`: numbers across bool/int/float exactly (NaN compares false), str with str,
/// bytes with bytes/bytearray, lists and tuples lexicographically, sets as proper subsets.
/// @throws TypeError "'<' not supported between instances of 'str' and 'int'" for other mixes.
bool less(const Item& a, const Item& b);

/// Python's repr() ("[1, 'a', (2,)]", "{'k': b'v'}", "1e+16"). Text longer than `max_size`
/// is cut there and ends with "..." (for error messages).
std::string repr(const Item& x, std::size_t max_size = std::numeric_limits<std::size_t>::max());
/// Python's str(): a str's own text, repr() of anything else.
std::string str(const Item& x);

/// Keyword arguments, in the order given.
using Kwargs = std::vector<std::pair<std::string, Item>>;

// ---- to and from the wire ---------------------------------------------------------------------

/// The tree in `v`, read within `limits` (see the table above for kinds).
/// @throws ValueError naming the limit exceeded and the size seen, or what is malformed (a
/// struct node holding a list or a capability, a blob over the limits, an unknown union member,
/// Cap'n Proto's own read limits).
Item to_item(proto::Value::Reader v, const Limits& limits = {});

/// Writes `x` into `v` (the kinds Python distinguishes all become lists; see the table).
/// @throws ValueError if a structure's bytes are not a canonical Cap'n Proto message, or a list
/// is longer than Cap'n Proto can hold.
void write(const Item& x, proto::Value::Builder v);

/// Writes a ref node of a tree being written (write_refs): a host parks a new reference for the
/// receiver of each ref its object holds.
using RefWriter = std::function<void(const Ref&, proto::Ref::Builder)>;

/// write(), each ref node written by `refs` instead of as it is.
void write(const Item& x, proto::Value::Builder v, const RefWriter& refs);

/// Calls `f(const Item&)` on every ref node inside `x` (depth first, in order).
template <class F>
void for_each_ref(const Item& x, F&& f) {
  if (x.kind() == Kind::ref) {
    f(x);
  } else if (x.is_container() || x.kind() == Kind::alternative) {
    for (const Item& e : x.elements()) for_each_ref(e, f);
  }
}

/// Whether `x` holds a ref anywhere.
bool has_ref(const Item& x) noexcept;

}  // namespace troupe::multiprocessing::managers::detail
