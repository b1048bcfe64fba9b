// The proxy policy's request decisions: service lookup, authorization order, routing and splits.
import t from 'tap';
import { BackendStates } from '../../agent/health/states.js';
import { ProxyPolicy, RETIRED_MS } from '../../agent/proxy/policy.js';
import { compileStringMatch, matchPath, normalizePath } from '../../agent/proxy/router.js';
import type { Exchange, LocalReply, OriginalDst, Source } from '../../agent/proxy/types.js';
import { backend, captureLog, head, http, model, route, seeded, service } from '../lib/l7model.js';

const DST: OriginalDst = { vip: '127.100.0.1', port: 80, cgroupId: 7n };
const SRC: Source = { address: '127.0.0.1', port: 40000, cgroupId: 7n };

function isLocal(x: Exchange | LocalReply): x is LocalReply {
  return (x as LocalReply).status !== undefined;
}

function policy(seed = 1): { p: ProxyPolicy; states: BackendStates; lines: Record<string, unknown>[] } {
  const states = new BackendStates();
  const { log, lines } = captureLog();
  return { p: new ProxyPolicy({ states, log, random: seeded(seed) }), states, lines };
}

t.test('string matchers: exact, prefix, regex anchored to the whole value', async (t) => {
  t.ok(compileStringMatch({ exact: '/a' }, 'x')('/a'));
  t.notOk(compileStringMatch({ exact: '/a' }, 'x')('/a/'));
  t.ok(compileStringMatch({ prefix: '/api/' }, 'x')('/api/v1'));
  t.notOk(compileStringMatch({ prefix: '/api/' }, 'x')('/apiv1'));
  const re = compileStringMatch({ regex: '/users/[0-9]+' }, 'x');
  t.ok(re('/users/42'));
  t.notOk(re('/users/42/x'), 'anchored at the end');
  t.notOk(re('/x/users/42'), 'anchored at the start');
  // alternation must not escape the anchors
  const alt = compileStringMatch({ regex: '/a|/b' }, 'x');
  t.ok(alt('/a'));
  t.notOk(alt('/a/zzz'));
  t.throws(() => compileStringMatch({ regex: '(' }, 'service s: routes[0] (r).match.path'), /service s: routes\[0\] \(r\)\.match\.path: invalid regex/);
});

t.test('regexes match in linear time: a catastrophic pattern cannot stall the proxy', async (t) => {
  // On a backtracking engine this pattern against 40 'a's takes hours (30 took 10.6 s); linear: microseconds.
  const m = compileStringMatch({ regex: '/(a+)+b' }, 'x');
  const started = performance.now();
  t.notOk(m('/' + 'a'.repeat(40)));
  t.notOk(m('/' + 'a'.repeat(10_000)));
  t.ok(m('/aaab'));
  t.ok(performance.now() - started < 1000, `took ${(performance.now() - started).toFixed(1)} ms`);
  t.throws(() => compileStringMatch({ regex: '(a)\\1' }, 'routes[0]'), /routes\[0\]: invalid regex .*needs backtracking/);
});

t.test('matching path: query cut off, tricky spellings normalized', async (t) => {
  t.equal(matchPath('/a/b?x=/admin'), '/a/b');
  t.equal(matchPath('/plain'), '/plain');
  t.equal(matchPath('/./admin'), '/admin');
  t.equal(matchPath('//admin'), '/admin');
  t.equal(matchPath('/%61dmin?q'), '/admin');
  t.equal(matchPath('/x/../admin'), '/admin');
  t.equal(matchPath('/a\\..\\admin'), '/admin');
  t.equal(normalizePath('/a/%2f/b'), '/a/%2F/b', 'an encoded slash stays encoded');
  t.equal(normalizePath('/a/b/..'), '/a/');
  t.equal(normalizePath('/../../x'), '/x');
});

t.test('service lookup: a destination with no L7 service (unknown, or L4 now) is 421, connect again', async (t) => {
  let clock = 1000;
  const p = new ProxyPolicy({ states: new BackendStates(), log: captureLog().log, random: seeded(1), now: () => clock });
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http()), service('l4', '127.100.0.2', 80, [backend(8081)])), () => undefined);
  const ok = p.begin(DST, SRC, head());
  t.notOk(isLocal(ok), 'known L7 service: an exchange');
  for (const dst of [{ vip: '127.100.0.9', port: 80 }, { vip: '127.100.0.1', port: 81 }, { vip: '127.100.0.2', port: 80 }]) {
    const r = p.begin({ ...dst, cgroupId: 1n }, SRC, head());
    t.ok(isLocal(r));
    t.equal((r as LocalReply).status, 421, `${dst.vip}:${dst.port}`);
    t.equal((r as LocalReply).headers['x-sockmesh-reason'], 'misdirected');
  }
  // a scoped change that makes web L4 is seen (not skipped as an L4-only change)
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)]), service('l4', '127.100.0.2', 80, [backend(8081)])), () => undefined, new Set(['web']));
  // A connection the kernel redirected while web was L7 is served by that L7 service for RETIRED_MS more (Envoy drains
  // a replaced listener's connections on their old filter chain), then gets 421.
  const late = p.begin(DST, SRC, head());
  t.notOk(isLocal(late), 'web is L4 now: a request on a connection redirected before is still served by the L7 service it was sent to');
  if (!isLocal(late)) t.equal(late.route.name, 'all', 'by its old route');
  clock += RETIRED_MS - 1;
  t.notOk(isLocal(p.begin(DST, SRC, head())), `still within ${RETIRED_MS} ms`);
  t.equal((p.begin({ vip: '127.100.0.9', port: 80, cgroupId: 1n }, SRC, head()) as LocalReply).status, 421, 'an unknown destination is not helped by it');
  clock += 1;
  t.equal((p.begin(DST, SRC, head()) as LocalReply).status, 421, `web is L4 now: after ${RETIRED_MS} ms, 421`);
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http()), service('l4', '127.100.0.2', 80, [backend(8081)])), () => undefined, new Set(['web']));
  t.notOk(isLocal(p.begin(DST, SRC, head())), 'and L7 again');
});

t.test('routes: first match in order on path, methods, headers (with invert); none -> 404', async (t) => {
  const { p } = policy();
  const routes = [
    route('exact', { match: { path: { exact: '/health' } } }),
    route('post-api', { match: { path: { prefix: '/api/' }, methods: ['POST'] } }),
    route('canary-header', { match: { path: { prefix: '/api/' }, headers: [{ name: 'x-canary', value: { exact: 'yes' } }] } }),
    route('not-internal', { match: { path: { regex: '/api/v[0-9]+/.*' }, headers: [{ name: 'x-internal', invert: true }] } }),
    route('users', { match: { path: { regex: '/users/[0-9]+' } } }),
  ];
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ routes }))), () => undefined);
  const r = (h: ReturnType<typeof head>): string => {
    const x = p.begin(DST, SRC, h);
    if (isLocal(x)) return String(x.status);
    x.end(200);
    return x.route.name;
  };
  t.equal(r(head('GET', '/health')), 'exact');
  t.equal(r(head('GET', '/health?full=1')), 'exact', 'query ignored');
  t.equal(r(head('GET', '/healthz')), '404');
  t.equal(r(head('POST', '/api/x')), 'post-api');
  t.equal(r(head('GET', '/api/x', { 'x-canary': 'yes' })), 'canary-header');
  // a repeated header is matched on its joined value (Envoy's): one matching copy among others is not a match
  t.equal(r(head('GET', '/api/x', { 'x-canary': ['no', 'yes'] })), '404', 'a repeated header: its joined value "no,yes" is not exactly "yes"');
  t.equal(r(head('GET', '/api/x', { 'x-canary': ['yes', 'yes'] })), '404', '"yes,yes" is not "yes" either');
  t.equal(r(head('GET', '/api/x', { 'x-canary': 'no' })), '404');
  t.equal(r(head('GET', '/api/v2/x')), 'not-internal');
  t.equal(r(head('GET', '/api/v2/x', { 'x-internal': '1' })), '404', 'inverted header: present -> no match');
  t.equal(r(head('GET', '/users/12')), 'users');
  t.equal(r(head('GET', '/users/12/x')), '404', 'regex anchored');
  const nf = p.begin(DST, SRC, head('GET', '/nothing'));
  t.equal((nf as LocalReply).headers['x-sockmesh-reason'], 'no-route');
});

t.test('authz: deny before allow, then default; from = workload of the client cgroup', async (t) => {
  const { p } = policy();
  const workloads = new Map<bigint, string>([
    [1n, 'frontend'],
    [2n, 'batch'],
    [3n, 'admin-tool'],
  ]);
  const authz = {
    defaultAction: 'deny' as const,
    rules: [
      { name: 'allow-frontend', action: 'allow' as const, from: ['frontend', 'admin-tool'] },
      { name: 'allow-batch-reads', action: 'allow' as const, from: ['batch'], methods: ['GET'] },
      // a deny listed after the allows still wins
      { name: 'no-admin', action: 'deny' as const, paths: [{ prefix: '/admin' }], from: ['frontend', 'batch'] },
      { name: 'no-debug-header', action: 'deny' as const, headers: [{ name: 'x-debug' }] },
    ],
  };
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ authz }))), (id) => workloads.get(id));
  const check = (cg: bigint, h: ReturnType<typeof head>): string => {
    const x = p.begin({ ...DST, cgroupId: cg }, { ...SRC, cgroupId: cg }, h);
    if (!isLocal(x)) {
      x.end(200);
      return 'allowed';
    }
    t.equal(x.status, 403);
    return String(x.headers['x-sockmesh-denied']);
  };
  t.equal(check(1n, head('GET', '/')), 'allowed', 'allow rule');
  t.equal(check(1n, head('POST', '/orders')), 'allowed');
  t.equal(check(1n, head('GET', '/admin/users')), 'no-admin', 'deny before allow');
  t.equal(check(1n, head('GET', '/./admin/users')), 'no-admin', 'normalized path cannot sidestep the deny');
  t.equal(check(1n, head('GET', '/%61dmin')), 'no-admin');
  t.equal(check(3n, head('GET', '/admin/users')), 'allowed', 'deny scoped by from');
  t.equal(check(2n, head('GET', '/x')), 'allowed');
  t.equal(check(2n, head('DELETE', '/x')), 'default-deny', 'batch may only read');
  t.equal(check(9n, head('GET', '/x')), 'default-deny', 'unknown workload');
  t.equal(check(1n, head('GET', '/x', { 'x-debug': '1' })), 'no-debug-header');

  // defaultAction allow: only deny rules bite
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ authz: { defaultAction: 'allow', rules: [authz.rules[2]!] } }))), (id) => workloads.get(id));
  t.equal(check(9n, head('GET', '/admin')), 'allowed', 'no from match -> deny rule does not apply');
  t.equal(check(2n, head('GET', '/admin')), 'no-admin');
  t.equal(check(2n, head('DELETE', '/x')), 'allowed');
});

t.test('authz from an identity: the workloads with it when compiled; none with it matches nobody, not everybody', async (t) => {
  const { p } = policy();
  const byCgroup = new Map<bigint, string>([[1n, 'shop--cart'], [2n, 'shop--default'], [3n, 'legacy']]);
  const cart = 'spiffe://cluster.local/ns/shop/sa/cart';
  const svc = service('web', '127.100.0.1', 80, [backend(8080)], http({
    authz: { defaultAction: 'deny' as const, rules: [{ name: 'cart', action: 'allow' as const, from: [cart, 'legacy'] }] },
  }));
  const check = (cg: bigint): string => {
    const x = p.begin({ ...DST, cgroupId: cg }, { ...SRC, cgroupId: cg }, head('GET', '/'));
    if (!isLocal(x)) {
      x.end(200);
      return 'allowed';
    }
    return String(x.headers['x-sockmesh-denied']);
  };
  const workloads = [
    { name: 'shop--cart', cgroups: ['/kubepods/a'], identity: cart },
    { name: 'shop--default', cgroups: ['/kubepods/b'], identity: 'spiffe://cluster.local/ns/shop/sa/default' },
    { name: 'legacy', cgroups: ['/legacy'] },
  ];
  p.update({ ...model(svc), workloads }, (id) => byCgroup.get(id));
  t.equal(check(1n), 'allowed', 'the workload with the identity');
  t.equal(check(2n), 'default-deny', 'another service account of the namespace');
  t.equal(check(3n), 'allowed', 'a workload named by name beside the identity');
  // the cart pods went away: the identity resolves to nobody, and the rule keeps its other source only
  p.update({ ...model(svc), workloads: workloads.slice(1) }, (id) => byCgroup.get(id));
  t.equal(check(1n), 'default-deny', 'no workload has the identity any more');
  t.equal(check(3n), 'allowed');
  const only = service('web', '127.100.0.1', 80, [backend(8080)], http({
    authz: { defaultAction: 'allow' as const, rules: [{ name: 'not-cart', action: 'deny' as const, from: [cart] }] },
  }));
  p.update({ ...model(only), workloads: workloads.slice(1) }, (id) => byCgroup.get(id));
  t.equal(check(2n), 'allowed', 'a deny from an identity nobody has denies nobody (an empty from is not "any source")');
});

t.test('repeated request headers: routes and allow rules read the joined value, deny rules any reading of it', async (t) => {
  const { p } = policy();
  const routes = [
    route('joined', { match: { headers: [{ name: 'x-tags', value: { regex: 'a,b' } }] } }),
    route('cookie', { match: { headers: [{ name: 'cookie', value: { exact: 'a=1; b=2' } }] } }),
    route('prefix', { match: { headers: [{ name: 'x-p', value: { prefix: 'one,' } }] } }),
  ];
  const authz = {
    defaultAction: 'deny' as const,
    rules: [
      { name: 'allow-token', action: 'allow' as const, headers: [{ name: 'x-token', value: { exact: 'good' } }] },
      { name: 'no-admin-user', action: 'deny' as const, headers: [{ name: 'x-user', value: { exact: 'admin' } }] },
      { name: 'only-known-tenant', action: 'deny' as const, headers: [{ name: 'x-tenant', value: { exact: 't1' }, invert: true }] },
    ],
  };
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ routes, authz }))), () => undefined);
  const r = (h: ReturnType<typeof head>): string => {
    const x = p.begin(DST, SRC, h);
    if (isLocal(x)) return `${x.status} ${String(x.headers['x-sockmesh-denied'] ?? '')}`.trim();
    x.end(200);
    return x.route.name;
  };
  const ok = { 'x-token': 'good', 'x-tenant': 't1' };
  t.equal(r(head('GET', '/', { ...ok, 'x-tags': ['a', 'b'] })), 'joined', 'x-tags: a + x-tags: b is "a,b"');
  t.equal(r(head('GET', '/', { ...ok, cookie: ['a=1', 'b=2'] })), 'cookie', 'cookie crumbs (HTTP/2) are joined with "; "');
  t.equal(r(head('GET', '/', { ...ok, 'x-p': ['one', 'two'] })), 'prefix', 'a prefix of the joined value');
  t.equal(r(head('GET', '/', { ...ok, 'x-p': ['two', 'one'] })), '404', 'the order received counts');
  // allow: the joined value only (a second copy the backend may never read does not earn an allow)
  t.equal(r(head('GET', '/', { 'x-token': ['bad', 'good'], 'x-tenant': 't1' })), '403 default-deny', 'allow: "bad,good" is not "good"');
  // deny: any reading (repeating the header cannot dodge it)
  t.equal(r(head('GET', '/', { ...ok, 'x-user': 'admin' })), '403 no-admin-user');
  t.equal(r(head('GET', '/', { ...ok, 'x-user': ['admin', 'admin'] })), '403 no-admin-user', 'deny: admin twice is still admin');
  t.equal(r(head('GET', '/', { ...ok, 'x-user': ['bob', 'admin'] })), '403 no-admin-user', 'deny: one copy is enough');
  t.equal(r(head('GET', '/', { ...ok, 'x-user': ['bob', 'carol'] })), '404', 'no copy is admin: not denied (no route matched)');
  // an inverted deny: every reading must meet the value for the request to pass
  t.equal(r(head('GET', '/', { 'x-token': 'good', 'x-tenant': ['t1', 't1'] })), '403 only-known-tenant', 'inverted deny: "t1,t1" is not t1');
  t.equal(r(head('GET', '/', { 'x-token': 'good', 'x-tenant': ['t1', 't2'] })), '403 only-known-tenant', 'inverted deny: t2 among the copies');
});

t.test('authz runs before routing (a denied request never reaches the 404)', async (t) => {
  const { p } = policy();
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ routes: [route('only', { match: { path: { exact: '/only' } } })], authz: { defaultAction: 'deny', rules: [] } }))), () => undefined);
  const x = p.begin(DST, SRC, head('GET', '/nowhere'));
  t.equal((x as LocalReply).status, 403);
  t.equal((x as LocalReply).headers['x-sockmesh-denied'], 'default-deny');
});

t.test('weighted split 90/10 measured within tolerance; a zero-weight group gets nothing', async (t) => {
  const { p } = policy(42);
  const routes = [route('split', { split: [{ group: 'stable', weight: 90 }, { group: 'canary', weight: 10 }, { group: 'off', weight: 0 }] })];
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080, 'stable'), backend(8081, 'canary'), backend(8082, 'off')], http({ routes }))), () => undefined);
  const counts: Record<string, number> = {};
  const N = 20000;
  for (let i = 0; i < N; i++) {
    const x = p.begin(DST, SRC, head()) as Exchange;
    const a = x.attempt(1);
    if ('status' in a) throw new Error('unexpected local reply');
    counts[a.upstream.port] = (counts[a.upstream.port] ?? 0) + 1;
    a.finish({ kind: 'response', status: 200 });
    x.end(200);
  }
  const canary = (counts[8081] ?? 0) / N;
  t.comment(`canary share ${(canary * 100).toFixed(2)}% of ${N}`);
  t.ok(Math.abs(canary - 0.1) < 0.01, `canary ${canary} within 0.10 +- 0.01`);
  t.equal(counts[8082], undefined, 'weight 0 group unused');
});

t.test('a split naming a group without backends: 503 no healthy upstream', async (t) => {
  const { p } = policy();
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ routes: [route('r', { split: [{ group: 'ghost', weight: 1 }] })] }))), () => undefined);
  const x = p.begin(DST, SRC, head());
  t.equal((x as LocalReply).status, 503);
  t.match((x as LocalReply).body, /no healthy upstream/);
});

t.test('an invalid regex in an update throws naming service and route, and keeps the old state', async (t) => {
  const { p } = policy();
  p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http())), () => undefined);
  t.throws(() => p.update(model(service('web', '127.100.0.1', 80, [backend(8080)], http({ routes: [route('bad', { match: { path: { regex: '[' } } })] }))), () => undefined), /service web: routes\[0\] \(bad\)\.match\.path: invalid regex/);
  t.notOk(isLocal(p.begin(DST, SRC, head())), 'the previous model still serves');
  // a good service before the bad one in the same model is not half-applied either
  const cb = { maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRetries: 1 };
  t.throws(() =>
    p.update(
      model(service('web', '127.100.0.1', 80, [backend(9999)], http({ circuitBreaker: cb })), service('bad', '127.100.0.2', 80, [backend(8080)], http({ routes: [route('r', { match: { headers: [{ name: 'x', value: { regex: '(' } }] } })] }))),
      () => undefined,
    ),
  /service bad: routes\[0\] \(r\)\.match\.headers\[0\]\.value: invalid regex/);
  const g = p.routesReport()[0]!.groups[0]!;
  t.equal(g.limits.maxRequests, 1024, 'old limits kept');
  t.same(p.backendsReport().map((b) => b.backend), ['127.0.0.1:8080'], 'old backends kept');
});

t.test('access log: sampled per service, one line per request', async (t) => {
  const states = new BackendStates();
  const { log, lines } = captureLog('info');
  const p = new ProxyPolicy({ states, log, random: seeded(3) });
  p.update(model(service('all', '127.100.0.1', 80, [backend(8080)], http({ accessLogSample: 1 })), service('some', '127.100.0.2', 80, [backend(8080)], http({ accessLogSample: 0.25 })), service('none', '127.100.0.3', 80, [backend(8080)], http({ accessLogSample: 0 }))), () => undefined);
  const run = (vip: string, n: number): void => {
    for (let i = 0; i < n; i++) {
      const x = p.begin({ vip, port: 80, cgroupId: 1n }, SRC, head('GET', '/p?q=1')) as Exchange;
      const a = x.attempt(1);
      if ('status' in a) throw new Error('local');
      a.finish({ kind: 'response', status: 201 });
      x.end(201);
    }
  };
  run('127.100.0.1', 10);
  run('127.100.0.2', 400);
  run('127.100.0.3', 50);
  const by = (s: string): Record<string, unknown>[] => lines.filter((l) => l.component === 'access' && l.service === s);
  t.equal(by('all').length, 10);
  t.equal(by('none').length, 0);
  t.ok(by('some').length > 60 && by('some').length < 140, `25% of 400 sampled: ${by('some').length}`);
  const l = by('all')[0]!;
  t.match(l, { service: 'all', route: 'all', method: 'GET', path: '/p?q=1', status: 201, backend: '127.0.0.1:8080', attempts: 1 });
  t.type(l.durationMs, 'number');
});
