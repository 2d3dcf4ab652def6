#include "troupe/detail/reactor.hpp"

#include <sys/ioctl.h>

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
}

}  // namespace troupe::detail
