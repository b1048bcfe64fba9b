// Active health checks against real loopback servers: TCP accept/refuse, HTTP statuses, gRPC health SERVING and
// NOT_SERVING (a real @grpc/grpc-js server with raw serializers), timeouts, thresholds of consecutive results, and
// model updates that keep the state of backends that stay.
import t from 'tap';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { probe, encodeHealthRequest, decodeHealthResponse } from '../../agent/health/probes.js';
import { HealthChecker } from '../../agent/health/checker.js';
import { BackendStates } from '../../agent/health/states.js';
import type { HealthCheck } from '../../agent/model/l7.js';
import type { Model, Service } from '../../agent/model/types.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Poll until pred holds (true) or the time is up (false): generous bounds for a loaded machine. */
async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(20)) if (pred()) return true;
  return pred();
}
const target = (port: number) => ({ address: '127.0.0.1', port, family: 4 as const });
const tcpCheck: HealthCheck = { kind: 'tcp', intervalMs: 1000, timeoutMs: 1000, healthyThreshold: 1, unhealthyThreshold: 1 };

async function listen<S extends TcpServer | HttpServer>(s: S): Promise<number> {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return (s.address() as AddressInfo).port;
}
function closeServer(s: TcpServer | HttpServer, sockets?: Set<Socket>): Promise<void> {
  for (const c of sockets ?? []) c.destroy();
  if ('closeAllConnections' in s) s.closeAllConnections();
  return new Promise((r) => s.close(() => r()));
}
/** A port nothing listens on (bound, then closed). */
async function deadPort(): Promise<number> {
  const s = createTcpServer();
  const port = await listen(s);
  await closeServer(s);
  return port;
}

/** An HTTP server answering each request with the next status of `script` (the last one repeats). */
async function scriptedHttp(script: number[]) {
  const seen: IncomingMessage[] = [];
  let i = 0;
  const server = createHttpServer((req, res) => {
    seen.push(req);
    const status = script[Math.min(i++, script.length - 1)]!;
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end(`status ${status}\n`);
  });
  const port = await listen(server);
  return { server, port, seen, get count() { return i; }, close: () => closeServer(server) };
}

// ---- a gRPC health server with @grpc/grpc-js and raw (Buffer) serializers: no .proto anywhere ----

/** HealthCheckRequest.service, decoded here independently of the code under test. */
function requestedService(b: Buffer): string {
  if (b.length === 0) return '';
  if (b[0] !== 0x0a) throw new Error(`unexpected tag ${b[0]}`);
  let len = 0, shift = 0, i = 1;
  for (;;) { const x = b[i++]!; len |= (x & 0x7f) << shift; if (x < 0x80) break; shift += 7; }
  return b.subarray(i, i + len).toString('utf8');
}

async function grpcHealthServer(statuses: Record<string, number>, delayMs = 0) {
  const raw = (x: Buffer): Buffer => x;
  const server = new grpc.Server();
  const asked: string[] = [];
  server.addService({
    Check: { path: '/grpc.health.v1.Health/Check', requestStream: false, responseStream: false,
      requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw },
  } as grpc.ServiceDefinition, {
    Check: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const name = requestedService(call.request);
      asked.push(name);
      setTimeout(() => {
        if (!(name in statuses)) return cb({ code: grpc.status.NOT_FOUND, details: `unknown service ${name}` });
        cb(null, Buffer.from([0x08, statuses[name]!]));
      }, delayMs);
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  return { port, asked, statuses, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
}

t.test('tcp: accepted is healthy, refused says ECONNREFUSED', async (t) => {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const s = createTcpServer((c) => { accepted++; sockets.add(c); });
  const port = await listen(s);
  t.teardown(() => closeServer(s, sockets));
  t.same(await probe(target(port), tcpCheck), { healthy: true, reason: '' });
  await sleep(50);
  t.equal(accepted, 1, 'the probe really connected');
  t.same(await probe(target(await deadPort()), tcpCheck), { healthy: false, reason: 'connect ECONNREFUSED' });
});

t.test('http: GET path with a Host header on a closed connection; statuses decide', async (t) => {
  const h = await scriptedHttp([200, 503, 204, 302]);
  t.teardown(() => h.close());
  const check: HealthCheck = { ...tcpCheck, kind: 'http', path: '/healthz?full=1' };
  t.same(await probe(target(h.port), check), { healthy: true, reason: '' }, '200 is healthy');
  const req = h.seen[0]!;
  t.equal(req.method, 'GET');
  t.equal(req.url, '/healthz?full=1');
  t.equal(req.headers.host, `127.0.0.1:${h.port}`);
  t.equal(req.headers.connection, 'close');
  t.equal(req.httpVersion, '1.1');
  t.same(await probe(target(h.port), check), { healthy: false, reason: 'http 503' });
  // expectedStatuses narrows what counts: 204 is outside 200-200.
  t.same(await probe(target(h.port), { ...check, expectedStatuses: [[200, 200]] }), { healthy: false, reason: 'http 204' });
  t.same(await probe(target(h.port), { ...check, expectedStatuses: [[200, 299], [302, 302]] }), { healthy: true, reason: '' }, '302 in a second range');
  t.same(await probe(target(await deadPort()), check), { healthy: false, reason: 'connect ECONNREFUSED' });
});

t.test('http over IPv6: the Host header brackets the address', async (t) => {
  let host = '';
  const server = createHttpServer((req, res) => { host = String(req.headers.host); res.end('ok'); });
  await new Promise<void>((r) => server.listen(0, '::1', () => r()));
  t.teardown(() => closeServer(server));
  const port = (server.address() as AddressInfo).port;
  t.same(await probe({ address: '::1', port, family: 6 }, { ...tcpCheck, kind: 'http', path: '/' }), { healthy: true, reason: '' });
  t.equal(host, `[::1]:${port}`);
  t.same(await probe({ address: '::1', port, family: 6 }, tcpCheck), { healthy: true, reason: '' }, 'tcp over IPv6');
});

t.test('http and tcp-level timeouts: a server that accepts and never answers', async (t) => {
  const sockets = new Set<Socket>();
  let closed = 0;
  const s = createTcpServer((c) => { sockets.add(c); c.on('error', () => {}); c.on('close', () => closed++); c.resume(); });
  const port = await listen(s);
  t.teardown(() => closeServer(s, sockets));
  const t0 = Date.now();
  const r = await probe(target(port), { ...tcpCheck, kind: 'http', timeoutMs: 300, path: '/' });
  const took = Date.now() - t0;
  t.same(r, { healthy: false, reason: 'timeout 300 ms' });
  t.ok(took >= 280 && took < 3000, `gave up after the timeout (${took} ms)`);
  await sleep(100);
  t.equal(sockets.size, 1, 'one connection');
  t.equal(closed, 1, 'the probe closed its connection');
});

t.test('grpc: grpc.health.v1 Check with the service name; SERVING, NOT_SERVING, unknown service, timeout', async (t) => {
  const g = await grpcHealthServer({ '': 1, 'shop.Cart': 1, 'shop.Pay': 2, 'shop.Mystery': 0 });
  t.teardown(() => g.close());
  const check: HealthCheck = { ...tcpCheck, kind: 'grpc' };
  t.same(await probe(target(g.port), { ...check, grpcService: 'shop.Cart' }), { healthy: true, reason: '' });
  t.same(await probe(target(g.port), check), { healthy: true, reason: '' }, "'' = the whole server");
  t.same(await probe(target(g.port), { ...check, grpcService: 'shop.Pay' }), { healthy: false, reason: 'grpc NOT_SERVING' });
  t.same(await probe(target(g.port), { ...check, grpcService: 'shop.Mystery' }), { healthy: false, reason: 'grpc UNKNOWN' });
  const nf = await probe(target(g.port), { ...check, grpcService: 'nope' });
  t.equal(nf.healthy, false);
  t.match(nf.reason, /^grpc NOT_FOUND: unknown service nope/);
  t.same(g.asked, ['shop.Cart', '', 'shop.Pay', 'shop.Mystery', 'nope'], 'the server decoded the service names we sent');
  t.same(await probe(target(await deadPort()), check), { healthy: false, reason: 'connect ECONNREFUSED' });
  const slow = await grpcHealthServer({ '': 1 }, 1500);
  t.teardown(() => slow.close());
  t.same(await probe(target(slow.port), { ...check, timeoutMs: 300 }), { healthy: false, reason: 'timeout 300 ms' });
});

t.test('grpc codec: request bytes and response decoding', async (t) => {
  t.same([...encodeHealthRequest('')], [0, 0, 0, 0, 0], 'empty name: an empty message');
  t.same([...encodeHealthRequest('ab')], [0, 0, 0, 0, 4, 0x0a, 2, 0x61, 0x62]);
  const long = 'x'.repeat(300);
  t.equal(requestedService(encodeHealthRequest(long).subarray(5)), long, 'a two-byte length varint');
  t.equal(decodeHealthResponse(Buffer.from([0, 0, 0, 0, 2, 0x08, 1])), 1);
  t.equal(decodeHealthResponse(Buffer.from([0, 0, 0, 0, 0])), 0, 'absent field = UNKNOWN');
  t.equal(decodeHealthResponse(Buffer.from([0, 0, 0, 0, 5, 0x12, 1, 0x41, 0x08, 2])), 2, 'an unknown field skipped');
  t.equal(decodeHealthResponse(Buffer.from([0, 0, 0, 0, 9, 0x08])), null, 'truncated');
  t.equal(decodeHealthResponse(Buffer.from([1, 0, 0, 0, 2, 0x08, 1])), null, 'compressed: not asked for');
});

// ---- the checker: schedules, thresholds, model updates ----

function model(services: Service[]): Model {
  return { services };
}
function service(name: string, ports: number[], check?: HealthCheck): Service {
  return {
    name, algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251, healthCheck: check,
    frontends: [{ vip: '127.77.9.1', family: 4, port: 80, protocol: 'tcp',
      backends: ports.map((port) => ({ address: '127.0.0.1', family: 4 as const, port, weight: 1 })) }],
  };
}

t.test('thresholds: a verdict flips only after N consecutive results', async (t) => {
  // probes:   1    2    3    4    5    6    7    8    9   10   11   12
  const h = await scriptedHttp([200, 503, 503, 200, 503, 503, 503, 200, 503, 200, 200, 200]);
  t.teardown(() => h.close());
  const states = new BackendStates();
  const key = `127.0.0.1:${h.port}`;
  const flips: { probe: number; out: boolean; reason?: string }[] = [];
  states.onChange(() => {
    const s = states.list().find((x) => x.backend === key);
    flips.push({ probe: h.count, out: states.isOut('web', key), reason: s?.probe?.reason });
  });
  const checker = new HealthChecker(states, { random: () => 0 });
  t.teardown(() => checker.close());
  checker.update(model([service('web', [h.port], { kind: 'http', path: '/', intervalMs: 60, timeoutMs: 1000, healthyThreshold: 2, unhealthyThreshold: 3 })]));
  t.equal(states.isOut('web', key), false, 'a new backend starts healthy');
  for (let i = 0; i < 200 && h.count < 12; i++) await sleep(25);
  await sleep(30);
  t.ok(h.count >= 12, `12 probes ran (${h.count})`);
  t.same(flips, [
    { probe: 7, out: true, reason: 'http 503' }, // 3 failures in a row (5, 6, 7); 2-3 were only two
    { probe: 11, out: false, reason: undefined }, // 2 successes in a row (10, 11); 8 was one
  ]);
  const r = checker.report('web', key)!;
  t.equal(r.healthy, true);
  t.ok(r.consecutiveSuccesses >= 2);
  t.equal(r.last?.healthy, true);
});

t.test('jittered start, update keeps state of backends that stay, removed ones stop and are forgotten', async (t) => {
  const servers: { s: TcpServer; port: number; accepted: number; sockets: Set<Socket> }[] = [];
  for (let i = 0; i < 20; i++) {
    const e = { s: undefined as unknown as TcpServer, port: 0, accepted: 0, sockets: new Set<Socket>() };
    e.s = createTcpServer((c) => { e.accepted++; e.sockets.add(c); c.on('error', () => {}); });
    e.port = await listen(e.s);
    servers.push(e);
  }
  t.teardown(async () => { for (const e of servers) await closeServer(e.s, e.sockets); });
  const dead = await deadPort();
  const states = new BackendStates();
  const firstAt = new Map<string, number>();
  const t0 = performance.now();
  const checker = new HealthChecker(states, {
    onProbe: (_svc, key) => { if (!firstAt.has(key)) firstAt.set(key, performance.now() - t0); },
  });
  t.teardown(() => checker.close());
  const check: HealthCheck = { kind: 'tcp', intervalMs: 600, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 2 };
  checker.update(model([service('web', [...servers.map((e) => e.port), dead], check), service('plain', [dead])]));
  t.equal(checker.size, 21, 'every backend of the checked service, none of the unchecked one');
  const deadKey = `127.0.0.1:${dead}`;
  t.ok(await waitFor(() => firstAt.size === 21 && states.isOut('web', deadKey), 5000), 'every backend probed; the dead one out after two failures');
  const times = [...firstAt.values()].sort((a, b) => a - b);
  t.ok(times[times.length - 1]! - times[0]! > 150, `first probes spread over the interval (${Math.round(times[0]!)}..${Math.round(times[times.length - 1]!)} ms)`);
  t.ok(times[times.length - 1]! < 1500, 'every backend probed within about one interval');
  t.match(states.list().find((s) => s.backend === deadKey)?.probe?.reason, 'connect ECONNREFUSED');
  t.notOk(states.isOut('plain', deadKey), 'a service without a health check is never probed');

  // The same model with one live backend removed and a different interval: the others keep their verdicts.
  const before = checker.report('web', deadKey)!;
  const removed = servers[0]!;
  checker.update(model([service('web', [...servers.slice(1).map((e) => e.port), dead], { ...check, intervalMs: 400 }), service('plain', [dead])]),
    new Set(['web']));
  t.equal(checker.size, 20);
  t.ok(states.isOut('web', deadKey), 'the dead backend stays out across the update');
  t.ok(checker.report('web', deadKey)!.consecutiveFailures >= before.consecutiveFailures, 'its counters were kept');
  const acceptedThen = removed.accepted;
  const otherThen = servers[1]!.accepted;
  await sleep(1000);
  t.equal(removed.accepted, acceptedThen, 'the removed backend is probed no more');
  t.ok(servers[1]!.accepted - otherThen >= 1, `the others keep being probed (${servers[1]!.accepted - otherThen} in 1 s at 400 ms)`);

  // The dead backend leaves the model: its state is forgotten (a later return starts fresh, healthy).
  checker.update(model([service('web', servers.slice(1).map((e) => e.port), check)]));
  t.notOk(states.isOut('web', deadKey));
  t.equal(states.list().length, 0);
  t.equal(checker.report('web', deadKey), undefined);

  // Turning the check off clears verdicts it made.
  checker.update(model([service('web', [...servers.slice(1).map((e) => e.port), dead], check)]));
  t.ok(await waitFor(() => states.isOut('web', deadKey), 5000), 'out again once re-added and failing');
  checker.update(model([service('web', [...servers.slice(1).map((e) => e.port), dead])]));
  t.notOk(states.isOut('web', deadKey), 'no health check: no probe verdict keeps it out');
  t.equal(checker.size, 0);
});

t.test('ejections of an L7 service without a health check survive updates while its backend stays', async (t) => {
  const states = new BackendStates();
  t.teardown(() => states.close());
  const checker = new HealthChecker(states);
  t.teardown(() => checker.close());
  const l7 = (ports: number[]): Service => ({
    ...service('api', ports),
    http: { failMode: 'closed', balancer: 'round-robin', routes: [], accessLogSample: 0,
      circuitBreaker: { maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 1 } },
  });
  checker.update(model([l7([9001, 9002])]));
  states.eject('api', '127.0.0.1:9001', 60_000, 'consecutive-5xx');
  checker.update(model([l7([9001, 9002]), service('plain', [9003])]));
  t.ok(states.isOut('api', '127.0.0.1:9001'), 'kept across a full update');
  checker.update(model([l7([9001, 9002])]), new Set(['plain']));
  t.ok(states.isOut('api', '127.0.0.1:9001'), 'kept across a scoped update of another service');
  checker.update(model([l7([9002])]), new Set(['api']));
  t.notOk(states.isOut('api', '127.0.0.1:9001'), 'forgotten once it leaves the model');
  t.equal(states.ejections('api', '127.0.0.1:9001'), 0, 'with its ejection count');
});

t.test('grpc through the checker: NOT_SERVING takes a backend out, SERVING brings it back', async (t) => {
  const g = await grpcHealthServer({ 'shop.Cart': 1 });
  t.teardown(() => g.close());
  const states = new BackendStates();
  const checker = new HealthChecker(states);
  t.teardown(() => checker.close());
  const key = `127.0.0.1:${g.port}`;
  checker.update(model([service('cart', [g.port],
    { kind: 'grpc', grpcService: 'shop.Cart', intervalMs: 50, timeoutMs: 1000, healthyThreshold: 2, unhealthyThreshold: 2 })]));
  t.ok(await waitFor(() => g.asked.length >= 3, 5000), 'probed');
  t.notOk(states.isOut('cart', key));
  g.statuses['shop.Cart'] = 2;
  t.ok(await waitFor(() => states.isOut('cart', key), 5000), 'out once NOT_SERVING twice');
  t.equal(states.list()[0]?.probe?.reason, 'grpc NOT_SERVING');
  g.statuses['shop.Cart'] = 1;
  t.ok(await waitFor(() => !states.isOut('cart', key), 5000), 'back once SERVING twice');
  t.ok(g.asked.every((s) => s === 'shop.Cart'), 'every probe asked for the configured service');
});
