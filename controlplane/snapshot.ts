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
import { FILTER, TYPE, TYPE_URLS, protoRoot, type AnyMessage } from '../agent/xds/protos.js';
import type { Backend, Model, Protocol, Service } from '../agent/model/types.js';

export interface Resource {
  name: string;
  /** Short content hash: the delta-xDS resource version. */
  version: string;
  any: AnyMessage;
  /** This resource as one `resources` entry of a DiscoveryResponse (field 2, length-delimited Any). */
  sotwBytes: Buffer;
  /** This resource as one `resources` entry of a DeltaDiscoveryResponse (field 2, a Resource{name, version, Any}). */
  deltaBytes: Buffer;
}

export interface TypeState {
  /** Per-type counter as a string; changes whenever the content of this type changes. */
  version: string;
  resources: Map<string, Resource>;
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

export function listenerName(vip: string, port: number, protocol: Protocol): string {
  return `${vip.includes(':') ? `[${vip}]` : vip}:${port}/${protocol}`;
}

const LB_POLICY = { random: 'RANDOM', weighted: 'ROUND_ROBIN', maglev: 'MAGLEV' } as const;

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
  for (const fe of svc.frontends) {
    const key = `${fe.port}/${fe.protocol}`;
    let e = entries.get(key);
    if (!e) {
      e = { port: fe.port, protocol: fe.protocol, cluster: '', backends: [], vips: [] };
      entries.set(key, e);
    }
    e.vips.push(fe.vip);
    for (const b of fe.backends) {
      if (!e.backends.some((x) => x.address === b.address && x.port === b.port)) e.backends.push(b);
    }
  }
  const list = [...entries.values()];
  const perNumber = new Map<number, number>();
  for (const e of list) perNumber.set(e.port, (perNumber.get(e.port) ?? 0) + 1);
  for (const e of list) {
    if (list.length === 1) e.cluster = svc.name;
    else if (perNumber.get(e.port)! > 1) e.cluster = `${svc.name}:${e.port}/${e.protocol}`;
    else e.cluster = `${svc.name}:${e.port}`;
  }
  return list;
}

interface Types {
  any: protobuf.Type;
  response: protobuf.Type;
  deltaResponse: protobuf.Type;
  byUrl: Map<string, protobuf.Type>;
}
let types: Types | undefined;
function protoTypes(): Types {
  if (types) return types;
  const root = protoRoot();
  const byUrl = new Map<string, protobuf.Type>();
  for (const url of [...TYPE_URLS, ...Object.values(FILTER)]) byUrl.set(url, root.lookupType(url.slice(url.lastIndexOf('/') + 1)));
  types = {
    any: root.lookupType('google.protobuf.Any'),
    response: root.lookupType('envoy.service.discovery.v3.DiscoveryResponse'),
    deltaResponse: root.lookupType('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
    byUrl,
  };
  return types;
}

/**
 * Encode a plain object (field names as in the .proto, enums as numbers: see E) as an Any. Objects built here
 * have the exact shape protobufjs encodes, so the fromObject/verify passes of packAny are skipped: at 100,000
 * endpoints they cost more than the encoding itself. The tests decode every resource type back.
 */
function pack(typeUrl: string, obj: Record<string, unknown>): AnyMessage {
  const type = protoTypes().byUrl.get(typeUrl)!;
  // In Node, protobufjs writes into a Buffer already: no copy.
  return { type_url: typeUrl, value: type.encode(obj).finish() as Buffer };
}

/** Enum values by name, looked up once from the loaded protos (encode wants numbers). */
let enums: Record<string, number> | undefined;
function E(): Record<string, number> {
  if (enums) return enums;
  const root = protoRoot();
  const v = (enumName: string, value: string) => root.lookupEnum(enumName).values[value]!;
  enums = {
    EDS: v('envoy.config.cluster.v3.Cluster.DiscoveryType', 'EDS'),
    RANDOM: v('envoy.config.cluster.v3.Cluster.LbPolicy', 'RANDOM'),
    ROUND_ROBIN: v('envoy.config.cluster.v3.Cluster.LbPolicy', 'ROUND_ROBIN'),
    MAGLEV: v('envoy.config.cluster.v3.Cluster.LbPolicy', 'MAGLEV'),
    HEALTHY: v('envoy.config.core.v3.HealthStatus', 'HEALTHY'),
    DRAINING: v('envoy.config.core.v3.HealthStatus', 'DRAINING'),
    TCP: v('envoy.config.core.v3.SocketAddress.Protocol', 'TCP'),
    UDP: v('envoy.config.core.v3.SocketAddress.Protocol', 'UDP'),
    V3: v('envoy.config.core.v3.ApiVersion', 'V3'),
  };
  return enums;
}

/**
 * Short content hash of the encoded bytes: the same content gets the same version in every server process, so a
 * delta client reconnecting to a restarted control plane with initial_resource_versions is not re-sent anything.
 * MD5 through crypto.hash is the cheapest native digest here (a version, not a security boundary).
 */
export function contentHash(bytes: Uint8Array): string {
  return hash('md5', bytes, 'base64url').slice(0, 12);
}

function resource(typeUrl: string, name: string, obj: Record<string, unknown>): Resource {
  const any = pack(typeUrl, obj);
  const version = contentHash(any.value);
  // google.protobuf.Any { type_url = 1; value = 2 }, framed by hand as the repeated field 2 of each response;
  // DeltaDiscoveryResponse.resources is a Resource { version = 1; resource = 2; name = 3 }.
  const sotwBytes = protobuf.Writer.create().uint32(0x12).fork().uint32(0x0a).string(typeUrl).uint32(0x12).bytes(any.value).ldelim().finish();
  const deltaBytes = protobuf.Writer.create()
    .uint32(0x12).fork()
    .uint32(0x0a).string(version)
    .uint32(0x12).fork().uint32(0x0a).string(typeUrl).uint32(0x12).bytes(any.value).ldelim()
    .uint32(0x1a).string(name)
    .ldelim()
    .finish();
  return {
    name,
    version,
    any,
    sotwBytes: sotwBytes as Buffer,
    deltaBytes: deltaBytes as Buffer,
  };
}

/** Every resource one service contributes, as [type URL, resource] pairs. */
export function serviceResources(svc: Service): Array<[string, Resource]> {
  const e_ = E();
  const ads = { ads: {}, resource_api_version: e_['V3'] };
  const out: Array<[string, Resource]> = [];
  const entries = portEntries(svc);
  for (const e of entries) {
    const cluster: Record<string, unknown> = {
      name: e.cluster,
      type: e_['EDS'],
      eds_cluster_config: { eds_config: ads },
      lb_policy: e_[LB_POLICY[svc.algorithm]],
    };
    if (svc.algorithm === 'maglev') cluster['maglev_lb_config'] = { table_size: { value: svc.maglevTableSize } };
    if (svc.affinityTimeoutSeconds > 0) {
      // Envoy has no cluster-level source affinity: carried as sockmesh filter metadata (a Struct). protobufjs'
      // built-in google.protobuf.Value has camelCase field names (numberValue) whatever keepCase says.
      cluster['metadata'] = {
        filter_metadata: { sockmesh: { fields: { affinity_timeout_seconds: { numberValue: svc.affinityTimeoutSeconds } } } },
      };
    }
    out.push([TYPE.cluster, resource(TYPE.cluster, e.cluster, cluster)]);

    // One locality with weight 1: gRPC's xDS client ignores localities without a weight.
    const endpoints = e.backends.length === 0 ? [] : [{ locality: {}, load_balancing_weight: { value: 1 }, lb_endpoints: e.backends.map(lbEndpoint) }];
    out.push([TYPE.endpoint, resource(TYPE.endpoint, e.cluster, { cluster_name: e.cluster, endpoints })]);

    for (const vip of e.vips) {
      const name = listenerName(vip, e.port, e.protocol);
      const address = { socket_address: { address: vip, port_value: e.port, protocol: e_[e.protocol === 'tcp' ? 'TCP' : 'UDP'] } };
      const proxy = { stat_prefix: e.cluster, cluster: e.cluster };
      const listener: Record<string, unknown> =
        e.protocol === 'tcp'
          ? { name, address, filter_chains: [{ filters: [{ name: 'envoy.filters.network.tcp_proxy', typed_config: pack(FILTER.tcpProxy, proxy) }] }] }
          : {
              name,
              address,
              udp_listener_config: {},
              listener_filters: [{ name: 'envoy.filters.udp_listener.udp_proxy', typed_config: pack(FILTER.udpProxy, proxy) }],
            };
      out.push([TYPE.listener, resource(TYPE.listener, name, listener)]);
    }
  }

  // Proxyless gRPC (xds:///<service>): an api listener naming a route config that sends everything to the first
  // TCP port entry's cluster. gRPC runs over TCP only, so a UDP-only service gets neither.
  const grpcEntry = entries.find((e) => e.protocol === 'tcp');
  if (grpcEntry) {
    const hcm = {
      stat_prefix: svc.name,
      rds: { route_config_name: svc.name, config_source: ads },
      http_filters: [{ name: 'envoy.filters.http.router', typed_config: pack(FILTER.router, {}) }],
    };
    out.push([TYPE.listener, resource(TYPE.listener, svc.name, { name: svc.name, api_listener: { api_listener: pack(FILTER.httpConnectionManager, hcm) } })]);
    const route = {
      name: svc.name,
      virtual_hosts: [{ name: svc.name, domains: ['*'], routes: [{ match: { prefix: '' }, route: { cluster: grpcEntry.cluster } }] }],
    };
    out.push([TYPE.route, resource(TYPE.route, svc.name, route)]);
  }
  return out;
}

type Built = Array<[string, Resource]>;

/**
 * Built resources by service object: a caller that replaces only the services it changed (the benches, an
 * in-memory model) pays for those only. Models are treated as immutable once handed over.
 */
const byIdentity = new WeakMap<Service, Built>();
/** The content key (JSON) each built list was made from. */
const contentKey = new WeakMap<Built, string>();

export class Snapshot {
  /** Increments with every snapshot that changed anything. */
  readonly serial: number;
  readonly types: Map<string, TypeState>;
  /** What each service contributed, by service name. */
  private readonly services: Map<string, Built>;
  /** Built resources by the service's content (JSON): a reloaded file re-encodes only the services it changed. */
  private readonly byContent: Map<string, Built>;

  private constructor(serial: number, typeStates: Map<string, TypeState>, services: Map<string, Built>, byContent: Map<string, Built>) {
    this.serial = serial;
    this.types = typeStates;
    this.services = services;
    this.byContent = byContent;
  }

  static empty(): Snapshot {
    const m = new Map<string, TypeState>();
    for (const url of TYPE_URLS) m.set(url, { version: '0', resources: new Map() });
    return new Snapshot(0, m, new Map(), new Map());
  }

  type(url: string): TypeState | undefined {
    return this.types.get(url);
  }

  /**
   * The next snapshot for `model`, and what changed per type. Only services that changed are re-encoded and
   * re-indexed; per-type versions move only for types whose content changed, so clients of an unchanged type see
   * nothing. Returns this snapshot itself (and no changes) when nothing changed.
   */
  next(model: Model): { snapshot: Snapshot; changes: Changes } {
    const services = new Map<string, Built>();
    const byContent = new Map<string, Built>();
    const changedServices: Array<{ before?: Built; after?: Built }> = [];
    for (const svc of model.services) {
      let built = byIdentity.get(svc);
      if (!built) {
        const key = JSON.stringify(svc);
        built = byContent.get(key) ?? this.byContent.get(key) ?? serviceResources(svc);
        byIdentity.set(svc, built);
        contentKey.set(built, key);
      }
      byContent.set(contentKey.get(built)!, built);
      if (services.has(svc.name)) throw new Error(`service ${svc.name} twice in one model`);
      services.set(svc.name, built);
      const before = this.services.get(svc.name);
      if (before !== built) changedServices.push({ before, after: built });
    }
    for (const [name, before] of this.services) if (!services.has(name)) changedServices.push({ before });
    if (changedServices.length === 0) return { snapshot: this, changes: new Map() };

    // Apply: start from the previous maps, drop what the changed services had, add what they have now.
    const fresh = new Map<string, Map<string, Resource>>();
    const touched = new Map<string, Set<string>>();
    const mapFor = (url: string) => {
      let m = fresh.get(url);
      if (!m) {
        m = new Map(this.types.get(url)!.resources);
        fresh.set(url, m);
        touched.set(url, new Set());
      }
      return m;
    };
    // Resources equal in both (same type, name and version) are left alone: an endpoint change copies only the
    // endpoint map.
    const same = (url: string, r: Resource, other?: Built) => other?.some(([u, o]) => u === url && o.name === r.name && o.version === r.version);
    for (const { before, after } of changedServices) {
      for (const [url, r] of before ?? []) {
        if (same(url, r, after)) continue;
        mapFor(url).delete(r.name);
        touched.get(url)!.add(r.name);
      }
    }
    for (const { before, after } of changedServices) {
      for (const [url, r] of after ?? []) {
        if (same(url, r, before)) continue;
        const m = mapFor(url);
        // The model's own validation keeps names unique (service names, frontends); a clash here is a bug.
        if (m.has(r.name)) throw new Error(`two resources named ${r.name} of ${url}`);
        m.set(r.name, r);
        touched.get(url)!.add(r.name);
      }
    }
    const changes: Changes = new Map();
    const states = new Map(this.types);
    for (const [url, names] of touched) {
      const before = this.types.get(url)!;
      const now = fresh.get(url)!;
      const changed = new Set<string>();
      for (const name of names) if (before.resources.get(name)?.version !== now.get(name)?.version) changed.add(name);
      if (changed.size === 0) continue;
      changes.set(url, changed);
      states.set(url, { version: String(Number(before.version) + 1), resources: now });
    }
    if (changes.size === 0) return { snapshot: new Snapshot(this.serial, this.types, services, byContent), changes };
    return { snapshot: new Snapshot(this.serial + 1, states, services, byContent), changes };
  }
}

/** A DiscoveryResponse: header fields encoded now, resource entries concatenated from their pre-encoded bytes. */
export function encodeSotwResponse(versionInfo: string, typeUrl: string, nonce: string, resources: Iterable<Resource>): Buffer {
  const header = protoTypes().response.encode({ version_info: versionInfo, type_url: typeUrl, nonce }).finish();
  const parts: Uint8Array[] = [header];
  for (const r of resources) parts.push(r.sotwBytes);
  return Buffer.concat(parts);
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
