// `sockmesh-controlplane ca init --out <dir>` (issue 13, the CA's key on Kubernetes: deploy/ca/): a new root and
// intermediate as files, keys 0600, the kubectl command for the Secret sockmesh-ca printed (the root's key left out
// of it); the files are a working CA from files (the control plane's --ca-cert/--ca-key/--ca-chain: it signs, openssl
// verifies the leaf against the root); the same key group-readable (what a Secret volume with fsGroup makes of it:
// 0440) is refused, which is why deploy/ca/ copies it to 0600 first; a directory that is not empty is refused.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CertificateAuthority } from '../../controlplane/ca.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CP = join(ROOT, 'dist', 'controlplane', 'main.js');

t.test('ca init: files for a CA from files, the Secret\'s command, refusals', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-ca-init-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'ca');
  const r = spawnSync(process.execPath, [CP, 'ca', 'init', '--out', out, '--trust-domain', 'example.org'], { encoding: 'utf8' });
  t.equal(r.status, 0, `ca init exits 0: ${r.stderr}`);
  t.same(readdirSync(out).sort(), ['ca-cert.pem', 'ca-key.pem', 'cert-chain.pem', 'root-cert.pem', 'root-key.pem'], 'root and intermediate, certificates and keys');
  t.equal(statSync(out).mode & 0o777, 0o700, 'the directory is 0700');
  for (const k of ['ca-key.pem', 'root-key.pem']) t.equal(statSync(join(out, k)).mode & 0o777, 0o600, `${k} is 0600`);
  t.match(r.stdout, new RegExp(`kubectl -n sockmesh-system create secret generic sockmesh-ca --from-file=${out}/ca-cert.pem --from-file=${out}/ca-key.pem --from-file=${out}/cert-chain.pem\\n`),
    `the Secret's command: the intermediate, its key and the chain (${r.stdout.trim()})`);
  t.notMatch(r.stdout.split('\n').find((l) => l.includes('kubectl')) ?? '', /root-key/, 'the root\'s key is not in the Secret');

  // what the control plane does with the Secret's files (as deploy/ca/ mounts them, the key copied 0600)
  const ca = await CertificateAuthority.fromFiles({ trustDomain: 'example.org', certFile: join(out, 'ca-cert.pem'), keyFile: join(out, 'ca-key.pem'), chainFile: join(out, 'cert-chain.pem') });
  const csr = execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-keyout', join(dir, 'leaf-key.pem'),
    '-subj', '/O=x', '-addext', 'subjectAltName=URI:spiffe://example.org/ns/shop/sa/web'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const issued = await ca.sign(csr, 3600);
  writeFileSync(join(dir, 'leaf.pem'), issued.certChain[0]!);
  writeFileSync(join(dir, 'untrusted.pem'), issued.certChain.slice(1, -1).join(''));
  const v = spawnSync('openssl', ['verify', '-CAfile', join(out, 'root-cert.pem'), '-untrusted', join(dir, 'untrusted.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' });
  t.equal(v.status, 0, `a workload certificate it signs verifies against root-cert.pem (openssl: ${v.stdout.trim()} ${v.stderr.trim()})`);

  // a Secret volume with fsGroup makes the key 0440: refused, hence deploy/ca/'s init container
  const mounted = join(dir, 'secret');
  mkdirSync(mounted);
  copyFileSync(join(out, 'ca-key.pem'), join(mounted, 'ca-key.pem'));
  chmodSync(join(mounted, 'ca-key.pem'), 0o440);
  const refused = await CertificateAuthority.fromFiles({ trustDomain: 'example.org', certFile: join(out, 'ca-cert.pem'), keyFile: join(mounted, 'ca-key.pem'), chainFile: join(out, 'cert-chain.pem') })
    .then(() => null, (e: Error) => e.message);
  t.match(refused, /readable by group or others \(mode 0440\)/, `the key as a Secret volume with fsGroup has it: refused (${refused})`);

  const again = spawnSync(process.execPath, [CP, 'ca', 'init', '--out', out], { encoding: 'utf8' });
  t.equal(again.status, 1, 'a directory that is not empty: exit 1');
  t.match(again.stderr, /not empty/, `and says why (${again.stderr.trim()})`);
});
