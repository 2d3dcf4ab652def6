// troupe/multiprocessing/managers/manager.hpp — Python's `multiprocessing.managers.BaseManager`:
// starts a server process (or connects to a running server) and makes proxies to objects there.
//
//   struct MathsManager : mp::managers::Manager<MathsManager> { using Manager::Manager; };
//   TROUPE_EXPOSE(Maths, add, mul);
//   static const bool registered = (MathsManager::register_<Maths>("Maths"), true);
//
//   MathsManager m({.start_method = "spawn"});
//   m.start();                                    // the server, in a child process
//   auto maths = m.create<Maths>("Maths");        // Python: m.Maths()
//   int s = maths.call<&Maths::add>(1, 2);
//   // ~MathsManager: shutdown(), as Python's __exit__
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "troupe/concurrent/futures/process.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"
#include "troupe/multiprocessing/managers/registry.hpp"
#include "troupe/multiprocessing/managers/server.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing::managers {

/// Python: BaseManager's arguments `(address=None, authkey=None, serializer='pickle', ctx=None,
/// *, shutdown_timeout=1.0)`, and the server's options.
struct ManagerOptions {
  /// Where the server listens (start) or is (connect). None with start(): a new abstract Unix
  /// name (no file to clean up; Python makes a temporary Unix path).
  std::optional<Address> address;
  /// None: current_process().authkey() (Python's default; children inherit it, so proxies sent
  /// to them work).
  std::optional<AuthenticationString> authkey;
  /// How start() makes the server process: "fork", "spawn" or "forkserver"; empty: the
  /// process's default (get_start_method()). Spawn and forkserver run the program afresh: the
  /// registrations must be made during static initialisation there (registry.hpp).
  std::string start_method;
  /// Python's shutdown_timeout: how long shutdown() waits for the server process at each step
  /// (after the shutdown request, then after SIGTERM) before the next (SIGTERM, then SIGKILL).
  std::chrono::milliseconds shutdown_timeout{1000};
  /// How long start() waits for the server process to listen.
  std::chrono::milliseconds start_timeout{30000};
  /// Fork even though this process runs threads (ProcessOptions::fork_with_threads).
  bool fork_with_threads = false;
  /// The server's limits and threads. Its listener's authkey is the manager's; TLS only with
  /// the fork start method or get_server() (an SSL context cannot be sent to a new program).
  ServerOptions server;
  /// For connecting: the deadline of the connect and handshakes; TLS; the heartbeat (a server
  /// silent for heartbeat_timeout while calls wait fails them).
  detail::LinkOptions link;
};

/// `options` with Python's positional `address` and `authkey` (BaseManager(address, authkey)).
inline ManagerOptions with_address(std::optional<Address> address,
                                   std::optional<AuthenticationString> authkey,
                                   ManagerOptions options) {
  options.address = std::move(address);
  options.authkey = std::move(authkey);
  return options;
}

/// Python: `multiprocessing.managers.BaseManager`. Not thread-safe itself (start, connect,
/// shutdown from one thread); the proxies it makes are.
class BaseManager {
public:
  explicit BaseManager(ManagerOptions options = {});
  /// Python: `BaseManager(address, authkey)`, the other options in `options`.
  BaseManager(std::optional<Address> address, std::optional<AuthenticationString> authkey,
              ManagerOptions options = {})
      : BaseManager(with_address(std::move(address), std::move(authkey), std::move(options))) {}
  BaseManager(const BaseManager&) = delete;
  BaseManager& operator=(const BaseManager&) = delete;
  /// Python's `__exit__`: shutdown() if start() started a server process.
  virtual ~BaseManager();

  /// Python: `start(initializer=None, initargs=())`: starts the server in a child process and
  /// returns once it listens. `initializer` (a TROUPE_ENTRY function and its arguments) runs
  /// first in that process. @throws ProcessError if already started, or the server process
  /// failed (its exception's class and text) or exited before listening.
  void start(concurrent::futures::Initializer initializer = {});
  /// Python: `start(initializer, initargs)`: `initializer(initargs...)` (a TROUPE_ENTRY
  /// function) runs first in the server process.
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A) && sizeof...(A) > 0) void start(R (*initializer)(P...),
                                                                        A&&... initargs) {
    start(concurrent::futures::Initializer(initializer, std::forward<A>(initargs)...));
  }
  /// Python: `get_server()`: a Server for this manager's registry, address and key, to run in
  /// this process (`get_server()->serve_forever()`).
  std::unique_ptr<Server> get_server() const;
  /// Python: `connect()`: connects to a running server at address(). Can be called again after
  /// the server restarted. @throws ConnectionRefusedError, AuthenticationError, … naming it.
  void connect();
  /// Python: `shutdown()`: for a server this manager started: asks it to stop, waits up to
  /// shutdown_timeout, then SIGTERM, waits again, then SIGKILL; always returns. For a connected
  /// manager: sends the server a shutdown request (not in Python, which has no shutdown() then).
  virtual void shutdown();
  /// Python: `join(timeout=None)`: waits for the server process (none: returns at once).
  void join(Timeout timeout = {});
  /// Python: `address`: the server's address (a port 0 resolved once started).
  const Address& address() const;
  /// The server process (start()), if any.
  const std::optional<Process>& process() const noexcept { return process_; }

  /// Python: `manager.TYPEID(*args)`: a new object of a registered typeid, as an untyped proxy.
  /// @throws KeyError for an unknown typeid; AttributeError for one this manager's class
  /// registered with create_method=false (Python's class has no such method; _create() makes
  /// one); what the callable raised.
  template <class... A>
  BaseProxy create(std::string_view typeid_, const A&... args) {
    check_create_method(typeid_);
    return _create(typeid_, args...);
  }
  /// The same as a typed proxy (its method table checked against T's).
  template <class T, class... A>
  Proxy<T> create(std::string_view typeid_, const A&... args) {
    return Proxy<T>(create(typeid_, args...));
  }
  /// Python: `manager._create(typeid, *args)`: create() whatever the typeid's create_method (the
  /// server creates any typeid that has a callable, as CPython's).
  template <class... A>
  BaseProxy _create(std::string_view typeid_, const A&... args) {
    auto link = ensure_link();
    auto frame = link->call([&](proto::manager::Request::Builder r) {
      auto c = r.initCreate();
      c.setTypeid(capnp::Text::Reader(typeid_.data(), typeid_.size()));
      auto l = c.initArgs(sizeof...(A));
      unsigned i = 0;
      codec_detail::encode_guarded(
          [&] { (Codec<detail::wire_arg_t<A>>::encode(detail::wire_arg(args), l[i++]), ...); });
    });
    return adopt_created(link, *frame, typeid_);
  }

  /// Python: `_number_of_objects()` and `_debug_info()`, from the server.
  std::size_t number_of_objects();
  std::string debug_info();

  /// BaseManager's own registry (registrations every manager class sees).
  static Registry& registry();
  /// Python: `BaseManager.register(...)` (registry.hpp).
  template <class T>
  static void register_(std::string typeid_, RegisterOptions options = {}) {
    registry().template register_<T>(std::move(typeid_), std::move(options));
  }
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, RegisterOptions>) static void register_(
      std::string typeid_, F callable, RegisterOptions options = {}) {
    registry().register_(std::move(typeid_), std::move(callable), std::move(options));
  }

  /// This manager's registry (its class's).
  const Registry& registry_in_use() const noexcept { return *registry_; }
  /// The link to the server (connecting if need be).
  std::shared_ptr<detail::Link> _link() { return ensure_link(); }

protected:
  BaseManager(const Registry& registry, ManagerOptions options);
  /// Whether start() started a server process that has not been shut down (what the
  /// destructor shuts down).
  bool owns_running_server() const noexcept {
    return state_ == State::started && process_.has_value();
  }

private:
  enum class State { initial, started, shutdown };
  std::shared_ptr<detail::Link> ensure_link();
  void check_create_method(std::string_view typeid_) const;
  BaseProxy adopt_created(const std::shared_ptr<detail::Link>& link, detail::Frame& frame,
                          std::string_view typeid_);

  const Registry* registry_;
  ManagerOptions options_;
  AuthenticationString authkey_;
  std::optional<Address> address_;
  std::optional<Process> process_;
  std::shared_ptr<detail::Link> link_;
  State state_ = State::initial;
};

/// A manager class with a registry of its own (Python: a BaseManager subclass, whose register()
/// calls do not reach other classes): `struct MyManager : Manager<MyManager> { using
/// Manager::Manager; };` then `MyManager::register_<…>(…)`. Lookups fall back to BaseManager's
/// registrations.
template <class Self>
class Manager : public BaseManager {
public:
  explicit Manager(ManagerOptions options = {}) : BaseManager(registry(), std::move(options)) {}
  /// Python: `MyManager(address, authkey)`.
  Manager(std::optional<Address> address, std::optional<AuthenticationString> authkey,
          ManagerOptions options = {})
      : Manager(with_address(std::move(address), std::move(authkey), std::move(options))) {}

  static Registry& registry() {
    static Registry r(codec_detail::class_name<Self>(), &BaseManager::registry());
    return r;
  }
  template <class T>
  static void register_(std::string typeid_, RegisterOptions options = {}) {
    registry().template register_<T>(std::move(typeid_), std::move(options));
  }
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, RegisterOptions>) static void register_(
      std::string typeid_, F callable, RegisterOptions options = {}) {
    registry().register_(std::move(typeid_), std::move(callable), std::move(options));
  }
};

}  // namespace troupe::multiprocessing::managers
