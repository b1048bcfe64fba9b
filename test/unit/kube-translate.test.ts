// Services + EndpointSlices -> model, with kube-proxy's semantics: one test per rule the translation promises
// (kube/translate.ts, kube/translate-endpoints.ts). Each builds the objects as the API server sends them.
import t from 'tap';
import { directService, translateCluster, type ClusterView, type NodeScope } from '../../kube/translate.js';
import { modelServiceName } from '../../kube/translate-names.js';
import { parseConfig, validateServices } from '../../agent/model/config.js';
import type { KEndpoint, KEndpointSlice, KService, KServicePort } from '../../kube/types.js';
import type { Service } from '../../agent/model/types.js';

function svc(name: string, spec: KService['spec'], meta: Partial<KService['metadata']> = {}, ns = 'default'): KService {
  return { apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns, ...meta }, spec: { type: 'ClusterIP', ...spec } };
}

function slice(name: string, service: string, addressType: 'IPv4' | 'IPv6', ports: KEndpointSlice['ports'], endpoints: KEndpoint[], ns = 'default'): KEndpointSlice {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': service } },
    addressType,
    ports,
    endpoints,
  };
}

const ep = (ip: string, extra: Partial<KEndpoint> = {}): KEndpoint => ({ addresses: [ip], conditions: { ready: true }, ...extra });
const port = (p: number, extra: Partial<KServicePort> = {}): KServicePort => ({ port: p, protocol: 'TCP', ...extra });

function view(services: KService[], slices: KEndpointSlice[], more: Partial<ClusterView> = {}): ClusterView {
  return {
    services: new Map(services.map((s) => [`${s.metadata.namespace}/${s.metadata.name}`, s])),
    endpointSlices: new Map(slices.map((s) => [`${s.metadata.namespace}/${s.metadata.name}`, s])),
    ...more,
  };
}

function one(v: ClusterView, scope: NodeScope = {}): Service {
  const r = translateCluster(v, scope);
  if (r.model.services.length !== 1) throw new Error(`expected one service, got ${JSON.stringify(r.model.services.map((s) => s.name))}: ${JSON.stringify(r.issues)}`);
  return r.model.services[0]!;
}

/** frontend "vip:port/proto" -> sorted "addr:port" backends */
function table(s: Service): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const f of s.frontends) out[`${f.vip}:${f.port}/${f.protocol}`] = f.backends.map((b) => `${b.address}:${b.port}${b.group ? `@${b.group}` : ''}`).sort();
  return out;
}

t.test('ClusterIP IPv4: frontend per port, backends from the slice, name <ns>--<name>', async (t) => {
  const s = one(view([svc('web', { clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10'], ports: [port(80, { targetPort: 8080 })] })],
    [slice('web-1', 'web', 'IPv4', [{ name: '', port: 8080, protocol: 'TCP' }], [ep('10.0.0.1'), ep('10.0.0.2')])]));
  t.equal(s.name, 'default--web');
  t.same(table(s), { '10.96.0.10:80/tcp': ['10.0.0.1:8080', '10.0.0.2:8080'] });
  t.equal(s.affinityTimeoutSeconds, 0);
  t.equal(s.algorithm, 'random');
});

t.test('IPv6 and dual-stack: each VIP gets the endpoints of its family', async (t) => {
  const six = one(view([svc('v6', { clusterIPs: ['fd00:10:96::a'], ipFamilies: ['IPv6'], ports: [port(80)] })],
    [slice('v6-1', 'v6', 'IPv6', [{ port: 80 }], [ep('fd00:10:244::0001')])]));
  t.same(table(six), { 'fd00:10:96::a:80/tcp': ['fd00:10:244::1:80'] }, 'canonical IPv6 text');
  const dual = one(view([svc('d', { clusterIPs: ['10.96.0.11', 'fd00:10:96::b'], ports: [port(443, { name: 'https' })] })], [
    slice('d-4', 'd', 'IPv4', [{ name: 'https', port: 8443 }], [ep('10.0.0.3')]),
    slice('d-6', 'd', 'IPv6', [{ name: 'https', port: 8443 }], [ep('fd00::3')]),
  ]));
  t.same(table(dual), { '10.96.0.11:443/tcp': ['10.0.0.3:8443'], 'fd00:10:96::b:443/tcp': ['fd00::3:8443'] });
});

t.test('ports by name; targetPort by name resolved per slice (two slices, two numbers)', async (t) => {
  const v = view([svc('api', { clusterIPs: ['10.96.0.12'], ports: [port(80, { name: 'http', targetPort: 'web' })] })], [
    slice('api-a', 'api', 'IPv4', [{ name: 'http', port: 8080 }], [ep('10.0.0.4')]),
    slice('api-b', 'api', 'IPv4', [{ name: 'http', port: 9090 }], [ep('10.0.0.5')]),
    slice('api-c', 'api', 'IPv4', [{ name: 'metrics', port: 9100 }], [ep('10.0.0.6')]), // another port's name: not ours
  ]);
  t.same(table(one(v)), { '10.96.0.12:80/tcp': ['10.0.0.4:8080', '10.0.0.5:9090'] });
});

t.test('multi-port: one service when ports share endpoints, one per port entry when they differ', async (t) => {
  const ports = [port(80, { name: 'http' }), port(443, { name: 'https' })];
  const same = one(view([svc('mp', { clusterIPs: ['10.96.0.13'], ports })],
    [slice('mp-1', 'mp', 'IPv4', [{ name: 'http', port: 8080 }, { name: 'https', port: 8443 }], [ep('10.0.0.7'), ep('10.0.0.8')])]));
  t.equal(same.name, 'default--mp');
  t.same(table(same), { '10.96.0.13:80/tcp': ['10.0.0.7:8080', '10.0.0.8:8080'], '10.96.0.13:443/tcp': ['10.0.0.7:8443', '10.0.0.8:8443'] });
  // the second slice has only http: 10.0.0.9 serves port 80 and not 443
  const r = translateCluster(view([svc('mp', { clusterIPs: ['10.96.0.13'], ports })], [
    slice('mp-1', 'mp', 'IPv4', [{ name: 'http', port: 8080 }, { name: 'https', port: 8443 }], [ep('10.0.0.7')]),
    slice('mp-2', 'mp', 'IPv4', [{ name: 'http', port: 8080 }], [ep('10.0.0.9')]),
  ]), {});
  t.same(r.model.services.map((s) => s.name), ['default--mp--80-tcp', 'default--mp--443-tcp']);
  t.same(r.model.services.map(table), [{ '10.96.0.13:80/tcp': ['10.0.0.7:8080', '10.0.0.9:8080'] }, { '10.96.0.13:443/tcp': ['10.0.0.7:8443'] }]);
  t.same([...r.origins.values()], ['default/mp', 'default/mp']);
});

t.test('TCP and UDP served; SCTP listed as unserved with its reason', async (t) => {
  const r = translateCluster(view([svc('dns', { clusterIPs: ['10.96.0.14'], ports: [port(53, { name: 'dns', protocol: 'UDP' }), port(53, { name: 'dns-tcp' }), port(9999, { name: 'sig', protocol: 'SCTP' })] })], [
    slice('dns-1', 'dns', 'IPv4', [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }, { name: 'sig', port: 9999, protocol: 'SCTP' }], [ep('10.0.0.10')]),
  ]), {});
  t.same(r.model.services.map(table), [{ '10.96.0.14:53/udp': ['10.0.0.10:53'], '10.96.0.14:53/tcp': ['10.0.0.10:53'] }]);
  t.same(r.unserved.map((u) => [u.name, u.kind]), [['dns', 'sctp']]);
  t.match(r.unserved[0]!.reason, /9999\/SCTP.*TCP and UDP only/);
});

t.test('several slices merged; the same endpoint in two slices is one backend (the ready copy wins)', async (t) => {
  const s = one(view([svc('m', { clusterIPs: ['10.96.0.15'], ports: [port(80)] })], [
    slice('m-b', 'm', 'IPv4', [{ port: 8080 }], [ep('10.0.0.12'), ep('10.0.0.11', { conditions: { ready: false } })]),
    slice('m-a', 'm', 'IPv4', [{ port: 8080 }], [ep('10.0.0.11'), ep('10.0.0.13')]),
    slice('other', 'not-m', 'IPv4', [{ port: 8080 }], [ep('10.0.0.99')]),
  ]));
  t.same(table(s), { '10.96.0.15:80/tcp': ['10.0.0.11:8080', '10.0.0.12:8080', '10.0.0.13:8080'] });
  // and only the first address of an endpoint counts (kube-proxy)
  const s2 = one(view([svc('m', { clusterIPs: ['10.96.0.15'], ports: [port(80)] })],
    [slice('m-a', 'm', 'IPv4', [{ port: 8080 }], [{ addresses: ['10.0.0.20', '10.0.0.21'] }])]));
  t.same(table(s2), { '10.96.0.15:80/tcp': ['10.0.0.20:8080'] }, 'absent conditions mean ready');
});

t.test('a service without a selector served from hand-made slices', async (t) => {
  const s = one(view([svc('ext-db', { clusterIPs: ['10.96.0.16'], ports: [port(5432, { name: 'pg' })] })],
    [slice('ext-db-manual', 'ext-db', 'IPv4', [{ name: 'pg', port: 5432, protocol: 'TCP' }], [{ addresses: ['192.0.2.10'] }])]));
  t.same(table(s), { '10.96.0.16:5432/tcp': ['192.0.2.10:5432'] });
});

t.test('endpoint conditions: ready ones; none ready -> serving and terminating; publishNotReadyAddresses -> all', async (t) => {
  const eps = [
    ep('10.0.1.1', { conditions: { ready: true } }),
    ep('10.0.1.2', { conditions: { ready: false, serving: true, terminating: true } }),
    ep('10.0.1.3', { conditions: { ready: false, serving: false, terminating: false } }),
  ];
  const mk = (e: KEndpoint[], spec: Partial<NonNullable<KService['spec']>> = {}) =>
    table(one(view([svc('c', { clusterIPs: ['10.96.0.17'], ports: [port(80)], ...spec })], [slice('c-1', 'c', 'IPv4', [{ port: 80 }], e)])))['10.96.0.17:80/tcp'];
  t.same(mk(eps), ['10.0.1.1:80'], 'only the ready one');
  t.same(mk(eps.slice(1)), ['10.0.1.2:80'], 'no ready one: the serving terminating one');
  t.same(mk(eps.slice(2)), [], 'neither: no backends (connect refused)');
  t.same(mk(eps, { publishNotReadyAddresses: true }), ['10.0.1.1:80', '10.0.1.2:80', '10.0.1.3:80'], 'publishNotReadyAddresses: all');
});

t.test('sessionAffinity ClientIP: its timeout, default 10800 s', async (t) => {
  const mk = (spec: Partial<NonNullable<KService['spec']>>) => one(view([svc('a', { clusterIPs: ['10.96.0.18'], ports: [port(80)], ...spec })], [])).affinityTimeoutSeconds;
  t.equal(mk({ sessionAffinity: 'ClientIP' }), 10800);
  t.equal(mk({ sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } }), 60);
  t.equal(mk({ sessionAffinity: 'None' }), 0);
  const r = translateCluster(view([svc('a', { clusterIPs: ['10.96.0.18'], ports: [port(80)], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 0 } } })], []), {});
  t.equal(r.model.services[0]!.affinityTimeoutSeconds, 10800, 'a bad timeout: the default');
  t.match(r.issues, [{ object: 'Service default/a', path: 'spec.sessionAffinityConfig.clientIP.timeoutSeconds', message: /1 to 86400, got 0/ }]);
});

t.test('internalTrafficPolicy Local: only this node\'s endpoints; none -> no backends', async (t) => {
  const v = view([svc('l', { clusterIPs: ['10.96.0.19'], ports: [port(80)], internalTrafficPolicy: 'Local' })], [
    slice('l-1', 'l', 'IPv4', [{ port: 80 }], [
      ep('10.0.2.1', { nodeName: 'node-a' }),
      ep('10.0.2.2', { nodeName: 'node-b' }),
      ep('10.0.2.3', { nodeName: 'node-b', conditions: { ready: false, serving: true, terminating: true } }),
      ep('10.0.2.4', { nodeName: 'node-c', conditions: { ready: false, serving: true, terminating: true } }),
    ]),
  ]);
  t.same(table(one(v, { nodeName: 'node-a' }))['10.96.0.19:80/tcp'], ['10.0.2.1:80']);
  t.same(table(one(v, { nodeName: 'node-b' }))['10.96.0.19:80/tcp'], ['10.0.2.2:80']);
  t.same(table(one(v, { nodeName: 'node-c' }))['10.96.0.19:80/tcp'], ['10.0.2.4:80'], 'no ready local: the local serving terminating one');
  t.same(table(one(v, { nodeName: 'node-z' }))['10.96.0.19:80/tcp'], [], 'no local endpoint: none (kube-proxy drops)');
  t.same(table(one(v, {}))['10.96.0.19:80/tcp'], ['10.0.2.1:80', '10.0.2.2:80'], 'cluster-wide result: every ready endpoint');
});

t.test('trafficDistribution PreferClose: this zone\'s hinted endpoints; all when any ready endpoint lacks hints', async (t) => {
  const hinted = (ip: string, zone: string) => ep(ip, { zone, hints: { forZones: [{ name: zone }] } });
  const mk = (eps: KEndpoint[], scope: NodeScope, spec: Partial<NonNullable<KService['spec']>> = { trafficDistribution: 'PreferClose' }) =>
    table(one(view([svc('z', { clusterIPs: ['10.96.0.20'], ports: [port(80)], ...spec })], [slice('z-1', 'z', 'IPv4', [{ port: 80 }], eps)]), scope))['10.96.0.20:80/tcp'];
  const eps = [hinted('10.0.3.1', 'a'), hinted('10.0.3.2', 'b'), hinted('10.0.3.3', 'a')];
  t.same(mk(eps, { zone: 'a' }), ['10.0.3.1:80', '10.0.3.3:80']);
  t.same(mk(eps, { zone: 'b' }), ['10.0.3.2:80']);
  t.same(mk(eps, { zone: 'c' }), ['10.0.3.1:80', '10.0.3.2:80', '10.0.3.3:80'], 'no endpoint hinted for this zone: all');
  t.same(mk([...eps, ep('10.0.3.4')], { zone: 'a' }), ['10.0.3.1:80', '10.0.3.2:80', '10.0.3.3:80', '10.0.3.4:80'], 'one ready endpoint without hints: all');
  t.same(mk(eps, {}), ['10.0.3.1:80', '10.0.3.2:80', '10.0.3.3:80'], 'zone unknown: all');
  t.same(mk(eps, { zone: 'a' }, {}), ['10.0.3.1:80', '10.0.3.2:80', '10.0.3.3:80'], 'without PreferClose hints are not used');
  // the zone can come from the node's labels
  const v = view([svc('z', { clusterIPs: ['10.96.0.20'], ports: [port(80)], trafficDistribution: 'PreferClose' })], [slice('z-1', 'z', 'IPv4', [{ port: 80 }], eps)],
    { nodes: new Map([['node-b', { metadata: { name: 'node-b', labels: { 'topology.kubernetes.io/zone': 'b' } } }]]) });
  t.same(table(one(v, { nodeName: 'node-b' }))['10.96.0.20:80/tcp'], ['10.0.3.2:80']);
});

t.test('headless and ExternalName: nothing in the model, listed in unserved', async (t) => {
  const r = translateCluster(view([
    svc('hl', { clusterIP: 'None', clusterIPs: ['None'], ports: [port(80)] }),
    svc('ex', { type: 'ExternalName', externalName: 'db.example.com' }),
  ], [slice('hl-1', 'hl', 'IPv4', [{ port: 80 }], [ep('10.0.4.1')])]), {});
  t.same(r.model.services, []);
  t.same(r.unserved.map((u) => [u.name, u.kind]), [['ex', 'external-name'], ['hl', 'headless']]);
  t.match(r.unserved[0]!.reason, /db\.example\.com/);
});

t.test('NodePort / LoadBalancer / externalIPs: the cluster IP served, the rest listed', async (t) => {
  const r = translateCluster(view([
    svc('lb', { type: 'LoadBalancer', clusterIPs: ['10.96.0.21'], ports: [port(80, { nodePort: 30080 })], externalIPs: ['203.0.113.5'] }),
  ], []), {});
  t.same(r.model.services.map((s) => Object.keys(table(s))), [['10.96.0.21:80/tcp']]);
  t.same(r.unserved.map((u) => u.kind), ['node-port', 'load-balancer', 'external-ips']);
  t.match(r.unserved[0]!.reason, /30080\/TCP/);
  t.match(r.unserved[2]!.reason, /203\.0\.113\.5/);
});

t.test('service-proxy-name: skipped unless it names sockmesh', async (t) => {
  const r = translateCluster(view([
    svc('theirs', { clusterIPs: ['10.96.0.22'], ports: [port(80)] }, { labels: { 'service.kubernetes.io/service-proxy-name': 'other' } }),
    svc('ours', { clusterIPs: ['10.96.0.23'], ports: [port(80)] }, { labels: { 'service.kubernetes.io/service-proxy-name': 'sockmesh' } }),
  ], []), {});
  t.same(r.model.services.map((s) => s.name), ['default--ours']);
  t.same(r.unserved.map((u) => [u.name, u.kind]), [['theirs', 'other-proxy']]);
});

t.test('bad input: clear issues naming the object and field; one bad service costs only itself', async (t) => {
  const r = translateCluster(view([
    svc('good', { clusterIPs: ['10.96.0.24'], ports: [port(80)] }),
    svc('badip', { clusterIPs: ['10.96.0.300'], ports: [port(80)] }),
    svc('badport', { clusterIPs: ['10.96.0.25'], ports: [port(0), port(81, { protocol: 'ICMP' })] }),
    svc('zdup', { clusterIPs: ['10.96.0.24'], ports: [port(80)] }),
  ], [slice('good-1', 'good', 'IPv4', [{ port: 80 }], [ep('10.0.5.1'), ep('fd00::1'), { addresses: ['nope'] }])]), {});
  t.same(r.model.services.map((s) => s.name), ['default--good']);
  t.same(table(r.model.services[0]!), { '10.96.0.24:80/tcp': ['10.0.5.1:80'] });
  const text = r.issues.map((i) => `${i.object}: ${i.path}: ${i.message}`).join('\n');
  t.match(text, /Service default\/badip: spec\.clusterIPs\[0\]: must be an IP address, got "10\.96\.0\.300"/);
  t.match(text, /Service default\/badport: spec\.ports\[0\]\.port: must be a port number 1-65535, got 0/);
  t.match(text, /Service default\/badport: spec\.ports\[1\]\.protocol: must be TCP, UDP or SCTP, got "ICMP"/);
  t.match(text, /EndpointSlice default\/good-1: endpoints\[1\]\.addresses\[0\]: must be an IPv4 address/);
  t.match(text, /EndpointSlice default\/good-1: endpoints\[2\]\.addresses\[0\]: must be an IPv4 address .*"nope"/);
  t.match(text, /Service default\/zdup: : not served: a frontend of it is also a frontend of Service default\/good/);
  t.same(r.unserved.map((u) => [u.name, u.kind]).sort(), [['badip', 'no-cluster-ip'], ['badport', 'invalid'], ['zdup', 'invalid']]);
});

t.test('names: <ns>--<name>, a hashed form when it would not be a 63-character label, never two services one name', async (t) => {
  t.equal(modelServiceName('default', 'web'), 'default--web');
  const long = modelServiceName('a'.repeat(40), 'b'.repeat(40));
  t.ok(long.length <= 63 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(long) && !long.includes('--'), long);
  t.not(modelServiceName('a--b', 'c'), modelServiceName('a', 'b--c'));
  t.not(modelServiceName('team-a', 'web'), modelServiceName('team', 'a-web'));
  t.not(modelServiceName('x', 'y', { port: 80, protocol: 'tcp' }), modelServiceName('x', 'y--80-tcp'));
});

t.test('the result is what a config file could say: the same model parsed back from its own text', async (t) => {
  const r = translateCluster(view([
    svc('web', { clusterIPs: ['10.96.0.26', 'fd00::26'], ports: [port(80, { name: 'http' }), port(53, { name: 'dns', protocol: 'UDP' })], sessionAffinity: 'ClientIP' }),
  ], [
    slice('web-1', 'web', 'IPv4', [{ name: 'http', port: 8080 }, { name: 'dns', port: 5353, protocol: 'UDP' }], [ep('10.0.6.1')]),
    slice('web-2', 'web', 'IPv6', [{ name: 'http', port: 8080 }, { name: 'dns', port: 5353, protocol: 'UDP' }], [ep('fd00::61')]),
  ]), {});
  const s = r.model.services[0]!;
  const text = JSON.stringify({
    services: [{
      name: s.name, vips: ['10.96.0.26', 'fd00::26'], affinity: { timeoutSeconds: 10800 },
      ports: [{ port: 80, protocol: 'tcp', targetPort: 8080 }, { port: 53, protocol: 'udp', targetPort: 5353 }],
      backends: [{ address: '10.0.6.1' }, { address: 'fd00::61' }],
    }],
  });
  t.same(r.model, parseConfig(text, 'x.json'));
});

t.test('deterministic, and one slice change changes only its service', async (t) => {
  const services: KService[] = [];
  const slices: KEndpointSlice[] = [];
  for (let i = 0; i < 50; i++) {
    services.push(svc(`s${i}`, { clusterIPs: [`10.96.1.${i + 1}`], ports: [port(80)] }, {}, `ns${i % 3}`));
    slices.push(slice(`s${i}-x`, `s${i}`, 'IPv4', [{ port: 80 }], [ep(`10.1.${i}.1`), ep(`10.1.${i}.2`)], `ns${i % 3}`));
  }
  const v1 = view(services, slices);
  const a = translateCluster(v1, {});
  const shuffled = view([...services].reverse(), [...slices].reverse());
  t.same(translateCluster(shuffled, {}).model, a.model, 'input order does not matter');
  t.same(a.model.services.map((s) => s.name), [...a.model.services.map((s) => s.name)].sort(), 'sorted by namespace/name');
  const changed = slices.map((s, i) => (i === 7 ? slice('s7-x', 's7', 'IPv4', [{ port: 80 }], [ep('10.1.7.1'), ep('10.1.7.3')], 'ns1') : s));
  const b = translateCluster(view(services, changed), {});
  const diff = a.model.services.filter((s, i) => JSON.stringify(s) !== JSON.stringify(b.model.services[i]));
  t.same(diff.map((s) => s.name), ['ns1--s7']);
  t.equal(b.model.services.length, a.model.services.length);
  // untouched services are the very same objects (cached by input identity): nothing for the differ to walk
  t.equal(b.model.services.filter((s, i) => s === a.model.services[i]).length, 49);
});

t.test('directService (the fast path for L4 services) makes exactly what validateServices makes', async (t) => {
  let seed = 12345;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  let compared = 0;
  for (let i = 0; i < 400; i++) {
    const v4 = rnd(3) !== 0;
    const v6 = !v4 || rnd(2) === 0;
    const vips = [...(v4 ? [`10.96.${rnd(256)}.${1 + rnd(250)}`] : []), ...(v6 ? [`fd00::${(1 + rnd(999)).toString(16)}`] : [])];
    const samePort = rnd(2) === 0;
    const nports = 1 + rnd(samePort ? 2 : 3); // 53/tcp + 53/udp at most: a third would be a duplicate
    const ports: Record<string, unknown>[] = [];
    for (let k = 0; k < nports; k++) ports.push({ port: samePort ? 53 : 80 + k, protocol: k % 2 ? 'udp' : 'tcp' });
    const backends: Record<string, unknown>[] = [];
    const nb = rnd(6);
    for (let k = 0; k < nb; k++) {
      const address = rnd(2) ? `10.1.${i % 256}.${k + 1}` : `fd00:1::${(k + 1).toString(16)}`;
      backends.push(samePort || nports === 1 ? { address, port: 8000 + rnd(3) } : { address });
    }
    if (!samePort && nports > 1) ports.forEach((p, k) => (p['targetPort'] = 9000 + k));
    const obj: Record<string, unknown> = { name: `s${i}`, vips, ports, backends };
    if (rnd(3) === 0) obj['affinity'] = { timeoutSeconds: 1 + rnd(86400) };
    // (the generator makes valid services only: distinct backends, no loops)
    const want = validateServices([obj], 'x', { names: new Set(), frontends: new Map() }, { emptyGroupsAllowed: true })[0];
    const got = directService(obj);
    if (got === undefined) {
      t.ok(nb === 0 && ports.some((p) => p['targetPort'] !== undefined), 'declines only what it says it declines');
      continue;
    }
    compared++;
    t.same(got, want, `service ${i}`);
  }
  t.ok(compared > 200, `compared ${compared}`);
});

t.test('a store mutated in place (as a reflector does): updates, adds and deletes all reach the result', async (t) => {
  const services = new Map<string, KService>();
  const slices = new Map<string, KEndpointSlice>();
  for (let i = 0; i < 20; i++) {
    services.set(`default/s${i}`, svc(`s${i}`, { clusterIPs: [`10.96.2.${i + 1}`], ports: [port(80)] }));
    slices.set(`default/s${i}-a`, slice(`s${i}-a`, `s${i}`, 'IPv4', [{ port: 80 }], [ep(`10.2.${i}.1`)]));
  }
  const v: ClusterView = { services, endpointSlices: slices };
  const backendsOf = (r: ReturnType<typeof translateCluster>, name: string) => table(r.model.services.find((s) => s.name === `default--${name}`)!)[`10.96.2.${Number(name.slice(1)) + 1}:80/tcp`];
  const a = translateCluster(v, {});
  slices.set('default/s3-a', slice('s3-a', 's3', 'IPv4', [{ port: 80 }], [ep('10.2.3.9')])); // update in place
  const b = translateCluster(v, {});
  t.same(backendsOf(b, 's3'), ['10.2.3.9:80']);
  t.equal(b.model.services.filter((s, i) => s !== a.model.services[i]).length, 1, 'one service re-made');
  slices.set('default/s3-b', slice('s3-b', 's3', 'IPv4', [{ port: 80 }], [ep('10.2.3.10')])); // a second slice added
  t.same(backendsOf(translateCluster(v, {}), 's3'), ['10.2.3.10:80', '10.2.3.9:80']);
  slices.delete('default/s3-a');
  t.same(backendsOf(translateCluster(v, {}), 's3'), ['10.2.3.10:80']);
  // a slice moved to another service by its label
  slices.set('default/s3-b', slice('s3-b', 's4', 'IPv4', [{ port: 80 }], [ep('10.2.3.10')]));
  const c = translateCluster(v, {});
  t.same(backendsOf(c, 's3'), []);
  t.same(backendsOf(c, 's4'), ['10.2.3.10:80', '10.2.4.1:80']);
  services.set('default/s5', svc('s5', { clusterIPs: ['10.96.2.99'], ports: [port(80)] })); // a service updated
  t.same(Object.keys(table(translateCluster(v, {}).model.services.find((s) => s.name === 'default--s5')!)), ['10.96.2.99:80/tcp']);
  services.delete('default/s6');
  t.equal(translateCluster(v, {}).model.services.length, 19);
  // and the same view from scratch (no index, no cache to lean on) gives the same model
  const fresh = { services: new Map(services), endpointSlices: new Map([...slices].map(([k, s]) => [k, { ...s }])) };
  t.same(translateCluster(fresh, {}).model, translateCluster(v, {}).model);
});

t.test('a slice deleted and another added between two translations (same count, shifted order) costs no other service its slices', async (t) => {
  const services = new Map<string, KService>();
  const slices = new Map<string, KEndpointSlice>();
  for (const [i, name] of ['a', 'b', 'c', 'e'].entries()) {
    services.set(`default/${name}`, svc(name, { clusterIPs: [`10.96.3.${i + 1}`], ports: [port(80)] }));
  }
  for (const name of ['a', 'b', 'c']) slices.set(`default/${name}-1`, slice(`${name}-1`, name, 'IPv4', [{ port: 80 }], [ep(`10.3.0.${name.charCodeAt(0) - 96}`)]));
  const v: ClusterView = { services, endpointSlices: slices };
  const backends = (name: string) => translateCluster(v, {}).model.services.find((s) => s.name === `default--${name}`)!.frontends[0]!.backends.map((b) => b.address);
  t.same(backends('c'), ['10.3.0.3']);
  // one batch of a rollout: b's slice goes, e's comes; the Map keeps its size, c's slice moves up one position
  slices.delete('default/b-1');
  slices.set('default/e-1', slice('e-1', 'e', 'IPv4', [{ port: 80 }], [ep('10.3.0.5')]));
  t.same(backends('c'), ['10.3.0.3'], 'c keeps its slice (it was dropped when positions were paired across the shift)');
  t.same(backends('e'), ['10.3.0.5']);
  t.same(backends('b'), []);
});
