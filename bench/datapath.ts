// The datapath benchmark: the same sockperf/iperf3 workload through
//  (a) plain loopback, (b) a sockmesh VIP (connect-time rewrite + sockmap fast path),
//  (c) the same VIP through iptables DNAT as kube-proxy would program it, and
//  (d) plain loopback under a minimal sockmap program (bench/minimal/): not a competitor but the
//      reference for (b), i.e. what the kernel's sockmap path itself does on this machine.
// Every process runs in the bench's own cgroup and network namespaces; everything is removed on
// the way out, also on error or Ctrl-C.
import { existsSync } from 'node:fs';
import { availableParallelism, cpus, release } from 'node:os';
import { join } from 'node:path';
import { Agent, agentEntry, cleanupAgent } from './lib/agent.js';
import { emitResult } from './chart.js';
import { compileMinimal, MinimalSockmap, minimalUnavailable } from './lib/minimal.js';
import { benchWorkspace, cgroup2Mount, createChildCgroup } from './lib/cgroup.js';
import { iperf3ClientArgv, iperf3ServerArgv, parseIperf3, type Stream } from './lib/iperf3.js';
import { addNetns, delNetns, inCgroupNetns, inNetns, waitListening } from './lib/netns.js';
import { Background, CLIENT_SLACK_MS, interrupted, log, onCleanup, requireRootAndTools, run, runChecked } from './lib/proc.js';
import {
  formatTable, LATENCY_CASES, ratiosToDirect, referenceInfo, round, SCENARIO_LABELS, SCENARIO_NAMES, targetChecks,
  type ScenarioName, type ScenarioResult,
} from './lib/report.js';
import { parseSockperf, sockperfClientArgv, sockperfServerArgv } from './lib/sockperf.js';

export interface DatapathOptions {
  root: string;
  /** sockperf run length per case, seconds */
  seconds: number;
  /** iperf3 run length, seconds */
  streamSeconds: number;
  scenarios: ScenarioName[];
  /** where the chart goes (null: none) */
  chartDir: string | null;
  /** attach one `meshctl monitor --json` reader to the agent during (b), to measure what a monitor costs */
  monitor?: boolean;
}

const PORT = 11111;
const VIP = '127.77.0.1';
const BACKEND = '127.0.0.1';
const LISTEN_TIMEOUT_MS = 5000;

interface Ctx {
  opts: DatapathOptions;
  cpuCount: number;
}

/**
 * One way to reach the server. Each scenario has its own leaf cgroup (the agent is attached only
 * to the sockmesh one, so its programs never touch (a) or (c)) and its own network namespace
 * (no TIME_WAIT or conntrack state carried from one scenario into another).
 */
interface Scenario {
  result: ScenarioResult;
  ns: string;
  cgroup: string;
  /** where the client connects: the backend itself, or the VIP */
  host: string;
  /** namespace-specific preparation (iptables rule, agent start) */
  setup(): Promise<void>;
  /** read the facts that show the scenario did what it claims */
  evidence(): Promise<void>;
  /** undo setup early (the global cleanup covers failures) */
  teardown(): Promise<void>;
  sockperf?: Background;
}

const label = (s: Scenario) => SCENARIO_LABELS[s.result.name];

async function listening(ns: string, server: Background): Promise<void> {
  try {
    await waitListening(ns, PORT, LISTEN_TIMEOUT_MS, () => server.running);
  } catch (e) {
    await server.stop();
    throw new Error(`${server.name}: ${(e as Error).message}: ${server.tail(3).replace(/\s*\n\s*/g, ' | ')}`);
  }
}

/** Mark a scenario failed; it takes no further part in the run. */
function fail(s: Scenario, e: unknown): void {
  s.result.error = (e as Error).message.split('\n')[0];
  if (!interrupted()) log(`${label(s)} failed: ${(e as Error).message}`);
}

const active = (all: Scenario[]) => all.filter((s) => !s.result.error && !s.result.skipped);

/**
 * Latency: sockperf servers on CPU 0 in every scenario, then each case runs once per scenario
 * back to back (order rotated per case), so that load from elsewhere on the machine drifts into
 * all scenarios alike instead of into whichever ran during it.
 */
async function latency(ctx: Ctx, scenarios: Scenario[]): Promise<void> {
  const { opts } = ctx;
  const serverMaxMs = LATENCY_CASES.length * scenarios.length * (opts.seconds * 1000 + CLIENT_SLACK_MS) + 30_000;
  for (const s of active(scenarios)) {
    const [cmd, args] = inCgroupNetns(s.cgroup, s.ns, 0, sockperfServerArgv(BACKEND, PORT));
    s.sockperf = new Background(`${label(s)} sockperf server`, cmd, args, serverMaxMs);
    try {
      await listening(s.ns, s.sockperf);
    } catch (e) {
      fail(s, e);
    }
  }
  try {
    for (const [i, c] of LATENCY_CASES.entries()) {
      if (c.crossCpu && ctx.cpuCount < 2) continue; // reported as '-'
      const run1 = active(scenarios);
      if (run1.length === 0) break;
      const order = [...run1.slice(i % run1.length), ...run1.slice(0, i % run1.length)];
      for (const s of order) {
        try {
          const argv = sockperfClientArgv(s.host, PORT, opts.seconds, c.bytes);
          const [cmd, args] = inCgroupNetns(s.cgroup, s.ns, c.crossCpu ? 1 : 0, argv);
          const r = await run(cmd, args, opts.seconds * 1000 + CLIENT_SLACK_MS);
          if (r.code !== 0) {
            const why = r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`;
            throw new Error(`sockperf ${c.title}: ${why}: ${r.stderr.trim().slice(-500)}`);
          }
          const lat = parseSockperf(r.stdout + '\n' + r.stderr);
          s.result.latency[c.key] = lat;
          log(`${label(s)} ${c.title}: p50 ${lat.p50} us, p99 ${lat.p99} us`);
          if (!s.sockperf?.running) throw new Error(`sockperf server died: ${s.sockperf?.tail(3)}`);
        } catch (e) {
          fail(s, e);
        }
      }
    }
  } finally {
    for (const s of scenarios) await s.sockperf?.stop('SIGINT');
  }
}

/** Rounds of each stream measurement; the median is reported. */
const STREAM_ROUNDS = 3;

/** Stream throughput: iperf3 client and server on CPU 0. */
async function stream(ctx: Ctx, s: Scenario): Promise<Stream> {
  const { opts } = ctx;
  const maxMs = opts.streamSeconds * 1000 + CLIENT_SLACK_MS;
  const [scmd, sargs] = inCgroupNetns(s.cgroup, s.ns, 0, iperf3ServerArgv(BACKEND, PORT));
  const server = new Background(`${label(s)} iperf3 server`, scmd, sargs, maxMs + 10_000);
  try {
    await listening(s.ns, server);
    const [cmd, args] = inCgroupNetns(s.cgroup, s.ns, 0, iperf3ClientArgv(s.host, PORT, opts.streamSeconds));
    const r = await run(cmd, args, maxMs);
    if (r.timedOut) throw new Error(`iperf3 client timed out after ${maxMs} ms`);
    return parseIperf3(r.stdout); // also reports iperf3's own error text on a non-zero exit
  } finally {
    await server.stop('SIGTERM');
  }
}

function newScenario(name: ScenarioName, parentCgroup: string, id: string, host: string): Scenario {
  const ns = `${id}-${name}`;
  const cgroup = createChildCgroup(parentCgroup, name);
  return {
    result: { name, latency: {}, evidence: {} },
    ns, cgroup, host,
    setup: async () => {
      await addNetns(ns);
      onCleanup(`netns ${ns}`, () => delNetns(ns));
    },
    evidence: async () => {},
    teardown: async () => {},
  };
}

function direct(parentCgroup: string, id: string): Scenario {
  return newScenario('direct', parentCgroup, id, BACKEND);
}

function iptablesDnat(parentCgroup: string, id: string): Scenario {
  // A namespace of its own: iptables turns conntrack on for the whole namespace.
  const s = newScenario('iptables', parentCgroup, id, VIP);
  const base = s.setup;
  s.setup = async () => {
    await base();
    const rule = ['-d', VIP, '-p', 'tcp', '--dport', String(PORT), '-j', 'DNAT', '--to-destination', `${BACKEND}:${PORT}`];
    await runChecked(...inNetns(s.ns, ['iptables', '-t', 'nat', '-A', 'OUTPUT', ...rule]), 10_000);
  };
  s.evidence = async () => {
    // One packet per new connection goes through the nat table.
    const listing = await runChecked(...inNetns(s.ns, ['iptables', '-t', 'nat', '-L', 'OUTPUT', '-v', '-x', '-n']), 10_000);
    const hit = listing.split('\n').find((l) => /\bDNAT\b/.test(l));
    s.result.evidence.dnatConnections = hit ? Number(hit.trim().split(/\s+/)[0]) : 0;
  };
  return s;
}

function sockmesh(ctx: Ctx, parentCgroup: string, id: string, workDir: string): Scenario {
  const s = newScenario('sockmesh', parentCgroup, id, VIP);
  const bpffs = join('/sys/fs/bpf', id);
  let agent: Agent | undefined;
  let monitor: Background | undefined;
  const base = s.setup;
  s.setup = async () => {
    if (!existsSync(agentEntry(ctx.opts.root))) {
      s.result.skipped = `agent not built (${agentEntry(ctx.opts.root)} missing)`;
      return;
    }
    await base();
    // Registered before the start, so that Ctrl-C during start-up still unpins and detaches.
    onCleanup('agent pins and links', () => cleanupAgent(ctx.opts.root, bpffs, s.cgroup));
    agent = await Agent.start({
      root: ctx.opts.root, cgroupDir: s.cgroup, bpffsDir: bpffs, configPath: join(workDir, 'agent.yaml'),
      vip: VIP, port: PORT, backend: BACKEND,
    });
    log(`${label(s)}: agent datapath ready (cgroup ${s.cgroup}, pins ${bpffs})`);
    if (ctx.opts.monitor) {
      // One live reader, unfiltered and not rate limited, reading everything for the whole scenario.
      monitor = new Background('meshctl monitor', process.execPath,
        [join(ctx.opts.root, 'dist', 'cli', 'meshctl.js'), '--bpffs', bpffs, 'monitor', '--json', '--rate', '0'], 60 * 60_000);
      await monitor.waitForLine((l) => l.includes('"type":"summary"'), 10_000);
      log(`${label(s)}: meshctl monitor --json attached`);
    }
  };
  s.evidence = async () => {
    if (!agent?.running) throw new Error('the agent exited during the measurement');
    for (const [k, v] of Object.entries(await agent.counters())) s.result.evidence[k] = v;
  };
  s.teardown = async () => {
    if (monitor) {
      // its last word (stderr): 'N events shown; kernel sampling ...'
      const r = await monitor.stop('SIGINT');
      const shown = /(\d+) events shown/.exec(r.stderr);
      s.result.evidence.monitorEvents = shown ? Number(shown[1]) : -1;
      log(`${label(s)}: meshctl monitor: ${r.stderr.trim().split('\n').pop()}`);
      monitor = undefined;
    }
    await agent?.stop();
    agent = undefined;
  };
  return s;
}

/**
 * (d): the client connects to the server directly, as in (a), but the scenario's cgroup carries the
 * minimal sockmap program, so every send goes through the kernel's sockmap redirect and nothing else.
 */
function minimalSockmap(ctx: Ctx, parentCgroup: string, id: string, workDir: string): Scenario {
  const s = newScenario('minimal', parentCgroup, id, BACKEND);
  const prog = new MinimalSockmap(join('/sys/fs/bpf', `${id}-min`), s.cgroup);
  const base = s.setup;
  s.setup = async () => {
    const unavailable = await minimalUnavailable(ctx.opts.root);
    if (unavailable) {
      s.result.skipped = unavailable;
      return;
    }
    await base();
    const object = await compileMinimal(ctx.opts.root, workDir);
    // Registered before attaching, so that Ctrl-C or a failed attach still detaches and unpins.
    onCleanup('minimal sockmap link and pins', () => prog.detach());
    prog.attach(object);
    log(`${label(s)}: attached (cgroup ${s.cgroup}, pins ${prog.pinRoot})`);
  };
  s.evidence = async () => {
    const c = prog.counters();
    s.result.evidence.redirects = c.redirects;
    s.result.evidence.misses = c.misses;
  };
  s.teardown = async () => prog.detach();
  return s;
}

const preflight = (): Promise<void> =>
  requireRootAndTools('datapath', 'netns, cgroups, BPF', ['ip', 'ss', 'taskset', 'sockperf', 'iperf3', 'iptables', 'bpftool']);

/** Runs the bench, prints the table, the checks and (last line) the JSON; returns the exit status. */
export async function runDatapath(opts: DatapathOptions): Promise<number> {
  await preflight();
  const { id, cgroup, workDir } = benchWorkspace();

  const ctx: Ctx = { opts, cpuCount: availableParallelism() };
  log(`cgroup ${cgroup}; sockperf -t ${opts.seconds}, iperf3 -t ${opts.streamSeconds}`);
  if (ctx.cpuCount < 2) log('only one CPU: cross-CPU latency is not measured');

  const makers: Record<ScenarioName, () => Scenario> = {
    direct: () => direct(cgroup, id),
    sockmesh: () => sockmesh(ctx, cgroup, id, workDir),
    iptables: () => iptablesDnat(cgroup, id),
    minimal: () => minimalSockmap(ctx, cgroup, id, workDir),
  };
  const scenarios = SCENARIO_NAMES.filter((n) => opts.scenarios.includes(n)).map((n) => makers[n]());
  const started = Date.now();
  for (const s of scenarios) {
    try {
      await s.setup();
      if (s.result.skipped) log(`${label(s)} skipped: ${s.result.skipped}`);
    } catch (e) {
      fail(s, e);
    }
  }
  await latency(ctx, scenarios);
  // Streams are short and noisy on a shared 2-vCPU VM: several rounds, the scenarios interleaved in each so that
  // a burst of load elsewhere hits all of them alike, and the median round is the result.
  const streams = new Map<Scenario, Stream[]>();
  for (let round = 0; round < STREAM_ROUNDS; round++) {
    for (const s of active(scenarios)) {
      try {
        const r = await stream(ctx, s);
        streams.set(s, [...(streams.get(s) ?? []), r]);
        log(`${label(s)} stream round ${round + 1}/${STREAM_ROUNDS}: ${r.gbps.toFixed(2)} Gbit/s`);
      } catch (e) {
        fail(s, e);
      }
    }
  }
  for (const [s, runs] of streams) {
    if (s.result.skipped || s.result.error) continue;
    const sorted = [...runs].sort((x, y) => x.gbps - y.gbps);
    s.result.stream = sorted[Math.floor(sorted.length / 2)]!;
  }
  for (const s of scenarios) {
    try {
      if (!s.result.skipped) await s.evidence();
      await s.teardown();
    } catch (e) {
      fail(s, e);
    }
  }
  if (!interrupted()) log(`measured in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const results = scenarios.map((s) => s.result);

  const signal = interrupted();
  if (signal) throw new Error(`interrupted by ${signal}: no results`);

  const checks = targetChecks(results);
  const info = referenceInfo(results);
  const out: string[] = [];
  out.push(`datapath bench — kernel ${release()}, ${ctx.cpuCount} CPUs (${cpus()[0]?.model ?? '?'})`);
  out.push(`latency: sockperf TCP ping-pong, one-way µs (RTT/2), ${opts.seconds} s per case; ` +
    `same-CPU = client and server on CPU 0, cross-CPU = client CPU 1, server CPU 0`);
  out.push(`stream: iperf3 TCP, median of ${STREAM_ROUNDS} interleaved ${opts.streamSeconds} s runs, client and server on CPU 0`);
  out.push('');
  out.push(formatTable(results));
  out.push('');
  for (const r of results) {
    const ev = Object.entries(r.evidence).filter(([, v]) => v !== 0);
    if (ev.length) out.push(`${SCENARIO_LABELS[r.name]} evidence: ${ev.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  const b = results.find((r) => r.name === 'sockmesh');
  if (b && !b.error && !b.skipped && !(b.evidence.SM_G_REDIRECT > 0)) {
    out.push('WARNING: (b) made no sockmap redirects: the fast path was not used');
  }
  const d = results.find((r) => r.name === 'minimal');
  if (d && !d.error && !d.skipped && !(d.evidence.redirects > 0)) {
    out.push('WARNING: (d) made no sockmap redirects: it measured plain loopback, not the kernel sockmap path');
  }
  if (opts.monitor && b && !b.error && !b.skipped) out.push(`INFO (b) ran with one meshctl monitor --json attached (${b.evidence.monitorEvents ?? '?'} events read)`);
  for (const c of checks) out.push(`${c.status} ${c.name}: ${c.detail}`);
  for (const i of info) out.push(`INFO ${i.detail}`);
  process.stdout.write(out.join('\n') + '\n');

  const failedRun = results.some((r) => r.error || r.skipped);
  const missed = checks.some((c) => c.status === 'FAIL');
  const summary = {
    bench: 'datapath',
    kernel: release(),
    cpus: ctx.cpuCount,
    cgroup2: cgroup2Mount(),
    units: { latency: 'us one-way (sockperf RTT/2)', stream: 'Gbit/s' },
    seconds: opts.seconds,
    streamSeconds: opts.streamSeconds,
    ...(opts.monitor ? { monitor: 'one meshctl monitor --json reader attached during (b)' } : {}),
    scenarios: Object.fromEntries(
      results.map((r) => [r.name, {
        ...(r.skipped ? { skipped: r.skipped } : {}),
        ...(r.error ? { error: r.error } : {}),
        latency: Object.fromEntries(
          Object.entries(r.latency).map(([k, l]) => [k, { p50: l.p50, p99: l.p99, avg: l.avg, observations: l.observations }]),
        ),
        ...(r.stream ? { streamGbps: round(r.stream.gbps, 3), retransmits: r.stream.retransmits } : {}),
        evidence: r.evidence,
      }]),
    ),
    ratiosToDirect: ratiosToDirect(results),
    // (b) over (d): sockmesh's cost on top of the kernel's sockmap path (context, not a target)
    sockmeshToMinimal: Object.fromEntries(info.filter((i) => i.ratio !== undefined).map((i) => [i.key, round(i.ratio!, 3)])),
    checks: checks.map((c) => ({ name: c.name, status: c.status, ratio: c.ratio === undefined ? null : round(c.ratio, 3), limit: c.limit })),
    ok: !failedRun && !missed,
  };
  await emitResult(summary, opts.chartDir);
  return failedRun ? 1 : missed ? 2 : 0;
}
