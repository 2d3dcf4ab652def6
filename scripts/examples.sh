#!/usr/bin/env bash
# The tour: installs what is missing, builds, and runs every example with its output.
# (scripts/demo.sh is the main job.)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bash scripts/setup.sh
[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null
ninja -C "$BUILD" >"$BUILD/ninja.log" 2>&1 || { cat "$BUILD/ninja.log"; exit 1; }
for ex in bounded_semaphore queue_worker timer barrier sched_print_time interrupt_main typed_pipe process_info exchange shared_state pipeline child_server thread_pool primes; do
  echo "=== $ex ==="
  "$BUILD/examples/$ex"
  echo
done

# multiprocessing.connection: an authenticated echo over a Unix socket, troupe on both ends
# (test/integration/python_echo_test.cpp runs the same programs against Python).
echo "=== echo_listener + echo_client ==="
sock="unix-abstract:troupe-demo-$$"
key=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
"$BUILD/examples/echo_listener" --address "$sock" --authkey "$key" &
listener=$!
trap 'kill $listener 2>/dev/null || true' EXIT
for _ in $(seq 50); do  # until it listens (at most 5 s)
  rc=0
  "$BUILD/examples/echo_client" --address "$sock" --authkey 00 --count 1 --size 1 2>/dev/null ||
    rc=$?
  [ $rc -eq 3 ] && break  # it answered (and refused the wrong key)
  sleep 0.1
done
"$BUILD/examples/echo_client" --address "$sock" --authkey "$key" --count 1000 --size 0,64,65536
wait $listener
