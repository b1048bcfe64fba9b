// The admin API's routes (agent/admin/protocol.ts lists them): each answers from what is in force (agent/state/), the
// kernel maps (MapReader), the flow events (observe/) and the proxy's live reports.
import type { Handler, StreamHandler } from './server.js';
import { AdminError } from './server.js';
import type { BackendsReport, ProgramReport, ProxyReportSource, RoutesReport, StatusReport, TunnelReport } from './protocol.js';
import { backendsReport, routesReport } from './backends.js';
import type { FrontendReport, MapReader } from '../datapath/inspect.js';
import type { Model } from '../model/types.js';
import { labelBackends, labelSockets, podNamesOf } from '../identity/podns.js';
import { cgroup2Root } from '../datapath/cgroup.js';
import type { HealthChecker } from '../health/checker.js';
import type { EventRing } from '../observe/events.js';
import { parseMonitorQuery } from '../observe/filter.js';
import type { MonitorHub } from '../observe/monitor.js';
import type { NodeFacts } from '../observe/node.js';
import type { XdsStatus } from '../sources/xds/source.js';
import type { KubeReport, KubeSourceStatus } from '../sources/kube.js';
import type { LiveState } from '../state/live.js';
import type { CertsReport } from '../identity/certs.js';

export interface AdminSources {
  state: LiveState;
  reader: MapReader;
  names: () => ReadonlyMap<number, string>;
  events: EventRing;
  checker?: HealthChecker;
  proxy: ProxyReportSource;
  status: StatusSources;
  /** the HBONE tunnels (agent/tunnel/); absent = this agent runs none (GET /v1/tunnels answers 404) */
  tunnels?: () => TunnelReport;
}

/** The fixed facts of this agent for /v1/status, and where its changing parts are read. */
export interface StatusSources {
  version: string;
  startedAt: Date;
  /** 'file:PATH', 'xds:HOST:PORT', 'embedded:NAME' */
  configSource: string;
  cgroup: string;
  bpffs: string;
  sockmap: boolean;
  features: Record<string, boolean>;
  programs: ProgramReport[];
  /** gathered when first asked (systeminformation spawns tools: not on the agent's start) */
  node: () => Promise<NodeFacts>;
  controlPlane: () => XdsStatus | null;
  /** the Kubernetes source (--kubernetes, --kube-pods); absent or null = none */
  kubernetes?: () => KubeSourceStatus | null;
  /** GET /v1/kubernetes: the source's status and what is not served; absent = not configured (404) */
  kubernetesReport?: () => KubeReport | null;
  metrics: () => string | null;
  /** GET /v1/certs: workload identities and their certificates; absent or null = not configured (404) */
  certs?: () => CertsReport | null;
}

export function adminRoutes(src: AdminSources): Record<string, Handler> {
  const { reader, names } = src;
  return {
    '/v1/status': async () => statusReport(src, await src.status.node()),
    // pods by name (the meshed cgroup tree's, agent/identity/podns.ts) and the fast-path connections per backend
    '/v1/services': () => labelBackends(withUpstream(reader.frontends(names()), src.state.model), sockets(reader), podNamesOf(src.status.cgroup, reader.n)),
    '/v1/stats': () => reader.stats(names()),
    '/v1/sockets': () => labelSockets(reader.sockets(), podNamesOf(src.status.cgroup, reader.n)),
    '/v1/events': () => src.events.recent(),
    '/v1/backends': (q) => backends(src, q.get('service') ?? undefined),
    '/v1/routes': (q) => routes(src, q.get('service') ?? undefined),
    '/v1/certs': () => {
      const r = src.status.certs?.() ?? null;
      if (!r) throw new AdminError(404, 'this agent has no workload certificates (--node-token-file)');
      return r;
    },
    '/v1/tunnels': () => {
      if (!src.tunnels) throw new AdminError(404, 'this agent runs no HBONE tunnel (no workload certificates)');
      return src.tunnels();
    },
    '/v1/kubernetes': () => {
      const r = src.status.kubernetesReport?.() ?? null;
      if (!r) throw new AdminError(404, 'this agent does not watch Kubernetes (--kubernetes or --kube-pods)');
      return r;
    },
  };
}

/** the model's upstream protocol on the L7 frontends (what the kernel's maps cannot tell) */
function withUpstream(frontends: FrontendReport[], model: Model | undefined): FrontendReport[] {
  const http = new Map((model?.services ?? []).map((s) => [s.name, s.http]));
  for (const f of frontends) {
    const h = http.get(f.service);
    if (f.l7 !== undefined && h !== undefined) f.upstreamProtocol = h.upstreamProtocol ?? 'downstream';
  }
  return frontends;
}

/** The SOCKHASH entries for the fast-path counts of /v1/services; none with --no-sockmap (no SOCKHASH pinned). */
function sockets(reader: MapReader): ReturnType<MapReader['sockets']> {
  try {
    return reader.sockets();
  } catch {
    return [];
  }
}

/** The streaming routes: GET /v1/monitor (see protocol.ts). A bad query is a 400 naming what is wrong. */
export function adminStreams(hub: MonitorHub): Record<string, StreamHandler> {
  return {
    '/v1/monitor': (q, out) => {
      let query;
      try {
        query = parseMonitorQuery(q);
      } catch (e) {
        throw new AdminError(400, (e as Error).message);
      }
      return hub.attach(query, out);
    },
  };
}

function backends(src: AdminSources, service?: string): BackendsReport {
  const model = src.state.model;
  if (service !== undefined && !model?.services.some((s) => s.name === service)) {
    throw new AdminError(404, `no service named '${service}'`);
  }
  return backendsReport({ model, states: src.state.states, checker: src.checker, proxy: src.proxy }, service);
}

function routes(src: AdminSources, service?: string): RoutesReport {
  const model = src.state.model;
  const svc = service === undefined ? undefined : model?.services.find((s) => s.name === service);
  if (service !== undefined && !svc) throw new AdminError(404, `no service named '${service}'`);
  return routesReport(model, src.proxy, service);
}

function statusReport(src: AdminSources, node: NodeFacts): StatusReport {
  const { state, reader, status: s } = src;
  return {
    agent: {
      pid: process.pid, version: s.version, startedAt: s.startedAt.toISOString(),
      uptimeSeconds: Math.round((Date.now() - s.startedAt.getTime()) / 1000),
      configSource: s.configSource,
      configVersion: state.configVersion, lastConfigError: state.lastConfigError, lastReconcile: state.lastReconcile,
      memory: process.memoryUsage(),
    },
    node,
    kernel: { cgroup2Root: cgroup2Root() ?? '', cgroup: s.cgroup, bpffs: s.bpffs, sockmap: s.sockmap, features: s.features },
    programs: s.programs,
    maps: reader.fill(),
    controlPlane: s.controlPlane(),
    kubernetes: s.kubernetes?.() ?? null,
    proxy: reader.proxy(),
    health: {
      probed: src.checker?.size ?? 0, out: state.states.list().length,
      panics: state.panicList().length, metrics: s.metrics(),
    },
  };
}
