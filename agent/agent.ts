// The agent: wiring only. It constructs the parts (the kernel, what is in force and its apply transaction, the health
// checker, the L7 proxy, the sources, the admin API, metrics), starts them in order and stops them in order.
import { createHash } from 'node:crypto';
import { closeSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, relative } from 'node:path';
import type { Model } from './model/types.js';
import { Datapath, type AttachReport } from './datapath/datapath.js';
import { MapReader } from './datapath/inspect.js';
import { native, type RingBufferSubscription } from './datapath/native.js';
import { cgroup2Root, cgroupOf, ownCgroupId } from './datapath/cgroup.js';
import { KernelReconciler, prepareHost } from './kernel.js';
import { FileSource } from './sources/file.js';
// The xDS client (gRPC, protobufjs: ~100 ms of CPU to load) and the Kubernetes source are imported only when the
// config comes from them: a file-configured agent, restarted after a crash, serves sooner without them (issue 14).
import type { XdsSource } from './sources/xds/source.js';
import type { KubeSource, CgroupDriver, KubeAccess } from './sources/kube.js';
import { AdminServer } from './admin/server.js';
import { adminRoutes, adminStreams } from './admin/routes.js';
import type { ProxyReportSource } from './admin/protocol.js';
import { HealthChecker } from './health/checker.js';
import { ProxyPolicy } from './proxy/policy.js';
import { ProxyHost } from './proxyhost.js';
import { HANDOVER_SOCKET, HandoverServer, requestHandover, writeHandoverModel, type Offer, type TakeOver } from './handover.js';
import { discoverPods, podGatewayAddress } from './identity/podns.js';
import { LocalPods, ProcPodScanner, ProcPodWatcher } from './identity/pods.js';
import { LiveState } from './state/live.js';
import { ApplyTransaction } from './state/apply.js';
import { StateFileWriter } from './state/statefile.js';
import { Registry } from './observe/prom.js';
import { AgentMetrics, readKernelCounters } from './observe/metrics.js';
import { EventRing, decodeFlowEvent, monotonicEpochMs } from './observe/events.js';
import { nodeFactsOnce } from './observe/node.js';
import { MonitorHub } from './observe/monitor.js';
import type { Logger } from './observe/log.js';
import { startCertManager, wantedIdentities, type IdentityWiring } from './certwiring.js';
import type { CertManager } from './identity/certs.js';
// (imported when a tunnel is configured, after the proxy serves: its six files and node:tls are not a start's business)
import type { TunnelHost } from './tunnelhost.js';
import type { TunnelHandover } from './tunnelhandover.js';
import type { ProxyTunnel } from './proxytunnel.js';
import { startPhase } from './starttrace.js';

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

/** The Kubernetes API as the agent uses it (agent/main.ts builds it from the kubeconfig). */
export interface KubeWiring {
  access: KubeAccess;
  /** this node's name (--node-id) */
  nodeName: string;
  trustDomain: string;
  /** the kubelet's cgroup driver, where the meshed cgroup's name does not tell it (kube/pods.ts kubeletCgroups) */
  cgroupDriver: CgroupDriver;
  /** the API server's URL, for status */
  server: string;
}

export interface AgentOptions {
  cgroup: string;
  bpffs: string;
  runDir: string;
  /** a file to watch, an xDS control plane, or an embedded model (the default demo config) */
  config: { file: string } | { embedded: Model; name: string } | { xds: XdsConfig } | { kubernetes: KubeWiring };
  /** with xds: this node's pods from the API server (addresses for the fast path) */
  kubePods?: KubeWiring;
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
  /** how often the meshed cgroup tree is scanned for pods (network namespaces and their addresses); default 250, 0 = never */
  podScanMs?: number;
  /**
   * After handing over to a new agent (a planned restart): how long connections still open may take to finish
   * (default 30 s); what is left then is cut.
   */
  drainTimeoutMs?: number;
  /**
   * certificates from the control plane's CA (--node-token-file): the node's own and its workloads'; with them the
   * HBONE tunnel (agent.tunnel: the server where the model's nodes[] names this node, the client pool the kernel's
   * cross-node hand-over opens streams on); absent = neither
   */
  identity?: IdentityWiring;
  /** the tunnel hand-over's port (--tunnel-handover-port; default HANDOVER_PORT, 15007), on the proxy's addresses */
  tunnelHandoverPort?: number;
}

/** What the old agent of a planned restart reports once it drained. */
export interface Drained { drainMs: number; left: number }

/** A new pod is on the fast path within this of its first address (and a deleted one's addresses are gone). */
export const POD_SCAN_MS = 250;
/** a planned restart's wait for the new HBONE server (its node certificate from the CA) before the running agent lets go */
const HBONE_TAKEOVER_WAIT_MS = 10_000;

export class Agent {
  /** what is in force: the model, its version, the last error, backend states, panics, workload identities */
  readonly state = new LiveState(cgroup2Root() ?? '/sys/fs/cgroup');
  /** the one Prometheus registry of this agent: the proxy policy registers its L7 families here too */
  readonly registry = new Registry();
  private datapath?: Datapath;
  private kernel?: KernelReconciler;
  /** the pods on this node (the fast path pairs sockets whose peer address is one of theirs or the node's) */
  readonly pods = new LocalPods();
  private podWatcher?: ProcPodWatcher;
  private transaction?: ApplyTransaction;
  private checker?: HealthChecker;
  /** the L7 proxy's listeners and heartbeat, once the datapath is attached */
  private proxy?: ProxyHost;
  /** without --proxy-node-address: follows the node address the pods route to (every second) */
  private nodeTimer?: NodeJS.Timeout;
  private source?: FileSource;
  private xds?: XdsSource;
  /** the control plane's last model in force, without this node's pods (--kube-pods adds them: reapplyWithPods) */
  private xdsModel?: Model;
  private kube?: KubeSource;
  private admin?: AdminServer;
  /** serves <runDir>/handover.sock: a new agent takes this one's sockets over there (agent/handover.ts) */
  private handover?: HandoverServer;
  /** set once a new agent took over: stop() then never marks the proxy down (the record is the new agent's) */
  private handedOver = false;
  private servingStopped = false;
  private drainedResolve?: (d: Drained) => void;
  /** resolves when this agent handed over to a new one and drained (the process should exit 0 then) */
  readonly drained = new Promise<Drained>((r) => { this.drainedResolve = r; });
  private readonly events = new EventRing();
  /** this node's workload certificates (the tunnel reads them), with --node-token-file */
  certs?: CertManager;
  /** the live monitor's readers (GET /v1/monitor); set up with the datapath */
  private monitor?: MonitorHub;
  private ringbuf?: RingBufferSubscription;
  /** the HBONE server and client pool (with opts.identity), once started: kernel13's hand-over calls tunnel.client.open() */
  tunnel?: TunnelHost;
  /** the kernel's hand-over of cross-node connections to the tunnel (with the tunnel: opts.identity) */
  private tunnelHandover?: TunnelHandover;
  /** the L7 proxy's upstreams to other nodes through the tunnel (with the tunnel hand-over's conditions) */
  private proxyTunnel?: ProxyTunnel;
  private readonly stateFile: StateFileWriter;
  private readonly startedAt = new Date();
  private metricsAddress: string | null = null;
  private readonly metrics = new AgentMetrics({
    kernel: () => (this.datapath && this.kernel ? readKernelCounters(native(), (m) => this.datapath!.maps.fd(m), this.kernel.names()) : undefined),
    model: () => this.state.model,
    states: this.state.states,
    checker: () => this.checker,
    panics: () => this.state.panicList(),
  }, this.registry);

  constructor(readonly opts: AgentOptions, private readonly log: Logger) {
    this.stateFile = new StateFileWriter({ runDir: opts.runDir, bpffs: opts.bpffs, cgroup: opts.cgroup, log });
  }

  /** Check the kernel, load and attach, apply the config, serve the admin API. */
  async start(): Promise<void> {
    const { opts, log } = this;
    const { root, features, l7Missing } = prepareHost(opts);
    startPhase('host checked, kernel features probed');
    // A planned restart: an agent running on this run directory hands its sockets over (null: none runs). Until the
    // commit below nothing changes for it; if this start fails, it serves on (our end of its socket closes).
    const taken = requestHandover(opts.runDir, { version: VERSION, log });
    startPhase('handover asked');
    if (taken) log.info({ from: taken.from, listeners: taken.proxy?.listeners.map((l) => `${l.host}:${l.port}`) ?? [] }, 'handover: took the running agent\'s sockets; starting next to it');
    try {
      await this.startWith(taken, root, features, l7Missing);
    } catch (e) {
      taken?.abort();
      throw e;
    }
  }

  private async startWith(taken: TakeOver | null, root: string, features: ReturnType<typeof prepareHost>['features'], l7Missing: string[]): Promise<void> {
    const { opts, log } = this;

    // The config is validated before anything touches the kernel: a bad file at start changes nothing.
    // With a control plane there is no model yet: the kernel keeps what it has until the first complete sync.
    let model: Model | undefined;
    if ('file' in opts.config) {
      const file = opts.config.file;
      this.source = new FileSource(file, {
        // the text's digest in the log line: which version of the file is in force (sha256sum of the file, first 12)
        onModel: (m, text) => this.transaction ? this.transaction.apply(m, 'file change', undefined, { sha256: createHash('sha256').update(text).digest('hex').slice(0, 12) }) : 'the datapath is not loaded',
        onError: (e) => {
          this.state.rejected(e.message);
          log.error({ file, error: e.message }, 'config rejected; the last good config stays in force');
        },
      });
      model = this.source.start();
    } else if ('embedded' in opts.config) {
      model = opts.config.embedded;
    } else if ('kubernetes' in opts.config) {
      this.kube = await this.kubeSource('direct', opts.config.kubernetes, root);
      model = this.kube.cached();
    } else if (taken?.model) {
      // a control plane's config: the running agent's, until our first sync (handover.ts)
      model = taken.model;
      log.info({ services: model.services.length }, 'handover: starting from the running agent\'s model until the control plane is synced');
    }
    if (opts.kubePods) {
      if (!('xds' in opts.config)) throw new Error('--kube-pods goes with --xds (with --kubernetes the agent watches its pods anyway)');
      this.kube = await this.kubeSource('pods', opts.kubePods, root);
    }

    startPhase('config read');
    if (l7Missing.length) log.warn({ missing: l7Missing }, 'no L7 redirect on this kernel: L7 services are balanced at L4 (fail open) or refused (fail closed)');
    const dp = new Datapath({
      bpffs: opts.bpffs, cgroup: opts.cgroup, sockmap: opts.sockmap, eventSample: opts.eventSample, l7: l7Missing.length === 0,
    });
    dp.load();
    startPhase('BPF objects loaded');
    dp.configure();
    this.datapath = dp;
    const kernel = (this.kernel = new KernelReconciler(dp, log));
    const adopted = kernel.adopt();
    // Before the first apply: other nodes' workloads get their tunnel flag with the backends that name them.
    // (the tunnel comes with the certificates: opts.identity)
    const handoverNode = opts.identity?.nodeId;
    if (handoverNode && dp.l7) kernel.setNodeId(handoverNode);
    if (adopted.frontends || adopted.backends) log.info(adopted, 'adopted the datapath state a previous agent left pinned');
    startPhase('pinned state adopted');
    this.watchPods(kernel, opts.podScanMs ?? POD_SCAN_MS);
    const checker = (this.checker = new HealthChecker(this.state.states, {
      log: log.child({ component: 'health' }),
      onProbe: (service, _backend, result) => this.metrics.probed(service, result.healthy),
    }));
    // The L7 proxy's policy follows every applied model (none without the L7 redirect).
    const reader = MapReader.fromFds(dp.maps.fds);
    const monitor = (this.monitor = new MonitorHub({
      sample: opts.eventSample, kernelCounters: () => reader.globals(), cgroup2Root: root, meshedCgroup: opts.cgroup,
      workloadOf: this.state.identities.of,
    }));
    this.watchForMonitor(monitor);
    // With the tunnel (certificates and a node id), the proxy's upstreams to backends on other nodes go through it, as
    // the client's identity (proxytunnel.ts), chosen as the kernel chooses the pods' own connections.
    const proxyTunnel = handoverNode && opts.identity && dp.l7 ? await import('./proxytunnel.js') : undefined;
    const policy = dp.l7
      ? new ProxyPolicy({ states: this.state.states, log: log.child({ component: 'proxy' }), registry: this.registry, tap: {
        get active() { return monitor.active; },
        request: (e) => monitor.publish(e),
      }, ...(proxyTunnel ? { tunnel: proxyTunnel.proxyTunnelDecider(handoverNode!, () => kernel.localSet()) } : {}) })
      : undefined;
    this.proxyTunnel = proxyTunnel ? new proxyTunnel.ProxyTunnel({
      client: () => this.tunnel?.client, peer: (n, f) => this.tunnel?.peer(n, f), registry: this.registry, log: log.child({ component: 'proxy' }),
    }) : undefined;
    if (opts.identity) this.certs = await startCertManager(opts.identity, this.registry, log);
    this.transaction = new ApplyTransaction({
      state: this.state, kernel, policy, log,
      committed: (m, scope) => {
        // Probes follow the model (new backends start, removed ones stop and are forgotten by BackendStates).
        checker.update(m, scope);
        if (!scope) this.metrics.retain(new Set(m.services.map((s) => s.name)));
        else this.metrics.forgetRemoved(scope, m.services);
        this.certs?.setIdentities(wantedIdentities(m, opts.identity!, log));
        this.tunnel?.update(m);
        this.stateFile.write(kernel.namesSnapshot());
      },
    });
    if (model && !('file' in opts.config) && !('embedded' in opts.config)) {
      // a previous agent's model (the kube cache; the running agent's, handed over): refused, it is dropped, the first sync brings the state
      try {
        this.transaction.first(model);
      } catch (e) {
        if ('xds' in opts.config) log.warn({ error: (e as Error).message }, 'handover: the running agent\'s model was refused; waiting for the control plane');
        else log.warn({ error: (e as Error).message }, 'kubernetes: the last applied model was refused; waiting for the API server');
      }
    } else if (model) this.transaction.first(model);
    startPhase('first apply');
    // The proxy counts as down until it listens: L7 services follow their fail mode meanwhile.
    // Clients in pods reach the proxy on a node address: the one given (--proxy-node-address), else the one the pods'
    // routes go to (their gateway or host route, when it is an address of the node: a CNI's host-side veth or bridge
    // address), found now and followed every second (a pod started later, a node address that changes).
    const found = !opts.proxyNodeV4 && !opts.proxyNodeV6 && policy ? this.podNodeAddress() : undefined;
    if (found && (found.v4 || found.v6)) log.info({ nodeV4: found.v4 || null, nodeV6: found.v6 || null }, 'L7 proxy: the node address pods route to');
    const from = policy ? taken?.proxy : undefined;
    if (from && opts.proxyPort !== undefined && opts.proxyPort !== from.port) {
      log.warn({ asked: opts.proxyPort, port: from.port }, 'handover: the proxy keeps the running agent\'s port (a different one would close its listeners)');
    }
    if (policy) {
      this.proxy = new ProxyHost(dp, policy, {
        ...(from
          ? { port: from.port, v4: from.v4, v6: from.v6, nodeV4: from.nodeV4, nodeV6: from.nodeV6, takeover: from.listeners }
          : { port: opts.proxyPort, v4: opts.proxyV4, v6: opts.proxyV6, nodeV4: opts.proxyNodeV4 ?? found?.v4, nodeV6: opts.proxyNodeV6 ?? found?.v6 }),
        heartbeatMs: opts.proxyHeartbeatMs, cgroupId: ownCgroupId(root),
        // Run inside the meshed cgroup (a child of it), the proxy's accepted sockets join the fast path too.
        inMesh: cgroupOf(process.pid, root).startsWith(`${opts.cgroup.replace(/\/+$/, '')}/`),
        ...(this.proxyTunnel ? { tunnel: this.proxyTunnel.connect } : {}),
      }, log);
      this.proxy.announce();
    }
    // Programs go in after the maps hold the config, so the first connect() is already balanced.
    const programs: AttachReport[] = dp.attach();
    startPhase('programs attached');
    const epoch = monotonicEpochMs();
    this.ringbuf = native().ringbufSubscribe(dp.maps.fd('sm_events'), (rec) => {
      const ev = decodeFlowEvent(rec, kernel.names(), epoch);
      // meshctl events keeps the balancing decisions; the fast path's events go to the monitor only
      if (ev.local === undefined) this.events.push(ev);
      monitor.flow(ev);
      log.debug({ event: ev }, 'flow');
    });
    // The proxy first: a restarted agent serves L7 again as soon as it can.
    await this.proxy?.start();
    startPhase('L7 proxy listening (serving)');
    if (opts.identity && this.certs) {
      // HBONE: on wherever the model's nodes[] names this node (tunnelhost.ts), presenting the node's own identity;
      // on the running agent's 15008 sockets in a planned restart
      const { TunnelHost } = await import('./tunnelhost.js');
      this.tunnel = new TunnelHost({
        certs: this.certs, identity: opts.identity.nodeIdentity, nodeName: opts.identity.nodeId, pods: this.pods, registry: this.registry, log,
        ...(taken?.tunnelServer.length ? { takeover: taken.tunnelServer } : {}),
      });
      if (this.state.model) this.tunnel.update(this.state.model);
      await this.tunnel.start();
    }
    if (taken?.tunnelServer.length && !this.tunnel) for (const l of taken.tunnelServer) closeSync(l.fd);
    if (taken) {
      // The running agent serves 15008 until ours does (its certificate may still be on its way): one of the two
      // accepts throughout. Bounded: past it, SYNs wait in the socket's queue for our server.
      if (this.tunnel && taken.tunnelServer.length && !(await this.tunnel.whenListening(HBONE_TAKEOVER_WAIT_MS))) {
        log.warn({ waitedMs: HBONE_TAKEOVER_WAIT_MS, state: this.tunnel.state }, 'handover: our HBONE server is not up yet; taking over anyway (connections to 15008 wait in its queue)');
      }
      // We accept and beat now: the old agent stops accepting, beating and serving, and drains.
      const t0 = performance.now();
      const released = taken.commit();
      log.info({ from: taken.from, released, handoverMs: Math.round(performance.now() - t0) }, 'handover: the old agent let go');
    }
    if (found) this.followPodNodeAddress();
    // (the host name systeminformation reports is os.hostname() too)
    if ('xds' in opts.config) await this.startXds(opts.config.xds, hostname());
    this.kube?.start();

    // The kernel's hand-over of cross-node connections to the tunnel, on the proxy's addresses (agent/tunnelhandover.ts).
    const proxyListeners = this.proxy?.handover()?.listeners;
    if (this.tunnel && handoverNode && proxyListeners) {
      const [{ TunnelHandover }, { listenInMesh }] = await Promise.all([import('./tunnelhandover.js'), import('./datapath/meshsocket.js')]);
      this.tunnelHandover = new TunnelHandover({
        dp, opener: this.tunnel.client, hosts: proxyListeners.map((l) => l.host), peer: (n, f) => this.tunnel?.peer(n, f),
        listenFd: (host, port) => listenInMesh(opts.cgroup, host, port),
        port: opts.tunnelHandoverPort,
        ...(taken?.tunnelHandover ? { takeover: taken.tunnelHandover.listeners } : {}),
        identityOf: (id) => { const w = this.state.identities.of(id); return w === undefined ? undefined : this.state.model?.workloads?.find((x) => x.name === w)?.identity; },
        model: () => this.state.model, registry: this.registry, log: log.child({ component: 'tunnel-handover' }),
      });
      await this.tunnelHandover.start();
    }
    // the running agent's hand-over listeners, and this agent hands nothing over: closed, or the kernel would keep
    // sending connections to sockets nobody accepts on (closed, they leave sm_proxy_socks: direct, or refused if strict)
    if (taken?.tunnelHandover && !this.tunnelHandover) for (const l of taken.tunnelHandover.listeners) closeSync(l.fd);
    const proxyReports: ProxyReportSource = policy ? { backends: () => policy.backendsReport(), routes: () => policy.routesReport() } : {};
    this.admin = new AdminServer(join(opts.runDir, 'admin.sock'), adminRoutes({
      state: this.state, reader, names: () => kernel.names(), events: this.events, checker, proxy: proxyReports,
      ...(this.tunnel ? { tunnels: () => ({ ...this.tunnel!.report(), handover: this.tunnelHandover?.report(), proxy: this.proxyTunnel?.report() }) } : {}),
      status: {
        version: VERSION, startedAt: this.startedAt, configSource: configSource(opts.config),
        cgroup: opts.cgroup, bpffs: opts.bpffs, sockmap: opts.sockmap, features, programs, node: nodeFactsOnce(),
        controlPlane: () => this.xds?.status() ?? null,
        kubernetes: () => this.kube?.status() ?? null,
        kubernetesReport: () => this.kube?.report() ?? null,
        metrics: () => this.metricsAddress,
        certs: () => this.certs?.report() ?? null,
      },
    }), log, adminStreams(monitor));
    await this.admin.start(taken?.adminFd);
    this.handover = new HandoverServer({
      path: join(opts.runDir, HANDOVER_SOCKET), log: log.child({ component: 'handover' }),
      offer: () => this.offer(), release: () => this.release(), released: () => void this.drainAfterHandover(),
    });
    await this.handover.start(taken?.handoverFd);
    if (taken?.metricsFd !== undefined) {
      this.metricsAddress = await this.metrics.listen('', 0, log, taken.metricsFd);
      log.info({ address: this.metricsAddress }, 'metrics endpoint listening (taken over)');
    } else if (opts.metricsListen) {
      // Metrics are for looking at the datapath, not part of it: a port already taken is an error in the log, and the
      // agent keeps serving (a restarting agent must not leave the node without its datapath over a port).
      try {
        this.metricsAddress = await this.metrics.listen(opts.metricsListen.host, opts.metricsListen.port, log);
        log.info({ address: this.metricsAddress }, 'metrics endpoint listening');
      } catch (e) {
        log.error({ listen: `${opts.metricsListen.host}:${opts.metricsListen.port}`, error: (e as Error).message }, 'the metrics endpoint could not be started; the agent runs without it');
      }
    }
    startPhase('admin, handover and metrics listening');
    log.info({
      cgroup: opts.cgroup, bpffs: opts.bpffs, admin: this.admin.socketPath,
      programs: programs.map((p) => `${p.program}:${p.how}`).join(' '),
    }, 'datapath ready');
  }

  /**
   * Apply a validated model (only the services named in `changed`, when given), as the sources do: null when it is in
   * force, else why not (the last good config stays). See ApplyTransaction.
   */
  applyModel(model: Model, why: string, changed?: ReadonlySet<string>): string | null {
    if (!this.transaction) return 'the datapath is not loaded';
    return this.transaction.apply(model, why, changed);
  }

  /** Follow the pods of the meshed cgroup tree into sm_local_addrs (before the programs are attached). */
  private watchPods(kernel: KernelReconciler, intervalMs: number): void {
    const log = this.log.child({ component: 'pods' });
    const sync = (): void => {
      try {
        const changed = kernel.syncLocal(this.pods.addresses());
        if (changed) log.debug({ changed, addresses: this.pods.addresses().size }, 'local addresses');
      } catch (e) {
        log.warn({ error: (e as Error).message }, 'could not write the local addresses');
      }
    };
    this.pods.onChange(sync);
    if (intervalMs <= 0) return;
    this.podWatcher = new ProcPodWatcher(new ProcPodScanner(this.opts.cgroup), this.pods, {
      intervalMs, afterScan: sync, onError: (e) => log.warn({ error: e.message }, 'pod scan failed'),
    });
    this.podWatcher.start();
  }

  private async kubeSource(mode: 'direct' | 'pods', k: KubeWiring, cgroup2: string): Promise<KubeSource> {
    const { KubeSource, kubeletCgroups } = await import('./sources/kube.js');
    return new KubeSource({
      mode, nodeName: k.nodeName, trustDomain: k.trustDomain, access: k.access,
      kubelet: kubeletCgroups(`/${relative(cgroup2, this.opts.cgroup)}`, k.cgroupDriver),
      log: this.log.child({ source: 'kubernetes' }),
      apply: (model, changed) => this.applyModel(model, 'kubernetes', changed),
      // the node's pods from the API server, beside the ones the /proc walk finds (an address is local while either names it)
      onPods: (pods) => this.pods.set('kubernetes', pods),
      onWorkloads: () => this.reapplyWithPods(),
      cacheFile: join(this.opts.runDir, 'kubernetes-model.json'),
    });
  }

  /**
   * --kube-pods: this node's pods as workloads changed: the control plane's model again, with them. The services with
   * authz are named changed: the proxy resolves identities in their `from` to workloads when it compiles them.
   */
  private reapplyWithPods(): void {
    const m = this.xdsModel;
    if (!m || !this.kube) return;
    this.applyModel(this.kube.withPodWorkloads(m), 'kubernetes pods', new Set(m.services.filter((s) => s.http?.authz).map((s) => s.name)));
  }

  private async startXds(cfg: XdsConfig, hostname: string): Promise<void> {
    const { XdsSource } = await import('./sources/xds/source.js');
    this.xds = new XdsSource({
      address: cfg.address,
      tls: cfg.caFile ? { caFile: cfg.caFile, serverName: cfg.serverName } : undefined,
      mode: cfg.mode,
      node: {
        id: cfg.nodeId, cluster: cfg.cluster, locality: cfg.locality,
        metadata: { node_name: hostname, agent_version: VERSION, cgroup: this.opts.cgroup },
      },
      log: this.log.child({ source: 'xds' }),
      apply: (model: Model, changed?: ReadonlySet<string>) => {
        const err = this.applyModel(this.kube ? this.kube.withPodWorkloads(model) : model, 'xds', changed);
        if (err === null) this.xdsModel = model;
        return err;
      },
      onNack: (n) => this.monitor?.publish({
        type: 'config', kind: 'nack', verdict: 'nack', time: new Date().toISOString(), error: n.reason, typeUrl: n.typeUrl,
        resourceVersion: n.version,
      }),
    });
    this.xds.start();
  }

  /** The node address the meshed cgroup's pods route to, per family ('' = none found). */
  private podNodeAddress(): { v4: string; v6: string } {
    try {
      return podGatewayAddress(discoverPods(this.opts.cgroup));
    } catch (e) {
      this.log.warn({ error: (e as Error).message }, 'could not read the pods\' routes');
      return { v4: '', v6: '' };
    }
  }

  private followPodNodeAddress(): void {
    let busy = false;
    this.nodeTimer = setInterval(() => {
      if (busy || !this.proxy) return;
      busy = true;
      void this.followNode(this.proxy, this.podNodeAddress()).catch((e: Error) => this.log.error({ error: e.message }, 'following the pods\' node address failed'))
        .finally(() => { busy = false; });
    }, 1000);
    this.nodeTimer.unref();
}

  /**
   * The proxy to a new node address, the tunnel hand-over with it: the hand-over listens there before the proxy's
   * record sends clients there, and stops listening on the old one after (its accepted connections go on).
   */
  private async followNode(proxy: ProxyHost, node: { v4: string; v6: string }): Promise<void> {
    const th = this.tunnelHandover;
    if (th) await th.follow([...th.hosts(), node.v4, node.v6].filter(Boolean));
    await proxy.followNode(node);
    const hosts = proxy.handover()?.listeners.map((l) => l.host);
    if (th && hosts) await th.follow(hosts);
  }

  /** Health and config changes for the live monitor (built only while a reader is attached). */
  private watchForMonitor(monitor: MonitorHub): void {
    const now = (): string => new Date().toISOString();
    this.state.states.onChange((service, backend) => {
      if (!monitor.active) return;
      const s = this.state.states.get(service, backend);
      const out = this.state.states.isOut(service, backend);
      const reason = s?.ejection ? `ejected: ${s.ejection.reason}` : s?.probe ? `health check: ${s.probe.reason}` : '';
      monitor.publish({ type: 'health', kind: out ? 'out' : 'in', verdict: out ? 'out' : 'in', time: now(), service, backend, reason });
    });
    this.state.watch((c) => {
      if (!monitor.active) return;
      if (c.verdict === 'applied') monitor.publish({ type: 'config', kind: 'applied', verdict: 'applied', time: now(), version: c.version, why: c.why });
      else monitor.publish({ type: 'config', kind: 'rejected', verdict: 'rejected', time: now(), error: c.error });
    });
  }

  /** Re-read the config file now (SIGHUP); a no-op for other sources. */
  reload(): void {
    this.source?.reload();
  }

  /** What a new agent takes over: the proxy's listeners, then the admin, handover and metrics sockets (handover.ts). */
  private offer(): Offer {
    const proxy = this.proxy?.handover();
    const admin = this.admin?.fd(), handover = this.handover?.fd(), metrics = this.metrics.fd();
    if (admin === undefined || handover === undefined) throw new Error('the admin or handover socket is not listening');
    const { listeners, ...settings } = proxy ?? { listeners: [] };
    const tunnel = this.tunnelHandover?.listeners() ?? [];
    const hbone = this.tunnel?.listeners() ?? [];
    return {
      message: {
        type: 'offer', pid: process.pid, version: VERSION,
        proxy: proxy ? { ...(settings as Omit<typeof proxy, 'listeners'>), listeners: listeners.map(({ host, port }) => ({ host, port })) } : null,
        metrics: metrics === undefined ? null : this.metricsAddress,
        model: this.state.model ? writeHandoverModel(this.opts.runDir, this.state.model) : null,
        tunnelHandover: tunnel.length ? { port: tunnel[0]!.port, listeners: tunnel.map(({ host, port }) => ({ host, port })) } : null,
        tunnelServer: hbone.length ? { listeners: hbone.map(({ host, port }) => ({ host, port })) } : null,
      },
      fds: [...listeners.map((l) => l.fd), admin, handover, ...(metrics === undefined ? [] : [metrics]), ...tunnel.map((l) => l.fd), ...hbone.map((l) => l.fd)],
    };
  }

  /**
   * The new agent accepts on our listeners and beats: stop everything but the connections under way. Nothing is
   * unlinked (the sockets' files are the new agent's now) and the proxy is never marked down.
   */
  private async release(): Promise<void> {
    this.handedOver = true;
    await this.stopServing(false);
    // The HBONE server stops accepting (the new agent accepts on the same 15008 sockets); its sessions get GOAWAY and
    // their streams finish; the client pool stays for the streams this agent carries.
    await this.tunnel?.stopServer();
  }

  private async drainAfterHandover(): Promise<void> {
    const t0 = performance.now();
    const timeoutMs = this.opts.drainTimeoutMs ?? 30_000;
    // the proxy's connections and the tunnelled ones this agent carries, side by side
    const [proxied, tunnelled] = await Promise.all([this.proxy?.drain(timeoutMs), this.tunnelHandover?.drain(timeoutMs)]);
    const left = (proxied?.left ?? 0) + (tunnelled?.left ?? 0);
    this.datapath?.close();
    const drainMs = Math.round(performance.now() - t0);
    this.log.info({ drainMs, left }, left ? 'drain timeout: the connections left were closed' : 'drained: every connection finished');
    this.drainedResolve?.({ drainMs, left });
  }

  /** Stop serving; the datapath keeps running from its pins. */
  async stop(): Promise<void> {
    await this.stopServing(true);
    if (this.handedOver) {
      // stopped while draining: what is left is cut, the record stays the new agent's
      await this.proxy?.drain(0);
    } else {
      // The proxy stopped listening: the fail modes apply from the next connect(), not after the timeout.
      await this.proxy?.stop();
    }
    this.datapath?.close();
  }

  /** Everything but the proxy and the datapath; unlink: remove the admin and handover sockets' files. */
  private async stopServing(unlink: boolean): Promise<void> {
    if (this.servingStopped) return;
    this.servingStopped = true;
    // stop accepting hand-overs (handed over: the new agent accepts on the same sockets)
    this.tunnelHandover?.close();
    clearInterval(this.nodeTimer);
    this.source?.stop();
    this.podWatcher?.stop();
    await this.xds?.stop();
    await this.kube?.stop();
    this.certs?.stop();
    this.checker?.close();
    this.transaction?.close();
    this.state.close();
    await this.metrics.close();
    this.ringbuf?.close();
    this.monitor?.close();
    await this.admin?.stop(unlink && !this.handedOver);
    await this.handover?.close(unlink && !this.handedOver);
    await this.tunnel?.stop();
  }
}

function configSource(config: AgentOptions['config']): string {
  if ('kubernetes' in config) return `kubernetes:${config.kubernetes.server}`;
  return 'file' in config ? `file:${config.file}` : 'xds' in config ? `xds:${config.xds.address}` : `embedded:${config.name}`;
}
