// SOCKMESH_NETIO_TRACE=<file>: where the proxy's time goes between a wake of the netio loop and the writes it makes,
// for issue 15's tail. One wake reads every ready socket and makes ONE call into JavaScript (netio.ts onEvents); a
// response is written when its event is handled, so an event late in a large batch waits for every event before it.
// These histograms say how large the batches are, how long the JavaScript side of one takes, how long after the
// batch started each write went out (the in-proxy share of a request's latency, per leg; writes deferred to the
// microtasks that run right after the batch included), and how long the loop was away between two batches (other
// work, GC, or the process not running).
//
// Off (the default) it costs one null check per batch and per write; on, two clock reads per batch and one per
// writeSample writes. The figures of each second are appended to the file as one JSON line ({"t": unix ms,
// "batches": n, ...}; "h" holds the histograms' buckets) and the counters start again, so that a bench can merge the
// seconds of one run (readLoopTrace). Percentiles come from log-scaled buckets (4 per power of two: within 19 %).
import { appendFileSync, readFileSync } from 'node:fs';
import { PerformanceObserver } from 'node:perf_hooks';

const RESOLVED = Promise.resolve();

/** 4 buckets per power of two, from 1 (µs or events) to 2^24 */
const PER_OCTAVE = 4;
const BUCKETS = 24 * PER_OCTAVE + 1;

export class LogHistogram {
  readonly counts = new Float64Array(BUCKETS);
  n = 0;
  max = 0;

  add(v: number): void {
    const i = v < 1 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(v) * PER_OCTAVE) + 1);
    this.counts[i]!++;
    this.n++;
    if (v > this.max) this.max = v;
  }

  /** the upper edge of the bucket holding the q-quantile (0 < q <= 1); 0 when empty */
  quantile(q: number): number {
    if (this.n === 0) return 0;
    const rank = Math.ceil(q * this.n);
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return i === 0 ? 1 : Math.min(this.max, 2 ** (i / PER_OCTAVE));
    }
    return this.max;
  }

  summary(): { n: number; p50: number; p90: number; p99: number; p999: number; max: number } {
    const r = (v: number) => Math.round(v * 10) / 10;
    return { n: this.n, p50: r(this.quantile(0.5)), p90: r(this.quantile(0.9)), p99: r(this.quantile(0.99)), p999: r(this.quantile(0.999)), max: r(this.max) };
  }

  /** the non-empty buckets (index -> count) and the max: what a reader merges over several seconds (addBuckets) */
  buckets(): { b: Record<number, number>; max: number } {
    const b: Record<number, number> = {};
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i] !== 0) b[i] = this.counts[i]!;
    return { b, max: this.max };
  }

  addBuckets(x: { b: Record<string, number>; max: number }): void {
    for (const [i, c] of Object.entries(x.b)) {
      const k = Number(i);
      if (!Number.isInteger(k) || k < 0 || k >= BUCKETS || !(c >= 0)) throw new Error(`loop trace: bucket ${i}=${c} out of range`);
      this.counts[k]! += c;
      this.n += c;
    }
    if (x.max > this.max) this.max = x.max;
  }

  reset(): void {
    this.counts.fill(0);
    this.n = 0;
    this.max = 0;
  }
}

export class LoopTrace {
  /** events per batch */
  readonly events = new LogHistogram();
  /** DATA events per batch (sockets read in one wake) */
  readonly reads = new LogHistogram();
  /** µs the JavaScript side of one batch took */
  readonly batchUs = new LogHistogram();
  /**
   * µs from the batch's start to the writes made while handling it (one in writeSample): to the write() call; on a
   * loop with deferWrites (the proxy's) the send(2)s follow the batch's JavaScript, and their time is in the next gap
   */
  readonly writeUs = new LogHistogram();
  /** µs between the end of one batch and the start of the next */
  readonly gapUs = new LogHistogram();
  /** writes made outside a batch and the microtasks right after it (timers, setImmediate) */
  writesOutside = 0;
  /** writes made in the microtasks right after a batch (in writeUs too, from the batch's start) */
  writesDeferred = 0;
  /** ms of the second spent in batches, and between them */
  batchMs = 0;
  gapMs = 0;
  /** ms of GC pauses in the second (V8's 'gc' performance entries) */
  gcMs = 0;
  /** the main thread's schedstat at the last flush: ns on a CPU, ns runnable but waiting for one */
  private lastRun = -1;
  private lastWait = -1;
  /** the current batch's start (performance.now() ms), 0 between batches */
  private batchStart = 0;
  private lastEnd = 0;

  constructor(readonly file: string) {}

  begin(n: number, reads: number): void {
    const now = performance.now();
    if (this.lastEnd !== 0) {
      this.gapUs.add((now - this.lastEnd) * 1000);
      this.gapMs += now - this.lastEnd;
    }
    this.batchStart = now;
    this.inBatch = true;
    this.events.add(n);
    this.reads.add(reads);
  }

  end(): void {
    const now = performance.now();
    this.batchUs.add((now - this.batchStart) * 1000);
    this.batchMs += now - this.batchStart;
    this.inBatch = false;
    this.lastEnd = now;
    // Writes deferred to a microtask during the batch (the h2 session's flush of a session other than the one being
    // read) run right after it returns, before this one (queued last): they count against the batch's start too.
    // (a resolved promise's then(), not queueMicrotask: that makes an AsyncResource per call, once per batch here)
    void RESOLVED.then(this.closeBatch);
  }

  private inBatch = false;
  private readonly closeBatch = (): void => { if (!this.inBatch) this.batchStart = 0; };

  /**
   * One write in writeSample is timed (a clock read is ~50 ns, a request makes two writes or more): the histogram
   * keeps tens of thousands of samples a second under load, and the trace costs (b) well under 1 % of its CPU.
   */
  writeSample = 8;
  private writeTick = 0;

  write(): void {
    if (this.batchStart === 0) { this.writesOutside++; return; }
    if (!this.inBatch) this.writesDeferred++;
    if (++this.writeTick < this.writeSample) return;
    this.writeTick = 0;
    this.writeUs.add((performance.now() - this.batchStart) * 1000);
  }

  /**
   * This second's figures as one JSON line, then zero. The main thread's time splits into batches (batchMs), GC
   * (gcMs), the rest of its CPU time (native reads, timers, other JavaScript: cpuMs - batchMs - gcMs), waiting for a
   * CPU while runnable (runqMs: the scheduler's share) and sleeping in epoll (the remainder of the second).
   */
  flush(): void {
    const [run, wait] = mainThreadSched();
    const cpuMs = this.lastRun < 0 || run < 0 ? -1 : (run - this.lastRun) / 1e6, runqMs = this.lastWait < 0 || wait < 0 ? -1 : (wait - this.lastWait) / 1e6;
    this.lastRun = run;
    this.lastWait = wait;
    if (this.events.n === 0 && this.writesOutside === 0) return; // a quiet second: no line
    const r = (v: number) => Math.round(v * 10) / 10;
    const line = {
      t: Date.now(), batches: this.events.n, events: this.events.summary(), reads: this.reads.summary(), batchUs: this.batchUs.summary(),
      writeUs: this.writeUs.summary(), gapUs: this.gapUs.summary(), writesOutside: this.writesOutside, writesDeferred: this.writesDeferred,
      batchMs: r(this.batchMs), gapMs: r(this.gapMs), gcMs: r(this.gcMs), cpuMs: r(cpuMs), runqMs: r(runqMs),
      h: { events: this.events.buckets(), batchUs: this.batchUs.buckets(), writeUs: this.writeUs.buckets(), gapUs: this.gapUs.buckets() },
    };
    for (const h of [this.events, this.reads, this.batchUs, this.writeUs, this.gapUs]) h.reset();
    this.writesOutside = this.writesDeferred = 0;
    this.batchMs = this.gapMs = this.gcMs = 0;
    try {
      appendFileSync(this.file, JSON.stringify(line) + '\n');
    } catch {
      // a diagnostic must not take the proxy down: the file is the operator's, its errors are theirs to see
    }
  }
}

/** The trace the environment asks for (SOCKMESH_NETIO_TRACE=<file>), flushed every second; null when not asked. */
export function loopTraceFromEnv(env: NodeJS.ProcessEnv = process.env): LoopTrace | null {
  const file = env.SOCKMESH_NETIO_TRACE;
  if (file === undefined || file === '') return null;
  const t = new LoopTrace(file);
  setInterval(() => t.flush(), 1000).unref();
  new PerformanceObserver((list) => { for (const e of list.getEntries()) t.gcMs += e.duration; }).observe({ entryTypes: ['gc'] });
  return t;
}

/** [ns on a CPU, ns waiting for one] of the calling thread (/proc/thread-self/schedstat); [-1, -1] without it */
function mainThreadSched(): [number, number] {
  try {
    const f = readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ');
    return [Number(f[0]), Number(f[1])];
  } catch {
    return [-1, -1];
  }
}

/** One second of a trace file, as flush() wrote it. */
export interface LoopTraceLine {
  /** Date.now() when written: the line covers the second before */
  t: number;
  batches: number;
  writesOutside: number;
  writesDeferred: number;
  batchMs: number;
  gapMs: number;
  gcMs: number;
  /** the main thread's CPU and run-queue wait in the second (-1: not known) */
  cpuMs: number;
  runqMs: number;
  h: Record<'events' | 'batchUs' | 'writeUs' | 'gapUs', { b: Record<string, number>; max: number }>;
}

/** The seconds of a trace file wholly inside [fromMs, toMs] (Date.now() values), merged; null when there is none. */
export function readLoopTrace(text: string, fromMs: number, toMs: number): {
  seconds: number; events: LogHistogram; batchUs: LogHistogram; writeUs: LogHistogram; gapUs: LogHistogram;
  /** per second: ms of the main thread on a CPU, waiting for one, in GC pauses */
  cpuMs: number; runqMs: number; gcMs: number;
} | null {
  const out = { seconds: 0, events: new LogHistogram(), batchUs: new LogHistogram(), writeUs: new LogHistogram(), gapUs: new LogHistogram(), cpuMs: 0, runqMs: 0, gcMs: 0 };
  let sched = 0;
  let lineNo = 0;
  const lines = text.split('\n');
  // a last line without its newline is still being written by the agent: not a whole second yet
  if (!text.endsWith('\n')) lines.pop();
  for (const raw of lines) {
    lineNo++;
    if (raw.trim() === '') continue;
    let x: LoopTraceLine;
    try {
      x = JSON.parse(raw) as LoopTraceLine;
    } catch (e) {
      throw new Error(`loop trace line ${lineNo}: ${(e as Error).message}`);
    }
    if (x.t - 1000 < fromMs || x.t > toMs || x.h === undefined) continue;
    out.seconds++;
    for (const k of ['events', 'batchUs', 'writeUs', 'gapUs'] as const) out[k].addBuckets(x.h[k]);
    out.gcMs += x.gcMs;
    if (x.cpuMs >= 0 && x.runqMs >= 0) { sched++; out.cpuMs += x.cpuMs; out.runqMs += x.runqMs; }
  }
  if (out.seconds === 0) return null;
  out.gcMs /= out.seconds;
  out.cpuMs = sched ? out.cpuMs / sched : -1;
  out.runqMs = sched ? out.runqMs / sched : -1;
  return out;
}
