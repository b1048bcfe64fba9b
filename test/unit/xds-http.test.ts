// The L7 part of xDS: a file config with http/healthCheck served by the control plane (controlplane/snapshot.ts)
// and read back by the agent's translator gives the model parseConfig gives; foreign Envoy resources (as Istio or
// another control plane writes them) translate into the expected routes, groups, retries and authorization; what
// cannot be translated is NACKed naming the resource and field, or reported.
import t from 'tap';
import { parseConfig } from '../../agent/model/config.js';
import type { Model, Service } from '../../agent/model/types.js';
import { buildModel, ModelBuilder } from '../../agent/sources/xds/build.js';
import { digestCluster, digestEndpoints, digestListener, digestRoute, type XdsState } from '../../agent/sources/xds/digest.js';
import { Journal } from '../../agent/sources/xds/journal.js';
import { FILTER, HTTP_PROTOCOL_OPTIONS, HTTP_PROTOCOL_OPTIONS_TYPE, TYPE } from '../../xds/envoy.js';
import { packAny, unpackAny } from '../../xds/protos.js';
import { Snapshot } from '../../controlplane/snapshot.js';

type Obj = Record<string, any>;

const CONFIG = `
workloads:
  - {name: frontend, cgroups: [/sockmesh-test-abc/client]}
  - {name: batch, cgroups: [/batch, /batch2]}
  - {name: unused, cgroups: [/nobody]}
services:
  - name: web
    vips: [127.100.0.1, "::1"]
    ports: [{port: 80}]
    algorithm: maglev
    affinity: {timeoutSeconds: 60}
    backends:
      - {address: 127.0.0.1, port: 18081}
      - {address: 127.0.0.1, port: 18082, group: canary, weight: 3}
      - {address: "::1", port: 18081}
      - {address: "::1", port: 18082, group: canary}
      - {address: 127.0.0.2, port: 18083, group: spare}
    healthCheck: {type: http, path: /healthz, interval: 2s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 4, expectedStatuses: [200, '204-299']}
    http:
      failMode: open
      balancer: round-robin
      upstreamProtocol: h2
      accessLogSample: 0.25
      circuitBreaker: {maxConnections: 10, maxPendingRequests: 0, maxRequests: 30, maxRetries: 0}
      outlierDetection: {consecutive5xx: 0, consecutiveGatewayErrors: 2, baseEjectionTime: 1500ms, maxEjectionTime: 1m, maxEjectionPercent: 0}
      authz:
        default: deny
        rules:
          - {name: fe-get, action: allow, from: [frontend, batch], methods: [GET, HEAD], paths: [{prefix: /api}, {regex: '/v[0-9]+/.*'}], headers: [{name: x-env, exact: prod}, {name: x-trace}]}
          - {name: no-admin, action: deny, paths: [{exact: /admin}], headers: [{name: x-bad, prefix: evil, invert: true}]}
          - {name: all, action: allow, from: [batch, 'spiffe://cluster.local/ns/shop/sa/cart']}   # an identity: an RBAC principal as Istio writes it
          - {name: a-rule-name-of-sixty-three-characters-which-is-the-most-allowed, action: deny, methods: [TRACE]}
      routes:
        - name: api
          match: {path: {prefix: /api}, methods: [GET, POST], headers: [{name: x-canary, exact: "1"}, {name: x-not, regex: 'a.*', invert: true}]}
          split: [{group: default, weight: 90}, {group: canary, weight: 10}]
          timeout: 0s
          retries: {attempts: 0, perTryTimeout: 1s, retryOn: [5xx, timeout, unavailable], retriableStatusCodes: [409, 429],
                    backoff: {base: 10ms, max: 1s}, budget: {percent: 12.5, minRetryConcurrency: 0}, bufferLimit: 4KiB, nonIdempotent: true}
          requestHeaders: {set: {x-from-mesh: "1"}, remove: [x-debug]}
          responseHeaders: {remove: [server]}
        - name: exact--match
          match: {path: {exact: /}}
          split: [{group: canary, weight: 5}]
          retries: {}
        - name: rest
          match: {path: {regex: '/(a|b)/.*'}}
  - name: multi
    vips: [127.100.0.2]
    ports: [{port: 80, targetPort: 8080}, {port: 443, targetPort: 8443}]
    backends: [{address: 127.0.0.1}, {address: 127.0.0.3, group: blue}]
    healthCheck: {type: grpc}
    http:
      upstreamProtocol: http1
      authz: {default: allow}
      routes: [{name: all, split: [{group: blue}]}]
  - name: open
    vips: [127.100.0.3]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, port: 9000}]
    http:
      upstreamProtocol: downstream
      authz: {default: allow, rules: [{name: a, action: allow, methods: [GET]}, {name: d, action: deny, from: [frontend]}]}
  - name: l4
    vips: [127.100.0.4]
    ports: [{port: 53, protocol: tcp}, {port: 53, protocol: udp}]   # (port entries come back in port, protocol order)
    healthCheck: {type: tcp}
    backends: [{address: 127.0.0.1, port: 5353}]
  - name: plain
    vips: [127.100.0.5]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, port: 8080}]
`;

/** Every resource a snapshot serves, decoded, into the translator's state. */
function stateOf(snap: Snapshot): XdsState {
  const decoded = (url: string) => [...snap.types.get(url)!.resources.values()].map((r) => [r.name, unpackAny<Obj>(r.any)] as const);
  return {
    listeners: new Map(decoded(TYPE.listener).map(([n, o]) => [n, digestListener(n, o)])),
    routes: new Map(decoded(TYPE.route).map(([n, o]) => [n, digestRoute(n, o)])),
    clusters: new Map(decoded(TYPE.cluster).map(([n, o]) => [n, digestCluster(n, o)])),
    endpoints: new Map(decoded(TYPE.endpoint).map(([n, o]) => [n, digestEndpoints(n, o)])),
  };
}

/** A model as a comparable value: services by name; workloads by name, only those an authorization names. */
function normal(m: Model): Obj {
  const named = new Set(m.services.flatMap((s) => s.http?.authz?.rules.flatMap((r) => r.from ?? []) ?? []));
  const workloads = (m.workloads ?? []).filter((w) => named.has(w.name)).sort((a, b) => (a.name < b.name ? -1 : 1));
  return { services: [...m.services].sort((a, b) => (a.name < b.name ? -1 : 1)), workloads };
}

t.test('file -> control plane -> agent translator gives the model parseConfig gives', async (t) => {
  const model = parseConfig(CONFIG, 'mesh.yaml');
  t.ok(model.services.find((s) => s.name === 'web')!.http!.authz!.rules[0]!.action === 'deny', 'deny rules first in the model');
  const snap = Snapshot.empty();
  snap.apply(model);
  const r = buildModel(stateOf(snap));
  t.notOk(r.error, String(r.error));
  t.strictSame(normal(r.model!), normal(model));
  t.same(r.unsupported, [], 'nothing of our own config is unsupported');

  // What Envoy sees is Envoy's own vocabulary: the listener has an HCM with inline routes and RBAC filters.
  const l = unpackAny<Obj>(snap.types.get(TYPE.listener)!.resources.get('127.100.0.1:80/tcp')!.any);
  const hcm = unpackAny<Obj>(l.filter_chains[0].filters[0].typed_config);
  t.same(hcm.route_config.virtual_hosts[0].routes.map((x: Obj) => x.name), ['api', 'exact--match', 'rest']);
  t.same(hcm.route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters.map((c: Obj) => [c.name, c.weight.value]), [['web~default~h2', 90], ['web~canary~h2', 10]]);
  t.same(hcm.http_filters.map((f: Obj) => f.typed_config.type_url), [FILTER.httpRbac, FILTER.httpRbac, FILTER.router]);
  t.same(unpackAny<Obj>(hcm.http_filters[0].typed_config).rules.action, 'DENY');
  const c = unpackAny<Obj>(snap.types.get(TYPE.cluster)!.resources.get('web~canary~h2')!.any);
  t.equal(c.lb_policy, 'ROUND_ROBIN');
  t.same(c.health_checks[0].http_health_check.expected_statuses, [{ start: '200', end: '201' }, { start: '204', end: '300' }]);
  t.ok(snap.types.get(TYPE.cluster)!.resources.has('web~spare~h2'), 'a group no route names still has its cluster');
});

t.test('a changed workload rebuilds the listeners of the services naming it, and only those', async (t) => {
  const model = parseConfig(CONFIG, 'mesh.yaml');
  const snap = Snapshot.empty();
  snap.apply(model);
  const moved = { ...model, workloads: model.workloads!.map((w) => (w.name === 'frontend' ? { ...w, cgroups: ['/elsewhere'] } : w)) };
  const changes = snap.apply(moved);
  t.same([...(changes.get(TYPE.listener) ?? [])].sort(), ['127.100.0.1:80/tcp', '127.100.0.3:80/tcp', '[::1]:80/tcp']);
  t.notOk(changes.has(TYPE.cluster));
  const r = buildModel(stateOf(snap));
  t.strictSame(normal(r.model!), normal(moved));
  t.equal(snap.apply(moved).size, 0, 'the same again changes nothing');

  // Services changed one by one (ControlPlane#updateServices) keep the workloads as they are.
  const plain = moved.services.find((s) => s.name === 'plain')!;
  const edited = { ...plain, frontends: plain.frontends.map((f) => ({ ...f, backends: f.backends.map((b) => ({ ...b, weight: 7 })) })) };
  const c2 = snap.applyServices([edited], []);
  t.same([...(c2.get(TYPE.endpoint) ?? [])], ['plain']);
  t.notOk(c2.has(TYPE.listener), 'no listener of an HTTP service changes');
  const after = buildModel(stateOf(snap));
  t.strictSame(normal(after.model!), normal({ ...moved, services: moved.services.map((s) => (s.name === 'plain' ? edited : s)) }));
});

// ---- foreign resources ----

const E = (x: Obj) => x;
const hcmListener = (name: string, vip: string, port: number, hcm: Obj, metadata?: Obj): Obj => E({
  name, address: { socket_address: { address: vip, port_value: port } },
  filter_chains: [{ filters: [{ name: 'hcm', typed_config: packAny(FILTER.httpConnectionManager, { stat_prefix: 'x', ...hcm }) }] }],
  ...(metadata ? { metadata: { filter_metadata: { sockmesh: metadata } } } : {}),
});
const router = { name: 'envoy.filters.http.router', typed_config: packAny(FILTER.router, {}) };
const rbac = (rules: Obj) => ({ name: 'envoy.filters.http.rbac', typed_config: packAny(FILTER.httpRbac, { rules }) });
const ep = (address: string, port: number, weight = 1): Obj => ({ endpoint: { address: { socket_address: { address, port_value: port } } }, load_balancing_weight: { value: weight } });
const cla = (name: string, eps: Obj[]): Obj => ({ cluster_name: name, endpoints: [{ lb_endpoints: eps }] });
const struct = (o: Obj): Obj => ({ fields: Object.fromEntries(Object.entries(o).map(([k, v]) => [k, typeof v === 'string' ? { stringValue: v } : { listValue: { values: v.map((w: Obj) => ({ structValue: { fields: { name: { stringValue: w.name }, cgroups: { listValue: { values: w.cgroups.map((c: string) => ({ stringValue: c })) } } } } })) } }])) });

function state(parts: { listeners?: Obj[]; routes?: Obj[]; clusters?: Obj[]; endpoints?: Obj[] }): XdsState {
  return {
    listeners: new Map((parts.listeners ?? []).map((l) => [l.name, digestListener(l.name, l)])),
    routes: new Map((parts.routes ?? []).map((r) => [r.name, digestRoute(r.name, r)])),
    clusters: new Map((parts.clusters ?? []).map((c) => [c.name, digestCluster(c.name, c)])),
    endpoints: new Map((parts.endpoints ?? []).map((e) => [e.cluster_name, digestEndpoints(e.cluster_name, e)])),
  };
}

const ISTIO_RBAC_DENY = { action: 'DENY', policies: { 'ns[default]-policy[deny-admin]-rule[0]': {
  permissions: [{ and_rules: { rules: [{ or_rules: { rules: [{ url_path: { path: { prefix: '/admin' } } }, { url_path: { path: { exact: '/debug' } } }] } }] } }],
  principals: [{ any: true }],
} } };
const ISTIO_RBAC_ALLOW = { action: 'ALLOW', policies: { 'fe': {
  permissions: [
    { and_rules: { rules: [{ header: { name: ':method', string_match: { exact: 'GET' } } }, { header: { name: 'x-env', string_match: { suffix: '-prod', ignore_case: true } } }] } },
    { url_path: { path: { safe_regex: { regex: '/public/.*' } } } },
  ],
  principals: [{ or_ids: { ids: [{ authenticated: { principal_name: { exact: 'frontend' } } }] } }],
} } };

const foreign = (): { listeners: Obj[]; routes: Obj[]; clusters: Obj[]; endpoints: Obj[] } => ({
  listeners: [hcmListener('ingress', '10.96.0.20', 8080, {
    rds: { route_config_name: 'routes', config_source: { ads: {} } },
    http_filters: [rbac(ISTIO_RBAC_DENY), rbac(ISTIO_RBAC_ALLOW), router],
    use_remote_address: { value: true }, xff_num_trusted_hops: 1,
  }, struct({ workloads: [{ name: 'frontend', cgroups: ['/kubepods/fe'] }] }))],
  routes: [{ name: 'routes', request_headers_to_add: [{ header: { key: 'x-mesh', value: 'on' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
    virtual_hosts: [{ name: 'vh', domains: ['*'], retry_policy: { retry_on: 'connect-failure', num_retries: { value: 4 } }, routes: [
      { name: 'Reviews API', match: { prefix: '/reviews', headers: [{ name: ':method', safe_regex_match: { regex: '^(GET|HEAD)$' } }, { name: 'x-user', present_match: true }] },
        route: { weighted_clusters: { clusters: [{ name: 'outbound|9080|v1|reviews', weight: { value: 75 } }, { name: 'outbound|9080|v2|reviews', weight: { value: 25 } }] },
          timeout: { seconds: 3 }, retry_policy: { retry_on: '5xx,retriable-4xx,refused-stream,envoy-ratelimited', num_retries: { value: 2 }, per_try_timeout: { nanos: 500_000_000 },
            retry_back_off: { base_interval: { nanos: 50_000_000 } }, retriable_status_codes: [503] } },
        response_headers_to_remove: ['Server'] },
      { match: { path: '/health', headers: [{ name: 'x-debug', string_match: { contains: 'y' }, invert_match: true }] }, route: { cluster: 'outbound|9080|v1|reviews' } },
      { match: { prefix: '' }, route: { cluster: 'outbound|9080|v1|reviews', timeout: {} } },
    ] }] }],
  clusters: [
    { name: 'outbound|9080|v1|reviews', type: 'EDS', lb_policy: 'LEAST_REQUEST',
      circuit_breakers: { thresholds: [{ max_requests: { value: 100 }, retry_budget: { budget_percent: { value: 25 }, min_retry_concurrency: { value: 5 } } }, { priority: 'HIGH', max_requests: { value: 1 } }] },
      outlier_detection: { consecutive_5xx: { value: 3 }, enforcing_consecutive_gateway_failure: { value: 100 }, base_ejection_time: { seconds: 10 } },
      health_checks: [{ timeout: { seconds: 1 }, interval: { seconds: 10 }, healthy_threshold: { value: 1 }, unhealthy_threshold: { value: 2 }, http_health_check: { path: '/ready' } }] },
    { name: 'outbound|9080|v2|reviews', type: 'EDS', lb_policy: 'LEAST_REQUEST',
      circuit_breakers: { thresholds: [{ max_requests: { value: 100 }, retry_budget: { budget_percent: { value: 25 }, min_retry_concurrency: { value: 5 } } }, { priority: 'HIGH', max_requests: { value: 1 } }] },
      outlier_detection: { consecutive_5xx: { value: 3 }, enforcing_consecutive_gateway_failure: { value: 100 }, base_ejection_time: { seconds: 10 } },
      health_checks: [{ timeout: { seconds: 1 }, interval: { seconds: 10 }, healthy_threshold: { value: 1 }, unhealthy_threshold: { value: 2 }, http_health_check: { path: '/ready' } }] },
  ],
  endpoints: [cla('outbound|9080|v1|reviews', [ep('10.1.0.1', 9080), ep('10.1.0.2', 9080, 2)]), cla('outbound|9080|v2|reviews', [ep('10.1.0.3', 9080)])],
});

t.test('foreign HTTP resources: routes, weighted clusters as groups, retries, breakers, outlier, health, RBAC', async (t) => {
  const r = buildModel(state(foreign()));
  t.notOk(r.error, String(r.error));
  const svc = r.model!.services[0]! as Service;
  t.equal(svc.name, 'ingress');
  t.same(svc.frontends[0]!.backends.map((b) => `${b.address}:${b.port} w${b.weight} ${b.group}`), [
    '10.1.0.1:9080 w1 outbound-9080-v1-reviews', '10.1.0.2:9080 w2 outbound-9080-v1-reviews', '10.1.0.3:9080 w1 outbound-9080-v2-reviews',
  ]);
  const v1 = 'outbound-9080-v1-reviews';
  const h = svc.http!;
  t.same([h.failMode, h.balancer, h.accessLogSample], ['closed', 'least-request', 0]);
  t.same(h.forwarded, { useRemoteAddress: true, trustedHops: 1 }, 'use_remote_address and xff_num_trusted_hops -> http.forwarded');
  t.same(h.circuitBreaker, { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 100, maxRetries: 3 });
  t.same(h.outlierDetection, { consecutive5xx: 3, consecutiveGatewayErrors: 5, baseEjectionMs: 10_000, maxEjectionMs: 300_000, maxEjectionPercent: 10, intervalMs: 10_000 });
  t.same(svc.healthCheck, { kind: 'http', intervalMs: 10_000, timeoutMs: 1000, healthyThreshold: 1, unhealthyThreshold: 2, path: '/ready', expectedStatuses: [[200, 399]] });
  const mesh = { set: { 'x-mesh': 'on' }, remove: [] };
  t.strictSame(h.routes, [
    {
      name: 'reviews-api',
      match: { path: { prefix: '/reviews' }, methods: ['GET', 'HEAD'], headers: [{ name: 'x-user' }] },
      split: [{ group: v1, weight: 75 }, { group: 'outbound-9080-v2-reviews', weight: 25 }],
      timeoutMs: 3000,
      retry: {
        attempts: 2, perTryTimeoutMs: 500, retryOn: ['5xx', 'timeout', 'retriable-status-codes', 'reset'], retriableStatusCodes: [409, 503],
        backoffBaseMs: 50, backoffMaxMs: 500, budgetPercent: 25, minRetryConcurrency: 5, bufferLimitBytes: 1048576, retryNonIdempotent: true, budgetSet: true,
      },
      requestHeaders: mesh,
      responseHeaders: { set: {}, remove: ['server'] },
    },
    {
      name: 'route-1', match: { path: { exact: '/health' }, headers: [{ name: 'x-debug', value: { regex: '.*y.*' }, invert: true }] },
      split: [{ group: v1, weight: 1 }], timeoutMs: 15_000,
      retry: {
        attempts: 4, perTryTimeoutMs: 0, retryOn: ['connect-failure'], retriableStatusCodes: [], backoffBaseMs: 25, backoffMaxMs: 250,
        budgetPercent: 25, minRetryConcurrency: 5, bufferLimitBytes: 1048576, retryNonIdempotent: true, budgetSet: true,
      },
      requestHeaders: mesh, responseHeaders: { set: {}, remove: [] },
    },
    {
      name: 'route-2', match: {}, split: [{ group: v1, weight: 1 }], timeoutMs: 0,
      retry: {
        attempts: 4, perTryTimeoutMs: 0, retryOn: ['connect-failure'], retriableStatusCodes: [], backoffBaseMs: 25, backoffMaxMs: 250,
        budgetPercent: 25, minRetryConcurrency: 5, bufferLimitBytes: 1048576, retryNonIdempotent: true, budgetSet: true,
      },
      requestHeaders: mesh, responseHeaders: { set: {}, remove: [] },
    },
  ]);
  t.strictSame(h.authz, {
    defaultAction: 'deny',
    rules: [
      { name: 'ns-default-policy-deny-admin-rule-0', action: 'deny', paths: [{ prefix: '/admin' }, { exact: '/debug' }] },
      { name: 'fe-0', action: 'allow', from: ['frontend'], methods: ['GET'], headers: [{ name: 'x-env', value: { regex: '.*-[pP][rR][oO][dD]' } }] },
      { name: 'fe-1', action: 'allow', from: ['frontend'], paths: [{ regex: '/public/.*' }] },
    ],
  });
  t.strictSame(r.model!.workloads, [{ name: 'frontend', cgroups: ['/kubepods/fe'] }]);
  const un = r.unsupported.join('\n');
  t.match(un, /retry_on: 'envoy-ratelimited' not supported/);
  t.match(un, /circuit_breakers\.thresholds\[1\]: priority HIGH not applied/);
  t.notMatch(un, /another/, 'both clusters have the same settings: nothing to report');
});

t.test('upstream protocol from the clusters\' typed_extension_protocol_options (as Istio writes them), or their deprecated fields', async (t) => {
  const opts = (o: Obj): Obj => ({ typed_extension_protocol_options: { [HTTP_PROTOCOL_OPTIONS]: packAny(HTTP_PROTOCOL_OPTIONS_TYPE, o) } });
  const withClusters = (a: Obj, b: Obj): ReturnType<typeof buildModel> => {
    const parts = foreign();
    Object.assign(parts.clusters[0]!, a);
    Object.assign(parts.clusters[1]!, b);
    return buildModel(state(parts));
  };
  const protoOf = (r: ReturnType<typeof buildModel>): unknown => { t.notOk(r.error, String(r.error)); return r.model!.services[0]!.http!.upstreamProtocol; };
  const h2 = opts({ explicit_http_config: { http2_protocol_options: {} } });
  const h1 = opts({ explicit_http_config: { http_protocol_options: {} } });
  t.equal(protoOf(withClusters({}, {})), undefined, 'nothing said: the client\'s protocol (sockmesh\'s default)');
  t.equal(protoOf(withClusters(h2, h2)), 'h2', 'explicit_http_config.http2_protocol_options: h2');
  t.equal(protoOf(withClusters(h1, h1)), 'http1', 'explicit_http_config.http_protocol_options: http1');
  const down = opts({ use_downstream_protocol_config: { http2_protocol_options: {} } });
  t.equal(protoOf(withClusters(down, down)), 'downstream', 'use_downstream_protocol_config');
  t.equal(protoOf(withClusters({ http2_protocol_options: {} }, { http2_protocol_options: {} })), 'h2', 'the deprecated Cluster.http2_protocol_options');
  t.equal(protoOf(withClusters({ protocol_selection: 'USE_DOWNSTREAM_PROTOCOL', http2_protocol_options: {} }, { protocol_selection: 'USE_DOWNSTREAM_PROTOCOL' })), 'downstream', 'protocol_selection USE_DOWNSTREAM_PROTOCOL');
  const mixed = withClusters(h2, h1);
  t.equal(protoOf(mixed), 'h2', 'the first cluster\'s, for the service');
  t.match(mixed.unsupported.join('\n'), /cluster 'outbound\|9080\|v2\|reviews' has another upstreamProtocol than cluster 'outbound\|9080\|v1\|reviews'/);
  const auto = withClusters(opts({ auto_config: {} }), {});
  t.equal(protoOf(auto), undefined);
  t.match(auto.unsupported.join('\n'), /auto_config not supported/);
  const h3 = withClusters(opts({ explicit_http_config: { http3_protocol_options: {} } }), {});
  t.match(h3.unsupported.join('\n'), /only HTTP\/1\.1 and HTTP\/2 are supported/);
  t.throws(() => digestCluster('c', { name: 'c', type: 'EDS', typed_extension_protocol_options: { [HTTP_PROTOCOL_OPTIONS]: packAny(FILTER.router, {}) } }),
    { message: /cluster 'c': typed_extension_protocol_options\['envoy\.extensions\.upstreams\.http\.v3\.HttpProtocolOptions'\]: must be an envoy\.extensions\.upstreams\.http\.v3\.HttpProtocolOptions, got type\.googleapis\.com\/envoy\.extensions\.filters\.http\.router\.v3\.Router/ });
});

t.test('what cannot be translated is NACKed, naming the resource and the field', async (t) => {
  const withRoute = (route: Obj) => () => digestRoute('rc', { name: 'rc', virtual_hosts: [{ name: 'v', domains: ['*'], routes: [route] }] });
  t.throws(withRoute({ match: { prefix: '/', query_parameters: [{ name: 'a' }] }, route: { cluster: 'c' } }),
    { name: 'XdsResourceError', message: /route_configuration 'rc': virtual_hosts\[0\]\.routes\[0\]\.match\.query_parameters: is not supported/ });
  t.throws(withRoute({ match: { prefix: '/' }, route: { cluster: 'c', prefix_rewrite: '/x' } }), { message: /routes\[0\]\.route\.prefix_rewrite: is not supported/ });
  t.throws(withRoute({ match: { prefix: '/' }, route: { cluster_header: 'x-cluster' } }), { message: /routes\[0\]\.route\.cluster_header: is not supported/ });
  t.throws(withRoute({ match: { safe_regex: { regex: '(?P<x>a)' } }, route: { cluster: 'c' } }), { message: /routes\[0\]\.match\.safe_regex\.regex: not a regular expression sockmesh can run/ });
  t.throws(withRoute({ match: { prefix: '/', headers: [{ name: ':authority', exact_match: 'a' }] }, route: { cluster: 'c' } }), { message: /headers\[0\]\.name: matching the pseudo-header :authority is not supported/ });
  t.throws(withRoute({ match: { prefix: '/', case_sensitive: { value: false } }, route: { cluster: 'c' } }), { message: /match\.case_sensitive: case-insensitive path matching is not supported/ });

  const listenerWith = (filters: Obj[], metadata?: Obj) => () => digestListener('l', hcmListener('l', '10.0.0.1', 80, { rds: { route_config_name: 'r', config_source: { ads: {} } }, http_filters: [...filters, router] }, metadata));
  t.throws(listenerWith([rbac({ action: 'ALLOW', policies: { p: { permissions: [{ any: true }], principals: [{ source_ip: { address_prefix: '10.0.0.0', prefix_len: { value: 8 } } }] } } })]),
    { message: /listener 'l': filter_chains\[0\]\.filters\[0\]\.typed_config\.http_filters\[0\]\.typed_config\.rules\.policies\['p'\]\.principals\[0\]: only any, or_ids and authenticated/ });
  t.throws(listenerWith([rbac({ action: 'ALLOW', policies: { p: { permissions: [{ any: true }], principals: [{ authenticated: { principal_name: { exact: 'ghost' } } }] } } })]),
    { message: /principal 'ghost' is not a workload sockmesh knows/ });
  t.throws(listenerWith([rbac({ action: 'DENY', policies: { p: { permissions: [{ not_rule: { any: true } }], principals: [{ any: true }] } } })]),
    { message: /permission not_rule is not supported/ });
  t.throws(listenerWith([rbac({ action: 'ALLOW', policies: {} }), rbac({ action: 'ALLOW', policies: {} })]), { message: /more than one RBAC filter with action ALLOW/ });
  t.throws(listenerWith([], struct({ workloads: [{ name: 'w', cgroups: ['relative'] }] })), { message: /metadata\.filter_metadata\.sockmesh\.workloads\[0\]\.cgroups\[0\]: must be a cgroup path/ });

  // Validation problems found with the whole service are mapped back to the resource and field.
  const parts = foreign();
  parts.routes[0]!.virtual_hosts[0].routes[0].request_headers_to_add = [{ header: { key: 'content-length', value: '1' } }];
  const bad = buildModel(state(parts));
  t.match(bad.error, /route_configuration 'routes': virtual_hosts\[0\]\.routes\[0\] \(requestHeaders\.set\.content-length\): service 'ingress', route 'reviews-api': header content-length is managed by the proxy/);
  const dupGroup = foreign();
  dupGroup.clusters[1]!.metadata = { filter_metadata: { sockmesh: { fields: { group: { stringValue: 'outbound-9080-v1-reviews' } } } } };
  t.match(buildModel(state(dupGroup)).error, /listener 'ingress': cluster 'outbound\|9080\|v1\|reviews' and cluster 'outbound\|9080\|v2\|reviews' are both backend group/);
});

t.test('a cluster with no endpoints is an empty group (503 from the proxy), not a NACK; incremental updates', async (t) => {
  const parts = foreign();
  parts.endpoints[1] = cla('outbound|9080|v2|reviews', []);
  const s = state(parts);
  const b = new ModelBuilder();
  const first = b.update(s, s.listeners.keys(), new Journal());
  t.notOk(first.error, String(first.error));
  t.same(first.model!.services[0]!.http!.routes[0]!.split.map((x) => x.group), ['outbound-9080-v1-reviews', 'outbound-9080-v2-reviews']);
  // the endpoints arrive: the same listener is rebuilt, the model changes
  const full = state(foreign());
  const second = b.update(full, ['ingress'], new Journal());
  t.same([...second.changed], ['ingress']);
  t.equal(second.model!.services[0]!.frontends[0]!.backends.length, 3);
  t.same(second.model!.workloads, [{ name: 'frontend', cgroups: ['/kubepods/fe'] }]);
});

t.test('a service switching between L4 and L7, or between upstream protocols, gets clusters of other names', async (t) => {
  // With the same names the agent applies the new listener with the old cluster, or the new cluster with the old
  // endpoints (an L4 frontend to an h2c port: HTTP/2 frames to HTTP/1.1 clients); with new ones the new listener warms
  // until its clusters and endpoints are there, and the switch is applied whole (test/kernel/xds-switch.test.ts).
  const kinds: Record<string, string> = {
    l4: '',
    http1: 'http: {upstreamProtocol: http1, routes: [{name: all}]}',
    h2: 'http: {upstreamProtocol: h2, routes: [{name: all}]}',
    unset: 'http: {routes: [{name: all}]}',
  };
  const clusters = new Map<string, string[]>();
  for (const [kind, http] of Object.entries(kinds)) {
    const model = parseConfig(`services:
  - name: flip
    vips: [127.100.9.1]
    ports: [{port: 80}]
    backends: [{address: 127.0.0.1, port: 18080}]
    ${http}
`, 'flip.yaml');
    const snap = Snapshot.empty();
    snap.apply(model);
    const names = [...snap.types.get(TYPE.cluster)!.resources.keys()].sort();
    t.same([...snap.types.get(TYPE.endpoint)!.resources.keys()].sort(), names, `${kind}: one assignment per cluster, of its name`);
    clusters.set(kind, names);
    // and the agent reads it back as the same service
    const r = buildModel(stateOf(snap));
    t.notOk(r.error, String(r.error));
    t.same(r.model!.services.map((s) => [s.name, s.http?.upstreamProtocol ?? (s.http ? 'unset' : 'l4')]), [['flip', kind]], `${kind}: read back`);
  }
  t.same(clusters.get('l4'), ['flip'], 'L4: the service name');
  t.same(clusters.get('h2'), ['flip~default~h2'], 'h2: group and protocol');
  const all = [...clusters.values()].flat();
  t.equal(new Set(all).size, all.length, `no two kinds share a cluster name: ${all.join(', ')}`);
});
