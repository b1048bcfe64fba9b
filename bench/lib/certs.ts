// Bench certificates: one root and leaves with a SPIFFE URI SAN (ECDSA P-256, as the control plane's CA issues them),
// made by the openssl CLI, so that the same files serve the tunnel's TLS material (agent/identity/material.ts) and a
// sidecar's PEM files (haproxy wants the leaf and its key in one file).
import { execFileSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { IdentityCerts, TlsMaterial } from '../../agent/identity/material.js';

export interface BenchLeaf {
  /** file name stem: [a-z0-9-]+ */
  name: string;
  /** the certificate's one URI SAN (spiffe://<td>/...) */
  identity: string;
}

export interface BenchCerts {
  dir: string;
  /** the root (trust bundle), PEM file */
  rootFile: string;
  /** by identity */
  material: Map<string, TlsMaterial>;
  /** by leaf name: leaf + key in one PEM file (haproxy's `crt`) */
  pemFile(name: string): string;
}

const DAY_MS = 86_400_000;

/** Make a root and the leaves in `dir` (created if missing; the caller removes it). Throws openssl's own message. */
export function makeBenchCerts(dir: string, leaves: BenchLeaf[]): BenchCerts {
  mkdirSync(dir, { recursive: true });
  const ossl = (args: string[]): void => {
    try {
      execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      const err = (e as { stderr?: Buffer }).stderr?.toString().trim().split('\n').slice(-2).join(' | ');
      throw new Error(`openssl ${args[0]}: ${err || (e as Error).message}`);
    }
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ossl(['req', '-x509', ...ec, '-keyout', 'root.key', '-out', 'root.pem', '-days', '2', '-subj', '/CN=sockmesh bench root']);
  const f = (n: string): string => readFileSync(join(dir, n), 'utf8');
  const material = new Map<string, TlsMaterial>();
  for (const { name, identity } of leaves) {
    if (!/^[a-z0-9-]+$/.test(name)) throw new Error(`bench certificate name ${JSON.stringify(name)}: want [a-z0-9-]+`);
    if (!/^spiffe:\/\/[^\s,]+$/.test(identity)) throw new Error(`bench certificate ${name}: ${JSON.stringify(identity)} is not a spiffe:// URI`);
    ossl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    // x509 -req takes the SAN from an extension file only (it has no -addext)
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=URI:${identity}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    ossl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'root.pem', '-CAkey', 'root.key', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`]);
    writeFileSync(join(dir, `${name}-full.pem`), f(`${name}.pem`) + f(`${name}.key`), { mode: 0o600 });
    material.set(identity, {
      identity, key: f(`${name}.key`), chain: f(`${name}.pem`), bundle: f('root.pem'),
      serial: '', notBefore: new Date(), notAfter: new Date(Date.now() + DAY_MS),
    });
  }
  return { dir, rootFile: join(dir, 'root.pem'), material, pemFile: (name) => join(dir, `${name}-full.pem`) };
}

/** IdentityCerts over fixed material (no renewal): what the tunnel reads, for bench processes. */
export function fixedCerts(items: Iterable<TlsMaterial>): IdentityCerts {
  const m = new Map([...items].map((i) => [i.identity, i]));
  return Object.assign(new EventEmitter(), { get: (id: string) => m.get(id), bundle: () => [...m.values()][0]?.bundle }) as unknown as IdentityCerts;
}
