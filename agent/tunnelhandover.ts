// The accepting end of the kernel's hand-over of cross-node connections to the tunnel (issue 13): connect() of a
// meshed pod to a workload of another node (a VIP's backend there, or its pod address dialled directly) is sent by
// the kernel (bpf/lib/tunnel.h) to these listeners, on the L7 proxy's addresses (loopback, the node address for pods
// in their own network namespace) at the hand-over port, with where it was going and who asked kept in sm_l7_peers
// (as for the L7 redirect). For each accepted connection: the original destination (the pod ip:port the kernel chose)
// and the client's cgroup, that cgroup's workload identity, the destination's node from the model (workloads[].node,
// nodes[].addresses/tunnelPort), then TunnelOpener.open(), which carries the bytes in an HTTP/2 CONNECT stream over
// mTLS to that node's agent. A connection with no original destination (not handed over by the kernel), no identity,
// no known node, or one the tunnel refuses (no certificate, denied at the destination, the pod down) is reset: the app
// sees a refused connection, as from the pod itself. Every outcome is counted (meshctl tunnels, Prometheus).
//
// The listeners are the tunnel's netio loop's (agent/tunnel/splice.ts tunnelIo(): the same epoll loop as the tunnel's
// TLS connections), so an app's bytes go from its accepted connection to the TLS records with no libuv stream between;
// they are recorded in sm_proxy_socks like the proxy's, so that a killed agent's hand-over is seen gone at the next
// connect() (permissive destinations are then reached directly, strict ones refused: bpf/lib/tunnel.h). A planned
// restart passes their fds to the new agent, which adopts them into its loop.
import { closeSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { Counter, type Registry } from 'prom-client';
import type { Datapath } from './datapath/datapath.js';
import type { Model } from './model/types.js';
import type { Logger } from './observe/log.js';
import type { NetConn, NetListener } from './proxy/netio.js';
import { tunnelIo } from './tunnel/splice.js';
import { TunnelError, type TunnelOpener, type TunnelRequest } from './tunnel/types.js';

/** The hand-over's default port: next to the proxy's 15001 and HBONE's 15008 (ztunnel's outbound capture is 15001). */
export const HANDOVER_PORT = 15007;

/** Why a handed-over connection was reset before or by the tunnel (a metric label and a log field). */
export type HandoverRefusal = 'no-original-destination' | 'no-identity' | 'no-node' | 'tunnel-refused';

export interface HandoverReport {
  port: number;
  /** host:port of each listener */
  listening: string[];
  accepted: number;
  /** carried: the destination answered the CONNECT */
  tunnelled: number;
  /** reset, by reason (tunnel-refused: by the TunnelError's reason, e.g. tunnel-refused:denied) */
  refused: Record<string, number>;
}

/** What the hand-over needs of the datapath. */
export type HandoverKernel = Pick<Datapath, 'originalDst' | 'proxyListener' | 'setTunnelPort'>;

export interface TunnelHandoverOptions {
  dp: HandoverKernel;
  opener: TunnelOpener;
  /** the proxy's listener addresses (loopback v4/v6, node addresses): the kernel sends clients to these */
  hosts: string[];
  port?: number;
  /**
   * Makes a listening socket on host:port and returns its fd (below the meshed cgroup: datapath/meshsocket.ts, so that
   * the connections it accepts join the sockmap fast path with the app's end); when it throws, or is absent, the
   * listener is made here as usual and the kernel keeps both ends of the hand-over off the fast path.
   */
  listenFd?: (host: string, port: number) => number;
  /** a planned restart: the running agent's listening sockets (accepted on instead of listening) */
  takeover?: { host: string; port: number; fd: number }[];
  /** the workload identity (SPIFFE id) of a client's cgroup, or undefined */
  identityOf: (cgroupId: bigint) => string | undefined;
  /** the model in force (the workloads' nodes) */
  model: () => Model | undefined;
  /** a node's tunnel end for a destination of that family (TunnelHost.peer: the model's nodes[]) */
  peer: (node: string, family: 4 | 6) => TunnelRequest['node'] | undefined;
  registry?: Registry;
  log: Logger;
}

/** The node a pod address runs on (the model's workloads[].node), or undefined. */
export function nodeOfPod(model: Model | undefined, podAddress: string): string | undefined {
  return model?.workloads?.find((x) => x.addresses?.includes(podAddress))?.node;
}

export class TunnelHandover {
  private readonly servers: { host: string; server: NetListener }[] = [];
  /** hosts whose listener was made outside the meshed cgroup (o.listenFd absent or failed) */
  private readonly outsideMesh = new Set<string>();
  private readonly port: number;
  private accepted = 0;
  private tunnelled = 0;
  private readonly refused: Record<string, number> = {};
  private readonly counter?: Counter<'outcome'>;
  /** accepted connections not closed yet (a planned restart drains them) */
  private readonly live = new Set<NetConn>();

  constructor(private readonly o: TunnelHandoverOptions) {
    this.port = o.takeover?.[0]?.port ?? o.port ?? HANDOVER_PORT;
    if (o.registry) {
      this.counter = new Counter({
        name: 'sockmesh_tunnel_handover_connections_total',
        help: 'Connections the kernel handed to the tunnel, by outcome (tunnelled, or why they were reset)',
        labelNames: ['outcome'], registers: [o.registry],
      });
    }
  }

  /** Listen (or adopt the running agent's listeners), record them in the kernel, then name the port to the kernel. */
  async start(): Promise<void> {
    const { o } = this;
    if (o.takeover) {
      if (o.port !== undefined && o.port !== this.port) {
        o.log.warn({ asked: o.port, port: this.port }, 'handover: the tunnel hand-over keeps the running agent\'s port (a different one would close its listeners)');
      }
      for (const l of o.takeover) this.servers.push({ host: l.host, server: this.adopt(l.host, l.fd) });
    } else {
      for (const host of o.hosts) await this.listenOn(host);
    }
    for (const l of this.listeners()) this.record(l);
    if (this.servers.length) o.dp.setTunnelPort(this.port, this.inMesh());
    o.log.info({ port: this.port, hosts: this.servers.map((s) => s.host), takenOver: !!o.takeover, inMesh: this.inMesh() ?? 'as before' }, 'tunnel hand-over listening: connections to other nodes\' workloads go through the tunnel');
  }

  /**
   * Listen on exactly `hosts` from now on (the proxy's addresses changed: the node address pods route to): new ones
   * listen and are recorded in the kernel before anything is sent there, the ones no longer wanted stop accepting
   * (the kernel's record loses them as they close). Connections already accepted go on either way.
   */
  async follow(hosts: string[]): Promise<void> {
    const { o } = this;
    const want = new Set(hosts);
    const added: string[] = [];
    for (const host of want) {
      if (this.servers.some((s) => s.host === host)) continue;
      if (await this.listenOn(host)) added.push(host);
    }
    for (const l of this.listeners().filter((x) => added.includes(x.host))) this.record(l);
    const gone = this.servers.filter((s) => !want.has(s.host));
    for (const s of gone) {
      s.server.close();
      this.servers.splice(this.servers.indexOf(s), 1);
      this.outsideMesh.delete(s.host);
    }
    if (!added.length && !gone.length) return;
    if (this.servers.length) o.dp.setTunnelPort(this.port, this.inMesh());
    o.log.info({ port: this.port, added, removed: gone.map((s) => s.host), hosts: this.servers.map((s) => s.host) }, 'tunnel hand-over: listeners follow the proxy\'s addresses');
  }

  /** The addresses listened on. */
  hosts(): string[] {
    return this.servers.map((s) => s.host);
  }

  /**
   * What the kernel is told of where the listeners' sockets live (the SOCKHASH may hold both ends of a hand-over only
   * when every one is in the mesh): false once one is outside; listeners taken over are the running agent's sockets,
   * whose record stays (undefined).
   */
  private inMesh(): boolean | undefined {
    if (this.outsideMesh.size) return false;
    return this.o.takeover ? undefined : true;
  }

  /** Listen on host:port, in the meshed cgroup when o.listenFd can make the socket. Whether it listens. */
  private async listenOn(host: string): Promise<boolean> {
    const { o } = this;
    let fd: number | undefined;
    try {
      fd = o.listenFd?.(host, this.port);
    } catch (e) {
      o.log.warn({ host, port: this.port, error: (e as Error).message }, 'tunnel hand-over: cannot listen in the meshed cgroup; listening outside it (its connections take TCP, off the sockmap fast path)');
    }
    let server: NetListener;
    try {
      if (fd === undefined) {
        server = tunnelIo().listen(host, this.port, (c) => this.accept(c), (e) => this.acceptFailed(host, e));
      } else {
        try {
          server = this.adopt(host, fd);
        } catch (e) {
          try { closeSync(fd); } catch { /* closed already */ }
          throw e;
        }
      }
    } catch (e) {
      // that address's clients then find no listener in the kernel's record: direct (permissive) or refused (strict)
      o.log.error({ host, port: this.port, error: (e as Error).message }, 'tunnel hand-over cannot listen: clients sent to this address are not tunnelled');
      return false;
    }
    if (fd === undefined) this.outsideMesh.add(host);
    this.servers.push({ host, server });
    return true;
  }

  private record(l: { host: string; port: number; fd: number }): void {
    try {
      this.o.dp.proxyListener(l.host, l.port, l.fd);
    } catch (e) {
      this.o.log.error({ host: l.host, port: l.port, error: (e as Error).message }, 'the kernel cannot hold the tunnel hand-over\'s listener: its clients are not tunnelled');
    }
  }

  /** Accept on a listening socket made elsewhere (in the meshed cgroup, or the running agent's): the loop owns fd
   * once this returns; throws (fd still the caller's) when it is not a listening socket. */
  private adopt(host: string, fd: number): NetListener {
    return tunnelIo().adopt(fd, host, (c) => this.accept(c), (e) => this.acceptFailed(host, e));
  }

  private acceptFailed(host: string, e: Error): void {
    this.o.log.error({ host, error: e.message }, 'tunnel hand-over listener error');
  }

  private count(outcome: string): void {
    this.counter?.inc({ outcome });
  }

  private refuse(sock: NetConn, reason: HandoverRefusal, detail: Record<string, unknown>, label: string = reason): void {
    this.refused[label] = (this.refused[label] ?? 0) + 1;
    this.count(label);
    this.o.log.warn({ reason, ...detail }, `tunnel hand-over: connection reset (${reason})`);
    if (!sock.destroyed) sock.resetAndDestroy();
  }

  private accept(sock: NetConn): void {
    // before this returns (the next wake would read): bytes sent before the stream is up wait in the socket
    // (node's pauseOnConnect), and the app's FIN is passed on through the tunnel while the pod's answer still comes
    // back (allowHalfOpen)
    sock.pause();
    sock.allowHalfOpen = true;
    this.accepted++;
    const peer = { address: sock.remoteAddress ?? '', port: sock.remotePort ?? 0 };
    sock.on('error', () => { /* a reset from either side ends it; the tunnel counts its own */ });
    this.live.add(sock);
    sock.once('close', () => this.live.delete(sock));
    const dst = this.o.dp.originalDst(peer.address, peer.port);
    if (!dst?.backend) {
      this.refuse(sock, 'no-original-destination', { peer });
      return;
    }
    const source = this.o.identityOf(dst.cgroupId);
    if (!source) {
      this.refuse(sock, 'no-identity', { peer, cgroupId: String(dst.cgroupId), dst: dst.backend });
      return;
    }
    const name = nodeOfPod(this.o.model(), dst.backend.address);
    const node = name === undefined ? undefined : this.o.peer(name, isIPv6(dst.backend.address) ? 6 : 4);
    if (!node) {
      this.refuse(sock, 'no-node', { source, dst: dst.backend });
      return;
    }
    this.o.opener.open({ source, dst: dst.backend, node }, sock).then(() => {
      this.tunnelled++;
      this.count('tunnelled');
    }, (e: unknown) => {
      const why = e instanceof TunnelError ? e.reason : 'tunnel-failed';
      // open() reset the client already; counted here by the tunnel's reason
      this.refuse(sock, 'tunnel-refused', { source, dst: dst.backend, node: node.name, why, error: (e as Error).message }, `tunnel-refused:${why}`);
    });
  }

  /** The listening sockets (host, port, fd): what a planned restart hands to the new agent. */
  listeners(): { host: string; port: number; fd: number }[] {
    const out: { host: string; port: number; fd: number }[] = [];
    for (const { host, server } of this.servers) {
      try { out.push({ host, port: this.port, fd: server.fd() }); } catch { /* closed */ }
    }
    return out;
  }

  report(): HandoverReport {
    return {
      port: this.port, listening: this.servers.map((s) => (s.host.includes(':') ? `[${s.host}]:${this.port}` : `${s.host}:${this.port}`)),
      accepted: this.accepted, tunnelled: this.tunnelled, refused: { ...this.refused },
    };
  }

  /** After a planned restart: wait for the connections this agent carries to finish, then cut what is left. */
  async drain(timeoutMs: number): Promise<{ left: number }> {
    const end = Date.now() + timeoutMs;
    while (this.live.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    const left = this.live.size;
    for (const s of this.live) s.destroy();
    return { left };
  }

  /** Stop accepting (a new agent accepts on the same sockets, or the agent stops); connections under way go on. */
  close(): void {
    // the listeners only: the tunnelled connections end on their own
    for (const { server } of this.servers) server.close();
    this.servers.length = 0;
  }
}
