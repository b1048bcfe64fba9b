// Digests -> the sockmesh model. Pure: no I/O, no gRPC. The digests of the current state (digest.ts) become the
// plain config object the file source parses, validated by the same validateServices(); ConfigError issues are
// mapped back to the resource and field they came from. ModelBuilder keeps the model up to date listener by listener.
import { frontendKey, MAX_WEIGHT, validateServices } from '../../model/config.js';
import { ConfigError, type Algorithm, type Model, type Service, type Workload } from '../../model/types.js';
import { OWN_LISTENER_NAME, serviceOfCluster } from '../../../xds/sockmesh.js';
import { Journal } from './journal.js';
import type { HcmDigest, HttpRoutes, RouteEntry } from './digest-http.js';
import { EP, sealNotes, type ClusterDigest, type ClusterRef, type EndpointsDigest, type ListenerDigest, type XdsState } from './digest.js';
import { joinErrors, XdsResourceError } from './errors.js';

type Obj = Record<string, any>; // decoded protobuf plain objects (keepCase, longs/enums as strings)

export interface Resolved {
  listener: ListenerDigest;
  clusters: { ref: ClusterRef; cluster: ClusterDigest; endpoints: EndpointsDigest }[];
  notes: string[];
  /** an HTTP listener: its service's `http` part */
  http?: ResolvedHttp;
  /** the health check of its clusters (file schema) */
  healthCheck?: Obj;
}

/** The L7 part of a resolved HTTP listener, in the file schema, ready to be validated with the service. */
interface ResolvedHttp {
  obj: Obj;
  /** cluster name -> backend group (undefined: the default group) */
  groups: Map<string, string | undefined>;
  routes: RouteEntry[];
  /** the cluster the service-wide settings (balancer, breaker, outlier detection) came from */
  policyCluster: string;
  /** what must be equal for two listeners to be one service */
  sig: string;
}

/** Everything a listener needs, from one state; undefined (with the missing names) while it is warming. */
function resolve(state: XdsState, l: ListenerDigest, missing: string[]): Resolved | undefined {
  const notes = [...l.notes];
  let refs = l.clusters;
  let routes: HttpRoutes | undefined = l.http?.inline;
  if (l.routeName !== undefined) {
    const route = state.routes.get(l.routeName);
    if (!route) return void missing.push(`route_configuration '${l.routeName}'`);
    notes.push(...route.notes);
    refs = [...refs, ...route.clusters];
    routes = route.http;
  }
  if (l.http) refs = [...new Map(refs.map((c) => [c.name, c])).values()]; // each cluster once: it is one group
  const out: Resolved['clusters'] = [];
  let complete = true;
  for (const ref of refs) {
    const cluster = state.clusters.get(ref.name);
    if (!cluster) {
      missing.push(`cluster '${ref.name}'`);
      complete = false;
      continue;
    }
    const endpoints = cluster.inline ?? state.endpoints.get(cluster.edsName!);
    if (!endpoints) {
      missing.push(`cluster_load_assignment '${cluster.edsName}'`);
      complete = false;
      continue;
    }
    if (!l.http) {
      if (cluster.http.circuitBreaker) notes.push(`cluster '${cluster.name}': circuit_breakers not applied (HTTP listeners only)`);
      if (cluster.http.outlierDetection) notes.push(`cluster '${cluster.name}': outlier_detection not applied (HTTP listeners only)`);
    }
    notes.push(...cluster.notes, ...endpoints.notes);
    out.push({ ref, cluster, endpoints });
  }
  if (!complete) return undefined;
  const r: Resolved = { listener: l, clusters: out, notes };
  if (out.length > 0) {
    const hc = out[0]!.cluster.http.healthCheck;
    if (hc) r.healthCheck = hc;
    if (out.some((c) => JSON.stringify(c.cluster.http.healthCheck) !== JSON.stringify(hc))) {
      notes.push(`listener '${l.name}': its clusters' health checks differ; cluster '${out[0]!.cluster.name}''s is run for all`);
    }
  }
  if (l.http && routes && out.length > 0) r.http = resolveHttp(l, l.http, routes, out, notes);
  return sealNotes(r);
}

/**
 * An HTTP listener's service-wide L7 settings. Envoy keeps balancer, breakers and outlier detection per cluster, the
 * model per service (applied to each group on its own): the first cluster's are used, and a difference reported.
 * Each cluster is a backend group, named by its sockmesh metadata (own clusters) or after the cluster.
 */
function resolveHttp(l: ListenerDigest, h: HcmDigest, routes: HttpRoutes, clusters: Resolved['clusters'], notes: string[]): ResolvedHttp {
  const what = `listener '${l.name}'`;
  const groups = new Map<string, string | undefined>();
  const byGroup = new Map<string, string>();
  for (const { cluster } of clusters) {
    const g = cluster.http.group ?? dnsLabel(cluster.name);
    const other = byGroup.get(g);
    if (other !== undefined) throw new XdsResourceError(`${what}: cluster '${other}' and cluster '${cluster.name}' are both backend group '${g}'`);
    byGroup.set(g, cluster.name);
    groups.set(cluster.name, g === 'default' ? undefined : g);
  }
  const first = clusters[0]!.cluster;
  const obj: Obj = {};
  if (h.failMode !== undefined) obj['failMode'] = h.failMode;
  if (h.accessLogSample !== undefined) obj['accessLogSample'] = h.accessLogSample;
  if (first.http.balancer) obj['balancer'] = first.http.balancer;
  else notes.push(`cluster '${first.name}': its lb_policy has no HTTP balancer (least-request used)`);
  if (first.http.upstreamProtocol) obj['upstreamProtocol'] = first.http.upstreamProtocol;
  if (first.http.circuitBreaker) obj['circuitBreaker'] = first.http.circuitBreaker;
  if (first.http.outlierDetection) obj['outlierDetection'] = first.http.outlierDetection;
  for (const k of ['balancer', 'upstreamProtocol', 'circuitBreaker', 'outlierDetection'] as const) {
    const want = JSON.stringify(first.http[k]);
    const odd = clusters.find((c) => JSON.stringify(c.cluster.http[k]) !== want);
    if (odd) notes.push(`${what}: cluster '${odd.cluster.name}' has another ${k} than cluster '${first.name}', whose is used for every group`);
  }
  if (h.authz) obj['authz'] = h.authz;
  if (h.forwarded) obj['forwarded'] = h.forwarded;
  const byName = new Map(clusters.map((c) => [c.cluster.name, c.cluster]));
  obj['routes'] = routes.routes.map((e) => {
    const route: Obj = { ...e.obj, split: e.splits.map((s) => ({ group: groups.get(s.cluster) ?? 'default', weight: s.weight })) };
    if (route['retries'] && !route['retries'].budget && !e.defaultBudget) {
      // Envoy keeps the retry budget with a cluster's breaker, where it overrides max_retries; without one only
      // max_retries limits retries: a budget of max_retries concurrent retries and no percentage is exactly that (a
      // route's budget replaces its group's maxRetries).
      const c = byName.get(e.splits[0]!.cluster)!.http;
      route['retries'] = { ...route['retries'], budget: c.budget ?? { percent: 0, minRetryConcurrency: c.circuitBreaker?.['maxRetries'] ?? 3 } };
    }
    return route;
  });
  return { obj, groups, routes: routes.routes, policyCluster: first.name, sig: JSON.stringify(obj) };
}

/** A DNS label from any name: lowercase, other characters -> '-', at most 63 characters. */
export function dnsLabel(name: string): string {
  const s = name.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+/, '').slice(0, 63).replace(/-+$/, '');
  return s || 'service';
}

interface Frontend { r: Resolved; vip: string; port: number; protocol: 'tcp' | 'udp'; backends: Backend[] }
/** `cla` and `field` say where a backend came from (for error messages; joined only when there is an error). */
interface Backend { address: string; port: number; weight: number; group?: string; cla: string; p: number; q: number }

/** The largest endpoint weight. A loop, not Math.max(...spread): 150k arguments overflow the stack. */
function maxWeight(e: EndpointsDigest): number {
  let max = 0;
  for (let i = 1; i < e.nums.length; i += EP) if (e.nums[i]! > max) max = e.nums[i]!;
  return max;
}

/** Endpoint weights scaled into the model's range (Envoy's go to 2^32-1, ours to MAX_WEIGHT). */
function scaled(e: EndpointsDigest, group?: string): Backend[] {
  const max = maxWeight(e);
  const scale = max > MAX_WEIGHT ? MAX_WEIGHT / max : 1;
  const out: Backend[] = new Array(e.addrs.length);
  for (let i = 0; i < e.addrs.length; i++) {
    const n = e.nums, at = EP * i, w = n[at + 1]!;
    const b: Backend = { address: e.addrs[i]!, port: n[at]!, weight: w === 0 ? 0 : Math.max(1, Math.round(w * scale)), cla: e.name, p: n[at + 2]!, q: n[at + 3]! };
    if (group !== undefined) b.group = group;
    out[i] = b;
  }
  return out;
}

/** Backends of a resolved listener: endpoint weights, times cluster shares when several clusters are combined. */
function backendsOf(r: Resolved): Backend[] {
  // HTTP: each cluster is a backend group, its endpoint weights as they are (routes split between the groups).
  if (r.http) return r.clusters.flatMap((c) => scaled(c.endpoints, r.http!.groups.get(c.cluster.name)));
  if (r.clusters.length === 1) return scaled(r.clusters[0]!.endpoints);
  const total = r.clusters.reduce((s, c) => s + c.ref.weight, 0);
  const raw = new Map<string, Backend>();
  for (const { ref, endpoints: e } of r.clusters) {
    const share = total > 0 ? ref.weight / total : 1 / r.clusters.length;
    let sum = 0;
    for (let i = 1; i < e.nums.length; i += EP) sum += e.nums[i]!;
    for (let i = 0; i < e.addrs.length; i++) {
      const at = EP * i, port = e.nums[at]!, weight = e.nums[at + 1]!;
      const key = `${e.addrs[i]}|${port}`;
      const w = sum > 0 ? (share * weight) / sum : 0;
      const seen = raw.get(key);
      if (seen) seen.weight += w;
      else raw.set(key, { address: e.addrs[i]!, port, weight: w, cla: e.name, p: e.nums[at + 2]!, q: e.nums[at + 3]! });
    }
  }
  let max = 0;
  for (const b of raw.values()) if (b.weight > max) max = b.weight;
  return [...raw.values()].map((b) => ({ ...b, weight: b.weight === 0 ? 0 : Math.max(1, Math.round((b.weight * MAX_WEIGHT) / max)) }));
}

/** Algorithm, affinity and table size of a listener's clusters (several clusters: weighted unless all agree). */
function policyOf(r: Resolved, notes: string[]): { algorithm: Algorithm; affinity?: number; tableSize?: number; origin: string } {
  const first = r.clusters[0]!.cluster;
  const origin = `cluster '${first.name}'`;
  // HTTP: the kernel's algorithm only matters while the proxy is down (fail open); the first cluster's.
  if (r.clusters.length === 1 || r.http) return { algorithm: first.algorithm, affinity: first.affinitySeconds, tableSize: first.tableSize, origin };
  const algos = new Set(r.clusters.map((c) => c.cluster.algorithm));
  const algorithm: Algorithm = algos.size === 1 && first.algorithm === 'maglev' ? 'maglev' : 'weighted';
  if (algos.size > 1 || !algos.has(algorithm)) notes.push(`listener '${r.listener.name}': clusters combined with weighted balancing (their lb_policy differs or ignores weights)`);
  const affs = new Set(r.clusters.map((c) => c.cluster.affinitySeconds));
  if (affs.size > 1) notes.push(`listener '${r.listener.name}': clusters disagree on affinity; cluster '${first.name}' used`);
  return { algorithm, affinity: first.affinitySeconds, tableSize: r.clusters.find((c) => c.cluster.tableSize)?.cluster.tableSize, origin };
}

type ServiceObj = Record<string, unknown>;

/** Listeners -> services: our own listeners (vip:port/proto -> one cluster) by cluster, with a ':port' suffix dropped
 * so that one service's port entries come back together; foreign listeners one service each. */
function groupOf(r: Resolved): { key: string; base: string } {
  const l = r.listener;
  // Own HTTP listeners name their service in metadata (they use several clusters: one per backend group).
  if (l.http?.service) return { key: `c:${l.http.service}`, base: l.http.service };
  const own = OWN_LISTENER_NAME.test(l.name) && r.clusters.length === 1;
  const base = own ? serviceOfCluster(r.clusters[0]!.ref.name) : l.name;
  return { key: own ? `c:${base}` : `l:${base}`, base };
}

// A group is kept per service (10,000 of them): small arrays and shared empty values rather than a Set and a Map each
// (~400 bytes a group).
interface Group {
  /** Listener names (resolved or held back) that make this group; replaced, never changed in place. */
  members: readonly string[];
  /** Its services (one, or one per frontend when the schema cannot say it as one), validated. */
  services: Service[];
  /**
   * Wanted name -> name given when they differ (a -N suffix when the wanted one was taken): a service keeps its name
   * across updates. Replaced, never changed in place (NO_NAMES when empty).
   */
  names: ReadonlyMap<string, string>;
  /** Notes from combining the listeners' clusters. */
  notes: readonly string[];
}

const NO_NAMES: ReadonlyMap<string, string> = new Map();
const NO_NOTES: readonly string[] = Object.freeze([]);

const ANY_NAME = { has: (_: string) => true };

const byListenerName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

export interface ModelUpdate {
  /** The validated model; undefined when `error` is set. The same object as before when nothing changed. */
  model?: Model;
  /** Names of the services added, changed or removed by this update. */
  changed: Set<string>;
  /** A ConfigError mapped back to resources and fields (the NACK message). */
  error?: string;
  /** Listeners left out (or kept at their last resources) because something they reference has not arrived yet. */
  warming: string[];
  unsupported: string[];
}

/**
 * The model of an xDS state, kept up to date listener by listener. update() re-resolves only the listeners it is
 * told about, rebuilds and re-validates only the services those listeners make (validateServices, against the names
 * and frontends of the others), and reuses every other Service object as it is. Each write goes through the Journal
 * passed in, so a rejected update is undone by its rollback().
 *
 * A listener whose references are not all present is warming: it keeps the resources it was last built with, if
 * any, otherwise it is left out.
 */
export class ModelBuilder {
  private readonly resolved = new Map<string, Resolved>();
  private readonly warmingBy = new Map<string, string>();
  /** Per listener, its notes as one string (to see when unsupported must be recomputed). */
  private readonly notesBy = new Map<string, string>();
  /** L4 listeners left out because they resolve to no cluster, with their notes (reported in unsupported). */
  private readonly skipped = new Map<string, string[]>();
  private readonly groupKey = new Map<string, string>();
  private readonly groups = new Map<string, Group>();
  /** Service name -> group key, and the frontend index, of the services in the model (what others are checked against). */
  private readonly names = new Map<string, string>();
  private readonly frontends = new Map<string, string>();
  /** The model's services and where each group's start in it. */
  private readonly cur: { model: Model; groupAt: Map<string, number>; warming: string[]; unsupported: string[]; workloads: Workload[] } = {
    model: { services: [] }, groupAt: new Map(), warming: [], unsupported: [], workloads: [],
  };
  /** Per HTTP listener, the workloads its metadata defines (as JSON, to see a change cheaply). */
  private readonly workloadsBy = new Map<string, string>();

  get model(): Model {
    return this.cur.model;
  }

  /** The applied version of a listener while it warms (what its references must be held for), else undefined. */
  held(name: string): ListenerDigest | undefined {
    return this.warmingBy.has(name) ? this.resolved.get(name)?.listener : undefined;
  }

  /** Rebuild what `listeners` (names; added, changed, removed, or whose references changed) make of `state`. */
  update(state: XdsState, listeners: Iterable<string>, j: Journal): ModelUpdate {
    let structural = false;
    let workloadsChanged = false;
    let notesChanged = false;
    let warmingChanged = false;
    const touched = new Set<string>();
    for (const name of new Set(listeners)) {
      const l = state.listeners.get(name);
      let r: Resolved | undefined;
      let wait: string | undefined;
      let notes = '';
      let skip: string[] | undefined;
      if (l && l.kind !== 'l4') {
        if (l.notes.length > 0) notes = JSON.stringify(['x', l.notes]);
      } else if (l) {
        const missing: string[] = [];
        try {
          r = resolve(state, l, missing);
        } catch (e) {
          if (!(e instanceof XdsResourceError)) throw e;
          return { error: e.message, changed: new Set(), warming: [], unsupported: [] };
        }
        if (!r) {
          // Warming: the applied version stays, re-resolved against this state so that updates to what it
          // references (held subscribed, see References.hold) still apply; as it was if that fails now.
          const old = this.resolved.get(name);
          r = old;
          if (old) {
            try {
              r = resolve(state, old.listener, []) ?? old;
            } catch (e) {
              if (!(e instanceof XdsResourceError)) throw e;
            }
          }
          wait = `listener '${name}' waits for ${[...new Set(missing)].join(', ')}`;
        }
        if (r && (r.clusters.length === 0 || (r.http && r.http.routes.length === 0))) {
          // Its routes are all redirects / direct responses (or name no cluster): nothing to balance at L4. Skipped
          // and reported rather than NACKed: the listener is valid xDS, and rejecting it would block every other
          // listener in the same LDS response.
          skip = [...r.notes, `listener '${name}': its routes name no cluster (skipped)`];
          r = undefined;
        }
        if (r && r.notes.length > 0) notes = JSON.stringify(['r', r.notes]);
        if (skip) notes = JSON.stringify(['s', skip]);
      }
      if (r) j.set(this.resolved, name, r);
      else j.delete(this.resolved, name);
      const wl = r?.listener.http?.workloads.length ? JSON.stringify(r.listener.http.workloads) : undefined;
      if (this.workloadsBy.get(name) !== wl) {
        workloadsChanged = true;
        if (wl === undefined) j.delete(this.workloadsBy, name);
        else j.set(this.workloadsBy, name, wl);
      }
      if (skip) j.set(this.skipped, name, skip);
      else j.delete(this.skipped, name);
      if (this.warmingBy.get(name) !== wait) {
        warmingChanged = true;
        if (wait === undefined) j.delete(this.warmingBy, name);
        else j.set(this.warmingBy, name, wait);
      }
      if ((this.notesBy.get(name) ?? '') !== notes) {
        notesChanged = true;
        if (notes) j.set(this.notesBy, name, notes);
        else j.delete(this.notesBy, name);
      }
      const oldKey = this.groupKey.get(name);
      const newKey = r ? groupOf(r).key : undefined;
      if (oldKey !== newKey) {
        structural = true;
        if (oldKey !== undefined) {
          const was = this.groups.get(oldKey)!;
          j.assign(was, 'members', was.members.filter((m) => m !== name));
        }
        if (newKey !== undefined) {
          let g = this.groups.get(newKey);
          if (!g) j.set(this.groups, newKey, (g = { members: [], services: [], names: NO_NAMES, notes: NO_NOTES }));
          if (!g.members.includes(name)) j.assign(g, 'members', [...g.members, name]);
          j.set(this.groupKey, name, newKey);
        } else j.delete(this.groupKey, name);
      }
      if (oldKey !== undefined) touched.add(oldKey);
      if (newKey !== undefined) touched.add(newKey);
    }

    // The touched groups, in model order (by their first listener), rebuilt into service objects.
    const firstOf = (g: Group) => [...g.members].sort(byListenerName)[0]!;
    const order = [...touched].map((key) => ({ key, g: this.groups.get(key)! })).map((x) => ({ ...x, first: x.g.members.length ? firstOf(x.g) : '' }));
    order.sort((a, b) => byListenerName(a.first, b.first));
    const taken = new Set<string>();
    const isTaken = (n: string) => taken.has(n) || (this.names.has(n) && !touched.has(this.names.get(n)!));
    const give = (g: Group, wanted: string): string => {
      const before = g.names.get(wanted);
      let n = before !== undefined && !isTaken(before) ? before : wanted;
      for (let k = 2; isTaken(n); k++) n = `${wanted.slice(0, 63 - String(k).length - 1).replace(/-+$/, '')}-${k}`;
      taken.add(n);
      return n;
    };
    const objs: ServiceObj[] = [];
    const made: { fronts: Frontend[]; m: Merged; origin: string }[] = [];
    const built: { key: string; g: Group; from: number; count: number; names: Map<string, string>; notes: string[] }[] = [];
    for (const { key, g } of order) {
      const from = objs.length;
      const names = new Map<string, string>();
      const notes: string[] = [];
      if (g.members.length > 0) {
        const fronts: Frontend[] = [...g.members].sort(byListenerName).map((name) => {
          const r = this.resolved.get(name)!;
          return { r, vip: r.listener.vip!, port: r.listener.port!, protocol: r.listener.protocol!, backends: backendsOf(r) };
        });
        const base = dnsLabel(groupOf(fronts[0]!.r).base);
        const merged = mergeFronts(fronts);
        if (merged) {
          const n = give(g, base);
          names.set(base, n);
          objs.push(serviceObj(n, fronts, merged, notes, made));
        } else {
          for (const f of fronts) {
            const wanted = dnsLabel(`${base}-${f.port}-${f.protocol}`);
            const n = give(g, wanted);
            names.set(wanted, n);
            objs.push(serviceObj(n, [f], mergeFronts([f])!, notes, made));
          }
        }
      }
      if (JSON.stringify(notes) !== JSON.stringify(g.notes)) notesChanged = true;
      built.push({ key, g, from, count: objs.length - from, names, notes });
    }

    // Validate the rebuilt services against all the others: take the touched groups' names and frontends out of the
    // indexes first (the journal puts them back if this fails).
    const changed = new Set<string>();
    const old = new Map<string, Service>();
    for (const { g } of built) {
      for (const s of g.services) {
        old.set(s.name, s);
        j.delete(this.names, s.name);
        for (const f of s.frontends) j.delete(this.frontends, frontendKey(f.vip, f.port, f.protocol));
      }
    }
    let services: Service[];
    try {
      // Workload names were checked against the listener's own metadata when it was digested; a cluster with no
      // endpoints (all unhealthy) is a valid, empty group.
      services = validateServices(objs, 'xds', { names: this.names, frontends: this.frontends, workloads: ANY_NAME }, { emptyGroupsAllowed: true });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      const origins = made.flatMap((x, i) => originsOf(`services[${i}]`, x.fronts, x.m, x.origin));
      const lines = e.issues.map((i) => mapIssue(i.path, i.message, origins));
      return { error: joinErrors([...new Set(lines)]), changed, warming: [], unsupported: [] };
    }
    for (const { key, g, from, count, names, notes } of built) {
      const mine = services.slice(from, from + count);
      if (mine.length !== g.services.length) structural = true;
      for (const s of mine) {
        const before = old.get(s.name);
        if (!before || JSON.stringify(before) !== JSON.stringify(s)) changed.add(s.name);
        old.delete(s.name);
        j.set(this.names, s.name, key);
        for (const f of s.frontends) j.set(this.frontends, frontendKey(f.vip, f.port, f.protocol), s.name);
      }
      j.assign(g, 'services', mine);
      for (const [wanted, given] of names) if (wanted === given) names.delete(wanted); // the default: not kept
      j.assign(g, 'names', names.size > 0 ? names : NO_NAMES);
      j.assign(g, 'notes', notes.length > 0 ? notes : NO_NOTES);
      if (g.members.length === 0) j.delete(this.groups, key);
    }
    for (const name of old.keys()) changed.add(name);

    if (workloadsChanged) {
      // The union of the workloads HTTP listeners carry; one name must mean the same cgroups everywhere.
      const all = new Map<string, { json: string; w: Workload; by: string }>();
      for (const [listener, json] of this.workloadsBy) {
        for (const w of JSON.parse(json) as Workload[]) {
          const one = JSON.stringify(w.cgroups);
          const seen = all.get(w.name);
          if (seen && seen.json !== one) {
            return { error: `listener '${listener}': workload '${w.name}' has other cgroups than in listener '${seen.by}'`, changed, warming: [], unsupported: [] };
          }
          if (!seen) all.set(w.name, { json: one, w, by: listener });
        }
      }
      j.assign(this.cur, 'workloads', [...all.values()].map((x) => x.w).sort((a, b) => byListenerName(a.name, b.name)));
      // the services whose listeners carry workloads are the ones whose authorization may have changed
      for (const { g } of built) for (const sv of g.services) changed.add(sv.name);
    }

    // The model: the touched groups' services replaced in place, or, when groups came, went or changed size, the
    // whole order again (listeners sorted by name, each group where its first listener is).
    let model = this.cur.model;
    const withWorkloads = (services: Service[]): Model => (this.cur.workloads.length > 0 ? { services, workloads: this.cur.workloads } : { services });
    if (structural) {
      const list: Service[] = [];
      const groupAt = new Map<string, number>();
      for (const name of [...this.groupKey.keys()].sort(byListenerName)) {
        const key = this.groupKey.get(name)!;
        if (groupAt.has(key)) continue;
        groupAt.set(key, list.length);
        list.push(...this.groups.get(key)!.services);
      }
      model = withWorkloads(list);
      j.assign(this.cur, 'groupAt', groupAt);
    } else if (built.length > 0) {
      const list = model.services.slice();
      for (const { key, g } of built) {
        const at = this.cur.groupAt.get(key)!;
        g.services.forEach((s, k) => (list[at + k] = s));
      }
      model = withWorkloads(list);
    } else if (workloadsChanged) model = withWorkloads(model.services);
    j.assign(this.cur, 'model', model);
    if (warmingChanged) {
      j.assign(this.cur, 'warming', [...this.warmingBy].sort(([a], [b]) => byListenerName(a, b)).map(([, w]) => w));
    }
    if (notesChanged) j.assign(this.cur, 'unsupported', this.unsupported(state));
    return { model, changed, warming: this.cur.warming, unsupported: this.cur.unsupported };
  }

  /** What the model leaves out, in the order a reader meets it: listener notes, then resolved resources, then groups. */
  private unsupported(state: XdsState): string[] {
    const notes: string[] = [];
    const names = [...state.listeners.keys()].sort(byListenerName);
    for (const name of names) {
      const l = state.listeners.get(name)!;
      if (l.kind !== 'l4') notes.push(...l.notes);
      else notes.push(...(this.skipped.get(name) ?? []));
    }
    for (const name of [...this.resolved.keys()].sort(byListenerName)) notes.push(...this.resolved.get(name)!.notes);
    for (const key of this.cur.groupAt.keys()) notes.push(...(this.groups.get(key)?.notes ?? []));
    return [...new Set(notes)];
  }
}

export interface BuildResult {
  model?: Model;
  error?: string;
  warming: string[];
  unsupported: string[];
}

/** The whole model of a state at once (what ModelBuilder keeps up to date). */
export function buildModel(state: XdsState): BuildResult {
  const r = new ModelBuilder().update(state, state.listeners.keys(), new Journal());
  return { model: r.model, error: r.error, warming: r.warming, unsupported: r.unsupported };
}

interface Merged { vips: string[]; ports: { port: number; protocol: string; targetPort?: number }[]; backends: Backend[] }

/**
 * One service from several frontends when the config schema can say it: every VIP with every port entry, the same
 * backends (address and weight) for all, and either one port number or a uniform backend port per entry (targetPort).
 */
function mergeFronts(fronts: Frontend[]): Merged | undefined {
  if (fronts.length === 1) {
    const f = fronts[0]!; // what the general case below gives for one frontend, without its string signatures
    return { vips: [f.vip], ports: [{ port: f.port, protocol: f.protocol }], backends: f.backends };
  }
  const vips = [...new Set(fronts.map((f) => f.vip))];
  const entries = [...new Map(fronts.map((f) => [`${f.port}/${f.protocol}`, f])).values()].sort((a, b) => a.port - b.port || (a.protocol < b.protocol ? -1 : 1));
  if (vips.length * entries.length !== fronts.length) return undefined;
  const have = new Set(fronts.map((f) => `${f.vip}|${f.port}/${f.protocol}`));
  if (have.size !== fronts.length) return undefined; // duplicates: leave them for validation to report
  const sig = (f: Frontend, withPort: boolean) => f.backends.map((b) => `${b.address}|${withPort ? b.port : ''}|${b.weight}|${b.group ?? ''}`).join(',');
  const pol = (f: Frontend) =>
    JSON.stringify(f.r.clusters.map((c) => [c.ref.weight, c.cluster.algorithm, c.cluster.affinitySeconds, c.cluster.tableSize])) +
    (f.r.http?.sig ?? '') + JSON.stringify(f.r.healthCheck ?? null);
  if (fronts.some((f) => pol(f) !== pol(fronts[0]!))) return undefined;
  const multiPort = new Set(entries.map((e) => e.port)).size > 1;
  if (!multiPort) {
    if (fronts.some((f) => sig(f, true) !== sig(fronts[0]!, true))) return undefined;
    return { vips, ports: entries.map((e) => ({ port: e.port, protocol: e.protocol })), backends: fronts[0]!.backends };
  }
  if (fronts.some((f) => sig(f, false) !== sig(fronts[0]!, false))) return undefined;
  const ports: Merged['ports'] = [];
  for (const e of entries) {
    const bports = new Set(e.backends.map((b) => b.port));
    if (bports.size > 1) return undefined;
    ports.push({ port: e.port, protocol: e.protocol, targetPort: bports.size === 1 ? [...bports][0]! : e.port });
  }
  return { vips, ports, backends: fronts[0]!.backends.map((b) => ({ ...b, port: 0 })) };
}

interface Origin { path: string; resource: string; fields?: Record<string, string> }

function serviceObj(name: string, fronts: Frontend[], m: Merged, notes: string[], made: { fronts: Frontend[]; m: Merged; origin: string }[]): ServiceObj {
  const pol = policyOf(fronts[0]!.r, notes);
  made.push({ fronts, m, origin: pol.origin });
  const svc: ServiceObj = {
    name,
    vips: m.vips,
    ports: m.ports,
    algorithm: pol.algorithm,
    backends: m.backends.map((b) => {
      const o: ServiceObj = b.port ? { address: b.address, port: b.port, weight: b.weight } : { address: b.address, weight: b.weight };
      if (b.group !== undefined) o['group'] = b.group;
      return o;
    }),
  };
  const r = fronts[0]!.r;
  if (r.http) svc['http'] = r.http.obj;
  if (r.healthCheck) svc['healthCheck'] = r.healthCheck;
  if (pol.affinity !== undefined && pol.affinity > 0) svc['affinity'] = { timeoutSeconds: pol.affinity };
  if (pol.tableSize !== undefined && pol.algorithm === 'maglev') svc['maglev'] = { tableSize: pol.tableSize };
  return svc;
}

/** Where each field of a service object came from, to name the resource and field in a NACK. */
function originsOf(path: string, fronts: Frontend[], m: Merged, polOrigin: string): Origin[] {
  const origins: Origin[] = [];
  const r = fronts[0]!.r;
  const lname = (vip: string) => fronts.find((f) => f.vip === vip)!.r.listener.name;
  origins.push({ path, resource: `listener '${r.listener.name}'` });
  m.vips.forEach((v, k) => origins.push({ path: `${path}.vips[${k}]`, resource: `listener '${lname(v)}': address.socket_address.address` }));
  m.ports.forEach((p, k) => {
    const f = fronts.find((x) => x.port === p.port && x.protocol === p.protocol)!;
    origins.push({ path: `${path}.ports[${k}]`, resource: `listener '${f.r.listener.name}': address.socket_address` });
  });
  origins.push({ path: `${path}.maglev`, resource: `${polOrigin}: maglev_lb_config`, fields: { tableSize: 'table_size' } });
  origins.push({ path: `${path}.affinity`, resource: `${polOrigin}: metadata.filter_metadata.sockmesh`, fields: { timeoutSeconds: 'affinity_timeout_seconds' } });
  const h = r.http;
  if (h) {
    origins.push({ path: `${path}.http`, resource: `listener '${r.listener.name}': HttpConnectionManager` });
    origins.push({ path: `${path}.http.authz`, resource: `listener '${r.listener.name}': HTTP RBAC filters` });
    origins.push({ path: `${path}.http.upstreamProtocol`, resource: `cluster '${h.policyCluster}': typed_extension_protocol_options` });
    origins.push({ path: `${path}.http.circuitBreaker`, resource: `cluster '${h.policyCluster}': circuit_breakers.thresholds` });
    origins.push({ path: `${path}.http.outlierDetection`, resource: `cluster '${h.policyCluster}': outlier_detection` });
    h.routes.forEach((e, k) => origins.push({ path: `${path}.http.routes[${k}]`, resource: e.origin }));
  }
  if (r.healthCheck) origins.push({ path: `${path}.healthCheck`, resource: `cluster '${r.clusters[0]!.cluster.name}': health_checks[0]` });
  m.backends.forEach((b, j) =>
    origins.push({
      path: `${path}.backends[${j}]`, resource: `cluster_load_assignment '${b.cla}': endpoints[${b.p}].lb_endpoints[${b.q}]`,
      fields: { address: 'endpoint.address.socket_address.address', port: 'endpoint.address.socket_address.port_value', weight: 'load_balancing_weight' },
    }),
  );
  return origins;
}

/** A model validation issue -> "resource 'name': field: message". */
function mapIssue(path: string, message: string, origins: Origin[]): string {
  let best: Origin | undefined;
  for (const o of origins) {
    if ((path === o.path || path.startsWith(`${o.path}.`) || path.startsWith(`${o.path}[`)) && (!best || o.path.length > best.path.length)) best = o;
  }
  if (!best) return `${path}: ${message}`;
  const rest = path.slice(best.path.length).replace(/^\./, '');
  const field = rest && best.fields?.[rest] ? `.${best.fields[rest]}` : rest ? ` (${rest})` : '';
  return `${best.resource}${field}: ${message}`;
}
