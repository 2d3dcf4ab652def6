@0xab66959e0009bbe7;
# Typed values between processes (lib/troupe/codec.hpp, doc/protocol.md "Envelope").
#
# Every typed message (Connection::send<T>) is one Envelope: the fingerprint and name of the C++
# type that was sent, and the value as a tree of Value nodes. The receiver knows the type it
# expects; a different fingerprint is a TypeError naming both types, and a tree of the wrong shape
# is a ValueError. Decoding only fills in plain data: nothing received names code to run.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::proto");

struct Envelope {
  fingerprint @0 :UInt64;  # FNV-1a 64 of the type's signature (see typeName)
  typeName @1 :Text;       # the signature, e.g. "vector<i32>", "struct app::Job{i64,str}"
  body @2 :Value;
}

struct Value {
  union {
    none @0 :Void;            # std::monostate, std::nullopt inside a variant
    bool @1 :Bool;
    int @2 :Int64;            # signed integers, enums with a signed underlying type, durations
    uint @3 :UInt64;          # unsigned integers and enums
    float @4 :Float64;        # float and double (a float round-trips exactly)
    text @5 :Text;            # std::string
    data @6 :Data;            # bytes, and arrays of arithmetic elements (little-endian, packed)
    list @7 :List(Value);     # sequences, sets, tuples, aggregates' fields, optionals (0 or 1),
                              # maps as key, value, key, value, ...
    alternative @8 :Alternative;  # std::variant
    struct @9 :AnyPointer;    # a Cap'n Proto struct, as itself
    ref @10 :Ref;             # a reference to an object hosted by a manager (a proxy)
  }
}

# A reference to an object that a server (a manager, later an actor host) hosts: what a proxy is
# made from, and what travels when a proxy is sent to another process or stored in a managed
# object. doc/protocol.md "Managers" gives the lifetime rules (park, claim).
struct Ref {
  typeid @0 :Text;            # the registered typeid ("Queue", "dict", "Maths")
  address @1 :Text;           # the server's address, in troupe::multiprocessing::Address syntax
  id @2 :UInt64;              # the object's id in that server (never 0)
  fingerprint @3 :UInt64;     # of the hosted type's method table (0: not checked)
  ticket @4 :UInt64;          # the reference the sender parked for this copy (0: none)
  authkey @5 :Data;           # the manager's key: only in a spawned (or forkserver) child's
                              # start arguments, as CPython's BaseProxy.__reduce__ adds it while
                              # spawning; never in any other message (empty: the receiver's rule)
}

struct Alternative {
  index @0 :UInt32;
  value @1 :Value;
}
