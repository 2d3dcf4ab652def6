#include "troupe/multiprocessing/connection.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>

#include "troupe/detail/checked.hpp"
#include "troupe/detail/futex.hpp"
#include "troupe/detail/sigpipe.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/internal/framing.hpp"
#include "troupe/multiprocessing/tls.hpp"

#include <endian.h>
#include <limits.h>

namespace troupe::multiprocessing {
namespace {

using internal::grow_body;
using internal::kReadBuffer;

// poll(2)'s timeout for a deadline: -1 (none), else the milliseconds left, rounded up, >= 0.
int poll_timeout_ms(const std::optional<std::chrono::steady_clock::time_point>& deadline) {
  if (!deadline) return -1;
  const auto left =
      std::chrono::ceil<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 1 << 30));
}

bool is_socket(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

// The fd a Connection is made with, checked before the Connection owns it: as in Python, a
// ValueError leaves it to the caller.
int checked_fd(int fd, bool readable, bool writable) {
  if (fd < 0) throw ValueError("Connection: invalid file descriptor " + std::to_string(fd));
  if (!readable && !writable)
    throw ValueError("at least one of `readable` and `writable` must be True");
  return fd;
}

// writev the whole of `iov`, retrying on EINTR and short writes. On a pipe, a write to a closed
// reader raises SIGPIPE; block it for this thread and swallow the one we caused, so the caller
// gets BrokenPipeError instead of a dead process (sockets use MSG_NOSIGNAL instead).
// Through `tls` when there is a session.
void write_all(int fd, bool socket, iovec* iov, int iovcnt, detail::TlsSession* tls) {
  std::optional<troupe::detail::SigpipeBlock> no_sigpipe;
  if (!socket) no_sigpipe.emplace();
  int err = 0;
  while (iovcnt > 0) {
    ssize_t n;
    if (tls) {
      n = tls->writev(iov, iovcnt, true);
    } else if (socket) {
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<std::size_t>(iovcnt);
      n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    } else {
      n = writev(fd, iov, iovcnt);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    auto left = static_cast<std::size_t>(n);
    while (iovcnt > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  if (no_sigpipe) no_sigpipe->consume(err);
  no_sigpipe.reset();
  if (err) {
    std::string what = "Connection.send_bytes: write to fd " + std::to_string(fd);
    if (tls && err == EPROTO) what += " (TLS: " + tls->error() + ")";
    throw_os_error(err, what);
  }
}

// The error of a failed read, with the TLS reason when there is one.
[[noreturn]] void read_failed(int err, int fd, detail::TlsSession* tls) {
  std::string what = "Connection.recv_bytes: read from fd " + std::to_string(fd);
  if (tls && err == EPROTO) what += " (TLS: " + tls->error() + ")";
  throw_os_error(err, what);
}

}  // namespace

// ---- Connection -----------------------------------------------------------------------------

Connection::Connection(int fd, bool readable, bool writable)
    : fd_(checked_fd(fd, readable, writable)),
      readable_(readable),
      writable_(writable),
      is_socket_(is_socket(fd)) {}

// Written out: spin_ cannot move (a moved-to end learns afresh), and an assignment closes the
// old connection as close() does (TLS close_notify, the reactor let go, then the fd).
Connection::Connection(Connection&& o) noexcept
    : fd_(std::move(o.fd_)),
      readable_(o.readable_),
      writable_(o.writable_),
      is_socket_(o.is_socket_),
      asio_eof_(o.asio_eof_),
      max_message_size_(o.max_message_size_),
      rbuf_(std::move(o.rbuf_)),
      rpos_(std::exchange(o.rpos_, 0)),
      rend_(std::exchange(o.rend_, 0)),
      spare_(std::move(o.spare_)),
      tls_(std::move(o.tls_)),
      executor_(std::move(o.executor_)),
      reactor_(std::move(o.reactor_)) {}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::move(o.fd_);
    readable_ = o.readable_;
    writable_ = o.writable_;
    is_socket_ = o.is_socket_;
    asio_eof_ = o.asio_eof_;
    max_message_size_ = o.max_message_size_;
    rbuf_ = std::move(o.rbuf_);
    rpos_ = std::exchange(o.rpos_, 0);
    rend_ = std::exchange(o.rend_, 0);
    spare_ = std::move(o.spare_);
    tls_ = std::move(o.tls_);
    executor_ = std::move(o.executor_);
    reactor_ = std::move(o.reactor_);
  }
  return *this;
}

Connection::~Connection() {
  close();
}

void Connection::close() noexcept {
  reactor_.release();  // cancels outstanding async operations (operation_aborted)
  if (tls_) {
    tls_->shutdown();
    tls_.reset();
  }
  fd_.reset();
  rpos_ = rend_ = 0;
}

std::size_t Connection::buffered_bytes() const noexcept {
  return buffered() + (tls_ ? tls_->pending() : 0);
}

void Connection::start_tls(boost::asio::ssl::context& ctx, TlsRole role,
                           std::string_view peer_name) {
  begin_tls(ctx, role, peer_name);
  if (tls_->handshake(true) != 0) {
    const int err = errno;
    std::string why = err == EPROTO ? tls_->error() : std::strerror(err);
    if (err == EAGAIN) throw_os_error(EAGAIN, "TLS handshake on fd " + std::to_string(fd_.get()));
    close();
    throw AuthenticationError("TLS handshake failed: " + why);
  }
}

void Connection::begin_tls(boost::asio::ssl::context& ctx, TlsRole role,
                           std::string_view peer_name) {
  check_open("start_tls");
  if (!is_socket_)
    throw ValueError("Connection.start_tls: fd " + std::to_string(fd_.get()) +
                     " is not a socket (TLS runs over sockets only)");
  if (tls_) throw ValueError("Connection.start_tls: TLS is already on");
  if (buffered() > 0)
    throw ValueError("Connection.start_tls: " + std::to_string(buffered()) +
                     " bytes were already read as plain text");
  tls_ = std::make_unique<detail::TlsSession>(ctx, fd_.get(), role, peer_name);
}

bool Connection::tls_handshake_step(std::error_code& ec, bool& want_write) noexcept {
  if (!tls_ || closed()) {
    ec = std::error_code(EBADF, std::generic_category());
    return true;
  }
  if (tls_->handshake(false) == 0) return true;
  if (errno == EAGAIN) {
    want_write = tls_->wants_write(detail::TlsSession::kHandshake);
    return false;
  }
  ec = troupe::make_error_code(troupe::errc::authentication_error);
  return true;
}

std::string Connection::tls_description() const {
  return tls_ ? tls_->description() : std::string();
}

std::string Connection::tls_error() const {
  return tls_ ? tls_->error() : std::string();
}

boost::asio::posix::descriptor_base::wait_type Connection::async_wait_type(bool reading) const {
  using D = boost::asio::posix::descriptor_base;
  if (!tls_) return reading ? D::wait_read : D::wait_write;
  const bool w =
      tls_->wants_write(reading ? detail::TlsSession::kRead : detail::TlsSession::kWrite);
  return w ? D::wait_write : D::wait_read;
}

int Connection::fileno() const {
  check_open("fileno");
  return fd_.get();
}

void Connection::check_open(const char* what) const {
  if (!fd_) throw_os_error(EBADF, std::string("Connection.") + what + ": handle is closed");
}

void Connection::check_readable(const char* what) const {
  check_open(what);
  if (!readable_)
    throw_os_error(EBADF, std::string("Connection.") + what + ": connection is write-only");
}

void Connection::check_writable(const char* what) const {
  check_open(what);
  if (!writable_)
    throw_os_error(EBADF, std::string("Connection.") + what + ": connection is read-only");
}

std::string detail::send_range_error(std::size_t length, std::size_t offset,
                                     std::optional<std::size_t> size) {
  // No buffer is longer than PTRDIFF_MAX bytes: a larger offset or size is a negative number
  // converted to std::size_t, and named as such. The checks form no sum, so nothing wraps.
  constexpr auto kMax = static_cast<std::size_t>(PTRDIFF_MAX);
  auto negative = [](std::size_t v) { return std::to_string(static_cast<std::int64_t>(v)); };
  if (offset > kMax) return "offset is negative (" + negative(offset) + ")";
  if (offset > length)
    return "buffer length < offset (" + std::to_string(length) + " < " + std::to_string(offset) +
           ")";
  if (!size) return {};
  if (*size > kMax) return "size is negative (" + negative(*size) + ")";
  if (!troupe::detail::range_fits(length, offset, *size))
    return "buffer length < offset + size (" + std::to_string(length) + " < " +
           std::to_string(offset) + " + " + std::to_string(*size) + ")";
  return {};
}

void Connection::send_bytes(std::span<const std::byte> buf, std::size_t offset,
                            std::optional<std::size_t> size) {
  check_writable("send_bytes");
  if (auto e = detail::send_range_error(buf.size(), offset, size); !e.empty()) throw ValueError(e);
  write_frame(buf.subspan(offset, size ? *size : buf.size() - offset));
}

void Connection::write_frame(std::span<const std::byte> payload) {
  iovec iov{const_cast<std::byte*>(payload.data()), payload.size()};
  write_frame(&iov, payload.empty() ? 0 : 1, payload.size());
}

namespace detail {
std::size_t length_header(std::uint64_t n, unsigned char* out) noexcept {
  if (n > 0x7fffffff) {
    std::memset(out, 0xff, 4);  // -1, then the 8-byte length
    for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<unsigned char>(n >> (56 - 8 * i));
    return 12;
  }
  for (int i = 0; i < 4; ++i) out[i] = static_cast<unsigned char>(n >> (24 - 8 * i));
  return 4;
}
}  // namespace detail

void Connection::write_frame(const iovec* payload, std::size_t n, std::uint64_t total) {
  unsigned char header[12];
  const std::size_t hlen = detail::length_header(total, header);
  iovec small[8];
  std::vector<iovec> large;
  iovec* iov = small;
  if (n + 1 > std::size(small)) {
    large.resize(n + 1);
    iov = large.data();
  }
  iov[0] = {header, hlen};
  std::copy(payload, payload + n, iov + 1);
  // writev takes at most IOV_MAX buffers at a time.
  constexpr std::size_t kIovMax = 1024;
  std::size_t left = n + 1;
  while (left > 0) {
    const std::size_t k = std::min(left, kIovMax);
    write_all(fd_.get(), is_socket_, iov, static_cast<int>(k), tls_.get());
    iov += k;
    left -= k;
  }
}

// ---- typed messages -------------------------------------------------------------------------

namespace detail {

FlatMessage::FlatMessage(std::vector<std::byte> b)
    : bytes(std::move(b)), reader(words(), reader_options(words().size())) {}

std::pair<Connection, Connection> one_way_socketpair() {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    throw_os_error(errno, "Pipe<T>: socketpair");
  ::shutdown(fds[0], SHUT_WR);
  ::shutdown(fds[1], SHUT_RD);
  return {Connection(fds[0], true, false), Connection(fds[1], false, true)};
}

}  // namespace detail

void Connection::send_message(capnp::MessageBuilder& message) {
  check_writable("send");
  auto segments = message.getSegmentsForOutput();
  const std::size_t count = segments.size();
  // Cap'n Proto's stream framing: segment count - 1, each segment's size in words (all 32-bit
  // little-endian), padded to a whole word. Small messages need no heap allocation here.
  const std::size_t table_len = (count + 2) & ~std::size_t{1};
  std::uint32_t small_table[16];
  iovec small_iov[16];
  std::vector<std::uint32_t> large_table;
  std::vector<iovec> large_iov;
  std::uint32_t* table = small_table;
  iovec* iov = small_iov;
  if (table_len > std::size(small_table)) {
    large_table.resize(table_len);
    large_iov.resize(count + 1);
    table = large_table.data();
    iov = large_iov.data();
  }
  table[0] = static_cast<std::uint32_t>(count - 1);
  table[table_len - 1] = 0;  // padding (or overwritten by the last size)
  std::uint64_t total = table_len * 4;
  iov[0] = {table, table_len * 4};
  for (std::size_t i = 0; i < count; ++i) {
    table[i + 1] = static_cast<std::uint32_t>(segments[i].size());
    const auto bytes = segments[i].asBytes();
    iov[i + 1] = {const_cast<kj::byte*>(bytes.begin()), bytes.size()};
    total += bytes.size();
  }
  if constexpr (std::endian::native == std::endian::big) {
    for (std::size_t i = 0; i < table_len; ++i) table[i] = __builtin_bswap32(table[i]);
  }
  write_frame(iov, count + 1, total);
}

std::vector<std::byte> Connection::read_frame_words() {
  const std::uint64_t n = read_header();
  if (n > max_message_size_) bad_message_length(n, max_message_size_);
  if (n % sizeof(capnp::word) != 0 || n == 0) {
    discard(n);  // consume it, so the next message is read from its start
    codec_detail::malformed("a " + std::to_string(n) +
                            "-byte frame is not a Cap'n Proto message (not whole 8-byte words)");
  }
  std::vector<std::byte> out;
  read_body(out, static_cast<std::size_t>(n));
  return out;
}

void detail::check_whole_message(const capnp::FlatArrayMessageReader& reader,
                                 kj::ArrayPtr<const capnp::word> words) {
  if (reader.getEnd() != words.end())
    codec_detail::malformed("trailing bytes after the message in a " +
                            std::to_string(words.size() * sizeof(capnp::word)) + "-byte frame");
}

void Connection::recv_typed_frame(detail::TypedFrame& frame) {
  check_readable("recv");
  constexpr std::uint64_t kScatterFrom = 256 * 1024;  // bytes
  constexpr std::size_t kLargeSegment = 64 * 1024;    // bytes
  constexpr std::uint32_t kMaxSegments = 512;         // Cap'n Proto's own limit
  const std::uint64_t n = read_header();
  if (n > max_message_size_) bad_message_length(n, max_message_size_);
  auto skip_rest = [&](std::uint64_t left, const std::string& why) {
    discard(left);
    codec_detail::malformed(why);
  };
  if (n % sizeof(capnp::word) != 0 || n == 0)
    skip_rest(n, "a " + std::to_string(n) +
                     "-byte frame is not a Cap'n Proto message (not whole 8-byte words)");
  if (n < kScatterFrom) {  // small: one read into the reused buffer
    const auto count = static_cast<std::size_t>(n / sizeof(capnp::word));
    if (spare_.size() < count) {
      spare_ = nullptr;
      spare_ = kj::heapArray<capnp::word>(count);
    }
    read_exact(reinterpret_cast<std::byte*>(spare_.begin()), static_cast<std::size_t>(n));
    frame.small = std::move(spare_);
    frame.words = count;
    frame.flat = true;
    return;
  }
  // Large: the segment table first, then each segment into place.
  std::uint32_t first;
  read_exact(reinterpret_cast<std::byte*>(&first), 4);
  first = le32toh(first);
  const std::uint64_t count = std::uint64_t{first} + 1;
  const std::uint64_t table_bytes = ((count + 2) & ~std::uint64_t{1}) * 4;
  if (count > kMaxSegments || table_bytes > n)
    skip_rest(n - 4, "a message with " + std::to_string(count) + " segments (limit " +
                         std::to_string(kMaxSegments) + ")");
  std::vector<std::uint32_t> sizes(static_cast<std::size_t>(table_bytes / 4 - 1));
  read_exact(reinterpret_cast<std::byte*>(sizes.data()), sizes.size() * 4);
  std::uint64_t total = table_bytes;
  std::uint64_t small_words = 0;
  for (std::size_t i = 0; i < count; ++i) {
    sizes[i] = le32toh(sizes[i]);
    total += std::uint64_t{sizes[i]} * sizeof(capnp::word);
    if (std::uint64_t{sizes[i]} * sizeof(capnp::word) < kLargeSegment) small_words += sizes[i];
  }
  if (total != n)
    skip_rest(n - table_bytes, "the segment table adds up to " + std::to_string(total) +
                                   " bytes in a " + std::to_string(n) + "-byte frame");
  frame.small = kj::heapArray<capnp::word>(static_cast<std::size_t>(small_words));
  frame.words = static_cast<std::size_t>(n / sizeof(capnp::word));
  std::size_t small_at = 0;
  for (std::size_t i = 0; i < count;) {
    const std::size_t bytes = std::size_t{sizes[i]} * sizeof(capnp::word);
    if (bytes < kLargeSegment) {
      capnp::word* p = frame.small.begin() + small_at;
      read_exact(reinterpret_cast<std::byte*>(p), bytes);
      frame.segments.emplace_back(p, sizes[i]);
      small_at += sizes[i];
      ++i;
      continue;
    }
    // A large segment goes into a byte vector of its own (operator new's alignment is at least
    // a word's), so a byte vector sent without a copy can be taken whole. A blob over
    // kMaxBlobChunk was sent as full chunks, one segment each: those stay together in one.
    auto seg_bytes = [&](std::size_t k) { return std::size_t{sizes[k]} * sizeof(capnp::word); };
    std::size_t j = i + 1, run_bytes = seg_bytes(i);
    while (j < count && seg_bytes(j - 1) == codec_detail::kMaxBlobChunk &&
           seg_bytes(j) >= kLargeSegment)
      run_bytes += seg_bytes(j++);
    auto& run = frame.runs.emplace_back();
    read_body(run, run_bytes);  // reserved: the segments below point into it
    std::size_t off = 0;
    for (; i < j; ++i) {
      frame.segments.emplace_back(reinterpret_cast<const capnp::word*>(run.data() + off), sizes[i]);
      off += std::size_t{sizes[i]} * sizeof(capnp::word);
    }
  }
}

void Connection::reclaim(detail::TypedFrame& frame) noexcept {
  if (frame.flat) spare_ = std::move(frame.small);
}

std::shared_ptr<detail::FlatMessage> Connection::recv_message() {
  check_readable("recv");
  auto bytes = read_frame_words();
  return codec_detail::guarded([&] {
    auto m = std::make_shared<detail::FlatMessage>(std::move(bytes));
    detail::check_whole_message(m->reader, m->words());
    return m;
  });
}

namespace {

// A blocking receive on a socket that sleeps in poll(), not in read(). Both directions of a
// socket share one wait queue, and a reader asleep in read() is woken by everything that wakes
// it: when the peer reads what this side sent earlier (a reply read while this side waits for the
// next request) the kernel reports space to write, and the sleeping reader is woken for nothing,
// a context switch (and on a busy machine a time slice) a message. poll() sleeps for POLLIN only.
// Measured on the pool's round trip (caller <-> worker, one socket): 3.0 -> 2.0 context switches
// per call. Returns recv()'s result; errno as it left it.
ssize_t sleep_then_recv(int fd, std::byte* at, std::size_t room) {
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, -1) < 0) return -1;  // EINTR among others: the caller decides
    const ssize_t r = ::recv(fd, at, room, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;  // taken by another reader
    return r;
  }
}

}  // namespace

bool Connection::fill(std::size_t n, bool eof_is_error) {
  if (!rbuf_) rbuf_.reset(new std::byte[kReadBuffer]);
  if (rpos_ == rend_) rpos_ = rend_ = 0;
  if (rend_ - rpos_ >= n) return true;
  if (kReadBuffer - rpos_ < n) {  // compact
    std::memmove(rbuf_.get(), rbuf_.get() + rpos_, rend_ - rpos_);
    rend_ -= rpos_;
    rpos_ = 0;
  }
  while (rend_ - rpos_ < n) {
    // Spin briefly before sleeping in read (DESIGN.md, "Waiting"): on a socket, poll with
    // non-blocking receives; a peer that answers within the spin costs no sleep and wake-up.
    ssize_t r = -1;
    int err = 0;
    bool done = false;
    std::byte* at = rbuf_.get() + rend_;
    const std::size_t room = kReadBuffer - rend_;
    // Each round of these spins is a system call: spin_syscall() makes none while the CPUs are
    // busy (troupe::detail::Contention).
    if (tls_) {
      done = spin_.spin_syscall([&] {
        r = tls_->read(at, room, false);
        err = errno;
        return !(r < 0 && err == EAGAIN);
      });
      if (!done) {
        r = tls_->read(at, room, true);
        err = errno;
        if (r > 0) spin_.woke();
      }
    } else {
      if (is_socket_) {
        done = spin_.spin_syscall([&] {
          r = ::recv(fd_.get(), at, room, MSG_DONTWAIT);
          err = errno;
          return !(r < 0 && (err == EAGAIN || err == EWOULDBLOCK));
        });
      }
      if (!done && is_socket_) {
        r = sleep_then_recv(fd_.get(), at, room);
        err = errno;
        if (r > 0) spin_.woke();
      } else if (!done) {
        r = ::read(fd_.get(), at, room);
        err = errno;
      }
    }
    if (r < 0) {
      if (err == EINTR) continue;
      read_failed(err, fd_.get(), tls_.get());
    }
    if (r == 0) {
      if (rend_ == rpos_ && !eof_is_error) return false;
      throw_os_error(EIO, "Connection.recv_bytes: got end of file during message");
    }
    rend_ += static_cast<std::size_t>(r);
  }
  return true;
}

void Connection::read_body(std::vector<std::byte>& out, std::size_t n) {
  out.clear();
  while (out.size() < n) {
    const std::size_t at = out.size();
    grow_body(out, n);
    read_exact(out.data() + at, out.size() - at);
  }
}

void Connection::discard(std::uint64_t n) {
  while (n > 0) {
    const auto k = static_cast<std::size_t>(std::min<std::uint64_t>(n, kReadBuffer / 2));
    fill(k, true);
    rpos_ += k;
    n -= k;
  }
}

void Connection::read_exact(std::byte* out, std::size_t n) {
  // Take what is buffered, then read large remainders straight into place (no extra copy).
  std::size_t have = std::min(n, buffered());
  if (have) {
    std::memcpy(out, rbuf_.get() + rpos_, have);
    rpos_ += have;
  }
  out += have;
  n -= have;
  if (n == 0) return;
  if (n < kReadBuffer / 2) {
    fill(n, true);
    std::memcpy(out, rbuf_.get() + rpos_, n);
    rpos_ += n;
    return;
  }
  while (n > 0) {
    ssize_t r = tls_ ? tls_->read(out, n, true) : ::read(fd_.get(), out, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      read_failed(errno, fd_.get(), tls_.get());
    }
    if (r == 0) throw_os_error(EIO, "Connection.recv_bytes: got end of file during message");
    out += r;
    n -= static_cast<std::size_t>(r);
  }
}

std::uint64_t Connection::read_header() {
  if (!fill(4, false)) throw EOFError("Connection.recv_bytes: the peer closed the connection");
  const auto* h = reinterpret_cast<const unsigned char*>(rbuf_.get() + rpos_);
  const std::uint32_t v = (std::uint32_t{h[0]} << 24) | (std::uint32_t{h[1]} << 16) |
                          (std::uint32_t{h[2]} << 8) | std::uint32_t{h[3]};
  rpos_ += 4;
  if (v == 0xffffffffu) {
    fill(8, true);
    const auto* b = reinterpret_cast<const unsigned char*>(rbuf_.get() + rpos_);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n = (n << 8) | b[i];
    rpos_ += 8;
    return n;
  }
  if (v > 0x7fffffffu) {
    close();
    throw_os_error(EPROTO, "Connection.recv_bytes: bad message length header " +
                               std::to_string(static_cast<std::int32_t>(v)));
  }
  return v;
}

void Connection::bad_message_length(std::uint64_t n, std::uint64_t limit) {
  close();  // as Python's _bad_message_length: the stream is now out of step
  throw_os_error(EMSGSIZE, "Connection.recv_bytes: bad message length: " + std::to_string(n) +
                               " bytes, limit " + std::to_string(limit) +
                               "; the connection is closed");
}

std::vector<std::byte> Connection::recv_bytes(std::optional<std::size_t> maxlength) {
  check_readable("recv_bytes");
  const std::uint64_t n = read_header();
  const std::uint64_t limit =
      maxlength ? std::min<std::uint64_t>(*maxlength, max_message_size_) : max_message_size_;
  if (n > limit) bad_message_length(n, limit);
  std::vector<std::byte> out;
  read_body(out, static_cast<std::size_t>(n));
  return out;
}

bool Connection::buffered_header(std::size_t& hlen, std::uint64_t& n, bool& bad) const noexcept {
  bad = false;
  const std::size_t have = buffered();
  if (have < 4) return false;
  const auto* h = reinterpret_cast<const unsigned char*>(rbuf_.get() + rpos_);
  const std::uint32_t v = (std::uint32_t{h[0]} << 24) | (std::uint32_t{h[1]} << 16) |
                          (std::uint32_t{h[2]} << 8) | std::uint32_t{h[3]};
  n = v;
  hlen = 4;
  if (v == 0xffffffffu) {
    if (have < 12) return false;
    n = 0;
    for (int i = 0; i < 8; ++i) n = (n << 8) | h[4 + i];
    hlen = 12;
  } else if (v > 0x7fffffffu) {
    bad = true;  // recv_bytes refuses it
    return false;
  }
  if (n > max_message_size_) bad = true;
  return !bad;
}

bool Connection::message_buffered(std::optional<std::size_t> maxlength) const noexcept {
  std::size_t hlen = 0;
  std::uint64_t n = 0;
  bool bad = false;
  if (!fd_ || !readable_ || !buffered_header(hlen, n, bad)) return false;
  return (!maxlength || n <= *maxlength) && n <= buffered() - hlen;
}

bool Connection::can_fill() const noexcept {
  if (!fd_ || !readable_ || !asio_reads()) return false;
  std::size_t hlen = 0;
  std::uint64_t n = 0;
  bool bad = false;
  if (!buffered_header(hlen, n, bad)) return !bad;
  return n <= kReadBuffer - hlen;
}

std::optional<std::vector<std::byte>> Connection::recv_buffered(
    std::optional<std::size_t> maxlength) {
  std::vector<std::byte> out;
  if (!recv_buffered_into(out, maxlength)) return std::nullopt;
  return out;
}

bool Connection::recv_buffered_into(std::vector<std::byte>& out,
                                    std::optional<std::size_t> maxlength) {
  check_readable("recv_buffered");
  std::size_t hlen = 0;
  std::uint64_t n = 0;
  bool bad = false;
  // The header read once (not again by message_buffered()); a message over a limit, or a bad
  // header, is left for recv_bytes.
  if (!buffered_header(hlen, n, bad) || (maxlength && n > *maxlength) || n > buffered() - hlen)
    return false;
  const std::byte* at = rbuf_.get() + rpos_ + hlen;
  out.assign(at, at + n);
  rpos_ += hlen + static_cast<std::size_t>(n);
  return true;
}

std::size_t Connection::recv_bytes_into(std::span<std::byte> buf, std::size_t offset) {
  check_readable("recv_bytes_into");
  if (offset > buf.size()) throw ValueError("offset too large");
  const std::uint64_t n = read_header();
  if (n > max_message_size_) bad_message_length(n, max_message_size_);
  if (n > buf.size() - offset) {
    std::vector<std::byte> whole;
    read_body(whole, static_cast<std::size_t>(n));
    throw BufferTooShort("recv_bytes_into: a " + std::to_string(n) +
                             "-byte message does not fit in " +
                             std::to_string(buf.size() - offset) + " bytes",
                         std::move(whole));
  }
  read_exact(buf.data() + offset, static_cast<std::size_t>(n));
  return static_cast<std::size_t>(n);
}

bool Connection::poll(Timeout timeout) {
  check_readable("poll");
  if (buffered() > 0) return true;
  const auto deadline = timeout.deadline();
  // A wait, not a look: spin briefly first, as a receive does (fill()), on a plain socket.
  bool spun = false;
  if (is_socket_ && !tls_ && poll_timeout_ms(deadline) != 0) {
    if (spin_.spin_syscall([&] {
          pollfd p{fd_.get(), POLLIN, 0};
          return ::poll(&p, 1, 0) > 0;
        }))
      return true;
    spun = true;
  }
  for (;;) {
    const int ms = poll_timeout_ms(deadline);
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, ms);
    if (spun && (p.revents & POLLIN) != 0) spin_.woke();  // a message, not a hang-up
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_os_error(errno, "Connection.poll on fd " + std::to_string(fd_.get()));
    }
    // Under TLS a readable socket may hold only protocol records, not a message.
    if (r > 0 && tls_ && !tls_->readable_now()) {
      if (ms == 0) return false;
      continue;
    }
    return r > 0;
  }
}

// ---- Pipe -----------------------------------------------------------------------------------

std::pair<Connection, Connection> Pipe(bool duplex) {
  int fds[2];
  if (duplex) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
      throw_os_error(errno, "Pipe: socketpair");
    return {Connection(fds[0]), Connection(fds[1])};
  }
  if (pipe2(fds, O_CLOEXEC) != 0) throw_os_error(errno, "Pipe: pipe2");
  return {Connection(fds[0], true, false), Connection(fds[1], false, true)};
}

// ---- connection.wait -----------------------------------------------------------------------

namespace connection {

std::vector<Waitable> wait(std::span<const Waitable> objects, Timeout timeout) {
  std::vector<pollfd> fds;
  fds.reserve(objects.size());
  bool buffered = false;
  for (const auto& o : objects) {
    int fd;
    if (Connection* c = o.connection()) {
      if (c->closed()) throw_os_error(EBADF, "connection.wait: a connection is closed");
      if (!c->readable()) throw_os_error(EBADF, "connection.wait: a connection is write-only");
      fd = c->fileno();
      buffered = buffered || c->buffered_bytes() > 0;
    } else {
      fd = o.fileno();
      if (fd < 0) throw_os_error(EBADF, "connection.wait: invalid fd " + std::to_string(fd));
    }
    fds.push_back({fd, POLLIN, 0});
  }
  // Something already buffered is ready now: look at the fds without blocking.
  const auto deadline =
      buffered ? std::optional(std::chrono::steady_clock::now()) : timeout.deadline();
  for (;;) {
    const int ms = poll_timeout_ms(deadline);
    const int r = ::poll(fds.data(), fds.size(), ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_os_error(errno, "connection.wait: poll");
    }
    std::vector<Waitable> ready;
    for (std::size_t i = 0; i < objects.size(); ++i) {
      if (fds[i].revents & POLLNVAL)
        throw_os_error(EBADF, "connection.wait: fd " + std::to_string(fds[i].fd) + " is not open");
      Connection* c = objects[i].connection();
      bool ready_now = fds[i].revents != 0 || (c && c->buffered_bytes() > 0);
      // Under TLS a readable socket may hold only protocol records: look closer.
      if (ready_now && c && c->tls() && c->buffered_bytes() == 0 &&
          !(fds[i].revents & (POLLERR | POLLHUP)))
        ready_now = c->poll();
      if (ready_now) ready.push_back(objects[i]);
    }
    if (!ready.empty() || r == 0) return ready;
  }
}

}  // namespace connection
}  // namespace troupe::multiprocessing
