// The between-nodes part of a config (issue 13) -> the types of mesh.ts: a workload's identity, node and addresses,
// the top-level `nodes`, `mtls` and `authorization`, a service's `mtls`. Same rules as config.ts: every problem
// collected with the path to its field (`authorization[1].from[0].principals[2]: ...`), unknown fields are errors.
import { canonicalAddress } from './address.js';
import { checkFields, describe, enumValue, intField, isMapping, join, listField, type Issues, type Obj } from './fields.js';
import type { Workload } from './l7.js';
import {
  SPIFFE_ID,
  type AuthorizationPolicy,
  type AuthzOperation,
  type AuthzSource,
  type MeshNode,
  type MtlsMode,
  type MtlsPolicy,
} from './mesh.js';

export const MTLS_MODES: readonly MtlsMode[] = ['strict', 'permissive', 'off'];
const NODE_FIELDS = ['name', 'addresses', 'tunnelPort'] as const;
const MTLS_FIELDS = ['mode', 'namespaces'] as const;
const POLICY_FIELDS = ['name', 'action', 'services', 'from', 'to'] as const;
const SOURCE_FIELDS = ['principals', 'namespaces', 'notPrincipals', 'notNamespaces'] as const;
const OPERATION_FIELDS = ['ports'] as const;
/** A node's --node-id: a DNS subdomain, as Kubernetes node names are. */
const NODE_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** Istio's pattern characters around the optional leading or trailing '*'. */
const PATTERN_BODY = /^[A-Za-z0-9._:/-]+$/;
const MAX_PATTERNS = 64;

function nodeName(v: unknown, path: string, issues: Issues): string | undefined {
  if (typeof v === 'string' && NODE_NAME.test(v)) return v;
  issues.add(path, `must be a node name (its --node-id: lowercase letters, digits, '-' or '.', up to 253), got ${describe(v)}`);
  return undefined;
}

function addressList(obj: Obj, key: string, path: string, required: boolean, issues: Issues): string[] | undefined {
  const list = listField(obj, key, path, required, issues);
  if (list === undefined) return undefined;
  if (required && list.length === 0) issues.add(join(path, key), 'must list at least one address');
  const out: string[] = [];
  const seen = new Map<string, number>();
  list.forEach((v, k) => {
    const ap = `${join(path, key)}[${k}]`;
    const a = typeof v === 'string' ? canonicalAddress(v.trim()) : null;
    if (a === null) return void issues.add(ap, `must be an IPv4 or IPv6 address literal (like 198.18.1.2 or 2001:db8:1::2), got ${describe(v)}`);
    if (a.address === '0.0.0.0' || a.address === '::') return void issues.add(ap, `must not be the unspecified address ${a.address}`);
    const first = seen.get(a.address);
    if (first !== undefined) return void issues.add(ap, `duplicate address ${a.address}, same as ${key}[${first}]`);
    seen.set(a.address, k);
    out.push(a.address);
  });
  return out;
}

/** A workload's identity, node and addresses (validateWorkloads in l7config.ts calls it for each entry). */
export function workloadMeshFields(w: Obj, path: string, issues: Issues): Pick<Workload, 'identity' | 'node' | 'addresses'> {
  const out: Pick<Workload, 'identity' | 'node' | 'addresses'> = {};
  const id = w['identity'];
  if (id !== undefined && id !== null) {
    if (typeof id === 'string' && SPIFFE_ID.test(id)) out.identity = id;
    else issues.add(join(path, 'identity'), `must be a SPIFFE id spiffe://<trust domain>/ns/<namespace>/sa/<service account> (like spiffe://cluster.local/ns/shop/sa/web), got ${describe(id)}`);
  }
  if (w['node'] !== undefined && w['node'] !== null) {
    const n = nodeName(w['node'], join(path, 'node'), issues);
    if (n !== undefined) out.node = n;
  }
  const addresses = addressList(w, 'addresses', path, false, issues);
  if (addresses && addresses.length > 0) out.addresses = addresses;
  return out;
}

/** The top-level `nodes`: names unique, each with its tunnel end's addresses. */
export function validateNodes(list: readonly unknown[], path: string, issues: Issues): MeshNode[] {
  const out: MeshNode[] = [];
  const names = new Map<string, number>();
  const owners = new Map<string, string>();
  list.forEach((raw, i) => {
    const np = `${path}[${i}]`;
    if (!isMapping(raw)) return void issues.add(np, `must be a mapping like {name: node-b, addresses: [198.19.255.2]}, got ${describe(raw)}`);
    const mark = issues.list.length;
    checkFields(raw, np, NODE_FIELDS, issues);
    let name: string | undefined;
    if (raw['name'] === undefined || raw['name'] === null) issues.add(join(np, 'name'), "is required (the node's --node-id)");
    else name = nodeName(raw['name'], join(np, 'name'), issues);
    if (name !== undefined) {
      const seen = names.get(name);
      if (seen !== undefined) issues.add(join(np, 'name'), `duplicate node name '${name}', also used by ${path}[${seen}]`);
      else names.set(name, i);
    }
    const addresses = addressList(raw, 'addresses', np, true, issues) ?? [];
    addresses.forEach((a, k) => {
      const owner = owners.get(a);
      if (owner !== undefined) issues.add(`${join(np, 'addresses')}[${k}]`, `address ${a} is already the tunnel end of ${owner}`);
      else owners.set(a, name !== undefined ? `node '${name}'` : np);
    });
    const tunnelPort = intField(raw, 'tunnelPort', np, 1, 65535, false, issues);
    if (name === undefined || issues.list.length > mark) return;
    out.push(tunnelPort === undefined ? { name, addresses } : { name, addresses, tunnelPort });
  });
  return out;
}

/** A service's `mtls: strict|permissive|off`. */
export function mtlsModeValue(v: unknown, path: string, issues: Issues): MtlsMode | undefined {
  return enumValue(v, path, MTLS_MODES, issues);
}

/** The top-level `mtls: {mode, namespaces: {ns: mode}}`. */
export function validateMtls(v: unknown, path: string, issues: Issues): MtlsPolicy | undefined {
  if (!isMapping(v)) {
    issues.add(path, `must be a mapping like {mode: permissive, namespaces: {shop: strict}}, got ${describe(v)}`);
    return undefined;
  }
  const mark = issues.list.length;
  checkFields(v, path, MTLS_FIELDS, issues);
  let mode: MtlsMode = 'permissive';
  if (v['mode'] !== undefined && v['mode'] !== null) mode = mtlsModeValue(v['mode'], join(path, 'mode'), issues) ?? mode;
  const namespaces: Record<string, MtlsMode> = {};
  const ns = v['namespaces'];
  if (ns !== undefined && ns !== null) {
    const np = join(path, 'namespaces');
    if (!isMapping(ns)) issues.add(np, `must be a mapping of namespace to mode like {shop: strict}, got ${describe(ns)}`);
    else {
      for (const [name, m] of Object.entries(ns)) {
        if (!NAME.test(name)) {
          issues.add(join(np, name), `must be a namespace name (a DNS label), got ${JSON.stringify(name)}`);
          continue;
        }
        const mm = mtlsModeValue(m, join(np, name), issues);
        if (mm) namespaces[name] = mm;
      }
    }
  }
  return issues.list.length > mark ? undefined : { mode, namespaces };
}

/** Istio's string match: exact, `prefix*`, `*suffix` or `*`. */
function patternValue(v: unknown, path: string, what: string, issues: Issues): string | undefined {
  if (typeof v === 'string') {
    const body = v.startsWith('*') ? v.slice(1) : v.endsWith('*') ? v.slice(0, -1) : v;
    if (v === '*' || (body !== '' && PATTERN_BODY.test(body))) return v;
  }
  issues.add(path, `must be ${what}: exact, 'prefix*', '*suffix' or '*' (no other '*', no spaces), got ${describe(v)}`);
  return undefined;
}

function patternList(obj: Obj, key: string, path: string, what: string, issues: Issues): string[] | undefined {
  const list = listField(obj, key, path, false, issues);
  if (list === undefined) return undefined;
  if (list.length === 0 || list.length > MAX_PATTERNS) {
    issues.add(join(path, key), `must list 1 to ${MAX_PATTERNS} values (omit '${key}' for any), got ${list.length}`);
    return undefined;
  }
  const out: string[] = [];
  list.forEach((v, k) => {
    let p = patternValue(v, `${join(path, key)}[${k}]`, what, issues);
    // Istio's principals carry no scheme: written with one, it is the same principal
    if (p !== undefined && (key === 'principals' || key === 'notPrincipals') && p.startsWith('spiffe://')) p = p.slice('spiffe://'.length);
    if (p !== undefined) out.push(p);
  });
  return out;
}

/**
 * An optional list that, when given, must not be empty (absent means "any": an empty one is a mistake); each entry
 * through `entry` (which reports its own problems and returns undefined for a bad one).
 */
function optionalList<T>(obj: Obj, key: string, path: string, emptyMessage: string, issues: Issues, entry: (v: unknown, path: string) => T | undefined): T[] | undefined {
  const list = listField(obj, key, path, false, issues);
  if (list === undefined) return undefined;
  if (list.length === 0) issues.add(join(path, key), emptyMessage);
  const out: T[] = [];
  list.forEach((v, k) => {
    const e = entry(v, `${join(path, key)}[${k}]`);
    if (e !== undefined) out.push(e);
  });
  return out;
}

/**
 * The top-level `authorization` list. `services` names are checked against the model's services by the caller
 * (checkAuthorizationServices), which knows them once they are validated.
 */
export function validateAuthorization(list: readonly unknown[], path: string, issues: Issues): AuthorizationPolicy[] {
  const out: AuthorizationPolicy[] = [];
  const names = new Map<string, number>();
  list.forEach((raw, i) => {
    const pp = `${path}[${i}]`;
    if (!isMapping(raw)) return void issues.add(pp, `must be a mapping like {name: allow-web, action: ALLOW, services: [web], from: [{namespaces: [shop]}]}, got ${describe(raw)}`);
    const mark = issues.list.length;
    checkFields(raw, pp, POLICY_FIELDS, issues);
    let name: string | undefined;
    const n = raw['name'];
    if (n === undefined || n === null) issues.add(join(pp, 'name'), 'is required (a policy name)');
    else if (typeof n !== 'string' || !NAME.test(n)) issues.add(join(pp, 'name'), `must be a policy name: 1 to 63 lowercase letters, digits or '-', got ${describe(n)}`);
    else if (names.has(n)) issues.add(join(pp, 'name'), `duplicate policy name '${n}', also used by ${path}[${names.get(n)}]`);
    else names.set((name = n), i);
    let action: 'allow' | 'deny' | undefined;
    if (raw['action'] === undefined || raw['action'] === null) issues.add(join(pp, 'action'), 'is required (ALLOW or DENY)');
    else action = enumValue(raw['action'], join(pp, 'action'), ['allow', 'deny'] as const, issues);

    const services = optionalList(raw, 'services', pp, "must list at least one service (omit 'services' for every service)", issues, (s, sp) => {
      if (typeof s === 'string' && NAME.test(s)) return s;
      issues.add(sp, `must be a service name, got ${describe(s)}`);
      return undefined;
    });
    const from = optionalList(raw, 'from', pp, "must list at least one source (omit 'from' for any source)", issues, (s, sp): AuthzSource | undefined => {
      if (!isMapping(s)) return void issues.add(sp, `must be a mapping like {principals: [cluster.local/ns/shop/sa/web], namespaces: [shop]}, got ${describe(s)}`);
      checkFields(s, sp, SOURCE_FIELDS, issues);
      const principals = patternList(s, 'principals', sp, 'a principal (<trust domain>/ns/<ns>/sa/<sa>)', issues);
      const namespaces = patternList(s, 'namespaces', sp, 'a namespace', issues);
      const notPrincipals = patternList(s, 'notPrincipals', sp, 'a principal (<trust domain>/ns/<ns>/sa/<sa>)', issues);
      const notNamespaces = patternList(s, 'notNamespaces', sp, 'a namespace', issues);
      if (SOURCE_FIELDS.every((f) => s[f] === undefined)) {
        issues.add(sp, "must name principals or namespaces (or notPrincipals, notNamespaces; an empty source would match every client: omit 'from' for that)");
      }
      const src: AuthzSource = {};
      if (principals) src.principals = principals;
      if (namespaces) src.namespaces = namespaces;
      if (notPrincipals) src.notPrincipals = notPrincipals;
      if (notNamespaces) src.notNamespaces = notNamespaces;
      return src;
    });
    const to = optionalList(raw, 'to', pp, "must list at least one operation (omit 'to' for any port)", issues, (o, op): AuthzOperation | undefined => {
      if (!isMapping(o)) return void issues.add(op, `must be a mapping like {ports: [8080]}, got ${describe(o)}`);
      checkFields(o, op, OPERATION_FIELDS, issues);
      const ports = optionalList(o, 'ports', op, 'must list at least one port', issues, (p, pp2) => {
        if (typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535) return p;
        issues.add(pp2, `must be a port between 1 and 65535 (the port the destination pod listens on), got ${describe(p)}`);
        return undefined;
      });
      if (o['ports'] === undefined || o['ports'] === null) issues.add(join(op, 'ports'), 'is required (a list)');
      return ports ? { ports } : undefined;
    });
    if (issues.list.length > mark || name === undefined || action === undefined) return;
    const policy: AuthorizationPolicy = { name, action };
    if (services) policy.services = services;
    if (from) policy.from = from;
    if (to) policy.to = to;
    out.push(policy);
  });
  return out;
}

/**
 * The cross-checks once every list is validated: a workload's node is one of `nodes`; an address belongs to one
 * workload; a policy names services that exist and are L4 (an L7 service's connections end at the proxy, whose
 * http.authz decides: a kernel verdict there would judge the proxy, not the client).
 */
export function checkMeshReferences(
  m: { workloads?: readonly Workload[]; nodes?: readonly MeshNode[]; authorization?: readonly AuthorizationPolicy[] },
  services: ReadonlyMap<string, { l7: boolean }>,
  issues: Issues,
): void {
  const nodes = new Set((m.nodes ?? []).map((n) => n.name));
  const owners = new Map<string, string>();
  (m.workloads ?? []).forEach((w, i) => {
    if (w.node !== undefined && !nodes.has(w.node)) {
      issues.add(`workloads[${i}].node`, `node '${w.node}' is not in the top-level nodes list (where its tunnel end is)`);
    }
    (w.addresses ?? []).forEach((a, k) => {
      const owner = owners.get(a);
      if (owner !== undefined) issues.add(`workloads[${i}].addresses[${k}]`, `address ${a} is already an address of workload '${owner}'`);
      else owners.set(a, w.name);
    });
  });
  (m.authorization ?? []).forEach((p, i) => {
    (p.services ?? []).forEach((s, k) => {
      const svc = services.get(s);
      if (!svc) issues.add(`authorization[${i}].services[${k}]`, `service '${s}' is not defined`);
      else if (svc.l7) issues.add(`authorization[${i}].services[${k}]`, `service '${s}' has http rules: its connections end at the L7 proxy, authorize them with its http.authz`);
    });
  });
}
