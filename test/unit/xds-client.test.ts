// The xDS source against a scripted ADS server over real gRPC on 127.0.0.1: full sync, ACK/NACK contents, warming,
// incremental change, removal, reconnect with backoff (delta: initial_resource_versions), hostile responses.
import t, { type Test } from 'tap';
import pino from 'pino';
import { XdsSource, type XdsSourceOptions } from '../../agent/sources/xds/source.js';
import { TYPE } from '../../xds/envoy.js';
import { countRepeated, packAny } from '../../xds/protos.js';
import type { Model } from '../../agent/model/types.js';

const log = pino({ level: 'silent' });

import { FakeAds, tcpListener, edsCluster, cla, any, sotw, delta, FILTER, TCP, serveWeb } from '../lib/ads.js';

function source(port: number, mode: 'sotw' | 'delta', applied: Model[], extra: Partial<XdsSourceOptions> = {}): XdsSource {
  return new XdsSource({
    address: `127.0.0.1:${port}`, mode, log,
    node: { id: 'node-1', cluster: 'sockmesh', metadata: { node_name: 'n1', agent_version: '0.1.0' } },
    apply: (m) => { applied.push(m); return null; },
    backoff: { initialMs: 50, maxMs: 200 },
    ...extra,
  });
}

const wait = async (cond: () => boolean, ms = 3000) => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

const webModel = (backends: [string, number, number][]) => ({
  services: [{
    name: 'web', algorithm: 'weighted', affinityTimeoutSeconds: 0, maglevTableSize: backends.length > 2 ? 509 : 251,
    frontends: [{ vip: '127.77.1.1', family: 4, port: 80, protocol: 'tcp', backends: backends.map(([address, port, weight]) => ({ address, family: 4, port, weight })) }],
  }],
});

t.test('SotW: warming, full sync, ACK, NACK, incremental change, removal', async (t) => {
  const ads = new FakeAds();
  await ads.start();
  const applied: Model[] = [];
  const src = source(ads.port, 'sotw', applied);
  t.teardown(async () => { await src.stop(); ads.kill(); });
  src.start();
  const s = await ads.stream(0);

  const lds = await s.next(TYPE.listener);
  t.equal(lds.node?.id, 'node-1', 'node identity in the first request');
  t.same(lds.node.metadata.fields.agent_version, { stringValue: '0.1.0', kind: 'stringValue' });
  t.same(lds.resource_names ?? [], [], 'LDS is a wildcard subscription');

  s.send(sotw(TYPE.listener, '1', 'l1', [tcpListener('127.77.1.1', 80, 'web')]));
  const ldsAck = await s.next(TYPE.listener);
  t.equal(ldsAck.version_info, '1', 'ACK carries the version');
  t.equal(ldsAck.response_nonce, 'l1', 'ACK carries the nonce');
  t.notOk(ldsAck.error_detail, 'no error in an ACK');
  const cds = await s.next(TYPE.cluster);
  t.same(cds.resource_names, ['web'], 'CDS for the cluster the listener references');
  t.equal(applied.length, 0, 'warming: nothing applied with the cluster missing');

  s.send(sotw(TYPE.cluster, '1', 'c1', [edsCluster('web')]));
  t.equal((await s.next(TYPE.cluster)).response_nonce, 'c1');
  const eds = await s.next(TYPE.endpoint);
  t.same(eds.resource_names, ['web']);
  t.equal(applied.length, 0, 'warming: nothing applied with the endpoints missing');

  s.send(sotw(TYPE.endpoint, '1', 'e1', [cla('web', [['127.0.0.1', 8080, 1], ['127.0.0.2', 8080, 3]])]));
  t.equal((await s.next(TYPE.endpoint)).version_info, '1');
  t.equal(applied.length, 1, 'apply called once for the full state');
  t.same(applied[0], webModel([['127.0.0.1', 8080, 1], ['127.0.0.2', 8080, 3]]));
  const st = src.status();
  t.equal(st.state, 'connected');
  t.same(Object.keys(st.acked).sort(), [TYPE.cluster, TYPE.endpoint, TYPE.listener].sort());
  t.equal(st.acked[TYPE.endpoint]!.resources, 1);

  // NACK: a non-prime maglev table size. Previous version, error_detail naming resource and field, nothing applied.
  s.send(sotw(TYPE.cluster, '2', 'c2', [edsCluster('web', 'MAGLEV', { maglev_lb_config: { table_size: { value: 1000 } } })]));
  const nack = await s.next(TYPE.cluster);
  t.equal(nack.version_info, '1', 'NACK carries the previous version');
  t.equal(nack.response_nonce, 'c2');
  t.equal(nack.error_detail?.code, 3, 'INVALID_ARGUMENT');
  t.match(nack.error_detail?.message, /cluster 'web': maglev_lb_config\.table_size: must be a prime, got 1000/);
  t.equal(applied.length, 1, 'a NACKed update applies nothing');
  t.equal(src.status().lastNack?.version, '2');

  // An unknown listener filter: NACK naming the listener and the field.
  s.send(sotw(TYPE.listener, '2', 'l2', [{
    ...tcpListener('127.77.1.1', 80, 'web'),
    filter_chains: [{ filters: [{ name: 'x', typed_config: packAny(TYPE.endpoint, { cluster_name: 'x' }) }] }],
  }]));
  const lnack = await s.next(TYPE.listener);
  t.equal(lnack.version_info, '1');
  t.match(lnack.error_detail?.message, /listener '127\.77\.1\.1:80\/tcp': filter_chains\[0\]\.filters\[0\]\.typed_config: unsupported filter type/);

  // Incremental endpoint change; the cluster cache still holds the pre-NACK version (round robin -> weighted).
  s.send(sotw(TYPE.endpoint, '2', 'e2', [cla('web', [['127.0.0.1', 8080, 1], ['127.0.0.2', 8080, 3], ['127.0.0.3', 8081, 0]])]));
  t.equal((await s.next(TYPE.endpoint)).version_info, '2');
  t.equal(applied.length, 2);
  t.same(applied[1], webModel([['127.0.0.1', 8080, 1], ['127.0.0.2', 8080, 3], ['127.0.0.3', 8081, 0]]));

  // A second listener with a new cluster: the first keeps working, the new one waits for its cluster.
  s.send(sotw(TYPE.listener, '3', 'l3', [tcpListener('127.77.1.1', 80, 'web'), tcpListener('127.77.1.2', 53, 'dns')]));
  t.equal((await s.next(TYPE.listener)).version_info, '3');
  t.same((await s.next(TYPE.cluster)).resource_names.sort(), ['dns', 'web']);
  t.equal(applied.length, 2, 'model unchanged while the new listener warms');
  t.match(src.status().warming, [/listener '127\.77\.1\.2:53\/tcp' waits for cluster 'dns'/]);
  s.send(sotw(TYPE.cluster, '3', 'c3', [edsCluster('web'), edsCluster('dns', 'RANDOM')]));
  t.same((await s.next(TYPE.endpoint)).resource_names?.sort(), ['dns', 'web'].sort());
  s.send(sotw(TYPE.endpoint, '3', 'e3', [cla('dns', [['127.0.0.1', 5353]])]));
  await wait(() => applied.length === 3);
  t.same(applied[2]!.services.map((x) => x.name), ['web', 'dns']);
  t.equal(applied[2]!.services[1]!.algorithm, 'random');

  // Removal: the listener goes, its service goes; CDS shrinks.
  s.send(sotw(TYPE.listener, '4', 'l4', [tcpListener('127.77.1.2', 53, 'dns')]));
  await wait(() => applied.length === 4);
  t.same(applied[3]!.services.map((x) => x.name), ['dns']);
  t.same((await s.next(TYPE.cluster)).resource_names, ['dns'], 'unsubscribed from the removed cluster');
});

t.test('delta: full sync, server killed (backoff, static state), restart with initial_resource_versions', async (t) => {
  let ads = new FakeAds();
  await ads.start();
  const port = ads.port;
  const applied: Model[] = [];
  const src = source(port, 'delta', applied);
  t.teardown(async () => { await src.stop(); ads.kill(); });
  src.start();
  let s = await ads.stream(0);
  const lds = await s.next(TYPE.listener);
  t.equal(lds.node?.id, 'node-1');
  t.same(lds.resource_names_subscribe ?? [], [], 'legacy wildcard');
  s.send(delta(TYPE.listener, 'n1', [['127.77.1.1:80/tcp', 'lv1', tcpListener('127.77.1.1', 80, 'web')]]));
  t.equal((await s.next(TYPE.listener)).response_nonce, 'n1');
  const cds = await s.next(TYPE.cluster);
  t.same(cds.resource_names_subscribe, ['web']);
  s.send(delta(TYPE.cluster, 'n2', [['web', 'cv1', edsCluster('web')]]));
  t.same((await s.next(TYPE.endpoint)).resource_names_subscribe, ['web']);
  s.send(delta(TYPE.endpoint, 'n3', [['web', 'ev1', cla('web', [['127.0.0.1', 8080, 1], ['127.0.0.2', 8080, 3]])]]));
  const ack = await s.next(TYPE.endpoint);
  t.equal(ack.response_nonce, 'n3');
  t.notOk(ack.error_detail);
  t.equal(applied.length, 1);

  // Endpoint change alone.
  s.send(delta(TYPE.endpoint, 'n4', [['web', 'ev2', cla('web', [['127.0.0.1', 8080, 1]])]]));
  await wait(() => applied.length === 2);
  t.same(applied[1], webModel([['127.0.0.1', 8080, 1]]));

  // The control plane dies: nothing is applied, the status says why, backoff.
  ads.kill();
  await wait(() => src.status().state !== 'connected');
  await wait(() => src.status().lastError !== null && src.status().reconnects >= 2, 5000);
  t.equal(applied.length, 2, 'the last good state stays');
  t.ok(src.status().lastError, `lastError: ${src.status().lastError}`);

  // It comes back on the same port: the source resubscribes announcing what it has.
  ads = new FakeAds();
  await ads.start(port);
  s = await ads.stream(0);
  const relds = await s.next(TYPE.listener);
  t.same(relds.initial_resource_versions, { '127.77.1.1:80/tcp': 'lv1' });
  const recds = await s.next(TYPE.cluster);
  t.same(recds.resource_names_subscribe, ['web']);
  t.same(recds.initial_resource_versions, { web: 'cv1' });
  const reeds = await s.next(TYPE.endpoint);
  t.same(reeds.initial_resource_versions, { web: 'ev2' });
  t.ok(reeds.node?.id, 'node identity on the new stream');
  // A server that had everything already sends an empty response; nothing changes.
  s.send(delta(TYPE.endpoint, 'm1', []));
  await s.next(TYPE.endpoint);
  await wait(() => src.status().state === 'connected');
  t.equal(applied.length, 2, 'no re-apply after the reconnect');
  // Removal through removed_resources.
  s.send(delta(TYPE.listener, 'm2', [], ['127.77.1.1:80/tcp']));
  await wait(() => applied.length === 3);
  t.same(applied[2], { services: [] });
  const unsub = await s.next(TYPE.cluster);
  t.same(unsub.resource_names_unsubscribe, ['web']);
});

t.test('hostile responses: unknown type, repeated nonce, garbage Any, huge response', async (t) => {
  const applied: Model[] = [];
  const { ads, src, s } = await synced(t, applied, { limits: { maxResources: 1000, maxBytes: 1024 * 1024 } });

  s.send({ version_info: '9', type_url: 'type.googleapis.com/evil.Thing', nonce: 'x1', resources: [] });
  t.same(await s.quiet(), [], 'unknown type URL: ignored, not answered');

  s.send(sotw(TYPE.endpoint, '1', 'e1', [cla('web', [['127.0.0.1', 8080, 1]])]));
  const again = await s.next(TYPE.endpoint);
  t.equal(again.response_nonce, 'e1', 'a response repeating the last nonce is answered');
  t.equal(again.version_info, '1');
  t.notOk(again.error_detail, 'ACKed');
  t.equal(applied.length, 1, 'nothing changed, nothing applied');

  s.send({ version_info: '2', type_url: TYPE.endpoint, nonce: 'e2', resources: [{ type_url: TYPE.endpoint, value: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]) }] });
  const bad = await s.next(TYPE.endpoint);
  t.equal(bad.version_info, '1');
  t.match(bad.error_detail?.message, /resources\[0\].*cannot decode/);

  s.send({ version_info: '3', type_url: TYPE.endpoint, nonce: 'e3', resources: [{ type_url: TYPE.cluster, value: Buffer.alloc(0) }] });
  t.match((await s.next(TYPE.endpoint)).error_detail?.message, /type .*Cluster in a .*ClusterLoadAssignment response/);

  const huge = cla('web', Array.from({ length: 40_000 }, (_, i) => [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 8080, 1] as [string, number, number]));
  s.send(sotw(TYPE.endpoint, '4', 'e4', [huge]));
  t.match((await s.next(TYPE.endpoint)).error_detail?.message, /response too large: \d+ bytes/);
  s.send({ version_info: '5', type_url: TYPE.endpoint, nonce: 'e5', resources: any(TYPE.endpoint, Array.from({ length: 1001 }, () => cla('web', []))) });
  t.match((await s.next(TYPE.endpoint)).error_detail?.message, /1001 resources/);

  t.equal(applied.length, 1, 'nothing applied from hostile input');
  const st = src.status();
  t.equal(st.state, 'connected');
  t.equal(st.acked[TYPE.endpoint]!.version, '1');
  t.equal(st.reconnects, 0, 'no reconnect needed');

  // Still healthy: a good update goes through.
  s.send(sotw(TYPE.endpoint, '6', 'e6', [cla('web', [['127.0.0.2', 8080, 1]])]));
  await wait(() => applied.length === 2);
  t.equal(applied[1]!.services[0]!.frontends[0]!.backends[0]!.address, '127.0.0.2');

  // A memory bomb: 5,000 empty resource entries (2 bytes each on the wire) against a limit of 1,000 is refused
  // before decoding (over 4x the limit): the stream fails, nothing changes, the client reconnects.
  const bomb = Buffer.alloc(5000 * 2);
  for (let i = 0; i < 5000; i++) bomb[2 * i] = 0x12; // field 2 (resources), length 0
  t.equal(countRepeated(bomb, new Set([2])), 5000, 'counted on the wire');
  s.send({ version_info: '7', type_url: TYPE.endpoint, nonce: 'e7', resources: Array.from({ length: 5000 }, () => ({})) });
  await wait(() => src.status().reconnects >= 1 || src.status().state !== 'connected');
  t.match(String(src.status().lastError), /refused before decoding/, `stream failed: ${src.status().lastError}`);
  t.equal(applied.length, 2, 'nothing applied');
  await ads.stream(1);

});

t.test('apply refusing a model: NACK with its reason, state not advanced', async (t) => {
  const ads = new FakeAds();
  await ads.start();
  const applied: Model[] = [];
  let refuse = true;
  const src = source(ads.port, 'delta', applied, { apply: (m) => (refuse ? 'datapath full' : (applied.push(m), null)) });
  t.teardown(async () => { await src.stop(); ads.kill(); });
  src.start();
  const s = await ads.stream(0);
  await s.next(TYPE.listener);
  s.send(delta(TYPE.listener, 'n1', [['127.77.1.1:80/tcp', 'lv1', tcpListener('127.77.1.1', 80, 'web')]]));
  await s.next(TYPE.cluster);
  s.send(delta(TYPE.cluster, 'n2', [['web', 'cv1', edsCluster('web')]]));
  await s.next(TYPE.endpoint);
  s.send(delta(TYPE.endpoint, 'n3', [['web', 'ev1', cla('web', [['127.0.0.1', 8080, 1]])]]));
  const nack = await s.next(TYPE.endpoint);
  t.match(nack.error_detail?.message, /datapath full/);
  t.equal(src.status().synced, false);
  refuse = false;
  s.send(delta(TYPE.endpoint, 'n4', [['web', 'ev2', cla('web', [['127.0.0.1', 8080, 1]])]]));
  await wait(() => applied.length === 1);
  t.equal(src.status().synced, true);
});

/** A synced SotW source with one service 'web' (127.77.1.1:80 -> 127.0.0.1:8080). */
async function synced(t: Test, applied: Model[], extra: Partial<XdsSourceOptions> = {}) {
  const ads = new FakeAds();
  await ads.start();
  const src = source(ads.port, 'sotw', applied, extra);
  t.teardown(async () => { await src.stop(); ads.kill(); });
  src.start();
  const s = await ads.stream(0);
  await serveWeb(s);
  await wait(() => applied.length === 1);
  await s.quiet(100);
  return { ads, src, s };
}

t.test('an HTTP listener whose routes name no cluster is skipped and reported, not a stream restart', async (t) => {
  const applied: Model[] = [];
  const { src, s } = await synced(t, applied);
  const hcm = packAny(FILTER.httpConnectionManager, {
    stat_prefix: 'http', rds: { route_config_name: 'redirects', config_source: { ads: {} } },
    http_filters: [{ name: 'envoy.filters.http.router', typed_config: packAny(FILTER.router, {}) }],
  });
  const httpListener = {
    name: 'redirector', address: { socket_address: { address: '127.77.1.9', port_value: 80, protocol: TCP } },
    filter_chains: [{ filters: [{ name: 'hcm', typed_config: hcm }] }],
  };
  s.send(sotw(TYPE.listener, '2', 'l2', [tcpListener('127.77.1.1', 80, 'web'), httpListener]));
  t.notOk((await s.next(TYPE.listener)).error_detail, 'LDS ACKed');
  t.same((await s.next(TYPE.route)).resource_names, ['redirects']);
  s.send(sotw(TYPE.route, '1', 'r1', [{ name: 'redirects', virtual_hosts: [{ name: 'all', domains: ['*'], routes: [
    { match: { prefix: '/' }, redirect: { path_redirect: '/new' } },
    { match: { prefix: '/x' }, direct_response: { status: 404 } },
  ] }] }]));
  const ack = await s.next(TYPE.route);
  t.equal(ack.response_nonce, 'r1');
  t.notOk(ack.error_detail, 'RDS ACKed: the listener is valid xDS, just nothing for L4');
  const st = src.status();
  t.equal(st.reconnects, 0, 'no stream restart');
  t.equal(st.state, 'connected');
  t.match(st.unsupported.join('\n'), /listener 'redirector': its routes name no cluster \(skipped\)/);
  t.match(st.unsupported.join('\n'), /redirect route not applied/);
  t.same(st.warming, []);
  t.equal(applied.length, 1, 'the model (web only) is unchanged');
  t.same(await s.quiet(), [], 'no resend loop');
});

t.test('150,000 endpoints in one cluster: translated without overflowing the stack', async (t) => {
  const applied: Model[] = [];
  const { src, s } = await synced(t, applied);
  const eps = Array.from({ length: 150_000 }, (_, i) => [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 8080, 1 + (i % 7)] as [string, number, number]);
  s.send(sotw(TYPE.endpoint, '2', 'e2', [cla('web', eps)]));
  const r = await s.next(TYPE.endpoint, 60_000);
  t.equal(r.response_nonce, 'e2');
  t.notOk(r.error_detail, String(r.error_detail?.message));
  t.equal(applied.length, 2);
  t.equal(applied[1]!.services[0]!.frontends[0]!.backends.length, 150_000);
  t.equal(src.status().reconnects, 0);
});

t.test('any error while translating is NACKed (rolled back), never a stream restart', async (t) => {
  const applied: Model[] = [];
  const { src, s } = await synced(t, applied);
  // Stand-in for a bug of ours on input nobody foresaw: the model builder throws something that is no ConfigError.
  const builder = (src as unknown as { builder: { update: (...a: unknown[]) => unknown } }).builder;
  const real = builder.update;
  builder.update = () => { throw new RangeError('Maximum call stack size exceeded'); };
  s.send(sotw(TYPE.endpoint, '2', 'e2', [cla('web', [['127.0.0.2', 8080, 1]])]));
  const nack = await s.next(TYPE.endpoint);
  t.equal(nack.response_nonce, 'e2');
  t.equal(nack.version_info, '1', 'previous version');
  t.match(nack.error_detail?.message, /internal error.*Maximum call stack size exceeded/);
  t.same(await s.quiet(), [], 'no restart, nothing resent');
  t.equal(src.status().reconnects, 0);
  t.equal(src.status().state, 'connected');
  builder.update = real;
  // Rolled back: the same resource (digest) is not taken for already applied; it goes through now.
  s.send(sotw(TYPE.endpoint, '3', 'e3', [cla('web', [['127.0.0.2', 8080, 1]])]));
  await wait(() => applied.length === 2);
  t.equal(applied[1]!.services[0]!.frontends[0]!.backends[0]!.address, '127.0.0.2');
});

t.test('backoff grows against a server that answers once (rejected) and resets each stream', async (t) => {
  const ads = new FakeAds();
  await ads.start();
  const applied: Model[] = [];
  const src = source(ads.port, 'sotw', applied, { backoff: { initialMs: 50, maxMs: 5000 } });
  let stop = false;
  t.teardown(async () => { stop = true; await src.stop(); ads.kill(); });
  src.start();
  const started = Date.now();
  // Each stream: one response that is NACKed, then the server closes the stream.
  void (async () => {
    for (let i = 0; !stop; i++) {
      const s = await ads.stream(i, 10_000).catch(() => undefined);
      if (!s || stop) return;
      await s.next(TYPE.listener).catch(() => undefined);
      s.send({ version_info: '1', type_url: TYPE.listener, nonce: `x${i}`, resources: [{ type_url: TYPE.cluster, value: Buffer.alloc(0) }] });
      await s.next(TYPE.listener).catch(() => undefined); // the NACK
      s.call.end();
    }
  })();
  await new Promise((r) => setTimeout(r, 2000));
  const streams = ads.streams.length;
  // Equal jitter: delays of at least 25, 50, 100, 200, 400, 800 ms... -> at most ~7 streams in 2 s. Reset to the
  // initial 50 ms on each first message it was 25-50 ms apart: dozens.
  t.ok(streams >= 3, `reconnected (${streams} streams)`);
  t.ok(streams <= 8, `backoff grew: ${streams} streams in ${Date.now() - started} ms`);
  t.match(src.status().lastNack?.reason ?? '', /type .*Cluster in a .*Listener response/);
});

t.test('an accepted response resets the backoff', async (t) => {
  const applied: Model[] = [];
  const { ads, src } = await synced(t, applied, { backoff: { initialMs: 50, maxMs: 5000 } });
  for (const s of ads.streams) s.call.end(); // the stream ends after accepted responses: retried at the initial delay
  await wait(() => ads.streams.length === 2, 1000);
  t.equal(src.status().reconnects, 1);
});

t.test('a NACK reason lists the first 20 errors, counts the rest, and stays under 4 KiB', async (t) => {
  const applied: Model[] = [];
  const { src, s } = await synced(t, applied);
  const bad = Array.from({ length: 500 }, (_, i) => ({ type_url: TYPE.cluster, value: Buffer.from(`x${'y'.repeat(200)}${i}`) }));
  s.send({ version_info: '2', type_url: TYPE.endpoint, nonce: 'e2', resources: bad });
  const nack = await s.next(TYPE.endpoint);
  const msg: string = nack.error_detail?.message ?? '';
  t.ok(msg.length <= 4096, `reason is ${msg.length} chars`);
  t.match(msg, /^resources\[0\]: type .*Cluster in a/);
  t.match(msg, /and 480 more$/);
  t.equal((msg.match(/resources\[/g) ?? []).length, 20);
  t.equal(src.status().lastNack?.reason, msg, 'status() holds the same capped reason');

  // A reason made elsewhere (apply's message) is capped too.
  const big = 'z'.repeat(100_000);
  const applied2: Model[] = [];
  const refuse = (m: Model) => m.services[0]?.frontends[0]?.backends[0]?.address === '127.0.0.3';
  const { src: src2, s: s2 } = await synced(t, applied2, { apply: (m) => (refuse(m) ? big : (applied2.push(m), null)) });
  s2.send(sotw(TYPE.endpoint, '2', 'e2', [cla('web', [['127.0.0.3', 8080, 1]])]));
  const n2 = await s2.next(TYPE.endpoint);
  t.ok((n2.error_detail?.message ?? '').length <= 4096, 'apply reason capped on the wire');
  t.ok((src2.status().lastNack?.reason ?? '').length <= 4096, 'and in status()');
});

t.test('initial fetch timeout: a cluster that never arrives does not keep a new node empty', async (t) => {
  const ads = new FakeAds();
  await ads.start();
  const applied: Model[] = [];
  const src = source(ads.port, 'sotw', applied, { initialFetchTimeoutMs: 300 });
  t.teardown(async () => { await src.stop(); ads.kill(); });
  src.start();
  const s = await ads.stream(0);
  await s.next(TYPE.listener);
  s.send(sotw(TYPE.listener, '1', 'l1', [tcpListener('127.77.1.1', 80, 'web'), tcpListener('127.77.1.2', 80, 'ghost')]));
  await s.next(TYPE.cluster);
  s.send(sotw(TYPE.cluster, '1', 'c1', [edsCluster('web')])); // 'ghost' never comes
  await s.next(TYPE.endpoint);
  s.send(sotw(TYPE.endpoint, '1', 'e1', [cla('web', [['127.0.0.1', 8080, 1]])]));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(applied.length, 0, 'waiting for the complete state first');
  await wait(() => applied.length === 1);
  t.same(applied[0]!.services.map((x) => x.name), ['web'], 'after the timeout: what resolved is applied');
  t.equal(src.status().synced, true);
  t.ok(src.status().warming.length > 0, `still warming: ${src.status().warming.join(', ')}`);
  // The missing cluster arrives later: its service follows.
  s.send(sotw(TYPE.cluster, '2', 'c2', [edsCluster('web'), edsCluster('ghost')]));
  await s.next(TYPE.endpoint);
  s.send(sotw(TYPE.endpoint, '2', 'e2', [cla('web', [['127.0.0.1', 8080, 1]]), cla('ghost', [['127.0.0.1', 9090, 1]])]));
  await wait(() => applied.length === 2);
  t.same(applied[1]!.services.map((x) => x.name).sort(), ['ghost', 'web']);
});
