// The proxy's policy: for each request, which service (from the original destination), whether the
// source may ask it (authorization), which route and backend group, which backend (balancer), and
// then per attempt: circuit breaker, retries with backoff and budget, outlier detection, metrics and
// the access log. It implements the Policy of types.ts; the engine (server.ts) does all the I/O.
//
// Per request the order is:
//   1. service: the frontend vip:port the client connected to. None in the model: 503 (reason
//      no-service). A service there but without http (it is L4 now; the connection predates the
//      change): served for RETIRED_MS more by the L7 service the kernel sent it to (as Envoy drains a replaced
//      listener's connections with their old filter chain), then 421 Misdirected Request, which tells the client
//      to retry on a new connection, and a new connection goes straight to a backend.
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
// The policy is in four parts: this file (the Policy entry point: steps 1 to 4, model updates, outlier ejections),
// compile.ts (a model made into the state the request path reads), decide.ts (one exchange's attempts and retries)
// and reports.ts (the admin reports); outcome.ts says once what an attempt's outcome means for all of them.
import type { Logger } from '../observe/log.js';
import type { Registry } from 'prom-client';
import type { BackendStates } from '../health/states.js';
import type { Model, Service } from '../model/types.js';
import type { ProxyBackendReport, ProxyRouteReport, RequestTap } from '../admin/protocol.js';
import type { Exchange, LocalReply, OriginalDst, Outcome, Policy, RequestHead, Source } from './types.js';
import { matchPath } from './router.js';
import { countVerdict, tryEject } from './outlier.js';
import type { Verdict } from './outcome.js';
import { CLASS_LOCAL, ProxyMetrics, RouteStats, type GroupCounts } from './metrics.js';
import { AccessLog } from './accesslog.js';
import { compileModel, hostPort, type BackendSlot, type Compiled, type FrontendState, type GroupState, type RouteState, type ServiceState } from './compile.js';
import { localReply, PolicyExchange, type ExchangeHost, type LocalReason } from './decide.js';
import { backendsReport, routesReport } from './reports.js';
import { retarget, type TunnelDecider } from './tunnelup.js';

export { DEFAULT_GROUP } from './compile.js';
export type { LocalReason } from './decide.js';

export interface ProxyPolicyOptions {
  states: BackendStates;
  log: Logger;
  registry?: Registry;
  random?: () => number;
  now?: () => number;
  /** the live monitor: every finished request while a reader is attached */
  tap?: RequestTap;
  /**
   * Which backends of a model are reached through the HBONE tunnel (tunnelup.ts; the kernel hand-over's decision,
   * datapath/plan.ts tunnelTargets), made once per model; absent: none (the proxy connects to every backend directly).
   */
  tunnel?: (model: Model) => TunnelDecider | undefined;
}

/** how long a removed L7 frontend still serves the connections redirected to it before (see ProxyPolicy.retired) */
export const RETIRED_MS = 10_000;

function splitKey(key: string): [string, number] {
  const i = key.lastIndexOf('|');
  return [key.slice(0, i), Number(key.slice(i + 1))];
}

export class ProxyPolicy implements Policy, ExchangeHost {
  readonly states: BackendStates;
  readonly metrics: ProxyMetrics;
  private readonly log: Logger;
  private readonly accessLog: AccessLog;
  readonly random: () => number;
  readonly now: () => number;
  /** the compiled model in force */
  private c: Compiled = { frontends: new Map(), services: new Map(), groups: new Map(), routeStats: new Map(), alive: new Map() };
  /**
   * Frontends an update took away (the service removed, or L4 now), by `vip|port`, kept RETIRED_MS for the
   * connections the kernel sent to the proxy before the change: a request read from one after it is served as the
   * kernel meant it when it redirected the connection, not refused (kernel/xds-switch: an L7 -> L4 flip answered
   * 10-14 requests in 18 flips 421 before).
   */
  private readonly retired = new Map<string, { fe: FrontendState; until: number }>();
  private workloadOf: (cgroupId: bigint) => string | undefined = () => undefined;
  /** workload name -> identity (SPIFFE id), of the model in force */
  private identities = new Map<string, string>();
  private readonly tunnel: ((model: Model) => TunnelDecider | undefined) | undefined;
  /** what the tunnel targets and identities were last decided from (an L4-only update re-decides them when it moved) */
  private seen: Pick<Model, 'workloads' | 'mtls' | 'nodes'> = {};

  constructor(o: ProxyPolicyOptions) {
    this.states = o.states;
    this.log = o.log;
    this.random = o.random ?? Math.random;
    this.now = o.now ?? performance.now.bind(performance);
    this.tunnel = o.tunnel;
    this.metrics = new ProxyMetrics(o.registry);
    this.accessLog = new AccessLog(o.log, this.random, o.tap);
    this.metrics.setGroups(() => this.groupCounts());
    this.states.onChange((service) => {
      const s = this.c.services.get(service);
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
      // The L7 services' compiled state stays, but which of their backends go through the tunnel, and who the
      // clients are, follow the workloads (a pod on another node now, a new identity) and the mesh's modes, which an
      // L4-only change can move: re-decided for the existing slots only (the L7 backends), when those changed.
      if (model.workloads !== this.seen.workloads || model.mtls !== this.seen.mtls || model.nodes !== this.seen.nodes) this.follow(model);
      return;
    }
    const c = compileModel({
      prev: this.c,
      random: this.random,
      newRouteStats: (service, route) => new RouteStats(service, route),
      earlyStats: (service) => this.metrics.earlyStats(service),
      tunnelOf: this.tunnel?.(model),
    }, model);
    this.identities = identitiesOf(model);
    this.seen = { workloads: model.workloads, mtls: model.mtls, nodes: model.nodes };
    this.retire(c);
    this.c = c;
    this.workloadOf = workloadOfCgroup;
    for (const s of c.routeStats.values()) s.retain(c.alive.get(s.service));
    this.metrics.setRoutes([...c.routeStats.values()]);
    this.metrics.forgetBackends(c.alive);
  }

  /** the tunnel targets of the compiled L7 backends, and the identities, for a model whose workloads or modes moved */
  private follow(model: Model): void {
    this.seen = { workloads: model.workloads, mtls: model.mtls, nodes: model.nodes };
    this.identities = identitiesOf(model);
    if (!this.tunnel || this.c.groups.size === 0) return;
    const decide = this.tunnel(model);
    const defs = new Map<string, Service>();
    const list = model.services;
    for (let i = 0; i < list.length; i++) {
      const svc = list[i]!;
      if (svc.http !== undefined && this.c.services.has(svc.name)) defs.set(svc.name, svc);
    }
    for (const g of this.c.groups.values()) {
      const def = defs.get(g.service);
      if (def === undefined) continue;
      for (const slot of g.slots) retarget(slot, decide?.(def, slot.upstream.address, slot.upstream.port));
    }
  }

  /** true when no service in changed is L7 now or was before (an indexed walk: no allocation per service) */
  private onlyL4(model: Model, changed: ReadonlySet<string>): boolean {
    for (const name of changed) if (this.c.services.has(name)) return false;
    const list = model.services;
    for (let i = 0; i < list.length; i++) {
      const svc = list[i]!;
      if (svc.http !== undefined && changed.has(svc.name)) return false;
    }
    return true;
  }

  /** keeps the frontends `next` drops (see retired); forgets those expired or back in `next` */
  private retire(next: Compiled): void {
    const now = this.now();
    for (const [key, r] of this.retired) {
      const [vip, port] = splitKey(key);
      if (r.until <= now || next.frontends.get(vip)?.has(port)) this.retired.delete(key);
    }
    for (const [vip, ports] of this.c.frontends) {
      const kept = next.frontends.get(vip);
      for (const [port, fe] of ports) if (!kept?.has(port)) this.retired.set(`${vip}|${port}`, { fe, until: now + RETIRED_MS });
    }
  }

  begin(dst: OriginalDst, source: Source, head: RequestHead): Exchange | LocalReply {
    let fe = this.c.frontends.get(dst.vip)?.get(dst.port);
    if (!fe && this.retired.size !== 0) {
      const r = this.retired.get(`${dst.vip}|${dst.port}`);
      if (r !== undefined && r.until > this.now()) fe = r.fe;
    }
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
    return new PolicyExchange(this, svc, route, group, head, source);
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
      route: ex.route.name,
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

  /** per group: when a refused retry was last logged, and how many were refused since */
  private readonly refusedLog = new WeakMap<GroupState, { at: number; refused: number }>();

  /**
   * @internal A retry the route's rules allowed was refused by the budget or maxRetries: the client gets the failed
   * attempt's answer. Logged (at most once a second per group, with the count since) because that answer can be a
   * failure while a healthy backend existed: the log says which limit decided it.
   */
  retryRefused(group: GroupState, route: RouteState, limit: 'budget' | 'max-retries', failed: Outcome): void {
    const now = this.now();
    let r = this.refusedLog.get(group);
    if (!r) this.refusedLog.set(group, (r = { at: -Infinity, refused: 0 }));
    r.refused++;
    if (now - r.at < 1000) return;
    const b = group.breaker;
    this.log.warn({
      service: group.service, group: group.name, route: route.name, limit, failed: failed.kind === 'response' ? failed.status : failed.kind,
      activeRetries: b.retries, activeRequests: b.requests, maxRetries: b.limits.maxRetries, refused: r.refused,
    }, 'retry refused');
    r.at = now;
    r.refused = 0;
  }

  /** @internal the workload identity of a client's cgroup (a tunnelled upstream is opened as it) */
  identityOf(cgroupId: bigint): string | undefined {
    const w = this.workloadOf(cgroupId);
    return w === undefined ? undefined : this.identities.get(w);
  }

  /** @internal outlier detection after an attempt's outcome */
  recordOutcome(group: GroupState, slot: BackendSlot, v: Verdict): void {
    const cfg = group.outlier;
    if (!cfg) return;
    const rule = countVerdict(slot, v, cfg);
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
    return [...this.c.groups.values()].map((g) => ({
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

  routesReport(): ProxyRouteReport[] {
    return routesReport(this.c);
  }

  backendsReport(): ProxyBackendReport[] {
    return backendsReport(this.c.groups.values(), this.states);
  }
}

/** workload name -> identity (SPIFFE id) */
function identitiesOf(model: Model): Map<string, string> {
  const identities = new Map<string, string>();
  for (const w of model.workloads ?? []) if (w.identity !== undefined) identities.set(w.name, w.identity);
  return identities;
}
