// The pickle subset of plain data (pickle.hpp). Opcode names and meanings are CPython's
// (Lib/pickletools.py documents each); the reading is a small stack machine over an arena of
// nodes, so that the memo shares a mutable list or dict as Python's does, and the result is
// made into an Item only at STOP (where a value that contains itself is refused).
#include "troupe/multiprocessing/managers/detail/pickle.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/typecodes.hpp"

namespace troupe::multiprocessing::managers::detail::pickle {
namespace {

// The opcodes of pickle protocols 0 to 5, by their pickletools names.
enum Op : unsigned char {
  MARK = '(',
  STOP = '.',
  POP = '0',
  POP_MARK = '1',
  DUP = '2',
  FLOAT = 'F',
  INT = 'I',
  BININT = 'J',
  BININT1 = 'K',
  LONG = 'L',
  BININT2 = 'M',
  NONE = 'N',
  PERSID = 'P',
  BINPERSID = 'Q',
  REDUCE = 'R',
  STRING = 'S',
  BINSTRING = 'T',
  SHORT_BINSTRING = 'U',
  UNICODE = 'V',
  BINUNICODE = 'X',
  APPEND = 'a',
  BUILD = 'b',
  GLOBAL = 'c',
  DICT = 'd',
  EMPTY_DICT = '}',
  APPENDS = 'e',
  GET = 'g',
  BINGET = 'h',
  INST = 'i',
  LONG_BINGET = 'j',
  LIST = 'l',
  EMPTY_LIST = ']',
  OBJ = 'o',
  PUT = 'p',
  BINPUT = 'q',
  LONG_BINPUT = 'r',
  SETITEM = 's',
  TUPLE = 't',
  EMPTY_TUPLE = ')',
  SETITEMS = 'u',
  BINFLOAT = 'G',
  PROTO = 0x80,
  NEWOBJ = 0x81,
  EXT1 = 0x82,
  EXT2 = 0x83,
  EXT4 = 0x84,
  TUPLE1 = 0x85,
  TUPLE2 = 0x86,
  TUPLE3 = 0x87,
  NEWTRUE = 0x88,
  NEWFALSE = 0x89,
  LONG1 = 0x8a,
  LONG4 = 0x8b,
  BINBYTES = 'B',
  SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c,
  BINUNICODE8 = 0x8d,
  BINBYTES8 = 0x8e,
  EMPTY_SET = 0x8f,
  ADDITEMS = 0x90,
  FROZENSET = 0x91,
  NEWOBJ_EX = 0x92,
  STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94,
  FRAME = 0x95,
  BYTEARRAY8 = 0x96,
  NEXT_BUFFER = 0x97,
  READONLY_BUFFER = 0x98,
};

const char* op_name(unsigned char op) noexcept {
  switch (op) {
    case MARK: return "MARK";
    case STOP: return "STOP";
    case POP: return "POP";
    case POP_MARK: return "POP_MARK";
    case DUP: return "DUP";
    case FLOAT: return "FLOAT";
    case INT: return "INT";
    case BININT: return "BININT";
    case BININT1: return "BININT1";
    case LONG: return "LONG";
    case BININT2: return "BININT2";
    case NONE: return "NONE";
    case PERSID: return "PERSID";
    case BINPERSID: return "BINPERSID";
    case REDUCE: return "REDUCE";
    case STRING: return "STRING";
    case BINSTRING: return "BINSTRING";
    case SHORT_BINSTRING: return "SHORT_BINSTRING";
    case UNICODE: return "UNICODE";
    case BINUNICODE: return "BINUNICODE";
    case APPEND: return "APPEND";
    case BUILD: return "BUILD";
    case GLOBAL: return "GLOBAL";
    case DICT: return "DICT";
    case EMPTY_DICT: return "EMPTY_DICT";
    case APPENDS: return "APPENDS";
    case GET: return "GET";
    case BINGET: return "BINGET";
    case INST: return "INST";
    case LONG_BINGET: return "LONG_BINGET";
    case LIST: return "LIST";
    case EMPTY_LIST: return "EMPTY_LIST";
    case OBJ: return "OBJ";
    case PUT: return "PUT";
    case BINPUT: return "BINPUT";
    case LONG_BINPUT: return "LONG_BINPUT";
    case SETITEM: return "SETITEM";
    case TUPLE: return "TUPLE";
    case EMPTY_TUPLE: return "EMPTY_TUPLE";
    case SETITEMS: return "SETITEMS";
    case BINFLOAT: return "BINFLOAT";
    case PROTO: return "PROTO";
    case NEWOBJ: return "NEWOBJ";
    case EXT1: return "EXT1";
    case EXT2: return "EXT2";
    case EXT4: return "EXT4";
    case TUPLE1: return "TUPLE1";
    case TUPLE2: return "TUPLE2";
    case TUPLE3: return "TUPLE3";
    case NEWTRUE: return "NEWTRUE";
    case NEWFALSE: return "NEWFALSE";
    case LONG1: return "LONG1";
    case LONG4: return "LONG4";
    case BINBYTES: return "BINBYTES";
    case SHORT_BINBYTES: return "SHORT_BINBYTES";
    case SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case BINUNICODE8: return "BINUNICODE8";
    case BINBYTES8: return "BINBYTES8";
    case EMPTY_SET: return "EMPTY_SET";
    case ADDITEMS: return "ADDITEMS";
    case FROZENSET: return "FROZENSET";
    case NEWOBJ_EX: return "NEWOBJ_EX";
    case STACK_GLOBAL: return "STACK_GLOBAL";
    case MEMOIZE: return "MEMOIZE";
    case FRAME: return "FRAME";
    case BYTEARRAY8: return "BYTEARRAY8";
    case NEXT_BUFFER: return "NEXT_BUFFER";
    case READONLY_BUFFER: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

// The constructors of plain data that protocols 2 to 4 write as a global and a REDUCE.
enum class Ctor : std::uint8_t {
  set,
  frozenset,
  bytearray,
  bytes,
  slice,
  range,
  codecs_encode,
  array,                // array.array(typecode, list): protocol 2's form of an array
  array_reconstructor,  // array._array_reconstructor(array.array, typecode, format, bytes): 3+
};

std::optional<Ctor> known_global(std::string_view module, std::string_view name) {
  if (module == "builtins" || module == "__builtin__") {
    if (name == "set") return Ctor::set;
    if (name == "frozenset") return Ctor::frozenset;
    if (name == "bytearray") return Ctor::bytearray;
    if (name == "bytes") return Ctor::bytes;
    if (name == "slice") return Ctor::slice;
    if (name == "range" || name == "xrange") return Ctor::range;
  }
  if (module == "_codecs" && name == "encode") return Ctor::codecs_encode;
  if (module == "array" && name == "array") return Ctor::array;
  if (module == "array" && name == "_array_reconstructor") return Ctor::array_reconstructor;
  return std::nullopt;
}

// The classes whose objects are read as data (Kind::object): the exceptions a manager sends
// back (its '#ERROR' replies) and its Token. Protocol 2 names the builtin exceptions' module
// 'exceptions'. `newobj`: Python writes it as NEWOBJ and BUILD (a Token's class takes no
// arguments to rebuild it from), the others as a call of the class and REDUCE.
struct KnownClass {
  std::string_view module;
  std::string_view name;
  bool newobj = false;
};

constexpr std::string_view kBuiltinExceptions[] = {
    "BaseException",
    "Exception",
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "EOFError",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "ImportError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "NotADirectoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "ProcessLookupError",
    "RecursionError",
    "ReferenceError",
    "RuntimeError",
    "StopAsyncIteration",
    "StopIteration",
    "SystemError",
    "SystemExit",
    "TimeoutError",
    "TypeError",
    "UnboundLocalError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
};

constexpr KnownClass kOtherClasses[] = {
    {"queue", "Empty"},
    {"_queue", "Empty"},
    {"queue", "Full"},
    {"queue", "ShutDown"},
    {"threading", "BrokenBarrierError"},
    {"multiprocessing.managers", "RemoteError"},
    {"multiprocessing.managers", "Token", true},
    // What a Value's and a Namespace's _getvalue() is (the objects, pickled as Python does:
    // NEWOBJ, then BUILD of their __dict__).
    {"multiprocessing.managers", "Value", true},
    {"multiprocessing.managers", "Namespace", true},
    {"multiprocessing.context", "ProcessError"},
    {"multiprocessing.context", "BufferTooShort"},
    {"multiprocessing.context", "TimeoutError"},
    {"multiprocessing.context", "AuthenticationError"},
    // A proxy a Python client sends (an argument, an element stored in a managed container):
    // BaseProxy.__reduce__ writes RebuildProxy(proxy type, token, serializer, kwds), the proxy
    // type a global among the arguments: read as data, a reference to the token's object.
    {"multiprocessing.managers", "RebuildProxy"},
};

// The proxy types of multiprocessing.managers, which RebuildProxy's first argument names: the
// only classes read as values (Item::object with args None: the class itself).
constexpr std::string_view kProxyTypes[] = {
    "AutoProxy",      "BaseProxy",     "ListProxy",     "BaseListProxy",
    "DictProxy",      "SetProxy",      "ValueProxy",    "ArrayProxy",
    "NamespaceProxy", "AcquirerProxy", "EventProxy",    "ConditionProxy",
    "BarrierProxy",   "PoolProxy",     "IteratorProxy", "AsyncResultProxy",
};

bool is_proxy_type(std::string_view module, std::string_view name) {
  if (module != "multiprocessing.managers") return false;
  for (std::string_view t : kProxyTypes)
    if (name == t) return true;
  return false;
}

// The class's name as Item::object keeps it ("module.name"), if it is one of those read.
// Protocol 2 writes Python 2's names (pickle's fix_imports): 'exceptions' for builtins, 'Queue'
// for queue, 'multiprocessing' for multiprocessing.context.
std::optional<std::string> known_class(std::string_view module, std::string_view name) {
  if (module == "builtins" || module == "__builtin__" || module == "exceptions")
    for (std::string_view e : kBuiltinExceptions)
      if (name == e) return "builtins." + std::string(name);
  if (module == "Queue") module = "queue";
  if (module == "multiprocessing") module = "multiprocessing.context";
  if (is_proxy_type(module, name)) return std::string(module) + "." + std::string(name);
  for (const KnownClass& c : kOtherClasses)
    if (module == c.module && name == c.name) return std::string(module) + "." + std::string(name);
  return std::nullopt;
}

bool written_as_newobj(std::string_view qualified) {
  for (const KnownClass& c : kOtherClasses)
    if (c.newobj && qualified.size() == c.module.size() + 1 + c.name.size() &&
        qualified.starts_with(c.module) && qualified.ends_with(c.name))
      return true;
  return false;
}

// A value being read: a finished leaf (any Item), a container that opcodes may still change
// (shared through the memo by its index), one of the known constructors, one of the known
// classes, or an object of one (its args, then the state BUILD gave).
enum class NodeKind : std::uint8_t { leaf, list, tuple, dict, set, frozenset, ctor, cls, object };

struct Node {
  NodeKind kind = NodeKind::leaf;
  Ctor ctor = Ctor::set;
  bool building = false;   // on the path being made into an Item (a cycle if met again)
  std::size_t weight = 1;  // a leaf's values (a set made by a constructor holds several)
  std::size_t depth = 0;   // a leaf's own nesting (a set of tuples made by a constructor: 2)
  std::size_t bytes = 0;   // a leaf's str/bytes bytes
  Item leaf;
  std::vector<std::uint32_t> children;  // a dict's: k0, v0, k1, v1, ...
};

std::size_t count_values(const Item& x) {
  std::size_t n = 1;
  if (x.is_container() || x.kind() == Kind::object)
    for (const Item& e : x.elements()) n += count_values(e);
  return n;
}

// The nesting inside `x` (0 for a scalar). `x` was made within max_depth.
std::size_t nesting(const Item& x) {
  std::size_t d = 0;
  if (x.is_container() || x.kind() == Kind::object)
    for (const Item& e : x.elements()) d = std::max(d, 1 + nesting(e));
  return d;
}

// Whether `s` is what Python's 'utf-8' codec with 'surrogatepass' (pickle's str) decodes:
// well-formed UTF-8, lone surrogates (ED A0..BF ..) allowed.
bool valid_text(const std::string& s) {
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = b[i];
    std::size_t len;
    unsigned cp, min;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((b[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (b[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff) return false;
    i += len;
  }
  return true;
}

std::size_t count_bytes(const Item& x) {
  switch (x.kind()) {
    case Kind::text:
    case Kind::bytes:
    case Kind::bytearray: return x.as_string().size();
    default: break;
  }
  std::size_t n = 0;
  if (x.is_container() || x.kind() == Kind::object)
    for (const Item& e : x.elements()) n += count_bytes(e);
  return n;
}

// Keeps the first of equal keys (a dict: its position, with the last value), as Python does.
class Distinct {
public:
  // The index in `out` of an element equal to `x`, if there is one; else adds x's index.
  std::optional<std::size_t> find_or_add(const Item& x, std::size_t index,
                                         const std::vector<Item>& out, std::size_t stride) {
    auto& bucket = by_hash_[hash(x)];  // TypeError for an unhashable key, as Python's
    for (std::size_t i : bucket)
      if (same_or_equal(out[i * stride], x)) return i;
    bucket.push_back(index);
    return std::nullopt;
  }

private:
  std::unordered_map<std::int64_t, std::vector<std::size_t>> by_hash_;
};

class Reader {
public:
  Reader(std::span<const std::byte> data, const Limits& limits) : data_(data), limits_(limits) {}

  Item read() {
    if (data_.empty() || static_cast<unsigned char>(data_[0]) != PROTO)
      throw ValueError(
          "pickle: not a pickle of protocol 2 to 5 (it does not begin with PROTO); protocols 0 "
          "and 1 are not read");
    for (;;) {
      op_at_ = pos_;
      op_ = 0;  // the pickle may end here: no opcode to name
      const unsigned char op = byte();
      op_ = op;
      switch (op) {
        case PROTO: {
          const unsigned v = byte();
          if (v < 2 || v > 5)
            throw ValueError("pickle: protocol " + std::to_string(v) +
                             " is not read (protocols 2 to 5)");
          break;
        }
        case FRAME: (void)length(8); break;
        case STOP: {
          if (stack_.empty()) fail("STOP with an empty stack");
          return make(top(), 1);  // one budget (made_, out_bytes_) for the whole pickle
        }
        case NONE: push_leaf(Item::none()); break;
        case NEWTRUE: push_leaf(Item::boolean(true)); break;
        case NEWFALSE: push_leaf(Item::boolean(false)); break;
        case BININT: {
          const auto u = static_cast<std::uint32_t>(uint_le(4));
          push_leaf(Item::integer(static_cast<std::int32_t>(u)));
          break;
        }
        case BININT1: push_leaf(Item::integer(static_cast<std::int64_t>(uint_le(1)))); break;
        case BININT2: push_leaf(Item::integer(static_cast<std::int64_t>(uint_le(2)))); break;
        case LONG1: push_leaf(long_int(static_cast<std::size_t>(uint_le(1)))); break;
        case LONG4: {
          const auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(uint_le(4)));
          if (n < 0) fail("a negative length");
          push_leaf(long_int(static_cast<std::size_t>(n)));
          break;
        }
        case BINFLOAT: {
          const std::uint64_t bits = uint_be(8);
          push_leaf(Item::floating(std::bit_cast<double>(bits)));
          break;
        }
        case SHORT_BINUNICODE: push_leaf(Item::text(text(length(1)))); break;
        case BINUNICODE: push_leaf(Item::text(text(length(4)))); break;
        case BINUNICODE8: push_leaf(Item::text(text(length(8)))); break;
        case SHORT_BINBYTES: push_leaf(Item::bytes(string(length(1)))); break;
        case BINBYTES: push_leaf(Item::bytes(string(length(4)))); break;
        case BINBYTES8: push_leaf(Item::bytes(string(length(8)))); break;
        case BYTEARRAY8: push_leaf(Item::bytearray(string(length(8)))); break;
        case EMPTY_TUPLE: push_node(NodeKind::tuple, {}); break;
        case TUPLE1:
        case TUPLE2:
        case TUPLE3: {
          const std::size_t n = op - TUPLE1 + 1;
          if (stack_.size() < n + mark_floor()) fail("too few values on the stack");
          std::vector<std::uint32_t> items(stack_.end() - static_cast<std::ptrdiff_t>(n),
                                           stack_.end());
          stack_.resize(stack_.size() - n);
          push_node(NodeKind::tuple, std::move(items));
          break;
        }
        case TUPLE: push_node(NodeKind::tuple, pop_mark()); break;
        case EMPTY_LIST: push_node(NodeKind::list, {}); break;
        case LIST: push_node(NodeKind::list, pop_mark()); break;
        case EMPTY_DICT: push_node(NodeKind::dict, {}); break;
        case DICT: {
          auto items = pop_mark();
          if (items.size() % 2 != 0) fail("an odd number of keys and values");
          push_node(NodeKind::dict, std::move(items));
          break;
        }
        case EMPTY_SET: push_node(NodeKind::set, {}); break;
        case FROZENSET: push_node(NodeKind::frozenset, pop_mark()); break;
        case APPEND: {
          const std::uint32_t v = pop();
          add_to(top(), NodeKind::list, {v});
          break;
        }
        case APPENDS: {
          auto items = pop_mark();
          add_to(top(), NodeKind::list, items);
          break;
        }
        case SETITEM: {
          const std::uint32_t v = pop();
          const std::uint32_t k = pop();
          add_to(top(), NodeKind::dict, {k, v});
          break;
        }
        case SETITEMS: {
          auto items = pop_mark();
          if (items.size() % 2 != 0) fail("an odd number of keys and values");
          add_to(top(), NodeKind::dict, items);
          break;
        }
        case ADDITEMS: {
          auto items = pop_mark();
          add_to(top(), NodeKind::set, items);
          break;
        }
        case MARK:
          marks_.push_back(stack_.size());
          check_stack();
          break;
        case POP:
          if (stack_.size() > mark_floor())
            stack_.pop_back();
          else
            (void)pop_mark();
          break;
        case POP_MARK: (void)pop_mark(); break;
        case DUP: {
          const std::uint32_t t = top();
          stack_.push_back(t);
          check_stack();
          break;
        }
        case BINPUT: put(uint_le(1)); break;
        case LONG_BINPUT: put(uint_le(4)); break;
        case MEMOIZE: put(memo_.size()); break;
        case BINGET: get(uint_le(1)); break;
        case LONG_BINGET: get(uint_le(4)); break;
        case GLOBAL: {
          const std::string module = line();
          const std::string name = line();
          push_global(module, name);
          break;
        }
        case STACK_GLOBAL: {
          const std::uint32_t name = pop();
          const std::uint32_t module = pop();
          const Node& m = nodes_[module];
          const Node& n = nodes_[name];
          if (m.kind != NodeKind::leaf || m.leaf.kind() != Kind::text || n.kind != NodeKind::leaf ||
              n.leaf.kind() != Kind::text)
            fail("a module or name that is not a str");
          push_global(m.leaf.as_string(), n.leaf.as_string());
          break;
        }
        case REDUCE: reduce(); break;
        case NEWOBJ: {
          const std::uint32_t args = pop();
          const std::uint32_t cls = pop();
          if (nodes_[cls].kind != NodeKind::cls)
            fail(
                "refused: it builds an object of a class other than the exceptions and Token "
                "read");
          if (nodes_[args].kind != NodeKind::tuple) fail("its arguments are not a tuple");
          push_object(cls, args);
          break;
        }
        case BUILD: {
          const std::uint32_t state = pop();
          Node& n = nodes_[top()];
          if (n.kind != NodeKind::object)
            fail("refused: it sets the state of something other than an exception or Token");
          n.children.resize(1);
          n.children.push_back(state);
          break;
        }
        case NEWOBJ_EX:
        case INST:
        case OBJ: fail("refused: it builds an object of a class; only plain data is read");
        case PERSID:
        case BINPERSID:
        case EXT1:
        case EXT2:
        case EXT4:
          fail(
              "refused: it names an object by a persistent id or an extension code; only "
              "plain data is read");
        case NEXT_BUFFER:
        case READONLY_BUFFER: fail("refused: out-of-band buffers are not read");
        case INT:
        case LONG:
        case FLOAT:
        case STRING:
        case BINSTRING:
        case SHORT_BINSTRING:
        case UNICODE:
        case GET:
        case PUT:
          fail("refused: an opcode of protocols 0 and 1, which protocols 2 to 5 do not send");
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          throw ValueError(std::string("pickle: unknown opcode ") + hex + " at offset " +
                           std::to_string(op_at_));
        }
      }
    }
  }

private:
  [[noreturn]] void fail(const std::string& what) const {
    const char* name = op_name(op_);
    throw ValueError(std::string("pickle: ") + (name ? name : "opcode") + " at offset " +
                     std::to_string(op_at_) + ": " + what);
  }

  void need(std::size_t n) const {
    if (data_.size() - pos_ < n)
      fail("the pickle ends early (" + std::to_string(n) + " bytes needed, " +
           std::to_string(data_.size() - pos_) + " left)");
  }

  unsigned char byte() {
    need(1);
    return static_cast<unsigned char>(data_[pos_++]);
  }

  std::uint64_t uint_le(std::size_t n) {
    need(n);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i)
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }

  std::uint64_t uint_be(std::size_t n) {
    need(n);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(data_[pos_ + i]);
    pos_ += n;
    return v;
  }

  // A length of `n` bytes, checked against what is left of the pickle (nothing is allocated
  // for a length the pickle cannot hold).
  std::size_t length(std::size_t n) {
    const std::uint64_t len = uint_le(n);
    if (len > data_.size() - pos_)
      fail("a length of " + std::to_string(len) + " bytes, but only " +
           std::to_string(data_.size() - pos_) + " are left");
    return static_cast<std::size_t>(len);
  }

  std::string string(std::size_t n) {
    in_bytes_ += n;
    if (in_bytes_ > limits_.max_bytes)
      fail("more than max_bytes (" + std::to_string(limits_.max_bytes) + ") of str and bytes");
    std::string s(reinterpret_cast<const char*>(data_.data() + pos_), n);
    pos_ += n;
    return s;
  }

  // A str's bytes: UTF-8 as Python writes it.
  std::string text(std::size_t n) {
    std::string s = string(n);
    if (!valid_text(s)) fail("a str that is not UTF-8");
    return s;
  }

  // A text line (GLOBAL's module and name), without its newline.
  std::string line() {
    const std::size_t max = std::min<std::size_t>(data_.size() - pos_, 1024);
    for (std::size_t i = 0; i < max; ++i) {
      if (data_[pos_ + i] == std::byte{'\n'}) {
        std::string s(reinterpret_cast<const char*>(data_.data() + pos_), i);
        pos_ += i + 1;
        return s;
      }
    }
    fail("a line without its newline in its first " + std::to_string(max) + " bytes");
  }

  // LONG1/LONG4's little-endian two's complement integer of n bytes, within 64 bits.
  Item long_int(std::size_t n) {
    need(n);
    const auto* b = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
    pos_ += n;
    if (n == 0) return Item::integer(0);
    const bool negative = (b[n - 1] & 0x80) != 0;
    // Drop the bytes that only extend the sign.
    std::size_t len = n;
    const unsigned char ext = negative ? 0xff : 0x00;
    while (len > 1 && b[len - 1] == ext && ((b[len - 2] & 0x80) != 0) == negative) --len;
    if (!negative && len == 9 && b[8] == 0x00) {  // 2**63 to 2**64 - 1
      std::uint64_t u = 0;
      for (std::size_t i = 0; i < 8; ++i) u |= static_cast<std::uint64_t>(b[i]) << (8 * i);
      return Item::uinteger(u);
    }
    if (len > 8)
      fail("an integer of " + std::to_string(n) +
           " bytes, beyond 64 bits: only integers from -2**63 to 2**64 - 1 are read");
    std::uint64_t u = negative ? ~std::uint64_t{0} : 0;
    for (std::size_t i = 0; i < len; ++i) {
      u &= ~(std::uint64_t{0xff} << (8 * i));
      u |= static_cast<std::uint64_t>(b[i]) << (8 * i);
    }
    return Item::integer(static_cast<std::int64_t>(u));
  }

  void check_stack() const {
    if (stack_.size() + marks_.size() > limits_.max_nodes)
      fail("more than max_nodes (" + std::to_string(limits_.max_nodes) +
           ") values and marks on the stack");
  }

  std::uint32_t new_node(Node n) {
    if (nodes_.size() >= limits_.max_nodes)
      fail("more than max_nodes (" + std::to_string(limits_.max_nodes) + ") values");
    nodes_.push_back(std::move(n));
    return static_cast<std::uint32_t>(nodes_.size() - 1);
  }

  void push_leaf(Item x) {
    Node n;
    n.bytes = count_bytes(x);
    n.leaf = std::move(x);
    stack_.push_back(new_node(std::move(n)));
    check_stack();
  }

  void push_node(NodeKind kind, std::vector<std::uint32_t> children) {
    Node n;
    n.kind = kind;
    n.children = std::move(children);
    stack_.push_back(new_node(std::move(n)));
    check_stack();
  }

  void push_global(const std::string& module, const std::string& name) {
    Node n;
    if (const auto ctor = known_global(module, name)) {
      n.kind = NodeKind::ctor;
      n.ctor = *ctor;
    } else if (auto cls = known_class(module, name)) {
      n.kind = NodeKind::cls;
      n.leaf = Item::text(std::move(*cls));
    } else {
      const std::string shown = (module + "." + name).substr(0, 200);
      fail("the global '" + shown +
           "' is refused: it names code, and only plain data is read (the globals read are "
           "builtins.set, frozenset, bytearray, bytes, slice, range, _codecs.encode, "
           "array.array, and the exceptions and Token a manager sends)");
    }
    stack_.push_back(new_node(std::move(n)));
    check_stack();
  }

  // An object of class node `cls` made from the tuple node `args` (REDUCE or NEWOBJ).
  void push_object(std::uint32_t cls, std::uint32_t args) {
    Node n;
    n.kind = NodeKind::object;
    n.leaf = nodes_[cls].leaf;  // the class's name
    n.children.push_back(args);
    stack_.push_back(new_node(std::move(n)));
    check_stack();
  }

  std::size_t mark_floor() const { return marks_.empty() ? 0 : marks_.back(); }

  std::uint32_t pop() {
    if (stack_.size() <= mark_floor()) fail("no value on the stack (above the last MARK)");
    const std::uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }

  std::uint32_t top() const {
    if (stack_.size() <= mark_floor()) fail("no value on the stack (above the last MARK)");
    return stack_.back();
  }

  std::vector<std::uint32_t> pop_mark() {
    if (marks_.empty()) fail("no MARK before it");
    const std::size_t at = marks_.back();
    marks_.pop_back();
    std::vector<std::uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(at),
                                     stack_.end());
    stack_.resize(at);
    return items;
  }

  void add_to(std::uint32_t target, NodeKind kind, const std::vector<std::uint32_t>& items) {
    Node& n = nodes_[target];
    if (n.kind != kind) fail("the value below is not a " + std::string(kind_text(kind)));
    n.children.insert(n.children.end(), items.begin(), items.end());
  }

  static const char* kind_text(NodeKind k) noexcept {
    switch (k) {
      case NodeKind::list: return "list";
      case NodeKind::tuple: return "tuple";
      case NodeKind::dict: return "dict";
      case NodeKind::set: return "set";
      case NodeKind::frozenset: return "frozenset";
      case NodeKind::ctor: return "constructor";
      case NodeKind::cls: return "class";
      case NodeKind::object: return "object";
      case NodeKind::leaf: break;
    }
    return "value";
  }

  void put(std::uint64_t index) {
    const std::uint32_t t = top();
    const std::size_t max = std::min(kMaxMemo, limits_.max_nodes);
    if (memo_.size() >= max && !memo_.contains(index))
      fail("more than " + std::to_string(max) + " memo entries");
    memo_[index] = t;
  }

  void get(std::uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " was never stored");
    stack_.push_back(it->second);
    check_stack();
  }

  // REDUCE: one of the known constructors, applied to its arguments as data.
  void reduce() {
    const std::uint32_t args_id = pop();
    const std::uint32_t fn_id = pop();
    if (nodes_[args_id].kind != NodeKind::tuple) fail("its arguments are not a tuple");
    if (nodes_[fn_id].kind == NodeKind::cls) return push_object(fn_id, args_id);
    if (nodes_[fn_id].kind != NodeKind::ctor)
      fail(
          "refused: it calls something other than the constructors of plain data and the "
          "exceptions read");
    if (nodes_[fn_id].ctor == Ctor::array_reconstructor) return reconstruct_array(args_id);
    const Item args = make(args_id, 1);  // counted in the pickle's one budget
    const auto& a = args.elements();
    Item result;
    switch (nodes_[fn_id].ctor) {
      case Ctor::set:
      case Ctor::frozenset: {
        std::vector<Item> elements;
        if (a.size() > 1) fail("set() or frozenset() takes at most one argument");
        if (a.size() == 1) {
          if (!a[0].is_container() || a[0].kind() == Kind::dict || a[0].kind() == Kind::slice)
            fail("set() or frozenset() of a " + std::string(type_name(a[0])));
          elements = distinct(a[0].elements());
        }
        result = nodes_[fn_id].ctor == Ctor::set ? Item::set(std::move(elements))
                                                 : Item::frozenset(std::move(elements));
        break;
      }
      case Ctor::bytearray:
      case Ctor::bytes: {
        std::string b;
        if (a.size() == 1 && (a[0].kind() == Kind::bytes || a[0].kind() == Kind::bytearray))
          b = a[0].as_string();
        else if (a.size() == 2 && a[0].kind() == Kind::text && is_latin1_name(a[1]))
          b = latin1(a[0].as_string());
        else if (!a.empty())
          fail("bytes() or bytearray() of arguments other than bytes or (str, 'latin1')");
        result = nodes_[fn_id].ctor == Ctor::bytes ? Item::bytes(std::move(b))
                                                   : Item::bytearray(std::move(b));
        break;
      }
      case Ctor::slice: {
        if (a.size() != 3) fail("slice() of other than three arguments");
        for (const Item& e : a)
          if (!e.is_none() && e.kind() != Kind::integer && e.kind() != Kind::uinteger)
            fail("slice() of a " + std::string(type_name(e)) + " (None or int only)");
        result = Item::slice(a[0], a[1], a[2]);
        break;
      }
      case Ctor::range: {
        // range(start, stop, step), as range's __reduce__ writes it: read as the tuple of its
        // integers (a range is data: `manager.list(range(10))` is the docs' own example).
        if (a.size() != 3) fail("range() of other than three arguments");
        for (const Item& e : a)
          if (e.kind() != Kind::integer)
            fail("range() of a " + std::string(type_name(e)) + " (64-bit int only)");
        const std::int64_t start = a[0].as_int(), stop = a[1].as_int(), step = a[2].as_int();
        if (step == 0) fail("range() with a step of 0");
        // Its length, in unsigned 64 bits (stop - start may overflow a signed one).
        std::uint64_t len = 0;
        const auto ustart = static_cast<std::uint64_t>(start);
        const auto ustop = static_cast<std::uint64_t>(stop);
        if (step > 0 && start < stop)
          len = (ustop - ustart - 1) / static_cast<std::uint64_t>(step) + 1;
        if (step < 0 && start > stop)
          len = (ustart - ustop - 1) / (static_cast<std::uint64_t>(-(step + 1)) + 1) + 1;
        // Charged when made, not only where the result uses it: a few bytes of pickle (ranges
        // popped, or never reached) must not make more than the budget's worth of values.
        if (len > limits_.max_nodes - std::min(ranged_, limits_.max_nodes))
          fail("range() of more integers than max_nodes (" + std::to_string(limits_.max_nodes) +
               ") in the pickle's ranges together");
        ranged_ += static_cast<std::size_t>(len);
        std::vector<Item> elements;
        elements.reserve(static_cast<std::size_t>(len));
        for (std::uint64_t i = 0; i < len; ++i)  // wraps as two's complement: each is in range
          elements.push_back(Item::integer(
              static_cast<std::int64_t>(ustart + i * static_cast<std::uint64_t>(step))));
        result = Item::tuple(std::move(elements));
        break;
      }
      case Ctor::codecs_encode: {
        if (a.size() != 2 || a[0].kind() != Kind::text || !is_latin1_name(a[1]))
          fail("_codecs.encode() of other than (str, 'latin1')");
        result = Item::bytes(latin1(a[0].as_string()));
        break;
      }
      case Ctor::array: {
        if (a.size() == 2 && a[1].kind() == Kind::bytes) {
          // (typecode, bytes): how multiprocessing.managers itself pickles an array
          // (reduce_array), its items as this machine's values (little-endian, LP64).
          const Typecode& code = array_code(a[0]);
          result = array_from_bytes(code, native_format(code), a[1].as_string());
          break;
        }
        if (a.size() != 2 || a[1].kind() != Kind::list)
          fail("array.array() of other than (typecode, list) or (typecode, bytes)");
        const Typecode& code = array_code(a[0]);
        std::vector<Item> items;
        items.reserve(a[1].elements().size());
        for (const Item& e : a[1].elements()) items.push_back(array_item(code, e));
        result = Item::array(a[0].as_string(), std::move(items));
        break;
      }
      case Ctor::array_reconstructor: break;  // above
    }
    push_made(std::move(result));
  }

  void push_made(Item result) {
    Node n;
    n.weight = count_values(result);
    n.bytes = count_bytes(result);
    n.depth = nesting(result);
    n.leaf = std::move(result);
    stack_.push_back(new_node(std::move(n)));
    check_stack();
  }

  // The typecode of an array; one Python's array module lacks fails.
  const Typecode& array_code(const Item& typecode) const {
    if (typecode.kind() == Kind::text && typecode.as_string().size() == 1)
      if (const Typecode* t = find_typecode(typecode.as_string()[0])) return *t;
    fail("an array of typecode " + repr(typecode, 20) +
         " (one of b, B, u, w, h, H, i, I, l, L, q, Q, f, d)");
  }

  // array._array_reconstructor(array.array, typecode, mformat_code, items): how protocols 3 and
  // up write an array.array, its items as machine values in the format CPython's arraymodule.c
  // numbers (0-21: u/int8, u/int16, u/int32, u/int64 each LE then BE; float, double; UTF-16,
  // UTF-32). Read as Item::array, each value decoded; as many values as the range() budget
  // (max_nodes) allows.
  void reconstruct_array(std::uint32_t args_id) {
    const std::vector<std::uint32_t> children = nodes_[args_id].children;
    if (children.size() != 4) fail("array._array_reconstructor() of other than four arguments");
    const Node& cls = nodes_[children[0]];
    if (cls.kind != NodeKind::ctor || cls.ctor != Ctor::array)
      fail("array._array_reconstructor() of a class other than array.array");
    const Item typecode = make(children[1], 2);
    const Item format = make(children[2], 2);
    const Item data = make(children[3], 2);
    const Typecode& code = array_code(typecode);
    if (format.kind() != Kind::integer || format.as_int() < 0 || format.as_int() > 21)
      fail("array._array_reconstructor() with the machine format " + repr(format, 20) +
           " (0 to 21)");
    if (data.kind() != Kind::bytes)
      fail("array._array_reconstructor() of items in a " + std::string(type_name(data)) +
           " (bytes only)");
    const int f = static_cast<int>(format.as_int());
    const bool chars = f >= 18, floats = f == 14 || f == 15 || f == 16 || f == 17;
    if ((code.kind == Typecode::character) != chars || (code.kind == Typecode::real) != floats)
      fail("array._array_reconstructor() of typecode '" + typecode.as_string() +
           "' with the machine format " + std::to_string(f));
    push_made(array_from_bytes(code, f, data.as_string()));
  }

  // One value of an array of typecode `t` as Python's array holds it (array('b', [1000]) is
  // Python's OverflowError), or a failure naming it.
  Item array_item(const Typecode& t, const Item& e) const {
    try {
      return convert_to_typecode(t, e);
    } catch (const std::exception& x) {  // TypeError, OverflowError
      fail("array.array('" + std::string(1, t.code) + "') holding " + repr(e, 40) + " (" +
           x.what() + ")");
    }
  }

  // The items of an array of `typecode` in machine format `f` (0-21), as Item::array.
  Item array_from_bytes(const Typecode& typecode, int f, const std::string& b) {
    const bool chars = f >= 18, floats = f == 14 || f == 15 || f == 16 || f == 17;
    // The format's item size, signedness and byte order.
    std::size_t size = 0;
    bool is_signed = false;
    if (f <= 1) {
      size = 1;
      is_signed = f == 1;
    } else if (f <= 13) {
      size = std::size_t{2} << ((f - 2) / 4);
      is_signed = (f - 2) % 4 >= 2;
    } else if (floats) {
      size = f < 16 ? 4 : 8;
    } else {
      size = f < 20 ? 2 : 4;
    }
    const bool big = f >= 2 && f % 2 == 1;
    if (b.size() % size != 0) fail("array items whose length is not a multiple of the item size");
    const std::size_t count = b.size() / size;
    if (count > limits_.max_nodes - std::min(ranged_, limits_.max_nodes))
      fail("an array of more values than max_nodes (" + std::to_string(limits_.max_nodes) +
           ") with the pickle's ranges");
    ranged_ += count;
    auto word = [&](std::size_t at) {
      std::uint64_t v = 0;
      for (std::size_t k = 0; k < size; ++k) {
        const auto byte = static_cast<std::uint64_t>(static_cast<unsigned char>(b[at + k]));
        v |= byte << (8 * (big ? size - 1 - k : k));
      }
      return v;
    };
    std::vector<Item> items;
    items.reserve(chars && size == 2 ? 0 : count);
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint64_t v = word(i * size);
      if (floats) {
        items.push_back(Item::floating(
            size == 4 ? static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(v)))
                      : std::bit_cast<double>(v)));
      } else if (chars) {
        std::uint32_t cp = static_cast<std::uint32_t>(v);
        if (size == 2 && cp >= 0xd800 && cp < 0xdc00 && i + 1 < count) {
          const auto low = static_cast<std::uint32_t>(word((i + 1) * size));
          if (low >= 0xdc00 && low < 0xe000) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            ++i;
          }
        }
        if (cp > 0x10ffff)  // a lone surrogate is one, as Python's str holds it
          fail("an array of characters holding the code " + std::to_string(cp) +
               " (beyond Unicode)");
        std::string s;
        append_utf8(cp, s);
        items.push_back(Item::text(std::move(s)));
      } else if (is_signed) {
        const unsigned shift = static_cast<unsigned>(64 - 8 * size);
        items.push_back(Item::integer(static_cast<std::int64_t>(v << shift) >> shift));
      } else if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        items.push_back(Item::uinteger(v));
      } else {
        items.push_back(Item::integer(static_cast<std::int64_t>(v)));
      }
    }
    if (!chars)  // a value of another size than the typecode's must fit it, as in Python
      for (Item& x : items) x = array_item(typecode, x);
    return Item::array(std::string(1, typecode.code), std::move(items));
  }

  static bool is_latin1_name(const Item& x) {
    if (x.kind() != Kind::text) return false;
    const std::string& s = x.as_string();
    return s == "latin1" || s == "latin-1" || s == "latin_1" || s == "iso-8859-1";
  }

  // The code points of UTF-8 `s` as bytes (each below 256), as str.encode('latin1').
  std::string latin1(const std::string& s) const {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
        i += 1;
      } else if ((c & 0xe0) == 0xc0 && i + 1 < s.size() &&
                 (static_cast<unsigned char>(s[i + 1]) & 0xc0) == 0x80) {
        const unsigned cp = ((c & 0x1fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3fu);
        if (cp < 0x80 || cp > 0xff) fail("a str that is not latin-1 for bytes");
        out.push_back(static_cast<char>(cp));
        i += 2;
      } else {
        fail("a str that is not latin-1 for bytes");
      }
    }
    return out;
  }

  std::vector<Item> distinct(const std::vector<Item>& in) const {
    std::vector<Item> out;
    Distinct seen;
    for (const Item& x : in)
      if (!seen.find_or_add(x, out.size(), out, 1)) out.push_back(x);
    return out;
  }

  // The node as an Item: containers made from their children now (a shared one copied at each
  // use), within the limits.
  Item make(std::uint32_t id, std::size_t depth) {
    Node& n = nodes_[id];
    if (depth > limits_.max_depth)
      fail("nesting deeper than max_depth (" + std::to_string(limits_.max_depth) + ")");
    made_ += n.kind == NodeKind::leaf ? n.weight : 1;
    if (made_ > limits_.max_nodes)
      fail("more than max_nodes (" + std::to_string(limits_.max_nodes) +
           ") values in the result (a value shared through the memo counts at each use)");
    if (n.kind == NodeKind::leaf) {
      if (depth + n.depth > limits_.max_depth)
        fail("nesting deeper than max_depth (" + std::to_string(limits_.max_depth) + ")");
      out_bytes_ += n.bytes;
      if (out_bytes_ > limits_.max_bytes)
        fail("more than max_bytes (" + std::to_string(limits_.max_bytes) +
             ") of str and bytes in the result");
      return n.leaf;
    }
    if (n.kind == NodeKind::cls) {
      const std::string& cls = n.leaf.as_string();
      const auto dot = cls.rfind('.');
      if (dot == std::string::npos || !is_proxy_type(std::string_view(cls).substr(0, dot),
                                                     std::string_view(cls).substr(dot + 1)))
        fail("a class used as a value (only a proxy type, in RebuildProxy's arguments)");
      return Item::object(cls, Item());
    }
    if (n.kind == NodeKind::ctor) fail("a constructor used as a value");
    if (n.building) fail("a value that contains itself: not plain data");
    n.building = true;
    struct Unmark {
      Node& n;
      ~Unmark() { n.building = false; }
    } unmark{n};
    std::vector<Item> out;
    out.reserve(n.children.size());
    switch (n.kind) {
      case NodeKind::dict: {
        Distinct keys;
        for (std::size_t i = 0; i + 1 < n.children.size(); i += 2) {
          Item k = make(n.children[i], depth + 1);
          Item v = make(n.children[i + 1], depth + 1);
          if (auto at = keys.find_or_add(k, out.size() / 2, out, 2)) {
            out[*at * 2 + 1] = std::move(v);  // d[k] = v: the first key's place, the last value
          } else {
            out.push_back(std::move(k));
            out.push_back(std::move(v));
          }
        }
        return Item::dict(std::move(out));
      }
      case NodeKind::set:
      case NodeKind::frozenset: {
        Distinct seen;
        for (std::uint32_t c : n.children) {
          Item x = make(c, depth + 1);
          if (!seen.find_or_add(x, out.size(), out, 1)) out.push_back(std::move(x));
        }
        return n.kind == NodeKind::set ? Item::set(std::move(out))
                                       : Item::frozenset(std::move(out));
      }
      case NodeKind::object: {
        Item args = make(n.children[0], depth + 1);
        Item state = n.children.size() > 1 ? make(n.children[1], depth + 1) : Item::none();
        return Item::object(n.leaf.as_string(), std::move(args), std::move(state));
      }
      default:
        for (std::uint32_t c : n.children) out.push_back(make(c, depth + 1));
        return n.kind == NodeKind::list ? Item::list(std::move(out)) : Item::tuple(std::move(out));
    }
  }

  std::span<const std::byte> data_;
  const Limits& limits_;
  std::size_t pos_ = 0;
  std::size_t op_at_ = 0;
  unsigned char op_ = 0;
  std::vector<Node> nodes_;
  std::vector<std::uint32_t> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, std::uint32_t> memo_;
  std::size_t in_bytes_ = 0;
  std::size_t made_ = 0;
  std::size_t ranged_ = 0;  // the integers range() made, for the budget (max_nodes)
  std::size_t out_bytes_ = 0;
};

// ---- writing ---------------------------------------------------------------------------------

class Writer {
public:
  explicit Writer(int protocol) : protocol_(protocol) {}

  std::string finish(const Item& x) {
    out_.push_back(static_cast<char>(PROTO));
    out_.push_back(static_cast<char>(protocol_));
    write(x);
    out_.push_back(static_cast<char>(STOP));
    return std::move(out_);
  }

private:
  void op(unsigned char o) { out_.push_back(static_cast<char>(o)); }

  void le(std::uint64_t v, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  void sized(unsigned char short_op, unsigned char op4, unsigned char op8, const std::string& s) {
    if (s.size() < 256 && short_op != 0) {
      op(short_op);
      le(s.size(), 1);
    } else if (s.size() <= 0xffffffffu) {
      op(op4);
      le(s.size(), 4);
    } else {
      op(op8);
      le(s.size(), 8);
    }
    out_ += s;
  }

  void text(std::string_view s) {
    sized(SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, std::string(s));
  }

  void stack_global(std::string_view module, std::string_view name) {
    text(module);
    text(name);
    op(STACK_GLOBAL);
  }

  void signed_int(std::int64_t v) {
    if (v >= 0 && v < 256) {
      op(BININT1);
      le(static_cast<std::uint64_t>(v), 1);
    } else if (v >= 0 && v < 65536) {
      op(BININT2);
      le(static_cast<std::uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op(BININT);
      le(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)), 4);
    } else {
      // Two's complement, little-endian, as few bytes as keep the sign (pickle's encode_long).
      const auto u = static_cast<std::uint64_t>(v);
      std::size_t n = 8;
      while (n > 1) {
        const auto top = static_cast<unsigned char>(u >> (8 * (n - 1)));
        const auto next = static_cast<unsigned char>(u >> (8 * (n - 2)));
        if ((top == 0x00 && (next & 0x80) == 0) || (top == 0xff && (next & 0x80) != 0))
          --n;
        else
          break;
      }
      op(LONG1);
      le(n, 1);
      le(u, n);
    }
  }

  void sequence_items(const std::vector<Item>& items) {
    op(MARK);
    for (const Item& e : items) write(e);
  }

  void write(const Item& x) {
    switch (x.kind()) {
      case Kind::none: op(NONE); return;
      case Kind::boolean: op(x.as_bool() ? NEWTRUE : NEWFALSE); return;
      case Kind::integer: signed_int(x.as_int()); return;
      case Kind::uinteger: {
        const std::uint64_t u = x.as_uint();
        if (u <= static_cast<std::uint64_t>(INT64_MAX))
          return signed_int(static_cast<std::int64_t>(u));
        op(LONG1);
        le(9, 1);
        le(u, 8);
        le(0, 1);  // the sign byte: positive
        return;
      }
      case Kind::floating: {
        op(BINFLOAT);
        const auto bits = std::bit_cast<std::uint64_t>(x.as_float());
        for (int i = 7; i >= 0; --i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
        return;
      }
      case Kind::text: sized(SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, x.as_string()); return;
      case Kind::bytes: sized(SHORT_BINBYTES, BINBYTES, BINBYTES8, x.as_string()); return;
      case Kind::bytearray:
        if (protocol_ >= 5) {
          op(BYTEARRAY8);
          le(x.as_string().size(), 8);
          out_ += x.as_string();
        } else {
          stack_global("builtins", "bytearray");
          sized(SHORT_BINBYTES, BINBYTES, BINBYTES8, x.as_string());
          op(TUPLE1);
          op(REDUCE);
        }
        return;
      case Kind::sequence:
      case Kind::list:
        op(EMPTY_LIST);
        if (!x.elements().empty()) {
          sequence_items(x.elements());
          op(APPENDS);
        }
        return;
      case Kind::tuple: {
        const auto& e = x.elements();
        if (e.empty()) return op(EMPTY_TUPLE);
        if (e.size() <= 3) {
          for (const Item& i : e) write(i);
          return op(static_cast<unsigned char>(TUPLE1 + e.size() - 1));
        }
        sequence_items(e);
        return op(TUPLE);
      }
      case Kind::dict:
        op(EMPTY_DICT);
        if (!x.elements().empty()) {
          sequence_items(x.elements());
          op(SETITEMS);
        }
        return;
      case Kind::set:
        op(EMPTY_SET);
        if (!x.elements().empty()) {
          sequence_items(x.elements());
          op(ADDITEMS);
        }
        return;
      case Kind::frozenset:
        sequence_items(x.elements());
        op(FROZENSET);
        return;
      case Kind::slice:
        stack_global("builtins", "slice");
        for (const Item& e : x.elements()) write(e);
        op(TUPLE3);
        op(REDUCE);
        return;
      case Kind::object: {
        const std::string& cls = x.object_class();
        const auto dot = cls.rfind('.');
        if (dot == std::string::npos)
          throw ValueError("pickle: an object's class without its module: " + cls);
        stack_global(std::string_view(cls).substr(0, dot), std::string_view(cls).substr(dot + 1));
        if (x.object_args().is_none()) return;  // the class itself (a proxy type)
        if (x.object_args().kind() != Kind::tuple)
          throw ValueError("pickle: an object's args that are not a tuple");
        write(x.object_args());
        op(written_as_newobj(cls) ? NEWOBJ : REDUCE);
        if (!x.object_state().is_none()) {
          write(x.object_state());
          op(BUILD);
        }
        return;
      }
      case Kind::alternative:
      case Kind::structure:
      case Kind::ref:
        throw ValueError("pickle: a " + std::string(type_name(x)) +
                         " has no Python form in the pickle dialect");
    }
  }

  int protocol_;
  std::string out_;
};

}  // namespace

Item decode(std::span<const std::byte> pickle, const Limits& limits) {
  return Reader(pickle, limits).read();
}

bool reads_class(std::string_view qualified) {
  const auto dot = qualified.rfind('.');
  if (dot == std::string_view::npos) return false;
  const auto cls = known_class(qualified.substr(0, dot), qualified.substr(dot + 1));
  return cls && *cls == qualified;
}

std::string encode(const Item& x, int protocol) {
  if (protocol < 4 || protocol > 5)
    throw ValueError("pickle: protocol " + std::to_string(protocol) + " is not written (4 or 5)");
  return Writer(protocol).finish(x);
}

}  // namespace troupe::multiprocessing::managers::detail::pickle
