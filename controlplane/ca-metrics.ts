// The CA's Prometheus families on the control plane's status endpoint (--status-listen, GET /metrics), computed at
// scrape time from the CA's API counters (ca-service.ts) and its generations (ca.ts status()):
//   sockmesh_controlplane_ca_certificates_issued_total
//   sockmesh_controlplane_ca_requests_refused_total{code, reason}   reason: ca-service.ts RefusalReason, a closed set
//   sockmesh_controlplane_ca_expiry_seconds{generation, certificate="root"|"intermediate"}   roots still in the bundle
//   sockmesh_controlplane_ca_generation            the number of the generation that signs now (gen-<n>; 1 for files)
//   sockmesh_controlplane_ca_trust_bundle_roots
//   sockmesh_controlplane_ca_rotation_step         0 none, 1 new root propagating, 2 old root retiring
// An alert on expiry_seconds (a root or intermediate within weeks of its end) is what says to rotate.
import type { Registry } from 'prom-client';
import type { CertificateAuthority } from './ca.js';
import type { CaServiceStats } from './ca-service.js';

interface Sample { labels: Record<string, string>; value: number }

/** `stats` is read at each scrape: the CA's API may be created after the registry (the server starts last). */
export function registerCaMetrics(registry: Registry, authority: CertificateAuthority, stats: () => CaServiceStats | undefined): void {
  const p = 'sockmesh_controlplane_ca';
  const fam = (name: string, help: string, type: 'counter' | 'gauge', values: () => Sample[]) => registry.registerMetric({
    name: `${p}_${name}`, help, type, aggregator: 'sum',
    get: () => Promise.resolve({ name: `${p}_${name}`, help, type, aggregator: 'sum', values: values() }),
    reset: () => {},
  } as unknown as Parameters<Registry['registerMetric']>[0]);
  fam('certificates_issued_total', 'Workload (and node) certificates the CA signed', 'counter', () => [{ labels: {}, value: stats()?.issued ?? 0 }]);
  fam('requests_refused_total', 'Certificate and trust-bundle requests refused, by gRPC status and reason', 'counter', () =>
    Object.entries(stats()?.refusedBy ?? {}).map(([k, value]) => {
      const [code, reason] = k.split(' ') as [string, string];
      return { labels: { code, reason }, value };
    }));
  fam('expiry_seconds', 'Seconds until the CA\'s root or intermediate expires, per generation whose root is in the trust bundle', 'gauge', () => {
    const now = Date.now();
    return authority.status().generations.filter((g) => g.state !== 'retired').flatMap((g) => [
      { labels: { generation: g.generation, certificate: 'root' }, value: Math.round((Date.parse(g.root.notAfter) - now) / 1000) },
      ...(g.intermediate ? [{ labels: { generation: g.generation, certificate: 'intermediate' }, value: Math.round((Date.parse(g.intermediate.notAfter) - now) / 1000) }] : []),
    ]);
  });
  fam('generation', 'The generation that signs now (gen-<n> of --ca-dir; 1 for --ca-cert files)', 'gauge', () => [{ labels: {}, value: Number(/^gen-(\d+)$/.exec(authority.status().active)?.[1] ?? 1) }]);
  fam('trust_bundle_roots', 'Roots in the trust bundle agents are given', 'gauge', () => [{ labels: {}, value: authority.status().bundleRoots }]);
  fam('rotation_step', 'Trust-bundle rotation: 0 none, 1 the new root propagating (not issuing yet), 2 issuing under it, the old root still trusted', 'gauge',
    () => [{ labels: {}, value: authority.status().rotationStep }]);
}
