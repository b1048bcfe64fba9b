// The kernel side of the agent: what this kernel can do (checked before anything is loaded, so a missing feature gets
// a clear message), and the Reconciler the apply transaction goes through (replaced by a fresh one that reads the
// kernel back after a failed apply).
import type { Model } from './model/types.js';
import type { Datapath } from './datapath/datapath.js';
import { Reconciler } from './datapath/reconcile.js';
import { StrictTables } from './datapath/strict.js';
import { strictEntries } from './model/strict.js';
import { native } from './datapath/native.js';
import { encode } from './datapath/abi.js';
import { discoverPods, podNetnses } from './identity/podns.js';
import { L7_FEATURES, REQUIRED_FEATURES, SOCKMAP_FEATURES, probeFeatures } from './datapath/features.js';
import { cgroup2Root, cgroupOf, ensureBpffs, ensureCgroup, isRootCgroup } from './datapath/cgroup.js';
import type { Logger } from './observe/log.js';
import type { KernelApplyResult, KernelTarget } from './state/apply.js';
import type { NamesSnapshot } from './state/statefile.js';

export interface KernelFeatures {
  /** every probed feature, 'group.name' -> present */
  features: Record<string, boolean>;
  /** what the L7 redirect needs and this kernel lacks (empty: L7 services get the proxy) */
  l7Missing: string[];
}

/** Probe the kernel; throws what it lacks of what the agent needs (and of the sockmap fast path, when asked for). */
export function checkKernelFeatures(sockmap: boolean): KernelFeatures {
  const flat = probeFeatures();
  const lacking = (list: [string, string][]): string[] => list.filter(([k]) => flat[k] === false).map(([, what]) => what);
  const missing = lacking(REQUIRED_FEATURES);
  if (missing.length) throw new Error(`this kernel lacks what sockmesh needs: ${missing.join('; ')}`);
  const fast = lacking(SOCKMAP_FEATURES);
  if (fast.length && sockmap) {
    throw new Error(`this kernel lacks what the sockmap fast path needs: ${fast.join('; ')} (run with --no-sockmap to balance at connect() only)`);
  }
  return { features: flat, l7Missing: lacking(L7_FEATURES) };
}

/**
 * Everything checked before anything is loaded: cgroup v2, root, the meshed cgroup (made if missing; the root cgroup
 * only when allowed; not the agent's own), the kernel's features, the bpffs. Returns the cgroup2 mount and the features.
 */
export function prepareHost(o: { cgroup: string; bpffs: string; allowRootCgroup: boolean; sockmap: boolean }): KernelFeatures & { root: string } {
  const root = cgroup2Root();
  if (!root) throw new Error('this kernel has no cgroup v2 mounted: sockmesh attaches its programs to a cgroup v2 directory');
  if (process.getuid?.() !== 0) throw new Error('sockmesh-agent must run as root (it loads BPF programs)');
  ensureCgroup(o.cgroup);
  if (isRootCgroup(o.cgroup, root) && !o.allowRootCgroup) {
    throw new Error(`refusing to attach to the root cgroup ${o.cgroup}: that would mesh every process on this machine; ` +
      `pass --allow-root-cgroup if you really mean it`);
  }
  // The kernel exempts the proxy's own cgroup from the L7 redirect (its upstream connections must not loop): an
  // agent in the meshed cgroup itself would exempt every application there from L7 routing and authorization.
  if (cgroupOf(process.pid, root).replace(/\/+$/, '') === o.cgroup.replace(/\/+$/, '')) {
    throw new Error(`the agent runs in the meshed cgroup ${o.cgroup} itself: every application there would bypass ` +
      `the L7 proxy (its cgroup is exempt from the redirect); run it in a child cgroup of it, or outside it`);
  }
  const features = checkKernelFeatures(o.sockmap);
  ensureBpffs(o.bpffs);
  return { root, ...features };
}

/** The loaded datapath's maps as the apply transaction sees them: a Reconciler, replaced on reset(). */
export class KernelReconciler implements KernelTarget {
  private r: Reconciler;
  private pods?: { at: number; paths: string[] };

  /** mTLS strict mode's destinations (sm_strict): they follow the model and the local pods alike */
  private readonly strict: StrictTables;
  /** the model last applied (the pods' strict entries are computed again from it when pods change) */
  private model?: Model;

  constructor(private readonly dp: Datapath, private readonly log: Logger) {
    this.r = this.make();
    this.strict = new StrictTables(dp.maps, native());
  }

  /** the local pods' addresses, as last told (syncLocal) */
  private podAddresses: ReadonlySet<string> = new Set();
  /** this node's name with the tunnel hand-over on (setNodeId) */
  private nodeId?: string;

  /** Hand connections to other nodes' workloads to the tunnel from the next apply (agent/tunnelhandover.ts). */
  /** this node's own addresses (pods and node) as last synced: never reached through the tunnel */
  localSet(): ReadonlySet<string> {
    return this.r.localSet();
  }

  setNodeId(nodeId: string | undefined): void {
    this.nodeId = nodeId;
    this.r.setNodeId(nodeId);
  }

  /** Take over what a previous agent left pinned, and learn the node's addresses. */
  adopt(): { frontends: number; backends: number } {
    const adopted = this.r.adopt();
    this.r.syncLocalAddresses(this.podAddresses);
    return adopted;
  }

  /**
   * The addresses whose sockets pair on the fast path: the node's (read again now: a hostNetwork process may serve
   * on one that came up later) and the local pods'. Writes only what changed; returns how many entries did.
   */
  syncLocal(pods: ReadonlySet<string>): number {
    this.podAddresses = pods;
    // Pods come and go between model updates: their cgroups' identities (L4 authorization) are looked up again too.
    const authz = this.r.authz?.resync();
    const local = this.r.syncLocalAddresses(pods) + (authz ? authz.written + authz.deleted : 0);
    const strict = this.syncStrict();
    return local + (strict ? strict.written + strict.deleted : 0);
  }

  apply(model: Model, changed?: ReadonlySet<string>): KernelApplyResult {
    const res = this.r.apply(model, changed);
    this.model = model;
    this.syncStrict();
    return res;
  }

  /** Strict mode's entries for the last model and the local pods (after sm_local_addrs: who counts as local). */
  private syncStrict(): ReturnType<StrictTables['sync']> | undefined {
    if (!this.model) return undefined;
    return this.strict.sync(strictEntries(this.model, this.podAddresses), this.podAddresses);
  }

  reset(): void {
    const fresh = this.make();
    fresh.adopt();
    fresh.syncLocalAddresses(this.podAddresses);
    fresh.setNodeId(this.nodeId);
    this.r.close();
    this.r = fresh;
  }

  /** service id -> name, as the kernel maps hold them */
  names(): ReadonlyMap<number, string> {
    return this.r.names();
  }

  /** the names with what tells whether they changed since a snapshot (for state.json) */
  namesSnapshot(): NamesSnapshot {
    const r = this.r;
    return { source: r, version: r.namesVersion(), names: () => r.names() };
  }

  /**
   * Destroy the UDP sockets that sockmesh balanced to a removed backend addr:port, in the agent's network namespace and
   * in every pod's (the namespaces of the meshed cgroup tree's processes): only a socket with an sm_revnat entry for
   * addr:port (its connect() was rewritten from a VIP to it) goes; one that merely talks to that address stays.
   */
  private destroyUdp(addr: string, port: number): number {
    const n = native();
    const revnat = this.dp.maps.fd('sm_revnat');
    const key = encode('sm_revnat_key', { cookie: 0n, addr, port });
    const balanced = (cookie: bigint): boolean => {
      key.writeBigUInt64LE(cookie, 0);
      return n.mapLookup(revnat, key) !== null;
    };
    let destroyed = 0;
    for (const netns of ['', ...this.podNetnsPaths()]) {
      try {
        destroyed += n.destroyUdpSockets(addr, port, netns, balanced);
      } catch (e) {
        // a pod gone since the walk: nothing of it to destroy
        if (netns && (e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        this.log.warn({ addr, port, netns: netns || 'the agent\'s', error: (e as Error).message }, 'could not destroy UDP sockets of a removed backend');
      }
    }
    return destroyed;
  }

  /** The pods' network namespaces, walked again at most every 500 ms (a reap destroys for many backends at once). */
  private podNetnsPaths(): string[] {
    const now = Date.now();
    if (!this.pods || now - this.pods.at > 500) {
      let paths: string[] = [];
      try {
        paths = podNetnses(discoverPods(this.dp.opts.cgroup)).map((p) => p.netnsPath);
      } catch (e) {
        this.log.warn({ cgroup: this.dp.opts.cgroup, error: (e as Error).message }, 'could not list the pods\' network namespaces');
      }
      this.pods = { at: now, paths };
    }
    return this.pods.paths;
  }

  private make(): Reconciler {
    const n = native();
    const root = cgroup2Root();
    return new Reconciler(this.dp.maps, n, {
      authz: root ? { meshedCgroup: this.dp.opts.cgroup, cgroup2Root: root } : undefined,
      destroyUdp: (addr, port) => this.destroyUdp(addr, port),
      // Backends removed while a retired table still named them are deleted with it, a grace time after the apply.
      onReap: (r) => {
        if (r.error) this.log.warn({ error: r.error }, 'could not delete retired tables (tried again later)');
        else if (r.backendsDeleted || r.udpSocketsDestroyed) this.log.info({ ...r }, 'retired tables reaped');
      },
    });
  }
}
