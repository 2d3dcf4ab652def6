#include "troupe/multiprocessing/managers/detail/item.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <compare>
#include <cstring>
#include <type_traits>
#include <unordered_map>

#include <capnp/any.h>
#include <capnp/message.h>

#include "troupe/codec.hpp"
#include "troupe/detail/codec.hpp"
#include "troupe/errors.hpp"

namespace troupe::multiprocessing::managers::detail {

static_assert(std::is_nothrow_move_constructible_v<Item>);
static_assert(std::is_nothrow_move_assignable_v<Item>);

// ---- construction and access ------------------------------------------------------------------

Item Item::dict(std::vector<Item> flat) {
  if (flat.size() % 2 != 0)
    throw ValueError("a dict's flat pairs need an even number of elements, not " +
                     std::to_string(flat.size()));
  return Item(Kind::dict, std::move(flat));
}

Item Item::slice(Item start, Item stop, Item step) {
  std::vector<Item> e;
  e.reserve(3);
  e.push_back(std::move(start));
  e.push_back(std::move(stop));
  e.push_back(std::move(step));
  return Item(Kind::slice, std::move(e));
}

Item Item::alternative(std::uint32_t index, Item value) {
  std::vector<Item> e;
  e.push_back(std::move(value));
  Item x(Kind::alternative, std::move(e));
  x.index_ = index;
  return x;
}

Item Item::ref(Ref r) {
  return Item(Kind::ref, std::move(r));
}

Item Item::object(std::string cls, Item args, Item state) {
  std::vector<Item> e;
  e.reserve(3);
  e.push_back(Item::text(std::move(cls)));
  e.push_back(std::move(args));
  e.push_back(std::move(state));
  return Item(Kind::object, std::move(e));
}

Item Item::object(std::string cls, Item args) {
  return object(std::move(cls), std::move(args), Item());
}

namespace {
constexpr std::string_view kArrayClass = "array.array";
}

Item Item::array(std::string typecode, std::vector<Item> items) {
  std::vector<Item> args;
  args.reserve(2);
  args.push_back(Item::text(std::move(typecode)));
  args.push_back(Item::list(std::move(items)));
  return object(std::string(kArrayClass), Item::tuple(std::move(args)));
}

bool Item::is_array() const noexcept {
  if (kind_ != Kind::object) return false;
  const auto& e = std::get<std::vector<Item>>(value_);
  if (e[0].as_string() != kArrayClass || e[1].kind_ != Kind::tuple) return false;
  const auto& args = std::get<std::vector<Item>>(e[1].value_);
  return args.size() == 2 && args[0].kind_ == Kind::text && args[1].kind_ == Kind::list;
}

const std::string& Item::array_typecode() const {
  if (!is_array()) wrong_kind("array.array");
  return object_args().elements()[0].as_string();
}

const std::vector<Item>& Item::array_items() const {
  if (!is_array()) wrong_kind("array.array");
  return object_args().elements()[1].elements();
}

std::vector<Item>& Item::array_items() {
  if (!is_array()) wrong_kind("array.array");
  return std::get<std::vector<Item>>(std::get<std::vector<Item>>(value_)[1].value_)[1].elements();
}

void Item::wrong_kind(std::string_view wanted) const {
  throw TypeError("expected " + std::string(wanted) + ", got '" + std::string(type_name(*this)) +
                  "'");
}

bool Item::as_bool() const {
  if (kind_ != Kind::boolean) wrong_kind("bool");
  return std::get<bool>(value_);
}

std::int64_t Item::as_int() const {
  if (kind_ == Kind::boolean) return std::get<bool>(value_) ? 1 : 0;
  if (kind_ != Kind::integer) wrong_kind("int");
  return std::get<std::int64_t>(value_);
}

std::uint64_t Item::as_uint() const {
  if (kind_ != Kind::uinteger) wrong_kind("int (uint64)");
  return std::get<std::uint64_t>(value_);
}

double Item::as_float() const {
  if (kind_ != Kind::floating) wrong_kind("float");
  return std::get<double>(value_);
}

const std::string& Item::as_string() const {
  if (!std::holds_alternative<std::string>(value_)) wrong_kind("str, bytes or struct");
  return std::get<std::string>(value_);
}

std::string& Item::as_string() {
  if (!std::holds_alternative<std::string>(value_)) wrong_kind("str, bytes or struct");
  return std::get<std::string>(value_);
}

const std::vector<Item>& Item::elements() const {
  if (!std::holds_alternative<std::vector<Item>>(value_)) wrong_kind("a container");
  return std::get<std::vector<Item>>(value_);
}

std::vector<Item>& Item::elements() {
  if (!std::holds_alternative<std::vector<Item>>(value_)) wrong_kind("a container");
  return std::get<std::vector<Item>>(value_);
}

std::uint32_t Item::alternative_index() const {
  if (kind_ != Kind::alternative) wrong_kind("alternative");
  return index_;
}

const Item& Item::alternative_value() const {
  if (kind_ != Kind::alternative) wrong_kind("alternative");
  return std::get<std::vector<Item>>(value_).front();
}

const Ref& Item::as_ref() const {
  if (kind_ != Kind::ref) wrong_kind("proxy");
  return std::get<Ref>(value_);
}

const std::string& Item::object_class() const {
  if (kind_ != Kind::object) wrong_kind("object");
  return std::get<std::vector<Item>>(value_)[0].as_string();
}

const Item& Item::object_args() const {
  if (kind_ != Kind::object) wrong_kind("object");
  return std::get<std::vector<Item>>(value_)[1];
}

const Item& Item::object_state() const {
  if (kind_ != Kind::object) wrong_kind("object");
  return std::get<std::vector<Item>>(value_)[2];
}

void append_utf8(std::uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string_view type_name(Kind k) noexcept {
  switch (k) {
    case Kind::none: return "NoneType";
    case Kind::boolean: return "bool";
    case Kind::integer:
    case Kind::uinteger: return "int";
    case Kind::floating: return "float";
    case Kind::text: return "str";
    case Kind::bytes: return "bytes";
    case Kind::bytearray: return "bytearray";
    case Kind::sequence:
    case Kind::list: return "list";
    case Kind::tuple: return "tuple";
    case Kind::dict: return "dict";
    case Kind::set: return "set";
    case Kind::frozenset: return "frozenset";
    case Kind::slice: return "slice";
    case Kind::alternative: return "alternative";
    case Kind::structure: return "struct";
    case Kind::ref: return "proxy";
    case Kind::object: return "object";
  }
  return "unknown";
}

namespace {

// ---- numbers ----------------------------------------------------------------------------------

// A number as Python sees it: an integer of either width, or a float.
struct Num {
  enum { i64, u64, f64 } kind;
  std::int64_t i = 0;
  std::uint64_t u = 0;
  double d = 0;
};

Num num(const Item& x) {
  switch (x.kind()) {
    case Kind::boolean: return {Num::i64, x.as_bool() ? 1 : 0};
    case Kind::integer: return {Num::i64, x.as_int()};
    case Kind::uinteger: return {Num::u64, 0, x.as_uint()};
    default: return {Num::f64, 0, 0, x.as_float()};
  }
}

std::partial_ordering cmp_int_uint(std::int64_t i, std::uint64_t u) {
  if (i < 0) return std::partial_ordering::less;
  return static_cast<std::uint64_t>(i) <=> u;
}

// An integer against a double, exactly (Python compares int and float without rounding).
template <class I>
std::partial_ordering cmp_int_float(I i, double d) {
  if (std::isnan(d)) return std::partial_ordering::unordered;
  constexpr double lo = std::is_signed_v<I> ? -9223372036854775808.0 : 0.0;
  constexpr double hi = std::is_signed_v<I> ? 9223372036854775808.0 : 18446744073709551616.0;
  if (d >= hi) return std::partial_ordering::less;
  if (d < lo) return std::partial_ordering::greater;
  const double t = std::trunc(d);  // in [lo, hi): exact in I
  const I ti = static_cast<I>(t);
  if (i != ti) return i <=> ti;
  const double frac = d - t;
  if (frac > 0) return std::partial_ordering::less;
  if (frac < 0) return std::partial_ordering::greater;
  return std::partial_ordering::equivalent;
}

std::partial_ordering flip(std::partial_ordering o) {
  if (o == std::partial_ordering::less) return std::partial_ordering::greater;
  if (o == std::partial_ordering::greater) return std::partial_ordering::less;
  return o;
}

std::partial_ordering cmp_num(const Item& a, const Item& b) {
  const Num x = num(a), y = num(b);
  switch (x.kind) {
    case Num::i64:
      if (y.kind == Num::i64) return x.i <=> y.i;
      if (y.kind == Num::u64) return cmp_int_uint(x.i, y.u);
      return cmp_int_float(x.i, y.d);
    case Num::u64:
      if (y.kind == Num::i64) return flip(cmp_int_uint(y.i, x.u));
      if (y.kind == Num::u64) return x.u <=> y.u;
      return cmp_int_float(x.u, y.d);
    case Num::f64:
      if (y.kind == Num::i64) return flip(cmp_int_float(y.i, x.d));
      if (y.kind == Num::u64) return flip(cmp_int_float(y.u, x.d));
      return x.d <=> y.d;
  }
  return std::partial_ordering::unordered;
}

// Python's numeric hash (the Python docs, "Hashing of numeric types"): the value modulo the
// Mersenne prime 2**61 - 1, with the sign kept; -1 becomes -2.
constexpr std::uint64_t kModulus = (std::uint64_t{1} << 61) - 1;
constexpr std::int64_t kHashInf = 314159;

std::int64_t fix_minus_one(std::int64_t h) {
  return h == -1 ? -2 : h;
}

std::int64_t hash_uint(std::uint64_t u) {
  return static_cast<std::int64_t>(u % kModulus);
}

std::int64_t hash_int(std::int64_t i) {
  if (i >= 0) return hash_uint(static_cast<std::uint64_t>(i));
  const std::uint64_t mag = static_cast<std::uint64_t>(-(i + 1)) + 1;
  return fix_minus_one(-static_cast<std::int64_t>(mag % kModulus));
}

// 2**k modulo the prime is a rotation within 61 bits (2**61 = 1 mod P).
std::uint64_t times_pow2(std::uint64_t x, unsigned k) {
  k %= 61;
  if (k == 0) return x;
  return ((x << k) & kModulus) | (x >> (61 - k));
}

std::int64_t hash_float(double d) {
  if (std::isnan(d)) return 0;  // CPython before 3.10; 3.10+ uses the object's identity
  if (std::isinf(d)) return d > 0 ? kHashInf : -kHashInf;
  int e = 0;
  const double m = std::frexp(std::fabs(d), &e);                    // |d| = m * 2**e, m in [0.5, 1)
  const auto mant = static_cast<std::uint64_t>(std::ldexp(m, 53));  // exact: 53 bits
  const int exp = e - 53;                                           // |d| = mant * 2**exp
  const unsigned k = static_cast<unsigned>(((exp % 61) + 61) % 61);
  std::uint64_t h = times_pow2(mant % kModulus, k);
  if (h >= kModulus) h -= kModulus;
  const auto s = static_cast<std::int64_t>(h);
  return fix_minus_one(d < 0 ? -s : s);
}

std::int64_t hash_num(const Item& x) {
  const Num n = num(x);
  switch (n.kind) {
    case Num::i64: return hash_int(n.i);
    case Num::u64: return hash_uint(n.u);
    case Num::f64: return hash_float(n.d);
  }
  return 0;
}

std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 14695981039346656037ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// ---- containers -------------------------------------------------------------------------------

bool is_seq_like(Kind k) {
  return k == Kind::sequence || k == Kind::list || k == Kind::tuple;
}

bool is_set_like(Kind k) {
  return k == Kind::set || k == Kind::frozenset;
}

bool is_bytes_like(Kind k) {
  return k == Kind::bytes || k == Kind::bytearray;
}

// Whether two sequence kinds compare as sequences (Python: list with list, tuple with tuple; the
// wire's `sequence` with either).
bool seq_comparable(Kind a, Kind b) {
  if (!is_seq_like(a) || !is_seq_like(b)) return false;
  return a == b || a == Kind::sequence || b == Kind::sequence;
}

// The position of `key` among `v`'s elements at `stride` (1: a set, 2: a dict's keys), or npos.
constexpr std::size_t npos = static_cast<std::size_t>(-1);

std::size_t find_linear(const std::vector<Item>& v, std::size_t stride, const Item& key) {
  for (std::size_t i = 0; i < v.size(); i += stride)
    if (same_or_equal(v[i], key)) return i;
  return npos;
}

// Whether every element (stride 1) or key (stride 2) of `a` is in `b`, and for dicts with equal
// values. Hash-indexed above a few elements; unhashable contents (a broken set) fall back to a
// linear search.
bool contained(const std::vector<Item>& a, const std::vector<Item>& b, std::size_t stride) {
  const bool values = stride == 2;
  auto check = [&](std::size_t j, std::size_t i) {
    return j != npos && (!values || same_or_equal(a[i + 1], b[j + 1]));
  };
  if (b.size() / stride > 8) {
    try {
      std::unordered_multimap<std::int64_t, std::size_t> index;
      index.reserve(b.size() / stride);
      for (std::size_t j = 0; j < b.size(); j += stride) index.emplace(hash(b[j]), j);
      for (std::size_t i = 0; i < a.size(); i += stride) {
        auto [lo, hi] = index.equal_range(hash(a[i]));
        std::size_t found = npos;
        for (auto it = lo; it != hi && found == npos; ++it)
          if (same_or_equal(b[it->second], a[i])) found = it->second;
        if (!check(found, i)) return false;
      }
      return true;
    } catch (const TypeError&) {
      // fall through to the linear search
    }
  }
  for (std::size_t i = 0; i < a.size(); i += stride)
    if (!check(find_linear(b, stride, a[i]), i)) return false;
  return true;
}

bool elements_equal(const std::vector<Item>& a, const std::vector<Item>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!same_or_equal(a[i], b[i])) return false;
  return true;
}

// CPython's tuple hash (3.8+): an xxHash-style combination of the elements' hashes.
std::int64_t hash_tuple(const std::vector<Item>& v) {
  constexpr std::uint64_t p1 = 11400714785074694791ull;
  constexpr std::uint64_t p2 = 14029467366897019727ull;
  constexpr std::uint64_t p5 = 2870177450012600261ull;
  std::uint64_t acc = p5;
  for (const Item& e : v) {
    const auto lane = static_cast<std::uint64_t>(hash(e));
    acc += lane * p2;
    acc = std::rotl(acc, 31);
    acc *= p1;
  }
  acc += v.size() ^ (p5 ^ 3527539ull);
  if (acc == static_cast<std::uint64_t>(-1)) return 1546275796;
  return static_cast<std::int64_t>(acc);
}

std::uint64_t mix(std::uint64_t h) {  // splitmix64's finaliser
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

[[noreturn]] void unhashable(const Item& x) {
  throw TypeError("unhashable type: '" + std::string(type_name(x)) + "'");
}

[[noreturn]] void not_supported(const Item& a, const Item& b) {
  throw TypeError("'<' not supported between instances of '" + std::string(type_name(a)) +
                  "' and '" + std::string(type_name(b)) + "'");
}

bool seq_less(const std::vector<Item>& a, const std::vector<Item>& b) {
  const std::size_t n = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i)
    if (!same_or_equal(a[i], b[i])) return less(a[i], b[i]);
  return a.size() < b.size();
}

}  // namespace

// ---- Python's operations ----------------------------------------------------------------------

bool operator==(const Item& a, const Item& b) {
  if (a.is_number() && b.is_number()) return cmp_num(a, b) == 0;
  const Kind ka = a.kind(), kb = b.kind();
  if (is_seq_like(ka) || is_seq_like(kb))
    return seq_comparable(ka, kb) && elements_equal(a.elements(), b.elements());
  if (is_bytes_like(ka) && is_bytes_like(kb)) return a.as_string() == b.as_string();
  if (is_set_like(ka) && is_set_like(kb))
    return a.elements().size() == b.elements().size() && contained(a.elements(), b.elements(), 1);
  if (ka != kb) return false;
  switch (ka) {
    case Kind::none: return true;
    case Kind::text:
    case Kind::structure: return a.as_string() == b.as_string();
    case Kind::dict:
      return a.elements().size() == b.elements().size() && contained(a.elements(), b.elements(), 2);
    case Kind::slice: return elements_equal(a.elements(), b.elements());
    case Kind::alternative:
      return a.alternative_index() == b.alternative_index() &&
             same_or_equal(a.alternative_value(), b.alternative_value());
    case Kind::ref:
      return a.as_ref().id == b.as_ref().id && a.as_ref().address == b.as_ref().address;
    case Kind::object:
      // Python compares arrays by their values, whatever their typecodes.
      if (a.is_array() && b.is_array()) return elements_equal(a.array_items(), b.array_items());
      return elements_equal(a.elements(), b.elements());
    default: return false;
  }
}

bool identical(const Item& a, const Item& b) noexcept {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::none: return true;
    case Kind::boolean: return a.as_bool() == b.as_bool();
    case Kind::integer: return a.as_int() == b.as_int();
    case Kind::uinteger: return a.as_uint() == b.as_uint();
    case Kind::floating:
      return std::bit_cast<std::uint64_t>(a.as_float()) ==
             std::bit_cast<std::uint64_t>(b.as_float());
    case Kind::text:
    case Kind::bytes:
    case Kind::bytearray:
    case Kind::structure: return a.as_string() == b.as_string();
    case Kind::alternative:
      if (a.alternative_index() != b.alternative_index()) return false;
      [[fallthrough]];
    case Kind::sequence:
    case Kind::list:
    case Kind::tuple:
    case Kind::dict:
    case Kind::set:
    case Kind::frozenset:
    case Kind::slice:
    case Kind::object: {
      const auto &x = a.elements(), &y = b.elements();
      if (x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i)
        if (!identical(x[i], y[i])) return false;
      return true;
    }
    case Kind::ref: {
      const Ref &x = a.as_ref(), &y = b.as_ref();
      return x.type_id == y.type_id && x.address == y.address && x.id == y.id &&
             x.fingerprint == y.fingerprint && x.ticket == y.ticket;
    }
  }
  return false;
}

bool same_or_equal(const Item& a, const Item& b) {
  if (a.kind() == Kind::floating && b.kind() == Kind::floating &&
      std::bit_cast<std::uint64_t>(a.as_float()) == std::bit_cast<std::uint64_t>(b.as_float()))
    return true;  // the same NaN
  return a == b;
}

std::int64_t hash(const Item& x) {
  switch (x.kind()) {
    case Kind::none: return 0x2f8a4e1d;  // a constant, as CPython 3.12's
    case Kind::boolean:
    case Kind::integer:
    case Kind::uinteger:
    case Kind::floating: return hash_num(x);
    case Kind::text: return fix_minus_one(static_cast<std::int64_t>(fnv1a(x.as_string())));
    case Kind::bytes:
      return fix_minus_one(static_cast<std::int64_t>(fnv1a(x.as_string(), 0x6279746573ull)));
    case Kind::structure:
      return fix_minus_one(static_cast<std::int64_t>(fnv1a(x.as_string(), 0x737472756374ull)));
    case Kind::sequence:
    case Kind::tuple: return hash_tuple(x.elements());
    case Kind::frozenset: {
      // Order-independent: a sum of mixed element hashes, then the size.
      std::uint64_t acc = 0;
      for (const Item& e : x.elements()) acc += mix(static_cast<std::uint64_t>(hash(e)));
      acc = mix(acc ^ (x.elements().size() * 0x9e3779b97f4a7c15ull));
      return fix_minus_one(static_cast<std::int64_t>(acc));
    }
    case Kind::alternative: {
      std::vector<Item> pair;  // hashed as the tuple (index, value)
      pair.push_back(Item::integer(x.alternative_index()));
      pair.push_back(x.alternative_value());
      return hash_tuple(pair);
    }
    case Kind::ref: {
      const Ref& r = x.as_ref();
      return fix_minus_one(static_cast<std::int64_t>(mix(fnv1a(r.address) ^ mix(r.id))));
    }
    case Kind::bytearray:
    case Kind::list:
    case Kind::dict:
    case Kind::set:
    case Kind::slice:
    case Kind::object: unhashable(x);
  }
  unhashable(x);
}

bool less(const Item& a, const Item& b) {
  if (a.is_number() && b.is_number()) return cmp_num(a, b) < 0;
  const Kind ka = a.kind(), kb = b.kind();
  if (seq_comparable(ka, kb)) return seq_less(a.elements(), b.elements());
  if (ka == Kind::text && kb == Kind::text) return a.as_string() < b.as_string();
  if (is_bytes_like(ka) && is_bytes_like(kb)) return a.as_string() < b.as_string();
  if (is_set_like(ka) && is_set_like(kb))
    return a.elements().size() < b.elements().size() && contained(a.elements(), b.elements(), 1);
  if (ka == Kind::slice && kb == Kind::slice) return seq_less(a.elements(), b.elements());
  not_supported(a, b);
}

bool has_ref(const Item& x) noexcept {
  if (x.kind() == Kind::ref) return true;
  // An object's args and state too (a Namespace's value for a Python client holds its proxies).
  if (x.is_container() || x.kind() == Kind::alternative || x.kind() == Kind::object) {
    for (const Item& e : x.elements())
      if (has_ref(e)) return true;
  }
  return false;
}

// ---- repr -------------------------------------------------------------------------------------

namespace {

// Python's repr of a float: the shortest digits that round-trip, in fixed notation when the
// decimal exponent is in [-5, 16), else in exponent notation with at least two exponent digits.
void repr_float(double d, std::string& out) {
  if (std::isnan(d)) {
    out += "nan";
    return;
  }
  if (std::isinf(d)) {
    out += d < 0 ? "-inf" : "inf";
    return;
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string_view s(buf, static_cast<std::size_t>(end - buf));
  if (s.front() == '-') {
    out += '-';
    s.remove_prefix(1);
  }
  const std::size_t e_at = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e_at))
    if (c != '.') digits += c;
  int exp = 0;
  std::string_view es = s.substr(e_at + 1);
  if (es.front() == '+') es.remove_prefix(1);
  std::from_chars(es.data(), es.data() + es.size(), exp);
  const int n = static_cast<int>(digits.size());
  if (exp < -4 || exp >= 16) {
    out += digits[0];
    if (n > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += 'e';
    out += exp < 0 ? '-' : '+';
    const int a = exp < 0 ? -exp : exp;
    if (a < 10) out += '0';
    out += std::to_string(a);
  } else if (exp >= 0) {
    if (n <= exp + 1) {
      out += digits;
      out.append(static_cast<std::size_t>(exp + 1 - n), '0');
      out += ".0";
    } else {
      out.append(digits, 0, static_cast<std::size_t>(exp + 1));
      out += '.';
      out.append(digits, static_cast<std::size_t>(exp + 1));
    }
  } else {
    out += "0.";
    out.append(static_cast<std::size_t>(-exp - 1), '0');
    out += digits;
  }
}

void hex_escape(std::string& out, char kind, std::uint32_t cp, int width) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '\\';
  out += kind;
  for (int i = width - 1; i >= 0; --i) out += hex[(cp >> (4 * i)) & 0xf];
}

// Whether Python's str.isprintable() holds for `cp` (approximately: the other, control, format,
// private-use, surrogate and non-space separator code points of Unicode's common blocks, and the
// noncharacters; code points Unicode has not assigned are taken as printable).
bool printable(std::uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) return false;
  if (cp < 0x600) return true;
  struct Range {
    std::uint32_t lo, hi;
  };
  static constexpr Range kNot[] = {
      {0x600, 0x605},      {0x61c, 0x61c},     {0x6dd, 0x6dd},     {0x70f, 0x70f},
      {0x8e2, 0x8e2},      {0x1680, 0x1680},   {0x180e, 0x180e},   {0x2000, 0x200f},
      {0x2028, 0x202f},    {0x205f, 0x206f},   {0x3000, 0x3000},   {0xd800, 0xf8ff},
      {0xfdd0, 0xfdef},    {0xfeff, 0xfeff},   {0xfff9, 0xfffb},   {0x110bd, 0x110bd},
      {0x1bca0, 0x1bca3},  {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f},
      {0xf0000, 0x10ffff},
  };
  for (const Range& r : kNot)
    if (cp >= r.lo && cp <= r.hi) return false;
  return (cp & 0xfffe) != 0xfffe;
}

// One code point from UTF-8 at `s[i]`, advancing `i`; an invalid byte gives 0xdc00 + byte (how
// Python's surrogateescape shows undecodable bytes).
std::uint32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  auto cont = [&](std::size_t k) {
    return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
  };
  auto at = [&](std::size_t k) { return static_cast<std::uint32_t>(s[i + k]) & 0x3f; };
  std::uint32_t cp = 0;
  std::size_t len = 0;
  if (b0 < 0x80) {
    cp = b0;
    len = 1;
  } else if (b0 >= 0xc2 && b0 < 0xe0 && cont(1)) {
    cp = ((b0 & 0x1fu) << 6) | at(1);
    len = 2;
  } else if (b0 >= 0xe0 && b0 < 0xf0 && cont(1) && cont(2)) {
    cp = ((b0 & 0x0fu) << 12) | (at(1) << 6) | at(2);
    len = 3;
    if (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000)) len = 0;
  } else if (b0 >= 0xf0 && b0 < 0xf5 && cont(1) && cont(2) && cont(3)) {
    cp = ((b0 & 0x07u) << 18) | (at(1) << 12) | (at(2) << 6) | at(3);
    len = 4;
    if (cp < 0x10000 || cp > 0x10ffff) len = 0;
  }
  if (len == 0) {
    ++i;
    return 0xdc00 + b0;
  }
  i += len;
  return cp;
}

void repr_text(std::string_view s, std::string& out) {
  const bool dq = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos;
  const char q = dq ? '"' : '\'';
  out += q;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t start = i;
    const std::uint32_t cp = next_code_point(s, i);
    if (cp == static_cast<std::uint32_t>(q) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (printable(cp)) {
      out.append(s.substr(start, i - start));
    } else if (cp < 0x100) {
      hex_escape(out, 'x', cp, 2);
    } else if (cp < 0x10000) {
      hex_escape(out, 'u', cp, 4);
    } else {
      hex_escape(out, 'U', cp, 8);
    }
  }
  out += q;
}

void repr_bytes(std::string_view s, std::string& out) {
  const bool dq = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos;
  const char q = dq ? '"' : '\'';
  out += 'b';
  out += q;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      hex_escape(out, 'x', c, 2);
    } else {
      out += ch;
    }
  }
  out += q;
}

struct Repr {
  std::size_t max;
  std::string out;

  bool full() const { return out.size() > max; }

  void elements(const std::vector<Item>& v, std::string_view sep = ", ") {
    for (std::size_t i = 0; i < v.size() && !full(); ++i) {
      if (i) out += sep;
      put(v[i]);
    }
  }

  void put(const Item& x) {
    if (full()) return;
    switch (x.kind()) {
      case Kind::none: out += "None"; break;
      case Kind::boolean: out += x.as_bool() ? "True" : "False"; break;
      case Kind::integer: out += std::to_string(x.as_int()); break;
      case Kind::uinteger: out += std::to_string(x.as_uint()); break;
      case Kind::floating: repr_float(x.as_float(), out); break;
      case Kind::text: repr_text(x.as_string(), out); break;
      case Kind::bytes: repr_bytes(x.as_string(), out); break;
      case Kind::bytearray:
        out += "bytearray(";
        repr_bytes(x.as_string(), out);
        out += ')';
        break;
      case Kind::sequence:
      case Kind::list:
        out += '[';
        elements(x.elements());
        out += ']';
        break;
      case Kind::tuple:
        out += '(';
        elements(x.elements());
        if (x.elements().size() == 1) out += ',';
        out += ')';
        break;
      case Kind::dict: {
        out += '{';
        const auto& v = x.elements();
        for (std::size_t i = 0; i + 1 < v.size() && !full(); i += 2) {
          if (i) out += ", ";
          put(v[i]);
          out += ": ";
          put(v[i + 1]);
        }
        out += '}';
        break;
      }
      case Kind::set:
      case Kind::frozenset: {
        const bool frozen = x.kind() == Kind::frozenset;
        if (x.elements().empty()) {
          out += frozen ? "frozenset()" : "set()";
          break;
        }
        if (frozen) out += "frozenset(";
        out += '{';
        elements(x.elements());
        out += '}';
        if (frozen) out += ')';
        break;
      }
      case Kind::slice:
        out += "slice(";
        elements(x.elements());
        out += ')';
        break;
      case Kind::alternative:
        out += "alternative(" + std::to_string(x.alternative_index()) + ", ";
        put(x.alternative_value());
        out += ')';
        break;
      case Kind::structure:
        out += "<struct of " + std::to_string(x.as_string().size()) + " bytes>";
        break;
      case Kind::object: {
        if (x.is_array()) {  // array('i', [1, 2]), array('u', 'ab'), array('d')
          const std::string& code = x.array_typecode();
          const auto& items = x.array_items();
          out += "array('" + code + "'";
          if (!items.empty()) {
            out += ", ";
            if (code == "u" || code == "w") {
              std::string s;
              for (const Item& c : items) s += c.kind() == Kind::text ? c.as_string() : "?";
              put(Item::text(std::move(s)));
            } else {
              out += '[';
              elements(items);
              out += ']';
            }
          }
          out += ')';
          break;
        }
        // Python's repr of an exception: the class's own name and its args.
        const std::string& cls = x.object_class();
        if (x.object_args().is_none()) {  // the class itself (pickle.hpp: a proxy type)
          out += "<class '" + cls + "'>";
          break;
        }
        out += cls.substr(cls.rfind('.') + 1);
        out += '(';
        if (x.object_args().is_container()) elements(x.object_args().elements());
        out += ')';
        break;
      }
      case Kind::ref: {
        const Ref& r = x.as_ref();
        out += "<proxy of ";
        repr_text(r.type_id, out);
        out += " #" + std::to_string(r.id) + " at ";
        repr_text(r.address, out);
        out += '>';
        break;
      }
    }
  }
};

}  // namespace

std::string repr(const Item& x, std::size_t max_size) {
  Repr r{max_size, {}};
  r.put(x);
  if (r.out.size() > max_size) {
    r.out.resize(max_size);
    r.out += "...";
  }
  return std::move(r.out);
}

std::string str(const Item& x) {
  if (x.kind() == Kind::text) return x.as_string();
  return repr(x);
}

// ---- to and from the wire ---------------------------------------------------------------------

namespace {

using Which = proto::Value::Which;

struct Reader {
  const Limits& limits;
  std::size_t nodes = 1;  // the root
  std::size_t bytes = 0;

  void add_bytes(std::size_t n) {
    if (n > limits.max_bytes || bytes + n > limits.max_bytes)
      throw ValueError("value too large: " + std::to_string(bytes + n) +
                       " bytes of text, data and structs is over Limits::max_bytes = " +
                       std::to_string(limits.max_bytes));
    bytes += n;
  }

  void add_nodes(std::size_t n, std::size_t depth) {
    if (depth > limits.max_depth)
      throw ValueError("value too deep: nesting " + std::to_string(depth) +
                       " is over Limits::max_depth = " + std::to_string(limits.max_depth));
    if (n > limits.max_nodes || nodes + n > limits.max_nodes)
      throw ValueError("value too large: " + std::to_string(nodes + n) +
                       " nodes is over Limits::max_nodes = " + std::to_string(limits.max_nodes));
    nodes += n;
  }

  Item read(proto::Value::Reader v, std::size_t depth) {
    switch (v.which()) {
      case Which::NONE: return Item::none();
      case Which::BOOL: return Item::boolean(v.getBool());
      case Which::INT: return Item::integer(v.getInt());
      case Which::UINT: return Item::uinteger(v.getUint());
      case Which::FLOAT: return Item::floating(v.getFloat());
      case Which::TEXT: {
        auto t = v.getText();
        add_bytes(t.size());
        return Item::text(std::string(t.begin(), t.size()));
      }
      case Which::DATA: {
        auto d = v.getData();
        add_bytes(d.size());
        return Item::bytes(std::string(reinterpret_cast<const char*>(d.begin()), d.size()));
      }
      case Which::LIST: {
        auto l = v.getList();
        add_nodes(l.size(), depth + 1);
        std::vector<Item> e;
        e.reserve(l.size());
        for (auto c : l) e.push_back(read(c, depth + 1));
        return Item::sequence(std::move(e));
      }
      case Which::ALTERNATIVE: {
        auto a = v.getAlternative();
        add_nodes(1, depth + 1);
        return Item::alternative(a.getIndex(), read(a.getValue(), depth + 1));
      }
      case Which::STRUCT: {
        auto p = v.getStruct();
        if (p.isNull()) return Item::structure({});
        if (!p.isStruct())
          throw ValueError(std::string("malformed message: a struct node holds ") +
                           (p.isList() ? "a list" : "a capability") + ", not a struct");
        kj::Array<capnp::word> words = p.getAs<capnp::AnyStruct>().canonicalize();
        add_bytes(words.size() * sizeof(capnp::word));
        return Item::structure(std::string(reinterpret_cast<const char*>(words.begin()),
                                           words.size() * sizeof(capnp::word)));
      }
      case Which::REF: {
        auto r = v.getRef();
        auto t = r.getTypeid();
        auto a = r.getAddress();
        add_bytes(t.size() + a.size());
        return Item::ref(Ref{std::string(t.begin(), t.size()), std::string(a.begin(), a.size()),
                             r.getId(), r.getFingerprint(), r.getTicket()});
      }
    }
    throw ValueError("malformed message: unknown Value kind " +
                     std::to_string(static_cast<unsigned>(v.which())));
  }
};

void write_elements(const std::vector<Item>& e, proto::Value::Builder v, std::string_view what,
                    const RefWriter* refs) {
  auto l = v.initList(troupe::codec_detail::list_size(e.size(), 1, what));
  for (std::size_t i = 0; i < e.size(); ++i) {
    if (refs)
      write(e[i], l[static_cast<unsigned>(i)], *refs);
    else
      write(e[i], l[static_cast<unsigned>(i)]);
  }
}

void write_struct(const std::string& canonical, proto::Value::Builder v) {
  if (canonical.empty()) {
    v.initStruct();
    return;
  }
  if (canonical.size() % sizeof(capnp::word) != 0)
    throw ValueError("a struct's canonical bytes must be whole 8-byte words, not " +
                     std::to_string(canonical.size()) + " bytes");
  auto words = kj::heapArray<capnp::word>(canonical.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), canonical.data(), canonical.size());
  kj::ArrayPtr<const capnp::word> segment = words;
  capnp::ReaderOptions options;
  options.traversalLimitInWords = words.size() + 16;
  capnp::SegmentArrayMessageReader reader(kj::arrayPtr(&segment, 1), options);
  v.initStruct().set(reader.getRoot<capnp::AnyPointer>());
}

}  // namespace

Item to_item(proto::Value::Reader v, const Limits& limits) {
  return troupe::codec_detail::guarded([&] {
    Reader r{limits};
    return r.read(v, 0);
  });
}

namespace {
void write_item(const Item& x, proto::Value::Builder v, const RefWriter* refs);
}  // namespace

void write(const Item& x, proto::Value::Builder v) {
  write_item(x, v, nullptr);
}

void write(const Item& x, proto::Value::Builder v, const RefWriter& refs) {
  write_item(x, v, &refs);
}

namespace {

void write_item(const Item& x, proto::Value::Builder v, const RefWriter* refs) {
  switch (x.kind()) {
    case Kind::none: v.setNone(); return;
    case Kind::boolean: v.setBool(x.as_bool()); return;
    case Kind::integer: v.setInt(x.as_int()); return;
    case Kind::uinteger: v.setUint(x.as_uint()); return;
    case Kind::floating: v.setFloat(x.as_float()); return;
    case Kind::text:
      troupe::codec_detail::put_blob(v, x.as_string().data(), x.as_string().size(), true, false);
      return;
    case Kind::bytes:
    case Kind::bytearray:
      troupe::codec_detail::put_blob(v, x.as_string().data(), x.as_string().size(), false, false);
      return;
    case Kind::sequence:
    case Kind::list:
    case Kind::tuple:
    case Kind::dict:
    case Kind::set:
    case Kind::frozenset:
    case Kind::slice: write_elements(x.elements(), v, type_name(x), refs); return;
    case Kind::alternative: {
      auto a = v.initAlternative();
      a.setIndex(x.alternative_index());
      write_item(x.alternative_value(), a.initValue(), refs);
      return;
    }
    case Kind::structure:
      troupe::codec_detail::encode_guarded([&] { write_struct(x.as_string(), v); });
      return;
    case Kind::object:
      if (x.is_array()) return write_elements(x.array_items(), v, "array", refs);
      throw ValueError("a Python object (" + x.object_class() +
                       ") has no form on troupe's own wire");
    case Kind::ref: {
      const Ref& r = x.as_ref();
      auto b = v.initRef();
      if (refs) return (*refs)(r, b);
      b.setTypeid(r.type_id);
      b.setAddress(r.address);
      b.setId(r.id);
      b.setFingerprint(r.fingerprint);
      b.setTicket(r.ticket);
      return;
    }
  }
}

}  // namespace

}  // namespace troupe::multiprocessing::managers::detail
