// A node's view: the cluster-wide snapshot with the node's own resources over it.
//
// Kubernetes services with internalTrafficPolicy Local or topology (PreferClose) have other endpoints on every node.
// Those services, and only those, are translated per node into a small Snapshot of their own (the overlay); every
// other service is in the one cluster-wide Snapshot that all streams share. The two hold disjoint names (a service is
// in one or the other, and every resource name derives from its service name or VIP), so a node's view is their
// union: 5,000 nodes cost 5,000 small overlays, not 5,000 copies of 10,000 services.
import type { Resource, Snapshot, SnapshotView, TypeView } from './snapshot.js';

/** Two disjoint maps read as one (the overlay first). */
class UnionMap implements ReadonlyMap<string, Resource> {
  constructor(private readonly a: ReadonlyMap<string, Resource>, private readonly b: ReadonlyMap<string, Resource>) {}
  get size(): number {
    return this.a.size + this.b.size;
  }
  get(k: string): Resource | undefined {
    return this.a.get(k) ?? this.b.get(k);
  }
  has(k: string): boolean {
    return this.a.has(k) || this.b.has(k);
  }
  *entries(): MapIterator<[string, Resource]> {
    yield* this.a.entries();
    yield* this.b.entries();
  }
  *keys(): MapIterator<string> {
    yield* this.a.keys();
    yield* this.b.keys();
  }
  *values(): MapIterator<Resource> {
    yield* this.a.values();
    yield* this.b.values();
  }
  [Symbol.iterator](): MapIterator<[string, Resource]> {
    return this.entries();
  }
  forEach(fn: (v: Resource, k: string, m: ReadonlyMap<string, Resource>) => void): void {
    for (const [k, v] of this.entries()) fn(v, k, this);
  }
}

/** The base snapshot with one node's overlay over it; the versions of both in each type's version. */
export class LayeredView implements SnapshotView {
  private readonly bodies = new Map<string, { key: string; body: Buffer }>();

  constructor(private readonly base: Snapshot, private readonly overlay: Snapshot) {}

  type(url: string): TypeView | undefined {
    const b = this.base.type(url);
    const o = this.overlay.type(url);
    if (!b || !o) return b ?? o;
    if (o.resources.size === 0) return { version: `${b.version}.${o.version}`, resources: b.resources };
    return { version: `${b.version}.${o.version}`, resources: new UnionMap(o.resources, b.resources) };
  }

  /** The whole type for state-of-the-world: the overlay's entries, then the base's (each body built once per version). */
  sotwBody(url: string): Buffer {
    const key = `${this.base.type(url)?.version}.${this.overlay.type(url)?.version}`;
    const seen = this.bodies.get(url);
    if (seen?.key === key) return seen.body;
    const o = this.overlay.sotwBody(url);
    const body = o.length === 0 ? this.base.sotwBody(url) : Buffer.concat([o, this.base.sotwBody(url)]);
    this.bodies.set(url, { key, body });
    return body;
  }
}
