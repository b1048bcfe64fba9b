// The API-server stand-in's own rules, over raw HTTP where the wire matters (the clients' view is in
// kubeapi-fidelity.test.ts and kube-reflector.test.ts): patches, selectors, bookkeeping, the status subresource,
// watches from "now" and with sendInitialEvents, namespace deletion, hooks.
import t from 'tap';
import { KubeApi, mergePatch, parseLabelSelector, strategicMerge } from '../../lab/kubeapi.js';

async function http(api: KubeApi, method: string, path: string, body?: unknown, type = 'application/json') {
  const r = await fetch(api.url + path, { method, headers: body === undefined ? {} : { 'Content-Type': type }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { code: r.status, body: (await r.json()) as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** The first `n` lines of a watch, then the connection is closed. */
async function watchLines(api: KubeApi, path: string, n: number, during?: () => void): Promise<any[]> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const ac = new AbortController();
  const r = await fetch(api.url + path, { signal: ac.signal });
  const reader = r.body!.getReader();
  const lines: any[] = []; // eslint-disable-line @typescript-eslint/no-explicit-any
  let buf = '';
  const timer = setTimeout(() => ac.abort(), 5000);
  let called = false;
  try {
    while (lines.length < n) {
      if (!called && during) { called = true; setTimeout(during, 50); }
      const { value, done } = await reader.read();
      if (done) break;
      buf += Buffer.from(value).toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) { lines.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1); }
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return lines;
}

t.test('merge patch and strategic merge patch (merge keys, $patch, $setElementOrder, $retainKeys)', async (t) => {
  t.same(mergePatch({ a: 1, b: { c: 2, d: 3 }, l: [1, 2] }, { b: { c: null, e: 4 }, l: [3] }), { a: 1, b: { d: 3, e: 4 }, l: [3] });
  const svc = { spec: { ports: [{ name: 'a', port: 80 }, { name: 'b', port: 81 }], selector: { app: 'x' } } };
  t.same(strategicMerge(svc, { spec: { ports: [{ port: 81, targetPort: 9 }] } }), { spec: { ports: [{ name: 'a', port: 80 }, { name: 'b', port: 81, targetPort: 9 }], selector: { app: 'x' } } }, 'ports merged by port');
  t.same(strategicMerge(svc, { spec: { ports: [{ port: 80, $patch: 'delete' }] } }), { spec: { ports: [{ name: 'b', port: 81 }], selector: { app: 'x' } } });
  t.same(strategicMerge(svc, { spec: { '$setElementOrder/ports': [{ port: 81 }, { port: 80 }], ports: [{ port: 82 }] } }), { spec: { ports: [{ name: 'b', port: 81 }, { name: 'a', port: 80 }, { port: 82 }], selector: { app: 'x' } } }, 'ordered by $setElementOrder, new ones after');
  t.same(strategicMerge(svc, { spec: { selector: { $patch: 'replace', app: 'y' } } }), { spec: { ports: svc.spec.ports, selector: { app: 'y' } } });
  t.same(strategicMerge({ spec: { a: 1, b: 2 } }, { spec: { $retainKeys: ['a'], a: 3 } }), { spec: { a: 3 } });
  t.same(strategicMerge({ c: [{ name: 'x', ports: [{ containerPort: 1 }] }] } as object, { c: [] }), { c: [] }, 'a list without merge key is replaced');
  t.same(strategicMerge({ containers: [{ name: 'x', image: 'a' }] }, { containers: [{ name: 'x', image: 'b' }] }), { containers: [{ name: 'x', image: 'b' }] });
});

t.test('label selector parsing: operators, and errors that name the selector', async (t) => {
  t.same(parseLabelSelector('a=1, b!=2,c in (x, y),d notin (z),e,!f,g==3'), [
    { key: 'a', op: 'in', values: ['1'] }, { key: 'b', op: 'notin', values: ['2'] }, { key: 'c', op: 'in', values: ['x', 'y'] },
    { key: 'd', op: 'notin', values: ['z'] }, { key: 'e', op: 'exists', values: [] }, { key: 'f', op: '!exists', values: [] }, { key: 'g', op: 'in', values: ['3'] },
  ]);
  t.throws(() => parseLabelSelector('a in (x'), /labelSelector "a in \(x": "\)" missing/);
  t.throws(() => parseLabelSelector('a=1 b'), /unexpected "b"/);
  t.throws(() => parseLabelSelector('=x'), /a label key expected at position 0/);
});

t.test('bookkeeping: uid, resourceVersion, generation, creationTimestamp; status subresource; conflicts; dryRun; generateName', async (t) => {
  const api = await KubeApi.start();
  t.teardown(() => api.close());
  const base = '/api/v1/namespaces/default/pods';
  const c = await http(api, 'POST', base, { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' }, spec: { nodeName: 'n1' }, status: { podIP: '1.2.3.4' } });
  t.equal(c.code, 201);
  t.match(c.body.metadata, { name: 'p', namespace: 'default', generation: 1, uid: /^[0-9a-f-]{36}$/, creationTimestamp: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/ });
  t.equal(c.body.status, undefined, 'status is not set by a create');
  t.equal((await http(api, 'POST', base, { metadata: { name: 'p' } })).code, 409, 'AlreadyExists');
  const st = await http(api, 'PATCH', `${base}/p/status`, { status: { podIP: '1.2.3.4' }, spec: { nodeName: 'other' } }, 'application/merge-patch+json');
  t.equal(st.body.status.podIP, '1.2.3.4');
  t.equal(st.body.spec.nodeName, 'n1', 'spec is ignored on /status');
  t.equal(st.body.metadata.generation, 1);
  const up = await http(api, 'PUT', `${base}/p`, { metadata: { name: 'p', resourceVersion: st.body.metadata.resourceVersion }, spec: { nodeName: 'n2' }, status: { podIP: '9.9.9.9' } });
  t.equal(up.code, 200);
  t.equal(up.body.status.podIP, '1.2.3.4', 'status is ignored on the main resource');
  t.equal(up.body.metadata.generation, 2);
  t.equal(up.body.metadata.uid, c.body.metadata.uid);
  t.ok(Number(up.body.metadata.resourceVersion) > Number(st.body.metadata.resourceVersion));
  const stale = await http(api, 'PUT', `${base}/p`, { metadata: { name: 'p', resourceVersion: st.body.metadata.resourceVersion }, spec: {} });
  t.equal(stale.code, 409);
  t.equal(stale.body.reason, 'Conflict');
  const noop = await http(api, 'PATCH', `${base}/p`, { metadata: { labels: null } }, 'application/merge-patch+json');
  t.equal(noop.body.metadata.resourceVersion, up.body.metadata.resourceVersion, 'a no-op patch changes nothing');
  const dry = await http(api, 'DELETE', `${base}/p?dryRun=All`);
  t.equal(dry.code, 200);
  t.ok(api.get('pods', 'default', 'p'), 'dryRun deletes nothing');
  const gen = await http(api, 'POST', base, { metadata: { generateName: 'web-' } });
  t.match(gen.body.metadata.name, /^web-[0-9a-f]{5}$/);
  t.equal((await http(api, 'POST', '/api/v1/namespaces/nowhere/pods', { metadata: { name: 'x' } })).body.message, 'namespaces "nowhere" not found');
  t.equal((await http(api, 'PUT', `${base}/q`, { metadata: { name: 'p' } })).body.message, 'the name of the object (p) does not match the name on the URL (q)');
  t.equal((await http(api, 'PATCH', `${base}/p`, [], 'application/json-patch+json')).code, 415);
  t.equal((await http(api, 'GET', '/api/v1/namespaces/default/nothings')).code, 404);
  t.equal((await http(api, 'GET', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x/status')).code, 404, 'no status subresource there');
  t.match(api.requests, { create: 4, update: 3, patch: 3, delete: 1 });
});

t.test('watches: from now (synthetic ADDED), sendInitialEvents with its bookmark, selector transitions, namespace deletion', async (t) => {
  const api = await KubeApi.start();
  t.teardown(() => api.close());
  api.load('services', [{ metadata: { name: 'a', namespace: 'x', labels: { app: 'a' } } }, { metadata: { name: 'b', namespace: 'y' } }]);
  const now = await watchLines(api, '/api/v1/services?watch=1', 2);
  t.same(now.map((e) => [e.type, e.object.metadata.name, e.object.kind, e.object.apiVersion]), [['ADDED', 'a', 'Service', 'v1'], ['ADDED', 'b', 'Service', 'v1']]);
  const initial = await watchLines(api, '/api/v1/namespaces/x/services?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan', 2);
  t.same(initial.map((e) => e.type), ['ADDED', 'BOOKMARK']);
  t.same(initial[1].object.metadata, { resourceVersion: api.resourceVersion, annotations: { 'k8s.io/initial-events-end': 'true' } });
  const rv = api.resourceVersion;
  const moves = await watchLines(api, `/api/v1/services?watch=1&resourceVersion=${rv}&labelSelector=app%3Da`, 3, () => {
    api.put('services', { metadata: { name: 'a', namespace: 'x', labels: { app: 'other' } } }); // leaves: DELETED
    api.put('services', { metadata: { name: 'b', namespace: 'y', labels: { app: 'a' } } }); // enters: ADDED
    api.remove('namespaces', undefined, 'y'); // takes b with it
  });
  t.same(moves.map((e) => [e.type, e.object.metadata.name]), [['DELETED', 'a'], ['ADDED', 'b'], ['DELETED', 'b']]);
  t.equal(api.get('services', 'y', 'b'), undefined);
  api.compact();
  const gone = await watchLines(api, `/api/v1/services?watch=1&resourceVersion=${rv}`, 1);
  t.match(gone[0], { type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired' } });
});

t.test('unreachable: connections refused, then back on the same port with the same state', async (t) => {
  const api = await KubeApi.start();
  t.teardown(() => api.close());
  const port = api.port;
  await api.unreachable();
  await t.rejects(fetch(`${api.url}/api`), 'refused while unreachable');
  api.put('services', { metadata: { name: 'a', namespace: 'default' } });
  await api.reachable();
  t.equal(api.port, port);
  t.equal((await http(api, 'GET', '/api/v1/namespaces/default/services/a')).code, 200);
});
