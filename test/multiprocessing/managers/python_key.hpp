// test/multiprocessing/managers/python_key.hpp — the key the Python children of the interop tests
// use: random, handed over in the environment (TROUPE_TEST_AUTHKEY, hex), never on a command line.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>

#include "troupe/multiprocessing/authkey.hpp"

namespace managers_test {

/// Sets TROUPE_TEST_AUTHKEY to a new random key for the children; unsets it when destroyed.
class PythonKey {
public:
  PythonKey() {
    const auto bytes = troupe::multiprocessing::detail::random_bytes(32);
    std::string hex;
    for (auto b : bytes) {
      static const char* digits = "0123456789abcdef";
      hex += digits[static_cast<unsigned>(b) >> 4];
      hex += digits[static_cast<unsigned>(b) & 15];
    }
    key_ = troupe::multiprocessing::AuthenticationString::from_hex(hex);
    ::setenv("TROUPE_TEST_AUTHKEY", hex.c_str(), 1);
    std::fill(hex.begin(), hex.end(), '0');
  }
  ~PythonKey() { ::unsetenv("TROUPE_TEST_AUTHKEY"); }
  PythonKey(const PythonKey&) = delete;
  PythonKey& operator=(const PythonKey&) = delete;

  const troupe::multiprocessing::AuthenticationString& key() const noexcept { return key_; }

private:
  troupe::multiprocessing::AuthenticationString key_;
};

}  // namespace managers_test
