// A node agent's own identity (spiffe://<td>/sockmesh/node/<node>, what its HBONE server presents): the CA issues it
// to that node only, over the real gRPC API (grpc-js and python3 grpcio as clients); another node's is refused with
// PERMISSION_DENIED naming both nodes; the agent's certificate manager obtains and renews it like a workload's.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import type { Model } from '../../agent/model/types.js';
import { nodeSpiffeId, parseNodeSpiffeId, parseSpiffeId } from '../../agent/model/spiffe.js';
import { CertManager } from '../../agent/identity/certs.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { NodeTokens } from '../../controlplane/ca-service.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { CaCallError, CaClient } from '../../xds/ca.js';
import { pythonCa } from '../lib/capython.js';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const NODE_A = `spiffe://${TD}/sockmesh/node/node-a`;
const NODE_B = `spiffe://${TD}/sockmesh/node/node-b`;
const TOKEN_A = 'token-for-node-a-0123456789';
const TOKEN_B = 'token-for-node-b-0123456789';
const log = pino({ level: 'silent' });

function csr(dir: string, san: string): string {
  return execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', join(dir, 'k.pem'), '-subj', '/O=x', '-addext', `subjectAltName=${san}`],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

t.test('node identities: the form, and what is not one', async (t) => {
  t.equal(nodeSpiffeId(TD, 'node-a'), NODE_A);
  t.same(parseNodeSpiffeId(NODE_A), { trustDomain: TD, node: 'node-a' });
  t.equal(parseNodeSpiffeId(WEB), undefined, 'a workload identity is not a node\'s');
  t.equal(parseNodeSpiffeId(`spiffe://${TD}/sockmesh/node/Node_A`), undefined, 'not a node name');
  t.equal(parseNodeSpiffeId(`spiffe://${TD}/sockmesh/node/a/b`), undefined, 'one segment only');
  t.throws(() => parseSpiffeId(NODE_A), /expected spiffe:\/\/<trust domain>\/ns\/<namespace>\/sa\/<service account>/, 'never read as a workload identity');
  t.throws(() => nodeSpiffeId(TD, 'Node_A'), /node name "Node_A": expected a Kubernetes node name/);
  t.throws(() => nodeSpiffeId('Bad TD', 'a'), /trust domain "Bad TD"/);
});

t.test('the CA issues a node its own identity, and refuses another node\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-nodeid-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const authority = await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain: TD });
  const model = { services: [], workloads: [{ name: 'web', cgroups: [], identity: WEB, node: 'node-a' }] } as unknown as Model;
  const logged: Record<string, unknown>[] = [];
  const cplog = pino({ level: 'info' }, { write: (s: string) => void logged.push(JSON.parse(s) as Record<string, unknown>) });
  const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0', log: cplog, ca: { authority, tokens: NodeTokens.parse(`${TOKEN_A} node-a\n${TOKEN_B} node-b\n`, 'tokens') } });
  t.teardown(() => cp.close());
  const client = (token: string) => {
    const c = new CaClient({ address: `127.0.0.1:${cp.port}`, token: () => token });
    t.teardown(() => c.close());
    return c;
  };
  const a = client(TOKEN_A), b = client(TOKEN_B);

  const chain = await a.createCertificate(csr(dir, `URI:${NODE_A}`), 3600);
  const leaf = new X509Certificate(chain[0]!);
  t.equal(leaf.subjectAltName, `URI:${NODE_A}`, 'node-a gets spiffe://cluster.local/sockmesh/node/node-a');
  t.ok(leaf.verify(new X509Certificate(chain[1]!).publicKey), 'signed by the intermediate');
  // openssl, independently: the leaf verifies against the bundle's root through the intermediate
  const files = { leaf: join(dir, 'leaf.pem'), inter: join(dir, 'inter.pem'), root: join(dir, 'root.pem') };
  writeFileSync(files.leaf, chain[0]!); writeFileSync(files.inter, chain[1]!); writeFileSync(files.root, authority.trustBundle().join(''));
  t.match(execFileSync('openssl', ['verify', '-CAfile', files.root, '-untrusted', files.inter, '-purpose', 'sslserver', files.leaf], { encoding: 'utf8' }), /: OK/, 'openssl verify: OK as a TLS server certificate');
  t.equal((await b.createCertificate(csr(dir, `URI:${NODE_B}`))).length, 3, 'node-b gets its own');

  const refused = async (p: Promise<unknown>, code: number, re: RegExp, what: string) => {
    const e = await p.then(() => null, (err: unknown) => err);
    t.ok(e instanceof CaCallError, `${what}: refused`);
    t.equal((e as CaCallError).code, code, `${what}: code ${code}`);
    t.match((e as Error).message, re, `${what}: ${(e as Error).message}`);
  };
  await refused(a.createCertificate(csr(dir, `URI:${NODE_B}`)), 7,
    /node node-a may not have spiffe:\/\/cluster\.local\/sockmesh\/node\/node-b: the identity of node node-b \(its own is spiffe:\/\/cluster\.local\/sockmesh\/node\/node-a\)/, 'node-a asking for node-b\'s identity');
  await refused(b.createCertificate(csr(dir, `URI:${WEB}`)), 7, /no workload with that identity on node node-b/, 'node-b asking for node-a\'s workload');
  await refused(a.createCertificate(csr(dir, 'URI:spiffe://other.td/sockmesh/node/node-a')), 3, /not in trust domain cluster\.local/, 'its own node name in another trust domain');
  await refused(a.createCertificate(csr(dir, `URI:spiffe://${TD}/sockmesh/node/Node_A`)), 3, /or spiffe:\/\/<trust domain>\/sockmesh\/node\/<node> for a node agent/, 'a malformed node identity');
  t.ok(logged.some((l) => l.msg === 'certificate request refused' && l.node === 'node-a' && l.code === 'PERMISSION_DENIED' && /node-b/.test(String(l.reason))), 'the refusal is logged with the node');
  t.same(cp.ca!.stats.refused, { PERMISSION_DENIED: 2, INVALID_ARGUMENT: 2 });

  // an independent client: python3 grpcio, the IstioCertificateService request encoded by hand (test/lib/capython.ts)
  const call = (token: string, san: string) => pythonCa(cp.port, '/istio.v1.auth.IstioCertificateService/CreateCertificate', token, csr(dir, san));
  t.same((await call(TOKEN_B, `URI:${NODE_B}`)).ok, true, 'python grpcio: node-b gets its own identity');
  const pyForeign = await call(TOKEN_B, `URI:${NODE_A}`);
  t.same([pyForeign.code, /node node-b may not have .*node-a/.test(pyForeign.details ?? '')], ['PERMISSION_DENIED', true], 'python grpcio: node-b refused node-a\'s');
});

t.test('the certificate manager obtains the node identity and renews it like a workload\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-nodeid-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const authority = await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain: TD, certTtlS: 3 });
  const cp = await startControlPlaneFromModel({ services: [] } as unknown as Model, { listen: '127.0.0.1:0', log, ca: { authority, tokens: NodeTokens.parse(`${TOKEN_A} node-a\n`, 'tokens') } });
  t.teardown(() => cp.close());
  const ca = new CaClient({ address: `127.0.0.1:${cp.port}`, token: () => TOKEN_A });
  t.teardown(() => ca.close());
  const certs = new CertManager({ ca, log, random: () => 0, bundleRefreshMs: 60_000 });
  t.teardown(() => certs.stop());
  certs.setIdentities([NODE_A, NODE_B]);
  await certs.settled();
  const first = certs.get(NODE_A);
  t.ok(first, 'the node identity is issued with no workload on the node');
  t.equal(certs.get(NODE_B), undefined, 'another node\'s is not');
  t.match(certs.report().identities.find((i) => i.identity === NODE_B)?.lastError, /may not have .*node-b/, 'and the report says why');
  // 3 s certificates renew at half life (random 0: exactly 1.5 s)
  const end = Date.now() + 10_000;
  while (certs.get(NODE_A)?.serial === first!.serial && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  const second = certs.get(NODE_A);
  t.not(second?.serial, first!.serial, 'renewed: a new serial');
  t.ok(second!.notAfter > first!.notAfter, 'and a later expiry');
  t.equal(certs.report().identities.find((i) => i.identity === NODE_A)?.renewals, 1);
});
