#!/usr/bin/env bash
# Installs what troupe needs to build, test and benchmark, from Debian 12 packages.
# Idempotent and quick when everything is present; says clearly what it cannot do.
set -euo pipefail

PACKAGES=(
  meson ninja-build pkg-config g++ python3
  libboost1.81-dev capnproto libcapnp-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev libconcurrentqueue-dev
  clang-format clang libclang-rt-14-dev lld
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get is not available; install these Debian 12 packages by hand: ${missing[*]}" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "setup: not root and no password-less sudo; as root, run:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get update -qq; then
  echo "setup: apt-get update failed (is the network to the Debian mirror up?)" >&2
  exit 1
fi
if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  echo "setup: apt-get install failed for: ${missing[*]}" >&2
  exit 1
fi
echo "setup: done" >&2
