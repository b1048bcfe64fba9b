// The agent's certificate manager: for each identity of a workload on this node, a key made here (it never leaves
// the process) and a certificate from the control plane's CA, renewed at half its life, with the trust bundle beside
// them. The tunnel reads them through IdentityCerts (material.ts) at each handshake.
//
// - Renewal at half life, jittered (up to 10% earlier) so that the identities issued together at a start do not all
//   renew in the same second; a failed request is retried with exponential backoff (1 s .. 30 s, jittered). The old
//   certificate is served until it expires; an expired one is dropped (get() -> undefined, 'change').
// - Every renewal makes a new key: a key stolen from memory is worth at most one certificate lifetime.
// - The trust bundle is read at start, every bundleRefreshMs, and at once when a certificate arrives chained to a
//   root not in it (a rotation's step 2 arriving before our next refresh). A change emits 'change' with ''.
// - What comes back is checked before it is used: the leaf carries our key and exactly the identity asked for, and
//   chains to a root of the bundle. A CA answering wrong is a failure to retry, not material to present.
import { EventEmitter } from 'node:events';
import { X509Certificate, createPrivateKey, createPublicKey, webcrypto } from 'node:crypto';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { IdentityCerts, TlsMaterial } from './material.js';

/** What the manager needs of the CA: xds/ca.ts's CaClient over gRPC; a test can hand another. */
export interface CertificateSource {
  /** sign `csr` (PEM); the chain comes back leaf first, root last */
  createCertificate(csr: string, validitySeconds: number): Promise<string[]>;
  trustBundle(): Promise<string[]>;
}

export interface CertManagerOptions {
  ca: CertificateSource;
  log: Logger;
  /** lifetime to ask for, seconds (0 = the CA's default) */
  ttlS?: number;
  /** how often the trust bundle is read again (default 60 s) */
  bundleRefreshMs?: number;
  /** retry backoff after a failure */
  backoff?: { initialMs: number; maxMs: number };
  /** 0..1, Math.random by default (tests pin it) */
  random?: () => number;
  /** the agent's registry: sockmesh_certificates_* families */
  registry?: Registry;
}

/** One identity as /v1/certs reports it (the admin protocol re-exports this). */
export interface CertReport {
  identity: string;
  /** issued: material in force; pending: asked, nothing yet; failed: the last request failed (see lastError) */
  state: 'issued' | 'pending' | 'failed';
  serial?: string;
  notBefore?: string;
  notAfter?: string;
  /** the leaf's issuer (the CA's intermediate) */
  issuer?: string;
  /** when the next renewal (or retry) is due */
  nextAttempt?: string;
  renewals: number;
  failures: number;
  lastError?: string;
}

export interface CertsReport {
  identities: CertReport[];
  /** the trust bundle's roots: subject and not-after */
  bundle: { subject: string; notAfter: string; fingerprint: string }[];
  issued: number;
  renewed: number;
  failed: number;
}

interface Entry {
  identity: string;
  material?: TlsMaterial;
  issuer?: string;
  timer?: NodeJS.Timeout;
  nextAttempt?: number;
  inFlight: boolean;
  failures: number;
  /** consecutive failures, for the backoff */
  streak: number;
  renewals: number;
  lastError?: string;
  removed: boolean;
}

const RENEW_AT = 0.5;
const RENEW_JITTER = 0.1;

export class CertManager extends EventEmitter implements IdentityCerts {
  private readonly entries = new Map<string, Entry>();
  private roots: string[] = [];
  private bundleText?: string;
  private bundleTimer?: NodeJS.Timeout;
  private bundleInFlight?: Promise<void>;
  private stopped = false;
  private readonly random: () => number;
  private readonly backoff: { initialMs: number; maxMs: number };
  readonly counts = { issued: 0, renewed: 0, failed: 0 };

  constructor(private readonly opts: CertManagerOptions) {
    super();
    this.random = opts.random ?? Math.random;
    this.backoff = opts.backoff ?? { initialMs: 1000, maxMs: 30_000 };
    if (opts.registry) this.registerMetrics(opts.registry);
    const every = opts.bundleRefreshMs ?? 60_000;
    this.bundleTimer = setInterval(() => void this.refreshBundle().catch(() => {}), every).unref();
  }

  get(identity: string): TlsMaterial | undefined {
    const m = this.entries.get(identity)?.material;
    // an expired certificate is never presented, even between its expiry and the timer that drops it
    return m && m.notAfter.getTime() > Date.now() ? m : undefined;
  }

  wanted(identity: string): boolean {
    return this.entries.has(identity);
  }

  bundle(): string | undefined {
    return this.bundleText;
  }

  /** The identities of this node's workloads: new ones are requested now, gone ones dropped. */
  setIdentities(identities: Iterable<string>): void {
    if (this.stopped) return;
    const want = new Set(identities);
    for (const [id, e] of this.entries) {
      if (want.has(id)) continue;
      e.removed = true;
      clearTimeout(e.timer);
      this.entries.delete(id);
      this.opts.log.info({ identity: id }, 'identity no longer on this node: certificate dropped');
      if (e.material) this.emit('change', id);
    }
    for (const id of want) {
      if (this.entries.has(id)) continue;
      const e: Entry = { identity: id, inFlight: false, failures: 0, streak: 0, renewals: 0, removed: false };
      this.entries.set(id, e);
      void this.request(e);
    }
  }

  /** Resolves when every identity has material or has failed at least once, and the bundle was read (tests, start). */
  async settled(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ([...this.entries.values()].some((e) => !e.material && e.failures === 0) || this.bundleText === undefined) {
      if (Date.now() > deadline) throw new Error('certificates not settled in time');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private async refreshBundle(): Promise<void> {
    if (this.bundleInFlight) return this.bundleInFlight;
    this.bundleInFlight = (async () => {
      try {
        const roots = await this.opts.ca.trustBundle();
        if (roots.length === 0) throw new Error('the CA answered an empty trust bundle');
        for (const r of roots) new X509Certificate(r); // throws on garbage: keep the last good bundle
        const text = roots.join('');
        if (text !== this.bundleText) {
          const first = this.bundleText === undefined;
          this.roots = roots;
          this.bundleText = text;
          // every identity's material carries the bundle: re-point it, so the next handshake trusts the new roots
          for (const e of this.entries.values()) if (e.material) e.material = { ...e.material, bundle: text };
          this.opts.log.info({ roots: roots.map((r) => new X509Certificate(r).subject) }, first ? 'trust bundle received' : 'trust bundle changed');
          this.emit('change', '');
        }
      } catch (e) {
        this.opts.log.warn({ error: (e as Error).message }, 'trust bundle refresh failed; keeping the last one');
        throw e;
      } finally {
        this.bundleInFlight = undefined;
      }
    })();
    return this.bundleInFlight;
  }

  private schedule(e: Entry, atMs: number, why: string): void {
    clearTimeout(e.timer);
    e.nextAttempt = atMs;
    e.timer = setTimeout(() => void this.request(e), Math.max(0, atMs - Date.now())).unref();
    this.opts.log.debug({ identity: e.identity, at: new Date(atMs).toISOString(), why }, 'certificate request scheduled');
  }

  private async request(e: Entry): Promise<void> {
    if (e.inFlight || e.removed || this.stopped) return;
    e.inFlight = true;
    const renewal = !!e.material;
    try {
      if (this.bundleText === undefined) await this.refreshBundle();
      const { keyPem, csr, publicKeyDer } = await makeCsr(e.identity);
      const chainPems = await this.opts.ca.createCertificate(csr, this.opts.ttlS ?? 0);
      if (e.removed || this.stopped) return;
      let checked = await this.check(e.identity, chainPems, publicKeyDer);
      if (!checked.rootKnown) {
        // the CA signs under a root we have not seen yet: read the bundle now, then check again
        await this.refreshBundle();
        checked = await this.check(e.identity, chainPems, publicKeyDer);
        if (!checked.rootKnown) throw new Error(`the certificate chains to ${checked.rootSubject}, which is not in the trust bundle`);
      }
      const { leaf, chain } = checked;
      e.material = {
        identity: e.identity, key: keyPem, chain, bundle: this.bundleText!, serial: leaf.serialNumber,
        notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo),
      };
      e.issuer = leaf.issuer.replace(/\n/g, ', ');
      e.streak = 0;
      e.lastError = undefined;
      if (renewal) {
        e.renewals++;
        this.counts.renewed++;
      } else this.counts.issued++;
      const now = Date.now();
      const life = e.material.notAfter.getTime() - now;
      const renewIn = life * (RENEW_AT - RENEW_JITTER * this.random());
      this.opts.log.info({ identity: e.identity, serial: leaf.serialNumber, notAfter: e.material.notAfter.toISOString(), renewal }, renewal ? 'certificate renewed' : 'certificate issued');
      this.schedule(e, now + renewIn, 'half life');
      this.emit('change', e.identity);
    } catch (err) {
      if (e.removed || this.stopped) return;
      e.failures++;
      e.streak++;
      this.counts.failed++;
      e.lastError = (err as Error).message;
      const delay = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** (e.streak - 1)) * (0.5 + 0.5 * this.random());
      let at = Date.now() + delay;
      const m = e.material;
      if (m) {
        // keep serving the current certificate; drop it when it expires if no renewal has come by then
        if (m.notAfter.getTime() <= Date.now()) {
          e.material = undefined;
          this.emit('change', e.identity);
        } else at = Math.min(at, m.notAfter.getTime());
      }
      this.opts.log.warn({ identity: e.identity, error: e.lastError, retryInMs: Math.round(at - Date.now()), hasCertificate: !!e.material }, 'certificate request failed');
      this.schedule(e, at, 'retry');
    } finally {
      e.inFlight = false;
    }
  }

  /** The CA's answer, checked: our key, exactly our identity, and whether its root is in the bundle. */
  private async check(identity: string, chainPems: string[], publicKeyDer: Buffer): Promise<{ leaf: X509Certificate; chain: string; rootKnown: boolean; rootSubject: string }> {
    if (chainPems.length === 0) throw new Error('the CA answered an empty certificate chain');
    const certs = chainPems.map((p, i) => {
      try {
        return new X509Certificate(p);
      } catch (err) {
        throw new Error(`certificate ${i + 1} of the CA's answer does not parse: ${(err as Error).message}`);
      }
    });
    const leaf = certs[0]!;
    if (leaf.subjectAltName !== `URI:${identity}`) throw new Error(`the CA issued ${leaf.subjectAltName ?? 'no SAN'}, asked for URI:${identity}`);
    if (!leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(publicKeyDer)) throw new Error('the CA issued a certificate for another key');
    for (let i = 0; i + 1 < certs.length; i++) {
      if (!certs[i]!.verify(certs[i + 1]!.publicKey)) throw new Error(`certificate ${i + 1} of the CA's answer is not signed by the next one`);
    }
    const top = certs[certs.length - 1]!;
    const selfSigned = top.checkIssued(top);
    // what the tunnel presents: the leaf and intermediates; the root is the peer's to have
    const chain = (selfSigned ? chainPems.slice(0, -1) : chainPems).map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join('');
    const roots = this.roots.map((r) => new X509Certificate(r));
    const rootKnown = roots.some((r) => (selfSigned ? r.fingerprint256 === top.fingerprint256 : top.checkIssued(r) && top.verify(r.publicKey)));
    return { leaf, chain, rootKnown, rootSubject: selfSigned ? top.subject : top.issuer };
  }

  report(): CertsReport {
    return {
      identities: [...this.entries.values()].sort((a, b) => a.identity.localeCompare(b.identity)).map((e) => ({
        identity: e.identity,
        state: e.material ? 'issued' : e.failures > 0 ? 'failed' : 'pending',
        serial: e.material?.serial,
        notBefore: e.material?.notBefore.toISOString(),
        notAfter: e.material?.notAfter.toISOString(),
        issuer: e.material ? e.issuer : undefined,
        nextAttempt: e.nextAttempt ? new Date(e.nextAttempt).toISOString() : undefined,
        renewals: e.renewals,
        failures: e.failures,
        lastError: e.lastError,
      })),
      bundle: this.roots.map((r) => {
        const c = new X509Certificate(r);
        return { subject: c.subject.replace(/\n/g, ', '), notAfter: new Date(c.validTo).toISOString(), fingerprint: c.fingerprint256 };
      }),
      ...this.counts,
    };
  }

  private registerMetrics(registry: Registry): void {
    const fam = (name: string, help: string, type: 'counter' | 'gauge', values: () => { labels: Record<string, string>; value: number }[]) => registry.registerMetric({
      name, help, type, aggregator: 'sum',
      get: () => Promise.resolve({ name, help, type, aggregator: 'sum', values: values() }),
      reset: () => {},
    } as unknown as Parameters<Registry['registerMetric']>[0]);
    fam('sockmesh_certificates_issued_total', 'Workload certificates obtained for an identity that had none', 'counter', () => [{ labels: {}, value: this.counts.issued }]);
    fam('sockmesh_certificates_renewed_total', 'Workload certificates renewed', 'counter', () => [{ labels: {}, value: this.counts.renewed }]);
    fam('sockmesh_certificates_failed_total', 'Certificate requests that failed (retried with backoff)', 'counter', () => [{ labels: {}, value: this.counts.failed }]);
    fam('sockmesh_certificate_expiry_seconds', 'Seconds until each identity\'s certificate expires', 'gauge', () => [...this.entries.values()]
      .filter((e) => e.material).map((e) => ({ labels: { identity: e.identity }, value: Math.round((e.material!.notAfter.getTime() - Date.now()) / 1000) })));
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.bundleTimer);
    for (const e of this.entries.values()) clearTimeout(e.timer);
  }
}

/** A fresh P-256 key and a CSR for `identity` (its only SAN). @peculiar/x509 is loaded on first use only. */
async function makeCsr(identity: string): Promise<{ keyPem: string; csr: string; publicKeyDer: Buffer }> {
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const req = await x509.Pkcs10CertificateRequestGenerator.create({
    keys: keys as never,
    signingAlgorithm: alg,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: identity }], true)],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  const keyPem = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
  return { keyPem, csr: req.toString('pem'), publicKeyDer: createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'der' }) };
}
