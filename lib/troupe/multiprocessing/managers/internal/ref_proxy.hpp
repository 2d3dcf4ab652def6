// troupe/multiprocessing/managers/internal/ref_proxy.hpp — a proxy made from a ref held as data
// (detail::Ref): what a server does with another manager's object (a container's element, a
// reference kept for a Python client) and a link with a park to release. .cpp-only.
#pragma once

#include "troupe/multiprocessing/managers/detail/item.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"

namespace troupe::multiprocessing::managers::internal {

/// BaseProxy::_from_ref for `r`: claims its ticket on this process's link to its address (a
/// ticket 0 takes a new reference), connecting on first use with the key that address's link
/// uses. Never call it holding a lock a link's thread may need. @throws what connecting throws.
BaseProxy proxy_of(const detail::Ref& r);

}  // namespace troupe::multiprocessing::managers::internal
