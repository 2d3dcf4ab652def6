// Typed messages between two processes: the parent sends Job values through a Pipe<Job> to a
// forked child, which answers each with a Result through a second typed pipe. No serialisation
// code is written: Job and Result are plain aggregates, and troupe::Codec covers them.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "troupe/multiprocessing.hpp"

namespace mp = troupe::multiprocessing;

struct Job {
  std::int64_t id;
  std::string name;
  std::vector<double> samples;
  std::optional<std::map<std::string, int>> options;
};

struct Result {
  std::int64_t id;
  double mean;
};

int main() {
  auto [jobs_tx, jobs_rx] = mp::Pipe<Job>();
  auto [results_tx, results_rx] = mp::Pipe<Result>();
  const pid_t pid = fork();
  if (pid == 0) {  // the worker
    jobs_tx.close();
    results_rx.close();
    for (;;) {
      Job job;
      try {
        job = jobs_rx.recv();
      } catch (const troupe::EOFError&) {
        _exit(0);  // the parent closed its end: no more work
      }
      const double sum = std::accumulate(job.samples.begin(), job.samples.end(), 0.0);
      results_tx.send({job.id, job.samples.empty() ? 0.0 : sum / job.samples.size()});
    }
  }
  jobs_rx.close();
  results_tx.close();
  for (std::int64_t i = 1; i <= 3; ++i) {
    jobs_tx.send(Job{i, "job " + std::to_string(i), std::vector<double>(1000, i * 1.5),
                     std::map<std::string, int>{{"priority", 1}}});
    Result r = results_rx.recv();
    std::printf("job %lld: mean %.2f\n", static_cast<long long>(r.id), r.mean);
  }
  jobs_tx.close();
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
