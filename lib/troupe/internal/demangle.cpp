#include "troupe/internal/demangle.hpp"

#include <cxxabi.h>

#include <cstdlib>

namespace troupe::internal {

std::string demangle(const char* mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : mangled;
  std::free(d);
  return out;
}

std::string current_exception_type() {
  const std::type_info* t = abi::__cxa_current_exception_type();
  return t ? demangle(t->name()) : "unknown";
}

std::string describe(const std::exception_ptr& e) {
  if (!e) return "no exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return demangle(typeid(x)) + ": " + x.what();
  } catch (...) {
    return current_exception_type();
  }
}

}  // namespace troupe::internal
