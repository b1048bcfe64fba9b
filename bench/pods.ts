// The pods benchmark: two pods on the node lab (lab/lab.ts), a client and a server, and the same workloads through
//  (a) the server pod's IP, no mesh;
//  (b) a sockmesh VIP, the agent with its sockmap fast path on the lab's meshed cgroup;
//  (c) the VIP through kube-proxy's iptables DNAT on the node, with the conntrack it switches on;
//  (d) the pod IP under a minimal sockmap program (bench/minimal/): the kernel's own sockmap path, the reference
//      for (b) and the figure that says whether a target is within this kernel's reach;
//  (e) a sockmesh VIP with --no-sockmap: connect-time balancing only (what Cilium's socket LB gives).
// Each scenario is a lab of its own, and each lab's node is a network namespace of its own (nodeNetns): kube-proxy's
// rules and the conntrack they turn on live in (c)'s node, never in the machine's namespace, and no scenario carries
// conntrack or TIME_WAIT state into another. Everything is removed on the way out, also on error or Ctrl-C.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, release } from 'node:os';
import { join } from 'node:path';
import { Lab, type LabPod } from '../lab/lab.js';
import { emitResult } from './chart.js';
import { podsChart } from './lib/podschart.js';
import { Agent, agentEntry, benchConfig, cleanupAgent } from './lib/agent.js';
import { benchWorkspace, cgroup2Mount, createChildCgroup } from './lib/cgroup.js';
import { iperf3ClientArgv, parseIperf3 } from './lib/iperf3.js';
import { parseWrk, wrkArgv } from './lib/loadgen.js';
import { compileMinimal, MinimalSockmap, minimalUnavailable } from './lib/minimal.js';
import { waitListening } from './lib/netns.js';
import { nginxArgv, nginxConfig } from './lib/nginx.js';
import {
  addCounters, addSample, checkLines, evidenceLines, formatPodTable, LATENCY_METRICS, newResult, parseRedisBenchmark,
  podChecks, podJsonScenarios, POD_LABELS, POD_LETTERS, POD_SCENARIOS, podRatiosToDirect, redisBenchmarkArgv,
  THROUGHPUT_METRICS, type PodResult, type PodScenario, type Workload,
} from './lib/podsreport.js';
import { Background, CLIENT_SLACK_MS, interrupted, log, onCleanup, requireRootAndTools, run, runChecked } from './lib/proc.js';
import { LATENCY_CASES, round } from './lib/report.js';
import { parseSockperf, sockperfClientArgv, sockperfServerArgv } from './lib/sockperf.js';

export interface PodsOptions {
  root: string;
  /** sockperf run per case, seconds */
  seconds: number;
  /** iperf3 run, seconds */
  streamSeconds: number;
  /** wrk run, seconds */
  httpSeconds: number;
  /** redis-benchmark requests per test (GET, SET); the run is also bounded in time */
  redisRequests: number;
  /** wrk connections and redis-benchmark clients */
  connections: number;
  /** interleaved rounds; medians are reported */
  rounds: number;
  scenarios: PodScenario[];
  /** where the chart goes (bench/chart.ts); null: none */
  chartDir: string | null;
}

/** The services: one VIP each (as a ClusterIP), the same port on the server pod. */
const SERVICES = [
  { name: 'sockperf', vip: Lab.vip4(1), port: 11111 },
  { name: 'iperf3', vip: Lab.vip4(2), port: 5201 },
  { name: 'nginx', vip: Lab.vip4(3), port: 8080 },
  { name: 'redis', vip: Lab.vip4(4), port: 6379 },
] as const;
type Service = (typeof SERVICES)[number]['name'];
const svc = (n: Service) => SERVICES.find((s) => s.name === n)!;

const LISTEN_TIMEOUT_MS = 10_000;
/** The server CPU; clients run there too (same-CPU latency, iperf3) or on the other one (split latency, wrk, redis). */
const SERVER_CPU = '0';
const OTHER_CPU = '1';
/** After the agent is ready: time for it to find the pods of its cgroup tree (pod discovery follows within 1 s). */
const DISCOVERY_MS = 1500;

interface Ctx { opts: PodsOptions; workDir: string; benchCgroup: string; id: string; twoCpus: boolean; maxMs: number }

interface Scenario {
  result: PodResult;
  lab?: Lab;
  /** where the client connects for each service: the server pod's IP, or the VIP */
  host(s: Service): string;
  /** the scenario's own part (agent, iptables, sockmap program) once the lab and the servers are up */
  setup(): Promise<void>;
  /** the counters that move with traffic (sm_global, minimal's redirects), read around each run */
  counters?(): Promise<Record<string, number>>;
  /** final facts for the report */
  evidence(): Promise<void>;
}

const label = (s: Scenario) => POD_LABELS[s.result.name];
const active = (all: Scenario[]) => all.filter((s) => !s.result.skipped);
const usable = (all: Scenario[], w: Workload) => active(all).filter((s) => !s.result.errors[w]);

/** Run argv in a pod, pinned to cpus. */
function inPod(pod: LabPod, cpus: string, argv: string[]): [string, string[]] {
  return pod.argv('taskset', ['-c', cpus, ...argv]);
}

/** The server pod's servers, each pinned to the server CPU, alive at most the bench's length. */
async function startServers(ctx: Ctx, s: Scenario): Promise<void> {
  const lab = s.lab!;
  const server = lab.pod('server');
  const ip = server.v4!;
  const dir = join(ctx.workDir, s.result.name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'nginx.conf'), nginxConfig(dir, [[ip, svc('nginx').port]], 'pods bench'));
  const argvs: Array<[string, string[]]> = [
    ['sockperf', sockperfServerArgv(ip, svc('sockperf').port)],
    // no -1: one server for every round's test, one after the other
    ['iperf3', ['iperf3', '-s', '-B', ip, '-p', String(svc('iperf3').port)]],
    ['nginx', nginxArgv(dir, join(dir, 'nginx.conf'))],
    ['redis', ['redis-server', '--bind', ip, '--port', String(svc('redis').port), '--save', '', '--appendonly', 'no',
      '--protected-mode', 'no', '--daemonize', 'no', '--dir', dir]],
  ];
  for (const [name, argv] of argvs) {
    const [cmd, args] = inPod(server, SERVER_CPU, argv);
    const bg = new Background(`${label(s)} ${name} server`, cmd, args, ctx.maxMs);
    const port = svc(name as Service).port;
    try {
      await waitListening(server.ns, port, LISTEN_TIMEOUT_MS, () => bg.running);
    } catch (e) {
      await bg.stop();
      throw new Error(`${bg.name}: ${(e as Error).message}: ${bg.tail(3).replace(/\s*\n\s*/g, ' | ')}`);
    }
  }
}

function newScenario(name: PodScenario): Scenario {
  const s: Scenario = {
    result: newResult(name),
    host: (n) => s.lab!.pod('server').v4!,
    setup: async () => {},
    evidence: async () => {},
  };
  return s;
}

/** The agent on the lab's meshed cgroup, in the lab's node namespace (a DaemonSet with hostNetwork). */
function sockmesh(ctx: Ctx, name: 'sockmesh' | 'nosockmap'): Scenario {
  const s = newScenario(name);
  let agent: Agent | undefined;
  s.host = (n) => svc(n).vip;
  s.setup = async () => {
    if (!existsSync(agentEntry(ctx.opts.root))) {
      s.result.skipped = `agent not built (${agentEntry(ctx.opts.root)} missing)`;
      return;
    }
    const lab = s.lab!;
    const bpffs = join('/sys/fs/bpf', `${ctx.id}-${name}`);
    const runDir = join(ctx.workDir, `${name}-run`);
    const cgroupDir = lab.state.meshedCgroup;
    // Registered before the start, so that Ctrl-C during start-up still unpins and detaches.
    onCleanup(`${name} agent pins and links`, () => cleanupAgent(ctx.opts.root, bpffs, cgroupDir));
    agent = await Agent.start({
      root: ctx.opts.root, cgroupDir, bpffsDir: bpffs, configPath: join(ctx.workDir, `${name}.yaml`),
      vip: '', port: 0, backend: '',
      configText: podsAgentConfig(lab.pod('server').v4!),
      extraArgs: ['--run-dir', runDir, '--metrics-listen', 'off', ...(name === 'nosockmap' ? ['--no-sockmap'] : [])],
      launch: (argv) => lab.onNode(argv),
    });
    onCleanup(`${name} agent`, () => agent?.stop());
    log(`${label(s)}: agent ready (cgroup ${cgroupDir}, node netns ${lab.nodeNs}, pins ${bpffs})`);
    await new Promise((r) => setTimeout(r, DISCOVERY_MS));
  };
  s.counters = async () => {
    if (!agent?.running) throw new Error(`the agent exited: ${agent?.tail(3)}`);
    return agent.counters();
  };
  s.evidence = async () => {
    if (agent) Object.assign(s.result.evidence, await agent.counters());
  };
  return s;
}

/** The agent's config: one service per workload, its VIP -> the server pod. */
export function podsAgentConfig(serverIp: string): string {
  return 'services:\n' + SERVICES.map((x) => benchConfig(x.vip, x.port, serverIp, { name: x.name }).replace(/^services:\n/, '')).join('');
}

/**
 * kube-proxy's iptables mode as it programs a ClusterIP with one endpoint: KUBE-SERVICES from PREROUTING (pod
 * traffic) and OUTPUT (the node's own), a KUBE-SVC chain per service, a KUBE-SEP chain per endpoint with the DNAT.
 */
export function kubeProxyRules(serverIp: string): string[][] {
  const rules: string[][] = [
    ['-N', 'KUBE-SERVICES'],
    ['-A', 'PREROUTING', '-m', 'comment', '--comment', 'kubernetes service portals', '-j', 'KUBE-SERVICES'],
    ['-A', 'OUTPUT', '-m', 'comment', '--comment', 'kubernetes service portals', '-j', 'KUBE-SERVICES'],
  ];
  for (const x of SERVICES) {
    const id = x.name.toUpperCase();
    rules.push(
      ['-N', `KUBE-SVC-${id}`], ['-N', `KUBE-SEP-${id}`],
      ['-A', 'KUBE-SERVICES', '-d', `${x.vip}/32`, '-p', 'tcp', '-m', 'tcp', '--dport', String(x.port), '-j', `KUBE-SVC-${id}`],
      ['-A', `KUBE-SVC-${id}`, '-j', `KUBE-SEP-${id}`],
      ['-A', `KUBE-SEP-${id}`, '-p', 'tcp', '-m', 'tcp', '-j', 'DNAT', '--to-destination', `${serverIp}:${x.port}`],
    );
  }
  return rules;
}

function kubeProxy(): Scenario {
  const s = newScenario('iptables');
  s.host = (n) => svc(n).vip;
  s.setup = async () => {
    const lab = s.lab!;
    // As on a real node, the pod's default route takes a ClusterIP to the node, where the DNAT is.
    const client = lab.pod('client');
    await runChecked('ip', ['-n', client.ns, 'route', 'add', `${Lab.vip4(0)}/24`, 'via', lab.nodeV4, 'dev', 'eth0', 'onlink'], 10_000);
    for (const rule of kubeProxyRules(lab.pod('server').v4!)) await runChecked(...lab.onNode(['iptables', '-t', 'nat', ...rule]), 10_000);
    log(`${label(s)}: kube-proxy rules in node netns ${lab.nodeNs}`);
  };
  s.evidence = async () => {
    const lab = s.lab!;
    // One packet per new connection goes through the nat table.
    const listing = await runChecked(...lab.onNode(['iptables', '-t', 'nat', '-L', '-v', '-x', '-n']), 10_000);
    s.result.evidence.dnatConnections = listing.split('\n').filter((l) => /\bDNAT\b/.test(l))
      .reduce((sum, l) => sum + Number(l.trim().split(/\s+/)[0]), 0);
    const ct = await run(...lab.onNode(['cat', '/proc/sys/net/netfilter/nf_conntrack_count']), 10_000);
    if (ct.code === 0) s.result.evidence.conntrackEntries = Number(ct.stdout.trim());
  };
  return s;
}

/** (d): the pod IP as in (a), with the minimal sockmap program on the lab's meshed cgroup. */
function minimalSockmap(ctx: Ctx): Scenario {
  const s = newScenario('minimal');
  let prog: MinimalSockmap | undefined;
  s.setup = async () => {
    const unavailable = await minimalUnavailable(ctx.opts.root);
    if (unavailable) {
      s.result.skipped = unavailable;
      return;
    }
    const object = await compileMinimal(ctx.opts.root, ctx.workDir);
    const p = new MinimalSockmap(join('/sys/fs/bpf', `${ctx.id}-min`), s.lab!.state.meshedCgroup);
    prog = p;
    // Registered before attaching, so that Ctrl-C or a failed attach still detaches and unpins.
    onCleanup('minimal sockmap link and pins', () => p.detach());
    p.attach(object);
    log(`${label(s)}: attached (cgroup ${p.cgroupDir}, pins ${p.pinRoot})`);
  };
  s.counters = async () => ({ ...prog!.counters() });
  s.evidence = async () => {
    if (prog) Object.assign(s.result.evidence, prog.counters());
  };
  return s;
}

/** One run of a workload in a scenario: its figures into the result, its counter deltas to the workload. */
async function measure(ctx: Ctx, s: Scenario, w: Workload, fn: (client: LabPod) => Promise<void>): Promise<void> {
  if (interrupted()) return;
  try {
    const before = s.counters ? await s.counters() : undefined;
    await fn(s.lab!.pod('client'));
    if (before && s.counters) addCounters(s.result, w, before, await s.counters());
  } catch (e) {
    s.result.errors[w] = (e as Error).message.split('\n')[0]!;
    if (!interrupted()) log(`${label(s)} ${w} failed: ${(e as Error).message}`);
  }
}

/** A client in the client pod, bounded in time; its stdout (and stderr, for tools that report there). */
async function clientRun(client: LabPod, cpus: string, argv: string[], maxMs: number, what: string): Promise<{ stdout: string; stderr: string }> {
  const [cmd, args] = inPod(client, cpus, argv);
  const r = await run(cmd, args, maxMs);
  if (r.code !== 0) {
    const why = r.timedOut ? `timed out after ${maxMs} ms` : `exit ${r.code ?? r.signal}`;
    throw new Error(`${what}: ${why}: ${(r.stderr || r.stdout).trim().slice(-300)}`);
  }
  return r;
}

/** Each workload of one round, the scenarios in an order rotated per round and workload. */
async function round1(ctx: Ctx, scenarios: Scenario[], r: number): Promise<void> {
  const { opts } = ctx;
  let turn = r;
  const rotated = (list: Scenario[]) => {
    const k = turn++ % Math.max(1, list.length);
    return [...list.slice(k), ...list.slice(0, k)];
  };
  for (const c of LATENCY_CASES) {
    if (c.crossCpu && !ctx.twoCpus) continue; // reported as '-'
    for (const s of rotated(usable(scenarios, 'sockperf'))) {
      await measure(ctx, s, 'sockperf', async (client) => {
        const out = await clientRun(client, c.crossCpu ? OTHER_CPU : SERVER_CPU,
          sockperfClientArgv(s.host('sockperf'), svc('sockperf').port, opts.seconds, c.bytes),
          opts.seconds * 1000 + CLIENT_SLACK_MS, `sockperf ${c.title}`);
        const lat = parseSockperf(out.stdout + '\n' + out.stderr);
        addSample(s.result, `${c.key}.p50`, lat.p50);
        addSample(s.result, `${c.key}.p99`, lat.p99);
        log(`round ${r + 1} ${label(s)} ${c.title}: p50 ${lat.p50} us, p99 ${lat.p99} us`);
      });
    }
  }
  for (const s of rotated(usable(scenarios, 'iperf3'))) {
    await measure(ctx, s, 'iperf3', async (client) => {
      const out = await clientRun(client, SERVER_CPU, iperf3ClientArgv(s.host('iperf3'), svc('iperf3').port, opts.streamSeconds),
        opts.streamSeconds * 1000 + CLIENT_SLACK_MS, 'iperf3');
      const st = parseIperf3(out.stdout);
      addSample(s.result, 'streamGbps', st.gbps);
      log(`round ${r + 1} ${label(s)} iperf3: ${st.gbps.toFixed(2)} Gbit/s`);
    });
  }
  for (const s of rotated(usable(scenarios, 'wrk'))) {
    await measure(ctx, s, 'wrk', async (client) => {
      const url = `http://${s.host('nginx')}:${svc('nginx').port}/`;
      const out = await clientRun(client, OTHER_CPU, wrkArgv(url, opts.connections, opts.httpSeconds),
        opts.httpSeconds * 1000 + CLIENT_SLACK_MS, 'wrk');
      const h = parseWrk(out.stdout);
      if (h.errors > 0) throw new Error(`wrk: ${h.errorDetail}`);
      addSample(s.result, 'httpRps', h.rps);
      addSample(s.result, 'httpP99', h.p99);
      log(`round ${r + 1} ${label(s)} wrk: ${h.rps.toFixed(0)} req/s, p99 ${h.p99} us`);
    });
  }
  for (const s of rotated(usable(scenarios, 'redis'))) {
    await measure(ctx, s, 'redis', async (client) => {
      const out = await clientRun(client, OTHER_CPU,
        redisBenchmarkArgv(s.host('redis'), svc('redis').port, opts.connections, opts.redisRequests), 60_000, 'redis-benchmark');
      const rb = parseRedisBenchmark(out.stdout);
      addSample(s.result, 'redisGetRps', rb.getRps);
      addSample(s.result, 'redisSetRps', rb.setRps);
      log(`round ${r + 1} ${label(s)} redis: GET ${rb.getRps.toFixed(0)} SET ${rb.setRps.toFixed(0)} req/s`);
    });
  }
}

const preflight = (): Promise<void> => requireRootAndTools('pods', 'netns, veths, cgroups, BPF',
  ['ip', 'ss', 'taskset', 'nsenter', 'sockperf', 'iperf3', 'wrk', 'nginx', 'redis-server', 'redis-benchmark', 'iptables', 'bpftool']);

/** Runs the bench, prints the tables, the checks and (last line) the JSON; returns the exit status. */
export async function runPods(opts: PodsOptions): Promise<number> {
  await preflight();
  const { id, cgroup, workDir } = benchWorkspace();
  const twoCpus = availableParallelism() >= 2;
  const perRound = LATENCY_CASES.length * (opts.seconds * 1000 + 2000) + (opts.streamSeconds + opts.httpSeconds) * 1000 + 30_000;
  const ctx: Ctx = { opts, workDir, benchCgroup: cgroup, id, twoCpus, maxMs: opts.scenarios.length * opts.rounds * perRound + 120_000 };
  log(`cgroup ${cgroup}; ${opts.rounds} rounds; sockperf -t ${opts.seconds}, iperf3 -t ${opts.streamSeconds}, wrk -d ${opts.httpSeconds}, ` +
    `redis-benchmark -n ${opts.redisRequests}; every server and client bounded (${Math.round(ctx.maxMs / 1000)} s at most)`);
  if (!twoCpus) log('only one CPU: split-CPU latency is not measured, wrk and redis-benchmark share the CPU');

  const makers: Record<PodScenario, () => Scenario> = {
    direct: () => newScenario('direct'),
    sockmesh: () => sockmesh(ctx, 'sockmesh'),
    iptables: () => kubeProxy(),
    minimal: () => minimalSockmap(ctx),
    nosockmap: () => sockmesh(ctx, 'nosockmap'),
  };
  const scenarios = POD_SCENARIOS.filter((n) => opts.scenarios.includes(n)).map((n) => makers[n]());
  const started = Date.now();
  for (const s of scenarios) {
    if (interrupted()) break;
    try {
      const meshed = createChildCgroup(cgroup, s.result.name);
      const prefix = `pb${process.pid}${POD_LETTERS[s.result.name]}`;
      // down() before the bench cgroup goes (cleanups run last-registered first); also after a failed up()
      onCleanup(`lab ${prefix}`, () => Lab.attach(prefix)?.down());
      s.lab = await Lab.up({
        meshedCgroup: meshed, prefix, nodeNetns: true,
        pods: [{ name: 'client', v6: false }, { name: 'server', v6: false }],
      });
      // Each pod's infrastructure process (the pause container's part): the pod exists while it runs, whoever
      // else comes and goes, so the agent finds the pod's namespace in its cgroup tree before the first client runs.
      for (const p of s.lab.pods) new Background(`${label(s)} ${p.name} pause`, ...p.argv('sleep', [String(Math.ceil(ctx.maxMs / 1000))]), ctx.maxMs);
      await startServers(ctx, s);
      await s.setup();
      if (s.result.skipped) log(`${label(s)} skipped: ${s.result.skipped}`);
    } catch (e) {
      s.result.skipped = `setup failed: ${(e as Error).message.split('\n')[0]}`;
      if (!interrupted()) log(`${label(s)} setup failed: ${(e as Error).message}`);
    }
  }
  for (let r = 0; r < opts.rounds && !interrupted(); r++) await round1(ctx, scenarios, r);
  for (const s of active(scenarios)) {
    try {
      await s.evidence();
    } catch (e) {
      log(`${label(s)} evidence: ${(e as Error).message}`);
    }
  }
  const signal = interrupted();
  if (signal) throw new Error(`interrupted by ${signal}: no results`);
  log(`measured in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const results = scenarios.map((s) => s.result);
  const checks = podChecks(results);
  const out: string[] = [];
  out.push(`pods bench — kernel ${release()}, ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}); two pods (client, server) ` +
    `on routed veths, each scenario a lab with a node network namespace of its own`);
  out.push(`medians of ${opts.rounds} interleaved rounds; servers on CPU ${SERVER_CPU}; latency: sockperf TCP ping-pong, one-way µs ` +
    `(RTT/2), ${opts.seconds} s per case, same-CPU = client on CPU ${SERVER_CPU} too, split = client on CPU ${OTHER_CPU}`);
  out.push(`iperf3 ${opts.streamSeconds} s, client on CPU ${SERVER_CPU}; wrk -t1 -c${opts.connections} ${opts.httpSeconds} s against nginx ` +
    `(1 worker); redis-benchmark -c${opts.connections} -n ${opts.redisRequests} GET/SET against redis-server; clients on CPU ${OTHER_CPU}`);
  out.push('');
  out.push(formatPodTable(results, LATENCY_METRICS, 9));
  out.push('');
  out.push(formatPodTable(results, THROUGHPUT_METRICS, 11));
  out.push('');
  out.push(...evidenceLines(results));
  out.push(...checkLines(checks));
  process.stdout.write(out.join('\n') + '\n');

  const failedRun = results.some((r) => r.skipped || Object.keys(r.errors).length > 0);
  const missed = checks.some((c) => c.status === 'FAIL');
  const summary = {
    bench: 'pods',
    kernel: release(),
    cpus: availableParallelism(),
    cgroup2: cgroup2Mount(),
    node: 'a network namespace of its own per scenario (lab nodeNetns)',
    units: { latency: 'us one-way (sockperf RTT/2)', streamGbps: 'Gbit/s', httpRps: 'req/s', httpP99: 'us', redisGetRps: 'req/s', redisSetRps: 'req/s' },
    seconds: opts.seconds, streamSeconds: opts.streamSeconds, httpSeconds: opts.httpSeconds,
    redisRequests: opts.redisRequests, connections: opts.connections, rounds: opts.rounds,
    scenarios: podJsonScenarios(results),
    ratiosToDirect: podRatiosToDirect(results),
    checks: checks.map((c) => ({
      name: c.name, status: c.status, ratio: c.value === undefined ? null : round(c.value, 3), limit: c.limit,
      ...(c.reach?.value !== undefined ? { minimal: round(c.reach.value, 3), ...(c.reach.reachable !== undefined ? { reachable: c.reach.reachable } : {}) } : {}),
      ...(c.why ? { why: c.why } : {}),
    })),
    ok: !failedRun && !missed,
  };
  await emitResult(summary, opts.chartDir, podsChart(summary));
  return failedRun ? 1 : missed ? 2 : 0;
}
