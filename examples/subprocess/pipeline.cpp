// The Python docs' "Replacing shell pipeline" example, in C++, three ways, and shlex:
//
//   output=$(dmesg | grep hda)
//   p1 = Popen(["dmesg"], stdout=PIPE); p2 = Popen(["grep", "hda"], stdin=p1.stdout, stdout=PIPE)
//   p1.stdout.close()  # Allow p1 to receive a SIGPIPE if p2 exits.
//   output = p2.communicate()[0]
//
// (printf stands in for dmesg, whose log this machine may not let us read.)
#include <cstdio>
#include <string>

#include "troupe/subprocess.hpp"

namespace sp = troupe::subprocess;

int main() {
  const char* log = "sda: ok\\nhda1: ok\\nsdb: ok\\nhda2: read error\\n";

  // 1. By hand, as the Python docs.
  sp::Popen p1({"printf", log}, {.stdout_ = sp::PIPE});
  sp::Popen p2({"grep", "hda"}, {.stdin_ = *p1.stdout_, .stdout_ = sp::PIPE});
  p1.stdout_->close();  // p1 gets SIGPIPE if p2 ends first
  const std::string by_hand = *p2.communicate().stdout_;
  p1.wait();

  // 2. With troupe's pipeline helper (no shell).
  auto procs = sp::pipeline({{"printf", log}, {"grep", "hda"}}, {.stdout_ = sp::PIPE});
  const std::string helper = procs.back().stdout_->read();
  for (auto& p : procs) p.wait();

  // 3. Through the shell, with the argument quoted by shlex.
  const std::string line = "printf " + troupe::shlex::quote(log) + " | grep hda";
  const std::string shell = sp::check_output(line, {.shell = true});

  std::printf("%s", by_hand.c_str());
  std::printf("the same three ways: %s\n", by_hand == helper && helper == shell ? "yes" : "NO");
  std::printf("shell command line: %s\n", line.c_str());
  return by_hand == helper && helper == shell ? 0 : 1;
}
