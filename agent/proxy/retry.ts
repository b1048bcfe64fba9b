// Retry decisions: which outcomes a route's retry_on covers, which requests may be replayed at all,
// the backoff between tries and the retry budget. Pure functions over numbers so that each rule can
// be tested on its own; the per-exchange bookkeeping is in decide.ts.
import type { RetryOn, RetryPolicy } from '../model/l7.js';
import type { Outcome } from './types.js';
import { FAILED_GATEWAY, isFailure, verdict } from './outcome.js';

/** gRPC status codes named in retry_on (grpc/doc/statuscodes.md). */
export const GRPC_STATUS: Readonly<Record<string, number>> = {
  cancelled: 1,
  'deadline-exceeded': 4,
  'resource-exhausted': 8,
  internal: 13,
  unavailable: 14,
};

// RFC 9110 9.2.2: methods whose repetition has the same effect as one request.
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

export function isIdempotent(method: string): boolean {
  return IDEMPOTENT.has(method);
}

export type RetryMode = 0 | 1 | 2;
export const RETRY_NONE = 0;
export const RETRY_ALL = 1;
export const RETRY_SAFE = 2;

/**
 * What each retry_on condition covers, as Envoy reads them:
 * - 5xx: any 5xx response, and no response at all (connect failure, reset, per-try timeout): what outcome.ts
 *   judges a failure of the backend, so a trailers-only gRPC answer whose status maps to 5xx too (INTERNAL,
 *   UNKNOWN, DATA_LOSS, UNIMPLEMENTED, UNAVAILABLE, DEADLINE_EXCEEDED);
 * - gateway-error: 502, 503, 504, and no response at all (outcome.ts's gateway errors: gRPC UNAVAILABLE and
 *   DEADLINE_EXCEEDED too);
 * - reset / connect-failure / timeout: only that failure;
 * - retriable-status-codes: the listed statuses;
 * - gRPC names: a response whose grpc-status (trailers-only head) is that code.
 * A pending-queue overflow is never retried: the group is saturated and a retry would add to it.
 */
export class RetryRules {
  readonly attempts: number;
  readonly perTryTimeoutMs: number;
  readonly bufferLimitBytes: number;
  readonly retryNonIdempotent: boolean;
  readonly backoffBaseMs: number;
  readonly backoffMaxMs: number;
  readonly budgetPercent: number;
  readonly minRetryConcurrency: number;
  /** the route's own budget replaces the group's maxRetries (RetryPolicy.budgetSet) */
  readonly budgetOnly: boolean;
  private readonly on5xx: boolean;
  private readonly onGateway: boolean;
  private readonly onReset: boolean;
  private readonly onConnect: boolean;
  private readonly onTimeout: boolean;
  private readonly statuses: ReadonlySet<number>;
  private readonly grpc: ReadonlySet<number>;

  constructor(p: RetryPolicy) {
    this.attempts = p.attempts;
    this.perTryTimeoutMs = p.perTryTimeoutMs;
    this.bufferLimitBytes = p.bufferLimitBytes;
    this.retryNonIdempotent = p.retryNonIdempotent;
    this.backoffBaseMs = p.backoffBaseMs;
    this.backoffMaxMs = p.backoffMaxMs;
    this.budgetPercent = p.budgetPercent;
    this.minRetryConcurrency = p.minRetryConcurrency;
    this.budgetOnly = p.budgetSet === true;
    const on = new Set<RetryOn>(p.retryOn);
    this.on5xx = on.has('5xx');
    this.onGateway = on.has('gateway-error');
    this.onReset = on.has('reset');
    this.onConnect = on.has('connect-failure');
    this.onTimeout = on.has('timeout');
    this.statuses = on.has('retriable-status-codes') ? new Set(p.retriableStatusCodes) : new Set();
    const grpc = new Set<number>();
    for (const name of on) if (GRPC_STATUS[name] !== undefined) grpc.add(GRPC_STATUS[name]!);
    this.grpc = grpc;
  }

  /**
   * How a request may be retried (asked once per request, before any body is buffered): 'all' =
   * every outcome retry_on covers; 'safe' = a gRPC call (always POST) while non-idempotent retries
   * are off: only what says the call was not processed or what the user named by gRPC code (as
   * gRPC's own retryableStatusCodes, which apply whatever the method): a connect failure, or a
   * grpc-status in retry_on; 'none'.
   */
  mode(method: string, grpc: boolean): RetryMode {
    if (this.attempts <= 0) return RETRY_NONE;
    if (this.retryNonIdempotent || isIdempotent(method)) return RETRY_ALL;
    return grpc ? RETRY_SAFE : RETRY_NONE;
  }

  mayRetry(method: string): boolean {
    return this.mode(method, false) === RETRY_ALL;
  }

  /** covers() for a request in 'safe' mode */
  coversSafe(o: Outcome): boolean {
    if (o.kind === 'connect-failure') return this.covers(o);
    return o.kind === 'response' && o.grpcStatus !== undefined && this.grpc.has(o.grpcStatus);
  }

  /** whether retry_on covers this outcome */
  covers(o: Outcome): boolean {
    switch (o.kind) {
      case 'response': {
        if (o.grpcStatus !== undefined && this.grpc.has(o.grpcStatus)) return true;
        const v = verdict(o);
        if (this.on5xx && isFailure(v)) return true;
        if (this.onGateway && v === FAILED_GATEWAY) return true;
        return this.statuses.has(o.status);
      }
      case 'connect-failure':
        return this.onConnect || this.on5xx || this.onGateway;
      case 'reset':
        return this.onReset || this.on5xx || this.onGateway;
      case 'timeout':
        return this.onTimeout || this.on5xx || this.onGateway;
      default:
        return false;
    }
  }
}

/**
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
 * before retry r (1 = the first retry) wait a uniformly random time in [0, min(max, base * 2^(r-1))).
 * Spreads a burst of clients that failed together instead of synchronizing their retries.
 */
export function backoffMs(retry: number, baseMs: number, maxMs: number, random: () => number): number {
  if (baseMs <= 0) return 0;
  const cap = Math.min(maxMs > 0 ? maxMs : Infinity, baseMs * 2 ** Math.min(retry - 1, 30));
  return Math.floor(random() * cap);
}

/**
 * The retry budget (Envoy's retry_budget): one more retry may start while the group's active retries
 * stay below max(minRetryConcurrency, budgetPercent% of its active requests). When every backend
 * fails, retries can then add at most that share to the load instead of multiplying it by the
 * number of attempts. budgetPercent 0 and minRetryConcurrency 0 allow no retries at all.
 */
export function budgetAllows(activeRetries: number, activeRequests: number, budgetPercent: number, minRetryConcurrency: number): boolean {
  const allowed = Math.max(minRetryConcurrency, Math.floor((budgetPercent * activeRequests) / 100));
  return activeRetries < allowed;
}
