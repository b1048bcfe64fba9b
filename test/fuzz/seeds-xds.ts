// Writes the xDS targets' seeds (test/fuzz/xds-delta/, xds-sotw/): the responses sockmesh-controlplane sends for the
// README's example configs and a mesh one (nodes, workloads, mTLS, authorization: the sockmesh.mesh.v1 types, first,
// as the agent asks for them; node-1's view, the targets' node), encoded by its own code, as the targets read them
// (each message: a 2-byte length, then the DeltaDiscoveryResponse or DiscoveryResponse bytes). Run again when the
// resources change:
//   node --import ./test/fuzz/register.mjs test/fuzz/seeds-xds.ts
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../agent/model/config.js';
import { MeshSnapshot } from '../../controlplane/mesh.js';
import { encodeDeltaResponse, encodeSotwResponse, serviceResources, type Resource } from '../../controlplane/snapshot.js';
import { TYPE } from '../../xds/envoy.js';
import { MESH_TYPE_URLS } from '../../xds/mesh.js';

const here = new URL('.', import.meta.url).pathname;
const frame = (msgs: Buffer[]) => Buffer.concat(msgs.map((m) => { const h = Buffer.alloc(2); h.writeUInt16BE(m.length); return Buffer.concat([h, m]); }));
for (const cfg of ['readme.yaml', 'l7.yaml', 'mesh.yaml']) {
  const model = parseConfig(readFileSync(join(here, 'config-yaml', cfg), 'utf8'), cfg);
  const workloads = new Map((model.workloads ?? []).map((w) => [w.name, w.cgroups]));
  const byType = new Map<string, Resource[]>();
  for (const svc of model.services) for (const [type, r] of serviceResources(svc, workloads)) (byType.get(type) ?? byType.set(type, []).get(type)!).push(r);
  const mesh = new MeshSnapshot();
  mesh.apply(model);
  for (const url of MESH_TYPE_URLS) {
    const view = mesh.type(url, 'node-1');
    if (view && view.resources.size > 0) byType.set(url, [...view.resources.values()]);
  }
  const order = [...MESH_TYPE_URLS, TYPE.listener, TYPE.route, TYPE.cluster, TYPE.endpoint].filter((t) => byType.has(t));
  const delta = order.map((t, i) => encodeDeltaResponse(`v${i}`, t, `n${i}`, byType.get(t)!, []));
  const sotw = order.map((t, i) => encodeSotwResponse('1', t, `n${i}`, byType.get(t)!));
  const name = cfg.replace('.yaml', '');
  for (const [dir, msgs] of [['xds-delta', delta], ['xds-sotw', sotw]] as const) {
    mkdirSync(join(here, dir), { recursive: true });
    writeFileSync(join(here, dir, name), frame(msgs));
    // a second round: the endpoints again with one removed (delta), the listeners again (SotW: removals by absence)
    writeFileSync(join(here, dir, `${name}-update`), frame([...msgs, dir === 'xds-delta'
      ? encodeDeltaResponse('v9', TYPE.endpoint, 'n9', [], [byType.get(TYPE.endpoint)?.[0]?.name ?? 'x'])
      : encodeSotwResponse('2', TYPE.listener, 'n9', (byType.get(TYPE.listener) ?? []).slice(1))]));
  }
}
