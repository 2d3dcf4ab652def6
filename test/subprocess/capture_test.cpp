// detail::Capture, the buffer behind communicate(), run() and Stream::read(): every byte comes
// back in order for sizes on both sides of its thresholds (the std::string it starts in, the
// mapping it moves to, the mapping's growth, the page moves into the result), appends mixed with
// reads, moves, reuse after take(), and no mapping left behind; then the same through run() and
// Stream::read() against a file the child copies.
#include "troupe/detail/capture.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "troupe/subprocess.hpp"

#include "leak_check.hpp"

namespace troupe::detail {
namespace {

using CaptureTest = troupe::testing::LeakCheck;

// A pattern that differs from one page to the next and within each page.
std::string pattern(std::size_t n, unsigned seed = 1) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>((i * 31 + i / 4096 * 7 + seed) % 251);
  return s;
}

// Writes `data` into a pipe from a thread while `sink` reads it to the end.
void pump(const std::string& data, Capture& sink, bool grow_pipe = true) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  std::thread writer([&] {
    std::size_t done = 0;
    while (done < data.size()) {
      const ssize_t w = ::write(p[1], data.data() + done, data.size() - done);
      if (w <= 0) break;
      done += static_cast<std::size_t>(w);
    }
    ::close(p[1]);
  });
  ssize_t r;
  while ((r = sink.read_from(p[0], grow_pipe)) > 0) {
  }
  writer.join();
  ::close(p[0]);
  EXPECT_EQ(r, 0);
}

// Whether the page holding `p` is mapped (mincore fails with ENOMEM on an unmapped one).
bool mapped(const char* p) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  unsigned char resident;
  void* start = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) / page * page);
  return ::mincore(start, page, &resident) == 0;
}

TEST_F(CaptureTest, EveryByteInOrderAcrossTheThresholds) {
  const std::size_t kib = 1024, mib = kib * kib;
  for (std::size_t n :
       {std::size_t{0}, std::size_t{1}, 4095 * std::size_t{1}, 64 * kib + 3, 256 * kib - 1,
        256 * kib, 256 * kib + 1, mib + 4097, 3 * mib + 123, 9 * mib + 5, 33 * mib + 4096}) {
    SCOPED_TRACE(n);
    const std::string want = pattern(n, static_cast<unsigned>(n));
    Capture c;
    pump(want, c);
    ASSERT_EQ(c.size(), n);
    EXPECT_TRUE(c.view() == want);
    const std::string got = c.take();
    ASSERT_EQ(got.size(), n);
    EXPECT_TRUE(got == want) << "first difference at "
                             << std::mismatch(got.begin(), got.end(), want.begin()).first -
                                    got.begin();
    EXPECT_TRUE(c.empty());
  }
}

TEST_F(CaptureTest, AppendsAndReadsMix) {
  const std::string a = pattern(100 * 1024, 3), b = pattern(2 << 20, 4), d = pattern(777, 5);
  Capture c;
  c.append(a);
  pump(b, c, false);
  c.append(d);
  pump(a, c);
  EXPECT_TRUE(c.take() == a + b + d + a);
  // Reused after take(), and large appends alone.
  c.append(b);
  c.append(b);
  EXPECT_TRUE(c.take() == b + b);
  EXPECT_EQ(c.take(), "");
}

TEST_F(CaptureTest, MovesHandOverTheBytes) {
  const std::string big = pattern(5 << 20, 6);
  Capture c;
  pump(big, c);
  Capture moved(std::move(c));
  EXPECT_TRUE(c.empty());
  Capture assigned;
  assigned.append("replaced");
  assigned = std::move(moved);
  EXPECT_TRUE(moved.empty());
  EXPECT_TRUE(assigned.take() == big);
}

TEST_F(CaptureTest, LeavesNoMappingBehind) {
  // A large capture lives in a mapping of its own: gone once taken (its pages moved into the
  // string, the rest unmapped) and once cleared or destroyed. Nothing allocates between the
  // unmapping and the checks, so the addresses cannot have been reused.
  Capture taken;
  pump(pattern(6 << 20), taken);
  const char* first = taken.view().data();
  const char* middle = first + (3 << 20);
  ASSERT_TRUE(mapped(first) && mapped(middle));
  const std::string s = taken.take();
  EXPECT_FALSE(mapped(first));
  EXPECT_FALSE(mapped(middle));
  EXPECT_TRUE(s == pattern(6 << 20));
  {
    Capture dropped;
    pump(pattern(2 << 20), dropped);
    first = dropped.view().data();
    ASSERT_TRUE(mapped(first));
  }
  EXPECT_FALSE(mapped(first));
}

TEST_F(CaptureTest, ABadFdIsAnErrorNotData) {
  Capture c;
  EXPECT_EQ(c.read_from(-1, true), -EBADF);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  EXPECT_EQ(c.read_from(p[0], true), -1);  // would block
  ::close(p[0]);
  ::close(p[1]);
  EXPECT_TRUE(c.empty());
}

// ---- through subprocess ---------------------------------------------------------------------

class CaptureFile : public CaptureTest {
protected:
  void SetUp() override {
    CaptureTest::SetUp();
    char name[] = "/tmp/troupe-capture-XXXXXX";
    const int fd = ::mkstemp(name);
    ASSERT_GE(fd, 0);
    ::close(fd);
    path_ = name;
    data_ = pattern((12 << 20) + 4321, 9);
    data_[65535] = '\r';  // for text mode: "\r\n" across a 64 KiB read's end
    data_[65536] = '\n';
    std::ofstream(path_, std::ios::binary) << data_;
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    CaptureTest::TearDown();
  }
  std::string path_, data_;
};

TEST_F(CaptureFile, RunCapturesALargeOutputExactly) {
  namespace sp = troupe::subprocess;
  auto r = sp::run({"cat", path_}, {.capture_output = true});
  ASSERT_EQ(r.stdout_->size(), data_.size());
  EXPECT_TRUE(*r.stdout_ == data_);
  EXPECT_EQ(*r.stderr_, "");
  // Both pipes (the poll() path), and the same output on stderr.
  auto both = sp::run({"sh", "-c", "cat \"$0\"; cat \"$0\" >&2", path_}, {.capture_output = true});
  EXPECT_TRUE(*both.stdout_ == data_);
  EXPECT_TRUE(*both.stderr_ == data_);
}

TEST_F(CaptureFile, ALargeCaptureEnlargesItsPipeUnlessAPipesizeWasGiven) {
  namespace sp = troupe::subprocess;
  sp::Popen sized({"cat", path_}, {.stdout_ = sp::PIPE, .pipesize = 16384});
  EXPECT_TRUE(sized.stdout_->read() == data_);
  EXPECT_EQ(::fcntl(sized.stdout_->fileno(), F_GETPIPE_SZ), 16384);
  EXPECT_EQ(sized.wait(), 0);
  sp::Popen plain({"cat", path_}, {.stdout_ = sp::PIPE});
  EXPECT_TRUE(plain.stdout_->read() == data_);
  long max_size = 0;
  std::ifstream("/proc/sys/fs/pipe-max-size") >> max_size;
  if (max_size >= (1 << 20)) {  // best effort: where the system allows it
    EXPECT_EQ(::fcntl(plain.stdout_->fileno(), F_GETPIPE_SZ), 1 << 20);
  }
  EXPECT_EQ(plain.wait(), 0);
}

TEST_F(CaptureFile, TextModeAndStreamReadOfALargeOutput) {
  namespace sp = troupe::subprocess;
  std::string text;  // universal newlines, written out plainly
  for (std::size_t i = 0; i < data_.size(); ++i) {
    if (data_[i] == '\r' && i + 1 < data_.size() && data_[i + 1] == '\n') continue;
    text += data_[i] == '\r' ? '\n' : data_[i];
  }
  auto r = sp::run({"cat", path_}, {.text = true, .capture_output = true});
  EXPECT_TRUE(*r.stdout_ == text);
  sp::Popen p({"cat", path_}, {.stdout_ = sp::PIPE});
  EXPECT_EQ(p.stdout_->read(10), data_.substr(0, 10));  // buffered first, then to the end
  const std::string rest = p.stdout_->read();
  EXPECT_TRUE(rest == data_.substr(10));
  EXPECT_EQ(p.wait(), 0);
}

}  // namespace
}  // namespace troupe::detail
