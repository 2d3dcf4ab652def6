// Shared by manager_fuzz.cpp and make_seeds.cpp: the manager dialect's requests as bytes
// (proto/manager.capnp), the objects the fuzzing server hosts from the start, and how an input
// is cut into frames.
//
// An input is a control byte, then frames, each a 2-byte big-endian length and that many bytes
// (the last one cut short if the input ends first). Control bit 0: the first frame is sent as
// the Hello (else the harness sends a valid one); the other bits are unused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "troupe/multiprocessing/managers/detail/item.hpp"

#include "manager.capnp.h"

namespace troupe::fuzz::manager {

using troupe::multiprocessing::managers::detail::Item;

/// The objects a holder connection creates before the first input, one per built-in typeid of
/// SyncManager, in this order: they get ids 1, 2, … (shared_id), so seeds can call them.
struct Shared {
  std::string_view typeid_;
  std::function<std::vector<Item>()> args;
};
inline const std::vector<Shared>& shared_objects() {
  static const std::vector<Shared> all = {
      {"Queue", [] { return std::vector{Item::integer(8)}; }},
      {"JoinableQueue", [] { return std::vector{Item::integer(8)}; }},
      {"Lock", [] { return std::vector<Item>{}; }},
      {"RLock", [] { return std::vector<Item>{}; }},
      {"Semaphore", [] { return std::vector{Item::integer(2)}; }},
      {"BoundedSemaphore", [] { return std::vector{Item::integer(2)}; }},
      {"Event", [] { return std::vector<Item>{}; }},
      {"dict", [] { return std::vector<Item>{}; }},
      {"list", [] { return std::vector<Item>{}; }},
      {"set", [] { return std::vector<Item>{}; }},
      {"Namespace", [] { return std::vector<Item>{}; }},
      {"Value",
       [] {
         return std::vector{Item::text("i"), Item::integer(0)};
       }},
      {"Array",
       [] {
         return std::vector{Item::text("i"), Item::list({Item::integer(0), Item::integer(0),
                                                         Item::integer(0), Item::integer(0)})};
       }},
  };
  return all;
}
/// The id of the shared object of `typeid_` (0 if none).
inline std::uint64_t shared_id(std::string_view typeid_) {
  const auto& all = shared_objects();
  for (std::size_t i = 0; i < all.size(); ++i)
    if (all[i].typeid_ == typeid_) return i + 1;
  return 0;
}

using Request = proto::manager::Request;

inline std::vector<std::byte> flat(capnp::MessageBuilder& mb) {
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

/// One Request frame: `fill` sets the union member; call id and lane as given.
inline std::vector<std::byte> request(std::uint64_t call_id, std::uint64_t lane,
                                      const std::function<void(Request::Builder)>& fill) {
  capnp::MallocMessageBuilder mb;
  auto r = mb.initRoot<Request>();
  r.setCallId(call_id);
  r.setLane(lane);
  fill(r);
  return flat(mb);
}

inline void put_args(capnp::List<proto::Value>::Builder out, const std::vector<Item>& args) {
  for (unsigned i = 0; i < args.size(); ++i)
    multiprocessing::managers::detail::write(args[i], out[i]);
}

inline std::vector<std::byte> call(std::uint64_t call_id, std::uint64_t lane, std::uint64_t object,
                                   std::string_view method, const std::vector<Item>& args = {}) {
  return request(call_id, lane, [&](Request::Builder r) {
    auto c = r.initCall();
    c.setObject(object);
    c.setMethod(capnp::Text::Reader(method.data(), method.size()));
    put_args(c.initArgs(static_cast<unsigned>(args.size())), args);
  });
}

inline std::vector<std::byte> create(std::uint64_t call_id, std::uint64_t lane,
                                     std::string_view typeid_, const std::vector<Item>& args = {}) {
  return request(call_id, lane, [&](Request::Builder r) {
    auto c = r.initCreate();
    c.setTypeid(capnp::Text::Reader(typeid_.data(), typeid_.size()));
    put_args(c.initArgs(static_cast<unsigned>(args.size())), args);
  });
}

inline std::vector<std::byte> hello(std::uint64_t magic = 0x3172676e4d705274ull,
                                    std::uint32_t version = proto::manager::PROTOCOL_VERSION) {
  capnp::MallocMessageBuilder mb;
  auto h = mb.initRoot<proto::manager::Hello>();
  h.setMagic(magic);
  h.setVersion(version);
  h.setPid(1234);
  h.setProcessName("manager_fuzz");
  h.setHost("localhost");
  return flat(mb);
}

/// Appends one frame of an input (2-byte big-endian length, then the bytes).
inline void append_frame(std::vector<std::byte>& input, std::span<const std::byte> frame) {
  const std::size_t n = frame.size() > 0xffff ? 0xffff : frame.size();
  input.push_back(std::byte(n >> 8));
  input.push_back(std::byte(n & 0xff));
  input.insert(input.end(), frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(n));
}

/// The frames of an input's body (after the control byte), at most `most`.
inline std::vector<std::span<const std::byte>> split(std::span<const std::byte> body,
                                                     std::size_t most) {
  std::vector<std::span<const std::byte>> out;
  std::size_t at = 0;
  while (at + 2 <= body.size() && out.size() < most) {
    const std::size_t n =
        (static_cast<std::size_t>(body[at]) << 8) | static_cast<std::size_t>(body[at + 1]);
    at += 2;
    const std::size_t take = std::min(n, body.size() - at);
    out.push_back(body.subspan(at, take));
    at += take;
  }
  return out;
}

}  // namespace troupe::fuzz::manager
