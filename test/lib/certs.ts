// Test certificates for the tunnel: a CA of the test's own (a P-256 root, the issuer of every leaf), workload leaves
// with a SPIFFE URI SAN (or any SANs, any validity: expired ones, ones without a SPIFFE id), and a fixed IdentityCerts
// over them. @peculiar/x509 issues them (node:crypto cannot); node:crypto and OpenSSL verify them like any others.
import 'reflect-metadata';
import { EventEmitter } from 'node:events';
import { randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { IdentityCerts, TlsMaterial } from '../../agent/identity/material.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
const P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const HOUR = 3600_000;

type KeyPair = webcrypto.CryptoKeyPair;

async function keyPem(k: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', k));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

export interface LeafOpts {
  /** URI SANs (default: [identity]) */
  uris?: string[];
  notBefore?: Date;
  notAfter?: Date;
}

export class TestCa {
  private constructor(private readonly keys: KeyPair, readonly root: x509.X509Certificate, readonly bundle: string) {}

  static async create(name = 'test root'): Promise<TestCa> {
    const keys = (await webcrypto.subtle.generateKey(P256, true, ['sign', 'verify'])) as KeyPair;
    const root = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomBytes(8).toString('hex'), name: `CN=${name}`, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + 48 * HOUR),
      keys, signingAlgorithm: SIGN,
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
    });
    return new TestCa(keys, root, root.toString('pem') + '\n');
  }

  /** A leaf for `identity` (its URI SAN), valid for a day unless told otherwise. */
  async issue(identity: string, opts: LeafOpts = {}): Promise<TlsMaterial> {
    const keys = (await webcrypto.subtle.generateKey(P256, true, ['sign', 'verify'])) as KeyPair;
    const notBefore = opts.notBefore ?? new Date(Date.now() - HOUR);
    const notAfter = opts.notAfter ?? new Date(Date.now() + 24 * HOUR);
    const serial = randomBytes(8).toString('hex');
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: serial, subject: '', issuer: this.root.subject, notBefore, notAfter,
      publicKey: keys.publicKey, signingKey: this.keys.privateKey, signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension((opts.uris ?? [identity]).map((u) => ({ type: 'url' as const, value: u })), true),
      ],
    });
    return { identity, key: await keyPem(keys.privateKey), chain: leaf.toString('pem') + '\n', bundle: this.bundle, serial: serial.toUpperCase(), notBefore, notAfter };
  }
}

/** IdentityCerts over fixed material (set() replaces one and fires 'change', as a renewal does). */
export class StaticCerts extends EventEmitter implements IdentityCerts {
  private readonly m = new Map<string, TlsMaterial>();
  constructor(items: TlsMaterial[] = []) { super(); for (const i of items) this.m.set(i.identity, i); }
  get(identity: string): TlsMaterial | undefined { return this.m.get(identity); }
  bundle(): string | undefined { return [...this.m.values()][0]?.bundle; }
  set(m: TlsMaterial): void { this.m.set(m.identity, m); this.emit('change', m.identity); }
}
