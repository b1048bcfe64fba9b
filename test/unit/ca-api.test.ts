// The CA's gRPC API on the control plane's server: node authentication by token, authorization by the workloads on
// the node, refusals as gRPC statuses with messages. Called by the agent's client (@grpc/grpc-js) and by an
// independent one: python3 grpcio (Debian's), with the protobuf bytes written by hand from the proto's field numbers.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import type { Model } from '../../agent/model/types.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { NodeTokens, identitiesByNode } from '../../controlplane/ca-service.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { CaCallError, CaClient } from '../../xds/ca.js';
import { pythonCa } from '../lib/capython.js';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const TOKEN_A = 'token-for-node-a-0123456789';
const TOKEN_B = 'token-for-node-b-0123456789';

// workloads with the fields issue 13 adds to the model (identity, node), read by the CA as optional fields
const model = {
  services: [],
  workloads: [
    { name: 'web', cgroups: [], identity: WEB, node: 'node-a' },
    { name: 'db', cgroups: [], identity: DB, node: 'node-b' },
  ],
} as unknown as Model;

function csr(dir: string, san: string, curve = 'prime256v1'): string {
  return execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', `ec_paramgen_curve:${curve}`, '-keyout', join(dir, 'k.pem'), '-subj', '/O=x', '-addext', `subjectAltName=${san}`],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

t.test('the CSR API: grpc-js and python3 grpcio clients, node authentication and authorization', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-caapi-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const authority = await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain: TD });
  const tokens = NodeTokens.parse(`# token node\n${TOKEN_A} node-a\n${TOKEN_B} node-b\n`, 'tokens');
  const logged: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void logged.push(JSON.parse(s) as Record<string, unknown>) });
  const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0', log, ca: { authority, tokens } });
  t.teardown(() => cp.close());
  const address = `127.0.0.1:${cp.port}`;
  const client = (token: string) => {
    const c = new CaClient({ address, token: () => token });
    t.teardown(() => c.close());
    return c;
  };
  const a = client(TOKEN_A);

  const chain = await a.createCertificate(csr(dir, `URI:${WEB}`), 3600);
  t.equal(chain.length, 3, 'leaf, intermediate, root');
  const leaf = new X509Certificate(chain[0]!);
  t.equal(leaf.subjectAltName, `URI:${WEB}`);
  t.ok(leaf.verify(new X509Certificate(chain[1]!).publicKey), 'signed by the intermediate');
  t.same(await a.trustBundle(), authority.trustBundle(), 'the trust bundle');
  t.equal(chain[2], authority.trustBundle()[0], 'the chain ends at the bundle\'s root');

  const refused = async (p: Promise<unknown>, code: string, re: RegExp, what: string) => {
    const e = await p.then(() => null, (err: unknown) => err);
    t.ok(e instanceof CaCallError, `${what}: refused`);
    t.match((e as Error).message, re, `${what}: ${(e as Error).message}`);
    t.equal((e as CaCallError).code, { UNAUTHENTICATED: 16, PERMISSION_DENIED: 7, INVALID_ARGUMENT: 3 }[code], `${what}: ${code}`);
  };
  await refused(a.createCertificate(csr(dir, `URI:${DB}`)), 'PERMISSION_DENIED', /node node-a may not have spiffe:\/\/cluster\.local\/ns\/shop\/sa\/db: no workload with that identity on node node-a/, 'a foreign identity');
  await refused(a.createCertificate(csr(dir, `URI:${WEB}`, 'secp384r1')), 'INVALID_ARGUMENT', /ECDSA P-384; workload keys must be ECDSA P-256/, 'a P-384 key');
  await refused(a.createCertificate(csr(dir, `URI:${WEB},DNS:x.example`)), 'INVALID_ARGUMENT', /expected exactly one URI/, 'an extra SAN');
  await refused(a.createCertificate('x'.repeat(20_000)), 'INVALID_ARGUMENT', /csr: 20000 bytes; at most 16384/, 'an oversized CSR');
  await refused(client('not-a-known-token-xxxxxxxx').createCertificate(csr(dir, `URI:${WEB}`)), 'UNAUTHENTICATED', /the node token is not known/, 'an unknown token');
  await refused(client('').trustBundle(), 'UNAUTHENTICATED', /no node credential: send metadata authorization: Bearer <node token>/, 'no token');
  t.ok((await client(TOKEN_B).createCertificate(csr(dir, `URI:${DB}`))).length === 3, 'node-b gets its own workload\'s identity');

  const refusals = logged.filter((l) => l.msg === 'certificate request refused');
  t.ok(refusals.some((l) => l.node === 'node-a' && l.code === 'PERMISSION_DENIED' && /no workload with that identity/.test(String(l.reason))), 'the foreign-identity refusal is logged with the node');
  t.equal(cp.ca!.stats.issued, 2);
  t.same(cp.ca!.stats.refused, { PERMISSION_DENIED: 1, INVALID_ARGUMENT: 3, UNAUTHENTICATED: 2 });

  // an independent client: python3 grpcio, protobuf encoded by hand
  const py = await pythonCa(cp.port, '/istio.v1.auth.IstioCertificateService/CreateCertificate', TOKEN_A, csr(dir, `URI:${WEB}`));
  t.equal(py.ok, true, `python grpcio: ${JSON.stringify(py).slice(0, 200)}`);
  t.equal(py.strings?.length, 3, 'python: cert_chain of three');
  const pyLeaf = new X509Certificate(py.strings![0]!);
  t.equal(pyLeaf.subjectAltName, `URI:${WEB}`);
  const life = Date.parse(pyLeaf.validTo) - Date.now();
  t.ok(life > 3500e3 && life <= 3600e3, `python: validity_duration 3600 honoured (${life} ms)`);
  const pyForeign = await pythonCa(cp.port, '/istio.v1.auth.IstioCertificateService/CreateCertificate', TOKEN_A, csr(dir, `URI:${DB}`));
  t.same([pyForeign.code, pyForeign.details], ['PERMISSION_DENIED', `node node-a may not have ${DB}: no workload with that identity on node node-a`], 'python: foreign identity refused');
  const pyBundle = await pythonCa(cp.port, '/sockmesh.ca.v1.TrustBundleService/GetTrustBundle', TOKEN_B);
  t.same(pyBundle.strings, authority.trustBundle(), 'python: the trust bundle');
  const pyAnon = await pythonCa(cp.port, '/sockmesh.ca.v1.TrustBundleService/GetTrustBundle', '');
  t.equal(pyAnon.code, 'UNAUTHENTICATED');

  // workloads move: a model update changes what a node may have, at the next request
  cp.setModel({ services: [], workloads: [{ name: 'db', cgroups: [], identity: DB, node: 'node-a' }] } as unknown as Model);
  t.equal((await a.createCertificate(csr(dir, `URI:${DB}`))).length, 3, 'after the move node-a may have db');
  await refused(a.createCertificate(csr(dir, `URI:${WEB}`)), 'PERMISSION_DENIED', /no workload with that identity on node node-a/, 'and no longer web');
});

t.test('the tokens file: bad lines named with file and line, weak tokens refused, world-readable file refused', async (t) => {
  t.throws(() => NodeTokens.parse('abc node-a\n', 'f'), /--node-tokens f:1: the token is 3 characters; at least 16/);
  t.throws(() => NodeTokens.parse(`# c\n\n${TOKEN_A}\n`, 'f'), /--node-tokens f:3: expected '<token> <node name>'/);
  t.throws(() => NodeTokens.parse(`${TOKEN_A} Node_A\n`, 'f'), /f:1: node name "Node_A" is not a Kubernetes node name/);
  t.throws(() => NodeTokens.parse(`${TOKEN_A} a\n${TOKEN_A} b\n`, 'f'), /f:2: the same token is listed twice/);
  t.throws(() => NodeTokens.parse('# nothing\n', 'f'), /--node-tokens f: no tokens in it/);
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-tokens-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'tokens');
  writeFileSync(f, `${TOKEN_A} node-a\n`);
  chmodSync(f, 0o644);
  t.throws(() => NodeTokens.fromFile(f), /readable by everyone; chmod 600 or 640 it/);
  chmodSync(f, 0o600);
  t.equal(NodeTokens.fromFile(f).nodeOf(TOKEN_A), 'node-a');
  t.equal(NodeTokens.fromFile(f).nodeOf(TOKEN_B), undefined);
  t.throws(() => NodeTokens.fromFile(join(dir, 'none')), /--node-tokens .*none: ENOENT/);
  t.same([...identitiesByNode(model).get('node-a')!], [WEB]);
  t.same(identitiesByNode({ services: [], workloads: [{ name: 'x', cgroups: [] }] }).size, 0, 'workloads without node/identity give nothing');
});
