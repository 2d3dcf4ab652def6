#!/usr/bin/env python3
"""Precompile the tests' common header with exactly the flags the tests compile with.

  make_pch.py BUILD_ROOT CARRIER HEADER OUT_HEADER OUT_PCH DEPFILE

CARRIER is a source file whose compile command (read from BUILD_ROOT/compile_commands.json,
which meson writes at configure time) carries the tests' flags: the compiler, -I, -D, -O,
-std, warnings and sanitizers. The header is compiled with that command as a C++ header into
OUT_PCH, and copied to OUT_HEADER beside it: a test compiled with `-include OUT_HEADER` then
gets the precompiled state from OUT_PCH (GCC's .gch, Clang's .pch, both looked up beside the
header). A precompiled header built with other flags is refused by the compiler
(-Winvalid-pch, an error under -Werror) rather than silently misused; the copy is what a
build without -Werror then falls back to.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys


def carrier_command(build_root, carrier):
    with open(os.path.join(build_root, "compile_commands.json"), encoding="utf-8") as f:
        entries = json.load(f)
    for e in entries:
        if os.path.normpath(e["file"]).endswith(os.path.normpath(carrier)):
            args = e.get("arguments") or shlex.split(e["command"])
            return args, e.get("directory", build_root), e["file"]
    sys.exit(f"make_pch.py: no compile command for {carrier} in {build_root}/compile_commands.json")


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    build_root, carrier, header, out_header, out_pch, depfile = sys.argv[1:]
    args, cwd, source = carrier_command(build_root, carrier)
    # ccache cannot cache the creation of a precompiled header: run the compiler itself.
    while args and os.path.basename(args[0]) in ("ccache", "sccache"):
        args = args[1:]
    cmd, skip = [], 0
    for a in args:
        if skip:
            skip -= 1
            continue
        if a in ("-o", "-MQ", "-MF", "-MT", "-include"):
            skip = 1
            continue
        if a in ("-c", "-MD", "-MMD", source):
            continue
        cmd.append(a)
    out_header = os.path.abspath(out_header)
    out_pch = os.path.abspath(out_pch)
    depfile = os.path.abspath(depfile)
    shutil.copyfile(header, out_header)
    if "clang" in os.path.basename(cmd[0]):
        # Instantiate the header's templates once, in the PCH, not again in every test.
        cmd.append("-fpch-instantiate-templates")
    cmd += ["-x", "c++-header", out_header, "-o", out_pch, "-MD", "-MQ", out_pch, "-MF", depfile]
    rc = subprocess.run(cmd, cwd=cwd).returncode
    if rc == 0:
        # The flags are in compile_commands.json, rewritten at each (re)configure: a PCH made
        # before a change of options must be made again.
        with open(depfile, encoding="utf-8") as f:
            deps = f.read().rstrip()
        commands = os.path.abspath(os.path.join(build_root, "compile_commands.json"))
        with open(depfile, "w", encoding="utf-8") as f:
            f.write(f"{deps} \\\n {commands}\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
