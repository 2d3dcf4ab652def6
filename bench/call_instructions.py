#!/usr/bin/env python3
"""The instructions one call costs each thread, counted by callgrind: a manager proxy call
(`call<&Maths::add>`, a quick typeid, the server in this process on a Unix abstract name), the
same with 64 async calls in flight (pipelined), a managed queue's put then get (a built-in
object's calls), and a 152-byte Pipe ping-pong with an echoing
thread. Exact counts, where the time of a call moves by
a third between runs on a shared machine: what a change to the call's path saves shows here.

    python3 bench/call_instructions.py [--build build] [--calls 5000]

Runs build/bench/call_instructions under valgrind (`apt-get install valgrind`) with N and 2N
calls (spinning off: TROUPE_SPIN_NS=0, so a wait costs the same every time) and prints, per
thread, (instructions with 2N - with N) / N. Thread 1 is the caller; for the proxy the server's
connection thread is the other one that counts (pipelined: also the link's thread, which reads
the replies).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def totals(binary, mode, n, tmp):
    """{thread number: instructions} of one run."""
    out = os.path.join(tmp, f"{mode}-{n}")
    os.mkdir(out)
    env = dict(os.environ, TROUPE_SPIN_NS="0")
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}/cg.out", binary, mode, str(n)],
                   check=True, capture_output=True, env=env, timeout=900)
    res = {}
    for f in glob.glob(os.path.join(out, "cg.out-*")):
        with open(f) as fh:
            for line in fh:
                if line.startswith("summary:"):
                    res[int(f.rsplit("-", 1)[1])] = int(line.split()[1])
                    break
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("call_instructions: valgrind not found (apt-get install valgrind)")
    binary = os.path.join(args.build, "bench", "call_instructions")
    if not os.path.exists(binary):
        sys.exit(f"call_instructions: {binary} not found (meson setup -Dbenchmarks=true; ninja)")
    n = args.calls
    print("| call | thread | instructions a call |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, label in (("proxy", "proxy `call<&Maths::add>`, Unix"),
                            ("pipelined", "proxy `async_call`, 64 in flight, Unix"),
                            ("queue", "managed queue `put` + `get`, Unix"),
                            ("pipe", "Pipe ping-pong 152 B, threads")):
            a, b = totals(binary, mode, n, tmp), totals(binary, mode, 2 * n, tmp)
            for t in sorted(b):
                per = (b[t] - a.get(t, 0)) / n
                if per >= 100:  # the threads that work per call
                    who = "caller" if t == 1 else f"thread {t}" if mode == "pipelined" else \
                        f"{'echo' if mode == 'pipe' else 'server connection'} (thread {t})"
                    print(f"| {label} | {who} | {per:,.0f} |")


if __name__ == "__main__":
    main()
