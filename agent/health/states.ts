// Why a backend is out of service, and since when. Two sources write here: active health checks
// (agent/health/checker.ts) and the proxy's outlier detection (agent/proxy/). The agent listens for
// changes and rewrites the kernel's selection slots of that service without the backends that are
// out; the proxy's balancer skips them too; meshctl backends shows the reasons.
//
// Backends are named by service and endpoint key ('127.0.0.1:8080', '[::1]:8080').

export interface BackendState {
  service: string;
  backend: string;
  /** set while the last health-check verdict is unhealthy */
  probe?: { since: number; reason: string };
  /** set while ejected by outlier detection */
  ejection?: { since: number; until: number; count: number; reason: string };
}

/** a backend of `service` went out of service or came back (`backend`: its key) */
export type StatesListener = (service: string, backend: string) => void;

export class BackendStates {
  private readonly states = new Map<string, Map<string, BackendState>>();
  private readonly ejectionCounts = new Map<string, number>();
  /** when each ejected-before backend came back (the count decays from there) */
  private readonly returnedAt = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly listeners: StatesListener[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  onChange(fn: StatesListener): void {
    this.listeners.push(fn);
  }

  /** out of service for new connections/requests (failed probe or ejected) */
  isOut(service: string, backend: string): boolean {
    const s = this.states.get(service)?.get(backend);
    return s !== undefined && (s.probe !== undefined || s.ejection !== undefined);
  }

  /** the backends of a service that are out, for the kernel slots */
  outOf(service: string): Set<string> {
    const out = new Set<string>();
    for (const [key, s] of this.states.get(service) ?? []) if (s.probe || s.ejection) out.add(key);
    return out;
  }

  /** a health-check verdict (only changes of verdict need to be reported, repeats are cheap) */
  setProbe(service: string, backend: string, healthy: boolean, reason = ''): void {
    const s = this.entry(service, backend);
    if (healthy === (s.probe === undefined)) return;
    s.probe = healthy ? undefined : { since: this.now(), reason };
    this.changed(service, backend);
  }

  /**
   * outlier ejection for durationMs; count = the (decayed, see ejections()) times this backend was ejected so
   * far, this one included
   */
  eject(service: string, backend: string, durationMs: number, reason: string, intervalMs?: number): number {
    const s = this.entry(service, backend);
    const id = `${service}\0${backend}`;
    const count = this.ejections(service, backend, intervalMs) + 1;
    this.ejectionCounts.set(id, count);
    this.returnedAt.delete(id);
    const since = this.now();
    s.ejection = { since, until: since + durationMs, count, reason };
    clearTimeout(this.timers.get(id));
    const timer = setTimeout(() => {
      this.timers.delete(id);
      const cur = this.states.get(service)?.get(backend);
      if (cur?.ejection) {
        cur.ejection = undefined;
        this.returnedAt.set(id, this.now());
        this.changed(service, backend);
      }
    }, durationMs);
    timer.unref();
    this.timers.set(id, timer);
    this.changed(service, backend);
    return count;
  }

  /**
   * Times this backend has been ejected (for the growing ejection time), less one for every intervalMs it has
   * been back in service since its last ejection ended (Envoy's decay of the ejection multiplier: without it a
   * backend that failed a few times long ago would be ejected for the maximum time at its next failure run).
   * Without intervalMs, the plain count.
   */
  ejections(service: string, backend: string, intervalMs?: number): number {
    const id = `${service}\0${backend}`;
    const count = this.ejectionCounts.get(id) ?? 0;
    const back = this.returnedAt.get(id);
    if (count === 0 || intervalMs === undefined || intervalMs <= 0 || back === undefined) return count;
    return Math.max(0, count - Math.floor((this.now() - back) / intervalMs));
  }

  /** forget backends (and services) no longer in the model */
  retain(alive: ReadonlyMap<string, ReadonlySet<string>>): void {
    for (const [service, backends] of this.states) {
      const keep = alive.get(service);
      for (const key of [...backends.keys()]) {
        if (keep?.has(key)) continue;
        backends.delete(key);
        const id = `${service}\0${key}`;
        clearTimeout(this.timers.get(id));
        this.timers.delete(id);
        this.ejectionCounts.delete(id);
        this.returnedAt.delete(id);
      }
      if (backends.size === 0) this.states.delete(service);
    }
  }

  /** one backend's state (a copy), or undefined when it is in service and was never out */
  get(service: string, backend: string): BackendState | undefined {
    const s = this.states.get(service)?.get(backend);
    return s ? { ...s } : undefined;
  }

  list(): BackendState[] {
    const out: BackendState[] = [];
    for (const backends of this.states.values()) for (const s of backends.values()) if (s.probe || s.ejection) out.push({ ...s });
    return out;
  }

  close(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private entry(service: string, backend: string): BackendState {
    let m = this.states.get(service);
    if (!m) this.states.set(service, (m = new Map()));
    let s = m.get(backend);
    if (!s) m.set(backend, (s = { service, backend }));
    return s;
  }

  private changed(service: string, backend: string): void {
    for (const fn of this.listeners) fn(service, backend);
  }
}
