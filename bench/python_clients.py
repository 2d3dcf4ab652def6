#!/usr/bin/env python3
"""Python clients on two servers, side by side (issue 18): the same multiprocessing.managers
client code against CPython's own manager server and against troupe's (examples/managers/
queue_server, which speaks CPython's dialect), in one run.

    python3 bench/python_clients.py [--build build] [--quick]

Workloads (127.0.0.1 and Unix sockets in a temporary directory only; both servers serve the
docs' `get_task_queue` and `get_result_queue`):

- CallRoundTrip/{unix,tcp}: one proxy to the task queue; the median of many single `qsize()`
  calls after a warm-up.
- ConnectCreateCall/{unix,tcp}: a new manager object, connect(), get_task_queue(), qsize().
- QueueRecipe4Workers/{unix,tcp}: the docs' recipe, 4 Python worker processes (the workers of
  bench/managers_python.py) taking n and putting [n, n*n]; the client puts N tasks and collects
  the N results (checked); tasks per second, the best of a few runs.
- QueueRecipe4CxxWorkers/{unix,tcp}, on CPython's server only: the same with troupe's
  queue_worker (C++, speaking CPython's dialect to it) as the 4 workers: what C++ workers
  joining a Python cluster change.

Prints one JSON object on stdout, "{server}/{workload}/{family}" -> {"value", "unit"}, and a
table with the ratios on stderr. Every server and worker is stopped on errors and SIGTERM."""
import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import managers_python as mp_bench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_address(text):
    if text.startswith("unix:"):
        return text[len("unix:"):]
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port))


@contextlib.contextmanager
def python_server(address, authkey):
    with mp_bench.started(mp_bench.QueueServer, address, authkey) as m:
        yield m.address


@contextlib.contextmanager
def troupe_server(binary, address, authkey):
    text = address if isinstance(address, str) and address.startswith("unix:") else \
        f"{address[0]}:{address[1]}"
    p = subprocess.Popen([binary, "--address", text, "--legacy-md5"],
                         env=dict(os.environ, TROUPE_AUTHKEY=authkey.hex()),  # not on argv
                         stdout=subprocess.PIPE, text=True)
    try:
        listening = p.stdout.readline().strip()
        if not listening:
            raise RuntimeError("queue_server printed no address")
        yield python_address(listening)
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def client(address, authkey):
    m = mp_bench.QueueClient(address=address, authkey=authkey)
    m.connect()
    return m


def call_round_trip_us(address, authkey, calls, warm_up):
    m = client(address, authkey)
    q = m.get_task_queue()
    size = q.qsize
    for _ in range(warm_up):
        size()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t = clock()
        size()
        samples.append(clock() - t)
    del q, size
    return mp_bench.summary_us(samples)[0]


def connect_create_call_us(address, authkey, rounds):
    samples = []
    for i in range(rounds + 1):  # the first is a warm-up
        t = time.perf_counter_ns()
        m = client(address, authkey)
        q = m.get_task_queue()
        q.qsize()
        elapsed = time.perf_counter_ns() - t
        del q, m
        if i:
            samples.append(elapsed)
    return mp_bench.summary_us(samples)[0]


def recipe_cxx_workers(address, authkey, tasks, runs, worker_binary, legacy):
    """The recipe with troupe's queue_worker (C++) as the 4 workers, on the server at `address`
    (CPython's): this process is the Python client, as in recipe_on. What C++ workers joining a
    Python cluster gain."""
    text = "unix:" + address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    m = mp_bench.QueueClient(address=address, authkey=authkey)
    m.connect()
    task_q, result_q = m.get_task_queue(), m.get_result_queue()
    env = dict(os.environ, TROUPE_AUTHKEY=authkey.hex())
    argv = [worker_binary, "--address", text] + (["--legacy-md5"] if legacy else [])
    workers = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
               for _ in range(mp_bench.WORKERS)]
    try:
        # Each worker connects and waits in get(): a first task each shows they are there.
        for n in range(mp_bench.WORKERS):
            task_q.put(n)
        for _ in range(mp_bench.WORKERS):
            result_q.get(timeout=60)
        best = mp_bench.timed_recipe(task_q, result_q, tasks, runs)
        for _ in workers:
            task_q.put(-1)
        for w in workers:
            if w.wait(timeout=30) != 0:
                raise RuntimeError(f"queue_worker {w.pid} ended with exit code {w.returncode}")
        return best
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        del task_q, result_q


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = os.path.join(args.build, "examples", "managers", "queue_server")
    worker = os.path.join(args.build, "examples", "managers", "queue_worker")
    if not os.path.exists(binary) or not os.path.exists(worker):
        sys.exit(f"python_clients: {binary} or {worker} not found (build the examples)")
    calls, warm_up = (2_000, 200) if args.quick else (20_000, 2_000)
    rounds = 10 if args.quick else 40
    tasks = 2_000 if args.quick else 10_000
    runs = 1 if args.quick else 3
    authkey = os.urandom(32)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for family in ("unix", "tcp"):
            for name in ("python", "troupe"):
                address = ("127.0.0.1", 0) if family == "tcp" else os.path.join(d, f"{name}.sock")
                if name == "python":
                    server = python_server(address, authkey)
                else:
                    server = troupe_server(binary, address if family == "tcp" else
                                           "unix:" + address, authkey)
                with server as served:
                    print(f"python_clients: {name} server, {family}…", file=sys.stderr)
                    out[f"{name}/CallRoundTrip/{family}"] = {
                        "value": call_round_trip_us(served, authkey, calls, warm_up), "unit": "us"}
                    out[f"{name}/ConnectCreateCall/{family}"] = {
                        "value": connect_create_call_us(served, authkey, rounds), "unit": "us"}
                    out[f"{name}/QueueRecipe4Workers/{family}"] = {
                        "value": mp_bench.recipe_on(served, authkey, tasks, runs),
                        "unit": "per_s"}
                    if name == "python":
                        # The other way round: troupe's C++ workers on CPython's server.
                        out[f"python/QueueRecipe4CxxWorkers/{family}"] = {
                            "value": recipe_cxx_workers(served, authkey, tasks, runs, worker,
                                                        sys.version_info < (3, 12)),
                            "unit": "per_s"}
    print(f"{'Python client, workload':44} {'CPython server':>16} {'troupe server':>16}  ratio",
          file=sys.stderr)
    for key in ("CallRoundTrip", "ConnectCreateCall", "QueueRecipe4Workers"):
        for family in ("unix", "tcp"):
            p, t = out[f"python/{key}/{family}"], out[f"troupe/{key}/{family}"]
            unit = p["unit"]
            ratio = p["value"] / t["value"] if unit == "us" else t["value"] / p["value"]
            fmt = (lambda v: f"{v:,.1f} µs") if unit == "us" else (lambda v: f"{v:,.0f} /s")
            print(f"{key + ', ' + family:44} {fmt(p['value']):>16} {fmt(t['value']):>16}  "
                  f"{ratio:.2f}× faster on troupe", file=sys.stderr)
    p = [out[f"python/QueueRecipe4Workers/{f}"]["value"] for f in ("unix", "tcp")]
    c = [out[f"python/QueueRecipe4CxxWorkers/{f}"]["value"] for f in ("unix", "tcp")]
    print(f"{'CPython server, the recipe':44} {'Python workers':>16} {'C++ workers':>16}  ratio",
          file=sys.stderr)
    for i, family in enumerate(("unix", "tcp")):
        print(f"{'QueueRecipe4Workers, ' + family:44} {p[i]:>14,.0f} /s {c[i]:>14,.0f} /s  "
              f"{c[i] / p[i]:.2f}× faster with troupe's workers", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
