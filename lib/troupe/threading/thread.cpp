#include "troupe/threading/thread.hpp"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <typeinfo>

#include "troupe/errors.hpp"
#include "troupe/internal/demangle.hpp"
#include "troupe/internal/runtime.hpp"

namespace troupe::threading {
namespace detail {

struct ThreadState {
  std::mutex mu;  // guards name, obj, standin, handle, joinable
  std::string name;
  bool daemon = false;
  std::function<void()> target;
  Thread* obj = nullptr;            // what current_thread() returns in this thread
  std::unique_ptr<Thread> standin;  // owns the stand-in after the user's object is gone
  std::atomic<int> phase{0};        // 0 new, 1 running, 2 finished
  std::atomic<std::uint64_t> ident{0};
  std::atomic<std::int64_t> native_id{0};
  pthread_t handle{};
  bool joinable = false;  // started, not yet joined or detached
  bool adopted = false;   // main thread or a dummy: troupe did not start it
  bool plain = false;     // the object is exactly a Thread: run() is target(), no need to touch it
  Event started;
  Event done;

  // Reaps the OS thread once it has finished (done is set).
  void join_os() {
    std::unique_lock lk(mu);
    if (!joinable) return;
    joinable = false;
    pthread_t h = handle;
    lk.unlock();
    pthread_join(h, nullptr);
  }
};

}  // namespace detail

namespace {

using detail::ThreadState;

struct Registry {
  std::mutex mu;
  std::vector<std::shared_ptr<ThreadState>> alive;  // started, not finished (main, dummies too)
  std::shared_ptr<ThreadState> main;
  std::uint64_t counter = 0;
  std::atomic<std::size_t> stack_size{0};
  std::atomic<int> running{0};  // threads troupe started that have not finished (_thread._count)
  std::mutex hook_mu;
  ExceptHook hook;

  Registry();

  std::uint64_t next_number() {
    std::scoped_lock lk(mu);
    return ++counter;
  }
  void add(const std::shared_ptr<ThreadState>& s) {
    std::scoped_lock lk(mu);
    alive.push_back(s);
  }
  void remove(const ThreadState* s) {
    std::scoped_lock lk(mu);
    alive.erase(
        std::remove_if(alive.begin(), alive.end(), [s](const auto& p) { return p.get() == s; }),
        alive.end());
  }
};

// Never destroyed: daemon threads may still use it while static destructors run at exit.
Registry& reg() {
  return internal::runtime::global<Registry>();
}

thread_local ThreadState* tls_state = nullptr;
thread_local bool tls_counted = false;  // this thread is in Registry::running

std::int64_t gettid_now() noexcept {
  return static_cast<std::int64_t>(::syscall(SYS_gettid));
}
std::uint64_t ident_now() noexcept {
  return static_cast<std::uint64_t>(pthread_self());
}

// Joins every non-daemon thread still running, as Python does before the interpreter exits.
void join_at_exit() {
  auto& r = reg();
  for (;;) {
    std::shared_ptr<ThreadState> next;
    {
      std::scoped_lock lk(r.mu);
      for (auto& s : r.alive) {
        if (!s->daemon && !s->adopted && s.get() != tls_state) {
          next = s;
          break;
        }
      }
    }
    if (!next) return;
    next->done.wait();
    next->join_os();
    r.remove(next.get());
  }
}

void after_fork_in_child() {
  // Only the forking thread survives: the others are finished, and cannot be joined.
  auto& r = reg();
  r.running.store(tls_counted ? 1 : 0);
  if (tls_state) tls_state->native_id.store(gettid_now());  // the survivor's id in the child
  std::vector<std::shared_ptr<ThreadState>> keep;
  for (auto& s : r.alive) {
    if (s.get() == tls_state) {
      keep.push_back(s);
      continue;
    }
    s->joinable = false;
    s->phase.store(2);
    s->done.set();
  }
  r.alive = std::move(keep);
  if (tls_state && r.main.get() != tls_state) {
    for (auto& s : r.alive)
      if (s.get() == tls_state) r.main = s;
  }
}

Registry::Registry() {
  main = std::make_shared<ThreadState>();
  main->name = "MainThread";
  main->adopted = true;
  main->phase.store(1);
  main->ident.store(ident_now());
  main->native_id.store(gettid_now());
  main->started.set();
  alive.push_back(main);
  static constexpr internal::runtime::ForkHandlers kHandlers{.child = [] {
    // The registry mutex may have been held by a thread that does not exist in the child.
    new (&reg().mu) std::mutex();
    after_fork_in_child();
  }};
  internal::runtime::at_fork(internal::runtime::ForkStep::threads, kHandlers);
}

// Built at load time, in the thread that loads troupe: the main thread.
struct MainInit {
  MainInit() {
    tls_state = reg().main.get();
    (void)main_thread();
  }
} main_init;

// The stand-in holds the state that holds the stand-in: break that cycle when the thread ends.
void drop_standin(ThreadState& s) {
  std::unique_ptr<Thread> standin;
  {
    std::scoped_lock lk(s.mu);
    if (!s.standin) return;
    s.obj = nullptr;
    standin = std::move(s.standin);
  }
}

// Owns the stand-in Thread of a thread troupe did not start, until that thread exits.
struct DummyHolder {
  std::shared_ptr<ThreadState> state;
  ~DummyHolder() {
    if (!state) return;
    state->phase.store(2);
    reg().remove(state.get());
    state->done.set();
    tls_state = nullptr;
    drop_standin(*state);
  }
};
thread_local DummyHolder tls_dummy;

// pthread_create with the stack_size() setting, counted in Registry::running until the entry
// calls finish_counted(). Returns pthread_create's error number.
int create_os_thread(pthread_t* handle, void* (*entry)(void*), void* arg, bool detached) {
  auto& r = reg();
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (auto size = r.stack_size.load()) pthread_attr_setstacksize(&attr, size);
  if (detached) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  r.running.fetch_add(1);
  int rc = pthread_create(handle, &attr, entry, arg);
  pthread_attr_destroy(&attr);
  if (rc != 0) r.running.fetch_sub(1);
  return rc;
}

void finish_counted() noexcept {
  reg().running.fetch_sub(1);
  tls_counted = false;
}

// Hands the exception being handled to excepthook, as escaped from `thread` (may be null).
void report_escaped(Thread* thread) {
  ExceptHookArgs args;
  args.exc_type = troupe::internal::current_exception_type();
  args.exc_value = std::current_exception();
  args.thread = thread;
  excepthook(args);
}

void* thread_entry(void* arg) {
  std::shared_ptr<ThreadState> s(std::move(*static_cast<std::shared_ptr<ThreadState>*>(arg)));
  delete static_cast<std::shared_ptr<ThreadState>*>(arg);
  tls_state = s.get();
  tls_counted = true;
  s->native_id.store(gettid_now());
  s->ident.store(ident_now());
  {
    std::string n;
    {
      std::scoped_lock lk(s->mu);
      n = s->name.substr(0, 15);
    }
    pthread_setname_np(pthread_self(), n.c_str());
  }
  s->phase.store(1);
  s->started.set();
  try {
    if (s->plain) {
      // A plain Thread's run() only calls the target, which the shared state owns: call it
      // from there, so a daemon thread never reads an object its owner may have destroyed.
      if (s->target) s->target();
    } else {
      Thread* self;
      {
        std::scoped_lock lk(s->mu);
        self = s->obj;
      }
      self->run();
    }
  } catch (...) {
    Thread* self;
    {
      std::scoped_lock lk(s->mu);
      self = s->obj;
    }
    report_escaped(self);
  }
  finish_counted();
  s->phase.store(2);
  reg().remove(s.get());
  s->done.set();
  drop_standin(*s);
  return nullptr;
}

}  // namespace

// ---- excepthook -----------------------------------------------------------------------------

void default_excepthook(const ExceptHookArgs& args) {
  std::string name = args.thread ? args.thread->name() : std::to_string(get_ident());
  std::string what;
  try {
    if (args.exc_value) std::rethrow_exception(args.exc_value);
  } catch (const SystemExit&) {
    return;  // as Python's: SystemExit is ignored silently
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "(not a std::exception)";
  }
  std::string text = "Exception in thread " + name + ":\n" + args.exc_type + ": " + what + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

ExceptHookSlot& ExceptHookSlot::operator=(ExceptHook hook) {
  auto& r = reg();
  std::scoped_lock lk(r.hook_mu);
  r.hook = std::move(hook);
  return *this;
}

ExceptHook ExceptHookSlot::get() const {
  auto& r = reg();
  std::scoped_lock lk(r.hook_mu);
  return r.hook ? r.hook : ExceptHook(default_excepthook);
}

void ExceptHookSlot::operator()(const ExceptHookArgs& args) const {
  ExceptHook hook = get();
  try {
    hook(args);
  } catch (...) {
    std::fputs("Exception in threading.excepthook:\n", stderr);
    ExceptHookArgs inner;
    inner.exc_type = troupe::internal::current_exception_type();
    inner.exc_value = std::current_exception();
    inner.thread = args.thread;
    default_excepthook(inner);
    default_excepthook(args);
  }
}

// ---- Thread ---------------------------------------------------------------------------------

Thread::Thread(Options options) : Thread(std::move(options), std::function<void()>{}) {}

Thread::Thread(Options options, std::function<void()> target)
    : state_(std::make_shared<ThreadState>()) {
  state_->target = std::move(target);
  state_->obj = this;
  state_->name =
      options.name.empty() ? "Thread-" + std::to_string(reg().next_number()) : options.name;
  state_->daemon = options.daemon ? *options.daemon : current_thread().daemon();
}

Thread::Thread(Adopt, std::shared_ptr<ThreadState> state) : state_(std::move(state)) {}

Thread::~Thread() {
  auto& s = *state_;
  if (s.adopted || s.obj != this || s.phase.load() == 0) return;
  const bool self = tls_state == &s;
  if (s.phase.load() == 2 && !self) {
    s.done.wait();
    s.join_os();
    return;
  }
  const bool detach = self || (s.daemon && (s.target || internal::runtime::exiting()));
  if (!detach) {
    s.done.wait();
    s.join_os();
    return;
  }
  // Keep a stand-in for current_thread(), and let the thread run on without this object.
  std::unique_lock lk(s.mu);
  s.standin.reset(new Thread(Adopt{}, state_));
  s.obj = s.standin.get();
  if (s.joinable) {
    s.joinable = false;
    pthread_detach(s.handle);
  }
}

void Thread::start() {
  auto& s = *state_;
  if (s.adopted || s.phase.load() != 0 || s.started.is_set())
    throw RuntimeError("threads can only be started once");
  auto& r = reg();
  internal::runtime::at_exit(internal::runtime::ExitStep::threads, join_at_exit);

  s.plain = typeid(*this) == typeid(Thread);  // read here, while the object surely lives
  auto* arg = new std::shared_ptr<ThreadState>(state_);
  r.add(state_);
  {
    std::scoped_lock lk(s.mu);
    int rc = create_os_thread(&s.handle, thread_entry, arg, false);
    if (rc != 0) {
      delete arg;
      r.remove(&s);
      throw_os_error(rc, "can't start new thread '" + s.name + "'");
    }
    s.joinable = true;
  }
  s.started.wait();
}

void Thread::run() {
  if (state_->target) state_->target();
}

void Thread::join(Timeout timeout) {
  auto& s = *state_;
  if (!s.started.is_set()) throw RuntimeError("cannot join thread before it is started");
  if (tls_state == &s) throw RuntimeError("cannot join current thread");
  if (s.adopted) {
    (void)s.done.wait(timeout);  // main thread or a dummy: wait for it to end
    return;
  }
  if (s.done.wait(timeout)) s.join_os();
}

bool Thread::is_alive() const noexcept {
  return state_->started.is_set() && state_->phase.load() == 1;
}

std::string Thread::name() const {
  std::scoped_lock lk(state_->mu);
  return state_->name;
}

void Thread::set_name(std::string name) {
  std::scoped_lock lk(state_->mu);
  state_->name = std::move(name);
  if (state_->phase.load() == 1 && tls_state == state_.get()) {
    pthread_setname_np(pthread_self(), state_->name.substr(0, 15).c_str());
  }
}

std::optional<std::uint64_t> Thread::ident() const noexcept {
  if (!state_->started.is_set()) return std::nullopt;
  return state_->ident.load();
}

std::optional<std::int64_t> Thread::native_id() const noexcept {
  if (!state_->started.is_set()) return std::nullopt;
  return state_->native_id.load();
}

bool Thread::daemon() const noexcept {
  return state_->daemon;
}

void Thread::set_daemon(bool daemon) {
  if (state_->started.is_set()) throw RuntimeError("cannot set daemon status of active thread");
  state_->daemon = daemon;
}

// ---- module functions -----------------------------------------------------------------------

Thread& current_thread() {
  if (tls_state) {
    std::scoped_lock lk(tls_state->mu);
    return *tls_state->obj;
  }
  auto& r = reg();
  auto s = std::make_shared<ThreadState>();
  s->name = "Dummy-" + std::to_string(r.next_number());
  s->daemon = true;
  s->adopted = true;
  s->ident.store(ident_now());
  s->native_id.store(gettid_now());
  s->phase.store(1);
  s->started.set();
  s->standin.reset(new Thread(Thread::Adopt{}, s));
  s->obj = s->standin.get();
  r.add(s);
  tls_state = s.get();
  tls_dummy.state = s;
  return *s->obj;
}

Thread& main_thread() {
  auto& m = *reg().main;
  std::scoped_lock lk(m.mu);
  if (!m.obj) {
    m.standin.reset(new Thread(Thread::Adopt{}, reg().main));
    m.obj = m.standin.get();
  }
  return *m.obj;
}

int active_count() {
  auto& r = reg();
  std::scoped_lock lk(r.mu);
  return static_cast<int>(r.alive.size());
}

std::vector<Thread*> enumerate() {
  (void)main_thread();  // make sure the main thread has its object
  auto& r = reg();
  std::vector<std::shared_ptr<ThreadState>> states;
  {
    std::scoped_lock lk(r.mu);
    states = r.alive;
  }
  std::vector<Thread*> out;
  for (auto& s : states) {
    std::scoped_lock lk(s->mu);
    if (s->obj) out.push_back(s->obj);
  }
  return out;
}

std::uint64_t get_ident() noexcept {
  return ident_now();
}
std::int64_t get_native_id() noexcept {
  return gettid_now();
}

std::size_t stack_size(std::optional<std::size_t> size) {
  auto& r = reg();
  if (!size) return r.stack_size.load();
  if (*size != 0 && *size < 32768)
    throw ValueError("size not valid: " + std::to_string(*size) + " bytes");
  return r.stack_size.exchange(*size);
}

// ---- _thread's launcher ---------------------------------------------------------------------

namespace {
void* unregistered_entry(void* arg) {
  std::unique_ptr<std::function<void()>> function(static_cast<std::function<void()>*>(arg));
  tls_counted = true;
  try {
    (*function)();
  } catch (const SystemExit&) {
    // Python: "SystemExit is ignored silently" (_thread.exit() raises it).
  } catch (...) {
    report_escaped(nullptr);
  }
  function.reset();  // the callable and its arguments go before the thread counts as finished
  finish_counted();
  return nullptr;
}
}  // namespace

std::uint64_t detail::start_unregistered(std::function<void()> function) {
  auto arg = std::make_unique<std::function<void()>>(std::move(function));
  pthread_t handle;
  int rc = create_os_thread(&handle, unregistered_entry, arg.get(), true);
  if (rc != 0) {
    const auto size = reg().stack_size.load();
    throw RuntimeError("can't start new thread: pthread_create: " + std::string(std::strerror(rc)) +
                       " (errno " + std::to_string(rc) + ", stack size " +
                       (size ? std::to_string(size) + " bytes" : std::string("default")) + ")");
  }
  (void)arg.release();  // the thread owns it now
  return static_cast<std::uint64_t>(handle);
}

int detail::running_count() noexcept {
  return reg().running.load();
}

// ---- Timer ----------------------------------------------------------------------------------

Timer::~Timer() {
  if (!is_alive() || current_thread().ident() == ident()) return;
  if (daemon()) cancel();
  join();
}

void Timer::run() {
  (void)finished.wait(interval_);
  if (!finished.is_set()) function_();
  finished.set();
}

}  // namespace troupe::threading
