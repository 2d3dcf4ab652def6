// The tests' precompiled header (scripts/make_pch.py, test/meson.build): what most test files
// include, parsed once per build instead of once per test file. Every test is compiled with
// `-include` of it and still includes what it uses itself. Only headers that declare; a header
// that defines entry points or test cases (pool_entries.hpp, start_methods.hpp) stays out.
// No include guard: compiled as the main file, a guarded header would warn.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "troupe/entry.hpp"
#include "troupe/errors.hpp"
#include "troupe/multiprocessing/process.hpp"
#include "troupe/threading/thread.hpp"

#include "leak_check.hpp"
