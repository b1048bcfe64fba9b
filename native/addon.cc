// sockmesh.node's entry point (the BPF addon): each concern registers its own functions.
// The proxy's netio loop is its own addon (netio.cc registers sockmesh_netio.node).
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
  return exports;
}

NODE_API_MODULE(sockmesh, InitAddon)
