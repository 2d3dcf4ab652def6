// troupe/detail/reactor.hpp — an fd's registration with an Asio reactor, for async waits on fds
// whose I/O troupe does itself (connections, pidfds, subprocess pipes), and for the reads of a
// connection's socket, which Asio does. Not API.
#pragma once

#include <memory>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

namespace troupe::detail {

/// An fd's registration with an Asio reactor, made on first use: as a descriptor (get(): async
/// waits only, the I/O itself is troupe's) or as a stream socket (socket(): waits, and receives
/// that Asio does). One fd is registered one way only. Asio puts the fd in non-blocking mode
/// when it first waits on it; keep_blocking() puts it back for the blocking calls (Asio
/// remembers and does not redo it, so its own receives must pass MSG_DONTWAIT).
class ReactorRegistration {
public:
  using Socket = boost::asio::generic::stream_protocol::socket;

  ReactorRegistration() = default;
  ReactorRegistration(ReactorRegistration&&) noexcept = default;
  ReactorRegistration& operator=(ReactorRegistration&& o) noexcept {
    if (this != &o) {
      release();
      descriptor_ = std::move(o.descriptor_);
      socket_ = std::move(o.socket_);
      blocking_restored_ = o.blocking_restored_;
    }
    return *this;
  }
  ~ReactorRegistration() { release(); }  // never closes the fd: its owner does

  boost::asio::posix::stream_descriptor& get(int fd, const boost::asio::any_io_executor& ex);
  /// `fd` must be a stream socket (any family).
  Socket& socket(int fd, const boost::asio::any_io_executor& ex);
  void keep_blocking(int fd) noexcept;
  /// Cancels outstanding operations (operation_aborted) and forgets the fd without closing it.
  void release() noexcept;

private:
  std::unique_ptr<boost::asio::posix::stream_descriptor> descriptor_;
  std::unique_ptr<Socket> socket_;
  bool blocking_restored_ = false;
};

}  // namespace troupe::detail
