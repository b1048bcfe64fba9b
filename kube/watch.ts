// What the control plane and the agent share between their reflectors and translateCluster: one set of reflectors
// (services, endpointslices, httproutes, nodes, and pods for the agent), their changes debounced into batches, the
// health of the watches as one answer ("unreachable since ..."), which services need a per-node translation, and the
// HTTPRoute status write-back (only when it changes).
//
// Static stability: a reflector whose API server is gone keeps its store and reports no change, so nothing here calls
// onSync while the API server is unreachable, and whatever was applied last stays in force. A relist (410 Gone)
// reports only the objects that differ, and translateCluster gives unchanged services the same objects back, so the
// kernel plan sees only the changes.
import type { KCondition, KHTTPRoute, KRouteParentStatus, KService } from './types.js';
import type { RouteStatusUpdate } from './translate.js';
import type { ViewChanges } from './translate-live.js';

/** The resources a ClusterWatch follows, by the name the reflectors are given under. */
export type WatchKind = 'services' | 'endpointslices' | 'httproutes' | 'nodes' | 'pods' | 'namespaces' | 'authorizationpolicies';
export const WATCH_KINDS: readonly WatchKind[] = ['services', 'endpointslices', 'httproutes', 'nodes', 'pods', 'namespaces', 'authorizationpolicies'];

/** What a reflector reports of itself: declared once, with the reflector. */
import type { ReflectorStatus } from './reflector.js';
export type { ReflectorStatus };

export interface StoreChange {
  added: string[];
  updated: string[];
  deleted: string[];
  relist: boolean;
}

/** The part of kube/reflector.ts's Reflector a ClusterWatch uses (tests drive it with an in-memory one). */
export interface ReflectorLike<T = unknown> {
  start(): void;
  stop(): Promise<void>;
  readonly store: ReadonlyMap<string, T>;
  readonly synced: boolean;
  status(): ReflectorStatus;
  onChange(cb: (c: StoreChange) => void): void;
  onStatus?(cb: () => void): void;
}

/** The API server as both ends use it: reflectors over its client, and the HTTPRoute status write-back. */
export interface KubeAccess {
  /** a reflector for one resource (with this field selector, if any) */
  reflect(kind: WatchKind, opts: { fieldSelector?: string }): ReflectorLike;
  /** merge-patch an HTTPRoute's /status; absent = route status is not written */
  patchRouteStatus?(namespace: string, name: string, status: unknown): Promise<unknown>;
  /**
   * Whether the API server serves this resource (a CRD's, e.g. Istio's AuthorizationPolicy, may not be installed: a
   * watch of it would never list, and the first batch waits for every list). Absent = not asked, not watched.
   */
  served?(kind: WatchKind): Promise<boolean>;
}

/** One watch as meshctl and the metrics show it. */
export interface WatchHealth {
  resource: WatchKind;
  connected: boolean;
  /** ISO time of the last change of `connected` */
  since: string;
  lastError: string | null;
  relists: number;
  synced: boolean;
  objects: number;
  resourceVersion: string | null;
}

/** All watches together: reachable only when every watch is connected. */
export interface ClusterHealth {
  connected: boolean;
  /** connected: since when all are; not: since when the first of the disconnected ones is */
  since: string;
  lastError: string | null;
  synced: boolean;
  /** ISO time the last batch was handed on (null: not synced yet) */
  lastSync: string | null;
  batches: number;
  watches: WatchHealth[];
}

/** The keys (as the reflector's store names them) each resource changed since the last batch. */
export type Changed = Record<WatchKind, Set<string>>;

export interface SyncBatch {
  /** the first batch after every reflector synced: `changed` is then everything */
  first: boolean;
  changed: Changed;
  /** some reflector relisted (410 Gone) since the last batch */
  relist: boolean;
}

/** A batch's changes as ClusterTranslator takes them; undefined for the first batch (everything: a full translation). */
export function viewChanges(b: SyncBatch): ViewChanges | undefined {
  if (b.first) return undefined;
  return { services: b.changed.services, endpointSlices: b.changed.endpointslices, httpRoutes: b.changed.httproutes, nodes: b.changed.nodes };
}

export interface ClusterWatchOptions {
  reflectors: Partial<Record<WatchKind, ReflectorLike>>;
  /** quiet time after a change before the batch goes (default 5 ms: an EndpointSlice change reaches the kernel fast) */
  debounceMs?: number;
  /**
   * a batch goes at most this long after its first change, however busy the API server is (default 100 ms), or, when
   * the last batch took longer to handle (onSync's own time: translation and apply), that long (see pacing below)
   */
  maxDelayMs?: number;
  /** the batches' handling (onSync) may take at most this share of the time while changes keep coming (default 0.5) */
  maxBusyShare?: number;
  onSync(batch: SyncBatch): void;
  /** a watch's health changed (connected or not) */
  onHealth?(h: ClusterHealth): void;
}

export const DEFAULT_DEBOUNCE_MS = 5;
export const DEFAULT_MAX_DELAY_MS = 100;
export const DEFAULT_MAX_BUSY_SHARE = 0.5;
const MAX_REST_MS = 1000;

const emptyChanged = (): Changed => ({
  services: new Set(), endpointslices: new Set(), httproutes: new Set(), nodes: new Set(), pods: new Set(), namespaces: new Set(), authorizationpolicies: new Set(),
});

/**
 * Reflectors -> debounced batches. Debounced rather than one translation per event: a rollout changes an
 * EndpointSlice several times within milliseconds, and 10,000 services relisted arrive as one change each. Bounded so
 * that a steady stream of events cannot hold a change back.
 *
 * Paced: after a batch whose handling took D ms, the next one goes no sooner than D·(1-s)/s ms after it ended (s =
 * maxBusyShare; D at 0.5; at most 1 s), so that handling batches takes at most that share of the time while changes keep coming.
 * A full sync arrives as a stream of watch events over seconds; a batch of it costs, besides its own services, a part
 * that grows with the cluster (the translation's assembly, the changed-service comparison, the plan's checks: ~100 ms
 * at 10,000 services), and unpaced the number of batches followed how the events happened to be spread in time, not
 * the work: the kubernetes bench's direct sync took 4 applies (2.4 s agent CPU) in one run and 14 (4.3 s, 15 s wall)
 * in the next on the same build and load. A single change after a quiet time is not delayed (the last batch was long
 * ago), nor is one after a small batch (D of a one-slice change is a few ms).
 */
export class ClusterWatch {
  private pending = emptyChanged();
  private pendingRelist = false;
  private firstPendingAt = 0;
  private timer?: NodeJS.Timeout;
  private started = false;
  private sentFirst = false;
  private lastSync: string | null = null;
  private batches = 0;
  /** the last batch: when its handling ended, and how long it took (performance.now() ms) */
  private lastEnd = 0;
  private lastCost = 0;
  /** all watches connected, as last told onHealth (undefined: not known yet, before the first connect or error) */
  private overall?: boolean;
  readonly debounceMs: number;
  readonly maxDelayMs: number;
  /** the quiet time after a batch, per ms its handling took: (1 - maxBusyShare) / maxBusyShare */
  private readonly restPerMs: number;

  constructor(private readonly o: ClusterWatchOptions) {
    this.debounceMs = o.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.maxDelayMs = o.maxDelayMs ?? DEFAULT_MAX_DELAY_MS;
    const share = o.maxBusyShare ?? DEFAULT_MAX_BUSY_SHARE;
    if (!(share > 0 && share <= 1)) throw new Error(`ClusterWatch: maxBusyShare ${share}: expected (0, 1]`);
    this.restPerMs = (1 - share) / share;
  }

  get kinds(): WatchKind[] {
    return WATCH_KINDS.filter((k) => this.o.reflectors[k]);
  }

  /** The store of one resource (empty when not watched). */
  store<T>(kind: WatchKind): ReadonlyMap<string, T> {
    return (this.o.reflectors[kind]?.store ?? new Map()) as ReadonlyMap<string, T>;
  }

  get synced(): boolean {
    return this.kinds.every((k) => this.o.reflectors[k]!.synced);
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    for (const kind of this.kinds) {
      const r = this.o.reflectors[kind]!;
      r.onChange((c) => {
        const set = this.pending[kind];
        for (const k of c.added) set.add(k);
        for (const k of c.updated) set.add(k);
        for (const k of c.deleted) set.add(k);
        if (c.relist) this.pendingRelist = true;
        this.schedule();
      });
      r.onStatus?.(() => this.healthChanged());
      r.start();
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.started = false;
    await Promise.all(this.kinds.map((k) => this.o.reflectors[k]!.stop()));
  }

  /** Hand on what is pending now (tests; the timer does it otherwise). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.synced) return; // the first batch waits for every initial list: a half-listed cluster is not applied
    const first = !this.sentFirst;
    const changed = this.pending;
    const relist = this.pendingRelist;
    this.pending = emptyChanged();
    this.pendingRelist = false;
    this.firstPendingAt = 0;
    // a relist that found nothing changed is no batch: the point of a diff relist is that nothing is applied again
    if (!first && this.kinds.every((k) => changed[k].size === 0)) return;
    if (first) for (const k of this.kinds) for (const key of this.o.reflectors[k]!.store.keys()) changed[k].add(key);
    this.sentFirst = true;
    this.lastSync = new Date().toISOString();
    this.batches++;
    const t0 = performance.now();
    try {
      // the first list is a list, not a relist
      this.o.onSync({ first, changed, relist: relist && !first });
    } finally {
      this.lastEnd = performance.now();
      this.lastCost = this.lastEnd - t0;
    }
  }

  private schedule(): void {
    const now = performance.now();
    if (this.firstPendingAt === 0) this.firstPendingAt = now;
    clearTimeout(this.timer);
    let wait = Math.max(0, Math.min(this.debounceMs, this.firstPendingAt + this.maxDelayMs - now));
    // pacing (see the class comment): not before the last batch's rest is over (at most MAX_REST_MS: kube-proxy's
    // default minimum sync period, so that a huge batch cannot hold the next change back for long)
    // Only after a batch that took longer than maxDelayMs (a sync's): a one-slice change's few ms must not delay the
    // next change (the kubernetes bench's changes one after another: p50 14 -> 27 ms when every batch was paced).
    if (this.lastCost > this.maxDelayMs) {
      const rest = this.lastEnd + Math.min(this.lastCost * this.restPerMs, MAX_REST_MS) - now;
      if (rest > wait) wait = rest;
    }
    this.timer = setTimeout(() => this.flush(), wait);
    this.timer.unref?.();
  }

  /** Told once per change of "every watch connected", not per watch (a dead API server takes all of them down). */
  private healthChanged(): void {
    // A reflector synced for the first time may have nothing to report as a change (an empty cluster): try a batch.
    if (!this.sentFirst && this.synced) this.schedule();
    const statuses = this.kinds.map((k) => this.o.reflectors[k]!.status());
    const connected = statuses.every((s) => s.connected);
    // at start, watches connect one by one: only an error makes "not connected" news before the first connect
    if (this.overall === undefined && !connected && !statuses.some((s) => s.lastError)) return;
    if (this.overall === connected) return;
    const first = this.overall === undefined;
    this.overall = connected;
    if (first && connected) return; // the first connect is no news
    this.o.onHealth?.(this.health());
  }

  /** Every watch's health, and all of them as one answer. */
  health(): ClusterHealth {
    const watches: WatchHealth[] = this.kinds.map((resource) => {
      const r = this.o.reflectors[resource]!;
      const s = r.status();
      return {
        resource, connected: s.connected, since: s.since.toISOString(), lastError: s.lastError ?? null, relists: s.relists,
        synced: r.synced, objects: r.store.size, resourceVersion: s.resourceVersion ?? null,
      };
    });
    const down = watches.filter((w) => !w.connected);
    const pick = down.length ? down : watches;
    // unreachable since the first watch went down; connected since the last one came up
    const since = pick.map((w) => w.since).sort()[down.length ? 0 : pick.length - 1] ?? new Date(0).toISOString();
    return {
      connected: down.length === 0, since, lastError: (down[0] ?? watches.find((w) => w.lastError))?.lastError ?? null,
      synced: this.sentFirst, lastSync: this.lastSync, batches: this.batches, watches,
    };
  }
}

/** "kubernetes: unreachable since <time>", as meshctl and the logs say it. */
export function healthLine(h: ClusterHealth): string {
  if (!h.connected) return `unreachable since ${h.since}${h.lastError ? ` (${h.lastError})` : ''}`;
  return h.synced ? `connected since ${h.since}` : 'connected, not synced yet (nothing applied from it)';
}

const TOPOLOGY_MODE = 'service.kubernetes.io/topology-mode';
const TOPOLOGY_HINTS = 'service.kubernetes.io/topology-aware-hints';

/**
 * Whether translating this Service for two nodes can give two results: internalTrafficPolicy Local (only the node's
 * own endpoints) or topology (trafficDistribution PreferClose, the topology-mode Auto annotation: the node's zone).
 * The control plane translates only these per node; everything else once for the cluster.
 */
export function nodeDependent(svc: KService): boolean {
  const spec = svc.spec ?? {};
  if (spec.internalTrafficPolicy === 'Local' || spec.trafficDistribution === 'PreferClose') return true;
  const a = svc.metadata.annotations ?? {};
  const mode = a[TOPOLOGY_MODE] ?? a[TOPOLOGY_HINTS];
  return mode !== undefined && mode.toLowerCase() === 'auto';
}

const keyOf = (o: { metadata: { namespace?: string; name?: string } }) => `${o.metadata.namespace ?? ''}/${o.metadata.name ?? ''}`;

/**
 * The "<ns>/<name>" of every Service whose translation depends on the node: the node-dependent ones, and those whose
 * HTTPRoutes send traffic to a node-dependent one (their backend groups are that service's endpoints).
 */
export function nodeDependentServices(services: Iterable<KService>, routes: Iterable<KHTTPRoute>): Set<string> {
  const out = new Set<string>();
  for (const s of services) if (nodeDependent(s)) out.add(keyOf(s));
  if (out.size === 0) return out;
  for (const r of routes) {
    const ns = r.metadata.namespace ?? '';
    const backends = (r.spec?.rules ?? []).flatMap((rule) => (rule.backendRefs ?? []).map((b) => `${b.namespace ?? ns}/${b.name}`));
    if (!backends.some((b) => out.has(b))) continue;
    for (const p of r.spec?.parentRefs ?? []) {
      if ((p.kind ?? 'Gateway') === 'Service' && (p.group ?? '') === '' && p.name) out.add(`${p.namespace ?? ns}/${p.name}`);
    }
  }
  return out;
}

/** The Gateway API controller name sockmesh writes its route status under. */
export const CONTROLLER_NAME = 'sockmesh.io/mesh';

/** A condition without its transition time: what "changed" compares. */
const condKey = (c: KCondition) => `${c.type}|${c.status}|${c.reason}|${c.message}|${c.observedGeneration ?? ''}`;
const parentKey = (p: KRouteParentStatus) => JSON.stringify([p.parentRef, p.conditions.map(condKey).sort()]);

/**
 * The status an HTTPRoute should get: ours (controllerName sockmesh.io/mesh) replaced by `ours`, other controllers'
 * entries kept as they are, and each condition's lastTransitionTime kept when it did not change (the Gateway API
 * says the time is when the status last changed). Null when the route already has exactly that.
 */
export function mergedRouteStatus(route: KHTTPRoute, ours: KRouteParentStatus[], now = new Date()): { parents: KRouteParentStatus[] } | null {
  const current = route.status?.parents ?? [];
  const mine = current.filter((p) => p.controllerName === CONTROLLER_NAME);
  const others = current.filter((p) => p.controllerName !== CONTROLLER_NAME);
  const a = mine.map(parentKey).sort();
  const b = ours.map(parentKey).sort();
  if (a.length === b.length && a.every((x, i) => x === b[i])) return null;
  const before = new Map<string, KCondition>();
  for (const p of mine) for (const c of p.conditions) before.set(`${JSON.stringify(p.parentRef)}|${c.type}`, c);
  const stamp = now.toISOString().replace(/\.\d+Z$/, 'Z');
  const parents = ours.map((p) => ({
    ...p,
    controllerName: CONTROLLER_NAME,
    conditions: p.conditions.map((c) => {
      const was = before.get(`${JSON.stringify(p.parentRef)}|${c.type}`);
      const same = was && was.status === c.status && was.reason === c.reason && was.message === c.message && was.observedGeneration === c.observedGeneration;
      return { ...c, lastTransitionTime: same && was.lastTransitionTime ? was.lastTransitionTime : c.lastTransitionTime ?? stamp };
    }),
  }));
  return { parents: [...others, ...parents] };
}

export interface RouteStatusWriterOptions {
  /** the merge-patch on /status (KubeClient#patchStatus for httproutes) */
  patch(namespace: string, name: string, status: { parents: KRouteParentStatus[] }): Promise<unknown>;
  /** the routes as the reflector holds them (what the API server says their status is now) */
  routes(): ReadonlyMap<string, KHTTPRoute>;
  onError?(e: Error, route: string): void;
  onWrite?(route: string): void;
}

/**
 * Writes translateCluster's routeStatus back, only where it differs from what the API server holds (so an unchanged
 * cluster costs no write, a restart of the writer none either, and several writers agree instead of fighting). One
 * write per route in flight; a failed write is tried again with the next batch.
 */
export class RouteStatusWriter {
  private readonly inFlight = new Set<string>();
  writes = 0;
  failures = 0;

  constructor(private readonly o: RouteStatusWriterOptions) {}

  /** Write what differs; resolves when every write started here has finished (tests wait for it). */
  async write(updates: readonly RouteStatusUpdate[]): Promise<void> {
    const routes = this.o.routes();
    const byName = new Map<string, KHTTPRoute>();
    for (const r of routes.values()) byName.set(keyOf(r), r);
    const started: Promise<void>[] = [];
    for (const u of updates) {
      const key = `${u.namespace}/${u.name}`;
      const route = byName.get(key);
      if (!route || this.inFlight.has(key)) continue;
      const status = mergedRouteStatus(route, u.parents);
      if (!status) continue;
      this.inFlight.add(key);
      started.push(this.o.patch(u.namespace, u.name, status).then(
        () => { this.writes++; this.o.onWrite?.(key); },
        (e: Error) => { this.failures++; this.o.onError?.(e, key); },
      ).finally(() => this.inFlight.delete(key)));
    }
    await Promise.all(started);
  }
}
