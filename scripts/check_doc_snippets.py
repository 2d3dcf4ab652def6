#!/usr/bin/env python3
"""Code shown in doc/ is cut from examples/, which compile: every ```c++ block that follows a
`<!-- from examples/NAME.cpp -->` line must appear verbatim in that file. Exit 1 otherwise."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
pattern = re.compile(r"<!-- from (examples/[\w./-]+) -->\n```c\+\+\n(.*?)```", re.S)
checked = failed = 0
for doc in sorted((root / "doc").rglob("*.md")):
    for m in pattern.finditer(doc.read_text()):
        checked += 1
        src = root / m.group(1)
        if not src.exists() or m.group(2) not in src.read_text():
            failed += 1
            print(f"{doc.relative_to(root)}: snippet not found verbatim in {m.group(1)}:\n{m.group(2)}")
print(f"{checked} snippets checked, {failed} stale")
sys.exit(1 if failed or not checked else 0)
