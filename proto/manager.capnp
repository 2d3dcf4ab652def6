@0xc4a8e1d2b7f35a19;
# troupe's manager dialect (doc/protocol.md "Managers"): what a proxy and the object host say to
# each other on an authenticated Connection (CPython's framing and HMAC handshake first).
#
# A connection is one client process talking to one server. After the handshake the client's
# first frame is a Hello; the server answers with a Greeting: a Welcome, or an Error (and
# closes). Every later
# frame from the client is one Request, every later frame from the server one Reply. Requests
# carry a call id chosen by the client, so many calls are in flight on one connection; replies
# come back as calls end, in any order. Calls on the same lane (a client thread, Python's
# connection per thread) run one after another in the order sent; calls on different lanes, and
# of different clients, run in parallel.
#
# A server also accepts CPython's pickle dialect on the same address: a CPython client's first
# frame is a pickle (its first byte is 0x80, PROTO), never a Hello, whose first bytes are a Cap'n
# Proto segment table (the segment count minus one, 0 here, as a little-endian UInt32).
#
# Nothing received names code to run: a typeid and a method name are looked up in the tables the
# server's program registered, and nowhere else.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::proto::manager");

using Value = import "value.capnp".Value;
using Error = import "errors.capnp".Error;
using Ref = import "value.capnp".Ref;

const protocolVersion :UInt32 = 3;  # 3: a claim is answered; 2: an incref is (1: only failures)

struct Hello {
  magic @0 :UInt64;           # 0x3172676e4d705274: the bytes "tRpMngr1" as a little-endian UInt64
  version @1 :UInt32;         # protocolVersion
  pid @2 :Int32;              # the client process (debug_info, error messages)
  processName @3 :Text;       # current_process().name
  host @4 :Text;              # gethostname()
  address @5 :Text;           # the address the client dialled (another name of the server's)
}

struct Welcome {
  version @0 :UInt32;
  pid @1 :Int32;              # the server process
  serverName @2 :Text;        # the manager class's name ("SyncManager")
  maxMessageSize @3 :UInt64;  # the limits this connection is held to (doc/protocol.md)
  maxCallsInFlight @4 :UInt32;
  maxObjectsHeld @5 :UInt32;
  address @6 :Text;           # the server's address as its proxies' tokens carry it
}

struct Greeting {
  union {
    welcome @0 :Welcome;
    refused @1 :Error;        # why the server will not serve this connection; it then closes
  }
}

struct Request {
  callId @0 :UInt64;          # chosen by the client, unique among its calls in flight
  lane @1 :UInt64;            # calls of one lane run in order (the client's thread id)
  union {
    call @2 :Call;            # a method of a hosted object
    create @3 :Create;        # a new object of a registered typeid
    incref @4 :UInt64;        # this connection holds one more reference to object id;
                              # answered (none, or why not: no such object, over the
                              # connection's maxObjectsHeld)
    decref @5 :UInt64;        # one fewer (no reply unless it fails)
    park @6 :Ticket;          # one more reference to object id, held for a proxy in transit
                              # until a receiver claims the ticket (chosen by the sender,
                              # random) or park_ttl passes; no reply unless it fails
    claim @7 :Ticket;         # a received proxy: takes the parked reference over (or, if the
                              # park has not arrived yet, a new one; the park is then dropped)
    getMethods @8 :UInt64;    # the exposed method names of object id
    debugInfo @9 :Void;       # the server's objects, as text (Python's debug_info())
    numberOfObjects @10 :Void;
    shutdown @11 :Void;       # the server stops (only while shutdown is allowed)
    cancel @12 :UInt64;       # gives up waiting for call id (a timeout or a stop on the client)
    ping @13 :Void;           # liveness (an idle link's heartbeat)
    # A SharedMemoryManager's server (ServerOptions::track_segments; others refuse these):
    trackSegment @14 :Text;   # unlink this shared memory segment (its name, without the leading
                              # '/') when the server stops; Python's track_segment
    releaseSegment @15 :Text; # unlink it now and forget it; Python's release_segment
    listSegments @16 :Void;   # the names tracked, in order (a list of str); Python's
                              # list_segments
  }
}

struct Call {
  object @0 :UInt64;
  method @1 :Text;
  args @2 :List(Value);       # each argument as troupe::Codec encodes it
  argsFingerprint @3 :UInt64; # of the argument types' signature (0: untyped, _callmethod)
}

struct Create {
  typeid @0 :Text;
  args @1 :List(Value);
  argsFingerprint @2 :UInt64;
}

struct Ticket {
  id @0 :UInt64;              # the object
  ticket @1 :UInt64;          # never 0
}

struct Reply {
  callId @0 :UInt64;
  union {
    result @1 :Value;         # the method's return value (none for void)
    error @2 :Error;          # the exception it raised, or why the call was refused
    proxy @3 :Ref;            # a new object (create, or a method listed in method_to_typeid);
                              # the reply holds one reference for this connection (ticket 0)
    text @4 :Text;            # debugInfo
  }
}
