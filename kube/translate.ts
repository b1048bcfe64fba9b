// Kubernetes Services + EndpointSlices (+ GAMMA HTTPRoutes, translate-http.ts) -> the sockmesh model, with
// kube-proxy's semantics (translate-endpoints.ts). Pure, no I/O: the control plane (cluster-wide) and the agent
// (for its node) call it with what their reflectors hold.
//
// Each Service becomes the plain config object the file source parses, validated by the model's own
// validateServices(): the result is always something a config file could have said, with the same checks and
// defaults. Services are validated one at a time, so one bad object costs only itself (reported in `issues` and
// `unserved`), never the cluster. Output order is by "<namespace>/<name>", so that one slice's change changes one
// service of the model and the kernel plan's diff stays that small.
//
// What is not served (nothing in the kernel), each listed in `unserved` with its kind and reason, as meshctl shows it:
// headless services (clusterIP None) and ExternalName (no VIP: DNS answers for them); NodePort and LoadBalancer
// ports and externalIPs (the ClusterIP part of such a service is served); SCTP ports (the datapath balances TCP
// and UDP); services labelled service.kubernetes.io/service-proxy-name with a value other than 'sockmesh'. That
// label means "another proxy implements this service": kube-proxy skips every such service, and so do we, except
// those that name us, which we serve (a cluster can move services to sockmesh one at a time that way).
//
// Multi-port services: the model's config form gives every backend of a service to every one of its port entries.
// A Kubernetes service whose ports have different endpoints (a named targetPort resolving differently, or a slice
// without one of the ports) cannot be one such service: it becomes one model service per port entry (names in
// translate-names.ts), as the agent's xDS client does for listeners whose clusters differ.
import { canonicalAddress } from '../agent/model/address.js';
import { DEFAULT_AFFINITY_SECONDS, frontendKey, MAX_AFFINITY_SECONDS, MAX_PORTS, MAX_VIPS, validateServices } from '../agent/model/config.js';
import { defaultMaglevTableSize } from '../agent/model/maglev.js';
import { ConfigError, type Backend, type Family, type Frontend, type Model, type Protocol, type Service } from '../agent/model/types.js';
import { modelProtocol, portEndpoints, ZONE_LABEL, type Endpoint, type NodeCtx, type SliceProblem } from './translate-endpoints.js';
import { buildRouteIndex, httpFor, routeStatuses, type HttpResult } from './translate-http.js';
import { serviceIndex, sliceIndex } from './translate-index.js';
import { isDnsLabel, modelServiceName } from './translate-names.js';
import type { ClusterView, Ctx, NodeScope, RouteIndex, RouteStatusUpdate, TranslateIssue, Unserved, UnservedKind } from './translate-types.js';
import type { KEndpointSlice, KNode, KService, KServicePort } from './types.js';

export type * from './translate-types.js';

export interface TranslateResult {
  model: Model;
  unserved: Unserved[];
  routeStatus: RouteStatusUpdate[];
  issues: TranslateIssue[];
  /** model service name -> the Service it came from ("<namespace>/<name>") */
  origins: ReadonlyMap<string, string>;
}

export const SERVICE_PROXY_NAME_LABEL = 'service.kubernetes.io/service-proxy-name';
/** The service-proxy-name value that hands a service to sockmesh (kube-proxy skips it then). */
export const OUR_PROXY_NAME = 'sockmesh';
const SOURCE = 'kubernetes';

/** What one Service made, and what the checks across services compare of it. */
export interface Made {
  services: Service[];
  unserved: Unserved[];
  issues: TranslateIssue[];
  http?: HttpResult;
  /** per model service: its claims, 'n<name>' and 'f<frontend key>' (names and frontends are unique in a model) */
  claims: string[][];
}

interface CacheEntry {
  node: string;
  slices: readonly KEndpointSlice[] | undefined;
  /** the attached routes and what their backendRefs read (empty without routes: the common case allocates none) */
  more: readonly unknown[];
  made: Made;
}

/**
 * Per Service object, what it made last time and from which inputs (the service, its slice list, the routes and
 * backend services its HTTP policy read, the node): a reflector replaces an object when it changes, and
 * translate-index.ts replaces a service's slice list when one of its slices does, so identical inputs give an
 * identical result, and a change of one slice re-translates one service. (translate-live.ts's ClusterTranslator,
 * which the agent and the control plane use, is told what changed instead and keeps its own results.)
 */
const cache = new WeakMap<KService, CacheEntry>();
const NONE: readonly unknown[] = [];

function sameList(a: readonly unknown[], b: readonly unknown[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The node a result is for, with its zone read from the view's Node objects when the scope does not say it. */
export function nodeContext(v: ClusterView, scope: NodeScope): NodeCtx {
  const node: NodeCtx = { ...scope };
  if (node.zone === undefined && node.nodeName !== undefined) {
    const z = v.nodes?.get(node.nodeName)?.metadata.labels?.[ZONE_LABEL] ?? findNode(v.nodes, node.nodeName)?.metadata.labels?.[ZONE_LABEL];
    if (z) node.zone = z;
  }
  return node;
}

/**
 * Translate a whole cluster view for `scope`. Deterministic: the same view gives the same result, in the same order.
 * The reference translation: ClusterTranslator (translate-live.ts) must give exactly this, told only what changed.
 */
export function translateCluster(v: ClusterView, scope: NodeScope): TranslateResult {
  const node = nodeContext(v, scope);
  const nodeKey = `${node.nodeName ?? ''}|${node.zone ?? ''}`;
  const slices = sliceIndex(v.endpointSlices);
  const { byKey, keys } = serviceIndex(v.services);
  const routes = buildRouteIndex(v.httpRoutes?.values() ?? [], byKey);
  const ctx: Ctx = { node, slices, routes, services: byKey };
  const made: Made[] = [];
  const claims = new Claims();
  for (const key of keys) {
    const svc = byKey.get(key)!;
    const mine = slices.get(key);
    const more = routes.byParent.has(key) ? routeInputs(key, ctx) : NONE;
    let entry = cache.get(svc);
    if (!entry || entry.node !== nodeKey || entry.slices !== mine || !sameList(entry.more, more)) {
      entry = { node: nodeKey, slices: mine, more, made: translateService(svc, key, ctx) };
      cache.set(svc, entry);
    }
    made.push(entry.made);
    claims.add(entry.made);
  }
  return assemble(keys, made, claims, routes);
}

/**
 * How many model services claim each name and frontend. A model service none of whose claims is shared cannot clash
 * with any other, whatever the order: only the contested ones (none, in a sane cluster) need the checks across
 * services, so a translation that re-made one service does not walk 10,000 services' frontends to check them.
 */
export class Claims {
  private readonly counts = new Map<string, number>();
  /** claims held by more than one model service */
  contested = 0;

  add(m: Made): void {
    for (const list of m.claims) {
      for (const c of list) {
        const n = (this.counts.get(c) ?? 0) + 1;
        this.counts.set(c, n);
        if (n === 2) this.contested++;
      }
    }
  }

  remove(m: Made): void {
    for (const list of m.claims) {
      for (const c of list) {
        const n = (this.counts.get(c) ?? 0) - 1;
        if (n === 1) this.contested--;
        if (n <= 0) this.counts.delete(c);
        else this.counts.set(c, n);
      }
    }
  }

  shared(list: readonly string[]): boolean {
    if (this.contested === 0) return false;
    for (const c of list) if ((this.counts.get(c) ?? 0) > 1) return true;
    return false;
  }
}

/**
 * The result from each service's translation (`made[i]` of `keys[i]`, in key order), with the checks across services
 * (the model's validation saw one service at a time): names and frontends unique. Within a cluster the API server
 * keeps ClusterIPs unique; a stand-in or a race may not: the first in order wins. Walks plain arrays and builds
 * `origins` only when it is read: at 10,000 services a Map of them built per batch was most of a one-slice batch.
 */
export function assemble(keys: readonly string[], made: readonly Made[], claims: Claims, routes: RouteIndex): TranslateResult {
  const services: Service[] = [];
  const unserved: Unserved[] = [];
  const issues: TranslateIssue[] = [...routes.issues];
  /** claims of the contested model services taken so far -> the Service that took them */
  const taken = new Map<string, string>();
  const refused = new Set<Service>();
  const https: { key: string; http: HttpResult }[] = [];
  const plain = claims.contested === 0;
  for (let i = 0; i < keys.length; i++) {
    const m = made[i]!;
    if (m.unserved.length > 0) unserved.push(...m.unserved);
    if (m.issues.length > 0) issues.push(...m.issues);
    if (m.http) https.push({ key: keys[i]!, http: m.http });
    for (let k = 0; k < m.services.length; k++) {
      const s = m.services[k]!;
      const mine = m.claims[k]!;
      if (!plain && claims.shared(mine)) {
        const key = keys[i]!;
        let clash: string | undefined;
        for (let j = 0; clash === undefined && j < mine.length; j++) clash = taken.get(mine[j]!);
        if (clash !== undefined) {
          const what = taken.has(mine[0]!) ? `its model name '${s.name}' is also the name of Service ${clash}` : `a frontend of it is also a frontend of Service ${clash}`;
          issues.push({ object: `Service ${key}`, path: '', message: `not served: ${what} (first in namespace/name order wins)` });
          unserved.push({ ...nsName(key), kind: 'invalid', reason: what });
          refused.add(s);
          continue;
        }
        for (const c of mine) taken.set(c, key);
      }
      services.push(s);
    }
  }
  const keysNow = keys.slice();
  const madeNow = made.slice();
  let origins: Map<string, string> | undefined;
  return {
    model: { services }, unserved, routeStatus: routeStatuses(https, routes), issues,
    get origins(): ReadonlyMap<string, string> {
      if (!origins) {
        origins = new Map();
        for (let i = 0; i < keysNow.length; i++) for (const s of madeNow[i]!.services) if (!refused.has(s)) origins.set(s.name, keysNow[i]!);
      }
      return origins;
    },
  };
}

function findNode(nodes: ReadonlyMap<string, KNode> | undefined, name: string): KNode | undefined {
  if (!nodes) return undefined;
  for (const n of nodes.values()) if (n.metadata.name === name) return n;
  return undefined;
}

const nsName = (key: string) => {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
};


const NO_SLICES: KEndpointSlice[] = [];

/** What a service's HTTP policy reads besides the service and its slices: its routes, their backends and slices. */
export function routeInputs(key: string, ctx: Ctx): unknown[] {
  const out: unknown[] = [];
  for (const r of ctx.routes.byParent.get(key) ?? []) {
    out.push(r.route);
    for (const b of r.backends) out.push(ctx.services.get(b), ctx.slices.get(b));
  }
  return out;
}

/** The served ports of a service: TCP and UDP, with what the model calls them. */
interface Entry {
  index: number;
  sp: KServicePort;
  port: number;
  protocol: Protocol;
}

/** One service port's backends (own endpoints, and groups from HTTPRoute backendRefs), as config backends. */
interface ConfigBackend {
  address: string;
  port: number;
  group?: string;
}

/** One Service's part of the model, with its claims (see Claims). */
export function translateService(svc: KService, key: string, ctx: Ctx): Made {
  const made = translateOne(svc, key, ctx);
  made.claims = made.services.map((s) => [`n${s.name}`, ...s.frontends.map((f) => `f${frontendKey(f.vip, f.port, f.protocol)}`)]);
  return made;
}

function translateOne(svc: KService, key: string, ctx: Ctx): Made {
  const made: Made = { services: [], unserved: [], issues: [], claims: [] };
  const { namespace, name } = nsName(key);
  const object = `Service ${key}`;
  const issue = (path: string, message: string) => made.issues.push({ object, path, message });
  const unserve = (kind: UnservedKind, reason: string) => made.unserved.push({ namespace, name, kind, reason });
  const spec = svc.spec ?? {};

  const proxy = svc.metadata.labels?.[SERVICE_PROXY_NAME_LABEL];
  if (proxy !== undefined && proxy !== OUR_PROXY_NAME) {
    unserve('other-proxy', `labelled ${SERVICE_PROXY_NAME_LABEL}=${proxy}: another proxy implements it (kube-proxy skips it too)`);
    return made;
  }
  if (!isDnsLabel(namespace) || !isDnsLabel(name)) {
    issue('metadata', `namespace and name must be DNS labels, got ${JSON.stringify(key)}`);
    unserve('invalid', 'its namespace or name is not a DNS label');
    return made;
  }
  if (spec.type === 'ExternalName') {
    unserve('external-name', `ExternalName ${spec.externalName ?? '(none)'}: a DNS alias, no VIP to balance`);
    return made;
  }
  const ips = spec.clusterIPs && spec.clusterIPs.length > 0 ? spec.clusterIPs : spec.clusterIP !== undefined ? [spec.clusterIP] : [];
  if (ips[0] === 'None') {
    unserve('headless', 'headless (clusterIP: None): DNS answers with the endpoints, there is no VIP to balance');
    return made;
  }
  const vips: string[] = [];
  ips.forEach((ip, i) => {
    const a = typeof ip === 'string' ? canonicalAddress(ip) : null;
    if (!a || a.address === '0.0.0.0' || a.address === '::') return void issue(`spec.clusterIPs[${i}]`, `must be an IP address, got ${JSON.stringify(ip)} (left out)`);
    if (!vips.includes(a.address)) vips.push(a.address);
  });
  if (vips.length === 0) {
    unserve('no-cluster-ip', ips.length === 0 ? 'no cluster IP allocated yet' : 'no valid cluster IP');
    return made;
  }

  // ports: TCP and UDP served; SCTP and node/LB/external parts listed
  const entries: Entry[] = [];
  const seen = new Map<string, number>();
  (spec.ports ?? []).forEach((sp, i) => {
    const p = `spec.ports[${i}]`;
    if (typeof sp?.port !== 'number' || !Number.isInteger(sp.port) || sp.port < 1 || sp.port > 65535) {
      return void issue(`${p}.port`, `must be a port number 1-65535, got ${JSON.stringify(sp?.port ?? null)} (port left out)`);
    }
    const protocol = modelProtocol(sp.protocol);
    if (!protocol) {
      const what = String(sp.protocol).toUpperCase();
      if (what === 'SCTP') unserve('sctp', `port ${sp.port}/SCTP${sp.name ? ` (${sp.name})` : ''}: the datapath balances TCP and UDP only`);
      else issue(`${p}.protocol`, `must be TCP, UDP or SCTP, got ${JSON.stringify(sp.protocol)} (port left out)`);
      return;
    }
    const k = `${sp.port}/${protocol}`;
    if (seen.has(k)) return void issue(p, `duplicate port ${k}, same as spec.ports[${seen.get(k)}] (left out)`);
    seen.set(k, i);
    entries.push({ index: i, sp, port: sp.port, protocol });
  });
  if (spec.type === 'NodePort' || spec.type === 'LoadBalancer') {
    const nps = (spec.ports ?? []).filter((p) => p?.nodePort).map((p) => `${p.nodePort}/${(p.protocol ?? 'TCP').toUpperCase()}`);
    unserve('node-port', `type ${spec.type}: node ports ${nps.join(', ') || '(none allocated)'} are not served (kube-proxy or the cloud's load balancer serves them); the cluster IP is`);
  }
  if (spec.type === 'LoadBalancer') {
    const ingress = (svc.status?.loadBalancer?.ingress ?? []).map((i) => i.ip ?? i.hostname).filter(Boolean);
    unserve('load-balancer', `load balancer ${ingress.join(', ') || '(no ingress yet)'} is not served; the cluster IP is`);
  }
  if (spec.externalIPs && spec.externalIPs.length > 0) unserve('external-ips', `externalIPs ${spec.externalIPs.join(', ')} are not served; the cluster IP is`);
  if (entries.length === 0) {
    if (!made.unserved.some((u) => u.kind === 'sctp')) unserve('invalid', (spec.ports ?? []).length === 0 ? 'no ports' : 'no valid TCP or UDP port');
    return made;
  }

  // endpoints per entry
  const problems: SliceProblem[] = [];
  const slices = ctx.slices.get(key) ?? NO_SLICES;
  const own = entries.map((e) => portEndpoints(svc, e.sp, slices, ctx.node, problems));
  const reported = new Set<string>();
  for (const pr of problems) {
    const k = `${pr.slice}|${pr.path}`;
    if (reported.has(k)) continue;
    reported.add(k);
    made.issues.push({ object: `EndpointSlice ${namespace}/${pr.slice}`, path: pr.path, message: pr.message });
  }

  // session affinity, algorithm
  const base: Record<string, unknown> = { vips };
  if (spec.sessionAffinity === 'ClientIP') {
    const t = spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? DEFAULT_AFFINITY_SECONDS;
    if (!Number.isInteger(t) || t < 1 || t > MAX_AFFINITY_SECONDS) {
      issue('spec.sessionAffinityConfig.clientIP.timeoutSeconds', `must be 1 to ${MAX_AFFINITY_SECONDS}, got ${JSON.stringify(t)} (the default ${DEFAULT_AFFINITY_SECONDS} is used)`);
      base['affinity'] = { timeoutSeconds: DEFAULT_AFFINITY_SECONDS };
    } else base['affinity'] = { timeoutSeconds: t };
  } else if (spec.sessionAffinity !== undefined && spec.sessionAffinity !== 'None') {
    issue('spec.sessionAffinity', `must be None or ClientIP, got ${JSON.stringify(spec.sessionAffinity)} (None is used)`);
  }

  // the L7 part: HTTPRoutes attached to it and sockmesh.io annotations (groups are extra backends)
  const http = httpFor(svc, key, entries.map((e) => ({ port: e.port, protocol: e.protocol, name: e.sp.name })), ctx);
  made.issues.push(...http.issues);
  if (http.routeKeys.length > 0 || http.status.length > 0) made.http = http;
  Object.assign(base, http.serviceFields);
  const perEntry: ConfigBackend[][] = own.map((eps, i) => [
    ...eps.map(toBackend),
    ...http.groups.flatMap((g) => (g.endpoints[i] ?? []).map((e) => ({ ...toBackend(e), group: g.name }))),
  ]);

  const objs = configObjects(namespace, name, entries, perEntry, base);
  for (const obj of objs) {
    const svcOut = validate(obj, object, made.issues, http.objPaths);
    if (svcOut) made.services.push(svcOut);
    else if (obj['http'] !== undefined || obj['healthCheck'] !== undefined) {
      // Its L7 part was refused (reported above, and in the route status): the VIP is still served at L4, as if no
      // route were attached, rather than not at all.
      const l4 = { ...obj };
      delete l4['http'];
      delete l4['healthCheck'];
      l4['backends'] = (l4['backends'] as ConfigBackend[]).filter((b) => b.group === undefined);
      http.refused = made.issues.at(-1)?.message ?? 'invalid';
      const again = validate(l4, object, made.issues, http.objPaths);
      if (again) made.services.push(again);
      else unserve('invalid', 'refused by the model (see the issues)');
    } else unserve('invalid', 'refused by the model (see the issues)');
  }
  return made;
}

const toBackend = (e: Endpoint): ConfigBackend => ({ address: e.address, port: e.port });

/**
 * The Service validateServices() makes of an L4-only config object whose parts translateService already checked
 * (canonical addresses, ports 1-65535, no duplicate port entry or backend, a DNS-label name), built without
 * re-parsing and re-checking 100,000 addresses: at 10,000 services / 100,000 endpoints that halved a full
 * translation. Undefined when it cannot vouch for the result (an L7 part, an annotation, a limit, a backend that is
 * its own frontend): validateServices() decides then. test/unit/kube-translate.test.ts compares the two.
 */
export function directService(obj: Record<string, unknown>): Service | undefined {
  if (obj['http'] !== undefined || obj['healthCheck'] !== undefined || obj['algorithm'] !== undefined || obj['maglev'] !== undefined) return undefined;
  const vips = obj['vips'] as string[];
  const ports = obj['ports'] as { port: number; protocol: Protocol; targetPort?: number }[];
  const backends = obj['backends'] as { address: string; port?: number }[];
  if (vips.length > MAX_VIPS || ports.length > MAX_PORTS || backends.some((b) => b.port === undefined) !== ports.some((p) => p.targetPort !== undefined)) return undefined;
  const frontends: Frontend[] = [];
  for (const vip of vips) {
    const family: Family = vip.includes(':') ? 6 : 4;
    for (const e of ports) {
      const list: Backend[] = [];
      for (const b of backends) {
        if ((b.address.includes(':') ? 6 : 4) !== family) continue;
        const port = e.targetPort ?? b.port!;
        if (port === e.port && b.address === vip) return undefined; // a loop: validateServices words it
        list.push({ address: b.address, family, port, weight: 1 });
      }
      frontends.push({ vip, family, port: e.port, protocol: e.protocol, backends: list });
    }
  }
  const affinity = obj['affinity'] as { timeoutSeconds: number } | undefined;
  return {
    name: obj['name'] as string,
    algorithm: 'random',
    affinityTimeoutSeconds: affinity?.timeoutSeconds ?? 0,
    maglevTableSize: defaultMaglevTableSize(backends.length),
    frontends,
  };
}

/** validateServices for one config object; ConfigError issues reported against the Service (model paths). */
function validate(obj: Record<string, unknown>, object: string, issues: TranslateIssue[], objPaths: (path: string) => { object: string; path: string } | undefined): Service | undefined {
  const direct = directService(obj);
  if (direct) return direct;
  try {
    return validateServices([obj], SOURCE, NO_OTHERS, { emptyGroupsAllowed: true })[0];
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    for (const i of e.issues) {
      const at = i.path.replace(/^services\[0\]\.?/, '');
      const mapped = objPaths(at);
      issues.push(mapped ? { ...mapped, message: i.message } : { object, path: `(model) ${at}`, message: i.message });
    }
    return undefined;
  }
}

const NO_OTHERS = { names: new Set<string>(), frontends: new Map<string, string>() };

const backendKey = (b: ConfigBackend) => `${b.group ?? ''}|${b.address}|${b.port}`;

/**
 * The config objects of a service: one when every port entry has the same backends (with one port number: backends
 * carry their ports; with several: each entry's backends all share one port, its targetPort), else one per entry.
 */
function configObjects(namespace: string, name: string, entries: Entry[], perEntry: ConfigBackend[][], base: Record<string, unknown>): Record<string, unknown>[] {
  const one = (n: string, ports: unknown[], backends: ConfigBackend[]) => ({ name: n, ...base, ports, backends });
  const numbers = new Set(entries.map((e) => e.port));
  const keySets = perEntry.map((list) => list.map(backendKey).sort().join(','));
  if (numbers.size === 1 && keySets.every((k) => k === keySets[0])) {
    return [one(modelServiceName(namespace, name), entries.map((e) => ({ port: e.port, protocol: e.protocol })), perEntry[0]!)];
  }
  const portOf = perEntry.map((list) => new Set(list.map((b) => b.port)));
  const addrSets = perEntry.map((list) => list.map((b) => `${b.group ?? ''}|${b.address}`).sort().join(','));
  if (portOf.every((s) => s.size <= 1) && addrSets.every((k) => k === addrSets[0])) {
    const ports = entries.map((e, i) => ({ port: e.port, protocol: e.protocol, targetPort: [...portOf[i]!][0] ?? e.port }));
    return [one(modelServiceName(namespace, name), ports, perEntry[0]!.map((b) => (b.group ? { address: b.address, group: b.group } : { address: b.address })) as ConfigBackend[])];
  }
  return entries.map((e, i) => one(modelServiceName(namespace, name, e), [{ port: e.port, protocol: e.protocol }], perEntry[i]!));
}
