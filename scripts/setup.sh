#!/usr/bin/env bash
# Make a fresh Debian/Ubuntu machine ready: system packages, then npm ci (which builds the addon, the BPF objects and
# the TypeScript). Quick no-op when everything is already there, so `npm start` and `npm test` can always call it.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool pkg-config make g++ iproute2 sockperf iperf3 iptables openssl curl wrk haproxy nginx redis-tools nghttp2-client python3 python3-grpcio"
# issue 12: scripts/image.sh builds the OCI image with these; test/kernel/image.test.ts runs it with podman (runc where
# crun refuses a hybrid cgroup host).
PKGS="$PKGS debootstrap buildah podman runc"
# issue 12: the Kubernetes stand-in's fidelity tests (test/unit/kubeapi-fidelity.test.ts) drive it with python3-kubernetes.
PKGS="$PKGS python3-kubernetes"
# issue 13: the HBONE interop test (test/kernel/tunnel.test.ts) is python3-h2 over python's ssl, an independent client.
PKGS="$PKGS python3-h2"
# Debian's own nodejs package ships its headers (needed by node-gyp, offline) separately.
if [ "$(command -v node)" = /usr/bin/node ] && [ ! -f /usr/include/node/node.h ] && dpkg-query -W nodejs >/dev/null 2>&1; then
  PKGS="$PKGS libnode-dev"
fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then echo "sockmesh: missing packages:$missing (run as root, or apt-get install them)" >&2; exit 1; fi
  echo "sockmesh: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # bpftool is its own package on Debian 12 / Ubuntu 24.04; older Ubuntus ship it in linux-tools.
  apt-get install -y -qq $missing >/dev/null || apt-get install -y -qq ${missing/bpftool/linux-tools-common} >/dev/null
fi
if [ ! -f build/Release/sockmesh.node ] || [ ! -f build/Release/sockmesh_netio.node ] || [ ! -f dist/agent/main.js ] || [ ! -d node_modules ] || \
   [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
