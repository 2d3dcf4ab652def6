// The concurrent.futures docs' ThreadPoolExecutor example, on local data: instead of fetching
// five web pages, five threads read files, and one of them fails (as one URL of the docs' list
// usually does). Results are printed as they complete.
//
// Python:
//     with concurrent.futures.ThreadPoolExecutor(max_workers=5) as executor:
//         future_to_url = {executor.submit(load_url, url, 60): url for url in URLS}
//         for future in concurrent.futures.as_completed(future_to_url):
//             ...
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "troupe/concurrent/futures.hpp"

namespace futures = troupe::concurrent::futures;

// Python's load_url(url, timeout): the content of one "page".
std::string load_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw troupe::FileNotFoundError(ENOENT, "No such file or directory: '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int main() {
  const std::vector<std::string> paths = {"/proc/self/status", "/proc/cpuinfo", "/etc/passwd",
                                          "/proc/version", "/no/such/page"};

  futures::ThreadPoolExecutor executor({.max_workers = 5});
  std::vector<futures::Future<std::string>> fs;
  std::map<const void*, std::string> future_to_path;
  for (const auto& p : paths) {
    fs.push_back(executor.submit(load_file, p));
    future_to_path[fs.back().id()] = p;
  }
  for (const auto& future : futures::as_completed(fs)) {
    const std::string& path = future_to_path[future.id()];
    try {
      const std::string& data = future.result();
      std::printf("'%s' page is %zu bytes\n", path.c_str(), data.size());
    } catch (const std::exception& exc) {
      std::printf("'%s' generated an exception: %s\n", path.c_str(), exc.what());
    }
  }
}
