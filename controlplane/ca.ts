// The control plane's certificate authority: workload certificates for SPIFFE identities, signed on a CSR from a
// node agent (the gRPC API is in ca-service.ts; who may ask for what is decided there).
//
// Node's crypto verifies X.509 but cannot issue certificates or read CSRs: @peculiar/x509 does that over webcrypto
// (ECDSA P-256, no native code). It needs reflect-metadata imported first.
//
// Where the CA comes from:
//  - files (--ca-cert/--ca-key, --ca-chain): an operator's intermediate (or root) and its key; --ca-chain carries the
//    certificates above it up to the root, which becomes the trust bundle;
//  - a directory (--ca-dir): generated on the first start (a root and an intermediate under it, keys 0600) and
//    reused on every later start. Rotation (rotate()) adds a generation to the same directory.
//
// Rotation, in three steps, so that no certificate in use is ever untrusted by a peer:
//  1. rotate(): a new root (and intermediate) is made and its root added to the trust bundle. Certificates are still
//     issued under the old one, for `propagation` (agents refresh the bundle and hand it to their TLS contexts).
//  2. after `propagation`: certificates are issued under the new root; the old root stays in the bundle, because
//     certificates issued under it just before are still valid for up to the longest TTL (maxTtl).
//  3. after propagation + maxTtl: every certificate the old root signed has expired, so it leaves the bundle. A
//     certificate still chaining to it (a peer that never renewed) is then refused at the handshake.
// A generation's times are stored with it, so a restarted control plane resumes a rotation where it was.
import 'reflect-metadata';
import { createPrivateKey, randomBytes, webcrypto, X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, unwatchFile, watchFile, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { formatSpiffeId, parseNodeSpiffeId, parseSpiffeId, trustDomainProblem, type SpiffeId } from '../agent/model/spiffe.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type Algorithm = webcrypto.Algorithm;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export const DEFAULT_CERT_TTL_S = 24 * 3600;
/** Lifetimes of what --ca-dir generates: a root outlives many intermediates. */
const ROOT_TTL_S = 10 * 365 * 24 * 3600;
const INTERMEDIATE_TTL_S = 2 * 365 * 24 * 3600;
/** Backdating of notBefore: peers whose clocks run a little behind still accept a fresh certificate. */
const BACKDATE_MS = 60_000;
const P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** A request the CA refuses, with the reason a caller can act on (the API maps it to INVALID_ARGUMENT). */
export class CsrError extends Error {
  override readonly name = 'CsrError';
}

/** A problem with the CA's own files or options (the control plane does not start). */
export class CaConfigError extends Error {
  override readonly name = 'CaConfigError';
}

export interface Issued {
  /** the workload's identity (the URI SAN) */
  identity: string;
  /** PEM: leaf, intermediates, root (Istio's cert_chain order) */
  certChain: string[];
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

/** One signing generation: the certificate that signs, its key, the chain above it and the root that ends it. */
interface Generation {
  /** its name: the --ca-dir subdirectory (gen-<n>), or 'files' (--ca-cert) */
  label: string;
  signer: x509.X509Certificate;
  key: CryptoKey;
  /** certificates above the signer up to and including the root (empty when the signer is the root) */
  above: x509.X509Certificate[];
  root: x509.X509Certificate;
  /** issuing under this generation starts at (ms since the epoch; 0 = from the start) */
  issueFrom: number;
}

/** Where a generation is in its life (status(), the metrics, `sockmesh-controlplane ca status`). */
export type GenerationState = 'issuing' | 'next' | 'retiring' | 'retired';

export interface CaStatus {
  /** the generation that signs now */
  active: string;
  /** 0: one root in force; 1: a new root is in the bundle, issuing switches to it at its issueFrom; 2: issuing
   *  under the new root, the old one stays in the bundle until every certificate it signed has expired */
  rotationStep: 0 | 1 | 2;
  bundleRoots: number;
  generations: {
    generation: string;
    state: GenerationState;
    /** when it starts (started) signing; null = from the start */
    issueFrom: string | null;
    /** when its root leaves the trust bundle (retiring), or left it (retired) */
    leavesBundle?: string;
    root: { subject: string; notAfter: string; fingerprint256: string };
    /** the certificate that signs workload certificates, when it is not the root itself */
    intermediate?: { subject: string; notAfter: string };
  }[];
}

export interface CaOptions {
  trustDomain: string;
  /** default lifetime of a workload certificate, seconds (--cert-ttl) */
  certTtlS?: number;
  /** the longest lifetime a CSR may ask for, seconds (default: certTtlS) */
  maxTtlS?: number;
  /** the clock (tests) */
  now?: () => number;
}

const pem = (c: x509.X509Certificate): string => c.toString('pem') + '\n';

/** A private key file that others may read is refused: a CA key is the mesh's whole trust. */
function checkKeyMode(file: string): void {
  const mode = statSync(file).mode & 0o777;
  if (mode & 0o044) throw new CaConfigError(`${file}: the CA key is readable by group or others (mode ${mode.toString(8).padStart(4, '0')}); chmod 600 it`);
}

async function importKey(file: string): Promise<{ key: CryptoKey; algorithm: Algorithm }> {
  checkKeyMode(file);
  let ko: KeyObject;
  try {
    ko = createPrivateKey(readFileSync(file));
  } catch (e) {
    throw new CaConfigError(`${file}: not a private key in PEM (${(e as Error).message})`);
  }
  const d = ko.asymmetricKeyDetails ?? {};
  let alg: webcrypto.EcKeyImportParams | webcrypto.RsaHashedImportParams;
  let signing: Algorithm;
  if (ko.asymmetricKeyType === 'ec' && (d.namedCurve === 'prime256v1' || d.namedCurve === 'secp384r1')) {
    const curve = d.namedCurve === 'prime256v1' ? 'P-256' : 'P-384';
    alg = { name: 'ECDSA', namedCurve: curve };
    signing = { name: 'ECDSA', hash: curve === 'P-256' ? 'SHA-256' : 'SHA-384' } as Algorithm;
  } else if (ko.asymmetricKeyType === 'rsa') {
    alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    signing = alg;
  } else {
    throw new CaConfigError(`${file}: a ${ko.asymmetricKeyType} key${d.namedCurve ? ` on ${d.namedCurve}` : ''}; the CA signs with ECDSA P-256/P-384 or RSA`);
  }
  const der = ko.export({ type: 'pkcs8', format: 'der' });
  const key = await webcrypto.subtle.importKey('pkcs8', der, alg, false, ['sign']);
  return { key: key as unknown as CryptoKey, algorithm: signing };
}

function readCerts(file: string, what: string): x509.X509Certificate[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CaConfigError(`${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new CaConfigError(`${what} ${file}: no PEM certificate in it`);
  return blocks.map((b, i) => {
    try {
      return new x509.X509Certificate(b);
    } catch (e) {
      throw new CaConfigError(`${what} ${file}: certificate ${i + 1} does not parse (${(e as Error).message})`);
    }
  });
}

function isSelfSigned(c: x509.X509Certificate): boolean {
  const n = new NodeX509(Buffer.from(c.rawData));
  return n.checkIssued(n) && n.verify(n.publicKey);
}

function randomSerial(): string {
  // 128 random bits, the top bit cleared so that the DER integer stays positive and 16 bytes long
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
}

async function caExtensions(publicKey: CryptoKey, issuerKey: CryptoKey | undefined, pathLength?: number): Promise<x509.Extension[]> {
  const ext: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(publicKey),
  ];
  if (issuerKey) ext.push(await x509.AuthorityKeyIdentifierExtension.create(issuerKey));
  return ext;
}

/** A new root and an intermediate under it, P-256, as --ca-dir makes them. */
async function generateGeneration(trustDomain: string, now: number, label: string): Promise<{ files: Record<string, string> }> {
  const rootKeys = (await webcrypto.subtle.generateKey(P256, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const interKeys = (await webcrypto.subtle.generateKey(P256, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const notBefore = new Date(now - BACKDATE_MS);
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=sockmesh root ${label}, O=${trustDomain}`,
    notBefore,
    notAfter: new Date(now + ROOT_TTL_S * 1000),
    keys: rootKeys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: await caExtensions(rootKeys.publicKey, undefined),
  });
  const inter = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=sockmesh intermediate ${label}, O=${trustDomain}`,
    issuer: root.subject,
    notBefore,
    notAfter: new Date(now + INTERMEDIATE_TTL_S * 1000),
    publicKey: interKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions: await caExtensions(interKeys.publicKey, rootKeys.publicKey, 0),
  });
  const keyPem = async (k: CryptoKey): Promise<string> =>
    createPrivateKey({ key: Buffer.from(await webcrypto.subtle.exportKey('pkcs8', k as never)), format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
  return {
    files: {
      'root-cert.pem': pem(root),
      'root-key.pem': await keyPem(rootKeys.privateKey),
      'ca-cert.pem': pem(inter),
      'ca-key.pem': await keyPem(interKeys.privateKey),
      // Istio's name for the certificates above the signer
      'cert-chain.pem': pem(root),
    },
  };
}

/** Write `files` into `dir` (made 0700), keys 0600, each through a temporary file so that a crash leaves no half key. */
function writeGeneration(dir: string, files: Record<string, string>): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const [name, text] of Object.entries(files)) {
    const tmp = join(dir, `.${name}.tmp`);
    writeFileSync(tmp, text, { mode: name.endsWith('key.pem') ? 0o600 : 0o644 });
    if (name.endsWith('key.pem')) chmodSync(tmp, 0o600); // the umask cannot widen it, but an existing tmp could be wider
    renameSync(tmp, join(dir, name));
  }
}

/**
 * A new root and intermediate as flat files in `dir` (new or empty; made 0700, keys 0600), for a CA run from files
 * (--ca-cert ca-cert.pem --ca-key ca-key.pem --ca-chain cert-chain.pem): `sockmesh-controlplane ca init`, whose
 * output becomes the Kubernetes Secret the control plane mounts (deploy/ca/). root-key.pem is not needed to issue:
 * it stays with the operator, out of the cluster.
 */
export async function generateCaFiles(dir: string, trustDomain: string, now = Date.now()): Promise<string[]> {
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new CaConfigError(`${dir}: not empty; give a new or empty directory`);
  const g = await generateGeneration(trustDomain, now, new Date(now).toISOString().slice(0, 10));
  writeGeneration(dir, g.files);
  return Object.keys(g.files).sort();
}

interface DirState {
  /** generations in order, the oldest first: subdirectory names and when each starts issuing */
  generations: { dir: string; issueFrom: number }[];
}

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly certTtlS: number;
  readonly maxTtlS: number;
  private readonly now: () => number;
  private generations: Generation[] = [];
  private signingAlg: Algorithm = ECDSA_SHA256;
  /** set for a --ca-dir CA: where rotate() writes */
  private dir?: string;

  private constructor(opts: CaOptions) {
    const td = trustDomainProblem(opts.trustDomain);
    if (td) throw new CaConfigError(td);
    this.trustDomain = opts.trustDomain;
    this.certTtlS = opts.certTtlS ?? DEFAULT_CERT_TTL_S;
    this.maxTtlS = opts.maxTtlS ?? this.certTtlS;
    if (!(this.certTtlS >= 1) || !(this.maxTtlS >= this.certTtlS)) throw new CaConfigError(`certificate TTL ${this.certTtlS} s (max ${this.maxTtlS} s): expected 1 s or more, max >= default`);
    this.now = opts.now ?? Date.now;
  }

  /** From an operator's files: the signing certificate, its key, and (unless it is a root) the chain to the root. */
  static async fromFiles(opts: CaOptions & { certFile: string; keyFile: string; chainFile?: string }): Promise<CertificateAuthority> {
    const ca = new CertificateAuthority(opts);
    const [signer, ...extra] = readCerts(opts.certFile, '--ca-cert');
    const above = [...extra, ...(opts.chainFile ? readCerts(opts.chainFile, '--ca-chain') : [])].filter((c) => !c.equal(signer!));
    const { key, algorithm } = await importKey(opts.keyFile);
    ca.signingAlg = algorithm;
    const root = above.length ? above[above.length - 1]! : signer!;
    if (!isSelfSigned(root)) {
      throw new CaConfigError(opts.chainFile
        ? `--ca-chain ${opts.chainFile}: its last certificate (${root.subject}) is not a self-signed root`
        : `--ca-cert ${opts.certFile}: ${signer!.subject} is not self-signed; give the certificates up to the root with --ca-chain`);
    }
    const gen = { label: 'files', signer: signer!, key, above, root, issueFrom: 0 };
    await ca.checkGeneration(gen, opts.certFile);
    ca.generations = [gen];
    return ca;
  }

  /**
   * From --ca-dir: generated into it on the first start (keys 0600), reused afterwards. `create` false (the `ca`
   * commands): a directory without a CA in it is an error, not a new CA.
   */
  static async fromDir(opts: CaOptions & { dir: string; create?: boolean }): Promise<CertificateAuthority> {
    const ca = new CertificateAuthority(opts);
    ca.dir = opts.dir;
    const stateFile = join(opts.dir, 'generations.json');
    if (!existsSync(stateFile) && opts.create === false) throw new CaConfigError(`--ca-dir ${opts.dir}: no CA there (no generations.json)`);
    if (!existsSync(stateFile)) {
      if (existsSync(opts.dir) && readdirSync(opts.dir).length > 0) {
        throw new CaConfigError(`--ca-dir ${opts.dir}: not empty and has no generations.json; give an empty or new directory (or --ca-cert/--ca-key for existing files)`);
      }
      mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
      const g = await generateGeneration(ca.trustDomain, ca.now(), '1');
      writeGeneration(join(opts.dir, 'gen-1'), g.files);
      ca.writeState({ generations: [{ dir: 'gen-1', issueFrom: 0 }] });
    }
    await ca.loadDir();
    return ca;
  }

  private writeState(state: DirState): void {
    const file = join(this.dir!, 'generations.json');
    writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2) + '\n', { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
  }

  private readState(): DirState {
    const file = join(this.dir!, 'generations.json');
    let state: DirState;
    try {
      state = JSON.parse(readFileSync(file, 'utf8')) as DirState;
    } catch (e) {
      throw new CaConfigError(`${file}: ${(e as Error).message}`);
    }
    const ok = Array.isArray(state?.generations) && state.generations.length > 0
      && state.generations.every((g) => typeof g?.dir === 'string' && /^gen-\d+$/.test(g.dir) && Number.isFinite(g.issueFrom));
    if (!ok) throw new CaConfigError(`${file}: expected {"generations": [{"dir": "gen-<n>", "issueFrom": <ms>}, ...]}`);
    return state;
  }

  /** (Re)load every generation of the directory (also after another process rotated it). */
  async loadDir(): Promise<void> {
    const gens: Generation[] = [];
    for (const g of this.readState().generations) {
      const d = join(this.dir!, g.dir);
      const [signer] = readCerts(join(d, 'ca-cert.pem'), 'CA certificate');
      const above = readCerts(join(d, 'cert-chain.pem'), 'CA chain');
      const { key } = await importKey(join(d, 'ca-key.pem'));
      const gen = { label: g.dir, signer: signer!, key, above, root: above[above.length - 1]!, issueFrom: g.issueFrom };
      await this.checkGeneration(gen, d);
      gens.push(gen);
    }
    this.generations = gens;
  }

  /** The signer must chain to the root and be allowed to sign certificates. */
  private async checkGeneration(g: Generation, where: string): Promise<void> {
    const chain = [g.signer, ...g.above];
    for (let i = 0; i + 1 < chain.length; i++) {
      const ok = await chain[i]!.verify({ publicKey: chain[i + 1]!.publicKey, signatureOnly: true }).catch(() => false);
      if (!ok) throw new CaConfigError(`${where}: ${chain[i]!.subject} is not signed by ${chain[i + 1]!.subject}`);
    }
    const bc = g.signer.getExtension(x509.BasicConstraintsExtension);
    if (!bc?.ca) throw new CaConfigError(`${where}: ${g.signer.subject} is not a CA certificate (basicConstraints CA:TRUE missing)`);
    if (g.signer.notAfter.getTime() <= this.now()) throw new CaConfigError(`${where}: ${g.signer.subject} expired at ${g.signer.notAfter.toISOString()}`);
  }

  /**
   * Step 1 of a rotation (--ca-dir CAs only): a new generation whose root joins the bundle now and which signs from
   * now + propagationMs (step 2); the previous root leaves the bundle maxTtl after that (step 3). Returns the new
   * root's PEM.
   */
  async rotate(propagationMs: number): Promise<string> {
    if (!this.dir) throw new CaConfigError('rotation needs a CA in a directory (--ca-dir); with --ca-cert/--ca-key replace the files and restart');
    await this.loadDir(); // another process (the serving control plane, an earlier rotate) may have written since
    // A second rotation while the first one's root is still propagating would switch issuing past a root agents may
    // not have yet: step 2 of the previous one must have started.
    const pending = this.generations.find((g) => g.issueFrom > this.now());
    if (pending) throw new CaConfigError(`--ca-dir ${this.dir}: ${pending.label} starts issuing at ${new Date(pending.issueFrom).toISOString()}; rotate again after that`);
    // the roots --ca-dir makes carry the trust domain as O=: a rotation under another one would be a different mesh
    const td = /(?:^|,\s*)O=([^,]+)/.exec(this.generations[this.generations.length - 1]!.root.subject)?.[1];
    if (td !== undefined && td !== this.trustDomain) throw new CaConfigError(`--trust-domain ${this.trustDomain}: the CA in ${this.dir} is for trust domain ${td}`);
    const state = this.readState();
    const n = Math.max(...state.generations.map((g) => Number(g.dir.slice(4)))) + 1;
    const g = await generateGeneration(this.trustDomain, this.now(), String(n));
    writeGeneration(join(this.dir, `gen-${n}`), g.files);
    state.generations.push({ dir: `gen-${n}`, issueFrom: this.now() + propagationMs });
    this.writeState(state);
    await this.loadDir();
    return g.files['root-cert.pem']!;
  }

  /**
   * Re-read the directory whenever generations.json changes (a `ca rotate` from another process); `onReload` is
   * told the result or the error (the CA then keeps what it had). Returns a function that stops watching.
   */
  watchDir(onReload: (err?: Error) => void, intervalMs = 1000): () => void {
    if (!this.dir) return () => {};
    const file = join(this.dir, 'generations.json');
    const changed = (cur: { mtimeMs: number }, prev: { mtimeMs: number }) => {
      if (cur.mtimeMs === prev.mtimeMs) return;
      this.loadDir().then(() => onReload(), (e: Error) => onReload(e));
    };
    watchFile(file, { interval: intervalMs, persistent: false }, changed);
    return () => unwatchFile(file, changed);
  }

  /** Where each generation is, and the rotation's step (metrics, `ca status`). */
  status(): CaStatus {
    const now = this.now();
    const active = this.generations.indexOf(this.active(now));
    const gens = this.generations.map((g, i) => {
      const stopped = i < active ? this.generations[i + 1]!.issueFrom : undefined;
      const leaves = stopped === undefined ? undefined : stopped + this.maxTtlS * 1000;
      const state: GenerationState = i > active ? 'next' : i === active ? 'issuing' : leaves! > now ? 'retiring' : 'retired';
      const root = new NodeX509(Buffer.from(g.root.rawData));
      return {
        generation: g.label, state,
        issueFrom: g.issueFrom > 0 ? new Date(g.issueFrom).toISOString() : null,
        ...(leaves !== undefined ? { leavesBundle: new Date(leaves).toISOString() } : {}),
        root: { subject: g.root.subject, notAfter: g.root.notAfter.toISOString(), fingerprint256: root.fingerprint256 },
        ...(g.signer.equal(g.root) ? {} : { intermediate: { subject: g.signer.subject, notAfter: g.signer.notAfter.toISOString() } }),
      };
    });
    const step = gens.some((g) => g.state === 'next') ? 1 : gens.some((g) => g.state === 'retiring') ? 2 : 0;
    return { active: this.generations[active]!.label, rotationStep: step, bundleRoots: this.trustBundle().length, generations: gens };
  }

  /** The generation that signs now: the newest whose issueFrom has come. */
  private active(now: number): Generation {
    let a = this.generations[0]!;
    for (const g of this.generations) if (g.issueFrom <= now) a = g;
    return a;
  }

  /**
   * The trust bundle (root PEMs): every root that signs now or will, and every earlier one whose last certificate
   * may still be valid (it stopped signing less than maxTtl ago).
   */
  trustBundle(): string[] {
    const now = this.now();
    const active = this.generations.indexOf(this.active(now));
    const roots: string[] = [];
    for (let i = 0; i < this.generations.length; i++) {
      const g = this.generations[i]!;
      // generation i stopped signing when i+1 started
      const stopped = i < active ? this.generations[i + 1]!.issueFrom : Infinity;
      if (stopped + this.maxTtlS * 1000 > now) {
        const p = pem(g.root);
        if (!roots.includes(p)) roots.push(p);
      }
    }
    return roots;
  }

  /**
   * Sign `csrPem` for the identity its URI SAN names. Checked here, whoever asks: the CSR's own signature, an ECDSA
   * P-256 key, exactly one SAN and it a spiffe URI of this trust domain. `authorize` decides whether the caller may
   * have that identity (it throws to refuse). ttlS 0 or absent = the default; above the maximum it is capped.
   */
  async sign(csrPem: string, ttlS = 0, authorize: (identity: string) => void = () => {}): Promise<Issued> {
    if (typeof csrPem !== 'string' || !csrPem.includes('-----BEGIN CERTIFICATE REQUEST-----')) throw new CsrError('csr: expected a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)');
    if (!Number.isFinite(ttlS) || ttlS < 0) throw new CsrError(`validity_duration ${ttlS}: expected seconds >= 0 (0 = the default ${this.certTtlS} s)`);
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch (e) {
      throw new CsrError(`csr: does not parse (${(e as Error).message})`);
    }
    const alg = csr.publicKey.algorithm as webcrypto.EcKeyAlgorithm;
    if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-256') {
      throw new CsrError(`csr: the key is ${alg.name}${alg.namedCurve ? ` ${alg.namedCurve}` : ''}; workload keys must be ECDSA P-256`);
    }
    if (!(await csr.verify().catch(() => false))) throw new CsrError('csr: its signature does not verify (not signed by the key it carries)');
    const sanExt = csr.getExtension('2.5.29.17');
    if (!sanExt) throw new CsrError('csr: no subjectAltName; expected exactly one URI SAN spiffe://<trust domain>/ns/<ns>/sa/<sa>');
    const names = new x509.SubjectAlternativeNameExtension(sanExt.rawData).names.items;
    if (names.length !== 1 || names[0]!.type !== 'url') {
      throw new CsrError(`csr: subjectAltName has ${names.map((n) => `${n.type}:${n.value}`).join(', ')}; expected exactly one URI spiffe://<trust domain>/ns/<ns>/sa/<sa>`);
    }
    const identity = names[0]!.value;
    // a workload's identity, or a node agent's own (its tunnel server's: spiffe.ts nodeSpiffeId); `authorize` decides
    // which node may have which
    const node = parseNodeSpiffeId(identity);
    let id;
    try {
      id = node ?? parseSpiffeId(identity);
    } catch (e) {
      throw new CsrError(`csr: ${(e as Error).message} (or spiffe://<trust domain>/sockmesh/node/<node> for a node agent)`);
    }
    if (id.trustDomain !== this.trustDomain) throw new CsrError(`csr: identity ${identity} is not in trust domain ${this.trustDomain}`);
    authorize(node ? identity : formatSpiffeId(id as SpiffeId));

    const now = this.now();
    const gen = this.active(now);
    const ttlMs = Math.min(ttlS || this.certTtlS, this.maxTtlS) * 1000;
    // never past the signer's own end: a chain that outlives its issuer does not verify
    const notAfter = new Date(Math.min(now + ttlMs, gen.signer.notAfter.getTime()));
    const notBefore = new Date(now - BACKDATE_MS);
    const serial = randomSerial();
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      // An empty subject with a critical SAN, as Istio issues them: the identity is the URI SAN alone.
      subject: '',
      issuer: gen.signer.subject,
      notBefore,
      notAfter,
      publicKey: csr.publicKey,
      signingKey: gen.key,
      signingAlgorithm: this.signingAlg,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: identity }], true),
        await x509.AuthorityKeyIdentifierExtension.create(gen.signer.publicKey),
      ],
    });
    return {
      identity,
      certChain: [pem(leaf), pem(gen.signer), ...gen.above.map(pem)],
      serial: leaf.serialNumber.toUpperCase(),
      notBefore,
      notAfter,
    };
  }
}
