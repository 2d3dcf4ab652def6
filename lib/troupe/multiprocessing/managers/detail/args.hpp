// troupe/multiprocessing/managers/detail/args.hpp — reading a hosted built-in's call arguments
// as Python's, by position, with Python's defaults and error texts (builtins.cpp and the managed
// Pool), and ending its call from a waiting object's handler. Not API.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "troupe/errors.hpp"
#include "troupe/multiprocessing/managers/detail/hosted.hpp"
#include "troupe/multiprocessing/managers/detail/item.hpp"
#include "troupe/multiprocessing/managers/detail/waits.hpp"

namespace troupe::multiprocessing::managers::detail {

// The call's arguments as Items (bounded by to_item's limits).
inline std::vector<Item> items_of(const CallInfo& call) {
  if (call.items) return *call.items;
  std::vector<Item> out;
  out.reserve(call.args.size());
  for (auto v : call.args) out.push_back(to_item(v));
  return out;
}

inline std::string where(const CallInfo& call) {
  return std::string(call.typeid_) + "." + std::string(call.method) + "()";
}

// At most `most` arguments (Python's "takes from 0 to N positional arguments").
inline void at_most(const CallInfo& call, const std::vector<Item>& a, std::size_t most) {
  if (a.size() > most)
    throw TypeError(where(call) + " takes at most " + std::to_string(most) + " argument" +
                    (most == 1 ? "" : "s") + " (" + std::to_string(a.size()) + " given)");
}

// A C++ std::optional arrives as a list of 0 or 1 element; Python's None as none.
inline const Item* unwrap_optional(const Item& x) {
  if (x.is_none()) return nullptr;
  if (x.kind() == Kind::sequence && x.elements().size() <= 1)
    return x.elements().empty() ? nullptr : &x.elements().front();
  return &x;
}

// A bool argument: absent, omitted or an empty optional is `dflt`; None is False (Python's
// `if not block`, and the C parsing of Lock.acquire's `blocking` as a truth value).
inline bool flag(const CallInfo& call, const std::vector<Item>& a, std::size_t i, bool dflt,
                 const char* name) {
  if (i >= a.size() || a[i].is_omitted()) return dflt;
  if (a[i].is_none()) return false;
  const Item* x = unwrap_optional(a[i]);
  if (!x) return dflt;
  if (!x->is_integral())
    throw TypeError(where(call) + ": '" + name + "' must be a bool, not " +
                    std::string(type_name(*x)));
  return x->kind() == Kind::boolean ? x->as_bool() : x->as_int() != 0;
}

inline double number(const Item& x) {
  switch (x.kind()) {
    case Kind::floating: return x.as_float();
    case Kind::uinteger: return static_cast<double>(x.as_uint());
    default: return static_cast<double>(x.as_int());
  }
}

// A timeout in seconds (float or int), or None: forever.
inline WaitTimeout timeout_of(const CallInfo& call, const std::vector<Item>& a, std::size_t i) {
  if (i >= a.size()) return std::nullopt;
  const Item* x = unwrap_optional(a[i]);
  if (!x) return std::nullopt;
  if (!x->is_number() || x->kind() == Kind::boolean)
    throw TypeError(where(call) + ": 'timeout' must be a number of seconds or None, not " +
                    std::string(type_name(*x)));
  const double s = number(*x);
  if (std::isnan(s)) throw ValueError(where(call) + ": 'timeout' is NaN");
  // 100 years or more is forever (waits.hpp); keep the arithmetic far from overflow.
  if (s >= 3.2e9) return std::chrono::hours(24 * 365 * 101);
  if (s <= -3.2e9) return std::chrono::nanoseconds(-1'000'000'000);
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

// A CPython client's Lock.acquire timeout as CPython's C code takes it: converted to 64-bit
// nanoseconds first, so that one beyond threading.TIMEOUT_MAX either way is OverflowError
// (before the other checks), where timeout_of reads it as forever. troupe's own clients keep
// troupe's rule (threading/thread.hpp: a longer timeout is forever): their Timeout sends
// "forever" as INT64_MAX nanoseconds.
inline void lock_timeout_in_range(const CallInfo& call, const std::vector<Item>& a, std::size_t i) {
  if (!call.items || i >= a.size()) return;  // items: CPython's dialect only
  const Item* x = unwrap_optional(a[i]);
  if (!x || !x->is_number() || x->kind() == Kind::boolean) return;
  const double s = number(*x);
  if (s >= 9223372036.854775807 || s <= -9223372036.854775808)
    throw OverflowError("timestamp too large to convert to C _PyTime_t");
}

inline std::int64_t integer(const CallInfo& call, const std::vector<Item>& a, std::size_t i,
                            std::int64_t dflt, const char* name) {
  if (i >= a.size()) return dflt;
  const Item* x = unwrap_optional(a[i]);
  if (!x) return dflt;
  if (x->kind() != Kind::integer && x->kind() != Kind::boolean)
    throw TypeError(where(call) + ": '" + name + "' must be an integer, not " +
                    std::string(type_name(*x)));
  return x->as_int();
}

inline void complete_item(const CompletionPtr& done, const Item& x) {
  done->complete_item(x);
}

// The handlers of the waiting objects: an exception, or a result.
inline Done finish(CompletionPtr done) {
  return [done = std::move(done)](std::exception_ptr e) {
    if (e) return done->fail(e);
    done->done();
  };
}
inline DoneBool finish_bool(CompletionPtr done) {
  return [done = std::move(done)](std::exception_ptr e, bool b) {
    if (e) return done->fail(e);
    done->complete(b);
  };
}

}  // namespace troupe::multiprocessing::managers::detail
