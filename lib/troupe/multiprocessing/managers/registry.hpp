// troupe/multiprocessing/managers/registry.hpp — what a manager can host: Python's
// `BaseManager.register(typeid, callable, proxytype, exposed, method_to_typeid, create_method)`,
// for C++ classes whose methods are listed once with TROUPE_EXPOSE.
//
//   class Maths {
//   public:
//     int add(int a, int b) { return a + b; }
//     double mul(double a, double b) { return a * b; }
//   };
//   TROUPE_EXPOSE(Maths, add, mul);          // at namespace scope, in Maths's namespace
//
//   struct MathsManager : mp::managers::Manager<MathsManager> { using Manager::Manager; };
//   // once per process, before start() (and in every process that serves: see below)
//   MathsManager::register_<Maths>("Maths");
//
// Where registrations live. Python registers on the manager class; here each manager class has
// a Registry of its own (Manager<Self>::registry(); BaseManager::registry() for BaseManager),
// which also sees BaseManager's registrations. A registry belongs to one process: a server
// started by fork sees what was registered before start(); a server started by spawn or the
// forkserver runs the program afresh, so it sees only registrations made during static
// initialisation (a namespace-scope `static const bool r = (MathsManager::register_<…>(…),
// true);`) or by the initializer given to start() — as Python requires module-level register()
// calls for spawn.
//
// Nothing received names code to run: a create names a registered typeid, a call a method in
// the TROUPE_EXPOSE list, and nothing else is looked up.
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeindex>
#include <vector>

#include <boost/preprocessor/seq/enum.hpp>
#include <boost/preprocessor/seq/transform.hpp>
#include <boost/preprocessor/variadic/to_seq.hpp>

#include "troupe/multiprocessing/managers/detail/hosted.hpp"
#include "troupe/multiprocessing/managers/detail/methods.hpp"

namespace troupe::multiprocessing::managers {

/// Python: register()'s keyword arguments beyond typeid and callable.
struct RegisterOptions {
  /// Python's `exposed`: only these methods may be called (default: the TROUPE_EXPOSE list but
  /// the names that start with '_', as Python's public methods). The methods of
  /// method_to_typeid are exposed too, as in Python.
  std::optional<std::vector<std::string>> exposed;
  /// Python's `method_to_typeid`: these methods return a proxy to a new object of the typeid,
  /// which must be registered (with no callable if it is only ever made so).
  std::map<std::string, std::string, std::less<>> method_to_typeid;
  /// Python's `create_method`: whether BaseManager::create accepts this typeid.
  bool create_method = true;
  /// Calls on one object run one at a time (the class need not be thread-safe). Not in Python,
  /// whose managed objects are called from the server's threads concurrently, as here by default.
  bool serialized = false;
  /// The methods return at once (microseconds) and never block. Their calls then run inside the
  /// handler that read them, the reply written before that thread reads on. By default a
  /// registered class's call runs on that thread too, but after the read handler and watched: if
  /// it holds the thread (sleeps, waits) for 2 to 4 ms, a helper thread serves the thread's other
  /// connections, so a blocking method holds up nobody for long, as in Python, where each
  /// connection's calls run on a thread of its own. A quick method that blocks holds up every
  /// client served by its thread. Not in Python.
  bool quick = false;
};

/// The typeids one manager class can host. Thread-safe.
class Registry {
public:
  /// A registry whose lookups fall back to `parent` (BaseManager's), for a manager class.
  /// Registries are found by name in this process (a spawned server's program looks its
  /// manager class's registry up so): make one per manager class, for the process's lifetime.
  explicit Registry(std::string name, const Registry* parent = nullptr);
  /// The registry named `name` in this process, or null.
  static const Registry* named(std::string_view name);
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  /// The manager class's name ("BaseManager", "SyncManager"): the server's name in Welcome.
  const std::string& name() const noexcept { return name_; }

  /// Python: `register(typeid, callable=None, …)` for a class T, made with T's default
  /// constructor from a create with no arguments.
  template <class T>
  void register_(std::string typeid_, RegisterOptions options = {}) {
    static_assert(std::is_default_constructible_v<T>,
                  "register_<T>(typeid): T has no default constructor; pass a factory");
    register_(
        std::move(typeid_), [] { return std::make_shared<T>(); }, std::move(options));
  }

  /// Python: `register(typeid, callable, …)`: `callable(args…)` makes the object, from the
  /// create's arguments (decoded by their codecs). It returns a T (moved into the host) or a
  /// std::shared_ptr<T> (shared: a callable that returns the same object each time hosts it
  /// under one id, as Python's `lambda: queue`). T needs TROUPE_EXPOSE.
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, RegisterOptions>) void register_(
      std::string typeid_, F callable, RegisterOptions options = {});

  /// Python: `register(typeid, None, …)`: a typeid no client creates, for the objects that a
  /// method_to_typeid method of another typeid returns (of C++ class T).
  template <class T>
  void register_result(std::string typeid_, RegisterOptions options = {});

  /// Adds (or replaces: Python's register overwrites) a typeid, a built-in's or a made one.
  void add(detail::TypeEntry entry);
  /// The typeid's entry, here or in the parent registry; null if none.
  std::shared_ptr<const detail::TypeEntry> find(std::string_view typeid_) const;
  /// Every typeid, here and in the parent (Python's `_registry` keys).
  std::vector<std::string> typeids() const;

private:
  void add_shared(std::shared_ptr<const detail::TypeEntry> entry);
  template <class T>
  detail::TypeEntry class_entry(std::string typeid_, RegisterOptions&& options);

  std::string name_;
  const Registry* parent_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const detail::TypeEntry>, std::less<>> entries_;
};

// ---- implementation ----------------------------------------------------------------------

template <class T>
detail::TypeEntry Registry::class_entry(std::string typeid_, RegisterOptions&& options) {
  static_assert(detail::HasExposed<T>,
                "troupe managers: register_ needs the class's methods listed once with "
                "TROUPE_EXPOSE(Class, method, ...) at namespace scope");
  detail::TypeEntry e;
  e.typeid_ = std::move(typeid_);
  e.exposed = std::move(options.exposed);
  e.method_to_typeid = std::move(options.method_to_typeid);
  // As CPython's Server.create: without `exposed`, the public methods (a name that starts with
  // '_' is not exposed; the whole list, when none does, stays implicit: no check per call); and
  // the methods of method_to_typeid are exposed too.
  if (!e.exposed) {
    const auto& names = detail::exposed_names<T>();
    if (std::any_of(names.begin(), names.end(),
                    [](const std::string& n) { return n.starts_with('_'); })) {
      e.exposed.emplace();
      for (const auto& n : names)
        if (!n.starts_with('_')) e.exposed->push_back(n);
    }
  }
  if (e.exposed)
    for (const auto& [m, t] : e.method_to_typeid)
      if (std::find(e.exposed->begin(), e.exposed->end(), m) == e.exposed->end())
        e.exposed->push_back(m);
  e.create_method = options.create_method;
  e.serialized = options.serialized;
  e.quick = options.quick;
  e.fingerprint = detail::table_fingerprint<T>();
  e.cxx_type = std::type_index(typeid(T));
  return e;
}

template <class T>
void Registry::register_result(std::string typeid_, RegisterOptions options) {
  auto e =
      std::make_shared<detail::TypeEntry>(class_entry<T>(std::move(typeid_), std::move(options)));
  // The entry's functions find the entry through `holder`, weakly: the registry owns it (a
  // strong one would be a cycle, reported as a leak once the registry is destroyed at exit).
  auto holder = std::make_shared<std::weak_ptr<const detail::TypeEntry>>();
  e->adopt = [this, holder](std::shared_ptr<void> object) -> std::shared_ptr<detail::HostedObject> {
    auto h = std::make_shared<detail::HostedClass<T>>(std::static_pointer_cast<T>(object), this);
    h->entry_ = holder->lock();
    return h;
  };
  *holder = e;
  add_shared(std::move(e));
}

template <class F>
requires(!std::is_same_v<std::remove_cvref_t<F>, RegisterOptions>) void Registry::register_(
    std::string typeid_, F callable, RegisterOptions options) {
  using Tr = detail::CallableTraits<std::decay_t<F>>;
  using R = std::remove_cvref_t<typename Tr::Result>;
  using U = std::conditional_t<std::is_void_v<typename detail::SharedPointee<R>::type>, R,
                               typename detail::SharedPointee<R>::type>;
  auto made =
      std::make_shared<detail::TypeEntry>(class_entry<U>(std::move(typeid_), std::move(options)));
  auto holder = std::make_shared<std::weak_ptr<const detail::TypeEntry>>();
  made->adopt = [this,
                 holder](std::shared_ptr<void> object) -> std::shared_ptr<detail::HostedObject> {
    auto h = std::make_shared<detail::HostedClass<U>>(std::static_pointer_cast<U>(object), this);
    h->entry_ = holder->lock();
    return h;
  };
  made->create =
      [this, holder, f = std::move(callable)](
          const detail::CallInfo& call) mutable -> std::shared_ptr<detail::HostedObject> {
    auto args = detail::decode_args<typename Tr::Params>(call, codec_detail::class_name<U>());
    std::shared_ptr<U> object;
    if constexpr (std::is_same_v<R, U>) {
      object = std::make_shared<U>(std::apply(f, std::move(args)));
    } else {
      object = std::apply(f, std::move(args));
      if (!object)
        throw ValueError("the callable registered for typeid '" + std::string(call.typeid_) +
                         "' returned a null pointer");
    }
    auto h = std::make_shared<detail::HostedClass<U>>(std::move(object), this);
    h->entry_ = holder->lock();
    return h;
  };
  *holder = made;
  add_shared(std::move(made));
}

}  // namespace troupe::multiprocessing::managers

/// Lists the methods of `Class` that a manager exposes (Python exposes every public method; C++
/// cannot list them, so they are named once here). At namespace scope, in Class's namespace,
/// after the class: `TROUPE_EXPOSE(Maths, add, mul);`. Overloaded names cannot be listed (take
/// one name per method). A typed proxy's call<&Maths::add>(…) is checked against this list at
/// compile time.
#define TROUPE_EXPOSE(Class, ...)                                                                 \
  [[maybe_unused]] inline auto troupe_exposed_methods(const Class*) {                             \
    return ::troupe::multiprocessing::managers::detail::Exposed<                                  \
        Class, BOOST_PP_SEQ_ENUM(BOOST_PP_SEQ_TRANSFORM(TROUPE_EXPOSE_POINTER_, Class,            \
                                                        BOOST_PP_VARIADIC_TO_SEQ(__VA_ARGS__)))>{ \
        #__VA_ARGS__};                                                                            \
  }                                                                                               \
  static_assert(true)
#define TROUPE_EXPOSE_POINTER_(s, Class, m) &Class::m
