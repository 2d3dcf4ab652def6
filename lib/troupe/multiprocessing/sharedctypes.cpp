#include "troupe/multiprocessing/sharedctypes.hpp"

#include <limits>

namespace troupe::multiprocessing::detail {
namespace {

// Payload layout: [MutexState: the lock slot][uint64 length][data on its own cache line].
constexpr std::size_t round64(std::size_t n) {
  return (n + 63) / 64 * 64;
}
constexpr std::size_t kLengthAt = round64(sizeof(MutexState));
constexpr std::size_t kDataAt = kLengthAt + 64;

const char* kind_text(RegionKind kind) {
  return kind == RegionKind::value ? "Value" : "Array";
}

DataRegion view(std::shared_ptr<SharedRegion> region) {
  DataRegion r;
  auto* base = static_cast<std::byte*>(region->data());
  r.slot = reinterpret_cast<MutexState*>(base);
  std::memcpy(&r.length, base + kLengthAt, sizeof r.length);
  r.data = base + kDataAt;
  r.region = std::move(region);
  return r;
}

}  // namespace

DataRegion make_data_region(RegionKind kind, std::size_t size, std::uint64_t length) {
  const std::size_t limit = (std::size_t{1} << 48) / (size == 0 ? 1 : size);
  if (length > limit)
    throw ValueError(std::string("a shared ") + kind_text(kind) + " of " + std::to_string(length) +
                     " elements of " + std::to_string(size) + " bytes is too large");
  auto region = SharedRegion::create(kind, kDataAt + size * static_cast<std::size_t>(length));
  auto* base = static_cast<std::byte*>(region->data());
  new (base) MutexState();
  std::memcpy(base + kLengthAt, &length, sizeof length);
  return view(std::move(region));
}

RegionWire data_region_to_wire(const DataRegion& r) {
  return region_to_wire(*r.region, r.region->data());
}

DataRegion data_region_from_wire(const RegionWire& w, std::size_t size) {
  auto [region, at] = region_from_wire(w, kDataAt);
  (void)at;
  DataRegion r = view(std::move(region));
  const std::size_t room = r.region->size() - kDataAt;
  if (size == 0 || r.length > room / size)
    throw ValueError(std::string("a shared ") + kind_text(r.region->kind()) + " of " +
                     std::to_string(r.length) + " elements of " + std::to_string(size) +
                     " bytes does not fit its region of " + std::to_string(room) + " bytes");
  return r;
}

std::optional<ConditionLock> lock_for(const LockArg& arg, const DataRegion& r) {
  if (const bool* b = std::get_if<bool>(&arg)) {
    if (!*b) return std::nullopt;
    if (r.slot) return ConditionLock(RLock(Shared<MutexState>{r.region, r.slot}));
    return ConditionLock(RLock());
  }
  if (const Lock* l = std::get_if<Lock>(&arg)) return ConditionLock(*l);
  return ConditionLock(std::get<RLock>(arg));
}

void throw_no_lock(const char* what) {
  throw ValueError(std::string("this ") + what + " was made with lock=false and has no lock");
}

void throw_index(std::size_t i, std::size_t n) {
  throw IndexError("invalid index " + std::to_string(i) + " (size " + std::to_string(n) + ")");
}

}  // namespace troupe::multiprocessing::detail
