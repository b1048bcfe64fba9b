// The proxy's policy: for each request, which service (from the original destination), whether the
// source may ask it (authorization), which route and backend group, which backend (balancer), and
// then per attempt: circuit breaker, retries with backoff and budget, outlier detection, metrics and
// the access log. It implements the Policy of types.ts; the engine (server.ts) does all the I/O.
//
// Per request the order is:
//   1. service: the frontend vip:port the client connected to. None in the model: 503 (reason
//      no-service). A service there but without http (it is L4 now; the connection predates the
//      change): 421 Misdirected Request, which tells the client to retry on a new connection, and a
//      new connection goes straight to a backend.
//   2. a request-target with a #fragment -> 400 (it would be matched one way here, another way by the backend);
//      then authorization (authz.ts: deny rules, then allow rules, then the default) -> 403;
//   3. route: the first in order whose path, methods and headers match -> else 404;
//   4. split: a backend group by weight (random); the exchange stays in that group for its retries;
//   5. attempt 1: max-requests breaker, then the balancer (least-request P2C or round robin) over the
//      group's backends that are not out (failed probe or ejected) and not drained (weight 0); when
//      all are out, all of them (panic, as Envoy below its panic threshold); none at all -> 503
//      "no healthy upstream";
//   6. a failed attempt (retryDelay): retry_on, method idempotency, body replayability, attempts
//      left, the retry budget and the max-retries breaker; a retry goes to another backend when the
//      group has one.
// Outlier detection counts every attempt's outcome per backend (outlier.ts).
import type { Logger } from '../observe/log.js';
import type { Registry } from 'prom-client';
import type { BackendStates } from '../health/states.js';
import type { Frontend, Model, Service } from '../model/types.js';
import type { CircuitBreaker, HeaderRewrite, HttpPolicy, OutlierDetection, Route, StringMatch } from '../model/l7.js';
import type { Attempt, Exchange, Headers, LocalReply, OriginalDst, Outcome, Policy, RequestHead, Source, Upstream } from './types.js';
import { Authorizer } from './authz.js';
import { makeBalancer, type Balancer, type Slot } from './balancer.js';
import { GroupBreaker, type Limit } from './breaker.js';
import { compileRoutes, matchPath, type CompiledMatch, type Router } from './router.js';
import { RETRY_NONE, RETRY_SAFE, RetryRules, backoffMs, budgetAllows } from './retry.js';
import { countOutcome, tryEject, type OutlierCounters } from './outlier.js';
import { CLASS_LOCAL, ProxyMetrics, RouteStats, statusClass, type GroupCounts } from './metrics.js';
import { AccessLog } from './accesslog.js';

export const DEFAULT_GROUP = 'default';

/** Reasons of local replies (metrics label, access log). */
export type LocalReason = 'misdirected' | 'bad-path' | 'denied' | 'no-route' | 'no-healthy-upstream' | Limit;

export interface RouteReport {
  service: string;
  route: string;
  match: { path?: StringMatch; methods?: string[]; headers?: { name: string; value?: StringMatch; invert?: boolean }[] };
  split: { group: string; weight: number }[];
  timeoutMs: number;
  retry?: { attempts: number; perTryTimeoutMs: number; retryOn: string[]; budgetPercent: number; minRetryConcurrency: number };
  /** requests by status class ('2xx', ..., 'local', 'aborted') */
  requests: Record<string, number>;
  localReplies: Record<string, number>;
  retries: number;
  budgetExhausted: number;
  /** breaker overflows of the groups this route splits to */
  overflows: Record<string, number>;
  groups: GroupReport[];
}

export interface GroupReport {
  group: string;
  /** the frontend (vip:port) whose backends make this group */
  frontend: string;
  backends: number;
  activeRequests: number;
  pendingRequests: number;
  connections: number;
  activeRetries: number;
  limits: CircuitBreaker;
  overflows: Record<string, number>;
}

export interface BackendReport {
  service: string;
  group: string;
  frontend: string;
  backend: string;
  weight: number;
  activeRequests: number;
  /** out of service for this proxy: failed probe or ejected */
  out: boolean;
  ejected: boolean;
  /** why out (probe reason or ejection reason), since/until as epoch ms */
  reason?: string;
  since?: number;
  until?: number;
  ejections: number;
  consecutive5xx: number;
  consecutiveGatewayErrors: number;
}

/** A backend of a group: the balancer's slot plus the outlier counters. */
interface BackendSlot extends Slot, OutlierCounters {
  readonly upstream: Upstream;
  weight: number;
}

/** One backend group of one frontend: the unit of circuit breaking and balancing. */
class GroupState {
  readonly breaker: GroupBreaker;
  slots: BackendSlot[] = [];
  /** backend keys, for the ejection cap */
  keys: string[] = [];
  balancer!: Balancer;
  balancerKind = '';
  outlier: OutlierDetection | undefined;
  private usableCache: BackendSlot[] = [];
  /** set when a backend of the service changed state (BackendStates listener) or on update */
  dirty = true;

  constructor(
    readonly service: string,
    readonly name: string,
    readonly frontend: string,
    limits: CircuitBreaker,
  ) {
    this.breaker = new GroupBreaker(limits);
  }

  /** backends that may take a new request; recomputed only after a state change */
  usable(states: BackendStates): BackendSlot[] {
    if (!this.dirty) return this.usableCache;
    this.dirty = false;
    const live = this.slots.filter((s) => s.weight > 0);
    const healthy = live.filter((s) => !states.isOut(this.service, s.upstream.key));
    // panic: every backend out -> all of them rather than none
    this.usableCache = healthy.length > 0 ? healthy : live;
    return this.usableCache;
  }
}

/** Where a route's requests go from one frontend: its groups with cumulative weights. */
interface Split {
  groups: (GroupState | undefined)[];
  cumulative: number[];
  total: number;
}

interface RouteState {
  readonly index: number;
  readonly name: string;
  readonly match: CompiledMatch;
  readonly def: Route;
  readonly timeoutMs: number;
  readonly retry: RetryRules | undefined;
  readonly requestHeaders: HeaderRewrite;
  readonly responseHeaders: HeaderRewrite;
  readonly stats: RouteStats;
}

interface ServiceState {
  readonly name: string;
  readonly http: HttpPolicy;
  readonly router: Router<RouteState>;
  readonly authz: Authorizer | undefined;
  readonly early: RouteStats;
  readonly groups: GroupState[];
}

interface FrontendState {
  readonly service: ServiceState;
  readonly vipPort: string;
  /** by route index */
  readonly splits: Split[];
}

const hostPort = (address: string, port: number): string => (address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`);

/**
 * A local reply. The engine adds content-type and length, and to a gRPC client turns it into a
 * trailers-only gRPC answer (grpc-status from the HTTP status, as Envoy), so the policy answers
 * every client alike and sets only its own x-sockmesh-* headers.
 */
function localReply(_head: RequestHead, status: number, body: string, headers: Headers): LocalReply {
  return { status, headers, body: body + '\n' };
}

export interface ProxyPolicyOptions {
  states: BackendStates;
  log: Logger;
  registry?: Registry;
  random?: () => number;
  now?: () => number;
}

export class ProxyPolicy implements Policy {
  readonly states: BackendStates;
  readonly metrics: ProxyMetrics;
  private readonly log: Logger;
  private readonly accessLog: AccessLog;
  readonly random: () => number;
  readonly now: () => number;
  /** vip -> port -> frontend of an L7 service */
  private frontends = new Map<string, Map<number, FrontendState>>();
  /** vip -> ports of services without http (for 421) */
  private services = new Map<string, ServiceState>();
  private groups = new Map<string, GroupState>();
  private routeStats = new Map<string, RouteStats>();
  private workloadOf: (cgroupId: bigint) => string | undefined = () => undefined;

  constructor(o: ProxyPolicyOptions) {
    this.states = o.states;
    this.log = o.log;
    this.random = o.random ?? Math.random;
    this.now = o.now ?? performance.now.bind(performance);
    this.metrics = new ProxyMetrics(o.registry);
    this.accessLog = new AccessLog(o.log, this.random);
    this.metrics.setGroups(() => this.groupCounts());
    this.states.onChange((service) => {
      const s = this.services.get(service);
      if (s) for (const g of s.groups) g.dirty = true;
    });
  }

  /**
   * A new model. Only services with http matter. Groups (breaker counts, balancer position,
   * backends' active counts and outlier counters) and route counters whose names are unchanged are
   * kept. Everything is compiled before anything is replaced: a bad regex throws (naming service,
   * route and field) and leaves the previous state in force.
   */
  update(model: Model, workloadOfCgroup: (cgroupId: bigint) => string | undefined, changed?: ReadonlySet<string>): void {
    // A scoped change of L4 services only (the common case at scale: endpoints of 10,000 services) must not cost a
    // walk that allocates per service: patch the L4 index and keep everything else.
    if (changed && this.onlyL4(model, changed)) {
      this.workloadOf = workloadOfCgroup;
      return;
    }
    const frontends = new Map<string, Map<number, FrontendState>>();
    const services = new Map<string, ServiceState>();
    const groups = new Map<string, GroupState>();
    const routeStats = new Map<string, RouteStats>();
    const alive = new Map<string, Set<string>>();
    // first what can throw (regexes), so that a bad model changes nothing; then the groups, which are
    // updated in place
    const compiled: [Service, ServiceState][] = [];
    for (const svc of model.services) {
      if (svc.http) compiled.push([svc, this.compileService(svc, svc.http, routeStats)]);
    }
    for (const [svc, state] of compiled) {
      services.set(svc.name, state);
      const keys = new Set<string>();
      alive.set(svc.name, keys);
      for (const f of svc.frontends) {
        if (f.protocol !== 'tcp') continue;
        const fe = this.compileFrontend(state, f, groups, keys);
        let ports = frontends.get(f.vip);
        if (!ports) frontends.set(f.vip, (ports = new Map()));
        ports.set(f.port, fe);
      }
    }
    this.frontends = frontends;
    this.services = services;
    this.groups = groups;
    this.routeStats = routeStats;
    this.workloadOf = workloadOfCgroup;
    for (const s of routeStats.values()) s.retain(alive.get(s.service));
    this.metrics.setRoutes([...routeStats.values()]);
    this.metrics.forgetBackends(alive);
  }

  /** true when no service in changed is L7 now or was before (an indexed walk: no allocation per service) */
  private onlyL4(model: Model, changed: ReadonlySet<string>): boolean {
    for (const name of changed) if (this.services.has(name)) return false;
    const list = model.services;
    for (let i = 0; i < list.length; i++) {
      const svc = list[i]!;
      if (svc.http !== undefined && changed.has(svc.name)) return false;
    }
    return true;
  }

  private compileService(svc: Service, http: HttpPolicy, routeStats: Map<string, RouteStats>): ServiceState {
    const router = compileRoutes<RouteState>(svc.name, http.routes, (r, match, index) => {
      const id = `${svc.name}\0${r.name}`;
      const stats = this.routeStats.get(id) ?? new RouteStats(svc.name, r.name);
      routeStats.set(id, stats);
      return {
        index,
        name: r.name,
        match,
        def: r,
        timeoutMs: r.timeoutMs,
        retry: r.retry && r.retry.attempts > 0 ? new RetryRules(r.retry) : undefined,
        requestHeaders: r.requestHeaders,
        responseHeaders: r.responseHeaders,
        stats,
      };
    });
    return {
      name: svc.name,
      http,
      router,
      authz: http.authz ? new Authorizer(http.authz, svc.name) : undefined,
      early: this.metrics.earlyStats(svc.name),
      groups: [],
    };
  }

  private compileFrontend(svc: ServiceState, f: Frontend, groups: Map<string, GroupState>, keys: Set<string>): FrontendState {
    const vipPort = hostPort(f.vip, f.port);
    const byName = new Map<string, GroupState>();
    const next = new Map<GroupState, BackendSlot[]>();
    for (const b of f.backends) {
      const name = b.group ?? DEFAULT_GROUP;
      let g = byName.get(name);
      if (!g) {
        const id = `${svc.name}\0${vipPort}\0${name}`;
        g = this.groups.get(id) ?? new GroupState(svc.name, name, vipPort, svc.http.circuitBreaker);
        groups.set(id, g);
        byName.set(name, g);
        next.set(g, []);
        (svc.groups as GroupState[]).push(g);
        g.breaker.limits = svc.http.circuitBreaker;
        g.outlier = svc.http.outlierDetection;
        if (g.balancerKind !== svc.http.balancer) {
          g.balancer = makeBalancer(svc.http.balancer, this.random);
          g.balancerKind = svc.http.balancer;
        }
        g.dirty = true;
      }
      const key = hostPort(b.address, b.port);
      keys.add(key);
      const slots = next.get(g)!;
      if (slots.some((s) => s.upstream.key === key)) continue;
      const old = g.slots.find((s) => s.upstream.key === key);
      if (old) {
        old.weight = b.weight;
        slots.push(old);
      } else {
        slots.push({
          upstream: { key, address: b.address, family: b.family, port: b.port, group: g.breaker },
          active: 0,
          weight: b.weight,
          consecutive5xx: 0,
          consecutiveGatewayErrors: 0,
        });
      }
    }
    for (const [g, slots] of next) {
      g.slots = slots;
      g.keys = slots.map((s) => s.upstream.key);
    }
    const splits = svc.router.routes.map((r): Split => {
      const out: Split = { groups: [], cumulative: [], total: 0 };
      for (const w of r.def.split) {
        if (!(w.weight > 0)) continue;
        out.total += w.weight;
        out.groups.push(byName.get(w.group));
        out.cumulative.push(out.total);
      }
      return out;
    });
    return { service: svc, vipPort, splits };
  }

  begin(dst: OriginalDst, source: Source, head: RequestHead): Exchange | LocalReply {
    const fe = this.frontends.get(dst.vip)?.get(dst.port);
    if (!fe) {
      // The kernel redirected this connection when an L7 service was there; there is none now (removed, or L4 since):
      // 421 tells the client to connect again, which goes wherever the kernel now sends it.
      const reason: LocalReason = 'misdirected';
      const stats = this.metrics.earlyStats('');
      stats.backend('').classes[CLASS_LOCAL]!++;
      stats.localReply(reason);
      this.log.debug({ vip: dst.vip, port: dst.port, method: head.method, path: head.path, reason }, 'no L7 service for this destination');
      return localReply(head, 421, `no L7 service at ${hostPort(dst.vip, dst.port)} (any more): connect again`, { 'x-sockmesh-reason': reason });
    }
    const svc = fe.service;
    // A '#' has no place in a request-target (RFC 9112 3.2: a fragment is never sent). Matched as it came, '/admin#x'
    // escapes a rule on exact /admin, while the backend's URL parser reads the path /admin: refused, as Envoy does.
    if (head.path.includes('#')) {
      this.early(svc, head, 'bad-path', 400);
      return localReply(head, 400, 'a request-target must not carry a #fragment', { 'x-sockmesh-reason': 'bad-path' });
    }
    const path = matchPath(head.path);
    if (svc.authz) {
      const workload = svc.authz.needsWorkload ? this.workloadOf(source.cgroupId) : undefined;
      const denied = svc.authz.check(workload, path, head);
      if (denied !== undefined) {
        this.early(svc, head, 'denied', 403);
        return localReply(head, 403, `denied by ${denied}`, { 'x-sockmesh-denied': denied });
      }
    }
    const route = svc.router.route(path, head);
    if (!route) {
      this.early(svc, head, 'no-route', 404);
      return localReply(head, 404, 'no route', { 'x-sockmesh-reason': 'no-route' });
    }
    const split = fe.splits[route.index]!;
    let group: GroupState | undefined;
    if (split.groups.length === 1) group = split.groups[0];
    else if (split.total > 0) {
      const x = this.random() * split.total;
      let i = 0;
      while (i < split.cumulative.length - 1 && x >= split.cumulative[i]!) i++;
      group = split.groups[i];
    }
    if (!group || group.slots.length === 0) {
      const s = route.stats.backend('');
      s.classes[CLASS_LOCAL]!++;
      route.stats.localReply('no-healthy-upstream');
      if (this.accessLog.sample(svc.http.accessLogSample))
        this.accessLog.write({ service: svc.name, route: route.name, method: head.method, path: head.path, status: 503, backend: '', attempts: 0, durationMs: 0, reason: 'no-healthy-upstream' });
      return localReply(head, 503, 'no healthy upstream', { 'x-sockmesh-reason': 'no-healthy-upstream' });
    }
    return new PolicyExchange(this, svc, route, group, head);
  }

  /** counts and logs a local reply made before a route was chosen */
  private early(svc: ServiceState, head: RequestHead, reason: LocalReason, status: number): void {
    svc.early.backend('').classes[CLASS_LOCAL]!++;
    svc.early.localReply(reason);
    if (this.accessLog.sample(svc.http.accessLogSample))
      this.accessLog.write({ service: svc.name, route: '', method: head.method, path: head.path, status, backend: '', attempts: 0, durationMs: 0, reason });
  }

  /** @internal the exchange's end, for the access log */
  logAccess(svc: ServiceState, ex: PolicyExchange, status: number, grpcStatus: number | undefined, durationMs: number): void {
    if (!this.accessLog.sample(svc.http.accessLogSample)) return;
    this.accessLog.write({
      service: svc.name,
      route: ex.route,
      method: ex.head.method,
      path: ex.head.path,
      status,
      grpcStatus,
      backend: ex.lastBackend(),
      attempts: ex.attempts,
      durationMs: Math.round(durationMs * 1000) / 1000,
      reason: ex.localReason,
    });
  }

  /** @internal outlier detection after an attempt's outcome */
  recordOutcome(group: GroupState, slot: BackendSlot, o: Outcome): void {
    const cfg = group.outlier;
    if (!cfg) return;
    const rule = countOutcome(slot, o, cfg);
    if (!rule) return;
    const ms = tryEject(this.states, cfg, group.service, slot.upstream.key, group.keys, rule);
    if (ms > 0) {
      this.metrics.ejected(group.service, slot.upstream.key, rule);
      this.log.warn({ service: group.service, group: group.name, backend: slot.upstream.key, rule, ejectionMs: ms, ejections: this.states.ejections(group.service, slot.upstream.key) }, 'backend ejected');
    } else {
      this.log.debug({ service: group.service, backend: slot.upstream.key, rule }, 'ejection refused (already out or max ejection percent)');
    }
  }

  private groupCounts(): GroupCounts[] {
    return [...this.groups.values()].map((g) => ({
      service: g.service,
      group: g.name,
      frontend: g.frontend,
      active: g.breaker.requests,
      pending: g.breaker.pending,
      connections: g.breaker.connections,
      retries: g.breaker.retries,
      overflows: g.breaker.overflows,
    }));
  }

  routesReport(): RouteReport[] {
    const out: RouteReport[] = [];
    for (const svc of this.services.values()) {
      const fes = [...this.frontends.values()].flatMap((m) => [...m.values()]).filter((f) => f.service === svc);
      for (const r of svc.router.routes) {
        const groups: GroupReport[] = [];
        const overflows: Record<string, number> = {};
        for (const fe of fes)
          for (const g of fe.splits[r.index]!.groups) {
            if (!g || groups.some((x) => x.group === g.name && x.frontend === g.frontend)) continue;
            groups.push(groupReport(g));
            for (const [k, n] of Object.entries(g.breaker.overflows)) if (n) overflows[k] = (overflows[k] ?? 0) + n;
          }
        const d = r.def;
        out.push({
          service: svc.name,
          route: r.name,
          match: d.match,
          split: d.split.map((w) => ({ group: w.group, weight: w.weight })),
          timeoutMs: d.timeoutMs,
          retry: d.retry
            ? { attempts: d.retry.attempts, perTryTimeoutMs: d.retry.perTryTimeoutMs, retryOn: [...d.retry.retryOn], budgetPercent: d.retry.budgetPercent, minRetryConcurrency: d.retry.minRetryConcurrency }
            : undefined,
          requests: r.stats.totals(),
          localReplies: Object.fromEntries(r.stats.local),
          retries: r.stats.retries,
          budgetExhausted: r.stats.budgetExhausted,
          overflows,
          groups,
        });
      }
    }
    return out;
  }

  backendsReport(): BackendReport[] {
    const byKey = new Map<string, { service: string; backend: string; probe?: { since: number; reason: string }; ejection?: { since: number; until: number; count: number; reason: string } }>();
    for (const s of this.states.list()) byKey.set(`${s.service}\0${s.backend}`, s);
    const out: BackendReport[] = [];
    for (const g of this.groups.values())
      for (const slot of g.slots) {
        const key = slot.upstream.key;
        const st = byKey.get(`${g.service}\0${key}`);
        const r: BackendReport = {
          service: g.service,
          group: g.name,
          frontend: g.frontend,
          backend: key,
          weight: slot.weight,
          activeRequests: slot.active,
          out: st !== undefined,
          ejected: st?.ejection !== undefined,
          ejections: this.states.ejections(g.service, key, g.outlier?.intervalMs),
          consecutive5xx: slot.consecutive5xx,
          consecutiveGatewayErrors: slot.consecutiveGatewayErrors,
        };
        if (st?.ejection) {
          r.reason = st.ejection.reason;
          r.since = st.ejection.since;
          r.until = st.ejection.until;
        } else if (st?.probe) {
          r.reason = `probe: ${st.probe.reason}`;
          r.since = st.probe.since;
        }
        out.push(r);
      }
    return out;
  }
}

function groupReport(g: GroupState): GroupReport {
  return {
    group: g.name,
    frontend: g.frontend,
    backends: g.slots.length,
    activeRequests: g.breaker.requests,
    pendingRequests: g.breaker.pending,
    connections: g.breaker.connections,
    activeRetries: g.breaker.retries,
    limits: { ...g.breaker.limits },
    overflows: { ...g.breaker.overflows },
  };
}

/** One attempt: the engine calls finish() once. */
class PolicyAttempt implements Attempt {
  finished = false;
  constructor(
    private readonly ex: PolicyExchange,
    readonly slot: BackendSlot,
    readonly retry: boolean,
  ) {}
  get upstream(): Upstream {
    return this.slot.upstream;
  }
  finish(outcome: Outcome): void {
    if (this.finished) return;
    this.finished = true;
    this.ex.finished(this, outcome);
  }
}

/**
 * One request's life in the policy. Accounting it holds and gives back exactly once:
 * - the group's active requests (from a successful attempt(1) to end());
 * - the current backend's active requests (from its attempt to the next attempt or end(): the
 *   response body of the last attempt is still streaming until end());
 * - a retry slot (from retryDelay's yes, through backoff, until that retry's finish()).
 */
class PolicyExchange implements Exchange {
  readonly route: string;
  readonly timeoutMs: number;
  readonly perTryTimeoutMs: number;
  readonly bufferLimitBytes: number;
  readonly requestHeaders: HeaderRewrite;
  readonly responseHeaders: HeaderRewrite;
  attempts = 0;
  localReason: LocalReason | undefined;
  private readonly start: number;
  private readonly retry: RetryRules | undefined;
  /** a gRPC call retried only on connect failures and the gRPC codes of retry_on (retry.mode) */
  private readonly safeOnly: boolean;
  private counted = false;
  private slot: BackendSlot | undefined;
  private avoid: BackendSlot | undefined;
  private retryReserved = false;
  private retryAttempt: PolicyAttempt | undefined;
  private ended = false;

  constructor(
    private readonly p: ProxyPolicy,
    private readonly svc: ServiceState,
    private readonly r: RouteState,
    private readonly group: GroupState,
    readonly head: RequestHead,
  ) {
    this.start = p.now();
    this.route = r.name;
    this.timeoutMs = r.timeoutMs;
    const mode = r.retry ? r.retry.mode(head.method, head.grpc) : RETRY_NONE;
    const retry = mode !== RETRY_NONE ? r.retry : undefined;
    this.retry = retry;
    this.safeOnly = mode === RETRY_SAFE;
    this.perTryTimeoutMs = r.retry ? r.retry.perTryTimeoutMs : 0;
    // a request that will never be retried need not be buffered
    this.bufferLimitBytes = retry ? retry.bufferLimitBytes : 0;
    this.requestHeaders = r.requestHeaders;
    this.responseHeaders = r.responseHeaders;
  }

  lastBackend(): string {
    return this.slot ? this.slot.upstream.key : '';
  }

  attempt(n: number): Attempt | LocalReply {
    const b = this.group.breaker;
    if (n <= 1) {
      if (!this.counted) {
        if (!b.tryRequest()) return this.overflow('max-requests');
        this.counted = true;
      }
    } else {
      if (!this.retryReserved && !b.tryRetry()) return this.overflow('max-retries');
      this.retryReserved = false;
      this.r.stats.retries++;
    }
    if (this.slot) {
      this.slot.active--;
      this.slot = undefined;
    }
    const usable = this.group.usable(this.p.states);
    if (usable.length === 0) {
      if (n > 1) b.retryDone();
      this.localReason = 'no-healthy-upstream';
      return localReply(this.head, 503, 'no healthy upstream', { 'x-sockmesh-reason': 'no-healthy-upstream' });
    }
    const slot = this.group.balancer.pick(usable, this.avoid) as BackendSlot;
    slot.active++;
    this.slot = slot;
    this.attempts = n;
    const a = new PolicyAttempt(this, slot, n > 1);
    if (n > 1) this.retryAttempt = a;
    return a;
  }

  /** @internal from PolicyAttempt.finish */
  finished(a: PolicyAttempt, o: Outcome): void {
    if (a === this.retryAttempt) {
      this.retryAttempt = undefined;
      this.group.breaker.retryDone();
    }
    // the client went away: says nothing about the backend
    if (o.kind === 'cancelled') return;
    if (o.kind === 'overflow') {
      // the engine could not get a connection; the limit was counted by the breaker itself
      this.localReason = (o.limit as Limit) ?? 'max-pending-requests';
      return;
    }
    const failed = o.kind !== 'response' || o.status >= 500;
    this.avoid = failed ? a.slot : undefined;
    // The timeouts run from the request head: while a body was still coming, a timeout may be the client's slowness,
    // not the backend's; counted, a client stopping halfway through its uploads would eject healthy backends.
    if (o.kind === 'timeout' && this.head.hasBody && o.requestComplete !== true) return;
    this.p.recordOutcome(this.group, a.slot, o);
  }

  retryDelay(n: number, outcome: Outcome, bodyReplayable: boolean): number | null {
    const retry = this.retry;
    if (!retry || this.ended || n > retry.attempts) return null;
    if (this.head.hasBody && !bodyReplayable) return null;
    if (!(this.safeOnly ? retry.coversSafe(outcome) : retry.covers(outcome))) return null;
    const b = this.group.breaker;
    if (!budgetAllows(b.retries, b.requests, retry.budgetPercent, retry.minRetryConcurrency)) {
      this.r.stats.budgetExhausted++;
      return null;
    }
    // the retry holds its place from now, through the backoff, until its attempt has an outcome
    if (!b.tryRetry()) return null;
    this.retryReserved = true;
    return backoffMs(n, retry.backoffBaseMs, retry.backoffMaxMs, this.p.random);
  }

  end(status: number, grpcStatus?: number): void {
    if (this.ended) return;
    this.ended = true;
    const b = this.group.breaker;
    if (this.counted) b.requestDone();
    if (this.retryReserved) {
      this.retryReserved = false;
      b.retryDone();
    }
    if (this.retryAttempt) {
      this.retryAttempt = undefined;
      b.retryDone();
    }
    const slot = this.slot;
    if (slot) slot.active--;
    const ms = this.p.now() - this.start;
    const stats = this.r.stats.backend(slot ? slot.upstream.key : '');
    if (this.localReason !== undefined && status !== 0) {
      stats.classes[CLASS_LOCAL]!++;
      this.r.stats.localReply(this.localReason);
    } else stats.classes[statusClass(status)]!++;
    stats.observe(ms);
    this.p.logAccess(this.svc, this, status, grpcStatus, ms);
  }

  private overflow(limit: Limit): LocalReply {
    this.localReason = limit;
    return localReply(this.head, 503, `upstream overflow: ${limit}`, { 'x-sockmesh-overflow': limit });
  }
}

