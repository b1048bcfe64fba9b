// Reconciling the model into the kernel maps, by diff and make-before-break: plan.ts computes the operations (and
// says in which order, and why), plan-exec.ts performs them; the Reconciler holds the shadow of the kernel, adopts it
// on start and commits each plan the kernel took.
import { networkInterfaces } from 'node:os';
import type { Model } from '../model/types.js';
import { addrToBytes, decodeBackend, decodeService, decodeServiceKey, tableKey, u32 } from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';
import { Shadow, isLoopback, planApply, type KernelPlan } from './plan.js';
import { deleteTable, execute, type ExecHooks } from './plan-exec.js';

export type { KernelFrontend } from './plan.js';
export { endpointKey } from './plan.js';

export interface ReconcileResult {
  backendsWritten: number;
  backendsDeleted: number;
  frontendsWritten: number;
  frontendsDeleted: number;
  udpSocketsDestroyed: number;
  ms: number;
}

export interface ReconcilerOptions {
  /** Called for each removed backend address:port; returns how many UDP sockets were destroyed. */
  destroyUdp?: (addr: string, port: number) => number;
  /** Grace time of a replaced table (default RETIRE_MS; tests use 0: deleted at the end of the apply). */
  retireMs?: number;
}

/**
 * How long a replaced selection table stays after no service entry points at it: a connect() that read the old
 * service entry just before the switch must still find its table (it would otherwise miss and refuse the connection
 * with EPERM). BPF programs run in microseconds; a second is plenty. An agent killed before then leaves the table
 * unreferenced, and adopt() removes it.
 */
const RETIRE_MS = 1000;

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
  /** Replaced tables waiting for their grace time (RETIRE_MS) before they are deleted. */
  private retired: { tableId: number; size: number; at: number }[] = [];
  private reaper?: NodeJS.Timeout;
  private readonly hooks: ExecHooks;

  constructor(private readonly maps: Maps, private readonly n: Native, opts: ReconcilerOptions = {}) {
    const retireMs = opts.retireMs ?? RETIRE_MS;
    this.hooks = {
      // A table no service entry points at any more: deleted after a grace time, not at once.
      retire: (tableId, size) => { this.retired.push({ tableId, size, at: performance.now() + retireMs }); },
      destroyUdp: opts.destroyUdp,
    };
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
    sh.adopted();
    // Tables left behind by an agent killed between steps 2 and 3 are unreferenced: remove them.
    const referenced = new Set([...sh.frontends.values()].map((f) => f.value.table_id));
    const fdTables = this.maps.fd('sm_tables');
    for (const k of this.n.mapKeys(fdTables)) {
      const id = k.readUInt32LE(0);
      sh.adoptTableId(id);
      if (!referenced.has(id)) this.n.mapDelete(fdTables, k);
    }
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

  /** Write the node's addresses for the sockops program (which sockets have a local peer). */
  syncLocalAddresses(addrs = localAddresses()): void {
    const fd = this.maps.fd('sm_local_addrs');
    const want = new Map(addrs.filter((a) => !isLoopback(a)).map((a) => [addrToBytes(a).toString('hex'), a]));
    for (const k of this.n.mapKeys(fd)) if (!want.has(k.toString('hex'))) this.n.mapDelete(fd, k);
    for (const a of want.values()) this.n.mapUpdate(fd, addrToBytes(a), u32(1));
    this.shadow.local = new Set(addrs);
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
    this.shadow.commit(p.commit);
    this.reapTables();
    return {
      backendsWritten: p.backendsWritten, backendsDeleted: p.backendsDeleted, frontendsWritten: p.frontendsWritten,
      frontendsDeleted: p.frontendsDeleted, udpSocketsDestroyed, ms: performance.now() - t0,
    };
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

  /** Delete the tables replaced by earlier applies whose grace time has passed (see RETIRE_MS). */
  private reapTables(now = performance.now()): void {
    while (this.retired.length && this.retired[0]!.at <= now) {
      const t = this.retired.shift()!;
      deleteTable(this.maps, this.n, t.tableId, t.size);
    }
    if (this.retired.length && !this.reaper) {
      // Until the oldest is due, plus 1 ms: a timer may fire a fraction of a ms before performance.now() reaches `at`,
      // which left the table for one more whole RETIRE_MS.
      const wait = Math.max(1, Math.ceil(this.retired[0]!.at - performance.now()) + 1);
      this.reaper = setTimeout(() => { this.reaper = undefined; this.reapTables(); }, wait);
      this.reaper.unref();
    }
  }
}
