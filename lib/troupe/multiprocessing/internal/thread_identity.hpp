#pragma once

// The calling thread's cached process and thread ids, read inline by the library's own
// process-shared locks (not installed: the public way is detail::self_identity()).

#include "troupe/multiprocessing/detail/shared_region.hpp"

namespace troupe::multiprocessing::internal {

/// Defined in shared_region.cpp. initial-exec: a fixed offset from the thread pointer.
[[gnu::tls_model("initial-exec")]] extern thread_local detail::ThreadIdentity t_identity;

/// self_identity() without a call once this thread's ids are known (a Lock's acquire and
/// release each ask).
inline const detail::ThreadIdentity& thread_identity() noexcept {
  if (t_identity.tid != 0) [[likely]]
    return t_identity;
  return detail::self_identity();
}

}  // namespace troupe::multiprocessing::internal
