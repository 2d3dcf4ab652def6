// troupe/multiprocessing/detail/shared_region.hpp — the memory that process-shared objects live in.
// Not API.
//
// A SharedRegion is an anonymous memfd mapped MAP_SHARED: children made by fork inherit the
// mapping; a child made by spawn gets the fd with its arguments (detail::pass_fd) and maps it.
// A memfd has no name in any file system, so nothing is left behind when every process that
// used it ends, however it ends (kill -9 included). Each region starts with a header naming
// what it holds, so a mismatched fd is refused rather than misread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <tuple>
#include <utility>

#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing::detail {

/// What a region holds (checked when a child maps one).
enum class RegionKind : std::uint32_t {
  lock = 1,
  rlock,
  semaphore,
  condition,
  event,
  barrier,
  value,
  array,
  queue,
};

class SharedRegion {
public:
  /// Zeroed shared memory for `size` bytes of payload. @throws OSError (naming the size).
  static std::shared_ptr<SharedRegion> create(RegionKind kind, std::size_t size);
  /// Maps a region received as `fd` (owned from here on) and checks it holds `kind`.
  /// @throws ValueError if it does not.
  static std::shared_ptr<SharedRegion> adopt(int fd, RegionKind kind);

  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;
  ~SharedRegion();

  /// The payload (64-byte aligned), `size()` bytes.
  void* data() const noexcept;
  std::size_t size() const noexcept { return size_; }
  RegionKind kind() const noexcept { return kind_; }
  int fd() const noexcept { return fd_.get(); }

private:
  SharedRegion(UniqueFd fd, void* map, std::size_t map_size, std::size_t size, RegionKind kind)
      : fd_(std::move(fd)), map_(map), map_size_(map_size), size_(size), kind_(kind) {}
  UniqueFd fd_;
  void* map_;
  std::size_t map_size_;
  std::size_t size_;
  RegionKind kind_;
};

/// A region and the object of type State at some place in it.
template <class State>
struct Shared {
  std::shared_ptr<SharedRegion> region;
  State* state = nullptr;
  State* operator->() const noexcept { return state; }
  bool operator==(const Shared& o) const noexcept { return state == o.state; }
};

/// How a Shared<State> crosses to a spawned child: the number of its fd among the passed ones,
/// the region's kind, and the offset of the object in it.
using RegionWire = std::tuple<int, std::uint32_t, std::uint64_t>;

RegionWire region_to_wire(const SharedRegion& region, const void* at);
/// @throws ValueError if there is no such fd, the kind differs, or `need` bytes at the offset
/// do not fit in the region.
std::pair<std::shared_ptr<SharedRegion>, void*> region_from_wire(const RegionWire& wire,
                                                                 std::size_t need);

template <class State>
RegionWire to_wire(const Shared<State>& s) {
  return region_to_wire(*s.region, s.state);
}
template <class State>
Shared<State> from_wire(const RegionWire& wire) {
  auto [region, at] = region_from_wire(wire, sizeof(State));
  return {std::move(region), static_cast<State*>(at)};
}

/// A new region holding one State, constructed in place (State's constructor runs once, in the
/// creating process).
template <class State, class... A>
Shared<State> make_shared_state(RegionKind kind, A&&... a) {
  auto region = SharedRegion::create(kind, sizeof(State));
  auto* state = new (region->data()) State(std::forward<A>(a)...);
  return {std::move(region), state};
}

/// This thread's process and kernel thread ids, cached (getpid and gettid are system calls),
/// and right in a forked child.
struct ThreadIdentity {
  int pid;
  int tid;
};
const ThreadIdentity& self_identity() noexcept;

}  // namespace troupe::multiprocessing::detail
