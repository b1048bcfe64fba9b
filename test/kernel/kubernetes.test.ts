// Kubernetes end to end on the node lab (test/lib/lab.ts), with the API-server stand-in (lab/kubeapi.ts) holding
// Services and EndpointSlices whose endpoints are lab pods: the real agent with --kubernetes, and the real control
// plane (serve --kubernetes) with an agent on --xds --kube-pods. A pod connects to the ClusterIP (IPv4 and IPv6) and
// reaches a backend pod; an EndpointSlice scaled down and up is followed by the kernel (meshctl services shows its
// backends, and only they answer); an HTTPRoute matches and splits by weight through the L7 proxy and its status
// comes back Accepted; while the API server is down traffic keeps flowing,
// meshctl status says since when, and an agent restarted meanwhile keeps the datapath and the L7 routes. And the
// workloads from pods: clients in cgroups where the kubelet puts pods (systemd driver), an L7 authz rule (the
// sockmesh.io/authz annotation) naming a service account's identity in the agent's --trust-domain lets that pod in
// and not another; its pod deleted in the API, it is let in no more.
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';
import { startKubeControlPlane } from '../../controlplane/kube.js';
import { apiAccess } from '../../kube/access.js';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { Lab, LabPod, testLab } from '../lib/lab.js';
import type { FrontendReport } from '../../agent/admin/protocol.js';
import { httpRoute, service, slice, until } from '../lib/fakekube.js';
import pino from 'pino';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);
const v6 = !skip && Lab.v6PodToPod;

const TCP_PORT = 8080, HTTP_PORT = 8081;

// A pod's servers (dual-stack on ::): TCP answers "<pod>" and closes; HTTP answers "<pod> <path>".
const SERVER = `
import http.server, socket, sys, threading
name, tport, hport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = socket.socket(socket.AF_INET6); t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('::', tport)); t.listen(128)
def tcp():
    while True:
        c, a = t.accept(); c.sendall(name.encode() + b'\\n'); c.close()
threading.Thread(target=tcp, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        b = f'{name} {self.path}\\n'.encode()
        self.send_response(200); self.send_header('content-length', str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); super().server_bind()
s = S(('::', hport), H)
print('ready', flush=True)
s.serve_forever()
`;

// n TCP connections (or HTTP GETs of path) to host:port; one line each: who answered, or "error:<why>".
const CLIENT = `
import socket, sys, urllib.request
proto, host, port, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
h = f'[{host}]' if ':' in host else host
for i in range(n):
    try:
        if proto == 'tcp':
            s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET); s.settimeout(3); s.connect((host, port))
            print(s.recv(200).decode().strip()); s.close()
        else:
            print(urllib.request.urlopen(f'http://{h}:{port}{path}', timeout=5).read().decode().split(' ')[0])
    except Exception as e:
        print('error:' + (getattr(e, 'strerror', None) or str(e)))
`;

async function ask(pod: LabPod, proto: 'tcp' | 'http', host: string, port: number, n = 12, path = '/'): Promise<string[]> {
  const r = await pod.exec('python3', ['-c', CLIENT, proto, host, String(port), String(n), path], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`client in ${pod.name} exited ${r.code}: ${r.stderr.trim()}`);
  return [...new Set(r.stdout.trim().split('\n'))].sort();
}

async function startServer(pod: LabPod): Promise<void> {
  const p = pod.spawn('python3', ['-c', SERVER, pod.name, String(TCP_PORT), String(HTTP_PORT)]);
  let err = '';
  p.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  await new Promise<void>((resolve, reject) => {
    p.stdout!.once('data', () => resolve());
    p.once('exit', (code) => reject(new Error(`server in ${pod.name} exited ${code}: ${err.trim()}`)));
  });
}

/**
 * The cluster: web (TCP, dual-stack ClusterIP) on s1 + s2; front (HTTP) with an HTTPRoute: /one -> one (s1), /half ->
 * one and two at weights 1:1, /none -> one at weight 0 and two, the rest -> two (s2).
 */
function load(api: KubeApi, pods: { s1: LabPod; s2: LabPod }): void {
  const ep = (p: LabPod, fam: 'v4' | 'v6') => ({ address: p[fam]!, nodeName: 'node-a' });
  const dual = v6 ? { clusterIPs: [Lab.vip4(1), Lab.vip6(1)], ipFamilies: ['IPv4', 'IPv6'] } : {};
  api.load('services', [
    service('default', 'web', Lab.vip4(1), [{ port: 80, targetPort: TCP_PORT }], dual),
    service('default', 'front', Lab.vip4(2), [{ port: 80, targetPort: HTTP_PORT, name: 'http' }]),
    service('default', 'one', Lab.vip4(3), [{ port: 80, targetPort: HTTP_PORT, name: 'http' }]),
    service('default', 'two', Lab.vip4(4), [{ port: 80, targetPort: HTTP_PORT, name: 'http' }]),
  ] as never);
  api.load('endpointslices', [
    slice('default', 'web-v4', 'web', [{ port: TCP_PORT }], [ep(pods.s1, 'v4'), ep(pods.s2, 'v4')]),
    ...(v6 ? [slice('default', 'web-v6', 'web', [{ port: TCP_PORT }], [ep(pods.s1, 'v6'), ep(pods.s2, 'v6')], 'IPv6')] : []),
    // front's own endpoints are none: its HTTPRoute sends everything to one and two (the translation refuses an L7
    // service whose own endpoints repeat a backend group's address: reported to kubemodel)
    slice('default', 'front-1', 'front', [{ port: HTTP_PORT, name: 'http' }], []),
    slice('default', 'one-1', 'one', [{ port: HTTP_PORT, name: 'http' }], [ep(pods.s1, 'v4')]),
    slice('default', 'two-1', 'two', [{ port: HTTP_PORT, name: 'http' }], [ep(pods.s2, 'v4')]),
  ] as never);
  api.load('httproutes', [httpRoute('default', 'split', 'front', [
    { matches: [{ path: { type: 'PathPrefix', value: '/one' } }], backendRefs: [{ name: 'one', port: 80 }] },
    { matches: [{ path: { type: 'Exact', value: '/half' } }], backendRefs: [{ name: 'one', port: 80, weight: 1 }, { name: 'two', port: 80, weight: 1 }] },
    { matches: [{ path: { type: 'Exact', value: '/none' } }], backendRefs: [{ name: 'one', port: 80, weight: 0 }, { name: 'two', port: 80, weight: 1 }] },
    { backendRefs: [{ name: 'two', port: 80 }] },
  ])] as never);
  api.load('pods', ['client', 's1', 's2'].map((name) => {
    const p = name === 'client' ? undefined : pods[name as 's1' | 's2'];
    return { metadata: { namespace: 'default', name, uid: `uid-${name}` }, spec: { nodeName: 'node-a', serviceAccountName: 'default' },
      status: { phase: 'Running', podIPs: p ? [{ ip: p.v4 }, ...(p.v6 ? [{ ip: p.v6 }] : [])] : [] } };
  }) as never);
}

const accepted = (api: KubeApi) => {
  const r = api.get('httproutes', 'default', 'split') as { status?: { parents?: { controllerName: string; conditions: { type: string; status: string }[] }[] } } | undefined;
  return !!r?.status?.parents?.some((p) => p.controllerName === 'sockmesh.io/mesh' && p.conditions.some((c) => c.type === 'Accepted' && c.status === 'True'));
};

/** The kernel's active backends of vip:80 as meshctl services (--json) reports them from the maps. */
function kernelBackends(agent: Parameters<typeof meshctl>[0], vip: string): string[] {
  const r = meshctl(agent, ['--json', 'services']);
  if (r.code !== 0) throw new Error(`meshctl services exited ${r.code}: ${r.stderr.trim()}`);
  const fe = (JSON.parse(r.stdout) as FrontendReport[]).find((f) => f.vip === vip && f.port === 80);
  return (fe?.backends ?? []).filter((b) => b.state === 'active' && b.weight > 0).map((b) => b.address).sort();
}

async function setup(t: Tap, prefix: string) {
  const cg = testCgroup(t, prefix);
  const lab = await testLab(t, { meshedCgroup: cg.path, prefix, pods: [{ name: 'client' }, { name: 's1' }, { name: 's2' }] });
  const [client, s1, s2] = ['client', 's1', 's2'].map((n) => lab.pod(n)) as [LabPod, LabPod, LabPod];
  for (const s of [s1, s2]) await startServer(s);
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  t.teardown(() => api.close());
  load(api, { s1, s2 });
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, kubeconfigFor(api));
  return { cg, lab, client, s1, s2, api, kubeconfig };
}
type Tap = Test;

t.test('agent --kubernetes: ClusterIP to pods, slices followed, HTTPRoute through the proxy, outage and restart', { skip: skip ?? false }, async (t) => {
  const { cg, client, s1, s2, api, kubeconfig } = await setup(t, 'kubedirect');
  const agent = await startAgent(t, cg, { source: ['--kubernetes', '--kubeconfig', kubeconfig, '--node-id', 'node-a'] });
  t.teardown(() => { if (!t.passing()) for (const l of agent.logs.slice(-12)) t.comment(JSON.stringify(l).slice(0, 600)); });
  await agent.waitLog((l) => l.msg === 'config applied' && l.why === 'kubernetes');

  t.same(await ask(client, 'tcp', Lab.vip4(1), 80), ['s1', 's2'], 'the IPv4 ClusterIP reaches both backend pods');
  if (v6) t.same(await ask(client, 'tcp', Lab.vip6(1), 80), ['s1', 's2'], 'the IPv6 ClusterIP too (dual-stack)');
  else t.comment('no IPv6 between pods on this kernel: the IPv6 ClusterIP is not tried');

  // scale the slice down to s1 and back: the kernel follows
  api.put('endpointslices', slice('default', 'web-v4', 'web', [{ port: TCP_PORT }], [{ address: s1.v4!, nodeName: 'node-a' }]) as never);
  let got: string[] = [];
  for (let i = 0; i < 50 && (got = await ask(client, 'tcp', Lab.vip4(1), 80, 8)).join() !== 's1'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(got, ['s1'], 'scaled down to s1: only s1 answers');
  t.same(kernelBackends(agent, Lab.vip4(1)), [s1.v4], 'meshctl services: the kernel holds s1 alone for the VIP');
  api.put('endpointslices', slice('default', 'web-v4', 'web', [{ port: TCP_PORT }], [{ address: s1.v4!, nodeName: 'node-a' }, { address: s2.v4!, nodeName: 'node-a' }]) as never);
  for (let i = 0; i < 50 && (got = await ask(client, 'tcp', Lab.vip4(1), 80, 16)).join() !== 's1,s2'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(got, ['s1', 's2'], 'scaled up again: both answer');
  t.same(kernelBackends(agent, Lab.vip4(1)), [s1.v4!, s2.v4!].sort(), 'meshctl services: both in the kernel again');

  // the HTTPRoute: /one -> one (s1), the rest -> two (s2), through the L7 proxy; its status Accepted
  t.same(await ask(client, 'http', Lab.vip4(2), 80, 6, '/one/x'), ['s1'], 'PathPrefix /one goes to service one');
  t.same(await ask(client, 'http', Lab.vip4(2), 80, 6, '/other'), ['s2'], 'the rest to service two');
  // 1:1 over 24 requests: one backend alone would be 2 in 2^24
  t.same(await ask(client, 'http', Lab.vip4(2), 80, 24, '/half'), ['s1', 's2'], 'weights 1:1 split between one and two');
  t.same(await ask(client, 'http', Lab.vip4(2), 80, 12, '/none'), ['s2'], 'a backendRef of weight 0 gets nothing');
  await until('route status Accepted', () => accepted(api), 10_000);
  t.pass('the HTTPRoute\'s status says Accepted (controller sockmesh.io/mesh)');

  // API server down: traffic flows, meshctl says since when
  await api.unreachable();
  await agent.waitLog((l) => typeof l.msg === 'string' && l.msg.includes('unreachable'), 15_000);
  t.same(await ask(client, 'tcp', Lab.vip4(1), 80, 16), ['s1', 's2'], 'traffic keeps flowing while the API server is down');
  const st = meshctl(agent, ['status']);
  t.match(st.stdout, /kubernetes: unreachable since \d{4}-\d\d-\d\dT/, 'meshctl status: kubernetes: unreachable since <time>');
  const services = meshctl(agent, ['services']);
  t.match(services.stdout, /default--web/, 'meshctl services lists the served service');

  // restart while the API server is down: the pins keep the datapath, the last applied model the L7 routes
  await agent.kill('SIGTERM');
  // 24 connections: with 8, random balancing sends them all to one of two backends 2 times in 2^8 (a CI run did)
  t.same(await ask(client, 'tcp', Lab.vip4(1), 80, 24), ['s1', 's2'], 'the datapath works with the agent down');
  await agent.restart();
  t.same(await ask(client, 'tcp', Lab.vip4(1), 80, 16), ['s1', 's2'], 'and after the restart, the API server still down');
  let l7: string[] = [];
  for (let i = 0; i < 40 && (l7 = await ask(client, 'http', Lab.vip4(2), 80, 4, '/one')).join() !== 's1'; i++) await new Promise((r) => setTimeout(r, 100));
  t.same(l7, ['s1'], 'the HTTPRoute is served from the last applied model after the restart');
  t.match(meshctl(agent, ['status']).stdout, /kept from before the restart/, 'meshctl status: the model is the one kept from before the restart');

  // back: the agent syncs, and a change made meanwhile arrives with only the differences applied
  api.put('endpointslices', slice('default', 'web-v4', 'web', [{ port: TCP_PORT }], [{ address: s2.v4!, nodeName: 'node-a' }]) as never);
  await api.reachable();
  for (let i = 0; i < 100 && (got = await ask(client, 'tcp', Lab.vip4(1), 80, 8)).join() !== 's2'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(got, ['s2'], 'after the outage the kernel follows the API server again');
});

t.test('serve --kubernetes + agent --xds --kube-pods: ClusterIP to pods, slices followed, route status', { skip: skip ?? false }, async (t) => {
  const { cg, client, s1, s2, api, kubeconfig } = await setup(t, 'kubecp');
  const access = apiAccess({ kubeconfig });
  const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: pino({ level: 'silent' }) as never });
  t.teardown(async () => { await cp.close(); access.client.close(); });
  const agent = await startAgent(t, cg, { xds: `127.0.0.1:${cp.port}`, extraArgs: ['--kube-pods', '--kubeconfig', kubeconfig, '--node-id', 'node-a'] });
  t.teardown(() => { if (!t.passing()) for (const l of agent.logs.slice(-12)) t.comment(JSON.stringify(l).slice(0, 600)); });
  await agent.waitLog((l) => l.msg === 'config applied' && l.why === 'xds');
  t.same(await ask(client, 'tcp', Lab.vip4(1), 80), ['s1', 's2'], 'the ClusterIP reaches both pods through the control plane');
  api.put('endpointslices', slice('default', 'web-v4', 'web', [{ port: TCP_PORT }], [{ address: s2.v4!, nodeName: 'node-a' }]) as never);
  let got: string[] = [];
  for (let i = 0; i < 50 && (got = await ask(client, 'tcp', Lab.vip4(1), 80, 8)).join() !== 's2'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(got, ['s2'], 'a slice change reaches the kernel through xDS');
  t.same(await ask(client, 'http', Lab.vip4(2), 80, 6, '/one'), ['s1'], 'the HTTPRoute through the proxy');
  await until('route status Accepted', () => accepted(api), 10_000);
  t.pass('route status Accepted, written by the control plane');
  const st = meshctl(agent, ['status']);
  t.match(st.stdout, /kubernetes: connected since/, 'the agent watches its pods');
});

/**
 * An authz rule naming a service account lets its pod in and not another: with the agent on --kubernetes (`direct`),
 * or with the control plane's serve --kubernetes and the agent on --xds --kube-pods (`controlplane`: the rule comes
 * over xDS as an RBAC principal, the workloads from the agent's own pod watch).
 */
async function authzCase(t: Tap, mode: 'direct' | 'controlplane'): Promise<void> {
  const prefix = mode === 'direct' ? 'kubeauthz' : 'kubeauthzcp';
  const cg = testCgroup(t, prefix);
  const lab = await testLab(t, { meshedCgroup: cg.path, prefix, pods: [{ name: 'cart' }, { name: 'front' }, { name: 's1' }] });
  const s1 = lab.pod('s1');
  await startServer(s1);
  // The client pods' processes run where the kubelet (systemd driver, BestEffort) puts a pod: the agent finds them
  // there from the pods' UIDs alone. Written out here, not computed by kube/pods.ts, which is what is under test.
  const uid = { cart: '6f1c2d3e-4b5a-4789-9abc-0123456789ab', front: '7a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d' };
  const asKubelet = (name: 'cart' | 'front'): LabPod => {
    const dir = join(cg.path, 'kubepods.slice', 'kubepods-besteffort.slice', `kubepods-besteffort-pod${uid[name].replace(/-/g, '_')}.slice`);
    mkdirSync(dir, { recursive: true });
    return new LabPod({ ...lab.pod(name), cgroup: dir });
  };
  const cart = asKubelet('cart');
  const front = asKubelet('front');
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  t.teardown(() => api.close());
  const web = service('default', 'shop', Lab.vip4(5), [{ port: 80, targetPort: HTTP_PORT, name: 'http' }]);
  web.metadata.annotations = {
    'sockmesh.io/http': 'true',
    'sockmesh.io/authz': '{default: deny, rules: [{name: cart-only, action: allow, from: [spiffe://example.org/ns/default/sa/cart]}]}',
  };
  api.load('services', [web] as never);
  api.load('endpointslices', [slice('default', 'shop-1', 'shop', [{ port: HTTP_PORT, name: 'http' }], [{ address: s1.v4!, nodeName: 'node-a' }])] as never);
  const pod = (name: 'cart' | 'front', p: LabPod) => ({
    metadata: { namespace: 'default', name, uid: uid[name] },
    spec: { nodeName: 'node-a', serviceAccountName: name, containers: [{ name: 'app' }] },
    status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: p.v4 }] },
  });
  api.load('pods', [pod('cart', cart), pod('front', front)] as never);
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, kubeconfigFor(api));
  const pods = ['--kubeconfig', kubeconfig, '--node-id', 'node-a', '--trust-domain', 'example.org', '--kube-cgroup-driver', 'systemd'];
  let agent: Awaited<ReturnType<typeof startAgent>>;
  if (mode === 'direct') {
    agent = await startAgent(t, cg, { source: ['--kubernetes', ...pods] });
  } else {
    const access = apiAccess({ kubeconfig });
    const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: pino({ level: 'silent' }) as never });
    t.teardown(async () => { await cp.close(); access.client.close(); });
    agent = await startAgent(t, cg, { xds: `127.0.0.1:${cp.port}`, extraArgs: ['--kube-pods', ...pods] });
  }
  t.teardown(() => { if (!t.passing()) for (const l of agent.logs.slice(-12)) t.comment(JSON.stringify(l).slice(0, 600)); });
  await agent.waitLog((l) => l.msg === 'config applied' && (l.why === 'kubernetes' || l.why === 'xds'));
  // with --kube-pods the pods' workloads join the control plane's model when the pod list is in (at most a moment later)
  let first: string[] = [];
  for (let i = 0; i < 50 && (first = await ask(cart, 'http', Lab.vip4(5), 80, 1, '/x')).join() !== 's1'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(await ask(cart, 'http', Lab.vip4(5), 80, 4, '/x'), ['s1'], `the pod of service account cart is let in (first answer: ${first.join()})`);
  t.same(await ask(front, 'http', Lab.vip4(5), 80, 4, '/x'), ['error:HTTP Error 403: Forbidden'], 'the pod of service account front is not');
  // the cart pod deleted in the API: its workload goes, the identity names nobody, its (still running) process is out
  api.remove('pods', 'default', 'cart');
  let got: string[] = [];
  for (let i = 0; i < 50 && (got = await ask(cart, 'http', Lab.vip4(5), 80, 2, '/x')).join() !== 'error:HTTP Error 403: Forbidden'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(got, ['error:HTTP Error 403: Forbidden'], 'its pod deleted, the cart process is denied too');
}

t.test('workloads from pods: an authz rule naming a service account lets its pod in, not another (--trust-domain, kubelet cgroups)', { skip: skip ?? false }, async (t) => {
  await authzCase(t, 'direct');
});

t.test('the same with serve --kubernetes + agent --xds --kube-pods: the rule over xDS, the workloads from the agent\'s pods', { skip: skip ?? false }, async (t) => {
  await authzCase(t, 'controlplane');
});

t.test('L4 from an Istio AuthorizationPolicy: serve --kubernetes + agent --xds --kube-pods, connect() denied in the kernel (EACCES), then allowed when the policy changes', { skip: skip ?? false }, async (t) => {
  const prefix = 'kubeap';
  const cg = testCgroup(t, prefix);
  const lab = await testLab(t, { meshedCgroup: cg.path, prefix, pods: [{ name: 'cart' }, { name: 'front' }, { name: 's1' }] });
  const s1 = lab.pod('s1');
  await startServer(s1);
  const uid = { cart: '5e1c2d3e-4b5a-4789-9abc-0123456789ab', front: '6a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d' };
  const asKubelet = (name: 'cart' | 'front'): LabPod => {
    const dir = join(cg.path, 'kubepods.slice', 'kubepods-besteffort.slice', `kubepods-besteffort-pod${uid[name].replace(/-/g, '_')}.slice`);
    mkdirSync(dir, { recursive: true });
    return new LabPod({ ...lab.pod(name), cgroup: dir });
  };
  const cart = asKubelet('cart');
  const front = asKubelet('front');
  const api = await KubeApi.start({ bookmarkIntervalMs: 100_000 });
  t.teardown(() => api.close());
  api.load('services', [service('default', 'vault', Lab.vip4(6), [{ port: 80, targetPort: TCP_PORT }])] as never);
  api.load('endpointslices', [slice('default', 'vault-1', 'vault', [{ port: TCP_PORT }], [{ address: s1.v4!, nodeName: 'node-a' }])] as never);
  const pod = (name: 'cart' | 'front', p: LabPod) => ({
    metadata: { namespace: 'default', name, uid: uid[name] },
    spec: { nodeName: 'node-a', serviceAccountName: name, containers: [{ name: 'app' }] },
    status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: p.v4 }] },
  });
  api.load('pods', [pod('cart', cart), pod('front', front), {
    metadata: { namespace: 'default', name: 'vault-0', uid: 'uid-vault-0', labels: { app: 'vault' } },
    spec: { nodeName: 'node-a', serviceAccountName: 'vault', containers: [{ name: 'app' }] }, status: { phase: 'Running', podIPs: [{ ip: s1.v4 }] },
  }] as never);
  // only cart, to the pod's port: the selector names the vault pod, the translation its service
  const policy = (principal: string) => ({
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { namespace: 'default', name: 'vault-from-cart' },
    spec: { selector: { matchLabels: { app: 'vault' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: [principal] } }], to: [{ operation: { ports: [String(TCP_PORT)] } }] }] },
  });
  api.put('authorizationpolicies', policy('example.org/ns/default/sa/cart') as never);
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, kubeconfigFor(api));
  const access = apiAccess({ kubeconfig });
  const cp = await startKubeControlPlane({ access, server: access.server, listen: '127.0.0.1:0', log: pino({ level: 'silent' }) as never, trustDomain: 'example.org' });
  t.teardown(async () => { await cp.close(); access.client.close(); });
  const agent = await startAgent(t, cg, {
    xds: `127.0.0.1:${cp.port}`,
    extraArgs: ['--kube-pods', '--kubeconfig', kubeconfig, '--node-id', 'node-a', '--trust-domain', 'example.org', '--kube-cgroup-driver', 'systemd'],
  });
  t.teardown(() => { if (!t.passing()) for (const l of agent.logs.slice(-12)) t.comment(JSON.stringify(l).slice(0, 600)); });
  await agent.waitLog((l) => l.msg === 'config applied' && l.why === 'xds');
  let first: string[] = [];
  for (let i = 0; i < 50 && (first = await ask(cart, 'tcp', Lab.vip4(6), 80, 1)).join() !== 's1'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(await ask(cart, 'tcp', Lab.vip4(6), 80, 4), ['s1'], `cart's pod is let in (first answer: ${first.join()})`);
  t.same(await ask(front, 'tcp', Lab.vip4(6), 80, 4), ['error:Permission denied'], 'front\'s connect() fails at once with EACCES: the kernel\'s verdict from the Kubernetes object');
  const authz = meshctl(agent, ['authz']);
  // the one policy (#1, the cluster's rule) allowed cart's connects, the default of an ALLOW-governed service denied front's
  t.match(authz.stdout, /#0 \(default\)\s+0\s+[1-9]\d*/, `meshctl authz: front's denials by the default (${authz.stdout.trim().split('\n').slice(1, 4).join(' | ')})`);
  t.match(authz.stdout, /#1\s+[1-9]\d*\s+0\b/, 'and cart\'s connects allowed by the cluster\'s rule (#1)');
  // the policy changed in the API server: front now, not cart
  api.put('authorizationpolicies', policy('example.org/ns/default/sa/front') as never);
  let got: string[] = [];
  for (let i = 0; i < 100 && (got = await ask(front, 'tcp', Lab.vip4(6), 80, 1)).join() !== 's1'; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(got, ['s1'], 'front is let in once the changed policy is served');
  t.same(await ask(cart, 'tcp', Lab.vip4(6), 80, 2), ['error:Permission denied'], 'and cart is not');
});
