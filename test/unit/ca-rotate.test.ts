// The CA's operations with the real programs: `sockmesh-controlplane serve --dir --ca-dir --status-listen` scraped
// for the CA's metrics (issued, refused by code and reason, root/intermediate expiry, generation, bundle, rotation
// step), and `sockmesh-controlplane ca rotate` run beside it: the running control plane takes the new root into the
// bundle within a second and issues under it after --propagation; openssl verifies what it issues against the bundle.
// Step 3 (the old root leaving after the longest TTL) is test/unit/ca.test.ts's, with a clock of its own.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CaClient } from '../../xds/ca.js';

const MAIN = join(import.meta.dirname, '..', '..', 'dist', 'controlplane', 'main.js');
const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const TOKEN = 'node-a-rotation-token-0123456789';

const freePort = () => new Promise<number>((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => resolve(p)); });
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** name{labels} -> value, from Prometheus text */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of text.split('\n')) {
    const m = /^(sockmesh_controlplane_ca_[a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(l);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

t.test('CA metrics on the status endpoint, and ca rotate beside a running control plane', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ca-rotate-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'cfg'));
  writeFileSync(join(dir, 'cfg', 'mesh.yaml'), `nodes:\n  - {name: node-a, addresses: [198.19.255.201]}\n  - {name: node-b, addresses: [198.19.255.202]}\nservices: []\nworkloads:\n  - {name: web, cgroups: [/x], identity: "${WEB}", node: node-a}\n  - {name: db, cgroups: [/y], identity: "${DB}", node: node-b}\n`);
  writeFileSync(join(dir, 'tokens'), `${TOKEN} node-a\n`);
  chmodSync(join(dir, 'tokens'), 0o600);
  const [port, statusPort] = [await freePort(), await freePort()];
  const caDir = join(dir, 'ca');
  const cp = spawn(process.execPath, [MAIN, 'serve', '--dir', join(dir, 'cfg'), '--listen', `127.0.0.1:${port}`, '--status-listen', `127.0.0.1:${statusPort}`,
    '--ca-dir', caDir, '--node-tokens', join(dir, 'tokens'), '--cert-ttl', '1m'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { cp.kill('SIGKILL'); });
  let out = '';
  cp.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  cp.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  for (const end = Date.now() + 15_000; !out.includes('status endpoint listening');) {
    if (Date.now() > end || cp.exitCode !== null) throw new Error(`the control plane did not start: ${out}`);
    await sleep(50);
  }
  const metrics = async () => samples(await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text());
  const client = (token = TOKEN) => new CaClient({ address: `127.0.0.1:${port}`, token: () => token });
  const csr = (san: string) => execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', join(dir, 'k.pem'), '-subj', '/O=x', '-addext', `subjectAltName=URI:${san}`],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const c = client();
  t.teardown(() => c.close());
  const rootOf = (chain: string[]) => new X509Certificate(chain[chain.length - 1]!).fingerprint256;
  const fileRoot = (gen: string) => new X509Certificate(readFileSync(join(caDir, gen, 'root-cert.pem'))).fingerprint256;

  let m = await metrics();
  t.equal(m.get('sockmesh_controlplane_ca_generation'), 1);
  t.equal(m.get('sockmesh_controlplane_ca_rotation_step'), 0);
  t.equal(m.get('sockmesh_controlplane_ca_trust_bundle_roots'), 1);
  const rootLeft = m.get('sockmesh_controlplane_ca_expiry_seconds{generation="gen-1",certificate="root"}')!;
  const interLeft = m.get('sockmesh_controlplane_ca_expiry_seconds{generation="gen-1",certificate="intermediate"}')!;
  t.ok(Math.abs(rootLeft - 10 * 365 * 86400) < 600, `root expiry ~10 years (${rootLeft} s)`);
  t.ok(Math.abs(interLeft - 2 * 365 * 86400) < 600, `intermediate expiry ~2 years (${interLeft} s)`);
  t.equal(m.get('sockmesh_controlplane_ca_certificates_issued_total'), 0);

  const first = await c.createCertificate(csr(WEB));
  t.equal(rootOf(first), fileRoot('gen-1'));
  const bad = client('not-a-known-token-0123456789');
  await t.rejects(bad.createCertificate(csr(WEB)), /UNAUTHENTICATED/);
  bad.close();
  await t.rejects(c.createCertificate(csr(DB)), /PERMISSION_DENIED/);
  m = await metrics();
  t.equal(m.get('sockmesh_controlplane_ca_certificates_issued_total'), 1);
  t.equal(m.get('sockmesh_controlplane_ca_requests_refused_total{code="UNAUTHENTICATED",reason="unknown_token"}'), 1);
  t.equal(m.get('sockmesh_controlplane_ca_requests_refused_total{code="PERMISSION_DENIED",reason="foreign_identity"}'), 1);

  // step 1: ca rotate, while the control plane serves the directory
  const rot = spawnSync(process.execPath, [MAIN, 'ca', 'rotate', '--ca-dir', caDir, '--propagation', '6s'], { encoding: 'utf8' });
  t.equal(rot.status, 0, rot.stderr);
  t.match(rot.stdout, /^gen-2: root CN=sockmesh root 2, O=cluster\.local \(SHA-256 [0-9A-F:]+\) is in the trust bundle now;\nit issues from 20\d\d-/);
  const issueFrom = Date.parse(/it issues from (\S+);/.exec(rot.stdout)![1]!);
  const again = spawnSync(process.execPath, [MAIN, 'ca', 'rotate', '--ca-dir', caDir], { encoding: 'utf8' });
  t.equal(again.status, 1);
  t.match(again.stderr, /^sockmesh-controlplane ca: --ca-dir .*: gen-2 starts issuing at 20\d\d-\S+; rotate again after that\n$/, 'no second rotation while the first propagates');
  for (const end = Date.now() + 5000; (await metrics()).get('sockmesh_controlplane_ca_trust_bundle_roots') !== 2;) {
    if (Date.now() > end) throw new Error(`the control plane did not reload the CA directory: ${out}`);
    await sleep(100);
  }
  t.ok(Date.now() < issueFrom - 1000, `the new root is in the bundle ${issueFrom - Date.now()} ms before it issues`);
  m = await metrics();
  t.equal(m.get('sockmesh_controlplane_ca_rotation_step'), 1, 'step 1: the new root propagating');
  t.equal(m.get('sockmesh_controlplane_ca_generation'), 1, 'still issuing under gen-1');
  t.ok(m.get('sockmesh_controlplane_ca_expiry_seconds{generation="gen-2",certificate="root"}')! > 0, 'gen-2 root expiry reported');
  t.same((await c.trustBundle()).map((p) => new X509Certificate(p).fingerprint256), [fileRoot('gen-1'), fileRoot('gen-2')], 'agents get both roots');
  t.equal(rootOf(await c.createCertificate(csr(WEB))), fileRoot('gen-1'), 'issued under the old root during propagation');

  // step 2: after --propagation, issuing under gen-2; the old root stays trusted
  await sleep(Math.max(0, issueFrom + 200 - Date.now()));
  const second = await c.createCertificate(csr(WEB));
  t.equal(rootOf(second), fileRoot('gen-2'), 'issued under the new root after --propagation');
  m = await metrics();
  t.equal(m.get('sockmesh_controlplane_ca_generation'), 2);
  t.equal(m.get('sockmesh_controlplane_ca_rotation_step'), 2, 'step 2: the old root retiring');
  t.equal(m.get('sockmesh_controlplane_ca_trust_bundle_roots'), 2);
  const bundle = join(dir, 'bundle.pem');
  writeFileSync(bundle, (await c.trustBundle()).join(''));
  for (const [what, chain] of [['old', first], ['new', second]] as const) {
    writeFileSync(join(dir, 'leaf.pem'), chain[0]!);
    writeFileSync(join(dir, 'inter.pem'), chain[1]!);
    const v = spawnSync('openssl', ['verify', '-CAfile', bundle, '-untrusted', join(dir, 'inter.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' });
    t.equal(v.status, 0, `openssl verifies the ${what} root's certificate against the bundle: ${v.stdout}${v.stderr}`);
  }
  const st = JSON.parse(spawnSync(process.execPath, [MAIN, 'ca', 'status', '--ca-dir', caDir, '--cert-ttl', '1m', '--json'], { encoding: 'utf8' }).stdout) as { active: string; rotationStep: number; generations: { generation: string; state: string }[] };
  t.same([st.active, st.rotationStep, st.generations.map((g) => `${g.generation} ${g.state}`)], ['gen-2', 2, ['gen-1 retiring', 'gen-2 issuing']], 'ca status says the same');
  t.match(out, /"msg":"CA generations reloaded"/);
});

t.test('ca rotate and ca status: bad input, named', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ca-rotate-bad-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = (...args: string[]) => spawnSync(process.execPath, [MAIN, 'ca', ...args], { encoding: 'utf8' });
  let r = ca('rotate', '--ca-dir', join(dir, 'none'));
  t.equal(r.status, 1);
  t.match(r.stderr, /sockmesh-controlplane ca: --ca-dir .*none: no CA there \(no generations\.json\)/, 'no CA: nothing is generated');
  r = ca('rotate', '--ca-dir', dir, '--propagation', 'soon');
  t.equal(r.status, 1);
  t.match(r.stderr, /--propagation: /);
  t.equal(ca('status', '--ca-dir', join(dir, 'ca')).status, 1);
  // a CA made by serve (its first start) for another trust domain
  const made = spawnSync(process.execPath, ['-e', `import('${join(import.meta.dirname, '..', '..', 'dist', 'controlplane', 'ca.js')}').then((m) => m.CertificateAuthority.fromDir({ dir: ${JSON.stringify(join(dir, 'ca'))}, trustDomain: 'other.example' }))`], { encoding: 'utf8' });
  t.equal(made.status, 0, made.stderr);
  r = ca('rotate', '--ca-dir', join(dir, 'ca'));
  t.equal(r.status, 1);
  t.match(r.stderr, /--trust-domain cluster\.local: the CA in .* is for trust domain other\.example/);
  r = ca('status', '--ca-dir', join(dir, 'ca'), '--trust-domain', 'other.example');
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^issuing: gen-1   rotation step: 0   roots in the bundle: 1\ngen-1 +issuing +\n  root +CN=sockmesh root 1, O=other\.example  not after /);
});
