// The xDS bench: the real agent (a child process on --xds) against the real control plane (in this process), at
// fleet scale (default 10,000 services, 100,000 endpoints), measuring
//  (1) full sync: the server sends the full fleet (setModel has built it and written it to the stream) -> the kernel
//      maps hold every frontend and backend (the measure); the server's build time is reported beside it,
//  (2) one endpoint change, many times in a row: setModel -> the agent's 'config applied' line (logged after the
//      kernel maps are written), the last change read back from the kernel maps,
//  (3) the agent's RSS at rest after (1) and after (2).
// The agent is attached only to a child cgroup of the bench's own cgroup (nothing runs in it: no traffic is sent),
// and everything is undone on the way out, also on error or Ctrl-C.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { startControlPlaneFromModel, type RunningControlPlane } from '../controlplane/server.js';
import { PROTO, STRUCTS, decodeBackend, decodeService, serviceKey } from '../agent/datapath/abi.js';
import { native } from '../agent/datapath/native.js';
import { RETIRE_MS } from '../agent/datapath/reconcile.js';
import { agentEntry, cleanupAgent } from './lib/agent.js';
import { emitResult } from './chart.js';
import { cgroup2Mount, createChildCgroup, createCgroup, removeCgroup } from './lib/cgroup.js';
import { BACKEND_PORT, Fleet, SERVICE_PORT, changedPort, prng, type ServiceConfig } from './lib/fleet.js';
import { Background, interrupted, log, onCleanup } from './lib/proc.js';
import { AGENT_NODE_FLAGS } from '../agent/runtime.js';
import {
  changeStats, formatXdsTable, parseConfigApplied, percentile, vmField, xdsChecks, xdsSummary, type ConfigApplied, type XdsResults,
} from './lib/xdsreport.js';

export interface XdsOptions {
  root: string;
  services: number;
  backendsPerService: number;
  changes: number;
  /** the change series gives up after this long and reports how many completed */
  changeBudgetSeconds: number;
  /** idle time before each RSS reading */
  restSeconds: number;
  seed: number;
  /** where the chart goes (null: none) */
  chartDir: string | null;
}

const START_TIMEOUT_MS = 30_000;
const SYNC_TIMEOUT_MS = 60_000;
const AGENT_MAX_MS = 10 * 60_000;
const MiB = 1024 * 1024;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nowEpochMs = () => performance.timeOrigin + performance.now();

/** A 'config applied' line with the time this process read it. */
interface Applied extends ConfigApplied {
  /** performance.now() when the line arrived */
  at: number;
}

/** Every 'config applied' line of the agent, in order, and a way to wait for the next one. */
export class AppliedLog {
  private readonly seen: Applied[] = [];
  private cursor = 0;
  private wake: (() => void) | undefined;

  constructor(private readonly agent: Background) {
    agent.onLine((line) => {
      const ev = parseConfigApplied(line);
      if (!ev) return;
      this.seen.push({ ...ev, at: performance.now() });
      this.wake?.();
    });
    void agent.exited.then(() => this.wake?.());
  }

  /** The next line not yet taken, or undefined after timeoutMs (or when the agent has exited). */
  async next(timeoutMs: number): Promise<Applied | undefined> {
    const deadline = performance.now() + timeoutMs;
    while (this.cursor >= this.seen.length) {
      const left = deadline - performance.now();
      if (left <= 0 || !this.agent.running) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
    return this.seen[this.cursor++];
  }

  /** Forget lines not yet taken (from before the step that is about to start). */
  drain(): void {
    this.cursor = this.seen.length;
  }
}

/** Read-only fds on the agent's pinned maps, opened once. */
export class PinnedMaps {
  readonly services: number;
  readonly backends: number;
  private readonly n = native();

  constructor(bpffs: string) {
    this.services = this.n.objGet(join(bpffs, 'sm_services'));
    try {
      this.backends = this.n.objGet(join(bpffs, 'sm_backends'));
    } catch (e) {
      this.n.close(this.services);
      throw e;
    }
  }

  counts(): { services: number; backends: number } {
    return { services: this.n.mapKeys(this.services).length, backends: this.n.mapKeys(this.backends).length };
  }

  /**
   * Does the kernel hold the change? The frontend VIP:port must be in sm_services, and its service's backends in
   * sm_backends must be the config's (address, port) pairs: the changed port present at once; with `exact`, the old
   * one gone too, which is only true once the replaced table that still names it has been reaped (RETIRE_MS after the
   * change: make-before-break). (MapReader.frontends() answers this too, but it matches every backend against every
   * frontend: quadratic, far too slow at 10,000 x 100,000.)
   */
  verify(cfg: ServiceConfig, exact: boolean): { ok: boolean; detail: string } {
    const v = this.n.mapLookup(this.services, serviceKey({ addr: cfg.vips[0]!, port: SERVICE_PORT, proto: PROTO.tcp }));
    if (!v) return { ok: false, detail: `frontend ${cfg.vips[0]}:${SERVICE_PORT}/tcp is not in sm_services` };
    const svc = decodeService(v);
    const idAt = STRUCTS.sm_backend.fields.find((f) => f.name === 'service_id')!.offset;
    const dump = this.n.mapDump(this.backends);
    const have = dump.values
      .filter((b) => b.readUInt32LE(idAt) === svc.service_id)
      .map((b) => decodeBackend(b))
      .map((b) => `${b.addr}:${b.port}`)
      .sort();
    const want = cfg.backends.map((b) => `${b.address}:${b.port}`).sort();
    const changed = cfg.backends.filter((b) => b.port !== BACKEND_PORT).map((b) => `${b.address}:${b.port}`);
    const ok = exact ? have.length === want.length && have.every((x, i) => x === want[i]) : want.every((x) => have.includes(x));
    return {
      ok,
      detail: ok
        ? `${cfg.name} (${cfg.vips[0]}:${SERVICE_PORT}, service id ${svc.service_id}) has its ${have.length} backends in sm_backends, ` +
          `changed: ${changed.join(' ')}`
        : `${cfg.name}: sm_backends holds [${have.join(' ')}], the config says [${want.join(' ')}]`,
    };
  }

  close(): void {
    this.n.close(this.services);
    this.n.close(this.backends);
  }
}

/**
 * The agent as a child process with `args` (after its --cgroup and --bpffs), and its 'config applied' lines. Its
 * pins and links are cleaned up on the way out (registered before the start, so that Ctrl-C during start-up still
 * unpins and detaches), and it is stopped with SIGTERM before that (the global cleanup would only SIGKILL it).
 */
export function spawnAgent(root: string, what: string, bpffs: string, meshCgroup: string, args: string[], maxMs: number, nodeFlags: readonly string[] = []): { agent: Background; applied: AppliedLog; pid: number } {
  onCleanup(`${what}: pins and links`, () => cleanupAgent(root, bpffs, meshCgroup));
  const agent = new Background(what, process.execPath, [...AGENT_NODE_FLAGS, ...nodeFlags, agentEntry(root), '--cgroup', meshCgroup, '--bpffs', bpffs, ...args], maxMs);
  onCleanup(`${what}: process`, async () => {
    if (agent.running) await agent.stop('SIGTERM');
  });
  return { agent, applied: new AppliedLog(agent), pid: agent.child.pid! };
}

/** The agent's first 'config applied' line (of `state`), or an error with the end of its output. */
export async function firstApply(agent: Background, applied: AppliedLog, timeoutMs: number, state: string, more = ''): Promise<ConfigApplied> {
  const first = await applied.next(timeoutMs);
  if (!first) {
    const why = agent.running ? `did not apply ${state} within ${timeoutMs / 1000} s` : 'exited during start-up';
    throw new Error(`the agent ${why}\n${agent.tail()}${more}`);
  }
  return first;
}

function rssBytes(pid: number, field = 'VmRSS'): number {
  return vmField(readFileSync(`/proc/${pid}/status`, 'utf8'), field);
}

async function preflight(root: string): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the xds bench needs root (cgroups, BPF)');
  if (!existsSync(agentEntry(root))) throw new Error(`agent not built (${agentEntry(root)} missing): run npm run build`);
  native(); // throws naming the path when the addon is not built
}

/** Runs the bench, prints the table and (last line) the JSON; returns the exit status. */
export async function runXds(opts: XdsOptions): Promise<number> {
  await preflight(opts.root);
  const id = `sockmesh-bench-xds-${process.pid}`;
  const cgroup = createCgroup(id);
  onCleanup(`cgroup ${cgroup}`, () => removeCgroup(cgroup));
  const meshCgroup = createChildCgroup(cgroup, 'mesh');
  const workDir = mkdtempSync(join(tmpdir(), `${id}-`));
  onCleanup(`dir ${workDir}`, () => rmSync(workDir, { recursive: true, force: true }));
  const bpffs = join('/sys/fs/bpf', id);

  const results: XdsResults = {
    services: opts.services,
    endpoints: opts.services * opts.backendsPerService,
    changes: { planned: opts.changes, completed: 0, budgetSeconds: opts.changeBudgetSeconds },
  };

  let t = performance.now();
  const fleet = new Fleet(opts.services, opts.backendsPerService);
  log(`fleet: ${opts.services} services, ${fleet.endpoints} endpoints, validated in ${((performance.now() - t) / 1000).toFixed(2)} s`);

  // The control plane serves an empty state first: the agent syncs to it, then the full fleet arrives as one change.
  const cpLog = pino({ level: 'warn', base: { source: 'controlplane' } }, pino.destination(2));
  const cp: RunningControlPlane = await startControlPlaneFromModel({ services: [] }, { listen: '127.0.0.1:0', log: cpLog });
  onCleanup('control plane', () => cp.close());
  log(`control plane on 127.0.0.1:${cp.port}`);

  const { agent, applied, pid } = spawnAgent(opts.root, 'sockmesh agent', bpffs, meshCgroup,
    ['--xds', `127.0.0.1:${cp.port}`, '--run-dir', join(workDir, 'run'), '--event-sample', '0'], AGENT_MAX_MS);

  let maps: PinnedMaps | undefined;
  try {
    // ---- the agent syncs to the empty state ----
    const first = await firstApply(agent, applied, START_TIMEOUT_MS, 'the empty xDS state');
    if (first.why !== 'xds' || first.services !== 0) throw new Error(`unexpected first apply: ${JSON.stringify(first)}`);
    maps = new PinnedMaps(bpffs);
    log(`agent pid ${pid} synced to the empty state (cgroup ${meshCgroup}, pins ${bpffs}); RSS ${(rssBytes(pid) / MiB).toFixed(1)} MiB`);

    // ---- (1) full sync ----
    applied.drain();
    const t0Epoch = nowEpochMs();
    t = performance.now();
    const changed = cp.setModel(fleet.model);
    results.fullSyncBuildMs = performance.now() - t;
    // setModel builds the snapshot and writes the responses to the stream before it returns: from here the server
    // is sending, which is where the issue starts the clock.
    const sentEpoch = t0Epoch + results.fullSyncBuildMs;
    if (changed.size === 0) throw new Error('the control plane saw no change in the full fleet');
    const syncDeadline = performance.now() + SYNC_TIMEOUT_MS;
    let applies = 0;
    for (;;) {
      const ev = await applied.next(Math.max(0, syncDeadline - performance.now()));
      if (!ev) throw new Error(`the kernel maps did not hold the fleet within ${SYNC_TIMEOUT_MS / 1000} s (${applies} applies seen)\n${agent.tail()}`);
      applies++;
      if (ev.services !== opts.services) continue; // a partial state on the way (e.g. listeners before their clusters)
      const c = maps.counts();
      if (c.services === opts.services && c.backends === fleet.endpoints) {
        // The agent's own log time: it logged after writing the maps, and our counting above took time of its own.
        results.fullSyncSeconds = (ev.time - sentEpoch) / 1000;
        results.fullSyncWithBuildSeconds = (ev.time - t0Epoch) / 1000;
        log(`full sync: ${results.fullSyncSeconds.toFixed(3)} s (${applies} applies; sm_services ${c.services}, ` +
          `sm_backends ${c.backends}; agent reconcile ${ev.ms.toFixed(0)} ms, control plane build ${results.fullSyncBuildMs.toFixed(0)} ms)`);
        break;
      }
      log(`apply with ${ev.services} services, but the maps hold ${c.services} frontends / ${c.backends} backends: waiting`);
    }

    // ---- (3a) RSS at rest after the full sync ----
    await sleep(opts.restSeconds * 1000);
    results.rssAfterSyncMiB = rssBytes(pid) / MiB;
    log(`agent RSS after ${opts.restSeconds} s at rest: ${results.rssAfterSyncMiB.toFixed(1)} MiB`);

    // ---- (2) one endpoint change at a time ----
    applied.drain();
    const rand = prng(opts.seed);
    const latencies: number[] = [], reconcile: number[] = [], serverMs: number[] = [];
    let last: ServiceConfig | undefined;
    const budgetEnd = performance.now() + opts.changeBudgetSeconds * 1000;
    for (let n = 0; n < opts.changes; n++) {
      if (interrupted()) break;
      const index = Math.floor(rand() * opts.services);
      const backend = Math.floor(rand() * opts.backendsPerService);
      const change = fleet.changeBackendPort(index, backend, changedPort(n)); // built before t0: not the server's work
      const t0 = performance.now();
      if (t0 >= budgetEnd) break;
      if (cp.setModel(change.model).size === 0) throw new Error(`change ${n}: the control plane saw no change`);
      serverMs.push(performance.now() - t0);
      const ev = await applied.next(budgetEnd - t0);
      if (!ev) {
        if (!agent.running) throw new Error(`the agent exited during the changes\n${agent.tail()}`);
        log(`change ${n} not applied before the ${opts.changeBudgetSeconds} s budget ran out`);
        break;
      }
      if (ev.why !== 'xds' || ev.services !== opts.services) throw new Error(`change ${n}: unexpected apply ${JSON.stringify(ev)}`);
      latencies.push(ev.at - t0);
      reconcile.push(ev.ms);
      last = change.config;
      if ((n + 1) % 250 === 0) log(`${n + 1} changes, last ${(ev.at - t0).toFixed(2)} ms`);
    }
    const c = results.changes;
    c.completed = latencies.length;
    Object.assign(c, changeStats(latencies, reconcile));
    if (latencies.length > 0) {
      c.serverP99Ms = percentile(serverMs.slice(0, latencies.length), 99);
    }
    // One change per 'config applied' line: a late second line would have been taken for the next change.
    await sleep(200);
    const extra = await applied.next(0);
    if (extra) throw new Error(`an unexpected extra apply after the changes: ${JSON.stringify(extra)}`);
    if (last) {
      // At once: every backend the config names is there (the changed port included). After the replaced table's
      // grace time: exactly those (the old port deleted with the table that named it).
      const now = maps.verify(last, false);
      await sleep(RETIRE_MS + 500);
      const v = now.ok ? maps.verify(last, true) : now;
      c.verified = v.ok;
      c.verifiedDetail = now.ok && v.ok ? `${v.detail}; the replaced backend deleted within ${RETIRE_MS + 500} ms` : v.detail;
      log(`kernel check of the last change: ${v.ok ? 'ok' : 'FAILED'}: ${v.detail}`);
    }
    log(`changes: ${c.completed}/${c.planned}, p50 ${c.p50Ms?.toFixed(2)} ms, p99 ${c.p99Ms?.toFixed(2)} ms, max ${c.maxMs?.toFixed(2)} ms`);

    // ---- (3b) RSS at rest after the changes ----
    await sleep(opts.restSeconds * 1000);
    results.rssAfterChangesMiB = rssBytes(pid) / MiB;
    results.peakRssMiB = rssBytes(pid, 'VmHWM') / MiB;
    log(`agent RSS after the changes: ${results.rssAfterChangesMiB.toFixed(1)} MiB (peak ${results.peakRssMiB.toFixed(1)} MiB)`);
  } catch (e) {
    if (interrupted()) throw e;
    results.error = (e as Error).message;
    log(`error: ${results.error}`);
  } finally {
    maps?.close();
    if (agent.running) await agent.stop('SIGTERM');
  }

  const signal = interrupted();
  if (signal) throw new Error(`interrupted by ${signal}: no results`);

  const checks = xdsChecks(results);
  const out: string[] = [];
  out.push(`xds bench — kernel ${release()}, ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}); ` +
    `${opts.services} services, ${results.endpoints} endpoints; agent on delta ADS to an in-process control plane`);
  out.push('');
  out.push(formatXdsTable(results, checks));
  if (results.error) out.push(`ERROR ${results.error.split('\n')[0]}`);
  process.stdout.write(out.join('\n') + '\n');
  await emitResult(xdsSummary(results, checks, {
    kernel: release(), cpus: availableParallelism(), cgroup2: cgroup2Mount(), seed: opts.seed, restSeconds: opts.restSeconds,
  }), opts.chartDir);
  if (results.error) return 1;
  return checks.every((k) => k.status === 'PASS') ? 0 : 2;
}
