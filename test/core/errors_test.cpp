#include "troupe/errors.hpp"

#include <errno.h>

#include <type_traits>

#include "leak_check.hpp"

namespace troupe {
namespace {

// The hierarchy is Python's (checked against CPython 3.13's builtins and module classes).
static_assert(std::is_base_of_v<std::runtime_error, RuntimeError>);
static_assert(std::is_base_of_v<RuntimeError, ThreadError>);
static_assert(std::is_base_of_v<RuntimeError, NotImplementedError>);
static_assert(std::is_base_of_v<std::invalid_argument, ValueError>);
static_assert(std::is_base_of_v<LookupError, KeyError>);
static_assert(std::is_base_of_v<LookupError, IndexError>);
static_assert(std::is_base_of_v<std::system_error, OSError>);
static_assert(std::is_base_of_v<Exception, AttributeError>);
static_assert(std::is_base_of_v<Exception, ArithmeticError>);
static_assert(std::is_base_of_v<ArithmeticError, OverflowError>);
static_assert(std::is_base_of_v<Exception, StopIteration>);
static_assert(std::is_base_of_v<OSError, TimeoutError>);
static_assert(std::is_base_of_v<OSError, FileNotFoundError>);
static_assert(std::is_base_of_v<ConnectionError, BrokenPipeError>);
static_assert(std::is_base_of_v<OSError, ConnectionError>);
static_assert(std::is_base_of_v<RuntimeError, threading::BrokenBarrierError>);
static_assert(std::is_base_of_v<Exception, queue::Empty>);
static_assert(std::is_base_of_v<Exception, queue::Full>);
static_assert(std::is_base_of_v<Exception, queue::ShutDown>);
static_assert(std::is_base_of_v<RuntimeError, concurrent::futures::BrokenExecutor>);
static_assert(
    std::is_base_of_v<concurrent::futures::BrokenExecutor, concurrent::futures::BrokenProcessPool>);
static_assert(std::is_same_v<concurrent::futures::TimeoutError, TimeoutError>);
static_assert(std::is_base_of_v<multiprocessing::ProcessError, multiprocessing::TimeoutError>);
static_assert(!std::is_base_of_v<OSError, multiprocessing::TimeoutError>);
static_assert(
    std::is_base_of_v<multiprocessing::ProcessError, multiprocessing::AuthenticationError>);
static_assert(std::is_base_of_v<multiprocessing::ProcessError, multiprocessing::BufferTooShort>);
static_assert(std::is_base_of_v<subprocess::SubprocessError, subprocess::CalledProcessError>);
static_assert(std::is_base_of_v<subprocess::SubprocessError, subprocess::TimeoutExpired>);

using ErrorsTest = troupe::testing::LeakCheck;

TEST_F(ErrorsTest, EveryCodeRoundTripsThroughItsClass) {
  ASSERT_GT(all_errc().size(), 40u);
  for (errc e : all_errc()) {
    SCOPED_TRACE(std::string(python_name(e)));
    try {
      throw_error(e, "what failed");
    } catch (...) {
      EXPECT_EQ(errc_of(std::current_exception()),
                // Fields of these two do not cross as a code: they arrive as their base.
                e == errc::called_process_error || e == errc::timeout_expired
                    ? errc::subprocess_error
                    : e);
    }
  }
}

TEST_F(ErrorsTest, MessageIsKeptAndCategoryNamesThePythonClass) {
  try {
    throw_error(errc::queue_empty, "get() on an empty queue");
  } catch (const queue::Empty& e) {
    EXPECT_STREQ(e.what(), "get() on an empty queue");
  }
  EXPECT_EQ(make_error_code(errc::broken_barrier_error).message(), "threading.BrokenBarrierError");
  EXPECT_STREQ(error_category().name(), "troupe");
  EXPECT_EQ(std::error_code(errc::timeout_error), std::errc::timed_out);
}

TEST_F(ErrorsTest, ErrnoPicksPythonsOSErrorSubclass) {
  // CPython: OSError(errno, msg) constructs the subclass for the errno (PEP 3151).
  EXPECT_THROW(throw_os_error(ENOENT, "open /nope"), FileNotFoundError);
  EXPECT_THROW(throw_os_error(EACCES, "open"), PermissionError);
  EXPECT_THROW(throw_os_error(EPERM, "kill"), PermissionError);
  EXPECT_THROW(throw_os_error(ESRCH, "kill 99999"), ProcessLookupError);
  EXPECT_THROW(throw_os_error(EPIPE, "write"), BrokenPipeError);
  EXPECT_THROW(throw_os_error(ECONNREFUSED, "connect"), ConnectionRefusedError);
  EXPECT_THROW(throw_os_error(ETIMEDOUT, "connect"), TimeoutError);
  EXPECT_THROW(throw_os_error(EIO, "read"), OSError);
  try {
    throw_os_error(ENOENT, "open /nope");
  } catch (const OSError& e) {
    EXPECT_EQ(e.errno_value(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("open /nope"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[Errno 2]"), std::string::npos);
  }
  // A system error code turns into the same class.
  EXPECT_THROW(throw_error(std::error_code(ENOENT, std::generic_category()), "x"),
               FileNotFoundError);
}

TEST_F(ErrorsTest, SuccessIsNotAnError) {
  EXPECT_THROW(throw_error(std::error_code(), "nothing"), ValueError);
  EXPECT_EQ(errc_of(nullptr), errc::ok);
}

TEST_F(ErrorsTest, UnknownExceptionsAreException) {
  EXPECT_EQ(errc_of(std::make_exception_ptr(42)), errc::exception);
  EXPECT_EQ(errc_of(std::make_exception_ptr(std::bad_alloc())), errc::exception);
}

// CPython test_subprocess: test_CalledProcessError_str_signal / _str_unknown_signal /
// _str_non_zero.
TEST_F(ErrorsTest, CalledProcessErrorMessagesMatchPython) {
  subprocess::CalledProcessError a(2, {"ls", "-l"});
  EXPECT_STREQ(a.what(), "Command '['ls', '-l']' returned non-zero exit status 2.");
  subprocess::CalledProcessError b(-9, {"sleep", "10"}, "out", "err");
  EXPECT_STREQ(b.what(), "Command '['sleep', '10']' died with <Signals.SIGKILL: 9>.");
  EXPECT_EQ(b.output, "out");
  EXPECT_EQ(b.stderr_, "err");
  subprocess::CalledProcessError c(-9999, {"x"});
  EXPECT_STREQ(c.what(), "Command '['x']' died with unknown signal 9999.");
  subprocess::TimeoutExpired t({"sleep", "5"}, std::chrono::duration<double>(0.5));
  EXPECT_STREQ(t.what(), "Command '['sleep', '5']' timed out after 0.5 seconds");
}

TEST_F(ErrorsTest, BufferTooShortCarriesTheMessage) {
  std::vector<std::byte> msg(3, std::byte{7});
  multiprocessing::BufferTooShort e("buffer of 2 bytes for a 3-byte message", msg);
  EXPECT_EQ(e.message(), msg);
}

}  // namespace
}  // namespace troupe
