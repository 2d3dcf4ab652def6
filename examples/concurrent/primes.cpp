// The concurrent.futures docs' ProcessPoolExecutor example — is each of these large numbers
// prime? — at a size that takes a few seconds: the docs' six numbers and more of their size, run
// on a pool of worker processes with a progress bar, then in this one process to compare.
//
// Python:
//     with concurrent.futures.ProcessPoolExecutor() as executor:
//         for number, prime in zip(PRIMES, executor.map(is_prime, PRIMES)):
//             print('%d is prime: %s' % (number, prime))
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "troupe/concurrent/futures.hpp"
#include "troupe/multiprocessing/process.hpp"

namespace futures = troupe::concurrent::futures;
namespace mp = troupe::multiprocessing;

// The docs' is_prime, by trial division.
bool is_prime(std::int64_t n) {
  if (n < 2) return false;
  if (n == 2) return true;
  if (n % 2 == 0) return false;
  const auto sqrt_n = static_cast<std::int64_t>(std::floor(std::sqrt(static_cast<double>(n))));
  for (std::int64_t i = 3; i <= sqrt_n; i += 2)
    if (n % i == 0) return false;
  return true;
}
TROUPE_ENTRY(is_prime);  // worker processes find it by name

namespace {

std::vector<std::int64_t> numbers() {
  std::vector<std::int64_t> v = {112272535095293, 112582705942171, 112272535095293,
                                 115280095190773, 115797848077099, 1099726899285419};
  // And twelve larger primes (a prime takes the longest: every odd divisor up to its root).
  for (std::int64_t p : {5000000000000023, 5010000000000049, 5020000000000079, 5030000000000089,
                         5040000000000109, 5050000000000171, 5060000000000173, 5070000000000197,
                         5080000000000229, 5090000000000243, 5100000000000361, 5110000000000367})
    v.push_back(p);
  return v;
}

void progress(std::size_t done, std::size_t total, bool tty) {
  constexpr int kWidth = 40;
  const int filled = static_cast<int>(kWidth * done / total);
  if (tty) {
    std::printf("\r[%s%s] %zu/%zu", std::string(filled, '#').c_str(),
                std::string(kWidth - filled, ' ').c_str(), done, total);
    if (done == total) std::printf("\n");
  } else if (done == total || done % 6 == 0) {
    std::printf("%zu/%zu checked\n", done, total);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);  // workers are this program, started by the forkserver
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  const auto primes = numbers();
  using clock = std::chrono::steady_clock;

  std::vector<bool> results;
  const auto t0 = clock::now();
  int workers = 0;
  {
    futures::ProcessPoolExecutor executor;
    workers = executor.max_workers();
    std::printf("checking %zu numbers on %d worker processes\n", primes.size(), workers);
    progress(0, primes.size(), tty);
    for (bool prime : executor.map(is_prime, primes)) {
      results.push_back(prime);
      progress(results.size(), primes.size(), tty);
    }
  }
  const double pooled = std::chrono::duration<double>(clock::now() - t0).count();
  for (std::size_t i = 0; i < primes.size(); ++i)
    std::printf("%lld is prime: %s\n", static_cast<long long>(primes[i]),
                results[i] ? "True" : "False");

  const auto t1 = clock::now();
  for (std::size_t i = 0; i < primes.size(); ++i)
    if (is_prime(primes[i]) != results[i]) {
      std::printf("MISMATCH for %lld\n", static_cast<long long>(primes[i]));
      return 1;
    }
  const double alone = std::chrono::duration<double>(clock::now() - t1).count();
  std::printf("%d worker processes: %.2f s; one process: %.2f s (%.2fx)\n", workers, pooled, alone,
              alone / pooled);
}
