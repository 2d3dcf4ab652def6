// troupe/multiprocessing/managers/detail/not_exposed.hpp — the error of a method an object does
// not expose. Not API.
#pragma once

#include "troupe/errors.hpp"

namespace troupe::multiprocessing::managers::detail {

/// The AttributeError of a method name the object does not have or expose. CPython's server
/// raises it before it calls anything (outside the method), so its client gets RemoteError;
/// the server turns this one into RemoteError too, where an AttributeError the method itself
/// raises (a Namespace's missing attribute) stays an AttributeError.
class NotExposed : public AttributeError {
public:
  using AttributeError::AttributeError;
};

}  // namespace troupe::multiprocessing::managers::detail
