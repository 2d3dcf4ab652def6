#!/usr/bin/env python3
"""Counts test cases in a meson build's testlog.json: GoogleTest cases by their own summary
lines, other tests (examples) as one each. Prints 'N passed, N failed' and exits 1 on failures.

Usage: count_tests.py [--extra PASSED FAILED] BUILD_DIR [BUILD_DIR ...]   (sums over all)
"""
import json
import re
import sys

PASSED = re.compile(r"^\[  PASSED  \] (\d+) tests?\.", re.M)
FAILED = re.compile(r"^\[  FAILED  \] (\d+) tests?, listed below", re.M)
SKIPPED = re.compile(r"^\[  SKIPPED \] (\d+) tests?,", re.M)


def count(build_dir):
    passed = failed = skipped = 0
    try:
        lines = open(f"{build_dir}/meson-logs/testlog.json").read().splitlines()
    except OSError as e:
        print(f"count_tests: no test log in {build_dir}: {e}", file=sys.stderr)
        return 0, 1, 0
    for line in lines:
        if not line.strip():
            continue
        t = json.loads(line)
        out = (t.get("stdout") or "") + (t.get("stderr") or "")
        ok = t.get("result") == "OK"
        p = sum(int(x) for x in PASSED.findall(out))
        f = sum(int(x) for x in FAILED.findall(out))
        s = sum(int(x) for x in SKIPPED.findall(out))
        if p or f:
            passed += p
            failed += f
            skipped += s
            if not ok and f == 0:
                failed += 1  # crashed or timed out after its summary
        elif ok:
            passed += 1
        else:
            failed += 1  # crashed or timed out before any summary
            print(f"count_tests: {t.get('name')} ended {t.get('result')}", file=sys.stderr)
    return passed, failed, skipped


def main():
    total_p = total_f = total_s = 0
    args = sys.argv[1:]
    # --extra P F: add checks counted outside meson (the format check of .ci/run).
    while args and args[0] == "--extra":
        total_p += int(args[1])
        total_f += int(args[2])
        args = args[3:]
    for d in args:
        p, f, s = count(d)
        total_p += p
        total_f += f
        total_s += s
    line = f"{total_p} passed, {total_f} failed"
    if total_s:
        line += f", {total_s} skipped"
    print(line)
    return 1 if total_f else 0


if __name__ == "__main__":
    sys.exit(main())
