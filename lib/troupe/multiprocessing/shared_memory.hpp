// troupe/multiprocessing/shared_memory.hpp — multiprocessing.shared_memory: SharedMemory and
// ShareableList, compatible with CPython's: the same POSIX names (/psm_ + 8 hex digits) and the
// same ShareableList layout, so a Python process attaches to a troupe segment or list by name
// and reads and writes it, and the reverse.
//
// A segment created with track=true is registered with this process tree's resource tracker
// (multiprocessing/resource_tracker.hpp), which unlinks what is still registered when the last
// process of the tree ends, however it ends (kill -9 included).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing::shared_memory {

/// Python: `multiprocessing.shared_memory.SharedMemory`. Owns its mapping and fd (move-only);
/// the destructor closes (Python's __del__), it does not unlink.
class SharedMemory {
public:
  /// Python: `SharedMemory(name=None, create=False, size=0, *, track=True)`. With create, a new
  /// segment of `size` bytes (zeroed), named `name` or a fresh "psm_xxxxxxxx"; otherwise the
  /// existing segment `name`, whose size is its own. Names are given and reported without the
  /// leading '/', as in Python. track: register a created segment with the resource tracker
  /// (unlike Python, attaching never registers: a process that only attached does not unlink
  /// the segment when it ends, Python's bpo-38119).
  /// @throws ValueError for Python's argument errors; FileExistsError, FileNotFoundError,
  /// PermissionError… (OSError) naming the segment.
  explicit SharedMemory(std::optional<std::string> name = std::nullopt, bool create = false,
                        std::size_t size = 0, bool track = true);
  SharedMemory(SharedMemory&& o) noexcept;
  SharedMemory& operator=(SharedMemory&& o) noexcept;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();

  /// Python: `buf`. @throws ValueError once closed.
  std::span<std::byte> buf() const;
  /// Python: `name` (without the leading '/').
  std::string name() const;
  /// Python: `size`.
  std::size_t size() const noexcept { return size_; }
  /// Python: `close()`: unmaps and closes; the segment stays (idempotent).
  void close() noexcept;
  /// Python: `unlink()`: removes the name (once every process has closed it, the memory goes)
  /// and unregisters it from the tracker. @throws FileNotFoundError if already unlinked.
  void unlink();
  /// "SharedMemory('psm_1a2b3c4d', size=4096)".
  std::string repr() const;

private:
  std::string name_;  // with the leading '/'
  UniqueFd fd_;
  void* map_ = nullptr;
  std::size_t size_ = 0;
  bool track_ = true;
};

/// Python's `bytes`, as a ShareableList item (`std::string` is `str`).
using Bytes = std::vector<std::byte>;
/// A ShareableList item: None, bool, int, float, str or bytes.
using ShareableItem = std::variant<std::monostate, bool, std::int64_t, double, std::string, Bytes>;

/// Python: `multiprocessing.shared_memory.ShareableList`: a fixed-length list of None, bool,
/// int (64-bit), float, str and bytes in one segment, in CPython's layout. No locking (as
/// Python): guard concurrent writers yourself.
class ShareableList {
public:
  /// Python: `ShareableList(sequence, name=None)`: a new segment holding `sequence`.
  explicit ShareableList(const std::vector<ShareableItem>& sequence,
                         std::optional<std::string> name = std::nullopt, bool track = true);
  /// Python: `ShareableList(name=name)`: attaches to an existing list. Its metadata is checked:
  /// a segment that is not a well-formed ShareableList is a ValueError, never a wild read.
  static ShareableList attach(const std::string& name);

  /// Python: `len(sl)`.
  std::size_t size() const noexcept { return length_; }
  /// Python: `sl[i]` (negative counts from the end). @throws IndexError "index out of range";
  /// ValueError if the item's stored format is not one ShareableList writes.
  ShareableItem operator[](std::ptrdiff_t i) const { return get(i); }
  ShareableItem get(std::ptrdiff_t i) const;
  /// Python: `sl[i] = v`. @throws IndexError "assignment index out of range"; ValueError
  /// "bytes/str item exceeds available storage".
  void set(std::ptrdiff_t i, const ShareableItem& v);
  /// Python: `format`, `count(v)`, `index(v)` (ValueError if absent); compared as Python's ==
  /// (1, True and 1.0 are equal).
  std::string format() const;
  std::size_t count(const ShareableItem& v) const;
  std::size_t index(const ShareableItem& v) const;
  std::vector<ShareableItem> to_vector() const;
  /// Python: `shm`.
  SharedMemory& shm() noexcept { return shm_; }
  const SharedMemory& shm() const noexcept { return shm_; }
  /// "ShareableList([1, 'a', None], name='psm_…')".
  std::string repr() const;

private:
  struct Attached {};
  ShareableList(Attached, SharedMemory shm);
  std::size_t position(std::ptrdiff_t i, const char* message) const;
  std::string item_format(std::size_t i) const;
  std::size_t data_start() const noexcept { return (length_ + 2) * 8; }
  std::size_t formats_at() const noexcept { return data_start() + offsets_.back(); }
  std::size_t codes_at() const noexcept { return formats_at() + length_ * 8; }

  SharedMemory shm_;
  std::size_t length_ = 0;
  std::vector<std::uint64_t> offsets_;  // length_ + 1, from the start of the data area
};

/// Python's repr of an item: None, True, 3, 2.5, 'text', b'bytes'.
std::string item_repr(const ShareableItem& v);

}  // namespace troupe::multiprocessing::shared_memory

/// A SharedMemory travels as its name (Python pickles it so): the receiver attaches.
template <>
struct troupe::Codec<troupe::multiprocessing::shared_memory::SharedMemory> {
  static std::string signature() { return "SharedMemory"; }
  static void encode(const troupe::multiprocessing::shared_memory::SharedMemory& s,
                     proto::Value::Builder v) {
    Codec<std::string>::encode(s.name(), v);
  }
  static troupe::multiprocessing::shared_memory::SharedMemory decode(proto::Value::Reader v) {
    return troupe::multiprocessing::shared_memory::SharedMemory(Codec<std::string>::decode(v));
  }
};
/// A ShareableList travels as its segment's name.
template <>
struct troupe::Codec<troupe::multiprocessing::shared_memory::ShareableList> {
  static std::string signature() { return "ShareableList"; }
  static void encode(const troupe::multiprocessing::shared_memory::ShareableList& s,
                     proto::Value::Builder v) {
    Codec<std::string>::encode(s.shm().name(), v);
  }
  static troupe::multiprocessing::shared_memory::ShareableList decode(proto::Value::Reader v) {
    return troupe::multiprocessing::shared_memory::ShareableList::attach(
        Codec<std::string>::decode(v));
  }
};
