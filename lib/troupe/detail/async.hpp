// troupe/detail/async.hpp — the one way troupe builds an asynchronous operation, so that every
// `async_` member follows Asio's rules (doc/async.md states them for users):
//
// - The completion handler is never invoked from inside the initiating function. A completion
//   reached before the operation has waited once (an immediate result, a closed connection, an
//   exited process) is posted, as Asio's own operations post an immediate completion.
// - The I/O object's executor does the I/O; the handler runs on its associated executor, which
//   defaults to the I/O executor. Both count outstanding work until the handler has run.
// - Per-operation cancellation (terminal, as async_compose enables it) reaches every wait the
//   operation makes through its cancellation slot.
//
// Underneath is Asio's async_compose; what this adds is the step object an operation's body
// sees: complete() cannot run the handler inside the initiating call (async_compose's
// self.complete() would). Not API.
#pragma once

#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/defer.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/system/error_code.hpp>

namespace troupe::detail {

/// The I/O executor of an object that was given none: Asio's system executor, whose thread pool
/// (started on first use, alive until exit) runs a reactor of its own. Handlers with no
/// associated executor of their own (plain callbacks, asio::use_future) then run on that pool.
inline boost::asio::any_io_executor default_io_executor() {
  return boost::asio::any_io_executor(boost::asio::system_executor());
}

/// `ex`, or the default I/O executor when `ex` is empty (a moved-from object's).
inline boost::asio::any_io_executor io_executor_or_default(const boost::asio::any_io_executor& ex) {
  return ex ? ex : default_io_executor();
}

/// Resumes the operation `self` with `args` on its executor (the handler's associated executor,
/// else the I/O executor): for results that arrive from outside Asio (a thread that finishes a
/// future, the accept engine's strand). Never runs `self` inside this call.
template <class Self, class... A>
void resume_later(Self&& self, A&&... args) {
  auto ex = self.get_executor();
  boost::asio::post(ex, [self = std::move(self), ... a = std::forward<A>(args)]() mutable {
    self(std::move(a)...);
  });
}

template <class Body, class... R>
class ComposedOp;

/// What an operation's body sees at each step: the intermediate handler (pass resume() to the
/// next operation waited on) and complete(), which ends the operation by Asio's rules.
template <class Self, class Body, class... R>
class AsyncStep {
  using Op = ComposedOp<Body, R...>;

public:
  AsyncStep(Self& self, Op& op, bool initiating) noexcept
      : self_(self), op_(op), initiating_(initiating) {}

  /// Ends the operation with the completion's arguments. Inside the initiating call the handler
  /// is posted to its executor; later it is invoked at once (this step already runs there).
  void complete(R... args) {
    if (!initiating_) {
      op_.handler_work_ = {};
      return self_.complete(std::move(args)...);
    }
    op_.deferred_.emplace(std::move(args)...);
    auto ex = self_.get_executor();
    // Deferred, not posted: the same rule (never inside this call), but marked as a
    // continuation of the running handler, so a thread of the executor's io_context queues it
    // for itself instead of waking another (a context switch per operation).
    boost::asio::defer(ex, std::move(self_));  // resumed with no arguments: completes then
  }

  /// The intermediate completion handler, to give to the next operation this one waits on
  /// (moved from: the step must not be used afterwards, as async_compose's self). It moves the
  /// body too: read what the body holds into locals first.
  Self&& resume() noexcept { return std::move(self_); }
  /// The handler's associated executor, else the I/O executor.
  auto get_executor() const noexcept { return self_.get_executor(); }
  /// The operation's cancellation slot (connected only when the caller's handler has one):
  /// an operation that waits on something other than an Asio object assigns its canceller.
  boost::asio::cancellation_slot cancellation_slot() noexcept {
    return self_.get_cancellation_state().slot();
  }
  /// Whether this step runs inside the initiating function.
  bool initiating() const noexcept { return initiating_; }

private:
  Self& self_;
  Op& op_;
  bool initiating_;
};

/// async_compose's implementation object: runs `Body` with an AsyncStep, and delivers a
/// completion deferred out of the initiating call when it is resumed with no arguments.
template <class Body, class... R>
class ComposedOp {
public:
  explicit ComposedOp(Body body) : body_(std::move(body)) {}

  template <class Self, class... A>
  void operator()(Self& self, A&&... args) {
    if constexpr (sizeof...(A) == 0) {
      if (deferred_) {
        auto r = std::move(*deferred_);
        deferred_.reset();
        handler_work_ = {};
        return std::apply([&self](R&... v) { self.complete(std::move(v)...); }, r);
      }
    }
    if (initiating_) {
      // async_compose counts work on the I/O executor; Asio's own operations count it on the
      // handler's executor too (an io_context bound to the handler keeps running meanwhile).
      // A handler with no executor of its own runs on the I/O executor, counted already (a
      // second count of a strand's would cost an allocation an operation).
      boost::asio::any_io_executor ex(self.get_executor());
      if (!(ex == boost::asio::any_io_executor(self.get_io_executor())))
        handler_work_ =
            boost::asio::prefer(std::move(ex), boost::asio::execution::outstanding_work.tracked);
    }
    AsyncStep<Self, Body, R...> step(self, *this, std::exchange(initiating_, false));
    body_(step, std::forward<A>(args)...);
  }

private:
  template <class, class, class...>
  friend class AsyncStep;
  Body body_;
  bool initiating_ = true;
  std::optional<std::tuple<R...>> deferred_;
  boost::asio::any_io_executor handler_work_;
};

template <class Signature>
struct AsyncSignature;
template <class... R>
struct AsyncSignature<void(R...)> {
  template <class Body>
  using Op = ComposedOp<std::decay_t<Body>, std::decay_t<R>...>;
};

/// Launches an operation of completion `Signature` whose I/O runs on `io` (empty: the default
/// I/O executor). `body(step, args…)` is called once inside this call (no args) and again with
/// the completion arguments of each operation it waited on (given step.resume()); it ends the
/// operation with step.complete(…). Returns what the token makes of it (async_result).
template <class Signature, class Token, class Body>
auto async_operation(Body&& body, Token&& token, const boost::asio::any_io_executor& io) {
  using Op = typename AsyncSignature<Signature>::template Op<Body>;
  return boost::asio::async_compose<Token, Signature>(Op(std::forward<Body>(body)), token,
                                                      io_executor_or_default(io));
}

}  // namespace troupe::detail
