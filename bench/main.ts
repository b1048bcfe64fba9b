// `npm run bench -- <name> [options]`: runs one named benchmark.
// Exit status: 0 = ran and met its targets, 1 = could not run (or a scenario failed/was skipped),
// 2 = ran but missed a target.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchJson, writeChart, type BenchJson, type Chart } from './chart.js';
import { podsChart } from './lib/podschart.js';
import { runDatapath } from './datapath.js';
import { runL7 } from './l7.js';
import { runPods } from './pods.js';
import { runMesh } from './mesh.js';
import { MESH_LETTERS, MESH_SCENARIOS, type MeshScenario } from './lib/meshreport.js';
import { POD_LETTERS, POD_SCENARIOS, type PodScenario } from './lib/podsreport.js';
import { L7_LETTERS, L7_SCENARIOS, type L7Scenario } from './lib/l7report.js';
import { runXds } from './xds.js';
import { KUBE_SCENARIOS, runKubernetes, type KubeScenario } from './kubernetes.js';
import { installSignalCleanup, runCleanups } from './lib/proc.js';
import { SCENARIO_NAMES, type ScenarioName } from './lib/report.js';

const USAGE = `usage: npm run bench -- <name> [options]

every bench ends with its results as one JSON line (stdout) and a chart of them (SVG):
  --chart DIR          write DIR/<name>.svg and DIR/<name>.json (default: bench-charts/ in the project root)
  --no-chart           no chart
  chart FILE [--chart DIR]   the chart of a saved result line (FILE: the JSON, '-' for stdin)

benchmarks:
  datapath   latency (sockperf) and throughput (iperf3): loopback vs sockmesh vs iptables DNAT,
             with a minimal sockmap program as the kernel's own ceiling

datapath options:
  --seconds N          sockperf run per case (default 5)
  --stream-seconds N   each of the 3 iperf3 runs (default 3)
  --only a,b,c,d       scenarios to run: direct,sockmesh,iptables,minimal (default all)
  --monitor            attach one \`meshctl monitor --json\` reader to the agent during (b) (what a monitor costs)

  l7         HTTP/1.1 (wrk) and HTTP/2 (h2load) requests per second and latency: direct vs the sockmesh L7 proxy
             vs one haproxy vs two chained haproxy (a sidecar pair); a Node.js TCP relay and a 2-thread haproxy
             for calibration

l7 options:
  --duration N         seconds per measured run (default 5)
  --connections N      requests in flight (wrk connections; h2load connections x 8 streams) (default 32)
  --repetitions N      interleaved runs per scenario and protocol; medians are reported (default 3)
  --quick              --duration 2 --repetitions 1, 1 s warm-up, no (f)
  --only a,b,...       scenarios: direct,sockmesh,haproxy,chain,relay,haproxy2 or a,b,c,d,e,f (default all)
  --pin                client on CPU 1, backend and proxies on CPU 0 (default: nothing pinned, see README)
  --agent-flags "F"    extra node flags for (b)'s agent after its own (e.g. "--max-semi-space-size=16"): A/B runs
                       of V8 settings against the same baselines
  --alloc-profile DIR  (b)'s allocations sampled (V8's heap profiler, freed objects included) during each
                       measured run: DIR/<n>.heapprofile + DIR/<n>.txt (top allocating functions); slows (b)
  --cpu-profile DIR    (b)'s CPU time sampled (V8's CPU profiler, 100 µs) during each measured run:
                       DIR/<n>.cpuprofile + DIR/<n>.txt (functions by self time); slows (b)

  xds        the agent on xDS against the control plane at fleet scale: full sync time, one endpoint
             change to the kernel map (p50/p99 over many), agent RSS at rest

xds options:
  --services N         services (default 10000)
  --backends N         backends per service (default 10)
  --changes N          endpoint changes, one after the other (default 1000)
  --change-budget N    seconds the changes may take in all before the bench gives up (default 60)
  --rest N             seconds at rest before each RSS reading (default 3)
  --seed N             seed of the random change sequence (default 1)

  kubernetes 10,000 Services / 100,000 endpoints in lab/kubeapi.ts -> the agent (--kubernetes, direct) and
             -> serve --kubernetes -> the agent on --xds: full sync, one EndpointSlice change to the kernel map
             (p50/p99), agent and control plane RSS

kubernetes options:
  --services N         services (default 10000)
  --endpoints N        endpoints per service, one slice each (default 10)
  --changes N          EndpointSlice changes, one after the other (default 300)
  --change-budget N    seconds the changes may take in all (default 60)
  --rest N             seconds at rest before each RSS reading (default 3)
  --seed N             seed of the random change sequence (default 1)
  --only a,b           scenarios: direct,controlplane (default both)

  pods       two pods on the node lab (each scenario a lab with a node namespace of its own): the pod IP vs a
             sockmesh VIP vs kube-proxy's iptables DNAT vs a minimal sockmap program vs sockmesh --no-sockmap;
             sockperf 64 B / 16 KiB (same CPU and split), iperf3, wrk against nginx, redis-benchmark GET/SET

pods options:
  --seconds N          sockperf run per case (default 3)
  --stream-seconds N   iperf3 run (default 3)
  --http-seconds N     wrk run (default 3)
  --redis-requests N   redis-benchmark requests per test (default 50000)
  --connections N      wrk connections and redis-benchmark clients (default 32)
  --rounds N           interleaved rounds; medians are reported (default 3)
  --only a,b,...       scenarios: direct,sockmesh,iptables,minimal,nosockmap or a,b,c,d,e (default all)

  mesh       across two nodes of the multi-node lab (issue 13): (a) pod IP, no mesh; (b) sockmesh VIP, mTLS tunnel;
             (c) a haproxy sidecar pair with mTLS; (d) sockmesh VIP, mtls: off; (t) the tunnel alone (agent/tunnel in
             bench processes, no kernel hand-over; information); iperf3 one stream, sockperf ping-pong 64 B, wrk
             HTTP/1.1 against nginx; CPU per process group, the mesh's CPU per Gbit/s and RSS, tunnel handshakes;
             µs of CPU per 64 B round trip per process group, and the mesh's syscalls per round trip (strace -c)

mesh options:
  --seconds N          sockperf run (default 3)
  --stream-seconds N   iperf3 run (default 3)
  --http-seconds N     wrk run (default 3)
  --connections N      wrk connections (default 32)
  --rounds N           interleaved rounds; medians are reported (default 3)
  --syscall-seconds N  after the rounds, a sockperf run of N s per scenario with strace -c attached to the mesh's
                       processes: syscalls per round trip, information, not timed (default 2; 0: none)
  --quick              1 s runs, 1 round, 1 s warm-up (a smoke run, about 40 s)
  --only a,b,...       scenarios: direct,sockmesh,sidecars,plain,tunnel or a,b,c,d,t (default all)
`;

/** The project root, found from this file (dist/bench/ when compiled, bench/ under ts-node). */
function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'sockmesh') return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find the sockmesh project root');
}

function positiveInt(flag: string, v: string | undefined): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0 || n > 600) throw new Error(`${flag} needs a whole number of seconds (1..600)`);
  return n;
}

/** --chart DIR / --no-chart, taken out of argv (every bench has them). */
function chartOption(argv: string[]): { chartDir: string | null; rest: string[] } {
  let chartDir: string | null = join(projectRoot(), 'bench-charts');
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--chart') {
      const dir = argv[++i];
      if (!dir || dir.startsWith('--')) throw new Error('--chart needs a directory');
      chartDir = resolve(dir);
    } else if (argv[i] === '--no-chart') chartDir = null;
    else rest.push(argv[i]!);
  }
  return { chartDir, rest };
}

/** Benches whose chart is made outside bench/chart.ts (which cannot import them: they import it); the rest use its adapters. */
const OWN_CHARTS: Record<string, (r: BenchJson) => Chart> = { pods: podsChart };

/** `chart FILE`: the chart of a saved result line (the last line of a bench's output, or a file holding it). */
async function chart(argv: string[], chartDir: string | null): Promise<number> {
  const [file, ...extra] = argv;
  if (!file || extra.length) throw new Error(`chart needs one FILE (a bench's JSON result line, '-' for stdin)\n\n${USAGE}`);
  if (chartDir === null) throw new Error('chart with --no-chart: nothing to do');
  const text = readFileSync(file === '-' ? 0 : file, 'utf8').trim();
  const last = text.slice(text.lastIndexOf('\n') + 1);
  const r = benchJson(JSON.parse(last));
  const path = await writeChart(r, chartDir, OWN_CHARTS[r.bench]?.(r));
  process.stderr.write(`bench: chart written to ${path}\n`);
  return 0;
}

async function datapath(argv: string[], chartDir: string | null): Promise<number> {
  let seconds = 5, streamSeconds = 3, monitor = false;
  let scenarios: ScenarioName[] = [...SCENARIO_NAMES];
  const aliases: Record<string, ScenarioName> = { a: 'direct', b: 'sockmesh', c: 'iptables', d: 'minimal' };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--seconds') seconds = positiveInt(flag, argv[++i]);
    else if (flag === '--stream-seconds') streamSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--monitor') monitor = true;
    else if (flag === '--only') {
      scenarios = (argv[++i] ?? '').split(',').map((s) => {
        const n = aliases[s] ?? s;
        if (!(SCENARIO_NAMES as readonly string[]).includes(n)) throw new Error(`unknown scenario ${s}`);
        return n as ScenarioName;
      });
    } else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  return runDatapath({ root: projectRoot(), seconds, streamSeconds, scenarios, chartDir, monitor });
}

function count(flag: string, v: string | undefined, max: number, min = 1): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${flag} needs a whole number (${min}..${max})`);
  return n;
}

async function xds(argv: string[], chartDir: string | null): Promise<number> {
  const opts = {
    root: projectRoot(), services: 10_000, backendsPerService: 10, changes: 1000, changeBudgetSeconds: 60, restSeconds: 3, seed: 1, chartDir,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--services') opts.services = count(flag, argv[++i], 50_000);
    else if (flag === '--backends') opts.backendsPerService = count(flag, argv[++i], 100);
    else if (flag === '--changes') opts.changes = count(flag, argv[++i], 50_000);
    else if (flag === '--change-budget') opts.changeBudgetSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--rest') opts.restSeconds = count(flag, argv[++i], 60, 0);
    else if (flag === '--seed') opts.seed = count(flag, argv[++i], 2 ** 31, 0);
    else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  return runXds(opts);
}

async function kubernetes(argv: string[], chartDir: string | null): Promise<number> {
  const opts = {
    root: projectRoot(), services: 10_000, endpointsPerService: 10, changes: 300, changeBudgetSeconds: 60, restSeconds: 3, seed: 1,
    scenarios: [...KUBE_SCENARIOS] as KubeScenario[], chartDir,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--services') opts.services = count(flag, argv[++i], 50_000);
    else if (flag === '--endpoints') opts.endpointsPerService = count(flag, argv[++i], 100);
    else if (flag === '--changes') opts.changes = count(flag, argv[++i], 50_000);
    else if (flag === '--change-budget') opts.changeBudgetSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--rest') opts.restSeconds = count(flag, argv[++i], 60, 0);
    else if (flag === '--seed') opts.seed = count(flag, argv[++i], 2 ** 31, 0);
    else if (flag === '--only') {
      opts.scenarios = (argv[++i] ?? '').split(',').map((s) => {
        if (!(KUBE_SCENARIOS as readonly string[]).includes(s)) throw new Error(`--only: unknown scenario ${s} (${KUBE_SCENARIOS.join(', ')})`);
        return s as KubeScenario;
      });
    } else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  return runKubernetes(opts);
}

async function l7(argv: string[], chartDir: string | null): Promise<number> {
  let duration = 5, connections = 32, repetitions = 3, warmup = 2, pin = false, quick = false;
  let only: L7Scenario[] | undefined;
  let allocProfile: string | undefined;
  let cpuProfile: string | undefined;
  let agentFlags: string[] = [];
  const byLetter = Object.fromEntries(Object.entries(L7_LETTERS).map(([n, l]) => [l, n])) as Record<string, L7Scenario>;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--duration') duration = positiveInt(flag, argv[++i]);
    else if (flag === '--connections') connections = count(flag, argv[++i], 1000);
    else if (flag === '--repetitions') repetitions = count(flag, argv[++i], 20);
    else if (flag === '--quick') quick = true;
    else if (flag === '--pin') pin = true;
    else if (flag === '--alloc-profile') {
      if (!argv[i + 1]) throw new Error('--alloc-profile needs a directory');
      allocProfile = resolve(argv[++i]!);
    } else if (flag === '--cpu-profile') {
      if (!argv[i + 1]) throw new Error('--cpu-profile needs a directory');
      cpuProfile = resolve(argv[++i]!);
    } else if (flag === '--agent-flags') {
      agentFlags = (argv[++i] ?? '').split(/\s+/).filter((f) => f !== '');
      const bad = agentFlags.find((f) => !f.startsWith('--'));
      if (agentFlags.length === 0 || bad !== undefined) throw new Error(`--agent-flags: node flags starting with -- expected, got ${JSON.stringify(bad ?? '')}`);
    } else if (flag === '--only') {
      only = (argv[++i] ?? '').split(',').map((s) => {
        const n = byLetter[s] ?? s;
        if (!(L7_SCENARIOS as readonly string[]).includes(n)) throw new Error(`--only: unknown scenario ${s} (${L7_SCENARIOS.join(', ')})`);
        return n as L7Scenario;
      });
    } else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  if (quick) {
    if (!argv.includes('--duration')) duration = 2;
    if (!argv.includes('--repetitions')) repetitions = 1;
    warmup = 1;
  }
  const scenarios = only ?? L7_SCENARIOS.filter((n) => !(quick && n === 'haproxy2'));
  return runL7({ root: projectRoot(), duration, connections, repetitions, warmup, scenarios, pin, chartDir, allocProfile, cpuProfile, agentFlags });
}

async function pods(argv: string[], chartDir: string | null): Promise<number> {
  const opts = {
    root: projectRoot(), seconds: 3, streamSeconds: 3, httpSeconds: 3, redisRequests: 50_000, connections: 32, rounds: 3,
    scenarios: [...POD_SCENARIOS] as PodScenario[], chartDir,
  };
  const byLetter = Object.fromEntries(Object.entries(POD_LETTERS).map(([n, l]) => [l, n])) as Record<string, PodScenario>;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--seconds') opts.seconds = positiveInt(flag, argv[++i]);
    else if (flag === '--stream-seconds') opts.streamSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--http-seconds') opts.httpSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--redis-requests') opts.redisRequests = count(flag, argv[++i], 10_000_000, 1000);
    else if (flag === '--connections') opts.connections = count(flag, argv[++i], 1000);
    else if (flag === '--rounds') opts.rounds = count(flag, argv[++i], 20);
    else if (flag === '--only') {
      opts.scenarios = (argv[++i] ?? '').split(',').map((s) => {
        const n = byLetter[s] ?? s;
        if (!(POD_SCENARIOS as readonly string[]).includes(n)) throw new Error(`--only: unknown scenario ${s} (${POD_SCENARIOS.join(', ')})`);
        return n as PodScenario;
      });
    } else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  return runPods(opts);
}

async function mesh(argv: string[], chartDir: string | null): Promise<number> {
  const opts = {
    root: projectRoot(), seconds: 3, streamSeconds: 3, httpSeconds: 3, connections: 32, rounds: 3, warmup: 2, syscallSeconds: 2,
    scenarios: [...MESH_SCENARIOS] as MeshScenario[], chartDir,
  };
  const byLetter = Object.fromEntries(Object.entries(MESH_LETTERS).map(([n, l]) => [l, n])) as Record<string, MeshScenario>;
  const given = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    given.add(flag);
    if (flag === '--seconds') opts.seconds = positiveInt(flag, argv[++i]);
    else if (flag === '--stream-seconds') opts.streamSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--http-seconds') opts.httpSeconds = positiveInt(flag, argv[++i]);
    else if (flag === '--connections') opts.connections = count(flag, argv[++i], 1000);
    else if (flag === '--rounds') opts.rounds = count(flag, argv[++i], 20);
    else if (flag === '--syscall-seconds') opts.syscallSeconds = count(flag, argv[++i], 60, 0);
    else if (flag === '--quick') { /* below, after the explicit flags */ }
    else if (flag === '--only') {
      opts.scenarios = (argv[++i] ?? '').split(',').map((s) => {
        const n = byLetter[s] ?? s;
        if (!(MESH_SCENARIOS as readonly string[]).includes(n)) throw new Error(`--only: unknown scenario ${s} (${MESH_SCENARIOS.join(', ')} or ${Object.values(MESH_LETTERS).join(',')})`);
        return n as MeshScenario;
      });
    } else throw new Error(`unknown option ${flag}\n\n${USAGE}`);
  }
  if (given.has('--quick')) {
    // a smoke run: what the flags given explicitly say stays
    for (const [flag, key] of [['--seconds', 'seconds'], ['--stream-seconds', 'streamSeconds'], ['--http-seconds', 'httpSeconds'], ['--rounds', 'rounds']] as const) {
      if (!given.has(flag)) opts[key] = 1;
    }
    opts.warmup = 1;
  }
  return runMesh(opts);
}

const benches: Record<string, (argv: string[], chartDir: string | null) => Promise<number>> = { datapath, l7, xds, kubernetes, pods, mesh, chart };

async function main(): Promise<number> {
  const [name, ...rest] = process.argv.slice(2);
  if (!name || name === '-h' || name === '--help') {
    process.stdout.write(USAGE);
    return name ? 0 : 1;
  }
  const bench = benches[name];
  if (!bench) {
    process.stderr.write(`unknown benchmark ${name}\n\n${USAGE}`);
    return 1;
  }
  installSignalCleanup();
  try {
    const { chartDir, rest: args } = chartOption(rest);
    return await bench(args, chartDir);
  } finally {
    await runCleanups();
  }
}

main().then(
  (status) => process.exit(status),
  async (e: Error) => {
    process.stderr.write(`bench: ${e.message}\n`);
    await runCleanups();
    process.exit(1);
  },
);
