// meshctl authz: L4 authorization as the kernel holds it (issue 13), read from the pinned maps (works while the agent
// is down): the decisions counted per policy and verdict, the identity of each workload cgroup (cgroup -> identity
// id), the per-identity verdicts, and mTLS strict mode's destinations with the connections from other nodes dropped. Policies are numbered as the config lists them (#1 = the first; #0 = the
// default: no ALLOW policy matched, or none applies); identity ids are the agent's hash of the SPIFFE id
// (agent/datapath/authz.ts identityId), so `--identity spiffe://...` finds one.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { identityId } from '../../agent/datapath/authz.js';
import type { StrictDestination } from '../../agent/datapath/strict.js';
import type { Context } from '../context.js';
import { renderTable } from '../table.js';

export interface AuthzReport {
  decisions: { policy: number; allowed: number; denied: number }[];
  identities: { cgroupId: string; cgroup: string; identity: number }[];
  verdicts: { service: string; identity: number; port: number; verdict: 'allow' | 'deny'; policy: number }[];
  /** mTLS strict mode (bpf/strict.bpf.c): segments from other nodes dropped / from this node let through, in total */
  strict: { dropped: number; local: number; destinations: StrictDestination[] };
}

/** cgroup id -> path under the meshed cgroup (a bounded walk: the kernel holds ids, a person reads paths). */
function cgroupPaths(meshed: string, max = 10_000): Map<bigint, string> {
  const out = new Map<bigint, string>();
  const visit = (dir: string): void => {
    if (out.size >= max) return;
    try { out.set(statSync(dir, { bigint: true }).ino, dir); } catch { return; }
    let entries;
    try { entries = readdirSync(dir, { withFileTypes: true }); } catch { return; }
    for (const e of entries) if (e.isDirectory()) visit(join(dir, e.name));
  };
  if (meshed) visit(meshed);
  return out;
}

export async function authz(ctx: Context, opts: { identity?: string }): Promise<void> {
  const names = ctx.serviceNames();
  const paths = cgroupPaths(ctx.state()?.cgroup ?? '');
  const report = ctx.readPins<AuthzReport>(null, (r) => ({
    decisions: r.authzStats().map((s) => ({ policy: s.policyId, allowed: s.allowed, denied: s.denied })),
    identities: r.identities().map((e) => ({ cgroupId: e.cgroupId.toString(), cgroup: paths.get(e.cgroupId) ?? '?', identity: e.identityId })),
    verdicts: r.authzVerdicts().map((v) => ({ service: names.get(v.serviceId) ?? `#${v.serviceId}`, identity: v.identityId, port: v.port, verdict: v.verdict, policy: v.policyId })),
    strict: strictOf(r.globals(), r.strict()),
  }));
  if (opts.identity) {
    const id = identityId(opts.identity);
    report.identities = report.identities.filter((e) => e.identity === id);
    report.verdicts = report.verdicts.filter((v) => v.identity === id);
  }
  ctx.print(report, () => renderAuthz(report));
}

function strictOf(g: Record<string, number>, destinations: StrictDestination[]): AuthzReport['strict'] {
  return { dropped: g['strict_drop'] ?? 0, local: g['strict_local'] ?? 0, destinations };
}

const hex = (id: number): string => (id === 0 ? 'none' : id.toString(16).padStart(8, '0'));
const policy = (id: number): string => (id === 0 ? '#0 (default)' : `#${id}`);

export function renderAuthz(r: AuthzReport): string[] {
  const out: string[] = ['DECISIONS (connect() to services with an L4 policy, since the datapath was loaded)'];
  if (r.decisions.length === 0) out.push('  none');
  else out.push(...renderTable([{ header: 'POLICY' }, { header: 'ALLOWED', align: 'right' }, { header: 'DENIED', align: 'right' }],
    r.decisions.map((d) => [policy(d.policy), String(d.allowed), String(d.denied)])));
  out.push('', 'IDENTITIES (workload cgroups of this node)');
  if (r.identities.length === 0) out.push('  none (no L4 policy, or no workload with an identity here)');
  else out.push(...renderTable([{ header: 'CGROUP' }, { header: 'ID', align: 'right' }, { header: 'IDENTITY' }],
    r.identities.map((e) => [e.cgroup, e.cgroupId, hex(e.identity)])));
  out.push('', 'VERDICTS (where a policy decided, or the verdict differs from the service default)');
  if (r.verdicts.length === 0) out.push('  none');
  else out.push(...renderTable([{ header: 'SERVICE' }, { header: 'IDENTITY' }, { header: 'PORT', align: 'right' }, { header: 'VERDICT' }, { header: 'POLICY' }],
    r.verdicts.map((v) => [v.service, hex(v.identity), String(v.port), v.verdict, policy(v.policy)])));
  out.push('', `MTLS STRICT (local pods' ports closed to other nodes but through the tunnel: ${r.strict.dropped} dropped, ${r.strict.local} from this node)`);
  if (r.strict.destinations.length === 0) out.push('  none (no strict destination on this node)');
  else out.push(...renderTable([{ header: 'POD ADDRESS' }, { header: 'PORT', align: 'right' }, { header: 'MODE' }, { header: 'DROPPED', align: 'right' }, { header: 'LOCAL', align: 'right' }],
    r.strict.destinations.map((d) => [d.address, d.port === 0 ? 'any' : String(d.port), d.mode ?? '(counted)', String(d.dropped), String(d.local)])));
  return out;
}
