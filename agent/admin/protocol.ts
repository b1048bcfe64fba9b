// The admin protocol between the agent and meshctl: HTTP/1.1 over a unix socket (mode 0600), JSON bodies.
//   GET /v1/status    StatusReport
//   GET /v1/services  FrontendReport[]
//   GET /v1/stats     StatsReport
//   GET /v1/sockets   SocketReport[]
//   GET /v1/events    FlowEvent[] (most recent sampled flow events)
// Errors: a non-2xx status with { error: string }.
import type { FrontendReport, SocketReport, StatsReport } from '../datapath/inspect.js';
import type { XdsStatus } from '../sources/xds/source.js';
export type { FrontendReport, SocketReport, StatsReport };

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
}

export interface FlowEvent {
  time: string; kind: string; protocol: string; service: string; vip: string; backend: string; cookie: string; netnsCookie: string;
}

/** Instance name from the bpffs dir (/sys/fs/bpf/sockmesh -> sockmesh): one run dir per agent instance. */
export function runDirFor(bpffs: string, base = DEFAULT_RUN_DIR): string {
  const name = bpffs.replace(/\/+$/, '').split('/').pop() || 'sockmesh';
  return `${base}/${name}`;
}
