#!/usr/bin/env bash
# Builds the libFuzzer targets (test/fuzz/) with clang under ASan+UBSan and runs each one for
# SECONDS (default 20) from seeds the library makes itself. A longer run: bash scripts/fuzz.sh 3600
# (doc/security.md). Findings go to $BUILD/fuzz-artifacts/; inputs that once crashed a target,
# kept in test/fuzz/crashes-<target>/, are run first. Last line: 'N passed, N failed'.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
BUILD=${BUILD:-build-fuzz}
bash scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }
# A unity build (meson joins the library's sources four to a compilation unit): the library is
# what this build compiles, and its sources share most of their headers. From clean on 2 CPUs:
# 211 s, against about 415 s one source at a time (CI's fuzzing stage took 480 s).
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang CXX=clang++ meson setup "$BUILD" -Dfuzz=true -Dtests=false -Dexamples=false \
    -Dbenchmarks=false -Db_sanitize=address,undefined -Db_lundef=false -Ddebug=false \
    -Dcpp_args=-g1 -Dunity=on >/dev/null ||
    { echo "0 passed, 1 failed"; exit 1; }
fi
ninja -C "$BUILD" || { echo "0 passed, 1 failed"; exit 1; }
corpus="$BUILD/corpus"
artifacts="$BUILD/fuzz-artifacts/"
mkdir -p "$artifacts"
"$BUILD/test/fuzz/make_seeds" "$corpus" || { echo "0 passed, 1 failed"; exit 1; }
# One fuzzer is one process on one CPU: they run two at a time (this machine's CPU count in
# CI), each to its own log, and are reported in a fixed order.
run_target() {
  local t=$1
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$BUILD/test/fuzz/${t}_fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=128 -print_final_stats=1 -artifact_prefix="$artifacts" \
    "$corpus/$t" $([ -d "test/fuzz/crashes-$t" ] && echo "test/fuzz/crashes-$t") \
    2>"$BUILD/${t}_fuzz.log"
  echo $? >"$BUILD/${t}_fuzz.rc"
}
targets=(frame handshake codec send_bytes manager pickle)
rm -f "$BUILD"/*_fuzz.rc
jobs=${FUZZ_JOBS:-$(nproc)}
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
  for t in "${targets[@]:i:jobs}"; do
    run_target "$t" &
  done
  wait
done
passed=0 failed=0
for t in "${targets[@]}"; do
  echo "--- ${t}_fuzz for ${seconds}s"
  if [ "$(cat "$BUILD/${t}_fuzz.rc" 2>/dev/null)" = 0 ]; then
    passed=$((passed + 1))
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$BUILD/${t}_fuzz.log" | tr '\n' ' '
    echo
  else
    failed=$((failed + 1))
    tail -60 "$BUILD/${t}_fuzz.log"
  fi
done
echo "$passed passed, $failed failed"
