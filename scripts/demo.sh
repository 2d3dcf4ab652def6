#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs examples/primes — the
# concurrent.futures docs' ProcessPoolExecutor prime check on worker processes, with a progress
# bar, then in one process to compare. (Later issues turn this into the cluster demo.)
# scripts/examples.sh runs every example.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bash scripts/setup.sh
[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null
ninja -C "$BUILD" examples/primes >"$BUILD/ninja.log" 2>&1 || { cat "$BUILD/ninja.log"; exit 1; }
"$BUILD/examples/primes"
