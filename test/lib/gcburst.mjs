// A churn burst through the agent's real apply transaction (dist/agent/state/apply.js, with the heap compaction of
// dist/agent/observe/memory.js), in a process of its own started with the agent's node flags, at about the heap the
// agent has at 10,000 services / 100,000 endpoints (~68 MiB live), while a stand-in for the L7 proxy keeps allocating
// short-lived objects on the same loop. Prints one JSON line: the loop's worst stall during the burst and after it
// (when the compaction runs), and the heap and RSS before the burst, at its end and at rest after the compaction.
// Used by test/unit/gc-stall.test.ts; `node <agent flags> test/lib/gcburst.mjs [applies] [restMs]` by hand.
import { monitorEventLoopDelay, performance, PerformanceObserver } from 'node:perf_hooks';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pino from 'pino';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const dist = (p) => import(pathToFileURL(join(ROOT, 'dist', p)).href);
const { ApplyTransaction } = await dist('agent/state/apply.js');
const { LiveState } = await dist('agent/state/live.js');

const APPLIES = Number(process.argv[2] ?? 150);
const REST_MS = Number(process.argv[3] ?? 10_000);
const SERVICES = 10_000;
const BACKENDS = 10;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MiB = 2 ** 20;
const mem = () => { const m = process.memoryUsage(); return { rssMiB: +(m.rss / MiB).toFixed(1), heapUsedMiB: +(m.heapUsed / MiB).toFixed(1), heapTotalMiB: +(m.heapTotal / MiB).toFixed(1) }; };

const backend = (s, j, gen) => ({ address: `10.${(s >> 8) & 255}.${s & 255}.${j + 1}`, family: 4, port: 8080 + gen, weight: 1 });
const service = (s, gen) => ({
  name: `ns-${s % 50}/svc-${s}`, algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 251,
  frontends: [{ vip: `10.96.${(s >> 8) & 255}.${s & 255}`, family: 4, port: 80, protocol: 'tcp',
    backends: Array.from({ length: BACKENDS }, (_, j) => backend(s, j, gen)) }],
});

/** What the reconciler keeps per backend (its indexes over the kernel maps), so the live heap is the agent's size. */
class Kernel {
  entries = new Map();
  apply(model, changed) {
    for (const svc of model.services) {
      if (changed && !changed.has(svc.name)) continue;
      svc.frontends[0].backends.forEach((b, j) => {
        this.entries.set(`${svc.name}|${j}`, { id: j, service: svc.name, addr: b.address, port: b.port, weight: b.weight, key: Buffer.alloc(24), value: Buffer.alloc(32) });
      });
    }
    return { backendsWritten: changed ? BACKENDS : SERVICES * BACKENDS, backendsDeleted: 0, backendsRetiring: 0, frontendsWritten: 1, frontendsDeleted: 0, udpSocketsDestroyed: 0, ms: 0.2 };
  }
  reset() {}
}

const log = pino({ level: 'silent' });
const state = new LiveState('/nonexistent-cgroup-root');
const kernel = new Kernel();
const tx = new ApplyTransaction({ state, kernel, log });
let services = Array.from({ length: SERVICES }, (_, s) => service(s, 0));
tx.first({ services });
// the full sync's own compaction runs (and settles) before the burst: only the burst's is measured
await sleep(9000);

// the proxy's stand-in: short-lived request objects at a steady rate (about 5 MB/s), as the L7 proxy allocates under load
let junk = [];
const proxy = setInterval(() => { junk = Array.from({ length: 200 }, (_, i) => ({ i, path: `/r/${i}`, headers: { host: 'svc' } })); }, 2);

const gcs = [];
const obs = new PerformanceObserver((l) => { for (const e of l.getEntries()) gcs.push({ at: e.startTime, ms: e.duration, kind: e.detail?.kind ?? e.kind }); });
obs.observe({ entryTypes: ['gc'] });
// the loop's worst stall: a 1 ms timer's lateness, split at the end of the burst
let last = performance.now(), worst = 0;
const tick = setInterval(() => { const now = performance.now(); if (process.env.GCBURST_TRACE && now - last > 20) process.stderr.write(`stall ${(now - last).toFixed(1)} ms ending at ${now.toFixed(0)}\n`); worst = Math.max(worst, now - last - 1); last = now; }, 1);
const eld = monitorEventLoopDelay({ resolution: 1 });
eld.enable();

const before = mem();
// the burst: one service changes every 10 ms (an EndpointSlice change each), as the Kubernetes source applies them;
// the source keeps the model it built, and an index over it, until the next one: the index's table is above V8's
// large-object size, so each one goes straight to the old generation, where only a full collection takes it back
let index = new Map();
for (let n = 0; n < APPLIES; n++) {
  const s = (n * 7919) % SERVICES;
  services = services.slice();
  services[s] = service(s, n + 1);
  index = new Map(services.map((x) => [x.name, x]));
  tx.apply({ services }, 'burst', new Set([services[s].name]));
  await sleep(10);
}
const burstEnd = performance.now();
const atBurstEnd = mem();
const burst = { worstMs: worst, eldMaxMs: eld.max / 1e6 };
worst = 0;
eld.reset();
await sleep(REST_MS);
const after = { worstMs: worst, eldMaxMs: eld.max / 1e6 };
clearInterval(tick);
clearInterval(proxy);
eld.disable();
await sleep(50);
const atRest = mem();
// The reference, on the same heap in the same process, so that the machine's load stretches it as it stretches the
// pauses above: three atomic full collections (what the compaction was before), each a pause of its own.
setFlagsFromString('--expose-gc');
const atomicGc = runInNewContext('gc');
const atomicFrom = performance.now();
for (let i = 0; i < 3; i++) { atomicGc(); await sleep(100); }
await sleep(50);
obs.disconnect();
const atomic = gcs.filter((g) => g.at >= atomicFrom && g.kind === 4 /* NODE_PERFORMANCE_GC_MAJOR */);
const major = gcs.filter((g) => g.at >= burstEnd && g.at < atomicFrom && g.kind === 4 /* NODE_PERFORMANCE_GC_MAJOR */);
const incremental = gcs.filter((g) => g.at >= burstEnd && g.at < atomicFrom && g.kind === 8 /* NODE_PERFORMANCE_GC_INCREMENTAL */);
process.stdout.write(`${JSON.stringify({
  applies: APPLIES, restMs: REST_MS, before, atBurstEnd, atRest,
  burst: { worstMs: +burst.worstMs.toFixed(1), eldMaxMs: +burst.eldMaxMs.toFixed(1) },
  after: { worstMs: +after.worstMs.toFixed(1), eldMaxMs: +after.eldMaxMs.toFixed(1) },
  majorGcsAfter: major.map((g) => +g.ms.toFixed(1)),
  incrementalAfter: incremental.map((g) => +g.ms.toFixed(1)),
  atomicMs: atomic.map((g) => +g.ms.toFixed(1)),
  kinds: [...new Set(gcs.map((g) => g.kind))],
})}\n`);
tx.close();
state.close();
void index;
process.exit(0);
