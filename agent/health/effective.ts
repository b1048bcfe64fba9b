// The model the kernel gets: the desired model with every backend that BackendStates says is out (failed health
// check, or ejected by the proxy's outlier detection) at weight 0. Weight 0 is "draining" for the datapath: the
// selection tables leave it out (no new connection), connections already established live on, and session affinity
// to it is broken (bpf/lib/lb.h skips an affinity entry whose backend has weight 0).
//
// Panic: when every backend of a frontend that would take connections is out, the frontend keeps them all (as
// Envoy's panic threshold): sending to backends that fail their checks beats refusing every connection, since a
// health check can be wrong (a broken probe path, the agent's own network) while the service works.
//
// Copy on write: a service with nothing out is passed through as the same object, so the cost of this step follows
// the number of out backends, not the size of the model.
import type { Backend, Frontend, Model, Service } from '../model/types.js';

/** A backend's name in BackendStates, the proxy and reports: '127.0.0.1:8080', '[::1]:8080'. */
export function backendKey(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** What BackendStates tells this step (outOf returns the out backends of a service, by key). */
export interface OutSource {
  outOf(service: string): ReadonlySet<string>;
}

export interface Panic {
  service: string;
  vip: string;
  port: number;
  protocol: string;
  /** keys of the backends that are out but kept */
  backends: string[];
}

export interface EffectiveModel {
  model: Model;
  /** frontends whose every usable backend is out, kept whole */
  panics: Panic[];
  /** backends (service -> keys) given weight 0 here */
  drained: Map<string, Set<string>>;
}

/**
 * The effective model of `model`. With `scope`, only those services are looked at (the others are passed through
 * unchanged: a scoped reconcile reads only its scope).
 */
export function effectiveModel(model: Model, states: OutSource, scope?: ReadonlySet<string>): EffectiveModel {
  const panics: Panic[] = [];
  const drained = new Map<string, Set<string>>();
  let services: Service[] | undefined;
  model.services.forEach((svc, i) => {
    if (scope && !scope.has(svc.name)) return;
    const out = states.outOf(svc.name);
    if (out.size === 0) return;
    const eff = effectiveService(svc, out, panics, drained);
    if (eff === svc) return;
    services ??= model.services.slice();
    services[i] = eff;
  });
  return { model: services ? { ...model, services } : model, panics, drained };
}

function effectiveService(svc: Service, out: ReadonlySet<string>, panics: Panic[], drained: Map<string, Set<string>>): Service {
  let frontends: Frontend[] | undefined;
  svc.frontends.forEach((fe, i) => {
    let usable = 0;
    let outUsable = 0;
    for (const b of fe.backends) {
      if (b.weight <= 0) continue;
      usable++;
      if (out.has(backendKey(b.address, b.port))) outUsable++;
    }
    if (outUsable === 0) return;
    if (outUsable === usable) {
      panics.push({
        service: svc.name, vip: fe.vip, port: fe.port, protocol: fe.protocol,
        backends: fe.backends.filter((b) => b.weight > 0).map((b) => backendKey(b.address, b.port)),
      });
      return;
    }
    const backends: Backend[] = fe.backends.map((b) => {
      if (b.weight <= 0) return b;
      const key = backendKey(b.address, b.port);
      if (!out.has(key)) return b;
      let set = drained.get(svc.name);
      if (!set) drained.set(svc.name, (set = new Set()));
      set.add(key);
      return { ...b, weight: 0 };
    });
    frontends ??= svc.frontends.slice();
    frontends[i] = { ...fe, backends };
  });
  return frontends ? { ...svc, frontends } : svc;
}
