// The circuit breaker of one backend group: four independent limits, each a count of things in
// flight (as Envoy's per-cluster thresholds), not a failure-rate state machine. Connections and
// pending requests are counted by the engine through UpstreamGroup; active requests and active
// retries by the policy. A limit reached is an overflow: counted, and answered by the caller with
// 503 and x-sockmesh-overflow naming the limit.
import type { CircuitBreaker } from '../model/l7.js';
import type { UpstreamGroup } from './types.js';

export type Limit = 'max-connections' | 'max-pending-requests' | 'max-requests' | 'max-retries';
export const LIMITS: readonly Limit[] = ['max-connections', 'max-pending-requests', 'max-requests', 'max-retries'];

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
    if (this.connections >= this.limits.maxConnections) return this.overflow('max-connections');
    this.connections++;
    return true;
  }

  connectionClosed(): void {
    if (this.connections > 0) this.connections--;
  }

  tryPending(): boolean {
    if (this.pending >= this.limits.maxPendingRequests) return this.overflow('max-pending-requests');
    this.pending++;
    return true;
  }

  pendingDone(): void {
    if (this.pending > 0) this.pending--;
  }

  tryRequest(): boolean {
    if (this.requests >= this.limits.maxRequests) return this.overflow('max-requests');
    this.requests++;
    return true;
  }

  requestDone(): void {
    if (this.requests > 0) this.requests--;
  }

  /** enforce false: counted, never refused (a route whose own retry budget replaces maxRetries) */
  tryRetry(enforce = true): boolean {
    if (enforce && this.retries >= this.limits.maxRetries) return this.overflow('max-retries');
    this.retries++;
    return true;
  }

  retryDone(): void {
    if (this.retries > 0) this.retries--;
  }

  private overflow(limit: Limit): false {
    this.overflows[limit]++;
    this.onOverflow(limit);
    return false;
  }
}
