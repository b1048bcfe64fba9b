// The requests waiting for an upstream connection (HTTP/1.1) or stream slot (HTTP/2): one queue per backend group,
// oldest first, each waiter counted in its group's pending requests (the circuit breaker's max pending) from add()
// until it is taken off by take(), cancel() or drain(). Both pools (h1pool.ts, h2pool.ts) queue through it.
import type { Upstream, UpstreamGroup } from './types.js';

export interface Pending<U> {
  readonly up: Upstream;
  readonly user: U;
}

export class PendingQueues<U> {
  private readonly queues = new Map<UpstreamGroup, Pending<U>[]>();

  /** user waits for up; false (nothing queued) when up's group is at its max pending requests */
  add(up: Upstream, user: U): boolean {
    if (!up.group.tryPending()) return false;
    let q = this.queues.get(up.group);
    if (q === undefined) this.queues.set(up.group, (q = []));
    q.push({ up, user });
    return true;
  }

  /** the group's waiters, oldest first; undefined when none */
  of(group: UpstreamGroup): readonly Pending<U>[] | undefined {
    const q = this.queues.get(group);
    return q !== undefined && q.length > 0 ? q : undefined;
  }

  /** the i-th waiter of the group's queue leaves it (its pending count is given back) */
  take(group: UpstreamGroup, i: number): Pending<U> {
    const q = this.queues.get(group)!;
    const w = i === 0 ? q.shift()! : q.splice(i, 1)[0]!;
    if (q.length === 0) this.queues.delete(group);
    group.pendingDone();
    return w;
  }

  /** user gives up its place in the group's queue; false when it was not in it */
  cancel(user: U, group: UpstreamGroup): boolean {
    const q = this.queues.get(group);
    if (q === undefined) return false;
    for (let i = 0; i < q.length; i++) {
      if (q[i]!.user === user) {
        this.take(group, i);
        return true;
      }
    }
    return false;
  }

  /** every waiter leaves its queue (the pool closes); the caller tells them */
  drain(): Pending<U>[] {
    const out: Pending<U>[] = [];
    for (const [group, q] of this.queues) for (const w of q) { group.pendingDone(); out.push(w); }
    this.queues.clear();
    return out;
  }
}
