// Reconciling the model into the kernel maps, by diff and make-before-break: plan.ts computes the operations (and
// says in which order, and why), plan-exec.ts performs them; the Reconciler holds the shadow of the kernel, adopts it
// on start and commits each plan the kernel took.
import { networkInterfaces } from 'node:os';
import type { Model } from '../model/types.js';
import { addrToBytes, decodeBackend, decodeService, decodeServiceKey, tableKey, u32 } from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';
import { Shadow, isLoopback, planApply, planReap, tunnelTargets, type KernelPlan } from './plan.js';
import { execute, type ExecHooks } from './plan-exec.js';
import { AuthzTables, type AuthzSyncResult } from './authz.js';

export type { KernelFrontend } from './plan.js';
export { endpointKey } from './plan.js';

/**
 * What one apply did. A backend removed while a retired table still names it is deleted (and its UDP sockets
 * destroyed) by the reap of that table, a grace time later: counted in backendsRetiring here, and in the ReapResult
 * of that reap (options.onReap) — or here, when the reap is due by the end of this apply (retireMs 0).
 */
export interface ReconcileResult {
  backendsWritten: number;
  /** deleted during this apply: the ones no table names, and those of the graves reaped at its end */
  backendsDeleted: number;
  /** removed by this apply but still named by a retired table: deleted by a later reap */
  backendsRetiring: number;
  frontendsWritten: number;
  frontendsDeleted: number;
  /** destroyed during this apply (like backendsDeleted) */
  udpSocketsDestroyed: number;
  ms: number;
}

/** What a reap on the timer did: retired tables deleted, then the backends only they named. */
export interface ReapResult {
  tables: number;
  backendsDeleted: number;
  udpSocketsDestroyed: number;
  ms: number;
  /** the kernel refused: the reap is tried again a grace time later */
  error?: string;
}

export interface ReconcilerOptions {
  /** Called for each removed backend address:port; returns how many UDP sockets were destroyed. */
  destroyUdp?: (addr: string, port: number) => number;
  /** Grace time of a replaced table (default RETIRE_MS; tests use 0: deleted at the end of the apply). */
  retireMs?: number;
  /** Told of each reap on the timer that deleted something, or failed (the agent logs it). */
  onReap?: (r: ReapResult) => void;
  /** The clock (default performance.now). With one, no timer is armed: the caller calls reap() (tests). */
  now?: () => number;
  /**
   * L4 authorization tables (datapath/authz.ts): the meshed cgroup (whose workloads are this node's clients) and the
   * cgroup2 mount. Absent: the authorization maps are left alone (service entries still carry the default verdict).
   */
  authz?: { meshedCgroup: string; cgroup2Root: string };
}

/**
 * How long a replaced selection table stays after no service entry points at it: a connect() that read the old
 * service entry just before the switch must still find its table (it would otherwise miss and refuse the connection
 * with EPERM). BPF programs run in microseconds; a second is plenty. An agent killed before then leaves the table
 * unreferenced, and adopt() removes it; the backends only it named are then deleted by the first full apply (they
 * are not in the model), or by adopt() when the model has them again under a newer id.
 */
export const RETIRE_MS = 1000;

/** Addresses of this node: a backend there is a sockmap candidate. */
export function localAddresses(): string[] {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) out.add(a.address.replace(/%.*$/, ''));
  }
  return [...out];
}

export class Reconciler {
  /** what the kernel holds, as we last wrote or read it */
  private readonly shadow = new Shadow();
  /** The shadow's graves (oldest first) with when their grace time (retireMs) is over. */
  private due: { seq: number; at: number }[] = [];
  private reaper?: NodeJS.Timeout;
  private readonly hooks: ExecHooks;
  private readonly retireMs: number;
  private readonly now: () => number;
  private closed = false;
  /** sm_remote_pods as last written, hex key -> flags (undefined: not known yet, read the map) */
  private remoteWritten?: Map<string, number>;
  /** the keys of sm_local_addrs as last written (undefined: not known yet, read the map) */
  private localWritten?: Set<string>;
  /** sm_identities + sm_authz (when options.authz) */
  readonly authz?: AuthzTables;
  /** what the last apply's authorization sync did */
  lastAuthz?: AuthzSyncResult;

  constructor(private readonly maps: Maps, private readonly n: Native, private readonly opts: ReconcilerOptions = {}) {
    this.retireMs = opts.retireMs ?? RETIRE_MS;
    this.now = opts.now ?? (() => performance.now());
    this.hooks = { destroyUdp: opts.destroyUdp };
    if (opts.authz) this.authz = new AuthzTables(maps, n, opts.authz.meshedCgroup, opts.authz.cgroup2Root);
  }

  /** Read the kernel's current state (adoption after a restart). Returns how many frontends/backends were found. */
  adopt(): { frontends: number; backends: number } {
    const sh = this.shadow;
    const { keys: bk, values: bv } = this.n.mapDump(this.maps.fd('sm_backends'));
    bk.forEach((k, i) => sh.adoptBackend(k.readUInt32LE(0), decodeBackend(bv[i]!)));
    const { keys: sk, values: sv } = this.n.mapDump(this.maps.fd('sm_services'));
    sk.forEach((k, i) => {
      const value = decodeService(sv[i]!);
      const table = value.table_size > 0 ? this.readTable(value.table_id, value.table_size) : [];
      sh.adoptFrontend(decodeServiceKey(k), value, table);
    });
    // Tables left behind by an agent killed between steps 2 and 3, or in their grace time, are unreferenced: remove
    // them. Then the older of a backend there twice (removed and added again in the grace time) names nothing.
    const referenced = new Set([...sh.frontends.values()].map((f) => f.value.table_id));
    const fdTables = this.maps.fd('sm_tables');
    for (const k of this.n.mapKeys(fdTables)) {
      const id = k.readUInt32LE(0);
      sh.adoptTableId(id);
      if (!referenced.has(id)) this.n.mapDelete(fdTables, k);
    }
    const seq = sh.adopted();
    if (seq) this.reapTo(seq);
    return { frontends: sh.frontends.size, backends: bk.length };
  }

  private readTable(tableId: number, size: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < size; i++) {
      const v = this.n.mapLookup(this.maps.fd('sm_tables'), tableKey(tableId, i));
      out.push(v ? v.readUInt32LE(0) : 0); // a hole makes the table differ, so it is rewritten whole
    }
    return out;
  }

  /**
   * Write the addresses of this node and of its pods (`pods`) for the sockops program (which sockets have a local
   * peer). The first call reads the map back (a previous agent's entries); later ones write only what changed, and
   * nothing when nothing did (the pod watcher calls this on every scan). Returns how many entries changed.
   */
  syncLocalAddresses(pods: Iterable<string> = [], node: string[] = localAddresses()): number {
    const fd = this.maps.fd('sm_local_addrs');
    const all = new Set([...node, ...pods]);
    const want = new Map([...all].filter((a) => !isLoopback(a)).map((a) => [addrToBytes(a).toString('hex'), a]));
    const have = this.localWritten ?? new Set(this.n.mapKeys(fd).map((k) => k.toString('hex')));
    let changed = 0;
    for (const k of have) {
      if (!want.has(k)) {
        this.n.mapDelete(fd, Buffer.from(k, 'hex'));
        changed++;
      }
    }
    for (const [k, a] of want) {
      if (!have.has(k)) {
        this.n.mapUpdate(fd, addrToBytes(a), u32(1));
        changed++;
      }
    }
    this.localWritten = new Set(want.keys());
    this.shadow.local = all;
    return changed;
  }

  /** This node's own addresses (its pods' and the node's) as last synced: never handed to the tunnel (plan.ts tunnelTargets). */
  localSet(): ReadonlySet<string> {
    return this.shadow.local;
  }

  /**
   * Hand connections to other nodes' workloads to the tunnel (plan.ts tunnelTargets): this node's name, before the
   * first apply; undefined = none (the default: the kernel connects to them directly, and sm_remote_pods is emptied).
   */
  setNodeId(nodeId: string | undefined): void {
    this.shadow.nodeId = nodeId;
  }

  /**
   * sm_remote_pods from the model: other nodes' pod addresses whose mode is not off (only with a node id). The first
   * call reads the map back (a previous agent's entries); later ones write only what changed. Returns the changes.
   */
  private syncRemotePods(model: Model): number {
    const fd = this.maps.fd('sm_remote_pods');
    const want = new Map<string, [Buffer, number]>();
    if (this.shadow.nodeId !== undefined) {
      for (const [a, f] of tunnelTargets(model, this.shadow.nodeId, this.shadow.local).pods) {
        const k = addrToBytes(a);
        want.set(k.toString('hex'), [k, f]);
      }
    }
    const have = this.remoteWritten ?? new Map(this.n.mapKeys(fd).map((k) => [k.toString('hex'), this.n.mapLookup(fd, k)?.readUInt32LE(0) ?? 0]));
    let changed = 0;
    for (const hex of have.keys()) {
      if (!want.has(hex)) { this.n.mapDelete(fd, Buffer.from(hex, 'hex')); changed++; }
    }
    for (const [hex, [k, f]] of want) {
      if (have.get(hex) !== f) { this.n.mapUpdate(fd, k, u32(f)); changed++; }
    }
    this.remoteWritten = new Map([...want].map(([hex, [, f]]) => [hex, f]));
    return changed;
  }

  /**
   * The operations apply(model, changed) would perform, without performing them (see planApply()).
   */
  plan(model: Model, changed?: ReadonlySet<string>): KernelPlan {
    return planApply(this.shadow, model, changed);
  }

  /**
   * Apply a model. With `changed` (names of services that may differ from the last apply, including removed ones),
   * only those services are looked at: an endpoint change costs work for its service, not for the whole model.
   * Without it, everything is compared (and kernel state of services no longer in the model is removed).
   * Throws on a kernel error (the caller keeps the previous model as the last good one, and reads the kernel back
   * with a new Reconciler: this one's shadow is then the state before the apply).
   */
  apply(model: Model, changed?: ReadonlySet<string>): ReconcileResult {
    const t0 = performance.now();
    const p = planApply(this.shadow, model, changed);
    const { udpSocketsDestroyed } = execute(p.ops, this.maps, this.n, this.hooks);
    const grave = this.shadow.nextGrave;
    this.shadow.commit(p.commit);
    if (this.shadow.nextGrave !== grave) this.due.push({ seq: grave, at: this.now() + this.retireMs });
    const reaped = this.reapDue();
    if (reaped.error) this.opts.onReap?.(reaped);
    // The per-identity verdicts, once the service ids exist (the entries' default verdict came with them).
    if (this.authz) this.lastAuthz = this.authz.sync(model, this.shadow.serviceIds);
    // Direct connects to other nodes' pods, after their VIP backends (an address handed over one way is the other too).
    this.syncRemotePods(model);
    return {
      backendsWritten: p.backendsWritten, backendsDeleted: p.backendsDeleted + reaped.backendsDeleted,
      backendsRetiring: p.backendsRetiring, frontendsWritten: p.frontendsWritten, frontendsDeleted: p.frontendsDeleted,
      udpSocketsDestroyed: udpSocketsDestroyed + reaped.udpSocketsDestroyed, ms: performance.now() - t0,
    };
  }

  /** Reap the graves whose grace time is over (the timer does it; with options.now, the caller). */
  reap(): ReapResult {
    return this.reapDue();
  }

  /** Graves still waiting for their grace time. */
  pending(): number {
    return this.shadow.graves.length;
  }

  /** No more reaps on the timer (a reconciler replaced by a fresh one after a failed apply). */
  close(): void {
    this.closed = true;
    if (this.reaper) clearTimeout(this.reaper);
    this.reaper = undefined;
  }

  /**
   * Changes whenever names() does: what depends on the names alone (state.json) is rewritten only then, not on every
   * endpoint change (10,000 names as JSON is ~1 MB of garbage per change, much of it in large-object space).
   */
  namesVersion(): number {
    return this.shadow.namesChanges;
  }

  /** Service id -> name, kept up to date (read per flow event: no copying here). */
  names(): ReadonlyMap<number, string> {
    return this.shadow.serviceNames;
  }

  /**
   * Reap the graves whose grace time has passed (see RETIRE_MS), and arm the timer for the next. A kernel error is
   * returned, not thrown (the apply that reaps at its end did its own work): the graves stay and are tried again a
   * grace time later.
   */
  private reapDue(): ReapResult {
    const now = this.now();
    let seq = 0;
    for (const d of this.due) if (d.at <= now) seq = d.seq;
    let r: ReapResult = { tables: 0, backendsDeleted: 0, udpSocketsDestroyed: 0, ms: 0 };
    if (seq) {
      try {
        r = this.reapTo(seq);
        this.due = this.due.filter((d) => d.seq > seq);
      } catch (e) {
        const at = now + this.retireMs;
        this.due = this.due.map((d) => (d.at < at ? { seq: d.seq, at } : d));
        r.error = (e as Error).message;
      }
    }
    this.arm();
    return r;
  }

  /** Delete the graves up to `seq` (planReap), and commit. */
  private reapTo(seq: number): ReapResult {
    const t0 = performance.now();
    const p = planReap(this.shadow, seq);
    const { udpSocketsDestroyed } = execute(p.ops, this.maps, this.n, this.hooks);
    this.shadow.reaped(seq);
    return { tables: p.tables, backendsDeleted: p.backendsDeleted, udpSocketsDestroyed, ms: performance.now() - t0 };
  }

  private arm(): void {
    if (!this.due.length || this.reaper || this.opts.now || this.closed) return;
    // Until the oldest is due, plus 1 ms: a timer may fire a fraction of a ms before performance.now() reaches `at`,
    // which left the table for one more whole RETIRE_MS.
    const wait = Math.max(1, Math.ceil(this.due[0]!.at - this.now()) + 1);
    this.reaper = setTimeout(() => {
      this.reaper = undefined;
      const r = this.reapDue();
      if (r.tables || r.backendsDeleted || r.udpSocketsDestroyed || r.error) this.opts.onReap?.(r);
    }, wait);
    this.reaper.unref();
  }
}
