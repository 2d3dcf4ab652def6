#!/usr/bin/env python3
"""The workloads of threading_bench.cpp in CPython (threading, queue, sched), stdlib only.
Prints one JSON object: name -> {"ns_per_op": float} or {"items_per_s": float}.
Run by bench/compare.py; each figure is the best of a few repetitions.
With --tls-dir DIR (certificates written by `connection_bench --write-tls-files DIR`), also the
TLS workloads: Python's ssl with multiprocessing.connection's framing and handshake functions
(test/integration/py_tls_echo.py's TlsConnection)."""
import json
import os
import queue
import sched
import sys
import threading
import time

REPS = 3


def best(fn):
    return min(fn() for _ in range(REPS))


def lock_ns(lock_type, n=1_000_000):
    def run():
        lock = lock_type()
        acq, rel = lock.acquire, lock.release
        t = time.perf_counter()
        for _ in range(n):
            acq()
            rel()
        return (time.perf_counter() - t) / n * 1e9
    return best(run)


def event_pingpong_ns(n=20_000):
    def run():
        ping, pong = threading.Event(), threading.Event()
        stop = False

        def worker():
            while True:
                ping.wait()
                ping.clear()
                if stop:
                    return
                pong.set()
        t = threading.Thread(target=worker)
        t.start()
        t0 = time.perf_counter()
        for _ in range(n):
            ping.set()
            pong.wait()
            pong.clear()
        el = time.perf_counter() - t0
        stop = True
        ping.set()
        t.join()
        return el / n * 1e9
    return best(run)


def condition_pingpong_ns(n=20_000):
    def run():
        cond = threading.Condition()
        state = {"turn": 0}

        def worker():
            with cond:
                while True:
                    cond.wait_for(lambda: state["turn"] != 0)
                    if state["turn"] == 2:
                        return
                    state["turn"] = 0
                    cond.notify()
        t = threading.Thread(target=worker)
        t.start()
        t0 = time.perf_counter()
        for _ in range(n):
            with cond:
                state["turn"] = 1
                cond.notify()
                cond.wait_for(lambda: state["turn"] == 0)
        el = time.perf_counter() - t0
        with cond:
            state["turn"] = 2
            cond.notify()
        t.join()
        return el / n * 1e9
    return best(run)


def transfer_items_per_s(make, pairs, n=200_000):
    def run():
        q = make()
        per = n // pairs

        def prod():
            put = q.put
            for i in range(per):
                put(i)

        def cons():
            get = q.get
            for _ in range(per):
                get()
        ts = [threading.Thread(target=prod) for _ in range(pairs)]
        ts += [threading.Thread(target=cons) for _ in range(pairs)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def sched_100k_items_per_s(n=100_000):
    def run():
        s = sched.scheduler(time.monotonic, time.sleep)
        now = time.monotonic()
        count = [0]

        def act():
            count[0] += 1
        t0 = time.perf_counter()
        for i in range(n):
            s.enterabs(now - (i % 1000) * 1e-6, i % 7, act)
        s.run()
        return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def pipe_pingpong_ns(n=20_000):
    import multiprocessing

    def run():
        a, b = multiprocessing.Pipe()

        def echo():
            try:
                while True:
                    b.send_bytes(b.recv_bytes())
            except (EOFError, OSError):
                pass
        t = threading.Thread(target=echo)
        t.start()
        msg = b"x" * 64
        t0 = time.perf_counter()
        for _ in range(n):
            a.send_bytes(msg)
            a.recv_bytes()
        el = time.perf_counter() - t0
        a.close()
        t.join()
        b.close()
        return el / n * 1e9
    return best(run)


def oneway_rate(a, b, count, send, recv):
    """Messages per second from a to b: a thread calls send(a) count times, this one recv(b);
    best of REPS."""
    def run():
        t = threading.Thread(target=lambda: [send(a) for _ in range(count)])
        t0 = time.perf_counter()
        t.start()
        for _ in range(count):
            recv(b)
        t.join()
        return count / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def oneway_items_per_s(count, send, recv):
    """oneway_rate through a multiprocessing.Pipe."""
    import multiprocessing
    a, b = multiprocessing.Pipe()
    try:
        return oneway_rate(a, b, count, send, recv)
    finally:
        a.close()
        b.close()


def pipe_oneway(size):
    msg = b"x" * size
    count = min(100_000, max(1000, (64 << 20) // size // 4))
    return oneway_items_per_s(count, lambda c: c.send_bytes(msg), lambda c: c.recv_bytes())


def pipe_oneway_record(count=100_000):
    """Typed-message counterpart: send(obj)/recv() of a small tuple (pickled)."""
    rec = (1, "name", [1.0, 2.0, 3.0, 4.0])
    return oneway_items_per_s(count, lambda c: c.send(rec), lambda c: c.recv())


def served_ns(n, serve_one, connect_one):
    """ns per connect_one() (best of REPS runs of n) while a thread calls serve_one() for
    exactly the connections made."""
    t = threading.Thread(target=lambda: [serve_one() for _ in range(REPS * n)])
    t.start()
    best_ns = None
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(n):
            connect_one()
        el = (time.perf_counter() - t0) / n * 1e9
        best_ns = el if best_ns is None else min(best_ns, el)
    t.join()
    return best_ns


def connect_auth_ns(unix, round_trip, n=300):
    """Listener/Client connect + mutual authentication (+ one 64-byte round trip)."""
    import os
    import tempfile
    from multiprocessing.connection import Client, Listener
    key = b"benchmark key"
    if unix:
        address = os.path.join(tempfile.mkdtemp(), "s")
    else:
        address = ("127.0.0.1", 0)
    listener = Listener(address, authkey=key, backlog=64)
    msg = b"x" * 64

    def serve_one():
        c = listener.accept()
        if round_trip:
            c.send_bytes(c.recv_bytes())
        c.close()

    def connect_one():
        c = Client(listener.address, authkey=key)
        if round_trip:
            c.send_bytes(msg)
            c.recv_bytes()
        c.close()
    try:
        return served_ns(n, serve_one, connect_one)
    finally:
        listener.close()


def tls_pair(cert_dir):
    """A connected TLS pair on 127.0.0.1 (client, server), as TlsConnections."""
    import os
    import socket
    import ssl
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test",
                                    "integration"))
    from py_tls_echo import TlsConnection
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(os.path.join(cert_dir, "server.pem"), os.path.join(cert_dir, "server.key"))
    cctx = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.pem"))
    return sctx, cctx, TlsConnection


def tls_oneway(cert_dir, size):
    import socket
    sctx, cctx, TlsConnection = tls_pair(cert_dir)
    msg = b"x" * size
    count = min(100_000, max(1000, (64 << 20) // size // 4))
    with socket.create_server(("127.0.0.1", 0)) as ls:
        raw = socket.create_connection(ls.getsockname())
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        box = {}
        t = threading.Thread(target=lambda: box.update(s=sctx.wrap_socket(ls.accept()[0],
                                                                          server_side=True)))
        t.start()
        a = TlsConnection(cctx.wrap_socket(raw, server_hostname="127.0.0.1"))
        t.join()
        b = TlsConnection(box["s"])

    try:
        return oneway_rate(a, b, count, lambda c: c.send_bytes(msg), lambda c: c.recv_bytes())
    finally:
        a.close()
        b.close()


def tls_connect_auth_ns(cert_dir, n=150):
    """Connect + TLS + mutual authentication + one 64-byte round trip, on 127.0.0.1."""
    import socket
    from multiprocessing.connection import answer_challenge, deliver_challenge
    sctx, cctx, TlsConnection = tls_pair(cert_dir)
    key = b"benchmark key"
    ls = socket.create_server(("127.0.0.1", 0), backlog=64)

    msg = b"x" * 64

    def serve_one():
        raw, _ = ls.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = TlsConnection(sctx.wrap_socket(raw, server_side=True))
        deliver_challenge(c, key)
        answer_challenge(c, key)
        c.send_bytes(c.recv_bytes())
        c.close()

    def connect_one():
        raw = socket.create_connection(ls.getsockname())
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = TlsConnection(cctx.wrap_socket(raw, server_hostname="127.0.0.1"))
        answer_challenge(c, key)
        deliver_challenge(c, key)
        c.send_bytes(msg)
        c.recv_bytes()
        c.close()
    try:
        return served_ns(n, serve_one, connect_one)
    finally:
        ls.close()


def trivial():
    pass


def process_start_join_ns(method, n):
    """multiprocessing.Process start + join with a trivial target, per start method."""
    import multiprocessing
    ctx = multiprocessing.get_context(method)

    def run():
        t0 = time.perf_counter()
        for _ in range(n):
            p = ctx.Process(target=trivial)
            p.start()
            p.join()
        return (time.perf_counter() - t0) / n * 1e9
    return min(run() for _ in range(REPS))


def mp_lock_ns(n=1_000_000):
    """multiprocessing.Lock acquire + release, uncontended."""
    import multiprocessing
    return lock_ns(multiprocessing.Lock, n)


def _contend(lock, counter, ready, n):
    ready.wait()
    for _ in range(n):
        with lock:
            counter.value += 1


def mp_lock_contended_per_s(n=100_000):
    """Two processes increment a shared counter n times each under one multiprocessing.Lock."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")

    def run():
        lock, counter, ready = ctx.Lock(), ctx.RawValue("q", 0), ctx.Barrier(2)
        p = ctx.Process(target=_contend, args=(lock, counter, ready, n))
        p.start()
        ready.wait()
        t0 = time.perf_counter()
        for _ in range(n):
            with lock:
                counter.value += 1
        p.join()
        elapsed = time.perf_counter() - t0
        assert counter.value == 2 * n
        return 2 * n / elapsed
    return max(run() for _ in range(REPS))


def shared_memory_ns(n=2_000):
    """SharedMemory(create=True, size=1 MiB), close, unlink."""
    from multiprocessing import shared_memory

    def run():
        t0 = time.perf_counter()
        for _ in range(n):
            shm = shared_memory.SharedMemory(create=True, size=1 << 20)
            shm.close()
            shm.unlink()
        return (time.perf_counter() - t0) / n * 1e9
    return best(run)


def _consume(q, n, ready, done):
    ready.set()
    for _ in range(n):
        q.get()
    done.set()


def mp_queue_oneway_per_s(n=100_000, make=lambda i: i):
    """multiprocessing.Queue: the parent puts n values (ints by default), a forked child gets
    them."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")

    def run():
        q, ready, done = ctx.Queue(), ctx.Event(), ctx.Event()
        p = ctx.Process(target=_consume, args=(q, n, ready, done))
        p.start()
        ready.wait()
        t0 = time.perf_counter()
        for i in range(n):
            q.put(make(i))
        done.wait()
        elapsed = time.perf_counter() - t0
        p.join()
        return n / elapsed
    return max(run() for _ in range(REPS))


def _echo(there, back):
    while True:
        v = there.get()
        back.put(v)
        if v < 0:
            break


def mp_queue_roundtrip_ns(n=10_000):
    """multiprocessing.Queue put -> get -> put back -> get, between two processes."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")

    def run():
        there, back = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_echo, args=(there, back))
        p.start()
        there.put(0)
        back.get()
        t0 = time.perf_counter()
        for i in range(n):
            there.put(i)
            back.get()
        elapsed = time.perf_counter() - t0
        there.put(-1)
        back.get()
        p.join()
        return elapsed / n * 1e9
    return best(run)


def run_true_per_s(n=300):
    """subprocess.run(['/bin/true']) per second."""
    import subprocess

    def run():
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(["/bin/true"])
        return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def posix_spawn_true_per_s(n=300):
    """os.posix_spawn + os.waitpid of /bin/true per second (Python's own fastest way)."""
    def run():
        t0 = time.perf_counter()
        for _ in range(n):
            pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
            os.waitpid(pid, 0)
        return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def run_echo_captured_per_s(n=300):
    """subprocess.run(['/bin/echo', 'hi'], capture_output=True) per second."""
    import subprocess

    def run():
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(["/bin/echo", "hi"], capture_output=True)
        return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def capture_64mib_bytes_per_s(n=3):
    """A child writing 64 MiB to stdout, captured by subprocess.run(stdout=PIPE)."""
    import subprocess
    size = 64 << 20

    def run():
        t0 = time.perf_counter()
        for _ in range(n):
            out = subprocess.run(["/usr/bin/head", "-c", str(size), "/dev/zero"],
                                 stdout=subprocess.PIPE).stdout
            assert len(out) == size
        return n * size / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def _trivial(x):
    return x + 1


def tpe_submit_result_ns(n=20_000):
    """ThreadPoolExecutor(2): submit(f).result(), one call at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def run():
        with ThreadPoolExecutor(2) as pool:
            x = 0
            t0 = time.perf_counter()
            for _ in range(n):
                x = pool.submit(_trivial, x).result()
            return (time.perf_counter() - t0) / n * 1e9
    return best(run)


def tpe_submit_all_per_s(n=10_000):
    """ThreadPoolExecutor(2): submit a batch, then collect every result."""
    from concurrent.futures import ThreadPoolExecutor

    def run():
        with ThreadPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            fs = [pool.submit(_trivial, i) for i in range(n)]
            for f in fs:
                f.result()
            return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def tpe_map_per_s(n=10_000):
    """ThreadPoolExecutor(2).map over a list (Python's map submits everything at once)."""
    from concurrent.futures import ThreadPoolExecutor

    def run():
        with ThreadPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            for _ in pool.map(_trivial, range(n)):
                pass
            return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def ppe_submit_result_ns(n=2_000):
    """ProcessPoolExecutor(2): submit(f).result(), one call at a time."""
    from concurrent.futures import ProcessPoolExecutor

    def run():
        with ProcessPoolExecutor(2) as pool:
            x = pool.submit(_trivial, 0).result()
            t0 = time.perf_counter()
            for _ in range(n):
                x = pool.submit(_trivial, x).result()
            return (time.perf_counter() - t0) / n * 1e9
    return best(run)


def ppe_map_per_s(chunksize, n=10_000):
    """ProcessPoolExecutor(2).map(f, range(n), chunksize=…)."""
    from concurrent.futures import ProcessPoolExecutor

    def run():
        with ProcessPoolExecutor(2) as pool:
            pool.submit(_trivial, 0).result()
            t0 = time.perf_counter()
            for _ in pool.map(_trivial, range(n), chunksize=chunksize):
                pass
            return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def pool_map_per_s(n=100_000):
    """multiprocessing.Pool(2).map over range(n), default chunksize."""
    import multiprocessing

    def run():
        with multiprocessing.Pool(2) as pool:
            pool.apply(_trivial, (0,))
            t0 = time.perf_counter()
            pool.map(_trivial, range(n))
            return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def pool_imap_unordered_per_s(n=10_000):
    """multiprocessing.Pool(2).imap_unordered over range(n), chunksize 1."""
    import multiprocessing

    def run():
        with multiprocessing.Pool(2) as pool:
            pool.apply(_trivial, (0,))
            t0 = time.perf_counter()
            for _ in pool.imap_unordered(_trivial, range(n)):
                pass
            return n / (time.perf_counter() - t0)
    return max(run() for _ in range(REPS))


def main():
    out = {
        "PoolMap": {"items_per_s": pool_map_per_s()},
        "PoolImapUnordered": {"items_per_s": pool_imap_unordered_per_s()},
        "PpeSubmitResult": {"ns_per_op": ppe_submit_result_ns()},
        "PpeMap/1": {"items_per_s": ppe_map_per_s(1)},
        "PpeMap/64": {"items_per_s": ppe_map_per_s(64)},
        "TpeSubmitResult": {"ns_per_op": tpe_submit_result_ns()},
        "TpeSubmitAll": {"items_per_s": tpe_submit_all_per_s()},
        "TpeMap": {"items_per_s": tpe_map_per_s()},
        "Lock": {"ns_per_op": lock_ns(threading.Lock)},
        "RLock": {"ns_per_op": lock_ns(threading.RLock)},
        "PingPong_Event": {"ns_per_op": event_pingpong_ns()},
        "PingPong_Condition": {"ns_per_op": condition_pingpong_ns()},
        "Queue/1": {"items_per_s": transfer_items_per_s(queue.Queue, 1)},
        "Queue/2": {"items_per_s": transfer_items_per_s(queue.Queue, 2)},
        "SimpleQueue/1": {"items_per_s": transfer_items_per_s(queue.SimpleQueue, 1)},
        "SimpleQueue/2": {"items_per_s": transfer_items_per_s(queue.SimpleQueue, 2)},
        "Sched_100k": {"items_per_s": sched_100k_items_per_s()},
        "PipePingPong64": {"ns_per_op": pipe_pingpong_ns()},
        "PipeOneWay/64": {"items_per_s": pipe_oneway(64)},
        "PipeOneWay/1048576": {"items_per_s": pipe_oneway(1 << 20)},
        "PipeOneWayRecord": {"items_per_s": pipe_oneway_record()},
        "ConnectAuth/tcp": {"ns_per_op": connect_auth_ns(False, False)},
        "ConnectAuth/unix": {"ns_per_op": connect_auth_ns(True, False)},
        "ConnectAuthRoundTrip/tcp": {"ns_per_op": connect_auth_ns(False, True, n=60)},
        "ConnectAuthRoundTrip/unix": {"ns_per_op": connect_auth_ns(True, True)},
        "ProcessStartJoin/fork": {"ns_per_op": process_start_join_ns("fork", 200)},
        "ProcessStartJoin/spawn": {"ns_per_op": process_start_join_ns("spawn", 20)},
        "ProcessStartJoin/forkserver": {"ns_per_op": process_start_join_ns("forkserver", 100)},
        "MpLock": {"ns_per_op": mp_lock_ns()},
        "MpLockContended": {"items_per_s": mp_lock_contended_per_s()},
        "SharedMemory1MiB": {"ns_per_op": shared_memory_ns()},
        "MpQueueOneWay": {"items_per_s": mp_queue_oneway_per_s()},
        "MpQueueOneWayString": {"items_per_s": mp_queue_oneway_per_s(make=lambda i: "x" * 16)},
        "MpQueueRoundTrip": {"ns_per_op": mp_queue_roundtrip_ns()},
        "RunTrue": {"items_per_s": run_true_per_s()},
        "PosixSpawnTrue": {"items_per_s": posix_spawn_true_per_s()},
        "RunEchoCaptured": {"items_per_s": run_echo_captured_per_s()},
        "Capture64MiB": {"bytes_per_s": capture_64mib_bytes_per_s()},
        "python": sys.version.split()[0],
    }
    if len(sys.argv) == 3 and sys.argv[1] == "--tls-dir":
        out["TlsOneWay/64"] = {"items_per_s": tls_oneway(sys.argv[2], 64)}
        out["TlsOneWay/1048576"] = {"items_per_s": tls_oneway(sys.argv[2], 1 << 20)}
        out["TlsConnectAuthRoundTrip"] = {"ns_per_op": tls_connect_auth_ns(sys.argv[2])}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
