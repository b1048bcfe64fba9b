// The incremental translation: translateCluster's result (translate.ts, the reference), kept up to date from what
// the reflectors say changed instead of recomputed from the whole view. The agent (--kubernetes) and the control
// plane translate every batch of watch events; at 10,000 services a batch of one EndpointSlice change walked every
// service to find it again (~25 ms of CPU), and the full sync, which arrives as thousands of small batches, did
// that per batch. Here a batch costs the services it touched:
//
//   a Service changed        -> that service;
//   an EndpointSlice changed -> the services of its old and new kubernetes.io/service-name label;
//   an HTTPRoute changed, or a Service a route names as its parent -> the route index is rebuilt (routes are few),
//                               and every service that had or has routes attached is re-translated;
//   any of the above of a service that an HTTPRoute's backendRefs name -> also the routes' parents (their backend
//                               groups hold that service's endpoints);
//   a Node changed           -> nothing, unless this node's zone changed: then everything (it is read everywhere).
//
// Each service's translation (translateService) is kept; the result is assembled from them in key order, with the
// checks across services only for names and frontends that more than one service claims (Claims). A view that is
// not the one of the last call (other Map objects), or a call without a change set, translates everything, as the
// first sync does. test/unit/kube-translate-live.test.ts holds random change sequences to translateCluster: the
// results must be byte-identical.
import { assemble, Claims, nodeContext, translateService, type Made, type TranslateResult } from './translate.js';
import { buildRouteIndex } from './translate-http.js';
import { groupSlices, keyOf, moveSlice } from './translate-index.js';
import type { ClusterView, Ctx, NodeScope, RouteIndex } from './translate-types.js';
import type { NodeCtx } from './translate-endpoints.js';
import type { KEndpointSlice, KService } from './types.js';

/** What changed since the last call, by the keys of the view's maps (as the reflectors' stores name them). */
export interface ViewChanges {
  services?: Iterable<string>;
  endpointSlices?: Iterable<string>;
  httpRoutes?: Iterable<string>;
  nodes?: Iterable<string>;
}

interface State {
  /** the maps of the view the state mirrors (a call with others starts over) */
  view: ClusterView;
  node: NodeCtx;
  nodeKey: string;
  /** the objects as last seen, by store key: a deleted one is gone from the store when we hear of it */
  svcAt: Map<string, KService>;
  sliceAt: Map<string, KEndpointSlice>;
  byKey: Map<string, KService>;
  /** byKey's keys, sorted (the result's order), and what each made (the same index) */
  keys: string[];
  made: Made[];
  groups: Map<string, KEndpointSlice[]>;
  routes: RouteIndex;
  /** every Service an HTTPRoute names as its parent (the route index reads them) */
  parents: Set<string>;
  /** Service -> the services whose attached routes send to it (they read its object and its slices) */
  dependents: Map<string, Set<string>>;
  claims: Claims;
}

const EMPTY = new Map<never, never>();
/** the place of a service just added, until it is translated (it is dirty: that happens in the same call) */
const NOTHING: Made = { services: [], unserved: [], issues: [], claims: [] };
const nodeKeyOf = (n: NodeCtx) => `${n.nodeName ?? ''}|${n.zone ?? ''}`;

export class ClusterTranslator {
  private s?: State;
  /** what the last call did: everything, or this many services (status, tests) */
  last: { full: boolean; translated: number } = { full: true, translated: 0 };

  constructor(private readonly scope: NodeScope) {}

  /** The cluster translated for this translator's node: `changed` since the last call, or (absent) everything. */
  translate(v: ClusterView, changed?: ViewChanges): TranslateResult {
    const s = this.s;
    if (!changed || !s || !sameView(s.view, v)) return this.full(v);
    if (!isEmpty(changed.nodes)) {
      const node = nodeContext(v, this.scope);
      if (nodeKeyOf(node) !== s.nodeKey) return this.full(v);
    }
    const dirty = new Set<string>();
    const svcDirty = new Set<string>();
    for (const k of changed.services ?? []) {
      const old = s.svcAt.get(k);
      const now = v.services.get(k);
      if (old === now) continue;
      if (old) {
        const key = keyOf(old);
        svcDirty.add(key);
        if (s.byKey.get(key) === old && (!now || keyOf(now) !== key)) {
          s.byKey.delete(key);
          const at = sortedIndex(s.keys, key);
          s.claims.remove(s.made[at]!);
          s.keys.splice(at, 1);
          s.made.splice(at, 1);
        }
      }
      if (now) {
        const key = keyOf(now);
        svcDirty.add(key);
        if (!s.byKey.has(key)) {
          const at = sortedIndex(s.keys, key);
          s.keys.splice(at, 0, key);
          s.made.splice(at, 0, NOTHING);
        }
        s.byKey.set(key, now);
        s.svcAt.set(k, now);
      } else s.svcAt.delete(k);
    }
    for (const k of changed.endpointSlices ?? []) {
      const old = s.sliceAt.get(k);
      const now = v.endpointSlices.get(k);
      if (old === now) continue;
      moveSlice(s.groups, old, now, dirty);
      if (now) s.sliceAt.set(k, now);
      else s.sliceAt.delete(k);
    }
    for (const k of svcDirty) dirty.add(k);
    let rebuild = !isEmpty(changed.httpRoutes);
    for (const k of svcDirty) if (!rebuild && s.parents.has(k)) rebuild = true;
    if (rebuild) {
      for (const k of s.routes.byParent.keys()) dirty.add(k);
      this.routesOf(s, v);
      for (const k of s.routes.byParent.keys()) dirty.add(k);
    }
    if (s.dependents.size > 0) {
      for (const k of [...dirty]) for (const p of s.dependents.get(k) ?? []) dirty.add(p);
    }
    const ctx: Ctx = { node: s.node, slices: s.groups, routes: s.routes, services: s.byKey };
    for (const key of dirty) {
      const svc = s.byKey.get(key);
      if (!svc) continue; // gone (its part left the lists above), or a slice label naming no Service
      const at = sortedIndex(s.keys, key);
      s.claims.remove(s.made[at]!);
      const m = translateService(svc, key, ctx);
      s.made[at] = m;
      s.claims.add(m);
    }
    this.last = { full: false, translated: dirty.size };
    return assemble(s.keys, s.made, s.claims, s.routes);
  }

  /**
   * `keys` (Services, "<ns>/<name>") translated for another node from this translator's indexes, checked only among
   * themselves: the control plane's per-node overlays (internalTrafficPolicy Local, PreferClose). After translate().
   */
  translateFor(keys: Iterable<string>, scope: NodeScope, v: ClusterView): TranslateResult {
    const s = this.s;
    if (!s) throw new Error('ClusterTranslator.translateFor before the first translate()');
    const ctx: Ctx = { node: nodeContext(v, scope), slices: s.groups, routes: s.routes, services: s.byKey };
    const wanted = [...new Set(keys)].filter((k) => s.byKey.has(k)).sort();
    const made: Made[] = [];
    const claims = new Claims();
    for (const key of wanted) {
      const m = translateService(s.byKey.get(key)!, key, ctx);
      made.push(m);
      claims.add(m);
    }
    return assemble(wanted, made, claims, s.routes);
  }

  private full(v: ClusterView): TranslateResult {
    const node = nodeContext(v, this.scope);
    const byKey = new Map<string, KService>();
    for (const o of v.services.values()) byKey.set(keyOf(o), o);
    const s: State = {
      view: { ...v }, node, nodeKey: nodeKeyOf(node),
      svcAt: new Map(v.services), sliceAt: new Map(v.endpointSlices), byKey, keys: [...byKey.keys()].sort(),
      groups: groupSlices(v.endpointSlices.values()),
      routes: { byParent: new Map(), routes: new Map(), issues: [] }, parents: new Set(), dependents: new Map(),
      made: [], claims: new Claims(),
    };
    this.routesOf(s, v);
    const ctx: Ctx = { node, slices: s.groups, routes: s.routes, services: byKey };
    for (const key of s.keys) {
      const m = translateService(byKey.get(key)!, key, ctx);
      s.made.push(m);
      s.claims.add(m);
    }
    this.s = s;
    this.last = { full: true, translated: s.keys.length };
    return assemble(s.keys, s.made, s.claims, s.routes);
  }

  /** The route index and what depends on it, from the view's routes. */
  private routesOf(s: State, v: ClusterView): void {
    s.routes = buildRouteIndex((v.httpRoutes ?? EMPTY).values(), s.byKey);
    s.parents = new Set();
    s.dependents = new Map();
    for (const r of (v.httpRoutes ?? EMPTY).values()) {
      const ns = r.metadata.namespace ?? '';
      for (const p of r.spec?.parentRefs ?? []) if (p?.name) s.parents.add(`${p.namespace ?? ns}/${p.name}`);
    }
    for (const [parent, list] of s.routes.byParent) {
      for (const a of list) {
        for (const b of a.backends) {
          let set = s.dependents.get(b);
          if (!set) s.dependents.set(b, (set = new Set()));
          set.add(parent);
        }
      }
    }
  }
}

function sameView(a: ClusterView, b: ClusterView): boolean {
  return a.services === b.services && a.endpointSlices === b.endpointSlices && (a.httpRoutes ?? EMPTY) === (b.httpRoutes ?? EMPTY) && (a.nodes ?? EMPTY) === (b.nodes ?? EMPTY);
}

function isEmpty(it: Iterable<string> | undefined): boolean {
  if (!it) return true;
  for (const _ of it) return false;
  return true;
}

/** Where `key` is or would go in sorted `keys` (the order of Array#sort on strings). */
function sortedIndex(keys: readonly string[], key: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid]! < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
