// What the agent's garbage collector did during a measured run, read from V8's `--trace-gc-nvp` lines on its
// stdout (one line per collection: `pause=<ms> ... gc=<s|mc|ms|...> ... allocated=<bytes> ...`).
//
// Why from the trace and not from inside the agent: V8 exposes no running total of bytes allocated
// (v8.getHeapStatistics has none), while every trace line carries `allocated`, the bytes allocated since the
// previous collection, and `pause`, how long JavaScript stood still. Their sum over a run divided by its requests
// is the proxy's allocation per request, the budget the l7 bench checks; the pauses are the first suspect for
// the tail (a 1 ms scavenge lands on every request in flight).

export interface GcLine {
  /** ms JavaScript was stopped */
  pause: number;
  /** V8's collector: 's' scavenge (young generation), 'mc'/'ms' mark-compact/sweep (old), others */
  kind: string;
  /** bytes allocated since the previous collection */
  allocated: number;
  /** when, ms since the isolate started (the line's prefix; undefined without one) */
  atMs?: number;
}

const PAUSE = /\bpause=([\d.]+)/;
const KIND = /\bgc=(\w+)/;
const ALLOCATED = /\ballocated=(\d+)/;
const AT = /^\[[^\]]*\]\s+([\d.]+) ms: /;

/** One `--trace-gc-nvp` line, or undefined for any other line (the agent's JSON logs share stdout). */
export function parseGcLine(line: string): GcLine | undefined {
  if (line.startsWith('{')) return undefined;
  const p = PAUSE.exec(line), k = KIND.exec(line), a = ALLOCATED.exec(line);
  if (!p || !k || !a) return undefined;
  const at = AT.exec(line);
  return { pause: Number(p[1]), kind: k[1]!, allocated: Number(a[1]), ...(at ? { atMs: Number(at[1]) } : {}) };
}

/** Collections over a window of time. */
export interface GcStats {
  collections: number;
  /** of them scavenges */
  scavenges: number;
  /** bytes allocated (sum of `allocated` over the window's collections) */
  allocated: number;
  pauseTotalMs: number;
  pauseMaxMs: number;
  /** collections that stopped JavaScript for 1 ms or more */
  pausesOver1ms: number;
  /** ms from the window's first collection to its last, and the bytes allocated in between (both 0 without times) */
  spanMs?: number;
  spanAllocated?: number;
}

/**
 * Bytes allocated per request over a run of `seconds` that answered `requests`. The sum of `allocated` over the
 * run's collections is off by up to what one young generation holds (bytes from before the run counted at its first
 * collection, the last ones not yet collected): ±8 MiB, ±300 B a request at 25k requests. With 3 collections or
 * more it is the rate between the first and the last collection instead (whole intervals only) times the run's
 * time per request.
 */
export function allocPerRequest(gc: GcStats, requests: number, seconds: number): number {
  if (gc.collections >= 3 && gc.spanMs !== undefined && gc.spanMs > 0 && gc.spanAllocated !== undefined) {
    return (gc.spanAllocated / (gc.spanMs / 1000)) * seconds / requests;
  }
  return gc.allocated / requests;
}

/** Adds up the lines it is fed; `take()` returns what came since the last take. */
export class GcMeter {
  private cur = GcMeter.empty();
  private firstAt: number | undefined = undefined;

  static empty(): GcStats {
    return { collections: 0, scavenges: 0, allocated: 0, pauseTotalMs: 0, pauseMaxMs: 0, pausesOver1ms: 0 };
  }

  /** Feed one stdout line; returns whether it was a trace line. */
  feed(line: string): boolean {
    const g = parseGcLine(line);
    if (!g) return false;
    const c = this.cur;
    c.collections++;
    if (g.kind === 's') c.scavenges++;
    c.allocated += g.allocated;
    if (g.atMs !== undefined) {
      if (this.firstAt === undefined) this.firstAt = g.atMs;
      else {
        c.spanAllocated = (c.spanAllocated ?? 0) + g.allocated;
        c.spanMs = g.atMs - this.firstAt;
      }
    }
    c.pauseTotalMs += g.pause;
    c.pauseMaxMs = Math.max(c.pauseMaxMs, g.pause);
    if (g.pause >= 1) c.pausesOver1ms++;
    return true;
  }

  take(): GcStats {
    const out = this.cur;
    this.cur = GcMeter.empty();
    this.firstAt = undefined;
    return out;
  }
}
