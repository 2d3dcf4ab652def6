// troupe/detail/capture.hpp — output read from a pipe to its end, kept whole, for captures that
// may be large (subprocess's communicate() and run(), Stream::read()). Not API.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace troupe::detail {

/// Bytes gathered from a pipe. The first MiB lives in a std::string; past that the bytes go to
/// an anonymous mapping grown with mremap (no copy, no zero-fill of the room read into), and
/// take() moves the mapping's whole pages into the std::string it returns (mremap again), so a
/// large capture is written to memory once, by the kernel's read(2), and faults its pages once.
class Capture {
public:
  Capture() = default;
  Capture(Capture&& o) noexcept;
  Capture& operator=(Capture&& o) noexcept;
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;
  ~Capture() { clear(); }

  /// One read(2) from `fd`, appended: the count read (0 at end of file), -1 if it would block,
  /// -errno on an error. With `grow_pipe`, a capture that passes a MiB also enlarges the pipe to
  /// a MiB (F_SETPIPE_SZ, where the system allows: fewer wake-ups on both sides).
  /// @throws std::bad_alloc if the mapping cannot grow.
  ssize_t read_from(int fd, bool grow_pipe);
  void append(std::string_view bytes);

  std::string_view view() const noexcept;
  std::size_t size() const noexcept { return view().size(); }
  bool empty() const noexcept { return size() == 0; }
  /// The bytes, handed over (large ones without a copy); the Capture is empty afterwards.
  std::string take();
  void clear() noexcept;

private:
  void to_mapping();            // moves small_ into a new mapping
  void reserve(std::size_t n);  // room for `n` more bytes in the mapping

  std::string small_;
  char* map_ = nullptr;  // the mapping; the bytes start at map_ + offset_
  std::size_t map_len_ = 0;
  std::size_t offset_ = 0;
  std::size_t size_ = 0;       // bytes in the mapping
  std::size_t populated_ = 0;  // the mapping's first bytes faulted in
};

}  // namespace troupe::detail
