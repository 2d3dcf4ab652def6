// test/support/outcomes.hpp — what a `next()` loop that catches each error sees of the results
// of map, imap or imap_unordered, and inputs that fail part-way (Python's
// exception_throwing_generator in Lib/test/_test_multiprocessing.py).
#pragma once

#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/errors.hpp"

#include "views.hpp"

namespace troupe::testing {

/// Each result as its decimal text, or the exception a next() raised at that place ("KeyError",
/// "IndexError", else "error: " and its what()), until the end (next() returns nullopt). A
/// TimeoutError of next() itself ends the loop with "timeout"; at most `limit` reads.
template <class Results>
std::vector<std::string> outcomes(Results& results, std::size_t limit = 10'000) {
  std::vector<std::string> seen;
  while (seen.size() < limit) {
    try {
      auto v = results.next(std::chrono::seconds(60));
      if (!v) return seen;
      seen.push_back(std::to_string(*v));
    } catch (const troupe::multiprocessing::TimeoutError&) {
      seen.push_back("timeout");
      return seen;
    } catch (const troupe::TimeoutError&) {
      seen.push_back("timeout");
      return seen;
    } catch (const troupe::KeyError&) {
      seen.push_back("KeyError");
    } catch (const troupe::IndexError&) {
      seen.push_back("IndexError");
    } catch (const std::exception& e) {
      seen.push_back(std::string("error: ") + e.what());
    }
  }
  ADD_FAILURE() << "the results did not end within " << limit << " reads";
  return seen;
}

/// The texts of `f(i)` for i in [from, to).
template <class F>
std::vector<std::string> texts(int from, int to, F f) {
  std::vector<std::string> out;
  for (int i = from; i < to; ++i) out.push_back(std::to_string(f(i)));
  return out;
}

/// 0, 1, … n-1, whose element `k` cannot be read: dereferencing it throws IndexError.
inline auto input_raising_at(int n, int k) {
  return views::transform_iota(0, n, [k](int x) {
    if (x == k) throw troupe::IndexError("input element " + std::to_string(k));
    return x;
  });
}

}  // namespace troupe::testing
