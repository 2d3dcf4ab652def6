#include "troupe/multiprocessing/managers/detail/containers.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <list>
#include <numeric>
#include <unordered_map>
#include <utility>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/not_exposed.hpp"
#include "troupe/multiprocessing/managers/detail/typecodes.hpp"

namespace troupe::multiprocessing::managers::detail {

namespace {

constexpr std::int64_t kMaxIndex = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kMinIndex = std::numeric_limits<std::int64_t>::min();

std::string py_quoted(std::string_view s) {
  return "'" + std::string(s) + "'";
}

// ---- arguments --------------------------------------------------------------------------------

// Python's messages for a wrong number of arguments, by the C calling convention of the method.
void no_kwargs(std::string_view qualname, const Kwargs& kw) {
  if (!kw.empty()) throw TypeError(std::string(qualname) + "() takes no keyword arguments");
}

void no_args(std::string_view qualname, const std::vector<Item>& a, const Kwargs& kw) {
  no_kwargs(qualname, kw);
  if (!a.empty())
    throw TypeError(std::string(qualname) + "() takes no arguments (" + std::to_string(a.size()) +
                    " given)");
}

void one_arg(std::string_view qualname, const std::vector<Item>& a, const Kwargs& kw) {
  no_kwargs(qualname, kw);
  if (a.size() != 1)
    throw TypeError(std::string(qualname) + "() takes exactly one argument (" +
                    std::to_string(a.size()) + " given)");
}

void arg_range(std::string_view qualname, std::string_view name, const std::vector<Item>& a,
               const Kwargs& kw, std::size_t min, std::size_t max) {
  no_kwargs(qualname, kw);
  auto plural = [](std::size_t n) { return n == 1 ? " argument" : " arguments"; };
  if (min == max && a.size() != min)
    throw TypeError(std::string(name) + " expected " + std::to_string(min) + plural(min) +
                    ", got " + std::to_string(a.size()));
  if (a.size() < min)
    throw TypeError(std::string(name) + " expected at least " + std::to_string(min) + plural(min) +
                    ", got " + std::to_string(a.size()));
  if (a.size() > max)
    throw TypeError(std::string(name) + " expected at most " + std::to_string(max) + plural(max) +
                    ", got " + std::to_string(a.size()));
}

// An int argument as a C index (Py_ssize_t); `what` names the use for the TypeError.
std::int64_t as_index(const Item& x) {
  if (x.kind() == Kind::uinteger) {
    if (x.as_uint() > static_cast<std::uint64_t>(kMaxIndex))
      throw IndexError("cannot fit 'int' into an index-sized integer");
    return static_cast<std::int64_t>(x.as_uint());
  }
  if (!x.is_integral())
    throw TypeError(py_quoted(type_name(x)) + " object cannot be interpreted as an integer");
  return x.as_int();
}

// An int argument clamped to the C index range (slice bounds, list.index bounds).
std::int64_t clamped_index(const Item& x) {
  if (x.kind() == Kind::uinteger)
    return x.as_uint() > static_cast<std::uint64_t>(kMaxIndex)
               ? kMaxIndex
               : static_cast<std::int64_t>(x.as_uint());
  return x.as_int();
}

bool truthy(const Item& x) {
  switch (x.kind()) {
    case Kind::none: return false;
    case Kind::boolean: return x.as_bool();
    case Kind::integer: return x.as_int() != 0;
    case Kind::uinteger: return x.as_uint() != 0;
    case Kind::floating: return x.as_float() != 0;
    case Kind::text:
    case Kind::bytes:
    case Kind::bytearray: return !x.as_string().empty();
    case Kind::alternative:
    case Kind::structure:
    case Kind::ref: return true;
    default: return !x.elements().empty();
  }
}

// ---- slices -----------------------------------------------------------------------------------

bool is_slice(const Item& x) {
  if (x.kind() == Kind::slice) return true;
  if (x.kind() != Kind::sequence || x.elements().size() != 3) return false;
  return std::all_of(x.elements().begin(), x.elements().end(),
                     [](const Item& e) { return e.is_none() || e.is_integral(); });
}

struct Slice {
  std::int64_t start, stop, step;
  std::size_t length;  // how many indices it selects
  std::size_t at(std::size_t i) const {
    return static_cast<std::size_t>(start + static_cast<std::int64_t>(i) * step);
  }
};

// Python's PySlice_Unpack + PySlice_AdjustIndices for a sequence of `len` elements.
Slice slice_indices(const Item& s, std::size_t len) {
  const auto& e = s.elements();
  auto bound = [](const Item& x, std::int64_t dflt) -> std::int64_t {
    if (x.is_none()) return dflt;
    if (!x.is_integral())
      throw TypeError("slice indices must be integers or None or have an __index__ method");
    return clamped_index(x);
  };
  std::int64_t step = bound(e[2], 1);
  if (step == 0) throw ValueError("slice step cannot be zero");
  if (step < -kMaxIndex) step = -kMaxIndex;
  std::int64_t start = bound(e[0], step < 0 ? kMaxIndex : 0);
  std::int64_t stop = bound(e[1], step < 0 ? kMinIndex : kMaxIndex);
  const auto n = static_cast<std::int64_t>(len);
  auto adjust = [&](std::int64_t& i) {
    if (i < 0) {
      i += n;
      if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= n) {
      i = step < 0 ? n - 1 : n;
    }
  };
  adjust(start);
  adjust(stop);
  std::size_t length = 0;
  if (step < 0) {
    if (stop < start) length = static_cast<std::size_t>((start - stop - 1) / (-step) + 1);
  } else if (start < stop) {
    length = static_cast<std::size_t>((stop - start - 1) / step + 1);
  }
  return {start, stop, step, length};
}

// ---- iteration --------------------------------------------------------------------------------

thread_local const RefValues* tl_ref_values = nullptr;

// The elements Python's iter(x) gives, moved out of `x`: a container's elements, a dict's keys,
// a str's characters, a bytes' ints.
std::vector<Item> iterate(Item x) {
  if (x.kind() == Kind::ref)
    if (const Item* v = RefValues::find(x.as_ref())) return iterate(Item(*v));
  switch (x.kind()) {
    case Kind::sequence:
    case Kind::list:
    case Kind::tuple:
    case Kind::set:
    case Kind::frozenset: return std::move(x.elements());
    case Kind::object:
      if (!x.is_array()) throw TypeError("'object' object is not iterable");
      return std::move(x.array_items());
    case Kind::dict: {
      std::vector<Item> keys;
      auto& e = x.elements();
      keys.reserve(e.size() / 2);
      for (std::size_t i = 0; i < e.size(); i += 2) keys.push_back(std::move(e[i]));
      return keys;
    }
    case Kind::text: {
      std::vector<Item> chars;
      const std::string& s = x.as_string();
      for (std::size_t i = 0; i < s.size();) {
        std::size_t n = 1;
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0xf0)
          n = 4;
        else if (c >= 0xe0)
          n = 3;
        else if (c >= 0xc0)
          n = 2;
        n = std::min(n, s.size() - i);
        chars.push_back(Item::text(s.substr(i, n)));
        i += n;
      }
      return chars;
    }
    case Kind::bytes:
    case Kind::bytearray: {
      std::vector<Item> ints;
      ints.reserve(x.as_string().size());
      for (char c : x.as_string()) ints.push_back(Item::integer(static_cast<unsigned char>(c)));
      return ints;
    }
    default: throw TypeError(py_quoted(type_name(x)) + " object is not iterable");
  }
}

// Key/value pairs of a mapping argument (see the header): a dict, a `sequence` in Codec's flat
// map encoding, or any iterable of 2-element iterables. Returned flat: k0, v0, k1, v1, ...
std::vector<Item> mapping_pairs(Item x) {
  if (x.kind() == Kind::ref)
    if (const Item* v = RefValues::find(x.as_ref())) x = *v;
  if (x.kind() == Kind::dict) return std::move(x.elements());
  if (x.kind() == Kind::sequence) {
    if (x.elements().size() % 2 != 0)
      throw ValueError("a map's flat key/value list has " + std::to_string(x.elements().size()) +
                       " elements; an even number is required");
    return std::move(x.elements());
  }
  std::vector<Item> elements = iterate(std::move(x));
  std::vector<Item> flat;
  flat.reserve(elements.size() * 2);
  for (std::size_t i = 0; i < elements.size(); ++i) {
    std::vector<Item> kv;
    try {
      kv = iterate(std::move(elements[i]));
    } catch (const TypeError&) {
      throw TypeError("cannot convert dictionary update sequence element #" + std::to_string(i) +
                      " to a sequence");
    }
    if (kv.size() != 2)
      throw ValueError("dictionary update sequence element #" + std::to_string(i) + " has length " +
                       std::to_string(kv.size()) + "; 2 is required");
    flat.push_back(std::move(kv[0]));
    flat.push_back(std::move(kv[1]));
  }
  return flat;
}

// A key as stored: a list from the wire (`sequence`, a C++ pair, tuple or vector) becomes the
// tuple it hashes and compares as, so that it reads back as one (a Python client could not
// unpickle a dict with a list for a key).
Item stored_key(Item k) {
  if (k.kind() != Kind::sequence) return k;
  std::vector<Item> e = std::move(k.elements());
  for (Item& x : e) x = stored_key(std::move(x));
  return Item::tuple(std::move(e));
}

// ---- an insertion-ordered hash table (dict, set, Namespace) ----------------------------------

class Table {
public:
  struct Entry {
    Item key;
    Item value;
    std::int64_t hash;
    std::uint64_t rank;  // insertion rank: increasing along the order, never reused
  };
  using iterator = std::list<Entry>::iterator;
  using const_iterator = std::list<Entry>::const_iterator;

  Table() = default;
  // The index points into the list: a copy would point into the original. Moves keep nodes.
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;
  Table(Table&&) noexcept = default;
  Table& operator=(Table&&) noexcept = default;

  std::size_t size() const noexcept { return order_.size(); }
  bool empty() const noexcept { return order_.empty(); }
  iterator begin() noexcept { return order_.begin(); }
  iterator end() noexcept { return order_.end(); }
  const_iterator begin() const noexcept { return order_.begin(); }
  const_iterator end() const noexcept { return order_.end(); }

  /// @throws TypeError if `key` is unhashable.
  iterator find(const Item& key) { return find(key, hash(key)); }
  iterator find(const Item& key, std::int64_t h) {
    auto [lo, hi] = index_.equal_range(h);
    for (auto it = lo; it != hi; ++it)
      if (same_or_equal(it->second->key, key)) return it->second;
    return order_.end();
  }
  const_iterator find(const Item& key) const { return const_cast<Table*>(this)->find(key); }
  const_iterator find(const Item& key, std::int64_t h) const {
    return const_cast<Table*>(this)->find(key, h);
  }
  bool contains(const Item& key) const { return find(key) != end(); }

  /// Appends a key known to be absent.
  iterator append(Item key, Item value, std::int64_t h) {
    order_.push_back(Entry{std::move(key), std::move(value), h, next_rank_});
    auto it = std::prev(order_.end());
    try {
      index_.emplace(h, it);
    } catch (...) {
      order_.pop_back();
      throw;
    }
    ++next_rank_;
    return it;
  }

  /// Removes `it`, returning its entry.
  Entry erase(iterator it) {
    auto [lo, hi] = index_.equal_range(it->hash);
    for (auto i = lo; i != hi; ++i) {
      if (i->second == it) {
        index_.erase(i);
        break;
      }
    }
    Entry e = std::move(*it);
    order_.erase(it);
    ++erasures_;
    return e;
  }

  void clear(std::vector<Item>& removed) {
    for (Entry& e : order_) {
      removed.push_back(std::move(e.key));
      removed.push_back(std::move(e.value));
    }
    order_.clear();
    index_.clear();
    ++erasures_;
  }

  /// Counts erase() and clear(): an iterator into the table taken when this was n is still
  /// valid while it is n (a live dict iterator's cached position).
  std::uint64_t erasures() const noexcept { return erasures_; }

private:
  std::list<Entry> order_;
  std::unordered_multimap<std::int64_t, iterator> index_;
  std::uint64_t next_rank_ = 1;
  std::uint64_t erasures_ = 0;
};

std::string repr_to(const Item& x, std::size_t max) {
  return repr(x, max);
}

}  // namespace

// ---- Container --------------------------------------------------------------------------------

Container::~Container() = default;

Item Container::call(std::string_view method, std::vector<Item> args, Kwargs kwargs) {
  std::vector<Item> removed;
  Item result = call(method, std::move(args), std::move(kwargs), removed);
  drop_all(removed);
  return result;
}

Item Container::call(std::string_view method, std::vector<Item> args, Kwargs kwargs,
                     std::vector<Item>& removed) {
  Item result;
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> g(mu_);
    const auto& names = exposed();
    if (std::find(names.begin(), names.end(), method) == names.end()) {
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + py_quoted(n);
      throw NotExposed("method " + py_quoted(method) + " of " + py_quoted(type_id()) +
                       " object is not in exposed=(" + list + ")");
    }
    try {
      result = dispatch(method, args, kwargs, removed);
    } catch (...) {
      error = std::current_exception();  // what it removed before failing is still dropped
    }
  }
  if (error) {
    drop_all(removed);
    removed.clear();
    std::rethrow_exception(error);
  }
  return result;
}

std::unique_ptr<KeyIterator> Container::iter() {
  throw TypeError("a live iterator is made over a managed dict only, not a '" +
                  std::string(type_id()) + "' (its __iter__ returns a list)");
}

Item Container::getvalue() const {
  std::lock_guard<std::mutex> g(mu_);
  return value_locked();
}

Item Container::python_value() const {
  std::lock_guard<std::mutex> g(mu_);
  return python_value_locked();
}

std::string Container::repr(std::size_t max_size) const {
  std::lock_guard<std::mutex> g(mu_);
  std::string r = repr_locked(max_size);
  if (r.size() > max_size) {
    r.resize(max_size);
    r += "...";
  }
  return r;
}

void Container::hold(const Item& x) {
  RefHolder* h = options_.refs;
  if (!h || !has_ref(x)) return;
  std::vector<const Item*> done;
  try {
    for_each_ref(x, [&](const Item& r) {
      h->hold(r);
      done.push_back(&r);
    });
  } catch (...) {
    for (const Item* r : done) {
      try {
        h->drop(*r);
      } catch (...) {
      }
    }
    throw;
  }
}

void Container::hold_all(const std::vector<Item>& v) {
  if (!options_.refs || std::none_of(v.begin(), v.end(), [](const Item& x) { return has_ref(x); }))
    return;
  hold(Item::sequence(v));
}

void Container::hold_pair(const Item& a, const Item& b) {
  hold(a);
  try {
    hold(b);
  } catch (...) {
    drop(a);
    throw;
  }
}

void Container::drop(const Item& x) noexcept {
  RefHolder* h = options_.refs;
  if (!h) return;
  for_each_ref(x, [&](const Item& r) {
    try {
      h->drop(r);
    } catch (...) {
    }
  });
}

void Container::check_size(std::size_t n, std::string_view what) const {
  if (n > options_.max_elements)
    throw ValueError(std::string(what) + ": the result would hold " + std::to_string(n) +
                     " elements, over ContainerOptions::max_elements = " +
                     std::to_string(options_.max_elements));
}

namespace {

// Multiplies sizes without overflow; SIZE_MAX when it would.
std::size_t times(std::size_t a, std::size_t b) {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a)
    return std::numeric_limits<std::size_t>::max();
  return a * b;
}

// ---- list -------------------------------------------------------------------------------------

class List final : public Container {
public:
  List(std::vector<Item> args, Kwargs kwargs, const ContainerOptions& o) : Container(o) {
    arg_range("list", "list", args, kwargs, 0, 1);
    if (!args.empty()) {
      std::vector<Item> e = iterate(std::move(args[0]));
      check_size(e.size(), "list()");
      hold_all(e);
      items_ = std::move(e);
    }
  }
  ~List() override {
    for (const Item& x : items_) drop(x);
  }

  std::string_view type_id() const noexcept override { return "list"; }

  const std::vector<std::string>& exposed() const noexcept override {
    static const std::vector<std::string> names = {
        "__add__", "__contains__", "__delitem__",  "__getitem__", "__iadd__",    "__imul__",
        "__len__", "__mul__",      "__reversed__", "__rmul__",    "__setitem__", "append",
        "clear",   "copy",         "count",        "extend",      "index",       "insert",
        "pop",     "remove",       "reverse",      "sort"};
    return names;
  }

protected:
  Item value_locked() const override { return Item::list(items_); }
  std::string repr_locked(std::size_t max) const override {
    std::string out = "[";
    for (std::size_t i = 0; i < items_.size() && out.size() <= max; ++i) {
      if (i) out += ", ";
      out += repr_to(items_[i], max);
    }
    return out + "]";
  }

  Item dispatch(std::string_view m, std::vector<Item>& a, Kwargs& kw,
                std::vector<Item>& removed) override {
    const std::size_t n = items_.size();
    if (m == "__len__") {
      no_args("list.__len__", a, kw);
      return Item::integer(static_cast<std::int64_t>(n));
    }
    if (m == "__contains__") {
      one_arg("list.__contains__", a, kw);
      return Item::boolean(position(a[0], 0, n) != n);
    }
    if (m == "__getitem__") {
      one_arg("list.__getitem__", a, kw);
      if (is_slice(a[0])) {
        const Slice s = slice_indices(a[0], n);
        std::vector<Item> out;
        out.reserve(s.length);
        for (std::size_t i = 0; i < s.length; ++i) out.push_back(items_[s.at(i)]);
        return Item::list(std::move(out));
      }
      return items_[index(a[0], "list index out of range")];
    }
    if (m == "__setitem__") {
      arg_range("list.__setitem__", "", a, kw, 2, 2);
      if (is_slice(a[0])) return set_slice(a[0], std::move(a[1]), removed);
      const std::size_t i = index(a[0], "list assignment index out of range");
      hold(a[1]);
      removed.push_back(std::exchange(items_[i], std::move(a[1])));
      return {};
    }
    if (m == "__delitem__") {
      one_arg("list.__delitem__", a, kw);
      if (is_slice(a[0])) {
        const Slice s = slice_indices(a[0], n);
        std::vector<bool> gone(n, false);
        for (std::size_t i = 0; i < s.length; ++i) gone[s.at(i)] = true;
        compact(gone, removed);
        return {};
      }
      const std::size_t i = index(a[0], "list assignment index out of range");
      removed.push_back(std::move(items_[i]));
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
      return {};
    }
    if (m == "append") {
      one_arg("list.append", a, kw);
      check_size(n + 1, "list.append()");
      hold(a[0]);
      items_.push_back(std::move(a[0]));
      return {};
    }
    if (m == "extend" || m == "__iadd__") {
      one_arg(m == "extend" ? "list.extend" : "list.__iadd__", a, kw);
      std::vector<Item> e = iterate(std::move(a[0]));
      check_size(n + e.size(), "list.extend()");
      hold_all(e);
      items_.insert(items_.end(), std::make_move_iterator(e.begin()),
                    std::make_move_iterator(e.end()));
      return {};
    }
    if (m == "insert") {
      arg_range("list.insert", "insert", a, kw, 2, 2);
      std::int64_t i = as_index(a[0]);
      const auto len = static_cast<std::int64_t>(n);
      if (i < 0) i = std::max<std::int64_t>(i + len, 0);
      i = std::min(i, len);
      check_size(n + 1, "list.insert()");
      hold(a[1]);
      items_.insert(items_.begin() + i, std::move(a[1]));
      return {};
    }
    if (m == "pop") {
      arg_range("list.pop", "pop", a, kw, 0, 1);
      if (items_.empty()) throw IndexError("pop from empty list");
      std::int64_t i = a.empty() ? -1 : as_index(a[0]);
      if (i < 0) i += static_cast<std::int64_t>(n);
      if (i < 0 || i >= static_cast<std::int64_t>(n)) throw IndexError("pop index out of range");
      Item out = std::move(items_[static_cast<std::size_t>(i)]);
      items_.erase(items_.begin() + i);
      removed.push_back(out);
      return out;
    }
    if (m == "remove") {
      one_arg("list.remove", a, kw);
      const std::size_t i = position(a[0], 0, n);
      if (i == n) throw ValueError("list.remove(x): x not in list");
      removed.push_back(std::move(items_[i]));
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
      return {};
    }
    if (m == "index") {
      arg_range("list.index", "index", a, kw, 1, 3);
      auto bound = [&](std::size_t k, std::int64_t dflt) {
        if (a.size() <= k) return dflt;
        if (!a[k].is_integral())
          throw TypeError("slice indices must be integers or have an __index__ method");
        std::int64_t v = clamped_index(a[k]);
        if (v < 0) v = std::max<std::int64_t>(v + static_cast<std::int64_t>(n), 0);
        return std::min(v, static_cast<std::int64_t>(n));
      };
      const auto lo = static_cast<std::size_t>(bound(1, 0));
      const auto hi = static_cast<std::size_t>(bound(2, static_cast<std::int64_t>(n)));
      const std::size_t i = lo < hi ? position(a[0], lo, hi) : hi;
      if (i >= hi) throw ValueError(repr_to(a[0], 200) + " is not in list");
      return Item::integer(static_cast<std::int64_t>(i));
    }
    if (m == "count") {
      one_arg("list.count", a, kw);
      std::int64_t c = 0;
      for (const Item& x : items_) c += same_or_equal(x, a[0]) ? 1 : 0;
      return Item::integer(c);
    }
    if (m == "reverse") {
      no_args("list.reverse", a, kw);
      std::reverse(items_.begin(), items_.end());
      return {};
    }
    if (m == "sort") return sort(a, kw);
    if (m == "clear") {
      no_args("list.clear", a, kw);
      for (Item& x : items_) removed.push_back(std::move(x));
      items_.clear();
      return {};
    }
    if (m == "copy") {
      no_args("list.copy", a, kw);
      return Item::list(items_);
    }
    if (m == "__add__") {
      one_arg("list.__add__", a, kw);
      if (a[0].kind() != Kind::list && a[0].kind() != Kind::sequence)
        throw TypeError("can only concatenate list (not \"" + std::string(type_name(a[0])) +
                        "\") to list");
      check_size(n + a[0].elements().size(), "list + list");
      std::vector<Item> out = items_;
      auto& more = a[0].elements();
      out.insert(out.end(), std::make_move_iterator(more.begin()),
                 std::make_move_iterator(more.end()));
      return Item::list(std::move(out));
    }
    if (m == "__mul__" || m == "__rmul__") {
      one_arg(m == "__mul__" ? "list.__mul__" : "list.__rmul__", a, kw);
      const std::size_t times_n = n == 0 ? 0 : repeat_count(a[0]);
      if (n == 0) repeat_count(a[0]);  // the TypeError for a non-int all the same
      check_size(times(n, times_n), "list * n");
      std::vector<Item> out;
      out.reserve(n * times_n);
      for (std::size_t k = 0; k < times_n; ++k) out.insert(out.end(), items_.begin(), items_.end());
      return Item::list(std::move(out));
    }
    if (m == "__imul__") {
      one_arg("list.__imul__", a, kw);
      const std::size_t times_n = repeat_count(a[0]);
      if (times_n == 0 || n == 0) {
        for (Item& x : items_) removed.push_back(std::move(x));
        items_.clear();
        return {};
      }
      check_size(times(n, times_n), "list *= n");
      std::vector<Item> out;
      out.reserve(n * times_n);
      for (std::size_t k = 1; k < times_n; ++k) hold_all(items_);
      for (std::size_t k = 0; k < times_n; ++k) out.insert(out.end(), items_.begin(), items_.end());
      items_ = std::move(out);
      return {};
    }
    if (m == "__reversed__") {
      no_args("list.__reversed__", a, kw);
      return Item::list(std::vector<Item>(items_.rbegin(), items_.rend()));
    }
    throw AttributeError("'list' object has no attribute " + py_quoted(m));
  }

private:
  // The first position in [lo, hi) whose element equals `x`, else `hi`.
  std::size_t position(const Item& x, std::size_t lo, std::size_t hi) const {
    for (std::size_t i = lo; i < hi; ++i)
      if (same_or_equal(items_[i], x)) return i;
    return hi;
  }

  std::size_t index(const Item& i, const char* out_of_range) const {
    if (!i.is_integral())
      throw TypeError("list indices must be integers or slices, not " + std::string(type_name(i)));
    std::int64_t k = as_index(i);
    const auto n = static_cast<std::int64_t>(items_.size());
    if (k < 0) k += n;
    if (k < 0 || k >= n) throw IndexError(out_of_range);
    return static_cast<std::size_t>(k);
  }

  static std::size_t repeat_count(const Item& x) {
    if (!x.is_integral())
      throw TypeError("can't multiply sequence by non-int of type " + py_quoted(type_name(x)));
    if (x.kind() == Kind::uinteger) return static_cast<std::size_t>(x.as_uint());
    return x.as_int() <= 0 ? 0 : static_cast<std::size_t>(x.as_int());
  }

  // Removes the elements marked in `gone`, in order.
  void compact(const std::vector<bool>& gone, std::vector<Item>& removed) {
    std::size_t w = 0;
    for (std::size_t r = 0; r < items_.size(); ++r) {
      if (gone[r])
        removed.push_back(std::move(items_[r]));
      else if (w != r)
        items_[w++] = std::move(items_[r]);
      else
        ++w;
    }
    items_.resize(w);
  }

  Item set_slice(const Item& index, Item value, std::vector<Item>& removed) {
    const Slice s = slice_indices(index, items_.size());
    std::vector<Item> e;
    try {
      e = iterate(std::move(value));
    } catch (const TypeError&) {
      throw TypeError("can only assign an iterable");
    }
    if (s.step == 1) {
      const std::size_t lo = static_cast<std::size_t>(s.start);
      const std::size_t hi = lo + s.length;
      check_size(items_.size() - s.length + e.size(), "list slice assignment");
      hold_all(e);
      for (std::size_t i = lo; i < hi; ++i) removed.push_back(std::move(items_[i]));
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(lo),
                   items_.begin() + static_cast<std::ptrdiff_t>(hi));
      items_.insert(items_.begin() + static_cast<std::ptrdiff_t>(lo),
                    std::make_move_iterator(e.begin()), std::make_move_iterator(e.end()));
      return {};
    }
    if (e.size() != s.length)
      throw ValueError("attempt to assign sequence of size " + std::to_string(e.size()) +
                       " to extended slice of size " + std::to_string(s.length));
    hold_all(e);
    for (std::size_t i = 0; i < s.length; ++i)
      removed.push_back(std::exchange(items_[s.at(i)], std::move(e[i])));
    return {};
  }

  Item sort(std::vector<Item>& a, Kwargs& kw) {
    if (!a.empty()) throw TypeError("sort() takes no positional arguments");
    bool reverse = false;
    for (auto& [name, v] : kw) {
      if (name == "reverse") {
        if (!v.is_integral())
          throw TypeError(py_quoted(type_name(v)) + " object cannot be interpreted as an integer");
        reverse = truthy(v);
      } else if (name == "key") {
        if (!v.is_none())
          throw TypeError(
              "sort(): a key function cannot be sent to a managed list (only key=None); sort "
              "a copy in the caller instead");
      } else {
        throw TypeError(py_quoted(name) + " is an invalid keyword argument for sort()");
      }
    }
    // Sorts positions, so that a comparison that throws (TypeError) leaves the list as it was.
    std::vector<std::size_t> order(items_.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    if (reverse) {
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t x, std::size_t y) { return less(items_[y], items_[x]); });
    } else {
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t x, std::size_t y) { return less(items_[x], items_[y]); });
    }
    std::vector<Item> sorted;
    sorted.reserve(items_.size());
    for (std::size_t i : order) sorted.push_back(std::move(items_[i]));
    items_ = std::move(sorted);
    return {};
  }

  std::vector<Item> items_;
};

// ---- dict -------------------------------------------------------------------------------------

class Dict final : public Container {
public:
  Dict(std::vector<Item> args, Kwargs kwargs, const ContainerOptions& o) : Container(o) {
    if (args.size() > 1)
      throw TypeError("dict expected at most 1 argument, got " + std::to_string(args.size()));
    std::vector<Item> removed;
    try {
      update(args, kwargs, removed);
    } catch (...) {
      release();  // no destructor runs for an object whose constructor threw
      for (const Item& x : removed) drop(x);
      throw;
    }
    for (const Item& x : removed) drop(x);
  }
  ~Dict() override { release(); }

  std::string_view type_id() const noexcept override { return "dict"; }

  const std::vector<std::string>& exposed() const noexcept override {
    static const std::vector<std::string> names = {
        "__contains__", "__delitem__",  "__getitem__", "__ior__",     "__iter__", "__len__",
        "__or__",       "__reversed__", "__ror__",     "__setitem__", "clear",    "copy",
        "fromkeys",     "get",          "items",       "keys",        "pop",      "popitem",
        "setdefault",   "update",       "values"};
    return names;
  }

protected:
  Item value_locked() const override { return as_dict(); }
  std::unique_ptr<KeyIterator> iter() override {
    std::lock_guard<std::mutex> g(mu_);
    return std::make_unique<Keys>(*this);
  }
  std::string repr_locked(std::size_t max) const override {
    std::string out = "{";
    for (const auto& e : table_) {
      if (out.size() > max) break;
      if (out.size() > 1) out += ", ";
      out += repr_to(e.key, max) + ": " + repr_to(e.value, max);
    }
    return out + "}";
  }

  Item dispatch(std::string_view m, std::vector<Item>& a, Kwargs& kw,
                std::vector<Item>& removed) override {
    if (m == "__len__") {
      no_args("dict.__len__", a, kw);
      return Item::integer(static_cast<std::int64_t>(table_.size()));
    }
    if (m == "__contains__") {
      one_arg("dict.__contains__", a, kw);
      return Item::boolean(table_.contains(a[0]));
    }
    if (m == "__getitem__") {
      one_arg("dict.__getitem__", a, kw);
      auto it = table_.find(a[0]);
      if (it == table_.end()) throw KeyError(repr_to(a[0], 200));
      return it->value;
    }
    if (m == "__setitem__") {
      arg_range("dict.__setitem__", "", a, kw, 2, 2);
      set(std::move(a[0]), std::move(a[1]), removed);
      return {};
    }
    if (m == "__delitem__") {
      one_arg("dict.__delitem__", a, kw);
      auto it = table_.find(a[0]);
      if (it == table_.end()) throw KeyError(repr_to(a[0], 200));
      take(it, removed);
      return {};
    }
    if (m == "get") {
      arg_range("dict.get", "get", a, kw, 1, 2);
      auto it = table_.find(a[0]);
      if (it != table_.end()) return it->value;
      return a.size() > 1 ? std::move(a[1]) : Item();
    }
    if (m == "setdefault") {
      arg_range("dict.setdefault", "setdefault", a, kw, 1, 2);
      a[0] = stored_key(std::move(a[0]));
      const std::int64_t h = hash(a[0]);
      auto it = table_.find(a[0], h);
      if (it != table_.end()) return it->value;
      Item v = a.size() > 1 ? std::move(a[1]) : Item();
      check_size(table_.size() + 1, "dict.setdefault()");
      hold_pair(a[0], v);
      table_.append(std::move(a[0]), v, h);
      return v;
    }
    if (m == "pop") {
      arg_range("dict.pop", "pop", a, kw, 1, 2);
      auto it = table_.find(a[0]);
      if (it == table_.end()) {
        if (a.size() > 1) return std::move(a[1]);
        throw KeyError(repr_to(a[0], 200));
      }
      Item v = it->value;
      take(it, removed);
      return v;
    }
    if (m == "popitem") {
      no_args("dict.popitem", a, kw);
      if (table_.empty()) throw KeyError("'popitem(): dictionary is empty'");
      auto e = table_.erase(std::prev(table_.end()));
      std::vector<Item> pair;
      pair.push_back(e.key);
      pair.push_back(e.value);
      removed.push_back(std::move(e.key));
      removed.push_back(std::move(e.value));
      return Item::tuple(std::move(pair));
    }
    if (m == "keys" || m == "__iter__" || m == "__reversed__") {
      no_args(m == "keys"       ? "dict.keys"
              : m == "__iter__" ? "dict.__iter__"
                                : "dict.__reversed__",
              a, kw);
      std::vector<Item> out;
      out.reserve(table_.size());
      for (const auto& e : table_) out.push_back(e.key);
      if (m == "__reversed__") std::reverse(out.begin(), out.end());
      return Item::list(std::move(out));
    }
    if (m == "values") {
      no_args("dict.values", a, kw);
      std::vector<Item> out;
      out.reserve(table_.size());
      for (const auto& e : table_) out.push_back(e.value);
      return Item::list(std::move(out));
    }
    if (m == "items") {
      no_args("dict.items", a, kw);
      std::vector<Item> out;
      out.reserve(table_.size());
      for (const auto& e : table_) out.push_back(Item::tuple({e.key, e.value}));
      return Item::list(std::move(out));
    }
    if (m == "update") {
      if (a.size() > 1)
        throw TypeError("update expected at most 1 argument, got " + std::to_string(a.size()));
      update(a, kw, removed);
      return {};
    }
    if (m == "__ior__") {
      one_arg("dict.__ior__", a, kw);
      update(a, {}, removed);
      return {};
    }
    if (m == "__or__" || m == "__ror__") {
      one_arg(m == "__or__" ? "dict.__or__" : "dict.__ror__", a, kw);
      if (a[0].kind() != Kind::dict && a[0].kind() != Kind::sequence) {
        const std::string other = py_quoted(type_name(a[0]));
        throw TypeError("unsupported operand type(s) for |: " +
                        (m == "__or__" ? "'dict' and " + other : other + " and 'dict'"));
      }
      std::vector<Item> pairs = mapping_pairs(std::move(a[0]));
      check_size(table_.size() + pairs.size() / 2, "dict | dict");
      Table t;
      auto put = [&](Item k, Item v) {
        k = stored_key(std::move(k));
        const std::int64_t h = hash(k);
        auto it = t.find(k, h);
        if (it != t.end())
          it->value = std::move(v);
        else
          t.append(std::move(k), std::move(v), h);
      };
      if (m == "__or__") {
        for (const auto& e : table_) put(e.key, e.value);
        for (std::size_t i = 0; i < pairs.size(); i += 2)
          put(std::move(pairs[i]), std::move(pairs[i + 1]));
      } else {
        for (std::size_t i = 0; i < pairs.size(); i += 2)
          put(std::move(pairs[i]), std::move(pairs[i + 1]));
        for (const auto& e : table_) put(e.key, e.value);
      }
      return flat(t);
    }
    if (m == "clear") {
      no_args("dict.clear", a, kw);
      table_.clear(removed);
      return {};
    }
    if (m == "copy") {
      no_args("dict.copy", a, kw);
      return as_dict();
    }
    if (m == "fromkeys") {
      arg_range("dict.fromkeys", "fromkeys", a, kw, 1, 2);
      std::vector<Item> keys = iterate(std::move(a[0]));
      check_size(keys.size(), "dict.fromkeys()");
      const Item v = a.size() > 1 ? std::move(a[1]) : Item();
      Table t;
      for (Item& k : keys) {
        k = stored_key(std::move(k));
        const std::int64_t h = hash(k);
        if (t.find(k, h) == t.end()) t.append(std::move(k), v, h);
      }
      return flat(t);
    }
    throw AttributeError("'dict' object has no attribute " + py_quoted(m));
  }

private:
  // Python's dict_keyiterator (KeyIterator's contract in containers.hpp). Its state is guarded
  // by the dict's mutex. Its position is the rank of the last key returned; the table node of
  // that key is kept while no erase happened since, so a step is O(1) unless keys were deleted
  // between steps (then a scan from the start finds the first rank after it).
  class Keys final : public KeyIterator {
  public:
    explicit Keys(Dict& d) : d_(d), used_(d.table_.size()), left_(d.table_.size()) {}

    std::optional<Item> next() override {
      std::lock_guard<std::mutex> g(d_.mu_);
      if (exhausted_) return std::nullopt;
      Table& t = d_.table_;
      if (size_changed_ || t.size() != used_) {
        size_changed_ = true;  // sticky, as CPython's di_used = -1
        throw RuntimeError("dictionary changed size during iteration");
      }
      Table::iterator it;
      if (rank_ == 0) {
        it = t.begin();
      } else if (erasures_ == t.erasures()) {
        it = std::next(last_);
      } else {
        it = t.begin();
        while (it != t.end() && it->rank <= rank_) ++it;
      }
      if (it == t.end()) {
        exhausted_ = true;
        return std::nullopt;
      }
      if (left_ == 0) {
        exhausted_ = true;
        throw RuntimeError("dictionary keys changed during iteration");
      }
      --left_;
      last_ = it;
      rank_ = it->rank;
      erasures_ = t.erasures();
      return it->key;
    }

  private:
    Dict& d_;
    const std::size_t used_;  // the dict's size at iter()
    std::size_t left_;        // keys still expected (CPython's di->len)
    std::uint64_t rank_ = 0;  // of the last key returned; 0: none yet
    Table::iterator last_;    // its node, valid while erasures_ == table's
    std::uint64_t erasures_ = 0;
    bool size_changed_ = false;
    bool exhausted_ = false;
  };

  void release() noexcept {
    for (const auto& e : table_) {
      drop(e.key);
      drop(e.value);
    }
  }

  static Item flat(const Table& t) {
    std::vector<Item> out;
    out.reserve(t.size() * 2);
    for (const auto& e : t) {
      out.push_back(e.key);
      out.push_back(e.value);
    }
    return Item::dict(std::move(out));
  }
  Item as_dict() const { return flat(table_); }

  void take(Table::iterator it, std::vector<Item>& removed) {
    auto e = table_.erase(it);
    removed.push_back(std::move(e.key));
    removed.push_back(std::move(e.value));
  }

  // d[k] = v: an equal key already there keeps its key object and takes the value.
  void set(Item k, Item v, std::vector<Item>& removed) {
    k = stored_key(std::move(k));
    const std::int64_t h = hash(k);
    auto it = table_.find(k, h);
    if (it != table_.end()) {
      hold(v);
      removed.push_back(std::exchange(it->value, std::move(v)));
      return;
    }
    check_size(table_.size() + 1, "dict[key] = value");
    hold_pair(k, v);
    table_.append(std::move(k), std::move(v), h);
  }

  void update(std::vector<Item>& a, const Kwargs& kw, std::vector<Item>& removed) {
    std::vector<Item> pairs;
    if (!a.empty()) pairs = mapping_pairs(std::move(a[0]));
    for (const auto& [name, v] : kw) {
      pairs.push_back(Item::text(name));
      pairs.push_back(v);
    }
    for (std::size_t i = 0; i < pairs.size(); i += 2) hash(pairs[i]);  // unhashable: nothing done
    check_size(table_.size() + pairs.size() / 2, "dict.update()");
    for (std::size_t i = 0; i < pairs.size(); i += 2)
      set(std::move(pairs[i]), std::move(pairs[i + 1]), removed);
  }

  Table table_;
};

// ---- set --------------------------------------------------------------------------------------

class Set final : public Container {
public:
  Set(std::vector<Item> args, Kwargs kwargs, const ContainerOptions& o) : Container(o) {
    arg_range("set", "set", args, kwargs, 0, 1);
    if (!args.empty()) {
      std::vector<Item> removed;
      try {
        add_all(iterate(std::move(args[0])), removed);
      } catch (...) {
        release();  // no destructor runs for an object whose constructor threw
        throw;
      }
    }
  }
  ~Set() override { release(); }

  std::string_view type_id() const noexcept override { return "set"; }

  const std::vector<std::string>& exposed() const noexcept override {
    static const std::vector<std::string> names = {"__and__",
                                                   "__contains__",
                                                   "__iand__",
                                                   "__ior__",
                                                   "__isub__",
                                                   "__iter__",
                                                   "__ixor__",
                                                   "__len__",
                                                   "__or__",
                                                   "__rand__",
                                                   "__ror__",
                                                   "__rsub__",
                                                   "__rxor__",
                                                   "__sub__",
                                                   "__xor__",
                                                   "__ge__",
                                                   "__gt__",
                                                   "__le__",
                                                   "__lt__",
                                                   "add",
                                                   "clear",
                                                   "copy",
                                                   "difference",
                                                   "difference_update",
                                                   "discard",
                                                   "intersection",
                                                   "intersection_update",
                                                   "isdisjoint",
                                                   "issubset",
                                                   "issuperset",
                                                   "pop",
                                                   "remove",
                                                   "symmetric_difference",
                                                   "symmetric_difference_update",
                                                   "union",
                                                   "update"};
    return names;
  }

protected:
  Item value_locked() const override { return Item::set(elements()); }
  std::string repr_locked(std::size_t max) const override {
    if (table_.empty()) return "set()";
    std::string out = "{";
    for (const auto& e : table_) {
      if (out.size() > max) break;
      if (out.size() > 1) out += ", ";
      out += repr_to(e.key, max);
    }
    return out + "}";
  }

  Item dispatch(std::string_view m, std::vector<Item>& a, Kwargs& kw,
                std::vector<Item>& removed) override {
    if (m == "__len__") {
      no_args("set.__len__", a, kw);
      return Item::integer(static_cast<std::int64_t>(table_.size()));
    }
    if (m == "__contains__") {
      one_arg("set.__contains__", a, kw);
      return Item::boolean(table_.contains(as_key(std::move(a[0]))));
    }
    if (m == "__iter__") {
      no_args("set.__iter__", a, kw);
      return Item::list(elements());
    }
    if (m == "add") {
      one_arg("set.add", a, kw);
      std::vector<Item> one;
      one.push_back(std::move(a[0]));
      add_all(std::move(one), removed);
      return {};
    }
    if (m == "discard" || m == "remove") {
      one_arg(m == "discard" ? "set.discard" : "set.remove", a, kw);
      Item k = as_key(std::move(a[0]));
      auto it = table_.find(k);
      if (it == table_.end()) {
        if (m == "remove") throw KeyError(repr_to(k, 200));
        return {};
      }
      removed.push_back(table_.erase(it).key);
      return {};
    }
    if (m == "pop") {
      no_args("set.pop", a, kw);
      if (table_.empty()) throw KeyError("'pop from an empty set'");
      Item k = table_.erase(table_.begin()).key;
      removed.push_back(k);
      return k;
    }
    if (m == "clear") {
      no_args("set.clear", a, kw);
      table_.clear(removed);
      return {};
    }
    if (m == "copy") {
      no_args("set.copy", a, kw);
      return Item::set(elements());
    }
    // Binary operators: the operand must be a set (or the wire's sequence).
    static const std::pair<std::string_view, std::string_view> kOps[] = {
        {"__and__", "&"},   {"__rand__", "&"}, {"__or__", "|"},    {"__ror__", "|"},
        {"__sub__", "-"},   {"__rsub__", "-"}, {"__xor__", "^"},   {"__rxor__", "^"},
        {"__iand__", "&="}, {"__ior__", "|="}, {"__isub__", "-="}, {"__ixor__", "^="},
        {"__lt__", "<"},    {"__le__", "<="},  {"__gt__", ">"},    {"__ge__", ">="}};
    for (const auto& [name, op] : kOps) {
      if (m != name) continue;
      one_arg("set." + std::string(name), a, kw);
      const Kind k = a[0].kind();
      if (k != Kind::set && k != Kind::frozenset && k != Kind::sequence) {
        const bool right = name.substr(0, 3) == "__r";
        const std::string other = py_quoted(type_name(a[0]));
        if (op.size() == 1 || op == "<=" || op == ">=") {
          if (op == "<" || op == ">" || op == "<=" || op == ">=")
            throw TypeError(py_quoted(op) + " not supported between instances of 'set' and " +
                            other);
          throw TypeError("unsupported operand type(s) for " + std::string(op) + ": " +
                          (right ? other + " and 'set'" : "'set' and " + other));
        }
        throw TypeError("unsupported operand type(s) for " + std::string(op) + ": 'set' and " +
                        other);
      }
      return binary(name, std::move(a[0]), removed);
    }
    // Named methods: any iterables.
    if (m == "union" || m == "intersection" || m == "difference" || m == "update" ||
        m == "intersection_update" || m == "difference_update") {
      no_kwargs("set." + std::string(m), kw);
      Table result = m.ends_with("_update") || m == "update" ? Table() : copy_table();
      const bool in_place = m == "update" || m.ends_with("_update");
      const std::string op = in_place ? std::string(m.substr(0, m.find('_'))) : std::string(m);
      if (in_place && m == "update") {
        for (Item& x : a) add_all(iterate(std::move(x)), removed);
        return {};
      }
      if (in_place) {
        for (Item& x : a) {
          Table other = table_of(iterate(std::move(x)));
          filter(op == "intersection", other, removed);
        }
        return {};
      }
      for (Item& x : a) {
        Table other = table_of(iterate(std::move(x)));
        if (op == "union") {
          for (auto& e : other)
            if (result.find(e.key, e.hash) == result.end()) {
              check_size(result.size() + 1, "set.union()");
              result.append(e.key, {}, e.hash);
            }
        } else {
          Table kept;
          for (auto& e : result) {
            const bool in_other = other.find(e.key, e.hash) != other.end();
            if (in_other == (op == "intersection")) kept.append(e.key, {}, e.hash);
          }
          result = std::move(kept);
        }
      }
      return Item::set(elements_of(result));
    }
    if (m == "symmetric_difference" || m == "symmetric_difference_update") {
      one_arg("set." + std::string(m), a, kw);
      Item other = Item::set(elements_of(table_of(iterate(std::move(a[0])))));
      return binary(m == "symmetric_difference" ? "__xor__" : "__ixor__", std::move(other),
                    removed);
    }
    if (m == "isdisjoint" || m == "issubset" || m == "issuperset") {
      one_arg("set." + std::string(m), a, kw);
      Table other = table_of(iterate(std::move(a[0])));
      if (m == "isdisjoint") {
        for (const auto& e : other)
          if (table_.find(e.key, e.hash) != table_.end()) return Item::boolean(false);
        return Item::boolean(true);
      }
      const Table& small = m == "issubset" ? table_ : other;
      const Table& big = m == "issubset" ? other : table_;
      return Item::boolean(subset(small, big));
    }
    throw AttributeError("'set' object has no attribute " + py_quoted(m));
  }

private:
  void release() noexcept {
    for (const auto& e : table_) drop(e.key);
  }

  // A set given as an element or key is looked up as the frozenset with its elements (Python's
  // set.__contains__ does the same).
  static Item as_key(Item k) {
    if (k.kind() == Kind::set) return Item::frozenset(std::move(k.elements()));
    return k;
  }

  static std::vector<Item> elements_of(const Table& t) {
    std::vector<Item> out;
    out.reserve(t.size());
    for (const auto& e : t) out.push_back(e.key);
    return out;
  }
  std::vector<Item> elements() const { return elements_of(table_); }

  Table copy_table() const {
    Table t;
    for (const auto& e : table_) t.append(e.key, {}, e.hash);
    return t;
  }

  Table table_of(std::vector<Item> v) const {
    check_size(v.size(), "set operation");
    Table t;
    for (Item& x : v) {
      x = stored_key(std::move(x));
      const std::int64_t h = hash(x);
      if (t.find(x, h) == t.end()) t.append(std::move(x), {}, h);
    }
    return t;
  }

  static bool subset(const Table& small, const Table& big) {
    if (small.size() > big.size()) return false;
    for (const auto& e : small)
      if (big.find(e.key, e.hash) == big.end()) return false;
    return true;
  }

  void add_all(std::vector<Item> v, std::vector<Item>& removed) {
    std::vector<std::int64_t> hashes;
    hashes.reserve(v.size());
    for (Item& x : v) {
      x = stored_key(std::move(x));
      hashes.push_back(hash(x));  // unhashable: nothing added
    }
    check_size(table_.size() + v.size(), "set.add()/update()");
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (table_.find(v[i], hashes[i]) != table_.end()) continue;  // the one there stays
      hold(v[i]);
      table_.append(std::move(v[i]), {}, hashes[i]);
    }
    (void)removed;
  }

  // Keeps the elements that are (keep_common) or are not in `other`.
  void filter(bool keep_common, const Table& other, std::vector<Item>& removed) {
    for (auto it = table_.begin(); it != table_.end();) {
      const bool common = other.find(it->key, it->hash) != other.end();
      auto next = std::next(it);
      if (common != keep_common) removed.push_back(table_.erase(it).key);
      it = next;
    }
  }

  Item binary(std::string_view name, Item operand, std::vector<Item>& removed) {
    Table other = table_of(std::move(operand.elements()));
    auto result_of = [&](std::string_view op) {
      Table r;
      if (op == "&") {
        for (const auto& e : table_)
          if (other.find(e.key, e.hash) != other.end()) r.append(e.key, {}, e.hash);
      } else if (op == "|") {
        r = copy_table();
        for (const auto& e : other)
          if (r.find(e.key, e.hash) == r.end()) r.append(e.key, {}, e.hash);
      } else if (op == "-") {
        for (const auto& e : table_)
          if (other.find(e.key, e.hash) == other.end()) r.append(e.key, {}, e.hash);
      } else if (op == "r-") {
        for (const auto& e : other)
          if (table_.find(e.key, e.hash) == table_.end()) r.append(e.key, {}, e.hash);
      } else {  // ^
        for (const auto& e : table_)
          if (other.find(e.key, e.hash) == other.end()) r.append(e.key, {}, e.hash);
        for (const auto& e : other)
          if (table_.find(e.key, e.hash) == table_.end()) r.append(e.key, {}, e.hash);
      }
      return r;
    };
    if (name == "__lt__")
      return Item::boolean(table_.size() < other.size() && subset(table_, other));
    if (name == "__le__") return Item::boolean(subset(table_, other));
    if (name == "__gt__")
      return Item::boolean(other.size() < table_.size() && subset(other, table_));
    if (name == "__ge__") return Item::boolean(subset(other, table_));
    if (name == "__and__" || name == "__rand__") return Item::set(elements_of(result_of("&")));
    if (name == "__or__" || name == "__ror__") return Item::set(elements_of(result_of("|")));
    if (name == "__sub__") return Item::set(elements_of(result_of("-")));
    if (name == "__rsub__") return Item::set(elements_of(result_of("r-")));
    if (name == "__xor__" || name == "__rxor__") return Item::set(elements_of(result_of("^")));
    // In place.
    if (name == "__iand__") {
      filter(true, other, removed);
    } else if (name == "__isub__") {
      filter(false, other, removed);
    } else if (name == "__ior__") {
      add_all(elements_of(other), removed);
    } else {  // __ixor__: drop the common ones, add the others'
      std::vector<Item> added;
      for (const auto& e : other)
        if (table_.find(e.key, e.hash) == table_.end()) added.push_back(e.key);
      filter(false, other, removed);
      add_all(std::move(added), removed);
    }
    return {};
  }

  Table table_;
};

// ---- Namespace --------------------------------------------------------------------------------

class NamespaceObject final : public Container {
public:
  NamespaceObject(std::vector<Item> args, Kwargs kwargs, const ContainerOptions& o) : Container(o) {
    if (!args.empty())
      throw TypeError("Namespace() takes 0 positional arguments but " +
                      std::to_string(args.size()) + " were given");
    std::vector<Item> removed;
    try {
      for (auto& [name, v] : kwargs) set(Item::text(name), std::move(v), removed);
    } catch (...) {
      release();  // no destructor runs for an object whose constructor threw
      for (const Item& x : removed) drop(x);
      throw;
    }
    for (const Item& x : removed) drop(x);
  }
  ~NamespaceObject() override { release(); }

  std::string_view type_id() const noexcept override { return "Namespace"; }

  const std::vector<std::string>& exposed() const noexcept override {
    static const std::vector<std::string> names = {"__getattribute__", "__setattr__",
                                                   "__delattr__"};
    return names;
  }

protected:
  Item value_locked() const override {
    std::vector<Item> flat;
    for (const auto& e : table_) {
      flat.push_back(e.key);
      flat.push_back(e.value);
    }
    return Item::dict(std::move(flat));
  }
  Item python_value_locked() const override {
    return Item::object("multiprocessing.managers.Namespace", Item::tuple({}), value_locked());
  }
  // Python's Namespace.__repr__: the public attributes as 'name=repr', those strings sorted
  // (so "x2=2" comes before "x=1", as in Python).
  std::string repr_locked(std::size_t max) const override {
    std::vector<std::string> v;
    for (const auto& e : table_)
      if (!e.key.as_string().starts_with('_'))
        v.push_back(e.key.as_string() + "=" + repr_to(e.value, max));
    std::sort(v.begin(), v.end());
    std::string out = "Namespace(";
    for (std::size_t i = 0; i < v.size() && out.size() <= max; ++i) {
      if (i) out += ", ";
      out += v[i];
    }
    return out + ")";
  }

  Item dispatch(std::string_view m, std::vector<Item>& a, Kwargs& kw,
                std::vector<Item>& removed) override {
    if (m == "__getattribute__") {
      one_arg("Namespace.__getattribute__", a, kw);
      const Item& name = attribute_name(a[0]);
      if (name.as_string() == "__dict__") return value_locked();
      auto it = table_.find(name);
      if (it == table_.end()) missing(name);
      return it->value;
    }
    if (m == "__setattr__") {
      arg_range("Namespace.__setattr__", "", a, kw, 2, 2);
      attribute_name(a[0]);
      set(std::move(a[0]), std::move(a[1]), removed);
      return {};
    }
    if (m == "__delattr__") {
      one_arg("Namespace.__delattr__", a, kw);
      auto it = table_.find(attribute_name(a[0]));
      if (it == table_.end()) missing(a[0]);
      auto e = table_.erase(it);
      removed.push_back(std::move(e.value));
      return {};
    }
    throw AttributeError("'Namespace' object has no attribute " + py_quoted(m));
  }

private:
  void release() noexcept {
    for (const auto& e : table_) drop(e.value);
  }

  static const Item& attribute_name(const Item& name) {
    if (name.kind() != Kind::text)
      throw TypeError("attribute name must be string, not " + py_quoted(type_name(name)));
    return name;
  }
  [[noreturn]] static void missing(const Item& name) {
    throw AttributeError("'Namespace' object has no attribute " + repr_to(name, 200));
  }

  void set(Item name, Item v, std::vector<Item>& removed) {
    const std::int64_t h = hash(name);
    auto it = table_.find(name, h);
    hold(v);
    if (it != table_.end()) {
      removed.push_back(std::exchange(it->value, std::move(v)));
      return;
    }
    check_size(table_.size() + 1, "Namespace attribute");
    table_.append(std::move(name), std::move(v), h);
  }

  Table table_;
};

// ---- typecodes (array.array's) ----------------------------------------------------------------

}  // namespace

constexpr Typecode kTypecodes[] = {
    {'b', Typecode::signed_int, 1, "signed char"},
    {'B', Typecode::unsigned_int, 1, "unsigned byte integer"},
    {'u', Typecode::character, 4, ""},
    {'w', Typecode::character, 4, ""},
    {'h', Typecode::signed_int, 2, "signed short integer"},
    {'H', Typecode::unsigned_int, 2, "unsigned short"},
    {'i', Typecode::signed_int, 4, "signed integer"},
    {'I', Typecode::unsigned_int, 4, "unsigned int"},
    {'l', Typecode::signed_int, 8, ""},
    {'L', Typecode::unsigned_int, 8, ""},
    {'q', Typecode::signed_int, 8, ""},
    {'Q', Typecode::unsigned_int, 8, ""},
    {'f', Typecode::real, 4, ""},
    {'d', Typecode::real, 8, ""},
};
// ctypes' codes that multiprocessing.Value also takes (ValueObject with check_typecode only).
constexpr Typecode kCtypesExtra[] = {
    {'c', Typecode::byte_char, 1, ""},
    {'?', Typecode::boolean, 1, ""},
};

const Typecode* find_typecode(char c, bool ctypes_too) noexcept {
  for (const Typecode& t : kTypecodes)
    if (t.code == c) return &t;
  if (ctypes_too)
    for (const Typecode& t : kCtypesExtra)
      if (t.code == c) return &t;
  return nullptr;
}

int native_format(const Typecode& t) noexcept {
  switch (t.kind) {
    case Typecode::signed_int:
    case Typecode::unsigned_int: {
      // 0/1: uint8/int8; then per size (2, 4, 8): unsigned LE, BE, signed LE, BE.
      const int is_signed = t.kind == Typecode::signed_int ? 1 : 0;
      if (t.bytes == 1) return is_signed;
      return 2 + 4 * std::countr_zero(t.bytes / 2) + 2 * is_signed;
    }
    case Typecode::real: return t.bytes == 4 ? 14 : 16;
    default: return 20;  // u, w: UTF-32 LE
  }
}

namespace {

const Typecode* typecode_of(const Item& code, bool ctypes_too) {
  if (code.kind() == Kind::text && code.as_string().size() == 1)
    return find_typecode(code.as_string()[0], ctypes_too);
  return nullptr;
}

std::size_t code_points(const std::string& s) {
  std::size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80 ? 1 : 0;
  return n;
}

double to_float(double d);

}  // namespace

Item convert_to_typecode(const Typecode& t, const Item& x) {
  switch (t.kind) {
    case Typecode::signed_int:
    case Typecode::unsigned_int: {
      if (!x.is_integral()) {
        throw TypeError(py_quoted(type_name(x)) + " object cannot be interpreted as an integer");
      }
      const bool is_signed = t.kind == Typecode::signed_int;
      const bool negative = x.kind() != Kind::uinteger && x.as_int() < 0;
      if (t.bytes < 8) {
        const unsigned bits = t.bytes * 8;
        const std::int64_t lo = is_signed ? -(std::int64_t{1} << (bits - 1)) : 0;
        const std::int64_t hi =
            is_signed ? (std::int64_t{1} << (bits - 1)) - 1 : (std::int64_t{1} << bits) - 1;
        if (t.code == 'I' && negative)
          throw OverflowError("can't convert negative value to unsigned int");
        if (x.kind() == Kind::uinteger || x.as_int() > hi)
          throw OverflowError(std::string(t.what) + " is greater than maximum");
        if (x.as_int() < lo) throw OverflowError(std::string(t.what) + " is less than minimum");
        return Item::integer(x.as_int());
      }
      if (is_signed) {
        if (x.kind() == Kind::uinteger) {
          if (x.as_uint() > static_cast<std::uint64_t>(kMaxIndex))
            throw OverflowError(t.code == 'l' ? "Python int too large to convert to C long"
                                              : "int too big to convert");
          return Item::integer(static_cast<std::int64_t>(x.as_uint()));
        }
        return Item::integer(x.as_int());
      }
      if (negative)
        throw OverflowError(t.code == 'L' ? "can't convert negative value to unsigned int"
                                          : "can't convert negative int to unsigned");
      if (x.kind() == Kind::uinteger) return x;
      return Item::integer(x.as_int());
    }
    case Typecode::real: {
      if (!x.is_number()) throw TypeError("must be real number, not " + std::string(type_name(x)));
      double d = x.kind() == Kind::floating   ? x.as_float()
                 : x.kind() == Kind::uinteger ? static_cast<double>(x.as_uint())
                                              : static_cast<double>(x.as_int());
      if (t.bytes == 4) d = to_float(d);
      return Item::floating(d);
    }
    case Typecode::character:
      if (x.kind() != Kind::text || code_points(x.as_string()) != 1)
        throw TypeError("array item must be unicode character");
      return x;
    case Typecode::byte_char:
      if (x.kind() == Kind::bytes && x.as_string().size() == 1) return x;
      throw TypeError("one character bytes, bytearray or integer expected");
    case Typecode::boolean: return Item::boolean(truthy(x));
  }
  return x;
}

namespace {

// C's (float)d, as array('f') stores it: out of range rounds to the largest float, or past
// its halfway point to the next power of two, to infinity (C++ leaves that case undefined).
double to_float(double d) {
  constexpr double fmax = std::numeric_limits<float>::max();
  const double halfway = std::ldexp(1.0, 128) - std::ldexp(1.0, 103);
  if (std::isfinite(d) && std::fabs(d) > fmax)
    return std::fabs(d) < halfway ? std::copysign(fmax, d)
                                  : std::copysign(std::numeric_limits<double>::infinity(), d);
  return static_cast<double>(static_cast<float>(d));
}

[[noreturn]] void bad_typecode() {
  throw ValueError("bad typecode (must be b, B, u, h, H, i, I, l, L, q, Q, f or d)");
}

// ---- Value ------------------------------------------------------------------------------------

class ValueObject final : public Container {
public:
  ValueObject(std::vector<Item> args, Kwargs kwargs, const ContainerOptions& o) : Container(o) {
    // Value(typecode, value, lock=True); `lock` is taken and ignored, as CPython's does.
    for (auto& [name, v] : kwargs) {
      if (name == "typecode" && args.empty())
        args.push_back(std::move(v));
      else if (name == "value" && args.size() == 1)
        args.push_back(std::move(v));
      else if (name != "lock")
        throw TypeError("Value.__init__() got an unexpected keyword argument " + py_quoted(name));
    }
    if (args.size() < 2 || args.size() > 3)
      throw TypeError("Value.__init__() takes from 3 to 4 positional arguments but " +
                      std::to_string(args.size() + 1) + " were given");
    typecode_ = std::move(args[0]);
    if (options_.check_typecode) {
      code_ = typecode_of(typecode_, true);
      if (!code_) bad_typecode();
    }
    value_ = checked(std::move(args[1]));
    hold(value_);
  }
  ~ValueObject() override { drop(value_); }

  std::string_view type_id() const noexcept override { return "Value"; }

  const std::vector<std::string>& exposed() const noexcept override {
    static const std::vector<std::string> names = {"get", "set"};
    return names;
  }

protected:
  Item value_locked() const override { return value_; }
  Item python_value_locked() const override {
    return Item::object(
        "multiprocessing.managers.Value", Item::tuple({}),
        Item::dict({Item::text("_typecode"), typecode_, Item::text("_value"), value_}));
  }
  std::string repr_locked(std::size_t max) const override {
    return "Value(" + repr_to(typecode_, max) + ", " + repr_to(value_, max) + ")";
  }

  Item dispatch(std::string_view m, std::vector<Item>& a, Kwargs& kw,
                std::vector<Item>& removed) override {
    if (m == "get") {
      no_args("Value.get", a, kw);
      return value_;
    }
    if (m == "set") {
      one_arg("Value.set", a, kw);
      Item v = checked(std::move(a[0]));
      hold(v);
      removed.push_back(std::exchange(value_, std::move(v)));
      return {};
    }
    throw AttributeError("'Value' object has no attribute " + py_quoted(m));
  }

private:
  Item checked(Item v) const { return code_ ? convert_to_typecode(*code_, v) : v; }

  Item typecode_;
  const Typecode* code_ = nullptr;
  Item value_;
};

// ---- Array ------------------------------------------------------------------------------------

class ArrayObject final : public Container {
public:
  ArrayObject(std::vector<Item> args, Kwargs kwargs, const ContainerOptions& o) : Container(o) {
    // Array(typecode, sequence, lock=True): array.array(typecode, sequence).
    for (auto& [name, v] : kwargs) {
      if (name == "typecode" && args.empty())
        args.push_back(std::move(v));
      else if (name == "sequence" && args.size() == 1)
        args.push_back(std::move(v));
      else if (name != "lock")
        throw TypeError("Array() got an unexpected keyword argument " + py_quoted(name));
    }
    if (args.size() < 2 || args.size() > 3)
      throw TypeError("Array() takes from 2 to 3 positional arguments but " +
                      std::to_string(args.size()) + " were given");
    if (args[0].kind() != Kind::text || code_points(args[0].as_string()) != 1)
      throw TypeError("array() argument 1 must be a unicode character, not " +
                      std::string(type_name(args[0])));
    code_ = typecode_of(args[0], false);
    if (!code_) bad_typecode();
    Item& init = args[1];
    const bool chars = code_->kind == Typecode::character;
    if (init.kind() == Kind::text && !chars)
      throw TypeError("cannot use a str to initialize an array with typecode '" +
                      std::string(1, code_->code) + "'");
    if (init.kind() == Kind::bytes || init.kind() == Kind::bytearray) {
      from_bytes(init.as_string());
      return;
    }
    std::vector<Item> e = iterate(std::move(init));
    check_size(e.size(), "Array()");
    items_.reserve(e.size());
    for (const Item& x : e) items_.push_back(convert_to_typecode(*code_, x));
  }

  std::string_view type_id() const noexcept override { return "Array"; }

  const std::vector<std::string>& exposed() const noexcept override {
    static const std::vector<std::string> names = {"__len__", "__getitem__", "__setitem__"};
    return names;
  }

protected:
  Item value_locked() const override { return Item::array(std::string(1, code_->code), items_); }
  std::string repr_locked(std::size_t max) const override {
    std::string out = "array('" + std::string(1, code_->code) + "'";
    if (items_.empty()) return out + ")";
    if (code_->kind == Typecode::character) {
      std::string s;
      for (const Item& x : items_) s += x.as_string();
      return out + ", " + repr_to(Item::text(std::move(s)), max) + ")";
    }
    out += ", [";
    for (std::size_t i = 0; i < items_.size() && out.size() <= max; ++i) {
      if (i) out += ", ";
      out += repr_to(items_[i], max);
    }
    return out + "])";
  }

  Item dispatch(std::string_view m, std::vector<Item>& a, Kwargs& kw, std::vector<Item>&) override {
    if (m == "__len__") {
      no_args("array.__len__", a, kw);
      return Item::integer(static_cast<std::int64_t>(items_.size()));
    }
    if (m == "__getitem__") {
      one_arg("array.__getitem__", a, kw);
      if (is_slice(a[0])) {
        const Slice s = slice_indices(a[0], items_.size());
        std::vector<Item> out;
        out.reserve(s.length);
        for (std::size_t i = 0; i < s.length; ++i) out.push_back(items_[s.at(i)]);
        return Item::array(std::string(1, code_->code), std::move(out));
      }
      return items_[index(a[0], "array index out of range")];
    }
    if (m == "__setitem__") {
      arg_range("array.__setitem__", "", a, kw, 2, 2);
      if (is_slice(a[0])) {
        const Slice s = slice_indices(a[0], items_.size());
        // Python assigns an array of the same typecode; troupe's wire sends a C++ client's
        // values as a `sequence`, taken as such an array.
        const std::vector<Item>* from = nullptr;
        if (a[1].is_array()) {
          if (a[1].array_typecode() != std::string_view(&code_->code, 1))
            throw TypeError("bad argument type for built-in operation");
          from = &a[1].array_items();
        } else if (a[1].kind() == Kind::sequence) {
          from = &a[1].elements();
        } else {
          throw TypeError("can only assign array (not \"" +
                          std::string(a[1].kind() == Kind::object ? "object" : type_name(a[1])) +
                          "\") to array slice");
        }
        std::vector<Item> e;
        for (const Item& x : *from) e.push_back(convert_to_typecode(*code_, x));
        if (s.step == 1) {
          check_size(items_.size() - s.length + e.size(), "array slice assignment");
          const auto lo = items_.begin() + s.start;
          items_.erase(lo, lo + static_cast<std::ptrdiff_t>(s.length));
          items_.insert(items_.begin() + s.start, std::make_move_iterator(e.begin()),
                        std::make_move_iterator(e.end()));
          return {};
        }
        if (e.size() != s.length)
          throw ValueError("attempt to assign array of size " + std::to_string(e.size()) +
                           " to extended slice of size " + std::to_string(s.length));
        for (std::size_t i = 0; i < s.length; ++i) items_[s.at(i)] = std::move(e[i]);
        return {};
      }
      const std::size_t i = index(a[0], "array assignment index out of range");
      items_[i] = convert_to_typecode(*code_, a[1]);
      return {};
    }
    throw AttributeError("'array.array' object has no attribute " + py_quoted(m));
  }

private:
  std::size_t index(const Item& i, const char* out_of_range) const {
    if (!i.is_integral()) throw TypeError("array indices must be integers");
    std::int64_t k = as_index(i);
    const auto n = static_cast<std::int64_t>(items_.size());
    if (k < 0) k += n;
    if (k < 0 || k >= n) throw IndexError(out_of_range);
    return static_cast<std::size_t>(k);
  }

  // array.array(typecode, bytes): the machine values in the bytes (little-endian here).
  void from_bytes(const std::string& b) {
    const std::size_t size = code_->bytes;
    if (b.size() % size != 0) throw ValueError("bytes length not a multiple of item size");
    check_size(b.size() / size, "Array()");
    items_.reserve(b.size() / size);
    for (std::size_t off = 0; off < b.size(); off += size) {
      std::uint64_t raw = 0;
      std::memcpy(&raw, b.data() + off, size);  // little-endian hosts (troupe's targets)
      switch (code_->kind) {
        case Typecode::signed_int: {
          const unsigned shift = 64 - 8 * static_cast<unsigned>(size);
          items_.push_back(Item::integer(static_cast<std::int64_t>(raw << shift) >> shift));
          break;
        }
        case Typecode::unsigned_int:
          items_.push_back(raw > static_cast<std::uint64_t>(kMaxIndex)
                               ? Item::uinteger(raw)
                               : Item::integer(static_cast<std::int64_t>(raw)));
          break;
        case Typecode::real:
          if (size == 4) {
            float f;
            std::memcpy(&f, &raw, 4);
            items_.push_back(Item::floating(f));
          } else {
            double d;
            std::memcpy(&d, &raw, 8);
            items_.push_back(Item::floating(d));
          }
          break;
        default: {  // a UCS-4 code point
          const auto cp = static_cast<std::uint32_t>(raw);
          if (cp > 0x10ffff)
            throw ValueError("character U+" + std::to_string(cp) +
                             " is not in range [U+0000; U+10ffff]");
          std::string s;
          append_utf8(cp, s);
          items_.push_back(Item::text(std::move(s)));
        }
      }
    }
  }

  const Typecode* code_ = nullptr;
  std::vector<Item> items_;
};

}  // namespace

std::unique_ptr<Container> make_container(std::string_view type_id, std::vector<Item> args,
                                          Kwargs kwargs, const ContainerOptions& options) {
  if (type_id == "dict") return std::make_unique<Dict>(std::move(args), std::move(kwargs), options);
  if (type_id == "list") return std::make_unique<List>(std::move(args), std::move(kwargs), options);
  if (type_id == "set") return std::make_unique<Set>(std::move(args), std::move(kwargs), options);
  if (type_id == "Namespace")
    return std::make_unique<NamespaceObject>(std::move(args), std::move(kwargs), options);
  if (type_id == "Value")
    return std::make_unique<ValueObject>(std::move(args), std::move(kwargs), options);
  if (type_id == "Array")
    return std::make_unique<ArrayObject>(std::move(args), std::move(kwargs), options);
  throw ValueError("no built-in container has the typeid " + py_quoted(type_id));
}

RefValues::RefValues(Values values) noexcept
    : values_(std::move(values)), outer_(std::exchange(tl_ref_values, this)) {}

RefValues::~RefValues() {
  tl_ref_values = outer_;
}

const Item* RefValues::find(const Ref& r) noexcept {
  for (const RefValues* v = tl_ref_values; v != nullptr; v = v->outer_)
    for (const auto& [key, value] : v->values_)
      if (key.second == r.id && key.first == r.address) return &value;
  return nullptr;
}

}  // namespace troupe::multiprocessing::managers::detail
