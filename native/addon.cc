// Module entry point: each concern registers its own functions.
#include "sockmesh.h"

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  sockmesh::InitObject(env, exports);
  sockmesh::InitLinks(env, exports);
  sockmesh::InitMaps(env, exports);
  sockmesh::InitRingbuf(env, exports);
  sockmesh::InitProbe(env, exports);
  sockmesh::InitAbi(env, exports);
  sockmesh::InitSockets(env, exports);
  sockmesh::InitDiag(env, exports);
  sockmesh::InitNetio(env, exports);
  return exports;
}

NODE_API_MODULE(sockmesh, InitAddon)
