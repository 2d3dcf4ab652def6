// The pieces of CPython's manager dialect that do not need the server (python_dialect.hpp).
#include "troupe/multiprocessing/managers/internal/python_dialect.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <utility>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/pickle.hpp"

namespace troupe::multiprocessing::managers::internal::python {

namespace {

constexpr std::string_view kToken = "multiprocessing.managers.Token";
constexpr std::string_view kRebuildProxy = "multiprocessing.managers.RebuildProxy";

std::string shown(const Item& x) {
  return detail::repr(x, 80);
}

}  // namespace

Request parse_request(Item x) {
  if (x.kind() != detail::Kind::tuple || x.elements().size() != 4)
    throw TypeError(
        "a request of CPython's manager dialect is a tuple (ident, methodname, args, "
        "kwds), not " +
        shown(x));
  auto& e = x.elements();
  Request r;
  r.ident = std::move(e[0]);
  if (e[1].kind() != detail::Kind::text)
    throw TypeError("the method name of a request is a str, not " +
                    std::string(detail::type_name(e[1])));
  r.method = std::move(e[1].as_string());
  if (e[2].kind() != detail::Kind::tuple && e[2].kind() != detail::Kind::list)
    throw TypeError("the arguments of " + r.method + "() are a tuple, not " +
                    std::string(detail::type_name(e[2])));
  r.args = std::move(e[2].elements());
  if (e[3].kind() != detail::Kind::dict)
    throw TypeError("the keyword arguments of " + r.method + "() are a dict, not " +
                    std::string(detail::type_name(e[3])));
  auto& flat = e[3].elements();
  for (std::size_t i = 0; i + 1 < flat.size(); i += 2) {
    if (flat[i].kind() != detail::Kind::text)
      throw TypeError(r.method + "() keywords must be strings, not " +
                      std::string(detail::type_name(flat[i])));
    r.kwargs.emplace_back(std::move(flat[i].as_string()), std::move(flat[i + 1]));
  }
  return r;
}

bool is_public(std::string_view name) {
  for (std::string_view p :
       {"shutdown", "create", "accept_connection", "get_methods", "debug_info", "number_of_objects",
        "dummy", "incref", "decref", "track_segment", "release_segment", "list_segments"})
    if (name == p) return true;
  return false;
}

std::string ident_text(std::uint64_t id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(id));
  return buf;
}

std::uint64_t parse_ident(const Item& x) {
  if (x.kind() == detail::Kind::text) {
    const std::string& s = x.as_string();
    std::uint64_t v = 0;
    bool ok = !s.empty() && s.size() <= 16;
    for (char c : s) {
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      if (d < 0) {
        ok = false;
        break;
      }
      v = v * 16 + static_cast<unsigned>(d);
    }
    if (ok && v != 0) return v;
  }
  throw KeyError(shown(x));
}

Item address_item(const Address& a) {
  switch (a.family) {
    case Address::Family::inet:
    case Address::Family::inet6: return Item::tuple({Item::text(a.host), Item::integer(a.port)});
    case Address::Family::unix_path: return Item::text(a.host);
    case Address::Family::unix_abstract: return Item::text(std::string(1, '\0') + a.host);
  }
  return Item::text(a.host);
}

std::optional<Address> address_of(const Item& x) {
  Address a;
  if (x.kind() == detail::Kind::tuple && x.elements().size() == 2 &&
      x.elements()[0].kind() == detail::Kind::text &&
      x.elements()[1].kind() == detail::Kind::integer) {
    const std::int64_t port = x.elements()[1].as_int();
    if (port < 0 || port > 65535) return std::nullopt;
    a.host = x.elements()[0].as_string();
    a.family =
        a.host.find(':') != std::string::npos ? Address::Family::inet6 : Address::Family::inet;
    a.port = static_cast<std::uint16_t>(port);
    return a;
  }
  if (x.kind() == detail::Kind::text && !x.as_string().empty()) {
    const std::string& s = x.as_string();
    if (s[0] == '\0') {
      a.family = Address::Family::unix_abstract;
      a.host = s.substr(1);
    } else {
      a.family = Address::Family::unix_path;
      a.host = s;
    }
    return a;
  }
  return std::nullopt;
}

Item token(std::string_view typeid_, const Address& address, std::uint64_t id) {
  return Item::object(std::string(kToken), Item::tuple({}),
                      Item::tuple({Item::text(std::string(typeid_)), address_item(address),
                                   Item::text(ident_text(id))}));
}

TokenFields token_fields(const Item& x) {
  if (x.kind() != detail::Kind::object || x.object_class() != kToken ||
      x.object_state().kind() != detail::Kind::tuple || x.object_state().elements().size() != 3 ||
      x.object_state().elements()[0].kind() != detail::Kind::text)
    throw TypeError("expected a multiprocessing.managers.Token, got " + shown(x));
  const auto& s = x.object_state().elements();
  return {s[0].as_string(), s[1], s[2]};
}

std::string_view proxy_type(std::string_view t) {
  struct Row {
    std::string_view typeid_, type;
  };
  static constexpr Row kRows[] = {
      {"list", "ListProxy"},
      {"dict", "DictProxy"},
      {"Value", "ValueProxy"},
      {"Array", "ArrayProxy"},
      {"Namespace", "NamespaceProxy"},
      {"Lock", "AcquirerProxy"},
      {"RLock", "AcquirerProxy"},
      {"Semaphore", "AcquirerProxy"},
      {"BoundedSemaphore", "AcquirerProxy"},
      {"Event", "EventProxy"},
      {"Condition", "ConditionProxy"},
      {"Barrier", "BarrierProxy"},
      {"Iterator", "IteratorProxy"},
      {"Pool", "PoolProxy"},
  };
  for (const Row& r : kRows)
    if (r.typeid_ == t) return r.type;
  // Queue, JoinableQueue, AsyncResult (CPython has no AsyncResultProxy), set (SetProxy is
  // 3.14's only), registered types.
  return "AutoProxy";
}

Item rebuild_proxy(std::string_view typeid_, const Address& address, std::uint64_t id,
                   const std::vector<std::string>& exposed) {
  const std::string_view type = proxy_type(typeid_);
  std::vector<Item> kwds;
  // No names known (another manager's object): none sent, and AutoProxy asks that manager
  // (get_methods), as it does for a Token it rebuilds without them.
  if (type == "AutoProxy" && !exposed.empty()) {
    std::vector<Item> names;
    names.reserve(exposed.size());
    for (const auto& e : exposed) names.push_back(Item::text(e));
    kwds.push_back(Item::text("exposed"));
    kwds.push_back(Item::tuple(std::move(names)));
  }
  return Item::object(
      std::string(kRebuildProxy),
      Item::tuple({Item::object("multiprocessing.managers." + std::string(type), Item()),
                   token(typeid_, address, id), Item::text("pickle"),
                   Item::dict(std::move(kwds))}));
}

const Item* rebuilt_token(const Item& x) {
  if (x.kind() != detail::Kind::object || x.object_class() != kRebuildProxy) return nullptr;
  const Item& a = x.object_args();
  if (a.kind() != detail::Kind::tuple || a.elements().size() != 4) return nullptr;
  const Item& t = a.elements()[1];
  if (t.kind() != detail::Kind::object || t.object_class() != kToken) return nullptr;
  return &t;
}

std::vector<std::byte> reply(std::string_view kind, Item value, int protocol) {
  const std::string p = detail::pickle::encode(
      Item::tuple({Item::text(std::string(kind)), std::move(value)}), protocol);
  const auto* b = reinterpret_cast<const std::byte*>(p.data());
  return std::vector<std::byte>(b, b + p.size());
}

namespace {

// The value `text` is the repr() of, for the scalars a KeyError names (a str, an int, None, a
// bool), as detail::repr writes them; nullopt for anything else (a tuple, a float, a repr cut
// short), which then stays text.
std::optional<Item> scalar_of_repr(std::string_view text) {
  if (text == "None") return Item();
  if (text == "True") return Item::boolean(true);
  if (text == "False") return Item::boolean(false);
  if (text.size() >= 2 && (text.front() == '\'' || text.front() == '"') &&
      text.back() == text.front()) {
    const char q = text.front();
    std::string out;
    for (std::size_t i = 1; i + 1 < text.size(); ++i) {
      const char c = text[i];
      if (c == q) return std::nullopt;  // an unescaped quote: not one repr
      if (c != '\\') {
        out += c;
        continue;
      }
      if (++i > text.size() - 2) return std::nullopt;  // a backslash before the closing quote
      const char k = text[i];
      std::size_t digits = 0;
      switch (k) {
        case '\\':
        case '\'':
        case '"': out += k; continue;
        case 't': out += '\t'; continue;
        case 'n': out += '\n'; continue;
        case 'r': out += '\r'; continue;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default: return std::nullopt;
      }
      if (i + digits > text.size() - 2) return std::nullopt;
      std::uint32_t cp = 0;
      for (std::size_t d = 1; d <= digits; ++d) {
        const char h = text[i + d];
        int v = -1;
        if (h >= '0' && h <= '9') v = h - '0';
        if (h >= 'a' && h <= 'f') v = h - 'a' + 10;
        if (v < 0) return std::nullopt;
        cp = cp * 16 + static_cast<std::uint32_t>(v);
      }
      if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return std::nullopt;
      detail::append_utf8(cp, out);
      i += digits;
    }
    return Item::text(std::move(out));
  }
  std::int64_t v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (!text.empty() && ec == std::errc() && p == end) return Item::integer(v);
  return std::nullopt;
}

}  // namespace

std::optional<Item> exception_item(const ErrorEnvelope& e) {
  std::string cls = e.type_name;
  if (cls.find('.') == std::string::npos)
    cls = "builtins." + cls;
  else if (cls.starts_with("multiprocessing.") &&
           cls.find('.', std::strlen("multiprocessing.")) == std::string::npos)
    cls = "multiprocessing.context." + cls.substr(std::strlen("multiprocessing."));
  if (!detail::pickle::reads_class(cls)) return std::nullopt;
  // Raised bare by CPython (`raise Empty`): no args, whatever troupe's message says.
  if (cls == "queue.Empty" || cls == "queue.Full" || cls == "queue.ShutDown" ||
      cls == "threading.BrokenBarrierError")
    return Item::object(std::move(cls), Item::tuple({}));
  std::vector<Item> args;
  if (e.os_errno != 0) args.push_back(Item::integer(e.os_errno));
  if (cls == "builtins.KeyError") {
    // troupe's KeyError carries the key's repr() (its message); Python's carries the key:
    // `except KeyError as e: e.args[0] == key`.
    if (auto key = scalar_of_repr(e.message)) {
      args.push_back(std::move(*key));
      return Item::object(std::move(cls), Item::tuple(std::move(args)));
    }
  }
  if (!e.message.empty() || e.os_errno != 0) args.push_back(Item::text(e.message));
  return Item::object(std::move(cls), Item::tuple(std::move(args)));
}

std::vector<std::byte> error_reply(const ErrorEnvelope& e, int protocol, bool as_exception) {
  if (as_exception)
    if (auto x = exception_item(e)) return reply("#ERROR", std::move(*x), protocol);
  // What Python's format_exc() would show: where it was raised, then "Type: message".
  std::string text = "Traceback (the troupe manager's side):\n";
  const std::string remote = e.remote_text();
  std::size_t at = 0;
  while (at < remote.size()) {
    const auto nl = remote.find('\n', at);
    const auto end = nl == std::string::npos ? remote.size() : nl;
    text += "  " + remote.substr(at, end - at) + "\n";
    at = end + 1;
  }
  text += e.type_name + (e.message.empty() ? "" : ": " + e.message) + "\n";
  return reply("#TRACEBACK", Item::text(std::move(text)), protocol);
}

void place_keywords(std::string_view where, std::vector<Item>& args, Kwargs kwargs,
                    const detail::Parameters& p) {
  const std::size_t positional = args.size();
  std::vector<bool> given(std::max(positional, p.names.size()), false);
  std::fill(given.begin(), given.begin() + static_cast<std::ptrdiff_t>(positional), true);
  for (auto& [name, value] : kwargs) {
    const auto it = std::find(p.names.begin(), p.names.end(), name);
    if (it == p.names.end())
      throw TypeError(std::string(where) + " got an unexpected keyword argument '" + name + "'");
    const auto i = static_cast<std::size_t>(it - p.names.begin());
    if (given[i])
      throw TypeError(std::string(where) + " got multiple values for argument '" + name + "'");
    if (args.size() <= i) args.resize(i + 1, Item::omitted());  // the gaps: the defaults
    args[i] = std::move(value);
    given[i] = true;
  }
  for (std::size_t i = 0; i < p.required && i < p.names.size(); ++i)
    if (!given[i])
      throw TypeError(std::string(where) + " missing required argument: '" +
                      std::string(p.names[i]) + "'");
}

namespace {

// The first value in `x` that troupe's wire has no form for (an object: an exception, a Token;
// an array.array goes as the list of its items).
const Item* unsendable(const Item& x) {
  if (x.is_array()) return nullptr;
  if (x.kind() == detail::Kind::object) return &x;
  if (x.is_container())
    for (const Item& e : x.elements())
      if (const Item* u = unsendable(e)) return u;
  return nullptr;
}

}  // namespace

CallArgs::CallArgs(std::string_view where, std::vector<Item> items, std::optional<Kwargs> kwargs)
    : items_(std::move(items)), kwargs_(std::move(kwargs)) {
  for (std::size_t i = 0; i < items_.size(); ++i)
    if (const Item* u = unsendable(items_[i])) {
      error_ = std::string(where) + ": argument " + std::to_string(i + 1) + " holds " + shown(*u) +
               ", which a C++ method cannot take (only plain data and proxies to this "
               "manager's objects)";
      list_ = mb_.getOrphanage().newOrphan<capnp::List<proto::Value>>(0);
      return;
    }
  list_ = mb_.getOrphanage().newOrphan<capnp::List<proto::Value>>(
      static_cast<capnp::uint>(items_.size()));
  auto b = list_.get();
  for (std::size_t i = 0; i < items_.size(); ++i)
    detail::write(items_[i], b[static_cast<capnp::uint>(i)]);
}

std::string CallArgs::summary() const {
  std::string s = "(";
  for (std::size_t i = 0; i < items_.size() && s.size() < 200; ++i)
    s += (i ? ", " : "") + detail::repr(items_[i], 60);
  return s + ")";
}

}  // namespace troupe::multiprocessing::managers::internal::python
