// `npm run soak -- --minutes N` (default 30): the agent under churn on the node lab, judged request by request.
//
// Setup: a private cgroup (the meshed one), a node lab in it (a client pod `cli` and backend pods b1..b4, each running
// bench/lib/soakserver.ts), and a host cgroup of the mesh for host-side clients. Traffic (bench/lib/soakclient.ts,
// from the pod and from the host, to 127.77/16 VIPs, which a missing program would send to loopback and nowhere else):
// L4 TCP and UDP, and L7 HTTP/1.1 and HTTP/2 to an HTTP/1.1 and an h2c upstream, plus one HTTP/1.1 loop per churned VIP.
// Changes every 100 ms through the agent's config source: services added and removed, backends added, removed,
// drained and re-weighted; every few seconds a backend pod turns `unready` (its health probe fails) or answers 5xx
// (outlier ejection) for 1-3 s. Two phases, half the time each: the file source, then xDS from a
// sockmesh-controlplane process that is SIGKILLed and restarted (an xDS reconnect) every 20 s (10 s under 5 minutes).
// b1 is never drained, removed or made sick in the four stable services, so those always have a good backend:
// every failure there counts. bench/lib/soakmodel.ts says exactly how a failure is judged.
//
// Pass: 0 counted failures (every excluded one is reported by reason); the agent's memory flat (the slope of a
// least-squares line through its RSS and V8 heap after a forced full collection every 10 s, bench/lib/soakgc.ts) and
// its open fds flat (over the phase after its warm-up, against the bounds below); each xDS reconnection within 2 s of
// the control plane listening again; the kernel maps back at the end to
// what the same config held at the start (services, backends, table slots, no affinity entries); bpftool's programs,
// links and maps the same during the run as after the start, and after cleanup as before. A summary table, PASS/FAIL
// per criterion, and the result as one JSON line last. Exit 0 = pass, 2 = a criterion failed, 1 = could not run.
// Bounded: a hard timeout of the run's length (warm-ups included) plus 5 minutes cleans up and exits; every process, cgroup, namespace and
// pin it made is removed on every way out (lab down, agent cleanup, the cgroup tree killed and removed).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as tcpConnect, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { AGENT_NODE_FLAGS } from '../agent/runtime.js';
import { MapReader } from '../agent/datapath/inspect.js';
import { decodeBackend, decodeService, decodeServiceKey, SVC_F_L7 } from '../agent/datapath/abi.js';
import { native } from '../agent/datapath/native.js';
import { Lab } from '../lab/lab.js';
import { emitResult } from './chart.js';
import { benchWorkspace, createChildCgroup } from './lib/cgroup.js';
import { prng } from './lib/fleet.js';
import { Background, installSignalCleanup, log, onCleanup, requireRootAndTools, run, runCleanups } from './lib/proc.js';
import type { ClientReport, ClientSpec, ClientTarget } from './lib/soakclient.js';
import { ConnectLog } from './lib/soakconnects.js';
import {
  frontendKey, kernelEntry, KernelTrace, secondAfter, slope, soakConfig, SOAK_HEALTH, SOAK_OUTLIER, Timeline, type ExcludeReason, type FrontendSnap,
  type SoakService,
} from './lib/soakmodel.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DIST = join(ROOT, 'dist');
const AGENT_JS = join(DIST, 'agent', 'main.js');
const CP_JS = join(DIST, 'controlplane', 'main.js');
const SERVER_JS = join(DIST, 'bench', 'lib', 'soakserver.js');
const GC_JS = join(DIST, 'bench', 'lib', 'soakgc.js');
const CLIENT_JS = join(DIST, 'bench', 'lib', 'soakclient.js');

const BACKENDS = ['b1', 'b2', 'b3', 'b4'];
/** never drained, removed or made sick in the stable services */
const ANCHOR = 'b1';
const CHURN_SLOTS = 12;
const TICK_MS = 100;
/**
 * The agent sees a recovered probe after healthyThreshold passes, each up to an interval apart, and one interval more;
 * plus a second of slack for a busy event loop (its probes are timers).
 */
const UNREADY_RECOVERY_MS = (SOAK_HEALTH.healthyThreshold + 1) * SOAK_HEALTH.intervalMs + SOAK_HEALTH.timeoutMs + 1000;
/** a backend that stopped answering 5xx may stay ejected for the longest ejection (plus the same slack) */
const ERRORS_RECOVERY_MS = SOAK_OUTLIER.maxEjectionMs + 1000;
/**
 * Flatness. RSS is judged at rest (after full collections, the traffic over) against the first such point under load:
 * at most 16 MiB more (V8's young generation keeps its pages: two semi-spaces of 8 MiB with the agent's flags) plus
 * 1 MiB a minute (60 MiB an hour); one 1 KiB object kept per request at the soak's ~1000 requests a second would be
 * 60 MiB a minute. fds: a slope of at least 0.5 a minute; the count moves with the connections in flight and the
 * proxy's pools (about 30 here), read by a fit over T minutes as up to 30/T a minute; one fd kept per churned service
 * or per request would be hundreds a minute.
 */
const RSS_SAWTOOTH_MIB = 16;
const FD_SWING = 30;
/**
 * The V8 heap after two full collections holds only what is kept: its noise is the proxy's pools and the config in
 * force (a few MiB), read by a fit over T minutes as up to 8/T a minute; the bound is the larger of that and 0.5 MiB a
 * minute (30 MiB an hour).
 */
const heapBound = (fitMin: number): number => Math.max(0.5, 8 / fitMin);
/** a forced full collection in the agent this often during the measured part (one pause of tens of ms each) */
const GC_EVERY_MS = 10_000;
/** the agent's part of an xDS reconnection: from the control plane listening again to the agent connected */
const RECONNECT_BOUND_MS = 2000;
const fdBound = (fitMin: number): number => Math.max(0.5, FD_SWING / fitMin);
const SAMPLE_MS = 250;
/** the kernel's frontends are read this often (xDS: when a write is in force is read there) */
const KERNEL_SAMPLE_MS = 25;
const REST_MS = 15_000;
const ENVELOPE_MS = 5000;

type Phase = 'file' | 'xds';

export interface SoakOpts { minutes: number; seed: number; phases: Phase[]; pauseMs: number; warmupSeconds: number }

interface Check { name: string; pass: boolean; value: string; limit: string }

interface PhaseResult {
  phase: Phase;
  seconds: number;
  requests: number;
  ok: number;
  failed: number;
  counted: number;
  excluded: Partial<Record<ExcludeReason, number>>;
  /**
   * Failures, judged or excluded, whose client read bytes that are not its protocol (node:http's parse errors; an
   * HTTP/1.1 client handed HTTP/2 frames was seen once): never a churn effect, reported with their first errors.
   */
  garbled: { count: number; samples: string[] };
  countedByError: Record<string, number>;
  countedSamples: {
    key: string; kind: string; t0: number; ms: number; err: string; backend: string; history: string[]; refusals: string[]; applies: string[];
    /** the agent's warnings from 2.5 s before the request to 1 s after its end */
    warnings: string[];
    /** what the kernel held for the frontend when the request started */
    kernel: string;
    /** the kernel samples of its frontend around it: the changes within a second, the nearest samples */
    kernelAround: string[];
    /** the kernel's balancing decisions for its VIP around it (the agent's monitor): was that connect translated? */
    decisions: string[];
  }[];
  /** xDS: listings the log-line estimate called in force before the kernel held them (see inForce) */
  estimateEarly?: { listings: number; count: number; maxMs: number };
  perTarget: Record<string, { ok: number; failed: number }>;
  configWrites: number;
  configApplied: number;
  /** from a write to when it was certainly in force (ms; Infinity: never) */
  applyLagMs: { p50: number; p99: number; max: number };
  modeEvents: number;
  cpRestarts: number;
  reconnectMs: number[];
  /** from the control plane listening again to the agent's reconnection (ms) */
  redialMs: number[];
  /** 'retry refused' lines of the agent (at most one a second per group; `refused` counts the rest) by limit */
  retriesRefused: Record<string, number>;
  /** the agent's warnings by message over the phase */
  warningsByMsg: Record<string, number>;
  /** the envelope of raw RSS (reported, not judged: it reads garbage between full collections as growth) */
  rssMiB: { start: number; end: number; slopePerMin: number };
  /** after a forced full collection every 10 s: RSS and V8's heap used (MiB), and the fitted slopes (MiB/min) */
  gc: { points: number; rssStart: number; rssEnd: number; rssSlopePerMin: number; heapStart: number; heapEnd: number; heapSlopePerMin: number; trace: string[] };
  /** RSS and fds at rest: before the traffic started, and 15 s after it ended */
  rest: { start: { rssMiB: number; fds: number } | null; end: { rssMiB: number; fds: number } | null };
  /** the RSS envelope after the warm-up, every 10 s (MiB) */
  rssTrace: number[];
  fds: { start: number; end: number; slopePerMin: number };
  maps: { start: MapCounts; end: MapCounts };
  bpf: { before: BpfCounts; started: BpfCounts; end: BpfCounts; after: BpfCounts };
  agentErrors: string[];
  checks: Check[];
}

interface MapCounts {
  services: number; backends: number; tableSlots: number; liveTableSlots: number; affinity: number; activeBackends: number; sockets: number;
  /** slots of tables no frontend uses (table id -> slots): retired tables that were never reaped */
  strayTables: Record<string, number>;
}
interface BpfIds { progs: number[]; links: number[]; maps: number[] }
/** bpftool's counts, machine-wide (other users' objects too) and the agent's own (`mine`) */
interface BpfCounts { progs: number; links: number; maps: number; cgroupProgs: number; mine: BpfIds }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => resolve(p)); });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** Write-then-rename: the agent (and the control plane) never read half a file. */
function putFile(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

type BpfObj = { id: number; pinned?: string[]; map_ids?: number[]; prog_id?: number };

/**
 * What bpftool shows: every program, link and map of the machine (other users' too), what is attached to our cgroup,
 * and the agent's own: the maps pinned under its bpffs directory, the programs using them (and every map those use,
 * .rodata and the like included), the links of those programs.
 */
async function bpfCounts(cgroup: string, bpffs?: string): Promise<BpfCounts & { all: BpfIds }> {
  const list = async (args: string[]): Promise<BpfObj[]> => {
    const r = await run('bpftool', ['-j', ...args], 20_000);
    if (r.code !== 0) throw new Error(`bpftool ${args.join(' ')}: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout.trim() || '[]') as BpfObj[];
  };
  const maps = await list(['-f', 'map', 'show']);
  const progs = await list(['prog', 'show']);
  const links = await list(['link', 'show']);
  const onCgroup = await list(['cgroup', 'show', cgroup]);
  const myMaps = new Set(bpffs ? maps.filter((m) => m.pinned?.some((p) => p.startsWith(`${bpffs}/`))).map((m) => m.id) : []);
  const myProgs = progs.filter((p) => p.map_ids?.some((id) => myMaps.has(id)));
  for (const p of myProgs) for (const id of p.map_ids ?? []) myMaps.add(id);
  const progIds = new Set(myProgs.map((p) => p.id));
  const myLinks = links.filter((l) => l.prog_id !== undefined && progIds.has(l.prog_id));
  const ids = (xs: BpfObj[]) => xs.map((x) => x.id).sort((a, b) => a - b);
  return {
    progs: progs.length, links: links.length, maps: maps.length, cgroupProgs: onCgroup.length,
    mine: { progs: [...progIds].sort((a, b) => a - b), links: ids(myLinks), maps: [...myMaps].sort((a, b) => a - b) },
    all: { progs: ids(progs), links: ids(links), maps: ids(maps) },
  };
}

function mapCounts(bpffs: string): MapCounts {
  const n = native();
  const dump = (name: string): Buffer[] => {
    const p = join(bpffs, name);
    if (!existsSync(p)) return [];
    const fd = n.objGet(p);
    try { return n.mapDump(fd).keys; } finally { n.close(fd); }
  };
  const raw = (name: string): number => dump(name).length;
  const r = MapReader.fromPins(bpffs, n);
  try {
    const fes = r.frontends();
    const tables = new Map(fes.map((f) => [f.tableId, f.tableSize]));
    const strayTables: Record<string, number> = {};
    for (const k of dump('sm_tables')) {
      const id = k.readUInt32LE(0); // struct sm_table_key: table id, then the slot
      if (!tables.has(id)) strayTables[id] = (strayTables[id] ?? 0) + 1;
    }
    return {
      strayTables,
      services: raw('sm_services'), backends: raw('sm_backends'), tableSlots: raw('sm_tables'),
      liveTableSlots: [...tables.values()].reduce((a, b) => a + b, 0), affinity: raw('sm_affinity'),
      activeBackends: fes.reduce((a, f) => a + f.backends.filter((b) => b.state === 'active').length, 0), sockets: raw('sm_sockets'),
    };
  } finally { r.close(); }
}

function procSample(pid: number): { rssMiB: number; fds: number } | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { rssMiB: Number(m?.[1] ?? 0) / 1024, fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch { return null; }
}

/**
 * The kernel's frontends now, from the agent's pins: frontend key (vip:port) -> kernelEntry of each backend it lists
 * (whatever its weight: a listing, not a health verdict). Two map dumps, no table walk: cheap enough every 25 ms.
 */
function kernelFrontends(fds: { services: number; backends: number }): Map<string, Set<string>> {
  const n = native();
  const bySvc = new Map<number, string[]>();
  const bd = n.mapDump(fds.backends);
  for (const v of bd.values) {
    const b = decodeBackend(v);
    let list = bySvc.get(b.service_id);
    if (!list) bySvc.set(b.service_id, (list = []));
    list.push(`${b.addr}:${b.port}`);
  }
  const out = new Map<string, Set<string>>();
  const sd = n.mapDump(fds.services);
  sd.keys.forEach((k, i) => {
    const key = decodeServiceKey(k);
    const v = decodeService(sd.values[i]!);
    const kind = v.flags & SVC_F_L7 ? 'l7' : 'l4';
    out.set(frontendKey(key.addr, key.port), new Set((bySvc.get(v.service_id) ?? []).map((e) => `${kind} ${e}`)));
  });
  return out;
}

/** The churn: the services in the config, the backend pods' modes, and the timeline of both. */
class World {
  readonly services = new Map<string, SoakService>();
  readonly timeline = new Timeline();
  /** (frontend key, service, kind, pod) -> when its listing (weight > 0) was written */
  private written = new Map<string, number>();
  /** pod -> from when it counts healthy again after a recovery */
  private modeFrom = new Map<string, number>();
  readonly modes = new Map<string, { unready: boolean; errors: boolean }>(BACKENDS.map((b) => [b, { unready: false, errors: false }]));
  writes = 0;
  readonly writeTimes: number[] = [];
  modeEvents = 0;

  constructor(private readonly rand: () => number) {
    this.reset();
  }

  /** The stable services, every backend at weight 1, no churned service: the config at the start and at the end. */
  reset(): void {
    this.services.clear();
    const all = () => new Map(BACKENDS.map((b) => [b, 1]));
    this.services.set('s-tcp', { name: 's-tcp', kind: 'l4tcp', vip: '127.77.0.1', port: 80, backends: all() });
    this.services.set('s-udp', { name: 's-udp', kind: 'l4udp', vip: '127.77.0.2', port: 53, backends: all() });
    this.services.set('s-web', { name: 's-web', kind: 'l7h1', vip: '127.77.0.3', port: 80, backends: all() });
    this.services.set('s-h2', { name: 's-h2', kind: 'l7h2', vip: '127.77.0.4', port: 80, backends: all() });
  }

  stable(name: string): boolean { return name.startsWith('s-'); }
  churnVip(slot: number): string { return `127.77.1.${slot + 1}`; }

  private pick<T>(xs: T[]): T { return xs[Math.floor(this.rand() * xs.length)]!; }
  private weight(): number { return 1 + Math.floor(this.rand() * 10); }

  /** One random config change (every tick). */
  mutate(): void {
    const r = this.rand();
    const names = [...this.services.keys()];
    if (r < 0.25) {
      const slot = Math.floor(this.rand() * CHURN_SLOTS);
      const name = `c${slot}`;
      if (this.services.has(name)) this.services.delete(name);
      else {
        const backends = new Map<string, number>();
        for (const b of BACKENDS) if (this.rand() < 0.6) backends.set(b, this.weight());
        if (backends.size === 0) backends.set(this.pick(BACKENDS), 1);
        this.services.set(name, { name, kind: this.pick(['l4tcp', 'l7h1', 'l7h2'] as const), vip: this.churnVip(slot), port: 80, backends });
      }
      return;
    }
    const s = this.services.get(this.pick(names))!;
    const movable = BACKENDS.filter((b) => !(this.stable(s.name) && b === ANCHOR));
    const b = this.pick(movable);
    if (r < 0.55) {
      // re-weight or drain (weight 0) a backend the service lists
      if (s.backends.has(b)) s.backends.set(b, this.rand() < 0.3 ? 0 : this.weight());
    } else if (r < 0.8) {
      // a backend leaves or comes back
      if (s.backends.has(b) && s.backends.size > 1) s.backends.delete(b);
      else if (!s.backends.has(b)) s.backends.set(b, this.weight());
    } else {
      for (const x of s.backends.keys()) if (!(this.stable(s.name) && x === ANCHOR)) s.backends.set(x, this.rand() < 0.15 ? 0 : this.weight());
    }
  }

  /** A backend pod's mode on or off (recorded; the caller tells the pod). */
  setMode(pod: string, mode: 'unready' | 'errors', on: boolean, now: number): void {
    const m = this.modes.get(pod)!;
    m[mode] = on;
    if (!on) this.modeFrom.set(pod, Math.max(this.modeFrom.get(pod) ?? 0, now + (mode === 'unready' ? UNREADY_RECOVERY_MS : ERRORS_RECOVERY_MS)));
    this.modeEvents++;
  }

  /** Whether a pod serves a service of this kind well now (UDP has no probe and no 5xx; the L4 port answers no 5xx). */
  private podGood(pod: string, kind: SoakService['kind']): boolean {
    const m = this.modes.get(pod)!;
    if (kind === 'l4udp') return true;
    if (kind === 'l4tcp') return !m.unready;
    return !m.unready && !m.errors;
  }

  /** Take a snapshot of what is in force now (after a config write or a mode change). */
  snapshot(now: number, wrote: boolean): void {
    const next = new Map<string, number>();
    const frontends = new Map<string, FrontendSnap>();
    for (const s of this.services.values()) {
      const key = frontendKey(s.vip, s.port);
      const good = new Map<string, number>();
      const since = new Map<string, { written: number; healthyFrom: number }>();
      for (const [pod, w] of s.backends) {
        if (w <= 0) continue;
        const id = `${key}|${s.name}|${s.kind}|${pod}`;
        // a listing the agent has already (same service, same kind, weight > 0) keeps its write; its in-force time is
        // put in once the run is over, from the agent's applies (Timeline.resolve)
        const written = this.written.get(id) ?? (wrote ? now : -Infinity);
        next.set(id, written);
        if (this.podGood(pod, s.kind)) {
          const healthyFrom = this.modeFrom.get(pod) ?? 0;
          since.set(pod, { written, healthyFrom });
          good.set(pod, Infinity);
        }
      }
      frontends.set(key, { service: s.name, kind: s.kind, good, listed: s.backends.size, since });
    }
    this.written = next;
    this.timeline.record(now, frontends);
  }
}

interface AgentRun {
  bg: Background;
  bpffs: string;
  runDir: string;
  applied: number[];
  /** the file source's applies with the sha256 of the text each put in force (its 'config applied' lines) */
  appliedTexts: { t: number; sha: string }[];
  /** 'xds: model applied' with nothing warming: every listener the agent received is in the model it applied */
  xdsComplete: number[];
  connected: number[];
  errors: string[];
  /** the agent's memory after each forced full collection (bench/lib/soakgc.ts) */
  gcPoints: { t: number; rssMiB: number; heapMiB: number }[];
  /** its 'retry refused' lines */
  refusals: { t: number; service: string; limit: string; failed: string; refused: number }[];
  /** its applies as it logged them ('xds: model applied', 'config applied'), one line each: shown with a counted failure */
  applies: { t: number; line: string }[];
  /**
   * Its warnings (level 40: 'proxy heartbeat late: the event loop was held' with the gap and the GC time in it, ...):
   * shown beside a counted failure (a stall of the agent explains a request with no answer, a refused connect of a
   * failMode closed service) and counted per phase.
   */
  warnings: { t: number; line: string }[];
}

async function startAgent(ws: { workDir: string; cgroup: string }, phase: Phase, source: string[], lab: Lab, maxMs: number): Promise<AgentRun> {
  const bpffs = `/sys/fs/bpf/${ws.workDir.split('/').pop()}-${phase}`;
  const runDir = join(ws.workDir, `run-${phase}`);
  const argv = [
    ...AGENT_NODE_FLAGS, '--expose-gc', '--import', pathToFileURL(GC_JS).href, AGENT_JS, ...source, '--cgroup', ws.cgroup, '--bpffs', bpffs, '--run-dir', runDir,
    '--proxy-port', String(await freePort()), '--metrics-listen', 'off', '--proxy-node-address', lab.nodeV4,
  ];
  const bg = new Background(`agent (${phase})`, process.execPath, argv, maxMs);
  const a: AgentRun = { bg, bpffs, runDir, applied: [], appliedTexts: [], xdsComplete: [], connected: [], errors: [], gcPoints: [], refusals: [], applies: [], warnings: [] };
  onCleanup(`agent ${bpffs}`, async () => {
    await bg.stop('SIGTERM');
    const r = await run(process.execPath, [AGENT_JS, 'cleanup', '--bpffs', bpffs, '--run-dir', runDir], 20_000);
    if (r.code !== 0) process.stderr.write(`agent cleanup ${bpffs}: ${r.stderr.trim()}\n`);
    // whatever the cleanup left: unpinned here (the links die with the cgroup, removed last)
    if (existsSync(bpffs)) rmSync(bpffs, { recursive: true, force: true });
  });
  bg.onLine((line) => {
    let l: {
      msg?: string; level?: number; time?: number; error?: string; warming?: number; rssKiB?: number; heapUsedKiB?: number;
      service?: string; limit?: string; failed?: string | number; refused?: number;
      type?: string; version?: string; names?: string[]; frontendsWritten?: number; frontendsDeleted?: number;
      services?: { service: string; out: string[] }[]; sha256?: string;
    };
    try { l = JSON.parse(line) as typeof l; } catch { return; }
    const t = typeof l.time === 'number' ? l.time : Date.now();
    if (l.msg === 'config applied' || l.msg === 'xds: model applied' || l.msg === 'backend states applied') {
      const fe = `frontends +${l.frontendsWritten ?? 0} -${l.frontendsDeleted ?? 0}`;
      const what = l.msg === 'config applied' ? `config applied (${fe}${l.names ? `: ${l.names.join(',')}` : ''})${l.sha256 ? ` sha256 ${l.sha256}` : ''}`
        : l.msg === 'backend states applied' ? `backend states applied (${fe}): ${(l.services ?? []).map((x) => `${x.service} out [${x.out.join(' ')}]`).join('; ')}`
        : `xds ${l.type ?? '?'} ${l.version ?? ''} applied: ${(l.names ?? []).join(',')} warming ${l.warming ?? '?'}`;
      a.applies.push({ t, line: what });
      if (a.applies.length > 200_000) a.applies.splice(0, 100_000); // a long soak: the recent ones are the ones shown
    }
    if (l.msg === 'config applied') { a.applied.push(t); if (l.sha256) a.appliedTexts.push({ t, sha: l.sha256 }); }
    else if (l.msg === 'xds: connected') a.connected.push(t);
    else if (l.msg === 'xds: model applied' && l.warming === 0) a.xdsComplete.push(t);
    else if (l.msg === 'soak: gc' && l.rssKiB !== undefined) a.gcPoints.push({ t, rssMiB: l.rssKiB / 1024, heapMiB: (l.heapUsedKiB ?? 0) / 1024 });
    else if (l.msg === 'retry refused') a.refusals.push({ t, service: l.service ?? '', limit: l.limit ?? '', failed: String(l.failed ?? ''), refused: l.refused ?? 1 });
    if (l.msg === 'soak: gc' && l.error && a.errors.length < 50) a.errors.push(`soak: gc: ${l.error}`);
    if (l.level === 40) {
      const { level: _l, time: _t, msg, pid: _p, hostname: _h, ...rest } = l as Record<string, unknown>;
      a.warnings.push({ t, line: `${String(msg ?? '')} ${JSON.stringify(rest)}` });
      if (a.warnings.length > 20_000) a.warnings.splice(0, 10_000);
    }
    if ((l.level ?? 0) >= 50 && a.errors.length < 50) a.errors.push(`${l.msg ?? ''}${l.error ? `: ${l.error}` : ''}`);
  });
  await bg.waitForLine((l) => l.includes('"datapath ready"'), 30_000);
  return a;
}

class ControlPlane {
  private bg: Background | null = null;
  restarts = 0;
  /** when it last started accepting connections (ms since the epoch): its own 'control plane listening' line */
  listeningAt = 0;
  private listenedAt = 0;
  /** when each directory read it logged was done (its start's load, then every 'snapshot updated'), ascending */
  readonly reads: number[] = [];
  constructor(private readonly dir: string, readonly port: number, private readonly maxMs: number) {}
  get address(): string { return `127.0.0.1:${this.port}`; }

  async start(): Promise<void> {
    this.bg = new Background('sockmesh-controlplane', process.execPath, [CP_JS, 'serve', '--dir', this.dir, '--listen', this.address], this.maxMs);
    this.bg.onLine((line) => {
      let l: { msg?: string; time?: number };
      try { l = JSON.parse(line) as typeof l; } catch { return; }
      if ((l.msg === 'snapshot updated' || l.msg === 'control plane listening') && typeof l.time === 'number') this.reads.push(l.time);
      if (l.msg === 'control plane listening' && typeof l.time === 'number') this.listenedAt = l.time;
    });
    this.listenedAt = 0;
    const deadline = Date.now() + 20_000;
    while (!(await canConnect(this.port))) {
      if (!this.bg.running) throw new Error(`sockmesh-controlplane exited:\n${this.bg.tail()}`);
      if (Date.now() > deadline) throw new Error(`sockmesh-controlplane not listening on ${this.address} after 20 s:\n${this.bg.tail()}`);
      await sleep(20);
    }
    // The poll above sees the port 0-20 ms late and an agent redialling meanwhile may already be connected: the
    // plane's own line (logged once bound) is the moment; the poll's time only if that line is late on the pipe.
    const seen = Date.now();
    while (this.listenedAt === 0 && Date.now() - seen < 500) await sleep(5);
    this.listeningAt = this.listenedAt || seen;
  }

  /** SIGKILL (a crash, no goodbye on the stream). */
  async kill(): Promise<void> {
    const bg = this.bg;
    this.bg = null;
    if (bg) { bg.child.kill('SIGKILL'); await bg.exited; }
  }

  async stop(): Promise<void> {
    const bg = this.bg;
    this.bg = null;
    if (bg) await bg.stop('SIGTERM');
  }
}

function startClient(name: string, argv: [string, string[]], maxMs: number, sink: (r: ClientReport) => void): Background {
  const bg = new Background(name, argv[0], argv[1], maxMs);
  bg.onLine((line) => {
    try { sink(JSON.parse(line) as ClientReport); } catch { /* not a report */ }
  });
  return bg;
}

async function stopClient(bg: Background): Promise<void> {
  bg.child.kill('SIGTERM');
  const t = setTimeout(() => bg.child.kill('SIGKILL'), 10_000);
  await bg.exited;
  clearTimeout(t);
}

function targets(world: World): ClientTarget[] {
  const t: ClientTarget[] = [
    { key: '127.77.0.1:80', host: '127.77.0.1', port: 80, kind: 'tcp' },
    { key: '127.77.0.2:53', host: '127.77.0.2', port: 53, kind: 'udp' },
    { key: '127.77.0.3:80', host: '127.77.0.3', port: 80, kind: 'h1' },
    { key: '127.77.0.3:80', host: '127.77.0.3', port: 80, kind: 'h2' },
    { key: '127.77.0.4:80', host: '127.77.0.4', port: 80, kind: 'h1' },
    { key: '127.77.0.4:80', host: '127.77.0.4', port: 80, kind: 'h2' },
  ];
  for (let s = 0; s < CHURN_SLOTS; s++) {
    const vip = world.churnVip(s);
    t.push({ key: frontendKey(vip, 80), host: vip, port: 80, kind: 'h1c' });
  }
  return t;
}

async function runPhase(
  phase: Phase, ms: number, o: SoakOpts, ws: { workDir: string; cgroup: string }, lab: Lab, hostCg: string,
  pods: Map<string, ChildProcess>, rand: () => number,
): Promise<PhaseResult> {
  log(`phase ${phase}: ${Math.round(ms / 1000)} s`);
  const world = new World(rand);
  const addr = (pod: string): string => lab.pod(pod).v4!;
  const cfgDir = join(ws.workDir, `config-${phase}`);
  mkdirSync(cfgDir, { recursive: true });
  const cfgFile = join(cfgDir, 'soak.yaml');
  putFile(cfgFile, soakConfig(world.services.values(), addr));
  const maxMs = o.warmupSeconds * 1000 + ms + 10 * 60_000;

  const before = await bpfCounts(ws.cgroup);
  let cp: ControlPlane | null = null;
  if (phase === 'xds') {
    cp = new ControlPlane(cfgDir, await freePort(), maxMs);
    const c = cp;
    onCleanup('control plane', () => c.stop());
    await cp.start();
  }
  const agent = await startAgent(ws, phase, cp ? ['--xds', cp.address] : ['--config', cfgFile], lab, maxMs);
  if (cp) {
    const deadline = Date.now() + 30_000;
    while (agent.applied.length === 0) {
      if (Date.now() > deadline) throw new Error(`agent (xds): no config applied in 30 s\n${agent.bg.tail()}`);
      await sleep(50);
    }
  }
  // the start's config settled (health probes ran, nothing retired left): the kernel's counts for this config
  await sleep(2500);
  const mapsStart = mapCounts(agent.bpffs);
  const started = await bpfCounts(ws.cgroup, agent.bpffs);
  const agentPid = agent.bg.child.pid!;
  const restStart = procSample(agentPid);

  // traffic
  const perTarget: Record<string, { ok: number; failed: number }> = {};
  const fails: ClientReport['fails'] = [];
  const sink = (r: ClientReport) => {
    for (const [k, n] of Object.entries(r.ok)) (perTarget[k] ??= { ok: 0, failed: 0 }).ok += n;
    for (const f of r.fails) { (perTarget[f.key] ??= { ok: 0, failed: 0 }).failed++; fails.push(f); }
  };
  // Every config text written, by its digest (what the agent logs with 'config applied'): when, and which churned
  // VIPs it has. Beside a counted failure, each apply then says which write it put in force and whether that had the VIP.
  // (a text can be written again: the churn toggles back, the end writes the start's config; each write is its own)
  const writes = new Map<string, { t: number; seq: number; vips: Set<string> }[]>();
  /** write time -> its seq */
  const seqByTime = new Map<number, number>();
  let seq = 0;
  const noteWrite = (text: string, at: number): void => {
    const sha = createHash('sha256').update(text).digest('hex').slice(0, 12);
    seq++;
    seqByTime.set(at, seq);
    const w = { t: at, seq, vips: new Set([...world.services.values()].map((x) => frontendKey(x.vip, x.port))) };
    const list = writes.get(sha);
    if (list) list.push(w); else writes.set(sha, [w]);
  };
  /** the write an apply at `t` of text `sha` put in force: the latest write of that text before it */
  const writeOf = (sha: string, t: number) => {
    let found: { t: number; seq: number; vips: Set<string> } | undefined;
    for (const w of writes.get(sha) ?? []) if (w.t <= t) found = w;
    return found;
  };
  const resolveApply = (line: string, at: number, key: string, t0: number): string => line.replace(/ sha256 ([0-9a-f]{12})$/, (_m, sha: string) => {
    const w = writeOf(sha, at);
    return w ? ` = write #${w.seq} of ${w.t - t0} ms, ${w.vips.has(key) ? 'with' : 'WITHOUT'} ${key}` : ` = no text the soak wrote (sha256 ${sha})`;
  });
  const t0 = Date.now();
  world.snapshot(t0 - 5000, false); // the start's config, in force since before the clients
  const spec = (name: string): string => JSON.stringify({ name, targets: targets(world), pauseMs: o.pauseMs, deadlineMs: o.warmupSeconds * 1000 + ms + 60_000 } satisfies ClientSpec);
  const clients = [
    startClient('host client', ['sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', hostCg, process.execPath, CLIENT_JS, spec('host')]], maxMs, sink),
    startClient('pod client', lab.pod('cli').argv(process.execPath, [CLIENT_JS, spec('pod')]), maxMs, sink),
  ];

  // the kernel's balancing decisions for the churned VIPs (shown beside a counted failure)
  const connects = new ConnectLog(new Set(Array.from({ length: CHURN_SLOTS }, (_, i) => frontendKey(world.churnVip(i), 80))));
  connects.start(join(agent.runDir, 'admin.sock'));

  // what the kernel holds, from the pins, throughout (the pins are opened once; closed when the phase ends)
  const kernel = new KernelTrace();
  const pinFds = { services: native().objGet(join(agent.bpffs, 'sm_services')), backends: native().objGet(join(agent.bpffs, 'sm_backends')) };
  const kernelSampler = setInterval(() => {
    try {
      kernel.record(Date.now(), kernelFrontends(pinFds));
    } catch (e) {
      if (agent.errors.length < 50) agent.errors.push(`soak: reading the kernel's frontends: ${(e as Error).message}`);
    }
  }, KERNEL_SAMPLE_MS);
  kernel.record(Date.now(), kernelFrontends(pinFds));

  const samples: { t: number; rssMiB: number; fds: number }[] = [];
  const sampler = setInterval(() => {
    const s = procSample(agentPid);
    if (s) samples.push({ t: Date.now(), ...s });
  }, SAMPLE_MS);

  const tell = (pod: string, line: string) => pods.get(pod)!.stdin!.write(`${line}\n`);
  const modeTimers = new Set<NodeJS.Timeout>();
  const reconnectMs: number[] = [];
  const redialMs: number[] = [];
  let nextGc = t0 + o.warmupSeconds * 1000;
  const killEvery = o.minutes < 5 ? 10_000 : 20_000;
  let nextKill = t0 + killEvery;
  let cpDownAt = 0;
  let cpBusy = false;
  // the warm-up (the same churn and traffic, judged the same) comes before the measured minutes
  const warm = t0 + o.warmupSeconds * 1000;
  const end = warm + ms;
  while (Date.now() < end) {
    if (!agent.bg.running) throw new Error(`agent (${phase}) exited during the soak:\n${agent.bg.tail(20)}`);
    const now = Date.now();
    world.mutate();
    // Stamped before the file is put in place: the agent may apply it before this process runs its next line (the
    // last soaks saw the stamp up to 2 s late, under load), and a request to a VIP the write removed was then judged
    // against the service it no longer had. A write is judged from this moment; it is in force from the agent's
    // apply of its text (inForce below).
    const writeAt = Date.now();
    const text = soakConfig(world.services.values(), addr);
    noteWrite(text, writeAt);
    putFile(cfgFile, text);
    world.writes++;
    world.writeTimes.push(writeAt);
    world.snapshot(writeAt, true);
    // every ~2 s a sick spell for a backend pod that is not already sick that way (never the anchor)
    if (rand() < TICK_MS / 2000) {
      const mode = rand() < 0.5 ? 'unready' as const : 'errors' as const;
      const free = BACKENDS.filter((b) => b !== ANCHOR && !world.modes.get(b)![mode]);
      if (free.length && BACKENDS.filter((b) => world.modes.get(b)![mode]).length === 0) {
        const pod = free[Math.floor(rand() * free.length)]!;
        world.setMode(pod, mode, true, Date.now());
        world.snapshot(Date.now(), false); // bad from before it is told: never judged good while sick
        tell(pod, `${mode} on`);
        const timer = setTimeout(() => {
          modeTimers.delete(timer);
          tell(pod, `${mode} off`);
          world.setMode(pod, mode, false, Date.now());
          world.snapshot(Date.now(), false);
        }, 1000 + rand() * 2000);
        modeTimers.add(timer);
      }
    }
    if (now >= nextGc) {
      // memory judged after full collections only: garbage is not a leak (bench/lib/soakgc.ts answers on stdout)
      process.kill(agentPid, 'SIGUSR2');
      nextGc = now + GC_EVERY_MS;
    }
    if (cp && !cpBusy && now >= nextKill) {
      // an xDS outage: SIGKILL, 1 s down, restarted; in force again once the agent says it reconnected
      cpBusy = true;
      const c = cp;
      void (async () => {
        // Counted before the kill: the agent may reconnect while start() still polls for the port, and a count taken
        // after it then waited for a second connection that never came (60 s in the CI run of 04a6f4e).
        const since = agent.connected.length;
        cpDownAt = Date.now();
        await c.kill();
        await sleep(1000);
        await c.start();
        c.restarts++;
        const deadline = Date.now() + 60_000;
        while (agent.connected.length === since && Date.now() < deadline) await sleep(20);
        const at = agent.connected[since] ?? Date.now();
        reconnectMs.push(at - cpDownAt);
        redialMs.push(at - c.listeningAt);
        nextKill = Date.now() + killEvery;
        cpBusy = false;
      })();
    }
    await sleep(Math.max(0, TICK_MS - (Date.now() - now)));
  }
  // the end: every sick spell over, the start's config again, the control plane up; traffic goes on while it settles
  while (cpBusy) await sleep(50);
  for (const t of modeTimers) clearTimeout(t);
  for (const [pod, m] of world.modes) {
    for (const mode of ['unready', 'errors'] as const) if (m[mode]) { tell(pod, `${mode} off`); world.setMode(pod, mode, false, Date.now()); }
  }
  world.reset();
  const resetAt = Date.now();
  const resetText = soakConfig(world.services.values(), addr);
  noteWrite(resetText, resetAt);
  putFile(cfgFile, resetText);
  world.writes++;
  world.snapshot(resetAt, true);
  await sleep(Math.max(ERRORS_RECOVERY_MS, UNREADY_RECOVERY_MS) + 2000);
  clearInterval(sampler);
  await Promise.all(clients.map(stopClient));
  clearInterval(kernelSampler);
  await connects.stop();
  log(`phase ${phase}: ${connects.count} balancing decisions of the churned VIPs recorded, ${connects.missed} events the agent could not hand over`);
  if (connects.error) agent.errors.push(`soak: the agent's monitor: ${connects.error}`);
  native().close(pinFds.services);
  native().close(pinFds.backends);
  const trafficEnd = Date.now();
  const seconds = (Date.now() - t0) / 1000;
  // the retired tables of the last changes are reaped a second after them; and at rest (no traffic, no change) V8's
  // memory reducer runs a full collection within about 10 s: the RSS then is what the agent keeps
  await sleep(REST_MS);
  const restEnd = procSample(agentPid);
  // the last memory point: at rest, after full collections
  const gcBefore = agent.gcPoints.length;
  process.kill(agentPid, 'SIGUSR2');
  for (let i = 0; i < 100 && agent.gcPoints.length === gcBefore; i++) await sleep(50);
  const mapsEnd = mapCounts(agent.bpffs);
  const endCounts = await bpfCounts(ws.cgroup, agent.bpffs);
  const agentErrors = [...agent.errors];
  const configApplied = agent.applied.length;

  await agent.bg.stop('SIGTERM');
  const cl = await run(process.execPath, [AGENT_JS, 'cleanup', '--bpffs', agent.bpffs, '--run-dir', agent.runDir], 20_000);
  if (cl.code !== 0) throw new Error(`agent cleanup: ${cl.stderr.trim()}`);
  await cp?.stop();
  // The kernel frees a map once its last reference is gone through deferred work after an RCU grace period (an outer
  // map's inner tables after the outer one): an id of the agent's can outlive its cleanup by a moment (a CI run saw 4
  // of its maps in the first listing after cleanup). Listed again for up to 10 s until none of its ids is left.
  const agentIds = { progs: [...started.mine.progs, ...endCounts.mine.progs], links: [...started.mine.links, ...endCounts.mine.links], maps: [...started.mine.maps, ...endCounts.mine.maps] };
  const lingering = (c: BpfCounts & { all: BpfIds }): boolean => (['progs', 'links', 'maps'] as const).some((k) => agentIds[k].some((id) => c.all[k].includes(id)));
  let after = await bpfCounts(ws.cgroup);
  for (const until = Date.now() + 10_000; lingering(after) && Date.now() < until;) {
    await sleep(200);
    after = await bpfCounts(ws.cgroup);
  }

  // From when each write is certainly in force. The file source reads serially (soakmodel.ts's secondAfter): the read
  // the agent logs second after a write holds it. Through xDS a write goes through the control plane's read, its push
  // of listeners, clusters and endpoints, the agent's subscriptions to what a new listener names, and one apply per
  // response; from log lines that was estimated as the agent's second complete apply after the push, which assumed
  // the agent at most one apply behind, and a busy agent is more (one push can be three applies): a VIP re-added was
  // judged in force while the kernel did not hold it yet, and its refused connects counted. So with xDS the kernel
  // must hold it too: a listing is in force from the first sample (every 25 ms), at or after that estimate, at which
  // the kernel holds it (its VIP, L4 or L7 as its kind, the backend's address and port). Not from the write itself:
  // a service removed and re-added may still be held from before its removal, which the agent has yet to apply.
  // How often the estimate alone was early is reported.
  const oldEstimate = (w: number): number => {
    const pushed = secondAfter(cp?.reads ?? [], w);
    return pushed === Infinity ? Infinity : secondAfter(agent.xdsComplete, pushed);
  };
  const early = { listings: 0, count: 0, maxMs: 0 };
  // The file source: in force from the first apply of this write's text or of a later write's (the agent logs each
  // text's digest). Exact, where 'the second apply after the write' assumed the write's stamp was not late.
  const appliedSeqs = agent.appliedTexts.map((x) => ({ t: x.t, seq: writeOf(x.sha, x.t)?.seq ?? -1 }));
  const fileInForce = (w: number): number => {
    const n = seqByTime.get(w);
    if (n === undefined || appliedSeqs.length === 0) return secondAfter(agent.applied, w);
    for (const a of appliedSeqs) if (a.t >= w && a.seq >= n) return a.t;
    return Infinity;
  };
  const inForce = (w: number, at?: { key: string; kind?: SoakService['kind']; pod: string }): number => {
    if (w === -Infinity) return -Infinity; // the start's config
    if (!cp) return fileInForce(w);
    if (!at) return secondAfter(agent.xdsComplete, secondAfter(cp.reads, w)); // a write as a whole (the lag line)
    const old = oldEstimate(w);
    if (old === Infinity) return Infinity;
    const held = kernel.firstHolding(at.key, kernelEntry(at.kind ?? 'l4tcp', addr(at.pod)), old);
    early.listings++;
    // later than the sample after the estimate: the kernel did not hold it then. Counted within 5 s: a listing removed
    // before it was applied is found held only when a later write lists it again, which says nothing of the estimate.
    if (held - old > 2 * KERNEL_SAMPLE_MS && held - old <= 5000) {
      early.count++;
      early.maxMs = Math.max(early.maxMs, held - old);
    }
    return held;
  };
  world.timeline.resolve(inForce);
  const lags = world.writeTimes.map((w) => inForce(w) - w).sort((a, b) => a - b);
  const applyLagMs = { p50: lags[Math.floor(lags.length / 2)] ?? 0, p99: lags[Math.floor(lags.length * 0.99)] ?? 0, max: lags[lags.length - 1] ?? 0 };
  // judgement
  const excluded: Partial<Record<ExcludeReason, number>> = {};
  const countedByError: Record<string, number> = {};
  const countedSamples: PhaseResult['countedSamples'] = [];
  let counted = 0;
  const garbled: PhaseResult['garbled'] = { count: 0, samples: [] };
  for (const f of fails) {
    if (/Parse Error|HPE_|Expected HTTP|PROTOCOL_ERROR|ERR_HTTP2_ERROR/.test(f.err)) {
      garbled.count++;
      // with what the VIP was before it (an L4/L7 or upstream-protocol switch is the suspect)
      if (garbled.samples.length < 5) {
        garbled.samples.push([`${new Date(f.t0).toISOString()} ${f.kind} ${f.key}: ${f.err}`,
          ...world.timeline.history(f.key, f.t0 - 5000, f.t1, f.t0).slice(-6).map((h) => `    ${h}`)].join('\n'));
      }
    }
    const v = world.timeline.judge(f.key, f.t0, f.t1);
    if (v.counts) {
      counted++;
      const e = f.err.replace(/\d+ ms/, 'N ms');
      countedByError[`${f.kind} ${e}`] = (countedByError[`${f.kind} ${e}`] ?? 0) + 1;
      if (countedSamples.length < 20) countedSamples.push({
        key: f.key, kind: f.kind, t0: f.t0, ms: f.t1 - f.t0, err: f.err, backend: v.backend, history: world.timeline.history(f.key, f.t0 - 5000, f.t1, f.t0),
        kernel: kernel.at(f.key, f.t0),
        kernelAround: kernel.around(f.key, f.t0, f.t0 - 1000, f.t1 + 1000),
        decisions: connects.around(f.key, f.t0, f.t0 - 50, f.t1 + 50),
        // the agent's retry refusals around it (logged at most once a second per group): which limit gave up
        refusals: agent.refusals.filter((r) => r.t >= f.t0 - 1000 && r.t <= f.t1 + 1000)
          .map((r) => `${r.t - f.t0} ms: ${r.service} ${r.limit} refused a retry of ${r.failed} (${r.refused} since the last line)`),
        warnings: agent.warnings.filter((x) => x.t >= f.t0 - 2500 && x.t <= f.t1 + 1000).map((x) => `${x.t - f.t0} ms: ${x.line}`),
        // what the agent applied around it, and (xDS) when the control plane read the config
        applies: [
          ...agent.applies.filter((x) => x.t >= f.t0 - 2500 && x.t <= f.t1 + 1000).map((x) => ({ t: x.t, line: resolveApply(x.line, x.t, f.key, f.t0) })),
          ...(cp ? cp.reads.filter((r) => r >= f.t0 - 2500 && r <= f.t1 + 1000).map((r) => ({ t: r, line: 'control plane read the config' })) : []),
        ].sort((x, y) => x.t - y.t).map((x) => `${x.t - f.t0} ms: ${x.line}`),
      });
    } else excluded[v.reason] = (excluded[v.reason] ?? 0) + 1;
  }
  const ok = Object.values(perTarget).reduce((a, x) => a + x.ok, 0);

  // flatness after the warm-up, on the lower envelope (the least of each 5 s): the young generation's sawtooth off,
  // what stays is what is kept
  const fit: typeof samples = [];
  for (const s of samples.filter((x) => x.t >= warm)) {
    const last = fit[fit.length - 1];
    if (last && Math.floor((s.t - warm) / ENVELOPE_MS) === Math.floor((last.t - warm) / ENVELOPE_MS)) {
      if (s.rssMiB < last.rssMiB) last.rssMiB = s.rssMiB;
      if (s.fds < last.fds) last.fds = s.fds;
    } else fit.push({ ...s });
  }
  const per = (f: (s: typeof samples[number]) => number) => slope(fit.map((s) => [(s.t - t0) / 60_000, f(s)] as const));
  const rss = { start: fit[0]?.rssMiB ?? 0, end: fit[fit.length - 1]?.rssMiB ?? 0, slopePerMin: per((s) => s.rssMiB) };
  const fds = { start: fit[0]?.fds ?? 0, end: fit[fit.length - 1]?.fds ?? 0, slopePerMin: per((s) => s.fds) };
  const rssTrace = fit.filter((_, i) => i % 2 === 0).map((s) => Math.round(s.rssMiB)); // every 10 s
  // the judged memory: after forced full collections during the measured part (the one at rest after it is reported)
  const gcFit = agent.gcPoints.filter((p) => p.t >= warm && p.t <= trafficEnd);
  const gcMin = gcFit.length > 1 ? (gcFit[gcFit.length - 1]!.t - gcFit[0]!.t) / 60_000 : 0;
  const gcSlope = (f: (p: typeof gcFit[number]) => number) => slope(gcFit.map((p) => [(p.t - t0) / 60_000, f(p)] as const));
  const atRest = agent.gcPoints.filter((p) => p.t > trafficEnd).pop();
  const gc: PhaseResult['gc'] = {
    points: gcFit.length, rssStart: gcFit[0]?.rssMiB ?? 0, rssEnd: gcFit[gcFit.length - 1]?.rssMiB ?? 0, rssSlopePerMin: gcSlope((p) => p.rssMiB),
    heapStart: gcFit[0]?.heapMiB ?? 0, heapEnd: gcFit[gcFit.length - 1]?.heapMiB ?? 0, heapSlopePerMin: gcSlope((p) => p.heapMiB),
    trace: [...gcFit, ...(atRest ? [atRest] : [])].map((p) => `${Math.round(p.rssMiB)}/${p.heapMiB.toFixed(1)}`),
  };
  const retriesRefused: Record<string, number> = {};
  for (const r of agent.refusals) retriesRefused[r.limit] = (retriesRefused[r.limit] ?? 0) + r.refused;
  const warningsByMsg: Record<string, number> = {};
  for (const w of agent.warnings) { const m = w.line.slice(0, w.line.indexOf(' {')); warningsByMsg[m] = (warningsByMsg[m] ?? 0) + 1; }

  const checks: Check[] = [];
  const check = (name: string, pass: boolean, value: string, limit: string) => checks.push({ name: `${phase}: ${name}`, pass, value, limit });
  check('counted failed requests', counted === 0, String(counted), '0');
  // traffic really flowed to every stable frontend, from both clients (a soak that sent nothing would pass the above)
  const minOk = Math.floor(seconds * 2);
  for (const key of ['127.77.0.1:80', '127.77.0.2:53', '127.77.0.3:80', '127.77.0.4:80']) {
    check(`requests served at ${key}`, (perTarget[key]?.ok ?? 0) >= minOk, String(perTarget[key]?.ok ?? 0), `>= ${minOk}`);
  }
  const fitMin = fit.length > 1 ? (fit[fit.length - 1]!.t - fit[0]!.t) / 60_000 : 0;
  // RSS judged at rest: after full collections, 15 s after the traffic, against the first such point of the measured
  // part (the slope through the points under load is reported: V8 keeps its young generation's pages, up to 16 MiB)
  const restGrowth = atRest && gcFit[0] ? atRest.rssMiB - gcFit[0].rssMiB : NaN;
  const restBound = RSS_SAWTOOTH_MIB + (ms / 60_000) * 1;
  check(`agent RSS at rest after full GCs, growth over the phase (MiB)`, restGrowth <= restBound,
    `${Number.isNaN(restGrowth) ? 'no point' : restGrowth.toFixed(1)} (${gc.rssStart.toFixed(1)} under load -> ${atRest?.rssMiB.toFixed(1) ?? '-'} at rest; slope ${gc.rssSlopePerMin.toFixed(2)}/min, reported)`,
    `<= ${restBound.toFixed(1)} (16 + 1 a minute)`);
  check(`agent V8 heap after full GCs, slope (MiB/min, ${gc.points} points over ${gcMin.toFixed(1)} min)`, gcMin > 0 && gc.heapSlopePerMin <= heapBound(gcMin),
    gc.heapSlopePerMin.toFixed(3), `<= ${heapBound(gcMin).toFixed(2)}`);
  check(`agent open fds slope (/min, fit over ${fitMin.toFixed(1)} min)`, fitMin > 0 && fds.slopePerMin <= fdBound(fitMin), fds.slopePerMin.toFixed(3), `<= ${fdBound(fitMin).toFixed(2)}`);
  const mapKeys: (keyof MapCounts)[] = ['services', 'backends', 'tableSlots', 'activeBackends', 'affinity'];
  check('kernel maps at the end = at the start (same config)', mapKeys.every((k) => mapsEnd[k] === mapsStart[k]),
    mapKeys.map((k) => `${k} ${mapsEnd[k]}`).join(', '), mapKeys.map((k) => `${k} ${mapsStart[k]}`).join(', '));
  check('table slots = the live tables\' (nothing retired left)', mapsEnd.tableSlots === mapsEnd.liveTableSlots, String(mapsEnd.tableSlots), String(mapsEnd.liveTableSlots));
  check('services 4, backends 16 active', mapsEnd.services === 4 && mapsEnd.backends === 16 && mapsEnd.activeBackends === 16,
    `${mapsEnd.services}, ${mapsEnd.backends} (${mapsEnd.activeBackends} active)`, '4, 16 (16 active)');
  const mine = (c: BpfCounts) => `progs ${c.mine.progs.length} links ${c.mine.links.length} maps ${c.mine.maps.length} on-cgroup ${c.cgroupProgs}`;
  check('bpftool: the agent\'s programs, links and maps at the end = after the start', mine(endCounts) === mine(started) && started.mine.progs.length > 0, mine(endCounts), mine(started));
  // every id the agent had, at the start or at the end, gone after its cleanup (ids are not reused at once)
  const had = { progs: [...started.mine.progs, ...endCounts.mine.progs], links: [...started.mine.links, ...endCounts.mine.links], maps: [...started.mine.maps, ...endCounts.mine.maps] };
  const left = (['progs', 'links', 'maps'] as const).flatMap((k) => had[k].filter((id) => after.all[k].includes(id)).map((id) => `${k.slice(0, -1)} ${id}`));
  check('bpftool: nothing of the agent left after cleanup', left.length === 0 && after.cgroupProgs === 0, left.join(', ') || `none, on-cgroup ${after.cgroupProgs}`, 'none, on-cgroup 0');
  if (cp) {
    check(`xDS: each reconnection within ${RECONNECT_BOUND_MS} ms of the control plane listening again`, redialMs.length > 0 && redialMs.every((m) => m <= RECONNECT_BOUND_MS),
      redialMs.length ? `max ${Math.max(...redialMs)} ms of ${redialMs.length}` : 'none', `<= ${RECONNECT_BOUND_MS} ms`);
  }
  check('agent logged no error', agentErrors.length === 0, String(agentErrors.length), '0');

  return {
    phase, seconds, requests: ok + fails.length, ok, failed: fails.length, counted, excluded, garbled, countedByError, countedSamples, perTarget,
    configWrites: world.writes, configApplied, applyLagMs, ...(cp ? { estimateEarly: early } : {}), modeEvents: world.modeEvents, cpRestarts: cp?.restarts ?? 0, reconnectMs, redialMs, retriesRefused, warningsByMsg, gc,
    rssMiB: rss, rssTrace, rest: { start: restStart, end: restEnd }, fds, maps: { start: mapsStart, end: mapsEnd },
    bpf: { before: strip(before), started: strip(started), end: strip(endCounts), after: strip(after) }, agentErrors, checks,
  };
}

const strip = (c: BpfCounts & { all?: BpfIds }): BpfCounts => ({ progs: c.progs, links: c.links, maps: c.maps, cgroupProgs: c.cgroupProgs, mine: c.mine });

export async function runSoak(o: SoakOpts): Promise<number> {
  await requireRootAndTools('soak', 'it loads BPF programs and builds network namespaces', ['bpftool', 'ip', 'nsenter']);
  for (const f of [AGENT_JS, CP_JS, SERVER_JS, CLIENT_JS]) if (!existsSync(f)) throw new Error(`${f} is missing: compile first (npx tsc -p tsconfig.json)`);
  const started = Date.now();
  const ws = benchWorkspace();
  const lab = await Lab.up({ meshedCgroup: ws.cgroup, prefix: `soak${process.pid}`, pods: [{ name: 'cli', v6: false }, ...BACKENDS.map((name) => ({ name, v6: false }))] });
  onCleanup(`lab ${lab.prefix}`, () => lab.down());
  const hostCg = createChildCgroup(ws.cgroup, 'host-clients');
  const rand = prng(o.seed);

  const pods = new Map<string, ChildProcess>();
  for (const b of BACKENDS) {
    const [cmd, args] = lab.pod(b).argv(process.execPath, [SERVER_JS, b, lab.pod(b).v4!]);
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    pods.set(b, p);
    let err = '';
    p.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    await new Promise<void>((resolve, reject) => {
      p.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); });
      p.once('exit', (code) => reject(new Error(`backend ${b} exited (${code}): ${err.trim()}`)));
    });
  }
  onCleanup('backends', () => { for (const p of pods.values()) p.stdin!.end(); });

  const phaseMs = (o.minutes * 60_000) / o.phases.length;
  const results: PhaseResult[] = [];
  for (const phase of o.phases) results.push(await runPhase(phase, phaseMs, o, ws, lab, hostCg, pods, rand));

  report(results, o, (Date.now() - started) / 1000);
  const pass = results.every((r) => r.checks.every((c) => c.pass));
  await emitResult({ bench: 'soak', pass, minutes: o.minutes, seed: o.seed, phases: results }, null);
  return pass ? 0 : 2;
}

function report(results: PhaseResult[], o: SoakOpts, seconds: number): void {
  const out: string[] = [];
  out.push(`soak — ${o.minutes} min (${Math.round(seconds)} s with setup and checks), seed ${o.seed}; pods cli, ${BACKENDS.join(', ')} on the node lab; host clients in a mesh cgroup`);
  out.push('');
  out.push('phase  seconds  requests  ok        failed  counted  config writes/applied  sick spells  cp restarts  RSS after GC start->end (slope/min)  fds start->end (slope/min)');
  for (const r of results) {
    out.push([
      r.phase.padEnd(6), String(Math.round(r.seconds)).padEnd(8), String(r.requests).padEnd(9), String(r.ok).padEnd(9), String(r.failed).padEnd(7),
      String(r.counted).padEnd(8), `${r.configWrites}/${r.configApplied}`.padEnd(22), String(r.modeEvents).padEnd(12), String(r.cpRestarts).padEnd(12),
      `${r.gc.rssStart.toFixed(1)}->${r.gc.rssEnd.toFixed(1)} (${r.gc.rssSlopePerMin.toFixed(2)})`.padEnd(34),
      `${r.fds.start}->${r.fds.end} (${r.fds.slopePerMin.toFixed(2)})`,
    ].join(' '));
  }
  for (const r of results) {
    out.push('');
    out.push(`${r.phase}: requests per frontend (ok / failed): ${Object.entries(r.perTarget).sort().map(([k, v]) => `${k} ${v.ok}/${v.failed}`).join(', ')}`);
    out.push(`${r.phase}: excluded failures by reason: ${Object.entries(r.excluded).map(([k, v]) => `${k}: ${v}`).join('; ') || 'none'}`);
    out.push(`${r.phase}: answers a client could not parse (not its protocol): ${r.garbled.count}${r.garbled.samples.map((x) => `\n  ${x}`).join('')}`);
    if (r.counted) out.push(`${r.phase}: counted failures by error: ${Object.entries(r.countedByError).map(([k, v]) => `${k}: ${v}`).join('; ')}`);
    for (const s of r.countedSamples.slice(0, 5)) {
      out.push(`  e.g. ${new Date(s.t0).toISOString()} ${s.kind} ${s.key} after ${s.ms} ms: ${s.err} (good backend: ${s.backend}; the kernel held ${s.kernel}); the frontend before (ms from the request; @: good from):`);
      for (const h of s.history.slice(-6)) out.push(`      ${h}`);
      for (const k of s.kernelAround) out.push(`      kernel: ${k}`);
      for (const d of s.decisions) out.push(`      decided: ${d}`);
      if (!s.decisions.length) out.push('      decided: no balancing decision for it within 50 ms');
      for (const x of s.refusals) out.push(`      agent: ${x}`);
      for (const x of s.warnings.slice(0, 8)) out.push(`      agent warned: ${x}`);
      for (const x of s.applies) out.push(`      applied: ${x}`);
    }
    out.push(`${r.phase}: from a config write to certainly in force (ms): p50 ${r.applyLagMs.p50}, p99 ${r.applyLagMs.p99}, max ${r.applyLagMs.max}`);
    if (r.estimateEarly) {
      out.push(`${r.phase}: listings the log-line estimate (second complete apply after the push) called in force before the kernel held them: ` +
        `${r.estimateEarly.count} of ${r.estimateEarly.listings} (by up to ${r.estimateEarly.maxMs} ms; in force is read from the kernel)`);
    }
    if (r.reconnectMs.length) out.push(`${r.phase}: xDS outages, kill to the agent's reconnection (ms): ${r.reconnectMs.join(', ')}; the control plane listening again to it: ${r.redialMs.join(', ')}`);
    out.push(`${r.phase}: retries the agent refused, by limit: ${Object.entries(r.retriesRefused).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}`);
    out.push(`${r.phase}: the agent's warnings, by message: ${Object.entries(r.warningsByMsg).map(([k, v]) => `${k}: ${v}`).join('; ') || 'none'}`);
    out.push(`${r.phase}: agent after full GCs every 10 s, RSS/heap MiB (the last at rest): ${r.gc.trace.join(' ')}; slopes RSS ${r.gc.rssSlopePerMin.toFixed(2)}, heap ${r.gc.heapSlopePerMin.toFixed(2)} MiB/min`);
    out.push(`${r.phase}: agent RSS after the warm-up, lower envelope every 10 s (MiB; not judged, garbage included): ${r.rssTrace.join(' ')}`);
    const rest = (x: { rssMiB: number; fds: number } | null) => (x ? `${x.rssMiB.toFixed(1)} MiB, ${x.fds} fds` : '-');
    out.push(`${r.phase}: agent at rest before the traffic: ${rest(r.rest.start)}; 15 s after it: ${rest(r.rest.end)}`);
    const counts = (Object.keys(r.maps.start) as (keyof MapCounts)[]).filter((k) => k !== 'strayTables');
    out.push(`${r.phase}: kernel maps start -> end: ${counts.map((k) => `${k} ${r.maps.start[k]}->${r.maps.end[k]}`).join(', ')}`);
    const stray = Object.entries(r.maps.end.strayTables);
    if (stray.length) out.push(`${r.phase}: table slots no frontend uses at the end (table id: slots): ${stray.map(([id, n]) => `${id}: ${n}`).join(', ')}`);
    out.push(`${r.phase}: bpftool progs/links/maps/on-cgroup, machine-wide: before ${c4(r.bpf.before)}, after start ${c4(r.bpf.started)}, at the end ${c4(r.bpf.end)}, after cleanup ${c4(r.bpf.after)}`);
    for (const e of r.agentErrors.slice(0, 5)) out.push(`${r.phase}: agent error: ${e}`);
  }
  out.push('');
  for (const r of results) for (const c of r.checks) out.push(`${c.pass ? 'PASS' : 'FAIL'} ${c.name}: ${c.value} (limit ${c.limit})`);
  process.stdout.write(out.join('\n') + '\n');
}

const c4 = (c: BpfCounts): string => `${c.progs}/${c.links}/${c.maps}/${c.cgroupProgs} (the agent's ${c.mine.progs.length}/${c.mine.links.length}/${c.mine.maps.length})`;

const USAGE = `usage: npm run soak -- [--minutes N] [--seed N] [--only file|xds] [--pause-ms N] [--warmup S]
  --minutes N    length of the measured run, split between the phases (default 30; 1..1440)
  --warmup S     seconds of the same churn and traffic before each phase's measured part (default 30): its failures
                 are judged too, its RSS and fds are not fitted (a fresh agent's heap grows for a while)
  --seed N       seed of the random churn (default: from the clock, printed)
  --only PHASE   file (the config file source) or xds (sockmesh-controlplane, SIGKILLed and restarted); default both
  --pause-ms N   each client loop's pause between requests (default 20)
`;

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const o: SoakOpts = { minutes: 30, seed: Date.now() % 2 ** 31, phases: ['file', 'xds'], pauseMs: 20, warmupSeconds: 30 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const num = (min: number, max: number): number => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${flag} needs a whole number (${min}..${max})\n\n${USAGE}`);
      return v;
    };
    if (flag === '--minutes') o.minutes = num(1, 1440);
    else if (flag === '--seed') o.seed = num(0, 2 ** 31);
    else if (flag === '--pause-ms') o.pauseMs = num(0, 10_000);
    else if (flag === '--warmup') o.warmupSeconds = num(0, 3600);
    else if (flag === '--only') {
      const p = argv[++i];
      if (p !== 'file' && p !== 'xds') throw new Error(`--only needs file or xds\n\n${USAGE}`);
      o.phases = [p];
    } else if (flag === '-h' || flag === '--help') { process.stdout.write(USAGE); return 0; }
    else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  log(`seed ${o.seed}`);
  installSignalCleanup();
  // the hard bound: whatever happens, cleanup and out this long after the run's own length
  const hard = setTimeout(() => {
    process.stderr.write(`soak: hard timeout (the run + 5 min) reached: cleaning up\n`);
    void runCleanups().finally(() => process.exit(1));
  }, (o.minutes + 5) * 60_000 + o.phases.length * o.warmupSeconds * 1000);
  hard.unref();
  try {
    return await runSoak(o);
  } finally {
    await runCleanups();
  }
}

main().then(
  (status) => process.exit(status),
  async (e: Error) => {
    process.stderr.write(`soak: ${e.message}\n`);
    await runCleanups();
    process.exit(1);
  },
);
