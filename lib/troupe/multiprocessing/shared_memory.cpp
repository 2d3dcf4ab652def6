#include "troupe/multiprocessing/shared_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>
#include <variant>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/resource_tracker.hpp"

namespace troupe::multiprocessing::shared_memory {
namespace {

static_assert(std::endian::native == std::endian::little,
              "ShareableList's layout is CPython's native one; only little-endian is done");

// CPython: _SHM_NAME_PREFIX '/psm_' and _SHM_SAFE_NAME_LENGTH 14 → 4 random bytes in hex.
std::string random_name() {
  unsigned char bytes[4];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_os_error(errno, "getrandom for a shared memory name");
    }
    got += static_cast<std::size_t>(n);
  }
  static const char hex[] = "0123456789abcdef";
  std::string name = "/psm_";
  for (unsigned char b : bytes) {
    name += hex[b >> 4];
    name += hex[b & 15];
  }
  return name;
}

std::string in_quotes(const std::string& s) {
  return "'" + s + "'";
}

}  // namespace

// ---- SharedMemory ----------------------------------------------------------------------------

SharedMemory::SharedMemory(std::optional<std::string> name, bool create, std::size_t size,
                           bool track)
    : track_(track) {
  if (create && size == 0) throw ValueError("'size' must be a positive number different from zero");
  if (!create && !name) throw ValueError("'name' can only be None if create=True");
  const int flags = create ? O_CREAT | O_EXCL | O_RDWR : O_RDWR;
  if (!name) {
    for (;;) {
      name_ = random_name();
      fd_.reset(::shm_open(name_.c_str(), flags, 0600));
      if (fd_ || errno != EEXIST) break;
    }
  } else {
    name_ = "/" + *name;  // Python prepends the slash on POSIX
    fd_.reset(::shm_open(name_.c_str(), flags, 0600));
  }
  if (!fd_) throw_os_error(errno, "shared memory " + in_quotes(name_));
  try {
    if (create && ::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0)
      throw_os_error(errno, "sizing shared memory " + in_quotes(name_) + " to " +
                                std::to_string(size) + " bytes");
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0)
      throw_os_error(errno, "fstat of shared memory " + in_quotes(name_));
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ == 0)
      throw ValueError("cannot map shared memory " + in_quotes(name_) + ": it is empty (0 bytes)");
    map_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (map_ == MAP_FAILED) {
      map_ = nullptr;
      throw_os_error(errno, "mapping shared memory " + in_quotes(name_) + " (" +
                                std::to_string(size_) + " bytes)");
    }
    // Unlike Python, only the creator registers: a process that merely attached must not
    // unlink the segment when it ends.
    if (create && track_) resource_tracker::register_resource(name_);
  } catch (...) {
    close();
    if (create) ::shm_unlink(name_.c_str());
    throw;
  }
}

SharedMemory::SharedMemory(SharedMemory&& o) noexcept
    : name_(std::move(o.name_)),
      fd_(std::move(o.fd_)),
      map_(std::exchange(o.map_, nullptr)),
      size_(o.size_),
      track_(o.track_) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& o) noexcept {
  if (this != &o) {
    close();
    name_ = std::move(o.name_);
    fd_ = std::move(o.fd_);
    map_ = std::exchange(o.map_, nullptr);
    size_ = o.size_;
    track_ = o.track_;
  }
  return *this;
}

SharedMemory::~SharedMemory() {
  close();
}

std::span<std::byte> SharedMemory::buf() const {
  if (!map_) throw ValueError("shared memory " + in_quotes(name()) + " is closed");
  return {static_cast<std::byte*>(map_), size_};
}

std::string SharedMemory::name() const {
  return name_.empty() ? name_ : name_.substr(1);
}

void SharedMemory::close() noexcept {
  if (map_) ::munmap(map_, size_);
  map_ = nullptr;
  fd_.reset();
}

void SharedMemory::unlink() {
  if (::shm_unlink(name_.c_str()) != 0)
    throw_os_error(errno, "unlinking shared memory " + in_quotes(name_));
  if (track_) resource_tracker::unregister_resource(name_);
}

std::string SharedMemory::repr() const {
  return "SharedMemory(" + in_quotes(name()) + ", size=" + std::to_string(size_) + ")";
}

// ---- ShareableList ---------------------------------------------------------------------------

namespace {

// CPython's struct formats, as stored in the list (8 bytes, NUL-padded).
constexpr const char* kInt = "q";
constexpr const char* kFloat = "d";
constexpr const char* kBool = "xxxxxxx?";
constexpr const char* kNone = "xxxxxx?x";
// Back-transform codes: 0 as stored (int, float, bool), 1 str, 2 bytes, 3 None.
enum Code : std::int8_t { kAsIs = 0, kStr = 1, kBytes = 2, kNoneCode = 3 };

Code code_of(const ShareableItem& v) {
  if (std::holds_alternative<std::string>(v)) return kStr;
  if (std::holds_alternative<Bytes>(v)) return kBytes;
  if (std::holds_alternative<std::monostate>(v)) return kNoneCode;
  return kAsIs;
}

std::size_t text_size(const ShareableItem& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return s->size();
  if (const auto* b = std::get_if<Bytes>(&v)) return b->size();
  return 0;
}

/// The format a new list gives an item: strings get a multiple of 8 bytes, always with room
/// for at least one NUL (CPython: 8 * (len // 8 + 1)).
std::string new_format(const ShareableItem& v) {
  switch (v.index()) {
    case 0: return kNone;
    case 1: return kBool;
    case 2: return kInt;
    case 3: return kFloat;
    default: return std::to_string(8 * (text_size(v) / 8 + 1)) + "s";
  }
}

std::size_t format_size(const std::string& f) {
  return f.back() == 's' ? static_cast<std::size_t>(std::stoull(f.substr(0, f.size() - 1))) : 8;
}

std::uint64_t load_u64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

void store_u64(std::byte* p, std::uint64_t v) {
  std::memcpy(p, &v, 8);
}

/// Writes `v` at `at` in format `f` (struct.pack_into).
void pack(std::byte* at, const std::string& f, const ShareableItem& v) {
  if (f == kInt) {
    const auto x = std::get<std::int64_t>(v);
    std::memcpy(at, &x, 8);
  } else if (f == kFloat) {
    const auto x = std::get<double>(v);
    std::memcpy(at, &x, 8);
  } else if (f == kBool) {
    std::memset(at, 0, 8);
    at[7] = std::byte{std::get<bool>(v) ? std::uint8_t{1} : std::uint8_t{0}};
  } else if (f == kNone) {
    std::memset(at, 0, 8);
  } else {
    const std::size_t n = format_size(f);
    std::memset(at, 0, n);
    if (const auto* s = std::get_if<std::string>(&v))
      std::memcpy(at, s->data(), std::min(n, s->size()));
    else if (const auto* b = std::get_if<Bytes>(&v))
      std::memcpy(at, b->data(), std::min(n, b->size()));
  }
}

}  // namespace

ShareableList::ShareableList(const std::vector<ShareableItem>& sequence,
                             std::optional<std::string> name, bool track)
    : shm_([&] {
        std::size_t data = 0;
        for (const auto& v : sequence) data += format_size(new_format(v));
        const std::size_t n = sequence.size();
        // "q" + "q" * (n + 1) + formats + "8s" * n + "b" * n (no padding: all 8-aligned).
        return SharedMemory(std::move(name), true, 8 + 8 * (n + 1) + data + 8 * n + n, track);
      }()),
      length_(sequence.size()) {
  std::byte* base = shm_.buf().data();
  offsets_.push_back(0);
  std::vector<std::string> formats;
  for (const auto& v : sequence) {
    formats.push_back(new_format(v));
    offsets_.push_back(offsets_.back() + format_size(formats.back()));
  }
  store_u64(base, length_);
  for (std::size_t i = 0; i <= length_; ++i) store_u64(base + 8 + 8 * i, offsets_[i]);
  for (std::size_t i = 0; i < length_; ++i) {
    pack(base + data_start() + offsets_[i], formats[i], sequence[i]);
    std::memset(base + formats_at() + 8 * i, 0, 8);
    std::memcpy(base + formats_at() + 8 * i, formats[i].data(), formats[i].size());
    base[codes_at() + i] = static_cast<std::byte>(code_of(sequence[i]));
  }
}

ShareableList::ShareableList(Attached, SharedMemory shm) : shm_(std::move(shm)) {
  // Everything read from the segment is checked before use: another process wrote it.
  const auto buf = shm_.buf();
  const std::size_t size = buf.size();
  auto bad = [&](const std::string& why) {
    return ValueError("shared memory " + in_quotes(shm_.name()) + " (" + std::to_string(size) +
                      " bytes) is not a ShareableList: " + why);
  };
  if (size < 16) throw bad("too small");
  const std::uint64_t n = load_u64(buf.data());
  // 8 (length) + 8 (n + 1) (offsets) + 8 n (formats) + n (codes) must fit.
  if (n > (size - 16) / 17) throw bad("its length " + std::to_string(n) + " does not fit");
  length_ = static_cast<std::size_t>(n);
  offsets_.resize(length_ + 1);
  for (std::size_t i = 0; i <= length_; ++i) {
    offsets_[i] = load_u64(buf.data() + 8 + 8 * i);
    if (i > 0 && offsets_[i] < offsets_[i - 1])
      throw bad("its item offsets decrease at item " + std::to_string(i));
  }
  if (offsets_[0] != 0) throw bad("its first item offset is not 0");
  if (offsets_.back() > size - (16 + 17 * length_))
    throw bad("its data area (" + std::to_string(offsets_.back()) + " bytes) does not fit");
}

ShareableList ShareableList::attach(const std::string& name) {
  return ShareableList(Attached{}, SharedMemory(name));
}

std::size_t ShareableList::position(std::ptrdiff_t i, const char* message) const {
  const auto n = static_cast<std::ptrdiff_t>(length_);
  if (i < 0) i += n;
  if (i < 0 || i >= n) throw IndexError(message);
  return static_cast<std::size_t>(i);
}

std::string ShareableList::item_format(std::size_t i) const {
  const std::byte* p = shm_.buf().data() + formats_at() + 8 * i;
  std::string f(reinterpret_cast<const char*>(p), 8);
  f.erase(f.find_last_not_of('\0') + 1);  // rstrip(b'\x00')
  const std::size_t room = offsets_[i + 1] - offsets_[i];
  if (f == kInt || f == kFloat || f == kBool || f == kNone) {
    if (room >= 8) return f;
  } else if (f.size() >= 2 && f.back() == 's') {
    std::size_t len = 0;
    const auto [end, ec] = std::from_chars(f.data(), f.data() + f.size() - 1, len);
    if (ec == std::errc() && end == f.data() + f.size() - 1 && len <= room) return f;
  }
  throw ValueError("ShareableList " + in_quotes(shm_.name()) + " item " + std::to_string(i) +
                   " has format '" + f + "', which is not one a ShareableList writes in " +
                   std::to_string(room) + " bytes");
}

ShareableItem ShareableList::get(std::ptrdiff_t index) const {
  const std::size_t i = position(index, "index out of range");
  const std::string f = item_format(i);
  const std::byte* at = shm_.buf().data() + data_start() + offsets_[i];
  const auto code = static_cast<std::int8_t>(shm_.buf()[codes_at() + i]);
  if (f.back() == 's') {
    std::size_t n = format_size(f);
    while (n > 0 && at[n - 1] == std::byte{0}) --n;  // rstrip(b'\x00')
    if (code == kStr) return std::string(reinterpret_cast<const char*>(at), n);
    if (code == kBytes) return Bytes(at, at + n);
  } else if (code == kNoneCode) {
    return std::monostate{};
  } else if (code == kAsIs) {
    if (f == kInt) {
      std::int64_t x;
      std::memcpy(&x, at, 8);
      return x;
    }
    if (f == kFloat) {
      double x;
      std::memcpy(&x, at, 8);
      return x;
    }
    if (f == kBool) return at[7] != std::byte{0};
  }
  throw ValueError("ShareableList " + in_quotes(shm_.name()) + " item " + std::to_string(i) +
                   " has format '" + f + "' with back-transform code " + std::to_string(code));
}

void ShareableList::set(std::ptrdiff_t index, const ShareableItem& v) {
  const std::size_t i = position(index, "assignment index out of range");
  const std::string current = item_format(i);
  std::string f;
  if (v.index() < 4) {
    f = new_format(v);
  } else {
    const std::size_t room = offsets_[i + 1] - offsets_[i];
    if (text_size(v) > room) throw ValueError("bytes/str item exceeds available storage");
    f = current.back() == 's' ? current : std::to_string(room) + "s";
  }
  std::byte* base = shm_.buf().data();
  std::memset(base + formats_at() + 8 * i, 0, 8);
  std::memcpy(base + formats_at() + 8 * i, f.data(), f.size());
  base[codes_at() + i] = static_cast<std::byte>(code_of(v));
  pack(base + data_start() + offsets_[i], f, v);
}

std::string ShareableList::format() const {
  std::string out;
  for (std::size_t i = 0; i < length_; ++i) out += item_format(i);
  return out;
}

std::vector<ShareableItem> ShareableList::to_vector() const {
  std::vector<ShareableItem> out;
  out.reserve(length_);
  for (std::size_t i = 0; i < length_; ++i) out.push_back(get(static_cast<std::ptrdiff_t>(i)));
  return out;
}

namespace {
// Python's ==: bool, int and float compare by value (1 == True == 1.0), exactly (an int and a
// float are equal only if the float is that integer); str, bytes and None by kind and value.
bool python_equal(const ShareableItem& a, const ShareableItem& b) {
  auto number = [](const ShareableItem& x) -> std::optional<std::variant<std::int64_t, double>> {
    if (const bool* v = std::get_if<bool>(&x)) return std::int64_t{*v ? 1 : 0};
    if (const std::int64_t* v = std::get_if<std::int64_t>(&x)) return *v;
    if (const double* v = std::get_if<double>(&x)) return *v;
    return std::nullopt;
  };
  const auto na = number(a), nb = number(b);
  if (!na || !nb) return a == b;
  const auto* ia = std::get_if<std::int64_t>(&*na);
  const auto* ib = std::get_if<std::int64_t>(&*nb);
  if (ia && ib) return *ia == *ib;
  if (!ia && !ib) return std::get<double>(*na) == std::get<double>(*nb);
  const std::int64_t i = ia ? *ia : *ib;
  const double d = ia ? std::get<double>(*nb) : std::get<double>(*na);
  // Exactly: d must be an integer in int64's range and equal to i.
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || d != std::trunc(d))
    return false;
  return static_cast<std::int64_t>(d) == i;
}
}  // namespace

std::size_t ShareableList::count(const ShareableItem& v) const {
  const auto all = to_vector();
  return static_cast<std::size_t>(std::count_if(
      all.begin(), all.end(), [&](const ShareableItem& x) { return python_equal(x, v); }));
}

std::size_t ShareableList::index(const ShareableItem& v) const {
  for (std::size_t i = 0; i < length_; ++i)
    if (python_equal(get(static_cast<std::ptrdiff_t>(i)), v)) return i;
  throw ValueError(item_repr(v) + " not in this container");
}

std::string ShareableList::repr() const {
  std::string out = "ShareableList([";
  for (std::size_t i = 0; i < length_; ++i) {
    if (i) out += ", ";
    out += item_repr(get(static_cast<std::ptrdiff_t>(i)));
  }
  return out + "], name=" + in_quotes(shm_.name()) + ")";
}

std::string item_repr(const ShareableItem& v) {
  switch (v.index()) {
    case 0: return "None";
    case 1: return std::get<bool>(v) ? "True" : "False";
    case 2: return std::to_string(std::get<std::int64_t>(v));
    case 3: {
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof buf, std::get<double>(v));
      std::string s(buf, r.ptr);
      if (s == "inf") return "inf";
      if (s == "-inf") return "-inf";
      if (s == "nan" || s == "-nan") return "nan";
      if (s.find_first_of(".e") == std::string::npos) s += ".0";
      return s;
    }
    case 4: return in_quotes(std::get<std::string>(v));
    default: {
      std::string s = "b'";
      for (std::byte b : std::get<Bytes>(v)) {
        const auto c = static_cast<unsigned char>(b);
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
          s += static_cast<char>(c);
        } else {
          static const char hex[] = "0123456789abcdef";
          s += "\\x";
          s += hex[c >> 4];
          s += hex[c & 15];
        }
      }
      return s + "'";
    }
  }
}

}  // namespace troupe::multiprocessing::shared_memory
