// Shared declarations of the sockmesh addons (sockmesh.node: libbpf; sockmesh_netio.node: netio.cc, no libbpf; both
// link errors.cc, nothing here needs libbpf). The C++ layer is a thin, boring translation of
// libbpf / syscalls to JavaScript: argument unpacking, one kernel call, errors as KernelError.
// Every decision (what to attach, when to retry, what a value means) is made in TypeScript.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace sockmesh {

// Throws a JS Error "<op>: <ERRNO_NAME>" with properties code (errno name), errno (positive) and op.
// `detail` (e.g. a libbpf log tail) is appended to the message after a newline when not empty.
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& op, int err, const std::string& detail = "");

// errno name ("EPERM"), including kernel-internal codes that leak to user space (ENOTSUPP 524).
std::string ErrnoName(int err);

// libbpf 1.x returns -errno from low-level calls and also sets errno; take whichever is set.
inline int ErrFromRet(int ret) { return ret < 0 ? -ret : (errno ? errno : EIO); }

// Argument helpers: throw a TypeError naming the function and the argument.
int32_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
uint32_t ArgUint(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name);

// close() of a handle over native state that also registered `cleanup` (which frees it) as an environment cleanup
// hook: idempotent, and the hook is taken back so that it cannot run a second time at teardown.
template <typename State>
void CloseOnce(napi_env env, State*& st, void (*cleanup)(void*)) {
  if (!st) return;
  napi_remove_env_cleanup_hook(env, cleanup, st);
  cleanup(st);
  st = nullptr;
}

// A socket made in the network namespace at `netns` (a /proc/<pid>/ns/net or /run/netns path; '' = the caller's):
// its fd, or -errno.
int SocketInNetns(const std::string& netns, int domain, int type, int protocol);

// Registration of each concern's functions on sockmesh.node's exports.
void InitObject(Napi::Env env, Napi::Object exports);
void InitLinks(Napi::Env env, Napi::Object exports);
void InitMaps(Napi::Env env, Napi::Object exports);
void InitRingbuf(Napi::Env env, Napi::Object exports);
void InitProbe(Napi::Env env, Napi::Object exports);
void InitAbi(Napi::Env env, Napi::Object exports);
void InitSockets(Napi::Env env, Napi::Object exports);
void InitDiag(Napi::Env env, Napi::Object exports);

}  // namespace sockmesh
