// shlex.quote, join and split as CPython's test_shlex checks them (POSIX mode), and the round
// trip through a real shell: what quote() makes, sh reads back as the same word.
#include "troupe/subprocess/shlex.hpp"

#include <gtest/gtest.h>

#include "troupe/errors.hpp"
#include "troupe/subprocess/run.hpp"

#include "leak_check.hpp"

namespace troupe::shlex {
namespace {

using Words = std::vector<std::string>;
using ShlexTest = troupe::testing::LeakCheck;

TEST_F(ShlexTest, Quote) {
  EXPECT_EQ(quote(""), "''");
  EXPECT_EQ(quote("safe-Word_1@%+=:,./"), "safe-Word_1@%+=:,./");
  EXPECT_EQ(quote("test file name"), "'test file name'");
  EXPECT_EQ(quote("it's"), "'it'\"'\"'s'");
  for (const char* unsafe : {"\"", "`", "$", "\\", "!", "*", "?", "~", "&", ";",  "|", "<",
                             ">",  "(", ")", "[",  "]", "{", "}", "#", " ", "\t", "\n"})
    EXPECT_EQ(quote(std::string("a") + unsafe + "b"), std::string("'a") + unsafe + "b'") << unsafe;
  EXPECT_EQ(join({"a ", " b", "c"}), "'a ' ' b' c");
}

TEST_F(ShlexTest, Split) {
  EXPECT_EQ(split("foo bar"), (Words{"foo", "bar"}));
  EXPECT_EQ(split(" foo bar "), (Words{"foo", "bar"}));
  EXPECT_EQ(split("foo   bar    bla     fasel"), (Words{"foo", "bar", "bla", "fasel"}));
  EXPECT_EQ(split("x y  z              xxxx"), (Words{"x", "y", "z", "xxxx"}));
  EXPECT_EQ(split("\\x bar"), (Words{"x", "bar"}));
  EXPECT_EQ(split("\\ x bar"), (Words{" x", "bar"}));
  EXPECT_EQ(split("\\ bar"), (Words{" bar"}));
  EXPECT_EQ(split("foo \\x bar"), (Words{"foo", "x", "bar"}));
  EXPECT_EQ(split("foo \"bar\" bla"), (Words{"foo", "bar", "bla"}));
  EXPECT_EQ(split("\"foo\" \"bar\" \"bla\""), (Words{"foo", "bar", "bla"}));
  EXPECT_EQ(split("foo\"bar\"bla"), (Words{"foobarbla"}));
  EXPECT_EQ(split("'foo' 'bar' 'bla'"), (Words{"foo", "bar", "bla"}));
  EXPECT_EQ(split("blurb foo\"bar\"bar\"fasel\" baz"), (Words{"blurb", "foobarbarfasel", "baz"}));
  EXPECT_EQ(split("''"), (Words{""}));
  EXPECT_EQ(split("\"\""), (Words{""}));
  EXPECT_EQ(split("foo \"\" bar"), (Words{"foo", "", "bar"}));
  EXPECT_EQ(split("foo\\ bar"), (Words{"foo bar"}));
  EXPECT_EQ(split("\"foo\\ bar\""), (Words{"foo\\ bar"}));
  EXPECT_EQ(split("\"foo\\\\ bar\""), (Words{"foo\\ bar"}));
  EXPECT_EQ(split("\"foo\\\\\" bar"), (Words{"foo\\", "bar"}));
  EXPECT_EQ(split("\"foo\\\"bar\""), (Words{"foo\"bar"}));
  EXPECT_EQ(split("'foo\\ bar'"), (Words{"foo\\ bar"}));
  EXPECT_EQ(split("'foo\\\\ bar'"), (Words{"foo\\\\ bar"}));
  EXPECT_EQ(split("foo#bar#baz"), (Words{"foo#bar#baz"}));
  EXPECT_EQ(split("foo bar # comment", true), (Words{"foo", "bar"}));
  EXPECT_EQ(split("foo bar # comment\nbaz", true), (Words{"foo", "bar", "baz"}));
  EXPECT_EQ(split("ls -l \"my file\" 'it''s'"), (Words{"ls", "-l", "my file", "its"}));
  EXPECT_THROW(split("'unclosed"), ValueError);
  EXPECT_THROW(split("\"unclosed"), ValueError);
  EXPECT_THROW(split("trailing\\"), ValueError);
}

TEST_F(ShlexTest, QuoteRoundTripsThroughTheShell) {
  const Words words{"plain", "two words",   "it's", "$HOME", "`x`",
                    "a\"b",  "back\\slash", "",     "*",     "new\nline"};
  auto r = subprocess::run("printf '%s\\0' " + join(words),
                           {.stdout_ = subprocess::PIPE, .shell = true});
  Words back;
  std::string out = r.stdout_.value_or("");
  for (std::size_t at = 0; at < out.size();) {
    const std::size_t end = out.find('\0', at);
    back.push_back(out.substr(at, end - at));
    at = end + 1;
  }
  EXPECT_EQ(back, words);
  EXPECT_EQ(split(join(words)), words);
}

}  // namespace
}  // namespace troupe::shlex
