// The mesh bench's results (bench/mesh.ts): the scenarios, their samples, the issue's targets as checks, the table and
// the JSON. Pure: no I/O, so that the checks (and what they do when a scenario is missing) are unit-tested.
import { median as medianOrUndefined } from './podsreport.js';
import { round } from './report.js';

const median = (xs: number[]): number => medianOrUndefined(xs) ?? NaN;
const roundAll = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, round(v as number, 2)])) as T;

export const MESH_SCENARIOS = ['direct', 'sockmesh', 'sidecars', 'plain', 'tunnel'] as const;
export type MeshScenario = (typeof MESH_SCENARIOS)[number];

export const MESH_LETTERS: Record<MeshScenario, string> = { direct: 'a', sockmesh: 'b', sidecars: 'c', plain: 'd', tunnel: 't' };
export const MESH_LABELS: Record<MeshScenario, string> = {
  direct: '(a) pod IP, no mesh',
  sockmesh: '(b) sockmesh, mTLS tunnel',
  sidecars: '(c) sidecar pair, mTLS',
  plain: '(d) sockmesh, mtls: off',
  tunnel: '(t) tunnel only*',
};

export const MESH_WORKLOADS = ['iperf3', 'pingpong', 'wrk'] as const;
export type MeshWorkload = (typeof MESH_WORKLOADS)[number];

/** The figures of one run, by name; medians over the rounds are reported. */
export const MESH_FIGURES = ['streamGbps', 'pingP50', 'pingP99', 'httpRps', 'httpP99'] as const;
export type MeshFigure = (typeof MESH_FIGURES)[number];

/** Where the CPU went during one run, in % of one CPU (cgroups' cpu.stat; machine and softirq from /proc/stat). */
export interface CpuSplit {
  /** the load client (iperf3, sockperf, wrk) */
  client: number;
  /** the mesh's processes on the client's node: the agent (b, d), the client sidecar (c), the tunnel's client end (t) */
  src: number;
  /** the same on the server's node */
  dst: number;
  /** the server pod (iperf3, sockperf and nginx servers) */
  server: number;
  /** softirq time of the whole machine (the veths' packet processing lands here, whoever it is charged to) */
  softirq: number;
  /** every CPU of the machine (other users of the machine included) */
  machine: number;
}
export const CPU_PARTS = ['client', 'src', 'dst', 'server', 'softirq', 'machine'] as const;

export interface MeshResult {
  name: MeshScenario;
  /** why the scenario was not run at all */
  skipped?: string;
  /** why a workload failed (it is not measured again) */
  errors: Partial<Record<MeshWorkload, string>>;
  samples: Partial<Record<MeshFigure, number[]>>;
  cpu: Partial<Record<MeshWorkload, CpuSplit[]>>;
  /** the mesh's processes (src + dst) in CPU-seconds per Gbit carried, one per iperf3 run (= cores per Gbit/s) */
  meshCpuPerGbps: number[];
  /** TLS handshakes the mesh made during the measured runs (pooled tunnel: the target is 0), when it counts them */
  handshakes?: number;
  /** resident memory of the mesh's processes per node at the end, MiB */
  rssMiB?: { src: number; dst: number };
  /** CPU per 64 B round trip during each sockperf run, µs of CPU per part (cgroup CPU over sockperf's observations) */
  pingCpuUs: PingCpu[];
  /**
   * Syscalls per 64 B round trip of the mesh's processes on each node (strace -c during a short sockperf run after the
   * measured rounds: information, not timed), by syscall; `errors` counts the calls that failed (EAGAIN...)
   */
  pingSyscalls?: { src: SyscallCount; dst: SyscallCount; roundTrips: number };
  evidence: Record<string, number | string>;
}

/** µs of CPU per round trip: the load client, the mesh's processes per node, the server pod, the machine's softirq */
export interface PingCpu { client: number; src: number; dst: number; server: number; softirq: number }
export const PING_CPU_PARTS = ['client', 'src', 'dst', 'server', 'softirq'] as const;

/** per round trip: each syscall's calls and the total, and how many of them failed */
export interface SyscallCount { total: number; errors: number; calls: Record<string, number> }

export function newMeshResult(name: MeshScenario): MeshResult {
  return { name, errors: {}, samples: {}, cpu: {}, meshCpuPerGbps: [], pingCpuUs: [], evidence: {} };
}

export function addMeshSample(r: MeshResult, f: MeshFigure, v: number): void {
  (r.samples[f] ??= []).push(v);
}

/** The workload each figure comes from: a failed workload's figures go with it. */
const WORKLOAD_OF: Record<MeshFigure, MeshWorkload> = { streamGbps: 'iperf3', pingP50: 'pingpong', pingP99: 'pingpong', httpRps: 'wrk', httpP99: 'wrk' };

/** The median of a figure over the rounds; undefined when skipped, failed or not measured. */
export function figure(r: MeshResult | undefined, f: MeshFigure): number | undefined {
  if (!r || r.skipped || r.errors[WORKLOAD_OF[f]]) return undefined;
  const xs = r.samples[f];
  return xs && xs.length ? median(xs) : undefined;
}

/** The mesh's CPU per Gbit/s (median over the iperf3 runs); undefined when iperf3 failed or did not run. */
export function cpuPerGbps(r: MeshResult): number | undefined {
  return r.skipped || r.errors.iperf3 || !r.meshCpuPerGbps.length ? undefined : median(r.meshCpuPerGbps);
}

/** The median of each part over a workload's runs. */
export function medianCpu(r: MeshResult | undefined, w: MeshWorkload): CpuSplit | undefined {
  const runs = r?.cpu[w];
  if (!runs?.length) return undefined;
  return Object.fromEntries(CPU_PARTS.map((p) => [p, median(runs.map((c) => c[p]))])) as unknown as CpuSplit;
}

export interface MeshCheck {
  name: string;
  /** 'PASS' | 'FAIL' | 'SKIP' (not measured: why says why) */
  status: 'PASS' | 'FAIL' | 'SKIP';
  value?: number;
  limit: number;
  why?: string;
  /** the workload whose CPU split explains a miss */
  workload: MeshWorkload;
}

interface Target { name: string; f: MeshFigure; versus: MeshScenario; cmp: '>=' | '<='; limit: number; workload: MeshWorkload }

/** The issue's targets: (b) against (c) the sidecar pair and (d) the mesh without encryption. */
const TARGETS: Target[] = [
  { name: 'iperf3 Gbit/s {s}/(c) >= 1.3x', f: 'streamGbps', versus: 'sidecars', cmp: '>=', limit: 1.3, workload: 'iperf3' },
  { name: 'iperf3 Gbit/s {s}/(d) >= 0.6x', f: 'streamGbps', versus: 'plain', cmp: '>=', limit: 0.6, workload: 'iperf3' },
  { name: 'ping-pong 64 B p50 {s}/(c) <= 0.7x', f: 'pingP50', versus: 'sidecars', cmp: '<=', limit: 0.7, workload: 'pingpong' },
  { name: 'wrk req/s {s}/(c) >= 1.5x', f: 'httpRps', versus: 'sidecars', cmp: '>=', limit: 1.5, workload: 'wrk' },
  { name: 'wrk p99 {s}/(c) <= 1.0x', f: 'httpP99', versus: 'sidecars', cmp: '<=', limit: 1.0, workload: 'wrk' },
];

const notMeasured = (r: MeshResult | undefined, f: MeshFigure, w: MeshWorkload): string | undefined => {
  if (!r) return 'not run (--only)';
  if (r.skipped) return `not available: ${r.skipped}`;
  if (r.errors[w]) return `failed: ${r.errors[w]}`;
  if (figure(r, f) === undefined) return 'no sample';
  return undefined;
};

/**
 * The targets for `subject` (b; or t, the tunnel alone, as information): each ratio against its limit, SKIP with the
 * reason when either side was not measured; then the steady state's handshakes (0 wanted).
 */
export function meshChecks(results: MeshResult[], subject: MeshScenario = 'sockmesh'): MeshCheck[] {
  const by = (n: MeshScenario) => results.find((r) => r.name === n);
  const s = by(subject);
  const tag = `(${MESH_LETTERS[subject]})`;
  const out: MeshCheck[] = [];
  for (const t of TARGETS) {
    const name = t.name.replace('{s}', tag);
    const o = by(t.versus);
    const why = notMeasured(s, t.f, t.workload) ?? notMeasured(o, t.f, t.workload);
    if (why) {
      const who = notMeasured(s, t.f, t.workload) ? tag : `(${MESH_LETTERS[t.versus]})`;
      out.push({ name, status: 'SKIP', limit: t.limit, why: `${who} ${why}`, workload: t.workload });
      continue;
    }
    const value = figure(s, t.f)! / figure(o, t.f)!;
    const ok = t.cmp === '>=' ? value >= t.limit : value <= t.limit;
    out.push({ name, status: ok ? 'PASS' : 'FAIL', value, limit: t.limit, workload: t.workload });
  }
  const hsName = `handshakes during the measured runs ${tag} = 0`;
  if (!s || s.skipped) out.push({ name: hsName, status: 'SKIP', limit: 0, why: `${tag} ${s ? `not available: ${s.skipped}` : 'not run'}`, workload: 'wrk' });
  else if (s.handshakes === undefined) out.push({ name: hsName, status: 'SKIP', limit: 0, why: `${tag}: the tunnel's handshake count could not be read`, workload: 'wrk' });
  else out.push({ name: hsName, status: s.handshakes === 0 ? 'PASS' : 'FAIL', value: s.handshakes, limit: 0, workload: 'wrk' });
  return out;
}

const fmt = (v: number | undefined, digits: number): string => (v === undefined ? '-' : v.toFixed(digits));

/** The table: one row per scenario, its medians; '-' where not measured. */
export function formatMeshTable(results: MeshResult[]): string {
  const head1 = `${''.padEnd(28)}${'iperf3'.padStart(8)}${'ping-pong 64 B'.padStart(18)}${'wrk HTTP/1.1'.padStart(20)}${'mesh CPU'.padStart(11)}${'mesh RSS MiB'.padStart(14)}`;
  const head2 = `${''.padEnd(28)}${'Gbit/s'.padStart(8)}${'p50 µs'.padStart(9)}${'p99 µs'.padStart(9)}${'req/s'.padStart(10)}${'p99 µs'.padStart(10)}${'per Gbit/s'.padStart(11)}${'src / dst'.padStart(14)}`;
  const rows = results.map((r) => {
    const label = MESH_LABELS[r.name].padEnd(28);
    if (r.skipped) return `${label}not available: ${r.skipped}`;
    const cpg = cpuPerGbps(r);
    const rss = r.rssMiB ? `${r.rssMiB.src.toFixed(0)} / ${r.rssMiB.dst.toFixed(0)}` : '-';
    return label + fmt(figure(r, 'streamGbps'), 2).padStart(8) + fmt(figure(r, 'pingP50'), 1).padStart(9) + fmt(figure(r, 'pingP99'), 1).padStart(9) +
      fmt(figure(r, 'httpRps'), 0).padStart(10) + fmt(figure(r, 'httpP99'), 0).padStart(10) + fmt(cpg, 3).padStart(11) + rss.padStart(14);
  });
  return [head1, head2, ...rows].join('\n');
}

/** Where the time went: each scenario's median CPU split of a workload, % of one CPU. */
export function formatCpuSplit(results: MeshResult[], w: MeshWorkload): string[] {
  const out: string[] = [];
  for (const r of results) {
    const c = medianCpu(r, w);
    if (!c) continue;
    out.push(`  ${MESH_LABELS[r.name].padEnd(28)} ${CPU_PARTS.map((p) => `${p} ${c[p].toFixed(0)}`).join(', ')}`);
  }
  return out;
}

/** The median of each part over the sockperf runs, µs of CPU per round trip. */
export function medianPingCpu(r: MeshResult | undefined): PingCpu | undefined {
  const runs = r?.pingCpuUs;
  if (!runs?.length || r?.errors.pingpong) return undefined;
  return Object.fromEntries(PING_CPU_PARTS.map((p) => [p, median(runs.map((c) => c[p]))])) as unknown as PingCpu;
}

/**
 * Where a 64 B round trip's time goes: per scenario, the median µs of CPU per round trip of each part (on two CPUs a
 * ping-pong's parts run one after the other, so their sum is most of the round trip), and the mesh's syscalls per round
 * trip where they were counted.
 */
export function formatPingCpu(results: MeshResult[]): string[] {
  const out: string[] = [];
  for (const r of results) {
    const c = medianPingCpu(r);
    if (!c) continue;
    const mesh = r.name === 'direct' ? '' : `, mesh ${(c.src + c.dst).toFixed(1)}`;
    out.push(`  ${MESH_LABELS[r.name].padEnd(28)} ${PING_CPU_PARTS.map((p) => `${p} ${c[p].toFixed(1)}`).join(', ')}${mesh}`);
    const sc = r.pingSyscalls;
    if (sc) {
      const one = (x: SyscallCount): string => `${x.total.toFixed(1)} (${Object.entries(x.calls).sort((a, b) => b[1] - a[1]).filter(([, n]) => n >= 0.05)
        .map(([k, n]) => `${k} ${n.toFixed(1)}`).join(', ')}${x.errors >= 0.05 ? `; ${x.errors.toFixed(1)} failed` : ''})`;
      out.push(`  ${''.padEnd(28)} syscalls per round trip: src ${one(sc.src)}; dst ${one(sc.dst)}`);
    }
  }
  return out;
}

/** The PASS/FAIL/SKIP lines; after the first missed target of a workload, where that workload's CPU went. */
export function checkLines(checks: MeshCheck[], results: MeshResult[], prefix = ''): string[] {
  const out: string[] = [];
  const told = new Set<MeshWorkload>();
  for (const c of checks) {
    const v = c.value === undefined ? '' : c.name.startsWith('handshakes') ? `: ${c.value}` : `: ${c.value.toFixed(2)}x`;
    out.push(`${prefix}${c.status} ${c.name}${v}${c.why ? ` (${c.why})` : ''}`);
    if (c.status === 'FAIL' && !c.name.startsWith('handshakes') && !told.has(c.workload)) {
      told.add(c.workload);
      out.push(`  where the time goes during ${c.workload} (median % of one CPU; src/dst: the mesh's processes on the client's/server's node):`);
      out.push(...formatCpuSplit(results, c.workload).map((l) => `  ${l}`));
      if (c.workload === 'pingpong') {
        out.push('  µs of CPU per 64 B round trip (median; src/dst: the mesh\'s processes on each node):');
        out.push(...formatPingCpu(results).map((l) => `  ${l}`));
      }
    }
  }
  return out;
}

/** The JSON of the results: medians, the runs, CPU splits, checks. */
export function meshJson(results: MeshResult[], checks: MeshCheck[], info: MeshCheck[]): Record<string, unknown> {
  const scenarios: Record<string, unknown> = {};
  for (const r of results) {
    if (r.skipped) {
      scenarios[r.name] = { label: MESH_LABELS[r.name], skipped: r.skipped };
      continue;
    }
    const med = Object.fromEntries(MESH_FIGURES.map((f) => [f, figure(r, f) === undefined ? null : round(figure(r, f)!, 3)]));
    scenarios[r.name] = {
      label: MESH_LABELS[r.name], ...med,
      meshCpuPerGbps: cpuPerGbps(r) === undefined ? null : round(cpuPerGbps(r)!, 4),
      ...(r.rssMiB ? { rssMiB: { src: round(r.rssMiB.src, 1), dst: round(r.rssMiB.dst, 1) } } : {}),
      ...(r.handshakes !== undefined ? { handshakes: r.handshakes } : {}),
      ...(medianPingCpu(r) ? { pingCpuUs: roundAll(medianPingCpu(r)!) } : {}),
      ...(r.pingSyscalls ? { pingSyscalls: r.pingSyscalls } : {}),
      cpu: Object.fromEntries(MESH_WORKLOADS.map((w) => [w, medianCpu(r, w) ?? null]).filter(([, v]) => v !== null)
        .map(([w, v]) => [w, Object.fromEntries(Object.entries(v as CpuSplit).map(([k, x]) => [k, round(x, 1)]))])),
      runs: r.samples,
      ...(Object.keys(r.errors).length ? { errors: r.errors } : {}),
      ...(Object.keys(r.evidence).length ? { evidence: r.evidence } : {}),
    };
  }
  const j = (c: MeshCheck) => ({ name: c.name, status: c.status, ratio: c.value === undefined ? null : round(c.value, 3), limit: c.limit, ...(c.why ? { why: c.why } : {}) });
  return { scenarios, checks: checks.map(j), info: info.map(j) };
}
