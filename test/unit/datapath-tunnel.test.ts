// What the kernel hands to the tunnel (issue 13, plan.ts tunnelTargets, reconcile.ts syncRemotePods), against in-memory
// maps: a VIP's backend that is a workload of another node gets BE_F_TUNNEL (+ BE_F_STRICT for a strict destination),
// by the service's own mode, the port's, the namespace's or the mesh's; `off` and this node's pods stay plain (local
// ones keep BE_F_LOCAL); sm_remote_pods holds other nodes' pod addresses for direct connects, follows the model, and is
// emptied when the hand-over is off (no node id). Without a node id nothing changes from before issue 13.
import t from 'tap';
import { BE_F_LOCAL, BE_F_STRICT, BE_F_TUNNEL, bytesToAddr, decodeBackend } from '../../agent/datapath/abi.js';
import { fakeMaps } from '../lib/fakemaps.js';
import { Reconciler } from '../../agent/datapath/reconcile.js';
import { tunnelTargets } from '../../agent/datapath/plan.js';
import { parseConfig } from '../../agent/model/config.js';

const fake = fakeMaps;

const YAML = `
nodes: [{name: a, addresses: [198.19.255.1]}, {name: b, addresses: [198.19.255.2, "2001:db8:ffff::2"]}]
mtls: {mode: permissive, namespaces: {vault: strict, legacy: off}}
workloads:
  - {name: here, cgroups: [/mesh/here], identity: "spiffe://td/ns/shop/sa/here", addresses: [198.18.1.2]}
  - {name: web, cgroups: [], identity: "spiffe://td/ns/shop/sa/web", node: b, addresses: [198.18.2.2, "2001:db8:2::2"]}
  - {name: db, cgroups: [], identity: "spiffe://td/ns/vault/sa/db", node: b, addresses: [198.18.2.3]}
  - {name: old, cgroups: [], identity: "spiffe://td/ns/legacy/sa/old", node: b, addresses: [198.18.2.4]}
services:
  - {name: web, vips: [198.19.254.1, "2001:db8:fffe::1"], ports: [{port: 80, targetPort: 8080}], backends: [{address: 198.18.2.2}, {address: "2001:db8:2::2"}, {address: 198.18.1.2}]}
  - {name: db, vips: [198.19.254.2], ports: [{port: 5432}], backends: [{address: 198.18.2.3}]}
  - {name: old, vips: [198.19.254.3], ports: [{port: 80}], backends: [{address: 198.18.2.4}]}
  - {name: plain, mtls: off, vips: [198.19.254.4], ports: [{port: 81, targetPort: 9090}], backends: [{address: 198.18.2.2}]}
  - {name: locked, mtls: strict, vips: [198.19.254.5], ports: [{port: 82, targetPort: 9091}], backends: [{address: 198.18.2.4}]}
  - {name: dns, vips: [198.19.254.6], ports: [{port: 53, protocol: udp}], backends: [{address: 198.18.2.2}]}
`;

t.test('tunnelTargets: other nodes\' workloads by mode; this node\'s and off stay plain', async (t) => {
  const model = parseConfig(YAML, 'c.yaml');
  const svc = (n: string) => model.services.find((s) => s.name === n)!;
  const tt = tunnelTargets(model, 'a');
  t.equal(tt.backend(svc('web'), '198.18.2.2', 8080), BE_F_TUNNEL, 'a remote pod, mesh permissive: tunnelled');
  t.equal(tt.backend(svc('web'), '2001:db8:2::2', 8080), BE_F_TUNNEL, 'and its IPv6 address');
  t.equal(tt.backend(svc('web'), '198.18.1.2', 8080), 0, 'a workload of this node (no node = this one): not tunnelled');
  t.equal(tt.backend(svc('db'), '198.18.2.3', 5432), BE_F_TUNNEL | BE_F_STRICT, 'namespace vault strict: tunnelled, strict');
  t.equal(tt.backend(svc('old'), '198.18.2.4', 80), 0, 'namespace legacy off: plaintext');
  t.equal(tt.backend(svc('plain'), '198.18.2.2', 9090), 0, 'the service\'s own mtls: off wins over the mesh');
  t.equal(tt.backend(svc('locked'), '198.18.2.4', 9091), BE_F_TUNNEL | BE_F_STRICT, 'the service\'s own strict wins over the namespace\'s off');
  t.equal(tt.backend(svc('web'), '198.18.9.9', 8080), 0, 'an address no workload has: not tunnelled');
  t.same(Object.fromEntries(tt.pods), { '198.18.2.2': BE_F_TUNNEL, '2001:db8:2::2': BE_F_TUNNEL, '198.18.2.3': BE_F_TUNNEL | BE_F_STRICT },
    'direct connects: remote pods whose namespace or mesh mode is not off (old is off: not there)');
  t.same(Object.fromEntries(tunnelTargets(model, 'b').pods), {}, 'seen from node b, its own workloads are local: nothing');
  t.same(Object.fromEntries(tunnelTargets(model, 'a', new Set(['198.18.2.2'])).pods), { '2001:db8:2::2': BE_F_TUNNEL, '198.18.2.3': BE_F_TUNNEL | BE_F_STRICT },
    'an address the node finds among its own pods is never handed over, whatever the model says');
});

t.test('the reconciler: backend flags and sm_remote_pods follow the model and the node id', async (t) => {
  const model = parseConfig(YAML, 'c.yaml');
  const k = fake();
  const backends = () => new Map([...k.data('sm_backends').values()].map((v) => {
    const b = decodeBackend(v);
    return [`${b.service_id}/${b.addr}:${b.port}`, b.flags];
  }));
  const remote = () => Object.fromEntries([...k.data('sm_remote_pods')].map(([key, v]) => [bytesToAddr(Buffer.from(key, 'hex')), v.readUInt32LE(0)]));

  const off = new Reconciler(k.maps, k.native, { retireMs: 0 });
  off.adopt();
  off.syncLocalAddresses(['198.18.1.2'], []);
  off.apply(model);
  t.ok([...backends().values()].every((f) => (f & (BE_F_TUNNEL | BE_F_STRICT)) === 0), 'no node id: no backend is handed over');
  t.same(remote(), {}, 'no node id: no remote pods');

  const r = new Reconciler(k.maps, k.native, { retireMs: 0 });
  r.adopt();
  r.syncLocalAddresses(['198.18.1.2'], []);
  r.setNodeId('a');
  r.apply(model);
  const flags = [...backends()].map(([key, f]) => `${key.replace(/^\d+\//, '')}=${f}`).sort();
  t.same(flags, [
    `198.18.1.2:8080=${BE_F_LOCAL}`, `198.18.2.2:53=${BE_F_TUNNEL}`, `198.18.2.2:8080=${BE_F_TUNNEL}`, `198.18.2.2:9090=0`,
    `198.18.2.3:5432=${BE_F_TUNNEL | BE_F_STRICT}`, `198.18.2.4:80=0`, `198.18.2.4:9091=${BE_F_TUNNEL | BE_F_STRICT}`, `2001:db8:2::2:8080=${BE_F_TUNNEL}`,
  ], 'node a: remote backends flagged by mode, the local one on the fast path (a UDP backend has the flag too: the kernel hands over TCP only)');
  t.same(remote(), { '198.18.2.2': BE_F_TUNNEL, '2001:db8:2::2': BE_F_TUNNEL, '198.18.2.3': BE_F_TUNNEL | BE_F_STRICT }, 'remote pods written');

  k.trace.length = 0;
  r.apply(model);
  t.same(k.trace.filter((l) => l.startsWith('sm_remote_pods')), [], 'the same model again: sm_remote_pods untouched');

  const moved = parseConfig(YAML.replace('node: b, addresses: [198.18.2.3]', 'node: a, addresses: [198.18.2.3]').replace('{vault: strict, legacy: off}', '{vault: strict, legacy: strict}'), 'c.yaml');
  r.apply(moved);
  t.same(remote(), { '198.18.2.2': BE_F_TUNNEL, '2001:db8:2::2': BE_F_TUNNEL, '198.18.2.4': BE_F_TUNNEL | BE_F_STRICT },
    'db moved to this node: gone; legacy became strict: old is there');
  t.equal([...backends()].find(([key]) => key.endsWith('/198.18.2.3:5432'))?.[1], 0, 'db\'s backend lost its tunnel flag (now this node\'s)');

  r.setNodeId(undefined);
  r.apply(moved);
  t.same(remote(), {}, 'hand-over off: sm_remote_pods emptied');
  t.ok([...backends().values()].every((f) => (f & (BE_F_TUNNEL | BE_F_STRICT)) === 0), 'and every backend is plain again');
});
