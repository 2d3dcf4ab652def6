// troupe/internal/demangle.hpp — C++ type names as people read them, for messages and reports.
// Not installed.
#pragma once

#include <exception>
#include <string>
#include <typeinfo>

namespace troupe::internal {

/// `typeid(x).name()` demangled ("std::out_of_range"); the mangled name if that fails.
std::string demangle(const char* mangled);
inline std::string demangle(const std::type_info& t) {
  return demangle(t.name());
}

/// The type of the exception being handled, demangled ("unknown" outside a handler).
std::string current_exception_type();

/// "TYPE: what()" for a std::exception, "TYPE" for anything else thrown.
std::string describe(const std::exception_ptr& e);

}  // namespace troupe::internal
