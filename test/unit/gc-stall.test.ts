// The heap compaction after a churn burst must give the memory back without stopping the loop the L7 proxy runs on.
// It was an atomic full collection (gc()), three per burst, each holding the loop for the whole mark and compact of
// the agent's ~70 MiB heap at 10,000 services: 92-112 ms each here when idle, 145-307 ms at load 10. Now it is V8's
// incremental collection (agent/observe/memory.ts), whose only atomic part is its finishing pause.
//
// test/lib/gcburst.mjs runs the real apply transaction and compaction in a process of its own with the agent's node
// flags, at about that heap, under a stand-in for the proxy's allocation: 150 small applies 10 ms apart, then 10 s of
// quiet in which the compaction runs. Judged: V8's own pauses after the burst (PerformanceObserver 'gc' entries: the
// time the loop could not run because of a collection), which a busy machine stretches far less than the loop's
// lateness (that is reported; other processes' load alone makes it tens of ms on a shared 2-vCPU machine), and the
// memory given back. A pause is wall-clock time: at load 15 a 20 ms one was 46 ms. So the bound is also relative to
// atomic full collections of the same heap, timed in the same process right after (what the compaction was before):
// the pauses pass at or under 40 ms, or at or under 0.7 of the median atomic one (at load 15: 130 ms against 264;
// quiet: 2-21 against 92-112); the old gc() compaction, whose longest of three pauses is at least the median of
// three, fails both.
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENT_NODE_FLAGS } from '../../agent/runtime.js';

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
/** the longest collection pause allowed after the burst: an atomic full collection of this heap takes 2-3 times that */
const PAUSE_BOUND_MS = 40;
/** or, on a loaded machine, at most this share of the median atomic full collection timed just after it */
const PAUSE_SHARE_OF_ATOMIC = 0.7;

interface Burst {
  before: { heapUsedMiB: number; rssMiB: number };
  atBurstEnd: { heapUsedMiB: number; rssMiB: number };
  atRest: { heapUsedMiB: number; rssMiB: number };
  burst: { worstMs: number };
  after: { worstMs: number };
  majorGcsAfter: number[];
  incrementalAfter: number[];
  atomicMs: number[];
}

function runBurst(): Promise<Burst> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, join(ROOT, 'test', 'lib', 'gcburst.mjs'), '150', '10000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('close', (code) => {
      const line = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0 || !line.startsWith('{')) reject(new Error(`gcburst exited ${code}: ${err || out}`));
      else resolve({ ...(JSON.parse(line) as Burst), stderr: err } as Burst & { stderr: string });
    });
  });
}

t.test('the compaction after a churn burst gives the heap back without a long pause', async (t) => {
  const r = await runBurst() as Burst & { stderr: string };
  t.comment(`heap used ${r.before.heapUsedMiB} MiB before the burst, ${r.atBurstEnd.heapUsedMiB} at its end, ${r.atRest.heapUsedMiB} at rest; ` +
    `RSS ${r.before.rssMiB} -> ${r.atBurstEnd.rssMiB} -> ${r.atRest.rssMiB} MiB`);
  t.comment(`collection pauses after the burst: full ${r.majorGcsAfter.join(', ')} ms, incremental ${r.incrementalAfter.join(', ')} ms; ` +
    `the loop's worst lateness: ${r.burst.worstMs} ms during the burst, ${r.after.worstMs} ms after it`);
  t.ok(r.before.heapUsedMiB >= 60, `the heap is the agent's at 10,000 services (${r.before.heapUsedMiB} MiB used)`);
  t.ok(r.majorGcsAfter.length >= 1, `the burst was compacted (${r.majorGcsAfter.length} full collections after it)`);
  const given = r.atBurstEnd.heapUsedMiB - r.atRest.heapUsedMiB;
  t.ok(given >= 8, `the burst's garbage was given back: ${given.toFixed(1)} MiB of heap`);
  const longest = Math.max(...r.majorGcsAfter, ...r.incrementalAfter);
  t.equal(r.atomicMs.length, 3, `three atomic full collections timed as the reference: ${r.atomicMs.join(', ')} ms`);
  const atomic = [...r.atomicMs].sort((a, b) => a - b)[1] ?? 0;
  const bound = Math.max(PAUSE_BOUND_MS, PAUSE_SHARE_OF_ATOMIC * atomic);
  t.ok(longest <= bound, `the longest collection pause after the burst: ${longest} ms (bound ${bound.toFixed(1)} ms: ` +
    `${PAUSE_BOUND_MS} ms, or 0.7 of the median atomic collection, ${atomic} ms)`);
  t.notMatch(r.stderr, /ExperimentalWarning/, 'no warning on stderr from the way the collection is started');
});
