// The between-nodes part of the model (issue 13): the mesh's nodes (tunnel endpoints), mTLS modes, and the L4
// authorization policies (the Istio AuthorizationPolicy L4 subset). Pure data, no I/O; validated by meshconfig.ts,
// compiled for decisions by authz4.ts, resolved per destination by mtls.ts. Imports nothing: types.ts imports it.

/**
 * What a destination accepts from other nodes (Istio's PeerAuthentication modes):
 *  - strict: only connections arriving through its node's tunnel end (HBONE, mTLS); a raw connection is refused;
 *  - permissive: both; clients on other nodes still send through the tunnel (mTLS whenever both ends can);
 *  - off: today's behaviour, plaintext pod to pod, no hand-over to the tunnel.
 */
export type MtlsMode = 'strict' | 'permissive' | 'off';

/** Istio's default: a mesh without an mtls section tunnels between nodes and still accepts plaintext. */
export const DEFAULT_MTLS_MODE: MtlsMode = 'permissive';

export interface MtlsPolicy {
  /** the mesh-wide mode; absent in the config = DEFAULT_MTLS_MODE */
  mode: MtlsMode;
  /** per namespace (the namespace of the destination workload's identity), over `mode` */
  namespaces: Record<string, MtlsMode>;
}

/** A node of the mesh: where its agent's tunnel end (HBONE, 15008) listens. */
export interface MeshNode {
  /** the node's --node-id (Workload.node names it) */
  name: string;
  /** canonical addresses of the node's tunnel end (one per family at most is used) */
  addresses: string[];
  /** the tunnel port; absent = DEFAULT_TUNNEL_PORT */
  tunnelPort?: number;
}

export const DEFAULT_TUNNEL_PORT = 15008;

/**
 * A source pattern as Istio writes them: exact, `prefix*`, `*suffix`, or `*` (any non-empty value: the source must
 * have one). Principals are compared without the `spiffe://` scheme, as Istio's `source.principal` is
 * (`cluster.local/ns/shop/sa/web`).
 */
export type Pattern = string;

export interface AuthzSource {
  /** any of them (patterns over the principal, scheme-less) */
  principals?: Pattern[];
  /** any of them (patterns over the source identity's namespace) */
  namespaces?: Pattern[];
  /** none of them (Istio's notPrincipals: a caller without identity matches, as in Istio) */
  notPrincipals?: Pattern[];
  /** none of them (Istio's notNamespaces; a caller without identity matches) */
  notNamespaces?: Pattern[];
}

export interface AuthzOperation {
  /** destination workload ports (the target port, as Istio: the port the pod listens on); any of them */
  ports: number[];
}

/**
 * One Istio AuthorizationPolicy with one rule, L4 fields only. A rule matches when some entry of `from` matches
 * (absent = any source, also one without identity) and some entry of `to` does (absent = any port); within a
 * source, every field given must match (Istio's AND of fields, OR of values).
 */
export interface AuthorizationPolicy {
  name: string;
  action: 'allow' | 'deny';
  /** the services (names) it applies to; absent = every L4 service */
  services?: string[];
  from?: AuthzSource[];
  to?: AuthzOperation[];
}

/** The namespace of a SPIFFE identity `spiffe://<td>/ns/<ns>/sa/<sa>`; undefined when it is not one. */
export function identityNamespace(identity: string | undefined): string | undefined {
  if (identity === undefined) return undefined;
  const m = SPIFFE_ID.exec(identity);
  return m ? m[2] : undefined;
}

/** The principal Istio compares (`<td>/ns/<ns>/sa/<sa>`): the identity without its `spiffe://` scheme. */
export function principalOf(identity: string): string {
  return identity.startsWith('spiffe://') ? identity.slice('spiffe://'.length) : identity;
}

/**
 * `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`: a trust domain as SPIFFE allows (lowercase letters,
 * digits, '.', '-', '_'), a namespace as Kubernetes names them (a DNS label), a service account name (a DNS
 * subdomain: labels joined by '.').
 */
export const SPIFFE_ID = /^spiffe:\/\/([a-z0-9._-]{1,255})\/ns\/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\/sa\/([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$/;
