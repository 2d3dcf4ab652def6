// bench/connection_bench.cpp — multiprocessing.connection over a Pipe (socketpair) against the
// same traffic written by hand with read/write on a socketpair (one write per message, the
// 4-byte length in the same buffer); Listener/Client connect + authentication against the
// handshake by hand; and the same over TLS against OpenSSL driven by hand (SSL_set_fd,
// SSL_read/SSL_write). bench/compare.py runs it next to Python's multiprocessing (and ssl).
//
// `connection_bench --write-tls-files DIR` writes the test certificates to DIR and exits (the
// Python side of the comparison uses them).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "troupe/multiprocessing/connection.hpp"
#include "troupe/multiprocessing/listener.hpp"
#include "troupe/multiprocessing/tls.hpp"

#include "tls_files.hpp"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

namespace {

namespace mp = troupe::multiprocessing;

// A socket written by hand: plain, or through a TLS session set up by hand.
struct Io {
  Io(int f) : fd(f) {}                  // NOLINT: a plain fd converts
  Io(int f, SSL* s) : fd(f), ssl(s) {}  // s may be null: plain
  int fd;
  SSL* ssl = nullptr;
};

void read_exact(Io io, char* p, size_t n) {
  while (n) {
    const int chunk = static_cast<int>(std::min<size_t>(n, 1 << 30));
    ssize_t r = io.ssl ? SSL_read(io.ssl, p, chunk) : ::read(io.fd, p, n);
    if (r <= 0) std::abort();
    p += r;
    n -= static_cast<size_t>(r);
  }
}
void write_all(Io io, const char* p, size_t n) {
  while (n) {
    const int chunk = static_cast<int>(std::min<size_t>(n, 1 << 30));
    ssize_t r = io.ssl ? SSL_write(io.ssl, p, chunk) : ::write(io.fd, p, n);
    if (r <= 0) std::abort();
    p += r;
    n -= static_cast<size_t>(r);
  }
}
// Raw framing by hand: 4-byte length + payload in one write; header then body in two reads.
void raw_send(Io io, std::vector<char>& frame, size_t n) {
  frame.resize(4 + n);
  uint32_t be = htonl(static_cast<uint32_t>(n));
  std::memcpy(frame.data(), &be, 4);
  write_all(io, frame.data(), frame.size());
}
size_t raw_recv(Io io, std::vector<char>& buf) {
  uint32_t be;
  read_exact(io, reinterpret_cast<char*>(&be), 4);
  size_t n = ntohl(be);
  buf.resize(n);
  read_exact(io, buf.data(), n);
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
int one_way_count(size_t size) {
  return static_cast<int>(std::clamp<size_t>((64u << 20) / size / 4, 1000, 100000));
}

// Per iteration, `count` calls of send() on a thread against `count` calls of recv() here.
template <class Send, class Recv>
void one_way(benchmark::State& state, size_t size, int count, Send send, Recv recv) {
  for (auto _ : state) {
    std::thread t([&] {
      for (int i = 0; i < count; ++i) send();
    });
    for (int i = 0; i < count; ++i) recv();
    t.join();
  }
  state.SetItemsProcessed(state.iterations() * count);
  state.SetBytesProcessed(state.iterations() * count * static_cast<int64_t>(size));
}

void BM_PipeOneWay_troupe(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  auto [a, b] = mp::Pipe();
  std::vector<std::byte> msg(size, std::byte{1});
  one_way(
      state, size, one_way_count(size), [&, &a = a] { a.send_bytes(msg); },
      [&b = b] { benchmark::DoNotOptimize(b.recv_bytes()); });
}
BENCHMARK(BM_PipeOneWay_troupe)->Arg(64)->Arg(1 << 20)->UseRealTime();

void BM_PipeOneWay_raw(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  std::vector<char> frame(size + 4, 1), buf;
  one_way(
      state, size, one_way_count(size), [&] { raw_send(sv[0], frame, size); },
      [&] { benchmark::DoNotOptimize(raw_recv(sv[1], buf)); });
  ::close(sv[0]);
  ::close(sv[1]);
}
BENCHMARK(BM_PipeOneWay_raw)->Arg(64)->Arg(1 << 20)->UseRealTime();

// Typed one-way: the same bytes as send<std::vector<std::byte>>, so the envelope's cost shows.
void BM_PipeOneWayTyped_troupe(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  auto [tx, rx] = mp::Pipe<std::vector<std::byte>>();
  std::vector<std::byte> msg(size, std::byte{1});
  one_way(
      state, size, one_way_count(size), [&, &tx = tx] { tx.send(msg); },
      [&rx = rx] { benchmark::DoNotOptimize(rx.recv()); });
}
BENCHMARK(BM_PipeOneWayTyped_troupe)->Arg(64)->Arg(1 << 20)->UseRealTime();

// A small record, as Python would send a tuple: (id, name, [four floats]).
struct Record {
  std::int64_t id;
  std::string name;
  std::vector<double> values;
};

void BM_PipeOneWayRecord_troupe(benchmark::State& state) {
  auto [tx, rx] = mp::Pipe<Record>();
  const Record r{1, "name", {1.0, 2.0, 3.0, 4.0}};
  one_way(
      state, 0, 100000, [&, &tx = tx] { tx.send(r); },
      [&rx = rx] { benchmark::DoNotOptimize(rx.recv()); });
}
BENCHMARK(BM_PipeOneWayRecord_troupe)->UseRealTime();

// ---- TLS ------------------------------------------------------------------------------------
// troupe's Listener/Client with a TLS context against OpenSSL driven by hand over the same
// contexts (same protocol and cipher): SSL_set_fd on a blocking socket, SSL_read/SSL_write.

struct Tls {
  troupe::testing::TlsFiles files;
  std::shared_ptr<boost::asio::ssl::context> server = mp::make_tls_context(
      mp::TlsRole::server,
      {.certificate_chain = files.path("server.pem"), .private_key = files.path("server.key")});
  std::shared_ptr<boost::asio::ssl::context> client =
      mp::make_tls_context(mp::TlsRole::client, {.trusted_ca = files.path("ca.pem")});
};
Tls& tls() {
  static Tls t;
  return t;
}

// A TLS session by hand on a connected socket; the client checks the server's IP address.
SSL* raw_tls(int fd, bool server) {
  SSL* ssl = SSL_new(server ? tls().server->native_handle() : tls().client->native_handle());
  SSL_set_fd(ssl, fd);
  if (!server) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), "127.0.0.1");
  if ((server ? SSL_accept(ssl) : SSL_connect(ssl)) != 1) std::abort();
  return ssl;
}

// ---- connect + mutual authentication ----------------------------------------------------------
// Arg 0: 0 = TCP on 127.0.0.1, 1 = Unix socket. Arg 1: 1 = also one 64-byte round trip.

const char kKey[] = "benchmark key";

// The handshake by hand: framing as above, HMAC-SHA256 with EVP_MAC, CRYPTO_memcmp.
struct RawHmac {
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac);
  ~RawHmac() {
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
  }
  void operator()(const char* msg, size_t n, unsigned char out[32]) {
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                           OSSL_PARAM_construct_end()};
    size_t len = 0;
    if (!EVP_MAC_init(ctx, reinterpret_cast<const unsigned char*>(kKey), sizeof kKey - 1, params) ||
        !EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(msg), n) ||
        !EVP_MAC_final(ctx, out, &len, 32))
      std::abort();
  }
};

void raw_deliver(Io fd, RawHmac& hmac) {
  std::vector<char> frame, buf;
  std::string challenge = "#CHALLENGE#{sha256}";
  challenge.resize(challenge.size() + 40);
  RAND_bytes(reinterpret_cast<unsigned char*>(challenge.data()) + 19, 40);
  frame.assign(4, 0);
  frame.insert(frame.end(), challenge.begin(), challenge.end());
  raw_send(fd, frame, challenge.size());
  raw_recv(fd, buf);
  unsigned char mac[32];
  hmac(challenge.data() + 11, challenge.size() - 11, mac);
  const bool ok = buf.size() == 8 + 32 && CRYPTO_memcmp(buf.data() + 8, mac, 32) == 0;
  const std::string reply = ok ? "#WELCOME#" : "#FAILURE#";
  frame.assign(4, 0);
  frame.insert(frame.end(), reply.begin(), reply.end());
  raw_send(fd, frame, reply.size());
  if (!ok) std::abort();
}

void raw_answer(Io fd, RawHmac& hmac) {
  std::vector<char> frame, buf;
  raw_recv(fd, buf);  // "#CHALLENGE#{sha256}" + 40 bytes
  unsigned char mac[32];
  hmac(buf.data() + 11, buf.size() - 11, mac);
  frame.assign(4, 0);
  const std::string prefix = "{sha256}";
  frame.insert(frame.end(), prefix.begin(), prefix.end());
  frame.insert(frame.end(), mac, mac + 32);
  raw_send(fd, frame, 40);
  raw_recv(fd, buf);
  if (buf.size() != 9 || std::memcmp(buf.data(), "#WELCOME#", 9) != 0) std::abort();
}

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = AF_INET;
};

// A listening socket on 127.0.0.1:0 or a fresh Unix path.
int raw_listen(bool unix_socket, Endpoint& ep, std::string& path) {
  int fd;
  if (unix_socket) {
    path = "/tmp/troupe-bench-" + std::to_string(getpid()) + ".sock";
    ::unlink(path.c_str());
    auto* sun = reinterpret_cast<sockaddr_un*>(&ep.addr);
    sun->sun_family = AF_UNIX;
    std::strncpy(sun->sun_path, path.c_str(), sizeof sun->sun_path - 1);
    ep.len = sizeof(sockaddr_un);
    ep.family = AF_UNIX;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ep.addr);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ep.len = sizeof(sockaddr_in);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ep.addr), ep.len) != 0 || listen(fd, 64) != 0)
    std::abort();
  getsockname(fd, reinterpret_cast<sockaddr*>(&ep.addr), &ep.len);
  return fd;
}

void BM_ConnectAuth_raw(benchmark::State& state) {
  const bool unix_socket = state.range(0) == 1;
  const bool round_trip = state.range(1) == 1;
  const bool with_tls = state.range(2) == 1;
  Endpoint ep;
  std::string path;
  const int lfd = raw_listen(unix_socket, ep, path);
  std::thread server([&] {
    RawHmac hmac;
    std::vector<char> buf, frame;
    for (;;) {
      const int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;  // shut down: the benchmark is over
      int one = 1;
      if (!unix_socket) setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      const Io io(c, with_tls ? raw_tls(c, true) : nullptr);
      raw_deliver(io, hmac);
      raw_answer(io, hmac);
      if (round_trip) {
        const size_t n = raw_recv(io, buf);
        frame.assign(buf.begin(), buf.end());
        frame.insert(frame.begin(), 4, 0);
        raw_send(io, frame, n);
      }
      if (io.ssl) {
        SSL_shutdown(io.ssl);
        SSL_free(io.ssl);
      }
      ::close(c);
    }
  });
  RawHmac hmac;
  std::vector<char> frame(68, 'x'), buf;
  for (auto _ : state) {
    const int fd = socket(ep.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (!unix_socket) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, reinterpret_cast<sockaddr*>(&ep.addr), ep.len) != 0) std::abort();
    const Io io(fd, with_tls ? raw_tls(fd, false) : nullptr);
    raw_answer(io, hmac);
    raw_deliver(io, hmac);
    if (round_trip) {
      raw_send(io, frame, 64);
      raw_recv(io, buf);
    }
    if (io.ssl) {
      SSL_shutdown(io.ssl);
      SSL_free(io.ssl);
    }
    ::close(fd);
  }
  ::shutdown(lfd, SHUT_RDWR);  // wakes the accept
  server.join();
  ::close(lfd);
  if (unix_socket) ::unlink(path.c_str());
}
// Args: Unix socket?, a 64-byte round trip?, TLS (by hand, on the same contexts as troupe's)?
BENCHMARK(BM_ConnectAuth_raw)
    ->Args({0, 0, 0})
    ->Args({1, 0, 0})
    ->Args({0, 1, 0})
    ->Args({1, 1, 0})
    ->Args({0, 1, 1})
    ->UseRealTime();

void BM_ConnectAuth_troupe(benchmark::State& state) {
  const bool unix_socket = state.range(0) == 1;
  const bool round_trip = state.range(1) == 1;
  const bool with_tls = state.range(2) == 1;
  const std::string path = "/tmp/troupe-bench-" + std::to_string(getpid()) + ".sock";
  auto address =
      unix_socket ? mp::Address::parse("unix:" + path) : mp::Address::parse("127.0.0.1:0");
  const auto key = mp::AuthenticationString(kKey);
  mp::Listener listener(address,
                        {.backlog = 64, .authkey = key, .tls = with_tls ? tls().server : nullptr});
  address = listener.address();
  std::atomic<bool> stop{false};
  std::thread server([&] {
    for (;;) {
      try {
        auto c = listener.accept();
        if (round_trip) c.send_bytes(c.recv_bytes());
      } catch (const std::exception&) {
        if (stop) return;
      }
    }
  });
  const std::string msg(64, 'x');
  const mp::ClientOptions options{.authkey = key, .tls = with_tls ? tls().client : nullptr};
  for (auto _ : state) {
    auto c = mp::Client(address, options);
    if (round_trip) {
      c.send_bytes(msg);
      benchmark::DoNotOptimize(c.recv_bytes());
    }
  }
  stop = true;
  ::shutdown(listener.fileno(), SHUT_RDWR);  // wakes the accept
  server.join();
}
BENCHMARK(BM_ConnectAuth_troupe)
    ->Args({0, 0, 0})
    ->Args({1, 0, 0})
    ->Args({0, 1, 0})
    ->Args({1, 1, 0})
    ->Args({0, 1, 1})
    ->UseRealTime();

// ---- TLS one-way ----------------------------------------------------------------------------

// A connected TCP pair on 127.0.0.1 with TCP_NODELAY, and TLS by hand on it.
struct RawTlsPair {
  int a = -1, b = -1;
  SSL* sa = nullptr;
  SSL* sb = nullptr;
  RawTlsPair() {
    Endpoint ep;
    std::string unused;
    const int lfd = raw_listen(false, ep, unused);
    a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(a, reinterpret_cast<sockaddr*>(&ep.addr), ep.len) != 0) std::abort();
    b = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(lfd);
    int one = 1;
    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::thread server([&] { sb = raw_tls(b, true); });
    sa = raw_tls(a, false);
    server.join();
  }
  ~RawTlsPair() {
    SSL_free(sa);
    SSL_free(sb);
    ::close(a);
    ::close(b);
  }
};

void BM_TlsOneWay_raw(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  RawTlsPair p;
  std::vector<char> frame(size + 4, 1), buf;
  one_way(
      state, size, one_way_count(size), [&] { raw_send(Io(p.a, p.sa), frame, size); },
      [&] { benchmark::DoNotOptimize(raw_recv(Io(p.b, p.sb), buf)); });
}
BENCHMARK(BM_TlsOneWay_raw)->Arg(64)->Arg(1 << 20)->UseRealTime();

void BM_TlsOneWay_troupe(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  const auto key = mp::AuthenticationString(kKey);
  mp::Listener listener(std::nullopt, {.authkey = key, .tls = tls().server});
  mp::Connection b;
  std::thread server([&] { b = listener.accept(); });
  mp::Connection a = mp::Client(listener.address(), {.authkey = key, .tls = tls().client});
  server.join();
  std::vector<std::byte> msg(size, std::byte{1});
  one_way(
      state, size, one_way_count(size), [&] { a.send_bytes(msg); },
      [&] { benchmark::DoNotOptimize(b.recv_bytes()); });
}
BENCHMARK(BM_TlsOneWay_troupe)->Arg(64)->Arg(1 << 20)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-tls-files") {
    troupe::testing::TlsFiles files{std::string(argv[2])};
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
