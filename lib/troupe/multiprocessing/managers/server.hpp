// troupe/multiprocessing/managers/server.hpp — the object host: Python's
// `multiprocessing.managers.Server`, on Boost.Asio.
//
// A Server listens on an Address (Unix path, abstract name, TCP; TLS as an option; the HMAC
// handshake always on network addresses), and serves the typeids of one Registry: clients create
// objects, call their methods, and hold references to them (doc/protocol.md "Managers"). Calls of
// one client lane (one client thread) run in order; calls of different lanes and clients run in
// parallel on the server's threads, and a call that waits (a managed queue's get) holds no thread.
// An object lives while a reference to it is held: by a client connection, by a proxy in transit
// (a parked reference, for at most park_ttl), or by another hosted object. A connection that
// closes — its process exited, was killed, or dropped it — releases every reference it held.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/any_io_executor.hpp>

#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/registry.hpp"

namespace troupe::multiprocessing::managers {

/// The limits and threads of a Server (doc/multiprocessing/managers.md gives the defaults' why).
/// Over a per-connection limit, that call fails with a ValueError naming the limit; a message
/// over max_message_size, or bytes that are not a request, drop the connection (and are logged
/// with multiprocessing's logger); the server goes on serving the others.
struct ServerOptions {
  /// The largest request a client may send, in bytes.
  std::uint64_t max_message_size = std::uint64_t{64} << 20;
  /// Calls (and creates) of one connection that may be queued or running at once.
  std::uint32_t max_calls_in_flight = 1024;
  /// Distinct objects one connection may hold references to.
  std::uint32_t max_objects_held = 100000;
  /// How long a reference parked for a proxy in transit waits for its receiver's claim before it
  /// is released; zero: forever.
  std::chrono::milliseconds park_ttl = std::chrono::seconds(300);
  /// The server's threads when it runs on its own (0: the CPU count, at most 4), twice over: as
  /// many read and answer the connections (and run registered classes' calls, which may
  /// block), as many run serialized typeids' calls (which may block too).
  unsigned threads = 0;
  /// How far the threads grow, each kind. While registered classes' calls hold every thread of
  /// a connection thread's io_context for 2 to 4 ms, a helper thread serves its other
  /// connections (and leaves once a thread is free): at most this many helpers. While
  /// serialized typeids' calls wait and none has started for 50 ms, one more pool thread
  /// starts, the next after twice as long: at most this many pool threads. Python's
  /// server has a thread per connection, so a call that waits for another client's call never
  /// starves it. Built-in objects' waits (a managed Queue's get, a Lock's acquire) hold no
  /// thread and never grow them.
  unsigned max_threads = 256;
  /// Whether a client's shutdown() stops the server (Python: always).
  bool allow_shutdown = true;
  /// Whether a managed container may hold a proxy to another manager's object (Python: always).
  /// The server then connects to that manager, at the address the proxy names, as its client
  /// (the first store of each address waits for the connection, up to 10 s). Off: storing one
  /// fails with TypeError naming it, for a server that must not open connections its clients
  /// choose.
  bool foreign_proxies = true;
  /// Python's SharedMemoryServer: clients may ask the server to track shared memory segments
  /// (track_segment, release_segment, list_segments), which it unlinks when it stops. Set by
  /// SharedMemoryManager. At most max_objects_held segments are tracked.
  bool track_segments = false;
  /// The listener: authkey (required on network addresses), TLS, handshake deadline, backlog
  /// (default here 128, Python's 16).
  ListenerOptions listener = default_listener();

  static ListenerOptions default_listener() {
    ListenerOptions o;
    o.backlog = 128;
    return o;
  }
};

/// Python: `multiprocessing.managers.Server(registry, address, authkey, serializer)`.
/// Thread-safe.
class Server {
public:
  /// Listens on `address` (none: a new abstract Unix name, "unix-abstract:troupe-manager-…")
  /// and serves `registry`'s typeids on threads of its own, started by start() or
  /// serve_forever(). @throws OSError if it cannot listen; ValueError if a network address has
  /// no authkey.
  Server(const Registry& registry, std::optional<Address> address, ServerOptions options = {});
  /// The same on a user's executor (an io_context the user runs): no threads of its own; the
  /// executor must be running while the server serves, and until stop() returns.
  Server(const Registry& registry, std::optional<Address> address, ServerOptions options,
         boost::asio::any_io_executor executor);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  /// stop().
  ~Server();

  /// Python: `address`: where it listens (a port 0 resolved to the port it got).
  const Address& address() const noexcept;

  /// Starts accepting clients (and its threads, unless on a user's executor); returns at once.
  void start();
  /// Python: `serve_forever()`: start(), then waits until a client's shutdown() or stop() from
  /// another thread, then stops (as stop()). Never on one of the server's threads.
  void serve_forever();
  /// Stops accepting, closes every connection (their pending calls' replies are dropped),
  /// releases every object and joins its threads. Idempotent. Never call it from a server
  /// thread (@throws RuntimeError): a hosted method may ask for shutdown through
  /// request_shutdown().
  void stop();
  /// Asks for the stop from anywhere (a hosted method, a signal handler's thread): what a
  /// client's shutdown() does. serve_forever() returns; stop() does the rest.
  void request_shutdown() noexcept;
  /// Whether a shutdown was asked for (or stop() ran).
  bool shutdown_requested() const noexcept;

  /// Python: `number_of_objects()` (without the ones the server made itself).
  std::size_t number_of_objects() const;
  /// Python: `debug_info()`: per object, "  <id, hex>:       refcount=<n>\n    <str, cut at 75>",
  /// joined by newlines (CPython's layout).
  std::string debug_info() const;
  /// Client connections open now (after their Hello).
  std::size_t connection_count() const;
  /// The executor the server runs on.
  boost::asio::any_io_executor get_executor() const;

  class Impl;

private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace troupe::multiprocessing::managers
