// Returning memory after a large config change. A full sync of 10,000 services leaves ~100 MiB of garbage (decoded
// resources, intermediate models) that V8 collects only when it next needs room, so the agent's RSS at rest would stay
// at its sync peak. One explicit full collection after such a change (not on the per-change path) gives it back.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let gc: (() => void) | undefined | null;

/** A full garbage collection, or false when the runtime refuses to expose one. */
export function collectGarbage(): boolean {
  if (gc === undefined) {
    try {
      // --expose-gc can be turned on at run time; a fresh context then sees the gc() function.
      setFlagsFromString('--expose-gc');
      gc = runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  if (!gc) return false;
  gc();
  return true;
}
