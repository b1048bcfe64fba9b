// The mesh settings from Kubernetes (issue 13), for `sockmesh-controlplane serve --kubernetes`: what a config file says
// in `nodes`, `workloads` and `mtls`, from the API server's objects.
//
//  - Nodes -> nodes[]: the node's name (the agents' --node-id) and its InternalIP addresses (one per family), where its
//    agent's tunnel end listens (the DaemonSet runs on the host network), port 15008.
//  - Pods -> workloads: one per (namespace, service account, node), as Istio's identities are per service account:
//    identity spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccountName>, node spec.nodeName, addresses the pods'
//    status.podIPs. No cgroups: the node's agent finds its own pods' (--kube-pods). Finished pods, pods not scheduled
//    yet or without an address, and hostNetwork pods (their address is the node's, not theirs) are left out.
//  - Modes, as Istio ambient labels a namespace (istio.io/dataplane-mode) and as PeerAuthentication sets one: the label
//    `sockmesh.io/mtls: strict|permissive|off` on a Namespace, and the annotation `sockmesh.io/mtls` on a Service (its
//    backends' ports, over the namespace's). The mesh-wide mode is permissive (Istio's default). A bad value is an
//    issue (the object's mode is left unset) and reported like any other.
// Pure, no I/O.
import { canonicalAddress } from '../agent/model/address.js';
import { MTLS_MODES } from '../agent/model/meshconfig.js';
import type { MeshNode, MtlsMode, MtlsPolicy, Workload } from '../agent/model/types.js';
import { spiffeId } from './pods.js';
import { hashed, isDnsLabel } from './translate-names.js';
import type { TranslateIssue } from './translate-types.js';
import type { KNode, KPod, KService } from './types.js';

export const MTLS_LABEL = 'sockmesh.io/mtls';

export interface KNamespace {
  metadata: { name?: string; labels?: Record<string, string> };
}

export interface MeshTranslation {
  nodes: MeshNode[];
  workloads: Workload[];
  mtls: MtlsPolicy;
  issues: TranslateIssue[];
}

/** A node's tunnel end: its InternalIP addresses, IPv4 first, one per family. */
function nodeOf(n: KNode, issues: TranslateIssue[]): MeshNode | undefined {
  const name = n.metadata.name ?? '';
  const byFamily = new Map<number, string>();
  for (const a of n.status?.addresses ?? []) {
    if (a.type !== 'InternalIP') continue;
    const c = canonicalAddress(a.address);
    if (c && !byFamily.has(c.family)) byFamily.set(c.family, c.address);
  }
  if (byFamily.size === 0) {
    issues.push({ object: `Node ${name}`, path: 'status.addresses', message: 'has no InternalIP: no tunnel end is known for it (its pods are reached without the tunnel)' });
    return undefined;
  }
  return { name, addresses: [4, 6].map((f) => byFamily.get(f)).filter((a): a is string => a !== undefined) };
}

/** The workload name of (namespace, service account, node): a DNS label, distinct for distinct triples. */
export function nodeWorkloadName(namespace: string, serviceAccount: string, node: string): string {
  return hashed([namespace, serviceAccount, node], `${namespace}/${serviceAccount}/${node}`);
}

export function modeOf(v: string | undefined, object: string, path: string, issues: TranslateIssue[]): MtlsMode | undefined {
  if (v === undefined) return undefined;
  if ((MTLS_MODES as readonly string[]).includes(v)) return v as MtlsMode;
  issues.push({ object, path, message: `must be one of ${MTLS_MODES.join(', ')}, got ${JSON.stringify(v)} (left unset)` });
  return undefined;
}

export function translateMesh(
  v: { nodes: Iterable<KNode>; pods: Iterable<KPod>; namespaces: Iterable<KNamespace> },
  opts: { trustDomain: string },
): MeshTranslation {
  const issues: TranslateIssue[] = [];
  const nodes: MeshNode[] = [];
  for (const n of v.nodes) {
    const m = nodeOf(n, issues);
    if (m) nodes.push(m);
  }
  nodes.sort((a, b) => (a.name < b.name ? -1 : 1));
  const groups = new Map<string, Workload>();
  for (const p of v.pods) {
    const ns = p.metadata.namespace ?? '';
    const node = p.spec?.nodeName;
    const phase = p.status?.phase;
    if (!ns || !node || p.spec?.hostNetwork || phase === 'Succeeded' || phase === 'Failed') continue;
    const sa = p.spec?.serviceAccountName || 'default';
    const addresses: string[] = [];
    for (const ip of p.status?.podIPs?.length ? p.status.podIPs.map((x) => x?.ip) : [p.status?.podIP]) {
      const c = typeof ip === 'string' ? canonicalAddress(ip) : null;
      if (c) addresses.push(c.address);
    }
    if (addresses.length === 0) continue; // not running yet: nothing to reach
    const name = nodeWorkloadName(ns, sa, node);
    let w = groups.get(name);
    if (!w) groups.set(name, (w = { name, cgroups: [], identity: spiffeId(opts.trustDomain, ns, sa), node, addresses: [] }));
    for (const a of addresses) if (!w.addresses!.includes(a)) w.addresses!.push(a);
  }
  // A pod IP reused by a new pod while the old one is still listed (terminating): the address is the newest one's,
  // so each address is one workload's (the agent refuses two owners).
  const owner = new Map<string, string>();
  const workloads = [...groups.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const w of workloads) {
    w.addresses = w.addresses!.filter((a) => {
      if (!owner.has(a)) return owner.set(a, w.name), true;
      issues.push({ object: `Pod ${w.identity}`, path: 'status.podIPs', message: `address ${a} is also a pod's of workload ${owner.get(a)}: left to that one` });
      return false;
    }).sort();
  }
  const namespaces: Record<string, MtlsMode> = {};
  for (const n of v.namespaces) {
    const name = n.metadata.name ?? '';
    const m = modeOf(n.metadata.labels?.[MTLS_LABEL], `Namespace ${name}`, `metadata.labels["${MTLS_LABEL}"]`, issues);
    if (m && isDnsLabel(name)) namespaces[name] = m;
  }
  return { nodes, workloads: workloads.filter((w) => w.addresses!.length > 0), mtls: { mode: 'permissive', namespaces }, issues };
}

/** A Service's own mode (the annotation), or undefined. */
export function serviceMode(s: KService, issues: TranslateIssue[]): MtlsMode | undefined {
  return modeOf(s.metadata.annotations?.[MTLS_LABEL], `Service ${s.metadata.namespace ?? ''}/${s.metadata.name ?? ''}`, `metadata.annotations["${MTLS_LABEL}"]`, issues);
}
