// Registry and the texts of refused calls (registry.hpp, detail/methods.hpp).
#include "troupe/multiprocessing/managers/registry.hpp"

#include <algorithm>

#include "troupe/multiprocessing/managers/detail/not_exposed.hpp"

namespace troupe::multiprocessing::managers {

namespace {
struct Named {
  std::mutex m;
  std::map<std::string, const Registry*, std::less<>> all;
};
Named& named_registries() {
  static Named* const n = new Named();  // never destroyed: registries outlive static destructors
  return *n;
}
}  // namespace

Registry::Registry(std::string name, const Registry* parent)
    : name_(std::move(name)), parent_(parent) {
  auto& n = named_registries();
  std::scoped_lock lock(n.m);
  n.all[name_] = this;
}

const Registry* Registry::named(std::string_view name) {
  auto& n = named_registries();
  std::scoped_lock lock(n.m);
  auto it = n.all.find(name);
  return it == n.all.end() ? nullptr : it->second;
}

void Registry::add(detail::TypeEntry entry) {
  add_shared(std::make_shared<const detail::TypeEntry>(std::move(entry)));
}

void Registry::add_shared(std::shared_ptr<const detail::TypeEntry> entry) {
  if (entry->typeid_.empty()) throw ValueError("register: an empty typeid");
  if (entry->typeid_.size() > 256)
    throw ValueError("register: typeid of " + std::to_string(entry->typeid_.size()) +
                     " bytes (at most 256)");
  std::scoped_lock lock(mutex_);
  entries_[entry->typeid_] = std::move(entry);
}

std::shared_ptr<const detail::TypeEntry> Registry::find(std::string_view typeid_) const {
  {
    std::scoped_lock lock(mutex_);
    auto it = entries_.find(typeid_);
    if (it != entries_.end()) return it->second;
  }
  return parent_ ? parent_->find(typeid_) : nullptr;
}

std::vector<std::string> Registry::typeids() const {
  std::vector<std::string> out = parent_ ? parent_->typeids() : std::vector<std::string>{};
  std::scoped_lock lock(mutex_);
  for (const auto& [k, v] : entries_)
    if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

namespace detail {

std::vector<std::string> split_names(std::string_view names) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : names) {
    if (c == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else if (c != ' ' && c != '\t' && c != '\n') {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

std::string describe_object(const CallInfo& call, std::string_view cxx_type) {
  std::string s = call.object_id ? "object " + std::to_string(call.object_id) + " " : "";
  s += "(typeid '" + std::string(call.typeid_) + "'";
  if (!cxx_type.empty()) s += ", a " + std::string(cxx_type);
  return s + ")";
}

std::string argument_kinds(capnp::List<proto::Value>::Reader args) {
  std::string s = "(";
  for (unsigned i = 0; i < args.size(); ++i) {
    if (i) s += ", ";
    if (i == 16) {
      s += "...";
      break;
    }
    switch (args[i].which()) {
      case proto::Value::NONE: s += "none"; break;
      case proto::Value::BOOL: s += "bool"; break;
      case proto::Value::INT: s += "int"; break;
      case proto::Value::UINT: s += "uint"; break;
      case proto::Value::FLOAT: s += "float"; break;
      case proto::Value::TEXT: s += "text"; break;
      case proto::Value::DATA: s += "data"; break;
      case proto::Value::LIST: s += "list"; break;
      case proto::Value::ALTERNATIVE: s += "alternative"; break;
      case proto::Value::STRUCT: s += "struct"; break;
      case proto::Value::REF: s += "proxy"; break;
      default: s += "?"; break;
    }
  }
  return s + ")";
}

namespace {
std::string qualified(const CallInfo& call) {
  return std::string(call.typeid_) + "." + std::string(call.method);
}
}  // namespace

void unknown_method(const CallInfo& call, std::string_view cxx_type,
                    const std::vector<std::string>& exposed) {
  std::string list;
  for (const auto& e : exposed) list += (list.empty() ? "" : ", ") + e;
  throw NotExposed("'" + std::string(call.method) + "' is not a method of " +
                   describe_object(call, cxx_type) +
                   " (exposed: " + (list.empty() ? "none" : list) + ")");
}

namespace {
std::string arity_text(const CallInfo& call, std::string_view cxx_type, std::size_t want) {
  return qualified(call) + "() takes " + std::to_string(want) + " argument" +
         (want == 1 ? "" : "s") + " (" + std::to_string(call.args.size()) + " given), on " +
         describe_object(call, cxx_type);
}
}  // namespace

void bad_arity(const CallInfo& call, std::string_view cxx_type, std::size_t want) {
  throw TypeError(arity_text(call, cxx_type, want));
}

void no_fallback_arguments(const CallInfo& call, std::string_view cxx_type) {
  if (call.args.size() != 0) throw RemoteError("TypeError: " + arity_text(call, cxx_type, 0));
}

void bad_signature(const CallInfo& call, std::string_view cxx_type, std::string_view want) {
  throw TypeError(qualified(call) + " takes " + std::string(want) +
                  ", called with arguments of another signature " + argument_kinds(call.args) +
                  ", on " + describe_object(call, cxx_type));
}

void bad_argument(const CallInfo& call, std::string_view cxx_type, std::size_t index,
                  std::string_view want, std::string_view why) {
  throw TypeError(qualified(call) + ": argument " + std::to_string(index + 1) + " is not a " +
                  std::string(want) + " (" + std::string(why) + "), on " +
                  describe_object(call, cxx_type));
}

std::shared_ptr<HostedObject> adopt_result(const Registry& registry, std::string_view typeid_,
                                           std::type_index type, std::string_view type_name,
                                           std::shared_ptr<void> object) {
  auto entry = registry.find(typeid_);
  if (!entry)
    throw TypeError("method_to_typeid names '" + std::string(typeid_) +
                    "', which is not registered with " + registry.name());
  if (!entry->adopt || !entry->cxx_type || *entry->cxx_type != type)
    throw TypeError("method_to_typeid names '" + std::string(typeid_) +
                    "', which is not registered for a " + std::string(type_name) +
                    " (what the method returns)");
  return entry->adopt(std::move(object));
}

}  // namespace detail
}  // namespace troupe::multiprocessing::managers
