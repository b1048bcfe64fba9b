// Finding the project's built artefacts: the root (from agent/ under ts and from dist/agent/ compiled) and the N-API
// addons node-gyp builds from binding.gyp into build/Release/. Each addon has its own typed face next to its only
// user: sockmesh.node (libbpf: load, attach, maps) in agent/datapath/native.ts, sockmesh_netio.node (the proxy's
// epoll loop, no libbpf) in agent/proxy/netio.ts. A leaf: imports nothing of the agent's.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Project root: works from agent/ (ts) and dist/agent/ (compiled), at any depth below them. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('sockmesh: cannot find the project root (package.json next to binding.gyp)');
}

/** build/Release/<name>.node: a target of binding.gyp. */
export function addonPath(name: string): string {
  return resolve(projectRoot(), 'build', 'Release', `${name}.node`);
}

/**
 * Load build/Release/<name>.node (node's require caches it). Throws a clear error when it was not built; `needs`
 * names what building it takes, e.g. 'clang, libbpf-dev, libelf-dev'. The caller types the result: its face.
 */
export function loadAddon<T>(name: string, needs: string): T {
  const path = addonPath(name);
  if (!existsSync(path)) throw new Error(`sockmesh: native addon missing at ${path}: run 'npm ci' (needs ${needs})`);
  return createRequire(import.meta.url)(path) as T;
}
