// The kubernetes bench: 10,000 Services / 100,000 endpoints (EndpointSlices) in the API-server stand-in
// (lab/kubeapi.ts, in this process), and the real agent (a child process) reading them two ways:
//  - direct:        the agent with --kubernetes (it watches and translates for its node itself);
//  - controlplane:  `sockmesh-controlplane serve --kubernetes` (a child process) watching the cluster once, the agent
//                   on --xds to it.
// Each measures (1) full sync: the objects stored in the API server (its watchers told) -> the agent's 'config
// applied' line with every service, and the kernel maps holding every frontend and backend; (2) one EndpointSlice
// change (one endpoint's address) -> the agent's 'config applied' line (logged after the kernel maps are written),
// many times, p50/p99, the last one read back from the kernel maps; (3) the agent's RSS at rest after each (and the
// control plane's). kube-proxy's default minimum sync period is 1 s: the target for a change is 50 ms. The full sync
// also reports the CPU seconds the agent and the control plane used for it (on a loaded machine wall time alone says
// little). SOCKMESH_BENCH_CP_ROOT (another build's root: its dist/ and node_modules/) and SOCKMESH_BENCH_CP_FLAGS (node
// flags, space-separated; default agent/runtime.ts CONTROLPLANE_NODE_FLAGS) run another control plane, for an A/B in
// one lock hold. SOCKMESH_BENCH_AGENT_ROOTS (`label=root,label=root`: other builds' roots, each with its dist/ and
// node_modules/) runs each scenario once per agent build, interleaved, SOCKMESH_BENCH_ROUNDS times (default 1): a
// before/after of the agent in one run, under the same load. SOCKMESH_BENCH_AGENT_FLAGS adds node flags to the agent
// (e.g. `--inspect`). SOCKMESH_BENCH_CPU_PROFILE=DIR profiles the full sync's CPU in both processes: V8's CPU profiler
// (lib/allocprof.ts, toggled by SIGUSR2 just before the objects are stored and again at the full sync's apply; not
// node's --cpu-prof, whose ticks fail the agent's BPF load), DIR/<run>-agent/1.cpuprofile and .txt, <run>-controlplane/.
// Profiled figures are not comparable to a plain run's. SOCKMESH_BENCH_LOG_DIR=DIR keeps every log line of both
// processes (DIR/<run>-<scenario>-<who>.log, pino JSON with epoch-ms times) and logs when the objects were stored:
// the full sync's timeline (the control plane's 'snapshot updated' batches against the agent's applies).
// Addresses are all in 127.0.0.0/8 and no traffic is sent; the agent is attached to a child cgroup of the bench's
// own, and everything is undone on the way out (DESIGN.md's rules).
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { availableParallelism, cpus, release } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { KubeApi, kubeconfigFor } from '../lab/kubeapi.js';
import { native } from '../agent/datapath/native.js';
import { CONTROLPLANE_NODE_FLAGS } from '../agent/runtime.js';
import type { KEndpointSlice, KService } from '../kube/types.js';
import { cleanupAgent } from './lib/agent.js';
import { cpuSeconds } from './lib/cpu.js';
import { emitResult } from './chart.js';
import { benchWorkspace, cgroup2Mount, createChildCgroup } from './lib/cgroup.js';
import { BACKEND_PORT, SERVICE_PORT, loopbackAddress, prng, type ServiceConfig } from './lib/fleet.js';
import { Background, interrupted, log, onCleanup } from './lib/proc.js';
import { round } from './lib/report.js';
import { firstApply, PinnedMaps, spawnAgent } from './xds.js';
import { changeStats, vmField } from './lib/xdsreport.js';

export type KubeScenario = 'direct' | 'controlplane';
export const KUBE_SCENARIOS: readonly KubeScenario[] = ['direct', 'controlplane'];

export interface KubeBenchOptions {
  root: string;
  services: number;
  endpointsPerService: number;
  changes: number;
  changeBudgetSeconds: number;
  restSeconds: number;
  seed: number;
  scenarios: KubeScenario[];
  chartDir: string | null;
}

// fullSyncApplies: the batches the sync took (kube/watch.ts paces them: 3-5 at load 15; unpaced it was 4-20 depending
// on how the watch events were spread in time, each costing ~100 ms more at 10,000 services)
export const KUBE_TARGETS = { fullSyncSeconds: 3, fullSyncApplies: 8, changeP99Ms: 50, agentRssMiB: 200 } as const;

interface ScenarioResult {
  scenario: KubeScenario;
  /** the agent build (SOCKMESH_BENCH_AGENT_ROOTS' label), absent: this tree's */
  variant?: string;
  applies?: number;
  fullSyncSeconds?: number;
  /** CPU seconds (all threads) from the objects stored to the full sync: the agent's, and the control plane's */
  agentCpuSyncSeconds?: number;
  controlPlaneCpuSyncSeconds?: number;
  changes: { planned: number; completed: number; p50Ms?: number; p99Ms?: number; maxMs?: number; meanMs?: number; reconcileP99Ms?: number; verified?: boolean; detail?: string };
  agentRssAfterSyncMiB?: number;
  agentRssAfterChangesMiB?: number;
  controlPlaneRssAfterSyncMiB?: number;
  controlPlaneRssAfterChangesMiB?: number;
  error?: string;
}

const START_TIMEOUT_MS = 60_000;
const SYNC_TIMEOUT_MS = 120_000;
const PROC_MAX_MS = 15 * 60_000;
const MiB = 1024 * 1024;
const NODE = 'bench-node';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nowEpochMs = () => performance.timeOrigin + performance.now();
const rssMiB = (pid: number) => vmField(readFileSync(`/proc/${pid}/status`, 'utf8')) / MiB;

/** VIPs 127.200.x.x, endpoints 127.1.x.x (as the xds bench's fleet), changed endpoints 127.160.x.x. */
function cluster(n: number, k: number): { services: KService[]; slices: KEndpointSlice[] } {
  const services: KService[] = [];
  const slices: KEndpointSlice[] = [];
  for (let i = 0; i < n; i++) {
    const ns = `ns-${i % 100}`;
    const name = `svc-${i}`;
    const vip = loopbackAddress(200, i);
    services.push({
      apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns },
      spec: { type: 'ClusterIP', clusterIP: vip, clusterIPs: [vip], ipFamilies: ['IPv4'], selector: { app: name }, ports: [{ name: 'http', port: SERVICE_PORT, protocol: 'TCP', targetPort: BACKEND_PORT }] },
    });
    slices.push(sliceOf(ns, name, Array.from({ length: k }, (_, j) => loopbackAddress(1, i * k + j))));
  }
  return { services, slices };
}

function sliceOf(ns: string, service: string, addresses: string[]): KEndpointSlice {
  return {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
    metadata: { name: `${service}-abcde`, namespace: ns, labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: BACKEND_PORT, protocol: 'TCP' }],
    endpoints: addresses.map((a) => ({ addresses: [a], conditions: { ready: true, serving: true, terminating: false }, nodeName: NODE })),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** An agent build to run: SOCKMESH_BENCH_AGENT_ROOTS' entries, or this tree's. */
interface AgentVariant { label?: string; root: string }

function agentVariants(root: string): AgentVariant[] {
  const env = process.env['SOCKMESH_BENCH_AGENT_ROOTS'];
  if (!env) return [{ root }];
  return env.split(',').filter(Boolean).map((e) => {
    const at = e.indexOf('=');
    if (at <= 0) throw new Error(`SOCKMESH_BENCH_AGENT_ROOTS: ${e}: expected label=root`);
    return { label: e.slice(0, at), root: e.slice(at + 1) };
  });
}

let runs = 0;

async function runScenario(scenario: KubeScenario, opts: KubeBenchOptions, meshCgroup: string, workDir: string, variant: AgentVariant = { root: opts.root }): Promise<ScenarioResult> {
  const res: ScenarioResult = { scenario, ...(variant.label !== undefined ? { variant: variant.label } : {}), changes: { planned: opts.changes, completed: 0 } };
  const tag = variant.label !== undefined ? `${scenario} [${variant.label}]` : scenario;
  const api = await KubeApi.start();
  onCleanup(`kubeapi (${scenario})`, () => api.close());
  const kubeconfig = join(workDir, `${scenario}.kubeconfig`);
  writeFileSync(kubeconfig, kubeconfigFor(api));
  const bpffs = join('/sys/fs/bpf', `sockmesh-bench-kube-${process.pid}-${scenario}`);
  // a run directory of its own per run: the agent keeps the last model it applied there (kubernetes-model.json) and
  // would start the next run of an A/B from it
  const runDir = join(workDir, `run-${scenario}-${++runs}`);

  let cp: Background | undefined;
  // A/B of the control plane in one lock hold: another build's (its dist/ and node_modules/) and other V8 flags
  const cpRoot = process.env['SOCKMESH_BENCH_CP_ROOT'] || opts.root;
  const cpFlags = process.env['SOCKMESH_BENCH_CP_FLAGS'] !== undefined ? process.env['SOCKMESH_BENCH_CP_FLAGS'].split(' ').filter(Boolean) : CONTROLPLANE_NODE_FLAGS;
  const agentArgs = ['--run-dir', runDir, '--event-sample', '0', '--node-id', NODE];
  // the CPU profile of the full sync (see the top): a preload in each process, a directory each
  const profileDir = process.env['SOCKMESH_BENCH_CPU_PROFILE'];
  const profiled = (who: string, root: string): string[] => {
    if (!profileDir) return [];
    const dir = join(profileDir, `${runs}-${scenario}${variant.label !== undefined ? `-${variant.label}` : ''}-${who}`);
    mkdirSync(dir, { recursive: true });
    process.env['SOCKMESH_CPU_PROFILE_DIR'] = dir; // read by the preload of the process spawned next
    return ['--import', pathToFileURL(join(root, 'dist', 'bench', 'lib', 'allocprof.js')).href];
  };
  const toggleProfiles = () => {
    if (!profileDir) return;
    for (const p of [pid, cp?.child.pid]) if (p !== undefined) process.kill(p, 'SIGUSR2');
  };
  if (scenario === 'controlplane') {
    const port = await freePort();
    cp = new Background('sockmesh control plane', process.execPath,
      [...cpFlags, ...profiled('controlplane', cpRoot), join(cpRoot, 'dist', 'controlplane', 'main.js'), 'serve', '--kubernetes', '--kubeconfig', kubeconfig, '--listen', `127.0.0.1:${port}`, '--status-listen', 'off'],
      PROC_MAX_MS);
    onCleanup('control plane process', async () => {
      if (cp!.running) await cp!.stop('SIGTERM');
    });
    agentArgs.push('--xds', `127.0.0.1:${port}`);
    if (cpRoot !== opts.root || cpFlags !== CONTROLPLANE_NODE_FLAGS) log(`controlplane: ${join(cpRoot, 'dist', 'controlplane', 'main.js')} with node flags [${cpFlags.join(' ')}]`);
  } else agentArgs.push('--kubernetes', '--kubeconfig', kubeconfig);

  const agentFlags = [...(process.env['SOCKMESH_BENCH_AGENT_FLAGS'] ?? '').split(' ').filter(Boolean), ...profiled('agent', variant.root)];
  const { agent, applied, pid } = spawnAgent(variant.root, `sockmesh agent (${tag})`, bpffs, meshCgroup, agentArgs, PROC_MAX_MS, agentFlags);
  // SOCKMESH_BENCH_LOG_DIR=DIR: every stdout line of the agent and the control plane, to DIR/<run>-<who>.log (the
  // timeline of a full sync: which response arrived and was applied when, against the control plane's batches)
  const logDir = process.env['SOCKMESH_BENCH_LOG_DIR'];
  if (logDir) {
    mkdirSync(logDir, { recursive: true });
    const keep = (who: string, p: Background) => {
      const file = join(logDir, `${runs}-${scenario}${variant.label !== undefined ? `-${variant.label}` : ''}-${who}.log`);
      writeFileSync(file, '');
      p.onLine((line) => appendFileSync(file, line + '\n'));
    };
    keep('agent', agent);
    if (cp) keep('controlplane', cp);
  }
  let maps: PinnedMaps | undefined;
  try {
    // ---- the agent syncs to the empty cluster ----
    await firstApply(agent, applied, START_TIMEOUT_MS, 'the empty cluster', cp ? `\ncontrol plane:\n${cp.tail()}` : '');
    maps = new PinnedMaps(bpffs);
    log(`${tag}: agent pid ${pid} synced to the empty cluster; RSS ${rssMiB(pid).toFixed(1)} MiB`);

    // ---- (1) full sync ----
    const { services, slices } = cluster(opts.services, opts.endpointsPerService);
    applied.drain();
    toggleProfiles();
    if (profileDir) await sleep(200); // the profilers started (an inspector call each)
    const agentCpu0 = cpuSeconds(pid);
    const cpCpu0 = cp ? cpuSeconds(cp.child.pid!) : undefined;
    const t0 = nowEpochMs();
    api.load('services', services as never[]);
    api.load('endpointslices', slices as never[]);
    const loadedMs = nowEpochMs() - t0;
    if (logDir) log(`${tag}: the objects were stored from ${t0.toFixed(0)} (epoch ms) in ${loadedMs.toFixed(0)} ms`);
    const endpoints = opts.services * opts.endpointsPerService;
    const deadline = performance.now() + SYNC_TIMEOUT_MS;
    for (let applies = 1; ; applies++) {
      const ev = await applied.next(Math.max(0, deadline - performance.now()));
      if (!ev) throw new Error(`the kernel maps did not hold the cluster within ${SYNC_TIMEOUT_MS / 1000} s\n${agent.tail()}`);
      if (ev.services !== opts.services) continue; // a part of it on the way (slices still arriving)
      const c = maps.counts();
      if (c.services === opts.services && c.backends === endpoints) {
        res.fullSyncSeconds = (ev.time - t0) / 1000;
        res.applies = applies;
        // read now, a few ms after the apply: the control plane is idle by then, the agent just finished
        const cpuSince = (p: number | undefined, from: number | undefined) => (p === undefined || from === undefined ? undefined : (cpuSeconds(p) ?? from) - from);
        res.agentCpuSyncSeconds = cpuSince(pid, agentCpu0);
        res.controlPlaneCpuSyncSeconds = cpuSince(cp?.child.pid, cpCpu0);
        toggleProfiles();
        log(`${tag}: full sync ${res.fullSyncSeconds.toFixed(3)} s (${applies} applies; objects stored in ${loadedMs.toFixed(0)} ms; ` +
          `CPU agent ${res.agentCpuSyncSeconds?.toFixed(2)} s${cp ? `, control plane ${res.controlPlaneCpuSyncSeconds?.toFixed(2)} s` : ''}; ` +
          `sm_services ${c.services}, sm_backends ${c.backends}; last reconcile ${ev.ms.toFixed(0)} ms)`);
        break;
      }
    }
    await sleep(opts.restSeconds * 1000);
    res.agentRssAfterSyncMiB = rssMiB(pid);
    if (cp) res.controlPlaneRssAfterSyncMiB = rssMiB(cp.child.pid!);

    // ---- (2) one EndpointSlice change at a time ----
    applied.drain();
    const rand = prng(opts.seed);
    const latencies: number[] = [];
    const reconcile: number[] = [];
    let last: ServiceConfig | undefined;
    const current = slices.map((s) => s.endpoints!.map((e) => e.addresses[0]!));
    const budgetEnd = performance.now() + opts.changeBudgetSeconds * 1000;
    for (let n = 0; n < opts.changes && !interrupted(); n++) {
      const i = Math.floor(rand() * opts.services);
      const j = Math.floor(rand() * opts.endpointsPerService);
      const addrs = current[i]!.slice();
      addrs[j] = loopbackAddress(160, n);
      current[i] = addrs;
      const svc = services[i]!;
      const next = sliceOf(svc.metadata.namespace!, svc.metadata.name!, addrs); // built before t0: not the system's work
      const ts = performance.now();
      if (ts >= budgetEnd) break;
      api.put('endpointslices', next as never);
      const ev = await applied.next(budgetEnd - ts);
      if (!ev) {
        if (!agent.running) throw new Error(`the agent exited during the changes\n${agent.tail()}`);
        log(`${tag}: change ${n} not applied before the ${opts.changeBudgetSeconds} s budget ran out`);
        break;
      }
      latencies.push(ev.at - ts);
      reconcile.push(ev.ms);
      last = { name: svc.metadata.name!, vips: svc.spec!.clusterIPs!, ports: [{ port: SERVICE_PORT, protocol: 'tcp' }], algorithm: 'random', backends: addrs.map((a) => ({ address: a, port: BACKEND_PORT })) };
    }
    const c = res.changes;
    c.completed = latencies.length;
    Object.assign(c, changeStats(latencies, reconcile));
    if (last) {
      await sleep(200);
      const v = maps.verify(last, false);
      c.verified = v.ok;
      c.detail = v.detail;
      log(`${tag}: kernel check of the last change: ${v.ok ? 'ok' : 'FAILED'}: ${v.detail}`);
    }
    log(`${tag}: changes ${c.completed}/${c.planned}, p50 ${c.p50Ms?.toFixed(2)} ms, p99 ${c.p99Ms?.toFixed(2)} ms, max ${c.maxMs?.toFixed(2)} ms`);
    await sleep(opts.restSeconds * 1000);
    res.agentRssAfterChangesMiB = rssMiB(pid);
    if (cp) res.controlPlaneRssAfterChangesMiB = rssMiB(cp.child.pid!);
  } catch (e) {
    if (interrupted()) throw e;
    res.error = (e as Error).message;
    log(`${tag}: error: ${res.error}`);
  } finally {
    maps?.close();
    if (agent.running) await agent.stop('SIGTERM');
    if (cp?.running) await cp.stop('SIGTERM');
    await cleanupAgent(opts.root, bpffs, meshCgroup);
    await api.close();
  }
  return res;
}

interface Check { name: string; status: 'PASS' | 'FAIL' | 'SKIP'; value?: number; unit: string; limit: number }

function checksOf(r: ScenarioResult): Check[] {
  const who = r.variant !== undefined ? `${r.scenario} [${r.variant}]` : r.scenario;
  const le = (name: string, value: number | undefined, limit: number, unit: string): Check =>
    value === undefined ? { name: `${who}: ${name}`, status: 'SKIP', unit, limit } : { name: `${who}: ${name}`, status: value <= limit ? 'PASS' : 'FAIL', value, unit, limit };
  const change = le('one slice change p99', r.changes.p99Ms, KUBE_TARGETS.changeP99Ms, 'ms');
  // fewer changes than planned, or one the kernel does not hold, is no pass
  if (change.status === 'PASS' && (r.changes.completed < r.changes.planned || r.changes.verified === false)) change.status = 'FAIL';
  return [
    le('full sync', r.fullSyncSeconds, KUBE_TARGETS.fullSyncSeconds, 's'),
    le('full sync applies', r.applies, KUBE_TARGETS.fullSyncApplies, 'applies'),
    change,
    le('agent RSS after sync', r.agentRssAfterSyncMiB, KUBE_TARGETS.agentRssMiB, 'MiB'),
    le('agent RSS after the changes', r.agentRssAfterChangesMiB, KUBE_TARGETS.agentRssMiB, 'MiB'),
  ];
}

const f = (v: number | undefined, unit = '') => (v === undefined ? '-' : `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)}${unit}`);

export async function runKubernetes(opts: KubeBenchOptions): Promise<number> {
  if (process.getuid?.() !== 0) throw new Error('the kubernetes bench needs root (cgroups, BPF)');
  native();
  const { cgroup, workDir } = benchWorkspace();
  const meshCgroup = createChildCgroup(cgroup, 'mesh');

  const results: ScenarioResult[] = [];
  const variants = agentVariants(opts.root);
  const rounds = Number(process.env['SOCKMESH_BENCH_ROUNDS'] ?? 1);
  if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 20)) throw new Error(`SOCKMESH_BENCH_ROUNDS: ${process.env['SOCKMESH_BENCH_ROUNDS']}: expected 1-20`);
  for (let round = 0; round < rounds; round++) {
    for (const s of opts.scenarios) {
      for (const v of variants) {
        if (interrupted()) break;
        results.push(await runScenario(s, opts, meshCgroup, workDir, v));
      }
    }
  }
  if (interrupted()) throw new Error(`interrupted by ${interrupted()}: no results`);

  const checks = results.flatMap(checksOf);
  const rows: string[][] = [['scenario', 'full sync (applies)', 'sync CPU agent / control plane', 'slice change p50 / p99 / max', 'agent reconcile p99', 'agent RSS sync / changes', 'control plane RSS sync / changes']];
  for (const r of results) {
    const c = r.changes;
    rows.push([r.variant !== undefined ? `${r.scenario} [${r.variant}]` : r.scenario, `${f(r.fullSyncSeconds, ' s')} (${r.applies ?? '-'})`, `${f(r.agentCpuSyncSeconds)} / ${r.scenario === 'controlplane' ? f(r.controlPlaneCpuSyncSeconds) : '-'} s`, `${f(c.p50Ms)} / ${f(c.p99Ms)} / ${f(c.maxMs)} ms (${c.completed}/${c.planned})`, f(c.reconcileP99Ms, ' ms'),
      `${f(r.agentRssAfterSyncMiB)} / ${f(r.agentRssAfterChangesMiB)} MiB`, r.scenario === 'controlplane' ? `${f(r.controlPlaneRssAfterSyncMiB)} / ${f(r.controlPlaneRssAfterChangesMiB)} MiB` : '-']);
  }
  const widths = rows[0]!.map((_, k) => Math.max(...rows.map((r) => r[k]!.length)));
  const out = [`kubernetes bench — kernel ${release()}, ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}); ${opts.services} services, ` +
    `${opts.services * opts.endpointsPerService} endpoints in lab/kubeapi.ts`, ''];
  for (const r of rows) out.push(r.map((x, k) => x.padEnd(widths[k]!)).join('  ').trimEnd());
  out.push('');
  for (const r of results) if (r.error) out.push(`ERROR ${r.scenario}${r.variant !== undefined ? ` [${r.variant}]` : ''}: ${r.error.split('\n')[0]}`);
  for (const k of checks) out.push(`${k.status} ${k.name}: ${k.value === undefined ? 'not measured' : `${f(k.value)} ${k.unit} <= ${k.limit} ${k.unit}`}`);
  process.stdout.write(out.join('\n') + '\n');

  const o = (v: number | undefined, d: number) => (v === undefined ? null : round(v, d));
  await emitResult({
    bench: 'kubernetes', kernel: release(), cpus: availableParallelism(), cgroup2: cgroup2Mount(), seed: opts.seed,
    services: opts.services, endpoints: opts.services * opts.endpointsPerService,
    // one key per run: the scenario's name alone as before, `scenario [variant] #round` in an A/B or repeated run
    scenarios: Object.fromEntries(results.map((r, i) => [variants.length === 1 && rounds === 1 ? r.scenario : `${r.scenario}${r.variant !== undefined ? ` [${r.variant}]` : ''} #${Math.floor(i / (variants.length * opts.scenarios.length)) + 1}`, {
      fullSyncSeconds: o(r.fullSyncSeconds, 3),
      applies: r.applies ?? null,
      syncCpuSeconds: { agent: o(r.agentCpuSyncSeconds, 2), ...(r.scenario === 'controlplane' ? { controlPlane: o(r.controlPlaneCpuSyncSeconds, 2) } : {}) },
      change: { p50Ms: o(r.changes.p50Ms, 3), p99Ms: o(r.changes.p99Ms, 3), maxMs: o(r.changes.maxMs, 3), reconcileP99Ms: o(r.changes.reconcileP99Ms, 3), completed: r.changes.completed, planned: r.changes.planned, verified: r.changes.verified ?? null },
      agentRssMiB: { sync: o(r.agentRssAfterSyncMiB, 1), changes: o(r.agentRssAfterChangesMiB, 1) },
      ...(r.scenario === 'controlplane' ? { controlPlaneRssMiB: { sync: o(r.controlPlaneRssAfterSyncMiB, 1), changes: o(r.controlPlaneRssAfterChangesMiB, 1) } } : {}),
      ...(r.error ? { error: r.error.split('\n')[0] } : {}),
    }])),
    checks: checks.map((c) => ({ name: c.name, status: c.status, value: o(c.value, 3), unit: c.unit, limit: c.limit })),
    ok: results.every((r) => !r.error) && checks.every((c) => c.status === 'PASS'),
  }, opts.chartDir);
  if (results.some((r) => r.error)) return 1;
  return checks.every((c) => c.status === 'PASS') ? 0 : 2;
}
