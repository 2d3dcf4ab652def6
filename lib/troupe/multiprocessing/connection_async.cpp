// Connection's asynchronous I/O: the non-blocking reads and writes under every async_ member
// (connection.hpp); the blocking half is connection.cpp.
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

#include "troupe/detail/checked.hpp"
#include "troupe/detail/sigpipe.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/internal/framing.hpp"
#include "troupe/multiprocessing/tls.hpp"

#include <endian.h>
#include <limits.h>

namespace troupe::multiprocessing {

using internal::grow_body;
using internal::kReadBuffer;

// ---- asynchronous I/O -----------------------------------------------------------------------

namespace {

// Reads what can be read now: > 0 bytes, 0 at EOF, -1 with errno (EAGAIN when nothing yet).
// Sockets: a non-blocking receive. Pipes (blocking fds shared with the blocking calls): only
// what FIONREAD says is there, so the read cannot block.
ssize_t read_now(int fd, bool socket, void* p, std::size_t n) {
  if (socket) {
    ssize_t r;
    do {
      r = ::recv(fd, p, n, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    return r;
  }
  int avail = 0;
  if (::ioctl(fd, FIONREAD, &avail) != 0) return -1;
  if (avail == 0) {
    pollfd q{fd, POLLIN, 0};
    if (::poll(&q, 1, 0) <= 0) {
      errno = EAGAIN;
      return -1;
    }
    if (::ioctl(fd, FIONREAD, &avail) != 0) return -1;
    if (avail == 0) return ::read(fd, p, 0) < 0 ? -1 : 0;  // readable and empty: EOF
  }
  ssize_t r;
  do {
    r = ::read(fd, p, std::min<std::size_t>(n, static_cast<std::size_t>(avail)));
  } while (r < 0 && errno == EINTR);
  return r;
}

// Writes what can be written now: bytes written, or -1 with errno (EAGAIN when full).
// Pipes: at most PIPE_BUF bytes once poll says writable, which a blocking write takes at once.
ssize_t write_now(int fd, bool socket, iovec* iov, int iovcnt) {
  if (socket) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(iovcnt);
    ssize_t r;
    do {
      r = ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    return r;
  }
  pollfd q{fd, POLLOUT, 0};
  if (::poll(&q, 1, 0) <= 0) {
    errno = EAGAIN;
    return -1;
  }
  if (q.revents & (POLLERR | POLLHUP)) {
    errno = EPIPE;
    return -1;
  }
  iovec limited[8];
  std::size_t left = PIPE_BUF;
  int k = 0;
  for (int i = 0; i < iovcnt && k < 8 && left > 0; ++i) {
    const std::size_t take = std::min(left, iov[i].iov_len);
    limited[k++] = {iov[i].iov_base, take};
    left -= take;
  }
  troupe::detail::SigpipeBlock no_sigpipe;  // as write_all: the caller gets EPIPE instead
  ssize_t r;
  do {
    r = ::writev(fd, limited, k);
  } while (r < 0 && errno == EINTR);
  if (r < 0) no_sigpipe.consume(errno);
  return r;
}

}  // namespace

void Connection::prepare_async_write(detail::AsyncWrite& st, std::span<const std::byte> payload) {
  const std::size_t hlen = detail::length_header(payload.size(), st.header);
  st.iov.clear();
  st.iov.push_back({st.header, hlen});
  if (!payload.empty()) st.iov.push_back({const_cast<std::byte*>(payload.data()), payload.size()});
}

void Connection::prepare_async_writes(detail::AsyncWrite& st,
                                      std::span<const std::span<const std::byte>> messages) {
  internal::frame_messages(messages, st.headers, st.iov);
}

void Connection::encode_owned_frame(detail::AsyncWrite& st, capnp::MessageBuilder& mb) {
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  st.owned.assign(reinterpret_cast<const std::byte*>(bytes.begin()),
                  reinterpret_cast<const std::byte*>(bytes.end()));
  prepare_async_write(st, st.owned);
}

bool Connection::async_write_some(detail::AsyncWrite& st, std::error_code& ec) noexcept {
  while (!st.iov.empty()) {
    const int cnt = static_cast<int>(std::min<std::size_t>(st.iov.size(), 1024));
    const ssize_t n = tls_ ? tls_->writev(st.iov.data(), cnt, false)
                           : write_now(fd_.get(), is_socket_, st.iov.data(), cnt);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      ec = std::error_code(errno, std::generic_category());
      return true;
    }
    internal::consume_iov(st.iov, static_cast<std::size_t>(n));
  }
  return true;
}

void Connection::async_received(detail::AsyncRead& st, std::size_t n) noexcept {
  if (st.into_body)
    st.got += n;
  else
    rend_ += n;
  st.into = nullptr;
  st.into_size = 0;
}

std::span<std::byte> Connection::fill_space() {
  if (!rbuf_) rbuf_.reset(new std::byte[kReadBuffer]);
  if (rpos_ > 0) {
    if (buffered() > 0) std::memmove(rbuf_.get(), rbuf_.get() + rpos_, buffered());
    rend_ -= rpos_;
    rpos_ = 0;
  }
  return {rbuf_.get() + rend_, kReadBuffer - rend_};
}

boost::system::error_code Connection::filled(boost::system::error_code ec, std::size_t n) noexcept {
  if (ec == boost::asio::error::operation_aborted) return ec;
  // Closed while the completion was queued: the bytes are not ours now.
  if (closed()) return detail::to_boost(std::error_code(EBADF, std::generic_category()));
  if (ec == boost::asio::error::eof) {
    asio_eof_ = true;  // what follows reads itself (asio_reads())
    return detail::to_boost(buffered() == 0 ? make_error_code(errc::eof_error)
                                            : std::error_code(EIO, std::generic_category()));
  }
  // As the reads troupe does itself report it: an errno value.
  if (ec) return detail::to_boost(std::error_code(ec.value(), std::generic_category()));
  rend_ += n;
  return {};
}

std::optional<boost::system::error_code> Connection::try_fill() {
  const bool usable = !closed() && readable_;
  const std::span<std::byte> into = usable ? fill_space() : std::span<std::byte>();
  if (into.empty())
    return detail::to_boost(std::error_code(usable ? EMSGSIZE : EBADF, std::generic_category()));
  ssize_t r;
  do {
    r = ::recv(fd_.get(), into.data(), into.size(), MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  if (r > 0) return filled({}, static_cast<std::size_t>(r));
  if (r == 0) return filled(boost::asio::error::eof, 0);
  if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
  return filled(boost::system::error_code(errno, boost::system::system_category()), 0);
}

std::error_code Connection::async_eof(const detail::AsyncRead& st) const noexcept {
  return buffered() == 0 && st.phase == 0 ? make_error_code(errc::eof_error)
                                          : std::error_code(EIO, std::generic_category());
}

bool Connection::async_read_some(detail::AsyncRead& st, std::error_code& ec,
                                 bool may_read) noexcept {
  if (!rbuf_) rbuf_.reset(new (std::nothrow) std::byte[kReadBuffer]);
  if (!rbuf_) {
    ec = std::error_code(ENOMEM, std::generic_category());
    return true;
  }
  // Headers come through the read buffer; the body goes straight into place.
  auto buffer_at_least = [&](std::size_t need) -> int {  // 1 ready, 0 would block, -1 done/ec
    while (buffered() < need) {
      if (rpos_ > 0) {
        std::memmove(rbuf_.get(), rbuf_.get() + rpos_, buffered());
        rend_ -= rpos_;
        rpos_ = 0;
      }
      if (!may_read) {
        st.into = rbuf_.get() + rend_;
        st.into_size = kReadBuffer - rend_;
        st.into_body = false;
        return 0;
      }
      const ssize_t r =
          tls_ ? tls_->read(rbuf_.get() + rend_, kReadBuffer - rend_, false)
               : read_now(fd_.get(), is_socket_, rbuf_.get() + rend_, kReadBuffer - rend_);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        ec = std::error_code(errno, std::generic_category());
        return -1;
      }
      if (r == 0) {
        ec = async_eof(st);
        return -1;
      }
      rend_ += static_cast<std::size_t>(r);
    }
    return 1;
  };
  if (st.phase == 0) {
    const int b = buffer_at_least(4);
    if (b <= 0) return b < 0;
    const auto* h = reinterpret_cast<const unsigned char*>(rbuf_.get() + rpos_);
    const std::uint32_t v = (std::uint32_t{h[0]} << 24) | (std::uint32_t{h[1]} << 16) |
                            (std::uint32_t{h[2]} << 8) | std::uint32_t{h[3]};
    rpos_ += 4;
    if (v == 0xffffffffu) {
      st.phase = 1;
    } else if (v > 0x7fffffffu) {
      close();
      ec = std::error_code(EPROTO, std::generic_category());
      return true;
    } else {
      st.size = v;
      st.phase = 2;
    }
  }
  if (st.phase == 1) {
    const int b = buffer_at_least(8);
    if (b <= 0) return b < 0;
    const auto* h = reinterpret_cast<const unsigned char*>(rbuf_.get() + rpos_);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n = (n << 8) | h[i];
    rpos_ += 8;
    st.size = n;
    st.phase = 2;
  }
  if (st.phase == 2) {
    const std::uint64_t limit = st.maxlength
                                    ? std::min<std::uint64_t>(*st.maxlength, max_message_size_)
                                    : max_message_size_;
    if (st.size > limit) {
      close();  // as recv_bytes: the stream is out of step
      ec = std::error_code(EMSGSIZE, std::generic_category());
      return true;
    }
    st.body.clear();
    st.got = 0;
    st.phase = 3;
  }
  const auto size = static_cast<std::size_t>(st.size);
  while (st.got < size) {
    if (st.got == st.body.size()) {
      try {
        grow_body(st.body, size);  // as read_body: memory follows the bytes
      } catch (const std::bad_alloc&) {
        ec = std::error_code(ENOMEM, std::generic_category());
        return true;
      }
    }
    std::byte* at = st.body.data() + st.got;
    const std::size_t want = st.body.size() - st.got;
    if (buffered() > 0) {  // the bytes read with the header first
      const std::size_t have = std::min(buffered(), want);
      std::memcpy(at, rbuf_.get() + rpos_, have);
      rpos_ += have;
      st.got += have;
      continue;
    }
    if (!may_read) {
      st.into = at;
      st.into_size = want;
      st.into_body = true;
      return false;
    }
    const ssize_t r =
        tls_ ? tls_->read(at, want, false) : read_now(fd_.get(), is_socket_, at, want);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      ec = std::error_code(errno, std::generic_category());
      return true;
    }
    if (r == 0) {
      ec = std::error_code(EIO, std::generic_category());
      return true;
    }
    st.got += static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace troupe::multiprocessing
