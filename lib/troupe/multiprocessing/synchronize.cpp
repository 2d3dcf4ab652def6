#include "troupe/multiprocessing/synchronize.hpp"

#include <time.h>

#include <cerrno>
#include <climits>
#include <thread>

#include "troupe/detail/sanitizers.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/internal/thread_identity.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/threading/thread.hpp"

namespace troupe::multiprocessing {

namespace detail {
namespace {

using troupe::detail::steady;

timespec to_timespec(steady::time_point t) noexcept {
  const auto ns = t.time_since_epoch().count();
  return {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

void check_pthread(int rc, const char* what) {
  if (rc != 0) throw_os_error(rc, what);
}

bool mine(const MutexState& s, const ThreadIdentity& me) noexcept {
  return s.owner_tid.load(std::memory_order_relaxed) == me.tid &&
         s.owner_pid.load(std::memory_order_relaxed) == me.pid;
}

/// Sleeps until `t` passes, through EINTR.
void sleep_until(steady::time_point t) {
  std::this_thread::sleep_until(t);
}

}  // namespace

std::optional<steady::time_point> acquire_deadline(bool block, const Timeout& timeout) {
  if (!block) return steady::now();
  return timeout.deadline();  // forever: nullopt; negative: now
}

MutexState::MutexState() {
  pthread_mutexattr_t a;
  check_pthread(pthread_mutexattr_init(&a), "pthread_mutexattr_init");
  struct Attr {
    pthread_mutexattr_t* a;
    ~Attr() { pthread_mutexattr_destroy(a); }
  } attr{&a};
  check_pthread(pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED),
                "pthread_mutexattr_setpshared");
  check_pthread(pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST),
                "pthread_mutexattr_setrobust");
  check_pthread(pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK),
                "pthread_mutexattr_settype");
  check_pthread(pthread_mutex_init(&mutex, &a), "pthread_mutex_init");
}

bool mutex_is_mine(const MutexState& s) noexcept {
  return mine(s, internal::thread_identity());
}

namespace {

// The lock is taken: say who holds it.
void held_by_me(MutexState& s, std::int32_t recovered) noexcept {
  const ThreadIdentity& me = internal::thread_identity();
  s.owner_pid.store(me.pid, std::memory_order_relaxed);
  s.owner_tid.store(me.tid, std::memory_order_relaxed);
  s.recovered_from = recovered;
  s.count = 1;
}

// mutex_acquire after a first try that did not take the lock (rc: what the try returned).
[[gnu::noinline]] bool mutex_acquire_slow(MutexState& s, int rc, bool block, const Timeout& timeout,
                                          const char* what) {
  const ThreadIdentity& me = internal::thread_identity();
  if (rc == EBUSY || rc == EDEADLK) {  // EDEADLK: a robust error-checking mutex we hold
    const auto deadline = acquire_deadline(block, timeout);
    if (mine(s, me)) {  // the holder itself: it would wait for itself
      if (!deadline)
        throw RuntimeError(std::string("deadlock: this thread already holds the ") + what +
                           " (pid " + std::to_string(me.pid) + ", thread " +
                           std::to_string(me.tid) + "), and it is not re-entrant");
      sleep_until(*deadline);
      return false;
    }
    if (!block) return false;
    const bool got = s.spin.spin([&] {
      if (s.owner_pid.load(std::memory_order_relaxed) != 0) return false;
      rc = pthread_mutex_trylock(&s.mutex);
      return rc != EBUSY && rc != EDEADLK;
    });
    if (!got) {
      if (deadline) {
#if defined(TROUPE_TSAN)
        // GCC 12's ThreadSanitizer does not intercept pthread_mutex_clocklock (and would then
        // report the unlock as wrong): give it the realtime deadline timedlock takes.
        const auto left = *deadline - steady::now();
        const timespec ts =
            to_timespec(steady::time_point(std::chrono::system_clock::now().time_since_epoch() +
                                           std::chrono::duration_cast<steady::duration>(left)));
        rc = pthread_mutex_timedlock(&s.mutex, &ts);
#else
        const timespec ts = to_timespec(*deadline);
        rc = pthread_mutex_clocklock(&s.mutex, CLOCK_MONOTONIC, &ts);
#endif
      } else {
        rc = pthread_mutex_lock(&s.mutex);
      }
      if (rc == 0) s.spin.woke();
    }
  }
  std::int32_t recovered = 0;
  switch (rc) {
    case 0: break;
    case EBUSY:
    case ETIMEDOUT: return false;
    case EOWNERDEAD: {
      // The holder died holding it: take it, make it usable again, and say who died.
      const std::int32_t dead = s.owner_pid.load(std::memory_order_relaxed);
      recovered = dead != 0 ? dead : -1;
      check_pthread(pthread_mutex_consistent(&s.mutex), "pthread_mutex_consistent");
      break;
    }
    case EDEADLK:
      throw RuntimeError(std::string("deadlock: this thread already holds the ") + what);
    default: throw_os_error(rc, std::string("acquiring a process-shared ") + what);
  }
  held_by_me(s, recovered);
  return true;
}

}  // namespace

bool mutex_acquire(MutexState& s, bool block, const Timeout& timeout, const char* what) {
  const int rc = pthread_mutex_trylock(&s.mutex);
  if (rc == 0) [[likely]] {
    held_by_me(s, 0);
    return true;
  }
  return mutex_acquire_slow(s, rc, block, timeout, what);
}

void mutex_release(MutexState& s, const char* what) {
  const ThreadIdentity& me = internal::thread_identity();
  if (!mine(s, me)) [[unlikely]] {
    const auto pid = s.owner_pid.load(std::memory_order_relaxed);
    if (pid == 0) throw ValueError("semaphore or lock released too many times");
    throw RuntimeError(std::string("a process-shared ") + what +
                       " is released by the thread that acquired it; pid " + std::to_string(pid) +
                       " thread " + std::to_string(s.owner_tid.load(std::memory_order_relaxed)) +
                       " holds it, not pid " + std::to_string(me.pid) + " thread " +
                       std::to_string(me.tid));
  }
  s.owner_pid.store(0, std::memory_order_relaxed);
  s.owner_tid.store(0, std::memory_order_relaxed);
  s.count = 0;
  check_pthread(pthread_mutex_unlock(&s.mutex), "pthread_mutex_unlock");
}

std::string mutex_owner_text(const MutexState& s) {
  const ThreadIdentity& me = internal::thread_identity();
  const auto pid = s.owner_pid.load(std::memory_order_relaxed);
  if (pid == 0) return "None";
  if (mine(s, me)) {
    std::string name = current_process().name();
    if (me.tid != me.pid) name += "|" + troupe::threading::current_thread().name();
    return name;
  }
  return pid == me.pid ? "SomeOtherThread" : "SomeOtherProcess";
}

std::string barrier_action_name(const std::function<void()>& action) {
  if (!action) return {};
  if (const auto* fp = action.target<void (*)()>())
    if (const EntryPoint* e = find_entry(reinterpret_cast<const void*>(*fp))) return e->name;
  throw ValueError(
      "a Barrier's action crosses to a process started by spawn only as a function registered "
      "with TROUPE_ENTRY");
}

std::function<void()> barrier_action(const std::string& name) {
  if (name.empty()) return {};
  const EntryPoint* e = find_entry(name);
  if (!e)
    throw ValueError("no entry point '" + name +
                     "' (TROUPE_ENTRY) in this program for a Barrier's action");
  return [e] { e->invoke(troupe::to_bytes(std::tuple<>{})); };
}

}  // namespace detail

using troupe::detail::steady;

// ---- Lock ------------------------------------------------------------------------------------

Lock::Lock() : s_(detail::make_shared_state<detail::MutexState>(detail::RegionKind::lock)) {}

namespace {
[[gnu::cold, gnu::noinline]] void report_recovered(const char* what, int pid) {
  get_logger().warning(std::string(what) + " recovered from pid " + std::to_string(pid) +
                       ", which died holding it");
}

inline bool acquire_and_report(detail::MutexState& s, bool block, const Timeout& timeout,
                               const char* what) {
  if (!detail::mutex_acquire(s, block, timeout, what)) return false;
  if (s.recovered_from != 0) [[unlikely]]
    report_recovered(what, s.recovered_from);
  return true;
}
}  // namespace

bool Lock::acquire(bool block, Timeout timeout) {
  return acquire_and_report(*s_.state, block, timeout, "Lock");
}

void Lock::release() {
  detail::mutex_release(*s_.state, "Lock");
}

std::optional<int> Lock::recovered_from() const noexcept {
  if (!_is_owned() || s_->recovered_from == 0) return std::nullopt;
  return s_->recovered_from;
}

std::string Lock::repr() const {
  return "<Lock(owner=" + detail::mutex_owner_text(*s_.state) + ")>";
}

int Lock::_release_save() {
  release();
  return 1;
}

void Lock::_acquire_restore(int) {
  (void)acquire();
}

// ---- RLock -----------------------------------------------------------------------------------

RLock::RLock() : s_(detail::make_shared_state<detail::MutexState>(detail::RegionKind::rlock)) {}

bool RLock::acquire(bool block, Timeout timeout) {
  if (_is_owned()) {
    ++s_->count;
    return true;
  }
  return acquire_and_report(*s_.state, block, timeout, "RLock");
}

void RLock::release() {
  if (!_is_owned()) throw RuntimeError("cannot release un-acquired lock");
  if (--s_->count > 0) return;
  s_->count = 1;  // mutex_release clears it
  detail::mutex_release(*s_.state, "RLock");
}

std::optional<int> RLock::recovered_from() const noexcept {
  if (!_is_owned() || s_->recovered_from == 0) return std::nullopt;
  return s_->recovered_from;
}

std::string RLock::repr() const {
  const std::string owner = detail::mutex_owner_text(*s_.state);
  std::string count;
  if (owner == "None")
    count = "0";
  else if (_is_owned())
    count = std::to_string(s_->count);
  else
    count = "nonzero";
  return "<RLock(" + owner + ", " + count + ")>";
}

int RLock::_release_save() {
  if (!_is_owned()) throw RuntimeError("cannot release un-acquired lock");
  const int c = s_->count;
  detail::mutex_release(*s_.state, "RLock");
  return c;
}

void RLock::_acquire_restore(int count) {
  (void)detail::mutex_acquire(*s_.state, true, {}, "RLock");
  s_->count = count;
}

// ---- Semaphore -------------------------------------------------------------------------------

namespace {
constexpr int kSemValueMax = INT_MAX;  // SEM_VALUE_MAX on Linux

bool try_take(detail::SemaphoreState& s) noexcept {
  std::uint32_t v = s.value.load(std::memory_order_seq_cst);
  while (v > 0)
    if (s.value.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed))
      return true;
  return false;
}
}  // namespace

Semaphore::Semaphore(int value) : Semaphore(value, kSemValueMax) {}

Semaphore::Semaphore(int value, int maxvalue) {
  if (value < 0 || value > kSemValueMax)
    throw ValueError(
        "invalid value: a semaphore's initial value must be in [0, SEM_VALUE_MAX], not " +
        std::to_string(value));
  s_ = detail::make_shared_state<detail::SemaphoreState>(detail::RegionKind::semaphore,
                                                         static_cast<std::uint32_t>(value),
                                                         static_cast<std::uint32_t>(maxvalue));
}

bool Semaphore::acquire(bool block, Timeout timeout) {
  auto& s = *s_.state;
  if (try_take(s)) return true;
  if (!block) return false;
  return detail::wait_shared(s.value, s.sleepers, s.spin, timeout.deadline(),
                             [&] { return try_take(s); });
}

void Semaphore::release(int n) {
  if (n < 1) throw ValueError("n must be one or more");
  auto& s = *s_.state;
  std::uint32_t v = s.value.load(std::memory_order_relaxed);
  do {
    if (static_cast<std::uint64_t>(v) + static_cast<std::uint64_t>(n) > s.maxvalue) {
      if (s.maxvalue != static_cast<std::uint32_t>(kSemValueMax))
        throw ValueError("semaphore or lock released too many times");
      throw ValueError("semaphore value would exceed SEM_VALUE_MAX");
    }
  } while (!s.value.compare_exchange_weak(v, v + static_cast<std::uint32_t>(n),
                                          std::memory_order_seq_cst, std::memory_order_relaxed));
  s.sleepers.wake(s.value, n, true);
}

std::string Semaphore::repr() const {
  return "<Semaphore(value=" + std::to_string(get_value()) + ")>";
}

std::string BoundedSemaphore::repr() const {
  return "<BoundedSemaphore(value=" + std::to_string(get_value()) +
         ", maxvalue=" + std::to_string(s_->maxvalue) + ")>";
}

// ---- Event -----------------------------------------------------------------------------------

Event::Event() : s_(detail::make_shared_state<detail::EventState>(detail::RegionKind::event)) {}

void Event::set() {
  auto& s = *s_.state;
  s.flag.store(1, std::memory_order_seq_cst);
  s.sleepers.wake(s.flag, INT_MAX, true);
}

bool Event::wait(Timeout timeout) {
  auto& s = *s_.state;
  auto is = [&] { return s.flag.load(std::memory_order_seq_cst) != 0; };
  if (is()) return true;
  return detail::wait_shared(s.flag, s.sleepers, s.spin, timeout.deadline(), is);
}

// ---- Condition -------------------------------------------------------------------------------

Condition::Condition() : Condition(ConditionLock(RLock())) {}

Condition::Condition(ConditionLock lock)
    : lock_(std::move(lock)),
      s_(detail::make_shared_state<detail::ConditionState>(detail::RegionKind::condition)) {}

bool Condition::acquire(bool block, Timeout timeout) {
  return std::visit([&](auto& l) { return l.acquire(block, timeout); }, lock_);
}

void Condition::release() {
  std::visit([](auto& l) { l.release(); }, lock_);
}

bool Condition::is_owned() const noexcept {
  return std::visit([](const auto& l) { return l._is_owned(); }, lock_);
}

bool Condition::wait(Timeout timeout) {
  if (!is_owned()) throw RuntimeError("must acquire() condition before using wait()");
  auto& s = *s_.state;
  const auto deadline = timeout.deadline();
  ++s.waiters;
  for (;;) {
    const std::uint32_t seq = s.seq.load(std::memory_order_acquire);
    const int saved = std::visit([](auto& l) { return l._release_save(); }, lock_);
    const bool in_time = detail::wait_shared(s.seq, s.sleepers, s.spin, deadline, [&] {
      return s.seq.load(std::memory_order_seq_cst) != seq;
    });
    std::visit([saved](auto& l) { l._acquire_restore(saved); }, lock_);
    // Notifies hand out signals under the lock; a waiter whose sequence moved may find them
    // all taken by others, and waits again.
    if (s.signals > 0) {
      --s.signals;
      --s.waiters;
      return true;
    }
    if (!in_time) {
      --s.waiters;
      return false;
    }
  }
}

void Condition::notify(int n) {
  if (!is_owned()) throw RuntimeError("lock is not owned");
  auto& s = *s_.state;
  const int k = std::min(n, s.waiters - s.signals);
  if (k <= 0) return;
  s.signals += k;
  detail::moved(s.seq, s.sleepers, k);
}

void Condition::notify_all() {
  notify(INT_MAX);
}

// ---- Barrier ---------------------------------------------------------------------------------

namespace {
/// The barrier's guard, held for a scope (released early with unlock()).
class Guard {
public:
  explicit Guard(detail::MutexState& m) : m_(m) {
    (void)detail::mutex_acquire(m_, true, {}, "Barrier");
    recovered_ = m_.recovered_from != 0;
  }
  ~Guard() {
    if (held_) detail::mutex_release(m_, "Barrier");
  }
  void unlock() {
    held_ = false;
    detail::mutex_release(m_, "Barrier");
  }
  void lock() {
    (void)detail::mutex_acquire(m_, true, {}, "Barrier");
    held_ = true;
    recovered_ = recovered_ || m_.recovered_from != 0;
  }
  /// A process died inside the barrier's guard: its state may be half-changed.
  bool recovered() const noexcept { return recovered_; }

private:
  detail::MutexState& m_;
  bool held_ = true;
  bool recovered_ = false;
};

std::int64_t default_timeout_ns(const Timeout& t) {
  if (t.is_forever()) return -1;
  return t.remaining().count();
}
}  // namespace

Barrier::Barrier(int parties, std::function<void()> action, Timeout timeout)
    : action_(std::move(action)) {
  if (parties <= 0) throw ValueError("parties must be > 0");
  s_ = detail::make_shared_state<detail::BarrierState>(detail::RegionKind::barrier, parties,
                                                       default_timeout_ns(timeout));
}

void Barrier::break_locked() {
  auto& s = *s_.state;
  s.broken = 1;
  if (s.count > 0) {  // wake this generation's waiters with BrokenBarrierError
    s.broken_gen = s.generation.load(std::memory_order_relaxed);
    s.count = 0;
    detail::moved(s.generation, s.sleepers);
  }
}

int Barrier::wait(std::optional<Timeout> timeout) {
  auto& s = *s_.state;
  const Timeout t =
      timeout ? *timeout
              : (s.timeout_ns < 0 ? Timeout() : Timeout(std::chrono::nanoseconds(s.timeout_ns)));
  const auto deadline = t.deadline();
  Guard guard(s.guard);
  if (guard.recovered()) break_locked();
  if (s.broken) throw troupe::threading::BrokenBarrierError("the barrier is broken");
  const std::uint32_t gen = s.generation.load(std::memory_order_relaxed);
  const int index = s.count++;
  if (s.count == s.parties) {  // the last to arrive: run the action, release the others
    if (action_) {
      try {
        action_();
      } catch (...) {
        break_locked();
        throw;
      }
    }
    s.count = 0;
    detail::moved(s.generation, s.sleepers);
    return index;
  }
  guard.unlock();
  (void)detail::wait_shared(s.generation, s.sleepers, s.spin, deadline,
                            [&] { return s.generation.load(std::memory_order_seq_cst) != gen; });
  guard.lock();
  if (s.generation.load(std::memory_order_relaxed) != gen) {
    if (s.broken_gen == gen) throw troupe::threading::BrokenBarrierError("the barrier is broken");
    return index;
  }
  const int arrived = s.count;
  break_locked();  // this wait timed out: the barrier breaks for all
  throw troupe::threading::BrokenBarrierError("the barrier wait timed out (" +
                                              std::to_string(arrived) + " of " +
                                              std::to_string(s.parties) + " parties arrived)");
}

void Barrier::reset() {
  auto& s = *s_.state;
  Guard guard(s.guard);
  if (s.count > 0) break_locked();
  s.broken = 0;
}

void Barrier::abort() {
  Guard guard(s_->guard);
  break_locked();
}

int Barrier::n_waiting() const {
  Guard guard(s_->guard);
  return s_->count;
}

bool Barrier::broken() const {
  Guard guard(s_->guard);
  return s_->broken != 0;
}

}  // namespace troupe::multiprocessing
