// Review of the L7 path: each test proves a bug that was found (it failed before its fix) and guards it.
// End to end where it matters: the real engine (ProxyServer) and policy (ProxyPolicy) in front of real
// node:http / node:http2 backends on loopback; the original destination is a function (the kernel's map).
import t, { type Test } from 'tap';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as h2connect, createServer as createH2Server } from 'node:http2';
import { connect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { ProxyServer } from '../../agent/proxy/server.js';
import { parseConfig } from '../../agent/model/config.js';
import { statSync } from 'node:fs';
import { LiveState } from '../../agent/state/live.js';
import { ApplyTransaction } from '../../agent/state/apply.js';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { httpRoutes } from '../../agent/sources/xds/digest-http.js';
import type { Exchange, LocalReply, OriginalDst, Source } from '../../agent/proxy/types.js';
import type { HttpPolicy } from '../../agent/model/l7.js';
import type { Backend } from '../../agent/model/types.js';
import { backend, captureLog, head, http, model, route, seeded, service } from '../lib/l7model.js';
import { rawExchange } from '../lib/proxy.js';

const VIP = '127.100.0.1';

interface Seen { url: string; pathname: string; headers: IncomingMessage['headers'] }

interface Env {
  proxyPort: number;
  policy: ProxyPolicy;
  registry: Registry;
  /** what the backend was asked, as a node:http application reads it */
  seen: Seen[];
  update(h: HttpPolicy, bs?: Backend[]): void;
}

/** proxy + policy + one node:http backend that records what it was asked (pathname as WHATWG URL reads it) */
async function setup(t: Test, h: HttpPolicy, handler?: (req: IncomingMessage, res: ServerResponse) => void, proxyOpts: { clientIdleTimeoutMs?: number } = {}): Promise<Env> {
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    seen.push({ url: req.url!, pathname: new URL(req.url!, 'http://backend').pathname, headers: req.headers });
    req.resume();
    req.on('end', () => (handler ? handler(req, res) : res.end('ok')));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const states = new BackendStates();
  const registry = new Registry();
  const { log } = captureLog('warn');
  const policy = new ProxyPolicy({ states, log, registry, random: seeded(3) });
  const update = (hp: HttpPolicy, bs?: Backend[]): void => policy.update(model(service('web', VIP, 80, bs ?? [backend(port)], hp)), () => undefined);
  update(h);
  const proxy = new ProxyServer({ policy, log, originalDst: () => ({ vip: VIP, port: 80, cgroupId: 5n }), connectTimeoutMs: 1000, ...proxyOpts });
  await proxy.listen(0, ['127.0.0.1']);
  t.teardown(async () => {
    server.closeAllConnections();
    await proxy.close();
    states.close();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { proxyPort: proxy.ports()[0]!, policy, registry, seen, update };
}

const statusOf = (text: string): number => Number(text.split(' ')[1]);

/** one h2 request with prior knowledge; resolves with the :status */
function h2get(port: number, path: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = h2connect(`http://127.0.0.1:${port}`);
    c.on('error', reject);
    const r = c.request({ ':path': path, ...headers });
    let status = 0;
    r.on('response', (h) => (status = Number(h[':status'])));
    r.on('error', reject);
    r.resume();
    r.on('end', () => {
      c.close();
      resolve(status);
    });
    r.end();
  });
}

t.test('authz: a #fragment in the request-target cannot sidestep an exact deny rule (h1 and h2)', async (t) => {
  // Before the fix: the policy matched '/admin#x' (only a query was cut off), no deny rule on exact /admin held,
  // the target was forwarded as it came, and the backend's URL parser read the path /admin.
  const env = await setup(t, http({ authz: { defaultAction: 'allow', rules: [{ name: 'no-admin', action: 'deny', paths: [{ exact: '/admin' }] }] } }));
  const plain = await rawExchange(env.proxyPort, 'GET /admin HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n');
  t.equal(statusOf(plain.text), 403, 'the plain spelling is denied');
  for (const target of ['/admin#x', '/admin#', '/public#/../admin']) {
    const r = await rawExchange(env.proxyPort, `GET ${target} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n`);
    t.ok([400, 403].includes(statusOf(r.text)), `h1 ${target}: refused (${statusOf(r.text)})`);
  }
  t.equal(await h2get(env.proxyPort, '/admin#x'), 400, 'h2 :path /admin#x refused');
  t.same(env.seen.map((s) => s.pathname), [], 'the backend never read the path /admin');
  // a normal request still goes through (h1: the backend speaks HTTP/1.1 only)
  const ok = await rawExchange(env.proxyPort, 'GET /public?a=b HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n');
  t.equal(statusOf(ok.text), 200);
  t.same(env.seen.map((s) => s.url), ['/public?a=b']);
});

t.test('header matches on host see the request authority (h1 Host, h2 :authority); route and authz alike', async (t) => {
  // Before the fix: the engines keep Host (h1) and :authority (h2) out of head.headers, so a match on host never
  // held: a deny rule on host let every request through, a route on host was never taken.
  const env = await setup(t, http({
    routes: [route('admin-host', { match: { headers: [{ name: 'host', value: { exact: 'admin.web' } }] }, requestHeaders: { set: { 'x-route': 'admin-host' }, remove: [] } }), route('rest')],
    authz: { defaultAction: 'allow', rules: [{ name: 'no-internal', action: 'deny', headers: [{ name: 'host', value: { prefix: 'internal.' } }] }] },
  }));
  const denied = await rawExchange(env.proxyPort, 'GET / HTTP/1.1\r\nhost: internal.web\r\nconnection: close\r\n\r\n');
  t.equal(statusOf(denied.text), 403, 'h1: the deny rule on host holds');
  t.match(denied.text, /x-sockmesh-denied: no-internal/);
  t.equal(await h2get(env.proxyPort, '/', { ':authority': 'internal.web' }), 403, 'h2: the deny rule on :authority holds');
  const routed = await rawExchange(env.proxyPort, 'GET / HTTP/1.1\r\nhost: admin.web\r\nconnection: close\r\n\r\n');
  t.equal(statusOf(routed.text), 200);
  const other = await rawExchange(env.proxyPort, 'GET / HTTP/1.1\r\nhost: www.web\r\nconnection: close\r\n\r\n');
  t.equal(statusOf(other.text), 200);
  t.same(env.seen.map((s) => s.headers['x-route'] ?? 'rest'), ['admin-host', 'rest'], 'the host route taken for admin.web only');
  t.same(env.seen.map((s) => s.headers.host), ['admin.web', 'www.web'], 'Host forwarded as it came');
});

t.test('config: header matches on headers the proxy consumes (hop-by-hop, framing) are refused, not silently never matched', async (t) => {
  // Before the fix: {name: upgrade, exact: websocket} in a deny rule was accepted and never held (the engine takes
  // Upgrade, Connection, TE, Transfer-Encoding, Content-Length... out of the headers a policy sees): WebSocket
  // upgrades walked past a rule written to stop them.
  const cfg = (match: string): string => `
services:
  - name: web
    vips: [127.100.0.1]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, port: 18081}]
    http:
      authz: {rules: [{name: no-ws, action: deny, headers: [${match}]}]}
      routes: [{name: r, match: {headers: [${match}]}}]
`;
  for (const name of ['upgrade', 'Connection', 'transfer-encoding', 'te', 'keep-alive', 'proxy-connection', 'content-length']) {
    const err = (() => { try { parseConfig(cfg(`{name: ${name}, exact: x}`), 'c.yaml'); return ''; } catch (e) { return (e as Error).message; } })();
    t.match(err, new RegExp(`authz\\.rules\\[0\\]\\.headers\\[0\\]\\.name.*${name.toLowerCase()}`), `${name}: refused in authz rules`);
    t.match(err, new RegExp(`routes\\[0\\]\\.match\\.headers\\[0\\]\\.name.*${name.toLowerCase()}`), `${name}: refused in route matches`);
  }
  // host stays allowed: it matches the authority
  t.doesNotThrow(() => parseConfig(cfg('{name: host, exact: web}'), 'c.yaml'));
});

t.test('metrics: the per-backend series of a route go with their backend (endpoint churn does not grow /metrics forever)', async (t) => {
  // Before the fix: RouteStats kept a series set (7 classes + 18 buckets) for every backend key a route ever used,
  // for as long as the route name lived: with pods rescheduled onto new addresses, /metrics and the agent's memory
  // grew with every rollout.
  const states = new BackendStates();
  t.teardown(() => states.close());
  const registry = new Registry();
  const policy = new ProxyPolicy({ states, log: captureLog('warn').log, registry, random: seeded(1) });
  const dst: OriginalDst = { vip: VIP, port: 80, cgroupId: 1n };
  const src: Source = { address: '127.0.0.1', port: 40000, cgroupId: 1n };
  for (let i = 0; i < 50; i++) {
    policy.update(model(service('web', VIP, 80, [backend(20000 + i)], http())), () => undefined);
    const x = policy.begin(dst, src, head('GET', '/')) as Exchange;
    const a = x.attempt(1);
    if ('status' in a) throw new Error('no attempt');
    a.finish({ kind: 'response', status: 200 });
    x.end(200);
  }
  const text = await registry.metrics();
  const series = text.split('\n').filter((l) => l.startsWith('sockmesh_http_requests_total{'));
  t.same(series, [`sockmesh_http_requests_total{service="web",route="all",backend="127.0.0.1:20049",class="2xx"} 1`], 'only the backend in the model');
  const buckets = text.split('\n').filter((l) => l.startsWith('sockmesh_http_request_duration_milliseconds_count{'));
  t.equal(buckets.length, 1, 'one latency histogram');
  // a local reply ('' backend) stays with the route
  policy.update(model(service('web', VIP, 80, [backend(20049)], http({ circuitBreaker: { maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 0 } }))), () => undefined);
  const held = policy.begin(dst, src, head('GET', '/')) as Exchange;
  held.attempt(1);
  const over = policy.begin(dst, src, head('GET', '/')) as Exchange;
  t.ok('status' in over.attempt(1), 'max-requests overflow');
  over.end(503);
  held.end(0);
  policy.update(model(service('web', VIP, 80, [backend(20049)], http())), () => undefined);
  t.match(await registry.metrics(), /sockmesh_http_requests_total\{service="web",route="all",backend="",class="local"\} 1/, 'local replies kept across updates');
});

t.test('outlier detection: a client that sends its body slowly cannot eject healthy backends', async (t) => {
  // Before the fix: the route (or per-try) timeout ran from the request head, so a client that stops halfway through
  // its body made the attempt end in 'timeout', counted against the backend as a gateway error: two such requests per
  // backend (here) ejected perfectly healthy ones, one after the other, whatever the backends did. The timeouts now
  // start once the body is whole (Envoy's); a silent upload is the client's idle timeout: 408, not the backend's.
  const env = await setup(t, http({
    balancer: 'round-robin',
    routes: [route('r', { timeoutMs: 300 })],
    outlierDetection: { consecutive5xx: 2, consecutiveGatewayErrors: 2, baseEjectionMs: 10_000, maxEjectionMs: 10_000, maxEjectionPercent: 100 },
  }), undefined, { clientIdleTimeoutMs: 400 });
  for (let i = 0; i < 3; i++) {
    const r = await rawExchange(env.proxyPort, 'POST /upload HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\n\r\nabcde', 1500);
    t.equal(statusOf(r.text), 408, 'the stalled upload is answered 408 (the client\'s idle timeout), not 504');
  }
  t.same(env.policy.backendsReport().map((b) => b.ejected), [false], 'the backend is not ejected');
  t.same(env.policy.backendsReport().map((b) => b.consecutiveGatewayErrors), [0], 'nothing counted against it');
  // a GET that stalls at the backend is still the backend's doing
  const stall = await setup(t, http({
    routes: [route('r', { timeoutMs: 200 })],
    outlierDetection: { consecutive5xx: 2, consecutiveGatewayErrors: 2, baseEjectionMs: 10_000, maxEjectionMs: 10_000, maxEjectionPercent: 100 },
  }), () => { /* never answers */ });
  for (let i = 0; i < 2; i++) t.equal(statusOf((await rawExchange(stall.proxyPort, 'GET / HTTP/1.1\r\nhost: web\r\n\r\n', 1500)).text), 504);
  t.same(stall.policy.backendsReport().map((b) => b.ejected), [true], 'a backend that stalls GETs is ejected');
});

t.test('accounting: after client aborts at every stage, timeouts, retries and overflows, the breaker counts are back to 0', async (t) => {
  // A backend whose behaviour depends on the path: fail (503, retried), stall, stream slowly, reset.
  const env = await setup(t, http({
    circuitBreaker: { maxConnections: 4, maxPendingRequests: 4, maxRequests: 8, maxRetries: 4 },
    routes: [route('r', { timeoutMs: 400, retry: { attempts: 3, perTryTimeoutMs: 150, retryOn: ['5xx', 'reset', 'timeout'], retriableStatusCodes: [], backoffBaseMs: 50, backoffMaxMs: 200, budgetPercent: 100, minRetryConcurrency: 10, bufferLimitBytes: 1024, retryNonIdempotent: true } })],
  }), (req, res) => {
    const p = req.url!;
    if (p.startsWith('/fail')) { res.statusCode = 503; res.end('no'); }
    else if (p.startsWith('/stall')) { /* never */ }
    else if (p.startsWith('/reset')) req.socket.destroy();
    else if (p.startsWith('/slow')) { res.write('a'); setTimeout(() => res.end('b'), 300); }
    else res.end('ok');
  });
  const paths = ['/fail', '/stall', '/reset', '/slow', '/ok'];
  const clients: Promise<unknown>[] = [];
  for (let i = 0; i < 60; i++) {
    const path = paths[i % paths.length]!;
    const abortAfter = [5, 40, 120, 250, 1000][Math.floor(i / paths.length) % 5]!;
    clients.push(new Promise<void>((resolve) => {
      const s = connect({ port: env.proxyPort, host: '127.0.0.1' });
      s.on('error', () => {});
      s.on('close', () => resolve());
      s.write(i % 7 === 0 ? `POST ${path} HTTP/1.1\r\nhost: web\r\ncontent-length: 4\r\n\r\nbody` : `GET ${path} HTTP/1.1\r\nhost: web\r\n\r\n`);
      setTimeout(() => s.destroy(), abortAfter);
    }));
  }
  await Promise.all(clients);
  // let every timer (route timeout 400 ms, backoff) run out
  await new Promise((r) => setTimeout(r, 1000));
  const g = env.policy.routesReport()[0]!.groups[0]!;
  t.comment(JSON.stringify({ active: g.activeRequests, pending: g.pendingRequests, retries: g.activeRetries, connections: g.connections, overflows: g.overflows }));
  t.equal(g.activeRequests, 0, 'no active request left');
  t.equal(g.pendingRequests, 0, 'no pending request left');
  t.equal(g.activeRetries, 0, 'no retry left');
  t.ok(g.connections <= 4, 'connections within the limit');
  t.same(env.policy.backendsReport().map((b) => b.activeRequests), [0], 'the backend has no active request left');
  // and the service still answers
  t.equal(statusOf((await rawExchange(env.proxyPort, 'GET /ok HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n')).text), 200);
});

t.test('accounting (h2): streams and sessions cut at every stage leave the breaker counts at 0', async (t) => {
  const backendServer = createH2Server();
  backendServer.on('stream', (s, h) => {
    s.on('error', () => {});
    const p = String(h[':path']);
    if (p.startsWith('/fail')) s.respond({ ':status': 503 }, { endStream: true });
    else if (p.startsWith('/stall')) { /* never */ }
    else if (p.startsWith('/reset')) s.close(2);
    else if (p.startsWith('/slow')) { s.respond({ ':status': 200 }); s.write('a'); setTimeout(() => { if (!s.destroyed) s.end('b'); }, 300); }
    else { s.respond({ ':status': 200 }); s.end('ok'); }
  });
  await new Promise<void>((r) => backendServer.listen(0, '127.0.0.1', () => r()));
  const bport = (backendServer.address() as AddressInfo).port;
  const states = new BackendStates();
  const { log } = captureLog('warn');
  const policy = new ProxyPolicy({ states, log, random: seeded(5) });
  policy.update(model(service('web', VIP, 80, [backend(bport)], http({
    circuitBreaker: { maxConnections: 2, maxPendingRequests: 4, maxRequests: 8, maxRetries: 4 },
    routes: [route('r', { timeoutMs: 400, retry: { attempts: 3, perTryTimeoutMs: 150, retryOn: ['5xx', 'reset', 'timeout'], retriableStatusCodes: [], backoffBaseMs: 50, backoffMaxMs: 200, budgetPercent: 100, minRetryConcurrency: 10, bufferLimitBytes: 1024, retryNonIdempotent: true } })],
  }))), () => undefined);
  const proxy = new ProxyServer({ policy, log, originalDst: () => ({ vip: VIP, port: 80, cgroupId: 5n }), connectTimeoutMs: 1000 });
  await proxy.listen(0, ['127.0.0.1']);
  t.teardown(async () => {
    await proxy.close();
    states.close();
    await new Promise<void>((r) => backendServer.close(() => r()));
  });
  const port = proxy.ports()[0]!;
  const paths = ['/fail', '/stall', '/reset', '/slow', '/ok'];
  const sessions = Array.from({ length: 4 }, () => h2connect(`http://127.0.0.1:${port}`));
  for (const c of sessions) c.on('error', () => {});
  const done: Promise<void>[] = [];
  for (let i = 0; i < 80; i++) {
    const c = sessions[i % sessions.length]!;
    const path = paths[i % paths.length]!;
    const abortAfter = [5, 40, 120, 250, 1000][Math.floor(i / paths.length) % 5]!;
    done.push(new Promise<void>((resolve) => {
      const post = i % 7 === 0;
      const r = c.request({ ':path': path, ':method': post ? 'POST' : 'GET' }, { endStream: !post });
      r.on('error', () => {});
      r.on('close', () => resolve());
      r.resume();
      if (post) r.end('body');
      setTimeout(() => { if (!r.closed) r.close(8); }, abortAfter);
    }));
  }
  // one session is cut whole, mid-flight
  setTimeout(() => sessions[3]!.destroy(), 100);
  await Promise.all(done);
  for (const c of sessions) c.destroy();
  await new Promise((r) => setTimeout(r, 1000));
  const g = policy.routesReport()[0]!.groups[0]!;
  t.comment(JSON.stringify({ active: g.activeRequests, pending: g.pendingRequests, retries: g.activeRetries, connections: g.connections, overflows: g.overflows }));
  t.equal(g.activeRequests, 0, 'no active request left');
  t.equal(g.pendingRequests, 0, 'no pending request left');
  t.equal(g.activeRetries, 0, 'no retry left');
  t.ok(g.connections <= 2, 'connections within the limit');
  t.same(policy.backendsReport().map((b) => b.activeRequests), [0]);
  t.equal(await h2get(port, '/ok'), 200, 'still answers');
});

t.test('xDS: RE2 syntax that JavaScript reads differently is refused (NACK), not silently misread', async (t) => {
  // Before the fix: these compile as JavaScript regexes with another meaning ([[:digit:]] is a class of '[', ':', 'd',
  // 'i', 'g', 't' followed by ']'; \A, \z, \Q, \E, \pN are the letters A, z, Q, E, p): an Envoy route or RBAC rule
  // written for RE2 never matched what it says, so a deny rule on '\A/admin\z' let /admin through.
  const rds = (regex: string) => ({ name: 'r', virtual_hosts: [{ name: 'vh', domains: ['*'], routes: [{ name: 'x', match: { safe_regex: { regex } }, route: { cluster: 'c' } }] }] });
  for (const regex of ['/users/[[:digit:]]+', '/x/[^[:space:]]+', '\\A/admin\\z', '/\\pN+', '/\\p{Greek}', '\\Q/a.b\\E', '/\\x{41}', '/a\\Cb']) {
    t.throws(() => httpRoutes('route_configuration r', rds(regex)), /safe_regex\.regex.*RE2/, `refused: ${regex}`);
  }
  for (const regex of ['/v[0-9]+/.*', '/a\\.b', '/[a-z:]+', '/\\d+/\\w*', '/x\\[\\[:digit:\\]\\]']) {
    t.doesNotThrow(() => httpRoutes('route_configuration r', rds(regex)), `accepted: ${regex}`);
  }
});

t.test('authz and routes: a method in lower case cannot sidestep a rule on its upper-case name', async (t) => {
  // Before the fix: 'delete /admin' matched no rule on DELETE (methods are compared as sent) and was forwarded; many
  // backends upper-case the method they read (Werkzeug/Flask, Rack...), and deleted.
  const got: string[] = [];
  const raw = createNetServer((s) => {
    s.once('data', (d) => {
      const method = d.toString('latin1').split(' ')[0]!.toUpperCase(); // as a lenient framework reads it
      got.push(method);
      s.end(`HTTP/1.1 200 OK\r\ncontent-length: ${method.length}\r\nconnection: close\r\n\r\n${method}`);
    });
  });
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => raw.close(() => r())));
  const env = await setup(t, http({ authz: { defaultAction: 'allow', rules: [{ name: 'no-delete', action: 'deny', methods: ['DELETE'] }] } }));
  env.update(http({
    authz: { defaultAction: 'allow', rules: [{ name: 'no-delete', action: 'deny', methods: ['DELETE'] }] },
    routes: [route('reads', { match: { methods: ['GET'] }, requestHeaders: { set: { 'x-route': 'reads' }, remove: [] } }), route('rest')],
  }), [backend((raw.address() as AddressInfo).port)]);
  for (const m of ['DELETE', 'delete', 'Delete']) {
    const r = await rawExchange(env.proxyPort, `${m} /admin HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n`);
    t.equal(statusOf(r.text), 403, `${m}: denied`);
  }
  t.same(got, [], 'no delete reached the backend');
  // routes alike: 'get' takes the route on GET
  t.equal(statusOf((await rawExchange(env.proxyPort, 'get /x HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n')).text), 200);
  t.same(env.policy.routesReport().map((r) => [r.route, r.requests]), [['reads', { '2xx': 1 }], ['rest', {}]], "'get' routed as GET");
});

t.test('agent: a config the kernel rejected does not change who the workloads are', async (t) => {
  // Before the fix: the agent's applyModel re-resolved the workloads' cgroups (cgroup id -> workload name) right after
  // the proxy accepted the new model, before the kernel did; when the kernel then refused it, the last good model was put back
  // but the identities of the rejected one stayed: a client got the workload name the rejected config gave its cgroup,
  // under the authorization rules of the model still in force.
  const cgroupRoot = cgroup2Root();
  if (!cgroupRoot) { t.comment('skipped: no cgroup v2 mount'); return; }
  const rootId = statSync(cgroupRoot, { bigint: true }).ino;
  const state = new LiveState(cgroupRoot);
  t.teardown(() => state.close());
  let refuse = false;
  const kernel = {
    apply: () => { if (refuse) throw new Error('bpf_map_update_elem sm_services: E2BIG'); return { ms: 0, backendsWritten: 0, backendsDeleted: 0, backendsRetiring: 0, frontendsWritten: 0, frontendsDeleted: 0, udpSocketsDestroyed: 0 }; },
    reset: () => {},
  };
  const policy = new ProxyPolicy({ states: state.states, log: captureLog('silent').log });
  const tx = new ApplyTransaction({ state, kernel, policy, log: captureLog('silent').log });
  t.teardown(() => tx.close());
  const withWorkloads = (name: string) => ({ ...model(service('web', VIP, 80, [backend(18080)], http())), workloads: [{ name, cgroups: ['/'] }] });
  t.equal(tx.apply(withWorkloads('reader'), 'test'), null, 'first model applied');
  const workloadOf = state.identities.of;
  t.equal(workloadOf(rootId), 'reader');
  refuse = true;
  t.match(tx.apply(withWorkloads('admin'), 'test'), /E2BIG/, 'the kernel refused the second');
  t.equal(workloadOf(rootId), 'reader', 'the identity is the one of the model in force');
});
