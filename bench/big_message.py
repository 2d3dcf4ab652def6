#!/usr/bin/env python3
"""Python's side of bench/big_message.cpp: one big message through multiprocessing.Pipe between
two processes (fork); prints the peak resident memory of each side as one JSON line.

  big_message.py MIB
"""
import json
import multiprocessing
import os
import resource
import sys


def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    n = int(sys.argv[1]) << 20
    baseline = peak()
    a, b = multiprocessing.Pipe()
    r, w = os.pipe()
    pid = os.fork()  # before the big allocation, so the child starts small
    if pid == 0:
        a.close()
        m = b.recv_bytes()
        ok = len(m) == n and m[-1:] == b"z"
        os.write(w, str(peak() if ok else -1).encode())
        os._exit(0 if ok else 1)
    b.close()
    msg = bytearray(b"x") * n  # one allocation, every page touched
    msg[-1] = ord("z")
    a.send_bytes(msg)
    receiver = int(os.read(r, 64))
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"mode": "python", "bytes": n, "sender_peak": peak(),
                      "receiver_peak": receiver, "baseline_peak": baseline}))
    sys.exit(0 if status == 0 else 1)


if __name__ == "__main__":
    main()
