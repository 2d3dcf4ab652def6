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
#include <type_traits>
#include <utility>
#include <variant>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/defer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

namespace troupe::multiprocessing::managers {

/// A server connection's strand. Over an io_context's own executor (a server's connection
/// thread) it is a strand of that executor, which an any_io_executor holds in place: a strand of
/// an any_io_executor does not fit there, and every asynchronous operation on the connection
/// would allocate copies of it (work counting), several a call. Over any other executor (a
/// server on the user's executor) it is a strand of that. Empty: none.
class ConnStrand {
public:
  ConnStrand() = default;
  explicit ConnStrand(const boost::asio::any_io_executor& ex) {
    if (const auto* io = ex.target<boost::asio::io_context::executor_type>())
      s_.emplace<Own>(boost::asio::make_strand(*io));
    else
      s_.emplace<Other>(boost::asio::make_strand(ex));
  }
  explicit operator bool() const noexcept { return s_.index() != 0; }
  /// As an executor (for an I/O object's).
  boost::asio::any_io_executor executor() const {
    return std::visit(
        [](const auto& s) -> boost::asio::any_io_executor {
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, std::monostate>)
            return {};
          else
            return s;
        },
        s_);
  }
  template <class F>
  void post(F&& f) const {
    visit([&](const auto& s) { boost::asio::post(s, std::forward<F>(f)); });
  }
  template <class F>
  void dispatch(F&& f) const {
    visit([&](const auto& s) { boost::asio::dispatch(s, std::forward<F>(f)); });
  }
  template <class F>
  void defer(F&& f) const {
    visit([&](const auto& s) { boost::asio::defer(s, std::forward<F>(f)); });
  }

  /// Whether this thread is running a handler of the strand. Not empty.
  bool running_in_this_thread() const noexcept {
    bool in = false;
    visit([&](const auto& s) { in = s.running_in_this_thread(); });
    return in;
  }
  /// Calls f with the strand itself (of either kind). Not empty.
  template <class F>
  void with(F&& f) const {
    visit(std::forward<F>(f));
  }

private:
  using Own = boost::asio::strand<boost::asio::io_context::executor_type>;
  using Other = boost::asio::strand<boost::asio::any_io_executor>;
  template <class V>
  void visit(V&& v) const {
    if (const auto* o = std::get_if<Own>(&s_))
      v(*o);
    else
      v(std::get<Other>(s_));
  }
  std::variant<std::monostate, Own, Other> s_;
};

/// The connection a call came on, and its lane (the client's thread) on that connection.
struct Caller {
  std::uint64_t connection = 0;
  std::uint64_t lane = 0;
  /// Where the caller's answers are posted (the server gives its connection's strand, so that
  /// an answer goes straight to the thread that writes it); none: the object's executor. Not
  /// part of the identity. (A strand, not an any_io_executor holding one: that would share it
  /// through Asio's own fenced reference count, which ThreadSanitizer cannot follow.)
  ConnStrand ex{};

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
