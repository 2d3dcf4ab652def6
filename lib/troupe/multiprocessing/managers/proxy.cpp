// BaseProxy's non-template members (proxy.hpp).
#include "troupe/multiprocessing/managers/proxy.hpp"

#include <unistd.h>

#include <cstdio>

#include "troupe/internal/runtime.hpp"
#include "troupe/multiprocessing/managers/internal/ref_proxy.hpp"
#include "troupe/multiprocessing/managers/internal/wire.hpp"
#include "troupe/multiprocessing/process.hpp"

namespace troupe::multiprocessing::managers {

namespace detail {
void wrong_reply_kind(std::string_view method, std::string_view got, std::string_view want) {
  throw TypeError("the call of " + std::string(method.empty() ? "a method" : method) +
                  " returned " + std::string(got) + ", asked for as " + std::string(want));
}
}  // namespace detail

BaseProxy::State::~State() {
  if (!link || link->owner() != troupe::internal::runtime::process_id())
    return;  // a forked child's copy: the parent's
  std::uint64_t n = refs;
  if (claim) {
    // The claim's reference is given back only if it was taken: a refused claim took none, and
    // one not answered yet is given back by its handler if the answer says it was taken.
    std::scoped_lock lock(claim->m);
    if (!claim->answered) {
      claim->dropped = true;
      --n;
    } else if (claim->refused) {
      --n;
    }
  }
  try {
    for (std::uint64_t i = 0; i < n; ++i)
      link->send([id = token.id](proto::manager::Request::Builder r) { r.setDecref(id); });
  } catch (...) {
  }
}

BaseProxy::BaseProxy(Token token, std::optional<AuthenticationString> authkey, bool incref) {
  auto st = std::make_shared<State>();
  st->authkey = authkey ? std::move(*authkey) : current_process().authkey();
  st->link = detail::Link::get(token.address, st->authkey);
  st->token = std::move(token);
  st->refs = 0;
  state_ = std::move(st);
  if (incref) _incref();
}

const Token& BaseProxy::_token() const {
  if (!state_) throw ValueError("an empty proxy (default-constructed or moved from)");
  return state_->token;
}

std::shared_ptr<detail::Link> BaseProxy::_link() const {
  if (!state_) throw ValueError("an empty proxy (default-constructed or moved from)");
  std::scoped_lock lock(state_->m);
  if (state_->refused) std::rethrow_exception(state_->refused);
  if (state_->link->owner() != troupe::internal::runtime::process_id()) {
    // First use in a forked child: this process's own link and reference (Python's
    // BaseProxy._after_fork increfs too). The parent's references stay the parent's.
    auto fresh = detail::Link::get(state_->token.address, state_->authkey);
    const auto id = state_->token.id;
    fresh->send_answered([id](proto::manager::Request::Builder r) { r.setIncref(id); });
    state_->link = std::move(fresh);
    state_->refs = 1;
    state_->claim = nullptr;  // the parent's
  }
  return state_->link;
}

void BaseProxy::_incref() const {
  auto link = _link();
  const auto id = _token().id;
  // Before the incref: a reference taken, then no wait, would leak.
  link->refuse_on_link_thread("_incref() of a proxy");
  // A round trip, as Python's: the reference is taken, or this raises (a server of either
  // dialect answers an incref; troupe's, the refusal of an object over the connection's
  // max_objects_held too).
  auto frame = link->call([id](proto::manager::Request::Builder r) { r.setIncref(id); });
  (void)decode_reply<std::monostate>(link, *frame, "incref");
  std::scoped_lock lock(state_->m);
  ++state_->refs;
}

std::vector<std::string> BaseProxy::_exposed() const {
  auto link = _link();
  const auto id = _token().id;
  auto frame = link->call([id](proto::manager::Request::Builder r) { r.setGetMethods(id); });
  return decode_reply<std::vector<std::string>>(link, *frame, "get_methods");
}

namespace {
// The proxy class CPython's SyncManager gives a typeid (its register() calls), for repr:
// AutoProxy[typeid] for one registered without a proxy type (a Queue, a registered class).
std::string proxy_class_name(const std::string& typeid_) {
  static const std::pair<const char*, const char*> kNamed[] = {
      {"Event", "EventProxy"},
      {"Lock", "AcquirerProxy"},
      {"RLock", "AcquirerProxy"},
      {"Semaphore", "AcquirerProxy"},
      {"BoundedSemaphore", "AcquirerProxy"},
      {"Condition", "ConditionProxy"},
      {"Barrier", "BarrierProxy"},
      {"Pool", "PoolProxy"},
      {"list", "ListProxy"},
      {"dict", "DictProxy"},
      {"set", "SetProxy"},
      {"Value", "ValueProxy"},
      {"Array", "ArrayProxy"},
      {"Namespace", "NamespaceProxy"},
      {"Iterator", "IteratorProxy"},
  };
  for (const auto& [t, name] : kNamed)
    if (typeid_ == t) return name;
  return "AutoProxy[" + typeid_ + "]";
}
}  // namespace

std::string BaseProxy::repr() const {
  char at[32];
  std::snprintf(at, sizeof at, "%p", static_cast<const void*>(state_.get()));
  if (!state_) return "<BaseProxy object, empty>";
  return "<" + proxy_class_name(state_->token.typeid_) + " object, typeid '" +
         state_->token.typeid_ + "' at " + at + ">";
}

std::string BaseProxy::str() const {
  try {
    return _callmethod<std::string>("__repr__");  // as CPython's BaseProxy.__str__
  } catch (const std::exception&) {
    std::string r = repr();
    r.pop_back();  // its '>'
    return r + "; '__str__()' failed>";
  }
}

void BaseProxy::_write_ref(proto::Ref::Builder out) const {
  auto link = _link();
  const Token& t = _token();
  const std::uint64_t ticket = internal::random_ticket();
  const auto id = t.id;
  link->send([id, ticket](proto::manager::Request::Builder r) {
    auto p = r.initPark();
    p.setId(id);
    p.setTicket(ticket);
  });
  detail::ParkScope::note(link, id, ticket);
  out.setTypeid(t.typeid_.c_str());
  out.setAddress(link->address_text().c_str());
  out.setId(t.id);
  out.setFingerprint(t.fingerprint);
  out.setTicket(ticket);
  // In a spawned child's start arguments the manager's key goes along (CPython's
  // BaseProxy.__reduce__ while spawning): the child may not share it (a manager with a key of
  // its own). Never in another message.
  // (Not in a request a link builds meanwhile: a proxy argument of a call goes to a server.)
  if (const auto* spawn = multiprocessing::detail::passed_fds();
      spawn && spawn->spawning && !detail::ParkScope::active()) {
    const auto key = state_->authkey.bytes();
    out.setAuthkey(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(key.data()), key.size()));
  }
  // The park is on its way to the server before the value leaves this process: a sender that
  // exits right after sending the proxy must not take its receiver's reference with it.
  link->flush(std::chrono::seconds(10));
}

namespace {
Token token_of(proto::Ref::Reader ref) {
  Token t;
  auto typeid_ = ref.getTypeid();
  auto address = ref.getAddress();
  if (typeid_.size() > 256 || address.size() > 4096)
    codec_detail::malformed("proxy: a typeid or address over its limit");
  t.typeid_ = std::string(typeid_.begin(), typeid_.size());
  t.address = Address::parse(std::string_view(address.begin(), address.size()));
  t.id = ref.getId();
  t.fingerprint = ref.getFingerprint();
  if (t.id == 0) codec_detail::malformed("proxy: object id 0");
  return t;
}
}  // namespace

BaseProxy BaseProxy::_from_ref(proto::Ref::Reader ref) {
  auto st = std::make_shared<State>();
  st->token = token_of(ref);
  if (ref.hasAuthkey() && ref.getAuthkey().size() > 0 &&
      troupe::detail::decoding_start_arguments()) {
    // A spawned child's start argument: its manager's key came with it (a key in any other
    // message is ignored: nobody else may choose the key this process connects with).
    const auto key = ref.getAuthkey();
    st->authkey = AuthenticationString(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(key.begin()), key.size()));
    st->link = detail::Link::get(st->token.address, st->authkey);
  } else {
    st->link = detail::Link::for_address(st->token.address);
    st->authkey = st->link->authkey();
  }
  const auto id = st->token.id;
  const auto ticket = ref.getTicket();
  st->refs = 0;  // until the claim is sent: a claim that could not be sent gives nothing back
  // Pipelined, not waited for; its answer comes before any later call's reply on the link. A
  // refusal (the object is gone, or the connection holds max_objects_held already) fails every
  // call made once it is known, and the proxy gives no reference back for it (ClaimWatch).
  auto watch = std::make_shared<detail::ClaimWatch>();
  std::weak_ptr<State> weak = st;
  std::weak_ptr<detail::Link> weak_link = st->link;
  st->link->request(
      [id, ticket](proto::manager::Request::Builder r) {
        auto c = r.initClaim();
        c.setId(id);
        c.setTicket(ticket);
      },
      [weak, watch, weak_link, id](std::exception_ptr, std::shared_ptr<detail::Frame> f) {
        // A dead link's failure is left to the calls, which name it (and it holds nothing).
        if (!f) return;
        auto reply = f->root<proto::manager::Reply>();
        const bool error = reply.isError();
        bool give_back;
        {
          std::scoped_lock lock(watch->m);
          watch->answered = true;
          watch->refused = error;
          give_back = watch->dropped && !error;
        }
        if (give_back) {  // the proxy went before the answer
          if (auto link = weak_link.lock()) try {
              link->send([id](proto::manager::Request::Builder r) { r.setDecref(id); });
            } catch (...) {
            }
          return;
        }
        if (!error) return;
        auto s = weak.lock();
        if (!s) return;  // going: its destructor reads the refusal from the watch
        std::exception_ptr e;
        try {
          ErrorEnvelope env = ErrorEnvelope::decode(reply.getError());
          env.message = "a proxy to " + s->token.typeid_ + " object " +
                        std::to_string(s->token.id) +
                        " received from another process is unusable: the manager refused its "
                        "reference (" +
                        env.message + ")";
          e = env.exception();
        } catch (...) {
          e = std::current_exception();
        }
        std::scoped_lock lock(s->m);
        s->refused = e;
      });
  st->refs = 1;
  st->claim = std::move(watch);
  return BaseProxy(std::move(st));
}

BaseProxy BaseProxy::adopt(const std::shared_ptr<detail::Link>& link, proto::Ref::Reader ref) {
  auto st = std::make_shared<State>();
  st->token = token_of(ref);
  st->link = link;
  st->authkey = link->authkey();
  st->refs = 1;
  return BaseProxy(std::move(st));
}

namespace internal {
BaseProxy proxy_of(const detail::Ref& r) {
  capnp::MallocMessageBuilder mb(64);
  auto v = mb.initRoot<proto::Value>();
  detail::write(detail::Item::ref(r), v);
  return BaseProxy::_from_ref(v.asReader().getRef());
}
}  // namespace internal

}  // namespace troupe::multiprocessing::managers
