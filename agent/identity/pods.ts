// Local pods: which addresses belong to workloads on this node. The fast path pairs two sockets only when the peer's
// address is local (sm_local_addrs), so this is what puts pod <-> pod connections on it. Facts come from sources, each
// replacing its own set whole: the meshed cgroup tree read from procfs (ProcPodScanner, on podns.ts's walk), later
// the Kubernetes API (the node's pods and their IPs). An address is local while any source names it.
import { discoverPods, netnsAddresses, type DiscoverOptions } from './podns.js';

/** A pod as a source sees it: one network namespace and its addresses. */
export interface LocalPod {
  /** unique within its source: a netns inode (procfs), a pod UID (Kubernetes) */
  id: string;
  /** for people: the cgroup path under the meshed one (procfs), namespace/name (Kubernetes) */
  name: string;
  /** unicast addresses of the pod, IPv4 dotted or IPv6 compressed; loopback and link-local never */
  addresses: string[];
}

/** The pods on this node, by source. */
export class LocalPods {
  private readonly bySource = new Map<string, readonly LocalPod[]>();
  private readonly listeners = new Set<() => void>();
  private addrs: ReadonlySet<string> = new Set();

  /** Replace what `source` knows; listeners hear of it only when the set of addresses changed. */
  set(source: string, pods: readonly LocalPod[]): void {
    this.bySource.set(source, pods);
    this.recompute();
  }

  /** Forget a source (it stopped). */
  drop(source: string): void {
    if (this.bySource.delete(source)) this.recompute();
  }

  /** Every local pod address, of all sources. */
  addresses(): ReadonlySet<string> {
    return this.addrs;
  }

  /** The pods of every source (a pod two sources know is listed by each). */
  pods(): { source: string; pod: LocalPod }[] {
    return [...this.bySource].flatMap(([source, ps]) => ps.map((pod) => ({ source, pod })));
  }

  /** Called after each change of addresses(); returns the unsubscribe. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private recompute(): void {
    const next = new Set<string>();
    for (const ps of this.bySource.values()) for (const p of ps) for (const a of p.addresses) next.add(a);
    if (next.size === this.addrs.size && [...next].every((a) => this.addrs.has(a))) return;
    this.addrs = next;
    for (const fn of this.listeners) fn();
  }
}

export interface ScanStats {
  /** network namespaces found (hostNetwork ones included) */
  namespaces: number;
  ms: number;
}

/**
 * The pods of the meshed cgroup tree as procfs shows them (podns.ts's walk: one per network namespace, found through
 * the inode of /proc/<pid>/ns/net) with that namespace's addresses (/proc/<pid>/net/fib_trie and if_inet6, read through
 * one of its processes: no setns). hostNetwork pods are left out: their addresses are the node's, known anyway.
 */
export class ProcPodScanner {
  last: ScanStats = { namespaces: 0, ms: 0 };

  constructor(private readonly meshedCgroup: string, private readonly opts: DiscoverOptions = {}) {}

  scan(): LocalPod[] {
    const t0 = performance.now();
    const found = discoverPods(this.meshedCgroup, this.opts);
    const pods = found.filter((p) => !p.hostNetwork)
      .map((p) => ({ id: String(p.netns), name: p.name, addresses: netnsAddresses(p.pid, this.opts.proc) }));
    this.last = { namespaces: found.length, ms: performance.now() - t0 };
    return pods;
  }
}

export interface WatcherOptions {
  intervalMs: number;
  /** after each scan, whatever changed (the agent checks the node's own addresses then) */
  afterScan?: () => void;
  onError?: (e: Error) => void;
}

/**
 * Scan on a timer and feed `pods` as the source 'procfs'. A pod is a network namespace with an address: it shows up
 * at the first scan after a process of it is in the tree and the address is there, so within one interval. Stopping
 * keeps what was found (a restarting agent leaves the datapath as it is; the next one scans again).
 */
export class ProcPodWatcher {
  private timer?: NodeJS.Timeout;

  constructor(private readonly scanner: ProcPodScanner, private readonly pods: LocalPods, private readonly o: WatcherOptions) {}

  start(): void {
    this.tick();
    this.timer = setInterval(() => this.tick(), this.o.intervalMs);
    this.timer.unref();
  }

  tick(): void {
    try {
      this.pods.set('procfs', this.scanner.scan());
      this.o.afterScan?.();
    } catch (e) {
      this.o.onError?.(e as Error);
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
