// bench/map_memory.cpp — ProcessPoolExecutor(2).map over a lazy input of 10 million items
// (chunksize 1000): the parent's resident memory while the results are read, with troupe's
// default bounded look-ahead and with eager submission (Python's map before 3.14's buffersize).
// Prints one JSON object; bench/compare.py reads it.
//
//     build/bench/map_memory [items]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <ranges>
#include <string>

#include "troupe/concurrent/futures.hpp"
#include "troupe/multiprocessing/process.hpp"

std::int64_t plus_one(std::int64_t x) {
  return x + 1;
}
TROUPE_ENTRY(plus_one);

namespace {

std::int64_t rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      std::int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 12, '\n');
  }
  return 0;
}

struct Run {
  std::int64_t base = 0, peak = 0;
  double seconds = 0;
};

Run run(std::int64_t items, bool eager) {
  namespace futures = troupe::concurrent::futures;
  futures::ProcessPoolExecutor pool(2);
  (void)pool.submit(plus_one, 0).result();
  Run r;
  r.base = r.peak = rss_bytes();
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t sum = 0, n = 0;
  for (std::int64_t v : pool.map({.chunksize = 1000, .eager = eager}, plus_one,
                                 std::views::iota(std::int64_t{0}, items))) {
    sum += v;
    if (++n % 100'000 == 0) r.peak = std::max(r.peak, rss_bytes());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (sum != items * (items + 1) / 2) std::fprintf(stderr, "map_memory: wrong sum\n");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  troupe::multiprocessing::freeze_support(argc, argv);
  const std::int64_t items = argc > 1 ? std::atoll(argv[1]) : 10'000'000;
  const Run lazy = run(items, false);
  const Run eager = run(items, true);
  std::printf(
      "{\"items\": %lld, \"lazy_base\": %lld, \"lazy_peak\": %lld, \"lazy_seconds\": %.3f, "
      "\"eager_base\": %lld, \"eager_peak\": %lld, \"eager_seconds\": %.3f}\n",
      static_cast<long long>(items), static_cast<long long>(lazy.base),
      static_cast<long long>(lazy.peak), lazy.seconds, static_cast<long long>(eager.base),
      static_cast<long long>(eager.peak), eager.seconds);
}
