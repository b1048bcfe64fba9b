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

/**
 * A node agent's own identity, the certificate its tunnel server (HBONE, 15008) presents:
 * spiffe://<trust domain>/sockmesh/node/<node name>. One per node, so that a client checks it reached the node it
 * dialled (a shared "the agents' service account" identity would let any node's agent answer for any other). Its path
 * is outside /ns/..., so it can never be mistaken for a workload's identity (parseSpiffeId refuses it, an authz
 * principal pattern over workloads never means a node), and a workload can never be issued one.
 */
const NODE_SPIFFE_ID = /^spiffe:\/\/([a-z0-9._-]{1,255})\/sockmesh\/node\/([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)$/;

/** Why `node` cannot name a node identity (a Kubernetes node name: lower-case DNS subdomain), or undefined. */
export function nodeNameProblem(node: string): string | undefined {
  if (!/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(node)) return `node name ${JSON.stringify(node)}: expected a Kubernetes node name (lower-case letters, digits, '.' and '-', 1-253, starting and ending alphanumeric)`;
  return undefined;
}

/** spiffe://<td>/sockmesh/node/<node>; throws naming the part that is wrong. */
export function nodeSpiffeId(trustDomain: string, node: string): string {
  const problem = trustDomainProblem(trustDomain) ?? nodeNameProblem(node);
  if (problem) throw new Error(problem);
  return `spiffe://${trustDomain}/sockmesh/node/${node}`;
}

/** The trust domain and node of a node identity, or undefined when `uri` is not one (a workload's, or garbage). */
export function parseNodeSpiffeId(uri: string): { trustDomain: string; node: string } | undefined {
  const m = NODE_SPIFFE_ID.exec(uri);
  return m ? { trustDomain: m[1]!, node: m[2]! } : undefined;
}
