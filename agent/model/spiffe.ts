// SPIFFE identities as sockmesh names them: spiffe://<trust domain>/ns/<namespace>/sa/<service account>, the form
// Istio and ztunnel put in a workload certificate's URI SAN. Pure: the CA, the agent's certificate manager and the
// tunnel parse and build them the same way.

export interface SpiffeId {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

/** A trust domain: DNS-label characters (the SPIFFE spec's lower-case letters, digits, '.', '-', '_'). */
const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
/** A Kubernetes namespace or service account name (DNS-1123 subdomain, the stricter common form). */
const NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

/** Why `td` is not a usable trust domain, or undefined when it is. */
export function trustDomainProblem(td: string): string | undefined {
  if (!TRUST_DOMAIN.test(td)) return `trust domain ${JSON.stringify(td)}: expected lower-case letters, digits, '.', '-' or '_' (1-255)`;
  return undefined;
}

export function formatSpiffeId(id: SpiffeId): string {
  return `spiffe://${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/**
 * Parse `spiffe://<td>/ns/<ns>/sa/<sa>`. Throws an Error saying which part is wrong: identities arrive from configs,
 * CSRs and peers' certificates, and a silent mismatch there would be an authorization bug.
 */
export function parseSpiffeId(uri: string): SpiffeId {
  const m = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(uri);
  if (!m) throw new Error(`identity ${JSON.stringify(uri)}: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>`);
  const [, trustDomain, namespace, serviceAccount] = m as unknown as [string, string, string, string];
  const td = trustDomainProblem(trustDomain);
  if (td) throw new Error(`identity ${JSON.stringify(uri)}: ${td}`);
  if (!NAME.test(namespace)) throw new Error(`identity ${JSON.stringify(uri)}: namespace ${JSON.stringify(namespace)} is not a Kubernetes name`);
  if (!NAME.test(serviceAccount)) throw new Error(`identity ${JSON.stringify(uri)}: service account ${JSON.stringify(serviceAccount)} is not a Kubernetes name`);
  return { trustDomain, namespace, serviceAccount };
}
