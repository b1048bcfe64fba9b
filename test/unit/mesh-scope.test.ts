// A mesh change applied per affected service (issue 13, model/meshscope.ts): which services a change of workloads,
// policies or modes reaches; that applying only those leaves the kernel maps exactly as a full apply does (in-memory
// maps, the real reconciler; and an empty scope does not, so the comparison can fail); and end to end, an agent's xDS
// source fed by `serve --kubernetes` re-plans only the services a new pod on another node backs.
import t from 'tap';
import pino from 'pino';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeBackend, decodeService, decodeServiceKey, tableKey } from '../../agent/datapath/abi.js';
import { Reconciler } from '../../agent/datapath/reconcile.js';
import { parseConfig } from '../../agent/model/config.js';
import { meshChangedServices } from '../../agent/model/meshscope.js';
import type { Model } from '../../agent/model/types.js';
import { XdsSource } from '../../agent/sources/xds/source.js';
import { startKubeControlPlane } from '../../controlplane/kube.js';
import { apiAccess } from '../../kube/access.js';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';
import type { KPod } from '../../kube/types.js';
import { fakeMaps } from '../lib/fakemaps.js';
import { service, slice, until } from '../lib/fakekube.js';

const YAML = `
nodes: [{name: a, addresses: [198.19.255.1]}, {name: b, addresses: [198.19.255.2]}]
mtls: {mode: permissive, namespaces: {vault: strict}}
workloads:
  - {name: here, cgroups: [/mesh/here], identity: "spiffe://td/ns/shop/sa/here", addresses: [198.18.1.2]}
  - {name: web, cgroups: [], identity: "spiffe://td/ns/shop/sa/web", node: b, addresses: [198.18.2.2]}
  - {name: db, cgroups: [], identity: "spiffe://td/ns/vault/sa/db", node: b, addresses: [198.18.2.3]}
services:
  - {name: web, vips: [198.19.254.1], ports: [{port: 80, targetPort: 8080}], backends: [{address: 198.18.2.2}, {address: 198.18.1.2}]}
  - {name: db, vips: [198.19.254.2], ports: [{port: 5432}], backends: [{address: 198.18.2.3}]}
  - {name: extra, vips: [198.19.254.3], ports: [{port: 81}], backends: [{address: 198.18.2.5}]}
  - {name: local, vips: [198.19.254.4], ports: [{port: 82}], backends: [{address: 198.18.1.2}]}
`;

const base = parseConfig(YAML, 'c.yaml');
const withMesh = (m: Partial<Model>): Model => ({ ...base, ...m });
const wl = (name: string, ns: string, node: string | undefined, addresses: string[]) => ({ name, cgroups: [], identity: `spiffe://td/ns/${ns}/sa/${name}`, ...(node ? { node } : {}), addresses });

const cases: [string, Model, string[] | undefined][] = [
  ['a new workload on node b backing extra', withMesh({ workloads: [...base.workloads!, wl('extra', 'shop', 'b', ['198.18.2.5'])] }), ['extra']],
  ['a workload no service has a backend of', withMesh({ workloads: [...base.workloads!, wl('lonely', 'shop', 'b', ['198.18.2.9'])] }), []],
  ['db moved to namespace shop (mode strict -> permissive)', withMesh({ workloads: base.workloads!.map((w) => (w.name === 'db' ? wl('db', 'shop', 'b', ['198.18.2.3']) : w)) }), ['db']],
  ['web gone from node b', withMesh({ workloads: base.workloads!.filter((w) => w.name !== 'web') }), ['web']],
  ['a policy on db', withMesh({ authorization: [{ name: 'p', action: 'allow', services: ['db'], from: [{ namespaces: ['shop'] }] }] }), ['db']],
  ['a mesh-wide DENY policy', withMesh({ authorization: [{ name: 'p', action: 'deny', from: [{ namespaces: ['dev'] }] }] }), ['db', 'extra', 'local', 'web']],
  ['the mesh mode', withMesh({ mtls: { mode: 'strict', namespaces: { vault: 'strict' } } }), undefined],
  ['a service\'s own mode', withMesh({ services: base.services.map((s) => (s.name === 'db' ? { ...s, mtls: 'off' as const } : s)) }), undefined],
];

t.test('meshChangedServices: the services a mesh change reaches', async (t) => {
  for (const [what, next, want] of cases) {
    const got = meshChangedServices(base, next);
    t.same(got === undefined ? undefined : [...got].sort(), want, what);
  }
  t.same([...meshChangedServices(base, base)!], [], 'nothing changed: no service');
  const l7 = { ...base, services: [...base.services, { ...base.services[3]!, name: 'site', http: {} as never }] };
  const moved = { ...l7, workloads: [...base.workloads!, wl('lonely', 'shop', 'b', ['198.18.2.9'])] };
  t.same([...meshChangedServices(l7, moved)!], ['site'], 'a workload change reaches the L7 services (the proxy resolves identities through workloads)');
});

/** The kernel's services as they resolve: each frontend's flags and its selection table's backends with their flags. */
function kernelState(k: ReturnType<typeof fakeMaps>): string[] {
  const backends = k.data('sm_backends');
  const tables = k.data('sm_tables');
  const out: string[] = [];
  for (const [key, value] of k.data('sm_services')) {
    const fe = decodeServiceKey(Buffer.from(key, 'hex'));
    const v = decodeService(value);
    const picks: string[] = [];
    for (let i = 0; i < v.table_size; i++) {
      const id = tables.get(tableKey(v.table_id, i).toString('hex'))!.readUInt32LE(0);
      const b = decodeBackend(backends.get(Buffer.from([id & 255, (id >> 8) & 255, (id >> 16) & 255, id >>> 24]).toString('hex'))!);
      picks.push(`${b.addr}:${b.port}/${b.flags}/${b.weight}`);
    }
    out.push(`${fe.addr}:${fe.port}/${fe.proto} svc ${v.service_id} flags ${v.flags} -> ${[...new Set(picks)].sort().join(' ')}`);
  }
  for (const [key, value] of k.data('sm_remote_pods')) out.push(`remote ${key} ${value.readUInt32LE(0)}`);
  return out.sort();
}

function applied(models: [Model, ReadonlySet<string>?][]): string[] {
  const k = fakeMaps();
  const r = new Reconciler(k.maps, k.native, { retireMs: 0 });
  r.setNodeId('a');
  for (const [m, scope] of models) r.apply(m, scope);
  return kernelState(k);
}

t.test('a scoped apply leaves the kernel maps as a full apply does', async (t) => {
  for (const [what, next] of cases) {
    const scope = meshChangedServices(base, next);
    const full = applied([[next]]);
    t.same(applied([[base], [next, scope]]), full, `${what}: scoped (${scope ? [...scope].join(', ') || 'none' : 'all'}) = full`);
    if (scope && scope.size > 0) t.not(JSON.stringify(applied([[base], [next, new Set()]])), JSON.stringify(full), `${what}: applying nothing would differ`);
  }
});

t.test('serve --kubernetes -> an agent: a new pod on another node re-plans only the services it backs', async (t) => {
  const log = pino({ level: 'silent' });
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  const dir = mkdtempSync(join(tmpdir(), 'meshscope-'));
  t.teardown(async () => { rmSync(dir, { recursive: true, force: true }); await api.close(); });
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  const pod = (name: string, node: string, ip: string): KPod => ({
    metadata: { namespace: 'shop', name, labels: { app: name.replace(/-.*/, '') } },
    spec: { nodeName: node, serviceAccountName: name.replace(/-.*/, ''), containers: [{ name: 'c' }] },
    status: { phase: 'Running', podIPs: [{ ip }], podIP: ip },
  });
  api.put('namespaces', { metadata: { name: 'shop' } } as never);
  for (const [n, ip] of [['node-a', '10.0.0.1'], ['node-b', '10.0.0.2']]) api.put('nodes', { metadata: { name: n }, status: { addresses: [{ type: 'InternalIP', address: ip }] } } as never);
  const services = ['web', 'db', 'cache', 'queue'];
  services.forEach((s, i) => {
    api.put('services', service('shop', s, `10.96.0.${10 + i}`, [{ port: 80, targetPort: 8080 }]) as never);
    // db's slice already lists the pod about to start on node-b (the EndpointSlice is often ahead of the pod watch)
    const eps = [{ address: `10.1.0.${i + 1}`, nodeName: 'node-a' }, ...(s === 'db' ? [{ address: '10.2.0.9', nodeName: 'node-b' }] : [])];
    api.put('endpointslices', slice('shop', `${s}-1`, s, [{ port: 8080 }], eps) as never);
    api.put('pods', pod(`${s}-1`, 'node-a', `10.1.0.${i + 1}`) as never);
  });
  const access = apiAccess({ kubeconfig: join(dir, 'kubeconfig') });
  const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: log as never, debounceMs: 1 });
  const applies: { model: Model; changed?: ReadonlySet<string> }[] = [];
  const agent = new XdsSource({ address: `127.0.0.1:${cp.port}`, mode: 'delta', log, node: { id: 'node-a', cluster: 'c', metadata: {} }, apply: (model, changed) => { applies.push({ model, changed }); return null; } });
  t.teardown(async () => { await agent.stop(); await cp.close(); access.client.close(); });
  agent.start();
  const last = () => applies.at(-1)?.model;
  await until('synced', () => (last()?.workloads?.length ?? 0) === 4 && last()!.services.length === 4);
  const from = applies.length;
  api.put('pods', pod('db-2', 'node-b', '10.2.0.9') as never);
  await until('the new workload', () => !!last()!.workloads?.some((w) => w.node === 'node-b'));
  const mine = applies.slice(from);
  t.same(mine.map((a) => (a.changed ? [...a.changed] : 'all')), [['shop--db']], 'one apply, of the one service the pod backs (not all 4)');
  t.same(agent.status().lastNack, null);
});
