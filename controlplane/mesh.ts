// The mesh settings a control plane serves (issue 13): the model's nodes, workloads, mTLS modes and L4 authorization
// as sockmesh.mesh.v1 resources (xds/mesh.ts) on the same ADS stream as the Envoy resources, per node where it matters.
//
// Per-node views: every node is served every Node (its peers' tunnel ends), every Authorization and the Mtls settings
// (all small), and every Workload with its identity, node and addresses (where a destination is and which tunnel end
// to use). Only a workload's own node is served its cgroups (who a local client is): cgroup paths mean nothing on
// another node. So the Workload type is one shared map, with a few resources replaced for the nodes that have
// workloads with cgroups (a config directory's; a Kubernetes control plane knows no cgroups and serves one map to all).
import type { Model, Service } from '../agent/model/types.js';
import { meshResourceObjs, MESH_TYPE, MESH_TYPE_URLS, type MeshResourceObj } from '../xds/mesh.js';
import { resource, type Changes, type Resource, type TypeView } from './snapshot.js';

export const isMeshType = (url: string): boolean => MESH_TYPE_URLS.includes(url);

/** A map with some entries replaced (the same keys as its base). */
class OverrideMap implements ReadonlyMap<string, Resource> {
  constructor(private readonly base: ReadonlyMap<string, Resource>, private readonly over: ReadonlyMap<string, Resource>) {}
  get size(): number {
    return this.base.size;
  }
  get(k: string): Resource | undefined {
    return this.over.get(k) ?? this.base.get(k);
  }
  has(k: string): boolean {
    return this.base.has(k);
  }
  *entries(): MapIterator<[string, Resource]> {
    for (const k of this.base.keys()) yield [k, this.get(k)!];
  }
  keys(): MapIterator<string> {
    return this.base.keys();
  }
  *values(): MapIterator<Resource> {
    for (const k of this.base.keys()) yield this.get(k)!;
  }
  [Symbol.iterator](): MapIterator<[string, Resource]> {
    return this.entries();
  }
  forEach(fn: (v: Resource, k: string, m: ReadonlyMap<string, Resource>) => void): void {
    for (const [k, v] of this.entries()) fn(v, k, this);
  }
}

interface TypeState {
  version: number;
  resources: Map<string, Resource>;
}

export class MeshSnapshot {
  private readonly shared = new Map<string, TypeState>(MESH_TYPE_URLS.map((u) => [u, { version: 0, resources: new Map() }]));
  /** node -> its workloads with cgroups (served to it instead of the shared ones) and that map's version */
  private readonly own = new Map<string, TypeState>();
  /** per node and version: the state-of-the-world body of its Workload type */
  private readonly bodies = new Map<string, { key: string; body: Buffer }>();
  /** the services' own modes (Mtls.services), kept for applyServices */
  private serviceModes = new Map<string, string>();
  private last?: Pick<Model, 'nodes' | 'workloads' | 'mtls' | 'authorization'>;

  /** Serve the mesh settings of `model`; what changed per type URL (names; empty: nothing). */
  apply(model: Model): Changes {
    const modes = new Map<string, string>();
    for (const s of model.services) if (s.mtls) modes.set(s.name, s.mtls);
    const l = this.last;
    // Most changes of a model are services and endpoints: the same mesh lists (by identity) and modes cost nothing.
    if (l && l.nodes === model.nodes && l.workloads === model.workloads && l.mtls === model.mtls && l.authorization === model.authorization
      && modes.size === this.serviceModes.size && [...modes].every(([k, v]) => this.serviceModes.get(k) === v)) return new Map();
    this.serviceModes = modes;
    return this.build(model);
  }

  /** A few services replaced or removed (ControlPlane#updateServices): only their modes can change here. */
  applyServices(changed: Service[], removed: string[]): Changes {
    for (const name of removed) this.serviceModes.delete(name);
    for (const s of changed) {
      if (s.mtls) this.serviceModes.set(s.name, s.mtls);
      else this.serviceModes.delete(s.name);
    }
    return this.build(this.last ?? {});
  }

  private build(mesh: Pick<Model, 'nodes' | 'workloads' | 'mtls' | 'authorization'>): Changes {
    this.last = { nodes: mesh.nodes, workloads: mesh.workloads, mtls: mesh.mtls, authorization: mesh.authorization };
    // The resources encode the services' modes from a model of their own: only `mtls` of a service is read.
    const services = [...this.serviceModes].map(([name, mtls]) => ({ name, mtls }) as Service);
    const objs = meshResourceObjs({ ...this.last, services });
    const changes: Changes = new Map();
    const put = (url: string, list: MeshResourceObj[]) => this.replace(this.shared.get(url)!, url, list, changes);
    put(MESH_TYPE.node, objs.nodes);
    put(MESH_TYPE.workload, objs.workloads);
    put(MESH_TYPE.mtls, objs.mtls ? [objs.mtls] : []);
    put(MESH_TYPE.authorization, objs.authorization);
    const byNode = new Map<string, MeshResourceObj[]>();
    for (const w of objs.workloads) {
      if (!w.own) continue;
      let l = byNode.get(w.node);
      if (!l) byNode.set(w.node, (l = []));
      l.push({ name: w.name, obj: w.own });
    }
    for (const node of new Set([...this.own.keys(), ...byNode.keys()])) {
      let st = this.own.get(node);
      if (!st) this.own.set(node, (st = { version: 0, resources: new Map() }));
      // kept when it empties: its version goes on counting, so a cached body is never taken for another's
      this.replace(st, MESH_TYPE.workload, byNode.get(node) ?? [], changes);
    }
    return changes;
  }

  /** Make `st` hold exactly `list`, encoding only what is new; names that changed go into `changes`. */
  private replace(st: TypeState, url: string, list: MeshResourceObj[], changes: Changes): void {
    const seen = new Set<string>();
    let changed: Set<string> | undefined;
    for (const { name, obj } of list) {
      if (seen.has(name)) throw new Error(`two ${url} resources named ${name}`);
      seen.add(name);
      const r = resource(url, name, obj);
      if (st.resources.get(name)?.version === r.version) continue;
      st.resources.set(name, r);
      (changed ??= changes.get(url) ?? new Set()).add(name);
    }
    for (const name of [...st.resources.keys()]) {
      if (seen.has(name)) continue;
      st.resources.delete(name);
      (changed ??= changes.get(url) ?? new Set()).add(name);
    }
    if (changed) {
      st.version++;
      changes.set(url, changed);
    }
  }

  /** One mesh type as `node` reads it. */
  type(url: string, node: string): TypeView | undefined {
    const st = this.shared.get(url);
    if (!st) return undefined;
    const own = url === MESH_TYPE.workload ? this.own.get(node) : undefined;
    if (!own || own.resources.size === 0) return { version: `m${st.version}${own ? `.${own.version}` : ''}`, resources: st.resources };
    return { version: `m${st.version}.${own.version}`, resources: new OverrideMap(st.resources, own.resources) };
  }

  /** The whole type for a state-of-the-world stream of `node`. */
  sotwBody(url: string, node: string): Buffer {
    const view = this.type(url, node)!;
    const key = `${url}|${node}`;
    const seen = this.bodies.get(key);
    if (seen?.key === view.version) return seen.body;
    const body = Buffer.concat([...view.resources.values()].map((r) => r.sotwBytes));
    if (this.bodies.size > 4096) this.bodies.clear(); // bounded: one per (type, node) in use
    this.bodies.set(key, { key: view.version, body });
    return body;
  }
}
