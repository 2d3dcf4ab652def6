// bench/maths.hpp — the class the manager benchmarks host (managers_bench, call_instructions)
// and their manager type: Maths.add, one quick method, so that a call measures the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "troupe/multiprocessing/managers.hpp"

namespace bench {

class Maths {
public:
  std::int64_t add(std::int64_t a, std::int64_t b) const { return a + b; }
  // A large argument's cost (its reply is small).
  std::int64_t length(const std::vector<std::byte>& bytes) const {
    return static_cast<std::int64_t>(bytes.size());
  }
};
TROUPE_EXPOSE(Maths, add, length);

struct MathsManager : troupe::multiprocessing::managers::Manager<MathsManager> {
  using Manager::Manager;
};

}  // namespace bench
