#include "troupe/threading/barrier.hpp"

#include <mutex>

#include "troupe/errors.hpp"

namespace troupe::threading {

Barrier::Barrier(int parties, std::function<void()> action, Timeout timeout)
    : action_(std::move(action)), timeout_(timeout), parties_(parties) {
  if (parties < 1) throw ValueError("parties must be > 0");
}

int Barrier::wait(std::optional<Timeout> timeout) {
  const Timeout t = timeout ? *timeout : timeout_;
  std::scoped_lock guard{lock_};
  enter();
  const int index = count_++;
  struct Exit {
    Barrier* b;
    ~Exit() { b->exit_one(); }
  } on_exit{this};
  if (index + 1 == parties_) {
    release_all();
  } else {
    wait_release(t);
  }
  return index;
}

// Wait until a previous generation has drained or reset.
void Barrier::enter() {
  while (state_ == State::draining || state_ == State::resetting) (void)cond_.wait();
  if (state_ == State::broken) throw BrokenBarrierError("the barrier is broken");
}

// The last party: run the action, then release the generation.
void Barrier::release_all() {
  try {
    if (action_) action_();
    state_ = State::draining;
    cond_.notify_all();
  } catch (...) {
    break_locked();
    throw;
  }
}

void Barrier::wait_release(const Timeout& timeout) {
  if (!cond_.wait_for([this] { return state_ != State::filling; }, timeout)) {
    break_locked();
    throw BrokenBarrierError("the barrier wait timed out (" + std::to_string(count_) + " of " +
                             std::to_string(parties_) + " parties arrived); the barrier is broken");
  }
  if (state_ == State::broken || state_ == State::resetting)
    throw BrokenBarrierError(state_ == State::broken ? "the barrier is broken"
                                                     : "the barrier was reset");
}

// The last one out of a draining or resetting generation opens the next.
void Barrier::exit_one() {
  if (--count_ == 0 && (state_ == State::draining || state_ == State::resetting)) {
    state_ = State::filling;
    cond_.notify_all();
  }
}

void Barrier::break_locked() {
  state_ = State::broken;
  cond_.notify_all();
}

void Barrier::reset() {
  std::scoped_lock guard{lock_};
  if (count_ > 0) {
    if (state_ == State::filling || state_ == State::broken) state_ = State::resetting;
  } else {
    state_ = State::filling;
  }
  cond_.notify_all();
}

void Barrier::abort() {
  std::scoped_lock guard{lock_};
  break_locked();
}

int Barrier::n_waiting() {
  std::scoped_lock guard{lock_};
  return state_ == State::filling ? count_ : 0;
}

bool Barrier::broken() {
  std::scoped_lock guard{lock_};
  return state_ == State::broken;
}

}  // namespace troupe::threading
