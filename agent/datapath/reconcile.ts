// Reconciling the model into the kernel maps, by diff and make-before-break.
//
// The kernel maps are the source of truth for ids: on start the reconciler reads them back (a restarted agent adopts
// what the previous one wrote, so nothing is flushed), and every later change only touches what differs:
//   1. backends that are new or changed are written;
//   2. a frontend whose selection table changed gets a NEW table under a fresh table id, written completely; then
//      the service entry is switched to it in one update; the old table is retired and deleted a second later — a
//      connect() always sees a complete table whose every entry names an existing backend;
//   3. frontends that went away are deleted (service entry first; their tables are retired the same way);
//   4. only then backends that no table references any more are deleted, and UDP sockets connected to them are
//      destroyed so their owners reconnect (established TCP connections are left to finish).
import { networkInterfaces } from 'node:os';
import type { Model, Service, Frontend } from '../model/types.js';
import { tableFor } from '../model/tables.js';
import {
  ALGO, BE_F_LOCAL, PROTO, STRUCTS, SVC_F_AFFINITY, SVC_F_FAIL_OPEN, SVC_F_L7, addrToBytes, encode, type Decoded,
  decodeBackend, decodeService, decodeServiceKey, serviceKey, tableKey, u32, type BackendValue, type ServiceValue,
} from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';

export interface KernelBackend extends BackendValue { id: number }
export interface KernelFrontend {
  key: string; // vip|port|proto
  vip: string; port: number; proto: number;
  value: ServiceValue;
  /** backend ids in table order */
  table: number[];
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
  private backends = new Map<number, KernelBackend>();
  /** indexes over the two maps above, so that a change to one service costs work for that service only */
  private frontendsBySvc = new Map<number, Set<string>>();
  private backendsBySvc = new Map<number, Map<number | string, KernelBackend>>(); // service id -> endpoint -> backend
  private endpointUsers = new Map<number | string, number>(); // endpoint -> backends using it (any service)
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

  private indexBackend(b: KernelBackend): void {
    const prev = this.backends.get(b.id);
    if (prev) this.unindexBackend(prev);
    this.backends.set(b.id, b);
    let m = this.backendsBySvc.get(b.service_id);
    if (!m) this.backendsBySvc.set(b.service_id, (m = new Map()));
    const ep = endpointKey(b.addr, b.port);
    m.set(ep, b);
    this.endpointUsers.set(ep, (this.endpointUsers.get(ep) ?? 0) + 1);
  }

  private unindexBackend(b: KernelBackend): void {
    this.backends.delete(b.id);
    const m = this.backendsBySvc.get(b.service_id);
    const ep = endpointKey(b.addr, b.port);
    m?.delete(ep);
    if (m && m.size === 0) this.backendsBySvc.delete(b.service_id);
    const n = (this.endpointUsers.get(ep) ?? 1) - 1;
    if (n > 0) this.endpointUsers.set(ep, n); else this.endpointUsers.delete(ep);
  }

  private indexFrontend(f: KernelFrontend): void {
    const prev = this.frontends.get(f.key);
    if (prev) this.frontendsBySvc.get(prev.value.service_id)?.delete(f.key);
    this.frontends.set(f.key, f);
    let set = this.frontendsBySvc.get(f.value.service_id);
    if (!set) this.frontendsBySvc.set(f.value.service_id, (set = new Set()));
    set.add(f.key);
  }

  private unindexFrontend(f: KernelFrontend): void {
    this.frontends.delete(f.key);
    const set = this.frontendsBySvc.get(f.value.service_id);
    set?.delete(f.key);
    if (set && set.size === 0) this.frontendsBySvc.delete(f.value.service_id);
  }

  /** Read the kernel's current state (adoption after a restart). Returns how many frontends/backends were found. */
  adopt(): { frontends: number; backends: number } {
    const { keys: bk, values: bv } = this.n.mapDump(this.maps.fd('sm_backends'));
    bk.forEach((k, i) => {
      const id = k.readUInt32LE(0);
      this.indexBackend({ id, ...decodeBackend(bv[i]!) });
      this.nextBackendId = Math.max(this.nextBackendId, id + 1);
    });
    const { keys: sk, values: sv } = this.n.mapDump(this.maps.fd('sm_services'));
    sk.forEach((k, i) => {
      const key = decodeServiceKey(k);
      const value = decodeService(sv[i]!);
      const table = value.table_size > 0 ? this.readTable(value.table_id, value.table_size) : [];
      this.indexFrontend({ key: feKey(key.addr, key.port, key.proto), vip: key.addr, port: key.port, proto: key.proto, value, table });
      this.nextServiceId = Math.max(this.nextServiceId, value.service_id + 1);
      this.nextFrontendId = Math.max(this.nextFrontendId, value.frontend_id + 1);
      this.nextTableId = Math.max(this.nextTableId, value.table_id + 1);
    });
    // Tables left behind by an agent killed between steps 2 and 3 are unreferenced: remove them.
    const referenced = new Set([...this.frontends.values()].map((f) => f.value.table_id));
    const fdTables = this.maps.fd('sm_tables');
    for (const k of this.n.mapKeys(fdTables)) {
      const id = k.readUInt32LE(0);
      this.nextTableId = Math.max(this.nextTableId, id + 1);
      if (!referenced.has(id)) this.n.mapDelete(fdTables, k);
    }
    return { frontends: this.frontends.size, backends: this.backends.size };
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
      for (const id of this.frontendsBySvc.keys()) scopeIds.add(id);
      for (const id of this.backendsBySvc.keys()) scopeIds.add(id);
    }
    const live = new Set(model.services.map((s) => s.name));
    for (const name of changed ?? [...this.serviceIds.keys()]) {
      const id = this.serviceIds.get(name);
      if (id !== undefined && !live.has(name)) { this.serviceIds.delete(name); this.usedServiceIds.delete(id); this.serviceNames.delete(id); }
    }

    // Desired state of the scope, reusing the ids of (service, address, port) the kernel already has. An unchanged
    // backend keeps its object: a full sync of 100,000 endpoints must not allocate them all twice.
    const wantBackends = new Map<number, KernelBackend>();
    const changedBackends: KernelBackend[] = [];
    const wantFrontends = new Map<string, { fe: Frontend; svc: Service; serviceId: number; table: number[] }>();
    for (const svc of services) {
      const serviceId = this.serviceIdFor(svc);
      scopeIds.add(serviceId);
      const mine = this.backendsBySvc.get(serviceId);
      const placed = new Map<number | string, number>();
      for (const fe of svc.frontends) {
        const ids: number[] = new Array(fe.backends.length);
        fe.backends.forEach((b, i) => {
          const ep = endpointKey(b.address, b.port);
          // A service's backend is shared by all its VIPs of one family: one id per (service, address, port).
          let id = placed.get(ep);
          if (id === undefined) {
            const cur = mine?.get(ep);
            id = cur?.id ?? this.nextBackendId++;
            placed.set(ep, id);
            const family = b.family === 4 ? 2 : 10;
            const flags = isLoopback(b.address) || this.local.has(b.address) ? BE_F_LOCAL : 0;
            if (cur && cur.weight === b.weight && cur.flags === flags && cur.family === family) {
              wantBackends.set(id, cur);
            } else {
              const nb: KernelBackend = { id, addr: b.address, port: b.port, family, flags, service_id: serviceId, weight: b.weight };
              wantBackends.set(id, nb);
              changedBackends.push(nb);
            }
          }
          ids[i] = id;
        });
        const table = tableFor(svc, fe).map((i) => ids[i]!);
        wantFrontends.set(feKey(fe.vip, fe.port, PROTO[fe.protocol]), { fe, svc, serviceId, table });
      }
    }

    // 1. backends: new or changed, in one batch
    if (changedBackends.length) {
      const size = STRUCTS.sm_backend.size;
      const keys = Buffer.alloc(4 * changedBackends.length);
      const values = Buffer.alloc(size * changedBackends.length);
      changedBackends.forEach((b, i) => { keys.writeUInt32LE(b.id, 4 * i); encode('sm_backend', b as unknown as Decoded, values, size * i); });
      this.n.mapUpdateBatch(fdBackends, keys, values, changedBackends.length);
      for (const b of changedBackends) this.indexBackend(b);
      res.backendsWritten = changedBackends.length;
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
    const liveIds = new Set([...wantFrontends.values()].map((w) => w.serviceId));
    for (const id of scopeIds) {
      for (const key of [...(this.frontendsBySvc.get(id) ?? [])]) {
        if (wantFrontends.has(key)) continue;
        const cur = this.frontends.get(key)!;
        this.n.mapDelete(fdServices, serviceKey({ addr: cur.vip, port: cur.port, proto: cur.proto }));
        this.retireTable(cur.value.table_id, cur.table.length);
        this.unindexFrontend(cur);
        res.frontendsDeleted++;
      }
      if (!liveIds.has(id)) this.n.mapDelete(this.maps.fd('sm_svc_stats'), u32(id));
    }

    // 4. backends of the scope that no table references any more
    for (const id of scopeIds) {
      for (const b of [...(this.backendsBySvc.get(id)?.values() ?? [])]) {
        if (wantBackends.has(b.id)) continue;
        this.n.mapDelete(fdBackends, u32(b.id));
        this.n.mapDelete(this.maps.fd('sm_backend_stats'), u32(b.id));
        this.unindexBackend(b);
        res.backendsDeleted++;
        // Connected UDP sockets would keep sending to the removed backend forever: destroy them so their owners
        // reconnect (and get balanced again). Not when another service still uses the same address and port.
        if (this.opts.destroyUdp && !this.endpointUsers.has(endpointKey(b.addr, b.port))) {
          res.udpSocketsDestroyed += this.opts.destroyUdp(b.addr, b.port);
        }
      }
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
      this.reaper = setTimeout(() => { this.reaper = undefined; this.reapTables(); }, RETIRE_MS);
      this.reaper.unref();
    }
  }

  /** Retire a table that no service entry points at any more: deleted after a grace time, not at once. */
  private retireTable(tableId: number, size: number): void {
    if (tableId === 0 || size === 0) return;
    this.retired.push({ tableId, size, at: performance.now() + RETIRE_MS });
  }
}
