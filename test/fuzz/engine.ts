// A small coverage-guided fuzzer (libFuzzer's loop, in-process): keep every input that reaches new coverage, mutate
// inputs from that corpus (libFuzzer's byte mutations plus dictionary tokens), report what throws, minimised.
// Coverage comes from the probes hooks.mjs adds to the files under test; this file only reads them.
//
// Why not @jazzer.js: see hooks.mjs (it cannot run here). The parts kept from libFuzzer / AFL: hit-count buckets,
// the corpus of inputs with new coverage, stacked byte mutations with a dictionary and cross-over, minimisation of a
// finding by chunk removal, a per-input time bound (child.ts's watchdog: a hang is a finding like a crash).
import { createHash } from 'node:crypto';

/** Must match hooks.mjs. */
export const MAP_SIZE = 1 << 18;

declare global {
  // eslint-disable-next-line no-var
  var __smFuzzCov: Uint8Array | undefined;
  // eslint-disable-next-line no-var
  var __smFuzzMax: number | undefined;
  // eslint-disable-next-line no-var
  var __smFuzzFiles: [string, number, number][] | undefined;
}

/** AFL's hit-count classes: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+ each one bit. */
const BUCKET = new Uint8Array(256);
for (let c = 1; c < 256; c++) BUCKET[c] = c === 1 ? 1 : c === 2 ? 2 : c === 3 ? 4 : c < 8 ? 8 : c < 16 ? 16 : c < 32 ? 32 : c < 128 ? 64 : 128;

export class Coverage {
  readonly map: Uint8Array = (globalThis.__smFuzzCov ??= new Uint8Array(MAP_SIZE));
  private readonly words = new Uint32Array(this.map.buffer, this.map.byteOffset, MAP_SIZE / 4);
  /** the buckets each probe has been seen in */
  private readonly seen = new Uint8Array(MAP_SIZE);

  /** Fold the last execution's counts into what was seen (and clear them): true when any probe reached a new bucket. */
  collect(): boolean {
    const map = this.map, words = this.words, seen = this.seen;
    const nw = ((globalThis.__smFuzzMax ?? MAP_SIZE) + 3) >> 2;
    let fresh = false;
    for (let w = 0; w < nw; w++) {
      if (words[w] === 0) continue;
      for (let i = w * 4; i < w * 4 + 4; i++) {
        const b = BUCKET[map[i]!]!;
        if (b & ~seen[i]!) { seen[i]! |= b; fresh = true; }
      }
      words[w] = 0;
    }
    return fresh;
  }

  /** Clear the counts without learning from them (minimisation runs). */
  clear(): void {
    this.map.fill(0, 0, globalThis.__smFuzzMax ?? MAP_SIZE);
  }

  /** Probes reached so far, and how many there are in the probed files. */
  count(): { hit: number; total: number } {
    let hit = 0;
    const total = Math.max(0, (globalThis.__smFuzzMax ?? 1) - 1);
    for (let i = 0; i <= total; i++) if (this.seen[i] !== 0) hit++;
    return { hit, total };
  }
}

/** xorshift32: a seeded generator, so that a run can be repeated. */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = (seed >>> 0) || 0x9e3779b9; }
  next(): number {
    let x = this.s;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return (this.s = x);
  }
  /** 0..n-1 */
  below(n: number): number { return n <= 1 ? 0 : this.next() % n; }
  chance(oneIn: number): boolean { return this.below(oneIn) === 0; }
}

const INTERESTING_8 = [0, 1, 0x7f, 0x80, 0xff, 0x20, 0x0d, 0x0a, 0x3a, 0x09];
const INTERESTING_NUM = ['0', '1', '-1', '00', '255', '256', '4096', '16384', '65535', '65536', '2147483647', '2147483648', '4294967295',
  '4294967296', '9007199254740993', '1e3', '0x10', '999999999999999', '1000000000000000', ' 1', '1 '];
const INTERESTING_32 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x3fff, 0x4000, 0x7fff, 0x8000, 0xffff, 0x10000, 0xffffff, 0x1000000, 0x7fffffff, 0x80000000, 0xffffffff];

/**
 * libFuzzer-style mutations, stacked 1..16 at a time. The stacked steps change one private copy in place where the
 * length stays (a copy per step was 7% of xds-sotw's CPU at ~5 KB inputs and ~15% of h2-server's); only steps that
 * change the length allocate. The random choices are the same as with a copy per step.
 */
export class Mutator {
  /** whether the buffer being mutated is this mutation's own (allocated by a step), not the parent or a view of it */
  private owned = false;

  constructor(private readonly rng: Rng, private readonly dict: readonly Buffer[], private readonly maxLen: number) {}

  mutate(input: Buffer, other: () => Buffer): Buffer {
    let d = input;
    this.owned = false;
    const n = 1 << this.rng.below(5);
    for (let k = 0; k < n; k++) d = this.once(d, other);
    return d.length > this.maxLen ? d.subarray(0, this.maxLen) : d;
  }

  /** d, to change in place: copied the first time (the parent is a corpus input, which must never change) */
  private writable(d: Buffer): Buffer {
    if (this.owned) return d;
    this.owned = true;
    return Buffer.from(d);
  }

  /** a new buffer of these pieces (owned) */
  private concat(parts: Buffer[]): Buffer {
    this.owned = true;
    return Buffer.concat(parts);
  }

  private once(d: Buffer, other: () => Buffer): Buffer {
    const r = this.rng;
    const len = d.length;
    const op = r.below(this.dict.length > 0 ? 14 : 12);
    const at = r.below(len + 1);
    switch (op) {
      case 0: { // flip a bit
        if (len === 0) return this.insert(d, 0, Buffer.from([r.below(256)]));
        const c = this.writable(d); c[r.below(len)]! ^= 1 << r.below(8); return c;
      }
      case 1: { // a random byte
        if (len === 0) { this.owned = true; return Buffer.from([r.below(256)]); }
        const c = this.writable(d); c[r.below(len)] = r.below(256); return c;
      }
      case 2: { // an interesting byte
        if (len === 0) return d;
        const c = this.writable(d); c[r.below(len)] = INTERESTING_8[r.below(INTERESTING_8.length)]!; return c;
      }
      case 3: { // an interesting 16/32-bit value, either byte order (frame lengths, varints, settings)
        const width = r.chance(2) ? 2 : 4;
        if (len < width) return d;
        const c = this.writable(d);
        const v = INTERESTING_32[r.below(INTERESTING_32.length)]!;
        const p = r.below(len - width + 1);
        if (width === 2) { if (r.chance(2)) c.writeUInt16BE(v & 0xffff, p); else c.writeUInt16LE(v & 0xffff, p); }
        else if (r.chance(2)) c.writeUInt32BE(v >>> 0, p); else c.writeUInt32LE(v >>> 0, p);
        return c;
      }
      case 4: { // add or subtract a little
        if (len === 0) return d;
        const c = this.writable(d); const p = r.below(len); c[p] = (c[p]! + r.below(35) - 17) & 0xff; return c;
      }
      case 5: { // erase a range
        if (len <= 1) return d;
        const p = r.below(len); const m = 1 + r.below(Math.min(len - p, 1 + r.below(64)));
        return this.concat([d.subarray(0, p), d.subarray(p + m)]);
      }
      case 6: { // insert random bytes, or one repeated
        const m = 1 + r.below(r.chance(4) ? 64 : 4);
        const b = Buffer.alloc(m);
        if (r.chance(2)) b.fill(r.below(256)); else for (let i = 0; i < m; i++) b[i] = r.below(256);
        return this.insert(d, at, b);
      }
      case 7: { // copy a range of the input elsewhere in it
        if (len === 0) return d;
        const p = r.below(len); const m = 1 + r.below(Math.min(len - p, 128));
        return this.insert(d, at, d.subarray(p, p + m)); // (insert copies: the range may be a view of d)
      }
      case 8: { // cross-over: a piece of another corpus input
        const o = other();
        if (o.length === 0) return d;
        const p = r.below(o.length); const m = 1 + r.below(Math.min(o.length - p, 256));
        return r.chance(2) ? this.insert(d, at, o.subarray(p, p + m)) : this.concat([d.subarray(0, at), o.subarray(p)]);
      }
      case 9: { // a decimal number replaced by an interesting one (lengths, ports, sizes in text formats)
        // (on the bytes: a latin1 string of an 8 KB input per call was most of this step's cost)
        const digit = (i: number) => d[i]! >= 48 && d[i]! <= 57;
        const starts: number[] = [];
        for (let i = 0; i < len; i++) if (digit(i) && (i === 0 || !digit(i - 1))) starts.push(i);
        if (starts.length === 0) return this.insert(d, at, Buffer.from(INTERESTING_NUM[r.below(INTERESTING_NUM.length)]!));
        const p = starts[r.below(starts.length)]!;
        let e = p; while (e < len && digit(e)) e++;
        const v = r.chance(3) ? String(r.below(100000)) : INTERESTING_NUM[r.below(INTERESTING_NUM.length)]!;
        return this.concat([d.subarray(0, p), Buffer.from(v, 'latin1'), d.subarray(e)]);
      }
      case 10: { // shuffle a few bytes
        if (len < 2) return d;
        const c = this.writable(d); const p = r.below(len - 1); const m = 2 + r.below(Math.min(8, len - p) - 1);
        for (let i = m - 1; i > 0; i--) { const j = r.below(i + 1); const t = c[p + i]!; c[p + i] = c[p + j]!; c[p + j] = t; }
        return c;
      }
      case 11: { // truncate or repeat the tail (incomplete and pipelined messages)
        if (len === 0) return d;
        // (a truncation is a view of d: as much d's own as d was)
        return r.chance(2) ? d.subarray(0, r.below(len)) : this.concat([d, d.subarray(r.below(len))]);
      }
      case 12: // insert a dictionary token
        return this.insert(d, at, this.dict[r.below(this.dict.length)]!);
      default: { // overwrite with a dictionary token
        const t = this.dict[r.below(this.dict.length)]!;
        if (len < t.length) return this.insert(d, at, t);
        const c = this.writable(d); t.copy(c, r.below(len - t.length + 1)); return c;
      }
    }
  }

  private insert(d: Buffer, at: number, b: Buffer): Buffer {
    return this.concat([d.subarray(0, at), b, d.subarray(at)]);
  }
}

export interface Finding { kind: 'crash' | 'hang'; signature: string; message: string; input: Buffer }

/**
 * What identifies a finding across inputs: the error's class, its message with numbers blanked, and the first stack
 * frame in the tree (two inputs hitting one bug share it; a different bug differs in one of them).
 */
export function signatureOf(e: unknown): string {
  if (!(e instanceof Error)) return `thrown ${typeof e}: ${String(e).slice(0, 80)}`;
  const frame = (e.stack ?? '').split('\n').slice(1).find((l) => /\/(agent|xds|cli|kube|controlplane|test\/fuzz)\//.test(l) && !l.includes('/test/fuzz/engine.ts') && !l.includes('/test/fuzz/targets/common.ts'));
  const where = frame ? frame.replace(/^.*\/(agent|xds|cli|kube|controlplane|test)\//, '$1/').replace(/:\d+\)?$/, '') : '?';
  // quoted parts (JSON strings: names, values) and numbers vary between inputs of one bug
  const message = e.message.split('\n')[0]!.replace(/"(?:[^"\\]|\\.)*"/g, '"…"').replace(/\d+/g, 'N').slice(0, 120);
  return `${e.constructor?.name ?? 'Error'}: ${message} @ ${where}`;
}

export type RunOne = (data: Buffer) => unknown;

export interface FuzzOptions {
  seeds: Buffer[];
  dict: string[];
  maxLen: number;
  /** stop after this long, or this many executions, whichever first */
  seconds: number;
  maxExecs?: number;
  seed: number;
  /** false: keep no corpus beyond the seeds (the same mutations, blind): the control for "is it coverage-guided" */
  guided?: boolean;
  /** told before every execution (the watchdog keeps the input in case it never returns) */
  beforeExec?: (data: Buffer) => void;
  /** an input with new coverage (a long run keeps them) */
  onNewInput?: (data: Buffer) => void;
  onFinding?: (f: Finding) => void;
  /** stop at the first finding (the suite: one is enough to fail) */
  stopOnFinding?: boolean;
  maxFindings?: number;
  /**
   * Run again every input the corpus keeps (the seeds, and each with new coverage) the target's slower, more real
   * way (admin: over its unix socket); what it throws is a finding like any other.
   */
  confirm?: RunOne;
  /** capture stacks while inputs run (by default only when one fails: see fuzz()) */
  stacks?: boolean;
}

export interface FuzzStats {
  execs: number;
  seconds: number;
  execsPerSecond: number;
  corpus: number;
  probesHit: number;
  probesTotal: number;
  findings: Finding[];
}

/** Run one input; what it threw, or undefined. */
async function attempt(run: RunOne, data: Buffer): Promise<unknown> {
  try {
    const r = run(data);
    if (r !== undefined && typeof (r as Promise<void>).then === 'function') await r;
    return undefined;
  } catch (e) {
    return e ?? new Error('threw a nullish value');
  }
}

/** Shrink an input while it still fails the same way (libFuzzer's -minimize_crash, by chunk removal). */
export async function minimise(run: RunOne, input: Buffer, signature: string, before?: (d: Buffer) => void, budgetMs = 5000): Promise<Buffer> {
  const deadline = performance.now() + budgetMs;
  let best = input;
  for (let step = best.length >> 1; step >= 1 && performance.now() < deadline; step >>= 1) {
    for (let p = 0; p + step <= best.length && performance.now() < deadline;) {
      const cand = Buffer.concat([best.subarray(0, p), best.subarray(p + step)]);
      before?.(cand);
      const e = await attempt(run, cand);
      if (e !== undefined && signatureOf(e) === signature) best = cand;
      else p += step;
    }
  }
  return best;
}

export async function fuzz(run: RunOne, o: FuzzOptions): Promise<FuzzStats> {
  const cov = new Coverage();
  const rng = new Rng(o.seed);
  const dict = o.dict.map((t) => Buffer.from(t, 'latin1'));
  const mut = new Mutator(rng, dict, o.maxLen);
  const guided = o.guided ?? true;
  const corpus: Buffer[] = [];
  const findings: Finding[] = [];
  const known = new Set<string>();
  const maxFindings = o.maxFindings ?? 20;
  const started = performance.now();
  const endAt = started + o.seconds * 1000;
  const maxExecs = o.maxExecs ?? Number.POSITIVE_INFINITY;
  let execs = 0;
  let stop = false;

  // Errors are thrown and caught all the time by the code under test (a refused input is an exception in most of
  // our parsers; the yaml package makes one per problem): capturing their stacks was 8% of config-yaml's time and a
  // few % elsewhere. No stacks while inputs run; one that fails runs again with them, for its signature (which names
  // the throwing frame) and its minimisation.
  const stackLimit = Error.stackTraceLimit;
  const withStacks = async <T>(f: () => Promise<T>): Promise<T> => {
    Error.stackTraceLimit = stackLimit;
    try { return await f(); } finally { Error.stackTraceLimit = o.stacks ? stackLimit : 0; }
  };
  Error.stackTraceLimit = o.stacks ? stackLimit : 0;

  /** Run one input: it failed (a finding), or passed reaching new coverage or not (learn false: not learnt from). */
  const exec = async (data: Buffer, fn: RunOne = run, learn = true): Promise<'failed' | 'new' | 'old'> => {
    o.beforeExec?.(data);
    if (learn) execs++; // (confirm() runs are not counted: they repeat one)
    let e = await attempt(fn, data);
    if (e !== undefined) {
      cov.clear();
      await withStacks(async () => {
        if (!o.stacks) {
          // (an input that fails only once - state left by an earlier one - keeps its stackless error)
          o.beforeExec?.(data);
          e = (await attempt(fn, data)) ?? e;
          cov.clear();
        }
        const sig = signatureOf(e);
        if (known.has(sig)) return;
        known.add(sig);
        const input = await minimise(fn, data, sig, o.beforeExec);
        cov.clear();
        const f: Finding = { kind: 'crash', signature: sig, message: e instanceof Error ? (e.stack ?? e.message) : String(e), input };
        findings.push(f);
        o.onFinding?.(f);
        if (o.stopOnFinding || findings.length >= maxFindings) stop = true;
      });
      return 'failed';
    }
    if (learn && cov.collect()) return 'new';
    cov.clear();
    return 'old';
  };
  /** an input the corpus is to keep, through confirm() (its coverage is not learnt from: run() reached it already) */
  const confirmed = async (data: Buffer): Promise<boolean> => !o.confirm || (await exec(data, o.confirm, false)) !== 'failed';

  // The seeds first: each is kept (a corpus never starts empty), and what they cover is the baseline.
  for (const s of o.seeds.length > 0 ? o.seeds : [Buffer.alloc(0)]) {
    const d = s.length > o.maxLen ? s.subarray(0, o.maxLen) : s;
    if ((await exec(d)) !== 'failed') await confirmed(d);
    corpus.push(s);
    if (stop) break;
  }
  const seedCount = corpus.length;
  const other = () => corpus[rng.below(corpus.length)]!;
  while (!stop && execs < maxExecs) {
    if ((execs & 255) === 0) {
      if (performance.now() >= endAt) break;
      // let timers and I/O the targets scheduled run (sessions flush on setImmediate)
      if ((execs & 4095) === 0) await new Promise((r) => setImmediate(r));
    }
    // favour what was found last: the frontier is where new coverage is most likely
    const parent = corpus.length > seedCount && rng.chance(3) ? corpus[corpus.length - 1 - rng.below(Math.min(8, corpus.length - seedCount))]! : other();
    const child = mut.mutate(parent, other);
    if ((await exec(child)) === 'new' && guided && await confirmed(child)) {
      corpus.push(child);
      o.onNewInput?.(child);
    }
  }
  Error.stackTraceLimit = stackLimit;
  const seconds = (performance.now() - started) / 1000;
  const { hit, total } = cov.count();
  return { execs, seconds, execsPerSecond: Math.round(execs / Math.max(seconds, 1e-3)), corpus: corpus.length, probesHit: hit, probesTotal: total, findings };
}

export const inputName = (data: Buffer): string => createHash('sha1').update(data).digest('hex').slice(0, 16);
