// The xDS bench's reading of the agent's log lines, its statistics, and its report: a table a person reads at a
// glance (PASS/FAIL per target) and the figures for a machine.
import { round } from './report.js';

/** The agent's 'config applied' log line (pino JSON): written after the reconciler has written the kernel maps. */
export interface ConfigApplied {
  why: string;
  version: number;
  services: number;
  /** services the source named as changed (absent on a full apply) */
  changed?: number;
  backendsWritten: number;
  backendsDeleted: number;
  frontendsWritten: number;
  frontendsDeleted: number;
  /** the reconciler's own time, ms */
  ms: number;
  /** pino's timestamp, epoch ms */
  time: number;
}

/** The line as a ConfigApplied, or undefined when it is some other line (or not JSON at all). */
export function parseConfigApplied(line: string): ConfigApplied | undefined {
  if (!line.includes('config applied')) return undefined;
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (o.msg !== 'config applied') return undefined;
  const num = (k: string) => (typeof o[k] === 'number' ? (o[k] as number) : 0);
  return {
    why: typeof o.why === 'string' ? o.why : '',
    version: num('version'),
    services: num('services'),
    ...(typeof o.changed === 'number' ? { changed: o.changed } : {}),
    backendsWritten: num('backendsWritten'),
    backendsDeleted: num('backendsDeleted'),
    frontendsWritten: num('frontendsWritten'),
    frontendsDeleted: num('frontendsDeleted'),
    ms: num('ms'),
    time: num('time'),
  };
}

/** VmRSS (or another Vm* field) of /proc/<pid>/status text, in bytes. */
export function vmField(status: string, field = 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(status);
  if (!m) throw new Error(`no ${field} in /proc/<pid>/status`);
  return Number(m[1]) * 1024;
}

/** Nearest-rank percentile (p in 0..100) of unsorted samples. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) throw new Error('percentile of no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** The figures of a series of changes: their latencies and the agent's reconcile time of each (ms). */
export function changeStats(latencies: readonly number[], reconcile: readonly number[]): { p50Ms: number; p99Ms: number; maxMs: number; meanMs: number; reconcileP99Ms: number } | undefined {
  if (latencies.length === 0) return undefined;
  return {
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    maxMs: Math.max(...latencies),
    meanMs: latencies.reduce((a, b) => a + b, 0) / latencies.length,
    reconcileP99Ms: percentile(reconcile, 99),
  };
}

export interface XdsResults {
  services: number;
  endpoints: number;
  /** t0 = setModel(full model), t1 = the kernel maps hold every frontend and backend */
  fullSyncSeconds?: number;
  /** the same, counted from setModel, i.e. with the control plane's build of the full state */
  fullSyncWithBuildSeconds?: number;
  /** of which: building and encoding the snapshot in the control plane (synchronous in setModel) */
  fullSyncBuildMs?: number;
  changes: {
    planned: number;
    completed: number;
    budgetSeconds: number;
    p50Ms?: number;
    p99Ms?: number;
    maxMs?: number;
    meanMs?: number;
    /** the agent's own reconcile time per change, p99 */
    reconcileP99Ms?: number;
    /** the control plane's synchronous part (setModel: diff, encode, hand to the streams) per change, p99 */
    serverP99Ms?: number;
    /** did the last change read back from the kernel maps as written? */
    verified?: boolean;
    verifiedDetail?: string;
  };
  rssAfterSyncMiB?: number;
  rssAfterChangesMiB?: number;
  peakRssMiB?: number;
  /** why the run could not measure something (reported, then the run exits 1) */
  error?: string;
}

export interface XdsCheck {
  name: string;
  status: 'PASS' | 'FAIL' | 'SKIP';
  value?: number;
  unit: string;
  limit: number;
  detail: string;
}

export const TARGETS = { fullSyncSeconds: 2, changeP99Ms: 20, rssMiB: 200 } as const;

export function xdsChecks(r: XdsResults): XdsCheck[] {
  const le = (name: string, value: number | undefined, limit: number, unit: string, why: string, extra = ''): XdsCheck =>
    value === undefined
      ? { name, status: 'SKIP', unit, limit, detail: `not measured${why ? `: ${why}` : ''}` }
      : { name, status: value <= limit ? 'PASS' : 'FAIL', value, unit, limit, detail: `${fmt(value)} ${unit} <= ${limit} ${unit}${extra}` };
  const why = r.error?.split('\n')[0] ?? '';
  const c = r.changes;
  const changeCheck = le('one change p99', c.p99Ms, TARGETS.changeP99Ms, 'ms', why,
    c.completed < c.planned ? ` (only ${c.completed} of ${c.planned} changes in ${c.budgetSeconds} s)` : '');
  // Fewer changes than the target names, or a change that did not read back from the kernel, is not a pass.
  if (changeCheck.status === 'PASS' && c.completed < c.planned) changeCheck.status = 'FAIL';
  if (changeCheck.status === 'PASS' && c.verified === false) {
    changeCheck.status = 'FAIL';
    changeCheck.detail += ` (kernel map check failed: ${c.verifiedDetail})`;
  }
  return [
    le('full sync', r.fullSyncSeconds, TARGETS.fullSyncSeconds, 's', why),
    changeCheck,
    le('agent RSS after full sync', r.rssAfterSyncMiB, TARGETS.rssMiB, 'MiB', why),
    le('agent RSS after the changes', r.rssAfterChangesMiB, TARGETS.rssMiB, 'MiB', why),
  ];
}

function fmt(v: number | undefined): string {
  if (v === undefined) return '-';
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** The table a person reads. */
export function formatXdsTable(r: XdsResults, checks: XdsCheck[]): string {
  const c = r.changes;
  const rows: Array<[string, string, string]> = [
    ['full sync (server sends -> kernel maps)', `${fmt(r.fullSyncSeconds)} s`,
      `${fmt(r.fullSyncWithBuildSeconds)} s counting the control plane's ${fmt(r.fullSyncBuildMs)} ms build`],
    [`one change (${c.completed}/${c.planned})`, `p50 ${fmt(c.p50Ms)}  p99 ${fmt(c.p99Ms)}  max ${fmt(c.maxMs)} ms`,
      `mean ${fmt(c.meanMs)} ms; parts (p99): control plane setModel ${fmt(c.serverP99Ms)} ms, agent reconcile ${fmt(c.reconcileP99Ms)} ms`],
    ['agent RSS after full sync', `${fmt(r.rssAfterSyncMiB)} MiB`, ''],
    ['agent RSS after the changes', `${fmt(r.rssAfterChangesMiB)} MiB`, `peak over the run ${fmt(r.peakRssMiB)} MiB`],
  ];
  const w0 = Math.max(...rows.map((x) => x[0].length)), w1 = Math.max(...rows.map((x) => x[1].length));
  const out = rows.map(([a, b, d]) => `${a.padEnd(w0)}  ${b.padEnd(w1)}  ${d}`.trimEnd());
  out.push('');
  if (c.verifiedDetail) out.push(`kernel check of the last change: ${c.verified ? 'ok' : 'FAILED'}: ${c.verifiedDetail}`);
  for (const k of checks) out.push(`${k.status} ${k.name}: ${k.detail}`);
  return out.join('\n');
}

/** The JSON object of the last line. */
export function xdsSummary(r: XdsResults, checks: XdsCheck[], extra: Record<string, unknown>): Record<string, unknown> {
  const o = (v: number | undefined, d: number) => (v === undefined ? null : round(v, d));
  return {
    bench: 'xds',
    ...extra,
    services: r.services,
    endpoints: r.endpoints,
    fullSyncSeconds: o(r.fullSyncSeconds, 3),
    fullSyncWithBuildSeconds: o(r.fullSyncWithBuildSeconds, 3),
    fullSyncBuildMs: o(r.fullSyncBuildMs, 1),
    changes: {
      planned: r.changes.planned, completed: r.changes.completed, budgetSeconds: r.changes.budgetSeconds,
      p50Ms: o(r.changes.p50Ms, 3), p99Ms: o(r.changes.p99Ms, 3), maxMs: o(r.changes.maxMs, 3), meanMs: o(r.changes.meanMs, 3),
      reconcileP99Ms: o(r.changes.reconcileP99Ms, 3), serverP99Ms: o(r.changes.serverP99Ms, 3), verified: r.changes.verified ?? null,
    },
    rssAfterSyncMiB: o(r.rssAfterSyncMiB, 1),
    rssAfterChangesMiB: o(r.rssAfterChangesMiB, 1),
    peakRssMiB: o(r.peakRssMiB, 1),
    ...(r.error ? { error: r.error.split('\n')[0] } : {}),
    checks: checks.map((c) => ({ name: c.name, status: c.status, value: o(c.value, 3), unit: c.unit, limit: c.limit })),
    ok: !r.error && checks.every((c) => c.status === 'PASS'),
  };
}
