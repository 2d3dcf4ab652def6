#!/usr/bin/env python3
"""The docs' remote-manager recipe, end to end: examples/managers/queue_server, two
queue_workers and a queue_client (their command lines are a contract), over TCP 127.0.0.1 and a
Unix socket. Every process must exit 0, the client must report every result right, and nothing is
left running. Usage: queue_examples.py SERVER WORKER CLIENT"""
import os
import subprocess
import sys
import tempfile

server_bin, worker_bin, client_bin = sys.argv[1:4]
KEY = "736563726574"  # b"secret"
TIMEOUT = 120


def run(address):
    procs = []
    try:
        server = subprocess.Popen([server_bin, "--address", address, "--authkey", KEY],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(server)
        listening = server.stdout.readline().strip()
        assert listening, "queue_server printed no address"
        workers = [subprocess.Popen([worker_bin, "--address", listening, "--authkey", KEY],
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        procs += workers
        client = subprocess.run([client_bin, "--address", listening, "--authkey", KEY,
                                 "--tasks", "2000", "--stop-workers", "2"],
                                capture_output=True, text=True, timeout=TIMEOUT)
        print(f"{address}: client: {client.stdout.strip()} {client.stderr.strip()}")
        assert client.returncode == 0, f"queue_client exited {client.returncode}"
        assert "2000 results right, 0 wrong" in client.stdout, client.stdout
        done = 0
        for w in workers:
            out, _ = w.communicate(timeout=TIMEOUT)
            assert w.returncode == 0, f"queue_worker exited {w.returncode}"
            done += int(out.split("worker: ")[1].split()[0])
        assert done == 2000, f"the workers did {done} tasks, not 2000"
        out, _ = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, f"queue_server exited {server.returncode}"
        print(f"{address}: server: {out.strip()}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


with tempfile.TemporaryDirectory() as d:
    run("127.0.0.1:0")
    run("unix:" + os.path.join(d, "manager.sock"))
# A wrong key: the worker must fail with an error, not hang, and the server must keep serving.
server = subprocess.Popen([server_bin, "--address", "127.0.0.1:0", "--authkey", KEY],
                          stdout=subprocess.PIPE, text=True)
try:
    listening = server.stdout.readline().strip()
    bad = subprocess.run([worker_bin, "--address", listening, "--authkey", "00"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert bad.returncode != 0 and "uthentication" in bad.stderr, (bad.returncode, bad.stderr)
    ok = subprocess.run([client_bin, "--address", listening, "--authkey", KEY, "--tasks", "0"],
                        capture_output=True, text=True, timeout=TIMEOUT)
    assert ok.returncode == 0, ok.stderr
    server.communicate(timeout=TIMEOUT)
    assert server.returncode == 0
finally:
    if server.poll() is None:
        server.kill()
        server.wait()
print("ok")
