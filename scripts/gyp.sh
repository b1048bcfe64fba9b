#!/usr/bin/env bash
# Build the N-API addons (build/Release/sockmesh.node, sockmesh_netio.node) and the BPF objects from binding.gyp
# without any network:
# node-gyp must find Node's headers locally, so point it at them.
set -euo pipefail
if [ -z "${npm_config_nodedir:-}" ]; then
  for prefix in /usr /usr/local "$(dirname "$(dirname "$(command -v node)")")"; do
    if [ -f "$prefix/include/node/node.h" ]; then export npm_config_nodedir="$prefix"; break; fi
  done
fi
if [ -z "${npm_config_nodedir:-}" ]; then
  echo "sockmesh: Node.js headers (include/node/node.h) not found; install them (Debian: libnode-dev) or set npm_config_nodedir" >&2
  exit 1
fi
# Run from npm (npm ci) or by hand: prefer the project's node-gyp, then npm's bundled one, then PATH.
here="$(cd "$(dirname "$0")/.." && pwd)"
gyp="$here/node_modules/.bin/node-gyp"
[ -x "$gyp" ] || gyp="$(command -v node-gyp || true)"
if [ -z "$gyp" ]; then echo "sockmesh: node-gyp not found (run npm ci)" >&2; exit 1; fi
cd "$here"
exec "$gyp" rebuild --nodedir="$npm_config_nodedir" "$@"
