// File descriptors between agents over a unix socket (SCM_RIGHTS), for the planned restart (agent/handover.ts): the
// old agent sends its listening sockets, the new one receives them. Part of sockmesh_netio.node (no libbpf).
//
// Thin: one syscall each, errors as KernelError. Node's own unix sockets cannot do it (libuv reads them with read(2)
// and the kernel drops the fds of a message read without ancillary buffer), so the receiving side is a plain fd made
// here (unixConnect) and used with blocking calls bounded by a timeout: the new agent does this before it serves.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "sockmesh.h"

namespace sockmesh {

// At most this many fds in one message (the proxy's listeners, the admin, metrics and handover sockets: a few).
static constexpr int kMaxFds = 32;

// Waits until fd is ready for `events` or timeoutMs passed: 0, or an errno (ETIMEDOUT).
static int WaitFor(int fd, short events, int timeoutMs) {
  struct pollfd p = {fd, events, 0};
  for (;;) {
    int n = poll(&p, 1, timeoutMs);
    if (n > 0) return 0;
    if (n == 0) return ETIMEDOUT;
    if (errno != EINTR) return errno;
  }
}

// unixConnect(path) -> fd: a blocking connect to a SOCK_STREAM unix socket (close-on-exec). Throws
// "connect <path>: ECONNREFUSED" (nobody listens: a stale file) or ENOENT.
static Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "unixConnect", "path");
  struct sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof(sa.sun_path)) throw Napi::RangeError::New(env, "unixConnect: path '" + path + "' is longer than a unix socket path may be");
  memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "connect " + path, errno);
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof(sa))) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "connect " + path, err);
  }
  return Napi::Number::New(env, fd);
}

// sendFds(fd, data: Buffer, fds: number[], timeoutMs) -> void: one message, the fds attached to its first byte. The
// socket may be non-blocking (Node's): a full buffer is waited for, up to timeoutMs.
static Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "sendFds", "fd");
  Napi::Buffer<uint8_t> data = ArgBuffer(info, 1, "sendFds", "data");
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "sendFds: argument 'fds' must be an array of fds");
  int timeoutMs = ArgInt(info, 3, "sendFds", "timeoutMs");
  Napi::Array arr = info[2].As<Napi::Array>();
  if (arr.Length() > static_cast<uint32_t>(kMaxFds)) throw Napi::RangeError::New(env, "sendFds: more than " + std::to_string(kMaxFds) + " fds");
  if (data.Length() == 0) throw Napi::RangeError::New(env, "sendFds: 'data' must not be empty (the fds ride on its bytes)");
  std::vector<int> fds;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber()) throw Napi::TypeError::New(env, "sendFds: fds[" + std::to_string(i) + "] is not a number");
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }
  size_t off = 0;
  bool first = true;
  while (off < data.Length()) {
    struct iovec iov = {data.Data() + off, data.Length() - off};
    struct msghdr mh = {};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
    if (first && !fds.empty()) {
      memset(ctl, 0, sizeof(ctl));
      mh.msg_control = ctl;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        int err = WaitFor(fd, POLLOUT, timeoutMs);
        if (err) ThrowErrno(env, "sendFds (waiting for room)", err);
        continue;
      }
      ThrowErrno(env, "sendFds", errno);
    }
    first = false;
    off += static_cast<size_t>(n);
  }
  return env.Undefined();
}

// recvFds(fd, maxBytes, timeoutMs) -> { data: Buffer, fds: number[] }: one read of what is there (waiting up to
// timeoutMs for something), with the fds that came with it (close-on-exec). data is empty at EOF. Fds beyond the
// ancillary buffer would be lost: MSG_CTRUNC is an error (the received ones are closed).
static Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "recvFds", "fd");
  int maxBytes = ArgInt(info, 1, "recvFds", "maxBytes");
  int timeoutMs = ArgInt(info, 2, "recvFds", "timeoutMs");
  if (maxBytes <= 0) throw Napi::RangeError::New(env, "recvFds: maxBytes must be > 0");
  int err = WaitFor(fd, POLLIN, timeoutMs);
  if (err) ThrowErrno(env, "recvFds (waiting for the peer)", err);
  std::vector<char> buf(static_cast<size_t>(maxBytes));
  struct iovec iov = {buf.data(), buf.size()};
  struct msghdr mh = {};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof(ctl);
  ssize_t n;
  do n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "recvFds", errno);
  std::vector<int> fds;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
    for (size_t i = 0; i < count; i++) fds.push_back(p[i]);
  }
  if (mh.msg_flags & MSG_CTRUNC) {
    for (int f : fds) close(f);
    ThrowErrno(env, "recvFds (more fds than " + std::to_string(kMaxFds) + ")", EMSGSIZE);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n)));
  Napi::Array a = Napi::Array::New(env, fds.size());
  for (size_t i = 0; i < fds.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  out.Set("fds", a);
  return out;
}

// closeFd(fd): for fds received and not used (a handover that failed).
static Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "closeFd", "fd");
  if (close(fd) && errno != EINTR) ThrowErrno(info.Env(), "close fd " + std::to_string(fd), errno);
  return info.Env().Undefined();
}

// socketInfo(fd) -> { family: 4 | 6 | 0 (unix), listening: boolean }: what a received fd is, checked before use.
static Napi::Value SocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "socketInfo", "fd");
  int acc = 0, domain = 0, type = 0;
  socklen_t len = sizeof(acc);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len)) ThrowErrno(env, "socketInfo fd " + std::to_string(fd), errno);
  len = sizeof(domain);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len)) ThrowErrno(env, "socketInfo fd " + std::to_string(fd), errno);
  len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len)) ThrowErrno(env, "socketInfo fd " + std::to_string(fd), errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("family", Napi::Number::New(env, domain == AF_INET ? 4 : domain == AF_INET6 ? 6 : 0));
  out.Set("stream", Napi::Boolean::New(env, type == SOCK_STREAM));
  out.Set("listening", Napi::Boolean::New(env, acc != 0));
  return out;
}

// socketError(fd) -> errno: the error the kernel holds for the socket and has not reported yet (SO_ERROR; reading it
// clears it), 0 when none. libuv reports EOF without reading again when the kernel says HUP right after a partial
// read, so a reset (RST) that arrives just behind data reaches Node as a clean end with its ECONNRESET still pending
// here: agent/tunnel/sockreset.ts asks at each end of stream.
static Napi::Value SocketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "socketError", "fd");
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)) ThrowErrno(env, "socketError fd " + std::to_string(fd), errno);
  return Napi::Number::New(env, err);
}

void InitFdpass(Napi::Env env, Napi::Object exports) {
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("sendFds", Napi::Function::New(env, SendFds, "sendFds"));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds, "recvFds"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo, "socketInfo"));
  exports.Set("socketError", Napi::Function::New(env, SocketError, "socketError"));
}

}  // namespace sockmesh
