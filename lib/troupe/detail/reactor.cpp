#include "troupe/detail/reactor.hpp"

#include <sys/ioctl.h>
#include <sys/socket.h>

#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/prefer.hpp>

namespace troupe::detail {

boost::asio::posix::stream_descriptor& ReactorRegistration::get(
    int fd, const boost::asio::any_io_executor& ex) {
  // A composed operation's executor tracks outstanding work; the registration outlives the
  // operation and must not keep its io_context running.
  if (!descriptor_) {
    blocking_restored_ = false;
    descriptor_ = std::make_unique<boost::asio::posix::stream_descriptor>(
        boost::asio::prefer(ex, boost::asio::execution::outstanding_work.untracked), fd);
  }
  return *descriptor_;
}

ReactorRegistration::Socket& ReactorRegistration::socket(int fd,
                                                         const boost::asio::any_io_executor& ex) {
  if (!socket_) {
    blocking_restored_ = false;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) ss.ss_family = AF_UNIX;
    auto s = std::make_unique<Socket>(
        boost::asio::prefer(ex, boost::asio::execution::outstanding_work.untracked));
    s->assign(boost::asio::generic::stream_protocol(ss.ss_family, 0), fd);
    socket_ = std::move(s);
  }
  return *socket_;
}

void ReactorRegistration::keep_blocking(int fd) noexcept {
  if (fd < 0 || blocking_restored_) return;
  int off = 0;
  ::ioctl(fd, FIONBIO, &off);
  blocking_restored_ = true;
}

void ReactorRegistration::release() noexcept {
  if (descriptor_) {
    descriptor_->release();
    descriptor_.reset();
  }
  if (socket_) {
    boost::system::error_code ignored;
    (void)socket_->release(ignored);
    socket_.reset();
  }
}

}  // namespace troupe::detail
