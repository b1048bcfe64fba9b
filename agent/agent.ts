// The agent: a source of desired state, the model, the datapath, and the admin API around them.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Model } from './model/types.js';
import { Datapath, type AttachReport, type ProxySettings } from './datapath/datapath.js';
import { Reconciler, type ReconcileResult } from './datapath/reconcile.js';
import { MapReader } from './datapath/inspect.js';
import { native } from './datapath/native.js';
import { cgroup2Root, cgroupOf, ensureBpffs, ensureCgroup, isRootCgroup, ownCgroupId } from './datapath/cgroup.js';
import type { OriginalDst } from './proxy/types.js';
import { FileSource } from './sources/file.js';
import { XdsSource } from './sources/xds/source.js';
import { AdminError, AdminServer } from './admin/server.js';
import type { BackendsReport, ProxyReports, RoutesReport, StatusReport } from './admin/protocol.js';
import { backendsReport, routesReport } from './admin/backends.js';
import { BackendStates } from './health/states.js';
import { HealthChecker } from './health/checker.js';
import { ProxyPolicy } from './proxy/policy.js';
import { ProxyServer } from './proxy/server.js';
import { resolveWorkloads } from './proxy/workloads.js';
import { effectiveModel, type Panic } from './health/effective.js';
import { Registry } from 'prom-client';
import { AgentMetrics, readKernelCounters } from './observe/metrics.js';
import { EventRing, decodeFlowEvent, monotonicEpochMs } from './observe/events.js';
import { nodeFacts, type NodeFacts } from './observe/node.js';
import type { Logger } from './observe/log.js';
import { collectGarbage } from './observe/memory.js';

/** Backend state changes (probe verdicts, ejections) within this window are applied to the kernel together. */
const STATES_COALESCE_MS = 20;
/** Kernel entries written or removed by one change above which the heap is compacted afterwards. */
const LARGE_CHANGE = 10_000;
import type { RingBufferSubscription } from './datapath/native.js';

export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  }
})();

export interface XdsConfig {
  address: string;
  caFile?: string;
  serverName?: string;
  mode: 'sotw' | 'delta';
  nodeId: string;
  cluster: string;
  locality?: { region?: string; zone?: string; sub_zone?: string };
}

export interface AgentOptions {
  cgroup: string;
  bpffs: string;
  runDir: string;
  /** a file to watch, an xDS control plane, or an embedded model (the default demo config) */
  config: { file: string } | { embedded: Model; name: string } | { xds: XdsConfig };
  allowRootCgroup: boolean;
  sockmap: boolean;
  eventSample: number;
  /** the Prometheus endpoint (GET /metrics); absent or null = none */
  metricsListen?: { host: string; port: number } | null;
  /** the L7 proxy's listener port (default 15001); it listens on proxyV4 and proxyV6 */
  proxyPort?: number;
  /** default '127.0.0.1'; '' = no IPv4 listener */
  proxyV4?: string;
  /** default '::1'; '' = none (IPv6 VIPs then go to the IPv4 listener, v4-mapped) */
  proxyV6?: string;
  /**
   * Node addresses the proxy also listens on, for clients in other network namespaces (pods), which cannot reach its
   * loopback listener: '' or absent = none (those clients get their service's fail mode). Anything that can route to
   * them can connect; a connection the kernel did not hand over gets no service (421 and close).
   */
  proxyNodeV4?: string;
  proxyNodeV6?: string;
  /** heartbeat interval (default 1000 ms); the kernel counts the proxy as down after 3 intervals without one */
  proxyHeartbeatMs?: number;
}

/** What the agent needs of the kernel; checked before anything is loaded so a missing feature gets a clear message. */
const REQUIRED_FEATURES: [string, string][] = [
  ['progTypes.cgroup_sock_addr', 'BPF cgroup/connect programs (kernel 4.17+, CONFIG_CGROUP_BPF)'],
  ['mapTypes.lru_hash', 'BPF LRU hash maps'],
  ['mapTypes.ringbuf', 'BPF ring buffers (kernel 5.8+)'],
  ['helpers.cgroup_sock_addr:get_netns_cookie', 'bpf_get_netns_cookie in cgroup/connect programs (kernel 5.7+)'],
  ['helpers.cgroup_sock_addr:get_current_cgroup_id', 'bpf_get_current_cgroup_id in cgroup/connect programs (kernel 5.7+)'],
];
/** Only for the L7 redirect's hand-over (without them L7 services behave as their fail mode says). */
const L7_FEATURES: [string, string][] = [
  ['progTypes.sock_ops', 'BPF sock_ops programs (CONFIG_CGROUP_BPF)'],
  ['helpers.sock_ops:get_netns_cookie', 'bpf_get_netns_cookie in sock_ops (kernel 5.15+)'],
];
/** Only for the sockmap fast path (--no-sockmap runs without them). */
const SOCKMAP_FEATURES: [string, string][] = [
  ['progTypes.sock_ops', 'BPF sock_ops programs (CONFIG_CGROUP_BPF)'],
  ['progTypes.sk_msg', 'BPF sk_msg programs (CONFIG_BPF_STREAM_PARSER / CONFIG_NET_SOCK_MSG)'],
  ['mapTypes.sockhash', 'BPF SOCKHASH maps'],
  ['helpers.sock_ops:get_netns_cookie', 'bpf_get_netns_cookie in sock_ops (kernel 5.15+)'],
  ['helpers.sk_msg:get_netns_cookie', 'bpf_get_netns_cookie in sk_msg (kernel 5.15+)'],
];

export class Agent {
  private datapath?: Datapath;
  private heartbeatTimer?: NodeJS.Timeout;
  private reconciler?: Reconciler;
  private reader?: MapReader;
  private source?: FileSource;
  private xds?: XdsSource;
  private admin?: AdminServer;
  private events = new EventRing();
  private ringbuf?: RingBufferSubscription;
  private facts?: NodeFacts;
  private features: Record<string, boolean> = {};
  private programs: AttachReport[] = [];
  private readonly startedAt = new Date();
  private configVersion = 0;
  private lastConfigError: string | null = null;
  private lastReconcile: { at: string; ms: number } | null = null;
  private model?: Model;
  private needFullApply = false;
  /** probe verdicts and outlier ejections: backends out of service (the kernel gets the effective model) */
  readonly states = new BackendStates();
  private checker?: HealthChecker;
  /** services whose backend states changed, re-applied together after STATES_COALESCE_MS */
  private statesPending = new Set<string>();
  private statesTimer?: NodeJS.Timeout;
  /** frontends in panic (every usable backend out, all kept), by service */
  private panics = new Map<string, Panic[]>();
  /** the proxy policy's live reports for meshctl backends/routes (set by whoever runs the proxy) */
  proxyReports: ProxyReports = {};
  /** the one Prometheus registry of this agent: the proxy policy registers its L7 families here too */
  readonly registry = new Registry();
  private readonly metrics = new AgentMetrics({
    kernel: () => (this.datapath && this.reconciler ? readKernelCounters(native(), (m) => this.datapath!.maps.fd(m), this.names()) : undefined),
    model: () => this.model,
    states: this.states,
    checker: () => this.checker,
    panics: () => [...this.panics.values()].flat(),
  }, this.registry);
  private metricsAddress: string | null = null;
  /** the L7 proxy: its policy follows every applied model; the server listens once the datapath is attached */
  private policy?: ProxyPolicy;
  private proxy?: ProxyServer;
  /** what the kernel was told of the proxy (Datapath.setProxy) */
  private proxySettings?: ProxySettings;
  /** the cgroup2 mount, found once at start (reading /proc/mounts on every config change was garbage for nothing) */
  private cgroupRoot = cgroup2Root() ?? '/sys/fs/cgroup';
  private workloadIds = new Map<bigint, string>();
  private workloadsResolvedAt = 0;
  /** cgroup ids found in no workload since the last resolution: not walked for again (see workloadOf) */
  private workloadMisses = new Set<bigint>();

  constructor(readonly opts: AgentOptions, private readonly log: Logger) {}

  /** Check the kernel, load and attach, apply the config, serve the admin API. */
  async start(): Promise<void> {
    const { opts, log } = this;
    const root = cgroup2Root();
    if (!root) throw new Error('this kernel has no cgroup v2 mounted: sockmesh attaches its programs to a cgroup v2 directory');
    this.cgroupRoot = root;
    if (process.getuid?.() !== 0) throw new Error('sockmesh-agent must run as root (it loads BPF programs)');
    ensureCgroup(opts.cgroup);
    if (isRootCgroup(opts.cgroup, root) && !opts.allowRootCgroup) {
      throw new Error(`refusing to attach to the root cgroup ${opts.cgroup}: that would mesh every process on this machine; ` +
        `pass --allow-root-cgroup if you really mean it`);
    }
    // The kernel exempts the proxy's own cgroup from the L7 redirect (its upstream connections must not loop): an
    // agent in the meshed cgroup itself would exempt every application there from L7 routing and authorization.
    if (cgroupOf(process.pid, root).replace(/\/+$/, '') === opts.cgroup.replace(/\/+$/, '')) {
      throw new Error(`the agent runs in the meshed cgroup ${opts.cgroup} itself: every application there would bypass ` +
        `the L7 proxy (its cgroup is exempt from the redirect); run it in a child cgroup of it, or outside it`);
    }
    this.checkFeatures();
    ensureBpffs(opts.bpffs);

    // The config is validated before anything touches the kernel: a bad file at start changes nothing.
    // With a control plane there is no model yet: the kernel keeps what it has until the first complete sync.
    let model: Model | undefined;
    if ('xds' in opts.config) {
      model = undefined;
    } else if ('file' in opts.config) {
      this.source = new FileSource(opts.config.file, {
        onModel: (m) => this.applyModel(m, 'file change'),
        onError: (e) => {
          this.lastConfigError = e.message;
          log.error({ file: (opts.config as { file: string }).file, error: e.message }, 'config rejected; the last good config stays in force');
        },
      });
      model = this.source.start();
    } else {
      model = opts.config.embedded;
    }

    const l7Missing = L7_FEATURES.filter(([k]) => this.features[k] === false).map(([, what]) => what);
    if (l7Missing.length) log.warn({ missing: l7Missing }, 'no L7 redirect on this kernel: L7 services are balanced at L4 (fail open) or refused (fail closed)');
    const dp = new Datapath({
      bpffs: opts.bpffs, cgroup: opts.cgroup, sockmap: opts.sockmap, eventSample: opts.eventSample, l7: l7Missing.length === 0,
    });
    dp.load();
    dp.configure();
    this.datapath = dp;
    const n = native();
    this.reconciler = this.newReconciler();
    const adopted = this.reconciler.adopt();
    if (adopted.frontends || adopted.backends) log.info(adopted, 'adopted the datapath state a previous agent left pinned');
    this.reconciler.syncLocalAddresses();
    this.checker = new HealthChecker(this.states, {
      log: log.child({ component: 'health' }),
      onProbe: (service, _backend, result) => this.metrics.probed(service, result.healthy),
    });
    this.states.onChange((service) => this.statesChanged(service));
    if (dp.l7) {
      this.policy = new ProxyPolicy({ states: this.states, log: log.child({ component: 'proxy' }), registry: this.registry });
      this.proxyReports = { backends: () => this.policy!.backendsReport(), routes: () => this.policy!.routesReport() };
    }
    if (model) this.applyModel(model, 'start');
    // The proxy counts as down until startProxyHeartbeat(): L7 services follow their fail mode meanwhile.
    if (dp.l7) {
      this.proxySettings = {
        v4: opts.proxyV4 ?? '127.0.0.1', v6: opts.proxyV6 ?? '::1', port: opts.proxyPort ?? 15001,
        cgroupId: ownCgroupId(root), timeoutMs: 3 * (opts.proxyHeartbeatMs ?? 1000),
        // Run inside the meshed cgroup (a child of it), the proxy's accepted sockets join the fast path too.
        inMesh: cgroupOf(process.pid, root).startsWith(`${opts.cgroup.replace(/\/+$/, '')}/`),
        nodeV4: opts.proxyNodeV4 ?? '', nodeV6: opts.proxyNodeV6 ?? '',
      };
      dp.setProxy(this.proxySettings);
    }
    // Programs go in after the maps hold the config, so the first connect() is already balanced.
    this.programs = dp.attach();
    this.reader = MapReader.fromFds(dp.maps.fds);
    const epoch = monotonicEpochMs();
    this.ringbuf = n.ringbufSubscribe(dp.maps.fd('sm_events'), (rec) => {
      const ev = decodeFlowEvent(rec, this.names(), epoch);
      this.events.push(ev);
      log.debug({ event: ev }, 'flow');
    });
    this.facts = await nodeFacts();
    await this.startProxy();
    if ('xds' in opts.config) this.startXds(opts.config.xds);

    this.admin = new AdminServer(join(opts.runDir, 'admin.sock'), {
      '/v1/status': () => this.status(),
      '/v1/services': () => this.reader!.frontends(this.names()),
      '/v1/stats': () => this.reader!.stats(this.names()),
      '/v1/sockets': () => this.reader!.sockets(),
      '/v1/events': () => this.events.recent(),
      '/v1/backends': (q) => this.backends(q.get('service') ?? undefined),
      '/v1/routes': (q) => this.routes(q.get('service') ?? undefined),
    }, log);
    await this.admin.start();
    if (opts.metricsListen) {
      // Metrics are for looking at the datapath, not part of it: a port already taken is an error in the log, and the
      // agent keeps serving (a restarting agent must not leave the node without its datapath over a port).
      try {
        this.metricsAddress = await this.metrics.listen(opts.metricsListen.host, opts.metricsListen.port, log);
        log.info({ address: this.metricsAddress }, 'metrics endpoint listening');
      } catch (e) {
        log.error({ listen: `${opts.metricsListen.host}:${opts.metricsListen.port}`, error: (e as Error).message }, 'the metrics endpoint could not be started; the agent runs without it');
      }
    }
    log.info({
      cgroup: opts.cgroup, bpffs: opts.bpffs, admin: this.admin.socketPath,
      programs: this.programs.map((p) => `${p.program}:${p.how}`).join(' '),
    }, 'datapath ready');
  }

  private checkFeatures(): void {
    const p = native().probe();
    const flat: Record<string, boolean> = {};
    for (const [group, entries] of Object.entries(p)) {
      for (const [k, v] of Object.entries(entries as Record<string, boolean>)) flat[`${group}.${k}`] = v;
    }
    this.features = flat;
    const missing = REQUIRED_FEATURES.filter(([k]) => flat[k] === false).map(([, what]) => what);
    if (missing.length) throw new Error(`this kernel lacks what sockmesh needs: ${missing.join('; ')}`);
    const fast = SOCKMAP_FEATURES.filter(([k]) => flat[k] === false).map(([, what]) => what);
    if (fast.length && this.opts.sockmap) {
      throw new Error(`this kernel lacks what the sockmap fast path needs: ${fast.join('; ')} (run with --no-sockmap to balance at connect() only)`);
    }
  }

  private names(): ReadonlyMap<number, string> {
    return this.reconciler?.names() ?? new Map();
  }

  private newReconciler(): Reconciler {
    const n = native();
    return new Reconciler(this.datapath!.maps, n, {
      destroyUdp: (addr, port) => {
        try {
          return n.destroyUdpSockets(addr, port);
        } catch (e) {
          this.log.warn({ addr, port, error: (e as Error).message }, 'could not destroy UDP sockets of a removed backend');
          return 0;
        }
      },
    });
  }

  private startXds(cfg: XdsConfig): void {
    const hostname = this.facts?.hostname ?? 'unknown';
    this.xds = new XdsSource({
      address: cfg.address,
      tls: cfg.caFile ? { caFile: cfg.caFile, serverName: cfg.serverName } : undefined,
      mode: cfg.mode,
      node: {
        id: cfg.nodeId, cluster: cfg.cluster, locality: cfg.locality,
        metadata: { node_name: hostname, agent_version: VERSION, cgroup: this.opts.cgroup },
      },
      log: this.log.child({ source: 'xds' }),
      apply: (model: Model, changed?: ReadonlySet<string>) => this.applyModel(model, 'xds', changed),
    });
    this.xds.start();
  }

  /**
   * Apply a validated model (only the services named in `changed`, when given). On a kernel error the previous model
   * is put back and the error returned: the source rejects the update (an xDS NACK) and the last good config stays.
   */
  applyModel(model: Model, why: string, changed?: ReadonlySet<string>): string | null {
    const r = this.reconciler;
    if (!r) return 'the datapath is not loaded';
    // After a failed apply the kernel may hold part of a rejected update: the next one is applied in full.
    const scope = this.needFullApply ? undefined : changed;
    // The proxy's policy first: it compiles every L7 service before replacing anything, so what it refuses (the
    // validators should have caught it) leaves the kernel and the proxy as they were.
    if (this.policy) {
      try {
        this.policy.update(model, this.workloadOf, scope);
      } catch (e) {
        const msg = (e as Error).message;
        this.lastConfigError = msg;
        this.log.error({ why, error: msg }, 'the proxy refused the config');
        if (why === 'start') throw e;
        return msg;
      }
    }
    let res: ReconcileResult;
    try {
      res = r.apply(this.effective(model, scope), scope);
    } catch (e) {
      const msg = (e as Error).message;
      this.lastConfigError = msg;
      this.log.error({ why, error: msg }, 'applying the config to the kernel failed');
      if (why === 'start') throw e;
      this.restoreLastGood();
      if (this.policy && this.model) this.policy.update(this.model, this.workloadOf);
      return `applying to the kernel failed: ${msg}`;
    }
    // Only now is the model the one in force: nothing below may turn an applied update into a rejected one.
    this.needFullApply = false;
    this.model = model;
    // Who the clients are follows the model in force: resolved before the kernel said yes, a rejected config's workloads
    // would have stayed after the last good model was put back.
    if (this.policy) {
      this.workloadIds = resolveWorkloads(model.workloads, this.cgroupRoot);
      this.workloadsResolvedAt = Date.now();
      this.workloadMisses = new Set();
    }
    this.configVersion++;
    this.lastConfigError = null;
    this.lastReconcile = { at: new Date().toISOString(), ms: Math.round(res.ms * 1000) / 1000 };
    this.log.info({ why, version: this.configVersion, services: model.services.length, changed: scope?.size, ...res }, 'config applied');
    // Probes follow the model (new backends start, removed ones stop and are forgotten by BackendStates).
    this.checker?.update(model, scope);
    if (!scope) this.metrics.retain(new Set(model.services.map((s) => s.name)));
    else this.metrics.forgetRemoved(scope, model.services);
    try {
      this.writeState();
    } catch (e) {
      this.log.warn({ error: (e as Error).message, runDir: this.opts.runDir }, 'could not write state.json (meshctl will show ids, not names, while the agent is down)');
    }
    // After a large change, give the garbage of the sync back now rather than at the next allocation pressure.
    if (res.backendsWritten + res.backendsDeleted + res.frontendsWritten + res.frontendsDeleted >= LARGE_CHANGE) {
      setImmediate(() => { collectGarbage(); setTimeout(() => collectGarbage(), 1000).unref(); });
    }
    return null;
  }

  /**
   * The model as the kernel gets it: backends that are out (failed probe, ejection) at weight 0, except where a
   * frontend would have none left (panic: all kept, reported). Every apply goes through here, so a config reload
   * never brings an out backend back.
   */
  private effective(model: Model, scope?: ReadonlySet<string>): Model {
    const eff = effectiveModel(model, this.states, scope);
    const now = new Map<string, Panic[]>();
    for (const p of eff.panics) {
      const list = now.get(p.service);
      if (list) list.push(p); else now.set(p.service, [p]);
    }
    for (const name of scope ?? new Set([...this.panics.keys(), ...now.keys()])) {
      const was = this.panics.get(name)?.length ?? 0;
      const is = now.get(name);
      if (is && is.length > was) {
        this.log.warn({ service: name, frontends: is.map((p) => `${p.vip}:${p.port}/${p.protocol}`), backends: is[0]!.backends },
          'every backend of a frontend is out (health checks or ejections): panic, all are kept in the kernel slots');
      } else if (!is && was) {
        this.log.info({ service: name }, 'out of panic: some backends are healthy again');
      }
      if (is) this.panics.set(name, is); else this.panics.delete(name);
    }
    return eff.model;
  }

  /**
   * After a failed apply: a batch may have failed half way, so what the reconciler believes and what the kernel holds
   * differ. Read the kernel back (which also drops tables nothing points at) and put the last good model back in full.
   */
  private restoreLastGood(): void {
    this.needFullApply = true;
    try {
      const fresh = this.newReconciler();
      fresh.adopt();
      fresh.syncLocalAddresses();
      this.reconciler = fresh;
      if (this.model) {
        fresh.apply(this.effective(this.model));
        this.needFullApply = false;
      }
    } catch (again) {
      this.log.error({ error: (again as Error).message }, 'restoring the last good config failed too');
    }
  }

  /** A backend of `service` went out or came back: re-apply that service (bursts coalesced). */
  private statesChanged(service: string): void {
    this.statesPending.add(service);
    if (this.statesTimer) return;
    this.statesTimer = setTimeout(() => {
      this.statesTimer = undefined;
      const changed = this.statesPending;
      this.statesPending = new Set();
      this.applyStates(changed);
    }, STATES_COALESCE_MS);
  }

  private applyStates(changed: Set<string>): void {
    const r = this.reconciler;
    const model = this.model;
    if (!r || !model) return;
    const live = new Set(model.services.map((s) => s.name));
    const scope = new Set([...changed].filter((n) => live.has(n)));
    if (scope.size === 0) return;
    const full = this.needFullApply;
    try {
      const res = r.apply(this.effective(model, full ? undefined : scope), full ? undefined : scope);
      this.needFullApply = false;
      const out = [...scope].map((s) => ({ service: s, out: [...this.states.outOf(s)] }));
      this.log.info({ services: out, ...res }, 'backend states applied');
    } catch (e) {
      // The last good model is put back in full, with the current states (so this change is applied by it too).
      this.log.error({ error: (e as Error).message, services: [...scope] }, 'applying backend states to the kernel failed');
      this.restoreLastGood();
    }
  }

  backends(service?: string): BackendsReport {
    if (service !== undefined && !this.model?.services.some((s) => s.name === service)) {
      throw new AdminError(404, `no service named '${service}'`);
    }
    return backendsReport({ model: this.model, states: this.states, checker: this.checker, proxy: this.proxyReports }, service);
  }

  routes(service?: string): RoutesReport {
    const svc = service === undefined ? undefined : this.model?.services.find((s) => s.name === service);
    if (service !== undefined && !svc) throw new AdminError(404, `no service named '${service}'`);
    return routesReport(this.model, this.proxyReports, service);
  }

  /**
   * The reconciler's namesVersion() state.json was last written with: it holds the names and fixed facts only, so an
   * endpoint change does not rewrite it (10,000 names as JSON were ~1 MB of garbage per change).
   */
  private stateWritten?: { reconciler: Reconciler; version: number };

  /** Names and settings for meshctl to use while the agent is down (the kernel maps only hold ids). */
  private writeState(): void {
    const r = this.reconciler;
    const version = r?.namesVersion() ?? -1;
    if (r && this.stateWritten?.reconciler === r && this.stateWritten.version === version) return;
    mkdirSync(this.opts.runDir, { recursive: true, mode: 0o700 });
    const state = {
      pid: process.pid, bpffs: this.opts.bpffs, cgroup: this.opts.cgroup,
      services: Object.fromEntries(this.names()),
    };
    const file = join(this.opts.runDir, 'state.json');
    writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2));
    renameSync(`${file}.tmp`, file);
    this.stateWritten = r ? { reconciler: r, version } : undefined;
  }

  status(): StatusReport {
    const f = this.facts!;
    return {
      agent: {
        pid: process.pid, version: VERSION, startedAt: this.startedAt.toISOString(),
        uptimeSeconds: Math.round((Date.now() - this.startedAt.getTime()) / 1000),
        configSource: 'file' in this.opts.config ? `file:${this.opts.config.file}`
          : 'xds' in this.opts.config ? `xds:${this.opts.config.xds.address}` : `embedded:${this.opts.config.name}`,
        configVersion: this.configVersion, lastConfigError: this.lastConfigError, lastReconcile: this.lastReconcile,
        memory: process.memoryUsage(),
      },
      node: f,
      kernel: {
        cgroup2Root: cgroup2Root() ?? '', cgroup: this.opts.cgroup, bpffs: this.opts.bpffs, sockmap: this.opts.sockmap,
        features: this.features,
      },
      programs: this.programs,
      maps: this.reader!.fill(),
      controlPlane: this.xds?.status() ?? null,
      proxy: this.reader!.proxy(),
      health: {
        probed: this.checker?.size ?? 0, out: this.states.list().length,
        panics: [...this.panics.values()].reduce((n, l) => n + l.length, 0), metrics: this.metricsAddress,
      },
    };
  }

  /**
   * The proxy listens: tell the kernel now and every proxyHeartbeatMs. The beat runs on the proxy's event loop, so a
   * loop stalled for 3 intervals makes the kernel apply the fail modes until it recovers.
   */
  startProxyHeartbeat(): void {
    const dp = this.datapath;
    if (!dp?.l7 || this.heartbeatTimer) return;
    const beat = (): void => {
      try { dp.heartbeat(); } catch (e) { this.log.error({ error: (e as Error).message }, 'proxy heartbeat failed'); }
    };
    beat();
    this.heartbeatTimer = setInterval(beat, this.opts.proxyHeartbeatMs ?? 1000);
    this.heartbeatTimer.unref();
  }

  /** The proxy stopped listening: the fail modes apply from the next connect(), not after the timeout. */
  stopProxyHeartbeat(): void {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    try { this.datapath?.proxyDown(); } catch (e) { this.log.error({ error: (e as Error).message }, 'marking the proxy down failed'); }
  }

  /**
   * The workload of a client's cgroup id. Pods start after the config names them: an id not seen yet is looked up
   * (a walk of the workloads' cgroup directories) at its first request, whatever other ids did meanwhile: a global
   * rate limit left a pod started within a second of another lookup in no workload, out of reach of deny rules scoped
   * to its workload. An id found in none is remembered (a cgroup cannot move under a workload's path), so a client in
   * no workload costs one walk per config, not one per request; the misses are forgotten after 10 s all the same.
   */
  private readonly workloadOf = (cgroupId: bigint): string | undefined => {
    const w = this.workloadIds.get(cgroupId);
    if (w !== undefined || !this.model?.workloads?.length) return w;
    if (Date.now() - this.workloadsResolvedAt > 10_000) this.workloadMisses.clear();
    else if (this.workloadMisses.has(cgroupId)) return undefined;
    this.workloadIds = resolveWorkloads(this.model.workloads, this.cgroupRoot);
    this.workloadsResolvedAt = Date.now();
    const found = this.workloadIds.get(cgroupId);
    if (found === undefined) {
      if (this.workloadMisses.size >= 65_536) this.workloadMisses.clear();
      this.workloadMisses.add(cgroupId);
    }
    return found;
  };

  /** Listen for the connections the kernel redirects to the proxy, then start the heartbeat that lets it redirect. */
  private async startProxy(): Promise<void> {
    const dp = this.datapath!;
    if (!this.policy) return;
    const { opts, log } = this;
    const proxy = new ProxyServer({
      policy: this.policy,
      originalDst: (address, port) => dp.originalDst(address, port),
      log: log.child({ component: 'proxy' }),
    });
    const port = opts.proxyPort ?? 15001;
    const [v4, v6] = [opts.proxyV4 ?? '127.0.0.1', opts.proxyV6 ?? '::1'];
    // '' = no such listener (Node would take an empty host for every address of the machine)
    const hosts = [v4, v6].filter((h) => h !== '');
    for (const [i, host] of hosts.entries()) {
      try {
        await proxy.listen(port, [host]);
      } catch (e) {
        if (i === 0) {
          await proxy.close();
          log.error({ port, host, error: (e as Error).message }, 'the L7 proxy cannot listen: L7 services follow their fail mode');
          return;
        }
        // Without IPv6 on loopback (or with [v6]:port held by another process), v4 serves every client: the kernel is
        // told so, and IPv6 sockets reach the v4 listener v4-mapped. Left announced, the kernel would redirect them to
        // [v6]:port, to whoever listens there.
        log.warn({ port, host, error: (e as Error).message }, 'the L7 proxy listens on IPv4 only');
        if (this.proxySettings) {
          this.proxySettings = { ...this.proxySettings, v6: '' };
          dp.setProxy(this.proxySettings);
        }
      }
    }
    // The node addresses (pods' way in) after loopback: one that cannot be listened on is withdrawn from the kernel, so
    // pod clients get their fail mode rather than a connection to whatever holds that address:port.
    for (const key of ['nodeV4', 'nodeV6'] as const) {
      const host = this.proxySettings?.[key];
      if (!host) continue;
      try {
        await proxy.listen(port, [host]);
      } catch (e) {
        log.error({ port, host, error: (e as Error).message }, 'the L7 proxy cannot listen on its node address: clients in other network namespaces follow their fail mode');
        this.proxySettings = { ...this.proxySettings!, [key]: '' };
        dp.setProxy(this.proxySettings);
      }
    }
    this.proxy = proxy;
    log.info({ port, hosts: [v4, v6], nodeHosts: [this.proxySettings?.nodeV4 ?? '', this.proxySettings?.nodeV6 ?? ''] }, 'L7 proxy listening');
    this.startProxyHeartbeat();
  }

  /** Where a connection the proxy accepted from peerAddress:peerPort was going (taken out of the kernel: once). */
  originalDst(peerAddress: string, peerPort: number): OriginalDst | null {
    return this.datapath?.originalDst(peerAddress, peerPort) ?? null;
  }

  /** Re-read the config file now (SIGHUP); a no-op for other sources. */
  reload(): void {
    this.source?.reload();
  }

  /** Stop serving; the datapath keeps running from its pins. */
  async stop(): Promise<void> {
    this.source?.stop();
    await this.xds?.stop();
    this.checker?.close();
    clearTimeout(this.statesTimer);
    this.states.close();
    await this.metrics.close();
    this.ringbuf?.close();
    await this.admin?.stop();
    this.stopProxyHeartbeat();
    await this.proxy?.close();
    this.datapath?.close();
  }
}
