// troupe/spin.hpp — the spin-before-sleep setting every troupe waiter shares.
//
// Each blocking wait spins for a short, adaptive time before it sleeps (DESIGN.md, "Waiting").
// `set_spin_limit` caps that time for the whole process (0 turns spinning off: every wait
// sleeps at once, using no CPU while it waits). The environment variable TROUPE_SPIN_NS sets the
// starting value. Spinning is always off when the process may run on one CPU only.
#pragma once

#include <chrono>

#include "troupe/detail/futex.hpp"

namespace troupe {

/// The most any wait spins before it sleeps.
inline std::chrono::nanoseconds spin_limit() noexcept {
  return std::chrono::nanoseconds(detail::spin_limit_ns());
}

/// Sets it for the whole process; also re-reads the CPU affinity (one CPU: no spinning).
inline void set_spin_limit(std::chrono::nanoseconds limit) noexcept {
  detail::set_spin_limit_ns(limit.count());
}

}  // namespace troupe
