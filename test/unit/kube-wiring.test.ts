// The Kubernetes wiring around the reflectors, with in-memory reflectors (test/lib/fakekube.ts): batches (debounced,
// bounded, the first only once every list is complete), watch health ("unreachable since"), the agent's source (one
// slice change applies one service; nothing applied while unreachable; a rejected model keeps the last good one; the
// last applied model kept for a restart), the control plane's per-node views for Local services over real xDS
// streams (the agent's own xDS client), and the route status written only when it changes.
import t from 'tap';
import pino from 'pino';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClusterWatch, healthLine, mergedRouteStatus, nodeDependentServices, CONTROLLER_NAME, type SyncBatch } from '../../kube/watch.js';
import { KubeSource, changedServices, localPods } from '../../agent/sources/kube.js';
import { KubeCluster, startKubeControlPlane } from '../../controlplane/kube.js';
import { XdsSource } from '../../agent/sources/xds/source.js';
import type { Model } from '../../agent/model/types.js';
import type { KPod, KService } from '../../kube/types.js';
import { FakeReflector, httpRoute, service, slice, until } from '../lib/fakekube.js';

const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('ClusterWatch: paced: while changes keep coming, handling batches takes at most half the time (a full sync is a few batches, not one per 100 ms)', async (t) => {
  const services = new FakeReflector<KService>([]);
  const starts: number[] = [];
  const busy = (ms: number) => { const end = performance.now() + ms; while (performance.now() < end) { /* the batch's translation and apply */ } };
  let cost = 40;
  const w = new ClusterWatch({ reflectors: { services }, debounceMs: 5, maxDelayMs: 20, onSync: () => { starts.push(performance.now()); busy(cost); } });
  w.start();
  await until('first batch', () => starts.length === 1);
  // a stream of changes for 800 ms (a full sync arriving as watch events): unpaced, a batch every ~20 + 40 ms (~13)
  const t0 = performance.now();
  let n = 0;
  const timer = setInterval(() => services.set(service('default', `s${n++}`, '10.0.1.1', [{ port: 80 }])), 2);
  await sleep(800);
  clearInterval(timer);
  const during = starts.filter((s) => s >= t0).length;
  await until('the last changes', () => [...services.store.keys()].length === n && starts.length > during);
  await sleep(150);
  const batches = starts.filter((s) => s >= t0);
  t.ok(batches.length >= 4 && batches.length <= 11, `${batches.length} batches in 800 ms of changes with 40 ms each (at most one per 80 ms; unpaced: one per ~60 ms)`);
  for (let i = 1; i < batches.length; i++) t.ok(batches[i]! - batches[i - 1]! >= 2 * 40 - 2, `batch ${i}: ${(batches[i]! - batches[i - 1]!).toFixed(0)} ms after the one before (its handling and as long again)`);

  // after a quiet time a single change goes at the debounce, not the last batch's rest
  await sleep(100);
  cost = 1;
  const before = starts.length;
  const t1 = performance.now();
  services.set(service('default', 'one', '10.0.2.1', [{ port: 80 }]));
  await until('one change', () => starts.length === before + 1);
  t.ok(starts.at(-1)! - t1 < 40, `one change after a quiet time: a batch ${(starts.at(-1)! - t1).toFixed(0)} ms later`);
  // and one right after a small batch is held back only by that batch's few ms
  const t2 = performance.now();
  services.set(service('default', 'two', '10.0.2.2', [{ port: 80 }]));
  await until('a second change', () => starts.length === before + 2);
  t.ok(starts.at(-1)! - t2 < 40, `a change right after a 1 ms batch: ${(starts.at(-1)! - t2).toFixed(0)} ms later`);
  t.throws(() => new ClusterWatch({ reflectors: { services }, maxBusyShare: 0, onSync: () => {} }), /maxBusyShare 0/);
  await w.stop();
});

t.test('ClusterWatch: the first batch waits for every list, later changes are debounced and bounded', async (t) => {
  const services = new FakeReflector([service('default', 'a', '10.0.0.1', [{ port: 80 }])]);
  const slices = new FakeReflector([], false);
  const batches: SyncBatch[] = [];
  const w = new ClusterWatch({ reflectors: { services, endpointslices: slices }, debounceMs: 5, maxDelayMs: 40, onSync: (b) => batches.push(b) });
  w.start();
  await sleep(30);
  t.equal(batches.length, 0, 'no batch while the endpointslices are still listing');
  t.notOk(w.health().synced);
  slices.sync();
  await until('first batch', () => batches.length === 1);
  t.ok(batches[0]!.first);
  t.same([...batches[0]!.changed.services], ['default/a'], 'the first batch names everything');

  // a burst: one batch
  for (let i = 0; i < 5; i++) services.set(service('default', `b${i}`, `10.0.0.${10 + i}`, [{ port: 80 }]));
  await until('burst batch', () => batches.length === 2);
  await sleep(20);
  t.equal(batches.length, 2, 'five changes in a burst make one batch');
  t.equal(batches[1]!.changed.services.size, 5);

  // a steady stream of changes faster than the debounce still gets batches out within maxDelayMs
  const t0 = Date.now();
  const timer = setInterval(() => services.set(service('default', `s${Date.now()}`, '10.0.1.1', [{ port: 80 }])), 2);
  await until('bounded batch', () => batches.length === 3, 1000);
  clearInterval(timer);
  t.ok(Date.now() - t0 < 200, `a batch within the bound while changes kept coming (${Date.now() - t0} ms)`);

  // relist flag (after the stream of changes has settled)
  await sleep(60);
  const settled = batches.length;
  services.relist([...services.store.values()]);
  await sleep(20);
  t.equal(batches.length, settled, 'a relist that changed nothing makes no batch... ');
  services.relist([service('default', 'a', '10.0.0.1', [{ port: 8080 }])]);
  await until('relist batch', () => batches.length === settled + 1);
  t.ok(batches.at(-1)!.relist, 'a relist that changed something is flagged');
  await w.stop();
});

t.test('ClusterWatch health: unreachable since the first watch went down', async (t) => {
  const a = new FakeReflector([]);
  const b = new FakeReflector([]);
  const healths: boolean[] = [];
  const w = new ClusterWatch({ reflectors: { services: a, endpointslices: b }, onSync: () => {}, onHealth: (h) => healths.push(h.connected) });
  w.start();
  await sleep(10);
  a.down('connect ECONNREFUSED 127.0.0.1:6443');
  const since = a.status().since.toISOString();
  await sleep(5);
  b.down('connect ECONNREFUSED');
  const h = w.health();
  t.notOk(h.connected);
  t.equal(h.since, since, 'since the first one went down');
  t.match(healthLine(h), new RegExp(`^unreachable since ${since.replace(/[.]/g, '\\.')} \\(connect ECONNREFUSED 127.0.0.1:6443\\)`));
  a.up();
  b.up();
  t.ok(w.health().connected);
  t.same(healths, [false, true], 'told when it went down and when it came back (not per watch)');
  await w.stop();
});

const modelOf = (m: Model) => m.services.map((s) => `${s.name} ${s.frontends.map((f) => `${f.vip}:${f.port} -> ${f.backends.map((x) => `${x.address}:${x.port}`).sort().join(',')}`).join(' ')}`);

function agentFakes() {
  const r = {
    services: new FakeReflector([
      service('default', 'web', '10.96.0.10', [{ port: 80, targetPort: 8080 }]),
      service('default', 'api', '10.96.0.11', [{ port: 80, targetPort: 9090 }]),
      service('default', 'headless', 'None', [{ port: 80 }]),
    ]),
    endpointslices: new FakeReflector([
      slice('default', 'web-1', 'web', [{ port: 8080 }], [{ address: '10.1.0.1', nodeName: 'node-a' }, { address: '10.1.0.2', nodeName: 'node-b' }]),
      slice('default', 'api-1', 'api', [{ port: 9090 }], [{ address: '10.1.0.3' }]),
    ]),
    httproutes: new FakeReflector([]),
    nodes: new FakeReflector([]),
    pods: new FakeReflector<KPod>([
      { metadata: { namespace: 'default', name: 'p1', uid: 'u1' }, spec: { nodeName: 'node-a' }, status: { phase: 'Running', podIPs: [{ ip: '10.1.0.1' }, { ip: 'fd00::1' }] } },
      { metadata: { namespace: 'default', name: 'hn', uid: 'u2' }, spec: { nodeName: 'node-a', hostNetwork: true }, status: { phase: 'Running', podIPs: [{ ip: '192.168.0.1' }] } },
    ]),
  };
  const selectors: Record<string, string | undefined> = {};
  return {
    r, selectors,
    access: { reflect: (kind: keyof typeof r, o: { fieldSelector?: string }) => { selectors[kind] = o.fieldSelector; return r[kind]; } },
  };
}

t.test('agent source: translated for its node, one slice change applies one service, unreachable applies nothing', async (t) => {
  const { r, access, selectors } = agentFakes();
  const applied: { model: Model; changed?: ReadonlySet<string> }[] = [];
  let refuse: string | null = null;
  const pods: string[][] = [];
  const dir = mkdtempSync(join(tmpdir(), 'kubewire-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cacheFile = join(dir, 'kubernetes-model.json');
  const src = new KubeSource({
    mode: 'direct', nodeName: 'node-a', trustDomain: 'cluster.local', access: access as never, log, cacheFile,
    apply: (model, changed) => { if (refuse) return refuse; applied.push({ model, changed }); return null; },
    onPods: (p) => pods.push(p.flatMap((x) => x.addresses)),
  });
  t.equal(src.cached(), undefined, 'no cache yet');
  src.start();
  t.same(selectors, { services: undefined, endpointslices: undefined, httproutes: undefined, nodes: 'metadata.name=node-a', pods: 'spec.nodeName=node-a' },
    'cluster-wide services; its own node and pods only');
  await until('first apply', () => applied.length === 1);
  t.equal(applied[0]!.changed, undefined, 'the first apply is in full');
  t.same(modelOf(applied[0]!.model), ['default--api 10.96.0.11:80 -> 10.1.0.3:9090', 'default--web 10.96.0.10:80 -> 10.1.0.1:8080,10.1.0.2:8080']);
  t.same(pods, [['10.1.0.1', 'fd00::1']], 'its pods\' addresses (not the hostNetwork pod\'s)');
  t.equal(src.report().unserved[0]?.kind, 'headless', 'headless listed as not served');

  r.endpointslices.set(slice('default', 'web-1', 'web', [{ port: 8080 }], [{ address: '10.1.0.1', nodeName: 'node-a' }]));
  await until('second apply', () => applied.length === 2);
  t.same([...applied[1]!.changed!], ['default--web'], 'one slice change: one service named');
  t.equal(applied[1]!.model.services.find((s) => s.name === 'default--api'), applied[0]!.model.services.find((s) => s.name === 'default--api'),
    'the unchanged service is the same object (the plan skips it)');

  // API server gone: the stores stay, nothing is applied, the status says since when
  r.services.down('connect ECONNREFUSED'); r.endpointslices.down('connect ECONNREFUSED');
  await sleep(30);
  t.equal(applied.length, 2, 'nothing applied while unreachable');
  t.match(src.status().summary, /^unreachable since \d{4}-/);
  r.services.up(); r.endpointslices.up();

  // a model the transaction refuses: rejected whole, the next one goes in full
  refuse = 'the kernel said no';
  r.endpointslices.set(slice('default', 'api-1', 'api', [{ port: 9090 }], [{ address: '10.1.0.4' }]));
  await until('refused', () => src.status().lastError !== null);
  refuse = null;
  r.endpointslices.set(slice('default', 'api-1', 'api', [{ port: 9090 }], [{ address: '10.1.0.5' }]));
  await until('applied after the refusal', () => applied.length === 3);
  t.equal(applied[2]!.changed, undefined, 'after a refusal: in full');
  t.equal(src.status().lastError, null);
  await src.stop();

  // restart: the last applied model is where a new agent starts from (the API server may be down)
  const again = new KubeSource({ mode: 'direct', nodeName: 'node-a', trustDomain: 'cluster.local', access: agentFakes().access as never, log, cacheFile, apply: () => null });
  const cached = again.cached();
  t.same(cached && modelOf(cached), modelOf(applied[2]!.model), 'the cache holds the last applied model');
  t.ok(again.status().fromCache);
  const other = new KubeSource({ mode: 'direct', nodeName: 'node-b', trustDomain: 'cluster.local', access: agentFakes().access as never, log, cacheFile, apply: () => null });
  t.equal(other.cached(), undefined, 'another node\'s cache is not used');
});

t.test('agent source: this node\'s pods as workloads per service account (identity in --trust-domain, kubelet cgroups); a pod change re-applies the services with authz', async (t) => {
  const { r, access } = agentFakes();
  const uid = (n: number) => `00000000-0000-4000-8000-00000000000${n}`;
  const pod = (name: string, n: number, sa: string, ip: string): KPod => ({
    metadata: { namespace: 'shop', name, uid: uid(n) }, spec: { nodeName: 'node-a', serviceAccountName: sa },
    status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip }] },
  });
  for (const k of [...r.pods.store.keys()]) r.pods.store.delete(k);
  for (const p of [pod('cart-1', 1, 'cart', '10.1.0.1'), pod('cart-2', 2, 'cart', '10.1.0.2'), pod('front-1', 3, 'front', '10.1.0.3')]) r.pods.store.set(`shop/${p.metadata.name}`, p);
  const web = service('default', 'web', '10.96.0.10', [{ port: 80, targetPort: 8080 }]);
  web.metadata.annotations = {
    'sockmesh.io/http': 'true', 'sockmesh.io/authz': '{default: deny, rules: [{name: cart, action: allow, from: [spiffe://example.org/ns/shop/sa/cart]}]}',
  };
  r.services.store.set('default/web', web);
  const applied: { model: Model; changed?: ReadonlySet<string> }[] = [];
  const src = new KubeSource({
    mode: 'direct', nodeName: 'node-a', trustDomain: 'example.org', access: access as never, log,
    kubelet: { driver: 'cgroupfs', cgroupRoot: '/meshed' },
    apply: (model, changed) => { applied.push({ model, changed }); return null; },
  });
  src.start();
  t.teardown(() => src.stop());
  await until('first apply', () => applied.length === 1);
  t.same(src.report().issues, [], 'nothing left out');
  t.same(applied[0]!.model.workloads, [
    { name: 'shop--cart', identity: 'spiffe://example.org/ns/shop/sa/cart', addresses: ['10.1.0.1', '10.1.0.2'],
      cgroups: [`/meshed/kubepods/besteffort/pod${uid(1)}`, `/meshed/kubepods/besteffort/pod${uid(2)}`] },
    { name: 'shop--front', identity: 'spiffe://example.org/ns/shop/sa/front', addresses: ['10.1.0.3'], cgroups: [`/meshed/kubepods/besteffort/pod${uid(3)}`] },
  ], 'one workload per service account, in the trust domain given');
  t.same(applied[0]!.model.services.find((x) => x.name === 'default--web')!.http!.authz!.rules[0]!.from, ['spiffe://example.org/ns/shop/sa/cart']);

  r.pods.delete('shop/cart-2');
  await until('a pod change applied', () => applied.length === 2);
  t.same(applied[1]!.model.workloads![0]!.cgroups, [`/meshed/kubepods/besteffort/pod${uid(1)}`], 'the pod gone, its cgroup too');
  t.same([...applied[1]!.changed!], ['default--web'], 'only the service with authz is re-applied (the proxy resolves identities then)');
  r.pods.set(pod('batch-1', 4, 'batch', '10.1.0.9'));
  await until('a new service account', () => applied.length === 3);
  t.same(applied[2]!.model.workloads!.map((w) => w.name), ['shop--batch', 'shop--cart', 'shop--front']);
  r.pods.set({ ...pod('bad', 5, 'x', '10.1.0.10'), metadata: { namespace: 'shop', name: 'bad', uid: 'not-a-uid' } });
  await sleep(30);
  t.match(src.report().issues, [{ object: 'Pod shop/bad', path: 'metadata.uid', message: /must be a UUID/ }], 'a pod without a usable UID is named');
});

t.test('pods mode: the pods\' workloads join a control plane\'s model (its own names and cgroups kept); a change is told', async (t) => {
  const { r, access } = agentFakes();
  const pod = (name: string, n: number, sa: string): KPod => ({
    metadata: { namespace: 'shop', name, uid: `00000000-0000-4000-8000-00000000000${n}` }, spec: { nodeName: 'node-a', serviceAccountName: sa },
    status: { phase: 'Running', qosClass: 'Guaranteed', podIPs: [{ ip: `10.1.0.${n}` }] },
  });
  for (const k of [...r.pods.store.keys()]) r.pods.store.delete(k);
  r.pods.store.set('shop/a', pod('a', 1, 'cart'));
  r.pods.store.set('shop/b', pod('b', 2, 'front'));
  let told = 0;
  const src = new KubeSource({ mode: 'pods', nodeName: 'node-a', trustDomain: 'cluster.local', access: access as never, log, onWorkloads: () => told++ });
  src.start();
  t.teardown(() => src.stop());
  await until('the pods listed', () => told === 1);
  const cp: Model = { services: [], workloads: [{ name: 'shop--front', cgroups: ['/elsewhere'] }, { name: 'legacy', cgroups: ['/kubepods.slice/kubepods-pod00000000_0000_4000_8000_000000000001.slice'] }] };
  const merged = src.withPodWorkloads(cp);
  t.same(merged.workloads!.map((w) => [w.name, w.cgroups, w.identity]), [
    ['shop--front', ['/elsewhere'], undefined],
    ['legacy', ['/kubepods.slice/kubepods-pod00000000_0000_4000_8000_000000000001.slice'], undefined],
    ['shop--cart', [], 'spiffe://cluster.local/ns/shop/sa/cart'],
  ], 'the control plane\'s workloads win a name and a cgroup; the rest of the pods\' are added');
  t.equal(src.withPodWorkloads({ services: [] }).workloads!.length, 2, 'a model without workloads gets all of them');
  r.pods.set(pod('c', 3, 'batch'));
  await until('a new service account told', () => told === 2);
  r.pods.set({ ...pod('c', 3, 'batch'), metadata: { ...pod('c', 3, 'batch').metadata, labels: { x: 'y' } } });
  await sleep(30);
  t.equal(told, 2, 'a pod change that changes no workload is not told');
});

t.test('changedServices and localPods', async (t) => {
  const a = { name: 'a', frontends: [] } as never;
  const b = { name: 'b', frontends: [] } as never;
  t.same([...changedServices([a, b], [a, { name: 'b', frontends: [] } as never, { name: 'c' } as never])].sort(), ['b', 'c']);
  t.same([...changedServices([a, b], [b])], ['a']);
  t.same(localPods([
    { metadata: { namespace: 'x', name: 'done' }, status: { phase: 'Succeeded', podIP: '10.0.0.9' } },
    { metadata: { namespace: 'x', name: 'old', uid: 'u' }, status: { phase: 'Running', podIP: '10.0.0.8' } },
    { metadata: { namespace: 'x', name: 'pending' }, status: { phase: 'Pending' } },
  ]), [{ id: 'u', name: 'x/old', addresses: ['10.0.0.8'] }]);
});

t.test('route status: merged with other controllers, written only when it changes', async (t) => {
  const route = httpRoute('default', 'r', 'web', []);
  const ours = [{ parentRef: { group: '', kind: 'Service', name: 'web' }, controllerName: CONTROLLER_NAME,
    conditions: [{ type: 'Accepted', status: 'True' as const, reason: 'Accepted', message: '', observedGeneration: 1 }] }];
  route.status = { parents: [{ parentRef: { name: 'gw' }, controllerName: 'other.io/gw', conditions: [] }] };
  const merged = mergedRouteStatus(route, ours, new Date('2026-01-02T03:04:05.678Z'))!;
  t.equal(merged.parents.length, 2, 'the other controller\'s entry is kept');
  t.equal(merged.parents[1]!.conditions[0]!.lastTransitionTime, '2026-01-02T03:04:05Z');
  route.status = merged;
  t.equal(mergedRouteStatus(route, ours), null, 'the same status again: no write');
  const changed = mergedRouteStatus(route, [{ ...ours[0]!, conditions: [{ ...ours[0]!.conditions[0]!, observedGeneration: 2 }] }])!;
  t.ok(changed, 'a new generation: a write');
});

t.test('nodeDependentServices: Local, PreferClose, topology annotation, and routes sending to them', async (t) => {
  const local = service('default', 'local', '10.96.0.1', [{ port: 80 }], { internalTrafficPolicy: 'Local' });
  const close = service('default', 'close', '10.96.0.2', [{ port: 80 }], { trafficDistribution: 'PreferClose' });
  const auto = service('default', 'auto', '10.96.0.3', [{ port: 80 }]);
  auto.metadata.annotations = { 'service.kubernetes.io/topology-mode': 'Auto' };
  const plain = service('default', 'plain', '10.96.0.4', [{ port: 80 }]);
  const front = service('default', 'front', '10.96.0.5', [{ port: 80 }]);
  const r = httpRoute('default', 'r', 'front', [{ backendRefs: [{ name: 'local', port: 80 }] }]);
  t.same([...nodeDependentServices([local, close, auto, plain, front], [r])].sort(), ['default/auto', 'default/close', 'default/front', 'default/local']);
  t.same([...nodeDependentServices([plain, front], [r])], []);
});

t.test('control plane: Local services per node over xDS, everything else shared; route status written back', async (t) => {
  const r = {
    services: new FakeReflector([
      service('default', 'web', '10.96.0.10', [{ port: 80, targetPort: 8080 }]),
      service('default', 'local', '10.96.0.20', [{ port: 80, targetPort: 8080 }], { internalTrafficPolicy: 'Local' }),
    ]),
    endpointslices: new FakeReflector([
      slice('default', 'web-1', 'web', [{ port: 8080 }], [{ address: '10.1.0.1', nodeName: 'node-a' }, { address: '10.1.0.2', nodeName: 'node-b' }]),
      slice('default', 'local-1', 'local', [{ port: 8080 }], [{ address: '10.1.0.1', nodeName: 'node-a' }, { address: '10.1.0.2', nodeName: 'node-b' }]),
    ]),
    httproutes: new FakeReflector([httpRoute('default', 'split', 'web', [{ backendRefs: [{ name: 'web', port: 80 }] }])]),
    nodes: new FakeReflector([]),
  };
  const patches: { ns: string; name: string; status: unknown }[] = [];
  const cp = await startKubeControlPlane({
    listen: '127.0.0.1:0', server: 'fake', debounceMs: 1, statusListen: { host: '127.0.0.1', port: 0 },
    access: {
      reflect: (kind) => r[kind as keyof typeof r],
      patchRouteStatus: async (ns, name, status) => {
        patches.push({ ns, name, status });
        // the API server now holds it (what the reflector would see next)
        const route = r.httproutes.store.get(`${ns}/${name}`)!;
        r.httproutes.set({ ...route, status: status as never });
      },
    },
  });
  const clients = new Map<string, Model[]>();
  const sources: XdsSource[] = [];
  t.teardown(async () => { for (const s of sources) await s.stop(); await cp.close(); });
  for (const node of ['node-a', 'node-b']) {
    for (const mode of ['delta', 'sotw'] as const) {
      const got: Model[] = [];
      clients.set(`${node}/${mode}`, got);
      const s = new XdsSource({ address: `127.0.0.1:${cp.port}`, mode, log, node: { id: node, cluster: 'c', metadata: {} }, apply: (m) => { got.push(m); return null; } });
      sources.push(s);
      s.start();
    }
  }
  await until('every client synced', () => [...clients.values()].every((m) => m.length > 0));
  const backendsOf = (key: string, svc: string) => () => {
    const m = clients.get(key)!.at(-1)!;
    return m.services.find((s) => s.name === svc)?.frontends[0]?.backends.map((b) => b.address).sort() ?? [];
  };
  for (const mode of ['delta', 'sotw']) {
    t.same(backendsOf(`node-a/${mode}`, 'default--local')(), ['10.1.0.1'], `${mode}: node-a gets its own endpoint of the Local service`);
    t.same(backendsOf(`node-b/${mode}`, 'default--local')(), ['10.1.0.2'], `${mode}: node-b its own`);
  }
  t.same(cp.controlPlane.overlayNodes().sort(), ['node-a', 'node-b']);

  // an ordinary service's endpoint change: no per-node translation (counted once the route status written back has
  // come back as its own batch: paced, kube/watch.ts, it may follow the clients' sync)
  await until('the route status batch', () => patches.length > 0 && cp.kube.watch.health().batches >= 2);
  const before = cp.kube.nodeTranslations;
  r.endpointslices.set(slice('default', 'web-1', 'web', [{ port: 8080 }], [{ address: '10.1.0.3', nodeName: 'node-a' }]));
  await until('web change everywhere', () => [...clients.keys()].every((k) => backendsOf(k, 'default--web')().join() === '10.1.0.3'));
  t.equal(cp.kube.nodeTranslations, before, 'no node was translated again for a cluster-wide service\'s change');

  // the Local service's slice: each node follows
  r.endpointslices.set(slice('default', 'local-1', 'local', [{ port: 8080 }], [{ address: '10.1.0.1', nodeName: 'node-a' }, { address: '10.1.0.4', nodeName: 'node-b' }]));
  await until('node-b follows', () => backendsOf('node-b/delta', 'default--local')().join() === '10.1.0.4' && backendsOf('node-b/sotw', 'default--local')().join() === '10.1.0.4');
  t.same(backendsOf('node-a/delta', 'default--local')(), ['10.1.0.1']);

  // the service stops being Local: it moves to the shared snapshot and is never seen missing
  const seenMissing = () => [...clients.values()].some((ms) => ms.some((m, i) => i > 0 && !m.services.some((s) => s.name === 'default--local')));
  r.services.set(service('default', 'local', '10.96.0.20', [{ port: 80, targetPort: 8080 }]));
  await until('cluster-wide now', () => [...clients.keys()].every((k) => backendsOf(k, 'default--local')().join() === '10.1.0.1,10.1.0.4'));
  t.notOk(seenMissing(), 'no client ever had the service removed on the way');

  // route status: written once, not again for an unchanged cluster
  await until('route status written', () => patches.length >= 1);
  await cp.kube.settled();
  const n = patches.length;
  r.endpointslices.set(slice('default', 'web-1', 'web', [{ port: 8080 }], [{ address: '10.1.0.5', nodeName: 'node-a' }]));
  await until('web change', () => backendsOf('node-a/delta', 'default--web')().join() === '10.1.0.5');
  await cp.kube.settled();
  t.equal(patches.length, n, 'no status write when the status did not change');
  const st = patches[0]!.status as { parents: { controllerName: string; conditions: { type: string; status: string }[] }[] };
  t.equal(st.parents[0]!.controllerName, CONTROLLER_NAME);
  t.ok(st.parents[0]!.conditions.some((c) => c.type === 'Accepted' && c.status === 'True'), 'Accepted');

  // the status endpoint
  const report = await (await fetch(`${cp.statusAddress}/v1/kubernetes`)).json() as { summary: string; perNodeServices: number };
  t.match(report.summary, /^connected since/);
  const metrics = await (await fetch(`${cp.statusAddress}/metrics`)).text();
  t.match(metrics, /sockmesh_controlplane_kubernetes_watch_connected\{resource="endpointslices"\} 1/);
  t.match(metrics, /sockmesh_controlplane_kubernetes_route_status_writes_total\{result="ok"\} [1-9]/);
  t.ok(KubeCluster);
});

t.test('meshctl: status says "kubernetes: unreachable since", services lists what is not served', async (t) => {
  const { renderKubernetes } = await import('../../cli/commands/status.js');
  const { renderUnserved } = await import('../../cli/commands/services.js');
  const { styleFor } = await import('../../cli/style.js');
  const style = styleFor({});
  const { r, access } = agentFakes();
  const src = new KubeSource({ mode: 'direct', nodeName: 'node-a', trustDomain: 'cluster.local', access: access as never, log, apply: () => null });
  r.services.set(service('default', 'ext', '', [], { type: 'ExternalName', externalName: 'db.example.com', clusterIP: undefined, clusterIPs: undefined }));
  r.services.set(service('default', 'np', '10.96.0.30', [{ port: 80, nodePort: 30080 } as never], { type: 'NodePort' }));
  src.start();
  await until('synced', () => src.status().lastTranslate !== null);
  for (const k of Object.values(r)) (k as FakeReflector<never>).down('connect ECONNREFUSED 127.0.0.1:6443');
  const lines = renderKubernetes(src.status(), style);
  t.match(lines[0], /^kubernetes: unreachable since \d{4}-\d\d-\d\dT[\d:.]+Z \(connect ECONNREFUSED 127\.0\.0\.1:6443\)$/);
  t.ok(lines.some((l) => /endpointslices\s+unreachable/.test(l)), 'per watch');
  const text = renderUnserved(src.report(), style).join('\n');
  t.match(text, /default\/ext\s+ExternalName \(no VIP\)/);
  t.match(text, /default\/headless\s+headless \(no VIP\)/);
  t.match(text, /default\/np\s+NodePort: not served/);
  t.notMatch(text, /default\/web/, 'served services are not listed');
  t.match(renderUnserved({ ...src.report(), status: { ...src.status(), mode: 'pods' } }, style).join('\n'), /control plane/);
  await src.stop();
});
