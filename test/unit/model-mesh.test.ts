// Issue 13's model: workloads with identity/node/addresses, nodes, mTLS modes, L4 authorization policies (config ->
// model, every error with its path), the mode a destination is held to, and authz4's decide() in Istio's order.
import t from 'tap';
import { parseConfig } from '../../agent/model/config.js';
import { compileAuthz4, decide, decideEndpoint, patternMatcher } from '../../agent/model/authz4.js';
import { mtlsModeFor } from '../../agent/model/mtls.js';
import { ConfigError, type Model } from '../../agent/model/types.js';

const BASE = `
nodes:
  - {name: node-a, addresses: [198.19.255.1]}
  - {name: node-b, addresses: [198.19.255.2, "2001:db8:ffff::2"], tunnelPort: 15009}
workloads:
  - {name: web-a, cgroups: [/mesh/web-a], identity: "spiffe://cluster.local/ns/shop/sa/web", node: node-a, addresses: [198.18.1.2]}
  - {name: web-b, identity: "spiffe://cluster.local/ns/shop/sa/web", node: node-b, addresses: [198.18.2.2, "2001:DB8:2::2"]}
  - {name: batch, cgroups: [/mesh/batch], identity: "spiffe://cluster.local/ns/batch/sa/default"}
  - {name: anon, cgroups: [/mesh/anon]}
mtls:
  mode: permissive
  namespaces: {batch: strict}
services:
  - name: web
    vips: [198.19.254.1]
    ports: [{port: 80, targetPort: 8080}]
    backends: [{address: 198.18.1.2}, {address: 198.18.2.2}]
  - name: db
    mtls: STRICT
    vips: [198.19.254.2]
    ports: [{port: 5432}]
    backends: [{address: 198.18.1.2}]
  - name: api
    vips: [198.19.254.3]
    ports: [{port: 80}]
    backends: [{address: 198.18.2.2, port: 9000}]
    http: {}
authorization:
  - name: no-legacy
    action: DENY
    from: [{principals: ["*/sa/legacy"]}]
  - name: web-from-shop
    action: ALLOW
    services: [web]
    from: [{namespaces: [shop]}, {principals: ["spiffe://cluster.local/ns/batch/sa/default"]}]
    to: [{ports: [8080]}]
  - name: db-deny-batch
    action: deny
    services: [db]
    from: [{namespaces: ["bat*"]}]
`;

function issuesOf(yaml: string): string[] {
  try {
    parseConfig(yaml, 'm.yaml');
  } catch (e) {
    if (e instanceof ConfigError) return e.issues.map((i) => `${i.path}: ${i.message}`);
    throw e;
  }
  return [];
}

t.test('the full mesh config validates into the model', async (t) => {
  const m = parseConfig(BASE, 'm.yaml');
  t.same(m.nodes, [
    { name: 'node-a', addresses: ['198.19.255.1'] },
    { name: 'node-b', addresses: ['198.19.255.2', '2001:db8:ffff::2'], tunnelPort: 15009 },
  ]);
  t.same(m.workloads?.[1], { name: 'web-b', cgroups: [], identity: 'spiffe://cluster.local/ns/shop/sa/web', node: 'node-b', addresses: ['198.18.2.2', '2001:db8:2::2'] }, 'addresses canonical, no cgroups for another node');
  t.same(m.workloads?.[3], { name: 'anon', cgroups: ['/mesh/anon'] }, 'a workload without the new fields is as before');
  t.same(m.mtls, { mode: 'permissive', namespaces: { batch: 'strict' } });
  t.equal(m.services[1]!.mtls, 'strict', 'modes are case-insensitive words');
  t.equal(m.services[0]!.mtls, undefined);
  t.same(m.authorization?.[1], {
    name: 'web-from-shop', action: 'allow', services: ['web'],
    from: [{ namespaces: ['shop'] }, { principals: ['cluster.local/ns/batch/sa/default'] }], to: [{ ports: [8080] }],
  }, 'principals are kept without the spiffe:// scheme, as Istio compares them');
  t.equal(m.authorization?.[0]?.action, 'deny');
  t.same(Object.keys(parseConfig('services: []', 'x.yaml')), ['services'], 'a config without the mesh sections: a model without them');
});

t.test('every error names its field', async (t) => {
  const cases: [string, string, string[]][] = [
    ['identity and addresses', BASE.replace('identity: "spiffe://cluster.local/ns/batch/sa/default"', 'identity: "cluster.local/ns/batch/sa/default", addresses: [198.18.1.2, nope]'), [
      'workloads[2].identity: must be a SPIFFE id spiffe://<trust domain>/ns/<namespace>/sa/<service account>',
      'workloads[2].addresses[1]: must be an IPv4 or IPv6 address literal',
    ]],
    ['a workload without node needs cgroups', BASE.replace('{name: anon, cgroups: [/mesh/anon]}', '{name: anon, addresses: [198.18.1.9]}'), [
      'workloads[3].cgroups: is required (a list)',
    ]],
    ['references', BASE.replace('node: node-b', 'node: node-c').replace('addresses: [198.18.2.2, "2001:DB8:2::2"]', 'addresses: [198.18.1.2]').replace('services: [db]', 'services: [db, nosuch, api]'), [
      "workloads[1].node: node 'node-c' is not in the top-level nodes list",
      "workloads[1].addresses[0]: address 198.18.1.2 is already an address of workload 'web-a'",
      "authorization[2].services[1]: service 'nosuch' is not defined",
      "authorization[2].services[2]: service 'api' has http rules",
    ]],
    ['nodes', BASE.replace('{name: node-a, addresses: [198.19.255.1]}', '{name: Node_A, addresses: [], tunnelPort: 0}\n  - {name: node-b, addresses: [198.19.255.2]}'), [
      'nodes[0].name: must be a node name',
      'nodes[0].addresses: must list at least one address',
      'nodes[0].tunnelPort: must be an integer between 1 and 65535',
      "nodes[2].name: duplicate node name 'node-b', also used by nodes[1]",
      'nodes[2].addresses[0]: address 198.19.255.2 is already the tunnel end of node \'node-b\'',
    ]],
    ['modes', BASE.replace('mode: permissive', 'mode: strickt').replace('{batch: strict}', '{batch: on, Bad_NS: off}').replace('mtls: STRICT', 'mtls: yes'), [
      "services[1].mtls: must be one of strict, permissive, off, got \"yes\"",
      "mtls.mode: must be one of strict, permissive, off, got \"strickt\" (a string) (did you mean 'strict'?)",
      'mtls.namespaces.batch: must be one of strict, permissive, off',
      'mtls.namespaces.Bad_NS: must be a namespace name',
    ]],
    ['policies', BASE.replace(`  - name: db-deny-batch
    action: deny
    services: [db]
    from: [{namespaces: ["bat*"]}]`, `  - name: no-legacy
    action: maybe
    from: [{principals: [ok, "a*b", "", 7]}, {}, {namespaces: []}]
    to: [{ports: [0, 80]}, {port: 1}]
    servces: [web]
  - {action: allow, services: []}`), [
      "authorization[2].servces: unknown field 'servces' (did you mean 'services'?)",
      "authorization[2].name: duplicate policy name 'no-legacy', also used by authorization[0]",
      "authorization[2].action: must be one of allow, deny, got \"maybe\"",
      "authorization[2].from[0].principals[1]: must be a principal (<trust domain>/ns/<ns>/sa/<sa>): exact, 'prefix*', '*suffix' or '*'",
      'authorization[2].from[0].principals[2]: must be a principal',
      'authorization[2].from[0].principals[3]: must be a principal',
      'authorization[2].from[1]: must name principals or namespaces',
      "authorization[2].from[2].namespaces: must list 1 to 64 values (omit 'namespaces' for any), got 0",
      'authorization[2].to[0].ports[0]: must be a port between 1 and 65535',
      "authorization[2].to[1].port: unknown field 'port' (did you mean 'ports'?)",
      'authorization[2].to[1].ports: is required (a list)',
      'authorization[3].name: is required',
      'authorization[3].services: must list at least one service',
    ]],
  ];
  for (const [name, yaml, want] of cases) {
    const got = issuesOf(yaml);
    t.equal(got.length, want.length, `${name}: ${got.length} issues:\n${got.join('\n')}`);
    want.forEach((w, i) => t.ok(got[i]?.startsWith(w), `${name}: issue ${i}\n  want ${w}\n  got  ${got[i]}`));
  }
});

t.test('the mode a destination is held to: service over namespace over mesh', async (t) => {
  const m = parseConfig(BASE, 'm.yaml');
  const [webA, webB, batch, anon] = m.workloads!;
  t.equal(mtlsModeFor(m, webA, 8080), 'permissive', 'the mesh default');
  t.equal(mtlsModeFor(m, webA, 5432), 'strict', "db's own mode for the port its backend serves");
  t.equal(mtlsModeFor(m, webA, 8080, m.services[1]), 'strict', 'connected through the strict service');
  t.equal(mtlsModeFor(m, batch, 1), 'strict', 'the namespace');
  t.equal(mtlsModeFor(m, anon, 1), 'permissive', 'no identity: the mesh mode');
  t.equal(mtlsModeFor(m, webB, 9000), 'permissive');
  const bare: Model = { services: [] };
  t.equal(mtlsModeFor(bare, undefined, undefined), 'permissive', 'no mtls section: permissive (Istio)');
  const off = parseConfig(BASE.replace('mode: permissive', 'mode: off'), 'm.yaml');
  t.equal(mtlsModeFor(off, webA, 8080), 'off');
  // two services with their own mode on one backend port: the strictest
  const two = parseConfig(BASE.replace('    backends: [{address: 198.18.1.2}]\n', '    backends: [{address: 198.18.1.2}]\n  - {name: db2, mtls: off, vips: [198.19.254.9], ports: [{port: 5432}], backends: [{address: 198.18.1.2}]}\n'), 'm.yaml');
  t.equal(mtlsModeFor(two, two.workloads![0], 5432), 'strict');
});

t.test('patterns as Istio matches them', async (t) => {
  t.ok(patternMatcher('*')('x'));
  t.notOk(patternMatcher('*')(''), "'*' needs a value");
  t.ok(patternMatcher('cluster.local/ns/shop/*')('cluster.local/ns/shop/sa/web'));
  t.notOk(patternMatcher('cluster.local/ns/shop/*')('cluster.local/ns/shopping/sa/web'));
  t.ok(patternMatcher('*/sa/web')('td/ns/a/sa/web'));
  t.notOk(patternMatcher('*/sa/web')('td/ns/a/sa/web2'));
  t.ok(patternMatcher('exact')('exact'));
  t.notOk(patternMatcher('exact')('exactly'));
});

t.test('decide: any DENY match denies; an applicable ALLOW must match; no ALLOW = allow', async (t) => {
  const m = parseConfig(BASE, 'm.yaml');
  const a = compileAuthz4(m);
  const web = { service: 'web', port: 8080 };
  t.same(decide(a, { principal: 'spiffe://cluster.local/ns/shop/sa/web' }, web), { verdict: 'allow', reason: 'allow-policy', policy: 'web-from-shop' }, 'by namespace, from the SPIFFE id');
  t.same(decide(a, { principal: 'cluster.local/ns/batch/sa/default' }, web), { verdict: 'allow', reason: 'allow-policy', policy: 'web-from-shop' }, 'by principal, scheme-less');
  t.same(decide(a, { principal: 'spiffe://cluster.local/ns/shop/sa/legacy' }, web), { verdict: 'deny', reason: 'deny-policy', policy: 'no-legacy' }, 'DENY first, over a matching ALLOW');
  t.same(decide(a, { principal: 'spiffe://cluster.local/ns/other/sa/x' }, web), { verdict: 'deny', reason: 'no-allow-match' });
  t.same(decide(a, {}, web), { verdict: 'deny', reason: 'no-allow-match' }, 'no identity matches no principal or namespace');
  t.same(decide(a, { principal: 'spiffe://cluster.local/ns/shop/sa/web' }, { service: 'web', port: 8081 }), { verdict: 'deny', reason: 'no-allow-match' }, 'the ALLOW is for port 8080 only');
  t.same(decide(a, { namespace: 'shop' }, web), { verdict: 'allow', reason: 'allow-policy', policy: 'web-from-shop' }, 'a namespace alone');
  t.same(decide(a, { principal: 'spiffe://cluster.local/ns/batch/sa/default' }, { service: 'db', port: 5432 }), { verdict: 'deny', reason: 'deny-policy', policy: 'db-deny-batch' }, 'prefix pattern on namespaces');
  t.same(decide(a, {}, { service: 'db', port: 5432 }), { verdict: 'allow', reason: 'no-policy' }, 'db has no ALLOW policy; the DENYs do not match');
  t.same(decide(a, { principal: 'cluster.local/ns/x/sa/legacy' }, { service: 'api', port: 9000 }), { verdict: 'allow', reason: 'no-policy' }, 'L7 services are left to http.authz');
  t.ok(a.governed('web') && a.governed('db') && !a.governed('api'), 'governed: the policies without services cover every L4 service');
  t.same(a.names, ['no-legacy', 'web-from-shop', 'db-deny-batch']);

  // by endpoint (the tunnel's server): web's backend pod port
  t.same(decideEndpoint(a, { principal: 'cluster.local/ns/other/sa/x' }, '198.18.2.2', 8080), { verdict: 'deny', reason: 'no-allow-match' });
  t.same(decideEndpoint(a, { principal: 'cluster.local/ns/shop/sa/web' }, '198.18.2.2', 8080), { verdict: 'allow', reason: 'allow-policy', policy: 'web-from-shop' });
  t.same(decideEndpoint(a, { principal: 'cluster.local/ns/batch/sa/default' }, '198.18.1.2', 5432), { verdict: 'deny', reason: 'deny-policy', policy: 'db-deny-batch' });
  t.same(decideEndpoint(a, { principal: 'cluster.local/ns/x/sa/legacy' }, '198.18.9.9', 1), { verdict: 'deny', reason: 'deny-policy', policy: 'no-legacy' }, 'no service there: only the policies without services');
  t.same(decideEndpoint(a, { principal: 'cluster.local/ns/x/sa/y' }, '198.18.9.9', 1), { verdict: 'allow', reason: 'no-policy' });

  const none = compileAuthz4({ services: m.services });
  t.same(decide(none, {}, web), { verdict: 'allow', reason: 'no-policy' }, 'no policies: everything allowed');
  t.notOk(none.governed('web'));
});
