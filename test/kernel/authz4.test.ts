// L4 authorization by identity at connect() (issue 13) on the node lab: pods are workloads with SPIFFE identities
// (their cgroups), a service's policy decides in the kernel. An allowed pod connects and is answered; a denied one
// gets EACCES from connect() at once (no packet, no timeout); a pod without identity is what no principal matches;
// a process in a container cgroup below its pod's has the pod's identity; counters per policy and a flow event say
// who was denied by what; a policy change holds for the next connect(). Real agent, real programs, real namespaces.
import t from 'tap';
import { mkdirSync } from 'node:fs';
import { relative } from 'node:path';
import { MapReader } from '../../agent/datapath/inspect.js';
import { identityId } from '../../agent/datapath/authz.js';
import { cgroup2Root } from '../../agent/datapath/cgroup.js';
import { kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { Lab, LabPod, testLab } from '../lib/lab.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const PORT = 8080;
const SERVER = `
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', int(sys.argv[1]))); s.listen(128)
print('ready', flush=True)
while True:
    c, a = s.accept(); c.sendall(b'hello\\n'); c.close()
`;
// n connects (to the VIP's port 80); one JSON line each: the answer, or the error and how long connect() took to fail.
const CLIENT = `
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s = socket.socket(socket.AF_INET); s.settimeout(3); t0 = time.monotonic()
    try:
        s.connect((host, port)); print(json.dumps({'answer': s.recv(100).decode().strip()}))
    except OSError as e:
        print(json.dumps({'error': e.strerror or str(e), 'errno': e.errno, 'ms': (time.monotonic() - t0) * 1000}))
    s.close()
`;
interface Reply { answer?: string; error?: string; errno?: number; ms?: number }

async function ask(pod: LabPod, host: string, n = 3): Promise<Reply[]> {
  const r = await pod.exec('python3', ['-c', CLIENT, host, '80', String(n)], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`client in ${pod.name} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Reply);
}

const ID_WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const ID_BATCH = 'spiffe://cluster.local/ns/batch/sa/default';

t.test('L4 authorization at connect(): allowed, denied at once with EACCES, counted, changed live', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'authz4');
  const lab = await testLab(t, {
    meshedCgroup: cg.path, prefix: 'authz4',
    pods: [{ name: 'web' }, { name: 'batch' }, { name: 'anon' }, { name: 'server' }],
  });
  const [web, batch, anon, server] = ['web', 'batch', 'anon', 'server'].map((n) => lab.pod(n)) as [LabPod, LabPod, LabPod, LabPod];
  const srv = server.spawn('python3', ['-c', SERVER, String(PORT)]);
  await new Promise<void>((res, rej) => {
    srv.stdout!.once('data', () => res());
    srv.once('exit', (c) => rej(new Error(`server exited ${c}`)));
  });
  const root = cgroup2Root()!;
  const rel = (p: LabPod) => `/${relative(root, p.cgroup)}`;
  const config = (policies: string) => `
workloads:
  - {name: web, cgroups: ["${rel(web)}"], identity: "${ID_WEB}"}
  - {name: batch, cgroups: ["${rel(batch)}"], identity: "${ID_BATCH}"}
services:
  - name: api
    vips: [${Lab.vip4(1)}]
    ports: [{port: 80, targetPort: ${PORT}}]
    backends: [{address: ${server.v4}}]
  - name: open
    vips: [${Lab.vip4(2)}]
    ports: [{port: 80, targetPort: ${PORT}}]
    backends: [{address: ${server.v4}}]
authorization:
${policies}`;
  const allowShop = `  - name: api-from-shop
    action: ALLOW
    services: [api]
    from: [{namespaces: [shop]}]
    to: [{ports: [${PORT}]}]
`;
  const agent = await startAgent(t, cg, { config: config(allowShop) });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());

  const vip = Lab.vip4(1);
  const ok = await ask(web, vip);
  if (!ok[0]?.answer) t.comment(agent.logs.slice(-15).map((l) => JSON.stringify(l)).join('\n'));
  t.same(ok.map((r) => r.answer), ['hello', 'hello', 'hello'], 'the shop pod is allowed by the ALLOW policy');
  for (const [pod, who] of [[batch, 'the batch pod (another namespace)'], [anon, 'a pod without identity']] as const) {
    const no = await ask(pod, vip);
    t.same(no.map((r) => r.errno), [13, 13, 13], `${who}: connect() fails with EACCES: ${JSON.stringify(no[0])}`);
    t.ok(no.every((r) => (r.ms ?? 1e9) < 100), `${who}: at once, not after a timeout (${no.map((r) => r.ms?.toFixed(2)).join(', ')} ms)`);
  }
  t.same((await ask(batch, Lab.vip4(2), 1)).map((r) => r.answer), ['hello'], 'a service no policy names is open to everyone');

  // A container's cgroup below the pod's has the pod's identity (the kernel walks up to the workload's cgroup).
  const container = `${web.cgroup}/ctr1`;
  mkdirSync(container);
  const inCtr = new LabPod({ ...web, cgroup: container, hostNetwork: false });
  t.same((await ask(inCtr, vip, 1)).map((r) => r.answer), ['hello'], 'a container of the shop pod is allowed too');

  // What the kernel holds and counted: the identities of the two pods, per-policy counters, a flow event per denial.
  const ids = reader.identities().map((e) => e.identityId).sort();
  t.same(ids, [identityId(ID_WEB), identityId(ID_BATCH)].sort(), 'sm_identities: one entry per workload cgroup');
  const stats = reader.authzStats();
  t.same(stats.find((s) => s.policyId === 1), { policyId: 1, allowed: 4, denied: 0 }, 'policy 1 (api-from-shop) allowed 4 connects');
  t.same(stats.find((s) => s.policyId === 0), { policyId: 0, allowed: 0, denied: 6 }, 'the default (no ALLOW matched) denied 6');
  const g = reader.globals();
  t.equal(g['authz_deny'], 6);
  t.equal(g['authz_allow'], 4, 'the open service is not checked at all');

  // The flow events (sampled 1 in 1 by default): each denial names the identity and the policy (0: no ALLOW matched).
  const ev = meshctl(agent, ['events', '--json']);
  const denials = (JSON.parse(ev.stdout) as { kind: string; identityId?: number; policyId?: number }[]).filter((e) => e.kind === 'authz-deny');
  t.equal(denials.length, 6, `one authz-deny event per denial: ${ev.stderr}`);
  t.same(new Set(denials.map((e) => e.identityId)), new Set([identityId(ID_BATCH), 0]), 'the batch identity and "none"');
  t.ok(denials.every((e) => e.policyId === 0), 'denied by the default');
  // meshctl authz reads the same from the pins
  const m = JSON.parse(meshctl(agent, ['authz', '--json']).stdout) as { decisions: unknown[]; identities: { cgroup: string }[]; verdicts: { service: string; verdict: string; policy: number }[] };
  t.same(m.decisions, [{ policy: 0, allowed: 0, denied: 6 }, { policy: 1, allowed: 4, denied: 0 }]);
  t.same(m.identities.map((e) => e.cgroup).sort(), [batch.cgroup, web.cgroup].sort(), 'cgroup ids shown as the pods\' cgroup paths');
  t.same(m.verdicts, [{ service: 'api', identity: identityId(ID_WEB), port: PORT, verdict: 'allow', policy: 1 }]);

  // A policy change holds from the next connect(): now shop is denied by a DENY policy, everything else allowed.
  agent.writeConfig(config(`  - name: no-shop
    action: DENY
    services: [api]
    from: [{principals: ["cluster.local/ns/shop/*"]}]
`));
  await agent.waitLog((l) => l['msg'] === 'config applied' && l['why'] !== 'start');
  const after = await ask(web, vip, 1);
  t.same(after.map((r) => r.errno), [13], 'the shop pod is denied after the change');
  t.same((await ask(batch, vip, 1)).map((r) => r.answer), ['hello'], 'the batch pod is allowed after the change');
  t.same((await ask(anon, vip, 1)).map((r) => r.answer), ['hello'], 'so is the pod without identity (only DENY policies apply)');
  t.same(reader.authzStats().find((s) => s.policyId === 1)?.denied, 1, 'the DENY policy (now policy 1) counted its denial');

  // No policies at all: the maps are emptied and nothing is checked.
  agent.writeConfig(config('  []\n').replace('authorization:\n  []', 'authorization: []'));
  await agent.waitLog((l) => l['msg'] === 'config applied' && (l['version'] as number) >= 3);
  t.same((await ask(web, vip, 1)).map((r) => r.answer), ['hello']);
  t.same(reader.identities(), [], 'sm_identities emptied');
  t.same(reader.authzVerdicts(), [], 'sm_authz emptied');
});
