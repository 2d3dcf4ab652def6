// troupe/internal/cpus.hpp — how many CPUs this process may run on (Python 3.13's
// os.process_cpu_count()), for the pools' default sizes. Not installed.
#pragma once

namespace troupe::internal {

/// The CPUs in this process's affinity mask; else the CPUs online; at least 1.
int process_cpu_count() noexcept;

}  // namespace troupe::internal
