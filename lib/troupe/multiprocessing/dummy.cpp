#include "troupe/multiprocessing/dummy.hpp"

#include <algorithm>
#include <mutex>

#include "troupe/internal/runtime.hpp"

namespace troupe::multiprocessing::dummy {

namespace detail {

struct ProcessState {
  std::function<void()> body;
  std::atomic<int> exitcode{kRunning};
  std::atomic<bool> started{false};
  std::uint64_t starter = 0;  // the ident of the thread that started it
  static constexpr int kRunning = -1'000'000;
  // Last: destroyed first, which waits for a running (non-daemon) thread.
  std::unique_ptr<troupe::threading::Thread> thread;
};

namespace {
struct Registry {
  std::mutex m;
  std::vector<std::shared_ptr<ProcessState>> all;
};
Registry& registry() {
  return troupe::internal::runtime::global<Registry>();
}
}  // namespace

}  // namespace detail

Process::Process(ProcessOptions options, std::function<void()> body)
    : s_(std::make_shared<detail::ProcessState>()) {
  s_->body = std::move(body);
  // The thread's target holds the state while it runs; it lets go at the end, so a process
  // whose handles are all gone is not kept.
  std::weak_ptr<detail::ProcessState> weak = s_;
  s_->thread = std::make_unique<troupe::threading::Thread>(
      troupe::threading::Thread::Options{options.name, options.daemon}, [weak]() mutable {
        std::shared_ptr<detail::ProcessState> self = weak.lock();
        if (!self) return;
        const int code = multiprocessing::detail::run_target(current_process().name(), self->body);
        self->exitcode.store(code, std::memory_order_release);
        self.reset();
      });
}

void Process::start() {
  if (s_->started.exchange(true)) throw ProcessError("cannot start a process twice");
  s_->starter = troupe::threading::current_thread().ident().value_or(0);
  {
    auto& r = detail::registry();
    std::lock_guard lock(r.m);
    r.all.push_back(s_);
  }
  s_->thread->start();
}

void Process::join(Timeout timeout) const {
  if (!s_->started.load()) throw ProcessError("can only join a started process");
  s_->thread->join(timeout);
}

bool Process::is_alive() const {
  return s_->started.load() && s_->thread->is_alive();
}

std::optional<int> Process::exitcode() const {
  const int c = s_->exitcode.load(std::memory_order_acquire);
  if (c == detail::ProcessState::kRunning || s_->thread->is_alive()) return std::nullopt;
  return c;
}

std::string Process::name() const {
  return s_->thread->name();
}

void Process::set_name(std::string name) {
  s_->thread->set_name(std::move(name));
}

bool Process::daemon() const {
  return s_->thread->daemon();
}

void Process::set_daemon(bool daemon) {
  s_->thread->set_daemon(daemon);
}

std::optional<std::uint64_t> Process::ident() const {
  return s_->thread->ident();
}

std::vector<Process> active_children() {
  const auto me = troupe::threading::current_thread().ident().value_or(0);
  auto& r = detail::registry();
  std::vector<std::shared_ptr<detail::ProcessState>> mine;
  {
    std::lock_guard lock(r.m);
    // Forget the ended ones (Python's active_children prunes too).
    std::erase_if(r.all, [](const auto& s) { return !s->thread->is_alive(); });
    for (const auto& s : r.all)
      if (s->starter == me) mine.push_back(s);
  }
  std::vector<Process> out;
  for (auto& s : mine) out.push_back(Process(std::move(s)));
  return out;
}

}  // namespace troupe::multiprocessing::dummy
