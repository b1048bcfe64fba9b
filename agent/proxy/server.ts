// The proxy's listener: accepts the connections the kernel redirected, asks once per connection where
// each was going (Datapath.originalDst, a map lookup by the client's address), and sniffs the first
// bytes: the HTTP/2 connection preface means HTTP/2 with prior knowledge (our own HTTP/2 session,
// h2server.ts), anything else is HTTP/1.1 (our own parser, http1.ts). The engine never decides: every request goes
// through the Policy (types.ts), which routes, balances, limits and counts.
//
// The proxy's sockets, client and upstream legs alike, are NetConns on the addon's own epoll loop
// (netio.ts): Node's stream machinery cost more CPU per request than the whole engine.
import type { Logger } from '../observe/log.js';
import type { Conn } from './conn.js';
import type { ConnInfo, EngineContext, EngineStats } from './engine.js';
import { DEFAULT_SETTINGS_TIMEOUT_MS } from './h2/session.js';
import { acceptH2 } from './h2server.js';
import { H2Pool } from './h2pool.js';
import { H1Conn } from './http1.js';
import { NetIo, type NetConn, type NetListener } from './netio.js';
import { H1Pool } from './h1pool.js';
import type { OriginalDst, Policy, Upstream } from './types.js';
import { TunnelConn } from './tunnelup.js';

export interface ProxyOptions {
  policy: Policy;
  /** original destination of an accepted client connection; null = not redirected by the kernel (answered 421) */
  originalDst: (remoteAddress: string, remotePort: number) => OriginalDst | null;
  /** request head limit (default 64 KiB): a larger header section is answered 431 */
  maxHeaderBytes?: number;
  /** upstream idle connections/sessions are closed after this long (default 30 s) */
  upstreamIdleTimeoutMs?: number;
  /** upstream connect timeout (default 5 s) */
  connectTimeoutMs?: number;
  /** a client connection with no request for this long is closed (default 5 min) */
  clientIdleTimeoutMs?: number;
  /** an HTTP/1.1 request head must be complete this long after its first byte, else 408 (default 30 s) */
  headTimeoutMs?: number;
  /** an HTTP/2 peer, client or backend, that does not acknowledge our SETTINGS this long gets GOAWAY SETTINGS_TIMEOUT (default 10 s, nghttpx's; 0 = never) */
  h2SettingsTimeoutMs?: number;
  /** a connection through the HBONE tunnel, for an upstream with `tunnel` set (tunnelup.ts); absent: such an upstream fails to connect */
  tunnel?: (up: Upstream) => Conn;
  log: Logger;
}

export interface ProxyStats extends EngineStats {
  /** client connections open now */
  clientConnections: number;
  upstreamConnectionsH1: number;
  upstreamIdleH1: number;
  upstreamSessionsH2: number;
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export class ProxyServer {
  private readonly ctx: EngineContext;
  // deferWrites: the writes a batch of events makes (requests upstream, responses to clients) go out after its
  // JavaScript, back to back, rather than one send(2) between every two events: each send wakes its reader, and on a
  // busy node the woken client or backend took the CPU from the batch in the middle (issue 15; netio.ts)
  // SOCKMESH_PROXY_DEFER_WRITES=0 turns it off (A/B runs of bench l7)
  private readonly io = new NetIo({ deferWrites: process.env.SOCKMESH_PROXY_DEFER_WRITES !== '0' });
  private readonly servers: NetListener[] = [];
  private readonly clients = new Set<NetConn>();
  /** each client connection's protocol side once its first bytes said which (what drain() tells to finish) */
  private readonly protocols = new Map<NetConn, { drain(idleMs?: number): void }>();
  /** draining: how long an idle HTTP/1.1 connection gets for its last request (H1Conn.drain) */
  private drainIdleMs: number | undefined;
  private readonly clientIdleTimeoutMs: number;
  private closed = false;

  constructor(private readonly o: ProxyOptions) {
    const maxHeaderBytes = o.maxHeaderBytes ?? 64 * 1024;
    const connect = (up: Upstream): Conn => {
      if (up.tunnel === undefined) return this.io.connect(up);
      if (o.tunnel) return o.tunnel(up);
      return new TunnelConn(up.address, up.port, Promise.reject(new Error(`${up.key}: a backend on another node and no tunnel on this agent`)));
    };
    const pool = new H1Pool({ log: o.log, maxHeaderBytes, idleTimeoutMs: o.upstreamIdleTimeoutMs, connectTimeoutMs: o.connectTimeoutMs, connect });
    const h2SettingsTimeoutMs = o.h2SettingsTimeoutMs ?? DEFAULT_SETTINGS_TIMEOUT_MS;
    const h2pool = new H2Pool(o.log, o.upstreamIdleTimeoutMs, o.connectTimeoutMs, connect, maxHeaderBytes, h2SettingsTimeoutMs);
    this.clientIdleTimeoutMs = o.clientIdleTimeoutMs ?? 300_000;
    this.ctx = {
      policy: o.policy, log: o.log, pool, h2pool, maxHeaderBytes, clientIdleTimeoutMs: this.clientIdleTimeoutMs,
      headTimeoutMs: o.headTimeoutMs ?? 30_000,
      h2SettingsTimeoutMs,
      stats: { connectionsH1: 0, connectionsH2: 0, requests: 0, badRequests: 0, upgrades: 0 },
      connect,
    };
  }

  /**
   * listen on port on each of hosts (numeric: '127.0.0.1', '::1'); port 0 = any (see ports()). Rejects with the
   * addon's errno error, e.g. "listen 127.0.0.1:15001: EADDRINUSE" (code 'EADDRINUSE').
   */
  async listen(port: number, hosts: string[]): Promise<void> {
    for (const host of hosts) {
      const l = this.io.listen(host, port, (c) => this.accept(c), (e) => this.o.log.error({ err: e.message, host }, 'proxy listener error'));
      this.servers.push(l);
      if (port === 0) port = l.port; // the same port on every host
    }
  }

  /**
   * Accept on listening sockets received from the agent being replaced (agent/handover.ts): the same kernel sockets,
   * whose backlogs are accepted here from now on. Each fd is the loop's once adopted.
   */
  adopt(listeners: { host: string; fd: number }[]): void {
    for (const { host, fd } of listeners) {
      this.servers.push(this.io.adopt(fd, host, (c) => this.accept(c), (e) => this.o.log.error({ err: e.message, host }, 'proxy listener error')));
    }
  }

  /** the listening sockets (host, port, fd): what a planned restart hands to the new agent */
  listeners(): { host: string; port: number; fd: number }[] {
    return this.servers.map((s) => ({ host: s.host, port: s.port, fd: s.fd() }));
  }

  /**
   * A planned restart, once the new agent accepts on the same sockets: stop accepting, finish what is under way
   * (HTTP/1.1: the answer says `connection: close`; HTTP/2: GOAWAY, open streams finish), keep long-lived tunnels
   * until they end. Resolves when no client connection is left, or after timeoutMs with how many were (close() then
   * cuts them). idleMs: what an idle HTTP/1.1 keep-alive connection gets for its next request before it is closed
   * (H1Conn.drain; 0 = closed now).
   */
  async drain(timeoutMs: number, idleMs?: number): Promise<{ left: number }> {
    this.ctx.draining = true;
    this.drainIdleMs = idleMs;
    for (const s of this.servers) s.close();
    this.servers.length = 0;
    for (const p of this.protocols.values()) p.drain(idleMs);
    const until = performance.now() + timeoutMs;
    while (this.clients.size > 0 && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
    return { left: this.clients.size };
  }

  /** stop listening on host (a node address the pods no longer route to); its accepted connections stay */
  unlisten(host: string): void {
    for (let i = this.servers.length - 1; i >= 0; i--) {
      if (this.servers[i]!.host !== host) continue;
      this.servers[i]!.close();
      this.servers.splice(i, 1);
    }
  }

  /** the bound ports, in the order of hosts */
  ports(): number[] {
    return this.servers.map((s) => s.port);
  }

  private accept(socket: NetConn): void {
    if (this.closed) { socket.destroy(); return; }
    this.clients.add(socket);
    socket.on('close', () => { this.clients.delete(socket); this.protocols.delete(socket); });
    socket.on('error', () => { /* handled by the protocol side; 'close' follows */ });
    const address = socket.remoteAddress, port = socket.remotePort;
    if (address === undefined || port === undefined) { socket.destroy(); return; }
    let dst: OriginalDst | null;
    try {
      dst = this.o.originalDst(address, port);
    } catch (e) {
      this.o.log.warn({ err: (e as Error).message, peer: `${address}:${port}` }, 'original destination lookup failed');
      dst = null;
    }
    const info: ConnInfo = { dst, address, port };
    // until the first bytes say which protocol (each protocol then keeps its own idle rules)
    socket.setTimeout(this.clientIdleTimeoutMs, () => socket.destroy());
    let first: Buffer | null = null;
    const sniff = (d: Buffer): void => {
      first = first === null ? d : Buffer.concat([first, d]);
      const n = Math.min(first.length, PREFACE.length);
      const isH2 = first.compare(PREFACE, 0, n, 0, n) === 0;
      if (isH2 && first.length < PREFACE.length) return; // could still be the preface: wait for the rest
      socket.off('data', sniff);
      socket.setTimeout(0);
      socket.removeAllListeners('timeout');
      const p = isH2 ? acceptH2(this.ctx, socket, info, first) : new H1Conn(this.ctx, socket, info, first);
      if (socket.destroyed) return;
      this.protocols.set(socket, p);
      if (this.ctx.draining === true) p.drain(this.drainIdleMs);
    };
    socket.on('data', sniff);
  }

  stats(): ProxyStats {
    return {
      ...this.ctx.stats,
      clientConnections: this.clients.size,
      upstreamConnectionsH1: this.ctx.pool.openCount(),
      upstreamIdleH1: this.ctx.pool.idleCount(),
      upstreamSessionsH2: this.ctx.h2pool.openCount(),
    };
  }

  /** stop listening, close every client connection and upstream connection */
  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.servers) s.close();
    for (const s of [...this.clients]) s.destroy();
    this.ctx.pool.close();
    this.ctx.h2pool.close();
    // what the pool and the clients did not close (nothing, normally) goes with the loop
    this.io.close();
  }
}
