// The one model every source (file, later xDS) is validated into. Pure data, no I/O.

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
}

export interface Model {
  services: Service[];
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
