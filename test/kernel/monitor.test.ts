// meshctl monitor against a real agent: two readers at once (one unfiltered, one filtered) see the kernel's balancing
// decisions (with the client's pod and cgroup), no-backend refusals, fast-path inserts, the L7 redirect and the
// proxy's requests, and a config apply; the summaries give the sampling rate and the kernel's own counts.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect as netConnect } from 'node:net';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MESHCTL, kernelSkipReason, startAgent, testCgroup, type AgentHandle } from '../lib/kernel.js';
import { distribution, idServer, sleep } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

type Line = Record<string, any>;

interface Reader { proc: ChildProcess; lines: Line[]; stderr: string; exited: Promise<number | null> }

/** `meshctl monitor --json ARGS` running in the background, its lines parsed as they come. */
function monitorReader(agent: AgentHandle, args: string[]): Reader {
  const proc = spawn(process.execPath, [MESHCTL, '--bpffs', agent.bpffs, '--run-dir', agent.runDir, 'monitor', '--json', '--summary', '0.5', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  const r: Reader = { proc, lines: [], stderr: '', exited: new Promise((res) => proc.once('exit', (code) => res(code))) };
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    for (const p of parts) if (p.trim()) r.lines.push(JSON.parse(p) as Line);
  });
  proc.stderr!.on('data', (d: Buffer) => { r.stderr += d.toString(); });
  return r;
}

async function until(what: string, pred: () => boolean, timeoutMs = 10000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`not seen within ${timeoutMs} ms: ${what}`);
    await sleep(20);
  }
}

function httpGet(host: string, port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, agent: false, timeout: 5000 }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

function refusedConnect(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect({ host, port });
    s.on('connect', () => { s.destroy(); resolve('connected'); });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

t.test('meshctl monitor', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'monitor');
  const agentCgroup = cg.child('agent');
  // The client runs in a pod-like cgroup (kubepods-*/<pod>), as the lab and the kubelet lay them out.
  cg.child('kubepods-test');
  cg.enter('kubepods-test/web-1');
  const shopBackend = await idServer('shop');
  const web: Server = createServer((req, res) => { req.resume(); req.on('end', () => res.end('ok')); });
  web.keepAliveTimeout = 200;
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', () => r()));
  const webPort = (web.address() as AddressInfo).port;
  t.teardown(async () => { await shopBackend.close(); await new Promise((r) => web.close(r)); });
  const config = (extra = ''): string => `
services:
  - name: shop
    vips: [127.77.9.1]
    ports: [{ port: 8080 }]
    algorithm: maglev
    backends: [{ address: 127.0.0.1, port: ${shopBackend.port} }]
  - name: empty
    vips: [127.77.9.3]
    ports: [{ port: 8080 }]
    backends: []
  - name: api
    vips: [127.77.9.2]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${webPort} }]
    http:
      failMode: closed
      routes:
        - name: api-v1
          match: { path: { prefix: /v1 } }
        - name: rest
${extra}`;
  const agent = await startAgent(t, cg, { config: config(), inCgroup: agentCgroup, extraArgs: ['--proxy-heartbeat-ms', '200'] });

  const all = monitorReader(agent, []);
  const refusals = monitorReader(agent, ['--service', 'empty', '--type', 'l4', '--verdict', 'refused']);
  const l7only = monitorReader(agent, ['--type', 'l7', '--pod', 'nobody']);
  const readers = [all, refusals, l7only];
  t.teardown(async () => { for (const r of readers) { r.proc.kill('SIGKILL'); await r.exited; } });
  // Each reader's first line is a summary: it is attached from then on.
  for (const r of readers) await until('first summary', () => r.lines.some((l) => l.type === 'summary'));
  t.equal(all.lines[0]!.type, 'summary', 'a reader starts with a summary');
  t.equal(all.lines[0]!.sample, 1, 'it names the kernel sampling rate (--event-sample 1)');

  // Traffic: L4 through a VIP, a VIP without backends, an L7 VIP with a route, and a config change.
  await distribution('127.77.9.1', 8080, 10);
  t.equal(await refusedConnect('127.77.9.3', 8080), 'EPERM', 'no backend: refused at connect()');
  t.equal(await httpGet('127.77.9.2', 80, '/v1/items?x=1'), 200, 'L7 request through the proxy');
  agent.writeConfig(config('  - name: extra\n    vips: [127.77.9.4]\n    ports: [{ port: 8080 }]\n    backends: []\n'));

  await until('l7 request in the unfiltered reader', () => all.lines.some((l) => l.type === 'l7'));
  await until('config apply', () => all.lines.some((l) => l.type === 'config' && l.verdict === 'applied'));
  await until('a summary counting the 10 connects', () => all.lines.some((l) => l.type === 'summary' && l.kernel.counted.connect >= 10));
  await sleep(300);
  for (const r of readers) r.proc.kill('SIGINT');
  const codes = await Promise.all(readers.map((r) => r.exited));
  t.same(codes, [0, 0, 0], 'Ctrl-C ends every reader cleanly');
  t.match(all.stderr, /events shown; kernel sampling 1 in 1/, 'the last word says what was hidden');

  const events = all.lines.filter((l) => l.type !== 'summary');
  const connects = events.filter((l) => l.type === 'l4' && l.kind === 'connect' && l.service === 'shop');
  t.equal(connects.length, 10, 'every balancing decision of shop (sampling 1 in 1)');
  const c = connects[0]!;
  t.equal(c.verdict, 'forwarded');
  t.equal(c.vip, '127.77.9.1:8080');
  t.equal(c.backend, `127.0.0.1:${shopBackend.port}`, 'the chosen backend');
  t.equal(c.algorithm, 'maglev');
  t.equal(c.affinityHit, false);
  t.equal(c.pod, 'web-1', 'the client pod from its cgroup');
  t.match(c.cgroup, /\/sockmesh-test-monitor-[^/]+\/kubepods-test\/web-1$/, 'the client cgroup path');
  t.ok(Number(c.cgroupId) > 0, 'and its id');

  const noBackend = events.filter((l) => l.type === 'l4' && l.kind === 'no-backend');
  t.equal(noBackend.length, 1, 'the refusal');
  t.equal(noBackend[0]!.verdict, 'refused');
  t.equal(noBackend[0]!.service, 'empty');
  t.equal(noBackend[0]!.backend, '-');

  t.ok(events.some((l) => l.type === 'fastpath' && l.kind === 'sock-insert' && l.verdict === 'inserted' && l.service === 'shop' && l.active === true &&
    l.peer === `127.0.0.1:${shopBackend.port}`), 'fast-path insert of a shop client socket');
  t.ok(events.some((l) => l.type === 'fastpath' && l.kind === 'sock-insert' && l.active === false && l.local === `127.0.0.1:${shopBackend.port}`),
    'and of its server end');
  t.ok(events.some((l) => l.type === 'l4' && l.kind === 'l7-redirect' && l.verdict === 'redirected' && l.service === 'api' && l.pod === 'web-1'),
    'the kernel redirect to the proxy');
  const req = events.find((l) => l.type === 'l7');
  t.match(req, { kind: 'request', verdict: 'forwarded', service: 'api', method: 'GET', path: '/v1/items?x=1', status: 200, route: 'api-v1',
    backend: `127.0.0.1:${webPort}`, retries: 0 }, 'the L7 request: method, path, status, route, backend, retries');
  t.ok(typeof req?.durationMs === 'number' && req.durationMs >= 0, 'and its duration');
  t.ok(events.some((l) => l.type === 'config' && l.verdict === 'applied' && l.why === 'file change' && l.version >= 2), 'the config apply');

  const last = all.lines.filter((l) => l.type === 'summary').pop()!;
  t.ok(last.kernel.counted.connect >= 10, `kernel counted ${last.kernel.counted.connect} connects`);
  t.equal(last.kernel.seen.connect, last.kernel.counted.connect, 'with sampling 1 in 1 every counted connect was seen');
  t.equal(last.kernel.counted['no-backend'], 1);
  t.equal(last.slowReader, 0);
  t.equal(last.rateLimited, 0);

  // The filtered readers, at the same time: only what they asked for.
  const refused = refusals.lines.filter((l) => l.type !== 'summary');
  t.equal(refused.length, 1, 'the refusals reader saw the one refusal');
  t.match(refused[0], { type: 'l4', kind: 'no-backend', service: 'empty', verdict: 'refused' });
  t.equal(l7only.lines.filter((l) => l.type !== 'summary').length, 0, 'a pod filter naming nobody shows nothing');
  const filteredSummary = refusals.lines.filter((l) => l.type === 'summary').pop()!;
  t.equal(filteredSummary.matched, 1, 'its summary: one matched');
  t.ok(filteredSummary.kernel.counted.connect >= 10, 'and the kernel counts, filter or not');

  t.test('rate limit: what is over it is counted and said', async (t) => {
    const limited = monitorReader(agent, ['--type', 'connect', '--rate', '2', '--summary', '0.2']);
    t.teardown(async () => { limited.proc.kill('SIGKILL'); await limited.exited; });
    await until('first summary', () => limited.lines.some((l) => l.type === 'summary'));
    await distribution('127.77.9.1', 8080, 20);
    await until('a summary with the rate-limited count', () => limited.lines.some((l) => l.type === 'summary' && l.matched >= 20));
    limited.proc.kill('SIGINT');
    t.equal(await limited.exited, 0);
    const shown = limited.lines.filter((l) => l.type !== 'summary').length;
    const s = limited.lines.filter((l) => l.type === 'summary').pop()!;
    t.ok(shown >= 1 && shown <= 4, `${shown} shown at --rate 2`);
    t.equal(s.rateLimited + s.sent, s.matched, 'every matched event was either sent or counted as over the rate');
    t.ok(s.rateLimited >= 16, `${s.rateLimited} over the rate`);
    t.match(limited.stderr, new RegExp(`${s.rateLimited} over --rate`));
  });

  t.test('a bad filter is refused by the agent with what is wrong', async (t) => {
    const bad = monitorReader(agent, ['--type', 'bogus']);
    t.equal(await bad.exited, 1);
    t.match(bad.stderr, /HTTP 400: unknown --type 'bogus'/);
  });
});
