// Socket and network-namespace cookies, the identities the BPF programs key on.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

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

static Napi::Value SocketCookie(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "socketCookie", "fd");
  return Napi::BigInt::New(info.Env(), SockOptU64(info.Env(), fd, SO_COOKIE, "socket cookie (fd " + std::to_string(fd) + ")"));
}

// With fd < 0: the cookie of the calling thread's network namespace, read from a throwaway socket.
static Napi::Value NetnsCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info.Length() > 0 && !info[0].IsUndefined() ? ArgInt(info, 0, "netnsCookie", "fd") : -1;
  if (fd >= 0) {
    return Napi::BigInt::New(env, SockOptU64(env, fd, SO_NETNS_COOKIE, "netns cookie (fd " + std::to_string(fd) + ")"));
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) ThrowErrno(env, "netns cookie (socket)", errno);
  uint64_t v = 0;
  socklen_t len = sizeof(v);
  int ret = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &v, &len);
  int err = errno;
  close(s);
  if (ret) ThrowErrno(env, "netns cookie", err);
  return Napi::BigInt::New(env, v);
}

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie, "socketCookie"));
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie, "netnsCookie"));
}

}  // namespace sockmesh
