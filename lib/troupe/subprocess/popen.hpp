// troupe/subprocess/popen.hpp — subprocess.Popen: run a program, with its stdin, stdout and
// stderr connected as asked, and wait for it, talk to it, signal it.
//
// A child is started with clone(CLONE_VM | CLONE_VFORK) and exec (no copy of the parent's page
// tables, however large the parent), or a real fork() when a preexec_fn_unsafe hook must run in
// it. Everything the child does between clone and exec is a system call on data prepared by
// the parent. A failure there (exec, chdir, setuid…) comes back on a close-on-exec pipe and is
// raised by the constructor as the OSError subclass for its errno, naming the program. The child
// is watched through a pidfd opened by clone itself: waits are poll(2) on it (no polling loop,
// no SIGCHLD handler), signals go through it (never to a recycled pid), and it joins Asio.
// doc/subprocess.md.
#pragma once

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/system/error_code.hpp>

#include "troupe/detail/async.hpp"
#include "troupe/detail/capture.hpp"
#include "troupe/detail/reactor.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"
#include "troupe/unique_fd.hpp"

namespace troupe::subprocess {

/// Python: `subprocess.PIPE`, `subprocess.DEVNULL`, `subprocess.STDOUT`.
enum class Special { pipe, devnull, stdout_ };
inline constexpr Special PIPE = Special::pipe;
inline constexpr Special DEVNULL = Special::devnull;
inline constexpr Special STDOUT = Special::stdout_;

class Stream;

/// Where a child's stdin, stdout or stderr goes: this process's own (default, Python's None),
/// PIPE, DEVNULL, STDOUT (stderr only), an fd or FILE* of this process (duplicated into place;
/// it stays open here), or another child's pipe end (`p1.stdout_`, for pipelines).
class Redirect {
public:
  enum class Kind { inherit, pipe, devnull, stdout_, fd };
  Redirect() = default;
  Redirect(Special s) noexcept;
  Redirect(int fd) noexcept : kind_(Kind::fd), fd_(fd) {}
  Redirect(std::FILE* file);
  Redirect(const Stream& stream);
  Kind kind() const noexcept { return kind_; }
  int fd() const noexcept { return fd_; }

private:
  Kind kind_ = Kind::inherit;
  int fd_ = -1;
};

/// Python's `args`: a list of arguments (`{"ls", "-l"}`, a std::vector<std::string>) or one
/// string (`"ls -l"`): a command line for the shell, or without shell the program's name.
struct Args {
  std::vector<std::string> list;
  bool is_string = false;
  Args(std::vector<std::string> v) : list(std::move(v)) {}
  Args(std::initializer_list<std::string> l) : list(l) {}
  template <class S>
  requires std::convertible_to<const S&, std::string_view> Args(const S& s)
      : list{std::string(std::string_view(s))}, is_string(true) {}
};

/// A user or group by name or by number (Python accepts both).
using UserId = std::variant<uid_t, std::string>;
using GroupId = std::variant<gid_t, std::string>;

/// A resource limit for the child: setrlimit(resource, {soft, hard}).
struct ResourceLimit {
  int resource;
  rlim_t soft;
  rlim_t hard;
};

/// Python's keyword arguments of `Popen` (designated initializers:
/// `Popen({"ls", "-l"}, {.stdout_ = PIPE, .cwd = "/tmp"})`).
struct PopenOptions {
  /// Python: `executable`: the program to run instead of args[0] (args[0] is still what the
  /// child sees as its name); with shell, the shell to use instead of /bin/sh.
  std::optional<std::string> executable;
  Redirect stdin_;
  Redirect stdout_;
  Redirect stderr_;
  /// Python: `close_fds` (default true): every fd above 2 is closed in the child except
  /// `pass_fds`. false: the child inherits this process's inheritable (non-close-on-exec) fds.
  bool close_fds = true;
  /// Python: `pass_fds`: fds kept open in the child, at the same numbers (they are made
  /// inheritable there; here they are untouched).
  std::vector<int> pass_fds;
  /// Python: `cwd`: the child's working directory.
  std::optional<std::string> cwd;
  /// Python: `env`: the child's whole environment (nullopt: this process's). PATH lookup for
  /// args[0] uses this PATH when it has one (as Python's os.get_exec_path(env)).
  std::optional<std::map<std::string, std::string>> env;
  /// Python: `start_new_session` (setsid in the child) and `process_group` (setpgid; 3.11).
  bool start_new_session = false;
  std::optional<pid_t> process_group;
  /// Python: `restore_signals` (default true): SIGPIPE and SIGXFSZ, which programs often
  /// ignore, are back to their default action in the child. Handlers never cross an exec; the
  /// signal mask is the caller's.
  bool restore_signals = true;
  /// Python: `umask` (-1: inherited).
  int umask = -1;
  /// Python: `user`, `group`, `extra_groups` (setreuid, setregid, setgroups in the child).
  std::optional<UserId> user;
  std::optional<GroupId> group;
  std::optional<std::vector<GroupId>> extra_groups;
  /// Python: `pipesize` (F_SETPIPE_SZ on the pipes made for PIPE; -1: the system's).
  int pipesize = -1;
  /// Python: `text` / `universal_newlines`: output read from the pipes and by communicate()
  /// has "\r\n" and "\r" turned into "\n". Bytes are passed through otherwise (C++ strings are
  /// bytes; there is no decoding).
  bool text = false;
  /// Python: `shell`: args are run by `/bin/sh -c` (the first element is the command line,
  /// the others the shell's $0, $1, …).
  bool shell = false;
  /// Python: `preexec_fn`. Runs in the child between fork and exec. Unsafe: the child is a
  /// fork() of a process that may have other threads, whose locks (the allocator's, stdio's)
  /// are copied as they were; call async-signal-safe functions only. Its presence makes the
  /// child a real fork() instead of a clone that shares memory. An exception from it fails the
  /// start (SubprocessError "Exception occurred in preexec_fn.").
  std::function<void()> preexec_fn_unsafe;
  /// Beyond Python: the signal the child gets when the thread that started it ends
  /// (PR_SET_PDEATHSIG; 0: none), so a child cannot outlive a crashed parent. Linux ties it to
  /// the starting *thread*: start such children from a thread that lives as long as they may.
  int pdeathsig = 0;
  /// Beyond Python: resource limits set in the child before the exec (setrlimit), e.g.
  /// `{{RLIMIT_NOFILE, 256, 256}, {RLIMIT_CORE, 0, 0}}`.
  std::vector<ResourceLimit> rlimits;

  // run()'s arguments (and call()'s, check_output()'s); Popen refuses them (TypeError).
  /// Python: `input`: written to the child's stdin (which becomes a PIPE).
  std::optional<std::string> input;
  /// Python: `capture_output`: stdout and stderr are PIPEs, returned in CompletedProcess.
  bool capture_output = false;
  /// Python: `timeout`: the child is killed and TimeoutExpired raised when it passes.
  Timeout timeout;
  /// Python: `check`: CalledProcessError for a non-zero return code.
  bool check = false;
};
/// run()'s options are Popen's and its own, in one struct (designated initializers).
using RunOptions = PopenOptions;

/// Python: a pipe end of a Popen (`p.stdin`, `p.stdout`, `p.stderr`): reads are buffered here,
/// writes go straight to the pipe (flush() has nothing to do). A Stream may be read by one
/// thread and another Stream of the same child written by another.
class Stream {
public:
  Stream(int fd, bool readable, bool text) noexcept;
  Stream(Stream&& o) noexcept;
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  /// Python: `read(n=-1)`: up to `n` bytes (n < 0: everything until end of file). "" at end
  /// of file.
  std::string read(std::ptrdiff_t n = -1);
  /// Python: `read1`: what one read(2) gives (at most `n` bytes), "" at end of file.
  std::string read1(std::size_t n = 65536);
  /// Python: `readline()`: up to and including "\n"; the rest at end of file; "" after it.
  std::string readline();
  std::vector<std::string> readlines();
  /// Python: `write(data)`: all of it (blocking). @throws BrokenPipeError if the child has
  /// closed its end.
  std::size_t write(std::string_view data);
  void flush() {}
  /// Python: `close()`. Closing twice is harmless.
  void close() noexcept;
  bool closed() const noexcept { return !fd_; }
  int fileno() const;
  bool readable() const noexcept { return readable_; }

  /// Line iteration: `for (const std::string& line : *p.stdout_)`, as Python's `for line in
  /// p.stdout`.
  class iterator {
  public:
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(Stream* s) : s_(s) { ++*this; }
    const std::string& operator*() const noexcept { return line_; }
    const std::string* operator->() const noexcept { return &line_; }
    iterator& operator++() {
      line_ = s_->readline();
      if (line_.empty()) s_ = nullptr;
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const noexcept { return s_ == nullptr; }

  private:
    Stream* s_ = nullptr;
    std::string line_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

  /// Asynchronous twins on Asio, by Asio's rules (doc/async.md): the bytes one read(2) gives
  /// when the pipe is readable ("" at end of file), void(boost::system::error_code,
  /// std::string); and all of `data` written as the pipe takes it, void(boost::system::error_code,
  /// std::size_t written). Errors are errno codes (EBADF when closed, EPIPE, …); a cancelled
  /// wait (per-operation, terminal) gives operation_aborted. The Stream must outlive the
  /// operation; the blocking calls stay usable afterwards.
  template <class Token>
  auto async_read_some(std::size_t n, Token&& token);
  template <class Token>
  auto async_write(std::string data, Token&& token);
  /// The executor that does the stream's asynchronous I/O: its Popen's (Popen::set_executor),
  /// or the one given here, else Asio's system executor (doc/async.md).
  const boost::asio::any_io_executor& get_executor() const noexcept { return executor_; }
  void set_executor(boost::asio::any_io_executor ex) noexcept {
    reactor_.release();
    executor_ = troupe::detail::io_executor_or_default(ex);
  }

private:
  friend class Popen;
  bool fill();  // reads more into the buffer; false at end of file
  // One read(2) of at most `n` bytes appended to `out` (text-translated): the count read (0 at
  // end of file), -1 if it would block, -errno on an error.
  ssize_t read_now(std::string& out, std::size_t n);
  // One write(2): the count written, -1 if it would block, -errno on an error.
  ssize_t write_now(const char* data, std::size_t n);
  std::string take(std::size_t n);                     // from the buffer
  void move_buffer_to(troupe::detail::Capture& sink);  // what a reader left unread
  void read_to_end(troupe::detail::Capture& sink);     // the buffer, then the pipe to its end
  void set_nonblocking();  // for the async operations; the blocking ones poll

  UniqueFd fd_;
  bool readable_ = false;
  bool text_ = false;
  bool pending_cr_ = false;  // text mode: a "\r" ended the last chunk
  bool nonblocking_ = false;
  bool grow_pipe_ = false;  // a PIPE made without a pipesize: a large capture may enlarge it
  std::string buf_;
  std::size_t pos_ = 0;
  boost::asio::any_io_executor executor_ = troupe::detail::default_io_executor();
  troupe::detail::ReactorRegistration reactor_;
};

/// Python: what `communicate()` returns: each is nullopt when that stream is not a PIPE.
struct Output {
  std::optional<std::string> stdout_;
  std::optional<std::string> stderr_;
};

/// Python: `subprocess.Popen`.
///
///   Popen p({"grep", "x"}, {.stdin_ = PIPE, .stdout_ = PIPE});
///   auto [out, err] = p.communicate("a\nx\n");   // *out == "x\n"
///   p.returncode();                              // 0
class Popen {
public:
  /// Python: `Popen(args, **options)`. @throws the OSError subclass of the child's errno
  /// when the program cannot be run (FileNotFoundError naming it…), ValueError for bad
  /// options, KeyError for an unknown user or group name.
  /// `Popen({"ls", "-l"})`, or `Popen("ls -l", {.shell = true})` (a string without shell is the
  /// program's name, as in Python).
  explicit Popen(Args args, PopenOptions options = {});
  /// `Popen({"true"})`: a braced list is a list of arguments (this overload wins over the
  /// move constructor).
  explicit Popen(std::initializer_list<std::string> args, PopenOptions options = {})
      : Popen(Args(args), std::move(options)) {}

  Popen(Popen&& o) noexcept;
  Popen& operator=(Popen&& o) noexcept;
  Popen(const Popen&) = delete;
  Popen& operator=(const Popen&) = delete;
  /// Python's `__exit__`: closes the pipes, then waits for the child.
  ~Popen();

  /// Python: `poll()`: the return code if the child has ended (reaping it), else nullopt.
  std::optional<int> poll();
  /// Python: `wait(timeout=None)`. @throws TimeoutExpired (the child keeps running).
  int wait(Timeout timeout = {});
  /// Python: `communicate(input=None, timeout=None)`: writes `input` to stdin and closes it,
  /// reads stdout and stderr to their ends, all at once (no deadlock whatever the sizes), then
  /// waits. After TimeoutExpired (the child keeps running) a second call returns all the
  /// output, what came before the timeout included. @throws ValueError "Cannot send input
  /// after starting communication".
  Output communicate(std::optional<std::string_view> input = std::nullopt, Timeout timeout = {});

  /// Python: `send_signal(sig)`, `terminate()` (SIGTERM), `kill()` (SIGKILL): through the
  /// pidfd, nothing once the child has been reaped (no error).
  void send_signal(int sig);
  void terminate();
  void kill();

  int pid() const noexcept { return pid_; }
  /// Python: `returncode`: nullopt while running (or not yet polled); -N for signal N.
  std::optional<int> returncode() const noexcept { return returncode_; }
  /// Python: `args`, as given (a shell command line is one element).
  const std::vector<std::string>& args() const noexcept { return args_; }
  /// A pidfd of the child, readable once it has ended (poll, connection::wait, Asio).
  int pidfd() const noexcept { return pidfd_.get(); }

  /// Python: `stdin`, `stdout`, `stderr`: the pipe ends when PIPE was asked for.
  std::optional<Stream> stdin_;
  std::optional<Stream> stdout_;
  std::optional<Stream> stderr_;

  // Asynchronous twins on Asio, by Asio's rules (doc/async.md): the handler is never invoked
  // from inside the call; the I/O runs on the Popen's executor; the handler on its associated
  // executor, by default the Popen's.

  /// Waits on Asio for the child to end; completes with its return code (the child is reaped),
  /// after the call returns even if the child has already ended. Signature:
  /// void(boost::system::error_code, int); a cancelled wait (per-operation, terminal) gives
  /// operation_aborted and -1, and the child keeps running.
  template <class Token>
  auto async_wait(Token&& token);
  /// communicate() on Asio: writes `input`, reads stdout and stderr to their ends, waits for the
  /// child. Signature: void(boost::system::error_code, Output): the first errno code of the
  /// pipes (EPIPE on stdin is not one, as in Python). The Popen must outlive it.
  template <class Token>
  auto async_communicate(std::string input, Token&& token);
  /// The executor that does the asynchronous I/O of the Popen and its pipes: the one given to
  /// set_executor() (which gives it to stdin_, stdout_ and stderr_ too), else Asio's system
  /// executor (doc/async.md). Set it while no asynchronous operation is outstanding.
  const boost::asio::any_io_executor& get_executor() const noexcept { return executor_; }
  void set_executor(boost::asio::any_io_executor ex) noexcept;

private:
  void start(PopenOptions& options);
  void reap(bool block);
  void close_pipes() noexcept;
  void finish() noexcept;  // what the destructor does
  Output communicated();   // the output communicate() has gathered, translated in text mode

  std::vector<std::string> args_;
  bool shell_string_ = false;  // args_ is one shell command line (for error messages)
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  std::optional<int> returncode_;
  bool text_ = false;
  // communicate()'s progress, kept across a TimeoutExpired.
  bool communication_started_ = false;
  std::string input_;
  std::size_t input_offset_ = 0;
  troupe::detail::Capture out_, err_;
  boost::asio::any_io_executor executor_ = troupe::detail::default_io_executor();
  troupe::detail::ReactorRegistration reactor_;
};

namespace detail {
/// Universal newlines: "\r\n" and "\r" become "\n".
std::string translate_newlines(std::string_view s);
/// An errno as an Asio completion's error code.
boost::system::error_code errno_code(int err) noexcept;
}  // namespace detail

// ---- asynchronous operations ------------------------------------------------------------------

template <class Token>
auto Stream::async_read_some(std::size_t n, Token&& token) {
  auto body = [this, n](auto& op, boost::system::error_code ec = {}) mutable {
    if (ec) return op.complete(ec, std::string());
    if (closed()) return op.complete(detail::errno_code(EBADF), std::string());
    if (pos_ < buf_.size()) return op.complete(boost::system::error_code(), take(n));
    std::string out;
    set_nonblocking();
    const ssize_t r = read_now(out, n);
    if (r == -1)
      return reactor_.get(fd_.get(), executor_)
          .async_wait(boost::asio::posix::descriptor_base::wait_read, op.resume());
    if (r < -1) return op.complete(detail::errno_code(static_cast<int>(-r)), std::string());
    op.complete(boost::system::error_code(), std::move(out));
  };
  return troupe::detail::async_operation<void(boost::system::error_code, std::string)>(
      std::move(body), std::forward<Token>(token), executor_);
}

template <class Token>
auto Stream::async_write(std::string data, Token&& token) {
  auto body = [this, data = std::move(data), done = std::size_t{0}](
                  auto& op, boost::system::error_code ec = {}) mutable {
    if (ec) return op.complete(ec, done);
    if (closed()) return op.complete(detail::errno_code(EBADF), done);
    set_nonblocking();
    while (done < data.size()) {
      const ssize_t r = write_now(data.data() + done, data.size() - done);
      if (r == -1)
        return reactor_.get(fd_.get(), executor_)
            .async_wait(boost::asio::posix::descriptor_base::wait_write, op.resume());
      if (r < -1) return op.complete(detail::errno_code(static_cast<int>(-r)), done);
      done += static_cast<std::size_t>(r);
    }
    op.complete(boost::system::error_code(), done);
  };
  return troupe::detail::async_operation<void(boost::system::error_code, std::size_t)>(
      std::move(body), std::forward<Token>(token), executor_);
}

template <class Token>
auto Popen::async_wait(Token&& token) {
  auto body = [this, started = false](auto& op, boost::system::error_code ec = {}) mutable {
    if (ec) return op.complete(ec, -1);
    if (!returncode_ && !started) {
      started = true;
      return reactor_.get(pidfd_.get(), executor_)
          .async_wait(boost::asio::posix::descriptor_base::wait_read, op.resume());
    }
    reap(true);  // the pidfd is readable: the child has ended, this does not block
    op.complete(boost::system::error_code(), *returncode_);
  };
  return troupe::detail::async_operation<void(boost::system::error_code, int)>(
      std::move(body), std::forward<Token>(token), executor_);
}

template <class Token>
auto Popen::async_communicate(std::string input, Token&& token) {
  // Writing stdin and reading stdout and stderr go side by side; their handlers run on one
  // strand, and the last to end waits for the child with this operation as the handler.
  auto body = [this, input = std::move(input)](auto& op, boost::system::error_code ec = {},
                                               int = 0) mutable {
    if (!op.initiating()) return op.complete(ec, ec ? Output{} : communicated());
    using Self = std::decay_t<decltype(op.resume())>;
    struct State {
      std::optional<Self> self;
      int pending = 1;  // the launching itself, so that nothing completes before it ends
      boost::system::error_code ec;
    };
    std::string input_data = std::move(input);  // moving the operation moves this lambda
    auto st = std::make_shared<State>();
    st->self.emplace(op.resume());
    communication_started_ = true;
    auto strand = boost::asio::make_strand(executor_);
    auto finish = [this, st](boost::system::error_code ec) {
      if (ec && !st->ec) st->ec = ec;
      if (--st->pending > 0) return;
      if (st->ec) return troupe::detail::resume_later(std::move(*st->self), st->ec, -1);
      async_wait(std::move(*st->self));
    };
    if (stdin_) {
      if (input_data.empty()) {
        stdin_->close();
      } else {
        ++st->pending;
        stdin_->async_write(std::move(input_data),
                            boost::asio::bind_executor(
                                strand, [this, finish](boost::system::error_code ec, std::size_t) {
                                  stdin_->close();
                                  // The child may end without reading all: not an error (Python).
                                  finish(ec.value() == EPIPE ? boost::system::error_code() : ec);
                                }));
      }
    }
    for (auto [stream, sink] : {std::pair{&stdout_, &out_}, std::pair{&stderr_, &err_}}) {
      if (!*stream) continue;
      ++st->pending;
      struct Reader {
        Stream* s;
        troupe::detail::Capture* sink;
        decltype(strand) on;
        decltype(finish) done;
        void operator()(boost::system::error_code ec, std::string chunk) {
          if (ec || chunk.empty()) {
            s->close();
            return done(ec);
          }
          sink->append(chunk);
          auto next = on;
          s->async_read_some(65536, boost::asio::bind_executor(next, std::move(*this)));
        }
      };
      (**stream).async_read_some(
          65536, boost::asio::bind_executor(strand, Reader{&**stream, sink, strand, finish}));
    }
    boost::asio::post(strand, [finish]() mutable { finish({}); });  // the launching has ended
  };
  return troupe::detail::async_operation<void(boost::system::error_code, Output)>(
      std::move(body), std::forward<Token>(token), executor_);
}

}  // namespace troupe::subprocess
