// probe(): what this kernel supports, asked through libbpf's probes (each loads a tiny program
// or creates a tiny map). A missing privilege throws, because every answer would be "no".
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sockmesh.h"

namespace sockmesh {

static bool Answer(Napi::Env env, const std::string& what, int ret) {
  if (ret == 1) return true;
  if (ret == 0) return false;
  if (-ret == EPERM) ThrowErrno(env, "probe " + what, -ret);
  return false;  // any other error from a probe means the feature cannot be used
}

// Helper probe. libbpf 1.1's libbpf_probe_bpf_helper() looks for "invalid func " / "unknown func "
// in the verifier log, but kernels since 6.14 say "program of this type cannot use helper ...",
// so on this kernel it answered "supported" for every helper and program type (e.g. msg_redirect_hash
// in cgroup_sock_addr). Same probe program as libbpf (call the helper, exit), all three messages.
static int ProbeHelper(enum bpf_prog_type type, enum bpf_func_id id) {
  struct bpf_insn insns[2];
  memset(insns, 0, sizeof(insns));
  insns[0].code = BPF_JMP | BPF_CALL;
  insns[0].imm = id;
  insns[1].code = BPF_JMP | BPF_EXIT;
  char log[4096];
  log[0] = '\0';
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  opts.log_buf = log;
  opts.log_size = sizeof(log);
  opts.log_level = 1;
  if (type == BPF_PROG_TYPE_CGROUP_SOCK_ADDR) opts.expected_attach_type = BPF_CGROUP_INET4_CONNECT;
  int fd = bpf_prog_load(type, nullptr, "GPL", insns, 2, &opts);
  if (fd >= 0) {
    close(fd);
    return 1;
  }
  if (fd == -EPERM) return fd;  // no privilege (EACCES is the verifier rejecting arguments)
  if (strstr(log, "invalid func ") || strstr(log, "unknown func ") || strstr(log, "program of this type cannot use helper "))
    return 0;
  // Any other verifier complaint (argument types, return range) means the helper was accepted.
  return log[0] ? 1 : fd;
}

static Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static const struct { const char* name; enum bpf_prog_type type; } kProgs[] = {
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS},
    {"sk_msg", BPF_PROG_TYPE_SK_MSG},
  };
  static const struct { const char* name; enum bpf_map_type type; } kMaps[] = {
    {"hash", BPF_MAP_TYPE_HASH},
    {"array", BPF_MAP_TYPE_ARRAY},
    {"lru_hash", BPF_MAP_TYPE_LRU_HASH},
    {"percpu_hash", BPF_MAP_TYPE_PERCPU_HASH},
    {"percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY},
    {"sockhash", BPF_MAP_TYPE_SOCKHASH},
    {"hash_of_maps", BPF_MAP_TYPE_HASH_OF_MAPS},
    {"ringbuf", BPF_MAP_TYPE_RINGBUF},
  };
  static const struct { const char* name; enum bpf_func_id id; } kHelpers[] = {
    {"get_socket_cookie", BPF_FUNC_get_socket_cookie},
    {"get_netns_cookie", BPF_FUNC_get_netns_cookie},
    {"msg_redirect_hash", BPF_FUNC_msg_redirect_hash},
    {"sock_hash_update", BPF_FUNC_sock_hash_update},
    {"ringbuf_output", BPF_FUNC_ringbuf_output},
    {"ktime_get_ns", BPF_FUNC_ktime_get_ns},
    {"get_current_cgroup_id", BPF_FUNC_get_current_cgroup_id},
  };

  Napi::Object progs = Napi::Object::New(env);
  for (const auto& p : kProgs) {
    progs.Set(p.name, Answer(env, std::string("prog type ") + p.name, libbpf_probe_bpf_prog_type(p.type, nullptr)));
  }
  Napi::Object maps = Napi::Object::New(env);
  for (const auto& m : kMaps) {
    maps.Set(m.name, Answer(env, std::string("map type ") + m.name, libbpf_probe_bpf_map_type(m.type, nullptr)));
  }
  // Helper availability depends on the program type: every helper is asked of every program
  // type we use, named "<prog type>:<helper>" (e.g. "sock_ops:get_netns_cookie").
  Napi::Object helpers = Napi::Object::New(env);
  for (const auto& p : kProgs) {
    for (const auto& h : kHelpers) {
      std::string name = std::string(p.name) + ":" + h.name;
      helpers.Set(name, Answer(env, "helper " + name, ProbeHelper(p.type, h.id)));
    }
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("progTypes", progs);
  out.Set("mapTypes", maps);
  out.Set("helpers", helpers);
  return out;
}

void InitProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
}

}  // namespace sockmesh
