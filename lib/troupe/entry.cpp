#include "troupe/entry.hpp"

#include <deque>
#include <mutex>

#include "troupe/internal/runtime.hpp"

namespace troupe {

namespace {
// A deque: registering more (a library loaded later) never moves the ones find_entry returned.
struct Entries {
  std::mutex m;
  std::deque<EntryPoint> all;
};
Entries& entries() {
  return internal::runtime::global<Entries>();
}
}  // namespace

bool register_entry(const EntryPoint& entry) {
  auto& e = entries();
  std::lock_guard lock(e.m);
  e.all.push_back(entry);
  return true;
}

const EntryPoint* find_entry(const void* function) noexcept {
  auto& e = entries();
  std::lock_guard lock(e.m);
  for (const auto& x : e.all)
    if (x.function == function) return &x;
  return nullptr;
}

const EntryPoint* find_entry(std::string_view name) noexcept {
  auto& e = entries();
  std::lock_guard lock(e.m);
  for (const auto& x : e.all)
    if (name == x.name) return &x;
  return nullptr;
}

namespace detail {
bool& decoding_start_arguments() noexcept {
  thread_local bool decoding = false;
  return decoding;
}
}  // namespace detail

}  // namespace troupe
