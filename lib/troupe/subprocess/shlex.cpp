#include "troupe/subprocess/shlex.hpp"

#include "troupe/errors.hpp"

namespace troupe::shlex {

namespace {
bool safe(char c) {
  // Python's _find_unsafe: [^\w@%+=:,./-] with ASCII \w.
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '@' || c == '%' || c == '+' || c == '=' || c == ':' || c == ',' || c == '.' ||
         c == '/' || c == '-';
}

bool whitespace(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}
}  // namespace

std::string quote(std::string_view s) {
  if (s.empty()) return "''";
  bool all_safe = true;
  for (char c : s) all_safe = all_safe && safe(c);
  if (all_safe) return std::string(s);
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\"'\"'";
    else
      out += c;
  }
  return out + "'";
}

std::string join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) out += ' ';
    out += quote(w);
  }
  return out;
}

// Python's shlex in POSIX mode with whitespace_split: words end at unquoted whitespace; '...'
// keeps everything; "..." keeps everything but lets \ escape " and \ (others keep the \);
// outside quotes \ escapes any character (and a \ before a newline is dropped with it).
std::vector<std::string> split(std::string_view s, bool comments) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    const char c = s[i];
    if (whitespace(c)) {
      if (in_word) {
        words.push_back(std::move(word));
        word.clear();
        in_word = false;
      }
      ++i;
    } else if (comments && c == '#' && !in_word) {
      while (i < n && s[i] != '\n') ++i;
    } else if (c == '\\') {
      if (i + 1 >= n) throw ValueError("No escaped character");
      if (s[i + 1] != '\n') word += s[i + 1];
      in_word = true;
      i += 2;
    } else if (c == '\'') {
      const std::size_t end = s.find('\'', i + 1);
      if (end == std::string_view::npos) throw ValueError("No closing quotation");
      word.append(s.substr(i + 1, end - i - 1));
      in_word = true;
      i = end + 1;
    } else if (c == '"') {
      ++i;
      for (;;) {
        if (i >= n) throw ValueError("No closing quotation");
        const char d = s[i];
        if (d == '"') {
          ++i;
          break;
        }
        if (d == '\\') {
          if (i + 1 >= n) throw ValueError("No closing quotation");
          const char e = s[i + 1];
          if (e != '"' && e != '\\') word += '\\';
          word += e;
          i += 2;
          continue;
        }
        word += d;
        ++i;
      }
      in_word = true;
    } else {
      word += c;
      in_word = true;
      ++i;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

}  // namespace troupe::shlex
