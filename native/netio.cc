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
//   SECURE   the TLS handshake started by startTls() is done (tlsInfo() has the peer's chain and ALPN)
//   TLSDATA  a TLS socket's plaintext: a = slab offset, b = length (setSlab: JS keeps it without a copy)
// Connection ids come from a counter and are never reused; fds are closed only by close().
//
// TLS (startTls, TlsContext): TLS 1.3 on a loop socket, the handshake and every record in this loop, no Node stream
// and no JS per record (the tunnel's node:tls + node:http2 carried 3.15 Gbit/s where haproxy's mTLS pair carries 4.75).
// OpenSSL is the one the node binary itself runs: node links OpenSSL statically and exports its symbols for addons
// (nodesource and nodejs.org builds; `nm -D node | grep ' T SSL_'`), node-gyp puts its headers (include/node/openssl)
// ahead of the system's, and this addon does not link -lssl, so every SSL_* resolves to node's copy when the addon is
// loaded. Same code, same version as the headers: no second OpenSSL with its own state in the process (a Debian
// nodejs built against the system libssl3 resolves them to that library, which node then uses too). The CI machine
// runs the same node (.ci/run and scripts/setup.sh do not install one; they use the machine's), and TlsContext
// refuses to work when the running OpenSSL's major.minor is not the headers' (an addon built for another node).
// OpenSSL's error queue is per thread and shared with node's own TLS on this thread: it is cleared before each call
// here and after its errors are read, so neither side sees the other's errors.
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
#include <sys/eventfd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "sockmesh.h"

namespace sockmesh {

void InitFdpass(Napi::Env env, Napi::Object exports);  // fdpass.cc

enum : int32_t { EV_ACCEPT = 1, EV_DATA = 2, EV_EOF = 3, EV_ERROR = 4, EV_DRAIN = 5, EV_CONNECT = 6, EV_SHUTDOWN = 7, EV_SECURE = 8, EV_TLSDATA = 9 };
// OP_TLS: a TLS failure (errno EPROTO); its text (OpenSSL's reason) is tlsError(id)
enum : int32_t { OP_READ = 1, OP_WRITE = 2, OP_CONNECT = 3, OP_ACCEPT = 4, OP_SHUTDOWN = 5, OP_TLS = 6 };

static constexpr int kEventInts = 4;
static constexpr size_t kReadChunk = 64 * 1024;      // one read(2) at most
static constexpr size_t kReadPerWake = 256 * 1024;   // one socket's share of a wake (level-triggered: the rest next time)
static constexpr size_t kAcceptRecord = 3 + INET6_ADDRSTRLEN;
static constexpr int kMaxIov = 64;
// deferWrites: a larger write (a bulk body) is sent at once, not copied into the queue first
static constexpr size_t kDeferMax = 16 * 1024;
// OpenSSL's read buffer with read_ahead: one read(2) takes up to this much ciphertext, two full records (16 KiB + 22
// each) and then some. Not more: before each record OpenSSL moves what is left in the buffer to its start (ssl3_read_n,
// for alignment), so a buffer of B bytes moves ~B/32 KiB times every byte it reads. With 256 KiB (ztunnel's buffer
// size) that memmove was 10% of the receiving agent's CPU in a bulk stream (perf; 18% with the copy-out, 8% with
// 34 KiB, where the read(2)s it costs more are cheaper). Records past the arena or the wake's share stay in it:
// SSL_has_pending, which epoll cannot see (the eventfd below).
static constexpr size_t kTlsReadBuffer = 34 * 1024;
static constexpr size_t kTlsFullRecord = 16384;  // the plaintext of a full record (SSL_CTX_set_max_send_fragment)

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
  bool deferred = false;  // its queue holds writes of the batch being delivered: sent at the batch's end (deferWrites)
  int err = 0;
  // TLS (startTls): OpenSSL reads the fd itself (a socket BIO, read-ahead) and writes its records into q (QueueBio),
  // which goes out like a plain socket's queue: many records per send(2), and no SSL call ever waits for the socket
  SSL* ssl = nullptr;
  bool tlsHandshaking = false;
  bool tlsKick = false;        // a client's first handshake step (its ClientHello) is due at the next wake
  bool tlsPending = false;     // in LoopState::tlsPending (decrypted or buffered records epoll cannot see)
  bool tlsClosed = false;      // our close_notify was made (SSL_shutdown)
  std::string tlsErr;          // OpenSSL's reason for the OP_TLS error
  std::vector<char> pre;       // plaintext written before the handshake was done: encrypted right after it
  std::vector<char> q;  // bytes the kernel did not take yet, from qhead (on a TLS socket: records)
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
  // TLS plaintext is SSL_read into the slab (setSlab), not the arena: bytes written there are never written again, so
  // JS hands views of them to the listener where the arena's must be copied out (the next wake reuses the arena).
  // JS gives a new slab once the callback reports this one nearly used up; the old one lives on in the views.
  Napi::Reference<Napi::Value> slabRef;
  uint8_t* slab = nullptr;
  size_t slabSize = 0;
  size_t slabUsed = 0;
  std::vector<char> scratch;  // strings given to write()/writev() (latin1 / utf8)
  // TLS sockets with records OpenSSL read but not yet handed out (the wake's share or the arena ran out, or bytes
  // that came with the handshake's last flight): level-triggered epoll says nothing about them, so the eventfd
  // (in epoll, data.ptr = nullptr) is made readable to wake the loop for them.
  int evfd = -1;
  std::vector<int32_t> tlsPending;
  std::vector<char> gather;  // a writev's chunks made one buffer for SSL_write
  // setDeferWrites(true): a plain socket's writes made while JS handles a batch are queued and sent once the callback
  // returned (its microtasks included), in the order the sockets were first written to: what a batch produced goes out
  // back to back, each socket's in one send, instead of one send(2) between every two events the batch handles.
  bool deferWrites = false;
  bool inCallback = false;
  std::vector<int32_t> deferredIds;
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
  if (s->tlsHandshaking) return EPOLLIN | (s->queued() > 0 || s->tlsKick ? static_cast<uint32_t>(EPOLLOUT) : 0u);
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
  if (s->ssl) SSL_free(s->ssl);  // no close_notify: close() is a destroy (end() sends it)
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

// A socket's deferred writes go out now (the batch is over, or close/shutdown/release needs its queue sent first).
// Whatever the kernel did not take, or an error, is left to EPOLLOUT: the next wake's Writable sends the rest (DRAIN)
// or reports the error (ERROR), as for any queued write.
static void SendDeferred(LoopState* st, Sock* s) {
  if (!s->deferred) return;
  s->deferred = false;
  int err = 0;
  if (!s->dead && !Flush(s, &err)) Rearm(st, s);
}

static void SendAllDeferred(LoopState* st) {
  for (size_t i = 0; i < st->deferredIds.size(); i++) {
    auto it = st->socks.find(st->deferredIds[i]);
    if (it != st->socks.end()) SendDeferred(st, it->second);
  }
  st->deferredIds.clear();
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


// ---- TLS on a loop socket ----

enum TlsStep { TLS_WANT_READ, TLS_WANT_WRITE, TLS_CLOSED, TLS_FAILED };

// OpenSSL's reason for the last error on this thread's queue ("certificate verify failed", "tlsv1 alert unknown ca"),
// with the verification result when the peer's certificate is why; the queue is left empty.
static std::string TlsReason(SSL* ssl) {
  unsigned long e = ERR_peek_last_error();
  std::string r;
  const char* why = e ? ERR_reason_error_string(e) : nullptr;
  if (why) {
    r = why;
  } else if (e) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    r = buf;
  } else {
    r = "TLS failure";
  }
  long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK)
    r += std::string(" (") + X509_verify_cert_error_string(v) + ")";
  ERR_clear_error();
  return r;
}

// What an SSL call that returned rc <= 0 means; call it right after the call (errno is read). TLS_FAILED sets
// *err / *op: a socket error (ECONNRESET on read...) keeps its errno and operation, a TLS one is EPROTO + OP_TLS
// with OpenSSL's reason in s->tlsErr. The caller reports it (Fail in the loop, -errno from a JS call).
static TlsStep TlsCheck(Sock* s, int rc, int32_t sysOp, int* err, int32_t* op) {
  int sysErr = errno;
  switch (SSL_get_error(s->ssl, rc)) {
    case SSL_ERROR_WANT_READ: return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return TLS_CLOSED;  // the peer's close_notify
    case SSL_ERROR_SYSCALL:
      if (ERR_peek_error() == 0 && sysErr != 0 && sysErr != EAGAIN) {
        *err = sysErr;
        *op = sysOp;
        return TLS_FAILED;
      }
      if (ERR_peek_error() == 0) {
        s->tlsErr = "unexpected eof while reading";  // OpenSSL 3 reports a FIN without close_notify so too
        *err = EPROTO;
        *op = OP_TLS;
        return TLS_FAILED;
      }
      break;
    default: break;
  }
  s->tlsErr = TlsReason(s->ssl);
  *err = EPROTO;
  *op = OP_TLS;
  return TLS_FAILED;
}

// The write side of every TLS socket: a BIO that appends OpenSSL's records to the socket's queue. A socket BIO would
// make one send(2) per 16 KiB record (measured: the sender's CPU per byte was 4.7x a plain socket's); queued, a whole
// write() of the caller's goes out in one send, and SSL_write / SSL_shutdown / the handshake never wait for room
// (WANT_WRITE cannot happen: backpressure is the queue's length, as on a plain socket). BIO_flush, which OpenSSL
// calls at the end of each handshake flight, is a no-op: the caller sends the queue after every SSL call.
static BIO_METHOD* QueueBio() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sockmesh netio queue");
    BIO_meth_set_write_ex(bm, [](BIO* b, const char* data, size_t len, size_t* written) -> int {
      Enqueue(static_cast<Sock*>(BIO_get_data(b)), data, len);
      *written = len;
      return 1;
    });
    BIO_meth_set_ctrl(bm, [](BIO*, int cmd, long, void*) -> long { return cmd == BIO_CTRL_FLUSH ? 1 : 0; });
    BIO_meth_set_create(bm, [](BIO* b) -> int {
      BIO_set_init(b, 1);
      return 1;
    });
    return bm;
  }();
  return m;
}

static void MarkTlsPending(LoopState* st, Sock* s) {
  if (s->tlsPending) return;
  s->tlsPending = true;
  st->tlsPending.push_back(s->id);
  uint64_t one = 1;
  ssize_t w = write(st->evfd, &one, sizeof(one));
  (void)w;  // a full counter is readable anyway
}

// A TLS failure found in the loop: what OpenSSL queued (its alert: "unknown ca", "certificate required") goes out if
// the socket takes it now, then the ERROR.
static void TlsFail(LoopState* st, Sock* s, int err, int32_t op) {
  int ignored = 0;
  Flush(s, &ignored);
  Fail(st, s, err, op);
}

// SSL_write of n bytes (all of them: records of 16 KiB into the queue); false and *err / *op when it failed
static bool TlsEncrypt(Sock* s, const char* p, size_t n, int* err, int32_t* op) {
  size_t off = 0;
  while (off < n) {
    size_t w = 0;
    ERR_clear_error();
    int rc = SSL_write_ex(s->ssl, p + off, n - off, &w);
    if (rc == 1) {
      off += w;
      continue;
    }
    TlsStep r = TlsCheck(s, rc, OP_WRITE, err, op);
    if (r != TLS_FAILED) {  // cannot be (the queue takes everything, the handshake is done): say so, not loop
      s->tlsErr = r == TLS_CLOSED ? "the connection was closed" : "SSL_write wants the peer first";
      *err = EPROTO;
      *op = OP_TLS;
    }
    return false;
  }
  return true;
}

// Our close_notify (end()) into the queue; false and *err / *op when it failed. Reading goes on until the peer's
// close_notify: TLS 1.3 half-closes like TCP.
static bool TlsClose(Sock* s, int* err, int32_t* op) {
  s->tlsClosed = true;
  ERR_clear_error();
  int rc = SSL_shutdown(s->ssl);
  if (rc >= 0) return true;  // 0: sent, the peer's not seen yet; 1: both
  TlsStep r = TlsCheck(s, rc, OP_SHUTDOWN, err, op);
  if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) { ERR_clear_error(); return true; }
  if (r == TLS_CLOSED) { *err = EPIPE; *op = OP_SHUTDOWN; }
  return false;
}

static bool SlabRoom(LoopState* st) { return st->slabUsed < st->slabSize; }

// SSL_read into the slab until OpenSSL wants the socket (WANT_READ), the wake's share or the slab runs out, the
// peer's close_notify (EOF) or an error. One TLSDATA event (the reads are contiguous).
static void TlsRead(LoopState* st, Sock* s) {
  size_t start = st->slabUsed, got = 0;
  bool more = false;
  int err = 0;
  int32_t op = 0;
  TlsStep r = TLS_WANT_READ;
  for (;;) {
    if (got >= kReadPerWake || st->slabUsed >= st->slabSize) { more = true; break; }
    size_t want = st->slabSize - st->slabUsed, n = 0;
    if (want > kReadChunk) want = kReadChunk;
    ERR_clear_error();
    int rc = SSL_read_ex(s->ssl, st->slab + st->slabUsed, want, &n);
    if (rc == 1) {
      st->slabUsed += n;
      got += n;
      // A record shorter than a full one, and nothing more in OpenSSL's buffer: the sender's write ended there, and
      // the socket is most likely empty. Not asked again now (that read(2) would say EAGAIN: one syscall per small
      // message, a ping-pong's every hop); level-triggered epoll wakes us if more came meanwhile.
      if (got < kTlsFullRecord && n < want && !SSL_has_pending(s->ssl)) break;
      continue;
    }
    r = TlsCheck(s, rc, OP_READ, &err, &op);
    break;
  }
  if (got > 0) Push(st, s->id, EV_TLSDATA, static_cast<int32_t>(start), static_cast<int32_t>(got));
  if (r == TLS_FAILED) { TlsFail(st, s, err, op); return; }
  if (r == TLS_CLOSED) {
    s->readEof = true;
    Push(st, s->id, EV_EOF, 0, 0);
  } else if (more && SSL_has_pending(s->ssl)) {
    MarkTlsPending(st, s);
  }
  // what SSL_read wrote (a TLS 1.3 KeyUpdate's answer) is in the queue: EPOLLOUT is armed for it here, and the queue
  // empties only through Writable (which sends a pending end()'s close_notify and FIN once it is empty)
  Rearm(st, s);
}

static void Writable(LoopState* st, Sock* s);

// One step of the handshake (SSL_do_handshake is non-blocking: it says what it waits for; its flights go out with the
// queue). Done: SECURE, then what was written or end()ed meanwhile goes out, and records that came with the last
// flight are read (epoll would not tell: they are in OpenSSL's buffer already).
static void Handshake(LoopState* st, Sock* s) {
  s->tlsKick = false;
  int err = 0;
  int32_t op = 0;
  ERR_clear_error();
  int rc = SSL_do_handshake(s->ssl);
  if (rc == 1) {
    s->tlsHandshaking = false;
    Push(st, s->id, EV_SECURE, 0, 0);
    if (!s->pre.empty()) {
      bool ok = TlsEncrypt(s, s->pre.data(), s->pre.size(), &err, &op);
      std::vector<char>().swap(s->pre);
      if (!ok) { TlsFail(st, s, err, op); return; }
    }
    Writable(st, s);  // the last flight, what was written meanwhile, end()'s close_notify and FIN
    if (!s->dead && !s->paused && !s->readEof) {
      if (SlabRoom(st)) TlsRead(st, s);
      else MarkTlsPending(st, s);
    }
    if (!s->dead) Rearm(st, s);
    return;
  }
  TlsStep r = TlsCheck(s, rc, OP_READ, &err, &op);
  if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
    Flush(s, &err);  // this step's flight
    if (err) { Fail(st, s, err, OP_WRITE); return; }
    Rearm(st, s);
    return;
  }
  if (r == TLS_CLOSED) { s->tlsErr = "the peer closed the connection during the handshake"; err = EPROTO; op = OP_TLS; }
  if (op != OP_TLS) {  // a reset mid-handshake: say so in TLS terms too
    s->tlsErr = std::string("the connection failed during the handshake: ") + ErrnoName(err);
    err = EPROTO;
    op = OP_TLS;
  }
  TlsFail(st, s, err, op);
}

// Every TLS socket with records OpenSSL holds that epoll cannot see (MarkTlsPending), read now.
static void RunTlsPending(LoopState* st) {
  uint64_t v;
  ssize_t r = read(st->evfd, &v, sizeof(v));
  (void)r;
  std::vector<int32_t> ids;
  ids.swap(st->tlsPending);
  for (size_t i = 0; i < ids.size(); i++) {
    auto it = st->socks.find(ids[i]);
    if (it == st->socks.end()) continue;
    Sock* s = it->second;
    s->tlsPending = false;
    if (s->dead || !s->ssl || s->tlsHandshaking || s->paused || s->readEof) continue;  // resume() marks it again
    if (st->nEvents + 5 > st->maxEvents || !SlabRoom(st)) { MarkTlsPending(st, s); continue; }
    TlsRead(st, s);
  }
}

static void Writable(LoopState* st, Sock* s) {
  int err = 0;
  bool empty = Flush(s, &err);
  if (err) { Fail(st, s, err, OP_WRITE); return; }
  if (!empty) { Rearm(st, s); return; }
  Push(st, s->id, EV_DRAIN, 0, 0);
  if (s->shutPending) {
    if (s->ssl && !s->tlsClosed) {  // our close_notify first, then the FIN behind it
      int32_t op = 0;
      if (!TlsClose(s, &err, &op)) { TlsFail(st, s, err, op); return; }
      if (!Flush(s, &err)) {
        if (err) Fail(st, s, err, OP_WRITE);
        else Rearm(st, s);
        return;
      }
    }
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
  if (s->ssl) { Handshake(st, s); return; }  // startTls() before the connect was done: the ClientHello goes now
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
    if (s == nullptr) { RunTlsPending(st); continue; }  // the eventfd
    if (s->dead) continue;
    if (s->listener) { AcceptAll(st, s); continue; }
    if (s->connecting) { Connected(st, s); continue; }
    if (s->tlsHandshaking) { Handshake(st, s); continue; }
    if ((re & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !s->paused && !s->readEof) {
      if (s->ssl) {
        // a full slab: read once JS gave a new one (OpenSSL may hold the records already: epoll would not say)
        if (SlabRoom(st)) TlsRead(st, s);
        else MarkTlsPending(st, s);
      } else if (st->used < st->arenaSize) {
        ReadSome(st, s, re);
      }
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
  st->inCallback = true;
  try {
    st->callback.MakeCallback(st->resource.Value(), {Napi::Number::New(st->env, static_cast<double>(st->nEvents)),
                                                      Napi::Number::New(st->env, static_cast<double>(st->slabUsed))});
  } catch (const Napi::Error& e) {
    // Like an exception thrown in an event listener: it goes to process 'uncaughtException'.
    napi_fatal_exception(st->env, e.Value());
  }
  st->inCallback = false;
  if (!st->closed) SendAllDeferred(st);
  else st->deferredIds.clear();
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
    if (kv.second->ssl) SSL_free(kv.second->ssl);
    close(kv.second->fd);
    delete kv.second;
  }
  st->socks.clear();
  st->closed = true;
  st->callback.Reset();
  st->resource.Reset();
  st->arenaRef.Reset();
  st->slabRef.Reset();
  st->eventsRef.Reset();
  if (st->polling) uv_poll_stop(&st->poll);
  close(st->epfd);
  if (st->evfd >= 0) close(st->evfd);
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


// ---- TLS contexts ----

// The suites offered and accepted, in order: AES-128-GCM first (AES-NI; ztunnel's choice), and the server's order
// decides. TLS 1.3 only: the tunnel has no TLS 1.2 peer to serve.
static const char kTlsSuites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
// Marks a JS object as a TlsContext (startTls refuses anything else instead of reading a wrong pointer).
static const napi_type_tag kTlsContextTag = {0x736f636b6d657368ULL, 0x746c73637478ULL};

// The ALPN list (wire form) of a context, owned by the SSL_CTX through ex_data: a server's select callback runs in
// handshakes that may outlive the JS object (rotation: live connections keep their context).
static int AlpnIndex() {
  static int idx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr,
      [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<std::string*>(ptr); });
  return idx;
}

static int AlpnSelect(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                      unsigned int inlen, void*) {
  auto* wire = static_cast<std::string*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), AlpnIndex()));
  if (!wire || wire->empty()) return SSL_TLSEXT_ERR_NOACK;
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outlen, reinterpret_cast<const unsigned char*>(wire->data()),
                            static_cast<unsigned int>(wire->size()), in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // the client offers none of ours: no_application_protocol
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

// new TlsContext(role: 'server' | 'client', chain: string (PEM, leaf first), key: string (PEM), bundle: string (PEM
// roots the peer's chain must lead to), alpn: string[]). One SSL_CTX: TLS 1.3 only, the suites above, the peer's
// certificate required and verified on both sides (its SPIFFE identity is checked in JS from tlsInfo()), no session
// tickets or cache, 16 KiB records. Immutable: a rotation makes a new one; connections keep the one they started with.
class TlsContext : public Napi::ObjectWrap<TlsContext> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TlsContext", {InstanceMethod("free", &TlsContext::Free)});
  }

  SSL_CTX* ctx = nullptr;
  bool server = false;

  explicit TlsContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TlsContext>(info) {
    Napi::Env env = info.Env();
    std::string role = ArgString(info, 0, "TlsContext", "role");
    if (role != "server" && role != "client") throw Napi::TypeError::New(env, "TlsContext: role must be 'server' or 'client', not '" + role + "'");
    server = role == "server";
    std::string chain = ArgString(info, 1, "TlsContext", "chain");
    std::string key = ArgString(info, 2, "TlsContext", "key");
    std::string bundle = ArgString(info, 3, "TlsContext", "bundle");
    if (info.Length() < 5 || !info[4].IsArray()) throw Napi::TypeError::New(env, "TlsContext: argument 'alpn' must be an array of strings");
    std::string wire;
    Napi::Array alpn = info[4].As<Napi::Array>();
    for (uint32_t i = 0; i < alpn.Length(); i++) {
      Napi::Value v = alpn.Get(i);
      std::string p = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
      if (p.empty() || p.size() > 255) throw Napi::TypeError::New(env, "TlsContext: alpn[" + std::to_string(i) + "] must be a protocol name of 1-255 bytes");
      wire += static_cast<char>(p.size());
      wire += p;
    }
    // Built against these headers, running on node's OpenSSL: the same major.minor or nothing (struct layouts and
    // macros of another minor version are not this one's).
    if ((OpenSSL_version_num() >> 20) != (OPENSSL_VERSION_NUMBER >> 20))
      throw Napi::Error::New(env, std::string("TlsContext: this addon was built against ") + OPENSSL_VERSION_TEXT + " but node runs " +
                                      OpenSSL_version(OPENSSL_VERSION) + ": rebuild it (npm ci) with this node's headers");
    std::string where = std::string("netio TLS context (") + role + ")";
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_method());
    if (!ctx) Fail(env, where + ": SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(ctx, kTlsSuites) != 1) Fail(env, where + ": cipher suites");
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    // NO_AUTO_CHAIN: the chain given is the chain sent (OpenSSL would otherwise complete it from the trust store and
    // send the root too)
    SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_max_send_fragment(ctx, 16384);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, kTlsReadBuffer);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);

    // the chain: the leaf, then its intermediates
    BIO* b = BIO_new_mem_buf(chain.data(), static_cast<int>(chain.size()));
    X509* leaf = b ? PEM_read_bio_X509(b, nullptr, nullptr, nullptr) : nullptr;
    if (!leaf) { BIO_free(b); Fail(env, where + ": the certificate chain has no PEM certificate"); }
    int ok = SSL_CTX_use_certificate(ctx, leaf);
    X509_free(leaf);
    if (ok != 1) { BIO_free(b); Fail(env, where + ": the certificate chain's first certificate"); }
    int n = 1;
    while (X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) {
      n++;
      if (SSL_CTX_add0_chain_cert(ctx, x) != 1) { X509_free(x); BIO_free(b); Fail(env, where + ": certificate " + std::to_string(n) + " of the chain"); }
    }
    BIO_free(b);
    ERR_clear_error();  // the end of the PEM text ("no start line")

    b = BIO_new_mem_buf(key.data(), static_cast<int>(key.size()));
    EVP_PKEY* pk = b ? PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(b);
    if (!pk) Fail(env, where + ": the key is not a PEM private key");
    ok = SSL_CTX_use_PrivateKey(ctx, pk);
    EVP_PKEY_free(pk);
    if (ok != 1 || SSL_CTX_check_private_key(ctx) != 1) Fail(env, where + ": the key does not match the chain's first certificate");

    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    b = BIO_new_mem_buf(bundle.data(), static_cast<int>(bundle.size()));
    int roots = 0;
    while (X509* x = b ? PEM_read_bio_X509(b, nullptr, nullptr, nullptr) : nullptr) {
      ok = X509_STORE_add_cert(store, x);
      X509_free(x);
      if (ok != 1) { BIO_free(b); Fail(env, where + ": certificate " + std::to_string(roots + 1) + " of the trust bundle"); }
      roots++;
    }
    BIO_free(b);
    ERR_clear_error();
    if (roots == 0) Fail(env, where + ": the trust bundle has no PEM certificate");

    if (!wire.empty()) {
      if (server) {
        SSL_CTX_set_ex_data(ctx, AlpnIndex(), new std::string(wire));
        SSL_CTX_set_alpn_select_cb(ctx, AlpnSelect, nullptr);
      } else if (SSL_CTX_set_alpn_protos(ctx, reinterpret_cast<const unsigned char*>(wire.data()), static_cast<unsigned int>(wire.size())) != 0) {
        Fail(env, where + ": ALPN");
      }
    }
    napi_type_tag_object(env, info.This(), &kTlsContextTag);
  }

  ~TlsContext() override {
    if (ctx) SSL_CTX_free(ctx);  // connections made with it hold their own reference
  }

  // free(): let go of the SSL_CTX now rather than at garbage collection (live connections keep theirs)
  Napi::Value Free(const Napi::CallbackInfo& info) {
    if (ctx) SSL_CTX_free(ctx);
    ctx = nullptr;
    return info.Env().Undefined();
  }

  static TlsContext* From(Napi::Env env, Napi::Value v) {
    bool tagged = false;
    if (v.IsObject()) napi_check_object_type_tag(env, v, &kTlsContextTag, &tagged);
    if (!tagged) return nullptr;
    return Unwrap(v.As<Napi::Object>());
  }

 private:
  // throws "<what>: <OpenSSL's reason>"; the context made so far is freed by the destructor
  [[noreturn]] void Fail(Napi::Env env, const std::string& what) {
    std::string why = ERR_peek_last_error() ? TlsReason(nullptr) : "";
    throw Napi::Error::New(env, why.empty() ? what : what + ": " + why);
  }
};

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
      InstanceMethod("reset", &NetLoop::Reset),
      InstanceMethod("release", &NetLoop::Release),
      InstanceMethod("setNoDelay", &NetLoop::SetNoDelay),
      InstanceMethod("setDeferWrites", &NetLoop::SetDeferWrites),
      InstanceMethod("count", &NetLoop::Count),
      InstanceMethod("closeAll", &NetLoop::CloseAll),
      InstanceMethod("startTls", &NetLoop::StartTls),
      InstanceMethod("setSlab", &NetLoop::SetSlab),
      InstanceMethod("tlsInfo", &NetLoop::TlsInfo),
      InstanceMethod("tlsError", &NetLoop::TlsError),
    });
  }

  // new NetLoop(arena: Buffer, events: Int32Array, callback: (n: number, slabUsed: number) => void)
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
    // readable when a TLS socket has records epoll cannot see (RunTlsPending); data.ptr nullptr marks it
    int evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event eev = {};
    eev.events = EPOLLIN;
    eev.data.ptr = nullptr;
    if (evfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, evfd, &eev)) {
      int e = errno;
      if (evfd >= 0) close(evfd);
      close(epfd);
      ThrowErrno(env, "netio loop (eventfd)", e);
    }
    LoopState* st = new LoopState(env);
    st->epfd = epfd;
    st->evfd = evfd;
    int rc = uv_poll_init(loop, &st->poll, epfd);
    if (rc) {
      close(epfd);
      close(evfd);
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
    if (s->ssl) return SendTls(st, s, iov, cnt, total);
    if (s->deferred || (st->deferWrites && st->inCallback && !s->connecting && s->queued() == 0 && total > 0 && total <= kDeferMax)) {
      // queued without EPOLLOUT: SendAllDeferred sends it when the batch is over. Reported as sent (0): a count would
      // have JS wait for a DRAIN that only a queue left over by that send brings (then EPOLLOUT is armed, and writes
      // after it see the queue and its back-pressure as usual); a batch holds back at most what its reads produced.
      for (int i = 0; i < cnt; i++) Enqueue(s, static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
      if (!s->deferred) {
        s->deferred = true;
        st->deferredIds.push_back(s->id);
      }
      return 0;
    }
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

  // A failure found in a call from JS: no event (the batch's array is not being filled), -errno to the caller, which
  // reads tlsError(id) for an EPROTO.
  static int64_t FailNow(LoopState* st, Sock* s, int err) {
    s->dead = true;
    s->err = err;
    Rearm(st, s);
    return -err;
  }

  // Send() on a TLS socket: encrypted now into the queue (one SSL_write for the caller's buffer, or for the chunks of a
  // writev gathered first, so small chunks do not become small records), which then goes out as a plain queue does.
  // Before the handshake is done the plaintext waits in `pre`.
  static int64_t SendTls(LoopState* st, Sock* s, struct iovec* iov, int cnt, size_t total) {
    if (s->connecting || s->tlsHandshaking) {
      for (int i = 0; i < cnt; i++) s->pre.insert(s->pre.end(), static_cast<char*>(iov[i].iov_base), static_cast<char*>(iov[i].iov_base) + iov[i].iov_len);
      return static_cast<int64_t>(s->queued() + s->pre.size());
    }
    if (total == 0) return static_cast<int64_t>(s->queued());
    int err = 0;
    int32_t op = 0;
    bool waiting = s->queued() > 0;  // EPOLLOUT is armed: the new records join the queue
    const char* p = static_cast<const char*>(iov[0].iov_base);
    if (cnt > 1) {
      std::vector<char>& g = st->gather;
      g.clear();
      for (int i = 0; i < cnt; i++) g.insert(g.end(), static_cast<char*>(iov[i].iov_base), static_cast<char*>(iov[i].iov_base) + iov[i].iov_len);
      p = g.data();
    }
    if (!TlsEncrypt(s, p, total, &err, &op)) return FailNow(st, s, err);
    if (!waiting) {
      Flush(s, &err);
      if (err) return FailNow(st, s, err);
    }
    int e = Rearm(st, s);
    if (e) return -e;
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
      // records OpenSSL read before the pause: epoll will not report them
      if (!paused && s->ssl && !s->tlsHandshaking && !s->dead && SSL_has_pending(s->ssl)) MarkTlsPending(st_, s);
    }
    return info.Env().Undefined();
  }

  // shutdown(id) -> 1 done now, 0 after the queue is flushed (SHUTDOWN event), or -errno
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "shutdown");
    if (!s) return Napi::Number::New(env, -EBADF);
    SendDeferred(st_, s);
    if (s->shutDone) return Napi::Number::New(env, 1);
    if (s->dead) return Napi::Number::New(env, -(s->err ? s->err : EPIPE));
    if (s->connecting || s->queued() > 0 || s->tlsHandshaking) {
      s->shutPending = true;  // after the handshake (Handshake -> Writable) or the queue (Writable)
      return Napi::Number::New(env, 0);
    }
    return Napi::Number::New(env, ShutNow(s));
  }

  // close_notify (TLS) and FIN now: 1 done, 0 close_notify waits for room (SHUTDOWN event later), or -errno
  int ShutNow(Sock* s) {
    if (s->ssl && !s->tlsClosed) {
      int err = 0;
      int32_t op = 0;
      if (!TlsClose(s, &err, &op)) return static_cast<int>(FailNow(st_, s, err));
      if (!Flush(s, &err)) {
        if (err) return static_cast<int>(FailNow(st_, s, err));
        s->shutPending = true;
        Rearm(st_, s);
        return 0;
      }
    }
    if (shutdown(s->fd, SHUT_WR) && errno != ENOTCONN) return -errno;
    s->shutDone = true;
    return 1;
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
    SendDeferred(st_, s);
    if (s->shutDone) return Napi::Number::New(env, 1);
    if (s->dead) return Napi::Number::New(env, -(s->err ? s->err : EPIPE));
    if (s->connecting || s->queued() > 0 || s->shutPending || s->readEof || s->tlsHandshaking) return Napi::Number::New(env, 0);
    if (s->ssl && SSL_has_pending(s->ssl)) return Napi::Number::New(env, 0);  // records read, not yet handed out
    struct pollfd p = {s->fd, POLLIN | POLLRDHUP, 0};
    int r;
    do r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) return Napi::Number::New(env, -errno);
    if (r > 0 && (p.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR))) return Napi::Number::New(env, 0);
    // (TLS: a close_notify that waits for room is sent from the loop; the FIN follows it)
    int done = ShutNow(s);
    return Napi::Number::New(env, done < 0 ? done : 1);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "close");
    if (s) {
      SendDeferred(st_, s);  // as a write not deferred would have been sent before the close
      Remove(st_, s, true);
    }
    return info.Env().Undefined();
  }

  // reset(id): close with SO_LINGER 0, so the peer gets a RST, not a FIN (the tunnel passes a reset on as a reset:
  // agent/tunnel/splice.ts); what is still queued is dropped. A TLS socket sends no close_notify either.
  Napi::Value Reset(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "reset");
    if (s) {
      SendDeferred(st_, s);
      if (!s->listener) {
        struct linger lg = {1, 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
      }
      Remove(st_, s, true);
    }
    return info.Env().Undefined();
  }

  // release(id) -> fd: out of epoll and forgotten, not closed (handed to node:net). Throws when
  // written bytes are still queued (they would be lost).
  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "release");
    if (!s) ThrowErrno(env, "netio release", EBADF);
    SendDeferred(st_, s);
    if (s->queued() > 0) ThrowErrno(env, "netio release (bytes still queued)", EBUSY);
    if (s->ssl) ThrowErrno(env, "netio release (a TLS connection: its state is in this loop)", EINVAL);
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

  // setDeferWrites(on): LoopState::deferWrites
  Napi::Value SetDeferWrites(const Napi::CallbackInfo& info) {
    if (st_ && !st_->closed) st_->deferWrites = info.Length() > 0 && info[0].ToBoolean().Value();
    return info.Env().Undefined();
  }

  // sockets and listeners open (for tests and stats)
  Napi::Value Count(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), st_ ? static_cast<double>(st_->socks.size()) : 0);
  }

  // startTls(id, ctx: TlsContext, servername: string) -> undefined: TLS on a socket (accepted, or connected / still
  // connecting) before any byte was read or written on it; the handshake runs in the loop, then SECURE (or ERROR with
  // OP_TLS). A server must call it from its ACCEPT handling, before the next wake reads the socket as plain.
  // setSlab(slab: Buffer): TLS plaintext goes into it from offset 0 on (TLSDATA events; the callback's second
  // argument is how much of it is used). The loop lets the previous one go: JS's views keep it alive.
  Napi::Value SetSlab(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Buffer<uint8_t> b = ArgBuffer(info, 0, "setSlab", "slab");
    if (b.Length() < kReadChunk) throw Napi::RangeError::New(env, "netio setSlab: the slab must hold at least 64 KiB");
    if (b.Length() > 0x7fffffff) throw Napi::RangeError::New(env, "netio setSlab: the slab must hold less than 2 GiB (int32 offsets)");
    LoopState* st = Live(info, "setSlab");
    if (st->closed) return env.Undefined();
    st->slabRef.Reset();
    st->slabRef = Napi::Persistent(info[0]);
    st->slab = b.Data();
    st->slabSize = b.Length();
    st->slabUsed = 0;
    return env.Undefined();
  }

  Napi::Value StartTls(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "startTls");
    if (!s) ThrowErrno(env, "netio startTls (no such connection)", EBADF);
    TlsContext* c = info.Length() > 1 ? TlsContext::From(env, info[1]) : nullptr;
    if (!c) throw Napi::TypeError::New(env, "netio startTls: argument 'ctx' must be a TlsContext");
    if (!c->ctx) throw Napi::Error::New(env, "netio startTls: the TlsContext was freed");
    if (st_->slab == nullptr) throw Napi::Error::New(env, "netio startTls: the loop has no slab for TLS reads (setSlab first)");
    std::string servername = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
    if (s->listener) ThrowErrno(env, "netio startTls (a listener)", EINVAL);
    if (s->dead) ThrowErrno(env, "netio startTls", s->err ? s->err : EPIPE);
    if (s->ssl) ThrowErrno(env, "netio startTls (TLS was started already)", EALREADY);
    if (s->queued() > 0 || s->shutPending || s->shutDone || s->readEof)
      ThrowErrno(env, "netio startTls (plain bytes were written, or the connection is ending)", EINVAL);
    ERR_clear_error();
    SSL* ssl = SSL_new(c->ctx);
    BIO* rb = ssl ? BIO_new_socket(s->fd, BIO_NOCLOSE) : nullptr;
    BIO* wb = rb ? BIO_new(QueueBio()) : nullptr;
    if (wb) {
      BIO_set_data(wb, s);
      SSL_set_bio(ssl, rb, wb);  // the SSL owns both from here
    }
    if (!wb || (!servername.empty() && SSL_set_tlsext_host_name(ssl, const_cast<char*>(servername.c_str())) != 1)) {
      std::string why = TlsReason(nullptr);
      if (!wb && rb) BIO_free(rb);
      if (ssl) SSL_free(ssl);
      throw Napi::Error::New(env, "netio startTls: " + why);
    }
    if (c->server) SSL_set_accept_state(ssl);
    else SSL_set_connect_state(ssl);
    s->ssl = ssl;
    s->tlsHandshaking = true;
    s->tlsKick = !c->server;  // a client speaks first: its ClientHello goes at the next wake (or at connect)
    if (!s->connecting) {
      int err = Rearm(st_, s);
      if (err) ThrowErrno(env, "netio startTls (epoll_ctl)", err);
    }
    return env.Undefined();
  }

  // tlsInfo(id) -> { protocol, cipher, alpn, peerCertificates: Buffer[] (DER, the peer's leaf first, then the rest
  // of the chain it presented) } once SECURE came; undefined before
  Napi::Value TlsInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Sock* s = Find(info, "tlsInfo");
    if (!s || !s->ssl || s->tlsHandshaking) return env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    o.Set("protocol", SSL_get_version(s->ssl));
    const SSL_CIPHER* cipher = SSL_get_current_cipher(s->ssl);
    o.Set("cipher", cipher ? SSL_CIPHER_get_name(cipher) : "");
    const unsigned char* a = nullptr;
    unsigned int alen = 0;
    SSL_get0_alpn_selected(s->ssl, &a, &alen);
    o.Set("alpn", std::string(reinterpret_cast<const char*>(a ? a : reinterpret_cast<const unsigned char*>("")), alen));
    Napi::Array certs = Napi::Array::New(env);
    uint32_t k = 0;
    auto add = [&](X509* x) {
      int len = i2d_X509(x, nullptr);
      if (len <= 0) return;
      Napi::Buffer<uint8_t> der = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(len));
      unsigned char* p = der.Data();
      i2d_X509(x, &p);
      certs.Set(k++, der);
    };
    // a client's SSL_get_peer_cert_chain starts with the leaf, a server's does not
    X509* leaf = SSL_get0_peer_certificate(s->ssl);
    if (leaf) add(leaf);
    STACK_OF(X509)* sk = SSL_get_peer_cert_chain(s->ssl);
    for (int i = 0; sk && i < sk_X509_num(sk); i++) {
      X509* x = sk_X509_value(sk, i);
      if (!leaf || X509_cmp(x, leaf) != 0) add(x);
    }
    ERR_clear_error();
    o.Set("peerCertificates", certs);
    return o;
  }

  // tlsError(id) -> OpenSSL's reason for the connection's OP_TLS error ('' if none)
  Napi::Value TlsError(const Napi::CallbackInfo& info) {
    Sock* s = Find(info, "tlsError");
    return Napi::String::New(info.Env(), s ? s->tlsErr : "");
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
  SM_NETIO_CONST(EV_TLSDATA)
  SM_NETIO_CONST(EV_EOF)
  SM_NETIO_CONST(EV_ERROR)
  SM_NETIO_CONST(EV_DRAIN)
  SM_NETIO_CONST(EV_CONNECT)
  SM_NETIO_CONST(EV_SHUTDOWN)
  SM_NETIO_CONST(EV_SECURE)
  SM_NETIO_CONST(OP_READ)
  SM_NETIO_CONST(OP_WRITE)
  SM_NETIO_CONST(OP_CONNECT)
  SM_NETIO_CONST(OP_ACCEPT)
  SM_NETIO_CONST(OP_SHUTDOWN)
  SM_NETIO_CONST(OP_TLS)
  k.Set("EVENT_INTS", Napi::Number::New(env, kEventInts));
#undef SM_NETIO_CONST
  k.Freeze();
  return k;
}

static void InitNetio(Napi::Env env, Napi::Object exports) {
  exports.Set("NetLoop", NetLoop::Define(env));
  exports.Set("TlsContext", TlsContext::Define(env));
  exports.Set("constants", Constants(env));
  InitFdpass(env, exports);
}

}  // namespace sockmesh

static Napi::Object InitNetioAddon(Napi::Env env, Napi::Object exports) {
  sockmesh::InitNetio(env, exports);
  return exports;
}

NODE_API_MODULE(sockmesh_netio, InitNetioAddon)
