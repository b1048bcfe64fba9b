// HBONE end to end with the real programs (issue 13): sockmesh-controlplane (its CA: --ca-dir, --node-tokens) in node
// n1's network namespace, and one real agent per node started as an operator starts it (--node-id, --node-token-file,
// --ca-address, a config whose nodes[] names both nodes): each obtains its node certificate
// (spiffe://cluster.local/sockmesh/node/<node>) and its workloads' from the CA, and n2's serves HBONE on its node
// address:15008 with the config's L4 authorization. The independent client, python3-h2 over Python's ssl (OpenSSL), in
// n1's namespace as another node's agent would be, with workload certificates from the same CA, opens an HTTP/2 CONNECT
// through n2's 15008 to a pod on n2 and talks to it; without a client certificate, with another CA's, an expired one,
// or as an identity the policy denies, it is refused, and so is a CONNECT to a pod of another node. sockmesh's own
// client is test/unit/tunnel.test.ts.
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, kernelSkipReason, meshctl, testCgroup } from '../lib/kernel.js';
import { startNodeAgent, testCluster } from '../lib/cluster.js';
import { inCgroupNsenter } from '../../lab/cgroup.js';
import { TestCa } from '../lib/certs.js';
import { sleep, until } from '../lib/net.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { H2CLIENT, type H2Out } from '../lib/h2client.js';
import type { TlsMaterial } from '../../agent/identity/material.js';

const skip = kernelSkipReason()
  ?? (spawnSync('/usr/bin/python3', ['-c', 'import h2']).status === 0 ? null : 'python3-h2 is not installed (apt-get install python3-h2)');
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const TD = 'cluster.local';
const NODE1 = `spiffe://${TD}/sockmesh/node/n1`;
const NODE2 = `spiffe://${TD}/sockmesh/node/n2`;
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const INTRUDER = `spiffe://${TD}/ns/shop/sa/intruder`;
const ECHOER = `spiffe://${TD}/ns/shop/sa/echo`;
const TOKENS = { n1: 'n1-bootstrap-token-0123456789abcdef', n2: 'n2-bootstrap-token-0123456789abcdef' };

// An echo pod: on each connection, reads to the client's FIN and answers "echo:<what it read>" (half-close).
const ECHO = `import socket, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', 7070)); s.listen(64)
def serve(c):
    b = b''
    while True:
        d = c.recv(65536)
        if not d: break
        b += d
    c.sendall(b'echo:' + b); c.close()
print('ready', flush=True)
while True:
    c, a = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()`;


t.test('python3-h2 through a node\'s 15008 to a pod', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'tunnel');
  const c = await testCluster(t, cg, { prefix: 'tunneltest', nodes: [{ name: 'n1', pods: [{ name: 'a' }] }, { name: 'n2', pods: [{ name: 'b' }] }] });
  const n1 = c.node('n1'), n2 = c.node('n2');
  const b = n2.lab.pod('b');
  const echo = b.spawn('python3', ['-c', ECHO]);
  await new Promise((res, rej) => { echo.stdout!.once('data', res); echo.once('exit', rej); });

  // the control plane and its CA, in n1's namespace on n1's node address (the agents' namespaces reach it; the
  // machine's own namespace is never used), with the same config the agents read: who is on which node
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-hbone-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = `nodes:
  - {name: n1, addresses: [${n1.nodeV4}, "${n1.nodeV6}"]}
  - {name: n2, addresses: [${n2.nodeV4}, "${n2.nodeV6}"]}
services: []
workloads:
  - {name: web, cgroups: [/sockmesh-hbone-web], identity: "${WEB}", node: n1}
  - {name: intruder, cgroups: [/sockmesh-hbone-intruder], identity: "${INTRUDER}", node: n1}
  - {name: echo, cgroups: [/sockmesh-hbone-echo], identity: "${ECHOER}", node: n2}
authorization:
  - {name: no-intruder, action: DENY, from: [{principals: ["${INTRUDER.slice('spiffe://'.length)}"]}]}
`;
  mkdirSync(join(dir, 'services'));
  writeFileSync(join(dir, 'services', 'mesh.yaml'), config);
  writeFileSync(join(dir, 'tokens'), `${TOKENS.n1} n1\n${TOKENS.n2} n2\n`, { mode: 0o600 });
  for (const n of ['n1', 'n2'] as const) writeFileSync(join(dir, `${n}.token`), `${TOKENS[n]}\n`, { mode: 0o600 });
  chmodSync(join(dir, 'tokens'), 0o600);
  const caAddress = `${n1.nodeV4}:15012`;
  const cpLogs: Record<string, unknown>[] = [];
  const [cpCmd, cpArgs] = inCgroupNsenter(n1.agentCgroup, n1.netns, undefined, [process.execPath, join(ROOT, 'dist', 'controlplane', 'main.js'), 'serve',
    '--dir', join(dir, 'services'), '--listen', caAddress, '--ca-dir', join(dir, 'ca'), '--node-tokens', join(dir, 'tokens'), '--cert-ttl', '1h']);
  const cp = spawn(cpCmd, cpArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { cp.kill('SIGKILL'); });
  let cpErr = '';
  cp.stderr!.on('data', (d: Buffer) => { cpErr += d.toString(); });
  cp.stdout!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n').filter(Boolean)) { try { cpLogs.push(JSON.parse(l) as Record<string, unknown>); } catch { cpLogs.push({ msg: l }); } }
  });
  await until('the control plane', () => (cp.exitCode === null ? cpLogs.some((l) => l.msg === 'control plane listening') : (() => { throw new Error(`control plane exited: ${cpErr}`); })()));

  // the agents, with the flags an operator gives (startNodeAgent adds --node-id <node> and the node's directories)
  const agent = (n: typeof n1, name: 'n1' | 'n2') => startNodeAgent(t, n, { config, extraArgs: ['--node-token-file', join(dir, `${name}.token`), '--ca-address', caAddress] });
  const [a1, a2] = [await agent(n1, 'n1'), await agent(n2, 'n2')];
  const listening = await a2.waitLog((l) => l.msg === 'tunnel: HBONE server listening', 30_000);
  t.same(listening.listening, [`${n2.nodeV4}:15008`, `[${n2.nodeV6}]:15008`], 'n2\'s agent serves HBONE on its node addresses:15008 (nodes[])');
  t.equal(listening.identity, NODE2, 'presenting n2\'s node identity');
  await a1.waitLog((l) => l.msg === 'tunnel: HBONE server listening', 30_000);
  t.ok(cpLogs.some((l) => l.msg === 'certificate issued' && l.node === 'n2' && l.identity === NODE2), 'the control plane\'s CA issued n2 its node identity');
  const ids = (a: typeof a1) => (JSON.parse(meshctl(a, ['identities', '--json']).stdout) as { identity: string; state: string }[]).map((i) => [i.identity, i.state]);
  t.same(ids(a1).sort(), [[WEB, 'issued'], [INTRUDER, 'issued'], [NODE1, 'issued']].sort(), 'n1: its node identity and its workloads\'');
  await until('echo\'s certificate on n2', () => ids(a2).every(([, st]) => st === 'issued'));
  t.same(ids(a2).sort(), [[ECHOER, 'issued'], [NODE2, 'issued']].sort(), 'n2: its node identity and its workload\'s, nothing of n1\'s');
  const tun = meshctl(a2, ['tunnels']);
  t.equal(tun.code, 0, tun.stderr);
  t.match(tun.stdout, new RegExp(`listening on ${n2.nodeV4.replace(/\./g, '\\.')}:15008`), 'meshctl tunnels: where it listens');
  t.match(tun.stdout, /node identity spiffe:\/\/cluster\.local\/sockmesh\/node\/n2, certificate [0-9A-F]+, expires/, 'meshctl tunnels: the node certificate');
  t.match(meshctl(a2, ['certs']).stdout, /spiffe:\/\/cluster\.local\/sockmesh\/node\/n2\s+[0-9A-F]+/, 'meshctl certs lists the node certificate');

  // the python client's certificates come from the same CA (its --ca-dir, read by this process: the client is not
  // an agent, it has no token), on CSRs openssl made
  const authority = await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain: TD });
  const other = await TestCa.create('another root');
  writeFileSync(join(dir, 'root.pem'), authority.trustBundle().join(''));
  // an expired one: signed by the same CA as it was 48 h ago (valid for an hour then)
  const past = await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain: TD, now: () => Date.now() - 48 * 3600_000 });
  const issue = async (name: string, identity: string, by = authority): Promise<[string, string]> => {
    const csr = execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', join(dir, `${name}-key.pem`),
      '-subj', '/O=x', '-addext', `subjectAltName=URI:${identity}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const issued = await by.sign(csr, 3600);
    writeFileSync(join(dir, `${name}.pem`), issued.certChain.slice(0, -1).join(''));
    return [join(dir, `${name}.pem`), join(dir, `${name}-key.pem`)];
  };
  const files = (name: string, m: TlsMaterial): [string, string] => {
    writeFileSync(join(dir, `${name}.pem`), m.chain);
    writeFileSync(join(dir, `${name}-key.pem`), m.key, { mode: 0o600 });
    return [join(dir, `${name}.pem`), join(dir, `${name}-key.pem`)];
  };
  const web = await issue('web', WEB);
  const py = (cert: [string, string] | ['', ''], authority: string, host = n2.nodeV4): H2Out => {
    const [cmd, args] = n1.lab.onNode(['/usr/bin/python3', '-c', H2CLIENT, host, '15008', authority, join(dir, 'root.pem'), ...cert, 'hello over hbone']);
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
    try { return JSON.parse(r.stdout) as H2Out; } catch { throw new Error(`python client: ${r.stdout} ${r.stderr}`); }
  };

  const ok = py(web, `${b.v4}:7070`);
  t.same([ok.tls, ok.alpn, ok.status, ok.body, ok.ended], ['TLSv1.3', 'h2', 200, 'echo:hello over hbone', 'stream ended'],
    'python3-h2: CONNECT through n2:15008 reaches the pod on n2; END_STREAM reached it as a FIN and its answer came back');
  t.same(ok.server, [NODE2], 'the server presented n2\'s node identity, verified by python against the CA\'s bundle');
  const ok6 = py(web, `[${b.v6}]:7070`, n2.nodeV6);
  t.same([ok6.status, ok6.body], [200, 'echo:hello over hbone'], 'the same over IPv6, to the pod\'s IPv6 address');

  const noCert = py(['', ''], `${b.v4}:7070`);
  t.equal(noCert.status, null, `no client certificate: refused (${noCert.error ?? noCert.ended})`);
  const foreign = py(files('foreign', await other.issue(WEB)), `${b.v4}:7070`);
  t.equal(foreign.status, null, `another CA's certificate: refused (${foreign.error ?? foreign.ended})`);
  const expired = py(await issue('expired', WEB, past), `${b.v4}:7070`);
  t.equal(expired.status, null, `an expired certificate: refused (${expired.error ?? expired.ended})`);
  const denied = py(await issue('intruder', INTRUDER), `${b.v4}:7070`);
  t.same([denied.status, denied.body], [403, ''], 'an identity the policy denies: 403, nothing reaches the pod');
  const notLocal = py(web, `${n1.lab.pod('a').v4}:7070`);
  t.equal(notLocal.status, 421, 'a CONNECT to a pod of another node: 421 (no relaying)');

  const rep = JSON.parse(meshctl(a2, ['tunnels', '--json']).stdout) as { peers: { identity: string; streamsTotal: number }[]; refusals: { in: Record<string, number> } };
  // after meshctl: the lines the agent wrote meanwhile are read by then (spawnSync held this process's event loop)
  await sleep(100);
  const logs = a2.logs.map((l) => `${String(l.msg)} ${String(l.error ?? '')}`).join('\n');
  t.match(logs, /without a certificate/, 'the agent logged the missing certificate');
  t.match(logs, /CERT_HAS_EXPIRED/, 'the agent logged the expired certificate');
  t.match(logs, /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT/, 'the agent logged the unknown issuer');
  t.ok(a2.logs.some((l) => l.reason === 'denied' && l.identity === INTRUDER && l.policy === 'no-intruder'), 'the agent logged the denial with the identity and the config\'s policy');
  t.match(rep.refusals.in, { 'no-certificate': 1, 'bad-certificate': 2, denied: 1, 'not-local': 1 }, 'refusals counted by reason');

  const webStreams = rep.peers.filter((p) => p.identity === WEB).reduce((n, p) => n + p.streamsTotal, 0);
  t.equal(webStreams, 2, 'the agent knows the python client by its SPIFFE id: its two accepted streams (IPv4, IPv6)');
});
