// troupe/internal/runtime.hpp — troupe's process-wide state in one place: the objects that live
// as long as the process, the one exit handler and the order of its steps, the one set of fork
// handlers and their order. Layer 1; .cpp-only (never included by a public header, never
// installed). The layers above register their steps here; this file names them all.
//
// Process-wide objects (each built on first use by runtime::global<T>() and never destroyed):
//
//   entry points (TROUPE_ENTRY)                                   entry.cpp
//   threads alive, the main thread, excepthook, stack_size        threading/thread.cpp
//   this process, its parent, its children, the Process counter   multiprocessing/process.cpp
//   the start method and the executable spawn runs                multiprocessing/context.cpp
//   multiprocessing.dummy's processes                             multiprocessing/dummy.cpp
//   ThreadPoolExecutors alive                                     concurrent/futures/thread.cpp
//   process pools alive (Pool, ProcessPoolExecutor) multiprocessing/detail/worker_pool.cpp the
//   forkserver this process uses                              multiprocessing/forkserver.cpp
//
// At exit (return from main, std::exit), one handler runs the steps below, each once, in this
// order, which is CPython's at interpreter exit: threading._shutdown first calls the functions
// registered with threading._register_atexit (concurrent.futures' _python_exit), then joins the
// non-daemon threads; then the atexit module runs multiprocessing.util._exit_function, which
// runs the finalizers of priority >= 0 (a Pool's), terminates the daemonic children and joins
// every child, then the remaining finalizers (temporary directories).
//
//   1. thread_pools   every ThreadPoolExecutor stops taking work, finishes its queue, joins its
//                     workers; submit() raises "cannot schedule new futures after interpreter
//                     shutdown" from here on (Python's _python_exit)
//   2. threads        every non-daemon Thread (and multiprocessing.dummy Process) is joined
//   3. process_pools  every Pool / ProcessPoolExecutor engine shuts down (its calls finish) and
//                     its manager thread is joined. Python runs ProcessPoolExecutor's exit with
//                     the thread pools, before step 2; troupe's process pools share one engine
//                     with Pool and stop after the threads, as Pool's finalizers do, so that a
//                     thread still using a pool at exit finishes its work
//   4. children       daemonic children are terminated, then every child is joined
//   5. forkserver     the forkserver's socket directory is removed if the server died without
//                     removing it (the server removes it itself when the process tree ends)
//
// The handler is registered (std::atexit) when each step is first needed, so it runs when the
// latest of those registrations is reached: before the destructors of static objects built
// before that point, and before atexit handlers registered earlier. Child processes leave with
// _exit and run none of this; a process target runs step 4 itself (Python's _bootstrap).
//
// Around fork() (one pthread_atfork, installed by the first step registered) the steps below
// run as though each had been installed with pthread_atfork in this order: before the fork,
// the prepare handlers from the last step to the first; after it, the parent's or the child's
// handlers from the first to the last. A step with a prepare handler runs its parent's or
// child's only after a fork whose prepare pass ran it (each forking thread notes its own pass:
// glibc 2.36 lets go of its fork lock around each handler, so two threads' forks may overlap);
// a step without one runs them after any fork.
//
//   0. process_id        child: process_id()'s cache is this process's pid
//   1. threads           child: the thread registry's lock is new; the threads that did not
//                        survive the fork are finished; the forking thread is the main thread
//                        (CPython's threading._after_fork)
//   2. thread_identity   child: the (pid, tid) that process-shared locks record as owner is
//                        this process's
//   3. manager_links     prepare: the table of manager links is locked (no thread of the parent
//                        is inside it at the fork); parent: unlocked; child: the parent's links
//                        are closed and forgotten, and the table unlocked
//   4. parking           prepare: troupe's threads that a fork leaves behind park (ForkParking,
//                        below), first of all, so that none waits for a lock a later prepare
//                        holds; parent: they go on; child: they are forgotten
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace troupe::internal::runtime {

/// The steps of troupe's exit handler, in the order they run (see the top of this file).
enum class ExitStep { thread_pools, threads, process_pools, children, forkserver };

/// Makes `fn` the exit step `step`; the first call for a step registers the exit handler.
/// Later calls for the same step are ignored (cheap: call it where the step becomes needed).
/// Thread-safe.
void at_exit(ExitStep step, void (*fn)()) noexcept;

/// True once the exit handler has begun (from step 1 on).
bool exiting() noexcept;

/// The steps run around fork(), in this order (see the top of this file).
enum class ForkStep { process_id, threads, thread_identity, manager_links, parking };

/// What a fork step does before fork() (`prepare`) and after it in the parent and in the child;
/// each may be null.
struct ForkHandlers {
  void (*prepare)() = nullptr;
  void (*parent)() = nullptr;
  void (*child)() = nullptr;
};

/// Makes `handlers` (static storage: kept by address) the fork step `step`; the first call
/// installs the fork handler. Later calls for the same step are ignored. Thread-safe; may be
/// called during static initialisation.
void at_fork(ForkStep step, const ForkHandlers& handlers) noexcept;

/// Threads troupe runs that a fork() leaves safely behind (the child never uses what they
/// hold: a manager link's thread, which the fork handlers quiesce and the child forgets), so
/// that Process::start with fork does not count them as the user's threads. A ForkAwareThread
/// made by the thread that starts such a thread, and moved into its function (captured by the
/// lambda), counts it from before it exists until its function has returned.
int fork_aware_threads() noexcept;
class ForkAwareThread {
public:
  ForkAwareThread() noexcept;
  ForkAwareThread(ForkAwareThread&& other) noexcept
      : counted_(std::exchange(other.counted_, false)) {}
  ~ForkAwareThread();
  ForkAwareThread(const ForkAwareThread&) = delete;
  ForkAwareThread& operator=(const ForkAwareThread&) = delete;
  ForkAwareThread& operator=(ForkAwareThread&&) = delete;

private:
  bool counted_ = true;
};

/// A thread of troupe's that a fork leaves behind, parked across each fork(): made on the thread
/// itself (a manager link's thread, a Python peer's worker), it is asked before the fork (in the
/// prepare handler, on the forking thread) to call park(), and the fork waits, for
/// kForkParkWait at most, until every such thread has, or has ended. A parked thread holds no
/// lock, so the child finds none held for good: not troupe's, not the C++ runtime's, and not
/// the allocator's (glibc's malloc locks itself across fork(), a sanitizer's allocator does not:
/// a link's thread inside malloc at the fork left an ASan child waiting for ever in its first
/// allocation on a new thread). A parked thread goes on once the fork is done (in the parent).
/// The forking thread itself is never asked (a fork from a handler on a link's thread). The fork
/// also waits for the ForkAwareThreads that are starting (a thread that registers while a fork
/// waits parks at once) or whose function is ending. Two threads' forks take turns: the second
/// begins its parking once the first fork is done (a member that forks while another fork waits
/// for it counts as parked meanwhile).
class ForkParking {
public:
  /// `ask` runs on the forking thread before the fork: it must make this thread call park()
  /// soon (post it to the thread's queue), and must not block.
  explicit ForkParking(std::function<void()> ask);
  ~ForkParking();
  ForkParking(const ForkParking&) = delete;
  ForkParking& operator=(const ForkParking&) = delete;

  /// On this object's thread, when asked: returns once the fork is done (at once if no fork is
  /// waiting for it).
  void park() noexcept;

private:
  friend struct Parking;
  std::function<void()> ask_;
  std::thread::id thread_;
  bool asked_ = false;  // under the parking's lock
};

/// How long a fork waits for troupe's threads to park (ForkParking) before it goes on without.
inline constexpr std::chrono::milliseconds kForkParkWait{1000};

/// How many forks of this process went on after kForkParkWait without every such thread parked
/// (for tests and diagnostics).
int forks_without_parking() noexcept;

/// This process's id, cached (glibc's getpid() is a system call): for checks on hot paths
/// that an object is used in the process that made it. Refreshed first in a forked child.
pid_t process_id() noexcept;

/// The one T of this process: built on first use (thread-safe) and never destroyed, so that
/// exit steps, fork handlers and daemon threads may use it while static destructors run.
template <class T>
T& global() {
  static T* const instance = new T();
  return *instance;
}

/// The objects of one kind that are alive, held weakly, for an exit step to reach them all.
template <class T>
class Alive {
public:
  void add(const std::shared_ptr<T>& object) {
    std::scoped_lock lock(mutex_);
    std::erase_if(all_, [](const std::weak_ptr<T>& w) { return w.expired(); });
    all_.push_back(object);
  }
  /// Every one still alive; forgotten here.
  std::vector<std::shared_ptr<T>> take_all() {
    std::vector<std::shared_ptr<T>> alive;
    std::scoped_lock lock(mutex_);
    for (auto& w : all_)
      if (auto p = w.lock()) alive.push_back(std::move(p));
    all_.clear();
    return alive;
  }

private:
  std::mutex mutex_;
  std::vector<std::weak_ptr<T>> all_;
};

}  // namespace troupe::internal::runtime
