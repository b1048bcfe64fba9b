// What the accepted listeners reference, kept as reverse indexes so that one changed resource leads straight to the
// listeners it affects (an endpoint change among 10,000 clusters touches one listener, not all of them), and so that
// the RDS/CDS/EDS subscriptions follow the listeners without scanning them all on every response.
import type { Journal } from './journal.js';
import type { ListenerDigest, XdsState } from './digest.js';

export type Kind = 'listener' | 'route' | 'cluster' | 'endpoint';

/** Names whose "referenced" status changed (became referenced, or no longer is), per type. */
export interface RefChanges { routes: Set<string>; clusters: Set<string>; endpoints: Set<string> }

export const noRefChanges = (): RefChanges => ({ routes: new Set(), clusters: new Set(), endpoints: new Set() });

export class References {
  /** Per listener: the route it names and the clusters it uses (directly and through that route, as last linked). */
  private readonly byListener = new Map<string, { route?: string; clusters: string[] }>();
  /**
   * Route name -> listeners naming it; cluster name -> listeners using it; EDS name -> (referenced) clusters. One user
   * is held as its name, several as a Set: nearly every cluster has one listener and one EDS name, and 20,000 Sets of
   * one cost ~4 MiB.
   */
  readonly routes = new Map<string, Users>();
  readonly clusters = new Map<string, Users>();
  readonly endpoints = new Map<string, Users>();
  private readonly edsOf = new Map<string, string>();

  /** The listeners whose model may change when these resources of one kind change (from the current links). */
  affected(kind: Kind, names: Iterable<string>): Set<string> {
    const out = new Set<string>();
    // A held link's user is HELD + the listener's name: the change affects that listener.
    const add = (l: string) => out.add(l.charCodeAt(0) === 0 ? l.slice(1) : l);
    const addAll = (u?: Users) => {
      if (typeof u === 'string') add(u);
      else u?.forEach(add);
    };
    for (const n of names) {
      if (kind === 'listener') out.add(n);
      else if (kind === 'route') addAll(this.routes.get(n));
      else if (kind === 'cluster') addAll(this.clusters.get(n));
      else for (const c of usersOf(this.endpoints.get(n))) addAll(this.clusters.get(c));
    }
    return out;
  }

  /** Re-read what a listener references from `state` (after the listener or its route changed). */
  relink(state: XdsState, name: string, j: Journal, out: RefChanges): void {
    this.linkAs(state, name, state.listeners.get(name), j, out);
  }

  /**
   * Hold what the applied version `l` of a warming listener references (undefined: nothing held, the listener is not
   * warming). Like Envoy, the old listener keeps its route, clusters and endpoints subscribed, and their updates
   * applied, until the new one is warm; only then are the old references dropped (and unsubscribed if nothing else
   * uses them). Held links count as users of their own (HELD + name), beside the wanted links of the same listener.
   */
  hold(state: XdsState, name: string, l: ListenerDigest | undefined, j: Journal, out: RefChanges): void {
    const key = HELD + name;
    if (l === undefined && !this.byListener.has(key)) return; // the common case: not warming, nothing held
    this.linkAs(state, key, l, j, out);
  }

  private linkAs(state: XdsState, name: string, l: ListenerDigest | undefined, j: Journal, out: RefChanges): void {
    const before = this.byListener.get(name);
    let after: { route?: string; clusters: string[] } | undefined;
    if (l && l.kind === 'l4') {
      const clusters = new Set(l.clusters.map((c) => c.name));
      if (l.routeName !== undefined) for (const c of state.routes.get(l.routeName)?.clusters ?? []) clusters.add(c.name);
      after = { route: l.routeName, clusters: [...clusters] };
    }
    if (before?.route !== after?.route) {
      if (before?.route !== undefined) this.unlink(this.routes, before.route, name, j, out.routes);
      if (after?.route !== undefined) this.link(this.routes, after.route, name, j, out.routes);
    }
    const had = new Set(before?.clusters ?? []);
    const has = new Set(after?.clusters ?? []);
    for (const c of had) if (!has.has(c) && this.unlink(this.clusters, c, name, j, out.clusters)) this.reindexCluster(state, c, j, out);
    for (const c of has) if (!had.has(c) && this.link(this.clusters, c, name, j, out.clusters)) this.reindexCluster(state, c, j, out);
    if (after) j.set(this.byListener, name, after);
    else j.delete(this.byListener, name);
  }

  /** Re-read which EDS name a cluster uses (after the cluster changed, or became referenced or not). */
  reindexCluster(state: XdsState, name: string, j: Journal, out: RefChanges): void {
    const want = this.clusters.has(name) ? state.clusters.get(name)?.edsName : undefined;
    const have = this.edsOf.get(name);
    if (want === have) return;
    if (have !== undefined) this.unlink(this.endpoints, have, name, j, out.endpoints);
    if (want !== undefined) {
      this.link(this.endpoints, want, name, j, out.endpoints);
      j.set(this.edsOf, name, want);
    } else j.delete(this.edsOf, name);
  }

  /** True when `key` became referenced. */
  private link(index: Map<string, Users>, key: string, by: string, j: Journal, changed: Set<string>): boolean {
    const users = index.get(key);
    if (users === undefined) {
      j.set(index, key, by);
      changed.add(key);
      return true;
    }
    if (typeof users === 'string') {
      if (users !== by) j.set(index, key, new Set([users, by]));
    } else j.add(users, by);
    return false;
  }

  /** True when `key` is no longer referenced. */
  private unlink(index: Map<string, Users>, key: string, by: string, j: Journal, changed: Set<string>): boolean {
    const users = index.get(key);
    if (users === undefined) return false;
    if (typeof users === 'string') {
      if (users !== by) return false;
    } else {
      j.remove(users, by);
      if (users.size > 1) return false;
      if (users.size === 1) {
        j.set(index, key, users.values().next().value as string);
        return false;
      }
    }
    j.delete(index, key);
    changed.add(key);
    return true;
  }
}

/** The user key of a warming listener's held (applied) references: no listener name starts with NUL. */
const HELD = '\u0000';

/** The users of a name: one (its name) or several. */
type Users = string | Set<string>;

function usersOf(u: Users | undefined): Iterable<string> {
  return u === undefined ? [] : typeof u === 'string' ? [u] : u;
}
