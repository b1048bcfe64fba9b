// Sampled flow events from the kernel's ring buffer, kept in a small in-memory ring for meshctl and logged at debug.
import { EVENT_KIND, decode } from '../datapath/abi.js';

/** One sampled flow event as the admin API serves it (GET /v1/events) and meshctl events prints it. */
export interface FlowEvent {
  time: string; kind: string; protocol: string; service: string; vip: string; backend: string; cookie: string; netnsCookie: string;
}

const hostport = (a: string, p: number): string => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);

export function decodeFlowEvent(buf: Buffer, names: ReadonlyMap<number, string>, bootEpochMs: number): FlowEvent {
  const e = decode('sm_flow_event', buf);
  return {
    // ts_ns is CLOCK_MONOTONIC (bpf_ktime_get_ns): turned into wall time with the boot epoch measured at start.
    time: new Date(bootEpochMs + Number(BigInt(e.ts_ns as bigint) / 1_000_000n)).toISOString(),
    kind: EVENT_KIND[Number(e.kind)] ?? `kind-${e.kind}`,
    protocol: Number(e.proto) === 17 ? 'udp' : 'tcp',
    service: names.get(Number(e.service_id)) ?? `#${e.service_id}`,
    vip: hostport(String(e.vip), Number(e.vport)),
    // no-backend and l7-refused have no backend; for l7-redirect the "backend" is the proxy
    backend: Number(e.kind) === 2 || Number(e.kind) === 5 ? '-' : hostport(String(e.backend_addr), Number(e.backend_port)),
    cookie: String(e.cookie),
    netnsCookie: String(e.netns_cookie),
  };
}

export class EventRing {
  private readonly items: FlowEvent[] = [];
  constructor(private readonly capacity = 1000) {}
  push(e: FlowEvent): void {
    this.items.push(e);
    if (this.items.length > this.capacity) this.items.shift();
  }
  recent(limit = 100): FlowEvent[] { return this.items.slice(-limit); }
}

/** Wall-clock milliseconds at CLOCK_MONOTONIC zero. */
export function monotonicEpochMs(): number {
  return Date.now() - Number(process.hrtime.bigint() / 1_000_000n);
}
