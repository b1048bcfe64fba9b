// The L7 proxy's upstreams to backends on other nodes through the HBONE tunnel (issue 13; the proxy's side is
// proxy/tunnelup.ts, which says which backends, as whom, and what a denial means): which backends is the kernel
// hand-over's own decision (datapath/plan.ts tunnelTargets: a workload of another node whose mTLS mode is not off),
// and a connection is a CONNECT stream from TunnelClient.connect() over the pooled mTLS connection to that node (no
// handshake per stream), adapted to the proxy's Conn (TunnelConn). Counted: meshctl tunnels (proxy) and
// sockmesh_proxy_tunnel_upstreams_total{outcome}.
import { isIPv6 } from 'node:net';
import type { Duplex } from 'node:stream';
import { Counter, type Registry } from 'prom-client';
import { BE_F_STRICT, BE_F_TUNNEL } from './datapath/abi.js';
import { tunnelTargets } from './datapath/plan.js';
import type { Model } from './model/types.js';
import type { Logger } from './observe/log.js';
import type { Conn } from './proxy/conn.js';
import { TunnelConn, UpstreamDenied, type TunnelDecider } from './proxy/tunnelup.js';
import type { Upstream } from './proxy/types.js';
import type { TunnelClient } from './tunnel/client.js';
import { TunnelError, type TunnelRequest } from './tunnel/types.js';

/**
 * The proxy's TunnelDecider for a model: the kernel hand-over's (tunnelTargets for this node, with this node's own pod
 * addresses never tunnelled), the backend's node from workloads[].node.
 */
export function proxyTunnelDecider(nodeId: string, local: () => ReadonlySet<string>): (model: Model) => TunnelDecider {
  return (model) => {
    const targets = tunnelTargets(model, nodeId, local());
    // a backend's node by address, indexed once per model (nodeOfPod walks every workload: per backend, that was
    // O(L7 backends x workloads) for each compile)
    let nodes: Map<string, string> | undefined;
    return (svc, address, port) => {
      const f = targets.backend(svc, address, port);
      if ((f & BE_F_TUNNEL) === 0) return undefined;
      if (nodes === undefined) {
        nodes = new Map();
        for (const w of model.workloads ?? []) if (w.node !== undefined) for (const a of w.addresses ?? []) if (!nodes.has(a)) nodes.set(a, w.node);
      }
      const node = nodes.get(address);
      return node === undefined ? undefined : { node, strict: (f & BE_F_STRICT) !== 0 };
    };
  };
}

export interface ProxyTunnelOptions {
  /** the tunnel's client pool, once the tunnel runs (undefined before: such an upstream fails to connect) */
  client: () => TunnelClient | undefined;
  /** a node's tunnel end for a destination of that family (TunnelHost.peer) */
  peer: (node: string, family: 4 | 6) => TunnelRequest['node'] | undefined;
  registry?: Registry;
  log: Logger;
}

export class ProxyTunnel {
  private tunnelled = 0;
  private readonly refused: Record<string, number> = {};
  private readonly counter?: Counter<'outcome'>;

  constructor(private readonly o: ProxyTunnelOptions) {
    if (o.registry) {
      this.counter = new Counter({
        name: 'sockmesh_proxy_tunnel_upstreams_total',
        help: 'The L7 proxy\'s upstream connections to backends on other nodes through the HBONE tunnel, by outcome (tunnelled, or why not)',
        labelNames: ['outcome'], registers: [o.registry],
      });
    }
  }

  /** A connection to a tunnelled upstream (ProxyOptions.tunnel). */
  readonly connect = (up: Upstream): Conn => new TunnelConn(up.address, up.port, this.open(up));

  private async open(up: Upstream): Promise<Duplex> {
    const t = up.tunnel!;
    const refuse = (reason: string, e: Error): Error => {
      this.refused[reason] = (this.refused[reason] ?? 0) + 1;
      this.counter?.inc({ outcome: reason });
      this.o.log.warn({ upstream: up.key, node: t.node, reason, err: e.message }, 'proxy: upstream through the tunnel refused');
      return e;
    };
    if (t.source === undefined) {
      throw refuse('no-identity', new UpstreamDenied(`${up.key}: the client is no workload (no identity to open the tunnel as), and the destination is strict`));
    }
    const client = this.o.client();
    const node = this.o.peer(t.node, isIPv6(up.address) ? 6 : 4);
    if (!client) throw refuse('no-tunnel', new Error(`${up.key}: the tunnel is not running on this agent (yet)`));
    if (!node) throw refuse('no-node', new Error(`${up.key}: no tunnel end known for node ${t.node} (the model's nodes[])`));
    try {
      const d = await client.connect({ source: t.source, dst: { address: up.address, port: up.port }, node });
      this.tunnelled++;
      this.counter?.inc({ outcome: 'tunnelled' });
      return d;
    } catch (e) {
      const reason = e instanceof TunnelError ? e.reason : 'tunnel-failed';
      if (reason === 'denied') {
        throw refuse(reason, new UpstreamDenied(`${up.key}: ${(e as Error).message}`));
      }
      throw refuse(reason, e as Error);
    }
  }

  report(): { tunnelled: number; refused: Record<string, number> } {
    return { tunnelled: this.tunnelled, refused: { ...this.refused } };
  }
}
