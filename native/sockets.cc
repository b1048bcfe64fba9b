// Socket and network-namespace cookies, the identities the BPF programs key on; sockets made in another network
// namespace (a pod's), for the cookie of that namespace and for sock_diag there.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <thread>

#include "sockmesh.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71  // kernel 5.14+; newer than some libc headers
#endif

namespace sockmesh {

static uint64_t SockOptU64(Napi::Env env, int fd, int opt, const std::string& op) {
  uint64_t v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, opt, &v, &len)) ThrowErrno(env, op, errno);
  return v;
}

int SocketInNetns(const std::string& netns, int domain, int type, int protocol) {
  if (netns.empty()) {
    int fd = socket(domain, type, protocol);
    return fd < 0 ? -errno : fd;
  }
  // A socket belongs to the namespace it was made in. setns() changes the calling thread only: a thread of its own
  // enters the namespace, makes the socket and ends, so no thread of Node's ever changes namespace.
  int result = -EIO;
  std::thread([&] {
    int nsfd = open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) { result = -errno; return; }
    if (setns(nsfd, CLONE_NEWNET) != 0) {
      result = -errno;
      close(nsfd);
      return;
    }
    close(nsfd);
    int fd = socket(domain, type, protocol);
    result = fd < 0 ? -errno : fd;
  }).join();
  return result;
}

static Napi::Value SocketCookie(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "socketCookie", "fd");
  return Napi::BigInt::New(info.Env(), SockOptU64(info.Env(), fd, SO_COOKIE, "socket cookie (fd " + std::to_string(fd) + ")"));
}

// With fd < 0: the cookie of the calling thread's network namespace, read from a throwaway socket; with a path
// (/proc/<pid>/ns/net, /run/netns/<name>): the cookie of that namespace, from a throwaway socket made in it.
static Napi::Value NetnsCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string netns;
  int fd = -1;
  if (info.Length() > 0 && info[0].IsString()) netns = info[0].As<Napi::String>().Utf8Value();
  else if (info.Length() > 0 && !info[0].IsUndefined()) fd = ArgInt(info, 0, "netnsCookie", "fd");
  if (fd >= 0) {
    return Napi::BigInt::New(env, SockOptU64(env, fd, SO_NETNS_COOKIE, "netns cookie (fd " + std::to_string(fd) + ")"));
  }
  const std::string op = netns.empty() ? "netns cookie" : "netns cookie of " + netns;
  int s = SocketInNetns(netns, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) ThrowErrno(env, op + " (socket)", -s);
  uint64_t v = 0;
  socklen_t len = sizeof(v);
  int ret = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &v, &len);
  int err = errno;
  close(s);
  if (ret) ThrowErrno(env, op, err);
  return Napi::BigInt::New(env, v);
}

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie, "socketCookie"));
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie, "netnsCookie"));
}

}  // namespace sockmesh
