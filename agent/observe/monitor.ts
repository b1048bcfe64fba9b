// The live monitor's fan-out (GET /v1/monitor, meshctl monitor): the kernel's flow events, the proxy's requests,
// health and config changes go to every attached reader, each through its own filter and rate limit, as one JSON
// line per event. Nothing here waits for a reader: a reader's sink takes a line or drops it (and counts it), so a
// slow reader costs the agent one string and never holds up the ring buffer or the datapath. With no reader
// attached, events cost a counter increment.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { FlowEvent } from './events.js';
import {
  KERNEL_COUNTER_OF, RateLimit, matches,
  type FastPathEvent, type L4Event, type MonitorEvent, type MonitorQuery, type MonitorSummary,
} from './filter.js';

/** Where a reader's lines go: false when the line was dropped because the reader is behind (counted by the caller). */
export interface MonitorSink {
  write(line: string): boolean;
}

export interface MonitorSources {
  /** the kernel's sampling: one flow event per N (--event-sample) */
  sample: number;
  /** sm_global by name */
  kernelCounters: () => Record<string, number>;
  /** the cgroup2 mount and the meshed cgroup (absolute path): client cgroup ids are looked up below it */
  cgroup2Root: string;
  meshedCgroup: string;
  /** cgroup id -> workload name (the config's workloads) */
  workloadOf?: (cgroupId: bigint) => string | undefined;
}

const VERDICT_OF: Record<string, string> = {
  'connect': 'forwarded', 'udp-send': 'forwarded', 'no-backend': 'refused', 'l7-redirect': 'redirected',
  'l7-refused': 'refused', 'sock-insert': 'inserted', 'redirect-miss': 'missed', 'authz-deny': 'refused',
  'tunnel': 'redirected', 'tunnel-refused': 'refused',
  'strict-drop': 'refused',
};

interface Reader {
  query: MonitorQuery;
  sink: MonitorSink;
  limit: RateLimit;
  matched: number;
  sent: number;
  slow: number;
  counted0: Record<string, number>;
  seen0: Record<string, number>;
  timer?: NodeJS.Timeout;
}

export class MonitorHub {
  private readonly readers = new Set<Reader>();
  /** kernel events received, by kind, since the agent started (all of them, reader or not) */
  private readonly seen: Record<string, number> = {};
  private readonly cgroups: CgroupNames;

  constructor(private readonly src: MonitorSources) {
    this.cgroups = new CgroupNames(src.cgroup2Root, src.meshedCgroup);
  }

  /** whether anyone is reading: producers that must build an event (the proxy's requests) ask first */
  get active(): boolean { return this.readers.size > 0; }
  get size(): number { return this.readers.size; }

  /** A new reader: a summary now and every query.summaryMs, events as they come. Returns its detach. */
  attach(query: MonitorQuery, sink: MonitorSink): () => void {
    const r: Reader = {
      query, sink, limit: new RateLimit(query.rate), matched: 0, sent: 0, slow: 0,
      counted0: this.counted(), seen0: { ...this.seen },
    };
    this.readers.add(r);
    this.sendSummary(r);
    r.timer = setInterval(() => this.sendSummary(r), query.summaryMs);
    r.timer.unref();
    return () => {
      clearInterval(r.timer);
      this.readers.delete(r);
    };
  }

  /** A kernel flow event (every one the agent reads from the ring buffer). */
  flow(f: FlowEvent): void {
    this.seen[f.kind] = (this.seen[f.kind] ?? 0) + 1;
    if (this.readers.size === 0) return;
    this.publish(this.fromFlow(f));
  }

  publish(e: MonitorEvent): void {
    let line: string | undefined;
    for (const r of this.readers) {
      if (!matches(r.query, e)) continue;
      r.matched++;
      if (!r.limit.take()) continue;
      line ??= `${JSON.stringify(e)}\n`;
      if (r.sink.write(line)) r.sent++;
      else r.slow++;
    }
  }

  /** What this reader did not see and why, since it attached. */
  private summary(r: Reader): MonitorSummary {
    const now = this.counted();
    const counted: Record<string, number> = {};
    const seen: Record<string, number> = {};
    for (const [kind, counter] of Object.entries(KERNEL_COUNTER_OF)) {
      counted[kind] = (now[counter] ?? 0) - (r.counted0[counter] ?? 0);
      seen[kind] = (this.seen[kind] ?? 0) - (r.seen0[kind] ?? 0);
    }
    return {
      type: 'summary', time: new Date().toISOString(), sample: this.src.sample,
      kernel: { counted, seen, ringFull: (now['event_drop'] ?? 0) - (r.counted0['event_drop'] ?? 0) },
      matched: r.matched, sent: r.sent, rateLimited: r.limit.dropped, slowReader: r.slow,
    };
  }

  close(): void {
    for (const r of this.readers) clearInterval(r.timer);
    this.readers.clear();
  }

  private sendSummary(r: Reader): void {
    // A summary is never rate limited (it says what the limit hid); a slow reader may still miss one.
    if (!r.sink.write(`${JSON.stringify(this.summary(r))}\n`)) r.slow++;
  }

  private counted(): Record<string, number> {
    try {
      return this.src.kernelCounters();
    } catch {
      return {};
    }
  }

  private fromFlow(f: FlowEvent): L4Event | FastPathEvent {
    const verdict = VERDICT_OF[f.kind] ?? f.kind;
    if (f.local !== undefined) {
      return {
        type: 'fastpath', kind: f.kind, verdict, time: f.time, service: f.service, local: f.local, peer: f.peer ?? '',
        active: f.active ?? false, netnsCookie: f.netnsCookie,
      };
    }
    const id = f.cgroupId ?? '0';
    const cgroup = id === '0' ? '' : this.cgroups.path(BigInt(id));
    const e: L4Event = {
      type: 'l4', kind: f.kind, verdict, time: f.time, protocol: f.protocol, service: f.service, vip: f.vip,
      backend: f.backend, algorithm: f.algorithm ?? '', affinityHit: f.affinityHit ?? false,
      cgroupId: id, cgroup, netnsCookie: f.netnsCookie, cookie: f.cookie,
    };
    const pod = (id !== '0' ? this.src.workloadOf?.(BigInt(id)) : undefined) ?? podOf(cgroup);
    if (pod !== undefined) e.pod = pod;
    return e;
  }
}

/** The pod of a cgroup path: the directory right below the last kubepods* one (the lab's and the kubelet's layout). */
export function podOf(cgroupPath: string): string | undefined {
  const parts = cgroupPath.split('/').filter((p) => p !== '');
  let i = -1;
  parts.forEach((p, j) => { if (p.startsWith('kubepods')) i = j; });
  return i >= 0 && i + 1 < parts.length ? parts[i + 1] : undefined;
}

/** directories walked below the meshed cgroup at most, per walk */
const MAX_WALK = 10_000;
/** a walk at most this often (a busy node asks for ids it does not know yet many times a second) */
const WALK_EVERY_MS = 1000;

/** cgroup id (the directory's inode) -> its path under the cgroup2 mount, for cgroups below the meshed one. */
export class CgroupNames {
  private readonly paths = new Map<bigint, string>();
  private lastWalk = 0;

  constructor(private readonly root: string, private readonly meshed: string) {}

  path(id: bigint): string {
    const known = this.paths.get(id);
    if (known !== undefined) return known;
    const now = Date.now();
    if (now - this.lastWalk < WALK_EVERY_MS) return '';
    this.lastWalk = now;
    this.walk();
    return this.paths.get(id) ?? '';
  }

  private walk(): void {
    this.paths.clear();
    let seen = 0;
    const rootLen = this.root.replace(/\/+$/, '').length;
    const visit = (dir: string): void => {
      if (++seen > MAX_WALK) return;
      try {
        this.paths.set(statSync(dir, { bigint: true }).ino, dir.slice(rootLen) || '/');
        for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) visit(join(dir, e.name));
      } catch {
        // gone while walking: not a client any more
      }
    };
    visit(this.meshed);
  }
}
