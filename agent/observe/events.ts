// Sampled flow events from the kernel's ring buffer, kept in a small in-memory ring for meshctl and logged at debug.
import { ALGO, EVENT_KIND, EV_F_ACTIVE, EV_F_AFFINITY_HIT, decode } from '../datapath/abi.js';

/** One sampled flow event as the admin API serves it (GET /v1/events) and meshctl events prints it. */
export interface FlowEvent {
  time: string; kind: string; protocol: string; service: string; vip: string; backend: string; cookie: string; netnsCookie: string;
  /** the caller's cgroup id (decimal; '0' where the kernel has no calling process: sock-insert, redirect-miss) */
  cgroupId?: string;
  /** the service's selection (connect, udp-send, no-backend): random, weighted, maglev */
  algorithm?: string;
  /** connect, udp-send: the backend came from the session-affinity map */
  affinityHit?: boolean;
  /** sock-insert, redirect-miss: the socket's own end and its peer (vip and backend are '-'), and whether it is the
   *  connecting side */
  local?: string; peer?: string; active?: boolean;
  /** authz-deny: the caller's identity id and the deciding policy (#N in the config's order; 0 = no ALLOW matched) */
  identityId?: number; policyId?: number;
  /** strict-drop: the dropped connection's source address:port (vip is the pod address:port it was sent to; backend '-') */
  source?: string;
}

const ALGO_NAME: Record<number, string> = Object.fromEntries(Object.entries(ALGO).map(([k, v]) => [v, k]));

const hostport = (a: string, p: number): string => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);

export function decodeFlowEvent(buf: Buffer, names: ReadonlyMap<number, string>, bootEpochMs: number): FlowEvent {
  const e = decode('sm_flow_event', buf);
  const kind = Number(e.kind);
  const flags = Number(e.flags);
  const base = {
    time: new Date(bootEpochMs + Number(BigInt(e.ts_ns as bigint) / 1_000_000n)).toISOString(),
    kind: EVENT_KIND[kind] ?? `kind-${kind}`,
    protocol: Number(e.proto) === 17 ? 'udp' : 'tcp',
    service: Number(e.service_id) === 0 ? '-' : names.get(Number(e.service_id)) ?? `#${e.service_id}`,
  };
  if (kind === 6 || kind === 7) {
    // fast-path events: the socket's two ends (the kernel's sock_ops/sk_msg know no VIP and no calling process)
    return {
      ...base, vip: '-', backend: '-', cookie: String(e.cookie), netnsCookie: String(e.netns_cookie), cgroupId: '0',
      local: hostport(String(e.vip), Number(e.vport)), peer: hostport(String(e.backend_addr), Number(e.backend_port)),
      active: (flags & EV_F_ACTIVE) !== 0,
    };
  }
  if (kind === 9) {
    // strict mode's drop (bpf/strict.bpf.c): the pod's address:port and the other node's source, no service
    return {
      ...base, vip: hostport(String(e.vip), Number(e.vport)), backend: '-', source: hostport(String(e.backend_addr), Number(e.backend_port)),
      cookie: String(e.cookie), netnsCookie: String(e.netns_cookie), cgroupId: String(e.cgroup_id),
    };
  }
  const authz = kind === 8 ? { identityId: Number(e.identity_id), policyId: Number(e.policy_id) } : {};
  return {
    ...base,
    ...authz,
    vip: hostport(String(e.vip), Number(e.vport)),
    // no-backend and l7-refused have no backend; for l7-redirect the "backend" is the proxy
    backend: kind === 2 || kind === 5 ? '-' : hostport(String(e.backend_addr), Number(e.backend_port)),
    cookie: String(e.cookie),
    netnsCookie: String(e.netns_cookie),
    cgroupId: String(e.cgroup_id),
    algorithm: ALGO_NAME[Number(e.algo)] ?? `algo-${e.algo}`,
    affinityHit: (flags & EV_F_AFFINITY_HIT) !== 0,
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
