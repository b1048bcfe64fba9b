// The policy's per-request decisions after a route was chosen (policy.ts begin()): one PolicyExchange per request,
// one PolicyAttempt per try. Per attempt: the max-requests / max-retries breaker, the balancer over the group's
// usable backends (a retry avoids the backend whose attempt just failed), then the outcome: outlier detection,
// retry_on, method idempotency, body replayability, attempts left, the retry budget, the backoff. What an outcome
// says about the backend is decided once (outcome.ts) for all of them.
import type { BackendStates } from '../health/states.js';
import type { Attempt, Exchange, Headers, LocalReply, Outcome, RequestHead, Source, Upstream } from './types.js';
import { tunnelledUpstream } from './tunnelup.js';
import type { Limit } from './breaker.js';
import type { BackendSlot, GroupState, RouteState, ServiceState } from './compile.js';
import { RETRY_NONE, RETRY_SAFE, type RetryRules, backoffMs, budgetAllows } from './retry.js';
import { CLASS_LOCAL, statusClass } from './metrics.js';
import { isFailure, verdict, type Verdict } from './outcome.js';

/** Reasons of local replies (metrics label, access log). */
export type LocalReason = 'misdirected' | 'bad-path' | 'denied' | 'no-route' | 'no-healthy-upstream' | Limit;

/**
 * A local reply. The engine adds content-type and length, and to a gRPC client turns it into a
 * trailers-only gRPC answer (grpc-status from the HTTP status, as Envoy), so the policy answers
 * every client alike and sets only its own x-sockmesh-* headers.
 */
export function localReply(_head: RequestHead, status: number, body: string, headers: Headers): LocalReply {
  return { status, headers, body: body + '\n' };
}

/** What an exchange needs from the policy that made it. */
export interface ExchangeHost {
  readonly states: BackendStates;
  readonly random: () => number;
  readonly now: () => number;
  /** outlier detection after an attempt's outcome */
  recordOutcome(group: GroupState, slot: BackendSlot, v: Verdict): void;
  /** the exchange's end, for the access log */
  logAccess(svc: ServiceState, ex: PolicyExchange, status: number, grpcStatus: number | undefined, durationMs: number): void;
  /** a retry its rules allowed was refused by a limit: the failed attempt's answer goes to the client */
  retryRefused(group: GroupState, route: RouteState, limit: 'budget' | 'max-retries', failed: Outcome): void;
  /** the workload identity (SPIFFE id) of a client's cgroup: what a tunnelled upstream is opened as */
  identityOf(cgroupId: bigint): string | undefined;
}

/** One attempt: the engine calls finish() once. */
class PolicyAttempt implements Attempt {
  finished = false;
  constructor(
    private readonly ex: PolicyExchange,
    readonly slot: BackendSlot,
    readonly retry: boolean,
    /** the slot's upstream, or for a backend on another node its upstream through the tunnel as the client */
    readonly upstream: Upstream,
  ) {}
  finish(outcome: Outcome): void {
    if (this.finished) return;
    this.finished = true;
    this.ex.finished(this, outcome);
  }
}

// PolicyExchange.x's bits
const X_SAFE_ONLY = 1;
const X_COUNTED = 2;
const X_RETRY_RESERVED = 4;
const X_DENIED_UPSTREAM = 8;
const X_ENDED = 16;

/**
 * One request's life in the policy. Accounting it holds and gives back exactly once:
 * - the group's active requests (from a successful attempt(1) to end());
 * - the current backend's active requests (from its attempt to the next attempt or end(): the
 *   response body of the last attempt is still streaming until end());
 * - a retry slot (from retryDelay's yes, through backoff, until that retry's finish()).
 */
export class PolicyExchange implements Exchange {
  readonly bufferLimitBytes: number;
  attempts = 0;
  localReason: LocalReason | undefined;
  private readonly start: number;
  private readonly retry: RetryRules | undefined;
  /** X_* bits: the yes/no state in one field (an object per request, 8 bytes a field) */
  private x = 0;
  private slot: BackendSlot | undefined;
  private avoid: BackendSlot | undefined;
  private retryAttempt: PolicyAttempt | undefined;
  /** the client's identity, asked once (only when a backend is reached through the tunnel) */
  private identity: string | undefined | null = null;

  constructor(
    private readonly p: ExchangeHost,
    private readonly svc: ServiceState,
    readonly route: RouteState,
    private readonly group: GroupState,
    readonly head: RequestHead,
    private readonly source?: Source,
  ) {
    this.start = p.now();
    const mode = route.retry ? route.retry.mode(head.method, head.grpc) : RETRY_NONE;
    const retry = mode !== RETRY_NONE ? route.retry : undefined;
    this.retry = retry;
    if (mode === RETRY_SAFE) this.x = X_SAFE_ONLY;
    // a request that will never be retried need not be buffered
    this.bufferLimitBytes = retry ? retry.bufferLimitBytes : 0;
  }

  private flag(bit: number, on: boolean): void { this.x = on ? this.x | bit : this.x & ~bit; }
  /** a gRPC call retried only on connect failures and the gRPC codes of retry_on (retry.mode) */
  private get safeOnly(): boolean { return (this.x & X_SAFE_ONLY) !== 0; }
  private get counted(): boolean { return (this.x & X_COUNTED) !== 0; }
  private set counted(v: boolean) { this.flag(X_COUNTED, v); }
  private get retryReserved(): boolean { return (this.x & X_RETRY_RESERVED) !== 0; }
  private set retryReserved(v: boolean) { this.flag(X_RETRY_RESERVED, v); }
  /** the last attempt was refused by the destination's authorization */
  private get deniedUpstream(): boolean { return (this.x & X_DENIED_UPSTREAM) !== 0; }
  private set deniedUpstream(v: boolean) { this.flag(X_DENIED_UPSTREAM, v); }
  private get ended(): boolean { return (this.x & X_ENDED) !== 0; }
  private set ended(v: boolean) { this.flag(X_ENDED, v); }

  lastBackend(): string {
    return this.slot ? this.slot.upstream.key : '';
  }

  attempt(n: number): Attempt | LocalReply {
    const b = this.group.breaker;
    if (n <= 1) {
      if (!this.counted) {
        if (!b.tryRequest()) return this.overflow('max-requests');
        this.counted = true;
      }
    } else {
      if (!this.retryReserved && !b.tryRetry(this.retry?.budgetOnly !== true)) return this.overflow('max-retries');
      this.retryReserved = false;
      this.route.stats.retries++;
    }
    if (this.slot) {
      this.slot.active--;
      this.slot = undefined;
    }
    const usable = this.group.usable(this.p.states);
    if (usable.length === 0) {
      if (n > 1) b.retryDone();
      this.localReason = 'no-healthy-upstream';
      return localReply(this.head, 503, 'no healthy upstream', { 'x-sockmesh-reason': 'no-healthy-upstream' });
    }
    const slot = this.group.balancer.pick(usable, this.avoid) as BackendSlot;
    slot.active++;
    this.slot = slot;
    this.attempts = n;
    let up = slot.upstream;
    if (slot.tunnel !== undefined) {
      if (this.identity === null) this.identity = this.source === undefined ? undefined : this.p.identityOf(this.source.cgroupId);
      up = tunnelledUpstream(slot, this.identity);
    }
    const a = new PolicyAttempt(this, slot, n > 1, up);
    if (n > 1) this.retryAttempt = a;
    return a;
  }

  /** @internal from PolicyAttempt.finish */
  finished(a: PolicyAttempt, o: Outcome): void {
    if (a === this.retryAttempt) {
      this.retryAttempt = undefined;
      this.group.breaker.retryDone();
    }
    // the client went away: says nothing about the backend
    if (o.kind === 'cancelled') return;
    // refused by the destination's authorization (tunnelup.ts): the client's doing, not the backend's. Read from this
    // attempt's outcome (its own connection's error), not from the upstream another request of the identity shares.
    this.deniedUpstream = o.kind === 'connect-failure' && o.denied === true;
    if (this.deniedUpstream) { this.avoid = undefined; return; }
    if (o.kind === 'overflow') {
      // the engine could not get a connection; the limit was counted by the breaker itself
      this.localReason = (o.limit as Limit) ?? 'max-pending-requests';
      return;
    }
    // One verdict (outcome.ts) for both: a retry avoids a backend that failed (a gRPC UNAVAILABLE on HTTP 200 as
    // much as a 503), and outlier detection counts the same failure.
    const v = verdict(o);
    this.avoid = isFailure(v) ? a.slot : undefined;
    // A timeout while a body was still coming may be the client's slowness, not the backend's; counted, a client
    // stopping halfway through its uploads would eject healthy backends. (The engine starts the timeouts once the body
    // is whole, so this is a second line: an engine that reports requestComplete false is not believed against a backend.)
    if (o.kind === 'timeout' && this.head.hasBody && o.requestComplete !== true) return;
    this.p.recordOutcome(this.group, a.slot, v);
  }

  retryDelay(n: number, outcome: Outcome, bodyReplayable: boolean): number | null {
    const retry = this.retry;
    if (!retry || this.ended || n > retry.attempts) return null;
    // a denial is not retried: another backend's node would deny the same identity (tunnelup.ts)
    if (this.deniedUpstream && outcome.kind === 'connect-failure') return null;
    if (this.head.hasBody && !bodyReplayable) return null;
    if (!(this.safeOnly ? retry.coversSafe(outcome) : retry.covers(outcome))) return null;
    const b = this.group.breaker;
    if (!budgetAllows(b.retries, b.requests, retry.budgetPercent, retry.minRetryConcurrency)) {
      this.route.stats.budgetExhausted++;
      this.p.retryRefused(this.group, this.route, 'budget', outcome);
      return null;
    }
    // the retry holds its place from now, through the backoff, until its attempt has an outcome
    if (!b.tryRetry(!retry.budgetOnly)) {
      this.p.retryRefused(this.group, this.route, 'max-retries', outcome);
      return null;
    }
    this.retryReserved = true;
    return backoffMs(n, retry.backoffBaseMs, retry.backoffMaxMs, this.p.random);
  }

  end(status: number, grpcStatus?: number): void {
    if (this.ended) return;
    this.ended = true;
    const b = this.group.breaker;
    if (this.counted) b.requestDone();
    if (this.retryReserved) {
      this.retryReserved = false;
      b.retryDone();
    }
    if (this.retryAttempt) {
      this.retryAttempt = undefined;
      b.retryDone();
    }
    const slot = this.slot;
    if (slot) slot.active--;
    const ms = this.p.now() - this.start;
    const stats = this.route.stats.backend(slot ? slot.upstream.key : '');
    if (this.localReason !== undefined && status !== 0) {
      stats.classes[CLASS_LOCAL]!++;
      this.route.stats.localReply(this.localReason);
    } else stats.classes[statusClass(status)]!++;
    stats.observe(ms);
    this.p.logAccess(this.svc, this, status, grpcStatus, ms);
  }

  private overflow(limit: Limit): LocalReply {
    this.localReason = limit;
    return localReply(this.head, 503, `upstream overflow: ${limit}`, { 'x-sockmesh-overflow': limit });
  }
}
