// Which mTLS mode a destination is held to (mesh.ts MtlsMode): what the kernel's hand-over to the tunnel (client
// side) and strict mode (server side) both ask of the model. Pure, no I/O.
import { DEFAULT_MTLS_MODE, identityNamespace, type MtlsMode } from './mesh.js';
import type { Workload } from './l7.js';
import type { Model, Service } from './types.js';

/**
 * The mTLS mode a destination workload's port is held to. A service's own `mtls` wins over the namespace's and the
 * mesh's for the ports its backends serve (Istio's port-level override); when several services with their own mode
 * share a backend port, the strictest wins (a port cannot be strict for one and open for the other).
 */
export function mtlsModeFor(model: Model, workload: Workload | undefined, port: number | undefined, via?: Service): MtlsMode {
  if (via?.mtls) return via.mtls;
  if (workload && port !== undefined) {
    let found: MtlsMode | undefined;
    for (const address of workload.addresses ?? []) {
      for (const svc of model.services) {
        if (!svc.mtls) continue;
        if (svc.frontends.some((fe) => fe.backends.some((b) => b.address === address && b.port === port))) found = stricter(found, svc.mtls);
      }
    }
    if (found) return found;
  }
  const ns = identityNamespace(workload?.identity);
  const byNs = ns !== undefined ? model.mtls?.namespaces[ns] : undefined;
  return byNs ?? model.mtls?.mode ?? DEFAULT_MTLS_MODE;
}

const RANK: Record<MtlsMode, number> = { off: 0, permissive: 1, strict: 2 };
function stricter(a: MtlsMode | undefined, b: MtlsMode): MtlsMode {
  return a === undefined || RANK[b] > RANK[a] ? b : a;
}
