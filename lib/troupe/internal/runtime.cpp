#include "troupe/internal/runtime.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace troupe::internal::runtime {

namespace {

using Step = void (*)();

constexpr std::size_t kExitSteps = static_cast<std::size_t>(ExitStep::forkserver) + 1;
constexpr std::size_t kForkSteps = static_cast<std::size_t>(ForkStep::parking) + 1;

// Constant-initialised: usable from static initialisers of any translation unit.
constinit std::array<std::atomic<Step>, kExitSteps> exit_steps{};
constinit std::array<std::atomic<bool>, kExitSteps> exit_ran{};
constinit std::atomic<bool> exit_begun{false};
constinit std::array<std::atomic<const ForkHandlers*>, kForkSteps> fork_steps{};
constinit std::atomic<bool> fork_installed{false};
// The steps this thread's fork's prepare pass saw, for its parent's or child's pass (per thread:
// glibc 2.36 lets go of its fork lock around each handler, so another thread's fork may run its
// handlers meanwhile; a forked child has the forking thread's).
constinit thread_local std::array<const ForkHandlers*, kForkSteps> this_fork{};

// Registered once per step; the first call to run does every step, the later ones find them
// done. A step first needed while the handler runs is run by its own registration's call.
void run_exit_steps() {
  exit_begun.store(true);
  for (std::size_t i = 0; i < kExitSteps; ++i) {
    const Step fn = exit_steps[i].load();
    if (fn && !exit_ran[i].exchange(true)) fn();
  }
}

constinit std::atomic<pid_t> cached_pid{0};

void refresh_pid() noexcept {
  cached_pid.store(::getpid(), std::memory_order_relaxed);
}

// Threads of troupe's that a fork leaves behind (ForkAwareThread): none in a forked child.
std::atomic<int> fork_aware{0};

// Forks that went on before every thread of troupe's had parked (ForkParking).
std::atomic<int> forks_unparked{0};

void run_fork_prepare_steps() {
  for (std::size_t i = kForkSteps; i-- > 0;) {
    this_fork[i] = fork_steps[i].load(std::memory_order_acquire);
    if (this_fork[i] != nullptr && this_fork[i]->prepare != nullptr) this_fork[i]->prepare();
  }
}
// After the fork: step i's handlers, if this thread's prepare pass ran the step, or if the step
// has no prepare handler (whenever it was registered).
const ForkHandlers* after_fork_step(std::size_t i) noexcept {
  if (const ForkHandlers* seen = std::exchange(this_fork[i], nullptr)) return seen;
  const ForkHandlers* now = fork_steps[i].load(std::memory_order_acquire);
  return now != nullptr && now->prepare == nullptr ? now : nullptr;
}
void run_fork_parent_steps() {
  for (std::size_t i = 0; i < kForkSteps; ++i)
    if (const ForkHandlers* h = after_fork_step(i); h != nullptr && h->parent != nullptr)
      h->parent();
}
void run_fork_child_steps() {
  fork_aware.store(0, std::memory_order_relaxed);
  for (std::size_t i = 0; i < kForkSteps; ++i)
    if (const ForkHandlers* h = after_fork_step(i); h != nullptr && h->child != nullptr) h->child();
}

}  // namespace

void at_exit(ExitStep step, void (*fn)()) noexcept {
  auto& slot = exit_steps[static_cast<std::size_t>(step)];
  if (slot.load(std::memory_order_acquire)) return;
  Step expected = nullptr;
  if (slot.compare_exchange_strong(expected, fn)) std::atexit(run_exit_steps);
}

bool exiting() noexcept {
  return exit_begun.load(std::memory_order_relaxed);
}

// ---- parking troupe's threads across fork() (ForkParking) ---------------------------------

// The threads that park, and the state of a fork that waits for them. Its lock is taken by the
// prepare handler and held across the fork, so that no thread is inside it at the fork; parked
// threads wait on `gate`, which the parent's handler moves on. A fork also waits for the threads
// that are starting (counted by ForkAwareThread, not yet members: a new thread allocates before
// its function runs) and those whose function is ending.
struct Parking {
  std::mutex m;
  std::condition_variable cv;  // forks wait on it: for the parking, or for their turn
  std::vector<ForkParking*> members;
  // A fork parks the threads (from its prepare to its parent's or child's handler): a thread
  // that starts meanwhile parks at once, and another thread's fork waits for its turn.
  bool forking = false;
  int owed = 0;  // asked, and not parked or ended yet
  std::atomic<std::uint32_t> gate{0};

  // m held: `t` has parked, if it was asked to (false if not: the fork went on without it).
  bool count_parked(ForkParking& t) noexcept {
    if (!std::exchange(t.asked_, false)) return false;
    if (--owed == 0) cv.notify_all();
    return true;
  }

  // m held: every member asked has parked or ended, and no counted thread is starting or ending.
  bool all_parked() const noexcept {
    return owed == 0 &&
           fork_aware.load(std::memory_order_acquire) <= static_cast<int>(members.size());
  }

  static void prepare() noexcept {
    auto& p = global<Parking>();
    std::unique_lock lock(p.m);
    const auto self = std::this_thread::get_id();
    // Another thread's fork parks them now (glibc 2.36 lets go of its fork lock between
    // handlers, and the wait below lets go of m): this one begins once that fork is done, else
    // the two would count each other's asks, and one would fork while the threads run. A
    // member that forks (a link's thread, in a handler) while another fork asks it to park
    // holds nothing of troupe's here, as a parked thread: it counts as parked, whenever the
    // ask comes (a fork that asks tells the waiters below), so that the other fork does not
    // wait out kForkParkWait for it.
    p.cv.wait(lock, [&] {
      if (!p.forking) return true;
      for (ForkParking* t : p.members)
        if (t->thread_ == self) (void)p.count_parked(*t);
      return false;
    });
    p.forking = true;
    p.owed = 0;
    for (ForkParking* t : p.members) {
      if (t->thread_ == self) continue;
      t->asked_ = true;
      ++p.owed;
      try {
        t->ask_();
      } catch (...) {
        // Not asked (no memory for the request): the fork goes on without it.
        t->asked_ = false;
        --p.owed;
      }
    }
    p.cv.notify_all();  // a member waiting for its own fork's turn (above) counts as parked
    // A thread that does not park in time (inside a handler that blocks) is left running, as
    // any thread of the user's is.
    if (!p.cv.wait_for(lock, kForkParkWait, [&] { return p.all_parked(); }))
      forks_unparked.fetch_add(1, std::memory_order_relaxed);
    (void)lock.release();  // held across the fork; both handlers below unlock it
  }
  static void open_gate(Parking& p) noexcept {
    for (ForkParking* t : p.members) t->asked_ = false;
    p.forking = false;
    p.owed = 0;
    p.gate.fetch_add(1, std::memory_order_release);
  }
  static void parent() noexcept {
    auto& p = global<Parking>();
    open_gate(p);
    p.cv.notify_all();  // a fork that waits for this one's end (prepare)
    p.m.unlock();
    p.gate.notify_all();
  }
  static void child() noexcept {
    // The parked threads are the parent's: none of them exists here.
    auto& p = global<Parking>();
    open_gate(p);
    p.members.clear();
    // Made anew: nobody may be inside it here (every notify is made under the lock the fork
    // held), but the waits of the parent's threads are counted in it.
    new (&p.cv) std::condition_variable();
    p.m.unlock();
  }
};

// The fork step `parking`, registered when the first such thread is made (ForkAwareThread,
// before it starts).
namespace {
constexpr ForkHandlers kParkingHandlers{&Parking::prepare, &Parking::parent, &Parking::child};
void install_parking() noexcept {
  static const bool installed = [] {
    (void)global<Parking>();
    at_fork(ForkStep::parking, kParkingHandlers);
    return true;
  }();
  (void)installed;
}
}  // namespace

ForkParking::ForkParking(std::function<void()> ask)
    : ask_(std::move(ask)), thread_(std::this_thread::get_id()) {
  install_parking();
  auto& p = global<Parking>();
  bool now;
  {
    std::scoped_lock lock(p.m);
    p.members.push_back(this);
    // A fork waits (for this thread too, while it started): it parks here, holding nothing.
    now = asked_ = p.forking;
    if (now) ++p.owed;
    // Under the lock, as every notify of it: the fork that waits on it takes the lock before it
    // goes on, so no thread is inside the condition variable's own lock at the fork.
    p.cv.notify_all();
  }
  if (now) park();
}

ForkParking::~ForkParking() {
  auto& p = global<Parking>();
  std::scoped_lock lock(p.m);
  (void)p.count_parked(*this);  // ended counts as parked
  std::erase(p.members, this);
  p.cv.notify_all();
}

void ForkParking::park() noexcept {
  auto& p = global<Parking>();
  std::uint32_t seen;
  {
    std::scoped_lock lock(p.m);
    seen = p.gate.load(std::memory_order_acquire);
    if (!p.count_parked(*this)) return;
  }
  // The gate moves on under the lock the fork holds, so it cannot have moved before `seen`.
  while (p.gate.load(std::memory_order_acquire) == seen) p.gate.wait(seen);
}

int forks_without_parking() noexcept {
  return forks_unparked.load(std::memory_order_relaxed);
}

int fork_aware_threads() noexcept {
  return fork_aware.load(std::memory_order_acquire);
}
ForkAwareThread::ForkAwareThread() noexcept {
  (void)process_id();  // installs the fork handler, which zeroes the count in a child
  install_parking();
  fork_aware.fetch_add(1, std::memory_order_acq_rel);
}
ForkAwareThread::~ForkAwareThread() {
  if (!counted_) return;
  fork_aware.fetch_sub(1, std::memory_order_acq_rel);
  // A fork may wait for this thread to end (Parking::all_parked): told under the lock, so that
  // it cannot miss it between its look and its wait.
  auto& p = global<Parking>();
  std::scoped_lock lock(p.m);
  p.cv.notify_all();
}

void at_fork(ForkStep step, const ForkHandlers& handlers) noexcept {
  const ForkHandlers* expected = nullptr;
  fork_steps[static_cast<std::size_t>(step)].compare_exchange_strong(expected, &handlers,
                                                                     std::memory_order_acq_rel);
  if (!fork_installed.exchange(true))
    ::pthread_atfork(run_fork_prepare_steps, run_fork_parent_steps, run_fork_child_steps);
}

namespace {
constexpr ForkHandlers kPidHandlers{.child = &refresh_pid};
}  // namespace

pid_t process_id() noexcept {
  static const bool installed = [] {
    refresh_pid();
    at_fork(ForkStep::process_id, kPidHandlers);
    return true;
  }();
  (void)installed;
  return cached_pid.load(std::memory_order_relaxed);
}

}  // namespace troupe::internal::runtime
