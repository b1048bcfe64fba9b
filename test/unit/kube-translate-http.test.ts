// GAMMA HTTPRoutes and sockmesh.io annotations -> a service's http policy, and the routes' status
// (kube/translate-http.ts). Each HTTPRoute is written as a user would apply it.
import t from 'tap';
import { translateCluster, type ClusterView, type TranslateResult } from '../../kube/translate.js';
import { CONTROLLER_NAME } from '../../kube/translate-http.js';
import type { KEndpointSlice, KHTTPRoute, KHTTPRouteRule, KParentRef, KService } from '../../kube/types.js';
import type { Route, Service } from '../../agent/model/types.js';

const svc = (name: string, ip: string, annotations?: Record<string, string>, ports: NonNullable<KService['spec']>['ports'] = [{ name: 'http', port: 80, protocol: 'TCP' }]): KService => ({
  metadata: { name, namespace: 'default', ...(annotations ? { annotations } : {}) },
  spec: { clusterIPs: [ip], ports },
});
const slice = (service: string, ips: string[], port = 8080): KEndpointSlice => ({
  metadata: { name: `${service}-x`, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4',
  ports: [{ name: 'http', port, protocol: 'TCP' }],
  endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true } })),
});
const route = (name: string, rules: KHTTPRouteRule[], parentRefs: KParentRef[] = [{ group: '', kind: 'Service', name: 'web', port: 80 }], extra: Partial<KHTTPRoute['metadata']> = {}): KHTTPRoute => ({
  apiVersion: 'gateway.networking.k8s.io/v1',
  kind: 'HTTPRoute',
  metadata: { name, namespace: 'default', generation: 3, creationTimestamp: '2026-01-01T00:00:00Z', ...extra },
  spec: { parentRefs, rules },
});

function run(services: KService[], slices: KEndpointSlice[], routes: KHTTPRoute[]): TranslateResult {
  const v: ClusterView = {
    services: new Map(services.map((s) => [`default/${s.metadata.name}`, s])),
    endpointSlices: new Map(slices.map((s) => [`default/${s.metadata.name}`, s])),
    httpRoutes: new Map(routes.map((r) => [`default/${r.metadata.name}`, r])),
  };
  return translateCluster(v, {});
}

const web = (r: TranslateResult): Service => r.model.services.find((s) => s.name === 'default--web')!;
const base = () => [svc('web', '10.96.0.1'), svc('web-v2', '10.96.0.2')];
const baseSlices = () => [slice('web', ['10.0.0.1', '10.0.0.2']), slice('web-v2', ['10.0.1.1'], 9090)];
const conds = (r: TranslateResult, name: string) => Object.fromEntries(r.routeStatus.find((s) => s.name === name)!.parents[0]!.conditions.map((c) => [c.type, [c.status, c.reason, c.message]]));

t.test('matches: Exact, PathPrefix (by path element), RegularExpression, headers, method', async (t) => {
  const r = run(base(), baseSlices(), [route('r', [{
    matches: [
      { path: { type: 'Exact', value: '/healthz' } },
      { path: { type: 'PathPrefix', value: '/api/' }, method: 'POST', headers: [{ name: 'X-Env', value: 'prod' }, { type: 'RegularExpression', name: 'x-user', value: 'u[0-9]+' }] },
      { path: { type: 'RegularExpression', value: '/v[0-9]+/.*' } },
    ],
    backendRefs: [{ name: 'web', port: 80 }],
  }])]);
  t.same(r.issues, []);
  const routes = web(r).http!.routes;
  t.same(routes.map((x) => x.match), [
    { path: { exact: '/healthz' } },
    { path: { regex: '/api(?:/.*)?' }, methods: ['POST'], headers: [{ name: 'x-env', value: { exact: 'prod' } }, { name: 'x-user', value: { regex: 'u[0-9]+' } }] },
    { path: { regex: '/v[0-9]+/.*' } },
  ]);
  t.same(routes.map((x) => x.split), [[{ group: 'default', weight: 1 }], [{ group: 'default', weight: 1 }], [{ group: 'default', weight: 1 }]]);
  const prefix = new RegExp(`^(?:${(routes[1]!.match.path as { regex: string }).regex})$`);
  t.ok(prefix.test('/api') && prefix.test('/api/x') && !prefix.test('/apix'), 'PathPrefix matches path elements, not characters');
  t.same(conds(r, 'r')['Accepted']!.slice(0, 2), ['True', 'Accepted']);
  t.same(conds(r, 'r')['ResolvedRefs']!.slice(0, 2), ['True', 'ResolvedRefs']);
});

t.test('precedence across routes: Exact, longest prefix, method, more headers, then the oldest route', async (t) => {
  const r = run(base(), baseSlices(), [
    route('new', [{ matches: [{ path: { type: 'PathPrefix', value: '/a' } }] }], undefined, { creationTimestamp: '2026-02-01T00:00:00Z' }),
    route('old', [{ matches: [{ path: { type: 'PathPrefix', value: '/a' } }, { path: { type: 'PathPrefix', value: '/a/b' } }, { path: { type: 'Exact', value: '/a' } },
      { path: { type: 'PathPrefix', value: '/a' }, method: 'GET' }, { path: { type: 'PathPrefix', value: '/a' }, headers: [{ name: 'x', value: '1' }] }] }]),
  ]);
  t.same(web(r).http!.routes.map((x: Route) => x.name), ['old-0-2', 'old-0-1', 'old-0-3', 'old-0-4', 'old-0-0', 'new-0-0']);
});

t.test('weighted backendRefs to other Services: groups with their endpoints', async (t) => {
  const r = run(base(), baseSlices(), [route('canary', [{ backendRefs: [{ name: 'web', port: 80, weight: 90 }, { name: 'web-v2', port: 80, weight: 10 }, { name: 'web-v2', port: 80, weight: 0 }] }])]);
  const s = web(r);
  t.same(s.http!.routes[0]!.split, [{ group: 'default', weight: 90 }, { group: 'web-v2-80', weight: 10 }]);
  t.same(s.frontends[0]!.backends.map((b) => `${b.address}:${b.port}@${b.group ?? 'default'}`), ['10.0.0.1:8080@default', '10.0.0.2:8080@default', '10.0.1.1:9090@web-v2-80']);
  t.same(conds(r, 'canary')['ResolvedRefs']!.slice(0, 2), ['True', 'ResolvedRefs']);
});

t.test('a backendRef to a Service whose endpoints repeat the parent\'s own: served at L7, the endpoint in both groups', async (t) => {
  // web-v2 selects one of web's own pods (a canary of a subset): the same address:port is a backend of both groups.
  const r = run(base(), [slice('web', ['10.0.0.1', '10.0.0.2']), slice('web-v2', ['10.0.0.2'])], [route('canary', [{ backendRefs: [{ name: 'web', port: 80, weight: 90 }, { name: 'web-v2', port: 80, weight: 10 }] }])]);
  t.same(r.issues, []);
  const s = web(r);
  t.ok(s.http, 'served at L7, not fallen back to L4');
  t.same(s.http!.routes[0]!.split, [{ group: 'default', weight: 90 }, { group: 'web-v2-80', weight: 10 }]);
  t.same(s.frontends[0]!.backends.map((b) => `${b.address}:${b.port}@${b.group ?? 'default'}`), ['10.0.0.1:8080@default', '10.0.0.2:8080@default', '10.0.0.2:8080@web-v2-80']);
  t.same(conds(r, 'canary')['Accepted']!.slice(0, 2), ['True', 'Accepted']);
});

t.test('unresolved backendRefs: an empty group (503) and ResolvedRefs False with the reason', async (t) => {
  const r = run(base(), baseSlices(), [
    route('missing', [{ backendRefs: [{ name: 'web', port: 80, weight: 1 }, { name: 'nope', port: 80, weight: 1 }] }]),
    route('kind', [{ backendRefs: [{ group: 'example.com', kind: 'Bucket', name: 'b' }] }], [{ name: 'web-v2' }]),
  ]);
  t.same(conds(r, 'missing')['ResolvedRefs']!.slice(0, 2), ['False', 'BackendNotFound']);
  t.match(conds(r, 'missing')['ResolvedRefs']![2], /Service default\/nope not found/);
  t.same(conds(r, 'missing')['Accepted']!.slice(0, 2), ['True', 'Accepted']);
  const split = web(r).http!.routes[0]!.split;
  t.same(split.map((g) => g.group), ['default', 'unresolved-nope-80']);
  t.notOk(web(r).frontends[0]!.backends.some((b) => b.group === 'unresolved-nope-80'), 'the group has no backends');
  t.same(conds(r, 'kind')['ResolvedRefs']!.slice(0, 2), ['False', 'InvalidKind']);
});

t.test('filters, timeouts and retries', async (t) => {
  const r = run(base(), baseSlices(), [route('f', [{
    filters: [
      { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'X-Mesh', value: '1' }], remove: ['x-debug'] } },
      { type: 'ResponseHeaderModifier', responseHeaderModifier: { set: [{ name: 'x-served-by', value: 'web' }] } },
    ],
    timeouts: { request: '10s', backendRequest: '2s' },
    retry: { attempts: 3, codes: [503], backoff: '100ms' },
  }, {
    matches: [{ path: { type: 'Exact', value: '/one' } }],
    timeouts: { request: '10s', backendRequest: '2s' },
  }])]);
  t.same(r.issues, []);
  const [one, rest] = [web(r).http!.routes[0]!, web(r).http!.routes[1]!];
  t.same(rest.requestHeaders, { set: { 'x-mesh': '1' }, remove: ['x-debug'] });
  t.same(rest.responseHeaders, { set: { 'x-served-by': 'web' }, remove: [] });
  t.equal(rest.timeoutMs, 10_000);
  t.match(rest.retry, { attempts: 3, perTryTimeoutMs: 2000, retriableStatusCodes: [503], backoffBaseMs: 100 });
  t.same([...rest.retry!.retryOn].sort(), ['connect-failure', 'reset', 'retriable-status-codes']);
  t.equal(one.timeoutMs, 2000, 'without retries, the backend request timeout bounds the one try');
  t.equal(one.retry, undefined);
});

t.test('unsupported: query matches, URLRewrite, RequestRedirect, header add -> Accepted False UnsupportedValue, route not applied', async (t) => {
  for (const [rule, field] of [
    [{ matches: [{ queryParams: [{ name: 'a', value: 'b' }] }] }, /queryParams/],
    [{ filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath', replaceFullPath: '/x' } } }] }, /URLRewrite.*URL rewrite/],
    [{ filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 301 } }] }, /RequestRedirect.*redirect/],
    [{ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { add: [{ name: 'a', value: 'b' }] } }] }, /add: appending/],
  ] as [KHTTPRouteRule, RegExp][]) {
    const r = run(base(), baseSlices(), [route('u', [rule])]);
    const c = conds(r, 'u')['Accepted']!;
    t.same(c.slice(0, 2), ['False', 'UnsupportedValue']);
    t.match(c[2], field);
    t.equal(web(r).http, undefined, 'the service stays L4');
    t.match(r.issues, [{ object: 'HTTPRoute default/u', message: field }]);
  }
});

t.test('parentRefs: missing service, unknown port, consumer route, headless parent; Gateway parents ignored', async (t) => {
  const hl: KService = { metadata: { name: 'hl', namespace: 'default' }, spec: { clusterIP: 'None', ports: [{ port: 80 }] } };
  const r = run([...base(), hl], baseSlices(), [route('p', [{}], [
    { name: 'ghost' }, { name: 'web', port: 81 }, { name: 'web', namespace: 'other' }, { name: 'hl' },
    { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'gw' }, { name: 'web-v2', sectionName: 'http' },
  ])]);
  const st = r.routeStatus.find((s) => s.name === 'p')!;
  t.equal(st.generation, 3);
  t.same(st.parents.map((p) => [p.parentRef.name, p.conditions[0]!.status, p.conditions[0]!.reason]), [
    ['ghost', 'False', 'NoMatchingParent'], ['web', 'False', 'NoMatchingParent'], ['web', 'False', 'UnsupportedValue'],
    ['hl', 'False', 'NoMatchingParent'], ['web-v2', 'True', 'Accepted'],
  ]);
  t.ok(st.parents.every((p) => p.controllerName === CONTROLLER_NAME && p.conditions.every((c) => c.observedGeneration === 3)));
  t.ok(r.model.services.find((s) => s.name === 'default--web-v2')!.http, 'attached by sectionName');
  t.equal(web(r).http, undefined, 'no parentRef attached to web');
});

t.test('annotations: fail mode, breakers, outlier detection, health check; bad values named', async (t) => {
  const r = run([svc('web', '10.96.0.1', {
    'sockmesh.io/http': 'true',
    'sockmesh.io/fail-mode': 'open',
    'sockmesh.io/circuit-breaker': '{maxConnections: 100, maxRequests: 200}',
    'sockmesh.io/outlier-detection': '{consecutive5xx: 3}',
    'sockmesh.io/health-check': '{type: http, path: /healthz, interval: 2s}',
    'sockmesh.io/algorithm': 'maglev',
  })], [slice('web', ['10.0.0.1'])], []);
  t.same(r.issues, []);
  const s = web(r);
  t.equal(s.algorithm, 'maglev');
  t.equal(s.http!.failMode, 'open');
  t.match(s.http!.circuitBreaker, { maxConnections: 100, maxRequests: 200 });
  t.match(s.http!.outlierDetection, { consecutive5xx: 3 });
  t.match(s.healthCheck, { kind: 'http', path: '/healthz', intervalMs: 2000 });
  t.same(s.http!.routes.map((x) => x.split), [[{ group: 'default', weight: 1 }]], 'sockmesh.io/http: one default route');

  const bad = run([svc('web', '10.96.0.1', {
    'sockmesh.io/fail-mode': 'sideways',
    'sockmesh.io/http': 'true',
    'sockmesh.io/circut-breaker': '{}',
  })], [slice('web', ['10.0.0.1'])], []);
  const text = bad.issues.map((i) => `${i.object}: ${i.path}: ${i.message}`).join('\n');
  t.match(text, /Service default\/web: metadata\.annotations\["sockmesh\.io\/circut-breaker"\]: unknown annotation \(did you mean 'sockmesh\.io\/circuit-breaker'\?\)/);
  t.match(text, /Service default\/web: metadata\.annotations\["sockmesh\.io\/fail-mode"\] \(model http\.failMode\): must be one of closed, open/);
  t.ok(web(bad), 'still served');
  t.equal(web(bad).http, undefined, 'at L4, its L7 part refused');

  const l4 = run([svc('web', '10.96.0.1', { 'sockmesh.io/fail-mode': 'open' })], [], []);
  t.match(l4.issues, [{ message: /apply to L7 services only/ }]);
});

t.test('sockmesh.io/authz: rules whose from names service accounts\' identities; a workload name or a bad identity named', async (t) => {
  const r = run([svc('web', '10.96.0.1', {
    'sockmesh.io/http': 'true',
    'sockmesh.io/authz': '{default: deny, rules: [{name: shop, action: allow, from: [spiffe://cluster.local/ns/shop/sa/cart], methods: [GET]}]}',
  })], [slice('web', ['10.0.0.1'])], []);
  t.same(r.issues, []);
  t.same(web(r).http!.authz, { defaultAction: 'deny', rules: [{ name: 'shop', action: 'allow', from: ['spiffe://cluster.local/ns/shop/sa/cart'], methods: ['GET'] }] });
  const bad = run([svc('web', '10.96.0.1', {
    'sockmesh.io/http': 'true',
    'sockmesh.io/authz': '{rules: [{name: a, action: allow, from: [frontend, spiffe://cluster.local/ns/Shop/sa/cart]}]}',
  })], [slice('web', ['10.0.0.1'])], []);
  const text = bad.issues.map((i) => `${i.object}: ${i.path}: ${i.message}`).join('\n');
  t.match(text, /metadata\.annotations\["sockmesh\.io\/authz"\] \(model http\.authz\.rules\[0\]\.from\[0\]\): workload 'frontend' is not defined/);
  t.match(text, /metadata\.annotations\["sockmesh\.io\/authz"\] \(model http\.authz\.rules\[0\]\.from\[1\]\): identity "spiffe:\/\/cluster\.local\/ns\/Shop\/sa\/cart": namespace "Shop" is not a Kubernetes (namespace )?name/);
  t.equal(web(bad).http, undefined, 'at L4, its L7 part refused');
});

t.test('a regex the proxy cannot run: the model refuses it, the route says why, the VIP stays served at L4', async (t) => {
  const r = run(base(), baseSlices(), [route('bad', [{ matches: [{ path: { type: 'RegularExpression', value: '/(a)\\1' } }] }])]);
  t.ok(web(r) && web(r).http === undefined);
  t.same(conds(r, 'bad')['Accepted']!.slice(0, 2), ['False', 'UnsupportedValue']);
  t.match(conds(r, 'bad')['Accepted']![2], /backtracking/);
  t.match(r.issues, [{ object: 'HTTPRoute default/bad', path: /spec\.rules\[0\]\.matches\[0\]/, message: /backtracking/ }]);
});

t.test('a change of a backend service\'s slice reaches the parent (cache inputs include it)', async (t) => {
  const services = base();
  const routes = [route('canary', [{ backendRefs: [{ name: 'web', port: 80 }, { name: 'web-v2', port: 80 }] }])];
  const a = run(services, baseSlices(), routes);
  const b = run(services, [baseSlices()[0]!, slice('web-v2', ['10.0.1.1', '10.0.1.2'], 9090)], routes);
  t.same(web(a).frontends[0]!.backends.filter((x) => x.group).map((x) => x.address), ['10.0.1.1']);
  t.same(web(b).frontends[0]!.backends.filter((x) => x.group).map((x) => x.address), ['10.0.1.1', '10.0.1.2']);
});
