#include "troupe/multiprocessing/logger.hpp"

#include <unistd.h>

#include "troupe/multiprocessing/process.hpp"

namespace troupe::multiprocessing {

std::string logging::level_name(int level) {
  switch (level) {
    case NOTSET: return "NOTSET";
    case SUBDEBUG: return "SUBDEBUG";
    case DEBUG: return "DEBUG";
    case INFO: return "INFO";
    case SUBWARNING: return "SUBWARNING";
    case WARNING: return "WARNING";
    case ERROR: return "ERROR";
    case CRITICAL: return "CRITICAL";
    default: return "Level " + std::to_string(level);
  }
}

namespace {
void write_all(const std::string& line) noexcept {
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(2, p, left);
    if (n <= 0) return;  // stderr closed or full: a log record is not worth blocking for
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}
}  // namespace

int Logger::get_effective_level() const noexcept {
  const int l = level();
  return l == logging::NOTSET ? logging::WARNING : l;
}

void Logger::add_handler(Handler h) {
  std::lock_guard lock(m_);
  handlers_.push_back(std::move(h));
}

void Logger::clear_handlers() {
  std::lock_guard lock(m_);
  handlers_.clear();
  to_stderr_.store(false, std::memory_order_relaxed);
}

std::size_t Logger::handler_count() const {
  std::lock_guard lock(m_);
  return handlers_.size();
}

void Logger::log(int level, std::string_view message) {
  if (!is_enabled_for(level)) return;
  std::vector<Handler> handlers;
  {
    std::lock_guard lock(m_);
    handlers = handlers_;
  }
  if (handlers.empty()) {
    if (level >= logging::WARNING) write_all(std::string(message) + "\n");
    return;
  }
  const std::string line = "[" + logging::level_name(level) + "/" + current_process().name() +
                           "] " + std::string(message);
  for (const auto& h : handlers) h(level, line);
}

Logger& get_logger() {
  static Logger* const logger = new Logger;  // never destroyed: usable from exit handlers
  return *logger;
}

Logger& log_to_stderr(std::optional<int> level) {
  Logger& l = get_logger();
  l.add_handler([](int, const std::string& line) { write_all(line + "\n"); });
  if (level && *level != 0) l.set_level(*level);
  l._set_logs_to_stderr(true);
  return l;
}

}  // namespace troupe::multiprocessing
