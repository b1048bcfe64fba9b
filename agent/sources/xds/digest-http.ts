// The digest of the HTTP part of xDS (digest.ts calls it): resources -> the file schema's `http` / `healthCheck` objects (validated afterwards by the same
// modelFromObject code as a file). Pure: no I/O.
//
// Envoy spreads what sockmesh keeps per service over four resources: the HttpConnectionManager (its RBAC filters:
// authz), the RouteConfiguration (routes, retries, timeouts, header rewrites), the Clusters (lb_policy: balancer,
// circuit_breakers, outlier_detection, health_checks; one cluster = one backend group) and their endpoints. What
// has no place in the model is NACKed when ignoring it could change where a request goes or whether it is allowed,
// and otherwise listed as unsupported (notes); nothing is dropped silently.
//
// What Envoy cannot say and sockmesh needs to round-trip its own config travels as `filter_metadata.sockmesh`:
// on a Listener {service, failMode, accessLogSample, workloads, clusters}, on a Route {retryOn, budget,
// nonIdempotent}, on a Cluster {group, algorithm, affinity_timeout_seconds}.
import { formatDuration } from '../../model/duration.js';
import { regexError } from '../../model/l7config.js';
import { durationMs, num } from '../../../xds/wellknown.js';
import { HTTP_PROTOCOL_OPTIONS, HTTP_PROTOCOL_OPTIONS_TYPE } from '../../../xds/envoy.js';
import { unpackAny, type AnyMessage } from '../../../xds/protos.js';
import { DEFAULT_ALLOW_POLICY, sockmeshMeta } from '../../../xds/sockmesh.js';
import { fail } from './errors.js';

type Obj = Record<string, any>; // decoded protobuf plain objects (keepCase, longs/enums as strings)

/** The Durations of `from` that are present -> `to` under the file schema's names, formatted ('1.5s'). */
function copyDurations(to: Obj, from: Obj, fields: readonly (readonly [schema: string, proto: string])[]): Obj {
  for (const [k, f] of fields) {
    const ms = durationMs(from[f]);
    if (ms !== undefined) to[k] = formatDuration(ms);
  }
  return to;
}

/** The numbers (plain or wrapped) of `from` that are present -> `to` under the file schema's names. */
function copyNums(to: Obj, from: Obj, fields: readonly (readonly [schema: string, proto: string])[]): Obj {
  for (const [k, f] of fields) {
    const v = num(from[f]);
    if (v !== undefined) to[k] = v;
  }
  return to;
}

// ---- string and header matchers ----

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** A name as the model wants it (a DNS label): kept when it is one already, else lower-cased with '-' for the rest. */
const labelOf = (name: string, max: number) =>
  name.length <= max && NAME.test(name) ? name : name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, max).replace(/-+$/, '');

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
/** A regex for a literal, case-insensitive ([aA] per letter: the model's regexes carry no flags). */
const caseless = (s: string) => [...s].map((c) => (c.toLowerCase() !== c.toUpperCase() ? `[${c.toLowerCase()}${c.toUpperCase()}]` : escapeRegex(c))).join('');

/** envoy.type.matcher.v3.StringMatcher -> the file schema's {exact|prefix|regex}. */
function stringMatcher(what: string, field: string, m: Obj): Obj {
  const lit = m.ignore_case ? caseless : escapeRegex;
  if (m.safe_regex) return { regex: regexOf(what, `${field}.safe_regex`, m.safe_regex) };
  if (m.ignore_case) {
    if (m.exact !== undefined) return { regex: lit(m.exact) };
    if (m.prefix !== undefined) return { regex: `${lit(m.prefix)}.*` };
  }
  if (m.exact !== undefined) return { exact: m.exact };
  if (m.prefix !== undefined) return { prefix: m.prefix };
  if (m.suffix !== undefined) return { regex: `.*${lit(m.suffix)}` };
  if (m.contains !== undefined) return { regex: `.*${lit(m.contains)}.*` };
  fail(what, field, `unsupported string matcher (${Object.keys(m).join(', ') || 'empty'}): exact, prefix, suffix, contains and safe_regex are`);
}

/**
 * RE2 syntax (what Envoy's safe_regex means) that JavaScript compiles with another meaning: POSIX classes
 * ([[:digit:]] is a class of '[', ':', 'd', ... there), and the escapes \A \z \Q \E \C \pN \p{..} \x{..}, which
 * JavaScript without the u flag reads as plain letters. Returns what was found, or undefined.
 */
export function re2Only(source: string): string | undefined {
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      const e = source[i + 1];
      if (e !== undefined && 'AzQECpP'.includes(e)) return `\\${e}`;
      if (e === 'x' && source[i + 2] === '{') return '\\x{...}';
      i++;
    } else if (c === '[' && source[i + 1] === ':') {
      const m = /^\[:\^?[a-z]+:\]/.exec(source.slice(i));
      if (m) return m[0];
    }
  }
  return undefined;
}

function regexOf(what: string, field: string, r: Obj): string {
  if (typeof r.regex !== 'string') fail(what, `${field}.regex`, 'is required');
  const re2 = re2Only(r.regex);
  if (re2 !== undefined) fail(what, `${field}.regex`, `RE2 syntax ${re2} would be read differently as a JavaScript regular expression (sockmesh's engine): write it without (a class like [0-9], ^ and $ anchors)`);
  const err = regexError(r.regex);
  if (err !== undefined) fail(what, `${field}.regex`, `not a regular expression sockmesh can run (JavaScript syntax): ${err}`);
  return r.regex;
}

/** Methods from a ':method' matcher: an exact value or an alternation of tokens ('GET|POST'). */
function methodsOf(what: string, field: string, h: Obj): string[] {
  if (h.invert_match) fail(what, `${field}.invert_match`, 'an inverted :method match is not supported');
  const exact = h.exact_match ?? h.string_match?.exact;
  if (typeof exact === 'string' && !h.string_match?.ignore_case) return [exact];
  const regex = h.safe_regex_match?.regex ?? h.string_match?.safe_regex?.regex;
  const m = typeof regex === 'string' ? /^\^?\(?([A-Z0-9_-]+(?:\|[A-Z0-9_-]+)*)\)?\$?$/.exec(regex) : null;
  if (m) return m[1]!.split('|');
  fail(what, field, 'a :method match must be an exact method or a regex alternation like GET|POST');
}

const PSEUDO_UNSUPPORTED = (name: string) => name.startsWith(':');

/** envoy.config.route.v3.HeaderMatcher (not :method) -> {name, exact|prefix|regex, invert}. */
function headerMatcher(what: string, field: string, h: Obj): Obj {
  const name: string = h.name ?? '';
  if (PSEUDO_UNSUPPORTED(name)) fail(what, `${field}.name`, `matching the pseudo-header ${name} is not supported (:method is)`);
  const out: Obj = { name };
  if (h.invert_match) out['invert'] = true;
  if (h.treat_missing_header_as_empty) fail(what, `${field}.treat_missing_header_as_empty`, 'is not supported');
  if (h.range_match) fail(what, `${field}.range_match`, 'is not supported');
  if (h.present_match !== undefined) {
    if (h.present_match === false) out['invert'] = !out['invert']; // present_match: false = must be absent
    return out;
  }
  let m: Obj | undefined;
  if (h.string_match) m = stringMatcher(what, `${field}.string_match`, h.string_match);
  else if (h.exact_match !== undefined) m = { exact: h.exact_match };
  else if (h.prefix_match !== undefined) m = { prefix: h.prefix_match };
  else if (h.suffix_match !== undefined) m = { regex: `.*${escapeRegex(h.suffix_match)}` };
  else if (h.contains_match !== undefined) m = { regex: `.*${escapeRegex(h.contains_match)}.*` };
  else if (h.safe_regex_match) m = { regex: regexOf(what, `${field}.safe_regex_match`, h.safe_regex_match) };
  return m ? { ...out, ...m } : out;
}

// ---- routes ----

export interface SplitRef { cluster: string; weight: number }

/** One route, in the file schema except its split (clusters, named as groups when the service is built). */
export interface RouteEntry {
  obj: Obj;
  splits: SplitRef[];
  /** where it came from, for NACK messages: "route_configuration 'x': virtual_hosts[0].routes[2]" */
  origin: string;
  /** sockmesh's own route (its metadata says so) whose retries have no budget of their own: the default applies */
  defaultBudget?: boolean;
}

export interface HttpRoutes {
  routes: RouteEntry[];
  notes: string[];
}

/** Envoy's retry_on words -> the model's (several Envoy words map onto one of ours). */
const RETRY_ON: Record<string, string[]> = {
  '5xx': ['5xx', 'timeout'], // a per-try timeout is a 504 to Envoy: retried under 5xx and gateway-error
  'gateway-error': ['gateway-error', 'timeout'],
  reset: ['reset'],
  'connect-failure': ['connect-failure'],
  'refused-stream': ['reset'],
  'retriable-status-codes': ['retriable-status-codes'],
  cancelled: ['cancelled'],
  'deadline-exceeded': ['deadline-exceeded'],
  internal: ['internal'],
  'resource-exhausted': ['resource-exhausted'],
  unavailable: ['unavailable'],
};

function headersToAdd(what: string, field: string, list: Obj[] | undefined, set: Obj, notes: string[]): void {
  (list ?? []).forEach((o, i) => {
    const f = `${field}[${i}]`;
    const key: string | undefined = o.header?.key;
    if (!key) fail(what, `${f}.header.key`, 'is required');
    const action: string = o.append_action ?? 'APPEND_IF_EXISTS_OR_ADD';
    const append = o.append !== undefined ? o.append?.value === true : action === 'APPEND_IF_EXISTS_OR_ADD';
    if (action === 'ADD_IF_ABSENT') fail(what, `${f}.append_action`, 'ADD_IF_ABSENT is not supported (headers are set, replacing)');
    if (append) notes.push(`${what}: ${f}: appended header ${key} is set (replacing any value)`);
    const value = o.header.value ?? (o.header.raw_value ? Buffer.from(o.header.raw_value).toString('latin1') : '');
    if (/%[A-Z_]+(\(|%)/.test(value)) notes.push(`${what}: ${f}: header ${key} value sent as written (Envoy command operators are not expanded)`);
    set[key.toLowerCase()] = value;
  });
}

function rewriteOf(what: string, field: string, add: Obj[] | undefined, remove: string[] | undefined, notes: string[], base?: Obj): Obj {
  const set: Obj = { ...(base?.['set'] ?? {}) };
  headersToAdd(what, `${field}_to_add`, add, set, notes);
  const rm = [...(base?.['remove'] ?? [])];
  for (const h of remove ?? []) if (!rm.includes(h.toLowerCase())) rm.push(h.toLowerCase());
  return { set, remove: rm.filter((h: string) => !(h in set)) };
}

/** Unsupported route action fields: those that change where or what is forwarded are NACKed, the rest noted. */
const ACTION_REFUSED = ['cluster_header', 'cluster_specifier_plugin', 'inline_cluster_specifier_plugin', 'prefix_rewrite', 'regex_rewrite', 'path_rewrite_policy', 'host_rewrite_literal', 'host_rewrite_header', 'host_rewrite_path_regex', 'auto_host_rewrite', 'internal_redirect_policy', 'upgrade_configs'];
const ACTION_NOTED = ['request_mirror_policies', 'hash_policy', 'idle_timeout', 'max_stream_duration', 'rate_limits', 'cors', 'priority', 'metadata_match'];
const MATCH_REFUSED = ['query_parameters', 'runtime_fraction', 'grpc', 'tls_context', 'dynamic_metadata', 'connect_matcher', 'path_separated_prefix', 'path_match_policy', 'filter_state'];

/** The routes of one RouteConfiguration (or inline route_config). `what` names the resource. */
export function httpRoutes(what: string, r: Obj): HttpRoutes {
  const out: HttpRoutes = { routes: [], notes: [] };
  const vhs: Obj[] = r.virtual_hosts ?? [];
  // The service is chosen by VIP:port, not by Host: one virtual host's routes apply to every request. The catch-all
  // one when there are several (the rest cannot be told apart without host matching), reported.
  let v = vhs.findIndex((vh) => (vh.domains ?? []).includes('*'));
  if (v < 0) v = 0;
  vhs.forEach((vh, i) => {
    if (i !== v) out.notes.push(`${what}: virtual_hosts[${i}] ('${vh.name}') not applied: requests are matched by VIP and port, not by host (virtual_hosts[${v}] is used)`);
  });
  const vh = vhs[v];
  if (!vh) return out;
  if (vhs.length === 1 && !(vh.domains ?? []).includes('*')) out.notes.push(`${what}: virtual_hosts[0]: domains not matched (every request to the listener uses this virtual host)`);
  const reqBase = rewriteOf(what, `request_headers`, r.request_headers_to_add, r.request_headers_to_remove, out.notes);
  const resBase = rewriteOf(what, `response_headers`, r.response_headers_to_add, r.response_headers_to_remove, out.notes);
  const vhReq = rewriteOf(what, `virtual_hosts[${v}].request_headers`, vh.request_headers_to_add, vh.request_headers_to_remove, out.notes, reqBase);
  const vhRes = rewriteOf(what, `virtual_hosts[${v}].response_headers`, vh.response_headers_to_add, vh.response_headers_to_remove, out.notes, resBase);
  if (vh.rate_limits?.length || vh.cors) out.notes.push(`${what}: virtual_hosts[${v}]: rate_limits / cors not applied`);
  const names = new Set<string>();
  (vh.routes ?? []).forEach((route: Obj, k: number) => {
    const field = `virtual_hosts[${v}].routes[${k}]`;
    const action = route.route;
    if (!action) {
      out.notes.push(`${what}: ${field}: ${route.redirect ? 'redirect' : route.direct_response ? 'direct_response' : 'non-forwarding'} route not applied`);
      return;
    }
    out.routes.push(routeEntry(what, field, route, action, vh.retry_policy, vhReq, vhRes, names, out.notes));
  });
  return out;
}

function routeEntry(what: string, field: string, route: Obj, action: Obj, vhRetry: Obj | undefined, vhReq: Obj, vhRes: Obj, names: Set<string>, notes: string[]): RouteEntry {
  // name: a DNS label, unique within the service
  let name = typeof route.name === 'string' ? labelOf(route.name, 63) : '';
  if (!name) name = `route-${field.slice(field.lastIndexOf('[') + 1, -1)}`;
  for (let n = 2; names.has(name); n++) name = `${name.slice(0, 60)}-${n}`;
  names.add(name);

  const m: Obj = route.match ?? {};
  for (const k of MATCH_REFUSED) if (m[k] !== undefined && !(Array.isArray(m[k]) && m[k].length === 0)) fail(what, `${field}.match.${k}`, 'is not supported');
  if (m.case_sensitive !== undefined && !m.case_sensitive.value) fail(what, `${field}.match.case_sensitive`, 'case-insensitive path matching is not supported');
  const match: Obj = {};
  if (m.path !== undefined) match['path'] = { exact: m.path };
  else if (m.safe_regex) match['path'] = { regex: regexOf(what, `${field}.match.safe_regex`, m.safe_regex) };
  else if (typeof m.prefix === 'string') {
    if (m.prefix !== '') match['path'] = { prefix: m.prefix }; // '' matches every path: no path condition
  } else fail(what, `${field}.match`, 'needs prefix, path or safe_regex');
  const headers: Obj[] = [];
  (m.headers ?? []).forEach((h: Obj, i: number) => {
    const hf = `${field}.match.headers[${i}]`;
    if (h.name === ':method') {
      const methods = methodsOf(what, hf, h);
      match['methods'] = match['methods'] ? (match['methods'] as string[]).filter((x) => methods.includes(x)) : methods;
      if ((match['methods'] as string[]).length === 0) fail(what, hf, 'the :method matches of this route exclude every method');
    } else headers.push(headerMatcher(what, hf, h));
  });
  if (headers.length > 0) match['headers'] = headers;

  for (const k of ACTION_REFUSED) {
    const v = action[k];
    if (v !== undefined && v !== false && !(Array.isArray(v) && v.length === 0)) fail(what, `${field}.route.${k}`, 'is not supported');
  }
  for (const k of ACTION_NOTED) {
    const v = action[k];
    if (v !== undefined && !(Array.isArray(v) && v.length === 0)) notes.push(`${what}: ${field}.route.${k} not applied`);
  }
  const splits: SplitRef[] = [];
  if (action.cluster) splits.push({ cluster: action.cluster, weight: 1 });
  else if (action.weighted_clusters) {
    const list: Obj[] = action.weighted_clusters.clusters ?? [];
    list.forEach((c, j) => {
      const cf = `${field}.route.weighted_clusters.clusters[${j}]`;
      if (!c.name) fail(what, `${cf}.name`, 'is required');
      if (c.request_headers_to_add?.length || c.response_headers_to_add?.length || c.request_headers_to_remove?.length || c.response_headers_to_remove?.length) {
        fail(what, cf, 'header rewrites per weighted cluster are not supported (set them on the route)');
      }
      const w = num(c.weight) ?? 0;
      if (w > 0) splits.push({ cluster: c.name, weight: w });
    });
    if (splits.length === 0) fail(what, `${field}.route.weighted_clusters`, 'no cluster with a weight above 0');
    // Envoy weights go to 2^32-1, the model's to 10000: scale down keeping the ratios as well as integers can.
    const max = splits.reduce((a, s) => Math.max(a, s.weight), 0);
    if (max > 10_000) for (const s of splits) s.weight = Math.max(1, Math.round((s.weight * 10_000) / max));
  } else fail(what, `${field}.route`, 'names no cluster (cluster or weighted_clusters)');

  const meta = sockmeshMeta(route);
  const obj: Obj = { name, match };
  const timeout = durationMs(action.timeout);
  obj['timeout'] = formatDuration(timeout ?? 15_000);
  const rp: Obj | undefined = action.retry_policy ?? vhRetry;
  if (rp) obj['retries'] = retriesOf(what, `${field}.route.retry_policy`, rp, meta, route, notes);
  obj['requestHeaders'] = rewriteOf(what, `${field}.request_headers`, route.request_headers_to_add, route.request_headers_to_remove, notes, vhReq);
  obj['responseHeaders'] = rewriteOf(what, `${field}.response_headers`, route.response_headers_to_add, route.response_headers_to_remove, notes, vhRes);
  const own = rp !== undefined && Array.isArray(meta['retryOn']) && !(meta['budget'] && typeof meta['budget'] === 'object');
  return { obj, splits, origin: `${what}: ${field}`, ...(own ? { defaultBudget: true } : {}) };
}

function retriesOf(what: string, field: string, rp: Obj, meta: Obj, route: Obj, notes: string[]): Obj {
  const out: Obj = {};
  const n = num(rp.num_retries);
  out['attempts'] = n ?? 1;
  const per = durationMs(rp.per_try_timeout);
  if (per !== undefined && per > 0) out['perTryTimeout'] = formatDuration(per);
  if (Array.isArray(meta['retryOn'])) out['retryOn'] = meta['retryOn'];
  else {
    const on: string[] = [];
    const codes: number[] = [];
    for (const word of String(rp.retry_on ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
      const mapped = RETRY_ON[word];
      if (mapped) {
        for (const x of mapped) if (!on.includes(x)) on.push(x);
      } else if (word === 'retriable-4xx') {
        if (!codes.includes(409)) codes.push(409);
        if (!on.includes('retriable-status-codes')) on.push('retriable-status-codes');
      } else notes.push(`${what}: ${field}.retry_on: '${word}' not supported`);
    }
    if (on.length === 0 && codes.length === 0) {
      // Envoy retries nothing without a retry_on it knows: say so with attempts 0 rather than invent conditions.
      notes.push(`${what}: ${field}: no supported retry_on condition (no retries)`);
      out['attempts'] = 0;
      out['retryOn'] = ['connect-failure'];
    } else {
      out['retryOn'] = on;
      if (codes.length) out['retriableStatusCodes'] = codes;
    }
  }
  const codes: number[] = (rp.retriable_status_codes ?? []).map(Number);
  if (codes.length > 0) out['retriableStatusCodes'] = [...new Set([...(out['retriableStatusCodes'] ?? []), ...codes])];
  if (rp.retry_back_off) {
    out['backoff'] = copyDurations({}, rp.retry_back_off, [['base', 'base_interval'], ['max', 'max_interval']]);
  }
  if (meta['budget'] && typeof meta['budget'] === 'object') out['budget'] = meta['budget'];
  // Envoy retries any method the conditions match; sockmesh only when told to (own routes say which in metadata).
  out['nonIdempotent'] = typeof meta['nonIdempotent'] === 'boolean' ? meta['nonIdempotent'] : true;
  const limit = num(route.per_request_buffer_limit_bytes);
  if (limit !== undefined) out['bufferLimit'] = limit;
  for (const k of ['retry_host_predicate', 'retry_priority', 'retriable_headers', 'retriable_request_headers', 'rate_limited_retry_back_off', 'per_try_idle_timeout']) {
    const v = rp[k];
    if (v !== undefined && !(Array.isArray(v) && v.length === 0)) notes.push(`${what}: ${field}.${k} not applied`);
  }
  return out;
}

// ---- clusters ----

/** What an HTTP service takes from a cluster, in the file schema. */
export interface ClusterHttp {
  /** backend group named in sockmesh metadata (own resources); otherwise the cluster name makes one */
  group?: string;
  balancer?: 'least-request' | 'round-robin';
  /** what typed_extension_protocol_options (or the deprecated Cluster fields) say; absent: nothing (downstream) */
  upstreamProtocol?: 'http1' | 'h2' | 'downstream';
  circuitBreaker?: Obj;
  /** the retry budget of the DEFAULT thresholds (Envoy keeps it with the breaker, sockmesh with the retries) */
  budget?: Obj;
  outlierDetection?: Obj;
  healthCheck?: Obj;
  notes: string[];
}

/** `policy`: the cluster's balancing as lb_policy names it (digest.ts reads it from either field). */
export function clusterHttp(what: string, c: Obj, meta: Obj, policy: string): ClusterHttp {
  const d: ClusterHttp = { notes: [] };
  if (typeof meta['group'] === 'string') d.group = meta['group'];
  if (policy === 'LEAST_REQUEST') d.balancer = 'least-request';
  else if (policy === 'ROUND_ROBIN') d.balancer = 'round-robin';
  const proto = upstreamProtocolOf(what, c, d.notes);
  if (proto !== undefined) d.upstreamProtocol = proto;
  const cb = c.circuit_breakers;
  if (cb) {
    d.circuitBreaker = {}; // present: Envoy's defaults, unless a DEFAULT threshold says otherwise
    (cb.thresholds ?? []).forEach((t: Obj, i: number) => {
      if ((t.priority ?? 'DEFAULT') !== 'DEFAULT') {
        d.notes.push(`${what}: circuit_breakers.thresholds[${i}]: priority ${t.priority} not applied (one priority)`);
        return;
      }
      d.circuitBreaker = copyNums({}, t, [['maxConnections', 'max_connections'], ['maxPendingRequests', 'max_pending_requests'], ['maxRequests', 'max_requests'], ['maxRetries', 'max_retries']]);
      if (t.retry_budget) d.budget = { percent: num(t.retry_budget.budget_percent) ?? 20, minRetryConcurrency: num(t.retry_budget.min_retry_concurrency) ?? 3 };
    });
    if (cb.per_host_thresholds?.length) d.notes.push(`${what}: circuit_breakers.per_host_thresholds not applied (limits are per backend group)`);
  }
  const od = c.outlier_detection;
  if (od) {
    const o: Obj = {};
    const enf5xx = num(od.enforcing_consecutive_5xx) ?? 100;
    const enfGw = num(od.enforcing_consecutive_gateway_failure) ?? 0;
    o['consecutive5xx'] = enf5xx > 0 ? num(od.consecutive_5xx) ?? 5 : 0;
    o['consecutiveGatewayErrors'] = enfGw > 0 ? num(od.consecutive_gateway_failure) ?? 5 : 0;
    if ((enf5xx > 0 && enf5xx < 100) || (enfGw > 0 && enfGw < 100)) d.notes.push(`${what}: outlier_detection: enforcing percentages below 100 are applied as 100`);
    copyDurations(o, od, [['baseEjectionTime', 'base_ejection_time'], ['maxEjectionTime', 'max_ejection_time'], ['interval', 'interval']]);
    copyNums(o, od, [['maxEjectionPercent', 'max_ejection_percent']]);
    if ((num(od.enforcing_success_rate) ?? 100) > 0 && od.success_rate_minimum_hosts !== undefined) d.notes.push(`${what}: outlier_detection: success-rate ejection not applied`);
    if ((num(od.enforcing_failure_percentage) ?? 0) > 0) d.notes.push(`${what}: outlier_detection: failure-percentage ejection not applied`);
    if (od.split_external_local_origin_errors) d.notes.push(`${what}: outlier_detection.split_external_local_origin_errors not applied`);
    d.outlierDetection = o;
  }
  const hcs: Obj[] = c.health_checks ?? [];
  if (hcs.length > 0) {
    if (hcs.length > 1) d.notes.push(`${what}: health_checks[1..]: only the first health check is run`);
    d.healthCheck = healthCheckOf(what, 'health_checks[0]', hcs[0]!, d.notes);
  }
  return d;
}

/**
 * The protocol a cluster speaks to its endpoints, as Envoy reads it: typed_extension_protocol_options'
 * HttpProtocolOptions (explicit_http_config http_protocol_options -> http1, http2_protocol_options -> h2;
 * use_downstream_protocol_config -> downstream), else the deprecated Cluster fields (protocol_selection
 * USE_DOWNSTREAM_PROTOCOL, http2_protocol_options, http_protocol_options). Nothing at all: undefined (sockmesh's
 * default, the client's protocol; Envoy's would be HTTP/1.1).
 */
function upstreamProtocolOf(what: string, c: Obj, notes: string[]): ClusterHttp['upstreamProtocol'] {
  const field = `typed_extension_protocol_options['${HTTP_PROTOCOL_OPTIONS}']`;
  const any = (c.typed_extension_protocol_options ?? {})[HTTP_PROTOCOL_OPTIONS] as { type_url?: string; value?: Uint8Array } | undefined;
  if (any !== undefined) {
    if (any.type_url !== HTTP_PROTOCOL_OPTIONS_TYPE) fail(what, field, `must be an ${HTTP_PROTOCOL_OPTIONS}, got ${any.type_url ?? 'no type_url'}`);
    let o: Obj;
    try {
      o = unpackAny<Obj>(any as AnyMessage);
    } catch (e) {
      return fail(what, field, (e as Error).message);
    }
    const ex = o.explicit_http_config;
    if (ex) {
      if (ex.http2_protocol_options) return 'h2';
      if (ex.http_protocol_options) return 'http1';
      notes.push(`${what}: ${field}.explicit_http_config: only HTTP/1.1 and HTTP/2 are supported (the client's protocol used)`);
      return undefined;
    }
    if (o.use_downstream_protocol_config) return 'downstream';
    if (o.auto_config) notes.push(`${what}: ${field}.auto_config not supported (cleartext has no ALPN; the client's protocol used)`);
    return undefined;
  }
  if (c.protocol_selection === 'USE_DOWNSTREAM_PROTOCOL') return 'downstream';
  if (c.http2_protocol_options) return 'h2';
  if (c.http_protocol_options) return 'http1';
  return undefined;
}

function healthCheckOf(what: string, field: string, h: Obj, notes: string[]): Obj | undefined {
  const o: Obj = {};
  if (h.http_health_check) {
    const hh = h.http_health_check;
    o['type'] = 'http';
    o['path'] = hh.path;
    if (hh.send || hh.receive?.length) notes.push(`${what}: ${field}.http_health_check: send/receive payloads not applied`);
    if (hh.expected_statuses?.length) {
      // Envoy's ranges are half-open [start, end); the model's inclusive
      o['expectedStatuses'] = (hh.expected_statuses as Obj[]).map((r) => `${Number(r.start)}-${Number(r.end) - 1}`);
    }
  } else if (h.grpc_health_check) {
    o['type'] = 'grpc';
    o['grpcService'] = h.grpc_health_check.service_name ?? '';
  } else if (h.tcp_health_check) {
    if (h.tcp_health_check.send || h.tcp_health_check.receive?.length) {
      notes.push(`${what}: ${field}.tcp_health_check: send/receive payloads not supported (health check not run)`);
      return undefined;
    }
    o['type'] = 'tcp';
  } else {
    notes.push(`${what}: ${field}: ${h.custom_health_check ? 'custom' : 'unknown'} health checker not supported (health check not run)`);
    return undefined;
  }
  copyDurations(o, h, [['interval', 'interval'], ['timeout', 'timeout']]);
  return copyNums(o, h, [['healthyThreshold', 'healthy_threshold'], ['unhealthyThreshold', 'unhealthy_threshold']]);
}

// ---- the HttpConnectionManager ----

export interface HcmDigest {
  /** from the Listener's sockmesh metadata */
  service?: string;
  failMode?: string;
  accessLogSample?: number;
  /** workloads the RBAC principals name (file schema), from the Listener's sockmesh metadata */
  workloads: Obj[];
  /**
   * Clusters of the service's backend groups, in the order their backends are listed (own listeners list every
   * group: also one no route names, whose backends are still the service's).
   */
  extraClusters: string[];
  /** file-schema authz, when RBAC filters are present */
  authz?: Obj;
  /** file-schema http.forwarded, from use_remote_address / xff_num_trusted_hops (absent when neither is set) */
  forwarded?: Obj;
  /** inline route_config */
  inline?: HttpRoutes;
}

/**
 * HTTP RBAC filters -> authz. Envoy: an ALLOW filter lets through only what one of its policies matches, a DENY
 * filter stops what one matches; Istio chains a DENY filter before an ALLOW one. The model says the same with deny
 * rules first, then allow rules, then a default (deny when there is an ALLOW filter). Policies become rules; a
 * policy's permissions and principals are each OR-ed, so a policy is one rule per permission (every one with the
 * policy's principals as `from`).
 */
export function rbacAuthz(what: string, filters: { field: string; cfg: Obj }[], workloads: Set<string>, notes: string[]): Obj | undefined {
  const deny: Obj[] = [];
  const allow: Obj[] = [];
  let allowFilters = 0;
  let defaultAllow = false;
  const names = new Set<string>();
  for (const { field, cfg } of filters) {
    if (cfg.shadow_rules) notes.push(`${what}: ${field}.shadow_rules not applied`);
    if (cfg.matcher || cfg.shadow_matcher) fail(what, `${field}.matcher`, 'matcher-based RBAC is not supported (use rules)');
    const rules: Obj | undefined = cfg.rules;
    if (!rules) continue; // no rules: the filter does nothing
    const action: string = rules.action ?? 'ALLOW';
    if (action === 'LOG') {
      notes.push(`${what}: ${field}: RBAC LOG action not applied`);
      continue;
    }
    if (action === 'ALLOW') {
      if (++allowFilters > 1) fail(what, field, 'more than one RBAC filter with action ALLOW (both would have to allow) is not supported');
    }
    for (const [pname, policy] of Object.entries((rules.policies ?? {}) as Record<string, Obj>)) {
      const pf = `${field}.rules.policies['${pname}']`;
      if (action === 'ALLOW' && pname === DEFAULT_ALLOW_POLICY) {
        defaultAllow = true;
        continue;
      }
      if (policy.condition || policy.checked_condition) fail(what, `${pf}.condition`, 'CEL conditions are not supported');
      const from = principalsOf(what, `${pf}.principals`, policy.principals ?? [], workloads);
      const perms: Obj[] = policy.permissions ?? [];
      if (perms.length === 0) fail(what, `${pf}.permissions`, 'is empty (matches nothing)');
      perms.forEach((p, i) => {
        const base = labelOf(pname, perms.length === 1 ? 63 : 58) || 'rule';
        let name = perms.length === 1 ? base : `${base}-${i}`;
        for (let n = 2; names.has(name); n++) name = `${base}-${n}`;
        names.add(name);
        const rule: Obj = { name, action: action === 'DENY' ? 'deny' : 'allow', ...permissionOf(what, `${pf}.permissions[${i}]`, p) };
        if (from) rule['from'] = from;
        (action === 'DENY' ? deny : allow).push(rule);
      });
    }
  }
  if (allowFilters === 0 && deny.length === 0 && !defaultAllow) return undefined;
  return { default: allowFilters > 0 && !defaultAllow ? 'deny' : 'allow', rules: [...deny, ...allow] };
}

/** Principals -> workload names (undefined = any source). A workload is an authenticated principal name. */
function principalsOf(what: string, field: string, list: Obj[], workloads: Set<string>): string[] | undefined {
  if (list.length === 0) fail(what, field, 'is empty (matches no one)');
  const names: string[] = [];
  const walk = (p: Obj, f: string): boolean => {
    if (p.any) return true;
    if (p.or_ids) return (p.or_ids.ids ?? []).map((x: Obj, i: number) => walk(x, `${f}.or_ids.ids[${i}]`)).some(Boolean);
    const exact = p.authenticated?.principal_name?.exact;
    if (typeof exact === 'string') {
      // an identity (spiffe://...) names the workloads that have it, whoever knows them (the validation checks its form)
      if (!exact.startsWith('spiffe://') && !workloads.has(exact)) fail(what, `${f}.authenticated.principal_name.exact`, `principal '${exact}' is not a workload sockmesh knows (listener metadata sockmesh.workloads) nor a spiffe:// identity`);
      if (!names.includes(exact)) names.push(exact);
      return false;
    }
    fail(what, f, 'only any, or_ids and authenticated.principal_name.exact (a workload name or a spiffe:// identity) principals are supported');
  };
  const any = list.map((p, i) => walk(p, `${field}[${i}]`)).some(Boolean);
  return any ? undefined : names;
}

/** One permission -> rule conditions {methods, paths, headers}; and_rules combine kinds, or_rules one kind. */
function permissionOf(what: string, field: string, p: Obj): Obj {
  const out: Obj = {};
  const add = (q: Obj, f: string): void => {
    if (q.any) return;
    if (q.and_rules) {
      (q.and_rules.rules ?? []).forEach((x: Obj, i: number) => add(x, `${f}.and_rules.rules[${i}]`));
      return;
    }
    if (q.or_rules) {
      const list: Obj[] = q.or_rules.rules ?? [];
      const kinds = new Set(list.map((x) => (x.url_path ? 'path' : x.header?.name === ':method' ? 'method' : 'other')));
      if (kinds.size !== 1 || kinds.has('other')) fail(what, `${f}.or_rules`, 'only an or of paths or of :method matches is supported');
      if (kinds.has('path')) {
        if (out['paths']) fail(what, f, 'more than one set of paths in one permission');
        out['paths'] = list.map((x, i) => pathOf(what, `${f}.or_rules.rules[${i}].url_path`, x.url_path));
      } else {
        if (out['methods']) fail(what, f, 'more than one set of methods in one permission');
        out['methods'] = list.flatMap((x, i) => methodsOf(what, `${f}.or_rules.rules[${i}].header`, x.header));
      }
      return;
    }
    if (q.url_path) {
      if (out['paths']) fail(what, f, 'more than one path condition in one permission');
      out['paths'] = [pathOf(what, `${f}.url_path`, q.url_path)];
      return;
    }
    if (q.header) {
      if (q.header.name === ':method') {
        if (out['methods']) fail(what, f, 'more than one :method condition in one permission');
        out['methods'] = methodsOf(what, `${f}.header`, q.header);
      } else (out['headers'] ??= []).push(headerMatcher(what, `${f}.header`, q.header));
      return;
    }
    fail(what, f, `permission ${Object.keys(q).filter((k) => k !== 'rule').join(', ') || '(empty)'} is not supported (any, and_rules, or_rules, url_path and header are)`);
  };
  add(p, field);
  return out;
}

function pathOf(what: string, field: string, pm: Obj): Obj {
  if (!pm.path) fail(what, `${field}.path`, 'is required');
  return stringMatcher(what, `${field}.path`, pm.path);
}
