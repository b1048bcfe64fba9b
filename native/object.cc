// loadObject(): open + load an ELF BPF object with libbpf, pinning/reusing maps under pinRoot.
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>

#include "sockmesh.h"

namespace sockmesh {

// libbpf reports everything (including the verifier log) through one global print callback.
// While an object loads we collect its output here, so a failure can carry the log tail.
static std::string g_libbpf_log;
static constexpr size_t kLogKeep = 64 * 1024;  // bound memory while loading
static constexpr size_t kLogTail = 4 * 1024;   // what goes into the error message

static int CollectPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  // libbpf prints a whole verifier log in one call: size the message first, never cut it.
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return n;
  std::string text(static_cast<size_t>(n) + 1, '\0');
  vsnprintf(text.data(), text.size(), fmt, args);
  text.resize(static_cast<size_t>(n));
  g_libbpf_log += text;
  if (g_libbpf_log.size() > kLogKeep) g_libbpf_log.erase(0, g_libbpf_log.size() - kLogKeep / 2);
  return n;
}

static std::string LogTail() {
  if (g_libbpf_log.size() <= kLogTail) return g_libbpf_log;
  return "..." + g_libbpf_log.substr(g_libbpf_log.size() - kLogTail);
}

// Restores the previous print callback however the load ends.
struct CaptureLibbpfLog {
  libbpf_print_fn_t previous;
  CaptureLibbpfLog() : previous(libbpf_set_print(CollectPrint)) { g_libbpf_log.clear(); }
  ~CaptureLibbpfLog() { libbpf_set_print(previous); }
};

class BpfObjectWrap : public Napi::ObjectWrap<BpfObjectWrap> {
 public:
  static Napi::FunctionReference* constructor;

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BpfObject", {
      InstanceMethod("programs", &BpfObjectWrap::Programs),
      InstanceMethod("maps", &BpfObjectWrap::Maps),
      InstanceMethod("progFd", &BpfObjectWrap::ProgFd),
      InstanceMethod("mapFd", &BpfObjectWrap::MapFd),
      InstanceMethod("progSection", &BpfObjectWrap::ProgSection),
      InstanceMethod("close", &BpfObjectWrap::Close),
    });
  }

  // Constructed only by loadObject(), with (External<bpf_object>, path) of an already loaded
  // object: all failures happen before construction, so a constructor never throws.
  explicit BpfObjectWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfObjectWrap>(info) {
    obj_ = info[0].As<Napi::External<struct bpf_object>>().Data();
    path_ = info[1].As<Napi::String>().Utf8Value();
  }

  ~BpfObjectWrap() override {
    if (obj_) bpf_object__close(obj_);
  }

 private:
  struct bpf_object* Obj(Napi::Env env, const char* what) {
    if (!obj_) ThrowErrno(env, std::string(what) + " on closed BPF object " + path_, EBADF);
    return obj_;
  }

  // The names of the object's programs or maps: next() walks them (libbpf's bpf_object__next_*), name() names one.
  template <typename T, typename Next, typename Name>
  Napi::Value Names(const Napi::CallbackInfo& info, const char* what, Next next, Name name) {
    struct bpf_object* obj = Obj(info.Env(), what);
    Napi::Array out = Napi::Array::New(info.Env());
    uint32_t i = 0;
    for (T* it = next(obj, nullptr); it; it = next(obj, it)) out.Set(i++, name(it));
    return out;
  }

  Napi::Value Programs(const Napi::CallbackInfo& info) {
    return Names<struct bpf_program>(info, "programs()", bpf_object__next_program, bpf_program__name);
  }

  Napi::Value Maps(const Napi::CallbackInfo& info) {
    return Names<struct bpf_map>(info, "maps()", bpf_object__next_map, bpf_map__name);
  }

  struct bpf_program* Prog(const Napi::CallbackInfo& info, const char* fn) {
    std::string name = ArgString(info, 0, fn, "name");
    struct bpf_program* prog = bpf_object__find_program_by_name(Obj(info.Env(), fn), name.c_str());
    if (!prog) ThrowErrno(info.Env(), std::string(fn) + ": no program '" + name + "' in " + path_, ENOENT);
    return prog;
  }

  Napi::Value ProgFd(const Napi::CallbackInfo& info) {
    struct bpf_program* prog = Prog(info, "progFd");
    int fd = bpf_program__fd(prog);
    if (fd < 0) ThrowErrno(info.Env(), std::string("progFd: program '") + bpf_program__name(prog) + "' not loaded", -fd);
    return Napi::Number::New(info.Env(), fd);
  }

  Napi::Value ProgSection(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), bpf_program__section_name(Prog(info, "progSection")));
  }

  Napi::Value MapFd(const Napi::CallbackInfo& info) {
    std::string name = ArgString(info, 0, "mapFd", "name");
    struct bpf_map* map = bpf_object__find_map_by_name(Obj(info.Env(), "mapFd"), name.c_str());
    if (!map) ThrowErrno(info.Env(), "mapFd: no map '" + name + "' in " + path_, ENOENT);
    int fd = bpf_map__fd(map);
    if (fd < 0) ThrowErrno(info.Env(), "mapFd: map '" + name + "' not created", -fd);
    return Napi::Number::New(info.Env(), fd);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (obj_) bpf_object__close(obj_);
    obj_ = nullptr;
    return info.Env().Undefined();
  }

  std::string path_;
  struct bpf_object* obj_ = nullptr;
};

Napi::FunctionReference* BpfObjectWrap::constructor = nullptr;

static Napi::Value LoadObject(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "loadObject", "path");
  std::string pin_root = ArgString(info, 1, "loadObject", "pinRoot");

  CaptureLibbpfLog capture;
  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pin_root.c_str());
  errno = 0;
  struct bpf_object* obj = bpf_object__open_file(path.c_str(), &opts);
  if (!obj) ThrowErrno(env, "open BPF object " + path, errno ? errno : EINVAL, LogTail());
  int ret = bpf_object__load(obj);
  if (ret) {
    int err = ErrFromRet(ret);
    std::string log = LogTail();
    bpf_object__close(obj);
    ThrowErrno(env, "load BPF object " + path + " (pin root " + pin_root + ")", err, log);
  }
  return BpfObjectWrap::constructor->New({Napi::External<struct bpf_object>::New(env, obj), Napi::String::New(env, path)});
}

void InitObject(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = BpfObjectWrap::Define(env);
  // One constructor per process is enough: the addon is loaded once, on the main thread.
  BpfObjectWrap::constructor = new Napi::FunctionReference(Napi::Persistent(cls));
  exports.Set("loadObject", Napi::Function::New(env, LoadObject, "loadObject"));
}

}  // namespace sockmesh
