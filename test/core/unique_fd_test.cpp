#include "troupe/unique_fd.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <type_traits>
#include <utility>

#include "leak_check.hpp"

namespace troupe {
namespace {

static_assert(!std::is_copy_constructible_v<UniqueFd>);
static_assert(!std::is_copy_assignable_v<UniqueFd>);
static_assert(std::is_nothrow_move_constructible_v<UniqueFd>);
static_assert(std::is_nothrow_move_assignable_v<UniqueFd>);
static_assert(std::is_nothrow_destructible_v<UniqueFd>);
static_assert(!std::is_convertible_v<UniqueFd, int>);   // no silent borrow: get()
static_assert(!std::is_convertible_v<UniqueFd, bool>);  // explicit operator bool
static_assert(!std::is_convertible_v<int, UniqueFd>);   // taking ownership is explicit

using UniqueFdTest = troupe::testing::LeakCheck;

bool is_open(int fd) {
  return ::fcntl(fd, F_GETFD) >= 0;
}

bool is_closed(int fd) {
  return ::fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

int new_fd() {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  return fd;
}

TEST_F(UniqueFdTest, DefaultHoldsNone) {
  UniqueFd fd;
  EXPECT_FALSE(fd);
  EXPECT_EQ(fd.get(), -1);
  EXPECT_FALSE(UniqueFd(-5));
  EXPECT_EQ(UniqueFd(-5).get(), -1);
}

TEST_F(UniqueFdTest, ClosesOnDestruction) {
  const int n = new_fd();
  {
    UniqueFd fd(n);
    EXPECT_TRUE(fd);
    EXPECT_EQ(fd.get(), n);
    EXPECT_TRUE(is_open(n));
  }
  EXPECT_TRUE(is_closed(n));
}

TEST_F(UniqueFdTest, ReleaseGivesUpOwnership) {
  const int n = new_fd();
  int got;
  {
    UniqueFd fd(n);
    got = fd.release();
    EXPECT_FALSE(fd);
    EXPECT_EQ(fd.get(), -1);
  }
  EXPECT_EQ(got, n);
  EXPECT_TRUE(is_open(n));
  ::close(n);
}

TEST_F(UniqueFdTest, ResetClosesTheOldOne) {
  const int a = new_fd();
  const int b = new_fd();
  UniqueFd fd(a);
  fd.reset(b);
  EXPECT_TRUE(is_closed(a));
  EXPECT_TRUE(is_open(b));
  EXPECT_EQ(fd.get(), b);
  fd.reset();
  EXPECT_TRUE(is_closed(b));
  EXPECT_FALSE(fd);
  fd.reset();  // holding none: nothing to do
  EXPECT_FALSE(fd);
}

TEST_F(UniqueFdTest, ResetKeepsErrno) {
  // A failed call's errno survives the cleanup of what it had made.
  const int n = new_fd();
  {
    UniqueFd fd(n);
    ::close(n);  // so that the destructor's close fails too (EBADF)
    errno = ENOENT;
  }
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(UniqueFdTest, ResetToTheFdHeldKeepsIt) {
  const int n = new_fd();
  UniqueFd fd(n);
  fd.reset(fd.get());
  EXPECT_TRUE(is_open(n));
  EXPECT_EQ(fd.get(), n);
}

TEST_F(UniqueFdTest, MoveConstructionTransfers) {
  const int n = new_fd();
  UniqueFd a(n);
  UniqueFd b(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from holds none, by contract
  EXPECT_EQ(b.get(), n);
  EXPECT_TRUE(is_open(n));
}

TEST_F(UniqueFdTest, MoveAssignmentClosesTheOldOne) {
  const int a = new_fd();
  const int b = new_fd();
  UniqueFd x(a);
  UniqueFd y(b);
  x = std::move(y);
  EXPECT_TRUE(is_closed(a));
  EXPECT_TRUE(is_open(b));
  EXPECT_EQ(x.get(), b);
  EXPECT_FALSE(y);  // NOLINT(bugprone-use-after-move)
}

TEST_F(UniqueFdTest, SelfMoveKeepsTheFd) {
  const int n = new_fd();
  UniqueFd fd(n);
  UniqueFd& alias = fd;  // hides the self-move from -Wself-move
  fd = std::move(alias);
  EXPECT_EQ(fd.get(), n);
  EXPECT_TRUE(is_open(n));
}

TEST_F(UniqueFdTest, SwapExchanges) {
  const int a = new_fd();
  const int b = new_fd();
  UniqueFd x(a), y(b);
  swap(x, y);
  EXPECT_EQ(x.get(), b);
  EXPECT_EQ(y.get(), a);
}

TEST_F(UniqueFdTest, CloseClosesAndHoldsNone) {
  const int n = new_fd();
  UniqueFd fd(n);
  EXPECT_NO_THROW(fd.close());
  EXPECT_FALSE(fd);
  EXPECT_TRUE(is_closed(n));
  EXPECT_NO_THROW(fd.close());  // holding none: nothing to do
}

TEST_F(UniqueFdTest, CloseReportsTheError) {
  // An fd closed behind the owner's back (a bug UniqueFd exists to prevent): close() says EBADF.
  const int n = new_fd();
  UniqueFd fd(n);
  ::close(n);
  try {
    fd.close();
    ADD_FAILURE() << "close() of a closed fd did not throw";
  } catch (const OSError& e) {
    EXPECT_EQ(e.code().value(), EBADF);
    EXPECT_NE(std::string(e.what()).find("fd " + std::to_string(n)), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fd);
}

TEST_F(UniqueFdTest, PidfdOfAChildBecomesReadableWhenItEnds) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::pause();
    ::_exit(0);
  }
  UniqueFd pidfd = pidfd_open(pid);
  ASSERT_TRUE(pidfd) << "pidfd_open: errno " << errno;
  EXPECT_TRUE(is_open(pidfd.get()));
  EXPECT_TRUE(::fcntl(pidfd.get(), F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(pidfd_send_signal(pidfd.get(), SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // Reaped: signalling through the pidfd says ESRCH, never reaches another process.
  EXPECT_EQ(pidfd_send_signal(pidfd.get(), SIGKILL), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST_F(UniqueFdTest, PidfdOpenOfNoProcessHoldsNone) {
  // The highest pid the kernel can hand out, plus one: no process has it.
  const UniqueFd fd = pidfd_open(4194304 + 1);
  EXPECT_FALSE(fd);
  EXPECT_EQ(errno, ESRCH);
}

}  // namespace
}  // namespace troupe
