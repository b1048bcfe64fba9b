// The L4 resources of a service (Cluster, Listener, and for proxyless gRPC an api Listener + RouteConfiguration),
// twice: as plain objects for protobufjs (the reference, what the shape *is*), and encoded by hand (what is served).
//
// Why by hand: a full sync of 10,000 services encodes 40,000 of these, and protobufjs' writer allocates an object per
// field written and runs a generated encoder per nested message: 0.3-0.5 s of the control plane's CPU in a sync
// (issue 12's 3 s target). The hand encoders write into one scratch buffer and produce exactly protobufjs' bytes
// (fields in number order, set scalars written even when zero, the same varints), so the content hashes (delta xDS
// resource versions) do not change; unit/controlplane-l4wire checks that over many shapes. Whoever changes an object
// builder below must change its encoder too: that test fails until they agree.
import { ENUM as E, FILTER, TYPE } from '../xds/envoy.js';
import { encodeAny as pack, protoRoot, typeOf } from '../xds/protos.js';
import { sockmeshMetadata } from '../xds/sockmesh.js';
import type { Protocol, Service } from '../agent/model/types.js';
import { clusterBalancing } from './balancing.js';
import { clusterHttpFields } from './http.js';

type Obj = Record<string, unknown>;

/** Bytes of a protobuf varint. */
export function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

export function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[at++] = n;
  return at;
}

/**
 * UTF-8 bytes of `s`. Names, addresses and versions are short ASCII strings: a loop over their characters costs a
 * third of Buffer.byteLength's call into C++ at this size (a full sync measures and writes ~500,000 of them).
 */
export function utf8Length(s: string): number {
  const n = s.length;
  if (n > 64) return Buffer.byteLength(s);
  for (let i = 0; i < n; i++) if (s.charCodeAt(i) >= 0x80) return Buffer.byteLength(s);
  return n;
}

/** Write `s` as UTF-8 at `at` (the room is the caller's: utf8Length); returns the offset after it. */
export function writeUtf8(buf: Buffer, at: number, s: string): number {
  const n = s.length;
  if (n > 64) return at + buf.write(s, at, 'utf8');
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return at + buf.write(s, at, 'utf8'); // the bytes before are written again, the same
    buf[at + i] = c;
  }
  return at + n;
}

/**
 * One growable buffer that messages are written into, nested messages by open()/close(): a nested message's length
 * is reserved as one byte and, the rare time it is 128 or more, the body is moved up to make room (what protobufjs'
 * fork/ldelim do with a list of operations instead). The bytes written are valid until the next reset().
 */
class Scratch {
  buf = Buffer.allocUnsafe(4096);
  at = 0;
  private readonly opened: number[] = [];

  reset(): this {
    this.at = 0;
    this.opened.length = 0;
    return this;
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(bigger, 0, 0, this.at);
    this.buf = bigger;
  }

  varint(n: number): this {
    this.room(10);
    this.at = writeVarint(this.buf, this.at, n);
    return this;
  }

  /** A varint field (`tag` = field number << 3 | 0). */
  uint(tag: number, n: number): this {
    return this.varint(tag).varint(n);
  }

  /** A string field, UTF-8. */
  str(tag: number, s: string): this {
    const len = utf8Length(s);
    this.varint(tag).varint(len);
    this.room(len);
    this.at = writeUtf8(this.buf, this.at, s);
    return this;
  }

  /** Bytes already encoded: a whole field (tag included) or a run of fields. */
  raw(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.at);
    this.at += b.length;
    return this;
  }

  /** Start a length-delimited field (a nested message); its length is written by the matching close(). */
  open(tag: number): this {
    this.varint(tag);
    this.room(1);
    this.opened.push(this.at++);
    return this;
  }

  close(): this {
    const start = this.opened.pop()!;
    const len = this.at - start - 1;
    if (len < 0x80) {
      this.buf[start] = len;
      return this;
    }
    const extra = varintLength(len) - 1;
    this.room(extra);
    this.buf.copyWithin(start + 1 + extra, start + 1, this.at);
    writeVarint(this.buf, start, len);
    this.at += extra;
    return this;
  }

  /** What was written since reset(): a view, valid until the next reset(). */
  view(): Buffer {
    if (this.opened.length > 0) throw new Error(`encoding: ${this.opened.length} nested message(s) left open`);
    return this.buf.subarray(0, this.at);
  }
}

const scratch = new Scratch();

// Tags: field number << 3 | wire type (0 varint, 2 length-delimited).
const LD = (field: number) => (field << 3) | 2;
const VARINT = (field: number) => field << 3;

/** The config source of everything served: ADS, resource API v3. */
export function adsConfigSource(): Obj {
  return { ads: {}, resource_api_version: E()['V3'] };
}

// ---- Cluster ----

/** An L4 port entry's Cluster: EDS over ADS, the service's balancing, its affinity (metadata) and health check. */
export function l4ClusterObject(svc: Service, name: string): Obj {
  const cluster: Obj = { name, type: E()['EDS'], eds_cluster_config: { eds_config: adsConfigSource() }, ...clusterBalancing(svc) };
  if (svc.affinityTimeoutSeconds > 0) {
    // Envoy has no cluster-level source affinity: carried as sockmesh filter metadata (a Struct).
    cluster['metadata'] = sockmeshMetadata({ affinity_timeout_seconds: svc.affinityTimeoutSeconds });
  }
  if (svc.healthCheck) cluster['health_checks'] = clusterHttpFields(svc, undefined)['health_checks'];
  return cluster;
}

/**
 * Everything of an L4 Cluster after its name (field 1, written first, as protobufjs writes fields in number order)
 * depends only on the service's balancing and affinity: encoded once per distinct set of those by protobufjs itself
 * and reused (a fleet has a handful). The key names everything l4ClusterObject reads from the service besides the
 * name; a service with a health check (rare, and a nested object) is encoded whole by protobufjs.
 */
const clusterTails = new Map<string, Uint8Array>();
function clusterTail(svc: Service): Uint8Array {
  const key = `${svc.algorithm} ${svc.algorithm === 'maglev' ? svc.maglevTableSize : 0} ${svc.affinityTimeoutSeconds > 0 ? svc.affinityTimeoutSeconds : 0}`;
  let tail = clusterTails.get(key);
  if (!tail) {
    const { name: _name, ...rest } = l4ClusterObject(svc, '');
    tail = Uint8Array.from(typeOf(TYPE.cluster).encode(rest).finish()); // a copy: protobufjs may pool its buffers
    clusterTails.set(key, tail);
  }
  return tail;
}

export function encodeL4Cluster(svc: Service, name: string): Buffer {
  if (svc.healthCheck || svc.http) return typeOf(TYPE.cluster).encode(l4ClusterObject(svc, name)).finish() as Buffer;
  return scratch.reset().str(LD(1), name).raw(clusterTail(svc)).view();
}

// ---- Listener (a VIP:port) ----

const TCP_PROXY_FILTER = 'envoy.filters.network.tcp_proxy';
const UDP_PROXY_FILTER = 'envoy.filters.udp_listener.udp_proxy';

/** The Listener of one VIP of an L4 port entry: tcp_proxy or udp_proxy to the entry's cluster. */
export function l4ListenerObject(name: string, vip: string, port: number, protocol: Protocol, cluster: string): Obj {
  const e_ = E();
  const address = { socket_address: { address: vip, port_value: port, protocol: e_[protocol === 'tcp' ? 'TCP' : 'UDP'] } };
  const proxy = { stat_prefix: cluster, cluster };
  return protocol === 'tcp'
    ? { name, address, filter_chains: [{ filters: [{ name: TCP_PROXY_FILTER, typed_config: pack(FILTER.tcpProxy, proxy) }] }] }
    : { name, address, udp_listener_config: {}, listener_filters: [{ name: UDP_PROXY_FILTER, typed_config: pack(FILTER.udpProxy, proxy) }] };
}

/**
 *   Listener { name = 1; address = 2 { socket_address = 1 { protocol = 1; address = 2; port_value = 3 } };
 *     tcp: filter_chains = 3 { filters = 3 { name = 1; typed_config = 4 Any { type_url = 1; value = 2 TcpProxy } } }
 *     udp: listener_filters = 9 { name = 1; typed_config = 3 Any { ... UdpProxyConfig } }; udp_listener_config = 18 {}
 *   TcpProxy / UdpProxyConfig { stat_prefix = 1; cluster = 2 }
 */
export function encodeL4Listener(name: string, vip: string, port: number, protocol: Protocol, cluster: string): Buffer {
  const e_ = E();
  const s = scratch.reset().str(LD(1), name);
  s.open(LD(2)).open(LD(1)).uint(VARINT(1), e_[protocol === 'tcp' ? 'TCP' : 'UDP']!).str(LD(2), vip).uint(VARINT(3), port).close().close();
  const typedConfig = (field: number, url: string) => s.open(LD(field)).str(LD(1), url).open(LD(2)).str(LD(1), cluster).str(LD(2), cluster).close().close();
  if (protocol === 'tcp') {
    s.open(LD(3)).open(LD(3)).str(LD(1), TCP_PROXY_FILTER);
    typedConfig(4, FILTER.tcpProxy).close().close();
  } else {
    s.open(LD(9)).str(LD(1), UDP_PROXY_FILTER);
    typedConfig(3, FILTER.udpProxy).close();
    s.open(LD(18)).close();
  }
  return s.view();
}

// ---- proxyless gRPC: api Listener + RouteConfiguration ----

const ROUTER_FILTER = 'envoy.filters.http.router';
/** The router filter's config (empty, the same for every service): encoded once. */
let router: ReturnType<typeof pack> | undefined;
const routerConfig = () => (router ??= pack(FILTER.router, {}));

/** The api listener of a service (xds:///<service>): an HttpConnectionManager naming its route config over RDS. */
export function grpcListenerObject(service: string): Obj {
  const hcm = {
    stat_prefix: service,
    rds: { route_config_name: service, config_source: adsConfigSource() },
    http_filters: [{ name: ROUTER_FILTER, typed_config: routerConfig() }],
  };
  return { name: service, api_listener: { api_listener: pack(FILTER.httpConnectionManager, hcm) } };
}

/** The route config of a service's api listener: everything to `cluster`, hashed by `hashPolicy` when given. */
export function grpcRouteObject(service: string, cluster: string, hashPolicy: Obj[] | undefined): Obj {
  const action = hashPolicy ? { cluster, hash_policy: hashPolicy } : { cluster };
  return { name: service, virtual_hosts: [{ name: service, domains: ['*'], routes: [{ match: { prefix: '' }, route: action }] }] };
}

/** Bytes that are the same for every service, encoded once by protobufjs. */
interface Constants {
  /** `config_source = 1 { ADS, V3 }` of an Rds. */
  rdsConfigSource: Uint8Array;
  /** `http_filters = 5 { router }` of an HttpConnectionManager. */
  routerFilter: Uint8Array;
}
let constants: Constants | undefined;
function consts(): Constants {
  if (constants) return constants;
  const root = protoRoot();
  const enc = (type: string, obj: Obj) => Uint8Array.from(root.lookupType(type).encode(obj).finish());
  const hcm = 'envoy.extensions.filters.network.http_connection_manager.v3.';
  constants = {
    rdsConfigSource: enc(`${hcm}Rds`, { config_source: adsConfigSource() }),
    routerFilter: enc(`${hcm}HttpConnectionManager`, { http_filters: [{ name: ROUTER_FILTER, typed_config: routerConfig() }] }),
  };
  return constants;
}

/** `hash_policy = 15 [...]` of a RouteAction, per distinct policy list (JSON): encoded once by protobufjs. */
const hashPolicies = new Map<string, Uint8Array>();
function hashPolicyBytes(policy: Obj[]): Uint8Array {
  const key = JSON.stringify(policy);
  let b = hashPolicies.get(key);
  if (!b) {
    b = Uint8Array.from(protoRoot().lookupType('envoy.config.route.v3.RouteAction').encode({ hash_policy: policy }).finish());
    hashPolicies.set(key, b);
  }
  return b;
}

/**
 *   Listener { name = 1; api_listener = 19 ApiListener { api_listener = 1 Any { type_url = 1; value = 2
 *     HttpConnectionManager { stat_prefix = 2; rds = 3 { config_source = 1; route_config_name = 2 }; http_filters = 5 } } } }
 */
export function encodeGrpcListener(service: string): Buffer {
  const c = consts();
  const s = scratch.reset().str(LD(1), service);
  s.open(LD(19)).open(LD(1)).str(LD(1), FILTER.httpConnectionManager).open(LD(2));
  s.str(LD(2), service).open(LD(3)).raw(c.rdsConfigSource).str(LD(2), service).close().raw(c.routerFilter);
  return s.close().close().close().view();
}

/**
 *   RouteConfiguration { name = 1; virtual_hosts = 2 { name = 1; domains = 2 "*"; routes = 3 Route {
 *     match = 1 { prefix = 1 "" }; route = 2 RouteAction { cluster = 1; hash_policy = 15 } } } }
 */
export function encodeGrpcRoute(service: string, cluster: string, hashPolicy: Obj[] | undefined): Buffer {
  const s = scratch.reset().str(LD(1), service);
  s.open(LD(2)).str(LD(1), service).str(LD(2), '*').open(LD(3));
  s.open(LD(1)).str(LD(1), '').close();
  s.open(LD(2)).str(LD(1), cluster);
  if (hashPolicy) s.raw(hashPolicyBytes(hashPolicy));
  return s.close().close().close().view();
}
