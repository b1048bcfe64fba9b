// What the tunnel (agent/tunnel/) needs from the certificate manager (identity/certs.ts), and nothing more: the
// manager is one implementation, a test can hand the tunnel a fixed one.
import { createSecureContext, type SecureContext } from 'node:tls';

/** One workload identity's TLS material. The key is generated in the agent and never leaves the process. */
export interface TlsMaterial {
  /** spiffe://<td>/ns/<ns>/sa/<sa> (the certificate's only URI SAN) */
  identity: string;
  /** PKCS#8 PEM, ECDSA P-256 */
  key: string;
  /** PEM: the leaf first, then the intermediates up to (not including) a root */
  chain: string;
  /** PEM: the trust bundle's roots (during a rotation, old and new) */
  bundle: string;
  /** the leaf's serial (hex, upper case as node:crypto prints it) and validity */
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface IdentityCerts {
  /** The current material for `identity`, or undefined when none has been issued (yet, or any more). */
  get(identity: string): TlsMaterial | undefined;
  /**
   * Whether `identity` is one this node holds or is obtaining a certificate for (the tunnel client then waits for it
   * rather than refusing at once); absent: only get() counts.
   */
  wanted?(identity: string): boolean;
  /** The trust bundle (roots, PEM) peers are verified against; undefined before the first answer of the CA. */
  bundle(): string | undefined;
  /**
   * 'change' fires with the identity whose material changed (renewal, new bundle; '' when only the bundle did).
   * Take the material at each handshake (secureContextFor) rather than caching a context: a renewal or a new bundle
   * then applies to the next handshake and no established stream is dropped.
   */
  on(event: 'change', listener: (identity: string) => void): this;
  off(event: 'change', listener: (identity: string) => void): this;
}

/** A TLS context presenting `m`'s chain and trusting its bundle (for a server's SNICallback or a client's connect). */
export function secureContextFor(m: TlsMaterial): SecureContext {
  return createSecureContext({ key: m.key, cert: m.chain, ca: m.bundle, minVersion: 'TLSv1.3' });
}
