#include "troupe/multiprocessing/context.hpp"

#include <algorithm>
#include <mutex>

#include "troupe/errors.hpp"
#include "troupe/internal/process_internal.hpp"
#include "troupe/internal/runtime.hpp"

namespace troupe::multiprocessing {

namespace {
struct StartMethods {
  std::mutex m;
  std::optional<std::string> method;
  std::string executable = "/proc/self/exe";
};
StartMethods& start_methods() {
  return troupe::internal::runtime::global<StartMethods>();
}
}  // namespace

std::string detail::spawn_executable() {
  auto& g = start_methods();
  std::lock_guard lock(g.m);
  return g.executable;
}

void detail::check_start_method(const std::string& method) {
  const auto all = get_all_start_methods();
  if (std::find(all.begin(), all.end(), method) == all.end())
    throw ValueError("cannot find context for '" + method + "'");
}

std::vector<std::string> get_all_start_methods() {
  return {"fork", "spawn", "forkserver"};
}

std::optional<std::string> get_start_method(bool allow_none) {
  auto& g = start_methods();
  std::lock_guard lock(g.m);
  if (!g.method) {
    if (allow_none) return std::nullopt;
    g.method = get_all_start_methods().front();
  }
  return g.method;
}

void set_start_method(const std::string& method, bool force) {
  detail::check_start_method(method);
  auto& g = start_methods();
  std::lock_guard lock(g.m);
  if (g.method && !force) throw RuntimeError("context has already been set");
  g.method = method;
}

void set_executable(std::string path) {
  auto& g = start_methods();
  std::lock_guard lock(g.m);
  g.executable = std::move(path);
}

Context get_context(std::optional<std::string> method) {
  if (!method) return Context(*get_start_method());
  detail::check_start_method(*method);
  return Context(*method);
}

}  // namespace troupe::multiprocessing
