// The control plane over real gRPC on 127.0.0.1, driven by a raw ADS client (no xDS library in between), so that
// what is checked is the wire protocol: versions, nonces, ACK/NACK, pushes, delta bookkeeping.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { parse as yamlParse } from 'yaml';
import { TYPE } from '../../xds/envoy.js';
import { adsClientConstructor, unpackAny, type AnyMessage } from '../../xds/protos.js';
import type { Model, Service } from '../../agent/model/types.js';
import { startControlPlane, startControlPlaneFromModel, type RunningControlPlane } from '../../controlplane/server.js';
import { encodeSotwResponse, Snapshot } from '../../controlplane/snapshot.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** One ADS stream: send requests, await responses one by one (each with a time bound). */
class RawStream {
  private readonly queue: Msg[] = [];
  private waiter?: (m: Msg) => void;
  readonly call: grpc.ClientDuplexStream<Msg, Msg>;
  ended = false;
  constructor(client: grpc.Client, method: 'StreamAggregatedResources' | 'DeltaAggregatedResources') {
    this.call = (client as unknown as Record<string, () => grpc.ClientDuplexStream<Msg, Msg>>)[method]!.call(client);
    this.call.on('data', (m: Msg) => {
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w(m);
      } else this.queue.push(m);
    });
    this.call.on('error', () => (this.ended = true));
    this.call.on('end', () => (this.ended = true));
  }
  send(req: Msg): void {
    this.call.write(req);
  }
  next(ms = 5000): Promise<Msg> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no response within ${ms} ms`));
      }, ms);
      this.waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
    });
  }
  /** Resolves true if nothing arrives within `ms`. */
  async quiet(ms = 400): Promise<boolean> {
    if (this.queue.length > 0) return false;
    try {
      await this.next(ms);
      return false;
    } catch {
      return true;
    }
  }
  close(): void {
    this.call.cancel();
  }
}

const Ads = adsClientConstructor();
const clients: grpc.Client[] = [];
function client(port: number): grpc.Client {
  const c = new Ads(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
  clients.push(c);
  return c;
}

/** A logger whose lines the test can read. */
function captureLog(): { log: pino.Logger; lines: Msg[] } {
  const lines: Msg[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

const decode = (resources: AnyMessage[] | undefined) => (resources ?? []).map((r) => unpackAny<Msg>(r));
const names = (resources: Msg[]) => resources.map((r) => r['name'] ?? r['cluster_name']).sort();
const NODE = { id: 'test-node', cluster: 'test-cluster', locality: { zone: 'z1' }, metadata: { fields: { node_name: { stringValue: 'n1' } } } };

const WEB = (weight: number) => `services:
  - name: web
    vips: [127.100.0.1, "::1"]
    ports: [{port: 80}]
    algorithm: maglev
    affinity: {timeoutSeconds: 30}
    backends:
      - {address: 127.0.0.1, port: 8080, weight: ${weight}}
      - {address: 127.0.0.2, port: 8080, weight: 0}
      - {address: "::1", port: 8080}
`;
const DNS = `services:
  - name: dns
    vips: [127.100.0.53]
    ports: [{port: 53, protocol: udp}, {port: 53, protocol: tcp}]
    backends: [{address: 127.0.0.1, port: 5353}]
`;
const API = `services:
  - name: api
    vips: [127.100.0.2]
    ports: [{port: 80, targetPort: 9000}, {port: 443, targetPort: 9443}]
    algorithm: weighted
    backends: [{address: 127.0.0.1, weight: 3}]
`;

const dir = mkdtempSync(join(tmpdir(), 'sockmesh-cp-test-'));
writeFileSync(join(dir, 'web.yaml'), WEB(1));
writeFileSync(join(dir, 'dns.yml'), DNS);
writeFileSync(join(dir, 'api.json'), JSON.stringify(yamlParse(API))); // the same schema, as JSON
writeFileSync(join(dir, 'README.txt'), 'not config');


const { log, lines } = captureLog();
let cp: RunningControlPlane;
t.before(async () => {
  cp = await startControlPlane({ dir, listen: '127.0.0.1:0', log, debounceMs: 50 });
});
t.teardown(async () => {
  for (const c of clients) c.close();
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('state of the world: listeners, clusters, endpoints, routes; ACK, push, bad file, NACK, stale nonce', async (t) => {
  const s = new RawStream(client(cp.port), 'StreamAggregatedResources');
  t.teardown(() => s.close());

  s.send({ node: NODE, type_url: TYPE.listener, resource_names: [] });
  const lds = await s.next();
  t.equal(lds['type_url'], TYPE.listener);
  t.ok(lds['nonce'], 'nonce set');
  t.equal(lds['version_info'], '1');
  const listeners = decode(lds['resources']);
  t.same(names(listeners), ['127.100.0.1:80/tcp', '127.100.0.2:443/tcp', '127.100.0.2:80/tcp', '127.100.0.53:53/tcp', '127.100.0.53:53/udp', '[::1]:80/tcp', 'api', 'dns', 'web'].sort());
  const web4 = listeners.find((l) => l['name'] === '127.100.0.1:80/tcp')!;
  t.match(web4['address'].socket_address, { address: '127.100.0.1', port_value: 80, protocol: 'TCP' });
  const tcp = web4['filter_chains'][0].filters[0];
  t.equal(tcp.name, 'envoy.filters.network.tcp_proxy');
  t.match(unpackAny(tcp.typed_config), { stat_prefix: 'web', cluster: 'web' });
  const udp = listeners.find((l) => l['name'] === '127.100.0.53:53/udp')!;
  t.equal(udp['address'].socket_address.protocol, 'UDP');
  t.match(unpackAny(udp['listener_filters'][0].typed_config), { stat_prefix: 'dns:53/udp', cluster: 'dns:53/udp' });
  t.equal(listeners.find((l) => l['name'] === '127.100.0.2:443/tcp')!['filter_chains'][0].filters[0].name, 'envoy.filters.network.tcp_proxy');
  const api = listeners.find((l) => l['name'] === 'web')!;
  const hcm = unpackAny<Msg>(api['api_listener'].api_listener);
  t.equal(hcm['rds'].route_config_name, 'web');
  t.equal(hcm['http_filters'][0].name, 'envoy.filters.http.router');
  t.ok(lines.some((l) => l['msg']?.includes('stream (state of the world) opened') && l['nodeInfo']?.id === 'test-node' && l['nodeInfo']?.metadata?.node_name === 'n1'), 'node logged on connect');

  // ACK: nothing is sent again.
  s.send({ node: NODE, type_url: TYPE.listener, resource_names: [], version_info: lds['version_info'], response_nonce: lds['nonce'] });
  t.ok(await s.quiet(), 'ACK does not trigger a resend');

  s.send({ type_url: TYPE.cluster, resource_names: [] });
  const cds = await s.next();
  const clusters = decode(cds['resources']);
  t.same(names(clusters), ['api:443', 'api:80', 'dns:53/tcp', 'dns:53/udp', 'web']);
  const web = clusters.find((c) => c['name'] === 'web')!;
  t.equal(web['type'], 'EDS');
  t.equal(web['lb_policy'], 'MAGLEV');
  t.equal(Number(web['maglev_lb_config'].table_size.value), 509);
  t.match(web['eds_cluster_config'], { eds_config: { ads: {}, resource_api_version: 'V3' } });
  t.equal(web['metadata'].filter_metadata.sockmesh.fields.affinity_timeout_seconds.numberValue, 30);
  t.equal(clusters.find((c) => c['name'] === 'api:80')!['lb_policy'], 'ROUND_ROBIN');
  t.equal(clusters.find((c) => c['name'] === 'dns:53/udp')!['lb_policy'], 'RANDOM');
  s.send({ type_url: TYPE.cluster, resource_names: [], version_info: cds['version_info'], response_nonce: cds['nonce'] });

  s.send({ type_url: TYPE.endpoint, resource_names: ['web', 'api:443', 'nonexistent'] });
  const eds = await s.next();
  const cla = decode(eds['resources']);
  t.same(names(cla), ['api:443', 'web']);
  const webCla = cla.find((c) => c['cluster_name'] === 'web')!;
  const eps = webCla['endpoints'][0].lb_endpoints.map((e: Msg) => [e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value, e.health_status, e.load_balancing_weight.value]);
  t.same(eps, [['127.0.0.1', 8080, 'HEALTHY', 1], ['127.0.0.2', 8080, 'DRAINING', 1], ['::1', 8080, 'HEALTHY', 1]], 'drained = DRAINING weight 1');
  t.match(cla.find((c) => c['cluster_name'] === 'api:443')!['endpoints'][0].lb_endpoints[0].endpoint.address.socket_address, { address: '127.0.0.1', port_value: 9443 });
  s.send({ type_url: TYPE.endpoint, resource_names: ['web', 'api:443', 'nonexistent'], version_info: eds['version_info'], response_nonce: eds['nonce'] });

  s.send({ type_url: TYPE.route, resource_names: ['web'] });
  const rds = await s.next();
  const route = decode(rds['resources'])[0]!;
  t.same(route['virtual_hosts'][0].domains, ['*']);
  t.same(route['virtual_hosts'][0].routes[0].route.cluster, 'web');
  s.send({ type_url: TYPE.route, resource_names: ['web'], version_info: rds['version_info'], response_nonce: rds['nonce'] });
  t.ok(await s.quiet(), 'all ACKed: quiet');

  // A file change: only the endpoints of web change, so only EDS is pushed, with a new version.
  writeFileSync(join(dir, 'web.yaml'), WEB(5));
  const pushed = await s.next();
  t.equal(pushed['type_url'], TYPE.endpoint, 'endpoint change pushes EDS');
  t.equal(pushed['version_info'], '2');
  t.same(names(decode(pushed['resources'])), ['web'], 'only the changed assignment');
  t.equal(decode(pushed['resources'])[0]!['endpoints'][0].lb_endpoints[0].load_balancing_weight.value, 5);
  s.send({ type_url: TYPE.endpoint, resource_names: ['web', 'api:443', 'nonexistent'], version_info: '2', response_nonce: pushed['nonce'] });
  t.ok(await s.quiet(), 'no other type pushed');

  // A bad file: rejected with the file and field logged; the last good state stays.
  const before = cp.snapshotVersion;
  writeFileSync(join(dir, 'web.yaml'), WEB(5).replace('weight: 5', 'wieght: 5'));
  await until('the rejection log', () => lines.some((l) => l['msg']?.startsWith('config change rejected') && l['field'] === 'services[0].backends[0].wieght'));
  const rejected = lines.find((l) => l['field'] === 'services[0].backends[0].wieght')!;
  t.equal(rejected['file'], join(dir, 'web.yaml'));
  t.match(rejected['reason'], /did you mean 'weight'/);
  t.ok(await s.quiet(), 'nothing pushed for a bad file');
  t.equal(cp.snapshotVersion, before);
  const s2 = new RawStream(client(cp.port), 'StreamAggregatedResources');
  s2.send({ node: { id: 'second' }, type_url: TYPE.endpoint, resource_names: ['web'] });
  t.equal(decode((await s2.next())['resources'])[0]!['endpoints'][0].lb_endpoints[0].load_balancing_weight.value, 5, 'a new client gets the last good state');
  s2.close();

  // A duplicate across files is rejected naming both files.
  writeFileSync(join(dir, 'web.yaml'), WEB(5));
  await new Promise((r) => setTimeout(r, 200));
  writeFileSync(join(dir, 'web2.yaml'), WEB(1));
  await until('the duplicate log', () => lines.some((l) => l['file'] === join(dir, 'web2.yaml') && /also defined in .*web\.yaml/.test(l['reason'] ?? '')));
  rmSync(join(dir, 'web2.yaml'));
  await new Promise((r) => setTimeout(r, 200));

  // A change the client NACKs: the NACK is logged with the node id, and nothing is resent.
  writeFileSync(join(dir, 'web.yaml'), WEB(7));
  const p2 = await s.next();
  t.equal(p2['type_url'], TYPE.endpoint);
  s.send({ type_url: TYPE.endpoint, resource_names: ['web', 'api:443', 'nonexistent'], version_info: '2', response_nonce: p2['nonce'], error_detail: { code: 3, message: 'web: endpoints[0]: no thanks' } });
  await until('the NACK log', () => lines.some((l) => l['msg']?.startsWith('NACK') && l['node'] === 'test-node' && l['reason'] === 'web: endpoints[0]: no thanks'));
  t.ok(await s.quiet(), 'NACK does not trigger a resend of the same content');

  // Stale nonce: a request answering an older response is ignored (even with another subscription).
  s.send({ type_url: TYPE.endpoint, resource_names: ['dns:53/tcp'], version_info: '2', response_nonce: pushed['nonce'] });
  t.ok(await s.quiet(), 'stale nonce ignored');
  // The same change with the current nonce is a subscription change: answered.
  s.send({ type_url: TYPE.endpoint, resource_names: ['dns:53/tcp'], version_info: '2', response_nonce: p2['nonce'] });
  t.same(names(decode((await s.next())['resources'])), ['dns:53/tcp']);

  // Unknown type URL and malformed requests: logged, no crash, the stream still works.
  s.send({ type_url: 'type.googleapis.com/envoy.config.secret.v3.Secret', resource_names: [] });
  s.send({ resource_names: ['x'] });
  t.ok(await s.quiet(), 'unknown type and missing type URL get no response');
  t.ok(lines.some((l) => l['msg']?.includes('does not serve')));
  t.ok(lines.some((l) => l['msg']?.includes('without type_url')));
  s.send({ type_url: TYPE.route, resource_names: ['dns'] });
  t.same(names(decode((await s.next())['resources'])), ['dns'], 'stream still serves after hostile requests');
  t.notOk(s.ended);
});

t.test('delta: initial subscription, initial_resource_versions, single endpoint change, removal', async (t) => {
  writeFileSync(join(dir, 'web.yaml'), WEB(1));
  await until('web weight 1', () => {
    const cla = cp.controlPlane.snapshot().type(TYPE.endpoint)!.resources.get('web');
    return !!cla && decode([cla.any])[0]!['endpoints'][0].lb_endpoints[0].load_balancing_weight.value === 1;
  });
  const d = new RawStream(client(cp.port), 'DeltaAggregatedResources');
  t.teardown(() => d.close());
  d.send({ node: { id: 'delta-node' }, type_url: TYPE.cluster });
  const cds = await d.next();
  const got: Msg[] = cds['resources'];
  t.same(got.map((r) => r['name']).sort(), ['api:443', 'api:80', 'dns:53/tcp', 'dns:53/udp', 'web'], 'wildcard: every cluster');
  t.ok(got.every((r) => typeof r['version'] === 'string' && r['version'].length > 0), 'per-resource versions');
  t.equal(unpackAny<Msg>(got.find((r) => r['name'] === 'web')!['resource'])['lb_policy'], 'MAGLEV');
  d.send({ type_url: TYPE.cluster, response_nonce: cds['nonce'] });

  d.send({ type_url: TYPE.endpoint, resource_names_subscribe: ['web', 'dns:53/udp', 'ghost'] });
  const eds = await d.next();
  t.same(eds['resources'].map((r: Msg) => r['name']).sort(), ['dns:53/udp', 'web']);
  t.same(eds['removed_resources'], ['ghost'], 'a subscribed name that does not exist is reported removed');
  d.send({ type_url: TYPE.endpoint, response_nonce: eds['nonce'] });
  t.ok(await d.quiet(), 'ACK: quiet');

  // A reconnecting client that already has everything gets nothing again.
  const versions = Object.fromEntries(got.map((r) => [r['name'], r['version']]));
  const d2 = new RawStream(client(cp.port), 'DeltaAggregatedResources');
  t.teardown(() => d2.close());
  d2.send({ node: { id: 'delta-2' }, type_url: TYPE.cluster, initial_resource_versions: { ...versions, 'web': 'stale-version', 'gone': 'x' } });
  const re = await d2.next();
  t.same(re['resources'].map((r: Msg) => r['name']), ['web'], 'only the resource whose version differs');
  t.same(re['removed_resources'], ['gone'], 'one the client has that no longer exists is removed');
  d2.send({ type_url: TYPE.cluster, response_nonce: re['nonce'] });

  // One endpoint change: only that ClusterLoadAssignment.
  writeFileSync(join(dir, 'web.yaml'), WEB(9));
  const push = await d.next();
  t.equal(push['type_url'], TYPE.endpoint);
  t.same(push['resources'].map((r: Msg) => r['name']), ['web']);
  t.equal(unpackAny<Msg>(push['resources'][0].resource)['endpoints'][0].lb_endpoints[0].load_balancing_weight.value, 9);
  t.same(push['removed_resources'] ?? [], []);
  d.send({ type_url: TYPE.endpoint, response_nonce: push['nonce'] });
  t.ok(await d.quiet(), 'clusters unchanged: nothing else');
  t.ok(await d2.quiet(100), 'a stream not subscribed to endpoints hears nothing');

  // Removing a service: removed_resources for its cluster and its endpoints.
  rmSync(join(dir, 'dns.yml'));
  const r1 = await d.next();
  const r2 = await d.next();
  const byType = new Map([r1, r2].map((r) => [r['type_url'], r]));
  t.same([...byType.get(TYPE.cluster)!['removed_resources']].sort(), ['dns:53/tcp', 'dns:53/udp']);
  t.same(byType.get(TYPE.endpoint)!['removed_resources'], ['dns:53/udp']);
  const r3 = await d2.next();
  t.same([...r3['removed_resources']].sort(), ['dns:53/tcp', 'dns:53/udp'], 'the other stream too');

  // Unsubscribe, then a change to it: nothing.
  d.send({ type_url: TYPE.endpoint, resource_names_unsubscribe: ['web'], response_nonce: byType.get(TYPE.endpoint)!['nonce'] });
  writeFileSync(join(dir, 'web.yaml'), WEB(2));
  t.ok(await d.quiet(600), 'unsubscribed: no push');
  writeFileSync(join(dir, 'dns.yml'), DNS);
});

t.test('many concurrent streams all get the state and every push', async (t) => {
  await until('dns back', () => cp.controlPlane.snapshot().type(TYPE.cluster)!.resources.size === 5);
  const N = 60;
  const streams = Array.from({ length: N }, (_, i) => {
    const s = new RawStream(client(cp.port), i % 2 ? 'StreamAggregatedResources' : 'DeltaAggregatedResources');
    s.send({ node: { id: `n${i}` }, type_url: TYPE.cluster, ...(i % 2 ? { resource_names: [] } : {}) });
    return s;
  });
  t.teardown(() => streams.forEach((s) => s.close()));
  const first = await Promise.all(streams.map((s) => s.next()));
  t.ok(first.every((m) => m['resources'].length >= 5), `${N} streams got every cluster`);
  streams.forEach((s, i) => s.send({ type_url: TYPE.cluster, response_nonce: first[i]!['nonce'], ...(i % 2 ? { resource_names: [], version_info: first[i]!['version_info'] } : {}) }));
  writeFileSync(join(dir, 'extra.yaml'), `services:\n  - name: extra\n    vips: [127.100.0.9]\n    ports: [{port: 80}]\n    backends: []\n`);
  const pushes = await Promise.all(streams.map((s) => s.next()));
  t.ok(pushes.every((m, i) => (i % 2 ? m['resources'].length === 6 : m['resources'].length === 1 && m['resources'][0].name === 'extra')), 'every stream got the push (SotW: all 6, delta: the new one)');
  rmSync(join(dir, 'extra.yaml'));
});

t.test('too many names on one stream: ignored, stream stays up', async (t) => {
  const small = await startControlPlaneFromModel({ services: [] }, { listen: '127.0.0.1:0', maxNames: 10 });
  t.teardown(() => small.close());
  const s = new RawStream(client(small.port), 'StreamAggregatedResources');
  t.teardown(() => s.close());
  s.send({ type_url: TYPE.endpoint, resource_names: Array.from({ length: 11 }, (_, i) => `c${i}`) });
  t.ok(await s.quiet(300), 'over the cap: ignored');
  s.send({ type_url: TYPE.endpoint, resource_names: ['c1'] });
  t.same((await s.next())['resources'] ?? [], [], 'then a normal request is answered');
});

/** 10,000 services, 10 endpoints each. */
function bigModel(): Model {
  const services: Service[] = [];
  for (let i = 0; i < 10_000; i++) {
    services.push({
      name: `svc-${i}`, algorithm: 'weighted', affinityTimeoutSeconds: 0, maglevTableSize: 1021,
      frontends: [{
        vip: `10.${(i >> 8) & 255}.${i & 255}.1`, family: 4, port: 80, protocol: 'tcp',
        backends: Array.from({ length: 10 }, (_, k) => ({ address: `10.200.${i & 255}.${k + 1}`, family: 4 as const, port: 8000 + (i >> 8), weight: 1 })),
      }],
    });
  }
  return { services };
}

t.test('scale: 10,000 services / 100,000 endpoints as one full state', async (t) => {
  const model = bigModel();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const snapshot = Snapshot.empty();
  snapshot.apply(model);
  const buildMs = performance.now() - t0;
  const cpu1 = process.cpuUsage(cpu0);
  let bytes = 0;
  const t1 = performance.now();
  for (const url of Object.values(TYPE)) {
    const st = snapshot.type(url)!;
    bytes += encodeSotwResponse(st.version, url, 'n', st.resources.values()).length;
  }
  const respMs = performance.now() - t1;
  t.comment(`encode full state: ${buildMs.toFixed(0)} ms (cpu ${((cpu1.user + cpu1.system) / 1000).toFixed(0)} ms); ` +
    `full-state responses for a new stream: ${respMs.toFixed(1)} ms, ${(bytes / 1048576).toFixed(1)} MiB`);
  t.equal(snapshot.type(TYPE.endpoint)!.resources.size, 10_000);
  // Cheap = the cached resources are encoded, nothing is built again: a rebuild would cost about buildMs. The fixed
  // 500 ms alone failed at load 11 on 2 CPUs (926 ms, 89 quiet) although the build was stretched as much, so the
  // bound is 500 ms or a third of this run's build, whichever is larger (quiet: 88 ms against a 1,095 ms build).
  t.ok(respMs < Math.max(500, buildMs / 3), `serving a full state to one more stream is cheap (${respMs.toFixed(0)} ms, build ${buildMs.toFixed(0)} ms)`);

  // Over the wire, with one endpoint change after.
  const big = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0' });
  t.teardown(() => big.close());
  const s = new RawStream(client(big.port), 'StreamAggregatedResources');
  t.teardown(() => s.close());
  const t2 = performance.now();
  s.send({ node: { id: 'big' }, type_url: TYPE.endpoint, resource_names: model.services.map((x) => x.name) });
  const eds = await s.next(20_000);
  t.comment(`EDS full state over gRPC (10,000 assignments) received and decoded in ${(performance.now() - t2).toFixed(0)} ms`);
  t.equal(eds['resources'].length, 10_000);
  s.send({ type_url: TYPE.endpoint, resource_names: model.services.map((x) => x.name), version_info: eds['version_info'], response_nonce: eds['nonce'] });
  const svc = model.services[42]!;
  const changed: Service = { ...svc, frontends: [{ ...svc.frontends[0]!, backends: svc.frontends[0]!.backends.slice(1) }] };
  const services = model.services.slice();
  services[42] = changed;
  const t3 = performance.now();
  big.setModel({ services });
  const one = await s.next();
  t.comment(`one endpoint change: setModel to response received ${(performance.now() - t3).toFixed(1)} ms`);
  t.same(decode(one['resources']).map((r) => r['cluster_name']), ['svc-42']);
});
