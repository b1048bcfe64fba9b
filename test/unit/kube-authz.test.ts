// Istio's AuthorizationPolicy -> the model's L4 authorization (issue 13, kube/authz.ts): the translation table (scope,
// selector -> services, Istio's empty-rule semantics, ztunnel's treatment of fields it cannot check: never wider), the
// verdicts the agents' decide() gives on the result, then `serve --kubernetes` on the API-server stand-in with the real
// client: an agent's xDS source follows a policy created, changed, deleted, and a bad one is reported, the others kept.
import t from 'tap';
import pino from 'pino';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';
import { apiAccess } from '../../kube/access.js';
import { MAX_KERNEL_POLICIES, policyName, translateAuthorization, type KAuthorizationPolicy, type PolicyTarget } from '../../kube/authz.js';
import { startKubeControlPlane } from '../../controlplane/kube.js';
import { XdsSource } from '../../agent/sources/xds/source.js';
import { compileAuthz4, decide } from '../../agent/model/authz4.js';
import type { Model } from '../../agent/model/types.js';
import { MAX_AUTHZ_POLICIES } from '../../agent/datapath/abi.js';
import type { KPod } from '../../kube/types.js';
import { service, slice, until } from '../lib/fakekube.js';

const log = pino({ level: 'silent' });
const pod = (ns: string, name: string, labels: Record<string, string>, ip: string): KPod => ({
  metadata: { namespace: ns, name, labels },
  spec: { nodeName: 'node-a', serviceAccountName: name, containers: [{ name: 'c' }] },
  status: { phase: 'Running', podIPs: [{ ip }], podIP: ip },
});
const ap = (ns: string, name: string, spec?: Record<string, unknown>): KAuthorizationPolicy => ({ metadata: { namespace: ns, name }, ...(spec ? { spec } : {}) });
const target = (name: string, namespace: string, addresses: string[], l7 = false): PolicyTarget => ({ name, namespace, l7, addresses: new Set(addresses) });

const pods = [pod('shop', 'web-1', { app: 'web', tier: 'front' }, '10.1.0.1'), pod('shop', 'db-1', { app: 'db' }, '10.1.0.2'), pod('bank', 'web-1', { app: 'web' }, '10.2.0.1')];
const targets = [
  target('shop--web', 'shop', ['10.1.0.1']), target('shop--db', 'shop', ['10.1.0.2']), target('shop--all', 'shop', ['10.1.0.1', '10.1.0.2']),
  target('shop--site', 'shop', ['10.1.0.1'], true), target('bank--web', 'bank', ['10.2.0.1']),
];
const tr = (...policies: KAuthorizationPolicy[]) => translateAuthorization({ policies, pods, targets });

t.test('the translation table', async (t) => {
  const sel = { selector: { matchLabels: { app: 'web' } } };
  let r = tr(ap('shop', 'allow-web', { ...sel, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['spiffe://cluster.local/ns/shop/sa/fe'], notNamespaces: ['dev'] } }], to: [{ operation: { ports: ['8080', 8080, '9090'] } }] }] }));
  t.same(r.authorization, [{
    name: 'shop--allow-web--0', action: 'allow', services: ['shop--all', 'shop--web'],
    from: [{ principals: ['cluster.local/ns/shop/sa/fe'], notNamespaces: ['dev'] }], to: [{ ports: [8080, 9090] }],
  }], 'selector -> the services of its namespace with a selected pod behind them (not bank\'s, not the L7 one); ports as numbers, principals without scheme');
  t.match(r.issues, [{ object: 'AuthorizationPolicy shop/allow-web', path: 'spec.selector', message: /service shop--site, which has HTTP routes/ }], 'the L7 service it would apply to is reported');
  t.equal(r.outcomes.get('shop/allow-web'), 'partial');

  r = tr(ap('shop', 'ns-wide', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['dev'] } }] }] }));
  t.same(r.authorization.map((p) => p.services), [['shop--all', 'shop--db', 'shop--web']], 'no selector: every L4 service of the namespace');
  r = tr(ap('istio-system', 'mesh', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['dev'] } }] }] }));
  t.same(r.authorization, [{ name: 'istio-system--mesh--0', action: 'deny', from: [{ namespaces: ['dev'] }] }], 'root namespace: mesh-wide (no services)');
  r = translateAuthorization({ policies: [ap('mesh-root', 'mesh', { action: 'DENY', rules: [{}] }), ap('istio-system', 'x', { action: 'DENY', rules: [{}] })], pods, targets }, { rootNamespace: 'mesh-root' });
  t.same(r.authorization.map((p) => [p.name, p.services === undefined]), [['mesh-root--mesh--0', true]], 'the root namespace is configurable (istio-system is then a namespace without services)');
  r = tr(ap('istio-system', 'mesh-web', { ...sel, rules: [{}] }));
  t.same(r.authorization[0]!.services, ['bank--web', 'shop--all', 'shop--web'], 'root namespace with a selector: selected pods of every namespace');

  // Istio's empty semantics
  r = tr(ap('shop', 'empty'), ap('shop', 'allow-all', { ...sel, rules: [{}] }), ap('shop', 'deny-none', { action: 'DENY' }));
  t.same(r.authorization.map((p) => ({ name: p.name, from: p.from, to: p.to })), [
    { name: 'shop--allow-all--0', from: undefined, to: undefined },
    { name: 'shop--empty', from: [{ principals: ['*'], notPrincipals: ['*'] }], to: undefined },
  ], 'spec {} = ALLOW nothing (deny all); a rule {} = every connection; DENY without rules = nothing (left out)');

  // ztunnel's treatment of what it cannot check: an ALLOW rule grants nothing, a DENY rule drops the field
  r = tr(ap('shop', 'l7-allow', { ...sel, rules: [{ to: [{ operation: { methods: ['GET'], ports: ['80'] } }] }, { from: [{ source: { namespaces: ['shop'] } }] }] }));
  t.same(r.authorization.map((p) => [p.name, p.from]), [['shop--l7-allow--1', [{ namespaces: ['shop'] }]]], 'the ALLOW rule with methods is left out, the other kept');
  t.match(r.issues.filter((i) => i.path.startsWith('spec.rules')), [{ path: 'spec.rules[0].to[0].operation.methods', message: /this ALLOW rule is left out/ }]);
  r = tr(ap('shop', 'l7-only', { ...sel, rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] }));
  t.same(r.authorization.map((p) => [p.name, p.from]), [['shop--l7-only', [{ principals: ['*'], notPrincipals: ['*'] }]]], 'an ALLOW policy with only L7 rules: deny all (never allow all)');
  r = tr(ap('shop', 'l7-deny', {
    ...sel, action: 'DENY',
    rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/8'] } }, { source: { principals: ['*/sa/legacy'], requestPrincipals: ['*'] } }], to: [{ operation: { ports: ['80'], paths: ['/admin'] } }], when: [{ key: 'request.headers[x]', values: ['y'] }] }],
  }));
  t.same(r.authorization.map((p) => [p.name, p.from, p.to]), [['shop--l7-deny--0', undefined, [{ ports: [80] }]]], 'DENY: ipBlocks, requestPrincipals, paths and when dropped: a source left empty matches any source (denies more)');
  t.same(r.issues.filter((i) => i.path.startsWith('spec.rules')).map((i) => i.path).sort(), [
    'spec.rules[0].from[0].source.ipBlocks', 'spec.rules[0].from[1].source.requestPrincipals', 'spec.rules[0].to[0].operation.paths', 'spec.rules[0].when',
  ]);

  // not enforced, invalid: reported, the others kept
  r = tr(ap('shop', 'audit', { action: 'AUDIT', rules: [{}] }), ap('shop', 'custom', { action: 'CUSTOM', provider: { name: 'x' }, rules: [{}] }),
    ap('shop', 'waypoint', { targetRefs: [{ kind: 'Service', group: '', name: 'web' }], rules: [{}] }),
    ap('shop', 'bad-port', { rules: [{ to: [{ operation: { ports: ['http'] } }] }] }), ap('shop', 'bad-action', { action: 'allow' }),
    ap('shop', 'bad-pattern', { rules: [{ from: [{ source: { principals: ['a*b'] } }] }] }), ap('shop', 'ok', { selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{}] }));
  t.same(r.authorization.map((p) => p.name), ['shop--ok--0'], 'only the good one');
  t.same(Object.fromEntries(r.outcomes), { 'shop/audit': 'not-enforced', 'shop/bad-action': 'invalid', 'shop/bad-pattern': 'invalid', 'shop/bad-port': 'invalid', 'shop/custom': 'not-enforced', 'shop/ok': 'enforced', 'shop/waypoint': 'not-enforced' });
  t.match(r.issues.filter((i) => i.path !== 'metadata.namespace'), [
    { object: 'AuthorizationPolicy shop/audit', path: 'spec.action', message: /AUDIT is not enforced/ },
    { object: 'AuthorizationPolicy shop/bad-action', path: 'spec.action', message: /must be ALLOW, DENY, AUDIT or CUSTOM, got "allow"/ },
    { object: 'AuthorizationPolicy shop/bad-pattern', path: /^spec\.rules\[0\]\.from\[0\]\.principals\[0\]$/, message: /exact, 'prefix\*', '\*suffix' or '\*'/ },
    { object: 'AuthorizationPolicy shop/bad-port', path: 'spec.rules[0].to[0].operation.ports[0]', message: /must be a port between 1 and 65535, got "http" \(the policy is left out\)/ },
    { object: 'AuthorizationPolicy shop/custom', path: 'spec.action' },
    { object: 'AuthorizationPolicy shop/waypoint', path: 'spec.targetRefs' },
  ]);
  r = translateAuthorization({ policies: [ap('shop', 'a', { action: 'DENY', rules: [{}, {}] }), ap('shop', 'b', { action: 'DENY', rules: [{}] }), ap('shop', 'c', { action: 'DENY', rules: [{}] })], pods, targets }, { maxPolicies: 3 });
  t.same([r.authorization.map((p) => p.name), r.outcomes.get('shop/c')], [['shop--a--0', 'shop--a--1', 'shop--b--0'], 'invalid'], 'beyond what the kernel counts: left out, reported (the agents would refuse them all)');
  t.match(r.issues.at(-1), { object: 'AuthorizationPolicy shop/c', message: /the kernel counts at most 3/ });
  t.equal(MAX_KERNEL_POLICIES, MAX_AUTHZ_POLICIES - 1, 'the bound is the kernel\'s');
  r = tr(ap('shop', 'nobody', { selector: { matchLabels: { app: 'none' } }, rules: [{}] }));
  t.same([r.authorization, r.outcomes.get('shop/nobody')], [[], 'enforced'], 'a selector that selects no service\'s pod applies to nothing now');
  t.equal(policyName('a--b', 'c', 0), policyName('a--b', 'c', 0));
  t.not(policyName('a--b', 'c', 0), policyName('a', 'b--c', 0), 'names stay distinct where "--" would make them meet');
  t.match(policyName('a--b', 'c', 0), /^[a-z0-9-]+-[0-9a-f]{10}$/);
});

t.test('the verdicts on the translation (the same decide() as the kernel and the tunnel)', async (t) => {
  const r = tr(
    ap('shop', 'empty', { selector: { matchLabels: { app: 'db' } } }),
    ap('shop', 'web', { selector: { matchLabels: { app: 'web' } }, rules: [{ from: [{ source: { namespaces: ['shop'], notPrincipals: ['cluster.local/ns/shop/sa/bad'] } }], to: [{ operation: { ports: ['8080'] } }] }] }),
    ap('shop', 'l7', { selector: { matchLabels: { app: 'web' } }, action: 'DENY', rules: [{ from: [{ source: { namespaces: ['dev'] } }], to: [{ operation: { methods: ['POST'] } }] }] }),
  );
  const a = compileAuthz4({ services: targets.map((x) => ({ name: x.name, frontends: [] })) as unknown as Model['services'], authorization: r.authorization });
  const v = (principal: string | undefined, service: string, port = 8080) => decide(a, principal ? { principal } : {}, { service, port }).verdict;
  t.equal(v('cluster.local/ns/shop/sa/fe', 'shop--db'), 'deny', 'ALLOW without rules: deny all, an identity');
  t.equal(v(undefined, 'shop--db'), 'deny', '... and no identity');
  t.equal(v('cluster.local/ns/shop/sa/fe', 'shop--web'), 'allow');
  t.equal(v('cluster.local/ns/shop/sa/fe', 'shop--web', 9090), 'deny', 'another port');
  t.equal(v('cluster.local/ns/shop/sa/bad', 'shop--web'), 'deny', 'notPrincipals');
  t.equal(v('cluster.local/ns/dev/sa/x', 'shop--web'), 'deny', 'the DENY rule without its methods denies dev on any port');
  t.equal(v('cluster.local/ns/dev/sa/x', 'bank--web'), 'allow', 'another namespace\'s service: no policy');
});

t.test('serve --kubernetes on the stand-in: an agent follows a policy created, changed, deleted; a bad one reported', async (t) => {
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  const dir = mkdtempSync(join(tmpdir(), 'kubeauthz-'));
  t.teardown(async () => { rmSync(dir, { recursive: true, force: true }); await api.close(); });
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  api.put('namespaces', { metadata: { name: 'shop' } } as never);
  api.put('nodes', { metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: '10.0.0.1' }] } } as never);
  api.put('pods', pod('shop', 'web-1', { app: 'web' }, '10.1.0.1') as never);
  api.put('pods', pod('shop', 'db-1', { app: 'db' }, '10.1.0.2') as never);
  api.put('services', service('shop', 'web', '10.96.0.10', [{ port: 80, targetPort: 8080 }]) as never);
  api.put('endpointslices', slice('shop', 'web-1', 'web', [{ port: 8080 }], [{ address: '10.1.0.1', nodeName: 'node-a' }]) as never);
  api.put('services', service('shop', 'db', '10.96.0.11', [{ port: 5432 }]) as never);
  api.put('endpointslices', slice('shop', 'db-1', 'db', [{ port: 5432 }], [{ address: '10.1.0.2', nodeName: 'node-a' }]) as never);
  const access = apiAccess({ kubeconfig: join(dir, 'kubeconfig') });
  const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: log as never, debounceMs: 1, statusListen: { host: '127.0.0.1', port: 0 } });
  const got: Model[] = [];
  const agent = new XdsSource({ address: `127.0.0.1:${cp.port}`, mode: 'delta', log, node: { id: 'node-a', cluster: 'c', metadata: {} }, apply: (m) => { got.push(m); return null; } });
  t.teardown(async () => { await agent.stop(); await cp.close(); access.client.close(); });
  agent.start();
  const last = () => got.at(-1);
  await until('synced', () => (last()?.workloads?.length ?? 0) === 2 && (last()?.services.length ?? 0) === 2);
  t.equal(last()!.authorization, undefined, 'no policy yet');
  t.equal(cp.kube.authzTranslations, 1, 'translated once, with the first batch');

  const policy = (app: string) => ({ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { namespace: 'shop', name: 'web' }, spec: { selector: { matchLabels: { app } }, rules: [{ from: [{ source: { namespaces: ['shop'], notPrincipals: ['cluster.local/ns/shop/sa/bad'] } }], to: [{ operation: { ports: ['8080'] } }] }] } });
  api.put('authorizationpolicies', policy('web') as never);
  await until('the policy', () => (last()!.authorization?.length ?? 0) === 1);
  t.same(last()!.authorization, [{ name: 'shop--web--0', action: 'allow', services: ['shop--web'], from: [{ namespaces: ['shop'], notPrincipals: ['cluster.local/ns/shop/sa/bad'] }], to: [{ ports: [8080] }] }], 'notPrincipals over the wire too');
  api.put('authorizationpolicies', policy('db') as never);
  await until('the policy moved to db', () => last()!.authorization?.[0]?.services?.[0] === 'shop--db').catch((e) => { t.comment(JSON.stringify(last()!.authorization)); throw e; });
  // a pod relabelled: the selector follows it
  api.put('pods', pod('shop', 'web-1', { app: 'db' }, '10.1.0.1') as never);
  await until('web\'s pod selected too', () => last()!.authorization?.[0]?.services?.length === 2);
  const n = cp.kube.authzTranslations;
  api.put('namespaces', { metadata: { name: 'shop', labels: { 'sockmesh.io/mtls': 'strict' } } } as never);
  await until('the label', () => last()!.mtls?.namespaces['shop'] === 'strict');
  t.equal(cp.kube.authzTranslations, n, 'a namespace label change translates no policy');

  api.put('authorizationpolicies', { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { namespace: 'shop', name: 'bad' }, spec: { rules: [{ to: [{ operation: { ports: ['http'] } }] }] } } as never);
  await until('reported', () => cp.kube.report().issues.some((i) => i.object === 'AuthorizationPolicy shop/bad'));
  t.match(cp.kube.report().issues, [{ object: 'AuthorizationPolicy shop/bad', path: 'spec.rules[0].to[0].operation.ports[0]' }]);
  t.match(cp.kube.report().authorizationPolicies, { watched: true, enforced: 1, invalid: 1 });
  const metrics = await (await fetch(`${cp.statusAddress}/metrics`)).text();
  t.match(metrics, /sockmesh_controlplane_kubernetes_authorization_policies\{outcome="invalid"\} 1/, 'the status metric');
  t.equal(last()!.authorization?.length, 1, 'the good one kept');
  api.remove('authorizationpolicies', 'shop', 'web');
  await until('the policy deleted', () => last()!.authorization === undefined);
  t.same([agent.status().lastNack], [null], 'nothing NACKed on the way');
});
