// L4 authorization in the kernel (issue 13): the model's policies, compiled by model/authz4.ts, written into the maps
// connect() reads (bpf/lib/authz.h):
//   sm_identities  cgroup id of a workload of this node -> its identity id
//   sm_authz       (service id, identity id, pod port) -> verdict + the policy that decided
// The service entries carry the default (SM_SVC_F_AUTHZ[_DENY], set by plan.ts with the entry itself), so an entry
// is written only where a policy decided or the verdict differs from the default. Identity ids are a hash of the
// SPIFFE id (stable across restarts and config changes: a restarted agent rewrites nothing); policy ids are the
// policy's place in the config + 1 (0 = the default), the slots of sm_authz_stats.
// Writes go make-before-break: verdicts for new keys first, then the identities that lead to them, then what is gone.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Model } from '../model/types.js';
import { authzDefault, compileAuthz4, decide, policyIndex } from '../model/authz4.js';
import { murmur3 } from '../model/hash.js';
import { AUTHZ_ALLOW, AUTHZ_DENY, MAX_AUTHZ_POLICIES, encode } from './abi.js';
import type { Maps } from './datapath.js';
import type { Native } from './native.js';

/** The identity id of a SPIFFE id: never 0 (0 = no identity). */
export function identityId(identity: string): number {
  return murmur3(identity, 0x5a17e) >>> 0 || 1;
}

export interface AuthzSyncResult {
  /** workload cgroups of this node with an identity, found (written or kept) */
  cgroups: number;
  /** workload cgroups named by the model but not there (yet): looked for again at the next pod scan */
  missing: number;
  verdicts: number;
  written: number;
  deleted: number;
}

/** What sm_identities and sm_authz hold, as hex key -> hex value. */
type Table = Map<string, string>;

export class AuthzTables {
  private identities?: Table;
  private verdicts?: Table;
  private last?: { model: Model; serviceIds: ReadonlyMap<string, number> };
  /** identity id -> SPIFFE id, for meshctl and the flow events */
  readonly names = new Map<number, string>();

  constructor(private readonly maps: Maps, private readonly n: Native, private readonly meshedCgroup: string, private readonly cgroup2Root: string) {}

  /**
   * Write what `model` asks (service ids as the reconciler allocated them). Only the workloads whose cgroups are
   * inside this agent's meshed cgroup are this node's clients: another node's (or another agent's, in a lab) never
   * reach these programs.
   */
  sync(model: Model, serviceIds: ReadonlyMap<string, number>): AuthzSyncResult {
    this.last = { model, serviceIds };
    const res: AuthzSyncResult = { cgroups: 0, missing: 0, verdicts: 0, written: 0, deleted: 0 };
    const wantIds: Table = new Map();
    const wantVerdicts: Table = new Map();
    const policies = model.authorization ?? [];
    if (policies.length >= MAX_AUTHZ_POLICIES) {
      throw new Error(`${policies.length} authorization policies: the kernel counts at most ${MAX_AUTHZ_POLICIES - 1}`);
    }
    // Identities only matter where a policy does: without policies both maps are emptied.
    if (policies.length > 0) {
      const meshed = this.meshedCgroup.replace(/\/+$/, '');
      const local = new Set<string>();
      const byId = new Map<number, string>();
      for (const w of model.workloads ?? []) {
        if (!w.identity) continue;
        const id = identityId(w.identity);
        const other = byId.get(id);
        if (other !== undefined && other !== w.identity) {
          throw new Error(`identities ${other} and ${w.identity} hash to the same kernel id ${id}: rename one service account`);
        }
        byId.set(id, w.identity);
        for (const path of w.cgroups) {
          const dir = join(this.cgroup2Root, path);
          if (!dir.startsWith(`${meshed}/`)) continue;
          let ino: bigint;
          try {
            ino = statSync(dir, { bigint: true }).ino;
          } catch {
            res.missing++;
            continue;
          }
          local.add(w.identity);
          res.cgroups++;
          const v = encode('sm_identity', { identity_id: id });
          const k = Buffer.alloc(8);
          k.writeBigUInt64LE(ino);
          wantIds.set(k.toString('hex'), v.toString('hex'));
        }
      }
      for (const [id, name] of byId) this.names.set(id, name);
      const a = compileAuthz4(model);
      const sources: (string | undefined)[] = [undefined, ...local];
      for (const svc of model.services) {
        const def = authzDefault(a, svc.name);
        const serviceId = serviceIds.get(svc.name);
        if (def === undefined || serviceId === undefined) continue;
        const ports = new Set<number>();
        for (const fe of svc.frontends) if (fe.protocol === 'tcp') for (const b of fe.backends) ports.add(b.port);
        for (const identity of sources) {
          for (const port of ports) {
            const d = decide(a, identity === undefined ? {} : { principal: identity }, { service: svc.name, port });
            if (d.policy === undefined && d.verdict === def) continue;
            const k = encode('sm_authz_key', { service_id: serviceId, identity_id: identity === undefined ? 0 : identityId(identity), port });
            const v = encode('sm_authz_verdict', { policy_id: policyIndex(a, d) + 1, verdict: d.verdict === 'allow' ? AUTHZ_ALLOW : AUTHZ_DENY });
            wantVerdicts.set(k.toString('hex'), v.toString('hex'));
          }
        }
      }
    }
    res.verdicts = wantVerdicts.size;
    const ids = this.maps.fd('sm_identities');
    const verdicts = this.maps.fd('sm_authz');
    this.identities ??= this.readBack(ids);
    this.verdicts ??= this.readBack(verdicts);
    // make before break: the verdicts an identity leads to, then the identity; then what went away, the other way
    res.written += this.writeChanged(verdicts, this.verdicts, wantVerdicts);
    res.written += this.writeChanged(ids, this.identities, wantIds);
    res.deleted += this.deleteGone(ids, this.identities, wantIds);
    res.deleted += this.deleteGone(verdicts, this.verdicts, wantVerdicts);
    this.identities = wantIds;
    this.verdicts = wantVerdicts;
    return res;
  }

  /** Look the workloads' cgroups up again (pods come and go between model updates); nothing when no model yet. */
  resync(): AuthzSyncResult | undefined {
    return this.last && this.sync(this.last.model, this.last.serviceIds);
  }

  private readBack(fd: number): Table {
    const { keys, values } = this.n.mapDump(fd);
    return new Map(keys.map((k, i) => [k.toString('hex'), values[i]!.toString('hex')]));
  }

  private writeChanged(fd: number, have: Table, want: Table): number {
    let n = 0;
    for (const [k, v] of want) {
      if (have.get(k) === v) continue;
      this.n.mapUpdate(fd, Buffer.from(k, 'hex'), Buffer.from(v, 'hex'));
      n++;
    }
    return n;
  }

  private deleteGone(fd: number, have: Table, want: Table): number {
    let n = 0;
    for (const k of have.keys()) {
      if (want.has(k)) continue;
      this.n.mapDelete(fd, Buffer.from(k, 'hex'));
      n++;
    }
    return n;
  }
}
