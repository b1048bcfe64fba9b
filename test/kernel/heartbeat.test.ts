// The proxy's heartbeat under config churn: a busy agent must not look dead to the kernel. The kernel applies the L7
// fail modes when the last beat is 3 intervals old (agent/proxyhost.ts), so a loop held for long by applies (or the
// full collections after them) sends L7 clients to their fail mode although the proxy is alive. Here: small changes
// every 100 ms and a large one (thousands of kernel entries) every 2 s, the beat every 200 ms, its age read from the
// pinned record every 5 ms. Measured before the file's parse left the loop (agent/sources/parseworker.ts): 15 applies
// for 88 saves, beats up to 1,317 ms apart (of which GC 100-440 ms, the kernel apply 57-104 ms, the rest the yaml
// parse of the 590 KB file: 700-900 ms in place), heartbeat age max 1,313 ms: the kernel saw the proxy down.
// After (the parse on its own thread): 19-24 applies, age p99 226-236 ms, max 203-524 ms at load ~10 on 2 CPUs. The bound
// judged is the kernel's own, 3 intervals (never seen down); the 2-interval margin is reported (met in 2 runs of 3).
//
// The same churn through the xDS path (the real control plane serving the file's directory, SotW and delta): there a
// response is decoded, translated, validated and applied on the loop in one go, and the closing note of the last
// session had a 744 ms beat gap from it (kernel/restart, churn at 10 configs a second under load). First runs, at load
// 8-10 (with the compaction's collections already incremental, agent/observe/memory.ts): max age 280 ms (SotW) and
// 367 ms (delta), p99 232-276 ms; the longest holds were the first complete state (decoded and translated in one go,
// 203-387 ms, before the churn) and the 400-service swaps (53-180 ms from response to applied, the kernel apply in it).
import t, { type Test } from 'tap';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MapReader } from '../../agent/datapath/inspect.js';
import { freePort, kernelSkipReason, startAgent, testCgroup, type AgentHandle } from '../lib/kernel.js';
import { ControlPlaneProcess } from '../lib/controlplane.js';
import { sleep } from '../lib/net.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const HEARTBEAT_MS = 200;
const BASE = 400;
const BIG = 400;
const BACKENDS = 15;

/** the config: BASE services always, BIG more when big, a few L7 ones; `tick` changes the small ones' backends */
function config(tick: number, big: boolean): string {
  let s = 'services:\n';
  const svc = (i: number, port: number): void => {
    const vip = `127.78.${Math.floor(i / 250)}.${(i % 250) + 1}`;
    s += `  - name: s${i}\n    vips: [${vip}]\n    ports: [{ port: 80 }]\n    backends:\n`;
    for (let b = 0; b < BACKENDS; b++) s += `      - { address: 127.0.0.1, port: ${port + b} }\n`;
    if (i % 50 === 0) s += '    http:\n      failMode: closed\n      routes: [{ name: all }]\n';
  };
  for (let i = 0; i < BASE; i++) svc(i, i < 10 ? 20000 + (tick % 7) * 100 : 30000);
  if (big) for (let i = BASE; i < BASE + BIG; i++) svc(i, 40000);
  return s;
}

/**
 * 12 s of churn written by `write` every 100 ms (the 400 <-> 800 swap every 2 s), the heartbeat's age read from the
 * pinned record every 5 ms, then judged: never 3 intervals old (the kernel's down mark). `what` names the path.
 */
async function churnAndJudge(t: Test, agent: AgentHandle, what: string, write: (text: string) => void): Promise<void> {
  await agent.waitLog((l) => l.msg === 'L7 proxy listening');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const ages: number[] = [];
  const sampler = setInterval(() => {
    const a = reader.proxy()?.heartbeatAgeMs;
    if (typeof a === 'number') ages.push(a);
  }, 5);
  const t0 = performance.now();
  let tick = 0;
  while (performance.now() - t0 < 12_000) {
    tick++;
    write(config(tick, Math.floor(tick / 20) % 2 === 1));
    await sleep(100);
  }
  await sleep(1500);
  clearInterval(sampler);
  const applied = agent.logs.filter((l) => l.msg === 'config applied');
  const late = agent.logs.filter((l) => l.msg === 'proxy heartbeat late: the event loop was held');
  const max = Math.max(...ages);
  const sorted = [...ages].sort((a, b) => a - b);
  t.comment(`${what}: ${tick} config writes, ${applied.length} applies; heartbeat age p50 ${sorted[Math.floor(sorted.length / 2)]} ms, p99 ${sorted[Math.floor(sorted.length * 0.99)]} ms, max ${max} ms over ${ages.length} samples`);
  for (const l of late.slice(0, 10)) t.comment(`late beat: ${JSON.stringify({ gapMs: l.gapMs, gcMs: l.gcMs, longestGcMs: l.longestGcMs, time: l.time })}`);
  const slow = applied.filter((l) => Number(l.ms) > 50).slice(0, 10);
  for (const l of slow) t.comment(`slow apply: ${JSON.stringify({ ms: l.ms, services: l.services, changed: l.changed, time: l.time })}`);
  const xdsSlow = agent.logs.filter((l) => l.source === 'xds' && Number(l.ms) > 50).slice(0, 10);
  for (const l of xdsSlow) t.comment(`slow xds response: ${JSON.stringify({ msg: l.msg, ms: l.ms, time: l.time })}`);
  t.ok(applied.length >= 10, `the agent applied the churn (${applied.length} applies)`);
  t.ok(max < 3 * HEARTBEAT_MS, `heartbeat age under 3 intervals: the proxy never seen down (max ${max} ms)`);
  t.comment(`beats more than 2 intervals apart: ${late.length}; age over 2 intervals in ${ages.filter((a) => a >= 2 * HEARTBEAT_MS).length} of ${ages.length} samples`);
}

t.test(`heartbeat age under churn stays under 3 intervals, the kernel's down mark (${HEARTBEAT_MS} ms beat)`, { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'heartbeat');
  const agent = await startAgent(t, cg, { config: config(0, false), extraArgs: ['--proxy-heartbeat-ms', String(HEARTBEAT_MS)] });
  await churnAndJudge(t, agent, 'config file', (text) => agent.writeConfig(text));
});

for (const mode of ['sotw', 'delta'] as const) {
  t.test(`xDS (${mode}): heartbeat age under the same churn stays under 3 intervals (${HEARTBEAT_MS} ms beat)`, { skip: skip ?? false }, async (t) => {
    const cg = testCgroup(t, `heartbeat-xds-${mode}`);
    const dir = mkdtempSync(join(tmpdir(), 'sockmesh-heartbeat-xds-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    // write-then-rename, as the control plane's directory watch expects of a config tool
    const write = (text: string): void => { writeFileSync(join(dir, '.mesh.tmp'), text); renameSync(join(dir, '.mesh.tmp'), join(dir, 'mesh.yaml')); };
    write(config(0, false));
    const cp = new ControlPlaneProcess(dir, await freePort());
    await cp.start();
    t.teardown(() => cp.kill());
    const agent = await startAgent(t, cg, { xds: `127.0.0.1:${cp.port}`, extraArgs: ['--proxy-heartbeat-ms', String(HEARTBEAT_MS), '--xds-mode', mode] });
    await agent.waitLog((l) => l.msg === 'config applied');
    await churnAndJudge(t, agent, `xDS ${mode}`, write);
  });
}
