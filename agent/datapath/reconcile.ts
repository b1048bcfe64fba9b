// Reconciling the model into the kernel maps, by diff and make-before-break.
//
// The kernel maps are the source of truth for ids: on start the reconciler reads them back (a restarted agent adopts
// what the previous one wrote, so nothing is flushed), and every later change only touches what differs:
//   1. backends that are new or changed are written;
//   2. a frontend whose selection table changed gets a NEW inner array, filled completely, inserted under a fresh
//      table id; then the service entry is switched to it in one update; then the old table is deleted — a connect()
//      always sees a complete table whose every entry names an existing backend;
//   3. frontends that went away are deleted (service entry first, then its table);
//   4. only then backends that no table references any more are deleted, and UDP sockets connected to them are
//      destroyed so their owners reconnect (established TCP connections are left to finish).
import { networkInterfaces } from 'node:os';
import type { Model, Service, Frontend } from '../model/types.js';
import { tableFor } from '../model/tables.js';
import {
  ALGO, BE_F_LOCAL, BPF_F_INNER_MAP, BPF_MAP_TYPE_ARRAY, PROTO, SVC_F_AFFINITY, addrToBytes, backendValue,
  decodeBackend, decodeService, decodeServiceKey, serviceKey, serviceValue, u32, type BackendValue, type ServiceValue,
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
const beKey = (serviceId: number, addr: string, port: number): string => `${serviceId}|${addr}|${port}`;

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

export class Reconciler {
  /** what the kernel holds, as we last wrote or read it */
  private frontends = new Map<string, KernelFrontend>();
  private backends = new Map<number, KernelBackend>();
  private serviceIds = new Map<string, number>(); // service name -> id
  private nextServiceId = 1;
  private nextFrontendId = 1;
  private nextBackendId = 1;
  private nextTableId = 1;
  private local = new Set<string>();

  constructor(private readonly maps: Maps, private readonly n: Native, private readonly opts: ReconcilerOptions = {}) {}

  /** Read the kernel's current state (adoption after a restart). Returns how many frontends/backends were found. */
  adopt(): { frontends: number; backends: number } {
    const { keys: bk, values: bv } = this.n.mapDump(this.maps.fd('sm_backends'));
    bk.forEach((k, i) => {
      const id = k.readUInt32LE(0);
      this.backends.set(id, { id, ...decodeBackend(bv[i]!) });
      this.nextBackendId = Math.max(this.nextBackendId, id + 1);
    });
    const { keys: sk, values: sv } = this.n.mapDump(this.maps.fd('sm_services'));
    sk.forEach((k, i) => {
      const key = decodeServiceKey(k);
      const value = decodeService(sv[i]!);
      const table = value.table_size > 0 ? this.readTable(value.table_id) : [];
      this.frontends.set(feKey(key.addr, key.port, key.proto), { key: feKey(key.addr, key.port, key.proto), vip: key.addr, port: key.port, proto: key.proto, value, table });
      this.nextServiceId = Math.max(this.nextServiceId, value.service_id + 1);
      this.nextFrontendId = Math.max(this.nextFrontendId, value.frontend_id + 1);
      this.nextTableId = Math.max(this.nextTableId, value.table_id + 1);
    });
    // Tables left behind by an agent killed between steps 2 and 3 are unreferenced: remove them.
    const referenced = new Set([...this.frontends.values()].map((f) => f.value.table_id));
    for (const k of this.n.mapKeys(this.maps.fd('sm_tables'))) {
      const id = k.readUInt32LE(0);
      this.nextTableId = Math.max(this.nextTableId, id + 1);
      if (!referenced.has(id)) this.n.mapDelete(this.maps.fd('sm_tables'), k);
    }
    return { frontends: this.frontends.size, backends: this.backends.size };
  }

  private readTable(tableId: number): number[] {
    const innerId = this.n.mapLookup(this.maps.fd('sm_tables'), u32(tableId));
    if (!innerId) return [];
    const fd = this.n.mapFdById(innerId.readUInt32LE(0));
    try {
      const info = this.n.mapInfo(fd);
      const out: number[] = [];
      for (let i = 0; i < info.maxEntries; i++) out.push(this.n.mapLookup(fd, u32(i))!.readUInt32LE(0));
      return out;
    } finally {
      this.n.close(fd);
    }
  }

  /** Write the node's addresses for the sockops program (which sockets have a local peer). */
  syncLocalAddresses(addrs = localAddresses()): void {
    const fd = this.maps.fd('sm_local_addrs');
    const want = new Set(addrs.filter((a) => !isLoopback(a)));
    for (const k of this.n.mapKeys(fd)) {
      const a = k.toString('hex');
      if (![...want].some((w) => addrToBytes(w).toString('hex') === a)) this.n.mapDelete(fd, k);
    }
    for (const a of want) this.n.mapUpdate(fd, addrToBytes(a), u32(1));
    this.local = new Set(addrs);
  }

  private serviceIdFor(svc: Service): number {
    let id = this.serviceIds.get(svc.name);
    if (id !== undefined) return id;
    // After a restart the name is not in the kernel, but its frontends are: reuse their service id.
    for (const fe of svc.frontends) {
      const k = this.frontends.get(feKey(fe.vip, fe.port, PROTO[fe.protocol]));
      if (k && ![...this.serviceIds.values()].includes(k.value.service_id)) { id = k.value.service_id; break; }
    }
    id ??= this.nextServiceId++;
    this.serviceIds.set(svc.name, id);
    return id;
  }

  /** Apply a model. Throws on a kernel error (the caller keeps the previous model as the last good one). */
  apply(model: Model): ReconcileResult {
    const t0 = performance.now();
    const res: ReconcileResult = { backendsWritten: 0, backendsDeleted: 0, frontendsWritten: 0, frontendsDeleted: 0, udpSocketsDestroyed: 0, ms: 0 };
    const fdBackends = this.maps.fd('sm_backends');
    const fdServices = this.maps.fd('sm_services');
    const fdTables = this.maps.fd('sm_tables');

    // Desired backends, reusing ids of (service, address, port) the kernel already has.
    const byKey = new Map<string, KernelBackend>();
    for (const b of this.backends.values()) byKey.set(beKey(b.service_id, b.addr, b.port), b);
    const wantBackends = new Map<number, KernelBackend>();
    const wantFrontends = new Map<string, { fe: Frontend; svc: Service; serviceId: number; table: number[] }>();
    const liveServiceNames = new Set(model.services.map((s) => s.name));
    for (const name of [...this.serviceIds.keys()]) if (!liveServiceNames.has(name)) this.serviceIds.delete(name);

    for (const svc of model.services) {
      const serviceId = this.serviceIdFor(svc);
      for (const fe of svc.frontends) {
        const ids = fe.backends.map((b) => {
          const k = beKey(serviceId, b.address, b.port);
          // byKey holds the kernel's backends and those already placed in this pass (a service's backend is shared
          // by all its VIPs of one family): either way the id is reused.
          const id = byKey.get(k)?.id ?? this.nextBackendId++;
          const value: KernelBackend = {
            id, addr: b.address, port: b.port, family: b.family === 4 ? 2 : 10,
            flags: isLoopback(b.address) || this.local.has(b.address) ? BE_F_LOCAL : 0, service_id: serviceId, weight: b.weight,
          };
          byKey.set(k, value);
          wantBackends.set(id, value);
          return id;
        });
        const table = tableFor(svc, fe).map((i) => ids[i]!);
        wantFrontends.set(feKey(fe.vip, fe.port, PROTO[fe.protocol]), { fe, svc, serviceId, table });
      }
    }

    // 1. backends: new or changed
    const changedKeys: Buffer[] = [];
    const changedValues: Buffer[] = [];
    for (const [id, b] of wantBackends) {
      const cur = this.backends.get(id);
      if (cur && cur.addr === b.addr && cur.port === b.port && cur.weight === b.weight && cur.flags === b.flags && cur.service_id === b.service_id) continue;
      changedKeys.push(u32(id));
      changedValues.push(backendValue(b));
    }
    if (changedKeys.length) {
      this.n.mapUpdateBatch(fdBackends, Buffer.concat(changedKeys), Buffer.concat(changedValues), changedKeys.length);
      for (const k of changedKeys) { const id = k.readUInt32LE(0); this.backends.set(id, wantBackends.get(id)!); }
      res.backendsWritten = changedKeys.length;
    }

    // 2. frontends: new table first, then switch the service entry, then drop the old table
    for (const [key, want] of wantFrontends) {
      const cur = this.frontends.get(key);
      const { fe, svc, serviceId, table } = want;
      const affinity = svc.affinityTimeoutSeconds > 0;
      const value: ServiceValue = {
        service_id: serviceId,
        frontend_id: cur?.value.frontend_id ?? this.nextFrontendId++,
        table_id: cur?.value.table_id ?? 0,
        table_size: table.length,
        affinity_timeout_s: svc.affinityTimeoutSeconds,
        algo: ALGO[svc.algorithm],
        flags: affinity ? SVC_F_AFFINITY : 0,
      };
      const sameTable = cur !== undefined && cur.table.length === table.length && cur.table.every((x, i) => x === table[i]);
      if (!sameTable) value.table_id = table.length ? this.writeTable(table) : 0;
      const sameValue = cur !== undefined && sameTable && Object.entries(value).every(([k, v]) => cur.value[k as keyof ServiceValue] === v);
      if (sameValue) continue;
      this.n.mapUpdate(fdServices, serviceKey({ addr: fe.vip, port: fe.port, proto: PROTO[fe.protocol] }), serviceValue(value));
      if (cur && !sameTable && cur.value.table_id !== 0) this.n.mapDelete(fdTables, u32(cur.value.table_id));
      this.frontends.set(key, { key, vip: fe.vip, port: fe.port, proto: PROTO[fe.protocol], value, table });
      res.frontendsWritten++;
    }

    // 3. frontends that went away
    for (const [key, cur] of [...this.frontends]) {
      if (wantFrontends.has(key)) continue;
      this.n.mapDelete(fdServices, serviceKey({ addr: cur.vip, port: cur.port, proto: cur.proto }));
      if (cur.value.table_id !== 0) this.n.mapDelete(fdTables, u32(cur.value.table_id));
      if (![...wantFrontends.values()].some((w) => w.serviceId === cur.value.service_id)) {
        this.n.mapDelete(this.maps.fd('sm_svc_stats'), u32(cur.value.service_id));
      }
      this.frontends.delete(key);
      res.frontendsDeleted++;
    }

    // 4. backends no table references any more
    const stillUsed = new Set<string>();
    for (const b of wantBackends.values()) stillUsed.add(`${b.addr}|${b.port}`);
    for (const [id, b] of [...this.backends]) {
      if (wantBackends.has(id)) continue;
      this.n.mapDelete(fdBackends, u32(id));
      this.n.mapDelete(this.maps.fd('sm_backend_stats'), u32(id));
      this.backends.delete(id);
      res.backendsDeleted++;
      // Connected UDP sockets would keep sending to the removed backend forever: destroy them so their owners
      // reconnect (and get balanced again). Not when another service still uses the same address and port.
      if (this.opts.destroyUdp && !stillUsed.has(`${b.addr}|${b.port}`)) res.udpSocketsDestroyed += this.opts.destroyUdp(b.addr, b.port);
    }
    res.ms = performance.now() - t0;
    return res;
  }

  private writeTable(table: number[]): number {
    const fd = this.n.mapCreate(BPF_MAP_TYPE_ARRAY, 'sm_table', 4, 4, table.length, BPF_F_INNER_MAP);
    try {
      const keys = Buffer.alloc(4 * table.length);
      const values = Buffer.alloc(4 * table.length);
      table.forEach((id, i) => { keys.writeUInt32LE(i, 4 * i); values.writeUInt32LE(id, 4 * i); });
      this.n.mapUpdateBatch(fd, keys, values, table.length);
      const tableId = this.nextTableId++;
      this.n.mapUpdate(this.maps.fd('sm_tables'), u32(tableId), u32(fd), 1 /* BPF_NOEXIST */);
      return tableId;
    } finally {
      this.n.close(fd); // the outer map holds the inner array now
    }
  }

  /** The kernel state as the reconciler knows it (for the admin API). */
  snapshot(): { frontends: KernelFrontend[]; backends: KernelBackend[]; serviceNames: Map<number, string> } {
    const serviceNames = new Map<number, string>();
    for (const [name, id] of this.serviceIds) serviceNames.set(id, name);
    return { frontends: [...this.frontends.values()], backends: [...this.backends.values()], serviceNames };
  }
}
