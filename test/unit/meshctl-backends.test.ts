// meshctl backends and routes against a fake agent: a real HTTP server on a real unix socket serving reports made by
// the agent's own report builders (from a model, a real BackendStates and a fake proxy report), and meshctl run as a
// child process (stdout, stderr, exit code as a script sees them).
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { execFile, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { backendsReport, routesReport } from '../../agent/admin/backends.js';
import { BackendStates } from '../../agent/health/states.js';
import type { Model } from '../../agent/model/types.js';
import type { ProxyReportSource, RouteReport } from '../../agent/admin/protocol.js';
import { renderBackends } from '../../cli/commands/backends.js';
import { retryText } from '../../cli/commands/routes.js';
import { PLAIN } from '../../cli/style.js';
import type { ProxyPolicy } from '../../agent/proxy/policy.js';

// What the agent is given by whoever runs the proxy: the policy's own reports, as they are (checked by tsc).
export const wiring = (policy: ProxyPolicy): ProxyReportSource => ({ backends: () => policy.backendsReport(), routes: () => policy.routesReport() });

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MESHCTL = join(ROOT, 'dist', 'cli', 'meshctl.js');
const newest = (dir: string): number => Math.max(0, ...readdirSync(dir, { withFileTypes: true, recursive: true })
  .filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => statSync(join(e.parentPath, e.name)).mtimeMs));
if (!existsSync(MESHCTL) || statSync(MESHCTL).mtimeMs < Math.max(newest(join(ROOT, 'cli')), newest(join(ROOT, 'agent', 'admin')))) {
  spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')],
    { cwd: ROOT, stdio: 'inherit', timeout: 300_000 });
}

const tmp = mkdtempSync(join(tmpdir(), 'meshctl-backends-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const runDir = join(tmp, 'run');
const noPins = join(tmp, 'bpffs-empty');
mkdirSync(runDir);
mkdirSync(noPins);

const be = (port: number, group?: string) => ({ address: '127.0.0.1', family: 4 as const, port, weight: 1, ...(group ? { group } : {}) });
const model: Model = { services: [
  {
    name: 'db', algorithm: 'maglev', affinityTimeoutSeconds: 0, maglevTableSize: 251,
    healthCheck: { kind: 'tcp', intervalMs: 1000, timeoutMs: 500, healthyThreshold: 2, unhealthyThreshold: 3 },
    frontends: [{ vip: '127.77.9.1', family: 4, port: 5432, protocol: 'tcp', backends: [be(6001), be(6002), { ...be(6003), weight: 0 }] }],
  },
  {
    name: 'web', algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251,
    frontends: [{ vip: '127.77.9.2', family: 4, port: 80, protocol: 'tcp', backends: [be(7001), be(7002, 'canary')] }],
    http: {
      failMode: 'open', balancer: 'least-request', accessLogSample: 0, upstreamProtocol: 'h2',
      circuitBreaker: { maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 1 },
      routes: [
        { name: 'api', match: { path: { prefix: '/api/' }, methods: ['GET', 'POST'], headers: [{ name: 'x-canary', value: { exact: '1' } }] },
          split: [{ group: 'default', weight: 90 }, { group: 'canary', weight: 10 }], timeoutMs: 15000,
          retry: { attempts: 2, perTryTimeoutMs: 500, retryOn: ['5xx'], retriableStatusCodes: [], backoffBaseMs: 25, backoffMaxMs: 250,
            budgetPercent: 20, minRetryConcurrency: 3, bufferLimitBytes: 65536, retryNonIdempotent: false },
          requestHeaders: { set: {}, remove: [] }, responseHeaders: { set: {}, remove: [] } },
        { name: 'rest', match: {}, split: [{ group: 'default', weight: 1 }], timeoutMs: 0,
          requestHeaders: { set: {}, remove: [] }, responseHeaders: { set: {}, remove: [] } },
      ],
    },
  },
] };

let now = 1_800_000_000_000;
const states = new BackendStates(() => now);
t.teardown(() => states.close());
states.setProbe('db', '127.0.0.1:6001', false, 'connect ECONNREFUSED');
now += 1000;
states.eject('web', '127.0.0.1:7002', 30_000, 'consecutive-5xx');
const proxy: ProxyReportSource = {
  backends: () => [
    { service: 'web', frontend: '127.77.9.2:80', backend: '127.0.0.1:7001', group: 'default', activeRequests: 4, consecutive5xx: 0 },
    { service: 'web', frontend: '127.77.9.2:80', backend: '127.0.0.1:7002', group: 'canary', activeRequests: 0, consecutive5xx: 5 },
  ],
  routes: () => [
    { service: 'web', route: 'api', requests: { '2xx': 1200, '5xx': 30, local: 2 }, retries: 17, budgetExhausted: 1, overflows: { 'max-requests': 3 } },
  ],
};

t.test('report builders', async (t) => {
  const r = backendsReport({ model, states, checker: undefined, proxy });
  const db = r.services.find((s) => s.service === 'db')!;
  const [b1, b2, b3] = db.frontends[0]!.backends;
  t.same([b1!.state, b2!.state, b3!.state], ['out', 'in', 'drained']);
  t.same([b1!.weight, b1!.effectiveWeight], [1, 0], 'out: weight 0 in the kernel');
  t.same(b1!.reasons, ['health check: connect ECONNREFUSED']);
  t.equal(b1!.since, new Date(1_800_000_000_000).toISOString());
  const web = r.services.find((s) => s.service === 'web')!;
  t.equal(web.l7, true);
  const canary = web.frontends[0]!.backends[1]!;
  t.equal(canary.group, 'canary');
  t.same(canary.ejection, { since: new Date(now).toISOString(), until: new Date(now + 30_000).toISOString(), count: 1, reason: 'consecutive-5xx' });
  t.equal(canary.ejections, 1);
  t.same(web.frontends[0]!.backends[0]!.proxy, { frontend: '127.77.9.2:80', group: 'default', activeRequests: 4, consecutive5xx: 0 });
  t.equal(backendsReport({ model, states, checker: undefined, proxy }, 'db').services.length, 1, '?service= filters');
  // Every backend of db out: panic, kept.
  states.setProbe('db', '127.0.0.1:6002', false, 'timeout 500 ms');
  const p = backendsReport({ model, states, checker: undefined, proxy }, 'db').services[0]!.frontends[0]!;
  t.equal(p.panic, true);
  t.same(p.backends.map((b) => [b.state, b.effectiveWeight]), [['panic', 1], ['panic', 1], ['drained', 0]]);
  const text = renderBackends(backendsReport({ model, states, checker: undefined, proxy }, 'db'), PLAIN, now);
  t.match(text.join('\n'), /PANIC: every backend is out; all are kept in service/);
  states.setProbe('db', '127.0.0.1:6002', true);

  const routes = routesReport(model, proxy);
  t.same(routes.routes.map((x) => [x.route, x.match]), [['api', 'GET,POST /api/* x-canary=1'], ['rest', '*']]);
  t.equal(routes.routes[0]!.live!['retries'], 17);
  t.same([routes.routes[0]!.retryOn, routes.routes[0]!.retryNonIdempotent], [['5xx'], false], 'what is retried, not only how often');
  t.same([routes.routes[1]!.retries, routes.routes[1]!.retryOn], [0, []]);
  const rt = (over: Partial<RouteReport>): string => retryText({ ...routes.routes[0]!, ...over });
  t.equal(rt({}), '2 x 500 ms on 5xx');
  t.equal(rt({ perTryTimeoutMs: 0, retryOn: ['unavailable', 'retriable-status-codes'], retriableStatusCodes: [409, 429] }), '2 on unavailable,409|429');
  t.equal(rt({ retryNonIdempotent: true }), '2 x 500 ms on 5xx, any method');
  t.equal(rt({ retries: 0 }), 'none');
  t.equal(routes.routes[1]!.live, null);
  const broken = routesReport(model, { routes: () => { throw new Error('boom'); } });
  t.equal(broken.proxyError, "the proxy's report failed: boom");
  t.equal(broken.routes.length, 2, 'the model part is still given');
});

/** A fake agent serving the reports over the real admin protocol (query strings and 404s as the agent does). */
const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  const service = url.searchParams.get('service') ?? undefined;
  const send = (status: number, body: unknown): void => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
  if (service !== undefined && !model.services.some((s) => s.name === service)) return send(404, { error: `no service named '${service}'` });
  if (url.pathname === '/v1/backends') return send(200, backendsReport({ model, states, checker: undefined, proxy }, service));
  if (url.pathname === '/v1/routes') return send(200, routesReport(model, proxy, service));
  send(404, { error: 'no such endpoint' });
});

function meshctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((ok) => {
    execFile(process.execPath, [MESHCTL, '--run-dir', runDir, '--bpffs', noPins, ...args], { env: { ...process.env, NO_COLOR: '1' }, timeout: 30_000 },
      (err, stdout, stderr) => ok({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0, stdout, stderr }));
  });
}

t.test('meshctl backends and routes', async (t) => {
  await new Promise<void>((ok) => server.listen(join(runDir, 'admin.sock'), ok));
  t.teardown(() => new Promise<void>((ok) => server.close(() => ok())));

  const r = await meshctl(['backends']);
  t.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  t.match(lines[0]!, /^db {2}tcp health check every 1s \(timeout 500 ms, out after 3, in after 2\)$/);
  t.equal(lines[1], '  127.77.9.1:5432/tcp');
  t.match(lines[2]!, /^ {4}BACKEND\s+GROUP\s+WEIGHT\s+STATE\s+SINCE\s+WHY\s+EJECTIONS\s+ACTIVE$/);
  t.match(lines[3]!, /^ {4}127\.0\.0\.1:6001\s+default\s+1->0\s+out\s+\d\d:\d\d:\d\d \(.+ ago\)\s+health check: connect ECONNREFUSED\s+0$/);
  t.match(lines[4]!, /^ {4}127\.0\.0\.1:6002\s+default\s+1\s+in\s+0$/);
  t.match(lines[5]!, /^ {4}127\.0\.0\.1:6003\s+default\s+0\s+drained/);
  t.match(r.stdout, /\nweb {2}L7 {2}no health check\n/);
  t.match(r.stdout, /127\.0\.0\.1:7001\s+default\s+1\s+in\s+0\s+4\n/, 'the proxy\'s active requests');
  t.match(r.stdout, /127\.0\.0\.1:7002\s+canary\s+1->0\s+out\s+.*ejected #1: consecutive-5xx \(until \d\d:\d\d:\d\d, .* left\)\s+1\s+0\n/);
  // Every table lines up: the STATE column starts at the same place in both services.
  const at = (re: RegExp): number => r.stdout.split('\n').find((l) => re.test(l))!.search(/\s(in|out|drained)\s/);
  t.equal(at(/6002/), at(/7001/), 'columns aligned across services');

  const j = await meshctl(['backends', 'web', '--json']);
  t.equal(j.code, 0);
  const doc = JSON.parse(j.stdout);
  t.same(doc.services.map((s: { service: string }) => s.service), ['web']);
  t.equal(doc.services[0].frontends[0].backends[1].ejection.reason, 'consecutive-5xx');

  const nf = await meshctl(['backends', 'nope']);
  t.equal(nf.code, 1);
  t.equal(nf.stderr, "meshctl: no service named 'nope'\n");

  const rt = await meshctl(['routes']);
  t.equal(rt.code, 0, rt.stderr);
  const rl = rt.stdout.trimEnd().split('\n');
  t.match(rl[0]!, /^SERVICE\s+ROUTE\s+MATCH\s+SPLIT\s+UPSTREAM\s+TIMEOUT\s+RETRIES\s+REQUESTS\s+5XX\s+LOCAL\s+RETRIED\s+BUDGET OUT\s+OVERFLOWS$/);
  t.match(rl[1]!, /^web\s+api\s+GET,POST \/api\/\* x-canary=1\s+default=90 canary=10\s+h2\s+15s\s+2 x 500 ms on 5xx\s+1\.2k\s+30\s+2\s+17\s+1\s+3$/);
  t.match(rl[2]!, /^web\s+rest\s+\*\s+default\s+h2\s+-\s+none\s+-\s+-\s+-\s+-\s+-\s+-$/);
  const rj = JSON.parse((await meshctl(['routes', 'db', '--json'])).stdout);
  t.same(rj, { routes: [], proxyError: null }, 'a service without http rules has no routes');
});

t.test('no agent: exit 3 with pins, 4 without', async (t) => {
  const r = await meshctl(['backends']);
  t.equal(r.code, 4);
  t.match(r.stderr, /no sockmesh datapath pinned at/);
  const fakePins = join(tmp, 'bpffs-pinned');
  mkdirSync(fakePins);
  // hasPins() checks for the sm_services pin only: an empty file stands in for it.
  rmSync(join(fakePins, 'sm_services'), { force: true });
  (await import('node:fs')).writeFileSync(join(fakePins, 'sm_services'), '');
  const r3 = await new Promise<{ code: number; stderr: string }>((ok) => execFile(process.execPath,
    [MESHCTL, '--run-dir', runDir, '--bpffs', fakePins, 'routes'], { timeout: 30_000 },
    (err, _o, stderr) => ok({ code: err ? (err as { code: number }).code : 0, stderr })));
  t.equal(r3.code, 3);
  t.match(r3.stderr, /L7 routes are kept by the agent only/);
});
