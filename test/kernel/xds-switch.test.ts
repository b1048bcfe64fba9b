// A service switching between L4 and L7, and between upstream protocols, over xDS, under traffic (issue 14: the soak
// saw an HTTP/1.1 client handed HTTP/2 frames on a churned VIP). The soak's own three kinds of service
// (bench/lib/soakmodel.ts: l4tcp to an HTTP/1.1 port, l7h1 to another HTTP/1.1 port, l7h2 to an h2c port, each
// health-checked as the soak does) are served by the real control plane from a config directory to the real agent,
// and one VIP is flipped through every transition (L4 <-> L7 both ways, http1 <-> h2 both ways) while fresh
// HTTP/1.1 connections go to it without pause. The service never goes away and its backends are always healthy, so
// every request must get its 200: no protocol errors (HTTP/2 bytes to an HTTP/1.1 client), no refused connect, no
// 5xx from a proxy speaking the wrong protocol to a backend. A connection the kernel sent to the proxy just before an
// L7 -> L4 switch, whose request the proxy reads after it, is served by the L7 service it was sent to (agent/proxy/
// policy.ts keeps a removed frontend RETIRED_MS for them); it got 421 Misdirected Request before (10-14 requests in 18
// flips), so 421s are counted and reported apart. The kernel's frontend for the VIP is sampled throughout
// (from the pins), so a failure comes with what the kernel held around it: the evidence of a half-applied switch
// (an L4 frontend pointing at the h2c port; an L7 one at an HTTP/1.1 port while the upstream protocol is h2).
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MapReader } from '../../agent/datapath/inspect.js';
import { SOAK_PORTS, soakConfig, type SvcKind } from '../../bench/lib/soakmodel.js';
import { ControlPlaneProcess } from '../lib/controlplane.js';
import { connLoad, now, type Attempt } from '../lib/connload.js';
import { freePort, kernelSkipReason, ROOT, startAgent, testCgroup } from '../lib/kernel.js';
import { sleep } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const VIP = '127.77.24.1';
/** the backends' own loopback addresses: the soak's servers listen on fixed ports, so on addresses of their own */
const BACKENDS = { b1: '127.88.14.1', b2: '127.88.14.2' } as const;
/** every directed transition between the three kinds, once per round */
const CYCLE: SvcKind[] = ['l4tcp', 'l7h2', 'l7h1', 'l4tcp', 'l7h1', 'l7h2'];
const ROUNDS = 3;
/** parallel connection loops to the VIP (a switch half applied for a few ms must meet some of them) */
const LOOPS = 6;
/** after the kernel shows the new kind: traffic goes on this long before the next flip (the proxy's side settles) */
const SETTLE_MS = 600;

const portOf: Record<SvcKind, number> = { l4tcp: SOAK_PORTS.l4http, l4udp: SOAK_PORTS.udp, l7h1: SOAK_PORTS.l7h1, l7h2: SOAK_PORTS.l7h2 };

/** What the kernel holds for the VIP: none, or l4/l7 with the backend ports. */
function kernelView(r: MapReader): string {
  const f = r.frontends().find((x) => x.vip === VIP && x.port === 80);
  if (!f) return 'none';
  const ports = [...new Set(f.backends.filter((b) => b.state === 'active').map((b) => b.port))].sort().join('+');
  return `${f.l7 ? 'l7' : 'l4'}:${ports || '-'}`;
}
const expectView = (k: SvcKind): string => `${k === 'l4tcp' ? 'l4' : 'l7'}:${portOf[k]}`;

async function soakServer(name: string, address: string): Promise<ChildProcess> {
  const p = spawn(process.execPath, [join(ROOT, 'dist', 'bench', 'lib', 'soakserver.js'), name, address], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  p.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  await new Promise<void>((resolve, reject) => {
    p.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); });
    p.once('exit', (code) => reject(new Error(`soak server ${name} exited (${code}): ${err.trim()}`)));
  });
  return p;
}

t.test('xDS: a VIP flipped L4 <-> L7 and http1 <-> h2 under traffic loses no request', { skip: skip ?? false, timeout: 180_000 }, async (t) => {
  const cg = testCgroup(t, 'xds-switch');
  const servers: ChildProcess[] = [];
  t.teardown(() => { for (const p of servers) p.stdin!.end(); });
  for (const [name, addr] of Object.entries(BACKENDS)) servers.push(await soakServer(name, addr));

  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-test-switch-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const write = (kind: SvcKind): void => {
    const text = soakConfig([{ name: 'flip', kind, vip: VIP, port: 80, backends: new Map([['b1', 1], ['b2', 1]]) }], (pod) => BACKENDS[pod as keyof typeof BACKENDS]);
    writeFileSync(join(dir, '.svc.tmp'), text);
    renameSync(join(dir, '.svc.tmp'), join(dir, 'svc.json'));
  };
  write(CYCLE[0]!);
  const cp = new ControlPlaneProcess(dir, await freePort());
  await cp.start();
  t.teardown(() => cp.kill());
  const agent = await startAgent(t, cg, { xds: `127.0.0.1:${cp.port}` });
  await agent.waitLog((l) => l.msg === 'config applied' && l.why === 'xds');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  // the kernel's view of the VIP, sampled every ~2 ms: (time, view) at each change
  const views: { t: number; view: string }[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const v = kernelView(reader);
      if (views[views.length - 1]?.view !== v) views.push({ t: now(), view: v });
      await sleep(2);
    }
  })();
  t.teardown(async () => { sampling = false; await sampler; });
  const waitView = async (want: string, ms = 20_000): Promise<boolean> => {
    const deadline = now() + ms;
    while (now() < deadline) { if (views[views.length - 1]?.view === want) return true; await sleep(5); }
    return false;
  };
  t.ok(await waitView(expectView(CYCLE[0]!)), `the kernel holds ${expectView(CYCLE[0]!)} for the VIP`);

  const targets = Array.from({ length: LOOPS }, (_, i) => ({ name: `c${i}`, host: VIP, port: 80 }));
  const load = connLoad(t, `${cg.child('client')}/cgroup.procs`, targets);
  await load.first('c0', now(), (a) => a.out === '200');
  const from = now();

  const flips: { t: number; from: SvcKind; to: SvcKind; inKernelMs: number }[] = [];
  let kind = CYCLE[0]!;
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 1; i <= CYCLE.length; i++) {
      const next = CYCLE[i % CYCLE.length]!;
      const at = now();
      write(next);
      const ok = await waitView(expectView(next));
      flips.push({ t: at, from: kind, to: next, inKernelMs: Math.round(now() - at) });
      t.ok(ok, `${kind} -> ${next}: the kernel holds ${expectView(next)} for the VIP`);
      kind = next;
      await sleep(SETTLE_MS);
    }
  }
  const to = now();
  await load.stop();
  sampling = false;
  await sampler;

  const all: Attempt[] = targets.flatMap((x) => load.of(x.name, from, to));
  const failed = all.filter((a) => a.out !== '200');
  const byOut: Record<string, number> = {};
  const misdirected: { flip: string }[] = [];
  for (const a of failed) {
    if (a.out === '421') {
      const f = [...flips].reverse().find((x) => x.t <= a.t0);
      misdirected.push({ flip: f ? `${f.from} -> ${f.to}` : 'before the first flip' });
      continue;
    }
    const k = a.out.startsWith('bad:') ? 'not HTTP/1.1 (protocol error)' : a.out;
    byOut[k] = (byOut[k] ?? 0) + 1;
  }
  // per flip: what the kernel went through, and the failures that started during it
  for (let i = 0; i < flips.length; i++) {
    const f = flips[i]!;
    const end = flips[i + 1]?.t ?? to;
    const seen = views.filter((v) => v.t >= f.t && v.t < end).map((v) => `${v.view}@${Math.round(v.t - f.t)}`);
    const fails = failed.filter((a) => a.t0 >= f.t && a.t0 < end);
    const outs: Record<string, number> = {};
    for (const a of fails) outs[a.out.slice(0, 24)] = (outs[a.out.slice(0, 24)] ?? 0) + 1;
    t.comment(`${f.from} -> ${f.to}: kernel ${seen.join(' ') || '(unchanged)'}; in force ${f.inKernelMs} ms; failures ${JSON.stringify(outs)}` +
      (fails[0] ? ` first at ${Math.round(fails[0].t0 - f.t)} ms` : ''));
  }
  t.ok(all.length >= flips.length * 50, `${all.length} requests over ${flips.length} flips`);
  t.same(byOut, {}, `every request answered 200 across ${flips.length} flips (${failed.length - misdirected.length} failed, ${misdirected.length} answered 421)`);
  t.same(misdirected.map((m) => m.flip), [], `no 421: a connection redirected before an L7 -> L4 switch is served by its L7 service (${misdirected.length} answered 421)`);
  // the kernel never pointed an L4 frontend at the h2c port, nor an L7 one at the L4 service's port
  const wrong = views.filter((v) => v.view.startsWith('l4:') ? v.view.includes(String(SOAK_PORTS.l7h2)) : v.view.startsWith('l7:') && v.view.includes(String(SOAK_PORTS.l4http)));
  t.same(wrong.map((v) => v.view), [], 'the kernel never held a half-switched frontend (L4 to the h2c port, L7 to the L4 port)');
  t.notOk(views.some((v) => v.t >= from && v.view === 'none'), 'the VIP was never without a frontend');
});
