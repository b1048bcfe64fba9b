// The Grafana dashboard (deploy/grafana/sockmesh.json) against a real agent: the agent runs in a test cgroup with an
// L4 service (health-checked), an L4 service whose only backend is dead (panic), and an L7 service with routes, a
// circuit breaker and outlier detection; a little L4 and L7 traffic makes every family the agent exports show samples
// (local replies, an overflow, an ejection included); then every metric name and every label that each dashboard
// query (and each template variable) uses must be in the real /metrics scrape, with a sample carrying the label.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ROOT, freePort, kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { connectId, idServer, sleep } from '../lib/net.js';
import { parseScrape, promUses, scrape, type Scrape } from '../lib/promql.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

/** Labels Prometheus adds to every series when it scrapes a target: the dashboard may use them, the agent cannot export them. */
const TARGET_LABELS = new Set(['instance', 'job']);

interface Query { where: string; expr: string }

/** Every PromQL expression of the dashboard: panel targets and the template variables' label_values(...) queries. */
function dashboardQueries(): { queries: Query[]; labelValues: { where: string; selector: string; label: string }[] } {
  const dash = JSON.parse(readFileSync(join(ROOT, 'deploy', 'grafana', 'sockmesh.json'), 'utf8')) as {
    panels: { title: string; targets?: { expr: string }[] }[];
    templating: { list: { name: string; type: string; definition?: string }[] };
  };
  const queries: Query[] = [];
  for (const p of dash.panels) for (const tg of p.targets ?? []) queries.push({ where: `panel '${p.title}'`, expr: tg.expr });
  const labelValues = dash.templating.list.filter((v) => v.type === 'query').map((v) => {
    const m = /^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$/.exec(v.definition ?? '');
    if (!m) throw new Error(`variable ${v.name}: not a label_values(selector, label) query: ${v.definition}`);
    return { where: `variable $${v.name}`, selector: m[1]!, label: m[2]! };
  });
  return { queries, labelValues };
}

/** What of one query the scrape lacks: metric names without samples, labels no sample of the metric(s) carries. */
function lacking(scrape: Scrape, where: string, expr: string, extraLabels: string[] = []): string[] {
  const u = promUses(expr);
  const out: string[] = [];
  if (u.metrics.length === 0) out.push(`${where}: no metric in ${expr}`);
  const has = (metric: string, label: string) => TARGET_LABELS.has(label) || (scrape.samples.get(metric)?.labels.has(label) ?? false);
  for (const m of u.metrics) if (!scrape.samples.has(m)) out.push(`${where}: metric ${m} not in the scrape`);
  for (const { metric, label } of u.matchers) {
    const on = metric ? [metric] : u.metrics;
    if (!on.some((m) => has(m, label))) out.push(`${where}: label ${label} not on ${on.join(', ')}`);
  }
  for (const label of [...u.grouping, ...extraLabels]) {
    if (!u.metrics.some((m) => has(m, label))) out.push(`${where}: label ${label} (grouping) not on any of ${u.metrics.join(', ')}`);
  }
  return out;
}

interface Backend { port: number; server: Server; close(): Promise<void> }

/** An HTTP backend: 503 on /flaky, a slow answer on /slow, 200 otherwise. */
async function httpBackend(status = 200): Promise<Backend> {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const code = req.url?.startsWith('/flaky') ? 503 : status;
      const answer = () => { res.writeHead(code, { 'content-type': 'text/plain' }); res.end('x'); };
      if (req.url?.startsWith('/slow')) setTimeout(answer, 400); else answer();
    });
  });
  server.keepAliveTimeout = 500;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port, server,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

function get(host: string, port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, agent: false, timeout: 5000 }, (res: IncomingMessage) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout GET ${host}:${port}${path}`)));
    req.on('error', reject);
    req.end();
  });
}


t.test('every metric and label the Grafana dashboard queries is in a real scrape', { skip: skip ?? false }, async (t) => {
  // The parse must see the dashboard's queries before any agent starts: a broken query fails fast.
  const { queries, labelValues } = dashboardQueries();
  t.ok(queries.length >= 40, `${queries.length} panel queries`);
  t.equal(labelValues.length, 2, 'two query variables ($instance, $service)');

  const cg = testCgroup(t, 'grafana');
  const agentCgroup = cg.child('agent');
  cg.enter('client');
  const l4a = await idServer('a'), l4b = await idServer('b');
  const ok1 = await httpBackend(), ok2 = await httpBackend();
  const deadPort = await freePort(); // nothing listens: the 'gone' service's only backend fails its checks (panic)
  t.teardown(async () => { for (const s of [l4a, l4b, ok1, ok2]) await s.close().catch(() => {}); });
  const config = `
services:
  - name: shop
    vips: [127.77.31.1]
    ports: [{ port: 8080 }]
    healthCheck: { type: tcp, interval: 200ms, timeout: 150ms, healthyThreshold: 1, unhealthyThreshold: 1 }
    backends: [{ address: 127.0.0.1, port: ${l4a.port} }, { address: 127.0.0.1, port: ${l4b.port} }]
  - name: gone
    vips: [127.77.31.2]
    ports: [{ port: 8080 }]
    healthCheck: { type: tcp, interval: 200ms, timeout: 150ms, healthyThreshold: 1, unhealthyThreshold: 1 }
    backends: [{ address: 127.0.0.1, port: ${deadPort} }]
  - name: web
    vips: [127.77.31.3]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${ok1.port} }, { address: 127.0.0.1, port: ${ok2.port} }]
    http:
      failMode: closed
      circuitBreaker: { maxRequests: 1 }
      outlierDetection: { consecutive5xx: 2, maxEjectionPercent: 50 }
      routes:
        - name: api
          match: { path: { prefix: /api } }
          retries: { attempts: 1 }
        - name: flaky
          match: { path: { prefix: /flaky } }
        - name: slow
          match: { path: { prefix: /slow } }
`;
  const agent = await startAgent(t, cg, { config, inCgroup: agentCgroup, extraArgs: ['--metrics-listen', '127.0.0.1:0'] });
  const metricsAt = String((await agent.waitLog((l) => l.msg === 'metrics endpoint listening')).address);

  // L4: connections through the VIP (kernel counters per service and backend; the sockmap sees the data)
  for (let i = 0; i < 20; i++) t.match((await connectId('127.77.31.1', 8080, { timeoutMs: 3000 })).id, /^[ab]$/);
  // L7: routed requests (latency histogram), a request no route matches (a local reply), 5xx answers until one
  // backend is ejected, and concurrent slow requests over the circuit breaker's maxRequests (overflows).
  for (let i = 0; i < 10; i++) t.equal(await get('127.77.31.3', 80, '/api/x'), 200);
  t.equal(await get('127.77.31.3', 80, '/nowhere'), 404, 'no route: answered by the proxy');
  for (let i = 0; i < 6; i++) t.equal(await get('127.77.31.3', 80, '/flaky'), 503);
  const slow = await Promise.all(Array.from({ length: 4 }, () => get('127.77.31.3', 80, '/slow')));
  t.ok(slow.includes(200) && slow.includes(503), `over maxRequests: some answered, some refused (${slow.join(',')})`);
  await agent.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('every backend of a frontend is out') && l.service === 'gone', 10_000);
  await sleep(300); // a probe round more: health-check counters of both results

  const text = await scrape(metricsAt);
  const s = parseScrape(text);
  // The traffic above did reach what it was meant to (else a missing family would be the test's fault, not the dashboard's).
  for (const family of ['sockmesh_http_ejections_total', 'sockmesh_http_overflows_total', 'sockmesh_http_local_replies_total',
    'sockmesh_frontend_panic', 'sockmesh_backend_up', 'sockmesh_http_request_duration_milliseconds_bucket']) {
    t.ok(s.samples.has(family), `the scrape has ${family} samples`);
  }

  const problems: string[] = [];
  for (const q of queries) problems.push(...lacking(s, q.where, q.expr));
  for (const v of labelValues) problems.push(...lacking(s, v.where, v.selector, [v.label]));
  t.same(problems, [], 'every metric and label of the dashboard is in the scrape');

  // The check itself can fail: a name the agent does not export, and a label its metric does not carry.
  t.match(lacking(s, 'probe', 'sum(rate(sockmesh_service_conections_total[5m]))'), [/metric sockmesh_service_conections_total not in the scrape/]);
  t.match(lacking(s, 'probe', 'sum by (route) (rate(sockmesh_service_connections_total{service="x"}[5m]))'), [/label route \(grouping\)/]);
  t.match(lacking(s, 'probe', 'sockmesh_backend_up{class="5xx"}'), [/label class not on sockmesh_backend_up/]);
});
