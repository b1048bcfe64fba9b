// The pods' network namespaces, for acting in them and naming them (UDP sockets destroyed in each, the node address their
// routes go to, pod names in meshctl). A walker of the same tree keeping the pods' addresses for the fast path
// (sm_local_addrs) is meant to share this one (discoverPods, netnsAddresses) rather than walk again.
// Local pods, found without being told: the processes in the meshed cgroup tree, grouped by network namespace, as a
// node's pods are (a pod = a network namespace with a veth into the node, and a cgroup of its own under the kubelet's
// tree). Everything is read from /proc and the cgroup tree, nothing is entered:
//   - <cgroup>/cgroup.procs: the processes of each cgroup below the meshed one (the meshed cgroup's own processes, the
//     agent or `meshctl exec`, are not pods);
//   - /proc/<pid>/ns/net: its network namespace, by inode (`net:[4026532...]`); one process per namespace is kept, its
//     /proc/<pid>/ns/net is the handle for native code that must act in the namespace (sock_diag, netns cookie);
//   - /proc/<pid>/net/{fib_trie,if_inet6}: the namespace's own addresses; /proc/<pid>/net/{route,ipv6_route} its routes.
// A pod's name is its cgroup path below the meshed cgroup (`kubepods-<ns>/<pod>` in the node lab): the deepest cgroup
// holding every process of the namespace (a pod's containers are sibling cgroups under the pod's). A process in the
// node's own namespace (hostNetwork) is a pod of its own cgroup. The Kubernetes source will name pods from the API.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join, relative } from 'node:path';

export interface PodNs {
  /** the pod's cgroup below the meshed cgroup ('kubepods-lab/pod-a'): namespace/pod as the tree names it */
  name: string;
  /** its cgroup directory */
  cgroup: string;
  /** inode of its network namespace */
  netns: bigint;
  /** a process in that namespace: /proc/<pid>/ns/net is the namespace's handle */
  pid: number;
  /** /proc/<pid>/ns/net */
  netnsPath: string;
  /** in the node's (the caller's) network namespace: a hostNetwork pod */
  hostNetwork: boolean;
}

export interface DiscoverOptions {
  /** /proc (tests give a fake tree) */
  proc?: string;
  /** cgroups visited at most (the walk is bounded) */
  maxCgroups?: number;
  /** the caller's network namespace inode (default: /proc/self/ns/net's) */
  ownNetns?: bigint;
}

const NETNS_RE = /^net:\[(\d+)\]$/;

/** The inode of a process's network namespace, or null (the process is gone, or a kernel thread). */
export function netnsOf(pid: number | 'self', proc = '/proc'): bigint | null {
  try {
    const m = NETNS_RE.exec(readlinkSync(join(proc, String(pid), 'ns', 'net')));
    return m ? BigInt(m[1]!) : null;
  } catch {
    return null;
  }
}

/** Every cgroup below `meshed` (not itself) with the pids in it, depth first; bounded by `max` cgroups. */
function cgroupProcs(meshed: string, max: number): { dir: string; pids: number[] }[] {
  const out: { dir: string; pids: number[] }[] = [];
  let seen = 0;
  const visit = (dir: string, top: boolean): void => {
    if (++seen > max) return;
    if (!top) {
      let pids: number[] = [];
      try {
        pids = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
      } catch { /* gone since the listing */ }
      if (pids.length) out.push({ dir, pids });
    }
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) visit(join(dir, e.name), false);
  };
  visit(meshed, true);
  return out;
}

/** The deepest directory holding every one of `dirs`. */
function commonDir(dirs: string[]): string {
  let parts = dirs[0]!.split('/');
  for (const d of dirs.slice(1)) {
    const q = d.split('/');
    let i = 0;
    while (i < parts.length && i < q.length && parts[i] === q[i]) i++;
    parts = parts.slice(0, i);
  }
  return parts.join('/');
}

/**
 * The pods of the meshed cgroup tree: one per network namespace other than the caller's (named by the deepest cgroup
 * holding all its processes), and one per cgroup whose processes are in the caller's namespace (hostNetwork). Sorted
 * by name. Processes that exit during the walk are skipped.
 */
export function discoverPods(meshed: string, opts: DiscoverOptions = {}): PodNs[] {
  const proc = opts.proc ?? '/proc';
  const own = opts.ownNetns ?? netnsOf('self', proc);
  const byNetns = new Map<bigint, { pid: number; dirs: string[] }>();
  const host: PodNs[] = [];
  const base = meshed.replace(/\/+$/, '');
  for (const { dir, pids } of cgroupProcs(base, opts.maxCgroups ?? 10_000)) {
    let hostPid = 0;
    for (const pid of pids) {
      const ns = netnsOf(pid, proc);
      if (ns === null) continue;
      if (ns === own) {
        hostPid ||= pid;
        continue;
      }
      const g = byNetns.get(ns);
      if (!g) byNetns.set(ns, { pid, dirs: [dir] });
      else if (!g.dirs.includes(dir)) g.dirs.push(dir);
    }
    if (hostPid && own !== null) {
      host.push({ name: relative(base, dir), cgroup: dir, netns: own, pid: hostPid, netnsPath: join(proc, String(hostPid), 'ns', 'net'), hostNetwork: true });
    }
  }
  const pods: PodNs[] = [...byNetns].map(([netns, g]) => {
    const dir = commonDir(g.dirs);
    // processes of one namespace in unrelated subtrees: named by the first one's cgroup (never the meshed cgroup)
    const cgroup = dir.length > base.length ? dir : g.dirs[0]!;
    return { name: relative(base, cgroup), cgroup, netns, pid: g.pid, netnsPath: join(proc, String(g.pid), 'ns', 'net'), hostNetwork: false };
  });
  return [...pods, ...host].sort((a, b) => a.name.localeCompare(b.name) || Number(a.netns - b.netns));
}

/** The pods' network namespaces other than the caller's, one entry each (the first pod's handle). */
export function podNetnses(pods: PodNs[]): PodNs[] {
  const seen = new Set<bigint>();
  return pods.filter((p) => !p.hostNetwork && !seen.has(p.netns) && (seen.add(p.netns), true));
}

/** A pod by name: the whole name, or its last part when only one pod has it ('pod-a' for 'kubepods-lab/pod-a'). */
export function findPod(pods: PodNs[], name: string): PodNs | undefined {
  const exact = pods.find((p) => p.name === name);
  if (exact) return exact;
  const tail = pods.filter((p) => p.name.split('/').pop() === name);
  return tail.length === 1 ? tail[0] : undefined;
}

// ---- a namespace's addresses and routes, from /proc/<pid>/net ----

const hex4 = (h: string): string => {
  // /proc/net/route prints the address as a host-order (little-endian here) u32 in hex
  const v = parseInt(h, 16);
  return [v & 255, (v >>> 8) & 255, (v >>> 16) & 255, v >>> 24].join('.');
};

const hex6 = (h: string): string => {
  const groups: string[] = [];
  for (let i = 0; i < 32; i += 4) groups.push(h.slice(i, i + 4));
  // the WHATWG URL parser writes an IPv6 host in its canonical (RFC 5952) form
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
};

const readOr = (path: string): string => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
};

const usable4 = (a: string): boolean => !a.startsWith('127.') && a !== '0.0.0.0';
const usable6 = (a: string): boolean => a !== '::1' && a !== '::' && !/^fe[89ab]/.test(a) && !a.startsWith('::ffff:');

/** The network namespace's own addresses (v4 from fib_trie's local /32s, v6 from if_inet6), loopback and link-local left out. */
export function netnsAddresses(pid: number, proc = '/proc'): string[] {
  const out = new Set<string>();
  let last = '';
  for (const line of readOr(join(proc, String(pid), 'net', 'fib_trie')).split('\n')) {
    const leaf = /\|-- (\d+\.\d+\.\d+\.\d+)$/.exec(line);
    if (leaf) last = leaf[1]!;
    else if (/\/32 host LOCAL/.test(line) && usable4(last)) out.add(last);
  }
  for (const line of readOr(join(proc, String(pid), 'net', 'if_inet6')).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0]?.length === 32 && usable6(hex6(f[0]))) out.add(hex6(f[0]));
  }
  return [...out];
}

/**
 * Where the namespace sends traffic for the node: each route's gateway, and the destinations of its host routes without
 * one (a /32 or /128 on a device, as a routed CNI gives the node address). Loopback, link-local and unspecified
 * addresses are left out (a link-local gateway cannot be listened on without its interface).
 */
export function netnsGateways(pid: number, proc = '/proc'): string[] {
  const out = new Set<string>();
  const r4 = readOr(join(proc, String(pid), 'net', 'route')).split('\n').slice(1);
  for (const line of r4) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [dest, gw, flags, mask] = [f[1]!, f[2]!, parseInt(f[3]!, 16), f[7]!];
    if (!(flags & 1)) continue; // RTF_UP
    if (gw !== '00000000') out.add(hex4(gw));
    else if (mask === 'FFFFFFFF') out.add(hex4(dest));
  }
  for (const line of readOr(join(proc, String(pid), 'net', 'ipv6_route')).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [dest, plen, hop, flags, dev] = [f[0]!, parseInt(f[1]!, 16), f[4]!, parseInt(f[8]!, 16), f[9]!];
    if (!(flags & 1) || dev === 'lo' || (flags & 0x80000000) !== 0) continue; // RTF_UP; not local-table (RTF_LOCAL) routes
    if (!/^0+$/.test(hop)) out.add(hex6(hop));
    else if (plen === 128) out.add(hex6(dest));
  }
  return [...out].filter((a) => (a.includes(':') ? usable6(a) : usable4(a)));
}

/** The caller's own addresses (the node's, seen from the agent's namespace). */
export function nodeAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address.toLowerCase());
  return out;
}

/**
 * The node address pods reach the node on, per family: of the addresses the pods' routes go to (netnsGateways), those
 * that are the node's own, the one most pods use (ties: the lowest). Empty when no pod routes to a node address
 * (no pod yet, or a CNI whose gateway is not a node address, such as Calico's 169.254.1.1: then --proxy-node-address).
 */
export function podGatewayAddress(pods: PodNs[], node: Set<string> = nodeAddresses(), proc = '/proc'): { v4: string; v6: string } {
  const votes = new Map<string, number>();
  for (const p of podNetnses(pods)) {
    for (const a of netnsGateways(p.pid, proc)) if (node.has(a)) votes.set(a, (votes.get(a) ?? 0) + 1);
  }
  const best = (v6: boolean): string => [...votes].filter(([a]) => a.includes(':') === v6)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0], 'en', { numeric: true }))[0]?.[0] ?? '';
  return { v4: best(false), v6: best(true) };
}

/** The address part of 'a.b.c.d:port' or '[v6]:port'. */
const hostOf = (hostport: string): string => (hostport.startsWith('[') ? hostport.slice(1, hostport.indexOf(']')) : hostport.slice(0, hostport.lastIndexOf(':')));
const loopback = (a: string): boolean => a.startsWith('127.') || a === '::1';

/**
 * Pod names for what the kernel maps hold: a socket by its netns cookie (loopback connections inside a pod) or its
 * address (a pod's own), an address (a backend) by the pod that has it. 'node' for the node's own namespace and
 * addresses (hostNetwork pods share them: which one cannot be told), '' for anything else.
 */
export class PodNames {
  private readonly byAddress = new Map<string, string>();
  private readonly byCookie = new Map<string, string>();

  /** netnsCookie: a namespace's cookie from its /proc/<pid>/ns/net path (native), for loopback sockets in pods */
  constructor(pods: PodNs[], opts: { netnsCookie?: (path: string) => bigint; ownCookie?: bigint; node?: Set<string>; proc?: string } = {}) {
    for (const a of opts.node ?? nodeAddresses()) if (!loopback(a)) this.byAddress.set(a, 'node');
    if (opts.ownCookie !== undefined) this.byCookie.set(String(opts.ownCookie), 'node');
    for (const p of podNetnses(pods)) {
      for (const a of netnsAddresses(p.pid, opts.proc)) this.byAddress.set(a, p.name);
      if (!opts.netnsCookie) continue;
      try {
        this.byCookie.set(String(opts.netnsCookie(p.netnsPath)), p.name);
      } catch { /* the pod is gone since the walk */ }
    }
  }

  /** The pod an address belongs to ('' when none is known). */
  ofAddress(address: string): string {
    return this.byAddress.get(address.toLowerCase()) ?? '';
  }

  /** The pod a socket is in, from its netns cookie ('0': none in the key) and its local 'addr:port'. */
  ofSocket(netnsCookie: string, local: string): string {
    const host = hostOf(local);
    if (!loopback(host)) return this.ofAddress(host) || this.byCookie.get(netnsCookie) || '';
    return this.byCookie.get(netnsCookie) ?? '';
  }

  /** The pod a socket's peer is in: its remote address's, or (loopback) the socket's own. */
  peerOf(netnsCookie: string, local: string, remote: string): string {
    const host = hostOf(remote);
    return loopback(host) ? this.ofSocket(netnsCookie, local) : this.ofAddress(host);
  }
}

/** What labelSockets needs of a SOCKHASH entry (datapath/inspect.ts SocketReport). */
export interface SocketLike { netnsCookie: string; local: string; remote: string; backendId: number; tcpOnly: boolean; active: boolean }

/** Each socket with the pod it is in (pod) and the pod of its peer (peerPod), where known. */
export function labelSockets<T extends SocketLike>(list: T[], names: PodNames): (T & { pod?: string; peerPod?: string })[] {
  return list.map((s) => {
    const pod = names.ofSocket(s.netnsCookie, s.local), peer = names.peerOf(s.netnsCookie, s.local, s.remote);
    return { ...s, ...(pod ? { pod } : {}), ...(peer ? { peerPod: peer } : {}) };
  });
}

/**
 * Each frontend's backends with the pod that has the backend's address (pod, where known) and how many connections to
 * it are on the fast path now (fastPath: connecting sockets in the SOCKHASH with that backend, not pinned to TCP).
 */
export function labelBackends<F extends { backends: { id: number; address: string }[] }>(frontends: F[], sockets: SocketLike[], names: PodNames): F[] {
  const fast = new Map<number, number>();
  for (const s of sockets) if (s.active && !s.tcpOnly && s.backendId) fast.set(s.backendId, (fast.get(s.backendId) ?? 0) + 1);
  return frontends.map((f) => ({
    ...f,
    backends: f.backends.map((b) => {
      const pod = names.ofAddress(b.address);
      return { ...b, ...(pod ? { pod } : {}), fastPath: fast.get(b.id) ?? 0 };
    }),
  }));
}

/**
 * PodNames for the pods of a meshed cgroup now; `cookies` (the native addon) gives namespaces' cookies for loopback
 * sockets in pods. Never throws: what cannot be read is simply not named.
 */
export function podNamesOf(meshed: string, cookies?: { netnsCookie(fdOrNetns?: number | string): bigint }): PodNames {
  let pods: PodNs[] = [];
  let own: bigint | undefined;
  try { pods = discoverPods(meshed); } catch { /* no tree: no pods */ }
  try { own = cookies?.netnsCookie(-1); } catch { /* no addon */ }
  return new PodNames(pods, { ...(cookies ? { netnsCookie: (p: string) => cookies.netnsCookie(p) } : {}), ...(own !== undefined ? { ownCookie: own } : {}) });
}
