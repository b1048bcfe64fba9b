// The soak's pure side (no I/O, unit-tested in test/unit/soak-model.test.ts): the services it churns and their config
// text, the timeline of what was in force and healthy, the judgement of every failed request against that timeline,
// and the linear fit of the agent's RSS and open fds.
//
// The judgement, precisely: a failed request to a frontend (VIP:port) counts against sockmesh only if, at the moment
// it was sent (t0), the frontend's service had a backend that was GOOD, and that same backend stayed good until the
// request ended (t1). A backend is good for a frontend while all of these hold:
//   - the config the soak wrote lists it in that service with a weight above 0 (not drained, not removed), and that
//     listing has been in force for the propagation allowance (added or undrained at w: good from w + allowance; with
//     xDS, a change written while the control plane was down counts from the agent's reconnection instead of w);
//   - its server answers its health probe (not `unready`), and the agent has had the time to see a recovery
//     (healthyThreshold probes and one interval more);
//   - its server does not answer 5xx (not `errors`), and a recovery has outlasted the longest ejection.
// Every other failure is excluded, and reported with the reason it was excluded for. A removal, a drain or a backend
// turning sick is never given an allowance: from that moment the backend is not good, so a request that only such a
// backend could have served is excluded (a mesh cannot be blamed for a backend that went away) - but a request that
// failed while another backend stayed good all along counts.

export const SOAK_PORTS = { l7h1: 8080, l4http: 8081, l7h2: 8082, udp: 7001 } as const;
/** the health check of every health-checked soak service (short, so a soak minute sees many transitions) */
export const SOAK_HEALTH = { intervalMs: 300, timeoutMs: 200, healthyThreshold: 2, unhealthyThreshold: 2 } as const;
/** outlier detection of the L7 soak services; a recovered backend may stay ejected up to maxEjection */
export const SOAK_OUTLIER = { consecutive5xx: 3, baseEjectionMs: 1000, maxEjectionMs: 3000, intervalMs: 1000 } as const;

export type SvcKind = 'l4tcp' | 'l4udp' | 'l7h1' | 'l7h2';

export interface SoakService {
  name: string;
  kind: SvcKind;
  vip: string;
  /** the VIP port */
  port: number;
  /** backend (pod name) -> weight (0 = drained) */
  backends: Map<string, number>;
}

const ms = (n: number): string => `${n}ms`;

/** The config file text (JSON, which the agent and the control plane read as YAML) for these services. */
export function soakConfig(services: Iterable<SoakService>, addressOf: (pod: string) => string): string {
  const out: unknown[] = [];
  for (const s of services) {
    const targetPort = s.kind === 'l4tcp' ? SOAK_PORTS.l4http : s.kind === 'l4udp' ? SOAK_PORTS.udp : s.kind === 'l7h1' ? SOAK_PORTS.l7h1 : SOAK_PORTS.l7h2;
    const svc: Record<string, unknown> = {
      name: s.name,
      vips: [s.vip],
      ports: [{ port: s.port, protocol: s.kind === 'l4udp' ? 'udp' : 'tcp', targetPort }],
      // maglev for UDP (its table follows weights), weighted for TCP: both table kinds churn
      algorithm: s.kind === 'l4udp' ? 'maglev' : 'weighted',
      backends: [...s.backends].sort(([a], [b]) => a.localeCompare(b)).map(([pod, weight]) => ({ address: addressOf(pod), weight })),
    };
    if (s.kind !== 'l4udp') {
      // UDP services cannot be probed (health checks are TCP); every other one is, on the port it balances to
      // h2c backends are probed with gRPC's health check (the HTTP probe speaks HTTP/1.1)
      svc['healthCheck'] = {
        ...(s.kind === 'l7h2' ? { type: 'grpc' } : { type: 'http', path: '/healthz' }), interval: ms(SOAK_HEALTH.intervalMs), timeout: ms(SOAK_HEALTH.timeoutMs),
        healthyThreshold: SOAK_HEALTH.healthyThreshold, unhealthyThreshold: SOAK_HEALTH.unhealthyThreshold,
      };
    }
    if (s.kind === 'l7h1' || s.kind === 'l7h2') {
      svc['http'] = {
        upstreamProtocol: s.kind === 'l7h1' ? 'http1' : 'h2',
        outlierDetection: {
          consecutive5xx: SOAK_OUTLIER.consecutive5xx, consecutiveGatewayErrors: SOAK_OUTLIER.consecutive5xx,
          baseEjectionTime: ms(SOAK_OUTLIER.baseEjectionMs), maxEjectionTime: ms(SOAK_OUTLIER.maxEjectionMs),
          maxEjectionPercent: 50, interval: ms(SOAK_OUTLIER.intervalMs),
        },
        routes: [{
          name: 'all', timeout: '10s',
          // A backend in `errors` answers 503 until it is ejected: the retry to another backend is what hides it. The
          // budget is wide so that the soak tests churn, not budget tuning (a refused retry would count as a failure).
          retries: { attempts: 3, retryOn: ['5xx', 'connect-failure', 'reset', 'gateway-error'], backoff: { base: '5ms' }, budget: { percent: 100, minRetryConcurrency: 50 } },
        }],
      };
    }
    out.push(svc);
  }
  return JSON.stringify({ services: out }, null, 1) + '\n';
}

// ---- the timeline ----

export interface FrontendSnap {
  service: string;
  kind?: SvcKind;
  /** good backends (pod name) -> the time from which each counts as good (may be later than the snapshot) */
  good: Map<string, number>;
  /** backends listed (any weight) */
  listed: number;
  /**
   * For Timeline.resolve: each good backend's listing, by when it was written (the write that added or undrained it)
   * and from when its pod counts healthy (after a recovery); `good` is then the later of its in-force time and that.
   */
  since?: Map<string, { written: number; healthyFrom: number }>;
}

export interface Snapshot { t: number; frontends: Map<string, FrontendSnap> }

export type Verdict = { counts: true; backend: string } | { counts: false; reason: ExcludeReason };

export type ExcludeReason =
  | 'no service at this VIP'
  | 'no backend in the config'
  | 'no healthy backend (drained, unready or answering 5xx)'
  | 'its backends just added, undrained or recovering (within the allowance)'
  | 'every good backend turned bad during the request'
  | 'before the first config';

export const frontendKey = (vip: string, port: number): string => `${vip}:${port}`;

/** What was in force and healthy, as snapshots taken at every change; judges failed requests against it. */
export class Timeline {
  readonly snaps: Snapshot[] = [];

  record(t: number, frontends: Map<string, FrontendSnap>): void {
    const last = this.snaps[this.snaps.length - 1];
    if (last && t < last.t) throw new Error(`timeline: snapshot at ${t} before the last one at ${last.t}`);
    this.snaps.push({ t, frontends });
  }

  /** The index of the last snapshot at or before t (-1: none). */
  private at(t: number): number {
    let lo = 0, hi = this.snaps.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.snaps[mid]!.t <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  }

  /**
   * Put in the in-force time of every listing once the run is over and the agent's applies are known (inForce(written,
   * listing): when the write was certainly applied for this listing, Infinity if never).
   */
  resolve(inForce: (written: number, listing: { key: string; kind?: SvcKind; pod: string }) => number): void {
    const memo = new Map<string, number>();
    for (const snap of this.snaps) {
      for (const [key, f] of snap.frontends) {
        if (!f.since) continue;
        for (const [pod, { written, healthyFrom }] of f.since) {
          const id = `${written}|${key}|${f.kind ?? ''}|${pod}`;
          let at = memo.get(id);
          if (at === undefined) memo.set(id, (at = inForce(written, { key, kind: f.kind, pod })));
          f.good.set(pod, Math.max(at, healthyFrom));
        }
      }
    }
  }

  /** What the frontend was from `from` to `to` (ms relative to `at`), one line per change: for a counted failure. */
  history(key: string, from: number, to: number, at: number): string[] {
    const out: string[] = [];
    let last = '';
    const i0 = Math.max(0, this.at(from));
    for (let i = i0; i < this.snaps.length && this.snaps[i]!.t <= to; i++) {
      const f = this.snaps[i]!.frontends.get(key);
      const good = f ? [...f.good].map(([b, g]) => `${b}${g > this.snaps[i]!.t ? `@${g === Infinity ? 'never' : g - at}` : ''}`).join(',') : '';
      const line = f ? `${f.service} (${f.kind ?? '?'}) listed ${f.listed}, good ${good || 'none'}` : 'no service';
      if (line !== last) out.push(`${this.snaps[i]!.t - at} ms: ${line}`);
      last = line;
    }
    return out;
  }

  judge(key: string, t0: number, t1: number): Verdict {
    const i0 = this.at(t0);
    if (i0 < 0) return { counts: false, reason: 'before the first config' };
    const first = this.snaps[i0]!.frontends.get(key);
    if (!first) return { counts: false, reason: 'no service at this VIP' };
    if (first.listed === 0) return { counts: false, reason: 'no backend in the config' };
    if (first.good.size === 0) return { counts: false, reason: 'no healthy backend (drained, unready or answering 5xx)' };
    // strictly before: a log line and a request in the same millisecond are not ordered
    let candidates = [...first.good].filter(([, from]) => from < t0).map(([b, from]) => [b, from] as const);
    if (candidates.length === 0) return { counts: false, reason: 'its backends just added, undrained or recovering (within the allowance)' };
    // every later snapshot up to the request's end must still have the backend good, since the same time
    for (let i = i0 + 1; i < this.snaps.length && this.snaps[i]!.t <= t1; i++) {
      const f = this.snaps[i]!.frontends.get(key);
      candidates = candidates.filter(([b, from]) => f?.good.get(b) === from);
      if (candidates.length === 0) return { counts: false, reason: 'every good backend turned bad during the request' };
    }
    return { counts: true, backend: candidates[0]![0] };
  }
}

/**
 * When a write is certainly in force, from the times of the reads that followed it. A reader that reads, applies and
 * then logs in one synchronous step (the agent's file source; the control plane's directory reload) and is woken by
 * every write: the write at w is in the first read that starts after w, and each read starts after the previous one
 * logged. So the read logged second after w holds w (or something newer), and w is in force at that log's time at
 * the latest. `logs` ascending; Infinity when there is no second log.
 */
export function secondAfter(logs: readonly number[], w: number): number {
  let lo = 0, hi = logs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (logs[mid]! < w) lo = mid + 1; else hi = mid;
  }
  return logs[lo + 1] ?? Infinity;
}

// ---- what the kernel held ----

/** A listing as the kernel holds it: `l4|l7 address:port` (the port the soak's kind balances to). */
export function kernelEntry(kind: SvcKind, address: string): string {
  const port = kind === 'l4tcp' ? SOAK_PORTS.l4http : kind === 'l4udp' ? SOAK_PORTS.udp : kind === 'l7h1' ? SOAK_PORTS.l7h1 : SOAK_PORTS.l7h2;
  return `${kind === 'l7h1' || kind === 'l7h2' ? 'l7' : 'l4'} ${address}:${port}`;
}

/**
 * The kernel's frontends as sampled through the run (bench/soak.ts reads the agent's pins): per frontend key, the
 * entries (kernelEntry) of its active backends at each sample where they changed. With xDS a write reaches the kernel
 * through the control plane's read, its push and the agent's applies of each type, so when it is in force is read
 * here, not estimated from log lines: a listing is good from the first sample at or after its write that holds it.
 */
export class KernelTrace {
  readonly times: number[] = [];
  private readonly changes = new Map<string, { t: number; has: ReadonlySet<string> }[]>();
  private readonly sig = new Map<string, string>();

  /** One sample: every frontend key the kernel holds, with its active backends' entries (a key absent: none). */
  record(t: number, frontends: ReadonlyMap<string, ReadonlySet<string>>): void {
    const last = this.times[this.times.length - 1];
    if (last !== undefined && t < last) throw new Error(`kernel trace: sample at ${t} before the last one at ${last}`);
    this.times.push(t);
    const keys = new Set([...frontends.keys(), ...this.sig.keys()]);
    for (const key of keys) {
      const has = frontends.get(key) ?? new Set<string>();
      const sig = [...has].sort().join(',');
      if (this.sig.get(key) === sig) continue;
      this.sig.set(key, sig);
      let list = this.changes.get(key);
      if (!list) this.changes.set(key, (list = []));
      list.push({ t, has });
    }
  }

  /** The first sample at or after `from` at which frontend `key` held `entry` (Infinity: none). */
  firstHolding(key: string, entry: string, from: number): number {
    let lo = 0, hi = this.times.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.times[mid]! < from) lo = mid + 1; else hi = mid; }
    const ts = this.times[lo];
    if (ts === undefined) return Infinity;
    const list = this.changes.get(key) ?? [];
    let j = -1;
    for (let a = 0, b = list.length - 1; a <= b;) { const mid = (a + b) >> 1; if (list[mid]!.t <= ts) { j = mid; a = mid + 1; } else b = mid - 1; }
    if (j >= 0 && list[j]!.has.has(entry)) return ts;
    for (let k = j + 1; k < list.length; k++) if (list[k]!.has.has(entry)) return list[k]!.t;
    return Infinity;
  }

  /**
   * What frontend `key` held over [from, to], relative to `t0`, for a failure's report: the sample before `from`, every
   * change in the window, and the samples nearest t0 on either side (how closely the kernel was watched then).
   */
  around(key: string, t0: number, from: number, to: number): string[] {
    const list = this.changes.get(key) ?? [];
    const show = (has: ReadonlySet<string>) => (has.size ? [...has].sort().join(', ') : 'nothing');
    const out: string[] = [];
    let before: { t: number; has: ReadonlySet<string> } | undefined;
    for (const c of list) {
      if (c.t < from) before = c;
      else if (c.t <= to) out.push(`${c.t - t0} ms: ${show(c.has)}`);
    }
    if (before) out.unshift(`${before.t - t0} ms: ${show(before.has)} (the last change before)`);
    let lo = 0, hi = this.times.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.times[mid]! < t0) lo = mid + 1; else hi = mid; }
    const prev = this.times[lo - 1], next = this.times[lo];
    out.push(`samples nearest: ${prev === undefined ? 'none' : `${prev - t0} ms`} and ${next === undefined ? 'none' : `+${next - t0} ms`}`);
    return out;
  }

  /** What the frontend held at time t (the last sample at or before it), for a failure's report. */
  at(key: string, t: number): string {
    const list = this.changes.get(key) ?? [];
    let found: { has: ReadonlySet<string> } | undefined;
    for (const c of list) { if (c.t <= t) found = c; else break; }
    return found && found.has.size ? [...found.has].sort().join(', ') : 'nothing';
  }
}

// ---- flatness ----

/** Least-squares slope of y over x (per unit of x); 0 with fewer than 2 distinct x. */
export function slope(points: readonly (readonly [number, number])[]): number {
  const n = points.length;
  if (n < 2) return 0;
  let sx = 0, sy = 0;
  for (const [x, y] of points) { sx += x; sy += y; }
  const mx = sx / n, my = sy / n;
  let sxy = 0, sxx = 0;
  for (const [x, y] of points) { sxy += (x - mx) * (y - my); sxx += (x - mx) ** 2; }
  return sxx === 0 ? 0 : sxy / sxx;
}
