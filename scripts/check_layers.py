#!/usr/bin/env python3
"""Checks DESIGN.md's layer table against the code, and that every public header stands alone.

  check_layers.py [--root DIR]                 includes: none goes up a layer, none reaches into
                                               another module's detail/ or internal/, and no
                                               public header includes an internal/ one
  check_layers.py --headers BUILD_DIR [-j N]   also compiles every public header on its own
                                               (-fsyntax-only, with the library's own flags from
                                               BUILD_DIR/compile_commands.json)

The layers (DESIGN.md, "Layers"; a file's layer is that of the longest prefix below that matches
its path under lib/troupe/):
  1 core          errors, timeout, codec, spin, entry, unique_fd, detail/, internal/
  2 in-process    threading, _thread, queue, sched, concurrent/futures (future, thread, executor)
  3 processes     multiprocessing (connection ... queues), subprocess
  4 remote/pools  multiprocessing (managers, pool, dummy, detail/), concurrent/futures/process
  5 actors        actor/, cluster/
A module is the folder that holds a detail/ or internal/ folder: lib/troupe/detail/ and
lib/troupe/internal/ belong to the whole library (any layer may use them; internal/ only from .cpp
files and other internal/ files), lib/troupe/multiprocessing/detail/ only to multiprocessing/, and
so on. One exception, as in CPython (concurrent.futures.process is built on multiprocessing):
ProcessPoolExecutor (concurrent/futures/process.*) uses multiprocessing/detail/'s worker pool
(ENGINES below). A path the table does not know is an error, so a new file must be placed in it.
Prints one line per finding and 'layers: N files, N includes, N findings'; exits 1 on a finding.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

LAYERS = [
    # (path prefix under lib/troupe/, layer); the longest matching prefix wins
    ("errors.", 1), ("error_envelope.", 1), ("timeout.", 1), ("codec.", 1), ("spin.", 1),
    ("entry.", 1), ("unique_fd.", 1), ("detail/", 1), ("internal/", 1),
    ("threading", 2), ("_thread", 2), ("queue", 2), ("sched", 2),
    ("concurrent/futures/future.", 2), ("concurrent/futures/thread.", 2),
    ("concurrent/futures/executor.", 2), ("concurrent/futures/detail/", 2),
    ("concurrent/futures/on_worker_death.", 2),
    ("multiprocessing/", 3), ("subprocess", 3),
    ("multiprocessing/managers", 4), ("multiprocessing/pool.", 4), ("multiprocessing/dummy.", 4),
    ("multiprocessing/detail/", 4), ("multiprocessing/detail/shared_region.", 3),
    ("multiprocessing/detail/secret_builder.", 3),
    ("multiprocessing.hpp", 4), ("concurrent/futures/process.", 4), ("concurrent/futures.hpp", 4),
    ("actor", 5), ("cluster", 5),
]

# Private folders that a named other module may use: (the detail/ folder, users' path prefixes).
ENGINES = [("multiprocessing/detail/", ("concurrent/futures/process.",))]

INCLUDE = re.compile(r'^\s*#\s*include\s+"troupe/([^"]+)"', re.M)


def layer_of(rel):
    best = None
    for prefix, layer in LAYERS:
        if rel.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best[1] if best else None


def private_owner(rel):
    """For a path inside a detail/ or internal/ folder: (the module folder that owns it, kind)."""
    parts = rel.split("/")
    for i, p in enumerate(parts[:-1]):
        if p in ("detail", "internal"):
            return "/".join(parts[:i]), p
    return None


def check_includes(root):
    findings = []
    n_files = n_includes = 0
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            if not name.endswith((".hpp", ".cpp", ".h")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            n_files += 1
            mine = layer_of(rel)
            if mine is None:
                findings.append(f"{rel}: not in the layer table (scripts/check_layers.py LAYERS)")
                continue
            text = open(path, encoding="utf-8").read()
            for m in INCLUDE.finditer(text):
                n_includes += 1
                inc = m.group(1)
                line = text.count("\n", 0, m.start()) + 1
                where = f"lib/troupe/{rel}:{line}: includes troupe/{inc}"
                theirs = layer_of(inc)
                if theirs is None:
                    findings.append(f"{where}, which is not in the layer table")
                    continue
                if theirs > mine:
                    findings.append(f"{where} (layer {theirs}) from layer {mine}: up a layer")
                owner = private_owner(inc)
                if owner:
                    module, kind = owner
                    engine_user = any(inc.startswith(d) and rel.startswith(users)
                                      for d, users in ENGINES)
                    if module and not (rel + "/").startswith(module + "/") and not engine_user:
                        findings.append(f"{where}: {kind}/ of module {module}/, from outside it")
                    if kind == "internal" and rel.endswith((".hpp", ".h")) \
                            and private_owner(rel) is None:
                        findings.append(f"{where}: a public header may not include internal/")
    return findings, n_files, n_includes


def public_headers(root):
    out = []
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            owner = private_owner(rel)
            if name.endswith(".hpp") and not (owner and owner[1] == "internal"):
                out.append(rel)
    return sorted(out)


def library_flags(build):
    """The compiler and flags the build used for a library source, minus the source's own bits."""
    entries = json.load(open(os.path.join(build, "compile_commands.json")))
    for e in entries:
        if e["file"].endswith("lib/troupe/errors.cpp"):
            args = e.get("arguments") or shlex.split(e["command"])
            keep, skip = [], False
            for a in args:
                if skip:
                    skip = False
                    continue
                if a in ("-o", "-MF", "-MQ", "-MT"):
                    skip = True
                    continue
                if a in ("-c", "-MD") or a.endswith("errors.cpp"):
                    continue
                keep.append(a)
            return keep, e["directory"]
    raise SystemExit(f"check_layers: no lib/troupe/errors.cpp in {build}/compile_commands.json")


def check_headers(root, build, jobs):
    flags, cwd = library_flags(build)
    headers = public_headers(root)

    def one(rel):
        # Included once, as a user would: `#include "troupe/x.hpp"` and nothing before it.
        cmd = flags + ["-fsyntax-only", "-x", "c++", "-"]
        r = subprocess.run(cmd, input=f'#include "troupe/{rel}"\n', cwd=cwd, text=True,
                           capture_output=True, timeout=600)
        return rel, r.returncode, r.stderr

    findings = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for rel, rc, err in pool.map(one, headers):
            if rc != 0:
                first = "\n    ".join(err.strip().splitlines()[:6])
                findings.append(f"lib/troupe/{rel}: does not compile on its own:\n    {first}")
    return findings, len(headers)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(here, "..", "lib", "troupe"))
    ap.add_argument("--headers", metavar="BUILD_DIR")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    root = os.path.normpath(a.root)
    findings, n_files, n_includes = check_includes(root)
    summary = f"layers: {n_files} files, {n_includes} includes"
    if a.headers:
        more, n_headers = check_headers(root, a.headers, a.j)
        findings += more
        summary += f", {n_headers} headers compiled alone"
    for f in findings:
        print(f)
    print(f"{summary}, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
