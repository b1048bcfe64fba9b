// The incremental translation (kube/translate-live.ts) against the reference (translateCluster from scratch): random,
// seeded sequences of what reflectors report (Services, EndpointSlices, HTTPRoutes and Nodes added, changed, moved
// and deleted, in batches), each batch translated both ways; the results must be byte-identical. The generator makes
// what the incremental bookkeeping must get right: slices moving between services, routes whose backendRefs name
// services whose slices then change, parents appearing and going, two services claiming one ClusterIP, the node's
// zone changing under PreferClose and internalTrafficPolicy Local.
import t from 'tap';
import { ClusterTranslator, type ViewChanges } from '../../kube/translate-live.js';
import { translateCluster, type ClusterView, type NodeScope, type TranslateResult } from '../../kube/translate.js';
import type { KEndpoint, KEndpointSlice, KHTTPRoute, KNode, KService } from '../../kube/types.js';
import { prng } from '../../bench/lib/fleet.js'; // seeded: a failure is replayed by its seed

const NAMESPACES = ['a', 'b'];
const SERVICES = 14; // names per namespace: few, so that changes meet the same services again
const NODE = 'n1';

class Cluster {
  readonly services = new Map<string, KService>();
  readonly slices = new Map<string, KEndpointSlice>();
  readonly routes = new Map<string, KHTTPRoute>();
  readonly nodes = new Map<string, KNode>();
  pending: { services: Set<string>; endpointSlices: Set<string>; httpRoutes: Set<string>; nodes: Set<string> } = Cluster.none();
  private version = 0;

  constructor(private readonly r: () => number) {}

  static none() {
    return { services: new Set<string>(), endpointSlices: new Set<string>(), httpRoutes: new Set<string>(), nodes: new Set<string>() };
  }

  view(): ClusterView {
    return { services: this.services, endpointSlices: this.slices, httpRoutes: this.routes, nodes: this.nodes };
  }

  take(): ViewChanges {
    const c = this.pending;
    this.pending = Cluster.none();
    return c;
  }

  private int(n: number): number {
    return Math.floor(this.r() * n);
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  private meta(ns: string, name: string, labels?: Record<string, string>) {
    return { namespace: ns, name, resourceVersion: String(++this.version), uid: `${ns}-${name}`, ...(labels ? { labels } : {}) };
  }

  service(): void {
    const ns = this.pick(NAMESPACES);
    const name = `s${this.int(SERVICES)}`;
    const key = `${ns}/${name}`;
    this.pending.services.add(key);
    if (this.services.has(key) && this.int(5) === 0) return void this.services.delete(key);
    // ClusterIPs from a small pool: now and then two services claim one (the first in order wins)
    const ip = `10.96.${this.int(2)}.${1 + this.int(24)}`;
    const ips = this.int(4) === 0 ? [ip, `fd00::${(1 + this.int(24)).toString(16)}`] : this.int(12) === 0 ? ['None'] : [ip];
    const ports = this.int(3) === 0
      ? [{ name: 'http', port: 80, protocol: 'TCP' as const, targetPort: 'web' }, { name: 'dns', port: 53, protocol: 'UDP' as const, targetPort: 5353 }]
      : [{ name: 'http', port: 80, protocol: 'TCP' as const, targetPort: this.int(2) ? 8080 : 'web' }];
    const spec: KService['spec'] = { type: 'ClusterIP', clusterIPs: ips, ports };
    const flavour = this.int(6);
    if (flavour === 0) spec.internalTrafficPolicy = 'Local';
    if (flavour === 1) spec.trafficDistribution = 'PreferClose';
    if (flavour === 2) spec.sessionAffinity = 'ClientIP';
    if (this.int(8) === 0) spec.publishNotReadyAddresses = true;
    this.services.set(key, { apiVersion: 'v1', kind: 'Service', metadata: this.meta(ns, name), spec });
  }

  slice(): void {
    const ns = this.pick(NAMESPACES);
    const name = `e${this.int(SERVICES * 2)}`;
    const key = `${ns}/${name}`;
    this.pending.endpointSlices.add(key);
    if (this.slices.has(key) && this.int(5) === 0) return void this.slices.delete(key);
    const v6 = this.int(4) === 0;
    const endpoints: KEndpoint[] = [];
    for (let i = 0, n = this.int(4); i < n; i++) {
      const e: KEndpoint = {
        addresses: [v6 ? `fd00:1::${(1 + this.int(30)).toString(16)}` : `10.1.${this.int(3)}.${1 + this.int(30)}`],
        conditions: { ready: this.int(4) !== 0, serving: this.int(3) !== 0, terminating: this.int(4) === 0 },
        nodeName: this.pick([NODE, 'n2']),
        zone: this.pick(['z1', 'z2']),
      };
      if (this.int(2) === 0) e.hints = { forZones: [{ name: this.pick(['z1', 'z2']) }] };
      endpoints.push(e);
    }
    // the service-name label: mostly one of the services, now and then none (read by no service)
    const labels: Record<string, string> | undefined = this.int(10) === 0 ? undefined : { 'kubernetes.io/service-name': `s${this.int(SERVICES)}` };
    this.slices.set(key, {
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: this.meta(ns, name, labels), addressType: v6 ? 'IPv6' : 'IPv4',
      ports: [{ name: 'http', port: this.pick([8080, 8081]), protocol: 'TCP' }, { name: 'dns', port: 5353, protocol: 'UDP' }],
      endpoints,
    });
  }

  route(): void {
    const ns = this.pick(NAMESPACES);
    const name = `r${this.int(5)}`;
    const key = `${ns}/${name}`;
    this.pending.httpRoutes.add(key);
    if (this.routes.has(key) && this.int(4) === 0) return void this.routes.delete(key);
    const svc = () => `s${this.int(SERVICES)}`;
    const backendRefs = Array.from({ length: 1 + this.int(3) }, () => ({ name: svc(), port: this.pick([80, 80, 81]), weight: this.int(4) }));
    this.routes.set(key, {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute',
      metadata: { ...this.meta(ns, name), generation: this.version, creationTimestamp: `2026-01-0${1 + this.int(3)}T00:00:00Z` },
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: svc(), port: 80 }, ...(this.int(3) === 0 ? [{ group: '', kind: 'Service', name: svc() }] : [])],
        rules: [{ matches: [{ path: { type: 'PathPrefix', value: this.pick(['/', '/api', '/v2']) } }], backendRefs }],
      },
    });
  }

  node(): void {
    this.pending.nodes.add(NODE);
    const node: KNode = { apiVersion: 'v1', kind: 'Node', metadata: { name: NODE, resourceVersion: String(++this.version), labels: { 'topology.kubernetes.io/zone': this.pick(['z1', 'z2']) } } };
    this.nodes.set(NODE, node);
  }

  step(): void {
    const x = this.int(20);
    if (x < 6) this.service();
    else if (x < 16) this.slice();
    else if (x < 19) this.route();
    else this.node();
  }
}

/** Everything a result says, in one string (the origins map as its entries). */
const text = (r: TranslateResult) => JSON.stringify({ model: r.model, unserved: r.unserved, issues: r.issues, routeStatus: r.routeStatus, origins: [...r.origins] });

/** The reference: the same view copied (other objects, other maps), translated from scratch. */
const reference = (v: ClusterView, scope: NodeScope) => translateCluster(structuredClone(v), scope);

for (const scope of [{ nodeName: NODE }, {}] as NodeScope[]) {
  t.test(`random change sequences: incremental = full, byte for byte (scope ${JSON.stringify(scope)})`, async (t) => {
    let batches = 0;
    let incremental = 0;
    let withRoutes = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const r = prng(seed);
      const c = new Cluster(r);
      for (let i = 0; i < 40; i++) c.step();
      c.node();
      c.take();
      const live = new ClusterTranslator(scope);
      let res = live.translate(c.view());
      if (text(res) !== text(reference(c.view(), scope))) {
        t.fail(`seed ${seed}: the first (full) translation differs from the reference`);
        continue;
      }
      for (let b = 0; b < 60; b++) {
        for (let i = 0, n = 1 + Math.floor(r() * 4); i < n; i++) c.step();
        res = live.translate(c.view(), c.take());
        batches++;
        if (!live.last.full) incremental++;
        if (res.routeStatus.length > 0) withRoutes++;
        const want = text(reference(c.view(), scope));
        if (text(res) !== want) {
          t.equal(text(res), want, `seed ${seed}, batch ${b}: the incremental result differs from the full one`);
          break;
        }
      }
    }
    t.equal(batches, 12 * 60, 'every batch compared');
    t.ok(incremental > batches * 0.8, `most batches went the incremental way (${incremental} of ${batches}; a zone change starts over)`);
    t.ok(withRoutes > batches / 2, `routes were in play (${withRoutes} batches)`);
  });
}

t.test('a batch costs the services it touched: one slice, one service; unchanged services keep their objects', async (t) => {
  const services = new Map<string, KService>();
  const slices = new Map<string, KEndpointSlice>();
  const slice = (i: number, ip: string): KEndpointSlice => ({
    metadata: { namespace: 'default', name: `s${i}-x`, labels: { 'kubernetes.io/service-name': `s${i}` } }, addressType: 'IPv4',
    ports: [{ port: 8080, protocol: 'TCP' }], endpoints: [{ addresses: [ip], conditions: { ready: true } }],
  });
  for (let i = 0; i < 1000; i++) {
    services.set(`default/s${i}`, { metadata: { namespace: 'default', name: `s${i}` }, spec: { clusterIPs: [`10.96.${i >> 8}.${i & 255}`], ports: [{ port: 80 }] } });
    slices.set(`default/s${i}-x`, slice(i, `10.1.${i >> 8}.${i & 255}`));
  }
  const v: ClusterView = { services, endpointSlices: slices };
  const live = new ClusterTranslator({});
  const a = live.translate(v);
  t.equal(live.last.translated, 1000);
  slices.set('default/s7-x', slice(7, '10.9.9.9'));
  const b = live.translate(v, { endpointSlices: ['default/s7-x'] });
  t.same(live.last, { full: false, translated: 1 });
  t.equal(b.model.services.filter((s, i) => s !== a.model.services[i]).length, 1, 'one Service object new');
  t.same(b.model.services.find((s) => s.name === 'default--s7')!.frontends[0]!.backends.map((x) => x.address), ['10.9.9.9']);
  // a change set naming nothing that changed translates nothing
  live.translate(v, { services: ['default/s1'] });
  t.same(live.last, { full: false, translated: 0 });
  // other maps (a new view) or no change set: everything again
  live.translate({ services: new Map(services), endpointSlices: slices }, { services: [] });
  t.same(live.last, { full: true, translated: 1000 });
});

t.test('translateFor: the given services for another node, from the cluster translator\'s indexes', async (t) => {
  const svc = (name: string, ip: string, spec: Partial<NonNullable<KService['spec']>> = {}): KService => ({ metadata: { namespace: 'default', name }, spec: { clusterIPs: [ip], ports: [{ port: 80 }], ...spec } });
  const services = new Map([['default/local', svc('local', '10.96.0.1', { internalTrafficPolicy: 'Local' })], ['default/plain', svc('plain', '10.96.0.2')]]);
  const slices = new Map<string, KEndpointSlice>([['default/local-x', {
    metadata: { namespace: 'default', name: 'local-x', labels: { 'kubernetes.io/service-name': 'local' } }, addressType: 'IPv4', ports: [{ port: 8080, protocol: 'TCP' }],
    endpoints: [{ addresses: ['10.1.0.1'], nodeName: 'n1' }, { addresses: ['10.1.0.2'], nodeName: 'n2' }],
  }]]);
  const v: ClusterView = { services, endpointSlices: slices };
  const live = new ClusterTranslator({});
  live.translate(v);
  for (const node of ['n1', 'n2']) {
    const got = live.translateFor(['default/local'], { nodeName: node }, v);
    t.same(got.model, translateCluster({ services: new Map([['default/local', services.get('default/local')!]]), endpointSlices: slices }, { nodeName: node }).model, `node ${node}`);
    t.same(got.model.services.map((s) => s.name), ['default--local']);
  }
  t.throws(() => new ClusterTranslator({}).translateFor(['default/local'], {}, v), /before the first translate/);
});
