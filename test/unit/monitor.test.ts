// The live monitor without a kernel: its filter, rate limit, query parsing, fan-out (a slow reader loses lines and is
// told, the others do not notice), the admin server's bounded stream, and the text view.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import pino from 'pino';
import { RateLimit, matches, monitorQueryString, parseMonitorQuery, type L4Event, type MonitorEvent, type MonitorSummary } from '../../agent/observe/filter.js';
import { MonitorHub, podOf } from '../../agent/observe/monitor.js';
import type { FlowEvent } from '../../agent/observe/events.js';
import { AdminServer, STREAM_QUEUE_BYTES } from '../../agent/admin/server.js';
import { adminStreams } from '../../agent/admin/routes.js';
import { AdminClient } from '../../cli/client.js';
import { MonitorView, hiddenText } from '../../cli/commands/monitor.js';
import { PLAIN } from '../../cli/style.js';

const l4 = (over: Partial<L4Event> = {}): L4Event => ({
  type: 'l4', kind: 'connect', verdict: 'forwarded', time: '2026-01-01T00:00:00.000Z', protocol: 'tcp', service: 'shop',
  vip: '127.0.0.1:80', backend: '127.0.0.1:9000', algorithm: 'maglev', affinityHit: false, cgroupId: '77',
  cgroup: '/mesh/kubepods-x/web-1', pod: 'web-1', netnsCookie: '1', cookie: '2', ...over,
});
const health: MonitorEvent = { type: 'health', kind: 'out', verdict: 'out', time: 'x', service: 'shop', backend: '127.0.0.1:9000', reason: 'r' };

t.test('filter: each option narrows, lists match any value', async (t) => {
  t.ok(matches({}, l4()), 'no filter: everything');
  t.ok(matches({ service: ['a', 'shop'] }, l4()));
  t.notOk(matches({ service: ['a'] }, l4()));
  t.ok(matches({ type: ['l4'] }, l4()), 'type by type');
  t.ok(matches({ type: ['connect'] }, l4()), 'type by kind');
  t.notOk(matches({ type: ['no-backend', 'l7'] }, l4()));
  t.ok(matches({ verdict: ['forwarded'] }, l4()));
  t.notOk(matches({ verdict: ['refused'] }, l4()));
  t.ok(matches({ pod: ['web-1'] }, l4()));
  t.notOk(matches({ pod: ['web-2'] }, l4()));
  t.notOk(matches({ pod: ['web-1'] }, health), 'a pod filter never matches an event without a client');
  t.ok(matches({ cgroup: ['/mesh/kubepods-x'] }, l4()), 'a parent cgroup');
  t.ok(matches({ cgroup: ['mesh/kubepods-x/web-1/'] }, l4()), 'the cgroup itself, slashes as they come');
  t.notOk(matches({ cgroup: ['/mesh/kubepods'] }, l4()), 'not a prefix of a name');
  t.ok(matches({ cgroup: ['77'] }, l4()), 'by id');
  t.notOk(matches({ cgroup: ['/mesh'] }, l4({ cgroup: '' })), 'an unknown cgroup matches no path');
  t.notOk(matches({ service: ['shop'], verdict: ['refused'] }, l4()), 'all options must hold');
});

t.test('query: round trip, comma lists, refusals name the bad value', async (t) => {
  const q = parseMonitorQuery(new URLSearchParams(monitorQueryString({ service: ['a', 'b'], type: ['l7'], verdict: ['error'], rate: 5, summaryMs: 1000 }).slice(1)));
  t.same(q, { service: ['a', 'b'], type: ['l7'], verdict: ['error'], rate: 5, summaryMs: 1000 });
  t.same(parseMonitorQuery(new URLSearchParams('type=l4,no-backend')).type, ['l4', 'no-backend']);
  t.same(parseMonitorQuery(new URLSearchParams('')), { rate: 0, summaryMs: 5000 }, 'defaults: no limit, a summary every 5 s');
  t.throws(() => parseMonitorQuery(new URLSearchParams('type=bogus')), /unknown --type 'bogus'/);
  t.throws(() => parseMonitorQuery(new URLSearchParams('verdict=meh')), /unknown --verdict 'meh'/);
  t.throws(() => parseMonitorQuery(new URLSearchParams('rate=-1')), /rate/);
  t.throws(() => parseMonitorQuery(new URLSearchParams('summaryMs=5')), /summaryMs/);
});

t.test('rate limit: a token bucket of rate per second, refusals counted', async (t) => {
  let now = 0;
  const r = new RateLimit(10, () => now);
  let ok = 0;
  for (let i = 0; i < 25; i++) if (r.take()) ok++;
  t.equal(ok, 10, 'a burst of rate');
  t.equal(r.dropped, 15);
  now = 500;
  ok = 0;
  for (let i = 0; i < 10; i++) if (r.take()) ok++;
  t.equal(ok, 5, 'half a second refills half');
  const free = new RateLimit(0, () => now);
  for (let i = 0; i < 1000; i++) free.take();
  t.equal(free.dropped, 0, '0: no limit');
});

t.test('pod of a cgroup path', async (t) => {
  t.equal(podOf('/mesh/kubepods-demo/web-1'), 'web-1');
  t.equal(podOf('/mesh/kubepods-demo/web-1/container'), 'web-1');
  t.equal(podOf('/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/cri-x.scope'), 'cri-x.scope');
  t.equal(podOf('/mesh/client'), undefined);
});

const flow = (over: Partial<FlowEvent> = {}): FlowEvent => ({
  time: '2026-01-01T00:00:00.000Z', kind: 'connect', protocol: 'tcp', service: 'shop', vip: '127.0.0.1:80', backend: '127.0.0.1:9000',
  cookie: '1', netnsCookie: '2', cgroupId: '0', algorithm: 'random', affinityHit: false, ...over,
});

t.test('hub: fan-out through each reader\'s filter; a slow reader loses lines, the others do not', async (t) => {
  let counters: Record<string, number> = { lb_connect: 100, lb_no_backend: 0, event_drop: 0 };
  const hub = new MonitorHub({ sample: 4, kernelCounters: () => counters, cgroup2Root: '/nonexistent', meshedCgroup: '/nonexistent/mesh' });
  t.teardown(() => hub.close());
  hub.flow(flow()); // before anyone reads: counted as seen, sent to nobody
  t.equal(hub.active, false);
  const fast: string[] = [];
  const refused: string[] = [];
  let slowWrites = 0;
  const detachFast = hub.attach(parseMonitorQuery(new URLSearchParams('')), { write: (l) => { fast.push(l); return true; } });
  hub.attach(parseMonitorQuery(new URLSearchParams('verdict=refused')), { write: (l) => { refused.push(l); return true; } });
  const detachSlow = hub.attach(parseMonitorQuery(new URLSearchParams('')), { write: () => { slowWrites++; return false; } });
  t.equal(hub.size, 3);
  t.equal(JSON.parse(fast[0]!).type, 'summary', 'a summary first');
  counters = { ...counters, lb_connect: 108, lb_no_backend: 1 };
  for (let i = 0; i < 2; i++) hub.flow(flow());
  hub.flow(flow({ kind: 'no-backend', backend: '-' }));
  hub.flow(flow({ kind: 'sock-insert', vip: '-', backend: '-', local: '127.0.0.1:5000', peer: '127.0.0.1:9000', active: true }));
  const events = fast.slice(1).map((l) => JSON.parse(l) as MonitorEvent);
  t.same(events.map((e) => `${e.type}/${e.kind}/${e.verdict}`), ['l4/connect/forwarded', 'l4/connect/forwarded', 'l4/no-backend/refused', 'fastpath/sock-insert/inserted']);
  t.equal(refused.length, 2, 'the filtered reader: its summary and the refusal');
  t.equal(JSON.parse(refused[1]!).kind, 'no-backend');
  t.equal(slowWrites, 5, 'the slow reader was offered every line, never waited for');
  const s = (hub as unknown as { summary(r: unknown): MonitorSummary }).summary([...(hub as unknown as { readers: Set<unknown> }).readers][2]);
  t.equal(s.slowReader, 5, 'and its summary counts what it lost');
  t.equal(s.sample, 4);
  t.equal(s.kernel.counted.connect, 8, 'the kernel counted 8 connects since it attached');
  t.equal(s.kernel.seen.connect, 2, 'of which 2 were seen (sampling 1 in 4)');
  t.equal(s.kernel.counted['no-backend'], 1);
  detachSlow();
  detachFast();
  t.equal(hub.size, 1, 'detached readers get nothing more');
});

t.test('admin stream: several readers at once, a reader that does not read is bounded and never blocks', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-monitor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const hub = new MonitorHub({ sample: 1, kernelCounters: () => ({}), cgroup2Root: '/nonexistent', meshedCgroup: '/nonexistent/mesh' });
  const server = new AdminServer(join(dir, 'admin.sock'), {}, pino({ level: 'silent' }), adminStreams(hub));
  await server.start();
  t.teardown(async () => { hub.close(); await server.stop(); });
  // A reader that connects and never reads.
  const stuck = connect(join(dir, 'admin.sock'));
  stuck.pause();
  stuck.write('GET /v1/monitor?summaryMs=100000 HTTP/1.1\r\nhost: x\r\n\r\n');
  t.teardown(() => stuck.destroy());
  const client = new AdminClient(join(dir, 'admin.sock'));
  const got: MonitorEvent[] = [];
  const abort = new AbortController();
  const done = client.stream('/v1/monitor?type=l4&summaryMs=100000', (o) => { if ((o as { type: string }).type !== 'summary') got.push(o as MonitorEvent); }, abort.signal);
  for (let i = 0; i < 500 && hub.size < 2; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(hub.size, 2, 'both readers attached');
  // Far more than the stuck reader's socket and its queue hold.
  const big = 'x'.repeat(1000);
  const n = Math.ceil((STREAM_QUEUE_BYTES * 8) / 1200);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    hub.flow(flow({ service: big }));
    // the reading reader keeps up when the agent yields to I/O now and then, as its event loop does
    if (i % 20 === 0) await new Promise((r) => setTimeout(r, 1));
  }
  const ms = performance.now() - t0;
  t.ok(ms < 5000, `publishing ${n} events took ${ms.toFixed(0)} ms with a stuck reader attached`);
  for (let i = 0; i < 500 && got.length < n; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(got.length, n, 'the reading reader got every event');
  const slow = [...(hub as unknown as { readers: Set<{ slow: number }> }).readers].map((r) => r.slow);
  t.ok(Math.max(...slow) > 0, `the stuck reader lost ${Math.max(...slow)} lines, counted`);
  abort.abort();
  await done;
  const bad = await client.stream('/v1/monitor?verdict=nope', () => {}, new AbortController().signal).then(() => null, (e: Error) => e);
  t.match(bad?.message, /HTTP 400: unknown --verdict 'nope'/, 'a bad query: 400 with the reason');
});

t.test('text view: one line per event, the sampling said at the start and when something is hidden', async (t) => {
  const v = new MonitorView(PLAIN);
  const sum = (over: Partial<MonitorSummary> = {}): MonitorSummary => ({
    type: 'summary', time: 'x', sample: 10, kernel: { counted: { connect: 50 }, seen: { connect: 5 }, ringFull: 0 },
    matched: 5, sent: 5, rateLimited: 0, slowReader: 0, ...over,
  });
  t.match(v.render(sum())[0], /-- kernel sampling 1 in 10: most L4 and fast-path events are not emitted; events seen\/counted by the kernel: connect 5\/50/);
  t.same(v.render(sum()), [], 'the same line is not repeated');
  t.match(v.render(sum({ rateLimited: 3 }))[0], /3 over --rate/);
  t.match(v.render(l4())[0], /L4\s+connect\s+forwarded\s+pod web-1 -> shop 127\.0\.0\.1:80\/tcp => backend 127\.0\.0\.1:9000 maglev$/);
  t.match(v.render(l4({ kind: 'no-backend', verdict: 'refused', backend: '-', pod: undefined }))[0], /cgroup \/mesh\/kubepods-x\/web-1 -> shop .* => no backend/);
  t.match(v.render({ type: 'l7', kind: 'request', verdict: 'forwarded', time: 'x', service: 'api', route: 'r', method: 'GET', path: '/a', status: 200,
    backend: '127.0.0.1:1', retries: 1, durationMs: 2.5 })[0], /api GET \/a -> 200 route r backend 127\.0\.0\.1:1 retries 1 2\.5ms/);
  t.match(hiddenText(sum({ sample: 0 })), /flow events off/);
});

// A finding of the fuzz target test/fuzz/targets/admin.ts, once wrong.
t.test('fuzz finding: a request-target that is no URL gets a 400, and the admin server lives on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-admin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const sock = join(dir, 'admin.sock');
  const server = new AdminServer(sock, { '/v1/status': () => ({ ok: true }) }, pino({ level: 'silent' }));
  await server.start();
  t.teardown(() => server.stop());
  const rejections: unknown[] = [];
  const onRejection = (e: unknown) => { rejections.push(e); };
  process.on('unhandledRejection', onRejection);
  t.teardown(() => { process.off('unhandledRejection', onRejection); });
  const ask = (raw: string) => new Promise<string>((resolve) => {
    const c = connect(sock);
    let got = '';
    c.on('data', (d) => { got += d.toString(); });
    c.on('close', () => resolve(got));
    c.end(raw);
  });
  const reply = await ask('GET //4999999999 HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n');
  t.match(reply, /^HTTP\/1\.1 400 /, 'answered 400 (was: an unhandled rejection, which ends the agent)');
  t.match(reply, /bad request-target/);
  t.match(await ask('GET /v1/status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 [\s\S]*"ok":true/, 'still serving');
  await new Promise((r) => setImmediate(r));
  t.same(rejections, [], 'no unhandled rejection');
});
