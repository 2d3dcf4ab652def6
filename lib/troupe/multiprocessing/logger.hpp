// troupe/multiprocessing/logger.hpp — multiprocessing.get_logger() and log_to_stderr(): the
// "multiprocessing" logger, with Python's levels (SUBDEBUG 5 and SUBWARNING 25 included) and
// Python's record format "[LEVEL/ProcessName] message".
//
// troupe's multiprocessing reports through it what Python's does (a child "calling
// self.run()", "process exiting with exitcode N", "process shutting down", the joins and
// terminations at exit) and what troupe adds (a lock recovered from a holder that died).
// A child made by fork inherits the level and handlers; one made by spawn gets the level and
// whether log_to_stderr was called, as Python passes them in its preparation data.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::multiprocessing {

/// Python's logging levels, and multiprocessing's two extra ones.
namespace logging {
inline constexpr int NOTSET = 0;
inline constexpr int SUBDEBUG = 5;
inline constexpr int DEBUG = 10;
inline constexpr int INFO = 20;
inline constexpr int SUBWARNING = 25;
inline constexpr int WARNING = 30;
inline constexpr int ERROR = 40;
inline constexpr int CRITICAL = 50;
/// "DEBUG", "SUBWARNING", …; "Level N" for others (as logging.getLevelName).
std::string level_name(int level);
}  // namespace logging

/// Python: the logger `multiprocessing.get_logger()` returns.
class Logger {
public:
  /// Receives each record that passes the level, formatted "[LEVEL/ProcessName] message".
  using Handler = std::function<void(int level, const std::string& line)>;

  std::string name() const { return "multiprocessing"; }
  /// Python: `setLevel`, `level`, `getEffectiveLevel()` (NOTSET counts as WARNING, the root's).
  void set_level(int level) noexcept { level_.store(level, std::memory_order_relaxed); }
  int level() const noexcept { return level_.load(std::memory_order_relaxed); }
  int get_effective_level() const noexcept;
  bool is_enabled_for(int level) const noexcept { return level >= get_effective_level(); }

  /// Python: `addHandler`, and removing them all (which also forgets log_to_stderr).
  void add_handler(Handler h);
  void clear_handlers();
  std::size_t handler_count() const;

  /// Python: `log(level, msg)` and the shorthands. With no handler, records of WARNING and
  /// above go to stderr as the bare message (Python's logging.lastResort).
  void log(int level, std::string_view message);
  void sub_debug(std::string_view m) { log(logging::SUBDEBUG, m); }
  void debug(std::string_view m) { log(logging::DEBUG, m); }
  void info(std::string_view m) { log(logging::INFO, m); }
  void sub_warning(std::string_view m) { log(logging::SUBWARNING, m); }
  void warning(std::string_view m) { log(logging::WARNING, m); }
  void error(std::string_view m) { log(logging::ERROR, m); }
  void critical(std::string_view m) { log(logging::CRITICAL, m); }

  /// Whether log_to_stderr() was called in this process (spawn passes it on).
  bool logs_to_stderr() const noexcept { return to_stderr_.load(std::memory_order_relaxed); }
  void _set_logs_to_stderr(bool on) noexcept { to_stderr_.store(on, std::memory_order_relaxed); }

private:
  std::atomic<int> level_{logging::NOTSET};
  std::atomic<bool> to_stderr_{false};
  mutable std::mutex m_;
  std::vector<Handler> handlers_;
};

/// Python: `multiprocessing.get_logger()`.
Logger& get_logger();

/// Python: `multiprocessing.log_to_stderr(level=None)`: adds a handler writing each record to
/// stderr (one write per record, so records of several processes do not interleave), sets the
/// level if given, returns the logger.
Logger& log_to_stderr(std::optional<int> level = std::nullopt);

}  // namespace troupe::multiprocessing
