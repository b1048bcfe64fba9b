// The admin protocol between the agent and meshctl: HTTP/1.1 over a unix socket (mode 0600), JSON bodies.
//   GET /v1/status    StatusReport
//   GET /v1/services  FrontendReport[]
//   GET /v1/stats     StatsReport
//   GET /v1/sockets   SocketReport[]
//   GET /v1/events    FlowEvent[] (most recent sampled flow events)
//   GET /v1/backends  BackendsReport (?service=NAME for one): in or out of service, why and since when
//   GET /v1/routes    RoutesReport (?service=NAME for one): the L7 routes with the proxy's live numbers
//   GET /v1/kubernetes KubeReport: the Kubernetes source's watches and the services it does not serve (404 without
//                     --kubernetes or --kube-pods)
//   GET /v1/tunnels   TunnelReport: the HBONE tunnels to and from other nodes (404 when the agent runs none)
//   GET /v1/monitor   a stream, one JSON object per line, until the client closes it: MonitorEvent and, at the start
//                     and every summaryMs, MonitorSummary. Query (MonitorQuery): service, pod, cgroup, type, verdict
//                     (repeatable or comma-separated), rate (events/s, 0 = no limit), summaryMs. A reader that falls
//                     behind loses lines (counted in its next summary: slowReader); it never slows the agent.
// Errors: a non-2xx status with { error: string }.
import type { FrontendReport, KernelProxyReport, SocketReport, StatsReport } from '../datapath/inspect.js';
import type { XdsStatus } from '../sources/xds/source.js';
import type { KubeReport, KubeSourceStatus, Unserved } from '../sources/kube.js';
import type { CircuitBreaker, HealthCheck, StringMatch, UpstreamProtocol, WeightedGroup } from '../model/l7.js';
import type { ProbeReport } from '../health/checker.js';
import type { FlowEvent } from '../observe/events.js';
import type { L7Event, MonitorEvent, MonitorQuery, MonitorSummary } from '../observe/filter.js';
import type { StateFile } from '../state/statefile.js';
export type { KubeReport, KubeSourceStatus, Unserved };
export type { CertReport, CertsReport } from '../identity/certs.js';
export type { FlowEvent, L7Event, MonitorEvent, MonitorQuery, MonitorSummary, FrontendReport, KernelProxyReport, SocketReport, StateFile, StatsReport };

/** Where the proxy hands its finished requests to the live monitor: `active` is read before an event is built. */
export interface RequestTap {
  readonly active: boolean;
  request(e: L7Event): void;
}

/** Where an agent instance pins its maps and links unless told otherwise (sockmesh-agent and meshctl --bpffs). */
export const DEFAULT_BPFFS = '/sys/fs/bpf/sockmesh';
export const DEFAULT_RUN_DIR = '/run/sockmesh';

export interface ProgramReport { program: string; attachType: string; how: 'attached' | 'adopted' | 'detached' }

export interface StatusReport {
  agent: { pid: number; version: string; startedAt: string; uptimeSeconds: number; configSource: string; configVersion: number;
    lastConfigError: string | null; lastReconcile: { at: string; ms: number } | null;
    /** process.memoryUsage() of the agent: rss, heapTotal, heapUsed, external, arrayBuffers (bytes) */
    memory?: { rss: number; heapTotal: number; heapUsed: number; external: number; arrayBuffers: number } };
  node: { hostname: string; kernel: string; distro: string; arch: string; cpus: number; cpuModel: string; memoryTotalBytes: number };
  kernel: { cgroup2Root: string; cgroup: string; bpffs: string; sockmap: boolean; features: Record<string, boolean> };
  programs: ProgramReport[];
  maps: { map: string; entries: number; maxEntries: number }[];
  /** the xDS control-plane connection, when the config comes from one */
  controlPlane: XdsStatus | null;
  /** the Kubernetes source (--kubernetes, --kube-pods): its watches' health; absent or null = none */
  kubernetes?: KubeSourceStatus | null;
  /** backends probed by health checks, backends out (probe or ejection), frontends in panic, the metrics URL */
  health?: { probed: number; out: number; panics: number; metrics: string | null };
  /** the L7 proxy as the kernel sees it (address, alive by heartbeat); null when none is announced */
  proxy?: KernelProxyReport | null;
}


/** Instance name from the bpffs dir (DEFAULT_BPFFS -> sockmesh): one run dir per agent instance. */
export function runDirFor(bpffs: string, base = DEFAULT_RUN_DIR): string {
  const name = bpffs.replace(/\/+$/, '').split('/').pop() || 'sockmesh';
  return `${base}/${name}`;
}

// ---- the L7 proxy's own reports (agent/proxy/reports.ts), merged into /v1/backends and /v1/routes ----

/** A backend group of one frontend as the proxy sees it: the unit of circuit breaking and balancing. */
export interface ProxyGroupReport {
  group: string;
  /** the frontend (vip:port) whose backends make this group */
  frontend: string;
  backends: number;
  activeRequests: number;
  pendingRequests: number;
  connections: number;
  activeRetries: number;
  limits: CircuitBreaker;
  /** breaker overflows by limit */
  overflows: Record<string, number>;
}

/** A route as the proxy runs it: its definition and live numbers (ProxyPolicy.routesReport()). */
export interface ProxyRouteReport {
  service: string;
  route: string;
  match: { path?: StringMatch; methods?: string[]; headers?: { name: string; value?: StringMatch; invert?: boolean }[] };
  split: { group: string; weight: number }[];
  timeoutMs: number;
  retry?: { attempts: number; perTryTimeoutMs: number; retryOn: string[]; budgetPercent: number; minRetryConcurrency: number };
  /** requests by status class ('2xx', ..., 'local', 'aborted') */
  requests: Record<string, number>;
  localReplies: Record<string, number>;
  retries: number;
  budgetExhausted: number;
  /** breaker overflows of the groups this route splits to */
  overflows: Record<string, number>;
  groups: ProxyGroupReport[];
}

/** A backend of one group of one frontend as the proxy sees it (ProxyPolicy.backendsReport()). */
export interface ProxyBackendReport {
  service: string;
  group: string;
  frontend: string;
  /** '127.0.0.1:8080', '[::1]:8080' */
  backend: string;
  weight: number;
  activeRequests: number;
  /** out of service for this proxy: failed probe or ejected */
  out: boolean;
  ejected: boolean;
  /** why out (probe reason or ejection reason), since/until as epoch ms */
  reason?: string;
  since?: number;
  until?: number;
  ejections: number;
  consecutive5xx: number;
  consecutiveGatewayErrors: number;
}

/**
 * Where the admin API gets the proxy's reports: optional providers, so that the API works the same with or without
 * the L7 proxy running. Entries are matched to the model by service and backend key (and frontend when present) or
 * route name; every other field is passed through as the row's live numbers.
 */
export interface ProxyReportSource {
  /** () => policy.backendsReport() */
  backends?: () => Iterable<Partial<ProxyBackendReport> & Pick<ProxyBackendReport, 'service' | 'backend'>>;
  /** () => policy.routesReport() */
  routes?: () => Iterable<Partial<ProxyRouteReport> & Pick<ProxyRouteReport, 'service' | 'route'>>;
}

/** The proxy's numbers for a backend or a route as a row of /v1/backends or /v1/routes shows them: its report without
 * the fields the row already has (meshctl prints active, pending, requests, retries, ... when present). */
export type LiveNumbers = Record<string, unknown>;

export interface BackendHealthReport {
  /** '127.0.0.1:8080', '[::1]:8080' */
  backend: string;
  address: string;
  port: number;
  group: string;
  /** as configured */
  weight: number;
  /** what the kernel's selection uses: 0 while out (unless panic) */
  effectiveWeight: number;
  /** in: takes new connections; out: failed its health check or ejected; panic: out, but every backend of the
   *  frontend is, so all are kept; drained: configured with weight 0 */
  state: 'in' | 'out' | 'panic' | 'drained';
  /** why it is out: 'health check: connect ECONNREFUSED', 'ejected: 5 consecutive 5xx' */
  reasons: string[];
  /** ISO time it went out (the earlier of probe failure and ejection) */
  since: string | null;
  /** the health checker's view; null when the service has no health check */
  probe: (ProbeReport & { failingSince: string | null }) | null;
  ejection: { since: string; until: string; count: number; reason: string } | null;
  /** times ejected so far */
  ejections: number;
  /** the proxy's live numbers for it (L7 services, when the proxy provides them) */
  proxy: LiveNumbers | null;
}

export interface FrontendBackendsReport {
  vip: string; port: number; protocol: string;
  /** every usable backend is out: all kept in the kernel's slots */
  panic: boolean;
  backends: BackendHealthReport[];
}

export interface BackendsReport {
  services: { service: string; l7: boolean; healthCheck: HealthCheck | null; frontends: FrontendBackendsReport[] }[];
  /** set when the proxy's report failed (the rest is still given) */
  proxyError: string | null;
}

export interface RouteReport {
  service: string;
  route: string;
  /** 'GET,POST /api/* x-canary=1' */
  match: string;
  split: WeightedGroup[];
  /** the service's: what the proxy speaks to its backends ('downstream': the client's protocol) */
  upstreamProtocol: UpstreamProtocol;
  timeoutMs: number;
  /** retries after the first try (0: none) */
  retries: number;
  perTryTimeoutMs: number;
  /** what is retried: the route's retryOn conditions ([] without retries) */
  retryOn: string[];
  /** the statuses retryOn's retriable-status-codes names */
  retriableStatusCodes: number[];
  /** non-idempotent requests are retried too; without it a POST is never retried and a gRPC call only on a connect
   *  failure or a gRPC code named in retryOn */
  retryNonIdempotent: boolean;
  live: LiveNumbers | null;
}

export interface RoutesReport {
  routes: RouteReport[];
  proxyError: string | null;
}

// ---- the HBONE tunnel between nodes (agent/tunnel/metrics.ts fills it; GET /v1/tunnels, meshctl tunnels) ----

/** One peer of this node's tunnels: out = a pooled connection to another node's agent, in = a client of our 15008. */
export interface TunnelPeerReport {
  direction: 'out' | 'in';
  /** out: the destination node (name or address:port); in: the client's address */
  peer: string;
  /** out: the source workload's SPIFFE id (the certificate presented); in: the peer's, from its certificate */
  identity: string;
  handshakes: number;
  connections: number;
  streamsOpen: number;
  streamsTotal: number;
  /** payload bytes from the tunnel to the local side, and from the local side into the tunnel */
  bytesIn: number;
  bytesOut: number;
  lastActive: string;
}

export interface TunnelReport {
  peers: TunnelPeerReport[];
  /** refusals by reason, per direction */
  refusals: { in: Record<string, number>; out: Record<string, number> };
  /** where the server listens (address:port), [] when it does not */
  listening?: string[];
  /** 'listening', or what the server waits for / why it is off (agent/tunnelhost.ts) */
  state?: string;
  /** the identity the server presents (this node's) and its certificate, once issued */
  identity?: string;
  certificate?: { serial: string; notAfter: string };
  /** the kernel's hand-over of this node's pods' connections to the tunnel (agent/tunnelhandover.ts); absent = off */
  handover?: {
    port: number;
    listening: string[];
    accepted: number;
    tunnelled: number;
    /** reset, by reason */
    refused: Record<string, number>;
  };
  /** the L7 proxy's upstream connections to backends on other nodes, through the tunnel (agent/proxytunnel.ts); absent = off */
  proxy?: {
    /** streams the destination accepted */
    tunnelled: number;
    /** not carried, by reason (denied: the destination's authorization; no-identity: a client that is no workload, to a strict backend) */
    refused: Record<string, number>;
  };
}
