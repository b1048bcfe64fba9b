// destroyUdpSockets(): sock_diag dump of UDP sockets, then SOCK_DESTROY for those connected to
// addr:port (and, given a predicate, only those whose socket cookie it accepts), in the caller's
// network namespace or another one (a pod's). Used when a UDP service's backends change: a connected
// socket keeps its old (connect-time rewritten) destination until it is destroyed and the
// application reconnects. Which sockets are the mesh's is decided in TypeScript (the predicate).
#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "sockmesh.h"

namespace sockmesh {

namespace {

struct Target {
  bool has_v4 = false;
  uint8_t v4[4];
  uint8_t v6[16];  // the v6 address, or the v4-mapped form of the v4 one
  uint16_t port_be;
};

struct Request {
  struct nlmsghdr nlh;
  struct inet_diag_req_v2 req;
};

// A sock_diag request about UDP sockets of one family, every state.
Request UdpRequest(uint16_t type, uint16_t flags, uint32_t seq, uint8_t family) {
  Request r;
  memset(&r, 0, sizeof(r));
  r.nlh.nlmsg_len = sizeof(r);
  r.nlh.nlmsg_type = type;
  r.nlh.nlmsg_flags = flags;
  r.nlh.nlmsg_seq = seq;
  r.req.sdiag_family = family;
  r.req.sdiag_protocol = IPPROTO_UDP;
  r.req.idiag_states = ~0u;
  return r;
}

struct NetlinkSocket {
  int fd;
  explicit NetlinkSocket(const std::string& netns)
      : fd(SocketInNetns(netns, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)) {}
  ~NetlinkSocket() { if (fd >= 0) close(fd); }
};

bool Matches(const Target& t, const struct inet_diag_msg* m) {
  if (m->id.idiag_dport != t.port_be) return false;
  if (m->idiag_family == AF_INET) return t.has_v4 && memcmp(m->id.idiag_dst, t.v4, 4) == 0;
  if (m->idiag_family == AF_INET6) return memcmp(m->id.idiag_dst, t.v6, 16) == 0;
  return false;
}

// Sends one request and reads replies until DONE (dump) or the ACK (destroy). Returns 0 or an errno.
int Exchange(Napi::Env env, int fd, Request* r, const Target* t, std::vector<struct inet_diag_msg>* found) {
  if (send(fd, r, sizeof(*r), 0) < 0) return errno;
  alignas(struct nlmsghdr) char buf[32768];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;  // includes EAGAIN from the receive timeout: the loop is bounded in time
    }
    if (n == 0) return EIO;
    for (struct nlmsghdr* h = reinterpret_cast<struct nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n));
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r->nlh.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr* e = static_cast<const struct nlmsgerr*>(NLMSG_DATA(h));
        return e->error < 0 ? -e->error : 0;  // error 0 is the ACK of a request
      }
      if (found && h->nlmsg_type == SOCK_DIAG_BY_FAMILY) {
        const struct inet_diag_msg* m = static_cast<const struct inet_diag_msg*>(NLMSG_DATA(h));
        if (Matches(*t, m)) found->push_back(*m);
      }
    }
  }
}

}  // namespace

static Napi::Value DestroyUdpSockets(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string addr = ArgString(info, 0, "destroyUdpSockets", "addr");
  uint32_t port = ArgUint(info, 1, "destroyUdpSockets", "port");
  // optional: the network namespace ('' or undefined = the caller's), and keep(cookie) -> whether to destroy it
  std::string netns = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  Napi::Function keep;
  if (info.Length() > 3 && info[3].IsFunction()) keep = info[3].As<Napi::Function>();
  std::string op = "destroy UDP sockets to " + addr + ":" + std::to_string(port) + (netns.empty() ? "" : " in " + netns);
  if (port > 65535) ThrowErrno(env, op + " (bad port)", EINVAL);

  Target t;
  t.port_be = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, addr.c_str(), t.v4) == 1) {
    t.has_v4 = true;
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(t.v6, kMapped, 12);
    memcpy(t.v6 + 12, t.v4, 4);
  } else if (inet_pton(AF_INET6, addr.c_str(), t.v6) == 1) {
    if (IN6_IS_ADDR_V4MAPPED(reinterpret_cast<const struct in6_addr*>(t.v6))) {
      t.has_v4 = true;
      memcpy(t.v4, t.v6 + 12, 4);
    }
  } else {
    ThrowErrno(env, op + " (bad address)", EINVAL);
  }

  NetlinkSocket nl(netns);
  if (nl.fd < 0) ThrowErrno(env, op + " (netlink socket)", -nl.fd);
  struct timeval tv = {5, 0};
  setsockopt(nl.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

  uint32_t seq = 1;
  std::vector<struct inet_diag_msg> found;
  for (int family : {AF_INET, AF_INET6}) {
    Request r = UdpRequest(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq++, static_cast<uint8_t>(family));
    int err = Exchange(env, nl.fd, &r, &t, &found);
    if (err) ThrowErrno(env, op + (family == AF_INET ? " (dump AF_INET)" : " (dump AF_INET6)"), err);
  }

  int destroyed = 0;
  for (const struct inet_diag_msg& m : found) {
    if (!keep.IsEmpty()) {
      uint64_t cookie = static_cast<uint64_t>(m.id.idiag_cookie[0]) | (static_cast<uint64_t>(m.id.idiag_cookie[1]) << 32);
      if (!keep.Call({Napi::BigInt::New(env, cookie)}).ToBoolean().Value()) continue;
    }
    Request r = UdpRequest(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq++, m.idiag_family);
    r.req.id = m.id;  // exact identity, cookie included: never a different socket
    int err = Exchange(env, nl.fd, &r, nullptr, nullptr);
    if (err == ENOENT) continue;  // closed since the dump
    if (err) ThrowErrno(env, op + " (SOCK_DESTROY)", err);
    destroyed++;
  }
  return Napi::Number::New(env, destroyed);
}

void InitDiag(Napi::Env env, Napi::Object exports) {
  exports.Set("destroyUdpSockets", Napi::Function::New(env, DestroyUdpSockets, "destroyUdpSockets"));
}

}  // namespace sockmesh
