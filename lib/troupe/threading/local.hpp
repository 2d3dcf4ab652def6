// troupe/threading/local.hpp — threading.local.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <utility>

namespace troupe::threading {

namespace detail {
/// The per-object store behind local<T>: one value per thread, created on first use in that
/// thread and destroyed when the thread exits or the local is destroyed, whichever is first.
class LocalCore : public std::enable_shared_from_this<LocalCore> {
public:
  using Factory = std::function<std::shared_ptr<void>()>;
  explicit LocalCore(Factory f) : factory_(std::move(f)), id_(next_id()) {}
  /// The calling thread's value, created by the factory on first use.
  void* get();
  /// Called at thread exit for the values that thread created.
  void drop(std::uint64_t thread_key) noexcept;
  ~LocalCore();

private:
  static std::uint64_t next_id() noexcept;
  Factory factory_;
  std::uint64_t id_;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, std::shared_ptr<void>> values_;  // thread key → value
};
}  // namespace detail

/// Python: `threading.local` — per-instance, per-thread values. Each thread that touches a
/// `local<T>` sees its own `T`, made on first use by the initializer (default construction
/// when none is given: Python's `__init__` runs once per thread the same way).
///
///     threading::local<Connection> conn{[] { return Connection(open()); }};
///     conn->send(...);   // this thread's connection
template <class T>
class local {
public:
  local() requires std::is_default_constructible_v<T> : local([] { return T(); }) {}
  template <class Init>
  requires std::is_invocable_r_v<T, Init&>
  explicit local(Init init)
      : core_(std::make_shared<detail::LocalCore>(
            [init = std::move(init)]() mutable -> std::shared_ptr<void> {
              return std::make_shared<T>(init());
            })) {}
  local(const local&) = delete;
  local& operator=(const local&) = delete;

  /// This thread's value.
  T& get() { return *static_cast<T*>(core_->get()); }
  T& operator*() { return get(); }
  T* operator->() { return &get(); }

private:
  std::shared_ptr<detail::LocalCore> core_;
};

}  // namespace troupe::threading
