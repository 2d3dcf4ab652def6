#!/usr/bin/env python3
"""Side-by-side comparison, in one run: troupe vs the hand-written std / raw-futex baselines vs
moodycamel vs CPython (threading, queue, sched). Prints a Markdown table of ratios, and with
--write updates the table in doc/benchmarks.md.

    python3 bench/compare.py [--build build] [--write] [--quick] [--hand-offs | --managers]

Ratios, not absolute times: these machines are shared and noisy. Each C++ figure is the median
of several repetitions; each Python figure is the best of three runs.

The ping-pong and hand-off rows run twice more: on the quiet machine and loaded, with as many
CPU-bound processes as CPUs running beside them (started and always stopped here), each against
its raw blocking baseline measured under the same load in the same run. --hand-offs runs only
those (a quick look at the waits). --managers runs only the managers rows (bench/managers_bench
next to bench/managers_python.py), which the full run includes, in their own section of the doc.
"""
import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cpp(binary, filt, reps, min_time, taskset=None, best=False):
    """{name: result} of the median of `reps` repetitions; with best=True the best repetition
    (least time, or most items per second), as the Python side's best of its runs."""
    # Repetitions of the benchmarks compared run mixed, not one block each: a busy spell of the
    # machine falls on both sides of a ratio.
    cmd = [binary, f"--benchmark_filter={filt}", "--benchmark_format=json",
           f"--benchmark_repetitions={reps}", f"--benchmark_min_time={min_time}",
           "--benchmark_enable_random_interleaving=true"]
    if not best:
        cmd.append("--benchmark_report_aggregates_only=true")
    if taskset:
        if not shutil.which("taskset"):
            return None
        cmd = ["taskset", "-c", taskset] + cmd
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = {}
    for b in json.loads(out)["benchmarks"]:
        if best and b.get("error_occurred"):
            sys.exit(f"compare: {os.path.basename(binary)} {b['name']}: {b.get('error_message')}")
        if best and b.get("run_type") == "aggregate":
            continue
        if not best and b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]
        name = re.sub(r"/(process_time|real_time|manual_time|iterations:\d+)", "", name)
        if best and name in res:
            old = res[name]
            if ("items_per_second" in b and b["items_per_second"] <= old["items_per_second"]) or \
                    ("items_per_second" not in b and ns(b) >= ns(old)):
                continue
        res[name] = b
    return res


# A CPU-bound process: it ends by itself once its parent is gone or after `limit` seconds.
BURNER = ("import os, time\n"
          "parent, end = os.getppid(), time.monotonic() + {limit}\n"
          "while os.getppid() == parent and time.monotonic() < end:\n"
          "    for _ in range(100000):\n"
          "        pass\n")


def die_with_parent():
    # In the child before exec: SIGKILL when compare.py dies, even by SIGKILL (PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the burner's own parent check still ends it


@contextlib.contextmanager
def loaded(n, limit=900):
    """n CPU-bound processes running beside the benchmark for the `with` block; killed and reaped
    when it ends, by an exception or Ctrl-C too (and by themselves if this process is killed)."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BURNER.format(limit=limit)],
                                          stdin=subprocess.DEVNULL, preexec_fn=die_with_parent))
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# The ping-pong and hand-off rows, run on the quiet machine and loaded: (label, binary, troupe's
# benchmark, the raw blocking baseline, the baseline's label, "time" or "rate").
HAND_OFFS = [
    ("Event ping-pong", "threading_bench", "BM_PingPong_Event_troupe", "BM_PingPong_raw_futex",
     "raw futex", "time"),
    ("Condition ping-pong", "threading_bench", "BM_PingPong_Condition_troupe",
     "BM_PingPong_std_condition_variable", "std::condition_variable", "time"),
    ("Lock, 2 threads taking it in turn", "threading_bench", "BM_LockContended_troupe",
     "BM_LockContended_std_mutex", "std::mutex", "rate"),
    ("Queue, 1 producer / 1 consumer", "threading_bench", "BM_Queue_troupe/1", "BM_Queue_std/1",
     "mutex+cv+deque", "rate"),
    ("Queue, 2 / 2", "threading_bench", "BM_Queue_troupe/2", "BM_Queue_std/2", "mutex+cv+deque",
     "rate"),
    ("SimpleQueue, 1 / 1", "threading_bench", "BM_SimpleQueue_troupe/1", "BM_Queue_std/1",
     "mutex+cv+deque", "rate"),
    ("SimpleQueue, 2 / 2", "threading_bench", "BM_SimpleQueue_troupe/2", "BM_Queue_std/2",
     "mutex+cv+deque", "rate"),
    ("Pipe ping-pong, 64 B", "connection_bench", "BM_PipePingPong64_troupe",
     "BM_PipePingPong64_raw", "raw socketpair", "time"),
    ("multiprocessing Lock, 2 processes in turn", "process_bench", "BM_MpLockContended_troupe",
     "BM_MpLockContended_raw", "robust pshared pthread mutex", "rate"),
    ("process Queue<long> one-way", "process_bench", "BM_QueueOneWay_troupe",
     "BM_QueueOneWay_raw", "socketpair write/read", "rate"),
    ("process Queue put -> get round trip", "process_bench", "BM_QueueRoundTrip_troupe",
     "BM_QueueRoundTrip_raw", "socketpair ping-pong", "time"),
    ("ThreadPoolExecutor(2) `submit(f).result()`", "futures_bench", "BM_SubmitResult_troupe",
     "BM_SubmitResult_std", "std thread pool", "time"),
    ("ProcessPoolExecutor(2) `submit(f).result()`", "futures_bench",
     "BM_ProcessSubmitResult_troupe", "BM_ProcessRoundTrip_raw", "two socketpairs by hand", "time"),
]


def hand_off_filter(binary):
    names = [n for _, b, ours, base, _, _ in HAND_OFFS if b == binary for n in (ours, base)]
    return "^(" + "|".join(re.escape(n) for n in dict.fromkeys(names)) + ")(/|$)"


# Loaded, the same benchmark moves 2x between repetitions (which thread the scheduler lets run
# alone, and for how long): at least this many repetitions there, so that the median means
# something.
LOADED_REPS = 9
# And each repetition runs at least this long (seconds; --quick: its own min_time): loaded, the
# scheduler's placement of the two sides holds for around a second, and a shorter repetition
# falls wholly in one or the other (a Pipe round trip then takes 12 µs, or 150).
LOADED_MIN_TIME = 1.0


def run_hand_offs(build, reps, min_time):
    """Every hand-off row's benchmarks, per binary: {binary: results}."""
    res = {}
    for binary in dict.fromkeys(b for _, b, *_ in HAND_OFFS):
        path = os.path.join(build, "bench", binary)
        if os.path.exists(path):
            res[binary] = run_cpp(path, hand_off_filter(binary), reps, min_time)
    return res


def hand_off_table(quiet, busy, n, verdicts):
    """Quiet and loaded figures side by side: loaded, troupe is to be no slower than the raw
    blocking baseline (within the 10% these machines move between repetitions); quiet, ahead."""
    out = [f"| ping-pong / hand-off | baseline | quiet: troupe | quiet: baseline | quiet ratio | "
           f"loaded ({n} CPU-bound processes): troupe | loaded: baseline | loaded ratio | "
           f"target | |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, binary, ours, base, base_label, kind in HAND_OFFS:
        q, b = quiet.get(binary), busy.get(binary)
        if not q or not b or not all(n in r for r in (q, b) for n in (ours, base)):
            continue
        cells, ratios = [], []
        for res in (q, b):
            if kind == "time":
                t, r = ns(res[ours]), ns(res[base])
                cells += [fmt_ns(t), fmt_ns(r)]
                ratios.append(t / r)  # time: below 1 is faster
            else:
                t, r = ips(res[ours]), ips(res[base])
                cells += [fmt_rate(t), fmt_rate(r)]
                ratios.append(r / t)  # as a time ratio too: below 1 is faster
        ok = ratios[1] <= 1.1 and ratios[0] <= 1.0
        verdicts.append(ok)
        unit = "time" if kind == "time" else "time (1/rate)"
        out.append(f"| {label} | {base_label} | {cells[0]} | {cells[1]} | **{ratios[0]:.2f}×** "
                   f"{unit} | {cells[2]} | {cells[3]} | **{ratios[1]:.2f}×** {unit} | "
                   f"quiet ≤ 1×, loaded ≤ 1.1× | {'met' if ok else 'MISSED'} |")
    return out


def ns(b):
    scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def cpu_ns(b):
    scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
    return b["cpu_time"] * scale


def ips(b):
    return b["items_per_second"]


def fmt_ns(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e3:
        return f"{v / 1e3:.2f} µs"
    return f"{v:.1f} ns"


def fmt_rate(v, unit_bytes=None):
    if unit_bytes:  # messages/s of unit_bytes each, shown as bytes per second
        return f"{v * unit_bytes / 1e9:.2f} GB/s" if v * unit_bytes >= 1e9 else f"{v * unit_bytes / 1e6:.0f} MB/s"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M/s"
    return f"{v / 1e3:.0f} k/s" if v >= 1e3 else f"{v:.0f}/s"


# ---- managers (issue 17) --------------------------------------------------------------------

MANAGERS_BEGIN, MANAGERS_END = "<!-- compare.py:managers:begin -->", "<!-- compare.py:managers:end -->"


def py_ns(e):
    """A Python figure as ns per operation: python_bench.py's ns_per_op, or managers_python.py's
    {"value", "unit": "us"}."""
    return e["ns_per_op"] if "ns_per_op" in e else e["value"] * {"us": 1e3, "ns": 1}[e["unit"]]


def py_rate(e):
    """A Python figure as operations per second (items_per_s, or {"value", "unit": "per_s"})."""
    if "items_per_s" in e:
        return e["items_per_s"]
    if e["unit"] != "per_s":
        raise ValueError(f"not a rate: {e}")
    return e["value"]


def verdict(ok):
    return "met" if ok else "MISSED"


def faster(r, digits=2):
    """A speed-up against Python, said plainly when it is a slow-down."""
    return f"**{r:.{digits}f}×** faster" if r >= 1 else f"**{r:.{digits}f}×** (slower)"


def managers_section(build, reps, quick, verdicts):
    """The manager rows: bench/managers_bench (troupe, the Pipe ping-pong of a call's size, and
    Listener/Client's connect + auth from connection_bench) and bench/managers_python.py, in one
    run; round trips quiet and loaded. Returns the Markdown lines (None without the binary)."""
    binary = os.path.join(build, "bench", "managers_bench")
    if not os.path.exists(binary):
        print(f"compare: {binary} not found; the managers rows are left out", file=sys.stderr)
        return None
    min_time = 0.1 if quick else 0.3
    rt_filter = "^(BM_ProxyCall_typed|BM_ProxyCall_callmethod|BM_PipePingPong_process|BM_PipePingPong_thread)(/|$)"
    print("compare: managers: round trips, pipelined calls, connect…", file=sys.stderr)
    cpp = run_cpp(binary, rt_filter + "|^BM_ProxyPipelined/|^BM_Connect/|^BM_ProxyLargeArgument/",
                  reps, min_time, best=True)
    print("compare: managers: the queue recipe, 4 workers…", file=sys.stderr)
    recipe = run_cpp(binary, "^BM_QueueRecipe4Workers/", 1 if quick else 3, min_time, best=True)
    print("compare: managers: a managed Pool…", file=sys.stderr)
    pools = run_cpp(binary, "^BM_Pool(Apply|Map)/", reps, min_time, best=True)
    conn_bin = os.path.join(build, "bench", "connection_bench")
    auth = None
    if os.path.exists(conn_bin):
        auth = run_cpp(conn_bin, r"^BM_ConnectAuth_(troupe|raw)/[01]/0/0(/|$)", reps, min_time,
                       best=True)
    n_load = os.cpu_count() or 1
    print(f"compare: managers: round trips beside {n_load} CPU-bound processes…", file=sys.stderr)
    with loaded(n_load):
        busy = run_cpp(binary, rt_filter, reps, min_time, best=True)
    print("compare: managers: 1000 clients x 1000 calls, the server's memory…", file=sys.stderr)
    clients, calls = (1000, 100) if quick else (1000, 1000)
    mem = json.loads(subprocess.run(
        [binary, "--clients-memory", "--clients", str(clients), "--calls", str(calls),
         "--processes", "4", "--waves", "2"], check=True, capture_output=True, text=True).stdout)
    print("compare: managers: Python's managers…", file=sys.stderr)
    py_cmd = [sys.executable, os.path.join(ROOT, "bench", "managers_python.py")]
    if quick:
        py_cmd.append("--quick")
    py = json.loads(subprocess.run(py_cmd, check=True, capture_output=True, text=True).stdout)

    pipe, pipe_thread = cpp["BM_PipePingPong_process"], cpp["BM_PipePingPong_thread"]
    size = int(pipe["bytes"])
    rows = [f"| managers workload | troupe | baseline | troupe vs baseline | Python "
            f"{platform.python_version()} | troupe vs Python | target | |",
            "|---|---|---|---|---|---|---|---|"]
    for fam, arg, label in [("unix", 0, "Unix socket (abstract)"), ("tcp", 1, "TCP 127.0.0.1")]:
        p = py_ns(py[f"ProxyCallRoundTrip/{fam}"])
        for bench, form in [("BM_ProxyCall_typed", "`call<&Maths::add>`, a quick typeid"),
                            ("BM_ProxyCall_callmethod", "`_callmethod`, a registered class")]:
            t, b = ns(cpp[f"{bench}/{arg}"]), ns(pipe)
            # The issue's Pipe target is the Unix socket's; both want >= 5x Python.
            ok = p / t >= 5 and (fam == "tcp" or t / b <= 1.5)
            verdicts.append(ok)
            target = ("≤ 1.5× Pipe; ≥ 5× Python" if fam == "unix" else "≥ 5× Python")
            rows.append(f"| proxy call round trip, {label}, {form} | {fmt_ns(t)} | Pipe ping-pong "
                        f"{size} B, 2 processes {fmt_ns(b)} | **{t / b:.2f}×** time | {fmt_ns(p)} "
                        f"| {faster(p / t)} | {target} | {verdict(ok)} |")
    for fam, arg, label in [("unix", 0, "Unix"), ("tcp", 1, "TCP")]:
        one_call = 1e9 / ns(cpp[f"BM_ProxyCall_typed/{arg}"])
        for window in (64, 256):
            r = ips(cpp[f"BM_ProxyPipelined/{arg}/{window}"])
            ok = r >= 500e3
            verdicts.append(ok)
            rows.append(f"| pipelined `async_call` on one proxy, {window} in flight, {label} | "
                        f"{fmt_rate(r)} | one call at a time {fmt_rate(one_call)} | "
                        f"**{r / one_call:.2f}×** rate | — | — | ≥ 500 k/s | {verdict(ok)} |")
    p = py["LargeArgument/unix"]["value"]
    one = cpp["BM_ProxyLargeArgument/4/1"]["bytes_per_second"]
    for window in (1, 4):
        r = cpp[f"BM_ProxyLargeArgument/4/{window}"]["bytes_per_second"]
        rows.append(f"| a call with a 4 MiB `bytes` argument, {window} in flight, Unix (bytes/s) | "
                    f"{r / 1e9:.2f} GB/s | one at a time {one / 1e9:.2f} GB/s | **{r / one:.2f}×** "
                    f"rate | {p / 1e9:.2f} GB/s (one at a time) | {faster(r / p)} | — | — |")
    for fam, arg, label in [("tcp", 1, "TCP"), ("unix", 0, "Unix")]:
        t = ns(cpp[f"BM_Connect/{arg}/1"])
        alone = ns(cpp[f"BM_Connect/{arg}/0"])
        base = f"`connect()` alone {fmt_ns(alone)}"
        if auth:
            base += (f"; Listener/Client connect + auth {fmt_ns(ns(auth[f'BM_ConnectAuth_troupe/{arg}/0/0']))}"
                     f" (by hand {fmt_ns(ns(auth[f'BM_ConnectAuth_raw/{arg}/0/0']))})")
        if fam == "tcp":
            p, pn = py_ns(py["ConnectCreateCall/tcp"]), py_ns(py["ConnectCreateCall/tcp_nodelay"])
            ok = t <= 0.3e6
            verdicts.append(ok)
            rows.append(f"| connect + create + first call, {label} | {fmt_ns(t)} | {base} | "
                        f"**{t / alone:.2f}×** time | {fmt_ns(p)} (Nagle); {fmt_ns(pn)} "
                        f"(TCP_NODELAY) | **{p / t:.0f}×** / **{pn / t:.1f}×** faster | ≤ 0.3 ms "
                        f"| {verdict(ok)} |")
        else:
            p = py_ns(py["ConnectCreateCall/unix"])
            rows.append(f"| connect + create + first call, {label} | {fmt_ns(t)} | {base} | "
                        f"**{t / alone:.2f}×** time | {fmt_ns(p)} | {faster(p / t, 1)} | — "
                        f"| — |")
    for fam, arg, label in [("tcp", 1, "TCP"), ("unix", 0, "Unix")]:
        p = py_rate(py[f"QueueRecipe4Workers/{fam}"])
        for mode, how in [(0, "call by call"), (1, "pipelined (`async_put`, `async_get`; each worker 16 gets in flight on a `Lane`)")]:
            r = ips(recipe[f"BM_QueueRecipe4Workers/{arg}/20000/{mode}"])
            ok = r / p >= 10
            verdicts.append(ok)
            rows.append(f"| the docs' queue recipe, 4 worker processes, {label}, {how} "
                        f"(tasks/s) | {r / 1e3:.2f} k/s | — | — | {p / 1e3:.2f} k/s | "
                        f"{faster(r / p)} | ≥ 10× Python | {verdict(ok)} |")
    for bench, key, label in [
            ("BM_PoolApply", "ManagedPoolApply/unix", "`apply(square, i)`, one at a time"),
            ("BM_PoolMap", "ManagedPoolMap/unix", "`map(square, range(1000))`")]:
        t, b, p = ns(pools[f"{bench}/0"]), ns(pools[f"{bench}/1"]), py_ns(py[key])
        rows.append(f"| a managed Pool(2) (`SyncManager::Pool`), Unix: {label} | {fmt_ns(t)} | "
                    f"troupe's own Pool(2) {fmt_ns(b)} | **{t / b:.2f}×** time | {fmt_ns(p)} | "
                    f"{faster(p / t)} | — | — |")
    mib = lambda v: v / 2**20  # noqa: E731
    first, second = mem["waves"][0], mem["waves"][-1]
    grow = mib(first["rss_after"] - mem["rss_before"])
    threads = max(max(w["threads_connected"], w["threads_busy"], w["threads_after"])
                  for w in mem["waves"])
    ok = mem["ok"] and grow <= 16 and threads <= mem["threads_before"] + 2
    verdicts.append(ok)
    rows.append(f"| {mem['clients']} clients (connections, in {mem['processes']} processes) × "
                f"{mem['calls']} calls: the server's RSS after, over before | **+{grow:.1f} MiB** "
                f"({mib(mem['rss_before']):.1f} → {mib(first['rss_after']):.1f} MiB; "
                f"{mib(first['rss_connected'] - mem['rss_before']):.1f} MiB more with all "
                f"connected; a second wave: +{mib(second['rss_after'] - first['rss_after']):.1f} "
                f"MiB more); threads {mem['threads_before']} before, at most {threads}; "
                f"{first['calls_per_s'] / 1e3:.0f} k calls/s | — | — | — | — | ≤ +16 MiB; threads "
                f"bounded | {verdict(ok)} |")

    place = ["| round trip | quiet: troupe | quiet: Pipe 2 processes | quiet ratio | "
             f"loaded ({n_load} CPU-bound processes): troupe | loaded: Pipe | loaded ratio | "
             "target | |", "|---|---|---|---|---|---|---|---|---|"]
    for bench, label in [("BM_ProxyCall_typed/0", "`call<&Maths::add>`, Unix"),
                         ("BM_ProxyCall_callmethod/0", "`_callmethod`, Unix"),
                         ("BM_ProxyCall_typed/1", "`call<&Maths::add>`, TCP"),
                         ("BM_PipePingPong_thread", f"Pipe ping-pong {size} B, 2 threads")]:
        q, l = ns(cpp[bench]), ns(busy[bench])
        qb, lb = ns(pipe), ns(busy["BM_PipePingPong_process"])
        unix_call = bench.startswith("BM_ProxyCall") and bench.endswith("/0")
        ok = q / qb <= 1.5 and l / lb <= 1.5
        if unix_call:
            verdicts.append(ok)
        rows_target = "≤ 1.5× Pipe, both" if unix_call else "—"
        place.append(f"| {label} | {fmt_ns(q)} | {fmt_ns(qb)} | **{q / qb:.2f}×** | {fmt_ns(l)} | "
                     f"{fmt_ns(lb)} | **{l / lb:.2f}×** | {rows_target} | "
                     f"{verdict(ok) if unix_call else '—'} |")

    where = ["| per call (quiet, best repetition) | client context switches | server context "
             "switches | server CPU |", "|---|---|---|---|"]
    for bench, label in [("BM_ProxyCall_typed/0", "`call<&Maths::add>`, Unix"),
                         ("BM_ProxyCall_typed/1", "`call<&Maths::add>`, TCP"),
                         ("BM_ProxyPipelined/0/64", "pipelined, 64 in flight, Unix"),
                         ("BM_PipePingPong_process", f"Pipe ping-pong {size} B (the echoing child)")]:
        b = cpp[bench]
        where.append(f"| {label} | {b['client_switches']:.1f} | {b['server_switches']:.1f} | "
                     f"{b['server_cpu_us']:.1f} µs |")

    header = (f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs, `python3 bench/compare.py --managers"
              f"{' --quick' if quick else ''}` (C++: the best of {reps} repetitions, each on a new "
              f"server, run interleaved; the recipe the best of {1 if quick else 3}; Python "
              f"(`bench/managers_python.py`): the best of its runs' medians, the recipe the best "
              f"of {1 if quick else 3}). Servers in child processes started with fork.")
    return [header, "", *rows, "", *place, "", *where, ""]


def write_section(begin, end, text):
    path = os.path.join(ROOT, "doc", "benchmarks.md")
    doc = open(path).read()
    i, j = doc.index(begin) + len(begin), doc.index(end)
    open(path, "w").write(doc[:i] + "\n" + text + doc[j:])
    print(f"compare: wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--write", action="store_true", help="update doc/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--hand-offs", action="store_true",
                    help="only the ping-pong and hand-off rows, quiet and loaded")
    ap.add_argument("--managers", action="store_true",
                    help="only the managers rows (bench/managers_bench, managers_python.py)")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the load's processes are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.managers:
        verdicts = []
        lines = managers_section(args.build, 3 if args.quick else 5, args.quick, verdicts)
        if lines is None:
            sys.exit("compare: build bench/managers_bench first (meson -Dbenchmarks=true)")
        text = "\n".join(lines)
        print(text)
        if args.write:
            write_section(MANAGERS_BEGIN, MANAGERS_END, text)
        missed = verdicts.count(False)
        print(f"compare: {len(verdicts) - missed} targets met, {missed} missed", file=sys.stderr)
        return

    binary = os.path.join(args.build, "bench", "threading_bench")
    if not os.path.exists(binary):
        sys.exit(f"compare: {binary} not found; build first (scripts/test.sh builds it)")
    reps, min_time = (3, 0.1) if args.quick else (5, 0.3)
    n_load = os.cpu_count() or 1

    if args.hand_offs:
        verdicts = []
        print("compare: the hand-offs on the quiet machine…", file=sys.stderr)
        quiet = run_hand_offs(args.build, reps, min_time)
        print(f"compare: the hand-offs beside {n_load} CPU-bound processes…", file=sys.stderr)
        with loaded(n_load):
            busy = run_hand_offs(args.build, max(reps, LOADED_REPS),
                                 min_time if args.quick else LOADED_MIN_TIME)
        print(f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs, `python3 bench/compare.py --hand-offs` (median of {reps} "
              f"repetitions quiet, {max(reps, LOADED_REPS)} loaded of at least "
              f"{min_time if args.quick else LOADED_MIN_TIME} s each, run interleaved).\n")
        print("\n".join(hand_off_table(quiet, busy, n_load, verdicts)))
        missed = verdicts.count(False)
        print(f"compare: {len(verdicts) - missed} targets met, {missed} missed", file=sys.stderr)
        return

    print("compare: running the C++ benchmarks…", file=sys.stderr)
    cpp = run_cpp(binary, ".", reps, min_time)
    conn_bin = os.path.join(args.build, "bench", "connection_bench")
    conn = run_cpp(conn_bin, ".", reps, min_time) if os.path.exists(conn_bin) else None
    print("compare: ping-pongs pinned to one CPU and to two…", file=sys.stderr)
    one = run_cpp(binary, "PingPong", reps, min_time, taskset="0")
    two = run_cpp(binary, "PingPong", reps, min_time, taskset="0,1") if os.cpu_count() > 1 else None
    print("compare: running the Python workloads…", file=sys.stderr)
    py_args = [sys.executable, os.path.join(ROOT, "bench", "python_bench.py")]
    with tempfile.TemporaryDirectory() as tls_dir:
        if conn:  # the TLS workloads use connection_bench's test certificates
            subprocess.run([conn_bin, "--write-tls-files", tls_dir], check=True)
            py_args += ["--tls-dir", tls_dir]
        py = json.loads(subprocess.run(py_args, check=True, capture_output=True, text=True).stdout)

    rows = []
    verdicts = []

    def time_row(label, ours, base, base_label, pyname, target, target_text, py_target=None):
        res = cpp if ours in cpp else conn
        t, b, p = ns(res[ours]), ns(res[base]), py[pyname]["ns_per_op"]
        r_base = t / b
        r_py = p / t
        ok = r_base <= target and (py_target is None or r_py >= py_target)
        verdicts.append(ok)
        rows.append(f"| {label} | {fmt_ns(t)} | {base_label} {fmt_ns(b)} | **{r_base:.2f}×** time | "
                    f"{fmt_ns(p)} | **{r_py:.1f}×** faster | {target_text} | {'met' if ok else 'MISSED'} |")

    def rate_row(label, ours, base, base_label, pyname, target, target_text, py_target=None):
        t, b, p = ips(cpp[ours]), ips(cpp[base]), py[pyname]["items_per_s"]
        r_base = t / b
        r_py = t / p
        ok = r_base >= target and (py_target is None or r_py >= py_target)
        verdicts.append(ok)
        rows.append(f"| {label} | {fmt_rate(t)} | {base_label} {fmt_rate(b)} | **{r_base:.2f}×** rate | "
                    f"{fmt_rate(p)} | **{r_py:.1f}×** faster | {target_text} | {'met' if ok else 'MISSED'} |")

    time_row("Lock acquire+release, uncontended", "BM_Lock_troupe", "BM_Lock_std_mutex",
             "std::mutex", "Lock", 1.5, "≤ 1.5× std::mutex")
    time_row("RLock acquire+release, uncontended", "BM_RLock_troupe",
             "BM_RLock_std_recursive_mutex", "std::recursive_mutex", "RLock", 1.5,
             "≤ 1.5× std::recursive_mutex")
    time_row("Event ping-pong, per round trip", "BM_PingPong_Event_troupe", "BM_PingPong_raw_futex",
             "raw futex", "PingPong_Event", 1.3, "≤ 1.3× raw futex; ≥ 5× Python", 5)
    time_row("Condition ping-pong, per round trip", "BM_PingPong_Condition_troupe",
             "BM_PingPong_std_condition_variable", "std::condition_variable",
             "PingPong_Condition", 1.3, "≤ 1.3× std::condition_variable; ≥ 5× Python", 5)
    rate_row("Queue, 1 producer / 1 consumer", "BM_Queue_troupe/1", "BM_Queue_std/1",
             "mutex+cv+deque", "Queue/1", 1.0, "≥ 1× std baseline; ≥ 20× Python", 20)
    rate_row("Queue, 2 producers / 2 consumers", "BM_Queue_troupe/2", "BM_Queue_std/2",
             "mutex+cv+deque", "Queue/2", 1.0, "≥ 1× std baseline; ≥ 20× Python", 20)
    rate_row("SimpleQueue, 1 / 1", "BM_SimpleQueue_troupe/1", "BM_SimpleQueue_moodycamel/1",
             "moodycamel", "SimpleQueue/1", 0.5, "≥ 0.5× moodycamel")
    rate_row("SimpleQueue, 2 / 2", "BM_SimpleQueue_troupe/2", "BM_SimpleQueue_moodycamel/2",
             "moodycamel", "SimpleQueue/2", 0.5, "≥ 0.5× moodycamel")
    t, p = ips(cpp["BM_Sched_100k_troupe"]), py["Sched_100k"]["items_per_s"]
    rows.append(f"| sched: enter + run 100k events | {fmt_rate(t)} | — | — | {fmt_rate(p)} | "
                f"**{t / p:.1f}×** faster | — | — |")

    if conn:
        time_row("Pipe ping-pong, 64 B, per round trip", "BM_PipePingPong64_troupe",
                 "BM_PipePingPong64_raw", "raw socketpair", "PipePingPong64", 1.3,
                 "≤ 1.3× raw; ≥ 3× Python", 3)
        for size, label, target in [(64, "64 B", 0.8), (1 << 20, "1 MiB", 0.8)]:
            t = ips(conn[f"BM_PipeOneWay_troupe/{size}"])
            b = ips(conn[f"BM_PipeOneWay_raw/{size}"])
            p = py[f"PipeOneWay/{size}"]["items_per_s"]
            ok = t / b >= target and (size != 64 or t / p >= 3)
            verdicts.append(ok)
            u = size if size > 64 else None
            rows.append(f"| Pipe one-way, {label} messages | {fmt_rate(t, u)} | raw socketpair "
                        f"{fmt_rate(b, u)} | **{t / b:.2f}×** rate | {fmt_rate(p, u)} | "
                        f"**{t / p:.1f}×** faster | ≥ 0.8× raw" + ("; ≥ 3× Python" if size == 64 else "")
                        + f" | {'met' if ok else 'MISSED'} |")

        for size, label in [(64, "64 B"), (1 << 20, "1 MiB")]:
            t = ips(conn[f"BM_PipeOneWayTyped_troupe/{size}"])
            b = ips(conn[f"BM_PipeOneWay_raw/{size}"])
            p = py[f"PipeOneWay/{size}"]["items_per_s"]
            ok = t / b >= 0.8 and (size != 64 or t / p >= 3)
            verdicts.append(ok)
            u = size if size > 64 else None
            rows.append(f"| Pipe one-way, typed `send<std::vector<std::byte>>`, {label} | "
                        f"{fmt_rate(t, u)} | raw socketpair {fmt_rate(b, u)} | **{t / b:.2f}×** rate | "
                        f"{fmt_rate(p, u)} (send_bytes) | **{t / p:.1f}×** faster | ≥ 0.8× raw"
                        + ("; ≥ 3× Python" if size == 64 else "") + f" | {'met' if ok else 'MISSED'} |")
        t, p = ips(conn["BM_PipeOneWayRecord_troupe"]), py["PipeOneWayRecord"]["items_per_s"]
        rows.append(f"| Pipe one-way, a small record (id, name, 4 floats): `send`/`recv<T>` | "
                    f"{fmt_rate(t)} | — | — | {fmt_rate(p)} (pickle) | **{t / p:.1f}×** faster | — | — |")
        for fam, arg in [("TCP 127.0.0.1", 0), ("Unix socket", 1)]:
            for rt, what in [(0, "connect + mutual auth"), (1, "connect + auth + 64 B round trip")]:
                t = ns(conn[f"BM_ConnectAuth_troupe/{arg}/{rt}/0"])
                b = ns(conn[f"BM_ConnectAuth_raw/{arg}/{rt}/0"])
                pname = ("ConnectAuthRoundTrip/" if rt else "ConnectAuth/") + ("unix" if arg else "tcp")
                p = py[pname]["ns_per_op"]
                ok = t / b <= 2
                verdicts.append(ok)
                rows.append(f"| Listener/Client {what}, {fam} | {fmt_ns(t)} | raw (blocking "
                            f"syscalls, EVP_MAC) {fmt_ns(b)} | **{t / b:.2f}×** time | {fmt_ns(p)} | "
                            f"**{p / t:.1f}×** faster | ≤ 2× raw | {'met' if ok else 'MISSED'} |")

        for size, label in [(64, "64 B"), (1 << 20, "1 MiB")]:
            t = ips(conn[f"BM_TlsOneWay_troupe/{size}"])
            b = ips(conn[f"BM_TlsOneWay_raw/{size}"])
            p = py[f"TlsOneWay/{size}"]["items_per_s"]
            u = size if size > 64 else None
            rows.append(f"| TLS (TCP 127.0.0.1) one-way, {label} messages | {fmt_rate(t, u)} | "
                        f"OpenSSL by hand {fmt_rate(b, u)} | **{t / b:.2f}×** rate | "
                        f"{fmt_rate(p, u)} (ssl) | **{t / p:.1f}×** faster | — | — |")
        t, b = ns(conn["BM_ConnectAuth_troupe/0/1/1"]), ns(conn["BM_ConnectAuth_raw/0/1/1"])
        p = py["TlsConnectAuthRoundTrip"]["ns_per_op"]
        rows.append(f"| TLS connect + TLS handshake + mutual auth + 64 B round trip, TCP | "
                    f"{fmt_ns(t)} | OpenSSL by hand {fmt_ns(b)} | **{t / b:.2f}×** time | "
                    f"{fmt_ns(p)} (ssl) | **{p / t:.1f}×** faster | — | — |")

    proc = fut = None
    proc_bin = os.path.join(args.build, "bench", "process_bench")
    if os.path.exists(proc_bin):
        print("compare: process start + join…", file=sys.stderr)
        proc = run_cpp(proc_bin, ".", reps, min_time)
        for arg, method, raw, raw_label in [
                (0, "fork", "BM_ForkExitWait_raw", "fork + _exit + waitpid"),
                (1, "spawn", "BM_PosixSpawnWait_raw", "posix_spawn + waitpid of the same binary"),
                (2, "forkserver", "BM_ForkExitWait_raw", "fork + _exit + waitpid")]:
            t = ns(proc[f"BM_ProcessStartJoin_troupe/{arg}"])
            b = ns(proc[raw])
            p = py[f"ProcessStartJoin/{method}"]["ns_per_op"]
            # The issue sets a raw-ratio target for fork and spawn; the forkserver's child is a
            # fork in another process plus a request, so only the Python target applies to it.
            raw_target = method != "forkserver"
            ok = (t / b <= 1.5 or not raw_target) and p / t >= 5
            verdicts.append(ok)
            target = "≤ 1.5× raw; ≥ 5× Python" if raw_target else "≥ 5× Python"
            rows.append(f"| Process start + join, {method}, trivial target | {fmt_ns(t)} | "
                        f"{raw_label} {fmt_ns(b)} | **{t / b:.2f}×** time | {fmt_ns(p)} | "
                        f"**{p / t:.1f}×** faster | {target} | "
                        f"{'met' if ok else 'MISSED'} |")

        # Between processes: the process-shared Lock and SharedMemory.
        t, b, p = ns(proc["BM_MpLock_troupe"]), ns(proc["BM_MpLock_raw"]), py["MpLock"]["ns_per_op"]
        rows.append(f"| multiprocessing Lock acquire + release, uncontended | {fmt_ns(t)} | "
                    f"robust pshared pthread mutex {fmt_ns(b)} | **{t / b:.2f}×** time | "
                    f"{fmt_ns(p)} | **{p / t:.1f}×** faster | — | — |")
        t = ips(proc["BM_MpLockContended_troupe"])
        b = ips(proc["BM_MpLockContended_raw"])
        p = py["MpLockContended"]["items_per_s"]
        rows.append(f"| multiprocessing Lock, 2 processes taking it in turn (counter += 1) | "
                    f"{fmt_rate(t)} | robust pshared pthread mutex {fmt_rate(b)} | "
                    f"**{t / b:.2f}×** rate | {fmt_rate(p)} | **{t / p:.1f}×** faster | — | — |")
        t, b = ns(proc["BM_SharedMemory1MiB_troupe/1"]), ns(proc["BM_SharedMemory1MiB_raw"])
        u = ns(proc["BM_SharedMemory1MiB_troupe/0"])
        p = py["SharedMemory1MiB"]["ns_per_op"]
        rows.append(f"| SharedMemory 1 MiB create + map + close + unlink (track=false: "
                    f"{fmt_ns(u)}, {u / b:.2f}× raw) | {fmt_ns(t)} | shm_open/ftruncate/mmap "
                    f"{fmt_ns(b)} | **{t / b:.2f}×** time | {fmt_ns(p)} | **{p / t:.1f}×** "
                    f"faster | — | — |")
        t, b = ips(proc["BM_QueueOneWay_troupe"]), ips(proc["BM_QueueOneWay_raw"])
        p = py["MpQueueOneWay"]["items_per_s"]
        ok = t / p >= 10
        verdicts.append(ok)
        rows.append(f"| process Queue<long> one-way, parent -> child | {fmt_rate(t)} | "
                    f"socketpair write/read of 8 B {fmt_rate(b)} | **{t / b:.2f}×** rate | "
                    f"{fmt_rate(p)} | **{t / p:.1f}×** faster | ≥ 10× Python | "
                    f"{'met' if ok else 'MISSED'} |")
        t, p = ips(proc["BM_QueueOneWayString_troupe"]), py["MpQueueOneWayString"]["items_per_s"]
        rows.append(f"| process Queue<std::string> (16 B, through the codec) one-way | "
                    f"{fmt_rate(t)} | — | — | {fmt_rate(p)} | **{t / p:.1f}×** faster | — | — |")
        t, b = ns(proc["BM_QueueRoundTrip_troupe"]), ns(proc["BM_QueueRoundTrip_raw"])
        p = py["MpQueueRoundTrip"]["ns_per_op"]
        ok = t / b <= 1.5 and p / t >= 10
        verdicts.append(ok)
        rows.append(f"| process Queue put -> get round trip, 2 processes | {fmt_ns(t)} | "
                    f"socketpair ping-pong {fmt_ns(b)} | **{t / b:.2f}×** time | {fmt_ns(p)} | "
                    f"**{p / t:.1f}×** faster | ≤ 1.5× raw; ≥ 10× Python | "
                    f"{'met' if ok else 'MISSED'} |")

    sub_bin = os.path.join(args.build, "bench", "subprocess_bench")
    if os.path.exists(sub_bin):
        print("compare: subprocess…", file=sys.stderr)
        sub = run_cpp(sub_bin, ".", reps, min_time)
        t, b = ips(sub["BM_RunTrue_troupe/0"]), ips(sub["BM_RunTrue_raw/0"])
        p, ps = py["RunTrue"]["items_per_s"], py["PosixSpawnTrue"]["items_per_s"]
        ok = t / b >= 0.9
        verdicts.append(ok)
        rows.append(f"| subprocess `run({{\"true\"}})` | {fmt_rate(t)} | posix_spawn + waitpid "
                    f"{fmt_rate(b)} | **{t / b:.2f}×** rate | {fmt_rate(p)} (os.posix_spawn "
                    f"{fmt_rate(ps)}) | **{t / p:.1f}×** faster | ≥ 0.9× raw | "
                    f"{'met' if ok else 'MISSED'} |")
        t, b = ips(sub["BM_RunTrue_troupe/1"]), ips(sub["BM_RunTrue_raw/1"])
        f = ips(sub["BM_ForkExecTrue_raw/1"])
        small = ips(sub["BM_RunTrue_troupe/0"])
        rows.append(f"| subprocess `run({{\"true\"}})` from a parent with 4 GiB resident | "
                    f"{fmt_rate(t)} ({t / small:.2f}× the small parent's) | posix_spawn "
                    f"{fmt_rate(b)}; fork + exec {fmt_rate(f)} | **{t / b:.2f}×** / "
                    f"**{t / f:.0f}×** rate | — | — | no page-table copy | "
                    f"{'met' if t / f >= 5 else 'MISSED'} |")
        t, b = ips(sub["BM_RunEchoCaptured_troupe"]), ips(sub["BM_RunEchoCaptured_raw"])
        p = py["RunEchoCaptured"]["items_per_s"]
        ok = t / b >= 0.8
        verdicts.append(ok)
        rows.append(f"| subprocess `run` capturing `echo hi` | {fmt_rate(t)} | posix_spawn + "
                    f"pipe read {fmt_rate(b)} | **{t / b:.2f}×** rate | {fmt_rate(p)} | "
                    f"**{t / p:.1f}×** faster | ≥ 0.8× raw | {'met' if ok else 'MISSED'} |")
        t = sub["BM_Capture64MiB_troupe"]["bytes_per_second"]
        k = sub["BM_Capture64MiBKept_raw"]["bytes_per_second"]
        b = sub["BM_Capture64MiB_raw"]["bytes_per_second"]
        p = py["Capture64MiB"]["bytes_per_s"]
        # Against the capture a user would write by hand; the read that keeps nothing (what the
        # pipe gives) is shown beside it, for information.
        ok = t / k >= 1
        verdicts.append(ok)
        rows.append(f"| subprocess: a child writing 64 MiB to stdout, captured | "
                    f"{t / 1e6:.0f} MB/s | captured by hand (read loop appending to a "
                    f"std::string) {k / 1e6:.0f} MB/s; pipe read, thrown away {b / 1e6:.0f} MB/s "
                    f"| **{t / k:.2f}×** / {t / b:.2f}× (thrown away) rate | {p / 1e6:.0f} MB/s | "
                    f"**{t / p:.1f}×** faster | ≥ 1× the capture by hand | "
                    f"{'met' if ok else 'MISSED'} |")

    fut_bin = os.path.join(args.build, "bench", "futures_bench")
    if os.path.exists(fut_bin):
        print("compare: concurrent.futures…", file=sys.stderr)
        fut = run_cpp(fut_bin, ".", reps, min_time)
        t, b = ns(fut["BM_SubmitResult_troupe"]), ns(fut["BM_SubmitResult_std"])
        p = py["TpeSubmitResult"]["ns_per_op"]
        ok = t / b <= 1.5
        verdicts.append(ok)
        rows.append(f"| ThreadPoolExecutor(2) `submit(f).result()`, one at a time | {fmt_ns(t)} | "
                    f"std thread pool (mutex + condition_variable + promise) {fmt_ns(b)} | "
                    f"**{t / b:.2f}×** time | {fmt_ns(p)} | **{p / t:.1f}×** faster | "
                    f"≤ 1.5× the condition-variable hand-off | {'met' if ok else 'MISSED'} |")
        t, b = ips(fut["BM_SubmitAll_troupe"]), ips(fut["BM_SubmitAll_std"])
        p = py["TpeSubmitAll"]["items_per_s"]
        ok = t / p >= 20
        verdicts.append(ok)
        rows.append(f"| ThreadPoolExecutor(2) submit 10k, then collect | {fmt_rate(t)} | std thread "
                    f"pool {fmt_rate(b)} | **{t / b:.2f}×** rate | {fmt_rate(p)} | "
                    f"**{t / p:.1f}×** faster | ≥ 20× Python | {'met' if ok else 'MISSED'} |")
        t, b = ns(fut["BM_ProcessSubmitResult_troupe"]), ns(fut["BM_ProcessRoundTrip_raw"])
        p = py["PpeSubmitResult"]["ns_per_op"]
        ok = t / b <= 3
        verdicts.append(ok)
        rows.append(f"| ProcessPoolExecutor(2) `submit(f).result()`, one at a time | {fmt_ns(t)} | "
                    f"8 B each way over two socketpairs, by hand {fmt_ns(b)} | **{t / b:.2f}×** time | "
                    f"{fmt_ns(p)} | **{p / t:.1f}×** faster | ≤ 3× raw | {'met' if ok else 'MISSED'} |")
        for chunk, target in [(1, 20), (64, 3)]:
            t, p = ips(fut[f"BM_ProcessMap_troupe/{chunk}"]), py[f"PpeMap/{chunk}"]["items_per_s"]
            ok = t / p >= target
            verdicts.append(ok)
            rows.append(f"| ProcessPoolExecutor(2) `map` over 10k items, chunksize {chunk} | "
                        f"{fmt_rate(t)} | — | — | {fmt_rate(p)} | **{t / p:.1f}×** faster | "
                        f"≥ {target}× Python | {'met' if ok else 'MISSED'} |")
        for name, pyname, label in [
                ("BM_PoolMap_troupe", "PoolMap", "`Pool(2).map` of 100k items, default chunksize"),
                ("BM_PoolImapUnordered_troupe", "PoolImapUnordered",
                 "`Pool(2).imap_unordered` of 10k items, chunksize 1")]:
            t, p = ips(fut[name]), py[pyname]["items_per_s"]
            rows.append(f"| {label} | {fmt_rate(t)} | — | — | {fmt_rate(p)} | **{t / p:.1f}×** "
                        f"faster | — | — |")
        lazy, eager = ips(fut["BM_Map_troupe/0"]), ips(fut["BM_Map_troupe/1"])
        p = py["TpeMap"]["items_per_s"]
        rows.append(f"| ThreadPoolExecutor(2) `map` over 10k items: lazy (default look-ahead) / "
                    f"eager | {fmt_rate(lazy)} / {fmt_rate(eager)} | — | — | {fmt_rate(p)} "
                    f"(eager) | **{lazy / p:.1f}×** / **{eager / p:.1f}×** faster | — | — |")

    mm_bin = os.path.join(args.build, "bench", "map_memory")
    if os.path.exists(mm_bin):
        print("compare: map over 10 million lazy items, parent RSS…", file=sys.stderr)
        mm = json.loads(subprocess.run([mm_bin], check=True, capture_output=True,
                                       text=True).stdout)
        lazy = (mm["lazy_peak"] - mm["lazy_base"]) / 2**20
        eager = (mm["eager_peak"] - mm["eager_base"]) / 2**20
        ok = lazy <= 16
        verdicts.append(ok)
        rows.append(f"| ProcessPoolExecutor(2) `map` over 10M lazy items (chunksize 1000): parent "
                    f"RSS growth | {lazy:.1f} MiB ({mm['items'] / mm['lazy_seconds'] / 1e6:.1f} M "
                    f"items/s) | eager submission (Python's map) {eager:.1f} MiB | — | — | — | "
                    f"flat (≤ 16 MiB) | {'met' if ok else 'MISSED'} |")

    print(f"compare: the hand-offs beside {n_load} CPU-bound processes…", file=sys.stderr)
    with loaded(n_load):
        busy = run_hand_offs(args.build, max(reps, LOADED_REPS),
                             min_time if args.quick else LOADED_MIN_TIME)
    quiet = {"threading_bench": cpp, "connection_bench": conn, "process_bench": proc,
             "futures_bench": fut}
    hand_offs = hand_off_table(quiet, busy, n_load, verdicts)

    mem = []
    big_bin = os.path.join(args.build, "bench", "big_message")
    if os.path.exists(big_bin) and not args.quick:
        print("compare: one 1 GiB message through a Pipe, peak RSS…", file=sys.stderr)
        runs = [json.loads(subprocess.run([big_bin, m, "1024"], check=True, capture_output=True,
                                          text=True).stdout) for m in ("raw", "bytes", "typed")]
        runs.append(json.loads(subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "big_message.py"), "1024"], check=True,
            capture_output=True, text=True).stdout))
        mem = ["| 1 GiB message through a Pipe | sender peak RSS | receiver peak RSS | "
               "worst side vs message | target (≤ 1.1× + 32 MiB) |", "|---|---|---|---|---|"]
        names = {"raw": "raw write/read by hand", "bytes": "troupe `send_bytes`/`recv_bytes`",
                 "typed": "troupe `send`/`recv<std::vector<std::byte>>`",
                 "python": f"Python {py['python']} `send_bytes`/`recv_bytes`"}
        for r in runs:
            n = r["bytes"]
            worst = max(r["sender_peak"], r["receiver_peak"])
            ok = worst <= 1.1 * n + (32 << 20)
            if r["mode"] == "bytes":
                verdicts.append(ok)
            mem.append(f"| {names[r['mode']]} | {r['sender_peak'] / 2**20:.0f} MiB | "
                       f"{r['receiver_peak'] / 2**20:.0f} MiB | **{worst / n:.2f}×** | "
                       f"{'met' if ok else 'missed'} |")

    table = ["| workload | troupe | baseline | troupe vs baseline | Python "
             f"{py['python']} | troupe vs Python | target | |",
             "|---|---|---|---|---|---|---|---|"] + rows

    place = ["| ping-pong, per round trip | placement | troupe time | troupe CPU | baseline time "
             "| baseline CPU | time ratio |", "|---|---|---|---|---|---|---|"]
    for label, ours, base in [("Event vs raw futex", "BM_PingPong_Event_troupe",
                               "BM_PingPong_raw_futex"),
                              ("Condition vs std::condition_variable",
                               "BM_PingPong_Condition_troupe",
                               "BM_PingPong_std_condition_variable")]:
        for pname, res in [("default", cpp), ("pinned to 1 CPU", one), ("pinned to 2 CPUs", two)]:
            if not res:
                continue
            o, b = res[ours], res[base]
            place.append(f"| {label} | {pname} | {fmt_ns(ns(o))} | {fmt_ns(cpu_ns(o))} | "
                         f"{fmt_ns(ns(b))} | {fmt_ns(cpu_ns(b))} | **{ns(o) / ns(b):.2f}×** |")
        shared = (ours + "_SharedCpu", base + "_SharedCpu")
        if shared[0] in cpp and shared[1] in cpp:  # spinning on, yet the peer is on this CPU
            o, b = cpp[shared[0]], cpp[shared[1]]
            place.append(f"| {label} | both threads on CPU 0, the process on all | "
                         f"{fmt_ns(ns(o))} | {fmt_ns(cpu_ns(o))} | {fmt_ns(ns(b))} | "
                         f"{fmt_ns(cpu_ns(b))} | **{ns(o) / ns(b):.2f}×** |")

    header = (f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs, `python3 bench/compare.py` (C++: median of {reps} "
              f"repetitions, run interleaved; Python: best of 3).")
    text = "\n".join([header, "", *table, "", *place, "", *hand_offs, ""]
                     + ([*mem, ""] if mem else []))
    print(text)
    managers = managers_section(args.build, reps, args.quick, verdicts)
    if managers:
        print("\n".join(managers))
    if args.write:
        write_section("<!-- compare.py:begin -->", "<!-- compare.py:end -->", text)
        if managers:
            write_section(MANAGERS_BEGIN, MANAGERS_END, "\n".join(managers))
    missed = verdicts.count(False)
    print(f"compare: {len(verdicts) - missed} targets met, {missed} missed", file=sys.stderr)


if __name__ == "__main__":
    main()
