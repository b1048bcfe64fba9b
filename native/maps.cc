// Map operations. Keys and values are raw Buffers encoded by agent/datapath (the ABI codecs);
// here we only check their sizes against the map (the kernel would read past a short buffer).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "sockmesh.h"

namespace sockmesh {

static std::string FdOp(const char* what, int fd) { return std::string(what) + " (fd " + std::to_string(fd) + ")"; }

static struct bpf_map_info MapInfoOf(Napi::Env env, int fd, const char* what) {
  struct bpf_map_info mi;
  memset(&mi, 0, sizeof(mi));
  __u32 len = sizeof(mi);
  int ret = bpf_obj_get_info_by_fd(fd, &mi, &len);
  if (ret) ThrowErrno(env, FdOp(what, fd) + " (map info)", ErrFromRet(ret));
  return mi;
}

static bool IsPerCpu(__u32 type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

// Bytes of a value as seen from user space: per-CPU maps hold one 8-byte aligned slot per possible CPU.
static size_t UserValueSize(Napi::Env env, const struct bpf_map_info& mi) {
  if (!IsPerCpu(mi.type)) return mi.value_size;
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) ThrowErrno(env, "number of possible CPUs", ncpu < 0 ? -ncpu : EINVAL);
  return ((mi.value_size + 7) / 8 * 8) * static_cast<size_t>(ncpu);
}

static void CheckSize(Napi::Env env, const std::string& op, const char* what, size_t got, size_t want) {
  if (got != want)
    ThrowErrno(env, op + ": " + what + " is " + std::to_string(got) + " bytes, map expects " + std::to_string(want), EINVAL);
}

// The map behind fd, for an operation on one key: the operation's name for errors, the map's info, and the key's
// size checked against it.
struct KeyOp {
  std::string op;
  struct bpf_map_info mi;
};
static KeyOp ForKey(Napi::Env env, int fd, const Napi::Buffer<uint8_t>& key, const char* what) {
  KeyOp k{FdOp(what, fd), MapInfoOf(env, fd, what)};
  CheckSize(env, k.op, "key", key.Length(), k.mi.key_size);
  return k;
}

static Napi::Value MapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapInfo", "fd");
  struct bpf_map_info mi = MapInfoOf(env, fd, "map info");
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", mi.id);
  out.Set("name", Napi::String::New(env, mi.name, strnlen(mi.name, sizeof(mi.name))));
  out.Set("type", mi.type);
  out.Set("keySize", mi.key_size);
  out.Set("valueSize", mi.value_size);
  out.Set("maxEntries", mi.max_entries);
  out.Set("flags", mi.map_flags);
  return out;
}

static Napi::Value MapFdById(const Napi::CallbackInfo& info) {
  uint32_t id = ArgUint(info, 0, "mapFdById", "id");
  int fd = bpf_map_get_fd_by_id(id);
  if (fd < 0) ThrowErrno(info.Env(), "open map id " + std::to_string(id), ErrFromRet(fd));
  return Napi::Number::New(info.Env(), fd);
}

static Napi::Value MapCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t type = ArgUint(info, 0, "mapCreate", "type");
  std::string name = ArgString(info, 1, "mapCreate", "name");
  uint32_t key_size = ArgUint(info, 2, "mapCreate", "keySize");
  uint32_t value_size = ArgUint(info, 3, "mapCreate", "valueSize");
  uint32_t max_entries = ArgUint(info, 4, "mapCreate", "maxEntries");
  uint32_t flags = ArgUint(info, 5, "mapCreate", "flags");
  bool has_inner = info.Length() > 6 && !info[6].IsUndefined() && !info[6].IsNull();
  int inner = has_inner ? ArgInt(info, 6, "mapCreate", "innerMapFd") : 0;

  LIBBPF_OPTS(bpf_map_create_opts, opts);
  opts.map_flags = flags;
  if (has_inner) opts.inner_map_fd = inner;
  int fd = bpf_map_create(static_cast<enum bpf_map_type>(type), name.empty() ? nullptr : name.c_str(), key_size,
                          value_size, max_entries, &opts);
  if (fd < 0) ThrowErrno(env, "create map '" + name + "' (type " + std::to_string(type) + ")", ErrFromRet(fd));
  return Napi::Number::New(env, fd);
}

static Napi::Value MapLookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapLookup", "fd");
  Napi::Buffer<uint8_t> key = ArgBuffer(info, 1, "mapLookup", "key");
  auto [op, mi] = ForKey(env, fd, key, "map lookup");
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, UserValueSize(env, mi));
  int ret = bpf_map_lookup_elem(fd, key.Data(), value.Data());
  if (ret) {
    int err = ErrFromRet(ret);
    if (err == ENOENT) return env.Null();
    ThrowErrno(env, op, err);
  }
  return value;
}

static Napi::Value MapUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapUpdate", "fd");
  Napi::Buffer<uint8_t> key = ArgBuffer(info, 1, "mapUpdate", "key");
  Napi::Buffer<uint8_t> value = ArgBuffer(info, 2, "mapUpdate", "value");
  uint32_t flags = info.Length() > 3 && !info[3].IsUndefined() ? ArgUint(info, 3, "mapUpdate", "flags") : 0;
  auto [op, mi] = ForKey(env, fd, key, "map update");
  CheckSize(env, op, "value", value.Length(), UserValueSize(env, mi));
  int ret = bpf_map_update_elem(fd, key.Data(), value.Data(), flags);
  if (ret) ThrowErrno(env, op, ErrFromRet(ret));
  return env.Undefined();
}

static Napi::Value MapDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapDelete", "fd");
  Napi::Buffer<uint8_t> key = ArgBuffer(info, 1, "mapDelete", "key");
  std::string op = ForKey(env, fd, key, "map delete").op;
  int ret = bpf_map_delete_elem(fd, key.Data());
  if (ret) {
    int err = ErrFromRet(ret);
    if (err == ENOENT) return Napi::Boolean::New(env, false);
    ThrowErrno(env, op, err);
  }
  return Napi::Boolean::New(env, true);
}

static bool BatchUnsupported(int err) {
  return err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP || err == 524 /* kernel ENOTSUPP */;
}

static Napi::Value MapUpdateBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapUpdateBatch", "fd");
  Napi::Buffer<uint8_t> keys = ArgBuffer(info, 1, "mapUpdateBatch", "keys");
  Napi::Buffer<uint8_t> values = ArgBuffer(info, 2, "mapUpdateBatch", "values");
  uint32_t count = ArgUint(info, 3, "mapUpdateBatch", "count");
  std::string op = FdOp("map update batch", fd);
  struct bpf_map_info mi = MapInfoOf(env, fd, "map update batch");
  size_t vsize = UserValueSize(env, mi);
  CheckSize(env, op, "keys", keys.Length(), static_cast<size_t>(count) * mi.key_size);
  CheckSize(env, op, "values", values.Length(), static_cast<size_t>(count) * vsize);
  if (count == 0) return env.Undefined();

  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  __u32 done = count;
  int ret = bpf_map_update_batch(fd, keys.Data(), values.Data(), &done, &opts);
  if (ret == 0) return env.Undefined();
  int err = ErrFromRet(ret);
  if (!BatchUnsupported(err)) {
    ThrowErrno(env, op + " at index " + std::to_string(done) + " of " + std::to_string(count), err);
  }
  // The map type (or kernel) has no batch update, or one entry is invalid: go one by one so the
  // failing index is exact. Entries already written are written again (same value, BPF_ANY).
  for (uint32_t i = 0; i < count; i++) {
    ret = bpf_map_update_elem(fd, keys.Data() + static_cast<size_t>(i) * mi.key_size,
                              values.Data() + static_cast<size_t>(i) * vsize, BPF_ANY);
    if (ret) ThrowErrno(env, op + " at index " + std::to_string(i) + " of " + std::to_string(count), ErrFromRet(ret));
  }
  return env.Undefined();
}

// Walks the keys with get_next_key. Entries may be deleted meanwhile: a hash map then restarts
// from its first key, so keys already seen are skipped, and the walk is bounded in steps.
static void WalkMap(Napi::Env env, int fd, const char* what, bool with_values, std::vector<std::string>* keys,
                    std::vector<std::string>* values) {
  std::string op = FdOp(what, fd);
  struct bpf_map_info mi = MapInfoOf(env, fd, what);
  size_t vsize = with_values ? UserValueSize(env, mi) : 0;
  std::unordered_set<std::string> seen;
  std::string cur(mi.key_size, '\0'), next(mi.key_size, '\0'), value(vsize, '\0');
  bool first = true;
  const uint64_t max_steps = 4ull * mi.max_entries + 1024;
  for (uint64_t step = 0; step < max_steps; step++) {
    int ret = bpf_map_get_next_key(fd, first ? nullptr : cur.data(), next.data());
    if (ret) {
      int err = ErrFromRet(ret);
      if (err == ENOENT) return;  // end of the map
      ThrowErrno(env, op, err);
    }
    first = false;
    cur.swap(next);
    if (!seen.insert(cur).second) continue;
    if (with_values) {
      ret = bpf_map_lookup_elem(fd, cur.data(), value.data());
      if (ret) {
        int err = ErrFromRet(ret);
        if (err == ENOENT) continue;  // deleted since get_next_key
        ThrowErrno(env, op + " (lookup)", err);
      }
      values->push_back(value);
    }
    keys->push_back(cur);
  }
  ThrowErrno(env, op + ": map kept changing, gave up after " + std::to_string(max_steps) + " steps", EAGAIN);
}

static Napi::Array ToBuffers(Napi::Env env, const std::vector<std::string>& items) {
  Napi::Array out = Napi::Array::New(env, items.size());
  for (size_t i = 0; i < items.size(); i++) {
    out.Set(static_cast<uint32_t>(i),
            Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(items[i].data()), items[i].size()));
  }
  return out;
}

static Napi::Value MapDump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapDump", "fd");
  std::vector<std::string> keys, values;
  WalkMap(env, fd, "map dump", true, &keys, &values);
  Napi::Object out = Napi::Object::New(env);
  out.Set("keys", ToBuffers(env, keys));
  out.Set("values", ToBuffers(env, values));
  return out;
}

static Napi::Value MapKeys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "mapKeys", "fd");
  std::vector<std::string> keys;
  WalkMap(env, fd, "map keys", false, &keys, nullptr);
  return ToBuffers(env, keys);
}

// A map opened for one hot operation: the proxy takes the original destination of every accepted connection out of
// sm_l7_peers with exactly one syscall. The generic functions above ask the kernel for the map's sizes on every call
// (to refuse a short buffer); a handle asks once, on its own dup()ed fd, so the sizes it checks against can never
// belong to another map that reused the fd number. Values are written into a caller's buffer: no allocation.
class MapHandle : public Napi::ObjectWrap<MapHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "MapHandle", {
      InstanceMethod<&MapHandle::LookupAndDelete>("lookupAndDelete"),
      InstanceMethod<&MapHandle::Close>("close"),
      InstanceAccessor<&MapHandle::Fallback>("fallback"),
    });
  }

  explicit MapHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MapHandle>(info) {
    Napi::Env env = info.Env();
    int src = ArgInt(info, 0, "mapHandle", "fd");
    int fd = fcntl(src, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) ThrowErrno(env, FdOp("map handle (dup)", src), errno);
    struct bpf_map_info mi;
    try {
      mi = MapInfoOf(env, fd, "map handle");
      if (IsPerCpu(mi.type)) ThrowErrno(env, FdOp("map handle", src) + ": per-CPU maps are not supported", EINVAL);
    } catch (...) {
      close(fd);  // the destructor does not run for an object whose constructor threw
      throw;
    }
    fd_ = fd;
    key_size_ = mi.key_size;
    value_size_ = mi.value_size;
    op_ = std::string("map lookup-and-delete (") + std::string(mi.name, strnlen(mi.name, sizeof(mi.name))) + ")";
  }

  ~MapHandle() override {
    if (fd_ >= 0) close(fd_);
  }

 private:
  // lookupAndDelete(key, value): true with value filled, false when the key is absent.
  Napi::Value LookupAndDelete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) ThrowErrno(env, op_ + ": handle closed", EBADF);
    Napi::Buffer<uint8_t> key = ArgBuffer(info, 0, "lookupAndDelete", "key");
    Napi::Buffer<uint8_t> value = ArgBuffer(info, 1, "lookupAndDelete", "value");
    CheckSize(env, op_, "key", key.Length(), key_size_);
    CheckSize(env, op_, "value", value.Length(), value_size_);
    if (!fallback_) {
      int ret = bpf_map_lookup_and_delete_elem(fd_, key.Data(), value.Data());
      if (ret == 0) return Napi::Boolean::New(env, true);
      int err = ErrFromRet(ret);
      if (err == ENOENT) return Napi::Boolean::New(env, false);
      // Hash maps have BPF_MAP_LOOKUP_AND_DELETE_ELEM since 5.14; before that, two calls.
      if (!BatchUnsupported(err)) ThrowErrno(env, op_, err);
      fallback_ = true;
    }
    int ret = bpf_map_lookup_elem(fd_, key.Data(), value.Data());
    if (ret) {
      int err = ErrFromRet(ret);
      if (err == ENOENT) return Napi::Boolean::New(env, false);
      ThrowErrno(env, op_ + " (lookup)", err);
    }
    ret = bpf_map_delete_elem(fd_, key.Data());
    // ENOENT: someone else took it meanwhile; we still have the value we read.
    if (ret && ErrFromRet(ret) != ENOENT) ThrowErrno(env, op_ + " (delete)", ErrFromRet(ret));
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
  }

  // true once the kernel refused BPF_MAP_LOOKUP_AND_DELETE_ELEM and the handle went to lookup + delete
  Napi::Value Fallback(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), fallback_); }

  int fd_ = -1;
  size_t key_size_ = 0;
  size_t value_size_ = 0;
  bool fallback_ = false;
  std::string op_;
};

static Napi::Value NumPossibleCpus(const Napi::CallbackInfo& info) {
  int n = libbpf_num_possible_cpus();
  if (n <= 0) ThrowErrno(info.Env(), "number of possible CPUs", n < 0 ? -n : EINVAL);
  return Napi::Number::New(info.Env(), n);
}

void InitMaps(Napi::Env env, Napi::Object exports) {
  exports.Set("mapInfo", Napi::Function::New(env, MapInfo, "mapInfo"));
  exports.Set("mapFdById", Napi::Function::New(env, MapFdById, "mapFdById"));
  exports.Set("mapCreate", Napi::Function::New(env, MapCreate, "mapCreate"));
  exports.Set("mapLookup", Napi::Function::New(env, MapLookup, "mapLookup"));
  exports.Set("mapUpdate", Napi::Function::New(env, MapUpdate, "mapUpdate"));
  exports.Set("mapDelete", Napi::Function::New(env, MapDelete, "mapDelete"));
  exports.Set("mapUpdateBatch", Napi::Function::New(env, MapUpdateBatch, "mapUpdateBatch"));
  exports.Set("mapDump", Napi::Function::New(env, MapDump, "mapDump"));
  exports.Set("mapKeys", Napi::Function::New(env, MapKeys, "mapKeys"));
  exports.Set("MapHandle", MapHandle::Define(env));
  exports.Set("numPossibleCpus", Napi::Function::New(env, NumPossibleCpus, "numPossibleCpus"));
}

}  // namespace sockmesh
