// The mesh settings over xDS (issue 13): a config's nodes, workloads (with their node), mtls (mesh, namespaces and a
// service's own mode) and L4 authorization, served by the control plane as sockmesh.mesh.v1 resources on the ADS stream
// and read back by the agent's xDS source into the same model the file gives, each node seeing only its own workloads'
// cgroups; through the real control plane and gRPC, both modes. A bad resource is NACKed naming the resource and the
// field, and the last good state stays; a mesh change alone is applied whole.
import t from 'tap';
import pino from 'pino';
import { XdsSource } from '../../agent/sources/xds/source.js';
import { MeshState } from '../../agent/sources/xds/mesh.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { loadConfigDir } from '../../controlplane/watch.js';
import { parseConfig } from '../../agent/model/config.js';
import { ConfigError, type Model } from '../../agent/model/types.js';
import { meshResourceObjs, MESH_TYPE } from '../../xds/mesh.js';
import { packAny } from '../../xds/protos.js';
import { FakeAds, TYPE } from '../lib/ads.js';
import { until } from '../lib/net.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const VAULT = 'spiffe://cluster.local/ns/shop/sa/vault';
const CONFIG = `
nodes:
  - {name: n1, addresses: [198.19.255.1, "2001:db8:ffff::1"]}
  - {name: n2, addresses: [198.19.255.2], tunnelPort: 15009}
workloads:
  - {name: web, cgroups: [/kubepods/web], identity: "${WEB}", node: n1, addresses: [198.18.1.2]}
  - {name: vault, cgroups: [/kubepods/vault], identity: "${VAULT}", node: n2, addresses: [198.18.2.2, "2001:db8:2::2"]}
  - {name: legacy, node: n2, addresses: [198.18.2.3]}
  - {name: local, cgroups: [/kubepods/local], identity: "spiffe://cluster.local/ns/shop/sa/local"}
  - {name: l7-only, cgroups: [/kubepods/l7]}
mtls: {mode: permissive, namespaces: {shop: strict, batch: "off"}}
authorization:
  - {name: deny-legacy, action: DENY, from: [{principals: ["*/sa/legacy"]}]}
  - {name: vault-from-web, action: ALLOW, services: [vault], from: [{principals: ["cluster.local/ns/shop/sa/web"]}, {namespaces: [ops]}], to: [{ports: [9090]}]}
services:
  - {name: vault, mtls: strict, vips: [127.77.3.1], ports: [{port: 80, targetPort: 9090}], backends: [{address: 198.18.2.2}]}
  - {name: shelf, vips: [127.77.3.2], ports: [{port: 80}], backends: [{address: 198.18.2.3, port: 8080}]}
`;

const sorted = (m: Model) => [...m.services].sort((a, b) => a.name.localeCompare(b.name));
const wait = (cond: () => boolean): Promise<true> => until('the applies', () => cond(), 15_000);
/** The model as `node` should get it: other nodes' workloads without cgroups. */
const asSeenBy = (m: Model, node: string): Model => ({
  ...m, workloads: m.workloads!.filter((w) => w.name !== 'l7-only').map((w) => (w.node !== undefined && w.node !== node ? { ...w, cgroups: [] } : w)),
});
/** What the mesh settings compare by (the agent keeps workloads in name order). */
const mesh = (m: Model) => ({
  nodes: m.nodes, workloads: [...(m.workloads ?? [])].sort((a, b) => a.name.localeCompare(b.name)), mtls: m.mtls, authorization: m.authorization, services: sorted(m),
});

t.test('translation both ways: the model -> resources -> the model, per node', async (t) => {
  const model = parseConfig(CONFIG, 'mesh.yaml');
  const objs = meshResourceObjs(model);
  t.same(objs.nodes.map((n) => n.name), ['n1', 'n2']);
  t.same(objs.nodes[1]!.obj, { name: 'n2', addresses: ['198.19.255.2'], tunnel_port: 15009 });
  t.same(objs.mtls?.obj, { name: 'mesh', mode: 'permissive', namespaces: { shop: 'strict', batch: 'off' }, services: { vault: 'strict' } });
  t.same(objs.authorization.map((p) => [p.name, p.obj['order'], p.obj['action']]), [['deny-legacy', 0, 'DENY'], ['vault-from-web', 1, 'ALLOW']]);
  const web = objs.workloads.find((w) => w.name === 'web')!;
  t.same([web.obj['cgroups'], web.own?.['cgroups']], [undefined, ['/kubepods/web']], 'a workload of a node: cgroups for its own node only');
  t.same(objs.workloads.find((w) => w.name === 'local')!.obj['cgroups'], ['/kubepods/local'], 'one without node: served whole');
  t.notOk(objs.workloads.some((w) => w.name === 'l7-only'), 'a workload that is only cgroups (for L7 authz) is left to its HTTP listeners');

  for (const node of ['n1', 'n2']) {
    const st = new MeshState();
    const send = (url: string, list: { name: string; obj: Record<string, unknown> }[]) => {
      const c = st.prepare(url, list.map((r) => ({ any: packAny(url, r.obj) })), [], true);
      if (typeof c === 'string') throw new Error(c);
      st.commit(c);
    };
    send(MESH_TYPE.node, objs.nodes);
    send(MESH_TYPE.workload, objs.workloads.map((w) => ({ name: w.name, obj: w.node === node && w.own ? w.own : w.obj })));
    send(MESH_TYPE.mtls, [objs.mtls!]);
    send(MESH_TYPE.authorization, [...objs.authorization].reverse()); // the order field, not the arrival, orders them
    const services = model.services.map(({ mtls: _m, ...s }) => s); // as the listeners give them: no mode
    const { model: back, notes } = st.compose({ services });
    t.same(mesh(back), mesh(asSeenBy(model, node)), `${node}: the same nodes, workloads, modes and policies as the file`);
    t.same(notes, []);
  }
});

t.test('the agent: bad resources are NACKed naming the resource and field; what arrives early waits', async (t) => {
  const st = new MeshState();
  const bad = (url: string, obj: Record<string, unknown>) => {
    const c = st.prepare(url, [{ any: packAny(url, obj) }], [], true);
    return typeof c === 'string' ? c : 'accepted';
  };
  t.match(bad(MESH_TYPE.workload, { name: 'web', identity: 'spiffe://x/web', node: 'n1' }), /^Workload 'web': identity: must be a SPIFFE id/);
  t.match(bad(MESH_TYPE.node, { name: 'n1', addresses: ['198.19.255.1', 'nope'] }), /^Node 'n1': addresses\[1\]: must be an IPv4 or IPv6 address/);
  t.match(bad(MESH_TYPE.node, { name: 'n1', addresses: ['198.19.255.1'], tunnel_port: 70000 }), /^Node 'n1': tunnel_port: must be an integer between 1 and 65535/);
  t.match(bad(MESH_TYPE.mtls, { name: 'mesh', mode: 'strict', namespaces: { shop: 'strcit' } }), /^Mtls 'mesh': namespaces\.shop: must be one of strict, permissive, off.*did you mean 'strict'/);
  t.match(bad(MESH_TYPE.mtls, { name: 'mesh', services: { web: 'tight' } }), /^Mtls 'mesh': services\.web: must be one of/);
  t.match(bad(MESH_TYPE.authorization, { name: 'p', action: 'PERMIT' }), /^Authorization 'p': action: must be one of allow, deny/);
  t.match(bad(MESH_TYPE.authorization, { name: 'p', action: 'ALLOW', from: [{}] }), /^Authorization 'p': from\[0\]: must name principals or namespaces/);
  const two = st.prepare(MESH_TYPE.workload, [
    { any: packAny(MESH_TYPE.workload, { name: 'a', node: 'n1', addresses: ['198.18.1.2'] }) },
    { any: packAny(MESH_TYPE.workload, { name: 'b', node: 'n1', addresses: ['198.18.1.2'] }) },
  ], [], true);
  t.match(two, /^Workload 'b': addresses: address 198\.18\.1\.2 is already an address of workload 'a'/);
  t.ok(st.empty, 'nothing was taken');

  // a workload of a node not served yet, a policy and a mode for services not served: kept, applied to nothing, said
  const ok = st.prepare(MESH_TYPE.workload, [{ any: packAny(MESH_TYPE.workload, { name: 'a', identity: WEB, node: 'n9', addresses: ['198.18.9.2'] }) }], [], true);
  if (typeof ok === 'string') throw new Error(ok);
  st.commit(ok);
  const p = st.prepare(MESH_TYPE.authorization, [{ any: packAny(MESH_TYPE.authorization, { name: 'p', action: 'DENY', services: ['later'] }) }], [], true);
  if (typeof p === 'string') throw new Error(p);
  st.commit(p);
  const r = st.compose({ services: [] });
  t.same(r.model.workloads, undefined, 'the workload of node n9 is left out until n9 is served (no tunnel to an unknown node)');
  t.same(r.model.authorization?.map((x) => x.services), [['later']], 'the policy is kept with its service: it does not become "every service"');
  t.same(r.notes, [
    "workload 'a': its node 'n9' is not served (no Node resource): left out, no tunnel to it",
    "authorization 'p': service 'later' is not served: the policy applies to it when it is",
  ]);
});

for (const mode of ['sotw', 'delta'] as const) {
  t.test(`${mode}: through the control plane, the first apply has the mesh; a mesh change is applied to the services it reaches`, async (t) => {
    const model = parseConfig(CONFIG, 'mesh.yaml');
    const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0' });
    const applied: { node: string; model: Model; changed?: ReadonlySet<string> }[] = [];
    const sources = ['n1', 'n2'].map((node) => new XdsSource({
      address: `127.0.0.1:${cp.port}`, mode, log: pino({ level: 'silent' }), node: { id: node, cluster: 'c', metadata: {} },
      apply: (m, changed) => { applied.push({ node, model: m, changed }); return null; },
    }));
    t.teardown(async () => { for (const s of sources) await s.stop(); await cp.close(); });
    for (const s of sources) s.start();
    await wait(() => applied.length === 2);
    for (const node of ['n1', 'n2']) {
      const first = applied.find((a) => a.node === node)!;
      const want = asSeenBy(model, node);
      t.same(mesh(first.model), mesh(want), `${node}: the first model applied is the file's, with only its own workloads' cgroups`);
    }
    t.same(sources.map((s) => [s.status().lastNack, s.status().unsupported]), [[null, []], [null, []]]);

    // a policy added, a node's address changed: a mesh change alone, applied to the services it reaches (model/meshscope.ts)
    const next = parseConfig(CONFIG.replace('198.19.255.2]', '198.19.255.22]').replace('authorization:', 'authorization:\n  - {name: deny-ops, action: DENY, services: [shelf], from: [{namespaces: [ops]}]}'), 'mesh.yaml');
    cp.setModel(next);
    await wait(() => applied.filter((a) => a.node === 'n1').length >= 3 && applied.filter((a) => a.node === 'n2').length >= 3);
    for (const node of ['n1', 'n2']) {
      const last = applied.filter((a) => a.node === node).at(-1)!;
      t.same(mesh(last.model), mesh(asSeenBy(next, node)), `${node}: the new nodes and policies in force`);
      // deny-legacy (every service) already made shelf's default verdict "allow unless denied": deny-ops changes no
      // service entry, only verdicts (sm_authz, synced whole on every apply)
      t.same(last.changed && [...last.changed], [], `${node}: no service's kernel plan changes`);
      t.same(sorted(last.model).map((s) => s.mtls), [undefined, 'strict'], `${node}: the service's own mode (shelf, vault)`);
    }
    t.equal(applied.length, 6, 'one apply per mesh type that changed, per node (nodes, authorization)');

    // a workload moves to another node: each node sees the cgroups only where it runs now
    const moved = parseConfig(CONFIG.replace(`identity: "${WEB}", node: n1`, `identity: "${WEB}", node: n2`), 'mesh.yaml');
    const before = applied.length;
    cp.setModel(moved);
    // Each node's own apply, not any two: under load one node's stream can apply twice (the change, then a
    // coalesced repeat) before the other's first, and the count alone then judged a node that had not applied yet.
    const webCgroups = (node: string) => applied.slice(before).filter((a) => a.node === node).at(-1)?.model.workloads?.find((w) => w.name === 'web')?.cgroups;
    await wait(() => webCgroups('n1')?.length === 0 && webCgroups('n2')?.length === 1);
    for (const node of ['n1', 'n2']) {
      const last = applied.filter((a) => a.node === node).at(-1)!;
      t.same(last.model.workloads!.find((w) => w.name === 'web')!.cgroups, node === 'n2' ? ['/kubepods/web'] : [], `${node}: web's cgroups ${node === 'n2' ? 'now here' : 'gone'}`);
    }
  });
}

t.test('a NACKed mesh resource leaves the last good state, and the stream goes on', async (t) => {
  const ads = new FakeAds();
  await ads.start();
  t.teardown(() => ads.kill());
  const applied: Model[] = [];
  const src = new XdsSource({
    address: `127.0.0.1:${ads.port}`, mode: 'sotw', log: pino({ level: 'silent' }), node: { id: 'n1', cluster: 'c', metadata: {} },
    apply: (m) => { applied.push(m); return null; },
  });
  t.teardown(() => src.stop());
  src.start();
  const s = await ads.stream(0);
  const req = await s.next(MESH_TYPE.node);
  t.same(req['resource_names'] ?? [], [], 'the mesh types are wildcard subscriptions');
  t.equal(s.requests[0]!['type_url'], MESH_TYPE.node, 'asked for before the listeners');
  const node = (addresses: string[]) => packAny(MESH_TYPE.node, { name: 'n1', addresses });
  s.send({ type_url: MESH_TYPE.node, version_info: '1', nonce: 'a', resources: [node(['198.19.255.1'])] });
  const ack = await s.next(MESH_TYPE.node);
  t.same([ack['version_info'], ack['response_nonce'], ack['error_detail']], ['1', 'a', undefined], 'ACKed');
  s.send({ type_url: TYPE.listener, version_info: '1', nonce: 'l', resources: [] });
  await wait(() => applied.length === 1);
  t.same(applied[0]!.nodes, [{ name: 'n1', addresses: ['198.19.255.1'] }], 'in the first apply');
  s.send({ type_url: MESH_TYPE.node, version_info: '2', nonce: 'b', resources: [node(['198.19.255.1', '300.1.1.1'])] });
  const nack = await s.next(MESH_TYPE.node);
  t.equal(nack['version_info'], '1', 'NACKed with the last good version');
  t.match(nack['error_detail']?.message, /Node 'n1': addresses\[1\]: must be an IPv4 or IPv6 address/);
  t.match(src.status().lastNack, { typeUrl: MESH_TYPE.node, version: '2' });
  t.equal(applied.length, 1, 'nothing applied');
  s.send({ type_url: MESH_TYPE.node, version_info: '3', nonce: 'c', resources: [node(['198.19.255.9'])] });
  await wait(() => applied.length === 2);
  t.same(applied[1]!.nodes, [{ name: 'n1', addresses: ['198.19.255.9'] }], 'the next good one applies');
});

t.test('a config directory: mesh settings merged across files, conflicts named', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-meshdir-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const nodes = 'nodes: [{name: n1, addresses: [198.19.255.1]}]\n';
  writeFileSync(join(dir, 'a.yaml'), `${nodes}mtls: {mode: strict}\nworkloads: [{name: w, node: n1, identity: "${WEB}", addresses: [198.18.1.2]}]\nservices: [{name: a, vips: [127.77.4.1], ports: [{port: 80}], backends: []}]\n`);
  writeFileSync(join(dir, 'b.yaml'), `${nodes}authorization: [{name: p, action: DENY, services: [b], from: [{namespaces: [x]}]}]\nservices: [{name: b, vips: [127.77.4.2], ports: [{port: 80}], backends: []}]\n`);
  const { model } = loadConfigDir(dir);
  t.same([model.nodes, model.mtls, model.authorization?.map((p) => p.name), model.workloads?.map((w) => w.node)],
    [[{ name: 'n1', addresses: ['198.19.255.1'] }], { mode: 'strict', namespaces: {} }, ['p'], ['n1']]);
  writeFileSync(join(dir, 'b.yaml'), 'nodes: [{name: n1, addresses: [198.19.255.7]}]\nmtls: {mode: "off"}\nservices: []\n');
  const err = (() => { try { loadConfigDir(dir); } catch (e) { return e as ConfigError; } return undefined; })();
  t.ok(err instanceof ConfigError);
  t.same(err!.issues.map((i) => [i.file, i.path, i.message]), [
    [join(dir, 'b.yaml'), 'nodes[0]', `node 'n1' is defined otherwise in ${join(dir, 'a.yaml')}`],
    [join(dir, 'b.yaml'), 'mtls', `the mesh's mtls is also set, otherwise, in ${join(dir, 'a.yaml')}`],
  ]);
});
