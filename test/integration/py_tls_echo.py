"""The Python end of the TLS cases of test/integration/python_echo_test.cpp: Python's ssl module
for TLS, and multiprocessing.connection's own handshake functions (deliver_challenge,
answer_challenge) over a small Connection-like class speaking CPython's framing — what a Python
program does to talk to a troupe endpoint that runs TLS.

  py_tls_echo.py listen ADDRESS CERT KEY       echo listener, as py_echo.py's
  py_tls_echo.py connect ADDRESS CAFILE SIZES  client, as py_echo.py's; exit 3 if TLS or
                                               authentication fails

The key, in hex, is TROUPE_AUTHKEY in the environment, as for py_echo.py.
"""
import os
import socket
import ssl
import struct
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import answer_challenge, deliver_challenge

from py_echo import exchange, parse, serve, show


class TlsConnection:
    """send_bytes/recv_bytes over an SSLSocket with multiprocessing.connection's framing."""

    def __init__(self, sock):
        self.sock = sock

    def send_bytes(self, buf):
        n = len(buf)
        header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        self.sock.sendall(header + bytes(buf))

    def _exact(self, n):
        parts = []
        while n:
            part = self.sock.recv(min(n, 1 << 20))
            if not part:
                raise EOFError
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def recv_bytes(self, maxlength=None):
        (size,) = struct.unpack("!i", self._exact(4))
        if size == -1:
            (size,) = struct.unpack("!Q", self._exact(8))
        if maxlength is not None and size > maxlength:
            raise OSError("bad message length")
        return self._exact(size)

    def close(self):
        self.sock.close()


def family(address):
    return socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX


def listen(address, key, cert, keyfile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, keyfile)
    with socket.socket(family(address), socket.SOCK_STREAM) as s:
        s.bind(address)
        s.listen(4)
        print("listening on", show(s.getsockname()), flush=True)
        while True:
            raw, _ = s.accept()
            try:
                conn = TlsConnection(ctx.wrap_socket(raw, server_side=True))
                deliver_challenge(conn, key)
                answer_challenge(conn, key)
            except (AuthenticationError, ssl.SSLError, EOFError, OSError) as e:
                print("rejected:", type(e).__name__, e, flush=True)
                raw.close()
                continue
            quit = serve(conn)
            conn.close()
            if quit:
                return 0


def connect(address, key, cafile, sizes):
    ctx = ssl.create_default_context(cafile=cafile)
    name = address[0] if isinstance(address, tuple) else "localhost"
    raw = socket.socket(family(address), socket.SOCK_STREAM)
    raw.connect(address)
    try:
        conn = TlsConnection(ctx.wrap_socket(raw, server_hostname=name))
        answer_challenge(conn, key)
        deliver_challenge(conn, key)
    except (AuthenticationError, ssl.SSLError) as e:
        print("authentication failed:", type(e).__name__, e, flush=True)
        raw.close()
        return 3
    status = exchange(conn, sizes)
    conn.close()
    return status


if __name__ == "__main__":
    role, address = sys.argv[1], parse(sys.argv[2])
    key = bytes.fromhex(os.environ["TROUPE_AUTHKEY"])
    if role == "listen":
        sys.exit(listen(address, key, sys.argv[3], sys.argv[4]))
    sys.exit(connect(address, key, sys.argv[3], [int(s) for s in sys.argv[4].split(",")]))
