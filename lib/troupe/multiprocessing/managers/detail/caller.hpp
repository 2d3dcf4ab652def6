// troupe/multiprocessing/managers/detail/caller.hpp — who is calling a managed object.
//
// A manager's client process has one connection per server; each of its threads is a lane on
// that connection (Python opens one connection per thread instead). Locks and RLocks of a
// managed object are owned by a Caller, and what a connection held is released when it closes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/strand.hpp>

namespace troupe::multiprocessing::managers {

/// The connection a call came on, and its lane (the client's thread) on that connection.
struct Caller {
  std::uint64_t connection = 0;
  std::uint64_t lane = 0;
  /// Where the caller's answers are posted (the server gives its connection's strand, so that
  /// an answer goes straight to the thread that writes it); none: the object's executor. Not
  /// part of the identity. (A strand, not an any_io_executor holding one: that would share it
  /// through Asio's own fenced reference count, which ThreadSanitizer cannot follow.)
  std::optional<boost::asio::strand<boost::asio::any_io_executor>> ex{};

  bool operator==(const Caller& o) const noexcept {
    return connection == o.connection && lane == o.lane;
  }
};

}  // namespace troupe::multiprocessing::managers

/// A hash of both fields, for unordered containers keyed by Caller.
template <>
struct std::hash<troupe::multiprocessing::managers::Caller> {
  std::size_t operator()(const troupe::multiprocessing::managers::Caller& c) const noexcept {
    const std::size_t h = std::hash<std::uint64_t>{}(c.connection);
    return h ^ (std::hash<std::uint64_t>{}(c.lane) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
  }
};
