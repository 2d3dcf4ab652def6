#!/usr/bin/env bash
# The public headers under Clang with GCC's standard library (Debian 12: Clang 14, libstdc++ 12,
# whose <ranges> machinery Clang 14 cannot compile): a program that includes every module and
# calls the map functions, which take ranges, compiles. Skipped (77) without clang++.
set -euo pipefail
src=$1
build=$2
command -v clang++ >/dev/null || { echo "no clang++: skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/app.cpp" <<'CPP'
#include <list>
#include <tuple>
#include <vector>

#include "troupe/concurrent/futures/process.hpp"
#include "troupe/concurrent/futures/thread.hpp"
#include "troupe/entry.hpp"
#include "troupe/multiprocessing.hpp"
#include "troupe/multiprocessing/managers.hpp"
#include "troupe/queue.hpp"
#include "troupe/sched.hpp"
#include "troupe/subprocess.hpp"
#include "troupe/threading.hpp"

int square(int x) { return x * x; }
TROUPE_ENTRY(square);
int add(int a, int b) { return a + b; }
TROUPE_ENTRY(add);

int main() {
  std::vector<int> v{1, 2, 3};
  std::list<int> l{4, 5};
  int a[] = {6, 7};
  int sum = 0;
  troupe::concurrent::futures::ThreadPoolExecutor threads(2);
  for (int r : threads.map([](int x, int y) { return x + y; }, v, l)) sum += r;
  for (int r : threads.map(square, a)) sum += r;
  troupe::concurrent::futures::ProcessPoolExecutor processes(2);
  for (int r : processes.map(&add, v, std::vector<int>{7, 8, 9})) sum += r;
  troupe::multiprocessing::Pool pool(2);
  for (int r : pool.map(&square, v)) sum += r;
  for (int r : pool.imap(&square, l, 2)) sum += r;
  for (int r : pool.imap_unordered(&square, std::vector<int>{3})) sum += r;
  for (int r : pool.starmap(&add, std::vector<std::tuple<int, int>>{{1, 2}})) sum += r;
  return sum;
}
CPP
clang++ -std=c++20 -fsyntax-only -Werror -Wall -I"$src/lib" -I"$build/proto" -I"$build" \
  "$dir/app.cpp"
echo "clang++ $(clang++ -dumpversion): the public headers compile"
