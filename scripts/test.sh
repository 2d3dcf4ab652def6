#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, tests.
# Prints 'N passed, N failed' last. Extra arguments go to `meson setup` (a new build folder
# is then a good idea: BUILD=build-asan scripts/test.sh -Db_sanitize=address,undefined).
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bash scripts/setup.sh || exit 1
if [ ! -f "$BUILD/build.ninja" ]; then
  meson setup "$BUILD" "$@" >/dev/null || { echo "meson setup failed"; exit 1; }
elif [ $# -gt 0 ]; then
  meson configure "$BUILD" "$@" >/dev/null || { echo "meson configure failed"; exit 1; }
fi
ninja -C "$BUILD" >"$BUILD/ninja.log" 2>&1 || { cat "$BUILD/ninja.log"; echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
meson test -C "$BUILD" --no-rebuild --print-errorlogs ${MESON_TEST_ARGS:-} | grep -vE '^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout):' 
python3 scripts/count_tests.py "$BUILD"
