// Active health checking end to end: the real agent probes three real backends of an L4 service; a killed backend
// leaves the kernel's selection table (read from the pinned maps) and gets no new connection, a config reload does
// not bring it back, a restarted one returns; meshctl backends says why and since when; the Prometheus endpoint's
// counters match the connections made; every backend down = panic, all kept.
import t from 'tap';
import { createServer, type Server, type Socket } from 'node:net';
import { MapReader } from '../../agent/datapath/inspect.js';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { connectId, idServer, sleep, type IdServer } from '../lib/net.js';
import { scrape } from '../lib/promql.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const VIP = '127.77.6.1';
const PORT = 8080;

/** An id server on a given port (a backend restarted where it was). */
async function idServerOn(id: string, port: number): Promise<IdServer> {
  const sockets = new Set<Socket>();
  const s: IdServer = {
    id, port, accepted: 0,
    server: createServer((c) => {
      s.accepted++;
      sockets.add(c);
      c.on('close', () => sockets.delete(c));
      c.on('error', () => {});
      c.write(`${id}\n`);
    }),
    close: () => new Promise((r) => { for (const c of sockets) c.destroy(); s.server.close(() => r()); }),
  };
  await new Promise<void>((r, j) => { (s.server as Server).once('error', j); s.server.listen(port, '127.0.0.1', () => r()); });
  return s;
}

const metric = (text: string, name: string, labels: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
};

t.test('active health checks take a dead L4 backend out of the kernel slots and put it back', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'health');
  cg.enter('client');
  const servers: Record<string, IdServer> = { a: await idServer('a'), b: await idServer('b'), c: await idServer('c') };
  t.teardown(async () => { for (const s of Object.values(servers)) await s.close().catch(() => {}); });
  const key = (id: string): string => `127.0.0.1:${servers[id]!.port}`;
  const config = (weightA = 1): string => `
services:
  - name: web
    vips: [${VIP}]
    ports: [{ port: ${PORT} }]
    algorithm: maglev
    healthCheck: { type: tcp, interval: 200ms, timeout: 150ms, healthyThreshold: 2, unhealthyThreshold: 2 }
    backends:
      - { address: 127.0.0.1, port: ${servers.a!.port}, weight: ${weightA} }
      - { address: 127.0.0.1, port: ${servers.b!.port} }
      - { address: 127.0.0.1, port: ${servers.c!.port} }
  - name: other
    vips: [127.77.6.2]
    ports: [{ port: ${PORT} }]
    backends: [{ address: 127.0.0.1, port: ${servers.a!.port} }, { address: 127.0.0.1, port: ${servers.c!.port} }]
`;
  const agent = await startAgent(t, cg, { config: config(), extraArgs: ['--metrics-listen', '127.0.0.1:0'] });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const metricsAt = String((await agent.waitLog((l) => l.msg === 'metrics endpoint listening')).address);

  /** Connections through the VIP, counted per backend that answered; every one must succeed. */
  const made = new Map<string, number>();
  const connectMany = async (n: number): Promise<Map<string, number>> => {
    const got = new Map<string, number>();
    for (let i = 0; i < n; i += 10) {
      const batch = await Promise.all(Array.from({ length: Math.min(10, n - i) }, () => connectId(VIP, PORT, { timeoutMs: 3000 })));
      for (const c of batch) { got.set(c.id, (got.get(c.id) ?? 0) + 1); made.set(c.id, (made.get(c.id) ?? 0) + 1); }
    }
    return got;
  };
  /** The kernel's view of web's one frontend: backend port -> [share of the table, weight]. */
  const kernel = (): Map<number, { share: number; weight: number; state: string }> => {
    const fe = reader.frontends().find((f) => f.vip === VIP && f.port === PORT)!;
    return new Map(fe.backends.map((b) => [b.port, { share: b.share, weight: b.weight, state: b.state }]));
  };
  const statesApplied = (pred: (out: string[]) => boolean, from: number) => agent.waitLog((l) => {
    if (l.msg !== 'backend states applied' || agent.logs.indexOf(l) < from) return false;
    const web = (l.services as { service: string; out: string[] }[]).find((s) => s.service === 'web');
    return web !== undefined && pred(web.out);
  }, 10_000);

  t.test('all three healthy: all in the table, all answer', async (t) => {
    await sleep(600); // a few probe rounds: nothing flips for healthy backends
    t.notOk(agent.logs.some((l) => l.msg === 'backend states applied'), 'no state change while everything is healthy');
    const k = kernel();
    for (const id of ['a', 'b', 'c']) t.ok(k.get(servers[id]!.port)!.share > 0.2, `${id} holds a share of the table`);
    const got = await connectMany(90);
    t.same([...got.keys()].sort(), ['a', 'b', 'c']);
  });

  let outAt = 0;
  t.test('kill c: out of the kernel slots within two intervals, no new connection reaches it', async (t) => {
    const from = agent.logs.length;
    const t0 = Date.now();
    const otherTable = reader.frontends().find((f) => f.vip === '127.77.6.2')!.tableId;
    await servers.c!.close();
    const applied = await statesApplied((out) => out.includes(key('c')), from);
    t.equal(applied.frontendsWritten, 1, 'only web\'s frontend was rewritten');
    t.equal(reader.frontends().find((f) => f.vip === '127.77.6.2')!.tableId, otherTable,
      'a service without a health check that shares the backend address is untouched');
    outAt = Date.now();
    const took = outAt - t0;
    // unhealthyThreshold 2 at 200 ms: 2 probes, the first at most one interval after the kill; + 20 ms coalescing.
    t.ok(took < 3000, `out after ${took} ms`);
    const k = kernel().get(servers.c!.port)!;
    t.same(k, { share: 0, weight: 0, state: 'drained' }, 'weight 0 and no slot in the selection table');
    const table = reader.frontends().find((f) => f.vip === VIP)!;
    t.ok(table.tableSize > 0, 'the frontend still has a table');
    t.ok(table.backends.filter((b) => b.port !== servers.c!.port).every((b) => b.share > 0.4), 'a and b share it');
    const got = await connectMany(150);
    t.same([...got.keys()].sort(), ['a', 'b'], 'every one of 150 connections succeeded, none reached c');

    const r = meshctl(agent, ['backends', 'web', '--json']);
    t.equal(r.code, 0, r.stderr);
    const fe = JSON.parse(r.stdout).services[0].frontends[0];
    const c = fe.backends.find((b: { backend: string }) => b.backend === key('c'));
    t.equal(c.state, 'out');
    t.equal(c.effectiveWeight, 0);
    t.same(c.reasons, ['health check: connect ECONNREFUSED']);
    const since = Date.parse(c.since);
    t.ok(since >= t0 - 50 && since <= outAt + 50, 'since: when the verdict flipped');
    t.ok(c.probe.consecutiveFailures >= 2);
    t.equal(fe.panic, false);
    const text = meshctl(agent, ['backends']);
    t.equal(text.code, 0);
    t.match(text.stdout, new RegExp(`${key('c').replace(/\./g, '\\.')}\\s+1->0\\s+out\\s+\\d\\d:\\d\\d:\\d\\d \\(.*ago\\)\\s+health check: connect ECONNREFUSED`));
    t.match(text.stdout, /tcp health check every 200 ms \(timeout 150 ms, out after 2, in after 2\)/);

    const st = JSON.parse(meshctl(agent, ['status', '--json']).stdout);
    t.same(st.health, { probed: 3, out: 1, panics: 0, metrics: metricsAt }, 'status: 3 probed, 1 out');
    t.match(meshctl(agent, ['status']).stdout, /^health\s+3 backends probed, 1 out \(meshctl backends\)$/m);

    const m = await scrape(metricsAt);
    t.equal(metric(m, 'sockmesh_backend_up', `service="web",backend="${key('c')}"`), 0, 'backend_up 0 for c');
    t.equal(metric(m, 'sockmesh_backend_up', `service="web",backend="${key('a')}"`), 1);
    t.equal(metric(m, 'sockmesh_backend_in_service', `service="web",backend="${key('c')}"`), 0);
  });

  t.test('a config reload does not bring the out backend back', async (t) => {
    const from = agent.logs.length;
    agent.writeConfig(config(2));
    await agent.waitLog((l) => l.msg === 'config applied' && agent.logs.indexOf(l) >= from);
    const k = kernel();
    t.equal(k.get(servers.a!.port)!.weight, 2, 'the change was applied');
    t.same(k.get(servers.c!.port), { share: 0, weight: 0, state: 'drained' }, 'c is still out');
    const got = await connectMany(60);
    t.notOk(got.has('c'));
  });

  t.test('restart c: back in after two passing probes', async (t) => {
    const from = agent.logs.length;
    const t0 = Date.now();
    servers.c = await idServerOn('c', servers.c!.port);
    await statesApplied((out) => !out.includes(key('c')), from);
    t.ok(Date.now() - t0 < 3000, `back after ${Date.now() - t0} ms`);
    const k = kernel().get(servers.c!.port)!;
    t.equal(k.weight, 1);
    t.ok(k.share > 0.1, `c holds a share of the table again (${k.share.toFixed(3)})`);
    const got = await connectMany(120);
    t.ok((got.get('c') ?? 0) > 0, `c answers again (${got.get('c')} of 120)`);
    const r = JSON.parse(meshctl(agent, ['backends', 'web', '--json']).stdout);
    const c = r.services[0].frontends[0].backends.find((b: { backend: string }) => b.backend === key('c'));
    t.equal(c.state, 'in');
    t.same(c.reasons, []);
    t.equal(c.since, null);
  });

  t.test('Prometheus: the counters match the connections made', async (t) => {
    const m = await scrape(metricsAt);
    const total = [...made.values()].reduce((a, b) => a + b, 0);
    t.equal(metric(m, 'sockmesh_service_connections_total', 'service="web"'), total, `service connections = ${total} made`);
    for (const id of ['a', 'b', 'c']) {
      t.equal(metric(m, 'sockmesh_backend_connections_total', `service="web",backend="${key(id)}"`), made.get(id) ?? 0, `${id}: ${made.get(id)} connections`);
    }
    t.equal(metric(m, 'sockmesh_backend_up', `service="web",backend="${key('c')}"`), 1);
    const lb = Number(m.split('\n').find((l) => l.startsWith('sockmesh_datapath_lb_connect_total '))!.split(' ')[1]);
    t.ok(lb >= total, `global lb_connect ${lb} >= ${total} (global: every service of this datapath)`);
    t.ok((metric(m, 'sockmesh_health_checks_total', 'service="web",result="failure"') ?? 0) >= 2, 'failed probes counted');
    t.match(m, /^process_resident_memory_bytes \d+/m, 'process metrics');
  });

  t.test('every backend down: panic, all kept in the slots, reported', async (t) => {
    const from = agent.logs.length;
    for (const s of Object.values(servers)) await s.close();
    await agent.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('every backend of a frontend is out') && agent.logs.indexOf(l) >= from, 10_000);
    const k = kernel();
    t.same([...k.values()].map((x) => x.weight).sort(), [1, 1, 2], 'all keep their weights');
    t.ok([...k.values()].every((x) => x.share > 0), 'all still in the table');
    const r = JSON.parse(meshctl(agent, ['backends', 'web', '--json']).stdout);
    const fe = r.services[0].frontends[0];
    t.equal(fe.panic, true);
    t.same(fe.backends.map((b: { state: string }) => b.state), ['panic', 'panic', 'panic']);
    const m = await scrape(metricsAt);
    t.equal(metric(m, 'sockmesh_frontend_panic', `service="web",frontend="${VIP}:${PORT}/tcp"`), 1);
  });
});
