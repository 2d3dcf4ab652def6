#!/usr/bin/env bash
# The main job, for now: installs what is missing, builds, and runs every example with its
# output. (Later issues turn this into the cluster demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bash scripts/setup.sh
[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null
ninja -C "$BUILD" >"$BUILD/ninja.log" 2>&1 || { cat "$BUILD/ninja.log"; exit 1; }
for ex in "$BUILD"/examples/*; do
  [ -x "$ex" ] && [ -f "$ex" ] || continue
  echo "=== $(basename "$ex") ==="
  "$ex"
  echo
done
