// This node's pods -> identities, addresses and the kubelet's cgroup paths (kube/pods.ts).
import t from 'tap';
import { podCgroupPath, qosClassOf, quantity, translatePods, type PodOptions } from '../../kube/pods.js';
import { modelFromObject } from '../../agent/model/config.js';
import type { KPod } from '../../kube/types.js';

const UID = '0f3c8b1e-5d2a-4c6e-9a7b-1234567890ab';
const pod = (name: string, over: Partial<KPod> = {}, uid = UID, ns = 'shop'): KPod => ({
  metadata: { name, namespace: ns, uid },
  spec: { nodeName: 'node-a', serviceAccountName: 'cart', containers: [{ name: 'app' }] },
  status: { phase: 'Running', podIP: '10.244.1.5', podIPs: [{ ip: '10.244.1.5' }, { ip: 'fd00:10:244:1:0:0:0:5' }] },
  ...over,
});
const systemd: PodOptions = { trustDomain: 'cluster.local', driver: 'systemd' };

t.test('cgroup paths: systemd and cgroupfs, each QoS class (Guaranteed has no level)', async (t) => {
  t.equal(podCgroupPath(UID, 'Burstable', 'systemd'), '/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3c8b1e_5d2a_4c6e_9a7b_1234567890ab.slice');
  t.equal(podCgroupPath(UID, 'BestEffort', 'systemd'), '/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f3c8b1e_5d2a_4c6e_9a7b_1234567890ab.slice');
  t.equal(podCgroupPath(UID, 'Guaranteed', 'systemd'), '/kubepods.slice/kubepods-pod0f3c8b1e_5d2a_4c6e_9a7b_1234567890ab.slice');
  t.equal(podCgroupPath(UID, 'Burstable', 'cgroupfs'), `/kubepods/burstable/pod${UID}`);
  t.equal(podCgroupPath(UID, 'BestEffort', 'cgroupfs'), `/kubepods/besteffort/pod${UID}`);
  t.equal(podCgroupPath(UID, 'Guaranteed', 'cgroupfs'), `/kubepods/pod${UID}`);
  t.equal(podCgroupPath(UID, 'Guaranteed', 'cgroupfs', '/lab/'), `/lab/kubepods/pod${UID}`, 'under a --cgroup-root');
});

t.test('QoS: status.qosClass, else computed from requests and limits as the kubelet does', async (t) => {
  const withRes = (containers: NonNullable<KPod['spec']>['containers']): KPod => ({ metadata: {}, spec: { containers } });
  t.equal(qosClassOf({ metadata: {}, status: { qosClass: 'Guaranteed' } }), 'Guaranteed');
  t.equal(qosClassOf(withRes([{ name: 'a' }])), 'BestEffort');
  t.equal(qosClassOf(withRes([{ name: 'a', resources: { limits: { cpu: '1', memory: '1Gi' } } }])), 'Guaranteed', 'requests default to limits');
  t.equal(qosClassOf(withRes([{ name: 'a', resources: { requests: { cpu: '1000m', memory: '1024Mi' }, limits: { cpu: '1', memory: '1Gi' } } }])), 'Guaranteed', 'equal quantities in other units');
  t.equal(qosClassOf(withRes([{ name: 'a', resources: { requests: { cpu: '500m' }, limits: { cpu: '1', memory: '1Gi' } } }])), 'Burstable');
  t.equal(qosClassOf(withRes([{ name: 'a', resources: { limits: { cpu: '1', memory: '1Gi' } } }, { name: 'b' }])), 'Burstable', 'one container without limits');
  t.equal(quantity('100m'), 0.1);
  t.equal(quantity('2Ki'), 2048);
  t.ok(Number.isNaN(quantity('lots')));
});

t.test('identity, addresses, workloads per service account; the model accepts the workloads', async (t) => {
  const r = translatePods([
    pod('cart-1', { status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: '10.244.1.5' }, { ip: 'fd00:10:244:1:0:0:0:5' }] } }),
    pod('cart-2', { status: { phase: 'Running', qosClass: 'Guaranteed', podIP: '10.244.1.6' } }, '11111111-2222-3333-4444-555555555555'),
    pod('web-1', { spec: { containers: [] }, status: { phase: 'Running', qosClass: 'Burstable', podIPs: [{ ip: '10.244.1.7' }] } }, '21111111-2222-3333-4444-555555555555'),
    pod('done', { status: { phase: 'Succeeded', podIPs: [{ ip: '10.244.1.8' }] } }, '31111111-2222-3333-4444-555555555555'),
    pod('host', { spec: { hostNetwork: true, serviceAccountName: 'agent' }, status: { phase: 'Running', qosClass: 'Burstable', podIPs: [{ ip: '192.0.2.1' }] } }, '41111111-2222-3333-4444-555555555555', 'kube-system'),
  ], systemd);
  t.same(r.issues, []);
  t.same(r.pods.map((p) => [p.name, p.identity, p.addresses]), [
    ['kube-system/host', 'spiffe://cluster.local/ns/kube-system/sa/agent', []],
    ['shop/cart-1', 'spiffe://cluster.local/ns/shop/sa/cart', ['10.244.1.5', 'fd00:10:244:1::5']],
    ['shop/cart-2', 'spiffe://cluster.local/ns/shop/sa/cart', ['10.244.1.6']],
    ['shop/web-1', 'spiffe://cluster.local/ns/shop/sa/default', ['10.244.1.7']],
  ], 'finished pods left out; hostNetwork pods have no pod addresses; no serviceAccountName = default');
  t.same(r.workloads.map((w) => [w.name, w.cgroups.length]), [['kube-system--agent', 1], ['shop--cart', 2], ['shop--default', 1]]);
  t.equal(r.identities.get('shop--cart'), 'spiffe://cluster.local/ns/shop/sa/cart');
  t.same(r.pods[0]!.id, '41111111-2222-3333-4444-555555555555');
  const model = modelFromObject({ services: [], workloads: r.workloads }, 'pods');
  t.same(model.workloads, r.workloads, 'valid model workloads, unchanged by validation');
  t.equal(translatePods([pod('x')], { ...systemd, trustDomain: 'example.org' }).pods[0]!.identity, 'spiffe://example.org/ns/shop/sa/cart');
});

t.test('bad pods: named issues, the pod left out', async (t) => {
  const r = translatePods([pod('nouid', {}, 'not-a-uuid'), pod('badip', { status: { phase: 'Running', podIPs: [{ ip: '10.244.1.300' }, { ip: '10.244.1.9' }] } })], { trustDomain: 'cluster.local', driver: 'cgroupfs' });
  t.same(r.pods.map((p) => [p.name, p.addresses]), [['shop/badip', ['10.244.1.9']]]);
  t.match(r.issues, [
    { object: 'Pod shop/nouid', path: 'metadata.uid', message: /must be a UUID/ },
    { object: 'Pod shop/badip', path: 'status.podIPs[0].ip', message: /must be an IP address, got "10.244.1.300"/ },
  ]);
});
