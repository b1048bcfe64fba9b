// The L7 part of a service as Envoy resources (the reverse of agent/sources/xds/digest-http.ts, which must read them back
// into the same model). Plain objects shaped as protobufjs encodes them (enums as numbers, wrappers as {value}):
// snapshot.ts frames them.
//
// Per port entry of an HTTP service: one Cluster (+ ClusterLoadAssignment) per backend group, named
// `<entry cluster>~<group>[~<upstream protocol>]` (xds/sockmesh.ts groupCluster: never an L4 entry's name, so that a
// switch between L4 and L7 or between protocols is applied whole); one Listener per VIP with an HttpConnectionManager carrying the routes inline (no RDS round trip) and the
// authorization as RBAC filters. What Envoy cannot say travels as filter_metadata.sockmesh (see the agent side).
import { ENUM as E, FILTER, HTTP_PROTOCOL_OPTIONS, HTTP_PROTOCOL_OPTIONS_TYPE } from '../xds/envoy.js';
import { encodeAny as pack, type AnyMessage } from '../xds/protos.js';
import { DEFAULT_ALLOW_POLICY, sockmeshMetadata as meta } from '../xds/sockmesh.js';
import { duration } from '../xds/wellknown.js';
import type { AuthzRule, HeaderMatch, HealthCheck, HeaderRewrite, HttpPolicy, Route, Service, StringMatch } from '../agent/model/types.js';

type Obj = Record<string, unknown>;

/** Every group of an HTTP service: those with backends (in the order of their first backend), then the routes'. */
export function serviceGroups(svc: Service, backendGroups: Iterable<string>): string[] {
  const out = [...backendGroups];
  for (const r of svc.http?.routes ?? []) for (const s of r.split) if (!out.includes(s.group)) out.push(s.group);
  return out;
}

/**
 * What a Cluster of the service says besides its name, endpoints and balancing (balancing.ts): breaker, outlier
 * detection, health check, and its group and the kernel's algorithm in metadata.
 */
export function clusterHttpFields(svc: Service, group: string | undefined): Obj {
  const out: Obj = {};
  const h = svc.http;
  if (h) {
    const cb = h.circuitBreaker;
    out['circuit_breakers'] = {
      thresholds: [{
        max_connections: { value: cb.maxConnections }, max_pending_requests: { value: cb.maxPendingRequests },
        max_requests: { value: cb.maxRequests }, max_retries: { value: cb.maxRetries },
      }],
    };
    const proto = h.upstreamProtocol;
    if (proto !== undefined) {
      // as Envoy reads it (and Istio writes it for a port named http2/grpc); absent = the client's protocol
      const o = proto === 'downstream' ? { use_downstream_protocol_config: {} }
        : { explicit_http_config: proto === 'h2' ? { http2_protocol_options: {} } : { http_protocol_options: {} } };
      out['typed_extension_protocol_options'] = { [HTTP_PROTOCOL_OPTIONS]: pack(HTTP_PROTOCOL_OPTIONS_TYPE, o) };
    }
    const od = h.outlierDetection;
    if (od) {
      out['outlier_detection'] = {
        consecutive_5xx: { value: od.consecutive5xx }, enforcing_consecutive_5xx: { value: od.consecutive5xx > 0 ? 100 : 0 },
        consecutive_gateway_failure: { value: od.consecutiveGatewayErrors },
        enforcing_consecutive_gateway_failure: { value: od.consecutiveGatewayErrors > 0 ? 100 : 0 },
        base_ejection_time: duration(od.baseEjectionMs), max_ejection_time: duration(od.maxEjectionMs),
        max_ejection_percent: { value: od.maxEjectionPercent },
        ...(od.intervalMs !== undefined ? { interval: duration(od.intervalMs) } : {}),
      };
    }
  }
  if (svc.healthCheck) out['health_checks'] = [healthCheck(svc.healthCheck)];
  const m: Obj = {};
  if (h) {
    m['group'] = group ?? 'default';
    m['algorithm'] = svc.algorithm; // lb_policy is the proxy's balancer here
  }
  if (svc.affinityTimeoutSeconds > 0) m['affinity_timeout_seconds'] = svc.affinityTimeoutSeconds;
  if (Object.keys(m).length > 0) out['metadata'] = meta(m);
  return out;
}

function healthCheck(hc: HealthCheck): Obj {
  const o: Obj = {
    timeout: duration(hc.timeoutMs), interval: duration(hc.intervalMs),
    unhealthy_threshold: { value: hc.unhealthyThreshold }, healthy_threshold: { value: hc.healthyThreshold },
  };
  if (hc.kind === 'http') {
    // Envoy's ranges are half-open [start, end)
    o['http_health_check'] = { path: hc.path ?? '/', expected_statuses: (hc.expectedStatuses ?? []).map(([a, b]) => ({ start: a, end: b + 1 })) };
  } else if (hc.kind === 'grpc') o['grpc_health_check'] = { service_name: hc.grpcService ?? '' };
  else o['tcp_health_check'] = {};
  return o;
}

// ---- the listener ----

function stringMatcher(m: StringMatch): Obj {
  if ('exact' in m) return { exact: m.exact };
  if ('prefix' in m) return { prefix: m.prefix };
  return { safe_regex: { regex: m.regex } };
}

function headerMatcher(h: HeaderMatch): Obj {
  const o: Obj = { name: h.name };
  if (h.value) o['string_match'] = stringMatcher(h.value);
  else o['present_match'] = true;
  if (h.invert) o['invert_match'] = true;
  return o;
}

const methodMatcher = (methods: string[]): Obj =>
  methods.length === 1 ? { name: ':method', string_match: { exact: methods[0] } } : { name: ':method', safe_regex_match: { regex: `^(${methods.join('|')})$` } };

function headerOptions(rw: HeaderRewrite): Obj {
  return {
    add: Object.entries(rw.set).map(([key, value]) => ({ header: { key, value }, append_action: E()['OVERWRITE'] })),
    remove: rw.remove,
  };
}

/** Envoy's retry_on words for the model's ('timeout' has none: Envoy counts a per-try timeout as a 5xx). */
const ENVOY_RETRY_ON = new Set(['5xx', 'gateway-error', 'reset', 'connect-failure', 'retriable-status-codes', 'cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted', 'unavailable']);

function route(r: Route, clusterOf: (group: string) => string): Obj {
  const match: Obj = {};
  const p = r.match.path;
  if (!p) match['prefix'] = '';
  else if ('exact' in p) match['path'] = p.exact;
  else if ('prefix' in p) match['prefix'] = p.prefix;
  else match['safe_regex'] = { regex: p.regex };
  const headers: Obj[] = [];
  if (r.match.methods?.length) headers.push(methodMatcher(r.match.methods));
  for (const h of r.match.headers ?? []) headers.push(headerMatcher(h));
  if (headers.length > 0) match['headers'] = headers;

  const action: Obj = {};
  if (r.split.length === 1 && r.split[0]!.weight === 1) action['cluster'] = clusterOf(r.split[0]!.group);
  else action['weighted_clusters'] = { clusters: r.split.map((s) => ({ name: clusterOf(s.group), weight: { value: s.weight } })) };
  action['timeout'] = duration(r.timeoutMs);
  const out: Obj = { name: r.name, match, route: action };
  const rt = r.retry;
  if (rt) {
    const policy: Obj = {
      retry_on: rt.retryOn.filter((x) => ENVOY_RETRY_ON.has(x)).join(','),
      num_retries: { value: rt.attempts },
      retry_back_off: { base_interval: duration(rt.backoffBaseMs), max_interval: duration(rt.backoffMaxMs) },
    };
    if (rt.perTryTimeoutMs > 0) policy['per_try_timeout'] = duration(rt.perTryTimeoutMs);
    if (rt.retriableStatusCodes.length > 0) policy['retriable_status_codes'] = rt.retriableStatusCodes;
    action['retry_policy'] = policy;
    out['per_request_buffer_limit_bytes'] = { value: rt.bufferLimitBytes };
    // What Envoy's retry policy cannot say: the exact conditions, the budget (Envoy's is per cluster), methods.
    out['metadata'] = meta({
      retryOn: rt.retryOn,
      // only a budget of the route's own: it replaces maxRetries, the default does not (RetryPolicy.budgetSet)
      ...(rt.budgetSet ? { budget: { percent: rt.budgetPercent, minRetryConcurrency: rt.minRetryConcurrency } } : {}),
      nonIdempotent: rt.retryNonIdempotent,
    });
  }
  const req = headerOptions(r.requestHeaders);
  const res = headerOptions(r.responseHeaders);
  if ((req['add'] as Obj[]).length) out['request_headers_to_add'] = req['add'];
  if ((req['remove'] as string[]).length) out['request_headers_to_remove'] = req['remove'];
  if ((res['add'] as Obj[]).length) out['response_headers_to_add'] = res['add'];
  if ((res['remove'] as string[]).length) out['response_headers_to_remove'] = res['remove'];
  return out;
}

function permission(rule: AuthzRule): Obj {
  const and: Obj[] = [];
  if (rule.methods?.length) {
    and.push(rule.methods.length === 1 ? { header: methodMatcher(rule.methods) } : { or_rules: { rules: rule.methods.map((m) => ({ header: methodMatcher([m]) })) } });
  }
  if (rule.paths?.length) {
    const paths = rule.paths.map((p) => ({ url_path: { path: stringMatcher(p) } }));
    and.push(paths.length === 1 ? paths[0]! : { or_rules: { rules: paths } });
  }
  for (const h of rule.headers ?? []) and.push({ header: headerMatcher(h) });
  if (and.length === 0) return { any: true };
  return and.length === 1 ? and[0]! : { and_rules: { rules: and } };
}

function policy(rule: AuthzRule): Obj {
  const principals = rule.from?.length
    ? rule.from.map((w) => ({ authenticated: { principal_name: { exact: w } } }))
    : [{ any: true }];
  return { permissions: [permission(rule)], principals };
}

/**
 * Authorization as Envoy's RBAC filters, Istio's way: a DENY filter with the deny rules, then an ALLOW filter with
 * the allow rules. A default of allow with an ALLOW filter is a last policy matching everything, named so that the
 * agent reads it back as the default rather than as a rule.
 */
function rbacFilters(h: HttpPolicy): Obj[] {
  const a = h.authz;
  if (!a) return [];
  const filters: Obj[] = [];
  const deny = a.rules.filter((r) => r.action === 'deny');
  const allow = a.rules.filter((r) => r.action === 'allow');
  const rbac = (action: number, rules: AuthzRule[], defaultAllow: boolean): Obj => {
    const policies: Obj = {};
    for (const r of rules) policies[r.name] = policy(r);
    if (defaultAllow) policies[DEFAULT_ALLOW_POLICY] = { permissions: [{ any: true }], principals: [{ any: true }] };
    return { name: 'envoy.filters.http.rbac', typed_config: pack(FILTER.httpRbac, { rules: { action, policies } }) };
  };
  if (deny.length > 0) filters.push(rbac(E()['DENY']!, deny, false));
  if (a.defaultAction === 'deny' || allow.length > 0 || deny.length === 0) filters.push(rbac(E()['ALLOW']!, allow, a.defaultAction === 'allow'));
  return filters;
}

/**
 * Workload names an authorization names (their cgroups go with the listener). An identity (spiffe://...) is no
 * workload name: it goes as the RBAC principal alone, and each agent resolves it to its own workloads with it.
 */
export function referencedWorkloads(svc: Service): string[] {
  const out: string[] = [];
  for (const r of svc.http?.authz?.rules ?? []) for (const w of r.from ?? []) if (!w.startsWith('spiffe://') && !out.includes(w)) out.push(w);
  return out;
}

let routerAny: AnyMessage | undefined;

/**
 * The Listener of one VIP of an HTTP port entry. `clusterOf` names a group's cluster in this entry; `clusters` are
 * every group's cluster in the order of the groups' backends (so that the agent lists backends as the model does,
 * and knows the groups no route names); `workloads` the cgroups of the workloads the authorization names.
 */
export function httpListener(
  svc: Service, name: string, address: Obj, entryCluster: string, clusterOf: (group: string) => string,
  clusters: string[], workloads: { name: string; cgroups: string[] }[],
): Obj {
  const h = svc.http!;
  const hcm = {
    stat_prefix: entryCluster,
    route_config: {
      name: entryCluster,
      virtual_hosts: [{ name: svc.name, domains: ['*'], routes: h.routes.map((r) => route(r, clusterOf)) }],
    },
    http_filters: [...rbacFilters(h), { name: 'envoy.filters.http.router', typed_config: (routerAny ??= pack(FILTER.router, {})) }],
  };
  const m: Obj = { service: svc.name, failMode: h.failMode, accessLogSample: h.accessLogSample };
  if (workloads.length > 0) m['workloads'] = workloads;
  m['clusters'] = clusters;
  return {
    name,
    address,
    filter_chains: [{ filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: pack(FILTER.httpConnectionManager, hcm) }] }],
    metadata: meta(m),
  };
}
