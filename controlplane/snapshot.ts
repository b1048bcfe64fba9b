// Model -> xDS resources, encoded once per change and shared by every stream.
//
// A snapshot holds, per type URL, every resource by name with its encoded Any and a short content hash (the
// per-resource version of delta xDS). Each resource is also kept pre-encoded as the bytes of one entry of the
// `resources` field of a DiscoveryResponse and of a DeltaDiscoveryResponse: protobuf messages concatenate, so a
// response is just a small header (version, type URL, nonce) followed by the chosen entries, with no per-stream
// re-encoding of 100,000 endpoints.
//
// How the model maps onto Envoy resources is the contract shared with the agent's xDS client (see the README of
// issue 3): one Cluster + ClusterLoadAssignment per service port entry, one Listener per VIP:port/protocol, and for
// proxyless gRPC clients one api Listener + RouteConfiguration per service.
import { hash } from 'node:crypto';
import protobuf from 'protobufjs';
import { ENUM as E, FILTER, TYPE, TYPE_URLS } from '../xds/envoy.js';
import { encodeAny as pack, protoRoot, typeOf, type AnyMessage } from '../xds/protos.js';
import { entryClusterName, groupCluster, listenerName } from '../xds/sockmesh.js';
import type { Backend, Model, Protocol, Service } from '../agent/model/types.js';
import { clusterBalancing, grpcRouteHashPolicy } from './balancing.js';
import { clusterHttpFields, httpListener, referencedWorkloads, serviceGroups } from './http.js';
import {
  adsConfigSource, encodeGrpcListener, encodeGrpcRoute, encodeL4Cluster, encodeL4Listener, utf8Length, varintLength, writeUtf8, writeVarint,
} from './l4wire.js';

export interface Resource {
  readonly name: string;
  /** Short content hash: the delta-xDS resource version. */
  readonly version: string;
  readonly any: AnyMessage;
  /** This resource as one `resources` entry of a DiscoveryResponse (field 2, length-delimited Any). */
  readonly sotwBytes: Buffer;
  /** This resource as one `resources` entry of a DeltaDiscoveryResponse (field 2, a Resource{name, version, Any}). */
  readonly deltaBytes: Buffer;
}

/**
 * A framed resource: its one buffer and where the Any and its value are in it. The views (`any`, `sotwBytes`) are made
 * when read: a full sync frames 50,000 resources, delta streams read only `deltaBytes`, and three eager views (typed
 * array objects) per resource were garbage that the young generation copied (they survive with the resource).
 */
class Framed implements Resource {
  constructor(
    readonly name: string,
    readonly version: string,
    readonly deltaBytes: Buffer,
    private readonly typeUrl: string,
    private readonly sotwStart: number,
    private readonly valueStart: number,
    private readonly sotwEnd: number,
  ) {}

  get any(): AnyMessage {
    return { type_url: this.typeUrl, value: this.deltaBytes.subarray(this.valueStart, this.sotwEnd) };
  }

  get sotwBytes(): Buffer {
    return this.deltaBytes.subarray(this.sotwStart, this.sotwEnd);
  }
}

export interface TypeState {
  /** Per-type counter as a string; changes whenever the content of this type changes. */
  version: string;
  resources: Map<string, Resource>;
}

/** One type's resources as a stream reads them. */
export interface TypeView {
  version: string;
  resources: ReadonlyMap<string, Resource>;
}

/** What a stream reads: a Snapshot, or a node's resources layered over one (see nodeview.ts). */
export interface SnapshotView {
  type(url: string): TypeView | undefined;
  sotwBody(url: string): Buffer;
}

/** Names per type URL that were added, changed or removed between two snapshots. */
export type Changes = Map<string, Set<string>>;


/** Envoy wants every endpoint weight >= 1: a drained backend (weight 0) is sent DRAINING with weight 1. */
function lbEndpoint(b: Backend): Record<string, unknown> {
  return {
    endpoint: { address: { socket_address: { address: b.address, port_value: b.port } } },
    health_status: b.weight === 0 ? E()['DRAINING'] : E()['HEALTHY'],
    load_balancing_weight: { value: b.weight === 0 ? 1 : b.weight },
  };
}

/**
 * The same ClusterLoadAssignment as a plain object for protobufjs: the reference encodeClusterLoadAssignment is
 * tested against. One locality with weight 1: gRPC's xDS client ignores localities without a weight.
 */
export function clusterLoadAssignmentObject(cluster: string, backends: Backend[]): Record<string, unknown> {
  const endpoints = backends.length === 0 ? [] : [{ locality: {}, load_balancing_weight: { value: 1 }, lb_endpoints: backends.map(lbEndpoint) }];
  return { cluster_name: cluster, endpoints };
}

interface PortEntry {
  port: number;
  protocol: Protocol;
  cluster: string;
  backends: Backend[];
  vips: string[];
}

/**
 * The service's port entries, recovered from its frontends (every VIP x every port entry; each frontend has the
 * backends of its VIP's family). Cluster name: the service name with one port entry, else `<service>:<port>`; two
 * entries with the same number (53/udp + 53/tcp) would collide there, so those get `<service>:<port>/<protocol>`.
 */
export function portEntries(svc: Service): PortEntry[] {
  const entries = new Map<string, PortEntry>();
  // the backends already in the entry, address -> port(s): a scan per backend was O(n^2), and an `address|port` key
  // string per backend was ~10% of a 10,000-service build; the address strings are the model's own (hashed once)
  const seen = new Map<PortEntry, Map<string, number | number[]>>();
  for (const fe of svc.frontends) {
    const key = `${fe.port}/${fe.protocol}`;
    let e = entries.get(key);
    if (!e) {
      e = { port: fe.port, protocol: fe.protocol, cluster: '', backends: [], vips: [] };
      entries.set(key, e);
      seen.set(e, new Map());
    }
    e.vips.push(fe.vip);
    const have = seen.get(e)!;
    for (const b of fe.backends) {
      const ports = have.get(b.address);
      if (ports === undefined) have.set(b.address, b.port);
      else if (ports === b.port || (Array.isArray(ports) && ports.includes(b.port))) continue;
      else if (Array.isArray(ports)) ports.push(b.port);
      else have.set(b.address, [ports, b.port]);
      e.backends.push(b);
    }
  }
  const list = [...entries.values()];
  const perNumber = new Map<number, number>();
  for (const e of list) perNumber.set(e.port, (perNumber.get(e.port) ?? 0) + 1);
  for (const e of list) e.cluster = entryClusterName(svc.name, e.port, e.protocol, list.length, perNumber.get(e.port)!);
  return list;
}

interface Types {
  response: protobuf.Type;
  deltaResponse: protobuf.Type;
}
let types: Types | undefined;
function protoTypes(): Types {
  if (types) return types;
  const root = protoRoot();
  types = {
    response: root.lookupType('envoy.service.discovery.v3.DiscoveryResponse'),
    deltaResponse: root.lookupType('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
  };
  return types;
}

/**
 * Short content hash of the encoded bytes: the same content gets the same version in every server process, so a
 * delta client reconnecting to a restarted control plane with initial_resource_versions is not re-sent anything.
 * MD5 through crypto.hash is the cheapest native digest here (a version, not a security boundary).
 */
export function contentHash(bytes: Uint8Array): string {
  return hash('md5', bytes, 'base64url').slice(0, 12);
}

/** `0x0a <len> <type URL>`: field 1 of an Any, the same for every resource of a type. */
const typeUrlField = new Map<string, Buffer>();
function anyTypeUrlField(typeUrl: string): Buffer {
  let f = typeUrlField.get(typeUrl);
  if (!f) {
    const url = Buffer.from(typeUrl);
    f = Buffer.alloc(1 + varintLength(url.length) + url.length);
    url.copy(f, writeVarint(f, writeVarint(f, 0, 0x0a), url.length));
    typeUrlField.set(typeUrl, f);
  }
  return f;
}

/**
 * One resource, framed once into one buffer: the DeltaDiscoveryResponse entry
 *   0x12 <len> Resource { 0x0a <len> version; 0x12 <len> Any { 0x0a type_url; 0x12 value }; 0x1a <len> name }
 * whose middle field (`0x12 <len> Any`) is byte for byte also the DiscoveryResponse entry (field 2, an Any): the
 * state-of-the-world bytes and the Any's value are views into the same buffer. Framing by hand instead of with three
 * protobufjs writers saves two copies of every value and most of the garbage of a full build.
 */
export function resource(typeUrl: string, name: string, obj: Record<string, unknown>): Resource {
  return framed(typeUrl, name, typeOf(typeUrl).encode(obj).finish());
}

function framed(typeUrl: string, name: string, value: Uint8Array): Resource {
  const version = contentHash(value); // base64url: ASCII, one byte per character
  const urlField = anyTypeUrlField(typeUrl);
  const anyLen = urlField.length + 1 + varintLength(value.length) + value.length;
  const sotwLen = 1 + varintLength(anyLen) + anyLen;
  const nameLen = utf8Length(name);
  const innerLen = 1 + varintLength(version.length) + version.length + sotwLen + 1 + varintLength(nameLen) + nameLen;
  const buf = Buffer.allocUnsafe(1 + varintLength(innerLen) + innerLen);
  let at = writeVarint(buf, writeVarint(buf, 0, 0x12), innerLen);
  at = writeVarint(buf, writeVarint(buf, at, 0x0a), version.length);
  at = writeUtf8(buf, at, version);
  const sotwStart = at;
  at = writeVarint(buf, writeVarint(buf, at, 0x12), anyLen);
  at += urlField.copy(buf, at);
  at = writeVarint(buf, writeVarint(buf, at, 0x12), value.length);
  const valueStart = at;
  buf.set(value, at);
  at += value.length;
  const sotwEnd = at;
  at = writeVarint(buf, writeVarint(buf, at, 0x1a), nameLen);
  at = writeUtf8(buf, at, name);
  if (at !== buf.length) throw new Error(`framing ${typeUrl} ${name}: wrote ${at} of ${buf.length} bytes`);
  return new Framed(name, version, buf, typeUrl, sotwStart, valueStart, sotwEnd);
}

const lenField = (bytes: number) => 1 + varintLength(bytes) + bytes;

/**
 * A ClusterLoadAssignment encoded by hand: at 100,000 endpoints it is most of a full build, and protobufjs' writer
 * allocates an object per field written (most of the garbage). The bytes are exactly protobufjs' (fields in number
 * order, set scalars written even when zero), as the tests check, so versions (content hashes) are unchanged too:
 *   ClusterLoadAssignment { cluster_name = 1; endpoints = 2 (one LocalityLbEndpoints, if any backend) }
 *   LocalityLbEndpoints { locality = 1 {}; lb_endpoints = 2 []; load_balancing_weight = 3 { value = 1 } }
 *   LbEndpoint { endpoint = 1 { address = 1 { socket_address = 1 { address = 2; port_value = 3 } } };
 *                health_status = 2; load_balancing_weight = 4 { value = 1 } }
 */
export function encodeClusterLoadAssignment(cluster: string, backends: Backend[]): Buffer {
  const e_ = E();
  const n = backends.length;
  const addrLen = new Array<number>(n);
  const epLen = new Array<number>(n);
  let lbEndpointsLen = 0;
  for (let i = 0; i < n; i++) {
    const b = backends[i]!;
    addrLen[i] = utf8Length(b.address);
    const socketAddress = lenField(addrLen[i]!) + 1 + varintLength(b.port);
    const endpoint = lenField(lenField(socketAddress)); // Endpoint { Address { SocketAddress } }
    const weight = b.weight === 0 ? 1 : b.weight;
    const health = b.weight === 0 ? e_['DRAINING']! : e_['HEALTHY']!;
    epLen[i] = lenField(endpoint) + 1 + varintLength(health) + lenField(1 + varintLength(weight));
    lbEndpointsLen += lenField(epLen[i]!);
  }
  const localityLen = 2 + lbEndpointsLen + lenField(2);
  const nameLen = utf8Length(cluster);
  const buf = Buffer.allocUnsafe(lenField(nameLen) + (n === 0 ? 0 : lenField(localityLen)));
  let at = writeVarint(buf, writeVarint(buf, 0, 0x0a), nameLen);
  at = writeUtf8(buf, at, cluster);
  if (n > 0) {
    at = writeVarint(buf, writeVarint(buf, at, 0x12), localityLen);
    buf[at++] = 0x0a; // locality {}
    buf[at++] = 0x00;
    for (let i = 0; i < n; i++) {
      const b = backends[i]!;
      const socketAddress = lenField(addrLen[i]!) + 1 + varintLength(b.port);
      const address = lenField(socketAddress);
      const endpoint = lenField(address);
      const weight = b.weight === 0 ? 1 : b.weight;
      at = writeVarint(buf, writeVarint(buf, at, 0x12), epLen[i]!); // lb_endpoints entry
      at = writeVarint(buf, writeVarint(buf, at, 0x0a), endpoint); // endpoint
      at = writeVarint(buf, writeVarint(buf, at, 0x0a), address); // address
      at = writeVarint(buf, writeVarint(buf, at, 0x0a), socketAddress); // socket_address
      at = writeVarint(buf, writeVarint(buf, at, 0x12), addrLen[i]!);
      at = writeUtf8(buf, at, b.address);
      at = writeVarint(buf, writeVarint(buf, at, 0x18), b.port);
      at = writeVarint(buf, writeVarint(buf, at, 0x10), b.weight === 0 ? e_['DRAINING']! : e_['HEALTHY']!);
      at = writeVarint(buf, writeVarint(buf, at, 0x22), 1 + varintLength(weight));
      at = writeVarint(buf, writeVarint(buf, at, 0x08), weight);
    }
    buf[at++] = 0x1a; // load_balancing_weight { value: 1 }
    buf[at++] = 0x02;
    buf[at++] = 0x08;
    buf[at++] = 0x01;
  }
  if (at !== buf.length) throw new Error(`encoding the assignment of ${cluster}: wrote ${at} of ${buf.length} bytes`);
  return buf;
}

/**
 * Every resource one service contributes, as [type URL, resource] pairs. `workloads`: the cgroups of the model's
 * workloads, by name (an HTTP service's listeners carry those its authorization names).
 */
export function serviceResources(svc: Service, workloads?: ReadonlyMap<string, string[]>): Array<[string, Resource]> {
  const ads = adsConfigSource();
  const out: Array<[string, Resource]> = [];
  const entries = portEntries(svc);
  // The L4 resources are encoded by hand (l4wire.ts; equal to protobufjs' encoding of l4ClusterObject & co.).
  for (const e of entries) {
    if (svc.http) {
      httpEntryResources(svc, e, ads, workloads, out);
      continue;
    }
    out.push([TYPE.cluster, framed(TYPE.cluster, e.cluster, encodeL4Cluster(svc, e.cluster))]);
    // Equal to resource(TYPE.endpoint, e.cluster, clusterLoadAssignmentObject(e.cluster, e.backends)), faster.
    out.push([TYPE.endpoint, framed(TYPE.endpoint, e.cluster, encodeClusterLoadAssignment(e.cluster, e.backends))]);
    for (const vip of e.vips) {
      const name = listenerName(vip, e.port, e.protocol);
      out.push([TYPE.listener, framed(TYPE.listener, name, encodeL4Listener(name, vip, e.port, e.protocol, e.cluster))]);
    }
  }

  // Proxyless gRPC (xds:///<service>): an api listener naming a route config that sends everything to the first
  // TCP port entry's cluster. gRPC runs over TCP only, so a UDP-only service gets neither.
  const grpcEntry = entries.find((e) => e.protocol === 'tcp');
  if (grpcEntry) {
    out.push([TYPE.listener, framed(TYPE.listener, svc.name, encodeGrpcListener(svc.name))]);
    // an HTTP service: the cluster of its first route's first group
    const target = svc.http ? groupCluster(grpcEntry.cluster, svc.http.routes[0]?.split[0]?.group ?? 'default', svc.http.upstreamProtocol) : grpcEntry.cluster;
    // maglev: gRPC's ring_hash hashes the channel (see balancing.ts)
    out.push([TYPE.route, framed(TYPE.route, svc.name, encodeGrpcRoute(svc.name, target, grpcRouteHashPolicy(svc)))]);
  }
  return out;
}

/** An HTTP port entry: a Cluster and an assignment per backend group, a Listener per VIP (see http.ts). */
function httpEntryResources(
  svc: Service, e: PortEntry, ads: Record<string, unknown>, workloads: ReadonlyMap<string, string[]> | undefined, out: Array<[string, Resource]>,
): void {
  const e_ = E();
  const byGroup = new Map<string, Backend[]>();
  for (const b of e.backends) {
    const g = b.group ?? 'default';
    let list = byGroup.get(g);
    if (!list) byGroup.set(g, (list = []));
    list.push(b);
  }
  const groups = serviceGroups(svc, byGroup.keys());
  const clusterOf = (g: string) => groupCluster(e.cluster, g, svc.http!.upstreamProtocol);
  for (const g of groups) {
    const name = clusterOf(g);
    const cluster: Record<string, unknown> = {
      name, type: e_['EDS'], eds_cluster_config: { eds_config: ads }, ...clusterBalancing(svc), ...clusterHttpFields(svc, g),
    };
    out.push([TYPE.cluster, resource(TYPE.cluster, name, cluster)]);
    out.push([TYPE.endpoint, framed(TYPE.endpoint, name, encodeClusterLoadAssignment(name, byGroup.get(g) ?? []))]);
  }
  const clusters = groups.map(clusterOf);
  const wl = referencedWorkloads(svc).map((name) => ({ name, cgroups: workloads?.get(name) ?? [] }));
  for (const vip of e.vips) {
    const name = listenerName(vip, e.port, e.protocol);
    const address = { socket_address: { address: vip, port_value: e.port, protocol: e_['TCP'] } };
    out.push([TYPE.listener, resource(TYPE.listener, name, httpListener(svc, name, address, e.cluster, clusterOf, clusters, wl))]);
  }
}

type Built = Array<[string, Resource]>;

/** What the snapshot knows of one service of the model it serves. */
interface Entry {
  svc: Service;
  built: Built;
  /** Its position in the model's service list (where the next model is compared by identity). */
  index: number;
}

/**
 * Plain-data equality (the model is JSON-like data): tells a reloaded but unchanged service from a changed one
 * without encoding it or building a JSON key of it.
 */
function sameData(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameData(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) if (!sameData((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  return true;
}

/**
 * Whether two L4 services differ at most in their backends: then their Clusters, Listeners and RouteConfiguration are
 * the same bytes (none of them reads a backend; the port entries and cluster names come from the frontends' VIPs,
 * ports and protocols), and only their ClusterLoadAssignments need encoding. The common change by far: an endpoint
 * moved, and the full sync of a cluster, whose Services are listed before their EndpointSlices, so each service is
 * first served without endpoints and then again with them. Not for HTTP services: their backend groups make clusters.
 */
function sameButBackends(a: Service, b: Service): boolean {
  if (a.http || b.http) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  // The maglev table size follows the number of backends (model/config.ts) and is served only for maglev services
  // (balancing.ts): with another algorithm it is as much a backend matter as the backends themselves.
  const ignored = a.algorithm === 'maglev' || b.algorithm === 'maglev' ? 'frontends' : 'maglevTableSize';
  for (const k of ka) {
    if (k !== 'frontends' && k !== ignored && !sameData((a as unknown as Record<string, unknown>)[k], (b as unknown as Record<string, unknown>)[k])) return false;
  }
  const fa = a.frontends;
  const fb = b.frontends;
  if (!Array.isArray(fb) || fa.length !== fb.length) return false;
  for (let i = 0; i < fa.length; i++) {
    const x = fa[i] as unknown as Record<string, unknown>;
    const y = fb[i] as unknown as Record<string, unknown>;
    const kx = Object.keys(x);
    if (kx.length !== Object.keys(y).length) return false;
    for (const k of kx) if (k !== 'backends' && !sameData(x[k], y[k])) return false;
  }
  return true;
}

/**
 * `before`'s resources with new ClusterLoadAssignments for `svc`, which differs from the service `before` was built
 * for at most in its backends (sameButBackends): equal to serviceResources(svc), without encoding again what did not
 * change. Returns the whole list and the assignments alone (only those go through the staging).
 */
function withNewAssignments(svc: Service, before: Built): { built: Built; before: Built; after: Built } {
  const fresh = new Map<string, Resource>();
  for (const e of portEntries(svc)) fresh.set(e.cluster, framed(TYPE.endpoint, e.cluster, encodeClusterLoadAssignment(e.cluster, e.backends)));
  const built: Built = [];
  const old: Built = [];
  const after: Built = [];
  for (const pair of before) {
    const r = pair[0] === TYPE.endpoint ? fresh.get(pair[1].name) : undefined;
    if (!r) {
      // every assignment of `before` has a fresh one: same port entries, same cluster names
      if (pair[0] === TYPE.endpoint) throw new Error(`rebuilding the endpoints of ${svc.name}: no port entry for ${pair[1].name}`);
      built.push(pair);
      continue;
    }
    if (r.version === pair[1].version) {
      built.push(pair); // the same bytes: keep the resource served, nothing to stage
      continue;
    }
    old.push(pair);
    built.push([TYPE.endpoint, r]);
    after.push([TYPE.endpoint, r]);
  }
  return { built, before: old, after };
}

/**
 * The resources served, updated in place by each model change at a cost that follows the change: the new model's
 * service list is compared with the previous one by object identity, position by position (10,000 pointer
 * comparisons take microseconds), and only services at positions that differ are looked at. A service object seen
 * before is not looked into again; a new object with the content of the service of the same name (a reloaded file)
 * costs one data comparison and nothing else; only a service whose content changed is encoded. Models are treated as
 * immutable once handed over (a service object must not be changed in place; the list itself is copied).
 *
 * The per-type maps are mutated in place: only the current snapshot is ever served (streams read it synchronously
 * through the host), so there is no older snapshot to keep intact, and copying a 10,000-entry map per change is
 * exactly the cost this avoids.
 */
export class Snapshot implements SnapshotView {
  /** Increments with every change of content. */
  serial = 0;
  readonly types: Map<string, TypeState>;
  /** The services of the model served, by name. */
  private readonly byName = new Map<string, Entry>();
  /** A copy of the model's service list, as it was handed over. */
  private list: Service[] = [];
  /** The complete state-of-the-world body (every resource entry) per type, built on first use after a change. */
  private readonly sotwBodies = new Map<string, Buffer>();
  /** The model's workloads: name -> cgroups (HTTP listeners carry those their authorization names). */
  private workloads = new Map<string, string[]>();
  /** Services to rebuild even if their own data did not change (a workload they name did). */
  private force = new Set<string>();

  private constructor() {
    this.types = new Map();
    for (const url of TYPE_URLS) this.types.set(url, { version: '0', resources: new Map() });
  }

  static empty(): Snapshot {
    return new Snapshot();
  }

  type(url: string): TypeState | undefined {
    return this.types.get(url);
  }

  /** The names of the services served, in model order. */
  serviceNames(): string[] {
    return this.list.map((s) => s.name);
  }

  /**
   * Serve `model` from now on; returns what changed per type (empty: nothing did). Per-type versions move only for
   * types whose content changed, so clients of an unchanged type see nothing. Throws, changing nothing, when the
   * model names a service twice.
   */
  apply(model: Model): Changes {
    const cur = model.services;
    const prev = this.list;
    const differ: number[] = [];
    const n = Math.max(cur.length, prev.length);
    for (let i = 0; i < n; i++) if (cur[i] !== prev[i]) differ.push(i);
    // A workload whose cgroups changed: the listeners of every HTTP service naming it change too. Only looked at
    // when the workloads changed (rare, and few services are HTTP services with authorization).
    const wl = new Map((model.workloads ?? []).map((w) => [w.name, w.cgroups]));
    const changedWl = new Set<string>();
    for (const [name, cg] of wl) if (!sameData(this.workloads.get(name), cg)) changedWl.add(name);
    for (const name of this.workloads.keys()) if (!wl.has(name)) changedWl.add(name);
    const wlBefore = this.workloads;
    this.workloads = wl;
    if (changedWl.size > 0) {
      const marked = new Set(differ);
      cur.forEach((svc, i) => {
        if (!referencedWorkloads(svc).some((w) => changedWl.has(w))) return;
        this.force.add(svc.name);
        if (!marked.has(i)) differ.push(i);
      });
      differ.sort((a, b) => a - b);
    }
    if (differ.length === 0) return new Map();
    try {
      return this.applyDiff(cur, differ);
    } catch (e) {
      this.workloads = wlBefore; // changing nothing
      throw e;
    } finally {
      this.force.clear();
    }
  }

  /**
   * Replace or add `changed` services and drop the services named in `removed`: for a caller that knows what it
   * changed. Equivalent to apply() with the model so edited (new services go to the end).
   */
  applyServices(changed: Service[], removed: string[]): Changes {
    const list = this.list.slice();
    const gone = new Set<number>();
    for (const name of removed) {
      const e = this.byName.get(name);
      if (e) gone.add(e.index);
    }
    for (const svc of changed) {
      const e = this.byName.get(svc.name);
      if (e && !gone.has(e.index)) list[e.index] = svc;
      else list.push(svc);
    }
    const services = gone.size === 0 ? list : list.filter((_, i) => !gone.has(i));
    // the workloads stay as they are
    return this.apply(this.workloads.size === 0 ? { services } : { services, workloads: [...this.workloads].map(([name, cgroups]) => ({ name, cgroups })) });
  }

  /** `differ`: the positions where `cur` and the previous list hold different objects (or only one holds one). */
  private applyDiff(cur: Service[], differ: number[]): Changes {
    const prev = this.list;
    // 1. Plan, changing nothing yet: which services moved, kept their content, changed, appeared or went away.
    const atChanged = new Map<string, number>(); // name -> position, for every service at a differing position
    const rebuilt: Array<{ name: string; before?: Built; after?: Built }> = [];
    const entries: Array<[string, Entry]> = [];
    for (const i of differ) {
      const svc = cur[i];
      if (!svc) continue;
      if (atChanged.has(svc.name)) throw new Error(`service ${svc.name} twice in one model`);
      atChanged.set(svc.name, i);
      const e = this.byName.get(svc.name);
      // The previous holder of the name still at its unchanged position: the model has the name twice.
      if (e && e.index !== i && cur[e.index] === e.svc) throw new Error(`service ${svc.name} twice in one model`);
      const forced = this.force.has(svc.name);
      if (e && (e.svc === svc || sameData(e.svc, svc)) && !forced) {
        entries.push([svc.name, { svc, built: e.built, index: i }]);
        continue;
      }
      if (e && !forced && sameButBackends(e.svc, svc)) {
        const w = withNewAssignments(svc, e.built);
        rebuilt.push({ name: svc.name, before: w.before, after: w.after });
        entries.push([svc.name, { svc, built: w.built, index: i }]);
        continue;
      }
      const built = serviceResources(svc, this.workloads);
      rebuilt.push({ name: svc.name, before: e?.built, after: built });
      entries.push([svc.name, { svc, built, index: i }]);
    }
    const removed: string[] = [];
    for (const i of differ) {
      const old = prev[i];
      // A name at a differing position of the old list that is at none of the new one's is gone (the old list had
      // each name once, so it cannot be at an unchanged position either).
      if (old && !atChanged.has(old.name)) {
        removed.push(old.name);
        rebuilt.push({ name: old.name, before: this.byName.get(old.name)!.built });
      }
    }

    // 2. Stage the resource changes per type: null = remove. A name added twice, or one owned by a service that
    // did not change, is a clash (the model's validation keeps names unique: this is a bug), found before any
    // change is made.
    const staged = new Map<string, Map<string, Resource | null>>();
    const stage = (url: string) => {
      let m = staged.get(url);
      if (!m) staged.set(url, (m = new Map()));
      return m;
    };
    for (const { before } of rebuilt) for (const [url, r] of before ?? []) stage(url).set(r.name, null);
    for (const { after } of rebuilt) {
      for (const [url, r] of after ?? []) {
        const m = stage(url);
        const s = m.get(r.name);
        if (s || (s === undefined && this.types.get(url)!.resources.has(r.name))) throw new Error(`two resources named ${r.name} of ${url}`);
        m.set(r.name, r);
      }
    }

    // 3. Apply.
    for (const [name, e] of entries) this.byName.set(name, e);
    for (const name of removed) this.byName.delete(name);
    this.list = cur.slice();
    const changes: Changes = new Map();
    for (const [url, m] of staged) {
      const state = this.types.get(url)!;
      let changed: Set<string> | undefined;
      for (const [name, r] of m) {
        const was = state.resources.get(name);
        if (r) state.resources.set(name, r);
        else state.resources.delete(name);
        if (was?.version !== r?.version) (changed ??= new Set()).add(name);
      }
      if (!changed) continue;
      changes.set(url, changed);
      state.version = String(Number(state.version) + 1);
      this.sotwBodies.delete(url);
    }
    if (changes.size > 0) this.serial++;
    return changes;
  }

  /**
   * Every resource of a type as the body of a DiscoveryResponse (without its header), built once per version and
   * shared by every state-of-the-world stream that subscribed to the whole type.
   */
  sotwBody(url: string): Buffer {
    let body = this.sotwBodies.get(url);
    if (!body) {
      const parts: Buffer[] = [];
      for (const r of this.types.get(url)!.resources.values()) parts.push(r.sotwBytes);
      body = Buffer.concat(parts);
      this.sotwBodies.set(url, body);
    }
    return body;
  }
}

/** Encode a plain object of one of the served types with protobufjs (the reference for the hand-made encoders). */
export function encodeWithProtobufjs(typeUrl: string, obj: Record<string, unknown>): Uint8Array {
  return typeOf(typeUrl).encode(obj).finish();
}

/** A DiscoveryResponse: header fields encoded now, resource entries concatenated from their pre-encoded bytes. */
export function encodeSotwResponse(versionInfo: string, typeUrl: string, nonce: string, resources: Iterable<Resource>): Buffer {
  const header = protoTypes().response.encode({ version_info: versionInfo, type_url: typeUrl, nonce }).finish();
  const parts: Uint8Array[] = [header];
  for (const r of resources) parts.push(r.sotwBytes);
  return Buffer.concat(parts);
}

/** A DiscoveryResponse whose resource entries are already one body (Snapshot#sotwBody). */
export function encodeSotwResponseBody(versionInfo: string, typeUrl: string, nonce: string, body: Buffer): Buffer {
  const header = protoTypes().response.encode({ version_info: versionInfo, type_url: typeUrl, nonce }).finish();
  return Buffer.concat([header, body]);
}

/** A DeltaDiscoveryResponse, built the same way. */
export function encodeDeltaResponse(
  systemVersion: string,
  typeUrl: string,
  nonce: string,
  resources: Iterable<Resource>,
  removed: string[],
): Buffer {
  const header = protoTypes()
    .deltaResponse.encode({ system_version_info: systemVersion, type_url: typeUrl, nonce, removed_resources: removed })
    .finish();
  const parts: Uint8Array[] = [header];
  for (const r of resources) parts.push(r.deltaBytes);
  return Buffer.concat(parts);
}
