// Attachments (cgroup bpf_links pinned in bpffs, sk_msg on a SOCKHASH) and generic fd/pin/info calls.
#include <bpf/bpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sockmesh.h"

namespace sockmesh {

static bool CgroupAttachType(const std::string& name, enum bpf_attach_type* out) {
  static const struct { const char* name; enum bpf_attach_type type; } kTypes[] = {
    {"cgroup/connect4", BPF_CGROUP_INET4_CONNECT},
    {"cgroup/connect6", BPF_CGROUP_INET6_CONNECT},
    {"cgroup/sendmsg4", BPF_CGROUP_UDP4_SENDMSG},
    {"cgroup/sendmsg6", BPF_CGROUP_UDP6_SENDMSG},
    {"cgroup/recvmsg4", BPF_CGROUP_UDP4_RECVMSG},
    {"cgroup/recvmsg6", BPF_CGROUP_UDP6_RECVMSG},
    {"cgroup/getpeername4", BPF_CGROUP_INET4_GETPEERNAME},
    {"cgroup/getpeername6", BPF_CGROUP_INET6_GETPEERNAME},
    {"sockops", BPF_CGROUP_SOCK_OPS},
    {"cgroup_skb/ingress", BPF_CGROUP_INET_INGRESS},
  };
  for (const auto& t : kTypes) {
    if (name == t.name) { *out = t.type; return true; }
  }
  return false;
}

// Closes an fd when the scope ends, also when a JS exception is thrown.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() { if (fd >= 0) close(fd); }
  int release() { int f = fd; fd = -1; return f; }
};

static Napi::Value AttachCgroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int prog_fd = ArgInt(info, 0, "attachCgroup", "progFd");
  std::string type_name = ArgString(info, 1, "attachCgroup", "attachType");
  std::string cgroup = ArgString(info, 2, "attachCgroup", "cgroupPath");
  std::string pin = ArgString(info, 3, "attachCgroup", "linkPin");
  std::string op = "attach " + type_name + " to " + cgroup;

  enum bpf_attach_type type;
  if (!CgroupAttachType(type_name, &type)) ThrowErrno(env, op + " (unknown attach type)", EINVAL);
  Fd cg(open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (cg.fd < 0) ThrowErrno(env, op + " (open cgroup)", errno);
  int link = bpf_link_create(prog_fd, cg.fd, type, nullptr);
  if (link < 0) ThrowErrno(env, op, ErrFromRet(link));
  Fd link_fd(link);
  // Without its pin the link would detach when this fd closes: pinning is part of attaching.
  int ret = bpf_obj_pin(link, pin.c_str());
  if (ret) ThrowErrno(env, op + " (pin link at " + pin + ")", ErrFromRet(ret));
  return Napi::Number::New(env, link_fd.release());
}

static Napi::Value UpdateLink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string pin = ArgString(info, 0, "updateLink", "linkPin");
  int prog_fd = ArgInt(info, 1, "updateLink", "progFd");
  Fd link(bpf_obj_get(pin.c_str()));
  if (link.fd < 0) ThrowErrno(env, "update link " + pin + " (open pin)", ErrFromRet(link.fd));
  int ret = bpf_link_update(link.fd, prog_fd, nullptr);
  if (ret) ThrowErrno(env, "update link " + pin, ErrFromRet(ret));
  return env.Undefined();
}

static Napi::Value DetachLink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string pin = ArgString(info, 0, "detachLink", "linkPin");
  Fd link(bpf_obj_get(pin.c_str()));
  if (link.fd < 0) {
    int err = ErrFromRet(link.fd);
    if (err == ENOENT) return Napi::Boolean::New(env, false);
    ThrowErrno(env, "detach link " + pin + " (open pin)", err);
  }
  int ret = bpf_link_detach(link.fd);
  if (ret) ThrowErrno(env, "detach link " + pin, ErrFromRet(ret));
  if (unlink(pin.c_str()) && errno != ENOENT) ThrowErrno(env, "detach link " + pin + " (remove pin)", errno);
  return Napi::Boolean::New(env, true);
}

static Napi::Value LinkInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string pin = ArgString(info, 0, "linkInfo", "linkPin");
  Fd link(bpf_obj_get(pin.c_str()));
  if (link.fd < 0) ThrowErrno(env, "link info " + pin + " (open pin)", ErrFromRet(link.fd));
  struct bpf_link_info li;
  memset(&li, 0, sizeof(li));
  __u32 len = sizeof(li);
  int ret = bpf_obj_get_info_by_fd(link.fd, &li, &len);
  if (ret) ThrowErrno(env, "link info " + pin, ErrFromRet(ret));
  bool cgroup = li.type == BPF_LINK_TYPE_CGROUP;
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", li.id);
  out.Set("progId", li.prog_id);
  out.Set("type", li.type);
  out.Set("attachType", cgroup ? li.cgroup.attach_type : 0);
  out.Set("cgroupId", Napi::Number::New(env, cgroup ? static_cast<double>(li.cgroup.cgroup_id) : 0));
  return out;
}

static Napi::Value AttachSkMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int prog_fd = ArgInt(info, 0, "attachSkMsg", "progFd");
  int map_fd = ArgInt(info, 1, "attachSkMsg", "mapFd");
  int ret = bpf_prog_attach(prog_fd, map_fd, BPF_SK_MSG_VERDICT, 0);
  if (ret) ThrowErrno(env, "attach sk_msg (prog fd " + std::to_string(prog_fd) + ") to map fd " + std::to_string(map_fd), ErrFromRet(ret));
  return env.Undefined();
}

static Napi::Value DetachSkMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int prog_fd = ArgInt(info, 0, "detachSkMsg", "progFd");
  int map_fd = ArgInt(info, 1, "detachSkMsg", "mapFd");
  int ret = bpf_prog_detach2(prog_fd, map_fd, BPF_SK_MSG_VERDICT);
  if (ret) ThrowErrno(env, "detach sk_msg (prog fd " + std::to_string(prog_fd) + ") from map fd " + std::to_string(map_fd), ErrFromRet(ret));
  return env.Undefined();
}

static Napi::Value ObjGet(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "objGet", "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) ThrowErrno(info.Env(), "open pin " + path, ErrFromRet(fd));
  return Napi::Number::New(info.Env(), fd);
}

static Napi::Value ObjPin(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "objPin", "fd");
  std::string path = ArgString(info, 1, "objPin", "path");
  int ret = bpf_obj_pin(fd, path.c_str());
  if (ret) ThrowErrno(info.Env(), "pin fd " + std::to_string(fd) + " at " + path, ErrFromRet(ret));
  return info.Env().Undefined();
}

static Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "close", "fd");
  if (close(fd)) ThrowErrno(info.Env(), "close fd " + std::to_string(fd), errno);
  return info.Env().Undefined();
}

static Napi::Value ProgInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "progInfo", "fd");
  struct bpf_prog_info pi;
  memset(&pi, 0, sizeof(pi));
  __u32 len = sizeof(pi);
  int ret = bpf_obj_get_info_by_fd(fd, &pi, &len);
  if (ret) ThrowErrno(env, "prog info (fd " + std::to_string(fd) + ")", ErrFromRet(ret));
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", pi.id);
  out.Set("name", Napi::String::New(env, pi.name, strnlen(pi.name, sizeof(pi.name))));
  out.Set("type", pi.type);
  return out;
}

void InitLinks(Napi::Env env, Napi::Object exports) {
  exports.Set("attachCgroup", Napi::Function::New(env, AttachCgroup, "attachCgroup"));
  exports.Set("updateLink", Napi::Function::New(env, UpdateLink, "updateLink"));
  exports.Set("detachLink", Napi::Function::New(env, DetachLink, "detachLink"));
  exports.Set("linkInfo", Napi::Function::New(env, LinkInfo, "linkInfo"));
  exports.Set("attachSkMsg", Napi::Function::New(env, AttachSkMsg, "attachSkMsg"));
  exports.Set("detachSkMsg", Napi::Function::New(env, DetachSkMsg, "detachSkMsg"));
  exports.Set("objGet", Napi::Function::New(env, ObjGet, "objGet"));
  exports.Set("objPin", Napi::Function::New(env, ObjPin, "objPin"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("progInfo", Napi::Function::New(env, ProgInfo, "progInfo"));
}

}  // namespace sockmesh
