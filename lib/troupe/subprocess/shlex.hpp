// troupe/subprocess/shlex.hpp — Python's shlex.quote, shlex.join and shlex.split (POSIX mode),
// for building and reading shell command lines safely. doc/subprocess.md.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace troupe::shlex {

/// Python: `shlex.quote(s)`: `s` as one shell word: unchanged if it is made only of
/// letters, digits and `@%+=:,./-_`, else in single quotes (a `'` inside becomes `'"'"'`); ""
/// becomes `''`.
std::string quote(std::string_view s);

/// Python: `shlex.join(split_command)`: the words quoted and joined with spaces.
std::string join(const std::vector<std::string>& words);

/// Python: `shlex.split(s, comments=False, posix=True)`: the words of a shell-like line, with
/// quotes and backslashes removed as a POSIX shell would. With `comments`, `#` starts a comment
/// that runs to the end of the line. @throws ValueError "No closing quotation" / "No escaped
/// character".
std::vector<std::string> split(std::string_view s, bool comments = false);

}  // namespace troupe::shlex
