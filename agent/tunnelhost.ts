// Wiring for the HBONE tunnel (issue 13): the node's server on its address(es):15008 and the client pool the kernel's
// hand-over opens streams on, over one set of metrics (Prometheus families in the agent's registry, GET /v1/tunnels).
// The agent builds one when it has workload certificates (AgentOptions.tunnel); the server serves the node's pods
// (LocalPods: the addresses the fast path knows as this node's) and asks `authorize` (the model's L4 authorization)
// for each stream.
import type { Registry } from 'prom-client';
import type { TunnelReport } from './admin/protocol.js';
import type { IdentityCerts } from './identity/material.js';
import type { LocalPods } from './identity/pods.js';
import type { Logger } from './observe/log.js';
import { TunnelClient } from './tunnel/client.js';
import { TunnelMetrics } from './tunnel/metrics.js';
import { TunnelServer, type L4Authorizer } from './tunnel/server.js';

export interface TunnelHostOptions {
  certs: IdentityCerts;
  /** the identity the server presents (the node agent's SPIFFE id) */
  identity: string;
  /** the node address(es) the server listens on ([] = no server: this node only sends) */
  addresses: string[];
  port?: number;
  pods: LocalPods;
  /** the L4 authorization decision; absent: every authenticated peer is allowed */
  authorize?: L4Authorizer;
  registry: Registry;
  log: Logger;
}

export class TunnelHost {
  readonly metrics = new TunnelMetrics();
  readonly client: TunnelClient;
  private readonly server?: TunnelServer;
  private listening: string[] = [];

  constructor(opts: TunnelHostOptions) {
    const log = opts.log.child({ component: 'tunnel' });
    this.metrics.register(opts.registry);
    this.client = new TunnelClient({ certs: opts.certs, metrics: this.metrics, log });
    if (opts.addresses.length) {
      this.server = new TunnelServer({
        certs: opts.certs, identity: opts.identity, addresses: opts.addresses, port: opts.port, metrics: this.metrics, log,
        isLocal: (a) => opts.pods.addresses().has(a), authorize: opts.authorize,
      });
    }
  }

  async start(): Promise<void> {
    if (this.server) this.listening = await this.server.start();
  }

  async stop(): Promise<void> {
    this.client.close();
    await this.server?.stop();
  }

  report(): TunnelReport {
    return { ...this.metrics.report(), listening: this.listening };
  }
}
