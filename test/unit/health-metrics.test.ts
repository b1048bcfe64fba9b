// The agent's Prometheus endpoint without a kernel: --metrics-listen parsing, GET /metrics over real HTTP with
// kernel counters from a stand-in reader, health verdicts from a real checker probing real loopback servers.
import t from 'tap';
import { request } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { AgentMetrics, parseListen, type KernelCounters } from '../../agent/observe/metrics.js';
import { BackendStates } from '../../agent/health/states.js';
import { HealthChecker } from '../../agent/health/checker.js';
import type { Model } from '../../agent/model/types.js';
import type { Panic } from '../../agent/health/effective.js';

const get = (url: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> => new Promise((res, rej) => {
  const req = request(url, { method }, (r) => {
    let body = '';
    r.on('data', (d) => { body += d; });
    r.on('end', () => res({ status: r.statusCode!, type: String(r.headers['content-type']), body }));
  });
  req.on('error', rej);
  req.end();
});
const zero = { connections: 0n, udp_messages: 0n, no_backend: 0n, redirects: 0n, redirect_bytes: 0n, affinity_hits: 0n };

t.test('--metrics-listen', async (t) => {
  t.same(parseListen('127.0.0.1:9464'), { host: '127.0.0.1', port: 9464 });
  t.same(parseListen('[::1]:0'), { host: '::1', port: 0 });
  t.same(parseListen('localhost:80'), { host: 'localhost', port: 80 });
  t.equal(parseListen(''), null);
  t.equal(parseListen('off'), null);
  t.throws(() => parseListen('9464'), /--metrics-listen 9464: expected HOST:PORT/);
  t.throws(() => parseListen('127.0.0.1:70000'), /expected HOST:PORT/);
  t.throws(() => parseListen('::1:80'), /expected HOST:PORT/);
});

t.test('GET /metrics: kernel counters, health verdicts, panics, process metrics', async (t) => {
  const live = createServer((c) => c.destroy());
  await new Promise<void>((r) => live.listen(0, '127.0.0.1', () => r()));
  const livePort = (live.address() as AddressInfo).port;
  const dead = createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
  const deadPort = (dead.address() as AddressInfo).port;
  await new Promise<void>((r) => dead.close(() => r()));
  t.teardown(() => new Promise<void>((r) => live.close(() => r())));

  const model: Model = { services: [{
    name: 'web', algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251,
    healthCheck: { kind: 'tcp', intervalMs: 50, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 1 },
    frontends: [{ vip: '127.77.9.1', family: 4, port: 80, protocol: 'tcp', backends: [
      { address: '127.0.0.1', family: 4, port: livePort, weight: 1 }, { address: '127.0.0.1', family: 4, port: deadPort, weight: 1 },
    ] }],
  }] };
  const states = new BackendStates();
  let metrics: AgentMetrics | undefined = undefined;
  const checker = new HealthChecker(states, { onProbe: (s, _b, r) => metrics!.probed(s, r.healthy) });
  t.teardown(() => checker.close());
  let kernelReads = 0;
  const kernel = (): KernelCounters => {
    kernelReads++;
    return {
      global: { lb_connect: 42, lb_no_backend: 3 },
      services: [{ service: 'web', c: { ...zero, connections: 40n, no_backend: 3n } }],
      backends: [{ service: 'web', backend: `127.0.0.1:${livePort}`, c: { ...zero, connections: 40n, redirects: 7n, redirect_bytes: 700n } }],
    };
  };
  const panics: Panic[] = [{ service: 'other', vip: '::1', port: 53, protocol: 'udp', backends: ['[::1]:5353'] }];
  metrics = new AgentMetrics({ kernel, model: () => model, states, checker: () => checker, panics: () => panics });
  checker.update(model);
  const url = await metrics.listen('127.0.0.1', 0);
  t.teardown(() => metrics!.close());
  t.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  await new Promise((r) => setTimeout(r, 400));

  const r = await get(url);
  t.equal(r.status, 200);
  t.match(r.type, 'text/plain');
  const line = (re: RegExp): string | undefined => r.body.split('\n').find((l) => re.test(l));
  t.equal(line(/^sockmesh_datapath_lb_connect_total /), 'sockmesh_datapath_lb_connect_total 42');
  t.equal(line(/^sockmesh_service_connections_total/), 'sockmesh_service_connections_total{service="web"} 40');
  t.equal(line(/^sockmesh_service_no_backend_total/), 'sockmesh_service_no_backend_total{service="web"} 3');
  t.equal(line(/^sockmesh_backend_sockmap_redirect_bytes_total/), `sockmesh_backend_sockmap_redirect_bytes_total{service="web",backend="127.0.0.1:${livePort}"} 700`);
  t.match(r.body, '# TYPE sockmesh_backend_connections_total counter');
  t.equal(line(new RegExp(`^sockmesh_backend_up\\{.*${livePort}`)), `sockmesh_backend_up{service="web",backend="127.0.0.1:${livePort}"} 1`);
  t.equal(line(new RegExp(`^sockmesh_backend_up\\{.*${deadPort}`)), `sockmesh_backend_up{service="web",backend="127.0.0.1:${deadPort}"} 0`);
  t.equal(line(new RegExp(`^sockmesh_backend_in_service\\{.*${deadPort}`)), `sockmesh_backend_in_service{service="web",backend="127.0.0.1:${deadPort}"} 0`);
  t.equal(line(/^sockmesh_frontend_panic/), 'sockmesh_frontend_panic{service="other",frontend="[::1]:53/udp"} 1');
  const ok = Number(line(/^sockmesh_health_checks_total\{service="web",result="success"\}/)?.split(' ')[1]);
  const bad = Number(line(/^sockmesh_health_checks_total\{service="web",result="failure"\}/)?.split(' ')[1]);
  t.ok(ok >= 2 && bad >= 2, `probe counts: ${ok} ok, ${bad} failed`);
  t.match(r.body, /^process_cpu_user_seconds_total /m, 'default process metrics');
  t.equal(kernelReads, 1, 'one kernel read per scrape, shared by every family');
  t.equal((await get(url.replace('/metrics', '/other'))).status, 404);
  // the DaemonSet's probe: 200 without touching the kernel (a scrape reads it; a probe every few seconds must not)
  const health = await get(url.replace('/metrics', '/healthz'));
  t.same([health.status, health.body], [200, 'ok\n'], 'GET /healthz');
  t.equal(kernelReads, 1, '/healthz reads no kernel counters');
  t.equal((await get(url.replace('/metrics', '/healthz'), 'POST')).status, 404, 'only GET and HEAD');
  t.equal((await get(url, 'HEAD')).status, 200);

  // a scoped update that removes the service (xDS): its probe counts go with it; an unrelated scope keeps them
  metrics.forgetRemoved(new Set(['other']), model.services);
  t.match((await get(url)).body, /sockmesh_health_checks_total\{service="web"/, 'kept: web was not in the scope');
  checker.update({ services: [] }, new Set(['web']));
  metrics.forgetRemoved(new Set(['web']), []);
  t.notMatch((await get(url)).body, /sockmesh_health_checks_total\{service="web"/, 'forgotten with the service');
});
