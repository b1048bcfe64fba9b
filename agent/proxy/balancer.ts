// Upstream balancing within one backend group: least-request with the power of two choices
// (the default, as Envoy's LEAST_REQUEST) and round robin. The caller passes the backends that may
// take new requests (not out of service, weight > 0) and, for a retry, the backend that just failed,
// which is skipped whenever another one is there.
import type { Upstream } from './types.js';

/** One backend of a group as the balancer sees it. */
export interface Slot {
  readonly upstream: Upstream;
  /** requests sent to this backend whose exchange has not ended */
  active: number;
}

export interface Balancer {
  pick(usable: readonly Slot[], avoid: Slot | undefined): Slot;
}

/**
 * Two distinct backends drawn at random, the one with fewer active requests wins; a tie is broken
 * at random too, so that equal backends share evenly. With one candidate there is nothing to choose.
 */
export class LeastRequest implements Balancer {
  constructor(private readonly random: () => number) {}

  pick(usable: readonly Slot[], avoid: Slot | undefined): Slot {
    const n = usable.length;
    if (n === 1) return usable[0]!;
    // Candidates are drawn from the list without `avoid` (when it is in it) by index arithmetic,
    // so no filtered copy is made per request.
    const skip = avoid ? usable.indexOf(avoid) : -1;
    const m = skip < 0 ? n : n - 1;
    if (m === 1) return usable[skip === 0 ? 1 : 0]!;
    const i = Math.floor(this.random() * m);
    let j = Math.floor(this.random() * (m - 1));
    if (j >= i) j++;
    const a = usable[skip >= 0 && i >= skip ? i + 1 : i]!;
    const b = usable[skip >= 0 && j >= skip ? j + 1 : j]!;
    if (a.active !== b.active) return a.active < b.active ? a : b;
    return this.random() < 0.5 ? a : b;
  }
}

/** The next backend in order each time (over the usable list of the moment), skipping `avoid`. */
export class RoundRobin implements Balancer {
  private next = 0;

  pick(usable: readonly Slot[], avoid: Slot | undefined): Slot {
    const n = usable.length;
    let i = this.next % n;
    let s = usable[i]!;
    if (s === avoid && n > 1) s = usable[(i = (i + 1) % n)]!;
    this.next = i + 1;
    return s;
  }
}

export function makeBalancer(kind: 'least-request' | 'round-robin', random: () => number): Balancer {
  return kind === 'round-robin' ? new RoundRobin() : new LeastRequest(random);
}
