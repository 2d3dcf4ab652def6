#include "troupe/subprocess/run.hpp"

namespace troupe::subprocess {

namespace {
// The Popen part of run()'s options.
PopenOptions popen_part(RunOptions o) {
  o.input.reset();
  o.capture_output = false;
  o.timeout = Timeout();
  o.check = false;
  return o;
}

bool is_set(const Redirect& r) {
  return r.kind() != Redirect::Kind::inherit;
}
}  // namespace

void CompletedProcess::check_returncode() const {
  if (returncode != 0)
    throw CalledProcessError(returncode, args, stdout_.value_or(""), stderr_.value_or(""),
                             command_line);
}

CompletedProcess run(Args args, RunOptions o) {
  if (o.input) {
    if (is_set(o.stdin_)) throw ValueError("stdin and input arguments may not both be used.");
    o.stdin_ = PIPE;
  }
  if (o.capture_output) {
    if (is_set(o.stdout_) || is_set(o.stderr_))
      throw ValueError("stdout and stderr arguments may not be used with capture_output.");
    o.stdout_ = PIPE;
    o.stderr_ = PIPE;
  }
  const bool command_line = args.is_string;
  Popen p(std::move(args), popen_part(o));
  Output out;
  try {
    out = p.communicate(o.input, o.timeout);
  } catch (const TimeoutExpired&) {
    // The output so far is in the exception (as Python's POSIX run()); the child goes.
    p.kill();
    p.wait();
    throw;
  } catch (...) {
    p.kill();  // the destructor waits
    throw;
  }
  CompletedProcess done{p.args(), *p.poll(), std::move(out.stdout_), std::move(out.stderr_),
                        command_line};
  if (o.check) done.check_returncode();
  return done;
}

int call(Args args, RunOptions o) {
  const Timeout timeout = o.timeout;
  o.timeout = Timeout();
  if (o.input || o.capture_output || o.check)
    throw TypeError("call: input, capture_output and check are arguments of run()");
  Popen p(std::move(args), popen_part(o));
  try {
    return p.wait(timeout);
  } catch (...) {
    p.kill();  // Python: "Including KeyboardInterrupt, wait handled that."
    throw;
  }
}

int check_call(Args args, RunOptions o) {
  const bool command_line = args.is_string;
  std::vector<std::string> cmd = args.list;
  const int rc = call(std::move(args), std::move(o));
  if (rc != 0) throw CalledProcessError(rc, std::move(cmd), {}, {}, command_line);
  return 0;
}

std::string check_output(Args args, RunOptions o) {
  if (is_set(o.stdout_)) throw ValueError("stdout argument not allowed, it will be overridden.");
  o.stdout_ = PIPE;
  o.check = true;
  return run(std::move(args), std::move(o)).stdout_.value_or("");
}

std::pair<int, std::string> getstatusoutput(const std::string& cmd) {
  std::string data;
  int code = 0;
  try {
    data = check_output(cmd, {.stderr_ = STDOUT, .text = true, .shell = true});
  } catch (const CalledProcessError& e) {
    data = e.output;
    code = e.returncode;
  }
  if (!data.empty() && data.back() == '\n') data.pop_back();
  return {code, data};
}

std::string getoutput(const std::string& cmd) {
  return getstatusoutput(cmd).second;
}

std::vector<Popen> pipeline(std::vector<std::vector<std::string>> commands, PopenOptions o) {
  if (commands.empty()) throw ValueError("pipeline: no commands");
  std::vector<Popen> procs;
  procs.reserve(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) {
    PopenOptions step = popen_part(o);
    if (i > 0) step.stdin_ = Redirect(*procs.back().stdout_);
    if (i + 1 < commands.size()) step.stdout_ = PIPE;
    procs.emplace_back(std::move(commands[i]), std::move(step));
    // The pipe between the two is theirs alone now (Python's "p1.stdout.close()").
    if (i > 0) procs[i - 1].stdout_.reset();
  }
  return procs;
}

}  // namespace troupe::subprocess
