// The L7 part of the model: what a service marked for the L7 path asks of the proxy, and the
// active health check every service may carry. Pure data, no I/O; validated by config.ts (file)
// and built by sources/xds/build.ts (xDS). Durations are milliseconds, sizes bytes.

/** What connect() to an L7 service does while the proxy is not alive (no heartbeat). */
export type FailMode = 'closed' | 'open';
export type Balancer = 'least-request' | 'round-robin';
/**
 * The protocol the proxy speaks to a service's backends: 'downstream' (the default) the client's own, 'http1' or
 * 'h2' (cleartext, prior knowledge) whatever the client speaks, translated both ways (Envoy's per-cluster
 * http_protocol_options / http2_protocol_options / use_downstream_protocol_config; Istio's port names).
 */
export type UpstreamProtocol = 'downstream' | 'http1' | 'h2';

export type StringMatch =
  | { exact: string }
  | { prefix: string }
  /** A JavaScript regular expression source, matched against the whole value (anchored). */
  | { regex: string };

export interface HeaderMatch {
  /** lower-case header name */
  name: string;
  /** absent = the header must be present (any value) */
  value?: StringMatch;
  /** true = the route matches when this header does NOT match */
  invert?: boolean;
}

export interface RouteMatch {
  /** absent = every path */
  path?: StringMatch;
  /** upper-case methods; absent or empty = every method */
  methods?: string[];
  headers?: HeaderMatch[];
}

export interface HeaderRewrite {
  /** set (replacing any value already there); lower-case names */
  set: Record<string, string>;
  /** lower-case names */
  remove: string[];
}

export type RetryOn =
  | '5xx'
  | 'gateway-error' // 502, 503, 504
  | 'reset' // upstream reset/closed before a response head
  | 'connect-failure'
  | 'retriable-status-codes' // the codes in retriableStatusCodes
  | 'timeout' // a per-try timeout
  // gRPC status (from grpc-status in headers or trailers-only responses)
  | 'cancelled'
  | 'deadline-exceeded'
  | 'internal'
  | 'resource-exhausted'
  | 'unavailable';

export interface RetryPolicy {
  /** retries after the first try (0 = none) */
  attempts: number;
  /** 0 = the route timeout only */
  perTryTimeoutMs: number;
  retryOn: RetryOn[];
  retriableStatusCodes: number[];
  /** exponential backoff with full jitter: delay n = random(0, min(max, base * 2^(n-1))) */
  backoffBaseMs: number;
  backoffMaxMs: number;
  /** retry budget: active retries may be at most budgetPercent% of active requests, but at least minRetryConcurrency */
  budgetPercent: number;
  minRetryConcurrency: number;
  /**
   * The route gave its own budget: it then replaces the group's maxRetries for this route's retries, as a cluster's
   * retry_budget overrides its max_retries in Envoy. Without one (the default budget), both limit a retry.
   */
  budgetSet?: boolean;
  /** a request body is kept for a retry only up to this many bytes; a larger one is not retried */
  bufferLimitBytes: number;
  /** retry POST/PATCH (and other non-idempotent methods) too */
  retryNonIdempotent: boolean;
}

export interface WeightedGroup {
  /** a backend group of the service ('default' = backends without a group) */
  group: string;
  weight: number;
}

export interface Route {
  /** unique within the service; shown in metrics and meshctl routes */
  name: string;
  match: RouteMatch;
  /** one or more groups; the request goes to one of them by weight */
  split: WeightedGroup[];
  /** the whole exchange, from the request head to the response's last byte, retries included; 0 = none */
  timeoutMs: number;
  retry?: RetryPolicy;
  requestHeaders: HeaderRewrite;
  responseHeaders: HeaderRewrite;
}

/** Limits per backend group (each group counts on its own). */
export interface CircuitBreaker {
  maxConnections: number;
  maxPendingRequests: number;
  maxRequests: number;
  maxRetries: number;
}

export interface OutlierDetection {
  /** 0 = off */
  consecutive5xx: number;
  /** 502/503/504 and connect failures/resets; 0 = off */
  consecutiveGatewayErrors: number;
  /** ejection time = base * number of times this backend was ejected, capped at max */
  baseEjectionMs: number;
  maxEjectionMs: number;
  /** at most this share of a group's backends ejected at once */
  maxEjectionPercent: number;
  /**
   * Envoy's interval: the ejection count behind the growing ejection time drops by one for every interval a
   * backend stays in service, so a backend that failed once last week starts again from base (default 10 s)
   */
  intervalMs?: number;
}

export interface AuthzRule {
  name: string;
  action: 'allow' | 'deny';
  /** workload names (Model.workloads) or identities (spiffe://..., the workloads with that identity); absent = any source */
  from?: string[];
  methods?: string[];
  paths?: StringMatch[];
  headers?: HeaderMatch[];
}

export interface Authz {
  /** when no rule matches; deny rules are evaluated first, then allow rules (as Istio) */
  defaultAction: 'allow' | 'deny';
  rules: AuthzRule[];
}

/**
 * x-forwarded-for / x-forwarded-proto / forwarded handling, as Envoy's HTTP connection manager (use_remote_address,
 * xff_num_trusted_hops). Absent: the headers pass untouched (as before).
 */
export interface ForwardedHeaders {
  /** append the client's address to x-forwarded-for and forwarded (for=...;proto=http), set x-forwarded-proto */
  useRemoteAddress: boolean;
  /**
   * how many proxies in front of the client are trusted: 0 = none, so an incoming x-forwarded-proto is replaced with
   * the connection's scheme; more = an incoming one is kept (what the nearest trusted proxy said)
   */
  trustedHops: number;
}

export interface HttpPolicy {
  failMode: FailMode;
  balancer: Balancer;
  /** absent = 'downstream' */
  upstreamProtocol?: UpstreamProtocol;
  /** evaluated in order; the first match wins; no match = 404 */
  routes: Route[];
  circuitBreaker: CircuitBreaker;
  outlierDetection?: OutlierDetection;
  authz?: Authz;
  /** share of requests written to the access log, 0..1 */
  accessLogSample: number;
  /** absent = x-forwarded-* and forwarded pass untouched */
  forwarded?: ForwardedHeaders;
}

export interface HealthCheck {
  kind: 'tcp' | 'http' | 'grpc';
  intervalMs: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  /** http: the path probed; a status in expectedStatuses (default 200-399) is healthy */
  path?: string;
  expectedStatuses?: [number, number][];
  /** grpc: grpc.health.v1 service name ('' = the server as a whole) */
  grpcService?: string;
}

/**
 * A workload (a pod): as a client, its cgroups (paths under the cgroup2 mount) say who connects (L7 and L4
 * authorization); as a destination, its addresses and node say where it runs (the hand-over to the tunnel).
 */
export interface Workload {
  name: string;
  /** empty for a workload of another node (its cgroups are not on this machine) */
  cgroups: string[];
  /** SPIFFE identity `spiffe://<td>/ns/<ns>/sa/<sa>` (mesh.ts SPIFFE_ID); absent = none (no principal) */
  identity?: string;
  /** the --node-id of the node it runs on (a name in Model.nodes); absent = this node */
  node?: string;
  /** its pod addresses, canonical (address.ts) */
  addresses?: string[];
}

export const DEFAULT_CIRCUIT_BREAKER: CircuitBreaker = {
  // Envoy's defaults
  maxConnections: 1024,
  maxPendingRequests: 1024,
  maxRequests: 1024,
  maxRetries: 3,
};
