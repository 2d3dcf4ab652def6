// troupe/multiprocessing/connection.hpp — multiprocessing.connection: Connection, Pipe, and the
// HMAC challenge/response handshake, byte-compatible with CPython.
//
// The wire (doc/protocol.md): each message is a 4-byte big-endian signed length and the bytes;
// a message over 0x7fffffff bytes is sent as length -1, an 8-byte big-endian length, and the
// bytes. The handshake is CPython 3.12+'s: "#CHALLENGE#{sha256}" + 40 random bytes, answered by
// "{sha256}" + HMAC, then "#WELCOME#" or "#FAILURE#"; CPython <= 3.11's HMAC-MD5 dialect only
// when the caller opts in.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

#include "troupe/codec.hpp"
#include "troupe/detail/async.hpp"
#include "troupe/detail/futex.hpp"
#include "troupe/detail/reactor.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/authkey.hpp"
#include "troupe/multiprocessing/tls.hpp"
#include "troupe/timeout.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::multiprocessing {

namespace detail {
/// A received frame parsed as a Cap'n Proto message: its bytes (whole words, word-aligned as
/// operator new aligns) and a reader over them.
struct FlatMessage {
  explicit FlatMessage(std::vector<std::byte> b);
  kj::ArrayPtr<const capnp::word> words() const noexcept {
    return {reinterpret_cast<const capnp::word*>(bytes.data()), bytes.size() / sizeof(capnp::word)};
  }
  std::vector<std::byte> bytes;
  capnp::FlatArrayMessageReader reader;
};

/// A typed frame as received: small ones in one word buffer, large ones scattered so that runs
/// of large segments land in byte vectors a decoder can take over (codec_detail::Donors).
struct TypedFrame {
  std::vector<kj::ArrayPtr<const capnp::word>> segments;
  std::vector<std::vector<std::byte>> runs;  // large segments, end to end
  kj::Array<capnp::word> small;              // the other segments (the spare buffer if flat)
  std::size_t words = 0;
  bool flat = false;  // one contiguous message in `small`, segment table included
};

/// Throws ValueError unless the message fills `words` exactly.
void check_whole_message(const capnp::FlatArrayMessageReader& reader,
                         kj::ArrayPtr<const capnp::word> words);

/// An async completion's error code: errno values in Boost's generic category (so value() and
/// comparisons with boost::system::errc work), troupe::errc values wrapped as they are.
inline boost::system::error_code to_boost(const std::error_code& ec) {
  if (ec.category() == std::generic_category())
    return {ec.value(), boost::system::generic_category()};
  return boost::system::error_code(ec);
}

using troupe::detail::ReactorRegistration;

/// The progress of an asynchronous receive: header, then body, whose memory grows as its bytes
/// arrive (as the blocking receive's).
struct AsyncRead {
  int phase = 0;  // 0: 4-byte header, 1: 8-byte header, 2: length known, 3: body
  std::uint64_t size = 0;
  std::vector<std::byte> body;
  std::size_t got = 0;
  std::optional<std::size_t> maxlength;
  // Where the next bytes go when Asio receives them (a socket's reads): the read buffer's free
  // space (headers) or the body's.
  std::byte* into = nullptr;
  std::size_t into_size = 0;
  bool into_body = false;
};

/// The progress of an asynchronous send: the frame header and the payload's buffers.
/// Writes the length header of an n-byte message into `out` (12 bytes of room): Python's 4-byte
/// big-endian length, or -1 then an 8-byte length over 0x7fffffff. Returns its size.
std::size_t length_header(std::uint64_t n, unsigned char* out) noexcept;

struct AsyncWrite {
  unsigned char header[12];
  std::vector<unsigned char> headers;  // async_send_messages: 12 bytes a message
  std::vector<iovec> iov;              // header first
  std::vector<std::byte> owned;        // the payload, when the operation owns it (typed sends)
  std::error_code error;               // set when the arguments were refused: completes with it
};

/// Python's send_bytes bounds rules for buf[offset:offset+size] of a `length`-byte buffer:
/// empty if they hold, else Python's ValueError text ("offset is negative", "buffer length <
/// offset", "size is negative", "buffer length < offset + size") and the numbers. An offset or
/// size over PTRDIFF_MAX is a negative number converted to std::size_t.
std::string send_range_error(std::size_t length, std::size_t offset,
                             std::optional<std::size_t> size);

/// The codec's reused first segment (troupe/codec.hpp).
using ScratchSegment = troupe::codec_detail::ScratchSegment;
}  // namespace detail

/// The largest message a Connection accepts unless told otherwise (set_max_message_size):
/// 1 GiB. A longer length header is refused before anything is allocated.
inline constexpr std::uint64_t kDefaultMaxMessageSize = std::uint64_t{1} << 30;

/// Python: `multiprocessing.connection.Connection` — one end of a pipe or socket carrying
/// length-prefixed byte messages. Owns its file descriptor; the destructor closes it.
/// Not thread-safe: one sender and one receiver at a time, as in Python.
class Connection {
public:
  /// A closed connection (what a failed async_accept completes with).
  Connection() noexcept = default;
  /// Takes ownership of `fd` (a socket or pipe end, blocking mode).
  explicit Connection(int fd, bool readable = true, bool writable = true);
  Connection(Connection&& other) noexcept;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  /// Python: `send_bytes(buf, offset=0, size=None)`: sends `buf[offset:offset+size]` as one
  /// message. @throws ValueError "offset is negative" / "buffer length < offset" / "size is
  /// negative" / "buffer length < offset + size" (Python's texts, then the numbers; an offset
  /// or size over PTRDIFF_MAX counts as negative), and nothing is sent; OSError
  /// (BrokenPipeError, …) if the peer is gone; OSError if the connection is closed or not
  /// writable.
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt);
  void send_bytes(std::string_view buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt) {
    send_bytes(std::as_bytes(std::span(buf.data(), buf.size())), offset, size);
  }

  /// Python: `send(obj)`: sends `obj` as one typed message (an Envelope of proto/value.capnp,
  /// carrying the fingerprint of T; doc/codec.md). Large packed arrays go from `obj`'s memory
  /// to the socket without a copy. A type with no troupe::Codec is a compile error.
  template <class T>
  void send(const T& obj) {
    detail::ScratchSegment scratch;
    capnp::MallocMessageBuilder mb(scratch.get());
    troupe::encode(obj, mb);
    send_message(mb);
  }

  /// Python: `recv()`: the next message, decoded as a T. Recv<S> of a Cap'n Proto struct S
  /// gives a troupe::Message<S> that reads the received frame in place.
  /// @throws TypeError naming both types if the message holds another type; ValueError if it
  /// is malformed (the connection stays usable); and whatever recv_bytes throws.
  template <class T>
  auto recv() {
    using W = wire_type_t<T>;
    if constexpr (requires { typename W::troupe_message_struct; }) {
      auto m = recv_message();  // the Message<S> keeps the frame: its own buffer
      auto& reader = m->reader;
      return troupe::decode<W>(reader, std::move(m));
    } else {
      // Decoded values own their data: the frame goes into a buffer reused from message to
      // message (no allocation, no fresh pages per message).
      // Large frames are read segment by segment, so a large byte vector is received in place.
      detail::TypedFrame frame;
      struct Reclaim {
        Connection* c;
        detail::TypedFrame* f;
        ~Reclaim() { c->reclaim(*f); }
      } reclaim{this, &frame};
      recv_typed_frame(frame);
      return codec_detail::guarded([&] {
        if (frame.flat) {
          auto words = frame.small.asPtr().slice(0, frame.words);
          capnp::FlatArrayMessageReader reader(words, reader_options(frame.words));
          detail::check_whole_message(reader, words);
          return troupe::decode<W>(reader);
        }
        capnp::SegmentArrayMessageReader reader(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(
                                                    frame.segments.data(), frame.segments.size()),
                                                reader_options(frame.words));
        struct Donate {
          Donate(std::vector<std::vector<std::byte>>* b) { codec_detail::donors.buffers = b; }
          ~Donate() { codec_detail::donors.buffers = nullptr; }
        } donate(&frame.runs);
        return troupe::decode<W>(reader);
      });
    }
  }

  // ---- asynchronous twins (Asio) ----------------------------------------------------------
  //
  // Each takes a completion token (a callback, asio::use_future, asio::use_awaitable, …) and
  // follows Asio's rules (doc/async.md): the handler is never invoked from inside the call; the
  // I/O runs on the connection's executor (get_executor()); the handler runs on its associated
  // executor, by default the connection's; terminal per-operation cancellation (a cancellation
  // slot bound to the token) ends a wait with operation_aborted, and close() ends them all so.
  // Completions carry a boost::system::error_code holding a std::error_code: troupe::errc values
  // (troupe::error_category(): eof_error, value_error, type_error, …) or errno values
  // (generic_category, EBADF on a closed connection). troupe::throw_error(ec, what) turns one
  // into the Python-named exception.
  // One receive and one send may be outstanding at a time (as one reader and one writer for
  // the blocking calls); do not mix blocking and asynchronous receives on one connection.

  /// The executor that does this connection's asynchronous I/O: the one given to set_executor(),
  /// else the one it was accepted or connected on (Listener::async_accept, async_client), else
  /// Asio's system executor (its thread pool, started on first use, then also runs handlers that
  /// have no executor of their own).
  const boost::asio::any_io_executor& get_executor() const noexcept { return executor_; }
  /// Gives the connection its I/O executor (an empty one: the default). Async operations still
  /// outstanding end with operation_aborted.
  void set_executor(boost::asio::any_io_executor ex) noexcept {
    reactor_.release();
    executor_ = troupe::detail::io_executor_or_default(ex);
  }

  /// Waits until the fd is readable or writable (as Asio's basic_socket::async_wait), without
  /// reading or writing. Completion: void(boost::system::error_code).
  template <class Token>
  auto async_wait(boost::asio::posix::descriptor_base::wait_type what, Token&& token) {
    auto body = [this, what, started = false](auto& op, boost::system::error_code ec = {}) mutable {
      if (started) return op.complete(ec);
      if (closed())
        return op.complete(detail::to_boost(std::error_code(EBADF, std::generic_category())));
      started = true;
      wait_fd(op, what);
    };
    return troupe::detail::async_operation<void(boost::system::error_code)>(
        std::move(body), std::forward<Token>(token), executor_);
  }

  /// Python: none. send_bytes(buf, offset, size), asynchronously. `buf` must stay valid until
  /// completion. Completion: void(boost::system::error_code); errc::value_error (and nothing
  /// sent) where send_bytes throws ValueError.
  template <class Token>
  auto async_send_bytes(std::span<const std::byte> buf, std::size_t offset,
                        std::optional<std::size_t> size, Token&& token) {
    auto st = std::make_unique<detail::AsyncWrite>();
    if (detail::send_range_error(buf.size(), offset, size).empty())
      prepare_async_write(*st, buf.subspan(offset, size ? *size : buf.size() - offset));
    else
      st->error = troupe::make_error_code(troupe::errc::value_error);
    return start_async_write(std::move(st), std::forward<Token>(token));
  }
  template <class Token>
  auto async_send_bytes(std::span<const std::byte> buf, Token&& token) {
    return async_send_bytes(buf, 0, std::nullopt, std::forward<Token>(token));
  }

  /// Python: none. Sends each of `messages` as one message, in order (as send_bytes each), in as
  /// few system calls as the kernel takes: a server's replies gathered into one write. The
  /// buffers must stay valid until completion. Completion: void(boost::system::error_code).
  template <class Token>
  auto async_send_messages(std::span<const std::span<const std::byte>> messages, Token&& token) {
    auto st = std::make_unique<detail::AsyncWrite>();
    prepare_async_writes(*st, messages);
    return start_async_write(std::move(st), std::forward<Token>(token));
  }

  /// send<T>, asynchronously: the value is encoded at once (it need not outlive the call).
  template <class T, class Token>
  auto async_send(const T& obj, Token&& token) {
    auto st = std::make_unique<detail::AsyncWrite>();
    {
      capnp::MallocMessageBuilder mb;
      troupe::encode(obj, mb);
      encode_owned_frame(*st, mb);
    }
    return start_async_write(std::move(st), std::forward<Token>(token));
  }

  /// recv_bytes, asynchronously. Completion: void(boost::system::error_code,
  /// std::vector<std::byte>).
  template <class Token>
  auto async_recv_bytes(Token&& token, std::optional<std::size_t> maxlength = std::nullopt) {
    auto st = std::make_unique<detail::AsyncRead>();
    st->maxlength = maxlength;
    return start_async_read<std::vector<std::byte>>(
        std::move(st),
        [](std::vector<std::byte>&& body, boost::system::error_code&) { return std::move(body); },
        std::forward<Token>(token));
  }

  /// recv<T>, asynchronously. Completion: void(boost::system::error_code, T); a message of
  /// another type gives errc::type_error, a malformed one errc::value_error.
  template <class T, class Token>
  auto async_recv(Token&& token) {
    using W = wire_type_t<T>;
    return start_async_read<W>(
        std::make_unique<detail::AsyncRead>(),
        [](std::vector<std::byte>&& body, boost::system::error_code& ec) -> W {
          try {
            return troupe::from_bytes<W>(body);
          } catch (const troupe::TypeError&) {
            ec = std::error_code(troupe::make_error_code(troupe::errc::type_error));
          } catch (const std::exception&) {
            ec = std::error_code(troupe::make_error_code(troupe::errc::value_error));
          }
          return W{};
        },
        std::forward<Token>(token));
  }

  /// Sends a built Cap'n Proto message as one frame (segment table and segments, written with
  /// one writev and no copy).
  void send_message(capnp::MessageBuilder& message);
  /// Receives one frame as a Cap'n Proto message (bounded by the maximum message size; a frame
  /// that is not whole words or whose segment table is bad → ValueError, stream kept in step).
  std::shared_ptr<detail::FlatMessage> recv_message();

  /// Python: `recv_bytes(maxlength=None)`: the next whole message.
  /// @throws EOFError if the peer closed before a message began; OSError "got end of file
  /// during message" if it closed inside one; OSError "bad message length" (and the connection
  /// is closed, as Python's) if the message is longer than `maxlength` or than the connection's
  /// maximum message size.
  std::vector<std::byte> recv_bytes(std::optional<std::size_t> maxlength = std::nullopt);

  /// Python: none. The next message if the bytes already read hold all of it (no system call,
  /// never blocks), else nothing: a server takes the requests that came in one read before it
  /// writes their replies. A message over the limits, or a bad header, is left for recv_bytes
  /// or async_recv_bytes to refuse.
  std::optional<std::vector<std::byte>> recv_buffered(
      std::optional<std::size_t> maxlength = std::nullopt);
  /// recv_buffered into `out` (its contents replaced, its capacity used again): true if it
  /// held a whole message; false (`out` untouched) if not.
  bool recv_buffered_into(std::vector<std::byte>& out,
                          std::optional<std::size_t> maxlength = std::nullopt);

  /// Python: none. Whether a whole message is already in the bytes read (recv_buffered would
  /// return it).
  bool message_buffered(std::optional<std::size_t> maxlength = std::nullopt) const noexcept;

  /// Python: none. Whether async_fill can bring the next message into the read buffer: a plain
  /// socket (no TLS) not at its end, and the message begun in the buffer, if any, has a valid
  /// header and fits in the buffer whole. When not, async_recv_bytes reads the next message.
  bool can_fill() const noexcept;

  /// Python: none. A server's read loop without a composed operation per message: waits until
  /// the socket has bytes and receives what it has into the read buffer, for recv_buffered to
  /// take (Asio's receive; no re-arming of the fd). Only when can_fill(); one at a time, not
  /// beside another receive. Completion: void(boost::system::error_code): eof_error at the end
  /// of the stream between messages, EIO inside one, EBADF if closed (before or meanwhile),
  /// EMSGSIZE if called with a full buffer (can_fill() false), operation_aborted when cancelled
  /// (close(), set_executor()); never inside this call; on the handler's associated executor
  /// (default: the connection's).
  template <class Handler>
  void async_fill(Handler&& handler);

  /// Python: none. async_fill's receive now, without waiting: one non-blocking receive into the
  /// read buffer, for a server thread that polls a connection it expects a request on (one
  /// system call where its reactor would take two). Only when can_fill(); not beside another
  /// receive. Nothing when the socket has no bytes yet, else what async_fill would complete with.
  std::optional<boost::system::error_code> try_fill();

  /// Python: `recv_bytes_into(buf, offset=0)`: reads the next message into `buf` at `offset`
  /// and returns its size. @throws ValueError "offset too large"; BufferTooShort (carrying the
  /// whole message, which is consumed) if it does not fit.
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0);

  /// Python: `poll(timeout=0.0)`: whether a message (or EOF) can be read without blocking.
  /// A forever Timeout waits until there is.
  bool poll(Timeout timeout = std::chrono::seconds(0));

  /// Python: `fileno()`. @throws OSError if closed.
  int fileno() const;
  /// Python: `close()`; closing twice is fine.
  void close() noexcept;
  /// Python: `closed`, `readable`, `writable`.
  bool closed() const noexcept { return !fd_; }
  bool readable() const noexcept { return readable_; }
  bool writable() const noexcept { return writable_; }

  /// Bytes already read from the fd but not yet returned (a message may be waiting in them even
  /// when the fd itself is not readable; connection::wait accounts for it).
  std::size_t buffered_bytes() const noexcept;

  // ---- TLS (an option on top of the HMAC handshake; doc/security.md) ----------------------

  /// Runs the TLS handshake on this connected socket as `role` and from then on sends and
  /// receives through TLS. A client checks the server's certificate against `peer_name` (a
  /// DNS name or an IP address) when its context verifies peers. Listener and Client call it
  /// for you when given a context. @throws AuthenticationError with OpenSSL's reason (the
  /// connection is closed); BlockingIOError if a socket timeout passed; ValueError if this is
  /// not a socket or TLS is already on.
  void start_tls(boost::asio::ssl::context& ctx, TlsRole role, std::string_view peer_name = {});
  /// start_tls, asynchronously. Completion: void(boost::system::error_code);
  /// errc::authentication_error on a failed handshake (tls_error() says why).
  template <class Token>
  auto async_start_tls(boost::asio::ssl::context& ctx, TlsRole role, std::string_view peer_name,
                       Token&& token);
  /// Whether TLS is on; the protocol and cipher ("TLSv1.3 TLS_AES_256_GCM_SHA384"), and why
  /// the last TLS operation failed (empty if none).
  bool tls() const noexcept { return tls_ != nullptr; }
  std::string tls_description() const;
  std::string tls_error() const;

  /// The largest message this end accepts (default kDefaultMaxMessageSize).
  std::uint64_t max_message_size() const noexcept { return max_message_size_; }
  void set_max_message_size(std::uint64_t n) noexcept { max_message_size_ = n; }

private:
  void check_open(const char* what) const;
  void check_readable(const char* what) const;
  void check_writable(const char* what) const;
  std::size_t buffered() const noexcept { return rend_ - rpos_; }
  // Fills the read buffer with at least `n` bytes (n <= capacity); false on EOF before any.
  bool fill(std::size_t n, bool eof_is_error);
  void read_exact(std::byte* out, std::size_t n);
  // Reads an n-byte body into `out` (emptied first), its memory growing as the bytes arrive
  // (grow_body in connection.cpp), not allocated whole from the announced length.
  void read_body(std::vector<std::byte>& out, std::size_t n);
  // Reads and drops n bytes through the read buffer (no allocation sized by the peer).
  void discard(std::uint64_t n);
  std::uint64_t read_header();  // nullopt-free: throws EOFError on a clean EOF
  void write_frame(std::span<const std::byte> payload);
  // Writes the frame header for `total` bytes and then the `n` buffers of `payload`.
  void write_frame(const iovec* payload, std::size_t n, std::uint64_t total);
  [[noreturn]] void bad_message_length(std::uint64_t n, std::uint64_t limit);
  // Reads one frame that must be a Cap'n Proto message (whole words), its memory growing as its
  // bytes arrive.
  std::vector<std::byte> read_frame_words();
  // One typed frame: flat into spare_ when small, scattered when large.
  void recv_typed_frame(detail::TypedFrame& frame);
  // Gives a flat frame's buffer back for the next receive (if it is not too large to keep).
  void reclaim(detail::TypedFrame& frame) noexcept;

  // ---- TLS machinery ----
  void begin_tls(boost::asio::ssl::context& ctx, TlsRole role, std::string_view peer_name);
  // One non-blocking step: true when finished (ec set on failure), false when it would block
  // (want_write says on what).
  bool tls_handshake_step(std::error_code& ec, bool& want_write) noexcept;
  // What an async read or write that would block waits for (TLS may need the other way).
  boost::asio::posix::descriptor_base::wait_type async_wait_type(bool reading) const;

  // ---- asynchronous machinery ----
  void prepare_async_write(detail::AsyncWrite& st, std::span<const std::byte> payload);
  void prepare_async_writes(detail::AsyncWrite& st,
                            std::span<const std::span<const std::byte>> messages);
  void encode_owned_frame(detail::AsyncWrite& st, capnp::MessageBuilder& mb);
  // Non-blocking progress: true when finished (ec set on failure), false when it would block.
  bool async_write_some(detail::AsyncWrite& st, std::error_code& ec) noexcept;
  // `may_read` false: only what is buffered; when more is needed, st.into says where it goes.
  bool async_read_some(detail::AsyncRead& st, std::error_code& ec, bool may_read = true) noexcept;
  // Bytes Asio received into st.into.
  void async_received(detail::AsyncRead& st, std::size_t n) noexcept;
  // The read buffer's free space, the bytes not yet taken moved to its start (async_fill).
  std::span<std::byte> fill_space();
  // An async_fill's receive has ended: its bytes are taken in; the completion's error.
  boost::system::error_code filled(boost::system::error_code ec, std::size_t n) noexcept;
  // The message at the start of the buffered bytes: its header's size and its length; false
  // if the header is not all there (`bad` set when it is there and invalid).
  bool buffered_header(std::size_t& hlen, std::uint64_t& n, bool& bad) const noexcept;
  // The error of a read that met the end of the stream now (st's phase says which).
  std::error_code async_eof(const detail::AsyncRead& st) const noexcept;
  // A plain socket's async reads are Asio's receives: a receive needs no re-arming of the fd
  // (an async_wait costs an epoll_ctl each time). TLS and pipes wait for readiness and read
  // themselves; so does a socket once Asio's receive met its end (Asio then waits for an edge
  // that never comes again, where a read reports the end again at once).
  bool asio_reads() const noexcept { return is_socket_ && !tls_ && !asio_eof_; }
  // Waits in the reactor of the connection's executor for `what`, then resumes `op`.
  template <class Step>
  void wait_fd(Step& op, boost::asio::posix::descriptor_base::wait_type what) {
    if (is_socket_)
      reactor_.socket(fd_.get(), executor_)
          .async_wait(static_cast<boost::asio::socket_base::wait_type>(what), op.resume());
    else
      reactor_.get(fd_.get(), executor_).async_wait(what, op.resume());
    reactor_.keep_blocking(fd_.get());
  }
  // Receives what the socket has into st.into, then resumes `op` with (ec, bytes).
  template <class Step>
  void receive_fd(Step& op, const detail::AsyncRead& st) {
    reactor_.socket(fd_.get(), executor_)
        .async_receive(boost::asio::buffer(st.into, st.into_size), MSG_DONTWAIT, op.resume());
    reactor_.keep_blocking(fd_.get());
  }

  template <class Token>
  auto start_async_write(std::unique_ptr<detail::AsyncWrite> st, Token&& token) {
    auto body = [this, st = std::move(st), waiting = false](
                    auto& op, boost::system::error_code wait_ec = {}) mutable {
      if (waiting && wait_ec) return op.complete(wait_ec);
      if (st->error) return op.complete(detail::to_boost(st->error));
      std::error_code ec;
      if (closed() || !writable_)
        return op.complete(detail::to_boost(std::error_code(EBADF, std::generic_category())));
      if (async_write_some(*st, ec)) return op.complete(detail::to_boost(ec));
      waiting = true;
      wait_fd(op, async_wait_type(false));
    };
    return troupe::detail::async_operation<void(boost::system::error_code)>(
        std::move(body), std::forward<Token>(token), executor_);
  }

  template <class R, class Token, class Finish>
  auto start_async_read(std::unique_ptr<detail::AsyncRead> st, Finish finish, Token&& token) {
    enum class Waiting { no, fd, receive };
    auto body = [this, st = std::move(st), finish, waiting = Waiting::no](
                    auto& op, boost::system::error_code wait_ec = {}, std::size_t n = 0) mutable {
      std::error_code ec;
      if (waiting == Waiting::receive && wait_ec != boost::asio::error::operation_aborted) {
        if (closed())  // closed while the completion was queued: the bytes are not ours now
          return op.complete(detail::to_boost(std::error_code(EBADF, std::generic_category())),
                             R{});
        if (wait_ec == boost::asio::error::eof) {
          asio_eof_ = true;
          return op.complete(detail::to_boost(async_eof(*st)), R{});
        }
        if (wait_ec)  // as the reads troupe does itself report it: an errno value
          return op.complete(
              detail::to_boost(std::error_code(wait_ec.value(), std::generic_category())), R{});
        async_received(*st, n);
      } else if (waiting != Waiting::no && wait_ec) {
        return op.complete(wait_ec, R{});
      }
      if (closed() || !readable_)
        return op.complete(detail::to_boost(std::error_code(EBADF, std::generic_category())), R{});
      const bool asio = asio_reads();
      if (async_read_some(*st, ec, !asio)) {
        if (ec) return op.complete(detail::to_boost(ec), R{});
        boost::system::error_code bec;
        R r = finish(std::move(st->body), bec);
        return op.complete(bec, std::move(r));
      }
      if (asio) {
        waiting = Waiting::receive;
        receive_fd(op, *st);
      } else {
        waiting = Waiting::fd;
        wait_fd(op, async_wait_type(true));
      }
    };
    return troupe::detail::async_operation<void(boost::system::error_code, R)>(
        std::move(body), std::forward<Token>(token), executor_);
  }

  UniqueFd fd_;
  bool readable_ = true;
  bool writable_ = true;
  bool is_socket_ = false;
  bool asio_eof_ = false;  // an Asio receive met the end of the stream (see asio_reads)
  std::uint64_t max_message_size_ = kDefaultMaxMessageSize;
  // Reads go through a small buffer, so a short message costs one system call, not two.
  std::unique_ptr<std::byte[]> rbuf_;
  std::size_t rpos_ = 0;
  std::size_t rend_ = 0;
  troupe::detail::AdaptiveSpin spin_;  // not moved: a moved-to end learns afresh
  kj::Array<capnp::word> spare_;       // the frame buffer of small typed receives
  std::unique_ptr<detail::TlsSession> tls_;
  boost::asio::any_io_executor executor_ = troupe::detail::default_io_executor();
  detail::ReactorRegistration reactor_;
};

template <class Handler>
void Connection::async_fill(Handler&& handler) {
  // The receive's handler: Asio runs it on the handler's associated executor.
  struct Filled {
    Connection* self;
    std::decay_t<Handler> handler;
    using executor_type =
        boost::asio::associated_executor_t<std::decay_t<Handler>, boost::asio::any_io_executor>;
    executor_type get_executor() const noexcept {
      return boost::asio::get_associated_executor(handler, self->executor_);
    }
    void operator()(boost::system::error_code ec, std::size_t n) {
      std::move(handler)(self->filled(ec, n));
    }
  };
  // Closed (EBADF), or a full buffer (EMSGSIZE: the message begun there is larger than it, and
  // can_fill() said so): said through the handler, as a receive's failure.
  const bool usable = !closed() && readable_;
  const std::span<std::byte> into = usable ? fill_space() : std::span<std::byte>();
  if (into.empty()) {
    const int e = usable ? EMSGSIZE : EBADF;
    auto ex = boost::asio::get_associated_executor(handler, executor_);
    boost::asio::post(ex, [h = std::forward<Handler>(handler), e]() mutable {
      std::move(h)(detail::to_boost(std::error_code(e, std::generic_category())));
    });
    return;
  }
  reactor_.socket(fd_.get(), executor_)
      .async_receive(boost::asio::buffer(into.data(), into.size()), MSG_DONTWAIT,
                     Filled{this, std::forward<Handler>(handler)});
  reactor_.keep_blocking(fd_.get());
}

template <class Token>
auto Connection::async_start_tls(boost::asio::ssl::context& ctx, TlsRole role,
                                 std::string_view peer_name, Token&& token) {
  auto body = [this, &ctx, role, name = std::string(peer_name), waiting = false](
                  auto& op, boost::system::error_code wait_ec = {}) mutable {
    if (waiting && wait_ec) return op.complete(wait_ec);
    if (!waiting) {
      try {
        begin_tls(ctx, role, name);
      } catch (const std::exception&) {
        return op.complete(detail::to_boost(troupe::make_error_code(troupe::errc::value_error)));
      }
    }
    std::error_code ec;
    bool want_write = false;
    if (tls_handshake_step(ec, want_write)) return op.complete(detail::to_boost(ec));
    waiting = true;
    using D = boost::asio::posix::descriptor_base;
    wait_fd(op, want_write ? D::wait_write : D::wait_read);
  };
  return troupe::detail::async_operation<void(boost::system::error_code)>(
      std::move(body), std::forward<Token>(token), executor_);
}

/// Python: `multiprocessing.Pipe(duplex=True)` → (conn1, conn2). Duplex: a Unix socketpair, both
/// ends read and write. Not duplex: a pipe, conn1 reads and conn2 writes. Both close-on-exec.
std::pair<Connection, Connection> Pipe(bool duplex = true);

namespace detail {
/// What both typed ends have: the Connection underneath and its housekeeping.
class TypedEnd {
public:
  explicit TypedEnd(Connection c) : c_(std::move(c)) {}
  void close() noexcept { c_.close(); }
  bool closed() const noexcept { return c_.closed(); }
  int fileno() const { return c_.fileno(); }
  Connection& connection() noexcept { return c_; }

protected:
  Connection c_;
};
}  // namespace detail

/// The sending end of a typed pipe: carries only T. (Not in Python, whose Connection carries any
/// picklable object; a typed end turns a wrong type into a compile error.)
template <class T>
class Sender : public detail::TypedEnd {
public:
  using TypedEnd::TypedEnd;
  void send(const T& obj) { c_.send(obj); }
};

/// The receiving end of a typed pipe: gives only T.
template <class T>
class Receiver : public detail::TypedEnd {
public:
  using TypedEnd::TypedEnd;
  auto recv() { return c_.template recv<T>(); }
  bool poll(Timeout timeout = std::chrono::seconds(0)) { return c_.poll(timeout); }
};

namespace detail {
/// A one-way socketpair: (read end, write end), close-on-exec.
std::pair<Connection, Connection> one_way_socketpair();
}  // namespace detail

/// A typed pipe: Pipe<T>() → (Sender<T>, Receiver<T>), one way, on a Unix socketpair.
template <class T>
std::pair<Sender<T>, Receiver<T>> Pipe() {
  static_assert(Encodable<wire_type_t<T>>, "troupe Pipe<T>: T has no troupe::Codec");
  auto [r, w] = detail::one_way_socketpair();
  return {Sender<T>(std::move(w)), Receiver<T>(std::move(r))};
}

/// Python's module `multiprocessing.connection`: wait(), and the names it holds.
namespace connection {

/// What connection::wait() watches: a Connection (ready when a message or EOF can be read) or a
/// file descriptor (ready when readable, e.g. a socket, a pipe or a process sentinel).
class Waitable {
public:
  Waitable(Connection& c) noexcept : conn_(&c), fd_(-1) {}  // NOLINT: implicit, as Python's list
  template <class T>
  Waitable(Receiver<T>& r) noexcept : Waitable(r.connection()) {}  // NOLINT
  Waitable(int fd) noexcept : conn_(nullptr), fd_(fd) {}           // NOLINT

  /// The Connection, or nullptr for a plain fd.
  Connection* connection() const noexcept { return conn_; }
  int fileno() const { return conn_ ? conn_->fileno() : fd_; }
  bool operator==(const Waitable& o) const noexcept { return conn_ == o.conn_ && fd_ == o.fd_; }

private:
  Connection* conn_;
  int fd_;
};

/// Python: `multiprocessing.connection.wait(object_list, timeout=None)`: waits until at least
/// one object is ready and returns those that are, in the order given; returns an empty list
/// when the timeout passes first (a negative timeout polls once).
/// @throws OSError if a Connection is closed or an fd is invalid.
std::vector<Waitable> wait(std::span<const Waitable> objects, Timeout timeout = {});
inline std::vector<Waitable> wait(std::initializer_list<Waitable> objects, Timeout timeout = {}) {
  return wait(std::span<const Waitable>(objects.begin(), objects.size()), timeout);
}

}  // namespace connection

/// Options of the handshake, beyond Python's arguments.
struct AuthOptions {
  /// The HMAC digest the challenger asks for: md5, sha256, sha384, sha3_256 or sha3_384.
  std::string digest_name = "sha256";
  /// Accept CPython <= 3.11's dialect (a 20-byte challenge, an unprefixed HMAC-MD5 answer).
  bool legacy_md5 = false;
  /// How long deliver_challenge/answer_challenge may wait for the peer's messages in all
  /// (forever by default, as Python's). Listener and Client also set a socket-level deadline
  /// (their handshake_timeout), which bounds a peer that stalls inside a message as well.
  Timeout timeout{};
};

/// Python: `multiprocessing.connection.deliver_challenge(connection, authkey, digest_name)`:
/// the server side. Sends a challenge, checks the answer, sends #WELCOME# or #FAILURE#.
/// @throws AuthenticationError naming what was wrong (never the key).
void deliver_challenge(Connection& connection, const AuthenticationString& authkey,
                       const AuthOptions& options = {});

/// Python: `multiprocessing.connection.answer_challenge(connection, authkey)`: the client side.
/// @throws AuthenticationError if the challenge is malformed or the answer is rejected.
void answer_challenge(Connection& connection, const AuthenticationString& authkey,
                      const AuthOptions& options = {});

namespace detail {
/// The handshake's steps without the I/O, shared by the blocking and asynchronous forms.
struct Challenge {
  std::vector<std::byte> message;  // "{digest}" + random bytes: what the MAC covers
  std::vector<std::byte> wire;     // "#CHALLENGE#" + message
};
Challenge make_challenge(const AuthOptions& options);
/// @throws AuthenticationError naming what was wrong.
void check_answer(const Challenge& challenge, std::span<const std::byte> response,
                  const AuthenticationString& authkey, const AuthOptions& options);
/// The answer to a received challenge. @throws AuthenticationError if it is malformed.
std::vector<std::byte> make_answer(std::span<const std::byte> received,
                                   const AuthenticationString& authkey, const AuthOptions& options);
/// @throws AuthenticationError unless `response` is #WELCOME#.
void check_welcome(std::span<const std::byte> response);
std::span<const std::byte> welcome_message() noexcept;
std::span<const std::byte> failure_message() noexcept;
}  // namespace detail

}  // namespace troupe::multiprocessing
