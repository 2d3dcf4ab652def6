// troupe/multiprocessing/managers/lane.hpp — a lane of calls of its own, beside a thread's.
//
// A thread's calls to a manager run there one after another, in the order sent: the thread's
// lane (as a Python thread's calls run one at a time on its own connection). A call that waits
// (an async_get on an empty queue, an async_acquire of a held lock) so holds back every later
// call of the thread, even to other objects, until it ends. Calls made inside a Lane's scope go
// on that lane instead: in order among themselves, beside the thread's other calls.
//
//   mp::managers::Lane gets;                 // a worker that keeps several gets in flight
//   gets.run([&] { tasks.async_get(on_task); });
//   results.async_put(r, on_put);            // the thread's lane: not behind the gets
//
// A lane is also an owner, as a thread is: a managed Lock or RLock acquired inside a lane's scope
// is held by the lane (release it there; an RLock re-enters there); copies of a Lane are one lane,
// whichever threads use them. Against a CPython server each lane is a connection of its own, as
// each thread's is (opened at its first call; at most 64 stay open, the least recently used idle
// ones closed past that): make lanes for long-lived streams of calls, not one per call.
#pragma once

#include <cstdint>
#include <utility>

namespace troupe::multiprocessing::managers {

class Lane {
public:
  /// A new lane, unlike any other of this process (and any thread's).
  Lane() noexcept;

  /// While a Scope lives, the calls this thread makes go on `lane` (scopes nest: the inner one
  /// wins until it ends). A Scope ends on the thread that made it, in the reverse order of the
  /// scopes made after it: not across a `co_await` (other coroutines of the thread would call on
  /// the lane meanwhile), not from another thread.
  class Scope {
  public:
    explicit Scope(const Lane& lane) noexcept;
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

  private:
    std::uint64_t saved_;
  };

  /// Runs `f` with this thread's calls on this lane; returns what f returns.
  template <class F>
  decltype(auto) run(F&& f) const {
    const Scope on(*this);
    return std::forward<F>(f)();
  }

  /// Its number on the wire (Request.lane): never 0.
  std::uint64_t id() const noexcept { return id_; }

private:
  std::uint64_t id_;
};

}  // namespace troupe::multiprocessing::managers
