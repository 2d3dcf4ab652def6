#include "troupe/codec.hpp"

#include <cstdint>
#include <cstdio>

#include <kj/exception.h>
#include <kj/io.h>

#include "troupe/detail/checked.hpp"
#include "troupe/errors.hpp"

namespace troupe {
namespace codec_detail {
namespace {

std::string_view which_name(Which w) {
  switch (w) {
    case Which::NONE: return "none";
    case Which::BOOL: return "bool";
    case Which::INT: return "int";
    case Which::UINT: return "uint";
    case Which::FLOAT: return "float";
    case Which::TEXT: return "text";
    case Which::DATA: return "data";
    case Which::LIST: return "list";
    case Which::ALTERNATIVE: return "alternative";
    case Which::STRUCT: return "struct";
    case Which::REF: return "ref (a proxy)";
  }
  return "an unknown kind";
}

}  // namespace

void malformed(std::string_view what) {
  throw ValueError("malformed message: " + std::string(what));
}

void expect(proto::Value::Reader v, Which want, std::string_view type) {
  const Which got = v.which();
  if (got == want) return;
  const auto raw = static_cast<unsigned>(got);
  malformed(std::string(type) + " expects " + std::string(which_name(want)) + ", got " +
            (raw <= static_cast<unsigned>(Which::REF) ? std::string(which_name(got))
                                                      : "kind " + std::to_string(raw)));
}

void expect_size(std::size_t got, std::size_t want, std::string_view type) {
  if (got != want)
    malformed(std::string(type) + " expects " + std::to_string(want) + " elements, got " +
              std::to_string(got));
}

std::uint64_t fnv1a(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string type_name_from_pretty(std::string_view p) {
  // GCC: "... pretty() [with T = app::Job; std::string_view = ...]"; Clang: "... [T = app::Job]".
  auto at = p.find("T = ");
  if (at == std::string_view::npos) return std::string(p);
  p.remove_prefix(at + 4);
  int depth = 0;
  std::size_t end = 0;
  for (; end < p.size(); ++end) {
    const char c = p[end];
    if (c == '<' || c == '(' || c == '[') ++depth;
    if (c == '>' || c == ')') --depth;
    if (c == ']') {
      if (depth == 0) break;
      --depth;
    }
    if (c == ';' && depth == 0) break;
  }
  std::string name(p.substr(0, end));
  // The two compilers spell anonymous namespaces differently.
  for (std::string_view anon : {"{anonymous}", "(anonymous namespace)"}) {
    for (auto i = name.find(anon); i != std::string::npos; i = name.find(anon, i))
      name.replace(i, anon.size(), "(anonymous)");
  }
  return name;
}

namespace {

void put_one_blob(proto::Value::Builder v, const kj::byte* p, std::size_t n, bool text,
                  bool may_reference) {
  constexpr std::size_t kReferenceFrom = 16 * 1024;
  if (text) {
    auto t = v.initText(static_cast<unsigned>(n));
    if (n) std::memcpy(t.begin(), p, n);
  } else if (may_reference && n >= kReferenceFrom && n % sizeof(capnp::word) == 0 &&
             reinterpret_cast<std::uintptr_t>(p) % alignof(capnp::word) == 0) {
    // No copy: the blob becomes a segment of its own, written straight from the caller's memory.
    v.adoptData(capnp::Orphanage::getForMessageContaining(v).referenceExternalData(
        capnp::Data::Reader(p, n)));
  } else {
    v.setData(capnp::Data::Reader(p, n));
  }
}

}  // namespace

unsigned list_size(std::size_t n, std::size_t per_value, std::string_view type) {
  const auto elements = troupe::detail::checked_mul(n, per_value);
  if (!elements || *elements > kMaxListElements)
    throw ValueError("cannot encode the value as a message: " + std::string(type) + " of " +
                     std::to_string(n) + " values is over Cap'n Proto's limit of " +
                     std::to_string(kMaxListElements / per_value) + " per list");
  return static_cast<unsigned>(*elements);
}

void put_blob(proto::Value::Builder v, const void* p, std::size_t n, bool text,
              bool may_reference) {
  const auto* b = static_cast<const kj::byte*>(p);
  if (n <= kMaxBlobChunk) {
    put_one_blob(v, b, n, text, may_reference);
    return;
  }
  const std::size_t chunks = (n + kMaxBlobChunk - 1) / kMaxBlobChunk;
  auto l = v.initList(static_cast<unsigned>(chunks));
  for (std::size_t i = 0; i < chunks; ++i) {
    const std::size_t off = i * kMaxBlobChunk;
    put_one_blob(l[static_cast<unsigned>(i)], b + off, std::min(kMaxBlobChunk, n - off), text,
                 may_reference);
  }
}

Blob read_blob(proto::Value::Reader v, bool text, std::string_view type) {
  const Which kind = text ? Which::TEXT : Which::DATA;
  Blob blob;
  auto one = [&](proto::Value::Reader c) {
    expect(c, kind, type);
    kj::ArrayPtr<const kj::byte> bytes;
    if (text) {
      auto t = c.getText();
      bytes = kj::ArrayPtr<const kj::byte>(reinterpret_cast<const kj::byte*>(t.begin()), t.size());
    } else {
      bytes = c.getData();
    }
    blob.size += bytes.size();
    blob.chunks.push_back(bytes);
  };
  if (v.which() == Which::LIST) {
    for (auto c : v.getList()) one(c);
  } else {
    one(v);
  }
  return blob;
}

std::optional<std::vector<std::byte>> take_donated(const Blob& blob) {
  if (!donors.buffers || blob.chunks.empty() || blob.size == 0) return std::nullopt;
  // The chunks must lie end to end and cover one buffer exactly.
  const kj::byte* start = blob.chunks.front().begin();
  const kj::byte* at = start;
  for (const auto& c : blob.chunks) {
    if (c.begin() != at) return std::nullopt;
    at = c.end();
  }
  for (auto& b : *donors.buffers) {
    if (reinterpret_cast<const kj::byte*>(b.data()) == start && b.size() == blob.size)
      return std::exchange(b, {});
  }
  return std::nullopt;
}

void Blob::copy_to(void* out) const {
  auto* o = static_cast<kj::byte*>(out);
  for (const auto& c : chunks) {
    if (c.size()) std::memcpy(o, c.begin(), c.size());
    o += c.size();
  }
}

std::string int_signature(bool is_signed, std::size_t bytes, bool is_char) {
  if (is_char) return "char";
  return (is_signed ? "i" : "u") + std::to_string(bytes * 8);
}

void int_out_of_range(std::string_view type, std::string_view value) {
  malformed("value " + std::string(value) + " is out of range for " + std::string(type));
}

std::string ratio_signature(std::intmax_t num, std::intmax_t den) {
  return std::to_string(num) + "/" + std::to_string(den);
}

std::string capnp_display_name(capnp::Schema s) {
  auto n = s.getProto().getDisplayName();
  auto prefix = s.getProto().getDisplayNamePrefixLength();
  return std::string(n.begin() + prefix, n.size() - prefix);
}

std::string capnp_signature(std::uint64_t id, std::string_view display_name) {
  char hex[24];
  std::snprintf(hex, sizeof hex, "@0x%016llx", static_cast<unsigned long long>(id));
  return "capnp " + std::string(display_name) + hex;
}

void wrong_type(std::string_view want, std::string_view got) {
  throw TypeError("expected a message of type " + std::string(want) + ", got one of type " +
                  std::string(got));
}

void check_envelope(proto::Envelope::Reader env, const TypeId& want) {
  if (env.getFingerprint() == want.fingerprint) return;
  auto name = env.getTypeName();
  // The name is the peer's word only; bound what goes into the message.
  constexpr std::size_t kMaxName = 512;
  std::string got(name.begin(), std::min<std::size_t>(name.size(), kMaxName));
  if (name.size() > kMaxName) got += "...";
  wrong_type(want.signature, got.empty() ? "(unnamed)" : got);
}

void cannot_encode_kj(const kj::Exception& e) {
  throw ValueError("cannot encode the value as a message: " +
                   std::string(e.getDescription().cStr()));
}

void malformed_kj(const kj::Exception& e) {
  malformed(e.getDescription().cStr());
}

}  // namespace codec_detail

capnp::ReaderOptions reader_options(std::size_t message_words) {
  capnp::ReaderOptions o;
  // Each word is read once by a decoder; twice the size plus slack leaves room and still stops
  // a message whose pointers make it read the same bytes over and over.
  o.traversalLimitInWords = 2 * message_words + 1024;
  o.nestingLimit = 128;
  return o;
}

namespace codec_detail {

namespace {
constexpr std::size_t kScratchWords = 1024;  // 8 KiB
constexpr std::size_t kOwnWords = 64;        // a segment of its own: 512 bytes, then more
// This thread's scratch segment while it lives, and whether it has gone (the thread is
// exiting): trivially destructible, so still readable from the destructors of thread_locals
// that outlive the scratch (a proxy kept in a threading::local encodes its release there).
thread_local capnp::word* tl_scratch = nullptr;
thread_local bool tl_scratch_gone = false;
struct Scratch {
  std::unique_ptr<capnp::word[]> words{new capnp::word[kScratchWords]()};
  bool in_use = false;
  Scratch() { tl_scratch = words.get(); }
  ~Scratch() {
    tl_scratch = nullptr;
    tl_scratch_gone = true;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};
thread_local Scratch scratch;
}  // namespace

ScratchSegment::ScratchSegment() {
  if (!tl_scratch_gone && !scratch.in_use) {
    scratch.in_use = true;
    words_ = kj::ArrayPtr<capnp::word>(scratch.words.get(), kScratchWords);
    return;
  }
  // In use (a codec that encodes inside an encode), or gone: a zeroed segment of its own
  // (MallocMessageBuilder refuses an empty first segment).
  words_ = kj::ArrayPtr<capnp::word>(new capnp::word[kOwnWords](), kOwnWords);
}

ScratchSegment::~ScratchSegment() {
  // MallocMessageBuilder zeroes what it used of the scratch segment when it is destroyed.
  if (words_.begin() == tl_scratch) {
    scratch.in_use = false;
    return;
  }
  delete[] words_.begin();
}

void flatten(capnp::MessageBuilder& mb, std::vector<std::byte>& out) {
  auto segments = mb.getSegmentsForOutput();
  if (segments.size() == 1) {
    // The common case, by hand: the stream framing's table (segment count - 1 = 0, the size in
    // words, both 32-bit little-endian) and the segment, copied once (no zeroing of `out` first,
    // no output stream).
    const auto seg = segments[0].asBytes();
    const auto n = static_cast<std::uint32_t>(segments[0].size());
    const std::byte table[8] = {std::byte{0},
                                std::byte{0},
                                std::byte{0},
                                std::byte{0},
                                static_cast<std::byte>(n & 0xff),
                                static_cast<std::byte>((n >> 8) & 0xff),
                                static_cast<std::byte>((n >> 16) & 0xff),
                                static_cast<std::byte>(n >> 24)};
    const auto* t = table;
    const auto* b = reinterpret_cast<const std::byte*>(seg.begin());
    out.clear();
    out.reserve(sizeof table + seg.size());
    out.insert(out.end(), t, t + sizeof table);
    out.insert(out.end(), b, b + seg.size());
    return;
  }
  const std::size_t words = capnp::computeSerializedSizeInWords(segments);
  out.resize(words * sizeof(capnp::word));
  kj::ArrayOutputStream stream(kj::arrayPtr(reinterpret_cast<kj::byte*>(out.data()), out.size()));
  capnp::writeMessage(stream, segments);
}

}  // namespace codec_detail

}  // namespace troupe
