"""The Python end of test/integration/python_echo_test.cpp, using only multiprocessing.connection.

  py_echo.py listen ADDRESS            echo listener: prints its address, answers each message
                                        reversed, exits 0 after b"quit"; a client that fails
                                        authentication is reported and the next one accepted
  py_echo.py connect ADDRESS SIZES     client: sends one message per size, checks each reply
                                        is reversed, sends b"quit"; exit 3 if authentication fails

ADDRESS is troupe's string form: HOST:PORT, unix:PATH, unix-abstract:NAME. The key, in hex, is
TROUPE_AUTHKEY in the environment (never on the command line, where `ps` shows it).
"""
import os
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener


def parse(text):
    if text.startswith("unix:"):
        return text[len("unix:"):]
    if text.startswith("unix-abstract:"):
        return "\0" + text[len("unix-abstract:"):]
    host, port = text.rsplit(":", 1)
    return (host, int(port))


def show(address):
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    if isinstance(address, bytes):  # an abstract name, as getsockname() gives it
        address = address.decode()
    if address.startswith("\0"):
        return "unix-abstract:" + address[1:]
    return "unix:" + address


def payload(n, salt):
    block = bytes((i * 31 + salt) & 0xFF for i in range(256))
    return (block * (n // 256 + 1))[:n]


def serve(conn):
    """Answers each message with its bytes reversed; True after b"quit", False at EOF."""
    while True:
        try:
            m = conn.recv_bytes()
        except EOFError:
            return False
        if m == b"quit":
            print("quit", flush=True)
            return True
        conn.send_bytes(m[::-1])


def listen(address, key):
    with Listener(address, authkey=key) as listener:
        print("listening on", show(listener.address), flush=True)
        while True:
            try:
                conn = listener.accept()
            except (AuthenticationError, EOFError, OSError) as e:
                print("rejected:", type(e).__name__, e, flush=True)
                continue
            with conn:
                if serve(conn):
                    return 0


def connect(address, key, sizes):
    try:
        conn = Client(address, authkey=key)
    except AuthenticationError as e:
        print("authentication failed:", e, flush=True)
        return 3
    with conn:
        return exchange(conn, sizes)


def exchange(conn, sizes):
    """Sends one message per size and checks each reply is reversed, then b"quit": the exit
    status (0 all matched, 1 a reply differed)."""
    for i, n in enumerate(sizes):
        m = payload(n, i)
        conn.send_bytes(m)
        if conn.recv_bytes() != m[::-1]:
            print(f"reply {i} ({n} bytes) differs", flush=True)
            return 1
    conn.send_bytes(b"quit")
    print(len(sizes), "messages echoed", flush=True)
    return 0


if __name__ == "__main__":
    role, address = sys.argv[1], parse(sys.argv[2])
    key = bytes.fromhex(os.environ["TROUPE_AUTHKEY"])
    if role == "listen":
        sys.exit(listen(address, key))
    sys.exit(connect(address, key, [int(s) for s in sys.argv[3].split(",")]))
