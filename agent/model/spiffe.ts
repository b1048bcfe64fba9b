// SPIFFE identities as sockmesh names them: spiffe://<trust domain>/ns/<namespace>/sa/<service account>, the form
// Istio and ztunnel put in a workload certificate's URI SAN. What is valid is mesh.ts's SPIFFE_ID (one definition);
// this adds the parts and an error that says which part is wrong, for the CA and the certificate manager, where a
// silent mismatch would be an authorization bug.
import { SPIFFE_ID } from './mesh.js';

export interface SpiffeId {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

/** Why `td` is not a usable trust domain, or undefined when it is. */
export function trustDomainProblem(td: string): string | undefined {
  if (!SPIFFE_ID.test(`spiffe://${td}/ns/a/sa/a`)) return `trust domain ${JSON.stringify(td)}: expected lower-case letters, digits, '.', '-' or '_' (1-255)`;
  return undefined;
}

export function formatSpiffeId(id: SpiffeId): string {
  return `spiffe://${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/** Parse `spiffe://<td>/ns/<ns>/sa/<sa>`; throws an Error naming the part that is wrong. */
export function parseSpiffeId(uri: string): SpiffeId {
  const m = SPIFFE_ID.exec(uri);
  if (m) return { trustDomain: m[1]!, namespace: m[2]!, serviceAccount: m[4]! };
  const parts = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(uri);
  const what = JSON.stringify(uri);
  if (!parts) throw new Error(`identity ${what}: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>`);
  const td = trustDomainProblem(parts[1]!);
  if (td) throw new Error(`identity ${what}: ${td}`);
  if (!SPIFFE_ID.test(`spiffe://a/ns/${parts[2]}/sa/a`)) throw new Error(`identity ${what}: namespace ${JSON.stringify(parts[2])} is not a Kubernetes namespace name (a DNS label)`);
  throw new Error(`identity ${what}: service account ${JSON.stringify(parts[3])} is not a Kubernetes name`);
}
