#include "troupe/threading/local.hpp"

#include <atomic>
#include <vector>

namespace troupe::threading::detail {
namespace {

std::atomic<std::uint64_t> g_ids{0};
std::atomic<std::uint64_t> g_thread_keys{0};

// What one thread holds: a fast lookup by core id, and who to tell when it exits.
struct ThreadSlots {
  std::uint64_t key = ++g_thread_keys;
  std::unordered_map<std::uint64_t, void*> cache;  // core id → value
  std::vector<std::weak_ptr<LocalCore>> cores;     // cores holding a value of ours
  ~ThreadSlots() {
    for (auto& w : cores)
      if (auto c = w.lock()) c->drop(key);
  }
};
thread_local ThreadSlots tls_slots;

}  // namespace

std::uint64_t LocalCore::next_id() noexcept {
  return ++g_ids;
}

void* LocalCore::get() {
  auto& slots = tls_slots;
  if (auto it = slots.cache.find(id_); it != slots.cache.end()) return it->second;
  // First use in this thread: make the value outside the lock (the initializer may be slow or
  // touch other locals), then publish it.
  std::shared_ptr<void> value = factory_();
  void* raw = value.get();
  {
    std::scoped_lock lk(mu_);
    values_[slots.key] = std::move(value);
  }
  slots.cache.emplace(id_, raw);
  slots.cores.push_back(weak_from_this());
  return raw;
}

void LocalCore::drop(std::uint64_t thread_key) noexcept {
  std::shared_ptr<void> doomed;
  {
    std::scoped_lock lk(mu_);
    auto it = values_.find(thread_key);
    if (it == values_.end()) return;
    doomed = std::move(it->second);
    values_.erase(it);
  }
}

LocalCore::~LocalCore() = default;  // values_ goes with it; stale cache ids are never reused

}  // namespace troupe::threading::detail
