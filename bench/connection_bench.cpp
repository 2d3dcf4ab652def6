// bench/connection_bench.cpp — multiprocessing.connection over a Pipe (socketpair) against the
// same traffic written by hand with read/write on a socketpair (one write per message, the
// 4-byte length in the same buffer). bench/compare.py runs it next to Python's
// multiprocessing.Pipe.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "troupe/multiprocessing/connection.hpp"

#include <arpa/inet.h>

namespace {

namespace mp = troupe::multiprocessing;

void read_exact(int fd, char* p, size_t n) {
  while (n) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) std::abort();
    p += r;
    n -= static_cast<size_t>(r);
  }
}
void write_all(int fd, const char* p, size_t n) {
  while (n) {
    ssize_t r = ::write(fd, p, n);
    if (r <= 0) std::abort();
    p += r;
    n -= static_cast<size_t>(r);
  }
}
// Raw framing by hand: 4-byte length + payload in one write; header then body in two reads.
void raw_send(int fd, std::vector<char>& frame, size_t n) {
  frame.resize(4 + n);
  uint32_t be = htonl(static_cast<uint32_t>(n));
  std::memcpy(frame.data(), &be, 4);
  write_all(fd, frame.data(), frame.size());
}
size_t raw_recv(int fd, std::vector<char>& buf) {
  uint32_t be;
  read_exact(fd, reinterpret_cast<char*>(&be), 4);
  size_t n = ntohl(be);
  buf.resize(n);
  read_exact(fd, buf.data(), n);
  return n;
}

void BM_PipePingPong64_troupe(benchmark::State& state) {
  auto [a, b] = mp::Pipe();
  std::thread t([&b] {
    try {
      for (;;) b.send_bytes(b.recv_bytes());
    } catch (...) {
    }
  });
  std::string msg(64, 'x');
  for (auto _ : state) {
    a.send_bytes(msg);
    benchmark::DoNotOptimize(a.recv_bytes());
  }
  a.close();
  t.join();
}
BENCHMARK(BM_PipePingPong64_troupe)->UseRealTime();

void BM_PipePingPong64_raw(benchmark::State& state) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  std::thread t([fd = sv[1]] {
    std::vector<char> buf, frame;
    uint32_t be;
    while (::read(fd, &be, 4) == 4) {
      size_t n = ntohl(be);
      buf.resize(n);
      read_exact(fd, buf.data(), n);
      raw_send(fd, frame, n);
    }
  });
  std::vector<char> frame(68, 'x'), buf;
  for (auto _ : state) {
    raw_send(sv[0], frame, 64);
    benchmark::DoNotOptimize(raw_recv(sv[0], buf));
  }
  ::close(sv[0]);
  t.join();
  ::close(sv[1]);
}
BENCHMARK(BM_PipePingPong64_raw)->UseRealTime();

// One-way throughput: messages of state.range(0) bytes, 64 MiB per iteration at least 1000 msgs.
void BM_PipeOneWay_troupe(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const int count = static_cast<int>(std::clamp<size_t>((64u << 20) / size / 4, 1000, 100000));
  auto [a, b] = mp::Pipe();
  std::vector<std::byte> msg(size, std::byte{1});
  for (auto _ : state) {
    std::thread t([&] {
      for (int i = 0; i < count; ++i) a.send_bytes(msg);
    });
    for (int i = 0; i < count; ++i) benchmark::DoNotOptimize(b.recv_bytes());
    t.join();
  }
  state.SetItemsProcessed(state.iterations() * count);
  state.SetBytesProcessed(state.iterations() * count * static_cast<int64_t>(size));
}
BENCHMARK(BM_PipeOneWay_troupe)->Arg(64)->Arg(1 << 20)->UseRealTime();

void BM_PipeOneWay_raw(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const int count = static_cast<int>(std::clamp<size_t>((64u << 20) / size / 4, 1000, 100000));
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  for (auto _ : state) {
    std::thread t([&] {
      std::vector<char> frame(size + 4, 1);
      for (int i = 0; i < count; ++i) raw_send(sv[0], frame, size);
    });
    std::vector<char> buf;
    for (int i = 0; i < count; ++i) benchmark::DoNotOptimize(raw_recv(sv[1], buf));
    t.join();
  }
  ::close(sv[0]);
  ::close(sv[1]);
  state.SetItemsProcessed(state.iterations() * count);
  state.SetBytesProcessed(state.iterations() * count * static_cast<int64_t>(size));
}
BENCHMARK(BM_PipeOneWay_raw)->Arg(64)->Arg(1 << 20)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
