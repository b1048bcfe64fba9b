// The mesh settings from Kubernetes (issue 13): Nodes -> nodes[] (InternalIP), Pods -> workloads per service account
// and node (identity, spec.nodeName, pod IPs), the namespace label and the Service annotation sockmesh.io/mtls -> modes;
// the translation alone, then `serve --kubernetes` on the API-server stand-in with the real client and reflectors, an
// agent's xDS source on the other end: what it applies follows pods, nodes and labels as they change.
import t from 'tap';
import pino from 'pino';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';
import { apiAccess } from '../../kube/access.js';
import { nodeWorkloadName, translateMesh } from '../../kube/mesh.js';
import { startKubeControlPlane } from '../../controlplane/kube.js';
import { XdsSource } from '../../agent/sources/xds/source.js';
import type { Model } from '../../agent/model/types.js';
import type { KNode, KPod } from '../../kube/types.js';
import { service, until } from '../lib/fakekube.js';

const log = pino({ level: 'silent' });
const node = (name: string, addresses: [string, string][]): KNode => ({ metadata: { name }, status: { addresses: addresses.map(([type, address]) => ({ type, address })) } });
let uid = 0;
const pod = (ns: string, name: string, sa: string, nodeName: string | undefined, ips: string[], extra: { hostNetwork?: boolean; phase?: string } = {}): KPod => ({
  metadata: { namespace: ns, name, uid: `00000000-0000-4000-8000-${String(++uid).padStart(12, '0')}` },
  spec: { nodeName, serviceAccountName: sa, hostNetwork: extra.hostNetwork, containers: [{ name: 'c' }] },
  status: { phase: extra.phase ?? 'Running', podIPs: ips.map((ip) => ({ ip })), ...(ips[0] ? { podIP: ips[0] } : {}) },
});
const id = (ns: string, sa: string) => `spiffe://cluster.local/ns/${ns}/sa/${sa}`;

t.test('translateMesh: nodes, workloads per service account and node, namespace modes', async (t) => {
  const m = translateMesh({
    nodes: [node('node-b', [['InternalIP', '10.0.0.2'], ['InternalIP', 'fd00::2'], ['ExternalIP', '203.0.113.2']]), node('node-a', [['InternalIP', '10.0.0.1'], ['Hostname', 'a']]), node('node-c', [['ExternalIP', '203.0.113.3']])],
    pods: [
      pod('shop', 'web-1', 'web', 'node-a', ['10.1.0.1', 'fd01::1']), pod('shop', 'web-2', 'web', 'node-a', ['10.1.0.2']),
      pod('shop', 'web-3', 'web', 'node-b', ['10.2.0.3']), pod('shop', 'db-1', '', 'node-b', ['10.2.0.4']),
      pod('shop', 'pending', 'web', undefined, []), pod('shop', 'done', 'web', 'node-a', ['10.1.0.9'], { phase: 'Succeeded' }),
      pod('kube-system', 'proxy', 'proxy', 'node-a', ['10.0.0.1'], { hostNetwork: true }),
    ],
    namespaces: [{ metadata: { name: 'shop', labels: { 'sockmesh.io/mtls': 'strict' } } }, { metadata: { name: 'dev', labels: { 'sockmesh.io/mtls': 'STRICT' } } }, { metadata: { name: 'x' } }],
  }, { trustDomain: 'cluster.local' });
  t.same(m.nodes, [{ name: 'node-a', addresses: ['10.0.0.1'] }, { name: 'node-b', addresses: ['10.0.0.2', 'fd00::2'] }], 'InternalIPs, one per family; node-c has none');
  const byName = new Map(m.workloads.map((w) => [w.name, w]));
  t.same(byName.get(nodeWorkloadName('shop', 'web', 'node-a')), { name: nodeWorkloadName('shop', 'web', 'node-a'), cgroups: [], identity: id('shop', 'web'), node: 'node-a', addresses: ['10.1.0.1', '10.1.0.2', 'fd01::1'] });
  t.same(byName.get(nodeWorkloadName('shop', 'web', 'node-b'))?.addresses, ['10.2.0.3'], 'the same service account on another node: a workload of its own');
  t.same(byName.get(nodeWorkloadName('shop', 'default', 'node-b'))?.identity, id('shop', 'default'), 'no serviceAccountName: default');
  t.equal(m.workloads.length, 3, 'pending, finished and hostNetwork pods are left out');
  t.ok(m.workloads.every((w) => /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(w.name)), 'names are DNS labels');
  t.same(m.mtls, { mode: 'permissive', namespaces: { shop: 'strict' } });
  t.same(m.issues.map((i) => [i.object, i.path]), [['Node node-c', 'status.addresses'], ['Namespace dev', 'metadata.labels["sockmesh.io/mtls"]']]);
  t.match(m.issues[1]!.message, /must be one of strict, permissive, off, got "STRICT"/);
});

t.test('serve --kubernetes on the API-server stand-in: the agent gets nodes, workloads and modes, and follows them', async (t) => {
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  const dir = mkdtempSync(join(tmpdir(), 'kubemesh-'));
  t.teardown(async () => { rmSync(dir, { recursive: true, force: true }); await api.close(); });
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  api.put('namespaces', { metadata: { name: 'shop', labels: { 'sockmesh.io/mtls': 'strict' } } } as never);
  api.put('nodes', node('node-a', [['InternalIP', '10.0.0.1']]) as never);
  api.put('nodes', node('node-b', [['InternalIP', '10.0.0.2']]) as never);
  api.put('pods', pod('shop', 'web-1', 'web', 'node-a', ['10.1.0.1']) as never);
  api.put('pods', pod('shop', 'vault-1', 'vault', 'node-b', ['10.2.0.1']) as never);
  const svc = service('shop', 'vault', '10.96.0.10', [{ port: 80, targetPort: 9090 }]);
  svc.metadata.annotations = { 'sockmesh.io/mtls': 'permissive' };
  api.put('services', svc as never);
  const access = apiAccess({ kubeconfig: join(dir, 'kubeconfig') });
  const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: log as never, debounceMs: 1 });
  const got: Model[] = [];
  const agent = new XdsSource({ address: `127.0.0.1:${cp.port}`, mode: 'delta', log, node: { id: 'node-a', cluster: 'c', metadata: {} }, apply: (m) => { got.push(m); return null; } });
  t.teardown(async () => { await agent.stop(); await cp.close(); access.client.close(); });
  agent.start();
  const last = () => got.at(-1);
  // the mesh types come one response each: wait for the last of them
  await until('synced with the mesh', () => (last()?.workloads?.length ?? 0) === 2 && !!last()?.mtls && !!last()?.services.find((s) => s.mtls));
  t.same(last()!.nodes, [{ name: 'node-a', addresses: ['10.0.0.1'] }, { name: 'node-b', addresses: ['10.0.0.2'] }]);
  t.same(last()!.workloads!.map((w) => [w.identity, w.node, w.addresses]).sort(), [[id('shop', 'vault'), 'node-b', ['10.2.0.1']], [id('shop', 'web'), 'node-a', ['10.1.0.1']]]);
  t.same(last()!.mtls, { mode: 'permissive', namespaces: { shop: 'strict' } }, 'the namespace label');
  t.equal(last()!.services.find((s) => s.name === 'shop--vault')?.mtls, 'permissive', 'the Service annotation, over the namespace\'s');
  t.same([agent.status().lastNack, agent.status().unsupported], [null, []]);
  t.same(cp.controlPlane.identitiesOf('node-b'), new Set([id('shop', 'vault')]), 'the CA issues node-b its pods\' identities');

  // a pod scheduled on node-b, a label changed, an annotation gone bad: followed
  api.put('pods', pod('shop', 'web-2', 'web', 'node-b', ['10.2.0.2']) as never);
  await until('the new pod', () => !!last()!.workloads?.some((w) => w.node === 'node-b' && w.identity === id('shop', 'web')));
  api.put('namespaces', { metadata: { name: 'shop', labels: { 'sockmesh.io/mtls': 'off' } } } as never);
  await until('the new label', () => last()!.mtls?.namespaces['shop'] === 'off');
  svc.metadata.annotations = { 'sockmesh.io/mtls': 'tight' };
  api.put('services', svc as never);
  const vault = () => last()!.services.find((s) => s.name === 'shop--vault');
  await until('the annotation dropped', () => !!vault() && vault()!.mtls === undefined);
  t.match(cp.kube.report().issues, [{ object: 'Service shop/vault', path: 'metadata.annotations["sockmesh.io/mtls"]' }], 'a bad annotation is reported where it is');
  api.remove('nodes', undefined, 'node-b');
  await until('node-b gone', () => last()!.nodes?.length === 1);
  t.same(last()!.workloads?.map((w) => w.node), ['node-a'], 'node-b\'s workloads wait (left out by the agent) until node-b is served again');
  t.match(agent.status().unsupported, [/its node 'node-b' is not served/]);
});
