// A multi-node lab on one machine (issue 13): 2-3 "nodes", each a node lab (lab/lab.ts) with a network namespace of
// its own (nodeNetns), its own pods, and what one agent instance per node needs: a cgroup subtree, a bpffs directory
// and a run directory (admin socket, state) of its own.
//
// The nodes are ROUTED to each other, as the pods are to their node: one veth pair per pair of nodes (a full mesh, no
// bridge and no extra namespace), named smc<slot>to<peerslot> on each side, carrying the node's address (the same
// 198.19.255.<slot> / 2001:db8:ffff::<slot> the node has on its pods' veths). Each node routes a peer's node address
// over that link and the peer's pod range (198.18.<slot>.0/24, 2001:db8:<slot>::/64) via the peer's node address
// (onlink); each pod routes the other nodes' ranges and node addresses via its own node. Forwarding is switched on
// per link in the node namespaces only. So a packet from a pod on node A to a pod on node B goes pod A -> node A ->
// node B -> pod B, through two routing hops, as on two real nodes; nothing is ever routed outside 198.18.0.0/15 and
// 2001:db8::/32, and nothing touches the machine's own namespace.
//
// Cgroups: <cgroupRoot>/<node> is the node's subtree; <node>/pods is the cgroup its agent meshes (the pods' cgroups
// are under it, as the node lab makes them) and <node>/agent is where the node's agent runs (never inside the meshed
// one). The agent runs in the node's network namespace (nsenter --net: cgroupfs and bpffs stay visible) and listens on
// the node's address: agentArgv() gives its command line.
//
// State: /run/sockmesh-lab/clusters/<prefix>.json names the nodes' labs, cgroups, bpffs and run directories, so that
// `npm run lab -- cluster down` (or a later up() of the same prefix) removes what a crashed run left; the nodes' own
// labs keep their state files beside it. down() kills the agents (their cgroups), removes their pins, the labs (the
// node namespaces take the inter-node veths along) and the cgroups.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inCgroupNsenter, killCgroup, removeCgroup } from './cgroup.js';
import { LAB_STATE_DIR, Lab, type PodSpec } from './lab.js';

export interface ClusterNodeSpec {
  /** [a-z][a-z0-9]{0,5}: names the node's lab (<prefix><name>), cgroup, bpffs and run directories */
  name: string;
  pods: PodSpec[];
}

export interface ClusterOpts {
  /** [a-z0-9]{1,16}: one cluster per prefix at a time */
  prefix: string;
  /** 2 or 3 nodes */
  nodes: ClusterNodeSpec[];
  /** an existing cgroup v2 directory; each node's subtree is made under it (a test's own cgroup, never the root) */
  cgroupRoot: string;
  stateDir?: string;
  /** where the nodes' agents pin (default /sys/fs/bpf): <bpffsRoot>/sockmesh-lab-<prefix>-<node> */
  bpffsRoot?: string;
}

export interface ClusterNodeState {
  name: string;
  /** the node's lab prefix (<prefix><name>) and slot: its node address is 198.19.255.<slot> */
  lab: string;
  slot: number;
  /** the node's network namespace */
  netns: string;
  nodeV4: string;
  nodeV6: string;
  /** <cgroupRoot>/<name>: the node's subtree; meshed = <subtree>/pods, agent = <subtree>/agent */
  cgroup: string;
  meshedCgroup: string;
  agentCgroup: string;
  bpffs: string;
  runDir: string;
}

export interface ClusterState {
  prefix: string;
  cgroupRoot: string;
  nodes: ClusterNodeState[];
  /** the inter-node links made (node, interface), for status */
  links: string[];
}

/** One node of a cluster: its lab (pods), and where its agent runs, pins and answers. */
export class ClusterNode {
  constructor(readonly state: ClusterNodeState, readonly lab: Lab) {}
  get name(): string { return this.state.name; }
  get netns(): string { return this.state.netns; }
  get nodeV4(): string { return this.state.nodeV4; }
  get nodeV6(): string { return this.state.nodeV6; }
  get meshedCgroup(): string { return this.state.meshedCgroup; }
  get agentCgroup(): string { return this.state.agentCgroup; }
  get bpffs(): string { return this.state.bpffs; }
  get runDir(): string { return this.state.runDir; }
  get adminSocket(): string { return join(this.state.runDir, 'admin.sock'); }

  /** The command line that runs argv as this node's agent: in the agent's cgroup, then the node's network namespace. */
  agentArgv(argv: string[]): [string, string[]] {
    return inCgroupNsenter(this.state.agentCgroup, this.state.netns, undefined, argv);
  }

  /** The agent's flags for this node: the meshed cgroup, bpffs and run directory (instance), then nodeFlags(). */
  agentFlags(): string[] {
    return ['--cgroup', this.meshedCgroup, '--bpffs', this.bpffs, '--run-dir', this.runDir, ...this.nodeFlags()];
  }

  /** What makes an agent this node's: its node address (where pods reach it) and its name. */
  nodeFlags(): string[] {
    return ['--proxy-node-address', `${this.nodeV4},${this.nodeV6}`, '--node-id', this.name];
  }
}

const ip = (args: string[]): void => {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
};
/** Write a sysctl of a node's namespace (/proc/sys/net is the namespace of whoever opens it). */
const nodeSysctl = (ns: string, path: string, value: string): void => {
  const r = spawnSync('nsenter', [`--net=/run/netns/${ns}`, 'sh', '-c', 'echo "$1" > "$0"', path, value], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`${path} = ${value} in ${ns}: ${(r.stderr || r.error?.message || '').trim()}`);
};
const clusterDir = (stateDir: string): string => join(stateDir, 'clusters');
const statePath = (stateDir: string, prefix: string): string => join(clusterDir(stateDir), `${prefix}.json`);
const v4Range = (slot: number): string => `198.18.${slot}.0/24`;
const v6Range = (slot: number): string => `2001:db8:${slot.toString(16)}::/64`;

export class Cluster {
  private downed = false;
  private readonly byName: Map<string, ClusterNode>;

  private constructor(readonly state: ClusterState, private readonly labs: Lab[], private readonly stateDir: string) {
    this.byName = new Map(state.nodes.map((n, i) => [n.name, new ClusterNode(n, labs[i]!)]));
  }

  get prefix(): string { return this.state.prefix; }
  get nodes(): ClusterNode[] { return [...this.byName.values()]; }

  node(name: string): ClusterNode {
    const n = this.byName.get(name);
    if (!n) throw new Error(`cluster ${this.prefix}: no node ${name} (nodes: ${[...this.byName.keys()].join(', ')})`);
    return n;
  }

  /** The node a pod address belongs to (by its range), or undefined. */
  nodeOf(addr: string): ClusterNode | undefined {
    return this.nodes.find((n) => n.lab.pods.some((p) => p.v4 === addr || p.v6 === addr));
  }

  /** Build the cluster; on any failure everything made so far is removed before the error is thrown. */
  static async up(opts: ClusterOpts): Promise<Cluster> {
    const { prefix, cgroupRoot } = opts;
    if (!/^[a-z0-9]{1,16}$/.test(prefix)) throw new Error(`cluster prefix ${prefix}: want [a-z0-9], up to 16 characters`);
    if (opts.nodes.length < 2 || opts.nodes.length > 3) throw new Error(`cluster ${prefix}: 2 or 3 nodes, not ${opts.nodes.length}`);
    for (const n of opts.nodes) {
      if (!/^[a-z][a-z0-9]{0,5}$/.test(n.name)) throw new Error(`cluster ${prefix}: node name ${n.name}: want [a-z][a-z0-9], up to 6 characters`);
    }
    if (new Set(opts.nodes.map((n) => n.name)).size !== opts.nodes.length) throw new Error(`cluster ${prefix}: node names must be unique`);
    if (!existsSync(join(cgroupRoot, 'cgroup.procs'))) throw new Error(`cluster ${prefix}: ${cgroupRoot} is not a cgroup v2 directory`);
    const stateDir = opts.stateDir ?? LAB_STATE_DIR;
    const bpffsRoot = opts.bpffsRoot ?? '/sys/fs/bpf';
    await Cluster.sweep(prefix, stateDir);
    mkdirSync(clusterDir(stateDir), { recursive: true });
    const state: ClusterState = { prefix, cgroupRoot, nodes: [], links: [] };
    const labs: Lab[] = [];
    const save = (): void => writeFileSync(statePath(stateDir, prefix), JSON.stringify(state, null, 2) + '\n');
    save();
    try {
      for (const spec of opts.nodes) {
        const cgroup = join(cgroupRoot, spec.name);
        const node: ClusterNodeState = {
          name: spec.name, lab: `${prefix}${spec.name}`, slot: 0, netns: '', nodeV4: '', nodeV6: '',
          cgroup, meshedCgroup: join(cgroup, 'pods'), agentCgroup: join(cgroup, 'agent'),
          bpffs: join(bpffsRoot, `sockmesh-lab-${prefix}-${spec.name}`), runDir: join(clusterDir(stateDir), prefix, spec.name),
        };
        // Recorded before anything is made: a failure half-way still names what to remove.
        state.nodes.push(node);
        save();
        mkdirSync(cgroup);
        mkdirSync(node.meshedCgroup);
        mkdirSync(node.agentCgroup);
        mkdirSync(node.runDir, { recursive: true });
        const lab = await Lab.up({ prefix: node.lab, meshedCgroup: node.meshedCgroup, nodeNetns: true, pods: spec.pods, stateDir });
        labs.push(lab);
        Object.assign(node, { slot: lab.state.slot, netns: lab.nodeNs!, nodeV4: lab.nodeV4, nodeV6: lab.nodeV6 });
        save();
      }
      for (let i = 0; i < state.nodes.length; i++) {
        for (let j = i + 1; j < state.nodes.length; j++) state.links.push(...link(state.nodes[i]!, state.nodes[j]!));
      }
      for (const [i, lab] of labs.entries()) {
        for (const peer of state.nodes.filter((_, j) => j !== i)) {
          for (const r of [v4Range(peer.slot), `${peer.nodeV4}/32`, v6Range(peer.slot), `${peer.nodeV6}/128`]) lab.addPeerRange(r);
        }
      }
      save();
    } catch (e) {
      await new Cluster(state, labs, stateDir).remove(labs);
      throw e;
    }
    return new Cluster(state, labs, stateDir);
  }

  /** The cluster of this prefix that is up (from its state file), or null. */
  static attach(prefix: string, stateDir = LAB_STATE_DIR): Cluster | null {
    const file = statePath(stateDir, prefix);
    if (!existsSync(file)) return null;
    const state = JSON.parse(readFileSync(file, 'utf8')) as ClusterState;
    const labs = state.nodes.map((n) => Lab.attach(n.lab, stateDir));
    if (labs.some((l) => l === null)) {
      // half made (a crash during up()): only good for down()
      return new Cluster({ ...state, nodes: state.nodes.filter((_, i) => labs[i]) }, labs.filter((l): l is Lab => l !== null), stateDir);
    }
    return new Cluster(state, labs as Lab[], stateDir);
  }

  /** Best effort: remove what an earlier cluster of this prefix left behind (its state file names it). */
  static async sweep(prefix: string, stateDir = LAB_STATE_DIR): Promise<void> {
    const file = statePath(stateDir, prefix);
    if (!existsSync(file)) return;
    const state = JSON.parse(readFileSync(file, 'utf8')) as ClusterState;
    const labs = state.nodes.map((n) => Lab.attach(n.lab, stateDir)).filter((l): l is Lab => l !== null);
    await new Cluster(state, labs, stateDir).remove(labs);
  }

  /**
   * Remove everything: the agents (killed with their cgroups), their pins (as `sockmesh-agent cleanup` does), the
   * labs (the node namespaces take the inter-node veths along), the nodes' cgroups and run directories. Best effort
   * per step, so that one failure does not leave the rest.
   */
  private async remove(labs: Lab[]): Promise<void> {
    const errors: string[] = [];
    const step = async (what: string, fn: () => unknown): Promise<void> => {
      try { await fn(); } catch (e) { errors.push(`${what}: ${(e as Error).message}`); }
    };
    for (const n of this.state.nodes) await step(`agent of ${n.name}`, () => killCgroup(n.agentCgroup));
    for (const n of this.state.nodes) await step(`pins ${n.bpffs}`, () => unpin(n.bpffs));
    for (const lab of labs) await step(`lab ${lab.prefix}`, () => lab.down());
    // a lab whose state file was lost: its namespaces are still named by its prefix
    for (const n of this.state.nodes) await step(`lab ${n.lab}`, () => Lab.sweep(n.lab, this.stateDir));
    for (const n of this.state.nodes) {
      await step(`cgroup ${n.cgroup}`, () => { killCgroup(n.cgroup); removeCgroup(n.cgroup); });
      await step(`run dir ${n.runDir}`, () => rmSync(n.runDir, { recursive: true, force: true }));
    }
    rmSync(join(clusterDir(this.stateDir), this.prefix), { recursive: true, force: true });
    rmSync(statePath(this.stateDir, this.prefix), { force: true });
    if (errors.length) throw new Error(`cluster ${this.prefix}: left behind: ${errors.join('; ')}`);
  }

  /** Remove everything the cluster made. Idempotent. */
  async down(): Promise<void> {
    if (this.downed) return;
    this.downed = true;
    await this.remove(this.labs);
  }

  /** What of the cluster still exists (empty after down()). */
  leftovers(): string[] {
    const left = this.labs.flatMap((l) => l.leftovers());
    for (const n of this.state.nodes) {
      if (existsSync(n.cgroup)) left.push(`cgroup ${n.cgroup}`);
      if (existsSync(n.bpffs)) left.push(`bpffs ${n.bpffs}`);
      if (existsSync(n.runDir)) left.push(`run dir ${n.runDir}`);
    }
    if (existsSync(statePath(this.stateDir, this.prefix))) left.push(`state ${statePath(this.stateDir, this.prefix)}`);
    return left;
  }
}

/**
 * Link two nodes with a veth pair, each end in its node's namespace with the node's address, forwarding on, and the
 * peer's node address and pod ranges routed over it. Returns the interfaces made.
 */
function link(a: ClusterNodeState, b: ClusterNodeState): string[] {
  const ifA = `smc${a.slot}to${b.slot}`, ifB = `smc${b.slot}to${a.slot}`;
  // One end is born in each namespace: deleting either namespace takes the pair along.
  ip(['-n', a.netns, 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', b.netns]);
  for (const [self, peer, dev] of [[a, b, ifA], [b, a, ifB]] as const) {
    const ns = ['-n', self.netns];
    nodeSysctl(self.netns, `/proc/sys/net/ipv4/conf/${dev}/forwarding`, '1');
    if (existsSync('/proc/sys/net/ipv6/conf/all/force_forwarding')) nodeSysctl(self.netns, `/proc/sys/net/ipv6/conf/${dev}/force_forwarding`, '1');
    ip([...ns, 'addr', 'add', `${self.nodeV4}/32`, 'dev', dev]);
    ip([...ns, 'addr', 'add', `${self.nodeV6}/128`, 'dev', dev, 'nodad']);
    ip([...ns, 'link', 'set', dev, 'up']);
    ip([...ns, 'route', 'add', `${peer.nodeV4}/32`, 'dev', dev]);
    ip([...ns, 'route', 'add', v4Range(peer.slot), 'via', peer.nodeV4, 'dev', dev, 'onlink']);
    ip([...ns, '-6', 'route', 'add', `${peer.nodeV6}/128`, 'dev', dev]);
    ip([...ns, '-6', 'route', 'add', v6Range(peer.slot), 'via', peer.nodeV6, 'dev', dev, 'onlink']);
  }
  return [`${a.name}:${ifA}`, `${b.name}:${ifB}`];
}

/**
 * Remove an agent instance's pins (what `sockmesh-agent cleanup --bpffs` does). Imported only when there is something
 * to remove: the datapath loads the libbpf addon, which a cluster without agents never needs.
 */
async function unpin(bpffs: string): Promise<void> {
  if (!existsSync(bpffs)) return;
  const { cleanup } = await import('../agent/datapath/datapath.js');
  cleanup(bpffs);
}
