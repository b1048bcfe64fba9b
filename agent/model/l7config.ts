// The L7 part of a config (a service's `http` and `healthCheck`, the top-level `workloads`) -> the types of
// l7.ts. Called by config.ts for each service that carries them, with what it knows of the rest of the service
// (ServiceShape). Same rules as config.ts: every problem collected with the path to its field, unknown fields
// are errors with a did-you-mean, defaults are Envoy's where Envoy has one.
import { parseDuration, parseSize } from './duration.js';
import {
  boolField,
  checkFields,
  describe,
  enumField,
  enumValue,
  intField,
  isMapping,
  join,
  listField,
  mappingField,
  numberField,
  stringField,
  type Issues,
  type Obj,
} from './fields.js';
import { workloadMeshFields } from './meshconfig.js';
import { closest } from './suggest.js';
import { parseSpiffeId } from './spiffe.js';
import { linearRegex } from './regex.js';
import {
  DEFAULT_CIRCUIT_BREAKER,
  type Authz,
  type AuthzRule,
  type Balancer,
  type CircuitBreaker,
  type FailMode,
  type ForwardedHeaders,
  type HeaderMatch,
  type HeaderRewrite,
  type HealthCheck,
  type HttpPolicy,
  type OutlierDetection,
  type RetryOn,
  type RetryPolicy,
  type Route,
  type RouteMatch,
  type StringMatch,
  type UpstreamProtocol,
  type WeightedGroup,
  type Workload,
} from './l7.js';
import type { Family, Protocol } from './types.js';

/** What the L7 validation needs to know of the service around it (built by config.ts). */
export interface ServiceShape {
  /** the service name, or its path when the name is invalid: messages name it */
  label: string;
  ports: { index: number; protocol: Protocol }[];
  /** families of the service's VIPs (each VIP is a frontend per port entry) */
  families: Set<Family>;
  /** backend group ('default' = backends without one) -> the address families it has backends of */
  groups: Map<string, Set<Family>>;
  /** workload names authorization rules may name; absent = none are defined */
  workloads?: { has(name: string): boolean };
  /** see ValidateOptions.emptyGroupsAllowed in config.ts */
  emptyGroupsAllowed: boolean;
}

// ---- defaults (Envoy's where Envoy has one) ----

export const DEFAULT_ROUTE_TIMEOUT_MS = 15_000;
export const DEFAULT_RETRY_ATTEMPTS = 1; // Envoy's num_retries
/** Envoy needs retry_on to retry at all; a `retries:` block without it means the failures that are safe to retry. */
export const DEFAULT_RETRY_ON: readonly RetryOn[] = ['connect-failure', 'reset', 'gateway-error'];
export const DEFAULT_BACKOFF_BASE_MS = 25;
/** Envoy: max_interval defaults to 10 x base_interval */
export const BACKOFF_MAX_FACTOR = 10;
export const DEFAULT_BUDGET_PERCENT = 20;
export const DEFAULT_MIN_RETRY_CONCURRENCY = 3;
/** Envoy's per-connection buffer limit, which also bounds what a retry can replay */
export const DEFAULT_BUFFER_LIMIT_BYTES = 1024 * 1024;
export const DEFAULT_OUTLIER: OutlierDetection = {
  consecutive5xx: 5,
  consecutiveGatewayErrors: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
  maxEjectionPercent: 10,
  intervalMs: 10_000,
};
export const DEFAULT_HEALTH_INTERVAL_MS = 5000;
export const DEFAULT_HEALTH_TIMEOUT_MS = 1000;
export const DEFAULT_HEALTHY_THRESHOLD = 2;
export const DEFAULT_UNHEALTHY_THRESHOLD = 3;
/** inclusive ranges */
export const DEFAULT_EXPECTED_STATUSES: [number, number][] = [[200, 399]];
export const DEFAULT_ROUTE_NAME = 'default';
/** The RBAC policy name the xDS translation uses for "default: allow" (xds/sockmesh.ts DEFAULT_ALLOW_POLICY) */
export const RESERVED_RULE_NAME = 'sockmesh-default-allow';

export const MAX_ROUTES = 1000;
export const MAX_RETRY_ATTEMPTS = 100;
export const MAX_LIMIT = 2 ** 31 - 1;
const MAX_DURATION_MS = 24 * 3_600_000;
const MAX_SPLIT_WEIGHT = 10_000;

const FAIL_MODES: readonly FailMode[] = ['closed', 'open'];
const BALANCERS: readonly Balancer[] = ['least-request', 'round-robin'];
export const UPSTREAM_PROTOCOLS: readonly UpstreamProtocol[] = ['downstream', 'http1', 'h2'];
const ACTIONS = ['allow', 'deny'] as const;
const HEALTH_KINDS = ['tcp', 'http', 'grpc'] as const;
export const RETRY_ON: readonly RetryOn[] = [
  '5xx', 'gateway-error', 'reset', 'connect-failure', 'retriable-status-codes', 'timeout',
  'cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted', 'unavailable',
];

const HTTP_FIELDS = ['failMode', 'balancer', 'upstreamProtocol', 'accessLogSample', 'forwarded', 'circuitBreaker', 'outlierDetection', 'authz', 'routes'] as const;
const FORWARDED_FIELDS = ['useRemoteAddress', 'trustedHops'] as const;
/** more proxies than this in front of a client is a configuration mistake, not a topology */
export const MAX_TRUSTED_HOPS = 16;
const BREAKER_FIELDS = ['maxConnections', 'maxPendingRequests', 'maxRequests', 'maxRetries'] as const;
const OUTLIER_FIELDS = ['consecutive5xx', 'consecutiveGatewayErrors', 'baseEjectionTime', 'maxEjectionTime', 'maxEjectionPercent', 'interval'] as const;
const AUTHZ_FIELDS = ['default', 'rules'] as const;
const RULE_FIELDS = ['name', 'action', 'from', 'methods', 'paths', 'headers'] as const;
const ROUTE_FIELDS = ['name', 'match', 'split', 'timeout', 'retries', 'requestHeaders', 'responseHeaders'] as const;
const MATCH_FIELDS = ['path', 'methods', 'headers'] as const;
const SPLIT_FIELDS = ['group', 'weight'] as const;
const RETRY_FIELDS = ['attempts', 'perTryTimeout', 'retryOn', 'retriableStatusCodes', 'backoff', 'budget', 'bufferLimit', 'nonIdempotent'] as const;
const BACKOFF_FIELDS = ['base', 'max'] as const;
const BUDGET_FIELDS = ['percent', 'minRetryConcurrency'] as const;
const REWRITE_FIELDS = ['set', 'remove'] as const;
const STRING_MATCH_FIELDS = ['exact', 'prefix', 'regex'] as const;
const HEADER_MATCH_FIELDS = ['name', 'exact', 'prefix', 'regex', 'invert'] as const;
const HEALTH_FIELDS = ['type', 'interval', 'timeout', 'healthyThreshold', 'unhealthyThreshold', 'path', 'expectedStatuses', 'grpcService'] as const;
const WORKLOAD_FIELDS = ['name', 'cgroups', 'identity', 'node', 'addresses'] as const;

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** RFC 9110 token, lower-case (header names are case-insensitive; the model keeps them lower-case) */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Header values: visible characters, spaces and tabs; never CR, LF or NUL (they would split the header section). */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/**
 * Headers a route or authorization rule can never see: the proxy consumes them (hop-by-hop, framing) before the
 * policy looks at the request, differently for HTTP/1.1 and HTTP/2. A match on one would silently never hold (a deny
 * rule on upgrade: websocket would let every upgrade through), so it is refused. (host is matched: it reads the
 * request's authority.)
 */
const UNMATCHABLE_HEADERS = new Set(['connection', 'content-length', 'http2-settings', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade']);
/** Headers the proxy itself owns: rewriting them would break framing or the connection. */
const RESERVED_HEADERS = new Set(['connection', 'content-length', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

const familyName = (f: Family) => (f === 4 ? 'IPv4' : 'IPv6');

/** A name within the config: lowercase letters, digits and '-'. */
function nameValue(v: unknown, path: string, what: string, issues: Issues): string | undefined {
  if (typeof v === 'string' && v.length <= 63 && NAME.test(v)) return v;
  issues.add(path, `must be ${what} name: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit, got ${describe(v)}`);
  return undefined;
}

/**
 * The start of an entry of a list of named things (workloads, authz rules): a mapping (else an issue showing its shape)
 * whose fields are checked and whose name is required, valid, not reserved and unique in the list (`names`: name ->
 * index). Undefined when it is not a mapping; `mark` is where its issues start.
 */
function namedEntry(
  v: unknown, path: string, index: number,
  o: {
    kind: string; like: string; fields: readonly string[]; required: string;
    names: Map<string, number>; seenAt: (index: number) => string; reserved?: [string, string];
  },
  issues: Issues,
): { entry: Obj; name: string | undefined; mark: number } | undefined {
  if (!isMapping(v)) {
    issues.add(path, `must be a mapping like ${o.like}, got ${describe(v)}`);
    return undefined;
  }
  const mark = issues.list.length;
  checkFields(v, path, o.fields, issues);
  let name: string | undefined;
  if (v['name'] === undefined || v['name'] === null) issues.add(join(path, 'name'), o.required);
  else name = nameValue(v['name'], join(path, 'name'), `a ${o.kind}`, issues);
  if (name !== undefined && name === o.reserved?.[0]) {
    issues.add(join(path, 'name'), o.reserved[1]);
    name = undefined;
  }
  if (name !== undefined) {
    const seen = o.names.get(name);
    if (seen !== undefined) issues.add(join(path, 'name'), `duplicate ${o.kind} name '${name}', also used by ${o.seenAt(seen)}`);
    else o.names.set(name, index);
  }
  return { entry: v, name, mark };
}

function durationField(obj: Obj, key: string, path: string, min: number, issues: Issues): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  const ms = parseDuration(v);
  if (typeof ms === 'string') {
    issues.add(join(path, key), ms);
    return undefined;
  }
  if (ms < min || ms > MAX_DURATION_MS) {
    issues.add(join(path, key), min > 0 ? `must be more than 0 and at most 24h, got ${JSON.stringify(v)}` : `must be at most 24h, got ${JSON.stringify(v)}`);
    return undefined;
  }
  return ms;
}

/**
 * An optional list field read item by item: `item` gets each value with its path and adds what it makes to `out`.
 * Undefined when the field is absent (or not a list: reported).
 */
function listOf<T>(obj: Obj, key: string, path: string, issues: Issues, item: (v: unknown, itemPath: string, out: T[]) => void): T[] | undefined {
  const list = listField(obj, key, path, false, issues);
  if (!list) return undefined;
  const out: T[] = [];
  list.forEach((v, k) => item(v, `${join(path, key)}[${k}]`, out));
  return out;
}

/** Methods: upper-case tokens ('GET'), each once. */
function methodList(obj: Obj, key: string, path: string, issues: Issues): string[] | undefined {
  return listOf<string>(obj, key, path, issues, (m, mp, out) => {
    if (typeof m !== 'string' || !METHOD.test(m)) issues.add(mp, `must be an HTTP method like GET, got ${describe(m)}`);
    else if (m !== m.toUpperCase()) issues.add(mp, `must be upper-case (methods are case-sensitive), got '${m}' (did you mean '${m.toUpperCase()}'?)`);
    else if (out.includes(m)) issues.add(mp, `duplicate method ${m}`);
    else out.push(m);
  });
}

/** A header name, lower-cased; undefined when invalid (reported). */
function headerName(v: unknown, path: string, issues: Issues): string | undefined {
  if (typeof v === 'string' && v.startsWith(':')) {
    issues.add(path, `pseudo-header ${v} cannot be matched or rewritten here${v === ':method' ? ' (use methods)' : v === ':path' ? ' (use path)' : ''}`);
    return undefined;
  }
  const name = typeof v === 'string' ? v.toLowerCase() : undefined;
  if (name === undefined || !HEADER_NAME.test(name)) {
    issues.add(path, `must be an HTTP header name (letters, digits and !#$%&'*+-.^_\`|~), got ${describe(v)}`);
    return undefined;
  }
  return name;
}

/** A regex, anchored as the proxy uses it; undefined when it does not compile (reported with the engine's words). */
export function regexError(source: string): string | undefined {
  try {
    linearRegex(source);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** {exact|prefix|regex: string}, exactly one of them. `pathLike`: exact and prefix values start with '/'. */
function stringMatch(v: unknown, path: string, pathLike: boolean, issues: Issues): StringMatch | undefined {
  if (!isMapping(v)) {
    issues.add(path, `must be a mapping like {prefix: /api}, {exact: /healthz} or {regex: '/v[0-9]+/.*'}, got ${describe(v)}`);
    return undefined;
  }
  checkFields(v, path, STRING_MATCH_FIELDS, issues);
  return stringMatchOf(v, path, pathLike, issues);
}

/** The exact/prefix/regex keys of a mapping (also used by header matches); undefined when none (not reported). */
function stringMatchOf(v: Obj, path: string, pathLike: boolean, issues: Issues): StringMatch | undefined {
  const keys = STRING_MATCH_FIELDS.filter((k) => v[k] !== undefined && v[k] !== null);
  if (keys.length === 0) {
    if (pathLike) issues.add(path, 'needs one of exact, prefix or regex');
    return undefined;
  }
  if (keys.length > 1) {
    issues.add(path, `has ${keys.join(' and ')}: give only one of exact, prefix or regex`);
    return undefined;
  }
  const key = keys[0]!;
  let value = v[key];
  // A header value written as a YAML number (exact: 1) means the text '1'.
  if (!pathLike && (typeof value === 'number' || typeof value === 'boolean')) value = String(value);
  if (typeof value !== 'string') {
    issues.add(join(path, key), `must be a string, got ${describe(value)}`);
    return undefined;
  }
  if (key === 'regex') {
    const err = regexError(value);
    if (err !== undefined) {
      issues.add(join(path, key), `invalid regular expression ${JSON.stringify(value)}: ${err}`);
      return undefined;
    }
    return { regex: value };
  }
  if (pathLike && !value.startsWith('/')) {
    issues.add(join(path, key), `a path must start with '/', got ${JSON.stringify(value)}`);
    return undefined;
  }
  return key === 'exact' ? { exact: value } : { prefix: value };
}

function headerMatches(obj: Obj, key: string, path: string, issues: Issues): HeaderMatch[] | undefined {
  return listOf<HeaderMatch>(obj, key, path, issues, (h, hp, out) => {
    if (!isMapping(h)) {
      issues.add(hp, `must be a mapping like {name: x-env, exact: prod}, got ${describe(h)}`);
      return;
    }
    checkFields(h, hp, HEADER_MATCH_FIELDS, issues);
    if (h['name'] === undefined || h['name'] === null) {
      issues.add(join(hp, 'name'), 'is required (a header name)');
      return;
    }
    let name = headerName(h['name'], join(hp, 'name'), issues);
    if (name !== undefined && UNMATCHABLE_HEADERS.has(name)) {
      issues.add(join(hp, 'name'), `header ${name} cannot be matched: the proxy consumes it (hop-by-hop or framing) before routes and rules see the request`);
      name = undefined;
    }
    const mark = issues.list.length;
    const value = stringMatchOf(h, hp, false, issues);
    const invert = boolField(h, 'invert', hp, issues);
    if (name === undefined || issues.list.length > mark) return;
    const m: HeaderMatch = { name };
    if (value) m.value = value;
    if (invert) m.invert = true;
    out.push(m);
  });
}

function rewrite(obj: Obj, key: string, path: string, issues: Issues): HeaderRewrite {
  const out: HeaderRewrite = { set: {}, remove: [] };
  const r = mappingField(obj, key, path, '{set: {x-from-mesh: "1"}, remove: [x-debug]}', issues);
  if (!r) return out;
  const rp = join(path, key);
  checkFields(r, rp, REWRITE_FIELDS, issues);
  const set = mappingField(r, 'set', rp, '{x-from-mesh: "1"}', issues);
  for (const [k, v] of Object.entries(set ?? {})) {
    const sp = join(join(rp, 'set'), k);
    const name = headerName(k, sp, issues);
    if (name === undefined) continue;
    if (RESERVED_HEADERS.has(name)) {
      issues.add(sp, `header ${name} is managed by the proxy and cannot be set`);
      continue;
    }
    if (Object.hasOwn(out.set, name)) {
      issues.add(sp, `header ${name} is set twice (header names are case-insensitive)`);
      continue;
    }
    const value = typeof v === 'number' || typeof v === 'boolean' ? String(v) : v;
    if (typeof value !== 'string' || !HEADER_VALUE.test(value)) {
      issues.add(sp, `must be a header value (a string without control characters), got ${describe(v)}`);
      continue;
    }
    out.set[name] = value;
  }
  const remove = listField(r, 'remove', rp, false, issues) ?? [];
  remove.forEach((h, k) => {
    const hp = `${join(rp, 'remove')}[${k}]`;
    const name = headerName(h, hp, issues);
    if (name === undefined) return;
    if (RESERVED_HEADERS.has(name)) issues.add(hp, `header ${name} is managed by the proxy and cannot be removed`);
    else if (Object.hasOwn(out.set, name)) issues.add(hp, `header ${name} is both set and removed`);
    else if (!out.remove.includes(name)) out.remove.push(name);
  });
  return out;
}

// ---- workloads ----

export function validateWorkloads(list: readonly unknown[], path: string, issues: Issues): Workload[] {
  const out: Workload[] = [];
  const names = new Map<string, number>();
  const cgroups = new Map<string, string>();
  list.forEach((item, i) => {
    const wp = `${path}[${i}]`;
    const e = namedEntry(item, wp, i, {
      kind: 'workload', like: '{name: frontend, cgroups: [/kubepods/pod1]}', fields: WORKLOAD_FIELDS, required: 'is required',
      names, seenAt: (seen) => `${path}[${seen}]`,
    }, issues);
    if (!e) return;
    const { entry: w, name, mark } = e;
    const paths: string[] = [];
    // A workload of another node has no cgroup on this machine: it is known by its addresses (meshconfig.ts).
    const remote = w['node'] !== undefined && w['node'] !== null;
    const cl = listField(w, 'cgroups', wp, !remote, issues);
    if (cl && cl.length === 0 && !remote) issues.add(join(wp, 'cgroups'), 'must list at least one cgroup path');
    (cl ?? []).forEach((c, k) => {
      const cp = `${join(wp, 'cgroups')}[${k}]`;
      if (typeof c !== 'string' || !c.startsWith('/') || c.includes('\0')) {
        issues.add(cp, `must be a cgroup path under the cgroup2 mount, starting with '/' (like /kubepods/pod1), got ${describe(c)}`);
        return;
      }
      const parts = c.split('/').filter((p) => p !== '');
      if (parts.some((p) => p === '.' || p === '..')) {
        issues.add(cp, `must not contain '.' or '..' segments, got ${JSON.stringify(c)}`);
        return;
      }
      const norm = `/${parts.join('/')}`;
      const owner = cgroups.get(norm);
      if (owner !== undefined) {
        issues.add(cp, `cgroup ${norm} is already a cgroup of ${owner}: a client must map to one workload`);
        return;
      }
      cgroups.set(norm, name !== undefined ? `workload '${name}'` : wp);
      paths.push(norm);
    });
    const mesh = workloadMeshFields(w, wp, issues);
    if (name !== undefined && issues.list.length === mark) out.push({ name, cgroups: paths, ...mesh });
  });
  return out;
}

// ---- health checks ----

/** '200', 200 or '200-299' (inclusive) */
function statusRange(v: unknown, path: string, issues: Issues): [number, number] | undefined {
  const m = typeof v === 'number' ? [String(v), String(v), String(v)] : typeof v === 'string' ? /^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$/.exec(v) : null;
  if (m) {
    const lo = Number(m[1]);
    const hi = m[2] !== undefined ? Number(m[2]) : lo;
    if (Number.isInteger(lo) && lo >= 100 && hi <= 599 && lo <= hi) return [lo, hi];
  }
  issues.add(path, `must be a status code 100-599 or an inclusive range like '200-299', got ${describe(v)}`);
  return undefined;
}

export function validateHealthCheck(raw: unknown, path: string, shape: ServiceShape, issues: Issues): HealthCheck | undefined {
  if (!isMapping(raw)) {
    issues.add(path, `must be a mapping like {type: http, path: /healthz}, got ${describe(raw)}`);
    return undefined;
  }
  const mark = issues.list.length;
  checkFields(raw, path, HEALTH_FIELDS, issues);
  if (raw['type'] === undefined || raw['type'] === null) issues.add(join(path, 'type'), `is required (one of ${HEALTH_KINDS.join(', ')})`);
  const kind = enumField(raw, 'type', path, HEALTH_KINDS, issues);
  const intervalMs = durationField(raw, 'interval', path, 1, issues) ?? DEFAULT_HEALTH_INTERVAL_MS;
  const timeoutMs = durationField(raw, 'timeout', path, 1, issues) ?? DEFAULT_HEALTH_TIMEOUT_MS;
  if (timeoutMs > intervalMs) issues.add(join(path, 'timeout'), `must not be longer than the interval (${intervalMs} ms), got ${timeoutMs} ms`);
  const healthyThreshold = intField(raw, 'healthyThreshold', path, 1, 1000, false, issues) ?? DEFAULT_HEALTHY_THRESHOLD;
  const unhealthyThreshold = intField(raw, 'unhealthyThreshold', path, 1, 1000, false, issues) ?? DEFAULT_UNHEALTHY_THRESHOLD;
  if (!shape.ports.some((p) => p.protocol === 'tcp') && shape.ports.length > 0) {
    issues.add(path, `service '${shape.label}' has only udp ports: health checks probe over TCP`);
  }
  const only = (key: string, kinds: string) => {
    if (raw[key] !== undefined && raw[key] !== null) issues.add(join(path, key), `applies only to type ${kinds}, not ${kind}`);
  };
  const hc: HealthCheck = { kind: kind ?? 'tcp', intervalMs, timeoutMs, healthyThreshold, unhealthyThreshold };
  if (kind === 'http') {
    const p = stringField(raw, 'path', path, true, issues);
    if (p !== undefined && (!p.startsWith('/') || /[\s\x00-\x1f]/.test(p))) issues.add(join(path, 'path'), `must be a request path starting with '/' without spaces, got ${JSON.stringify(p)}`);
    else if (p !== undefined) hc.path = p;
    const ranges = listField(raw, 'expectedStatuses', path, false, issues);
    if (ranges && ranges.length === 0) issues.add(join(path, 'expectedStatuses'), 'must list at least one status or range');
    hc.expectedStatuses = ranges && ranges.length > 0
      ? ranges.map((r, k) => statusRange(r, `${join(path, 'expectedStatuses')}[${k}]`, issues)).filter((r): r is [number, number] => !!r)
      : DEFAULT_EXPECTED_STATUSES.map(([a, b]) => [a, b]);
    only('grpcService', 'grpc');
  } else if (kind === 'grpc') {
    const svc = raw['grpcService'];
    if (svc !== undefined && svc !== null && typeof svc !== 'string') issues.add(join(path, 'grpcService'), `must be a gRPC service name (a string; '' = the whole server), got ${describe(svc)}`);
    hc.grpcService = typeof svc === 'string' ? svc : '';
    only('path', 'http');
    only('expectedStatuses', 'http');
  } else if (kind === 'tcp') {
    only('path', 'http');
    only('expectedStatuses', 'http');
    only('grpcService', 'grpc');
  }
  return issues.list.length === mark && kind ? hc : undefined;
}

// ---- http ----

export function validateHttp(raw: unknown, path: string, shape: ServiceShape, issues: Issues): HttpPolicy | undefined {
  if (!isMapping(raw)) {
    issues.add(path, `must be a mapping (write 'http: {}' for the defaults), got ${describe(raw)}`);
    return undefined;
  }
  const mark = issues.list.length;
  checkFields(raw, path, HTTP_FIELDS, issues);
  const udp = shape.ports.filter((p) => p.protocol !== 'tcp');
  if (udp.length > 0) {
    issues.add(path, `service '${shape.label}' has udp ports (ports[${udp.map((p) => p.index).join('], ports[')}]): http needs every port to be tcp`);
  }
  const policy: HttpPolicy = {
    failMode: enumField(raw, 'failMode', path, FAIL_MODES, issues) ?? 'closed',
    balancer: enumField(raw, 'balancer', path, BALANCERS, issues) ?? 'least-request',
    routes: [],
    circuitBreaker: circuitBreaker(raw, path, issues),
    accessLogSample: numberField(raw, 'accessLogSample', path, 0, 1, issues) ?? 0,
  };
  // (the closest word to 'http2' or 'h2c' is 'http1': say what is meant instead)
  const p0 = raw['upstreamProtocol'];
  const proto = typeof p0 === 'string' && /^(http\/?2(\.0)?|h2c)$/i.test(p0)
    ? void issues.add(join(path, 'upstreamProtocol'), `must be one of ${UPSTREAM_PROTOCOLS.join(', ')}, got ${describe(p0)} (did you mean 'h2'?)`)
    : enumField(raw, 'upstreamProtocol', path, UPSTREAM_PROTOCOLS, issues);
  if (proto !== undefined) policy.upstreamProtocol = proto;
  const fw = forwarded(raw, path, issues);
  if (fw) policy.forwarded = fw;
  const od = outlier(raw, path, issues);
  if (od) policy.outlierDetection = od;
  const az = authz(raw, path, shape, issues);
  if (az) policy.authz = az;
  policy.routes = routes(raw, path, shape, issues);
  return issues.list.length === mark ? policy : undefined;
}

function forwarded(raw: Obj, path: string, issues: Issues): ForwardedHeaders | undefined {
  const f = mappingField(raw, 'forwarded', path, '{useRemoteAddress: true, trustedHops: 0}', issues);
  if (!f) return undefined;
  const p = join(path, 'forwarded');
  checkFields(f, p, FORWARDED_FIELDS, issues);
  return {
    useRemoteAddress: boolField(f, 'useRemoteAddress', p, issues) ?? true,
    trustedHops: intField(f, 'trustedHops', p, 0, MAX_TRUSTED_HOPS, false, issues) ?? 0,
  };
}

function circuitBreaker(raw: Obj, path: string, issues: Issues): CircuitBreaker {
  const cb = mappingField(raw, 'circuitBreaker', path, '{maxConnections: 1024, maxRequests: 1024}', issues);
  if (!cb) return { ...DEFAULT_CIRCUIT_BREAKER };
  const p = join(path, 'circuitBreaker');
  checkFields(cb, p, BREAKER_FIELDS, issues);
  const d = DEFAULT_CIRCUIT_BREAKER;
  return {
    maxConnections: intField(cb, 'maxConnections', p, 1, MAX_LIMIT, false, issues) ?? d.maxConnections,
    maxPendingRequests: intField(cb, 'maxPendingRequests', p, 0, MAX_LIMIT, false, issues) ?? d.maxPendingRequests,
    maxRequests: intField(cb, 'maxRequests', p, 1, MAX_LIMIT, false, issues) ?? d.maxRequests,
    maxRetries: intField(cb, 'maxRetries', p, 0, MAX_LIMIT, false, issues) ?? d.maxRetries,
  };
}

function outlier(raw: Obj, path: string, issues: Issues): OutlierDetection | undefined {
  const o = mappingField(raw, 'outlierDetection', path, "{consecutive5xx: 5, baseEjectionTime: 30s} ('{}' for the defaults)", issues);
  if (!o) return undefined;
  const p = join(path, 'outlierDetection');
  checkFields(o, p, OUTLIER_FIELDS, issues);
  const d = DEFAULT_OUTLIER;
  const base = durationField(o, 'baseEjectionTime', p, 1, issues) ?? d.baseEjectionMs;
  const max = durationField(o, 'maxEjectionTime', p, 1, issues) ?? Math.max(d.maxEjectionMs, base);
  if (max < base) issues.add(join(p, 'maxEjectionTime'), `must not be shorter than baseEjectionTime (${base} ms), got ${max} ms`);
  return {
    consecutive5xx: intField(o, 'consecutive5xx', p, 0, MAX_LIMIT, false, issues) ?? d.consecutive5xx,
    consecutiveGatewayErrors: intField(o, 'consecutiveGatewayErrors', p, 0, MAX_LIMIT, false, issues) ?? d.consecutiveGatewayErrors,
    baseEjectionMs: base,
    maxEjectionMs: max,
    maxEjectionPercent: intField(o, 'maxEjectionPercent', p, 0, 100, false, issues) ?? d.maxEjectionPercent,
    intervalMs: durationField(o, 'interval', p, 1, issues) ?? d.intervalMs!,
  };
}

function authz(raw: Obj, path: string, shape: ServiceShape, issues: Issues): Authz | undefined {
  const a = mappingField(raw, 'authz', path, '{default: deny, rules: [...]}', issues);
  if (!a) return undefined;
  const p = join(path, 'authz');
  checkFields(a, p, AUTHZ_FIELDS, issues);
  const out: Authz = { defaultAction: enumField(a, 'default', p, ACTIONS, issues) ?? 'allow', rules: [] };
  const names = new Map<string, number>();
  (listField(a, 'rules', p, false, issues) ?? []).forEach((item, k) => {
    const rp = `${join(p, 'rules')}[${k}]`;
    const e = namedEntry(item, rp, k, {
      kind: 'rule', like: '{name: no-admin, action: deny, paths: [{prefix: /admin}]}', fields: RULE_FIELDS,
      required: 'is required (the reason a denied request is given)', names, seenAt: (seen) => `rules[${seen}]`,
      reserved: [RESERVED_RULE_NAME, `'${RESERVED_RULE_NAME}' is reserved (it stands for the default in Envoy's RBAC terms)`],
    }, issues);
    if (!e) return;
    const { entry: r, name, mark } = e;
    if (r['action'] === undefined || r['action'] === null) issues.add(join(rp, 'action'), 'is required (allow or deny)');
    const action = enumField(r, 'action', rp, ACTIONS, issues);
    const rule: AuthzRule = { name: name ?? '', action: action ?? 'deny' };
    const from = listField(r, 'from', rp, false, issues);
    if (from) {
      rule.from = [];
      from.forEach((w, j) => {
        const wp = `${join(rp, 'from')}[${j}]`;
        if (typeof w !== 'string') issues.add(wp, `must be a workload name or a spiffe:// identity, got ${describe(w)}`);
        else if (w.startsWith('spiffe://')) {
          // An identity names whichever workloads have it (Workload.identity), now or later: a service account with no
          // pod on this node is no mistake, it matches nobody until one starts.
          try {
            parseSpiffeId(w);
            if (!rule.from!.includes(w)) rule.from!.push(w);
          } catch (e) {
            issues.add(wp, (e as Error).message);
          }
        } else if (!shape.workloads?.has(w)) issues.add(wp, `workload '${w}' is not defined (in the top-level workloads list)`);
        else if (!rule.from!.includes(w)) rule.from!.push(w);
      });
    }
    const methods = methodList(r, 'methods', rp, issues);
    if (methods) rule.methods = methods;
    const paths = listField(r, 'paths', rp, false, issues);
    if (paths) rule.paths = paths.map((m, j) => stringMatch(m, `${join(rp, 'paths')}[${j}]`, true, issues)).filter((m): m is StringMatch => !!m);
    const headers = headerMatches(r, 'headers', rp, issues);
    if (headers) rule.headers = headers;
    if (issues.list.length === mark) out.rules.push(rule);
  });
  // Deny rules are evaluated before allow rules whatever the order written: the model lists them in that order.
  out.rules = [...out.rules.filter((r) => r.action === 'deny'), ...out.rules.filter((r) => r.action === 'allow')];
  return out;
}

function routes(raw: Obj, path: string, shape: ServiceShape, issues: Issues): Route[] {
  const list = listField(raw, 'routes', path, false, issues);
  if (!list) return [defaultRoute(join(path, 'routes'), shape, issues)];
  const rp = join(path, 'routes');
  if (list.length < 1 || list.length > MAX_ROUTES) {
    issues.add(rp, `must list 1 to ${MAX_ROUTES} routes (leave it out for one route to the default group), got ${list.length}`);
    return [];
  }
  const names = new Map<string, number>();
  const out: Route[] = [];
  list.forEach((r, k) => {
    const route = routeOf(r, `${rp}[${k}]`, k, shape, issues);
    if (!route) return;
    const seen = names.get(route.name);
    if (seen !== undefined) issues.add(`${rp}[${k}].name`, `duplicate route name '${route.name}' in service '${shape.label}', also used by routes[${seen}]`);
    else names.set(route.name, k);
    out.push(route);
  });
  return out;
}

/** Issues from `mark` on are about one route: say which, with its service (an index alone is hard to find). */
function nameRoute(issues: Issues, mark: number, service: string, route: string): void {
  for (let i = mark; i < issues.list.length; i++) {
    const issue = issues.list[i]!;
    issue.message = `service '${service}', route '${route}': ${issue.message}`;
  }
}

function defaultRoute(path: string, shape: ServiceShape, issues: Issues): Route {
  const split: WeightedGroup[] = [{ group: 'default', weight: 1 }];
  const mark = issues.list.length;
  checkSplit(split, () => path, shape, issues);
  nameRoute(issues, mark, shape.label, DEFAULT_ROUTE_NAME);
  return {
    name: DEFAULT_ROUTE_NAME,
    match: {},
    split,
    timeoutMs: DEFAULT_ROUTE_TIMEOUT_MS,
    requestHeaders: { set: {}, remove: [] },
    responseHeaders: { set: {}, remove: [] },
  };
}

/** Every group a route splits to has backends of every family the service has VIPs of. */
function checkSplit(split: WeightedGroup[], where: (k: number) => string, shape: ServiceShape, issues: Issues): void {
  if (shape.emptyGroupsAllowed) return;
  split.forEach((g, k) => {
    const fams = shape.groups.get(g.group);
    if (!fams) {
      const known = [...shape.groups.keys()];
      const guess = closest(g.group, known);
      const hint = guess ? ` (did you mean '${guess}'?)` : known.length ? ` (groups with backends: ${known.join(', ')})` : ' (the service has no backends)';
      issues.add(where(k), `group '${g.group}' has no backends${hint}`);
      return;
    }
    for (const f of shape.families) {
      if (!fams.has(f)) issues.add(where(k), `group '${g.group}' has no ${familyName(f)} backend, but the service has ${familyName(f)} VIPs`);
    }
  });
}

function routeOf(r: unknown, rp: string, index: number, shape: ServiceShape, issues: Issues): Route | undefined {
  if (!isMapping(r)) {
    issues.add(rp, `must be a mapping like {name: api, match: {path: {prefix: /api}}}, got ${describe(r)}`);
    return undefined;
  }
  const mark = issues.list.length;
  checkFields(r, rp, ROUTE_FIELDS, issues);
  let name = `route-${index}`;
  if (r['name'] !== undefined && r['name'] !== null) name = nameValue(r['name'], join(rp, 'name'), 'a route', issues) ?? name;

  const match: RouteMatch = {};
  const m = mappingField(r, 'match', rp, '{path: {prefix: /api}, methods: [GET]}', issues);
  if (m) {
    const mp = join(rp, 'match');
    checkFields(m, mp, MATCH_FIELDS, issues);
    if (m['path'] !== undefined && m['path'] !== null) {
      const pm = stringMatch(m['path'], join(mp, 'path'), true, issues);
      if (pm) match.path = pm;
    }
    const methods = methodList(m, 'methods', mp, issues);
    if (methods && methods.length > 0) match.methods = methods;
    const headers = headerMatches(m, 'headers', mp, issues);
    if (headers && headers.length > 0) match.headers = headers;
  }

  let split: WeightedGroup[] = [{ group: 'default', weight: 1 }];
  const sl = listField(r, 'split', rp, false, issues);
  const sp = join(rp, 'split');
  if (sl) {
    if (sl.length === 0) issues.add(sp, 'must list at least one group (leave it out for the default group)');
    split = [];
    const seen = new Map<string, number>();
    sl.forEach((g, k) => {
      const gp = `${sp}[${k}]`;
      if (!isMapping(g)) {
        issues.add(gp, `must be a mapping like {group: canary, weight: 10}, got ${describe(g)}`);
        return;
      }
      checkFields(g, gp, SPLIT_FIELDS, issues);
      let group: string | undefined;
      if (g['group'] === undefined || g['group'] === null) issues.add(join(gp, 'group'), 'is required (a backend group)');
      else group = nameValue(g['group'], join(gp, 'group'), 'a backend group', issues);
      const weight = intField(g, 'weight', gp, 1, MAX_SPLIT_WEIGHT, sl.length > 1, issues) ?? 1;
      if (group === undefined) return;
      const first = seen.get(group);
      if (first !== undefined) {
        issues.add(join(gp, 'group'), `group '${group}' listed twice, also at split[${first}]`);
        return;
      }
      seen.set(group, k);
      split.push({ group, weight });
    });
    // Group checks on the entries as written (split[k] is the k-th entry only while no entry was dropped).
    if (split.length === sl.length) checkSplit(split, (k) => `${sp}[${k}].group`, shape, issues);
  } else checkSplit(split, () => rp, shape, issues);

  const timeoutMs = durationField(r, 'timeout', rp, 0, issues) ?? DEFAULT_ROUTE_TIMEOUT_MS;
  const route: Route = {
    name,
    match,
    split,
    timeoutMs,
    requestHeaders: rewrite(r, 'requestHeaders', rp, issues),
    responseHeaders: rewrite(r, 'responseHeaders', rp, issues),
  };
  const retry = retries(r, rp, issues);
  if (retry) route.retry = retry;
  nameRoute(issues, mark, shape.label, name);
  return issues.list.length === mark ? route : undefined;
}

function retries(r: Obj, rp: string, issues: Issues): RetryPolicy | undefined {
  const o = mappingField(r, 'retries', rp, '{attempts: 2, retryOn: [5xx, reset]}', issues);
  if (!o) return undefined;
  const p = join(rp, 'retries');
  checkFields(o, p, RETRY_FIELDS, issues);
  const attempts = intField(o, 'attempts', p, 0, MAX_RETRY_ATTEMPTS, false, issues) ?? DEFAULT_RETRY_ATTEMPTS;
  const perTryTimeoutMs = durationField(o, 'perTryTimeout', p, 1, issues) ?? 0;
  let retryOn: RetryOn[] = [...DEFAULT_RETRY_ON];
  const on = listField(o, 'retryOn', p, false, issues);
  if (on) {
    retryOn = [];
    on.forEach((v, k) => {
      const c = enumValue(v, `${join(p, 'retryOn')}[${k}]`, RETRY_ON, issues);
      if (c && !retryOn.includes(c)) retryOn.push(c);
    });
    if (on.length === 0) issues.add(join(p, 'retryOn'), `must list at least one condition (${RETRY_ON.join(', ')}); for no retries write attempts: 0`);
  }
  const retriableStatusCodes: number[] = [];
  (listField(o, 'retriableStatusCodes', p, false, issues) ?? []).forEach((c, k) => {
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 100 || c > 599) {
      issues.add(`${join(p, 'retriableStatusCodes')}[${k}]`, `must be an HTTP status code 100-599, got ${describe(c)}`);
    } else if (!retriableStatusCodes.includes(c)) retriableStatusCodes.push(c);
  });
  // Codes listed are meant to be retried (Envoy would also need retry_on: retriable-status-codes; say it once).
  if (retriableStatusCodes.length > 0 && !retryOn.includes('retriable-status-codes')) retryOn.push('retriable-status-codes');
  if (retriableStatusCodes.length === 0 && retryOn.includes('retriable-status-codes')) {
    issues.add(join(p, 'retryOn'), 'retriable-status-codes needs retriableStatusCodes');
  }

  let backoffBaseMs = DEFAULT_BACKOFF_BASE_MS;
  let backoffMaxMs: number | undefined;
  const b = mappingField(o, 'backoff', p, '{base: 25ms, max: 250ms}', issues);
  if (b) {
    const bp = join(p, 'backoff');
    checkFields(b, bp, BACKOFF_FIELDS, issues);
    backoffBaseMs = durationField(b, 'base', bp, 1, issues) ?? DEFAULT_BACKOFF_BASE_MS;
    backoffMaxMs = durationField(b, 'max', bp, 1, issues);
    if (backoffMaxMs !== undefined && backoffMaxMs < backoffBaseMs) issues.add(join(bp, 'max'), `must not be shorter than base (${backoffBaseMs} ms), got ${backoffMaxMs} ms`);
  }
  let budgetPercent = DEFAULT_BUDGET_PERCENT;
  let minRetryConcurrency = DEFAULT_MIN_RETRY_CONCURRENCY;
  const bu = mappingField(o, 'budget', p, '{percent: 20, minRetryConcurrency: 3}', issues);
  if (bu) {
    const bp = join(p, 'budget');
    checkFields(bu, bp, BUDGET_FIELDS, issues);
    budgetPercent = numberField(bu, 'percent', bp, 0, 100, issues) ?? DEFAULT_BUDGET_PERCENT;
    minRetryConcurrency = intField(bu, 'minRetryConcurrency', bp, 0, MAX_LIMIT, false, issues) ?? DEFAULT_MIN_RETRY_CONCURRENCY;
  }
  let bufferLimitBytes = DEFAULT_BUFFER_LIMIT_BYTES;
  if (o['bufferLimit'] !== undefined && o['bufferLimit'] !== null) {
    const size = parseSize(o['bufferLimit']);
    if (typeof size === 'string') issues.add(join(p, 'bufferLimit'), size);
    else if (size > 64 * 1024 * 1024) issues.add(join(p, 'bufferLimit'), `must be at most 64MiB (it is held per request), got ${JSON.stringify(o['bufferLimit'])}`);
    else bufferLimitBytes = size;
  }
  return {
    attempts,
    perTryTimeoutMs,
    retryOn,
    retriableStatusCodes,
    backoffBaseMs,
    backoffMaxMs: backoffMaxMs ?? Math.max(backoffBaseMs * BACKOFF_MAX_FACTOR, backoffBaseMs),
    budgetPercent,
    minRetryConcurrency,
    bufferLimitBytes,
    retryNonIdempotent: boolField(o, 'nonIdempotent', p, issues) ?? false,
    ...(bu ? { budgetSet: true } : {}),
  };
}
