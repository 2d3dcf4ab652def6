// troupe/entry.hpp — TROUPE_ENTRY and the registry of entry points: the functions a process can
// name to another copy of the same program (a spawned or forkserver child, a pool's worker, a
// remote node), since C++ cannot send code. Python pickles a module-level function by name; here
// the name is registered once, and the arguments and results travel through their codecs.
//
//   int square(int x) { return x * x; }
//   TROUPE_ENTRY(square);                      // at namespace scope, after the function
//
//   const troupe::EntryPoint* e = troupe::find_entry("square");
//   e->call(troupe::to_bytes(std::tuple<int>{7}));  // the encoded 49
//
// Layer 1: used by multiprocessing (spawn, forkserver, pools), concurrent.futures
// (ProcessPoolExecutor) and, later, managers, actors and the cluster.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"

namespace troupe {

/// A function registered with TROUPE_ENTRY: what a spawned child runs, and what a process
/// pool's worker calls for a task.
struct EntryPoint {
  /// The name given to TROUPE_ENTRY, as written (`work`, `ns::work`): the same in every copy
  /// of the program built from the same sources.
  const char* name;
  /// The function's address in this process (what find_entry(const void*) looks up).
  const void* function;
  /// Decodes the arguments (a tuple of the parameters, by their codecs) and calls.
  void (*invoke)(std::span<const std::byte> arguments);
  /// Decodes the arguments, calls, and returns the encoded result (std::monostate for void);
  /// null when the result type has no codec.
  std::vector<std::byte> (*call)(std::span<const std::byte> arguments);
  /// The same over a batch: a std::vector of detail::BatchItem in, a std::vector of results
  /// out (a pool's map chunk: one message each way). Null when `call` is.
  std::vector<std::byte> (*call_batch)(std::span<const std::byte> batch);
};

/// Adds `entry` to this process's registry (TROUPE_ENTRY calls it during static
/// initialisation). Returns true. Thread-safe; a pointer find_entry returned stays valid.
bool register_entry(const EntryPoint& entry);

/// The entry point registered for `function` (its address), or null.
const EntryPoint* find_entry(const void* function) noexcept;
/// The entry point registered under `name`, or null.
const EntryPoint* find_entry(std::string_view name) noexcept;
/// The same for a C string (a string literal would otherwise convert to `const void*`).
inline const EntryPoint* find_entry(const char* name) noexcept {
  return find_entry(std::string_view(name));
}

namespace detail {

/// Set on a spawned (or forkserver) child's main thread while its start arguments are decoded,
/// and only then: what a proxy among them may take from its Ref (its manager's key), no other
/// message may give.
bool& decoding_start_arguments() noexcept;

template <class F>
struct FunctionTraits;
template <class R, class... P>
struct FunctionTraits<R (*)(P...)> {
  using Arguments = std::tuple<std::decay_t<P>...>;
  using Result = R;
};

// The arguments are passed as lvalues, as under fork: a parameter that cannot be copied (a
// Connection) is taken by reference.
template <auto Fn>
void invoke_entry(std::span<const std::byte> bytes) {
  auto arguments = troupe::from_bytes<typename FunctionTraits<decltype(Fn)>::Arguments>(bytes);
  decoding_start_arguments() = false;  // the target's own messages are not start arguments
  std::apply([](auto&... a) { Fn(a...); }, arguments);
}

// For process pools: the call's result, encoded.
template <auto Fn>
std::vector<std::byte> call_entry(std::span<const std::byte> bytes) {
  using Traits = FunctionTraits<decltype(Fn)>;
  auto arguments = troupe::from_bytes<typename Traits::Arguments>(bytes);
  if constexpr (std::is_void_v<typename Traits::Result>) {
    std::apply([](auto&... a) { Fn(a...); }, arguments);
    return troupe::to_bytes(std::monostate{});
  } else {
    return troupe::to_bytes(std::apply([](auto&... a) { return Fn(a...); }, arguments));
  }
}

/// One element of a batch of calls: the argument itself for a one-parameter function (so a
/// batch of numbers travels as a packed array), else the tuple of arguments.
template <class Arguments>
struct BatchItemOf {
  using type = Arguments;
};
template <class P>
struct BatchItemOf<std::tuple<P>> {
  using type = P;
};
template <class Arguments>
using BatchItem = typename BatchItemOf<Arguments>::type;

template <auto Fn>
std::vector<std::byte> call_entry_batch(std::span<const std::byte> bytes) {
  using Traits = FunctionTraits<decltype(Fn)>;
  using R = typename Traits::Result;
  using Item = BatchItem<typename Traits::Arguments>;
  auto batch = troupe::from_bytes<std::vector<Item>>(bytes);
  std::vector<std::conditional_t<std::is_void_v<R>, std::monostate, std::decay_t<R>>> results;
  results.reserve(batch.size());
  for (auto& item : batch) {
    auto call = [&](auto&... a) -> decltype(auto) { return Fn(a...); };
    if constexpr (std::is_same_v<Item, typename Traits::Arguments>) {
      if constexpr (std::is_void_v<R>) {
        std::apply(call, item);
        results.emplace_back();
      } else {
        results.push_back(std::apply(call, item));
      }
    } else if constexpr (std::is_void_v<R>) {
      call(item);
      results.emplace_back();
    } else {
      results.push_back(call(item));
    }
  }
  return troupe::to_bytes(results);
}

using EntryCaller = std::vector<std::byte> (*)(std::span<const std::byte>);
template <auto Fn, bool Batch>
constexpr EntryCaller entry_caller() {
  using R = typename FunctionTraits<decltype(Fn)>::Result;
  if constexpr (std::is_void_v<R> || Encodable<std::decay_t<R>>) {
    if constexpr (Batch)
      return &call_entry_batch<Fn>;
    else
      return &call_entry<Fn>;
  } else {
    return nullptr;
  }
}

}  // namespace detail
}  // namespace troupe

/// Registers a function as an entry point that another copy of this program can run (a
/// process started by spawn or the forkserver, a process pool's worker): C++ cannot send code,
/// so the other side finds the function by name. Once, at namespace scope, after the function:
/// `void work(int n, std::string s); TROUPE_ENTRY(work);`. Its parameters must have codecs (a
/// compile error otherwise); a result without one leaves EntryPoint::call null.
#define TROUPE_ENTRY(fn) TROUPE_ENTRY_AT_(fn, __COUNTER__)
#define TROUPE_ENTRY_AT_(fn, n) TROUPE_ENTRY_AT2_(fn, n)
#define TROUPE_ENTRY_AT2_(fn, n)                                                      \
  [[maybe_unused]] static const bool troupe_entry_##n = ::troupe::register_entry(     \
      {#fn, reinterpret_cast<const void*>(&fn), &::troupe::detail::invoke_entry<&fn>, \
       ::troupe::detail::entry_caller<&fn, false>(), ::troupe::detail::entry_caller<&fn, true>()})
