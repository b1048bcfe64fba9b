// The agent's L4 balancing decisions during a soak phase, from its live monitor (GET /v1/monitor on the admin socket;
// the kernel emits an event for every balanced connect at the agent's default --event-sample 1): beside a refused
// connect of an L4 VIP they say whether the kernel translated that connect, and to which backend. A refusal with no
// decision at its moment was not translated (the frontend was not there for it); one with a decision was refused by
// the backend it went to.
import { AdminClient } from '../../cli/client.js';
import { monitorQueryString, type MonitorSummary } from '../../agent/observe/filter.js';

interface Decision { t: number; kind: string; backend: string; service: string }

export class ConnectLog {
  private readonly byVip = new Map<string, Decision[]>();
  private readonly abort = new AbortController();
  private done: Promise<void> = Promise.resolve();
  /** events the agent could not hand us (its summaries: sampling, a full ring buffer, a slow reader) */
  missed = 0;
  error = '';
  count = 0;

  constructor(private readonly vips: ReadonlySet<string>, private readonly cap = 2_000_000) {}

  start(adminSocket: string): void {
    const client = new AdminClient(adminSocket, 10_000);
    const q = monitorQueryString({ type: ['connect', 'no-backend', 'l7-redirect', 'l7-refused'], rate: 0 });
    this.done = client.stream(`/v1/monitor${q}`, (o) => this.take(o as Record<string, unknown>), this.abort.signal)
      .catch((e: Error) => { this.error = e.message; });
  }

  private take(o: Record<string, unknown>): void {
    if (o.type === 'summary') {
      const s = o as unknown as MonitorSummary;
      this.missed = s.rateLimited + s.slowReader + s.kernel.ringFull;
      return;
    }
    const vip = String(o.vip ?? '');
    if (!this.vips.has(vip) || this.count >= this.cap) return;
    let list = this.byVip.get(vip);
    if (!list) this.byVip.set(vip, (list = []));
    list.push({ t: Date.parse(String(o.time)), kind: String(o.kind), backend: String(o.backend), service: String(o.service ?? '') });
    this.count++;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.done;
  }

  /** The decisions for `vip` within [from, to], relative to t0, as report lines. */
  around(vip: string, t0: number, from: number, to: number): string[] {
    return (this.byVip.get(vip) ?? []).filter((d) => d.t >= from && d.t <= to)
      .map((d) => `${d.t - t0} ms: ${d.kind} ${d.service} -> ${d.backend}`);
  }
}
