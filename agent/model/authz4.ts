// L4 authorization by identity (issue 13): the model's `authorization` policies compiled for decisions, and the one
// decide() both enforcement points use: the kernel's tables at connect() for same-node traffic (datapath/ compiles
// every (service, source identity, port) through it) and the tunnel's server for connections from other nodes.
// Istio's evaluation order: any DENY policy that matches -> deny; else, when some ALLOW policy applies to the
// destination, one of them must match -> allow, none -> deny; no ALLOW policy applies -> allow. Pure, no I/O.
import { identityNamespace, principalOf, type AuthorizationPolicy, type AuthzSource, type Pattern } from './mesh.js';
import type { Model } from './types.js';

/** Who connects: the source's SPIFFE identity, or its principal and namespace as the tunnel's peer certificate says. */
export interface AuthzSrc {
  /** scheme-less principal (`cluster.local/ns/shop/sa/web`) or the full SPIFFE id; absent = no identity */
  principal?: string;
  /** absent = taken from the principal when it is a SPIFFE id */
  namespace?: string;
}

/** What it connects to: a service (name) and the destination workload's port (the target port, as Istio). */
export interface AuthzDst {
  service: string;
  port: number;
}

export type Verdict = 'allow' | 'deny';

/** Why: the policy that decided, or the rule of the evaluation order that did. */
export type DecisionReason = 'deny-policy' | 'allow-policy' | 'no-allow-match' | 'no-policy';

export interface Decision {
  verdict: Verdict;
  reason: DecisionReason;
  /** the policy that matched (deny-policy, allow-policy) */
  policy?: string;
}

interface CompiledPolicy {
  name: string;
  /** index in Model.authorization: a stable small number (the kernel counts per policy) */
  index: number;
  from?: CompiledSource[];
  ports?: Set<number>;
}

type Matcher = (value: string) => boolean;

interface CompiledSource {
  principals?: Matcher[];
  namespaces?: Matcher[];
  notPrincipals?: Matcher[];
  notNamespaces?: Matcher[];
}

export interface Authz4 {
  /** policies that name a service, by service name, in config order */
  readonly deny: ReadonlyMap<string, readonly CompiledPolicy[]>;
  readonly allow: ReadonlyMap<string, readonly CompiledPolicy[]>;
  /** policies without `services`: every L4 service */
  readonly denyAll: readonly CompiledPolicy[];
  readonly allowAll: readonly CompiledPolicy[];
  /** the names of L7 services: no L4 policy applies to them (their http.authz does) */
  readonly l7: ReadonlySet<string>;
  /** service names with an applicable policy (the kernel writes tables for these only) */
  readonly governed: (service: string) => boolean;
  /** policy names by index (Model.authorization order) */
  readonly names: readonly string[];
  /** 'address|port' of every TCP backend -> the services it serves (decideEndpoint; built on first use) */
  readonly endpoints: ReadonlyMap<string, readonly string[]>;
}

/**
 * What a service's connections get when no policy matches them: undefined = no policy applies (no check at all),
 * 'deny' = an ALLOW policy applies (a source must match one), 'allow' = only DENY policies apply.
 */
export function authzDefault(a: Authz4, service: string): Verdict | undefined {
  if (!a.governed(service)) return undefined;
  return (a.allow.get(service)?.length ?? 0) > 0 || a.allowAll.length > 0 ? 'deny' : 'allow';
}

/** Istio's string match: `*` = any non-empty value, `prefix*`, `*suffix`, else exact. */
export function patternMatcher(p: Pattern): Matcher {
  if (p === '*') return (v) => v !== '';
  if (p.startsWith('*')) {
    const suffix = p.slice(1);
    return (v) => v.endsWith(suffix);
  }
  if (p.endsWith('*')) {
    const prefix = p.slice(0, -1);
    return (v) => v.startsWith(prefix);
  }
  return (v) => v === p;
}

function compileSource(s: AuthzSource): CompiledSource {
  const out: CompiledSource = {};
  if (s.principals) out.principals = s.principals.map(patternMatcher);
  if (s.namespaces) out.namespaces = s.namespaces.map(patternMatcher);
  if (s.notPrincipals) out.notPrincipals = s.notPrincipals.map(patternMatcher);
  if (s.notNamespaces) out.notNamespaces = s.notNamespaces.map(patternMatcher);
  return out;
}

export function compileAuthz4(model: Pick<Model, 'services' | 'authorization'>): Authz4 {
  const deny = new Map<string, CompiledPolicy[]>();
  const allow = new Map<string, CompiledPolicy[]>();
  const denyAll: CompiledPolicy[] = [];
  const allowAll: CompiledPolicy[] = [];
  const l7 = new Set(model.services.filter((s) => s.http !== undefined).map((s) => s.name));
  const names: string[] = [];
  (model.authorization ?? []).forEach((p: AuthorizationPolicy, index) => {
    names.push(p.name);
    const c: CompiledPolicy = { name: p.name, index };
    if (p.from) c.from = p.from.map(compileSource);
    if (p.to) c.ports = new Set(p.to.flatMap((o) => o.ports));
    if (!p.services) (p.action === 'deny' ? denyAll : allowAll).push(c);
    else {
      const byService = p.action === 'deny' ? deny : allow;
      for (const s of new Set(p.services)) {
        let list = byService.get(s);
        if (!list) byService.set(s, (list = []));
        list.push(c);
      }
    }
  });
  const anyAll = denyAll.length > 0 || allowAll.length > 0;
  let endpoints: Map<string, string[]> | undefined;
  return {
    deny, allow, denyAll, allowAll, l7, names,
    governed: (service) => !l7.has(service) && (anyAll || deny.has(service) || allow.has(service)),
    // Only the tunnel's server asks by endpoint: a kernel apply of a large model does not pay for the index.
    get endpoints() {
      return (endpoints ??= endpointIndex(model.services));
    },
  };
}

function endpointIndex(services: Model['services']): Map<string, string[]> {
  const endpoints = new Map<string, string[]>();
  for (const svc of services) {
    for (const fe of svc.frontends) {
      if (fe.protocol !== 'tcp') continue;
      for (const b of fe.backends) {
        const key = `${b.address}|${b.port}`;
        let list = endpoints.get(key);
        if (!list) endpoints.set(key, (list = []));
        if (!list.includes(svc.name)) list.push(svc.name);
      }
    }
  }
  return endpoints;
}

function sourceMatches(from: CompiledPolicy['from'], principal: string | undefined, namespace: string | undefined): boolean {
  if (!from) return true;
  return from.some((s) => {
    if (s.principals && (principal === undefined || !s.principals.some((m) => m(principal)))) return false;
    if (s.namespaces && (namespace === undefined || !s.namespaces.some((m) => m(namespace)))) return false;
    // Istio's not-fields (Envoy's not_id over the authenticated principal): a caller without identity has no value
    // that could be excluded, so it matches them
    if (s.notPrincipals && principal !== undefined && s.notPrincipals.some((m) => m(principal))) return false;
    if (s.notNamespaces && namespace !== undefined && s.notNamespaces.some((m) => m(namespace))) return false;
    return true;
  });
}

function policyMatches(p: CompiledPolicy, principal: string | undefined, namespace: string | undefined, port: number): boolean {
  if (p.ports && !p.ports.has(port)) return false;
  return sourceMatches(p.from, principal, namespace);
}

/** The source as decide() compares it: the principal without scheme, the namespace from the SPIFFE id when not given. */
export function normalizeSrc(src: AuthzSrc): { principal?: string; namespace?: string } {
  const out: { principal?: string; namespace?: string } = {};
  if (src.principal !== undefined && src.principal !== '') {
    out.principal = principalOf(src.principal);
    const ns = src.namespace ?? identityNamespace(`spiffe://${out.principal}`);
    if (ns !== undefined) out.namespace = ns;
  } else if (src.namespace !== undefined && src.namespace !== '') out.namespace = src.namespace;
  return out;
}

/** The verdict for one connection (Istio's order: DENY policies, then ALLOW policies). */
export function decide(a: Authz4, src: AuthzSrc, dst: AuthzDst): Decision {
  if (a.l7.has(dst.service)) return { verdict: 'allow', reason: 'no-policy' };
  const { principal, namespace } = normalizeSrc(src);
  for (const list of [a.deny.get(dst.service), a.denyAll]) {
    for (const p of list ?? []) if (policyMatches(p, principal, namespace, dst.port)) return { verdict: 'deny', reason: 'deny-policy', policy: p.name };
  }
  const allows = [a.allow.get(dst.service), a.allowAll];
  if (!allows.some((l) => l && l.length > 0)) return { verdict: 'allow', reason: 'no-policy' };
  for (const list of allows) {
    for (const p of list ?? []) if (policyMatches(p, principal, namespace, dst.port)) return { verdict: 'allow', reason: 'allow-policy', policy: p.name };
  }
  return { verdict: 'deny', reason: 'no-allow-match' };
}

/** The index of a decision's policy in Model.authorization (the kernel's per-policy counters); -1 = none. */
export function policyIndex(a: Authz4, d: Decision): number {
  return d.policy === undefined ? -1 : a.names.indexOf(d.policy);
}

/**
 * The verdict for a connection to a pod address and port (the tunnel's server: an HBONE CONNECT names the pod, not
 * the service). Every service with a backend there is a destination: denied when any of them denies (a policy on one
 * service of a pod is not dodged by naming the pod directly); no such service = decided as no service's (only the
 * policies without `services`). `address` canonical (address.ts).
 */
export function decideEndpoint(a: Authz4, src: AuthzSrc, address: string, port: number): Decision {
  let last: Decision | undefined;
  for (const service of a.endpoints.get(`${address}|${port}`) ?? []) {
    const d = decide(a, src, { service, port });
    if (d.verdict === 'deny') return d;
    if (!last || last.reason === 'no-policy') last = d;
  }
  return last ?? decide(a, src, { service: '', port });
}
