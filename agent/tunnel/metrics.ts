// The tunnel's counts: per peer (direction, peer node or address, identity) handshakes, streams and bytes; refusals
// by reason. Plain numbers on objects made once per peer: the byte counts are added per chunk, and prom-client's
// labelled children would hash a label set on every add. Prometheus reads them when scraped (collect()), meshctl
// tunnels through the admin API (report()).
import { Counter, Gauge, type Registry } from 'prom-client';
import type { TunnelReport } from '../admin/protocol.js';
import type { RefusalReason } from './types.js';

export type Direction = 'out' | 'in';

/** One peer of this node's tunnels: a pooled client connection's destination, or a client of the server. */
export class PeerStats {
  handshakes = 0;
  /** TLS connections open now */
  connections = 0;
  streamsOpen = 0;
  streamsTotal = 0;
  /** bytes carried from the tunnel to the local side (in) and from the local side into the tunnel (out), payload only */
  bytesIn = 0;
  bytesOut = 0;
  lastActive = Date.now();
  constructor(readonly direction: Direction, readonly peer: string, readonly identity: string) {}
}

export class TunnelMetrics {
  private readonly peers = new Map<string, PeerStats>();
  private readonly refused = new Map<string, number>();

  peer(direction: Direction, peer: string, identity: string): PeerStats {
    const key = `${direction}\0${peer}\0${identity}`;
    let p = this.peers.get(key);
    if (!p) this.peers.set(key, p = new PeerStats(direction, peer, identity));
    return p;
  }

  refusal(direction: Direction, reason: RefusalReason): void {
    const key = `${direction}\0${reason}`;
    this.refused.set(key, (this.refused.get(key) ?? 0) + 1);
  }

  refusals(direction?: Direction): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, n] of this.refused) {
      const [d, reason] = k.split('\0') as [Direction, string];
      if (!direction || d === direction) out[reason] = (out[reason] ?? 0) + n;
    }
    return out;
  }

  /** Totals over every peer of a direction (tests and the bench read them). */
  totals(direction: Direction): { handshakes: number; connections: number; streamsOpen: number; streamsTotal: number; bytesIn: number; bytesOut: number } {
    const t = { handshakes: 0, connections: 0, streamsOpen: 0, streamsTotal: 0, bytesIn: 0, bytesOut: 0 };
    for (const p of this.peers.values()) {
      if (p.direction !== direction) continue;
      t.handshakes += p.handshakes; t.connections += p.connections; t.streamsOpen += p.streamsOpen; t.streamsTotal += p.streamsTotal;
      t.bytesIn += p.bytesIn; t.bytesOut += p.bytesOut;
    }
    return t;
  }

  report(): TunnelReport {
    return {
      peers: [...this.peers.values()].map((p) => ({
        direction: p.direction, peer: p.peer, identity: p.identity, handshakes: p.handshakes, connections: p.connections,
        streamsOpen: p.streamsOpen, streamsTotal: p.streamsTotal, bytesIn: p.bytesIn, bytesOut: p.bytesOut,
        lastActive: new Date(p.lastActive).toISOString(),
      })),
      refusals: { in: this.refusals('in'), out: this.refusals('out') },
    };
  }

  /** Register the families in `registry`; their values are read at scrape time. */
  register(registry: Registry): void {
    const peers = (): PeerStats[] => [...this.peers.values()];
    const labels = ['direction', 'peer', 'identity'] as const;
    const family = (name: string, help: string, get: (p: PeerStats) => number, counter: boolean): void => {
      const collect = function (this: Gauge<(typeof labels)[number]> | Counter<(typeof labels)[number]>): void {
        this.reset();
        for (const p of peers()) {
          const v = get(p);
          const l = { direction: p.direction, peer: p.peer, identity: p.identity };
          if (this instanceof Counter) { if (v > 0) this.inc(l, v); } else this.set(l, v);
        }
      };
      if (counter) new Counter({ name, help, labelNames: labels, registers: [registry], collect });
      else new Gauge({ name, help, labelNames: labels, registers: [registry], collect });
    };
    family('sockmesh_tunnel_handshakes_total', 'mTLS handshakes completed (steady state: none)', (p) => p.handshakes, true);
    family('sockmesh_tunnel_connections', 'mTLS connections open', (p) => p.connections, false);
    family('sockmesh_tunnel_streams_open', 'CONNECT streams open', (p) => p.streamsOpen, false);
    family('sockmesh_tunnel_streams_total', 'CONNECT streams opened', (p) => p.streamsTotal, true);
    family('sockmesh_tunnel_received_bytes_total', 'payload bytes from the tunnel to the local side', (p) => p.bytesIn, true);
    family('sockmesh_tunnel_sent_bytes_total', 'payload bytes from the local side into the tunnel', (p) => p.bytesOut, true);
    const refused = this.refused;
    new Counter({
      name: 'sockmesh_tunnel_refusals_total', help: 'tunnelled connections or handshakes refused, by reason', labelNames: ['direction', 'reason'],
      registers: [registry],
      collect(this: Counter<'direction' | 'reason'>) {
        this.reset();
        for (const [k, n] of refused) { const [direction, reason] = k.split('\0') as [string, string]; this.inc({ direction, reason }, n); }
      },
    });
  }
}
