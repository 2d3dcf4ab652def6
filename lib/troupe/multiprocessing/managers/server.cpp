// The object host (server.hpp): connections, lanes, the object table and its references.
#include "troupe/multiprocessing/managers/server.hpp"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <boost/asio/defer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <capnp/serialize.h>

#include "troupe/codec.hpp"
#include "troupe/detail/futex.hpp"
#include "troupe/detail/node_cache.hpp"
#include "troupe/error_envelope.hpp"
#include "troupe/internal/cpus.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/internal/framing.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/managers/detail/not_exposed.hpp"
#include "troupe/multiprocessing/managers/detail/pickle.hpp"
#include "troupe/multiprocessing/managers/detail/waits.hpp"
#include "troupe/multiprocessing/managers/internal/python_dialect.hpp"
#include "troupe/multiprocessing/managers/internal/ref_proxy.hpp"
#include "troupe/multiprocessing/managers/internal/wire.hpp"
#include "troupe/multiprocessing/process.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

namespace troupe::multiprocessing::managers {

namespace asio = boost::asio;
using detail::CallInfo;
using detail::Completion;
using detail::CompletionPtr;
using detail::HostedObject;
using detail::Item;
namespace python = internal::python;
using detail::TypeEntry;
using internal::Frame;

namespace {

Logger& mlog() {
  return get_logger();
}

std::string object_name(std::string_view typeid_, std::uint64_t id) {
  return std::string(typeid_) + "#" + std::to_string(id);
}

// What a call's errors name: the call ("Maths.add", or "create(Maths)"), the object
// ("Maths#3"), the kinds of its arguments. Kept as parts, and written out only when an error is
// reported (a call that succeeds, the usual case, builds none of these strings).
struct CallText {
  std::string typeid_;
  std::string method;              // empty: a create of typeid_
  std::uint64_t object = 0;        // 0: none (a create)
  std::shared_ptr<Frame> request;  // troupe's dialect: the request, whose arguments are named
  std::string arguments;           // CPython's dialect: their summary

  std::string call() const {
    return method.empty() ? "create(" + typeid_ + ")" : typeid_ + "." + method;
  }
  std::string object_name() const {
    return object ? ::troupe::multiprocessing::managers::object_name(typeid_, object)
                  : std::string();
  }
  std::string argument_kinds() const {
    if (!request) return arguments;
    try {
      auto r = request->root<proto::manager::Request>();
      if (r.isCall()) return detail::argument_kinds(r.getCall().getArgs());
      if (r.isCreate()) return detail::argument_kinds(r.getCreate().getArgs());
    } catch (const std::exception&) {
    }
    return {};
  }
};

// Python's repr() and str() of a managed object: answered by the server for every object
// (string_view compares: a length first, no strlen, inline).
bool is_repr(std::string_view method) noexcept {
  return method == "__repr__" || method == "__str__";
}
// The methods every object answers, exposed or not: _getvalue() and repr/str.
bool answered_unexposed(std::string_view method) noexcept {
  return method == "#GETVALUE" || is_repr(method);
}

// Whether `e` was raised outside the method (CPython's '#TRACEBACK'): a method not exposed, or
// an error made a RemoteError (remote_error()).
bool raised_outside(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const detail::NotExposed&) {
    return true;
  } catch (const RemoteError&) {
    return true;
  } catch (...) {
    return false;
  }
}

// An error raised outside the method (in a create, for an object or a method the server does
// not have), as CPython's server sends it: RemoteError, whose text names the error ("KeyError:
// ...").
std::exception_ptr remote_error(const std::exception_ptr& e) noexcept {
  try {
    try {
      std::rethrow_exception(e);
    } catch (const RemoteError&) {
      return e;
    } catch (...) {
    }
    const ErrorEnvelope error = ErrorEnvelope::capture(e, {});
    std::string type = error.type_name;
    if (const auto dot = type.rfind('.'); dot != std::string::npos) type = type.substr(dot + 1);
    return std::make_exception_ptr(RemoteError(type + ": " + error.message));
  } catch (...) {
    return e;
  }
}

}  // namespace

struct ServerConn;

// A connection thread's io_context, and the threads that run it: the thread of its own, and
// helpers the server starts while a registered class's calls hold every one of them (a call
// that may block runs on the thread that read it, as Python runs each connection's calls on the
// connection's thread; a call that keeps its thread leaves the other connections to a helper).
struct IoSlot {
  asio::io_context io;          // run by several threads at times: no single-thread hint
  std::atomic<int> runners{1};  // threads running io: its own, and the helpers
  std::atomic<int> busy{0};     // of them, those inside a registered class's call
  std::atomic<int> conns{0};    // the connections it serves
  // Calls begun and ended on io: unchanged between two looks of the monitor while every runner is
  // busy, those calls are holding their threads.
  std::atomic<std::uint64_t> events{0};
  std::uint64_t events_seen = 0;  // the monitor's
  std::mutex leave_m;             // a helper's decision to leave
  // The connection its own thread reads itself while it spins (Server::Impl's "hot
  // connection"), under hot_m: taken out of it to read it, to cool it, or by close_conn.
  std::mutex hot_m;
  std::shared_ptr<ServerConn> hot;
  // The own thread's spin, and its spinner's end (written by whichever thread ran it).
  troupe::detail::AdaptiveSpin spin;
  std::atomic<int> spinner{0};  // 0 queued, 1 found work, 2 spun in vain
};

// One client connection: its reads and writes, lanes and in-flight calls, on its strand.
struct ServerConn : std::enable_shared_from_this<ServerConn> {
  std::uint64_t id = 0;
  IoSlot* slot = nullptr;  // the connection thread it is served by (null on a user's executor)
  Connection conn;
  ConnStrand strand;
  std::string peer;                  // "pid 123 (name) on host"
  std::atomic<bool> greeted{false};  // written on the strand, read by connection_count()
  bool closing = false;              // on the strand: no more reads; close once the writes are out
  std::deque<std::vector<std::byte>> out;
  std::vector<std::vector<std::byte>> sending;  // the replies of the write in progress
  // What is left of that write (a plain socket's; the server writes those itself): the frames'
  // length headers, and the buffers not yet taken. Kept, so that a write allocates nothing.
  std::vector<unsigned char> headers;
  std::vector<iovec> unsent;
  // Small written replies' buffers, emptied, for the replies of calls that end on the strand:
  // a reply then allocates nothing (at most kSpareReplies, none over kSpareReplyBytes; kept
  // only by a connection that has made such a reply, so that one whose calls end elsewhere, or
  // a CPython client's, keeps none; let go when it closes).
  static constexpr std::size_t kSpareReplies = 64;
  static constexpr std::size_t kSpareReplyBytes = 1024;
  std::vector<std::vector<std::byte>> spare_replies;
  bool takes_spares = false;
  void keep_spare(std::vector<std::byte>&& b) {
    if (!takes_spares || b.capacity() == 0 || b.capacity() > kSpareReplyBytes ||
        spare_replies.size() >= kSpareReplies)
      return;
    b.clear();
    spare_replies.push_back(std::move(b));
  }
  std::vector<std::byte> take_spare() {
    takes_spares = true;
    if (spare_replies.empty()) return {};
    auto b = std::move(spare_replies.back());
    spare_replies.pop_back();
    return b;
  }
  bool writing = false;
  bool pump_deferred = false;
  bool in_batch = false;  // a handler is making replies: it writes them when it is done (Batch)
  struct Lane {
    std::deque<std::function<void()>> queue;
    bool busy = false;
  };
  std::unordered_map<std::uint64_t, Lane> lanes;
  // Calls queued or running (for cancel, and the in-flight limit); on the strand.
  struct Running {
    std::shared_ptr<HostedObject> object;  // null: a create
    std::uint64_t lane = 0;                // the lane the call came on: its Caller's
    std::optional<asio::strand<asio::any_io_executor>> serial;  // a serialized typeid's strand
    std::size_t bytes = 0;                                      // the request's, held until done
  };
  std::unordered_map<std::uint64_t, Running> running;
  // The map node of the last call that ended, emptied, for the next call: a call allocates none.
  decltype(running)::node_type spare_running;
  // Notes call `id` as running (the caller has checked that it is not: admit()).
  void start_running(std::uint64_t id, Running r) {
    troupe::detail::insert_reusing(running, spare_running, id, std::move(r));
  }
  // Call `it` has ended: its request's bytes are no longer held (its object's reference goes
  // with the value taken), and its node is kept.
  void end_running(decltype(running)::iterator it) {
    held_bytes -= it->second.bytes;
    (void)troupe::detail::take_reusing(running, spare_running, it);
  }
  // Backpressure (on the strand): bytes of requests held (queued or running) and of replies not
  // yet written; over the server's budget, reading pauses until they drain.
  std::size_t held_bytes = 0;
  std::size_t out_bytes = 0;
  bool read_paused = false;
  // Under the server's mutex: references held (object id → count), and whether it is gone.
  std::unordered_map<std::uint64_t, std::uint64_t> held;
  bool released = false;
  // CPython's dialect (the first message was a pickle; on the strand): the pickle protocol its
  // replies use (the client's, 4 or 5), whether accept_connection made it a proxy's connection
  // (method calls) rather than one for the server's functions, and its calls' ids.
  bool python = false;
  bool python_calls = false;
  int python_protocol = 4;
  std::uint64_t python_call_ids = 0;

  explicit ServerConn(const asio::any_io_executor& ex) : strand(ex) {}
};

// On the strand, while a handler makes replies (a read's requests, a call's end): enqueue() only
// queues them, and the handler writes them once it is done (not deferred: that costs a turn of
// the io_context, and a poll of its reactor, per reply). Restores the flag however it ends.
class Batch {
public:
  explicit Batch(ServerConn& c) noexcept : c_(c), outer_(!c.in_batch) { c_.in_batch = true; }
  ~Batch() {
    if (outer_) c_.in_batch = false;
  }
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  /// Whether this is the outermost batch (the one that writes).
  bool outer() const noexcept { return outer_; }

private:
  ServerConn& c_;
  bool outer_;
};

class Server::Impl : public std::enable_shared_from_this<Server::Impl>, public detail::RefHost {
public:
  Impl(const Registry& registry, std::optional<Address> address, ServerOptions options,
       asio::any_io_executor ex)
      : registry_(registry), options_(std::move(options)) {
    // Python's Server always authenticates (its authkey defaults to the process's): an abstract
    // name has no file permissions, so a server without a key would serve any local user.
    if (!options_.listener.authkey) options_.listener.authkey = current_process().authkey();
    user_executor_ = static_cast<bool>(ex);
    if (!ex) {
      own_ = std::make_unique<asio::io_context>();
      ex = own_->get_executor();
      // The connections' I/O: an io_context per thread, each connection on one of them. A
      // request is read, its call run and its reply written on that one thread, with no other
      // thread to wake (a shared multi-threaded io_context wakes a second thread for each
      // event, a context switch per call that costs more than the call).
      for (unsigned i = 0; i < thread_count(); ++i) io_.push_back(std::make_unique<IoSlot>());
    }
    ex_ = ex;
    if (!address)
      address = Address::parse("unix-abstract:troupe-manager-" + std::to_string(::getpid()) + "-" +
                               std::to_string(counter_++) + "-" + random_hex(6));
    listener_.emplace(*address, options_.listener);
    keep_alive(listener_->fileno());  // the connections it accepts inherit the setting
    // Accepting and the handshake run on a connection thread (helped while calls hold it, see
    // run_may_block), not on the pool, which serialized calls that block may hold: a client
    // must get in to release them.
    listener_->set_executor(io_.empty() ? ex_
                                        : asio::any_io_executor(io_.front()->io.get_executor()));
    address_ = listener_->address();
    address_text_ = address_.str();
  }

  ~Impl() override = default;

  // ---- lifecycle ---------------------------------------------------------------------------

  void start() {
    std::scoped_lock life(life_m_);  // a concurrent stop() waits until the threads exist
    std::unique_lock lock(m_);
    if (started_ || stopped_) return;  // a stop() that came first wins: nothing starts after it
    started_ = true;
    lock.unlock();
    accept_next();
    schedule_sweep();
    if (own_) {
      work_.emplace_back(own_->get_executor());
      for (auto& slot : io_) work_.emplace_back(slot->io.get_executor());
      own_threads_ = thread_count();
      {
        std::scoped_lock grow(grow_m_);  // before any thread runs a call that arms it
        grow_timer_.emplace(io_.front()->io.get_executor());
      }
      for (unsigned i = 0; i < own_threads_; ++i)
        threads_.emplace_back(&Impl::run_thread, this, own_.get());
      for (auto& slot : io_) threads_.emplace_back(&Impl::run_slot, this, slot.get());
      monitor_ = std::thread(&Impl::monitor, this);
    }
  }

  // The longest a server thread sleeps in its io_context before it looks at the queue again.
  // When several threads run one io_context (the pool; a connection thread and its helpers), an
  // idle one sleeps on the io_context's condition variable and is woken by a signal for each
  // handler posted. With Debian 12's glibc (2.36) such a signal can be lost when several threads
  // wait on one condition variable (glibc bug 25847): the suspect of a stall seen in three runs
  // in a row, then in none of eight, of the 1000-clients benchmark (managers_bench
  // --clients-memory: for more than 6 s one connection thread served nothing, so the objects of
  // its half of the clients were released late, and a client could not connect in 10 s, until
  // later traffic woke it). A bounded sleep turns such a loss into a delay of at most this; a
  // thread that runs its reactor (the usual case) sleeps in epoll_wait, also bounded by this.
  static constexpr auto kLongestSleep = std::chrono::milliseconds(500);

  void run_thread(asio::io_context* io) {
    serve_logging([io] {
      while (!io->stopped()) io->run_for(kLongestSleep);
    });
  }

  // A connection thread. Its hot connection goes back to the reactor whenever the spinning
  // ends, so its next request is read meanwhile.
  void run_slot(IoSlot* slot) {
    tl_spin_slot_ = slot;
    serve_logging([this, slot] { run_spinning(*slot); }, [this, slot] { cool(*slot); });
  }

  // A server thread's body: runs `serve` until it returns; an exception that escapes a handler
  // is logged and `serve` runs on. `after` runs each time serve ends, either way.
  template <class Serve, class After = void (*)()>
  void serve_logging(
      Serve serve, After after = [] {}) {
    tl_server_ = this;
    for (;;) {
      try {
        serve();
        after();
        return;
      } catch (const std::exception& e) {
        after();
        mlog().error(std::string("manager server: an exception escaped a handler: ") + e.what());
      }
    }
  }

  // ---- serialized calls: the pool grows while such calls hold it all ------------------------

  // A serialized typeid's call (on its object's strand, on the pool), which may block as long as
  // it likes; or, on a user's executor, any registered class's call. Python gives each client
  // connection a thread, so a call that waits for another client's call always lets that one
  // run; here, when calls wait and none has started for kGrowAfter (every pool thread is held by
  // one that blocks: short calls keep starting, however many wait), one more thread starts (up
  // to ServerOptions::max_threads, logged), so the waiting calls run. A call queued on its
  // object's strand behind a long one counts as waiting too. The check runs on the first
  // connection thread's io_context, only while calls wait.
  static constexpr auto kGrowAfter = std::chrono::milliseconds(50);

  template <class Executor>
  void post_blocking(const Executor& to, std::function<void()> run) {
    if (!own_) return asio::post(to, std::move(run));
    blocking_queued_.fetch_add(1, std::memory_order_relaxed);
    asio::post(to, [this, run = std::move(run)] {
      blocking_queued_.fetch_sub(1, std::memory_order_relaxed);
      blocking_starts_.fetch_add(1, std::memory_order_relaxed);
      run();
    });
    if (!grow_armed_.load(std::memory_order_relaxed)) arm_growth();  // no lock when armed
  }

  void arm_growth() {
    std::scoped_lock lock(grow_m_);
    if (grow_armed_.load(std::memory_order_relaxed) || !grow_timer_) return;
    grow_armed_.store(true, std::memory_order_relaxed);
    // Each thread the pool grew by doubles the wait before the next (up to 64 times): calls
    // that block all the threads get a few more at once; long calls that merely keep them busy
    // (Python would run them on threads of their own too) grow it slowly.
    const unsigned grown = own_threads_.load() - std::min(own_threads_.load(), thread_count());
    grow_timer_->expires_after(kGrowAfter * (1u << std::min(grown, 6u)));
    grow_timer_->async_wait([this, self = weak_from_this()](boost::system::error_code ec) {
      auto server = self.lock();
      if (!server) return;
      grow_armed_.store(false, std::memory_order_relaxed);
      if (!ec) grow_if_starved();
    });
  }

  // On the first connection thread's io_context (the timer's), once per kGrowAfter while calls
  // wait.
  void grow_if_starved() {
    if (blocking_queued_.load(std::memory_order_relaxed) == 0) return;  // none waits: stop
    const std::uint64_t starts = blocking_starts_.load(std::memory_order_relaxed);
    const bool starved = starts == starts_seen_;
    starts_seen_ = starts;
    if (starved) {
      {
        // stop() may run this handler itself, in its last polls, holding life_m_.
        std::scoped_lock lock(m_);
        if (stopped_) return;
      }
      // Not while start() or stop() runs (stop() joins this thread: waiting here would deadlock).
      std::unique_lock life(life_m_, std::try_to_lock);
      if (!life) return;
      if (own_threads_ >= std::max(options_.max_threads, thread_count())) {
        if (!warned_max_threads_.exchange(true))
          mlog().warning("manager server at " + address_text_ + ": all " +
                         std::to_string(own_threads_.load()) +
                         " threads (ServerOptions::max_threads) are held by calls that block; "
                         "more calls wait behind them");
        return;
      }
      threads_.emplace_back(&Impl::run_thread, this, own_.get());
      own_threads_.fetch_add(1);
      mlog().info("manager server at " + address_text_ + ": " +
                  std::to_string(own_threads_.load()) +
                  " threads now: every other one was held by a call that blocks");
    }
    arm_growth();  // look again while calls wait
  }

  // ---- calls that may block, on the connection threads: helpers while they hold them --------

  // A registered class's call (or constructor) on the server's own threads: run by the
  // connection thread that read it, after the handler that read it (outside the connection's
  // strand, so that the connection reads on), with no hand-off to another thread and back (two
  // context switches, most of a round trip). Such a call may block as long as it likes: while
  // every thread of its io_context is inside one and none began or ended for kHandOffAfter, the
  // monitor starts a helper thread on that io_context (up to ServerOptions::max_threads), which
  // serves its other connections (and the next calls of this one's other lanes), and leaves when
  // another of its threads is free again. Python gives each connection a thread of its own.
  static constexpr auto kHandOffAfter = std::chrono::milliseconds(2);

  void run_may_block(const std::shared_ptr<ServerConn>& sc, std::function<void()> run) {
    IoSlot* slot = sc->slot;
    if (!slot) return post_blocking(ex_, std::move(run));
    asio::post(slot->io.get_executor(), [this, slot, run = std::move(run)] {
      struct Scope {
        Impl& server;
        IoSlot& slot;
        IoSlot* spin_slot = std::exchange(tl_spin_slot_, nullptr);
        explicit Scope(Impl& s, IoSlot& io) : server(s), slot(io) {
          // A hot connection is not left unread while its reader is held: the reactor reads it
          // (a helper serves it if this call blocks), and none becomes hot meanwhile (a call
          // that ends another connection's call may resume that one's reading).
          if (spin_slot == &slot) server.cool(slot);
          slot.busy.fetch_add(1);
          slot.events.fetch_add(1, std::memory_order_relaxed);
          server.busy_total_.fetch_add(1);  // then look at monitor_deep_ (see monitor())
          if (server.monitor_deep_.load()) server.wake_monitor();
        }
        ~Scope() {
          server.busy_total_.fetch_sub(1);
          slot.events.fetch_add(1, std::memory_order_relaxed);
          slot.busy.fetch_sub(1);
          tl_spin_slot_ = spin_slot;
        }
      } scope(*this, *slot);
      run();
    });
  }

  struct Helper {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  // The monitor's thread: looks every kHandOffAfter while calls run, and sleeps while none has
  // run for a while (a call that begins wakes it).
  void monitor() {
    std::unique_lock lock(mon_m_);
    int idle = 0;
    while (!mon_stop_) {
      mon_cv_.wait_for(lock, kHandOffAfter);
      if (mon_stop_) break;
      lock.unlock();
      reap_helpers();
      bool any = false;
      for (auto& slot : io_) {
        const int busy = slot->busy.load();
        const std::uint64_t events = slot->events.load();
        const bool held = busy > 0 && busy >= slot->runners.load() && events == slot->events_seen;
        slot->events_seen = events;
        any = any || busy > 0;
        if (held) add_helper(*slot);
      }
      lock.lock();
      if (any || !helpers_.empty()) {
        idle = 0;
      } else if (++idle >= 100) {
        // Dekker with a call's Scope: deep is set before busy_total_ is read, busy_total_ is
        // raised before deep is read: a call that begins now either is seen here or wakes us.
        monitor_deep_.store(true);
        if (busy_total_.load() == 0)
          mon_cv_.wait(lock, [&] { return mon_stop_ || !monitor_deep_.load(); });
        monitor_deep_.store(false);
        idle = 0;
      }
    }
  }

  void wake_monitor() {
    {
      std::scoped_lock lock(mon_m_);
      monitor_deep_.store(false);
    }
    mon_cv_.notify_one();
  }

  void stop_monitor() {
    {
      std::scoped_lock lock(mon_m_);
      mon_stop_ = true;
    }
    mon_cv_.notify_one();
    if (monitor_.joinable()) monitor_.join();
  }

  // On the monitor's thread: helpers that have left are joined.
  void reap_helpers() {
    std::erase_if(helpers_, [](const std::unique_ptr<Helper>& h) {
      if (!h->done.load()) return false;
      h->thread.join();
      return true;
    });
  }

  // On the monitor's thread: one more thread runs `slot`'s io_context. Also while stop() waits
  // for the connections to close (a helper lets those of a held thread close); not after it
  // has stopped the monitor.
  void add_helper(IoSlot& slot) {
    if (helpers_.size() >= std::max(options_.max_threads, 1u)) {
      if (!warned_max_helpers_.exchange(true))
        mlog().warning("manager server at " + address_text_ + ": " +
                       std::to_string(helpers_.size()) +
                       " helper threads (ServerOptions::max_threads), each held by a call that "
                       "blocks; the other connections of a held thread wait behind it");
      return;
    }
    slot.runners.fetch_add(1);
    try {
      auto h = std::make_unique<Helper>();
      h->thread = std::thread(&Impl::run_helper, this, &slot, h.get());
      helpers_.push_back(std::move(h));
    } catch (const std::exception& e) {  // no thread to be had (EAGAIN) or no memory
      slot.runners.fetch_sub(1);
      mlog().warning("manager server at " + address_text_ +
                     ": could not start a helper thread: " + e.what());
    }
  }

  // A helper's loop: serves `slot` until another of its threads is free.
  void run_helper(IoSlot* slot, Helper* h) {
    tl_server_ = this;
    while (!slot->io.stopped()) {
      try {
        slot->io.run_one_for(std::chrono::milliseconds(100));
      } catch (const std::exception& e) {
        mlog().error(std::string("manager server: an exception escaped a handler: ") + e.what());
      }
      // Free: this one and at least one more.
      if (slot->busy.load() + 1 < slot->runners.load()) {
        std::scoped_lock lock(slot->leave_m);
        if (slot->busy.load() + 1 < slot->runners.load()) {
          slot->runners.fetch_sub(1);
          break;
        }
      }
    }
    h->done.store(true);
  }

  void request_shutdown() noexcept {
    {
      std::scoped_lock lock(m_);
      if (stopped_) return;  // stop() has closed everything (and may have ended the executor)
      shutdown_requested_ = true;
      flush_on_close_ = true;  // whichever close comes first (this one's or stop()'s)
      // Stop accepting at once: a client that asked for shutdown expects no new peers. The
      // replies already made still go out (a getter handed the item a client put just before
      // its shutdown gets it), then each connection closes. Posted under m_: a stop() on
      // another thread (which sets stopped_ under m_, then frees the executor) comes after it.
      asio::post(ex_, [self = weak_from_this()] {
        if (auto s = self.lock()) s->close_all();
      });
    }
    cv_.notify_all();
  }

  bool shutdown_requested() const {
    std::scoped_lock lock(m_);
    return shutdown_requested_;
  }

  void wait_for_shutdown() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return shutdown_requested_; });
  }

  // A connection thread's loop: io.run(), except that before sleeping in the reactor it polls
  // for a while (an adaptive budget, DESIGN.md "Waiting"), as Connection's reads do: a client's
  // next request often comes within microseconds, and a thread asleep in epoll_wait costs a
  // wake-up that on a virtual machine with idle CPUs takes tens of microseconds. While it has a
  // hot connection, it spins in a handler of its own (spin_hot).
  void run_spinning(IoSlot& slot) {
    auto& io = slot.io;
    auto& spin = slot.spin;
    while (!io.stopped()) {
      // spin() polls first (once, when it may not spin): one poll of the reactor, not two,
      // before the sleep.
      if (has_hot(slot) ? spin_hot(slot) : spin_polling(spin, [&] { return io.poll() > 0; }))
        continue;
      if (io.run_one_for(kLongestSleep) > 0) {
        spin.woke();
      } else if (io.poll() > 0) {
        // Rarely a coincidence (work that came just as the sleep ended); else a lost wake-up:
        // said once as a warning (so that it shows), then at debug level.
        static std::atomic<bool> warned{false};
        const char* what =
            "manager server: a connection thread found work queued after a full sleep of 500 ms "
            "(a lost wake-up?)";
        if (!warned.exchange(true))
          mlog().warning(what);
        else if (mlog().is_enabled_for(logging::DEBUG))
          mlog().debug(what);
      }
    }
  }

  // ---- a connection thread's hot connection ------------------------------------------------
  //
  // A connection thread that has answered a plain socket's requests, and would spin before it
  // sleeps, keeps that connection "hot": it receives on it itself while it spins
  // (Connection::try_fill) rather than starting an Asio receive. The reactor would take two
  // system calls from the request's arrival to its handling (epoll_wait says the socket has
  // bytes, then the receive), this takes one: 2.3 us of a round trip on this project's VMs.
  // The spin runs in a handler of the io_context (spin_hot), so that the request is taken on
  // the connection's strand at once; the thread's other connections are served by polls of the
  // io_context from that handler. The connection is cooled (an Asio receive started, as before)
  // when the spin ends in vain, before a call that may block holds the thread (run_may_block),
  // and when the thread leaves; close_conn takes it out first. One hot connection a thread.

  static inline thread_local IoSlot* tl_spin_slot_ = nullptr;  // a connection thread's slot
  static constexpr unsigned kHotPollEvery = 4;

  // In read_next, on the strand: makes `sc` its thread's hot connection instead of starting a
  // receive, when this is its connection thread and it would spin. False: read as before.
  bool make_hot(const std::shared_ptr<ServerConn>& sc) {
    IoSlot* slot = sc->slot;
    if (!slot || tl_spin_slot_ != slot || !troupe::detail::AdaptiveSpin::would_spin()) return false;
    std::scoped_lock lock(slot->hot_m);
    if (slot->hot) return false;
    slot->hot = sc;
    return true;
  }

  // spin.spin_io(ready) for a `ready` that runs handlers: one that throws ends the spin, and
  // its exception leaves here (spin_io is noexcept), for run_slot to log.
  template <class Ready>
  static bool spin_polling(troupe::detail::AdaptiveSpin& spin, Ready&& ready) {
    std::exception_ptr thrown;
    const bool found = spin.spin_io([&] {
      try {
        return ready();
      } catch (...) {
        thrown = std::current_exception();
        return true;
      }
    });
    if (thrown) std::rethrow_exception(thrown);
    return found;
  }

  static bool has_hot(IoSlot& slot) {
    std::scoped_lock lock(slot.hot_m);
    return slot.hot != nullptr;
  }

  // Takes the hot connection's next bytes if it has any, and its requests on its strand: true
  // if it had (or met its end or an error), so that the spin ends.
  bool read_hot(IoSlot& slot) {
    std::shared_ptr<ServerConn> sc;
    boost::system::error_code ec;
    {
      std::scoped_lock lock(slot.hot_m);
      if (!slot.hot) return false;
      const auto got = slot.hot->conn.try_fill();
      if (!got) return false;
      ec = *got;
      sc = std::move(slot.hot);
    }
    sc->strand.dispatch([this, sc, ec, self = shared_from_this()] {
      if (sc->closing) return;
      ec ? read_failed(sc, ec) : take(sc, std::nullopt);
    });
    return true;
  }

  // The hot connection (if any) is read by the reactor again (from any thread).
  void cool(IoSlot& slot) {
    std::shared_ptr<ServerConn> sc;
    {
      std::scoped_lock lock(slot.hot_m);
      sc = std::move(slot.hot);
    }
    if (sc) sc->strand.dispatch([this, sc, self = shared_from_this()] { read_next(sc, false); });
  }

  // close_conn, on the strand, before the connection closes: no thread reads it after this.
  static void unheat(const std::shared_ptr<ServerConn>& sc) {
    if (!sc->slot) return;
    std::scoped_lock lock(sc->slot->hot_m);
    if (sc->slot->hot == sc) sc->slot->hot.reset();
  }

  // The spin of a thread with a hot connection, in a handler of the io_context: the
  // connection's requests are taken inline (a handler of a strand runs at once from a handler
  // of its io_context), the other connections' work by polls from here. The handler ends after
  // one read of the hot connection: what that read's handling deferred (a continuation goes to
  // this handler's thread-private queue, run only once it returns) is not held up by the spin.
  // True if the spin found work; false if it ended in vain (the connection cooled: sleep now).
  bool spin_hot(IoSlot& slot) {
    auto& io = slot.io;
    slot.spinner.store(0);
    asio::post(io, [this, &slot] {
      if (tl_spin_slot_ != &slot) {
        // A helper took it: the connection goes back to the reactor (the slot's own thread may
        // sleep before it looks again), and that thread goes on.
        cool(slot);
        slot.spinner.store(1);
        return;
      }
      auto& io = slot.io;
      bool found = true;
      bool took = false;
      // A handler that throws leaves this one (the slot's thread logs it and cools the
      // connection); the thread goes on, not waiting for this spinner.
      struct Ended {
        IoSlot& slot;
        int how = 1;
        ~Ended() { slot.spinner.store(how); }
      } ended{slot};
      // The hot connection (a recv) every round, the thread's other work (a poll of the
      // io_context: an epoll_wait) every kHotPollEvery-th: a round is then one system call, not
      // two, and the request is seen sooner (interleaved runs, quick typeid over Unix: round
      // trip medians 13.5 -> 10.6 us; every 2nd round: 12.2), while the thread's other
      // connections wait at most a few rounds (microseconds) longer in a spin.
      unsigned round = 0;
      while (found && !took && !io.stopped() && has_hot(slot)) {
        found = spin_polling(slot.spin, [&] {
          if (read_hot(slot)) return took = true;
          return ++round % kHotPollEvery == 0 && io.poll() > 0;
        });
      }
      if (!found) cool(slot);
      ended.how = found ? 1 : 2;
    });
    while (slot.spinner.load() == 0 && !io.stopped()) io.run_one_for(kLongestSleep);
    return slot.spinner.load() != 2;
  }

  // The threads of the server's own io_context (which accepts, and runs what leaves a
  // connection's thread), and as many connection threads.
  unsigned thread_count() const {
    unsigned n = options_.threads;
    if (n == 0) n = std::clamp(troupe::internal::process_cpu_count(), 1, 4);
    return n;
  }

  // Whether this thread is one of this server's own (each marks itself as it starts: stop()
  // may ask while start() is still making them, so threads_ is not read here).
  static inline thread_local const Impl* tl_server_ = nullptr;
  bool on_server_thread() const { return tl_server_ == this; }

  // Whether this thread is running the user's executor (an io_context's or a thread pool's).
  bool on_user_executor() const {
    // Not own_: stop() resets it, and a later stop() must not look at the freed io_context.
    if (!user_executor_) return false;
    if (auto* io = ex_.target<asio::io_context::executor_type>())
      return io->running_in_this_thread();
    if (auto* pool = ex_.target<asio::thread_pool::executor_type>())
      return pool->running_in_this_thread();
    return false;
  }

  void stop() {
    if (on_server_thread())
      throw RuntimeError(
          "Server::stop() called on one of the server's own threads (it joins them); use "
          "request_shutdown()");
    {
      std::unique_lock lock(m_);
      if (stopped_) {
        // Another thread is stopping (or has stopped) the server: return when it is done, so
        // that a serve_forever() woken by that stop() does not free the server under it.
        if (!on_user_executor()) cv_.wait(lock, [&] { return stop_done_; });
        return;
      }
      stopped_ = true;
      shutdown_requested_ = true;
    }
    cv_.notify_all();
    std::scoped_lock life(life_m_);  // after a concurrent start() has made its threads
    struct Done {
      Impl* self;
      ~Done() {
        {
          std::scoped_lock lock(self->m_);
          self->stop_done_ = true;
        }
        self->cv_.notify_all();
      }
    } mark_done{this};
    bool started;
    {
      std::scoped_lock lock(m_);
      started = started_;
    }
    if (on_user_executor()) {
      // Called from a handler on the user's executor (a signal_set's, say): the connections
      // close on their strands once this handler returns; waiting here would wait for itself.
      close_all();
      release_everything();
      return;
    }
    // Close everything on the executor, and wait for that to have run (the executor runs: our
    // threads, or the user's io_context, which should run until stop() returns; if it does not
    // within 10 s, it has stopped, and nothing else runs the server's handlers).
    if (started && (own_ == nullptr || !threads_.empty())) {
      auto done = std::make_shared<std::promise<void>>();
      auto ran = done->get_future();
      asio::post(ex_, [self = shared_from_this(), done] {
        self->close_all();
        done->set_value();
      });
      if (ran.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        mlog().warning("manager server at " + address_text_ +
                       ": stop(): its executor ran nothing for 10 s; closing from this thread");
        close_all();
      }
    } else {
      close_all();
    }
    // Connections finish closing on their strands; then nothing refers to the objects.
    for (int i = 0; i < 10000; ++i) {
      {
        std::scoped_lock lock(m_);
        if (conns_.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // A connection still writing the replies a client's shutdown let it flush (its peer reads
    // nothing) closes now, on its strand: run by its thread, or by the last polls below.
    for (auto& c : connections())
      c->strand.dispatch([this, c, self = shared_from_this()] { close_conn(c, ""); });
    if (own_) {
      work_.clear();
      own_->stop();
      stop_monitor();
      for (auto& slot : io_) slot->io.stop();
      for (auto& t : threads_) t.join();
      threads_.clear();
      for (auto& h : helpers_) h->thread.join();
      helpers_.clear();
    }
    release_everything();
    if (own_) {
      // What is still queued (the listener's teardown, replies to closed connections) runs
      // here, on this thread, so that nothing is left registered with the io_context; then it
      // goes, with any handler that still holds the server.
      listener_.reset();
      {
        std::scoped_lock lock(grow_m_);
        grow_timer_.reset();  // its handler, cancelled, runs in the polls below
      }
      for (int round = 0; round < 2; ++round) {  // a connection's teardown may post to own_
        for (auto& slot : io_) {
          slot->io.restart();
          slot->io.poll();
        }
        own_->restart();
        own_->poll();
      }
      io_.clear();
      own_.reset();
    }
  }

  std::vector<std::shared_ptr<ServerConn>> connections() const {
    std::scoped_lock lock(m_);
    std::vector<std::shared_ptr<ServerConn>> all;
    for (auto& [id, c] : conns_) all.push_back(c);
    return all;
  }

  // Closes the listener and every connection (each releases what it held as it closes). After a
  // client's shutdown (flush_on_close_), a connection first writes the replies it holds (stop()
  // still ends it within its 10 s if the peer reads nothing).
  void close_all() {
    if (closed_all_.exchange(true)) return;
    bool flush;
    {
      std::scoped_lock lock(m_);
      flush = flush_on_close_;
    }
    if (listener_) listener_->close();
    {
      std::scoped_lock lock(timer_m_);
      sweep_timer_.reset();
    }
    for (auto& c : connections())
      c->strand.dispatch([this, c, flush, self = shared_from_this()] {
        if (flush && (c->writing || c->pump_deferred || !c->out.empty()) && !c->conn.closed())
          c->closing = true;  // reads no more; pump() closes it once the replies are written
        else
          close_conn(c, "");
      });
  }

  void release_everything() {
    std::unordered_map<std::uint64_t, Entry> objects;
    std::vector<Lingering> lingering;  // released after the lock (a decref on its link)
    {
      std::scoped_lock lock(m_);
      lingering.swap(lingering_);
      objects.swap(objects_);
      by_identity_.clear();
      tracked_.clear();
      parks_.clear();
      parks_by_conn_.clear();
      python_refs_.clear();
      python_pending_.clear();
    }
    objects.clear();  // the objects' destructors run here, outside the lock
    unlink_segments();
  }

  // ---- accepting -----------------------------------------------------------------------------

  void accept_next() {
    listener_->async_accept(
        [self = shared_from_this()](boost::system::error_code ec, Connection c) {
          if (ec == asio::error::operation_aborted || ec.value() == EBADF) return;
          if (ec) {
            mlog().info("manager server at " + self->address_text_ +
                        ": a client failed its handshake: " + ec.message());
          } else {
            self->adopt(std::move(c));
          }
          if (!self->shutdown_requested()) self->accept_next();
        });
  }

  // A TCP client whose host vanishes sends no FIN: keepalive probes find it within about a
  // minute (30 s idle, then 3 probes 10 s apart), and its connection's references go. Set on the
  // listening socket: Linux copies its options into every socket it accepts.
  static void keep_alive(int fd) noexcept {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (fd < 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
      return;
    const int on = 1, idle = 30, interval = 10, count = 3;
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  }

  // The connection thread serving the fewest connections; on a tie the first, whose thread
  // accepted this one and is still awake: the Hello that follows the handshake at once is read
  // there without waking another thread (a wake-up costs tens of microseconds here).
  IoSlot* pick_slot() const noexcept {
    auto best = std::min_element(io_.begin(), io_.end(), [](const auto& a, const auto& b) {
      return a->conns.load(std::memory_order_relaxed) < b->conns.load(std::memory_order_relaxed);
    });
    return best == io_.end() ? nullptr : best->get();
  }

  void adopt(Connection c) {
    IoSlot* slot = pick_slot();
    auto sc =
        std::make_shared<ServerConn>(slot ? asio::any_io_executor(slot->io.get_executor()) : ex_);
    sc->slot = slot;
    sc->conn = std::move(c);
    sc->conn.set_executor(sc->strand.executor());
    sc->conn.set_max_message_size(options_.max_message_size);
    {
      std::scoped_lock lock(m_);
      if (shutdown_requested_) return;
      sc->id = next_conn_++;
      conns_.emplace(sc->id, sc);
      if (slot) slot->conns.fetch_add(1, std::memory_order_relaxed);
    }
    sc->strand.dispatch([this, sc, self = shared_from_this()] { read_next(sc); });
  }

  // ---- reading ---------------------------------------------------------------------------------

  // A connection's reads: a plain socket's bytes come into its read buffer (Connection::
  // async_fill: one Asio receive, no composed operation per message), and the requests whole in
  // it are taken; a message that does not fit there, or a TLS connection's, is read by
  // async_recv_bytes.
  void read_next(const std::shared_ptr<ServerConn>& sc, bool may_heat = true) {
    if (sc->closing || sc->conn.closed()) return;
    const auto max = static_cast<std::size_t>(options_.max_message_size);
    if (sc->conn.message_buffered(max)) {
      // Left while reading was paused, or read with the handshake: taken in a handler of its
      // own (the caller may be inside one that makes replies).
      sc->strand.post([this, sc, self = shared_from_this()] {
        if (!sc->closing) take(sc, std::nullopt);
      });
    } else if (sc->conn.can_fill()) {
      if (may_heat && make_hot(sc)) return;
      sc->strand.with([&](const auto& strand) {
        sc->conn.async_fill(Filled<std::decay_t<decltype(strand)>>{strand, sc, shared_from_this()});
      });
    } else {
      sc->conn.async_recv_bytes(
          [this, sc, self = shared_from_this()](boost::system::error_code ec,
                                                std::vector<std::byte> bytes) {
            if (!sc->closing) ec ? read_failed(sc, ec) : take(sc, std::move(bytes));
          },
          max);
    }
  }

  // The completion of a connection's async_fill, on its strand.
  template <class Strand>
  struct Filled {
    Strand strand;
    std::shared_ptr<ServerConn> sc;
    std::shared_ptr<Impl> server;
    using executor_type = Strand;
    executor_type get_executor() const noexcept { return strand; }
    void operator()(boost::system::error_code ec) {
      if (sc->closing) return;
      ec ? server->read_failed(sc, ec) : server->take(sc, std::nullopt);
    }
  };

  void read_failed(const std::shared_ptr<ServerConn>& sc, boost::system::error_code ec) {
    const bool eof = std::error_code(ec) == troupe::errc::eof_error;
    close_conn(sc, eof ? "" : "reading failed: " + ec.message());
  }

  // Takes `first` (if any) and the requests whole in the connection's read buffer, before any
  // reply is written: the replies made meanwhile go out in one write, from here, once they are
  // all taken (not deferred: that costs a turn of the io_context, and a poll of its reactor, per
  // call). Then reads on, unless the connection holds too much.
  void take(const std::shared_ptr<ServerConn>& sc, std::optional<std::vector<std::byte>> first) {
    {
      const Batch taking(*sc);
      auto one = [&](std::vector<std::byte> bytes) {
        if (!sc->greeted)
          on_hello(sc, std::move(bytes));
        else
          on_request(sc, std::move(bytes));
      };
      if (first) one(std::move(*first));
      const auto max = static_cast<std::size_t>(options_.max_message_size);
      while (!sc->closing && !sc->conn.closed() && backlog(sc) < read_budget()) {
        if (sc->greeted && !sc->python) {
          // A request: read into a frame of this thread's that nobody holds (no allocation).
          std::shared_ptr<Frame> frame;
          try {
            frame = internal::read_frame_reusing(
                [&](std::vector<std::byte>& out) { return sc->conn.recv_buffered_into(out, max); });
          } catch (const std::exception& e) {
            not_a_request(sc, e);
            break;
          }
          if (!frame) break;
          on_request(sc, frame);
          continue;
        }
        auto more = sc->conn.recv_buffered(max);
        if (!more) break;
        one(std::move(*more));
      }
    }
    if (!sc->writing && !sc->pump_deferred) pump(sc);
    if (sc->closing || sc->conn.closed()) return;
    if (backlog(sc) < read_budget())
      read_next(sc);
    else
      sc->read_paused = true;  // resumed by finish() or a write, once below the budget
  }

  // What a connection may hold before its reads pause: twice the largest message, at least 1 MiB.
  std::size_t read_budget() const {
    return static_cast<std::size_t>(
        std::max<std::uint64_t>(std::uint64_t{2} * options_.max_message_size, 1u << 20));
  }
  static std::size_t backlog(const std::shared_ptr<ServerConn>& sc) {
    return sc->held_bytes + sc->out_bytes;
  }
  void maybe_resume(const std::shared_ptr<ServerConn>& sc) {
    if (sc->read_paused && !sc->closing && backlog(sc) < read_budget()) {
      sc->read_paused = false;
      read_next(sc);
    }
  }

  void on_hello(const std::shared_ptr<ServerConn>& sc, std::vector<std::byte> bytes) {
    std::string why;
    if (!bytes.empty() && bytes[0] == std::byte{0x80}) {
      // A pickle: a client of CPython's multiprocessing.managers (doc/interop.md). It has no
      // greeting; its first message is already a request.
      sc->python = true;
      sc->peer = "a Python client";
      sc->greeted = true;
      return on_python_request(sc, std::move(bytes));
    }
    try {
      auto frame = internal::parse_frame(std::move(bytes));
      auto hello = frame->root<proto::manager::Hello>();
      if (hello.getMagic() != internal::kHelloMagic)
        throw ValueError("the first message is not a troupe manager Hello");
      if (hello.getVersion() != proto::manager::PROTOCOL_VERSION)
        throw ValueError("protocol version " + std::to_string(hello.getVersion()) +
                         " is not served (this server speaks version " +
                         std::to_string(proto::manager::PROTOCOL_VERSION) + ")");
      auto name = hello.getProcessName();
      auto host = hello.getHost();
      // The name the client reached this server by: a proxy it sends carries that address,
      // and is one of this server's (CPython's tokens have the same trap: localhost vs
      // 127.0.0.1). At most 64 names are kept.
      if (auto a = hello.getAddress(); a.size() > 0 && a.size() <= 1024) {
        std::scoped_lock lock(m_);
        if (aliases_.size() < 64) aliases_.emplace(a.begin(), a.size());
      }
      sc->peer = "pid " + std::to_string(hello.getPid()) + " (" +
                 std::string(name.begin(), std::min<std::size_t>(name.size(), 128)) + ") on host " +
                 std::string(host.begin(), std::min<std::size_t>(host.size(), 128));
    } catch (const std::exception& e) {
      why = e.what();
    }
    capnp::MallocMessageBuilder mb;
    auto g = mb.initRoot<proto::manager::Greeting>();
    if (why.empty()) {
      sc->greeted = true;
      auto w = g.initWelcome();
      w.setVersion(proto::manager::PROTOCOL_VERSION);
      w.setPid(::getpid());
      w.setServerName(registry_.name().c_str());
      w.setAddress(address_text_.c_str());
      w.setMaxMessageSize(options_.max_message_size);
      w.setMaxCallsInFlight(options_.max_calls_in_flight);
      w.setMaxObjectsHeld(options_.max_objects_held);
      enqueue(sc, internal::flatten(mb));
    } else {
      mlog().warning("manager server at " + address_text_ + ": refused a client: " + why);
      ErrorEnvelope::capture(
          std::make_exception_ptr(
              ValueError("manager server at " + address_text_ + " refused the client: " + why)))
          .encode(g.initRefused());
      enqueue(sc, internal::flatten(mb));
      sc->closing = true;  // closes once the refusal is written
    }
  }

  void on_request(const std::shared_ptr<ServerConn>& sc, std::vector<std::byte> bytes) {
    if (sc->python) return on_python_request(sc, std::move(bytes));
    std::shared_ptr<Frame> frame;
    try {
      frame = internal::parse_frame(std::move(bytes));
    } catch (const std::exception& e) {
      return not_a_request(sc, e);
    }
    on_request(sc, frame);
  }

  void not_a_request(const std::shared_ptr<ServerConn>& sc, const std::exception& e) {
    mlog().warning("manager server at " + address_text_ + ": dropped the connection of " +
                   sc->peer + ": a message that is not a request (" + e.what() + ")");
    close_conn(sc, "");
  }

  // A request of troupe's dialect, parsed.
  void on_request(const std::shared_ptr<ServerConn>& sc, const std::shared_ptr<Frame>& frame) {
    proto::manager::Request::Reader req;
    const std::size_t size = frame->bytes.size();
    try {
      req = frame->root<proto::manager::Request>();
      (void)req.which();
    } catch (const std::exception& e) {
      return not_a_request(sc, e);
    }
    try {
      dispatch(sc, frame, req, size);
    } catch (const std::exception& e) {
      // A request that Cap'n Proto cannot read all of (a malformed pointer inside it).
      mlog().warning("manager server at " + address_text_ + ": dropped the connection of " +
                     sc->peer + ": a malformed request (" + e.what() + ")");
      close_conn(sc, "");
    }
  }

  // ---- requests --------------------------------------------------------------------------------

  // `req`: the request `frame` holds, read once.
  void dispatch(const std::shared_ptr<ServerConn>& sc, const std::shared_ptr<Frame>& frame,
                proto::manager::Request::Reader req, std::size_t size) {
    using R = proto::manager::Request;
    const std::uint64_t call_id = req.getCallId();
    const std::uint64_t lane = req.getLane();
    auto fail = [&](std::exception_ptr e, std::string call, std::string object = {}) {
      reply_error(sc, call_id, e, std::move(call), std::move(object));
    };
    switch (req.which()) {
      case R::CALL: {
        auto c = req.getCall();
        const std::uint64_t id = c.getObject();
        auto method = c.getMethod();
        std::string mname(method.begin(), method.size());
        std::shared_ptr<HostedObject> obj;
        std::shared_ptr<const TypeEntry> entry;
        std::string typeid_;
        std::optional<asio::strand<asio::any_io_executor>> serial;
        {
          std::scoped_lock lock(m_);
          auto it = objects_.find(id);
          if (it != objects_.end()) {
            obj = it->second.object;
            entry = it->second.entry;
            typeid_ = it->second.typeid_;
            serial = it->second.serial;
          }
        }
        if (!obj)
          return fail(remote_error(std::make_exception_ptr(
                          KeyError("no object " + std::to_string(id) + " in the manager at " +
                                   address_text_ + " (released, or never made)"))),
                      mname);
        if (!admit(sc, call_id, mname, [&] { return object_name(typeid_, id); })) return;
        if (entry && !answered_unexposed(mname) && !detail::exposes(*entry, mname)) {
          std::string list;
          for (const auto& e : *entry->exposed) list += (list.empty() ? "" : ", ") + e;
          return fail(remote_error(std::make_exception_ptr(AttributeError(
                          "method '" + mname + "' of object " + object_name(typeid_, id) +
                          " (typeid '" + typeid_ + "') is not exposed (exposed: " + list + ")"))),
                      typeid_ + "." + mname, object_name(typeid_, id));
        }
        // Read here, inside on_request's try: arguments Cap'n Proto cannot read drop the
        // connection before anything is queued for them.
        const auto args = c.getArgs();
        for (auto a : args) (void)a.which();
        sc->start_running(call_id, {obj, lane, serial, size});
        sc->held_bytes += size;
        CallText text{.typeid_ = std::move(typeid_),
                      .method = std::move(mname),
                      .object = id,
                      .request = frame};
        // The arguments' reader points into the frame, which text holds.
        // The lane free and a call that runs here (a built-in's, a quick typeid's): run now,
        // with nothing made to run it later (enqueue_lane would call it at once too).
        if (auto& l = sc->lanes[lane];
            !l.busy && !serial && (!entry || !entry->cxx_type || entry->quick)) {
          l.busy = true;
          return run_object_call(sc, obj, call_id, lane, args, c.getArgsFingerprint(),
                                 std::move(text));
        }
        enqueue_lane(sc, lane,
                     [this, self = shared_from_this(), sc, obj = std::move(obj), entry,
                      serial = std::move(serial), call_id, lane, args,
                      fingerprint = c.getArgsFingerprint(), text = std::move(text)]() mutable {
                       run_call(sc, entry, serial,
                                [this, self = std::move(self), sc, obj = std::move(obj), call_id,
                                 lane, args, fingerprint, text = std::move(text)]() mutable {
                                  run_object_call(sc, obj, call_id, lane, args, fingerprint,
                                                  std::move(text));
                                });
                     });
        return;
      }
      case R::CREATE: {
        auto c = req.getCreate();
        auto t = c.getTypeid();
        if (t.size() > 256)
          return fail(remote_error(std::make_exception_ptr(
                          ValueError("create: a typeid of " + std::to_string(t.size()) +
                                     " bytes (typeids are at most 256 bytes)"))),
                      "create");
        const std::string typeid_(t.begin(), t.size());
        auto entry = registry_.find(typeid_);
        if (!entry)
          return fail(
              remote_error(std::make_exception_ptr(KeyError(
                  "'" + typeid_ + "' is not a typeid registered with " + registry_.name()))),
              "create");
        // As CPython's Server.create: create_method=false only drops the client's convenience
        // method (BaseManager::create checks it; _create does not), the server creates.
        if (!entry->create)
          return fail(remote_error(std::make_exception_ptr(
                          TypeError("typeid '" + typeid_ + "' of " + registry_.name() +
                                    " has no callable: its objects are only made by methods "
                                    "that return them"))),
                      "create(" + typeid_ + ")");
        if (!admit(sc, call_id, "create", [&] { return typeid_; })) return;
        for (auto a : c.getArgs()) (void)a.which();  // as a call's
        sc->start_running(call_id, {nullptr, lane, std::nullopt, size});
        sc->held_bytes += size;
        enqueue_lane(
            sc, lane,
            [this, self = shared_from_this(), sc, frame, entry, typeid_, call_id, lane]() mutable {
              auto run = [this, self, sc, frame, entry, typeid_, call_id, lane]() mutable {
                auto done = make_completion(sc, call_id, lane,
                                            CallText{.typeid_ = typeid_, .request = frame});
                try {
                  auto c = frame->root<R>().getCreate();
                  CallInfo info{
                      Caller{sc->id, lane, sc->strand}, call_id, 0,   typeid_, typeid_, c.getArgs(),
                      c.getArgsFingerprint(),           ex_,     this};
                  auto obj = entry->create(info);
                  done->new_object(typeid_, std::move(obj));
                } catch (...) {
                  done->fail(std::current_exception());
                }
              };
              run_call(sc, entry, std::nullopt, std::move(run), Running::create);
            });
        return;
      }
      case R::INCREF: {
        // Answered either way: the client's _incref() waits for it (a reference refused for
        // the connection's limit raises there, not only in this server's log).
        try {
          incref(sc, req.getIncref());
        } catch (const KeyError&) {
          // CPython: RemoteError (its incref runs on a connection of its own, whose failure
          // comes back as a traceback).
          return fail(remote_error(std::current_exception()), "incref");
        } catch (...) {
          return fail(std::current_exception(), "incref");
        }
        return reply_value(sc, call_id, std::monostate{});
      }
      case R::DECREF: {
        try {
          decref(sc, req.getDecref());
        } catch (...) {
          fail(std::current_exception(), "decref");
        }
        return;
      }
      case R::PARK: {
        try {
          park(sc, req.getPark().getId(), req.getPark().getTicket());
        } catch (...) {
          fail(std::current_exception(), "park");
        }
        return;
      }
      case R::CLAIM: {
        // Answered either way: a received proxy whose claim is refused fails its calls, and
        // sends no decref for a reference it never had.
        try {
          claim(sc, req.getClaim().getId(), req.getClaim().getTicket());
        } catch (...) {
          return fail(std::current_exception(), "claim");
        }
        return reply_value(sc, call_id, std::monostate{});
      }
      case R::GET_METHODS: {
        std::vector<std::string> methods;
        const std::uint64_t id = req.getGetMethods();
        {
          std::scoped_lock lock(m_);
          auto it = objects_.find(id);
          if (it != objects_.end()) {
            if (it->second.entry && it->second.entry->exposed)
              methods = *it->second.entry->exposed;
            else
              methods = it->second.object->exposed();
          }
        }
        if (methods.empty() && !has_object(id))  // CPython: RemoteError (a KeyError's traceback)
          return fail(
              remote_error(std::make_exception_ptr(KeyError(
                  "no object " + std::to_string(id) + " in the manager at " + address_text_))),
              "get_methods");
        return reply_value(sc, call_id, methods);
      }
      case R::DEBUG_INFO: {
        auto text = debug_info();
        const auto cap = static_cast<std::size_t>(options_.max_message_size / 2);
        if (text.size() > cap)
          text = text.substr(0, cap) + "\n  ... (cut at " + std::to_string(cap) + " bytes)\n";
        return reply_text(sc, call_id, text);
      }
      case R::NUMBER_OF_OBJECTS:
        return reply_value(sc, call_id, static_cast<std::uint64_t>(number_of_objects()));
      case R::SHUTDOWN:
        if (!options_.allow_shutdown)
          return fail(std::make_exception_ptr(RuntimeError("the manager at " + address_text_ +
                                                           " does not allow shutdown")),
                      "shutdown");
        reply_value(sc, call_id, std::monostate{});
        request_shutdown();
        return;
      case R::CANCEL: {
        // The call's own Caller (the lane it came on), not the cancel's: a cancel may come from
        // another client thread (a timer's).
        auto it = sc->running.find(req.getCancel());
        if (it != sc->running.end() && it->second.object) {
          auto obj = it->second.object;
          const Caller who{sc->id, it->second.lane};
          const std::uint64_t target = req.getCancel();
          auto run = [obj, who, target] { obj->cancel(who, target); };
          if (it->second.serial)
            asio::post(*it->second.serial, std::move(run));
          else
            asio::post(ex_, std::move(run));
        }
        return;
      }
      case R::PING: return reply_value(sc, call_id, std::monostate{});
      case R::TRACK_SEGMENT:
      case R::RELEASE_SEGMENT:
      case R::LIST_SEGMENTS: {
        const char* what = req.isTrackSegment()     ? "track_segment"
                           : req.isReleaseSegment() ? "release_segment"
                                                    : "list_segments";
        try {
          if (!options_.track_segments)
            throw AttributeError(std::string(what) + ": the manager at " + address_text_ + " (" +
                                 registry_.name() +
                                 ") is not a SharedMemoryManager's server: it tracks no segments");
          if (req.isListSegments()) return reply_value(sc, call_id, tracked_segments());
          auto t = req.isTrackSegment() ? req.getTrackSegment() : req.getReleaseSegment();
          const std::string name = segment_name(std::string_view(t.begin(), t.size()), what);
          if (req.isTrackSegment())
            track_segment(name);
          else
            release_segment(name);
          return reply_value(sc, call_id, std::monostate{});
        } catch (...) {
          return fail(std::current_exception(), what);
        }
      }
    }
    fail(std::make_exception_ptr(ValueError("unknown request kind " +
                                            std::to_string(static_cast<unsigned>(req.which())))),
         "request");
  }

  // Runs a call (or a create: `serial` empty) queued on its lane. This runs on the connection's
  // strand, on a thread that serves other connections too. A built-in object never blocks (its
  // waits are asynchronous): its call runs here, and a built-in type is made here. So does a
  // quick typeid's (RegisterOptions::quick). Any other registered class's call or constructor
  // may block as long as it likes: it runs on this thread too, but off the strand, and a helper
  // thread takes over the others if it holds the thread (run_may_block); so does the create of
  // a built-in whose making may block (TypeEntry::create_may_block: a Pool starts its workers).
  // A serialized typeid's calls go to its object's strand.
  enum class Running : std::uint8_t { call, create };
  template <class Run>
  void run_call(const std::shared_ptr<ServerConn>& sc,
                const std::shared_ptr<const TypeEntry>& entry,
                const std::optional<asio::strand<asio::any_io_executor>>& serial, Run&& run,
                Running what = Running::call) {
    const bool may_block = entry && ((entry->cxx_type && !entry->quick) ||
                                     (what == Running::create && entry->create_may_block));
    if (serial)
      post_blocking(*serial, std::function<void()>(std::forward<Run>(run)));
    else if (may_block)
      run_may_block(sc, std::function<void()>(std::forward<Run>(run)));
    else
      run();
  }

  // A method call of troupe's dialect, where run_call runs it.
  void run_object_call(const std::shared_ptr<ServerConn>& sc,
                       const std::shared_ptr<HostedObject>& obj, std::uint64_t call_id,
                       std::uint64_t lane, capnp::List<proto::Value>::Reader args,
                       std::uint64_t fingerprint, CallText&& text) {
    auto done = make_completion(sc, call_id, lane, std::move(text));
    const CallText& t = done->text();  // lives as long as done: the call's views point into it
    try {
      CallInfo info{Caller{sc->id, lane, sc->strand},
                    call_id,
                    t.object,
                    t.typeid_,
                    t.method,
                    args,
                    fingerprint,
                    ex_,
                    this};
      if (is_repr(t.method)) {
        detail::no_fallback_arguments(info, t.typeid_);
        done->complete(obj->repr());
      } else {
        // A built-in object's answer known at once (a put, a get of an item that is there)
        // runs after the call, here, not as a handler posted to this strand.
        detail::waits::AnswersHere answers(info.caller);
        obj->call(info, done);
        answers.run();
      }
    } catch (...) {
      done->fail(std::current_exception());
    }
  }

  // Checks the per-connection limits of a call; replies with the error if over.
  // `object`: makes the object's name, for an error.
  template <class ObjectName>
  bool admit(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id, const std::string& what,
             ObjectName&& object) {
    if (sc->running.size() >= options_.max_calls_in_flight) {
      reply_error(sc, call_id,
                  std::make_exception_ptr(ValueError(
                      "over the limit of " + std::to_string(options_.max_calls_in_flight) +
                      " calls in flight per connection (ServerOptions::max_calls_in_flight)")),
                  what, object());
      return false;
    }
    if (sc->running.count(call_id)) {
      reply_error(sc, call_id,
                  std::make_exception_ptr(ValueError("call id " + std::to_string(call_id) +
                                                     " is already in flight on this connection")),
                  what, object());
      return false;
    }
    return true;
  }

  // ---- lanes -------------------------------------------------------------------------------

  static constexpr std::size_t kIdleLanesKept = 16;

  template <class Work>
  void enqueue_lane(const std::shared_ptr<ServerConn>& sc, std::uint64_t lane, Work&& work) {
    auto& l = sc->lanes[lane];
    if (l.busy) {
      l.queue.push_back(std::function<void()>(std::forward<Work>(work)));
      return;
    }
    l.busy = true;
    work();
  }

  // On the strand: the lane's current call has ended; start its next.
  void lane_done(const std::shared_ptr<ServerConn>& sc, std::uint64_t lane) {
    auto it = sc->lanes.find(lane);
    if (it == sc->lanes.end()) return;
    auto& l = it->second;
    if (l.queue.empty()) {
      // An idle lane stays (a deque's first node is an allocation a call), up to a few per
      // connection: a client's threads each have one.
      if (sc->lanes.size() > kIdleLanesKept)
        sc->lanes.erase(it);
      else
        l.busy = false;
      return;
    }
    auto next = std::move(l.queue.front());
    l.queue.pop_front();
    // Posted, not called: a call that completes at once would otherwise start the next from
    // inside its own completion, one stack frame deeper per queued call.
    sc->strand.post(std::move(next));
  }

  // ---- completions -------------------------------------------------------------------------

  // What a call's completion is in either dialect (Done: troupe's; PyDone: CPython's): the call,
  // its connection and context, and the rule that it ends once; a completion dropped without an
  // end fails its call (its destructor calls fail_if_unended()).
  class CallEnd : public Completion {
  public:
    void fail(std::exception_ptr error) override {
      if (claim()) send_error(error);
    }

  protected:
    CallEnd(std::shared_ptr<Impl> server, std::shared_ptr<ServerConn> sc, std::uint64_t call_id,
            std::uint64_t lane, CallText&& text)
        : server_(std::move(server)),
          sc_(std::move(sc)),
          call_id_(call_id),
          lane_(lane),
          text_(std::move(text)) {}

    // Whether this is the call's end (the first of done, new_object, fail, the destructor).
    bool claim() noexcept { return !finished_.exchange(true); }
    void fail_if_unended() noexcept {
      if (claim())
        send_error(std::make_exception_ptr(RuntimeError(
            text_.call() + " never completed: the object dropped the call without a result")));
    }
    // Replies with the failure `e` in the connection's dialect; never throws.
    virtual void send_error(std::exception_ptr e) noexcept = 0;

    std::shared_ptr<Impl> server_;
    std::shared_ptr<ServerConn> sc_;
    std::uint64_t call_id_;
    std::uint64_t lane_;
    CallText text_;

  private:
    std::atomic<bool> finished_{false};
  };

  class Done final : public CallEnd {
  public:
    Done(std::shared_ptr<Impl> server, std::shared_ptr<ServerConn> sc, std::uint64_t call_id,
         std::uint64_t lane, CallText&& text)
        : CallEnd(std::move(server), std::move(sc), call_id, lane, std::move(text)) {}

    // The call's text: its parts outlive the call (CallInfo's views point into them).
    const CallText& text() const noexcept { return text_; }

    ~Done() noexcept override { fail_if_unended(); }

    proto::Value::Builder value() override {
      if (!mb_) mb_.emplace(kj::arrayPtr(first_.data(), first_.size()));
      if (!reply_) {
        reply_ = mb_->initRoot<proto::manager::Reply>();
        reply_->setCallId(call_id_);
      }
      return reply_->initResult();
    }

    void done() override {
      if (!claim()) return;
      if (!mb_) value().setNone();
      // On the strand (a call that ended in the handler that read it): in a buffer of an
      // earlier reply's, the connection's to hand out there only.
      const bool here = sc_->strand.running_in_this_thread();
      std::vector<std::byte> bytes = here ? sc_->take_spare() : std::vector<std::byte>();
      try {
        codec_detail::flatten(*mb_, bytes);
      } catch (...) {
        return send_error(std::current_exception());
      }
      server_->finish(sc_, call_id_, lane_, std::move(bytes), here);
    }

    void new_object(std::string typeid_, std::shared_ptr<HostedObject> object) override {
      if (!claim()) return;
      try {
        auto entry = server_->result_entry(text_.call(), typeid_, object);
        capnp::MallocMessageBuilder mb;
        auto r = mb.initRoot<proto::manager::Reply>();
        r.setCallId(call_id_);
        if (!server_->add_object(sc_, std::move(object), entry, r.initProxy())) return;
        server_->finish(sc_, call_id_, lane_, internal::flatten(mb));
      } catch (...) {
        // Outside the method, as CPython's server makes a method_to_typeid result.
        send_error(remote_error(std::current_exception()));
      }
    }

  private:
    void send_error(std::exception_ptr e) noexcept override {
      // A create's failure, or a method the object does not expose, happened outside the
      // method: RemoteError, as CPython's server sends it.
      if (text_.method.empty() || raised_outside(e)) e = remote_error(e);
      try {
        server_->finish(sc_, call_id_, lane_,
                        server_->error_bytes(call_id_, e, text_.call(), text_.object_name(),
                                             text_.argument_kinds()));
      } catch (...) {
        // The error itself could not be encoded (its text, its context): send a plain one, so
        // that the caller is not left waiting.
        std::vector<std::byte> bytes;
        try {
          bytes = server_->error_bytes(call_id_,
                                       std::make_exception_ptr(RuntimeError(
                                           text_.call() + " failed, and its error could not be "
                                                          "encoded")),
                                       {}, {}, {});
        } catch (...) {
        }
        server_->finish(sc_, call_id_, lane_, std::move(bytes));
      }
    }

    // The reply's first segment, allocated with the completion (zeroed, as capnp wants it; the
    // builder, declared after it, zeroes what it used when it goes), not on its own.
    std::array<capnp::word, 32> first_{};
    std::optional<capnp::MallocMessageBuilder> mb_;
    std::optional<proto::manager::Reply::Builder> reply_;
  };

  // The registered typeid of an object a call returned (Completion::new_object). @throws
  // KeyError if it is not registered, ValueError if there is no object.
  std::shared_ptr<const TypeEntry> result_entry(const std::string& call, const std::string& typeid_,
                                                const std::shared_ptr<HostedObject>& object) const {
    auto entry = registry_.find(typeid_);
    if (!entry)
      throw KeyError(call + " returned an object of typeid '" + typeid_ +
                     "', which is not registered with " + registry_.name());
    if (!object) throw ValueError(call + " returned no object");
    return entry;
  }

  std::shared_ptr<Done> make_completion(const std::shared_ptr<ServerConn>& sc,
                                        std::uint64_t call_id, std::uint64_t lane,
                                        CallText&& text) {
    return std::make_shared<Done>(shared_from_this(), sc, call_id, lane, std::move(text));
  }

  // Any thread: the call ended with the reply `bytes` (empty: none can be sent).
  // `here`: the caller knows it runs on sc's strand.
  void finish(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id, std::uint64_t lane,
              std::vector<std::byte> bytes, bool here = false) {
    // On the strand already (a call that completed at once): what dispatch would do, without
    // making the handler.
    if (here || sc->strand.running_in_this_thread()) {
      const auto keep = sc;  // as the handler's copy would: `sc` may be its Done's member
      return finished(keep, call_id, lane, std::move(bytes));
    }
    sc->strand.dispatch(
        [this, sc, call_id, lane, bytes = std::move(bytes), self = shared_from_this()]() mutable {
          finished(sc, call_id, lane, std::move(bytes));
        });
  }

  // On the strand: finish()'s work.
  void finished(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id, std::uint64_t lane,
                std::vector<std::byte> bytes) {
    if (auto it = sc->running.find(call_id); it != sc->running.end()) sc->end_running(it);
    // Inside a read's handler (a call that completed at once) the reply goes with the batch's;
    // else (a call that ended later, on another thread or strand) it is written from here, not
    // deferred to another turn of the io_context.
    bool outermost;
    {
      const Batch taking(*sc);
      outermost = taking.outer();
      if (!bytes.empty()) enqueue(sc, std::move(bytes));
      lane_done(sc, lane);
    }
    if (outermost && !sc->writing && !sc->pump_deferred) pump(sc);
    maybe_resume(sc);
  }

  std::vector<std::byte> error_bytes(std::uint64_t call_id, std::exception_ptr e,
                                     const std::string& call, const std::string& object,
                                     const std::string& arguments) {
    capnp::MallocMessageBuilder mb;
    auto r = mb.initRoot<proto::manager::Reply>();
    r.setCallId(call_id);
    ErrorEnvelope::capture(e, {.call = call, .object = object, .arguments = arguments})
        .encode(r.initError());
    return internal::flatten(mb);
  }

  void reply_error(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id,
                   std::exception_ptr e, std::string call, std::string object) {
    enqueue(sc, error_bytes(call_id, e, call, object, {}));
  }

  template <class T>
  void reply_value(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id, const T& v) {
    capnp::MallocMessageBuilder mb;
    auto r = mb.initRoot<proto::manager::Reply>();
    r.setCallId(call_id);
    Codec<T>::encode(v, r.initResult());
    enqueue(sc, internal::flatten(mb));
  }

  void reply_text(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id,
                  const std::string& text) {
    capnp::MallocMessageBuilder mb;
    auto r = mb.initRoot<proto::manager::Reply>();
    r.setCallId(call_id);
    r.setText(text.c_str());
    enqueue(sc, internal::flatten(mb));
  }

  // ---- CPython's dialect (doc/interop.md) --------------------------------------------------

  // A request of a Python client, on the strand: one of the server's functions until
  // accept_connection, then method calls. A request that cannot be read (a pickle outside the
  // data subset, a malformed tuple) gets '#TRACEBACK' with the reason, as CPython's server
  // answers a request it fails on, and the connection serves on.
  void on_python_request(const std::shared_ptr<ServerConn>& sc, std::vector<std::byte> bytes) {
    const std::size_t size = bytes.size();
    if (bytes.size() >= 2 && bytes[0] == std::byte{0x80})
      sc->python_protocol = static_cast<unsigned>(bytes[1]) >= 5 ? 5 : 4;
    const std::uint64_t call_id = ++sc->python_call_ids;
    python::Request req;
    std::string method;
    try {
      detail::Limits limits;
      limits.max_bytes = std::min<std::size_t>(limits.max_bytes,
                                               static_cast<std::size_t>(options_.max_message_size));
      req = python::parse_request(detail::pickle::decode(bytes, limits));
    } catch (...) {
      return python_traceback(sc, std::current_exception(), "request", true);
    }
    method = req.method;  // for the error's context (req is moved on)
    try {
      if (!sc->python_calls)
        python_function(sc, call_id, std::move(req), size);
      else
        python_call(sc, call_id, std::move(req), size);
    } catch (...) {
      python_traceback(sc, std::current_exception(), method);
    }
  }

  void python_reply(const std::shared_ptr<ServerConn>& sc, std::string_view kind, Item value) {
    enqueue(sc, python::reply(kind, std::move(value), sc->python_protocol));
  }

  // Replies '#TRACEBACK' for `e`; `refused`: a request that could not be read, also logged.
  void python_traceback(const std::shared_ptr<ServerConn>& sc, std::exception_ptr e,
                        std::string call, bool refused = false) {
    std::vector<std::byte> bytes;
    try {
      const auto error = ErrorEnvelope::capture(e, {.call = std::move(call)});
      if (refused)
        mlog().warning("manager server at " + address_text_ + ": refused a request of " + sc->peer +
                       ": " + error.message);
      bytes = python::error_reply(error, sc->python_protocol, false);
    } catch (...) {
      try {
        bytes = python::reply("#TRACEBACK", Item::text("the manager failed to encode an error"),
                              sc->python_protocol);
      } catch (...) {
        return close_conn(sc, "out of memory while answering a Python client");
      }
    }
    enqueue(sc, std::move(bytes));
  }

  // One of CPython's Server functions (its `public` list).
  void python_function(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id,
                       python::Request req, std::size_t size) {
    const std::string& f = req.method;
    auto no_arguments = [&] {
      if (!req.args.empty() || !req.kwargs.empty())
        throw TypeError(f + "() takes no arguments (" + std::to_string(req.args.size()) +
                        " given)");
    };
    auto one_argument = [&]() -> Item& {
      if (req.args.size() != 1 || !req.kwargs.empty())
        throw TypeError(f + "() takes exactly one argument (" + std::to_string(req.args.size()) +
                        " given)");
      return req.args[0];
    };
    if (!python::is_public(f))
      throw ValueError("'" + f + "' unrecognized (not one of the manager's functions)");
    if (f == "dummy") {
      no_arguments();
      return python_reply(sc, "#RETURN", Item());
    }
    if (f == "accept_connection") {
      const Item& name = one_argument();
      sc->python_calls = true;
      if (name.kind() == detail::Kind::text)
        sc->peer = "a Python client (" + name.as_string().substr(0, 128) + ")";
      return python_reply(sc, "#RETURN", Item());
    }
    if (f == "create") return python_create(sc, call_id, std::move(req), size);
    if (f == "get_methods") {
      const auto t = python::token_fields(one_argument());
      return python_reply(sc, "#RETURN", python_exposed(python::parse_ident(t.ident)));
    }
    if (f == "debug_info") {
      no_arguments();
      return python_reply(sc, "#RETURN", Item::text(debug_info()));
    }
    if (f == "number_of_objects") {
      no_arguments();
      return python_reply(sc, "#RETURN",
                          Item::integer(static_cast<std::int64_t>(number_of_objects())));
    }
    if (f == "track_segment" || f == "release_segment" || f == "list_segments") {
      // A Python SharedMemoryManager's client: SharedMemoryServer's functions.
      if (!options_.track_segments)
        throw ValueError("'" + f + "' unrecognized (the manager at " + address_text_ +
                         " is not a " + "SharedMemoryManager's server)");
      if (f == "list_segments") {
        no_arguments();
        std::vector<Item> names;
        for (auto& n : tracked_segments()) names.push_back(Item::text(std::move(n)));
        return python_reply(sc, "#RETURN", Item::list(std::move(names)));
      }
      const Item& arg = one_argument();
      if (arg.kind() != detail::Kind::text)
        throw TypeError(f + "() takes a segment name (a str), not " +
                        std::string(detail::type_name(arg)));
      const std::string name = segment_name(arg.as_string(), f.c_str());
      if (f == "track_segment")
        track_segment(name);
      else
        release_segment(name);
      return python_reply(sc, "#RETURN", Item());
    }
    if (f == "incref") {
      python_incref(python::parse_ident(one_argument()));
      return python_reply(sc, "#RETURN", Item());
    }
    if (f == "decref") {
      python_decref(python::parse_ident(one_argument()));
      return python_reply(sc, "#RETURN", Item());
    }
    // shutdown
    no_arguments();
    if (!options_.allow_shutdown)
      throw RuntimeError("the manager at " + address_text_ + " does not allow shutdown");
    python_reply(sc, "#RETURN", Item());
    request_shutdown();
  }

  // create(typeid, *args, **kwds): the new object's (ident, exposed), one reference held for
  // the Python client (CPython's client takes its own, then drops this one).
  void python_create(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id,
                     python::Request req, std::size_t size) {
    if (req.args.empty() || req.args[0].kind() != detail::Kind::text)
      throw TypeError("create() needs the typeid (a str) as its first argument");
    const std::string typeid_ = req.args[0].as_string().substr(0, 256);
    auto entry = registry_.find(typeid_);
    if (!entry)
      throw KeyError("'" + typeid_ + "' is not a typeid registered with " + registry_.name());
    if (!entry->create)  // create_method=false: Python's m._create(typeid) still creates
      throw TypeError("typeid '" + typeid_ + "' of " + registry_.name() +
                      " has no callable: its objects are only made by methods that return them");
    req.args.erase(req.args.begin());
    const std::string call = "create(" + typeid_ + ")";
    auto state =
        python_state(sc, call, entry->takes_keywords, &entry->create_parameters, std::move(req));
    python_admit(sc);
    sc->start_running(call_id, {nullptr, 0, std::nullopt, size});
    sc->held_bytes += size;
    const int protocol = sc->python_protocol;
    enqueue_lane(
        sc, 0,
        [this, self = shared_from_this(), sc, entry, typeid_, call_id, state, protocol]() mutable {
          auto run = [this, self, sc, entry, typeid_, call_id, state, protocol]() mutable {
            auto done = std::make_shared<PyDone>(
                shared_from_this(), sc, call_id, protocol, true,
                CallText{.typeid_ = typeid_, .arguments = state->summary()});
            try {
              const CallInfo info = python_info(sc, call_id, 0, typeid_, typeid_, *state, this);
              done->new_object(typeid_, entry->create(info));
            } catch (...) {
              done->fail(std::current_exception());
            }
          };
          run_call(sc, entry, std::nullopt, std::move(run), Running::create);
        });
  }

  // The in-flight limit for a Python connection (its call ids are the server's own, never
  // reused). @throws ValueError naming the limit (sent as '#TRACEBACK').
  void python_admit(const std::shared_ptr<ServerConn>& sc) const {
    if (sc->running.size() >= options_.max_calls_in_flight)
      throw ValueError("over the limit of " + std::to_string(options_.max_calls_in_flight) +
                       " calls in flight per connection (ServerOptions::max_calls_in_flight)");
  }

  // A call's arguments as the host takes them: proxies to this server's objects as refs,
  // keywords given to the object (`takes_keywords`), placed by `parameters`, or refused.
  std::shared_ptr<python::CallArgs> python_state(const std::shared_ptr<ServerConn>& sc,
                                                 const std::string& where, bool takes_keywords,
                                                 const detail::Parameters* parameters,
                                                 python::Request req) {
    for (Item& a : req.args) proxies_from_python(a, sc->id);
    for (auto& [k, v] : req.kwargs) proxies_from_python(v, sc->id);
    std::optional<detail::Kwargs> kwargs;
    if (!req.kwargs.empty()) {
      if (takes_keywords)
        kwargs = std::move(req.kwargs);
      else if (parameters && !parameters->names.empty())
        python::place_keywords(where, req.args, std::move(req.kwargs), *parameters);
      else
        throw TypeError(where + " takes no keyword arguments" +
                        (parameters ? "" : " (a C++ method's parameters are given by position)"));
    }
    return std::make_shared<python::CallArgs>(where, std::move(req.args), std::move(kwargs));
  }

  static CallInfo python_info(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id,
                              std::uint64_t id, std::string_view typeid_, std::string_view method,
                              const python::CallArgs& args, Impl* server) {
    CallInfo info{Caller{sc->id, 0, sc->strand},
                  call_id,
                  id,
                  typeid_,
                  method,
                  args.reader(),
                  0,
                  server->ex_,
                  server};
    info.kwargs = args.kwargs();
    info.items = &args.items();
    info.args_error = args.error();
    return info;
  }

  // A method call after accept_connection: (ident, methodname, args, kwds).
  void python_call(const std::shared_ptr<ServerConn>& sc, std::uint64_t call_id,
                   python::Request req, std::size_t size) {
    const std::uint64_t id = python::parse_ident(req.ident);
    std::shared_ptr<HostedObject> obj;
    std::shared_ptr<const TypeEntry> entry;
    std::string typeid_;
    std::optional<asio::strand<asio::any_io_executor>> serial;
    {
      std::scoped_lock lock(m_);
      auto it = objects_.find(id);
      if (it == objects_.end())
        throw KeyError("'" + python::ident_text(id) + "' (no such object in the manager at " +
                       address_text_ + ": released, or never made)");
      obj = it->second.object;
      entry = it->second.entry;
      typeid_ = it->second.typeid_;
      serial = it->second.serial;
    }
    const std::string mname = req.method;
    if (entry && !answered_unexposed(mname) && !detail::exposes(*entry, mname) &&
        !entry->method_to_typeid.contains(mname))  // CPython adds these to exposed
      throw AttributeError("method '" + mname + "' of object " + object_name(typeid_, id) +
                           " (typeid '" + typeid_ + "') is not exposed");
    const std::string call = typeid_ + "." + mname + "()";
    const auto parameters = obj->parameters(mname);
    std::shared_ptr<python::CallArgs> state;
    try {
      state = python_state(sc, call, obj->takes_keywords(), parameters ? &*parameters : nullptr,
                           std::move(req));
    } catch (...) {
      // Arguments the method cannot be called with: Python's call raises TypeError there, and
      // its server sends it as '#ERROR'.
      return enqueue(sc,
                     python::error_reply(
                         ErrorEnvelope::capture(std::current_exception(),
                                                {.call = call, .object = object_name(typeid_, id)}),
                         sc->python_protocol, true));
    }
    python_admit(sc);
    sc->start_running(call_id, {obj, 0, serial, size});
    sc->held_bytes += size;
    const int protocol = sc->python_protocol;
    enqueue_lane(
        sc, 0,
        [this, self = shared_from_this(), sc, obj, entry, typeid_, serial, id, call_id, mname,
         state, protocol]() mutable {
          auto run = [this, self, sc, obj, typeid_, id, call_id, mname, state, protocol]() mutable {
            auto done = std::make_shared<PyDone>(shared_from_this(), sc, call_id, protocol, false,
                                                 CallText{.typeid_ = typeid_,
                                                          .method = mname,
                                                          .object = id,
                                                          .arguments = state->summary()});
            try {
              const CallInfo info = python_info(sc, call_id, id, typeid_, mname, *state, this);
              if (is_repr(mname)) {
                detail::no_fallback_arguments(info, typeid_);
                done->complete(obj->repr());
              } else {
                detail::waits::AnswersHere answers(info.caller);  // as run_object_call's
                obj->call(info, done);
                answers.run();
              }
            } catch (...) {
              done->fail(std::current_exception());
            }
          };
          run_call(sc, entry, serial, std::move(run));
        });
  }

  // How a call of CPython's dialect ends: '#RETURN' and the value (proxies in it written as
  // CPython's RebuildProxy), '#PROXY' for a method of method_to_typeid, '#RETURN' (ident,
  // exposed) for a create; a failure as '#ERROR' (a method's) or '#TRACEBACK' (a create's).
  class PyDone final : public CallEnd {
  public:
    // `protocol`: the request's (read on the strand; this may be made off it).
    PyDone(std::shared_ptr<Impl> server, std::shared_ptr<ServerConn> sc, std::uint64_t call_id,
           int protocol, bool create, CallText text)
        : CallEnd(std::move(server), std::move(sc), call_id, 0, std::move(text)),
          protocol_(protocol),
          create_(create) {}

    ~PyDone() noexcept override { fail_if_unended(); }

    proto::Value::Builder value() override {
      if (!mb_) {
        mb_.emplace(internal::small_message_words);
        root_ = mb_->initRoot<proto::Value>();
      }
      return *root_;
    }

    void done() override {
      if (!claim()) return;
      std::vector<std::byte> bytes;
      try {
        Item x = mb_ ? detail::to_item(root_->asReader()) : Item();
        if (detail::has_ref(x)) server_->refs_to_python(x);
        bytes = python::reply("#RETURN", std::move(x), protocol_);
      } catch (...) {
        return send_error(std::current_exception());
      }
      server_->finish(sc_, call_id_, 0, std::move(bytes));
    }

    // The tree as the object holds it (a dict stays a dict), its refs parked for the client by
    // refs_to_python.
    void complete_item(const Item& x) override {
      if (!claim()) return;
      std::vector<std::byte> bytes;
      try {
        Item copy = x;
        if (detail::has_ref(copy)) server_->refs_to_python(copy);
        // What CPython's object returns there is an iterator (a set's __iter__, a list's or a
        // dict's __reversed__), which pickles as iter(list): the client gets an iterator
        // (next(reversed(proxy)) works), not the list the container hands back.
        if ((text_.method == "__iter__" || text_.method == "__reversed__") &&
            copy.kind() == detail::Kind::list)
          copy = Item::object("builtins.iter", Item::tuple({std::move(copy)}));
        bytes = python::reply("#RETURN", std::move(copy), protocol_);
      } catch (...) {
        return send_error(std::current_exception());
      }
      server_->finish(sc_, call_id_, 0, std::move(bytes));
    }
    bool keeps_items() const noexcept override { return true; }

    void new_object(std::string typeid_, std::shared_ptr<HostedObject> object) override {
      if (!claim()) return;
      std::optional<std::uint64_t> id;
      try {
        auto entry = server_->result_entry(text_.call(), typeid_, object);
        id = server_->add_object_id(sc_, std::move(object), entry);
        if (!id) return server_->finish(sc_, call_id_, 0, {});
        Item exposed = server_->python_exposed(*id);
        auto bytes =
            create_ ? python::reply(
                          "#RETURN",
                          Item::tuple({Item::text(python::ident_text(*id)), std::move(exposed)}),
                          protocol_)
                    : python::reply("#PROXY",
                                    Item::tuple({std::move(exposed),
                                                 python::token(typeid_, server_->address_, *id)}),
                                    protocol_);
        server_->finish(sc_, call_id_, 0, std::move(bytes));
      } catch (...) {
        // The reference taken for the client, which will not hear of it, goes again.
        if (id) {
          try {
            server_->python_decref(*id);
          } catch (...) {
          }
        }
        outside_ = true;  // as CPython's server makes a method_to_typeid result: '#TRACEBACK'
        send_error(std::current_exception());
      }
    }

  private:
    void send_error(std::exception_ptr e) noexcept override {
      std::vector<std::byte> bytes;
      try {
        bytes =
            python::error_reply(ErrorEnvelope::capture(e, {.call = text_.call(),
                                                           .object = text_.object_name(),
                                                           .arguments = text_.argument_kinds()}),
                                protocol_, !create_ && !outside_ && !raised_outside(e));
      } catch (...) {
        try {
          bytes = python::reply(
              "#TRACEBACK",
              Item::text(text_.call() + " failed, and its error could not be encoded"), protocol_);
        } catch (...) {
        }
      }
      server_->finish(sc_, call_id_, 0, std::move(bytes));
    }

    int protocol_;
    bool create_;
    bool outside_ = false;  // failed outside the method
    std::optional<capnp::MallocMessageBuilder> mb_;
    std::optional<proto::Value::Builder> root_;
  };

  // The methods a Python proxy of object `id` may call (CPython's `exposed`, with the methods of
  // method_to_typeid), as a tuple of str. @throws KeyError if there is no such object.
  template <class E>  // an Entry (declared below)
  static std::vector<std::string> python_exposed_locked(const E& e) {
    std::vector<std::string> names =
        e.entry && e.entry->exposed ? *e.entry->exposed : e.object->exposed();
    if (e.entry)
      for (const auto& [m, t] : e.entry->method_to_typeid)
        if (std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
    return names;
  }
  Item python_exposed(std::uint64_t id) {
    std::vector<std::string> names;
    {
      std::scoped_lock lock(m_);
      auto it = objects_.find(id);
      if (it == objects_.end())
        throw KeyError("'" + python::ident_text(id) + "' (no such object in the manager at " +
                       address_text_ + ")");
      names = python_exposed_locked(it->second);
    }
    std::vector<Item> out;
    out.reserve(names.size());
    for (auto& n : names) out.push_back(Item::text(std::move(n)));
    return Item::tuple(std::move(out));
  }

  // Python's references (incref/decref by ident) belong to no connection: CPython's client takes
  // and drops them on connections of their own. They are the server's until decref'd; a Python
  // client that dies keeps its objects alive, as with CPython's server.
  [[noreturn]] void python_over_limit() const {
    throw ValueError("over the limit of " + std::to_string(options_.max_objects_held) +
                     " objects held by Python clients (ServerOptions::max_objects_held)");
  }
  void python_hold_locked(std::uint64_t id) {
    auto it = python_refs_.find(id);
    if (it != python_refs_.end()) {
      ++it->second;
      return;
    }
    if (python_refs_.size() >= options_.max_objects_held) python_over_limit();
    python_refs_.emplace(id, 1);
  }
  void python_incref(std::uint64_t id) {
    std::scoped_lock lock(m_);
    auto it = objects_.find(id);
    if (it == objects_.end())
      throw KeyError("'" + python::ident_text(id) + "' (incref: no such object in the manager at " +
                     address_text_ + ")");
    python_hold_locked(id);
    // A proxy sent to a Python client (refs_to_python) has a park waiting for this incref: the
    // park's reference becomes the client's.
    if (auto pending = python_pending_.find(id); pending != python_pending_.end()) {
      while (!pending->second.empty()) {
        const std::uint64_t ticket = pending->second.front();
        pending->second.pop_front();
        auto p = parks_.find(ticket);
        if (p != parks_.end() && !p->second.early_claim && p->second.id == id) {
          erase_park_locked(p);
          if (pending->second.empty()) python_pending_.erase(pending);
          return;
        }
      }
      python_pending_.erase(pending);
    }
    ++it->second.refcount;
  }
  void python_decref(std::uint64_t id) {
    std::vector<Entry> dead;
    std::scoped_lock lock(m_);
    auto h = python_refs_.find(id);
    if (h == python_refs_.end())
      throw ValueError("Id " + python::ident_text(id) +
                       " has no reference held by Python clients (decref without incref)");
    if (--h->second == 0) python_refs_.erase(h);
    drop_locked(id, 1, dead);
    // `dead` is destroyed after the lock is released (declared before it).
  }

  // The proxies in a result, for a Python client: CPython's RebuildProxy of a Token of this
  // server. The client takes its own reference (incref) when it reads one; until then a parked
  // reference keeps the object (a proxy popped from a list, or one whose holder lets go
  // meanwhile): the ref's own park if it has one still parked (a ref written for the receiver,
  // or a queue's item its sender parked), else a new one; python_incref() takes it over, and
  // the sweep ends it after park_ttl if no incref comes.
  //
  // A proxy to another manager's object (held in a container, or in a queue's item) goes as
  // CPython's server sends the proxies it holds: a RebuildProxy of that manager's Token, which
  // the client connects to with its own process's key. Until its incref there, this server
  // keeps a reference of its own for it (linger()): a popped element's reference is dropped
  // after the reply is written.
  void refs_to_python(Item& x) {
    if (x.kind() == detail::Kind::ref) {
      const detail::Ref r = x.as_ref();
      std::string typeid_;
      std::vector<std::string> exposed;
      bool own;
      {
        std::scoped_lock lock(m_);
        own = own_address_locked(r.address);
      }
      if (!own) {
        Address foreign;
        try {
          foreign = Address::parse(r.address);
        } catch (const std::exception& e) {
          throw TypeError("a proxy to " + r.type_id + " object " + std::to_string(r.id) + " at " +
                          detail::repr(Item::text(r.address), 80) +
                          " cannot be sent to a Python client: " + e.what());
        }
        linger({r.type_id, r.address, r.id, r.fingerprint, 0});
        x = python::rebuild_proxy(r.type_id, foreign, r.id, {});
        return;
      }
      {
        std::scoped_lock lock(m_);
        auto it = objects_.find(r.id);
        if (it == objects_.end())
          throw KeyError("'" + python::ident_text(r.id) +
                         "' (a proxy to an object the manager at " + address_text_ +
                         " no longer has)");
        typeid_ = it->second.typeid_;
        exposed = python_exposed_locked(it->second);
        auto p = r.ticket != 0 ? parks_.find(r.ticket) : parks_.end();
        std::uint64_t ticket = 0;
        if (p != parks_.end() && !p->second.early_claim && p->second.id == r.id) {
          ticket = r.ticket;
        } else {
          do {
            ticket = internal::random_ticket();
          } while (parks_.count(ticket));
          ++it->second.refcount;
          parks_.emplace(ticket, Park{r.id, park_deadline(), false});
        }
        auto& pending = python_pending_[r.id];
        if (pending.size() < 1024) pending.push_back(ticket);
      }
      x = python::rebuild_proxy(typeid_, address_, r.id, exposed);
      return;
    }
    if (x.is_container() || x.kind() == detail::Kind::alternative ||
        x.kind() == detail::Kind::object)
      for (Item& e : x.elements()) refs_to_python(e);
  }

  // The proxies a Python client sent (CPython's RebuildProxy of a Token), as refs: only to this
  // server's objects (the Token's address is one this server is reached by). Each carries a
  // reference parked for it (as troupe's own proxies park one when they travel), so that the
  // object outlives the sender's proxy: a container that stores it claims the park, a queue's
  // receiver takes it over, and the sweep ends one nobody took after park_ttl. The parks count
  // against connection `conn`'s limit.
  void proxies_from_python(Item& x, std::uint64_t conn) {
    if (const Item* t = python::rebuilt_token(x)) {
      const auto f = python::token_fields(*t);
      if (!is_our_address(f.address)) {
        x = foreign_from_python(f);
        return;
      }
      const std::uint64_t id = python::parse_ident(f.ident);
      detail::Ref ref;
      {
        std::scoped_lock lock(m_);
        auto it = objects_.find(id);
        if (it == objects_.end())
          throw KeyError("'" + python::ident_text(id) + "' (a proxy to an object the manager at " +
                         address_text_ + " no longer has)");
        std::uint64_t ticket;
        do {
          ticket = internal::random_ticket();
        } while (parks_.count(ticket));
        add_park_locked(ticket, Park{id, park_deadline(), false, conn});  // may throw: limit
        ++it->second.refcount;
        // The typeid is the object's, not what the sender's Token says.
        ref = {it->second.typeid_, address_text_, id,
               it->second.entry ? it->second.entry->fingerprint : 0, ticket};
      }
      x = Item::ref(std::move(ref));
      return;
    }
    if (x.is_container() || x.kind() == detail::Kind::object)
      for (Item& e : x.elements()) proxies_from_python(e, conn);
  }

  // A Python client's proxy to another manager's object (its Token names another address), as
  // CPython's server takes one (RebuildProxy): this server becomes that manager's client,
  // connecting with this process's key (managers.md, "Inside another manager's objects"), and
  // takes a reference of its own there, which lingers for park_ttl (the sender's proxy may go
  // before a container claims one of its own, or before a queue's receiver takes the item).
  // Refused, naming the proxy, when ServerOptions::foreign_proxies is off.
  Item foreign_from_python(const python::TokenFields& f) {
    const std::string what = "a proxy to " + f.typeid_ + " object " + detail::repr(f.ident, 40) +
                             " at " + detail::repr(f.address, 80);
    if (!options_.foreign_proxies)
      throw TypeError(what + " cannot be passed to the manager at " + address_text_ +
                      ": it is another manager's, and this server's "
                      "ServerOptions::foreign_proxies is off");
    const auto address = python::address_of(f.address);
    if (!address) throw TypeError(what + ": the Token's address is not one troupe can reach");
    std::uint64_t id = 0;
    try {
      id = python::parse_ident(f.ident);
    } catch (const std::exception& e) {
      throw TypeError(what + ": " + e.what());
    }
    if (f.typeid_.empty() || f.typeid_.size() > 256)
      throw TypeError(what + ": its typeid is empty or longer than 256 bytes");
    detail::Ref ref{f.typeid_, address->str(), id, 0, 0};
    linger(ref);
    return Item::ref(std::move(ref));
  }

  // Takes a reference to another manager's object `r` (its ticket is ignored: a new one, over
  // this process's link there, connecting on first use) and keeps it for park_ttl (10 s when
  // parks wait forever), released by the sweep or at stop. @throws what connecting throws,
  // naming the address.
  void linger(detail::Ref r) {
    r.ticket = 0;
    BaseProxy p = internal::proxy_of(r);  // may connect: not under m_
    const auto until = options_.park_ttl.count() > 0 ? Clock::now() + options_.park_ttl
                                                     : Clock::now() + kForeignLinger;
    std::scoped_lock lock(m_);
    lingering_.push_back({until, std::move(p)});
  }

  // Whether a Python address names this server: its own, or its port on a name of this host.
  bool is_our_address(const Item& x) const {
    const auto a = python::address_of(x);
    if (!a) return false;
    if (*a == address_) return true;
    if (a->family == Address::Family::unix_path || a->family == Address::Family::unix_abstract ||
        address_.family == Address::Family::unix_path ||
        address_.family == Address::Family::unix_abstract)
      return false;
    if (a->port != address_.port) return false;
    static const std::set<std::string, std::less<>> kLocal = {"localhost", "127.0.0.1", "::1",
                                                              "0.0.0.0",   "::",        ""};
    if (kLocal.contains(a->host) || a->host == address_.host) return true;
    char host[256] = {};
    return ::gethostname(host, sizeof host - 1) == 0 && a->host == host;
  }

  // ---- writing (on the strand) -------------------------------------------------------------

  void enqueue(const std::shared_ptr<ServerConn>& sc, std::vector<std::byte> bytes) {
    if (sc->conn.closed()) return;
    sc->out_bytes += bytes.size();
    sc->out.push_back(std::move(bytes));
    if (sc->writing || sc->pump_deferred || sc->in_batch) return;
    // Written once the running handler is done: the replies it makes go out together.
    sc->pump_deferred = true;
    sc->strand.defer([this, sc, self = shared_from_this()] {
      sc->pump_deferred = false;
      pump(sc);
    });
  }

  // Writes what is queued: at once, as far as the socket takes it (the usual case: no
  // asynchronous operation, no completion to run later), the rest once it is writable. A plain
  // socket is written here (one sendmsg for up to 512 replies); a TLS one by the Connection.
  void pump(const std::shared_ptr<ServerConn>& sc) {
    bool wrote = false;
    for (;;) {
      if (sc->writing) return;
      if (sc->out.empty()) {
        if (sc->closing) close_conn(sc, "");
        break;
      }
      if (sc->conn.closed()) {
        sc->out.clear();
        sc->out_bytes = 0;
        return;
      }
      sc->writing = true;
      sc->sending.clear();
      while (!sc->out.empty() && sc->sending.size() < 512) {
        sc->sending.push_back(std::move(sc->out.front()));
        sc->out.pop_front();
      }
      if (sc->conn.tls()) return write_by_connection(sc);
      multiprocessing::internal::frame_messages(sc->sending, sc->headers, sc->unsent);
      if (!write_unsent(sc)) return;  // closed, or waiting until it is writable
      wrote = true;
    }
    if (wrote) maybe_resume(sc);
  }

  // Writes sc->unsent as far as the socket takes it. True when all of it went; false when the
  // connection failed (closed here) or the rest waits for the socket to be writable.
  bool write_unsent(const std::shared_ptr<ServerConn>& sc) {
    while (!sc->unsent.empty()) {
      msghdr msg{};
      msg.msg_iov = sc->unsent.data();
      msg.msg_iovlen = std::min<std::size_t>(sc->unsent.size(), 1024);
      ssize_t n;
      do {
        n = ::sendmsg(sc->conn.fileno(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      } while (n < 0 && errno == EINTR);
      if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          write_failed(sc);
          return false;
        }
        sc->conn.async_wait(asio::posix::descriptor_base::wait_write,
                            [this, sc, self = shared_from_this()](boost::system::error_code ec) {
                              if (ec || sc->conn.closed()) return write_failed(sc);
                              if (!write_unsent(sc)) return;
                              pump(sc);
                              maybe_resume(sc);
                            });
        return false;
      }
      multiprocessing::internal::consume_iov(sc->unsent, static_cast<std::size_t>(n));
    }
    written_out(sc);
    return true;
  }

  // A TLS connection's replies: written by the Connection, which encrypts them.
  void write_by_connection(const std::shared_ptr<ServerConn>& sc) {
    std::vector<std::span<const std::byte>> spans(sc->sending.begin(), sc->sending.end());
    sc->conn.async_send_messages(
        spans, [this, sc, self = shared_from_this()](boost::system::error_code ec) {
          if (ec) return write_failed(sc);
          written_out(sc);
          pump(sc);
          maybe_resume(sc);
        });
  }

  // The write of sc->sending has ended.
  static void written_out(const std::shared_ptr<ServerConn>& sc) {
    sc->writing = false;
    for (auto& b : sc->sending) {
      sc->out_bytes -= b.size();
      sc->keep_spare(std::move(b));
    }
    sc->sending.clear();
    sc->unsent.clear();
  }

  // A write failed (the peer went, or the connection was closed meanwhile): what is left goes.
  void write_failed(const std::shared_ptr<ServerConn>& sc) {
    written_out(sc);
    sc->out.clear();
    sc->out_bytes = 0;
    close_conn(sc, "");
  }

  // ---- closing a connection (on its strand) ------------------------------------------------

  void close_conn(const std::shared_ptr<ServerConn>& sc, const std::string& why) {
    if (!why.empty())
      mlog().info("manager server at " + address_text_ + ": connection of " + sc->peer +
                  " closed: " + why);
    sc->closing = true;
    // A write in progress ends (operation_aborted) once the connection is closed, without
    // touching its buffer again; its handler clears the rest.
    if (!sc->writing) {
      sc->out.clear();
      sc->out_bytes = 0;
    }
    unheat(sc);
    sc->conn.close();
    sc->spare_replies.clear();
    sc->takes_spares = false;
    sc->lanes.clear();
    sc->running.clear();
    sc->held_bytes = 0;
    release_conn(sc);
  }

  void release_conn(const std::shared_ptr<ServerConn>& sc) {
    std::vector<Entry> dead;
    std::vector<std::pair<std::shared_ptr<HostedObject>,
                          std::optional<asio::strand<asio::any_io_executor>>>>
        all;
    {
      std::scoped_lock lock(m_);
      if (sc->released) return;
      sc->released = true;
      for (auto& [id, n] : sc->held) drop_locked(id, n, dead);
      sc->held.clear();
      conns_.erase(sc->id);
      if (sc->slot) sc->slot->conns.fetch_sub(1, std::memory_order_relaxed);
      if (sc->greeted) {
        all.reserve(tracked_.size());
        for (const auto id : tracked_) {
          auto it = objects_.find(id);
          if (it != objects_.end()) all.emplace_back(it->second.object, it->second.serial);
        }
      }
    }
    auto release = [conn = sc->id](const std::shared_ptr<HostedObject>& o) {
      try {
        o->release_connection(conn);
      } catch (const std::exception& e) {
        mlog().warning(std::string("manager server: release_connection failed: ") + e.what());
      }
    };
    // A serialized typeid's objects are told on their strand (one call at a time, as promised);
    // the others together, in one handler.
    std::vector<std::shared_ptr<HostedObject>> shared;
    for (auto& each : all) {
      if (each.second)
        asio::post(*each.second, [o = each.first, release] { release(o); });
      else
        shared.push_back(std::move(each.first));
    }
    if (!shared.empty())
      asio::post(ex_, [shared = std::move(shared), release] {
        for (auto& o : shared) release(o);
      });
    dead.clear();  // destroyed outside the lock
  }

  // ---- the object table --------------------------------------------------------------------

  struct Entry {
    std::shared_ptr<HostedObject> object;
    std::shared_ptr<const TypeEntry> entry;
    std::string typeid_;
    std::uint64_t refcount = 0;
    std::optional<asio::strand<asio::any_io_executor>> serial;
  };

  // Under m_: `n` references to `id` are gone; a dead entry moves to `dead`.
  void drop_locked(std::uint64_t id, std::uint64_t n, std::vector<Entry>& dead) {
    auto it = objects_.find(id);
    if (it == objects_.end()) return;
    if (it->second.refcount > n) {
      it->second.refcount -= n;
      return;
    }
    by_identity_.erase({it->second.object->identity(), it->second.typeid_});
    tracked_.erase(id);
    python_pending_.erase(id);
    dead.push_back(std::move(it->second));
    objects_.erase(it);
  }

  // Under m_: one more reference of `sc` to `id`, within the limit.
  void hold_locked(const std::shared_ptr<ServerConn>& sc, std::uint64_t id) {
    auto h = sc->held.find(id);
    if (h == sc->held.end()) {
      if (sc->held.size() >= options_.max_objects_held)
        throw ValueError("over the limit of " + std::to_string(options_.max_objects_held) +
                         " objects held per connection (ServerOptions::max_objects_held)");
      sc->held.emplace(id, 1);
    } else {
      ++h->second;
    }
  }

  // A new object for `sc` (create, method_to_typeid): one reference, and its Ref in `out`.
  // False if the connection is gone (the object is dropped).
  bool add_object(const std::shared_ptr<ServerConn>& sc, std::shared_ptr<HostedObject> object,
                  const std::shared_ptr<const TypeEntry>& entry, proto::Ref::Builder out) {
    const auto id = add_object_id(sc, std::move(object), entry);
    if (!id) return false;
    write_ref_fields(*id, entry->typeid_, entry->fingerprint, 0, out);
    return true;
  }

  // The id of a new object for `sc`, holding one reference: the connection's (troupe's
  // dialect), or the Python table's (CPython's: its references are not a connection's). Nullopt
  // if the connection is gone (the object is dropped).
  std::optional<std::uint64_t> add_object_id(const std::shared_ptr<ServerConn>& sc,
                                             std::shared_ptr<HostedObject> object,
                                             const std::shared_ptr<const TypeEntry>& entry) {
    std::uint64_t id;
    {
      std::scoped_lock lock(m_);
      if (sc->released) return std::nullopt;
      auto known = by_identity_.find({object->identity(), entry->typeid_});
      if (known != by_identity_.end()) {
        id = known->second;
        if (sc->python)
          python_hold_locked(id);
        else
          hold_locked(sc, id);
        ++objects_.at(id).refcount;
      } else {
        if (sc->python) {
          if (python_refs_.size() >= options_.max_objects_held) python_over_limit();
        } else if (sc->held.size() >= options_.max_objects_held) {
          throw ValueError("over the limit of " + std::to_string(options_.max_objects_held) +
                           " objects held per connection (ServerOptions::max_objects_held)");
        }
        id = next_object_++;
        Entry e;
        e.entry = entry;
        e.typeid_ = entry->typeid_;
        e.refcount = 1;
        if (entry->serialized) {
          // One strand per C++ object, whatever typeids it is served as: its calls never overlap.
          auto same = by_identity_.lower_bound({object->identity(), std::string()});
          for (; same != by_identity_.end() && same->first.first == object->identity(); ++same)
            if (auto o = objects_.find(same->second); o != objects_.end() && o->second.serial) {
              e.serial = o->second.serial;
              break;
            }
          if (!e.serial) e.serial.emplace(asio::make_strand(ex_));
        }
        by_identity_.emplace(std::pair(object->identity(), entry->typeid_), id);
        if (object->tracks_connections()) tracked_.insert(id);
        e.object = std::move(object);
        objects_.emplace(id, std::move(e));
        if (sc->python)
          python_refs_.emplace(id, 1);
        else
          sc->held.emplace(id, 1);
      }
    }
    return id;
  }

  void write_ref_fields(std::uint64_t id, const std::string& typeid_, std::uint64_t fingerprint,
                        std::uint64_t ticket, proto::Ref::Builder out) {
    out.setTypeid(typeid_.c_str());
    out.setAddress(address_text_.c_str());
    out.setId(id);
    out.setFingerprint(fingerprint);
    out.setTicket(ticket);
  }

  bool has_object(std::uint64_t id) const {
    std::scoped_lock lock(m_);
    return objects_.count(id) != 0;
  }

  [[noreturn]] void no_object(std::uint64_t id, const char* what) const {
    throw KeyError(std::string(what) + ": no object " + std::to_string(id) + " in the manager at " +
                   address_text_ + " (released, or never made)");
  }

  void incref(const std::shared_ptr<ServerConn>& sc, std::uint64_t id) {
    std::scoped_lock lock(m_);
    auto it = objects_.find(id);
    if (it == objects_.end()) no_object(id, "incref");
    hold_locked(sc, id);
    ++it->second.refcount;
  }

  void decref(const std::shared_ptr<ServerConn>& sc, std::uint64_t id) {
    std::vector<Entry> dead;
    {
      std::scoped_lock lock(m_);
      auto h = sc->held.find(id);
      if (h == sc->held.end())
        throw ValueError("decref: this connection holds no reference to object " +
                         std::to_string(id));
      if (--h->second == 0) sc->held.erase(h);
      drop_locked(id, 1, dead);
    }
  }

  using Clock = std::chrono::steady_clock;
  struct Park {
    std::uint64_t id = 0;
    Clock::time_point deadline;
    bool early_claim = false;  // the claim came first: the park, when it comes, is dropped
    std::uint64_t conn = 0;    // the connection that made it (0: the server), for its limit
  };

  // An early claim's marker waits this long for its park even when parks wait forever.
  static constexpr std::chrono::seconds kEarlyClaimTtl{300};

  Clock::time_point park_deadline(bool early_claim = false) const {
    if (options_.park_ttl.count() <= 0)
      return early_claim ? Clock::now() + kEarlyClaimTtl : Clock::time_point::max();
    return Clock::now() + options_.park_ttl;
  }

  // Under m_: a park or early-claim marker made by connection `conn`, within its limit (parks
  // outlive their connection, so each connection may leave at most max_objects_held of them).
  void add_park_locked(std::uint64_t ticket, Park p) {
    if (p.conn != 0) {
      auto& n = parks_by_conn_[p.conn];
      if (n >= options_.max_objects_held)
        throw ValueError("over the limit of " + std::to_string(options_.max_objects_held) +
                         " references parked or claimed ahead per connection "
                         "(ServerOptions::max_objects_held)");
      ++n;
    }
    parks_.emplace(ticket, p);
  }
  std::unordered_map<std::uint64_t, Park>::iterator erase_park_locked(
      std::unordered_map<std::uint64_t, Park>::iterator it) {
    if (const auto conn = it->second.conn; conn != 0) {
      auto n = parks_by_conn_.find(conn);
      if (n != parks_by_conn_.end() && --n->second == 0) parks_by_conn_.erase(n);
    }
    return parks_.erase(it);
  }

  void park(const std::shared_ptr<ServerConn>& sc, std::uint64_t id, std::uint64_t ticket) {
    if (ticket == 0) throw ValueError("park: ticket 0");
    std::scoped_lock lock(m_);
    auto p = parks_.find(ticket);
    if (p != parks_.end()) {
      if (p->second.early_claim && p->second.id == id) {
        erase_park_locked(p);  // claimed already, with a reference of its own
        return;
      }
      throw ValueError("park: ticket already parked");
    }
    auto it = objects_.find(id);
    if (it == objects_.end()) no_object(id, "park");
    add_park_locked(ticket, Park{id, park_deadline(), false, sc->id});
    ++it->second.refcount;
  }

  // Takes over the parked reference of `ticket`, or a new one; `conn` 0: a hosted object.
  void claim_locked(std::uint64_t id, std::uint64_t ticket, const char* what, std::uint64_t conn) {
    if (ticket != 0) {
      auto p = parks_.find(ticket);
      if (p != parks_.end() && !p->second.early_claim) {
        if (p->second.id != id)
          throw ValueError(std::string(what) + ": ticket parked for another object");
        erase_park_locked(p);
        return;  // the park's reference is now the claimer's
      }
    }
    auto it = objects_.find(id);
    if (it == objects_.end()) no_object(id, what);
    if (ticket != 0) add_park_locked(ticket, Park{id, park_deadline(true), true, conn});
    ++it->second.refcount;
  }

  void claim(const std::shared_ptr<ServerConn>& sc, std::uint64_t id, std::uint64_t ticket) {
    std::scoped_lock lock(m_);
    if (objects_.find(id) == objects_.end() &&
        !(ticket != 0 && parks_.count(ticket) && !parks_.at(ticket).early_claim))
      no_object(id, "claim");
    hold_locked(sc, id);
    try {
      claim_locked(id, ticket, "claim", sc->id);
    } catch (...) {
      auto h = sc->held.find(id);
      if (h != sc->held.end() && --h->second == 0) sc->held.erase(h);
      throw;
    }
  }

  // RefHost
  void hold(std::uint64_t id, std::uint64_t ticket) override {
    std::scoped_lock lock(m_);
    claim_locked(id, ticket, "hold", 0);
  }
  void drop(std::uint64_t id) noexcept override {
    std::vector<Entry> dead;
    std::scoped_lock lock(m_);
    drop_locked(id, 1, dead);
    // `dead` is destroyed after the lock is released (declared before it).
  }
  void end_park(std::uint64_t id, std::uint64_t ticket) noexcept override {
    std::vector<Entry> dead;  // destroyed after the lock is released
    std::scoped_lock lock(m_);
    auto p = parks_.find(ticket);
    if (p == parks_.end() || p->second.early_claim || p->second.id != id) return;
    // Handed on to a Python client's reply (refs_to_python): its incref takes it over (were it
    // ended, that incref would take a new reference and the counts still balance; kept, the
    // reply's ref names a live park).
    if (auto pending = python_pending_.find(id);
        pending != python_pending_.end() &&
        std::find(pending->second.begin(), pending->second.end(), ticket) != pending->second.end())
      return;
    erase_park_locked(p);
    drop_locked(id, 1, dead);
  }
  std::shared_ptr<detail::HostedObject> find(std::string_view address, std::uint64_t id) override {
    std::scoped_lock lock(m_);
    if (!own_address_locked(address)) return nullptr;
    auto it = objects_.find(id);
    return it == objects_.end() ? nullptr : it->second.object;
  }
  bool holds_foreign() override { return options_.foreign_proxies; }
  bool hosts(std::string_view address) override {
    std::scoped_lock lock(m_);
    return own_address_locked(address);
  }
  // Under m_: `address` (a Ref's text) is this server's own or a name a client reached it by.
  bool own_address_locked(std::string_view address) const {
    return address == address_text_ || aliases_.contains(address);
  }
  void write_ref(std::uint64_t id, proto::Ref::Builder out) override {
    std::uint64_t ticket;
    std::string typeid_;
    std::uint64_t fingerprint = 0;
    {
      std::scoped_lock lock(m_);
      auto it = objects_.find(id);
      if (it == objects_.end()) no_object(id, "write_ref");
      do {
        ticket = internal::random_ticket();
      } while (parks_.count(ticket));
      ++it->second.refcount;
      parks_.emplace(ticket, Park{id, park_deadline(), false});
      typeid_ = it->second.typeid_;
      if (it->second.entry) fingerprint = it->second.entry->fingerprint;
    }
    write_ref_fields(id, typeid_, fingerprint, ticket, out);
  }

  void schedule_sweep() {
    // With parks that wait forever, the sweep still ends early claims' markers.
    const auto ttl = options_.park_ttl.count() > 0
                         ? options_.park_ttl
                         : std::chrono::duration_cast<std::chrono::milliseconds>(kEarlyClaimTtl);
    auto period = std::clamp<std::chrono::milliseconds>(ttl / 4, std::chrono::milliseconds(5),
                                                        std::chrono::milliseconds(1000));
    std::scoped_lock lock(timer_m_);
    if (shutdown_requested()) return;
    sweep_timer_ = std::make_shared<asio::steady_timer>(ex_, period);
    sweep_timer_->async_wait([self = weak_from_this()](boost::system::error_code ec) {
      auto s = self.lock();
      if (ec || !s) return;
      s->sweep();
      s->schedule_sweep();
    });
  }

  void sweep() {
    std::vector<Entry> dead;
    std::vector<Lingering> gone;  // released after the lock (a decref on its link)
    {
      std::scoped_lock lock(m_);
      const auto now = Clock::now();
      for (auto it = lingering_.begin(); it != lingering_.end();) {
        if (it->until <= now) {
          gone.push_back(std::move(*it));
          it = lingering_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto it = parks_.begin(); it != parks_.end();) {
        if (it->second.deadline <= now) {
          if (!it->second.early_claim) drop_locked(it->second.id, 1, dead);
          it = erase_park_locked(it);
        } else {
          ++it;
        }
      }
    }
  }

  // ---- shared memory segments (a SharedMemoryManager's server) ------------------------------

  // `name` as a segment name (without the leading '/'), or a ValueError naming it.
  static std::string segment_name(std::string_view name, const char* what) {
    if (name.empty() || name.size() > 250 || name.find('/') != std::string_view::npos ||
        name.find('\0') != std::string_view::npos)
      throw ValueError(std::string(what) + ": '" +
                       std::string(name.substr(0, std::min<std::size_t>(name.size(), 64))) +
                       "' is not a shared memory segment name (1 to 250 bytes, no '/')");
    return std::string(name);
  }

  // Python's track_segment: appends the name (again if tracked already, as CPython's list).
  void track_segment(const std::string& name) {
    std::scoped_lock lock(m_);
    if (segments_.size() >= options_.max_objects_held)
      throw ValueError("track_segment: over the limit of " +
                       std::to_string(options_.max_objects_held) +
                       " segments tracked (ServerOptions::max_objects_held)");
    segments_.push_back(name);
  }

  // Python's release_segment: forgets the name once (ValueError if it is not tracked, as
  // list.remove) and unlinks the segment now (FileNotFoundError if it is gone).
  void release_segment(const std::string& name) {
    {
      std::scoped_lock lock(m_);
      const auto it = std::find(segments_.begin(), segments_.end(), name);
      if (it != segments_.end())
        segments_.erase(it);
      else
        throw ValueError("release_segment: shared memory '" + name +
                         "' is not tracked by the manager at " + address_text_);
    }
    if (::shm_unlink(("/" + name).c_str()) != 0)
      throw_os_error(errno, "release_segment: unlinking shared memory '" + name + "'");
  }

  // list_segments(): the names tracked, in the order they came.
  std::vector<std::string> tracked_segments() {
    std::scoped_lock lock(m_);
    return segments_;
  }

  // At stop: every tracked segment goes (one a client unlinked already is skipped).
  void unlink_segments() noexcept {
    std::vector<std::string> names;
    {
      std::scoped_lock lock(m_);
      names.swap(segments_);
    }
    for (const auto& n : names) {
      if (::shm_unlink(("/" + n).c_str()) != 0 && errno != ENOENT)
        mlog().warning("manager server at " + address_text_ + ": unlinking shared memory '" + n +
                       "' failed: " + std::strerror(errno));
    }
  }

  // ---- introspection -----------------------------------------------------------------------

  std::size_t number_of_objects() const {
    std::scoped_lock lock(m_);
    return objects_.size();
  }

  std::string debug_info() const {
    std::vector<
        std::tuple<std::uint64_t, std::uint64_t, std::string, std::shared_ptr<HostedObject>>>
        rows;
    {
      std::scoped_lock lock(m_);
      for (const auto& [id, e] : objects_) rows.emplace_back(id, e.refcount, e.typeid_, e.object);
    }
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return std::get<0>(a) < std::get<0>(b); });
    // CPython's Server.debug_info: per object, its ident (hex, as its tokens carry it), its
    // refcount and str(obj)[:75]; the lines joined by '\n'.
    std::string out;
    for (const auto& [id, refs, typeid_, obj] : rows) {
      std::string r;
      try {
        r = obj->repr();
      } catch (const std::exception& e) {
        r = std::string("<repr failed: ") + e.what() + ">";
      }
      // str(obj)[:75]: 75 code points (UTF-8: a byte that does not continue one starts one).
      std::size_t at = 0;
      for (int points = 0; at < r.size(); ++at)
        if ((static_cast<unsigned char>(r[at]) & 0xC0) != 0x80 && points++ == 75) break;
      r.resize(at);
      if (!out.empty()) out += '\n';
      out +=
          "  " + python::ident_text(id) + ":       refcount=" + std::to_string(refs) + "\n    " + r;
    }
    return out;
  }

  std::size_t connection_count() const {
    std::scoped_lock lock(m_);
    std::size_t n = 0;
    for (const auto& [id, c] : conns_) n += c->greeted ? 1 : 0;
    return n;
  }

  static std::string random_hex(std::size_t n) {
    auto b = multiprocessing::detail::random_bytes(n);
    static const char* hex = "0123456789abcdef";
    std::string s;
    for (auto x : b) {
      s += hex[static_cast<unsigned>(x) >> 4];
      s += hex[static_cast<unsigned>(x) & 15];
    }
    return s;
  }

  const Registry& registry_;
  ServerOptions options_;
  std::unique_ptr<asio::io_context> own_;
  bool user_executor_ = false;  // the server runs on an executor the user gave
  asio::any_io_executor ex_;
  std::vector<std::unique_ptr<IoSlot>> io_;  // the connections' (own threads only)
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
  std::optional<Listener> listener_;
  Address address_;
  std::string address_text_;
  std::set<std::string, std::less<>>
      aliases_;         // other names clients reached this server by (under m_)
  std::mutex timer_m_;  // sweep_timer_'s
  std::shared_ptr<asio::steady_timer> sweep_timer_;

  std::mutex life_m_;  // start() against stop(): threads_, work_, own_'s lifetime
  // Calls that may block (post_blocking): waiting for an own thread, and running on one.
  std::atomic<int> blocking_queued_{0};
  std::atomic<std::uint64_t> blocking_starts_{0};
  std::uint64_t starts_seen_ = 0;  // by grow_if_starved (one timer: one thread at a time)
  std::atomic<unsigned> own_threads_{0};
  std::atomic<bool> warned_max_threads_{false};
  std::atomic<bool> warned_max_helpers_{false};
  std::mutex grow_m_;                             // grow_timer_'s operations, grow_armed_
  std::optional<asio::steady_timer> grow_timer_;  // on the first connection thread
  std::atomic<bool> grow_armed_{false};           // a timer wait is pending (set under grow_m_)
  // Calls that may block on the connection threads (run_may_block): the monitor and its helpers.
  std::thread monitor_;
  std::mutex mon_m_;
  std::condition_variable mon_cv_;
  bool mon_stop_ = false;                         // under mon_m_
  std::atomic<bool> monitor_deep_{false};         // asleep until a call begins
  std::atomic<int> busy_total_{0};                // calls running on the connection threads
  std::vector<std::unique_ptr<Helper>> helpers_;  // the monitor's (then stop()'s)
  mutable std::mutex m_;
  std::condition_variable cv_;
  bool started_ = false;
  bool stopped_ = false;
  bool stop_done_ = false;  // the stop() that set stopped_ has returned
  bool shutdown_requested_ = false;
  std::atomic<bool> closed_all_{false};
  bool flush_on_close_ = false;  // a client asked for the shutdown: replies go out first
  std::unordered_map<std::uint64_t, Entry> objects_;
  // An object returned again is the same managed object (one id), per typeid: the same C++ object
  // returned as two typeids (say one exposing fewer methods) is two managed objects, each
  // with its own typeid's exposed methods, as the proxies made for them expect.
  std::map<std::pair<const void*, std::string>, std::uint64_t> by_identity_;
  std::unordered_set<std::uint64_t> tracked_;  // objects whose release_connection() does work
  std::vector<std::string> segments_;          // shared memory tracked, in order (track_segments)
  std::unordered_map<std::uint64_t, Park> parks_;
  // References to other managers' objects kept for a Python client (foreign_from_python,
  // refs_to_python) until `until`; under m_.
  struct Lingering {
    Clock::time_point until;
    BaseProxy proxy;
  };
  std::vector<Lingering> lingering_;
  static constexpr std::chrono::seconds kForeignLinger{10};
  std::unordered_map<std::uint64_t, std::uint32_t> parks_by_conn_;  // conn → parks it made
  std::unordered_map<std::uint64_t, std::shared_ptr<ServerConn>> conns_;
  std::unordered_map<std::uint64_t, std::uint64_t> python_refs_;  // Python clients' (id → count)
  // Parks of proxies sent to Python clients, by object, for their increfs (refs_to_python).
  std::unordered_map<std::uint64_t, std::deque<std::uint64_t>> python_pending_;
  std::uint64_t next_object_ = 1;
  std::uint64_t next_conn_ = 1;
  static inline std::atomic<unsigned> counter_{0};
};

Server::Server(const Registry& registry, std::optional<Address> address, ServerOptions options)
    : impl_(std::make_shared<Impl>(registry, std::move(address), std::move(options),
                                   asio::any_io_executor())) {}

Server::Server(const Registry& registry, std::optional<Address> address, ServerOptions options,
               asio::any_io_executor executor)
    : impl_(std::make_shared<Impl>(registry, std::move(address), std::move(options),
                                   std::move(executor))) {}

Server::~Server() {
  try {
    auto keep = impl_;  // alive while stop() runs, whatever another thread does with *this
    keep->stop();
  } catch (const std::exception& e) {
    mlog().error(std::string("manager server: stop failed in the destructor: ") + e.what());
  }
}

const Address& Server::address() const noexcept {
  return impl_->address_;
}
void Server::start() {
  impl_->start();
}
void Server::serve_forever() {
  auto keep = impl_;
  keep->start();
  keep->wait_for_shutdown();
  keep->stop();
}
void Server::stop() {
  auto keep = impl_;
  keep->stop();
}
void Server::request_shutdown() noexcept {
  impl_->request_shutdown();
}
bool Server::shutdown_requested() const noexcept {
  return impl_->shutdown_requested();
}
std::size_t Server::number_of_objects() const {
  return impl_->number_of_objects();
}
std::string Server::debug_info() const {
  return impl_->debug_info();
}
std::size_t Server::connection_count() const {
  return impl_->connection_count();
}
boost::asio::any_io_executor Server::get_executor() const {
  return impl_->ex_;
}

}  // namespace troupe::multiprocessing::managers
