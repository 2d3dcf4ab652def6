#include "troupe/multiprocessing/detail/shared_region.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "troupe/errors.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/internal/thread_identity.hpp"
#include "troupe/multiprocessing/process.hpp"

namespace troupe::multiprocessing::internal {
// Read on every acquire and release of a process-shared Lock/RLock (internal/thread_identity.hpp
// reads it inline). initial-exec: a fixed offset from the thread pointer, not a call to
// __tls_get_addr (the default for a shared library, which took a sixth of an uncontended
// acquire/release pair). Eight bytes: glibc keeps static TLS room for them even if the library
// is loaded by dlopen. {0, 0} until the thread's first self_identity().
[[gnu::tls_model("initial-exec")]] thread_local detail::ThreadIdentity t_identity{0, 0};
}  // namespace troupe::multiprocessing::internal

namespace troupe::multiprocessing::detail {
namespace {

constexpr std::uint32_t kMagic = 0x53505254;  // "TRPS"
constexpr std::size_t kHeader = 64;           // keeps the payload on its own cache line

struct Header {
  std::uint32_t magic;
  std::uint32_t kind;
  std::uint64_t size;
};
static_assert(sizeof(Header) <= kHeader);

const char* kind_name(RegionKind k) noexcept {
  switch (k) {
    case RegionKind::lock: return "Lock";
    case RegionKind::rlock: return "RLock";
    case RegionKind::semaphore: return "Semaphore";
    case RegionKind::condition: return "Condition";
    case RegionKind::event: return "Event";
    case RegionKind::barrier: return "Barrier";
    case RegionKind::value: return "Value";
    case RegionKind::array: return "Array";
    case RegionKind::queue: return "Queue";
  }
  return "unknown";
}

std::size_t page_round(std::size_t n) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

void reset_identity_in_child() noexcept {
  internal::t_identity = {static_cast<int>(::getpid()), static_cast<int>(::gettid())};
}

}  // namespace

const ThreadIdentity& self_identity() noexcept {
  static const bool registered = [] {
    static constexpr troupe::internal::runtime::ForkHandlers kHandlers{
        .child = &reset_identity_in_child};
    troupe::internal::runtime::at_fork(troupe::internal::runtime::ForkStep::thread_identity,
                                       kHandlers);
    return true;
  }();
  (void)registered;
  if (internal::t_identity.tid == 0) reset_identity_in_child();
  return internal::t_identity;
}

std::shared_ptr<SharedRegion> SharedRegion::create(RegionKind kind, std::size_t size) {
  const std::string name = std::string("troupe:") + kind_name(kind);
  if (size > (std::size_t{1} << 48))
    throw ValueError("shared " + std::string(kind_name(kind)) + " of " + std::to_string(size) +
                     " bytes is too large");
  const std::size_t map_size = page_round(kHeader + size);
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd) throw_os_error(errno, "memfd_create for a shared " + std::string(kind_name(kind)));
  if (::ftruncate(fd.get(), static_cast<off_t>(map_size)) != 0)
    throw_os_error(errno, "sizing shared memory for a " + std::string(kind_name(kind)) + " to " +
                              std::to_string(map_size) + " bytes");
  void* map = ::mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED)
    throw_os_error(errno, "mapping " + std::to_string(map_size) + " bytes of shared memory for a " +
                              kind_name(kind));
  auto* h = static_cast<Header*>(map);
  h->magic = kMagic;
  h->kind = static_cast<std::uint32_t>(kind);
  h->size = size;
  return std::shared_ptr<SharedRegion>(new SharedRegion(std::move(fd), map, map_size, size, kind));
}

std::shared_ptr<SharedRegion> SharedRegion::adopt(int fd_number, RegionKind kind) {
  UniqueFd fd(fd_number);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_os_error(errno, "fstat of a passed shared region");
  const auto map_size = static_cast<std::size_t>(st.st_size);
  if (map_size < kHeader)
    throw ValueError("passed fd " + std::to_string(fd.get()) + " is not a troupe shared " +
                     kind_name(kind) + " (" + std::to_string(map_size) + " bytes)");
  void* map = ::mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED)
    throw_os_error(errno, "mapping a passed shared " + std::string(kind_name(kind)));
  const auto* h = static_cast<const Header*>(map);
  if (h->magic != kMagic || h->kind != static_cast<std::uint32_t>(kind) ||
      h->size > map_size - kHeader) {
    const std::string what = h->magic == kMagic ? kind_name(static_cast<RegionKind>(h->kind)) : "?";
    ::munmap(map, map_size);
    throw ValueError("passed fd " + std::to_string(fd.get()) + " holds a shared " + what +
                     ", not a " + kind_name(kind));
  }
  return std::shared_ptr<SharedRegion>(
      new SharedRegion(std::move(fd), map, map_size, static_cast<std::size_t>(h->size), kind));
}

SharedRegion::~SharedRegion() {
  ::munmap(map_, map_size_);  // then fd_ closes
}

void* SharedRegion::data() const noexcept {
  return static_cast<char*>(map_) + kHeader;
}

RegionWire region_to_wire(const SharedRegion& region, const void* at) {
  const auto offset = static_cast<std::uint64_t>(static_cast<const char*>(at) -
                                                 static_cast<const char*>(region.data()));
  return {pass_fd(region.fd()), static_cast<std::uint32_t>(region.kind()), offset};
}

std::pair<std::shared_ptr<SharedRegion>, void*> region_from_wire(const RegionWire& wire,
                                                                 std::size_t need) {
  const auto [n, kind, offset] = wire;
  if (kind < static_cast<std::uint32_t>(RegionKind::lock) ||
      kind > static_cast<std::uint32_t>(RegionKind::queue))
    throw ValueError("shared object of unknown kind " + std::to_string(kind));
  auto region = SharedRegion::adopt(take_fd(n), static_cast<RegionKind>(kind));
  if (offset > region->size() || need > region->size() - offset)
    throw ValueError("shared object at offset " + std::to_string(offset) + " (" +
                     std::to_string(need) + " bytes) lies outside its region of " +
                     std::to_string(region->size()) + " bytes");
  void* at = static_cast<char*>(region->data()) + offset;
  return {std::move(region), at};
}

}  // namespace troupe::multiprocessing::detail
