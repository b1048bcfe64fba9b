// L7 authorization of one service, evaluated before routing. The order (as Istio's
// AuthorizationPolicy, and written the same way in the README):
//   1. deny rules: if any deny rule matches, the request is denied (403, x-sockmesh-denied: <rule>);
//   2. allow rules: if any allow rule matches, the request is allowed;
//   3. otherwise the service's defaultAction: allow, or deny (403, x-sockmesh-denied: default-deny).
// A rule matches when every condition it states holds: `from` (the source workload, the client's
// cgroup mapped by the config's workloads; a client in no workload matches no `from`; an identity
// spiffe://... in `from` stands for the workloads with that identity when the policy is compiled), `methods` (in any case),
// `paths` (any of them, on the normalized path without query; see router.matchPath) and `headers`
// (all of them). A rule with no conditions matches every request.
import type { Authz, AuthzRule, Workload } from '../model/l7.js';
import type { RequestHead } from './types.js';
import { compileHeaderMatches, compileStringMatch, methodIn, methodSet, type HeadersMatcher, type StringMatcher } from './router.js';

export const DEFAULT_DENY = 'default-deny';

interface CompiledRule {
  name: string;
  from?: ReadonlySet<string>;
  methods?: ReadonlySet<string>;
  paths?: StringMatcher[];
  headers?: HeadersMatcher;
}

/**
 * `from` as workload names: an identity (spiffe://...) is every workload of the model that has it (Kubernetes: one per
 * service account with pods on this node), or nobody when none has it yet, and the set stays: an empty `from` must
 * match nothing, never everything. Resolved here, once per compile, so the request path compares names only; the
 * source recompiles a service with authz when the workloads change (agent/sources/kube.ts).
 */
function fromNames(from: readonly string[], workloads: readonly Workload[]): Set<string> {
  const out = new Set<string>();
  for (const f of from) {
    if (!f.startsWith('spiffe://')) out.add(f);
    else for (const w of workloads) if (w.identity === f) out.add(w.name);
  }
  return out;
}

function compileRule(r: AuthzRule, where: string, workloads: readonly Workload[]): CompiledRule {
  return {
    // the name goes into a response header: whatever produced the model (file, xDS), it stays one token
    name: r.name.replace(/[^\x21-\x7e]/g, '_') || 'unnamed',
    from: r.from && r.from.length > 0 ? fromNames(r.from, workloads) : undefined,
    methods: methodSet(r.methods),
    paths: r.paths && r.paths.length > 0 ? r.paths.map((p, i) => compileStringMatch(p, `${where}.paths[${i}]`)) : undefined,
    // a repeated header: an allow rule reads the joined value only, a deny rule any reading of it (router.ts)
    headers: compileHeaderMatches(r.headers, `${where}.headers`, r.action === 'deny' ? 'strict' : 'joined'),
  };
}

function ruleMatches(r: CompiledRule, workload: string | undefined, path: string, head: RequestHead): boolean {
  if (r.from && (workload === undefined || !r.from.has(workload))) return false;
  if (r.methods && !methodIn(r.methods, head.method)) return false;
  if (r.paths) {
    let any = false;
    for (const p of r.paths) if (p(path)) { any = true; break; }
    if (!any) return false;
  }
  if (r.headers && !r.headers(head)) return false;
  return true;
}

export class Authorizer {
  private readonly deny: CompiledRule[];
  private readonly allow: CompiledRule[];
  private readonly defaultDeny: boolean;
  /** whether any rule looks at the source (else the workload lookup is skipped) */
  readonly needsWorkload: boolean;

  /** workloads: the model's (what identities in `from` resolve to) */
  constructor(a: Authz, service: string, workloads: readonly Workload[] = []) {
    const rules = a.rules.map((r, i) => ({ action: r.action, rule: compileRule(r, `service ${service}: authz.rules[${i}] (${r.name})`, workloads) }));
    this.deny = rules.filter((r) => r.action === 'deny').map((r) => r.rule);
    this.allow = rules.filter((r) => r.action === 'allow').map((r) => r.rule);
    this.defaultDeny = a.defaultAction === 'deny';
    this.needsWorkload = rules.some((r) => r.rule.from !== undefined);
  }

  /**
   * undefined = allowed; otherwise the name of the deny rule that matched, or 'default-deny'.
   * workload: the source's workload name (undefined = none); path: router.matchPath(head.path).
   */
  check(workload: string | undefined, path: string, head: RequestHead): string | undefined {
    for (const r of this.deny) if (ruleMatches(r, workload, path, head)) return r.name;
    for (const r of this.allow) if (ruleMatches(r, workload, path, head)) return undefined;
    return this.defaultDeny ? DEFAULT_DENY : undefined;
  }
}
