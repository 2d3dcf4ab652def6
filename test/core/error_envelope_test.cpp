#include "troupe/error_envelope.hpp"

#include <errno.h>
#include <unistd.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gmock/gmock.h>

#include "troupe/codec.hpp"
#include "troupe/errors.hpp"

#include "leak_check.hpp"

namespace troupe {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

using ErrorEnvelopeTest = troupe::testing::LeakCheck;

std::string this_host() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

ErrorEnvelope captured(const std::exception_ptr& e, ErrorContext context = {}) {
  return ErrorEnvelope::capture(e, std::move(context));
}

// The envelope of `x` after a trip through bytes.
template <class E>
ErrorEnvelope through_bytes(const E& x, ErrorContext context = {}) {
  return ErrorEnvelope::from_bytes(captured(std::make_exception_ptr(x), context).to_bytes());
}

// A hand-made serialised Error, for envelopes troupe itself would never write.
template <class Fill>
std::vector<std::byte> raw_error(Fill&& fill) {
  capnp::MallocMessageBuilder mb;
  auto e = mb.initRoot<proto::Error>();
  e.setCode(static_cast<std::uint16_t>(errc::value_error));
  e.setMessage("m");
  fill(e);
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()),
          reinterpret_cast<const std::byte*>(bytes.end())};
}

TEST_F(ErrorEnvelopeTest, EveryClassRoundTripsWithItsTypeMessageOriginAndContext) {
  for (errc code : all_errc()) {
    SCOPED_TRACE(std::string(python_name(code)));
    std::exception_ptr raised;
    try {
      throw_error(code, "what failed on 'x'");
    } catch (...) {
      raised = std::current_exception();
    }
    const auto env = ErrorEnvelope::from_bytes(
        captured(raised, {.call = "f", .object = "obj", .arguments = "(1)"}).to_bytes());
    // CalledProcessError and TimeoutExpired are thrown as their base by a code alone.
    const errc want = code == errc::called_process_error || code == errc::timeout_expired
                          ? errc::subprocess_error
                          : code;
    EXPECT_EQ(env.code, want);
    EXPECT_EQ(env.type_name, python_name(want));
    EXPECT_EQ(env.message, "what failed on 'x'");
    EXPECT_EQ(env.origin.pid, ::getpid());
    EXPECT_EQ(env.origin.host, this_host());
    EXPECT_EQ(env.origin.process_name, "MainProcess");  // from layer 3's current_process()
    EXPECT_EQ(env.context.call, "f");
    EXPECT_EQ(env.context.object, "obj");
    EXPECT_EQ(env.context.arguments, "(1)");
    try {
      throw_error(env);
    } catch (const std::exception& e) {
      EXPECT_EQ(errc_of(std::current_exception()), want);
      const ErrorEnvelope* remote = remote_envelope(e);
      ASSERT_NE(remote, nullptr);
      EXPECT_EQ(remote->message, "what failed on 'x'");
      EXPECT_EQ(remote->origin.pid, ::getpid());
      EXPECT_THAT(e.what(), StartsWith("what failed on 'x'\n---\nRemote "));
      EXPECT_THAT(e.what(), HasSubstr(" in f(1) on obj, in process MainProcess (pid " +
                                      std::to_string(::getpid()) + ") on host " + this_host()));
      EXPECT_THAT(e.what(), EndsWith("\n---"));
    }
  }
}

TEST_F(ErrorEnvelopeTest, OSErrorsKeepTheirErrno) {
  // EPERM is a PermissionError as EACCES is; the errno crosses as it was.
  auto env = through_bytes(PermissionError(EPERM, "kill 1"));
  EXPECT_EQ(env.code, errc::permission_error);
  EXPECT_EQ(env.os_errno, EPERM);
  try {
    throw_error(env);
  } catch (const PermissionError& e) {
    EXPECT_EQ(e.errno_value(), EPERM);
    EXPECT_THAT(e.what(), StartsWith("kill 1\n---\nRemote PermissionError"));
    ASSERT_NE(e.remote(), nullptr);
    EXPECT_EQ(e.remote()->os_errno, EPERM);
  }
  // An errno with no subclass of its own stays an OSError with that errno.
  try {
    throw_error(through_bytes(OSError(EXDEV, "rename a b")));
  } catch (const FileNotFoundError&) {
    ADD_FAILURE() << "not a FileNotFoundError";
  } catch (const OSError& e) {
    EXPECT_EQ(e.errno_value(), EXDEV);
    EXPECT_EQ(errc_of(std::current_exception()), errc::os_error);
  }
  try {
    throw_error(through_bytes(TimeoutError("connect 10.0.0.1")));
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.errno_value(), ETIMEDOUT);
  }
}

struct ParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

TEST_F(ErrorEnvelopeTest, AClassTroupeDoesNotKnowArrivesAsExceptionNamingIt) {
  const auto env = through_bytes(ParseError("line 3"));
  EXPECT_EQ(env.code, errc::exception);
  EXPECT_THAT(env.type_name, EndsWith("ParseError"));
  EXPECT_EQ(env.message, "line 3");
  try {
    throw_error(env);
  } catch (const Exception& e) {
    EXPECT_THAT(e.what(), HasSubstr("ParseError: line 3\n---\nRemote "));
    EXPECT_THAT(e.remote()->type_name, EndsWith("ParseError"));
  }
  // troupe::Exception itself is named as Python's Exception, with no prefix.
  try {
    throw_error(through_bytes(Exception("plain")));
  } catch (const Exception& e) {
    EXPECT_THAT(e.what(), StartsWith("plain\n---\nRemote Exception"));
  }
  // Thrown with a nested cause, it is still named as itself.
  std::exception_ptr nested;
  try {
    try {
      throw KeyError("'x'");
    } catch (...) {
      std::throw_with_nested(ParseError("line 4"));
    }
  } catch (...) {
    nested = std::current_exception();
  }
  const auto with_cause = captured(nested);
  EXPECT_THAT(with_cause.type_name, EndsWith("ParseError"));
  EXPECT_THAT(with_cause.type_name, Not(HasSubstr("Nested")));
  // Raised again after it came across, it keeps its name.
  std::exception_ptr again;
  try {
    throw_error(env);
  } catch (...) {
    again = std::current_exception();
  }
  EXPECT_THAT(captured(again).type_name, EndsWith("ParseError"));
  // Something that is not a std::exception at all.
  const auto odd = captured(std::make_exception_ptr(42));
  EXPECT_EQ(odd.code, errc::exception);
  EXPECT_EQ(odd.type_name, "int");
}

TEST_F(ErrorEnvelopeTest, NestedCausesAreTheTraceback) {
  std::exception_ptr raised;
  try {
    try {
      throw FileNotFoundError(ENOENT, "open config.ini");
    } catch (...) {
      std::throw_with_nested(ValueError("cannot load the configuration"));
    }
  } catch (...) {
    raised = std::current_exception();
  }
  const auto env = ErrorEnvelope::from_bytes(captured(raised).to_bytes());
  EXPECT_EQ(env.code, errc::value_error);
  EXPECT_THAT(env.traceback, HasSubstr("caused by troupe::FileNotFoundError: open config.ini"));
  try {
    throw_error(env);
  } catch (const ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("\ncaused by troupe::FileNotFoundError: open config.ini\n---"));
  }
}

TEST_F(ErrorEnvelopeTest, AnErrorRaisedAgainKeepsItsMessageAndWhereItCameFrom) {
  ErrorEnvelope first = through_bytes(KeyError("'k'"), {.call = "get"});
  first.origin = {.host = "elsewhere", .pid = 7, .process_name = "Worker-7"};
  std::exception_ptr again;
  try {
    throw_error(first);
  } catch (...) {
    again = std::current_exception();
  }
  const auto env = ErrorEnvelope::from_bytes(captured(again, {.call = "relay"}).to_bytes());
  EXPECT_EQ(env.code, errc::key_error);
  EXPECT_EQ(env.message, "'k'");  // not the first hop's what() with its remote text
  EXPECT_THAT(env.traceback,
              HasSubstr("which came from:\nRemote KeyError in get, in process Worker-7 (pid 7) "
                        "on host elsewhere"));
}

TEST_F(ErrorEnvelopeTest, LocalExceptionsHaveNoRemote) {
  EXPECT_EQ(ValueError("x").remote(), nullptr);
  EXPECT_EQ(remote_envelope(std::runtime_error("x")), nullptr);
  EXPECT_EQ(remote_envelope(ValueError("x")), nullptr);
  const ErrorEnvelope env = through_bytes(ValueError("x"));
  const auto copy = [&] {
    try {
      throw_error(env);
    } catch (const ValueError& e) {
      return e;  // a copy keeps its remote
    }
    return ValueError("none");
  }();
  ASSERT_NE(copy.remote(), nullptr);
  EXPECT_EQ(copy.remote()->message, "x");
}

TEST_F(ErrorEnvelopeTest, EncodingCutsLongTextsAndSaysSo) {
  ErrorEnvelope big = captured(std::make_exception_ptr(ValueError(std::string(100000, 'm'))),
                               {.call = std::string(10000, 'c')});
  big.traceback = std::string(70000, 't');
  const auto env = ErrorEnvelope::from_bytes(big.to_bytes());
  EXPECT_LE(env.message.size(), ErrorEnvelope::kMaxMessage);
  EXPECT_THAT(env.message, EndsWith("... (cut, 100000 bytes)"));
  EXPECT_LE(env.traceback.size(), ErrorEnvelope::kMaxTraceback);
  EXPECT_THAT(env.traceback, EndsWith("... (cut, 70000 bytes)"));
  EXPECT_LE(env.context.call.size(), ErrorEnvelope::kMaxText);
  EXPECT_THAT(env.context.call, EndsWith("... (cut, 10000 bytes)"));
  // Never inside a UTF-8 sequence: "é" is two bytes.
  std::string accents;
  for (int i = 0; i < 40000; ++i) accents += "\xc3\xa9";
  const auto cut = through_bytes(ValueError(accents));
  const std::string kept = cut.message.substr(0, cut.message.find("..."));
  EXPECT_EQ(kept.size() % 2, 0u);
}

TEST_F(ErrorEnvelopeTest, BadEnvelopesAreValueErrorsSayingWhy) {
  auto refused = [](const std::vector<std::byte>& bytes) -> std::string {
    try {
      (void)ErrorEnvelope::from_bytes(bytes);
    } catch (const ValueError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_THAT(refused(raw_error([](auto e) { e.setCode(999); })),
              HasSubstr("names troupe::errc 999, which is no exception class"));
  EXPECT_THAT(refused(raw_error([](auto e) { e.setCode(0); })), HasSubstr("troupe::errc 0"));
  EXPECT_THAT(refused(raw_error([](auto e) { e.setMessage(std::string(70000, 'x')); })),
              HasSubstr("message is 70000 bytes, over its 65536-byte limit"));
  EXPECT_THAT(refused(raw_error([](auto e) { e.setTraceback(std::string(70000, 'x')); })),
              HasSubstr("traceback is 70000 bytes"));
  EXPECT_THAT(refused(raw_error([](auto e) { e.initOrigin().setHost(std::string(5000, 'h')); })),
              HasSubstr("origin.host is 5000 bytes, over its 4096-byte limit"));
  EXPECT_THAT(refused(std::vector<std::byte>(300 * 1024)), HasSubstr("over its 262144-byte limit"));
  EXPECT_THAT(refused(std::vector<std::byte>(12)), HasSubstr("not a whole number of 8-byte words"));
  EXPECT_THAT(refused({}), HasSubstr("0 bytes"));
  auto good = through_bytes(ValueError("x")).to_bytes();
  good.resize(good.size() - 8);
  EXPECT_THAT(refused(good), HasSubstr("malformed error envelope"));
  std::vector<std::byte> garbage(64, std::byte{0xff});
  EXPECT_THAT(refused(garbage), HasSubstr("malformed error envelope"));
  // An envelope decoded by hand with an unknown code is refused by throw_error too.
  ErrorEnvelope odd;
  odd.code = static_cast<errc>(999);
  EXPECT_THROW(throw_error(odd), ValueError);
}

TEST_F(ErrorEnvelopeTest, ArgumentsAreSummarisedLikePython) {
  EXPECT_EQ(summarize_arguments(to_bytes(std::tuple<int, std::string>(3, "abc"))), "(3, 'abc')");
  EXPECT_EQ(summarize_arguments(to_bytes(std::tuple<int>(3))), "(3)");
  EXPECT_EQ(summarize_arguments(to_bytes(std::tuple<bool, double>(true, 0.5))), "(True, 0.5)");
  EXPECT_EQ(summarize_arguments(to_bytes(std::vector<int>{1, 2, 3})), "[1, 2, 3]");
  const std::string many = summarize_arguments(
      to_bytes(std::tuple<std::vector<int>>(std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})));
  EXPECT_EQ(many, "([1, 2, 3, 4, 5, 6, 7, 8, ... (10 items)])");
  const std::string long_text =
      summarize_arguments(to_bytes(std::tuple<std::string>(std::string(100, 'a'))));
  EXPECT_EQ(long_text, "('" + std::string(40, 'a') + "...')");
  EXPECT_LE(summarize_arguments(to_bytes(std::vector<std::string>(100, "abcdef")), 50).size(), 50u);
  EXPECT_EQ(summarize_arguments(std::vector<std::byte>(13)), "<13 bytes>");
  EXPECT_EQ(summarize_arguments(std::vector<std::byte>(64, std::byte{0xff})), "<64 bytes>");
}

}  // namespace
}  // namespace troupe
