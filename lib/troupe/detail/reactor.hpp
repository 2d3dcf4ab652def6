// troupe/detail/reactor.hpp — an fd's registration with an Asio reactor, for async waits on fds
// whose I/O troupe does itself (connections, pidfds, subprocess pipes). Not API.
#pragma once

#include <memory>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

namespace troupe::detail {

/// An fd's registration with an Asio reactor, made on first use, for async waits only (the I/O
/// itself is troupe's). Asio puts a descriptor in non-blocking mode when it first waits on it;
/// keep_blocking() puts it back for the blocking calls (Asio remembers and does not redo it).
class ReactorRegistration {
public:
  ReactorRegistration() = default;
  ReactorRegistration(ReactorRegistration&&) noexcept = default;
  ReactorRegistration& operator=(ReactorRegistration&& o) noexcept {
    if (this != &o) {
      release();
      descriptor_ = std::move(o.descriptor_);
      blocking_restored_ = o.blocking_restored_;
    }
    return *this;
  }
  ~ReactorRegistration() { release(); }  // never closes the fd: its owner does

  boost::asio::posix::stream_descriptor& get(int fd, const boost::asio::any_io_executor& ex);
  void keep_blocking(int fd) noexcept;
  /// Cancels outstanding waits (operation_aborted) and forgets the fd without closing it.
  void release() noexcept;

private:
  std::unique_ptr<boost::asio::posix::stream_descriptor> descriptor_;
  bool blocking_restored_ = false;
};

}  // namespace troupe::detail
