// BaseManager (manager.hpp) and the entry point its server process runs.
#include "troupe/multiprocessing/managers/manager.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "troupe/entry.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/multiprocessing/context.hpp"
#include "troupe/multiprocessing/detail/worker_pool.hpp"
#include "troupe/multiprocessing/internal/secret_message.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/managers/shared_memory_manager.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing::managers {

namespace detail {

// What a server process reports to the process that started it: (true, address, {}) once it
// listens, or (false, "", the error envelope's bytes).
using StartReport = std::tuple<bool, std::string, std::vector<std::byte>>;

// The server options that travel to a spawned server process (no TLS: a context cannot).
using WireServerOptions =
    std::tuple<std::uint64_t, std::uint32_t, std::uint32_t, std::int64_t, std::uint32_t, bool,
               std::int64_t, int, bool, std::uint32_t, bool>;

WireServerOptions to_wire(const ServerOptions& o) {
  return {o.max_message_size,
          o.max_calls_in_flight,
          o.max_objects_held,
          o.park_ttl.count(),
          o.threads,
          o.allow_shutdown,
          o.listener.handshake_timeout.count(),
          o.listener.backlog,
          o.track_segments,
          o.max_threads,
          o.foreign_proxies};
}

ServerOptions from_wire(const WireServerOptions& w) {
  ServerOptions o;
  o.max_message_size = std::get<0>(w);
  o.max_calls_in_flight = std::get<1>(w);
  o.max_objects_held = std::get<2>(w);
  o.park_ttl = std::chrono::milliseconds(std::get<3>(w));
  o.threads = std::get<4>(w);
  o.allow_shutdown = std::get<5>(w);
  o.listener.handshake_timeout = std::chrono::milliseconds(std::get<6>(w));
  o.listener.backlog = std::get<7>(w);
  o.track_segments = std::get<8>(w);
  o.max_threads = std::get<9>(w);
  o.foreign_proxies = std::get<10>(w);
  return o;
}

// The server process's body: runs the initializer, listens, reports, serves until shutdown.
void run_server(const Registry& registry, const std::string& address,
                const AuthenticationString& authkey, ServerOptions options,
                const std::string& init_entry, const std::vector<std::byte>& init_args,
                Connection& report) {
  // Python's manager process ignores SIGINT (a Ctrl-C in the terminal reaches the whole group;
  // the parent decides when the server goes).
  ::signal(SIGINT, SIG_IGN);
  std::unique_ptr<Server> server;
  try {
    if (!init_entry.empty()) {
      const EntryPoint* e = find_entry(init_entry);
      if (!e)
        throw ValueError("the initializer '" + init_entry +
                         "' is not a TROUPE_ENTRY of this program");
      multiprocessing::internal::invoke_start_arguments(*e, init_args);
    }
    options.listener.authkey = authkey;
    server = std::make_unique<Server>(
        registry, address.empty() ? std::nullopt : std::optional<Address>(Address::parse(address)),
        std::move(options));
    server->start();
    report.send(StartReport{true, server->address().str(), {}});
  } catch (...) {
    try {
      report.send(StartReport{
          false, "",
          ErrorEnvelope::capture(std::current_exception(), {.call = "manager start"}).to_bytes()});
    } catch (...) {
    }
    throw;
  }
  report.close();
  // The server belongs to the BaseManager that started it: Python's ends it when that process
  // exits (a finalizer sends shutdown()), but a process killed (SIGKILL, the OOM killer, a
  // crash) leaves Python's server running for good, holding its address and objects, with
  // nobody left to shut it down. Here a thread watches the parent's pidfd, and the server shuts
  // down when that process ends, whatever the way.
  UniqueFd parent_fd;
  std::string parent_pid;
  const auto parent = parent_process();
  const int ppid = parent ? parent->pid().value_or(0) : 0;
  parent_pid = std::to_string(ppid);
  try {
    if (parent) {
      // A pidfd, readable once the parent has ended (the forkserver's children are given one).
      parent_fd = UniqueFd(::fcntl(parent->sentinel(), F_DUPFD_CLOEXEC, 0));
      if (!parent_fd) throw OSError(errno, "dup of the parent's pidfd");
    }
  } catch (const std::exception& e) {
    // sentinel() says the parent has ended when it cannot open a pidfd for any reason: only a
    // parent that is gone stops the server (this process was handed to another parent, or the
    // pid is free: a parent killed a moment ago is a zombie until its own parent reaps it, and
    // kill(pid, 0) still finds it); anything else (no pidfds before Linux 5.3, a seccomp
    // filter, no fds left) leaves it without a watch, as Python's.
    if (ppid > 0 && (::getppid() != ppid || (::kill(ppid, 0) != 0 && errno == ESRCH))) {
      get_logger().warning("manager server at " + server->address().str() +
                           ": the process that started it (pid " + parent_pid +
                           ") has ended: shutting down");
      server->request_shutdown();
    } else {
      get_logger().warning("manager server at " + server->address().str() +
                           ": cannot watch the process that started it (pid " + parent_pid +
                           "): " + e.what());
    }
  }
  UniqueFd done(::eventfd(0, EFD_CLOEXEC));
  std::thread watch;
  if (parent_fd && done) {
    watch = std::thread([&] {
      pollfd fds[2] = {{parent_fd.get(), POLLIN, 0}, {done.get(), POLLIN, 0}};
      int n;
      while ((n = ::poll(fds, 2, -1)) < 0 && errno == EINTR) {
      }
      if (n < 0) {
        get_logger().warning(
            "manager server at " + server->address().str() +
            ": watching the process that started it failed: " + std::strerror(errno));
        return;
      }
      if (fds[1].revents != 0 || fds[0].revents == 0) return;
      get_logger().warning("manager server at " + server->address().str() +
                           ": the process that started it (pid " + parent_pid +
                           ") has ended without shutdown(): shutting down");
      server->request_shutdown();
    });
  }
  struct Join {
    std::thread& t;
    int done;
    ~Join() {
      if (!t.joinable()) return;
      const std::uint64_t one = 1;
      while (::write(done, &one, sizeof one) < 0 && errno == EINTR) {
      }
      t.join();
    }
  } join{watch, done.get()};
  server->serve_forever();
}

void serve_manager(std::string registry_name, std::string address,
                   multiprocessing::detail::SecretBytes authkey, WireServerOptions options,
                   std::string init_entry, multiprocessing::detail::SecretBytes init_args,
                   Connection& report) {
  if (registry_name == "BaseManager") (void)BaseManager::registry();
  const Registry* registry = Registry::named(registry_name);
  if (!registry) {
    report.send(StartReport{
        false, "",
        ErrorEnvelope::capture(std::make_exception_ptr(ValueError(
                                   "the manager class '" + registry_name +
                                   "' has no registry in the server process: with spawn and "
                                   "forkserver, register during static initialisation")),
                               {.call = "manager start"})
            .to_bytes()});
    return;
  }
  run_server(*registry, address, AuthenticationString(authkey.bytes), from_wire(options),
             init_entry, init_args.bytes, report);
}

}  // namespace detail
}  // namespace troupe::multiprocessing::managers

TROUPE_ENTRY(troupe::multiprocessing::managers::detail::serve_manager);

namespace troupe::multiprocessing::managers {

Registry& BaseManager::registry() {
  static Registry* const r = new Registry("BaseManager");  // lives as long as the process
  return *r;
}

BaseManager::BaseManager(ManagerOptions options) : BaseManager(registry(), std::move(options)) {}

BaseManager::BaseManager(const Registry& registry, ManagerOptions options)
    : registry_(&registry), options_(std::move(options)) {
  authkey_ = options_.authkey ? *options_.authkey : current_process().authkey();
  address_ = options_.address;
}

BaseManager::~BaseManager() {
  if (state_ == State::started && process_) {
    try {
      shutdown();
    } catch (...) {
    }
  }
}

void BaseManager::start(concurrent::futures::Initializer initializer) {
  if (state_ != State::initial) {
    if (state_ == State::started) throw ProcessError("Already started server");
    throw ProcessError("Manager has shut down");
  }
  const std::string method =
      options_.start_method.empty() ? get_start_method().value_or("fork") : options_.start_method;
  auto [reader, writer] = Pipe(true);
  ProcessOptions po;
  po.name = registry_->name() + "-server";
  po.start_method = method;
  po.fork_with_threads = options_.fork_with_threads;
  const std::string address = address_ ? address_->str() : std::string();
  // Encoded as the child's start arguments are: a proxy among them carries its manager's key
  // (and every copy is wiped when freed).
  auto initargs = std::make_shared<multiprocessing::detail::SecretBytes>();
  initargs->bytes = initializer.encode
                        ? multiprocessing::detail::encode_for_child(initializer.encode)
                        : std::move(initializer.arguments);
  if (method == "fork") {
    // Any callable under fork: the options travel whole (TLS included).
    po.start_method = "fork";
    const Registry* registry = registry_;
    process_.emplace(
        po,
        [registry, address, key = authkey_, options = options_.server, entry = initializer.entry,
         initargs](Connection& report) {
          detail::run_server(*registry, address, key, options, entry, initargs->bytes, report);
        },
        std::move(writer));
  } else {
    if (options_.server.listener.tls)
      throw ValueError("a manager's server with TLS starts with the fork method or get_server()");
    // The key is wiped wherever it is copied on its way (the process's arguments, the child's).
    const auto key = authkey_.bytes();
    process_.emplace(po, &detail::serve_manager, registry_->name(), address,
                     multiprocessing::detail::SecretBytes{{key.begin(), key.end()}},
                     detail::to_wire(options_.server), initializer.entry, *initargs,
                     std::move(writer));
  }
  process_->start();
  // The child holds the writing end now; ours goes, so a child that dies says EOF.
  multiprocessing::detail::drop_arguments(*process_);
  bool ready = false;
  try {
    ready = reader.poll(options_.start_timeout);
  } catch (...) {
  }
  if (!ready) {
    process_->kill();
    process_->join();
    throw ProcessError("the manager's server process did not listen within " +
                       std::to_string(options_.start_timeout.count()) + " ms");
  }
  detail::StartReport report;
  try {
    report = reader.recv<detail::StartReport>();
  } catch (const EOFError&) {
    process_->join(std::chrono::seconds(5));
    auto code = process_->exitcode();
    throw ProcessError("the manager's server process exited before it listened (exit code " +
                       (code ? std::to_string(*code) : std::string("unknown")) + ")");
  }
  if (!std::get<0>(report)) {
    process_->join(std::chrono::seconds(5));
    throw_error(ErrorEnvelope::from_bytes(std::get<2>(report)));
  }
  address_ = Address::parse(std::get<1>(report));
  state_ = State::started;
}

std::unique_ptr<Server> BaseManager::get_server() const {
  // As Python's: only a manager neither started nor shut down serves in this process.
  const bool smm = dynamic_cast<const SharedMemoryManager*>(this) != nullptr;  // its own words
  if (state_ == State::started)
    throw ProcessError(smm ? "Already started SharedMemoryServer" : "Already started server");
  if (state_ == State::shutdown)
    throw ProcessError(smm ? "SharedMemoryManager has shut down" : "Manager has shut down");
  ServerOptions o = options_.server;
  o.listener.authkey = authkey_;
  return std::make_unique<Server>(*registry_, address_, std::move(o));
}

void BaseManager::connect() {
  if (!address_) throw ValueError("connect(): the manager has no address");
  link_.reset();
  detail::Link::forget(*address_);
  link_ = detail::Link::get(*address_, authkey_, options_.link);
  // As Python's: connected is started, after a shutdown too (the server may serve again: a
  // restarted one, or one that another manager runs).
  state_ = State::started;
}

std::shared_ptr<detail::Link> BaseManager::ensure_link() {
  if (state_ == State::shutdown) throw ProcessError("Manager has shut down");
  if (state_ != State::started) throw ProcessError("server not yet started");
  if (!link_ || !link_->alive()) link_ = detail::Link::get(*address_, authkey_, options_.link);
  return link_;
}

void BaseManager::check_create_method(std::string_view typeid_) const {
  auto entry = registry_->find(typeid_);
  if (entry && !entry->create_method)
    throw AttributeError("'" + registry_->name() + "' object has no attribute '" +
                         std::string(typeid_) + "' (typeid '" + std::string(typeid_) +
                         "' was registered with create_method=false: _create() makes one)");
}

BaseProxy BaseManager::adopt_created(const std::shared_ptr<detail::Link>& link,
                                     detail::Frame& frame, std::string_view typeid_) {
  auto reply = frame.root<proto::manager::Reply>();
  if (!reply.isProxy())
    throw TypeError("create(" + std::string(typeid_) + "): the server answered without a proxy");
  return BaseProxy::adopt(link, reply.getProxy());
}

void BaseManager::shutdown() {
  if (state_ != State::started) return;
  state_ = State::shutdown;
  auto link = std::move(link_);
  if (!process_) {
    // A connected manager: ask the server.
    // Bounded: a server whose threads are all busy in blocking methods must not hang us.
    if (!link || !link->alive()) link = detail::Link::get(*address_, authkey_, options_.link);
    detail::Link::forget(*address_);
    link->call([](proto::manager::Request::Builder r) { r.setShutdown(); },
               options_.shutdown_timeout);
    return;
  }
  try {
    if (process_->is_alive()) {
      if (!link || !link->alive()) link = detail::Link::get(*address_, authkey_, options_.link);
      link->call([](proto::manager::Request::Builder r) { r.setShutdown(); },
                 options_.shutdown_timeout);
    }
  } catch (const std::exception&) {
    // The server is gone or does not answer: the signals below.
  }
  link.reset();
  detail::Link::forget(*address_);
  process_->join(options_.shutdown_timeout);
  if (process_->is_alive()) {
    process_->terminate();
    process_->join(options_.shutdown_timeout);
    if (process_->is_alive()) {
      process_->kill();
      process_->join();
    }
  }
}

void BaseManager::join(Timeout timeout) {
  if (process_) process_->join(timeout);  // as Python's: nothing to join without a process
}

const Address& BaseManager::address() const {
  if (!address_) throw ValueError("the manager has no address yet (start() gives it one)");
  return *address_;
}

std::size_t BaseManager::number_of_objects() {
  auto link = ensure_link();
  auto f = link->call([](proto::manager::Request::Builder r) { r.setNumberOfObjects(); });
  return static_cast<std::size_t>(
      Codec<std::uint64_t>::decode(f->root<proto::manager::Reply>().getResult()));
}

std::string BaseManager::debug_info() {
  auto link = ensure_link();
  auto f = link->call([](proto::manager::Request::Builder r) { r.setDebugInfo(); });
  auto text = f->root<proto::manager::Reply>().getText();
  return std::string(text.begin(), text.size());
}

}  // namespace troupe::multiprocessing::managers
