@0xfbb70ff98bffd073;
# The error that crosses a process boundary (doc/protocol.md "Errors"): the troupe::errc value
# that names the exception class, the message, the errno for OSError subclasses, what is known
# of the remote side's stack, where it was raised (origin) and in what call (context).
# lib/troupe/error_envelope.hpp writes and reads it; troupe::throw_error() turns a decoded Error
# back into the right C++ exception class, with this envelope reachable from it.
#
# Every Text is bounded (troupe cuts it when it writes, and refuses a longer one when it reads):
# message and traceback 64 KiB each, the other texts 4 KiB each, the whole message 256 KiB.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::proto");

struct Error {
  code @0 :UInt16;        # a troupe::errc value (never 0: that is success)
  message @1 :Text;       # what failed and on what (name, address, pid, size): Python's str(e)
  osErrno @2 :Int32;      # errno for OSError and its subclasses, else 0
  typeName @3 :Text;      # the Python-style class name, e.g. "queue.Empty"; for a class troupe
                          # does not know, the C++ type ("app::ParseError")
  traceback @4 :Text;     # the remote side's stack or what is known of it (the causes of a
                          # std::nested_exception chain, an earlier remote error), may be empty
  obsoleteOrigin @5 :Text;  # never written (a one-line origin in the first draft); ignored
  origin @6 :Origin;      # the process that raised it
  context @7 :Context;    # the call that raised it
}

struct Origin {
  host @0 :Text;          # gethostname()
  pid @1 :Int32;          # getpid()
  processName @2 :Text;   # multiprocessing.current_process().name, e.g. "ForkServerProcess-1"
}

struct Context {
  call @0 :Text;          # the function or method called: a pool's entry name ("square"), a
                          # manager's method ("Queue.get")
  object @1 :Text;        # what it was called on (a manager's object, an actor), where there is one
  arguments @2 :Text;     # a short summary of the arguments, where known ("(3, 'abc')")
}
