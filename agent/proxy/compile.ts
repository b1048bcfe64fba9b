// The proxy policy's compilation: a model's L7 services made into the state the request path reads (frontends by
// vip and port, each route's split over backend groups, each group's breaker, balancer and backends with their
// outlier counters). Groups and route counters whose names are unchanged carry over from the state in force, so a
// model update keeps breaker counts, balancer positions, active counts and outlier counters. Nothing here runs per
// request; the per-request decisions are in decide.ts, the admin reports in reports.ts.
import type { BackendStates } from '../health/states.js';
import type { Frontend, Model, Service } from '../model/types.js';
import type { CircuitBreaker, HeaderRewrite, HttpPolicy, OutlierDetection, Route } from '../model/l7.js';
import type { RouteSettings, Upstream } from './types.js';
import { Authorizer } from './authz.js';
import { makeBalancer, type Balancer, type Slot } from './balancer.js';
import { GroupBreaker } from './breaker.js';
import { compileRoutes, type CompiledMatch, type Router } from './router.js';
import { RetryRules } from './retry.js';
import type { OutlierCounters } from './outlier.js';
import { retarget, type TunnelDecider, type TunnelSlot } from './tunnelup.js';
import type { RouteStats } from './metrics.js';

export const DEFAULT_GROUP = 'default';

/** A backend of a group: the balancer's slot plus the outlier counters. */
export interface BackendSlot extends Slot, OutlierCounters, TunnelSlot {
  readonly upstream: Upstream;
  weight: number;
}

/** One backend group of one frontend: the unit of circuit breaking and balancing. */
export class GroupState {
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
export interface Split {
  groups: (GroupState | undefined)[];
  cumulative: number[];
  total: number;
}

export interface RouteState extends RouteSettings {
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

export interface ServiceState {
  readonly name: string;
  readonly http: HttpPolicy;
  readonly router: Router<RouteState>;
  readonly authz: Authorizer | undefined;
  readonly early: RouteStats;
  readonly groups: GroupState[];
}

export interface FrontendState {
  readonly service: ServiceState;
  readonly vipPort: string;
  /** by route index */
  readonly splits: Split[];
}

/** 'address:port', '[v6]:port': a backend's key, a frontend's name */
export const hostPort = (address: string, port: number): string => (address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`);

/** What one model compiles to. */
export interface Compiled {
  /** vip -> port -> frontend of an L7 service */
  frontends: Map<string, Map<number, FrontendState>>;
  /** L7 services by name */
  services: Map<string, ServiceState>;
  /** groups by service, frontend and name */
  groups: Map<string, GroupState>;
  /** route counters by service and route name */
  routeStats: Map<string, RouteStats>;
  /** backend keys of each service (what the metrics keep) */
  alive: Map<string, Set<string>>;
}

/** What compilation takes from the policy: the state in force (carried over by name) and how to make counters. */
export interface CompileContext {
  readonly prev: Pick<Compiled, 'groups' | 'routeStats'>;
  readonly random: () => number;
  newRouteStats(service: string, route: string): RouteStats;
  earlyStats(service: string): RouteStats;
  /** which backends are reached through the HBONE tunnel (tunnelup.ts); absent: none */
  readonly tunnelOf?: TunnelDecider;
}

/**
 * A model's L7 services compiled. Everything that can throw (a bad regex, naming service, route and field) is
 * compiled before any group is touched, so that a bad model changes nothing; the groups carried over are then
 * updated in place.
 */
export function compileModel(cx: CompileContext, model: Model): Compiled {
  const out: Compiled = { frontends: new Map(), services: new Map(), groups: new Map(), routeStats: new Map(), alive: new Map() };
  const compiled: [Service, ServiceState][] = [];
  for (const svc of model.services) {
    if (svc.http) compiled.push([svc, compileService(cx, svc, svc.http, out.routeStats, model.workloads)]);
  }
  for (const [svc, state] of compiled) {
    out.services.set(svc.name, state);
    const keys = new Set<string>();
    out.alive.set(svc.name, keys);
    for (const f of svc.frontends) {
      if (f.protocol !== 'tcp') continue;
      const fe = compileFrontend(cx, svc, state, f, out.groups, keys);
      let ports = out.frontends.get(f.vip);
      if (!ports) out.frontends.set(f.vip, (ports = new Map()));
      ports.set(f.port, fe);
    }
  }
  return out;
}

function compileService(cx: CompileContext, svc: Service, http: HttpPolicy, routeStats: Map<string, RouteStats>, workloads: Model['workloads']): ServiceState {
  const router = compileRoutes<RouteState>(svc.name, http.routes, (r, match, index) => {
    const id = `${svc.name}\0${r.name}`;
    const stats = cx.prev.routeStats.get(id) ?? cx.newRouteStats(svc.name, r.name);
    routeStats.set(id, stats);
    return {
      index,
      name: r.name,
      match,
      def: r,
      timeoutMs: r.timeoutMs,
      perTryTimeoutMs: r.retry && r.retry.attempts > 0 ? r.retry.perTryTimeoutMs : 0,
      retry: r.retry && r.retry.attempts > 0 ? new RetryRules(r.retry) : undefined,
      requestHeaders: r.requestHeaders,
      responseHeaders: r.responseHeaders,
      upstreamProtocol: http.upstreamProtocol ?? 'downstream',
      forwarded: http.forwarded,
      stats,
    };
  });
  return {
    name: svc.name,
    http,
    router,
    authz: http.authz ? new Authorizer(http.authz, svc.name, workloads) : undefined,
    early: cx.earlyStats(svc.name),
    groups: [],
  };
}

function compileFrontend(cx: CompileContext, def: Service, svc: ServiceState, f: Frontend, groups: Map<string, GroupState>, keys: Set<string>): FrontendState {
  const vipPort = hostPort(f.vip, f.port);
  const byName = new Map<string, GroupState>();
  const next = new Map<GroupState, BackendSlot[]>();
  for (const b of f.backends) {
    const name = b.group ?? DEFAULT_GROUP;
    let g = byName.get(name);
    if (!g) {
      const id = `${svc.name}\0${vipPort}\0${name}`;
      g = cx.prev.groups.get(id) ?? new GroupState(svc.name, name, vipPort, svc.http.circuitBreaker);
      groups.set(id, g);
      byName.set(name, g);
      next.set(g, []);
      (svc.groups as GroupState[]).push(g);
      g.breaker.limits = svc.http.circuitBreaker;
      g.outlier = svc.http.outlierDetection;
      if (g.balancerKind !== svc.http.balancer) {
        g.balancer = makeBalancer(svc.http.balancer, cx.random);
        g.balancerKind = svc.http.balancer;
      }
      g.dirty = true;
    }
    const key = hostPort(b.address, b.port);
    keys.add(key);
    const slots = next.get(g)!;
    if (slots.some((s) => s.upstream.key === key)) continue;
    const old = g.slots.find((s) => s.upstream.key === key);
    const tunnel = cx.tunnelOf?.(def, b.address, b.port);
    if (old) {
      old.weight = b.weight;
      retarget(old, tunnel);
      slots.push(old);
    } else {
      slots.push({
        upstream: { key, address: b.address, family: b.family, port: b.port, group: g.breaker },
        active: 0,
        weight: b.weight,
        consecutive5xx: 0,
        consecutiveGatewayErrors: 0,
        tunnel,
        viaTunnel: undefined,
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
