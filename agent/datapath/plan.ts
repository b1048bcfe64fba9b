// The kernel plan: what to write to and delete from the maps to go from what the kernel holds to a model. Pure: no
// I/O, no native code; plan-exec.ts performs the operations, reconcile.ts ties the two to the maps.
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
//      left to finish). "No table" counts the retired ones still in their grace time: a connect() that read the old
//      service entry reads the old table, and must find every backend it names. A removed backend a retired table
//      still names goes into that table's grave: it is deleted (and its UDP sockets destroyed) when the table is.
// planApply() returns these steps as an ordered list of operations (Op), in that order and batched as the executor
// sends them, with the ids it allocated, and the new shadow state (Commit) to take once the kernel holds it all.
// planReap() deletes the graves whose grace time is over: their tables, then their backends (the Reconciler runs it
// on its timer, and at the end of each apply).
import type { Model, Service, Frontend } from '../model/types.js';
import { tableFor } from '../model/tables.js';
import { authzDefault, compileAuthz4, type Authz4 } from '../model/authz4.js';
import { ipv4Value } from '../model/address.js';
import { MtlsModes } from '../model/mtls.js';
import type { Workload } from '../model/l7.js';
import {
  ALGO, BE_F_LOCAL, BE_F_STRICT, BE_F_TUNNEL, PROTO, SVC_F_AFFINITY, SVC_F_AUTHZ, SVC_F_AUTHZ_DENY, SVC_F_FAIL_OPEN, SVC_F_L7, type BackendValue, type ServiceKey, type ServiceValue,
} from './abi.js';

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
export interface SvcState {
  /** keys (vip|port|proto) of its frontends */
  fronts: string[];
  /** its backends: addrs[i], and nums[B*i ..] = kernel id, weight, packed(port, flags, family) */
  addrs: string[];
  nums: number[];
  /** it has a UDP frontend: its backends count in Shadow.udpUsers */
  udp: boolean;
  /** its tables retired and not deleted yet (oldest first): a removed backend one of them names waits for it */
  retiring?: RetiringTable[];
}

/** A retired table of a service: the grave it is deleted with, and its entries (backend ids). */
export interface RetiringTable { grave: number; ids: readonly number[] }

/**
 * What one reap deletes: the tables one apply retired, then the backends removed while a retired table still named
 * them (those whose last such table is here). Reaped oldest first, so every older table naming them is gone too.
 */
export interface Grave {
  seq: number;
  tables: RetiredTable[];
  doomed: Doomed[];
}

export interface RetiredTable extends TableRef { serviceId: number }

/** Removed backends of one service waiting in a grave, packed: ids[i], addrs[i], ports[i]. */
export interface Doomed {
  serviceId: number;
  /** the service had a UDP frontend when they were removed: their connected UDP sockets are destroyed at the reap */
  udp: boolean;
  ids: number[];
  addrs: string[];
  ports: number[];
}

/** Numbers per backend in SvcState.nums. */
export const B = 3;

/** Port, flags and family of a backend as one small integer (SvcState.nums[B*i + 2]). */
const packed = (port: number, flags: number, family: number): number => port | (flags << 16) | (family === 10 ? 1 << 24 : 0);
const portOf = (nums: readonly number[], i: number): number => nums[B * i + 2]! & 0xffff;
/** Up to this many backends a service's endpoint is found by a linear scan; above, through a map built per apply. */
const LINEAR = 16;

/** Backend i of a service's packed arrays as the kernel stores it. */
export function backendAt(serviceId: number, addrs: readonly string[], nums: readonly number[], i: number, out?: BackendValue): BackendValue {
  const v = out ?? { addr: '', port: 0, family: 0, flags: 0, service_id: 0, weight: 0 };
  const pk = nums[B * i + 2]!;
  v.addr = addrs[i]!; v.port = pk & 0xffff; v.family = pk >> 24 ? 10 : 2; v.flags = (pk >> 16) & 0xff;
  v.service_id = serviceId; v.weight = nums[B * i + 1]!;
  return v;
}

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

/**
 * An endpoint (address, port) as a map key. IPv4 endpoints become one number (address * 65536 + port, exact in a
 * double): 100,000 backends keyed by strings like '127.1.2.3|8080' held ~20 MiB of concatenated strings.
 */
export function endpointKey(addr: string, port: number): number | string {
  const v = ipv4Value(addr);
  return v >= 0 ? v * 65536 + port : `${addr}|${port}`;
}

export function isLoopback(addr: string): boolean {
  return addr === '::1' || /^127\./.test(addr);
}

export const feKey = (vip: string, port: number, proto: number): string => `${vip}|${port}|${proto}`;

/**
 * What the kernel hands to the tunnel for `nodeId`: workloads of another node (Workload.node set and not this node)
 * whose mTLS mode (model/mtls.ts) is not off. backend() gives a VIP backend's flags (BE_F_TUNNEL, + BE_F_STRICT for a
 * strict destination), with the service's own mode and the port's; pods maps each such workload address to its
 * flags for a direct connect() to it (sm_remote_pods), where only the namespace's or the mesh's mode can apply (the
 * kernel keys that map by address alone, so a service's port-level mode does not reach a pod dialled directly).
 * An address that is local (this node's pods) is never handed over, whatever a stale workload entry says.
 */
export function tunnelTargets(model: Model, nodeId: string, local: ReadonlySet<string> = new Set()): {
  backend(svc: Service, address: string, port: number): number; pods: Map<string, number>;
} {
  const remote = new Map<string, Workload>();
  for (const w of model.workloads ?? []) {
    if (w.node === undefined || w.node === nodeId) continue;
    for (const a of w.addresses ?? []) if (!local.has(a) && !isLoopback(a)) remote.set(a, w);
  }
  const flagsOf = (mode: string): number => (mode === 'off' ? 0 : mode === 'strict' ? BE_F_TUNNEL | BE_F_STRICT : BE_F_TUNNEL);
  // the services' own modes, indexed by backend once per call (on the first port asked), not walked per backend
  const modes = new MtlsModes(model);
  const pods = new Map<string, number>();
  for (const [a, w] of remote) {
    const f = flagsOf(modes.modeFor(w, undefined));
    if (f) pods.set(a, f);
  }
  // once per (address, port) and call, not per frontend
  const byPort = new Map<string, string>();
  return {
    pods,
    backend(svc, address, port) {
      const w = remote.get(address);
      if (!w) return 0;
      if (svc.mtls) return flagsOf(svc.mtls);
      const k = `${address}|${port}`;
      let mode = byPort.get(k);
      if (mode === undefined) byPort.set(k, (mode = modes.modeFor(w, port)));
      return flagsOf(mode);
    },
  };
}

/** SM_SVC_F_L7 (+ FAIL_OPEN) for the TCP frontends of a service with HTTP rules: connect() goes to the proxy. */
function l7Flags(svc: Service, fe: Frontend): number {
  if (!svc.http || fe.protocol !== 'tcp') return 0;
  return SVC_F_L7 | (svc.http.failMode === 'open' ? SVC_F_FAIL_OPEN : 0);
}

/**
 * SM_SVC_F_AUTHZ (+ AUTHZ_DENY) for the TCP frontends of a service an L4 authorization policy applies to. Set by the
 * plan, with the service entry, so that a new service is never reachable before its default verdict holds (the
 * per-identity verdicts in sm_authz follow right after the apply: reconcile.ts syncAuthz).
 */
function authzFlags(authz: Authz4 | undefined, svc: Service, fe: Frontend): number {
  if (!authz || fe.protocol !== 'tcp') return 0;
  const d = authzDefault(authz, svc.name);
  return d === undefined ? 0 : d === 'deny' ? SVC_F_AUTHZ | SVC_F_AUTHZ_DENY : SVC_F_AUTHZ;
}

// ---- operations ----

/** Backends of one service to write: rows `at` of its new packed arrays. */
export interface BackendWrites { serviceId: number; addrs: readonly string[]; nums: readonly number[]; at: number[] }
export interface TableRef { tableId: number; size: number }

/** One step for the executor; each is one map batch (the write ops) or a run of single syscalls, in this order. */
export type Op =
  /** sm_backends: new or changed backends, one batch of `count` */
  | { op: 'writeBackends'; groups: BackendWrites[]; count: number }
  /** sm_tables: complete tables under fresh ids (nothing points at them yet), one batch of `count` entries */
  | { op: 'writeTables'; tables: { tableId: number; table: number[] }[]; count: number }
  /** sm_services: new entries, and entries switched to their new table, one batch */
  | { op: 'writeFrontends'; entries: { key: ServiceKey; value: ServiceValue }[] }
  /** tables no service entry points at any more: deleted after a grace time */
  | { op: 'retireTables'; tables: TableRef[] }
  /** sm_services entries that went away */
  | { op: 'deleteFrontends'; keys: ServiceKey[] }
  /** sm_svc_stats of service ids that went away */
  | { op: 'deleteServiceStats'; serviceIds: number[] }
  /** sm_tables: retired tables whose grace time is over (a reap) */
  | { op: 'deleteTables'; tables: TableRef[] }
  /** sm_backends (and sm_backend_stats) entries no table references any more */
  | { op: 'deleteBackends'; ids: number[] }
  /** connected UDP sockets of removed backends no UDP service uses any more */
  | { op: 'destroyUdp'; endpoints: { addr: string; port: number }[] };

/** The shadow state to take once every operation succeeded (Shadow.commit). */
export interface Commit {
  namesGone: string[];
  namesNew: [name: string, id: number][];
  next: NextIds;
  /** services computed: their new packed backends */
  services: { id: number; addrs: string[]; nums: number[]; udp: boolean }[];
  /** service ids that went away: their backends are all gone */
  emptied: number[];
  written: KernelFrontend[];
  deleted: KernelFrontend[];
  /** endpoint -> change of its UDP user count */
  udp: Map<number | string, number>;
  scope: number[];
  /** tables this apply retired: a new grave (Shadow.nextGrave) when any */
  retired: (RetiredTable & { ids: readonly number[] })[];
  /** removed backends a retired table still names, with the grave of the last such table */
  doomed: (Doomed & { grave: number })[];
}

export interface KernelPlan {
  ops: Op[];
  commit: Commit;
  backendsWritten: number;
  /** deleted by this plan's operations */
  backendsDeleted: number;
  /** removed, but a retired table still names them: deleted by the reap of its grave */
  backendsRetiring: number;
  frontendsWritten: number;
  frontendsDeleted: number;
}

export interface NextIds { service: number; frontend: number; backend: number; table: number }

// ---- the shadow of the kernel ----

/** What the kernel holds, as the reconciler last wrote or read it. Changed only by adoption and commit(). */
export class Shadow {
  readonly frontends = new Map<string, KernelFrontend>();
  /** service id -> its frontends and backends (a change to one service costs work for that service only) */
  readonly svcs = new Map<number, SvcState>();
  /** endpoint -> how many UDP services have it as a backend (a removed one's connected UDP sockets are destroyed) */
  readonly udpUsers = new Map<number | string, number>();
  readonly serviceIds = new Map<string, number>(); // service name -> id
  readonly serviceNames = new Map<number, string>(); // and back
  next: NextIds = { service: 1, frontend: 1, backend: 1, table: 1 };
  /** addresses of this node: a backend there is a sockmap candidate */
  local: ReadonlySet<string> = new Set();
  /**
   * This node's name (--node-id) when the tunnel hand-over is on: backends that are workloads of another node get
   * BE_F_TUNNEL (tunnelTargets). Undefined: no backend is handed over (the kernel connects straight to the pod).
   */
  nodeId?: string;
  /** counts changes of serviceNames */
  namesChanges = 0;
  /** retired tables and the backends waiting for them, oldest first (see Grave) */
  readonly graves: Grave[] = [];
  /** the seq of the next grave */
  nextGrave = 1;

  private state(id: number): SvcState {
    let st = this.svcs.get(id);
    if (!st) this.svcs.set(id, (st = { fronts: [], addrs: [], nums: [], udp: false }));
    return st;
  }

  /** Adoption: a backend read from the kernel. */
  adoptBackend(id: number, b: BackendValue): void {
    const st = this.state(b.service_id);
    st.addrs.push(b.addr);
    st.nums.push(id, b.weight, packed(b.port, b.flags, b.family));
    this.next.backend = Math.max(this.next.backend, id + 1);
  }

  /** Adoption: a service entry read from the kernel, with its table. */
  adoptFrontend(key: ServiceKey, value: ServiceValue, table: number[]): void {
    this.indexFrontend({ key: feKey(key.addr, key.port, key.proto), vip: key.addr, port: key.port, proto: key.proto, value, table });
    if (key.proto === PROTO.udp) this.state(value.service_id).udp = true;
    const n = this.next;
    n.service = Math.max(n.service, value.service_id + 1);
    n.frontend = Math.max(n.frontend, value.frontend_id + 1);
    n.table = Math.max(n.table, value.table_id + 1);
  }

  /** Adoption: a table id seen in the kernel. */
  adoptTableId(id: number): void {
    this.next.table = Math.max(this.next.table, id + 1);
  }

  /**
   * Adoption done: count the UDP users. A backend removed and added again while a retired table still named the old
   * one is in the kernel twice (a restart came before the reap): the newest id is the live one; the others go to a
   * grave of their own (no table names them once the unreferenced tables are gone), for the caller to reap now.
   * Returns that grave's seq, or 0.
   */
  adopted(): number {
    const doomed: Doomed[] = [];
    for (const [id, st] of this.svcs) {
      if (st.addrs.length > 1) {
        const gone = dropDuplicates(id, st);
        if (gone) doomed.push(gone);
      }
      if (st.udp) this.countUdp(st.addrs, st.nums);
    }
    if (!doomed.length) return 0;
    this.graves.push({ seq: this.nextGrave, tables: [], doomed });
    return this.nextGrave++;
  }

  private countUdp(addrs: readonly string[], nums: readonly number[]): void {
    for (let i = 0; i < addrs.length; i++) addCount(this.udpUsers, endpointKey(addrs[i]!, portOf(nums, i)), 1);
  }

  /** The kernel holds what `c`'s plan wanted: take it as the new shadow. */
  commit(c: Commit): void {
    for (const name of c.namesGone) {
      const id = this.serviceIds.get(name)!;
      this.serviceIds.delete(name);
      this.serviceNames.delete(id);
      this.namesChanges++;
    }
    for (const [name, id] of c.namesNew) {
      this.serviceIds.set(name, id);
      this.serviceNames.set(id, name);
      this.namesChanges++;
    }
    this.next = c.next;
    for (const u of c.services) {
      const st = this.state(u.id);
      st.addrs = u.addrs; st.nums = u.nums; st.udp = u.udp;
    }
    for (const id of c.emptied) {
      const st = this.svcs.get(id);
      if (st) { st.addrs = []; st.nums = []; st.udp = false; }
    }
    for (const f of c.written) this.indexFrontend(f);
    for (const f of c.deleted) {
      this.frontends.delete(f.key);
      this.unlistFront(f.value.service_id, f.key);
    }
    for (const [ep, by] of c.udp) addCount(this.udpUsers, ep, by);
    if (c.retired.length) {
      const seq = this.nextGrave++;
      this.graves.push({ seq, tables: c.retired.map(({ tableId, size, serviceId }) => ({ tableId, size, serviceId })), doomed: [] });
      for (const t of c.retired) (this.state(t.serviceId).retiring ??= []).push({ grave: seq, ids: t.ids });
    }
    for (const { grave, ...d } of c.doomed) this.graves.find((g) => g.seq === grave)!.doomed.push(d);
    this.forget(c.scope);
  }

  /** A reap (planReap(this, seq)) is done: the graves up to `seq` are gone from the kernel. */
  reaped(seq: number): void {
    const ids = new Set<number>();
    while (this.graves.length && this.graves[0]!.seq <= seq) {
      const g = this.graves.shift()!;
      for (const t of g.tables) ids.add(t.serviceId);
    }
    for (const id of ids) {
      const st = this.svcs.get(id);
      if (!st?.retiring) continue;
      const left = st.retiring.filter((r) => r.grave > seq);
      if (left.length) st.retiring = left; else delete st.retiring;
    }
    this.forget(ids);
  }

  /** Forget the service ids that hold nothing. */
  private forget(ids: Iterable<number>): void {
    for (const id of ids) {
      const st = this.svcs.get(id);
      if (st && st.fronts.length === 0 && st.addrs.length === 0 && !st.retiring) this.svcs.delete(id);
    }
  }

  private indexFrontend(f: KernelFrontend): void {
    const prev = this.frontends.get(f.key);
    if (prev) this.unlistFront(prev.value.service_id, f.key);
    this.frontends.set(f.key, f);
    this.state(f.value.service_id).fronts.push(f.key);
  }

  private unlistFront(id: number, key: string): void {
    const st = this.svcs.get(id);
    const at = st ? st.fronts.indexOf(key) : -1;
    if (at >= 0) st!.fronts.splice(at, 1);
  }
}

/** Rows of `st` whose endpoint a row with a higher id has too, out of `st`, as a Doomed (no UDP: the endpoint lives). */
function dropDuplicates(serviceId: number, st: SvcState): Doomed | undefined {
  const best = new Map<number | string, number>(); // endpoint -> row with the highest id
  for (let i = 0; i < st.addrs.length; i++) {
    const ep = endpointKey(st.addrs[i]!, portOf(st.nums, i));
    const j = best.get(ep);
    if (j === undefined || st.nums[B * i]! > st.nums[B * j]!) best.set(ep, i);
  }
  if (best.size === st.addrs.length) return undefined;
  const keep = new Set(best.values());
  const d: Doomed = { serviceId, udp: false, ids: [], addrs: [], ports: [] };
  const addrs: string[] = [], nums: number[] = [];
  for (let i = 0; i < st.addrs.length; i++) {
    if (keep.has(i)) { addrs.push(st.addrs[i]!); nums.push(st.nums[B * i]!, st.nums[B * i + 1]!, st.nums[B * i + 2]!); }
    else { d.ids.push(st.nums[B * i]!); d.addrs.push(st.addrs[i]!); d.ports.push(portOf(st.nums, i)); }
  }
  st.addrs = addrs; st.nums = nums;
  return d;
}

function addCount(m: Map<number | string, number>, key: number | string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n !== 0) m.set(key, n); else m.delete(key);
}

// ---- the plan ----

/** One service's backends in a plan: the packed state it had and the one it gets. */
interface SvcPlan {
  id: number;
  oldAddrs: readonly string[];
  oldNums: readonly number[];
  oldUdp: boolean;
  addrs: string[];
  nums: number[];
  /** endpointKey -> index in addrs, while the service has more than LINEAR backends */
  index?: Map<number | string, number>;
  /** rows of addrs/nums to write */
  writes: number[];
  udp: boolean;
}

/**
 * The operations that take the kernel from `shadow` to `model`, and the shadow to commit after them. With `changed`
 * (names of services that may differ from the last apply, including removed ones), only those services are looked
 * at: an endpoint change costs work for its service, not for the whole model. Without it, everything is compared
 * (and kernel state of services no longer in the model is removed). Reads `shadow`, changes nothing.
 */
export function planApply(shadow: Shadow, model: Model, changed?: ReadonlySet<string>): KernelPlan {
  const ops: Op[] = [];
  const next: NextIds = { ...shadow.next };
  const authz = model.authorization?.length ? compileAuthz4(model) : undefined;
  const tunnel = shadow.nodeId !== undefined ? tunnelTargets(model, shadow.nodeId, shadow.local) : undefined;

  // The scope: services to compute, and the service ids whose kernel state may be replaced or removed.
  const services = changed ? model.services.filter((s) => changed.has(s.name)) : model.services;
  const scopeIds = new Set<number>();
  if (changed) {
    for (const name of changed) {
      const id = shadow.serviceIds.get(name);
      if (id !== undefined) scopeIds.add(id);
    }
  } else {
    for (const id of shadow.svcs.keys()) scopeIds.add(id);
  }
  // A name of the scope is live when it is in the model (with `changed`, the model's services of the scope).
  const live = new Set(services.map((s) => s.name));
  const namesGone: string[] = [];
  const freed = new Set<number>();
  for (const name of changed ?? shadow.serviceIds.keys()) {
    const id = shadow.serviceIds.get(name);
    if (id !== undefined && !live.has(name)) { namesGone.push(name); freed.add(id); }
  }
  const namesNew: [string, number][] = [];
  const taken = new Set<number>();
  const serviceIdFor = (svc: Service): number => {
    let id = shadow.serviceIds.get(svc.name);
    if (id !== undefined) return id;
    // After a restart the name is not in the kernel, but its frontends are: reuse their service id.
    for (const fe of svc.frontends) {
      const k = shadow.frontends.get(feKey(fe.vip, fe.port, PROTO[fe.protocol]));
      const kid = k?.value.service_id;
      if (kid !== undefined && !taken.has(kid) && (!shadow.serviceNames.has(kid) || freed.has(kid))) { id = kid; break; }
    }
    id ??= next.service++;
    namesNew.push([svc.name, id]);
    taken.add(id);
    return id;
  };

  // Desired state of the scope, reusing the ids of (service, address, port) the kernel already has.
  const plans = new Map<number, SvcPlan>();
  const wantFrontends = new Map<string, { fe: Frontend; svc: Service; serviceId: number; table: number[] }>();
  let backendsWritten = 0;
  for (const svc of services) {
    const serviceId = serviceIdFor(svc);
    scopeIds.add(serviceId);
    const old = shadow.svcs.get(serviceId);
    const oldAddrs = old?.addrs ?? [], oldNums = old?.nums ?? [];
    const oldIndex = indexBackends(oldAddrs, oldNums);
    let udp = false;
    for (const fe of svc.frontends) if (fe.protocol === 'udp') udp = true;
    const p: SvcPlan = { id: serviceId, oldAddrs, oldNums, oldUdp: old?.udp ?? false, addrs: [], nums: [], writes: [], udp };
    plans.set(serviceId, p);
    for (const fe of svc.frontends) {
      const ids: number[] = new Array(fe.backends.length);
      for (let i = 0; i < fe.backends.length; i++) {
        const b = fe.backends[i]!;
        // A service's backend is shared by all its VIPs of one family: one id per (service, address, port).
        let k = findBackend(p.addrs, p.nums, p.index, b.address, b.port);
        if (k < 0) {
          const local = isLoopback(b.address) || shadow.local.has(b.address);
          const flags = local ? BE_F_LOCAL : (tunnel?.backend(svc, b.address, b.port) ?? 0);
          const pk = packed(b.port, flags, b.family === 4 ? 2 : 10);
          const j = findBackend(oldAddrs, oldNums, oldIndex, b.address, b.port);
          const id = j >= 0 ? oldNums[B * j]! : next.backend++;
          k = p.addrs.length;
          p.addrs.push(b.address);
          p.nums.push(id, b.weight, pk);
          if (p.index) p.index.set(endpointKey(b.address, b.port), k);
          else if (p.addrs.length > LINEAR) p.index = indexBackends(p.addrs, p.nums);
          if (j < 0 || oldNums[B * j + 1] !== b.weight || oldNums[B * j + 2] !== pk) p.writes.push(k);
        }
        ids[i] = p.nums[B * k]!;
      }
      const table = tableFor(svc, fe).map((i) => ids[i]!);
      wantFrontends.set(feKey(fe.vip, fe.port, PROTO[fe.protocol]), { fe, svc, serviceId, table });
    }
    backendsWritten += p.writes.length;
  }

  // 1. backends: new or changed, in one batch. The new state keeps copies of exactly their length: arrays grown by
  //    push keep up to half again as much room, for 10,000 services.
  const groups: BackendWrites[] = [];
  const updates: Commit['services'] = [];
  const udpDelta = new Map<number | string, number>();
  const countUdp = (addrs: readonly string[], nums: readonly number[], by: 1 | -1): void => {
    for (let i = 0; i < addrs.length; i++) addCount(udpDelta, endpointKey(addrs[i]!, portOf(nums, i)), by);
  };
  for (const p of plans.values()) {
    const addrs = p.addrs.slice(), nums = p.nums.slice();
    updates.push({ id: p.id, addrs, nums, udp: p.udp });
    if (p.writes.length) groups.push({ serviceId: p.id, addrs, nums, at: p.writes });
    if (p.oldUdp) countUdp(p.oldAddrs, p.oldNums, -1);
    if (p.udp) countUdp(addrs, nums, 1);
  }
  if (backendsWritten) ops.push({ op: 'writeBackends', groups, count: backendsWritten });

  // 2. frontends, make-before-break in three batches: every new table is written in full, then the service
  //    entries are switched to them, then the old tables are dropped. A connect() sees the old or the new table.
  const entries: { key: ServiceKey; value: ServiceValue }[] = [];
  const newTables: { tableId: number; table: number[] }[] = [];
  const retired: Commit['retired'] = [];
  const retire = (f: KernelFrontend): void => {
    retired.push({ tableId: f.value.table_id, size: f.table.length, serviceId: f.value.service_id, ids: f.table });
  };
  const written: KernelFrontend[] = [];
  let tableEntries = 0;
  for (const [key, want] of wantFrontends) {
    const cur = shadow.frontends.get(key);
    const { fe, svc, serviceId, table } = want;
    const value: ServiceValue = {
      service_id: serviceId,
      frontend_id: cur?.value.frontend_id ?? next.frontend++,
      table_id: cur?.value.table_id ?? 0,
      table_size: table.length,
      affinity_timeout_s: svc.affinityTimeoutSeconds,
      algo: ALGO[svc.algorithm],
      flags: (svc.affinityTimeoutSeconds > 0 ? SVC_F_AFFINITY : 0) | l7Flags(svc, fe) | authzFlags(authz, svc, fe),
    };
    const sameTable = cur !== undefined && cur.table.length === table.length && cur.table.every((x, i) => x === table[i]);
    if (!sameTable) {
      value.table_id = table.length ? next.table++ : 0;
      if (table.length) { newTables.push({ tableId: value.table_id, table }); tableEntries += table.length; }
    }
    const c = cur?.value;
    const sameValue = c !== undefined && sameTable && c.service_id === value.service_id && c.frontend_id === value.frontend_id &&
      c.table_id === value.table_id && c.table_size === value.table_size && c.affinity_timeout_s === value.affinity_timeout_s &&
      c.algo === value.algo && c.flags === value.flags;
    if (sameValue) continue;
    const proto = PROTO[fe.protocol];
    entries.push({ key: { addr: fe.vip, port: fe.port, proto }, value });
    written.push({ key, vip: fe.vip, port: fe.port, proto, value, table });
    if (cur && !sameTable) retire(cur);
  }
  if (tableEntries) ops.push({ op: 'writeTables', tables: newTables, count: tableEntries });
  if (entries.length) ops.push({ op: 'writeFrontends', entries });
  pushRetired(ops, retired, 0);

  // 3. frontends of the scope that went away
  const deleted: KernelFrontend[] = [];
  const statsGone: number[] = [];
  const switched = retired.length;
  for (const id of scopeIds) {
    const st = shadow.svcs.get(id);
    for (const key of st?.fronts ?? []) {
      if (wantFrontends.has(key)) continue;
      const cur = shadow.frontends.get(key)!;
      deleted.push(cur);
      retire(cur);
    }
    // (a service id that holds nothing but retired tables went away before: its stats are gone)
    if (!plans.has(id) && !(st && st.fronts.length === 0 && st.addrs.length === 0)) statsGone.push(id);
  }
  if (deleted.length) ops.push({ op: 'deleteFrontends', keys: deleted.map((f) => ({ addr: f.vip, port: f.port, proto: f.proto })) });
  pushRetired(ops, retired, switched);
  if (statsGone.length) ops.push({ op: 'deleteServiceStats', serviceIds: statsGone });
  // Keep the real ones (a table of size 0 is none).
  const retiredReal = retired.filter((t) => t.tableId !== 0 && t.size !== 0);
  const grave = retiredReal.length ? shadow.nextGrave : 0;

  // 4. backends of the scope that no table references any more: of the services computed, those their new state
  //    lacks; of the services that went away, all. One a retired table still names (retired now, or earlier and in
  //    its grace time) waits in the grave of the last such table.
  const deleteIds: number[] = [];
  const destroy: { addr: string; port: number }[] = [];
  const emptied: number[] = [];
  const doomed: Commit['doomed'] = [];
  let backendsRetiring = 0;
  for (const id of scopeIds) {
    const p = plans.get(id);
    let addrs: readonly string[], nums: readonly number[], udp: boolean;
    if (p) {
      addrs = p.oldAddrs; nums = p.oldNums; udp = p.oldUdp;
    } else {
      const st = shadow.svcs.get(id);
      if (!st) continue;
      addrs = st.addrs; nums = st.nums; udp = st.udp;
      if (udp) countUdp(addrs, nums, -1);
      emptied.push(id);
    }
    const index = p ? (p.index ?? indexBackends(p.addrs, p.nums)) : undefined;
    let namedBy: Map<number, number> | undefined; // backend id -> grave of the last retired table naming it
    const groups = new Map<number, Doomed & { grave: number }>();
    for (let i = 0; i < addrs.length; i++) {
      const addr = addrs[i]!, port = portOf(nums, i);
      if (p && findBackend(p.addrs, p.nums, index, addr, port) >= 0) continue;
      namedBy ??= retiredNames(shadow, id, grave);
      const g = namedBy.get(nums[B * i]!);
      if (g !== undefined) {
        let d = groups.get(g);
        if (!d) groups.set(g, (d = { grave: g, serviceId: id, udp, ids: [], addrs: [], ports: [] }));
        d.ids.push(nums[B * i]!); d.addrs.push(addr); d.ports.push(port);
        backendsRetiring++;
        continue;
      }
      deleteIds.push(nums[B * i]!);
      // Connected UDP sockets would keep sending to the removed backend forever: destroy them so their owners
      // reconnect (and get balanced again). Only for a service with a UDP frontend (no other can have balanced a
      // UDP socket to it), and not while another such service still uses the same address and port.
      if (udp) {
        const ep = endpointKey(addr, port);
        if ((shadow.udpUsers.get(ep) ?? 0) + (udpDelta.get(ep) ?? 0) === 0) destroy.push({ addr, port });
      }
    }
    for (const d of groups.values()) doomed.push(d);
  }
  if (deleteIds.length) ops.push({ op: 'deleteBackends', ids: deleteIds });
  if (destroy.length) ops.push({ op: 'destroyUdp', endpoints: destroy });

  return {
    ops,
    commit: {
      namesGone, namesNew, next, services: updates, emptied, written, deleted, udp: udpDelta, scope: [...scopeIds],
      retired: retiredReal, doomed,
    },
    backendsWritten,
    backendsDeleted: deleteIds.length,
    backendsRetiring,
    frontendsWritten: entries.length,
    frontendsDeleted: deleted.length,
  };
}

/** The retireTables op of tables[from ..] (those of size 0 are none). */
function pushRetired(ops: Op[], tables: readonly RetiredTable[], from: number): void {
  const real: TableRef[] = [];
  for (let i = from; i < tables.length; i++) {
    const t = tables[i]!;
    if (t.tableId !== 0 && t.size !== 0) real.push({ tableId: t.tableId, size: t.size });
  }
  if (real.length) ops.push({ op: 'retireTables', tables: real });
}

/**
 * Backend ids of service `id` that a retired table names, with the grave of the last one: its tables retired
 * earlier and still in their grace time, and the ones of its frontends (every table of theirs that names a removed
 * backend is retired by this apply, into grave `now`).
 */
function retiredNames(shadow: Shadow, id: number, now: number): Map<number, number> {
  const m = new Map<number, number>();
  const st = shadow.svcs.get(id);
  for (const r of st?.retiring ?? []) for (const b of r.ids) m.set(b, r.grave);
  if (now) for (const key of st?.fronts ?? []) for (const b of shadow.frontends.get(key)!.table) m.set(b, now);
  return m;
}

/** The operations of a reap: what the graves up to `seq` hold, tables first. */
export interface ReapPlan {
  ops: Op[];
  seq: number;
  tables: number;
  backendsDeleted: number;
}

/**
 * Delete the graves up to `seq` (their grace time is over): their tables, then their backends, then the connected
 * UDP sockets of those that no service with a UDP frontend has as a backend now (one removed and added again in the
 * grace time lives on under a new id: its sockets stay). Commit with Shadow.reaped(seq). Reads `shadow` only.
 */
export function planReap(shadow: Shadow, seq: number): ReapPlan {
  const tables: TableRef[] = [];
  const ids: number[] = [];
  const destroy: { addr: string; port: number }[] = [];
  const seen = new Set<number | string>();
  for (const g of shadow.graves) {
    if (g.seq > seq) break;
    for (const t of g.tables) tables.push({ tableId: t.tableId, size: t.size });
    for (const d of g.doomed) {
      for (let i = 0; i < d.ids.length; i++) {
        ids.push(d.ids[i]!);
        const ep = endpointKey(d.addrs[i]!, d.ports[i]!);
        if (d.udp && !shadow.udpUsers.has(ep) && !seen.has(ep)) { seen.add(ep); destroy.push({ addr: d.addrs[i]!, port: d.ports[i]! }); }
      }
    }
  }
  const ops: Op[] = [];
  if (tables.length) ops.push({ op: 'deleteTables', tables });
  if (ids.length) ops.push({ op: 'deleteBackends', ids });
  if (destroy.length) ops.push({ op: 'destroyUdp', endpoints: destroy });
  return { ops, seq, tables: tables.length, backendsDeleted: ids.length };
}
