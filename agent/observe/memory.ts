// Returning memory after a large config change. A full sync of 10,000 services leaves ~100 MiB of garbage (decoded
// resources, intermediate models) that V8 collects only when it next needs room, so the agent's RSS at rest would stay
// at its sync peak. One collection of the whole heap after such a change (not on the per-change path) gives it back.
//
// And one more, SETTLE_MS after the last one asked for: V8 grows its young generation to 2 x 16 MiB during a sync
// (nearly everything survives) and gives it back only at a full collection that finds the allocation rate of its last
// ~5 s low. Measured at 10,000 services: RSS at rest 190 -> 160 MiB once it has run.
//
// The collection is V8's incremental one, not gc(): an atomic full collection of the agent's ~70 MiB heap at 10,000
// services held the loop, and with it the L7 proxy, for 65-118 ms each (145-307 ms at load 10), three per burst.
// Node 20's gc() options do not help: {execution: 'async'} only runs that same atomic collection from a task (measured
// 54 ms in one piece), and {type: 'minor'} leaves the old generation, where the garbage is. What starts V8's own
// incremental marking (concurrent on its helper thread, the rest in steps of about 1 ms between the loop's work, then a
// short finishing pause) from JavaScript is vm.measureMemory({execution: 'eager'}): it asks for a marking cycle now and
// resolves when it has finished, and we ignore the figures (had V8 itself started a cycle just then, it finishes that
// one at once instead: an atomic finish of a partly done marking, no worse than before). Measured by
// test/lib/gcburst.mjs at a 78-96 MiB heap: the longest collection pause after a burst went from 92-112 ms (148-214 ms
// at load 14) to 2-21 ms, for the same memory given back (test/unit/gc-stall.test.ts).
import { measureMemory } from 'node:vm';

const SETTLE_MS = 6000;

let settle: NodeJS.Timeout | undefined;
/** the collection under way: a request meanwhile is served by it (it marks the heap as it is then) */
let running: Promise<unknown> | undefined;
let unavailable = false;

/** An incremental collection of the whole heap now (and one more once things are quiet); false when none can start. */
export function collectGarbage(): boolean {
  if (!collect()) return false;
  if (settle) settle.refresh(); // another large change: wait for the quiet after it
  else {
    settle = setTimeout(() => {
      settle = undefined;
      collect();
    }, SETTLE_MS);
    settle.unref();
  }
  return true;
}

function collect(): boolean {
  if (unavailable) return false;
  if (running) return true;
  try {
    running = quietly(() => measureMemory({ mode: 'summary', execution: 'eager' }));
  } catch {
    unavailable = true; // a runtime without it: V8 decides alone, as before this existed
    return false;
  }
  const done = (): void => { running = undefined; };
  running.then(done, done);
  return true;
}

/**
 * Call `f` without Node's one-time "vm.measureMemory is an experimental feature" warning on stderr: the agent logs
 * JSON lines, and the API is used here only for the collection it starts. Other warnings pass through.
 */
function quietly<T>(f: () => T): T {
  const emit = process.emitWarning;
  process.emitWarning = ((w: string | Error, ...rest: unknown[]) => {
    const type = typeof rest[0] === 'string' ? rest[0] : (rest[0] as { type?: string } | undefined)?.type;
    if (type === 'ExperimentalWarning' && String(w).includes('measureMemory')) return;
    (emit as (...a: unknown[]) => void).call(process, w, ...rest);
  }) as typeof process.emitWarning;
  try {
    return f();
  } finally {
    process.emitWarning = emit;
  }
}
