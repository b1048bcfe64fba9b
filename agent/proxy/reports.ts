// The proxy policy's admin reports (GET /v1/routes, GET /v1/backends through agent/admin/backends.ts): the compiled
// state with its live numbers, in the wire types of agent/admin/protocol.ts. Built when asked, never per request.
import type { BackendStates } from '../health/states.js';
import type { L7Event, ProxyBackendReport, ProxyGroupReport, ProxyRouteReport } from '../admin/protocol.js';
import type { Compiled, GroupState } from './compile.js';

/** A finished request (or a local reply): what the access log writes and the live monitor shows (with the attempts made
 * where the monitor shows the retries). */
export type RequestOutcome = Pick<L7Event, 'service' | 'route' | 'method' | 'path' | 'status' | 'grpcStatus' | 'backend' | 'durationMs' | 'reason'>
  & { attempts: number };

/** A finished request as the live monitor shows it (GET /v1/monitor): built only while a reader is attached. */
export function requestEvent(e: RequestOutcome): L7Event {
  const verdict = e.reason !== undefined && e.backend === '' ? 'local' : e.status === 0 || e.status >= 500 ? 'error' : 'forwarded';
  const ev: L7Event = {
    type: 'l7', kind: 'request', verdict, time: new Date().toISOString(), service: e.service, route: e.route,
    method: e.method, path: e.path, status: e.status, backend: e.backend, retries: Math.max(0, e.attempts - 1),
    durationMs: e.durationMs,
  };
  if (e.grpcStatus !== undefined) ev.grpcStatus = e.grpcStatus;
  if (e.reason !== undefined) ev.reason = e.reason;
  return ev;
}

export function routesReport(c: Pick<Compiled, 'services' | 'frontends'>): ProxyRouteReport[] {
  const out: ProxyRouteReport[] = [];
  for (const svc of c.services.values()) {
    const fes = [...c.frontends.values()].flatMap((m) => [...m.values()]).filter((f) => f.service === svc);
    for (const r of svc.router.routes) {
      const groups: ProxyGroupReport[] = [];
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

export function backendsReport(groups: Iterable<GroupState>, states: BackendStates): ProxyBackendReport[] {
  const byKey = new Map<string, { service: string; backend: string; probe?: { since: number; reason: string }; ejection?: { since: number; until: number; count: number; reason: string } }>();
  for (const s of states.list()) byKey.set(`${s.service}\0${s.backend}`, s);
  const out: ProxyBackendReport[] = [];
  for (const g of groups)
    for (const slot of g.slots) {
      const key = slot.upstream.key;
      const st = byKey.get(`${g.service}\0${key}`);
      const r: ProxyBackendReport = {
        service: g.service,
        group: g.name,
        frontend: g.frontend,
        backend: key,
        weight: slot.weight,
        activeRequests: slot.active,
        out: st !== undefined,
        ejected: st?.ejection !== undefined,
        ejections: states.ejections(g.service, key, g.outlier?.intervalMs),
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

function groupReport(g: GroupState): ProxyGroupReport {
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
