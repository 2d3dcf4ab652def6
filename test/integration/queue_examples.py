#!/usr/bin/env python3
"""The docs' remote-manager recipe, end to end: examples/managers/queue_server, two
queue_workers and a queue_client (their command lines are a contract), over TCP 127.0.0.1 and a
Unix socket; then mixed crowds: the Python programs of examples/managers/python (the docs'
worker and client, unmodified in substance) beside the C++ ones, on the same server; then the
other way round: the docs' Python server (queue_server.py, under every local Python) with C++
workers and a Python worker, under the C++ client and the Python client. Every process must exit
0, the client must report every result right, and nothing is left running.
Usage: queue_examples.py SERVER WORKER CLIENT"""
import os
import subprocess
import sys
import tempfile

server_bin, worker_bin, client_bin = sys.argv[1:4]
KEY = os.urandom(16).hex()
# The key goes in the environment, never on a command line (where `ps` shows it).
os.environ["TROUPE_AUTHKEY"] = KEY
TIMEOUT = 120
HERE = os.path.dirname(os.path.abspath(__file__))
PY_EXAMPLES = os.path.join(HERE, "..", "..", "examples", "managers", "python")


def pythons():
    """This python3 and pyenv's 3.8 and later: the Python side of the mixed crowds."""
    found = [sys.executable]
    root = os.path.expanduser("~/.pyenv/versions")
    if os.path.isdir(root):
        for v in sorted(os.listdir(root)):
            parts = v.split(".")
            exe = os.path.join(root, v, "bin", "python3")
            if len(parts) >= 2 and parts[0] == "3" and parts[1].isdigit() and int(parts[1]) >= 8 \
                    and os.path.exists(exe):
                found.append(exe)
    return found


def py(exe, program):
    return [exe, os.path.join(PY_EXAMPLES, program)]


def name(argv):
    return os.path.basename([a for a in argv if not a.startswith("--")][-1])


def run(address, workers, client, tasks=2000, server_argv=None):
    """The server (`server_argv`, troupe's queue_server by default) on `address`, the `workers`
    (argv prefixes), then `client`; every process must exit 0, the client must report every
    result right, and the workers' counts must add up to the tasks (nothing lost or done
    twice)."""
    procs = []
    server_argv = server_argv or [server_bin, "--legacy-md5"]
    try:
        server = subprocess.Popen(server_argv + ["--address", address],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(server)
        listening = server.stdout.readline().strip()
        assert listening, "queue_server printed no address"
        args = ["--address", listening]
        ws = [subprocess.Popen(w + args, stdout=subprocess.PIPE, text=True) for w in workers]
        procs += ws
        c = subprocess.run(client + args + ["--tasks", str(tasks), "--stop-workers",
                                            str(len(ws))],
                           capture_output=True, text=True, timeout=TIMEOUT)
        names = ", ".join(name(w) for w in workers)
        print(f"{name(server_argv)} at {address}: {len(ws)} workers ({names}), client "
              f"{name(client)}: {c.stdout.strip()} {c.stderr.strip()}")
        assert c.returncode == 0, f"the client exited {c.returncode}"
        assert f"{tasks} results right, 0 wrong" in c.stdout, c.stdout
        done = 0
        for w in ws:
            out, _ = w.communicate(timeout=TIMEOUT)
            assert w.returncode == 0, f"a worker exited {w.returncode}"
            done += int(out.split("worker: ")[1].split()[0])
        assert done == tasks, f"the workers did {done} tasks, not {tasks}"
        out, _ = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, f"{name(server_argv)} exited {server.returncode}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


with tempfile.TemporaryDirectory() as d:
    for address in ("127.0.0.1:0", "unix:" + os.path.join(d, "manager.sock")):
        # troupe's own: two C++ workers, a C++ client.
        run(address, [[worker_bin]] * 2, [client_bin])
        # A mixed crowd: C++ workers and a Python worker per local Python, under a C++ client
        # and under the docs' Python client.
        crowd = [[worker_bin]] * 2 + [py(exe, "queue_worker.py") for exe in pythons()]
        run(address, crowd, [client_bin])
        run(address, crowd, py(sys.executable, "queue_client.py"))
    # The other way round: a Python manager. C++ workers (--legacy-md5: 3.11 and older answer
    # with HMAC-MD5) and the same Python's worker, under the C++ client; and over a Unix socket
    # under the Python client.
    cxx_worker, cxx_client = [worker_bin, "--legacy-md5"], [client_bin, "--legacy-md5"]
    for exe in pythons():
        crowd = [cxx_worker] * 2 + [py(exe, "queue_worker.py")]
        run("127.0.0.1:0", crowd, cxx_client, server_argv=py(exe, "queue_server.py"))
    run("unix:" + os.path.join(d, "python.sock"), [cxx_worker] * 2,
        py(sys.executable, "queue_client.py"), server_argv=py(sys.executable, "queue_server.py"))
# A wrong key: the worker must fail with an error, not hang, and the server must keep serving.
server = subprocess.Popen([server_bin, "--address", "127.0.0.1:0"],
                          stdout=subprocess.PIPE, text=True)
try:
    listening = server.stdout.readline().strip()
    bad = subprocess.run([worker_bin, "--address", listening],
                         env=dict(os.environ, TROUPE_AUTHKEY="00"),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert bad.returncode != 0 and "uthentication" in bad.stderr, (bad.returncode, bad.stderr)
    ok = subprocess.run([client_bin, "--address", listening, "--tasks", "0"],
                        capture_output=True, text=True, timeout=TIMEOUT)
    assert ok.returncode == 0, ok.stderr
    server.communicate(timeout=TIMEOUT)
    assert server.returncode == 0
finally:
    if server.poll() is None:
        server.kill()
        server.wait()
print("ok")
