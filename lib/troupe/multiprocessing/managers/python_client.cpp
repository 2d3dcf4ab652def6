// A link's requests sent to a manager served by CPython (internal/python_client.hpp).
#include "troupe/multiprocessing/managers/internal/python_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "troupe/error_envelope.hpp"
#include "troupe/errors.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/managers/detail/pickle.hpp"
#include "troupe/multiprocessing/managers/internal/python_dialect.hpp"
#include "troupe/multiprocessing/managers/internal/ref_proxy.hpp"
#include "troupe/multiprocessing/managers/internal/wire.hpp"

namespace troupe::multiprocessing::managers::internal::python {

namespace asio = boost::asio;
using detail::Kind;

namespace {

// The lanes kept connected at most: past this, the least recently used idle ones are closed
// (CPython's server runs a thread per connection).
constexpr std::size_t kMaxLanes = 64;
// The objects whose exposed methods are remembered at most.
constexpr std::size_t kMaxExposed = 4096;
// The largest reply read (the pickle reader's byte limit, and some).
constexpr std::size_t kMaxReply = (std::size_t{64} << 20) + 4096;

std::string shown(const Item& x) {
  return detail::repr(x, 80);
}

std::vector<std::byte> pickled(const Item& x) {
  const std::string p = detail::pickle::encode(x, 4);
  const auto* b = reinterpret_cast<const std::byte*>(p.data());
  return std::vector<std::byte>(b, b + p.size());
}

// A request of CPython's dialect: (ident, methodname, args, kwds).
std::vector<std::byte> request_bytes(Item ident, std::string method, std::vector<Item> args) {
  return pickled(Item::tuple({std::move(ident), Item::text(std::move(method)),
                              Item::tuple(std::move(args)), Item::dict({})}));
}

// The class troupe names `cls` (a pickled exception's) by: Python's names as errors.hpp has them.
errc code_of(std::string cls) {
  for (std::string_view prefix : {"builtins.", "exceptions."})
    if (cls.starts_with(prefix)) cls.erase(0, prefix.size());
  if (cls.starts_with("_queue.")) cls.replace(0, 6, "queue");
  if (cls.starts_with("multiprocessing.context."))
    cls.replace(0, std::string_view("multiprocessing.context").size(), "multiprocessing");
  for (errc e : all_errc())
    if (python_name(e) == cls) return e;
  return errc::exception;
}

// Python's str() of an exception with `args`.
std::string exception_text(const std::string& cls, const Item& args) {
  if (args.kind() != Kind::tuple || args.elements().empty()) return "";
  const auto& a = args.elements();
  if (a.size() == 1) {
    if (cls.ends_with("KeyError")) return detail::repr(a[0], 4096);
    return a[0].kind() == Kind::text ? a[0].as_string() : detail::repr(a[0], 4096);
  }
  return detail::repr(args, 4096);
}

std::shared_ptr<detail::Frame> frame_of(capnp::MallocMessageBuilder& mb) {
  return parse_frame(flatten(mb));
}

std::shared_ptr<detail::Frame> error_frame(std::uint64_t call_id, const ErrorEnvelope& e) {
  capnp::MallocMessageBuilder mb(small_message_words);
  auto r = mb.initRoot<proto::manager::Reply>();
  r.setCallId(call_id);
  e.encode(r.initError());
  return frame_of(mb);
}

ErrorEnvelope envelope_of(std::exception_ptr e, std::string call, std::string object) {
  return ErrorEnvelope::capture(std::move(e),
                                {.call = std::move(call), .object = std::move(object)});
}

// Where a CPython manager's error was raised: its host (a Unix socket's is this one); CPython
// says nothing of its pid.
ErrorOrigin origin_of(const Address& a) {
  ErrorOrigin o;
  if (a.family == Address::Family::inet || a.family == Address::Family::inet6) {
    o.host = a.host;
  } else {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    o.host = host;
  }
  o.process_name = "CPython manager";
  return o;
}

// The envelope of an exception a CPython manager sent ('#ERROR'): its class as troupe names it
// (the same-named class, else Exception with Python's name), Python's str() of it.
ErrorEnvelope raised(const Item& x, const std::string& where, const std::string& object,
                     const Address& a) {
  ErrorEnvelope env;
  env.code = code_of(x.object_class());
  env.type_name =
      env.code == errc::exception ? x.object_class() : std::string(python_name(env.code));
  env.message = exception_text(x.object_class(), x.object_args());
  env.context = {.call = where, .object = object};
  env.origin = origin_of(a);
  return env;
}

// RemoteError with `text`: what Python's client raises for '#TRACEBACK' (and a reply that cannot
// be read here).
ErrorEnvelope remote(std::string text, const std::string& where, const std::string& object,
                     const Address& a) {
  ErrorEnvelope env;
  env.code = errc::remote_error;
  env.type_name = std::string(python_name(env.code));
  env.message = std::move(text);
  env.context = {.call = where, .object = object};
  env.origin = origin_of(a);
  return env;
}

bool same_server(const Address& a, const Address& b) {
  if (a.family != b.family) return false;
  if (a.family == Address::Family::unix_path || a.family == Address::Family::unix_abstract)
    return a.host == b.host;
  // ('0.0.0.0', port) or ('', port) in a token of a server dialled at 127.0.0.1:port.
  auto any = [](const std::string& h) { return h.empty() || h == "0.0.0.0" || h == "::"; };
  return a.port == b.port && (a.host == b.host || any(a.host) || any(b.host));
}

}  // namespace

bool is_pickle(std::span<const std::byte> reply) noexcept {
  // PROTO (0x80) then a protocol number 2 to 5: a Cap'n Proto Greeting starts with its segment
  // count minus one (0) as a little-endian UInt32.
  return reply.size() >= 2 && reply[0] == std::byte{0x80} && reply[1] >= std::byte{2} &&
         reply[1] <= std::byte{5};
}

struct ClientPeer::Lane {
  struct Entry {
    Handler done;
    std::uint64_t call_id = 0;
    std::string where;                // "'get' of object 7f..": for errors
    std::vector<detail::Ref> parked;  // proxies parked for the call: dropped once answered
  };
  std::uint64_t number = 0;
  std::mutex send_m;  // one sender at a time (and the entries queued in the order sent)
  std::unique_ptr<Connection> conn;
  // Under the peer's m_:
  std::deque<Entry> fifo;
  bool reading = false;
  std::uint64_t used = 0;
};

struct ClientPeer::Waiting {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  bool abandoned = false;  // the caller timed out
  std::exception_ptr error;
  std::shared_ptr<detail::Frame> frame;
};

ClientPeer::ClientPeer(Address address, std::string address_text, ClientOptions options,
                       asio::any_io_executor ex, std::chrono::milliseconds heartbeat_interval)
    : address_(std::move(address)),
      address_text_(std::move(address_text)),
      options_(std::move(options)),
      ex_(std::move(ex)),
      heartbeat_interval_(heartbeat_interval) {
  // Left behind safely by a fork: the child closes the peer's sockets and never uses it
  // (after_fork_in_child). Counted from before it exists.
  worker_ = std::thread([this, fork_aware = troupe::internal::runtime::ForkAwareThread()] {
    // Parked across a fork between two jobs (ForkParking).
    troupe::internal::runtime::ForkParking parked([this, &parked] {
      // First in the queue: the jobs queued are blocking requests, which the fork must not wait
      // behind (it waits for the one that runs, if any).
      {
        std::scoped_lock lock(m_);
        jobs_.push_front(
            Job{[&parked] { parked.park(); }, [&parked](std::exception_ptr) { parked.park(); }});
      }
      jobs_cv_.notify_one();
    });
    run_jobs();
  });
}

void ClientPeer::start_heartbeat() {
  if (heartbeat_interval_.count() <= 0 || beat_timer_) return;
  beat_timer_ = std::make_shared<asio::steady_timer>(ex_);
  asio::post(ex_, [w = weak_from_this()] {
    if (auto self = w.lock()) self->beat();
  });
}

// On the link's thread.
void ClientPeer::beat() {
  auto t = std::static_pointer_cast<asio::steady_timer>(beat_timer_);
  t->expires_after(heartbeat_interval_);
  t->async_wait([w = weak_from_this()](boost::system::error_code ec) {
    auto self = w.lock();
    if (ec || !self) return;
    bool probe = false;
    {
      std::scoped_lock lock(self->m_);
      if (self->dead_ || self->stopping_) return;
      const bool waiting = std::any_of(self->lanes_.begin(), self->lanes_.end(),
                                       [](const auto& l) { return !l.second->fifo.empty(); });
      if (waiting && !self->beat_probe_pending_) probe = self->beat_probe_pending_ = true;
    }
    if (probe)
      self->post_job([s = self.get()] {
        try {
          (void)s->dispatch("dummy", {});
        } catch (const std::exception& e) {
          s->close(std::string("it did not answer the heartbeat (a 'dummy' request): ") + e.what());
        }
        std::scoped_lock lock(s->m_);
        s->beat_probe_pending_ = false;
      });
    self->beat();
  });
}

ClientPeer::~ClientPeer() {
  {
    // The worker sends what is queued (the proxies' decrefs: CPython ties no reference to a
    // connection, so a decref lost is an object kept until the server stops), for the connect
    // timeout at most, then ends.
    std::scoped_lock lock(m_);
    stopping_ = true;
    give_up_ = std::chrono::steady_clock::now() + options_.timeout;
  }
  jobs_cv_.notify_all();
  if (std::this_thread::get_id() == worker_.get_id())
    worker_.detach();  // cannot happen (no handler runs there); never join oneself
  else
    worker_.join();
  close("the link was closed");
  if (beat_timer_) {
    auto t = std::static_pointer_cast<asio::steady_timer>(beat_timer_);
    asio::post(ex_, [t] { t->cancel(); });
  }
}

Connection connect_to_manager(const Address& address, const ClientOptions& options) {
  try {
    return Client(address, options);
  } catch (const AuthenticationError& e) {
    if (options.auth.legacy_md5) throw;
    throw AuthenticationError(std::string(e.what()) +
                              "; a CPython 3.11 or older manager answers only HMAC-MD5 "
                              "(LinkOptions::auth.legacy_md5)");
  }
}

Connection ClientPeer::connect_new() {
  return connect_to_manager(address_, options_);
}

void ClientPeer::greet() {
  (void)dispatch("dummy", {});
}

Item ClientPeer::dispatch(const std::string& function, std::vector<Item> args, bool bounded) {
  Connection c = connect_new();
  const auto bytes = request_bytes(Item(), function, std::move(args));
  c.send_bytes(std::span<const std::byte>(bytes.data(), bytes.size()));
  const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
  while (!c.poll(std::chrono::milliseconds(200))) {
    if (bounded && std::chrono::steady_clock::now() > deadline)
      throw TimeoutError("the manager at " + address_text_ + " did not answer " + function +
                         "() within " + std::to_string(options_.timeout.count()) + " ms");
    std::scoped_lock lock(m_);
    if (dead_) throw EOFError("the manager at " + address_text_ + " is gone: " + why_dead_);
    if (give_up_ && std::chrono::steady_clock::now() > *give_up_)
      throw TimeoutError("the manager at " + address_text_ + " did not answer " + function +
                         "() before the link was closed");
  }
  std::vector<std::byte> got;
  try {
    got = c.recv_bytes(kMaxReply);
  } catch (const EOFError&) {
    throw EOFError("the manager at " + address_text_ +
                   " closed the connection instead of "
                   "answering " +
                   function + "()");
  }
  Item reply = detail::pickle::decode(got);
  if (reply.kind() != Kind::tuple || reply.elements().size() != 2 ||
      reply.elements()[0].kind() != Kind::text)
    throw ValueError("the manager at " + address_text_ + " answered " + function + "() with " +
                     shown(reply) + ", not a (kind, value) pair");
  auto& e = reply.elements();
  const std::string& kind = e[0].as_string();
  if (kind == "#RETURN") return std::move(e[1]);
  if (kind == "#ERROR" && e[1].kind() == Kind::object)
    throw_error(raised(e[1], function, address_text_, address_));
  throw RemoteError("the manager at " + address_text_ + " failed " + function +
                    "(): " + (e[1].kind() == Kind::text ? e[1].as_string() : shown(e[1])));
}

// ---- the peer's thread: the server's functions, one after another -------------------------

void ClientPeer::post_job(std::function<void()> f, std::function<void(std::exception_ptr)> fail) {
  {
    std::scoped_lock lock(m_);
    jobs_.push_back(Job{std::move(f), std::move(fail)});
  }
  jobs_cv_.notify_one();
}

void ClientPeer::run_jobs() {
  std::unique_lock lock(m_);
  for (;;) {
    jobs_cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
    // What was queued before the link went (decrefs) still goes, for a while (give_up_).
    if (stopping_ && (jobs_.empty() || dead_ || std::chrono::steady_clock::now() > *give_up_))
      break;
    Job j = std::move(jobs_.front());
    jobs_.pop_front();
    if (dead_) {
      lock.unlock();
      if (j.fail) j.fail(dead_error());
      lock.lock();
      continue;
    }
    ++jobs_running_;
    lock.unlock();
    try {
      j.run();
    } catch (const std::exception& e) {
      get_logger().warning("manager at " + address_text_ + ": " + e.what());
    }
    lock.lock();
    --jobs_running_;
    if (jobs_.empty()) idle_cv_.notify_all();
  }
  // Whatever is left fails (its handler is told).
  auto left = std::move(jobs_);
  jobs_.clear();
  idle_cv_.notify_all();
  lock.unlock();
  std::exception_ptr e;
  try {
    throw EOFError("the link to the CPython manager at " + address_text_ +
                   " was closed before the request was sent");
  } catch (...) {
    e = std::current_exception();
  }
  for (auto& j : left)
    if (j.fail) j.fail(e);
}

void ClientPeer::flush(std::chrono::nanoseconds timeout) {
  std::unique_lock lock(m_);
  idle_cv_.wait_for(lock, timeout, [&] { return dead_ || (jobs_.empty() && jobs_running_ == 0); });
}

namespace {

// A `sequence` (troupe's wire form of a C++ tuple, pair, struct or vector) as the tuple Python
// keys and set elements must be, all the way down.
Item as_tuple(Item x) {
  if (x.kind() != Kind::sequence && x.kind() != Kind::tuple) return x;
  std::vector<Item> e = std::move(x.elements());
  for (Item& i : e) i = as_tuple(std::move(i));
  return Item::tuple(std::move(e));
}

bool is_index_method(std::string_view m) {
  return m == "__getitem__" || m == "__setitem__" || m == "__delitem__";
}

bool is_key_method(std::string_view m) {
  return is_index_method(m) || m == "__contains__" || m == "get" || m == "pop" ||
         m == "setdefault" || m == "add" || m == "discard" || m == "remove";
}

}  // namespace

void ClientPeer::shape_index(std::uint64_t id, std::string_view method, std::vector<Item>& args) {
  if (args.empty() || args[0].kind() != Kind::sequence || !is_key_method(method)) return;
  const auto exposed = exposed_of(id);
  auto has = [&](std::string_view m) {
    return std::find(exposed.begin(), exposed.end(), m) != exposed.end();
  };
  // A mapping's key (a dict's: `keys` exposed) or a set's element (`add`): a tuple.
  if (has("keys") || has("add")) {
    args[0] = as_tuple(std::move(args[0]));
    return;
  }
  // A sequence's index (a list's, an Array's: `__len__` exposed), where Python takes nothing but
  // an int or a slice: a C++ proxy's slice (SliceArg, three ints or Nones).
  if (!is_index_method(method) || !has("__len__")) return;
  const auto& e = args[0].elements();
  if (e.size() != 3) return;
  for (const Item& x : e)
    if (!x.is_none() && !x.is_integral()) return;
  args[0] = Item::slice(e[0], e[1], e[2]);
}

std::vector<std::string> ClientPeer::exposed_of(std::uint64_t id) {
  {
    std::scoped_lock lock(m_);
    if (auto it = exposed_.find(id); it != exposed_.end()) return it->second;
  }
  return remember_exposed(id, dispatch("get_methods", {token("", address_, id)}));
}

std::vector<std::string> ClientPeer::remember_exposed(std::uint64_t id, const Item& names) {
  std::vector<std::string> out;
  if (names.is_container())
    for (const Item& n : names.elements())
      if (n.kind() == Kind::text) out.push_back(n.as_string());
  std::scoped_lock lock(m_);
  if (exposed_.size() >= kMaxExposed) exposed_.clear();
  exposed_[id] = out;
  return out;
}

std::shared_ptr<detail::Frame> ClientPeer::run_function(std::uint64_t call_id,
                                                        proto::manager::Request::Reader r) {
  using W = proto::manager::Request::Which;
  capnp::MallocMessageBuilder mb(small_message_words);
  auto out = mb.initRoot<proto::manager::Reply>();
  out.setCallId(call_id);
  switch (r.which()) {
    case W::CREATE: {
      auto c = r.getCreate();
      const std::string typeid_(c.getTypeid().cStr());
      std::vector<detail::Ref> parked;
      Item got;
      try {
        Item args = python_args(c.getArgs(), "create(" + typeid_ + ")", parked);
        std::vector<Item> a;
        a.push_back(Item::text(typeid_));
        for (Item& x : args.elements()) a.push_back(std::move(x));
        got = dispatch("create", std::move(a), false);
      } catch (...) {
        drop_parked(parked);
        throw;
      }
      drop_parked(parked);
      if (got.kind() != Kind::tuple || got.elements().size() != 2)
        throw ValueError("the manager at " + address_text_ + " answered create(" + typeid_ +
                         ") with " + shown(got) + ", not (ident, exposed)");
      const std::uint64_t id = parse_ident(got.elements()[0]);
      (void)remember_exposed(id, got.elements()[1]);
      auto p = out.initProxy();
      p.setTypeid(typeid_.c_str());
      p.setAddress(address_text_.c_str());
      p.setId(id);
      break;
    }
    case W::INCREF: (void)dispatch("incref", {Item::text(ident_text(r.getIncref()))}); break;
    case W::DECREF: (void)dispatch("decref", {Item::text(ident_text(r.getDecref()))}); break;
    // A proxy in transit: one more reference until its receiver takes it over (CPython has no
    // parking: a reference of the sender's).
    case W::PARK: (void)dispatch("incref", {Item::text(ident_text(r.getPark().getId()))}); break;
    case W::CLAIM:
      // The sender's park is the receiver's reference; with no ticket (a proxy in a value the
      // server sent) a new one, as CPython's RebuildProxy takes.
      if (r.getClaim().getTicket() == 0)
        (void)dispatch("incref", {Item::text(ident_text(r.getClaim().getId()))});
      break;
    case W::GET_METHODS: {
      auto names = exposed_of(r.getGetMethods());
      auto l = out.initResult().initList(static_cast<capnp::uint>(names.size()));
      for (capnp::uint i = 0; i < names.size(); ++i) l[i].setText(names[i].c_str());
      break;
    }
    case W::DEBUG_INFO: {
      Item text = dispatch("debug_info", {});
      out.setText(text.kind() == Kind::text ? text.as_string().c_str() : shown(text).c_str());
      break;
    }
    case W::NUMBER_OF_OBJECTS: {
      Item n = dispatch("number_of_objects", {});
      out.initResult().setInt(n.kind() == Kind::integer ? n.as_int() : -1);
      break;
    }
    case W::SHUTDOWN:
      (void)dispatch("shutdown", {});
      out.initResult().setNone();
      close("it was shut down");  // what is still queued (decrefs) has nobody to go to
      break;
    case W::TRACK_SEGMENT:
      (void)dispatch("track_segment", {Item::text(r.getTrackSegment().cStr())});
      out.initResult().setNone();
      break;
    case W::RELEASE_SEGMENT:
      (void)dispatch("release_segment", {Item::text(r.getReleaseSegment().cStr())});
      out.initResult().setNone();
      break;
    case W::LIST_SEGMENTS: detail::write(dispatch("list_segments", {}), out.initResult()); break;
    case W::PING:
    case W::CANCEL: out.initResult().setNone(); break;  // CPython can cancel nothing
    default:
      throw ValueError("a request the CPython manager at " + address_text_ +
                       " has no function for");
  }
  return frame_of(mb);
}

// ---- method calls: a connection per lane ----------------------------------------------------

std::shared_ptr<ClientPeer::Lane> ClientPeer::lane_for(std::uint64_t number) {
  std::vector<std::shared_ptr<Lane>> closing;
  {
    std::scoped_lock lock(m_);
    if (dead_) std::rethrow_exception(dead_error_locked());
    if (auto it = lanes_.find(number); it != lanes_.end()) {
      it->second->used = ++lane_clock_;
      return it->second;
    }
  }
  // Python's BaseProxy._connect(): a connection of the thread's own, accept_connection first.
  auto conn = std::make_unique<Connection>(connect_new());
  const auto hello = request_bytes(Item(), "accept_connection",
                                   {Item::text("troupe-lane-" + std::to_string(number))});
  conn->send_bytes(std::span<const std::byte>(hello.data(), hello.size()));
  if (!conn->poll(options_.timeout))
    throw TimeoutError("the manager at " + address_text_ + " did not accept a connection within " +
                       std::to_string(options_.timeout.count()) + " ms");
  Item reply = detail::pickle::decode(conn->recv_bytes(kMaxReply));
  if (reply.kind() != Kind::tuple || reply.elements().size() != 2 ||
      reply.elements()[0].kind() != Kind::text || reply.elements()[0].as_string() != "#RETURN")
    throw RemoteError("the manager at " + address_text_ +
                      " refused accept_connection(): " + shown(reply));
  conn->set_executor(ex_);
  auto lane = std::make_shared<Lane>();
  lane->number = number;
  lane->conn = std::move(conn);
  std::scoped_lock lock(m_);
  if (dead_) std::rethrow_exception(dead_error_locked());
  if (auto it = lanes_.find(number); it != lanes_.end()) return it->second;  // raced: theirs
  if (lanes_.size() >= kMaxLanes) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> idle;  // used, number
    for (auto& [n, l] : lanes_)
      if (l->fifo.empty() && !l->reading) idle.emplace_back(l->used, n);
    std::sort(idle.begin(), idle.end());
    for (std::size_t i = 0; i < idle.size() && lanes_.size() - i >= kMaxLanes; ++i) {
      closing.push_back(lanes_[idle[i].second]);
      lanes_.erase(idle[i].second);
    }
  }
  lane->used = ++lane_clock_;
  lanes_.emplace(number, lane);
  return lane;
}

Item ClientPeer::python_args(capnp::List<proto::Value>::Reader args, const std::string& where,
                             std::vector<detail::Ref>& parked) {
  std::vector<Item> out;
  out.reserve(args.size());
  std::function<Item(Item)> convert = [&](Item x) -> Item {
    if (x.kind() == Kind::ref) {
      const detail::Ref& r = x.as_ref();
      Address a;
      try {
        a = Address::parse(r.address);
      } catch (const std::exception& e) {
        throw ValueError(where + ": a proxy to an object at '" + r.address + "': " + e.what());
      }
      if (!same_server(a, address_)) {
        // Another manager's object (troupe's or CPython's): CPython's server rebuilds the proxy
        // and takes a reference there itself, connecting with its own process's key
        // (managers.md, "Inside another manager's objects"); the park the sender made there
        // keeps the object until the call is answered.
        if (r.ticket != 0) parked.push_back(r);
        return rebuild_proxy(r.type_id, a, r.id, {});
      }
      if (r.ticket != 0) parked.push_back({r.type_id, {}, r.id, 0, r.ticket});
      return rebuild_proxy(r.type_id, address_, r.id, exposed_of(r.id));
    }
    if (x.is_container())
      for (Item& e : x.elements()) e = convert(std::move(e));
    return x;
  };
  for (auto v : args) out.push_back(convert(detail::to_item(v)));
  return Item::tuple(std::move(out));
}

Item ClientPeer::from_python(Item x, const std::string& where) {
  if (const Item* t = rebuilt_token(x)) {
    TokenFields f = token_fields(*t);
    auto a = address_of(f.address);
    if (!a) throw ValueError(where + ": a proxy with the address " + shown(f.address));
    detail::Ref r;
    r.type_id = f.typeid_;
    r.address = same_server(*a, address_) ? address_text_ : a->str();
    r.id = parse_ident(f.ident);
    return Item::ref(std::move(r));
  }
  // _getvalue() of a Value or a Namespace: the object itself, read as its value (as troupe's
  // own server sends it), and its attributes as a dict.
  if (x.kind() == Kind::object && x.object_state().kind() == Kind::dict) {
    const std::string& cls = x.object_class();
    if (cls == "multiprocessing.managers.Namespace") return from_python(x.object_state(), where);
    if (cls == "multiprocessing.managers.Value") {
      const auto& state = x.object_state().elements();
      for (std::size_t i = 0; i + 1 < state.size(); i += 2)
        if (state[i] == Item::text("_value")) return from_python(state[i + 1], where);
    }
  }
  if (x.kind() == Kind::object && !x.is_array())  // an array.array reads as its items' list
    throw TypeError(where + " returned " + shown(x) +
                    ", which troupe's wire cannot carry (plain data and proxies only)");
  if (x.is_container())
    for (Item& e : x.elements()) e = from_python(std::move(e), where);
  return x;
}

std::shared_ptr<detail::Frame> ClientPeer::reply_frame(std::uint64_t call_id, Item reply,
                                                       const std::string& where) {
  if (reply.kind() != Kind::tuple || reply.elements().size() != 2 ||
      reply.elements()[0].kind() != Kind::text)
    throw ValueError("the manager at " + address_text_ + " answered " + where + " with " +
                     shown(reply) + ", not a (kind, value) pair");
  auto& e = reply.elements();
  const std::string kind = e[0].as_string();
  capnp::MallocMessageBuilder mb(small_message_words);
  auto out = mb.initRoot<proto::manager::Reply>();
  out.setCallId(call_id);
  if (kind == "#RETURN") {
    detail::write(from_python(std::move(e[1]), where), out.initResult());
  } else if (kind == "#PROXY") {
    // (exposed, token): a new object; the server holds a reference for it, which the proxy
    // made from this reply owns (CPython's client takes one of its own and drops this one).
    Item& v = e[1];
    if (v.kind() != Kind::tuple || v.elements().size() != 2)
      throw ValueError("the manager at " + address_text_ + " answered " + where +
                       " with the proxy " + shown(v));
    TokenFields f = token_fields(v.elements()[1]);
    const std::uint64_t id = parse_ident(f.ident);
    (void)remember_exposed(id, v.elements()[0]);
    auto p = out.initProxy();
    p.setTypeid(f.typeid_.c_str());
    auto a = address_of(f.address);
    p.setAddress(!a || same_server(*a, address_) ? address_text_.c_str() : a->str().c_str());
    p.setId(id);
  } else if (kind == "#ERROR" && e[1].kind() == Kind::object) {
    raised(e[1], where, address_text_, address_).encode(out.initError());
  } else {
    // '#TRACEBACK', '#UNSERIALIZABLE': Python's caller raises RemoteError with the text.
    remote((kind == "#UNSERIALIZABLE" ? "Unserializable message: " : "") +
               (e[1].kind() == Kind::text ? e[1].as_string() : shown(e[1])),
           where, address_text_, address_)
        .encode(out.initError());
  }
  return frame_of(mb);
}

void ClientPeer::deliver(Handler done, std::exception_ptr e, std::shared_ptr<detail::Frame> f) {
  if (!done) return;
  asio::post(ex_, [done = std::move(done), e, f = std::move(f), text = address_text_]() mutable {
    try {
      done(e, std::move(f));
    } catch (const std::exception& x) {
      get_logger().error("manager at " + text + ": a reply's handler threw: " + x.what());
    }
  });
}

void ClientPeer::drop_parked(const std::vector<detail::Ref>& parked) {
  for (const auto& r : parked) {
    if (r.address.empty()) {
      const auto id = r.id;
      post_job([this, id] { (void)dispatch("decref", {Item::text(ident_text(id))}); });
      continue;
    }
    // Claimed (the park becomes this proxy's reference) and released at once, on the link to
    // that manager, which exists (the sender's proxy parked through it).
    try {
      (void)proxy_of(r);
    } catch (const std::exception& e) {
      get_logger().info("manager at " + address_text_ + ": a reference parked at " + r.address +
                        " for a call was not released: " + e.what());
    }
  }
}

void ClientPeer::start_call(proto::manager::Request::Reader r, Handler done) {
  auto c = r.getCall();
  const std::uint64_t id = c.getObject();
  const std::string method(c.getMethod().cStr());
  Lane::Entry entry;
  entry.call_id = r.getCallId();
  entry.where = "'" + method + "' of object " + ident_text(id);
  std::shared_ptr<Lane> lane;
  std::vector<std::byte> bytes;
  try {
    Item args = python_args(c.getArgs(), entry.where, entry.parked);
    shape_index(id, method, args.elements());
    bytes = request_bytes(Item::text(ident_text(id)), method, std::move(args.elements()));
    lane = lane_for(r.getLane());
  } catch (...) {
    drop_parked(entry.parked);  // the call never went: the proxies parked for it are not held
    throw;
  }
  entry.done = std::move(done);
  std::string failed;
  bool read = false;
  for (;;) {
    std::unique_lock sl(lane->send_m);
    {
      std::scoped_lock lock(m_);
      if (dead_) {
        drop_parked(entry.parked);
        std::rethrow_exception(dead_error_locked());
      }
      auto it = lanes_.find(lane->number);
      if (it == lanes_.end() || it->second != lane) {
        // Retired as idle by another thread's lane_for between ours and here: a fresh one
        // (outside the lane's lock).
        sl.unlock();
        lane = lane_for(r.getLane());
        continue;
      }
      lane->used = ++lane_clock_;
      lane->fifo.push_back(std::move(entry));
      read = !lane->reading;
      lane->reading = true;
    }
    try {
      lane->conn->send_bytes(std::span<const std::byte>(bytes.data(), bytes.size()));
    } catch (const std::exception& e) {
      failed = e.what();
    }
    break;
  }
  // The server has gone (or the connection broke): every call fails, this one too.
  if (!failed.empty()) return close("sending failed: " + failed);
  if (read)
    asio::post(ex_, [w = weak_from_this(), lane] {
      if (auto self = w.lock()) self->read_lane(lane);
    });
}

// On the link's thread: the lane's next reply, for its oldest call.
void ClientPeer::read_lane(const std::shared_ptr<Lane>& lane) {
  lane->conn->async_recv_bytes(
      [w = weak_from_this(), lane](boost::system::error_code ec, std::vector<std::byte> bytes) {
        auto self = w.lock();
        if (!self) return;
        if (ec) {
          const bool eof = std::error_code(ec) == troupe::errc::eof_error;
          return self->close(eof ? "it closed the connection" : "reading failed: " + ec.message());
        }
        Lane::Entry entry;
        {
          std::scoped_lock lock(self->m_);
          if (lane->fifo.empty()) {
            lane->reading = false;
            return;
          }
          entry = std::move(lane->fifo.front());
          lane->fifo.pop_front();
        }
        std::shared_ptr<detail::Frame> frame;
        try {
          frame = self->reply_frame(entry.call_id, detail::pickle::decode(bytes), entry.where);
        } catch (const std::exception& e) {
          // A reply this side cannot read (a class outside the data-only pickle): the call
          // fails with RemoteError saying why; the connection is still in step.
          frame =
              error_frame(entry.call_id, remote("the manager at " + self->address_text_ +
                                                    " answered " + entry.where +
                                                    " with a reply this client does not "
                                                    "read: " +
                                                    e.what(),
                                                entry.where, self->address_text_, self->address_));
        }
        self->drop_parked(entry.parked);
        if (entry.done) {
          try {
            entry.done(nullptr, std::move(frame));
          } catch (const std::exception& e) {
            get_logger().error("manager at " + self->address_text_ +
                               ": a reply's handler threw: " + e.what());
          }
        }
        {
          std::scoped_lock lock(self->m_);
          if (self->dead_) return;
          if (lane->fifo.empty()) {
            lane->reading = false;
            return;
          }
        }
        self->read_lane(lane);
      },
      kMaxReply);
}

// ---- the entry points -----------------------------------------------------------------------

void ClientPeer::start(proto::manager::Request::Reader r, Handler done) {
  if (r.isCall()) {
    try {
      return start_call(r, done);
    } catch (const EOFError&) {
      return deliver(std::move(done), std::current_exception(), nullptr);  // the link is dead
    } catch (...) {
      const std::string where = "'" + std::string(r.getCall().getMethod().cStr()) + "' of object " +
                                ident_text(r.getCall().getObject());
      return deliver(
          std::move(done), nullptr,
          error_frame(r.getCallId(), envelope_of(std::current_exception(), where, address_text_)));
    }
  }
  // The rest on the peer's thread, in order, from a copy of the request.
  if (dead()) return deliver(std::move(done), dead_error(), nullptr);
  auto copy = std::make_shared<capnp::MallocMessageBuilder>(small_message_words);
  copy->setRoot(r);
  auto shared_done = std::make_shared<Handler>(std::move(done));
  post_job(
      [this, copy, shared_done] {
        auto req = copy->getRoot<proto::manager::Request>().asReader();
        std::shared_ptr<detail::Frame> f;
        try {
          f = run_function(req.getCallId(), req);
        } catch (const ConnectionError& e) {
          // Refused, reset: the server has gone (shut down by another client, killed). What is
          // still queued has nobody to go to; this request fails as on a dead link.
          close(std::string("it is gone (") + e.what() + ")");
          return deliver(std::move(*shared_done), dead_error(), nullptr);
        } catch (const FileNotFoundError& e) {  // its Unix socket, removed as it stopped
          close(std::string("it is gone (") + e.what() + ")");
          return deliver(std::move(*shared_done), dead_error(), nullptr);
        } catch (...) {
          const std::string call =
              req.isCreate() ? "create(" + std::string(req.getCreate().getTypeid().cStr()) + ")"
                             : "a request";
          f = error_frame(req.getCallId(),
                          envelope_of(std::current_exception(), call, address_text_));
        }
        deliver(std::move(*shared_done), nullptr, std::move(f));
      },
      [this, shared_done](std::exception_ptr e) { deliver(std::move(*shared_done), e, nullptr); });
}

std::shared_ptr<detail::Frame> ClientPeer::call(proto::manager::Request::Reader r,
                                                std::optional<std::chrono::nanoseconds> timeout) {
  auto w = std::make_shared<Waiting>();
  start(r,
        [w, this_peer = weak_from_this()](std::exception_ptr e, std::shared_ptr<detail::Frame> f) {
          std::scoped_lock lock(w->m);
          if (w->abandoned) {
            // Timed out: a new object's reference that nobody will hold goes back.
            if (f && f->root<proto::manager::Reply>().isProxy())
              if (auto self = this_peer.lock())
                self->drop_parked(
                    {detail::Ref{{}, {}, f->root<proto::manager::Reply>().getProxy().getId()}});
            return;
          }
          w->error = e;
          w->frame = std::move(f);
          w->done = true;
          w->cv.notify_all();
        });
  std::unique_lock lock(w->m);
  if (!timeout) {
    w->cv.wait(lock, [&] { return w->done; });
  } else if (!w->cv.wait_for(lock, *timeout, [&] { return w->done; })) {
    w->abandoned = true;
    throw TimeoutError(
        "the manager at " + address_text_ + " did not answer within " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(*timeout).count()) +
        " ms");
  }
  if (w->error) std::rethrow_exception(w->error);
  auto reply = w->frame->root<proto::manager::Reply>();
  if (reply.isError()) throw_error(ErrorEnvelope::decode(reply.getError()));
  return std::move(w->frame);
}

void ClientPeer::close(const std::string& why) {
  std::vector<Lane::Entry> failed;
  std::unordered_map<std::uint64_t, std::shared_ptr<Lane>> lanes;
  {
    std::scoped_lock lock(m_);
    if (!dead_) {
      dead_ = true;
      why_dead_ = why;
    }
    lanes.swap(lanes_);
    for (auto& [n, l] : lanes) {
      for (auto& e : l->fifo) failed.push_back(std::move(e));
      l->fifo.clear();
    }
  }
  idle_cv_.notify_all();
  jobs_cv_.notify_all();
  // A read in progress on the link's thread ends with an error (closing the fd here could not).
  for (auto& [n, l] : lanes)
    if (l->conn && l->conn->fileno() >= 0) ::shutdown(l->conn->fileno(), SHUT_RDWR);
  if (failed.empty()) return;
  auto e = dead_error();
  for (auto& f : failed) deliver(std::move(f.done), e, nullptr);
}

bool ClientPeer::alive() {
  std::vector<int> idle;
  {
    std::scoped_lock lock(m_);
    if (dead_) return false;
    for (auto& [n, l] : lanes_)
      if (l->fifo.empty() && !l->reading) idle.push_back(l->conn->fileno());
  }
  // Nobody reads an idle lane: a server that closed it meanwhile (stopped, restarted) is seen
  // here, so that Link::get connects afresh.
  for (int fd : idle) {
    pollfd p{fd, POLLRDHUP, 0};
    if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      close("it closed the connection");
      return false;
    }
  }
  return true;
}

void ClientPeer::after_fork_in_child() noexcept {
  // The forking thread alone exists here; a lock another thread held at the fork stays held.
  if (!m_.try_lock()) return;
  for (auto& [n, l] : lanes_)
    if (l->conn && l->conn->fileno() >= 0) ::close(l->conn->fileno());
  // Never destroyed here (the link is the parent's and leaked): the fds are not closed twice.
  m_.unlock();
}

bool ClientPeer::dead() const {
  std::scoped_lock lock(m_);
  return dead_;
}

std::exception_ptr ClientPeer::dead_error_locked() const {
  try {
    throw EOFError("the CPython manager at " + address_text_ + " is gone: " + why_dead_);
  } catch (...) {
    return std::current_exception();
  }
}

std::exception_ptr ClientPeer::dead_error() const {
  std::scoped_lock lock(m_);
  return dead_error_locked();
}

}  // namespace troupe::multiprocessing::managers::internal::python
