// L7 metrics. The request path only adds to plain numbers kept on per-route and per-route-backend
// objects made once (at model update, or the first time a backend answers on a route); Prometheus
// text is built from them when the registry is scraped. prom-client's own label children hash their
// label set on every inc()/observe(), which is string building per request; instead each family
// here is a small metric object registered in the prom-client Registry (name, help, type, get()), so
// the agent's /metrics endpoint, Registry.merge and getMetricsAsJSON all see them as usual.
import { Registry } from '../observe/prom.js';

/** Latency buckets in milliseconds: 0.1 ms (sockmap loopback) .. 30 s (a long route timeout). */
export const LATENCY_BUCKETS_MS: readonly number[] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

/** Index of the status-class counter: 0 = client gone before an answer, 1..5 = 1xx..5xx, 6 = local reply. */
export const CLASS_NAMES = ['aborted', '1xx', '2xx', '3xx', '4xx', '5xx', 'local'] as const;
export const CLASS_LOCAL = 6;

export function statusClass(status: number): number {
  const c = (status / 100) | 0;
  return c >= 1 && c <= 5 ? c : 0;
}

/** Counts of one route answered by one backend ('' = no backend: local replies, nothing reached). */
export class RouteBackendStats {
  readonly classes = new Float64Array(CLASS_NAMES.length);
  readonly buckets = new Float64Array(LATENCY_BUCKETS_MS.length + 1);
  sum = 0;
  count = 0;
  constructor(readonly backend: string) {}

  observe(ms: number): void {
    const b = LATENCY_BUCKETS_MS;
    let i = 0;
    while (i < b.length && ms > b[i]!) i++;
    this.buckets[i]!++;
    this.sum += ms;
    this.count++;
  }
}

export class RouteStats {
  retries = 0;
  budgetExhausted = 0;
  readonly local = new Map<string, number>();
  private readonly byBackend = new Map<string, RouteBackendStats>();
  constructor(readonly service: string, readonly route: string) {}

  /** the stats of this route for a backend key (made once per backend) */
  backend(key: string): RouteBackendStats {
    let s = this.byBackend.get(key);
    if (!s) this.byBackend.set(key, (s = new RouteBackendStats(key)));
    return s;
  }

  /** forget the backends no longer in the model ('' = local replies stays): churn must not grow the series forever */
  retain(keys: ReadonlySet<string> | undefined): void {
    for (const k of this.byBackend.keys()) if (k !== '' && !keys?.has(k)) this.byBackend.delete(k);
  }

  backends(): IterableIterator<RouteBackendStats> {
    return this.byBackend.values();
  }

  /** a local reply by reason (reasons are a small fixed set of constant strings) */
  localReply(reason: string): void {
    this.local.set(reason, (this.local.get(reason) ?? 0) + 1);
  }

  /** requests by status class, all backends together */
  totals(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.byBackend.values()) for (let i = 0; i < CLASS_NAMES.length; i++) if (s.classes[i]) out[CLASS_NAMES[i]!] = (out[CLASS_NAMES[i]!] ?? 0) + s.classes[i]!;
    return out;
  }
}

export interface GroupCounts {
  service: string;
  group: string;
  /** the frontend vip:port whose backends make the group */
  frontend: string;
  active: number;
  pending: number;
  connections: number;
  retries: number;
  overflows: Readonly<Record<string, number>>;
}

interface Sample {
  metricName?: string;
  labels: Record<string, string>;
  value: number;
}

/** A metric family computed at scrape time, in the shape prom-client's Registry formats. */
class Family {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
    private readonly collect: () => Sample[],
  ) {}
  get(): Promise<{ name: string; help: string; type: string; values: Sample[]; aggregator: string }> {
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values: this.collect(), aggregator: 'sum' });
  }
  /** Registry.resetMetrics(): the numbers belong to the live policy; nothing to reset here */
  reset(): void {}
}

export class ProxyMetrics {
  readonly registry: Registry;
  /** the routes currently in the model (set by the policy on update) */
  private routes: RouteStats[] = [];
  /** requests answered before a route was known (no service, misdirected, denied, no route) */
  private readonly early = new Map<string, RouteStats>();
  private groups: () => GroupCounts[] = () => [];
  private readonly ejections = new Map<string, { service: string; backend: string; reason: string; n: number }>();

  constructor(registry?: Registry) {
    this.registry = registry ?? new Registry();
    const r = this.registry;
    const reg = (f: Family): void => r.registerMetric(f as never);
    reg(new Family('sockmesh_http_requests_total', 'HTTP requests through the L7 proxy by service, route, backend and status class (local = answered by the proxy itself, aborted = client gone first)', 'counter', () => this.requests()));
    reg(new Family('sockmesh_http_local_replies_total', 'Answers made by the proxy itself, by reason', 'counter', () => this.localReplies()));
    reg(new Family('sockmesh_http_request_duration_milliseconds', 'Request duration in the proxy, from the request head to the end of the exchange, per route and backend', 'histogram', () => this.latency()));
    reg(new Family('sockmesh_http_retries_total', 'Retries started, per route', 'counter', () => this.perRoute((s) => s.retries)));
    reg(new Family('sockmesh_http_retry_budget_exhausted_total', 'Retries not made because the retry budget was spent, per route', 'counter', () => this.perRoute((s) => s.budgetExhausted)));
    reg(new Family('sockmesh_http_overflows_total', 'Circuit breaker overflows per backend group and limit (max-connections: a new upstream connection refused, the request then waits as pending; the others: a request or retry refused)', 'counter', () => this.overflows()));
    reg(new Family('sockmesh_http_ejections_total', 'Outlier ejections per backend and reason', 'counter', () => [...this.ejections.values()].map((e) => ({ labels: { service: e.service, backend: e.backend, reason: e.reason }, value: e.n }))));
    reg(new Family('sockmesh_http_active_requests', 'Requests in flight per backend group', 'gauge', () => this.groups().map((g) => ({ labels: { service: g.service, frontend: g.frontend, group: g.group }, value: g.active }))));
    reg(new Family('sockmesh_http_pending_requests', 'Requests waiting for an upstream connection per backend group', 'gauge', () => this.groups().map((g) => ({ labels: { service: g.service, frontend: g.frontend, group: g.group }, value: g.pending }))));
    reg(new Family('sockmesh_http_upstream_connections', 'Open upstream connections per backend group', 'gauge', () => this.groups().map((g) => ({ labels: { service: g.service, frontend: g.frontend, group: g.group }, value: g.connections }))));
    reg(new Family('sockmesh_http_active_retries', 'Retries in backoff or in flight per backend group', 'gauge', () => this.groups().map((g) => ({ labels: { service: g.service, frontend: g.frontend, group: g.group }, value: g.retries }))));
  }

  setRoutes(routes: RouteStats[]): void {
    this.routes = routes;
    // early replies of services gone from the model are dropped with them
    const alive = new Set(routes.map((r) => r.service));
    for (const [k, s] of this.early) if (s.service !== '' && !alive.has(s.service)) this.early.delete(k);
  }

  setGroups(fn: () => GroupCounts[]): void {
    this.groups = fn;
  }

  /** stats for answers given before routing ('' service: the destination is no L7 service) */
  earlyStats(service: string): RouteStats {
    let s = this.early.get(service);
    if (!s) this.early.set(service, (s = new RouteStats(service, '')));
    return s;
  }

  ejected(service: string, backend: string, reason: string): void {
    const k = `${service}\0${backend}\0${reason}`;
    const e = this.ejections.get(k);
    if (e) e.n++;
    else this.ejections.set(k, { service, backend, reason, n: 1 });
  }

  forgetBackends(alive: ReadonlyMap<string, ReadonlySet<string>>): void {
    for (const [k, e] of this.ejections) if (!alive.get(e.service)?.has(e.backend)) this.ejections.delete(k);
  }

  private all(): RouteStats[] {
    return this.early.size === 0 ? this.routes : [...this.early.values(), ...this.routes];
  }

  private requests(): Sample[] {
    const out: Sample[] = [];
    for (const r of this.all())
      for (const b of r.backends())
        for (let i = 0; i < CLASS_NAMES.length; i++)
          if (b.classes[i]) out.push({ labels: { service: r.service, route: r.route, backend: b.backend, class: CLASS_NAMES[i]! }, value: b.classes[i]! });
    return out;
  }

  private localReplies(): Sample[] {
    const out: Sample[] = [];
    for (const r of this.all()) for (const [reason, n] of r.local) out.push({ labels: { service: r.service, route: r.route, reason }, value: n });
    return out;
  }

  private latency(): Sample[] {
    const name = 'sockmesh_http_request_duration_milliseconds';
    const out: Sample[] = [];
    for (const r of this.routes)
      for (const b of r.backends()) {
        if (b.count === 0) continue;
        const labels = { service: r.service, route: r.route, backend: b.backend };
        let acc = 0;
        for (let i = 0; i <= LATENCY_BUCKETS_MS.length; i++) {
          acc += b.buckets[i]!;
          out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: i < LATENCY_BUCKETS_MS.length ? String(LATENCY_BUCKETS_MS[i]) : '+Inf' }, value: acc });
        }
        out.push({ metricName: `${name}_sum`, labels, value: b.sum });
        out.push({ metricName: `${name}_count`, labels, value: b.count });
      }
    return out;
  }

  private perRoute(get: (s: RouteStats) => number): Sample[] {
    return this.routes.map((r) => ({ labels: { service: r.service, route: r.route }, value: get(r) }));
  }

  private overflows(): Sample[] {
    const out: Sample[] = [];
    for (const g of this.groups()) for (const [limit, n] of Object.entries(g.overflows)) if (n) out.push({ labels: { service: g.service, frontend: g.frontend, group: g.group, limit }, value: n });
    return out;
  }
}
