// Workload certificates end to end, with the real programs: sockmesh-controlplane serving a config directory and
// the CA (--ca-dir, --node-tokens), the agent (--node-token-file, --ca-address, --node-id node-a) with its config
// file, meshctl identities/certs, the agent's metrics. A workload the agent thinks is its own but the control plane
// places on another node is refused by the CA, and both sides say so. Then the Kubernetes path: serve --kubernetes
// against the API-server stand-in, the agent's credential a projected-style service-account token (minted by the
// stand-in, bound to the agent's pod) checked by TokenReview, identities from the pods on the node.
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, freePort, kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { until } from '../lib/net.js';
import { KubeApi, kubeconfigFor } from '../../lab/kubeapi.js';

const skip = kernelSkipReason();
const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const TOKEN = 'node-a-bootstrap-token-0123456789';

const nodes = `nodes:
  - {name: node-a, addresses: [198.19.255.201]}
  - {name: node-b, addresses: [198.19.255.202]}
`;
const config = (dbNode: string) => `${nodes}services: []
workloads:
  - {name: web, cgroups: [/sockmesh-certs-web], identity: "${WEB}", node: node-a}
  - {name: db, cgroups: [/sockmesh-certs-db], identity: "${DB}", node: ${dbNode}}
`;

t.test('controlplane CA -> agent certificate manager -> meshctl', { skip: skip ?? false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-certs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'services'));
  writeFileSync(join(dir, 'services', 'mesh.yaml'), config('node-b'));
  writeFileSync(join(dir, 'tokens'), `${TOKEN} node-a\n`);
  chmodSync(join(dir, 'tokens'), 0o600);
  writeFileSync(join(dir, 'node-a.token'), `${TOKEN}\n`);
  chmodSync(join(dir, 'node-a.token'), 0o600);

  const port = await freePort();
  const cpLogs: Record<string, unknown>[] = [];
  const cp = spawn(process.execPath, [join(ROOT, 'dist', 'controlplane', 'main.js'), 'serve', '--dir', join(dir, 'services'), '--listen', `127.0.0.1:${port}`,
    '--ca-dir', join(dir, 'ca'), '--node-tokens', join(dir, 'tokens'), '--cert-ttl', '1h'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { cp.kill('SIGKILL'); });
  let cpErr = '';
  cp.stderr!.on('data', (d: Buffer) => { cpErr += d.toString(); });
  cp.stdout!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n').filter(Boolean)) { try { cpLogs.push(JSON.parse(l) as Record<string, unknown>); } catch { cpLogs.push({ msg: l }); } }
  });
  await until('the control plane', () => cp.exitCode === null ? cpLogs.some((l) => l.msg === 'control plane listening') : (() => { throw new Error(`control plane exited: ${cpErr}`); })());

  const cg = testCgroup(t, 'certs');
  const metricsPort = await freePort();
  const agent = await startAgent(t, cg, {
    config: config('node-b'),
    extraArgs: ['--node-id', 'node-a', '--node-token-file', join(dir, 'node-a.token'), '--ca-address', `127.0.0.1:${port}`, '--metrics-listen', `127.0.0.1:${metricsPort}`],
  });
  const issued = await agent.waitLog((l) => l.msg === 'certificate issued' && l.identity === WEB, 20_000);
  t.ok(issued.serial, `the agent logged the issue of ${WEB}`);
  t.ok(cpLogs.some((l) => l.msg === 'certificate issued' && l.node === 'node-a' && l.identity === WEB), 'the control plane logged it, with the node');

  const certs = meshctl(agent, ['certs']);
  t.equal(certs.code, 0, certs.stderr);
  t.match(certs.stdout, new RegExp(`${WEB}\\s+${String(issued.serial)}\\s+\\S+\\s+(59m|1h)`), 'meshctl certs: serial and about an hour left (--cert-ttl 1h)');
  t.match(certs.stdout, /trust bundle: 1 root/);
  const ids = meshctl(agent, ['identities', '--json']);
  // and the node's own identity (its tunnel server's), which every node gets
  t.same((JSON.parse(ids.stdout) as { identity: string; state: string }[]).map((i) => [i.identity, i.state]), [[WEB, 'issued'], [`spiffe://${TD}/sockmesh/node/node-a`, 'issued']],
    'db is on node-b: not requested');

  // the agent is told db is its own; the control plane still places it on node-b: refused, said on both sides
  agent.writeConfig(config('node-a'));
  await until('the refusal on the agent', () => {
    const r = JSON.parse(meshctl(agent, ['identities', '--json']).stdout) as { identity: string; state: string; lastError?: string }[];
    return r.find((i) => i.identity === DB && i.state === 'failed');
  }).then((r) => t.match(r.lastError, /PERMISSION_DENIED: node node-a may not have spiffe:\/\/cluster\.local\/ns\/shop\/sa\/db: no workload with that identity on node node-a/));
  // meshctl runs synchronously, so the control plane's log lines written meanwhile are read only once we wait
  t.ok(await until('the refusal in the control plane\'s log', () => cpLogs.find((l) => l.msg === 'certificate request refused' && l.node === 'node-a' && l.code === 'PERMISSION_DENIED'), 5_000),
    'the control plane logged the refusal');

  // and once the control plane places db on node-a too, the retry gets it
  writeFileSync(join(dir, 'services', 'mesh.yaml'), config('node-a'));
  await until('db issued after the control plane moved it', () => {
    const r = JSON.parse(meshctl(agent, ['identities', '--json']).stdout) as { identity: string; state: string }[];
    return r.find((i) => i.identity === DB && i.state === 'issued');
  }, 40_000);
  t.pass('db issued once the control plane agrees');

  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.match(metrics, /sockmesh_certificates_issued_total 3/, 'web, db and the node\'s own');
  t.match(metrics, /sockmesh_certificates_failed_total [1-9]/);
  t.match(metrics, /sockmesh_certificate_expiry_seconds\{identity="spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web"\} 3[0-9]{3}/);
});

t.test('serve --kubernetes: the agent authenticates with its pod-bound service-account token (TokenReview)', { skip: skip ?? false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-certs-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const api = await KubeApi.start({ token: 'admin-token-0123456789' });
  t.teardown(() => api.close());
  const pod = (ns: string, name: string, sa: string, node: string) => ({ metadata: { name, namespace: ns }, spec: { nodeName: node, serviceAccountName: sa, containers: [{ name: 'c' }] }, status: { phase: 'Running' } });
  api.put('pods', pod('sockmesh-system', 'agent-a', 'sockmesh-agent', 'node-a'));
  api.put('pods', pod('shop', 'web-1', 'web', 'node-a'));
  api.put('pods', pod('shop', 'db-1', 'db', 'node-b'));
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  const tokenFile = join(dir, 'token');
  const mint = () => api.tokens.mint({ namespace: 'sockmesh-system', serviceAccount: 'sockmesh-agent', pod: 'agent-a', audiences: ['sockmesh-ca'] });
  writeFileSync(tokenFile, mint(), { mode: 0o600 });

  const port = await freePort();
  const cpLogs: Record<string, unknown>[] = [];
  let cpErr = '';
  // the stand-in runs in this process: the control plane is a child that must not be waited for synchronously
  const cp = spawn(process.execPath, [join(ROOT, 'dist', 'controlplane', 'main.js'), 'serve', '--kubernetes', '--kubeconfig', join(dir, 'kubeconfig'), '--listen', `127.0.0.1:${port}`,
    '--status-listen', 'off', '--ca-dir', join(dir, 'ca'), '--cert-ttl', '1h'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { cp.kill('SIGKILL'); });
  cp.stderr!.on('data', (d: Buffer) => { cpErr += d.toString(); });
  cp.stdout!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n').filter(Boolean)) { try { cpLogs.push(JSON.parse(l) as Record<string, unknown>); } catch { cpLogs.push({ msg: l }); } }
  });
  await until('the control plane', () => cp.exitCode === null ? cpLogs.some((l) => l.msg === 'control plane listening') : (() => { throw new Error(`control plane exited: ${cpErr}`); })());

  // the agent's own config names web and db as its workloads; the pods say db runs on node-b
  const cg = testCgroup(t, 'certs-kube');
  const agent = await startAgent(t, cg, {
    config: config('node-a'),
    extraArgs: ['--node-id', 'node-a', '--node-token-file', tokenFile, '--ca-address', `127.0.0.1:${port}`],
  });
  const issued = await agent.waitLog((l) => l.msg === 'certificate issued' && l.identity === WEB, 20_000);
  t.ok(issued.serial, 'web issued to the agent');
  const cpIssued = await until('the issue in the control plane\'s log', () => cpLogs.find((l) => l.msg === 'certificate issued' && l.identity === WEB), 5_000);
  t.match(cpIssued, { node: 'node-a', via: 'service account sockmesh-system/sockmesh-agent, pod sockmesh-system/agent-a' }, 'the control plane took the node from the token\'s pod');
  await until('db refused', () => {
    const r = JSON.parse(meshctl(agent, ['identities', '--json']).stdout) as { identity: string; state: string; lastError?: string }[];
    return r.find((i) => i.identity === DB && i.state === 'failed' && /PERMISSION_DENIED: node node-a may not have .*sa\/db/.test(i.lastError ?? ''));
  });
  t.pass('db (a pod of node-b) refused to node-a\'s agent');

  // the kubelet renews the token file; db's pod is replaced by one on node-a: a retry, with the new token, gets it
  writeFileSync(tokenFile, mint(), { mode: 0o600 });
  api.remove('pods', 'shop', 'db-1');
  api.put('pods', pod('shop', 'db-2', 'db', 'node-a'));
  await until('db issued once a db pod runs on node-a', () => {
    const r = JSON.parse(meshctl(agent, ['identities', '--json']).stdout) as { identity: string; state: string }[];
    return r.find((i) => i.identity === DB && i.state === 'issued');
  }, 40_000);
  t.pass('db issued after its pod came to node-a, with the renewed token');
  t.ok(api.tokens.reviews >= 2 && api.tokens.reviews <= 4, `TokenReviews: ${api.tokens.reviews} for two tokens (the CA caches a review 30 s)`);
});
