// bench/maths.hpp — the class the manager benchmarks host (managers_bench, call_instructions)
// and their manager type: Maths.add, one quick method, so that a call measures the call.
#pragma once

#include <cstdint>

#include "troupe/multiprocessing/managers.hpp"

namespace bench {

class Maths {
public:
  std::int64_t add(std::int64_t a, std::int64_t b) const { return a + b; }
};
TROUPE_EXPOSE(Maths, add);

struct MathsManager : troupe::multiprocessing::managers::Manager<MathsManager> {
  using Manager::Manager;
};

}  // namespace bench
