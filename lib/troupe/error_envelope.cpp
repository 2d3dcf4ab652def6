#include "troupe/error_envelope.hpp"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "troupe/codec.hpp"
#include "troupe/internal/demangle.hpp"

namespace troupe {

namespace {

std::atomic<ProcessNameSource> process_name_source{nullptr};

std::string process_name() {
  if (auto source = process_name_source.load(std::memory_order_acquire)) {
    try {
      return source();
    } catch (...) {  // the program's name below
    }
  }
  return program_invocation_short_name;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown host";
  return buf;
}

// `s` cut to `limit` bytes (never inside a UTF-8 sequence), marked, if it is longer.
std::string_view cut(std::string_view s, std::size_t limit, std::string& storage) {
  if (s.size() <= limit) return s;
  const std::string mark = "... (cut, " + std::to_string(s.size()) + " bytes)";
  std::size_t keep = limit > mark.size() ? limit - mark.size() : 0;
  while (keep > 0 && (static_cast<unsigned char>(s[keep]) & 0xC0) == 0x80) --keep;
  storage.assign(s.substr(0, keep));
  storage += mark;
  return storage;
}

template <class Setter>
void put_text(Setter&& set, std::string_view s, std::size_t limit) {
  std::string storage;
  const std::string_view t = cut(s, limit, storage);
  set(capnp::Text::Reader(t.data(), t.size()));
}

std::string get_text(capnp::Text::Reader t, std::size_t limit, const char* field) {
  if (t.size() > limit)
    throw ValueError(std::string("an error envelope's ") + field + " is " +
                     std::to_string(t.size()) + " bytes, over its " + std::to_string(limit) +
                     "-byte limit");
  return std::string(t.cStr(), t.size());
}

// The C++ type of `x`, as thrown: std::throw_with_nested(T) throws a type of its own around T.
std::string type_of(const std::exception& x) {
  std::string t = internal::demangle(typeid(x));
  constexpr std::string_view nested = "std::_Nested_exception<";
  if (t.starts_with(nested) && t.ends_with('>'))
    t = t.substr(nested.size(), t.size() - nested.size() - 1);
  return t;
}

// "TYPE: what" of the exception in `e`.
std::string describe_one(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return type_of(x) + ": " + x.what();
  } catch (...) {
    return internal::current_exception_type() + " (not a std::exception)";
  }
}

// The causes of `x` (std::nested_exception), outermost first, one line each, at most 16.
std::string causes(const std::exception& x) {
  std::string out;
  const auto* nested = dynamic_cast<const std::nested_exception*>(&x);
  for (int depth = 0; nested && nested->nested_ptr() && depth < 16; ++depth) {
    const std::exception_ptr cause = nested->nested_ptr();
    out += "caused by " + describe_one(cause) + "\n";
    nested = nullptr;
    try {
      std::rethrow_exception(cause);
    } catch (const std::exception& c) {
      nested = dynamic_cast<const std::nested_exception*>(&c);
    } catch (...) {
    }
  }
  return out;
}

// ---- a Python-like repr of an encoded value, for summarize_arguments() ------------------------

// The type parameters of a signature "name<a,b<c,d>,e>" (empty for one without).
std::vector<std::string_view> type_parameters(std::string_view sig) {
  std::vector<std::string_view> out;
  const auto open = sig.find('<');
  if (open == std::string_view::npos || sig.back() != '>') return out;
  int depth = 0;
  std::size_t from = open + 1;
  for (std::size_t i = from; i + 1 < sig.size(); ++i) {
    if (sig[i] == '<') ++depth;
    if (sig[i] == '>') --depth;
    if (sig[i] == ',' && depth == 0) {
      out.push_back(sig.substr(from, i - from));
      from = i + 1;
    }
  }
  out.push_back(sig.substr(from, sig.size() - 1 - from));
  return out;
}

class Summary {
public:
  explicit Summary(std::size_t limit) : limit_(limit) {}
  bool full() const noexcept { return out_.size() >= limit_; }
  std::string take() && {
    if (out_.size() > limit_) {
      std::size_t keep = limit_ > 3 ? limit_ - 3 : 0;
      while (keep > 0 && (static_cast<unsigned char>(out_[keep]) & 0xC0) == 0x80) --keep;
      out_.resize(keep);
      out_ += "...";
    }
    return std::move(out_);
  }

  // `sig`: its codec signature, where known (it tells a packed array's element type).
  void value(proto::Value::Reader v, std::string_view sig, int depth, bool tuple = false) {
    if (full()) return;
    switch (v.which()) {
      case proto::Value::NONE: out_ += "None"; break;
      case proto::Value::BOOL: out_ += v.getBool() ? "True" : "False"; break;
      case proto::Value::INT: out_ += std::to_string(v.getInt()); break;
      case proto::Value::UINT: out_ += std::to_string(v.getUint()); break;
      case proto::Value::FLOAT: number(v.getFloat()); break;
      case proto::Value::TEXT: {
        const auto t = v.getText();
        out_ += '\'';
        out_.append(t.cStr(), std::min<std::size_t>(t.size(), 40));
        if (t.size() > 40) out_ += "...";
        out_ += '\'';
        break;
      }
      case proto::Value::DATA: packed(v.getData(), sig); break;
      case proto::Value::LIST: {
        const auto l = v.getList();
        const auto params = type_parameters(sig);
        const bool each = sig.starts_with("tuple<") && params.size() == l.size();
        const char* open = tuple ? "(" : "[";
        const char* close = tuple ? ")" : "]";
        if (depth >= 3) {
          out_ += std::string(open) + "..." + close;
          break;
        }
        out_ += open;
        for (unsigned i = 0; i < l.size() && !full(); ++i) {
          if (i) out_ += ", ";
          if (i == 8) {
            out_ += "... (" + std::to_string(l.size()) + " items)";
            break;
          }
          const std::string_view child =
              each ? params[i] : (params.size() == 1 ? params[0] : std::string_view());
          value(l[i], child, depth + 1);
        }
        out_ += close;
        break;
      }
      case proto::Value::ALTERNATIVE: value(v.getAlternative().getValue(), {}, depth + 1); break;
      case proto::Value::STRUCT: out_ += "<struct>"; break;
      case proto::Value::REF: {
        auto r = v.getRef();
        auto t = r.getTypeid();
        out_ += "<proxy " + std::string(t.begin(), std::min<std::size_t>(t.size(), 64)) + "#" +
                std::to_string(r.getId()) + ">";
        break;
      }
    }
  }

private:
  void number(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    out_ += buf;
  }

  // A packed array (list<i32>, array<f64,4>, …) element by element, else its size.
  void packed(capnp::Data::Reader d, std::string_view sig) {
    const auto params = type_parameters(sig);
    const std::string_view e = params.empty() ? std::string_view() : params[0];
    std::size_t size = 0;
    if (e == "i8" || e == "u8" || e == "char") size = 1;
    if (e == "i16" || e == "u16") size = 2;
    if (e == "i32" || e == "u32" || e == "f32") size = 4;
    if (e == "i64" || e == "u64" || e == "f64") size = 8;
    if (size == 0 || e == "char" || d.size() % size != 0 ||
        !(sig.starts_with("list<") || sig.starts_with("array<"))) {
      out_ += "<" + std::to_string(d.size()) + " bytes>";
      return;
    }
    const std::size_t n = d.size() / size;
    out_ += "[";
    for (std::size_t i = 0; i < n && !full(); ++i) {
      if (i) out_ += ", ";
      if (i == 8) {
        out_ += "... (" + std::to_string(n) + " items)";
        break;
      }
      const kj::byte* p = d.begin() + i * size;
      std::uint64_t bits = 0;
      std::memcpy(&bits, p, size);  // little-endian on the wire and here
      const bool is_signed = e[0] == 'i';
      if (e == "f32") {
        float f;
        std::memcpy(&f, p, 4);
        number(f);
      } else if (e == "f64") {
        double f;
        std::memcpy(&f, p, 8);
        number(f);
      } else if (is_signed) {
        const int shift = 64 - 8 * static_cast<int>(size);
        out_ += std::to_string(static_cast<std::int64_t>(bits << shift) >> shift);
      } else {
        out_ += std::to_string(bits);
      }
    }
    out_ += "]";
  }

  std::string out_;
  std::size_t limit_;
};

}  // namespace

void set_process_name_source(ProcessNameSource source) noexcept {
  process_name_source.store(source, std::memory_order_release);
}

std::string summarize_arguments(std::span<const std::byte> encoded, std::size_t limit) {
  const std::string unreadable = "<" + std::to_string(encoded.size()) + " bytes>";
  if (encoded.size() % sizeof(capnp::word) != 0) return unreadable;
  try {
    kj::Array<capnp::word> words = kj::heapArray<capnp::word>(encoded.size() / sizeof(capnp::word));
    if (!encoded.empty()) std::memcpy(words.begin(), encoded.data(), encoded.size());
    capnp::FlatArrayMessageReader reader(words, reader_options(words.size()));
    const auto env = reader.getRoot<proto::Envelope>();
    const std::string_view sig(env.getTypeName().cStr(), env.getTypeName().size());
    Summary s(limit);
    // A call's arguments are a tuple, shown as a call's: "(3, 'abc')"; a map chunk is a list.
    s.value(env.getBody(), sig, 0, sig.starts_with("tuple<"));
    return std::move(s).take();
  } catch (const kj::Exception&) {
    return unreadable;
  }
}

ErrorEnvelope ErrorEnvelope::capture(std::exception_ptr e, ErrorContext context) {
  ErrorEnvelope env;
  env.code = e ? errc_of(e) : errc::exception;
  env.type_name = std::string(python_name(env.code));
  env.context = std::move(context);
  env.origin.host = host_name();
  env.origin.pid = static_cast<std::int32_t>(::getpid());
  env.origin.process_name = process_name();
  if (!e) {
    env.message = "no exception (an error envelope captured outside a handler)";
    return env;
  }
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    env.message = x.what();
    if (const auto* os = dynamic_cast<const OSError*>(&x)) env.os_errno = os->errno_value();
    if (env.code == errc::exception && !dynamic_cast<const Exception*>(&x))
      env.type_name = type_of(x);
    env.traceback = causes(x);
    if (const ErrorEnvelope* earlier = remote_envelope(x)) {
      // Raised again here after it came from elsewhere: its own message, and where it came from.
      env.message = earlier->message;
      if (earlier->code == env.code) env.type_name = earlier->type_name;
      env.traceback += "which came from:\n" + earlier->remote_text() + "\n";
    }
  } catch (...) {
    env.type_name = internal::current_exception_type();
    env.message = env.type_name + " (not a std::exception)";
  }
  if (!env.traceback.empty() && env.traceback.back() == '\n') env.traceback.pop_back();
  return env;
}

void ErrorEnvelope::encode(proto::Error::Builder out) const {
  out.setCode(static_cast<std::uint16_t>(code));
  put_text([&](capnp::Text::Reader t) { out.setMessage(t); }, message, kMaxMessage);
  out.setOsErrno(os_errno);
  put_text([&](capnp::Text::Reader t) { out.setTypeName(t); }, type_name, kMaxText);
  put_text([&](capnp::Text::Reader t) { out.setTraceback(t); }, traceback, kMaxTraceback);
  auto o = out.initOrigin();
  put_text([&](capnp::Text::Reader t) { o.setHost(t); }, origin.host, kMaxText);
  o.setPid(origin.pid);
  put_text([&](capnp::Text::Reader t) { o.setProcessName(t); }, origin.process_name, kMaxText);
  auto c = out.initContext();
  put_text([&](capnp::Text::Reader t) { c.setCall(t); }, context.call, kMaxText);
  put_text([&](capnp::Text::Reader t) { c.setObject(t); }, context.object, kMaxText);
  put_text([&](capnp::Text::Reader t) { c.setArguments(t); }, context.arguments, kMaxText);
}

ErrorEnvelope ErrorEnvelope::decode(proto::Error::Reader in) {
  ErrorEnvelope env;
  env.code = static_cast<errc>(in.getCode());
  env.type_name = get_text(in.getTypeName(), kMaxText, "typeName");
  env.message = get_text(in.getMessage(), kMaxMessage, "message");
  if (env.code == errc::ok || python_name(env.code) == "unknown troupe error") {
    std::string storage;
    throw ValueError("an error envelope names troupe::errc " + std::to_string(in.getCode()) +
                     ", which is no exception class (type '" + env.type_name + "', message '" +
                     std::string(cut(env.message, 200, storage)) + "')");
  }
  env.os_errno = in.getOsErrno();
  env.traceback = get_text(in.getTraceback(), kMaxTraceback, "traceback");
  const auto o = in.getOrigin();
  env.origin.host = get_text(o.getHost(), kMaxText, "origin.host");
  env.origin.pid = o.getPid();
  env.origin.process_name = get_text(o.getProcessName(), kMaxText, "origin.processName");
  const auto c = in.getContext();
  env.context.call = get_text(c.getCall(), kMaxText, "context.call");
  env.context.object = get_text(c.getObject(), kMaxText, "context.object");
  env.context.arguments = get_text(c.getArguments(), kMaxText, "context.arguments");
  return env;
}

std::vector<std::byte> ErrorEnvelope::to_bytes() const {
  capnp::MallocMessageBuilder mb;
  encode(mb.initRoot<proto::Error>());
  std::vector<std::byte> out;
  codec_detail::flatten(mb, out);
  return out;
}

ErrorEnvelope ErrorEnvelope::from_bytes(std::span<const std::byte> bytes) {
  if (bytes.size() > kMaxBytes)
    throw ValueError("an error envelope of " + std::to_string(bytes.size()) + " bytes, over its " +
                     std::to_string(kMaxBytes) + "-byte limit");
  if (bytes.size() % sizeof(capnp::word) != 0 || bytes.empty())
    throw ValueError("an error envelope of " + std::to_string(bytes.size()) +
                     " bytes, not a whole number of 8-byte words");
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::FlatArrayMessageReader reader(words, reader_options(words.size()));
    if (reader.getEnd() != words.end())
      throw ValueError("an error envelope has trailing bytes after its message");
    return decode(reader.getRoot<proto::Error>());
  } catch (const kj::Exception& e) {
    throw ValueError(std::string("a malformed error envelope: ") + e.getDescription().cStr());
  }
}

std::string ErrorEnvelope::remote_text() const {
  std::string s = "Remote " + (type_name.empty() ? std::string(python_name(code)) : type_name);
  if (!context.call.empty()) {
    s += " in " + context.call;
    if (context.arguments.starts_with('('))
      s += context.arguments;
    else if (!context.arguments.empty())
      s += "(" + context.arguments + ")";
    if (!context.object.empty()) s += " on " + context.object;
  }
  s += ", in process " + (origin.process_name.empty() ? "?" : origin.process_name) + " (pid " +
       std::to_string(origin.pid) + ") on host " + (origin.host.empty() ? "?" : origin.host);
  if (!traceback.empty()) s += "\n" + traceback;
  return s;
}

std::exception_ptr ErrorEnvelope::exception() const {
  try {
    throw_error(*this);
  } catch (...) {
    return std::current_exception();
  }
}

}  // namespace troupe
