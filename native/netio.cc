// NetLoop: the L7 proxy's own TCP sockets on one epoll fd, driven by Node's loop through ONE uv_poll
// (as ringbuf.cc does with libbpf's fd). Node's stream machinery costs more CPU per request than the
// proxy's own logic (a 64 KiB allocation per read, Readable/Writable state, a request object per
// write, one callback per read); here one wake does the syscalls for every ready socket (accept,
// read into one shared arena, flush queued writes, finish connects), records compact events in a
// shared Int32Array and makes ONE call into JavaScript for the whole batch.
//
// Thin by design: syscalls, buffering and events only. Every decision (timeouts, half-close policy,
// errors as Error objects, what a read means) is made in agent/proxy/netio.ts.
//
// Events (4 int32 each: id, kind, a, b):
//   ACCEPT   id = listener, a = new connection id, b = arena offset of [port lo, port hi, len, address text]
//   DATA     a = arena offset, b = length (one event per socket and wake: its reads are contiguous)
//   EOF      the peer shut its side (read returned 0)
//   ERROR    a = errno, b = operation (OP_*); the socket is out of epoll, nothing more comes for it
//   DRAIN    the write queue was flushed
//   CONNECT  a non-blocking connect finished
//   SHUTDOWN the SHUT_WR asked for by shutdown() was done once the queue was flushed
// Connection ids come from a counter and are never reused; fds are closed only by close().
//
// Its own addon (build/Release/sockmesh_netio.node, binding.gyp target sockmesh_netio): no libbpf, so the proxy
// loads without it. The codes below are exported as `constants` and checked by agent/proxy/netio.ts at load.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "sockmesh.h"

namespace sockmesh {

void InitFdpass(Napi::Env env, Napi::Object exports);  // fdpass.cc

enum : int32_t { EV_ACCEPT = 1, EV_DATA = 2, EV_EOF = 3, EV_ERROR = 4, EV_DRAIN = 5, EV_CONNECT = 6, EV_SHUTDOWN = 7 };
enum : int32_t { OP_READ = 1, OP_WRITE = 2, OP_CONNECT = 3, OP_ACCEPT = 4, OP_SHUTDOWN = 5 };

static constexpr int kEventInts = 4;
static constexpr size_t kReadChunk = 64 * 1024;      // one read(2) at most
static constexpr size_t kReadPerWake = 256 * 1024;   // one socket's share of a wake (level-triggered: the rest next time)
static constexpr size_t kAcceptRecord = 3 + INET6_ADDRSTRLEN;
static constexpr int kMaxIov = 64;

struct Sock {
  int fd = -1;
  int32_t id = 0;
  uint32_t mask = 0;  // what epoll watches now (0 = not registered)
  bool listener = false;
  bool connecting = false;
  bool paused = false;
  bool readEof = false;
  bool shutPending = false;
  bool shutDone = false;
  bool dead = false;  // an error was reported: out of epoll for good
  int err = 0;
  std::vector<char> q;  // bytes the kernel did not take yet, from qhead
  size_t qhead = 0;
  size_t queued() const { return q.size() - qhead; }
};

struct LoopState {
  Napi::Env env;
  int epfd = -1;
  uv_poll_t poll;
  bool polling = false;
  bool refd = true;
  bool closed = false;
  int32_t nextId = 0;
  std::unordered_map<int32_t, Sock*> socks;
  Napi::FunctionReference callback;
  Napi::ObjectReference resource;
  Napi::Reference<Napi::Value> arenaRef;
  Napi::Reference<Napi::Value> eventsRef;
  uint8_t* arena = nullptr;
  size_t arenaSize = 0;
  int32_t* events = nullptr;
  size_t maxEvents = 0;
  size_t nEvents = 0;
  size_t used = 0;          // arena bytes used in this wake
  std::vector<char> scratch;  // strings given to write()/writev() (latin1 / utf8)
  explicit LoopState(Napi::Env e) : env(e) {}
};

static void Push(LoopState* st, int32_t id, int32_t kind, int32_t a, int32_t b) {
  int32_t* e = st->events + st->nEvents * kEventInts;
  e[0] = id;
  e[1] = kind;
  e[2] = a;
  e[3] = b;
  st->nEvents++;
}

// The poll keeps the process alive only while a socket or listener is open.
static void UpdateRef(LoopState* st) {
  bool want = !st->socks.empty();
  if (want == st->refd || st->closed) return;
  st->refd = want;
  if (want) uv_ref(reinterpret_cast<uv_handle_t*>(&st->poll));
  else uv_unref(reinterpret_cast<uv_handle_t*>(&st->poll));
}

static uint32_t Wanted(const Sock* s) {
  if (s->dead) return 0;
  if (s->listener) return s->paused ? 0u : static_cast<uint32_t>(EPOLLIN);
  if (s->connecting) return EPOLLOUT;
  uint32_t m = 0;
  if (!s->paused && !s->readEof) m |= EPOLLIN | EPOLLRDHUP;
  if (s->queued() > 0) m |= EPOLLOUT;
  return m;
}

// A socket with nothing to watch leaves epoll: EPOLLHUP/EPOLLERR are reported whatever the mask,
// and level-triggered they would wake the loop for ever (a paused socket whose peer left).
static int Rearm(LoopState* st, Sock* s) {
  uint32_t want = Wanted(s);
  if (want == s->mask) return 0;
  struct epoll_event ev = {};
  ev.events = want;
  ev.data.ptr = s;
  int rc;
  if (want == 0) rc = epoll_ctl(st->epfd, EPOLL_CTL_DEL, s->fd, nullptr);
  else if (s->mask == 0) rc = epoll_ctl(st->epfd, EPOLL_CTL_ADD, s->fd, &ev);
  else rc = epoll_ctl(st->epfd, EPOLL_CTL_MOD, s->fd, &ev);
  if (rc) return errno;
  s->mask = want;
  return 0;
}

static void Fail(LoopState* st, Sock* s, int err, int32_t op) {
  s->dead = true;
  s->err = err;
  Rearm(st, s);
  Push(st, s->id, EV_ERROR, err, op);
}

static Sock* Add(LoopState* st, int fd, bool listener) {
  Sock* s = new Sock();
  s->fd = fd;
  s->id = ++st->nextId;
  s->listener = listener;
  st->socks.emplace(s->id, s);
  UpdateRef(st);
  return s;
}

static void Remove(LoopState* st, Sock* s, bool closeFd) {
  if (s->mask != 0) epoll_ctl(st->epfd, EPOLL_CTL_DEL, s->fd, nullptr);
  if (closeFd) close(s->fd);
  st->socks.erase(s->id);
  delete s;
  UpdateRef(st);
}

static void Enqueue(Sock* s, const char* p, size_t n) {
  if (s->qhead > 0 && s->qhead >= s->q.size() / 2) {
    s->q.erase(s->q.begin(), s->q.begin() + static_cast<ptrdiff_t>(s->qhead));
    s->qhead = 0;
  }
  s->q.insert(s->q.end(), p, p + n);
}

// Writes out what is queued; true when it is empty now. An error is returned in *err.
static bool Flush(Sock* s, int* err) {
  while (s->queued() > 0) {
    ssize_t n = send(s->fd, s->q.data() + s->qhead, s->queued(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      *err = errno;
      return false;
    }
    s->qhead += static_cast<size_t>(n);
  }
  s->q.clear();
  s->qhead = 0;
  if (s->q.capacity() > 1024 * 1024) s->q.shrink_to_fit();
  return true;
}

static void AcceptAll(LoopState* st, Sock* l) {
  while (st->nEvents + 1 < st->maxEvents && st->used + kAcceptRecord <= st->arenaSize) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = accept4(l->fd, reinterpret_cast<struct sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) Push(st, l->id, EV_ERROR, errno, OP_ACCEPT);
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint8_t* rec = st->arena + st->used;
    int port = 0;
    const char* text = nullptr;
    char buf[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<struct sockaddr_in*>(&ss);
      port = ntohs(a->sin_port);
      text = inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    } else if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<struct sockaddr_in6*>(&ss);
      port = ntohs(a->sin6_port);
      text = inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    }
    size_t tl = text ? strlen(text) : 0;
    rec[0] = static_cast<uint8_t>(port & 0xff);
    rec[1] = static_cast<uint8_t>(port >> 8);
    rec[2] = static_cast<uint8_t>(tl);
    memcpy(rec + 3, buf, tl);
    Sock* s = Add(st, fd, false);
    int err = Rearm(st, s);
    Push(st, l->id, EV_ACCEPT, s->id, static_cast<int32_t>(st->used));
    st->used += 3 + tl;
    if (err) Fail(st, s, err, OP_ACCEPT);
  }
}

// Reads until EAGAIN, a short read (the queue was emptied: the next wake says if more came), the
// socket's share of the wake or the end of the arena. The reads are contiguous: one DATA event.
static void ReadSome(LoopState* st, Sock* s, uint32_t revents) {
  size_t start = st->used, got = 0;
  int err = 0;
  bool eof = false;
  while (got < kReadPerWake && st->used < st->arenaSize) {
    size_t want = st->arenaSize - st->used;
    if (want > kReadChunk) want = kReadChunk;
    ssize_t n = read(s->fd, st->arena + st->used, want);
    if (n > 0) {
      st->used += static_cast<size_t>(n);
      got += static_cast<size_t>(n);
      if (static_cast<size_t>(n) < want && !(revents & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) break;
      continue;
    }
    if (n == 0) { eof = true; break; }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
    break;
  }
  if (got > 0) Push(st, s->id, EV_DATA, static_cast<int32_t>(start), static_cast<int32_t>(got));
  if (err) {
    Fail(st, s, err, OP_READ);
  } else if (eof) {
    s->readEof = true;
    Rearm(st, s);
    Push(st, s->id, EV_EOF, 0, 0);
  }
}

static void Writable(LoopState* st, Sock* s) {
  int err = 0;
  bool empty = Flush(s, &err);
  if (err) { Fail(st, s, err, OP_WRITE); return; }
  if (!empty) return;
  Push(st, s->id, EV_DRAIN, 0, 0);
  if (s->shutPending) {
    s->shutPending = false;
    if (shutdown(s->fd, SHUT_WR) && errno != ENOTCONN) { Fail(st, s, errno, OP_SHUTDOWN); return; }
    s->shutDone = true;
    Push(st, s->id, EV_SHUTDOWN, 0, 0);
  }
  Rearm(st, s);
}

static void Connected(LoopState* st, Sock* s) {
  int soerr = s->err;  // a connect that failed at once
  socklen_t len = sizeof(soerr);
  if (!soerr && getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len)) soerr = errno;
  if (soerr) { Fail(st, s, soerr, OP_CONNECT); return; }
  s->connecting = false;
  Push(st, s->id, EV_CONNECT, 0, 0);
  // what was written while connecting goes out now (a DRAIN follows when it is all out)
  if (s->queued() > 0 || s->shutPending) Writable(st, s);
  if (!s->dead) {
    int e = Rearm(st, s);
    if (e) Fail(st, s, e, OP_CONNECT);
  }
}

// One batch: what epoll has ready now, its syscalls, and one call into JS. false when nothing was ready.
static bool Batch(LoopState* st) {
  st->nEvents = 0;
  st->used = 0;
  // Every socket yields at most 4 events (DATA EOF|ERROR DRAIN SHUTDOWN, or CONNECT + those of its flush).
  static constexpr int kBatch = 256;
  struct epoll_event evs[kBatch];
  int room = static_cast<int>(st->maxEvents / 5);
  if (room > kBatch) room = kBatch;
  int n = epoll_wait(st->epfd, evs, room, 0);
  if (n <= 0) return false;
  for (int i = 0; i < n; i++) {
    if (st->nEvents + 5 > st->maxEvents) break;  // level-triggered: the rest come on the next wake
    Sock* s = static_cast<Sock*>(evs[i].data.ptr);
    uint32_t re = evs[i].events;
    if (s->dead) continue;
    if (s->listener) { AcceptAll(st, s); continue; }
    if (s->connecting) { Connected(st, s); continue; }
    if ((re & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !s->paused && !s->readEof) {
      if (st->used < st->arenaSize) ReadSome(st, s, re);
    } else if ((re & EPOLLERR) && s->queued() == 0) {
      int soerr = 0;
      socklen_t len = sizeof(soerr);
      getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
      Fail(st, s, soerr ? soerr : EIO, OP_READ);
    }
    if (!s->dead && (re & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s->queued() > 0) Writable(st, s);
  }
  if (st->nEvents == 0) return true;
  Napi::HandleScope scope(st->env);
  try {
    st->callback.MakeCallback(st->resource.Value(), {Napi::Number::New(st->env, static_cast<double>(st->nEvents))});
  } catch (const Napi::Error& e) {
    // Like an exception thrown in an event listener: it goes to process 'uncaughtException'.
    napi_fatal_exception(st->env, e.Value());
  }
  return true;
}

// One batch per wake: looping for more while JS ran was measured no cheaper (wrk -c32: 13.3-14.7 vs 14.7-15.9
// us/req with 3 rounds), and it would hold back libuv's other handles.
static void OnPoll(uv_poll_t* handle, int status, int events) {
  LoopState* st = static_cast<LoopState*>(handle->data);
  if (!st->closed) Batch(st);
}

static void CloseLoop(LoopState* st) {
  if (st->closed) return;
  for (auto& kv : st->socks) {
    close(kv.second->fd);
    delete kv.second;
  }
  st->socks.clear();
  st->closed = true;
  st->callback.Reset();
  st->resource.Reset();
  st->arenaRef.Reset();
  st->eventsRef.Reset();
  if (st->polling) uv_poll_stop(&st->poll);
  close(st->epfd);
  uv_close(reinterpret_cast<uv_handle_t*>(&st->poll), [](uv_handle_t* h) { delete static_cast<LoopState*>(h->data); });
}

static bool ParseAddr(const std::string& host, int port, struct sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof(*ss));
  auto* a4 = reinterpret_cast<struct sockaddr_in*>(ss);
  if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(static_cast<uint16_t>(port));
    *len = sizeof(*a4);
    return true;
  }
  auto* a6 = reinterpret_cast<struct sockaddr_in6*>(ss);
  if (inet_pton(AF_INET6, host.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(port));
    *len = sizeof(*a6);
    return true;
  }
  return false;
}

static std::string HostPort(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

class NetLoop : public Napi::ObjectWrap<NetLoop> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NetLoop", {
      InstanceMethod("listen", &NetLoop::Listen),
      InstanceMethod("adopt", &NetLoop::Adopt),
      InstanceMethod("fdOf", &NetLoop::FdOf),
      InstanceMethod("localPort", &NetLoop::LocalPort),
      InstanceMethod("connect", &NetLoop::Connect),
      InstanceMethod("write", &NetLoop::Write),
      InstanceMethod("writev", &NetLoop::Writev),
      InstanceMethod("pause", &NetLoop::Pause),
      InstanceMethod("resume", &NetLoop::Resume),
      InstanceMethod("shutdown", &NetLoop::Shutdown),
      InstanceMethod("shutdownIdle", &NetLoop::ShutdownIdle),
      InstanceMethod("close", &NetLoop::Close),
      InstanceMethod("release", &NetLoop::Release),
      InstanceMethod("setNoDelay", &NetLoop::SetNoDelay),
      InstanceMethod("count", &NetLoop::Count),
      InstanceMethod("closeAll", &NetLoop::CloseAll),
    });
  }

  // new NetLoop(arena: Buffer, events: Int32Array, callback: (n: number) => void)
  explicit NetLoop(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NetLoop>(info) {
    Napi::Env env = info.Env();
    Napi::Buffer<uint8_t> arena = ArgBuffer(info, 0, "NetLoop", "arena");
    if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "NetLoop: argument 'events' must be an Int32Array");
    if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "NetLoop: argument 'callback' must be a function");
    Napi::Int32Array events = info[1].As<Napi::Int32Array>();
    if (arena.Length() < 64 * 1024) throw Napi::RangeError::New(env, "NetLoop: the arena must hold at least 64 KiB");
    if (events.ElementLength() < 64 * kEventInts) throw Napi::RangeError::New(env, "NetLoop: the event array must hold at least 64 events");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) ThrowErrno(env, "netio loop (no event loop)", EINVAL);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) ThrowErrno(env, "netio loop (epoll_create1)", errno);
    LoopState* st = new LoopState(env);
    st->epfd = epfd;
    int rc = uv_poll_init(loop, &st->poll, epfd);
    if (rc) {
      close(epfd);
      delete st;
      ThrowErrno(env, "netio loop (uv_poll_init)", -rc);
    }
    st->poll.data = st;
    st->arena = arena.Data();
    st->arenaSize = arena.Length();
    st->arenaRef = Napi::Persistent(info[0]);
    st->events = events.Data();
    st->maxEvents = events.ElementLength() / kEventInts;
    st->eventsRef = Napi::Persistent(info[1]);
    st->callback = Napi::Persistent(info[2].As<Napi::Function>());
    st->resource = Napi::Persistent(Napi::Object::New(env));
    rc = uv_poll_start(&st->poll, UV_READABLE, OnPoll);
    if (rc) {
      CloseLoop(st);
      ThrowErrno(env, "netio loop (uv_poll_start)", -rc);
    }
    st->polling = true;
    uv_unref(reinterpret_cast<uv_handle_t*>(&st->poll));
    st->refd = false;
    st_ = st;
    napi_add_env_cleanup_hook(env, Cleanup, st);
  }

  static void Cleanup(void* arg) { CloseLoop(static_cast<LoopState*>(arg)); }

 private:
  LoopState* st_ = nullptr;

  LoopState* Live(const Napi::CallbackInfo& info, const char* fn) {
    if (!st_) throw Napi::Error::New(info.Env(), std::string("netio ") + fn + ": the loop is closed");
    return st_;
  }

  Sock* Find(const Napi::CallbackInfo& info, const char* fn) {
    LoopState* st = Live(info, fn);
    auto it = st->socks.find(ArgInt(info, 0, fn, "id"));
    return it == st->socks.end() ? nullptr : it->second;
  }

  // listen(host, port, backlog) -> id
  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    LoopState* st = Live(info, "listen");
    std::string host = ArgString(info, 0, "listen", "host");
    int port = ArgInt(info, 1, "listen", "port");
    int backlog = ArgInt(info, 2, "listen", "backlog");
    std::string op = "listen " + HostPort(host, port);
    struct sockaddr_storage ss;
    socklen_t len;
    if (port < 0 || port > 65535 || !ParseAddr(host, port, &ss, &len))
      throw Napi::TypeError::New(env, op + ": not a numeric IPv4/IPv6 address and port");
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) ThrowErrno(env, op, errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as libuv does
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<struct sockaddr*>(&ss), len) || listen(fd, backlog)) {
      int err = errno;
      close(fd);
      ThrowErrno(env, op, err);
    }
    Sock* s = Add(st, fd, true);
    int err = Rearm(st, s);
    if (err) {
      Remove(st, s, true);
      ThrowErrno(env, op + " (epoll_ctl)", err);
    }
    return Napi::Number::New(env, s->id);
  }

  // adopt(fd) -> id: a listening socket this process received (a planned restart, agent/handover.ts) accepted on
  // from now on, as if listen() had made it. The loop owns the fd from here (close() closes it). Throws EINVAL for
  // an fd that is not a listening socket, which the loop would otherwise treat as one.
  Napi::Value Adopt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    LoopState* st = Live(info, "adopt");
    int fd = ArgInt(info, 0, "adopt", "fd");
    std::string op = "netio adopt fd " + std::to_string(fd);
    int acc = 0;
    socklen_t len = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len)) ThrowErrno(env, op, errno);
    if (!acc) ThrowErrno(env, op + " (not a listening socket)", EINVAL);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) || fcntl(fd, F_SETFD, FD_CLOEXEC)) ThrowErrno(env, op, errno);
    Sock* s = Add(st, fd, true);
    int err = Rearm(st, s);
    if (err) {
      Remove(st, s, false);  // the caller still owns the fd
      ThrowErrno(env, op + " (epoll_ctl)", err);
    }
    return Napi::Number::New(env, s->id);
  }

  // fdOf(id) -> fd: a listener's fd, to be sent to a new agent (it stays this loop's: the receiver gets a copy).
  Napi::Value FdOf(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "fdOf");
    if (!s || !s->listener) ThrowErrno(info.Env(), "netio fdOf (no such listener)", EBADF);
    return Napi::Number::New(info.Env(), s->fd);
  }

  Napi::Value LocalPort(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "localPort");
    if (!s) ThrowErrno(info.Env(), "netio localPort", EBADF);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(s->fd, reinterpret_cast<struct sockaddr*>(&ss), &len)) ThrowErrno(info.Env(), "netio localPort", errno);
    int port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<struct sockaddr_in6*>(&ss)->sin6_port)
                                        : ntohs(reinterpret_cast<struct sockaddr_in*>(&ss)->sin_port);
    return Napi::Number::New(info.Env(), port);
  }

  // connect(host, port) -> id; a CONNECT or ERROR event follows. Throws only for a bad address or
  // when no socket can be made; a refused connect is an ERROR event like any other.
  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    LoopState* st = Live(info, "connect");
    std::string host = ArgString(info, 0, "connect", "host");
    int port = ArgInt(info, 1, "connect", "port");
    std::string op = "connect " + HostPort(host, port);
    struct sockaddr_storage ss;
    socklen_t len;
    if (port <= 0 || port > 65535 || !ParseAddr(host, port, &ss, &len))
      throw Napi::TypeError::New(env, op + ": not a numeric IPv4/IPv6 address and port");
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) ThrowErrno(env, op, errno);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Sock* s = Add(st, fd, false);
    s->connecting = true;
    int rc = connect(fd, reinterpret_cast<struct sockaddr*>(&ss), len);
    int err = rc == 0 || errno == EINPROGRESS ? 0 : errno;
    // Even a connect done at once is reported from the loop (EPOLLOUT fires at the next wake), so the
    // caller always has its listeners in place first.
    if (!err) err = Rearm(st, s);
    if (err) {
      // reported from the loop too: keep it in epoll through EPOLLOUT, which a failed socket signals
      s->connecting = true;
      struct epoll_event ev = {};
      ev.events = EPOLLOUT;
      ev.data.ptr = s;
      if (s->mask == 0 && epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) s->mask = EPOLLOUT;
      s->err = err;
    }
    return Napi::Number::New(env, s->id);
  }

  // The bytes of a Buffer or a string (latin1, or utf8 when asked); strings are copied to the scratch buffer at scratchAt.
  static bool Bytes(napi_env env, LoopState* st, napi_value v, bool utf8, const char** p, size_t* n, size_t scratchAt) {
    bool isBuf = false;
    napi_is_buffer(env, v, &isBuf);
    if (isBuf) {
      void* data;
      napi_get_buffer_info(env, v, &data, n);
      *p = static_cast<const char*>(data);
      return true;
    }
    napi_valuetype t;
    napi_typeof(env, v, &t);
    if (t != napi_string) return false;
    size_t len = 0;
    if (utf8) napi_get_value_string_utf8(env, v, nullptr, 0, &len);
    else napi_get_value_string_latin1(env, v, nullptr, 0, &len);
    if (st->scratch.size() < scratchAt + len + 1) st->scratch.resize(scratchAt + len + 1);
    char* dst = st->scratch.data() + scratchAt;
    if (utf8) napi_get_value_string_utf8(env, v, dst, len + 1, &len);
    else napi_get_value_string_latin1(env, v, dst, len + 1, &len);
    *p = dst;
    *n = len;
    return true;
  }

  // Sends iov now if nothing is queued ahead of it; the rest is queued and EPOLLOUT armed.
  // Returns the bytes queued after the call (0: all sent), or -errno.
  static int64_t Send(LoopState* st, Sock* s, struct iovec* iov, int cnt, size_t total) {
    if (s->dead) return -(s->err ? s->err : EPIPE);
    if (s->shutDone || s->shutPending || s->listener) return -EPIPE;
    size_t sent = 0;
    if (!s->connecting && s->queued() == 0 && total > 0) {
      struct msghdr mh = {};
      mh.msg_iov = iov;
      mh.msg_iovlen = static_cast<size_t>(cnt);
      for (;;) {
        ssize_t n = cnt == 1 ? send(s->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT)
                             : sendmsg(s->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) { sent = static_cast<size_t>(n); break; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        int err = errno;
        s->dead = true;
        s->err = err;
        Rearm(st, s);
        return -err;
      }
      if (sent == total) return 0;
    }
    size_t skip = sent;
    for (int i = 0; i < cnt; i++) {
      size_t l = iov[i].iov_len;
      if (skip >= l) { skip -= l; continue; }
      Enqueue(s, static_cast<const char*>(iov[i].iov_base) + skip, l - skip);
      skip = 0;
    }
    if (!s->connecting) {
      int err = Rearm(st, s);
      if (err) return -err;
    }
    return static_cast<int64_t>(s->queued());
  }

  // write(id, data: Buffer | string, utf8: boolean) -> bytes queued (0 = all sent) or -errno
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "write");
    if (!s) return Napi::Number::New(env, -EBADF);
    const char* p;
    size_t n;
    bool utf8 = info.Length() > 2 && info[2].ToBoolean().Value();
    if (info.Length() < 2 || !Bytes(env, st_, info[1], utf8, &p, &n, 0))
      throw Napi::TypeError::New(env, "netio write: argument 'data' must be a Buffer or a string");
    struct iovec iov = {const_cast<char*>(p), n};
    return Napi::Number::New(env, static_cast<double>(Send(st_, s, &iov, 1, n)));
  }

  // writev(id, chunks: (Buffer | string(latin1))[]) -> as write()
  Napi::Value Writev(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "writev");
    if (!s) return Napi::Number::New(env, -EBADF);
    if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "netio writev: argument 'chunks' must be an array");
    Napi::Array arr = info[1].As<Napi::Array>();
    uint32_t cnt = arr.Length();
    // Strings are copied into the scratch buffer first (it may grow), and only then are pointers taken.
    std::vector<napi_value> vals(cnt);
    size_t strBytes = 0;
    for (uint32_t i = 0; i < cnt; i++) {
      napi_get_element(env, arr, i, &vals[i]);
      napi_valuetype t;
      napi_typeof(env, vals[i], &t);
      if (t == napi_string) {
        size_t len = 0;
        napi_get_value_string_latin1(env, vals[i], nullptr, 0, &len);
        strBytes += len + 1;
      }
    }
    if (st_->scratch.size() < strBytes) st_->scratch.resize(strBytes);
    int64_t queued = 0;
    size_t at = 0;
    uint32_t i = 0;
    while (i < cnt) {
      struct iovec iov[kMaxIov];
      int k = 0;
      size_t total = 0;
      for (; i < cnt && k < kMaxIov; i++) {
        const char* p;
        size_t n;
        if (!Bytes(env, st_, vals[i], false, &p, &n, at))
          throw Napi::TypeError::New(env, "netio writev: chunk " + std::to_string(i) + " must be a Buffer or a string");
        if (p >= st_->scratch.data() && p < st_->scratch.data() + st_->scratch.size()) at += n + 1;
        if (n == 0) continue;
        iov[k].iov_base = const_cast<char*>(p);
        iov[k].iov_len = n;
        total += n;
        k++;
      }
      if (k == 0) continue;
      queued = Send(st_, s, iov, k, total);
      if (queued < 0) break;
    }
    return Napi::Number::New(env, static_cast<double>(queued));
  }

  Napi::Value Pause(const Napi::CallbackInfo& info) { return SetPaused(info, true, "pause"); }
  Napi::Value Resume(const Napi::CallbackInfo& info) { return SetPaused(info, false, "resume"); }

  Napi::Value SetPaused(const Napi::CallbackInfo& info, bool paused, const char* fn) {
    Sock* s = Find(info, fn);
    if (s && s->paused != paused) {
      s->paused = paused;
      if (!s->connecting) Rearm(st_, s);
    }
    return info.Env().Undefined();
  }

  // shutdown(id) -> 1 done now, 0 after the queue is flushed (SHUTDOWN event), or -errno
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "shutdown");
    if (!s) return Napi::Number::New(env, -EBADF);
    if (s->shutDone) return Napi::Number::New(env, 1);
    if (s->dead) return Napi::Number::New(env, -(s->err ? s->err : EPIPE));
    if (s->connecting || s->queued() > 0) {
      s->shutPending = true;
      return Napi::Number::New(env, 0);
    }
    if (shutdown(s->fd, SHUT_WR) && errno != ENOTCONN) return Napi::Number::New(env, -errno);
    s->shutDone = true;
    return Napi::Number::New(env, 1);
  }

  // shutdownIdle(id) -> 1 SHUT_WR done (FIN sent), 0 not done: bytes (or the peer's EOF) wait to be read, or ours to
  // be written; or -errno. An idle HTTP/1.1 connection closed by the server (keep-alive timeout, a planned restart)
  // races a request the client sends meanwhile: what reached our socket before the FIN must be read and answered
  // (RFC 9112 9.6), so the check and the FIN are one call here, with no event-loop turn between them. poll() sees
  // what a sockmap redirect queued too (tcp_poll asks the psock), where FIONREAD counts only the TCP receive queue.
  Napi::Value ShutdownIdle(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "shutdownIdle");
    if (!s) return Napi::Number::New(env, -EBADF);
    if (s->shutDone) return Napi::Number::New(env, 1);
    if (s->dead) return Napi::Number::New(env, -(s->err ? s->err : EPIPE));
    if (s->connecting || s->queued() > 0 || s->shutPending || s->readEof) return Napi::Number::New(env, 0);
    struct pollfd p = {s->fd, POLLIN | POLLRDHUP, 0};
    int r;
    do r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) return Napi::Number::New(env, -errno);
    if (r > 0 && (p.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR))) return Napi::Number::New(env, 0);
    if (shutdown(s->fd, SHUT_WR) && errno != ENOTCONN) return Napi::Number::New(env, -errno);
    s->shutDone = true;
    return Napi::Number::New(env, 1);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "close");
    if (s) Remove(st_, s, true);
    return info.Env().Undefined();
  }

  // release(id) -> fd: out of epoll and forgotten, not closed (handed to node:net). Throws when
  // written bytes are still queued (they would be lost).
  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "release");
    if (!s) ThrowErrno(env, "netio release", EBADF);
    if (s->queued() > 0) ThrowErrno(env, "netio release (bytes still queued)", EBUSY);
    int fd = s->fd;
    Remove(st_, s, false);
    return Napi::Number::New(env, fd);
  }

  Napi::Value SetNoDelay(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "setNoDelay");
    if (s && !s->listener) {
      int on = info.Length() > 1 && info[1].ToBoolean().Value() ? 1 : 0;
      setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    }
    return info.Env().Undefined();
  }

  // sockets and listeners open (for tests and stats)
  Napi::Value Count(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), st_ ? static_cast<double>(st_->socks.size()) : 0);
  }

  Napi::Value CloseAll(const Napi::CallbackInfo& info) {
    CloseOnce(info.Env(), st_, Cleanup);
    return info.Env().Undefined();
  }
};

// The codes of the event array and of errors, by name: agent/proxy/netio.ts keeps them as plain numbers for its hot
// loop and refuses to load when they differ from these.
static Napi::Object Constants(Napi::Env env) {
  Napi::Object k = Napi::Object::New(env);
#define SM_NETIO_CONST(c) k.Set(#c, Napi::Number::New(env, c));
  SM_NETIO_CONST(EV_ACCEPT)
  SM_NETIO_CONST(EV_DATA)
  SM_NETIO_CONST(EV_EOF)
  SM_NETIO_CONST(EV_ERROR)
  SM_NETIO_CONST(EV_DRAIN)
  SM_NETIO_CONST(EV_CONNECT)
  SM_NETIO_CONST(EV_SHUTDOWN)
  SM_NETIO_CONST(OP_READ)
  SM_NETIO_CONST(OP_WRITE)
  SM_NETIO_CONST(OP_CONNECT)
  SM_NETIO_CONST(OP_ACCEPT)
  SM_NETIO_CONST(OP_SHUTDOWN)
  k.Set("EVENT_INTS", Napi::Number::New(env, kEventInts));
#undef SM_NETIO_CONST
  k.Freeze();
  return k;
}

static void InitNetio(Napi::Env env, Napi::Object exports) {
  exports.Set("NetLoop", NetLoop::Define(env));
  exports.Set("constants", Constants(env));
  InitFdpass(env, exports);
}

}  // namespace sockmesh

static Napi::Object InitNetioAddon(Napi::Env env, Napi::Object exports) {
  sockmesh::InitNetio(env, exports);
  return exports;
}

NODE_API_MODULE(sockmesh_netio, InitNetioAddon)
