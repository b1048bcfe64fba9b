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
  return new MtlsModes(model).modeFor(workload, port, via);
}

/**
 * mtlsModeFor for many destinations of one model: the services' own modes indexed by backend (address, port) once,
 * on the first question that needs them. (Asked per distinct backend as mtlsModeFor, every question walked every
 * service: O(backends x services) per compile with the tunnel on.)
 */
export class MtlsModes {
  private byBackend: Map<string, MtlsMode> | undefined;
  /** how many times the services were walked for the index (tests count the work: at most 1) */
  walks = 0;

  constructor(private readonly model: Model) {}

  modeFor(workload: Workload | undefined, port: number | undefined, via?: Service): MtlsMode {
    if (via?.mtls) return via.mtls;
    if (workload && port !== undefined) {
      const index = (this.byBackend ??= this.index());
      let found: MtlsMode | undefined;
      for (const address of workload.addresses ?? []) {
        const m = index.get(backendKey(address, port));
        if (m !== undefined) found = stricter(found, m);
      }
      if (found) return found;
    }
    const ns = identityNamespace(workload?.identity);
    const byNs = ns !== undefined ? this.model.mtls?.namespaces[ns] : undefined;
    return byNs ?? this.model.mtls?.mode ?? DEFAULT_MTLS_MODE;
  }

  /** backend (address, port) -> the strictest mode of the services with a mode of their own that send there */
  private index(): Map<string, MtlsMode> {
    this.walks++;
    const m = new Map<string, MtlsMode>();
    for (const svc of this.model.services) {
      const mode = svc.mtls;
      if (!mode) continue;
      for (const fe of svc.frontends) {
        for (const b of fe.backends) {
          const k = backendKey(b.address, b.port);
          m.set(k, stricter(m.get(k), mode));
        }
      }
    }
    return m;
  }
}

const backendKey = (address: string, port: number): string => `${address}|${port}`;

const RANK: Record<MtlsMode, number> = { off: 0, permissive: 1, strict: 2 };
function stricter(a: MtlsMode | undefined, b: MtlsMode): MtlsMode {
  return a === undefined || RANK[b] > RANK[a] ? b : a;
}
