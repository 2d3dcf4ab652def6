#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, tests.
# Prints 'N passed, N failed' last. Extra arguments go to `meson setup` (a new build folder
# is then a good idea: BUILD=build-asan scripts/test.sh -Db_sanitize=address,undefined).
# SPLIT_SUITE=NAME runs that suite and the rest side by side (CI does, in every stage).
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
quiet='^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout):'
if [ -n "${SPLIT_SUITE:-}" ]; then
  # Two runs side by side: the suite SPLIT_SUITE names, and the rest. Most tests run alone
  # (is_parallel: false) and spend their time waiting on children and sockets; under the
  # sanitizers two at a time take a third off a stage's test time, and the plain build's `layers`
  # (every public header compiled alone) runs beside the rest (CI: .ci/run).
  logs="$BUILD/meson-logs"
  meson test -C "$BUILD" --no-rebuild --print-errorlogs --suite "$SPLIT_SUITE" \
    --logbase split-1 ${MESON_TEST_ARGS:-} >"$BUILD/split-1.out" 2>&1 &
  meson test -C "$BUILD" --no-rebuild --print-errorlogs --no-suite "$SPLIT_SUITE" \
    --logbase split-2 ${MESON_TEST_ARGS:-} >"$BUILD/split-2.out" 2>&1 &
  wait
  cat "$BUILD/split-1.out" "$BUILD/split-2.out" | grep -vE "$quiet"
  cat "$logs/split-1.json" "$logs/split-2.json" >"$logs/testlog.json"
else
  meson test -C "$BUILD" --no-rebuild --print-errorlogs ${MESON_TEST_ARGS:-} | grep -vE "$quiet"
fi
python3 scripts/count_tests.py "$BUILD"
