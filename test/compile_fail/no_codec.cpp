// Sending a type with no codec must not compile, and the error must say why and what to do.
// Built by test/compile_fail/check.py twice: as is (must fail with the message) and with
// -DTROUPE_GIVE_IT_A_CODEC (must compile: the file is otherwise sound).
#include <memory>

#include "troupe/multiprocessing/connection.hpp"

namespace app {
class Socketish {  // not an aggregate, not described: no codec
public:
  explicit Socketish(int fd) : fd_(fd) {}
  int fd() const { return fd_; }

private:
  int fd_;
};
}  // namespace app

#ifdef TROUPE_GIVE_IT_A_CODEC
template <>
struct troupe::Codec<app::Socketish> : troupe::CodecVia<app::Socketish, int> {
  static int to(const app::Socketish& s) { return s.fd(); }
  static app::Socketish from(int fd) { return app::Socketish(fd); }
};
#endif

void send_it(troupe::multiprocessing::Connection& c) {
  c.send(std::vector<app::Socketish>{app::Socketish(3)});
}
