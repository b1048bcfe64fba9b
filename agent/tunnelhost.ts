// Wiring for the HBONE tunnel (issue 13): the node's server on its address(es):15008 and the client pool the kernel's
// hand-over opens streams on, over one set of metrics (Prometheus families in the agent's registry, GET /v1/tunnels).
// The agent builds one when it has certificates (--node-token-file + --ca-address: certwiring.ts); the server
// presents this node's identity (spiffe://<td>/sockmesh/node/<--node-id>), serves the node's pods (LocalPods: the
// addresses the fast path knows as this node's) and asks the model's L4 authorization (authz4 decideEndpoint) for
// each stream.
//
// The server needs two things the agent does not have at start: its certificate (the CA's answer) and where to listen
// (this node's entry in the model's nodes[], which an xDS or Kubernetes source brings later). Neither blocks the
// agent's start: the server starts once both are there, moves when the node's addresses or port change, and until
// then `state` (meshctl tunnels) says what it waits for. Addresses given to the constructor (tests) replace nodes[].
//
// A planned restart (agent/handover.ts) passes the running agent's 15008 listening sockets to the new one, as it does
// the proxy's: the new server accepts on them (`takeover`), so the listening socket never closes and no inbound SYN
// is refused in between (the kernel queues what neither agent accepts yet). A taken-over socket whose address or
// port this node's entry no longer names is closed once the server starts elsewhere.
import { closeSync } from 'node:fs';
import type { Registry } from 'prom-client';
import type { TunnelReport } from './admin/protocol.js';
import type { IdentityCerts } from './identity/material.js';
import type { LocalPods } from './identity/pods.js';
import { canonicalAddress } from './model/address.js';
import { compileAuthz4, decideEndpoint, type Authz4 } from './model/authz4.js';
import { DEFAULT_TUNNEL_PORT } from './model/mesh.js';
import type { Model } from './model/types.js';
import type { Logger } from './observe/log.js';
import { TunnelClient } from './tunnel/client.js';
import { TunnelMetrics } from './tunnel/metrics.js';
import { TunnelServer, type L4Authorizer } from './tunnel/server.js';
import type { TunnelRequest } from './tunnel/types.js';

export interface TunnelHostOptions {
  certs: IdentityCerts;
  /** the identity the server presents: this node's, spiffe://<td>/sockmesh/node/<nodeName> */
  identity: string;
  /** this node's name (--node-id): its entry in the model's nodes[] says where the server listens */
  nodeName?: string;
  /** fixed addresses to listen on instead of the model's nodes[] entry ([] = no server: this node only sends) */
  addresses?: string[];
  /** with `addresses`: the port (default 15008) */
  port?: number;
  pods: LocalPods;
  /** a planned restart: the running agent's HBONE listening sockets (TunnelHost.listeners() of that agent) */
  takeover?: { host: string; port: number; fd: number }[];
  /** the L4 authorization decision; absent: the model's policies (update()) */
  authorize?: L4Authorizer;
  registry: Registry;
  log: Logger;
}

interface Endpoint { addresses: string[]; port: number }

export class TunnelHost {
  readonly metrics = new TunnelMetrics();
  readonly client: TunnelClient;
  private server?: TunnelServer;
  private listening: string[] = [];
  /** where the server should listen now (undefined: nowhere known yet) and where it does */
  private want?: Endpoint;
  private have?: Endpoint;
  private authz?: Authz4;
  private model?: Model;
  private stopped = false;
  /** server (re)starts, one at a time */
  private chain: Promise<void> = Promise.resolve();
  private why = 'not started';
  /** the running agent's listening sockets not adopted by a server yet (planned restart) */
  private takeover: { host: string; port: number; fd: number }[];
  /** resolved each time the server listens */
  private listeningWaiters: (() => void)[] = [];
  private readonly log: Logger;
  private readonly onChange = (identity: string): void => { if (identity === this.opts.identity) this.reconcile(); };

  constructor(private readonly opts: TunnelHostOptions) {
    this.log = opts.log.child({ component: 'tunnel' });
    this.metrics.register(opts.registry);
    this.client = new TunnelClient({ certs: opts.certs, metrics: this.metrics, log: this.log });
    this.takeover = [...(opts.takeover ?? [])];
    if (opts.addresses) this.want = { addresses: opts.addresses, port: opts.port ?? DEFAULT_TUNNEL_PORT };
  }

  /**
   * Start serving as soon as it can: resolves once the server listens when the certificate and the addresses are
   * there now, else at once (the server follows when they come). Never fails the agent's start: a server that
   * cannot listen is logged and `state` says why (the node's pods still reach other nodes).
   */
  async start(): Promise<void> {
    this.opts.certs.on('change', this.onChange);
    this.reconcile();
    await this.chain;
  }

  /** A model in force: this node's nodes[] entry (where to listen) and the L4 authorization policies. */
  update(model: Model): void {
    this.model = model;
    this.authz = model.authorization?.length ? compileAuthz4(model) : undefined;
    if (this.opts.addresses) return;
    const me = this.opts.nodeName === undefined ? undefined : model.nodes?.find((n) => n.name === this.opts.nodeName);
    if (!me) {
      const why = !model.nodes?.length
        ? 'off: the model names no nodes (nodes[]), so no tunnel end is known for this node'
        : `off: the model's nodes[] has no node named ${this.opts.nodeName} (this agent's --node-id); other nodes cannot tunnel to this node's pods`;
      // said once per change: a model without nodes[] is a mesh without tunnels; one naming others but not this node is a mistake
      if (why !== this.why) this.log[model.nodes?.length ? 'error' : 'info']({ node: this.opts.nodeName }, `tunnel server ${why}`);
      this.want = undefined;
      this.why = why;
      this.reconcile();
      return;
    }
    // one address per family: the first of each (mesh.ts MeshNode.addresses)
    const fam = (f: 4 | 6) => me.addresses.find((a) => canonicalAddress(a)?.family === f);
    this.want = { addresses: [fam(4), fam(6)].filter((a): a is string => !!a), port: me.tunnelPort ?? DEFAULT_TUNNEL_PORT };
    this.reconcile();
  }

  /**
   * Where another node's tunnel end is (the model's nodes[]), for TunnelRequest.node: the address of `family` (the
   * family of the destination pod's address), undefined when the model does not name that node or it has no address
   * of that family.
   */
  peer(node: string, family: 4 | 6): TunnelRequest['node'] | undefined {
    const n = this.model?.nodes?.find((x) => x.name === node);
    const address = n?.addresses.find((a) => canonicalAddress(a)?.family === family);
    return n && address ? { name: n.name, address, port: n.tunnelPort ?? DEFAULT_TUNNEL_PORT } : undefined;
  }

  /**
   * Resolves true once the server listens, false after timeoutMs (a planned restart waits for it before the running
   * agent lets go, so that one of the two serves 15008 throughout).
   */
  whenListening(timeoutMs: number): Promise<boolean> {
    if (this.server) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.listeningWaiters = this.listeningWaiters.filter((w) => w !== done); resolve(false); }, timeoutMs);
      const done = (): void => { clearTimeout(timer); resolve(true); };
      this.listeningWaiters.push(done);
    });
  }

  /** The server's listening sockets (host, port, fd): what a planned restart hands to the new agent. */
  listeners(): { host: string; port: number; fd: number }[] {
    return (this.server?.listenerFds() ?? []).map((l) => ({ host: l.address, port: l.port, fd: l.fd }));
  }

  /** What the server is doing or waiting for (meshctl tunnels). */
  get state(): string { return this.why; }

  async stop(): Promise<void> {
    this.stopped = true;
    this.opts.certs.off('change', this.onChange);
    this.client.close();
    await this.chain;
    await this.server?.stop();
    this.server = undefined;
    this.closeTakeover(() => true);
  }

  /**
   * A planned restart (agent.ts release): the server stops (its sessions finish: session.close() is graceful) so that
   * the new agent can listen on the same port; the client pool stays for the streams the old agent still carries.
   */
  async stopServer(): Promise<void> {
    this.stopped = true;
    await this.chain;
    await this.server?.stop();
    this.server = undefined;
    this.closeTakeover(() => true);
  }

  report(): TunnelReport {
    const m = this.opts.certs.get(this.opts.identity);
    return {
      ...this.metrics.report(), listening: this.listening, state: this.why, identity: this.opts.identity,
      ...(m ? { certificate: { serial: m.serial, notAfter: m.notAfter.toISOString() } } : {}),
    };
  }

  /** Bring the server to `want` (queued behind any start or stop in progress). */
  private reconcile(): void {
    this.chain = this.chain.then(() => this.step()).catch((e: unknown) => { this.log.error({ err: e }, 'tunnel: server change failed'); });
  }

  private async step(): Promise<void> {
    if (this.stopped) return;
    const want = this.want;
    if (same(want, this.have)) return;
    if (this.server) {
      await this.server.stop();
      this.server = undefined;
      this.have = undefined;
      this.listening = [];
      this.log.info('tunnel: server stopped (this node\'s tunnel end changed)');
    }
    if (!want) return;
    if (want.addresses.length === 0) { this.why = 'off: this node\'s nodes[] entry has no address'; return; }
    if (!this.opts.certs.get(this.opts.identity)) {
      this.why = `waiting for the node certificate (${this.opts.identity}) from the CA`;
      this.log.info({ identity: this.opts.identity }, `tunnel: ${this.why}`);
      return;
    }
    // the running agent's sockets for these addresses and this port: accepted on instead of listening anew (the
    // server owns them from here, whether it starts or fails)
    const key = (host: string, port: number): string => `${canonicalAddress(host)?.address ?? host}|${port}`;
    const wanted = new Set(want.addresses.map((a) => key(a, want.port)));
    const adopt = this.takeover.filter((l) => wanted.has(key(l.host, l.port)));
    this.takeover = this.takeover.filter((l) => !adopt.includes(l));
    const fds = adopt.map((l) => ({ address: want.addresses.find((a) => key(a, want.port) === key(l.host, l.port))!, fd: l.fd }));
    const server = new TunnelServer({
      certs: this.opts.certs, identity: this.opts.identity, addresses: want.addresses, port: want.port, metrics: this.metrics, log: this.log,
      isLocal: (a) => this.opts.pods.addresses().has(a), authorize: this.opts.authorize ?? ((q) => this.authorize(q)),
      ...(fds.length ? { fds } : {}),
    });
    try {
      this.listening = await server.start();
    } catch (e) {
      this.why = `cannot listen on ${want.addresses.join(', ')} port ${want.port}: ${(e as Error).message}`;
      this.log.error({ addresses: want.addresses, port: want.port }, `tunnel: ${this.why}`);
      return;
    }
    this.server = server;
    this.have = want;
    this.why = 'listening';
    // sockets of the running agent this node's entry no longer names: closed, or they would queue SYNs nobody accepts
    this.closeTakeover(() => true);
    for (const w of this.listeningWaiters.splice(0)) w();
  }

  private closeTakeover(which: (l: { host: string; port: number }) => boolean): void {
    const close = this.takeover.filter(which);
    this.takeover = this.takeover.filter((l) => !close.includes(l));
    for (const l of close) {
      try { closeSync(l.fd); } catch { /* closed already */ }
      this.log.info({ host: l.host, port: l.port }, 'tunnel: a listener taken over from the running agent and not served on (this node\'s tunnel end moved, or the tunnel stopped) was closed');
    }
  }

  /** The model's L4 authorization for a tunnelled connection to a pod (no policy: allowed, as in Istio). */
  private authorize(q: Parameters<L4Authorizer>[0]): ReturnType<L4Authorizer> {
    if (!this.authz) return { allow: true };
    const address = canonicalAddress(q.dst.address)?.address ?? q.dst.address;
    const d = decideEndpoint(this.authz, { principal: q.source }, address, q.dst.port);
    return { allow: d.verdict === 'allow', policy: d.policy ?? d.reason };
  }
}

function same(a: Endpoint | undefined, b: Endpoint | undefined): boolean {
  return a === b || (!!a && !!b && a.port === b.port && a.addresses.join() === b.addresses.join());
}
