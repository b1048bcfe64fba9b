// The control plane's CA (controlplane/ca.ts): what it issues is checked by openssl, an independent verifier (chain
// to the bundle, the URI SAN, P-256, validity), and every refusal names what is wrong.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CaConfigError, CertificateAuthority, CsrError } from '../../controlplane/ca.js';

const TD = 'cluster.local';
const ID = `spiffe://${TD}/ns/shop/sa/web`;

function tmp(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-ca-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A CSR made by openssl, as any other client would make one. */
function opensslCsr(dir: string, opts: { san?: string; newkey?: string[] } = {}): string {
  const key = join(dir, `k${Math.random()}.pem`);
  const args = ['req', '-new', '-nodes', ...(opts.newkey ?? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']), '-keyout', key, '-subj', '/O=sockmesh'];
  if (opts.san !== '') args.push('-addext', `subjectAltName=${opts.san ?? `URI:${ID}`}`);
  return execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

/** openssl verify of the leaf against the bundle, the chain's intermediates untrusted: 'OK' or openssl's complaint. */
function opensslVerify(dir: string, chain: string[], bundle: string[], at?: number): string {
  writeFileSync(join(dir, 'leaf.pem'), chain[0]!);
  writeFileSync(join(dir, 'untrusted.pem'), chain.slice(1).join(''));
  writeFileSync(join(dir, 'bundle.pem'), bundle.join(''));
  const args = ['verify', '-CAfile', join(dir, 'bundle.pem'), '-untrusted', join(dir, 'untrusted.pem')];
  if (at !== undefined) args.push('-attime', String(Math.floor(at / 1000)));
  const r = spawnSync('openssl', [...args, join(dir, 'leaf.pem')], { encoding: 'utf8' });
  return r.status === 0 ? 'OK' : (r.stdout + r.stderr).trim();
}

t.test('--ca-dir: generated on first start (keys 0600), reused on the next, issues what openssl accepts', async (t) => {
  const dir = join(tmp(t), 'ca');
  const ca = await CertificateAuthority.fromDir({ dir, trustDomain: TD });
  for (const f of ['gen-1/root-key.pem', 'gen-1/ca-key.pem']) t.equal(statSync(join(dir, f)).mode & 0o777, 0o600, `${f} is 0600`);
  const issued = await ca.sign(opensslCsr(dir));
  t.equal(issued.identity, ID);
  t.equal(issued.certChain.length, 3, 'leaf, intermediate, root');
  t.equal(opensslVerify(dir, issued.certChain.slice(0, 2), ca.trustBundle()), 'OK', 'openssl verify: the leaf chains to the bundle');

  writeFileSync(join(dir, 'leaf.pem'), issued.certChain[0]!);
  const text = execFileSync('openssl', ['x509', '-in', join(dir, 'leaf.pem'), '-noout', '-text'], { encoding: 'utf8' });
  t.match(text, `URI:${ID}`, 'openssl shows the URI SAN');
  t.match(text, /NIST CURVE: P-256|prime256v1/, 'P-256 key');
  t.match(text, /CA:FALSE/);
  t.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
  const leaf = new X509Certificate(issued.certChain[0]!);
  const life = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
  t.ok(life >= 24 * 3600e3 && life <= 24 * 3600e3 + 61e3, `24 h by default (+ the backdated minute): ${life} ms`);
  t.equal(leaf.serialNumber.length, 32, '128-bit serial');
  t.equal(leaf.serialNumber, issued.serial);

  const again = await CertificateAuthority.fromDir({ dir, trustDomain: TD });
  t.same(again.trustBundle(), ca.trustBundle(), 'the same root after a restart');
  const second = await again.sign(opensslCsr(dir), 600);
  t.equal(second.certChain[1], issued.certChain[1], 'the same intermediate signs');
  t.not(second.serial, issued.serial, 'serials differ');
  const l2 = new X509Certificate(second.certChain[0]!);
  t.ok(Date.parse(l2.validTo) - Date.now() <= 600e3 + 5e3, 'validity_duration 600 s honoured');
});

t.test('a CA key readable by others is refused, naming the file', async (t) => {
  const dir = join(tmp(t), 'ca');
  await CertificateAuthority.fromDir({ dir, trustDomain: TD });
  chmodSync(join(dir, 'gen-1/ca-key.pem'), 0o644);
  await t.rejects(CertificateAuthority.fromDir({ dir, trustDomain: TD }), { name: 'CaConfigError', message: /ca-key\.pem: the CA key is readable by group or others \(mode 0644\); chmod 600 it/ });
});

t.test('--ca-cert/--ca-key/--ca-chain from openssl-made files', async (t) => {
  const dir = tmp(t);
  const f = (n: string) => join(dir, n);
  const ossl = (...a: string[]) => execFileSync('openssl', a, { stdio: ['ignore', 'pipe', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30', '-subj', '/CN=op root',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', f('root.key'), '-out', f('root.pem'));
  ossl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=op inter', '-keyout', f('inter.key'), '-out', f('inter.csr'));
  writeFileSync(f('ext.cnf'), 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n');
  ossl('x509', '-req', '-in', f('inter.csr'), '-CA', f('root.pem'), '-CAkey', f('root.key'), '-CAcreateserial', '-days', '20', '-extfile', f('ext.cnf'), '-out', f('inter.pem'));
  chmodSync(f('inter.key'), 0o600);

  const ca = await CertificateAuthority.fromFiles({ trustDomain: TD, certFile: f('inter.pem'), keyFile: f('inter.key'), chainFile: f('root.pem') });
  t.same(ca.trustBundle().map((p) => new X509Certificate(p).subject), ['CN=op root'], 'the bundle is the chain\'s root');
  const issued = await ca.sign(opensslCsr(dir));
  t.equal(opensslVerify(dir, issued.certChain.slice(0, 2), ca.trustBundle()), 'OK');
  t.ok(new X509Certificate(issued.certChain[0]!).validTo, 'parses in node');

  await t.rejects(CertificateAuthority.fromFiles({ trustDomain: TD, certFile: f('inter.pem'), keyFile: f('inter.key') }),
    { name: 'CaConfigError', message: /--ca-cert .*inter\.pem: CN=op inter is not self-signed; give the certificates up to the root with --ca-chain/ });
  await t.rejects(CertificateAuthority.fromFiles({ trustDomain: TD, certFile: f('inter.pem'), keyFile: f('inter.csr'), chainFile: f('root.pem') }),
    /readable by group or others|not a private key/, 'a CSR is not a key');
  await t.rejects(CertificateAuthority.fromFiles({ trustDomain: TD, certFile: f('nope.pem'), keyFile: f('inter.key') }), { message: /--ca-cert .*nope\.pem: ENOENT/ });
  writeFileSync(f('leaf-ext.cnf'), 'basicConstraints=critical,CA:FALSE\n');
  ossl('x509', '-req', '-in', f('inter.csr'), '-CA', f('root.pem'), '-CAkey', f('root.key'), '-CAcreateserial', '-days', '20', '-extfile', f('leaf-ext.cnf'), '-out', f('notca.pem'));
  await t.rejects(CertificateAuthority.fromFiles({ trustDomain: TD, certFile: f('notca.pem'), keyFile: f('inter.key'), chainFile: f('root.pem') }),
    { message: /is not a CA certificate/ });
});

t.test('CSRs refused with a reason: wrong key, extra SANs, foreign trust domain, garbage, bad TTL', async (t) => {
  const dir = join(tmp(t), 'ca');
  const ca = await CertificateAuthority.fromDir({ dir, trustDomain: TD });
  const refused = async (csr: string, re: RegExp, what: string, ttl = 0) => t.rejects(ca.sign(csr, ttl), { name: 'CsrError', message: re }, what);
  await refused(opensslCsr(dir, { newkey: ['-newkey', 'rsa:2048'] }), /the key is RSASSA-PKCS1-v1_5|the key is RSA.*must be ECDSA P-256/, 'RSA key');
  await refused(opensslCsr(dir, { newkey: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1'] }), /ECDSA P-384; workload keys must be ECDSA P-256/, 'P-384 key');
  await refused(opensslCsr(dir, { san: `URI:${ID},DNS:evil.example` }), /subjectAltName has url:spiffe.*dns:evil\.example; expected exactly one URI/, 'extra DNS SAN');
  await refused(opensslCsr(dir, { san: `URI:${ID},URI:spiffe://${TD}/ns/shop/sa/db` }), /expected exactly one URI/, 'two URIs');
  await refused(opensslCsr(dir, { san: '' }), /no subjectAltName/, 'no SAN');
  await refused(opensslCsr(dir, { san: 'URI:spiffe://other.domain/ns/shop/sa/web' }), /not in trust domain cluster\.local/, 'foreign trust domain');
  await refused(opensslCsr(dir, { san: 'URI:spiffe://cluster.local/web' }), /expected spiffe:\/\/<trust domain>\/ns\/<namespace>\/sa\/<service account>/, 'not the ns/sa form');
  await refused('hello', /expected a PEM certificate request/, 'not PEM');
  await refused('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n', /csr: does not parse/, 'garbage PEM');
  await refused(opensslCsr(dir), /validity_duration -5: expected seconds >= 0/, 'negative TTL', -5);
  // a CSR whose signature does not match its key: the signature bytes flipped
  const good = opensslCsr(dir);
  const der = Buffer.from(good.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  der[der.length - 3]! ^= 0xff;
  await refused(`-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`, /signature does not verify|does not parse/, 'tampered signature');
  // authorize() refusing passes its error through unchanged
  await t.rejects(ca.sign(good, 0, (id) => { throw new Error(`no ${id}`); }), { message: `no ${ID}` });
  // a TTL above the maximum is capped
  const capped = await ca.sign(good, 10 * 24 * 3600);
  t.ok(capped.notAfter.getTime() - Date.now() <= 24 * 3600e3 + 5e3, 'capped at the maximum TTL');
});

t.test('trust bundle rotation: new root first, issuing under it after propagation, old root out after the longest TTL', async (t) => {
  const dir = join(tmp(t), 'ca');
  let now = Date.now();
  const ca = await CertificateAuthority.fromDir({ dir, trustDomain: TD, certTtlS: 60, now: () => now });
  const oldRoot = ca.trustBundle()[0]!;
  const beforeRotation = await ca.sign(opensslCsr(dir));

  const newRoot = await ca.rotate(10_000);
  t.same(ca.trustBundle(), [oldRoot, newRoot], 'step 1: the new root joins the bundle');
  const during = await ca.sign(opensslCsr(dir));
  t.equal(during.certChain[2], oldRoot, 'step 1: still issued under the old root');

  now += 10_001;
  const after = await ca.sign(opensslCsr(dir));
  t.equal(after.certChain[2], newRoot, 'step 2: issued under the new root');
  t.same(ca.trustBundle(), [oldRoot, newRoot], 'step 2: the old root stays while its certificates may be valid');
  t.equal(opensslVerify(dir, during.certChain.slice(0, 2), ca.trustBundle(), now), 'OK', 'an old-root certificate verifies against the bundle');
  t.equal(opensslVerify(dir, after.certChain.slice(0, 2), [oldRoot], now).includes('OK'), false, 'a new-root certificate does not verify against the old bundle alone');

  const restarted = await CertificateAuthority.fromDir({ dir, trustDomain: TD, certTtlS: 60, now: () => now });
  t.same(restarted.trustBundle(), [oldRoot, newRoot], 'a restarted CA resumes the rotation from generations.json');

  now += 60_000;
  t.same(ca.trustBundle(), [newRoot], 'step 3: after the longest TTL only the new root is left');
  // the last old-root certificate has expired by now; a stale one is refused by the new bundle
  t.match(opensslVerify(dir, beforeRotation.certChain.slice(0, 2), ca.trustBundle(), now - 60_000), /unable to get (local issuer|issuer) certificate/, 'revoked by rotation: the old chain no longer verifies');
});

t.test('bad CA options', async (t) => {
  const dir = tmp(t);
  await t.rejects(CertificateAuthority.fromDir({ dir: join(dir, 'x'), trustDomain: 'Bad Domain' }), { name: 'CaConfigError', message: /trust domain "Bad Domain"/ });
  await t.rejects(CertificateAuthority.fromDir({ dir: join(dir, 'x'), trustDomain: TD, certTtlS: 0 }), { message: /certificate TTL 0 s/ });
  writeFileSync(join(dir, 'stray'), 'x');
  await t.rejects(CertificateAuthority.fromDir({ dir, trustDomain: TD }), { message: /not empty and has no generations\.json/ });
  const d2 = join(dir, 'ca2');
  await CertificateAuthority.fromDir({ dir: d2, trustDomain: TD });
  writeFileSync(join(d2, 'generations.json'), '{"generations": 3}');
  await t.rejects(CertificateAuthority.fromDir({ dir: d2, trustDomain: TD }), { message: /generations\.json: expected \{"generations"/ });
  t.ok(readFileSync(join(d2, 'gen-1/root-cert.pem'), 'utf8').includes('BEGIN CERTIFICATE'));
  t.ok(new CsrError('x') instanceof Error && new CaConfigError('y') instanceof Error);
});
