#!/usr/bin/env python3
"""Python's side of the manager benchmarks of issue 17, measured with this machine's python3
(stdlib only): multiprocessing.managers, as a user of Python would write them.

    python3 bench/managers_python.py [--quick] [--tasks N]

Workloads (servers in forked children, clients in this process, 127.0.0.1 and Unix sockets in
a temporary directory only):

- ProxyCallRoundTrip/unix, /tcp: a registered class with add(a, b); one proxy; the median of
  many single calls after a warm-up; the best of a few runs, each on a new server.
- ConnectCreateCall/tcp, /tcp_nodelay, /unix: a new BaseManager object, connect(), create the
  object, first call (Python opens four connections, each with the two-way HMAC handshake: the
  create, the proxy's incref, the creator's decref, and the one the calls then use). "tcp" is what Python does (it never sets TCP_NODELAY; the run checks and says
  so on stderr); "tcp_nodelay" sets it on every socket of client and server.
- QueueRecipe4Workers/tcp, /unix: the docs' remote-manager recipe: a manager serving a task and a
  result queue; 4 worker processes connect to it by address, take integers n until a negative
  one and put [n, n*n]; the client puts N tasks and collects N results (checked). Tasks per
  second from the first put to the last result, the workers already connected.
- ManagedPoolApply/unix: `SyncManager().Pool(2)`'s apply(square, (i,)), one at a time (the
  median of many); ManagedPoolMap/unix: its map(square, range(1000)), the best of a few.

Prints one JSON object on stdout, name -> {"value": float, "unit": "us" | "per_s"}, and a table
on stderr. Round trips are medians (call round trips: the best of a few runs' medians); the
recipe is the best of a few runs (one run each with --quick).
Every child process and socket is cleaned up on errors and on SIGTERM, and the children die
with this process (PR_SET_PDEATHSIG).
"""
import argparse
import contextlib
import ctypes
import json
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing import connection
from multiprocessing.managers import BaseManager

FORK = multiprocessing.get_context("fork")
WORKERS = 4


def die_with_parent():
    """In a child: SIGKILL when the process that started it dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- The registered class of the round-trip and connect workloads -----------------------------

class Maths:
    def add(self, a, b):
        return a + b

    def length(self, data):
        return len(data)


class MathsManager(BaseManager):
    pass


MathsManager.register("Maths", Maths)


# --- The docs' recipe: queues served by a manager, workers connecting by address --------------

_served = {}


def _task_queue():
    return _served.setdefault("tasks", queue.Queue())


def _result_queue():
    return _served.setdefault("results", queue.Queue())


class QueueServer(BaseManager):
    pass


QueueServer.register("get_task_queue", callable=_task_queue)
QueueServer.register("get_result_queue", callable=_result_queue)


class QueueClient(BaseManager):
    """The workers' side: the typeids only, as in the docs (they do not know the callables)."""


QueueClient.register("get_task_queue")
QueueClient.register("get_result_queue")


def _worker(address, authkey):
    die_with_parent()
    m = QueueClient(address=address, authkey=authkey)
    m.connect()
    tasks, results = m.get_task_queue(), m.get_result_queue()
    results.put(("ready", os.getpid()))
    while True:
        n = tasks.get()
        if n < 0:
            break
        results.put([n, n * n])


@contextlib.contextmanager
def started(manager_type, address, authkey):
    """A manager whose server runs in a forked child; shut down (then terminated, then killed,
    as BaseManager.shutdown does) when the block ends, by an exception too."""
    m = manager_type(address=address, authkey=authkey, ctx=FORK)
    m.start(die_with_parent)
    try:
        yield m
    finally:
        m.shutdown()
        m.join(timeout=10)


@contextlib.contextmanager
def tcp_nodelay():
    """For the block: every multiprocessing.connection TCP socket, client and server (the server
    is forked inside the block, so it inherits this), gets TCP_NODELAY. Python has no option
    for it; this wraps the module's socket client and listener."""
    original_client = connection.SocketClient
    original_accept = connection.SocketListener.accept

    def set_nodelay(conn):
        if conn is not None:
            with contextlib.suppress(OSError):
                with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def client(address):
        c = original_client(address)
        return set_nodelay(c) if isinstance(address, tuple) else c

    def accept(self):
        c = original_accept(self)
        return set_nodelay(c) if self._family == "AF_INET" else c

    connection.SocketClient = client
    connection.SocketListener.accept = accept
    try:
        yield
    finally:
        connection.SocketClient = original_client
        connection.SocketListener.accept = original_accept


def python_sets_nodelay():
    """What multiprocessing.connection does by default on TCP: TCP_NODELAY on the client's and
    on the accepted socket (0 = Nagle on)."""
    listener = connection.Listener(("127.0.0.1", 0))
    try:
        client = connection.Client(listener.address)
        server = listener.accept()
        try:
            out = []
            for c in (client, server):
                with socket.fromfd(c.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:
                    out.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            return tuple(out)
        finally:
            client.close()
            server.close()
    finally:
        listener.close()


def summary_us(samples_ns):
    """[median, p10, p90] of samples in nanoseconds, in microseconds."""
    s = sorted(samples_ns)
    at = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return [statistics.median(s) / 1e3, at(0.1) / 1e3, at(0.9) / 1e3]


def call_round_trip_us(address, authkey, calls, warm_up, runs):
    """[median, p10, p90] in microseconds of single p.add(i, 1) calls on one proxy, from the
    run with the lowest median of `runs` runs, each on a new server (on 2 CPUs the figure is
    bimodal: server thread on the client's CPU or on the other), and the runs' medians."""
    results = [one_round_trip_run_us(address, authkey, calls, warm_up) for _ in range(runs)]
    best = min(results)
    return best + [[r[0] for r in results]]


def one_round_trip_run_us(address, authkey, calls, warm_up):
    with started(MathsManager, address, authkey) as m:
        p = m.Maths()
        try:
            add = p.add
            for i in range(warm_up):
                add(i, 1)
            samples = []
            clock = time.perf_counter_ns
            for i in range(calls):
                t = clock()
                r = add(i, 1)
                samples.append(clock() - t)
                if r != i + 1:
                    raise RuntimeError(f"Maths.add({i}, 1) returned {r!r}")
        finally:
            del p
    return summary_us(samples)


def large_argument_bytes_per_s(address, authkey, mib, calls, runs):
    """Bytes a second of p.length(data) calls with a `mib` MiB bytes argument, one at a time:
    the best of `runs` runs."""
    data = bytes(mib << 20)
    best = 0.0
    with started(MathsManager, address, authkey) as m:
        p = m.Maths()
        try:
            p.length(data)
            for _ in range(runs):
                t = time.perf_counter()
                for _ in range(calls):
                    if p.length(data) != len(data):
                        raise RuntimeError("Maths.length returned a wrong length")
                best = max(best, calls * len(data) / (time.perf_counter() - t))
        finally:
            del p
    return best


def connect_create_call_us(address, authkey, rounds):
    """Median (and p10, p90) of: a new manager object, connect(), create a Maths, first call."""
    with started(MathsManager, address, authkey) as m:
        served = m.address
        samples = []
        for i in range(rounds + 1):  # the first round is a warm-up
            t = time.perf_counter_ns()
            c = MathsManager(address=served, authkey=authkey)
            c.connect()
            p = c.Maths()
            r = p.add(1, 2)
            elapsed = time.perf_counter_ns() - t
            if r != 3:
                raise RuntimeError(f"Maths.add(1, 2) returned {r!r}")
            del p, c  # the proxy's decref closes this thread's connection: the next round is cold
            if i:
                samples.append(elapsed)
    return summary_us(samples)


def queue_recipe_per_s(address, authkey, tasks, runs):
    """The docs' recipe with 4 worker processes: best tasks/s over `runs` runs of `tasks`."""
    with started(QueueServer, address, authkey) as m:
        return recipe_on(m.address, authkey, tasks, runs)


def timed_recipe(task_q, result_q, tasks, runs):
    """The client's part of the recipe, `runs` times with the workers already there: puts the
    tasks, collects and checks the results ([n, n*n] each, any order). The best tasks/s."""
    best = 0.0
    expected = [[n, n * n] for n in range(tasks)]
    for _ in range(runs):
        t = time.perf_counter()
        for n in range(tasks):
            task_q.put(n)
        got = [list(result_q.get(timeout=60)) for _ in range(tasks)]
        rate = tasks / (time.perf_counter() - t)
        got.sort()
        if got != expected:
            raise RuntimeError("the recipe's results do not match its tasks")
        best = max(best, rate)
    return best


def recipe_on(address, authkey, tasks, runs):
    """The recipe against the queue server at `address` (Python's or another that serves
    get_task_queue and get_result_queue): this process is the client, as in the docs."""
    m = QueueClient(address=address, authkey=authkey)
    m.connect()
    task_q, result_q = m.get_task_queue(), m.get_result_queue()
    workers = []
    try:
        for _ in range(WORKERS):
            w = FORK.Process(target=_worker, args=(address, authkey), daemon=True)
            w.start()
            workers.append(w)
        for _ in range(WORKERS):
            kind, _pid = result_q.get(timeout=60)
            if kind != "ready":
                raise RuntimeError(f"expected a worker's ready message, got {kind!r}")
        best = timed_recipe(task_q, result_q, tasks, runs)
        for _ in workers:
            task_q.put(-1)
        for w in workers:
            w.join(timeout=30)
            if w.exitcode != 0:
                raise RuntimeError(f"worker {w.pid} ended with exit code {w.exitcode}")
        return best
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
            if w.is_alive():
                w.kill()
                w.join()
        del task_q, result_q


def square(x):
    return x * x


def managed_pool(calls, maps):
    """SyncManager's Pool(2), the server on a Unix socket in a temp dir (start(): fork):
    (apply p50, p10, p90 in µs; map of 1000 items: the best in µs)."""
    ctx = multiprocessing.get_context("fork")
    with multiprocessing.managers.SyncManager(ctx=ctx) as m:
        with m.Pool(2) as pool:
            for i in range(100):
                pool.apply(square, (i,))
            samples = []
            for i in range(calls):
                t0 = time.perf_counter_ns()
                r = pool.apply(square, (i,))
                samples.append(time.perf_counter_ns() - t0)
                if r != i * i:
                    raise RuntimeError("managed Pool apply: a wrong square")
            items = list(range(1000))
            best = None
            for _ in range(maps):
                t0 = time.perf_counter_ns()
                r = pool.map(square, items)
                t = time.perf_counter_ns() - t0
                if r[-1] != 999 * 999 or len(r) != 1000:
                    raise RuntimeError("managed Pool map: wrong squares")
                best = t if best is None else min(best, t)
    return (*summary_us(samples), best / 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls, rounds and tasks")
    ap.add_argument("--tasks", type=int, help="tasks per run of the queue recipe")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the managers, workers and the temp dir are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    calls, warm_up = (3_000, 300) if args.quick else (30_000, 2_000)
    nagle_rounds, fast_rounds = (4, 40) if args.quick else (15, 300)
    tasks = args.tasks or (2_000 if args.quick else 20_000)
    runs = 1 if args.quick else 3
    authkey = os.urandom(32)
    tcp = ("127.0.0.1", 0)

    out, notes = {}, {}

    def report(name, value, unit, note=""):
        out[name] = {"value": value, "unit": unit}
        notes[name] = note

    def rt(name, p50, p10, p90, what):
        report(name, p50, "us", f"median; p10 {p10:.1f} µs, p90 {p90:.1f} µs; {what}")

    def rt_best(name, p50, p10, p90, medians, what):
        runs_text = ", ".join(f"{m:.1f}" for m in medians)
        rt(name, p50, p10, p90, f"{what}; best of the runs' medians ({runs_text} µs)")

    nodelay_client, nodelay_server = python_sets_nodelay()
    tmp = tempfile.mkdtemp(prefix="troupe-mgr-bench-")
    try:
        unix = lambda name: os.path.join(tmp, name)  # noqa: E731
        print("managers_python: proxy call round trips…", file=sys.stderr)
        for fam, address in (("unix", unix("rt")), ("tcp", tcp)):
            rt_best(f"ProxyCallRoundTrip/{fam}",
                    *call_round_trip_us(address, authkey, calls, warm_up, runs),
                    f"{calls} calls a run")
        print("managers_python: connect + create + first call…", file=sys.stderr)
        rt("ConnectCreateCall/tcp", *connect_create_call_us(tcp, authkey, nagle_rounds),
           f"{nagle_rounds} rounds, Python's default sockets (Nagle on)")
        with tcp_nodelay():
            rt("ConnectCreateCall/tcp_nodelay",
               *connect_create_call_us(tcp, authkey, fast_rounds),
               f"{fast_rounds} rounds, TCP_NODELAY on both sides")
        rt("ConnectCreateCall/unix", *connect_create_call_us(unix("cc"), authkey, fast_rounds),
           f"{fast_rounds} rounds")
        print("managers_python: the queue recipe, 4 workers…", file=sys.stderr)
        for fam, address in (("tcp", tcp), ("unix", unix("q"))):
            report(f"QueueRecipe{WORKERS}Workers/{fam}",
                   queue_recipe_per_s(address, authkey, tasks, runs), "per_s",
                   f"{tasks} tasks, best of {runs}")
        print("managers_python: a 4 MiB argument…", file=sys.stderr)
        report("LargeArgument/unix",
               large_argument_bytes_per_s(unix("big"), authkey, 4, 8 if args.quick else 32, runs),
               "B_per_s", "p.length(4 MiB of bytes), one at a time")
        print("managers_python: a managed Pool…", file=sys.stderr)
        p50, p10, p90, map_us = managed_pool(300 if args.quick else 3_000, 5 if args.quick else 30)
        rt("ManagedPoolApply/unix", p50, p10, p90, "SyncManager().Pool(2).apply(square, (i,))")
        report("ManagedPoolMap/unix", map_us, "us", "pool.map(square, range(1000)), the best")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs; servers in forked "
          f"children. multiprocessing.connection's TCP_NODELAY by default: client "
          f"{nodelay_client}, accepted {nodelay_server} (0 = Nagle on).", file=sys.stderr)
    width = max(len(n) for n in out)
    for name, v in out.items():
        value = (f"{v['value']:10.1f} µs" if v["unit"] == "us" else
                 f"{v['value'] / 1e6:10.0f} MB/s" if v["unit"] == "B_per_s" else
                 f"{v['value']:10.0f} /s")
        print(f"  {name:<{width}}  {value}   {notes[name]}", file=sys.stderr)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
