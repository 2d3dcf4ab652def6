// troupe/sched/scheduler.hpp — sched.scheduler and sched.Event.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "troupe/detail/mutex.hpp"

namespace troupe::sched {

using clock = std::chrono::steady_clock;

/// Python: `sched.Event(time, priority, sequence, action, argument, kwargs)`. The arguments are
/// bound into `action`. Events order by (time, priority, sequence): ties in time go to the
/// lower priority value, then to the one entered first.
struct Event {
  clock::time_point time;
  int priority = 0;
  std::uint64_t sequence = 0;
  std::function<void()> action;

  friend bool operator==(const Event& a, const Event& b) noexcept {
    return a.time == b.time && a.priority == b.priority && a.sequence == b.sequence;
  }
  friend bool operator<(const Event& a, const Event& b) noexcept {
    return std::tie(a.time, a.priority, a.sequence) < std::tie(b.time, b.priority, b.sequence);
  }
};

/// Python: `sched.scheduler(timefunc=time.monotonic, delayfunc=time.sleep)`. Thread-safe:
/// events may be entered and cancelled from other threads while run() is in progress.
///
/// With the default delay function, run() sleeps until the next event is due and wakes early
/// when an earlier event is entered or an event is cancelled (Python's time.sleep cannot, so
/// there an event entered during a long sleep runs late). Pass `timefunc`/`delayfunc` to run
/// on virtual time, as CPython's test_sched does.
class scheduler {
public:
  using timefunc_t = std::function<clock::time_point()>;
  using delayfunc_t = std::function<void(clock::duration)>;

  explicit scheduler(timefunc_t timefunc = {}, delayfunc_t delayfunc = {});
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  /// Python: `enterabs(time, priority, action, argument=(), kwargs={})`.
  template <class F, class... Args>
  requires std::is_invocable_v < std::decay_t<F>
  &, std::decay_t<Args>&... >
         Event enterabs(clock::time_point time, int priority, F&& action, Args&&... args) {
    return enter_event(time, priority, bind(std::forward<F>(action), std::forward<Args>(args)...));
  }

  /// Python: `enter(delay, priority, action, argument=(), kwargs={})`: at timefunc() + delay.
  template <class Rep, class Period, class F, class... Args>
  requires std::is_invocable_v < std::decay_t<F>
  &, std::decay_t<Args>&... > Event enter(std::chrono::duration<Rep, Period> delay, int priority,
                                          F&& action, Args&&... args) {
    const auto time = now() + std::chrono::duration_cast<clock::duration>(delay);
    return enterabs(time, priority, std::forward<F>(action), std::forward<Args>(args)...);
  }

  /// Python: `cancel(event)`. @throws ValueError if the event is not in the queue.
  void cancel(const Event& event);

  /// Python: `empty()`.
  bool empty() const;

  /// Python: `run(blocking=True)`: runs events as they come due until none is left. With
  /// `blocking` false, runs what is due and returns the time until the next event (nullopt when
  /// none is left). An exception from an action propagates; the other events stay queued.
  std::optional<clock::duration> run(bool blocking = true);

  /// Python: `queue` — the pending events, in the order they will run.
  std::vector<Event> queue() const;

private:
  template <class F, class... Args>
  static std::function<void()> bind(F&& f, Args&&... args) {
    return [f = std::forward<F>(f), tup = std::make_tuple(std::forward<Args>(args)...)]() mutable {
      std::apply(f, tup);
    };
  }
  Event enter_event(clock::time_point time, int priority, std::function<void()> action);
  clock::time_point now() const { return timefunc_ ? timefunc_() : clock::now(); }

  timefunc_t timefunc_;
  delayfunc_t delayfunc_;
  mutable troupe::detail::FutexMutex mu_;
  troupe::detail::FutexCondVar changed_;  // enter/cancel, for the default delay
  std::vector<Event> heap_;               // a min-heap on operator<
  std::uint64_t next_sequence_ = 0;
};

}  // namespace troupe::sched
