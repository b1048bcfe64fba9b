// The control plane's hand-encoded L4 resources (controlplane/l4wire.ts) are byte for byte protobufjs' encoding of the
// object builders beside them, over many random shapes: names of every length (varints of 1-3 bytes) and in UTF-8,
// IPv4/IPv6 VIPs, several VIPs and port entries, TCP and UDP, every algorithm and maglev table size, affinity, health
// checks, mTLS modes. Equal bytes also mean equal content hashes: delta clients see no version change.
import t from 'tap';
import { prng } from '../../bench/lib/fleet.js';
import { TYPE } from '../../xds/envoy.js';
import { unpackAny } from '../../xds/protos.js';
import { modelFromObject } from '../../agent/model/config.js';
import type { Algorithm, Backend, Frontend, Service } from '../../agent/model/types.js';
import { grpcRouteHashPolicy } from '../../controlplane/balancing.js';
import {
  encodeGrpcListener, encodeGrpcRoute, encodeL4Cluster, encodeL4Listener, grpcListenerObject, grpcRouteObject,
  l4ClusterObject, l4ListenerObject,
} from '../../controlplane/l4wire.js';
import { encodeWithProtobufjs, portEntries, serviceResources } from '../../controlplane/snapshot.js';
import { listenerName } from '../../xds/sockmesh.js';

const random = prng(12345); // seeded: a failure is the same on every run
const rand = (n: number): number => Math.floor(random() * n);
const pick = <T>(xs: readonly T[]): T => xs[rand(xs.length)]!;

/** A name of 1..~20,000 bytes: short ASCII, around the 127/128 and 16383/16384 varint edges, multi-byte UTF-8. */
function randomName(): string {
  const kinds = [
    () => `svc-${rand(100000)}`,
    () => `ns-${rand(100)}/svc-${rand(1000)}`,
    () => 'a'.repeat(120 + rand(16)), // lengths 120..135: the one-byte/two-byte varint edge
    () => 'b'.repeat(16370 + rand(30)), // the two-/three-byte edge
    () => `dienst-ü-${'€'.repeat(rand(60))}-名前-${rand(10)}`,
    () => `x${'😀'.repeat(1 + rand(40))}`,
  ];
  return pick(kinds)();
}
const randomV4 = () => `${pick([127, 10, 198, 255])}.${rand(256)}.${rand(256)}.${rand(256)}`;
const randomV6 = () => pick(['::1', '2001:db8::1', `2001:db8:fffe::${rand(65536).toString(16)}`, 'fd00:1:2:3:4:5:6:7']);

function randomService(): Service {
  const algorithm: Algorithm = pick(['random', 'weighted', 'maglev'] as const);
  const vips = Array.from({ length: 1 + rand(3) }, () => (rand(2) ? randomV4() : randomV6()));
  const ports = Array.from({ length: 1 + rand(3) }, () => ({ port: pick([1, 53, 80, 127, 128, 443, 16383, 16384, 65535]), protocol: pick(['tcp', 'udp'] as const) }));
  const frontends: Frontend[] = [];
  for (const vip of vips) {
    const family = vip.includes(':') ? 6 : 4;
    for (const p of ports) {
      const backends: Backend[] = Array.from({ length: rand(4) }, () => ({ address: family === 6 ? randomV6() : randomV4(), family, port: 1 + rand(65535), weight: rand(3) }));
      frontends.push({ vip, family, port: p.port, protocol: p.protocol, backends });
    }
  }
  const svc: Service = {
    name: randomName(), algorithm, affinityTimeoutSeconds: pick([0, 0, 1, 300, 10800, 86400]),
    maglevTableSize: pick([251, 509, 1021, 65521]), frontends,
  };
  if (rand(3) === 0) svc.mtls = pick(['strict', 'permissive', 'off'] as const);
  return svc;
}

/** Services as the config file makes them, with health checks (their nested object is validated there). */
function healthChecked(): Service[] {
  return modelFromObject({
    services: [
      { name: 'hc-a', vips: ['127.100.0.1'], ports: [{ port: 80 }], backends: [{ address: '127.0.0.1', port: 8080 }], healthCheck: { type: 'http', path: '/healthz' } },
      { name: 'hc-b', vips: ['127.100.0.2', '::1'], ports: [{ port: 53, protocol: 'udp', targetPort: 5353 }, { port: 443, protocol: 'tcp', targetPort: 8443 }], algorithm: 'maglev', affinity: { timeoutSeconds: 60 }, backends: [], healthCheck: { type: 'tcp', interval: '5s', timeout: '1s', healthyThreshold: 2, unhealthyThreshold: 3 } },
    ],
  }, 'hc').services;
}

/** What protobufjs makes of the object builders, in the order serviceResources emits an L4 service's resources. */
function reference(svc: Service): Array<[string, string, Buffer]> {
  const out: Array<[string, string, Buffer]> = [];
  const enc = (url: string, obj: Record<string, unknown>) => Buffer.from(encodeWithProtobufjs(url, obj));
  const entries = portEntries(svc);
  for (const e of entries) {
    out.push([TYPE.cluster, e.cluster, enc(TYPE.cluster, l4ClusterObject(svc, e.cluster))]);
    out.push([TYPE.endpoint, e.cluster, Buffer.alloc(0)]); // the assignment: checked in controlplane-scale
    for (const vip of e.vips) {
      const name = listenerName(vip, e.port, e.protocol);
      out.push([TYPE.listener, name, enc(TYPE.listener, l4ListenerObject(name, vip, e.port, e.protocol, e.cluster))]);
    }
  }
  const grpc = entries.find((e) => e.protocol === 'tcp');
  if (grpc) {
    out.push([TYPE.listener, svc.name, enc(TYPE.listener, grpcListenerObject(svc.name))]);
    out.push([TYPE.route, svc.name, enc(TYPE.route, grpcRouteObject(svc.name, grpc.cluster, grpcRouteHashPolicy(svc)))]);
  }
  return out;
}

t.test('each hand encoder equals protobufjs on its object, over 400 random services', async (t) => {
  let compared = 0;
  let mismatches = 0;
  const services = [...Array.from({ length: 400 }, randomService), ...healthChecked()];
  for (const svc of services) {
    for (const e of portEntries(svc)) {
      const want = Buffer.from(encodeWithProtobufjs(TYPE.cluster, l4ClusterObject(svc, e.cluster)));
      if (!Buffer.from(encodeL4Cluster(svc, e.cluster)).equals(want)) {
        mismatches++;
        t.fail(`cluster ${e.cluster.slice(0, 40)} (${svc.algorithm}, affinity ${svc.affinityTimeoutSeconds}, hc ${!!svc.healthCheck})`);
      }
      compared++;
      for (const vip of e.vips) {
        const name = listenerName(vip, e.port, e.protocol);
        const wantL = Buffer.from(encodeWithProtobufjs(TYPE.listener, l4ListenerObject(name, vip, e.port, e.protocol, e.cluster)));
        if (!Buffer.from(encodeL4Listener(name, vip, e.port, e.protocol, e.cluster)).equals(wantL)) {
          mismatches++;
          t.fail(`listener ${name} -> ${e.cluster.slice(0, 40)}`);
        }
        compared++;
      }
    }
    const wantG = Buffer.from(encodeWithProtobufjs(TYPE.listener, grpcListenerObject(svc.name)));
    if (!Buffer.from(encodeGrpcListener(svc.name)).equals(wantG)) t.fail(`api listener ${svc.name.slice(0, 40)} (${svc.name.length} chars)`);
    const cluster = portEntries(svc)[0]!.cluster;
    for (const hp of [undefined, grpcRouteHashPolicy({ ...svc, algorithm: 'maglev' })]) {
      const wantR = Buffer.from(encodeWithProtobufjs(TYPE.route, grpcRouteObject(svc.name, cluster, hp)));
      if (!Buffer.from(encodeGrpcRoute(svc.name, cluster, hp)).equals(wantR)) t.fail(`route ${svc.name.slice(0, 40)} hash ${!!hp}`);
    }
    compared += 3;
  }
  t.equal(mismatches, 0, `${compared} resources compared byte for byte`);
});

t.test('serviceResources serves exactly the reference bytes, in the same order', async (t) => {
  let n = 0;
  for (const svc of [...Array.from({ length: 200 }, randomService), ...healthChecked()]) {
    const got = serviceResources(svc);
    const want = reference(svc);
    if (got.length !== want.length) t.fail(`${svc.name.slice(0, 30)}: ${got.length} resources, want ${want.length}`);
    for (let i = 0; i < want.length; i++) {
      const [url, name, bytes] = want[i]!;
      if (!got[i]) break;
      const [gotUrl, r] = got[i]!;
      if (gotUrl !== url || r.name !== name || r.any.type_url !== url) t.fail(`resource ${i} of ${svc.name.slice(0, 30)}: ${gotUrl} ${r.name.slice(0, 30)}, want ${url} ${name.slice(0, 30)}`);
      if (url === TYPE.endpoint) continue;
      if (!Buffer.from(r.any.value).equals(bytes)) t.fail(`${url.split('.').pop()} ${name.slice(0, 40)}: bytes differ from protobufjs'`);
      n++;
    }
  }
  t.ok(n > 1000, `${n} served resources equal protobufjs' bytes`);
});

t.test('the hand-encoded resources decode to what they say', async (t) => {
  // An independent look: protobufjs decodes the hand-made bytes into the fields written.
  const svc: Service = {
    name: 'ns-1/web', algorithm: 'maglev', affinityTimeoutSeconds: 300, maglevTableSize: 1021,
    frontends: [{ vip: '2001:db8::7', family: 6, port: 443, protocol: 'tcp', backends: [] }, { vip: '2001:db8::7', family: 6, port: 53, protocol: 'udp', backends: [] }],
  };
  const [tcp, udp] = portEntries(svc);
  const c = unpackAny<Record<string, any>>({ type_url: TYPE.cluster, value: encodeL4Cluster(svc, tcp!.cluster) }); // eslint-disable-line @typescript-eslint/no-explicit-any
  t.equal(c['name'], 'ns-1/web:443');
  t.equal(c['type'], 'EDS');
  t.equal(c['lb_policy'], 'MAGLEV');
  t.equal(c['maglev_lb_config'].table_size.value, '1021'); // a UInt64Value: longs as strings
  const l = unpackAny<Record<string, any>>({ type_url: TYPE.listener, value: encodeL4Listener('[2001:db8::7]:53/udp', '2001:db8::7', 53, 'udp', udp!.cluster) }); // eslint-disable-line @typescript-eslint/no-explicit-any
  t.match(l['address'], { socket_address: { protocol: 'UDP', address: '2001:db8::7', port_value: 53 } });
  t.same(l['udp_listener_config'], {});
  t.match(unpackAny({ type_url: l['listener_filters'][0].typed_config.type_url, value: l['listener_filters'][0].typed_config.value }), { stat_prefix: 'ns-1/web:53', cluster: 'ns-1/web:53' });
  const r = unpackAny<Record<string, any>>({ type_url: TYPE.route, value: encodeGrpcRoute('ns-1/web', 'ns-1/web:443', grpcRouteHashPolicy(svc)) }); // eslint-disable-line @typescript-eslint/no-explicit-any
  t.match(r['virtual_hosts'][0].routes[0].route, { cluster: 'ns-1/web:443', hash_policy: [{ filter_state: { key: 'io.grpc.channel_id' } }] });
  t.equal(r['virtual_hosts'][0].routes[0].match.prefix, '');
});
