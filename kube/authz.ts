// Istio's AuthorizationPolicy (security.istio.io/v1) -> the model's L4 `authorization` (issue 13), for
// `sockmesh-controlplane serve --kubernetes`, translated the way ztunnel enforces it (the L4 subset; Istio's
// "Use Layer 4 security policy"):
//
//  - Scope: the policy's namespace; a policy in the root namespace (istio-system unless configured) is mesh-wide.
//  - Target. Istio targets workloads (pods) by `selector.matchLabels`; the model's policies target services (the
//    kernel decides per (service, source identity, port) at connect(), the tunnel's server per pod address through
//    the services with a backend there). The closest faithful mapping: a policy with a selector applies to every
//    service in its scope with a backend at the address of a pod in its scope that carries those labels; without a
//    selector, to every service of its namespace (root namespace: every L4 service, `services` left out). A service
//    that mixes matching and other pods gets the policy for all of its backends: stricter than Istio, never wider.
//    A selected pod that backs no service is reached by its address only through the tunnel, where only mesh-wide
//    policies apply (README, Known limits). An L7 service (an HTTPRoute's) is left to its http.authz: reported.
//  - Rules: each rule one model policy (the model's policy is one rule), named `<ns>--<name>--<rule index>`
//    (hashed when that is no DNS label). Istio's semantics: ALLOW without rules (or `spec: {}`) = deny all, a rule
//    `{}` = every connection; DENY without rules matches nothing (left out). Supported: from.source.principals,
//    notPrincipals, namespaces, notNamespaces; to.operation.ports. Every other field (L7 ones: methods, paths, hosts,
//    requestPrincipals; ipBlocks, remoteIpBlocks, notPorts; `when`), as ztunnel treats L7 attributes it cannot see:
//    an ALLOW rule naming one is dropped (it grants nothing), a DENY rule drops the field (it denies more). Never
//    wider than the policy says; each such case is an issue naming the field.
//  - action AUDIT and CUSTOM, targetRef(s) (a waypoint's or a gateway's policy): reported, not enforced. A malformed
//    object (a port that is no number, a field of the wrong shape) is reported and left out, the others kept.
// Pure, no I/O.
import type { AuthorizationPolicy, AuthzOperation, AuthzSource, Service } from '../agent/model/types.js';
import { canonicalAddress } from '../agent/model/address.js';
import { Issues } from '../agent/model/fields.js';
import { validateAuthorization } from '../agent/model/meshconfig.js';
import { hashed, isDnsLabel } from './translate-names.js';
import type { TranslateIssue } from './translate-types.js';
import type { KPod } from './types.js';

export const DEFAULT_ROOT_NAMESPACE = 'istio-system';
/** what the agents' kernel counts (agent/datapath/abi.ts MAX_AUTHZ_POLICIES - 1: slot 0 is the default; kube/ does not
 * import the datapath, unit/kube-authz checks they agree) */
export const MAX_KERNEL_POLICIES = 1023;

type Obj = Record<string, unknown>;

export interface KAuthorizationPolicy {
  metadata: { namespace?: string; name?: string; resourceVersion?: string };
  spec?: Obj;
}

/** A model service as the policy's target: its name, Kubernetes namespace, L7 or not, backend addresses. */
export interface PolicyTarget {
  name: string;
  namespace: string;
  l7: boolean;
  addresses: ReadonlySet<string>;
}

export interface AuthzTranslation {
  authorization: AuthorizationPolicy[];
  issues: TranslateIssue[];
  /** per policy (namespace/name): enforced, partly (some rule or field left out), or not */
  outcomes: Map<string, 'enforced' | 'partial' | 'not-enforced' | 'invalid'>;
}

const SOURCE_SUPPORTED = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces'] as const;
const OPERATION_SUPPORTED = ['ports'] as const;
const RULE_FIELDS = ['from', 'to', 'when'] as const;
const SPEC_FIELDS = ['selector', 'action', 'rules', 'targetRef', 'targetRefs', 'provider'] as const;
/** matches no connection (a principal is both any and none): an ALLOW policy that applies and grants nothing */
const NOTHING: AuthzSource = { principals: ['*'], notPrincipals: ['*'] };

class Bad extends Error {
  constructor(readonly path: string, message: string) {
    super(message);
  }
}

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function strings(v: unknown, path: string): string[] {
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string' && s !== '')) throw new Bad(path, `must be a list of non-empty strings, got ${JSON.stringify(v)}`);
  return v as string[];
}

function entries(v: unknown, path: string): Obj[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every(isObj)) throw new Bad(path, `must be a list of mappings, got ${JSON.stringify(v)}`);
  return v as Obj[];
}

/** Istio's ports are strings of digits (numbers accepted too). */
function port(v: unknown, path: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^[0-9]{1,5}$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Bad(path, `must be a port between 1 and 65535, got ${JSON.stringify(v)}`);
  return n;
}

/** A principal as the model compares them (no scheme). */
const principal = (p: string) => (p.startsWith('spiffe://') ? p.slice('spiffe://'.length) : p);

/**
 * One rule -> a model rule (from, to), or null when it grants nothing (an ALLOW rule with a field ztunnel cannot check).
 * `dropped` gets the paths of the fields left out.
 */
function rule(r: Obj, path: string, deny: boolean, dropped: string[]): { from?: AuthzSource[]; to?: AuthzOperation[] } | null {
  for (const k of Object.keys(r)) if (!(RULE_FIELDS as readonly string[]).includes(k)) dropped.push(`${path}.${k}`);
  if (r['when'] !== undefined && r['when'] !== null) {
    entries(r['when'], `${path}.when`);
    dropped.push(`${path}.when`);
  }
  let anySource = false;
  const from: AuthzSource[] = [];
  entries(r['from'], `${path}.from`).forEach((f, i) => {
    const fp = `${path}.from[${i}].source`;
    const s = f['source'] ?? {};
    if (!isObj(s)) throw new Bad(fp, `must be a mapping, got ${JSON.stringify(s)}`);
    const src: AuthzSource = {};
    for (const [k, v] of Object.entries(s)) {
      if ((SOURCE_SUPPORTED as readonly string[]).includes(k)) {
        const list = strings(v, `${fp}.${k}`);
        const key = k as (typeof SOURCE_SUPPORTED)[number];
        src[key] = key === 'principals' || key === 'notPrincipals' ? list.map(principal) : list;
      } else dropped.push(`${fp}.${k}`);
    }
    if (Object.keys(src).length === 0) anySource = true;
    else from.push(src);
  });
  let anyPort = false;
  const to: AuthzOperation[] = [];
  entries(r['to'], `${path}.to`).forEach((o, i) => {
    const op = `${path}.to[${i}].operation`;
    const x = o['operation'] ?? {};
    if (!isObj(x)) throw new Bad(op, `must be a mapping, got ${JSON.stringify(x)}`);
    let ports: number[] | undefined;
    for (const [k, v] of Object.entries(x)) {
      if ((OPERATION_SUPPORTED as readonly string[]).includes(k)) {
        if (!Array.isArray(v) || v.length === 0) throw new Bad(`${op}.ports`, `must be a non-empty list of ports, got ${JSON.stringify(v)}`);
        ports = v.map((p, j) => port(p, `${op}.ports[${j}]`));
      } else dropped.push(`${op}.${k}`);
    }
    if (ports) to.push({ ports: [...new Set(ports)] });
    else anyPort = true;
  });
  // An ALLOW rule with a field it cannot check grants nothing (ztunnel: the rule is left out); a DENY rule without the
  // field matches more connections than with it (denies more): both err on the side of less access.
  if (dropped.length > 0 && !deny) return null;
  const out: { from?: AuthzSource[]; to?: AuthzOperation[] } = {};
  if (!anySource && from.length > 0) out.from = from;
  if (!anyPort && to.length > 0) out.to = to;
  return out;
}

/** The model's name for rule `index` of policy ns/name (index undefined: the policy as a whole). Injective. */
export function policyName(namespace: string, name: string, index?: number): string {
  const plain = `${namespace}--${name}${index === undefined ? '' : `--${index}`}`;
  if (!namespace.includes('--') && !name.includes('--') && isDnsLabel(plain)) return plain;
  return hashed([namespace, name], `${namespace}/${name}${index === undefined ? '' : `/${index}`}`);
}

function matches(labels: Record<string, string> | undefined, selector: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(selector)) if (labels?.[k] !== v) return false;
  return true;
}

function podAddresses(p: KPod): string[] {
  const out: string[] = [];
  for (const ip of p.status?.podIPs?.length ? p.status.podIPs.map((x) => x?.ip) : [p.status?.podIP]) {
    const c = typeof ip === 'string' ? canonicalAddress(ip) : null;
    if (c) out.push(c.address);
  }
  return out;
}

/** The model services a namespace's services translate to, with their backends (for the selector's mapping). */
export function policyTargets(services: readonly Service[], origins: ReadonlyMap<string, string>): PolicyTarget[] {
  return services.map((s) => {
    const origin = origins.get(s.name) ?? '';
    const addresses = new Set<string>();
    for (const fe of s.frontends) for (const b of fe.backends) addresses.add(b.address);
    return { name: s.name, namespace: origin.slice(0, Math.max(0, origin.indexOf('/'))), l7: s.http !== undefined, addresses };
  });
}

export function translateAuthorization(
  v: { policies: Iterable<KAuthorizationPolicy>; pods: Iterable<KPod>; targets: readonly PolicyTarget[] },
  opts: { rootNamespace?: string; maxPolicies?: number } = {},
): AuthzTranslation {
  const root = opts.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
  const maxPolicies = opts.maxPolicies ?? MAX_KERNEL_POLICIES;
  const issues: TranslateIssue[] = [];
  const outcomes: AuthzTranslation['outcomes'] = new Map();
  const out: AuthorizationPolicy[] = [];
  const sorted = [...v.policies].sort((a, b) => {
    const ka = `${a.metadata.namespace ?? ''}/${a.metadata.name ?? ''}`;
    const kb = `${b.metadata.namespace ?? ''}/${b.metadata.name ?? ''}`;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  let pods: KPod[] | undefined;
  const names = new Set<string>();
  for (const p of sorted) {
    const ns = p.metadata.namespace ?? '';
    const name = p.metadata.name ?? '';
    const key = `${ns}/${name}`;
    const object = `AuthorizationPolicy ${key}`;
    const issue = (path: string, message: string) => issues.push({ object, path, message });
    try {
      const spec = p.spec ?? {};
      if (!isObj(spec)) throw new Bad('spec', `must be a mapping, got ${JSON.stringify(spec)}`);
      const action = spec['action'] ?? 'ALLOW';
      if (action === 'AUDIT' || action === 'CUSTOM') {
        issue('spec.action', `${action} is not enforced by sockmesh (as ztunnel: no audit log, no external authorizer): left out`);
        outcomes.set(key, 'not-enforced');
        continue;
      }
      if (action !== 'ALLOW' && action !== 'DENY') throw new Bad('spec.action', `must be ALLOW, DENY, AUDIT or CUSTOM, got ${JSON.stringify(action)}`);
      if (spec['targetRef'] !== undefined || spec['targetRefs'] !== undefined) {
        issue(spec['targetRef'] !== undefined ? 'spec.targetRef' : 'spec.targetRefs', 'attaches the policy to a waypoint or gateway (enforced there, at L7, not by ztunnel): left out');
        outcomes.set(key, 'not-enforced');
        continue;
      }
      const deny = action === 'DENY';
      let partial = false;
      for (const k of Object.keys(spec)) {
        if (!(SPEC_FIELDS as readonly string[]).includes(k)) throw new Bad(`spec.${k}`, 'is not a field of AuthorizationPolicy');
      }
      if (spec['provider'] !== undefined) throw new Bad('spec.provider', 'is only for action CUSTOM');
      // the target
      let services: string[] | undefined;
      const sel = spec['selector'];
      let matchLabels: Record<string, string> | undefined;
      if (sel !== undefined && sel !== null) {
        if (!isObj(sel)) throw new Bad('spec.selector', `must be a mapping like {matchLabels: {app: web}}, got ${JSON.stringify(sel)}`);
        for (const k of Object.keys(sel)) if (k !== 'matchLabels') throw new Bad(`spec.selector.${k}`, 'is not a field of a workload selector (matchLabels only)');
        const ml = sel['matchLabels'];
        if (ml !== undefined && ml !== null) {
          if (!isObj(ml) || !Object.values(ml).every((x) => typeof x === 'string')) throw new Bad('spec.selector.matchLabels', `must map label names to strings, got ${JSON.stringify(ml)}`);
          if (Object.keys(ml).length > 0) matchLabels = ml as Record<string, string>;
        }
      }
      const inScope = (namespace: string) => ns === root || namespace === ns;
      if (matchLabels) {
        pods ??= [...v.pods];
        const addresses = new Set<string>();
        for (const pod of pods) {
          if (inScope(pod.metadata.namespace ?? '') && matches(pod.metadata.labels as Record<string, string> | undefined, matchLabels)) {
            for (const a of podAddresses(pod)) addresses.add(a);
          }
        }
        services = v.targets.filter((t) => inScope(t.namespace) && [...t.addresses].some((a) => addresses.has(a))).map((t) => t.name);
      } else if (ns !== root) services = v.targets.filter((t) => t.namespace === ns).map((t) => t.name);
      if (services) {
        const l7 = new Set(v.targets.filter((t) => t.l7).map((t) => t.name));
        for (const s of services.filter((x) => l7.has(x))) {
          issue(matchLabels ? 'spec.selector' : 'metadata.namespace', `applies to service ${s}, which has HTTP routes: its connections end at the L7 proxy, whose http.authz decides (not this policy)`);
          partial = true;
        }
        services = services.filter((x) => !l7.has(x)).sort();
      }
      // the rules
      const made: { from?: AuthzSource[]; to?: AuthzOperation[]; index: number }[] = [];
      const rules = entries(spec['rules'], 'spec.rules');
      rules.forEach((r, i) => {
        const dropped: string[] = [];
        const m = rule(r, `spec.rules[${i}]`, deny, dropped);
        for (const d of dropped) {
          issue(d, deny
            ? 'is not checked at L4 (ztunnel\'s subset): left out of this DENY rule, which so denies more'
            : 'is not checked at L4 (ztunnel\'s subset): this ALLOW rule is left out (it grants nothing)');
        }
        if (dropped.length > 0) partial = true;
        if (m) made.push({ ...m, index: i });
      });
      outcomes.set(key, partial ? 'partial' : 'enforced');
      if (services !== undefined && services.length === 0) continue; // applies to no service now
      const base = { action: deny ? 'deny' as const : 'allow' as const, ...(services ? { services } : {}) };
      const policies: AuthorizationPolicy[] = made.map((m) => ({ name: policyName(ns, name, m.index), ...base, ...(m.from ? { from: m.from } : {}), ...(m.to ? { to: m.to } : {}) }));
      // Istio: an ALLOW policy without (usable) rules still applies, so nothing not allowed elsewhere gets through
      if (!deny && made.length === 0) policies.push({ name: policyName(ns, name), ...base, from: [NOTHING] });
      // the agents' own validation (a pattern they refuse would have them NACK every policy): refused here, this one only
      const check = new Issues('kubernetes');
      validateAuthorization(policies, 'rules', check);
      if (check.list.length > 0) {
        const i = check.list[0]!;
        throw new Bad(`spec.${i.path.replace(/^rules\[(\d+)\]/, (_, k: string) => `rules[${made[Number(k)]?.index ?? k}]`)}`, i.message);
      }
      if (out.length + policies.length > maxPolicies) {
        // the agents would refuse the whole list (the kernel counts per policy in a fixed map): this one is left out
        issue('spec.rules', `${out.length + policies.length} L4 policies (rules) in all: the kernel counts at most ${maxPolicies}: left out (NOT enforced)`);
        outcomes.set(key, 'invalid');
        continue;
      }
      for (const pol of policies) {
        if (names.has(pol.name)) {
          issue('metadata.name', `its model name ${pol.name} is also another policy's (a hash collision): left out`);
          continue;
        }
        names.add(pol.name);
        out.push(pol);
      }
    } catch (e) {
      if (!(e instanceof Bad)) throw e;
      issue(e.path, `${e.message} (the policy is left out)`);
      outcomes.set(key, 'invalid');
    }
  }
  return { authorization: out, issues, outcomes };
}
