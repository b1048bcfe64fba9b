// End to end, no kernel: the proxy engine (ProxyServer) with the real policy (ProxyPolicy), in
// process, in front of real HTTP backends on loopback. The original destination is a function (the
// kernel's map in the agent); the client's source address stands for its cgroup (workload).
import t, { type Test } from 'tap';
import { createServer, request, Agent, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as h2connect, createServer as createH2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Registry } from 'prom-client';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { ProxyServer } from '../../agent/proxy/server.js';
import type { HttpPolicy } from '../../agent/model/l7.js';
import type { Backend } from '../../agent/model/types.js';
import { backend, captureLog, http, model, retry, route, seeded, service } from '../lib/l7model.js';

const VIP = '127.100.0.1';

/** keep-alive client agents per source address and proxy port */
const agents = new Map<string, Agent>();
t.teardown(() => {
  for (const a of agents.values()) a.destroy();
});

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

interface TestBackend {
  id: string;
  port: number;
  /** requests received (attempts that reached it) */
  hits: number;
  handler: Handler;
  server: Server;
}

async function startBackend(id: string, handler: Handler = ok): Promise<TestBackend> {
  const b: TestBackend = { id, port: 0, hits: 0, handler, server: undefined as unknown as Server };
  b.server = createServer((req, res) => {
    const n = ++b.hits;
    req.resume();
    req.on('end', () => b.handler(req, res, n));
  });
  b.server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => b.server.listen(0, '127.0.0.1', () => r()));
  b.port = (b.server.address() as AddressInfo).port;
  return b;
}

function ok(_req: IncomingMessage, res: ServerResponse): void {
  res.end('ok');
}

function reply(status: number, delayMs = 0): Handler {
  return (_req, res) => {
    const send = (): void => {
      res.statusCode = status;
      res.end(String(status));
    };
    if (delayMs > 0) setTimeout(send, delayMs);
    else send();
  };
}

interface Env {
  proxyPort: number;
  policy: ProxyPolicy;
  states: BackendStates;
  registry: Registry;
  backends: TestBackend[];
  /** the policy's log at warn and above */
  logLines: Record<string, unknown>[];
  update(h: HttpPolicy, backends?: Backend[]): void;
}

/** proxy + policy + backends, torn down with the test */
async function setup(t: Test, handlers: (Handler | [Handler, string])[], h: HttpPolicy, workloads: Map<string, string> = new Map()): Promise<Env> {
  const backends: TestBackend[] = [];
  const groups: (string | undefined)[] = [];
  for (let i = 0; i < handlers.length; i++) {
    const x = handlers[i]!;
    const [fn, group] = Array.isArray(x) ? x : [x, undefined];
    backends.push(await startBackend(`b${i}`, fn));
    groups.push(group);
  }
  const states = new BackendStates();
  const registry = new Registry();
  const { log, lines: logLines } = captureLog('warn');
  const policy = new ProxyPolicy({ states, log, registry, random: seeded(17) });
  // the client's source address stands for its cgroup: 127.0.0.N -> cgroup id N
  const cgroupOf = (address: string): bigint => BigInt(address.split('.')[3] ?? 0);
  const byCgroup = new Map<bigint, string>([...workloads].map(([addr, name]) => [cgroupOf(addr), name]));
  const update = (hp: HttpPolicy, bs?: Backend[]): void =>
    policy.update(model(service('web', VIP, 80, bs ?? backends.map((b, i) => backend(b.port, groups[i])), hp)), (id) => byCgroup.get(id));
  update(h);
  const proxy = new ProxyServer({ policy, log, originalDst: (address) => ({ vip: VIP, port: 80, cgroupId: cgroupOf(address) }), connectTimeoutMs: 1000 });
  await proxy.listen(0, ['127.0.0.1']);
  const proxyPort = proxy.ports()[0]!;
  t.teardown(async () => {
    // client connections first: ProxyServer.close() waits for its listeners, which wait for open connections
    for (const [k, a] of agents) if (k.endsWith(`:${proxyPort}`)) { a.destroy(); agents.delete(k); }
    await proxy.close();
    states.close();
    for (const b of backends) {
      b.server.closeAllConnections();
      await new Promise<void>((r) => b.server.close(() => r()));
    }
  });
  return { proxyPort, policy, states, registry, backends, logLines, update };
}

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** one request through the proxy (keep-alive connections per source address); rejects after 10 s */
function get(port: number, path = '/', o: { method?: string; from?: string; body?: string } = {}): Promise<Res> {
  const from = o.from ?? '127.0.0.1';
  let agent = agents.get(`${from}:${port}`);
  if (!agent) agents.set(`${from}:${port}`, (agent = new Agent({ keepAlive: true, maxSockets: 64 })));
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: o.method ?? 'GET', localAddress: from, agent, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`request ${path} timed out`)));
    req.on('error', reject);
    req.end(o.body);
  });
}

/** a handler that answers with its backend's id */
function named(id: string): Handler {
  return (_req, res) => {
    res.setHeader('x-backend', id);
    res.end(id);
  };
}

t.test('weighted split 80/20 between groups, measured within tolerance', async (t) => {
  const env = await setup(t, [[named('s1'), 'stable'], [named('s2'), 'stable'], [named('c1'), 'canary']], http({ routes: [route('split', { split: [{ group: 'stable', weight: 80 }, { group: 'canary', weight: 20 }] })] }));
  const N = 1000;
  const counts: Record<string, number> = {};
  let failed = 0;
  // 20 clients in parallel, 50 requests each
  await Promise.all(
    Array.from({ length: 20 }, async () => {
      for (let i = 0; i < N / 20; i++) {
        const r = await get(env.proxyPort);
        if (r.status !== 200) failed++;
        counts[r.body] = (counts[r.body] ?? 0) + 1;
      }
    }),
  );
  t.equal(failed, 0, 'every request answered 200');
  const canary = (counts.c1 ?? 0) / N;
  t.comment(`shares: ${JSON.stringify(counts)}; canary ${(canary * 100).toFixed(1)}%`);
  // 1000 draws at p = 0.2: standard deviation 1.26%; +-5% is about 4 sigma
  t.ok(Math.abs(canary - 0.2) < 0.05, `canary share ${canary} within 0.20 +- 0.05`);
  t.ok((counts.s1 ?? 0) > 250 && (counts.s2 ?? 0) > 250, 'both stable backends used (P2C spreads)');
});

t.test('retries recover from a backend failing its first N requests', async (t) => {
  const env = await setup(t, [(req, res, n) => (n <= 2 ? reply(503)(req, res, n) : ok(req, res))], http({ routes: [route('r', { retry: retry({ attempts: 3, retryOn: ['5xx'] }) })] }));
  const r = await get(env.proxyPort);
  t.equal(r.status, 200, 'the third attempt answers');
  t.equal(env.backends[0]!.hits, 3, 'three attempts reached the backend');
  const rep = env.policy.routesReport()[0]!;
  t.equal(rep.retries, 2);
  t.same(rep.requests, { '2xx': 1 });
  // a POST is not retried (not idempotent, retryNonIdempotent off)
  env.backends[0]!.handler = reply(503);
  const before = env.backends[0]!.hits;
  const p = await get(env.proxyPort, '/', { method: 'POST', body: 'x' });
  t.equal(p.status, 503);
  t.equal(env.backends[0]!.hits - before, 1, 'one attempt only for a POST');
});

t.test('retries recover from a reset, and go to another backend', async (t) => {
  const resetFirst: Handler = (req, res, n) => (n === 1 ? req.socket.destroy() : named('a')(req, res, n));
  const env = await setup(t, [resetFirst], http({ routes: [route('r', { retry: retry({ attempts: 2, retryOn: ['reset'] }) })] }));
  const r = await get(env.proxyPort);
  t.equal(r.status, 200);
  t.equal(env.backends[0]!.hits, 2, 'reset, then answered');

  // two backends, one always resets: every request still succeeds, the retry going to the other
  const env2 = await setup(t, [named('good'), (req) => req.socket.destroy()], http({ balancer: 'round-robin', routes: [route('r', { retry: retry({ attempts: 1, retryOn: ['reset'] }) })] }));
  for (let i = 0; i < 10; i++) {
    const x = await get(env2.proxyPort);
    t.equal(x.status, 200);
    t.equal(x.body, 'good');
  }
  // round robin: request 1 goes to 'good'; from then on each retry takes 'good''s turn, so every
  // later first try lands on the resetting one (as Envoy's round robin, where a retry is a pick)
  t.equal(env2.backends[1]!.hits, 9, 'first tries on the resetting backend: 9 of 10');
  t.equal(env2.backends[0]!.hits, 10);
  // no retry configured for reset: the client gets 502
  env2.update(http({ balancer: 'round-robin', routes: [route('r', { retry: retry({ attempts: 1, retryOn: ['connect-failure'] }) })] }));
  const statuses = new Set<number>();
  for (let i = 0; i < 4; i++) statuses.add((await get(env2.proxyPort)).status);
  t.same([...statuses].sort(), [200, 502], 'reset not retried -> 502');
});

t.test('a stalled backend: the per-try timeout moves the request to another one', async (t) => {
  const stalled: Handler = () => {
    /* never answers */
  };
  const env = await setup(t, [stalled, named('quick')], http({ balancer: 'round-robin', routes: [route('r', { timeoutMs: 5000, retry: retry({ attempts: 1, perTryTimeoutMs: 200, retryOn: ['timeout'] }) })] }));
  const t0 = performance.now();
  const a = await get(env.proxyPort);
  const b = await get(env.proxyPort);
  const ms = performance.now() - t0;
  t.same([a.status, b.status], [200, 200]);
  t.same([a.body, b.body], ['quick', 'quick']);
  // round robin: each first try goes to the stalled one (the retry took the quick one's turn)
  t.equal(env.backends[0]!.hits, 2, 'each request tried the stalled backend once');
  t.ok(ms >= 2 * 190 && ms < 4000, `one per-try timeout paid per request: ${ms.toFixed(0)} ms for two`);
  // without retry on timeout: 504 after the per-try timeout
  env.update(http({ balancer: 'round-robin', routes: [route('r', { timeoutMs: 5000, retry: retry({ attempts: 1, perTryTimeoutMs: 200, retryOn: ['5xx'], budgetPercent: 0, minRetryConcurrency: 0 }) })] }));
  const rs = [await get(env.proxyPort), await get(env.proxyPort)];
  t.same(rs.map((r) => r.status).sort(), [200, 504]);
});

t.test('the retry budget caps retries when every backend fails', async (t) => {
  const failing: Handler = reply(503, 50);
  const cb = { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 1024 };
  const env = await setup(t, [failing, failing], http({ circuitBreaker: cb, routes: [route('r', { retry: retry({ attempts: 5, retryOn: ['5xx'], budgetPercent: 0, minRetryConcurrency: 1 }) })] }));
  const hits = (): number => env.backends[0]!.hits + env.backends[1]!.hits;
  const burst = async (): Promise<number[]> => (await Promise.all(Array.from({ length: 10 }, () => get(env.proxyPort)))).map((r) => r.status);
  let statuses = await burst();
  t.ok(statuses.every((s) => s === 503), 'every request ends 503');
  const capped = hits();
  const exhausted = env.policy.routesReport()[0]!.budgetExhausted;
  t.comment(`10 requests, 5 retries allowed each, budget 1 concurrent retry: ${capped} upstream attempts, ${exhausted} budget exhaustions`);
  t.ok(capped >= 10 && capped <= 10 + 5 * 2, `attempts capped: ${capped} (without a budget: 60)`);
  t.ok(exhausted >= 5, 'exhaustions counted');
  // control: a generous budget lets every request use all its retries
  env.update(http({ circuitBreaker: cb, routes: [route('r', { retry: retry({ attempts: 5, retryOn: ['5xx'], budgetPercent: 100, minRetryConcurrency: 100 }) })] }));
  statuses = await burst();
  t.ok(statuses.every((s) => s === 503));
  t.equal(hits() - capped, 60, 'no budget limit: 10 x 6 attempts');
  const metrics = await env.registry.metrics();
  t.match(metrics, new RegExp(`sockmesh_http_retry_budget_exhausted_total\\{service="web",route="r"\\} ${exhausted}`));
});

t.test('a route\'s own retry budget replaces maxRetries (as a retry_budget overrides max_retries in Envoy); a refused retry is logged', async (t) => {
  // The soak's failure: a backend answering 503 while another is healthy, more requests failing on it at once than
  // maxRetries (concurrent retries of the group): the retries past it were refused and the 503 went to the client.
  const cb = { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 1 };
  const rules = retry({ attempts: 2, retryOn: ['5xx'], budgetPercent: 100, minRetryConcurrency: 50, backoffBaseMs: 1, backoffMaxMs: 1 });
  // round robin: half of a burst tries b0 first; its 503s come together after 30 ms, so their retries overlap
  const env = await setup(t, [reply(503, 30), reply(200)], http({ balancer: 'round-robin', circuitBreaker: cb, routes: [route('r', { retry: rules })] }));
  const burst = async (): Promise<number[]> => (await Promise.all(Array.from({ length: 12 }, () => get(env.proxyPort)))).map((r) => r.status);
  // the default budget (none of the route's own): maxRetries still limits, as documented
  let statuses = await burst();
  const failed = statuses.filter((s) => s === 503).length;
  t.ok(failed >= 1 && failed <= 5, `maxRetries 1 without a budget of the route's own: ${failed} of 12 answered 503 (b1 was healthy)`);
  t.match(env.logLines.find((l) => l['msg'] === 'retry refused'), { limit: 'max-retries', failed: 503, service: 'web', route: 'r', maxRetries: 1 }, 'the refusal is logged with the limit that decided it');
  // the route's own budget: it alone limits the route's retries (50 concurrent here): every request is retried to b1
  env.update(http({ balancer: 'round-robin', circuitBreaker: cb, routes: [route('r', { retry: { ...rules, budgetSet: true } })] }));
  statuses = await burst();
  t.same(statuses, Array(12).fill(200), 'with a budget of the route\'s own, every 503 of b0 is retried to b1');
  const g = env.policy.routesReport()[0]!.groups[0]!;
  t.equal(g.activeRetries, 0, 'the retries were counted and given back (the budget reads them)');
  t.equal(g.activeRequests, 0);
});

t.test('circuit breaker overflow: 503 with the limit named', async (t) => {
  const env = await setup(t, [reply(200, 300)], http({ circuitBreaker: { maxConnections: 100, maxPendingRequests: 100, maxRequests: 2, maxRetries: 3 } }));
  let rs = await Promise.all(Array.from({ length: 5 }, () => get(env.proxyPort)));
  let by = rs.map((r) => `${r.status} ${r.headers['x-sockmesh-overflow'] ?? ''}`.trim()).sort();
  t.same(by, ['200', '200', '503 max-requests', '503 max-requests', '503 max-requests']);
  t.equal(env.backends[0]!.hits, 2, 'overflowed requests never reached the backend');

  let rep = env.policy.routesReport()[0]!;
  t.equal(rep.overflows['max-requests'], 3);
  t.equal(rep.groups[0]!.activeRequests, 0);
  const metrics = await env.registry.metrics();
  t.match(metrics, /sockmesh_http_overflows_total\{service="web",frontend="127.100.0.1:80",group="default",limit="max-requests"\} 3/);
  t.match(metrics, /sockmesh_http_local_replies_total\{service="web",route="all",reason="max-requests"\} 3/);

  // one connection, no pending room: the second concurrent request overflows at once (a fresh proxy:
  // the first one keeps idle connections that a request may reuse whatever the limit says now)
  const env2 = await setup(t, [reply(200, 300)], http({ circuitBreaker: { maxConnections: 1, maxPendingRequests: 0, maxRequests: 100, maxRetries: 3 } }));
  const t0 = performance.now();
  rs = await Promise.all([get(env2.proxyPort), get(env2.proxyPort)]);
  by = rs.map((r) => `${r.status} ${r.headers['x-sockmesh-overflow'] ?? ''}`.trim()).sort();
  t.same(by, ['200', '503 max-pending-requests']);
  t.ok(performance.now() - t0 < 3000);
  // with pending room it waits for the connection instead
  env2.update(http({ circuitBreaker: { maxConnections: 1, maxPendingRequests: 10, maxRequests: 100, maxRetries: 3 } }));
  rs = await Promise.all([get(env2.proxyPort), get(env2.proxyPort), get(env2.proxyPort)]);
  t.same(rs.map((r) => r.status), [200, 200, 200], 'queued behind the one connection');
  rep = env2.policy.routesReport()[0]!;
  t.equal(rep.overflows['max-pending-requests'], 1);
  t.equal(rep.groups[0]!.activeRequests, 0);
  t.equal(rep.groups[0]!.pendingRequests, 0);
  t.equal(rep.groups[0]!.connections, 1, 'one upstream connection only');
  t.same(env2.policy.routesReport()[0]!.localReplies, { 'max-pending-requests': 1 });
});

t.test('outlier detection ejects a failing backend and lets it back, for longer the second time', async (t) => {
  const env = await setup(t, [named('good'), reply(500)], http({
    balancer: 'round-robin',
    outlierDetection: { consecutive5xx: 3, consecutiveGatewayErrors: 0, baseEjectionMs: 400, maxEjectionMs: 5000, maxEjectionPercent: 50 },
  }));
  const bad = `127.0.0.1:${env.backends[1]!.port}`;
  const run = async (n: number): Promise<number[]> => {
    const s: number[] = [];
    for (let i = 0; i < n; i++) s.push((await get(env.proxyPort)).status);
    return s;
  };
  await run(6); // round robin: 3 to each; the third 500 ejects
  t.equal(env.backends[1]!.hits, 3);
  t.ok(env.states.isOut('web', bad), 'ejected');
  const rep = env.policy.backendsReport().find((b) => b.backend === bad)!;
  t.match(rep, { ejected: true, reason: '3 consecutive 5xx', ejections: 1 });
  t.equal(rep.until! - rep.since!, 400);
  const during = await run(10);
  t.same(during, new Array(10).fill(200), 'all to the good backend while ejected');
  t.equal(env.backends[1]!.hits, 3);
  await sleep(500);
  t.notOk(env.states.isOut('web', bad), 'back after 400 ms');
  await run(6);
  t.equal(env.backends[1]!.hits, 6, 'it takes requests again, fails 3 more');
  const e2 = env.states.list().find((s) => s.backend === bad)?.ejection;
  t.ok(e2, 'ejected again');
  t.equal(e2!.until - e2!.since, 800, 'twice the base the second time');
  const metrics = await env.registry.metrics();
  t.match(metrics, new RegExp(`sockmesh_http_ejections_total\\{service="web",backend="${bad}",reason="consecutive-5xx"\\} 2`));
});

t.test('authorization by workload: allow, deny, default deny', async (t) => {
  const workloads = new Map([
    ['127.0.0.2', 'frontend'],
    ['127.0.0.3', 'batch'],
  ]);
  const env = await setup(t, [ok], http({
    authz: {
      defaultAction: 'deny',
      rules: [
        { name: 'frontend-in', action: 'allow', from: ['frontend'] },
        { name: 'batch-reads', action: 'allow', from: ['batch'], methods: ['GET'] },
        { name: 'no-admin', action: 'deny', paths: [{ prefix: '/admin' }] },
      ],
    },
  }), workloads);
  const check = async (from: string, path: string, method = 'GET'): Promise<string> => {
    const r = await get(env.proxyPort, path, { from, method });
    return r.status === 200 ? 'allowed' : `${r.status} ${r.headers['x-sockmesh-denied']}`;
  };
  t.equal(await check('127.0.0.2', '/'), 'allowed');
  t.equal(await check('127.0.0.2', '/orders', 'POST'), 'allowed');
  t.equal(await check('127.0.0.2', '/admin/x'), '403 no-admin', 'deny before allow');
  t.equal(await check('127.0.0.2', '/./admin/x'), '403 no-admin', 'no sidestep with a dot segment');
  t.equal(await check('127.0.0.3', '/'), 'allowed');
  t.equal(await check('127.0.0.3', '/', 'DELETE'), '403 default-deny');
  t.equal(await check('127.0.0.4', '/'), '403 default-deny', 'no workload');
  t.equal(env.backends[0]!.hits, 3, 'denied requests never reached the backend');
});

t.test('gRPC over HTTP/2: a trailers-only UNAVAILABLE is retried (retryOn unavailable); a denied call gets PERMISSION_DENIED', async (t) => {
  // an h2c backend answering like a gRPC server: the first call trailers-only grpc-status 14, then OK with trailers
  let hits = 0;
  const backendServer = createH2Server();
  backendServer.on('stream', (stream) => {
    const n = ++hits;
    stream.resume();
    stream.on('end', () => {
      if (n === 1) {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '14', 'grpc-message': 'try again' }, { endStream: true });
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.from([0, 0, 0, 0, 2, 0x08, 0x01]));
    });
  });
  await new Promise<void>((r) => backendServer.listen(0, '127.0.0.1', () => r()));
  const port = (backendServer.address() as AddressInfo).port;
  const states = new BackendStates();
  const { log } = captureLog('warn');
  const policy = new ProxyPolicy({ states, log, random: seeded(3) });
  policy.update(
    model(service('grpc', VIP, 80, [backend(port)], http({
      routes: [route('rpc', { retry: retry({ attempts: 2, retryOn: ['unavailable'] }) })],
      authz: { defaultAction: 'allow', rules: [{ name: 'no-admin-rpc', action: 'deny', paths: [{ prefix: '/admin.' }] }] },
    }))),
    () => undefined,
  );
  const proxy = new ProxyServer({ policy, log, originalDst: () => ({ vip: VIP, port: 80, cgroupId: 1n }) });
  await proxy.listen(0, ['127.0.0.1']);
  const client = h2connect(`http://127.0.0.1:${proxy.ports()[0]}`);
  t.teardown(async () => {
    client.destroy();
    await proxy.close();
    states.close();
    await new Promise<void>((r) => backendServer.close(() => r()));
  });
  const call = (path: string): Promise<{ headers: Record<string, unknown>; trailers: Record<string, unknown>; bytes: number }> =>
    new Promise((resolve, reject) => {
      const s = client.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
      let headers: Record<string, unknown> = {};
      let trailers: Record<string, unknown> = {};
      let bytes = 0;
      s.on('response', (h) => (headers = h));
      s.on('trailers', (h) => (trailers = h));
      s.on('data', (d: Buffer) => (bytes += d.length));
      s.on('end', () => resolve({ headers, trailers, bytes }));
      s.on('error', reject);
      s.setTimeout(10_000, () => s.destroy(new Error('timeout')));
      s.end(Buffer.from([0, 0, 0, 0, 0]));
    });
  const ok = await call('/pkg.Svc/Get');
  t.equal(ok.headers[':status'], 200);
  t.equal(ok.trailers['grpc-status'], '0', 'the retried call ends OK, trailers intact');
  t.equal(ok.bytes, 7, 'the message passed through');
  t.equal(hits, 2, 'UNAVAILABLE was retried once');
  t.equal(policy.routesReport()[0]!.retries, 1);
  const denied = await call('/admin.Svc/Drop');
  t.equal(denied.headers['grpc-status'], '7', 'PERMISSION_DENIED');
  t.equal(denied.headers['x-sockmesh-denied'], 'no-admin-rpc');
  t.equal(hits, 2, 'the denied call never reached the backend');
});
