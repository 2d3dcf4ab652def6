#!/usr/bin/env python3
"""Compile-fail test: `check.py EXPECTED -- COMPILER ARGS...` compiles twice. With
-DTROUPE_GIVE_IT_A_CODEC the file must compile; without, it must fail and the compiler's
output must contain EXPECTED."""
import subprocess
import sys

sep = sys.argv.index("--")
expected = " ".join(sys.argv[1:sep])
cmd = sys.argv[sep + 1:]

good = subprocess.run(cmd + ["-DTROUPE_GIVE_IT_A_CODEC"], capture_output=True, text=True)
if good.returncode != 0:
    print("control build failed (the file is broken for another reason):")
    print(good.stderr[-4000:])
    sys.exit(1)
bad = subprocess.run(cmd, capture_output=True, text=True)
if bad.returncode == 0:
    print("compiled, but must not: a type with no codec was accepted")
    sys.exit(1)
if expected not in bad.stderr:
    print(f"failed to compile, but the message lacks {expected!r}:")
    print(bad.stderr[-4000:])
    sys.exit(1)
print(f"ok: refused with {expected!r}")
