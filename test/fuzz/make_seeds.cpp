// Writes seed inputs for the fuzz targets: make_seeds DIR creates
// DIR/{frame,handshake,codec,send_bytes,manager,pickle}/.
// Made from the library itself, so the seeds follow the wire format as it changes.
#include <sys/stat.h>

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/multiprocessing/managers/detail/pickle.hpp"

#include "manager_wire.hpp"

namespace {

struct Payload {  // as in frame_fuzz.cpp (same name, same fingerprint)
  std::vector<std::byte> bytes;
  std::string text;
  std::map<std::int32_t, std::vector<std::byte>> more;
};

std::string dir;

void write_seed(const std::string& target, int n, std::uint8_t control,
                const std::vector<std::byte>& body) {
  const std::string d = dir + "/" + target;
  mkdir(d.c_str(), 0755);
  const std::string path = d + "/seed" + std::to_string(n);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return;
  std::fputc(control, f);
  std::fwrite(body.data(), 1, body.size(), f);
  std::fclose(f);
}

// One send_bytes_fuzz case: a buffer length, then offset and size (little-endian; size 2^64 - 1
// for None).
std::vector<std::byte> send_case(std::uint8_t length, std::uint64_t offset, std::uint64_t size) {
  std::vector<std::byte> out{std::byte{length}};
  for (std::uint64_t v : {offset, size})
    for (int i = 0; i < 8; ++i) out.push_back(std::byte(v >> (8 * i)));
  return out;
}

std::vector<std::byte> frame(const std::vector<std::byte>& payload) {
  std::vector<std::byte> out;
  const auto n = static_cast<std::uint32_t>(payload.size());
  for (int i = 3; i >= 0; --i) out.push_back(std::byte(n >> (8 * i)));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<std::byte> bytes(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

std::vector<std::byte> cat(std::initializer_list<std::vector<std::byte>> parts) {
  std::vector<std::byte> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// manager_fuzz: requests of every kind after the harness's Hello (control byte 0), on the shared
// objects (manager_wire.hpp) and on bad ids, names and arguments; and Hellos of the input's own
// (control byte 1). No request here may crash the server or stop it (shutdown is refused there).
void manager_seeds() {
  namespace w = troupe::fuzz::manager;
  using Item = w::Item;
  using R = w::Request::Builder;
  auto id = [](std::string_view t) { return w::shared_id(t); };
  auto I = [](std::int64_t i) { return Item::integer(i); };
  auto S = [](std::string s) { return Item::text(std::move(s)); };
  auto F = [](double d) { return Item::floating(d); };
  auto B = [](bool b) { return Item::boolean(b); };
  auto N = [] { return Item::none(); };
  auto L = [](std::vector<Item> e) { return Item::list(std::move(e)); };
  auto ping = [](std::uint64_t call) { return w::request(call, 1, [](R r) { r.setPing(); }); };
  int n = 0;
  auto seed = [&](std::uint8_t control, const std::vector<std::vector<std::byte>>& frames) {
    std::vector<std::byte> body;
    for (const auto& f : frames) w::append_frame(body, f);
    write_seed("manager", n++, control, body);
  };
  // Creates of each typeid (with arguments), and of unknown or misused ones.
  {
    std::vector<std::vector<std::byte>> f;
    std::uint64_t call = 1;
    for (const auto& s : w::shared_objects()) {
      const std::uint64_t c = call++;
      f.push_back(w::create(c, c, s.typeid_, s.args()));
    }
    f.push_back(w::create(call++, 1, "dict", {L({S("a"), I(1), S("b"), I(2)})}));
    f.push_back(w::create(call++, 1, "list", {L({I(1), S("x"), F(2.5)})}));
    f.push_back(w::create(call++, 1, "set", {L({I(1), I(2), I(2)})}));
    f.push_back(w::create(call++, 1, "Value", {S("d"), F(1.5)}));
    f.push_back(w::create(call++, 1, "Array", {S("b"), L({I(1), I(-2), I(3)})}));
    f.push_back(w::create(call++, 1, "Semaphore", {I(-1)}));
    f.push_back(w::create(call++, 1, "Queue", {S("not a size")}));
    f.push_back(w::create(call++, 1, "Lock", {I(1)}));
    f.push_back(w::create(call++, 1, "NoSuchTypeid"));
    f.push_back(w::create(call++, 1, "Array", {S("?"), L({})}));
    f.push_back(ping(call++));
    seed(0, f);
  }
  // Queues: put and get, blocking or not, with and without a timeout; the joinable one's tasks.
  {
    const auto q = id("Queue"), j = id("JoinableQueue");
    seed(0,
         {w::call(1, 1, q, "put", {I(5)}), w::call(2, 1, q, "put", {S("x"), B(false), F(0.01)}),
          w::call(3, 1, q, "qsize"), w::call(4, 1, q, "get", {B(false)}),
          w::call(5, 1, q, "get_nowait"), w::call(6, 1, q, "empty"), w::call(7, 1, q, "full"),
          w::call(8, 1, q, "put_nowait", {L({I(1), I(2)})}),
          w::call(9, 2, q, "get", {B(true), F(0.01)}), w::call(10, 1, j, "put", {I(1)}),
          w::call(11, 1, j, "get"), w::call(12, 1, j, "task_done"), w::call(13, 1, j, "task_done"),
          w::call(14, 3, j, "join"), w::call(15, 1, q, "get", {B(true), N()}),
          w::call(16, 4, q, "get"), w::request(17, 4, [](R r) { r.setCancel(16); }), ping(18)});
  }
  // Locks and semaphores: acquired, released, over-released, waited for with a timeout.
  {
    const auto l = id("Lock"), r = id("RLock"), s = id("Semaphore"), b = id("BoundedSemaphore");
    seed(0, {w::call(1, 1, l, "acquire"), w::call(2, 1, l, "locked"),
             w::call(3, 2, l, "acquire", {B(true), F(0.01)}), w::call(4, 1, l, "release"),
             w::call(5, 1, l, "release"), w::call(6, 1, r, "acquire"),
             w::call(7, 1, r, "acquire", {B(false)}), w::call(8, 2, r, "release"),
             w::call(9, 1, r, "release"), w::call(10, 1, s, "acquire", {B(true), F(0.01)}),
             w::call(11, 1, s, "release", {I(3)}), w::call(12, 1, b, "release"),
             w::call(13, 1, b, "acquire", {B(false), N()}), w::call(14, 1, s, "locked"),
             w::call(15, 5, l, "acquire"), ping(16)});
  }
  // Event, Value, Array, Namespace.
  {
    const auto e = id("Event"), v = id("Value"), a = id("Array"), ns = id("Namespace");
    seed(0,
         {w::call(1, 1, e, "set"), w::call(2, 1, e, "is_set"), w::call(3, 1, e, "wait", {F(0.01)}),
          w::call(4, 1, e, "clear"), w::call(5, 2, e, "wait", {F(0)}), w::call(6, 1, v, "get"),
          w::call(7, 1, v, "set", {I(42)}), w::call(8, 1, a, "__len__"),
          w::call(9, 1, a, "__getitem__", {I(1)}), w::call(10, 1, a, "__setitem__", {I(1), I(7)}),
          w::call(11, 1, a, "__getitem__", {Item::sequence({I(0), N(), I(2)})}),
          w::call(12, 1, ns, "__setattr__", {S("x"), I(1)}),
          w::call(13, 1, ns, "__getattribute__", {S("x")}),
          w::call(14, 1, ns, "__delattr__", {S("x")}), w::call(15, 1, ns, "#GETVALUE"),
          w::call(16, 1, a, "__setitem__", {I(9), I(1)}), ping(17)});
  }
  // dict, list, set.
  {
    const auto d = id("dict"), l = id("list"), s = id("set");
    seed(0,
         {w::call(1, 1, d, "__setitem__", {S("a"), I(1)}),
          w::call(2, 1, d, "__getitem__", {S("a")}), w::call(3, 1, d, "get", {S("b"), I(2)}),
          w::call(4, 1, d, "keys"), w::call(5, 1, d, "items"),
          w::call(6, 1, d, "update", {L({S("c"), F(3.5)})}), w::call(7, 1, d, "pop", {S("a")}),
          w::call(8, 1, d, "popitem"), w::call(9, 1, d, "setdefault", {I(1), L({})}),
          w::call(10, 1, d, "__contains__", {I(1)}), w::call(11, 1, d, "__len__"),
          w::call(12, 1, d, "copy"), w::call(13, 1, d, "__getitem__", {S("missing")}), ping(14)});
    seed(0, {w::call(14, 1, l, "append", {I(3)}),
             w::call(15, 1, l, "extend", {L({I(1), I(2)})}),
             w::call(16, 1, l, "insert", {I(0), S("z")}),
             w::call(17, 1, l, "__getitem__", {Item::sequence({N(), N(), I(-1)})}),
             w::call(18, 1, l, "__setitem__", {I(0), B(true)}),
             w::call(19, 1, l, "sort"),
             w::call(20, 1, l, "reverse"),
             w::call(21, 1, l, "index", {I(3)}),
             w::call(22, 1, l, "count", {I(1)}),
             w::call(23, 1, l, "pop"),
             w::call(24, 1, l, "remove", {I(2)}),
             w::call(25, 1, l, "__mul__", {I(2)}),
             w::call(26, 1, l, "__imul__", {I(2)}),
             w::call(27, 1, s, "add", {S("k")}),
             w::call(28, 1, s, "__contains__", {S("k")}),
             w::call(29, 1, s, "__or__", {L({I(1)})}),
             w::call(30, 1, s, "discard", {S("k")}),
             w::call(31, 1, s, "difference", {L({I(1)})}),
             w::call(32, 1, s, "__len__"),
             ping(33)});
  }
  // References: incref, decref (one too many), park and claim in both orders, a claim of a
  // ticket parked for another object; introspection; cancel; a refused shutdown.
  {
    const auto d = id("dict"), l = id("list");
    auto ref = [](std::uint64_t call, auto set) { return w::request(call, 1, set); };
    seed(0, {ref(1, [&](R r) { r.setIncref(d); }), ref(2, [&](R r) { r.setDecref(d); }),
             ref(3, [&](R r) { r.setDecref(d); }),
             ref(4,
                 [&](R r) {
                   auto t = r.initPark();
                   t.setId(d);
                   t.setTicket(77);
                 }),
             ref(5,
                 [&](R r) {
                   auto t = r.initClaim();
                   t.setId(d);
                   t.setTicket(77);
                 }),
             ref(6, [&](R r) { r.setDecref(d); }),
             ref(7,
                 [&](R r) {
                   auto t = r.initClaim();
                   t.setId(l);
                   t.setTicket(78);
                 }),
             ref(8,
                 [&](R r) {
                   auto t = r.initPark();
                   t.setId(l);
                   t.setTicket(78);
                 }),
             ref(9,
                 [&](R r) {
                   auto t = r.initPark();
                   t.setId(l);
                   t.setTicket(79);
                 }),
             ref(10,
                 [&](R r) {
                   auto t = r.initClaim();
                   t.setId(d);
                   t.setTicket(79);
                 }),
             ref(11,
                 [&](R r) {
                   auto t = r.initPark();
                   t.setId(d);
                   t.setTicket(0);
                 }),
             ref(12, [&](R r) { r.setIncref(999); }), ref(13, [&](R r) { r.setGetMethods(l); }),
             ref(14, [&](R r) { r.setGetMethods(999); }), ref(15, [](R r) { r.setDebugInfo(); }),
             ref(16, [](R r) { r.setNumberOfObjects(); }), ref(17, [](R r) { r.setCancel(5); }),
             ref(18, [](R r) { r.setShutdown(); }), ping(19)});
  }
  // Calls that fail: no such object, a method not exposed, wrong arguments, __repr__ and
  // __str__, a call id already in flight; a blocking get and calls queued behind it on its lane.
  {
    const auto q = id("Queue"), d = id("dict");
    seed(0, {w::call(1, 1, 999, "get"), w::call(2, 1, d, "no_such_method"),
             w::call(3, 1, d, "__getitem__"), w::call(4, 1, q, "put", {I(1), S("x"), S("y"), I(2)}),
             w::call(5, 1, q, "get", {B(true), S("soon")}), w::call(6, 1, d, "__repr__"),
             w::call(7, 1, q, "__str__", {I(1)}), w::call(8, 2, q, "get"), w::call(8, 3, q, "get"),
             w::call(9, 2, d, "__len__"), w::call(10, 1, q, "get", {B(true), F(-1)}),
             w::call(11, 1, q, "get", {B(true), F(1e300)}), ping(12)});
  }
  // More state than the harness's resets take back in one batch (a full queue and a put that
  // waits, attributes of the Namespace); over the limits of calls in flight (waits queued on a
  // lane count) and of objects held (manager_fuzz.cpp's ServerOptions: 32 and 24).
  {
    std::vector<std::vector<std::byte>> f;
    std::uint64_t call = 1;
    for (int i = 0; i < 9; ++i) f.push_back(w::call(call++, 1, id("Queue"), "put", {I(i)}));
    for (int i = 0; i < 12; ++i)
      f.push_back(
          w::call(call++, 2, id("Namespace"), "__setattr__", {S("a" + std::to_string(i)), I(i)}));
    f.push_back(ping(call++));
    seed(0, f);
    f.clear();
    for (int i = 0; i < 34; ++i) f.push_back(w::call(call++, 1, id("Event"), "wait"));
    f.push_back(ping(call++));
    seed(0, f);
    f.clear();
    for (int i = 0; i < 26; ++i) f.push_back(w::create(call++, 2, "Event"));
    f.push_back(ping(call++));
    seed(0, f);
  }
  // Hellos of the input's own: a valid one then requests, a wrong version, a wrong magic.
  seed(1, {w::hello(), w::call(1, 1, id("Event"), "is_set"), ping(2)});
  seed(1, {w::hello(0x3172676e4d705274ull, 99), ping(1)});
  seed(1, {w::hello(1), ping(1)});
  // Frames that are not requests: empty, not whole words, a Hello where a request belongs.
  seed(0, {ping(1), {}, ping(2)});
  seed(0, {ping(1), std::vector<std::byte>(7, std::byte{1})});
  seed(0, {w::hello(), ping(1)});
}

}  // namespace

// Pickle seeds: values of every kind the subset reads, written by the library (protocols 4 and
// 5), and the protocol-2 forms of bytes and set (a global and a REDUCE), with a bad one.
void pickle_seeds() {
  namespace mmd = troupe::multiprocessing::managers::detail;
  using mmd::Item;
  const Item all =
      Item::list({Item::none(), Item::boolean(true), Item::integer(-70000), Item::uinteger(~0ull),
                  Item::floating(-0.5), Item::text("t\xc3\xa9"), Item::bytes(std::string(300, 'b')),
                  Item::bytearray("ba"), Item::tuple({Item::integer(1), Item::tuple({})}),
                  Item::dict({Item::text("k"), Item::set({Item::integer(2)})}),
                  Item::frozenset({Item::text("f")}),
                  Item::slice(Item::integer(1), Item::none(), Item::integer(-1))});
  int n = 0;
  for (std::uint8_t p : {4, 5}) {
    const std::string s = mmd::pickle::encode(all, p);
    write_seed("pickle", n++, p & 1, bytes(s));
  }
  write_seed("pickle", n++, 0,
             bytes(std::string("\x80\x02"
                               "c_codecs\nencode\nq\x00X\x02\0\0\0abX\x06\0\0\0latin1"
                               "\x86R\x94"
                               "c__builtin__\nset\n](K\x01K\x02"
                               "e\x85R\x86.",
                               69)));
  write_seed("pickle", n++, 1,
             bytes("\x80\x04"
                   "cposix\nsystem\n\x8c\x04true\x85R."));
  // A manager's replies: an error, and a new proxy's token (NEWOBJ, then BUILD of its state).
  const Item token = Item::object(
      "multiprocessing.managers.Token", Item::tuple({}),
      Item::tuple({Item::text("dict"), Item::tuple({Item::text("127.0.0.1"), Item::integer(50000)}),
                   Item::text("7f3a")}));
  const Item error = Item::tuple(
      {Item::text("#ERROR"), Item::object("builtins.KeyError", Item::tuple({Item::text("k")}))});
  write_seed("pickle", n++, 0, bytes(mmd::pickle::encode(error)));
  const Item proxy =
      Item::tuple({Item::text("#PROXY"), Item::tuple({Item::tuple({Item::text("keys")}), token})});
  write_seed("pickle", n++, 1, bytes(mmd::pickle::encode(proxy, 5)));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  dir = argv[1];
  mkdir(dir.c_str(), 0755);
  pickle_seeds();
  // Frames: short, empty, long header, typed message.
  auto typed = troupe::to_bytes(std::vector<std::string>{"a", "bc"});
  for (std::uint8_t mode = 0; mode < 3; ++mode) {
    write_seed("frame", mode * 4 + 0, mode, cat({frame(bytes("hello")), frame({})}));
    write_seed("frame", mode * 4 + 1, mode,
               cat({bytes("\xff\xff\xff\xff"), bytes(std::string("\0\0\0\0\0\0\0\x03", 8)),
                    bytes("abc")}));
    write_seed("frame", mode * 4 + 2, mode, frame(typed));
    write_seed("frame", mode * 4 + 3, mode, frame(std::vector<std::byte>(600, std::byte{7})));
  }
  // Mode 4 (a large frame read segment by segment): the start of a real one, the rest zeros.
  auto large = troupe::to_bytes(Payload{
      std::vector<std::byte>(300 * 1024, std::byte{1}), "t", {{1, std::vector<std::byte>(70000)}}});
  large.resize(2048);
  write_seed("frame", 12, 4, large);
  write_seed("frame", 13, 3, frame(troupe::to_bytes(Payload{{}, "small", {}})));
  // Handshakes: a well-formed challenge, welcome and (wrong) answer, both dialects.
  const auto challenge = cat({bytes("#CHALLENGE#{sha256}"), std::vector<std::byte>(40)});
  const auto answer = cat({bytes("{sha256}"), std::vector<std::byte>(32)});
  write_seed("handshake", 0, 0, cat({frame(challenge), frame(bytes("#WELCOME#")), frame(answer)}));
  write_seed("handshake", 1, 1, cat({frame(answer), frame(challenge), frame(bytes("#WELCOME#"))}));
  write_seed("handshake", 2, 2,
             cat({frame(cat({bytes("#CHALLENGE#"), std::vector<std::byte>(20)})),
                  frame(bytes("#WELCOME#"))}));
  write_seed("handshake", 3, 3,
             cat({frame(std::vector<std::byte>(16)), frame(bytes("#FAILURE#"))}));
  // Codec: one well-formed message per type the target decodes (see codec_fuzz.cpp).
  write_seed("codec", 2, 2, typed);
  write_seed("codec", 3, 3,
             troupe::to_bytes(std::map<std::int64_t, std::tuple<bool, double, std::string>>{
                 {1, {true, 2.5, "x"}}, {-4, {false, 0, ""}}}));
  write_seed("codec", 4, 4, troupe::to_bytes(std::array<std::uint16_t, 8>{1, 2, 3}));
  write_seed(
      "codec", 5, 5,
      troupe::to_bytes(std::variant<std::int8_t, std::vector<std::byte>, std::set<std::string>>(
          std::set<std::string>{"p", "q"})));
  // send_bytes: in range, None, each of Python's four errors, and offset + size wrapping past
  // 2^64 (issue 15). The first byte of a case is the control byte write_seed puts first.
  constexpr std::uint64_t kMax = ~std::uint64_t{0};
  const auto cases =
      cat({send_case(16, 2, 3), send_case(16, 4, kMax), send_case(16, 0, 16),
           send_case(16, kMax, kMax), send_case(16, 17, kMax), send_case(16, 8, kMax - 1),
           send_case(16, 8, 9), send_case(16, 8, kMax - 7), send_case(200, 100, kMax - 99)});
  write_seed("send_bytes", 0, std::uint8_t(cases[0]),
             std::vector<std::byte>(cases.begin() + 1, cases.end()));
  manager_seeds();
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}
