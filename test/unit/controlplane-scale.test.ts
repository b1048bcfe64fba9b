// The control plane at fleet scale (10,000 services, 100,000 endpoints, the shape of the xDS bench): the full build,
// then single-service changes, whose cost must follow the change and not the fleet. A delta and a state-of-the-world
// stream are connected throughout, so the timings include the pushes; what each stream receives for one endpoint
// change is checked (one ClusterLoadAssignment, and no CDS/LDS push in state of the world: their content did not
// change). Bounds are loose on purpose (a loaded 2-vCPU VM must not flake); the figures are printed as comments.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { TYPE } from '../../xds/envoy.js';
import { adsClientConstructor, unpackAny } from '../../xds/protos.js';
import { modelFromObject } from '../../agent/model/config.js';
import type { Backend, Model, Service } from '../../agent/model/types.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import {
  Snapshot, clusterLoadAssignmentObject, encodeClusterLoadAssignment, encodeWithProtobufjs,
} from '../../controlplane/snapshot.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const SERVICES = 10_000;
const BACKENDS = 10;
const CHANGES = 200;

const addr = (base: number, i: number) => `127.${base + Math.floor(i / 65536)}.${(i >> 8) & 255}.${i & 255}`;
function serviceConfig(i: number, changedBackend = -1, port = 8080) {
  return {
    name: `svc-${i}`,
    vips: [addr(200, i)],
    ports: [{ port: 80, protocol: 'tcp' }],
    algorithm: 'random',
    backends: Array.from({ length: BACKENDS }, (_, j) => ({ address: addr(1, i * BACKENDS + j), port: j === changedBackend ? port : 8080 })),
  };
}

const percentile = (xs: number[], p: number) => {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

/** Responses of one ADS stream, kept per type URL. */
class Recorder {
  readonly call: grpc.ClientDuplexStream<Msg, Msg>;
  readonly got: Msg[] = [];
  constructor(client: grpc.Client, method: 'StreamAggregatedResources' | 'DeltaAggregatedResources') {
    this.call = (client as unknown as Record<string, () => grpc.ClientDuplexStream<Msg, Msg>>)[method]!.call(client);
    this.call.on('data', (m: Msg) => this.got.push(m));
    this.call.on('error', () => {});
  }
  of(typeUrl: string): Msg[] {
    return this.got.filter((m) => m['type_url'] === typeUrl);
  }
}

async function until(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('10,000 services: full build, then single-service changes cost O(change)', async (t) => {
  let t0 = performance.now();
  const model: Model = modelFromObject({ services: Array.from({ length: SERVICES }, (_, i) => serviceConfig(i)) }, 'scale');
  t.comment(`model of ${SERVICES} services / ${SERVICES * BACKENDS} endpoints validated in ${(performance.now() - t0).toFixed(0)} ms`);

  // The snapshot build alone, on a model whose objects the control plane has never seen.
  const fresh: Model = modelFromObject({ services: Array.from({ length: SERVICES }, (_, i) => serviceConfig(i)) }, 'scale');
  t0 = performance.now();
  const snapshot = Snapshot.empty();
  snapshot.apply(fresh);
  const snapshotMs = performance.now() - t0;
  t.equal(snapshot.type(TYPE.endpoint)!.resources.size, SERVICES);
  t.comment(`Snapshot.empty().apply(full model): ${snapshotMs.toFixed(0)} ms`);

  const cp = await startControlPlaneFromModel({ services: [] }, { listen: '127.0.0.1:0' });
  const Ads = adsClientConstructor();
  const client = new Ads(`127.0.0.1:${cp.port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
  const delta = new Recorder(client, 'DeltaAggregatedResources');
  const sotw = new Recorder(client, 'StreamAggregatedResources');
  t.teardown(async () => {
    delta.call.cancel();
    sotw.call.cancel();
    client.close();
    await cp.close();
  });
  const names = model.services.map((s) => s.name);
  delta.call.write({ node: { id: 'scale-delta' }, type_url: TYPE.cluster });
  delta.call.write({ type_url: TYPE.listener });
  delta.call.write({ type_url: TYPE.endpoint, resource_names_subscribe: names });
  sotw.call.write({ node: { id: 'scale-sotw' }, type_url: TYPE.cluster, resource_names: [] });
  sotw.call.write({ type_url: TYPE.listener, resource_names: [] });
  sotw.call.write({ type_url: TYPE.endpoint, resource_names: names });
  await until('initial responses', () => delta.got.length === 3 && sotw.got.length === 3);

  // Full sync: the whole fleet in one setModel, pushed to both streams.
  t0 = performance.now();
  cp.setModel(model);
  const fullMs = performance.now() - t0;
  t.comment(`setModel(full model) with 2 streams (build + push): ${fullMs.toFixed(0)} ms`);
  t.ok(fullMs < 15_000, 'full build within a loose bound');
  await until('full state on both streams', () => delta.got.length === 6 && sotw.got.length === 6);
  t.equal(sotw.of(TYPE.cluster).at(-1)!['resources'].length, SERVICES, 'SotW: every cluster');
  t.equal(delta.of(TYPE.endpoint).at(-1)!['resources'].length, SERVICES, 'delta: every assignment');

  // Single-service changes: a NEW service object in a NEW services array, every other object reused (as the bench).
  const before = { delta: delta.got.length, sotw: sotw.got.length };
  const setModelMs: number[] = [];
  let services = model.services.slice();
  let last: Service | undefined;
  for (let n = 0; n < CHANGES; n++) {
    const index = (n * 7919) % SERVICES;
    last = modelFromObject({ services: [serviceConfig(index, n % BACKENDS, 10_000 + n)] }, 'scale').services[0]!;
    services = services.slice();
    services[index] = last;
    const m: Model = { services };
    t0 = performance.now();
    const changes = cp.setModel(m);
    setModelMs.push(performance.now() - t0);
    if (changes.size !== 1 || changes.get(TYPE.endpoint)?.size !== 1) {
      t.fail(`change ${n}: expected one endpoint change, got ${JSON.stringify([...changes].map(([u, s]) => [u, [...s]]))}`);
      break;
    }
  }
  const p50 = percentile(setModelMs, 50);
  const p99 = percentile(setModelMs, 99);
  t.comment(`setModel(one changed service) with 2 streams, ${CHANGES} changes: p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, ` +
    `max ${Math.max(...setModelMs).toFixed(2)} ms`);
  t.ok(p99 < 50, `single-service setModel p99 ${p99.toFixed(2)} ms < 50 ms`);

  await until('every change on both streams', () => delta.got.length === before.delta + CHANGES && sotw.got.length === before.sotw + CHANGES);
  const pushed = { delta: delta.got.slice(before.delta), sotw: sotw.got.slice(before.sotw) };
  t.ok(pushed.delta.every((m) => m['type_url'] === TYPE.endpoint && m['resources'].length === 1), 'delta: one assignment per change');
  t.ok(pushed.sotw.every((m) => m['type_url'] === TYPE.endpoint && m['resources'].length === 1), 'SotW: one assignment per change, no CDS/LDS push');
  const lastCla = unpackAny<Msg>(pushed.delta.at(-1)!['resources'][0]['resource']);
  t.equal(lastCla['cluster_name'], last!.name);
  const ports = lastCla['endpoints'][0]['lb_endpoints'].map((e: Msg) => e['endpoint']['address']['socket_address']['port_value']);
  t.ok(ports.includes(10_000 + CHANGES - 1), 'the last change is what was sent');

  // The same model again, and an equal copy of one service (new object, same content): nothing to push.
  t.equal(cp.setModel({ services }).size, 0, 'same model: no change');
  const copy = services.slice();
  copy[0] = structuredClone(copy[0]!);
  t.equal(cp.setModel({ services: copy }).size, 0, 'an equal copy of a service: no change');
});

t.test('the hand-made ClusterLoadAssignment encoder writes exactly the bytes protobufjs writes', async (t) => {
  const cases: Array<[string, Backend[]]> = [
    ['empty', []],
    ['one', [{ address: '127.0.0.1', family: 4, port: 8080, weight: 1 }]],
    ['drained-and-big', [
      { address: '127.0.0.2', family: 4, port: 1, weight: 0 },
      { address: '::1', family: 6, port: 65535, weight: 65535 },
      { address: '2001:db8::1234:5678', family: 6, port: 128, weight: 127 },
      { address: '10.255.255.255', family: 4, port: 16384, weight: 16384 },
    ]],
    ['svc-with-a-long-name:443/tcp'.repeat(6), Array.from({ length: 300 }, (_, i) => ({ address: `127.1.${i >> 8}.${i & 255}`, family: 4 as const, port: 1 + i * 211, weight: i % 3 }))],
  ];
  for (const [name, backends] of cases) {
    const want = Buffer.from(encodeWithProtobufjs(TYPE.endpoint, clusterLoadAssignmentObject(name, backends)));
    t.ok(encodeClusterLoadAssignment(name, backends).equals(want), `${name.slice(0, 30)}: ${backends.length} backends, ${want.length} bytes`);
  }
});

t.test('applyServices: replace, add, remove by name; a name twice throws and changes nothing', async (t) => {
  const model = modelFromObject({ services: [0, 1, 2].map((i) => serviceConfig(i)) }, 'small');
  const snap = Snapshot.empty();
  snap.apply(model);
  const eds = () => [...snap.type(TYPE.endpoint)!.resources.keys()].sort();
  t.same(eds(), ['svc-0', 'svc-1', 'svc-2']);
  const [changed1, added3] = modelFromObject({ services: [serviceConfig(1, 0, 9999), serviceConfig(3)] }, 'small').services;
  const changes = snap.applyServices([changed1!, added3!], ['svc-0']);
  t.same([...changes.get(TYPE.endpoint)!].sort(), ['svc-0', 'svc-1', 'svc-3']);
  t.same(eds(), ['svc-1', 'svc-2', 'svc-3']);
  t.same(snap.serviceNames(), ['svc-1', 'svc-2', 'svc-3']);
  const version = snap.type(TYPE.endpoint)!.version;
  const twice = modelFromObject({ services: [serviceConfig(2, 1, 7777)] }, 'small').services[0]!;
  t.throws(() => snap.apply({ services: [changed1!, twice, twice] }), /twice/);
  t.throws(() => snap.apply({ services: [twice, changed1!, added3!, added3!] }), /twice/);
  t.equal(snap.type(TYPE.endpoint)!.version, version, 'nothing changed');
  t.same(snap.serviceNames(), ['svc-1', 'svc-2', 'svc-3']);
  // Reordering only: no change at all.
  t.equal(snap.apply({ services: [added3!, changed1!, modelFromObject({ services: [serviceConfig(2)] }, 'small').services[0]!] }).size, 0);
});

t.test('a change of backends only re-encodes the assignments, and serves exactly what a fresh build serves', async (t) => {
  // Random models over a few services whose shape changes too (VIPs, ports, protocol, algorithm, affinity), applied
  // one after another to one snapshot; after each, every resource must be byte for byte the one a snapshot built
  // from that model alone holds. Seeded: a failure names the step.
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return (seed >>> 16) % n; // the high bits: an LCG's low bits repeat with a short period
  };
  // several port numbers: each port entry's targetPort is the backend port (the model's rule)
  const backends = (i: number, multiPort: boolean) => Array.from({ length: rand(4) }, (_, j) => ({
    address: rand(3) === 0 ? `2001:db8:1::${j + 1}` : addr(1, i * 8 + rand(8)), ...(multiPort ? {} : { port: 8080 + rand(2) }), weight: 1 + rand(3),
  })).filter((b, j, all) => all.findIndex((o) => o.address === b.address && o.port === b.port) === j);
  const svc = (i: number) => {
    const multiPort = rand(3) === 0;
    return {
      name: `svc-${i}`,
      vips: rand(4) === 0 ? [addr(200, i), `2001:db8::${i + 1}`] : [addr(200 + rand(2), i)],
      ports: multiPort ? [{ port: 80, protocol: 'tcp', targetPort: 8080 }, { port: 53, protocol: 'udp', targetPort: 5353 }] : [{ port: 80 + rand(2), protocol: 'tcp' }],
      algorithm: ['random', 'maglev', 'weighted'][rand(3)],
      ...(rand(4) === 0 ? { affinity: { timeoutSeconds: 30 } } : {}),
      backends: backends(i, multiPort),
    };
  };
  const snap = Snapshot.empty();
  let shapes = svc;
  let cfg = [0, 1, 2, 3, 4].map((i) => shapes(i));
  let reusedClusters = 0;
  for (let step = 0; step < 120; step++) {
    const next = cfg.map((c, i) => {
      if (rand(3) !== 0) return c;
      if (rand(2) === 0) return shapes(i); // anything may change
      return { ...c, backends: backends(i, c.ports.length > 1) }; // backends only
    });
    const before = new Map(snap.type(TYPE.cluster)!.resources);
    snap.apply(modelFromObject({ services: next }, `step ${step}`));
    const fresh = Snapshot.empty();
    fresh.apply(modelFromObject({ services: next }, `step ${step}`));
    for (const url of [TYPE.listener, TYPE.route, TYPE.cluster, TYPE.endpoint]) {
      const a = snap.type(url)!.resources;
      const b = fresh.type(url)!.resources;
      t.same([...a.keys()].sort(), [...b.keys()].sort(), `step ${step}: the names of ${url}`, { diagnostic: false });
      for (const [name, r] of b) {
        const got = a.get(name);
        if (!got || !got.deltaBytes.equals(r.deltaBytes) || got.version !== r.version) t.fail(`step ${step}: ${url} ${name} differs from a fresh build`);
      }
    }
    for (const [name, r] of snap.type(TYPE.cluster)!.resources) if (before.get(name) === r) reusedClusters++;
    cfg = next;
    // every other step a shape change keeps the ports (80/tcp), so that only VIPs, algorithm or affinity move
    shapes = step % 2 === 0 ? svc : (i) => ({ ...svc(i), ports: [{ port: 80, protocol: 'tcp' }], backends: backends(i, false) });
  }
  t.ok(reusedClusters > 100, `clusters kept as they were across changes: ${reusedClusters}`);
  // the common case itself: one backend moved, the cluster, listener and route objects stay, the assignment is new
  const one = (port: number) => modelFromObject({ services: [serviceConfig(0, 0, port)] }, 'one');
  const s = Snapshot.empty();
  s.apply(one(8080));
  const objects = (url: string) => s.type(url)!.resources.get('svc-0'); // the api listener is named after the service
  const [c0, l0, r0, e0] = [TYPE.cluster, TYPE.listener, TYPE.route, TYPE.endpoint].map(objects);
  const changes = s.apply(one(9999));
  t.same([...changes.keys()], [TYPE.endpoint], 'only the assignment changed');
  t.equal(objects(TYPE.cluster), c0, 'the cluster is the same object');
  t.equal(objects(TYPE.listener), l0, 'the api listener is the same object');
  t.equal(objects(TYPE.route), r0, 'the route is the same object');
  t.not(objects(TYPE.endpoint), e0, 'the assignment is new');
});
