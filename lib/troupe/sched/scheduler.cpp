#include "troupe/sched/scheduler.hpp"

#include <algorithm>
#include <mutex>

#include "troupe/errors.hpp"

namespace troupe::sched {
namespace {
constexpr auto later = [](const Event& a, const Event& b) { return b < a; };
}

scheduler::scheduler(timefunc_t timefunc, delayfunc_t delayfunc)
    : timefunc_(std::move(timefunc)), delayfunc_(std::move(delayfunc)) {}

Event scheduler::enter_event(clock::time_point time, int priority, std::function<void()> action) {
  std::scoped_lock lk(mu_);
  Event e{time, priority, next_sequence_++, std::move(action)};
  heap_.push_back(e);
  std::push_heap(heap_.begin(), heap_.end(), later);
  changed_.notify_all();
  return e;
}

void scheduler::cancel(const Event& event) {
  std::scoped_lock lk(mu_);
  auto it = std::find(heap_.begin(), heap_.end(), event);
  if (it == heap_.end())
    throw ValueError("sched.scheduler.cancel: event " + std::to_string(event.sequence) +
                     " is not in the queue");
  heap_.erase(it);
  std::make_heap(heap_.begin(), heap_.end(), later);
  changed_.notify_all();
}

bool scheduler::empty() const {
  std::scoped_lock lk(mu_);
  return heap_.empty();
}

std::vector<Event> scheduler::queue() const {
  std::vector<Event> out;
  {
    std::scoped_lock lk(mu_);
    out = heap_;
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<clock::duration> scheduler::run(bool blocking) {
  for (;;) {
    std::unique_lock lk(mu_);
    if (heap_.empty()) return std::nullopt;
    const auto t = now();
    if (heap_.front().time > t) {
      const auto wait = heap_.front().time - t;
      if (!blocking) return wait;
      if (delayfunc_) {
        lk.unlock();
        delayfunc_(wait);
      } else {
        // Sleep until the event is due, or until the queue changes: then look again.
        (void)changed_.wait(mu_, clock::now() + wait);
      }
      continue;
    }
    std::pop_heap(heap_.begin(), heap_.end(), later);
    std::function<void()> action = std::move(heap_.back().action);
    heap_.pop_back();
    lk.unlock();
    action();
    // Python calls delayfunc(0) here to let other threads run; a custom delayfunc sees the same
    // call. With the default there is nothing to do: the lock was released, and a thread asleep
    // on it has been woken.
    if (delayfunc_) delayfunc_(clock::duration::zero());
  }
}

}  // namespace troupe::sched
