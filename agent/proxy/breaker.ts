// The circuit breaker of one backend group: four independent limits, each a count of things in
// flight (as Envoy's per-cluster thresholds), not a failure-rate state machine. Connections and
// pending requests are counted by the engine through UpstreamGroup; active requests and active
// retries by the policy. A limit reached is an overflow: counted, and answered by the caller with
// 503 and x-sockmesh-overflow naming the limit.
import type { CircuitBreaker } from '../model/l7.js';
import type { UpstreamGroup } from './types.js';

export type Limit = 'max-connections' | 'max-pending-requests' | 'max-requests' | 'max-retries';
export const LIMITS: readonly Limit[] = ['max-connections', 'max-pending-requests', 'max-requests', 'max-retries'];

/** the four counts in flight */
type Count = 'connections' | 'pending' | 'requests' | 'retries';

export class GroupBreaker implements UpstreamGroup {
  connections = 0;
  pending = 0;
  /** requests of this group whose exchange has not ended */
  requests = 0;
  /** retries decided and not yet finished (waiting in backoff or in flight) */
  retries = 0;
  readonly overflows: Record<Limit, number> = { 'max-connections': 0, 'max-pending-requests': 0, 'max-requests': 0, 'max-retries': 0 };

  constructor(
    public limits: CircuitBreaker,
    private readonly onOverflow: (limit: Limit) => void = () => {},
  ) {}

  get maxConnections(): number {
    return this.limits.maxConnections;
  }

  tryOpenConnection(): boolean {
    return this.take('connections', this.limits.maxConnections, 'max-connections');
  }

  connectionClosed(): void {
    this.give('connections');
  }

  tryPending(): boolean {
    return this.take('pending', this.limits.maxPendingRequests, 'max-pending-requests');
  }

  pendingDone(): void {
    this.give('pending');
  }

  tryRequest(): boolean {
    return this.take('requests', this.limits.maxRequests, 'max-requests');
  }

  requestDone(): void {
    this.give('requests');
  }

  tryRetry(): boolean {
    return this.take('retries', this.limits.maxRetries, 'max-retries');
  }

  retryDone(): void {
    this.give('retries');
  }

  /** one more of count, unless it is at max (an overflow of limit) */
  private take(count: Count, max: number, limit: Limit): boolean {
    if (this[count] >= max) return this.overflow(limit);
    this[count]++;
    return true;
  }

  private give(count: Count): void {
    if (this[count] > 0) this[count]--;
  }

  private overflow(limit: Limit): false {
    this.overflows[limit]++;
    this.onOverflow(limit);
    return false;
  }
}
