// The Kubernetes client and reflector against the API-server stand-in (lab/kubeapi.ts) over real HTTP on 127.0.0.1:
// paginated lists, watches, bookmarks, 410 on a watch (relist as a diff) and on a continue token, dropped
// connections (re-watch without relist), an outage (the store stays), selectors, bearer and client-certificate auth.
import t, { type Test } from 'tap';
import { KubeApi, kubeconfigFor, type KubeApiOptions } from '../../lab/kubeapi.js';
import { KubeApiStatusError, KubeClient, RESOURCES, type KubeObject } from '../../kube/client.js';
import { loadKubeConfig } from '../../kube/kubeconfig.js';
import { Reflector, type ReflectorChange } from '../../kube/reflector.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const svc = (name: string, ns = 'default', labels: Record<string, string> = {}) => ({ metadata: { name, namespace: ns, labels }, spec: { ports: [{ port: 80 }] } });

async function setup(t: Tap, opts: KubeApiOptions = {}) {
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000, ...opts });
  const client = new KubeClient({ server: api.url, source: 'test' });
  t.teardown(async () => {
    client.close();
    await api.close();
  });
  return { api, client };
}
type Tap = Test;

function reflect<T extends KubeObject>(t: Tap, client: KubeClient, ref = RESOURCES.services, opts: ConstructorParameters<typeof Reflector>[2] = {}) {
  const r = new Reflector<T>(client, ref, { backoff: { initialMs: 50, maxMs: 200 }, ...opts });
  const changes: ReflectorChange[] = [];
  r.onChange((c) => changes.push(c));
  t.teardown(() => r.stop());
  r.start();
  return { r, changes };
}

t.test('the first list is paginated (3 pages of 500) and reported once, as added', async (t) => {
  const { api, client } = await setup(t);
  api.load('services', Array.from({ length: 1234 }, (_, i) => svc(`s${String(i).padStart(4, '0')}`, i % 2 ? 'default' : 'other')));
  const { r, changes } = reflect(t, client);
  await waitFor('synced', () => r.synced);
  t.equal(r.store.size, 1234);
  t.equal(api.requests.list, 3, 'three pages');
  t.equal(changes.length, 1);
  t.equal(changes[0]!.added.length, 1234);
  t.equal(changes[0]!.relist, true);
  t.ok(r.store.get('other/s0000'), 'keys are namespace/name');
  t.equal(r.status().relists, 0);
  t.equal(r.status().resourceVersion, api.resourceVersion);
  await waitFor('watching', () => api.watchCount('services') === 1);
  t.ok(r.status().connected);
});

t.test('watch: added, updated, deleted, each reported once; an ADDED for a known key is an update', async (t) => {
  const { api, client } = await setup(t);
  api.put('services', svc('a'));
  const { r, changes } = reflect(t, client);
  await waitFor('watching', () => api.watchCount('services') === 1);
  changes.length = 0;
  await client.create(RESOURCES.services, svc('b'));
  await waitFor('b', () => r.store.has('default/b'));
  await client.patch(RESOURCES.services, 'default', 'a', { metadata: { labels: { x: 'y' } } });
  await waitFor('a updated', () => r.store.get('default/a')?.metadata.labels?.x === 'y');
  await client.delete(RESOURCES.services, 'default', 'b');
  await waitFor('b deleted', () => !r.store.has('default/b'));
  t.same(changes, [
    { added: ['default/b'], updated: [], deleted: [], relist: false },
    { added: [], updated: ['default/a'], deleted: [], relist: false },
    { added: [], updated: [], deleted: ['default/b'], relist: false },
  ]);
  t.equal(r.status().resourceVersion, api.resourceVersion);
});

t.test('bookmarks advance the resourceVersion without changes', async (t) => {
  const { api, client } = await setup(t);
  const { r, changes } = reflect(t, client);
  await waitFor('watching', () => api.watchCount('services') === 1);
  const before = r.status().resourceVersion;
  api.put('pods', { metadata: { name: 'p', namespace: 'default' }, spec: { nodeName: 'n1' } }); // another resource moves the rv
  api.bookmark();
  await waitFor('bookmark', () => r.status().resourceVersion === api.resourceVersion);
  t.not(r.status().resourceVersion, before);
  t.equal(changes.length, 1, 'only the first list');
});

t.test('a dropped watch resumes from the last resourceVersion: nothing missed, no relist', async (t) => {
  const { api, client } = await setup(t);
  api.put('services', svc('a'));
  const { r, changes } = reflect(t, client);
  await waitFor('watching', () => api.watchCount('services') === 1);
  api.dropWatches();
  api.put('services', svc('b')); // while no watch is open: must come from the history
  await waitFor('b', () => r.store.has('default/b'));
  t.equal(api.requests.list, 1, 'no second list');
  t.equal(r.status().relists, 0);
  t.same(changes.at(-1), { added: ['default/b'], updated: [], deleted: [], relist: false });
  t.ok(api.requests.watch >= 2);
});

for (const how of ['ERROR event', 'HTTP 410', 'compacted history'] as const) {
  t.test(`410 on the watch (${how}): relist, and report only the difference`, async (t) => {
    const { api, client } = await setup(t);
    api.load('services', ['keep1', 'keep2', 'change', 'gone'].map((n) => svc(n)));
    const { r, changes } = reflect(t, client, RESOURCES.services, { pageSize: 2 });
    await waitFor('watching', () => api.watchCount('services') === 1);
    const kept = r.store.get('default/keep1');
    if (how === 'ERROR event') api.failNextWatch('event');
    if (how === 'HTTP 410') api.failNextWatch('http');
    api.dropWatches();
    api.put('services', { ...svc('change'), spec: { ports: [{ port: 81 }] } });
    api.remove('services', 'default', 'gone');
    api.put('services', svc('new'));
    if (how === 'compacted history') api.compact();
    await waitFor('relist', () => r.status().relists === 1);
    t.same(changes.at(-1), { added: ['default/new'], updated: ['default/change'], deleted: ['default/gone'], relist: true });
    t.equal(r.store.get('default/keep1'), kept, 'an unchanged object is the same object (not replaced)');
    t.same([...r.store.keys()].sort(), ['default/change', 'default/keep1', 'default/keep2', 'default/new']);
    await waitFor('watching again', () => api.watchCount('services') === 1);
    api.put('services', svc('after'));
    await waitFor('after', () => r.store.has('default/after'));
  });
}

t.test('410 on a continue token: the list starts over and the store is complete', async (t) => {
  const { api, client } = await setup(t);
  api.load('services', Array.from({ length: 30 }, (_, i) => svc(`s${String(i).padStart(2, '0')}`)));
  let pages = 0;
  api.beforeList = (q) => {
    pages++;
    // Between the first and second page of the first list, the history is compacted: its token expires.
    if (pages === 2 && q.get('continue')) {
      api.put('services', svc('s99'));
      api.compact();
    }
  };
  const { r, changes } = reflect(t, client, RESOURCES.services, { pageSize: 10 });
  await waitFor('synced', () => r.synced);
  t.equal(r.store.size, 31, [...r.store.keys()].join());
  t.equal(pages, 2 + 4, 'one page, the expired one, then four pages');
  t.equal(changes.length, 1);
  t.equal(changes[0]!.added.length, 31);
  const c = new KubeClient({ server: api.url, source: 'test' });
  t.teardown(() => c.close());
  const first = await c.list(RESOURCES.services, { limit: 10 });
  api.compact();
  t.equal((await c.list(RESOURCES.services, { limit: 10, continue: first.continue })).items.length, 10, 'a compaction with nothing newer does not expire it');
  api.put('services', svc('s98'));
  api.compact();
  const err = await c.list(RESOURCES.services, { limit: 10, continue: first.continue }).catch((e) => e);
  t.ok(err instanceof KubeApiStatusError && err.code === 410 && err.reason === 'Expired', `410 Expired: ${err.message}`);
});

t.test('API server unreachable: the store stays, status says since when; back: resumes without relist', async (t) => {
  const { api, client } = await setup(t);
  api.load('services', [svc('a'), svc('b')]);
  const { r } = reflect(t, client);
  const statuses: boolean[] = [];
  r.onStatus((s) => statuses.push(s.connected));
  await waitFor('watching', () => api.watchCount('services') === 1);
  const store = new Map(r.store);
  const t0 = Date.now();
  await api.unreachable();
  await waitFor('disconnected', () => !r.status().connected);
  const st = r.status();
  t.ok(st.since.getTime() >= t0 - 5, 'since the outage');
  t.match(st.lastError, /watch services: the connection was cut mid-stream|ECONNREFUSED/);
  await new Promise((res) => setTimeout(res, 400)); // several failed retries
  t.match(r.status().lastError, /ECONNREFUSED/, 'then: refused');
  t.notOk(r.status().connected);
  t.same(new Map(r.store), store, 'the store is as it was');
  t.equal(r.store.get('default/a'), store.get('default/a'));
  api.put('services', svc('c')); // a change while unreachable
  await api.reachable();
  await waitFor('c', () => r.store.has('default/c'));
  t.ok(r.status().connected);
  t.equal(r.status().relists, 0, 'resumed from the resourceVersion');
  t.equal(api.requests.list, 1);
  t.same(statuses, [true, false, true]);
});

t.test('watch timeout rotation: the reflector watches again at once, without relisting', async (t) => {
  const { api, client } = await setup(t);
  api.put('services', svc('a'));
  const { r } = reflect(t, client, RESOURCES.services, { watchTimeoutSeconds: 0.3 });
  await waitFor('three watches', () => api.requests.watch >= 3, 5000);
  t.equal(r.status().relists, 0);
  t.equal(api.requests.list, 1);
  api.put('services', svc('b'));
  await waitFor('b', () => r.store.has('default/b'));
});

t.test('selectors: field (spec.nodeName) and label (in, !=, exists); an object leaving the selector is deleted', async (t) => {
  const { api, client } = await setup(t);
  const pod = (name: string, node: string, labels: Record<string, string>) => ({ metadata: { name, namespace: 'default', labels }, spec: { nodeName: node } });
  api.load('pods', [pod('p1', 'n1', { app: 'a' }), pod('p2', 'n2', { app: 'a' }), pod('p3', 'n1', { app: 'b', tier: 'x' }), pod('p4', 'n1', {})]);
  const byNode = reflect(t, client, RESOURCES.pods, { fieldSelector: 'spec.nodeName=n1' });
  const byLabel = reflect(t, client, RESOURCES.pods, { labelSelector: 'app in (a,b),tier!=x' });
  await waitFor('synced', () => byNode.r.synced && byLabel.r.synced && api.watchCount('pods') === 2);
  t.same([...byNode.r.store.keys()].sort(), ['default/p1', 'default/p3', 'default/p4']);
  t.same([...byLabel.r.store.keys()].sort(), ['default/p1', 'default/p2']);
  api.put('pods', pod('p1', 'n1', { app: 'a', tier: 'x' })); // leaves the label selector
  api.put('pods', pod('p3', 'n1', { app: 'b' })); // enters it
  api.put('pods', pod('p5', 'n2', { app: 'b' })); // another node
  await waitFor('label moves', () => byLabel.r.store.has('default/p3') && !byLabel.r.store.has('default/p1') && byLabel.r.store.has('default/p5'));
  t.same(byLabel.changes.slice(1).map((c) => [c.added, c.deleted]), [[[], ['default/p1']], [['default/p3'], []], [['default/p5'], []]]);
  t.notOk(byNode.r.store.has('default/p5'));
  const err = await client.list(RESOURCES.pods, { fieldSelector: 'spec.hostname=x' }).catch((e) => e);
  t.match(err.message, /400 BadRequest: field label not supported: spec.hostname/);
});

t.test('bearer-token auth: refused without, a reflector says why, works with the token', async (t) => {
  const { api } = await setup(t, { token: 's3cret' });
  const anon = new KubeClient({ server: api.url, source: 'test' });
  const wrong = new KubeClient({ server: api.url, token: 'nope', source: 'test' });
  const right = new KubeClient({ server: api.url, token: 's3cret', source: 'test' });
  t.teardown(() => [anon, wrong, right].forEach((c) => c.close()));
  const err = await anon.list(RESOURCES.services).catch((e) => e);
  t.ok(err instanceof KubeApiStatusError && err.code === 401, err.message);
  const bad = reflect(t, wrong);
  await waitFor('error', () => /401 Unauthorized/.test(bad.r.status().lastError ?? ''));
  t.notOk(bad.r.synced);
  api.put('services', svc('a'));
  const good = reflect(t, right);
  await waitFor('synced', () => good.r.synced);
  t.ok(good.r.store.has('default/a'));
});

t.test('HTTPS: a kubeconfig with the CA and a client certificate, or the CA and a token; a wrong CA is refused', async (t) => {
  const { api } = await setup(t, { tls: true, token: 'tok' });
  const dir = mkdtempSync(join(tmpdir(), 'kube-reflector-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [name, text] of [['cert', kubeconfigFor(api, { clientCert: true })], ['token', kubeconfigFor(api)]] as const) {
    const file = join(dir, name);
    writeFileSync(file, text);
    const conn = loadKubeConfig({ kubeconfig: file });
    t.equal(name === 'cert', conn.cert !== undefined, `${name}: ${conn.source}`);
    const c = new KubeClient(conn);
    t.teardown(() => c.close());
    const list = await c.list(RESOURCES.namespaces);
    t.ok(list.items.some((n) => n.metadata.name === 'default'), `${name}: listed over TLS`);
  }
  const noCa = new KubeClient({ server: api.url, token: 'tok', source: 'test' });
  t.teardown(() => noCa.close());
  const err = await noCa.list(RESOURCES.namespaces).catch((e) => e);
  t.match(err.message, /self.signed|unable to verify|certificate/);
});

t.test('the client: get (undefined when absent), status patch, conflicts and errors name the request', async (t) => {
  const { client } = await setup(t);
  t.equal(await client.get(RESOURCES.services, 'default', 'none'), undefined);
  await client.create(RESOURCES.httproutes, { metadata: { name: 'r', namespace: 'default' }, spec: { parentRefs: [{ name: 's' }] }, status: { parents: [] } } as KubeObject);
  const created = (await client.get(RESOURCES.httproutes, 'default', 'r')) as KubeObject & { status?: unknown };
  t.equal(created.status, undefined, 'status is not taken from a create');
  const st = { parents: [{ parentRef: { name: 's' }, controllerName: 'sockmesh.io/mesh', conditions: [{ type: 'Accepted', status: 'True' }] }] };
  const patched = (await client.patchStatus(RESOURCES.httproutes, 'default', 'r', st)) as KubeObject & { status?: unknown };
  t.same(patched.status, st);
  t.equal(patched.metadata.generation, 1, 'a status change does not bump the generation');
  const stale = { ...created, metadata: { ...created.metadata, resourceVersion: created.metadata.resourceVersion } };
  const err = await client.update(RESOURCES.httproutes, stale).catch((e) => e);
  t.ok(err instanceof KubeApiStatusError && err.code === 409, err.message);
  t.match(err.message, /PUT \/apis\/gateway.networking.k8s.io\/v1\/namespaces\/default\/httproutes\/r: 409 Conflict/);
  const nf = await client.create(RESOURCES.services, svc('x', 'nowhere')).catch((e) => e);
  t.match(nf.message, /404 NotFound: namespaces "nowhere" not found/);
  const down = new KubeClient({ server: 'http://127.0.0.1:1', source: 'test' });
  t.teardown(() => down.close());
  t.match((await down.list(RESOURCES.services).catch((e) => e)).message, /GET \/api\/v1\/services: .*ECONNREFUSED/);
});

t.test('stop() ends a list the API server never answers (it does not wait for the request timeout)', async (t) => {
  const { createServer } = await import('node:net');
  const held: import('node:net').Socket[] = [];
  const silent = createServer((s) => held.push(s)); // accepts, never answers
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.teardown(() => { held.forEach((s) => s.destroy()); silent.close(); });
  const client = new KubeClient({ server: `http://127.0.0.1:${(silent.address() as import('node:net').AddressInfo).port}`, source: 'test' });
  t.teardown(() => client.close());
  const r = new Reflector(client, RESOURCES.services);
  r.start();
  await waitFor('connection', () => held.length === 1);
  const t0 = Date.now();
  await r.stop();
  t.ok(Date.now() - t0 < 1000, `stopped in ${Date.now() - t0} ms`);
  t.notOk(r.synced);
});

t.test('a change between list pages is not reported twice (the watch replays it from the first page\'s resourceVersion)', async (t) => {
  const { api, client } = await setup(t);
  api.load('services', Array.from({ length: 30 }, (_, i) => svc(`s${String(i).padStart(2, '0')}`)));
  api.beforeList = (q) => {
    if (q.get('continue') && !api.get('services', 'default', 's25')?.metadata.labels?.v) api.put('services', svc('s25', 'default', { v: '2' }));
  };
  const { r, changes } = reflect(t, client, RESOURCES.services, { pageSize: 10 });
  await waitFor('watching', () => api.watchCount('services') === 1);
  t.equal(r.store.get('default/s25')?.metadata.labels?.v, '2', 'the list has the new version');
  api.put('services', svc('sentinel'));
  await waitFor('sentinel', () => r.store.has('default/sentinel'));
  t.same(changes.map((c) => [c.added.length, c.updated, c.relist]), [[30, [], true], [1, [], false]], 'no update for s25');
});
