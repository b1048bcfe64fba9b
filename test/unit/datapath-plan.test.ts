// The kernel plan (agent/datapath/plan.ts) and its executor, against an in-memory fake of the BPF maps: random model
// sequences (fast-check) with the make-before-break invariants checked after every single syscall, the kernel compared
// with the model after every apply, adoption replayed, and scoped applies compared with full ones; then orderings by
// example.
import t from 'tap';
import fc from 'fast-check';
import {
  ALGO, BE_F_LOCAL, PROTO, SVC_F_AFFINITY, SVC_F_FAIL_OPEN, SVC_F_L7, decodeBackend, decodeService, decodeServiceKey,
  type BackendValue, type ServiceValue,
} from '../../agent/datapath/abi.js';
import { Maps, MAP_NAMES, type MapName } from '../../agent/datapath/datapath.js';
import type { Native } from '../../agent/datapath/native.js';
import { Reconciler } from '../../agent/datapath/reconcile.js';
import { endpointKey, planApply, Shadow, type Op } from '../../agent/datapath/plan.js';
import { ipv4Value } from '../../agent/model/address.js';
import { tableFor } from '../../agent/model/tables.js';
import type { Algorithm, Backend, Frontend, HttpPolicy, Model, Service } from '../../agent/model/types.js';

// ---- the fake kernel ----

interface Svc { key: string; vip: string; port: number; proto: number; value: ServiceValue }

/** The BPF maps the reconciler uses, in memory, byte for byte; `check` runs after every syscall that changes one. */
class FakeKernel {
  readonly fds = Object.fromEntries(MAP_NAMES.map((m, i) => [m, 100 + i])) as Record<MapName, number>;
  readonly data = new Map<number, Map<string, Buffer>>(MAP_NAMES.map((_, i) => [100 + i, new Map()]));
  /** every syscall, as 'map op' */
  readonly trace: string[] = [];
  /** tables a service entry pointed at once and no longer does: they must never be pointed at again */
  private readonly dropped = new Set<number>();
  private referenced = new Set<number>();
  failAt = -1;
  /**
   * Frontends in the model before an apply and after it (key -> the endpoints 'addr|port' either model gives it):
   * at every instant of the apply each is in the kernel and picks only one of those endpoints. A frontend deleted
   * and written again, even within one apply, is a window of connects the kernel does not translate.
   */
  continuing = new Map<string, Set<string>>();

  constructor(private readonly invariants = true) {}

  private map(fd: number): Map<string, Buffer> { return this.data.get(fd)!; }
  private name(fd: number): MapName { return MAP_NAMES[fd - 100]!; }

  /** Before a change: the injected failure (the syscall then does nothing), and no write into a table in use. */
  private changing(fd: number, op: string, key: Buffer): void {
    if (this.failAt >= 0 && this.trace.length + 1 >= this.failAt) throw new Error('injected kernel error');
    this.trace.push(`${this.name(fd)} ${op}`);
    if (this.name(fd) === 'sm_tables' && op === 'update' && this.referenced.has(key.readUInt32LE(0))) {
      throw new Error(`table ${key.readUInt32LE(0)} written while a service entry points at it`);
    }
  }

  readonly native = {
    mapLookup: (fd: number, key: Buffer): Buffer | null => this.map(fd).get(key.toString('hex')) ?? null,
    mapUpdate: (fd: number, key: Buffer, value: Buffer): void => {
      this.changing(fd, 'update', key);
      this.map(fd).set(key.toString('hex'), Buffer.from(value));
      if (this.invariants) this.check();
    },
    mapDelete: (fd: number, key: Buffer): boolean => {
      if (!this.map(fd).has(key.toString('hex'))) return false;
      this.changing(fd, 'delete', key);
      this.map(fd).delete(key.toString('hex'));
      if (this.invariants) this.check();
      return true;
    },
    // Not atomic in the kernel either: entry by entry, each one checked.
    mapUpdateBatch: (fd: number, keys: Buffer, values: Buffer, count: number): void => {
      const ks = keys.length / count, vs = values.length / count;
      for (let i = 0; i < count; i++) this.native.mapUpdate(fd, keys.subarray(ks * i, ks * (i + 1)), values.subarray(vs * i, vs * (i + 1)));
    },
    mapDump: (fd: number) => {
      const m = this.map(fd);
      return { keys: [...m.keys()].map((k) => Buffer.from(k, 'hex')), values: [...m.values()].map((v) => Buffer.from(v)) };
    },
    mapKeys: (fd: number): Buffer[] => [...this.map(fd).keys()].map((k) => Buffer.from(k, 'hex')),
  };

  /** A new agent may reuse the ids of tables that are gone (it starts from the highest id in the kernel). */
  restarted(): void { this.dropped.clear(); }

  maps(): Maps { return new Maps(this.fds, this.native as unknown as Native); }

  services(): Svc[] {
    return [...this.map(this.fds.sm_services)].map(([k, v]) => {
      const key = decodeServiceKey(Buffer.from(k, 'hex'));
      return { key: `${key.addr}|${key.port}|${key.proto}`, vip: key.addr, port: key.port, proto: key.proto, value: decodeService(v) };
    });
  }
  backends(): Map<number, BackendValue> {
    return new Map([...this.map(this.fds.sm_backends)].map(([k, v]) => [Buffer.from(k, 'hex').readUInt32LE(0), decodeBackend(v)]));
  }
  /** table id -> index -> backend id */
  tables(): Map<number, Map<number, number>> {
    const out = new Map<number, Map<number, number>>();
    for (const [k, v] of this.map(this.fds.sm_tables)) {
      const key = Buffer.from(k, 'hex');
      const id = key.readUInt32LE(0);
      if (!out.has(id)) out.set(id, new Map());
      out.get(id)!.set(key.readUInt32LE(4), v.readUInt32LE(0));
    }
    return out;
  }
  /** The table a service entry points at, as backend ids. */
  table(v: ServiceValue): number[] {
    const t = this.tables().get(v.table_id);
    return Array.from({ length: v.table_size }, (_, i) => t?.get(i) ?? -1);
  }

  /**
   * What must hold at every instant: every service entry points at a complete table (or none, with size 0) whose
   * every entry names an existing backend of the same service; a table no entry points at any more is never pointed
   * at again (retired means gone).
   */
  check(): void {
    const backends = this.backends();
    const tables = this.tables();
    const referenced = new Set<number>();
    const services = this.services();
    const present = new Set(services.map((s) => s.key));
    for (const key of this.continuing.keys()) if (!present.has(key)) throw new Error(`${key}: in the model before and after, missing from the kernel mid-apply`);
    for (const s of services) {
      const v = s.value;
      const allowed = this.continuing.get(s.key);
      if (allowed && v.table_size !== 0) {
        const t = tables.get(v.table_id);
        for (const b of t?.values() ?? []) {
          const be = backends.get(b);
          if (be && !allowed.has(`${be.addr}|${be.port}`)) throw new Error(`${s.key}: picks ${be.addr}:${be.port} mid-apply, which neither model gives it`);
        }
      }
      if (v.table_size === 0) {
        if (v.table_id !== 0) throw new Error(`${s.key}: empty table under id ${v.table_id}`);
        continue;
      }
      referenced.add(v.table_id);
      if (this.dropped.has(v.table_id)) throw new Error(`${s.key}: points at retired table ${v.table_id}`);
      const t = tables.get(v.table_id);
      if (!t) throw new Error(`${s.key}: points at missing table ${v.table_id}`);
      for (let i = 0; i < v.table_size; i++) {
        const b = t.get(i);
        if (b === undefined) throw new Error(`${s.key}: table ${v.table_id} incomplete (no entry ${i} of ${v.table_size})`);
        const be = backends.get(b);
        if (!be) throw new Error(`${s.key}: table ${v.table_id}[${i}] names missing backend ${b}`);
        if (be.service_id !== v.service_id) throw new Error(`${s.key}: backend ${b} is of service ${be.service_id}, not ${v.service_id}`);
      }
    }
    // Every table that exists, retired ones in their grace time too, names only existing backends of one service: a
    // connect() that read a service entry just before it was switched away may still be reading its old table.
    for (const [id, t] of tables) {
      let service = -1;
      for (const [i, b] of t) {
        const be = backends.get(b);
        if (!be) throw new Error(`table ${id}[${i}] names missing backend ${b}`);
        if (service >= 0 && be.service_id !== service) throw new Error(`table ${id} names backends of services ${service} and ${be.service_id}`);
        service = be.service_id;
      }
    }
    for (const id of this.referenced) if (!referenced.has(id)) this.dropped.add(id);
    this.referenced = referenced;
  }

  /** Everything, comparable. */
  dump(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const [fd, m] of this.data) out[this.name(fd)] = [...m].map(([k, v]) => `${k}=${v.toString('hex')}`).sort();
    return out;
  }
}

// ---- models ----

interface BackendSpec { v6: boolean; host: number; local: boolean; port: number; weight: number }
interface FrontendSpec { v6: boolean; vip: number; port: number; udp: boolean }
interface ServiceSpec {
  algorithm: Algorithm; affinity: number; l7?: 'open' | 'closed'; maglev: number;
  frontends: FrontendSpec[]; backends: BackendSpec[];
}
/** slot i = service `s${i}` (absent: null) */
type ModelSpec = (ServiceSpec | null)[];

const SLOTS = 6;
const backendArb: fc.Arbitrary<BackendSpec> = fc.record({
  v6: fc.boolean(), host: fc.integer({ min: 1, max: 6 }), local: fc.boolean(), port: fc.constantFrom(80, 8080),
  weight: fc.integer({ min: 0, max: 4 }),
});
const serviceArb: fc.Arbitrary<ServiceSpec> = fc.record({
  algorithm: fc.constantFrom<Algorithm>('random', 'weighted', 'maglev'),
  affinity: fc.constantFrom(0, 0, 30),
  l7: fc.constantFrom<('open' | 'closed' | undefined)>(undefined, undefined, 'open', 'closed'),
  maglev: fc.constantFrom(7, 13),
  frontends: fc.array(fc.record({ v6: fc.boolean(), vip: fc.integer({ min: 1, max: 4 }), port: fc.constantFrom(80, 53), udp: fc.boolean() }), { maxLength: 3 }),
  backends: fc.array(backendArb, { maxLength: 6 }),
}, { requiredKeys: ['algorithm', 'affinity', 'maglev', 'frontends', 'backends'] });
const modelArb: fc.Arbitrary<ModelSpec> = fc.array(fc.option(serviceArb, { freq: 3 }), { minLength: SLOTS, maxLength: SLOTS });

function backendOf(b: BackendSpec): Backend {
  const address = b.v6 ? (b.local ? (b.host === 1 ? '::1' : `fd02::${b.host}`) : `fd01::${b.host}`) : `${b.local ? '127.1.0' : '10.0.0'}.${b.host}`;
  return { address, family: b.v6 ? 6 : 4, port: b.port, weight: b.weight };
}

/** A valid model: frontend keys unique over all services, a frontend has its service's backends of its family. */
function build(spec: ModelSpec): Model {
  const seen = new Set<string>();
  const services: Service[] = [];
  spec.forEach((s, i) => {
    if (!s) return;
    const eps = new Set<string>();
    const backends: Backend[] = [];
    for (const b of s.backends.map(backendOf)) {
      if (eps.has(`${b.address}|${b.port}`)) continue;
      eps.add(`${b.address}|${b.port}`);
      backends.push(b);
    }
    const frontends: Frontend[] = [];
    for (const f of s.frontends) {
      const protocol = f.udp ? 'udp' : 'tcp';
      const vip = f.v6 ? `fd00::${f.vip}` : `127.100.0.${f.vip}`;
      const key = `${vip}|${f.port}|${protocol}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const family = f.v6 ? 6 : 4;
      frontends.push({ vip, family, port: f.port, protocol, backends: backends.filter((b) => b.family === family) });
    }
    services.push({
      name: `s${i}`, algorithm: s.algorithm, affinityTimeoutSeconds: s.affinity, maglevTableSize: s.maglev, frontends,
      ...(s.l7 ? { http: { failMode: s.l7 } as HttpPolicy } : {}),
    });
  });
  return { services };
}

/** Frontends of both models: key -> the endpoints either model gives it (FakeKernel.continuing). */
function continuing(a: Model, b: Model): Map<string, Set<string>> {
  const eps = (m: Model) => {
    const out = new Map<string, string[]>();
    for (const svc of m.services) {
      for (const fe of svc.frontends) out.set(`${fe.vip}|${fe.port}|${PROTO[fe.protocol]}`, fe.backends.map((x) => `${x.address}|${x.port}`));
    }
    return out;
  };
  const x = eps(a), y = eps(b);
  const out = new Map<string, Set<string>>();
  for (const [k, v] of x) if (y.has(k)) out.set(k, new Set([...v, ...y.get(k)!]));
  return out;
}

/** Names whose service differs between two models (present in one only, or changed). */
function changedNames(a: Model, b: Model): Set<string> {
  const byName = (m: Model) => new Map(m.services.map((s) => [s.name, JSON.stringify(s)]));
  const x = byName(a), y = byName(b);
  return new Set([...x.keys(), ...y.keys()].filter((n) => x.get(n) !== y.get(n)));
}

// ---- the kernel against the model ----

const isLocal = (addr: string) => addr === '::1' || addr.startsWith('127.');

/**
 * The fake kernel holds exactly what `model` says (ids aside), and no table nothing points at. With `retiring`, tables
 * nothing points at may be there (retired, in their grace time), and backends that only they name.
 */
function sameAsModel(k: FakeKernel, model: Model, retiring = false): void {
  const svcs = new Map(k.services().map((s) => [s.key, s]));
  const backends = k.backends();
  const want = new Set<string>();
  const idOf = new Map<string, number>();
  const frontendIds = new Set<number>();
  const usedBackends = new Set<number>();
  const referenced = new Set<number>();
  let distinct = 0;
  for (const svc of model.services) {
    const eps = new Set<string>();
    for (const fe of svc.frontends) {
      for (const b of fe.backends) eps.add(`${b.address}|${b.port}`);
      const key = `${fe.vip}|${fe.port}|${PROTO[fe.protocol]}`;
      want.add(key);
      const got = svcs.get(key);
      if (!got) throw new Error(`${svc.name}: no service entry for ${key}`);
      const v = got.value;
      if (idOf.has(svc.name) && idOf.get(svc.name) !== v.service_id) throw new Error(`${svc.name}: frontends under two service ids`);
      idOf.set(svc.name, v.service_id);
      if (frontendIds.has(v.frontend_id)) throw new Error(`${key}: frontend id ${v.frontend_id} twice`);
      frontendIds.add(v.frontend_id);
      const flags = (svc.affinityTimeoutSeconds > 0 ? SVC_F_AFFINITY : 0) |
        (svc.http && fe.protocol === 'tcp' ? SVC_F_L7 | (svc.http.failMode === 'open' ? SVC_F_FAIL_OPEN : 0) : 0);
      if (v.algo !== ALGO[svc.algorithm] || v.flags !== flags || v.affinity_timeout_s !== svc.affinityTimeoutSeconds) {
        throw new Error(`${key}: service value ${JSON.stringify(v)} is not the model's`);
      }
      const table = tableFor(svc, fe);
      const ids = k.table(v);
      if (ids.length !== table.length) throw new Error(`${key}: table of ${ids.length}, want ${table.length}`);
      if (v.table_size) referenced.add(v.table_id);
      ids.forEach((id, i) => {
        const be = backends.get(id), mb = fe.backends[table[i]!]!;
        if (!be || be.addr !== mb.address || be.port !== mb.port || be.weight !== mb.weight || be.family !== (mb.family === 4 ? 2 : 10) ||
          be.flags !== (isLocal(mb.address) ? BE_F_LOCAL : 0) || be.service_id !== v.service_id) {
          throw new Error(`${key}[${i}]: backend ${id} ${JSON.stringify(be)}, want ${JSON.stringify(mb)}`);
        }
      });
      // Every backend of the frontend is in the kernel, drained ones too (no table entry names them).
      for (const mb of fe.backends) {
        // (the newest: one removed and added again is there twice until the old one's retired table is reaped)
        const found = [...backends].filter(([, be]) => be.service_id === v.service_id && be.addr === mb.address && be.port === mb.port)
          .sort((x, y) => y[0] - x[0])[0];
        if (!found || found[1].weight !== mb.weight) throw new Error(`${key}: backend ${mb.address}:${mb.port} missing or stale`);
        usedBackends.add(found[0]);
      }
    }
    distinct += eps.size;
  }
  if (new Set(idOf.values()).size !== idOf.size) throw new Error('two services share a service id');
  for (const key of svcs.keys()) if (!want.has(key)) throw new Error(`stale service entry ${key}`);
  const inRetired = new Set<number>();
  for (const [id, entries] of k.tables()) if (retiring && !referenced.has(id)) for (const b of entries.values()) inRetired.add(b);
  const extra = [...backends.keys()].filter((id) => !usedBackends.has(id) && !inRetired.has(id));
  if (extra.length || usedBackends.size !== distinct) throw new Error(`${backends.size} backends in the kernel (${extra} named by no retired table), the model has ${distinct}`);
  for (const [id, entries] of k.tables()) {
    if (!referenced.has(id)) {
      if (retiring) continue;
      throw new Error(`table ${id} is left with nothing pointing at it`);
    }
    const size = [...svcs.values()].find((s) => s.value.table_id === id)!.value.table_size;
    if (entries.size !== size) throw new Error(`table ${id} has ${entries.size} entries, its service entry says ${size}`);
  }
}

/** The kernel's services by id: whether one has a UDP frontend, and its backends' endpoints. */
function udpView(k: FakeKernel): Map<number, { udp: boolean; eps: Set<string> }> {
  const out = new Map<number, { udp: boolean; eps: Set<string> }>();
  const get = (id: number) => out.get(id) ?? out.set(id, { udp: false, eps: new Set() }).get(id)!;
  for (const s of k.services()) if (s.proto === PROTO.udp) get(s.value.service_id).udp = true;
  for (const b of k.backends().values()) get(b.service_id).eps.add(`${b.addr}|${b.port}`);
  return out;
}

/**
 * Endpoints whose connected UDP sockets must be destroyed from kernel state `a` to `b`: removed backends of a service
 * that had a UDP frontend, that no service with a UDP frontend has as a backend any more.
 */
function udpGone(a: Map<number, { udp: boolean; eps: Set<string> }>, b: Map<number, { udp: boolean; eps: Set<string> }>): string[] {
  const stillUdp = new Set([...b.values()].filter((s) => s.udp).flatMap((s) => [...s.eps]));
  const out = new Set<string>();
  for (const [id, s] of a) {
    if (!s.udp) continue;
    for (const ep of s.eps) if (!b.get(id)?.eps.has(ep) && !stillUdp.has(ep)) out.add(ep);
  }
  return [...out].sort();
}

// ---- the properties ----

type Step =
  | { kind: 'model'; spec: ModelSpec }
  | { kind: 'weight'; svc: number; be: number; weight: number }
  | { kind: 'drop'; svc: number; be: number }
  | { kind: 'add'; svc: number; backend: BackendSpec }
  | { kind: 'restart' };

const stepArb: fc.Arbitrary<{ step: Step; extra: number[] }> = fc.record({
  step: fc.oneof(
    { arbitrary: modelArb.map((spec): Step => ({ kind: 'model', spec })), weight: 3 },
    { arbitrary: fc.record({ svc: fc.nat(SLOTS - 1), be: fc.nat(5), weight: fc.integer({ min: 0, max: 4 }) }).map((x): Step => ({ kind: 'weight', ...x })), weight: 2 },
    { arbitrary: fc.record({ svc: fc.nat(SLOTS - 1), be: fc.nat(5) }).map((x): Step => ({ kind: 'drop', ...x })), weight: 2 },
    { arbitrary: fc.record({ svc: fc.nat(SLOTS - 1), backend: backendArb }).map((x): Step => ({ kind: 'add', ...x })), weight: 2 },
    { arbitrary: fc.constant<Step>({ kind: 'restart' }), weight: 1 },
  ),
  // names outside the change added to the scope: a wider scope changes nothing
  extra: fc.array(fc.nat(SLOTS), { maxLength: 2 }),
});

function next(spec: ModelSpec, step: Step): ModelSpec {
  if (step.kind === 'model') return step.spec;
  if (step.kind === 'restart') return spec;
  const out = spec.map((s) => (s ? { ...s, backends: [...s.backends] } : s));
  const s = out[step.svc];
  if (!s) return out;
  if (step.kind === 'add') s.backends.push(step.backend);
  else if (s.backends.length === 0) return out;
  else if (step.kind === 'drop') s.backends.splice(step.be % s.backends.length, 1);
  else s.backends[step.be % s.backends.length] = { ...s.backends[step.be % s.backends.length]!, weight: step.weight };
  return out;
}

/** One agent: a reconciler over a fake kernel, applying scoped (the agent's endpoint path) or always in full. */
class Agent {
  readonly kernel = new FakeKernel();
  destroyed: string[] = [];
  rec: Reconciler;
  needFull = true;
  /** the reconciler's clock (with a grace time: it reaps when the test says, on this clock) */
  clock = 0;
  /** `grace`: the retired tables' grace time, on `clock`; 0: reaped at the end of each apply */
  constructor(readonly scoped: boolean, readonly grace = 0) { this.rec = this.fresh(); }
  fresh(): Reconciler {
    return new Reconciler(this.kernel.maps(), this.kernel.native as unknown as Native, {
      retireMs: this.grace,
      destroyUdp: (addr, port) => { this.destroyed.push(`${addr}|${port}`); return 1; },
      ...(this.grace ? { now: () => this.clock } : {}),
    });
  }
  /** Time passes; the graves due are reaped (what the timer does). */
  reap(ms: number): void {
    this.destroyed = [];
    this.clock += ms;
    const r = this.rec.reap();
    if (r.error) throw new Error(r.error);
    if (r.udpSocketsDestroyed !== this.destroyed.length) throw new Error('udpSocketsDestroyed miscounted in a reap');
  }
  /** A new agent adopting the kernel; `strict`: the kernel was consistent, adopting it changes nothing. */
  restart(strict = true): void {
    this.rec = this.fresh();
    this.kernel.restarted();
    const before = this.kernel.trace.length;
    this.rec.adopt();
    if (strict && this.kernel.trace.length !== before) throw new Error(`adopt changed the kernel: ${this.kernel.trace.slice(before).join(', ')}`);
    this.needFull = true;
  }
  apply(model: Model, changed: Set<string>): void {
    this.destroyed = [];
    const scope = this.scoped && !this.needFull ? changed : undefined;
    // Pure: planning twice gives the same plan, and planning alone changes nothing.
    const version = this.rec.namesVersion();
    const p1 = this.rec.plan(model, scope), p2 = this.rec.plan(model, scope);
    if (JSON.stringify(p1.ops) !== JSON.stringify(p2.ops)) throw new Error('two plans of the same apply differ');
    if (this.rec.namesVersion() !== version) throw new Error('planning changed the names');
    const res = this.rec.apply(model, scope);
    this.needFull = false;
    if (res.udpSocketsDestroyed !== this.destroyed.length) throw new Error('udpSocketsDestroyed miscounted');
    if (res.backendsDeleted + res.backendsRetiring < p1.backendsDeleted + p1.backendsRetiring) throw new Error('removed backends miscounted');
    this.clock += 1;
  }
}

t.test('random model sequences: invariants after every syscall, kernel == model, adoption replays to nothing, scoped == full', (t) => {
  fc.assert(
    fc.property(fc.array(stepArb, { minLength: 1, maxLength: 10 }), (steps) => {
      const scoped = new Agent(true), full = new Agent(false);
      let spec: ModelSpec = new Array<null>(SLOTS).fill(null);
      let model = build(spec);
      for (const { step, extra } of steps) {
        if (step.kind === 'restart') { scoped.restart(); full.restart(); continue; }
        spec = next(spec, step);
        const m = build(spec);
        const changed = changedNames(model, m);
        for (const i of extra) changed.add(`s${i}`);
        const before = udpView(scoped.kernel);
        scoped.kernel.continuing = full.kernel.continuing = continuing(model, m);
        scoped.apply(m, changed);
        full.apply(m, changed);
        scoped.kernel.continuing = full.kernel.continuing = new Map();
        sameAsModel(scoped.kernel, m);
        sameAsModel(full.kernel, m);
        const a = scoped.kernel.dump(), b = full.kernel.dump();
        if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`scoped and full applies left different kernels:\n${JSON.stringify(a)}\n${JSON.stringify(b)}`);
        const gone = udpGone(before, udpView(scoped.kernel));
        for (const ag of [scoped, full]) {
          const got = [...new Set(ag.destroyed)].sort();
          if (JSON.stringify(got) !== JSON.stringify(gone)) throw new Error(`UDP sockets destroyed for ${got}, want ${gone}`);
        }
        // A restarted agent adopting this kernel has nothing to do for the same model.
        const adopter = new Reconciler(scoped.kernel.maps(), scoped.kernel.native as unknown as Native, { retireMs: 0 });
        const mark = scoped.kernel.trace.length;
        adopter.adopt();
        if (scoped.kernel.trace.length !== mark) throw new Error('adopt changed a consistent kernel');
        const replay = adopter.plan(m);
        if (replay.ops.length) throw new Error(`replay on the adopted kernel: ${JSON.stringify(replay.ops)}`);
        model = m;
      }
    }),
    { numRuns: 300 },
  );
  t.pass('300 random sequences');
  t.end();
});

// ---- with a grace time: retired tables and the backends only they name, reaped at random points ----

/** Endpoints of the services with a UDP frontend: their connected UDP sockets must stay. */
function udpLive(m: Model): Set<string> {
  const out = new Set<string>();
  for (const s of m.services) {
    if (!s.frontends.some((f) => f.protocol === 'udp')) continue;
    for (const f of s.frontends) for (const b of f.backends) out.add(`${b.address}|${b.port}`);
  }
  return out;
}

/**
 * Endpoints removed from a service with a UDP frontend (in `a`); a service is its kernel id (`ids*`: id -> name; a
 * service renamed keeps its id). `owed`: those no UDP service has in `b` (their connected UDP sockets must be
 * destroyed); `allowed`: all of them, also those another UDP service still has: sockets balanced to such an endpoint
 * through the removed one stay while it is live, and may be destroyed later, once no UDP service has it any more (the
 * removed backend waits in its retired table's grave, and the reap destroys them if the endpoint lost its last UDP
 * service meanwhile).
 */
function udpRemoved(a: Model, idsA: ReadonlyMap<number, string>, b: Model, idsB: ReadonlyMap<number, string>): { owed: string[]; allowed: string[] } {
  const live = udpLive(b);
  const eps = (m: Model, name: string | undefined) => new Set(m.services.find((s) => s.name === name)?.frontends.flatMap((f) => f.backends.map((x) => `${x.address}|${x.port}`)));
  const owed: string[] = [], allowed: string[] = [];
  for (const [id, name] of idsA) {
    if (!a.services.find((s) => s.name === name)?.frontends.some((f) => f.protocol === 'udp')) continue;
    const now = eps(b, idsB.get(id));
    for (const ep of eps(a, name)) {
      if (now.has(ep)) continue;
      allowed.push(ep);
      if (!live.has(ep)) owed.push(ep);
    }
  }
  return { owed, allowed };
}

type GraceStep = { kind: 'apply'; step: { step: Step; extra: number[] } } | { kind: 'reap'; ms: number } | { kind: 'restart' };

const graceStepArb: fc.Arbitrary<GraceStep> = fc.oneof(
  { arbitrary: stepArb.map((step): GraceStep => ({ kind: 'apply', step })), weight: 5 },
  { arbitrary: fc.integer({ min: 0, max: 4 }).map((ms): GraceStep => ({ kind: 'reap', ms })), weight: 3 },
  { arbitrary: fc.constant<GraceStep>({ kind: 'restart' }), weight: 1 },
);

t.test('with a grace time, reaps and restarts at random points: every table that exists names existing backends', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 3 }), fc.array(graceStepArb, { minLength: 1, maxLength: 14 }), (grace, steps) => {
      const scoped = new Agent(true, grace), full = new Agent(false, grace);
      let spec: ModelSpec = new Array<null>(SLOTS).fill(null);
      let model = build(spec);
      // endpoints whose UDP sockets are owed a destroy (removed from a UDP service, in no UDP service now), and all
      // that ever were
      const owed = [new Set<string>(), new Set<string>()], ever = new Set<string>();
      const paid = (i: number, ag: Agent) => {
        const live = udpLive(model);
        for (const ep of ag.destroyed) {
          if (live.has(ep)) throw new Error(`UDP sockets of ${ep} destroyed while a UDP service has it`);
          if (!ever.has(ep)) throw new Error(`UDP sockets of ${ep} destroyed, never removed`);
          owed[i]!.delete(ep);
        }
        if (ag.rec.pending() === 0 && owed[i]!.size) throw new Error(`nothing pending, UDP sockets of ${[...owed[i]!]} never destroyed`);
      };
      for (const st of steps) {
        if (st.kind === 'restart') {
          // A restart in the grace time drops the retired tables (adopt); the backends only they named are deleted by
          // the next (full) apply. Sockets of one whose service lost its UDP frontend meanwhile are not destroyed
          // (adopt cannot tell it had one): owed no more; and sockets of one whose service gained a UDP frontend
          // meanwhile are (adopt judges by the frontends it finds).
          for (const [i, ag] of [scoped, full].entries()) {
            if (ag.rec.pending()) {
              owed[i]!.clear();
              for (const be of ag.kernel.backends().values()) ever.add(`${be.addr}|${be.port}`);
            }
            ag.restart(ag.rec.pending() === 0);
          }
          continue;
        }
        if (st.kind === 'reap') {
          for (const [i, ag] of [scoped, full].entries()) { ag.reap(st.ms); paid(i, ag); }
        } else {
          const { step, extra } = st.step;
          if (step.kind === 'restart') continue;
          spec = next(spec, step);
          const m = build(spec);
          const changed = changedNames(model, m);
          for (const i of extra) changed.add(`s${i}`);
          const prev = model;
          model = m;
          for (const [i, ag] of [scoped, full].entries()) {
            // (after a restart the reconciler knows no names yet: the kernel's frontends say which service is which)
            const byKey = new Map(ag.kernel.services().map((x) => [x.key, x.value.service_id]));
            const idsA = new Map(prev.services.flatMap((x) => x.frontends.slice(0, 1).map((f): [number, string] =>
              [byKey.get(`${f.vip}|${f.port}|${PROTO[f.protocol]}`)!, x.name])));
            ag.kernel.continuing = continuing(prev, m);
            ag.apply(m, changed);
            ag.kernel.continuing = new Map();
            const removed = udpRemoved(prev, idsA, m, ag.rec.names());
            for (const ep of removed.allowed) ever.add(ep);
            for (const ep of removed.owed) owed[i]!.add(ep);
            for (const ep of udpLive(m)) owed[i]!.delete(ep);
            paid(i, ag);
          }
        }
        // (a restarted agent's kernel is the model again after its first apply, a full one)
        if (!scoped.needFull) sameAsModel(scoped.kernel, model, true);
        if (!full.needFull) sameAsModel(full.kernel, model, true);
        if (scoped.rec.pending() !== full.rec.pending()) throw new Error('scoped and full applies retired differently');
        const a = scoped.kernel.dump(), b = full.kernel.dump();
        if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`scoped and full applies left different kernels:\n${JSON.stringify(a)}\n${JSON.stringify(b)}`);
      }
      // Everything reaped: exactly the model, every owed destroy done.
      for (const [i, ag] of [scoped, full].entries()) {
        ag.reap(grace + 1);
        paid(i, ag);
        if (ag.rec.pending()) throw new Error('graves left after their grace time');
        if (!ag.needFull) sameAsModel(ag.kernel, model);
      }
    }),
    { numRuns: 300 },
  );
  t.pass('300 random sequences');
  t.end();
});

t.test('a failed apply leaves the shadow as it was; a fresh reconciler adopting the kernel repairs it', (t) => {
  fc.assert(
    fc.property(modelArb, modelArb, fc.nat(40), (s1, s2, failAfter) => {
      const ag = new Agent(false);
      const m1 = build(s1), m2 = build(s2);
      ag.apply(m1, new Set());
      ag.kernel.failAt = ag.kernel.trace.length + 1 + failAfter;
      try { ag.rec.apply(m2); } catch { /* injected */ }
      ag.kernel.failAt = -1;
      ag.kernel.check(); // even half way, the invariants held (checked at every syscall before the failure)
      ag.restart(false);
      ag.rec.apply(m1);
      sameAsModel(ag.kernel, m1);
    }),
    { numRuns: 150 },
  );
  t.pass('150 failures injected');
  t.end();
});

// ---- orderings by example ----

const be = (host: number, weight = 1): Backend => ({ address: `10.0.0.${host}`, family: 4, port: 8080, weight });
function svc(name: string, vip: string, backends: Backend[], protocol: 'tcp' | 'udp' = 'tcp'): Service {
  return {
    name, algorithm: 'random', affinityTimeoutSeconds: 0, maglevTableSize: 7,
    frontends: [{ vip, family: 4, port: 80, protocol, backends }],
  };
}
const kinds = (ops: Op[]) => ops.map((o) => o.op);

/** The syscalls between two trace marks, with repeats folded ('sm_tables update x3'). */
function folded(trace: string[]): string[] {
  const out: string[] = [];
  for (const s of trace) {
    const last = out[out.length - 1];
    const m = last && /^(.*?)(?: x(\d+))?$/.exec(last);
    if (m && m[1] === s) out[out.length - 1] = `${s} x${Number(m[2] ?? 1) + 1}`;
    else out.push(s);
  }
  return out;
}

t.test('a new backend: written first, then a new table, then the switch, then the old table retired', (t) => {
  const k = new FakeKernel();
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1)])] });
  const m = { services: [svc('a', '127.100.0.1', [be(1), be(2)])] };
  t.same(kinds(rec.plan(m).ops), ['writeBackends', 'writeTables', 'writeFrontends', 'retireTables']);
  const mark = k.trace.length;
  const res = rec.apply(m);
  t.same(folded(k.trace.slice(mark)), ['sm_backends update', 'sm_tables update x2', 'sm_services update', 'sm_tables delete']);
  t.match(res, { backendsWritten: 1, frontendsWritten: 1, backendsDeleted: 0, frontendsDeleted: 0 });
  t.same(rec.plan(m).ops, [], 'nothing left to do');
  t.end();
});

t.test('a removed backend: new table, switch, and only then (the old table deleted) the backend deleted', (t) => {
  const k = new FakeKernel();
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)])] });
  const mark = k.trace.length;
  const res = rec.apply({ services: [svc('a', '127.100.0.1', [be(1)])] });
  t.same(folded(k.trace.slice(mark)), ['sm_tables update', 'sm_services update', 'sm_tables delete x2', 'sm_backends delete']);
  t.match(res, { backendsWritten: 0, frontendsWritten: 1, backendsDeleted: 1, backendsRetiring: 1 }, 'reaped at the end of the apply (retireMs 0)');
  t.end();
});

/** A reconciler with a grace time on a clock the test moves. */
function graced(k: FakeKernel, destroyed: string[] = []) {
  const clock = { now: 0 };
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, {
    retireMs: 1000, now: () => clock.now, destroyUdp: (a, p) => { destroyed.push(`${a}:${p}`); return 1; },
  });
  return { rec, clock };
}
const ids = (k: FakeKernel) => [...k.backends().keys()].sort((x, y) => x - y);

t.test('a backend only the retired table names stays until that table is reaped; then it goes, and its UDP sockets', (t) => {
  const k = new FakeKernel();
  const destroyed: string[] = [];
  const { rec, clock } = graced(k, destroyed);
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)], 'udp')] });
  t.same(ids(k), [1, 2]);
  const res = rec.apply({ services: [svc('a', '127.100.0.1', [be(1)], 'udp')] });
  t.match(res, { backendsDeleted: 0, backendsRetiring: 1, udpSocketsDestroyed: 0 }, 'nothing deleted yet');
  t.same(ids(k), [1, 2], 'backend 2 is still there: the retired table names it');
  t.equal(k.tables().size, 2, 'the old table and the new one');
  t.same(destroyed, [], 'its UDP sockets are not destroyed yet either');
  clock.now = 999;
  t.match(rec.reap(), { tables: 0, backendsDeleted: 0 }, 'not before the grace time');
  t.equal(rec.pending(), 1);
  clock.now = 1000;
  const mark = k.trace.length;
  t.match(rec.reap(), { tables: 1, backendsDeleted: 1, udpSocketsDestroyed: 1 });
  t.same(folded(k.trace.slice(mark)), ['sm_tables delete x2', 'sm_backends delete'], 'the table first, then the backend');
  t.same(ids(k), [1]);
  t.same(destroyed, ['10.0.0.2:8080']);
  t.equal(rec.pending(), 0);
  t.same(rec.plan({ services: [svc('a', '127.100.0.1', [be(1)], 'udp')] }).ops, [], 'nothing left to do');
  t.end();
});

t.test('a removed service: its backends stay with its retired tables until the reap', (t) => {
  const k = new FakeKernel();
  const destroyed: string[] = [];
  const { rec, clock } = graced(k, destroyed);
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1)], 'udp'), svc('b', '127.100.0.2', [be(3)], 'udp')] });
  t.match(rec.apply({ services: [svc('a', '127.100.0.1', [be(1)], 'udp')] }, new Set(['b'])), { frontendsDeleted: 1, backendsDeleted: 0, backendsRetiring: 1 });
  t.equal(k.backends().size, 2, 'b\'s backend is still there');
  clock.now = 1000;
  // the reap at the end of an apply (of another service) is the same one
  t.match(rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(4)], 'udp')] }, new Set(['a'])), { backendsDeleted: 1, udpSocketsDestroyed: 1 });
  t.same(destroyed, ['10.0.0.3:8080']);
  t.end();
});

t.test('a backend removed and added again in the grace time: a new id, kept; the old id goes with the reap, its sockets stay', (t) => {
  const k = new FakeKernel();
  const destroyed: string[] = [];
  const { rec, clock } = graced(k, destroyed);
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)], 'udp')] });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1)], 'udp')] });
  clock.now = 500;
  const res = rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)], 'udp')] });
  t.match(res, { backendsWritten: 1, backendsDeleted: 0 });
  t.same(ids(k), [1, 2, 3], 'the old id 2 (retired table) and the new id 3 (current table)');
  t.equal(k.backends().get(3)!.addr, '10.0.0.2');
  clock.now = 1000;
  t.match(rec.reap(), { tables: 1, backendsDeleted: 1, udpSocketsDestroyed: 0 }, 'the old one goes; a UDP service has the endpoint again');
  t.same(ids(k), [1, 3]);
  clock.now = 1500;
  t.match(rec.reap(), { tables: 1, backendsDeleted: 0 }, 'the second retired table goes; 10.0.0.2 stays');
  t.same(ids(k), [1, 3]);
  t.same(destroyed, []);
  sameAsModel(k, { services: [svc('a', '127.100.0.1', [be(1), be(2)], 'udp')] });
  t.end();
});

t.test('a restart in the grace time: the retired tables are dropped, the older of a backend there twice too; the first apply deletes the rest', (t) => {
  const k = new FakeKernel();
  const { rec } = graced(k);
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2), be(3)])] });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1)])] });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)])] });
  t.same(ids(k), [1, 2, 3, 4], '2 and 3 wait for the reap; 2 lives again as 4');
  const again = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  t.same(again.adopt(), { frontends: 1, backends: 4 });
  t.same(ids(k), [1, 3, 4], 'the old 2 is gone at adopt (nothing names it, 4 is 10.0.0.2 now)');
  t.equal(k.tables().size, 1, 'only the table in use');
  const m = { services: [svc('a', '127.100.0.1', [be(1), be(2)])] };
  t.match(again.apply(m), { backendsDeleted: 1, backendsRetiring: 0 }, '3 is not in the model: deleted at once');
  sameAsModel(k, m);
  t.end();
});

t.test('a reweighted backend is rewritten in place; the table changes only when its entries do', (t) => {
  const k = new FakeKernel();
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)])] });
  t.same(kinds(rec.plan({ services: [svc('a', '127.100.0.1', [be(1), be(2, 3)])] }).ops), ['writeBackends'], 'random: same table');
  t.same(kinds(rec.plan({ services: [svc('a', '127.100.0.1', [be(1), be(2, 0)])] }).ops),
    ['writeBackends', 'writeTables', 'writeFrontends', 'retireTables'], 'drained: out of the table, still in the kernel');
  t.end();
});

t.test('a removed service: entries deleted, tables retired, stats dropped, then its backends, then UDP sockets', (t) => {
  const k = new FakeKernel();
  const destroyed: string[] = [];
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, {
    retireMs: 0, destroyUdp: (a, p) => { destroyed.push(`${a}:${p}`); return 2; },
  });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1)], 'udp'), svc('b', '127.100.0.2', [be(1), be(2)], 'udp')] });
  const p = rec.plan({ services: [svc('a', '127.100.0.1', [be(1)], 'udp')] }, new Set(['b']));
  t.same(kinds(p.ops), ['deleteFrontends', 'retireTables', 'deleteServiceStats'], 'its backends wait for its retired table');
  t.match(p, { backendsDeleted: 0, backendsRetiring: 2 });
  const res = rec.apply({ services: [svc('a', '127.100.0.1', [be(1)], 'udp')] }, new Set(['b']));
  t.same(destroyed, ['10.0.0.2:8080'], '10.0.0.1 is still a backend of UDP service a: its sockets stay');
  t.match(res, { frontendsDeleted: 1, backendsDeleted: 2, udpSocketsDestroyed: 2 }, 'reaped at the end of the apply (retireMs 0)');
  t.same([...rec.names().values()], ['a']);
  t.end();
});

t.test('a scoped plan touches its service only, and planning changes nothing', (t) => {
  const shadow = new Shadow();
  const k = new FakeKernel(false);
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  const services = Array.from({ length: 200 }, (_, i) => svc(`s${i}`, `127.100.${i >> 8}.${i & 255}`, [be(1 + (i % 200)), be(201)]));
  rec.apply({ services });
  t.same(rec.plan({ services }).ops, [], 'full replan of an applied model: nothing');
  const changed = services.slice();
  changed[7] = svc('s7', '127.100.0.7', [be(8), be(202)]);
  const p = rec.plan({ services: changed }, new Set(['s7']));
  t.same(kinds(p.ops), ['writeBackends', 'writeTables', 'writeFrontends', 'retireTables'], 'the removed backend waits for the reap');
  const id = [...rec.names()].find(([, n]) => n === 's7')![0];
  t.same(p.commit.scope, [id], 'only s7 in scope');
  t.equal(p.commit.services.length, 1);
  t.same(JSON.stringify(planApply(shadow, { services: [] })), JSON.stringify(planApply(shadow, { services: [] })));
  t.equal(shadow.namesChanges, 0);
  t.end();
});

t.test('after a restart, a renamed service keeps its kernel ids: nothing to write', (t) => {
  const k = new FakeKernel();
  const rec = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  rec.apply({ services: [svc('a', '127.100.0.1', [be(1), be(2)]), svc('b', '127.100.0.2', [be(3)])] });
  const again = new Reconciler(k.maps(), k.native as unknown as Native, { retireMs: 0 });
  t.same(again.adopt(), { frontends: 2, backends: 3 });
  const m = { services: [svc('a2', '127.100.0.1', [be(1), be(2)]), svc('b', '127.100.0.2', [be(3)])] };
  t.same(again.plan(m).ops, []);
  again.apply(m);
  t.same([...again.names().values()].sort(), ['a2', 'b']);
  t.end();
});

t.test('endpointKey: IPv4 endpoints as one number, others as text', (t) => {
  t.equal(endpointKey('10.0.0.1', 8080), ipv4Value('10.0.0.1') * 65536 + 8080);
  t.equal(endpointKey('255.255.255.255', 65535), 2 ** 48 - 1, 'exact in a double');
  t.equal(endpointKey('::1', 80), '::1|80');
  t.end();
});

t.test('ipv4Value: the one IPv4 parser, the grammar of isIPv4', async (t) => {
  const { isIPv4 } = await import('node:net');
  t.equal(ipv4Value('1.2.3.4'), 0x01020304);
  t.equal(ipv4Value('255.255.255.255'), 0xffffffff);
  t.equal(ipv4Value('::ffff:10.1.2.3', 7), 0x0a010203, 'from an offset');
  fc.assert(fc.property(fc.oneof(fc.ipV4(), fc.ipV4Extended(), fc.ipV6(), fc.string({ unit: fc.constantFrom(...'0123456789.'), maxLength: 16 })), (s) => {
    const v = ipv4Value(s);
    if ((v >= 0) !== isIPv4(s)) throw new Error(`'${s}': ${v}, isIPv4 ${isIPv4(s)}`);
    if (v >= 0 && v !== s.split('.').reduce((a, o) => a * 256 + Number(o), 0)) throw new Error(`'${s}': ${v}`);
  }), { numRuns: 2000 });
  t.end();
});
