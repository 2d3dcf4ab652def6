// libFuzzer: the manager server's requests (proto/manager.capnp). One Server per process, on an
// abstract Unix name with an authkey, hosting SyncManager's built-in typeids; a holder
// connection creates one object of each before the first input (manager_wire.hpp), so calls on
// real ids are reachable. Each input is one client: handshake, Hello (the harness's, or the
// input's first frame), the input's frames sent as they are (manager_wire.hpp: a control byte,
// then 2-byte-length-prefixed frames), then a ping whose reply proves the server read all of
// them. A dropped connection is allowed; the server must then still serve a new client. After
// each input the holder resets the shared objects, which must all still be there: nothing one
// client sends may release another client's objects.
//
// Failures abort with a message: a sanitizer report, no answer within kWait (a hang), a server
// that stops serving, a holder's object gone, or an ERROR the server logs (an exception that
// escaped a handler).
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/post.hpp>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/managers/server.hpp"
#include "troupe/multiprocessing/managers/sync_manager.hpp"

#include "manager_wire.hpp"

namespace {

namespace mp = troupe::multiprocessing;
namespace mm = troupe::multiprocessing::managers;
namespace wire = troupe::fuzz::manager;
using wire::Item;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Any one exchange of the harness (scripts/fuzz.sh gives libFuzzer -timeout=10): past it the
// server is hung, reported here by name rather than as a bare libFuzzer timeout.
constexpr auto kWait = 5s;
// The harness's own call ids and lane (an input may use them too: the probe is then weaker).
constexpr std::uint64_t kProbeId = 0x70726f6265000001ull;
constexpr std::uint64_t kHarnessLane = 0x70726f6265000002ull;
constexpr std::size_t kMostFrames = 512;
constexpr unsigned kThreads = 2;  // the server's
// The server's limits, low enough for an input (at most 4096 bytes) to reach them.
constexpr std::uint32_t kMostInFlight = 32;
constexpr std::uint32_t kMostHeld = 24;
constexpr std::uint64_t kLargestRequest = 3072;

// MANAGER_FUZZ_VERBOSE=1: print each reply the input's client gets (to check a seed by hand).
bool verbose() {
  static const bool on = std::getenv("MANAGER_FUZZ_VERBOSE") != nullptr;
  return on;
}

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "manager_fuzz: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

// What the harness reads of one Reply.
struct Answer {
  std::uint64_t call_id = 0;
  bool ok = false;    // a result, a proxy or a text
  std::string error;  // the error's type and message, if it is one
  std::optional<Item> result;
  std::uint64_t proxy_id = 0;
};

Answer read_reply(const std::vector<std::byte>& bytes, bool decode_result) {
  if (bytes.empty() || bytes.size() % 8 != 0)
    fail("the server sent a frame of " + std::to_string(bytes.size()) +
         " bytes, not a Cap'n Proto message");
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                        bytes.size() / 8);
  using R = troupe::proto::manager::Reply;
  try {
    capnp::FlatArrayMessageReader reader(words, troupe::reader_options(words.size()));
    auto r = reader.getRoot<R>();
    Answer a;
    a.call_id = r.getCallId();
    switch (r.which()) {
      case R::RESULT:
        a.ok = true;
        if (decode_result) a.result = mm::detail::to_item(r.getResult());
        break;
      case R::ERROR:
        a.error = std::string(r.getError().getTypeName().cStr()) + ": " +
                  r.getError().getMessage().cStr();
        break;
      case R::PROXY:
        a.ok = true;
        a.proxy_id = r.getProxy().getId();
        break;
      case R::TEXT: a.ok = true; break;
    }
    return a;
  } catch (const std::exception& e) {
    fail(std::string("the server sent a reply the harness cannot read: ") + e.what());
  } catch (const kj::Exception& e) {
    fail(std::string("the server sent a reply the harness cannot read: ") +
         e.getDescription().cStr());
  }
}

// MANAGER_FUZZ_VERBOSE: one reply as text (its result decoded if it is one: a Greeting, read
// as a Reply, may not decode).
void print(const std::vector<std::byte>& bytes, const Answer& a) {
  std::string what = a.ok ? "ok" : a.error;
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(bytes.data()),
                                        bytes.size() / 8);
  try {
    capnp::FlatArrayMessageReader reader(words, troupe::reader_options(words.size()));
    auto r = reader.getRoot<troupe::proto::manager::Reply>();
    if (r.isResult()) what = mm::detail::repr(mm::detail::to_item(r.getResult()), 200);
  } catch (const std::exception& e) {
    what = std::string("(not a value: ") + e.what() + ")";
  } catch (const kj::Exception& e) {
    what = std::string("(not a value: ") + e.getDescription().cStr() + ")";
  }
  std::fprintf(stderr, "  reply %llu: %s\n", static_cast<unsigned long long>(a.call_id),
               what.c_str());
}

// The next frame from the server by `deadline`; none if it closed the connection.
std::optional<std::vector<std::byte>> next_frame(mp::Connection& c, Clock::time_point deadline,
                                                 const std::string& waiting_for) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left <= 0ms || !c.poll(left))
    fail("no " + waiting_for + " from the server within " +
         std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kWait).count()) +
         " s: it hangs");
  try {
    return c.recv_bytes();
  } catch (const troupe::EOFError&) {
    return std::nullopt;
  } catch (const troupe::OSError&) {
    return std::nullopt;  // reset by the server
  }
}

bool send(mp::Connection& c, std::span<const std::byte> frame) {
  try {
    c.send_bytes(frame);
    return true;
  } catch (const troupe::OSError&) {
    return false;  // the server dropped the connection (broken pipe, reset)
  }
}

class Harness {
public:
  Harness() {
    ::signal(SIGPIPE, SIG_IGN);
    // The server logs a dropped client as a WARNING (expected here) and an exception that
    // escaped one of its handlers as an ERROR (a bug: the lane it ran on may stay busy). It logs
    // on its own threads, maybe after the input's last reply: run() reports it once the
    // server's threads have been through a barrier (so the artifact is the input's).
    mp::get_logger().add_handler([this](int level, const std::string& line) {
      if (level < mp::logging::ERROR) return;
      std::scoped_lock lock(logged_m_);
      if (logged_.empty()) logged_ = line;
    });
    mm::SyncManager::types();
    mm::ServerOptions o;
    o.allow_shutdown = false;   // a shutdown request would end the server every input shares
    o.foreign_proxies = false;  // an input's ref may name any address: no connections out
    o.threads = kThreads;
    o.max_calls_in_flight = kMostInFlight;
    o.max_objects_held = kMostHeld;
    o.max_message_size = kLargestRequest;
    o.park_ttl = 2s;  // parks of ended inputs go soon (memory stays bounded)
    o.listener.authkey = key_;
    server_.emplace(mm::SyncManager::registry(), std::nullopt, o);
    server_->start();
    holder_ = connect();
    if (!hello(holder_)) fail("the server refused the holder's Hello");
    const auto& shared = wire::shared_objects();
    for (std::size_t i = 0; i < shared.size(); ++i) {
      const std::uint64_t call_id = next_call_++;
      if (!send(holder_, wire::create(call_id, kHarnessLane, shared[i].typeid_, shared[i].args())))
        fail("the holder could not send a create");
      auto a = wait_for(holder_, call_id, "reply to the create of a shared object");
      if (!a || !a->ok || a->proxy_id != i + 1)
        fail("creating the shared " + std::string(shared[i].typeid_) + " gave " +
             (a ? a->error : std::string("a dropped connection")) + " (id " +
             std::to_string(a ? a->proxy_id : 0) + ", expected " + std::to_string(i + 1) + ")");
    }
  }

  ~Harness() {
    holder_.close();
    server_->stop();  // threads joined, objects released
    server_.reset();  // a second stop(), in ~Server (once a use-after-free: it must return)
    mp::get_logger().clear_handlers();  // the handler refers to this
  }

  // An authenticated connection to the server.
  mp::Connection connect() {
    mp::ClientOptions co;
    co.authkey = key_;
    co.timeout = kWait;
    try {
      return mp::Client(server_->address(), co);
    } catch (const std::exception& e) {
      fail(std::string("the server does not accept a client: ") + e.what());
    }
  }

  // Sends a valid Hello; whether the server welcomed it.
  bool hello(mp::Connection& c) {
    if (!send(c, wire::hello())) return false;
    auto f = next_frame(c, Clock::now() + kWait, "Greeting");
    if (!f) return false;
    kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(f->data()),
                                          f->size() / 8);
    try {
      capnp::FlatArrayMessageReader reader(words);
      return reader.getRoot<troupe::proto::manager::Greeting>().isWelcome();
    } catch (const kj::Exception& e) {
      fail(std::string("the server's Greeting is not one: ") + e.getDescription().cStr());
    }
  }

  // Reads replies until the one to `call_id`; none if the server closed the connection.
  std::optional<Answer> wait_for(mp::Connection& c, std::uint64_t call_id, const std::string& what,
                                 bool decode = false) {
    const auto deadline = Clock::now() + kWait;
    for (int i = 0; i < 1000000; ++i) {
      auto f = next_frame(c, deadline, what);
      if (!f) return std::nullopt;
      auto a = read_reply(*f, decode);
      if (verbose()) print(*f, a);
      if (a.call_id == call_id) return a;
    }
    fail("a million replies without the " + what);
  }

  // A ping and its reply: whether the server read everything sent before it on `c`.
  bool probe(mp::Connection& c) {
    auto ping = wire::request(kProbeId, kHarnessLane, [](auto r) { r.setPing(); });
    if (!send(c, ping)) return false;
    auto a = wait_for(c, kProbeId, "reply to the ping");
    return a.has_value();
  }

  // One input: a client that sends the frames, and the proof that the server is still there.
  void run(bool own_hello, const std::vector<std::span<const std::byte>>& frames) {
    bool served = false;
    {
      auto c = connect();
      if (!own_hello && !hello(c)) fail("the server refused a valid Hello");
      bool up = true;
      for (const auto& f : frames)
        if (!send(c, f)) {
          up = false;
          break;
        }
      served = up && probe(c);
    }  // closed: the server releases what it held
    if (!served) {
      // The server dropped that client: it must go on serving others.
      auto fresh = connect();
      if (!hello(fresh) || !probe(fresh))
        fail("after dropping a client, the server no longer serves a new one");
    }
    finish();
  }

  // After an input: the shared objects reset, the server's threads through a barrier, and no
  // ERROR logged meanwhile.
  void finish() {
    reset();
    barrier();
    std::scoped_lock lock(logged_m_);
    if (!logged_.empty()) fail("the server logged an error: " + logged_);
  }

  // Returns once each of the server's threads has finished what it was given before: one
  // handler per thread, each waiting for all of them (a handler that never ends is a hang).
  void barrier() {
    struct Meet {
      std::mutex m;
      std::condition_variable cv;
      unsigned arrived = 0;
    };
    auto meet = std::make_shared<Meet>();
    for (unsigned i = 0; i < kThreads; ++i)
      boost::asio::post(server_->get_executor(), [meet] {
        std::unique_lock lock(meet->m);
        ++meet->arrived;
        meet->cv.notify_all();
        meet->cv.wait_for(lock, kWait, [&] { return meet->arrived >= kThreads; });
      });
    std::unique_lock lock(meet->m);
    if (!meet->cv.wait_for(lock, kWait, [&] { return meet->arrived >= kThreads; }))
      fail("the server's threads did not all come to a barrier within 5 s: a handler is stuck");
  }

  // Puts the shared objects back as made (what bounds the memory an input can leave behind),
  // through the holder connection, which must still hold all of them.
  void reset() {
    std::map<std::uint64_t, std::string> pending;       // call id → what
    std::map<std::uint64_t, bool> may_fail;             // call id → an error is expected
    std::map<std::uint64_t, std::optional<Item>> kept;  // call id → its result, wanted
    // Sent in batches under the server's limit of calls in flight.
    auto call = [&](std::string_view typeid_, std::string_view method, std::vector<Item> args = {},
                    bool may = false) {
      if (pending.size() >= kMostInFlight / 2) collect(pending, may_fail, kept);
      const std::uint64_t id = next_call_++;
      const std::uint64_t object = wire::shared_id(typeid_);
      if (!send(holder_, wire::call(id, kHarnessLane + object, object, method, args)))
        fail("the server dropped the holder connection");
      pending.emplace(id, std::string(typeid_) + "." + std::string(method));
      if (may) may_fail[id] = true;
      return id;
    };
    const std::uint64_t sizes[] = {call("Queue", "qsize"), call("JoinableQueue", "qsize")};
    const std::uint64_t names = call("Namespace", "#GETVALUE");
    for (auto id : {sizes[0], sizes[1], names}) kept[id];
    call("Event", "clear");
    call("dict", "clear");
    call("list", "clear");
    call("set", "clear");
    call("Value", "set", {Item::integer(0)});
    call("Array", "__setitem__",
         {Item::sequence({Item::none(), Item::none(), Item::none()}),
          Item::list({Item::integer(0), Item::integer(0), Item::integer(0), Item::integer(0)})});
    collect(pending, may_fail, kept);
    // Then what those told: the queues' items to take out, the Namespace's attributes to
    // delete (its value is a dict: flat k0, v0, k1, v1, ...). Another client's late call may
    // have taken or removed one meanwhile: those may fail.
    std::int64_t items[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      const auto& n = kept[sizes[i]];
      if (n && n->kind() == mm::detail::Kind::integer)
        items[i] = std::min<std::int64_t>(n->as_int(), 64);
    }
    const std::optional<Item> attributes = std::move(kept[names]);
    kept.clear();
    for (int i = 0; i < 2; ++i)
      for (std::int64_t k = 0; k < items[i]; ++k)
        call(i == 0 ? "Queue" : "JoinableQueue", "get_nowait", {}, true);
    if (attributes && attributes->is_container()) {
      const auto& e = attributes->elements();
      for (std::size_t i = 0; i + 1 < e.size(); i += 2)
        call("Namespace", "__delattr__", {e[i]}, true);
    }
    collect(pending, may_fail, kept);
  }

private:
  // Reads the holder's replies until every call in `pending` has one; the results of the
  // calls in `kept` go there.
  void collect(std::map<std::uint64_t, std::string>& pending,
               std::map<std::uint64_t, bool>& may_fail,
               std::map<std::uint64_t, std::optional<Item>>& kept) {
    const auto deadline = Clock::now() + kWait;
    for (int i = 0; !pending.empty(); ++i) {
      if (i > 1000000) fail("a million replies to the holder's resets");
      auto f = next_frame(holder_, deadline, "reply to the holder's " + pending.begin()->second);
      if (!f) fail("the server dropped the holder connection");
      auto k = kept.find(read_reply(*f, false).call_id);
      auto a = read_reply(*f, k != kept.end());
      auto it = pending.find(a.call_id);
      if (it == pending.end()) continue;
      if (!a.ok && !may_fail[a.call_id])
        fail("the holder's " + it->second + " failed (" + a.error +
             "): did another client's request release or break it?");
      if (k != kept.end()) k->second = std::move(a.result);
      may_fail.erase(a.call_id);
      pending.erase(it);
    }
  }

  mp::AuthenticationString key_{std::string_view("manager fuzzing key")};
  std::optional<mm::Server> server_;
  mp::Connection holder_;
  std::uint64_t next_call_ = 1;
  std::mutex logged_m_;
  std::string logged_;  // the first ERROR the server logged
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Harness harness;  // stopped by its destructor at exit, so LeakSanitizer sees no server
  if (size == 0) return 0;
  const auto body = std::as_bytes(std::span(data + 1, size - 1));
  harness.run((data[0] & 1) != 0, wire::split(body, kMostFrames));
  return 0;
}
