// An agent that dies (SIGKILL) or hangs (SIGSTOP) under a steady stream of new connections to two L7 services, one
// failMode open and one closed. The kernel sees a dead proxy at connect(): its listening sockets leave sm_proxy_socks
// when the process dies (bpf/lib/l7.h), so from the kill on the open service goes straight to a backend and the closed
// one is refused at once, never sent to a port nobody serves. A restarted agent serves L7 again within a second; a hung
// one (its listeners open, no heartbeat) is caught by the heartbeat after 3 intervals.
//
// The load (test/lib/connload.ts) is a separate process in a cgroup of the meshed tree: one loop per VIP, each iteration
// a new TCP connection with one HTTP/1.1 request (Connection: close).
import t from 'tap';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { MapReader } from '../../agent/datapath/inspect.js';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { sleep } from '../lib/net.js';
import { connLoad, now, type Attempt } from '../lib/connload.js';
import type { StartPhase } from '../../agent/starttrace.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
// The agents this test starts log where their start went ('start phases', agent/starttrace.ts): inherited by them.
process.env.SOCKMESH_START_TRACE = '1';

async function backend(id: string): Promise<{ port: number; server: Server }> {
  const server = createServer((req, res) => { req.resume(); req.on('end', () => res.end(id)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as AddressInfo).port, server };
}

/** More runnable work than CPUs: wall-clock bounds then measure the queue for a CPU, not the code under test. */
const overloaded = (): boolean => loadavg()[0]! >= cpus().length;
const between = (as: Attempt[], from: number, to: number): Attempt[] => as.filter((a) => a.t0 >= from && a.t0 < to);
const count = (as: Attempt[], pred: (a: Attempt) => boolean): number => as.filter(pred).length;
const fmt = (ms: number): string => ms.toFixed(1);
const pct = (xs: number[], p: number): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN; };

t.test('agent crash and hang under new-connection load: fail modes at once, served again within 1 s of start', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'crash');
  const open = await backend('open-backend');
  const closed = await backend('closed-backend');
  t.teardown(() => { open.server.close(); closed.server.close(); });
  const vipOpen = '127.77.21.1';
  const vipClosed = '127.77.21.2';
  // The default heartbeat (1 s, down after 3 s): the window a crash used to leave open is the one measured here.
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: open
    vips: [${vipOpen}]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${open.port} }]
    http:
      failMode: open
      routes: [{ name: all, responseHeaders: { set: { x-mesh-route: open } } }]
  - name: closed
    vips: [${vipClosed}]
    ports: [{ port: 80 }]
    backends: [{ address: 127.0.0.1, port: ${closed.port} }]
    http:
      failMode: closed
      routes: [{ name: all, responseHeaders: { set: { x-mesh-route: closed } } }]
`,
  });
  // A stopped agent cannot take the teardown's SIGTERM: let it go on first (teardowns run last-registered first).
  t.teardown(() => { try { agent.proc.kill('SIGCONT'); } catch { /* gone */ } });
  await agent.waitLog((l) => l.msg === 'L7 proxy listening');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  const load = connLoad(t, `${cg.child('client')}/cgroup.procs`, [{ name: 'open', host: vipOpen, port: 80 }, { name: 'closed', host: vipClosed, port: 80 }]);
  const attempts = load.attempts;
  const of = (target: string, as = attempts): Attempt[] => as.filter((a) => a.target === target);
  const served = (target: string, from: number): Promise<number> => load.first(target, from, (a) => a.out === '200' && a.mesh === true);

  // Steady state: both through the proxy.
  const t0 = now();
  await served('open', t0);
  await served('closed', t0);
  await sleep(1000);

  // ---- SIGKILL ----
  const killAt = now();
  await agent.kill('SIGKILL');
  const exitAt = now();
  t.same(reader.proxy()?.listeners, [], 'the dead proxy\'s listeners left sm_proxy_socks with its sockets');
  t.ok(reader.proxy()!.heartbeatAgeMs! < 3000, `while its heartbeat is still fresh (${reader.proxy()!.heartbeatAgeMs} ms)`);
  const before = reader.stats().global;
  // Past the 3 heartbeats the kernel used to wait for.
  await sleep(4000);
  const after = reader.stats().global;
  const restartAt = now();

  const window = between(attempts, killAt, exitAt);
  const afterKill = between(attempts, exitAt, restartAt);
  const lostInFlight = between(attempts, 0, exitAt).filter((a) => a.t1 >= killAt && a.out !== '200' && a.out !== 'EPERM');
  t.comment(`kill -> exit seen: ${fmt(exitAt - killAt)} ms, ${window.length} attempts started in between ` +
    `(${count(window, (a) => a.out !== '200' && a.out !== 'EPERM')} failed); ${lostInFlight.length} failed that were in flight at the kill ` +
    `(${lostInFlight.map((a) => `${a.target}:${a.out}`).join(' ') || 'none'})`);

  const openAfter = of('open', afterKill);
  t.ok(openAfter.length >= 50, `failMode open: ${openAfter.length} new connections in the 4 s after the kill`);
  const openFailed = openAfter.filter((a) => a.out !== '200');
  t.same(openFailed.map((a) => a.out), [], 'failMode open: 0 failed');
  t.equal(count(openAfter, (a) => a.mesh === true || a.body !== 'open-backend'), 0, 'every one answered by the backend directly');

  const closedAfter = of('closed', afterKill);
  t.ok(closedAfter.length >= 50, `failMode closed: ${closedAfter.length} new connections in the 4 s after the kill`);
  t.same([...new Set(closedAfter.map((a) => a.out))], ['EPERM'], 'failMode closed: every connect() refused (EPERM), none accepted, none timed out');
  const refuseMs = closedAfter.map((a) => a.t1 - a.t0);
  t.comment(`refusal time: p50 ${fmt(pct(refuseMs, 0.5))} ms, p99 ${fmt(pct(refuseMs, 0.99))} ms, max ${fmt(Math.max(...refuseMs))} ms`);
  // Measured in the client's event loop (the refusal itself is synchronous in connect(): the kernel program answers it);
  // on this shared 2-vCPU machine a lone scheduling delay can exceed 10 ms, so the bound is on the 99th percentile,
  // and every one must still come back as a refusal well before anything that looks like a timeout.
  if (!overloaded()) t.ok(pct(refuseMs, 0.99) < 10, `refused in < 10 ms (p99 ${fmt(pct(refuseMs, 0.99))} ms)`);
  else t.comment(`not judging the p99 against 10 ms: the machine is overloaded (load ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs)`);
  t.ok(Math.max(...refuseMs) < 100, `none near a timeout (max ${fmt(Math.max(...refuseMs))} ms)`);
  t.ok(after.l7_proxy_gone! - before.l7_proxy_gone! >= openAfter.length - 5, `seen as a dead listener, not a stale heartbeat: l7_proxy_gone +${after.l7_proxy_gone! - before.l7_proxy_gone!}`);
  t.equal(after.l7_redirect! - before.l7_redirect!, 0, 'nothing redirected to the dead proxy');

  // ---- restart: from spawn to the first proxied 200 ----
  // Also the CPU time the new agent used until then (utime + stime of its pid): the wall time on a machine shared with
  // other jobs is mostly waiting for a CPU, the CPU time is what a start costs.
  const spawnAt = now();
  const restarted = agent.restart();
  let cpuAtServe = NaN;
  const cpuOf = (pid: number): number => {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8').slice(readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ');
      return (Number(f[11]) + Number(f[12])) * 10; // clock ticks of 10 ms (USER_HZ 100)
    } catch { return NaN; }
  };
  const sampler = setInterval(() => { if (agent.proc.pid) cpuAtServe = cpuOf(agent.proc.pid); }, 5);
  const [openMs, closedMs] = await Promise.all([served('open', spawnAt), served('closed', spawnAt)]);
  clearInterval(sampler);
  await restarted;
  const timeline = agent.logs.filter((l) => Number(l.time) >= spawnAt - 50)
    .map((l) => `${String(l.msg)} +${Number(l.time) - Math.round(spawnAt)} ms`);
  t.comment(`restart: first proxied 200 ${fmt(openMs)} ms (open), ${fmt(closedMs)} ms (closed) after spawn; ${timeline.join(', ')}`);
  const trace = agent.logs.filter((l) => l.msg === 'start phases').at(-1) as { timeOrigin: number; phases: StartPhase[] } | undefined;
  t.ok(trace, 'the restarted agent logged its start phases (SOCKMESH_START_TRACE)');
  if (trace) {
    // ms since spawn: the exec (the shell, then node's binary) is the time before the process's own origin
    const since = (at: number): string => fmt(trace.timeOrigin + at - spawnAt).padStart(7);
    t.comment(`the restarted agent's start, ms since spawn (took, CPU so far):\n` +
      [`exec                                           ${since(0)}`,
        ...trace.phases.map((p) => `${p.phase.padEnd(46)} ${since(p.atMs)} ${fmt(p.tookMs).padStart(7)} ${p.cpuMs === null ? '' : fmt(p.cpuMs).padStart(7)}`),
      ].join('\n'));
  }
  const serveMs = Math.max(openMs, closedMs);
  const load1 = loadavg()[0]!;
  t.comment(`the new agent used ${cpuAtServe} ms of CPU until then; load average ${load1.toFixed(1)} on ${cpus().length} CPUs`);
  // The issue's target: serving again within 1 s of start. What a start costs before the proxy listens (the phases
  // above; agent/starttrace.ts): Node's bootstrap, reading and linking ~95 modules, evaluating them, then the kernel
  // work (the pins reused: tens of ms). gRPC/protobufjs and the Kubernetes client are not loaded for a file config, nor
  // systeminformation before the first request. The agent runs without tap's module-loader instrumentation
  // (test/lib/childenv.ts): with it, the agent's start measured 987-1,330 ms of CPU here, 840 of them by the end of
  // "modules read and linked"; without it 530 ms at load 9 on 2 CPUs (243 ms at that phase). CPU time still inflates on
  // a machine running many more jobs than it has CPUs, and the wall time there is mostly the queue for a CPU: the wall
  // time is judged only when the machine is not overloaded, and the CPU bound is one that a real regression (the gRPC
  // stack back on the start path: ~+100 ms quiet, +300 loaded) crosses.
  const cpuBound = overloaded() ? 1200 : 800;
  t.ok(cpuAtServe < cpuBound, `a start costs < ${cpuBound} ms of CPU until L7 is served (${cpuAtServe} ms)`);
  if (!overloaded()) t.ok(serveMs < 1000, `serving L7 again within 1 s of start (${fmt(serveMs)} ms)`);
  else t.comment(`not judging the wall time (${fmt(serveMs)} ms): the machine is overloaded (load ${load1.toFixed(1)} > ${cpus().length} CPUs)`);
  await sleep(500);
  const upAt = now();
  t.same(of('open', between(attempts, restartAt, upAt)).filter((a) => a.out !== '200').map((a) => a.out), [],
    'failMode open: 0 failed while the new agent started');
  t.same([...new Set(of('closed', between(attempts, restartAt, upAt)).map((a) => a.out))].sort(), ['200', 'EPERM'],
    'failMode closed: refused until the proxy listened, then served');
  t.same(reader.proxy()?.listeners.length, 2, 'the new agent recorded its listeners');

  // ---- SIGSTOP: a hung agent keeps its listeners; the heartbeat (3 s) is the second line ----
  const stopAt = now();
  agent.proc.kill('SIGSTOP');
  await sleep(3000 + 1500);
  const checkFrom = now();
  await sleep(1500);
  const stoppedTo = now();
  agent.proc.kill('SIGCONT');
  const hung = between(attempts, stopAt, checkFrom);
  t.comment(`SIGSTOP: ${hung.length} attempts in the first 4.5 s (before the heartbeat expired, to a stopped proxy: ` +
    `${count(hung, (a) => a.out === 'timeout')} timed out, ${count(hung, (a) => a.out === '200')} ok)`);
  const openStopped = of('open', between(attempts, checkFrom, stoppedTo));
  t.ok(openStopped.length >= 10, `${openStopped.length} on the open service once the heartbeat expired`);
  t.equal(count(openStopped, (a) => a.out !== '200' || a.mesh === true), 0, 'failMode open: straight to the backend');
  const closedStopped = of('closed', between(attempts, checkFrom, stoppedTo));
  t.ok(closedStopped.length >= 10);
  t.same([...new Set(closedStopped.map((a) => a.out))], ['EPERM'], 'failMode closed: refused');
  const contAt = now();
  const [o2, c2] = await Promise.all([served('open', contAt), served('closed', contAt)]);
  t.comment(`SIGCONT: proxied again after ${fmt(o2)} / ${fmt(c2)} ms`);
  t.ok(Math.max(o2, c2) < 2500, 'beating again: proxied again');

  await load.stop();
  t.comment(`total attempts: ${attempts.length} (open ${of('open').length}, closed ${of('closed').length})`);
});
