// abiLayout() / abiConstants(): the kernel ABI as the C++ compiler sees bpf/include/sockmesh_abi.h.
// The struct, field and constant names come from sockmesh_abi_tables.inc, generated from the same
// header at build time (native/gen-abi.mjs); sizes, offsets and values are computed here.
#include <cstddef>

#include "sockmesh.h"
#include "sockmesh_abi.h"

namespace sockmesh {

static Napi::Value AbiLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Object offsets;
#define SM_STRUCT_BEGIN(s) offsets = Napi::Object::New(env);
#define SM_FIELD(s, f) offsets.Set(#f, Napi::Number::New(env, offsetof(struct s, f)));
#define SM_STRUCT_END(s)                                         \
  {                                                              \
    Napi::Object layout = Napi::Object::New(env);                \
    layout.Set("size", Napi::Number::New(env, sizeof(struct s))); \
    layout.Set("offsets", offsets);                              \
    out.Set(#s, layout);                                         \
  }
#define SM_CONST(c)
#include "sockmesh_abi_tables.inc"
#undef SM_STRUCT_BEGIN
#undef SM_FIELD
#undef SM_STRUCT_END
#undef SM_CONST
  return out;
}

static Napi::Value AbiConstants(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
#define SM_STRUCT_BEGIN(s)
#define SM_FIELD(s, f)
#define SM_STRUCT_END(s)
#define SM_CONST(c) out.Set(#c, Napi::Number::New(env, static_cast<double>(c)));
#include "sockmesh_abi_tables.inc"
#undef SM_STRUCT_BEGIN
#undef SM_FIELD
#undef SM_STRUCT_END
#undef SM_CONST
  return out;
}

void InitAbi(Napi::Env env, Napi::Object exports) {
  exports.Set("abiLayout", Napi::Function::New(env, AbiLayout, "abiLayout"));
  exports.Set("abiConstants", Napi::Function::New(env, AbiConstants, "abiConstants"));
}

}  // namespace sockmesh
