// The l7 bench's results: medians over repetitions, ratios, the targets as PASS/FAIL, a table a person
// reads and the JSON object a machine reads.
import { round, scenarioLabels, scenarioLetters } from './report.js';
import type { HttpRun } from './loadgen.js';
import { allocPerRequest, type GcStats } from './gctrace.js';

export const L7_SCENARIOS = ['direct', 'sockmesh', 'haproxy', 'chain', 'relay', 'haproxy2'] as const;
export type L7Scenario = (typeof L7_SCENARIOS)[number];
export const L7_LABELS = scenarioLabels(L7_SCENARIOS, {
  direct: 'direct', sockmesh: 'sockmesh L7', haproxy: 'haproxy', chain: '2 haproxy', relay: 'node relay', haproxy2: 'haproxy 2 thr',
});
/** Short letters for ratio names and --only. */
export const L7_LETTERS = scenarioLetters(L7_SCENARIOS);

export const PROTOCOLS = ['http1', 'h2'] as const;
export type Protocol = (typeof PROTOCOLS)[number];
export const PROTOCOL_TITLES: Record<Protocol, string> = { http1: 'HTTP/1.1 (wrk)', h2: 'HTTP/2 (h2load)' };

/** One measured run of a scenario and protocol, with the CPU its processes used meanwhile. */
export interface Sample extends HttpRun {
  /** % of one CPU used by the scenario's proxy process(es) (the agent for (b)); absent for (a) */
  proxyCpu?: number;
  /** the same as CPU time over the run, µs */
  proxyCpuUs?: number;
  /** % of one CPU used by the backend */
  backendCpu: number;
  seconds: number;
  /** the proxy's garbage collections during the run ((b) only) */
  gc?: GcStats;
  /**
   * What the scheduler did to the proxy process(es), all threads, over the run: µs runnable but waiting for a CPU,
   * preemptions (involuntary switches) and sleeps (voluntary ones: an empty epoll, a futex)
   */
  sched?: { runqUs: number; preempted: number; switches: number };
  /**
   * the backend's voluntary switches over the run: how often it went to sleep, i.e. was woken again by the proxy's
   * writes; per request, what the proxy's write pattern costs its peer (sends back to back wake it once for several)
   */
  backendSleeps?: number;
  /** (b): the proxy's netio loop over the run's whole seconds (SOCKMESH_NETIO_TRACE) */
  loop?: LoopFigures;
}

/**
 * Where (b)'s proxy spends a request's time inside its one thread (agent/proxy/looptrace.ts): events per wake of the
 * netio loop, the JavaScript time of one batch, each write's delay from the start of the batch that caused it (per
 * leg: the share of the latency that batching adds), the gaps between batches (the loop away: GC, timers, or not
 * running), and per second its main thread's CPU, run-queue wait and GC pauses, ms.
 */
export interface LoopFigures {
  seconds: number;
  eventsP50: number;
  eventsP99: number;
  batchP50Us: number;
  batchP99Us: number;
  writeP50Us: number;
  writeP99Us: number;
  writeP999Us: number;
  gapP99Us: number;
  gapP999Us: number;
  cpuMsPerS: number;
  runqMsPerS: number;
  gcMsPerS: number;
}

export function formatLoop(l: LoopFigures): string {
  const i = (v: number) => Math.round(v).toString();
  return `${i(l.eventsP50)} events/wake (p99 ${i(l.eventsP99)}), batch ${i(l.batchP50Us)}/${i(l.batchP99Us)} µs, ` +
    `write +${i(l.writeP50Us)}/${i(l.writeP99Us)}/${i(l.writeP999Us)} µs, gaps p99 ${i(l.gapP99Us)} p99.9 ${i(l.gapP999Us)} µs, ` +
    `main thread ${l.cpuMsPerS < 0 ? '-' : i(l.cpuMsPerS)} ms/s on CPU, ${l.runqMsPerS < 0 ? '-' : i(l.runqMsPerS)} waiting, ${i(l.gcMsPerS)} in GC`;
}

/** Medians over the samples of one scenario and protocol. */
export interface Summary {
  rps: number;
  p50: number;
  p99: number;
  /** undefined when a tool did not report it */
  p999?: number;
  proxyCpu?: number;
  /** CPU time of the proxy per request, µs (proxyCpu / rps): what the proxy costs, whatever the load */
  cpuPerReq?: number;
  backendCpu: number;
  samples: number;
  /** (b): bytes the proxy allocated per request (median over runs) */
  allocPerReq?: number;
  /** (b): share of the run's wall time JavaScript stood still for GC, % (median) */
  gcPausePct?: number;
  /** (b): the longest GC pause of any run, ms */
  gcPauseMaxMs?: number;
  /** the proxy's run-queue wait per request, µs (median): the scheduler's share of its latency */
  runqPerReq?: number;
  /** the proxy's preemptions per second (median) */
  preemptPerSec?: number;
  /** (b): the netio loop's figures of the run with the median write p99 */
  loop?: LoopFigures;
}

export interface L7Result {
  name: L7Scenario;
  samples: Partial<Record<Protocol, Sample[]>>;
  /** set when the scenario could not run at all */
  skipped?: string;
  /** per protocol: why it stopped being measured */
  errors: Partial<Record<Protocol, string>>;
  /** facts showing the scenario did what it claims (redirect counters, proxied requests) */
  evidence: Record<string, number | string>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The medians of a scenario's samples for one protocol; undefined when it has none or failed. */
export function summarize(r: L7Result | undefined, p: Protocol): Summary | undefined {
  if (!r || r.skipped || r.errors[p]) return undefined;
  const s = r.samples[p];
  if (!s || s.length === 0) return undefined;
  const cpu = s.filter((x) => x.proxyCpu !== undefined).map((x) => x.proxyCpu!);
  const p999 = s.filter((x) => x.p999 !== undefined).map((x) => x.p999!);
  const gc = s.filter((x) => x.gc && x.requests > 0);
  const sched = s.filter((x) => x.sched && x.requests > 0);
  const loops = s.filter((x) => x.loop !== undefined).map((x) => x.loop!).sort((a, b) => a.writeP99Us - b.writeP99Us);
  return {
    ...(loops.length ? { loop: loops[Math.floor((loops.length - 1) / 2)]! } : {}),
    rps: median(s.map((x) => x.rps)),
    p50: median(s.map((x) => x.p50)),
    p99: median(s.map((x) => x.p99)),
    ...(p999.length === s.length ? { p999: median(p999) } : {}),
    ...(gc.length ? {
      allocPerReq: median(gc.map((x) => allocPerRequest(x.gc!, x.requests, x.seconds))),
      gcPausePct: median(gc.map((x) => (x.gc!.pauseTotalMs / 1000 / x.seconds) * 100)),
      gcPauseMaxMs: Math.max(...gc.map((x) => x.gc!.pauseMaxMs)),
    } : {}),
    ...(sched.length ? {
      runqPerReq: median(sched.map((x) => x.sched!.runqUs / x.requests)),
      preemptPerSec: median(sched.map((x) => x.sched!.preempted / x.seconds)),
    } : {}),
    ...(cpu.length ? { proxyCpu: median(cpu) } : {}),
    ...(cpu.length ? { cpuPerReq: median(s.filter((x) => x.proxyCpuUs !== undefined && x.requests > 0).map((x) => x.proxyCpuUs! / x.requests)) } : {}),
    backendCpu: median(s.map((x) => x.backendCpu)),
    samples: s.length,
  };
}

const ratio = (x: number | undefined, y: number | undefined) => (x !== undefined && y !== undefined && y > 0 ? x / y : undefined);

/** The ratios the issue asks for (b/a, c/a, d/a, b/c, b/d) and the calibration ones (e/a, f/a, b/e). */
export const RATIO_PAIRS: Array<[L7Scenario, L7Scenario]> = [
  ['sockmesh', 'direct'], ['haproxy', 'direct'], ['chain', 'direct'], ['sockmesh', 'haproxy'], ['sockmesh', 'chain'],
  ['relay', 'direct'], ['haproxy2', 'direct'], ['sockmesh', 'relay'],
];

export interface RatioRow {
  rps?: number;
  p50?: number;
  p99?: number;
  p999?: number;
  /** proxy CPU per request, where both scenarios have a proxy */
  cpuPerReq?: number;
}

export function ratios(results: L7Result[]): Record<string, Partial<Record<Protocol, RatioRow>>> {
  const get = (n: L7Scenario) => results.find((r) => r.name === n);
  const out: Record<string, Partial<Record<Protocol, RatioRow>>> = {};
  for (const [x, y] of RATIO_PAIRS) {
    const key = `${L7_LETTERS[x]}/${L7_LETTERS[y]}`;
    for (const p of PROTOCOLS) {
      const sx = summarize(get(x), p), sy = summarize(get(y), p);
      if (!sx || !sy) continue;
      const cpu = ratio(sx.cpuPerReq, sy.cpuPerReq);
      (out[key] ??= {})[p] = {
        rps: ratio(sx.rps, sy.rps), p50: ratio(sx.p50, sy.p50), p99: ratio(sx.p99, sy.p99), p999: ratio(sx.p999, sy.p999),
        ...(cpu !== undefined ? { cpuPerReq: cpu } : {}),
      };
    }
  }
  return out;
}

export interface L7Check {
  name: string;
  protocol: Protocol;
  status: 'PASS' | 'FAIL' | 'SKIP';
  value?: number;
  limit: number;
  detail: string;
}

/**
 * Bytes the proxy may allocate per request (the hot path's budget, measured by the bench with --trace-gc-nvp):
 * set a little above what the engines allocated when the budget was introduced (README: the l7 bench), so that a
 * change that adds an object or a string copy per request fails the bench and is looked at.
 */
// HTTP/1.1 was 3072 B against 2,558-2,690 measured; since a clean response head passes as read (http1.ts) it measured
// 2,169-2,297 B in the bench (load ~13), and the budget followed it down to 2560; since the response head's strings are
// made only when asked for (h1parse.ts) and a response read whole goes on as that read, 1,396-1,403 B (load 11-13,
// 26-29k req/s; a run at a few thousand req/s reads higher, the agent's own allocation shared by fewer requests): 2048.
export const ALLOC_BUDGET: Record<Protocol, number> = { http1: 2048, h2: 2560 };

/**
 * The targets, for each protocol (issue 15): (b) >= 1.2x (c) and >= 1.5x (d) in req/s, (b) p99 <= (c) p99 and
 * <= (d) p99, and the proxy's allocation per request within ALLOC_BUDGET.
 */
export function l7Checks(results: L7Result[]): L7Check[] {
  const get = (n: L7Scenario) => results.find((r) => r.name === n);
  const why = (...ns: L7Scenario[]) => (p: Protocol) =>
    ns.map((n) => {
      const r = get(n);
      if (!r) return `${L7_LABELS[n]} not run`;
      const w = r.skipped ?? r.errors[p];
      return w ? `${L7_LABELS[n]}: ${w}` : '';
    }).filter(Boolean).join('; ') || 'not measured';
  const out: L7Check[] = [];
  for (const p of PROTOCOLS) {
    const b = summarize(get('sockmesh'), p), c = summarize(get('haproxy'), p), d = summarize(get('chain'), p);
    const check = (name: string, value: number | undefined, cmp: '>=' | '<=', limit: number, missing: string): L7Check => {
      if (value === undefined) return { name, protocol: p, status: 'SKIP', limit, detail: `not measured: ${missing}` };
      const ok = cmp === '>=' ? value >= limit : value <= limit;
      return { name, protocol: p, status: ok ? 'PASS' : 'FAIL', value, limit, detail: `${value.toFixed(2)}x ${cmp} ${limit}x` };
    };
    out.push(check('(b) req/s >= 1.2x (c)', ratio(b?.rps, c?.rps), '>=', 1.2, why('sockmesh', 'haproxy')(p)));
    out.push(check('(b) p99 <= (c) p99', ratio(b?.p99, c?.p99), '<=', 1.0, why('sockmesh', 'haproxy')(p)));
    out.push(check('(b) req/s >= 1.5x (d)', ratio(b?.rps, d?.rps), '>=', 1.5, why('sockmesh', 'chain')(p)));
    out.push(check('(b) p99 <= (d) p99', ratio(b?.p99, d?.p99), '<=', 1.0, why('sockmesh', 'chain')(p)));
    const budget = ALLOC_BUDGET[p];
    const alloc = b?.allocPerReq;
    out.push(alloc === undefined
      ? { name: '(b) allocation per request', protocol: p, status: 'SKIP', limit: budget, detail: `not measured: ${b ? 'no GC trace from the agent' : why('sockmesh')(p)}` }
      : { name: '(b) allocation per request', protocol: p, status: alloc <= budget ? 'PASS' : 'FAIL', value: alloc, limit: budget, detail: `${Math.round(alloc)} B <= ${budget} B` });
  }
  return out;
}

const fmtInt = (v: number | undefined) => (v === undefined ? '-' : Math.round(v).toString());
const fmtX = (v: number | undefined) => (v === undefined ? '-' : `${v.toFixed(2)}x`);

/** Absolute figures per scenario and protocol, then the ratio rows. */
export function formatL7Table(results: L7Result[]): string {
  const label = 20, w = 8;
  const pad = (s: string, n: number) => s.padEnd(n);
  const cols = ['req/s', 'p50 µs', 'p99 µs', 'p99.9 µs', 'proxy%', 'µs/req', 'bknd%'];
  const block = cols.length * w + 2;
  const lines: string[] = [];
  lines.push(pad('', label) + PROTOCOLS.map((p) => pad(PROTOCOL_TITLES[p], block)).join(''));
  lines.push(pad('', label) + PROTOCOLS.map(() => pad(cols.map((c) => pad(c, w)).join(''), block)).join(''));
  for (const r of results) {
    if (r.skipped) {
      lines.push(pad(L7_LABELS[r.name], label) + `not available: ${r.skipped}`);
      continue;
    }
    lines.push(pad(L7_LABELS[r.name], label) + PROTOCOLS.map((p) => {
      const s = summarize(r, p);
      if (!s) return pad(r.errors[p] ? 'FAILED (below)' : '-', block);
      const perReq = s.cpuPerReq === undefined ? '-' : s.cpuPerReq.toFixed(1);
      return pad([fmtInt(s.rps), fmtInt(s.p50), fmtInt(s.p99), fmtInt(s.p999), fmtInt(s.proxyCpu), perReq, fmtInt(s.backendCpu)].map((c) => pad(c, w)).join(''), block);
    }).join(''));
  }
  for (const r of results) for (const p of PROTOCOLS) if (r.errors[p]) lines.push(`${L7_LABELS[r.name]} ${PROTOCOL_TITLES[p]} FAILED: ${r.errors[p]}`);
  lines.push('');
  const gcRows = results.filter((r) => PROTOCOLS.some((p) => summarize(r, p)?.allocPerReq !== undefined));
  for (const r of gcRows) {
    lines.push(pad(`${L7_LABELS[r.name]} GC`, label) + PROTOCOLS.map((p) => {
      const s = summarize(r, p);
      if (s?.allocPerReq === undefined) return pad('-', block);
      return pad(`${Math.round(s.allocPerReq)} B/req, pauses ${s.gcPausePct!.toFixed(2)}% of the time, max ${s.gcPauseMaxMs!.toFixed(1)} ms`, block);
    }).join(''));
  }
  const schedRows = results.filter((r) => PROTOCOLS.some((p) => summarize(r, p)?.runqPerReq !== undefined));
  for (const r of schedRows) {
    lines.push(pad(`(${L7_LETTERS[r.name]}) sched`, label) + PROTOCOLS.map((p) => {
      const s = summarize(r, p);
      if (s?.runqPerReq === undefined) return pad('-', block);
      return pad(`run queue ${s.runqPerReq.toFixed(2)} µs/req, ${Math.round(s.preemptPerSec!)} preemptions/s`, block);
    }).join(''));
  }
  for (const r of results) {
    for (const p of PROTOCOLS) {
      const l = summarize(r, p)?.loop;
      if (l) lines.push(`(${L7_LETTERS[r.name]}) loop ${PROTOCOL_TITLES[p]}: ${formatLoop(l)}`);
    }
  }
  lines.push('');
  lines.push(pad('ratios', label) + PROTOCOLS.map(() => pad(pad('req/s', w) + pad('p50', w) + pad('p99', w) + pad('p99.9', w) + pad('µs/req', w), block)).join(''));
  const rs = ratios(results);
  for (const [x, y] of RATIO_PAIRS) {
    const key = `${L7_LETTERS[x]}/${L7_LETTERS[y]}`;
    const row = rs[key];
    if (!row) continue;
    lines.push(pad(`  ${key}`, label) + PROTOCOLS.map((p) => {
      const v = row[p];
      return pad(v ? pad(fmtX(v.rps), w) + pad(fmtX(v.p50), w) + pad(fmtX(v.p99), w) + pad(fmtX(v.p999), w) + pad(fmtX(v.cpuPerReq), w) : '-', block);
    }).join(''));
  }
  return lines.join('\n');
}

/** The results for the JSON line. */
export function l7Json(results: L7Result[], checks: L7Check[]): Record<string, unknown> {
  const o = (v: number | undefined, d: number) => (v === undefined ? null : round(v, d));
  const rs = ratios(results);
  return {
    scenarios: Object.fromEntries(results.map((r) => [r.name, {
      label: L7_LABELS[r.name],
      ...(r.skipped ? { notAvailable: r.skipped } : {}),
      ...Object.fromEntries(PROTOCOLS.map((p) => {
        const s = summarize(r, p);
        if (r.errors[p]) return [p, { error: r.errors[p] }];
        if (!s) return [p, null];
        return [p, {
          rps: o(s.rps, 0), p50Us: o(s.p50, 1), p99Us: o(s.p99, 1), p999Us: o(s.p999, 1),
          ...(s.allocPerReq !== undefined ? { allocBytesPerRequest: o(s.allocPerReq, 0), gcPausePct: o(s.gcPausePct, 3), gcPauseMaxMs: o(s.gcPauseMaxMs, 2) } : {}),
          ...(s.runqPerReq !== undefined ? { proxyRunqUsPerRequest: o(s.runqPerReq, 3), proxyPreemptionsPerSec: o(s.preemptPerSec, 0) } : {}),
          ...(s.loop !== undefined ? { loop: s.loop } : {}),
          proxyCpuPct: o(s.proxyCpu, 1), proxyCpuUsPerRequest: o(s.cpuPerReq, 2), backendCpuPct: o(s.backendCpu, 1), samples: s.samples,
          rpsAll: (r.samples[p] ?? []).map((x) => round(x.rps, 0)),
        }];
      })),
      evidence: r.evidence,
    }])),
    ratios: Object.fromEntries(Object.entries(rs).map(([k, row]) => [k, Object.fromEntries(
      Object.entries(row).map(([p, v]) => [p, { rps: o(v.rps, 3), p50: o(v.p50, 3), p99: o(v.p99, 3), p999: o(v.p999, 3), cpuPerReq: o(v.cpuPerReq, 3) }]),
    )])),
    checks: checks.map((c) => ({ name: c.name, protocol: c.protocol, status: c.status, value: o(c.value, 3), limit: c.limit })),
  };
}
