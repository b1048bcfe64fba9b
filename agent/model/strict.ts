// Strict mode on this node (issue 13): which of the local pods' addresses and ports the kernel must close to other
// nodes (bpf/strict.bpf.c reads the entries from sm_strict). Pure, no I/O: the datapath writes what this returns.
//
// Per address, one entry for "every port" (port 0) carries the pod's namespace or mesh mode; a port gets an entry of
// its own only where a service's mode (its backends' port, mtls.ts mtlsModeFor) says otherwise. Only entries that
// change something are returned: a strict address, and the ports that open it again, or a strict port of an address
// that is otherwise open. Permissive and off behave the same on the server side (both accept plaintext), so an open
// port is written as the mode the model gives it, for meshctl to show.
import { MtlsModes } from './mtls.js';
import type { MtlsMode } from './mesh.js';
import type { Workload } from './l7.js';
import type { Model } from './types.js';

export interface StrictEntry {
  /** a local pod's address, canonical (as the pod scan and the model write it) */
  address: string;
  /** the pod port; 0 = every port of the address without an entry of its own */
  port: number;
  mode: MtlsMode;
}

/**
 * The entries for the local pods' addresses (`local`: this node's pods, as the agent's pod scan and the Kubernetes
 * source know them). A pod with no workload in the model is held to the mesh's mode and its services' modes.
 * Sorted by address, then port (port 0 first): a stable order for diffs and for people.
 */
export function strictEntries(model: Model, local: Iterable<string>): StrictEntry[] {
  // Nothing is strict anywhere: no entry (the common case costs one pass over the services).
  const services = model.services.filter((s) => s.mtls !== undefined);
  const anyStrict = model.mtls?.mode === 'strict' || Object.values(model.mtls?.namespaces ?? {}).includes('strict') ||
    services.some((s) => s.mtls === 'strict');
  if (!anyStrict) return [];
  const byAddress = new Map<string, Workload>();
  for (const w of model.workloads ?? []) for (const a of w.addresses ?? []) if (!byAddress.has(a)) byAddress.set(a, w);
  // address -> the ports services with a mode of their own send to there
  const ports = new Map<string, Set<number>>();
  for (const s of services) {
    for (const fe of s.frontends) {
      for (const b of fe.backends) {
        let set = ports.get(b.address);
        if (!set) ports.set(b.address, (set = new Set()));
        set.add(b.port);
      }
    }
  }
  const out: StrictEntry[] = [];
  const modes = new MtlsModes(model);
  for (const address of [...new Set(local)].sort()) {
    // a pod without a workload is a workload of one address for mtlsModeFor (its services' ports still count)
    const w: Workload = byAddress.get(address) ?? { name: '', cgroups: [], addresses: [address] };
    const base = modes.modeFor(w, undefined);
    if (base === 'strict') out.push({ address, port: 0, mode: base });
    // a service's mode is for its backends' port on every address of the workload (IPv4 and IPv6 alike)
    const own = new Set<number>();
    for (const a of w.addresses ?? [address]) for (const p of ports.get(a) ?? []) own.add(p);
    for (const port of [...own].sort((x, y) => x - y)) {
      const mode = modes.modeFor(w, port);
      if ((mode === 'strict') !== (base === 'strict')) out.push({ address, port, mode });
    }
  }
  return out;
}
