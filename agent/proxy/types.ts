// The contract between the proxy's protocol engine (server.ts, http1.ts, h2server.ts, h2exchange.ts, exchange.ts,
// h1pool.ts, h2pool.ts: bytes, sockets, pools) and its policy (policy.ts and friends: routing, retries, breakers,
// outlier detection, balancing, authorization, metrics). The engine never decides; the policy never touches a socket.
import type { ForwardedHeaders, HeaderRewrite, UpstreamProtocol } from '../model/l7.js';
import type { OriginalDst } from '../model/redirect.js';

/** Header names lower-case; a repeated header is an array (as node:http gives them). */
export type Headers = Record<string, string | string[]>;

/** Where the client's connection was going: the kernel's hand-over, a model type (the datapath produces it). */
export type { OriginalDst };

export interface Source {
  /** the client socket's address as the proxy sees it */
  address: string;
  port: number;
  cgroupId: bigint;
}

export interface RequestHead {
  /** upper-case */
  method: string;
  /** request-target in origin form, query included ('/a/b?c=d') */
  path: string;
  /** Host header or :authority */
  authority: string;
  /** without hop-by-hop headers (connection, keep-alive, transfer-encoding, upgrade, ...) and without pseudo-headers */
  headers: Headers;
  protocol: 'http1' | 'h2';
  /** content-type application/grpc... */
  grpc: boolean;
  /** the request has a body (content-length > 0, chunked, or an h2 stream not ended with the head) */
  hasBody: boolean;
}

/** An answer made by the proxy itself (no route, denied, overflow, no upstream). */
export interface LocalReply {
  status: number;
  /** e.g. x-sockmesh-denied: <rule>, x-sockmesh-overflow: max-requests */
  headers: Headers;
  body: string;
}

/** The engine's per-group connection accounting; the policy enforces the group's circuit breaker. */
export interface UpstreamGroup {
  /** before opening a new connection to one of the group's backends; false = at max connections */
  tryOpenConnection(): boolean;
  connectionClosed(): void;
  /** before queueing a request for a connection; false = at max pending requests */
  tryPending(): boolean;
  pendingDone(): void;
  /** the group's max connections (the engine opens at most this many per group, all backends together) */
  readonly maxConnections: number;
}

export interface Upstream {
  /** 'address:port', '[v6]:port'; a tunnelled upstream's adds ' as <source identity>' (the pools' key: tunnelup.ts) */
  key: string;
  address: string;
  family: 4 | 6;
  port: number;
  group: UpstreamGroup;
  /** set: connect through the HBONE tunnel to the backend's node, as the client's identity (tunnelup.ts) */
  tunnel?: UpstreamTunnel;
}

/** How a backend on another node is reached: through its node's tunnel end, as a workload identity. */
export interface UpstreamTunnel {
  /** the client's workload identity (SPIFFE id) the stream is opened as; undefined: the client is no workload */
  readonly source: string | undefined;
  /** the backend's node (the model's workloads[].node) */
  readonly node: string;
  /** the destination's mTLS mode is strict (else permissive) */
  readonly strict: boolean;
}

export type Outcome =
  /** a response head arrived (grpcStatus when the head carries grpc-status: a trailers-only response) */
  | { kind: 'response'; status: number; grpcStatus?: number }
  /**
   * denied (optional, additive): this attempt's connection was refused by the destination's authorization (or, to a
   * strict destination with no identity, could not be made): the connector's error had code EACCES (tunnelup.ts
   * isDenial). Carried per attempt, from the connection that failed: not the backend's fault, not retried (decide.ts).
   */
  | { kind: 'connect-failure'; denied?: boolean }
  /** the upstream closed or reset before a complete response head */
  | { kind: 'reset' }
  /**
   * the per-try timeout fired before the response head. requestComplete (optional, additive): the request body had
   * been received whole by then; without it a request with a body is not held against the backend by outlier
   * detection (a client that sends its body slowly would otherwise eject healthy backends).
   */
  | { kind: 'timeout'; requestComplete?: boolean }
  /** no connection could be had in time (pending overflow counted by the policy) */
  | { kind: 'overflow'; limit: string }
  /**
   * not the upstream's doing: the client went away before the response head. Never retried (retryDelay
   * is not asked); not an outlier signal. (The route timeout firing before the head finishes the attempt
   * with 'timeout', and is not retried either.)
   */
  | { kind: 'cancelled' };

export interface Attempt {
  upstream: Upstream;
  /** exactly once per attempt: when its response head arrives, or when it fails before that */
  finish(outcome: Outcome): void;
}

/** What the engine reads of the route an exchange took (one object per route, made when the policy is compiled). */
export interface RouteSettings {
  /** route name (metrics, access log) */
  readonly name: string;
  /** the whole exchange; 0 = none. On expiry the engine answers 504 (or resets a started response). */
  readonly timeoutMs: number;
  /** each attempt, to its response head; 0 = none */
  readonly perTryTimeoutMs: number;
  readonly requestHeaders: HeaderRewrite;
  readonly responseHeaders: HeaderRewrite;
  /** the service's: what the engine speaks to the backends ('downstream': the client's protocol) */
  readonly upstreamProtocol: UpstreamProtocol;
  /** the service's x-forwarded-* / forwarded handling (forwarded.ts); absent: those headers pass untouched */
  readonly forwarded?: ForwardedHeaders;
}

export interface Exchange {
  readonly route: RouteSettings;
  /** a body larger than this is streamed and the request is not retried (0 = bodies never retried) */
  readonly bufferLimitBytes: number;
  /**
   * Attempt n (1 = the first try): an upstream chosen by the balancer among the usable backends of a
   * group picked by the route's split, or a local reply (503 with x-sockmesh-overflow: max-requests |
   * max-retries, or 503 "no healthy upstream").
   */
  attempt(n: number): Attempt | LocalReply;
  /**
   * After attempt n failed with outcome (nothing sent to the client yet): milliseconds to wait before
   * attempt n+1, or null to give up and answer with this outcome (a response is passed on; connect
   * failure/reset 502 or 503, timeout 504). bodyReplayable: the request body was buffered whole.
   * The engine asks this after EVERY response head too (a 200 included: the policy alone knows its
   * retry_on and retriable codes), so return null fast for an outcome that is not retriable.
   */
  retryDelay(n: number, outcome: Outcome, bodyReplayable: boolean): number | null;
  /** exactly once at the end: status sent to the client (0 = client gone), grpc-status if any */
  end(status: number, grpcStatus?: number): void;
}

export interface Policy {
  /** the service for original destination vip:port, its route for this request, authorization */
  begin(dst: OriginalDst, source: Source, head: RequestHead): Exchange | LocalReply;
}
