// Capture: see capture.hpp. This file is compiled as C++23 (lib/troupe/meson.build) for
// std::string::resize_and_overwrite, which gives a string its size without writing its bytes.
#include "troupe/detail/capture.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <utility>

namespace troupe::detail {

namespace {

constexpr std::size_t kSmall = std::size_t{256} << 10;   // kept in a std::string up to here
constexpr std::size_t kFirstMap = std::size_t{4} << 20;  // the mapping's first length
constexpr std::size_t kReadRoom = std::size_t{1} << 20;  // room offered to each read(2)
constexpr int kPipeSize = 1 << 20;                       // what grow_pipe asks for
constexpr std::size_t kStackRead = 65536;                // one read while small

std::size_t page_size() noexcept {
  static const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

std::uintptr_t in_page(const void* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % page_size();
}

// Where in its first page the allocator puts a large string's bytes (glibc: 16 bytes into an
// mmap'd chunk). The mapping's bytes start at the same place, so that whole pages line up.
std::size_t large_string_offset() {
  static const std::size_t offset = [] {
    std::string probe;
    probe.reserve(std::size_t{64} << 20);  // mapped, never touched
    return static_cast<std::size_t>(in_page(probe.data()));
  }();
  return offset;
}

// Puts the `n` bytes at `src` (in a private anonymous mapping) at `dst`: the whole pages they
// share, when both lie at the same place in their pages, by moving the pages (mremap; `src`'s
// pages are gone afterwards), the rest by copying.
void move_bytes(char* dst, char* src, std::size_t n) noexcept {
  const std::size_t page = page_size();
  if (in_page(dst) == in_page(src) && n >= 4 * page) {
    const std::size_t head = (page - in_page(dst)) % page;
    const std::size_t body = (n - head) / page * page;
    std::memcpy(dst, src, head);
    if (::mremap(src + head, body, body, MREMAP_MAYMOVE | MREMAP_FIXED, dst + head) != MAP_FAILED) {
      std::memcpy(dst + head + body, src + head + body, n - head - body);
      return;
    }
  }
  std::memcpy(dst, src, n);
}

}  // namespace

Capture::Capture(Capture&& o) noexcept
    : small_(std::move(o.small_)),
      map_(std::exchange(o.map_, nullptr)),
      map_len_(std::exchange(o.map_len_, 0)),
      offset_(o.offset_),
      size_(std::exchange(o.size_, 0)),
      populated_(std::exchange(o.populated_, 0)) {
  o.small_.clear();
}

Capture& Capture::operator=(Capture&& o) noexcept {
  if (this != &o) {
    clear();
    small_ = std::move(o.small_);
    o.small_.clear();
    map_ = std::exchange(o.map_, nullptr);
    map_len_ = std::exchange(o.map_len_, 0);
    offset_ = o.offset_;
    size_ = std::exchange(o.size_, 0);
    populated_ = std::exchange(o.populated_, 0);
  }
  return *this;
}

void Capture::clear() noexcept {
  if (map_) ::munmap(map_, map_len_);
  map_ = nullptr;
  map_len_ = size_ = populated_ = 0;
  small_.clear();
  small_.shrink_to_fit();
}

std::string_view Capture::view() const noexcept {
  return map_ ? std::string_view(map_ + offset_, size_) : std::string_view(small_);
}

void Capture::to_mapping() {
  offset_ = large_string_offset();
  map_len_ = std::max(kFirstMap, (offset_ + small_.size() + kReadRoom) * 2);
  void* m = ::mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    map_len_ = 0;
    throw std::bad_alloc();
  }
  map_ = static_cast<char*>(m);
  std::memcpy(map_ + offset_, small_.data(), small_.size());
  size_ = small_.size();
  small_.clear();
  small_.shrink_to_fit();
}

void Capture::reserve(std::size_t n) {
  if (map_len_ - offset_ - size_ >= n) return;
  std::size_t len = map_len_;
  while (len - offset_ - size_ < n) len *= 2;
  void* m = ::mremap(map_, map_len_, len, MREMAP_MAYMOVE);  // moves the pages, copies nothing
  if (m == MAP_FAILED) throw std::bad_alloc();
  map_ = static_cast<char*>(m);
  map_len_ = len;
}

void Capture::append(std::string_view bytes) {
  if (!map_ && small_.size() + bytes.size() <= kSmall) {
    small_ += bytes;
    return;
  }
  if (!map_) to_mapping();
  reserve(bytes.size());
  std::memcpy(map_ + offset_ + size_, bytes.data(), bytes.size());
  size_ += bytes.size();
}

ssize_t Capture::read_from(int fd, bool grow_pipe) {
  ssize_t r;
  if (!map_) {
    char chunk[kStackRead];
    do {
      r = ::read(fd, chunk, sizeof chunk);
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
      small_.append(chunk, static_cast<std::size_t>(r));
      if (small_.size() >= kSmall) {
        to_mapping();
        if (grow_pipe) ::fcntl(fd, F_SETPIPE_SZ, kPipeSize);  // best effort
      }
    }
  } else {
    reserve(kReadRoom);
    // Fault the room in before the read (what the last read took, a few pages, each time):
    // inside read(2) the faults would hold the pipe's lock and stall the writer; here they
    // overlap with its writing. (Faulting in larger steps, 64 KiB to 1 MiB, measured slower.)
    const std::size_t end = offset_ + size_;
    if (populated_ < end + kReadRoom) {
      const std::size_t from = std::max(populated_, end) / page_size() * page_size();
      if (::madvise(map_ + from, end + kReadRoom - from, MADV_POPULATE_WRITE) == 0)
        populated_ = end + kReadRoom;
    }
    do {
      r = ::read(fd, map_ + end, kReadRoom);
    } while (r < 0 && errno == EINTR);
    if (r > 0) size_ += static_cast<std::size_t>(r);
  }
  if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -errno;
  return r;
}

std::string Capture::take() {
  std::string out;
  if (!map_) {
    out = std::move(small_);
    clear();
    return out;
  }
  char* const src = map_ + offset_;
#if defined(__cpp_lib_string_resize_and_overwrite)
  out.resize_and_overwrite(size_, [src](char* dst, std::size_t n) {
    move_bytes(dst, src, n);
    return n;
  });
#else
  out.assign(src, size_);  // copies: the standard library cannot size a string unwritten
#endif
  clear();  // unmaps what was not moved
  return out;
}

}  // namespace troupe::detail
