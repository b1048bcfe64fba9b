// What a person reads (a table and PASS/FAIL lines) and what a machine reads (one JSON line).
import type { Latency } from './sockperf.js';
import type { Stream } from './iperf3.js';

export const LATENCY_CASES = [
  { key: 'lat64Same', title: '64B same-CPU', bytes: 64, crossCpu: false },
  { key: 'lat16kSame', title: '16KiB same-CPU', bytes: 16384, crossCpu: false },
  { key: 'lat64Cross', title: '64B cross-CPU', bytes: 64, crossCpu: true },
  { key: 'lat16kCross', title: '16KiB cross-CPU', bytes: 16384, crossCpu: true },
] as const;
export type LatencyKey = (typeof LATENCY_CASES)[number]['key'];

/** Scenarios go by letters, (a), (b), ... in the order a bench lists them: one letter per name. */
export function scenarioLetters<N extends string>(names: readonly N[]): Record<N, string> {
  return Object.fromEntries(names.map((n, i) => [n, String.fromCharCode(97 + i)])) as Record<N, string>;
}

/** A scenario's label in tables and verdicts: its letter and its title, '(a) direct'. */
export function scenarioLabels<N extends string>(names: readonly N[], titles: Record<N, string>): Record<N, string> {
  const letters = scenarioLetters(names);
  return Object.fromEntries(names.map((n) => [n, `(${letters[n]}) ${titles[n]}`])) as Record<N, string>;
}

export const SCENARIO_NAMES = ['direct', 'sockmesh', 'iptables', 'minimal'] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];
export const SCENARIO_LABELS = scenarioLabels(SCENARIO_NAMES, { direct: 'direct', sockmesh: 'sockmesh', iptables: 'iptables DNAT', minimal: 'minimal sockmap' });

export interface ScenarioResult {
  name: ScenarioName;
  latency: Partial<Record<LatencyKey, Latency>>;
  stream?: Stream;
  /** not measured, and why (e.g. the agent is not built) */
  skipped?: string;
  /** measurement failed, and why */
  error?: string;
  /** facts that show the scenario did what it claims (DNAT hits, sockmap redirects) */
  evidence: Record<string, number>;
}

export interface Check {
  name: string;
  status: 'PASS' | 'FAIL' | 'SKIP';
  ratio?: number;
  limit: number;
  detail: string;
}

function ratio(x: number | undefined, base: number | undefined): number | undefined {
  return x !== undefined && base !== undefined && base > 0 ? x / base : undefined;
}

/** The targets from the issue. */
export function targetChecks(results: ScenarioResult[]): Check[] {
  const get = (n: ScenarioName) => results.find((r) => r.name === n);
  const a = get('direct'), b = get('sockmesh'), c = get('iptables');
  const check = (name: string, value: number | undefined, cmp: '<=' | '>=', limit: number, missing: string): Check => {
    if (value === undefined) return { name, status: 'SKIP', limit, detail: `not measured: ${missing}` };
    const ok = cmp === '<=' ? value <= limit : value >= limit;
    return { name, status: ok ? 'PASS' : 'FAIL', ratio: value, limit, detail: `${value.toFixed(3)}x ${cmp} ${limit}x` };
  };
  const why = (...rs: Array<ScenarioResult | undefined>) =>
    rs.map((r) => r?.skipped ?? r?.error).filter(Boolean).join('; ') || 'scenario not run';
  return [
    check('(b) p50 64B same-CPU <= 0.70x (a)', ratio(b?.latency.lat64Same?.p50, a?.latency.lat64Same?.p50), '<=', 0.7, why(a, b)),
    check('(b) p50 64B same-CPU <= 0.55x (c)', ratio(b?.latency.lat64Same?.p50, c?.latency.lat64Same?.p50), '<=', 0.55, why(b, c)),
    check('(b) stream throughput >= 1.5x (a)', ratio(b?.stream?.gbps, a?.stream?.gbps), '>=', 1.5, why(a, b)),
  ];
}

/** A figure shown for context, never a target: it neither passes nor fails a run. */
export interface Info {
  name: string;
  /** the JSON key (same `case.percentile` form as ratiosToDirect) */
  key: string;
  ratio?: number;
  detail: string;
}

/**
 * sockmesh (b) against the minimal sockmap program (d): both take the kernel's sockmap path, so the
 * ratio is what sockmesh's own program costs on top of it (1.00x = nothing), and (d) vs (a) shows
 * what the kernel path itself can do on this machine.
 */
export function referenceInfo(results: ScenarioResult[]): Info[] {
  const b = results.find((r) => r.name === 'sockmesh'), d = results.find((r) => r.name === 'minimal');
  const why = [b, d].map((r) => r?.skipped ?? r?.error).filter(Boolean).join('; ') || 'scenario not run';
  const info = (name: string, key: string, v: number | undefined, note: string): Info =>
    v === undefined
      ? { name, key, detail: `${name}: not measured: ${why}` }
      : { name, key, ratio: v, detail: `${name} = ${v.toFixed(2)}x${note}` };
  return [
    info('(b)/(d) p50 64B same-CPU', 'lat64Same.p50', ratio(b?.latency.lat64Same?.p50, d?.latency.lat64Same?.p50),
      ' (sockmesh program overhead over the kernel path)'),
    info('(b)/(d) stream', 'streamGbps', ratio(b?.stream?.gbps, d?.stream?.gbps), ''),
  ];
}

const fmt = (v: number | undefined, digits = 2) => (v === undefined ? '-' : v.toFixed(digits));
const fmtRatio = (v: number | undefined) => (v === undefined ? '-' : `${v.toFixed(2)}x`);

/** One row per scenario with absolute values, and under it a row of ratios to (a). */
export function formatTable(results: ScenarioResult[]): string {
  const label = 20, cell = 8;
  const pad = (s: string, w: number) => s.padEnd(w);
  const lines: string[] = [];
  lines.push(
    pad('', label) + LATENCY_CASES.map((c) => pad(c.title, cell * 2)).join('') + 'stream',
  );
  lines.push(pad('', label) + LATENCY_CASES.map(() => pad('p50', cell) + pad('p99', cell)).join('') + 'Gbit/s');
  const base = results.find((r) => r.name === 'direct');
  for (const r of results) {
    const title = SCENARIO_LABELS[r.name];
    if (r.skipped || r.error) {
      lines.push(pad(title, label) + (r.skipped ? `skipped: ${r.skipped}` : `FAILED: ${r.error}`));
      continue;
    }
    lines.push(
      pad(title, label) +
        LATENCY_CASES.map((c) => pad(fmt(r.latency[c.key]?.p50), cell) + pad(fmt(r.latency[c.key]?.p99), cell)).join('') +
        fmt(r.stream?.gbps, 1),
    );
    if (r !== base && base && !base.error && !base.skipped) {
      lines.push(
        pad('    vs (a)', label) +
          LATENCY_CASES.map(
            (c) =>
              pad(fmtRatio(ratio(r.latency[c.key]?.p50, base.latency[c.key]?.p50)), cell) +
              pad(fmtRatio(ratio(r.latency[c.key]?.p99, base.latency[c.key]?.p99)), cell),
          ).join('') +
          fmtRatio(ratio(r.stream?.gbps, base.stream?.gbps)),
      );
    }
  }
  return lines.join('\n');
}

/**
 * Each result's figures over the base result's (those both have), rounded, by the key `keyOf` gives the result; the
 * base itself has no row. `figures` lists a result's figures by name.
 */
export function ratioRows<R>(
  results: R[], base: R | undefined, keyOf: (r: R) => string, figures: (r: R) => Record<string, number | undefined>,
): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  if (!base) return out;
  const b = figures(base);
  for (const r of results) {
    if (r === base) continue;
    const row: Record<string, number> = {};
    for (const [k, v] of Object.entries(figures(r))) {
      const q = ratio(v, b[k]);
      if (q !== undefined) row[k] = round(q, 3);
    }
    out[keyOf(r)] = row;
  }
  return out;
}

/** Ratios of every measured figure to (a), for the JSON line. */
export function ratiosToDirect(results: ScenarioResult[]): Record<string, Record<string, number>> {
  return ratioRows(results, results.find((r) => r.name === 'direct'), (r) => r.name, (r) => ({
    ...Object.fromEntries(LATENCY_CASES.flatMap((c) => (['p50', 'p99'] as const).map((p) => [`${c.key}.${p}`, r.latency[c.key]?.[p]]))),
    streamGbps: r.stream?.gbps,
  }));
}

export function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}
