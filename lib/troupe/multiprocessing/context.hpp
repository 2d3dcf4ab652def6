// troupe/multiprocessing/context.hpp — multiprocessing's start methods and contexts (Python's
// multiprocessing.context): get_context, get_start_method, set_start_method,
// get_all_start_methods, set_executable. A Context makes Processes that use its start method.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "troupe/multiprocessing/process.hpp"

namespace troupe::multiprocessing {

/// Python: `multiprocessing.get_all_start_methods()`: the default first.
std::vector<std::string> get_all_start_methods();
/// Python: `get_start_method(allow_none=False)`: the method a Process uses when none is given
/// (fixed to the default by this call if not yet set, unless allow_none).
std::optional<std::string> get_start_method(bool allow_none = false);
/// Python: `set_start_method(method, force=False)`. @throws RuntimeError "context has already
/// been set" unless force; ValueError "cannot find context for 'x'".
void set_start_method(const std::string& method, bool force = false);
/// Python: `multiprocessing.set_executable(path)`: the program spawn runs (default: this one,
/// /proc/self/exe).
void set_executable(std::string path);

/// Python: a context from `multiprocessing.get_context(method)`: its Process uses that method.
class Context {
public:
  explicit Context(std::string method) : method_(std::move(method)) {}
  const std::string& get_start_method() const noexcept { return method_; }
  /// Python: `ctx.Process(target=f, args=(…))`.
  template <class F, class... A>
  requires detail::Target<F, A...> multiprocessing::Process Process(F&& f, A&&... a)
  const { return Process(ProcessOptions{}, std::forward<F>(f), std::forward<A>(a)...); }
  template <class... A>
  multiprocessing::Process Process(ProcessOptions options, A&&... a) const {
    options.start_method = method_;
    return multiprocessing::Process(std::move(options), std::forward<A>(a)...);
  }

private:
  std::string method_;
};
/// @throws ValueError "cannot find context for 'x'". No method: the current default's.
Context get_context(std::optional<std::string> method = std::nullopt);

}  // namespace troupe::multiprocessing
