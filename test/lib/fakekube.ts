// An in-memory reflector (kube/watch.ts's ReflectorLike) and object builders, for the wiring's unit tests: the
// store changes as a reflector's does (objects replaced, never mutated), with the same change reports, and the
// connection can go down and come back. The fault tests against the API-server stand-in are in
// test/unit/kube-faults.test.ts; this is for the logic around them.
import type { ReflectorLike, ReflectorStatus, StoreChange } from '../../kube/watch.js';
import type { KEndpointSlice, KHTTPRoute, KService } from '../../kube/types.js';

const keyOf = (o: { metadata: { namespace?: string; name?: string } }) => (o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name!);

export class FakeReflector<T extends { metadata: { namespace?: string; name?: string } }> implements ReflectorLike<T> {
  readonly store = new Map<string, T>();
  synced = false;
  started = false;
  private st: ReflectorStatus = { connected: false, since: new Date(), relists: 0 };
  private readonly changes: ((c: StoreChange) => void)[] = [];
  private readonly statuses: (() => void)[] = [];

  constructor(initial: T[] = [], private readonly syncOnStart = true) {
    for (const o of initial) this.store.set(keyOf(o), o);
  }

  start(): void {
    this.started = true;
    if (this.syncOnStart) this.sync();
  }

  /** The initial list is complete: connected, synced, everything reported added. */
  sync(): void {
    this.synced = true;
    this.st = { ...this.st, connected: true, since: new Date() };
    this.emit({ added: [...this.store.keys()], updated: [], deleted: [], relist: false });
    for (const f of this.statuses) f();
  }

  async stop(): Promise<void> {
    this.started = false;
  }

  status(): ReflectorStatus {
    return this.st;
  }

  onChange(cb: (c: StoreChange) => void): void {
    this.changes.push(cb);
  }

  onStatus(cb: () => void): void {
    this.statuses.push(cb);
  }

  set(o: T): void {
    const k = keyOf(o);
    const had = this.store.has(k);
    this.store.set(k, o);
    this.emit({ added: had ? [] : [k], updated: had ? [k] : [], deleted: [], relist: false });
  }

  delete(key: string): void {
    if (this.store.delete(key)) this.emit({ added: [], updated: [], deleted: [key], relist: false });
  }

  /** A 410 relist: the store becomes `objects`; only what differs is reported (objects equal by JSON are kept as they were). */
  relist(objects: T[]): void {
    const next = new Map(objects.map((o) => [keyOf(o), o]));
    const c: StoreChange = { added: [], updated: [], deleted: [], relist: true };
    for (const [k, o] of next) {
      const was = this.store.get(k);
      if (!was) { c.added.push(k); this.store.set(k, o); } else if (JSON.stringify(was) !== JSON.stringify(o)) { c.updated.push(k); this.store.set(k, o); }
    }
    for (const k of [...this.store.keys()]) if (!next.has(k)) { c.deleted.push(k); this.store.delete(k); }
    this.st = { ...this.st, relists: this.st.relists + 1 };
    this.emit(c);
  }

  down(error: string): void {
    this.st = { ...this.st, connected: false, since: new Date(), lastError: error };
    for (const f of this.statuses) f();
  }

  up(): void {
    this.st = { ...this.st, connected: true, since: new Date(), lastError: undefined };
    for (const f of this.statuses) f();
  }

  private emit(c: StoreChange): void {
    for (const f of this.changes) f(c);
  }
}

export function service(ns: string, name: string, ip: string | string[], ports: { port: number; name?: string; protocol?: string; targetPort?: number | string }[], spec: Partial<NonNullable<KService['spec']>> = {}): KService {
  const ips = Array.isArray(ip) ? ip : [ip];
  return {
    apiVersion: 'v1', kind: 'Service',
    metadata: { namespace: ns, name, uid: `uid-${ns}-${name}`, resourceVersion: '1' },
    spec: { type: 'ClusterIP', clusterIP: ips[0], clusterIPs: ips, ports, ...spec },
  } as KService;
}

export interface EP { address: string | string[]; nodeName?: string; ready?: boolean; zone?: string; forZones?: string[] }

export function slice(ns: string, name: string, svc: string, ports: { port: number; name?: string; protocol?: string }[], eps: EP[], family: 'IPv4' | 'IPv6' = 'IPv4'): KEndpointSlice {
  return {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
    metadata: { namespace: ns, name, labels: { 'kubernetes.io/service-name': svc }, resourceVersion: '1' },
    addressType: family,
    ports: ports.map((p) => ({ port: p.port, name: p.name ?? '', protocol: p.protocol ?? 'TCP' })),
    endpoints: eps.map((e) => ({
      addresses: Array.isArray(e.address) ? e.address : [e.address],
      conditions: { ready: e.ready ?? true, serving: e.ready ?? true, terminating: false },
      ...(e.nodeName ? { nodeName: e.nodeName } : {}),
      ...(e.zone ? { zone: e.zone } : {}),
      ...(e.forZones ? { hints: { forZones: e.forZones.map((z) => ({ name: z })) } } : {}),
    })),
  } as unknown as KEndpointSlice;
}

export function httpRoute(ns: string, name: string, parent: string, rules: NonNullable<KHTTPRoute['spec']>['rules'], generation = 1): KHTTPRoute {
  return {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute',
    metadata: { namespace: ns, name, generation, resourceVersion: '1', creationTimestamp: '2026-01-01T00:00:00Z' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: parent }], rules },
  } as KHTTPRoute;
}

/** Poll `cond` every few milliseconds until it holds; throws naming `what` after `ms`. */
export async function until(what: string, cond: () => boolean, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not in time`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
