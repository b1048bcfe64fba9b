// The monitor's event types (GET /v1/monitor, meshctl monitor), its filter and its rate limit. Pure: no I/O, so that
// the agent (observe/monitor.ts) and its tests share one definition of what matches and what is dropped.

/** Every monitor event has these: what it is, what happened, when. */
interface EventBase {
  time: string;
  /** l4 (a balancing decision at connect/sendmsg), fastpath (sockmap), l7 (a request through the proxy), health
   *  (a backend out of or back in service), config (an apply, a rejection, an xDS NACK) */
  type: 'l4' | 'fastpath' | 'l7' | 'health' | 'config';
  /** the event's kind within its type: connect, udp-send, no-backend, l7-redirect, l7-refused, sock-insert,
   *  redirect-miss, request, out, in, applied, rejected, nack */
  kind: string;
  /** forwarded, redirected, refused (l4); inserted, missed (fastpath); forwarded, error, local (l7); out, in (health);
   *  applied, rejected, nack (config) */
  verdict: string;
  service?: string;
}

/** A kernel balancing decision (sampled: one in --event-sample). */
export interface L4Event extends EventBase {
  type: 'l4';
  protocol: string;
  service: string;
  vip: string;
  /** the chosen backend ('-' when refused; the proxy for l7-redirect) */
  backend: string;
  algorithm: string;
  affinityHit: boolean;
  /** the client: its cgroup id, its cgroup path under the cgroup2 mount ('' when gone or outside the mesh), its pod
   *  (the cgroup directly under a kubepods* one) or workload, when known */
  cgroupId: string;
  cgroup: string;
  pod?: string;
  netnsCookie: string;
  cookie: string;
}

/** A socket put into the SOCKHASH, or a send that found no peer there (its socket takes TCP from then on). */
export interface FastPathEvent extends EventBase {
  type: 'fastpath';
  service: string;
  local: string;
  peer: string;
  /** the connecting side */
  active: boolean;
  netnsCookie: string;
}

/** A request the L7 proxy finished (or answered by itself). */
export interface L7Event extends EventBase {
  type: 'l7';
  service: string;
  route: string;
  method: string;
  path: string;
  /** sent to the client; 0: the client went away first */
  status: number;
  grpcStatus?: number;
  /** the backend of the last attempt ('' = none reached) */
  backend: string;
  retries: number;
  durationMs: number;
  /** why the proxy answered by itself */
  reason?: string;
  /** the client's workload (when the config names workloads) */
  workload?: string;
}

export interface HealthEvent extends EventBase {
  type: 'health';
  service: string;
  backend: string;
  /** 'health check: connect ECONNREFUSED', 'ejected: 5 consecutive 5xx' */
  reason: string;
}

export interface ConfigEvent extends EventBase {
  type: 'config';
  /** the config version now in force (applied) */
  version?: number;
  /** what caused it: 'file change', 'xds', ... */
  why?: string;
  error?: string;
  /** xDS NACKs: the resource type and the version refused */
  typeUrl?: string;
  resourceVersion?: string;
}

export type MonitorEvent = L4Event | FastPathEvent | L7Event | HealthEvent | ConfigEvent;

/** Sent on the stream every few seconds and at the start: what this reader did not see, and why. */
export interface MonitorSummary {
  type: 'summary';
  time: string;
  /** the kernel emits one flow event per `sample` (0: none, 1: all): --event-sample of the agent */
  sample: number;
  /** since this reader attached: what the kernel counted and how many of its events the agent received (before
   *  filters). Where seen < counted, sampling (or a full ring buffer: ringFull) hid the rest. */
  kernel: { counted: Record<string, number>; seen: Record<string, number>; ringFull: number };
  /** events that matched this reader's filter: sent, over the rate limit, dropped because the reader was slow */
  matched: number;
  sent: number;
  rateLimited: number;
  slowReader: number;
}

export const MONITOR_TYPES = ['l4', 'fastpath', 'l7', 'health', 'config'] as const;
export const MONITOR_KINDS = ['connect', 'udp-send', 'no-backend', 'l7-redirect', 'l7-refused', 'sock-insert', 'redirect-miss',
  'authz-deny', 'tunnel', 'tunnel-refused', 'strict-drop', 'request', 'out', 'in', 'applied', 'rejected', 'nack'] as const;
export const MONITOR_VERDICTS = ['forwarded', 'redirected', 'refused', 'inserted', 'missed', 'error', 'local', 'out', 'in',
  'applied', 'rejected', 'nack'] as const;

/** The kernel event kinds and the sm_global counter that counts the same thing (what sampling can hide). */
export const KERNEL_COUNTER_OF: Record<string, string> = {
  'connect': 'lb_connect', 'udp-send': 'lb_udp_send', 'no-backend': 'lb_no_backend', 'l7-redirect': 'l7_redirect',
  'l7-refused': 'l7_fail_closed', 'sock-insert': 'sock_insert', 'redirect-miss': 'redirect_miss', 'authz-deny': 'authz_deny',
  'tunnel': 'tunnel_handover', 'tunnel-refused': 'tunnel_refused',
  'strict-drop': 'strict_drop',
};

/** What a reader asked for. Each list matches any of its values; an empty or absent list matches everything. */
export interface MonitorFilter {
  service?: string[];
  /** a pod or workload name */
  pod?: string[];
  /** a cgroup path (as under the cgroup2 mount, with or without the leading '/', the cgroup or any parent) or id */
  cgroup?: string[];
  /** a type (l4, l7, ...) or a kind (no-backend, sock-insert, request, ...) */
  type?: string[];
  verdict?: string[];
}

export interface MonitorQuery extends MonitorFilter {
  /** events per second at most (0: no limit) */
  rate: number;
  /** ms between summaries */
  summaryMs: number;
}

const LIST_KEYS = ['service', 'pod', 'cgroup', 'type', 'verdict'] as const;

/** The query string of GET /v1/monitor (meshctl builds it with monitorQueryString). Throws on unknown values. */
export function parseMonitorQuery(q: URLSearchParams): MonitorQuery {
  const out: MonitorQuery = { rate: 0, summaryMs: 5000 };
  for (const k of LIST_KEYS) {
    const vals = q.getAll(k).flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');
    if (vals.length) out[k] = vals;
  }
  for (const t of out.type ?? []) {
    if (!(MONITOR_TYPES as readonly string[]).includes(t) && !(MONITOR_KINDS as readonly string[]).includes(t))
      throw new Error(`unknown --type '${t}': one of ${[...MONITOR_TYPES, ...MONITOR_KINDS].join(', ')}`);
  }
  for (const v of out.verdict ?? []) {
    if (!(MONITOR_VERDICTS as readonly string[]).includes(v)) throw new Error(`unknown --verdict '${v}': one of ${MONITOR_VERDICTS.join(', ')}`);
  }
  const num = (k: string, min: number, dflt: number): number => {
    const raw = q.get(k);
    if (raw === null || raw === '') return dflt;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) throw new Error(`${k}: expected a number >= ${min}, got '${raw}'`);
    return n;
  };
  out.rate = num('rate', 0, 0);
  out.summaryMs = num('summaryMs', 100, 5000);
  return out;
}

export function monitorQueryString(q: Partial<MonitorQuery>): string {
  const p = new URLSearchParams();
  for (const k of LIST_KEYS) for (const v of q[k] ?? []) p.append(k, v);
  if (q.rate !== undefined) p.set('rate', String(q.rate));
  if (q.summaryMs !== undefined) p.set('summaryMs', String(q.summaryMs));
  const s = p.toString();
  return s ? `?${s}` : '';
}

const any = (list: string[] | undefined, test: (v: string) => boolean): boolean => !list || list.length === 0 || list.some(test);

/** The cgroup filter matches the cgroup itself or any parent, by path (with or without a leading '/') or by id. */
function cgroupMatches(want: string, path: string, id: string): boolean {
  if (want === id) return true;
  const w = '/' + want.replace(/^\/+|\/+$/g, '');
  const p = '/' + path.replace(/^\/+/, '');
  return path !== '' && (p === w || p.startsWith(`${w}/`));
}

export function matches(f: MonitorFilter, e: MonitorEvent): boolean {
  if (!any(f.type, (t) => t === e.type || t === e.kind)) return false;
  if (!any(f.verdict, (v) => v === e.verdict)) return false;
  if (!any(f.service, (s) => s === e.service)) return false;
  // Pod and cgroup filters name a client: events without one (health, config) never match them.
  if (f.pod?.length) {
    const who = e.type === 'l4' ? e.pod : e.type === 'l7' ? e.workload : undefined;
    if (who === undefined || !f.pod.includes(who)) return false;
  }
  if (f.cgroup?.length) {
    if (e.type !== 'l4') return false;
    const ev = e;
    if (!f.cgroup.some((c) => cgroupMatches(c, ev.cgroup, ev.cgroupId))) return false;
  }
  return true;
}

/**
 * At most `rate` events a second, in bursts of up to `rate` (a token bucket); 0 = no limit. What it refuses is counted:
 * the reader is told how many it did not see.
 */
export class RateLimit {
  private tokens: number;
  private last: number;
  dropped = 0;
  constructor(readonly rate: number, private readonly now: () => number = () => performance.now()) {
    this.tokens = rate;
    this.last = now();
  }

  take(): boolean {
    if (this.rate <= 0) return true;
    const t = this.now();
    this.tokens = Math.min(this.rate, this.tokens + ((t - this.last) / 1000) * this.rate);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    this.dropped++;
    return false;
  }
}
