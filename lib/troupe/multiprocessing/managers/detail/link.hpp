// troupe/multiprocessing/managers/detail/link.hpp — a process's connection to one manager
// server, shared by every proxy of this process to that server: requests multiplexed by call id;
// a blocking call writes and reads on its own thread (leader/follower), asynchronous requests'
// replies are read by a thread of the link's own (an Asio io_context). Not API.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <capnp/message.h>

#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/detail/frame.hpp"

#include "manager.capnp.h"

namespace troupe::multiprocessing::managers::internal::python {
class ClientPeer;
}

namespace troupe::multiprocessing::managers::detail {

/// How a link connects (BaseManager passes its own; a received proxy uses the defaults).
struct LinkOptions {
  std::chrono::milliseconds connect_timeout{10000};
  std::shared_ptr<boost::asio::ssl::context> tls;
  /// The HMAC handshake's options: `auth.legacy_md5` to reach a CPython 3.11 (or older) manager.
  AuthOptions auth;
  /// The heartbeat: while calls are pending and nothing has come from the server for
  /// heartbeat_interval, the link pings it; nothing for heartbeat_timeout (the server's host
  /// vanished, or the server is stopped) and the link is dead: every pending call fails with
  /// EOFError naming the silence. A waiting call (a managed queue's get) is answered by the
  /// server's pings meanwhile, so it may wait as long as it likes. Zero interval: no heartbeat.
  std::chrono::milliseconds heartbeat_interval{5000};
  std::chrono::milliseconds heartbeat_timeout{60000};
};

/// In a forked child: closes the parent's links' sockets and starts a table of this process's
/// own (the runtime's fork step manager_links, registered on first use of a link).
void after_fork_in_child() noexcept;

/// The calling thread's lane (calls of one lane run in order on the server): a number for the
/// thread, never 0, unique in this process.
std::uint64_t current_lane() noexcept;

/// Runs `f` on `ex` (posted, never inside this call). On the link's thread, while it ends the
/// calls of the replies one read brought, the completions are gathered instead, and posted when
/// the read is done: one handler for each run of completions on one executor, not one each (a
/// post costs the scheduler's lock, and a wake-up of its thread when it sleeps).
void post_completion(const boost::asio::any_io_executor& ex, std::function<void()> f);

class Link : public std::enable_shared_from_this<Link> {
public:
  /// What a reply comes to: the frame (its root a Reply), or the error that ended the call
  /// before any reply (the link died). Runs on the thread that read the reply: the link's own,
  /// or a thread blocked in call() reading for everyone; it must not block.
  using Handler = std::function<void(std::exception_ptr, std::shared_ptr<Frame>)>;
  /// Fills in a request (its call id and lane are set by the link).
  using Build = std::function<void(proto::manager::Request::Builder)>;

  /// This process's link to `address` authenticated with `authkey`: the live one, or a new
  /// connection (handshake, Hello, Welcome). @throws what Client throws (ConnectionRefusedError,
  /// AuthenticationError, TimeoutError …) naming the address; ValueError if the server refuses.
  static std::shared_ptr<Link> get(const Address& address, const AuthenticationString& authkey,
                                   const LinkOptions& options = {});
  /// A live link of this process to `address` whatever its key (it is authenticated already),
  /// else a new one authenticated with current_process().authkey(): what a received proxy uses.
  static std::shared_ptr<Link> for_address(const Address& address);
  /// Drops this process's links to `address` from the table (they stay alive while used), so
  /// the next get() connects afresh (a restarted server).
  static void forget(const Address& address);

  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  /// Sends a request; `done` gets its reply. A dead link calls `done` with the error at once
  /// (posted, never inside this call). Returns the call id. Thread-safe.
  std::uint64_t request(const Build& build, Handler done);
  /// A request built now, to send later with request(Built&): its lane is this thread's (unless
  /// `build` set one). An asynchronous call encodes its arguments when it is made, though a
  /// lazy completion token (use_awaitable, deferred) starts it only after that call returned.
  using Built = std::shared_ptr<capnp::MallocMessageBuilder>;
  Built prepare(const Build& build);
  /// request() of a prepared request (the link gives it its call id). Thread-safe.
  std::uint64_t request(capnp::MallocMessageBuilder& built, Handler done);
  /// Sends a request that has no reply unless it fails (decref, park, claim): a failure is
  /// logged. Thread-safe; nothing if the link is dead.
  void send(const Build& build);
  /// Sends a request that the server answers (an incref) without waiting for the answer: the
  /// link's thread reads it (left unread, it would make the socket's close a reset), and a
  /// failure is logged. Thread-safe; nothing if the link is dead.
  void send_answered(const Build& build);
  /// request() and wait: the reply's frame. An error reply is thrown as its class
  /// (throw_error); a dead link throws ConnectionError naming the server.
  /// With a `timeout`, a reply that does not come in time throws TimeoutError naming the server
  /// (the call is not cancelled: its reply, if it comes, is dropped).
  /// @throws RuntimeError on the link's own thread (it would wait for itself).
  std::shared_ptr<Frame> call(const Build& build,
                              std::optional<std::chrono::nanoseconds> timeout = std::nullopt);
  /// Waits (at most `timeout`) until every request sent before this call has been handed to
  /// the socket: a park sent for a proxy in transit must reach the server even if this process
  /// exits right after. Nothing on the link's own thread, or once the link is dead.
  void flush(std::chrono::nanoseconds timeout);

  const Address& address() const noexcept { return address_; }
  const std::string& address_text() const noexcept { return address_text_; }
  const AuthenticationString& authkey() const noexcept { return authkey_; }
  int server_pid() const noexcept { return server_pid_; }
  /// Whether the server is CPython's (multiprocessing.managers.Server): it answered the Hello
  /// with a pickle, and the link speaks its dialect (internal/python_client.hpp).
  bool python() const noexcept { return python_ != nullptr; }
  const std::string& server_name() const noexcept { return server_name_; }
  /// Whether the connection is up (false once the server has gone or closed it).
  bool alive() const;
  /// The process that made the link: in a forked child the inherited link is unusable.
  pid_t owner() const noexcept { return pid_; }
  /// Whether the calling thread is the link's own (Asio's) thread.
  bool on_link_thread() const noexcept;
  /// @throws RuntimeError when the calling thread is the link's own: `what` ("a blocking
  /// call") would wait there for a reply that thread reads. `advice` ends the message.
  void refuse_on_link_thread(std::string_view what, std::string_view advice = {}) const;
  /// The link's own thread's executor: what runs there must not block (the link's reading and
  /// writing wait behind it).
  boost::asio::any_io_executor executor() const;
  /// The error every call fails with once the link is dead.
  std::exception_ptr dead_error() const;

  struct Runner;

private:
  // A blocking call's wait (Link::call): done when its reply (or the link's death) came; `lead`
  // when it has been handed the reading of the connection.
  struct SyncWait;
  struct Pending {
    Handler handler;                 // an asynchronous request's
    std::shared_ptr<SyncWait> sync;  // or a blocking call's
  };

  Link(Address address, AuthenticationString authkey);
  void connect(const LinkOptions& options);
  /// Starts the link's thread unless it runs already (thread-safe).
  void ensure_runner() const;
  /// Builds a request for the CPython peer (a call id, the lane) into `mb`.
  proto::manager::Request::Reader build_python(capnp::MallocMessageBuilder& mb, const Build& build);
  void read_next();
  /// Ends the call whose reply `bytes` is; false once the link's thread should stop taking
  /// buffered replies (the link is dead, or, on a plain socket, no asynchronous call is owed).
  bool on_frame(std::vector<std::byte> bytes);
  /// on_frame() of a reply parsed already.
  bool on_reply(std::shared_ptr<Frame> frame);
  /// The link dies of a reply it cannot read (`e` says why); false, as on_frame() then returns.
  bool malformed_reply(const std::exception& e);
  void complete(Pending& p, std::exception_ptr error, std::shared_ptr<Frame> frame);
  void die(const std::string& why);
  void beat();
  void on_beat();
  /// Sends a frame: at once on this thread if the connection is idle, else queued for the
  /// link's thread. `gather`: queued even when idle (asynchronous requests while others are in
  /// flight: the link's thread writes what has gathered in one system call).
  void write(std::vector<std::byte>&& frame, bool gather = false);
  void schedule_pump_locked();
  void fail_if_no_runner(std::unique_lock<std::mutex>& lock);
  void pump();
  void lead(const std::shared_ptr<SyncWait>& w,
            std::optional<std::chrono::steady_clock::time_point> deadline);
  void release_reading_locked();
  void start_runner_reading_locked();
  std::vector<std::byte> start_call(const Build& build, std::uint64_t& id);
  std::vector<std::byte> build_frame(std::uint64_t call_id, const Build& build);

  Address address_;
  std::string address_text_;
  AuthenticationString authkey_;
  pid_t pid_;
  int fd_ = -1;  // the connection's fd, closed in a forked child
  int server_pid_ = 0;
  std::string server_name_;
  std::string server_address_;            // the server's own address text (Welcome.address)
  std::uint64_t server_max_message_ = 0;  // the server's max_message_size (Welcome; 0: none)
  // The ValueError for a request of `size` bytes over the server's limit (else null): refused
  // here, unsent, instead of making the server drop the connection and every call on it.
  std::exception_ptr oversize(std::size_t size) const;
  std::shared_ptr<Runner> runner_;
  std::atomic<unsigned> blocking_calls_{0};  // made before the link's thread started
  std::chrono::milliseconds heartbeat_interval_{0};
  std::chrono::milliseconds heartbeat_timeout_{0};
  // When the server was last heard from (steady_clock ticks), by whichever thread reads.
  std::atomic<std::int64_t> last_heard_{0};
  // Plain sockets (not TLS): a blocking call writes its request and reads replies on its own
  // thread (one sender and one receiver at a time: the Connection allows it), instead of
  // handing both to the link's thread and waiting to be woken (two context switches each way).
  // Under TLS one session serves both directions: everything stays on the link's thread.
  bool direct_ = false;
  std::unique_ptr<Connection> conn_;  // reads: by the reader; writes: by the writer
  // A CPython server: every request goes through this instead (conn_ is null).
  std::shared_ptr<internal::python::ClientPeer> python_;

  mutable std::mutex m_;  // dead_, pending_, the reader, the followers
  bool dead_ = false;
  std::string why_dead_;
  std::atomic<std::uint64_t> next_call_{1};  // no lock: ids are only unique
  std::unordered_map<std::uint64_t, Pending> pending_;
  // The map node of the last reply taken, emptied, for the next request: a call allocates none.
  decltype(pending_)::node_type spare_pending_;
  void add_pending_locked(std::uint64_t id, Pending p);
  Pending take_pending_locked(decltype(pending_)::iterator it);
  std::size_t async_pending_ = 0;  // entries of pending_ with a handler
  // Who reads the connection: nobody (nothing is owed), the link's thread (asynchronous
  // requests are owed), or a blocking caller (the leader) that reads for everyone until its own
  // reply comes, then hands the reading to a waiting caller (a follower) or the link's thread.
  enum class Reader { none, runner, leader } reader_ = Reader::none;
  std::deque<SyncWait*> followers_;

  std::mutex wm_;  // the writing: out_*, writing_, pump_posted_, runner_error_, drained_
  // Frames waiting to be written by the link's thread (written by a caller directly when the
  // connection is idle), one after another in out_bytes_, each ending where its out_ends_ entry
  // says: once the buffers have grown, a queued request allocates nothing (a frame of its own
  // was allocated by the caller and freed by the link's thread, through malloc's shared bins).
  // The link's thread takes them from out_first_ on (a write bounded in frames and bytes may
  // leave some), and drops what went before from time to time (compact_out_locked).
  std::vector<std::byte> out_bytes_;
  std::vector<std::size_t> out_ends_;
  std::size_t out_first_ = 0;
  bool out_queued_locked() const noexcept { return out_first_ < out_ends_.size(); }
  void clear_out_locked() noexcept {
    out_bytes_.clear();
    out_ends_.clear();
    out_first_ = 0;
  }
  void compact_out_locked();
  // The frames the link's thread is writing, in one gathered write, and their spans.
  std::vector<std::byte> sending_bytes_;
  std::vector<std::span<const std::byte>> sending_spans_;
  bool writing_ = false;
  bool pump_posted_ = false;
  std::string runner_error_;  // the link's thread could not start for a queued write
  // flush() callers waiting for the queued frames to drain.
  std::vector<std::function<void()>> drained_;
  void notify_drained_locked(std::unique_lock<std::mutex>& lock);
  friend void after_fork_in_child() noexcept;
};

/// The parks that building a request makes on this thread (BaseProxy::_write_ref, for each
/// proxy among its arguments) while a ParkScope lives: a request refused before it is sent
/// (over the server's max_message_size) ends them at once (a claim, then a decref, on each
/// park's link), where they would hold their objects until the server's park_ttl; so does a
/// build that throws (an argument after the proxy cannot be encoded).
class ParkScope {
public:
  ParkScope() noexcept;
  ~ParkScope();
  ParkScope(const ParkScope&) = delete;
  ParkScope& operator=(const ParkScope&) = delete;
  /// Ends every park noted in this scope (their request is not sent).
  void end_parks() noexcept;
  /// Notes a park in the innermost scope of this thread, if any.
  static void note(const std::shared_ptr<Link>& link, std::uint64_t id, std::uint64_t ticket);
  /// Whether this thread is building a request now.
  static bool active() noexcept;

private:
  struct Parked {
    std::shared_ptr<Link> link;
    std::uint64_t id;
    std::uint64_t ticket;
  };
  std::vector<Parked> parked_;
  ParkScope* outer_;
  int exceptions_;  // std::uncaught_exceptions() when made: a build that throws ends its parks
};

}  // namespace troupe::multiprocessing::managers::detail
