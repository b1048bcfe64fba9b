// The one model every source (file, later xDS) is validated into. Pure data, no I/O.
import type { HealthCheck, HttpPolicy, Workload } from './l7.js';
import type { AuthorizationPolicy, MeshNode, MtlsMode, MtlsPolicy } from './mesh.js';

export type * from './l7.js';
export type * from './mesh.js';

export type Protocol = 'tcp' | 'udp';
export type Algorithm = 'random' | 'weighted' | 'maglev';
export type Family = 4 | 6;

export interface Backend {
  /** Canonical textual address ('127.0.0.1', '::1'); IPv4 never written v4-mapped. */
  address: string;
  family: Family;
  port: number;
  /** 0 = drained: kept for existing connections, chosen by no new one. */
  weight: number;
  /** L7 backend group (route splits name groups); undefined = 'default' */
  group?: string;
}

export interface Frontend {
  /** Canonical textual VIP. */
  vip: string;
  family: Family;
  port: number;
  protocol: Protocol;
  /** The backends of this frontend: the service's backends of the same family, with the port resolved. */
  backends: Backend[];
}

export interface Service {
  name: string;
  algorithm: Algorithm;
  /** 0 = no session affinity. */
  affinityTimeoutSeconds: number;
  /** Maglev lookup table size (a prime); set for every service, used only by 'maglev'. */
  maglevTableSize: number;
  frontends: Frontend[];
  /** present = an L7 service: connect() to its frontends is redirected to the agent's proxy */
  http?: HttpPolicy;
  /** active health checking of its backends (L4 and L7 services alike) */
  healthCheck?: HealthCheck;
  /** the mTLS mode of its backends' ports, over the namespace's and the mesh's (mtls.ts mtlsModeFor) */
  mtls?: MtlsMode;
}

export interface Model {
  services: Service[];
  /** the pods the mesh knows: source identities (L7 and L4 authorization), local or on another node */
  workloads?: Workload[];
  /** the mesh's nodes: where a workload's node (Workload.node) runs its tunnel end */
  nodes?: MeshNode[];
  /** absent = DEFAULT_MTLS_MODE everywhere */
  mtls?: MtlsPolicy;
  /** L4 authorization (Istio AuthorizationPolicy, L4 subset), evaluated by authz4.ts */
  authorization?: AuthorizationPolicy[];
}

/** A validation problem: where (file and path to the field) and what is wrong. */
export interface ConfigIssue {
  file: string;
  /** e.g. 'services[2].backends[0].port' */
  path: string;
  message: string;
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super(issues.map((i) => `${i.file}: ${i.path || '(root)'}: ${i.message}`).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}
