// ringbufSubscribe(): a libbpf ring_buffer driven by the Node event loop. uv_poll watches the
// ring buffer's epoll fd; when it is readable we consume on the loop thread and hand each record
// to the JS callback as a Buffer copy. No extra thread, no blocking wait.
#include <bpf/libbpf.h>
#include <uv.h>

#include <cerrno>

#include "sockmesh.h"

namespace sockmesh {

struct RingState {
  Napi::Env env;
  struct ring_buffer* rb = nullptr;
  uv_poll_t poll;
  Napi::FunctionReference callback;  // kept alive until close()
  Napi::ObjectReference resource;    // async resource for MakeCallback
  Napi::Reference<Napi::Value> error;  // exception thrown by the callback, raised after consume
  bool consuming = false;  // inside ring_buffer__consume: freeing must wait
  bool closed = false;
  explicit RingState(Napi::Env e) : env(e) {}
};

static void FreeState(RingState* st) {
  ring_buffer__free(st->rb);
  st->rb = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&st->poll), [](uv_handle_t* h) { delete static_cast<RingState*>(h->data); });
}

// Stops delivery at once; the ring buffer itself is freed when no consume is running, because
// close() may be called from the callback, in the middle of ring_buffer__consume.
static void CloseState(RingState* st) {
  if (st->closed) return;
  st->closed = true;
  uv_poll_stop(&st->poll);
  st->callback.Reset();
  st->resource.Reset();
  if (!st->consuming) FreeState(st);
}

// Runs inside libbpf (C code): no C++ exception may cross it, so an exception from the JS
// callback is kept and consumption stops (returning < 0 ends ring_buffer__consume).
// libbpf advances past the record it was handing over when we return < 0: after close() from
// inside the callback, that one next record is dropped (the rest stay for another reader).
static int OnRecord(void* ctx, void* data, size_t size) {
  RingState* st = static_cast<RingState*>(ctx);
  if (st->closed) return -ECANCELED;
  try {
    Napi::Buffer<uint8_t> record = Napi::Buffer<uint8_t>::Copy(st->env, static_cast<const uint8_t*>(data), size);
    st->callback.MakeCallback(st->resource.Value(), {record});
  } catch (const Napi::Error& e) {
    st->error = Napi::Persistent(e.Value().As<Napi::Value>());
    return -ECANCELED;
  }
  return 0;
}

static void OnReadable(uv_poll_t* handle, int status, int events) {
  RingState* st = static_cast<RingState*>(handle->data);
  if (st->closed) return;
  Napi::HandleScope scope(st->env);
  // Consumes what is there now and returns; the epoll fd is level-triggered, so anything that
  // arrives later (or is left after an exception) makes the poll fire again.
  st->consuming = true;
  int n = ring_buffer__consume(st->rb);
  st->consuming = false;
  if (!st->error.IsEmpty()) {
    // Like an exception thrown in an event listener: it goes to process 'uncaughtException'.
    Napi::Value err = st->error.Value();
    st->error.Reset();
    if (st->closed) FreeState(st);
    napi_fatal_exception(st->env, err);
    return;
  }
  if (st->closed) {
    FreeState(st);
    return;
  }
  if (n < 0 && n != -EINTR) {
    napi_value err = Napi::Error::New(st->env, "ring buffer consume: " + ErrnoName(-n)).Value();
    napi_fatal_exception(st->env, err);
  }
}

// The JS handle returned to the caller; close() is idempotent. Dropping the handle without
// close() keeps the subscription running (like an open socket), since the callback is referenced.
class RingSub : public Napi::ObjectWrap<RingSub> {
 public:
  static Napi::FunctionReference* constructor;
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingBufferSubscription", {InstanceMethod("close", &RingSub::Close)});
  }
  explicit RingSub(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingSub>(info) {
    st_ = info[0].As<Napi::External<RingState>>().Data();
  }

 private:
  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseOnce(info.Env(), st_, Cleanup);
    return info.Env().Undefined();
  }
  RingState* st_ = nullptr;

 public:
  // Environment teardown (e.g. a worker exiting) without close(): stop polling and free.
  static void Cleanup(void* arg) { CloseState(static_cast<RingState*>(arg)); }
};

Napi::FunctionReference* RingSub::constructor = nullptr;

static Napi::Value RingbufSubscribe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int map_fd = ArgInt(info, 0, "ringbufSubscribe", "mapFd");
  if (info.Length() < 2 || !info[1].IsFunction())
    throw Napi::TypeError::New(env, "ringbufSubscribe: argument 'callback' must be a function");
  std::string op = "ring buffer subscribe (map fd " + std::to_string(map_fd) + ")";

  RingState* st = new RingState(env);
  errno = 0;
  st->rb = ring_buffer__new(map_fd, OnRecord, st, nullptr);
  if (!st->rb) {
    int err = errno ? errno : EINVAL;
    delete st;
    ThrowErrno(env, op, err);
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
    ring_buffer__free(st->rb);
    delete st;
    ThrowErrno(env, op + " (no event loop)", EINVAL);
  }
  int rc = uv_poll_init(loop, &st->poll, ring_buffer__epoll_fd(st->rb));
  if (rc) {
    ring_buffer__free(st->rb);
    delete st;
    ThrowErrno(env, op + " (uv_poll_init)", -rc);
  }
  st->poll.data = st;
  st->callback = Napi::Persistent(info[1].As<Napi::Function>());
  st->resource = Napi::Persistent(Napi::Object::New(env));
  rc = uv_poll_start(&st->poll, UV_READABLE, OnReadable);
  if (rc) {
    CloseState(st);
    ThrowErrno(env, op + " (uv_poll_start)", -rc);
  }
  napi_add_env_cleanup_hook(env, RingSub::Cleanup, st);
  return RingSub::constructor->New({Napi::External<RingState>::New(env, st)});
}

void InitRingbuf(Napi::Env env, Napi::Object exports) {
  RingSub::constructor = new Napi::FunctionReference(Napi::Persistent(RingSub::Define(env)));
  exports.Set("ringbufSubscribe", Napi::Function::New(env, RingbufSubscribe, "ringbufSubscribe"));
}

}  // namespace sockmesh
