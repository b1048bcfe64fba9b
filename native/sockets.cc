// Socket and network-namespace cookies, the identities the BPF programs key on; sockets made in another network
// namespace (a pod's), for the cookie of that namespace and for sock_diag there; listening sockets made in another
// cgroup (below the meshed one), so that the cgroup's sock_ops programs see the connections they accept.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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
#ifndef SYS_clone3
#define SYS_clone3 435  // the same number on every architecture (the unified syscall table, 5.3+)
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL  // kernel 5.7+
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

// struct clone_args up to .cgroup (CLONE_ARGS_SIZE_VER2): declared here rather than taken from <linux/sched.h>,
// whose CLONE_* macros collide with glibc's <sched.h>.
struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

// A TCP socket whose cgroup is `cgroupDir` (an fd, or -errno). A socket belongs to the cgroup of the task that made
// it, and the sockets accept() returns inherit the listener's: only a task in that cgroup can make it. So a child
// task is cloned straight into the cgroup (CLONE_INTO_CGROUP: no thread or process of Node's ever moves), sharing this
// process's fd table (CLONE_FILES), and makes the socket there; it lands on a placeholder fd chosen here, since the
// child's memory is its own (no CLONE_VM, hence no stack of its own to manage either). The child is a fork of a
// multithreaded process: it makes raw system calls only, then exits; its exit status is 0 or the errno.
// exit_signal 0: no SIGCHLD, so libuv's handler never sees it; __WALL reaps it.
static int TcpSocketInCgroup(const std::string& cgroupDir, int domain) {
  int cg = open(cgroupDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) return -errno;
  int slot = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (slot < 0) {
    int err = errno;
    close(cg);
    return -err;
  }
  CloneArgs args = {};
  args.flags = CLONE_INTO_CGROUP | CLONE_FILES;
  args.cgroup = static_cast<uint64_t>(cg);
  long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid == 0) {
    long s = syscall(SYS_socket, domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) syscall(SYS_exit, errno);
    if (syscall(SYS_dup3, s, slot, O_CLOEXEC) < 0) syscall(SYS_exit, errno);
    syscall(SYS_close, s);
    syscall(SYS_exit, 0);
  }
  int err = pid < 0 ? errno : 0;
  close(cg);
  if (pid > 0) {
    int status = 0;
    while (waitpid(static_cast<pid_t>(pid), &status, __WALL) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status)) err = EIO;
    else err = WEXITSTATUS(status);
  }
  if (err) {
    close(slot);
    return -err;
  }
  return slot;
}

// listenInCgroup(cgroupDir, host, port, backlog): a listening TCP socket on host:port (an IPv4 or IPv6 address) made in
// cgroupDir; its fd, for net.Server.listen({ fd }). SO_REUSEADDR as Node's own listen() sets it.
static Napi::Value ListenInCgroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string cgroupDir = ArgString(info, 0, "listenInCgroup", "cgroupDir");
  std::string host = ArgString(info, 1, "listenInCgroup", "host");
  uint32_t port = ArgUint(info, 2, "listenInCgroup", "port");
  int backlog = ArgInt(info, 3, "listenInCgroup", "backlog");
  const std::string where = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  sockaddr_storage ss = {};
  socklen_t len;
  int domain;
  if (inet_pton(AF_INET, host.c_str(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = domain = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr) == 1) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = domain = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof(sockaddr_in6);
  } else {
    throw Napi::TypeError::New(env, "listenInCgroup: host '" + host + "' is not an IPv4 or IPv6 address");
  }
  if (port > 65535) throw Napi::TypeError::New(env, "listenInCgroup: port " + std::to_string(port) + " is not 0..65535");
  int fd = TcpSocketInCgroup(cgroupDir, domain);
  if (fd < 0) ThrowErrno(env, "listen " + where + ": socket in cgroup " + cgroupDir, -fd);
  int one = 1;
  const char* step = nullptr;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))) step = "SO_REUSEADDR";
  else if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len)) step = "bind";
  else if (listen(fd, backlog)) step = "listen";
  if (step) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "listen " + where + " (" + step + ")", err);
  }
  return Napi::Number::New(env, fd);
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
  exports.Set("listenInCgroup", Napi::Function::New(env, ListenInCgroup, "listenInCgroup"));
}

}  // namespace sockmesh
