// The tunnel between node agents (HBONE, issue 13): what the rest of the agent sees of it. The kernel hands a meshed
// pod's connection to a backend on another node to the local agent (as the L7 hand-over does: the original
// destination and the client's cgroup); the wiring finds the source workload's identity and the destination's node
// and calls TunnelClient.open(), which carries the connection in an HTTP/2 CONNECT stream over mTLS to that node's
// agent on 15008 (agent/tunnel/client.ts); that agent's TunnelServer (server.ts) checks the peer's identity, the
// destination and the L4 authorization, and connects to the pod.
import type { Socket } from 'node:net';
import type { NetConn } from '../proxy/netio.js';

/** The HBONE port of every node's agent (ztunnel's). */
export const HBONE_PORT = 15008;

/** One connection to carry: who asks (the certificate presented) and where it was meant to go. */
export interface TunnelRequest {
  /** SPIFFE id of the source workload (spiffe://<td>/ns/<ns>/sa/<sa>): the pool's key and the certificate presented */
  source: string;
  /** the pod address and port the connection was meant for (the kernel's original destination): the CONNECT :authority */
  dst: { address: string; port: number };
  /** the destination node: its name (pool key, meshctl tunnels) and its tunnel address (port: HBONE_PORT unless given) */
  node: { name: string; address: string; port?: number };
}

/** Why a tunnelled connection was refused (a metric label and a log field; the server's 4xx/5xx map to these). */
export type RefusalReason =
  | 'no-certificate' | 'bad-certificate' | 'no-identity' | 'not-local' | 'denied' | 'bad-request' | 'upstream-failed'
  | 'handshake-timeout' | 'too-many-handshakes' | 'bad-handshake' | 'peer-refused' | 'tunnel-failed';

/** A refusal, on either end: the reason, and the HTTP status the server answered with when there was one. */
export class TunnelError extends Error {
  override name = 'TunnelError';
  constructor(readonly reason: RefusalReason, message: string, readonly status?: number) { super(message); }
}

/** The client side, as the kernel hand-over's wiring uses it. */
export interface TunnelOpener {
  /**
   * Carry `client` (an accepted socket the kernel handed over: a netio NetConn with allowHalfOpen, or a node:net Socket) to req.dst through the pooled mTLS connection to
   * req.node for req.source. Takes the socket over: resolves once the destination accepted (the CONNECT's 200) and
   * bytes then flow both ways (half-close passed on) until both sides end; rejects with a TunnelError when the tunnel
   * or the destination refused, after resetting the client socket (the app sees a refused connection, as it would
   * from the pod itself).
   */
  open(req: TunnelRequest, client: Socket | NetConn): Promise<void>;
}
