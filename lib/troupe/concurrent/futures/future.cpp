#include "troupe/concurrent/futures/future.hpp"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <mutex>

#include "troupe/internal/demangle.hpp"

namespace troupe::concurrent::futures::detail {

using troupe::detail::steady;

WaitGuard*& current_pool() noexcept {
  thread_local WaitGuard* pool = nullptr;
  return pool;
}

void Waiter::add(const std::shared_ptr<CoreBase>& core, bool raised) {
  std::scoped_lock lock(mutex_);
  finished_.push_back(core);
  ++count_;
  raised_ = raised_ || raised;
  cv_.notify_all();
}

bool raised(const CoreBase& core) noexcept {
  return core.state() == State::finished && core.stored_exception() != nullptr;
}

namespace {

const char* state_name(State s) noexcept {
  switch (s) {
    case State::pending: return "pending";
    case State::running: return "running";
    case State::cancelled: return "cancelled";
    case State::finished: return "finished";
  }
  return "unknown";
}

std::string exception_class(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return troupe::internal::demangle(typeid(x));
  } catch (...) {
    return troupe::internal::current_exception_type();
  }
}

}  // namespace

std::string CoreBase::repr() const {
  char head[64];
  std::snprintf(head, sizeof head, "<Future at %p state=", static_cast<const void*>(this));
  std::string out = head;
  mutex_.lock();
  const State s = state();
  out += state_name(s);
  if (s == State::finished) {
    if (exception_)
      out += " raised " + exception_class(exception_);
    else
      out += std::string(" returned ") + (std::string(result_type_name()) == "None"
                                              ? "None"
                                              : troupe::internal::demangle(result_type_name()));
  }
  mutex_.unlock();
  return out + ">";
}

void CoreBase::throw_invalid_state() const {
  std::string r = repr();
  const std::string state = state_name(this->state());
  std::string upper;
  for (char c : state) upper += static_cast<char>(c - 'a' + 'A');
  throw InvalidStateError(upper + ": " + r);
}

bool CoreBase::cancel() {
  mutex_.lock();
  const State s = state();
  if (s == State::running || s == State::finished) {
    mutex_.unlock();
    return false;
  }
  if (s == State::cancelled) {
    mutex_.unlock();
    return true;
  }
  // May lose to a worker's set_running_or_notify_cancel (which takes no lock): then running.
  return finish_locked(State::cancelled, false);
}

bool CoreBase::set_running_or_notify_cancel() {
  std::uint32_t w = word_.load(std::memory_order_acquire);
  for (;;) {
    const auto s = static_cast<State>(w & kStateMask);
    if (s == State::pending) {
      if (word_.compare_exchange_weak(w, (w & ~kStateMask) | 1u, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        return true;
      continue;
    }
    if (s == State::cancelled && !(w & kNoted)) {
      if (word_.compare_exchange_weak(w, w | kNoted, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        return false;
      continue;
    }
    throw RuntimeError("Future in unexpected state: " + repr());
  }
}

void CoreBase::set_exception(std::exception_ptr e) {
  if (!e) throw ValueError("set_exception needs an exception (got a null exception_ptr)");
  mutex_.lock();
  if (done()) {
    mutex_.unlock();
    throw_invalid_state();
  }
  exception_ = std::move(e);
  (void)finish_locked(State::finished, true);
}

bool CoreBase::finish_locked(State to, bool raised) {
  std::uint32_t old = word_.load(std::memory_order_relaxed);
  for (;;) {
    const auto s = static_cast<State>(old & kStateMask);
    if (is_done(old) || (to == State::cancelled && s != State::pending)) {
      mutex_.unlock();
      return false;
    }
    if (word_.compare_exchange_weak(old, static_cast<std::uint32_t>(to), std::memory_order_acq_rel,
                                    std::memory_order_relaxed))
      break;
  }
  // Whoever finishes a future holds a handle on it (or is its task), so it lives through the
  // wake-up and the callbacks.
  if (!waiters_.empty()) {
    std::shared_ptr<CoreBase> self = shared_from_this();
    for (Waiter* w : waiters_) w->add(self, raised);
    waiters_.clear();
  }
  std::vector<Callback> callbacks = std::move(callbacks_);
  callbacks_.clear();
  mutex_.unlock();
  if (old & kSleepers) troupe::detail::futex_wake(word_, INT_MAX);
  for (auto& cb : callbacks) {
    try {
      cb(*this);
    } catch (...) {
      // Python logs "exception calling callback for <Future …>" and goes on with the others.
      std::fprintf(stderr, "exception calling callback for %s\n%s\n", repr().c_str(),
                   troupe::internal::describe(std::current_exception()).c_str());
    }
  }
  return true;
}

void CoreBase::add_done_callback(Callback cb) {
  mutex_.lock();
  if (!done()) {
    callbacks_.push_back(std::move(cb));
    mutex_.unlock();
    return;
  }
  mutex_.unlock();
  try {
    cb(*this);
  } catch (...) {
    std::fprintf(stderr, "exception calling callback for %s\n%s\n", repr().c_str(),
                 troupe::internal::describe(std::current_exception()).c_str());
  }
}

bool CoreBase::add_waiter(Waiter* w) {
  std::scoped_lock lock(mutex_);
  if (done()) return false;
  waiters_.push_back(w);
  return true;
}

void CoreBase::remove_waiter(Waiter* w) noexcept {
  std::scoped_lock lock(mutex_);
  auto it = std::find(waiters_.begin(), waiters_.end(), w);
  if (it != waiters_.end()) waiters_.erase(it);
}

bool CoreBase::sleep_until_done(const std::optional<steady::time_point>& deadline,
                                troupe::detail::AdaptiveSpin* learn) const {
  for (;;) {
    std::uint32_t w = word_.load(std::memory_order_acquire);
    if (is_done(w)) return true;
    if (!(w & kSleepers)) {
      if (!word_.compare_exchange_weak(w, w | kSleepers, std::memory_order_seq_cst,
                                       std::memory_order_relaxed))
        continue;
      w |= kSleepers;
    }
    const bool in_time = troupe::detail::futex_wait(word_, w, deadline);
    if (done()) {
      if (learn) learn->woke();
      return true;
    }
    if (!in_time) return false;
  }
}

bool CoreBase::wait(Timeout timeout, troupe::detail::AdaptiveSpin* spin) const {
  if (done()) return true;
  const auto now = steady::now();
  const auto deadline = timeout.is_negative() ? std::optional(now) : timeout.deadline(now);
  if (deadline && *deadline <= now) return false;
  help_wait(deadline);
  if (done()) return true;
  if (deadline && *deadline <= steady::now()) return false;
  troupe::detail::AdaptiveSpin fresh;  // a lone wait spins for the full budget
  if ((spin ? *spin : fresh).spin([&] { return done(); })) return true;
  WaitGuard* pool = current_pool();
  if (!deadline && pool != nullptr && pool == owner_) {
    pool->enter_wait(*this);  // throws if this wait could never end
    struct Leave {
      WaitGuard* pool;
      const CoreBase& core;
      ~Leave() { pool->leave_wait(core); }
    } leave{pool, *this};
    return sleep_until_done(deadline, spin);
  }
  return sleep_until_done(deadline, spin);
}

void CoreBase::wait_or_throw(Timeout timeout, troupe::detail::AdaptiveSpin* spin) const {
  if (!wait(timeout, spin))
    throw TimeoutError("the future is not done within the timeout: " + repr());
  if (state() == State::cancelled) throw CancelledError("the future was cancelled: " + repr());
}

}  // namespace troupe::concurrent::futures::detail
