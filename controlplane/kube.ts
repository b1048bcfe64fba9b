// `sockmesh-controlplane serve --kubernetes`: the cluster watched once (Services, EndpointSlices, HTTPRoutes, Nodes),
// translated with kube-proxy's semantics (kube/translate.ts) and served over the same xDS server as a config
// directory, to every node agent.
//
// Per node where it matters: a Service with internalTrafficPolicy Local or topology (PreferClose) has other endpoints
// on every node. The xDS node id is the node name; those services (and only those) are translated per node with an
// open stream, into that node's overlay (nodeview.ts); everything else is translated once for the cluster. A node's
// overlay is recomputed only when a batch touched what it reads (a node-dependent service, its slices or routes, a
// Node): an EndpointSlice change of an ordinary service costs one translation, whatever the number of nodes.
//
// HTTPRoute status (Accepted, ResolvedRefs) is written back through the status subresource, only when it differs
// from what the API server holds. Watch health goes to the log and to the status endpoint (--status-listen:
// GET /metrics, GET /v1/kubernetes with what is not served).
import type { Logger } from 'pino';
import type { Model, MtlsMode, Service } from '../agent/model/types.js';
import { serviceMode, translateMesh, type KNamespace } from '../kube/mesh.js';
import { DEFAULT_ROOT_NAMESPACE, policyTargets, translateAuthorization, type AuthzTranslation, type KAuthorizationPolicy } from '../kube/authz.js';
import { DEFAULT_TRUST_DOMAIN } from '../kube/pods.js';
import type { TranslateIssue, TranslateResult, Unserved } from '../kube/translate.js';
import { ClusterTranslator } from '../kube/translate-live.js';
import type { KEndpointSlice, KHTTPRoute, KNode, KPod, KService } from '../kube/types.js';
import {
  ClusterWatch, healthLine, nodeDependentServices, RouteStatusWriter, viewChanges,
  type ClusterHealth, type KubeAccess, type SyncBatch, type WatchKind,
} from '../kube/watch.js';
import { registerKubeMetrics } from '../kube/metrics.js';
import { ControlPlane, serve, type RunningControlPlane, type ServeOptions } from './server.js';
import { controlPlaneRegistry, startStatusServer, type StatusServer } from './status.js';

/** The API server as the control plane uses it (controlplane/main.ts builds it from the kubeconfig). */
export type ClusterAccess = KubeAccess;

export interface KubeClusterOptions {
  access: ClusterAccess;
  /** the API server's URL (logs, status) */
  server: string;
  log: Logger;
  debounceMs?: number;
  maxDelayMs?: number;
  /** the identities of pods: spiffe://<trustDomain>/ns/<ns>/sa/<sa> (default cluster.local) */
  trustDomain?: string;
  /** watch Istio's AuthorizationPolicies (the API server serves them) and translate them (kube/authz.ts) */
  authorizationPolicies?: boolean;
  /** Istio's root namespace: a policy there is mesh-wide (default istio-system) */
  rootNamespace?: string;
}

/** GET /v1/kubernetes of the control plane. */
export interface ClusterReport {
  server: string;
  summary: string;
  health: ClusterHealth;
  services: number;
  /** Kubernetes services translated per node (Local, PreferClose), and the nodes with an overlay now */
  perNodeServices: number;
  overlayNodes: number;
  lastTranslate: { at: string; ms: number; services: number; relist: boolean } | null;
  routeStatus: { writes: number; failures: number };
  unserved: Unserved[];
  issues: TranslateIssue[];
  /** Istio AuthorizationPolicies: watched or not (the CRD not served), and per outcome how many */
  authorizationPolicies: { watched: boolean; rootNamespace: string; enforced: number; partial: number; notEnforced: number; invalid: number };
}

const EMPTY: Model = { services: [] };
const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
const MAX_REPORTED_ISSUES = 200;

export class KubeCluster {
  readonly watch: ClusterWatch;
  private readonly routeWriter?: RouteStatusWriter;
  private last?: TranslateResult;
  /** the cluster-wide translation, kept up to date from each batch's changes */
  private readonly translator = new ClusterTranslator({});
  private dependent = new Set<string>();
  /** moves when a batch touched what a node's overlay reads */
  private generation = 0;
  private readonly perNode = new Map<string, { generation: number; model: Model }>();
  private lastTranslate: ClusterReport['lastTranslate'] = null;
  private writing: Promise<void> = Promise.resolve();
  /** how many per-node translations were made (tests: a plain endpoint change makes none) */
  nodeTranslations = 0;
  private mesh?: Pick<Model, 'nodes' | 'workloads' | 'mtls'>;
  private meshIssues: TranslateIssue[] = [];
  private serviceModes = new Map<string, MtlsMode>();
  private modeIssues: TranslateIssue[] = [];
  private readonly moded = new WeakMap<Service, Service>();
  private authz?: AuthzTranslation;
  /** how many times the policies were translated (tests: an unrelated batch translates none) */
  authzTranslations = 0;

  constructor(private readonly cp: ControlPlane, private readonly o: KubeClusterOptions) {
    const r = (kind: WatchKind) => o.access.reflect(kind, {});
    this.watch = new ClusterWatch({
      // pods and namespaces for the mesh settings (mesh.ts in kube/): workloads per service account and node, modes
      reflectors: {
        services: r('services'), endpointslices: r('endpointslices'), httproutes: r('httproutes'), nodes: r('nodes'),
        pods: r('pods'), namespaces: r('namespaces'),
        ...(o.authorizationPolicies ? { authorizationpolicies: r('authorizationpolicies') } : {}),
      },
      debounceMs: o.debounceMs, maxDelayMs: o.maxDelayMs,
      onSync: (b) => this.sync(b),
      onHealth: (h) => {
        if (h.connected) o.log.info({ server: o.server, since: h.since }, 'kubernetes: the API server is reachable again');
        else o.log.warn({ server: o.server, since: h.since, error: h.lastError }, 'kubernetes: the API server is unreachable; serving the last state');
      },
    });
    if (o.access.patchRouteStatus) {
      const patch = o.access.patchRouteStatus;
      this.routeWriter = new RouteStatusWriter({
        patch: (ns, name, status) => patch(ns, name, status),
        routes: () => this.watch.store<KHTTPRoute>('httproutes'),
        onError: (e, route) => o.log.warn({ route, error: e.message }, 'kubernetes: writing the HTTPRoute status failed (tried again with the next change)'),
      });
    }
  }

  start(): void {
    this.watch.start();
  }

  async stop(): Promise<void> {
    await this.watch.stop();
    await this.writing;
  }

  /** Route status writes started so far have finished. */
  settled(): Promise<void> {
    return this.writing;
  }

  private view() {
    return {
      services: this.watch.store<KService>('services'),
      endpointSlices: this.watch.store<KEndpointSlice>('endpointslices'),
      httpRoutes: this.watch.store<KHTTPRoute>('httproutes'),
      nodes: this.watch.store<KNode>('nodes'),
    };
  }

  private sync(b: SyncBatch): void {
    const t0 = performance.now();
    const v = this.view();
    const res = this.translator.translate(v, viewChanges(b));
    // which services are node-dependent is read from Services and HTTPRoutes only: an EndpointSlice change (the
    // common batch) does not walk 10,000 services for it
    const dependent = b.first || b.changed.services.size > 0 || b.changed.httproutes.size > 0 ? nodeDependentServices(v.services.values(), v.httpRoutes.values()) : this.dependent;
    if (b.first || this.touchesNodes(b, dependent)) this.generation++;
    this.dependent = dependent;
    this.last = res;
    const services = this.withModes(b, res);
    const base: Model = { ...this.meshOf(b), services: dependent.size === 0 ? services : services.filter((s) => !dependent.has(res.origins.get(s.name) ?? '')) };
    const authorization = this.authorizationOf(b, res);
    if (authorization.length > 0) base.authorization = authorization;
    this.cp.setLayered(base, (node) => this.nodeModel(node));
    for (const node of [...this.perNode.keys()]) if (!this.cp.overlayNodes().includes(node)) this.perNode.delete(node);
    const ms = performance.now() - t0;
    this.lastTranslate = { at: new Date().toISOString(), ms: Math.round(ms * 1000) / 1000, services: res.model.services.length, relist: b.relist };
    for (const i of res.issues.slice(0, 20)) this.o.log.warn({ object: i.object, field: i.path || '(object)', reason: i.message }, 'kubernetes: left out');
    if (this.routeWriter && res.routeStatus.length > 0) {
      const w = this.routeWriter;
      this.writing = this.writing.then(() => w.write(res.routeStatus));
    }
  }

  /**
   * The nodes, workloads and namespace modes, translated again only when a batch changed Nodes, Pods or Namespaces:
   * the same lists otherwise, which the control plane's mesh snapshot takes as "nothing changed" at no cost.
   */
  private meshOf(b: SyncBatch): Pick<Model, 'nodes' | 'workloads' | 'mtls'> {
    if (!this.mesh || b.first || b.changed.nodes.size > 0 || b.changed.pods.size > 0 || b.changed.namespaces.size > 0) {
      const m = translateMesh({
        nodes: this.watch.store<KNode>('nodes').values(), pods: this.watch.store<KPod>('pods').values(),
        namespaces: this.watch.store<KNamespace>('namespaces').values(),
      }, { trustDomain: this.o.trustDomain ?? DEFAULT_TRUST_DOMAIN });
      this.meshIssues = m.issues;
      this.mesh = { nodes: m.nodes, workloads: m.workloads, mtls: m.mtls };
    }
    return this.mesh;
  }

  /**
   * The L4 policies from Istio's AuthorizationPolicies (kube/authz.ts), translated again only when a batch changed
   * what they read: the policies, pods (labels, addresses), services or, with a selector policy, endpoints. The same
   * list otherwise (the mesh snapshot compares it by identity first).
   */
  private authorizationOf(b: SyncBatch, res: TranslateResult): Model['authorization'] & object {
    if (!this.o.authorizationPolicies) return [];
    const policies = this.watch.store<KAuthorizationPolicy>('authorizationpolicies');
    const selectors = () => [...policies.values()].some((p) => p.spec?.['selector'] !== undefined);
    const c = b.changed;
    if (this.authz && !b.first && c.authorizationpolicies.size === 0 && c.pods.size === 0 && c.services.size === 0 && c.httproutes.size === 0
      && (c.endpointslices.size === 0 || policies.size === 0 || !selectors())) return this.authz.authorization;
    const t = translateAuthorization(
      { policies: policies.values(), pods: this.watch.store<KPod>('pods').values(), targets: policies.size === 0 ? [] : policyTargets(res.model.services, res.origins) },
      { rootNamespace: this.o.rootNamespace ?? DEFAULT_ROOT_NAMESPACE },
    );
    this.authzTranslations++;
    const was = this.authz;
    if (was && JSON.stringify(was.authorization) === JSON.stringify(t.authorization)) t.authorization = was.authorization;
    const known = new Set((was?.issues ?? []).map((i) => `${i.object}|${i.path}|${i.message}`));
    for (const i of t.issues.filter((x) => !known.has(`${x.object}|${x.path}|${x.message}`)).slice(0, 20)) {
      this.o.log.warn({ object: i.object, field: i.path || '(object)', reason: i.message }, 'kubernetes: authorization policy not enforced as written');
    }
    this.authz = t;
    return t.authorization;
  }

  /** The services with the mode of their Service's annotation (the same object for the same service and mode). */
  private withModes(b: SyncBatch, res: TranslateResult): Service[] {
    const store = this.watch.store<KService>('services');
    if (b.first || b.changed.services.size > 0) {
      const issues: TranslateIssue[] = [];
      const modes = new Map<string, MtlsMode>();
      for (const [key, s] of store) {
        const m = serviceMode(s, issues);
        if (m) modes.set(key, m);
      }
      this.serviceModes = modes;
      this.modeIssues = issues;
    }
    if (this.serviceModes.size === 0) return res.model.services;
    return res.model.services.map((s) => {
      const mode = this.serviceModes.get(res.origins.get(s.name) ?? '');
      if (!mode) return s;
      const done = this.moded.get(s);
      if (done?.mtls === mode) return done;
      const m = { ...s, mtls: mode };
      this.moded.set(s, m);
      return m;
    });
  }

  /** Whether a batch changed what the per-node translations read. */
  private touchesNodes(b: SyncBatch, dependent: ReadonlySet<string>): boolean {
    if (b.changed.nodes.size > 0 || b.changed.httproutes.size > 0) return dependent.size > 0 || this.dependent.size > 0;
    for (const k of b.changed.services) if (dependent.has(k) || this.dependent.has(k)) return true;
    if (dependent.size === 0 && this.dependent.size === 0) return false;
    const slices = this.watch.store<KEndpointSlice>('endpointslices');
    for (const k of b.changed.endpointslices) {
      const s = slices.get(k);
      if (!s) return true; // deleted: whose it was is not known any more
      const svc = `${s.metadata.namespace ?? ''}/${s.metadata.labels?.[SERVICE_NAME_LABEL] ?? ''}`;
      if (dependent.has(svc) || this.dependent.has(svc)) return true;
    }
    return false;
  }

  /**
   * The node-dependent services for `node`, translated from the cluster translator's indexes (their routes' backend
   * services resolved as in the cluster-wide translation). Remembered per node until a batch touches what it read.
   */
  private nodeModel(node: string): Model {
    if (this.dependent.size === 0) return EMPTY;
    const memo = this.perNode.get(node);
    if (memo && memo.generation === this.generation) return memo.model;
    const res = this.translator.translateFor(this.dependent, { nodeName: node }, this.view());
    this.nodeTranslations++;
    const model = res.model;
    this.perNode.set(node, { generation: this.generation, model });
    return model;
  }

  report(): ClusterReport {
    const health = this.watch.health();
    return {
      server: this.o.server, summary: healthLine(health), health,
      services: this.last?.model.services.length ?? 0, perNodeServices: this.dependent.size, overlayNodes: this.cp.overlayNodes().length,
      lastTranslate: this.lastTranslate,
      routeStatus: { writes: this.routeWriter?.writes ?? 0, failures: this.routeWriter?.failures ?? 0 },
      unserved: this.last?.unserved ?? [],
      issues: [...(this.last?.issues ?? []), ...this.meshIssues, ...this.modeIssues, ...(this.authz?.issues ?? [])].slice(0, MAX_REPORTED_ISSUES),
      authorizationPolicies: this.authzReport(),
    };
  }

  authzReport(): ClusterReport['authorizationPolicies'] {
    const n = { enforced: 0, partial: 0, notEnforced: 0, invalid: 0 };
    for (const o of this.authz?.outcomes.values() ?? []) n[o === 'not-enforced' ? 'notEnforced' : o]++;
    return { watched: !!this.o.authorizationPolicies, rootNamespace: this.o.rootNamespace ?? DEFAULT_ROOT_NAMESPACE, ...n };
  }
}

export interface KubeServeOptions extends ServeOptions {
  access: ClusterAccess;
  server: string;
  debounceMs?: number;
  maxDelayMs?: number;
  /** GET /metrics and GET /v1/kubernetes on this host:port (port 0 picks one); absent = none */
  statusListen?: { host: string; port: number };
  /** the pods' identities' trust domain (default cluster.local) */
  trustDomain?: string;
  /** Istio's root namespace (mesh-wide AuthorizationPolicies; default istio-system) */
  rootNamespace?: string;
}

export interface RunningKubeControlPlane extends RunningControlPlane {
  readonly kube: KubeCluster;
  /** http://host:port of the status endpoint (null: none) */
  readonly statusAddress: string | null;
}

/**
 * A control plane serving the cluster: xDS as for a config directory, from the start (nothing is served before the
 * first complete list: agents keep what they have meanwhile, as with any control plane that has no state yet).
 */
export async function startKubeControlPlane(opts: KubeServeOptions): Promise<RunningKubeControlPlane> {
  const cp = new ControlPlane(opts);
  // Istio's AuthorizationPolicy is a CRD: watched when the API server serves it (else the first batch would wait for it)
  const authorizationPolicies = opts.access.served ? await opts.access.served('authorizationpolicies') : false;
  if (opts.access.served && !authorizationPolicies) {
    cp.log.warn({ server: opts.server }, 'kubernetes: security.istio.io/v1 AuthorizationPolicy is not served (the CRD is not installed, or not readable): no L4 policies from the cluster (restart after installing it)');
  }
  const kube = new KubeCluster(cp, {
    access: opts.access, server: opts.server, log: cp.log, debounceMs: opts.debounceMs, maxDelayMs: opts.maxDelayMs, trustDomain: opts.trustDomain,
    authorizationPolicies, rootNamespace: opts.rootNamespace,
  });
  let status: StatusServer | undefined;
  let running: RunningControlPlane | undefined;
  if (opts.statusListen) {
    const registry = controlPlaneRegistry(cp, opts.ca && { setup: opts.ca, stats: () => running?.ca?.stats });
    registerKubeMetrics(registry, 'sockmesh_controlplane', {
      health: () => kube.watch.health(), unserved: () => kube.report().unserved.length, routeStatus: () => kube.report().routeStatus,
      authorizationPolicies: () => kube.authzReport(),
    });
    status = await startStatusServer(opts.statusListen, registry, { '/v1/kubernetes': () => kube.report() });
    cp.log.info({ address: status.address }, 'status endpoint listening (GET /metrics, GET /v1/kubernetes)');
  }
  kube.start();
  try {
    running = await serve(cp, opts, async () => {
      await kube.stop();
      await status?.close();
    }, () => {});
    return Object.assign(running, { kube, statusAddress: status?.address ?? null });
  } catch (e) {
    await kube.stop();
    await status?.close();
    throw e;
  }
}
