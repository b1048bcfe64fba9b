// Active health checking: every backend of every service that carries a healthCheck is probed on its interval, by
// the agent itself, straight at the backend address (the agent is not in the meshed cgroup, so a probe is never
// balanced or redirected). Verdicts go to BackendStates; the agent takes failed backends out of the kernel's slots
// and the proxy out of its pools.
//
// Verdicts follow consecutive results, as Envoy: a healthy backend goes out after `unhealthyThreshold` failures in a
// row, an out one comes back after `healthyThreshold` successes in a row.
//
// New backends start HEALTHY (Envoy starts them unhealthy until a first pass). Reasons: a brand-new service must not
// start with zero usable backends and refuse every connection for a whole interval; a backend added to a running
// service by a scale-up is usually meant to take traffic at once; and a backend that does not work is out after
// unhealthyThreshold probes anyway (the first probe comes within one interval, at a random point of it). The
// kernel's connect() to a dead backend fails fast (ECONNREFUSED), so the cost of the optimistic start is small.
//
// Model changes keep the state of backends that stay (counters, verdict, schedule); removed backends' probes stop
// (an in-flight probe is aborted and its result dropped) and BackendStates forgets them.
import type { Model, Service } from '../model/types.js';
import type { HealthCheck } from '../model/l7.js';
import type { Logger } from '../observe/log.js';
import type { BackendStates } from './states.js';
import { backendKey } from './effective.js';
import { probe, type ProbeResult, type ProbeTarget } from './probes.js';

export interface ProbeReport {
  /** the checker's verdict (with thresholds applied) */
  healthy: boolean;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  /** the last probe that completed */
  last: { at: string; healthy: boolean; reason: string; ms: number } | null;
}

export interface CheckerOptions {
  log?: Logger;
  /** after every completed probe (metrics) */
  onProbe?: (service: string, backend: string, result: ProbeResult, ms: number) => void;
  /** for the start jitter (tests) */
  random?: () => number;
  now?: () => number;
}

interface Target extends ProbeTarget {
  service: string;
  key: string;
  check: HealthCheck;
  healthy: boolean;
  successes: number;
  failures: number;
  last: ProbeReport['last'];
  timer?: NodeJS.Timeout;
  inflight?: AbortController;
  stopped: boolean;
}

export class HealthChecker {
  /** health-checked services: service -> backend key -> target */
  private readonly targets = new Map<string, Map<string, Target>>();
  /**
   * Backend keys of the services that can have backend states (a health check: probe verdicts; http: the proxy's
   * ejections): what BackendStates may keep (states.retain). Plain L4 services without a check never have any, and
   * are left out so that 100,000 endpoints of them cost no memory here.
   */
  private readonly keysOf = new Map<string, Set<string>>();
  private readonly random: () => number;
  private readonly now: () => number;
  private closed = false;

  constructor(private readonly states: BackendStates, private readonly opts: CheckerOptions = {}) {
    this.random = opts.random ?? Math.random;
    this.now = opts.now ?? Date.now;
  }

  /**
   * Follow a model: start probing new backends, stop removed ones, keep the rest as they are. With `changed` (the
   * names of services that may differ, removed ones included) only those are looked at.
   */
  update(model: Model, changed?: ReadonlySet<string>): void {
    if (this.closed) return;
    const inModel = new Set<string>();
    for (const svc of model.services) {
      if (changed && !changed.has(svc.name)) continue;
      inModel.add(svc.name);
      this.updateService(svc);
    }
    const known = new Set([...this.keysOf.keys(), ...this.targets.keys()]);
    const gone = changed ? [...changed].filter((n) => !inModel.has(n)) : [...known].filter((n) => !inModel.has(n));
    for (const name of gone) {
      this.keysOf.delete(name);
      for (const t of this.targets.get(name)?.values() ?? []) this.stopTarget(t);
      this.targets.delete(name);
    }
    // keysOf holds every service ever updated and not removed: a scoped update keeps the others' state.
    this.states.retain(this.keysOf);
  }

  private updateService(svc: Service): void {
    const mine = this.targets.get(svc.name);
    const check = svc.healthCheck;
    if (!check && !svc.http && !mine) {
      this.keysOf.delete(svc.name);
      return;
    }
    const endpoints = new Map<string, ProbeTarget>();
    for (const fe of svc.frontends) {
      for (const b of fe.backends) {
        const key = backendKey(b.address, b.port);
        if (!endpoints.has(key)) endpoints.set(key, { address: b.address, port: b.port, family: b.family });
      }
    }
    if (check || svc.http) this.keysOf.set(svc.name, new Set(endpoints.keys()));
    else this.keysOf.delete(svc.name);
    if (!check) {
      if (!mine) return;
      // Checking was turned off: stop, and clear failed verdicts (they would keep backends out forever).
      for (const t of mine.values()) {
        this.stopTarget(t);
        if (!t.healthy) this.states.setProbe(svc.name, t.key, true);
      }
      this.targets.delete(svc.name);
      return;
    }
    const targets = mine ?? new Map<string, Target>();
    if (!mine) this.targets.set(svc.name, targets);
    for (const [key, t] of targets) {
      if (endpoints.has(key)) continue;
      this.stopTarget(t);
      targets.delete(key);
    }
    for (const [key, ep] of endpoints) {
      const cur = targets.get(key);
      if (cur) {
        const old = cur.check;
        cur.check = check;
        // A new interval takes effect now, not after the old one ran out (which could be long).
        if (old.intervalMs !== check.intervalMs && cur.timer) {
          clearTimeout(cur.timer);
          this.schedule(cur, this.random() * check.intervalMs);
        }
        continue;
      }
      const t: Target = { ...ep, service: svc.name, key, check, healthy: true, successes: 0, failures: 0, last: null, stopped: false };
      targets.set(key, t);
      // Jittered start: a thousand backends added at once do not all get probed in the same millisecond.
      this.schedule(t, this.random() * check.intervalMs);
    }
  }

  private schedule(t: Target, delayMs: number): void {
    t.timer = setTimeout(() => { t.timer = undefined; void this.run(t); }, Math.max(0, delayMs));
    t.timer.unref();
  }

  private async run(t: Target): Promise<void> {
    if (t.stopped) return;
    const abort = new AbortController();
    t.inflight = abort;
    const t0 = performance.now();
    const result = await probe(t, t.check, abort.signal);
    t.inflight = undefined;
    if (t.stopped) return; // removed meanwhile: no verdict for a backend that is no longer there
    const ms = performance.now() - t0;
    this.record(t, result, ms);
    this.opts.onProbe?.(t.service, t.key, result, ms);
    // The interval runs from the start of one probe to the start of the next; a slow probe never overlaps the next.
    this.schedule(t, t.check.intervalMs - ms);
  }

  private record(t: Target, r: ProbeResult, ms: number): void {
    t.last = { at: new Date(this.now()).toISOString(), healthy: r.healthy, reason: r.reason, ms: Math.round(ms * 10) / 10 };
    if (r.healthy) {
      t.successes++;
      t.failures = 0;
      if (!t.healthy && t.successes >= t.check.healthyThreshold) {
        t.healthy = true;
        this.opts.log?.info({ service: t.service, backend: t.key, successes: t.successes }, 'backend passes its health check again: back in service');
        this.states.setProbe(t.service, t.key, true);
      }
    } else {
      t.failures++;
      t.successes = 0;
      if (t.healthy && t.failures >= t.check.unhealthyThreshold) {
        t.healthy = false;
        this.opts.log?.warn({ service: t.service, backend: t.key, reason: r.reason, failures: t.failures }, 'backend failed its health check: out of service');
        this.states.setProbe(t.service, t.key, false, r.reason);
      }
    }
  }

  private stopTarget(t: Target): void {
    t.stopped = true;
    if (t.timer) clearTimeout(t.timer);
    t.timer = undefined;
    t.inflight?.abort();
  }

  /** The checker's view of one backend; undefined when its service has no health check. */
  report(service: string, backend: string): ProbeReport | undefined {
    const t = this.targets.get(service)?.get(backend);
    if (!t) return undefined;
    return { healthy: t.healthy, consecutiveSuccesses: t.successes, consecutiveFailures: t.failures, last: t.last && { ...t.last } };
  }

  /** Number of backends being probed. */
  get size(): number {
    let n = 0;
    for (const m of this.targets.values()) n += m.size;
    return n;
  }

  /** Stop every probe (in-flight ones are aborted). */
  close(): void {
    this.closed = true;
    for (const m of this.targets.values()) for (const t of m.values()) this.stopTarget(t);
    this.targets.clear();
  }
}
