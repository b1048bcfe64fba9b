// Reconciling the model into the kernel maps, by diff and make-before-break.
//
// The kernel maps are the source of truth for ids: on start the reconciler reads them back (a restarted agent adopts
// what the previous one wrote, so nothing is flushed), and every later change only touches what differs:
//   1. backends that are new or changed are written;
//   2. a frontend whose selection table changed gets a NEW table under a fresh table id, written completely; then
//      the service entry is switched to it in one update; the old table is retired and deleted a second later — a
//      connect() always sees a complete table whose every entry names an existing backend;
//   3. frontends that went away are deleted (service entry first; their tables are retired the same way);
//   4. only then backends that no table references any more are deleted, and UDP sockets connected to them (when
//      their service has a UDP frontend) are destroyed so their owners reconnect (established TCP connections are
//      left to finish).
import { networkInterfaces } from 'node:os';
import type { Model, Service, Frontend } from '../model/types.js';
import { tableFor } from '../model/tables.js';
import {
  ALGO, BE_F_LOCAL, PROTO, STRUCTS, SVC_F_AFFINITY, SVC_F_FAIL_OPEN, SVC_F_L7, addrToBytes, encode, type Decoded,
  decodeBackend, decodeService, decodeServiceKey, serviceKey, tableKey, u32, type ServiceValue,
} from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';

export interface KernelFrontend {
  key: string; // vip|port|proto
  vip: string; port: number; proto: number;
  value: ServiceValue;
  /** backend ids in table order */
  table: number[];
}

/**
 * What the kernel holds for one service id, packed: 100,000 backends as one object each, in a map by id, a map per
 * service and a map of endpoint users, held ~20 MiB; as parallel arrays per service they take ~5.
 */
interface SvcState {
  /** keys (vip|port|proto) of its frontends */
  fronts: string[];
  /** its backends: addrs[i], and nums[B*i ..] = kernel id, weight, packed(port, flags, family) */
  addrs: string[];
  nums: number[];
  /** it has a UDP frontend: its backends count in Reconciler.udpUsers */
  udp: boolean;
}

/** Numbers per backend in SvcState.nums. */
const B = 3;

/** Port, flags and family of a backend as one small integer (SvcState.nums[B*i + 2]). */
const packed = (port: number, flags: number, family: number): number => port | (flags << 16) | (family === 10 ? 1 << 24 : 0);
const portOf = (nums: readonly number[], i: number): number => nums[B * i + 2]! & 0xffff;
/** Up to this many backends a service's endpoint is found by a linear scan; above, through a map built per apply. */
const LINEAR = 16;

/** The index of endpoint (addr, port) in packed backends, or -1. `index` (endpointKey -> index) for large ones. */
function findBackend(addrs: readonly string[], nums: readonly number[], index: Map<number | string, number> | undefined, addr: string, port: number): number {
  if (index) return index.get(endpointKey(addr, port)) ?? -1;
  for (let i = 0; i < addrs.length; i++) if (portOf(nums, i) === port && addrs[i] === addr) return i;
  return -1;
}

function indexBackends(addrs: readonly string[], nums: readonly number[]): Map<number | string, number> | undefined {
  if (addrs.length <= LINEAR) return undefined;
  const m = new Map<number | string, number>();
  for (let i = 0; i < addrs.length; i++) m.set(endpointKey(addrs[i]!, portOf(nums, i)), i);
  return m;
}

/** One service's backends in an apply: the packed state it had and the one it gets. */
interface Plan {
  id: number;
  oldAddrs: string[];
  oldNums: number[];
  oldUdp: boolean;
  addrs: string[];
  nums: number[];
  /** endpointKey -> index in addrs, while the service has more than LINEAR backends */
  index?: Map<number | string, number>;
  udp: boolean;
}

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
}

const feKey = (vip: string, port: number, proto: number): string => `${vip}|${port}|${proto}`;

/**
 * How long a replaced selection table stays after no service entry points at it: a connect() that read the old
 * service entry just before the switch must still find its table (it would otherwise miss and refuse the connection
 * with EPERM). BPF programs run in microseconds; a second is plenty. An agent killed before then leaves the table
 * unreferenced, and adopt() removes it.
 */
const RETIRE_MS = 1000;

/**
 * An endpoint (address, port) as a map key. IPv4 endpoints become one number (address * 65536 + port, exact in a
 * double): 100,000 backends keyed by strings like '127.1.2.3|8080' held ~20 MiB of concatenated strings.
 */
export function endpointKey(addr: string, port: number): number | string {
  // Parsed by hand: split('.') allocated four strings per call and showed up in full-sync profiles.
  let v = 0, octet = 0, dots = 0;
  for (let i = 0; i < addr.length; i++) {
    const c = addr.charCodeAt(i);
    if (c === 46 /* . */) { v = v * 256 + octet; octet = 0; dots++; }
    else if (c >= 48 && c <= 57) octet = octet * 10 + (c - 48);
    else return `${addr}|${port}`; // IPv6
  }
  return dots === 3 ? (v * 256 + octet) * 65536 + port : `${addr}|${port}`;
}

/** Addresses of this node: a backend there is a sockmap candidate. */
export function localAddresses(): string[] {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) out.add(a.address.replace(/%.*$/, ''));
  }
  return [...out];
}

function isLoopback(addr: string): boolean {
  return addr === '::1' || /^127\./.test(addr);
}

/** SM_SVC_F_L7 (+ FAIL_OPEN) for the TCP frontends of a service with HTTP rules: connect() goes to the proxy. */
function l7Flags(svc: Service, fe: Frontend): number {
  if (!svc.http || fe.protocol !== 'tcp') return 0;
  return SVC_F_L7 | (svc.http.failMode === 'open' ? SVC_F_FAIL_OPEN : 0);
}

export class Reconciler {
  /** what the kernel holds, as we last wrote or read it */
  private frontends = new Map<string, KernelFrontend>();
  /** service id -> its frontends and backends (a change to one service costs work for that service only) */
  private svcs = new Map<number, SvcState>();
  /** endpoint -> how many UDP services have it as a backend (a removed one's connected UDP sockets are destroyed) */
  private udpUsers = new Map<number | string, number>();
  private serviceIds = new Map<string, number>(); // service name -> id
  private serviceNames = new Map<number, string>(); // and back
  /** Replaced tables waiting for their grace time (RETIRE_MS) before they are deleted. */
  private retired: { tableId: number; size: number; at: number }[] = [];
  private reaper?: NodeJS.Timeout;
  private usedServiceIds = new Set<number>();
  private nextServiceId = 1;
  private nextFrontendId = 1;
  private nextBackendId = 1;
  private nextTableId = 1;
  private local = new Set<string>();

  constructor(private readonly maps: Maps, private readonly n: Native, private readonly opts: ReconcilerOptions = {}) {}

  private state(id: number): SvcState {
    let st = this.svcs.get(id);
    if (!st) this.svcs.set(id, (st = { fronts: [], addrs: [], nums: [], udp: false }));
    return st;
  }

  /** Forget a service id that holds nothing any more. */
  private dropIfEmpty(id: number): void {
    const st = this.svcs.get(id);
    if (st && st.fronts.length === 0 && st.addrs.length === 0) this.svcs.delete(id);
  }

  private countUdp(addrs: readonly string[], nums: readonly number[], by: 1 | -1): void {
    for (let i = 0; i < addrs.length; i++) {
      const ep = endpointKey(addrs[i]!, portOf(nums, i));
      const n = (this.udpUsers.get(ep) ?? 0) + by;
      if (n > 0) this.udpUsers.set(ep, n); else this.udpUsers.delete(ep);
    }
  }

  private indexFrontend(f: KernelFrontend): void {
    const prev = this.frontends.get(f.key);
    if (prev) this.unlistFront(prev.value.service_id, f.key);
    this.frontends.set(f.key, f);
    this.state(f.value.service_id).fronts.push(f.key);
  }

  private unindexFrontend(f: KernelFrontend): void {
    this.frontends.delete(f.key);
    this.unlistFront(f.value.service_id, f.key);
    this.dropIfEmpty(f.value.service_id);
  }

  private unlistFront(id: number, key: string): void {
    const st = this.svcs.get(id);
    const at = st ? st.fronts.indexOf(key) : -1;
    if (at >= 0) st!.fronts.splice(at, 1);
  }

  /** Read the kernel's current state (adoption after a restart). Returns how many frontends/backends were found. */
  adopt(): { frontends: number; backends: number } {
    const { keys: bk, values: bv } = this.n.mapDump(this.maps.fd('sm_backends'));
    bk.forEach((k, i) => {
      const id = k.readUInt32LE(0);
      const b = decodeBackend(bv[i]!);
      const st = this.state(b.service_id);
      st.addrs.push(b.addr);
      st.nums.push(id, b.weight, packed(b.port, b.flags, b.family));
      this.nextBackendId = Math.max(this.nextBackendId, id + 1);
    });
    const { keys: sk, values: sv } = this.n.mapDump(this.maps.fd('sm_services'));
    sk.forEach((k, i) => {
      const key = decodeServiceKey(k);
      const value = decodeService(sv[i]!);
      const table = value.table_size > 0 ? this.readTable(value.table_id, value.table_size) : [];
      this.indexFrontend({ key: feKey(key.addr, key.port, key.proto), vip: key.addr, port: key.port, proto: key.proto, value, table });
      if (key.proto === PROTO.udp) this.state(value.service_id).udp = true;
      this.nextServiceId = Math.max(this.nextServiceId, value.service_id + 1);
      this.nextFrontendId = Math.max(this.nextFrontendId, value.frontend_id + 1);
      this.nextTableId = Math.max(this.nextTableId, value.table_id + 1);
    });
    for (const st of this.svcs.values()) if (st.udp) this.countUdp(st.addrs, st.nums, 1);
    // Tables left behind by an agent killed between steps 2 and 3 are unreferenced: remove them.
    const referenced = new Set([...this.frontends.values()].map((f) => f.value.table_id));
    const fdTables = this.maps.fd('sm_tables');
    for (const k of this.n.mapKeys(fdTables)) {
      const id = k.readUInt32LE(0);
      this.nextTableId = Math.max(this.nextTableId, id + 1);
      if (!referenced.has(id)) this.n.mapDelete(fdTables, k);
    }
    return { frontends: this.frontends.size, backends: bk.length };
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
    this.local = new Set(addrs);
  }

  private serviceIdFor(svc: Service): number {
    let id = this.serviceIds.get(svc.name);
    if (id !== undefined) return id;
    // After a restart the name is not in the kernel, but its frontends are: reuse their service id.
    for (const fe of svc.frontends) {
      const k = this.frontends.get(feKey(fe.vip, fe.port, PROTO[fe.protocol]));
      if (k && !this.usedServiceIds.has(k.value.service_id)) { id = k.value.service_id; break; }
    }
    id ??= this.nextServiceId++;
    this.serviceIds.set(svc.name, id);
    this.serviceNames.set(id, svc.name);
    this.namesChanges++;
    this.usedServiceIds.add(id);
    return id;
  }

  /**
   * Apply a model. With `changed` (names of services that may differ from the last apply, including removed ones),
   * only those services are looked at: an endpoint change costs work for its service, not for the whole model.
   * Without it, everything is compared (and kernel state of services no longer in the model is removed).
   * Throws on a kernel error (the caller keeps the previous model as the last good one).
   */
  apply(model: Model, changed?: ReadonlySet<string>): ReconcileResult {
    const t0 = performance.now();
    const res: ReconcileResult = { backendsWritten: 0, backendsDeleted: 0, frontendsWritten: 0, frontendsDeleted: 0, udpSocketsDestroyed: 0, ms: 0 };
    const fdBackends = this.maps.fd('sm_backends');
    const fdServices = this.maps.fd('sm_services');

    // The scope: services to compute, and the service ids whose kernel state may be replaced or removed.
    const services = changed ? model.services.filter((s) => changed.has(s.name)) : model.services;
    const scopeIds = new Set<number>();
    if (changed) {
      for (const name of changed) {
        const id = this.serviceIds.get(name);
        if (id !== undefined) scopeIds.add(id);
      }
    } else {
      for (const id of this.svcs.keys()) scopeIds.add(id);
    }
    // A name of the scope is live when it is in the model (with `changed`, the model's services of the scope).
    const live = new Set(services.map((s) => s.name));
    for (const name of changed ?? [...this.serviceIds.keys()]) {
      const id = this.serviceIds.get(name);
      if (id !== undefined && !live.has(name)) {
        this.serviceIds.delete(name); this.usedServiceIds.delete(id); this.serviceNames.delete(id);
        this.namesChanges++;
      }
    }

    // Desired state of the scope, reusing the ids of (service, address, port) the kernel already has.
    const plans = new Map<number, Plan>();
    /** backends to write: [plan, index in plan.addrs] */
    const writes: [Plan, number][] = [];
    const wantFrontends = new Map<string, { fe: Frontend; svc: Service; serviceId: number; table: number[] }>();
    for (const svc of services) {
      const serviceId = this.serviceIdFor(svc);
      scopeIds.add(serviceId);
      const old = this.svcs.get(serviceId);
      const oldAddrs = old?.addrs ?? [], oldNums = old?.nums ?? [];
      const oldIndex = indexBackends(oldAddrs, oldNums);
      let udp = false;
      for (const fe of svc.frontends) if (fe.protocol === 'udp') udp = true;
      const plan: Plan = { id: serviceId, oldAddrs, oldNums, oldUdp: old?.udp ?? false, addrs: [], nums: [], udp };
      plans.set(serviceId, plan);
      for (const fe of svc.frontends) {
        const ids: number[] = new Array(fe.backends.length);
        for (let i = 0; i < fe.backends.length; i++) {
          const b = fe.backends[i]!;
          // A service's backend is shared by all its VIPs of one family: one id per (service, address, port).
          let k = findBackend(plan.addrs, plan.nums, plan.index, b.address, b.port);
          if (k < 0) {
            const pk = packed(b.port, isLoopback(b.address) || this.local.has(b.address) ? BE_F_LOCAL : 0, b.family === 4 ? 2 : 10);
            const j = findBackend(oldAddrs, oldNums, oldIndex, b.address, b.port);
            const id = j >= 0 ? oldNums[B * j]! : this.nextBackendId++;
            k = plan.addrs.length;
            plan.addrs.push(b.address);
            plan.nums.push(id, b.weight, pk);
            if (plan.index) plan.index.set(endpointKey(b.address, b.port), k);
            else if (plan.addrs.length > LINEAR) plan.index = indexBackends(plan.addrs, plan.nums);
            if (j < 0 || oldNums[B * j + 1] !== b.weight || oldNums[B * j + 2] !== pk) writes.push([plan, k]);
          }
          ids[i] = plan.nums[B * k]!;
        }
        const table = tableFor(svc, fe).map((i) => ids[i]!);
        wantFrontends.set(feKey(fe.vip, fe.port, PROTO[fe.protocol]), { fe, svc, serviceId, table });
      }
    }

    // 1. backends: new or changed, in one batch
    if (writes.length) {
      const size = STRUCTS.sm_backend.size;
      const keys = Buffer.alloc(4 * writes.length);
      const values = Buffer.alloc(size * writes.length);
      const v = { addr: '', port: 0, family: 0, flags: 0, service_id: 0, weight: 0 };
      writes.forEach(([p, k], i) => {
        const at = B * k;
        keys.writeUInt32LE(p.nums[at]!, 4 * i);
        const pk = p.nums[at + 2]!;
        v.addr = p.addrs[k]!; v.weight = p.nums[at + 1]!; v.port = pk & 0xffff;
        v.flags = (pk >> 16) & 0xff; v.family = pk >> 24 ? 10 : 2; v.service_id = p.id;
        encode('sm_backend', v as unknown as Decoded, values, size * i);
      });
      this.n.mapUpdateBatch(fdBackends, keys, values, writes.length);
      res.backendsWritten = writes.length;
    }
    // The kernel holds every wanted backend now: the state moves on (the ones no longer wanted go in step 4).
    for (const p of plans.values()) {
      if (p.oldUdp) this.countUdp(p.oldAddrs, p.oldNums, -1);
      if (p.udp) this.countUdp(p.addrs, p.nums, 1);
      const st = this.state(p.id);
      // Copies of exactly their length: arrays grown by push keep up to half again as much room, for 10,000 services.
      st.addrs = p.addrs.slice();
      st.nums = p.nums.slice();
      st.udp = p.udp;
      p.index = undefined;
    }

    // 2. frontends, make-before-break in three batches: every new table is written in full, then the service
    //    entries are switched to them, then the old tables are dropped. A connect() sees the old or the new table.
    const switches: { key: string; fe: Frontend; value: ServiceValue; table: number[]; old?: KernelFrontend }[] = [];
    const newTables: { tableId: number; table: number[] }[] = [];
    for (const [key, want] of wantFrontends) {
      const cur = this.frontends.get(key);
      const { fe, svc, serviceId, table } = want;
      const value: ServiceValue = {
        service_id: serviceId,
        frontend_id: cur?.value.frontend_id ?? this.nextFrontendId++,
        table_id: cur?.value.table_id ?? 0,
        table_size: table.length,
        affinity_timeout_s: svc.affinityTimeoutSeconds,
        algo: ALGO[svc.algorithm],
        flags: (svc.affinityTimeoutSeconds > 0 ? SVC_F_AFFINITY : 0) | l7Flags(svc, fe),
      };
      const sameTable = cur !== undefined && cur.table.length === table.length && cur.table.every((x, i) => x === table[i]);
      if (!sameTable) {
        value.table_id = table.length ? this.nextTableId++ : 0;
        if (table.length) newTables.push({ tableId: value.table_id, table });
      }
      const c = cur?.value;
      const sameValue = c !== undefined && sameTable && c.service_id === value.service_id && c.frontend_id === value.frontend_id &&
        c.table_id === value.table_id && c.table_size === value.table_size && c.affinity_timeout_s === value.affinity_timeout_s &&
        c.algo === value.algo && c.flags === value.flags;
      if (sameValue) continue;
      switches.push({ key, fe, value, table, old: cur && !sameTable ? cur : undefined });
    }
    this.writeTables(newTables);
    if (switches.length) {
      const ks = STRUCTS.sm_service_key.size, vs = STRUCTS.sm_service.size;
      const keys = Buffer.alloc(ks * switches.length);
      const values = Buffer.alloc(vs * switches.length);
      switches.forEach((w, i) => {
        encode('sm_service_key', { addr: w.fe.vip, port: w.fe.port, proto: PROTO[w.fe.protocol] }, keys, ks * i);
        encode('sm_service', w.value as unknown as Decoded, values, vs * i);
      });
      this.n.mapUpdateBatch(fdServices, keys, values, switches.length);
    }
    for (const w of switches) {
      if (w.old) this.retireTable(w.old.value.table_id, w.old.table.length);
      this.indexFrontend({ key: w.key, vip: w.fe.vip, port: w.fe.port, proto: PROTO[w.fe.protocol], value: w.value, table: w.table });
    }
    res.frontendsWritten = switches.length;

    // 3. frontends of the scope that went away
    for (const id of scopeIds) {
      for (const key of [...(this.svcs.get(id)?.fronts ?? [])]) {
        if (wantFrontends.has(key)) continue;
        const cur = this.frontends.get(key)!;
        this.n.mapDelete(fdServices, serviceKey({ addr: cur.vip, port: cur.port, proto: cur.proto }));
        this.retireTable(cur.value.table_id, cur.table.length);
        this.unindexFrontend(cur);
        res.frontendsDeleted++;
      }
      if (!plans.has(id)) this.n.mapDelete(this.maps.fd('sm_svc_stats'), u32(id));
    }

    // 4. backends of the scope that no table references any more: of the services computed, those their new state
    //    lacks; of the services that went away, all. Then forget the ids that hold nothing.
    for (const id of scopeIds) {
      const p = plans.get(id);
      let addrs: string[], nums: number[], udp: boolean;
      if (p) {
        addrs = p.oldAddrs; nums = p.oldNums; udp = p.oldUdp;
      } else {
        const st = this.svcs.get(id);
        if (!st) continue;
        addrs = st.addrs; nums = st.nums; udp = st.udp;
        if (udp) this.countUdp(addrs, nums, -1);
        st.addrs = []; st.nums = []; st.udp = false;
      }
      const index = p ? indexBackends(p.addrs, p.nums) : undefined;
      for (let i = 0; i < addrs.length; i++) {
        const addr = addrs[i]!, port = portOf(nums, i);
        if (p && findBackend(p.addrs, p.nums, index, addr, port) >= 0) continue;
        const bid = nums[B * i]!;
        this.n.mapDelete(fdBackends, u32(bid));
        this.n.mapDelete(this.maps.fd('sm_backend_stats'), u32(bid));
        res.backendsDeleted++;
        // Connected UDP sockets would keep sending to the removed backend forever: destroy them so their owners
        // reconnect (and get balanced again). Only for a service with a UDP frontend (no other can have balanced a
        // UDP socket to it), and not while another such service still uses the same address and port.
        if (udp && this.opts.destroyUdp && !this.udpUsers.has(endpointKey(addr, port))) {
          res.udpSocketsDestroyed += this.opts.destroyUdp(addr, port);
        }
      }
      this.dropIfEmpty(id);
    }
    this.reapTables();
    res.ms = performance.now() - t0;
    return res;
  }

  /** Write complete tables under fresh ids (nothing points at them yet), all in one batch. */
  private writeTables(tables: { tableId: number; table: number[] }[]): void {
    const count = tables.reduce((n, t) => n + t.table.length, 0);
    if (count === 0) return;
    const keys = Buffer.alloc(8 * count);
    const values = Buffer.alloc(4 * count);
    let i = 0;
    for (const { tableId, table } of tables) {
      for (let j = 0; j < table.length; j++, i++) {
        tableKey(tableId, j, keys, 8 * i);
        values.writeUInt32LE(table[j]!, 4 * i);
      }
    }
    this.n.mapUpdateBatch(this.maps.fd('sm_tables'), keys, values, count);
  }

  private deleteTable(tableId: number, size: number): void {
    const fd = this.maps.fd('sm_tables');
    for (let i = 0; i < size; i++) this.n.mapDelete(fd, tableKey(tableId, i));
  }

  /**
   * Changes whenever names() does: what depends on the names alone (state.json) is rewritten only then, not on every
   * endpoint change (10,000 names as JSON is ~1 MB of garbage per change, much of it in large-object space).
   */
  namesVersion(): number {
    return this.namesChanges;
  }
  private namesChanges = 0;

  /** Service id -> name, kept up to date (read per flow event: no copying here). */
  names(): ReadonlyMap<number, string> {
    return this.serviceNames;
  }

  /** Delete the tables replaced by earlier applies whose grace time has passed (see RETIRE_MS). */
  private reapTables(now = performance.now()): void {
    while (this.retired.length && this.retired[0]!.at <= now) {
      const t = this.retired.shift()!;
      this.deleteTable(t.tableId, t.size);
    }
    if (this.retired.length && !this.reaper) {
      // Until the oldest is due, plus 1 ms: a timer may fire a fraction of a ms before performance.now() reaches `at`,
      // which left the table for one more whole RETIRE_MS.
      const wait = Math.max(1, Math.ceil(this.retired[0]!.at - performance.now()) + 1);
      this.reaper = setTimeout(() => { this.reaper = undefined; this.reapTables(); }, wait);
      this.reaper.unref();
    }
  }

  /** Retire a table that no service entry points at any more: deleted after a grace time, not at once. */
  private retireTable(tableId: number, size: number): void {
    if (tableId === 0 || size === 0) return;
    this.retired.push({ tableId, size, at: performance.now() + RETIRE_MS });
  }
}
