// The L7 benchmark: HTTP/1.1 keep-alive (wrk) and HTTP/2 cleartext (h2load) requests against one backend,
//  (a) direct, (b) through the sockmesh agent's L7 proxy (the kernel redirects the VIP to it),
//  (c) through one haproxy in HTTP mode, (d) through two chained haproxy instances (a sidecar pair),
// and for calibration (e) a plain Node.js TCP relay (one thread) and (f) haproxy with 2 threads.
//
// Everything runs in one private network namespace and under one private cgroup:
//   <bench>/mesh            the agent's --cgroup (its programs are attached here and nowhere else)
//   <bench>/mesh/clients    wrk/h2load of (b): their connect() to the VIP is redirected to the proxy
//   <bench>/mesh/agent      the agent itself: both legs of (b) are sockmap candidates (the kernel lets the
//                           agent's own upstream connects through unredirected)
//   <bench>/mesh/backend    the backend: its accepted sockets are meshed too, so proxy->backend can take the
//                           fast path; a client from outside the mesh is never put on it (the accepting side
//                           is inserted only when its peer is), so (a), (c)-(f) see plain loopback TCP
//   <bench>/plain/clients   wrk/h2load of (a), (c)-(f)
//   <bench>/plain/proxies   haproxy instances and the relay
// Every process joins its cgroup first and then enters the namespace with nsenter (not `ip netns exec`,
// which remounts /sys and would hide cgroupfs and bpffs from the agent). Everything is removed on the way
// out, also on error or Ctrl-C; every process and every load is bounded in time.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, release } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Agent, agentEntry, benchConfig, cleanupAgent } from './lib/agent.js';
import { emitResult } from './chart.js';
import { benchWorkspace, cgroup2Mount, createChildCgroup } from './lib/cgroup.js';
import { cpuSeconds, schedStats, type SchedStats } from './lib/cpu.js';
import { backendConfig, haproxyArgv, proxyConfig } from './lib/haproxy.js';
import {
  formatL7Table, formatLoop, l7Checks, l7Json, L7_LABELS, L7_SCENARIOS, PROTOCOLS, PROTOCOL_TITLES, summarize,
  type L7Result, type L7Scenario, type LoopFigures, type Protocol, type Sample,
} from './lib/l7report.js';
import { allocPerRequest, GcMeter, type GcStats } from './lib/gctrace.js';
import { h2loadArgv, h2Shape, P999_LUA, parseH2load, parseWrk, wrkArgv, type HttpRun } from './lib/loadgen.js';
import { addNetns, delNetns, inCgroupNsenter, waitListening } from './lib/netns.js';
import { Background, CLIENT_SLACK_MS, interrupted, log, onCleanup, requireRootAndTools, run } from './lib/proc.js';
import { sumSamples } from './lib/promtext.js';
import { readLoopTrace } from '../agent/proxy/looptrace.js';

export interface L7Options {
  root: string;
  /** seconds per measured run */
  duration: number;
  /** requests in flight: wrk connections; h2load connections x streams */
  connections: number;
  repetitions: number;
  /** seconds of the unmeasured warm-up run per scenario and protocol */
  warmup: number;
  scenarios: L7Scenario[];
  /** node flags for (b)'s agent after its own (later flags win): V8 settings compared against the same baselines */
  agentFlags?: string[];
  /**
   * client on CPU 1, everything else on CPU 0. Off by default: on the 2-vCPU VMs a wake-up across CPUs costs
   * about 40 µs, which the split puts on every client<->server exchange, and a pinned process cannot escape
   * a CPU that other load lands on (measured here: direct HTTP/1.1 about 2x the req/s unpinned, and p99 in
   * the hundreds of µs instead of milliseconds). Unpinned, the scheduler places client, proxy and backend as
   * it would on a node; the interleaving and medians absorb the variation.
   */
  pin: boolean;
  /** where the chart goes (null: none) */
  chartDir: string | null;
  /** a directory: (b)'s allocations are profiled during each measured run (lib/allocprof.ts) */
  allocProfile?: string;
  /** a directory: (b)'s CPU time is profiled during each measured run (lib/allocprof.ts, V8's CPU profiler) */
  cpuProfile?: string;
}

const BACKEND_PORT = 8080;
const HAPROXY_PORT = 9001;
const SIDECAR_OUT_PORT = 9002; // (d) the client's sidecar
const SIDECAR_IN_PORT = 9003; // (d) the server's sidecar
const RELAY_PORT = 9004;
const HAPROXY2_PORT = 9005;
const PROXY_PORT = 15001; // the agent's L7 listener
const METRICS_PORT = 9464; // the agent's Prometheus endpoint (inside the namespace)
const VIP = '127.77.0.1';
const VIP_PORT = 80;
const LOCAL = '127.0.0.1';

const LISTEN_TIMEOUT_MS = 10_000;
/** Below this share of one CPU during (b), the requests cannot have passed through the agent's proxy. */
const MIN_AGENT_CPU_PCT = 2;


interface Ctx {
  opts: L7Options;
  id: string;
  ns: string;
  workDir: string;
  /** taskset lists; undefined = not pinned */
  clientCpus?: string;
  serverCpus?: string;
  allCpus?: string;
  backend: Background;
  /** wrk's script printing p99.9 (P999_LUA) */
  p999Script: string;
  /** allocation profiles written so far (--alloc-profile numbers them) */
  profiles: number;
  cg: { meshClients: string; meshAgent: string; meshBackend: string; plainClients: string; plainProxies: string; mesh: string };
}

/** One way to reach the backend. */
interface Scenario {
  result: L7Result;
  clientCgroup: string;
  host: string;
  port: number;
  /** the processes whose CPU is the scenario's proxy cost (none for (a)) */
  procs: Background[];
  /** pid of the proxy, when it is not one of procs (the agent) */
  extraPids: () => number[];
  /** requests the clients counted as answered, warm-ups included */
  answered: number;
  /** the proxy's garbage collections since the last call (the agent runs with --trace-gc-nvp) */
  gc?: () => GcStats;
  /** toggle the agent's allocation profile (--alloc-profile) */
  profile?: () => void;
  /** the proxy's netio loop trace (SOCKMESH_NETIO_TRACE, agent/proxy/looptrace.ts): one JSON line per second */
  traceFile?: string;
  start(): Promise<void>;
  /** why the scenario's processes are no longer usable, or undefined */
  dead(): string | undefined;
  evidence(): Promise<void>;
  stop(): Promise<void>;
}

const label = (s: Scenario) => L7_LABELS[s.result.name];

function newResult(name: L7Scenario): L7Result {
  return { name, samples: {}, errors: {}, evidence: {} };
}

/** Start a server-side process, wait until its port listens, register its end. */
async function startServer(ns: string, name: string, cgroup: string, cpusList: string | undefined, argv: string[], port: number): Promise<Background> {
  const [cmd, args] = inCgroupNsenter(cgroup, ns, cpusList, argv);
  const maxMs = 30 * 60_000; // far beyond any run; the cleanup kills it sooner
  const bg = new Background(name, cmd, args, maxMs);
  try {
    await waitListening(ns, port, LISTEN_TIMEOUT_MS, () => bg.running);
  } catch (e) {
    await bg.stop();
    throw new Error(`${name}: ${(e as Error).message}: ${bg.tail(3).replace(/\s*\n\s*/g, ' | ')}`);
  }
  return bg;
}

function haproxyScenario(ctx: Ctx, name: L7Scenario, hops: Array<{ port: number; threads: number; cpus?: string }>): Scenario {
  const procs: Background[] = [];
  const s: Scenario = {
    result: newResult(name),
    clientCgroup: ctx.cg.plainClients,
    host: LOCAL,
    port: hops[0]!.port,
    procs,
    extraPids: () => [],
    answered: 0,
    start: async () => {
      // Start from the hop nearest the backend, so that each hop's upstream already listens.
      for (let i = hops.length - 1; i >= 0; i--) {
        const hop = hops[i]!;
        const upstream = i === hops.length - 1 ? BACKEND_PORT : hops[i + 1]!.port;
        const file = join(ctx.workDir, `haproxy-${name}-${hop.port}.cfg`);
        writeFileSync(file, proxyConfig(hop.port, LOCAL, upstream, hop.threads));
        procs.push(await startServer(ctx.ns, `${L7_LABELS[name]} haproxy :${hop.port}`, ctx.cg.plainProxies, hop.cpus, haproxyArgv(file), hop.port));
      }
      s.result.evidence.hops = hops.length;
      s.result.evidence.threads = hops[0]!.threads;
    },
    dead: () => procs.find((p) => !p.running)?.name,
    evidence: async () => {},
    stop: async () => {
      for (const p of procs) await p.stop();
    },
  };
  return s;
}

function directScenario(ctx: Ctx): Scenario {
  return {
    result: newResult('direct'), clientCgroup: ctx.cg.plainClients, host: LOCAL, port: BACKEND_PORT, procs: [],
    extraPids: () => [], answered: 0, start: async () => {}, dead: () => undefined, evidence: async () => {}, stop: async () => {},
  };
}

function relayScenario(ctx: Ctx): Scenario {
  const procs: Background[] = [];
  const entry = join(ctx.opts.root, 'dist', 'bench', 'lib', 'relay.js');
  return {
    result: newResult('relay'), clientCgroup: ctx.cg.plainClients, host: LOCAL, port: RELAY_PORT, procs, extraPids: () => [], answered: 0,
    start: async () => {
      const argv = [process.execPath, entry, String(RELAY_PORT), LOCAL, String(BACKEND_PORT)];
      procs.push(await startServer(ctx.ns, '(e) node relay', ctx.cg.plainProxies, ctx.serverCpus, argv, RELAY_PORT));
    },
    dead: () => procs.find((p) => !p.running)?.name,
    evidence: async () => {},
    stop: async () => {
      for (const p of procs) await p.stop();
    },
  };
}

/**
 * The sockmesh service of (b): an L7 service (an `http:` block with one catch-all route and every other
 * setting at its default) whose VIP is redirected by the kernel to the agent's proxy.
 */
export function l7BenchConfig(vip: string, port: number, backend: string, backendPort: number): string {
  const http = ['    http:', '      routes:', '        - name: all', '          match: { path: { prefix: / } }'];
  return benchConfig(vip, port, backend, { name: 'bench-l7', backendPort, more: http });
}

/** Why this agent build cannot run (b), or undefined when it can. */
async function l7Unavailable(root: string): Promise<string | undefined> {
  if (!existsSync(agentEntry(root))) return `agent not built (${agentEntry(root)} missing)`;
  const help = await run(process.execPath, [agentEntry(root), '--help'], 20_000);
  if (!/--proxy-port\b/.test(help.stdout + help.stderr)) return 'the agent has no L7 proxy yet (no --proxy-port flag in `sockmesh-agent --help`)';
  return undefined;
}

function sockmeshScenario(ctx: Ctx): Scenario {
  const bpffs = join('/sys/fs/bpf', ctx.id);
  let agent: Agent | undefined;
  const meter = new GcMeter();
  const traceFile = join(ctx.workDir, 'netio-trace.jsonl');
  const s: Scenario = {
    result: newResult('sockmesh'), clientCgroup: ctx.cg.meshClients, host: VIP, port: VIP_PORT, procs: [], traceFile,
    extraPids: () => (agent?.pid ? [agent.pid] : []),
    answered: 0,
    gc: () => meter.take(),
    profile: () => (agent?.pid ? process.kill(agent.pid, 'SIGUSR2') : undefined),
    start: async () => {
      const why = await l7Unavailable(ctx.opts.root);
      if (why) {
        s.result.skipped = why;
        return;
      }
      // Where the proxy's time goes per batch of its netio loop (batch sizes, each write's delay from its batch's start,
      // the gaps between batches, its main thread's run-queue wait): issue 15's evidence on the tail, in every run. Its
      // cost is two clock reads per batch and one per write.
      process.env.SOCKMESH_NETIO_TRACE = traceFile;
      // Registered before the start, so that Ctrl-C during start-up still unpins and detaches.
      onCleanup('agent pins and links', () => cleanupAgent(ctx.opts.root, bpffs, ctx.cg.mesh));
      try {
        agent = await Agent.start({
          root: ctx.opts.root, cgroupDir: ctx.cg.mesh, bpffsDir: bpffs, configPath: join(ctx.workDir, 'agent.yaml'),
          vip: VIP, port: VIP_PORT, backend: LOCAL,
          configText: l7BenchConfig(VIP, VIP_PORT, LOCAL, BACKEND_PORT),
          extraArgs: [
            '--proxy-port', String(PROXY_PORT), '--metrics-listen', `${LOCAL}:${METRICS_PORT}`,
            '--run-dir', join(ctx.workDir, 'run'), '--event-sample', '0',
          ],
          // One line per collection on stdout: the allocation budget and the GC pauses of the report. Its own
          // cost is a printf per collection (tens per second at these rates).
          nodeFlags: [
            '--trace-gc-nvp',
            ...(ctx.opts.agentFlags ?? []),
            ...(ctx.opts.allocProfile || ctx.opts.cpuProfile ? ['--import', pathToFileURL(join(ctx.opts.root, 'dist', 'bench', 'lib', 'allocprof.js')).href] : []),
          ],
          launch: (argv) => inCgroupNsenter(ctx.cg.meshAgent, ctx.ns, ctx.serverCpus, argv),
        });
        agent.onLine((line) => meter.feed(line));
        await waitListening(ctx.ns, PROXY_PORT, LISTEN_TIMEOUT_MS, () => agent!.running);
      } catch (e) {
        s.result.skipped = `the agent did not start with an L7 service: ${(e as Error).message.split('\n').slice(0, 3).join(' | ')}`;
        await agent?.stop();
        agent = undefined;
        return;
      }
      log(`(b): agent ready, proxy on :${PROXY_PORT} (cgroup ${ctx.cg.meshAgent}, pins ${bpffs})`);
    },
    dead: () => (agent && !agent.running ? `the agent exited: ${agent.tail(3)}` : undefined),
    evidence: async () => {
      if (!agent?.running) return;
      try {
        for (const [k, v] of Object.entries(await agent.counters())) if (v !== 0) s.result.evidence[k] = v;
      } catch (e) {
        s.result.evidence.countersError = (e as Error).message.split('\n')[0]!;
      }
      // The proxy's own count of answered requests must cover what the clients counted: otherwise some
      // requests reached the backend some other way, and the figures are not the proxy's.
      const r = await run('nsenter', [`--net=/run/netns/${ctx.ns}`, 'curl', '-sf', '--max-time', '10', `http://${LOCAL}:${METRICS_PORT}/metrics`], 20_000);
      if (r.code !== 0) {
        s.result.evidence.metricsError = `curl /metrics: exit ${r.code ?? r.signal}`;
        return;
      }
      const proxied = sumSamples(r.stdout, 'sockmesh_http_requests_total', { service: 'bench-l7', class: '2xx' });
      s.result.evidence.proxied2xx = proxied;
      s.result.evidence.clientsAnswered = s.answered;
      if (proxied < s.answered * 0.99) {
        const why = `the proxy answered ${proxied} requests with 2xx, the clients counted ${s.answered}: not all went through it`;
        for (const p of PROTOCOLS) s.result.errors[p] ??= why;
      }
    },
    stop: async () => {
      await agent?.stop();
      agent = undefined;
    },
  };
  return s;
}

/** the scheduler's figures summed over pids; undefined when one is gone */
const schedOf = (pids: number[]): SchedStats | undefined => {
  const sum: SchedStats = { waitNs: 0, involuntary: 0, voluntary: 0 };
  for (const p of pids) {
    const s = schedStats(p);
    if (s === undefined) return undefined;
    sum.waitNs += s.waitNs;
    sum.involuntary += s.involuntary;
    sum.voluntary += s.voluntary;
  }
  return sum;
};

const cpuOf = (pids: number[]) => {
  let sum = 0;
  for (const p of pids) {
    const c = cpuSeconds(p);
    if (c === undefined) return undefined;
    sum += c;
  }
  return sum;
};

/** One client run against a scenario, with the CPU its proxy and the backend used meanwhile. */
async function measure(ctx: Ctx, s: Scenario, proto: Protocol, seconds: number): Promise<Sample> {
  const url = `http://${s.host}:${s.port}/`;
  const pids = [...s.procs.map((p) => p.child.pid!), ...s.extraPids()];
  const backendPid = ctx.backend.child.pid!;
  const logFile = join(ctx.workDir, 'h2load.log');
  const argv = proto === 'http1' ? wrkArgv(url, ctx.opts.connections, seconds, ctx.p999Script) : h2loadArgv(url, ctx.opts.connections, seconds, logFile);
  const [cmd, args] = inCgroupNsenter(s.clientCgroup, ctx.ns, ctx.clientCpus, argv);
  s.gc?.(); // what came before this run is not its
  const p0 = cpuOf(pids), b0 = cpuSeconds(backendPid), s0 = schedOf(pids), t0 = performance.now(), w0 = Date.now();
  const bs0 = schedOf([backendPid]);
  const r = await run(cmd, args, seconds * 1000 + CLIENT_SLACK_MS);
  const t1 = performance.now(), p1 = cpuOf(pids), b1 = cpuSeconds(backendPid), s1 = schedOf(pids), w1 = Date.now();
  const bs1 = schedOf([backendPid]);
  const gc = s.gc?.();
  const tool = argv[0]!;
  if (r.code !== 0) {
    const why = r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`;
    throw new Error(`${tool}: ${why}: ${(r.stderr + r.stdout).trim().split('\n').slice(-3).join(' | ').slice(0, 500)}`);
  }
  let h: HttpRun;
  if (proto === 'http1') h = parseWrk(r.stdout);
  else {
    try {
      h = parseH2load(r.stdout, existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
    } finally {
      rmSync(logFile, { force: true });
    }
  }
  if (h.errors > 0) throw new Error(`${tool}: ${h.errors} failed requests of ${h.requests}: ${h.errorDetail}`);
  const wall = (t1 - t0) / 1000;
  const pct = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? ((b - a) / wall) * 100 : undefined);
  const proxyCpu = pids.length ? pct(p0, p1) : undefined;
  const proxyCpuUs = proxyCpu !== undefined ? (p1! - p0!) * 1e6 : undefined;
  // The proxy's time runnable but not running, and its preemptions: what the scheduler adds to its requests (issue 15)
  const sched = pids.length && s0 !== undefined && s1 !== undefined
    ? { runqUs: (s1.waitNs - s0.waitNs) / 1000, preempted: s1.involuntary - s0.involuntary, switches: s1.voluntary - s0.voluntary }
    : undefined;
  const loop = s.traceFile !== undefined ? loopFigures(s.traceFile, w0, w1) : undefined;
  const backendSleeps = bs0 !== undefined && bs1 !== undefined ? bs1.voluntary - bs0.voluntary : undefined;
  return {
    ...h, ...(proxyCpu !== undefined ? { proxyCpu, proxyCpuUs } : {}), backendCpu: pct(b0, b1) ?? 0, seconds: wall, ...(gc ? { gc } : {}),
    ...(sched !== undefined ? { sched } : {}), ...(loop !== undefined ? { loop } : {}), ...(backendSleeps !== undefined ? { backendSleeps } : {}),
  };
}

/** The proxy's netio loop over the whole seconds of a run (the trace's lines inside [from, to]); undefined without any. */
function loopFigures(file: string, from: number, to: number): LoopFigures | undefined {
  if (!existsSync(file)) return undefined;
  let x: ReturnType<typeof readLoopTrace>;
  try {
    x = readLoopTrace(readFileSync(file, 'utf8'), from, to);
  } catch (e) {
    // evidence, not a measurement: a broken trace costs its figures, never the run
    log(`(b) netio loop trace ${file}: ${(e as Error).message}`);
    return undefined;
  }
  if (x === null) return undefined;
  return {
    seconds: x.seconds, eventsP50: x.events.quantile(0.5), eventsP99: x.events.quantile(0.99),
    batchP50Us: x.batchUs.quantile(0.5), batchP99Us: x.batchUs.quantile(0.99),
    writeP50Us: x.writeUs.quantile(0.5), writeP99Us: x.writeUs.quantile(0.99), writeP999Us: x.writeUs.quantile(0.999),
    gapP99Us: x.gapUs.quantile(0.99), gapP999Us: x.gapUs.quantile(0.999),
    cpuMsPerS: x.cpuMs, runqMsPerS: x.runqMs, gcMsPerS: x.gcMs,
  };
}

/** Mark one protocol of a scenario failed: it is not measured again. */
function fail(s: Scenario, proto: Protocol, e: unknown): void {
  s.result.errors[proto] = (e as Error).message.split('\n')[0]!;
  if (!interrupted()) log(`${label(s)} ${PROTOCOL_TITLES[proto]} failed: ${(e as Error).message}`);
}

const usable = (s: Scenario, p: Protocol) => !s.result.skipped && !s.result.errors[p];

async function measureInto(ctx: Ctx, s: Scenario, p: Protocol, seconds: number, keep: boolean): Promise<void> {
  try {
    const gone = s.dead();
    if (gone) throw new Error(`${gone} is not running`);
    const profileDir = ctx.opts.allocProfile ?? ctx.opts.cpuProfile;
    const profiling = keep && s.profile && profileDir;
    if (profiling) s.profile!();
    const x = await measure(ctx, s, p, seconds);
    if (profiling) {
      s.profile!();
      log(`${label(s)} ${PROTOCOL_TITLES[p]}: ${ctx.opts.allocProfile ? 'allocation' : 'CPU'} profile ${join(profileDir, `${++ctx.profiles}.txt`)}`);
    }
    if (s.result.name === 'sockmesh' && x.rps > 1000 && (x.proxyCpu ?? 0) < MIN_AGENT_CPU_PCT) {
      throw new Error(`the agent used ${(x.proxyCpu ?? 0).toFixed(1)}% CPU for ${Math.round(x.rps)} req/s: ` +
        'the requests did not pass through its proxy (no L7 redirect?)');
    }
    s.answered += x.requests;
    if (keep) (s.result.samples[p] ??= []).push(x);
    const cpu = x.proxyCpu === undefined ? '' : `, proxy CPU ${x.proxyCpu.toFixed(0)}%`;
    const gc = x.gc && x.requests > 0
      ? `; GC ${x.gc.collections} (${x.gc.pauseTotalMs.toFixed(0)} ms, max ${x.gc.pauseMaxMs.toFixed(1)} ms), ${Math.round(allocPerRequest(x.gc, x.requests, x.seconds))} B/req`
      : '';
    const sched = x.sched && x.requests > 0
      ? `; run queue ${(x.sched.runqUs / x.requests).toFixed(2)} µs/req (${(x.sched.runqUs / 1000 / x.seconds).toFixed(0)} ms/s), ` +
        `${Math.round(x.sched.preempted / x.seconds)} preemptions/s, ${Math.round(x.sched.switches / x.seconds)} sleeps/s`
      : '';
    const peer = x.backendSleeps !== undefined && x.requests > 0 ? `; backend sleeps ${(x.backendSleeps / x.requests).toFixed(3)}/req` : '';
    log(`${label(s)} ${PROTOCOL_TITLES[p]}${keep ? '' : ' warm-up'}: ${Math.round(x.rps)} req/s, p50 ${Math.round(x.p50)} µs, ` +
      `p99 ${Math.round(x.p99)} µs, p99.9 ${x.p999 === undefined ? '-' : Math.round(x.p999)} µs${cpu}, backend CPU ${x.backendCpu.toFixed(0)}%${gc}${sched}${peer}` +
      (x.loop ? `; loop: ${formatLoop(x.loop)}` : ''));
  } catch (e) {
    fail(s, p, e);
  }
}

const preflight = (): Promise<void> =>
  requireRootAndTools('l7', 'netns, cgroups, BPF', ['ip', 'ss', 'nsenter', 'taskset', 'wrk', 'h2load', 'haproxy']);

/** Runs the bench, prints the table, the checks and (last line) the JSON; returns the exit status. */
export async function runL7(opts: L7Options): Promise<number> {
  await preflight();
  if (opts.allocProfile) {
    mkdirSync(opts.allocProfile, { recursive: true });
    process.env.SOCKMESH_ALLOC_PROFILE_DIR = opts.allocProfile; // read by the agent's preload (lib/allocprof.ts)
    log(`--alloc-profile: (b) runs with V8's sampling heap profiler; its figures are not comparable to a plain run`);
  } else if (opts.cpuProfile) {
    mkdirSync(opts.cpuProfile, { recursive: true });
    process.env.SOCKMESH_CPU_PROFILE_DIR = opts.cpuProfile; // read by the agent's preload (lib/allocprof.ts)
    log(`--cpu-profile: (b) runs with V8's CPU profiler (100 µs); its figures are not comparable to a plain run`);
  }
  const { id, cgroup, workDir } = benchWorkspace();
  await addNetns(id);
  onCleanup(`netns ${id}`, () => delNetns(id));

  const cpuCount = availableParallelism();
  const pin = opts.pin && cpuCount >= 2;
  const mesh = createChildCgroup(cgroup, 'mesh');
  const plain = createChildCgroup(cgroup, 'plain');
  const cg = {
    mesh,
    meshClients: createChildCgroup(mesh, 'clients'),
    meshAgent: createChildCgroup(mesh, 'agent'),
    meshBackend: createChildCgroup(mesh, 'backend'),
    plainClients: createChildCgroup(plain, 'clients'),
    plainProxies: createChildCgroup(plain, 'proxies'),
  };
  const p999Script = join(workDir, 'p999.lua');
  writeFileSync(p999Script, P999_LUA);
  const backendFile = join(workDir, 'backend.cfg');
  writeFileSync(backendFile, backendConfig(BACKEND_PORT));
  const serverCpus = pin ? '0' : undefined;
  const backend = await startServer(id, 'backend haproxy', cg.meshBackend, serverCpus, haproxyArgv(backendFile), BACKEND_PORT);
  const ctx: Ctx = {
    opts, id, ns: id, workDir, cg, backend, p999Script, profiles: 0,
    clientCpus: pin ? '1' : undefined, serverCpus, allCpus: pin ? `0-${cpuCount - 1}` : undefined,
  };
  const { clients, streams } = h2Shape(opts.connections);
  log(`cgroup ${cgroup}, netns ${id}; ${opts.repetitions} x ${opts.duration} s per scenario and protocol, ` +
    `${opts.connections} requests in flight (wrk -c${opts.connections}; h2load -c${clients} -m${streams}); ` +
    (pin ? 'clients on CPU 1, backend and proxies on CPU 0' : 'nothing pinned') +
    (opts.agentFlags?.length ? `; (b)'s agent with ${opts.agentFlags.join(' ')}` : ''));

  const makers: Record<L7Scenario, () => Scenario> = {
    direct: () => directScenario(ctx),
    sockmesh: () => sockmeshScenario(ctx),
    haproxy: () => haproxyScenario(ctx, 'haproxy', [{ port: HAPROXY_PORT, threads: 1, cpus: serverCpus }]),
    chain: () => haproxyScenario(ctx, 'chain', [
      { port: SIDECAR_OUT_PORT, threads: 1, cpus: serverCpus }, { port: SIDECAR_IN_PORT, threads: 1, cpus: serverCpus },
    ]),
    relay: () => relayScenario(ctx),
    // Calibration: haproxy as Envoy sidecars commonly run (2 workers), allowed on every CPU, the client's too.
    haproxy2: () => haproxyScenario(ctx, 'haproxy2', [{ port: HAPROXY2_PORT, threads: 2, cpus: ctx.allCpus }]),
  };
  const scenarios = L7_SCENARIOS.filter((n) => opts.scenarios.includes(n)).map((n) => makers[n]());
  const started = Date.now();
  for (const s of scenarios) {
    try {
      await s.start();
      if (s.result.skipped) log(`${label(s)} not available: ${s.result.skipped}`);
    } catch (e) {
      for (const p of PROTOCOLS) fail(s, p, e);
    }
  }
  for (const s of scenarios) for (const p of PROTOCOLS) if (usable(s, p) && !interrupted()) await measureInto(ctx, s, p, opts.warmup, false);
  // Interleaved: each repetition runs every scenario once (order rotated), so that load from elsewhere on the
  // machine drifts into all scenarios alike; the medians over the repetitions are reported.
  for (let rep = 0; rep < opts.repetitions && !interrupted(); rep++) {
    const k = rep % scenarios.length;
    for (const s of [...scenarios.slice(k), ...scenarios.slice(0, k)]) {
      for (const p of PROTOCOLS) if (usable(s, p) && !interrupted()) await measureInto(ctx, s, p, opts.duration, true);
    }
  }
  if (!backend.running && !interrupted()) throw new Error(`the backend exited during the run: ${backend.tail(3)}`);
  for (const s of scenarios) {
    try {
      await s.evidence();
    } catch (e) {
      s.result.evidence.error = (e as Error).message.split('\n')[0]!;
    }
    await s.stop();
  }
  const signal = interrupted();
  if (signal) throw new Error(`interrupted by ${signal}: no results`);
  log(`measured in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const results = scenarios.map((s) => s.result);
  const checks = l7Checks(results);
  const out: string[] = [];
  out.push(`l7 bench — kernel ${release()}, ${cpuCount} CPUs (${cpus()[0]?.model ?? '?'})`);
  out.push(`median of ${opts.repetitions} interleaved ${opts.duration} s runs per scenario and protocol, after a ${opts.warmup} s warm-up; ` +
    `${opts.connections} requests in flight: wrk -t1 -c${opts.connections} (HTTP/1.1 keep-alive), h2load -t1 -c${clients} -m${streams} (h2c)`);
  out.push(pin
    ? 'CPUs: client on CPU 1; backend, proxies and agent on CPU 0 (each proxy gets one CPU, shared with the backend); ' +
      '(f) may use both CPUs'
    : 'CPUs: nothing pinned (the scheduler places client, proxies and backend; --pin splits them)');
  out.push('backend: haproxy answering 200 "ok" itself; proxies keep the protocol per hop (h2 upstream for h2); ' +
    'proxy% / bknd%: CPU of the proxy process(es) (the whole agent for (b)) and of the backend, % of one CPU; ' +
    'µs/req: the proxy\'s CPU time per request');
  out.push('');
  out.push(formatL7Table(results));
  out.push('');
  for (const r of results) {
    const ev = Object.entries(r.evidence);
    if (ev.length) out.push(`${L7_LABELS[r.name]} evidence: ${ev.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  for (const c of checks) out.push(`${c.status} ${PROTOCOL_TITLES[c.protocol]} ${c.name}: ${c.detail}`);
  for (const p of PROTOCOLS) {
    const e = summarize(results.find((r) => r.name === 'relay'), p), a = summarize(results.find((r) => r.name === 'direct'), p);
    if (e && a) out.push(`INFO ${PROTOCOL_TITLES[p]} (e) node relay = ${(e.rps / a.rps).toFixed(2)}x of direct req/s (DESIGN.md: about 0.25x)`);
  }
  process.stdout.write(out.join('\n') + '\n');

  // A target not measured (a scenario skipped, failed or left out with --only) is not a pass.
  const failedRun = results.some((r) => r.skipped || Object.keys(r.errors).length > 0) || checks.some((c) => c.status === 'SKIP');
  const missed = checks.some((c) => c.status === 'FAIL');
  const summary = {
    bench: 'l7',
    kernel: release(),
    cpus: cpuCount,
    cgroup2: cgroup2Mount(),
    pinned: pin,
    ...(opts.agentFlags?.length ? { agentFlags: opts.agentFlags } : {}),
    duration: opts.duration,
    repetitions: opts.repetitions,
    warmup: opts.warmup,
    connections: opts.connections,
    h2load: { clients, streams },
    units: { rps: 'requests/s', latency: 'µs', cpu: '% of one CPU' },
    ...l7Json(results, checks),
    ok: !failedRun && !missed,
  };
  await emitResult(summary, opts.chartDir);
  return failedRun ? 1 : missed ? 2 : 0;
}
