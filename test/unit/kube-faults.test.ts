// The wiring's faults against the API-server stand-in (lab/kubeapi.ts) over real HTTP, with the real client and
// reflectors: the agent's source (--kubernetes) and the control plane (serve --kubernetes, its agents the real xDS
// client) through paginated lists, a 410 (relist applied as a diff: only what changed meanwhile is applied), dropped
// watches (resumed without a relist), bookmarks, an outage (nothing applied, "unreachable since", then recovery), and
// the HTTPRoute status written back through the status subresource.
import t, { type Test } from 'tap';
import pino from 'pino';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';
import { KubeClient, RESOURCES } from '../../kube/client.js';
import { Reflector } from '../../kube/reflector.js';
import { apiAccess } from '../../kube/access.js';
import type { KubeAccess } from '../../kube/watch.js';
import { KubeSource } from '../../agent/sources/kube.js';
import { startKubeControlPlane } from '../../controlplane/kube.js';
import { XdsSource } from '../../agent/sources/xds/source.js';
import type { Model } from '../../agent/model/types.js';
import { httpRoute, service, slice, until } from '../lib/fakekube.js';

const log = pino({ level: 'silent' });

/** The stand-in with `n` services (one slice each) and the access the wiring uses, with a short backoff. */
async function cluster(t: Test, n: number) {
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  api.load('services', Array.from({ length: n }, (_, i) => service('default', `s${i}`, `10.96.${i >> 8}.${i & 255}`, [{ port: 80, targetPort: 8080 }])) as never);
  api.load('endpointslices', Array.from({ length: n }, (_, i) => slice('default', `s${i}-1`, `s${i}`, [{ port: 8080 }], [{ address: `10.1.${i >> 8}.${i & 255}`, nodeName: 'node-a' }])) as never);
  const client = new KubeClient({ server: api.url, source: 'test' });
  const reflectors: Reflector<never>[] = [];
  const access: KubeAccess = {
    reflect: (kind, o) => {
      const r = new Reflector<never>(client, RESOURCES[kind], { fieldSelector: o.fieldSelector, backoff: { initialMs: 20, maxMs: 100 } });
      reflectors.push(r);
      return r;
    },
    patchRouteStatus: (ns, name, status) => client.patchStatus(RESOURCES.httproutes, ns, name, status),
  };
  t.teardown(async () => { client.close(); await api.close(); });
  return { api, access, reflectors };
}

const backendsOf = (m: Model | undefined, svc: string) => m?.services.find((s) => s.name === svc)?.frontends[0]?.backends.map((b) => b.address).sort() ?? [];

t.test('agent --kubernetes: paginated sync, 410 relist as a diff, dropped watches, bookmarks, outage', async (t) => {
  const { api, access, reflectors } = await cluster(t, 1200);
  const applied: { model: Model; changed?: ReadonlySet<string> }[] = [];
  const src = new KubeSource({ mode: 'direct', nodeName: 'node-a', trustDomain: 'cluster.local', access, log, apply: (model, changed) => { applied.push({ model, changed }); return null; } });
  t.teardown(() => src.stop());
  src.start();
  await until('first apply', () => applied.length === 1);
  t.equal(applied[0]!.model.services.length, 1200, 'every service, from paginated lists');
  t.ok(api.requests.list >= 6, `services and slices listed in pages of 500 (${api.requests.list} list requests)`);
  t.equal(src.status().summary.startsWith('connected since'), true);

  // dropped watches: resumed from the last resourceVersion, no relist; a change after it is applied alone
  api.dropWatches();
  await until('re-watching', () => api.watchCount() >= 5);
  api.put('endpointslices', slice('default', 's7-1', 's7', [{ port: 8080 }], [{ address: '10.9.0.7' }]) as never);
  await until('change after the drop', () => applied.length === 2);
  t.same([...applied[1]!.changed!], ['default--s7'], 'one service applied');
  t.equal(src.status().health.watches.reduce((n, w) => n + w.relists, 0), 0, 'no relist after a dropped watch');

  // bookmarks advance the reflectors' resourceVersion without a batch
  api.put('services', service('other', 'x', '10.96.200.1', [{ port: 80 }], { type: 'ExternalName', clusterIP: undefined, clusterIPs: undefined, externalName: 'x.example' }) as never);
  await until('x', () => src.report().unserved.some((u) => u.name === 'x'));
  const n = applied.length;
  api.bookmark();
  await until('bookmark seen', () => reflectors.every((r) => r.status().resourceVersion === api.resourceVersion));
  t.equal(applied.length, n, 'a bookmark applies nothing');

  // 410: the watches are cut and come back to a history that is gone (410); they relist and only the differences
  // are applied
  // The history is compacted past the change in the same tick as the put, so the slices' watch can only resume with
  // a 410 (failNextWatch(5) raced: a reflector relisting fast used up a second failure and another one resumed
  // normally and received the change as a plain event: 2 runs in 6 failed that way, and a CI run).
  api.dropWatches();
  api.put('endpointslices', slice('default', 's8-1', 's8', [{ port: 8080 }], [{ address: '10.9.0.8' }]) as never);
  api.compact('endpointslices');
  await until('relist applied', () => applied.length === n + 1);
  const last = applied.at(-1)!;
  t.same([...last.changed!], ['default--s8'], 'the relist applied the one service that changed, not 1200');
  t.ok(src.status().health.watches.some((w) => w.relists > 0), 'relisted');
  t.ok(src.status().lastTranslate?.relist, 'the batch says it came from a relist');

  // outage: nothing applied, the status says since when; back: the change made meanwhile arrives
  await api.unreachable();
  await until('unreachable', () => !src.status().health.connected);
  t.match(src.status().summary, /^unreachable since \d{4}-\d\d-\d\dT/);
  const during = applied.length;
  await new Promise((r) => setTimeout(r, 200));
  t.equal(applied.length, during, 'nothing applied while the API server is down');
  t.equal(applied.at(-1)!.model.services.length, 1200, 'the last model stays whole');
  api.put('endpointslices', slice('default', 's9-1', 's9', [{ port: 8080 }], [{ address: '10.9.0.9' }]) as never);
  await api.reachable();
  await until('recovered', () => backendsOf(applied.at(-1)?.model, 'default--s9').join() === '10.9.0.9');
  await until('every watch connected again', () => src.status().health.connected);
  t.match(src.status().summary, /^connected since/);
});

t.test('control plane serve --kubernetes: agents over xDS follow; route status Accepted in the API server; outage keeps serving', async (t) => {
  const { api } = await cluster(t, 3);
  const dir = mkdtempSync(join(tmpdir(), 'kubewire-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, kubeconfigFor(api));
  api.put('httproutes', httpRoute('default', 'r', 's0', [{ backendRefs: [{ name: 's0', port: 80, weight: 90 }, { name: 's1', port: 80, weight: 10 }] }]) as never);
  const access = apiAccess({ kubeconfig });
  const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: log as never, statusListen: { host: '127.0.0.1', port: 0 } });
  const got: Model[] = [];
  const agent = new XdsSource({ address: `127.0.0.1:${cp.port}`, mode: 'delta', log, node: { id: 'node-a', cluster: 'c', metadata: {} }, apply: (m) => { got.push(m); return null; } });
  t.teardown(async () => { await agent.stop(); await cp.close(); access.client.close(); });
  agent.start();
  await until('agent synced', () => got.some((m) => m.services.length === 3));
  t.ok(got.at(-1)!.services.find((s) => s.name === 'default--s0')?.http, 's0 is an L7 service (its HTTPRoute)');

  await until('route status', () => {
    const r = api.get('httproutes', 'default', 'r') as { status?: { parents?: { controllerName: string; conditions: { type: string; status: string }[] }[] } } | undefined;
    return !!r?.status?.parents?.some((p) => p.controllerName === 'sockmesh.io/mesh' && p.conditions.some((c) => c.type === 'Accepted' && c.status === 'True'));
  });
  await cp.kube.settled();
  const patches = api.requests.patch;
  api.put('endpointslices', slice('default', 's2-1', 's2', [{ port: 8080 }], [{ address: '10.9.0.2' }]) as never);
  await until('slice change over xDS', () => backendsOf(got.at(-1), 'default--s2').join() === '10.9.0.2');
  await cp.kube.settled();
  t.equal(api.requests.patch, patches, 'no status write when the route status did not change');

  await api.unreachable();
  await until('unreachable', () => !cp.kube.report().health.connected);
  const report = await (await fetch(`${cp.statusAddress}/v1/kubernetes`)).json() as { summary: string };
  t.match(report.summary, /^unreachable since/);
  const metrics = await (await fetch(`${cp.statusAddress}/metrics`)).text();
  t.match(metrics, /sockmesh_controlplane_kubernetes_watch_connected\{resource="services"\} 0/);
  t.match(metrics, /sockmesh_controlplane_kubernetes_unreachable_since_seconds [1-9]/);
  // a new agent connecting during the outage still gets the last state
  const late: Model[] = [];
  const agent2 = new XdsSource({ address: `127.0.0.1:${cp.port}`, mode: 'sotw', log, node: { id: 'node-b', cluster: 'c', metadata: {} }, apply: (m) => { late.push(m); return null; } });
  t.teardown(() => agent2.stop());
  agent2.start();
  await until('late agent synced', () => late.some((m) => m.services.length === 3));
  t.same(backendsOf(late.at(-1), 'default--s2'), ['10.9.0.2'], 'served from the last state while the API server is down');
  await api.reachable();
  await until('reachable', () => cp.kube.report().health.connected);
});
