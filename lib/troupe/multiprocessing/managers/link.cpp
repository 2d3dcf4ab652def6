// A process's link to a manager server (detail/link.hpp).
#include "troupe/multiprocessing/managers/detail/link.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <new>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/steady_timer.hpp>
#include <capnp/serialize.h>

#include "troupe/detail/node_cache.hpp"
#include "troupe/detail/sanitizers.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/errors.hpp"
#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/managers/internal/python_client.hpp"
#include "troupe/multiprocessing/managers/internal/wire.hpp"
#include "troupe/multiprocessing/managers/lane.hpp"
#include "troupe/multiprocessing/process.hpp"

namespace troupe::multiprocessing::managers::detail {

namespace asio = boost::asio;

// How long a blocking call's reply may take before the link's thread (its heartbeat) starts.
constexpr std::chrono::milliseconds kStartRunnerAfter{1};
// The blocking call that starts the link's thread (if nothing has before): until then each
// call's wait polls first (for kStartRunnerAfter), a system call more than a read.
constexpr unsigned kCallsBeforeRunner = 4;

namespace {
std::uint64_t new_lane() noexcept {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}
// The lane of the Lane::Scope this thread is in (0: none).
thread_local std::uint64_t tl_scoped_lane = 0;

struct Gathered {
  asio::any_io_executor ex;
  std::function<void()> f;
};
// The completions gathered on the link's thread while it takes one read's replies (null: none
// is gathering).
thread_local std::vector<Gathered>* tl_gathered = nullptr;

void run_gathered(std::vector<Gathered>& items);

// Posts the completions [first, last), all on one executor, as one handler.
void post_run(std::vector<Gathered>::iterator first, std::vector<Gathered>::iterator last) {
  std::vector<Gathered> run(std::make_move_iterator(first), std::make_move_iterator(last));
  const auto ex = run.front().ex;
  asio::post(ex, [run = std::move(run)]() mutable { run_gathered(run); });
}

// Runs `items` in their order, on their executor. A completion that throws leaves run() as any
// Asio handler's exception does, and the ones after it are posted again first: none is lost.
void run_gathered(std::vector<Gathered>& items) {
  for (std::size_t i = 0; i < items.size(); ++i) {
    try {
      auto f = std::move(items[i].f);
      f();
    } catch (...) {
      if (i + 1 < items.size()) post_run(items.begin() + (i + 1), items.end());
      throw;
    }
  }
}

// Posts what `items` gathered, each run of completions on one executor as one handler, and
// empties it.
void post_gathered(std::vector<Gathered>& items) noexcept {
  for (std::size_t i = 0; i < items.size();) {
    std::size_t j = i + 1;
    while (j < items.size() && items[j].ex == items[i].ex) ++j;
    try {
      if (j == i + 1)
        asio::post(items[i].ex, std::move(items[i].f));
      else
        post_run(items.begin() + i, items.begin() + j);
    } catch (...) {
      try {
        get_logger().error(
            "manager link: a completion could not be posted: its call never "
            "completes");
      } catch (...) {
      }
    }
    i = j;
  }
  items.clear();
}

// While it lives (on the link's thread, around the handling of one read), post_completion
// gathers; at its end what gathered is posted (post_gathered).
class GatherCompletions {
public:
  GatherCompletions() noexcept : outer_(tl_gathered) {
    if (!outer_) tl_gathered = &items_;
  }
  ~GatherCompletions() {
    if (outer_) return;
    tl_gathered = nullptr;
    post_gathered(items_);
  }
  GatherCompletions(const GatherCompletions&) = delete;
  GatherCompletions& operator=(const GatherCompletions&) = delete;

private:
  std::vector<Gathered>* outer_;
  std::vector<Gathered> items_;
};

// Whether completions on `ex` may be gathered: an io_context's executor, whose thread runs its
// handlers one at a time anyway. Not a thread pool's (the system executor's, a plain callback's
// or use_future's): there each completion runs beside the others, and one that waits for
// another's result would wait for ever behind it in one handler.
bool gatherable(const asio::any_io_executor& ex) noexcept {
  using Tracked = decltype(asio::prefer(std::declval<asio::io_context::executor_type>(),
                                        asio::execution::outstanding_work.tracked));
  return ex.target<asio::io_context::executor_type>() != nullptr || ex.target<Tracked>() != nullptr;
}

// Before a blocking caller is woken with its reply: the completions of the replies before it
// are posted first, so they are ready when it runs on (as when it reads the replies itself).
void post_gathered_now() noexcept {
  if (tl_gathered) post_gathered(*tl_gathered);
}
}  // namespace

void post_completion(const asio::any_io_executor& ex, std::function<void()> f) {
  if (tl_gathered && gatherable(ex)) {
    try {
      tl_gathered->push_back({ex, std::move(f)});
      return;
    } catch (const std::bad_alloc&) {  // posted on its own, then
    }
  }
  asio::post(ex, std::move(f));
}

std::uint64_t current_lane() noexcept {
  if (tl_scoped_lane != 0) return tl_scoped_lane;
  thread_local const std::uint64_t lane = new_lane();
  return lane;
}

struct Link::Runner {
  asio::io_context ctx{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{
      ctx.get_executor()};
  // Started on first need (Link::ensure_runner), not at connect: a thread's start costs a
  // connect and its first calls more than they cost themselves on a machine with few CPUs.
  std::once_flag once;
  std::atomic<bool> started{false};
  std::thread thread;
  std::atomic<std::thread::id> id{};
  std::optional<asio::steady_timer> heartbeat;  // used on the thread only
  std::atomic<bool> link_gone{false};  // the link was destroyed on this thread (in a handler)
};

namespace {

// This process's links, by address. A forked child starts a table of its own (the parent's
// links are unusable there: their threads did not survive the fork).
struct Table {
  pid_t pid = ::getpid();
  std::mutex m;
  std::unordered_map<std::string, std::vector<std::weak_ptr<Link>>> links;
  // Every link made here, found by address or not: forget() drops a link from `links` while
  // proxies may still hold it, and a forked child must close its socket all the same.
  std::vector<std::weak_ptr<Link>> all;
};

std::atomic<Table*> the_table{nullptr};
// Set by a fork's prepare handler, for its parent's or child's: per thread, as two threads'
// forks may run their handlers interleaved (glibc 2.36).
constinit thread_local Table* locked_for_fork = nullptr;

// The table is locked across fork(), so that the child never finds it half changed by a thread
// of the parent that was inside Link::get or forget at the fork (the child walks it).
void prepare_fork() noexcept {
  Table* t = the_table.load(std::memory_order_acquire);
  if (t != nullptr && t->pid == ::getpid()) {
    t->m.lock();
    locked_for_fork = t;
  }
}
void parent_after_fork() noexcept {
  if (Table* t = std::exchange(locked_for_fork, nullptr)) t->m.unlock();
}
void child_after_fork() noexcept {
  after_fork_in_child();
  if (Table* t = std::exchange(locked_for_fork, nullptr)) t->m.unlock();
}

constexpr troupe::internal::runtime::ForkHandlers kForkHandlers{&prepare_fork, &parent_after_fork,
                                                                &child_after_fork};

Table& table() {
  static const bool installed = [] {
    // The runtime's step manager_links (after process_id, whose cache this one's child reads).
    (void)troupe::internal::runtime::process_id();
    troupe::internal::runtime::at_fork(troupe::internal::runtime::ForkStep::manager_links,
                                       kForkHandlers);
    return true;
  }();
  (void)installed;
  Table* t = the_table.load(std::memory_order_acquire);
  if (t != nullptr && t->pid == troupe::internal::runtime::process_id()) return *t;
  auto* fresh = new Table();  // never deleted: a forked child may still hold the old one's links
  if (the_table.compare_exchange_strong(t, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *t;
}

std::exception_ptr as_exception(errc code, const std::string& what) {
  try {
    throw_error(code, what);
  } catch (...) {
    return std::current_exception();
  }
}

}  // namespace

// In a forked child: the parent's links are the parent's. Their sockets are closed here, so the
// server sees the parent's disconnect when the parent goes (not when its last child does); the
// Link objects are left alone (their threads do not exist here) and never destroyed.
void after_fork_in_child() noexcept {
  Table* t = the_table.load(std::memory_order_acquire);
  if (t == nullptr) return;
  for (auto& w : t->all)
    if (auto l = w.lock()) {
      if (l->fd_ >= 0) ::close(l->fd_);
      l->fd_ = -1;
      if (l->python_) l->python_->after_fork_in_child();
      // The reference taken by lock() must not destroy the link here: leak it.
      new std::shared_ptr<Link>(std::move(l));
    }
  the_table.store(new Table(), std::memory_order_release);
}

Link::Link(Address address, AuthenticationString authkey)
    : address_(std::move(address)),
      address_text_(address_.str()),
      authkey_(std::move(authkey)),
      pid_(::getpid()),
      runner_(std::make_shared<Runner>()) {}

std::shared_ptr<Link> Link::get(const Address& address, const AuthenticationString& authkey,
                                const LinkOptions& options) {
  Table& t = table();
  const std::string key = address.str();
  {
    std::scoped_lock lock(t.m);
    auto it = t.links.find(key);
    if (it != t.links.end()) {
      std::erase_if(it->second, [](const std::weak_ptr<Link>& w) { return w.expired(); });
      for (auto& w : it->second)
        if (auto l = w.lock())
          if (l->alive() &&
              multiprocessing::detail::equal_constant_time(l->authkey_.bytes(), authkey.bytes()))
            return l;
    }
  }
  // Connect outside the lock (it waits for the server); two threads may both connect, and both
  // links work.
  std::shared_ptr<Link> l(new Link(address, authkey));
  l->connect(options);
  std::scoped_lock lock(t.m);
  std::erase_if(t.all, [](const std::weak_ptr<Link>& w) { return w.expired(); });
  t.all.push_back(l);
  t.links[key].push_back(l);
  // Also under the address the server gives itself (its proxies' tokens carry that one): a
  // client that connected to "localhost:PORT" finds this link for a token of "127.0.0.1:PORT".
  if (!l->server_address_.empty() && l->server_address_ != key)
    t.links[l->server_address_].push_back(l);
  return l;
}

std::shared_ptr<Link> Link::for_address(const Address& address) {
  Table& t = table();
  {
    std::scoped_lock lock(t.m);
    auto it = t.links.find(address.str());
    if (it != t.links.end())
      for (auto& w : it->second)
        if (auto l = w.lock())
          if (l->alive()) return l;
  }
  return get(address, current_process().authkey());
}

void Link::forget(const Address& address) {
  Table& t = table();
  std::scoped_lock lock(t.m);
  auto it = t.links.find(address.str());
  if (it == t.links.end()) return;
  // And the same links under the server's own address.
  for (auto& w : it->second)
    if (auto l = w.lock(); l && !l->server_address_.empty() && l->server_address_ != it->first)
      if (auto other = t.links.find(l->server_address_); other != t.links.end())
        std::erase_if(other->second,
                      [&](const std::weak_ptr<Link>& o) { return o.expired() || o.lock() == l; });
  t.links.erase(it);
}

void Link::connect(const LinkOptions& options) {
  // Under TLS the link's thread reads from the start: it starts first, so that its start (a
  // clone, a stack, its reactor) runs while the handshake waits for the server. On a plain
  // socket a blocking call reads on its own thread, and the link's thread starts when something
  // needs it (ensure_runner): an asynchronous request, a queued write, a reply slow to come (the
  // heartbeat), a CPython peer.
  if (options.tls) ensure_runner();
  // A connect that fails stops and joins it before the error leaves, and ~Link then sees a link
  // that never connected (a Python peer's failure goes through ~Link, which ends both).
  struct StopRunnerOnThrow {
    Link& link;
    int exceptions = std::uncaught_exceptions();
    ~StopRunnerOnThrow() {
      if (std::uncaught_exceptions() <= exceptions || link.python_) return;
      if (!link.runner_->started.load(std::memory_order_acquire)) return;
      link.runner_->work.reset();
      link.runner_->ctx.stop();
      link.runner_->thread.join();
    }
  } stop_on_throw{*this};
  ClientOptions co;
  co.authkey = authkey_;
  co.timeout = options.connect_timeout;
  co.tls = options.tls;
  co.auth = options.auth;
  Connection c = internal::python::connect_to_manager(address_, co);
  {
    capnp::MallocMessageBuilder mb;
    auto h = mb.initRoot<proto::manager::Hello>();
    h.setMagic(internal::kHelloMagic);
    h.setVersion(proto::manager::PROTOCOL_VERSION);
    h.setPid(::getpid());
    h.setProcessName(current_process().name());
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    h.setHost(host);
    h.setAddress(address_text_.c_str());
    c.send_message(mb);
  }
  if (!c.poll(options.connect_timeout))
    throw troupe::TimeoutError("the manager at " + address_text_ +
                               " did not answer the Hello within " +
                               std::to_string(options.connect_timeout.count()) + " ms");
  std::vector<std::byte> bytes;
  try {
    bytes = c.recv_bytes(1 << 20);
  } catch (const EOFError&) {
    throw EOFError("the manager at " + address_text_ +
                   " closed the connection instead of answering the Hello");
  }
  if (internal::python::is_pickle(bytes)) {
    // CPython's server could not read the Hello and said so in a pickle: it speaks its own
    // dialect, which the link speaks from here on (each request on connections of its own).
    c.close();
    ensure_runner();
    python_ = std::make_shared<internal::python::ClientPeer>(
        address_, address_text_, co, runner_->ctx.get_executor(), options.heartbeat_interval);
    server_name_ = "CPython";
    python_->greet();  // Python's connect(): 'dummy'
    python_->start_heartbeat();
    return;
  }
  auto frame = internal::parse_frame(std::move(bytes));
  auto g = frame->root<proto::manager::Greeting>();
  if (g.isRefused()) throw_error(ErrorEnvelope::decode(g.getRefused()));
  if (!g.isWelcome())
    throw ValueError("the manager at " + address_text_ + " answered the Hello with neither a " +
                     "welcome nor a refusal");
  auto w = g.getWelcome();
  if (w.getVersion() != proto::manager::PROTOCOL_VERSION)
    throw ValueError("the manager at " + address_text_ + " speaks protocol version " +
                     std::to_string(w.getVersion()) + ", this client version " +
                     std::to_string(proto::manager::PROTOCOL_VERSION));
  server_pid_ = w.getPid();
  auto name = w.getServerName();
  server_name_ = std::string(name.begin(), name.size());
  auto own = w.getAddress();
  server_address_ = std::string(own.begin(), own.size());
  server_max_message_ = w.getMaxMessageSize();
  conn_ = std::make_unique<Connection>(std::move(c));
  fd_ = conn_->fileno();
  direct_ = !conn_->tls();
  conn_->set_executor(runner_->ctx.get_executor());
  heartbeat_interval_ = options.heartbeat_interval;
  heartbeat_timeout_ = std::max(options.heartbeat_timeout, options.heartbeat_interval);
  last_heard_.store(std::chrono::steady_clock::now().time_since_epoch().count());
  if (!direct_) {
    // Under TLS the link's thread reads, always (it alone touches the session).
    std::scoped_lock lock(m_);
    reader_ = Reader::runner;
  }
  // The first thing the link's thread does, whenever it starts.
  asio::post(runner_->ctx, [this] {
    if (!direct_) read_next();
    if (heartbeat_interval_.count() > 0) {
      // The silence that counts starts now (the link may have been idle long before).
      last_heard_.store(std::chrono::steady_clock::now().time_since_epoch().count());
      runner_->heartbeat.emplace(runner_->ctx);
      beat();
    }
  });
}

void Link::ensure_runner() const {
  auto r = runner_;
  if (r->started.load(std::memory_order_acquire)) return;
  std::call_once(r->once, [&r] {
    // Left behind safely by a fork: the child forgets the parent's links (after_fork_in_child).
    // Counted from before it exists (a fork right after this call must not see it uncounted).
    r->thread =
        std::thread([r, fork_aware = troupe::internal::runtime::ForkAwareThread()]() mutable {
          r->id.store(std::this_thread::get_id());
          {
            // Parked across a fork, in a handler of its own: between handlers it holds nothing.
            troupe::internal::runtime::ForkParking parked([runner = r.get(), &parked] {
              asio::post(runner->ctx, [&parked] { parked.park(); });
            });
            for (;;) {
              try {
                r->ctx.run();
                break;
              } catch (const std::exception& e) {
                get_logger().error(std::string("manager link: an exception escaped a handler: ") +
                                   e.what());
              }
            }
          }
          // The runner may go with this thread's hold (a link destroyed on its own thread): let
          // go while the thread still counts as troupe's, so that a fork waits for the frees.
          r.reset();
        });
    r->started.store(true, std::memory_order_release);
  });
}

// On the runner's thread.
void Link::beat() {
  runner_->heartbeat->expires_after(heartbeat_interval_);
  // Not holding the link (as the read): ~Link cancels the timer on this thread, or stops the
  // runner, before the link goes.
  runner_->heartbeat->async_wait([this](boost::system::error_code ec) {
    if (!ec) on_beat();
  });
}

void Link::on_beat() {
  bool waiting;
  {
    std::scoped_lock lock(m_);
    if (dead_) return;
    // Replies owed and somebody reading them: the silence counts. (A timed-out call's reply
    // that nobody reads is nobody's concern.)
    waiting = !pending_.empty() && reader_ != Reader::none;
  }
  const auto now = std::chrono::steady_clock::now();
  if (!waiting) {
    // Nothing is owed: the silence that counts starts with the next call.
    last_heard_.store(now.time_since_epoch().count());
    return beat();
  }
  const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(
      now - std::chrono::steady_clock::time_point(
                std::chrono::steady_clock::duration(last_heard_.load())));
  if (silent >= heartbeat_timeout_)
    return die("it has not answered for " + std::to_string(silent.count()) +
               " ms, pings included (its host is gone, or the server is stopped; "
               "LinkOptions::heartbeat_timeout)");
  if (silent >= heartbeat_interval_)
    request([](proto::manager::Request::Builder r) { r.setPing(); },
            [](std::exception_ptr, std::shared_ptr<Frame>) {});
  beat();
}

Link::~Link() {
  if (troupe::internal::runtime::process_id() != pid_) {
    // A forked child's copy: its thread does not exist here, and after_fork_in_child closed the
    // socket. Leave everything (never joined, never closed twice).
    (void)conn_.release();
    new std::shared_ptr<Runner>(std::move(runner_));
    return;
  }
  if (!runner_->started.load(std::memory_order_acquire)) {
    // Never connected, or its thread never started: nothing of the link runs anywhere (a
    // blocking caller holds the link while it reads), and its connection closes with it.
    return;
  }
  if (python_) {
    // Its own thread sends what is queued (the proxies' decrefs), for connect_timeout at most,
    // and ends; then its lanes close (their reads end on the link's thread).
    if (on_link_thread()) {
      runner_->link_gone.store(true, std::memory_order_release);
      auto p = std::move(python_);
      // The io_context lives until the peer has gone (it posts to it while it goes).
      std::thread([p = std::move(p), r = runner_]() mutable { p.reset(); }).detach();
      runner_->work.reset();
      runner_->thread.detach();
      return;
    }
    python_.reset();
    runner_->work.reset();
    runner_->thread.join();
    return;
  }
  if (on_link_thread()) {
    // The last proxy was dropped inside a completion on this link's own thread.
    runner_->link_gone.store(true, std::memory_order_release);
    conn_->close();
    runner_->work.reset();
    runner_->ctx.stop();
    runner_->thread.detach();  // it ends when this handler returns; it owns the runner
    return;
  }
  // The read's handler holds the link only weakly (it cannot, now): die() here fails what is
  // still pending, closes the connection and ends the heartbeat, so the thread's run() returns.
  asio::post(runner_->ctx, [this] { die("the link was closed"); });
  runner_->work.reset();
  runner_->thread.join();
}

bool Link::on_link_thread() const noexcept {
  return runner_->id.load() == std::this_thread::get_id();
}

boost::asio::any_io_executor Link::executor() const {
  ensure_runner();
  return runner_->ctx.get_executor();
}

bool Link::alive() const {
  // The parent's link, in a forked child: its lock may have been held by a thread of the parent
  // at the fork (pid_ never changes: no lock needed to read it).
  if (troupe::internal::runtime::process_id() != pid_) return false;
  {
    std::scoped_lock lock(m_);
    if (dead_ || troupe::internal::runtime::process_id() != pid_) return false;
    if (!python_ && (!direct_ || reader_ != Reader::none)) return true;
  }
  if (python_) return python_->alive();
  // Nobody reads while nothing is owed: a server that has closed the connection meanwhile
  // (stopped, restarted) is seen here, so that Link::get connects afresh.
  pollfd p{fd_, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
    const_cast<Link*>(this)->die("it closed the connection");
    return false;
  }
  return true;
}

std::exception_ptr Link::dead_error() const {
  if (python_) return python_->dead_error();
  std::scoped_lock lock(m_);
  return as_exception(errc::eof_error, "the manager at " + address_text_ + " (pid " +
                                           std::to_string(server_pid_) + ") is gone: " + why_dead_);
}

namespace {
// A request's call id, and its lane: this thread's unless the request names one.
void stamp(proto::manager::Request::Builder r, std::uint64_t call_id) {
  r.setCallId(call_id);
  if (r.getLane() == 0) r.setLane(current_lane());
}
}  // namespace

namespace {
// A request's builder on the thread's reused first segment (MallocMessageBuilder zeroes what it
// used when it is destroyed), not on a new one zeroed for every call; on a new one while the
// thread builds another request (a proxy in the arguments sends its own). Not the codec's scratch
// segment: the arguments' encoding may use that. The segment is plain zero-initialised thread
// storage with no destructor: a proxy destroyed while its thread exits (held by a static, or
// in a threading::local) still builds its release request here after the thread's other
// thread_locals have gone.
constexpr std::size_t kRequestWords = 128;  // 1 KiB
thread_local capnp::word tl_request_words[kRequestWords];
thread_local bool tl_request_words_in_use = false;

class RequestBuilder {
public:
  RequestBuilder() {
    if (!tl_request_words_in_use) {
      tl_request_words_in_use = mine_ = true;
      mb_.emplace(kj::arrayPtr(tl_request_words, kRequestWords));
    } else {
      mb_.emplace(internal::small_message_words);
    }
  }
  ~RequestBuilder() {
    mb_.reset();
    if (mine_) tl_request_words_in_use = false;
  }
  RequestBuilder(const RequestBuilder&) = delete;
  RequestBuilder& operator=(const RequestBuilder&) = delete;
  capnp::MallocMessageBuilder& get() noexcept { return *mb_; }

private:
  std::optional<capnp::MallocMessageBuilder> mb_;
  bool mine_ = false;
};
}  // namespace

namespace {
thread_local ParkScope* tl_park_scope = nullptr;
}  // namespace

ParkScope::ParkScope() noexcept : outer_(tl_park_scope), exceptions_(std::uncaught_exceptions()) {
  tl_park_scope = this;
}
ParkScope::~ParkScope() {
  tl_park_scope = outer_;
  if (std::uncaught_exceptions() > exceptions_) end_parks();
}
bool ParkScope::active() noexcept {
  return tl_park_scope != nullptr;
}
void ParkScope::note(const std::shared_ptr<Link>& link, std::uint64_t id, std::uint64_t ticket) {
  if (tl_park_scope) tl_park_scope->parked_.push_back({link, id, ticket});
}
void ParkScope::end_parks() noexcept {
  for (const Parked& p : parked_) {
    try {
      // The claim makes the park this connection's reference; the decref lets it go.
      p.link->send_answered([&](proto::manager::Request::Builder r) {
        auto c = r.initClaim();
        c.setId(p.id);
        c.setTicket(p.ticket);
      });
      p.link->send([&](proto::manager::Request::Builder r) { r.setDecref(p.id); });
    } catch (const std::exception&) {
      // Not sent (no memory, a dead link): the park ends at the server's park_ttl.
    }
  }
  parked_.clear();
}

namespace {
// The thread's buffer for its requests' frames once one was large, used again by the next: a new
// buffer of megabytes costs a page fault for each page once malloc has given the last one back
// to the system (glibc trims a free top of the heap over twice its mmap threshold), which measured
// ~30 ms of a 4 MiB argument's 36 ms call here (BM_ProxyLargeArgument, where Python takes 25).
// So each thread that made a request over kKeptFrameMin holds up to kKeptFrameMax for its life.
// Trivially destructible flag: as tl_kept_request_gone.
constexpr std::size_t kKeptFrameMin = std::size_t{256} << 10;
constexpr std::size_t kKeptFrameMax = std::size_t{16} << 20;
struct KeptFrame {
  std::vector<std::byte> bytes;
  ~KeptFrame();
};
thread_local bool tl_kept_frame_gone = false;
thread_local KeptFrame tl_kept_frame;
KeptFrame::~KeptFrame() {
  tl_kept_frame_gone = true;
}

// A request's frame, in the thread's kept buffer if it has one (write() gives it back).
std::vector<std::byte> frame_of(capnp::MessageBuilder& mb) {
  std::vector<std::byte> out;
  if (!tl_kept_frame_gone) out = std::move(tl_kept_frame.bytes);
  codec_detail::flatten(mb, out);
  return out;
}

// Done with a frame's bytes (written, or copied into the queue): kept for the thread's next
// frame if large, unless it keeps a larger one already.
void keep_frame(std::vector<std::byte>& bytes) noexcept {
  if (tl_kept_frame_gone || bytes.capacity() < kKeptFrameMin || bytes.capacity() > kKeptFrameMax ||
      tl_kept_frame.bytes.capacity() >= bytes.capacity())
    return;
  tl_kept_frame.bytes = std::move(bytes);
}
}  // namespace

std::vector<std::byte> Link::build_frame(std::uint64_t call_id, const Build& build) {
  RequestBuilder b;
  capnp::MallocMessageBuilder& mb = b.get();
  auto r = mb.initRoot<proto::manager::Request>();
  ParkScope parks;
  build(r);
  stamp(r, call_id);
  auto bytes = frame_of(mb);
  if (auto e = oversize(bytes.size())) {
    parks.end_parks();
    std::rethrow_exception(e);
  }
  return bytes;
}

std::exception_ptr Link::oversize(std::size_t size) const {
  if (server_max_message_ == 0 || size <= server_max_message_) return nullptr;
  return std::make_exception_ptr(ValueError(
      "a request of " + std::to_string(size) + " bytes is over the limit of the manager at " +
      address_text_ + " (" + std::to_string(server_max_message_) +
      " bytes: its ServerOptions::max_message_size); not sent, and the link serves on"));
}

struct Link::SyncWait {
  std::condition_variable cv;  // with the link's m_
  bool done = false;
  bool lead = false;
  std::exception_ptr error;
  std::shared_ptr<Frame> frame;
};

// Any thread, m_ not held: ends a call with its reply or error.
void Link::complete(Pending& p, std::exception_ptr error, std::shared_ptr<Frame> frame) {
  if (p.handler) return p.handler(error, std::move(frame));
  if (!p.sync) return;
  std::scoped_lock lock(m_);
  p.sync->error = error;
  p.sync->frame = std::move(frame);
  p.sync->done = true;
  std::erase(followers_, p.sync.get());  // never handed the reading once done
  p.sync->cv.notify_one();
}

proto::manager::Request::Reader Link::build_python(capnp::MallocMessageBuilder& mb,
                                                   const Build& build) {
  auto r = mb.initRoot<proto::manager::Request>();
  {
    ParkScope parks;  // (a build that throws ends its parks)
    build(r);
  }
  stamp(r, next_call_.fetch_add(1, std::memory_order_relaxed));
  return r.asReader();
}

std::uint64_t Link::request(const Build& build, Handler done) {
  RequestBuilder b;
  capnp::MallocMessageBuilder& mb = b.get();
  {
    ParkScope parks;  // (a build that throws ends its parks)
    build(mb.initRoot<proto::manager::Request>());
  }
  return request(mb, std::move(done));
}

namespace {
// A prepared request's builder and its first segment in one allocation (a MallocMessageBuilder
// of its own would calloc a segment per call): most requests fit; a larger one grows into
// segments of its own.
struct PreparedRequest {
  static constexpr std::size_t kWords = internal::small_message_words;
  capnp::word words[kWords]{};  // zeroed, as MallocMessageBuilder requires
  std::optional<capnp::MallocMessageBuilder> mb{std::in_place, kj::arrayPtr(words, kWords)};
};

// The thread's last prepared request, used again for its next one once nobody holds it (an
// asynchronous call lets its request go before it returns, unless a lazy token keeps it): the
// allocation, over 1 KiB, is past the size malloc's per-thread cache serves, and measured ~700
// instructions a call in malloc and free.
#if !defined(TROUPE_TSAN)
struct KeptRequest {
  std::shared_ptr<PreparedRequest> p;
  ~KeptRequest();
};
// Trivially destructible, so that an asynchronous call made while the thread's other
// thread_locals are destroyed (by one of them, or a static on the main thread) sees that the kept
// request has gone.
thread_local bool tl_kept_request_gone = false;
thread_local KeptRequest tl_kept_request;
KeptRequest::~KeptRequest() {
  tl_kept_request_gone = true;
}
#endif

std::shared_ptr<PreparedRequest> new_prepared() {
#if defined(TROUPE_TSAN)
  // ThreadSanitizer does not see the fence below (GCC warns of std::atomic_thread_fence under
  // it): a new one each time.
  return std::make_shared<PreparedRequest>();
#else
  if (tl_kept_request_gone) return std::make_shared<PreparedRequest>();
  auto& kept = tl_kept_request.p;
  if (kept && kept.use_count() == 1) {
    // Another thread may have let it go last (a lazy token's initiation): see its writes.
    std::atomic_thread_fence(std::memory_order_acquire);
    PreparedRequest& p = *kept;
    p.mb.reset();  // zeroes the words it used, as a new builder needs them
    p.mb.emplace(kj::arrayPtr(p.words, PreparedRequest::kWords));
    return kept;
  }
  kept = std::make_shared<PreparedRequest>();
  return kept;
#endif
}
}  // namespace

Link::Built Link::prepare(const Build& build) {
  auto p = new_prepared();
  capnp::MallocMessageBuilder* builder = &*p->mb;
  Built mb(std::move(p), builder);
  auto r = mb->initRoot<proto::manager::Request>();
  ParkScope parks;
  build(r);
  if (r.getLane() == 0) r.setLane(current_lane());  // the calling thread's, not the sender's
  // Surely over the server's limit (the frame adds its header to this): request() will refuse
  // it unsent, so the parks made for its proxies end now.
  if (server_max_message_ != 0 &&
      capnp::computeSerializedSizeInWords(*mb) * sizeof(capnp::word) > server_max_message_)
    parks.end_parks();
  return mb;
}

std::uint64_t Link::request(capnp::MallocMessageBuilder& built, Handler done) {
  auto r = built.getRoot<proto::manager::Request>();
  const std::uint64_t id = next_call_.fetch_add(1, std::memory_order_relaxed);
  stamp(r, id);
  if (python_) {
    python_->start(r.asReader(), std::move(done));
    return id;
  }
  // Its reply is read on the link's thread: a thread that cannot start fails this call here.
  ensure_runner();
  bool gather = false;
  auto bytes = frame_of(built);
  if (auto e = oversize(bytes.size())) {
    asio::post(runner_->ctx, [done = std::move(done), e] { done(e, nullptr); });
    return id;
  }
  {
    std::unique_lock lock(m_);
    if (dead_ || troupe::internal::runtime::process_id() != pid_) {
      lock.unlock();
      auto e = dead_error();
      asio::post(runner_->ctx, [done = std::move(done), e] { done(e, nullptr); });
      return id;
    }
    // Others in flight: their replies keep the link's thread busy, and it writes this one
    // with whatever else gathers meanwhile (a pipelining caller's next requests) in one
    // system call. Alone: written at once, on this thread.
    gather = ++async_pending_ > 1;
    add_pending_locked(id, Pending{std::move(done), nullptr});
    // Somebody must read its reply: the link's thread, unless a blocking caller reads already
    // (it hands the reading over when its own reply has come).
    if (reader_ == Reader::none) start_runner_reading_locked();
  }
  write(std::move(bytes), gather);
  return id;
}

// A new call id, and the request's frame built with it.
std::vector<std::byte> Link::start_call(const Build& build, std::uint64_t& id) {
  id = next_call_.fetch_add(1, std::memory_order_relaxed);
  return build_frame(id, build);
}

void Link::send(const Build& build) {
  if (python_) {
    if (python_->dead()) return;
    capnp::MallocMessageBuilder mb(internal::small_message_words);
    python_->start(build_python(mb, build),
                   [this_text = address_text_](std::exception_ptr, std::shared_ptr<Frame> f) {
                     // The failure of a request without a reply: logged (a dead link's, not; nor
                     // one that could not reach the server: it went, as a server does when a client
                     // shuts it down, and its references with it).
                     if (!f) return;
                     auto reply = f->root<proto::manager::Reply>();
                     if (!reply.isError()) return;
                     try {
                       const ErrorEnvelope e = ErrorEnvelope::decode(reply.getError());
                       if (e.os_errno != 0 || e.code == errc::eof_error ||
                           e.code == errc::timeout_error || e.code == errc::authentication_error)
                         return;
                       get_logger().warning("manager at " + this_text +
                                            ": a reference request failed: " + e.message);
                     } catch (const std::exception&) {
                     }
                   });
    return;
  }
  {
    std::scoped_lock lock(m_);
    if (dead_ || troupe::internal::runtime::process_id() != pid_) return;
  }
  write(build_frame(next_call_.fetch_add(1, std::memory_order_relaxed), build));
}

namespace {
// A reference request's reply (nobody waits for it): logged if the server refused it.
void log_if_refused(const std::string& address_text, Frame& f) noexcept {
  try {
    auto reply = f.root<proto::manager::Reply>();
    if (reply.isError())
      get_logger().warning("manager at " + address_text + ": a reference request failed: " +
                           std::string(reply.getError().getMessage().cStr()));
  } catch (const std::exception&) {
  }
}
}  // namespace

void Link::send_answered(const Build& build) {
  if (python_) return send(build);  // (its client reads every answer)
  try {
    request(build, [this_text = address_text_](std::exception_ptr e, std::shared_ptr<Frame> f) {
      // A dead link's failure is not logged (as send()'s); the server's refusal is.
      if (!e && f) log_if_refused(this_text, *f);
    });
  } catch (const std::exception&) {
    // Not sent (no memory, no thread for the link): as send() when the link is dead.
  }
}

void Link::refuse_on_link_thread(std::string_view what, std::string_view advice) const {
  if (!on_link_thread()) return;
  std::string text(what);
  text += " to the manager at " + address_text_ +
          " on the thread that reads its replies would wait for itself (a completion handler "
          "with no executor of its own runs there)";
  if (!advice.empty()) (text += ": ") += advice;
  throw RuntimeError(text);
}

std::shared_ptr<Frame> Link::call(const Build& build,
                                  std::optional<std::chrono::nanoseconds> timeout) {
  refuse_on_link_thread("a blocking call", "use the async_ form, or bind an executor");
  // A handler run while this thread reads may drop the last proxy: the link lives until the
  // call returns.
  auto self = shared_from_this();
  if (python_) {
    capnp::MallocMessageBuilder mb(internal::small_message_words);
    return python_->call(build_python(mb, build), timeout);
  }
  // A link that makes more than a few calls is not a short one: its thread starts now, and its
  // waits read at once (the heartbeat watches them).
  if (heartbeat_interval_.count() > 0 && !runner_->started.load(std::memory_order_acquire) &&
      blocking_calls_.fetch_add(1, std::memory_order_relaxed) + 1 >= kCallsBeforeRunner) {
    try {
      ensure_runner();
    } catch (const std::exception&) {
      // Out of threads: this call waits as the first ones did (a slow reply tries again).
    }
  }
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout)
    deadline = std::chrono::steady_clock::now() +
               std::chrono::duration_cast<std::chrono::steady_clock::duration>(*timeout);
  auto w = std::make_shared<SyncWait>();
  std::uint64_t id;
  auto bytes = start_call(build, id);
  {
    std::unique_lock lock(m_);
    if (dead_ || troupe::internal::runtime::process_id() != pid_) {
      lock.unlock();
      std::rethrow_exception(dead_error());
    }
    add_pending_locked(id, Pending{nullptr, w});
  }
  write(std::move(bytes));
  std::unique_lock lock(m_);
  while (!w->done) {
    if (direct_ && reader_ == Reader::none) {
      reader_ = Reader::leader;
      w->lead = true;
    }
    if (w->lead) {
      lock.unlock();
      lead(w, deadline);
      lock.lock();
      if (w->done) break;
      if (dead_) {
        // die() fails every pending call, this one too, just after it marks the link dead.
        w->cv.wait(lock, [&] { return w->done; });
        break;
      }
    } else {
      followers_.push_back(w.get());
      auto woken = [&] { return w->done || w->lead; };
      if (!deadline)
        w->cv.wait(lock, woken);
      else
        w->cv.wait_until(lock, *deadline, woken);
      std::erase(followers_, w.get());
      if (w->done || w->lead) continue;
    }
    // Out of time: the call is not cancelled; its reply, if it comes, is dropped.
    pending_.erase(id);
    lock.unlock();
    throw troupe::TimeoutError(
        "the manager at " + address_text_ + " did not answer within " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(*timeout).count()) +
        " ms");
  }
  lock.unlock();
  if (w->error) std::rethrow_exception(w->error);
  auto reply = w->frame->root<proto::manager::Reply>();
  if (reply.isError()) throw_error(ErrorEnvelope::decode(reply.getError()));
  return std::move(w->frame);
}

// A blocking caller reads the connection for everyone until its own reply comes (or the link
// dies, or its deadline passes), then hands the reading on.
void Link::lead(const std::shared_ptr<SyncWait>& w,
                std::optional<std::chrono::steady_clock::time_point> deadline) {
  for (;;) {
    {
      std::scoped_lock lock(m_);
      if (w->done || dead_) break;
    }
    std::vector<std::byte> bytes;
    try {
      // Without a deadline the read may block as long as the server is silent: the heartbeat
      // (on the link's thread) shuts the socket down if it stays silent too long, which ends
      // the read. That thread starts once a reply is slow to come (kStartRunnerAfter): most
      // replies come long before, and a link used only by blocking calls never needs it.
      const auto left = [&] {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::max(*deadline - std::chrono::steady_clock::now(),
                     std::chrono::steady_clock::duration::zero()));
      };
      if (heartbeat_interval_.count() > 0 && !runner_->started.load(std::memory_order_acquire)) {
        std::chrono::nanoseconds wait =
            std::min<std::chrono::nanoseconds>(kStartRunnerAfter, heartbeat_interval_);
        if (deadline) wait = std::min(wait, left());
        if (!conn_->poll(wait)) {
          if (deadline && left().count() == 0) break;
          try {
            ensure_runner();
          } catch (const std::exception& e) {
            die(std::string("its thread (the heartbeat of a long wait) could not start (") +
                e.what() + ")");
            break;
          }
          continue;
        }
      } else if (deadline && !conn_->poll(left())) {
        break;
      }
      bytes = conn_->recv_bytes();
    } catch (const EOFError&) {
      die("it closed the connection");
      break;
    } catch (const std::exception& e) {
      die(std::string("reading failed: ") + e.what());
      break;
    }
    last_heard_.store(std::chrono::steady_clock::now().time_since_epoch().count());
    on_frame(std::move(bytes));
  }
  std::scoped_lock lock(m_);
  w->lead = false;
  release_reading_locked();
}

// m_ held, by the reader that stops reading: the next reader is a waiting blocking caller, else
// the link's thread if asynchronous requests are owed, else nobody.
void Link::release_reading_locked() {
  reader_ = Reader::none;
  if (dead_) return;
  if (!followers_.empty()) {
    SyncWait* next = followers_.front();
    followers_.pop_front();
    next->lead = true;
    reader_ = Reader::leader;
    next->cv.notify_one();
    return;
  }
  if (async_pending_ > 0) start_runner_reading_locked();
}

// m_ held: the link's thread becomes the reader. It runs: an asynchronous request (which every
// reading by it is for) started it before it was pending.
void Link::start_runner_reading_locked() {
  reader_ = Reader::runner;
  asio::post(runner_->ctx, [this, self = shared_from_this()] { read_next(); });
}

// ---- writing --------------------------------------------------------------------------------

namespace {
// The most a link keeps of a written buffer once its write is done: a large request's (4 MiB)
// too, as a new one page-faults every page (BM_ProxyLargeArgument: 1.61 -> 2.52 GB/s with 16 MiB
// kept instead of 1). The queue's buffer keeps what it grew to until it is swapped for a
// written one (a write of everything queued), so a burst of large requests leaves a link
// holding about twice this.
constexpr std::size_t kKeptBufferBytes = std::size_t{16} << 20;
}  // namespace

void Link::write(std::vector<std::byte>&& frame, bool gather) {
  const std::span<const std::byte> bytes(frame);
  struct Keep {  // the frame's buffer, for the thread's next one, once its bytes are done with
    std::vector<std::byte>& frame;
    ~Keep() { keep_frame(frame); }
  } keep{frame};
  std::unique_lock lock(wm_);
  if (gather || !direct_ || writing_ || out_queued_locked() || on_link_thread()) {
    // The link's thread writes it (it must never block in a write: it reads too). Its end's
    // room first: once its bytes are in, nothing may fail (a frame without its end would run
    // into the next one's bytes).
    out_ends_.reserve(out_ends_.size() + 1);
    out_bytes_.insert(out_bytes_.end(), bytes.begin(), bytes.end());
    out_ends_.push_back(out_bytes_.size());
    schedule_pump_locked();
    return fail_if_no_runner(lock);
  }
  writing_ = true;
  lock.unlock();
  std::string failed;
  try {
    conn_->send_bytes(bytes);
  } catch (const std::exception& e) {
    failed = e.what();
  }
  lock.lock();
  writing_ = false;
  if (!failed.empty()) {
    clear_out_locked();
    notify_drained_locked(lock);
    lock.unlock();
    return die("sending failed: " + failed);
  }
  if (!out_queued_locked())
    notify_drained_locked(lock);
  else
    schedule_pump_locked();
  fail_if_no_runner(lock);
}

// wm_ held: drops the frames already taken from the queue (when they are over half its bytes:
// each byte is moved at most once on average).
void Link::compact_out_locked() {
  const std::size_t base = out_first_ == 0 ? 0 : out_ends_[out_first_ - 1];
  out_bytes_.erase(out_bytes_.begin(), out_bytes_.begin() + static_cast<std::ptrdiff_t>(base));
  out_ends_.erase(out_ends_.begin(), out_ends_.begin() + static_cast<std::ptrdiff_t>(out_first_));
  for (auto& e : out_ends_) e -= base;
  out_first_ = 0;
}

// wm_ held (released here): if the link's thread could not start for a queued write, the link
// dies, failing what waits on it.
void Link::fail_if_no_runner(std::unique_lock<std::mutex>& lock) {
  if (runner_error_.empty()) return;
  const std::string why = std::exchange(runner_error_, {});
  lock.unlock();
  die("its thread could not start (" + why + ")");
}

// wm_ held.
void Link::schedule_pump_locked() {
  if (writing_ || pump_posted_ || !out_queued_locked()) return;
  try {
    ensure_runner();
  } catch (const std::exception& e) {
    // Out of threads: what was queued cannot go; write() fails the link once wm_ is released
    // (this may run in a proxy's destructor, which must not throw).
    clear_out_locked();
    runner_error_ = e.what();
    return;
  }
  pump_posted_ = true;
  asio::post(runner_->ctx, [this, self = shared_from_this()] { pump(); });
}

// wm_ held: releases it while the waiters run.
void Link::notify_drained_locked(std::unique_lock<std::mutex>& lock) {
  if (drained_.empty()) return;
  auto waiting = std::move(drained_);
  drained_.clear();
  lock.unlock();
  for (auto& f : waiting) f();
  lock.lock();
}

// On the link's thread.
void Link::pump() {
  std::unique_lock lock(wm_);
  pump_posted_ = false;
  if (writing_) return;  // a caller writes; it schedules the rest when done
  if (!out_queued_locked()) return notify_drained_locked(lock);
  {
    std::scoped_lock dl(m_);
    if (dead_) {
      clear_out_locked();
      return notify_drained_locked(lock);
    }
  }
  writing_ = true;
  // Everything queued, in one gathered write (bounded: the rest goes in the next one).
  constexpr std::size_t max_frames = 512;
  constexpr std::size_t max_bytes = std::size_t{4} << 20;
  const std::size_t first = out_first_;
  const std::size_t base = first == 0 ? 0 : out_ends_[first - 1];  // where its bytes begin
  std::size_t n = first + 1;  // one past the last frame written now
  while (n < out_ends_.size() && n - first < max_frames && out_ends_[n] - base <= max_bytes) ++n;
  const std::size_t end = out_ends_[n - 1];
  if (first == 0 && n == out_ends_.size())
    sending_bytes_.swap(out_bytes_);  // all of it (both keep what they have grown to)
  else
    sending_bytes_.assign(out_bytes_.begin() + static_cast<std::ptrdiff_t>(base),
                          out_bytes_.begin() + static_cast<std::ptrdiff_t>(end));
  sending_spans_.clear();
  for (std::size_t i = first, at = base; i < n; at = out_ends_[i++])
    sending_spans_.emplace_back(sending_bytes_.data() + (at - base), out_ends_[i] - at);
  out_first_ = n;
  if (!out_queued_locked())
    clear_out_locked();
  else if (end > out_bytes_.size() / 2)
    compact_out_locked();
  lock.unlock();
  conn_->async_send_messages(std::span<const std::span<const std::byte>>(sending_spans_),
                             [this, self = shared_from_this()](boost::system::error_code ec) {
                               std::unique_lock lock(wm_);
                               writing_ = false;
                               sending_bytes_.clear();
                               // A burst's buffer is not kept (the next swap would keep it).
                               if (sending_bytes_.capacity() > kKeptBufferBytes)
                                 std::vector<std::byte>().swap(sending_bytes_);
                               if (ec) {
                                 clear_out_locked();
                                 notify_drained_locked(lock);
                                 lock.unlock();
                                 return die("sending failed: " + ec.message());
                               }
                               if (!out_queued_locked())
                                 notify_drained_locked(lock);
                               else
                                 schedule_pump_locked();
                             });
}

void Link::flush(std::chrono::nanoseconds timeout) {
  if (on_link_thread()) return;
  if (python_) return python_->flush(timeout);
  {
    std::scoped_lock lock(m_);
    if (dead_ || troupe::internal::runtime::process_id() != pid_) return;
  }
  auto done = std::make_shared<std::promise<void>>();
  auto drained = done->get_future();
  {
    std::scoped_lock lock(wm_);
    // A request this thread wrote itself is on the socket already; one queued (behind another
    // thread's write, or the link's) is written before the queue is empty again.
    if (!writing_ && !out_queued_locked()) return;
    drained_.push_back([done] { done->set_value(); });
  }
  drained.wait_for(timeout);
}

// ---- reading --------------------------------------------------------------------------------

void Link::read_next() {
  // Not holding the link: its last owner (a caller that got its reply) destroys it on its own
  // thread, which joins this one. But on_frame() runs the calls' handlers, and one that drops
  // the last proxy destroys the link here, on this thread: the runner (which outlives it) says
  // so, and nothing of the link is touched after that. (The runner lives while its thread runs
  // handlers: the thread holds it.)
  conn_->async_recv_bytes(
      [this, r = runner_.get()](boost::system::error_code ec, std::vector<std::byte> bytes) {
        // The completions of this read's replies (or of the link's death) posted together.
        const GatherCompletions gather;
        if (ec) {
          if (ec == asio::error::operation_aborted) return die("the link was closed");
          const bool eof = std::error_code(ec) == troupe::errc::eof_error;
          return die(eof ? "it closed the connection" : "reading failed: " + ec.message());
        }
        last_heard_.store(std::chrono::steady_clock::now().time_since_epoch().count());
        bool go_on = on_frame(std::move(bytes));
        if (r->link_gone.load(std::memory_order_acquire)) return;
        // The replies that came in the same read (a server's gathered write) are taken here,
        // without a trip through the scheduler each.
        for (int n = 0; go_on && n < 512; ++n) {
          // Read into a frame of this thread's that nobody holds (no allocation).
          std::shared_ptr<Frame> more;
          try {
            more = internal::read_frame_reusing(
                [&](std::vector<std::byte>& out) { return conn_->recv_buffered_into(out); });
          } catch (const std::exception& e) {
            malformed_reply(e);
            return;
          }
          if (!more) break;
          go_on = on_reply(std::move(more));
          if (r->link_gone.load(std::memory_order_acquire)) return;
        }
        {
          std::scoped_lock lock(m_);
          if (dead_) return;
          // Plain sockets: this thread reads while asynchronous requests are owed; then a
          // waiting blocking caller reads, or nobody.
          if (direct_ && async_pending_ == 0) return release_reading_locked();
        }
        read_next();
      });
}

// m_ held (ids are never reused).
void Link::add_pending_locked(std::uint64_t id, Pending p) {
  troupe::detail::insert_reusing(pending_, spare_pending_, id, std::move(p));
}

// m_ held: removes a pending call, keeping its node.
Link::Pending Link::take_pending_locked(decltype(pending_)::iterator it) {
  return troupe::detail::take_reusing(pending_, spare_pending_, it);
}

bool Link::on_frame(std::vector<std::byte> bytes) {
  std::shared_ptr<Frame> frame;
  try {
    frame = internal::parse_frame_reusing(std::move(bytes));
  } catch (const std::exception& e) {
    return malformed_reply(e);
  }
  return on_reply(std::move(frame));
}

bool Link::malformed_reply(const std::exception& e) {
  die(std::string("it sent a malformed reply (") + e.what() + ")");
  return false;
}

bool Link::on_reply(std::shared_ptr<Frame> frame) {
  std::uint64_t id = 0;
  try {
    id = frame->root<proto::manager::Reply>().getCallId();
  } catch (const std::exception& e) {
    return malformed_reply(e);
  }
  Pending p;
  bool more;
  {
    std::scoped_lock lock(m_);
    auto it = pending_.find(id);
    if (it != pending_.end()) {
      p = take_pending_locked(it);
      if (p.handler) --async_pending_;
    }
    // Decided here, in the one lock a reply takes: only the reader (this thread while it reads)
    // lowers async_pending_, a caller's request meanwhile can only make "go on" truer, and a
    // die() meanwhile costs at most one more (harmless) look at the buffer.
    more = !dead_ && !(direct_ && async_pending_ == 0);
  }
  if (p.handler || p.sync) {
    if (p.sync) post_gathered_now();
    complete(p, nullptr, std::move(frame));
    return more;
  }
  // The failure of a request without a reply (a decref, a claim): logged. (A reply nobody
  // waits for that is not an error is dropped.)
  log_if_refused(address_text_, *frame);
  return more;
}

// Any thread. The link is dead from here on: what is pending fails with the reason.
void Link::die(const std::string& why) {
  if (python_) return python_->close(why);
  std::unordered_map<std::uint64_t, Pending> pending;
  {
    std::scoped_lock lock(m_);
    if (!dead_) {
      dead_ = true;
      why_dead_ = why;
    }
    pending.swap(pending_);
    async_pending_ = 0;
  }
  if (direct_) {
    // Another thread may be inside a read or a write on the connection: shutting the socket
    // down ends both (closing it here could not); ~Link closes it.
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  } else {
    conn_->close();  // on the link's thread, the only one that uses the connection
  }
  {
    std::unique_lock lock(wm_);
    clear_out_locked();
    notify_drained_locked(lock);
  }
  if (on_link_thread()) {
    if (runner_->heartbeat) runner_->heartbeat->cancel();
  } else if (runner_->started.load(std::memory_order_acquire)) {
    asio::post(runner_->ctx, [r = runner_.get()] {
      if (r->heartbeat) r->heartbeat->cancel();
    });
  }
  if (!pending.empty()) {
    auto e = dead_error();
    for (auto& [id, p] : pending) complete(p, e, nullptr);
  }
}

}  // namespace troupe::multiprocessing::managers::detail

namespace troupe::multiprocessing::managers {

Lane::Lane() noexcept : id_(detail::new_lane()) {}

Lane::Scope::Scope(const Lane& lane) noexcept
    : saved_(std::exchange(detail::tl_scoped_lane, lane.id())) {}

Lane::Scope::~Scope() {
  detail::tl_scoped_lane = saved_;
}

}  // namespace troupe::multiprocessing::managers
