// The typecodes of Python's array module (and the two ctypes codes multiprocessing.Value adds):
// what each holds, and a value converted to it with Python's errors. One table for the managed
// Array and Value (containers.cpp) and the pickle reader's array.array (pickle.cpp). Not API.
#pragma once

#include "troupe/multiprocessing/managers/detail/item.hpp"

namespace troupe::multiprocessing::managers::detail {

struct Typecode {
  char code;
  enum { signed_int, unsigned_int, real, character, byte_char, boolean } kind;
  unsigned bytes;
  const char* what;  // Python's name in its overflow messages
};

/// Typecode `c` of Python's array module (b B u w h H i I l L q Q f d), with ctypes_too also
/// 'c' and '?'; null for any other.
const Typecode* find_typecode(char c, bool ctypes_too = false) noexcept;

/// `x` converted to what an array of typecode `t` stores (a float for f and d, an int in the
/// typecode's range, one character for u and w). @throws Python's TypeError or OverflowError.
Item convert_to_typecode(const Typecode& t, const Item& x);

/// The machine format (0-21, as CPython's arraymodule.c numbers them) of `t`'s items on this
/// machine (x86-64, AArch64: little-endian, long of 64 bits, wchar_t of 32). Array typecodes only.
int native_format(const Typecode& t) noexcept;

}  // namespace troupe::multiprocessing::managers::detail
