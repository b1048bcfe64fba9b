// Workload certificates end to end, with the real programs: sockmesh-controlplane serving a config directory and
// the CA (--ca-dir, --node-tokens), the agent (--node-token-file, --ca-address, --node-id node-a) with its config
// file, meshctl identities/certs, the agent's metrics. A workload the agent thinks is its own but the control plane
// places on another node is refused by the CA, and both sides say so.
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, freePort, kernelSkipReason, meshctl, startAgent, testCgroup } from '../lib/kernel.js';
import { sleep, until } from '../lib/net.js';

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
