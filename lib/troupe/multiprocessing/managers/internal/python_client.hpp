// troupe/multiprocessing/managers/internal/python_client.hpp — a link's requests sent to a manager
// served by CPython (multiprocessing.managers.Server): what Link does when the server answered
// its Hello with a pickle (doc/interop.md "Connecting to a Python manager"). Not API.
//
// CPython's client opens a connection per thread for method calls (accept_connection, then one
// call after another, each answered before the next is read), and a new connection for each of
// the server's other functions (create, incref, decref, get_methods, ...: one request, one reply,
// closed). This does the same, under troupe's proxies:
// - a Call goes on its lane's connection (a lane is a client thread, as CPython's connection per
//   thread); calls sent on one lane before the replies came are answered in order, so each lane
//   keeps its calls in flight in a queue, and the link's thread reads the replies;
// - the other requests run on a thread of their own, one after another, each on a short
//   connection: a blocking caller waits for its reply; incref, decref, park and claim (sent with
//   no reply) are queued there, so a proxy dropped on any thread never blocks it;
// - each reply is turned into the Reply frame troupe's own server would have sent, so proxies
//   decode it as they always do: '#RETURN' a result (a proxy in it a Ref), '#PROXY' a Ref,
//   '#ERROR' the exception's class (else RemoteError), '#TRACEBACK' and '#UNSERIALIZABLE'
//   RemoteError with the server's text.
// Every reply goes through the data-only pickle reader (detail/pickle.hpp): nothing the server
// sends runs code here.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/managers/detail/frame.hpp"
#include "troupe/multiprocessing/managers/detail/item.hpp"

#include "manager.capnp.h"

namespace troupe::multiprocessing::managers::internal::python {

/// Client(address, options) for a manager link: an AuthenticationError without
/// `options.auth.legacy_md5` says that a CPython 3.11 or older manager answers only HMAC-MD5.
Connection connect_to_manager(const Address& address, const ClientOptions& options);

/// Whether a reply to the Hello (its first bytes) is a pickle: the server speaks CPython's
/// dialect (it could not read the Hello and answered with a '#TRACEBACK' pickle).
bool is_pickle(std::span<const std::byte> reply) noexcept;

class ClientPeer : public std::enable_shared_from_this<ClientPeer> {
public:
  /// What a request comes to: the Reply frame, or the error that ended it before a reply.
  using Handler = std::function<void(std::exception_ptr, std::shared_ptr<detail::Frame>)>;

  /// `address_text` names the server in errors; `ex` (the link's thread) reads the lanes'
  /// replies and runs their handlers.
  /// `heartbeat_interval` (0: none): while calls wait, the peer checks every interval that the
  /// server answers a 'dummy' on a connection of its own within the connect timeout (CPython's
  /// server has no ping); one that does not (its host is gone) fails them all.
  ClientPeer(Address address, std::string address_text, ClientOptions options,
             boost::asio::any_io_executor ex,
             std::chrono::milliseconds heartbeat_interval = std::chrono::milliseconds(0));
  ~ClientPeer();
  ClientPeer(const ClientPeer&) = delete;
  ClientPeer& operator=(const ClientPeer&) = delete;

  /// Starts the heartbeat (if it has an interval).
  void start_heartbeat();
  /// Python's BaseManager.connect(): a 'dummy' request on a connection of its own.
  /// @throws what connecting throws, or RemoteError with the server's text.
  void greet();

  /// Sends request `r`; `done` gets its Reply frame (or the error that ended it): on the link's
  /// thread for a Call, on this peer's own thread for the rest. `logged`: a request with no
  /// reply (incref, decref, park, claim), whose failure is only logged. Never blocks for the
  /// server, except a Call on a lane not yet connected (it connects).
  void start(proto::manager::Request::Reader r, Handler done);
  /// start() and wait (at most `timeout`): the reply's frame. An error reply is thrown as its
  /// class. @throws TimeoutError naming the server; EOFError once it is gone.
  std::shared_ptr<detail::Frame> call(proto::manager::Request::Reader r,
                                      std::optional<std::chrono::nanoseconds> timeout);
  /// Waits (at most `timeout`) until the requests queued for the peer's own thread are done
  /// (a park must have reached the server before the proxy leaves this process).
  void flush(std::chrono::nanoseconds timeout);

  /// Ends everything: pending calls fail with EOFError naming `why`; the connections close.
  void close(const std::string& why);
  bool dead() const;
  /// Whether the server is still there: false once the peer is dead, or an idle lane's
  /// connection was closed by the server (stopped, restarted: the next Link::get connects
  /// afresh).
  bool alive();
  /// In a forked child: closes the lanes' sockets (the parent's), without locks.
  void after_fork_in_child() noexcept;
  /// The error every request fails with once the peer is dead.
  std::exception_ptr dead_error() const;

private:
  struct Lane;
  struct Waiting;
  struct Job {
    std::function<void()> run;
    std::function<void(std::exception_ptr)> fail;  // told if the job never runs
  };
  std::shared_ptr<Lane> lane_for(std::uint64_t lane);
  void start_call(proto::manager::Request::Reader r, Handler done);
  void read_lane(const std::shared_ptr<Lane>& lane);
  /// Runs `done` on the link's thread (never inside start(), never on the peer's own thread,
  /// whose destructor could then run there).
  void deliver(Handler done, std::exception_ptr e, std::shared_ptr<detail::Frame> f);
  /// Drops the references parked for a call once it is answered (or never sent): to this
  /// server's objects (a Ref with an empty address) a decref, on the peer's thread; to another
  /// manager's, the park there is claimed and released (a decref there).
  void drop_parked(const std::vector<detail::Ref>& parked);
  void beat();
  void post_job(std::function<void()> f, std::function<void(std::exception_ptr)> fail = {});
  void run_jobs();
  /// One of the server's functions on a connection of its own: its '#RETURN' value. `bounded`:
  /// the answer must come within the connect timeout (all but create, which runs the typeid's
  /// callable: as long as it takes, while the peer lives).
  detail::Item dispatch(const std::string& function, std::vector<detail::Item> args,
                        bool bounded = true);
  /// A request other than a Call, run on the peer's thread: the Reply frame.
  std::shared_ptr<detail::Frame> run_function(std::uint64_t call_id,
                                              proto::manager::Request::Reader r);
  /// A lane's reply (kind, value) as a Reply frame.
  std::shared_ptr<detail::Frame> reply_frame(std::uint64_t call_id, detail::Item reply,
                                             const std::string& where);
  /// A Call's arguments as Python's: proxies as CPython pickles them (another manager's too:
  /// CPython's server connects there itself). The proxies parked for the call (to drop once the
  /// call is answered).
  detail::Item python_args(capnp::List<proto::Value>::Reader args, const std::string& where,
                           std::vector<detail::Ref>& parked);
  /// The first argument of a key or index method (`__getitem__`, `get`, `pop`, `add`, ...) as
  /// Python reads it, by what the object exposes: a mapping's key or a set's element that came
  /// as a `sequence` (a C++ tuple, pair, struct) as a tuple; a sequence's index that came as
  /// troupe's slice (SliceArg: a list of three, each None or an int) as Python's slice.
  void shape_index(std::uint64_t id, std::string_view method, std::vector<detail::Item>& args);
  /// A value from the server as troupe's: proxies become refs.
  detail::Item from_python(detail::Item x, const std::string& where);
  std::vector<std::string> exposed_of(std::uint64_t id);
  /// Keeps an object's exposed method names (a tuple of str from the server); returns them.
  std::vector<std::string> remember_exposed(std::uint64_t id, const detail::Item& names);
  Connection connect_new();
  std::exception_ptr dead_error_locked() const;

  const Address address_;
  const std::string address_text_;
  const ClientOptions options_;
  const boost::asio::any_io_executor ex_;
  const std::chrono::milliseconds heartbeat_interval_;
  std::shared_ptr<void> beat_timer_;  // a steady_timer on ex_, used there only
  bool beat_probe_pending_ = false;   // under m_

  mutable std::mutex m_;  // everything below
  bool dead_ = false;
  std::string why_dead_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Lane>> lanes_;
  std::uint64_t lane_clock_ = 0;
  // The exposed methods of objects seen (create, '#PROXY'): what an AutoProxy sent back to the
  // server carries. Bounded: cleared when full.
  std::unordered_map<std::uint64_t, std::vector<std::string>> exposed_;
  std::deque<Job> jobs_;
  std::size_t jobs_running_ = 0;
  bool stopping_ = false;
  // Set when the peer goes: a function still waiting for the server then gives up.
  std::optional<std::chrono::steady_clock::time_point> give_up_;
  std::condition_variable jobs_cv_;
  std::condition_variable idle_cv_;
  std::thread worker_;
};

}  // namespace troupe::multiprocessing::managers::internal::python
