// troupe/multiprocessing/managers/pool_proxy.hpp — Python's managed Pool: `manager.Pool(4)`
// returns a PoolProxy to a multiprocessing.Pool whose worker processes are children of the
// manager's server, shared by every client of that manager.
//
//   int square(int x) { return x * x; }
//   TROUPE_ENTRY(square);
//   …
//   auto pool = manager.Pool(4);
//   int y = pool.apply(square, 7);                          // 49
//   auto r = pool.map_async(square, std::vector{1, 2, 3});  // AsyncResultProxy<std::vector<int>>
//   for (int v : pool.imap(square, std::views::iota(0, 5))) …
//
// As with a Pool, a task is a function registered with TROUPE_ENTRY and its arguments by their
// codecs; the function runs in the server's workers, so it must be linked into the server's
// program (a server started with BaseManager::start() is this program). The server never
// decodes a task: the arguments are encoded here, the results decoded here, against the
// function's own types. A map is cut into chunks here, as Python's (default chunksize: len /
// (4 × the pool's processes), rounded up).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/bind_executor.hpp>

#include "troupe/codec.hpp"
#include "troupe/concurrent/futures/process.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/logger.hpp"
#include "troupe/multiprocessing/managers/detail/proxy_args.hpp"
#include "troupe/multiprocessing/managers/proxy.hpp"
#include "troupe/multiprocessing/pool.hpp"
#include "troupe/timeout.hpp"

namespace troupe::multiprocessing::managers {

namespace detail {

/// A managed pool's encoded results as the server returns them: one call's (an apply) or each
/// chunk's, in order (a map), decoded here against the function's result type.
struct PoolParts {
  std::vector<std::vector<std::byte>> parts;
  bool chunked = false;
};

/// An apply's result (`chunked` false) as R, or a map's (R a std::vector) from its chunks.
template <class R>
R decode_pool_parts(PoolParts&& p) {
  if (!p.chunked) {
    if (p.parts.size() != 1) throw ValueError("a managed Pool sent no result");
    return troupe::from_bytes<R>(p.parts.front());
  }
  if constexpr (requires(R r, R more) { r.insert(r.end(), more.begin(), more.end()); }) {
    R all;
    for (auto& part : p.parts) {
      R chunk = troupe::from_bytes<R>(part);
      all.insert(all.end(), std::make_move_iterator(chunk.begin()),
                 std::make_move_iterator(chunk.end()));
    }
    return all;
  } else {
    throw TypeError("a managed Pool sent a map's chunks where one result (" +
                    Codec<R>::signature() + ") was expected");
  }
}

/// The encoded chunks of a map of `fn` over `items` (each a BatchItem of fn's arguments).
template <class Item>
std::vector<std::vector<std::byte>> pool_chunks(std::vector<Item>& items, std::size_t chunk) {
  std::vector<std::vector<std::byte>> out;
  for (std::size_t at = 0; at < items.size(); at += chunk) {
    const std::size_t n = std::min(chunk, items.size() - at);
    std::vector<Item> part(
        std::make_move_iterator(items.begin() + static_cast<std::ptrdiff_t>(at)),
        std::make_move_iterator(items.begin() + static_cast<std::ptrdiff_t>(at + n)));
    out.push_back(troupe::to_bytes(part));
  }
  return out;
}

/// Whether an AsyncResultProxy's callbacks have run in this process (its copies here share it).
class CallbacksRan {
public:
  void set() {
    {
      std::scoped_lock lock(m_);
      ran_ = true;
    }
    cv_.notify_all();
  }
  bool is_set() const {
    std::scoped_lock lock(m_);
    return ran_;
  }
  /// Waits until set, or until `deadline` (none: for as long as it takes).
  void wait(std::optional<std::chrono::steady_clock::time_point> deadline) const {
    std::unique_lock lock(m_);
    if (deadline)
      cv_.wait_until(lock, *deadline, [&] { return ran_; });
    else
      cv_.wait(lock, [&] { return ran_; });
  }

private:
  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  bool ran_ = false;
};

}  // namespace detail

/// Python's `AsyncResult` proxy (typeid "AsyncResult"): what PoolProxy's apply_async,
/// map_async and starmap_async return. `R` is the call's result (a map's: std::vector of the
/// function's results; void: get() returns nothing).
template <class R>
class AsyncResultProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "AsyncResultProxy"; }
  AsyncResultProxy() = default;
  explicit AsyncResultProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  using Value = concurrent::futures::detail::MapValue<R>;

  /// Python: `get(timeout=None)`: the result, or the task's exception rethrown (its class
  /// rebuilt, naming the worker). @throws multiprocessing::TimeoutError if not ready in time.
  /// With callbacks (PoolProxy::apply_async's), returns once they have run, as Python's.
  R get(const Timeout& timeout = {}) const {
    const auto deadline = timeout.deadline();
    std::exception_ptr error;
    std::optional<Value> v;
    try {
      v.emplace(detail::decode_pool_parts<Value>(
          _callmethod<detail::PoolParts>("get", detail::seconds_arg(timeout))));
    } catch (const TimeoutError&) {
      throw;
    } catch (...) {
      error = std::current_exception();  // the task's: the error callback runs first
    }
    if (ran_) ran_->wait(deadline);
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<R>) return R(std::move(*v));
  }
  /// Python: `wait(timeout=None)` (with callbacks: until they have run, or the timeout).
  void wait(const Timeout& timeout = {}) const {
    const auto deadline = timeout.deadline();
    _callmethod("wait", detail::seconds_arg(timeout));
    if (ran_) ran_->wait(deadline);
  }
  /// Python: `ready()` (with callbacks: once they have run).
  bool ready() const { return _callmethod<bool>("ready") && (!ran_ || ran_->is_set()); }

  /// Runs `callbacks` in this process once the result is ready: `callback` with the result, or
  /// `error_callback` with the task's exception (or the error that ended the wait: the server
  /// gone), on the thread of this process's link to the manager, which reads its replies: as
  /// Python says of a Pool's result thread, they should return at once, or every call to that
  /// manager waits behind them (a blocking call to that manager from a callback throws
  /// RuntimeError: it would wait for itself). An exception a callback throws is logged. get(),
  /// wait() and ready() of this proxy and its copies in this process then wait for them. What
  /// PoolProxy's apply_async, map_async and starmap_async do with their AsyncCallbacks. Python runs
  /// a managed Pool's callbacks in the server's process, where the pool is: a C++ function cannot
  /// travel, so they run where they were given.
  void _run_callbacks(AsyncCallbacks<Value> callbacks) {
    if (!callbacks.callback && !callbacks.error_callback) return;
    ran_ = std::make_shared<detail::CallbacksRan>();
    async_callmethod<detail::PoolParts>(
        "get", std::tuple{detail::seconds_arg(Timeout{})},
        boost::asio::bind_executor(
            _link()->executor(), [keep = BaseProxy(*this), ran = ran_, cb = std::move(callbacks)](
                                     std::exception_ptr e, detail::PoolParts parts) mutable {
              try {
                if (!e) {
                  std::optional<Value> v;
                  try {
                    v.emplace(detail::decode_pool_parts<Value>(std::move(parts)));
                  } catch (...) {
                    e = std::current_exception();
                  }
                  if (v && cb.callback) cb.callback(*v);
                }
                if (e && cb.error_callback) cb.error_callback(e);
              } catch (const std::exception& x) {
                get_logger().warning(std::string("a managed Pool's callback raised: ") + x.what());
              } catch (...) {
                get_logger().warning("a managed Pool's callback raised");
              }
              ran->set();
            }));
  }
  /// Python: `successful()`. @throws ValueError if not ready.
  bool successful() const { return _callmethod<bool>("successful"); }

private:
  std::shared_ptr<detail::CallbacksRan> ran_;  // with callbacks: whether they have run here
};

/// Python's IteratorProxy over `imap` / `imap_unordered` (typeid "Iterator"): the results one
/// by one (the server hands out a chunk at a time; copies of this proxy share what is left of
/// it). A failed chunk raises its exception once, where its results would have been; with
/// chunksize 1 the results go on after it, with a larger one they end there (as Python's).
/// Iterable with range-for.
template <class V>
class PoolIteratorProxy : public BaseProxy {
public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "PoolIteratorProxy"; }
  PoolIteratorProxy() = default;
  explicit PoolIteratorProxy(BaseProxy p)
      : BaseProxy(std::move(p)), buffer_(std::make_shared<Buffer>()) {}

  /// Python: `next(timeout=None)`: the next result; nullopt at the end (where Python raises
  /// StopIteration). @throws multiprocessing::TimeoutError if none comes in time.
  std::optional<V> next(const Timeout& timeout = {}) const {
    if (!buffer_) throw ValueError("an empty PoolIteratorProxy");
    std::scoped_lock lock(buffer_->mu);
    while (buffer_->items.empty()) {
      if (buffer_->ended) return std::nullopt;
      auto chunk =
          _callmethod<std::optional<std::vector<std::byte>>>("#NEXT", detail::seconds_arg(timeout));
      if (!chunk) {
        buffer_->ended = true;
        return std::nullopt;
      }
      for (auto& x : troupe::from_bytes<std::vector<V>>(*chunk))
        buffer_->items.push_back(std::move(x));
    }
    V v = std::move(buffer_->items.front());
    buffer_->items.pop_front();
    return v;
  }

  class iterator {
  public:
    using iterator_category = std::input_iterator_tag;
    using value_type = V;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(const PoolIteratorProxy* it) : it_(it) { ++*this; }
    const V& operator*() const { return *v_; }
    iterator& operator++() {
      v_ = it_->next();
      if (!v_) it_ = nullptr;
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(const iterator& o) const noexcept { return it_ == o.it_; }

  private:
    const PoolIteratorProxy* it_ = nullptr;
    std::optional<V> v_;
  };
  iterator begin() const { return iterator(this); }
  iterator end() const { return {}; }

private:
  struct Buffer {
    std::mutex mu;
    std::deque<V> items;
    bool ended = false;
  };
  std::shared_ptr<Buffer> buffer_;
};

/// Python's `PoolProxy` (typeid "Pool"): Pool's API, run by the manager's pool. Functions are
/// plain functions registered with TROUPE_ENTRY (lambdas cannot travel).
class PoolProxy : public BaseProxy {
  template <class R>
  using Value = concurrent::futures::detail::MapValue<R>;

public:
  /// Its name in Codec signatures and decoding errors (the Codec of a built-in proxy).
  static std::string _codec_signature() { return "PoolProxy"; }
  PoolProxy() = default;
  explicit PoolProxy(BaseProxy p) : BaseProxy(std::move(p)) {}

  /// Python: `apply(func, args)`: runs in a worker; its result, or its exception rethrown.
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) R apply(R (*fn)(P...), A&&... args)
  const {
    auto v = detail::decode_pool_parts<Value<R>>(_callmethod<detail::PoolParts>(
        "apply", name(fn, "apply"), encode<P...>(std::forward<A>(args)...)));
    if constexpr (!std::is_void_v<R>) return R(std::move(v));
  }
  /// Python: `apply_async(func, args)`. @throws ValueError "Pool not running" after close().
  template <class R, class... P, class... A>
  requires(sizeof...(P) == sizeof...(A)) AsyncResultProxy<R> apply_async(R (*fn)(P...), A&&... args)
  const {
    return _callmethod<AsyncResultProxy<R>>("apply_async", name(fn, "apply_async"),
                                            encode<P...>(std::forward<A>(args)...));
  }
  /// Python: `apply_async(func, args, callback=None, error_callback=None)`: the callbacks run in
  /// this process (AsyncResultProxy::_run_callbacks).
  template <class R, class... P, class... A>
  requires(sizeof...(P) ==
           sizeof...(A)) AsyncResultProxy<R> apply_async(AsyncCallbacks<Value<R>> callbacks,
                                                         R (*fn)(P...), A&&... args)
  const {
    auto r = apply_async(fn, std::forward<A>(args)...);
    r._run_callbacks(std::move(callbacks));
    return r;
  }

  /// Python: `map(func, iterable, chunksize=None)`: every result, in order.
  template <class R, class P, class Range>
  std::vector<Value<R>> map(R (*fn)(P), Range&& iterable,
                            std::optional<std::size_t> chunksize = std::nullopt) const {
    return detail::decode_pool_parts<std::vector<Value<R>>>(
        map_call<detail::PoolParts>("map", fn, items<P>(iterable), chunksize));
  }
  /// Python: `map_async(func, iterable, chunksize=None, callback=None, error_callback=None)`
  /// (the callbacks run in this process: AsyncResultProxy::_run_callbacks).
  template <class R, class P, class Range>
  AsyncResultProxy<std::vector<Value<R>>> map_async(
      R (*fn)(P), Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt,
      AsyncCallbacks<std::vector<Value<R>>> callbacks = {}) const {
    auto r = map_call<AsyncResultProxy<std::vector<Value<R>>>>("map_async", fn, items<P>(iterable),
                                                               chunksize);
    r._run_callbacks(std::move(callbacks));
    return r;
  }
  /// Python: `starmap(func, iterable, chunksize=None)`: each element a tuple of arguments.
  template <class R, class... P, class Range>
  std::vector<Value<R>> starmap(R (*fn)(P...), Range&& iterable,
                                std::optional<std::size_t> chunksize = std::nullopt) const {
    return detail::decode_pool_parts<std::vector<Value<R>>>(
        map_call<detail::PoolParts>("starmap", fn, star_items<P...>(iterable), chunksize));
  }
  /// Python: `starmap_async(func, iterable, chunksize=None, callback=None,
  /// error_callback=None)` (the callbacks run in this process).
  template <class R, class... P, class Range>
  AsyncResultProxy<std::vector<Value<R>>> starmap_async(
      R (*fn)(P...), Range&& iterable, std::optional<std::size_t> chunksize = std::nullopt,
      AsyncCallbacks<std::vector<Value<R>>> callbacks = {}) const {
    auto r = map_call<AsyncResultProxy<std::vector<Value<R>>>>(
        "starmap_async", fn, star_items<P...>(iterable), chunksize);
    r._run_callbacks(std::move(callbacks));
    return r;
  }
  /// Python: `imap(func, iterable, chunksize=1)`: the results in order, as they come. The
  /// iterable is read whole here (Python's proxy pickles it whole too).
  template <class R, class P, class Range>
  PoolIteratorProxy<Value<R>> imap(R (*fn)(P), Range&& iterable, std::size_t chunksize = 1) const {
    return map_call<PoolIteratorProxy<Value<R>>>("imap", fn, items<P>(iterable), chunksize);
  }
  /// Python: `imap_unordered(func, iterable, chunksize=1)`: the results as they complete.
  template <class R, class P, class Range>
  PoolIteratorProxy<Value<R>> imap_unordered(R (*fn)(P), Range&& iterable,
                                             std::size_t chunksize = 1) const {
    return map_call<PoolIteratorProxy<Value<R>>>("imap_unordered", fn, items<P>(iterable),
                                                 chunksize);
  }

  /// Python: `close()`: no more tasks; the workers end once the submitted ones are done.
  void close() const { _callmethod("close"); }
  /// Python: `terminate()`: stops the workers at once; tasks not done fail with ProcessError.
  void terminate() const { _callmethod("terminate"); }
  /// Python: `join()`: waits for the workers to end (holding no thread of the server).
  /// @throws ValueError "Pool is still running" before close() or terminate().
  void join() const { _callmethod("join"); }
  /// The pool's number of worker processes (Python: `len(pool._pool)`).
  int processes() const { return static_cast<int>(_callmethod<std::int64_t>("#PROCESSES")); }

private:
  template <class F>
  static std::string name(F fn, const char* what) {
    return concurrent::futures::detail::entry_name(reinterpret_cast<const void*>(fn),
                                                   (std::string("Pool.") + what).c_str());
  }
  template <class... P, class... A>
  static std::vector<std::byte> encode(A&&... args) {
    return troupe::to_bytes(std::tuple<std::decay_t<P>...>(std::forward<A>(args)...));
  }
  template <class P, class Range>
  static std::vector<std::decay_t<P>> items(Range&& iterable) {
    std::vector<std::decay_t<P>> out;
    for (auto&& x : iterable) out.emplace_back(x);
    return out;
  }
  template <class... P, class Range>
  static auto star_items(Range&& iterable) {
    using Item = troupe::detail::BatchItem<std::tuple<std::decay_t<P>...>>;
    std::vector<Item> out;
    for (auto&& t : iterable) out.push_back(std::apply([](auto&&... a) { return Item(a...); }, t));
    return out;
  }
  template <class Out, class F, class Item>
  Out map_call(const char* method, F fn, std::vector<Item> items,
               std::optional<std::size_t> chunksize) const {
    // Python's default (len / (4 × processes), rounded up) needs the pool's size: one call.
    const std::size_t chunk =
        chunksize || items.empty()
            ? multiprocessing::detail::chunk_size(chunksize.value_or(1), items.size(), 1)
            : multiprocessing::detail::chunk_size(std::nullopt, items.size(), processes());
    // imap's chunk size goes too: with chunks of several elements its results end at a failed
    // chunk (as Python's, whose imap flattens the chunks with a generator).
    if (std::string_view(method).starts_with("imap"))
      return _callmethod<Out>(method, name(fn, method), detail::pool_chunks(items, chunk),
                              static_cast<std::int64_t>(chunk));
    return _callmethod<Out>(method, name(fn, method), detail::pool_chunks(items, chunk));
  }
};

}  // namespace troupe::multiprocessing::managers

template <>
struct troupe::Codec<troupe::multiprocessing::managers::detail::PoolParts> {
  using Parts = troupe::multiprocessing::managers::detail::PoolParts;
  static std::string signature() { return "PoolParts"; }
  static void encode(const Parts& p, proto::Value::Builder v) {
    auto data = [](const std::vector<std::byte>& b) {
      return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(b.data()), b.size());
    };
    if (!p.chunked && p.parts.size() == 1) return v.setData(data(p.parts.front()));
    auto l = v.initList(static_cast<unsigned>(p.parts.size()));
    for (unsigned i = 0; i < p.parts.size(); ++i) l[i].setData(data(p.parts[i]));
  }
  static Parts decode(proto::Value::Reader v) {
    auto bytes = [](capnp::Data::Reader d) {
      const auto* b = reinterpret_cast<const std::byte*>(d.begin());
      return std::vector<std::byte>(b, b + d.size());
    };
    Parts p;
    if (v.isData()) {
      p.parts.push_back(bytes(v.getData()));
      return p;
    }
    if (!v.isList())
      throw ValueError("a managed Pool's result is neither bytes nor a list of them");
    p.chunked = true;
    for (auto x : v.getList()) {
      if (!x.isData()) throw ValueError("a managed Pool's result chunk is not bytes");
      p.parts.push_back(bytes(x.getData()));
    }
    return p;
  }
};
