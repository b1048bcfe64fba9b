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

t.test('tunnelTargets on a large model: the services\' own modes are indexed once per call, not walked per backend (issue 13)', async (t) => {
  // 1,000 services of 4 backends on other nodes' pods, every 7th with a mode of its own; pods shared between services
  const N = 1000, K = 4, PODS = 1000;
  const pod = (i: number) => `198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`;
  const cfg = {
    nodes: [{ name: 'a', addresses: ['198.19.255.1'] }, { name: 'b', addresses: ['198.19.255.2'] }],
    mtls: { mode: 'permissive', namespaces: { vault: 'strict' } },
    workloads: Array.from({ length: PODS }, (_, i) => ({ name: `w${i}`, cgroups: [], identity: `spiffe://td/ns/${i % 5 === 0 ? 'vault' : 'shop'}/sa/w${i}`, node: 'b', addresses: [pod(i)] })),
    services: Array.from({ length: N }, (_, s) => ({
      name: `s${s}`, vips: [`198.19.${Math.floor(s / 250)}.${(s % 250) + 1}`], ports: [{ port: 80, targetPort: 8080 + (s % 3) }],
      ...(s % 7 === 0 ? { mtls: s % 14 === 0 ? 'strict' : 'off' } : {}),
      backends: Array.from({ length: K }, (_, j) => ({ address: pod((s * K + j * 811) % PODS) })),
    })),
  };
  const model = parseConfig(JSON.stringify(cfg), 'big.json');
  // count the walks over the services (each `for of` is one; the index is built from one)
  let walks = 0;
  const services = model.services;
  model.services = new Proxy(services, { get: (o, k, r) => { if (k === Symbol.iterator) walks++; return Reflect.get(o, k, r) as unknown; } });
  const tt = tunnelTargets(model, 'a');
  // the reference: what a backend's mode is, by definition (the strictest own mode of the services sending to that
  // address and port, else the namespace's, else the mesh's)
  const rank = { off: 0, permissive: 1, strict: 2 } as const;
  const expected = (address: string, port: number, w: typeof cfg.workloads[number]): number => {
    let own: 'off' | 'permissive' | 'strict' | undefined;
    for (const s of services) {
      if (s.mtls && s.frontends.some((fe) => fe.backends.some((b) => b.address === address && b.port === port)) && (own === undefined || rank[s.mtls] > rank[own])) own = s.mtls;
    }
    const mode = own ?? (w.identity.includes('/ns/vault/') ? 'strict' : 'permissive');
    return mode === 'off' ? 0 : mode === 'strict' ? BE_F_TUNNEL | BE_F_STRICT : BE_F_TUNNEL;
  };
  const byAddress = new Map(cfg.workloads.map((w) => [w.addresses[0]!, w]));
  let asked = 0, checked = 0, wrong = 0;
  const seen = new Set<string>();
  for (const s of services) {
    for (const fe of s.frontends) {
      for (const b of fe.backends) {
        const got = tt.backend(s, b.address, b.port);
        seen.add(`${b.address}|${b.port}`);
        // a service's own mode wins for its own backends; the others by the port's mode (the reference, O(services),
        // on every 17th backend)
        if (asked++ % 17 !== 0 && !s.mtls) continue;
        checked++;
        if (got !== (s.mtls ? (s.mtls === 'off' ? 0 : BE_F_TUNNEL | BE_F_STRICT) : expected(b.address, b.port, byAddress.get(b.address)!))) wrong++;
      }
    }
  }
  t.equal(asked, N * K);
  t.equal(wrong, 0, `the flags of ${checked} backends as the definition gives them`);
  t.ok(walks <= 1, `the services walked ${walks} time(s) for ${seen.size} distinct backends (at most once: an index; per backend it was O(backends x services))`);
});
