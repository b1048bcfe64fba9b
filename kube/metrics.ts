// The Kubernetes watches' health as Prometheus families, computed at scrape time: the agent (--kubernetes,
// --kube-pods) and the control plane (serve --kubernetes) register the same families under their own prefix.
import type { Registry } from 'prom-client';
import type { ClusterHealth } from './watch.js';

interface Sample { labels: Record<string, string>; value: number }

export interface KubeMetricsSource {
  health(): ClusterHealth | undefined;
  /** services listed as not served (headless, ExternalName, NodePort parts, ...) */
  unserved?(): number;
  routeStatus?(): { writes: number; failures: number };
  /** Istio AuthorizationPolicies by outcome (serve --kubernetes) */
  authorizationPolicies?(): { watched: boolean; enforced: number; partial: number; notEnforced: number; invalid: number };
}

/**
 * Registers <prefix>_kubernetes_watch_connected{resource}, _watch_objects, _watch_relists_total,
 * _unreachable_since_seconds (0 while reachable), _syncs_total, _unserved_services, _route_status_writes_total{result}.
 */
export function registerKubeMetrics(registry: Registry, prefix: string, src: KubeMetricsSource): void {
  const p = `${prefix}_kubernetes`;
  const fam = (name: string, help: string, type: 'counter' | 'gauge', collect: (h: ClusterHealth) => Sample[]) => {
    const values = () => {
      const h = src.health();
      return h ? collect(h) : [];
    };
    registry.registerMetric({
      name, help, type, aggregator: 'sum',
      get: () => Promise.resolve({ name, help, type, aggregator: 'sum', values: values() }),
      reset: () => {},
    } as unknown as Parameters<Registry['registerMetric']>[0]);
  };
  const perWatch = (f: (w: ClusterHealth['watches'][number]) => number) => (h: ClusterHealth) =>
    h.watches.map((w) => ({ labels: { resource: w.resource }, value: f(w) }));
  fam(`${p}_watch_connected`, 'Whether the watch of this resource is connected to the API server (1) or not (0)', 'gauge', perWatch((w) => (w.connected ? 1 : 0)));
  fam(`${p}_watch_objects`, 'Objects of this resource in the reflector\'s store', 'gauge', perWatch((w) => w.objects));
  fam(`${p}_watch_relists_total`, 'Relists of this resource (410 Gone, or a list restarted)', 'counter', perWatch((w) => w.relists));
  fam(`${p}_unreachable_since_seconds`, 'Unix time since which the API server is unreachable; 0 while every watch is connected', 'gauge',
    (h) => [{ labels: {}, value: h.connected ? 0 : Date.parse(h.since) / 1000 }]);
  fam(`${p}_syncs_total`, 'Batches of changes translated and applied', 'counter', (h) => [{ labels: {}, value: h.batches }]);
  if (src.unserved) {
    const u = src.unserved;
    fam(`${p}_unserved_services`, 'Services (or parts) with nothing in the datapath: headless, ExternalName, NodePort, LoadBalancer, externalIPs, SCTP', 'gauge',
      () => [{ labels: {}, value: u() }]);
  }
  if (src.authorizationPolicies) {
    const a = src.authorizationPolicies;
    fam(`${p}_authorization_policies`, 'Istio AuthorizationPolicies by outcome: enforced, partial (a rule or field not checked at L4, never widening), not_enforced (AUDIT, CUSTOM, waypoint-attached), invalid (left out); GET /v1/kubernetes names each', 'gauge', () => {
      const s = a();
      if (!s.watched) return [];
      return [['enforced', s.enforced], ['partial', s.partial], ['not_enforced', s.notEnforced], ['invalid', s.invalid]].map(([k, v]) => ({ labels: { outcome: String(k) }, value: Number(v) }));
    });
  }
  if (src.routeStatus) {
    const r = src.routeStatus;
    fam(`${p}_route_status_writes_total`, 'HTTPRoute status writes to the API server, by result', 'counter', () => {
      const s = r();
      return [{ labels: { result: 'ok' }, value: s.writes }, { labels: { result: 'failed' }, value: s.failures }];
    });
  }
}
