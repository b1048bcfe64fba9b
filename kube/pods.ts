// Pods (this node's, from a watch with fieldSelector=spec.nodeName=<node>) -> what the agent needs of them: the
// pod's identity (spiffe://<trust domain>/ns/<namespace>/sa/<service account>), its addresses (status.podIPs: the
// fast path's local pods), and its cgroup under the cgroup2 mount, where the kubelet puts it:
//
//   systemd driver:   /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid, '-' as '_'>.slice
//                     /kubepods.slice/kubepods-pod<uid, '-' as '_'>.slice                  (Guaranteed: no QoS level)
//   cgroupfs driver:  /kubepods/<qos>/pod<uid>
//                     /kubepods/pod<uid>                                                 (Guaranteed)
//
// with <qos> 'burstable' or 'besteffort' (the kubelet's pkg/kubelet/cm/pod_container_manager, cgroup_manager_linux:
// systemd escapes '-' in a slice name as '_'). The containers' cgroups are below the pod's, so one cgroup per pod
// names every process of it. The model's workloads are per identity (one service account's pods on this node):
// that is what L7 authorization rules name, and many pods share it. Pure, no I/O.
import { canonicalAddress } from '../agent/model/address.js';
import { formatSpiffeId } from '../agent/model/spiffe.js';
import type { Workload } from '../agent/model/types.js';
import { modelServiceName } from './translate-names.js';
import type { TranslateIssue } from './translate-types.js';
import type { KPod, KResources } from './types.js';

export type CgroupDriver = 'systemd' | 'cgroupfs';
export type QosClass = 'Guaranteed' | 'Burstable' | 'BestEffort';

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

export interface PodOptions {
  trustDomain: string;
  driver: CgroupDriver;
  /**
   * Where the kubelet's tree starts under the cgroup2 mount (its --cgroup-root; '/' by default, and under systemd
   * always '/'): '/' gives /kubepods.slice/..., '/lab' gives /lab/kubepods/...
   */
  cgroupRoot?: string;
}

/** One pod as the agent uses it; `id`, `name` and `addresses` are what identity/pods.ts's LocalPod needs. */
export interface PodWorkload {
  /** the pod's UID */
  id: string;
  /** "<namespace>/<name>" */
  name: string;
  /** canonical addresses of status.podIPs; none for a hostNetwork pod (its addresses are the node's) */
  addresses: string[];
  identity: string;
  /** the model's workload name of its identity (see workloadName) */
  workload: string;
  qos: QosClass;
  /** the pod's cgroup path under the cgroup2 mount */
  cgroup: string;
  hostNetwork: boolean;
}

/** spiffe://<trust domain>/ns/<namespace>/sa/<service account> */
export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return formatSpiffeId({ trustDomain, namespace, serviceAccount });
}

/**
 * Where the kubelet's pod tree is, from the agent's meshed cgroup (--cgroup, a path under the cgroup2 mount): the
 * DaemonSet meshes the kubelet's own tree, so a meshed cgroup named `kubepods.slice` says the systemd driver and
 * `kubepods` the cgroupfs one, with the kubelet's --cgroup-root its parent. Any other meshed cgroup (a test's, or
 * a node whose kubelet runs under a --cgroup-root of its own that is meshed whole) holds the kubelet's tree below it,
 * laid out by `driver` (which the name cannot tell).
 */
export function kubeletCgroups(meshedCgroup: string, driver: CgroupDriver): { driver: CgroupDriver; cgroupRoot: string } {
  const parts = meshedCgroup.split('/').filter((p) => p !== '');
  const last = parts[parts.length - 1];
  const parent = `/${parts.slice(0, -1).join('/')}`;
  if (last === 'kubepods.slice') return { driver: 'systemd', cgroupRoot: parent };
  if (last === 'kubepods') return { driver: 'cgroupfs', cgroupRoot: parent };
  return { driver, cgroupRoot: `/${parts.join('/')}` };
}

/**
 * The model's workload name for a service account: a DNS label (the model's names are), the same injective mapping
 * as services ('<namespace>--<serviceaccount>', hashed when that does not fit; see translate-names.ts).
 */
export function workloadName(namespace: string, serviceAccount: string): string {
  return modelServiceName(namespace, serviceAccount);
}

/** A resource quantity ('100m', '1Gi', '0.5', '2') as a number (cores, bytes); NaN when it is none. */
export function quantity(v: string | number | undefined): number {
  if (v === undefined) return NaN;
  if (typeof v === 'number') return v;
  const m = /^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/.exec(v.trim());
  if (!m) return NaN;
  const mul: Record<string, number> = {
    m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
  };
  return Number(m[1]) * (m[2] ? mul[m[2]]! : 1);
}

const QOS_RESOURCES = ['cpu', 'memory'] as const;

/**
 * The pod's QoS class: status.qosClass (set by the API server at creation), else computed as the kubelet's GetPodQOS
 * does: no cpu/memory request or limit anywhere -> BestEffort; every container with cpu and memory limits, and
 * requests (when given) equal to them -> Guaranteed; otherwise Burstable.
 */
export function qosClassOf(pod: KPod): QosClass {
  const given = pod.status?.qosClass;
  if (given === 'Guaranteed' || given === 'Burstable' || given === 'BestEffort') return given;
  const all: (KResources | undefined)[] = [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])].map((c) => c.resources);
  let any = false;
  let guaranteed = all.length > 0;
  for (const r of all) {
    for (const res of QOS_RESOURCES) {
      const req = quantity(r?.requests?.[res]);
      const lim = quantity(r?.limits?.[res]);
      if ((req > 0) || (lim > 0)) any = true;
      if (!(lim > 0) || (!Number.isNaN(req) && req !== lim)) guaranteed = false;
    }
  }
  if (!any) return 'BestEffort';
  return guaranteed ? 'Guaranteed' : 'Burstable';
}

/** The pod's cgroup path under the cgroup2 mount, where the kubelet with `driver` puts it. */
export function podCgroupPath(uid: string, qos: QosClass, driver: CgroupDriver, cgroupRoot = '/'): string {
  const root = cgroupRoot.replace(/\/+$/, '');
  const level = qos === 'Guaranteed' ? undefined : qos.toLowerCase();
  if (driver === 'systemd') {
    const id = uid.replace(/-/g, '_');
    return level
      ? `${root}/kubepods.slice/kubepods-${level}.slice/kubepods-${level}-pod${id}.slice`
      : `${root}/kubepods.slice/kubepods-pod${id}.slice`;
  }
  return level ? `${root}/kubepods/${level}/pod${uid}` : `${root}/kubepods/pod${uid}`;
}

const UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** One pod, or undefined (with the reason in `issues`) when it has no usable UID, name or is finished. */
export function podWorkload(pod: KPod, opts: PodOptions, issues: TranslateIssue[]): PodWorkload | undefined {
  const ns = pod.metadata.namespace ?? '';
  const name = pod.metadata.name ?? '';
  const object = `Pod ${ns}/${name}`;
  const phase = pod.status?.phase;
  if (phase === 'Succeeded' || phase === 'Failed') return undefined; // no processes left; its IP may be reused already
  const uid = pod.metadata.uid ?? '';
  if (!UID.test(uid)) {
    issues.push({ object, path: 'metadata.uid', message: `must be a UUID (the kubelet names the pod's cgroup after it), got ${JSON.stringify(uid)}; pod left out` });
    return undefined;
  }
  if (!ns || !name) {
    issues.push({ object, path: 'metadata', message: 'needs a namespace and a name; pod left out' });
    return undefined;
  }
  const sa = pod.spec?.serviceAccountName || 'default';
  const hostNetwork = pod.spec?.hostNetwork === true;
  const addresses: string[] = [];
  if (!hostNetwork) {
    const ips = pod.status?.podIPs?.length ? pod.status.podIPs.map((p) => p?.ip) : pod.status?.podIP ? [pod.status.podIP] : [];
    ips.forEach((ip, i) => {
      const a = typeof ip === 'string' ? canonicalAddress(ip) : null;
      if (!a) return void issues.push({ object, path: `status.podIPs[${i}].ip`, message: `must be an IP address, got ${JSON.stringify(ip ?? null)} (left out)` });
      if (!addresses.includes(a.address)) addresses.push(a.address);
    });
  }
  const qos = qosClassOf(pod);
  return {
    id: uid,
    name: `${ns}/${name}`,
    addresses,
    identity: spiffeId(opts.trustDomain, ns, sa),
    workload: workloadName(ns, sa),
    qos,
    cgroup: podCgroupPath(uid, qos, opts.driver, opts.cgroupRoot),
    hostNetwork,
  };
}

export interface PodsResult {
  /** by namespace/name */
  pods: PodWorkload[];
  /** the model's workloads: one per identity, its pods' cgroups and addresses (sorted), sorted by name */
  workloads: Workload[];
  /** workload name -> identity (spiffe://...) */
  identities: ReadonlyMap<string, string>;
  issues: TranslateIssue[];
}

/** This node's pods -> local pods, identities and the model's workloads. Deterministic order. */
export function translatePods(pods: Iterable<KPod>, opts: PodOptions): PodsResult {
  const issues: TranslateIssue[] = [];
  const out: PodWorkload[] = [];
  for (const p of pods) {
    const w = podWorkload(p, opts, issues);
    if (w) out.push(w);
  }
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const byWorkload = new Map<string, { identity: string; cgroups: string[]; addresses: string[] }>();
  for (const p of out) {
    let w = byWorkload.get(p.workload);
    if (!w) byWorkload.set(p.workload, (w = { identity: p.identity, cgroups: [], addresses: [] }));
    if (!w.cgroups.includes(p.cgroup)) w.cgroups.push(p.cgroup);
    // the same address twice (a pod replaced by one that got its IP back) is one address of the workload
    for (const a of p.addresses) if (!w.addresses.includes(a)) w.addresses.push(a);
  }
  const names = [...byWorkload.keys()].sort();
  return {
    pods: out,
    workloads: names.map((n) => {
      const w = byWorkload.get(n)!;
      return { name: n, cgroups: w.cgroups.sort(), identity: w.identity, ...(w.addresses.length ? { addresses: w.addresses.sort() } : {}) };
    }),
    identities: new Map(names.map((n) => [n, byWorkload.get(n)!.identity])),
    issues,
  };
}
