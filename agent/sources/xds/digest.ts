// xDS resources -> digests: each decoded resource, on its own, into what sockmesh uses of it plus notes on what it
// does not support. Pure: no I/O, no gRPC. A bad resource is rejected here, when it arrives (the NACK names the
// resource and the field: XdsResourceError); build.ts makes the model from digests that each made sense alone.
import { Issues } from '../../model/fields.js';
import { validateWorkloads } from '../../model/l7config.js';
import type { Algorithm, Workload } from '../../model/types.js';
import { FILTER, LB_POLICY, type LbPolicyName } from '../../../xds/envoy.js';
import { unpackAny, type AnyMessage } from '../../../xds/protos.js';
import { sockmeshMeta } from '../../../xds/sockmesh.js';
import { num } from '../../../xds/wellknown.js';
import { clusterHttp, httpRoutes, rbacAuthz, type ClusterHttp, type HcmDigest, type HttpRoutes } from './digest-http.js';
import { fail } from './errors.js';

type Obj = Record<string, any>; // decoded protobuf plain objects (keepCase, longs/enums as strings)

export interface ClusterRef { name: string; weight: number }

export interface ListenerDigest {
  name: string;
  /** 'api': a proxyless-gRPC api_listener (no VIP, ignored); 'skip': nothing for sockmesh (reported in notes). */
  kind: 'l4' | 'api' | 'skip';
  vip?: string;
  port?: number;
  protocol?: 'tcp' | 'udp';
  /** Clusters the listener sends to directly (tcp_proxy / udp_proxy / inline route config). */
  clusters: ClusterRef[];
  /** RDS route configuration named by an HttpConnectionManager. */
  routeName?: string;
  /** An HttpConnectionManager: the listener is an L7 service (its routes over RDS or inline). */
  http?: HcmDigest;
  notes: string[];
}

export interface RouteDigest { name: string; clusters: ClusterRef[]; notes: string[]; http: HttpRoutes }

export interface ClusterDigest {
  name: string;
  algorithm: Algorithm;
  affinitySeconds?: number;
  tableSize?: number;
  /** The ClusterLoadAssignment name to fetch over EDS; undefined when endpoints are inline or unsupported. */
  edsName?: string;
  /** Inline endpoints (STATIC), or [] for a cluster type we cannot resolve (reported in notes). */
  inline?: EndpointsDigest;
  /** What an HTTP listener uses of it (balancer, breakers, outlier detection, its group name) and its health check. */
  http: ClusterHttp;
  notes: string[];
}

/**
 * The usable endpoints of a ClusterLoadAssignment, packed: endpoint i is addrs[i] with nums[EP*i ..] = port, weight,
 * p, q, where p/q say where it is in the resource (endpoints[p].lb_endpoints[q]). An object per endpoint cost ~12 MiB
 * at 100,000 endpoints; these arrays ~4. Locality is not kept: nothing uses it.
 */
export interface EndpointsDigest { name: string; addrs: string[]; nums: number[]; notes: string[] }
/** Numbers per endpoint in EndpointsDigest.nums. */
export const EP = 4;

const noEndpoints = (name: string): EndpointsDigest => ({ name, addrs: [], nums: [], notes: [] });

/**
 * One frozen empty list for every digest without notes (nearly all): 30,000 digests each kept an empty array of
 * their own. Only ever read once a digest is made (resolve() copies before adding).
 */
const NO_NOTES_YET: string[] = Object.freeze([] as string[]) as string[];
export function sealNotes<D extends { notes: string[] }>(d: D): D {
  if (d.notes.length === 0) d.notes = NO_NOTES_YET;
  return d;
}

function unpack(what: string, field: string, any: unknown): Obj {
  if (!any || typeof any !== 'object') fail(what, field, 'missing typed_config');
  try {
    return unpackAny(any as AnyMessage);
  } catch (e) {
    fail(what, field, (e as Error).message);
  }
}

// ---- listeners ----

export function digestListener(name: string, l: Obj): ListenerDigest {
  return sealNotes(listenerDigest(name, l));
}

function listenerDigest(name: string, l: Obj): ListenerDigest {
  const what = `listener '${name}'`;
  const d: ListenerDigest = { name, kind: 'skip', clusters: [], notes: [] };
  if (!l.address) {
    if (l.api_listener) d.kind = 'api'; // proxyless gRPC: describes no VIP
    else d.notes.push(`${what}: no address (skipped)`);
    return d;
  }
  const sa = l.address.socket_address;
  if (!sa) fail(what, 'address', `only socket_address is supported, got ${Object.keys(l.address).join(', ') || 'nothing'}`);
  const port = num(sa.port_value);
  if (port === undefined || port < 1 || port > 65535) fail(what, 'address.socket_address.port_value', `must be a port 1..65535, got ${sa.port_value ?? 'nothing'}`);
  if (typeof sa.address !== 'string' || sa.address === '') fail(what, 'address.socket_address.address', 'is required');
  if (sa.address === '0.0.0.0' || sa.address === '::') {
    d.notes.push(`${what}: wildcard address ${sa.address} is not a VIP (skipped)`);
    return d;
  }
  const udp = sa.protocol === 'UDP' || !!l.udp_listener_config;
  d.kind = 'l4';
  d.vip = sa.address;
  d.port = port;
  d.protocol = udp ? 'udp' : 'tcp';
  if (udp) digestUdp(what, l, d);
  else digestTcp(what, l, d);
  if (d.clusters.length === 0 && d.routeName === undefined) fail(what, udp ? 'listener_filters' : 'filter_chains', 'names no cluster');
  return d;
}

function digestUdp(what: string, l: Obj, d: ListenerDigest): void {
  const filters: Obj[] = l.listener_filters ?? [];
  filters.forEach((f, i) => {
    const field = `listener_filters[${i}].typed_config`;
    const url = f.typed_config?.type_url;
    if (url !== FILTER.udpProxy) fail(what, field, `unsupported filter type ${url ?? `(none, name '${f.name}')`}`);
    const cfg = unpack(what, field, f.typed_config);
    if (cfg.matcher) fail(what, `${field}.matcher`, 'matcher-based UDP routing is not supported (use cluster)');
    if (!cfg.cluster) fail(what, `${field}.cluster`, 'is required');
    d.clusters.push({ name: cfg.cluster, weight: 1 });
  });
}

function digestTcp(what: string, l: Obj, d: ListenerDigest): void {
  const chains: Obj[] = l.filter_chains ?? [];
  if (chains.length === 0) fail(what, 'filter_chains', 'is empty');
  if (chains.length > 1 || l.default_filter_chain) {
    d.notes.push(`${what}: only filter_chains[0] is used (filter chain matching is not supported at L4)`);
  }
  if (chains[0]!.transport_socket) d.notes.push(`${what}: filter_chains[0].transport_socket (TLS) not applied`);
  const filters: Obj[] = chains[0]!.filters ?? [];
  let terminal = false;
  filters.forEach((f, i) => {
    const field = `filter_chains[0].filters[${i}].typed_config`;
    if (f.config_discovery) fail(what, `filter_chains[0].filters[${i}].config_discovery`, 'filter config discovery is not supported');
    const url = f.typed_config?.type_url;
    if (terminal) fail(what, field, 'a filter after the terminal filter');
    if (url === FILTER.networkRbac) {
      refuseEnforcingRbac(what, field, unpack(what, field, f.typed_config));
      d.notes.push(`${what}: RBAC filter not supported (not enforced)`);
    } else if (url === FILTER.tcpProxy) {
      const cfg = unpack(what, field, f.typed_config);
      d.clusters.push(...specifiedClusters(what, field, cfg));
      terminal = true;
    } else if (url === FILTER.httpConnectionManager) {
      digestHcm(what, field, unpack(what, field, f.typed_config), d, l);
      terminal = true;
    } else {
      fail(what, field, `unsupported filter type ${url ?? `(none, name '${f.name}')`}`);
    }
  });
}

/**
 * RBAC is not enforced yet (L7 authorization is the L7 path's work). Ignoring a policy that denies something would
 * fail open while the control plane believes it is in force, so such a policy is refused (NACK); one that denies
 * nothing (no rules, LOG, or DENY with no policies) is accepted and reported.
 */
function refuseEnforcingRbac(what: string, field: string, cfg: Obj): void {
  const rules: Obj | undefined = cfg.rules;
  if (!rules) return;
  const action: string = rules.action ?? 'ALLOW';
  const policies = Object.keys(rules.policies ?? {}).length;
  if (action === 'LOG' || (action === 'DENY' && policies === 0)) return;
  fail(what, `${field}.rules`, `RBAC is not enforced by sockmesh yet: refusing a policy with action ${action} and ${policies} rule(s): ignoring it would fail open`);
}

/** tcp_proxy: cluster, or weighted_clusters (plain uint32 weights). */
function specifiedClusters(what: string, field: string, cfg: Obj): ClusterRef[] {
  if (cfg.cluster) return [{ name: cfg.cluster, weight: 1 }];
  const list: Obj[] = cfg.weighted_clusters?.clusters ?? [];
  if (list.length === 0) fail(what, `${field}.cluster`, 'is required (or weighted_clusters)');
  return list.map((c, k) => {
    const weight = num(c.weight) ?? 0;
    if (!c.name) fail(what, `${field}.weighted_clusters.clusters[${k}].name`, 'is required');
    return { name: c.name, weight };
  });
}

function digestHcm(what: string, field: string, hcm: Obj, d: ListenerDigest, l: Obj): void {
  const meta = sockmeshMeta(l);
  const mf = 'metadata.filter_metadata.sockmesh';
  // Workloads (source identities of RBAC principals) travel with the listeners that name them.
  let workloads: Workload[] = [];
  if (meta['workloads'] !== undefined) {
    const issues = new Issues('xds');
    workloads = Array.isArray(meta['workloads']) ? validateWorkloads(meta['workloads'], `${mf}.workloads`, issues) : [];
    if (!Array.isArray(meta['workloads'])) issues.add(`${mf}.workloads`, 'must be a list');
    if (issues.list.length > 0) fail(what, issues.list[0]!.path, issues.list.map((i) => i.message).join('; '));
  }
  const rbac: { field: string; cfg: Obj }[] = [];
  (hcm.http_filters ?? []).forEach((f: Obj, i: number) => {
    const ff = `${field}.http_filters[${i}].typed_config`;
    const url = f.typed_config?.type_url;
    if (url === FILTER.router) return;
    if (url === FILTER.httpRbac) rbac.push({ field: ff, cfg: unpack(what, ff, f.typed_config) });
    else if (f.is_optional) d.notes.push(`${what}: optional HTTP filter ${url ?? f.name} ignored`);
    else fail(what, ff, `unsupported HTTP filter type ${url ?? `(none, name '${f.name}')`}`);
  });
  if (hcm.access_log?.length) d.notes.push(`${what}: ${field}.access_log not applied (sockmesh logs a sample of requests: accessLogSample)`);
  const str = (k: string) => (typeof meta[k] === 'string' ? (meta[k] as string) : undefined);
  const h: HcmDigest = {
    service: str('service'),
    failMode: str('failMode'),
    accessLogSample: typeof meta['accessLogSample'] === 'number' ? meta['accessLogSample'] : undefined,
    workloads: workloads.map((w) => ({ name: w.name, cgroups: w.cgroups })),
    extraClusters: Array.isArray(meta['clusters']) ? meta['clusters'].filter((c: unknown): c is string => typeof c === 'string') : [],
    authz: rbacAuthz(what, rbac, new Set(workloads.map((w) => w.name)), d.notes),
  };
  // x-forwarded-* as Envoy's connection manager: use_remote_address (a BoolValue) and xff_num_trusted_hops
  const ura = hcm.use_remote_address;
  const useRemote = typeof ura === 'object' && ura !== null ? ura.value : ura;
  if (useRemote !== undefined || hcm.xff_num_trusted_hops !== undefined) {
    h.forwarded = { useRemoteAddress: useRemote === true, trustedHops: hcm.xff_num_trusted_hops ?? 0 };
    if (hcm.skip_xff_append === true) d.notes.push(`${what}: ${field}.skip_xff_append not applied (the client is appended with use_remote_address)`);
  }
  d.http = h;
  if (hcm.rds) {
    if (!hcm.rds.route_config_name) fail(what, `${field}.rds.route_config_name`, 'is required');
    d.routeName = hcm.rds.route_config_name;
  } else if (hcm.route_config) {
    h.inline = httpRoutes(`${what} inline route_config`, hcm.route_config);
    d.notes.push(...h.inline.notes);
  } else {
    fail(what, `${field}.route_specifier`, `only rds and route_config are supported, got ${hcm.scoped_routes ? 'scoped_routes' : 'nothing'}`);
  }
  // Metadata clusters first: they say the order of the groups (and so of the backends) in the service.
  const listed = new Set(h.extraClusters);
  d.clusters.push(...h.extraClusters.map((name) => ({ name, weight: 1 })));
  if (h.inline) d.clusters.push(...routeClusters(h.inline).filter((c) => !listed.has(c.name)));
}

/** The clusters routes send to, each once. */
function routeClusters(h: HttpRoutes): ClusterRef[] {
  const seen = new Set<string>();
  const out: ClusterRef[] = [];
  for (const r of h.routes) {
    for (const sp of r.splits) {
      if (seen.has(sp.cluster)) continue;
      seen.add(sp.cluster);
      out.push({ name: sp.cluster, weight: 1 });
    }
  }
  return out;
}

// ---- routes ----

/** A RouteConfiguration: its routes (the L7 model of the listeners naming it) and the clusters they use. */
export function digestRoute(name: string, r: Obj): RouteDigest {
  const what = name.startsWith('listener') ? name : `route_configuration '${name}'`;
  const http = httpRoutes(what, r);
  return { name, clusters: routeClusters(http), notes: http.notes, http };
}

// ---- clusters ----

const LB: Record<string, Algorithm> = { ROUND_ROBIN: 'weighted', LEAST_REQUEST: 'weighted', RANDOM: 'random', MAGLEV: 'maglev', RING_HASH: 'maglev' };

export function digestCluster(name: string, c: Obj): ClusterDigest {
  const d = clusterDigest(name, c);
  if (d.notes.length === 0) d.notes = d.http.notes = NO_NOTES_YET;
  if (d.inline) sealNotes(d.inline);
  return d;
}

const LIST_POLICY = new Map<string, LbPolicyName>(Object.entries(LB_POLICY).map(([k, url]) => [url, k as LbPolicyName]));

/**
 * The cluster's balancing, named as lb_policy names it, and where a Maglev table size is (field name and value).
 * lb_policy when the cluster sets it (sockmesh's control plane always does: its load_balancing_policy is for gRPC
 * clients and says the same with fallbacks); else the first policy of load_balancing_policy sockmesh knows, as a
 * client that supports that field does (a proto3 encoder omits lb_policy ROUND_ROBIN, the default, so an unset
 * lb_policy beside a list means the list).
 */
function balancingOf(what: string, c: Obj): { policy: string; tableField: string; tableSize: unknown } {
  const fromEnum = { tableField: 'maglev_lb_config.table_size', tableSize: c.maglev_lb_config?.table_size };
  if (c.lb_policy !== undefined && c.lb_policy !== 'LOAD_BALANCING_POLICY_CONFIG') return { policy: c.lb_policy, ...fromEnum };
  const list: Obj[] = c.load_balancing_policy?.policies ?? [];
  if (list.length === 0) return { policy: c.lb_policy ?? 'ROUND_ROBIN', ...fromEnum };
  for (let i = 0; i < list.length; i++) {
    const cfg = list[i]!.typed_extension_config?.typed_config;
    const policy = LIST_POLICY.get(cfg?.type_url);
    if (!policy) continue;
    const field = `load_balancing_policy.policies[${i}].typed_extension_config.typed_config`;
    if (policy !== 'MAGLEV') return { policy, tableField: field, tableSize: undefined };
    return { policy, tableField: `${field}.table_size`, tableSize: unpack(what, field, cfg).table_size };
  }
  return { policy: 'load_balancing_policy (no policy sockmesh knows)', ...fromEnum };
}

function clusterDigest(name: string, c: Obj): ClusterDigest {
  const what = `cluster '${name}'`;
  const { policy, tableField, tableSize } = balancingOf(what, c);
  const meta = sockmeshMeta(c);
  const http = clusterHttp(what, c, meta, policy);
  const d: ClusterDigest = { name, algorithm: LB[policy] ?? 'weighted', http, notes: http.notes };
  // Own clusters of an HTTP service: lb_policy is the proxy's balancer, the kernel's algorithm is in metadata.
  const own = meta['algorithm'];
  if (own === 'random' || own === 'weighted' || own === 'maglev') d.algorithm = own;
  else if (!LB[policy]) d.notes.push(`${what}: lb_policy ${policy} not supported (weighted used)`);
  if (policy === 'RING_HASH') d.notes.push(`${what}: RING_HASH approximated by maglev`);
  if ((policy === 'MAGLEV' || d.algorithm === 'maglev') && tableSize !== undefined) {
    const size = num(tableSize);
    if (size === undefined) fail(what, tableField, `not a number: ${JSON.stringify(tableSize)}`);
    d.tableSize = size;
  }
  const aff = c.metadata?.filter_metadata?.sockmesh?.fields?.affinity_timeout_seconds;
  if (aff !== undefined) {
    // protobufjs' built-in google.protobuf.Value has camelCase fields (numberValue) whatever keepCase says.
    const secs = num(aff.numberValue ?? aff.number_value ?? aff.stringValue ?? aff.string_value);
    if (secs === undefined) fail(what, 'metadata.filter_metadata.sockmesh.affinity_timeout_seconds', 'must be a number');
    d.affinitySeconds = secs;
  }

  if (c.cluster_type) {
    d.notes.push(`${what}: custom cluster_type ${c.cluster_type.name ?? ''} not supported (no endpoints)`);
    d.inline = noEndpoints(name);
    return d;
  }
  const type: string = c.type ?? 'STATIC';
  if (type === 'EDS') {
    d.edsName = c.eds_cluster_config?.service_name || name;
  } else if (type === 'STATIC') {
    d.inline = c.load_assignment ? digestEndpoints(name, c.load_assignment, `${what}: load_assignment`) : noEndpoints(name);
  } else {
    d.notes.push(`${what}: cluster type ${type} not supported (no endpoints)`);
    d.inline = noEndpoints(name);
  }
  return d;
}

// ---- endpoints ----

export function digestEndpoints(name: string, cla: Obj, whatOverride?: string): EndpointsDigest {
  const what = whatOverride ?? `cluster_load_assignment '${name}'`;
  const d = noEndpoints(name);
  const groups: Obj[] = cla.endpoints ?? [];
  for (let p = 0; p < groups.length; p++) {
    const le = groups[p]!;
    const priority = num(le.priority) ?? 0;
    const lbs: Obj[] = le.lb_endpoints ?? [];
    if (priority !== 0) {
      if (lbs.length > 0) d.notes.push(`${what}: endpoints[${p}]: priority ${priority} endpoints not used (priority 0 only)`);
      continue;
    }
    for (let q = 0; q < lbs.length; q++) {
      const lb = lbs[q]!;
      if (lb.endpoint_name) fail(what, `endpoints[${p}].lb_endpoints[${q}].endpoint_name`, 'named endpoints are not supported');
      const health: string = lb.health_status ?? 'UNKNOWN';
      if (health === 'UNHEALTHY' || health === 'TIMEOUT') continue;
      const sa = lb.endpoint?.address?.socket_address;
      if (!sa) fail(what, `endpoints[${p}].lb_endpoints[${q}].endpoint.address`, 'only socket_address is supported');
      const port = num(sa.port_value);
      if (port === undefined || port < 1 || port > 65535) {
        fail(what, `endpoints[${p}].lb_endpoints[${q}].endpoint.address.socket_address.port_value`, `must be a port 1..65535, got ${sa.port_value ?? 'nothing'}`);
      }
      // A weight of 0 (also as an empty wrapper, as proto3 encoders that omit zeros send it) drains the backend.
      const weight = health === 'DRAINING' ? 0 : num(lb.load_balancing_weight) ?? 1;
      d.addrs.push(sa.address);
      d.nums.push(port, weight, p, q);
    }
  }
  return sealNotes(d);
}

// ---- the state: every accepted digest ----

export interface XdsState {
  listeners: ReadonlyMap<string, ListenerDigest>;
  routes: ReadonlyMap<string, RouteDigest>;
  clusters: ReadonlyMap<string, ClusterDigest>;
  endpoints: ReadonlyMap<string, EndpointsDigest>;
}

export const emptyState = (): XdsState => ({ listeners: new Map(), routes: new Map(), clusters: new Map(), endpoints: new Map() });

