// The Kubernetes source: the agent's desired state from the API server, beside the file and xDS sources.
//
// Two modes (agent/main.ts's flags):
// - direct (`--kubernetes`): the agent watches Services, EndpointSlices and HTTPRoutes cluster-wide, its own Node
//   (for its zone) and its own pods, and translates them itself for its node (ClusterTranslator with scope = this
//   node): for small clusters, where N agents watching every EndpointSlice is no load worth a control plane.
// - pods (`--xds --kube-pods`): the services come from the control plane over xDS; the agent watches only its own
//   node's pods (fieldSelector spec.nodeName=<node>), for the fast path's local pods (the model, workloads included,
//   comes from the control plane). In direct mode the pods are also the model's workloads (withWorkloads).
//
// As the other sources: a batch is translated and handed to the one apply transaction; what the kernel or the proxy
// refuses is rejected whole and the last good model stays. Objects the translation cannot use are left out one by one
// (reported as issues, meshctl services lists what is not served), never the whole cluster.
//
// Static stability: while the API server is unreachable the reflectors keep their stores and report nothing, so
// nothing is applied and the kernel keeps what it has; the status says since when. The last applied model is also
// kept in <run dir>/kubernetes-model.json: an agent restarted while the API server is down starts from it (the
// kernel adopted from the pins already holds it: the L7 proxy needs it too), and the first sync replaces it.
import { readFileSync } from 'node:fs';
import type { Logger } from '../observe/log.js';
import type { Model, Service, Workload } from '../model/types.js';
import type { TranslateIssue, Unserved } from '../../kube/translate.js';
import { ClusterTranslator } from '../../kube/translate-live.js';
import { ModelFileWriter } from '../../kube/modelfile.js';
import { translatePods, type CgroupDriver, type PodsResult } from '../../kube/pods.js';
export { kubeletCgroups, type CgroupDriver } from '../../kube/pods.js';
import type { KEndpointSlice, KHTTPRoute, KNode, KPod, KService } from '../../kube/types.js';
import { ClusterWatch, healthLine, RouteStatusWriter, viewChanges, type ClusterHealth, type KubeAccess, type ReflectorLike, type SyncBatch, type WatchKind } from '../../kube/watch.js';

export type { ClusterHealth, KubeAccess, TranslateIssue, Unserved };

/** A pod on this node as the fast path and meshctl see it (identity/pods.ts's LocalPod). */
export interface KubeLocalPod {
  id: string;
  name: string;
  addresses: string[];
}

export interface KubeSourceOptions {
  mode: 'direct' | 'pods';
  /** this node's name (--node-id): the pods' spec.nodeName, the scope of Local and PreferClose */
  nodeName: string;
  trustDomain: string;
  /** where the kubelet puts pod cgroups (kube/pods.ts kubeletCgroups); default systemd under the mount's root */
  kubelet?: { driver: CgroupDriver; cgroupRoot: string };
  access: KubeAccess;
  log: Logger;
  /** apply a model (direct mode): null when in force, else why not (the last good model stays) */
  apply?(model: Model, changed?: ReadonlySet<string>): string | null;
  /** this node's pods changed: their addresses (LocalPods) */
  onPods?(pods: KubeLocalPod[]): void;
  /** pods mode: this node's pods as workloads changed (the agent applies the control plane's model again with them) */
  onWorkloads?(): void;
  /** where the last applied model is kept (direct mode); absent = nowhere */
  cacheFile?: string;
  debounceMs?: number;
  maxDelayMs?: number;
}

/** The Kubernetes source as meshctl status shows it (GET /v1/status `kubernetes`). */
export interface KubeSourceStatus {
  mode: 'direct' | 'pods';
  node: string;
  /** "unreachable since <time> (why)", "connected since <time>" */
  summary: string;
  health: ClusterHealth;
  /** services not served (headless, ExternalName, NodePort parts, ...): the list is GET /v1/kubernetes */
  unserved: number;
  issues: number;
  /** the last batch's translation: services in the model, how long it took */
  lastTranslate: { at: string; ms: number; services: number; changed: number; relist: boolean } | null;
  /** why the last batch was not applied (null: it was) */
  lastError: string | null;
  /** the model applied at start came from the cache file (the API server not synced yet) */
  fromCache: boolean;
  routeStatus: { writes: number; failures: number };
}

/** GET /v1/kubernetes: the status and the lists. */
export interface KubeReport {
  status: KubeSourceStatus;
  unserved: Unserved[];
  /** at most MAX_REPORTED_ISSUES */
  issues: TranslateIssue[];
}

export const MAX_REPORTED_ISSUES = 200;
/** The cache file is rewritten at most this often (a busy cluster changes every few milliseconds). */
const CACHE_WRITE_MS = 1000;

const CACHE_VERSION = 1;

/** The last applied model of a previous agent, if the cache file holds one for this node. */
export function readModelCache(file: string, nodeName: string): Model | undefined {
  let data: { version?: number; node?: string; model?: Model };
  try {
    data = JSON.parse(readFileSync(file, 'utf8')) as typeof data;
  } catch {
    return undefined;
  }
  if (data.version !== CACHE_VERSION || data.node !== nodeName || !data.model || !Array.isArray(data.model.services)) return undefined;
  return data.model;
}

/** The pods of this node with addresses (hostNetwork pods have the node's, known anyway; finished pods none). */
export function localPods(pods: Iterable<KPod>): KubeLocalPod[] {
  const out: KubeLocalPod[] = [];
  for (const p of pods) {
    if (p.spec?.hostNetwork || p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' || p.metadata.deletionTimestamp) continue;
    const ips = (p.status?.podIPs ?? []).map((x) => x.ip).filter((ip): ip is string => typeof ip === 'string' && ip !== '');
    if (ips.length === 0 && p.status?.podIP) ips.push(p.status.podIP);
    if (ips.length === 0) continue;
    out.push({ id: p.metadata.uid ?? `${p.metadata.namespace}/${p.metadata.name}`, name: `${p.metadata.namespace}/${p.metadata.name}`, addresses: ips });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/** Services of `next` added or changed since `prev` (by identity: the translation returns unchanged ones as they were), and removed. */
export function changedServices(prev: readonly Service[], next: readonly Service[]): Set<string> {
  // Both are in the same (namespace/name) order and mostly the same objects: only the stretch between the common
  // head and tail is compared by name (a Map of 10,000 services per EndpointSlice change was garbage V8 kept).
  let head = 0;
  while (head < prev.length && head < next.length && prev[head] === next[head]) head++;
  let tail = 0;
  while (tail < prev.length - head && tail < next.length - head && prev[prev.length - 1 - tail] === next[next.length - 1 - tail]) tail++;
  prev = prev.slice(head, prev.length - tail);
  next = next.slice(head, next.length - tail);
  const before = new Map(prev.map((s) => [s.name, s]));
  const out = new Set<string>();
  for (const s of next) {
    if (before.get(s.name) !== s) out.add(s.name);
    before.delete(s.name);
  }
  for (const name of before.keys()) out.add(name);
  return out;
}

export class KubeSource {
  readonly watch: ClusterWatch;
  private readonly routeWriter?: RouteStatusWriter;
  /** this node's translation, kept up to date from each batch's changes (kube/translate-live.ts) */
  private readonly translator: ClusterTranslator;
  private applied?: Model;
  /** the last apply failed: the next one goes in full */
  private failed = false;
  private unserved: Unserved[] = [];
  private issues: TranslateIssue[] = [];
  private lastTranslate: KubeSourceStatus['lastTranslate'] = null;
  private lastError: string | null = null;
  /** this node's pods as workloads (identities, cgroups), as of the last batch that changed pods */
  private pods: PodsResult = { pods: [], workloads: [], identities: new Map(), issues: [] };
  private fromCache = false;
  private cacheTimer?: NodeJS.Timeout;
  private cacheDue = false;
  private readonly cacheWriter = new ModelFileWriter();
  /** route status writes in flight (tests wait for them) */
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly o: KubeSourceOptions) {
    this.translator = new ClusterTranslator({ nodeName: o.nodeName });
    const node = `metadata.name=${o.nodeName}`;
    const pods = `spec.nodeName=${o.nodeName}`;
    const reflectors: Partial<Record<WatchKind, ReflectorLike>> = o.mode === 'direct'
      ? {
        services: o.access.reflect('services', {}),
        endpointslices: o.access.reflect('endpointslices', {}),
        httproutes: o.access.reflect('httproutes', {}),
        // only this node: its zone label is all the translation reads (PreferClose)
        nodes: o.access.reflect('nodes', { fieldSelector: node }),
        pods: o.access.reflect('pods', { fieldSelector: pods }),
      }
      : { pods: o.access.reflect('pods', { fieldSelector: pods }) };
    this.watch = new ClusterWatch({
      reflectors, debounceMs: o.debounceMs, maxDelayMs: o.maxDelayMs,
      onSync: (b) => this.sync(b),
      onHealth: (h) => {
        if (h.connected) o.log.info({ since: h.since }, 'kubernetes: the API server is reachable again');
        else o.log.warn({ since: h.since, error: h.lastError }, 'kubernetes: the API server is unreachable; everything stays as it is');
      },
    });
    if (o.mode === 'direct' && o.access.patchRouteStatus) {
      const patch = o.access.patchRouteStatus;
      this.routeWriter = new RouteStatusWriter({
        patch: (ns, name, status) => patch(ns, name, status),
        routes: () => this.watch.store<KHTTPRoute>('httproutes'),
        onError: (e, route) => o.log.warn({ route, error: e.message }, 'kubernetes: writing the HTTPRoute status failed (tried again with the next change)'),
      });
    }
  }

  /**
   * The model to start from, before anything touches the kernel: the cache of a previous agent for this node (direct
   * mode), so that an agent restarted while the API server is down serves the last good config (the adopted kernel
   * already holds it; the L7 proxy needs it too). Undefined otherwise.
   */
  cached(): Model | undefined {
    if (this.o.mode !== 'direct' || !this.o.cacheFile) return undefined;
    const cached = readModelCache(this.o.cacheFile, this.o.nodeName);
    if (cached) {
      this.applied = cached;
      this.fromCache = true;
      this.o.log.info({ file: this.o.cacheFile, services: cached.services.length }, 'kubernetes: starting from the last applied model until the API server is synced');
    }
    return cached;
  }

  /** Start watching (once the apply transaction is ready: the first batch is applied at once). */
  start(): void {
    this.watch.start();
  }

  async stop(): Promise<void> {
    if (this.cacheDue) this.writeCache();
    clearTimeout(this.cacheTimer);
    await this.watch.stop();
    await this.writing;
  }

  /** Route status writes started so far have finished. */
  settled(): Promise<void> {
    return this.writing;
  }

  private sync(b: SyncBatch): void {
    const { o } = this;
    if (b.first || b.changed.pods.size > 0) {
      const pods = this.watch.store<KPod>('pods');
      o.onPods?.(localPods(pods.values()));
      const before = JSON.stringify(this.pods.workloads);
      this.pods = translatePods(pods.values(), {
        trustDomain: o.trustDomain, driver: o.kubelet?.driver ?? 'systemd', cgroupRoot: o.kubelet?.cgroupRoot,
      });
      for (const i of this.pods.issues.slice(0, 20)) o.log.warn({ object: i.object, field: i.path || '(object)', reason: i.message }, 'kubernetes: left out');
      if (o.mode !== 'direct' && JSON.stringify(this.pods.workloads) !== before) o.onWorkloads?.();
    }
    if (o.mode !== 'direct') {
      this.issues = this.pods.issues;
      return;
    }
    const t0 = performance.now();
    const res = this.translator.translate({
      services: this.watch.store<KService>('services'),
      endpointSlices: this.watch.store<KEndpointSlice>('endpointslices'),
      httpRoutes: this.watch.store<KHTTPRoute>('httproutes'),
      nodes: this.watch.store<KNode>('nodes'),
    }, viewChanges(b));
    const ms = performance.now() - t0;
    this.unserved = res.unserved;
    this.issues = [...res.issues, ...this.pods.issues];
    const model: Model = this.withPodWorkloads(res.model);
    const prev = this.applied;
    // After a failed apply, or over a model of another agent (the cache), everything is looked at again.
    const changed = prev && !this.failed && !this.fromCache ? changedServices(prev.services, model.services) : undefined;
    const workloadsChanged = !prev || !sameWorkloads(prev, model);
    // The proxy resolves identities in authz `from` to workloads when it compiles a service: new workloads (a pod
    // came or went) are a change of every service with authz rules, whatever else changed.
    if (changed && workloadsChanged) for (const s of model.services) if (s.http?.authz) changed.add(s.name);
    this.lastTranslate = { at: new Date().toISOString(), ms: Math.round(ms * 1000) / 1000, services: model.services.length, changed: changed?.size ?? model.services.length, relist: b.relist };
    for (const i of res.issues.slice(0, 20)) o.log.warn({ object: i.object, field: i.path || '(object)', reason: i.message }, 'kubernetes: left out');
    if (changed && changed.size === 0 && !workloadsChanged) {
      this.writeRouteStatus(res.routeStatus);
      return;
    }
    const err = o.apply!(model, changed);
    if (err !== null) {
      this.failed = true;
      this.lastError = err;
      o.log.error({ error: err }, 'kubernetes: the translated model was rejected whole; the last good model stays');
      return;
    }
    this.failed = false;
    this.fromCache = false;
    this.lastError = null;
    this.applied = model;
    this.scheduleCache();
    this.writeRouteStatus(res.routeStatus);
  }

  /**
   * The model with this node's pods as workloads: one per service account (kube/pods.ts), named `<ns>--<sa>`, with
   * its identity (what authz `from` rules name: spiffe://<trust domain>/ns/<ns>/sa/<sa>), its pods' cgroups (who a
   * client is) and their addresses. Beside the model's own workloads (a control plane's, in pods mode): a name or a
   * cgroup the model has already stays the model's.
   */
  withPodWorkloads(model: Model): Model {
    if (this.pods.workloads.length === 0) return model;
    const own = model.workloads ?? [];
    if (own.length === 0) return { ...model, workloads: this.pods.workloads };
    const names = new Set(own.map((w) => w.name));
    const cgroups = new Set(own.flatMap((w) => w.cgroups));
    const mine = this.pods.workloads.filter((w) => !names.has(w.name)).map((w) => ({ ...w, cgroups: w.cgroups.filter((c) => !cgroups.has(c)) }));
    return { ...model, workloads: [...own, ...mine] };
  }

  private writeRouteStatus(updates: Parameters<RouteStatusWriter['write']>[0]): void {
    if (!this.routeWriter || updates.length === 0) return;
    const w = this.routeWriter;
    this.writing = this.writing.then(() => w.write(updates));
  }

  private scheduleCache(): void {
    if (!this.o.cacheFile) return;
    this.cacheDue = true;
    if (this.cacheTimer) return;
    this.cacheTimer = setTimeout(() => {
      this.cacheTimer = undefined;
      this.writeCache();
    }, CACHE_WRITE_MS);
    this.cacheTimer.unref();
  }

  private writeCache(): void {
    const file = this.o.cacheFile;
    if (!file || !this.applied) return;
    this.cacheDue = false;
    try {
      this.cacheWriter.write(file, { version: CACHE_VERSION, node: this.o.nodeName }, this.applied);
    } catch (e) {
      this.o.log.warn({ file, error: (e as Error).message }, 'kubernetes: could not keep the last applied model (a restart while the API server is down starts without it)');
    }
  }

  status(): KubeSourceStatus {
    const health = this.watch.health();
    return {
      mode: this.o.mode, node: this.o.nodeName, summary: healthLine(health), health,
      unserved: this.unserved.length, issues: this.issues.length, lastTranslate: this.lastTranslate, lastError: this.lastError,
      fromCache: this.fromCache, routeStatus: { writes: this.routeWriter?.writes ?? 0, failures: this.routeWriter?.failures ?? 0 },
    };
  }

  report(): KubeReport {
    return { status: this.status(), unserved: this.unserved, issues: this.issues.slice(0, MAX_REPORTED_ISSUES) };
  }
}

function sameWorkloads(a: Model, b: Model): boolean {
  return JSON.stringify(a.workloads ?? []) === JSON.stringify(b.workloads ?? []);
}

export type { Workload };
