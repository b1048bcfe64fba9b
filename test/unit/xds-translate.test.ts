// Translation alone: foreign-style Envoy resources (as another control plane would send them) into the model, what is
// reported as unsupported, and errors that name the resource and the field.
import t from 'tap';
import { buildModel, dnsLabel } from '../../agent/sources/xds/build.js';
import { digestCluster, digestEndpoints, digestListener, digestRoute, type XdsState } from '../../agent/sources/xds/digest.js';
import { FILTER } from '../../xds/envoy.js';
import { packAny, protoRoot } from '../../xds/protos.js';

type Obj = Record<string, any>;
const E = (enumName: string, value: string): number => protoRoot().lookupEnum(enumName).values[value]!;
const tcpProxy = (cfg: Obj) => ({ name: 'envoy.filters.network.tcp_proxy', typed_config: packAny(FILTER.tcpProxy, { stat_prefix: 's', ...cfg }) });
const listener = (name: string, address: string, port: number, filters: Obj[]): Obj => ({
  name, address: { socket_address: { address, port_value: port } }, filter_chains: [{ filters }],
});
const endpoints = (name: string, eps: Obj[], extra: Obj[] = []): Obj => ({
  cluster_name: name,
  endpoints: [{ locality: { region: 'eu', zone: 'a' }, lb_endpoints: eps }, ...extra],
});
const ep = (address: string, port: number, weight?: number, health?: string): Obj => ({
  endpoint: { address: { socket_address: { address, port_value: port } } },
  ...(weight !== undefined ? { load_balancing_weight: { value: weight } } : {}),
  ...(health ? { health_status: health } : {}),
});

function state(parts: { listeners?: Obj[]; routes?: Obj[]; clusters?: Obj[]; endpoints?: Obj[] }): XdsState {
  return {
    listeners: new Map((parts.listeners ?? []).map((l) => [l.name, digestListener(l.name, l)])),
    routes: new Map((parts.routes ?? []).map((r) => [r.name, digestRoute(r.name, r)])),
    clusters: new Map((parts.clusters ?? []).map((c) => [c.name, digestCluster(c.name, c)])),
    endpoints: new Map((parts.endpoints ?? []).map((e) => [e.cluster_name, digestEndpoints(e.cluster_name, e)])),
  };
}

t.test('foreign tcp_proxy listener, LEAST_REQUEST cluster, health statuses, priorities', async (t) => {
  const r = buildModel(state({
    listeners: [listener('Ingress Listener_0', '10.96.0.10', 8080, [tcpProxy({ cluster: 'backend' })])],
    clusters: [{ name: 'backend', type: 'EDS', lb_policy: 'LEAST_REQUEST', circuit_breakers: {} }],
    endpoints: [endpoints('backend', [
      ep('10.1.0.1', 9000, 5), ep('10.1.0.2', 9000, undefined, 'HEALTHY'), ep('10.1.0.3', 9000, 2, 'DRAINING'),
      ep('10.1.0.4', 9000, 1, 'UNHEALTHY'), ep('10.1.0.5', 9000, 1, 'TIMEOUT'), ep('10.1.0.6', 9001, 1, 'UNKNOWN'),
    ], [{ priority: 1, lb_endpoints: [ep('10.2.0.1', 9000)] }])],
  }));
  t.notOk(r.error, String(r.error));
  t.same(r.model!.services.map((s) => [s.name, s.algorithm]), [['ingress-listener-0', 'weighted']]);
  t.same(r.model!.services[0]!.frontends[0]!.backends.map((b) => `${b.address}:${b.port}w${b.weight}`),
    ['10.1.0.1:9000w5', '10.1.0.2:9000w1', '10.1.0.3:9000w0', '10.1.0.6:9001w1']);
  t.match(r.unsupported, [/circuit_breakers not applied/, /priority 1 endpoints not used/]);
});

t.test('weighted clusters combine cluster weight x endpoint weight', async (t) => {
  const r = buildModel(state({
    listeners: [listener('canary', '10.96.0.11', 80, [tcpProxy({ weighted_clusters: { clusters: [{ name: 'v1', weight: 90 }, { name: 'v2', weight: 10 }] } })])],
    clusters: [{ name: 'v1', type: 'EDS', lb_policy: 'ROUND_ROBIN' }, { name: 'v2', type: 'EDS', lb_policy: 'RANDOM' }],
    endpoints: [endpoints('v1', [ep('10.0.0.1', 80, 1), ep('10.0.0.2', 80, 2)]), endpoints('v2', [ep('10.0.0.3', 80, 1)])],
  }));
  t.notOk(r.error, String(r.error));
  const b = r.model!.services[0]!.frontends[0]!.backends.map((x) => x.weight);
  // shares 30% / 60% / 10% of the traffic
  t.same(b, [5000, 10000, 1667]);
  t.equal(r.model!.services[0]!.algorithm, 'weighted');
  t.match(r.unsupported, [/combined with weighted balancing/]);
});

t.test('HTTP connection manager over RDS: an L7 service, one backend group per cluster; what does not map reported', async (t) => {
  const hcm = packAny(FILTER.httpConnectionManager, {
    stat_prefix: 'http', rds: { route_config_name: 'web-routes', config_source: { ads: {} } },
    http_filters: [
      { name: 'rbac', typed_config: packAny(FILTER.httpRbac, {}) },
      { name: 'envoy.filters.http.router', typed_config: packAny(FILTER.router, {}) },
    ],
  });
  const s = state({
    listeners: [listener('web-http', '10.96.0.12', 80, [{ name: 'rbac', typed_config: packAny(FILTER.networkRbac, { stat_prefix: 'r' }) }, { name: 'hcm', typed_config: hcm }])],
    routes: [{ name: 'web-routes', virtual_hosts: [{ name: 'all', domains: ['*'], routes: [
      { match: { prefix: '/api' }, route: { cluster: 'api', timeout: { seconds: 5 } } },
      { match: { prefix: '/' }, route: { cluster: 'static' } },
      { match: { prefix: '/old' }, redirect: { path_redirect: '/' } },
    ] }, { name: 'other', domains: ['other.example'], routes: [] }] }],
    clusters: [{ name: 'api', type: 'EDS', lb_policy: 'RING_HASH' }, { name: 'static', type: 'STATIC', load_assignment: endpoints('static', [ep('10.0.1.1', 8080)]) }],
    endpoints: [endpoints('api', [ep('10.0.2.1', 8080)])],
  });
  const r = buildModel(s);
  t.notOk(r.error, String(r.error));
  const svc = r.model!.services[0]!;
  t.same(svc.frontends[0]!.backends, [
    { address: '10.0.2.1', family: 4, port: 8080, weight: 1, group: 'api' },
    { address: '10.0.1.1', family: 4, port: 8080, weight: 1, group: 'static' },
  ]);
  const none = { set: {}, remove: [] };
  t.strictSame(svc.http, {
    failMode: 'closed', balancer: 'least-request', accessLogSample: 0,
    circuitBreaker: { maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3 },
    routes: [
      { name: 'route-0', match: { path: { prefix: '/api' } }, split: [{ group: 'api', weight: 1 }], timeoutMs: 5000, requestHeaders: none, responseHeaders: none },
      { name: 'route-1', match: { path: { prefix: '/' } }, split: [{ group: 'static', weight: 1 }], timeoutMs: 15000, requestHeaders: none, responseHeaders: none },
    ],
  });
  const un = r.unsupported.join('\n');
  t.match(un, /listener 'web-http': RBAC filter not supported/);
  t.match(un, /RING_HASH approximated by maglev/);
  t.match(un, /cluster 'api': its lb_policy has no HTTP balancer \(least-request used\)/);
  t.match(un, /virtual_hosts\[0\]\.routes\[2\]: redirect route not applied/);
  t.match(un, /virtual_hosts\[1\] \('other'\) not applied: requests are matched by VIP and port/);
  t.notMatch(un, /L7 path not implemented/);

  // An RBAC policy that would deny something is refused rather than ignored (it would fail open).
  const deny = packAny(FILTER.networkRbac, { stat_prefix: 'r', rules: { action: 'DENY', policies: { 'no-evil': {
    permissions: [{ any: true }], principals: [{ any: true }] } } } });
  t.throws(() => state({
    listeners: [listener('web-deny', '10.96.0.13', 80, [{ name: 'rbac', typed_config: deny }, { name: 'tcp', typed_config: packAny(FILTER.tcpProxy, { stat_prefix: 't', cluster: 'static' }) }])],
    clusters: [{ name: 'static', type: 'STATIC', load_assignment: endpoints('static', [ep('10.0.1.1', 8080)]) }],
  }), /listener 'web-deny': filter_chains\[0\]\.filters\[0\]\.typed_config\.rules: RBAC is not enforced by sockmesh yet: .*action DENY/);

  // Without the route configuration the listener is warming.
  const w = buildModel({ ...s, routes: new Map() });
  t.same(w.model!.services, []);
  t.match(w.warming, [/listener 'web-http' waits for route_configuration 'web-routes'/]);
});

t.test('our own naming: VIPs and ports of one service come back as one service', async (t) => {
  const own = (vip: string, port: number, cluster: string) => listener(`${vip.includes(':') ? `[${vip}]` : vip}:${port}/tcp`, vip, port, [tcpProxy({ cluster })]);
  const r = buildModel(state({
    listeners: [own('127.77.0.1', 80, 'web:80'), own('::1', 80, 'web:80'), own('127.77.0.1', 443, 'web:443'), own('::1', 443, 'web:443')],
    clusters: [
      { name: 'web:80', type: 'EDS', lb_policy: 'MAGLEV', maglev_lb_config: { table_size: { value: '1021' } }, metadata: { filter_metadata: { sockmesh: { fields: { affinity_timeout_seconds: { numberValue: 300 } } } } } },
      { name: 'web:443', type: 'EDS', lb_policy: 'MAGLEV', maglev_lb_config: { table_size: { value: '1021' } }, metadata: { filter_metadata: { sockmesh: { fields: { affinity_timeout_seconds: { numberValue: 300 } } } } } },
    ],
    endpoints: [endpoints('web:80', [ep('127.0.0.1', 8080), ep('::1', 8080)]), endpoints('web:443', [ep('127.0.0.1', 8443), ep('::1', 8443)])],
  }));
  t.notOk(r.error, String(r.error));
  t.equal(r.model!.services.length, 1);
  const svc = r.model!.services[0]!;
  t.same([svc.name, svc.algorithm, svc.affinityTimeoutSeconds, svc.maglevTableSize], ['web', 'maglev', 300, 1021]);
  t.same(svc.frontends.map((f) => `${f.vip}:${f.port}->${f.backends.map((b) => `${b.address}:${b.port}`).join(',')}`), [
    '127.77.0.1:80->127.0.0.1:8080', '127.77.0.1:443->127.0.0.1:8443', '::1:80->::1:8080', '::1:443->::1:8443',
  ]);
});

t.test('errors name the resource and the field', async (t) => {
  t.throws(() => digestListener('l', listener('l', '10.0.0.1', 80, [{ name: 'x', typed_config: packAny(FILTER.router, {}) }])),
    { message: /listener 'l': filter_chains\[0\]\.filters\[0\]\.typed_config: unsupported filter type .*Router/ });
  t.throws(() => digestListener('l', { name: 'l', address: { socket_address: { address: '10.0.0.1', port_value: 0 } } }),
    { message: /listener 'l': address\.socket_address\.port_value/ });
  t.throws(() => digestListener('l', listener('l', '10.0.0.1', 80, [{ name: 'x', typed_config: { type_url: FILTER.tcpProxy, value: Buffer.from([0xff, 0xff]) } }])),
    { name: 'XdsResourceError', message: /filters\[0\]\.typed_config: cannot decode .*TcpProxy/ });
  const dns = digestCluster('d', { name: 'd', type: 'STRICT_DNS' });
  t.match(dns.notes, [/cluster type STRICT_DNS not supported/]);
  const r = buildModel(state({
    listeners: [listener('a', '10.0.0.1', 80, [tcpProxy({ cluster: 'c' })])],
    clusters: [{ name: 'c', type: 'EDS' }],
    endpoints: [endpoints('c', [ep('10.0.0.2', 80), ep('not-an-ip', 80), ep('10.0.0.2', 80)])],
  }));
  t.match(r.error, /cluster_load_assignment 'c': endpoints\[0\]\.lb_endpoints\[1\]\.endpoint\.address\.socket_address\.address: must be an IPv4 or IPv6 address/);
  t.match(r.error, /cluster_load_assignment 'c': endpoints\[0\]\.lb_endpoints\[2\]: duplicate backend/);
  const dup = buildModel(state({
    listeners: [listener('a', '10.0.0.1', 80, [tcpProxy({ cluster: 'c' })]), listener('b', '10.0.0.1', 80, [tcpProxy({ cluster: 'c' })])],
    clusters: [{ name: 'c', type: 'STATIC' }],
  }));
  t.match(dup.error, /listener 'b': address\.socket_address: duplicate frontend 10\.0\.0\.1:80\/tcp/);
  // proxyless gRPC listeners and wildcard binds are not VIPs: ignored without an error.
  const api = buildModel(state({ listeners: [{ name: 'greeter', api_listener: { api_listener: packAny(FILTER.router, {}) } }, listener('any', '0.0.0.0', 80, [tcpProxy({ cluster: 'c' })])] }));
  t.same(api.model, { services: [] });
  t.match(api.unsupported, [/wildcard address 0\.0\.0\.0 is not a VIP/]);
});

t.test('dnsLabel', async (t) => {
  t.equal(dnsLabel('outbound|80||Foo.svc.cluster.local'), 'outbound-80-foo-svc-cluster-local');
  t.equal(dnsLabel('x'.repeat(70)).length, 63);
  t.equal(dnsLabel('---'), 'service');
});
