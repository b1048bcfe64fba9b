// A node lab: pods as a CNI and the kubelet make them, for kernel tests, benchmarks and people trying sockmesh
// (`npm run lab`, lab/cli.ts). Compiled with the agent (dist/lab/), so that the benches run on it from dist/.
//
// Each pod is a network namespace `sockmesh-lab-<prefix>-<pod>` with one veth, `eth0` inside and `smlab<slot>p<i>` in
// the host namespace, and a cgroup `<meshed>/kubepods-<prefix>/<pod>` its processes run in. The network is ROUTED, as
// Calico and Cilium do it, not bridged: the pod owns a /32 and a /128, the host has one route per pod address pointing
// at that pod's veth, and the pod's default route goes to the node address via eth0 (onlink). No bridge, no ARP/FDB
// learning between pods: every pod-to-pod packet goes through the host's routing, and each pod's reachability is a
// route of its own that appears and disappears with the pod. That is the shape the fast path has to learn ("this
// address is a pod on this node"), and the hardest one for it: nothing is on a shared L2 segment.
//
// The node address (198.19.255.<slot>, 2001:db8:ffff::<slot>) sits on every host veth of the lab: the host answers
// ARP/NDP for it on each pod's link, and it is the address a pod reaches the node on (the L7 proxy's hand-over, a
// hostNetwork server). Forwarding is turned on per host veth only (net.ipv4.conf.<if>.forwarding,
// net.ipv6.conf.<if>.force_forwarding): nothing machine-wide changes, and it goes with the veth.
//
// Unlike a CNI, a pod has no default route: only the node address and the lab's own pod range (198.18.<slot>.0/24,
// 2001:db8:<slot>::/64) are routed, via the node address (onlink), and the host has an `unreachable` route for that
// range under the pods' /32s. So nothing a test sends can leave the machine, and a VIP (vip4()/vip6(), routed
// nowhere: the connect()/sendmsg() rewrite happens before routing) that the programs missed fails at once in the pod.
//
// Addresses are only in 198.18.0.0/15 and 2001:db8::/32 (DESIGN.md); host routes are only for those, and all go
// away with the veths, which go away with the namespaces. Processes join their pod's cgroup FIRST and then enter the
// namespace with `nsenter --net` (`ip netns exec` remounts /sys, where the cgroup tree would look empty).
//
// Pods come and go (addPod/removePod, a new pod reusing the lowest free addresses, as IPAM does); a hostNetwork pod
// is a cgroup only, in the node's namespace, with the node address (which exists while the lab has a veth pod).
//
// The node itself is the machine's own network namespace, as a real node's is, unless the lab is asked for a node of
// its own (nodeNetns): then the host end of every veth, the node address, the routes and the forwarding switches live
// in a namespace `sockmesh-lab-<prefix>--node` the lab made, and so does anything a user adds "on the node" (a bench's
// kube-proxy iptables rules and the conntrack they switch on for their whole namespace). The machine's own namespace
// is then not touched at all; hostNetwork pods and an agent that must see the node's addresses run in that namespace.
//
// State (what was made, for `down` from another process and for `npm run lab -- status`) is a JSON file in
// /run/sockmesh-lab/<prefix>.json. Lab.up() first sweeps whatever an earlier lab of the same prefix left behind.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inCgroupNsenter, killCgroup, removeCgroup } from './cgroup.js';

export const LAB_STATE_DIR = '/run/sockmesh-lab';
const NETNS_PREFIX = 'sockmesh-lab-';

export interface PodSpec {
  name: string;
  /** give the pod an IPv4 / IPv6 address (both by default) */
  v4?: boolean;
  v6?: boolean;
  /** a hostNetwork pod: its own cgroup, the node's network namespace; its addresses are the node address */
  hostNetwork?: boolean;
}

export interface LabOpts {
  /** the cgroup the agent meshes; the pods' cgroups are made under it (it must exist) */
  meshedCgroup: string;
  pods: PodSpec[];
  /** names every object of this lab ([a-z0-9], up to 24 characters); one lab per prefix at a time */
  prefix: string;
  /** make the meshed cgroup if it is missing (and remove it at down() if it is empty by then) */
  createMeshedCgroup?: boolean;
  /** the node in a network namespace of its own (see the top of this file); default: the machine's namespace */
  nodeNetns?: boolean;
  stateDir?: string;
}

/** index: the pod's host number in the lab's range (1..254), lowest free first: a new pod reuses a deleted one's addresses. */
export interface PodState {
  name: string; index: number; ns: string; cgroup: string; hostIf: string; v4?: string; v6?: string;
  /** no namespace or veth of its own (hostIf is '', index 0; ns is the node's namespace, '' for the machine's) */
  hostNetwork?: boolean;
}

export interface LabState {
  prefix: string;
  slot: number;
  /** the pods' range: 198.18.<slot>.0/24 and 2001:db8:<slot>::/64 */
  range4: string;
  range6: string;
  meshedCgroup: string;
  /** <meshed>/kubepods-<prefix>: every pod cgroup is below it */
  podsCgroup: string;
  /** the lab made the meshed cgroup */
  madeMeshedCgroup: boolean;
  nodeV4: string;
  nodeV6: string;
  /** the node's own network namespace (nodeNetns); absent: the machine's */
  nodeNs?: string;
  /**
   * Other ranges the pods route via the node (addPeerRange): the pod ranges and node addresses of the other nodes of a
   * cluster (lab/cluster.ts). Nothing else: a pod still has no default route.
   */
  peerRanges?: string[];
  pods: PodState[];
}

export interface ExecResult { code: number | null; stdout: string; stderr: string }

/** A pod of the lab: spawn/exec run a command in its cgroup and network namespace. */
export class LabPod implements PodState {
  readonly name: string; readonly index: number; readonly ns: string; readonly cgroup: string; readonly hostIf: string;
  readonly v4?: string; readonly v6?: string; readonly hostNetwork: boolean;
  constructor(s: PodState) {
    this.name = s.name; this.index = s.index; this.ns = s.ns; this.cgroup = s.cgroup; this.hostIf = s.hostIf;
    this.hostNetwork = s.hostNetwork === true;
    if (s.v4) this.v4 = s.v4;
    if (s.v6) this.v6 = s.v6;
  }

  /** The command line that runs argv in this pod (cgroup joined first, then the namespace). */
  argv(cmd: string, args: string[] = []): [string, string[]] {
    if (this.hostNetwork && this.ns === '') return ['sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', this.cgroup, cmd, ...args]];
    return inCgroupNsenter(this.cgroup, this.ns, undefined, [cmd, ...args]);
  }

  /** Start cmd in the pod; it lives until it exits or the lab goes down (the pod's cgroup is killed). */
  spawn(cmd: string, args: string[] = [], stdio: 'pipe' | 'inherit' = 'pipe'): ChildProcess {
    const [c, a] = this.argv(cmd, args);
    return spawn(c, a, { stdio });
  }

  /** Run cmd in the pod to its end (killed after timeoutMs); its exit code and output. */
  exec(cmd: string, args: string[] = [], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    return new Promise((resolve) => {
      const p = this.spawn(cmd, args);
      let stdout = '', stderr = '';
      p.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
      p.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
      // A command that exits without reading its input (curl failing at once) closes the pipe first: that EPIPE is no
      // error of ours, and thrown it would hide the command's own exit code and stderr, which the caller reports.
      p.stdin!.on('error', () => {});
      p.stdin!.end(opts.input ?? '');
      const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 10_000);
      p.on('error', (e) => { stderr += e.message; });
      p.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    });
  }
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
}

const ipOut = (args: string[]): string => spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 }).stdout ?? '';
/** `ip` arguments for the node's side: in the node's namespace when the lab has one. */
const onNode = (nodeNs: string | undefined, args: string[]): string[] => (nodeNs ? ['-n', nodeNs, ...args] : args);
const netnsList = (): string[] => ipOut(['netns', 'list']).split('\n').map((l) => l.split(' ')[0]!).filter(Boolean);
const statePath = (dir: string, prefix: string): string => join(dir, `${prefix}.json`);

/**
 * A lab slot no other lab on this machine uses: it numbers the host veths and the addresses. Labs with a node of their
 * own are invisible from the machine's namespace: their state files name their slots.
 */
function freeSlot(stateDir: string, self: string): number {
  const links = ipOut(['-o', 'link', 'show']);
  const routes = ipOut(['-4', 'route', 'show']) + ipOut(['-4', '-o', 'addr', 'show']);
  const taken = new Set(Lab.list(stateDir).filter((p) => p !== self).map((p) => Lab.attach(p, stateDir)?.state.slot));
  for (let s = 1; s < 255; s++) {
    if (taken.has(s)) continue;
    if (!links.includes(`smlab${s}p`) && !routes.includes(`198.18.${s}.`) && !routes.includes(`198.19.255.${s}/`)) return s;
  }
  throw new Error('no free lab slot (254 labs up?)');
}

export class Lab {
  private downed = false;
  private readonly podsByName: Map<string, LabPod>;

  private constructor(readonly state: LabState, private readonly stateDir: string) {
    this.podsByName = new Map(state.pods.map((p) => [p.name, new LabPod(p)]));
  }

  get prefix(): string { return this.state.prefix; }
  get nodeV4(): string { return this.state.nodeV4; }
  get nodeV6(): string { return this.state.nodeV6; }
  /** The node's network namespace when the lab made one (nodeNetns), else undefined (the machine's). */
  get nodeNs(): string | undefined { return this.state.nodeNs; }

  /** The command line that runs argv on the node: in the node's namespace (nsenter: /sys stays as it is), or as is. */
  onNode(argv: string[]): [string, string[]] {
    if (!this.state.nodeNs) return [argv[0]!, argv.slice(1)];
    return ['nsenter', [`--net=/run/netns/${this.state.nodeNs}`, ...argv]];
  }
  get pods(): LabPod[] { return [...this.podsByName.values()]; }

  /**
   * Whether the host forwards IPv6 between pods. Per-interface IPv6 forwarding (force_forwarding) is Linux 6.17+; on
   * older kernels only the machine-wide switch does it, which the lab never turns on (it would also stop the host's
   * interfaces from accepting router advertisements). Pod to node works on every kernel.
   */
  static get v6PodToPod(): boolean {
    if (existsSync('/proc/sys/net/ipv6/conf/all/force_forwarding')) return true;
    return readFileSync('/proc/sys/net/ipv6/conf/all/forwarding', 'utf8').trim() === '1';
  }

  /** A VIP for tests (n: 1..254): 198.19.254.n / 2001:db8:fffe::n, routed nowhere (not even in the pods). */
  static vip4(n: number): string { return `198.19.254.${n}`; }
  static vip6(n: number): string { return `2001:db8:fffe::${n.toString(16)}`; }

  pod(name: string): LabPod {
    const p = this.podsByName.get(name);
    if (!p) throw new Error(`lab ${this.prefix}: no pod ${name}`);
    return p;
  }

  /** Build the lab; on any failure everything made so far is removed before the error is thrown. */
  static async up(opts: LabOpts): Promise<Lab> {
    const { prefix, meshedCgroup } = opts;
    if (!/^[a-z0-9]{1,24}$/.test(prefix)) throw new Error(`lab prefix ${prefix}: want [a-z0-9], up to 24 characters`);
    for (const p of opts.pods) checkPodName(p.name);
    if (new Set(opts.pods.map((p) => p.name)).size !== opts.pods.length) throw new Error('pod names must be unique');
    const made = opts.createMeshedCgroup === true && !existsSync(meshedCgroup);
    if (made) mkdirSync(meshedCgroup);
    if (!existsSync(join(meshedCgroup, 'cgroup.procs'))) throw new Error(`${meshedCgroup}: not a cgroup v2 directory`);
    const stateDir = opts.stateDir ?? LAB_STATE_DIR;
    Lab.sweep(prefix, stateDir, meshedCgroup);
    const slot = freeSlot(stateDir, prefix);
    const state: LabState = {
      prefix, slot, range4: `198.18.${slot}.0/24`, range6: `2001:db8:${slot.toString(16)}::/64`, meshedCgroup, madeMeshedCgroup: made, podsCgroup: join(meshedCgroup, `kubepods-${prefix}`),
      nodeV4: `198.19.255.${slot}`, nodeV6: `2001:db8:ffff::${slot.toString(16)}`,
      ...(opts.nodeNetns ? { nodeNs: `${NETNS_PREFIX}${prefix}--node` } : {}),
      pods: [],
    };
    // The state goes to disk first (and again before each pod): a crash half-way leaves a file naming what to sweep.
    mkdirSync(stateDir, { recursive: true });
    const lab = new Lab(state, stateDir);
    lab.save();
    try {
      mkdirSync(state.podsCgroup);
      if (state.nodeNs) {
        ip(['netns', 'add', state.nodeNs]);
        ip(['-n', state.nodeNs, 'link', 'set', 'lo', 'up']);
      }
      ip(onNode(state.nodeNs, ['route', 'add', 'unreachable', state.range4]));
      ip(onNode(state.nodeNs, ['-6', 'route', 'add', 'unreachable', state.range6]));
      for (const p of opts.pods) await lab.addPod(p);
    } catch (e) {
      await lab.down();
      throw e;
    }
    return lab;
  }

  /** The lab of this prefix that is up (from its state file), or null. */
  static attach(prefix: string, stateDir = LAB_STATE_DIR): Lab | null {
    const file = statePath(stateDir, prefix);
    if (!existsSync(file)) return null;
    return new Lab(JSON.parse(readFileSync(file, 'utf8')) as LabState, stateDir);
  }

  /** Prefixes of the labs with a state file. */
  static list(stateDir = LAB_STATE_DIR): string[] {
    return existsSync(stateDir) ? readdirSync(stateDir).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)) : [];
  }

  /**
   * Best effort: remove what an earlier lab of this prefix left (a crashed run): the lab its state file names, and
   * any namespace or pods cgroup named by the prefix even without a state file.
   */
  static sweep(prefix: string, stateDir = LAB_STATE_DIR, meshedCgroup?: string): void {
    const old = Lab.attach(prefix, stateDir);
    if (old) old.remove();
    for (const ns of netnsList()) if (ns.startsWith(`${NETNS_PREFIX}${prefix}-`)) spawnSync('ip', ['netns', 'del', ns]);
    if (meshedCgroup) removeTree(join(meshedCgroup, `kubepods-${prefix}`));
  }

  private save(): void {
    writeFileSync(statePath(this.stateDir, this.prefix), JSON.stringify(this.state, null, 2) + '\n');
  }

  /**
   * Add a pod to a lab that is up (as the kubelet starts one): it gets the lowest free host number, so a pod added
   * after a removal reuses the removed pod's addresses, as a CNI's IPAM does.
   */
  async addPod(spec: PodSpec): Promise<LabPod> {
    checkPodName(spec.name);
    if (this.podsByName.has(spec.name)) throw new Error(`lab ${this.prefix}: pod ${spec.name} exists`);
    const { slot, podsCgroup } = this.state;
    if (spec.hostNetwork) {
      const h: PodState = {
        name: spec.name, index: 0, ns: this.state.nodeNs ?? '', hostIf: '', cgroup: join(podsCgroup, spec.name), hostNetwork: true,
        ...(spec.v4 === false ? {} : { v4: this.nodeV4 }), ...(spec.v6 === false ? {} : { v6: this.nodeV6 }),
      };
      this.state.pods.push(h);
      this.save();
      mkdirSync(h.cgroup);
      const pod = new LabPod(h);
      this.podsByName.set(h.name, pod);
      return pod;
    }
    const used = new Set(this.state.pods.map((p) => p.index));
    let n = 1;
    while (used.has(n)) n++;
    if (n > 254) throw new Error(`lab ${this.prefix}: 254 pods at most`);
    const p: PodState = {
      name: spec.name, index: n, ns: `${NETNS_PREFIX}${this.prefix}-${spec.name}`, cgroup: join(podsCgroup, spec.name),
      hostIf: `smlab${slot}p${n}`,
      ...(spec.v4 === false ? {} : { v4: `198.18.${slot}.${n}` }),
      ...(spec.v6 === false ? {} : { v6: `2001:db8:${slot.toString(16)}::${n.toString(16)}` }),
    };
    this.state.pods.push(p);
    this.save();
    try {
      this.makePod(p);
    } catch (e) {
      await this.removePod(p.name);
      throw e;
    }
    const pod = new LabPod(p);
    this.podsByName.set(p.name, pod);
    return pod;
  }

  /** Delete a pod (as the kubelet does): its processes, namespace, veth, routes and cgroup. */
  async removePod(name: string): Promise<void> {
    const p = this.state.pods.find((x) => x.name === name);
    if (!p) throw new Error(`lab ${this.prefix}: no pod ${name}`);
    dropPod(p, this.state.nodeNs);
    this.state.pods = this.state.pods.filter((x) => x !== p);
    this.podsByName.delete(name);
    this.save();
  }

  /**
   * Route a range (198.18.0.0/15 or 2001:db8::/32 only) from every pod, present and future, via the node: another node's
   * pods or node address in a cluster (lab/cluster.ts). The node's namespace must route it on (the cluster does).
   */
  addPeerRange(cidr: string): void {
    checkLabRange(cidr);
    const ranges = this.state.peerRanges ?? (this.state.peerRanges = []);
    if (ranges.includes(cidr)) return;
    ranges.push(cidr);
    this.save();
    for (const p of this.state.pods) if (!p.hostNetwork) this.routePeer(p, cidr);
  }

  private routePeer(p: PodState, cidr: string): void {
    const v6 = cidr.includes(':');
    if (v6 ? !p.v6 : !p.v4) return;
    ip(['-n', p.ns, ...(v6 ? ['-6'] : []), 'route', 'add', cidr, 'via', v6 ? this.nodeV6 : this.nodeV4, 'dev', 'eth0', 'onlink']);
  }

  /** Write a per-interface switch of the node (/proc/sys/net is the namespace of whoever opens it). */
  private nodeSysctl(path: string, value: string): void {
    if (!this.state.nodeNs) return writeFileSync(path, value);
    const [cmd, args] = this.onNode(['sh', '-c', 'echo "$1" > "$0"', path, value]);
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) throw new Error(`${path} = ${value} in ${this.state.nodeNs}: ${(r.stderr || r.error?.message || '').trim()}`);
  }

  private makePod(p: PodState): void {
    const { ns, hostIf } = p;
    const node = (args: string[]) => ip(onNode(this.state.nodeNs, args));
    mkdirSync(p.cgroup);
    ip(['netns', 'add', ns]);
    // The pod end is born in the namespace: deleting the namespace always takes the whole pair (and its routes) along.
    node(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    this.nodeSysctl(`/proc/sys/net/ipv4/conf/${hostIf}/forwarding`, '1');
    const ff6 = `/proc/sys/net/ipv6/conf/${hostIf}/force_forwarding`;
    if (existsSync('/proc/sys/net/ipv6/conf/all/force_forwarding')) this.nodeSysctl(ff6, '1'); // else see Lab.v6PodToPod
    node(['addr', 'add', `${this.nodeV4}/32`, 'dev', hostIf]);
    // nodad: usable at once (a tentative address cannot be bound or connected from)
    node(['addr', 'add', `${this.nodeV6}/128`, 'dev', hostIf, 'nodad']);
    node(['link', 'set', hostIf, 'up']);
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    if (p.v4) {
      ip(['-n', ns, 'addr', 'add', `${p.v4}/32`, 'dev', 'eth0']);
      ip(['-n', ns, 'route', 'add', `${this.nodeV4}/32`, 'dev', 'eth0']);
      ip(['-n', ns, 'route', 'add', this.state.range4, 'via', this.nodeV4, 'dev', 'eth0', 'onlink']);
      node(['route', 'add', `${p.v4}/32`, 'dev', hostIf]);
    }
    if (p.v6) {
      ip(['-n', ns, 'addr', 'add', `${p.v6}/128`, 'dev', 'eth0', 'nodad']);
      ip(['-n', ns, '-6', 'route', 'add', `${this.nodeV6}/128`, 'dev', 'eth0']);
      ip(['-n', ns, '-6', 'route', 'add', this.state.range6, 'via', this.nodeV6, 'dev', 'eth0', 'onlink']);
      node(['-6', 'route', 'add', `${p.v6}/128`, 'dev', hostIf]);
    }
    for (const r of this.state.peerRanges ?? []) this.routePeer(p, r);
  }

  /** Kill the pods' processes, delete namespaces (veths and routes go with them) and cgroups. */
  private remove(): void {
    const { nodeNs } = this.state;
    killCgroup(this.state.podsCgroup);
    for (const p of this.state.pods) dropPod(p, nodeNs);
    spawnSync('ip', onNode(nodeNs, ['route', 'del', 'unreachable', this.state.range4]), { stdio: 'ignore' });
    spawnSync('ip', onNode(nodeNs, ['-6', 'route', 'del', 'unreachable', this.state.range6]), { stdio: 'ignore' });
    // The node's namespace goes last, with whatever was added to it (iptables rules, conntrack state).
    if (nodeNs) spawnSync('ip', ['netns', 'del', nodeNs], { stdio: 'ignore' });
    removeTree(this.state.podsCgroup);
    if (this.state.madeMeshedCgroup) {
      try { rmdirSync(this.state.meshedCgroup); } catch { /* in use (an agent or a process of someone else's): left */ }
    }
    rmSync(statePath(this.stateDir, this.prefix), { force: true });
  }

  /** Remove everything the lab made. Idempotent. */
  async down(): Promise<void> {
    if (this.downed) return;
    this.downed = true;
    this.remove();
  }

  /** What of this lab still exists on the machine (empty after down()): for tests and `status`. */
  /** With `pods` (e.g. of removed pods): what of those pods still exists, and nothing else. */
  leftovers(pods?: PodState[]): string[] {
    const left: string[] = [];
    const nss = new Set(netnsList());
    const { nodeNs } = this.state;
    // A node namespace that is gone has no links or routes left ('ip -n' of a missing namespace prints nothing).
    const links = ipOut(onNode(nodeNs, ['-o', 'link', 'show']));
    const routes = ipOut(onNode(nodeNs, ['route', 'show'])) + ipOut(onNode(nodeNs, ['-6', 'route', 'show']));
    for (const p of pods ?? this.state.pods) {
      if (p.hostNetwork) {
        if (existsSync(p.cgroup)) left.push(`cgroup ${p.cgroup}`);
        continue;
      }
      if (nss.has(p.ns)) left.push(`netns ${p.ns}`);
      if (new RegExp(`^\\d+: ${p.hostIf}@`, 'm').test(links)) left.push(`link ${p.hostIf}`);
      for (const a of [p.v4, p.v6]) if (a && new RegExp(`^${a.replace(/[.:]/g, '\\$&')} `, 'm').test(routes)) left.push(`route ${a}`);
      if (existsSync(p.cgroup)) left.push(`cgroup ${p.cgroup}`);
    }
    if (pods) return left;
    for (const r of [this.state.range4, this.state.range6]) if (routes.includes(`unreachable ${r}`)) left.push(`route ${r}`);
    if (nodeNs && nss.has(nodeNs)) left.push(`netns ${nodeNs}`);
    if (existsSync(this.state.podsCgroup)) left.push(`cgroup ${this.state.podsCgroup}`);
    if (existsSync(statePath(this.stateDir, this.prefix))) left.push(`state ${statePath(this.stateDir, this.prefix)}`);
    return left;
  }
}

/** A range the lab may route: inside 198.18.0.0/15 or 2001:db8::/32 (DESIGN.md), in CIDR form. */
export function checkLabRange(cidr: string): void {
  const m = /^(198\.(18|19)\.\d{1,3}\.\d{1,3})\/(\d{1,2})$/.exec(cidr) ?? /^(2001:db8:[0-9a-f:]*)\/(\d{1,3})$/.exec(cidr);
  const bits = m ? Number(m[m.length - 1]) : -1;
  const ok = m !== null && (cidr.includes(':') ? bits >= 32 && bits <= 128 : bits >= 15 && bits <= 32);
  if (!ok) throw new Error(`lab range ${cidr}: only 198.18.0.0/15 and 2001:db8::/32 (or narrower) may be routed by the lab`);
}

function checkPodName(name: string): void {
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(name)) throw new Error(`pod name ${name}: want [a-z0-9-], up to 31 characters`);
}

/** Kill a pod's processes (they hold its namespace), then delete the namespace and its veth, and its cgroup. */
function dropPod(p: PodState, nodeNs: string | undefined): void {
  killCgroup(p.cgroup);
  if (p.hostNetwork) return removeTree(p.cgroup);
  spawnSync('ip', ['netns', 'del', p.ns], { stdio: 'ignore' });
  // The namespace's teardown is asynchronous: delete the pair now (its host routes go with it).
  spawnSync('ip', onNode(nodeNs, ['link', 'del', p.hostIf]), { stdio: 'ignore' });
  removeTree(p.cgroup);
}

function removeTree(dir: string): void {
  if (!existsSync(dir)) return;
  killCgroup(dir);
  removeCgroup(dir);
}
