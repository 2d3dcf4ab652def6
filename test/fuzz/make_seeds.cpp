// Writes seed inputs for the fuzz targets: make_seeds DIR creates
// DIR/{frame,handshake,codec,send_bytes}/.
// Made from the library itself, so the seeds follow the wire format as it changes.
#include <sys/stat.h>

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "troupe/codec.hpp"

namespace {

struct Payload {  // as in frame_fuzz.cpp (same name, same fingerprint)
  std::vector<std::byte> bytes;
  std::string text;
  std::map<std::int32_t, std::vector<std::byte>> more;
};

std::string dir;

void write_seed(const std::string& target, int n, std::uint8_t control,
                const std::vector<std::byte>& body) {
  const std::string d = dir + "/" + target;
  mkdir(d.c_str(), 0755);
  const std::string path = d + "/seed" + std::to_string(n);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return;
  std::fputc(control, f);
  std::fwrite(body.data(), 1, body.size(), f);
  std::fclose(f);
}

// One send_bytes_fuzz case: a buffer length, then offset and size (little-endian; size 2^64 - 1
// for None).
std::vector<std::byte> send_case(std::uint8_t length, std::uint64_t offset, std::uint64_t size) {
  std::vector<std::byte> out{std::byte{length}};
  for (std::uint64_t v : {offset, size})
    for (int i = 0; i < 8; ++i) out.push_back(std::byte(v >> (8 * i)));
  return out;
}

std::vector<std::byte> frame(const std::vector<std::byte>& payload) {
  std::vector<std::byte> out;
  const auto n = static_cast<std::uint32_t>(payload.size());
  for (int i = 3; i >= 0; --i) out.push_back(std::byte(n >> (8 * i)));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<std::byte> bytes(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

std::vector<std::byte> cat(std::initializer_list<std::vector<std::byte>> parts) {
  std::vector<std::byte> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  dir = argv[1];
  mkdir(dir.c_str(), 0755);
  // Frames: short, empty, long header, typed message.
  auto typed = troupe::to_bytes(std::vector<std::string>{"a", "bc"});
  for (std::uint8_t mode = 0; mode < 3; ++mode) {
    write_seed("frame", mode * 4 + 0, mode, cat({frame(bytes("hello")), frame({})}));
    write_seed("frame", mode * 4 + 1, mode,
               cat({bytes("\xff\xff\xff\xff"), bytes(std::string("\0\0\0\0\0\0\0\x03", 8)),
                    bytes("abc")}));
    write_seed("frame", mode * 4 + 2, mode, frame(typed));
    write_seed("frame", mode * 4 + 3, mode, frame(std::vector<std::byte>(600, std::byte{7})));
  }
  // Mode 4 (a large frame read segment by segment): the start of a real one, the rest zeros.
  auto large = troupe::to_bytes(Payload{
      std::vector<std::byte>(300 * 1024, std::byte{1}), "t", {{1, std::vector<std::byte>(70000)}}});
  large.resize(2048);
  write_seed("frame", 12, 4, large);
  write_seed("frame", 13, 3, frame(troupe::to_bytes(Payload{{}, "small", {}})));
  // Handshakes: a well-formed challenge, welcome and (wrong) answer, both dialects.
  const auto challenge = cat({bytes("#CHALLENGE#{sha256}"), std::vector<std::byte>(40)});
  const auto answer = cat({bytes("{sha256}"), std::vector<std::byte>(32)});
  write_seed("handshake", 0, 0, cat({frame(challenge), frame(bytes("#WELCOME#")), frame(answer)}));
  write_seed("handshake", 1, 1, cat({frame(answer), frame(challenge), frame(bytes("#WELCOME#"))}));
  write_seed("handshake", 2, 2,
             cat({frame(cat({bytes("#CHALLENGE#"), std::vector<std::byte>(20)})),
                  frame(bytes("#WELCOME#"))}));
  write_seed("handshake", 3, 3,
             cat({frame(std::vector<std::byte>(16)), frame(bytes("#FAILURE#"))}));
  // Codec: one well-formed message per type the target decodes (see codec_fuzz.cpp).
  write_seed("codec", 2, 2, typed);
  write_seed("codec", 3, 3,
             troupe::to_bytes(std::map<std::int64_t, std::tuple<bool, double, std::string>>{
                 {1, {true, 2.5, "x"}}, {-4, {false, 0, ""}}}));
  write_seed("codec", 4, 4, troupe::to_bytes(std::array<std::uint16_t, 8>{1, 2, 3}));
  write_seed(
      "codec", 5, 5,
      troupe::to_bytes(std::variant<std::int8_t, std::vector<std::byte>, std::set<std::string>>(
          std::set<std::string>{"p", "q"})));
  // send_bytes: in range, None, each of Python's four errors, and offset + size wrapping past
  // 2^64 (issue 15). The first byte of a case is the control byte write_seed puts first.
  constexpr std::uint64_t kMax = ~std::uint64_t{0};
  const auto cases =
      cat({send_case(16, 2, 3), send_case(16, 4, kMax), send_case(16, 0, 16),
           send_case(16, kMax, kMax), send_case(16, 17, kMax), send_case(16, 8, kMax - 1),
           send_case(16, 8, 9), send_case(16, 8, kMax - 7), send_case(200, 100, kMax - 99)});
  write_seed("send_bytes", 0, std::uint8_t(cases[0]),
             std::vector<std::byte>(cases.begin() + 1, cases.end()));
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}
