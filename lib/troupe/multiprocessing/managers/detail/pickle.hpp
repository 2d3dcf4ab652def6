// troupe/multiprocessing/managers/detail/pickle.hpp — CPython's pickle, restricted to plain data:
// the first piece of the CPython manager dialect (issue 18). decode() reads pickle protocols 2
// to 5 into an Item (item.hpp), encode() writes an Item for Python to read.
//
// What decode() reads
// - None, True/False, integers that fit 64 bits (BININT, BININT1, BININT2, LONG1, LONG4: an
//   integer beyond 64 bits is a ValueError naming its size in bytes), floats (BINFLOAT), str
//   (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8), bytes (BINBYTES, SHORT_BINBYTES, BINBYTES8),
//   bytearray (BYTEARRAY8), tuple, list, dict, set and frozenset (their EMPTY_, MARK, APPEND,
//   SETITEM, ADDITEMS forms), MARK, POP, POP_MARK, DUP, the memo (BINPUT, LONG_BINPUT, MEMOIZE,
//   BINGET, LONG_BINGET), PROTO (2 to 5) and FRAME.
// - The constructors of plain data that protocols 2 to 4 send as a global and a REDUCE, each
//   turned into data without calling anything: builtins (protocol 2: __builtin__) set,
//   frozenset, bytearray, bytes and slice, and _codecs.encode(str, 'latin1') (protocol 2's
//   bytes).
// - The objects a manager sends, as Item::object (class, args, state), built by nothing: the
//   builtin exceptions (protocol 2 names their module 'exceptions'), queue.Empty (_queue) and
//   Full and ShutDown, threading.BrokenBarrierError, multiprocessing's ProcessError,
//   BufferTooShort, TimeoutError, AuthenticationError and RemoteError, and the manager's Token
//   (NEWOBJ then BUILD of its state). REDUCE or NEWOBJ of one of these classes makes one; BUILD
//   sets its state.
// - Every other global (GLOBAL, STACK_GLOBAL) is refused by name, as is every opcode that would
//   build or call an object (REDUCE or NEWOBJ of anything else, NEWOBJ_EX, INST, OBJ, BUILD of
//   anything but such an object),
//   name one (PERSID, BINPERSID, EXT1/2/4), or take an out-of-band buffer (NEXT_BUFFER,
//   READONLY_BUFFER): a ValueError naming the opcode (and the global), before anything is built
//   from it. So are protocol 0 and 1's text opcodes, which protocols 2 to 5 never send.
//
// Limits (Limits in item.hpp, plus the memo's): the values made and the nesting of the result
// (max_nodes, max_depth), the bytes of str/bytes held (max_bytes), entries in the memo
// (kMaxMemo). One budget of values and bytes for the whole pickle: a value shared through the
// memo is copied where it is used again, and a constructor's arguments (REDUCE) are copied once
// more, each counted; a value made by a constructor counts its own nesting where it is used.
// A length is checked against the bytes left before anything is allocated (a 2**40-byte string
// in a short message is an error, not an allocation). A value that contains itself is refused;
// a str must be UTF-8 as Python writes it (lone surrogates allowed).
//
// What encode() writes: protocol 4 by default (what Python 3.8 to 3.13 send), or 5 (its
// BYTEARRAY8; what 3.14 sends). A `sequence` is written as a list; a slice and a protocol-4
// bytearray as the global and REDUCE Python itself writes; an object as its class and REDUCE (a
// Token: NEWOBJ), then BUILD of its state if it has one. A C++ variant (alternative), a Cap'n
// Proto struct and a proxy (ref) have no Python form here: ValueError.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "troupe/multiprocessing/managers/detail/item.hpp"

namespace troupe::multiprocessing::managers::detail::pickle {

/// The most memo entries decode() keeps (and no more than Limits::max_nodes).
inline constexpr std::size_t kMaxMemo = std::size_t{1} << 20;

/// The value a pickle of protocol 2 to 5 holds. @throws ValueError naming what is refused or
/// malformed, and where (the opcode and its offset), or the limit exceeded; TypeError for an
/// unhashable dict key or set element, as Python's.
Item decode(std::span<const std::byte> pickle, const Limits& limits = {});

/// Whether decode() reads objects of `qualified` ("builtins.KeyError", "queue.Empty"): the
/// classes an encoded object may name for every Python to read it back.
bool reads_class(std::string_view qualified);

/// `x` as a pickle of `protocol` (4 or 5). @throws ValueError for a kind with no Python form
/// here (alternative, structure, ref) or a protocol outside 4-5.
std::string encode(const Item& x, int protocol = 4);

}  // namespace troupe::multiprocessing::managers::detail::pickle
