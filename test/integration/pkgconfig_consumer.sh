#!/usr/bin/env bash
# A program outside the tree builds against troupe through meson's uninstalled pkg-config file.
set -euo pipefail
build=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/app.cpp" <<'CPP'
#include <cstdio>

#include <string>

#include "troupe/multiprocessing.hpp"
#include "troupe/queue.hpp"
#include "troupe/threading.hpp"

struct Reply {
  int value;
  std::string note;
};

int main() {
  troupe::queue::Queue<int> q;
  troupe::threading::Thread t([&] { q.put(41); });
  t.start();
  int v = q.get() + 1;
  t.join();
  auto [tx, rx] = troupe::multiprocessing::Pipe<Reply>();
  tx.send(Reply{v, "typed"});
  Reply r = rx.recv();
  std::printf("%d %s\n", r.value, r.note.c_str());
  return r.value == 42 && r.note == "typed" ? 0 : 1;
}
CPP
export PKG_CONFIG_PATH="$build/meson-uninstalled"
# shellcheck disable=SC2046
c++ -std=c++20 "$dir/app.cpp" $(pkg-config --cflags --libs troupe-uninstalled) -o "$dir/app"
LD_LIBRARY_PATH="$build" "$dir/app"
