@0xfbb70ff98bffd073;
# The error that crosses a process boundary: the troupe::errc value that names the exception
# class, the message, the errno for OSError subclasses, and the remote traceback text.
# troupe::throw_error() turns a decoded Error back into the right C++ exception class.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::proto");

struct Error {
  code @0 :UInt16;        # a troupe::errc value
  message @1 :Text;       # what failed and on what (name, address, pid, size)
  osErrno @2 :Int32;      # errno for OSError and its subclasses, else 0
  typeName @3 :Text;      # the Python-style class name, e.g. "queue.Empty"
  traceback @4 :Text;     # the remote side's stack or context, where known
  origin @5 :Text;        # node and pid the error came from
}
