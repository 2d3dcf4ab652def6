// Command-line parsing shared by the connection examples: --name VALUE pairs and flags.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "troupe/multiprocessing/authkey.hpp"

namespace example {

class Args {
public:
  // `valued` names the options that take a value; `flags` those that do not.
  Args(int argc, char** argv, std::set<std::string> valued, std::set<std::string> flags,
       const char* usage)
      : usage_(usage) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (flags.count(a)) {
        flags_.insert(a);
      } else if (valued.count(a) && i + 1 < argc) {
        values_[a] = argv[++i];
      } else {
        fail("unknown or incomplete option " + a);
      }
    }
  }
  std::string get(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) fail("missing " + name);
    return it->second;
  }
  std::string get(const std::string& name, std::string fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  bool flag(const std::string& name) const { return flags_.count(name) != 0; }
  [[noreturn]] void fail(const std::string& why) const {
    std::fprintf(stderr, "%s\nusage: %s\n", why.c_str(), usage_);
    std::exit(2);
  }

private:
  const char* usage_;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

/// The key: TROUPE_AUTHKEY=HEX in the environment, which keeps it off the command line (where
/// every user's `ps` shows it), or --authkey HEX for a quick try.
inline troupe::multiprocessing::AuthenticationString authkey(const Args& args) {
  std::string hex = args.get("--authkey", "");
  if (hex.empty())
    if (const char* env = std::getenv("TROUPE_AUTHKEY")) hex = env;
  if (hex.empty()) args.fail("missing TROUPE_AUTHKEY in the environment (or --authkey)");
  auto key = troupe::multiprocessing::AuthenticationString::from_hex(hex);
  std::fill(hex.begin(), hex.end(), '0');
  return key;
}

}  // namespace example
