// The L7 part of a Service: GAMMA HTTPRoutes (Gateway API v1, a parentRef to a Service) and sockmesh.io annotations
// -> the file schema's `http` and `healthCheck` (validated by the model with the rest of the service), and the
// routes' status. Pure, no I/O.
//
// HTTPRoute -> http.routes, one model route per rule match (a rule's matches are ORed), ordered by the Gateway API's
// precedence across every route attached to the service (Exact path, then the longest PathPrefix, then
// RegularExpression; then a method; then more header matches; then the oldest route, then namespace/name; then rule
// and match order), because the model's routes are first-match-wins.
//   path Exact -> exact; PathPrefix -> path-element prefix ('/foo' matches /foo and /foo/x, not /foobar: a regex
//   '/foo(?:/.*)?', '/' -> every path); RegularExpression -> regex (anchored, linear-time: backreferences refused);
//   headers Exact/RegularExpression; method. A rule's weighted backendRefs -> the route's split over backend groups:
//   the parent itself is the 'default' group; another Service (same namespace, a port of it) is a group of its own
//   holding that service's endpoints (the same kube-proxy semantics); a ref that does not resolve is an empty group,
//   which the proxy answers with 503 (the Gateway API says 500). RequestHeaderModifier / ResponseHeaderModifier set and
//   remove; timeouts.request -> the route timeout; timeouts.backendRequest -> the per-try timeout (with retries) or
//   the route timeout (without: one try); the experimental retry {codes, attempts, backoff} -> retries.
// Not expressible in the model, so a route using it is not applied (Accepted False, UnsupportedValue, naming the
// field): query parameter matches, URLRewrite, RequestRedirect, RequestMirror, ExtensionRef and other filters, header
// modifier `add` (append), filters on a backendRef, weights above 10,000, consumer routes (a parentRef to a Service in
// another namespace), and a Service with UDP ports. backendRefs to another namespace need a ReferenceGrant, which
// is not read: ResolvedRefs False, RefNotPermitted.
//
// sockmesh.io annotations on the Service (what the Gateway API does not have; values as in the file schema):
//   sockmesh.io/algorithm          random | weighted | maglev            L4 balancing of the VIP
//   sockmesh.io/maglev-table-size  a prime 251..65521                    with algorithm maglev
//   sockmesh.io/health-check       {type: http, path: /healthz, ...}     active health checks (L4 and L7)
//   sockmesh.io/http               "true"                                L7 without an HTTPRoute (one default route)
//   sockmesh.io/fail-mode          closed | open                         connect() while the proxy is down (L7)
//   sockmesh.io/balancer           least-request | round-robin           (L7)
//   sockmesh.io/upstream-protocol  downstream | http1 | h2               (L7)
//   sockmesh.io/circuit-breaker    {maxConnections: 100, maxRequests: 200, maxPendingRequests: .., maxRetries: ..} (L7)
//   sockmesh.io/outlier-detection  {consecutive5xx: 5, baseEjectionTime: 30s, ...}  ('{}' = the defaults) (L7)
//   sockmesh.io/access-log-sample  0..1                                  share of requests logged (L7)
//   sockmesh.io/authz              {default: deny, rules: [{name: r, action: allow, from: [spiffe://<td>/ns/<ns>/sa/<sa>]}]}
//                                  L7 authorization; `from` names service accounts' identities (the pods' workloads) (L7)
// Mapping values are YAML flow mappings or JSON. The L7 ones apply only to a service that is L7 (an accepted
// HTTPRoute, or sockmesh.io/http: "true"); elsewhere they are reported as ignored. An unknown sockmesh.io/ key is
// reported with the closest known one.
import { parse as parseYaml } from 'yaml';
import { closest } from '../agent/model/suggest.js';
import type { Protocol } from '../agent/model/types.js';
import { portEndpoints, type Endpoint, type SliceProblem } from './translate-endpoints.js';
import { labelOf } from './translate-names.js';
import type { Ctx, RouteIndex, RouteStatusUpdate, TranslateIssue } from './translate-types.js';
import type { KBackendRef, KCondition, KHTTPHeaderFilter, KHTTPRoute, KHTTPRouteMatch, KHTTPRouteRule, KParentRef, KService } from './types.js';

export const CONTROLLER_NAME = 'sockmesh.io/mesh';
const ANNOTATION_PREFIX = 'sockmesh.io/';
const MAX_WEIGHT = 10_000;

/** annotation -> where it goes: [field of the service object or of http, L7 only, parse as a mapping] */
const ANNOTATIONS: Record<string, { field: string; l7: boolean; mapping: boolean; service?: boolean }> = {
  'sockmesh.io/algorithm': { field: 'algorithm', l7: false, mapping: false, service: true },
  'sockmesh.io/maglev-table-size': { field: 'maglev', l7: false, mapping: false, service: true },
  'sockmesh.io/health-check': { field: 'healthCheck', l7: false, mapping: true, service: true },
  'sockmesh.io/http': { field: '', l7: true, mapping: false },
  'sockmesh.io/fail-mode': { field: 'failMode', l7: true, mapping: false },
  'sockmesh.io/balancer': { field: 'balancer', l7: true, mapping: false },
  'sockmesh.io/upstream-protocol': { field: 'upstreamProtocol', l7: true, mapping: false },
  'sockmesh.io/circuit-breaker': { field: 'circuitBreaker', l7: true, mapping: true },
  'sockmesh.io/outlier-detection': { field: 'outlierDetection', l7: true, mapping: true },
  'sockmesh.io/access-log-sample': { field: 'accessLogSample', l7: true, mapping: false },
  'sockmesh.io/authz': { field: 'authz', l7: true, mapping: true },
};
export const SOCKMESH_ANNOTATIONS: readonly string[] = Object.keys(ANNOTATIONS);

// ---- which routes attach where ----

const isServiceRef = (r: { group?: string; kind?: string }) => (r.group ?? '') === '' || r.group === 'core' ? (r.kind ?? 'Service') === 'Service' : false;
const routeKey = (r: KHTTPRoute) => `${r.metadata.namespace ?? ''}/${r.metadata.name ?? ''}`;

function cond(type: string, ok: boolean, reason: string, message: string, gen: number | undefined): KCondition {
  const c: KCondition = { type, status: ok ? 'True' : 'False', reason, message };
  if (gen !== undefined) c.observedGeneration = gen;
  return c;
}

export function buildRouteIndex(routes: Iterable<KHTTPRoute>, services: ReadonlyMap<string, KService>): RouteIndex {
  const idx: RouteIndex = { byParent: new Map(), routes: new Map(), issues: [] };
  for (const route of routes) {
    const key = routeKey(route);
    const ns = route.metadata.namespace ?? '';
    const gen = route.metadata.generation;
    const detached = new Map<number, KCondition>();
    const refs = route.spec?.parentRefs ?? [];
    const backends = new Set<string>();
    for (const rule of route.spec?.rules ?? []) {
      for (const b of rule?.backendRefs ?? []) if (b && isServiceRef(b)) backends.add(`${b.namespace ?? ns}/${b.name}`);
    }
    let mine = false;
    refs.forEach((p, i) => {
      if (!p || !isServiceRef(p)) return; // a Gateway or another kind: not ours to attach to, nor to write status for
      mine = true;
      const target = `${p.namespace ?? ns}/${p.name}`;
      if ((p.namespace ?? ns) !== ns) {
        detached.set(i, cond('Accepted', false, 'UnsupportedValue', `consumer routes (a parentRef to a Service in namespace ${p.namespace}) are not supported`, gen));
        return;
      }
      const svc = services.get(target);
      if (!svc) return void detached.set(i, cond('Accepted', false, 'NoMatchingParent', `Service ${target} not found`, gen));
      const ports = svc.spec?.ports ?? [];
      if (p.port !== undefined && !ports.some((sp) => sp?.port === p.port)) {
        return void detached.set(i, cond('Accepted', false, 'NoMatchingParent', `Service ${target} has no port ${p.port}`, gen));
      }
      if (p.sectionName !== undefined && !ports.some((sp) => sp?.name === p.sectionName)) {
        return void detached.set(i, cond('Accepted', false, 'NoMatchingParent', `Service ${target} has no port named ${p.sectionName}`, gen));
      }
      let list = idx.byParent.get(target);
      if (!list) idx.byParent.set(target, (list = []));
      const prev = list.find((a) => a.route === route);
      if (prev) prev.parents.push(i);
      else list.push({ route, key, parents: [i], backends: [...backends].sort() });
    });
    if (mine) idx.routes.set(key, { route, detached });
  }
  const ts = (r: KHTTPRoute) => r.metadata.creationTimestamp ?? '';
  for (const list of idx.byParent.values()) {
    list.sort((a, b) => (ts(a.route) < ts(b.route) ? -1 : ts(a.route) > ts(b.route) ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
  return idx;
}

// ---- one service's L7 part ----

export interface GroupBackends {
  name: string;
  /** per port entry of the service (index as the entries passed to httpFor): its backends */
  endpoints: Endpoint[][];
}

interface Verdict {
  accepted: KCondition;
  resolved: KCondition;
}

export interface HttpResult {
  /** fields of the service's config object: http, healthCheck, algorithm, maglev */
  serviceFields: Record<string, unknown>;
  /** backend groups other than 'default' the routes split to */
  groups: GroupBackends[];
  issues: TranslateIssue[];
  /** the routes attached to this service */
  routeKeys: string[];
  /** route key -> its verdict for this parent (before the model's validation) */
  status: [string, Verdict][];
  /** where a model path of the service's http/healthCheck came from (for issues the model's validation finds) */
  objPaths: (modelPath: string) => { object: string; path: string } | undefined;
  /** set when the model refused the L7 part: the first reason (translate.ts serves the VIP at L4 then) */
  refused?: string;
}

interface EntryInfo {
  port: number;
  protocol: Protocol;
  name?: string;
}

/** A model route with what orders it and where it came from. */
interface Made {
  obj: Record<string, unknown>;
  rank: number[];
  order: number;
  object: string;
  path: string;
}

function parseMapping(text: string): unknown {
  try {
    return parseYaml(text);
  } catch (e) {
    return new Error((e as Error).message.split('\n')[0]);
  }
}

export function httpFor(svc: KService, key: string, entries: EntryInfo[], ctx: Ctx): HttpResult {
  const ns = svc.metadata.namespace ?? '';
  const object = `Service ${key}`;
  const res: HttpResult = { serviceFields: {}, groups: [], issues: [], routeKeys: [], status: [], objPaths: () => undefined };
  const issue = (obj: string, path: string, message: string) => res.issues.push({ object: obj, path, message });

  // annotations
  const http: Record<string, unknown> = {};
  const l7Only: string[] = [];
  let wantHttp = false;
  const annotationOf = new Map<string, string>(); // model path prefix -> annotation
  for (const [k, raw] of Object.entries(svc.metadata.annotations ?? {})) {
    if (!k.startsWith(ANNOTATION_PREFIX)) continue;
    const a = ANNOTATIONS[k];
    const path = `metadata.annotations[${JSON.stringify(k)}]`;
    if (!a) {
      const guess = closest(k, SOCKMESH_ANNOTATIONS);
      issue(object, path, `unknown annotation${guess ? ` (did you mean '${guess}'?)` : ` (known: ${SOCKMESH_ANNOTATIONS.join(', ')})`}; ignored`);
      continue;
    }
    let value: unknown = raw;
    if (k === 'sockmesh.io/http') {
      if (raw !== 'true' && raw !== 'false') issue(object, path, `must be "true" or "false", got ${JSON.stringify(raw)}; ignored`);
      wantHttp = raw === 'true';
      continue;
    }
    if (a.mapping) {
      value = parseMapping(raw);
      if (value instanceof Error || value === null || typeof value !== 'object' || Array.isArray(value)) {
        issue(object, path, `must be a mapping (YAML flow or JSON, like '{maxConnections: 100}'), got ${JSON.stringify(raw)}${value instanceof Error ? `: ${value.message}` : ''}; ignored`);
        continue;
      }
    } else if (k === 'sockmesh.io/access-log-sample' || k === 'sockmesh.io/maglev-table-size') {
      const n = Number(raw);
      value = raw.trim() !== '' && Number.isFinite(n) ? n : raw;
    }
    if (a.service) {
      res.serviceFields[a.field] = a.field === 'maglev' ? { tableSize: value } : value;
      annotationOf.set(a.field, k);
    } else {
      http[a.field] = value;
      annotationOf.set(`http.${a.field}`, k);
      l7Only.push(k);
    }
  }

  // routes
  const attached = ctx.routes.byParent.get(key) ?? [];
  const udp = entries.some((e) => e.protocol !== 'tcp');
  const groups = new Map<string, GroupBackends>();
  const made: Made[] = [];
  let order = 0;
  attached.forEach((a, ai) => {
    res.routeKeys.push(a.key);
    const gen = a.route.metadata.generation;
    const robj = `HTTPRoute ${a.key}`;
    const unsupported: string[] = [];
    const unresolved: { reason: string; message: string }[] = [];
    const mine: Made[] = [];
    if (udp) unsupported.push(`Service ${key} has UDP ports: HTTP routing needs every port to be TCP`);
    (a.route.spec?.rules ?? []).forEach((rule, ri) => {
      if (!rule) return;
      const rp = `spec.rules[${ri}]`;
      const ruleObj = ruleOf(rule, rp, ns, key, a.key, entries, ctx, groups, unsupported, unresolved);
      if (!ruleObj) return;
      const matches: (KHTTPRouteMatch | undefined)[] = rule.matches && rule.matches.length > 0 ? rule.matches : [undefined];
      matches.forEach((m, mi) => {
        const mp = `${rp}.matches[${mi}]`;
        const match = matchOf(m, mp, unsupported);
        if (!match) return;
        mine.push({
          obj: { name: labelOf(a.route.metadata.name ?? 'route', ri, mi), match: match.obj, ...ruleObj },
          rank: [...match.rank, ai],
          order: order++,
          object: robj,
          path: m ? mp : rp,
        });
      });
    });
    let accepted: KCondition;
    if (unsupported.length > 0) {
      accepted = cond('Accepted', false, 'UnsupportedValue', `not applied: ${unsupported.join('; ')}`, gen);
      for (const u of unsupported) issue(robj, '', u);
    } else {
      accepted = cond('Accepted', true, 'Accepted', 'applied to every port of the Service (sockmesh applies HTTP policy per service)', gen);
      made.push(...mine);
    }
    const resolved = unresolved.length === 0
      ? cond('ResolvedRefs', true, 'ResolvedRefs', 'all backendRefs resolved', gen)
      : cond('ResolvedRefs', false, unresolved[0]!.reason, `${unresolved.map((u) => u.message).join('; ')} (requests to it are answered 503)`, gen);
    res.status.push([a.key, { accepted, resolved }]);
  });

  made.sort((x, y) => {
    for (let i = 0; i < x.rank.length; i++) if (x.rank[i] !== y.rank[i]) return x.rank[i]! - y.rank[i]!;
    return x.order - y.order;
  });
  // route names are unique in the service (two routes' rules may clip to one label)
  const names = new Set<string>();
  for (const m of made) {
    let n = m.obj['name'] as string;
    for (let k = 2; names.has(n); k++) n = labelOf(m.obj['name'] as string, k);
    names.add(n);
    m.obj['name'] = n;
  }

  const l7 = made.length > 0 || wantHttp;
  if (l7) {
    if (made.length > 0) http['routes'] = made.map((m) => m.obj);
    res.serviceFields['http'] = http;
    res.groups = [...groups.values()];
  } else if (l7Only.length > 0) {
    issue(object, 'metadata.annotations', `${l7Only.join(', ')} apply to L7 services only (an accepted HTTPRoute, or sockmesh.io/http: "true"); ignored`);
  }
  res.objPaths = (p) => {
    const r = /^http\.routes\[(\d+)\]/.exec(p);
    if (r && made[Number(r[1])]) {
      const m = made[Number(r[1])]!;
      return { object: m.object, path: `${m.path} (model ${p})` };
    }
    for (const [prefix, ann] of annotationOf) {
      if (p === prefix || p.startsWith(`${prefix}.`) || p.startsWith(`${prefix}[`)) return { object, path: `metadata.annotations[${JSON.stringify(ann)}] (model ${p})` };
    }
    return undefined;
  };
  return res;
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A rule match -> the model's match and its precedence rank (smaller first); undefined when unsupported. */
function matchOf(m: KHTTPRouteMatch | undefined, mp: string, unsupported: string[]): { obj: Record<string, unknown>; rank: number[] } | undefined {
  const obj: Record<string, unknown> = {};
  const before = unsupported.length;
  const type = m?.path?.type ?? 'PathPrefix';
  const value = m?.path?.value ?? '/';
  let pathRank = 1;
  let prefixLen = 0;
  if (type === 'Exact') {
    obj['path'] = { exact: value };
    pathRank = 0;
  } else if (type === 'PathPrefix') {
    const p = value.replace(/\/+$/, '');
    prefixLen = p.length;
    if (p !== '') obj['path'] = { regex: `${escapeRegex(p)}(?:/.*)?` };
  } else if (type === 'RegularExpression') {
    obj['path'] = { regex: value };
    pathRank = 2;
  } else unsupported.push(`${mp}.path.type ${JSON.stringify(type)} is not supported (Exact, PathPrefix, RegularExpression)`);
  if (m?.method) obj['methods'] = [m.method];
  const headers: Record<string, unknown>[] = [];
  const seen = new Set<string>();
  (m?.headers ?? []).forEach((h, i) => {
    const t = h.type ?? 'Exact';
    const name = String(h.name).toLowerCase();
    if (seen.has(name)) return; // the Gateway API: the first match of a header name counts, later ones are ignored
    seen.add(name);
    if (t === 'Exact') headers.push({ name, exact: h.value });
    else if (t === 'RegularExpression') headers.push({ name, regex: h.value });
    else unsupported.push(`${mp}.headers[${i}].type ${JSON.stringify(t)} is not supported (Exact, RegularExpression)`);
  });
  if (headers.length > 0) obj['headers'] = headers;
  if (m?.queryParams && m.queryParams.length > 0) unsupported.push(`${mp}.queryParams: query parameter matches are not supported by sockmesh's routes`);
  if (unsupported.length > before) return undefined;
  return { obj, rank: [pathRank, -prefixLen, m?.method ? 0 : 1, -headers.length] };
}

function headerFilter(f: KHTTPHeaderFilter | undefined, fp: string, unsupported: string[]): Record<string, unknown> {
  const set: Record<string, string> = {};
  for (const h of f?.set ?? []) set[String(h.name).toLowerCase()] = h.value;
  if (f?.add && f.add.length > 0) unsupported.push(`${fp}.add: appending a header value is not supported (sockmesh's header rewrites set or remove)`);
  return { set, remove: [...(f?.remove ?? [])] };
}

/** The route fields of one rule (split, timeout, retries, header rewrites); undefined when it cannot be applied. */
function ruleOf(
  rule: KHTTPRouteRule, rp: string, ns: string, parentKey: string, route: string, entries: EntryInfo[], ctx: Ctx,
  groups: Map<string, GroupBackends>, unsupported: string[], unresolved: { reason: string; message: string }[],
): Record<string, unknown> | undefined {
  const before = unsupported.length;
  const out: Record<string, unknown> = {};
  (rule.filters ?? []).forEach((f, i) => {
    const fp = `${rp}.filters[${i}]`;
    if (f?.type === 'RequestHeaderModifier') out['requestHeaders'] = headerFilter(f.requestHeaderModifier, `${fp}.requestHeaderModifier`, unsupported);
    else if (f?.type === 'ResponseHeaderModifier') out['responseHeaders'] = headerFilter(f.responseHeaderModifier, `${fp}.responseHeaderModifier`, unsupported);
    else unsupported.push(`${fp}: filter ${JSON.stringify(f?.type)} is not supported (sockmesh's routes have no ${f?.type === 'URLRewrite' ? 'URL rewrite' : f?.type === 'RequestRedirect' ? 'redirect' : 'such action'})`);
  });
  if (rule.sessionPersistence !== undefined) unsupported.push(`${rp}.sessionPersistence is not supported`);

  // backendRefs -> split
  const split = new Map<string, number>();
  const refs = rule.backendRefs ?? [];
  refs.forEach((b, i) => {
    const bp = `${rp}.backendRefs[${i}]`;
    if (!b) return;
    if (b.filters && b.filters.length > 0) unsupported.push(`${bp}.filters: filters on a backendRef are not supported`);
    const w = b.weight ?? 1;
    if (!Number.isInteger(w) || w < 0 || w > MAX_WEIGHT) return void unsupported.push(`${bp}.weight must be 0 to ${MAX_WEIGHT} here, got ${JSON.stringify(b.weight)}`);
    if (w === 0) return; // no traffic, by definition
    const g = groupOf(b, bp, ns, parentKey, entries, ctx, groups, unresolved);
    split.set(g, (split.get(g) ?? 0) + w);
  });
  if (split.size === 0) {
    // No backend (or all weights 0): the Gateway API answers 500; the proxy answers an empty group with 503.
    const g = labelOf('no-backends');
    if (!groups.has(g)) groups.set(g, { name: g, endpoints: entries.map(() => []) });
    split.set(g, 1);
  }
  let total = 0;
  for (const w of split.values()) total += w;
  if (total > MAX_WEIGHT * split.size) unsupported.push(`${rp}.backendRefs: weights above ${MAX_WEIGHT} per group are not supported`);
  out['split'] = [...split].map(([group, weight]) => ({ group, weight: Math.min(weight, MAX_WEIGHT) }));

  // timeouts and retries
  const request = rule.timeouts?.request;
  const backend = rule.timeouts?.backendRequest;
  if (rule.retry) {
    const r: Record<string, unknown> = {};
    if (rule.retry.attempts !== undefined) r['attempts'] = rule.retry.attempts;
    if (rule.retry.codes && rule.retry.codes.length > 0) {
      r['retriableStatusCodes'] = rule.retry.codes;
      r['retryOn'] = ['connect-failure', 'reset', 'retriable-status-codes'];
    }
    if (rule.retry.backoff !== undefined) r['backoff'] = { base: rule.retry.backoff };
    if (backend !== undefined) r['perTryTimeout'] = backend;
    out['retries'] = r;
    if (request !== undefined) out['timeout'] = request;
  } else if (request !== undefined || backend !== undefined) {
    // one try: the backend request's timeout bounds the whole exchange too
    out['timeout'] = request === undefined ? backend : backend === undefined ? request : shorter(request, backend);
  }
  void route;
  return unsupported.length > before ? undefined : out;
}

/** the shorter of two Gateway durations (GEP-2257: '1h', '10s', '500ms', '1m30s'); '0s' = none, so the other */
function shorter(a: string, b: string): string {
  const ms = (d: string) => {
    let t = 0;
    for (const m of d.matchAll(/(\d+)(ms|h|m|s)/g)) t += Number(m[1]) * ({ h: 3_600_000, m: 60_000, s: 1000, ms: 1 } as Record<string, number>)[m[2]!]!;
    return t;
  };
  const x = ms(a);
  const y = ms(b);
  if (x === 0) return b;
  if (y === 0) return a;
  return x <= y ? a : b;
}

/** The backend group a backendRef sends to (adding it to `groups`); unresolved refs get an empty group. */
function groupOf(
  b: KBackendRef, bp: string, ns: string, parentKey: string, entries: EntryInfo[], ctx: Ctx,
  groups: Map<string, GroupBackends>, unresolved: { reason: string; message: string }[],
): string {
  const target = `${b.namespace ?? ns}/${b.name}`;
  const empty = (reason: string, message: string) => {
    unresolved.push({ reason, message: `${bp}: ${message}` });
    const g = labelOf('unresolved', b.name ?? 'x', b.port ?? 0);
    if (!groups.has(g)) groups.set(g, { name: g, endpoints: entries.map(() => []) });
    return g;
  };
  if (!isServiceRef(b)) return empty('InvalidKind', `kind ${b.group ? `${b.group}/` : ''}${b.kind} is not supported (only Service)`);
  if ((b.namespace ?? ns) !== ns) return empty('RefNotPermitted', `Service ${target} is in another namespace (ReferenceGrants are not read)`);
  const svc = ctx.services.get(target);
  if (!svc) return empty('BackendNotFound', `Service ${target} not found`);
  if (target === parentKey) {
    if (b.port !== undefined && !(svc.spec?.ports ?? []).some((p) => p?.port === b.port)) return empty('BackendNotFound', `Service ${target} has no port ${b.port}`);
    return 'default';
  }
  if (b.port === undefined) return empty('BackendNotFound', `a Service backendRef needs a port`);
  const sp = (svc.spec?.ports ?? []).find((p) => p?.port === b.port && (p.protocol ?? 'TCP').toUpperCase() === 'TCP');
  if (!sp) return empty('BackendNotFound', `Service ${target} has no TCP port ${b.port}`);
  const g = labelOf(b.name, b.port);
  if (!groups.has(g)) {
    const problems: SliceProblem[] = []; // reported by that service's own translation
    const eps = portEndpoints(svc, sp, ctx.slices.get(target) ?? [], ctx.node, problems);
    groups.set(g, { name: g, endpoints: entries.map(() => eps) });
  }
  return g;
}

// ---- route status ----

/** The status of every route that has a Service parentRef, from what each parent's translation decided. */
export function routeStatuses(https: { key: string; http: HttpResult }[], idx: RouteIndex): RouteStatusUpdate[] {
  const verdicts = new Map<string, Map<string, Verdict>>(); // route key -> parent key -> verdict
  for (const { key, http } of https) {
    for (const [rk, v] of http.status) {
      let m = verdicts.get(rk);
      if (!m) verdicts.set(rk, (m = new Map()));
      const gen = v.accepted.observedGeneration;
      m.set(key, http.refused !== undefined && v.accepted.status === 'True'
        ? { ...v, accepted: cond('Accepted', false, 'UnsupportedValue', `not applied: the model refused the Service's HTTP policy: ${http.refused}`, gen) }
        : v);
    }
  }
  const out: RouteStatusUpdate[] = [];
  for (const rk of [...idx.routes.keys()].sort()) {
    const { route, detached } = idx.routes.get(rk)!;
    const ns = route.metadata.namespace ?? '';
    const gen = route.metadata.generation;
    const parents: RouteStatusUpdate['parents'] = [];
    (route.spec?.parentRefs ?? []).forEach((p: KParentRef, i) => {
      if (!p || !isServiceRef(p)) return;
      const parentRef: KParentRef = { group: p.group ?? '', kind: p.kind ?? 'Service', name: p.name };
      if (p.namespace !== undefined) parentRef.namespace = p.namespace;
      if (p.port !== undefined) parentRef.port = p.port;
      if (p.sectionName !== undefined) parentRef.sectionName = p.sectionName;
      let conditions: KCondition[];
      const d = detached.get(i);
      const v = verdicts.get(rk)?.get(`${p.namespace ?? ns}/${p.name}`);
      if (d) conditions = [d, cond('ResolvedRefs', true, 'ResolvedRefs', 'not evaluated: the route is not attached', gen)];
      else if (v) conditions = [v.accepted, v.resolved];
      else {
        conditions = [
          cond('Accepted', false, 'NoMatchingParent', `Service ${p.namespace ?? ns}/${p.name} has no cluster IP sockmesh serves (headless, ExternalName, another proxy's, or invalid)`, gen),
          cond('ResolvedRefs', true, 'ResolvedRefs', 'not evaluated: the route is not attached', gen),
        ];
      }
      parents.push({ parentRef, controllerName: CONTROLLER_NAME, conditions });
    });
    const u: RouteStatusUpdate = { namespace: ns, name: route.metadata.name ?? '', parents };
    if (gen !== undefined) u.generation = gen;
    out.push(u);
  }
  return out;
}
