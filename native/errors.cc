// Kernel errors as JS exceptions: "<op>: <ERRNO_NAME>" plus code/errno/op properties.
#include <cerrno>
#include <cstring>

#include "sockmesh.h"

namespace sockmesh {

std::string ErrnoName(int err) {
  // Kernel-internal codes (include/linux/errno.h) that some BPF paths return to user space.
  switch (err) {
    case 512: return "ERESTARTSYS";
    case 524: return "ENOTSUPP";
    default: break;
  }
  const char* name = strerrorname_np(err);
  return name ? name : "E" + std::to_string(err);
}

void ThrowErrno(Napi::Env env, const std::string& op, int err, const std::string& detail) {
  std::string code = ErrnoName(err);
  std::string message = op + ": " + code;
  if (!detail.empty()) message += "\n" + detail;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("op", Napi::String::New(env, op));
  throw error;
}

static void TypeError(const Napi::CallbackInfo& info, const char* fn, const char* name, const char* what) {
  throw Napi::TypeError::New(info.Env(), std::string(fn) + ": argument '" + name + "' must be " + what);
}

int32_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) TypeError(info, fn, name, "a number");
  return info[i].As<Napi::Number>().Int32Value();
}

uint32_t ArgUint(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) TypeError(info, fn, name, "a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v < 0 || v > 4294967295.0 || v != static_cast<double>(static_cast<uint32_t>(v)))
    TypeError(info, fn, name, "an unsigned 32-bit integer");
  return static_cast<uint32_t>(v);
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) TypeError(info, fn, name, "a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  if (info.Length() <= i || !info[i].IsBuffer()) TypeError(info, fn, name, "a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

}  // namespace sockmesh
