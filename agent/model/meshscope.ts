// Which services a change of the mesh settings (nodes, workloads, modes, L4 policies) reaches (issue 13): an agent
// applies only those (the scoped apply an endpoint change already gets) instead of planning every service again. At
// cluster scale a pod started on any node changes the workloads every agent holds; with this it costs each agent the
// services that pod backs, not all of them.
//
// What of a service's kernel state depends on the mesh settings (datapath/plan.ts): its backends' tunnel flags
// (tunnelTargets: whether the backend address is another node's workload, and that workload's mode) and its TCP
// frontends' default verdict (authzDefault). The mesh-wide maps (sm_authz, sm_identities, sm_remote_pods, sm_strict)
// and the tunnel's view are synced whole on every apply, scoped or not. L7 services resolve identities through the
// workloads (the proxy's compile): any workload change includes them. A change of the modes themselves (the mesh's,
// a namespace's, a service's own, which reaches every service sharing that backend port) is rare: a full apply.
// Pure, no I/O.
import { authzDefault, compileAuthz4 } from './authz4.js';
import { identityNamespace } from './mesh.js';
import type { Model } from './types.js';

/**
 * The names of the services of `next` whose kernel plan may differ from `prev`'s because of the mesh settings, or
 * undefined when every service must be planned again. `prev` and `next` are the same listeners' model with two mesh
 * states (agent/sources/xds/mesh.ts compose(): a service with an unchanged mode is the same object in both).
 */
export function meshChangedServices(prev: Model, next: Model): Set<string> | undefined {
  if (prev.services.length !== next.services.length) return undefined;
  if (JSON.stringify(prev.mtls) !== JSON.stringify(next.mtls)) return undefined;
  for (let i = 0; i < next.services.length; i++) {
    const a = prev.services[i]!;
    const b = next.services[i]!;
    if (a !== b && (a.name !== b.name || a.mtls !== b.mtls)) return undefined;
  }
  const changed = new Set<string>();
  // workloads: the addresses whose owner (its node, its identity's namespace: what the tunnel flags read) changed
  const owners = (m: Model) => {
    const out = new Map<string, string>();
    for (const w of m.workloads ?? []) for (const a of w.addresses ?? []) out.set(a, `${w.node ?? ''}|${identityNamespace(w.identity) ?? ''}`);
    return out;
  };
  const was = owners(prev);
  const now = owners(next);
  const moved = new Set<string>();
  for (const [a, o] of now) if (was.get(a) !== o) moved.add(a);
  for (const a of was.keys()) if (!now.has(a)) moved.add(a);
  const workloadsChanged = moved.size > 0 || JSON.stringify(prev.workloads ?? []) !== JSON.stringify(next.workloads ?? []);
  const authzChanged = JSON.stringify(prev.authorization ?? []) !== JSON.stringify(next.authorization ?? []);
  const before = authzChanged ? compileAuthz4(prev) : undefined;
  const after = authzChanged ? compileAuthz4(next) : undefined;
  for (const svc of next.services) {
    if (svc.http !== undefined && workloadsChanged) {
      changed.add(svc.name);
      continue;
    }
    if (before && after && authzDefault(before, svc.name) !== authzDefault(after, svc.name)) {
      changed.add(svc.name);
      continue;
    }
    if (moved.size === 0) continue;
    outer: for (const fe of svc.frontends) {
      for (const b of fe.backends) {
        if (moved.has(b.address)) {
          changed.add(svc.name);
          break outer;
        }
      }
    }
  }
  return changed;
}
