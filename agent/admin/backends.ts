// The reports behind GET /v1/backends and GET /v1/routes: the model, what BackendStates and the health checker say
// about each backend, and the proxy's live numbers when the proxy policy provides them (an optional provider, so
// the admin API works the same with or without the L7 proxy running).
import type { Model, Route, StringMatch } from '../model/types.js';
import type { BackendStates, BackendState } from '../health/states.js';
import type { HealthChecker } from '../health/checker.js';
import { backendKey, effectiveModel } from '../health/effective.js';
import type {
  BackendHealthReport, BackendsReport, FrontendBackendsReport, LiveNumbers, ProxyReportSource, RouteReport, RoutesReport,
} from './protocol.js';

const iso = (ms: number): string => new Date(ms).toISOString();
const id = (service: string, name: string): string => `${service}\0${name}`;

/** The proxy's live entries by service and name (backend key or route name); a failing provider is reported, not fatal. */
function liveIndex<T extends { service: string }>(provider: (() => Iterable<T>) | undefined, nameOf: (x: T) => string):
  { index: Map<string, T>; error: string | null } {
  const index = new Map<string, T>();
  if (!provider) return { index, error: null };
  try {
    for (const x of provider()) index.set(id(x.service, nameOf(x)), x);
    return { index, error: null };
  } catch (e) {
    return { index, error: `the proxy's report failed: ${(e as Error).message}` };
  }
}

const IDENTITY = new Set(['service', 'backend', 'route']);
/** What a route row already says from the model: not repeated from the proxy's report. */
const ROUTE_DEFINITION = new Set([...IDENTITY, 'match', 'split', 'timeoutMs', 'retry']);

/** Live numbers without the fields the row already has. */
function numbers(x: object | undefined, omit: ReadonlySet<string> = IDENTITY): LiveNumbers | null {
  if (!x) return null;
  const out: LiveNumbers = {};
  for (const [k, v] of Object.entries(x as Record<string, unknown>)) if (!omit.has(k)) out[k] = v;
  return out;
}

export interface BackendsSources {
  model: Model | undefined;
  states: BackendStates;
  checker: HealthChecker | undefined;
  proxy: ProxyReportSource;
}

export function backendsReport(src: BackendsSources, only?: string): BackendsReport {
  const model = src.model ?? { services: [] };
  const scope = only !== undefined ? new Set([only]) : undefined;
  const eff = effectiveModel(model, src.states, scope);
  const panicked = new Set(eff.panics.map((p) => `${p.service}|${p.vip}|${p.port}|${p.protocol}`));
  const out = new Map<string, BackendState>();
  for (const s of src.states.list()) out.set(id(s.service, s.backend), s);
  // The proxy reports a backend once per frontend (its groups are per frontend): keyed by frontend when it says which.
  const live = liveIndex(src.proxy.backends, (x) => {
    const fe = (x as { frontend?: unknown }).frontend;
    return typeof fe === 'string' ? `${fe}\0${x.backend}` : x.backend;
  });
  const services: BackendsReport['services'] = [];
  // effectiveModel keeps the order of services and frontends: index i of one is index i of the other.
  eff.model.services.forEach((svc, si) => {
    if (only !== undefined && svc.name !== only) return;
    const desired = model.services[si]!;
    const frontends: FrontendBackendsReport[] = svc.frontends.map((fe, fi) => {
      const panic = panicked.has(`${svc.name}|${fe.vip}|${fe.port}|${fe.protocol}`);
      const backends: BackendHealthReport[] = fe.backends.map((b, bi) => {
        const key = backendKey(b.address, b.port);
        const weight = desired.frontends[fi]!.backends[bi]!.weight;
        const st = out.get(id(svc.name, key));
        const probe = src.checker?.report(svc.name, key) ?? null;
        const isOut = st !== undefined && (st.probe !== undefined || st.ejection !== undefined);
        const reasons: string[] = [];
        if (st?.probe) reasons.push(`health check: ${st.probe.reason}`);
        if (st?.ejection) reasons.push(`ejected: ${st.ejection.reason}`);
        const since = [st?.probe?.since, st?.ejection?.since].filter((x): x is number => x !== undefined);
        return {
          backend: key, address: b.address, port: b.port, group: b.group ?? 'default',
          weight, effectiveWeight: b.weight,
          state: weight === 0 ? 'drained' : !isOut ? 'in' : panic ? 'panic' : 'out',
          reasons,
          since: since.length ? iso(Math.min(...since)) : null,
          probe: probe && {
            ...probe,
            failingSince: st?.probe ? iso(st.probe.since) : null,
          },
          ejection: st?.ejection ? { since: iso(st.ejection.since), until: iso(st.ejection.until), count: st.ejection.count, reason: st.ejection.reason } : null,
          ejections: src.states.ejections(svc.name, key, svc.http?.outlierDetection?.intervalMs),
          proxy: numbers(live.index.get(id(svc.name, `${backendKey(fe.vip, fe.port)}\0${key}`)) ?? live.index.get(id(svc.name, key))),
        };
      });
      return { vip: fe.vip, port: fe.port, protocol: fe.protocol, panic, backends };
    });
    services.push({ service: svc.name, l7: svc.http !== undefined, healthCheck: svc.healthCheck ?? null, frontends });
  });
  return { services, proxyError: live.error };
}

function matchText(m: StringMatch): string {
  if ('exact' in m) return m.exact;
  if ('prefix' in m) return `${m.prefix}*`;
  return `~${m.regex}`;
}

/** A route's match as one line: 'GET,POST /api/* x-canary=1'. */
export function routeMatchText(r: Route): string {
  const parts: string[] = [];
  if (r.match.methods?.length) parts.push(r.match.methods.join(','));
  parts.push(r.match.path ? matchText(r.match.path) : '*');
  for (const h of r.match.headers ?? []) {
    parts.push(`${h.invert ? '!' : ''}${h.name}${h.value ? `=${matchText(h.value)}` : ''}`);
  }
  return parts.join(' ');
}

export function routesReport(model: Model | undefined, proxy: ProxyReportSource, only?: string): RoutesReport {
  const live = liveIndex(proxy.routes, (x) => x.route);
  const routes: RouteReport[] = [];
  for (const svc of model?.services ?? []) {
    if (!svc.http || (only !== undefined && svc.name !== only)) continue;
    for (const r of svc.http.routes) {
      const retry = r.retry && r.retry.attempts > 0 ? r.retry : undefined;
      routes.push({
        service: svc.name, route: r.name, match: routeMatchText(r), split: r.split.map((s) => ({ ...s })),
        upstreamProtocol: svc.http.upstreamProtocol ?? 'downstream',
        timeoutMs: r.timeoutMs, retries: retry?.attempts ?? 0, perTryTimeoutMs: retry?.perTryTimeoutMs ?? 0,
        retryOn: retry ? [...retry.retryOn] : [],
        retriableStatusCodes: retry && retry.retryOn.includes('retriable-status-codes') ? [...retry.retriableStatusCodes] : [],
        retryNonIdempotent: retry?.retryNonIdempotent ?? false,
        live: numbers(live.index.get(id(svc.name, r.name)), ROUTE_DEFINITION),
      });
    }
  }
  return { routes, proxyError: live.error };
}
